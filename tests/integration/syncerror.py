#!/usr/bin/python3
"""A volume sync error must latch (doc/tracking.md, invariants I1 and I6).

Linux reports a writeback error to one sync per open file, once.  voltrack's
flusher fdatasyncs the volume before it clears write intents; clients'
FLUSHes, FUA writes and the final sync at shutdown use the same file.  If the
flusher's sync fails and the next one returns 0, intents would be cleared,
a client's FLUSH would succeed and the close would be recorded clean, while
the disk may hold old content.  Required instead: after a volume sync
error, every later FLUSH and FUA write fails, intents stay set, and the
close is not clean, so the next start recovers as after a crash and
reports the written blocks changed.

How the error is made, without device-mapper: the volume is a FUSE file.
nbdkit's eval plugin serves a sparse file on a normal file system, and its
flush fails with EIO while a trigger file exists; nbdfuse exposes that
export as a regular file, whose fsync/fdatasync becomes an NBD flush.
(nbdkit's error filter has no flush errors in the versions Debian 12 ships.)

Premises are checked and fail loudly: fdatasync of the FUSE file succeeds
without the trigger, fails with EIO while it exists, and succeeds again once
it is removed; nbdkit really injected the error while voltrack ran; the
export advertises FUA.  The semantics of the FUSE file's errors (every sync
while the trigger exists, or once per open file) are printed: here each
sync asks the NBD server, so every sync fails while the trigger exists and
none after.  Removing the trigger before the checks is what makes them
test the latch: the operating system's syncs succeed again, exactly as
after Linux has reported a writeback error once.  nbdfuse does not cache
writes (each reaches nbdkit before write() returns), so no data is really
lost here: what is checked is what the server tells its clients and what
it records, which is all the latch is about.

Each case, once per I/O engine:
  1. init the FUSE file (metadata in a temp dir on a normal file system),
     serve it with --persist-interval 100, checkpoint c1, write, FLUSH (ok);
  2. create the trigger, write again, wait until nbdkit injected a flush
     error and the server logged an error, remove the trigger, and wait
     ten persist intervals;
  3. checks: intents are still set; a FLUSH fails (EIO); a FUA write fails;
     a second FLUSH fails too; after SIGTERM and a restart, `status --json`
     says 'recovered' (not 'clean'), and `changes --since c1 --json` reports
     every block written (the failed FUA write too: it may have landed).

Needs /dev/fuse, nbdfuse and nbdkit's eval plugin, and the right to mount
(root, or fusermount3); exits 77 (skipped) without them.
VOLTRACK_IO_ENGINE=ENGINE runs only that engine.
"""
import errno
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import nbd

from harness import VOLTRACK, Failures

t = Failures()
SIZE = 256 << 20
G = 64 << 10
PERSIST_MS = 100
ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin:/usr/sbin:/sbin")}


class PremiseFailed(Exception):
    pass


def premise(cond, what):
    """A premise that does not hold makes the case meaningless: fail loudly."""
    if not cond:
        t.check(False, f"PREMISE: {what}")
        raise PremiseFailed(what)


def skip(why):
    print(f"SKIP: {why}; the sync-error test was NOT run", flush=True)
    sys.exit(77)


def vt(*args):
    return subprocess.run([VOLTRACK, *args], capture_output=True, text=True, env=ENV)


