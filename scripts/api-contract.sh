#!/usr/bin/env bash
# The API contract against a live `dispatcher run` (auth on, recorder, delivery): schemathesis
# generates requests from /openapi.json, valid and invalid, follows the contract's links
# (send → read back → attempts; dead letters → replay), and fails on any 5xx and any
# response whose status, content type, headers or body the contract does not allow. Then
# checks that the Grafana dashboard (deploy/grafana) queries only metrics the stack exports.
# Knobs: PROFILE (debug: the build the tests made), MAX_EXAMPLES (60), SEED. One worker:
# with several, CPython 3.11's ast.parse (which hypothesis calls) can fail in a race.
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=${PROFILE:-debug}
MAX_EXAMPLES=${MAX_EXAMPLES:-60}
TOOLS=${HERALD_TOOLS:-/opt/herald-tools}
VENV=$TOOLS/venv-schemathesis
# Pinned, hypothesis too, so a new release cannot turn CI red on its own.
REQUIREMENTS=(schemathesis==4.32.5 hypothesis==6.170.17)
. scripts/lib/herald.sh
prepare_roles
if [ "$(cat "$VENV/requirements" 2>/dev/null)" != "${REQUIREMENTS[*]}" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "${REQUIREMENTS[@]}"
  echo "${REQUIREMENTS[*]}" >"$VENV/requirements"
fi
trap stop_roles EXIT
# Loopback webhooks are allowed, so generated notifications can be delivered or die here.
run_role contract
# A few dead letters to start from, so the contract's links from the DLQ page (replay,
# delete) have ids to follow: a receiver that answers 410 Gone kills on the first attempt.
gone_port=$(free_port)
python3 scripts/lib/receiver.py "$gone_port" 410 &
pids+=($!)
for n in 1 2 3 4 5; do
  curl -sf -o /dev/null "http://127.0.0.1:$port/v1/notifications" -H "Authorization: Bearer $key" \
    -H 'content-type: application/json' \
    -d "{\"priority\":\"high\",\"channel\":\"webhook\",\"recipient\":\"http://127.0.0.1:$gone_port/hook\",\"payload\":{\"n\":$n}}"
done
for _ in $(seq 1 50); do
  dead=$(curl -sf "http://127.0.0.1:$port/v1/dlq" -H "Authorization: Bearer $key" | jq '.items | length')
  [ "$dead" -ge 5 ] && break
  sleep 0.2
done
echo "api-contract: $dead dead letters to start from" >&2
seed=()
[ -z "${SEED:-}" ] || seed=(--seed "$SEED")
"$VENV/bin/schemathesis" run "http://127.0.0.1:$port/openapi.json" \
  -H "Authorization: Bearer $key" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance \
  --max-examples "$MAX_EXAMPLES" --no-color "${seed[@]}" || {
  failed=1
  echo "api-contract: schemathesis found responses the contract does not allow; dispatcher log:" >&2
  tail -20 "$work/contract.log" >&2
  exit 1
}
# The dashboard (deploy/grafana) queries only metrics this stack exports: after the run
# above every family has samples (accepted, refused, delivered, dead, recorded).
curl -sf "$(metrics_url contract)" >"$work/metrics.txt"
# The public port does not answer /metrics: they count every tenant.
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/metrics")" = 404 ] ||
  { echo "api-contract: /metrics answers on the public port" >&2; exit 1; }
python3 - deploy/grafana/dashboards/herald.json "$work/metrics.txt" <<'PY2'
import json, re, sys
dashboard = json.load(open(sys.argv[1]))
exported = set(re.findall(r"^# TYPE (\S+)", open(sys.argv[2]).read(), re.M))
queried = {
    re.sub(r"_(bucket|sum|count)$", "", name)
    for panel in dashboard["panels"]
    for target in panel["targets"]
    for name in re.findall(r"\bherald_[a-z_]+", target["expr"])
}
missing = sorted(queried - exported)
if missing:
    sys.exit(f"api-contract: the dashboard queries metrics the dispatcher does not export: {missing}")
print(f"api-contract: the dashboard's {len(queried)} metrics are all exported", file=sys.stderr)
PY2
