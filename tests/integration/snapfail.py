#!/usr/bin/python3
"""Group snapshots that fail: nothing is kept on any volume, and no write
fails (I5).

Volume A is served by voltrack-faulty, the CLI over the test build of
the library, with the fault point armed that fails the sync making a
snapshot's commit durable after its release (src/fault.h); volume B by
the shipped binary.  Writers run on both throughout.  Then a group whose
second volume has no server at all.  What was written is checked against
the test's own record of its writes, what is kept through both the
checkpoint list and the NBD exports.
"""
import json
import os
import random
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
from harness import VOLTRACK, Failures, Server  # noqa: E402

F = Failures()
FAULTY = os.environ.get("VOLTRACK_FAULTY", "build/tests/voltrack-faulty")
POINT = "snapshots.release.sync-checkpoints"
SIZE = 8 << 20
BLK = 4096


def vt(*args):
    return subprocess.run([VOLTRACK, *args], capture_output=True, text=True)


class Writer(threading.Thread):
    """Writes 4 KiB blocks at random over the volume, one at a time, and
    keeps what each block must hold once its write was acknowledged."""

    def __init__(self, srv, tag):
        super().__init__()
        self.srv, self.tag = srv, tag
        self.stop = threading.Event()
        self.acked = 0
        self.errors = []
        self.expect = {}

    def run(self):
        rnd = random.Random(self.tag)
        try:
            h = self.srv.connect()
            while not self.stop.is_set():
                b = rnd.randrange(SIZE // BLK)
                data = f"{self.tag} {self.acked} ".encode().ljust(BLK, b".")
                h.pwrite(data, b * BLK)     # raises unless acknowledged
                self.expect[b] = data
                self.acked += 1
            h.flush()
            h.shutdown()
        except Exception as e:  # noqa: BLE001 - any failure is the finding
            self.errors.append(repr(e))

    def wait_for(self, n, timeout=30):
        deadline = time.monotonic() + timeout
        while self.acked < n and not self.errors and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.acked >= n


def kept(srv, name):
    """What srv still has of NAME: through list --json, changes --since,
    and the NBD export list (independent of each other)."""
    listed = [c for c in json.loads(vt("list", srv.volume, "--json").stdout)
              if c["name"] == name]
    since = vt("changes", srv.volume, "--since", name)
    exports = subprocess.run(["nbdinfo", "--list", "--json", srv.uri], capture_output=True,
                             text=True, check=True).stdout
    exported = any(e["export-name"] == f"snapshot/{name}"
                   for e in json.loads(exports)["exports"])
    return listed, since.returncode == 0, exported


def one_line(p, what):
    lines = p.stderr.strip().splitlines()
    F.check(p.returncode != 0, f"{what}: the command fails (exit {p.returncode})")
    F.check(len(lines) == 1, f"{what}: one line says why, got {lines!r}")
    F.equal(p.stdout, "", f"{what}: nothing is reported taken")
    return lines[0] if lines else ""


def main():
    a = Server(size=SIZE, binary=FAULTY, env={"VOLTRACK_TEST_FAULTS": POINT}).start()
    b = Server(size=SIZE).start()
    c = Server(size=SIZE)   # initialised, never served
    writers = [Writer(a, "A"), Writer(b, "B")]
    try:
        for w in writers:
            w.start()
        F.check(all(w.wait_for(50) for w in writers), "both writers are writing")

        # The release on A cannot make its commit durable.
        before = [w.acked for w in writers]
        p = vt("snapshot", a.volume, b.volume, "--group", "G")
        line = one_line(p, "a commit not made durable")
        F.check(a.volume in line and "could not make it durable" in line and
                "nothing kept on any volume" in line, f"the line names A and says so: {line}")
        F.check(f"test fault injected: {POINT}" in a.log_text(),
                "the premise: the fault fired in A's server")
        F.check(all(w.wait_for(n + 50) for w, n in zip(writers, before)),
                "writes go on after the failed group on both volumes")
        for srv, vol in ((a, "A"), (b, "B")):
            listed, since, exported = kept(srv, "G")
            F.equal(listed, [], f"{vol} lists no snapshot or checkpoint G")
            F.check(not since, f"{vol}: changes --since G fails")
            F.check(not exported, f"{vol} exports no snapshot/G")

        # The hold fails on the second volume, which no server serves.
        before = [w.acked for w in writers]
        p = vt("snapshot", b.volume, c.volume, "--group", "H")
        line = one_line(p, "a volume without a server")
        F.check(c.volume in line and "could not be held" in line and
                "nothing kept on any volume" in line, f"the line names C and says so: {line}")
        listed, since, exported = kept(b, "H")
        F.check(not listed and not since and not exported, "B keeps nothing of H")
        F.check(writers[1].wait_for(before[1] + 50), "B's writes go on after the abort")

        for w in writers:
            w.stop.set()
            w.join()
            F.equal(w.errors, [], f"writer {w.tag} saw no error")
        F.check(all(w.acked > 150 for w in writers),
                f"every write was acknowledged ({[w.acked for w in writers]})")

        # Both servers still serve, and hold exactly what was written.
        for srv, w in ((a, writers[0]), (b, writers[1])):
            F.check(srv.alive(), f"{w.tag}'s server still runs")
            vol = srv.read_volume()
            bad = [blk for blk, data in w.expect.items() if vol[blk * BLK:(blk + 1) * BLK] != data]
            F.equal(bad[:5], [], f"{w.tag}'s volume holds every acknowledged write")
        F.equal(vt("checkpoint", a.volume, "after").returncode, 0, "A takes a checkpoint")
        F.equal(vt("snapshot", b.volume, "after").returncode, 0, "B takes a snapshot")
    finally:
        for w in writers:
            w.stop.set()
            if w.is_alive():
                w.join()
        for s in (a, b, c):
            s.stop()
            s.cleanup()


main()
F.finish()
