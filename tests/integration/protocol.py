#!/usr/bin/python3
"""NBD options, commands and error paths, driven by libnbd.

Each check states the rule from the NBD specification it enforces.
Data is compared with a reference bytearray kept here, or with the
backing file read directly.
"""
import errno
import os
import random
import signal

import nbd

from harness import Failures, Server

t = Failures()
SIZE = 64 << 20
MIB = 1 << 20


def nbd_errno(fn, *args):
    """Run a libnbd call; return 0 or the errno it failed with."""
    try:
        fn(*args)
        return 0
    except nbd.Error as e:
        return e.errnum or -1


def test_options(srv):
    # LIST, INFO, LIST_META_CONTEXT and ABORT in negotiation mode.
    h = nbd.NBD()
    h.set_opt_mode(True)
    h.connect_unix(srv.sock)
    names = []
    h.opt_list(lambda name, desc: names.append(name))
    t.equal(names, [""], "LIST names exactly the live export")

    h.set_export_name("")
    h.opt_info()
    t.equal(h.get_size(), SIZE, "INFO reports the size")
    t.equal(h.get_block_size(nbd.SIZE_MAXIMUM), 32 * MIB, "INFO advertises BLOCK_SIZE")
    t.check(h.can_multi_conn(), "INFO advertises CAN_MULTI_CONN")

    ctxs = []
    h.opt_list_meta_context(lambda name: ctxs.append(name))
    t.equal(ctxs, ["base:allocation"], "LIST_META_CONTEXT with no query lists all")
    ctxs.clear()
    h.add_meta_context("base:")
    h.opt_list_meta_context(lambda name: ctxs.append(name))
    t.equal(ctxs, ["base:allocation"], "namespace query 'base:' lists base:allocation")
    ctxs.clear()
    h.clear_meta_contexts()
    h.add_meta_context("x-unknown:thing")
    h.opt_list_meta_context(lambda name: ctxs.append(name))
    t.equal(ctxs, [], "queries in an unknown namespace are ignored")

    h.set_export_name("no-such-export")
    t.check(nbd_errno(h.opt_info) != 0, "INFO on an unknown export fails")
    # ...and negotiation goes on: GO on the right export still works.
    h.set_export_name("")
    h.clear_meta_contexts()
    h.add_meta_context("base:allocation")
    h.opt_go()
    t.check(h.can_meta_context("base:allocation"), "GO after a failed INFO works")
    h.shutdown()

    h = nbd.NBD()
    h.set_opt_mode(True)
    h.connect_unix(srv.sock)
    h.opt_abort()
    t.check(h.aio_is_closed(), "ABORT closes the negotiation")

    h = nbd.NBD()
    h.set_export_name("snapshot/none")
    t.check(nbd_errno(h.connect_unix, srv.sock) != 0, "GO on an unknown export fails")

    # Old-style EXPORT_NAME negotiation (what older clients do).
    h = nbd.NBD()
    h.set_opt_mode(False)
    h.set_handshake_flags(0)  # no fixed newstyle: forces NBD_OPT_EXPORT_NAME
    h.set_request_structured_replies(False)
    h.connect_unix(srv.sock)
    t.equal(h.get_size(), SIZE, "EXPORT_NAME negotiation works")
    h.pwrite(b"x" * 512, 0)
    t.equal(h.pread(512, 0), b"x" * 512, "I/O after EXPORT_NAME")
    h.shutdown()


def test_simple_replies(srv):
    # What the Linux kernel client does: GO without structured replies.
    h = srv.connect(structured=False, contexts=())
    t.check(not h.get_structured_replies_negotiated(), "structured replies not used")
    data = os.urandom(3 * 4096 + 17)
    h.pwrite(data, 5 * MIB + 3)
    t.equal(h.pread(len(data), 5 * MIB + 3), data, "simple-reply read after write")
    t.equal(srv.read_volume(5 * MIB + 3, len(data)), data, "backing file has it")
    h.set_strict_mode(0)
    t.equal(nbd_errno(h.pread, 512, SIZE), errno.EINVAL, "simple reply carries EINVAL")
    h.shutdown()


