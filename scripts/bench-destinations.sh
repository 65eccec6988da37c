#!/usr/bin/env bash
# Failing destinations (issue 17): one webhook receiver fails for 30 s while nine others
# stay healthy, under load. A release `dispatcher run` (authentication on, the recorder
# into PostgreSQL, MongoDB and Redis) with default delivery settings; ten loadgens, each
# with its own sink (one destination each), open loop at RATE/10 with the default mix.
# Two runs, each on fresh streams, schema and database:
#   baseline   all ten healthy
#   fault      sink 0 fails from 5 s to 35 s after it starts (FAULT: reset drops each
#              connection, hang never answers); or, with FAULT=backlog, all ten stay
#              healthy while BACKLOG (25,000: over 10x --max-ack-pending) low
#              notifications scheduled an hour ahead, and BACKLOG more to a receiver that
#              is down, wait beside them (issue 27: waiting must not take the work window)
#   FAULT=quiet (issue 31) is a case of its own: one quiet receiver (QUIET_RATE, 0.3
#              notifications/s, every priority alike) is down (connections reset) for
#              OUTAGE (10m) from 5 s after its loadgen starts, with the default retry
#              policies; reported: delivered after recovery, dead letters (want 0), lost,
#              the time from recovery to the last delivery, and the CPU the dispatcher and
#              nats-server spent while it was down.
# Reported per run: the nine healthy destinations' end-to-end p99 per priority (the worst
# of the nine), the failing destination's accepted, delivered and lost, dead letters,
# the highest attempt recorded, waits by reason and circuit changes (from /metrics).
# Targets: healthy p99 <= 1.5x baseline; every failing-destination message delivered
# after recovery with attempts to spare (no dead letters); lost 0.
# Writes destinations-<FAULT>.md under results/<date>-<rev>/ (loadgen summaries beside it,
# in destinations-<FAULT>/) and a row in results/README.md. Knobs: RATE (500), DURATION (40s), FAULT (reset), DRAIN (180s).
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${RATE:-500}
DURATION=${DURATION:-40s}
FAULT=${FAULT:-reset}
DRAIN=${DRAIN:-180s}
BACKLOG=${BACKLOG:-25000}
TOOLS=${HERALD_TOOLS:-/opt/herald-tools/bin}
PROFILE=release
. scripts/lib/herald.sh
prepare_roles
report=destinations-$FAULT.md
out=$(results_dir)/destinations-$FAULT
mkdir -p "$out"
trap stop_roles EXIT
per=$(awk -v r="$RATE" 'BEGIN { print r / 10 }')

