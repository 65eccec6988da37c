#!/usr/bin/env bash
# Is loadgen's throughput measurement right? Against the same bare endpoint (bare202) with
# the same connection count, compares loadgen's closed-loop requests/s with wrk's (Debian
# package) and, when it is installed, oha's. Median of $RUNS runs each, interleaved.
# Writes results/<date>-<rev>/loadgen-accuracy.md and a row in results/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
CONNS=${CONNS:-64}
DURATION=${DURATION:-10}
RUNS=${RUNS:-3}
ADDR=127.0.0.1:18081
TOOLS=${HERALD_TOOLS:-/opt/herald-tools/bin}
export PATH="$TOOLS:$PATH"

. scripts/lib/herald.sh
ensure_wrk
cargo build --release --locked -p loadgen -p herald-benches --bin loadgen --bin bare202 2>&1 | tail -1
rev=$(git rev-parse --short HEAD)
day=$(date -u +%Y-%m-%d)
out=$(results_dir)
work=$(mktemp -d)
target/release/bare202 "$ADDR" 2>/dev/null &
bare=$!
trap 'kill $bare 2>/dev/null; rm -rf "$work"' EXIT
sleep 0.5
body='{"priority":"medium","channel":"webhook","recipient":"http://127.0.0.1:9/hook","payload":{"order":"A-1042","status":"shipped","eta":"2026-11-27"}}'

median() { sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
# oha from crates.io, built once into the tools directory (minutes the first time).
command -v oha >/dev/null || cargo install oha --locked --root "$(dirname "$TOOLS")" >/dev/null 2>&1 || true
has_oha=0
command -v oha >/dev/null && has_oha=1

for i in $(seq 1 "$RUNS"); do
  wrk -t2 -c"$CONNS" -d"${DURATION}s" -s scripts/wrk/single.lua "http://$ADDR/v1/notifications" |
    awk '/Requests\/sec/ {print $2}' >>"$work/wrk"
  target/release/loadgen --target "http://$ADDR" -c "$CONNS" -d "${DURATION}s" --warmup 0s \
    --payload-bytes 64 --out "$work/lg$i" >/dev/null 2>&1
  jq .total.requests_per_sec "$work/lg$i/summary.json" >>"$work/loadgen"
  if [ "$has_oha" = 1 ]; then
    oha -c "$CONNS" -z "${DURATION}s" -m POST -H 'content-type: application/json' -d "$body" \
      --no-tui --output-format json "http://$ADDR/v1/notifications" 2>/dev/null |
      jq .summary.requestsPerSec >>"$work/oha"
  fi
done
wrk_rps=$(median <"$work/wrk")
lg_rps=$(median <"$work/loadgen")
ratio_wrk=$(awk -v a="$lg_rps" -v b="$wrk_rps" 'BEGIN { printf "%+.1f", 100 * (a - b) / b }')
oha_row="| oha | not installed (\`cargo install oha\` failed or was not run) | |"
oha_line=""
if [ "$has_oha" = 1 ]; then
  oha_rps=$(median <"$work/oha")
  ratio_oha=$(awk -v a="$lg_rps" -v b="$oha_rps" 'BEGIN { printf "%+.1f", 100 * (a - b) / b }')
  oha_row="| oha $(oha --version | awk '{print $2}') | $(printf '%.0f' "$oha_rps") | $(paste -sd' ' "$work/oha") |"
  oha_line="- loadgen vs oha: **${ratio_oha} %**"
fi

cat >"$out/loadgen-accuracy.md" <<MD
# loadgen accuracy against wrk and oha, $day, revision $rev

Machine: $(machine); the tools and bare202 share
them. Target: \`bare202\` (benches/bare202.rs), a hyper server that only answers 202.
Closed loop, $CONNS connections, ${DURATION}s, HTTP/1.1 keep-alive, median of $RUNS interleaved runs.

| tool | requests/s (median) | all runs |
|---|---|---|
| wrk $(wrk -v 2>&1 | head -1 | awk '{print $2}') | $(printf '%.0f' "$wrk_rps") | $(paste -sd' ' "$work/wrk") |
| loadgen | $(printf '%.0f' "$lg_rps") | $(paste -sd' ' "$work/loadgen") |
$oha_row

- loadgen vs wrk: **${ratio_wrk} %**
$oha_line

loadgen parses each answer's status and keeps latency per priority in HdrHistograms; wrk
is written in C with a Lua request script. Within 5 % means the generator is not the
bottleneck of what it reports.

## Commands
\`\`\`
scripts/bench-loadgen-accuracy.sh   # CONNS=$CONNS DURATION=$DURATION RUNS=$RUNS
target/release/bare202 $ADDR
wrk -t2 -c$CONNS -d${DURATION}s -s scripts/wrk/single.lua http://$ADDR/v1/notifications
target/release/loadgen --target http://$ADDR -c $CONNS -d ${DURATION}s --warmup 0s --payload-bytes 64
oha -c $CONNS -z ${DURATION}s -m POST -H 'content-type: application/json' -d '<body>' --no-tui --output-format json http://$ADDR/v1/notifications
\`\`\`
MD
results_row scripts/bench-loadgen-accuracy.sh "loadgen $(printf '%.0f' "$lg_rps") req/s vs wrk $(printf '%.0f' "$wrk_rps") (${ratio_wrk} %)" loadgen-accuracy.md
cat "$out/loadgen-accuracy.md"
