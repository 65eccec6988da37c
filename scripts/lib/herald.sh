# The one bash library of scripts/: sourced by every script that starts Herald or writes
# results. Every role a script starts shares one --webhook-secret (HERALD_WEBHOOK_SECRET)
# and one sealing key (HERALD_SECRETS_KEY), made here when unset. Functions:
# results_dir                   prints results/<date>-<rev> (created)
# results_row SCRIPT HEADLINE REPORT
#                               adds a row to results/README.md (created with its header)
# machine                       "N cores (CPU model), M GiB"
# ensure_wrk                    installs wrk (Debian) when missing
# free_port                     a TCP port on 127.0.0.1 that was free a moment ago
# cpu_seconds PID              user + system CPU seconds the process has used so far
# wait_ready URL [SECONDS] [PID]
#                               polls URL (a /readyz) every 0.1 s until it answers 2xx;
#                               fails after SECONDS (10) or as soon as PID has exited
# prepare_roles                 services up, dispatcher and loadgen built for $PROFILE
#                               (debug|release; NO_BUILD=1 skips the build); sets bin
#                               ($BIN when set: another build, for A/B runs), loadgen
#                               ($LOADGEN when set), work (a scratch directory)
#                               and empty arrays pids and prefixes
# role NAME HEALTH_URL ARGS...  starts `dispatcher ARGS`, waits for HEALTH_URL; pid in
#                               $work/NAME.pid, log in $work/NAME.log; a serve or run
#                               without --metrics-listen gets a free one (two can run side
#                               by side), its address in $work/NAME.metrics
# metrics_url NAME              the /metrics URL of role NAME
# restart_role NAME             starts NAME again with the same arguments
# new_prefix TAG                sets $prefix to a fresh prefix (also the schema and Mongo
#                               database) and remembers it for drop_prefixes
# tenant_key PREFIX TENANT      migrates the prefix's schema, creates TENANT, prints a key
# run_role NAME                 `dispatcher run` (auth on, recorder, loopback webhooks
#                               allowed) on a fresh prefix and port, with a tenant named
#                               NAME; sets prefix, key and port
# summary_sum FIELD DIR...      sum of loadgen summary.json's end_to_end.FIELD (or
#                               total.errors for FIELD=errors) over runs
# recorded_delivered PREFIX IDS WANT
#                               waits (60 s at most) until WANT of the ids in file IDS are
#                               recorded `delivered` in PostgreSQL; prints how many are
# drop_prefixes                 `dispatcher purge` of every prefix: streams, Redis keys,
#                               schema and MongoDB database (kept when $failed is set)
# stop_roles                    TERMs every started role, waits, drops the prefixes and
#                               the scratch directory (the EXIT trap of the bench scripts)
export HERALD_WEBHOOK_SECRET=${HERALD_WEBHOOK_SECRET:-whsec_$(head -c 32 /dev/urandom | base64 -w0)}
# The key sealing the webhook secrets stored in PostgreSQL: one per checkout, kept in
# .herald/secrets-key (git-ignored), since the quick start's schema outlives a run (a
# deployment keeps one key for the life of its database).
if [ -z "${HERALD_SECRETS_KEY:-}" ]; then
  if [ ! -s .herald/secrets-key ]; then
    mkdir -p .herald
    (umask 077 && head -c 32 /dev/urandom | base64 -w0 >.herald/secrets-key)
  fi
  HERALD_SECRETS_KEY=$(cat .herald/secrets-key)
fi
export HERALD_SECRETS_KEY

results_dir() {
  local dir
  dir="results/$(date -u +%Y-%m-%d)-$(git rev-parse --short HEAD)"
  mkdir -p "$dir"
  echo "$dir"
}
results_row() {
  local index=results/README.md dir
  dir=$(results_dir)
  [ -f "$index" ] || printf '# Results\n\nEach row: a benchmark run, the script that reproduces it, and its report (which names\nthe machine and the exact commands).\n\n| date | rev | script | headline | report |\n|---|---|---|---|---|\n' >"$index"
  echo "| $(date -u +%Y-%m-%d) | $(git rev-parse --short HEAD) | $1 | $2 | [$3](${dir#results/}/$3) |" >>"$index"
}
machine() {
  echo "$(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(free -g | awk '/Mem:/ {print $2}') GiB"
}
ensure_wrk() {
  command -v wrk >/dev/null && return
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
}
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

cpu_seconds() {
  awk -v hz="$(getconf CLK_TCK)" '{ print ($14 + $15) / hz }' "/proc/$1/stat"
}

