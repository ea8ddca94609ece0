/*
 * metaharness: the common body of the four metadata fuzz targets.
 *
 * At start it builds a real history through the library (writes in
 * three epochs, checkpoints "a" and "b", on a 256 MiB volume of 64 KiB
 * blocks: 2 change-map pages, 4 intent regions) and keeps every
 * metadata file of two endings in memory: a clean close, and a crash
 * with intents set.  Its identifiers are fixed, so that seeds stay
 * valid from one process to the next.
 *
 * An input rewrites one file of one ending (fuzz/README.md, "metadata
 * inputs"):
 *
 *   byte 0        bit 0: the crash ending, else the clean one
 *                 bit 1: recompute every block's checksum afterwards
 *                 bit 2: bytes 1-4 (LE) give the file a new length
 *   then patches  u32 LE offset (modulo the length), u8 n, n bytes
 *
 * then the files are put in place and the library reads them as the
 * CLI would: `voltrack check`, an offline tracker_open, a clean close,
 * and a second open.  The oracle (metaref.h reads the same bytes
 * independently) asserts:
 *
 *   - a superblock is refused exactly when it is invalid, with a
 *     format error; any other file never makes the open fail;
 *   - `check` reports every damaged copy the reference finds;
 *   - no checkpoint is reported that the file does not hold, with the
 *     epoch it holds;
 *   - no block is reported unchanged since a checkpoint when the files
 *     say, or leave in doubt, that it may have changed: a damaged map
 *     page, an intent region set, an unreadable or untrustworthy file
 *     (all changed), otherwise the newest whole copy's epoch;
 *   - damage is said (bad pages counted, or a non-clean start);
 *   - after the clean close and a second open, nothing reported
 *     changed has become unchanged, the checkpoints and the generation
 *     are the same, and the start is clean.
 */
#ifndef VOLTRACK_FUZZ_METAHARNESS_H
#define VOLTRACK_FUZZ_METAHARNESS_H

#include <stddef.h>
#include <stdint.h>

enum meta_file {
	META_SUPERBLOCK,
	META_CHANGEMAP,
	META_INTENT,
	META_CHECKPOINTS,
	META_NFILES,
};

void meta_harness_init(void);
void meta_harness_run(enum meta_file target, const uint8_t *data, size_t size);

#endif
