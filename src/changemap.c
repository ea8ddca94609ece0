#include "changemap.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

int changemap_init(struct changemap *cm, uint64_t volume_size, uint32_t granularity)
{
	memset(cm, 0, sizeof(*cm));
	cm->volume_size = volume_size;
	cm->gran_shift = (unsigned)__builtin_ctz(granularity);
	cm->nblocks = (volume_size + granularity - 1) >> cm->gran_shift;
	cm->npages = (uint32_t)((cm->nblocks + CM_PAGE_ENTRIES - 1) / CM_PAGE_ENTRIES);
	cm->epoch = calloc(cm->nblocks ? cm->nblocks : 1, 1);
	cm->page_dirty = calloc(cm->npages ? cm->npages : 1, sizeof(*cm->page_dirty));
	if (!cm->epoch || !cm->page_dirty) {
		changemap_free(cm);
		return -ENOMEM;
	}
	return 0;
}

void changemap_free(struct changemap *cm)
{
	free((void *)cm->epoch);
	free(cm->page_dirty);
	cm->epoch = NULL;
	cm->page_dirty = NULL;
}

/*
 * Raise one block's epoch to at least e; true when it changed.  Marks
 * race with each other across a checkpoint: a writer that loaded the old
 * open epoch may store after another writer stored the new one.  A plain
 * store would then lower the block below the checkpoint and hide the
 * second write, so every store is an atomic maximum.
 */
static bool raise_block(_Atomic uint8_t *slot, uint8_t e)
{
	uint8_t cur = atomic_load_explicit(slot, memory_order_relaxed);

	while (cur < e)
		if (atomic_compare_exchange_weak_explicit(slot, &cur, e, memory_order_relaxed,
							  memory_order_relaxed)) {
			return true;
		}
	return false;
}

void changemap_mark(struct changemap *cm, uint64_t off, uint64_t len, uint8_t e)
{
	if (len == 0 || off >= cm->volume_size)
		return;
	uint64_t first = off >> cm->gran_shift;
	uint64_t last = (off + len - 1) >> cm->gran_shift;
	uint32_t dirty_page = UINT32_MAX;

	if (last >= cm->nblocks)
		last = cm->nblocks - 1;
	for (uint64_t b = first; b <= last; b++) {
		if (!raise_block(&cm->epoch[b], e))
			continue;
		uint32_t page = (uint32_t)(b / CM_PAGE_ENTRIES);
		if (page != dirty_page) {
			/* Release: whoever clears this flag sees the mark. */
			atomic_store_explicit(&cm->page_dirty[page], true, memory_order_release);
			dirty_page = page;
		}
	}
}

void changemap_raise_page(struct changemap *cm, uint32_t page, uint8_t e)
{
	uint64_t first = (uint64_t)page * CM_PAGE_ENTRIES;
	uint32_t n = changemap_page_blocks(cm, page);

	for (uint32_t i = 0; i < n; i++)
		raise_block(&cm->epoch[first + i], e);
	atomic_store_explicit(&cm->page_dirty[page], true, memory_order_release);
}

void changemap_raise_all(struct changemap *cm, uint8_t e)
{
	for (uint32_t p = 0; p < cm->npages; p++)
		changemap_raise_page(cm, p, e);
}

uint64_t changemap_run(const struct changemap *cm, uint64_t off, uint64_t max_len,
		       uint8_t since, bool *changed)
{
	uint64_t b = off >> cm->gran_shift;
	uint64_t end = off + max_len;

	if (end > cm->volume_size || end < off)
		end = cm->volume_size;
	uint64_t last = (end - 1) >> cm->gran_shift;
	bool state = atomic_load_explicit(&cm->epoch[b], memory_order_relaxed) > since;

	while (b < last &&
	       (atomic_load_explicit(&cm->epoch[b + 1], memory_order_relaxed) > since) == state)
		b++;
	*changed = state;
	/* Round out to whole blocks: a partly covered block counts whole. */
	uint64_t run_end = (b + 1) << cm->gran_shift;
	if (run_end > cm->volume_size)
		run_end = cm->volume_size;
	return run_end - off;
}

void changemap_changed_since(const struct changemap *cm, uint64_t bytes[256])
{
	uint64_t count[256] = { 0 };
	uint64_t above = 0;

	for (uint64_t b = 0; b < cm->nblocks; b++)
		count[atomic_load_explicit(&cm->epoch[b], memory_order_relaxed)]++;
	for (int e = 255; e >= 0; e--) {
		bytes[e] = above << cm->gran_shift;
		above += count[e];
	}
	uint64_t tail = cm->nblocks << cm->gran_shift;
	if (tail > cm->volume_size) {
		uint8_t last = atomic_load_explicit(&cm->epoch[cm->nblocks - 1],
						    memory_order_relaxed);
		for (int e = 0; e < last; e++)
			bytes[e] -= tail - cm->volume_size;
	}
}
