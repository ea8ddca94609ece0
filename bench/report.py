"""Summarise bench/run.sh's fio JSON files: one table, ratios to peers."""
import json
import os
import sys

work, ours, *peers = sys.argv[1:]
jobs = ["randw4k-qd32", "seqw1m-qd8", "randr4k-qd32"]


def load(server, job):
    path = os.path.join(work, f"{server}.{job}.json")
    try:
        text = open(path).read()
        j = json.loads(text[text.index("{"):])["jobs"][0]
    except (OSError, ValueError, KeyError):
        return None
    d = j["read"] if j["read"]["io_bytes"] > 0 else j["write"]
    return d["iops"], d["clat_ns"]["percentile"]["99.000000"] / 1000


print(f"{'job':14s} {'server':18s} {'IOPS':>9s} {'p99 us':>9s}   ratio (voltrack/peer)")
for job in jobs:
    base = load(ours, job)
    for server in [ours] + peers:
        r = load(server, job)
        if not r:
            print(f"{job:14s} {server:18s} {'failed':>9s}")
            continue
        ratio = f"{base[0] / r[0]:.2f}" if base and server != ours else ""
        print(f"{job:14s} {server:18s} {r[0]:9.0f} {r[1]:9.1f}   {ratio}")
rss = open(os.path.join(work, f"{ours}.rss")).read().strip()
print(f"\nvoltrack peak RSS under this load: {int(rss) / 1024:.1f} MiB")
