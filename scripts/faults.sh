#!/usr/bin/env bash
# Fault injection under load, on loopback: one `serve`, one `deliver`, one `record`, and a
# loadgen (open loop, its own sink, loss accounting) per case; FAULT_AT seconds into the
# load a fault starts, PAUSE seconds later it is repaired:
#   kill-serve, kill-deliver, kill-record   SIGKILL to that role, restarted after PAUSE
#   nats-restart                            SIGKILL to nats-server, restarted (roles
#                                           reconnect by themselves; ingest answers 503)
#   postgres-restart, redis-restart,        the store stopped, started again
#   mongo-restart
#   receiver-hang, receiver-reset,          the webhook receiver never answers, drops
#   receiver-slow                           connections, or answers 800 ms late
# Every case must end with lost == 0 (every 202'd notification reached the receiver) and
# every 202'd id recorded `delivered` in PostgreSQL. Prints one table (RESULTS=1 keeps it
# under results/); exit status non-zero when a check fails.
# Knobs: CASES (all), RATE (300 req/s), DURATION (12s), FAULT_AT (4), PAUSE (4),
# PROFILE (debug: the build the tests made).
# Uses the shared services (scripts/services.sh) and restarts them: run it alone.
set -euo pipefail
cd "$(dirname "$0")/.."
# loadgen's sink listens on loopback, which the webhook SSRF policy refuses by default.
export HERALD_WEBHOOK_ALLOW_NETS=${HERALD_WEBHOOK_ALLOW_NETS:-127.0.0.0/8,::1}
CASES=${CASES:-kill-serve kill-deliver kill-record nats-restart postgres-restart redis-restart mongo-restart receiver-hang receiver-reset receiver-slow}
RATE=${RATE:-300}
DURATION=${DURATION:-12s}
FAULT_AT=${FAULT_AT:-4}
PAUSE=${PAUSE:-4}
PROFILE=${PROFILE:-debug}
TOOLS=${HERALD_TOOLS:-/opt/herald-tools/bin}

. scripts/lib/herald.sh
prepare_roles
failed=0
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  bash scripts/services.sh >/dev/null 2>&1 || true
  drop_prefixes
  if [ "$failed" -ne 0 ]; then echo "faults: logs kept in $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT


pg_version=$(ls /etc/postgresql | sort -V | tail -n1)
# fault CASE start|repair
fault() {
  local case=$1 step=$2
  case "$case:$step" in
    kill-serve:start | kill-deliver:start | kill-record:start)
      kill -9 "$(cat "$work/$case-${case#kill-}.pid")" ;;
    kill-serve:repair | kill-deliver:repair | kill-record:repair)
      restart_role "$case-${case#kill-}" ;;
    nats-restart:start) pkill -9 -f "nats-server -a 127.0.0.1 -p 4222" ;;
    postgres-restart:start) pg_ctlcluster --skip-systemctl-redirect "$pg_version" main stop -m fast ;;
    # A crash, not a shutdown: what Redis acknowledged must be in its append-only file.
    redis-restart:start) pkill -9 -x redis-server || true ;;
    mongo-restart:start) pkill -f 'ferretdb --handler' ;;
    nats-restart:repair | postgres-restart:repair | redis-restart:repair | mongo-restart:repair)
      bash scripts/services.sh >/dev/null ;;
    receiver-*) ;; # the sink's own window (--sink-fault)
  esac
}

