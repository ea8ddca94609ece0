#!/usr/bin/python3
"""`voltrack restore` to block devices, and a backup read through one.

The targets are loop devices over files in the test's own directory,
each filled beforehand with stale non-zero bytes, so that a restore that
skips a hole or a zero range (as it may for a fresh sparse file) leaves
stale bytes behind and is caught.  Every check is against the test's own
references: a sparse copy of the volume file taken at each backup's
instant (compared with cmp to the device and to its backing file), the
stale bytes the test wrote, the backing file's allocation, and the
kernel's count of sectors read from the device.

Cases: a full and an incremental backup restored over stale data
(exact; the backing file sparse again where the backup has zeroes);
--verify reads the device itself, not the page cache the restore filled;
a device smaller than the backup, a read-only one, and one held open
exclusively (as a mounted one is) are refused with one line before
anything is written; a larger one keeps its tail;
serve-backup's export through nbdfuse and a read-only loop device reads
as the reference; a device whose every request fails with EIO (nbdkit's
error filter under nbdfuse) fails the restore in one line.

Needs root and loop devices (exits 77 without them); the last two cases
also need /dev/fuse and nbdfuse.
"""
import contextlib
import ctypes
import errno
import functools
import hashlib
import json
import mmap
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from harness import VOLTRACK, Failures, Server

F = Failures()
SIZE = 16 << 20
MIB = 1 << 20
BLOCK = 4096
ENV = dict(os.environ, PATH="/usr/bin:/bin:/usr/sbin:/sbin")


def run(*args, check=True):
    p = subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=120)
    if check and p.returncode:
        raise RuntimeError(f"{' '.join(args)} failed ({p.returncode}): {p.stdout}{p.stderr}")
    return p


def qemu_io(uri, *cmds):
    args = ["qemu-io", "-f", "raw"]
    for c in cmds:
        args += ["-c", c]
    p = run(*args, uri)
    # qemu-io prints what it did; an acknowledged request says so.
    if p.stdout.count("wrote") + p.stdout.count("discard ") != len(cmds):
        raise RuntimeError(f"qemu-io {cmds}: {p.stdout}{p.stderr}")


