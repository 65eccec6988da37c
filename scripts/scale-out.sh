#!/usr/bin/env bash
# Scale-out under failure, on loopback, from the release build:
#   1. "single": two `serve`, two `deliver`, two `record` on the shared NATS, PostgreSQL,
#      Redis and FerretDB; one loadgen (open loop, its own sink) per ingress; halfway
#      through, one instance of each role gets SIGKILL.
#   2. "cluster": the same roles on a three-node NATS cluster started here (streams with 3
#      replicas, Herald given all three URLs); halfway through, one NATS node gets SIGKILL.
# Each run must end with lost == 0 at both sinks, and every accepted notification recorded
# as delivered in PostgreSQL. Prints one table; exit status non-zero when a check fails.
# Knobs: DURATION (10s), RATE (400 requests/s per loadgen), PROFILE (debug: the build the
# tests already made, so CI spends no time on a release build; release for more load).
# Runs in CI (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
RATE=${RATE:-400}
PROFILE=${PROFILE:-debug}
TOOLS=${HERALD_TOOLS:-/opt/herald-tools/bin}

bash scripts/services.sh >/dev/null
flag=(); [ "$PROFILE" = release ] && flag=(--release)
cargo build "${flag[@]}" --locked -p dispatcher -p loadgen --bin dispatcher --bin loadgen 2>&1 | tail -1
bin=$PWD/target/$PROFILE/dispatcher
loadgen=$PWD/target/$PROFILE/loadgen
work=$(mktemp -d)
pids=()
prefixes=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for prefix in "${prefixes[@]}"; do
    for s in NOTIFY DLQ EVENTS; do "$TOOLS/nats" stream rm -f "${prefix}$s" >/dev/null 2>&1 || true; done
    psql -h 127.0.0.1 -U root -d test -qc "DROP SCHEMA IF EXISTS \"$prefix\" CASCADE" >/dev/null 2>&1 || true
    redis-cli --scan --pattern "${prefix}*" | xargs -r redis-cli del >/dev/null 2>&1 || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# role NAME HEALTH_URL ARGS...: starts one dispatcher role; its pid goes to $work/NAME.pid.
role() {
  local name=$1 health=$2; shift 2
  "$bin" --log warn "$@" >"$work/$name.log" 2>&1 &
  echo $! >"$work/$name.pid"
  pids+=($!)
  for _ in $(seq 1 300); do
    curl -sf "$health" >/dev/null && return 0
    sleep 0.1
  done
  echo "scale-out: $name did not become ready" >&2
  tail -5 "$work/$name.log" >&2
  return 1
}

