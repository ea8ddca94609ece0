#!/usr/bin/python3
"""Soak: 64 connections from mixed clients for VOLTRACK_SOAK_SECONDS
(default 25, as `make check` runs it; `make soak` runs 600, or
SOAK_SECONDS), checked against the test's own
reference afterwards.

Clients, each on its own part of the volume so that the last writer of
every block is known:
  - 38 python3-libnbd writers, 4 MiB each: writes (a quarter FUA),
    reads checked against their reference, TRIMs (read back: zeroes or
    the old data, whichever the volume gives), WRITE_ZEROES, FLUSHes,
    and BLOCK_STATUS over base:allocation and qemu:dirty-bitmap:c0,
    where every block they have written must be dirty;
  - 4 python3-libnbd readers over the whole volume: reads, and block
    status, where the part nobody writes must read zero and be clean;
  - 12 qemu-io loops, 4 MiB each, in batches of 20 commands (one
    connection per batch): pattern writes, write-zeroes, pattern reads
    (`read -P` verifies), flush and map;
  - fio's nbd engine, 8 jobs of 8 MiB, random reads and writes at a
    bounded rate, in phases that each write their own buffer pattern,
    so every 4 KiB block ends zero or one phase's pattern;
  - 2 nbdcopy loops copying the volume to null: (extents and reads);
  - and, around them, `voltrack checkpoint` every few seconds and
    `qemu-img map` over qemu:dirty-bitmap:c0.

Afterwards: the volume read over NBD, and the backing file after a clean
stop, equal the reference; for every checkpoint C, `changes --since C`
covers every block written by a request that began after C was
acknowledged, and reports nothing that no request ending after C was
taken could have written (the over-report, expected 0 without a crash);
the server's descriptors are as before the clients came and its RSS
under load stays within RSS_TOLERANCE_KIB of the level after the first
quarter.  The figures are printed.
"""
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time

import nbd

from harness import VOLTRACK, Failures, Server

t = Failures()
SECONDS = float(os.environ.get("VOLTRACK_SOAK_SECONDS", "25"))
MIB = 1 << 20
K4 = 4096
G = 64 << 10
SIZE = 512 * MIB
LIBNBD_WRITERS, LIBNBD_READERS, QEMU_IO, FIO_JOBS, NBDCOPY = 38, 4, 12, 8, 2
REGION = 4 * MIB
QIO_BASE = 160 * MIB
FIO_BASE, FIO_SIZE = 256 * MIB, 8 * MIB
QUIET_BASE = 320 * MIB          # nobody writes from here on
RSS_TOLERANCE_KIB = 32768

stop = threading.Event()
lock = threading.Lock()
counts = {}
errors = []
checkpoints = []                # (name, t_request, t_ack)
writes = []                     # (t0, t1, off, len): every tracked request


def count(key, n=1):
    with lock:
        counts[key] = counts.get(key, 0) + n


def error(what):
    with lock:
        if len(errors) < 50:
            errors.append(what)


def log_write(t0, t1, off, length):
    with lock:
        writes.append((t0, t1, off, length))


