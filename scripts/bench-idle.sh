#!/usr/bin/env bash
# Idle cost: a release `dispatcher run` (auth on, recorder, the dependency watch) with no
# traffic at all, and the services beside it; CPU (user + system, from /proc) as percent of
# one core over WINDOW seconds after a 15 s settle, REPEAT runs. Beside it, the floors the
# dispatcher cannot go under, over the same window: the services with no dispatcher at all
# (before the first run), and with the last run's streams and durable consumers still
# defined but no dispatcher connected (what nats-server spends on Herald's layout alone).
# Also per second: the dispatcher's context switches and nats-server's messages (in + out),
# the wake-ups an idle Herald causes. Writes results/<date>-<rev>/idle.md.
# Knobs: WINDOW (60), REPEAT (2).
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=release
WINDOW=${WINDOW:-60}
REPEAT=${REPEAT:-2}
. scripts/lib/herald.sh
prepare_roles
trap stop_roles EXIT

sum_cpu() {
  local total=0 p
  for p in "$@"; do total=$(awk -v a="$total" -v b="$(cpu_seconds "$p" 2>/dev/null || echo 0)" 'BEGIN { print a + b }'); done
  echo "$total"
}
pct() { awk -v a="$1" -v b="$2" -v w="$WINDOW" 'BEGIN { printf "%.2f", (b - a) * 100 / w }'; }
per_second() { awk -v a="$1" -v b="$2" -v w="$WINDOW" 'BEGIN { printf "%.1f", (b - a) / w }'; }

n=$(pgrep -f "nats-server -a 127.0.0.1 -p 4222" | head -1)
mapfile -t pg < <(pgrep -x postgres)
r=$(pgrep -x redis-server | head -1)
f=$(pgrep -f 'ferretdb --handler' | head -1)

# measure LABEL [DISPATCHER_PID]: one row over WINDOW seconds.
measure() {
  local label=$1 d=${2:-} k
  local before after dcs0=0 dcs1=0 m0 m1
  before=("$( [ -n "$d" ] && cpu_seconds "$d" || echo 0)" "$(cpu_seconds "$n")" "$(sum_cpu "${pg[@]}")" "$(cpu_seconds "$r")" "$(cpu_seconds "$f")")
  [ -n "$d" ] && dcs0=$(context_switches "$d")
  m0=$(nats_messages)
  sleep "$WINDOW"
  after=("$( [ -n "$d" ] && cpu_seconds "$d" || echo 0)" "$(cpu_seconds "$n")" "$(sum_cpu "${pg[@]}")" "$(cpu_seconds "$r")" "$(cpu_seconds "$f")")
  [ -n "$d" ] && dcs1=$(context_switches "$d")
  m1=$(nats_messages)
  local row="| $label"
  if [ -n "$d" ]; then row+=" | $(pct "${before[0]}" "${after[0]}")"; else row+=" | –"; fi
  for k in 1 2 3 4; do row+=" | $(pct "${before[$k]}" "${after[$k]}")"; done
  if [ -n "$d" ]; then row+=" | $(per_second "$dcs0" "$dcs1")"; else row+=" | –"; fi
  row+=" | $(per_second "$m0" "$m1") |"
  rows+=("$row")
}

rows=()
measure "floor: services alone, no dispatcher"
for i in $(seq 1 "$REPEAT"); do
  run_role "idle$i" >/dev/null
  sleep 15
  d=$(cat "$work/idle$i.pid")
  measure "$i: \`dispatcher run\`" "$d"
  kill -TERM "$d"; wait "$d" 2>/dev/null || true
  # One run's layout at a time: the floor below is measured with the last run's alone.
  if [ "$i" -lt "$REPEAT" ]; then drop_prefixes; prefixes=(); fi
done
sleep 5
measure "floor: Herald's streams and consumers defined, no dispatcher"

out=$(results_dir)
{
  echo "# Idle cost, $(date -u +%Y-%m-%d)"
  echo
  echo "Machine: $(machine). Command: \`WINDOW=$WINDOW REPEAT=$REPEAT scripts/bench-idle.sh\`: a release"
  echo "\`dispatcher run\` (auth on, recorder, loopback services), no traffic; CPU from /proc over"
  echo "$WINDOW s after a 15 s settle, in percent of one core. The floor rows are the same window"
  echo "with no dispatcher running: before the first run, and after the last one stopped (its"
  echo "streams and durable consumers still defined). Context switches: every dispatcher thread's;"
  echo "NATS messages: nats-server's in + out (/varz)."
  echo
  echo "| run | dispatcher | nats-server | PostgreSQL (all) | Redis | FerretDB | dispatcher context switches/s | NATS messages/s |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|"
  printf '%s\n' "${rows[@]}"
} >"$out/idle.md"
cat "$out/idle.md"
results_row scripts/bench-idle.sh "idle \`dispatcher run\`: CPU per process, no traffic, beside the services' floor" idle.md
