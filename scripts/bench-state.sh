#!/usr/bin/env bash
# What state costs. (1) bench-recorder: recorder throughput into PostgreSQL (+ Redis status
# cache) and into FerretDB, next to raw COPY / insert_many / pipelined SET of the same data
# in the same run. (2) ingest with authentication, idempotency keys and rate limiting
# switched on one after another: loadgen closed loop (-c $CONNS, $DURATION) against a
# release `dispatcher serve`, median of $REPEAT runs each, ratio to all-off.
# Report: results/<date>-<rev>/state.md, plus a row in results/README.md.
# Knobs: N (50000), DURATION (10s), CONNS (64), REPEAT (3).
set -euo pipefail
cd "$(dirname "$0")/.."
# loadgen's sink listens on loopback, which the webhook SSRF policy refuses by default.
export HERALD_WEBHOOK_ALLOW_NETS=${HERALD_WEBHOOK_ALLOW_NETS:-127.0.0.0/8,::1}
N=${N:-50000}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
REPEAT=${REPEAT:-3}
ADDR=127.0.0.1:18081
TOOLS=${HERALD_TOOLS:-/opt/herald-tools/bin}

bash scripts/services.sh >/dev/null
cargo build --release --locked -p dispatcher -p loadgen -p herald-benches \
  --bin dispatcher --bin loadgen --bin bench-recorder 2>&1 | tail -1
. scripts/lib/herald.sh
out=$(results_dir)
report="$out/state.md"

echo "bench-state: recorder, N=$N" >&2
recorder_table=$(target/release/bench-recorder --n "$N")

prefix="benchst$(date +%s)_"
store=(--pg-schema "$prefix")
target/release/dispatcher migrate "${store[@]}" >/dev/null
target/release/dispatcher tenant create bench "${store[@]}" >/dev/null
KEY=$(target/release/dispatcher key create --tenant bench "${store[@]}" | sed -E 's/.*"key":"([^"]+)".*/\1/')
cleanup() {
  [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  for s in NOTIFY DLQ EVENTS; do "$TOOLS/nats" stream rm -f "${prefix}$s" >/dev/null 2>&1 || true; done
  psql -h 127.0.0.1 -U root -d test -qc "DROP SCHEMA IF EXISTS \"$prefix\" CASCADE" >/dev/null 2>&1 || true
  redis-cli --scan --pattern "${prefix}*" | xargs -r redis-cli del >/dev/null 2>&1 || true
}
trap cleanup EXIT

# mode NAME SERVE_ARGS LOADGEN_ARGS: median notifications/s of $REPEAT runs.
rows=()
base=""
mode() {
  local name=$1 serve_args=$2 load_args=$3 rates=() slug
  slug=${name//[^a-z]/-}
  target/release/dispatcher --log warn serve --listen "$ADDR" --metrics-listen 127.0.0.1:0 --prefix "$prefix" "${store[@]}" \
    $serve_args &
  pid=$!
  wait_ready "http://$ADDR/readyz" 10 "$pid" || { echo "dispatcher not ready" >&2; exit 1; }
  for _ in $(seq 1 "$REPEAT"); do
    target/release/loadgen --target "http://$ADDR" -c "$CONNS" -d "$DURATION" --warmup 2s \
      $load_args --out "$out/state/$slug" >/dev/null 2>&1 || true
    rates+=("$(jq -r '.total | "\(.notifications_per_sec | round) \(.errors // 0)"' "$out/state/$slug/summary.json")")
  done
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
  local median errors
  median=$(printf '%s\n' "${rates[@]}" | awk '{print $1}' | sort -n | sed -n "$(( (REPEAT + 1) / 2 ))p")
  errors=$(printf '%s\n' "${rates[@]}" | awk '{print $2}' | paste -sd/)
  [ -z "$base" ] && base=$median
  rows+=("| $name | \`serve $serve_args\` \`loadgen ${load_args//$KEY/\$KEY}\` | $(printf '%s\n' "${rates[@]}" | awk '{print $1}' | paste -sd' ') | $median | $(python3 -c "print(f'{$median/$base:.2f}')") | $errors |")
  echo "bench-state: $name: $median notifications/s" >&2
}
mode "all off" "--auth off" ""
mode "auth" "--auth required" "--api-key $KEY"
mode "auth + idempotency" "--auth required" "--api-key $KEY --idempotency-keys"
mode "auth + idempotency + rate limit" "--auth required --rate-limit 10000000" "--api-key $KEY --idempotency-keys"

{
  echo "# State: recorder throughput and the ingest cost of auth, idempotency, rate limits"
  echo
  echo "Machine: $(machine). Revision $(git rev-parse --short HEAD), $(date -u +%Y-%m-%dT%H:%MZ)."
  echo "Command: \`N=$N DURATION=$DURATION CONNS=$CONNS REPEAT=$REPEAT scripts/bench-state.sh\`."
  echo "Everything (load tool, dispatcher, NATS, PostgreSQL, Redis, FerretDB) shares the machine."
  echo
  echo "## Recorder vs raw store limits (\`target/release/bench-recorder --n $N\`)"
  echo
  echo "The recorder rows count NOTIFY and EVENTS messages (one notification = 2 messages, each"
  echo "fetched from JetStream, decoded, written with one statement per batch and acknowledged)."
  echo "FerretDB figures are FerretDB's (v1.24, SQLite backend), not MongoDB's."
  echo
  echo "$recorder_table"
  echo
  echo "## Ingest with state features on (closed loop, $CONNS connections, single requests)"
  echo
  echo "| features | command | notifications/s per run | median | ratio to all off | errors per run |"
  echo "|---|---|---|---:|---:|---|"
  printf '%s\n' "${rows[@]}"
  echo
  echo "auth: one in-process cache lookup per request (PostgreSQL only on a miss, every 30 s)."
  echo "idempotency: one Redis round trip to claim (SET NX GET PX) and one to settle, per"
  echo "request. rate limit: one EVALSHA of the token-bucket script per request (the limit is"
  echo "set so high that nothing is refused: this prices the check, not the refusals)."
} >"$report"
results_row scripts/bench-state.sh "recorder rows/docs per second vs raw limits; ingest cost of auth, idempotency, rate limit" state.md
cat "$report"
