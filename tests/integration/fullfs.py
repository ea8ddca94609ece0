#!/usr/bin/python3
"""Full file systems under a real `voltrack serve` (doc/tracking.md, "When
a file system fills up"; invariant I1).

The volume's file system fills up (a tmpfs, then a loop-mounted ext4
image; the volume a sparse file larger than the free space):
  - a client's WRITE gets ENOSPC on the wire (not EIO), FUA or not;
  - the server keeps serving: another connection reads what was written,
    and a FLUSH succeeds, since nothing failed to reach the disk;
  - `changes --since c1` reports exactly the blocks of every write the
    test attempted, failed ones included (they may have landed in part),
    from the test's own log;
  - once a filler file is deleted the failed writes, FUA ones first,
    succeed, FLUSH too, and the whole volume read over NBD and, after a
    clean stop, from the backing file equals the test's reference.

The metadata directory's file system fills up (a tiny tmpfs, filled
after `serve` started):
  - writes into every intent region (each a new intent commit), map
    persists and checkpoints still succeed: they overwrite space the
    metadata files were given at `init`;
  - a snapshot needs new space (its diff store) and fails with a clear
    error; the server keeps serving and writes still succeed;
  - the clean close cannot replace the superblock: it says so and the
    next start recovers as after a crash; a start on the full directory
    refuses to serve; once space is freed it serves again and every
    written block is reported since both checkpoints;
  - the same after a kill -9 with the directory full.

Needs root (mount); exits 77 (skipped) without it.  The ext4 case is
skipped alone when mkfs.ext4 or a loop mount is unavailable.
"""
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import nbd

from harness import VOLTRACK, ENGINE, Failures

t = Failures()
G = 64 << 10
MIB = 1 << 20
CHUNK = 256 << 10


def skip(why):
    print(f"SKIP: {why}", flush=True)
    sys.exit(77)


def vt(*args):
    p = subprocess.run([VOLTRACK, *args], capture_output=True, text=True)
    return p.returncode, p.stdout, p.stderr


def blocks(off, length):
    return set(range(off // G, (off + length + G - 1) // G))


def changes(vol, meta, since):
    rc, out, err = vt("changes", vol, "--meta", meta, "--since", since, "--json")
    if not t.check(rc == 0, f"changes --since {since}: exit {rc}: {err.strip()}"):
        return set()
    got = set()
    for e in json.loads(out)["extents"]:
        got |= blocks(e["offset"], e["length"])
    return got


class Mount:
    """A small file system of its own, tmpfs or ext4 on a loop device."""

    def __init__(self, work, kind, size, name=None):
        self.dir = os.path.join(work, name or f"mnt-{kind}")
        os.mkdir(self.dir)
        self.mounted = False
        if kind == "tmpfs":
            cmd = ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", self.dir]
        else:
            image = os.path.join(work, "ext4.img")
            with open(image, "wb") as f:
                f.truncate(size)
            subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", image], check=True,
                           capture_output=True)
            cmd = ["mount", "-o", "loop", image, self.dir]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            raise OSError(f"{' '.join(cmd)}: {p.stderr.strip()}")
        self.mounted = True

    def free(self):
        st = os.statvfs(self.dir)
        return st.f_bavail * st.f_frsize

    def fill(self, name, leave=0):
        """Write a filler file until `leave` bytes are free (or none)."""
        path = os.path.join(self.dir, name)
        block = b"\xf1" * MIB
        with open(path, "wb", buffering=0) as f:
            while self.free() > leave + MIB:
                try:
                    f.write(block)
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    break
            if leave == 0:
                for n in (4096, 512, 1):
                    while True:
                        try:
                            if not f.write(b"\xf1" * n):
                                break
                        except OSError:
                            break
        return path

    def umount(self):
        if self.mounted:
            subprocess.run(["umount", self.dir], capture_output=True)
            self.mounted = False


class Serve:
    def __init__(self, vol, meta, log, extra=()):
        self.vol, self.meta = vol, meta
        self.sock = os.path.join(meta, "nbd.sock")
        self.log = log
        self.proc = None
        self.extra = list(extra)

    def start(self, expect_ok=True):
        mark = os.path.getsize(self.log) if os.path.exists(self.log) else 0
        with open(self.log, "ab") as lf:
            self.proc = subprocess.Popen([VOLTRACK, "serve", self.vol, "--meta", self.meta,
                                          "--io-engine", ENGINE] + self.extra, stderr=lf)
        deadline = time.time() + 15
        while time.time() < deadline:
            text = self.text(mark)
            if "serving" in text:
                return True, text
            if self.proc.poll() is not None:
                self.proc = None
                return False, text
            time.sleep(0.02)
        raise RuntimeError(f"serve neither started nor failed:\n{self.text(mark)}")

    def text(self, mark=0):
        with open(self.log, "rb") as f:
            f.seek(mark)
            return f.read().decode(errors="replace")

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM):
        if not self.proc:
            return None
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = f"hung ({self.proc.wait()})"
        self.proc = None
        return rc

    def connect(self):
        h = nbd.NBD()
        h.connect_unix(self.sock)
        return h


