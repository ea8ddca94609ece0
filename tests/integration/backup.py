#!/usr/bin/env python3
"""Backup and restore against a real `voltrack serve` and qemu-storage-daemon.

Every check compares with references the test keeps itself: a sparse copy
of the volume file taken by the test at the instant of each backup (no
writer runs during a backup), compared with `cmp` to the restore; and the
set of chunks the test's own writes touched, which bounds what an
incremental backup may read.  The repository is judged by `verify` and
by restores, and its damage is made by the test.
"""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from harness import VOLTRACK, Failures, Server  # noqa: E402

SIZE = 128 << 20
CHUNK = 1 << 20
# After a crash voltrack counts every block of each recently written
# write-intent region as changed (doc/tracking.md): that, not the
# touched chunks, bounds the first backup after one.
REGION = 64 << 20
ENV = dict(os.environ, PATH="/usr/bin:/bin:/usr/sbin:/sbin")
F = Failures()
random.seed(int(os.environ.get("VOLTRACK_BACKUP_SEED", "0")) or None)


def run(*args, check=True, timeout=120):
    p = subprocess.run([VOLTRACK, *args], capture_output=True, text=True, timeout=timeout,
                       env=ENV)
    if check and p.returncode:
        raise RuntimeError(f"voltrack {' '.join(args)} failed ({p.returncode}):\n"
                           f"{p.stdout}{p.stderr}")
    return p


def qemu_io(uri, *cmds):
    args = ["qemu-io", "-f", "raw"]
    for c in cmds:
        args += ["-c", c]
    p = subprocess.run(args + [uri], capture_output=True, text=True, env=ENV)
    # qemu-io prints what it wrote; an acknowledged write says so.
    if p.returncode or p.stdout.count("wrote") + p.stdout.count("discard ") != len(cmds):
        raise RuntimeError(f"qemu-io {cmds} failed: {p.stdout}{p.stderr}")


