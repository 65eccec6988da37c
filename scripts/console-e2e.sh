#!/usr/bin/env bash
# The web console (issue 16) end to end in a real browser: Debian's Chromium, driven by
# playwright-core, against a live `dispatcher run` (auth on, recorder, delivery). Signs in,
# watches the live rates, finds a dead notification, replays it and sees it delivered, and
# deletes dead letters by filter (scripts/lib/console-e2e.cjs says each step). Screenshots
# go to SHOTS (default: the results directory of this revision).
# Knobs: PROFILE (debug: the build the tests made), SHOTS.
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=${PROFILE:-debug}
TOOLS=${HERALD_TOOLS:-/opt/herald-tools}
NODE_DIR=$TOOLS/node-console
# Pinned, so a new release cannot turn CI red on its own.
PLAYWRIGHT=playwright-core@1.65.1
. scripts/lib/herald.sh
prepare_roles
command -v chromium >/dev/null ||
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
if [ "$(cat "$NODE_DIR/requirements" 2>/dev/null)" != "$PLAYWRIGHT" ]; then
  mkdir -p "$NODE_DIR"
  npm install --silent --no-audit --no-fund --prefix "$NODE_DIR" "$PLAYWRIGHT" >/dev/null
  echo "$PLAYWRIGHT" >"$NODE_DIR/requirements"
fi
trap stop_roles EXIT
# Loopback webhooks are allowed: the browser test's own receiver is on 127.0.0.1.
run_role console
shots=${SHOTS:-$(results_dir)/console}
mkdir -p "$shots"
HERALD_URL="http://127.0.0.1:$port" HERALD_KEY="$key" SHOTS="$shots" \
  NODE_PATH="$NODE_DIR/node_modules" node scripts/lib/console-e2e.cjs || {
  failed=1
  echo "console-e2e: failed; dispatcher log:" >&2
  tail -20 "$work/console.log" >&2
  exit 1
}