# Context switches (voluntary and not) of every thread of a process so far.
context_switches() {
  cat /proc/"$1"/task/*/status 2>/dev/null | awk '/ctxt_switches/ { s += $2 } END { print s + 0 }'
}

# Messages nats-server has taken in and sent out so far (its monitoring port, 8222).
nats_messages() {
  curl -sf http://127.0.0.1:8222/varz | jq '.in_msgs + .out_msgs' 2>/dev/null || echo 0
}

# Busy and total jiffies of the whole machine so far ("busy total"): idle and iowait are
# the only states not busy.
machine_jiffies() {
  awk '/^cpu / { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat
}

wait_ready() {
  local url=$1 tries=$((${2:-10} * 10)) pid=${3:-}
  for _ in $(seq 1 "$tries"); do
    curl -sf "$url" >/dev/null && return 0
    [ -z "$pid" ] || kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}


prepare_roles() {
  bash scripts/services.sh >/dev/null
  local flag=()
  [ "$PROFILE" = release ] && flag=(--release)
  [ -n "${NO_BUILD:-}" ] ||
    cargo build "${flag[@]}" --locked -p dispatcher -p loadgen --bin dispatcher --bin loadgen 2>&1 | tail -1
  bin=${BIN:-$PWD/target/$PROFILE/dispatcher}
  loadgen=${LOADGEN:-$PWD/target/$PROFILE/loadgen}
  work=$(mktemp -d)
  pids=()
  prefixes=()
}

role() {
  local name=$1 health=$2 arg previous="" metrics=""; shift 2
  for arg in "$@"; do
    [ "$previous" = --metrics-listen ] && metrics=$arg
    previous=$arg
  done
  if [ -z "$metrics" ] && { [ "$1" = serve ] || [ "$1" = run ]; }; then
    metrics=127.0.0.1:$(free_port)
    set -- "$@" --metrics-listen "$metrics"
  fi
  echo "$metrics" >"$work/$name.metrics"
  # The exact arguments, NUL-separated, for restart_role.
  printf '%s\0' "$health" "$@" >"$work/$name.args"
  "$bin" --log warn "$@" >>"$work/$name.log" 2>&1 &
  echo $! >"$work/$name.pid"
  pids+=($!)
  wait_ready "$health" 30 $! && return 0
  echo "$name did not become ready" >&2
  tail -5 "$work/$name.log" >&2
  return 1
}

metrics_url() {
  echo "http://$(cat "$work/$1.metrics")/metrics"
}

restart_role() {
  local args
  mapfile -d '' args <"$work/$1.args"
  role "$1" "${args[@]}"
}

new_prefix() {
  prefix="$1$(date +%s%N | tail -c 10)_"
  prefixes+=("$prefix")
}

tenant_key() {
  local store=(--pg-schema "$1")
  "$bin" migrate "${store[@]}" >/dev/null
  "$bin" tenant create "$2" "${store[@]}" >/dev/null
  "$bin" key create --tenant "$2" "${store[@]}" | sed -E 's/.*"key":"([^"]+)".*/\1/'
}

run_role() {
  new_prefix "$1"
  key=$(tenant_key "$prefix" "$1")
  port=$(free_port)
  role "$1" "http://127.0.0.1:$port/readyz" run --listen "127.0.0.1:$port" --prefix "$prefix" \
    --pg-schema "$prefix" --mongo-db "$prefix" --webhook-allow-nets 127.0.0.0/8
}

summary_sum() {
  local field=$1 path; shift
  path=".end_to_end.$field"
  [ "$field" = errors ] && path=.total.errors
  for dir in "$@"; do jq "$path" "$dir/summary.json"; done | jq -s add
}

recorded_delivered() {
  local prefix=$1 ids=$2 want=$3 recorded=0
  psql -h 127.0.0.1 -U root -d test -qc "CREATE TABLE IF NOT EXISTS \"$prefix\".accepted (id uuid PRIMARY KEY)" \
    -c "\\copy \"$prefix\".accepted FROM '$ids'" >/dev/null
  for _ in $(seq 1 60); do
    recorded=$(psql -h 127.0.0.1 -U root -d test -Atc "SELECT count(*) FROM \"$prefix\".accepted a JOIN \"$prefix\".notifications n USING (id) WHERE n.status = 'delivered' AND n.recipient IS NOT NULL" 2>/dev/null || echo 0)
    [ "$recorded" -ge "$want" ] && break
    sleep 1
  done
  echo "$recorded"
}

drop_prefixes() {
  [ "${#prefixes[@]}" -gt 0 ] || return 0
  local keep=()
  [ "${failed:-0}" -eq 0 ] || keep=(--keep-schema)
  for prefix in "${prefixes[@]}"; do
    "$bin" --log warn purge --prefix "$prefix" --pg-schema "$prefix" --mongo-db "$prefix" \
      "${keep[@]}" >/dev/null || echo "could not purge $prefix entirely" >&2
  done
}

stop_roles() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  drop_prefixes
  rm -rf "$work"
}
