#!/usr/bin/env bash
# What fsync-per-write costs: ingest throughput and latency against a private nats-server
# with JetStream's default sync interval (2 min), with 100ms (a bounded loss window), and
# with `sync_interval: always` (what deploy/nats.conf sets). Same release `dispatcher serve --auth off`, same loadgen closed
# loop (-c $CONNS, $DURATION), single requests and batches of $BATCH, median of $REPEAT.
# Report: results/<date>-<rev>/durability.md, plus a row in results/README.md.
# Knobs: DURATION (10s), CONNS (64), BATCH (100), REPEAT (3).
set -euo pipefail
cd "$(dirname "$0")/.."
# loadgen's sink listens on loopback, which the webhook SSRF policy refuses by default.
export HERALD_WEBHOOK_ALLOW_NETS=${HERALD_WEBHOOK_ALLOW_NETS:-127.0.0.0/8,::1}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
BATCH=${BATCH:-100}
REPEAT=${REPEAT:-3}
TOOLS=${HERALD_TOOLS:-/opt/herald-tools/bin}

bash scripts/services.sh >/dev/null
cargo build --release --locked -p dispatcher -p loadgen --bin dispatcher --bin loadgen 2>&1 | tail -1
. scripts/lib/herald.sh
out=$(results_dir)
work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$work"' EXIT

rows=()
# setting NAME SYNC: one nats-server with that sync_interval, one dispatcher, both loads.
setting() {
  local name=$1 sync=$2 nats_port http_port
  nats_port=$(free_port)
  http_port=$(free_port)
  mkdir -p "$work/$name"
  {
    echo "listen: 127.0.0.1:$nats_port"
    echo "jetstream { store_dir: \"$work/$name/js\""
    [ "$sync" = default ] || echo "  sync_interval: $sync"
    echo "}"
  } >"$work/$name/nats.conf"
  "$TOOLS/nats-server" -c "$work/$name/nats.conf" >"$work/$name/nats.log" 2>&1 &
  local nats_pid=$!
  pids+=("$nats_pid")
  target/release/dispatcher --log warn serve --auth off --listen "127.0.0.1:$http_port" --metrics-listen 127.0.0.1:0 \
    --nats-url "nats://127.0.0.1:$nats_port" &
  local serve_pid=$!
  pids+=("$serve_pid")
  wait_ready "http://127.0.0.1:$http_port/readyz" 10 "$serve_pid" || { echo "dispatcher not ready" >&2; exit 1; }
  for mode in single batch; do
    local args=() results=()
    [ "$mode" = batch ] && args=(--batch "$BATCH" -c 8)
    [ "$mode" = single ] && args=(-c "$CONNS")
    for i in $(seq 1 "$REPEAT"); do
      target/release/loadgen --target "http://127.0.0.1:$http_port" -d "$DURATION" --warmup 2s \
        "${args[@]}" --out "$work/$name/$mode-$i" >/dev/null 2>&1 || true
      results+=("$(jq -r '.total | "\(.notifications_per_sec | round) \(.ingest.p50_ms) \(.ingest.p99_ms) \(.errors)"' "$work/$name/$mode-$i/summary.json")")
    done
    local median
    median=$(printf '%s\n' "${results[@]}" | sort -n | sed -n "$(( (REPEAT + 1) / 2 ))p")
    read -r rate p50 p99 errors <<<"$median"
    rows+=("$mode|$name|$rate|$p50|$p99|$errors|$(printf '%s\n' "${results[@]}" | awk '{print $1}' | paste -sd' ')")
    echo "bench-durability: $name $mode: $rate notifications/s (p50 $p50 ms, p99 $p99 ms)" >&2
  done
  kill "$serve_pid" "$nats_pid"
  wait "$serve_pid" "$nats_pid" 2>/dev/null || true
}
setting "default (2 min)" default
setting "sync_interval: 100ms" 100ms
setting "sync_interval: always" always

{
  echo "# JetStream durability: default fsync interval vs sync_interval: always"
  echo
  echo "Machine: $(machine). Revision $(git rev-parse --short HEAD), $(date -u +%Y-%m-%dT%H:%MZ)."
  echo "Command: \`DURATION=$DURATION CONNS=$CONNS BATCH=$BATCH REPEAT=$REPEAT scripts/bench-durability.sh\`."
  echo "A private nats-server v2.15 (file store in a temporary directory on this machine's disk),"
  echo "\`dispatcher serve --auth off\`, loadgen closed loop: single requests on $CONNS connections,"
  echo "batches of $BATCH on 8 connections; median run of $REPEAT (by throughput)."
  echo
  echo "| load | sync | notifications/s | p50 ms | p99 ms | errors | runs (notifications/s) |"
  echo "|---|---|---:|---:|---:|---:|---|"
  for row in "${rows[@]}"; do
    IFS='|' read -r mode name rate p50 p99 errors runs <<<"$row"
    echo "| $mode | $name | $rate | $p50 | $p99 | $errors | $runs |"
  done
  echo
  echo "With the default, JetStream acknowledges a write once it is in the OS page cache and"
  echo "fsyncs every 2 minutes: a process crash loses nothing, a power loss or kernel crash can"
  echo "lose acknowledged messages (Jepsen, NATS 2.12.1; nats-server issue 7564). With"
  echo "\`sync_interval: always\` every write is fsynced before the PubAck, so Herald's 202 holds"
  echo "across power loss on a single node; 100ms bounds what a power loss can take to the"
  echo "last 100 ms of acknowledged writes. On an R3 cluster a write is on three machines"
  echo "before it is acknowledged, which covers the single-machine failure without fsync."
} >"$out/durability.md"
results_row scripts/bench-durability.sh "ingest with JetStream default fsync vs sync_interval: always" durability.md
cat "$out/durability.md"
