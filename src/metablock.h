/*
 * metablock: the 4096-byte checksummed blocks every metadata file but
 * the superblock is made of, and full-length positional file I/O.
 *
 * A block starts with a 32-byte header: magic (8), index (4), CRC-32C of
 * the whole block with this field zero (4), sequence (8) and the
 * generation tag (8, the first bytes of the generation UUID).  A block
 * from another file, another position, another history or a torn write
 * fails mb_check().  Files that need atomic replacement keep two slots
 * per block and write the older one; readers take the valid slot with
 * the higher sequence.
 */
#ifndef VOLTRACK_METABLOCK_H
#define VOLTRACK_METABLOCK_H

#include <stddef.h>
#include <stdint.h>

#include "uuid.h"

#define MB_SIZE 4096
#define MB_HEADER 32
#define MB_PAYLOAD (MB_SIZE - MB_HEADER)

uint64_t mb_gen_tag(const struct vt_uuid *generation);

void mb_seal(uint8_t blk[MB_SIZE], const char magic[8], uint32_t index,
	     uint64_t seq, uint64_t gen_tag);

/* 0 when valid, filling *seq; -EBADMSG otherwise. */
int mb_check(const uint8_t blk[MB_SIZE], const char magic[8], uint32_t index,
	     uint64_t gen_tag, uint64_t *seq);

/* Whole-length pread/pwrite: -EBADMSG for a short read, else -errno. */
int file_pread_full(int fd, void *buf, size_t len, uint64_t off);
int file_pwrite_full(int fd, const void *buf, size_t len, uint64_t off);

#endif
