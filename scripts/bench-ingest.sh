#!/usr/bin/env bash
# Ingest benchmark, everything in one run on this machine:
#   1. single requests at $CONNS connections (wrk): a bare hyper server that only answers
#      202 (the ceiling for an HTTP service here), then Herald's POST /v1/notifications;
#   2. Herald's batch endpoint with batches of $BATCH;
#   3. the raw JetStream publish rate for the same message size, storage and dedup
#      headers, from `nats bench js pub async` (the ceiling for anything publishing here).
# Writes results/<date>-<rev>/ingest.md (with the commands) and adds a row to
# results/README.md. Knobs: DURATION (15s), CONNS (64), BATCH (1000), BATCH_CONNS (4), RUNS (3).
set -euo pipefail
cd "$(dirname "$0")/.."
# loadgen's sink listens on loopback, which the webhook SSRF policy refuses by default.
export HERALD_WEBHOOK_ALLOW_NETS=${HERALD_WEBHOOK_ALLOW_NETS:-127.0.0.0/8,::1}

DURATION=${DURATION:-15s}
CONNS=${CONNS:-64}
BATCH=${BATCH:-1000}
BATCH_CONNS=${BATCH_CONNS:-4}
THREADS=${THREADS:-2}
HERALD_ADDR=127.0.0.1:18080
BARE_ADDR=127.0.0.1:18081
TOOLS=${HERALD_TOOLS:-/opt/herald-tools/bin}
NATS="$TOOLS/nats"

bash scripts/services.sh >/dev/null
. scripts/lib/herald.sh
# CPU seconds the whole machine spent busy (user, nice, system, irq, softirq).
machine_busy() {
  awk -v hz="$(getconf CLK_TCK)" '$1 == "cpu" { print ($2 + $3 + $4 + $7 + $8) / hz; exit }' /proc/stat
}
ensure_wrk
cargo build --release --locked -p dispatcher -p herald-benches --bin dispatcher --bin bare202 2>&1 | tail -1

rev=$(git rev-parse --short HEAD)
day=$(date -u +%Y-%m-%d)
out=$(results_dir)
prefix="bench$(date +%s)_"
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  "$NATS" stream rm -f "${prefix}NOTIFY" >/dev/null 2>&1 || true
  "$NATS" stream rm -f "${prefix}RAW" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

target/release/dispatcher --log warn serve --listen "$HERALD_ADDR" --metrics-listen 127.0.0.1:0 --prefix "$prefix" --auth off &
pids+=($!)
target/release/bare202 "$BARE_ADDR" 2>/dev/null &
pids+=($!)
wait_ready "http://$HERALD_ADDR/readyz" || { echo "dispatcher not ready" >&2; exit 1; }

# wrk_run NAME URL SCRIPT CONNS: runs wrk $RUNS times (this shared 2-core machine is noisy),
# keeps the output of the median run by requests/s, prints "rps p50 p99 non2xx errors".
RUNS=${RUNS:-3}
wrk_run() {
  local name=$1 url=$2 script=$3 conns=$4 i
  # Warm-up, not recorded (its request count is kept for the CPU accounting below).
  wrk -t"$THREADS" -c"$conns" -d3s -s "$script" "$url" >"$work/$name.warmup.txt" 2>&1 || true
  for i in $(seq 1 "$RUNS"); do
    wrk -t"$THREADS" -c"$conns" -d"$DURATION" --latency -s "$script" "$url" >"$work/$name.$i.txt" 2>&1
    echo "$(awk '/Requests\/sec/ {print $2}' "$work/$name.$i.txt") $i"
  done | sort -n | awk -v m=$(( (RUNS + 1) / 2 )) 'NR == m {print $2}' >"$work/$name.median"
  {
    echo "median of $RUNS runs by requests/s; all runs: $(grep -h 'Requests/sec' "$work/$name".[0-9]*.txt | awk '{print $2}' | paste -sd' ')"
    cat "$work/$name.$(cat "$work/$name.median").txt"
  } >"$work/$name.txt"
  awk '
    /Requests\/sec/ { rps = $2 }
    $1 == "50%" { p50 = $2 }
    $1 == "99%" { p99 = $2 }
    /Non-2xx/ { non2xx = $NF }
    /Socket errors/ { errors = $0; sub(/.*Socket errors: /, "", errors); gsub(/ /, "", errors) }
    END { printf "%s %s %s %s %s\n", rps, p50, p99, (non2xx == "" ? 0 : non2xx), (errors == "" ? "none" : errors) }
  ' "$work/$name.txt"
}

