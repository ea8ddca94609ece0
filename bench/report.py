"""Summarise bench/run.sh's fio JSON files: medians over rounds, ratios."""
import json
import os
import statistics
import sys

work, rounds, ours, *peers = sys.argv[1:]
jobs = ["randw4k-qd32", "seqw1m-qd8", "randr4k-qd32"]


def load(server, job):
    iops, p99 = [], []
    for r in range(1, int(rounds) + 1):
        try:
            text = open(os.path.join(work, f"{server}.{job}.{r}.json")).read()
            j = json.loads(text[text.index("{"):])["jobs"][0]
        except (OSError, ValueError, KeyError):
            continue
        d = j["read"] if j["read"]["io_bytes"] > 0 else j["write"]
        iops.append(d["iops"])
        p99.append(d["clat_ns"]["percentile"]["99.000000"] / 1000)
    if not iops:
        return None
    return statistics.median(iops), statistics.median(p99), min(iops), max(iops)


print(f"medians of {rounds} interleaved rounds")
print(f"{'job':14s} {'server':18s} {'IOPS':>9s} {'(min-max)':>17s} {'p99 us':>9s}   voltrack/peer")
for job in jobs:
    base = load(ours, job)
    for server in [ours] + peers:
        r = load(server, job)
        if not r:
            print(f"{job:14s} {server:18s} {'failed':>9s}")
            continue
        ratio = f"{base[0] / r[0]:.2f}" if base and server != ours else ""
        spread = f"({r[2]:.0f}-{r[3]:.0f})"
        print(f"{job:14s} {server:18s} {r[0]:9.0f} {spread:>17s} {r[1]:9.1f}   {ratio}")
rss = [int(x) for x in open(os.path.join(work, f"{ours}.rss")).read().split()]
print(f"\nvoltrack peak RSS under these loads: {max(rss) / 1024:.1f} MiB")
