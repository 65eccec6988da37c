#!/usr/bin/env bash
# The main job of the quick start: starts the services and the dispatcher, sends a sample
# notification, runs a short open-loop loadgen (per-priority table at the end), prints what
# the dispatcher counted, and stops it. DURATION (10s) and RATE (2000 requests/s) set the load.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
RATE=${RATE:-2000}
ADDR=${HERALD_LISTEN:-127.0.0.1:8080}

bash scripts/services.sh
cargo build --release --locked -p dispatcher -p loadgen --bin dispatcher --bin loadgen

target/release/dispatcher serve --listen "$ADDR" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null' EXIT
for _ in $(seq 1 100); do curl -sf "http://$ADDR/readyz" >/dev/null && break; sleep 0.1; done

echo "--- one notification"
curl -s "http://$ADDR/v1/notifications" -H 'content-type: application/json' \
  -d '{"priority":"high","channel":"email","recipient":"ana@example.com","payload":{"subject":"Your code","code":"492811"}}'
echo
echo "--- loadgen: $RATE requests/s for $DURATION, mix high=10,medium=30,low=60"
target/release/loadgen --target "http://$ADDR" --rate "$RATE" -d "$DURATION" --out target/quickstart-results
echo "--- what the dispatcher counted"
curl -s "http://$ADDR/metrics" | grep -E '^herald_(ingest|queue_depth|publish_failures)'
