#!/usr/bin/python3
"""Snapshot figures, side by side in one run (make bench):

  - the hold under 4 KiB random writes at queue depth 32: how long the
    server held writes (its own measure) and the worst write latency a
    queue-depth-1 client saw across each snapshot, p50 and p99 over
    SNAPS snapshots, on a 256 MiB volume and a 1 TiB sparse one;
  - with one live snapshot against none: 4 KiB writes to fresh chunks
    (each pays a copy), 4 KiB random writes to chunks already copied,
    and 4 KiB random reads of snapshot/NAME against the live export.

    bench/snapshot.py [SNAPS] [SECONDS]       (defaults: 50 8)
"""
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

import nbd

VOLTRACK = os.environ.get("VOLTRACK", os.path.join(os.path.dirname(__file__), "../build/voltrack"))
SNAPS = int(sys.argv[1]) if len(sys.argv) > 1 else 50
RT = int(sys.argv[2]) if len(sys.argv) > 2 else 8


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


class Served:
    def __init__(self, size, sparse=True):
        self.dir = tempfile.mkdtemp(prefix="voltrack-snapbench-")
        self.vol = os.path.join(self.dir, "v.img")
        subprocess.run([VOLTRACK, "init", self.vol, "--size", size], check=True,
                       stdout=subprocess.DEVNULL)
        if not sparse:
            subprocess.run(["fallocate", "-l", size, self.vol], check=True)
        self.meta = self.vol + ".voltrack"
        self.sock = os.path.join(self.meta, "nbd.sock")
        self.proc = subprocess.Popen([VOLTRACK, "serve", self.vol],
                                     stderr=open(os.path.join(self.dir, "log"), "wb"))
        for _ in range(400):
            if os.path.exists(self.sock):
                break
            time.sleep(0.02)

    def uri(self, export=""):
        return f"nbd+unix:///{export}?socket={self.sock}"

    def ctl(self, *args):
        c = socket.socket(socket.AF_UNIX)
        c.connect(os.path.join(self.meta, "control.sock"))
        c.sendall(b"".join(a.encode() + b"\0" for a in args))
        c.shutdown(socket.SHUT_WR)
        data = b""
        while (d := c.recv(65536)):
            data += d
        c.close()
        if data[:1] != b"0":
            raise RuntimeError(data.decode())
        return data[1:].decode()

    def close(self):
        self.proc.terminate()
        self.proc.wait()
        subprocess.run(["rm", "-rf", self.dir])


def fio(uri, rw, bs, qd, seconds=None, size=None, extra=()):
    args = ["fio", "--name=j", "--ioengine=nbd", f"--uri={uri}", f"--rw={rw}", f"--bs={bs}",
            f"--iodepth={qd}", "--output-format=json", "--norandommap"] + list(extra)
    if seconds:
        args += ["--time_based", f"--runtime={seconds}"]
    if size:
        args += [f"--size={size}"]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    job = json.loads(out[out.index("{"):])["jobs"][0]
    side = job["write"] if "write" in rw else job["read"]
    return side["iops"]


def worst(lat, b0, b1):
    """The longest write, in ms, of those in flight at some time in [b0, b1]."""
    return max((e - b for (b, e) in lat if e >= b0 and b <= b1), default=0) * 1000


def hold_times(size):
    s = Served(size)
    try:
        load = subprocess.Popen(["fio", "--name=load", "--ioengine=nbd", f"--uri={s.uri()}",
                                 "--rw=randwrite", "--bs=4k", "--iodepth=32", "--norandommap",
                                 "--size=" + ("256M" if size == "256M" else "64G"),
                                 "--time_based", f"--runtime={SNAPS * 2 + 30}",
                                 "--output=/dev/null"])
        lat = []   # (start, end) of each QD1 write
        stop = threading.Event()

        def qd1():
            h = nbd.NBD()
            h.connect_uri(s.uri())
            buf = b"q" * 4096
            i = 0
            while not stop.is_set():
                t0 = time.monotonic()
                h.pwrite(buf, (i % 4096) * 4096 + (128 << 20))
                lat.append((t0, time.monotonic()))
                i += 1
            h.shutdown()

        t = threading.Thread(target=qd1)
        t.start()
        time.sleep(3)
        held, felt, felt_cmd, windows = [], [], [], []
        for k in range(SNAPS):
            t0 = time.monotonic()
            out = json.loads(s.ctl("snapshot", f"b{k}", "--json"))
            t1 = time.monotonic()
            held.append(out["held-us"] / 1000)
            time.sleep(0.2)
            # The release, on our clock: the sync that follows it holds no
            # writer.  The hold began held-us before it; the prepare
            # before that holds nothing either.
            released = t1 - out["phases-us"]["sync"] / 1e6
            hold_start = released - out["held-us"] / 1e6
            # Writes that overlap the hold waited it out (and may pay a
            # copy after it): the hold as the client feels it.
            felt.append(worst(lat, hold_start, released))
            # Every write during the whole command, prepare included.
            felt_cmd.append(worst(lat, t0, released))
            windows.append((t0, hold_start, released))
            s.ctl("delete", f"b{k}")
            time.sleep(0.3)
        stop.set()
        t.join()
        load.terminate()
        load.wait()
        # The same client under the same load with no snapshot live (each
        # one was deleted 0.3 s earlier), in windows as long, ending just
        # before the next snapshot: what the load alone costs it.
        quiet, quiet_cmd = [], []
        for (t0, h0, rel), (nt0, _, _) in zip(windows, windows[1:]):
            end = nt0 - 0.15
            quiet.append(worst(lat, end - (rel - h0), end))
            quiet_cmd.append(worst(lat, end - (rel - t0), end))
        return held, felt, quiet, felt_cmd, quiet_cmd
    finally:
        s.close()


