#!/usr/bin/python3
"""Every way a tracked run can end, then every way the volume can be
touched before the next tracked start: invariant I1 (and I6).

Table-driven: ENDINGS x TOUCHES, on a regular file volume and on a loop
device (a block device, with --meta DIR).  Each case:

  1. init the volume, create checkpoint c1 offline, and copy the volume's
     bytes (read directly from the file or device) as the reference;
  2. a tracked `voltrack serve` with writes through NBD, ended by the
     ENDING: `clean` (SIGTERM, exit 0), `kill9-idle` (SIGKILL once the
     server has been idle long enough that no write intent is set) or
     `kill9-busy` (SIGKILL right after an acknowledged write, intents set);
  3. the TOUCH, while no tracked server runs: `none`; `direct` (os.pwrite
     + fsync into the volume, not through voltrack); `notrack` (writes
     through NBD to `serve --no-track`, stopped with SIGTERM); `offline`
     (`voltrack status VOLUME` and `voltrack checkpoint VOLUME offl` with
     no server); `offline-then-direct`; `direct-then-offline`;
     `kill9-again` (a tracked serve, a write, SIGKILL);
  4. a tracked `voltrack serve` start, and the check: every 64 KiB block
     whose bytes differ from the reference must be reported changed since
     c1 by `voltrack changes --json` AND by `nbdinfo --map` of
     qemu:dirty-bitmap:c1.  The only other acceptable outcome (I6) is a
     history declared broken: c1 gone, with `status` saying so (new
     generation, state history-reset or modified-offline).

Documented limits (doc/tracking.md):
  - a block device carries no trustworthy ctime, so a write by another
    program while no voltrack process runs cannot be detected, whatever
    the previous run's ending.  Blocks written that way are printed as
    'undetectable by design' and do not fail; every other block is
    checked strictly, in the same case too.
  - after a crash, a write by another program to a volume file within the
    dead server's write lease cannot be told from the server's own last
    writes.  The busy kill cases therefore wait the lease out before the
    touch, and are then checked strictly.

Premises are checked, so a case whose premise is empty fails: the loop
device exists, NBD writes are acknowledged, the server stopped or died as
intended, intents were clear (idle) or set (busy) at the kill, and every
writing touch changed bytes of the volume.

Needs root (a loop device); exits 77 (skipped) without it.
VOLTRACK_PATHS_ONLY=TEXT runs only the cases whose name contains TEXT.
"""
import json
import os
import random
import signal
import stat
import subprocess
import sys
import tempfile
import time

from harness import ENGINE, VOLTRACK, Failures

t = Failures()
SIZE = 128 << 20
G = 64 << 10
MIB = 1 << 20
CHUNK = 4 * MIB
PERSIST_MS = 100
LEASE_SECONDS = 3.3     # the write lease: 3 s
IDLE_SECONDS = 2.0          # how long the server idles before kill9-idle
ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin:/usr/sbin:/sbin")}
rnd = random.Random(int(os.environ.get("VOLTRACK_PATHS_SEED", str(os.getpid()))))

ENDINGS = ["clean", "kill9-idle", "kill9-busy"]
TOUCHES = ["none", "direct", "notrack", "offline", "offline-then-direct",
           "direct-then-offline", "kill9-again"]

# Where things are written.  The tracked run writes in the first 64 MiB
# write-intent region; every touch writes in the second, at its own
# offsets, so intents left set by the run never cover a touch's blocks.
RUN_WRITES = [(1 * MIB + 10, 5000), (20 * MIB, 200 << 10), (33 * MIB + G - 7, 14)]
BUSY_WRITE = (40 * MIB + 512, 4096)
DIRECT_WRITE = (72 * MIB + 4096 - 100, 70000)      # spans two blocks
NOTRACK_WRITE = (88 * MIB + 300, 100 << 10)
AGAIN_WRITES = [(104 * MIB, 8192), (110 * MIB + 99, 16)]

children = []               # every process group this test started