def blocks(off, length):
    return range(off // G, (off + length + G - 1) // G)


def dirty_blocks(h, ctx, off, length):
    """Blocks the context reports dirty in [off, off+length)."""
    dirty, pos, end = set(), off, off + length
    while pos < end:
        got = []

        def cb(metacontext, o, entries, err):
            if metacontext == ctx:
                got.append((o, entries))
            return 0
        h.block_status(end - pos, pos, cb)
        if not got:
            raise RuntimeError(f"no {ctx} extents at {pos}")
        p = pos
        for o, entries in got:
            for i in range(0, len(entries), 2):
                n, flags = entries[i], entries[i + 1]
                if flags & 1:
                    dirty.update(blocks(p, min(n, end - p)))
                p += n
        pos = p
    return dirty


def libnbd_writer(srv, k, refs):
    rnd = random.Random(1000 + k)
    base = k * REGION
    ref = bytearray(REGION)
    refs[k] = ref
    mine = set()
    ctx = "qemu:dirty-bitmap:c0"
    h = srv.connect(contexts=("base:allocation", ctx))
    while not stop.is_set():
        r = rnd.random()
        if r < 0.40:
            n = K4 * rnd.randint(1, 16)
            o = rnd.randrange(0, REGION - n + 1, K4)
            data = rnd.randbytes(n)
            fua = rnd.random() < 0.25
            t0 = time.monotonic()
            h.pwrite(data, base + o, nbd.CMD_FLAG_FUA if fua else 0)
            log_write(t0, time.monotonic(), base + o, n)
            ref[o:o + n] = data
            mine.update(blocks(base + o, n))
            count("libnbd write")
            count("libnbd bytes written", n)
        elif r < 0.70:
            n = K4 * rnd.randint(1, 32)
            o = rnd.randrange(0, REGION - n + 1, K4)
            if h.pread(n, base + o) != ref[o:o + n]:
                error(f"libnbd writer {k}: read at {base + o} differs from the reference")
            count("libnbd read")
            count("libnbd bytes read", n)
        elif r < 0.78:
            n = G * rnd.randint(1, 4)
            o = rnd.randrange(0, REGION - n + 1, G)
            t0 = time.monotonic()
            h.trim(n, base + o)
            log_write(t0, time.monotonic(), base + o, n)
            back = h.pread(n, base + o)
            if back != bytes(n) and back != ref[o:o + n]:
                error(f"libnbd writer {k}: trimmed range at {base + o} is neither zero nor old")
            ref[o:o + n] = back
            mine.update(blocks(base + o, n))
            count("libnbd trim")
        elif r < 0.86:
            n = K4 * rnd.randint(1, 32)
            o = rnd.randrange(0, REGION - n + 1, K4)
            t0 = time.monotonic()
            h.zero(n, base + o)
            log_write(t0, time.monotonic(), base + o, n)
            ref[o:o + n] = bytes(n)
            mine.update(blocks(base + o, n))
            count("libnbd write-zeroes")
        elif r < 0.92:
            h.flush()
            count("libnbd flush")
        else:
            missed = mine - dirty_blocks(h, ctx, base, REGION)
            if missed:
                error(f"libnbd writer {k}: {ctx} misses written blocks {sorted(missed)[:4]}")
            dirty_blocks(h, "base:allocation", base, REGION)
            count("libnbd block-status")
    h.shutdown()


def libnbd_reader(srv, k):
    rnd = random.Random(2000 + k)
    ctx = "qemu:dirty-bitmap:c0"
    h = srv.connect(contexts=("base:allocation", ctx))
    quiet = QUIET_BASE // G
    while not stop.is_set():
        if rnd.random() < 0.8:
            n = 64 * 1024 * rnd.randint(1, 16)
            o = rnd.randrange(0, SIZE - n + 1, K4)
            data = h.pread(n, o)
            if o >= QUIET_BASE and data != bytes(n):
                error(f"reader {k}: the unwritten range at {o} is not zero")
            count("libnbd read")
            count("libnbd bytes read", n)
        else:
            o = rnd.randrange(0, SIZE - 32 * MIB + 1, G)
            d = dirty_blocks(h, ctx, o, 32 * MIB)
            wrong = [b for b in d if b >= quiet]
            if wrong:
                error(f"reader {k}: never-written blocks reported dirty: {wrong[:4]}")
            count("libnbd block-status")
    h.shutdown()


def qemu_io_loop(srv, k, refs, work):
    """Batches of qemu-io commands on region QIO_BASE + k * REGION."""
    rnd = random.Random(3000 + k)
    base = QIO_BASE + k * REGION
    nb = REGION // K4
    ref = bytearray(nb)          # the byte each 4 KiB block is filled with
    refs[("qio", k)] = ref
    uri = f"nbd+unix:///?socket={srv.sock}"
    while not stop.is_set():
        cmds, effects = [], []
        for _ in range(20):
            r = rnd.random()
            b = rnd.randrange(nb - 16)
            n = rnd.randint(1, 16)
            if r < 0.6:
                v = rnd.randint(1, 255) if r < 0.5 else 0
                cmds.append(f"write -P {v} {base + b * K4} {n * K4}" if v else
                            f"write -z {base + b * K4} {n * K4}")
                effects.append((b, n))
                ref[b:b + n] = bytes([v]) * n
            elif r < 0.85:
                # verify one block whose content this batch knows
                cmds.append(f"read -P {ref[b]} {base + b * K4} {K4}")
            elif r < 0.95:
                cmds.append("flush")
            else:
                cmds.append("map")
        args = ["qemu-io", "-f", "raw"]
        for c in cmds:
            args += ["-c", c]
        t0 = time.monotonic()
        p = subprocess.run(args + [uri], capture_output=True, text=True)
        t1 = time.monotonic()
        if p.returncode != 0 or "failed" in p.stdout + p.stderr:
            error(f"qemu-io {k}: exit {p.returncode}: {(p.stdout + p.stderr)[-300:]}")
        for b, n in effects:
            log_write(t0, t1, base + b * K4, n * K4)
        count("qemu-io batch")
        count("qemu-io command", len(cmds))
        count("qemu-io write", len(effects))


def fio_patterns(phases):
    return [bytes([0x40 + i % 64, 0xa5, 0x5a ^ i % 256, 0xc3]) for i in range(phases)]


def fio_loop(srv, work, phase_seconds, fio_phases, end):
    uri = f"nbd+unix:///?socket={srv.sock}"
    i = 0
    while not stop.is_set():
        runtime = min(phase_seconds, int(end - time.monotonic()))
        if runtime < 2:
            break
        pat = fio_patterns(i + 1)[i]
        out = os.path.join(work, f"fio-{i}.json")
        args = ["fio", "--name=soak", "--ioengine=nbd", f"--uri={uri}", "--rw=randrw",
                "--bs=4k", "--iodepth=4", f"--numjobs={FIO_JOBS}", f"--size={FIO_SIZE}",
                f"--offset={FIO_BASE}", f"--offset_increment={FIO_SIZE}", "--time_based",
                f"--runtime={runtime}", "--rate_iops=150,150", "--fsync=32",
                f"--buffer_pattern=0x{pat.hex()}", "--group_reporting",
                "--output-format=json", f"--output={out}"]
        t0 = time.monotonic()
        p = subprocess.run(args, capture_output=True, text=True, cwd=work)
        t1 = time.monotonic()
        fio_phases.append((t0, t1, pat))
        if p.returncode != 0:
            error(f"fio phase {i}: exit {p.returncode}: {p.stderr[-300:]}")
        else:
            with open(out) as f:
                j = json.load(f)["jobs"][0]
            count("fio read", j["read"]["total_ios"])
            count("fio write", j["write"]["total_ios"])
            count("fio bytes read", j["read"]["io_bytes"])
            count("fio bytes written", j["write"]["io_bytes"])
        count("fio phase")
        i += 1


def nbdcopy_loop(srv, k):
    uri = f"nbd+unix:///?socket={srv.sock}"
    while not stop.is_set():
        p = subprocess.run(["nbdcopy", "--connections=1", "--requests=4", uri, "null:"],
                           capture_output=True, text=True)
        if p.returncode != 0:
            error(f"nbdcopy {k}: exit {p.returncode}: {p.stderr[-300:]}")
        count("nbdcopy copy")
        stop.wait(0.5)


def side_loop(srv):
    """Checkpoints while everything runs, and qemu-img over the bitmap."""
    period = max(3.0, SECONDS / 8)
    n = 1
    next_ckpt = time.monotonic() + period
    opts = (f"driver=nbd,server.type=unix,server.path={srv.sock},"
            "x-dirty-bitmap=qemu:dirty-bitmap:c0")
    while not stop.is_set():
        if time.monotonic() >= next_ckpt:
            name = f"c{n}"
            t0 = time.monotonic()
            p = subprocess.run([VOLTRACK, "checkpoint", srv.volume, name],
                               capture_output=True, text=True)
            t1 = time.monotonic()
            if p.returncode == 0:
                with lock:
                    checkpoints.append((name, t0, t1))
            else:
                error(f"checkpoint {name}: {p.stderr.strip()}")
            count("checkpoint")
            n += 1
            next_ckpt += period
        p = subprocess.run(["qemu-img", "map", "--output=json", "--image-opts", opts],
                           capture_output=True, text=True)
        if p.returncode != 0:
            error(f"qemu-img map: {p.stderr.strip()}")
        count("qemu-img map (dirty bitmap)")
        stop.wait(1.0)


def usage(pid):
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    with open(f"/proc/{pid}/status") as f:
        st = dict(line.split(":", 1) for line in f)
    return fds, int(st["VmRSS"].split()[0])


def changes(srv, name):
    p = subprocess.run([VOLTRACK, "changes", srv.volume, "--since", name, "--json"],
                       capture_output=True, text=True)
    if not t.check(p.returncode == 0, f"changes --since {name}: {p.stderr.strip()}"):
        return set()
    got = set()
    for e in json.loads(p.stdout)["extents"]:
        got.update(blocks(e["offset"], e["length"]))
    return got


def verify_volume(read, refs, fio_phases, label):
    """The whole volume against the reference, region by region."""
    bad = []
    for k in range(LIBNBD_WRITERS):
        if read(k * REGION, REGION) != refs[k]:
            bad.append(f"libnbd region {k}")
    for k in range(QEMU_IO):
        want = b"".join(bytes([v]) * K4 for v in refs[("qio", k)])
        if read(QIO_BASE + k * REGION, REGION) != want:
            bad.append(f"qemu-io region {k}")
    pats = {p * (K4 // 4): i for i, (_, _, p) in enumerate(fio_phases)}
    last = {}
    for j in range(FIO_JOBS):
        data = read(FIO_BASE + j * FIO_SIZE, FIO_SIZE)
        for b in range(FIO_SIZE // K4):
            blk = bytes(data[b * K4:(b + 1) * K4])
            if blk == bytes(K4):
                continue
            if blk not in pats:
                bad.append(f"fio block {FIO_BASE + j * FIO_SIZE + b * K4}")
                break
            last[FIO_BASE + j * FIO_SIZE + b * K4] = pats[blk]
    gap = [(QEMU_IO * REGION + QIO_BASE, FIO_BASE),
           (FIO_BASE + FIO_JOBS * FIO_SIZE, SIZE)]
    for lo, hi in gap:
        for o in range(lo, hi, 16 * MIB):
            if read(o, min(16 * MIB, hi - o)) != bytes(min(16 * MIB, hi - o)):
                bad.append(f"unwritten range at {o}")
    t.check(not bad, f"{label}: the volume equals the reference (differs: {bad[:6]})")
    return last


def open_sockets(pid):
    """Sockets the server holds now; one that closes while we look is
    simply not counted."""
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            n += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except FileNotFoundError:
            pass
    return n


def main():
    for tool in ("qemu-io", "qemu-img", "fio", "nbdcopy"):
        if not shutil.which(tool):
            print(f"SKIP: {tool} is not installed", flush=True)
            sys.exit(77)
    srv = Server(size=SIZE).start()
    work = srv.dir
    t0 = time.time()
    try:
        pid = srv.proc.pid
        t.equal(subprocess.run([VOLTRACK, "checkpoint", srv.volume, "c0"]).returncode, 0,
                "checkpoint c0")
        checkpoints.append(("c0", 0.0, time.monotonic()))
        idle = usage(pid)
        refs, fio_phases = {}, []
        phase = max(5, int(SECONDS / 4))
        threads = [threading.Thread(target=libnbd_writer, args=(srv, k, refs))
                   for k in range(LIBNBD_WRITERS)]
        threads += [threading.Thread(target=libnbd_reader, args=(srv, k))
                    for k in range(LIBNBD_READERS)]
        threads += [threading.Thread(target=qemu_io_loop, args=(srv, k, refs, work))
                    for k in range(QEMU_IO)]
        end = time.monotonic() + SECONDS
        threads += [threading.Thread(target=fio_loop,
                                     args=(srv, work, phase, fio_phases, end))]
        threads += [threading.Thread(target=nbdcopy_loop, args=(srv, k))
                    for k in range(NBDCOPY)]
        threads += [threading.Thread(target=side_loop, args=(srv,))]
        failures = []

        def guarded(th):
            run = th.run

            def wrapped():
                try:
                    run()
                except Exception as e:  # a client's failure ends the soak as a failure
                    failures.append(f"{th.name}: {e!r}")
                    stop.set()
            th.run = wrapped
        for th in threads:
            guarded(th)
            th.start()
        start = time.monotonic()
        samples = []
        peak_conns = 0
        while time.monotonic() - start < SECONDS and not stop.is_set():
            time.sleep(1)
            samples.append((time.monotonic() - start, *usage(pid)))
            peak_conns = max(peak_conns, open_sockets(pid))
        stop.set()
        for th in threads:
            th.join(timeout=max(60, SECONDS))
        t.check(not any(th.is_alive() for th in threads), "every client finished")
        t.check(not failures, f"clients failed: {failures[:4]}")
        t.check(not errors, f"client checks: {errors[:6]}")
        took = time.monotonic() - start
        deadline = time.time() + 15
        while usage(pid)[0] > idle[0] and time.time() < deadline:
            time.sleep(0.1)
        after = usage(pid)

        loaded = [s for s in samples if s[0] >= SECONDS / 4]
        print(f"soak: {took:.0f} s, {LIBNBD_WRITERS + LIBNBD_READERS} libnbd + {QEMU_IO} "
              f"qemu-io + {FIO_JOBS} fio + {NBDCOPY} nbdcopy connections "
              f"(peak {peak_conns} server sockets incl. listeners)", flush=True)
        for k in sorted(counts):
            print(f"  {k:32s} {counts[k]}", flush=True)
        if loaded:
            r0, r1 = loaded[0][2], loaded[-1][2]
            rmax = max(s[2] for s in loaded)
            print(f"  server RSS under load: {r0} KiB at {loaded[0][0]:.0f} s, {r1} KiB at "
                  f"the end, peak {rmax} KiB; fds {loaded[0][1]} -> {loaded[-1][1]}", flush=True)
            t.check(r1 - r0 <= RSS_TOLERANCE_KIB, f"RSS under load grew by {r1 - r0} KiB "
                    f"(tolerance {RSS_TOLERANCE_KIB})")
        print(f"  server idle before: {idle[0]} fds, {idle[1]} KiB RSS; after: {after[0]} "
              f"fds, {after[1]} KiB RSS", flush=True)
        t.equal(after[0], idle[0], "server descriptors once the clients are gone")
        for key in ("libnbd write", "libnbd trim", "libnbd write-zeroes", "libnbd block-status",
                    "qemu-io write", "fio write", "nbdcopy copy", "checkpoint"):
            t.check(counts.get(key, 0) > 0, f"premise: some {key} ran")

        h = srv.connect()
        last = verify_volume(lambda o, n: h.pread(n, o), refs, fio_phases, "over NBD")
        h.shutdown()

        # I1 and the over-report, per checkpoint, from the test's own log.
        for b_off, phase_i in last.items():
            t0_, t1_, _ = fio_phases[phase_i]
            writes.append((t0_, t1_, b_off, K4))
        worst = 0
        for name, t_req, t_ack in checkpoints:
            must, possible = set(), set()
            for w0, w1, o, n in writes:
                if w0 > t_ack:
                    must.update(blocks(o, n))
                if w1 > t_req:
                    possible.update(blocks(o, n))
            got = changes(srv, name)
            missed = must - got
            over = got - possible
            worst = max(worst, len(over))
            t.check(not missed, f"changes --since {name} misses {len(missed)} block(s) "
                    f"written after it, e.g. {sorted(missed)[:4]}")
            t.equal(len(over), 0, f"changes --since {name}: blocks reported that nothing "
                    f"could have written after it")
            print(f"  since {name}: {len(must)} block(s) surely written after it, "
                  f"{len(possible)} possibly, {len(got)} reported, {len(over)} over",
                  flush=True)

        t.equal(srv.stop(), 0, "clean stop")
        with open(srv.volume, "rb") as f:
            def read_file(o, n):
                f.seek(o)
                return f.read(n)
            verify_volume(read_file, refs, fio_phases, "backing file")
    finally:
        stop.set()
        srv.cleanup()
    print(f"{time.time() - t0:.1f} s", flush=True)
    t.finish()


main()
