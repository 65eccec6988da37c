#!/usr/bin/env bash
# Compares two dispatcher builds by CPU per request, the steadier figure on these shared
# cores: `serve --auth off` at a fixed open-loop rate (so both batch alike), ROUNDS
# alternating rounds of 20 s after a 3 s warm-up, CPU of the dispatcher and nats-server
# and redis-server from /proc. For "did this change make the ingress slower" (an old build: a git worktree
# built with `cargo build --release`). ROLE=run compares the whole pipeline instead:
# `dispatcher run` with auth and the recorder, loadgen with its sink (the CPU then
# includes delivery and recording until the sink has every notification).
# Usage: scripts/compare-cpu.sh BEFORE_BIN AFTER_BIN [RATE (8000)] [ROUNDS (3)]
# Writes results/<date>-<rev>/compare-cpu.md (-2, -3, ... after the first) and a row in results/README.md; BEFORE and
# AFTER (environment) name the builds in the report. NATS_GOMAXPROCS_BEFORE / _AFTER: when
# either is set, nats-server is restarted before each run with GOMAXPROCS at that side's
# value (empty: Go's default), for an A/B of nats-server itself (pass one binary twice).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/herald.sh
export HERALD_WEBHOOK_ALLOW_NETS=127.0.0.0/8,::1
before=$1 after=$2 rate=${3:-8000} rounds=${4:-3}
ROLE=${ROLE:-serve}
bash scripts/services.sh >/dev/null
cargo build --release --locked -p loadgen --bin loadgen 2>&1 | tail -1
nats_pid=$(pgrep -f "nats-server -a 127.0.0.1 -p 4222" | head -1)
redis_pid=$(pgrep -x redis-server | head -1)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# nats_side [GOMAXPROCS]: restarts nats-server with it (empty: Go's default; none:
# services.sh's own default), if the A/B asks.
nats_side() {
  [ -n "${NATS_GOMAXPROCS_BEFORE:-}${NATS_GOMAXPROCS_AFTER:-}" ] || return 0
  kill "$nats_pid"
  while kill -0 "$nats_pid" 2>/dev/null; do sleep 0.2; done
  if [ $# -eq 0 ]; then
    env -u NATS_GOMAXPROCS bash scripts/services.sh >/dev/null
  else
    NATS_GOMAXPROCS=$1 bash scripts/services.sh >/dev/null
  fi
  nats_pid=$(pgrep -f "nats-server -a 127.0.0.1 -p 4222" | head -1)
}

# one BIN: prints "dispatcher_us nats_us redis_us accepted ingest_p99_ms e2e_p99_ms
# dispatcher_cs nats_cs nats_msgs" (the last three per request: context switches, and
# messages through nats-server in and out)
one() {
  local port prefix pid d0 n0 r0 d1 n1 r1 dc0 nc0 m0 dc1 nc1 m1 key=""
  bin=$1
  port=$(free_port)
  prefix="cmp$(date +%s%N | tail -c 8)_"
  local role=(serve --listen "127.0.0.1:$port" --prefix "$prefix" --auth off)
  local load=()
  if [ "$ROLE" = run ]; then
    key=$(tenant_key "$prefix" cmp)
    role=(run --listen "127.0.0.1:$port" --prefix "$prefix" --pg-schema "$prefix" --mongo-db "$prefix")
    load=(--api-key "$key" --sink 127.0.0.1:0 --drain-timeout 60s)
  fi
  "$bin" --log warn "${role[@]}" >>"$work/dispatcher.log" 2>&1 &
  pid=$!
  wait_ready "http://127.0.0.1:$port/readyz" 10 "$pid" || { echo "$bin not ready" >&2; exit 1; }
  target/release/loadgen --target "http://127.0.0.1:$port" --rate 2000 -d 3s -c 64 "${load[@]}" >/dev/null 2>&1
  d0=$(cpu_seconds "$pid"); n0=$(cpu_seconds "$nats_pid"); r0=$(cpu_seconds "$redis_pid")
  dc0=$(context_switches "$pid"); nc0=$(context_switches "$nats_pid"); m0=$(nats_messages)
  target/release/loadgen --target "http://127.0.0.1:$port" --rate "$rate" -d 20s -c 64 "${load[@]}" \
    --out "$work/run" >/dev/null 2>&1
  d1=$(cpu_seconds "$pid"); n1=$(cpu_seconds "$nats_pid"); r1=$(cpu_seconds "$redis_pid")
  dc1=$(context_switches "$pid"); nc1=$(context_switches "$nats_pid"); m1=$(nats_messages)
  kill "$pid"; wait "$pid" 2>/dev/null || true
  local store=(--keep-schema)
  [ "$ROLE" = run ] && store=(--pg-schema "$prefix" --mongo-db "$prefix")
  "$bin" --log warn purge --prefix "$prefix" "${store[@]}" >/dev/null || true
  jq -r --arg d "$(awk -v a="$d0" -v b="$d1" 'BEGIN { print b - a }')" \
    --arg n "$(awk -v a="$n0" -v b="$n1" 'BEGIN { print b - a }')" \
    --arg r "$(awk -v a="$r0" -v b="$r1" 'BEGIN { print b - a }')" \
    --arg dc "$((dc1 - dc0))" --arg nc "$((nc1 - nc0))" --arg m "$((m1 - m0))" \
    'def one_decimal: . * 10 | round / 10;
      ([.end_to_end.priorities[]?.p99_ms] | max // "-" | if type == "number" then one_decimal else . end) as $e2e
      | .total | def us($s): ($s | tonumber) * 1e6 / .requests | one_decimal;
      def per($s): ($s | tonumber) / .requests | . * 100 | round / 100;
      "\(us($d)) \(us($n)) \(us($r)) \(.notifications_accepted)/\(.requests) \(.ingest.p99_ms | one_decimal) \($e2e) \(per($dc)) \(per($nc)) \(per($m))"' \
    "$work/run/summary.json"
}

out=$(results_dir)
# A second comparison on the same revision keeps the first one's report.
report=compare-cpu.md n=1
while [ -e "$out/$report" ]; do n=$((n + 1)); report=compare-cpu-$n.md; done
{
  echo "# CPU per request, two builds, $(date -u +%Y-%m-%d)"
  echo
  echo "Machine: $(machine). Before: ${BEFORE:-$before}. After: ${AFTER:-$after}."
  if [ "$ROLE" = run ]; then
    echo "Command: \`ROLE=run scripts/compare-cpu.sh $before $after $rate $rounds\`: \`dispatcher run\` (auth on,"
    echo "recorder into PostgreSQL, FerretDB and Redis), loadgen with its sink (CPU until the sink has every notification),"
  else
    echo "Command: \`scripts/compare-cpu.sh $before $after $rate $rounds\`: \`dispatcher serve --auth off\`,"
  fi
  echo "loadgen open loop at $rate/s for 20 s (64 connections, default mix) after 3 s at 2000/s;"
  echo "CPU (user + system) of the dispatcher, nats-server and redis-server from /proc over the 20 s."
  if [ -n "${NATS_GOMAXPROCS_BEFORE:-}${NATS_GOMAXPROCS_AFTER:-}" ]; then
    echo "nats-server restarted before each run with GOMAXPROCS=${NATS_GOMAXPROCS_BEFORE:-(default)} (before)"
    echo "and GOMAXPROCS=${NATS_GOMAXPROCS_AFTER:-(default)} (after)."
  fi
  echo
  echo "Context switches: every thread's, /proc/PID/task/*/status; NATS messages: in + out, nats-server's /varz."
  echo
  echo "| round | build | dispatcher µs/request | nats-server µs/request | redis-server µs/request | accepted | ingest p99 ms | e2e p99 ms (worst class) | dispatcher context switches/request | nats-server context switches/request | NATS messages/request |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|"
  for r in $(seq 1 "$rounds"); do
    for which in before after; do
      bin=$before; [ "$which" = after ] && bin=$after
      if [ "$which" = before ]; then nats_side "${NATS_GOMAXPROCS_BEFORE:-}"; else nats_side "${NATS_GOMAXPROCS_AFTER:-}"; fi
      read -r d n rd acc p99 e2e dcs ncs msgs < <(one "$bin")
      echo "| $r | $which | $d | $n | $rd | $acc | $p99 | $e2e | $dcs | $ncs | $msgs |"
    done
  done
  nats_side
} | tee "$out/$report"
results_row scripts/compare-cpu.sh "CPU per request ($ROLE) at $rate/s, ${BEFORE:-before} vs ${AFTER:-after}" "$report"