def blocks_of(extents):
    out = set()
    for off, length in extents:
        out.update(range(off // G, (off + length + G - 1) // G))
    return out


def wait_for(cond, timeout, step=0.02):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()


def spawn(args, log_path, mode="wb"):
    """Start args in a session of its own, stderr to log_path."""
    with open(log_path, mode) as log:
        return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log, env=ENV,
                                start_new_session=True)


def end_group(proc, timeout=10):
    """End a process started with start_new_session=True, and its group."""
    if proc is None:
        return None
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
    return proc.returncode


class FuseVolume:
    """A regular file on FUSE whose sync fails with EIO while a trigger exists."""

    def __init__(self, work, size):
        self.work = work
        self.backing = os.path.join(work, "backing.img")
        self.trigger = os.path.join(work, "fail-flush")
        self.sock = os.path.join(work, "nbdkit.sock")
        self.mnt = os.path.join(work, "mnt")
        self.path = os.path.join(self.mnt, "disk")
        self.nbdkit_log = os.path.join(work, "nbdkit.log")
        self.fuse_log = os.path.join(work, "nbdfuse.log")
        self.fuse_pidfile = os.path.join(work, "nbdfuse.pid")
        self.nbdkit = None
        self.fuse = None
        self.mounted = False
        with open(self.backing, "wb") as f:
            f.truncate(size)
        os.mkdir(self.mnt)

    def start(self):
        b, trig = shlex.quote(self.backing), shlex.quote(self.trigger)
        with CRITICAL:
            self.nbdkit = spawn(
                ["nbdkit", "-f", "-U", self.sock, "eval",
                 f"get_size=stat -L -c %s {b}",
                 "can_write=exit 0", "can_flush=exit 0",
                 f"pread=dd if={b} iflag=skip_bytes,count_bytes skip=$4 count=$3 status=none",
                 f"pwrite=dd of={b} oflag=seek_bytes conv=notrunc seek=$4 status=none",
                 f"flush=if [ -e {trig} ]; then echo 'EIO injected flush error' >&2; exit 1; fi"],
                self.nbdkit_log)
        if not wait_for(lambda: os.path.exists(self.sock) or self.nbdkit.poll() is not None, 10) \
                or self.nbdkit.poll() is not None:
            skip(f"nbdkit with the eval plugin did not start: {self.log(self.nbdkit_log)}")
        # nbdfuse stays in the foreground; its pid file says when it is ready.
        self.mounted = True  # from here on, unmount (harmless if it never mounted)
        with CRITICAL:
            self.fuse = spawn(["nbdfuse", "-P", self.fuse_pidfile, self.path,
                               f"nbd+unix:///?socket={self.sock}"], self.fuse_log)
        if not wait_for(lambda: os.path.exists(self.fuse_pidfile) or
                        self.fuse.poll() is not None, 15) or self.fuse.poll() is not None:
            skip(f"nbdfuse could not mount (exit {self.fuse.poll()}): {self.log(self.fuse_log)}")
        if not wait_for(lambda: os.path.exists(self.path) and
                        os.path.getsize(self.path) == SIZE, 10):
            skip(f"nbdfuse did not expose {self.path}: {self.log(self.fuse_log)}")

    @staticmethod
    def log(path):
        try:
            with open(path, "rb") as f:
                return f.read().decode(errors="replace").strip()
        except OSError:
            return ""

    def injected(self):
        return self.log(self.nbdkit_log).count("injected flush error")

    def fail_syncs(self, on):
        if on:
            open(self.trigger, "w").close()
        elif os.path.exists(self.trigger):
            os.unlink(self.trigger)

    def stop(self):
        if self.mounted:
            for attempt in range(50):
                cmd = (["fusermount3", "-u", self.mnt] if shutil.which("fusermount3")
                       else ["umount", self.mnt])
                if subprocess.run(cmd, capture_output=True, env=ENV).returncode == 0:
                    self.mounted = False
                    break
                time.sleep(0.1)  # a killed server's io_uring lets go a moment later
            if self.mounted:
                subprocess.run(["umount", "-l", self.mnt], capture_output=True, env=ENV)
                self.mounted = False
        # Unmounting ends nbdfuse; end its group all the same, then nbdkit.
        if self.fuse is not None:
            wait_for(lambda: self.fuse.poll() is not None, 5)
            end_group(self.fuse)
            self.fuse = None
        end_group(self.nbdkit)
        self.nbdkit = None


def sync_result(path):
    """fdatasync of a fresh open of path: 0, or the errno."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.fdatasync(fd)
        return 0
    except OSError as e:
        return e.errno
    finally:
        try:
            os.close(fd)
        except OSError:
            pass


def check_fuse_semantics(fv):
    """The injector works on the FUSE file; print how its errors behave."""
    fd = os.open(fv.path, os.O_RDWR)
    try:
        def sync():
            try:
                os.fdatasync(fd)
                return 0
            except OSError as e:
                return e.errno
        os.pwrite(fd, b"p" * 4096, SIZE - 4096)
        premise(sync() == 0, "fdatasync of the FUSE file succeeds without the trigger")
        fv.fail_syncs(True)
        os.pwrite(fd, b"q" * 4096, SIZE - 4096)
        first, second = sync(), sync()
        other = sync_result(fv.path)
        fv.fail_syncs(False)
        after = sync()
        print(f"FUSE file, trigger present: 1st fdatasync {errno.errorcode.get(first, first)}, "
              f"2nd on the same fd {errno.errorcode.get(second, second)}, another fd "
              f"{errno.errorcode.get(other, other)}; trigger removed: "
              f"{errno.errorcode.get(after, after)}", flush=True)
        print("FUSE sync errors are reported " +
              ("EVERY TIME while the trigger exists (each sync asks the NBD server)"
               if second == errno.EIO else "ONCE per open file (Linux writeback-error style)"),
              flush=True)
        premise(first == errno.EIO,
                f"fdatasync fails with EIO while the trigger exists (got {first})")
        premise(after == 0, "fdatasync succeeds again once the trigger is removed "
                f"(got {after}); otherwise a failing FLUSH would prove no latch")
    finally:
        os.close(fd)


class Serve:
    def __init__(self, volume, meta, engine, log_path):
        self.volume, self.meta, self.engine, self.log_path = volume, meta, engine, log_path
        self.sock = os.path.join(meta, "nbd.sock")
        self.proc = None

    def start(self):
        self.mark = os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0
        with CRITICAL:
            self.proc = spawn(
                [VOLTRACK, "serve", self.volume, "--meta", self.meta, "--io-engine", self.engine,
                 "--persist-interval", str(PERSIST_MS)], self.log_path, "ab")
        ok = wait_for(lambda: self.proc.poll() is not None or "serving" in self.log(), 15)
        if self.proc.poll() is not None or not ok:
            raise RuntimeError(f"server did not start:\n{self.log()}")
        return self

    def log(self):
        """This run's part of the log."""
        with open(self.log_path, "rb") as f:
            f.seek(self.mark)
            return f.read().decode(errors="replace")

    def connect(self):
        h = nbd.NBD()
        h.connect_unix(self.sock)
        return h

    def stop(self, timeout=30):
        """SIGTERM; the exit status, or a string if it hung."""
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            end_group(self.proc)
            rc = f"hung after SIGTERM, killed ({self.proc.returncode})"
        end_group(self.proc)  # anything it left in its group
        self.proc = None
        return rc

    def kill(self):
        if self.proc is not None:
            end_group(self.proc)
            self.proc = None


def nbd_errno(e):
    """The numeric errno of a libnbd error (.errno is its name)."""
    return getattr(e, "errnum", None)


def status(vol, meta, what):
    p = vt("status", vol, "--meta", meta, "--json")
    t.equal(p.returncode, 0, f"{what}: status --json: {p.stderr}")
    try:
        return json.loads(p.stdout)
    except ValueError:
        t.check(False, f"{what}: status --json is JSON: {p.stdout!r}")
        return {}


def changed_since(vol, meta, since, what):
    p = vt("changes", vol, "--meta", meta, "--since", since, "--json")
    t.equal(p.returncode, 0, f"{what}: changes --since {since}: {p.stderr}")
    try:
        return blocks_of((e["offset"], e["length"]) for e in json.loads(p.stdout)["extents"])
    except (ValueError, KeyError):
        t.check(False, f"{what}: changes --json is readable: {p.stdout!r}")
        return set()


def one_case(engine):
    name = f"[{engine}]"
    work = tempfile.mkdtemp(prefix="voltrack-syncerr-")
    fv = FuseVolume(work, SIZE)
    srv = None
    h = None
    try:
        fv.start()
        print(f"{name} FUSE volume {fv.path} ({SIZE >> 20} MiB) over nbdkit eval", flush=True)
        check_fuse_semantics(fv)

        meta = os.path.join(work, "meta")  # a normal file system, not the FUSE mount
        p = vt("init", fv.path, "--meta", meta)
        premise(p.returncode == 0, f"voltrack init of the FUSE file: {p.stderr}")
        srv = Serve(fv.path, meta, engine, os.path.join(work, "serve.log")).start()
        h = srv.connect()
        premise(h.can_flush() and h.can_fua(), "the export advertises FLUSH and FUA")
        p = vt("checkpoint", fv.path, "c1", "--meta", meta)
        premise(p.returncode == 0, f"checkpoint c1: {p.stderr}")

        written = set()
        # Before the error: two regions (64 MiB each).  The FLUSH works.
        for off, n in [(1 << 20, 3 * G), (130 << 20, G + 512)]:
            h.pwrite(os.urandom(n), off)
            written |= blocks_of([(off, n)])
        try:
            h.flush()
            flush_ok = True
        except nbd.Error as e:
            flush_ok = False
            print(f"{name} FLUSH before any error failed: {e}", flush=True)
        premise(flush_ok, "a FLUSH before the error succeeds")

        # The error: syncs fail while these writes' regions go idle, so
        # the flusher's fdatasync before clearing their intents fails.
        before = fv.injected()
        mark = len(srv.log())
        fv.fail_syncs(True)
        for off, n in [(2 << 20, G), (200 << 20, 4096)]:
            h.pwrite(os.urandom(n), off)
            written |= blocks_of([(off, n)])
        seen = wait_for(lambda: fv.injected() > before and "error" in srv.log()[mark:].lower(),
                        15)
        fv.fail_syncs(False)
        injected = fv.injected() - before
        premise(injected > 0, "nbdkit injected a flush error while voltrack served the file "
                f"(nbdkit log: {fv.log(fv.nbdkit_log)[-500:]!r})")
        err_lines = [l for l in srv.log()[mark:].splitlines() if "error" in l.lower()]
        print(f"{name} {injected} flush error(s) injected; server said: "
              f"{err_lines[0] if err_lines else '(nothing)'}", flush=True)
        t.check(seen and err_lines, f"{name} the server logs the volume sync error: {srv.log()}")

        # The operating system's syncs work again; voltrack's must not.
        premise(sync_result(fv.path) == 0, "fdatasync of the FUSE file succeeds again "
                "once the trigger is gone")
        time.sleep(10 * PERSIST_MS / 1000)

        st = status(fv.path, meta, f"{name} after the error")
        print(f"{name} while serving after the error: state {st.get('state')!r}, "
              f"intent-regions-set {st.get('intent-regions-set')}", flush=True)
        t.check(st.get("intent-regions-set", 0) >= 1,
                f"{name} intents stay set after a volume sync error "
                f"(intent-regions-set {st.get('intent-regions-set')})")

        try:
            h.flush()
            t.check(False, f"{name} a client FLUSH after the volume sync error must fail, "
                    "but it SUCCEEDED (the error was consumed, not latched)")
        except nbd.Error as e:
            t.check(True, "FLUSH after the error fails")
            print(f"{name} FLUSH after the error failed as it must: {e}", flush=True)
            t.equal(nbd_errno(e), errno.EIO, f"{name} the failed FLUSH says EIO")

        off, n = 3 << 20, 8192
        written |= blocks_of([(off, n)])  # a failed write may have landed
        try:
            h.pwrite(os.urandom(n), off, flags=nbd.CMD_FLAG_FUA)
            t.check(False, f"{name} a FUA write after the volume sync error must fail, "
                    "but it SUCCEEDED")
        except nbd.Error as e:
            t.check(True, "FUA write after the error fails")
            print(f"{name} FUA write after the error failed as it must: {e}", flush=True)
            t.equal(nbd_errno(e), errno.EIO, f"{name} the failed FUA write says EIO")

        try:
            h.flush()
            t.check(False, f"{name} a second FLUSH after the error must fail too, but it "
                    "SUCCEEDED")
        except nbd.Error:
            t.check(True, "second FLUSH after the error fails")

        try:
            h.shutdown()
        except nbd.Error:
            pass
        h = None
        rc = srv.stop()
        print(f"{name} server exit status after SIGTERM: {rc}", flush=True)
        t.check(isinstance(rc, int), f"{name} the server ends on SIGTERM: {rc}")
        t.check("stopped cleanly" not in srv.log(),
                f"{name} the server does not say it stopped cleanly after a sync error: "
                f"{srv.log()}")

        # The next start must recover as after a crash.
        srv.start()
        st = status(fv.path, meta, f"{name} after the restart")
        print(f"{name} after the restart: state {st.get('state')!r} "
              f"({st.get('state-detail')!r}), regions-recovered "
              f"{st.get('regions-recovered')}", flush=True)
        t.check(st.get("state") not in (None, "clean"),
                f"{name} the start after a sync error is not clean: state {st.get('state')!r}; "
                "the close after the error was recorded as CLEAN")
        t.equal(st.get("state"), "recovered",
                f"{name} the start after a sync error recovers as after a crash")
        got = changed_since(fv.path, meta, "c1", name)
        missing = sorted(written - got)
        t.check(not missing, f"{name} every block written since c1 is reported changed "
                f"after the restart; missing blocks: {missing[:20]}")
        t.equal(srv.stop(), 0, f"{name} the restarted server (no error now) stops cleanly")
    except PremiseFailed as e:
        print(f"{name} PREMISE FAILED, case abandoned: {e}", flush=True)
    finally:
        # Every step runs whatever the one before did; the mount goes
        # before the directory that holds it.
        with CRITICAL:
            steps = [lambda: h is not None and h.shutdown(),
                     lambda: srv is not None and srv.kill(),
                     fv.stop,
                     lambda: subprocess.run(["rm", "-rf", work], env=ENV)]
            for step in steps:
                try:
                    step()
                except Exception as e:  # noqa: BLE001 - cleanup goes on
                    print(f"{name} cleanup: {e!r}", flush=True)


class Critical:
    """A block that a SIGTERM (a test runner's timeout) must not cut short:
    starting a process and recording it, and the cleanup.  The signal
    takes effect once the outermost block is done."""
    depth = 0
    pending = False

    def __enter__(self):
        Critical.depth += 1

    def __exit__(self, *exc):
        Critical.depth -= 1
        if Critical.depth == 0 and Critical.pending:
            sys.exit(1)


CRITICAL = Critical()


def on_sigterm(*_):
    """The finally clauses run: everything is unmounted and ended."""
    if Critical.depth:
        Critical.pending = True
        return
    sys.exit(1)


def main():
    signal.signal(signal.SIGTERM, on_sigterm)
    if not os.path.exists("/dev/fuse"):
        skip("/dev/fuse does not exist")
    for tool in ("nbdkit", "nbdfuse"):
        if not shutil.which(tool, path=ENV["PATH"]):
            skip(f"{tool} is not installed")
    engines = os.environ.get("VOLTRACK_IO_ENGINE")
    for engine in [engines] if engines else ["io_uring", "threads"]:
        one_case(engine)
    t.finish()


main()
