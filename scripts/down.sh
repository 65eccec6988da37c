#!/usr/bin/env bash
# Stops what scripts/up.sh started (by its pid files, SIGTERM so each role drains), and
# nothing else: a pid whose command line is not a dispatcher's is left alone. The services (NATS, PostgreSQL, Redis, FerretDB) keep running.
set -uo pipefail
cd "$(dirname "$0")/.."
STATE=${STATE:-target/herald-up}
shopt -s nullglob
pids=()
# Ingress first, so what it accepted is in JetStream before delivery and recorder stop.
for role in serve deliver record; do
  for f in "$STATE"/"$role"-*.pid; do
    pid=$(cat "$f")
    # Only a dispatcher: a stale pid file may name a pid some other process has now.
    if kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'dispatcher'; then
      kill -TERM "$pid"
      pids+=("$pid")
      for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$pid" 2>/dev/null && { echo "down: $f did not stop in 30 s; killing" >&2; kill -KILL "$pid"; }
    fi
    rm -f "$f"
  done
done
echo "down: stopped ${#pids[@]} process(es)"
