/*
 * changemap: the epoch in which each block was last written.
 *
 * One byte per block of `granularity` bytes.  Epoch 0 means "not written
 * since the map began"; a checkpoint closes epoch e, and a block changed
 * since that checkpoint exactly when its epoch is greater than e.  Marks
 * are relaxed atomic stores, so any number of threads may mark while
 * another reads; a block is marked only when its epoch actually changes,
 * which keeps rewrites of hot blocks free of shared-cache-line traffic.
 *
 * The map is cut into pages of CM_PAGE_ENTRIES blocks, the unit the
 * persistent copy (mapfile.c) writes; marking a page flags it dirty.
 */
#ifndef VOLTRACK_CHANGEMAP_H
#define VOLTRACK_CHANGEMAP_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "metablock.h"

#define CM_PAGE_ENTRIES MB_PAYLOAD
#define CM_MAX_EPOCH 255

struct changemap {
	uint64_t volume_size;
	uint64_t nblocks;
	unsigned gran_shift;
	uint32_t npages;
	_Atomic uint8_t *epoch;
	atomic_bool *page_dirty;
};

int changemap_init(struct changemap *cm, uint64_t volume_size, uint32_t granularity);
void changemap_free(struct changemap *cm);

/* Raise every block touched by [off, off+len) to at least epoch e. */
void changemap_mark(struct changemap *cm, uint64_t off, uint64_t len, uint8_t e);
/* Raise every block of a page (or the whole map) to at least e. */
void changemap_raise_page(struct changemap *cm, uint32_t page, uint8_t e);
void changemap_raise_all(struct changemap *cm, uint8_t e);

/*
 * Starting at byte off (< volume size), the length of the run, at most
 * max_len bytes and ending at a block boundary or the volume's end,
 * whose blocks all agree on "epoch > since"; that answer goes in
 * *changed.  The run always covers at least the block holding off.
 */
uint64_t changemap_run(const struct changemap *cm, uint64_t off, uint64_t max_len,
		       uint8_t since, bool *changed);

/* For every epoch e, the bytes of the volume changed since e, from one
 * pass over the map (a partial last block counts its real size). */
void changemap_changed_since(const struct changemap *cm, uint64_t bytes[256]);

static inline uint32_t changemap_page_blocks(const struct changemap *cm, uint32_t page)
{
	uint64_t first = (uint64_t)page * CM_PAGE_ENTRIES;
	uint64_t left = cm->nblocks - first;
	return left < CM_PAGE_ENTRIES ? (uint32_t)left : CM_PAGE_ENTRIES;
}

#endif
