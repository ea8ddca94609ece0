#!/usr/bin/python3
"""Snapshots: exact instants, exact dirty bitmaps, a bounded hold, the
diff store's accounting, failures that cost the snapshot and never a
write, restarts.

Every check compares with what this test wrote and kept itself (write
logs, copies of the volume taken while nothing wrote), never with what
voltrack says of itself.
"""
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
import nbd  # noqa: E402
from harness import (VOLTRACK, Failures, Server, crc32c, header_version, map_blocks,  # noqa: E402
                     read_export, snap_uri, vt)

F = Failures()
GRAN = 64 << 10
BLK = 4096


def dirty_blocks(uri, ctx):
    """The blocks nbdinfo --map reports dirty, as a set of block numbers."""
    return map_blocks(uri, ctx, 1, GRAN)


def differing_blocks(a, b):
    return {i // GRAN for i in range(0, len(a), GRAN) if a[i:i + GRAN] != b[i:i + GRAN]}


def block_payload(conn, seq):
    head = f"conn {conn} write {seq} ".encode()
    return (head * (BLK // len(head) + 1))[:BLK]


def test_exact_instant():
    """I2: several connections write, one write at a time, each into its
    own range; a snapshot in the middle holds exactly a prefix of each
    connection's log, including every write acknowledged before the
    command started and none issued after it returned."""
    size = 16 << 20
    conns = 4
    span = size // conns
    srv = Server(size=size).start()
    try:
        logs = [[] for _ in range(conns)]   # (issued_at, acked_at, off)
        stop = threading.Event()
        started = threading.Barrier(conns + 1)

        def writer(c):
            h = srv.connect()
            rng = random.Random(c)
            started.wait()
            seq = 0
            while not stop.is_set() or seq < 200:
                off = c * span + rng.randrange(span // BLK) * BLK
                t0 = time.monotonic()
                h.pwrite(block_payload(c, seq), off)
                logs[c].append((t0, time.monotonic(), off))
                seq += 1
                if seq > 6000:
                    break
            h.shutdown()

        threads = [threading.Thread(target=writer, args=(c,)) for c in range(conns)]
        for t in threads:
            t.start()
        started.wait()
        time.sleep(0.3)
        t_start = time.monotonic()
        p = vt("snapshot", srv.volume, "s", "--json")
        t_end = time.monotonic()
        time.sleep(0.2)
        stop.set()
        for t in threads:
            t.join()
        phases = json.loads(p.stdout)
        F.check(phases["export"] == "snapshot/s", "snapshot --json names its export")
        snap = read_export(srv, "s", size)

        for c in range(conns):
            log = logs[c]
            lo = sum(1 for (_, acked, _) in log if acked < t_start)
            hi = sum(1 for (issued, _, _) in log if issued <= t_end)
            F.check(lo > 0 and len(log) > hi, f"conn {c}: writes before and after the snapshot "
                    f"({lo} acknowledged before, {len(log) - hi} issued after)")
            ref = bytearray(span)
            for k in range(lo):
                ref[log[k][2] - c * span:log[k][2] - c * span + BLK] = block_payload(c, k)
            region = snap[c * span:(c + 1) * span]
            found = None
            for k in range(lo, hi + 1):
                if bytes(ref) == region:
                    found = k
                    break
                if k < len(log):
                    o = log[k][2] - c * span
                    ref[o:o + BLK] = block_payload(c, k)
            F.check(found is not None, f"conn {c}: snapshot equals a prefix of the log "
                    f"between {lo} and {hi} writes")

        # Overwrite the whole origin: the snapshot does not move.
        h = srv.connect()
        for off in range(0, size, 1 << 20):
            h.pwrite(b"\xee" * (1 << 20), off)
        h.flush()
        h.shutdown()
        F.check(read_export(srv, "s", size) == snap,
                "snapshot reads back bit for bit after the origin is overwritten")
    finally:
        srv.stop()
        srv.cleanup()


def test_bitmap_and_accounting():
    size = 32 << 20
    srv = Server(size=size).start()
    try:
        h = srv.connect()
        rng = random.Random(7)

        def write_blocks(blocks, fill):
            for b in blocks:
                h.pwrite(bytes([fill]) * 8192, b * GRAN + rng.randrange(GRAN // 8192) * 8192)
            h.flush()

        nblocks = size // GRAN
        write_blocks(range(nblocks), 0x01)
        vt("checkpoint", srv.volume, "c")
        ref_c = srv.read_volume()
        between_c_a = rng.sample(range(nblocks), 60)
        write_blocks(between_c_a, 0x02)
        vt("snapshot", srv.volume, "a")
        ref_a = srv.read_volume()
        between_a_b = rng.sample(range(nblocks), 40)
        write_blocks(between_a_b, 0x03)
        vt("snapshot", srv.volume, "b")
        ref_b = srv.read_volume()
        after_b = rng.sample(range(nblocks), 70)
        write_blocks(after_b, 0x04)
        h.shutdown()

        F.check(read_export(srv, "a", size) == ref_a, "snapshot a equals the volume at a")
        F.check(read_export(srv, "b", size) == ref_b, "snapshot b equals the volume at b")
        want = differing_blocks(ref_c, ref_a)
        F.check(len(want) == 60, "the test changed 60 blocks between c and a")
        F.equal(dirty_blocks(snap_uri(srv, "a"), "qemu:dirty-bitmap:c"), want,
                "qemu:dirty-bitmap:c on snapshot/a is exactly what changed between c and a")
        F.equal(dirty_blocks(snap_uri(srv, "b"), "qemu:dirty-bitmap:a"),
                differing_blocks(ref_a, ref_b),
                "qemu:dirty-bitmap:a on snapshot/b is exactly what changed between a and b")
        F.equal(dirty_blocks(snap_uri(srv, "b"), "qemu:dirty-bitmap:c"),
                differing_blocks(ref_c, ref_b),
                "qemu:dirty-bitmap:c on snapshot/b is exactly what changed between c and b")
        ch = json.loads(vt("changes", srv.volume, "--since", "c", "--until", "b", "--json").stdout)
        got = set()
        for e in ch["extents"]:
            got.update(range(e["offset"] // GRAN, (e["offset"] + e["length"]) // GRAN))
        F.equal(got, differing_blocks(ref_c, ref_b),
                "changes --since c --until b (a snapshot) is exact, after the origin moved")
        # Forgetting c renumbers the epochs (and the ones kept beside the
        # copies): the snapshots' bitmaps stay exact, also after a restart.
        want_ab = differing_blocks(ref_a, ref_b)
        vt("delete", srv.volume, "c", "--forget")
        F.equal(dirty_blocks(snap_uri(srv, "b"), "qemu:dirty-bitmap:a"), want_ab,
                "after forgetting c, qemu:dirty-bitmap:a on snapshot/b is still exact")
        F.equal(srv.stop(), 0, "clean stop")
        srv.start()
        F.equal(dirty_blocks(snap_uri(srv, "b"), "qemu:dirty-bitmap:a"), want_ab,
                "and after a restart")
        F.check(read_export(srv, "b", size) == ref_b, "snapshot b intact after all that")
        ctxs = subprocess.run(["nbdinfo", "--list", "--json", srv.uri], check=True,
                              capture_output=True, text=True).stdout
        names = [e["export-name"] for e in json.loads(ctxs)["exports"]]
        F.check("snapshot/a" in names and "snapshot/b" in names, "NBD_OPT_LIST lists snapshots")

        # Read-only: writes, trims and zeroes are refused with EPERM.
        sh = srv.connect(name="snapshot/a")
        sh.set_strict_mode(0)  # send them anyway: the server must refuse
        for what, fn in (("write", lambda: sh.pwrite(b"x" * 512, 0)),
                         ("trim", lambda: sh.trim(GRAN, 0)),
                         ("zero", lambda: sh.zero(GRAN, 0))):
            try:
                fn()
                F.check(False, f"{what} on snapshot/a must fail")
            except nbd.Error as e:
                F.check(e.errno == "EPERM" or "EPERM" in str(e) or "not permitted" in str(e),
                        f"{what} on snapshot/a fails with EPERM ({e})")
        sh.shutdown()

        # The diff store's accounting, from this test's own write log:
        # a chunk written between a and b was copied for a alone; one
        # written only after b is shared by both; one written in both
        # periods has one copy for each.
        only_a = set(between_a_b)
        p = vt("delete", srv.volume, "a", "--json")
        F.equal(json.loads(p.stdout)["freed-bytes"], len(only_a) * GRAN,
                "deleting a frees exactly the chunks only a needed")
        F.check(read_export(srv, "b", size) == ref_b, "snapshot b intact after a is deleted")
        after_b_set = set(after_b)
        p = vt("delete", srv.volume, "b", "--json")
        F.equal(json.loads(p.stdout)["freed-bytes"], len(after_b_set) * GRAN,
                "deleting b frees every remaining chunk")
        lst = json.loads(vt("list", srv.volume, "--json").stdout)
        F.check([c["name"] for c in lst] == ["a", "b"] and
                not any("snapshot" in c for c in lst),
                "delete keeps the checkpoints and drops the snapshots")
    finally:
        srv.stop()
        srv.cleanup()


def test_hooks_and_timeout():
    srv = Server(size=8 << 20).start()
    try:
        marker = os.path.join(srv.dir, "thawed")
        errors = []
        stop = threading.Event()

        def writer():
            h = srv.connect()
            n = 0
            while not stop.is_set():
                try:
                    h.pwrite(b"w" * 4096, (n % 2048) * 4096)
                except nbd.Error as e:
                    errors.append(str(e))
                n += 1
            h.shutdown()
            errors.append(n)

        t = threading.Thread(target=writer)
        t.start()
        time.sleep(0.2)
        p = vt("snapshot", srv.volume, "slow", "--hold-timeout", "1", "--freeze-cmd",
               "sleep 5", "--thaw-cmd", f"touch {marker}", check=False)
        F.check(p.returncode != 0, "a freeze hook that outlives the timeout fails the command")
        F.check("timeout" in p.stderr, f"and says why in one line ({p.stderr.strip()})")
        F.check(os.path.exists(marker), "the thaw hook ran after the timeout")
        p = vt("snapshot", srv.volume, "bad", "--freeze-cmd", "exit 3", "--thaw-cmd",
               f"rm {marker}", check=False)
        F.check(p.returncode != 0 and "freeze hook failed" in p.stderr,
                "a failing freeze hook aborts the snapshot")
        F.check(os.path.exists(marker), "no thaw after a freeze hook that failed")
        p = vt("snapshot", srv.volume, "ok", "--freeze-cmd", "true", "--thaw-cmd",
               f"rm {marker}", "--json")
        F.check(not os.path.exists(marker), "the thaw hook ran after a good snapshot")
        stop.set()
        t.join()
        count = errors.pop()
        F.check(count > 100, f"the writer kept writing ({count} writes)")
        F.equal(errors, [], "no write failed through holds and aborts")
        names = [c["name"] for c in json.loads(vt("list", srv.volume, "--json").stdout)]
        F.equal(names, ["ok"], "aborted snapshots leave no checkpoint")
    finally:
        srv.stop()
        srv.cleanup()


def test_diff_store_full():
    """I5: when the diff store is full the snapshot is lost, never a write."""
    size = 16 << 20
    srv = Server(size=size, extra=["--diff-limit", "1M"]).start()
    try:
        h = srv.connect()
        for off in range(0, size, 1 << 20):
            h.pwrite(b"\x01" * (1 << 20), off)
        h.flush()
        vt("snapshot", srv.volume, "s")
        failed = 0
        for off in range(0, size, GRAN):
            try:
                h.pwrite(b"\x02" * 4096, off)
            except nbd.Error:
                failed += 1
        h.flush()
        h.shutdown()
        F.equal(failed, 0, "every origin write succeeded with the diff store full")
        vol = srv.read_volume()
        F.check(all(vol[o:o + 4096] == b"\x02" * 4096 for o in range(0, size, GRAN)),
                "and every one of them reached the volume")
        sh = srv.connect(name="snapshot/s")
        try:
            sh.pread(4096, 0)
            F.check(False, "reading an invalid snapshot must fail")
        except nbd.Error as e:
            F.check("EIO" in str(e) or "Input/output" in str(e), f"it fails with EIO ({e})")
        sh.shutdown()
        lst = json.loads(vt("list", srv.volume, "--json").stdout)
        snap = lst[0].get("snapshot", {})
        F.check(snap.get("state") == "invalid" and "full" in snap.get("why", ""),
                f"list says the snapshot is invalid and why ({snap})")
        F.check("no longer valid" in srv.log_text(), "the server logs it")
    finally:
        srv.stop()
        srv.cleanup()


def test_restart_and_kill():
    size = 16 << 20
    srv = Server(size=size).start()
    try:
        h = srv.connect()
        for off in range(0, size, 1 << 20):
            h.pwrite(bytes([off >> 20]) * (1 << 20), off)
        h.flush()
        vt("snapshot", srv.volume, "s")
        ref = srv.read_volume()
        for off in range(0, size, 3 * GRAN):
            h.pwrite(b"\xaa" * 4096, off)
        h.shutdown()
        F.equal(srv.stop(), 0, "clean stop")
        srv.start()
        F.check(read_export(srv, "s", size) == ref, "snapshot intact after a clean restart")
        h = srv.connect()
        for off in range(GRAN, size, 2 * GRAN):
            h.pwrite(b"\xbb" * 8192, off)
        h.shutdown()
        srv.stop(signal.SIGKILL)
        srv.start()
        F.check(read_export(srv, "s", size) == ref, "snapshot intact after kill -9 under COW")
    finally:
        srv.stop()
        srv.cleanup()


def test_offline():
    srv = Server(size=4 << 20)
    try:
        with open(srv.volume, "r+b") as f:
            f.write(b"\x07" * (1 << 20))
        vt("snapshot", srv.volume, "off")
        srv.start()
        h = srv.connect()
        h.pwrite(b"\x08" * (1 << 20), 0)
        h.shutdown()
        F.check(read_export(srv, "off", 1 << 20) == b"\x07" * (1 << 20),
                "a snapshot taken with no server running holds the volume as it was")
    finally:
        srv.stop()
        srv.cleanup()


def set_copies_mark(srv, boot_id):
    """Leave the diff store's copies-pending mark set, as a server that
    died under `boot_id` with unsynced copies would (doc/format.md)."""
    blk = bytearray(4096)
    blk[0:8] = b"VTRKDSTA"
    blk[12:16] = (1).to_bytes(4, "little")
    blk[16:16 + len(boot_id)] = boot_id.encode()
    blk[8:12] = crc32c(bytes(blk)).to_bytes(4, "little")
    with open(os.path.join(srv.meta, "diffstore.map"), "r+b") as f:
        f.seek(4096)
        f.write(blk)


def test_machine_down():
    """After a power cut or kernel crash with copies not yet synced, the
    snapshots are reported invalid, never silently wrong; after a kill -9
    (same boot: the page cache survived) they stay valid."""
    size = 8 << 20
    srv = Server(size=size).start()
    try:
        h = srv.connect()
        h.pwrite(b"\x01" * size, 0)
        h.flush()
        vt("snapshot", srv.volume, "s")
        h.pwrite(b"\x02" * (1 << 20), 0)
        h.shutdown()
        srv.stop(signal.SIGKILL)
        boot = open("/proc/sys/kernel/random/boot_id").read().strip()
        set_copies_mark(srv, boot)
        srv.start()
        F.check(read_export(srv, "s", size) == b"\x01" * size,
                "same boot (kill -9): the snapshot is intact and valid")
        srv.stop(signal.SIGKILL)
        set_copies_mark(srv, "00000000-0000-0000-0000-000000000000")
        srv.start()
        lst = json.loads(vt("list", srv.volume, "--json").stdout)
        snap = lst[0].get("snapshot", {})
        F.check(snap.get("state") == "invalid" and "went down" in snap.get("why", ""),
                f"another boot: the snapshot is reported invalid, and why ({snap})")
        sh = srv.connect(name="snapshot/s")
        try:
            sh.pread(4096, 0)
            F.check(False, "reading it must fail")
        except nbd.Error as e:
            F.check("EIO" in str(e) or "Input/output" in str(e), f"reading it fails ({e})")
        sh.shutdown()
        F.equal(srv.stop(), 0, "clean stop")
        srv.start()
        lst = json.loads(vt("list", srv.volume, "--json").stdout)
        F.equal(lst[0].get("snapshot", {}).get("state"), "invalid",
                "it stays invalid after a restart")
    finally:
        srv.stop()
        srv.cleanup()


def superblock_version(srv, version=None):
    """The superblock's format version; with `version`, rewrite it as an
    older voltrack's init would have left it (doc/format.md)."""
    return header_version(os.path.join(srv.meta, "superblock"), 16, version)


def test_older_directory():
    """A directory an older voltrack made (version 2) is raised to the
    version that readers without snapshots refuse, before the first
    snapshot's flag is stored: such a reader would otherwise serve the
    volume and never copy a chunk for it."""
    srv = Server(size=4 << 20)
    try:
        F.equal(superblock_version(srv, 2), 2, "the directory reads as version 2")
        srv.start()
        h = srv.connect()
        h.pwrite(b"\x05" * 65536, 0)
        h.flush()
        vt("checkpoint", srv.volume, "plain")
        F.equal(superblock_version(srv), 2, "a plain checkpoint leaves version 2 as it is")
        vt("snapshot", srv.volume, "first")
        F.equal(superblock_version(srv), 3, "the first snapshot raised the version to 3")
        h.pwrite(b"\x06" * 65536, 0)
        h.shutdown()
        F.check(read_export(srv, "first", 65536) == b"\x05" * 65536,
                "and the snapshot holds the volume as it was")
    finally:
        srv.stop()
        srv.cleanup()


def test_diff_store_options():
    """--diff-store and --diff-limit given at init hold for every later
    serve and offline command; init --force starts a new, empty store."""
    import tempfile
    other = tempfile.mkdtemp(prefix="voltrack-ds-")
    size = 8 << 20
    srv = Server(size=size, init=False)
    try:
        path = os.path.join(other, "copies")
        subprocess.run([VOLTRACK, "init", srv.volume, "--size", str(size), "--diff-store", path,
                        "--diff-limit", "256K"], check=True, stdout=subprocess.DEVNULL)
        vt("snapshot", srv.volume, "off")            # offline, uses the recorded path
        srv.start()
        h = srv.connect()
        for off in range(0, 1 << 20, GRAN):
            h.pwrite(b"\x05" * 4096, off)
        h.shutdown()
        F.check(os.path.getsize(path) > 0, "copies go to the path given at init")
        F.check(not os.path.exists(os.path.join(srv.meta, "diffstore")) or
                os.path.getsize(os.path.join(srv.meta, "diffstore")) == 0,
                "and not to the default place")
        snap = json.loads(vt("list", srv.volume, "--json").stdout)[0]["snapshot"]
        F.check(snap["state"] == "invalid" and "full" in snap["why"],
                f"the limit given at init holds (16 chunks over 256K): {snap}")
        srv.stop()
        subprocess.run([VOLTRACK, "init", srv.volume, "--force"], check=True,
                       stdout=subprocess.DEVNULL)
        srv.start()
        vt("snapshot", srv.volume, "again")
        h = srv.connect()
        h.pwrite(b"\x06" * 4096, 0)
        h.shutdown()
        F.check(read_export(srv, "again", 4096) == b"\x05" * 4096,
                "after init --force a new store serves a new snapshot")
    finally:
        srv.stop()
        srv.cleanup()
        subprocess.run(["rm", "-rf", other])


def ctl(srv, *args):
    """One control-socket request, as the CLI sends it: (status, text)."""
    import socket
    c = socket.socket(socket.AF_UNIX)
    c.connect(os.path.join(srv.meta, "control.sock"))
    c.sendall(b"".join(a.encode() + b"\0" for a in args))
    c.shutdown(socket.SHUT_WR)
    data = b""
    while True:
        d = c.recv(65536)
        if not d:
            break
        data += d
    c.close()
    return data[0] - ord("0"), data[1:].decode()


def test_group():
    """Two volumes at one instant: a writer writes A then, once A is
    acknowledged, B.  In every group snapshot, B's write implies A's."""
    size = 8 << 20
    # Room for a copy of every chunk per snapshot: on a slow machine the
    # writer covers the whole volume across the eight snapshots, and a
    # full store would (rightly) invalidate them.
    room = ("--diff-limit", "64M")
    a, b = Server(size=size, extra=room).start(), Server(size=size, extra=room).start()
    try:
        stop = threading.Event()
        count = [0]

        def writer():
            ha, hb = a.connect(), b.connect()
            i = 0
            while not stop.is_set() and i < size // BLK:
                ha.pwrite(block_payload(0, i), i * BLK)
                hb.pwrite(block_payload(1, i), i * BLK)
                i += 1
            count[0] = i
            ha.shutdown()
            hb.shutdown()

        t = threading.Thread(target=writer)
        t.start()
        names = []
        for k in range(8):
            time.sleep(0.05)
            names.append(f"g{k}")
            vt("snapshot", a.volume, b.volume, "--group", names[-1])
        stop.set()
        t.join()
        F.check(count[0] > 50, f"the writer wrote ({count[0]} pairs)")

        def last_index(srv, conn, name):
            data = read_export(srv, name, size)
            n = 0
            while n < size // BLK and data[n * BLK:(n + 1) * BLK] == block_payload(conn, n):
                n += 1
            return n

        ok = True
        for name in names:
            na, nb = last_index(a, 0, name), last_index(b, 1, name)
            ok &= F.check(nb <= na, f"group {name}: B holds {nb} writes, A {na}")
        F.check(ok and len(names) == 8, "every group snapshot is mutually consistent")

        # One volume cannot take part: nothing is kept on any.
        vt("checkpoint", b.volume, "clash")
        p = vt("snapshot", a.volume, b.volume, "--group", "clash", check=False)
        F.check(p.returncode != 0 and "nothing kept" in p.stderr,
                "a group that fails on one volume fails as a whole")
        F.check(not any(c["name"] == "clash" for c in
                        json.loads(vt("list", a.volume, "--json").stdout)),
                "and keeps nothing on the others")

        # A hold nobody releases ends at its deadline on its own (I4).
        st, text = ctl(a, "snapshot-hold", "orphan", "300")
        F.equal(st, 0, f"snapshot-hold answers once drained ({text.strip()})")
        h = a.connect()
        t0 = time.monotonic()
        h.pwrite(b"z" * 4096, 0)   # parked until the watchdog releases
        waited = time.monotonic() - t0
        h.shutdown()
        F.check(0.1 < waited < 5, f"a write waited for the abandoned hold ({waited:.3f} s)")
        st, text = ctl(a, "snapshot-commit", "orphan")
        F.check(st != 0 and "timed out" in text, f"a late commit is refused ({text.strip()})")
        F.check(not any(c["name"] == "orphan" for c in
                        json.loads(vt("list", a.volume, "--json").stdout)),
                "the abandoned hold left no checkpoint")
    finally:
        for s in (a, b):
            s.stop()
            s.cleanup()


for test in (test_exact_instant, test_group, test_bitmap_and_accounting, test_hooks_and_timeout,
             test_diff_store_full, test_restart_and_kill, test_machine_down, test_offline,
             test_older_directory, test_diff_store_options):
    print(f"# {test.__name__}", flush=True)
    test()
F.finish()
