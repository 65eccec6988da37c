#!/usr/bin/env bash
# Runs the criterion suites (`cargo bench`: scheduler, codec, ingest) and writes a summary
# table of the run to results/<date>-<rev>/criterion.md, with the command and machine.
# The ingest suite publishes to the live NATS, so the services are started first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh >/dev/null
. scripts/lib/herald.sh
rev=$(git rev-parse --short HEAD)
day=$(date -u +%Y-%m-%d)
out=$(results_dir)
log=$(mktemp)
cargo bench --locked -p herald-benches 2>&1 | tee "$log" >/dev/null
{
  echo "# Criterion suites, $day, revision $rev"
  echo
  echo "Machine: $(machine)."
  echo "Command: \`cargo bench -p herald-benches\` (via scripts/bench-criterion.sh); criterion's"
  echo "low / estimate / high for time per iteration and throughput."
  echo
  echo "- push_pop: 60,000 items pushed by N producer threads (priorities round-robin),"
  echo "  drained by one consumer thread. With 2 cores, 2 and 4 producers oversubscribe the"
  echo "  machine: read those rows as contention behaviour, not scaling."
  echo "- pop_batch_backlogged: one thread pushes N then pops N with one pop_batch call."
  echo "- codec_*: parse + validate + encode, per priority, per batch size (elements = notifications)."
  echo "- ingest_inprocess: request → handler → scheduler → publisher → JetStream ack → 202,"
  echo "  one request in flight (time = durable-path latency), live NATS with file storage."
  echo
  echo "| benchmark | time | throughput |"
  echo "|---|---|---|"
  awk '
    /^[a-z_]+\/[^ ]+/ { name = $1 }
    /time:/ && name != "" { t = $0; sub(/.*time: +\[/, "", t); sub(/\]$/, "", t) }
    /thrpt:/ && name != "" && t != "" { r = $0; sub(/.*thrpt: +\[/, "", r); sub(/\]$/, "", r); print "| " name " | " t " | " r " |"; name = ""; t = "" }
  ' "$log"
} >"$out/criterion.md"
results_row scripts/bench-criterion.sh "scheduler, codec and in-process ingest suites" criterion.md
rm -f "$log"
cat "$out/criterion.md"
