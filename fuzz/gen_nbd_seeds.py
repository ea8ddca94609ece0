#!/usr/bin/python3
"""Write the generated seeds of fuzz_nbd into fuzz/seeds/nbd/.

Each seed is what a client sends after the server's greeting: client
flags, options, and (once GO or EXPORT_NAME succeeds) requests, ending
with DISC.  Together they exercise every option and every command, with
each flag on the command it belongs to and a few it does not, against
the exports fuzz_nbd serves ("" tracked, "ro" read-only, 1 MiB,
checkpoints "a" and "b").  Deterministic: rerunning rewrites the same
files.  Seeds recorded from real clients come from record_nbd_seeds.py.

Usage: fuzz/gen_nbd_seeds.py [OUTDIR]
"""
import os
import struct
import sys

IHAVEOPT = 0x49484156454F5054
REQ = 0x25609513
SIZE = 1 << 20

OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_STARTTLS, OPT_INFO, OPT_GO = 1, 2, 3, 5, 6, 7
OPT_STRUCTURED, OPT_LIST_META, OPT_SET_META, OPT_EXTENDED = 8, 9, 10, 11
READ, WRITE, DISC, FLUSH, TRIM, CACHE, WZ, BS = 0, 1, 2, 3, 4, 5, 6, 7
FUA, NO_HOLE, DF, REQ_ONE, FAST_ZERO = 1, 2, 4, 8, 16
INFO_EXPORT, INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE = 0, 1, 2, 3


def opt(code, data=b""):
    return struct.pack(">QII", IHAVEOPT, code, len(data)) + data


def s32(b):
    return struct.pack(">I", len(b)) + b


def info_go(code, name=b"", infos=()):
    return opt(code, s32(name) + struct.pack(">H", len(infos)) +
               b"".join(struct.pack(">H", i) for i in infos))


def meta(code, name=b"", queries=()):
    return opt(code, s32(name) + struct.pack(">I", len(queries)) +
               b"".join(s32(q) for q in queries))


class Cookies:
    def __init__(self):
        self.n = 0

    def req(self, typ, off=0, length=0, flags=0, data=b""):
        self.n += 1
        return struct.pack(">IHHQQI", REQ, flags, typ, self.n, off, length) + data


def every_command(c, structured):
    """One of each command, with the flags it may carry."""
    out = [
        c.req(WRITE, 0, 4096, 0, b"\x11" * 4096),
        c.req(WRITE, 8192, 512, FUA, b"\x22" * 512),
        c.req(READ, 0, 8192),
        c.req(READ, SIZE - 4096, 4096, DF if structured else 0),
        c.req(FLUSH),
        c.req(TRIM, 65536, 65536),
        c.req(TRIM, 131072, 4096, FUA),
        c.req(WZ, 196608, 65536),
        c.req(WZ, 262144, 8192, NO_HOLE),
        c.req(WZ, 327680, 4096, FAST_ZERO),
        c.req(WZ, 331776, 4096, FUA | NO_HOLE),
        c.req(CACHE, 0, SIZE),
    ]
    if structured:
        out += [c.req(BS, 0, SIZE), c.req(BS, 4096, 65536, REQ_ONE),
                c.req(BS, SIZE - 1, 1)]
    return out


