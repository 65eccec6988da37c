#!/usr/bin/env bash
# Cost per notification over the whole pipeline (issue 15, and issue 19's low rates): a
# release `dispatcher run` with authentication and the recorder (PostgreSQL, MongoDB-wire,
# Redis), loadgen open loop with its sink, each rate against fresh streams, schema and
# database. CPU seconds from /proc for every process, from the start of the load until
# every consumer (delivery and the four recorder consumers) has nothing pending:
#   dispatcher; nats-server; PostgreSQL (every process of the cluster, and the backends
#   that ended: the postmaster's waited-for children); the MongoDB-wire server (FerretDB
#   here, whose figures are its own, not MongoDB's); redis-server; loadgen, apart.
# A short cpu-clock profile of the dispatcher at each rate, summarised by symbol.
# Writes cost.md under results/<date>-<rev>/ and a row in results/README.md.
# PostgreSQL's deadlock count (pg_stat_database) over each rate's run is reported too.
# Over the profile's window, `perf stat` counts the syscalls and context switches of the
# dispatcher and of nats-server (threads alive when it starts), per notification offered
# in that window: at low rates these, not the work per message, are where the CPU goes.
# "drained/s" is accepted notifications over the seconds from the first request until every
# consumer settled: with RATES holding e.g. 8000/50 (8,000 notifications/s in batches of
# 50), the highest rate the whole pipeline sustains, where the ingress is not the limit.
# A rate given as e.g. 2000+ed25519 runs with the tenant's ed25519 key (v1a beside v1).
# "closed" is the capacity row: loadgen closed loop (64 connections, single requests,
# default mix) against the shipped defaults, admission's headroom included, as users run
# it; its rate is what was accepted per second.
# Floors, for each single-request rate: the CPU per request of bare202 (a hyper server
# that answers 202 and does nothing else) under the same loadgen at that rate, and
# nats-server's CPU per message under `nats bench js pub sync` (one publish at a time,
# throttled to that rate, file storage): what one request and one durable publish cost at
# that rate at the least, on this machine, in the same run. And the stores' own cost of
# what Herald asks of them, with no Herald (benches/floor.rs, paced at the rate): a
# notification's two documents written as the recorder writes them (one insert_many per
# --record-linger per collection), FerretDB's CPU (its SQLite backend is in-process here); Redis's CPU for one
# fsynced SET per notification (a durable idempotency claim) and for one GET (a round trip
# that writes nothing).
# Knobs: RATES ("100 2000 8000/50"; add "closed" for capacity), DURATION (20s), PROFILE_SECONDS (5), SETTLE (120: seconds),
# FLOORS (1; 0 skips the floors, for an A/B of Herald's own rows).
set -euo pipefail
cd "$(dirname "$0")/.."
export HERALD_WEBHOOK_ALLOW_NETS=${HERALD_WEBHOOK_ALLOW_NETS:-127.0.0.0/8,::1}
RATES=${RATES:-100 2000 8000/50}
DURATION=${DURATION:-20s}
PROFILE_SECONDS=${PROFILE_SECONDS:-5}
SETTLE=${SETTLE:-120}
FLOORS=${FLOORS:-1}
TOOLS=${HERALD_TOOLS:-/opt/herald-tools/bin}
ADDR=127.0.0.1:18097

PROFILE=release
. scripts/lib/herald.sh
prepare_roles
out=$(results_dir)/cost
mkdir -p "$out"
trap stop_roles EXIT

postmaster=$(pgrep -f 'bin/postgres -D' | awk 'NR == 1')
# CPU seconds of a process group: the named processes alive now, plus, for PostgreSQL,
# what its ended backends used (the postmaster's cutime + cstime).
group_cpu() {
  case $1 in
    postgres)
      {
        for p in $({ pgrep -x postgres; pgrep -f '^postgres: '; } | sort -u); do
          cpu_seconds "$p" 2>/dev/null || true
        done
        awk -v hz="$(getconf CLK_TCK)" '{ print ($16 + $17) / hz }' "/proc/$postmaster/stat"
      } | awk '{ s += $1 } END { printf "%.3f", s }'
      ;;
    *) cpu_seconds "$2" ;;
  esac
}
# Deadlocks PostgreSQL detected in the database so far (issue 19: there should be none).
deadlocks() {
  psql -h 127.0.0.1 -U root -d test -Atc \
    "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
}
# The consumers of a prefix have nothing pending and nothing unacknowledged.
settled() {
  local stream consumer info
  for stream in NOTIFY EVENTS; do
    for consumer in $("$TOOLS/nats" consumer ls "${prefix}$stream" --names 2>/dev/null); do
      info=$("$TOOLS/nats" consumer info "${prefix}$stream" "$consumer" --json 2>/dev/null) || return 1
      [ "$(jq '.num_pending + .num_ack_pending' <<<"$info")" -eq 0 ] || return 1
    done
  done
}