# The quiet receiver down for OUTAGE: one run, its own report, then exit.
quiet() {
  local rate=${QUIET_RATE:-0.3} outage=${OUTAGE:-10m} outage_s started recovered_at ended
  outage_s=$(awk -v d="$outage" 'BEGIN { n = d + 0; if (d ~ /m$/) n *= 60; if (d ~ /h$/) n *= 3600; print n }')
  run_role destquiet
  local dir=$out/quiet pid dispatcher_cpu nats_cpu revision
  revision=$(git rev-parse --short HEAD)
  mkdir -p "$dir"
  pid=$(cat "$work/destquiet.pid")
  local nats
  nats=$(pgrep -f "nats-server -a 127.0.0.1 -p 4222" | awk 'NR == 1')
  started=$(date +%s)
  "$loadgen" --target "http://127.0.0.1:$port" --api-key "$key" --rate "$rate" -c 4 --threads 1 \
    --mix high=1,medium=1,low=1 -d "$((outage_s + 15))s" --warmup 0s --sink 127.0.0.1:0 \
    --sink-fault "reset:5s:$((outage_s + 5))s" --drain-timeout "${DRAIN_QUIET:-2h}" \
    --out "$dir/d0" >"$dir/d0.log" 2>&1 &
  local load=$!
  sleep 5
  local d0 n0
  d0=$(cpu_seconds "$pid") n0=$(cpu_seconds "$nats")
  sleep "$outage_s"
  dispatcher_cpu=$(awk -v a="$d0" -v b="$(cpu_seconds "$pid")" 'BEGIN { printf "%.2f", b - a }')
  nats_cpu=$(awk -v a="$n0" -v b="$(cpu_seconds "$nats")" 'BEGIN { printf "%.2f", b - a }')
  recovered_at=$(date +%s)
  wait "$load" || true
  ended=$(date +%s)
  curl -s "$(metrics_url destquiet)" >"$dir/metrics.txt"
  curl -s -H "Authorization: Bearer $key" "http://127.0.0.1:$port/v1/dlq?limit=1000" >"$dir/dlq.json"
  sleep 3
  psql -h 127.0.0.1 -U root -d test -Atc "SELECT priority, count(*), max(attempts) FROM \"$prefix\".notifications GROUP BY 1 ORDER BY 1" >"$dir/by_priority" 2>/dev/null || true
  local f0=$dir/d0/summary.json dead
  dead=$(jq '.items | length' "$dir/dlq.json" 2>/dev/null || echo "?")
  {
    echo "# A quiet receiver down for $outage, $(date -u +%Y-%m-%d)"
    echo
    echo "Machine: $(machine). Revision: $revision (built when the run began)."
    echo "Command: \`FAULT=quiet OUTAGE=$outage QUIET_RATE=$rate scripts/bench-destinations.sh\`."
    echo "A release \`dispatcher run\` (auth, recorder) with the default retry policies"
    echo "(high 200ms:5m:1h, medium 1s:1h:24h, low 5s:1h:72h) and circuit breaker. One loadgen"
    echo "at $rate notifications/s (high, medium and low alike) for $((outage_s + 15)) s; its sink"
    echo "resets every connection from 5 s to $((outage_s + 5)) s, then takes everything."
    echo
    echo "| accepted | delivered | lost | dead letters | recovery to last delivery | dispatcher CPU while down | nats-server CPU while down |"
    echo "|---|---|---|---|---|---|---|"
    echo "| $(jq .end_to_end.accepted "$f0") | $(jq .end_to_end.delivered "$f0") | $(jq .end_to_end.lost "$f0") | $dead | $((ended - recovered_at)) s (loadgen's drain, 0.1 s polls) | $dispatcher_cpu s ($(awk -v c="$dispatcher_cpu" -v s="$outage_s" 'BEGIN { printf "%.2f", 100 * c / s }') % of a core) | $nats_cpu s (the shared server: anything else on the machine counts too) |"
    echo
    echo "Recorded per priority (priority, notifications, highest attempt):"
    echo
    echo '```'
    cat "$dir/by_priority"
    echo '```'
    echo
    echo "Waits by reason and circuit changes (from /metrics):"
    echo
    echo '```'
    grep -E '^herald_delivery_waits_total|^herald_destination_transitions_total' "$dir/metrics.txt" || true
    echo '```'
  } >"$out/../$report"
  cat "$out/../$report"
  results_row scripts/bench-destinations.sh "a quiet receiver down for $outage: lost $(jq .end_to_end.lost "$f0"), dead letters $dead, last delivery $((ended - recovered_at)) s after recovery" "$report"
  # Raw loadgen output and ids: the report above is what results/ keeps.
  rm -rf "$out"
}
if [ "$FAULT" = quiet ]; then
  quiet
  exit 0
fi

