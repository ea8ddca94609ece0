#!/usr/bin/python3
"""Offline changes on a file system with whole-second timestamps.

ext4 with 128-byte inodes (like FAT and some network file systems) keeps
ctime in whole seconds, so a write by another program in the same second
as the server's last write leaves the volume's ctime exactly as voltrack
recorded it.  voltrack must then not trust the ctime: the write must be
reported (doc/tracking.md).  Cases: the server goes idle and is killed,
or is stopped cleanly, and then another program writes within the same
second; the next tracked start must report that write.

The reference is the test's own: the block it wrote directly.  Premises
are asserted: the file system really keeps whole seconds, and the direct
write really left the ctime unchanged (otherwise the case proves
nothing and fails).  Needs root for the loop mount; exits 77 without.
"""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import nbd

from harness import VOLTRACK, Failures

t = Failures()
ENV = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin"}
G = 64 << 10
FOREIGN = 150 << 20


def run(*args, check=True):
    p = subprocess.run(list(args), capture_output=True, text=True, env=ENV)
    if check and p.returncode:
        raise RuntimeError(f"{' '.join(args)}: {p.stderr}")
    return p


def vt(*args):
    return subprocess.run([VOLTRACK, *args], capture_output=True, text=True, env=ENV)


def reported(vol, since, off):
    p = vt("changes", vol, "--since", since, "--json")
    t.equal(p.returncode, 0, f"changes --since {since}: {p.stderr}")
    return any(e["offset"] <= off < e["offset"] + e["length"]
               for e in json.loads(p.stdout)["extents"])


def one_case(mnt, mode):
    """False when the timing premise was not met (try again)."""
    vol = os.path.join(mnt, f"{mode}.img")
    if os.path.exists(vol):
        os.unlink(vol)
        subprocess.run(["rm", "-rf", vol + ".voltrack"], env=ENV)
    with open(vol, "wb") as f:
        f.truncate(256 << 20)
    t.equal(vt("init", vol).returncode, 0, f"{mode}: init")
    t.equal(vt("checkpoint", vol, "c1").returncode, 0, f"{mode}: checkpoint")
    srv = subprocess.Popen([VOLTRACK, "serve", vol, "--persist-interval", "10"],
                           stderr=subprocess.DEVNULL, env=ENV, start_new_session=True)
    try:
        sock = vol + ".voltrack/nbd.sock"
        deadline = time.time() + 10
        while not os.path.exists(sock) and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)
        h = nbd.NBD()
        h.connect_uri("nbd+unix:///?socket=" + sock)
        # A second with room: the server's write, its quiet commit, the
        # stop and the foreign write must all fall in it.
        # Not in its first ticks either: the kernel stamps ctime from a
        # coarse clock that may still read the previous second.
        while not 0.02 < time.time() % 1 < 0.06:
            time.sleep(0.002)
        second = int(time.time())
        h.pwrite(b"S" * 4096, 10 << 20)
        h.flush()
        if mode == "kill9-idle":
            # The region goes idle two persists (20 ms) after the write;
            # one look at the status then, not a busy poll, so that the
            # kill and the direct write still fall in this second.
            time.sleep(0.15)
            if json.loads(vt("status", vol, "--json").stdout)["intent-regions-set"]:
                print(f"{mode}: not idle yet; again", flush=True)
                return False
            os.killpg(srv.pid, signal.SIGKILL)
        else:
            h.shutdown()
            os.killpg(srv.pid, signal.SIGTERM)
        srv.wait()
        before = os.stat(vol).st_ctime_ns
        fd = os.open(vol, os.O_WRONLY)
        os.pwrite(fd, b"F" * 4096, FOREIGN)
        os.fsync(fd)
        os.close(fd)
        after = os.stat(vol).st_ctime_ns
        same = int(time.time()) == second and before == after
        if mode == "kill9-idle" and not same:
            print(f"{mode}: the second ran out before the direct write (at +"
                  f"{time.time() - second:.3f} s; ctime {before} -> {after}); again", flush=True)
            return False
        if mode != "kill9-idle":
            # A clean close waits until its identity is decisive, so a
            # write after it cannot share the recorded ctime's second.
            t.check(before != after, f"{mode}: the clean stop outlasted the timestamp "
                                     f"granularity ({before} -> {after})")
        hit = reported(vol, "c1", FOREIGN)
        print(f"{mode}: direct write in the same second, ctime unchanged: {same}; "
              f"reported since c1: {hit}", flush=True)
        t.check(hit, f"{mode}: a write that left the ctime unchanged is reported")
        return True
    finally:
        if srv.poll() is None:
            os.killpg(srv.pid, signal.SIGKILL)
            srv.wait()


work = tempfile.mkdtemp(prefix="voltrack-gran-")
img = os.path.join(work, "fs.img")
mnt = os.path.join(work, "mnt")
os.mkdir(mnt)
mounted = False
try:
    with open(img, "wb") as f:
        f.truncate(1 << 30)
    run("mkfs.ext4", "-q", "-F", "-I", "128", img)
    if run("mount", "-o", "loop", img, mnt, check=False).returncode:
        print("cannot loop-mount a file system (needs root); test not run")
        sys.exit(77)
    mounted = True
    probe = os.path.join(mnt, "probe")
    open(probe, "w").close()
    t.equal(os.stat(probe).st_ctime_ns % 1_000_000_000, 0,
            "the file system keeps whole-second timestamps (premise)")
    # The kill case depends on timing: it is tried until the direct write
    # really fell in the server's last second (the premise), a few times.
    t.check(any(one_case(mnt, "kill9-idle") for _ in range(10)),
            "kill9-idle: a direct write in the same second as the server's last (premise)")
    one_case(mnt, "clean")
finally:
    if mounted:
        subprocess.run(["umount", mnt], env=ENV)
    subprocess.run(["rm", "-rf", work], env=ENV)
t.finish()