@functools.lru_cache(maxsize=None)
def stale(n):
    """Non-zero in every byte, and different in every 4 KiB block."""
    return b"".join(hashlib.sha256(b"stale %d" % b).digest().replace(b"\0", b"\xff") *
                    (BLOCK // 32) for b in range(n // BLOCK))


def zero_blocks(data):
    return {i for i in range(len(data) // BLOCK)
            if not any(data[i * BLOCK:(i + 1) * BLOCK])}


def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class Loops:
    """Loop devices of this test; every one is detached in the end."""

    def __init__(self, work):
        self.work = work
        self.devs = {}      # device -> backing file
        self.n = 0

    def attach(self, size, readonly=False, fill=True, path=None):
        if path is None:
            self.n += 1
            path = os.path.join(self.work, f"dev{self.n}.img")
            with open(path, "wb") as f:
                f.write(stale(size) if fill else b"")
                f.truncate(size)
        dev = run("losetup", "-f", "--show", *(["-r"] if readonly else []), path).stdout.strip()
        if not dev.startswith("/dev/loop"):
            raise RuntimeError(f"losetup gave {dev!r}")
        self.devs[dev] = path
        return dev, path

    def ours(self, dev):
        out = run("losetup", "--list", "--raw", "-n", "-O", "NAME,BACK-FILE").stdout
        return any(line.split(" ", 1) == [dev, self.devs[dev]] for line in out.splitlines())

    def detach(self, dev):
        # Numbers are reused: detach only what still is ours.
        if self.ours(dev):
            run("losetup", "-d", dev, check=False)
        for _ in range(100):
            if not self.ours(dev):
                break
            time.sleep(0.05)
        else:
            F.check(False, f"{dev} could not be detached")
        del self.devs[dev]

    def detach_all(self):
        for dev in list(self.devs):
            self.detach(dev)


def read_dev(dev, off=0, n=None):
    fd = os.open(dev, os.O_RDONLY)
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
        n = size - off if n is None else n
        out = bytearray()
        while len(out) < n:
            b = os.pread(fd, n - len(out), off + len(out))
            if not b:
                break
            out += b
        return bytes(out)
    finally:
        os.close(fd)


def sectors_read(dev):
    with open(f"/sys/block/{os.path.basename(dev)}/stat") as f:
        return int(f.read().split()[2])


def can_punch(directory):
    """Whether the file system under directory punches holes."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
    path = os.path.join(directory, "punch-probe")
    with open(path, "wb") as f:
        f.write(b"\xff" * MIB)
        f.flush()
        os.fsync(f.fileno())
        ok = libc.fallocate(f.fileno(), 3, 0, MIB) == 0   # PUNCH_HOLE | KEEP_SIZE
    os.unlink(path)
    return ok


def restore(repo, bid, dev, *extra):
    return subprocess.run([VOLTRACK, "restore", repo, bid, dev, *extra], capture_output=True,
                          text=True, env=ENV, timeout=120)


def one_line(p):
    return p.stderr.count("\n") == 1 and p.stderr.startswith("voltrack")


class Backups:
    """A served volume with a full and an incremental backup of it."""

    def __init__(self, work):
        self.srv = Server(size=SIZE)
        self.srv.start()
        self.repo = os.path.join(work, "repo")
        self.refs = {}
        uri = self.srv.uri
        # Data chunks that hold zero runs, whole-hole chunks, the last chunk.
        qemu_io(uri, "write -P 1 0 3M", "write -P 2 5251072 64k", "write -P 3 12M 1M",
                "write -P 4 15732736 4k")
        self.full = self.backup(work, "full")
        # A data chunk that becomes a hole, zero ranges inside data, new data.
        qemu_io(uri, "discard 12M 1M", "write -P 5 1052672 8k", "write -P 6 9M 2M",
                "discard 0 64k")
        self.incr = self.backup(work, "incremental")

    def backup(self, work, want):
        p = run(VOLTRACK, "backup", self.srv.volume, self.repo, "--chunk-size", "1M", "--json")
        out = json.loads(p.stdout)
        F.equal(out["type"], want, "backup type")
        ref = os.path.join(work, f"ref-{out['id']}.img")
        run("cp", "--sparse=always", self.srv.volume, ref)
        self.refs[out["id"]] = ref
        with open(os.path.join(self.repo, "backups", out["id"])) as f:
            lines = f.read().split("\n")
        F.check(any(ln.startswith("z ") for ln in lines) and
                any(ln.startswith("c ") for ln in lines),
                f"premise: backup {out['id']} has holes and data")
        return out["id"]


def over_stale(b, loops, bid, verify=False):
    """Restore over stale data: the device equals the reference."""
    what = f"restore of {bid} over stale data" + (" --verify" if verify else "")
    ref = open(b.refs[bid], "rb").read()
    zeros = zero_blocks(ref)
    dev, path = loops.attach(SIZE)
    before = read_dev(dev)
    # Premises: the backup has zero blocks and data, and the device holds
    # non-zero stale bytes in every zero block of the backup.
    F.check(0 < len(zeros) < SIZE // BLOCK, f"{what}: premise: the reference has holes and data")
    F.equal(len(zeros & zero_blocks(before)), 0,
            f"{what}: premise: stale data is non-zero where the backup is zero")
    F.check(os.stat(path).st_blocks * 512 >= SIZE, f"{what}: premise: the backing file is full")
    read0 = sectors_read(dev)
    p = restore(b.repo, bid, dev, *(["--verify"] if verify else []))
    read = (sectors_read(dev) - read0) * 512
    if F.equal(p.returncode, 0, f"{what}: succeeds: {p.stderr}"):
        F.equal(run("cmp", dev, b.refs[bid], check=False).returncode, 0,
                f"{what}: the device equals the copy taken at the backup")
        F.equal(run("cmp", path, b.refs[bid], check=False).returncode, 0,
                f"{what}: so does the loop device's backing file")
        # Zero ranges were zeroed by a request the device may unmap, not
        # written as zeroes: the backing file is sparse again (where its
        # file system can punch holes, which the loop device needs).
        data = SIZE - len(zeros) * BLOCK
        alloc = os.stat(path).st_blocks * 512
        if can_punch(os.path.dirname(path)):
            F.check(alloc <= data + 256 * 1024,
                    f"{what}: backing file allocated {alloc} bytes, data {data}")
        else:
            print(f"{what}: no hole punching here: allocation not checked")
        if verify:
            F.check("verified" in p.stdout, f"{what}: says it verified: {p.stdout!r}")
            F.check(read >= SIZE, f"{what}: read the whole device back ({read} bytes)")
    loops.detach(dev)


def refused(b, loops, what, size, want, readonly=False, hold=False):
    """A refusal in one line, and the device as it was."""
    dev, path = loops.attach(size, readonly=readonly)
    held = os.open(dev, os.O_RDONLY | os.O_EXCL) if hold else None
    try:
        before = digest(path)
        p = restore(b.repo, b.incr, dev)
        print(f"   {p.stderr.strip()}")
        F.check(p.returncode == 1 and want in p.stderr and dev in p.stderr and one_line(p),
                f"{what}: refused in one line naming the device ({want!r}): "
                f"{p.returncode} {p.stderr!r}")
        F.equal(digest(path), before, f"{what}: nothing was written")
        F.check(read_dev(dev) == open(path, "rb").read(), f"{what}: the device reads as before")
    finally:
        if held is not None:
            os.close(held)
    loops.detach(dev)


def larger(b, loops):
    """A larger device: the backup's size is restored, the tail is kept."""
    what = "restore to a larger device"
    extra = 4 * MIB
    dev, path = loops.attach(SIZE + extra)
    tail = read_dev(dev, SIZE)
    F.equal(len(tail), extra, f"{what}: premise: the device is larger")
    p = restore(b.repo, b.full, dev, "--verify")
    if F.equal(p.returncode, 0, f"{what}: succeeds: {p.stderr}"):
        # F.check, not F.equal: a failure must not print megabytes.
        F.check(read_dev(dev, 0, SIZE) == open(b.refs[b.full], "rb").read(),
                f"{what}: the backup's size equals the reference")
        F.check(read_dev(dev, SIZE) == tail, f"{what}: the tail beyond it is left as it was")
    loops.detach(dev)


def have_fuse():
    return bool(shutil.which("nbdfuse")) and os.path.exists("/dev/fuse")


def wait_for(cond, seconds):
    deadline = time.time() + seconds
    while not cond() and time.time() < deadline:
        time.sleep(0.05)
    return cond()


def end(proc):
    """End a process of this test started in a session of its own."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait()


@contextlib.contextmanager
def fuse_file(work, name, uri):
    """An NBD export as a file (nbdfuse), unmounted in the end."""
    mnt = os.path.join(work, name)
    os.mkdir(mnt)
    pidfile = os.path.join(work, name + ".pid")
    fuse = subprocess.Popen(["nbdfuse", "-P", pidfile, os.path.join(mnt, "nbd"), uri], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        if not wait_for(lambda: os.path.exists(pidfile) or fuse.poll() is not None, 30) \
                or fuse.poll() is not None:
            raise RuntimeError(f"nbdfuse did not mount {uri} (exit {fuse.poll()})")
        yield os.path.join(mnt, "nbd")
    finally:
        if run("umount", mnt, check=False).returncode:
            run("umount", "-l", mnt, check=False)
        end(fuse)


def serve_backup(b, loops, work):
    """serve-backup -> nbdfuse -> read-only loop device -> the reference."""
    sock = os.path.join(work, "sb.sock")
    sb = subprocess.Popen([VOLTRACK, "serve-backup", b.repo, b.incr, "--socket", sock],
                          stderr=subprocess.PIPE, text=True, env=ENV, start_new_session=True)
    try:
        line = sb.stderr.readline()
        F.check("serving backup" in line, f"serve-backup starts: {line!r}")
        with fuse_file(work, "sbfuse", f"nbd+unix:///?socket={sock}") as path:
            dev, _ = loops.attach(SIZE, readonly=True, path=path)
            try:
                F.equal(run("cmp", dev, b.refs[b.incr], check=False).returncode, 0,
                        "serve-backup through nbdfuse and a read-only loop device: the reference")
            finally:
                loops.detach(dev)
    finally:
        sb.terminate()
        F.equal(sb.wait(timeout=30), 0, "serve-backup stops cleanly")


def device_errors(b, loops, work):
    """A device whose every request fails with EIO: the restore fails, in
    one line naming the device.  nbdkit's error filter over a file, seen
    through nbdfuse and a loop device; the errors start only once the
    device is attached (a trigger file)."""
    what = "a device that fails with EIO"
    backing = os.path.join(work, "eio.img")
    with open(backing, "wb") as f:
        f.write(stale(SIZE))
    sock, pidfile, trigger = (os.path.join(work, n) for n in ("eio.sock", "eio.pid", "eio.on"))
    kit = subprocess.Popen(["nbdkit", "-f", "-U", sock, "-P", pidfile, "--filter=error", "file",
                            backing, "error=EIO", "error-rate=100%", f"error-file={trigger}"],
                           env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    try:
        if not wait_for(lambda: os.path.exists(pidfile) or kit.poll() is not None, 30) \
                or kit.poll() is not None:
            raise RuntimeError(f"nbdkit did not start (exit {kit.poll()})")
        with fuse_file(work, "eiofuse", f"nbd+unix:///?socket={sock}") as path:
            dev, _ = loops.attach(SIZE, path=path)
            try:
                open(trigger, "w").close()
                fd = os.open(dev, os.O_RDONLY | os.O_DIRECT)
                try:
                    os.preadv(fd, [mmap.mmap(-1, BLOCK)], 0)    # page-aligned
                    F.check(False, f"{what}: premise: a direct read fails")
                except OSError as e:
                    F.equal(e.errno, errno.EIO, f"{what}: premise: a direct read fails")
                finally:
                    os.close(fd)
                p = restore(b.repo, b.incr, dev)
                print(f"   {p.stderr.strip()}")
                F.check(p.returncode == 1 and dev in p.stderr and one_line(p) and
                        "Input/output error" in p.stderr,
                        f"{what}: refused in one line naming the device: {p.stderr!r}")
            finally:
                if os.path.exists(trigger):
                    os.unlink(trigger)
                loops.detach(dev)
    finally:
        end(kit)


def main():
    work = tempfile.mkdtemp(prefix="voltrack-rblk-")
    loops = Loops(work)
    b = None
    try:
        try:
            loops.detach(loops.attach(MIB)[0])
        except (OSError, RuntimeError) as e:
            print(f"cannot create a loop device ({e}); restore to a block device not tested")
            sys.exit(77)
        t0 = time.time()
        b = Backups(work)
        steps = [
            ("full backup over stale data", lambda: over_stale(b, loops, b.full)),
            ("incremental backup over stale data, --verify",
             lambda: over_stale(b, loops, b.incr, verify=True)),
            ("a smaller device", lambda: refused(b, loops, "a smaller device", SIZE - MIB,
                                                 "smaller")),
            ("a read-only device", lambda: refused(b, loops, "a read-only device", SIZE,
                                                   "read-only", readonly=True)),
            ("a device held exclusively",
             lambda: refused(b, loops, "a device held exclusively", SIZE, "in use", hold=True)),
            ("a larger device", lambda: larger(b, loops)),
        ]
        if have_fuse():
            steps += [("serve-backup through nbdfuse and a loop device",
                       lambda: serve_backup(b, loops, work)),
                      ("a device that fails with EIO", lambda: device_errors(b, loops, work))]
        else:
            print("no nbdfuse or /dev/fuse: serve-backup and device errors not tested")
        for what, step in steps:
            t = time.time()
            step()
            print(f"== {what} ({time.time() - t:.1f} s)", flush=True)
        print(f"({time.time() - t0:.1f} s)")
    finally:
        loops.detach_all()
        if b:
            b.srv.cleanup()
        shutil.rmtree(work, ignore_errors=True)
    F.finish()


main()