class Volume:
    """A served volume, the repository, and the test's references."""

    def __init__(self):
        self.srv = Server(size=SIZE)
        self.srv.start()
        self.repo = os.path.join(self.srv.dir, "repo")
        self.refs = {}          # backup id -> reference copy
        self.touched = set()    # chunks written since the last backup

    @property
    def uri(self):
        return self.srv.uri

    def write(self, off, length, pattern):
        qemu_io(self.uri, f"write -P {pattern} {off} {length}")
        self.touch(off, length)

    def trim(self, off, length):
        qemu_io(self.uri, f"discard {off} {length}")
        self.touch(off, length)

    def touch(self, off, length):
        self.touched.update(range(off // CHUNK, (off + length - 1) // CHUNK + 1))

    def fio(self, off, length, seconds=None, ios=None):
        args = ["fio", "--ioengine=nbd", f"--uri={self.uri}", "--output=/dev/null",
                f"--offset={off}", f"--size={length}", "--randrepeat=0", "--norandommap",
                "--name=w", "--rw=randwrite", "--bsrange=4k-128k", "--iodepth=8",
                "--name=t", "--rw=randtrim", "--bs=64k", "--iodepth=1", "--rate_iops=200"]
        args += ["--time_based", f"--runtime={seconds}"] if seconds else [f"--number_ios={ios}"]
        self.touch(off, length)
        return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                env=ENV, start_new_session=True)

    def snapshot_ref(self, name):
        """The volume as the test sees it now, from the file itself."""
        path = os.path.join(self.srv.dir, f"ref-{name}.img")
        subprocess.run(["cp", "--sparse=always", self.srv.volume, path], check=True)
        return path

    def backup(self, *extra, expect=None):
        p = run("backup", self.srv.volume, self.repo, "--chunk-size", "1M", "--json", *extra)
        out = json.loads(p.stdout)
        self.refs[out["id"]] = self.snapshot_ref(out["id"])
        if expect:
            F.equal(out["type"], expect, f"backup {out['id']} type")
        self.last_touched, self.touched = self.touched, set()
        return out

    def restore_matches(self, bid, what, verify=False):
        target = os.path.join(self.srv.dir, "restored.img")
        args = ["restore", self.repo, bid, target] + (["--verify"] if verify else [])
        p = run(*args, check=False)
        ok = F.check(p.returncode == 0, f"{what}: restore of {bid} succeeds: {p.stderr}")
        if ok:
            same = subprocess.run(["cmp", target, self.refs[bid]], capture_output=True)
            F.check(same.returncode == 0,
                    f"{what}: restore of {bid} equals the copy taken at its backup: "
                    f"{same.stdout.decode()}")
        if os.path.exists(target):
            os.unlink(target)
        return ok

    def checkpoints(self):
        return [c["name"] for c in json.loads(run("list", self.srv.volume, "--json").stdout)]


def check_incremental(v, out, what, crashed=False):
    """Only chunks the test wrote were read (after a crash: chunks of
    the regions it wrote), and at least one was."""
    F.equal(out["type"], "incremental", f"{what}: type")
    bound = v.last_touched
    if crashed:
        per = REGION // CHUNK
        bound = {c for t in bound for c in range(t // per * per, (t // per + 1) * per)}
    F.check(0 < out["chunks_read"] <= len(bound),
            f"{what}: read {out['chunks_read']} chunks, bound {len(bound)}")
    F.check(out["bytes_read"] <= len(bound) * CHUNK,
            f"{what}: bytes_read {out['bytes_read']} within the bound")
    F.check(len(bound) < SIZE // CHUNK, f"{what}: the bound is below the whole volume")


def chain(v):
    print("== full, then incrementals after qemu-io and fio (writes and trims)", flush=True)
    v.write(0, 3 << 20, 1)
    v.write(20 << 20, 5 << 20, 2)
    v.write(50 << 20, 64 << 10, 3)
    run("checkpoint", v.srv.volume, "mine")     # someone else's checkpoint
    b0 = v.backup(expect="full")
    F.check(b0["parent"] is None, "a full backup has no parent")
    F.check(b0["bytes_read"] >= 8 << 20, f"the full backup read the data ({b0['bytes_read']})")

    v.write(1 << 20, 4096, 4)
    v.trim(22 << 20, 1 << 20)
    load = v.fio(40 << 20, 4 << 20, ios=300)
    F.equal(load.wait(), 0, "fio's writes and trims were acknowledged")
    b1 = v.backup()
    check_incremental(v, b1, "first incremental")
    F.equal(b1["parent"], b0["id"], "first incremental's parent")

    v.write(60 << 20, 2 << 20, 5)
    v.write(2 << 20, 8192, 6)
    b2 = v.backup()
    check_incremental(v, b2, "second incremental")
    for b in (b0, b1, b2):
        v.restore_matches(b["id"], "chain", verify=b is b2)

    serve_backup(v, b1["id"])
    listing = json.loads(run("backups", v.repo, "--json").stdout)
    F.equal([(b["id"], b["parent"], b["type"]) for b in listing],
            [(b0["id"], None, "full"), (b1["id"], b0["id"], "incremental"),
             (b2["id"], b1["id"], "incremental")], "backups --json: the chain")
    F.check(all({"checkpoint", "created", "size", "bytes_read"} <= set(b) for b in listing),
            "backups --json has every field")
    ck = v.checkpoints()
    F.check("mine" in ck, "the user's checkpoint is never touched")
    F.equal([c for c in ck if c.startswith("vtbackup-")], [b2["checkpoint"]],
            "only the newest backup's checkpoint is kept")


def serve_backup(v, bid):
    """serve-backup exports exactly the restore point, read-only."""
    sock = os.path.join(v.srv.dir, "sb.sock")
    p = subprocess.Popen([VOLTRACK, "serve-backup", v.repo, bid, "--socket", sock],
                         stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        line = p.stderr.readline()
        F.check("serving backup" in line, f"serve-backup starts: {line!r}")
        uri = f"nbd+unix:///?socket={sock}"
        out = os.path.join(v.srv.dir, "served.img")
        subprocess.run(["nbdcopy", uri, out], check=True, env=ENV)
        F.equal(subprocess.run(["cmp", out, v.refs[bid]]).returncode, 0,
                "serve-backup: the export equals the copy taken at the backup")
        os.unlink(out)
        w = subprocess.run(["qemu-io", "-f", "raw", "-c", "write 0 4k", uri],
                           capture_output=True, text=True, env=ENV)
        F.check("wrote" not in w.stdout, "serve-backup: writes are refused")
    finally:
        p.terminate()
        F.equal(p.wait(timeout=30), 0, "serve-backup stops cleanly")


def server_crashes(v):
    print("== kill -9 of the server between backups, and during writes", flush=True)
    v.write(30 << 20, 1 << 20, 7)
    v.srv.stop(signal.SIGKILL)
    v.srv.start()
    v.write(31 << 20, 4096, 8)
    b = v.backup()
    check_incremental(v, b, "after kill -9 between backups", crashed=True)
    v.restore_matches(b["id"], "after kill -9 between backups")

    load = v.fio(8 << 20, 8 << 20, seconds=60)
    try:
        # Kill only once fio's writes reach the volume (fio takes a
        # moment to start), and while it still writes.
        before = list(v.refs.values())[-1]
        with open(before, "rb") as f:
            f.seek(8 << 20)
            old = f.read(8 << 20)
        deadline = time.time() + 30
        while v.srv.read_volume(8 << 20, 8 << 20) == old and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        F.check(load.poll() is None, "fio is still writing when the server is killed")
        v.srv.stop(signal.SIGKILL)
    finally:
        # fio has a session of its own: end it whatever happened above.
        os.killpg(load.pid, signal.SIGKILL)
        load.wait()
    v.srv.start()
    b = v.backup()
    check_incremental(v, b, "after kill -9 during writes", crashed=True)
    F.check(subprocess.run(["cmp", "-s", before, v.refs[b["id"]]]).returncode == 1,
            "after kill -9 during writes: the volume really changed")
    v.restore_matches(b["id"], "after kill -9 during writes")


def offline_change(v):
    print("== the volume written while no server ran", flush=True)
    v.srv.stop()
    with open(v.srv.volume, "r+b") as f:
        f.seek(12 << 20)
        f.write(b"\xa5" * 8192)
    v.srv.start()
    p = run("backup", v.srv.volume, v.repo, "--chunk-size", "1M")
    F.check("full backup:" in p.stdout and "history" in p.stdout,
            f"the backup after an offline change is full and says why: {p.stdout!r}")
    bid = p.stdout.split("backup ", 2)[-1].split()[0]
    v.refs[bid] = v.snapshot_ref(bid)
    v.touched = set()
    v.restore_matches(bid, "after an offline change")


def client_kills(v, trials=20):
    print(f"== kill -9 of the backup client, {trials} times", flush=True)
    killed = 0
    # Kill points spread over how long a run takes here.
    v.write(44 << 20, 2 << 20, 98)
    t = time.time()
    v.backup()
    took = time.time() - t
    for i in range(trials):
        v.write(random.randrange(SIZE // CHUNK) * CHUNK + 4096 * random.randrange(8), 256 << 10,
                10 + i % 200)
        p = subprocess.Popen([VOLTRACK, "backup", v.srv.volume, v.repo, "--json"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=ENV)
        time.sleep(random.uniform(0.0, 0.8 * took))
        if p.poll() is None:
            p.kill()
            killed += 1
        out, _ = p.communicate()
        if p.returncode == 0:
            # It finished first: a committed backup like any other.
            bid = json.loads(out)["id"]
            v.refs[bid] = v.snapshot_ref(bid)
        vr = run("verify", v.repo, check=False)
        if not F.check(vr.returncode == 0, f"verify after kill {i}: {vr.stdout}{vr.stderr}"):
            break
    F.check(killed >= trials // 2, f"the client was really killed ({killed} of {trials})")
    v.write(45 << 20, 4096, 99)
    b = v.backup()
    F.equal(b["type"], "incremental", "after the kills: the next run is incremental")
    v.restore_matches(b["id"], "after the client kills")
    left = [c for c in v.checkpoints() if c.startswith("vtbackup-")]
    F.equal(left, [b["checkpoint"]], "after the kills: no leftover checkpoint")
    F.check("mine" in v.checkpoints(), "after the kills: the user's checkpoint stays")
    tmp = os.listdir(os.path.join(v.repo, "tmp"))
    F.equal(tmp, [], "no temporary file survives the next writer")


def manifest_digests(repo, bid):
    with open(os.path.join(repo, "backups", bid)) as f:
        return {ln[2:].strip() for ln in f if ln.startswith("c ")}


def prune_concurrent(v, rounds=3):
    print(f"== prune racing backups, {rounds} rounds", flush=True)
    before = [b["id"] for b in json.loads(run("backups", v.repo, "--json").stdout)]
    F.check(len(before) > 4, f"there is something to prune ({len(before)} backups)")
    for i in range(rounds):
        v.write((70 + 3 * i) << 20, 256 << 10, 50 + i)
        bk = subprocess.Popen([VOLTRACK, "backup", v.srv.volume, v.repo, "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
        pr = subprocess.Popen([VOLTRACK, "prune", v.repo, "--keep-last", "2"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
        out, err = bk.communicate(timeout=120)
        F.equal(bk.returncode, 0, f"round {i}: the backup beside prune succeeds: {err}")
        if bk.returncode == 0:
            bid = json.loads(out)["id"]
            v.refs[bid] = v.snapshot_ref(bid)
        pout, perr = pr.communicate(timeout=120)
        F.equal(pr.returncode, 0, f"round {i}: prune succeeds: {perr}")
        left = [b["id"] for b in json.loads(run("backups", v.repo, "--json").stdout)]
        # Either ran first; the backup that ran after prune adds one more.
        F.check(2 <= len(left) <= 3, f"round {i}: prune kept the newest two ({left})")
        for bid in left:
            missing = [d for d in manifest_digests(v.repo, bid)
                       if not os.path.exists(os.path.join(v.repo, "chunks", d[:2], d))]
            F.equal(missing, [], f"round {i}: every chunk backup {bid} names is there")
    F.check(len(left) < 4 and not set(before) & set(left), "prune removed the old backups")
    F.equal(run("verify", v.repo, check=False).returncode, 0, "verify after prune")
    stored = sum(len(os.listdir(os.path.join(v.repo, "chunks", d)))
                 for d in os.listdir(os.path.join(v.repo, "chunks")))
    named = set().union(*(manifest_digests(v.repo, b) for b in left))
    F.equal(stored, len(named), "prune left no chunk that no backup names")
    for bid in left:
        v.restore_matches(bid, "after prune")


def damage(v):
    print("== a flipped bit in a chunk, a truncated manifest", flush=True)
    v.write(90 << 20, 1 << 20, 77)
    v.backup()
    ids = [b["id"] for b in json.loads(run("backups", v.repo, "--json").stdout)]
    manifests = {i: open(os.path.join(v.repo, "backups", i)).read().split("\n") for i in ids}
    digests = {i: {ln[2:] for ln in m if ln.startswith("c ")} for i, m in manifests.items()}
    newest, oldest = ids[-1], ids[0]
    # A chunk the newest backup has and the oldest does not.
    victim = sorted(digests[newest] - digests[oldest])[0]
    path = os.path.join(v.repo, "chunks", victim[:2], victim)
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        data[len(data) // 2 + 16] ^= 0x08
        f.seek(0)
        f.write(data)
    cut = ids[1]
    with open(os.path.join(v.repo, "backups", cut), "r+b") as f:
        f.truncate(os.path.getsize(f.name) // 2)
    p = run("verify", v.repo, check=False)
    F.check(p.returncode == 1, "verify fails on a damaged repository")
    index = [ln for ln in manifests[newest] if ln.startswith(("c ", "z "))]
    pos = 0
    for ln in index:
        if ln == f"c {victim}":
            break
        pos += int(ln[2:]) if ln.startswith("z ") else 1
    want = f"backup {newest}: chunk {pos} at offset {pos * CHUNK} ({victim})"
    F.check(want in p.stdout, f"verify names the bad chunk: want {want!r} in {p.stdout!r}")
    F.check(f"backup {cut}: manifest" in p.stdout, f"verify names the truncated manifest")
    p = run("verify", v.repo, oldest, check=False)
    F.equal(p.returncode, 0, "verify of an undamaged backup alone passes")

    target = os.path.join(v.srv.dir, "damaged.img")
    p = run("restore", v.repo, newest, target, check=False)
    if os.path.exists(target):
        os.unlink(target)
    F.check(p.returncode == 1 and f"chunk {pos} at offset {pos * CHUNK}" in p.stderr,
            f"restore refuses the backup with the bad chunk: {p.stderr!r}")
    p = run("restore", v.repo, cut, target, check=False)
    F.check(p.returncode == 1 and "damaged" in p.stderr,
            f"restore refuses the truncated manifest: {p.stderr!r}")
    F.check(not os.path.exists(target) or os.path.getsize(target) < SIZE,
            "the truncated manifest's restore wrote nothing")
    v.restore_matches(oldest, "an undamaged backup beside damaged ones")
    p = run("prune", v.repo, "--keep-last", "1", check=False)
    F.check(p.returncode == 1 and cut in p.stderr,
            f"prune refuses while a manifest is damaged: {p.stderr!r}")
    # The next backup does not trust the damaged chunk's name: the
    # newest backup is still its parent, so the chunk may be reused;
    # restore catches that, and a full backup rewrites nothing wrongly.
    os.unlink(path)


class Nbdkit:
    """nbdkit's file plugin on path, behind filters, while in a with block."""

    def __init__(self, path, *filters):
        self.sock = path + ".sock"
        if os.path.exists(self.sock):
            os.unlink(self.sock)
        self.uri = f"nbd+unix:///?socket={self.sock}"
        names = [f"--filter={f}" for f in filters if "=" not in f]
        params = [f for f in filters if "=" in f]
        self.proc = subprocess.Popen(["nbdkit", "--foreground", "--unix", self.sock, *names,
                                      "file", f"file={path}", *params],
                                     stderr=subprocess.PIPE, env=ENV)
        for _ in range(200):
            if os.path.exists(self.sock):
                break
            time.sleep(0.025)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait()
        if os.path.exists(self.sock):
            os.unlink(self.sock)


def nbd_targets(v):
    """Restore into NBD exports, compared with cmp against the reference:
    a fresh voltrack export read back with nbdcopy; nbdkit exports that
    cannot zero (zero runs are written), that take requests of 64 KiB at
    most, and whose writes fail (the restore fails and names an offset)."""
    print("== restore into NBD exports", flush=True)
    bid = list(v.refs)[-1]
    ref = v.refs[bid]
    t = Server(size=SIZE).start()
    try:
        p = run("restore", v.repo, bid, t.uri, "--verify", check=False)
        F.check(p.returncode == 0, f"restore into a voltrack export succeeds: {p.stderr}")
        back = os.path.join(t.dir, "back.img")
        subprocess.run(["nbdcopy", t.uri, back], check=True, env=ENV)
        F.equal(subprocess.run(["cmp", back, ref]).returncode, 0,
                "restore into a voltrack export is exact")
        F.check(os.stat(t.volume).st_blocks * 512 < os.stat(ref).st_blocks * 512 + (4 << 20),
                "restore into a voltrack export keeps holes sparse")
    finally:
        t.cleanup()
    with open(ref, "rb") as f:
        kinds = {f.read(1 << 20) == bytes(1 << 20) for _ in range(SIZE >> 20)}
    F.equal(kinds, {True, False}, "the backup restored has both zero and data chunks")
    img = os.path.join(v.srv.dir, "nbdkit.img")
    for filters, what in (((), "nbdkit"), (("nozero",), "nbdkit without zero"),
                          (("blocksize-policy", "blocksize-maximum=65536",
                            "blocksize-error-policy=error"), "nbdkit, 64 KiB requests")):
        # Written before, so that the zero runs must be written too.
        with open(img, "wb") as f:
            f.write(b"\xff" * SIZE)
        with Nbdkit(img, *filters) as k:
            p = run("restore", v.repo, bid, k.uri, check=False)
        F.check(p.returncode == 0, f"restore into {what} succeeds: {p.stderr}")
        F.equal(subprocess.run(["cmp", img, ref]).returncode, 0, f"restore into {what} is exact")
    with Nbdkit(img, "error", "error=EIO", "error-pwrite-rate=100%") as k:
        p = run("restore", v.repo, bid, k.uri, check=False)
    F.check(p.returncode == 1 and "cannot write" in p.stderr and " at offset " in p.stderr
            and "Input/output error" in p.stderr and "Sanitizer" not in p.stderr,
            f"a failed write fails the restore with its offset: {p.stderr!r}")
    with Nbdkit(img, "error", "error=EIO", "error-pwrite-rate=20%") as k:
        p = run("restore", v.repo, bid, k.uri, "--jobs", "2", check=False)
    F.check(p.returncode == 1 and "cannot write" in p.stderr and " at offset " in p.stderr
            and "Sanitizer" not in p.stderr,
            f"writes failing among others in flight fail the restore: {p.stderr!r}")
    os.unlink(img)


def qsd(tmp):
    print("== qemu-storage-daemon, qcow2 with a persistent bitmap", flush=True)
    img = os.path.join(tmp, "d.qcow2")
    sock = os.path.join(tmp, "qsd.sock")
    repo = os.path.join(tmp, "qrepo")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", img, "32M"], check=True)
    uri = f"nbd+unix:///?socket={sock}"
    # The bitmap exists before the daemon opens the image, as a user adds it.
    subprocess.run(["qemu-img", "bitmap", "--add", img, "b0"], check=True)
    proc = subprocess.Popen(
        ["qemu-storage-daemon", "--blockdev", f"driver=file,node-name=f,filename={img}",
         "--blockdev", "driver=qcow2,node-name=q,file=f",
         "--nbd-server", f"addr.type=unix,addr.path={sock}",
         "--export", "type=nbd,id=e,node-name=q,name=,writable=on,bitmaps.0=b0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    try:
        for _ in range(100):
            if os.path.exists(sock):
                break
            time.sleep(0.05)
        qemu_io(uri, "write -P 1 0 1M", "write -P 2 17M 300k")

        def ref(name):
            path = os.path.join(tmp, f"q-{name}.img")
            subprocess.run(["nbdcopy", uri, path], check=True, env=ENV)
            return path

        def backup():
            p = run("backup", "--from", uri, "--bitmap", "b0", repo, "--chunk-size", "1M",
                    "--json")
            return json.loads(p.stdout)

        b0 = backup()
        r0 = ref("0")
        F.equal(b0["type"], "full", "qsd: the first backup is full")
        qemu_io(uri, "write -P 3 5M 64k", "write -P 4 30M 4k")
        b1 = backup()
        r1 = ref("1")
        F.equal(b1["type"], "incremental", "qsd: the second is incremental")
        # The bitmap counts since the first backup: chunks 0, 5, 17, 30.
        F.check(0 < b1["chunks_read"] <= 4, f"qsd: read {b1['chunks_read']} chunks")
        for b, r in ((b0, r0), (b1, r1)):
            out = os.path.join(tmp, "q-restored.img")
            run("restore", repo, b["id"], out)
            F.equal(subprocess.run(["cmp", out, r]).returncode, 0,
                    f"qsd: restore of {b['type']} backup is exact")
            os.unlink(out)
        p = run("verify", repo, b1["id"], "--against", uri, check=False)
        F.equal(p.returncode, 0, f"qsd: verify --against the export: {p.stdout}{p.stderr}")
        qemu_io(uri, "write -P 9 6M 4k")
        p = run("verify", repo, b1["id"], "--against", uri, check=False)
        F.check(p.returncode == 1 and "chunk 6 at offset 6291456 differs" in p.stdout,
                f"qsd: verify --against names the changed chunk: {p.stdout}")
        encrypted(tmp, uri)
        compress_levels(tmp, uri)
    finally:
        proc.kill()
        proc.wait()


def encrypted(tmp, uri):
    print("== an encrypted repository", flush=True)
    key, other, repo = (os.path.join(tmp, n) for n in ("key", "other", "erepo"))
    with open(key, "w") as f:
        f.write(os.urandom(32).hex() + "\n")
    with open(other, "w") as f:
        f.write(os.urandom(32).hex() + "\n")
    qemu_io(uri, "write -P 0x5a 8M 1M")
    ref = os.path.join(tmp, "e-ref.img")
    subprocess.run(["nbdcopy", uri, ref], check=True, env=ENV)
    run("backup", "--from", uri, repo, "--key", key, "--chunk-size", "1M")
    chunks = [os.path.join(r, n) for r, _, ns in os.walk(os.path.join(repo, "chunks"))
              for n in ns]
    F.check(chunks and not any(b"\x5a" * 64 in open(c, "rb").read() for c in chunks),
            "encrypted chunks do not hold the data in the clear")
    for args, what in ((["--key", other], "the key does not match"),
                       ([], "--key FILE is needed")):
        p = run("restore", repo, "latest", os.path.join(tmp, "e.img"), *args, check=False)
        F.check(p.returncode == 1 and what in p.stderr, f"restore without the key: {p.stderr!r}")
    out = os.path.join(tmp, "e.img")
    run("restore", repo, "latest", out, "--key", key, "--verify")
    F.equal(subprocess.run(["cmp", out, ref]).returncode, 0, "encrypted restore is exact")
    F.equal(run("verify", repo, "--key", key, check=False).returncode, 0, "verify with the key")


def compress_levels(tmp, uri):
    """--compress-level reaches zstd (the fastest level stores more than
    the strongest of the same data), and any level restores exactly."""
    print("== zstd levels", flush=True)
    rnd = random.Random(7)
    words = [bytes(rnd.choice(b"abcdefghij") for _ in range(rnd.randint(2, 9)))
             for _ in range(4000)]
    data = b" ".join(rnd.choice(words) for _ in range(400000))[:2 << 20]
    import nbd
    h = nbd.NBD()
    h.connect_uri(uri)
    h.pwrite(data, 16 << 20)
    h.shutdown()
    ref = os.path.join(tmp, "z-ref.img")
    subprocess.run(["nbdcopy", uri, ref], check=True, env=ENV)
    stored = {}
    for level in ("-7", "19"):
        repo = os.path.join(tmp, f"zrepo{level}")
        out = json.loads(run("backup", "--from", uri, repo, "--chunk-size", "1M",
                             "--compress-level", level, "--json").stdout)
        stored[level] = out["bytes_stored"]
        target = os.path.join(tmp, "z.img")
        run("restore", repo, "latest", target, "--verify")
        F.equal(subprocess.run(["cmp", target, ref]).returncode, 0,
                f"a backup at level {level} restores exactly")
        os.unlink(target)
    F.check(stored["-7"] > stored["19"] * 1.2,
            f"the level reaches zstd: stored {stored}")
    p = run("backup", "--from", uri, os.path.join(tmp, "zrepo0"), "--compress-level", "0",
            check=False)
    F.check(p.returncode == 2 and "--compress-level 0" in p.stderr,
            f"level 0 is refused with a reason: {p.stderr!r}")


def main():
    v = Volume()
    tmp = tempfile.mkdtemp(prefix="voltrack-backup-")
    try:
        t0 = time.time()
        for step in (chain, nbd_targets, server_crashes, offline_change, client_kills,
                     prune_concurrent, damage):
            t = time.time()
            step(v)
            print(f"   ({time.time() - t:.1f} s)", flush=True)
        qsd(tmp)
        print(f"({time.time() - t0:.1f} s in all)")
    finally:
        v.srv.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
    F.finish()


main()
