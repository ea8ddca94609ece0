#include "epochs.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "pause.h"

void epochs_plan(const struct checkpoint_list *cur, uint32_t drop, struct checkpoint_list *next)
{
	uint8_t *t = next->numbering.from_prev;

	next->n = 0;
	for (uint32_t i = 0; i < cur->n; i++)
		if (i != drop)
			next->items[next->n++] = cur->items[i];
	/* t[v] = 1 + the number of remaining checkpoints below v */
	t[0] = 0;
	uint32_t below = 0, k = 0;
	for (unsigned v = 1; v < 256; v++) {
		while (k < next->n && next->items[k].epoch < v) {
			below++;
			k++;
		}
		t[v] = (uint8_t)(1 + below);
	}
	for (uint32_t i = 0; i < next->n; i++)
		next->items[i].epoch = t[next->items[i].epoch];
	next->open_epoch = t[cur->open_epoch];
	next->numbering.count = cur->numbering.count + 1;
	next->numbering.boundary = 0;
	next->slot = cur->slot;
	next->seq = cur->seq;
}

/* One block to t[v] unless a writer got there first; true if lowered. */
static bool translate_block(_Atomic uint8_t *slot, const uint8_t t[256])
{
	uint8_t cur = atomic_load_explicit(slot, memory_order_relaxed);

	/* A failed exchange reloads cur: the writer's value is translated
	 * in turn, so a mark racing the pass is never undone. */
	while (t[cur] != cur)
		if (atomic_compare_exchange_weak_explicit(slot, &cur, t[cur], memory_order_relaxed,
							  memory_order_relaxed))
			return true;
	return false;
}

static uint64_t pass(struct changemap *cm, const uint8_t t[256])
{
	uint64_t changed = 0;

	for (uint32_t p = 0; p < cm->npages; p++) {
		uint64_t first = (uint64_t)p * CM_PAGE_ENTRIES;
		uint32_t n = changemap_page_blocks(cm, p), here = 0;
		for (uint32_t i = 0; i < n; i++)
			here += translate_block(&cm->epoch[first + i], t);
		if (here)
			atomic_store_explicit(&cm->page_dirty[p], true, memory_order_release);
		changed += here;
		VT_PAUSE_POINT("epochs.pass.page");
	}
	return changed;
}

uint64_t epochs_translate(struct changemap *cm, const uint8_t t[256])
{
	return pass(cm, t);
}

uint64_t epochs_clamp(struct changemap *cm, uint8_t open)
{
	uint8_t t[256];

	for (unsigned v = 0; v < 256; v++)
		t[v] = v > open ? open : (uint8_t)v;
	return pass(cm, t);
}

void epochs_load_tables(const struct checkpoint_list *l, uint8_t before[256],
			uint8_t after[256], struct mapfile_xlate *x)
{
	uint8_t open = l->open_epoch;

	for (unsigned v = 0; v < 256; v++) {
		uint8_t prev = l->numbering.boundary ? l->numbering.from_prev[v] : (uint8_t)v;
		before[v] = prev > open ? open : prev;
		after[v] = v > open ? open : (uint8_t)v;
	}
	x->boundary = l->numbering.boundary;
	x->before = before;
	x->after = after;
}

int epochs_renumber(const struct epochs_host *h, uint32_t drop)
{
	struct checkpoint_list *next = malloc(sizeof(*next)); /* 60 KiB */
	uint32_t version = h->sb->version;
	bool touched = false;
	int err;

	if (!next)
		return -ENOMEM;
	epochs_plan(h->ckpts, drop, next);
	/* 1. every page on disk as memory has it, in the current numbering */
	err = mapfile_persist(h->mf, h->cm, NULL);
	if (!err && version < SB_VERSION_NUMBERED) {
		/* older readers must refuse a list they would misread */
		h->sb->version = SB_VERSION_NUMBERED;
		h->sb->sequence++;
		err = metadir_write_superblock(h->md, h->sb);
		if (err)
			h->sb->version = version;
	}
	VT_PAUSE_POINT("epochs.renumber.persisted");
	/* 2. the new numbering, dated by the map's sequence */
	if (!err) {
		next->numbering.boundary = mapfile_last_seq(h->mf);
		err = checkpoints_store(h->dirfd, h->ops, h->sb, h->ckpts, next, &touched);
	}
	if (!err) {
		/* 3. memory follows; the new open epoch is published only
		 * after the pass */
		epochs_write_begin(h->numbering);
		epochs_translate(h->cm, next->numbering.from_prev);
		if (h->translated)
			h->translated(h->arg, next->numbering.from_prev);
		*h->ckpts = *next;
		atomic_store_explicit(h->open_epoch, next->open_epoch, memory_order_release);
		epochs_write_end(h->numbering);
	} else if (touched) {
		h->ckpts->seq++; /* the attempt's sequence is used up */
	}
	free(next);
	return err;
}

/*
 * A sequence lock (as in the kernel's seqcount): the writer makes the
 * counter odd, then (release fence) changes the map, then makes it even
 * with a release store.  A reader's acquire load, its relaxed reads of
 * the map, an acquire fence and a second load of the counter: if both
 * loads agree and are even, no write of the pass can have been seen.
 */
void epochs_write_begin(struct epochs_seq *s)
{
	uint64_t v = atomic_load_explicit(&s->seq, memory_order_relaxed);

	atomic_store_explicit(&s->seq, v + 1, memory_order_relaxed);
	atomic_thread_fence(memory_order_release);
}

void epochs_write_end(struct epochs_seq *s)
{
	uint64_t v = atomic_load_explicit(&s->seq, memory_order_relaxed);

	atomic_store_explicit(&s->seq, v + 1, memory_order_release);
}

uint64_t epochs_read_begin(struct epochs_seq *s, pthread_mutex_t *lock)
{
	uint64_t v;

	while ((v = atomic_load_explicit(&s->seq, memory_order_acquire)) & 1) {
		VT_PAUSE_POINT("epochs.read.wait");
		pthread_mutex_lock(lock);
		pthread_mutex_unlock(lock);
	}
	return v;
}

bool epochs_read_retry(struct epochs_seq *s, uint64_t ticket)
{
	atomic_thread_fence(memory_order_acquire);
	return atomic_load_explicit(&s->seq, memory_order_relaxed) != ticket;
}
