"""Soak report: reads the samples scripts/soak.sh keeps in OUT/soak-data, writes
OUT/soak.md and OUT/soak.png, exits 1 when a check fails.

Usage: soak_report.py OUT CAPACITY RATE SOAK PENDING LOADGEN_STATUS
"""
import json, re, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

out, capacity, rate, soak, pending, status = sys.argv[1:]
work = f"{out}/soak-data"
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
    m = re.match(r"herald_delivery_end_to_end_seconds_bucket\{([^}]*)\} (\d+)", line)
    if m and cur:
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        cur[1].setdefault(labels["priority"], []).append((float(labels["le"]), int(m.group(2))))
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

s = json.load(open(f"{work}/summary.json"))
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
axes[2].set_ylabel("end-to-end p99 per 10 s (ms,\nhistogram bucket bound)")
for ax, series in ((axes[1], ingest), (axes[2], e2e)):
    if any(v > 0 for points in series.values() for _, v in points):
        ax.set_yscale("log")
axes[2].set_xlabel("seconds since the soak load started")
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