# backlog DIR: BACKLOG low notifications an hour ahead and BACKLOG to a receiver that is
# down (nothing listens on port 1), 500 per batch request; then waits until the waiting
# ones have left the work window for HOLD, and writes how many wait there.
backlog() {
  local dir=$1 later i n
  later=$(date -u -d '+1 hour' +%Y-%m-%dT%H:%M:%SZ)
  for target in "scheduled" "down"; do
    for i in $(seq 1 $((BACKLOG / 500))); do
      jq -nc --arg at "$later" --arg t "$target" '[range(500) | {priority: "low", channel: "webhook",
          payload: {n: .}} + (if $t == "scheduled" then {recipient: "http://127.0.0.1:9/hook", send_at: $at}
          else {recipient: "http://127.0.0.1:1/hook"} end)]' |
        curl -sf -o /dev/null -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
          --data-binary @- "http://127.0.0.1:$port/v1/notifications/batch"
    done
  done
  for _ in $(seq 1 120); do
    n=$("$TOOLS/nats" --server nats://127.0.0.1:4222 stream subjects "${prefix}HOLD" "${prefix}hold.>" --json 2>/dev/null | jq 'length' || echo 0)
    [ "$n" -ge "$BACKLOG" ] && break
    sleep 1
  done
  echo "$n" >"$dir/held"
}

# run NAME [FAULT_SPEC]: a fresh `dispatcher run` and ten loadgens; sink 0 gets the fault.
run() {
  local name=$1 fault=${2:-} i args
  run_role "dest$name"
  local dir=$out/$name
  mkdir -p "$dir"
  if [ "$fault" = backlog ]; then
    backlog "$dir"
    fault=""
  fi
  local loads=()
  for i in $(seq 0 9); do
    args=(--target "http://127.0.0.1:$port" --api-key "$key" --rate "$per" -c 16 --threads 1
      -d "$DURATION" --warmup 2s --sink 127.0.0.1:0 --drain-timeout "$DRAIN" --out "$dir/d$i")
    [ "$i" -eq 0 ] && [ -n "$fault" ] && args+=(--sink-fault "$fault")
    "$loadgen" "${args[@]}" >"$dir/d$i.log" 2>&1 &
    loads+=($!)
  done
  for p in "${loads[@]}"; do wait "$p" || true; done
  curl -s "$(metrics_url "dest$name")" >"$dir/metrics.txt"
  curl -s -H "Authorization: Bearer $key" "http://127.0.0.1:$port/v1/dlq?limit=1000" >"$dir/dlq.json"
  curl -s -H "Authorization: Bearer $key" "http://127.0.0.1:$port/v1/destinations" >"$dir/destinations.json"
  # The recorder writes attempts asynchronously: give it a moment.
  sleep 3
  psql -h 127.0.0.1 -U root -d test -Atc "SELECT coalesce(max(attempt), 0) FROM \"$prefix\".delivery_attempts" >"$dir/max_attempt" 2>/dev/null || echo "?" >"$dir/max_attempt"
  kill -TERM "$(cat "$work/dest$name.pid")" 2>/dev/null || true
  wait "$(cat "$work/dest$name.pid")" 2>/dev/null || true
}

run baseline
if [ "$FAULT" = backlog ]; then run fault backlog; else run fault "$FAULT:5s:35s"; fi

# worst NAME PRIORITY: the worst end-to-end p99 (ms) over the nine healthy destinations.
worst() {
  for i in $(seq 1 9); do jq ".end_to_end.priorities.$2.p99_ms" "$out/$1/d$i/summary.json"; done |
    sort -g | tail -1
}
sum_healthy() {
  for i in $(seq 1 9); do jq ".end_to_end.$2" "$out/$1/d$i/summary.json"; done | jq -s add
}
metric() {
  grep -E "^$2" "$out/$1/metrics.txt" | awk '{ s += $2 } END { print s + 0 }'
}

