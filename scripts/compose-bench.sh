#!/usr/bin/env bash
# The compose file's bench sequence (its header; docs/operations.md), run as plain
# processes through scripts/up.sh's steps, because no Docker engine runs here:
#   services; migrate; record, deliver (allowed to reach the sink's network: loopback here,
#   the pinned compose subnet 172.28.0.0/16 there), serve; tenant `bench` and its key;
#   loadgen with its own sink and the compose service's arguments.
# Prints loadgen's report; the exit status is loadgen's (non-zero if anything accepted was
# lost). RATE (2000) and DURATION (30s) as in the compose file.
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${RATE:-2000}
DURATION=${DURATION:-30s}
export STATE=target/compose-bench
# compose: HERALD_WEBHOOK_ALLOW_NETS=172.28.0.0/16 docker compose up -d
export HERALD_WEBHOOK_ALLOW_NETS=127.0.0.0/8
trap 'bash scripts/down.sh' EXIT
bash scripts/up.sh
bin=target/release/dispatcher
# compose: docker compose run --rm -T migrate tenant create bench
"$bin" tenant create bench >/dev/null 2>&1 || true
# compose: export HERALD_API_KEY=$(docker compose run --rm -T migrate key create --tenant bench | jq -r .key)
HERALD_API_KEY=$("$bin" key create --tenant bench | jq -r .key)
export HERALD_API_KEY
# compose: docker compose --profile bench run --rm --use-aliases loadgen (the same flags;
# the sink listens on loopback here, on the container's alias there)
target/release/loadgen --target=http://127.0.0.1:8080 --rate="$RATE" --duration="$DURATION" \
  --sink=127.0.0.1:9999 --out="$STATE/results"