def test_commands(srv):
    h = srv.connect()
    ref = bytearray(srv.read_volume(0, SIZE))

    data = os.urandom(MIB)
    h.pwrite(data, 10 * MIB, nbd.CMD_FLAG_FUA)
    ref[10 * MIB:11 * MIB] = data
    h.flush()
    t.equal(srv.read_volume(10 * MIB, MIB), data, "FUA write reaches the backing file")

    h.zero(65536, 10 * MIB + 4096, nbd.CMD_FLAG_NO_HOLE)
    ref[10 * MIB + 4096:10 * MIB + 4096 + 65536] = bytes(65536)
    h.zero(4096, 10 * MIB + 512 * 1024)
    ref[10 * MIB + 512 * 1024:10 * MIB + 516 * 1024] = bytes(4096)
    h.zero(MIB, 20 * MIB, nbd.CMD_FLAG_FAST_ZERO)
    ref[20 * MIB:21 * MIB] = bytes(MIB)
    h.cache(MIB, 0)
    h.flush()
    t.equal(srv.read_volume(0, SIZE), bytes(ref), "write, zero and cache match the reference")

    # Trim may drop data but nothing outside its range.
    h.trim(MIB, 30 * MIB)
    before, after = srv.read_volume(30 * MIB - 4096, 4096), srv.read_volume(31 * MIB, 4096)
    t.equal(before, bytes(ref[30 * MIB - 4096:30 * MIB]), "trim leaves bytes before it")
    t.equal(after, bytes(ref[31 * MIB:31 * MIB + 4096]), "trim leaves bytes after it")

    # Maximum-size request (the CVE-2020-10761 class) in both directions.
    big = os.urandom(32 * MIB)
    h.pwrite(big, 32 * MIB)
    t.equal(h.pread(32 * MIB, 32 * MIB), big, "32 MiB write and read")
    h.shutdown()


def test_errors(srv):
    h = srv.connect()
    h.set_strict_mode(0)  # let requests the client would refuse go out
    t.equal(nbd_errno(h.pread, 512, SIZE - 256), errno.EINVAL, "read past the end: EINVAL")
    t.equal(nbd_errno(h.pwrite, b"z" * 512, SIZE - 256), errno.ENOSPC,
            "write past the end: ENOSPC")
    t.equal(nbd_errno(h.zero, 4096, SIZE), errno.ENOSPC, "zero past the end: ENOSPC")
    t.equal(nbd_errno(h.trim, 4096, SIZE), errno.EINVAL, "trim past the end: EINVAL")
    t.equal(nbd_errno(h.pread, 512, (1 << 64) - 256), errno.EINVAL, "offset+length wraps: EINVAL")
    t.equal(nbd_errno(h.pread, 32 * MIB + 1, 0), errno.EINVAL, "read over max payload: EINVAL")
    t.equal(nbd_errno(h.pwrite, bytes(33 * MIB), 0), errno.EINVAL,
            "write over max payload: EINVAL, payload discarded")
    t.equal(nbd_errno(h.pread, 512, 0, nbd.CMD_FLAG_NO_HOLE), errno.EINVAL,
            "NO_HOLE on READ: EINVAL")
    t.equal(nbd_errno(h.pread, 512, 0, nbd.CMD_FLAG_REQ_ONE), errno.EINVAL,
            "REQ_ONE on READ: EINVAL")
    t.equal(nbd_errno(h.pwrite, b"q" * 512, 0, nbd.CMD_FLAG_DF), errno.EINVAL,
            "DF on WRITE: EINVAL")
    t.equal(nbd_errno(h.pread, 512, 0, 1 << 9), errno.EINVAL, "unknown flag: EINVAL")
    t.equal(nbd_errno(h.block_status, 0, 0, lambda *a: 0), errno.EINVAL,
            "zero-length BLOCK_STATUS: EINVAL")
    t.equal(h.pread(0, 0), b"", "zero-length read succeeds")
    # The connection survives all of that: the volume is untouched.
    t.equal(srv.read_volume(0, 4096), h.pread(4096, 0), "connection still consistent")
    # An unexpected magic on the wire cannot be resynchronised: but the
    # server's other clients must not notice (tested in hostile.py).
    h.shutdown()