verdict_p99=met
failed=0
{
  echo "# Failing destinations, $(date -u +%Y-%m-%d)"
  echo
  echo "Machine: $(machine). Revision: $(git rev-parse --short HEAD)."
  echo "Command: \`RATE=$RATE DURATION=$DURATION FAULT=$FAULT scripts/bench-destinations.sh\`."
  echo "A release \`dispatcher run\` (auth, recorder) with default delivery settings; ten loadgens"
  echo "at $per/s each (default mix, open loop), each with its own sink."
  if [ "$FAULT" = backlog ]; then
    echo "In the fault run all ten stay healthy, but before the load $BACKLOG low notifications"
    echo "were scheduled an hour ahead and $BACKLOG more sent to a receiver that is down; when"
    echo "the load began, $(cat "$out/fault/held") of them waited in HOLD (out of the work window,"
    echo "--max-ack-pending 2048 per priority). The nine rows below are sinks 1-9, all healthy."
  else
    echo "In the fault run sink 0 fails ($FAULT) from 5 s to 35 s after it starts."
  fi
  echo
  echo "## The nine healthy destinations: worst end-to-end p99 of the nine"
  echo
  echo "| priority | baseline | with one failing | ratio | target <= 1.5x |"
  echo "|---|---|---|---|---|"
  for p in high medium low; do
    b=$(worst baseline "$p") f=$(worst fault "$p")
    ratio=$(awk -v b="$b" -v f="$f" 'BEGIN { printf "%.2f", (b > 0 ? f / b : 0) }')
    ok=$(awk -v r="$ratio" 'BEGIN { print (r <= 1.5 ? "met" : "missed") }')
    [ "$ok" = met ] || verdict_p99=missed
    echo "| $p | $b ms | $f ms | $ratio | $ok |"
  done
  echo
  echo "Healthy destinations, fault run: accepted $(sum_healthy fault accepted), delivered $(sum_healthy fault delivered), lost $(sum_healthy fault lost)."
  echo "Baseline, all ten: lost $(for i in $(seq 0 9); do jq .end_to_end.lost "$out/baseline/d$i/summary.json"; done | jq -s add)."
  echo
  if [ "$FAULT" = backlog ]; then echo "## Sink 0 (healthy too in this mode)"; else echo "## The failing destination"; fi
  echo
  f0=$out/fault/d0/summary.json
  echo "| accepted | delivered | lost | e2e max | dead letters (all) | highest attempt (all) |"
  echo "|---|---|---|---|---|---|"
  dead=$(jq '.items | length' "$out/fault/dlq.json" 2>/dev/null || echo "?")
  echo "| $(jq .end_to_end.accepted "$f0") | $(jq .end_to_end.delivered "$f0") | $(jq .end_to_end.lost "$f0") | $(jq '[.end_to_end.priorities[].max_ms] | max' "$f0") ms | $dead | $(cat "$out/fault/max_attempt") |"
  echo
  echo "Waits (no attempt spent) by reason, fault run:"
  echo
  echo '```'
  grep -E '^herald_delivery_waits_total|^herald_destination_transitions_total' "$out/fault/metrics.txt" || true
  echo '```'
  echo
  echo "The destination as the operator API showed it after the run:"
  echo
  echo '```json'
  jq -c '.destinations[]' "$out/fault/destinations.json" 2>/dev/null || true
  echo '```'
  lost=$(( $(jq .end_to_end.lost "$f0") + $(sum_healthy fault lost) ))
  echo
  echo "## Verdict"
  echo
  echo "- healthy p99 within 1.5x of the baseline: $verdict_p99"
  echo "- failing destination's messages delivered after recovery, no dead letters: $([ "$(jq .end_to_end.lost "$f0")" = 0 ] && [ "$dead" = 0 ] && echo met || echo missed)"
  echo "- lost 0: $([ "$lost" = 0 ] && echo met || echo "missed ($lost)")"
} >"$out/../$report"
cat "$out/../$report"
# The accepted ids are for the sink's accounting, done above; they would only bloat results/.
find "$out" -name accepted-ids.txt -delete
what="one of ten destinations fails ($FAULT, 30 s)"
[ "$FAULT" = backlog ] && what="ten healthy destinations beside $BACKLOG scheduled and $BACKLOG to a dead receiver"
results_row scripts/bench-destinations.sh "$what: healthy p99 $verdict_p99, lost $lost" "$report"
