#!/usr/bin/env bash
# Idle cost: a release `dispatcher run` (auth on, recorder, the dependency watch) with no
# traffic at all, and the services beside it; CPU (user + system, from /proc) as percent of
# one core over WINDOW seconds after a 15 s settle, REPEAT runs. Writes
# results/<date>-<rev>/idle.md. Knobs: WINDOW (60), REPEAT (2).
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

rows=()
for i in $(seq 1 "$REPEAT"); do
  run_role "idle$i" >/dev/null
  sleep 15
  d=$(cat "$work/idle$i.pid")
  n=$(pgrep -f "nats-server -a 127.0.0.1 -p 4222" | head -1)
  mapfile -t pg < <(pgrep -x postgres)
  r=$(pgrep -x redis-server | head -1)
  f=$(pgrep -f 'ferretdb --handler' | head -1)
  before=("$(cpu_seconds "$d")" "$(cpu_seconds "$n")" "$(sum_cpu "${pg[@]}")" "$(cpu_seconds "$r")" "$(cpu_seconds "$f")")
  sleep "$WINDOW"
  after=("$(cpu_seconds "$d")" "$(cpu_seconds "$n")" "$(sum_cpu "${pg[@]}")" "$(cpu_seconds "$r")" "$(cpu_seconds "$f")")
  row="| $i"
  for k in 0 1 2 3 4; do row+=" | $(pct "${before[$k]}" "${after[$k]}")"; done
  rows+=("$row |")
  kill -TERM "$d"; wait "$d" 2>/dev/null || true
done

out=$(results_dir)
{
  echo "# Idle cost, $(date -u +%Y-%m-%d)"
  echo
  echo "Machine: $(machine). Command: \`WINDOW=$WINDOW REPEAT=$REPEAT scripts/bench-idle.sh\`: a release"
  echo "\`dispatcher run\` (auth on, recorder, loopback services), no traffic; CPU from /proc over"
  echo "$WINDOW s after a 15 s settle, in percent of one core."
  echo
  echo "| run | dispatcher | nats-server | PostgreSQL (all) | Redis | FerretDB |"
  echo "|---|---:|---:|---:|---:|---:|"
  printf '%s\n' "${rows[@]}"
} >"$out/idle.md"
cat "$out/idle.md"
results_row scripts/bench-idle.sh "idle \`dispatcher run\`: CPU per process, no traffic" idle.md
