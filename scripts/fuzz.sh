#!/usr/bin/env bash
# Fuzzes the ingress parsers (dispatcher/fuzz: `request` = POST /v1/notifications bodies,
# `batch` = POST /v1/notifications/batch bodies) for a bounded time each, with libFuzzer
# through cargo-fuzz on nightly. The properties checked live in dispatcher/src/fuzzing.rs.
# A crash is copied to dispatcher/fuzz/regressions/<target>/, which the unit test
# `fuzzing::tests::fuzz_regressions_and_seeds_pass` replays on stable in every CI run:
# commit it with the fix.
#
#   SECONDS_PER_TARGET=60 scripts/fuzz.sh        # default 60 s per target
set -euo pipefail
cd "$(dirname "$0")/../dispatcher/fuzz"
SECONDS_PER_TARGET=${SECONDS_PER_TARGET:-60}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal

status=0
for target in request batch; do
  corpus=target/corpus/$target
  artifacts=target/artifacts/$target
  # Artifacts of an earlier run are not this run's findings.
  rm -rf "$artifacts"
  mkdir -p "$corpus" "$artifacts" "regressions/$target"
  cp seeds/* "$corpus"/
  echo "fuzz: $target for ${SECONDS_PER_TARGET}s"
  # -s none: safe Rust, so ASan adds build time, not findings; debug assertions catch
  # arithmetic overflow. Inputs up to 64 KiB (the default payload limit).
  if ! cargo +nightly fuzz run -s none --debug-assertions "$target" "$corpus" -- \
      -max_total_time="$SECONDS_PER_TARGET" -max_len=65536 -rss_limit_mb=2048 \
      -artifact_prefix="$artifacts/" 2>&1 | tee "target/$target.log" | grep -E '^(#[0-9]+ +DONE|Done|INFO: -max_total_time)|panicked|ERROR|SUMMARY'; then
    :
  fi
  if ls "$artifacts"/crash-* >/dev/null 2>&1; then
    cp "$artifacts"/crash-* "regressions/$target/"
    echo "fuzz: $target FOUND A CRASH, copied to dispatcher/fuzz/regressions/$target/" >&2
    status=1
  fi
  runs=$(grep -Eo '^#[0-9]+' "target/$target.log" | tail -1 | tr -d '#')
  echo "fuzz: $target ran ${runs:-?} inputs, corpus $(ls "$corpus" | wc -l) files"
done
exit $status