def cow_ratios():
    size = "1G"
    s = Served(size, sparse=False)
    try:
        fresh_job = dict(rw="write:60k", bs="4k", qd=32, size=size)
        base_rand = fio(s.uri(), "randwrite", "4k", 32, seconds=RT, size=size)
        base_fresh = fio(s.uri(), **fresh_job)
        base_read = fio(s.uri(), "randread", "4k", 32, seconds=RT, size=size)
        s.ctl("snapshot", "bench")
        snap_fresh = fio(s.uri(), **fresh_job)            # every write copies a chunk
        snap_rand = fio(s.uri(), "randwrite", "4k", 32, seconds=RT, size=size,
                        extra=["--offset=0"])             # all chunks copied by now
        snap_read = fio(s.uri("snapshot/bench"), "randread", "4k", 32, seconds=RT, size=size)
        live_read = fio(s.uri(), "randread", "4k", 32, seconds=RT, size=size)
        return dict(base_rand=base_rand, base_fresh=base_fresh, base_read=base_read,
                    snap_fresh=snap_fresh, snap_rand=snap_rand, snap_read=snap_read,
                    live_read=live_read)
    finally:
        s.close()


def main():
    if os.environ.get("SNAPBENCH_HOLD_ONLY"):
        for size in os.environ["SNAPBENCH_HOLD_ONLY"].split(","):
            held, felt, quiet, felt_cmd, quiet_cmd = hold_times(size)
            print(size, "held", pct(held, 50), pct(held, 99), "felt", pct(felt, 50),
                  pct(felt, 99), "quiet", pct(quiet, 50), pct(quiet, 99),
                  "command", pct(felt_cmd, 50), pct(felt_cmd, 99),
                  "quiet-command", pct(quiet_cmd, 50), pct(quiet_cmd, 99))
        return
    print(f"snapshot hold under 4k randwrite QD32, {SNAPS} snapshots each:")
    for size in ("256M", "1T"):
        held, felt, quiet, felt_cmd, quiet_cmd = hold_times(size)
        print(f"  {size:>4} volume: writes held p50 {pct(held, 50):6.2f} ms  p99 "
              f"{pct(held, 99):6.2f} ms (server)")
        print(f"        QD1 client's worst write across the hold: p50 {pct(felt, 50):6.2f} ms  "
              f"p99 {pct(felt, 99):6.2f} ms   (target p99 <= 10); with no snapshot, in as "
              f"long a window: p50 {pct(quiet, 50):6.2f} ms  p99 {pct(quiet, 99):6.2f} ms")
        print(f"        the same across the whole command (prepare included): p50 "
              f"{pct(felt_cmd, 50):6.2f} ms  p99 {pct(felt_cmd, 99):6.2f} ms; with no snapshot: "
              f"p50 {pct(quiet_cmd, 50):6.2f} ms  p99 {pct(quiet_cmd, 99):6.2f} ms")
    r = cow_ratios()
    print("one live snapshot against none, 1 GiB volume, 64 KiB chunks:")
    print(f"  4k writes to fresh chunks (each copies): {r['snap_fresh']:8.0f} IOPS vs "
          f"{r['base_fresh']:8.0f}  ratio {r['snap_fresh'] / r['base_fresh']:.2f}  (target >= 0.3)")
    print(f"  4k random writes, chunks already copied: {r['snap_rand']:8.0f} IOPS vs "
          f"{r['base_rand']:8.0f}  ratio {r['snap_rand'] / r['base_rand']:.2f}  (target >= 0.9)")
    print(f"  4k random reads, snapshot vs live:       {r['snap_read']:8.0f} IOPS vs "
          f"{r['live_read']:8.0f}  ratio {r['snap_read'] / r['live_read']:.2f}  (target >= 0.9)")


main()
