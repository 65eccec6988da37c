#!/usr/bin/env bash
# Priority under overload (issue 13): a release `dispatcher run` (authentication on, the
# recorder into PostgreSQL, MongoDB and Redis), with NATS, the stores and the loadgens on
# the same machine. Runs, each against fresh streams, schema and database:
#   capacity   closed loop, 64 connections, default mix: the full-pipeline capacity C
#   baseline   high alone at HIGH_RATE (200/s), open loop
#   flood-Nx   the same high (tenant "app", its own loadgen and sink) while tenant "bulk"
#              floods low at N x C from a second loadgen (N in FLOODS: 3 5 10), sending
#              Herald-Priority so that shed requests are refused before their body is read
#   mix        the quick start's mix (10/30/60) offered at MIX_RATE (20,000/s)
#   fair       tenant "app" sends low at FAIR_SHARE (5 %) of C, alone (baseline-low), then
#              while tenant "bulk" floods low at FAIR_FLOOD (10) x C: app's low is to be
#              accepted in full, its p99 within 3x of alone
#   honour     the largest flood again, from a client that honours Retry-After (loadgen
#              --honor-retry-after): the flood's goodput with and without
#   sweep-H    the SWEEP_FLOOD (3) x flood at each SWEEP_FLAG value H of HEADROOMS
#   floor      high beside the largest flood with every low refused: no law can do better
#   load-F     high beside low offered at F x C (F in LOADS: 0.5 0.65 0.8 0.9) with
#              shedding off, so all of it is admitted: high's latency at the goodput F x C,
#              the best any admission law that admits that much can give it here
#   steady     the quick start's mix at STEADY_RATE (a third of C) for STEADY
#              (5 min): a user far below capacity should see no 429
# For each run and priority: offered and achieved rate, accepted, 429s, ingest and
# end-to-end p50/p99, lost; goodput (accepted and delivered per second, all priorities)
# against C; the targets' verdicts. Writes overload.md under results/<date>-<rev>/ (the
# loadgen summaries beside it) and a row to results/README.md.
# Knobs: DURATION (20s per run), HIGH_RATE (200), FLOODS ("3 5 10"), MIX_RATE (20000),
# FAIR_SHARE (0.05), FAIR_FLOOD (10), STEADY_RATE (C/3), STEADY (300s), CAPACITY (skip
# the capacity run), DRAIN (300s: longest wait for deliveries after a run); MIX_RATE,
# FAIR_FLOOD, STEADY, HONOUR, FLOOR or COST at 0 skips that run. HEADROOMS ("0 0.2 0.4
# 0.6"; empty skips) and SWEEP_FLOOD (3): the sweep of SWEEP_FLAG (--overload-headroom; or
# --overload-goodput-floor). LOADS ("0.5 0.65 0.8 0.9"; empty skips). ARGS: more arguments for
# every `dispatcher run` (e.g. "--overload-headroom 0").
set -euo pipefail
cd "$(dirname "$0")/.."
export HERALD_WEBHOOK_ALLOW_NETS=${HERALD_WEBHOOK_ALLOW_NETS:-127.0.0.0/8,::1}
DURATION=${DURATION:-20s}
HIGH_RATE=${HIGH_RATE:-200}
FLOODS=${FLOODS:-3 5 10}
MIX_RATE=${MIX_RATE:-20000}
export FAIR_SHARE=${FAIR_SHARE:-0.05}
export HEADROOMS=${HEADROOMS-0 0.2 0.4 0.6}
export SWEEP_FLOOD=${SWEEP_FLOOD:-3}
export SWEEP_FLAG=${SWEEP_FLAG:---overload-headroom}
export LOADS=${LOADS-0.5 0.65 0.8 0.9}
FAIR_FLOOD=${FAIR_FLOOD:-10}
STEADY=${STEADY:-300s}
DRAIN=${DRAIN:-300s}
TOOLS=${HERALD_TOOLS:-/opt/herald-tools/bin}
ADDR=127.0.0.1:18095

PROFILE=release
. scripts/lib/herald.sh
prepare_roles
out=$(results_dir)/overload
mkdir -p "$out"
trap stop_roles EXIT

