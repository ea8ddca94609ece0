#!/usr/bin/python3
"""A real file system on a voltrack volume, snapshotted under fsfreeze.

The stack, from the bottom: `voltrack serve` on a 512 MiB volume; nbdfuse
shows its live export as a regular file; a loop device over that file;
ext4 on the loop device, mounted.  Writer threads fill the file system
with files whose names say what they must contain.  While they write:

    voltrack snapshot VOL snap --freeze-cmd 'fsfreeze -f MNT' --thaw-cmd 'fsfreeze -u MNT'

What is asserted, and why it must hold:

- The writers never see an error, through the freeze and the hold.
- The freeze really happened, around the hold: the hooks log "frozen"
  and "thawed", and `fsfreeze -u` succeeds only on a frozen file system
  (a failed thaw hook fails the command).  On the image itself: ext4
  sets the journal's needs_recovery flag on disk while it is mounted
  read-write and clears it only on unmount or freeze.  The snapshot's
  superblock has it clear, while a control snapshot taken without the
  hooks, as the same writers go on, has it set (so the check can tell).
- `nbdcopy` of `snapshot/snap` gives an image that `e2fsck -fn` finds
  clean (exit 0) and that mounts read-only from a read-only loop device
  (which ext4 refuses if the journal needs recovery).
- The files in it.  A freeze waits for every write(2) under way to
  finish (each holds the file system's write reference for its whole
  length), writes everything dirty back, commits the journal, and then
  admits no change until the thaw.  So the snapshot is the file system
  at one instant between the freeze's start and the thaw, and a write
  call is wholly before or wholly after that instant.  The hooks log
  the monotonic clock (the one the writers log with) before `fsfreeze
  -f` and after `fsfreeze -u`.  Each writer works sequentially (create,
  write in chunks, sync as the file's mode says, close, next file), so:
    * every file whose fsync returned before the snapshot command
      started is there, with exactly its whole content;
    * every file whose creation returned before the freeze hook started
      is there, and holds every write that returned before it, synced
      or not (a third of the files are never synced: only the freeze
      writes them back);
    * no file created after the thaw (or after the command returned) is
      there, and no file holds a write issued after the thaw;
    * a file present holds exactly a prefix of its content that ends on
      a write boundary (possibly empty): never zeros, never stale data,
      never part of a write call;
    * per writer, the files present are numbers 0..m without a gap, all
      but the last whole; no other file exists.
  Without the freeze, ext4's ordered mode promises less (after journal
  recovery a file written but not yet synced may be shorter, or empty);
  the freeze is what makes the stricter statement true.
- The control snapshot, without the freeze, is a crash-consistent
  instant: on a read-write loop mount of its copy ext4 replays the
  journal, and `e2fsck -fn` then finds it clean.  Its files are what
  ext4's ordered mode promises after a crash there, and no more: every
  file fsync'ed before the command started is whole, every log's bytes
  fdatasync'ed before it are there if the file is, no file created after
  the command returned exists, and a file holds only its own bytes or
  zeros where they had not reached the disk, never other data.  (No
  prefix of history here: a file created after one never synced may
  survive it.)  This is the hold's cut checked against ext4's journal
  ordering: a commit block without the journal blocks acknowledged
  before it would not replay clean.
- The checkpoint `base`, taken while the fresh file system was frozen
  and copied then, is the reference for `qemu:dirty-bitmap:base` on the
  snapshot: every 64 KiB block that differs between that copy and the
  snapshot's copy must be reported dirty.
- Stability: after the live file system is changed under the snapshot
  (files overwritten in place, deleted, new ones written, fstrim), a
  second copy of `snapshot/snap` equals the first bit for bit; the live
  image demonstrably differs from it.  The live file system then
  unmounts and checks clean too.
- Cleanup in every case: no mount, loop device or process of the test
  is left; that is checked at the end.

Needs root, /dev/fuse, loop devices, nbdfuse, nbdcopy, nbdinfo and
e2fsprogs; exits 77 (skipped) only when one of these is missing.
"""
import hashlib
import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
from harness import VOLTRACK, Failures, Server  # noqa: E402