def volume_full(work, kind):
    """The volume's file system fills up."""
    size = 48 * MIB
    try:
        m = Mount(work, kind, 24 * MIB)
    except (OSError, subprocess.CalledProcessError, FileNotFoundError) as e:
        if kind == "tmpfs":
            skip(f"cannot mount a tmpfs: {e}")
        print(f"SKIP ({kind}): {e}", flush=True)
        return
    label = f"[volume on a full {kind}]"
    meta = os.path.join(work, f"meta-{kind}")
    vol = os.path.join(m.dir, "vol.img")
    srv = Serve(vol, meta, os.path.join(work, f"serve-{kind}.log"))
    try:
        rc, _, err = vt("init", vol, "--size", str(size), "--meta", meta)
        t.check(rc == 0, f"{label} init: {err.strip()}")
        filler = m.fill("filler", leave=3 * MIB)
        print(f"{label} {m.free() >> 10} KiB free for a {size >> 20} MiB volume", flush=True)
        ok, text = srv.start()
        if not t.check(ok, f"{label} serve starts: {text}"):
            return
        t.check(vt("checkpoint", vol, "--meta", meta, "c1")[0] == 0, f"{label} checkpoint c1")

        rnd = random.Random(kind)
        ref = bytearray(size)
        attempted, failed = [], []
        h = srv.connect()
        off = 0
        while off < size and len(failed) < 6:
            data = rnd.randbytes(CHUNK)
            fua = len(attempted) % 2 == 1
            attempted.append((off, CHUNK))
            try:
                h.pwrite(data, off, nbd.CMD_FLAG_FUA if fua else 0)
                ref[off:off + CHUNK] = data
            except nbd.Error as e:
                failed.append((off, fua, e.errnum))
            off += CHUNK
        acked = len(attempted) - len(failed)
        print(f"{label} {len(attempted)} writes of {CHUNK >> 10} KiB: {acked} acknowledged, "
              f"{len(failed)} failed ({sum(f for _, f, _ in failed)} of them FUA)", flush=True)
        t.check(acked > 0 and failed, f"{label} premise: some writes landed, then some failed")
        t.check(any(f for _, f, _ in failed) and any(not f for _, f, _ in failed),
                f"{label} premise: FUA and plain writes both failed")
        bad = [(o, errno.errorcode.get(n, n)) for o, _, n in failed if n != errno.ENOSPC]
        t.check(not bad, f"{label} every failed write is ENOSPC on the wire: {bad}")
        t.check(srv.alive(), f"{label} the server keeps serving")

        # Another connection reads what was acknowledged, and flushes:
        # nothing failed to reach the disk, so nothing may latch.
        h2 = srv.connect()
        failed_at = {o for o, _, _ in failed}
        wrong = [o for o, n in attempted if o not in failed_at and h2.pread(n, o) != ref[o:o + n]]
        t.check(not wrong, f"{label} acknowledged writes read back from another connection: "
                f"wrong at {wrong[:4]}")
        for who, hh in (("the writer", h), ("another connection", h2)):
            try:
                hh.flush()
                t.check(True, "")
            except nbd.Error as e:
                t.check(False, f"{label} FLUSH from {who} with the file system full: {e}")

        # I1: every attempted write, failed ones too, against the test's log.
        want = set()
        for o, n in attempted:
            want |= blocks(o, n)
        got = changes(vol, meta, "c1")
        missed = sorted(want - got)
        t.check(not missed, f"{label} changes --since c1 misses blocks {missed[:8]} "
                f"({len(missed)})")
        t.equal(len(got - want), 0, f"{label} blocks reported never written")

        # Space again: the failed writes succeed, FUA first.
        os.unlink(filler)
        retry_failed = []
        for o, fua, _ in sorted(failed, key=lambda f: not f[1]):
            data = rnd.randbytes(CHUNK)
            try:
                h.pwrite(data, o, nbd.CMD_FLAG_FUA if fua else 0)
                ref[o:o + CHUNK] = data
            except nbd.Error as e:
                retry_failed.append((o, fua, errno.errorcode.get(e.errnum, e.errnum)))
        t.check(not retry_failed, f"{label} writes after space was freed: {retry_failed}")
        try:
            h.flush()
            t.check(True, "")
        except nbd.Error as e:
            t.check(False, f"{label} FLUSH after space was freed: {e}")
        whole = b"".join(h2.pread(4 * MIB, o) for o in range(0, size, 4 * MIB))
        t.check(whole == ref, f"{label} the volume read over NBD equals the reference")
        h.shutdown()
        h2.shutdown()
        rc = srv.stop()
        t.equal(rc, 0, f"{label} clean stop")
        t.check("stopped cleanly" in srv.text(), f"{label} serve says it stopped cleanly")
        with open(vol, "rb") as f:
            t.check(f.read() == ref, f"{label} the backing file equals the reference")
        rc, out, _ = vt("status", vol, "--meta", meta, "--json")
        t.check(rc == 0 and json.loads(out)["state"] == "clean", f"{label} status clean: {out}")
    finally:
        srv.stop(signal.SIGKILL)
        m.umount()