# run LABEL NATS_URLS REPLICAS KILL: the whole scenario; KILL is a shell function name
# called halfway through the load.
rows=()
failed=0
run() {
  local label=$1 urls=$2 replicas=$3 kill_fn=$4
  local prefix="so$(date +%s%N | tail -c 10)_"
  prefixes+=("$prefix")
  local store=(--pg-schema "$prefix" --mongo-db "$prefix")
  local common=(--nats-url "$urls" --prefix "$prefix" "${store[@]}" --stream-replicas "$replicas")
  "$bin" migrate "${store[@]}" >/dev/null
  "$bin" tenant create scaleout "${store[@]}" >/dev/null
  local key
  key=$("$bin" key create --tenant scaleout "${store[@]}" | sed -E 's/.*"key":"([^"]+)".*/\1/')
  local ports=()
  for i in 0 1; do
    local p; p=$(free_port)
    role "$label-record-$i" "http://127.0.0.1:$p/readyz" record "${common[@]}" \
      --metrics-listen "127.0.0.1:$p" --record-ack-wait 10s
    p=$(free_port)
    role "$label-deliver-$i" "http://127.0.0.1:$p/readyz" deliver "${common[@]}" \
      --metrics-listen "127.0.0.1:$p" --ack-wait 5s
    p=$(free_port)
    role "$label-serve-$i" "http://127.0.0.1:$p/readyz" serve "${common[@]}" --listen "127.0.0.1:$p"
    ports+=("$p")
  done
  local lg=()
  for i in 0 1; do
    "$loadgen" --target "http://127.0.0.1:${ports[$i]}" --api-key "$key" --rate "$RATE" \
      -d "$DURATION" --warmup 1s -c 32 --sink 127.0.0.1:0 --drain-timeout 60s \
      --out "$work/$label-load-$i" >"$work/$label-load-$i.txt" 2>&1 &
    lg+=($!)
  done
  sleep "$(python3 -c "import sys; print(1 + float('${DURATION%s}') / 2)")"
  "$kill_fn" "$label"
  local status=0
  for p in "${lg[@]}"; do wait "$p" || status=1; done
  # Every accepted notification must end up recorded as delivered.
  local accepted lost
  accepted=$(python3 -c "import json; print(sum(json.load(open('$work/$label-load-'+str(i)+'/summary.json'))['total']['notifications_accepted'] for i in (0,1)))")
  lost=$(python3 -c "import json; print(sum(json.load(open('$work/$label-load-'+str(i)+'/summary.json'))['end_to_end']['lost'] for i in (0,1)))")
  local errors
  errors=$(python3 -c "import json; print(sum(json.load(open('$work/$label-load-'+str(i)+'/summary.json'))['total']['errors'] for i in (0,1)))")
  local recorded=0
  for _ in $(seq 1 60); do
    recorded=$(psql -h 127.0.0.1 -U root -d test -Atc "SELECT count(*) FROM \"$prefix\".notifications WHERE status = 'delivered' AND recipient IS NOT NULL")
    [ "$recorded" -ge "$accepted" ] && break
    sleep 1
  done
  local stuck
  stuck=$(psql -h 127.0.0.1 -U root -d test -Atc "SELECT count(*) FROM \"$prefix\".notifications WHERE status <> 'delivered' OR recipient IS NULL")
  local verdict=ok
  if [ "$status" -ne 0 ] || [ "$lost" -ne 0 ] || [ "$recorded" -lt "$accepted" ] || [ "$stuck" -ne 0 ]; then
    verdict=FAILED
    failed=1
    tail -3 "$work/$label-load-0.txt" "$work/$label-load-1.txt" >&2
  fi
  rows+=("| $label | $accepted | $lost | $errors | $recorded | $stuck | $verdict |")
  # Stop what is left of this scenario's processes.
  for f in "$work/$label"-*.pid; do kill -TERM "$(cat "$f")" 2>/dev/null || true; done
  sleep 1
}

kill_one_of_each() {
  local label=$1
  for r in serve deliver record; do kill -9 "$(cat "$work/$label-$r-1.pid")"; done
  echo "scale-out: $label: SIGKILL to serve-1, deliver-1, record-1" >&2
}

run single "nats://127.0.0.1:4222" 1 kill_one_of_each

# A three-node JetStream cluster on loopback.
cluster_urls=()
routes=()
client_ports=()
for n in 1 2 3; do
  client_ports+=("$(free_port)")
  routes+=("nats://127.0.0.1:$(free_port)")
done
route_list=$(IFS=,; echo "${routes[*]}")
for n in 0 1 2; do
  "$TOOLS/nats-server" -n "herald-$n" -p "${client_ports[$n]}" -js -sd "$work/nats-$n" \
    --cluster_name herald --cluster "${routes[$n]}" --routes "$route_list" \
    >"$work/nats-$n.log" 2>&1 &
  echo $! >"$work/nats-$n.pid"
  pids+=($!)
  cluster_urls+=("nats://127.0.0.1:${client_ports[$n]}")
done
urls=$(IFS=,; echo "${cluster_urls[*]}")
# Wait for a JetStream meta leader.
for _ in $(seq 1 100); do
  "$TOOLS/nats" --server "$urls" account info >/dev/null 2>&1 && break
  sleep 0.2
done

kill_a_nats_node() {
  kill -9 "$(cat "$work/nats-2.pid")"
  echo "scale-out: $1: SIGKILL to NATS node herald-2" >&2
}
run cluster "$urls" 3 kill_a_nats_node

echo "| run | accepted | lost | ingest errors | recorded delivered | not delivered | verdict |"
echo "|---|---:|---:|---:|---:|---:|---|"
printf '%s\n' "${rows[@]}"
exit $failed
