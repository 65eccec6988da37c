#!/usr/bin/env bash
# Scale-out under failure, on loopback, from the release build:
#   1. "single": two `serve`, two `deliver`, two `record` on the shared NATS, PostgreSQL,
#      Redis and FerretDB; one loadgen (open loop, its own sink) per ingress; halfway
#      through, one instance of each role gets SIGKILL.
#   2. "cluster": the same roles on a three-node NATS cluster started here (streams with 3
#      replicas, Herald given all three URLs); halfway through, one NATS node gets SIGKILL.
#   3. "shares": a backlog of every priority, then two delivery instances: the first
#      deliveries follow the weights 8:4:1 across both.
# Each run must end with lost == 0 at both sinks, and every accepted notification recorded
# as delivered in PostgreSQL. Prints one table; exit status non-zero when a check fails.
# Knobs: DURATION (10s), RATE (400 requests/s per loadgen), PROFILE (debug: the build the
# tests already made, so CI spends no time on a release build; release for more load).
# Runs in CI (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
# loadgen's sink listens on loopback, which the webhook SSRF policy refuses by default.
export HERALD_WEBHOOK_ALLOW_NETS=${HERALD_WEBHOOK_ALLOW_NETS:-127.0.0.0/8,::1}
DURATION=${DURATION:-10s}
RATE=${RATE:-400}
PROFILE=${PROFILE:-debug}
TOOLS=${HERALD_TOOLS:-/opt/herald-tools/bin}

. scripts/lib/herald.sh
prepare_roles
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  drop_prefixes
  if [ "${failed:-0}" -ne 0 ]; then echo "scale-out: logs kept in $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT


# run LABEL NATS_URLS REPLICAS KILL: the whole scenario; KILL is a shell function name
# called halfway through the load.
rows=()
failed=0
run() {
  local label=$1 urls=$2 replicas=$3 kill_fn=$4
  local prefix key
  new_prefix so
  local store=(--pg-schema "$prefix")
  local common=(--nats-url "$urls" --prefix "$prefix" "${store[@]}" --stream-replicas "$replicas")
  key=$(tenant_key "$prefix" scaleout)
  local ports=()
  for i in 0 1; do
    local p; p=$(free_port)
    role "$label-record-$i" "http://127.0.0.1:$p/readyz" record "${common[@]}" --mongo-db "$prefix" \
      --metrics-listen "127.0.0.1:$p" --record-ack-wait 10s
    p=$(free_port)
    # Short waits: the drain window is for loss, not for waiting out an hour-long backoff.
    role "$label-deliver-$i" "http://127.0.0.1:$p/readyz" deliver "${common[@]}" \
      --metrics-listen "127.0.0.1:$p" --ack-wait 5s \
      --retry-high 100ms:1s:1h --retry-medium 100ms:1s:1h --retry-low 100ms:1s:1h
    p=$(free_port)
    role "$label-serve-$i" "http://127.0.0.1:$p/readyz" serve "${common[@]}" --listen "127.0.0.1:$p"
    ports+=("$p")
  done
  # --sink-grace: a killed deliver may have delivered without settling; its redelivery
  # (after --ack-wait) must still find the receiver, as a real receiver would be there.
  local lg=()
  for i in 0 1; do
    "$loadgen" --target "http://127.0.0.1:${ports[$i]}" --api-key "$key" --rate "$RATE" \
      -d "$DURATION" --warmup 1s -c 32 --sink 127.0.0.1:0 --drain-timeout 60s --sink-grace 15s \
      --out "$work/$label-load-$i" >"$work/$label-load-$i.txt" 2>&1 &
    lg+=($!)
  done
  sleep "$(awk -v d="${DURATION%s}" 'BEGIN { print 1 + d / 2 }')"
  "$kill_fn" "$label"
  local status=0
  for p in "${lg[@]}"; do wait "$p" || status=1; done
  # Every accepted notification must end up recorded as delivered.
  # Accepted as the sinks count them (warm-up included): every 202 of the run.
  local runs=("$work/$label-load-0" "$work/$label-load-1")
  local accepted lost errors
  accepted=$(summary_sum accepted "${runs[@]}")
  lost=$(summary_sum lost "${runs[@]}")
  errors=$(summary_sum errors "${runs[@]}")
  # Every id answered 202 must be recorded as delivered (a killed recorder's batches come
  # back after --record-ack-wait). Notifications JetStream stored whose ingress died before
  # answering are not in the list: their client saw an error, and their receiver (the
  # loadgen sink) may be gone before they are delivered.
  cat "$work/$label-load-0/accepted-ids.txt" "$work/$label-load-1/accepted-ids.txt" >"$work/$label-accepted.txt"
  local recorded stuck
  recorded=$(recorded_delivered "$prefix" "$work/$label-accepted.txt" "$accepted")
  stuck=$((accepted - recorded))
  local verdict=ok
  if [ "$status" -ne 0 ] || [ "$lost" -ne 0 ] || [ "$recorded" -lt "$accepted" ] || [ "$stuck" -ne 0 ]; then
    verdict=FAILED
    failed=1
    for i in 0 1; do echo "--- $label loadgen $i" >&2; tail -n 6 "$work/$label-load-$i.txt" >&2; done
    echo "--- schema $prefix kept; lost ids:" >&2
    jq -r '.end_to_end.lost_ids // [] | .[]' "$work/$label-load-0/summary.json" "$work/$label-load-1/summary.json" >&2
    psql -h 127.0.0.1 -U root -d test -c "SELECT n.status, n.attempts, n.last_status, left(n.last_error, 80) AS last_error, count(*) FROM \"$prefix\".accepted a LEFT JOIN \"$prefix\".notifications n USING (id) WHERE n.status IS DISTINCT FROM 'delivered' OR n.recipient IS NULL GROUP BY 1, 2, 3, 4 ORDER BY 5 DESC LIMIT 10" >&2
  fi
  local duplicated
  duplicated=$(summary_sum duplicated "${runs[@]}")
  rows+=("| $label | $accepted | $lost | $duplicated | $errors | $recorded | $stuck | $verdict |")
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


# 3. "shares": a backlog of 1000 per priority, then two delivery instances start; the
#    first 650 deliveries (while every class is still backlogged) must follow the weights
#    8:4:1 across both instances (61.5 / 30.8 / 7.7 %, within 6 points).
shares() {
  local prefix key p hook
  new_prefix so
  local store=(--pg-schema "$prefix")
  local common=(--prefix "$prefix" "${store[@]}")
  key=$(tenant_key "$prefix" shares)
  hook=$(free_port)
  # A receiver that logs the priority of each delivery in arrival order.
  python3 scripts/lib/receiver.py "$hook" 200 "$work/shares-order.txt" &
  pids+=($!)
  p=$(free_port)
  role shares-serve "http://127.0.0.1:$p/readyz" serve "${common[@]}" --listen "127.0.0.1:$p"
  for priority in low medium high; do
    python3 -c "import json,sys; print(json.dumps([{'priority': sys.argv[1], 'channel': 'webhook', 'recipient': 'http://127.0.0.1:$hook/hook', 'payload': {'n': i}} for i in range(1000)]))" "$priority" |
      curl -sf "http://127.0.0.1:$p/v1/notifications/batch" -H "authorization: Bearer $key" \
        -H 'content-type: application/json' --data-binary @- >/dev/null
  done
  for i in 0 1; do
    local m; m=$(free_port)
    # Few workers, so that the order is the schedulers' and not the receiver's.
    role "shares-deliver-$i" "http://127.0.0.1:$m/readyz" deliver "${common[@]}" \
      --metrics-listen "127.0.0.1:$m" --channel-concurrency 2:1:1:1
  done
  for _ in $(seq 1 600); do
    [ "$(wc -l <"$work/shares-order.txt" 2>/dev/null || echo 0)" -ge 650 ] && break
    sleep 0.1
  done
  local verdict
  verdict=$(python3 - "$work/shares-order.txt" <<'PY'
import sys
first = [l.strip() for l in open(sys.argv[1])][:650]
share = {p: 100 * first.count(p) / max(len(first), 1) for p in ("high", "medium", "low")}
want = {"high": 800 / 13, "medium": 400 / 13, "low": 100 / 13}
ok = len(first) == 650 and all(abs(share[p] - want[p]) <= 6 for p in want)
print(f"{share['high']:.1f} / {share['medium']:.1f} / {share['low']:.1f} % of the first {len(first)} {'ok' if ok else 'FAILED'}")
PY
)
  echo "scale-out: shares across two delivery instances: $verdict" >&2
  case "$verdict" in *FAILED) failed=1 ;; esac
  rows+=("| shares (2 deliver, backlog 1000 per priority; want 61.5 / 30.8 / 7.7 %) | - | - | - | - | - | - | $verdict |")
  for f in "$work"/shares-*.pid; do kill -TERM "$(cat "$f")" 2>/dev/null || true; done
}
shares

