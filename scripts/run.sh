#!/usr/bin/env bash
# The main job of the quick start: starts the services and the dispatcher, sends a sample
# notification and a short load (wrk, until Herald's own loadgen lands), prints what the
# dispatcher counted, and stops it. DURATION (default 10s) sets the load's length.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
ADDR=${HERALD_LISTEN:-127.0.0.1:8080}

bash scripts/services.sh
if ! command -v wrk >/dev/null; then
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
cargo build --release --locked -p dispatcher --bin dispatcher

target/release/dispatcher serve --listen "$ADDR" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null' EXIT
for _ in $(seq 1 100); do curl -sf "http://$ADDR/readyz" >/dev/null && break; sleep 0.1; done

echo "--- one notification"
curl -s "http://$ADDR/v1/notifications" -H 'content-type: application/json' \
  -d '{"priority":"high","channel":"email","recipient":"ana@example.com","payload":{"subject":"Your code","code":"492811"}}'
echo
echo "--- $DURATION of single requests at 64 connections (wrk)"
wrk -t2 -c64 -d"$DURATION" --latency -s scripts/wrk/single.lua "http://$ADDR/v1/notifications"
echo "--- what the dispatcher counted"
curl -s "http://$ADDR/metrics" | grep -E '^herald_(ingest|queue_depth|publish_failures)'