def meta_full(work):
    """The metadata directory's file system fills up."""
    label = "[metadata on a full tmpfs]"
    size = 1 << 30
    region = 64 * MIB
    try:
        m = Mount(work, "tmpfs", 2 * MIB, "mnt-meta")
    except OSError as e:
        skip(f"cannot mount a tmpfs: {e}")
    meta = os.path.join(m.dir, "m")
    vol = os.path.join(work, "vol-meta.img")
    srv = Serve(vol, meta, os.path.join(work, "serve-meta.log"), ["--persist-interval", "100"])
    rnd = random.Random(7)
    written = {"c1": set(), "c2": set()}   # blocks written after each checkpoint

    def write_all(h, base, tag):
        bad = []
        for r in range(size // region):
            o = r * region + base
            try:
                h.pwrite(rnd.randbytes(G), o, nbd.CMD_FLAG_FUA if r % 2 else 0)
            except nbd.Error as e:
                bad.append((r, errno.errorcode.get(e.errnum, e.errnum)))
            for c in tag:
                written[c] |= blocks(o, G)
        return bad

    try:
        rc, _, err = vt("init", vol, "--size", str(size), "--meta", meta)
        t.check(rc == 0, f"{label} init: {err.strip()}")
        ok, text = srv.start()
        if not t.check(ok, f"{label} serve starts: {text}"):
            return
        t.check(vt("checkpoint", vol, "--meta", meta, "c1")[0] == 0, f"{label} checkpoint c1")
        filler = m.fill("filler")
        t.check(m.free() == 0, f"{label} premise: the metadata file system is full "
                f"({m.free()} bytes free)")

        h = srv.connect()
        bad = write_all(h, 0, ("c1",))
        t.check(not bad, f"{label} first writes into all {size // region} regions: {bad}")
        try:
            h.flush()
            t.check(True, "")
        except nbd.Error as e:
            t.check(False, f"{label} FLUSH: {e}")
        time.sleep(0.5)    # several map persists into the full directory
        rc, _, err = vt("checkpoint", vol, "--meta", meta, "c2")
        t.check(rc == 0, f"{label} checkpoint c2 with the directory full: {err.strip()}")
        bad = write_all(h, 5 * G, ("c1", "c2"))
        t.check(not bad, f"{label} writes after c2: {bad}")
        rc, _, err = vt("checkpoint", vol, "--meta", meta, "c3")
        t.check(rc == 0, f"{label} checkpoint c3: {err.strip()}")
        rc, _, err = vt("delete", vol, "--meta", meta, "c3", "--forget")
        t.check(rc == 0, f"{label} delete c3 --forget (a renumbering) with the directory "
                f"full: {err.strip()}")

        rc, _, err = vt("snapshot", vol, "--meta", meta, "s1")
        print(f"{label} snapshot s1: exit {rc}: {err.strip()}", flush=True)
        t.check(rc != 0 and "No space left" in err, f"{label} a snapshot, which needs "
                f"new space, fails and says why: exit {rc}: {err.strip()}")
        t.check(srv.alive(), f"{label} the server keeps serving after the failed snapshot")
        bad = write_all(h, 9 * G, ("c1", "c2"))
        t.check(not bad, f"{label} writes after the failed snapshot: {bad}")
        for c in ("c1", "c2"):
            missed = written[c] - changes(vol, meta, c)
            t.check(not missed, f"{label} changes --since {c} while serving misses "
                    f"{len(missed)} block(s)")
        h.shutdown()

        # The clean close must replace the superblock: it cannot.
        rc = srv.stop()
        text = srv.text()
        print(f"{label} stop with the directory full: exit {rc}", flush=True)
        t.check("next start will recover" in text, f"{label} the close says the next start "
                "recovers")
        ok, text = srv.start()
        t.check(not ok and "No space left" in text, f"{label} a start on the full directory "
                f"refuses to serve and says why: {text.strip()[-200:]}")
        if ok:
            srv.stop()

        os.unlink(filler)
        ok, text = srv.start()
        t.check(ok, f"{label} serves again once space is freed: {text}")
        rc, out, _ = vt("status", vol, "--meta", meta, "--json")
        state = json.loads(out)["state"] if rc == 0 else f"exit {rc}"
        t.check(state != "clean", f"{label} status after the failed close is not clean: "
                f"{state}")
        for c in ("c1", "c2"):
            got = changes(vol, meta, c)
            missed = written[c] - got
            t.check(not missed, f"{label} after the restart, changes --since {c} misses "
                    f"{len(missed)} block(s)")
            print(f"{label} since {c}: {len(written[c])} block(s) written, {len(got)} "
                  f"reported", flush=True)

        # kill -9 with the directory full: every write still reported.
        filler = m.fill("filler")
        h = srv.connect()
        bad = write_all(h, 13 * G, ("c1", "c2"))
        t.check(not bad, f"{label} writes with the directory full again: {bad}")
        srv.stop(signal.SIGKILL)
        os.unlink(filler)
        ok, text = srv.start()
        t.check(ok, f"{label} serves after the kill: {text}")
        for c in ("c1", "c2"):
            missed = written[c] - changes(vol, meta, c)
            t.check(not missed, f"{label} after the kill, changes --since {c} misses "
                    f"{len(missed)} block(s)")
        t.equal(srv.stop(), 0, f"{label} clean stop with space")
    finally:
        srv.stop(signal.SIGKILL)
        m.umount()


def main():
    if os.geteuid() != 0:
        skip("needs root to mount file systems")
    work = tempfile.mkdtemp(prefix="voltrack-fullfs-")
    t0 = time.time()
    try:
        volume_full(work, "tmpfs")
        if shutil.which("mkfs.ext4"):
            volume_full(work, "ext4")
        else:
            print("SKIP (ext4): no mkfs.ext4", flush=True)
        meta_full(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{time.time() - t0:.1f} s", flush=True)
    t.finish()


main()