rows=()
one_case() {
  local case=$1 prefix key
  new_prefix fi
  key=$(tenant_key "$prefix" faults)
  local common=(--prefix "$prefix" --pg-schema "$prefix")
  local p serve_port record_port
  record_port=$(free_port)
  role "$case-record" "http://127.0.0.1:$record_port/readyz" record "${common[@]}" --mongo-db "$prefix" \
    --metrics-listen "127.0.0.1:$record_port" --record-ack-wait 10s
  p=$(free_port)
  # Short waits and timeouts: the drain window is for loss, not for an hour-long backoff.
  role "$case-deliver" "http://127.0.0.1:$p/readyz" deliver "${common[@]}" \
    --metrics-listen "127.0.0.1:$p" --ack-wait 5s --webhook-timeout 1s \
    --retry-high 100ms:1s:1h --retry-medium 100ms:1s:1h --retry-low 100ms:1s:1h
  serve_port=$(free_port)
  role "$case-serve" "http://127.0.0.1:$serve_port/readyz" serve "${common[@]}" \
    --listen "127.0.0.1:$serve_port"
  local sink_fault=() resend=()
  # Every 10th request's key is sent again after the load: keys claimed before the crash
  # must replay their first id, never accept a second notification.
  [ "$case" = redis-restart ] && resend=(--resend-every 10)
  local window="$((FAULT_AT + 1))s:$((FAULT_AT + 1 + PAUSE))s" # the sink starts 1 s before the load
  case "$case" in
    receiver-hang) sink_fault=(--sink-fault "hang:$window") ;;
    receiver-reset) sink_fault=(--sink-fault "reset:$window") ;;
    receiver-slow) sink_fault=(--sink-fault "slow=800ms:$window") ;;
  esac
  local run="$work/$case-load"
  # --sink-grace: a killed deliver may have delivered without settling; its redelivery
  # (after --ack-wait) must still find the receiver, as a real receiver would be there.
  "$loadgen" --target "http://127.0.0.1:$serve_port" --api-key "$key" --rate "$RATE" \
    -d "$DURATION" --warmup 1s -c 32 --timeout 5s --sink 127.0.0.1:0 "${sink_fault[@]}" "${resend[@]}" \
    --drain-timeout 90s --sink-grace 8s --out "$run" >"$run.txt" 2>&1 &
  local lg=$!
  sleep "$((1 + FAULT_AT))"
  fault "$case" start
  echo "faults: $case: fault at ${FAULT_AT}s" >&2
  sleep "$PAUSE"
  fault "$case" repair
  echo "faults: $case: repaired after ${PAUSE}s" >&2
  local status=0
  wait "$lg" || status=1
  local accepted lost duplicated errors recorded
  accepted=$(summary_sum accepted "$run")
  lost=$(summary_sum lost "$run")
  duplicated=$(summary_sum duplicated "$run")
  errors=$(summary_sum errors "$run")
  # What the errors were (429 overloaded, 503 while NATS is away, refused connections...).
  local why
  why=$(jq -r '[.priorities[] | (.errors_by_code // .errors_by_status // {}), (.errors_by_transport // {}) | to_entries[]]
    | group_by(.key) | map("\(.[0].key): \(map(.value) | add)") | join(", ")' "$run/summary.json")
  [ -n "$why" ] || why=none
  local delivered=$((accepted - lost))
  recorded=$(recorded_delivered "$prefix" "$run/accepted-ids.txt" "$accepted")
  # Evidence that the fault bit: notifications that needed more than one attempt, and
  # recorder batches that failed and were retried.
  local retried write_failures
  retried=$(psql -h 127.0.0.1 -U root -d test -Atc "SELECT count(*) FROM \"$prefix\".accepted a JOIN \"$prefix\".notifications n USING (id) WHERE n.attempts > 1")
  write_failures=$(curl -s "http://127.0.0.1:$record_port/metrics" | awk '/^herald_record_failures_total/ {s += $2} END {print s + 0}')
  local verdict=ok keys=""
  if [ ${#resend[@]} -gt 0 ]; then
    local replayed again
    replayed=$(jq -r '.resent.replayed // 0' "$run/summary.json")
    again=$(jq -r '.resent.accepted_again // 0' "$run/summary.json")
    keys=", keys sent again: replayed $replayed, accepted again $again"
    [ "$replayed" -gt 0 ] && [ "$again" -eq 0 ] || status=1
  fi
  if [ "$status" -ne 0 ] || [ "$lost" -ne 0 ] || [ "$recorded" -ne "$accepted" ] || [ "$accepted" -eq 0 ]; then
    verdict=FAILED
    failed=1
    echo "--- $case loadgen" >&2
    tail -n 8 "$run.txt" >&2
    psql -h 127.0.0.1 -U root -d test -c "SELECT n.status, n.attempts, n.last_status, left(n.last_error, 80) AS last_error, count(*) FROM \"$prefix\".accepted a LEFT JOIN \"$prefix\".notifications n USING (id) WHERE n.status IS DISTINCT FROM 'delivered' OR n.recipient IS NULL GROUP BY 1, 2, 3, 4 ORDER BY 5 DESC LIMIT 10" >&2 || true
  fi
  rows+=("| $case | $accepted | $delivered | $lost | $duplicated | $errors ($why) | $recorded | $retried | $write_failures | $verdict |")
  echo "faults: $case: accepted $accepted, delivered $delivered, lost $lost, duplicated $duplicated, ingest errors $errors ($why), recorded delivered $recorded, retried $retried, recorder write failures $write_failures$keys: $verdict" >&2
  for f in "$work/$case"-*.pid; do kill -TERM "$(cat "$f")" 2>/dev/null || true; done
  sleep 1
}

for c in $CASES; do one_case "$c"; done

table=$(
  echo "| case | accepted (202) | delivered | lost | duplicated | ingest errors | recorded delivered | needed >1 attempt | recorder write failures | verdict |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"
  printf '%s\n' "${rows[@]}"
)
echo "$table"
if [ "${RESULTS:-0}" = 1 ]; then
  out=$(results_dir)
  {
    echo "# Fault injection under load"
    echo
    echo "Machine: $(machine). Revision $(git rev-parse --short HEAD), $(date -u +%Y-%m-%dT%H:%MZ)."
    echo "Command: \`PROFILE=$PROFILE RATE=$RATE DURATION=$DURATION FAULT_AT=$FAULT_AT PAUSE=$PAUSE RESULTS=1 scripts/faults.sh\`."
    echo
    echo "One serve, one deliver, one record (debug build unless PROFILE=release), one loadgen"
    echo "at $RATE req/s open loop with its own sink. ${FAULT_AT}s into the load the fault starts;"
    echo "${PAUSE}s later it is repaired (role restarted, service started again, receiver healthy)."
    echo
    echo "$table"
    echo
    echo "- accepted: notifications answered 202 (warm-up included). delivered: of those, how many"
    echo "  reached the receiver. lost = accepted - delivered. duplicated: deliveries beyond the"
    echo "  first of an id (at least once; receivers de-duplicate on webhook-id)."
    echo "- ingest errors: requests not answered 202 (connection refused while serve is down, 503"
    echo "  while NATS is down, 429 when admission sheds, timeouts), by status or transport error."
    echo "  None of them was stored as accepted by the client."
    echo "- recorded delivered: the 202'd ids found in PostgreSQL with status delivered."
    echo "- needed >1 attempt, recorder write failures: evidence that the fault bit (attempts"
    echo "  as recorded; herald_record_failures_total of the record role after the run, reset by"
    echo "  its restart in kill-record)."
  } >"$out/faults.md"
  results_row scripts/faults.sh "SIGKILL per role, NATS/PostgreSQL/Redis/MongoDB restarts, receiver hang/reset/slow under load" faults.md
fi
exit $failed
