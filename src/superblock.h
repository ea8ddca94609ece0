/*
 * superblock: the versioned, checksummed root of a volume's metadata.
 *
 * One 4096-byte little-endian block in META/superblock (layout in
 * doc/format.md).  This module only encodes and decodes; metadir.c does
 * the atomic replace on disk.  Decoding never trusts a field it has not
 * checked: a wrong magic is -EINVAL (not ours), a newer version
 * -EPROTONOSUPPORT, a checksum or range error -EBADMSG.
 */
#ifndef VOLTRACK_SUPERBLOCK_H
#define VOLTRACK_SUPERBLOCK_H

#include <stdint.h>

#include "uuid.h"

#define SB_SIZE 4096
#define SB_MAGIC "VTRKSUPR"
#define SB_VERSION 3
/* From this version on the checkpoint list may carry a numbering record,
 * which older readers would ignore and then misread the change map. */
#define SB_VERSION_NUMBERED 3
/* And checkpoints may be snapshots (entry flags): an older reader would
 * serve the volume without copying the chunks they need. */
#define SB_VERSION_SNAPSHOTS 3

#define SB_MIN_GRANULARITY (4u << 10)
#define SB_MAX_GRANULARITY (64u << 20)
#define SB_DEFAULT_GRANULARITY (64u << 10)

enum sb_volume_kind {
	SB_KIND_FILE = 1,
	SB_KIND_BLOCKDEV = 2,
};

struct superblock {
	uint32_t version;
	uint32_t flags;
	struct vt_uuid volume_uuid;	/* fixed for the life of the metadata */
	struct vt_uuid generation;	/* changes whenever history is lost */
	uint64_t volume_size;		/* bytes */
	uint32_t granularity;		/* bytes per tracked block */
	uint32_t volume_kind;		/* enum sb_volume_kind */
	uint64_t created;		/* unix seconds */
	uint64_t sequence;		/* bumped on every rewrite */
	uint32_t state;			/* SB_STATE_* */
	/* The volume as it was at the last clean close, to detect changes
	 * made while nothing tracked it (regular files only). */
	uint64_t id_size;
	uint64_t id_ino;
	uint64_t id_ctime_ns;
	uint64_t id_taken_ns;		/* when id_* were taken; 0 before version 2 */
};

#define SB_STATE_CLEAN 1u		/* closed cleanly; id_* are valid */
#define SB_STATE_UNTRACKED 2u		/* served without tracking since: doubt all */

/* True for a power of two within [SB_MIN_GRANULARITY, SB_MAX_GRANULARITY]. */
int sb_granularity_valid(uint64_t granularity);

void sb_encode(const struct superblock *sb, uint8_t out[SB_SIZE]);
int sb_decode(const uint8_t in[SB_SIZE], struct superblock *sb);

#endif