def write_seeds(outdir):
    seeds = {}
    ctx_all = (b"base:allocation", b"qemu:dirty-bitmap:a", b"qemu:dirty-bitmap:b")

    c = Cookies()
    seeds["export-name-simple"] = (struct.pack(">I", 3) + opt(OPT_EXPORT_NAME, b"") +
                                   b"".join(every_command(c, False)) + c.req(DISC))

    c = Cookies()
    seeds["export-name-zeroes"] = (struct.pack(">I", 1) + opt(OPT_EXPORT_NAME, b"") +
                                   c.req(READ, 0, 512) + c.req(DISC))

    c = Cookies()
    seeds["unfixed-export-name"] = (struct.pack(">I", 0) + opt(OPT_EXPORT_NAME, b"") +
                                    c.req(READ, 0, 512) + c.req(DISC))

    c = Cookies()
    seeds["go-structured-bitmaps"] = (
        struct.pack(">I", 3) + opt(OPT_STRUCTURED) +
        meta(OPT_LIST_META, b"", ()) +
        meta(OPT_LIST_META, b"", (b"qemu:", b"qemu:dirty-bitmap:", b"base:")) +
        meta(OPT_SET_META, b"", ctx_all) +
        info_go(OPT_GO, b"", (INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE)) +
        b"".join(every_command(c, True)) + c.req(DISC))

    c = Cookies()
    seeds["go-simple"] = (struct.pack(">I", 3) + info_go(OPT_GO, b"", ()) +
                          b"".join(every_command(c, False)) + c.req(DISC))

    c = Cookies()
    seeds["options-then-go"] = (
        struct.pack(">I", 3) + opt(OPT_LIST) + opt(OPT_LIST, b"x") +
        info_go(OPT_INFO, b"", (INFO_EXPORT, INFO_NAME, INFO_BLOCK_SIZE)) +
        info_go(OPT_INFO, b"ro", (INFO_DESCRIPTION,)) +
        info_go(OPT_INFO, b"nonesuch", ()) +
        opt(OPT_INFO, b"\x00\x00\x00\x10") +
        opt(OPT_STARTTLS) + opt(OPT_EXTENDED) + opt(42, b"junk") +
        meta(OPT_SET_META, b"", ctx_all) +  # before STRUCTURED_REPLY: refused
        opt(OPT_STRUCTURED, b"x") + opt(OPT_STRUCTURED) +
        meta(OPT_SET_META, b"", (b"qemu:dirty-bitmap:b", b"qemu:dirty-bitmap:b",
                                 b"qemu:dirty-bitmap:nonesuch", b"other:thing")) +
        meta(OPT_LIST_META, b"ro", ()) +
        info_go(OPT_GO, b"", ()) +
        c.req(BS, 0, SIZE) + c.req(BS, 0, SIZE, REQ_ONE) + c.req(DISC))

    c = Cookies()
    seeds["go-read-only"] = (
        struct.pack(">I", 3) + opt(OPT_STRUCTURED) +
        meta(OPT_SET_META, b"ro", (b"base:allocation", b"qemu:dirty-bitmap:a")) +
        info_go(OPT_GO, b"ro", (INFO_BLOCK_SIZE,)) +
        b"".join(every_command(c, True)) + c.req(DISC))

    c = Cookies()
    seeds["contexts-dropped-by-go"] = (
        struct.pack(">I", 3) + opt(OPT_STRUCTURED) +
        meta(OPT_SET_META, b"ro", ctx_all) + info_go(OPT_GO, b"", ()) +
        c.req(BS, 0, 4096) + c.req(READ, 0, 4096) + c.req(DISC))

    c = Cookies()
    seeds["request-errors"] = (
        struct.pack(">I", 3) + opt(OPT_STRUCTURED) +
        meta(OPT_SET_META, b"", (b"qemu:dirty-bitmap:a",)) + info_go(OPT_GO, b"", ()) +
        c.req(READ, SIZE, 4096) +                     # past the end
        c.req(WRITE, SIZE - 512, 1024, 0, b"\x33" * 1024) +  # past the end, payload dropped
        c.req(READ, 0, (32 << 20) + 1) +              # over the payload limit
        c.req(READ, 0, 4096, FAST_ZERO) +             # flag on the wrong command
        c.req(WRITE, 0, 16, REQ_ONE, b"\x44" * 16) +
        c.req(BS, 0, 4096, DF) +
        c.req(TRIM, 0xFFFFFFFFFFFFF000, 8192) +       # wraps past 2^64
        c.req(WZ, 0, 0) + c.req(READ, 0, 0) +
        c.req(99, 0, 0) +                             # unknown command
        c.req(FLUSH, 0, 0, 0x8000) +                  # unknown flag
        c.req(BS, 0, 0xFFFFFFFF) +
        c.req(DISC))

    c = Cookies()
    seeds["pipelined-writes"] = (
        struct.pack(">I", 3) + opt(OPT_STRUCTURED) +
        meta(OPT_SET_META, b"", ctx_all) + info_go(OPT_GO, b"", ()) +
        b"".join(c.req(WRITE, i * 65536, 1024, FUA if i % 3 == 0 else 0,
                       bytes([i]) * 1024) for i in range(8)) +
        b"".join(c.req(READ, i * 65536, 65536) for i in range(8)) +
        c.req(FLUSH) + c.req(BS, 0, SIZE) + c.req(DISC))

    seeds["abort"] = struct.pack(">I", 3) + opt(OPT_LIST) + opt(OPT_ABORT)
    seeds["bad-client-flags"] = struct.pack(">I", 0x80000003)
    seeds["long-option"] = struct.pack(">I", 3) + struct.pack(">QII", IHAVEOPT, OPT_GO, 0xFFFFFFFF)
    c = Cookies()
    seeds["no-disc"] = (struct.pack(">I", 3) + info_go(OPT_GO, b"", ()) +
                        c.req(WRITE, 4096, 4096, 0, b"\x55" * 100))  # cut off mid-payload

    os.makedirs(outdir, exist_ok=True)
    for name, data in seeds.items():
        with open(os.path.join(outdir, "gen-" + name), "wb") as f:
            f.write(data)
    return len(seeds)


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "seeds", "nbd")
    print(f"{write_seeds(out)} seeds in {out}")
