#!/usr/bin/python3
"""Write the seeds of the metadata fuzz targets into fuzz/seeds/FILE/.

Input format (fuzz/metaharness.h): a flags byte (bit 0 crash ending,
bit 1 reseal checksums, bit 2 new length in the next 4 bytes), then
patches of (u32 LE offset, u8 n, n bytes).  Each seed names one field
of doc/format.md and gives it a value a reader must cope with, mostly
with resealed checksums so that the checks behind them are reached.

Usage: fuzz/gen_meta_seeds.py [OUTDIR]
"""
import os
import struct
import sys

CRASH, RESEAL, RESIZE = 1, 2, 4
BLOCK, HDR = 4096, 32


def patch(off, data):
    return struct.pack("<IB", off, len(data)) + data


def seed(flags, *patches, length=None):
    out = bytes([flags])
    if length is not None:
        out = bytes([flags | RESIZE]) + struct.pack("<I", length)
    return out + b"".join(patches)


def u32(v):
    return struct.pack("<I", v)


def u64(v):
    return struct.pack("<Q", v)


SEEDS = {
    "superblock": {
        "unclean": seed(RESEAL, patch(88, u32(0))),
        "untracked": seed(RESEAL, patch(88, u32(3))),
        "version1": seed(RESEAL, patch(8, u32(1))),
        "newer-version": seed(RESEAL, patch(8, u32(3))),
        "granularity-4k": seed(RESEAL, patch(64, u32(4096))),
        "granularity-odd": seed(RESEAL, patch(64, u32(12288))),
        "other-generation": seed(RESEAL, patch(40, b"\x33" * 8)),
        "nil-volume-uuid": seed(RESEAL, patch(24, b"\x00" * 16)),
        "ctime-moved": seed(RESEAL, patch(112, u64(1))),
        "block-device": seed(RESEAL | CRASH, patch(68, u32(2))),
        "huge-volume": seed(RESEAL, patch(56, u64(1 << 62))),
        "bad-checksum": seed(0, patch(200, b"\x01")),
        "short": seed(0, length=100),
    },
    "changemap": {
        "page0-slot0-epoch": seed(RESEAL, patch(BLOCK + HDR + 5, b"\x03")),
        "page0-slot1-newer": seed(RESEAL, patch(2 * BLOCK + 16, u64(99)),
                                  patch(2 * BLOCK + HDR + 7, b"\x02")),
        "page1-torn": seed(CRASH, patch(3 * BLOCK + 600, b"\xff" * 8)),
        "header-nblocks": seed(RESEAL, patch(HDR, u64(4097))),
        "header-entries": seed(RESEAL, patch(HDR + 16, u32(4000))),
        "equal-sequences": seed(RESEAL, patch(BLOCK + 16, u64(2)),
                                patch(2 * BLOCK + 16, u64(2))),
        "wrong-index": seed(RESEAL, patch(3 * BLOCK + 8, u32(0))),
        "truncated": seed(RESEAL, length=3 * BLOCK),
        "extended": seed(RESEAL | CRASH, length=7 * BLOCK),
    },
    "intent": {
        "region-set-clean": seed(RESEAL, patch(HDR + 16, b"\x0f"), patch(BLOCK + HDR + 16, b"\x0f")),
        "region-cleared-crash": seed(CRASH | RESEAL, patch(HDR + 16, b"\x00"),
                                     patch(BLOCK + HDR + 16, b"\x00")),
        "slot0-torn-crash": seed(CRASH, patch(100, b"\x55")),
        "slot1-torn-clean": seed(0, patch(BLOCK + 100, b"\x55")),
        "region-size": seed(CRASH | RESEAL, patch(HDR + 8, u64(32 << 20))),
        "nregions": seed(RESEAL, patch(HDR, u32(8))),
        "quiet-crash": seed(CRASH | RESEAL, patch(HDR + 4, u32(1))),
        "lease-zero": seed(CRASH | RESEAL, patch(HDR + 4024, u64(0)),
                           patch(BLOCK + HDR + 4024, u64(0))),
        "equal-sequences": seed(CRASH | RESEAL, patch(16, u64(7)), patch(BLOCK + 16, u64(7))),
        "truncated": seed(CRASH, length=BLOCK + 10),
    },
    "checkpoints": {
        "open-epoch": seed(RESEAL, patch(HDR + 8, b"\x09"), patch(64 * BLOCK + HDR + 8, b"\x09")),
        "epoch-order": seed(RESEAL, patch(HDR + 16, b"\x02")),
        "bad-name": seed(RESEAL, patch(HDR + 32, b"/")),
        "name-length": seed(RESEAL, patch(HDR + 17, b"\xc8")),
        "count": seed(RESEAL, patch(HDR + 4, u32(255))),
        "blocks-used": seed(RESEAL, patch(HDR, u32(2))),
        "slot1-torn": seed(CRASH, patch(64 * BLOCK + 50, b"\x01")),
        "both-torn": seed(0, patch(50, b"\x01"), patch(64 * BLOCK + 50, b"\x01")),
        "slot0-newer": seed(RESEAL, patch(16, u64(9))),
        "truncated": seed(0, length=64 * BLOCK + 100),
    },
}


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    base = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "seeds")
    n = 0
    for target, seeds in SEEDS.items():
        d = os.path.join(base, target)
        os.makedirs(d, exist_ok=True)
        for name, data in seeds.items():
            with open(os.path.join(d, "gen-" + name), "wb") as f:
                f.write(data)
            n += 1
    print(f"{n} seeds under {base}")


if __name__ == "__main__":
    main()
