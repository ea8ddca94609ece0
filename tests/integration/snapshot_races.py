#!/usr/bin/python3
"""Snapshots under adversarial schedules: random writes, TRIMs and
WRITE_ZEROES across chunks and at a partial last chunk, several live
snapshots deleted in any order, concurrent writers to the same chunk
on two workers, snapshot reads racing copy-on-write, exact dirty
bitmaps, a full diff store, restarts.

Every snapshot is compared with a copy this test kept of the volume at
the snapshot's instant (taken while nothing wrote), never with what
voltrack says of itself.  Run one case: snapshot_races.py NAME.

Not yet registered with meson: these cases fail against the current
code and show defects still to be mended: bitmap_exact (over-reports
after a kill -9), allocation_races_trim,
invalidation_durable_before_other_writes, diff_store_moved,
delete_during_copy_leaks_slot.
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
from harness import VOLTRACK, Failures, Server  # noqa: E402

F = Failures()
CHUNK = 64 << 10


def vt(*args, check=True):
    p = subprocess.run([VOLTRACK, *args], capture_output=True, text=True)
    if check and p.returncode:
        raise RuntimeError(f"voltrack {' '.join(args)}: {p.returncode}\n{p.stderr}{p.stdout}")
    return p


def read_export(srv, name, size):
    h = srv.connect(name=f"snapshot/{name}")
    data = bytearray()
    try:
        for off in range(0, size, 1 << 20):
            data += h.pread(min(1 << 20, size - off), off)
    except nbd.Error as e:
        F.check(False, f"reading snapshot/{name} at {off}: {e}")
        return None
    finally:
        h.shutdown()
    return bytes(data)


def first_diff(a, b):
    if a is None or b is None:
        return "unreadable"
    for i in range(0, min(len(a), len(b)), 4096):
        if a[i:i + 4096] != b[i:i + 4096]:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def dirty_ranges(uri, ctx, gran):
    out = subprocess.run(["nbdinfo", "--json", f"--map={ctx}", uri], check=True,
                         capture_output=True, text=True).stdout
    blocks = set()
    for e in json.loads(out):
        if e["type"] & 1:
            blocks.update(range(e["offset"] // gran, -(-(e["offset"] + e["length"]) // gran)))
    return blocks


def differing_blocks(a, b, gran):
    return {i // gran for i in range(0, len(a), gran) if a[i:i + gran] != b[i:i + gran]}


def random_ops(srv, h, model, rng, n, size):
    """Random writes, trims and zeroes; the model follows what the
    backing file holds after each (a trim's content is the file's)."""
    for _ in range(n):
        kind = rng.choice(("write", "write", "write", "trim", "zero", "zero-unmap"))
        off = rng.randrange(0, size // 512) * 512
        if rng.random() < 0.2:
            off = max(0, size - rng.randrange(1, 3 * CHUNK // 512) * 512)  # the tail
        length = min(size - off, rng.choice((512, 4096, CHUNK, 3 * CHUNK + 4096,
                                             rng.randrange(1, 64) * 4096)))
        if length <= 0:
            continue
        if kind == "write":
            data = rng.randbytes(length)
            h.pwrite(data, off)
            model[off:off + length] = data
        elif kind == "trim":
            h.trim(length, off)
            model[off:off + length] = srv.read_volume(off, length)
        else:
            h.zero(length, off, nbd.CMD_FLAG_NO_HOLE if kind == "zero" else 0)
            model[off:off + length] = bytes(length)


def run_model(gran, seed, workers="1"):
    """Many snapshots, random ops between them, deletes in random order,
    one restart and one kill -9; every snapshot checked after each step."""
    size = 8 * (1 << 20) + 20 * 1024  # a partial last chunk
    srv = Server(size=size, granularity=gran, extra=["--workers", workers,
                                                          "--diff-limit", "1G"]).start()
    rng = random.Random(seed)
    try:
        model = bytearray(srv.read_volume())
        refs = {}
        h = srv.connect()
        random_ops(srv, h, model, rng, 200, size)
        for step in range(10):
            name = f"s{step}"
            h.flush()
            vt("snapshot", srv.volume, name)
            refs[name] = bytes(model)
            F.check(srv.read_volume() == bytes(model), f"{gran} step {step}: origin == model")
            random_ops(srv, h, model, rng, 60, size)
            if refs and rng.random() < 0.4:
                victim = rng.choice(sorted(refs))
                vt("delete", srv.volume, victim)
                del refs[victim]
            for s, ref in refs.items():
                got = read_export(srv, s, size)
                F.check(got == ref, f"{gran} step {step}: snapshot {s} == its copy "
                        f"(first difference at {first_diff(got, ref)})")
            if step == 4:
                h.shutdown()
                F.equal(srv.stop(), 0, "clean stop")
                srv.start()
                h = srv.connect()
            if step == 7:
                h.shutdown()
                srv.stop(signal.SIGKILL)
                srv.start()
                h = srv.connect()
        h.shutdown()
        for s, ref in refs.items():
            got = read_export(srv, s, size)
            F.check(got == ref, f"{gran} end: snapshot {s} == its copy "
                    f"(first difference at {first_diff(got, ref)})")
    finally:
        srv.stop()
        srv.cleanup()


def test_model_64k():
    run_model(None, 1)


def test_model_4k():
    run_model("4K", 2)


def test_model_4k_workers():
    run_model("4K", 3, workers="2")


def test_same_chunk_two_workers():
    """Writers on several connections (two workers) hit the same chunks
    right after each snapshot; each snapshot must be the volume as it
    was at the snapshot."""
    size = 4 << 20
    srv = Server(size=size, extra=["--workers", "2", "--diff-limit", "1G"]).start()
    try:
        conns = 4
        hs = [srv.connect() for _ in range(conns)]
        refs = {}
        for rnd in range(12):
            for h in hs:
                h.flush()
            name = f"r{rnd}"
            vt("snapshot", srv.volume, name)
            refs[name] = srv.read_volume()
            barrier = threading.Barrier(conns)
            errors = []

            def writer(c):
                rng = random.Random(rnd * 100 + c)
                barrier.wait()
                for k in range(64):
                    chunk = rng.randrange(8)      # few chunks: collisions
                    off = chunk * CHUNK + rng.randrange(CHUNK // 4096) * 4096
                    n = rng.choice((4096, CHUNK, 2 * CHUNK))
                    n = min(n, size - off)
                    try:
                        if k % 5 == 4:
                            hs[c].trim(n, off)
                        elif k % 7 == 6:
                            hs[c].zero(n, off)
                        else:
                            hs[c].pwrite(bytes([c + 1 + rnd]) * n, off)
                    except nbd.Error as e:
                        errors.append(str(e))

            ts = [threading.Thread(target=writer, args=(c,)) for c in range(conns)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            F.equal(errors, [], f"round {rnd}: no write failed")
            for s, ref in refs.items():
                got = read_export(srv, s, size)
                F.check(got == ref, f"round {rnd}: snapshot {s} exact "
                        f"(first difference at {first_diff(got, ref)})")
        for h in hs:
            h.shutdown()
    finally:
        srv.stop()
        srv.cleanup()


def test_read_races_cow():
    """Readers of a snapshot run while writers copy-on-write the same
    chunks; every read must return the snapshot's content."""
    size = 8 << 20
    srv = Server(size=size, extra=["--workers", "2", "--diff-limit", "1G"]).start()
    try:
        h = srv.connect()
        h.pwrite(random.Random(5).randbytes(size), 0)
        h.flush()
        for rnd in range(6):
            name = f"s{rnd}"
            vt("snapshot", srv.volume, name)
            ref = srv.read_volume()
            stop = threading.Event()
            bad = []
            reads = [0]

            def reader(seed):
                rh = srv.connect(name=f"snapshot/{name}")
                rng = random.Random(seed)
                while not stop.is_set():
                    off = rng.randrange(size // 4096) * 4096
                    n = min(size - off, rng.choice((4096, CHUNK, 3 * CHUNK)))
                    got = rh.pread(n, off)
                    reads[0] += 1
                    if got != ref[off:off + n]:
                        bad.append((off, n))
                rh.shutdown()

            rs = [threading.Thread(target=reader, args=(rnd * 10 + i,)) for i in range(2)]
            for t in rs:
                t.start()
            w = [srv.connect() for _ in range(2)]
            rng = random.Random(rnd)
            # Keep writing until the readers have raced enough writes (a
            # loaded machine may give them few turns in one pass).
            passes = 0
            while passes == 0 or (reads[0] <= 50 and passes < 20):
                for k in range(size // CHUNK):
                    off = rng.randrange(size // 4096) * 4096
                    n = min(size - off, rng.choice((4096, CHUNK, 2 * CHUNK)))
                    w[k % 2].pwrite(bytes([rnd + 0x40]) * n, off)
                passes += 1
            stop.set()
            for t in rs:
                t.join()
            for x in w:
                x.shutdown()
            F.check(reads[0] > 50, f"round {rnd}: readers read ({reads[0]} reads)")
            F.equal(bad[:5], [], f"round {rnd}: every snapshot read matched")
        h.shutdown()
    finally:
        srv.stop()
        srv.cleanup()


def test_bitmap_exact(gran="4K"):
    """qemu:dirty-bitmap:C on snapshot/S is exactly the blocks that
    differ between the volume at C and at S, after the origin moves;
    after a kill -9 it over-reports only inside the write-intent region
    that was set at the crash (the tracker's doubt, as on the live
    export), never anywhere else, and misses nothing."""
    size = 256 << 20          # four 64 MiB intent regions
    region = 64 << 20
    g = 4096 if gran == "4K" else CHUNK
    srv = Server(size=size, granularity=gran, extra=["--persist-interval", "200"]).start()
    try:
        rng = random.Random(11)
        h = srv.connect()
        for off in range(0, size, 4 << 20):
            h.pwrite(bytes([1]) * (4 << 20), off)
        h.flush()
        vt("checkpoint", srv.volume, "c")
        ref_c = srv.read_volume()
        for b in rng.sample(range(size // g), 200):
            h.pwrite(bytes([2]) * 512, b * g + 512)
        h.flush()
        vt("snapshot", srv.volume, "s")
        ref_s = srv.read_volume()
        # overwrite part of every other chunk, including blocks c..s left alone
        for off in range(0, size, 2 * CHUNK):
            h.pwrite(bytes([3]) * 4096, off + rng.randrange(CHUNK // 4096) * 4096)
        h.flush()
        want = differing_blocks(ref_c, ref_s, g)
        F.check(len(want) > 150, "blocks changed between c and s")
        uri = f"nbd+unix:///snapshot/s?socket={srv.sock}"
        F.equal(sorted(dirty_ranges(uri, "qemu:dirty-bitmap:c", g)), sorted(want),
                "qemu:dirty-bitmap:c on snapshot/s is exact")
        # Let idle intents clear (a few persists), then dirty region 0 only.
        deadline = time.time() + 20
        while time.time() < deadline:
            st = json.loads(vt("status", srv.volume, "--json").stdout)
            if st["intent-regions-set"] == 0:
                break
            time.sleep(0.2)
        F.equal(st["intent-regions-set"], 0, "intents cleared while idle")
        h.pwrite(bytes([4]) * 4096, 0)
        h.shutdown()
        srv.stop(signal.SIGKILL)
        srv.start()
        got = dirty_ranges(uri, "qemu:dirty-bitmap:c", g)
        F.check(want <= got, "after kill -9 no changed block is missing")
        outside = {b for b in got - want if b * g >= region}
        F.equal(len(outside), 0, "after kill -9 nothing is over-reported outside the "
                "intent region set at the crash")
    finally:
        srv.stop()
        srv.cleanup()


def test_full_store_restart():
    """I5: with the diff store full the snapshot is lost, never a write,
    and it stays invalid after a kill -9 and a clean restart."""
    size = 8 << 20
    srv = Server(size=size, extra=["--diff-limit", "256K", "--workers", "2"]).start()
    try:
        h = srv.connect()
        h.pwrite(bytes([1]) * size, 0)
        h.flush()
        vt("snapshot", srv.volume, "a")
        vt("snapshot", srv.volume, "b")
        failed = 0
        for off in range(0, size, CHUNK):
            try:
                h.pwrite(bytes([2]) * 4096, off)
            except nbd.Error:
                failed += 1
        h.shutdown()
        F.equal(failed, 0, "every origin write succeeded")
        srv.stop(signal.SIGKILL)
        vol = srv.read_volume()
        F.check(all(vol[o:o + 4096] == bytes([2]) * 4096 for o in range(0, size, CHUNK)),
                "every write reached the volume")
        srv.start()
        for s in ("a", "b"):
            sh = srv.connect(name=f"snapshot/{s}")
            try:
                sh.pread(4096, 0)
                F.check(False, f"snapshot {s} must stay invalid after kill -9")
            except nbd.Error:
                F.check(True, "")
            sh.shutdown()
        # The space is free again: a new snapshot works.
        vt("delete", srv.volume, "a")
        vt("delete", srv.volume, "b")
        vt("snapshot", srv.volume, "c")
        ref = srv.read_volume()
        h = srv.connect()
        h.pwrite(bytes([3]) * 4096, 0)
        h.shutdown()
        F.check(read_export(srv, "c", size) == ref, "a new snapshot after deleting the invalid")
    finally:
        srv.stop()
        srv.cleanup()


def test_allocation_races_trim():
    """base:allocation on snapshot/S must never call a hole what held
    data at S.  se_allocation() looks the chunk up first and asks the
    volume second, so a TRIM that copies and punches the chunk between
    the two makes the snapshot report HOLE|ZERO; nbdcopy and qemu-img
    then skip it and the backup holds zeroes."""
    size = 16 << 20
    srv = Server(size=size, extra=["--workers", "2", "--diff-limit", "1G"]).start()
    holes = []
    try:
        h = srv.connect()
        h.pwrite(b"\x11" * size, 0)
        h.flush()
        for rnd in range(10):
            name = f"s{rnd}"
            vt("snapshot", srv.volume, name)
            stop = threading.Event()

            def reader():
                r = srv.connect(name=f"snapshot/{name}")
                while not stop.is_set():
                    def cb(meta, off, ents, err):
                        for k in range(0, len(ents), 2):
                            if ents[k + 1] & 1:
                                holes.append((name, off, ents[k]))
                            off += ents[k]
                        return 0
                    r.block_status(size, 0, cb)
                r.shutdown()

            ts = [threading.Thread(target=reader) for _ in range(3)]
            for t in ts:
                t.start()
            for off in range(0, size, CHUNK):
                h.trim(CHUNK, off)
            stop.set()
            for t in ts:
                t.join()
            h.pwrite(bytes([0x20 + rnd]) * size, 0)
            h.flush()
            if holes:
                break
        F.equal(holes[:3], [], "snapshot/S reports no hole where S held data")
    finally:
        srv.stop()
        srv.cleanup()


def test_invalidation_durable_before_other_writes():
    """I5/I2: once one write finds the diff store full, the snapshot is
    invalid in memory at once, but durable only after that write's
    checkpoint-list update; a write to another chunk on the other worker
    sees 'invalid', skips its copy and overwrites the origin in that
    window.  A kill -9 there leaves a snapshot that restarts valid and
    reads the later write."""
    size = 4 << 20
    hits = 0
    for trial in range(8):
        srv = Server(size=size, extra=["--workers", "2", "--diff-limit", "64K"]).start()
        try:
            h = srv.connect()
            h.pwrite(b"\x11" * size, 0)
            h.flush()
            vt("snapshot", srv.volume, "s")
            ref = srv.read_volume()
            h.pwrite(b"\x22" * 4096, 0)          # takes the store's one slot
            a, b = srv.connect(), srv.connect()
            ca = a.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(b"\x33" * 4096)), CHUNK)
            time.sleep(0.0005)
            cb = b.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(b"\x44" * 4096)),
                              2 * CHUNK)
            while not b.aio_command_completed(cb):
                b.poll(1)
            srv.stop(signal.SIGKILL)
            del ca
            srv.start()
            sh = srv.connect(name="snapshot/s")
            try:
                got = sh.pread(4096, 2 * CHUNK)
                if got != ref[2 * CHUNK:2 * CHUNK + 4096]:
                    hits += 1
            except nbd.Error:
                pass  # invalid: the right outcome
            sh.shutdown()
        finally:
            srv.stop()
            srv.cleanup()
    F.equal(hits, 0, "trials where a snapshot came back valid with a later write in it")


def test_diff_store_moved():
    """I6: the diff store's data file is not tied to its record file.
    Restarting with another --diff-store (or without it) finds every
    record valid, reads past the new file's end, and the short read is
    taken for a full one (snapexport.c patch_done): the snapshot serves
    the origin's newer data and says it is valid."""
    size = 4 << 20
    srv = Server(size=size)
    alt = os.path.join(srv.dir, "elsewhere.diff")
    srv.extra = ["--diff-store", alt]
    srv.start()
    try:
        h = srv.connect()
        h.pwrite(b"\x11" * size, 0)
        h.flush()
        vt("snapshot", srv.volume, "s")
        h.pwrite(b"\x22" * size, 0)
        h.shutdown()
        F.equal(srv.stop(), 0, "clean stop")
        srv.extra = []
        srv.start()
        sh = srv.connect(name="snapshot/s")
        try:
            got = sh.pread(4096, 0)
            F.equal(got[:4], b"\x11" * 4, "the snapshot reads its own content, or fails")
        except nbd.Error:
            F.check(True, "")
        sh.shutdown()
    finally:
        srv.stop()
        srv.cleanup()


def test_delete_during_copy_leaks_slot():
    """Deleting a snapshot while a write copies for it: the copy is
    published after the delete's sweep and keeps its slot until the
    next start, so a store sized for the volume is full one chunk early
    and the next snapshot is invalidated."""
    size = 16 << 20
    bad = 0
    for delay in (0.05, 0.1, 0.15, 0.2):
        srv = Server(size=size, extra=["--diff-limit", str(size)]).start()
        try:
            h = srv.connect()
            h.pwrite(b"\x11" * size, 0)
            h.flush()
            vt("snapshot", srv.volume, "a")
            t = threading.Thread(target=lambda: h.pwrite(b"\x22" * size, 0))
            t.start()
            time.sleep(delay)
            freed = json.loads(vt("delete", srv.volume, "a", "--json").stdout)["freed-bytes"]
            t.join()
            if not 0 < freed < size:
                continue  # the delete did not land during the write
            vt("snapshot", srv.volume, "b")
            for off in range(0, size, CHUNK):
                h.pwrite(b"\x33" * 4096, off)
            h.shutdown()
            lst = json.loads(vt("list", srv.volume, "--json").stdout)
            st = [c["snapshot"]["state"] for c in lst if c["name"] == "b"][0]
            bad += st != "valid"
        finally:
            srv.stop()
            srv.cleanup()
    F.equal(bad, 0, "runs where a slot leaked by a delete mid-copy invalidated the next snapshot")


TESTS = {f.__name__[5:]: f for f in (
    test_model_64k, test_model_4k, test_model_4k_workers, test_same_chunk_two_workers,
    test_read_races_cow, test_bitmap_exact, test_full_store_restart,
    test_allocation_races_trim, test_invalidation_durable_before_other_writes,
    test_diff_store_moved, test_delete_during_copy_leaks_slot)}

if __name__ == "__main__":
    for name in sys.argv[1:] or TESTS:
        print(f"# {name}", flush=True)
        TESTS[name]()
    F.finish()
