#!/usr/bin/env bash
# Soak: a release `dispatcher run` (ingress, delivery, recorder into PostgreSQL, MongoDB
# and Redis, authentication on) under open-loop load at SHARE (70 %) of the capacity it
# measured itself just before, for SOAK (10m), webhooks to loadgen's sink. Samples the
# dispatcher's RSS every 5 s and its end-to-end latency histogram every 10 s; loadgen's
# per-second ingest p99 comes from its progress lines. Writes soak.md and soak.png
# (RSS, ingest p99, end-to-end p99 over time) under results/<date>-<rev>/ and a row to
# results/README.md.
# Verdict: lost == 0; RSS of the last minute within 15 % of minute 2 (after warm-up);
# ingest and end-to-end p99 of the last minute within 2x of minute 2.
# Knobs: SOAK (10m), SHARE (0.7), PROBE (20s closed loop, 64 connections), CAPACITY
# (skip the probe and use this many req/s).
set -euo pipefail
cd "$(dirname "$0")/.."
# loadgen's sink listens on loopback, which the webhook SSRF policy refuses by default.
export HERALD_WEBHOOK_ALLOW_NETS=${HERALD_WEBHOOK_ALLOW_NETS:-127.0.0.0/8,::1}
SOAK=${SOAK:-10m}
SHARE=${SHARE:-0.7}
PROBE=${PROBE:-20s}
TOOLS=${HERALD_TOOLS:-/opt/herald-tools/bin}
ADDR=127.0.0.1:18090
METRICS_EVERY=10

PROFILE=release
. scripts/lib/herald.sh
prepare_roles
python3 -c 'import matplotlib' 2>/dev/null || pip install -q matplotlib >/dev/null 2>&1
trap stop_roles EXIT

new_prefix soak
key=$(tenant_key "$prefix" soak)
role soak-run "http://$ADDR/readyz" run --listen "$ADDR" --prefix "$prefix" \
  --pg-schema "$prefix" --mongo-db "$prefix"
dispatcher=$(cat "$work/soak-run.pid")

if [ -z "${CAPACITY:-}" ]; then
  echo "soak: probing capacity: closed loop, 64 connections, $PROBE" >&2
  "$loadgen" --target "http://$ADDR" --api-key "$key" -c 64 -d "$PROBE" --warmup 2s \
    --sink 127.0.0.1:0 --drain-timeout 120s --out "$work/probe" >"$work/probe.txt" 2>&1
  CAPACITY=$(jq '.total.requests_per_sec | floor' "$work/probe/summary.json")
  # Let the recorder catch up before the soak starts from a quiet system.
  sleep 20
fi
rate=$(awk -v c="$CAPACITY" -v s="$SHARE" 'BEGIN { print int(c * s) }')
echo "soak: capacity $CAPACITY req/s; soaking at $rate req/s for $SOAK" >&2

# Samplers: RSS (kB) every 5 s; the end-to-end histogram buckets every 10 s.
(
  start=$(date +%s)
  while kill -0 "$dispatcher" 2>/dev/null; do
    echo "$(($(date +%s) - start)) $(awk '/^VmRSS/ {print $2}' "/proc/$dispatcher/status")"
    sleep 5
  done
) >"$work/rss.txt" &
pids+=($!)
(
  start=$(date +%s)
  while kill -0 "$dispatcher" 2>/dev/null; do
    echo "@ $(($(date +%s) - start))"
    curl -s "$(metrics_url soak-run)" | grep '^herald_delivery_end_to_end_seconds_bucket' || true
    sleep "$METRICS_EVERY"
  done
) >"$work/e2e.txt" &
pids+=($!)

status=0
"$loadgen" --target "http://$ADDR" --api-key "$key" --rate "$rate" -d "$SOAK" --warmup 5s -c 128 \
  --sink 127.0.0.1:0 --drain-timeout 120s --out "$work/soak" >"$work/soak.txt" 2>"$work/soak.progress" || status=$?
pending=$("$TOOLS/nats" consumer info "${prefix}NOTIFY" "${prefix}record-postgres-notify" --json 2>/dev/null |
  jq -e .num_pending 2>/dev/null || echo "?")

out=$(results_dir)
# The raw samples stay with the report, so it can be re-drawn without a new soak:
# python3 scripts/lib/soak_report.py DIR CAPACITY RATE SOAK PENDING STATUS
mkdir -p "$out/soak-data"
cp "$work/rss.txt" "$work/e2e.txt" "$work/soak.progress" "$work/soak/summary.json" "$out/soak-data/"
verdict=0
python3 scripts/lib/soak_report.py "$out" "$CAPACITY" "$rate" "$SOAK" "$pending" "$status" || verdict=1
results_row scripts/soak.sh "$SOAK at $rate req/s (${SHARE} of $CAPACITY): $( [ $verdict -eq 0 ] && echo 'RSS and p99 flat, lost 0' || echo FAILED)" soak.md
exit $verdict
