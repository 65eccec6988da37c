#!/usr/bin/env bash
# The main job of the quick start: starts the services and `dispatcher run` (ingress and
# delivery), sends a sample notification, runs a short open-loop loadgen whose webhooks go
# to loadgen's own sink (per-priority ingest and end-to-end table, lost/duplicated counts),
# prints what the dispatcher counted, and stops it. DURATION (10s) and RATE (2000/s) set the
# load; the exit status is loadgen's (non-zero if anything accepted was lost).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
RATE=${RATE:-2000}
ADDR=${HERALD_LISTEN:-127.0.0.1:8080}

bash scripts/services.sh
cargo build --release --locked -p dispatcher -p loadgen --bin dispatcher --bin loadgen

target/release/dispatcher run --listen "$ADDR" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null' EXIT
for _ in $(seq 1 100); do curl -sf "http://$ADDR/readyz" >/dev/null && break; sleep 0.1; done

echo "--- one notification"
curl -s "http://$ADDR/v1/notifications" -H 'content-type: application/json' \
  -d '{"priority":"high","channel":"email","recipient":"ana@example.com","payload":{"subject":"Your code","code":"492811"}}'
echo
echo "--- loadgen: $RATE requests/s for $DURATION, mix high=10,medium=30,low=60, webhooks to its sink"
status=0
target/release/loadgen --target "http://$ADDR" --rate "$RATE" -d "$DURATION" \
  --sink 127.0.0.1:0 --drain-timeout 30s --out target/quickstart-results || status=$?
echo "--- dead letters (the sample above is email, and no SMTP relay is configured here)"
curl -s "http://$ADDR/v1/dlq?limit=3"
echo
echo "--- what the dispatcher counted"
curl -s "http://$ADDR/metrics" | grep -E '^herald_(ingest_accepted|ingest_rejected|delivery_attempts|dead_letters)'
exit $status
