#!/usr/bin/env bash
# Soak: a release `dispatcher run` (ingress, delivery, recorder into PostgreSQL, MongoDB
# and Redis, authentication on) under open-loop load at SHARE (70 %) of the capacity it
# measured itself just before, for SOAK (10m), webhooks to loadgen's sink. Samples the
# dispatcher's RSS every 5 s and its end-to-end latency histogram every 10 s; loadgen's
# per-second ingest p99 comes from its progress lines. Writes soak.md and soak.png
# (RSS, ingest p99, end-to-end p99 over time) under results/<date>-<rev>/ and a row to
# results/README.md.
# Verdict: lost == 0; RSS of the last minute within 15 % of minute 2 (after warm-up);
# ingest and end-to-end p99 of the last minute within 2x of minute 2.
# Knobs: SOAK (10m), SHARE (0.7), PROBE (20s closed loop, 64 connections), CAPACITY
# (skip the probe and use this many req/s).
set -euo pipefail
cd "$(dirname "$0")/.."
# loadgen's sink listens on loopback, which the webhook SSRF policy refuses by default.
export HERALD_WEBHOOK_ALLOW_NETS=${HERALD_WEBHOOK_ALLOW_NETS:-127.0.0.0/8,::1}
SOAK=${SOAK:-10m}
SHARE=${SHARE:-0.7}
PROBE=${PROBE:-20s}
TOOLS=${HERALD_TOOLS:-/opt/herald-tools/bin}
ADDR=127.0.0.1:18090
METRICS_EVERY=10

bash scripts/services.sh >/dev/null
cargo build --release --locked -p dispatcher -p loadgen --bin dispatcher --bin loadgen 2>&1 | tail -1
python3 -c 'import matplotlib' 2>/dev/null || pip install -q matplotlib >/dev/null 2>&1
. scripts/lib/results.sh
bin=$PWD/target/release/dispatcher
loadgen=$PWD/target/release/loadgen
work=$(mktemp -d)
pids=()
prefixes=()
. scripts/lib/roles.sh
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  drop_prefixes
  rm -rf "$work"
}
trap cleanup EXIT

new_prefix soak
key=$(tenant_key "$prefix" soak)
"$bin" --log warn run --listen "$ADDR" --prefix "$prefix" --pg-schema "$prefix" --mongo-db "$prefix" \
  >"$work/dispatcher.log" 2>&1 &
dispatcher=$!
pids+=($dispatcher)
for _ in $(seq 1 100); do curl -sf "http://$ADDR/readyz" >/dev/null && break; sleep 0.1; done

if [ -z "${CAPACITY:-}" ]; then
  echo "soak: probing capacity: closed loop, 64 connections, $PROBE" >&2
  "$loadgen" --target "http://$ADDR" --api-key "$key" -c 64 -d "$PROBE" --warmup 2s \
    --sink 127.0.0.1:0 --drain-timeout 120s --out "$work/probe" >"$work/probe.txt" 2>&1
  CAPACITY=$(python3 -c 'import json,sys; print(int(json.load(open(sys.argv[1]))["total"]["requests_per_sec"]))' "$work/probe/summary.json")
  # Let the recorder catch up before the soak starts from a quiet system.
  sleep 20
fi
rate=$(python3 -c "print(int($CAPACITY * $SHARE))")
echo "soak: capacity $CAPACITY req/s; soaking at $rate req/s for $SOAK" >&2

# Samplers: RSS (kB) every 5 s; the end-to-end histogram buckets every 10 s.
(
  start=$(date +%s)
  while kill -0 "$dispatcher" 2>/dev/null; do
    echo "$(($(date +%s) - start)) $(awk '/^VmRSS/ {print $2}' "/proc/$dispatcher/status")"
    sleep 5
  done
) >"$work/rss.txt" &
pids+=($!)
(
  start=$(date +%s)
  while kill -0 "$dispatcher" 2>/dev/null; do
    echo "@ $(($(date +%s) - start))"
    curl -s "http://$ADDR/metrics" | grep '^herald_delivery_end_to_end_seconds_bucket' || true
    sleep "$METRICS_EVERY"
  done
) >"$work/e2e.txt" &
pids+=($!)

status=0
"$loadgen" --target "http://$ADDR" --api-key "$key" --rate "$rate" -d "$SOAK" --warmup 5s -c 128 \
  --sink 127.0.0.1:0 --drain-timeout 120s --out "$work/soak" >"$work/soak.txt" 2>"$work/soak.progress" || status=$?
pending=$("$TOOLS/nats" consumer info "${prefix}NOTIFY" "${prefix}record-postgres-notify" --json 2>/dev/null |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["num_pending"])' 2>/dev/null || echo "?")

out=$(results_dir)
verdict=0
python3 - "$work" "$out" "$CAPACITY" "$rate" "$SOAK" "$pending" "$status" <<'PY' || verdict=1
import json, re, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

work, out, capacity, rate, soak, pending, status = sys.argv[1:]
rss = [(int(t), int(kb) / 1024) for t, kb in (l.split() for l in open(f"{work}/rss.txt") if len(l.split()) == 2)]
# loadgen progress: "[  12s] high 700/s p99 1.23ms | medium ... | errors +0"
ingest = {p: [] for p in ("high", "medium", "low")}
for line in open(f"{work}/soak.progress"):
    m = re.match(r"\[\s*(\d+)s\]", line)
    if not m:
        continue
    t = int(m.group(1))
    for p, v in re.findall(r"(high|medium|low) \d+/s p99 ([\d.]+)ms", line):
        ingest[p].append((t, float(v)))