F = Failures()
SIZE = 512 << 20
GRAN = 64 << 10          # the volume's tracking granularity (the default)
CHUNK = 64 << 10         # each write(2) of a file is at most this long
WRITERS = 3
BUDGET = 40 << 20        # bytes each writer writes at most
BEFORE, AFTER = 10, 5    # files per writer written before / started after the snapshot
ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin:/usr/sbin:/sbin")}
TOOLS = ("nbdfuse", "nbdcopy", "nbdinfo", "losetup", "mount", "umount", "mkfs.ext4",
         "e2fsck", "fsfreeze", "fstrim", "cmp")


def skip(why):
    print(f"SKIP: {why}; the file-system test was NOT run", flush=True)
    sys.exit(77)


def run(*args, check=True, timeout=300):
    p = subprocess.run(list(args), capture_output=True, text=True, env=ENV, timeout=timeout)
    if check and p.returncode:
        raise RuntimeError(f"{' '.join(args)}: exit {p.returncode}\n{p.stderr}{p.stdout}")
    return p


def wait_for(cond, timeout, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()


class Critical:
    """A block a SIGTERM (the test runner's timeout) must not cut short:
    starting something and recording it for cleanup, and the cleanup
    itself.  The signal takes effect when the outermost block ends."""
    depth = 0
    pending = False

    def __enter__(self):
        Critical.depth += 1

    def __exit__(self, *exc):
        Critical.depth -= 1
        if Critical.depth == 0 and Critical.pending:
            Critical.pending = False
            raise SystemExit(1)


CRITICAL = Critical()


def on_signal(signum, _frame):
    print(f"signal {signum}: cleaning up", flush=True)
    if Critical.depth:
        Critical.pending = True
        return
    raise SystemExit(1)


class Cleanup:
    """Undo steps, run last-in first-out; each runs whatever the others do."""

    def __init__(self):
        self.steps = []

    def push(self, what, fn):
        self.steps.append((what, fn))

    def run_all(self):
        with CRITICAL:
            while self.steps:
                what, fn = self.steps.pop()
                try:
                    fn()
                except Exception as e:  # noqa: BLE001 - the rest must still run
                    F.check(False, f"cleanup: {what}: {e!r}")


def umount(path):
    """Unmount path; a lazy unmount only as a last resort, and then it fails."""
    for _ in range(50):
        if run("umount", path, check=False).returncode == 0:
            return
        if not is_mounted(path):
            return
        time.sleep(0.1)
    run("umount", "-l", path, check=False)
    raise RuntimeError(f"{path} stayed busy; unmounted lazily")


def mounts_under(top):
    with open("/proc/self/mounts") as f:
        return [line.split()[1] for line in f
                if line.split()[1] == top or line.split()[1].startswith(top + "/")]


def is_mounted(path):
    return path in mounts_under(path)


def loops():
    """{loop device: backing file} for every loop device on the machine;
    a backing file that was removed still shows, with " (deleted)"."""
    out = run("losetup", "--list", "--raw", "-n", "-O", "NAME,BACK-FILE").stdout
    pairs = (line.split(" ", 1) for line in out.splitlines() if " " in line)
    return {name: back.replace("\\x20", " ") for name, back in pairs}


def loops_of(path):
    """Loop devices backed by path (numbers are reused: never trust one)."""
    return [dev for dev, back in loops().items() if back == path]


def loops_under(top):
    return [f"{dev} ({back})" for dev, back in loops().items() if back.startswith(top + "/")]


def losetup(path, readonly=False):
    dev = run("losetup", "-f", "--show", *(["-r"] if readonly else []), path).stdout.strip()
    if not dev.startswith("/dev/loop"):
        raise RuntimeError(f"losetup gave {dev!r}")
    return dev


def detach(dev, backing):
    # Detach only if the device still is ours: numbers are reused.
    if dev in loops_of(backing):
        run("losetup", "-d", dev)
    wait_for(lambda: dev not in loops_of(backing), 10)
    if dev in loops_of(backing):
        raise RuntimeError(f"{dev} still attached to {backing}")


def end_group(proc, timeout=10):
    """End a process started in a session of its own, and its group."""
    if proc is None:
        return
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def content(name, size):
    """A file's content, derived from its name alone."""
    return hashlib.shake_256(name.encode()).digest(size)


# --- the workload ---------------------------------------------------------

class Rec:
    """One file of a writer's history, with the moments that matter
    (CLOCK_MONOTONIC, which the hooks read too)."""
    __slots__ = ("seq", "name", "size", "mode", "issued", "opened", "writes", "dsyncs",
                 "synced", "done", "longest")

    def __init__(self, seq, name, size, mode):
        self.seq, self.name, self.size, self.mode = seq, name, size, mode
        self.issued = time.monotonic()   # before open(O_CREAT)
        self.opened = None               # after open returned
        self.writes = []                 # (issued, returned, end offset) per write(2)
        self.dsyncs = []                 # (returned, end offset) per fdatasync of a log
        self.synced = None               # after the final fsync returned
        self.done = None                 # after close returned
        self.longest = 0.0               # the longest system call, seconds

    def timed(self, fn, *args):
        t = time.monotonic()
        r = fn(*args)
        self.longest = max(self.longest, time.monotonic() - t)
        return r


# How a file is written: all of it then fsync; each chunk followed by
# fdatasync (a log); or never synced (only the freeze writes it back).
MODES = ("fsync", "log", "nosync")


class Writer(threading.Thread):
    """Creates files one after the other: open, write in CHUNK pieces,
    sync as its mode says, close.  A file's name carries its writer,
    sequence number, mode, seed and size, so its content can be checked
    from the name alone."""

    def __init__(self, idx, root, stop):
        super().__init__(name=f"writer-{idx}", daemon=True)
        self.idx, self.dir, self.stop = idx, os.path.join(root, f"w{idx}"), stop
        self.log = []
        self.errors = []
        os.mkdir(self.dir)

    def done(self, since=0.0):
        return sum(1 for r in self.log if r.done is not None and r.issued > since)

    def run(self):
        rng = random.Random(1000 + self.idx)
        written = 0
        try:
            while not self.stop.is_set():
                if written >= BUDGET:
                    self.stop.wait()
                    break
                mode = rng.choices(MODES, (4, 4, 2))[0]
                size = (rng.randrange(1, 16 << 10) if rng.random() < 0.3
                        else rng.randrange(16 << 10, 1 << 20))
                seq = len(self.log)
                name = f"w{self.idx}-{seq:05d}-{mode}-{rng.getrandbits(32):08x}-{size}"
                self.one_file(Rec(seq, name, size, mode))
                written += size
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.errors.append(f"{self.name}: {e!r}")

    def one_file(self, rec):
        data = content(rec.name, rec.size)
        self.log.append(rec)
        fd = rec.timed(os.open, os.path.join(self.dir, rec.name),
                       os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        rec.opened = time.monotonic()
        try:
            for off in range(0, rec.size, CHUNK):
                piece = data[off:off + CHUNK]
                t = time.monotonic()
                n = rec.timed(os.write, fd, piece)
                rec.writes.append((t, time.monotonic(), off + n))
                if n != len(piece):
                    raise OSError(f"short write of {rec.name}: {n} bytes at {off}")
                if rec.mode == "log":
                    rec.timed(os.fdatasync, fd)
                    rec.dsyncs.append((time.monotonic(), off + n))
            if rec.mode != "nosync":
                rec.timed(os.fsync, fd)
                rec.synced = time.monotonic()
        finally:
            rec.timed(os.close, fd)
        rec.done = time.monotonic()


def stop_writers(writers, stop):
    stop.set()
    for w in writers:
        w.join(60)
        if w.is_alive():
            raise RuntimeError(f"{w.name} did not stop")


# --- checks of the snapshot -------------------------------------------------

def ext4_superblock(raw):
    """(magic ok, needs_recovery) from the first 2 KiB of an ext4 image."""
    sb = raw[1024:2048]
    magic = int.from_bytes(sb[0x38:0x3A], "little")
    incompat = int.from_bytes(sb[0x60:0x64], "little")
    return magic == 0xEF53, bool(incompat & 0x4)


def read_head(path):
    with open(path, "rb") as f:
        return f.read(4096)


def export_head(srv, name):
    h = srv.connect(name=name)
    try:
        return h.pread(4096, 0)
    finally:
        h.shutdown()


def check_files(root, writers, t_start, t_freeze, t_thaw, t_end):
    """The snapshot's files against the writers' logs (see the docstring).

    t_start/t_end: the snapshot command started/returned; t_freeze: the
    freeze hook started, before `fsfreeze -f`; t_thaw: `fsfreeze -u` had
    returned.  The snapshot's instant lies between t_freeze and t_thaw,
    and a write(2) is wholly before or wholly after it."""
    totals = {"whole": 0, "partial": 0, "absent": 0, "unsynced-whole": 0}
    for w in writers:
        wdir = os.path.join(root, f"w{w.idx}")
        if not F.check(os.path.isdir(wdir), f"snapshot holds directory w{w.idx}"):
            continue
        names = set(os.listdir(wdir))
        by_name = {r.name: r for r in w.log}
        strangers = sorted(names - set(by_name))
        F.check(not strangers, f"w{w.idx}: no file the writer did not create ({strangers[:5]})")
        present = []
        for r in w.log:
            what = f"w{w.idx}: {r.name}"
            synced_before = r.synced is not None and r.synced < t_start
            if r.name not in names:
                F.check(not synced_before, f"{what} was fsync'ed before the snapshot "
                        "started, so it must be in the snapshot: it is missing")
                F.check(r.opened is None or r.opened >= t_freeze, f"{what} was created "
                        "before the freeze began, so it must be in the snapshot: it is missing")
                totals["absent"] += 1
                continue
            F.check(r.issued <= t_thaw, f"{what} was created after the thaw, so it must "
                    "not be in the snapshot: it is there")
            F.check(r.issued <= t_end, f"{what} was created after the snapshot returned, "
                    "so it must not be in the snapshot: it is there")
            with open(os.path.join(wdir, r.name), "rb") as f:
                got = f.read()
            want = content(r.name, r.size)
            prefix = want.startswith(got)
            if synced_before:
                F.check(got == want, f"{what} was fsync'ed before the snapshot started, so "
                        f"it must be whole: {len(got)} of {r.size} bytes, "
                        f"{'a prefix' if prefix else 'WRONG content'}")
            # Every write that returned before the freeze is there, none
            # issued after the thaw, and nothing but whole write calls.
            lo = max((end for _, ret, end in r.writes if ret < t_freeze), default=0)
            hi = max((end for iss, _, end in r.writes if iss <= t_thaw), default=0)
            ends = {0} | {end for _, _, end in r.writes}
            F.check(prefix and lo <= len(got) <= hi and len(got) in ends,
                    f"{what} must hold exactly the write(2) calls before the snapshot's "
                    f"instant: {len(got)} bytes, {'a prefix' if prefix else 'NOT a prefix'} "
                    f"of its content, at least {lo} (returned before the freeze), at most "
                    f"{hi} (issued before the thaw), on a write boundary")
            whole = got == want
            totals["whole" if whole else "partial"] += 1
            if whole and r.mode == "nosync" and r.done < t_start:
                totals["unsynced-whole"] += 1
            present.append((r.seq, whole))
        seqs = [s for s, _ in present]
        F.check(seqs == list(range(len(seqs))),
                f"w{w.idx}: the files present are a prefix of the writer's history "
                f"(numbers {seqs[:3]}...{seqs[-3:]})")
        F.check(all(whole for _, whole in present[:-1]),
                f"w{w.idx}: only the last file present may be partial")
    return totals


def check_crash_files(root, writers, t_start, t_end):
    """A snapshot taken without the freeze, after ext4 replayed its
    journal: what ordered mode promises after a crash at an instant
    between t_start and t_end, and no more (a file created after an
    earlier one that was not synced may survive it, so there is no
    prefix of history; an unsynced tail may read as zeros)."""
    totals = {"whole": 0, "short-or-zeros": 0, "absent": 0}
    for w in writers:
        wdir = os.path.join(root, f"w{w.idx}")
        if not F.check(os.path.isdir(wdir), f"crash-consistent snapshot holds w{w.idx}"):
            continue
        names = set(os.listdir(wdir))
        by_name = {r.name: r for r in w.log}
        strangers = sorted(names - set(by_name))
        F.check(not strangers, f"w{w.idx}: no file the writer did not create, after a "
                f"crash ({strangers[:5]})")
        for r in w.log:
            what = f"crash-consistent snapshot, w{w.idx}: {r.name}"
            if r.name not in names:
                F.check(r.synced is None or r.synced >= t_start, f"{what} was fsync'ed "
                        "before the snapshot started, so it must be there: it is missing")
                totals["absent"] += 1
                continue
            F.check(r.issued <= t_end, f"{what} was created after the snapshot returned, "
                    "so it must not be there: it is")
            with open(os.path.join(wdir, r.name), "rb") as f:
                got = f.read()
            want = content(r.name, r.size)
            if r.synced is not None and r.synced < t_start:
                F.check(got == want, f"{what} was fsync'ed before the snapshot started, so "
                        f"it must be whole: {len(got)} of {r.size} bytes")
            durable = max((end for t, end in r.dsyncs if t < t_start), default=0)
            F.check(len(got) >= durable and got[:durable] == want[:durable],
                    f"{what}: the {durable} bytes fdatasync'ed before the snapshot started "
                    f"must be there ({len(got)} bytes are)")
            # Ordered mode: never another file's data, only this file's
            # bytes or zeros where they had not reached the disk.
            foreign = len(got) > r.size or any(
                got[o:o + 4096] != want[o:o + 4096] and
                any(g != x and g != 0 for g, x in zip(got[o:o + 4096], want[o:o + 4096]))
                for o in range(0, len(got), 4096))
            F.check(not foreign, f"{what} holds only its own bytes, or zeros "
                    f"({len(got)} of {r.size} bytes)")
            totals["whole" if got == want else "short-or-zeros"] += 1
    return totals


def dirty_blocks(uri, ctx):
    out = run("nbdinfo", "--json", f"--map={ctx}", uri).stdout
    blocks = set()
    for e in json.loads(out):
        if e["type"] & 1:
            blocks.update(range(e["offset"] // GRAN, (e["offset"] + e["length"] + GRAN - 1)
                                // GRAN))
    return blocks


def differing_blocks(path_a, path_b):
    out = set()
    with open(path_a, "rb") as a, open(path_b, "rb") as b:
        for blk in range(SIZE // GRAN):
            if a.read(GRAN) != b.read(GRAN):
                out.add(blk)
    return out


# --- the test -----------------------------------------------------------------

def prerequisites():
    if os.geteuid() != 0:
        skip("needs root (loop devices, mount, fsfreeze)")
    missing = [t for t in TOOLS if not shutil.which(t, path=ENV["PATH"])]
    if missing:
        skip(f"missing tools: {' '.join(missing)}")
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except OSError as e:
        skip(f"cannot open /dev/fuse ({e})")
    p = run("losetup", "-f", check=False)
    if p.returncode or not p.stdout.startswith("/dev/loop"):
        skip(f"no free loop device ({p.stderr.strip()})")


def main():
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    prerequisites()
    undo = Cleanup()
    state = {"leftovers": []}
    try:
        body(undo, state)
    finally:
        undo.run_all()
        for what in state["leftovers"]:
            what()
    F.finish()


def body(undo, state):
    with CRITICAL:
        work = tempfile.mkdtemp(prefix="voltrack-fs-")
        undo.push("remove the work directory", lambda: run("rm", "-rf", work))
    with CRITICAL:
        srv = Server(size=SIZE)
        def stop_server():
            if srv.alive():
                F.equal(srv.stop(), 0, "the server stops cleanly at the end")
            if F.failed:
                print(f"server log (tail):\n{srv.log_text()[-3000:]}", flush=True)
            srv.cleanup()
        undo.push("stop the server", stop_server)
        srv.start()
    fuse_mnt, fs_mnt, snap_mnt = (os.path.join(work, d) for d in ("fuse", "fs", "snapmnt"))
    for d in (fuse_mnt, fs_mnt, snap_mnt):
        os.mkdir(d)
    fuse_file = os.path.join(fuse_mnt, "nbd")
    hooklog = os.path.join(work, "hooks.log")
    copy1, copy2 = os.path.join(work, "snap1.img"), os.path.join(work, "snap2.img")
    base_img, live_img = os.path.join(work, "base.img"), os.path.join(work, "live.img")
    raw_img = os.path.join(work, "raw.img")
    snap_uri = f"nbd+unix:///snapshot/snap?socket={srv.sock}"
    fuse = None

    def leftovers():
        F.equal(mounts_under(work), [], "no mount of the test is left")
        F.equal(loops_under(work), [], "no loop device of the test is left")
        F.check(fuse is None or fuse.poll() is not None, "nbdfuse has exited")
        F.check(not srv.alive(), "the server has exited")
    state["leftovers"].append(leftovers)

    # nbdfuse: the live export as a file.  It stays in the foreground; the
    # pid file says when it is ready.  Unmounting ends it.
    pidfile = os.path.join(work, "nbdfuse.pid")
    with CRITICAL:
        fuse_log = open(os.path.join(work, "nbdfuse.log"), "wb")
        fuse = subprocess.Popen(["nbdfuse", "-P", pidfile, fuse_file, srv.uri], env=ENV,
                                stdout=subprocess.DEVNULL, stderr=fuse_log,
                                start_new_session=True)
        undo.push("end nbdfuse", lambda: (is_mounted(fuse_mnt) and umount(fuse_mnt),
                                          wait_for(lambda: fuse.poll() is not None, 10),
                                          end_group(fuse), fuse_log.close()))
    if not wait_for(lambda: os.path.exists(pidfile) or fuse.poll() is not None, 30) \
            or fuse.poll() is not None:
        raise RuntimeError(f"nbdfuse did not mount (exit {fuse.poll()}): "
                           f"{open(fuse_log.name, 'rb').read().decode(errors='replace')}")
    F.equal(os.path.getsize(fuse_file), SIZE, "nbdfuse exposes the live export as a file")

    with CRITICAL:
        dev = losetup(fuse_file)
        undo.push(f"detach {dev}", lambda: detach(dev, fuse_file))
    print(f"voltrack {SIZE >> 20} MiB <- nbdfuse {fuse_file} <- {dev} <- ext4 {fs_mnt}",
          flush=True)
    # Inode tables and journal written now, so that no kernel thread
    # writes them later behind the checkpoint's back.
    run("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", dev)
    stop = threading.Event()
    writers = []
    with CRITICAL:
        run("mount", "-t", "ext4", dev, fs_mnt)

        def unmount_live():
            run("fsfreeze", "-u", fs_mnt, check=False)  # in case a thaw never came
            stop_writers(writers, stop)
            if is_mounted(fs_mnt):
                umount(fs_mnt)
        undo.push("unmount the live file system", unmount_live)

    # The checkpoint the snapshot's bitmap is checked against, and the
    # image at that instant, copied while nothing can change it.
    run("fsfreeze", "-f", fs_mnt)
    try:
        vt("checkpoint", srv.volume, "base")
        run("nbdcopy", srv.uri, base_img)
    finally:
        run("fsfreeze", "-u", fs_mnt)

    writers.extend(Writer(i, fs_mnt, stop) for i in range(WRITERS))
    for w in writers:
        w.start()
    F.check(wait_for(lambda: all(w.done() >= BEFORE for w in writers) or
                     any(w.errors for w in writers), 300),
            f"every writer wrote {BEFORE} files before the snapshot")

    # The snapshot.  The hooks log what happened and when (the monotonic
    # clock, as the writers' logs): the freeze hook before it freezes, the
    # thaw hook after it thawed.  `fsfreeze -u` of a file system that is
    # not frozen fails, and then so does the command.
    q = shlex.quote
    now = f"{q(sys.executable)} -c 'import sys, time; print(sys.argv[1], time.monotonic())'"
    t_start = time.monotonic()
    p = vt("snapshot", srv.volume, "snap", "--hold-timeout", "60", "--json",
           "--freeze-cmd", f"{now} freeze-start >> {q(hooklog)} && fsfreeze -f {q(fs_mnt)} "
           f"&& echo frozen >> {q(hooklog)}",
           "--thaw-cmd", f"fsfreeze -u {q(fs_mnt)} && {now} thawed >> {q(hooklog)}",
           check=False)
    t_end = time.monotonic()
    F.equal(p.returncode, 0, f"snapshot with freeze and thaw hooks succeeds ({p.stderr.strip()})")
    if p.returncode:
        return
    print(f"snapshot: {p.stdout.strip()} (command {1000 * (t_end - t_start):.0f} ms)",
          flush=True)
    hooks = [line.split() for line in open(hooklog)]
    if not F.equal([h[0] for h in hooks], ["freeze-start", "frozen", "thawed"],
                   "the freeze hook froze, the thaw hook thawed a frozen file system"):
        return
    t_freeze, t_thaw = float(hooks[0][1]), float(hooks[2][1])
    F.check(t_start < t_freeze < t_thaw < t_end, "the hooks ran inside the command")

    # First copy while the writers go on (copy-on-write under the reader).
    run("nbdcopy", snap_uri, copy1)

    # Control: a snapshot with no freeze, as the writers go on, has the
    # journal's needs_recovery flag set; the frozen one has it clear.
    F.check(wait_for(lambda: all(w.done(t_end) >= 1 for w in writers) or
                     any(w.errors for w in writers), 300),
            "every writer wrote a file after the snapshot")
    t_raw_start = time.monotonic()
    p = vt("snapshot", srv.volume, "raw", "--json")
    t_raw_end = time.monotonic()
    print(f"snapshot without the freeze: {p.stdout.strip()}", flush=True)
    run("nbdcopy", f"nbd+unix:///snapshot/raw?socket={srv.sock}", raw_img)
    ok, raw_dirty = ext4_superblock(read_head(raw_img))
    F.check(ok and raw_dirty, "a snapshot without the freeze shows ext4 as mounted "
            "(needs_recovery set): the check below can tell")
    vt("delete", srv.volume, "raw")
    ok, snap_dirty = ext4_superblock(read_head(copy1))
    F.check(ok and not snap_dirty, "the frozen snapshot's journal needs no recovery "
            "(the freeze took effect at the snapshot's instant)")

    F.check(wait_for(lambda: all(w.done(t_end) >= AFTER for w in writers) or
                     any(w.errors for w in writers), 300),
            f"every writer wrote {AFTER} files after the snapshot")
    stop_writers(writers, stop)
    errors = [e for w in writers for e in w.errors]
    F.equal(errors, [], "no writer saw an error, through the freeze and the hold")
    window = [r for w in writers for r in w.log if r.issued <= t_end and r.done >= t_start]
    longest = max((r.longest for r in window), default=0)
    before = sum(1 for w in writers for r in w.log if r.done < t_start)
    after = sum(1 for w in writers for r in w.log if r.issued > t_end)
    print(f"writers: {sum(len(w.log) for w in writers)} files, {before} written before the "
          f"snapshot, {len(window)} in flight across it (longest system call "
          f"{1000 * longest:.0f} ms), {after} started after it", flush=True)

    # The copy is a clean ext4 ...
    p = run("e2fsck", "-fn", copy1, check=False)
    F.equal(p.returncode, 0, f"e2fsck -fn on the snapshot's copy is clean\n{p.stdout}{p.stderr}")
    # ... that mounts read-only from a read-only device (no journal replay) ...
    with CRITICAL:
        rdev = losetup(copy1, readonly=True)
        undo.push(f"detach {rdev}", lambda: detach(rdev, copy1))
    with CRITICAL:
        p = run("mount", "-t", "ext4", "-o", "ro", rdev, snap_mnt, check=False)
        if p.returncode == 0:
            undo.push("unmount the snapshot's copy",
                      lambda: is_mounted(snap_mnt) and umount(snap_mnt))
    if F.equal(p.returncode, 0, f"the copy mounts read-only from a read-only loop device "
               f"({p.stderr.strip()})"):
        # ... with exactly the files the writers' logs allow.
        totals = check_files(snap_mnt, writers, t_start, t_freeze, t_thaw, t_end)
        print(f"snapshot files: {totals}", flush=True)
        F.check(totals["unsynced-whole"] > 0, "some file closed before the snapshot without "
                "a sync is whole in it (the freeze wrote it back)")
        umount(snap_mnt)
    detach(rdev, copy1)

    # The snapshot without the freeze is crash-consistent: ext4 replays
    # its journal on a read-write mount of its copy and is then clean,
    # with the files ordered mode promises.
    with CRITICAL:
        wdev = losetup(raw_img)
        undo.push(f"detach {wdev}", lambda: detach(wdev, raw_img))
    with CRITICAL:
        p = run("mount", "-t", "ext4", wdev, snap_mnt, check=False)
        if p.returncode == 0:
            undo.push("unmount the replayed copy",
                      lambda: is_mounted(snap_mnt) and umount(snap_mnt))
    if F.equal(p.returncode, 0, f"the copy of the snapshot without the freeze mounts, "
               f"replaying its journal ({p.stderr.strip()})"):
        totals = check_crash_files(snap_mnt, writers, t_raw_start, t_raw_end)
        print(f"crash-consistent snapshot files: {totals}", flush=True)
        umount(snap_mnt)
    detach(wdev, raw_img)
    p = run("e2fsck", "-fn", raw_img, check=False)
    F.equal(p.returncode, 0, f"e2fsck -fn after the journal replay is clean\n{p.stdout}"
            f"{p.stderr}")

    # The snapshot's bitmap against the reference copy taken at base.
    differ = differing_blocks(base_img, copy1)
    reported = dirty_blocks(snap_uri, "qemu:dirty-bitmap:base")
    F.check(len(differ) > 100, f"the writers changed the volume ({len(differ)} blocks)")
    missed = sorted(differ - reported)
    F.check(not missed, f"qemu:dirty-bitmap:base on snapshot/snap reports every block that "
            f"changed between base and snap ({len(missed)} missed: {missed[:10]})")
    print(f"dirty bitmap: {len(differ)} blocks changed, {len(reported)} reported "
          f"({len(reported - differ)} reported but unchanged)", flush=True)

    # Change the live file system under the snapshot: overwrite in place,
    # delete, write anew, trim what was freed.
    durable = [r for w in writers for r in w.log if r.done is not None]
    for i, r in enumerate(durable):
        path = os.path.join(fs_mnt, r.name.split("-")[0], r.name)
        if i % 3 == 0:
            os.unlink(path)
        elif i % 3 == 1:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.pwrite(fd, content("over" + r.name, r.size), 0)
                os.fsync(fd)
            finally:
                os.close(fd)
    os.mkdir(os.path.join(fs_mnt, "later"))
    for k in range(24):
        with open(os.path.join(fs_mnt, "later", f"f{k}"), "wb") as f:
            f.write(content(f"later{k}", 1 << 20))
    os.sync()
    p = run("fstrim", "-v", fs_mnt, check=False)
    print(f"fstrim: exit {p.returncode} {p.stdout.strip()}{p.stderr.strip()}", flush=True)
    os.sync()

    run("nbdcopy", srv.uri, live_img)
    changed = differing_blocks(copy1, live_img)
    F.check(len(changed) > 100, f"the live volume now differs from the snapshot "
            f"({len(changed)} blocks)")
    run("nbdcopy", snap_uri, copy2)
    p = run("cmp", copy1, copy2, check=False)
    F.equal(p.returncode, 0, f"a second copy of snapshot/snap equals the first bit for bit "
            f"{p.stdout.strip()}")

    # The live file system, unmounted, is sound as well.
    umount(fs_mnt)
    p = run("e2fsck", "-fn", dev, check=False)
    F.equal(p.returncode, 0, f"e2fsck -fn on the live volume after all this is clean\n"
            f"{p.stdout}{p.stderr}")


def vt(*args, check=True):
    p = subprocess.run([VOLTRACK, *args], capture_output=True, text=True, env=ENV)
    if check and p.returncode:
        raise RuntimeError(f"voltrack {' '.join(args)}: {p.returncode}\n{p.stderr}{p.stdout}")
    return p


main()