def seek_map(path, off, length):
    """(length, flags) runs from the filesystem itself."""
    fd = os.open(path, os.O_RDONLY)
    runs, end = [], off + length
    try:
        while off < end:
            try:
                d = os.lseek(fd, off, os.SEEK_DATA)
            except OSError:
                d = end
            if d > off:
                runs.append((min(d, end) - off, 3))
                off = min(d, end)
                continue
            hole = os.lseek(fd, off, os.SEEK_HOLE)
            runs.append((min(hole, end) - off, 0))
            off = min(hole, end)
    finally:
        os.close(fd)
    return runs


def test_block_status(srv):
    h = srv.connect()
    h.trim(SIZE - 40 * MIB, 40 * MIB)  # leave holes to find
    h.pwrite(os.urandom(8192), 50 * MIB)
    h.flush()
    got = []

    def collect(ctx, offset, entries, err):
        t.equal(ctx, "base:allocation", "extent context name")
        got.extend(zip(entries[0::2], entries[1::2]))
        return 0

    off = 0
    while off < SIZE:
        before = len(got)
        h.block_status(SIZE - off, off, collect)
        off += sum(length for length, _ in got[before:])
    merged = []
    for length, flags in got:
        if merged and merged[-1][1] == flags:
            merged[-1] = (merged[-1][0] + length, flags)
        else:
            merged.append((length, flags))
    t.equal(merged, seek_map(srv.volume, 0, SIZE), "base:allocation equals SEEK_DATA/SEEK_HOLE")

    one = []
    h.block_status(SIZE, 0, lambda c, o, e, err: one.append(list(e)) or 0, nbd.CMD_FLAG_REQ_ONE)
    t.check(len(one) == 1 and len(one[0]) == 2 and 0 < one[0][0] <= SIZE,
            f"REQ_ONE gives exactly one extent: {one}")
    h.shutdown()