# Starts a fresh dispatcher on a fresh prefix with tenants app and bulk; sets app_key,
# bulk_key and dispatcher (its pid).
fresh_run() {
  if [ -n "${dispatcher:-}" ]; then
    kill -TERM "$dispatcher" 2>/dev/null || true
    wait "$dispatcher" 2>/dev/null || true
  fi
  new_prefix ovl
  app_key=$(tenant_key "$prefix" app)
  "$bin" tenant create bulk --pg-schema "$prefix" >/dev/null
  bulk_key=$("$bin" key create --tenant bulk --pg-schema "$prefix" |
    sed -E 's/.*"key":"([^"]+)".*/\1/')
  local name=$1; shift
  # shellcheck disable=SC2086
  role "run-$name" "http://$ADDR/readyz" run --listen "$ADDR" --prefix "$prefix" \
    --pg-schema "$prefix" --mongo-db "$prefix" ${ARGS:-} "$@"
  dispatcher=$(cat "$work/run-$name.pid")
}

# CPU seconds (user + system) a process has used so far.
# cost NAME KEY ARGS...: a closed-loop loadgen run; appends "NAME requests accepted
# dispatcher_cpu_s nats_cpu_s" to $out/cost.txt, CPU counted from the start of the load
# until its deliveries are drained.
cost() {
  local name=$1 key=$2 nats d0 n0; shift 2
  nats=$(pgrep -o -x nats-server)
  d0=$(cpu_seconds "$dispatcher"); n0=$(cpu_seconds "$nats")
  warm=0s load "$name" "$key" "$@"
  python3 - "$out/$name/summary.json" "$name" "$d0" "$(cpu_seconds "$dispatcher")" "$n0" "$(cpu_seconds "$nats")" >>"$out/cost.txt" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
d = float(sys.argv[4]) - float(sys.argv[3])
n = float(sys.argv[6]) - float(sys.argv[5])
print(sys.argv[2], s["total"]["requests"], s["total"]["notifications_accepted"], f"{d:.2f}", f"{n:.2f}")
PY
}

# loadgen NAME KEY ARGS...: one loadgen with its own sink, summary in $out/NAME; $warm
# (2s) warm-up.
load() {
  local name=$1 key=$2; shift 2
  "$loadgen" --target "http://$ADDR" --api-key "$key" -d "$DURATION" --warmup "${warm:-2s}" \
    --sink 127.0.0.1:0 --drain-timeout "$DRAIN" --out "$out/$name" "$@" \
    >"$out/$name.txt" 2>"$out/$name.progress" || true
}

# beside NAME RATE [ARGS...]: tenant bulk sends low at RATE (ARGS: more of its loadgen's
# flags) while, from a second later, tenant app sends high at HIGH_RATE; summaries in
# NAME-low and NAME-high; NAME.busy: both cores' busy % over high's run (/proc/stat).
beside() {
  local name=$1 rate=$2 flooder b0 t0 b1 t1; shift 2
  load "$name-low" "$bulk_key" --rate "$rate" --mix low=1 -c 256 --priority-header "$@" &
  flooder=$!
  sleep 1
  read -r b0 t0 < <(machine_jiffies)
  load "$name-high" "$app_key" --rate "$HIGH_RATE" --mix high=1 -c 16
  read -r b1 t1 < <(machine_jiffies)
  echo "$(((b1 - b0) * 100 / (t1 - t0)))" >"$out/$name.busy"
  wait "$flooder"
}

if [ -z "${CAPACITY:-}" ]; then
  fresh_run capacity
  echo "bench-overload: capacity (closed loop, 64 connections, $DURATION)" >&2
  load capacity "$app_key" -c 64
  CAPACITY=$(jq '.total.requests_per_sec | floor' "$out/capacity/summary.json")
fi
echo "bench-overload: capacity $CAPACITY req/s" >&2
echo "$CAPACITY" >"$out/capacity.txt"
STEADY_RATE=${STEADY_RATE:-$((CAPACITY / 3))}