def blocks_of(extents):
    out = set()
    for off, length in extents:
        if length:
            out.update(range(off // G, (off + length + G - 1) // G))
    return out


def fmt_blocks(bs, limit=6):
    s = sorted(bs)
    text = ",".join(str(b) for b in s[:limit])
    return text + (",..." if len(s) > limit else "")


def run(args, timeout=60):
    """Run a short command in its own process group; kill the group on timeout."""
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=ENV, start_new_session=True)
    children.append(p)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        err += f"\n(timed out after {timeout} s, killed)"
    finally:
        end_group(p)
    return p.returncode, out, err


def end_group(p):
    """SIGKILL the process group of P, a child this test started, if P still runs."""
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()


class Vol:
    """One case's volume: a fresh file, or the shared loop device with a
    fresh metadata directory."""

    def __init__(self, kind, work, dev=None):
        self.kind = kind
        self.dir = tempfile.mkdtemp(prefix="case-", dir=work)
        if kind == "file":
            self.path = os.path.join(self.dir, "disk.img")
            self.meta = self.path + ".voltrack"
            self.meta_args = []
        else:
            self.path = dev
            self.meta = os.path.join(self.dir, "meta")
            self.meta_args = ["--meta", self.meta]
        self.sock = os.path.join(self.meta, "nbd.sock")
        self.uri = f"nbd+unix:///?socket={self.sock}"
        self.log_path = os.path.join(self.dir, "serve.log")
        # True while the metadata says "closed cleanly": a write by another
        # program then is undetectable on a block device (documented).
        self.clean_on_disk = False

    def vt(self, *args, timeout=60):
        return run([VOLTRACK, args[0], self.path, *self.meta_args, *args[1:]], timeout)

    def snapshot(self, image):
        """Copy the volume's bytes, read directly, into IMAGE."""
        with open(self.path, "rb", buffering=0) as f:
            for chunk in image.chunks:
                if f.readinto(chunk) != len(chunk):
                    raise RuntimeError(f"short read of {self.path}")

    def differing(self, image):
        """Blocks whose bytes on the volume differ from IMAGE."""
        diff = set()
        cur = bytearray(CHUNK)
        with open(self.path, "rb", buffering=0) as f:
            for i, chunk in enumerate(image.chunks):
                if f.readinto(cur) != CHUNK:
                    raise RuntimeError(f"short read of {self.path}")
                if cur != chunk:
                    for off in range(0, CHUNK, G):
                        if cur[off:off + G] != chunk[off:off + G]:
                            diff.add((i * CHUNK + off) // G)
        return diff

    def status(self):
        rc, out, err = self.vt("status", "--json")
        if rc:
            raise RuntimeError(f"status: {err.strip()}")
        return json.loads(out)


class Image:
    """A copy of a volume's bytes, in buffers allocated once and reused."""

    def __init__(self):
        self.chunks = [bytearray(CHUNK) for _ in range(SIZE // CHUNK)]


REFERENCE, BEFORE_TOUCH = Image(), Image()

class Serve:
    """A `voltrack serve` in its own process group."""

    def __init__(self, vol, track=True):
        self.vol = vol
        args = [VOLTRACK, "serve", vol.path, *vol.meta_args, "--io-engine", ENGINE,
                "--persist-interval", str(PERSIST_MS)]
        if not track:
            args.append("--no-track")
        self.log = open(vol.log_path, "ab")
        self.mark = self.log.tell()
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=self.log, env=ENV, start_new_session=True)
        children.append(self.proc)
        deadline = time.time() + 15
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited early ({self.proc.returncode}): {self.text()}")
            if b"serving" in self.raw():
                break
            if time.time() > deadline:
                raise RuntimeError(f"serve did not start: {self.text()}")
            time.sleep(0.01)
        if track:
            vol.clean_on_disk = False

    def raw(self):
        with open(self.vol.log_path, "rb") as f:
            return f.read()[self.mark:]

    def text(self):
        return self.raw().decode(errors="replace").strip()

    def stop(self):
        """SIGTERM; returns the exit status."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            rc = f"hung, killed ({self.proc.wait()})"
        self.log.close()
        return rc

    def kill9(self):
        """SIGKILL the server process; returns its wait status."""
        os.kill(self.proc.pid, signal.SIGKILL)
        rc = self.proc.wait(20)
        self.log.close()
        return rc


def nbd_write(uri, writes):
    """Writes through libnbd; each pwrite returns only once acknowledged.
    Returns the open handle."""
    import nbd
    h = nbd.NBD()
    h.connect_uri(uri)
    for off, n in writes:
        h.pwrite(rnd.randbytes(n), off)
    return h


def direct_write(vol, off, n):
    """Bytes into the volume behind voltrack's back."""
    fd = os.open(vol.path, os.O_WRONLY)
    try:
        data = rnd.randbytes(n)
        t.equal(os.pwrite(fd, data, off), n, f"{vol.kind}: direct pwrite length")
        os.fsync(fd)
    finally:
        os.close(fd)
    return blocks_of([(off, n)])


def reported_cli(vol):
    rc, out, err = vol.vt("changes", "--since", "c1", "--json")
    if rc:
        return None, err.strip()
    j = json.loads(out)
    if j["granularity"] != G:
        raise RuntimeError(f"granularity {j['granularity']}, expected {G}")
    return blocks_of((e["offset"], e["length"]) for e in j["extents"]), ""


def reported_nbd(vol):
    rc, out, err = run(["nbdinfo", "--json", "--map=qemu:dirty-bitmap:c1", vol.uri])
    if rc:
        return None, err.strip()
    return blocks_of((e["offset"], e["length"]) for e in json.loads(out) if e["type"] & 1), ""


def offline_commands(vol, case):
    """`status` and `checkpoint` with no server running; returns the state
    the first of them found."""
    rc, out, err = vol.vt("status")
    t.check(rc == 0, f"{case}: offline 'status': {err}")
    state = next((ln.split(":")[1].strip() for ln in out.splitlines()
                  if ln.startswith("state:")), "?")
    rc, out, err = vol.vt("checkpoint", "offl")
    t.check(rc == 0, f"{case}: offline 'checkpoint offl': {out}{err}")
    vol.clean_on_disk = True
    return state


def touch_direct(vol, case, undetectable):
    blocks = direct_write(vol, *DIRECT_WRITE)
    if vol.kind == "blockdev":
        undetectable |= blocks
    return blocks


def do_ending(vol, srv, ending, case):
    """Writes through NBD, then end the run as ENDING says."""
    h = nbd_write(vol.uri, RUN_WRITES)
    h.flush()
    written = blocks_of(RUN_WRITES)
    if ending == "clean":
        h.shutdown()
        rc = srv.stop()
        t.equal(rc, 0, f"{case}: server stops cleanly on SIGTERM")
        t.check(b"stopped cleanly" in srv.raw(), f"{case}: server says it stopped cleanly")
        vol.clean_on_disk = rc == 0
    elif ending == "kill9-idle":
        h.shutdown()
        last = time.time()
        deadline = last + 15
        regions = None
        while time.time() < deadline:
            regions = vol.status()["intent-regions-set"]
            if regions == 0 and time.time() - last >= IDLE_SECONDS:
                break
            time.sleep(0.1)
        t.equal(regions, 0, f"{case}: no write intent set after idling (premise)")
        t.equal(srv.kill9(), -signal.SIGKILL, f"{case}: idle server killed by SIGKILL")
    else:  # kill9-busy
        st = vol.status()
        t.check(st["intent-regions-set"] >= 1,
                f"{case}: intents set just before the kill (premise): {st}")
        h.pwrite(rnd.randbytes(BUSY_WRITE[1]), BUSY_WRITE[0])   # acknowledged
        written |= blocks_of([BUSY_WRITE])
        t.equal(srv.kill9(), -signal.SIGKILL, f"{case}: busy server killed by SIGKILL")
        del h
        if vol.kind == "file":
            time.sleep(LEASE_SECONDS)  # see the module's docstring
    return written


def do_touch(vol, touch, case, undetectable):
    """Returns (blocks the touch wrote, a note for the table)."""
    note = ""
    if touch == "none":
        return set(), note
    if touch == "direct":
        return touch_direct(vol, case, undetectable), note
    if touch == "notrack":
        srv = Serve(vol, track=False)
        seed = rnd.randrange(1 << 30)
        off, n = NOTRACK_WRITE
        code = (f"import random; h.pwrite(random.Random({seed}).randbytes({n}), {off}); "
                f"h.flush()")
        rc, out, err = run(["nbdsh", "-u", vol.uri, "-c", code])
        t.equal(rc, 0, f"{case}: nbdsh write to the --no-track server acknowledged: {err}")
        t.check(b"--no-track" in srv.raw(), f"{case}: the server really ran untracked")
        t.equal(srv.stop(), 0, f"{case}: --no-track server stops cleanly on SIGTERM")
        return blocks_of([NOTRACK_WRITE]), note
    if touch == "offline":
        return set(), "offline state: " + offline_commands(vol, case)
    if touch == "offline-then-direct":
        note = "offline state: " + offline_commands(vol, case)
        return touch_direct(vol, case, undetectable), note
    if touch == "direct-then-offline":
        blocks = touch_direct(vol, case, undetectable)
        return blocks, "offline state: " + offline_commands(vol, case)
    if touch == "kill9-again":
        srv = Serve(vol)
        h = nbd_write(vol.uri, AGAIN_WRITES[:1])
        st = vol.status()
        t.check(st["intent-regions-set"] >= 1, f"{case}: intents set before the second kill")
        off, n = AGAIN_WRITES[1]
        h.pwrite(rnd.randbytes(n), off)
        t.equal(srv.kill9(), -signal.SIGKILL, f"{case}: second server killed by SIGKILL")
        del h
        return blocks_of(AGAIN_WRITES), "second start: " + st["state"]
    raise ValueError(touch)


def one_case(kind, ending, touch, work, dev):
    case = f"{kind}/{ending}/{touch}"
    vol = Vol(kind, work, dev)
    row = {"case": case, "verdict": "ERROR", "diff": "-", "cli": "-", "nbd": "-",
           "missed": "-", "note": ""}
    procs_before = len(children)
    failed_before = t.failed
    try:
        init = [VOLTRACK, "init", vol.path, *vol.meta_args]
        if kind == "file":
            init += ["--size", str(SIZE)]
        rc, out, err = run(init)
        if rc:
            raise RuntimeError(f"init: {err.strip()}")
        rc, out, err = vol.vt("checkpoint", "c1")
        if rc:
            raise RuntimeError(f"checkpoint c1: {err.strip()}")
        vol.clean_on_disk = True
        gen_c1 = vol.status()["generation"]
        vol.snapshot(REFERENCE)

        undetectable = set()
        srv = Serve(vol)
        written = do_ending(vol, srv, ending, case)
        vol.snapshot(BEFORE_TOUCH)
        t.check(vol.differing(REFERENCE),
                f"{case}: the run changed bytes (premise)")
        touched, note = do_touch(vol, touch, case, undetectable)
        touch_diff = vol.differing(BEFORE_TOUCH)
        if touch not in ("none", "offline"):
            t.check(touched and touched <= touch_diff,
                    f"{case}: the touch changed the bytes it wrote (premise): "
                    f"wrote {fmt_blocks(touched)}, changed {fmt_blocks(touch_diff)}")
        else:
            t.equal(touch_diff, set(), f"{case}: a touch that writes nothing changed nothing")

        final = Serve(vol)
        st = vol.status()
        truth = vol.differing(REFERENCE)
        t.check(truth, f"{case}: blocks differ from the reference (premise)")
        cli, cli_err = reported_cli(vol)
        nbdmap, nbd_err = reported_nbd(vol)
        row["diff"] = len(truth)
        row["note"] = ("; ".join(x for x in [note, f"final start: {st['state']}"] if x))

        if cli is None or nbdmap is None:
            # I6: the chain may be declared broken, but only if status says so.
            broken = (st["generation"] != gen_c1 or
                      st["state"] in ("history-reset", "modified-offline"))
            msg = (f"c1 unavailable (changes: {cli_err or 'ok'}; nbdinfo: {nbd_err or 'ok'}); "
                   f"status: state {st['state']}, generation "
                   f"{'new' if st['generation'] != gen_c1 else 'unchanged'}: {st['state-detail']}")
            print(f"  {case}: {msg}", flush=True)
            t.check(broken, f"{case}: {msg}: history not declared reset")
            row["verdict"] = "pass (I6 reset)" if broken else "FAIL"
            row["note"] += "; " + msg
        else:
            row["cli"], row["nbd"] = len(cli), len(nbdmap)
            missed = (truth - cli) | (truth - nbdmap)
            hard = missed - undetectable
            by_design = missed & undetectable
            row["missed"] = len(missed)
            for how, got in (("voltrack changes", cli), ("nbdinfo --map", nbdmap)):
                m = (truth - got) - undetectable
                t.check(not m, f"{case}: {how} misses {len(m)} changed block(s) since c1: "
                        f"{fmt_blocks(m)}")
            if hard:
                row["verdict"] = "FAIL"
                what = []
                if hard & touched:
                    what.append(f"touch '{touch}' blocks {fmt_blocks(hard & touched)}")
                if hard - touched:
                    what.append(f"other blocks {fmt_blocks(hard - touched)}")
                row["note"] += "; missed " + ", ".join(what)
            elif by_design:
                row["verdict"] = "undetectable by design"
                row["note"] += (f"; {len(by_design)} block(s) written directly to the "
                                f"block device while nothing ran: {fmt_blocks(by_design)}")
            else:
                row["verdict"] = "pass"
        t.equal(final.stop(), 0, f"{case}: final server stops cleanly")
    except Exception as e:  # a test error is a failure of this case, never a pass
        t.check(False, f"{case}: {type(e).__name__}: {e}")
        row["note"] = f"test error: {e}"
    finally:
        for p in children[procs_before:]:
            end_group(p)
        del children[procs_before:]
        run(["rm", "-rf", vol.dir])
    if t.failed > failed_before and row["verdict"] not in ("FAIL", "ERROR"):
        row["verdict"] = "FAIL (premise)"
    print(f"{row['case']:34} {row['verdict']:22} differing {row['diff']!s:>4}  reported "
          f"changes {row['cli']!s:>4} nbdinfo {row['nbd']!s:>4}  missed {row['missed']!s:>3}"
          f"  {row['note']}", flush=True)
    return row


def main():
    # A timeout's SIGTERM must still end the children and detach the device.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("SIGTERM received; cleaning up"))
    only = os.environ.get("VOLTRACK_PATHS_ONLY", "")    # run the cases containing this
    if os.geteuid() != 0:
        print("needs root for a loop device; paths test not run")
        sys.exit(77)
    start = time.time()
    work = tempfile.mkdtemp(prefix="voltrack-paths-")
    dev = None
    rows = []
    try:
        backing = os.path.join(work, "backing.img")
        with open(backing, "wb") as f:
            f.truncate(SIZE)
        rc, out, err = run(["losetup", "-f", "--show", backing])
        dev = out.strip() if rc == 0 else None
        t.check(dev and stat.S_ISBLK(os.stat(dev).st_mode),
                f"a loop device exists over the backing file (premise): {err.strip()}")
        kinds = ["file"] + (["blockdev"] if dev else [])
        for kind in kinds:
            if kind == "blockdev":
                rc, out, err = run(["blockdev", "--getsize64", dev])
                t.equal(out.strip(), str(SIZE), "the loop device has the volume's size")
            for ending in ENDINGS:
                for touch in TOUCHES:
                    if only not in f"{kind}/{ending}/{touch}":
                        continue
                    rows.append(one_case(kind, ending, touch, work, dev))
    finally:
        for p in children:
            end_group(p)
        if dev:
            r = subprocess.run(["losetup", "-d", dev], capture_output=True, text=True)
            t.equal(r.returncode, 0, f"loop device {dev} detached: {r.stderr}")
        subprocess.run(["rm", "-rf", work])

    fails = [r["case"] for r in rows if r["verdict"].startswith(("FAIL", "ERROR"))]
    design = [r["case"] for r in rows if r["verdict"] == "undetectable by design"]
    print(f"cases: {len(rows)}, failed: {len(fails)}, undetectable by design: {len(design)}, "
          f"{time.time() - start:.0f} s")
    for c in fails:
        print(f"  failed case: {c}")
    t.finish()


main()
