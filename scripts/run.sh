#!/usr/bin/env bash
# The main job of the quick start: starts the services, applies the migrations, creates a
# tenant and an API key, starts `dispatcher run` (ingress, delivery and recorder), sends a
# sample notification and reads its status back, runs a short open-loop loadgen whose webhooks go
# to loadgen's own sink (per-priority ingest and end-to-end table, lost/duplicated counts),
# prints what the dispatcher counted, and stops it. DURATION (10s) and RATE (2000/s) set the
# load; the exit status is loadgen's (non-zero if anything accepted was lost).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/herald.sh
# loadgen's sink listens on loopback, which the webhook SSRF policy refuses by default.
export HERALD_WEBHOOK_ALLOW_NETS=${HERALD_WEBHOOK_ALLOW_NETS:-127.0.0.0/8,::1}
DURATION=${DURATION:-10s}
RATE=${RATE:-2000}
ADDR=${HERALD_LISTEN:-127.0.0.1:8080}
METRICS_ADDR=${HERALD_METRICS_LISTEN:-127.0.0.1:9089}

bash scripts/services.sh
cargo build --release --locked -p dispatcher -p loadgen --bin dispatcher --bin loadgen

dispatcher=target/release/dispatcher
$dispatcher migrate
# A tenant (once; its webhook secret is printed) and a fresh API key for this run.
$dispatcher tenant create quickstart 2>/dev/null || true
KEY=$($dispatcher key create --tenant quickstart | sed -E 's/.*"key":"([^"]+)".*/\1/')
AUTH="Authorization: Bearer $KEY"

$dispatcher run --listen "$ADDR" --metrics-listen "$METRICS_ADDR" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null' EXIT
wait_ready "http://$ADDR/readyz" 10 "$pid" || { echo "run: the dispatcher did not become ready" >&2; exit 1; }

echo "--- one notification"
sample=$(curl -s "http://$ADDR/v1/notifications" -H 'content-type: application/json' -H "$AUTH" \
  -d '{"priority":"high","channel":"email","recipient":"ana@example.com","payload":{"subject":"Your code","code":"492811"}}')
echo "$sample"
echo "--- loadgen: $RATE requests/s for $DURATION, mix high=10,medium=30,low=60, webhooks to its sink"
status=0
target/release/loadgen --target "http://$ADDR" --api-key "$KEY" --rate "$RATE" -d "$DURATION" \
  --sink 127.0.0.1:0 --drain-timeout 30s --out target/quickstart-results || status=$?
echo "--- status of the sample (recorded in PostgreSQL, cached in Redis): dead, as no SMTP relay is configured here"
sample_id=$(echo "$sample" | sed -E 's/.*"id":"([^"]+)".*/\1/')
curl -s "http://$ADDR/v1/notifications/$sample_id" -H "$AUTH"
echo
echo "--- dead letters of this tenant"
curl -s "http://$ADDR/v1/dlq?limit=3" -H "$AUTH"
echo
echo "--- what the dispatcher counted"
curl -s "http://$METRICS_ADDR/metrics" | grep -E '^herald_(ingest_accepted|ingest_rejected|delivery_attempts|dead_letters)'
exit $status