# End-to-end p99 per 10-s window from the cumulative histogram's bucket deltas.
samples, cur = [], None
for line in open(f"{work}/e2e.txt"):
    if line.startswith("@ "):
        cur = (int(line.split()[1]), {})
        samples.append(cur)
        continue
    m = re.match(r'herald_delivery_end_to_end_seconds_bucket\{le="([^"]+)",priority="(\w+)"\} (\d+)', line)
    if m and cur:
        cur[1].setdefault(m.group(2), []).append((float(m.group(1)), int(m.group(3))))
e2e = {p: [] for p in ("high", "medium", "low")}
for (t0, a), (t1, b) in zip(samples, samples[1:]):
    for p in e2e:
        if p not in a or p not in b:
            continue
        deltas = [(le, cb - ca) for (le, ca), (_, cb) in zip(a[p], b[p])]
        total = deltas[-1][1]
        if total <= 0:
            continue
        le99 = next(le for le, c in deltas if c >= 0.99 * total)
        e2e[p].append((t1, le99 * 1000))

s = json.load(open(f"{work}/soak/summary.json"))
lost, dup = s["end_to_end"]["lost"], s["end_to_end"]["duplicated"]
accepted = s["end_to_end"]["accepted"]

def window(series, lo, hi):
    v = [y for t, y in series if lo <= t < hi]
    return sum(v) / len(v) if v else float("nan")

end = max(t for t, _ in rss)
# Minute 2 (after warm-up) against the last minute of the load.
load_end = max((t for t, _ in ingest["high"]), default=end)
m2 = (60, 120)
last = (load_end - 60, load_end)
rss_m2, rss_last = window(rss, *m2), window(rss, *last)
ing_m2 = max(window(ingest[p], *m2) for p in ingest)
ing_last = max(window(ingest[p], *last) for p in ingest)
e2e_m2 = max(window(e2e[p], *m2) for p in e2e)
e2e_last = max(window(e2e[p], *last) for p in e2e)
checks = {
    "nothing lost": lost == 0 and status == "0",
    "RSS flat (last minute within 15 % of minute 2)": rss_last <= rss_m2 * 1.15,
    "ingest p99 flat (last minute within 2x of minute 2)": ing_last <= max(ing_m2 * 2, 5),
    "end-to-end p99 flat (last minute within 2x of minute 2)": e2e_last <= max(e2e_m2 * 2, 10),
}
ok = all(checks.values())

fig, axes = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
axes[0].plot([t for t, _ in rss], [v for _, v in rss], color="black")
axes[0].set_ylabel("dispatcher RSS (MiB)")
axes[0].set_ylim(bottom=0)
for p, c in (("high", "tab:red"), ("medium", "tab:orange"), ("low", "tab:blue")):
    axes[1].plot([t for t, _ in ingest[p]], [v for _, v in ingest[p]], color=c, label=p, linewidth=0.8)
    axes[2].plot([t for t, _ in e2e[p]], [v for _, v in e2e[p]], color=c, label=p)
axes[1].set_ylabel("ingest p99 per s (ms)")
axes[1].set_yscale("log")
axes[2].set_ylabel("end-to-end p99 per 10 s (ms,\nhistogram bucket bound)")
axes[2].set_yscale("log")
axes[2].set_xlabel("seconds since the dispatcher started")
axes[1].legend(loc="upper right")
fig.suptitle(f"Soak: {rate} req/s (= {float(rate)/float(capacity):.0%} of {capacity}) for {soak}, dispatcher run + sink")
fig.tight_layout()
fig.savefig(f"{out}/soak.png", dpi=90)

with open(f"{out}/soak.md", "w") as f:
    f.write(f"# Soak: {soak} at {rate} req/s\n\n")
    f.write(f"Capacity {capacity} req/s (closed loop, 64 connections, measured by the script just before);\n")
    f.write(f"soak rate {rate} req/s open loop, mix high=10,medium=30,low=60, 128 connections per priority.\n")
    f.write(f"Release `dispatcher run` (ingress, delivery, recorder into PostgreSQL + FerretDB + Redis), auth on.\n\n")
    f.write("![soak](soak.png)\n\n")
    f.write("| | minute 2 | last minute |\n|---|---:|---:|\n")
    f.write(f"| dispatcher RSS (MiB, mean) | {rss_m2:.0f} | {rss_last:.0f} |\n")
    f.write(f"| ingest p99 (ms, worst priority, mean of per-second p99) | {ing_m2:.2f} | {ing_last:.2f} |\n")
    f.write(f"| end-to-end p99 (ms, worst priority, mean of 10-s bucket bounds) | {e2e_m2:.1f} | {e2e_last:.1f} |\n\n")
    f.write(f"Accepted {accepted}, lost {lost}, duplicated {dup}; loadgen exit status {status}.\n")
    f.write(f"Recorder backlog at the end (PostgreSQL NOTIFY consumer, messages pending): {pending}.\n\n")
    for name, passed in checks.items():
        f.write(f"- {'ok' if passed else 'FAILED'}: {name}\n")
    f.write(f"\nVerdict: {'ok' if ok else 'FAILED'}\n")
print(open(f"{out}/soak.md").read())
sys.exit(0 if ok else 1)
PY
results_row scripts/soak.sh "$SOAK at $rate req/s (${SHARE} of $CAPACITY): $( [ $verdict -eq 0 ] && echo 'RSS and p99 flat, lost 0' || echo FAILED)" soak.md
exit $verdict
