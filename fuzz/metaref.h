/*
 * metaref: an independent reading of the on-disk formats, for the
 * metadata fuzz targets' oracle.
 *
 * Written from doc/format.md alone, sharing no code with src/ (it has
 * its own CRC-32C), so that a reader bug in the library and the same
 * bug here cannot cancel out.  It answers what a correct reader must
 * conclude from given bytes: which slots are whole, which copy is the
 * newest, and what each says.  The harness turns that into the least
 * a tracker must report as changed.
 */
#ifndef VOLTRACK_FUZZ_METAREF_H
#define VOLTRACK_FUZZ_METAREF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define REF_BLOCK 4096u
#define REF_PAYLOAD (REF_BLOCK - 32u)
#define REF_MAX_CKPT 254u

uint32_t ref_crc32c(uint32_t crc, const uint8_t *p, size_t n);

/* Recompute the checksum of every whole block: the superblock's at 16,
 * a metadata block's at 12.  Lets the fuzzer reach the checks behind it. */
void ref_reseal_superblock(uint8_t *file, size_t len);
void ref_reseal_blocks(uint8_t *file, size_t len);

struct ref_sb {
	bool ok;
	uint32_t version, granularity, kind, state;
	uint8_t volume_uuid[16], generation[16];
	uint64_t volume_size, id_size, id_ino, id_ctime;
};

void ref_superblock(const uint8_t *file, size_t len, struct ref_sb *out);

/* The geometry a superblock implies. */
uint64_t ref_nblocks(const struct ref_sb *sb);
uint32_t ref_npages(const struct ref_sb *sb);
void ref_intent_geometry(const struct ref_sb *sb, uint64_t *region, uint32_t *nregions);

/* One 4096-byte metadata block at index `index` of file: whole and ours? */
bool ref_block(const uint8_t *file, size_t len, size_t block, const char magic[8],
	       uint32_t index, const uint8_t gen[8], uint64_t *seq);

/* changemap: the header, then per page whether each slot is whole. */
struct ref_page {
	bool ok[2];
	uint64_t seq[2];
	const uint8_t *payload[2];
};

bool ref_map_header(const uint8_t *file, size_t len, const struct ref_sb *sb);
void ref_map_page(const uint8_t *file, size_t len, const struct ref_sb *sb, uint32_t page,
		  struct ref_page *out);

/* intent: each slot whole and of this geometry; its bitmap. */
struct ref_intent {
	bool ok[2];
	uint64_t seq[2];
	const uint8_t *bitmap[2];	/* nregions bits */
	uint32_t nregions;
	uint64_t region;
};

void ref_intent(const uint8_t *file, size_t len, const struct ref_sb *sb, struct ref_intent *out);

/* checkpoints: each slot whole and well-formed; its list. */
struct ref_ckpt {
	char name[201];
	uint8_t epoch;
};

struct ref_ckpt_slot {
	bool ok;
	uint64_t seq;
	uint32_t n;
	uint8_t open_epoch;
	struct ref_ckpt items[REF_MAX_CKPT];
};

void ref_checkpoints(const uint8_t *file, size_t len, const struct ref_sb *sb,
		     struct ref_ckpt_slot out[2]);

#endif