# The raw JetStream rate first, while the server holds no other state, for the size of the
# message Herald stores for the request wrk sends.
curl -sf "http://$HERALD_ADDR/v1/notifications" -H 'content-type: application/json' \
  -d "$(sed -n "s/^wrk.body = '\(.*\)'$/\1/p" scripts/wrk/single.lua)" >/dev/null
read -r stored_msgs stored_bytes < <("$NATS" stream info "${prefix}NOTIFY" --json |
  jq -r '.state | "\(.messages) \(.bytes)"')
msg_size=$(( stored_bytes / stored_msgs ))
echo "bench: nats bench js pub async, ${msg_size}B, file storage, dedup ids" >&2
raw_cmd=("$NATS" bench js pub async "${prefix}raw" --stream "${prefix}RAW" --create --storage file --dedup --size "$msg_size" --msgs 300000 --batch 500 --no-progress)
nats_pid=$(pgrep -f "nats-server -a 127.0.0.1 -p 4222" | head -1)
r0=$(cpu_seconds "$nats_pid")
"${raw_cmd[@]}" >"$work/raw.txt" 2>&1
# nats-server's own CPU per stored message at its best (batches of 500): what storing one
# message costs this machine whoever publishes it.
cpu_nats_raw=$(awk -v a="$r0" -v b="$(cpu_seconds "$nats_pid")" 'BEGIN { printf "%.1f", (b - a) * 1e6 / 300000 }')
raw_rate=$(grep -oE '[0-9,]+ msgs/sec' "$work/raw.txt" | head -1 | tr -d ',' | awk '{print $1}')
# For reference only: the same without message ids (no dedup work in the server).
"$NATS" bench js pub async "${prefix}raw" --stream "${prefix}RAW" --purge --storage file --size "$msg_size" --msgs 300000 --batch 500 --no-progress >"$work/raw-nodedup.txt" 2>&1
raw_nodedup=$(grep -oE '[0-9,]+ msgs/sec' "$work/raw-nodedup.txt" | head -1 | tr -d ',' | awk '{print $1}')
"$NATS" stream rm -f "${prefix}RAW" >/dev/null 2>&1

echo "bench: bare hyper 202, single requests, $CONNS connections, $DURATION" >&2
m0=$(machine_busy); a0=$(cpu_seconds "${pids[1]}")
read -r bare_rps bare_p50 bare_p99 bare_non2xx bare_err < <(wrk_run bare "http://$BARE_ADDR/v1/notifications" scripts/wrk/single.lua "$CONNS")
m1=$(machine_busy); a1=$(cpu_seconds "${pids[1]}")
bare_total=$(cat "$work"/bare.[0-9]*.txt "$work/bare.warmup.txt" | awk '/requests in/ {n += $1} END {print n}')
cpu_bare=$(awk -v a="$a0" -v b="$a1" -v n="$bare_total" 'BEGIN { printf "%.1f", (b - a) * 1e6 / n }')
# Everything else the machine did meanwhile, wrk above all: the client's share of a request.
cpu_client=$(awk -v a="$m0" -v b="$m1" -v s="$a0" -v t="$a1" -v n="$bare_total" 'BEGIN { printf "%.1f", ((b - a) - (t - s)) * 1e6 / n }')
echo "bench: herald single requests" >&2
d0=$(cpu_seconds "${pids[0]}"); n0=$(cpu_seconds "$nats_pid")
read -r h_rps h_p50 h_p99 h_non2xx h_err < <(wrk_run single "http://$HERALD_ADDR/v1/notifications" scripts/wrk/single.lua "$CONNS")
d1=$(cpu_seconds "${pids[0]}"); n1=$(cpu_seconds "$nats_pid")
single_total=$(cat "$work"/single.[0-9]*.txt "$work/single.warmup.txt" | awk '/requests in/ {n += $1} END {print n}')
cpu_dispatcher=$(awk -v a="$d0" -v b="$d1" -v n="$single_total" 'BEGIN { printf "%.1f", (b - a) * 1e6 / n }')
cpu_nats=$(awk -v a="$n0" -v b="$n1" -v n="$single_total" 'BEGIN { printf "%.1f", (b - a) * 1e6 / n }')
echo "bench: herald batch of $BATCH, $BATCH_CONNS connections" >&2
export BATCH
read -r b_rps b_p50 b_p99 b_non2xx b_err < <(wrk_run batch "http://$HERALD_ADDR/v1/notifications/batch" scripts/wrk/batch.lua "$BATCH_CONNS")
b_nps=$(awk -v r="$b_rps" -v n="$BATCH" 'BEGIN { printf "%.0f", r * n }')

