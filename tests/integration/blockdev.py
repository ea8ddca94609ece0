#!/usr/bin/python3
"""A block device as the volume: a loop device over a sparse file.

Exercises the block-device branches (BLKDISCARD, BLKZEROOUT, fallocate
without fallback), checked by reading the device directly.
"""
import errno
import os
import subprocess
import sys
import tempfile

import nbd

from harness import VOLTRACK, Failures, Server

t = Failures()
SIZE = 64 << 20
MIB = 1 << 20

work = tempfile.mkdtemp(prefix="voltrack-blk-")
backing = os.path.join(work, "backing.img")
open(backing, "wb").truncate(SIZE)
try:
    dev = subprocess.run(["losetup", "-f", "--show", backing], capture_output=True,
                         text=True, check=True).stdout.strip()
except (OSError, subprocess.CalledProcessError) as e:
    # Without root or loop devices there is nothing to test; say so loudly.
    print(f"cannot create a loop device ({e}); block-device test not run")
    sys.exit(77)


def read_dev(off, n):
    fd = os.open(dev, os.O_RDONLY)
    try:
        return os.pread(fd, n, off)
    finally:
        os.close(fd)


meta = os.path.join(work, "meta")
srv = None
try:
    r = subprocess.run([VOLTRACK, "init", dev], capture_output=True, text=True)
    t.check(r.returncode != 0 and "--meta" in r.stderr, f"block device needs --meta: {r.stderr}")
    r = subprocess.run([VOLTRACK, "init", dev, "--meta", meta], capture_output=True, text=True)
    t.equal(r.returncode, 0, f"init on a block device: {r.stderr}")
    sb = open(os.path.join(meta, "superblock"), "rb").read()
    t.equal(int.from_bytes(sb[68:72], "little"), 2, "superblock records a block device")

    srv = Server(volume=dev, init=False, extra=["--meta", meta])
    srv.sock = os.path.join(meta, "nbd.sock")
    srv.meta = meta
    srv.start()
    h = nbd.NBD()
    h.add_meta_context("base:allocation")
    h.connect_unix(srv.sock)
    t.equal(h.get_size(), SIZE, "export size is the device size")

    data = os.urandom(4 * MIB)
    h.pwrite(data, 0)
    h.flush()
    t.equal(read_dev(0, 4 * MIB), data, "writes reach the device")

    h.zero(MIB, MIB, nbd.CMD_FLAG_NO_HOLE)         # BLKZEROOUT
    h.zero(65536, 3 * MIB)                          # punch (no fallback), else BLKZEROOUT
    h.flush()
    t.equal(read_dev(MIB, MIB), bytes(MIB), "zero with NO_HOLE reads back zero")
    t.equal(read_dev(3 * MIB, 65536), bytes(65536), "zero that may unmap reads back zero")
    t.equal(read_dev(0, MIB), data[:MIB], "bytes before the zeroed range survive")
    t.equal(read_dev(2 * MIB, MIB), data[2 * MIB:3 * MIB], "bytes between survive")

    try:
        h.zero(MIB, 8 * MIB, nbd.CMD_FLAG_FAST_ZERO)
        t.equal(read_dev(8 * MIB, MIB), bytes(MIB), "fast zero, when it succeeds, zeroes")
    except nbd.Error as e:
        t.equal(e.errnum, errno.ENOTSUP, "fast zero refused with ENOTSUP, never slow")

    h.trim(MIB, 2 * MIB)                            # BLKDISCARD
    t.equal(read_dev(0, MIB), data[:MIB], "discard leaves bytes outside its range")
    ext = []
    h.block_status(SIZE, 0, lambda c, o, e, err: ext.extend(e) or 0)
    t.check(len(ext) >= 2 and ext[1] == 0, "block devices report data in base:allocation")
    h.shutdown()
    t.equal(srv.stop(), 0, "server on a block device stops cleanly")
finally:
    if srv:
        srv.cleanup()  # ends the server if still running, removes its directory
    subprocess.run(["losetup", "-d", dev])
    subprocess.run(["rm", "-rf", work])
t.finish()
