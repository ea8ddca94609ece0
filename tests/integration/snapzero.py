#!/usr/bin/python3
"""Chunks that were zeroes when a snapshot needed their copy.

Their diff-store record says "zeroes" and the slot's data is never
written (doc/format.md, diffstore.map records, flags).  What must hold:
the snapshot still reads exactly what the volume held at its instant, also
when the slot had held another chunk's copy before (a slot freed by a
delete and reused), also after a restart and a kill -9; base:allocation
of the snapshot says such chunks read as zeroes; a store made by an older
voltrack (version 1) is never given such a record, so that older voltrack
can still read it.  And the other way to a chunk no copy was made
for: the volume written while nothing copied (--no-track, a direct
write), after which a snapshot reads its instant or is invalid.

The reference is what this test wrote; the premise (that zero records
were made, or were not) is read from the record file as doc/format.md
lays it out.
"""
import json
import os
import signal
import struct
import sys

sys.path.insert(0, os.path.dirname(__file__))
import nbd  # noqa: E402
from harness import Failures, Server, header_version, map_blocks, read_export, snap_uri, vt  # noqa: E402

F = Failures()
CHUNK = 64 << 10
RECORDS = 8192


def records(srv):
    """(slot, chunk, flags) of every record in diffstore.map."""
    out = []
    with open(os.path.join(srv.meta, "diffstore.map"), "rb") as f:
        f.seek(RECORDS)
        data = f.read()
    for slot in range(len(data) // 64):
        rec = data[slot * 64:(slot + 1) * 64]
        if rec[:4] != b"VTDR":
            continue
        out.append((slot, struct.unpack_from("<Q", rec, 16)[0], rec[13]))
    return out


def store_version(srv, version=None):
    """The record file's header version; with `version`, rewrite it as an
    older voltrack's init would have left it."""
    return header_version(os.path.join(srv.meta, "diffstore.map"), 12, version)


def zero_map(srv, name):
    """The chunks nbdinfo reports as reading zeroes on snapshot/NAME."""
    return map_blocks(snap_uri(srv, name), "base:allocation", 2, CHUNK)


def test_zero_chunks():
    size = 4 << 20
    nchunks = size // CHUNK
    srv = Server(size=size).start()
    try:
        F.equal(store_version(srv), 2, "a new store is version 2")
        h = srv.connect()
        ref = bytearray(size)
        # Even chunks hold data; odd ones zeroes, half of them written
        # as zeroes (allocated), half never written (holes).
        for c in range(0, nchunks, 2):
            block = bytes([c + 1]) * CHUNK
            h.pwrite(block, c * CHUNK)
            ref[c * CHUNK:(c + 1) * CHUNK] = block
        for c in range(1, nchunks, 4):
            h.pwrite(bytes(CHUNK), c * CHUNK)
        h.flush()
        vt("snapshot", srv.volume, "s1")
        # Overwrite all of it: every chunk is copied first.
        for c in range(nchunks):
            h.pwrite(b"\xee" * CHUNK, c * CHUNK)
        h.flush()
        recs = records(srv)
        F.equal(len(recs), nchunks, "every chunk was copied once")
        zeroed = {chunk for _, chunk, flags in recs if flags & 1}
        F.equal(zeroed, set(range(1, nchunks, 2)), "exactly the zero chunks have zero records")
        F.check(read_export(srv, "s1", size) == bytes(ref),
                "the snapshot reads the volume as it was, zeroes included")
        F.check(set(range(1, nchunks, 2)) <= zero_map(srv, "s1"),
                "base:allocation says the chunks copied as zeroes read as zeroes")
        F.check(not (set(range(0, nchunks, 2)) & zero_map(srv, "s1")),
                "and no chunk copied with data")

        # Free every slot, then take a snapshot in which every chunk is
        # zeroes: each of its copies reuses a slot that held data.
        old_slots = {slot for slot, chunk, flags in recs if not flags & 1}
        vt("delete", srv.volume, "s1", "--forget")
        for c in range(nchunks):
            h.pwrite(bytes(CHUNK), c * CHUNK)
        h.flush()
        vt("snapshot", srv.volume, "s2")
        for c in range(nchunks):
            h.pwrite(b"\xdd" * 4096, c * CHUNK)
        h.flush()
        h.shutdown()
        recs2 = [r for r in records(srv) if r[2] & 1]
        F.check({slot for slot, _, _ in recs2} & old_slots,
                f"zero records reuse slots that held data ({len(recs2)} zero records)")
        F.check(read_export(srv, "s2", size) == bytes(size),
                "a reused slot's old data never shows through a zero record")
        srv.stop()
        srv.start()
        F.check(read_export(srv, "s2", size) == bytes(size), "the same after a restart")
        srv.stop(signal.SIGKILL)
        srv.start()
        F.check(read_export(srv, "s2", size) == bytes(size), "and after a kill -9")
    finally:
        srv.stop()
        srv.cleanup()


def test_older_store():
    """A version 1 store (an older voltrack's) keeps copying zeroes."""
    size = 1 << 20
    srv = Server(size=size)
    try:
        vt("snapshot", srv.volume, "make-store")    # offline: creates the store
        vt("delete", srv.volume, "make-store", "--forget")
        F.equal(store_version(srv, 1), 1, "the store reads as version 1")
        srv.start()
        vt("snapshot", srv.volume, "s")
        h = srv.connect()
        for off in range(0, size, CHUNK):
            h.pwrite(b"\x11" * 4096, off)
        h.shutdown()
        recs = records(srv)
        F.equal(len(recs), size // CHUNK, "every chunk was copied")
        F.check(all(flags == 0 for _, _, flags in recs),
                "a version 1 store gets no zero record")
        F.equal(store_version(srv), 1, "and stays version 1")
        F.check(read_export(srv, "s", size) == bytes(size), "the snapshot reads zeroes")
        srv.stop()
        srv.start()
        F.check(read_export(srv, "s", size) == bytes(size), "also after a restart")
    finally:
        srv.stop()
        srv.cleanup()


def test_untracked_change():
    """A volume written while nothing copied for its snapshots (a serve
    --no-track, or a write to the file while no server ran): the next
    tracked start sees it (everything is reported changed), and a
    snapshot must then read its instant or be invalid, never the later
    data.  Chunks never copied (here: zeroes at the snapshot) are read
    from the volume."""
    size = 1 << 20
    for how in ("no-track", "direct"):
        srv = Server(size=size).start()
        try:
            h = srv.connect()
            h.pwrite(b"\x11" * CHUNK, 0)
            h.flush()
            h.shutdown()
            vt("snapshot", srv.volume, "s")
            ref = srv.read_volume()
            F.equal(srv.stop(), 0, f"{how}: clean stop")
            if how == "no-track":
                srv.extra = ["--no-track"]
                srv.start()
                h = srv.connect()
                h.pwrite(b"\x22" * size, 0)
                h.flush()
                h.shutdown()
                srv.stop()
                srv.extra = []
            else:
                with open(srv.volume, "r+b") as f:
                    f.write(b"\x22" * size)
            srv.start()
            state = [c["snapshot"]["state"] for c in
                     json.loads(vt("list", srv.volume, "--json").stdout) if c["name"] == "s"]
            try:
                got = read_export(srv, "s", size)
            except nbd.Error:
                got = None
            F.check(got == ref or (got is None and state == ["invalid"]),
                    f"{how}: the snapshot reads its instant or is invalid "
                    f"(state {state}, reads {'EIO' if got is None else got[CHUNK:CHUNK + 2]})")
        finally:
            srv.stop()
            srv.cleanup()


for test in (test_zero_chunks, test_older_store, test_untracked_change):
    print(f"# {test.__name__}", flush=True)
    test()
F.finish()