# window_counts FILE RATE: "syscalls / context switches" per notification offered over the
# profile's window, from `perf stat -x,` output.
window_counts() {
  awk -F, -v n="$(awk -v r="$2" -v s="$PROFILE_SECONDS" 'BEGIN { print r * s }')" '
    $3 == "raw_syscalls:sys_enter" { sys = $1 } $3 == "context-switches" { cs = $1 }
    END { if (sys == "" || cs == "") print "?"; else printf "%.1f / %.1f", sys / n, cs / n }' "$1" 2>/dev/null || echo "?"
}

rows=()
profiles=()
for spec in $RATES; do
  # RATE (notifications/s, one per request) or RATE/BATCH (through the batch endpoint),
  # either with +ed25519: the tenant has an ed25519 key, so every webhook is signed v1 and v1a.
  signing=${spec#*+}
  [ "$signing" != "$spec" ] || signing=""
  load=${spec%+*}
  rate=${load%%/*}
  batch=0
  [ "$load" = "$rate" ] || batch=${load#*/}
  run=$rate${signing:++$signing}
  requests=$rate
  [ "$batch" -eq 0 ] || requests=$(awk -v r="$rate" -v b="$batch" 'BEGIN { print r / b }')
  pace=(--rate "$requests" --batch "$batch")
  [ "$rate" != closed ] || pace=()
  new_prefix cost
  key=$(tenant_key "$prefix" cost)
  [ -z "$signing" ] || "$bin" tenant rotate-secret cost --ed25519 --pg-schema "$prefix" >/dev/null
  role "cost-$run" "http://$ADDR/readyz" run --listen "$ADDR" --prefix "$prefix" \
    --pg-schema "$prefix" --mongo-db "$prefix"
  dispatcher=$(cat "$work/cost-$run.pid")
  nats=$(pgrep -f "nats-server -a 127.0.0.1 -p 4222" | awk 'NR == 1')
  ferret=$(pgrep -f ferretdb | awk 'NR == 1')
  redis=$(pgrep -x redis-server | awk 'NR == 1')
  declare -A before=()
  for g in dispatcher:$dispatcher nats:$nats postgres: ferretdb:$ferret redis:$redis; do
    before[${g%%:*}]=$(group_cpu "${g%%:*}" "${g#*:}")
  done
  deadlocks_before=$(deadlocks)
  echo "bench-cost: $rate/s for $DURATION" >&2
  started=$(date +%s.%N)
  "$loadgen" --target "http://$ADDR" --api-key "$key" "${pace[@]}" -d "$DURATION" --warmup 0s \
    -c 64 --sink 127.0.0.1:0 --drain-timeout "${SETTLE}s" --out "$out/$run" \
    >"$out/$run.txt" 2>"$out/$run.progress" &
  lg=$!
  sleep 5
  stats=()
  for p in dispatcher:$dispatcher nats:$nats; do
    perf stat -x, -e raw_syscalls:sys_enter,context-switches -p "${p#*:}" \
      -o "$work/stat-$run-${p%%:*}.csv" -- sleep "$PROFILE_SECONDS" >/dev/null 2>&1 &
    stats+=($!)
  done
  perf record -q -e cpu-clock -F 499 -g -p "$dispatcher" -o "$work/perf-$run.data" \
    -- sleep "$PROFILE_SECONDS" >/dev/null 2>&1 || true
  for j in "${stats[@]}"; do wait "$j" || true; done
  lg_cpu=0
  while kill -0 "$lg" 2>/dev/null; do
    lg_cpu=$(cpu_seconds "$lg" 2>/dev/null || echo "$lg_cpu")
    sleep 0.5
  done
  wait "$lg" || true
  waited=0
  until settled || [ "$waited" -ge "$SETTLE" ]; do sleep 1; waited=$((waited + 1)); done
  settled_note=$([ "$waited" -lt "$SETTLE" ] && echo "settled" || echo "NOT settled after ${SETTLE}s")
  # From the first request until every consumer had settled: what the whole pipeline
  # drained per second (below the offered rate when delivery or recording fell behind).
  elapsed=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')
  sleep 1 # PostgreSQL publishes its statistics about once a second
  new_deadlocks=$(($(deadlocks) - deadlocks_before))
  n=$(jq '.total.notifications_accepted' "$out/$run/summary.json")
  # Closed loop: the rate is what was accepted, and it names the row.
  [ "$rate" != closed ] || rate=$(jq '.total.notifications_per_sec | floor' "$out/$run/summary.json")
  [ "$spec" != closed ] || spec="closed: $rate"
  refused=$(jq '.total.errors' "$out/$run/summary.json")
  lost=$(jq '.end_to_end.lost // "?"' "$out/$run/summary.json")
  p99=$(jq -r '[.priorities[] | .ingest.p99_ms] | max' "$out/$run/summary.json" 2>/dev/null || echo "?")
  e2e=$(jq -r '[.end_to_end.priorities[] | .p99_ms] | max' "$out/$run/summary.json" 2>/dev/null || echo "?")
  total=0
  cells=""
  for g in dispatcher:$dispatcher nats:$nats postgres: ferretdb:$ferret redis:$redis; do
    name=${g%%:*}
    used=$(awk -v a="${before[$name]}" -v b="$(group_cpu "$name" "${g#*:}")" 'BEGIN { print b - a }')
    total=$(awk -v t="$total" -v u="$used" 'BEGIN { print t + u }')
    cells+=" $(awk -v u="$used" -v n="$n" 'BEGIN { printf "%.0f", u * 1e6 / n }') |"
  done
  counts="$(window_counts "$work/stat-$run-dispatcher.csv" "$rate") | $(window_counts "$work/stat-$run-nats.csv" "$rate")"
  drained=$(awk -v n="$n" -v e="$elapsed" 'BEGIN { printf "%.0f", n / e }')
  rows+=("| $spec | $n | $drained | $refused | $lost |$cells $(awk -v u="$total" -v n="$n" 'BEGIN { printf "%.0f", u * 1e6 / n }') | $(awk -v u="$lg_cpu" -v n="$n" 'BEGIN { printf "%.0f", u * 1e6 / n }') | $p99 | $e2e | $settled_note after ${waited}s | $new_deadlocks | $counts |")
  if [ -s "$work/perf-$run.data" ]; then
    profiles+=("### $run/s: dispatcher, ${PROFILE_SECONDS} s of cpu-clock samples, top symbols (self)")
    profiles+=('```')
    profiles+=("$(perf report -q -i "$work/perf-$run.data" --no-children --sort sym --stdio 2>/dev/null |
      grep -E '^ +[0-9.]+%' | awk 'NR <= 25' || true)")
    profiles+=('```')
  fi
  # Every accepted id, for checks by hand; megabytes that results/ need not keep.
  rm -f "$out/$run/accepted-ids.txt"
  kill -TERM "$dispatcher" 2>/dev/null || true
  wait "$dispatcher" 2>/dev/null || true
done

# The floors (single-request rates only).
floors=()
[ "$FLOORS" = 0 ] ||
  cargo build --release --locked -p herald-benches --bin bare202 --bin bench-floor 2>&1 | tail -1 >&2
nats_pid=$(pgrep -f "nats-server -a 127.0.0.1 -p 4222" | awk 'NR == 1')
ferret=$(pgrep -f ferretdb | awk 'NR == 1')
redis=$(pgrep -x redis-server | awk 'NR == 1')
# store_floor SPEC WHAT GROUP:PID...: runs bench-floor WHAT at SPEC/s for DURATION and
# prints each group's CPU µs per notification, space-separated.
store_floor() {
  local spec=$1 what=$2 g n
  shift 2
  declare -A at=()
  for g in "$@"; do at[$g]=$(group_cpu "${g%%:*}" "${g#*:}"); done
  n=$(target/release/bench-floor "$what" --rate "$spec" --duration "$DURATION" | awk '{ print $1 }')
  for g in "$@"; do
    awk -v a="${at[$g]}" -v b="$(group_cpu "${g%%:*}" "${g#*:}")" -v n="$n" \
      'BEGIN { printf "%.0f ", (b - a) * 1e6 / n }'
  done
  echo
}
for spec in $RATES; do
  [ "$FLOORS" != 0 ] || break
  case $spec in */* | *+* | closed) continue ;; esac
  bare_addr=127.0.0.1:$(free_port)
  target/release/bare202 "$bare_addr" >/dev/null 2>&1 &
  bare=$!
  sleep 0.5
  b0=$(cpu_seconds "$bare")
  "$loadgen" --target "http://$bare_addr" --rate "$spec" -d "$DURATION" --warmup 0s -c 64 \
    --out "$work/floor-$spec" >/dev/null 2>&1 || true
  bare_us=$(awk -v a="$b0" -v b="$(cpu_seconds "$bare")" -v n="$(jq '.total.requests' "$work/floor-$spec/summary.json")" \
    'BEGIN { printf "%.0f", (b - a) * 1e6 / n }')
  kill "$bare"; wait "$bare" 2>/dev/null || true
  stream="costfloor$(date +%s%N | tail -c 8)"
  msgs=$(awk -v r="$spec" -v d="${DURATION%s}" 'BEGIN { print r * d }')
  n0=$(cpu_seconds "$nats_pid"); t0=$(date +%s.%N)
  "$TOOLS/nats" bench js pub sync "$stream.x" --stream "$stream" --create --storage file \
    --msgs "$msgs" --throughput "$spec" --size 512B --clients 1 >/dev/null 2>&1 || true
  n1=$(cpu_seconds "$nats_pid"); t1=$(date +%s.%N)
  "$TOOLS/nats" stream rm "$stream" -f >/dev/null 2>&1 || true
  read -r doc_ferret < <(store_floor "$spec" documents "ferretdb:$ferret")
  read -r redis_set < <(store_floor "$spec" redis-set "redis:$redis")
  read -r redis_get < <(store_floor "$spec" redis-get "redis:$redis")
  floors+=("| $spec | $bare_us | $(awk -v a="$n0" -v b="$n1" -v n="$msgs" 'BEGIN { printf "%.0f", (b - a) * 1e6 / n }') | $(awk -v n="$msgs" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", n / (b - a) }') | $doc_ferret | $redis_set | $redis_get |")
done

{
  echo "# Cost per notification, whole pipeline, $(date -u +%Y-%m-%d), revision $(git rev-parse --short HEAD)"
  echo
  echo "Machine: $(machine); every process below shares it."
  echo "Command: \`RATES=\"$RATES\" DURATION=$DURATION scripts/bench-cost.sh\`: \`dispatcher run\` (auth on,"
  echo "recorder into PostgreSQL, FerretDB and Redis), loadgen open loop with its sink, default mix,"
  echo "64 connections. CPU (user + system, /proc) from the start of the load until every consumer"
  echo "had nothing pending, per accepted notification. FerretDB is a stand-in for MongoDB: its"
  echo "figures are its own. Syscalls and context switches: \`perf stat\` over the ${PROFILE_SECONDS} s"
  echo "profile window (from 5 s into the load), per notification offered in it."
  echo
  echo "| rate (/batch) | accepted | drained/s | refused | lost | dispatcher µs | nats-server µs | PostgreSQL µs | FerretDB µs | Redis µs | all µs | loadgen µs | ingest p99 ms (worst class) | e2e p99 ms (worst class) | consumers | PostgreSQL deadlocks | dispatcher syscalls / context switches | nats-server syscalls / context switches |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
  echo
  if [ "${#floors[@]}" -gt 0 ]; then
    echo "### Floors at the same rates, same run"
    echo
    echo "bare202 (hyper, answers 202, nothing else) under the same loadgen, CPU per request;"
    echo "nats-server's CPU per message under \`nats bench js pub sync\` (one 512 B publish at a time,"
    echo "file storage, throttled to the rate; achieved rate beside it). The stores alone, paced at the"
    echo "rate by \`bench-floor\` (no Herald): a notification's two documents (its \`messages\` document"
    echo "and a \`deliveries\` entry, one unordered insert_many per collection per record linger, under"
    echo "Herald's indexes), FerretDB's CPU per notification (SQLite inside it); Redis's CPU for one"
    echo "fsynced SET per notification (appendfsync always: a durable idempotency claim) and for one GET."
    echo
    echo "| rate | bare hyper µs/request | nats-server µs/sync publish | publishes/s achieved | FerretDB µs/2 documents | Redis µs/fsynced SET | Redis µs/GET |"
    echo "|---|---|---|---|---|---|---|"
    printf '%s\n' "${floors[@]}"
    echo
  fi
  printf '%s\n' "${profiles[@]}"
} >"$out/../cost.md"
results_row scripts/bench-cost.sh "CPU per notification by process, and the rate drained, at $(echo "$RATES" | sed 's/ /, /g') (notifications/s[/batch])" cost.md
cat "$out/../cost.md"