table=$(
  echo "| run | accepted (202) | lost | duplicated | ingest errors | of those recorded delivered | not recorded delivered | verdict |"
  echo "|---|---:|---:|---:|---:|---:|---:|---|"
  printf '%s\n' "${rows[@]}"
)
echo "$table"
# RESULTS=1: keep the table under results/ with machine and command.
if [ "${RESULTS:-0}" = 1 ]; then
  out=$(results_dir)
  {
    echo "# Scale-out under failure"
    echo
    echo "Machine: $(machine). Revision $(git rev-parse --short HEAD), $(date -u +%Y-%m-%dT%H:%MZ)."
    echo "Command: \`PROFILE=$PROFILE DURATION=$DURATION RATE=$RATE RESULTS=1 scripts/scale-out.sh\`."
    echo
    echo "Two serve, two deliver, two record; two loadgens (one per ingress, $RATE req/s each,"
    echo "open loop, own sink). single: shared NATS, SIGKILL to one instance of each role halfway."
    echo "cluster: three-node NATS cluster, R3 streams, SIGKILL to one NATS node halfway."
    echo
    echo "$table"
    echo
    echo "accepted: 202s the sinks expected. duplicated: deliveries repeated because the killed"
    echo "deliver had them in flight (redelivered after --ack-wait; receivers de-duplicate on"
    echo "webhook-id). ingest errors: the killed ingress's loadgen could not connect any more."
    echo "recorded: the 202'd ids (loadgen's accepted-ids.txt) found in PostgreSQL with status"
    echo "delivered."
  } >"$out/scale-out.md"
  results_row scripts/scale-out.sh "2 of each role, SIGKILL mid-run; 3-node NATS cluster, node killed: lost 0" scale-out.md
fi
exit $failed
