#!/usr/bin/env bash
# The docker-compose topology without Docker: services (scripts/services.sh), then
# `dispatcher migrate`, then $RECORD recorders, $DELIVER delivery workers and $SERVE
# ingresses as separate processes from the release build, on loopback. Prints the
# ingress URLs and an API key; scripts/down.sh stops exactly these processes (pid files in
# $STATE). Ports: serve i → 8080+i (API) and 9300+i (health/metrics), deliver i → 9100+i,
# record i → 9200+i (health/metrics).
# Knobs: SERVE (1), DELIVER (1), RECORD (1), PREFIX (empty), HERALD_* for everything else.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/herald.sh
# loadgen's sink listens on loopback, which the webhook SSRF policy refuses by default.
export HERALD_WEBHOOK_ALLOW_NETS=${HERALD_WEBHOOK_ALLOW_NETS:-127.0.0.0/8,::1}
SERVE=${SERVE:-1}
DELIVER=${DELIVER:-1}
RECORD=${RECORD:-1}
STATE=${STATE:-target/herald-up}
PREFIX=${PREFIX:-}

if ls "$STATE"/*.pid >/dev/null 2>&1; then
  echo "up: already running (pid files in $STATE); scripts/down.sh first" >&2
  exit 1
fi
bash scripts/services.sh >/dev/null
cargo build --release --locked -p dispatcher -p loadgen --bin dispatcher --bin loadgen 2>&1 | tail -1
mkdir -p "$STATE"
bin=target/release/dispatcher
common=(--prefix "$PREFIX")
$bin migrate >/dev/null

# start NAME HEALTH_URL ARGS...: one role in the background, pid file, wait until ready.
start() {
  local name=$1 health=$2; shift 2
  $bin --log-format json "$@" >"$STATE/$name.log" 2>&1 &
  echo $! >"$STATE/$name.pid"
  wait_ready "$health" 20 "$(cat "$STATE/$name.pid")" && return 0
  echo "up: $name did not become ready; see $STATE/$name.log" >&2
  tail -5 "$STATE/$name.log" >&2
  # Stop the roles already started (and drop their pid files), so the next up can run.
  bash scripts/down.sh >&2
  exit 1
}
for i in $(seq 0 $((RECORD - 1))); do
  start "record-$i" "http://127.0.0.1:$((9200 + i))/readyz" record "${common[@]}" --metrics-listen "127.0.0.1:$((9200 + i))"
done
for i in $(seq 0 $((DELIVER - 1))); do
  start "deliver-$i" "http://127.0.0.1:$((9100 + i))/readyz" deliver "${common[@]}" --metrics-listen "127.0.0.1:$((9100 + i))"
done
for i in $(seq 0 $((SERVE - 1))); do
  start "serve-$i" "http://127.0.0.1:$((8080 + i))/readyz" serve "${common[@]}" --listen "127.0.0.1:$((8080 + i))" \
    --metrics-listen "127.0.0.1:$((9300 + i))"
done

$bin tenant create local >/dev/null 2>&1 || true
key=$($bin key create --tenant local | sed -E 's/.*"key":"([^"]+)".*/\1/')
echo "$key" >"$STATE/api-key"
echo "up: $SERVE serve (http://127.0.0.1:8080…), $DELIVER deliver, $RECORD record; logs and pids in $STATE"
echo "up: API key for tenant 'local' in $STATE/api-key"