fresh_run baseline
echo "bench-overload: high alone at $HIGH_RATE/s" >&2
load baseline-high "$app_key" --rate "$HIGH_RATE" --mix high=1 -c 16

for n in $FLOODS; do
  flood=$((CAPACITY * n))
  fresh_run "flood-${n}x"
  echo "bench-overload: high $HIGH_RATE/s + low flood $flood/s (${n}x)" >&2
  beside "flood-${n}x" "$flood"
done

if [ "${HONOUR:-1}" != 0 ]; then
  n=${FLOODS##* }
  fresh_run honour
  echo "bench-overload: high beside a ${n}x flood that honours Retry-After" >&2
  beside honour $((CAPACITY * n)) --honor-retry-after
fi

# The floor: the same high beside the largest flood with every low request refused (a zero
# target keeps low shed wholly), so no admission law can make high faster than this here.
if [ "${FLOOR:-1}" != 0 ]; then
  n=${FLOODS##* }
  fresh_run floor --overload-target 0s
  sleep 3
  echo "bench-overload: the floor: high beside a ${n}x flood refused wholly" >&2
  beside floor $((CAPACITY * n))
fi

# The trade between high's latency and goodput: the 3x flood again at each value of
# SWEEP_FLAG in HEADROOMS ("0 0.2 0.4 0.6"; empty skips it).
for h in $HEADROOMS; do
  n=$SWEEP_FLOOD
  fresh_run "sweep-$h" "$SWEEP_FLAG" "$h"
  echo "bench-overload: $SWEEP_FLAG $h, high beside a ${n}x flood" >&2
  beside "sweep-$h" $((CAPACITY * n))
done

# What admitting a share of C costs high, whatever the law: low at F x C, shedding off.
for f in $LOADS; do
  rate=$(python3 -c "print(round($CAPACITY * $f))")
  fresh_run "load-$f" --overload-shedding false
  echo "bench-overload: high beside low at $rate/s ($f x C), shedding off" >&2
  beside "load-$f" "$rate"
done

if [ "$MIX_RATE" != 0 ]; then
  fresh_run mix
  echo "bench-overload: quick-start mix at $MIX_RATE/s" >&2
  load mix "$app_key" --rate "$MIX_RATE" -c 128 --priority-header
fi

if [ "$FAIR_FLOOD" != 0 ]; then
  fair_rate=$(python3 -c "print(max(1, round($CAPACITY * $FAIR_SHARE)))")
  fresh_run fair-alone
  echo "bench-overload: tenant app's low alone at $fair_rate/s" >&2
  load fair-alone "$app_key" --rate "$fair_rate" --mix low=1 -c 16 --priority-header
  fresh_run fair
  echo "bench-overload: app's low at $fair_rate/s beside bulk's low flood at ${FAIR_FLOOD}x" >&2
  load fair-flood "$bulk_key" --rate $((CAPACITY * FAIR_FLOOD)) --mix low=1 -c 256 --priority-header &
  flooder=$!
  sleep 1
  load fair-app "$app_key" --rate "$fair_rate" --mix low=1 -c 16 --priority-header
  wait "$flooder"
fi

if [ "$STEADY" != 0 ]; then
  fresh_run steady
  echo "bench-overload: quick-start mix at $STEADY_RATE/s for $STEADY" >&2
  DURATION=$STEADY load steady "$app_key" --rate "$STEADY_RATE" -c 64
fi

# What a refusal costs against an acceptance: every low request refused (a zero target
# makes any delay count as overload, so low is shed wholly after 1.5 s), then every high
# request accepted, closed loop; dispatcher and nats-server CPU per request.
: >"$out/cost.txt"
if [ "${COST:-1}" != 0 ]; then
  fresh_run cost-refuse --overload-target 0s
  sleep 3
  echo "bench-overload: cost of a refusal" >&2
  cost cost-refuse "$bulk_key" -c 256 --mix low=1 --priority-header
  fresh_run cost-accept
  echo "bench-overload: cost of an acceptance" >&2
  cost cost-accept "$app_key" -c 64 --mix high=1
fi

python3 - "$out" "$CAPACITY" "$HIGH_RATE" "$MIX_RATE" "$FLOODS" "$(machine)" "$(git rev-parse --short HEAD)" "$DURATION" "$STEADY" "$STEADY_RATE" <<'PY' >"$out/../overload.md"
import json, os, sys
out, capacity, high_rate, mix_rate, floods, machine, rev, duration, steady, steady_rate = sys.argv[1:]
capacity, high_rate, mix_rate = float(capacity), float(high_rate), float(mix_rate)
floods = floods.split()

def summary(name):
    path = os.path.join(out, name, "summary.json")
    return json.load(open(path)) if os.path.exists(path) else None

def rows(run, name, offered):
    s = summary(name)
    if s is None:
        return [], None
    e2e = s.get("end_to_end") or {}
    lines = []
    for p in ("high", "medium", "low"):
        c = s["priorities"].get(p)
        if not c or c["requests"] == 0:
            continue
        e = (e2e.get("priorities") or {}).get(p) or {}
        lines.append(
            f"| {run} | {p} | {offered.get(p, 0):,.0f} | {c['requests_per_sec']:,.0f} | {c['accepted']:,} "
            f"| {c['errors_by_status'].get('429', 0):,} | {c['ingest']['p50_ms']:.1f} | {c['ingest']['p99_ms']:.1f} "
            f"| {e.get('p50_ms', float('nan')):.1f} | {e.get('p99_ms', float('nan')):.1f} |")
    return lines, s

table = ["| run | priority | offered/s | sent/s | accepted | 429 | ingest p50 ms | ingest p99 ms | e2e p50 ms | e2e p99 ms |",
         "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
verdicts, losses, goodputs = [], [], []

def account(run, summaries):
    lost = sum((s.get("end_to_end") or {}).get("lost", 0) for s in summaries if s)
    delivered = sum((s.get("end_to_end") or {}).get("delivered", 0) for s in summaries if s)
    # The sinks count the warm-up's deliveries too.
    secs = max((s["measured_seconds"] + s["warmup_seconds"] for s in summaries if s), default=1.0)
    losses.append(f"| {run} | {delivered:,} | {lost:,} | {delivered / secs:,.0f} | {100 * delivered / secs / capacity:.0f} % |")
    return lost, delivered / secs

lines, cap = rows("capacity", "capacity", {})
table += lines
account("capacity", [cap])
lines, base = rows("baseline", "baseline-high", {"high": high_rate})
table += lines
account("baseline", [base])
base_ingest = base["priorities"]["high"]["ingest"]["p99_ms"] if base else float("nan")
base_e2e = ((base or {}).get("end_to_end") or {}).get("priorities", {}).get("high", {}).get("p99_ms", float("nan"))
for n in floods:
    run = f"flood {n}x"
    l1, low = rows(run, f"flood-{n}x-low", {"low": capacity * int(n)})
    l2, high = rows(run, f"flood-{n}x-high", {"high": high_rate})
    table += l2 + l1
    lost, goodput = account(run, [low, high])
    if high:
        h = high["priorities"]["high"]
        share = h["accepted"] / max(h["requests"], 1)
        e2e = ((high.get("end_to_end") or {}).get("priorities") or {}).get("high", {}).get("p99_ms", float("nan"))
        verdicts.append(
            f"| {run} | {100 * share:.2f} % {'ok' if share >= 0.999 else 'MISSED'} "
            f"| {h['ingest']['p99_ms']:.1f} ms {'ok' if h['ingest']['p99_ms'] <= 25 else 'MISSED'} "
            f"| {e2e:.1f} ms {'ok' if e2e <= 40 else 'MISSED'} "
            f"| {100 * goodput / capacity:.0f} % {'ok' if goodput >= 0.75 * capacity else 'MISSED'} "
            f"| {lost} {'ok' if lost == 0 else 'MISSED'} |")
l1, honour_low = rows(f"flood {floods[-1]}x, honouring Retry-After", "honour-low", {"low": capacity * int(floods[-1])})
l2, honour_high = rows(f"flood {floods[-1]}x, honouring Retry-After", "honour-high", {"high": high_rate})
table += l2 + l1
honour_lines = []
if honour_low:
    account("honour", [honour_low, honour_high])
    def flood_goodput(s):
        if not s:
            return float("nan")
        secs = s["measured_seconds"] + s["warmup_seconds"]
        return (s.get("end_to_end") or {}).get("delivered", 0) / secs
    plain = summary(f"flood-{floods[-1]}x-low")
    hl = honour_low["priorities"]["low"]
    for label, s in (("ignores Retry-After (resends at once)", plain), ("honours Retry-After", honour_low)):
        if s:
            c = s["priorities"]["low"]
            h = summary("honour-high" if s is honour_low else f"flood-{floods[-1]}x-high")
            hp = h["priorities"]["high"]["ingest"]["p99_ms"] if h else float("nan")
            honour_lines.append(
                f"| {label} | {c['requests']:,} | {c.get('deferred', 0):,} | {c['accepted']:,} "
                f"| {c['errors_by_status'].get('429', 0):,} | {flood_goodput(s):,.0f} | {hp:.1f} |")
l1, floor_low = rows("floor", "floor-low", {"low": capacity * int(floods[-1])})
l2, floor_high = rows("floor", "floor-high", {"high": high_rate})
table += l2 + l1
if floor_high:
    account("floor", [floor_low, floor_high])
floor_ingest = floor_high["priorities"]["high"]["ingest"]["p99_ms"] if floor_high else float("nan")
floor_e2e = ((floor_high or {}).get("end_to_end") or {}).get("priorities", {}).get("high", {}).get("p99_ms", float("nan"))
flood_high = [(n, summary(f"flood-{n}x-high")) for n in floods]
flood_high = [(n, h) for n, h in flood_high if h]
def e2e_p99(s):
    return ((s.get("end_to_end") or {}).get("priorities") or {}).get("high", {}).get("p99_ms", float("nan"))
ingest_p99s = "/".join("%.0f" % h["priorities"]["high"]["ingest"]["p99_ms"] for _, h in flood_high)
e2e_p99s = "/".join("%.0f" % e2e_p99(h) for _, h in flood_high)
accepted_min = min((100 * h["priorities"]["high"]["accepted"] / max(h["priorities"]["high"]["requests"], 1) for _, h in flood_high), default=0)
with open(os.path.join(out, "headline.txt"), "w") as f:
    f.write(f"C {capacity:,.0f}/s; under low floods of {'/'.join(n for n, _ in flood_high)}x C: "
            f"high accepted {accepted_min:.1f} % or more, ingest p99 {ingest_p99s} ms (alone {base_ingest:.1f}), "
            f"e2e p99 {e2e_p99s} ms (alone {base_e2e:.1f})")
sweep_lines = []
for h in os.environ.get("HEADROOMS", "0 0.2 0.4 0.6").split():
    high, low = summary(f"sweep-{h}-high"), summary(f"sweep-{h}-low")
    if not (high and low):
        continue
    hp = high["priorities"]["high"]
    secs = max(s["measured_seconds"] + s["warmup_seconds"] for s in (high, low))
    delivered = sum((s.get("end_to_end") or {}).get("delivered", 0) for s in (high, low))
    lc = low["priorities"]["low"]
    sweep_lines.append(
        f"| {h} | {hp['ingest']['p50_ms']:.1f} | {hp['ingest']['p99_ms']:.1f} | {e2e_p99(high):.1f} "
        f"| {lc['requests_per_sec']:,.0f} | {lc['accepted'] / low['measured_seconds']:,.0f} "
        f"| {delivered / secs:,.0f} ({100 * delivered / secs / capacity:.0f} % of C) |")
load_lines = []
for f in os.environ.get("LOADS", "").split():
    high, low = summary(f"load-{f}-high"), summary(f"load-{f}-low")
    if not (high and low):
        continue
    hp, lc = high["priorities"]["high"], low["priorities"]["low"]
    secs = max(s["measured_seconds"] + s["warmup_seconds"] for s in (high, low))
    delivered = sum((s.get("end_to_end") or {}).get("delivered", 0) for s in (high, low))
    ok = hp["ingest"]["p99_ms"] <= 25 and delivered / secs >= 0.75 * capacity
    busy_path = os.path.join(out, f"load-{f}.busy")
    busy = open(busy_path).read().strip() + " %" if os.path.exists(busy_path) else "n/a"
    load_lines.append(
        f"| {f} | {busy} | {lc['requests_per_sec']:,.0f} | {lc['accepted']:,} | {hp['ingest']['p50_ms']:.1f} "
        f"| {hp['ingest']['p99_ms']:.1f} | {e2e_p99(high):.1f} "
        f"| {delivered / secs:,.0f} ({100 * delivered / secs / capacity:.0f} % of C) | {'both met' if ok else 'not both'} |")
lines, mix = rows("mix", "mix", {"high": mix_rate * 0.1, "medium": mix_rate * 0.3, "low": mix_rate * 0.6})
table += lines
account("mix", [mix])

fair_lines = []
alone, app, flood = summary("fair-alone"), summary("fair-app"), summary("fair-flood")
if alone and app:
    a_low, f_low = alone["priorities"]["low"], app["priorities"]["low"]
    share = f_low["accepted"] / max(f_low["requests"], 1)
    flood_low = (flood or {}).get("priorities", {}).get("low", {})
    ratio = f_low["ingest"]["p99_ms"] / max(a_low["ingest"]["p99_ms"], 0.001)
    fair_lines.append(
        f"| app's low, {a_low['requests_per_sec']:,.0f}/s | {a_low['accepted']:,} of {a_low['requests']:,} "
        f"| {a_low['ingest']['p99_ms']:.1f} | {f_low['accepted']:,} of {f_low['requests']:,} ({100 * share:.2f} % {'ok' if share >= 0.999 else 'MISSED'}) "
        f"| {f_low['ingest']['p99_ms']:.1f} ({ratio:.1f}x {'ok' if ratio <= 3 else 'MISSED'}) "
        f"| {flood_low.get('accepted', 0):,} of {flood_low.get('requests', 0):,} |")
    _, fair_goodput = account("fair", [app, flood])

steady_lines = []
st = summary("steady")
if st:
    t = st["total"]
    refused = sum(c["errors_by_status"].get("429", 0) for c in st["priorities"].values())
    e2e = st.get("end_to_end") or {}
    steady_lines.append(
        f"| {steady} at {float(steady_rate):,.0f}/s | {t['requests']:,} | {refused:,} {'ok' if refused == 0 else 'MISSED'} "
        f"| {t['ingest']['p99_ms']:.1f} | {t['ingest'].get('p999_ms', float('nan')):.1f} | {e2e.get('lost', 0):,} |")
    account("steady", [st])

cost_rows = []
if os.path.exists(os.path.join(out, "cost.txt")):
    for line in open(os.path.join(out, "cost.txt")):
        name, requests, accepted, d, n = line.split()
        r = max(int(requests), 1)
        cost_rows.append(f"| {name} | {int(requests):,} | {int(accepted):,} | {float(d):.2f} | {1e6 * float(d) / r:.0f} | {1e6 * float(n) / r:.0f} |")

print(f"""# Priority under overload

- Revision {rev}; machine: {machine}; everything co-located (dispatcher, NATS, PostgreSQL,
  FerretDB, Redis and the loadgens).
- Command: `scripts/bench-overload.sh` (DURATION={duration} per run, HIGH_RATE={high_rate:.0f},
  FLOODS="{' '.join(floods)}", MIX_RATE={mix_rate:.0f}). A release `dispatcher run` with
  authentication and the recorder, fresh streams, schema and database per run; each
  loadgen has its own sink. Flood loadgens send `Herald-Priority`; the flood is tenant
  `bulk`, high is tenant `app`.
- Full-pipeline capacity C (closed loop, 64 connections, default mix): **{capacity:,.0f} req/s**.
- offered/s is the rate asked of loadgen, sent/s what it managed to send (loadgen shares the
  two cores; a flood it cannot send is reported as sent, not as offered). Latencies are
  coordinated-omission corrected (from the intended send time).

{chr(10).join(table)}

## Delivered (goodput) and lost

Goodput: notifications accepted and delivered to the sinks, per second of the run.

| run | delivered | lost | goodput/s | of C |
|---|---:|---:|---:|---:|
{chr(10).join(losses)}

## High's latency against goodput

The {os.environ.get("SWEEP_FLOOD", "3")}x flood again at each `{os.environ.get("SWEEP_FLAG", "--overload-headroom")}`. Unloaded high: ingest p99 {base_ingest:.1f} ms; the
floor (every low refused): {floor_ingest:.1f} ms.

| {os.environ.get("SWEEP_FLAG", "--overload-headroom").removeprefix("--overload-")} | high ingest p50 ms | high ingest p99 ms | high e2e p99 ms | flood sent/s | flood accepted/s | goodput/s |
|---|---:|---:|---:|---:|---:|---:|
{chr(10).join(sweep_lines)}

## What admitting a share of C costs high

No flood and no shedding: low offered at a share of C (tenant bulk) beside the same high,
all of it admitted. High's latency at that goodput is the best any admission law that
admits as much can give it on this machine. Busy: the whole machine's CPU (every process,
loadgens included) over high's run, from /proc/stat.

| share of C | both cores busy | low sent/s | low accepted | high ingest p50 ms | high ingest p99 ms (≤ 25) | high e2e p99 ms | goodput/s (≥ 75 % of C) | targets |
|---|---:|---:|---:|---:|---:|---:|---:|---|
{chr(10).join(load_lines)}

## The flood's own view

The {floods[-1]}x flood from a client that resends at once, and from one that honours Retry-After
(sends nothing of low until it has passed; the sends due meanwhile are deferred). Goodput:
the flood's notifications delivered per second of its run.

| flood client | requests sent | deferred | accepted | 429 | goodput/s | high's ingest p99 beside it ms |
|---|---:|---:|---:|---:|---:|---:|
{chr(10).join(honour_lines)}

## Fairness between tenants

Tenant app sends low at {100 * float(os.environ.get('FAIR_SHARE', '0.05')):.0f} % of C, alone, then while tenant bulk floods low.

| traffic | accepted alone | ingest p99 alone ms | accepted beside the flood (100 %) | ingest p99 beside it ms (≤ 3x) | the flood's accepted |
|---|---:|---:|---:|---:|---:|
{chr(10).join(fair_lines)}

## Far below capacity

The quick start's mix, open loop; no request should be refused.

| run | requests | 429 (0) | ingest p99 ms | ingest p99.9 ms | lost |
|---|---:|---:|---:|---:|---:|
{chr(10).join(steady_lines)}

## What a refusal costs

CPU per request from /proc (user + system), closed loop, from the start of the load until
its deliveries were drained: every low request refused (`--overload-target 0s`, sent with
`Herald-Priority`), against every high request accepted (its publish, delivery and
recording included).

| run | requests | accepted | dispatcher CPU s | µs per request | nats-server µs per request |
|---|---:|---:|---:|---:|---:|
{chr(10).join(cost_rows)}

## Targets

Unloaded high: ingest p99 {base_ingest:.1f} ms, end-to-end p99 {base_e2e:.1f} ms. The floor, high
beside the {floods[-1]}x flood with every low refused: ingest p99 {floor_ingest:.1f} ms, end-to-end p99
{floor_e2e:.1f} ms.

| run | high accepted (≥ 99.9 %) | high ingest p99 (≤ 25 ms) | high e2e p99 (≤ 40 ms) | goodput (≥ 75 % of C) | lost (0) |
|---|---|---|---|---|---|
{chr(10).join(verdicts)}
""")
PY
# The accepted ids served the sinks' accounting; at megabytes a run they stay out of git.
find "$out" -name accepted-ids.txt -delete
results_row scripts/bench-overload.sh "$(cat "$out/headline.txt")" overload.md
echo "bench-overload: wrote $out/../overload.md" >&2
cat "$out/../overload.md"