# The most any server could reach here if it answered as cheaply as the bare one and also
# had each request stored by JetStream first: the cores divided by the three costs.
cores=$(nproc)
ceiling_rps=$(awk -v c="$cores" -v a="$cpu_bare" -v w="$cpu_client" -v n="$cpu_nats_raw" 'BEGIN { printf "%.0f", c * 1e6 / (a + w + n) }')
ceiling_share=$(awk -v a="$ceiling_rps" -v b="$bare_rps" 'BEGIN { printf "%.0f", 100 * a / b }')
share_single=$(awk -v a="$h_rps" -v b="$bare_rps" 'BEGIN { printf "%.0f", 100 * a / b }')
share_batch=$(awk -v a="$b_nps" -v b="$raw_rate" 'BEGIN { printf "%.0f", 100 * a / b }')

cat >"$out/ingest.md" <<MD
# Ingest benchmark, $day, revision $rev

Machine: $(machine). Load generator, servers and NATS share these cores.
NATS server $("$TOOLS/nats-server" --version | awk '{print $2}'), file storage, default fsync
interval. Stored message size (wire document + headers): ${msg_size} bytes.

| what | rate | p50 | p99 | non-2xx | socket errors |
|---|---|---|---|---|---|
| bare hyper 202 (single, $CONNS conns) | $bare_rps req/s | $bare_p50 | $bare_p99 | $bare_non2xx | $bare_err |
| Herald POST /v1/notifications ($CONNS conns) | $h_rps req/s | $h_p50 | $h_p99 | $h_non2xx | $h_err |
| Herald POST /v1/notifications/batch x$BATCH ($BATCH_CONNS conns) | $b_nps notifications/s ($b_rps req/s) | $b_p50 | $b_p99 | $b_non2xx | $b_err |
| raw JetStream publish (nats bench, ${msg_size}B, message ids as Herald) | $raw_rate msgs/s | | | | |
| raw JetStream publish without message ids (reference only) | $raw_nodedup msgs/s | | | | |

- Herald single requests: **${share_single} %** of the bare server's requests/s (target >= 60 %).
- Herald batch ingest: **${share_batch} %** of the raw JetStream publish rate (target >= 50 %).

Every 202 above was sent after JetStream acknowledged the message.

CPU per single request (utime + stime from /proc over all single-request runs, warm-up
included): dispatcher ${cpu_dispatcher} µs, nats-server ${cpu_nats} µs.

What bounds the single-request share on this machine (same run, same /proc counters):

| cost per request or message | µs |
|---|---|
| bare server, per request | ${cpu_bare} |
| the client and the rest of the machine, per bare request | ${cpu_client} |
| nats-server per stored message, raw publish in batches of 500 | ${cpu_nats_raw} |
| Herald: dispatcher + nats-server, per single request | $(awk -v a="$cpu_dispatcher" -v b="$cpu_nats" 'BEGIN { printf "%.1f", a + b }') |

A server that answered as cheaply as the bare one and had JetStream store each request
first could reach at most ${cores} cores / (${cpu_bare} + ${cpu_client} + ${cpu_nats_raw}) µs =
**${ceiling_rps} req/s, ${ceiling_share} % of the bare server**, because wrk, NATS and the server share
the cores. That is the ceiling the >= 60 % target meets here.

## Commands
\`\`\`
scripts/bench-ingest.sh   # DURATION=$DURATION CONNS=$CONNS BATCH=$BATCH BATCH_CONNS=$BATCH_CONNS THREADS=$THREADS
target/release/dispatcher --log warn serve --listen $HERALD_ADDR --prefix <unique>
target/release/bare202 $BARE_ADDR
wrk -t$THREADS -c$CONNS -d$DURATION --latency -s scripts/wrk/single.lua http://$BARE_ADDR/v1/notifications
wrk -t$THREADS -c$CONNS -d$DURATION --latency -s scripts/wrk/single.lua http://$HERALD_ADDR/v1/notifications
BATCH=$BATCH wrk -t$THREADS -c$BATCH_CONNS -d$DURATION --latency -s scripts/wrk/batch.lua http://$HERALD_ADDR/v1/notifications/batch
nats bench js pub async <subject> --stream <unique> --create --storage file --dedup --size $msg_size --msgs 300000 --batch 500
nats bench js pub async <subject> --stream <unique> --purge --storage file --size $msg_size --msgs 300000 --batch 500
\`\`\`

## Raw output
$(for f in bare single batch raw raw-nodedup; do printf '\n### %s\n```\n' "$f"; cat "$work/$f.txt"; printf '```\n'; done)
MD

results_row scripts/bench-ingest.sh "single $h_rps req/s = $share_single % of bare $bare_rps (ceiling with JetStream here: $ceiling_share %); batch $b_nps notifications/s = $share_batch % of raw JetStream $raw_rate" ingest.md
cat "$out/ingest.md" | sed -n '1,20p'