def test_multi_conn(srv):
    # Pipelined writes on four connections; FLUSH on one of them; all
    # acknowledged data must be in the volume.
    hs = [srv.connect() for _ in range(4)]
    rnd = random.Random(1)
    expect = {}
    cookies = []
    for i in range(256):
        h = hs[i % 4]
        off = rnd.randrange(0, SIZE // 4096) * 4096
        buf = nbd.Buffer.from_bytearray(bytearray(os.urandom(4096)))
        expect[off] = buf  # later writes to one offset win only if ordered
        cookies.append((h, h.aio_pwrite(buf, off), off, buf))
    for h in hs:
        while h.aio_in_flight() > 0:
            h.poll(-1)
    for h, c, off, buf in cookies:
        h.aio_command_completed(c)
    hs[3].flush()
    # Same offset may have been written by two connections concurrently;
    # the volume must hold one of the acknowledged versions.
    versions = {}
    for h, c, off, buf in cookies:
        versions.setdefault(off, []).append(buf.to_bytearray())
    bad = [off for off, vs in versions.items() if srv.read_volume(off, 4096) not in vs]
    t.equal(bad, [], "every acknowledged write is in the volume after FLUSH on another connection")
    data = hs[0].pread(4096, next(iter(versions)))
    t.check(data in versions[next(iter(versions))], "another connection reads it back")
    for h in hs:
        h.shutdown()


def test_out_of_order(srv):
    # Many requests in flight on one connection, mixed sizes, completing
    # in any order; each read must return what the reference holds.
    h = srv.connect()
    ref = bytearray(srv.read_volume(0, SIZE))
    rnd = random.Random(2)
    region = list(range(0, 48 * MIB, 64 * 1024))
    rnd.shuffle(region)
    writes = []
    for off in region[:200]:
        n = rnd.choice([512, 4096, 65536])
        data = os.urandom(n)
        ref[off:off + n] = data
        writes.append(h.aio_pwrite(data, off))
    while h.aio_in_flight() > 0:
        h.poll(-1)
    reads = []
    for off in region[:200]:
        buf = nbd.Buffer(65536)
        reads.append((off, buf, h.aio_pread(buf, off)))
    while h.aio_in_flight() > 0:
        h.poll(-1)
    mism = [off for off, buf, c in reads if buf.to_bytearray() != ref[off:off + 65536]]
    t.equal(mism, [], "pipelined reads match the reference")
    h.shutdown()


def test_read_only():
    srv = Server(size=SIZE, extra=["--read-only"]).start()
    try:
        h = srv.connect()
        t.check(h.is_read_only(), "--read-only export says READ_ONLY")
        h.set_strict_mode(0)
        t.equal(nbd_errno(h.pwrite, b"w" * 512, 0), errno.EPERM, "write to read-only: EPERM")
        t.equal(nbd_errno(h.trim, 512, 0), errno.EPERM, "trim on read-only: EPERM")
        t.equal(nbd_errno(h.zero, 512, 0), errno.EPERM, "zero on read-only: EPERM")
        t.equal(h.pread(512, 0), bytes(512), "reads still work")
        t.equal(srv.read_volume(0, 512), bytes(512), "volume untouched")
        h.shutdown()
        t.equal(srv.stop(), 0, "read-only server stops cleanly")
    finally:
        srv.cleanup()


def test_clean_shutdown():
    # SIGTERM with writes in flight: every acknowledged write must be in
    # the volume, unacknowledged ones get an error or a closed socket,
    # and the server exits 0.
    srv = Server(size=SIZE).start()
    try:
        h = srv.connect()
        # One write acknowledged before the signal, so that the check
        # below can never pass on an empty set.
        first = bytes([0xee]) * 65536
        h.pwrite(first, 64 * 65536)
        pending = []
        for i in range(64):
            data = bytes([i + 1]) * 65536
            buf = nbd.Buffer.from_bytearray(bytearray(data))
            pending.append((i * 65536, data, buf, h.aio_pwrite(buf, i * 65536)))
        srv.proc.send_signal(signal.SIGTERM)
        acked = 0
        try:
            while h.aio_in_flight() > 0:
                h.poll(1000)
        except nbd.Error:
            pass
        for off, data, buf, c in pending:
            try:
                if h.aio_command_completed(c):
                    acked += 1
                    t.equal(srv.read_volume(off, len(data)), data, f"acknowledged write at {off}")
            except nbd.Error:
                pass
        t.equal(srv.read_volume(64 * 65536, len(first)), first, "write acknowledged before SIGTERM")
        print(f"clean shutdown: {acked} of 64 in-flight writes acknowledged, all on disk")
        t.equal(srv.stop(), 0, "server exits 0 after SIGTERM")
        t.check("stopped cleanly" in srv.log_text(), "log says it stopped cleanly")
        t.check(not os.path.exists(srv.sock), "socket file removed")
    finally:
        srv.cleanup()


main = Server(size=SIZE).start()
try:
    test_options(main)
    test_simple_replies(main)
    test_commands(main)
    test_errors(main)
    test_block_status(main)
    test_multi_conn(main)
    test_out_of_order(main)
    t.check(main.alive(), "server alive after all of it")
    t.equal(main.stop(), 0, "server exits 0")
finally:
    main.cleanup()
test_read_only()
test_clean_shutdown()
t.finish()
