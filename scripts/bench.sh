#!/usr/bin/env bash
# The scenario matrix, measured with loadgen against a release `dispatcher run` (ingress
# and delivery) on this machine, every webhook addressed to loadgen's sink, so each row has
# end-to-end latency and the lost / duplicated count:
# closed-loop capacity, steady open-loop rates (single and batch), overload (low offered at
# 3x the measured capacity) and burst. loadgen's open loop gives each priority its own
# connections (-c per priority); the dispatcher runs with --queue-capacity $QUEUES so that
# overload reaches its queue bounds with that many requests in flight and sheds. Each scenario keeps its summary.json, percentile
# files and latency.svg under results/<date>-<rev>/bench/<scenario>/; the table goes to
# results/<date>-<rev>/bench.md and a row to results/README.md.
# Knobs: DURATION (10s), WARMUP (2s), RATES ("2000 5000 10000"), BATCH (100).
set -euo pipefail
cd "$(dirname "$0")/.."
# loadgen's sink listens on loopback, which the webhook SSRF policy refuses by default.
export HERALD_WEBHOOK_ALLOW_NETS=${HERALD_WEBHOOK_ALLOW_NETS:-127.0.0.0/8,::1}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
RATES=${RATES:-2000 5000 10000}
BATCH=${BATCH:-100}
QUEUES=${QUEUES:-1024:512:128}
ADDR=127.0.0.1:18080
TOOLS=${HERALD_TOOLS:-/opt/herald-tools/bin}

bash scripts/services.sh >/dev/null
cargo build --release --locked -p dispatcher -p loadgen --bin dispatcher --bin loadgen 2>&1 | tail -1
. scripts/lib/herald.sh
rev=$(git rev-parse --short HEAD)
day=$(date -u +%Y-%m-%d)
out=$(results_dir)/bench
mkdir -p "$out"
prefix="benchm$(date +%s)_"
# --auth off: the matrix compares with earlier runs; scripts/bench-state.sh prices auth.
target/release/dispatcher --log warn run --listen "$ADDR" --metrics-listen 127.0.0.1:0 --prefix "$prefix" --queue-capacity "$QUEUES" \
  --auth off --migrate --pg-schema "${prefix}" --mongo-db "${prefix}" &
dispatcher=$!
trap 'kill $dispatcher 2>/dev/null; wait $dispatcher 2>/dev/null; for s in NOTIFY DLQ EVENTS; do "$TOOLS/nats" stream rm -f "${prefix}$s" >/dev/null 2>&1 || true; done' EXIT
wait_ready "http://$ADDR/readyz" 10 "$dispatcher" || { echo "dispatcher not ready" >&2; exit 1; }

rows=()
# scenario NAME ARGS...: one loadgen run; its summary becomes a table row.
scenario() {
  local name=$1; shift
  echo "bench: $name: loadgen $*" >&2
  target/release/loadgen --target "http://$ADDR" -d "$DURATION" --warmup "$WARMUP" \
    --sink 127.0.0.1:0 --drain-timeout 120s --out "$out/$name" "$@" >"$out/$name.txt" 2>"$out/$name.log" || true
  rows+=("$(python3 - "$out/$name/summary.json" "$name" "$*" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
name, args = sys.argv[2], sys.argv[3]
offered = s["offered_requests_per_sec"]
cells = [name, f"`{args}`", f"{offered:.0f}" if offered else "closed",
         f"{s['total']['requests_per_sec']:.0f}", f"{s['total']['notifications_per_sec']:.0f}"]
e2e = s["end_to_end"]
cells.append(f"{e2e['delivered']} / {e2e['lost']} / {e2e['duplicated']}")
for p in ("high", "medium", "low"):
    c = s["priorities"][p]
    if c["requests"]:
        i = c["ingest"]
        d = e2e["priorities"][p]
        cells.append(f"{i['p50_ms']:.2f} / {i['p99_ms']:.2f}; e2e {d['p50_ms']:.2f} / {d['p99_ms']:.2f}; err {c['errors']}")
    else:
        cells.append("-")
print("| " + " | ".join(cells) + " |")
PY
)")
}

scenario capacity-single -c 64
capacity=$(jq '.total.requests_per_sec | floor' "$out/capacity-single/summary.json")
for rate in $RATES; do
  scenario "steady-$rate" --rate "$rate" -c 128
done
scenario "steady-batch$BATCH-200" --rate 200 --batch "$BATCH" -c 64
scenario overload --scenario overload --capacity "$capacity" --mix high=10,medium=30,low=60 -c 512 --timeout 10s
scenario burst --scenario burst --rate "$(( capacity / 4 ))" -c 256 --timeout 10s

{
  echo "# Scenario matrix, $day, revision $rev"
  echo
  echo "Machine: $(machine). loadgen, the dispatcher and NATS"
  echo "(v$("$TOOLS/nats-server" --version | awk '{print $2}' | tr -d v), file storage) share these cores."
  echo "Open-loop latencies are from each request's intended start (coordinated omission"
  echo "corrected); closed-loop ones from the actual send. Errors: non-2xx answers (429 when a"
  echo "queue is full) and transport failures."
  echo "End to end: from the intended send to arrival at loadgen's sink (webhook delivery),"
  echo "first deliveries; delivered / lost / duplicated count the whole run, warm-up included."
  echo
  echo "| scenario | loadgen args | offered req/s | achieved req/s | notifications/s | delivered / lost / dup | high: ingest p50 / p99; e2e p50 / p99 (ms) | medium | low |"
  echo "|---|---|---|---|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
  echo
  echo "Reproduce: \`scripts/bench.sh\` (DURATION=$DURATION WARMUP=$WARMUP RATES=\"$RATES\" BATCH=$BATCH QUEUES=$QUEUES);"
  echo "each scenario's command line is in its row, against"
  echo "\`target/release/dispatcher serve --queue-capacity $QUEUES\`. Achieved rates are over the time"
  echo "the recorded requests really took (longer than the schedule when the target fell behind)."
  echo "Per-scenario outputs: \`bench/<scenario>/\` (summary.json, *.hgrm, latency.svg)."
} >"results/$day-$rev/bench.md"
results_row scripts/bench.sh "dispatcher run + sink: closed-loop capacity $capacity req/s; steady, batch, overload, burst with end-to-end and loss" bench.md
cat "results/$day-$rev/bench.md"
