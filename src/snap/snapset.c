#include "snapset.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "volume.h"

#define PAGE_SHIFT 12
#define PAGE_CHUNKS (1u << PAGE_SHIFT)
#define COPYING 0x80000000u
#define SLOT_MASK 0x7fffffffu
#define POOL_MAX 64

/* What a diff-store slot holds, in memory; `next` chains the copies of
 * one chunk, newest (highest hi) first. */
struct cow_entry {
	uint64_t chunk;
	uint32_t lo, hi;
	uint32_t next;		/* slot + 1 of the next older copy; 0: none */
	bool used;
	bool zero;		/* the chunk was zeroes: the slot was not written */
	uint8_t nblocks;
	uint8_t epochs[DS_MAX_BLOCKS];
};

uint32_t vt_snapset_chunk_size(uint32_t granularity)
{
	return granularity > SNAP_MIN_CHUNK ? granularity : SNAP_MIN_CHUNK;
}

static unsigned log2u(uint64_t v)
{
	unsigned s = 0;

	while ((1ull << s) < v)
		s++;
	return s;
}

static uint32_t *chunk_word(struct vt_snapset *set, uint64_t chunk, bool create)
{
	uint64_t p = chunk >> PAGE_SHIFT;

	if (!set->chunks[p]) {
		if (!create)
			return NULL;
		set->chunks[p] = calloc(PAGE_CHUNKS, sizeof(uint32_t));
		if (!set->chunks[p])
			return NULL;
	}
	return &set->chunks[p][chunk & (PAGE_CHUNKS - 1)];
}

static uint32_t chunk_get(struct vt_snapset *set, uint64_t chunk)
{
	uint32_t *w = chunk_word(set, chunk, false);

	return w ? *w : 0;
}

static int entries_reserve(struct vt_snapset *set, uint32_t slot)
{
	if (slot < set->entries_cap)
		return 0;
	uint64_t cap = set->entries_cap ? set->entries_cap : 1024;
	while (cap <= slot)
		cap *= 2;
	struct cow_entry *e = realloc(set->entries, cap * sizeof(*e));
	if (!e)
		return -ENOMEM;
	memset(e + set->entries_cap, 0, (cap - set->entries_cap) * sizeof(*e));
	set->entries = e;
	set->entries_cap = cap;
	return 0;
}

static bool live_in(const struct vt_snapset *set, uint32_t lo, uint32_t hi, bool valid_only)
{
	for (unsigned i = 0; i < set->nsnaps; i++) {
		const struct vt_snap *s = &set->snaps[i];
		if (s->seq > lo && s->seq <= hi && (!valid_only || s->valid))
			return true;
	}
	return false;
}

static void update_latest(struct vt_snapset *set)
{
	uint32_t latest = 0;

	for (unsigned i = 0; i < set->nsnaps; i++)
		if (set->snaps[i].seq > latest)
			latest = set->snaps[i].seq;
	atomic_store_explicit(&set->latest, latest, memory_order_release);
}

/* Insert entry `slot` into its chunk's chain, which stays newest first. */
static void link_entry(struct vt_snapset *set, uint32_t *word, uint32_t slot)
{
	uint32_t *at = word;
	struct cow_entry *e = &set->entries[slot];

	while ((*at & SLOT_MASK) && set->entries[(*at & SLOT_MASK) - 1].hi > e->hi)
		at = &set->entries[(*at & SLOT_MASK) - 1].next;
	e->next = *at & SLOT_MASK;
	*at = (*at & ~SLOT_MASK) | (slot + 1);
}

struct scan_ctx {
	struct vt_snapset *set;
	uint8_t *used;
	uint64_t used_cap;
	uint32_t max_hi;
	bool damaged;
	int err;
};

static void scan_one(void *arg, uint32_t slot, const struct ds_record *rec)
{
	struct scan_ctx *c = arg;
	struct vt_snapset *set = c->set;

	if (c->err)
		return;
	if (!rec) {
		c->damaged = true;
		return;
	}
	if (rec->hi > c->max_hi)
		c->max_hi = rec->hi;
	if (rec->chunk >= set->nchunks || !live_in(set, rec->lo, rec->hi, false))
		return; /* free: no live snapshot needs it */
	if (slot >= c->used_cap) {
		uint64_t cap = c->used_cap ? c->used_cap * 2 : 4096;
		while (cap <= slot)
			cap *= 2;
		uint8_t *u = realloc(c->used, cap);
		if (!u) {
			c->err = -ENOMEM;
			return;
		}
		memset(u + c->used_cap, 0, cap - c->used_cap);
		c->used = u;
		c->used_cap = cap;
	}
	uint32_t *word = chunk_word(set, rec->chunk, true);
	if (!word || entries_reserve(set, slot)) {
		c->err = -ENOMEM;
		return;
	}
	struct cow_entry *e = &set->entries[slot];
	*e = (struct cow_entry){ .chunk = rec->chunk, .lo = rec->lo, .hi = rec->hi,
				 .used = true, .zero = rec->zero, .nblocks = rec->nblocks };
	memcpy(e->epochs, rec->epochs, DS_MAX_BLOCKS);
	link_entry(set, word, slot);
	c->used[slot] = 1;
}

int vt_snapset_open(struct volume *vol, struct diffstore *ds, const struct changemap *cm,
		    const struct vt_snapset_hooks *hooks, const struct vt_snap *snaps,
		    unsigned nsnaps, struct vt_snapset **out)
{
	struct vt_snapset *set = calloc(1, sizeof(*set));
	struct scan_ctx c = { .set = set };
	int err;

	if (!set)
		return -ENOMEM;
	set->vol = vol;
	set->ds = ds;
	set->cm = cm;
	set->hooks = *hooks;
	set->chunk_size = ds->chunk_size;
	set->chunk_shift = log2u(ds->chunk_size);
	set->gran_shift = cm->gran_shift;
	set->nchunks = (vol->size + ds->chunk_size - 1) >> set->chunk_shift;
	set->npages = (set->nchunks + PAGE_CHUNKS - 1) >> PAGE_SHIFT;
	set->chunks = calloc(set->npages ? set->npages : 1, sizeof(*set->chunks));
	pthread_mutex_init(&set->lock, NULL);
	vt_inval_init(&set->inval, hooks->invalidate, hooks->arg);
	if (!set->chunks) {
		vt_snapset_close(set);
		return -ENOMEM;
	}
	if (nsnaps > CKPT_MAX)
		nsnaps = CKPT_MAX;
	memcpy(set->snaps, snaps, nsnaps * sizeof(*snaps));
	set->nsnaps = nsnaps;
	for (unsigned i = 0; i < nsnaps; i++)
		if (snaps[i].seq > c.max_hi)
			c.max_hi = snaps[i].seq;

	err = diffstore_scan(ds, scan_one, &c);
	if (!err)
		err = c.err;
	if (!err)
		err = diffstore_rebuild_free(ds, c.used);
	free(c.used);
	if (err) {
		vt_snapset_close(set);
		return err;
	}
	set->next_seq = c.max_hi + 1;
	bool data_lost = ds->data_new && diffstore_used_bytes(ds) > 0;
	if (c.damaged || data_lost) {
		/* A damaged record could have been any chunk's copy; a data
		 * file made anew holds none of the copies the records name. */
		for (unsigned i = 0; i < set->nsnaps; i++) {
			if (!set->snaps[i].valid)
				continue;
			set->snaps[i].valid = false;
			snprintf(set->snaps[i].why, SNAP_WHY_MAX, "%s", data_lost ?
				 "the diff store's data file is new: its copies are gone" :
				 "a diff-store record is damaged, so any chunk may be missing");
			if (set->hooks.invalidate)
				set->hooks.invalidate(set->hooks.arg, set->snaps[i].name,
						      set->snaps[i].why);
		}
	}
	update_latest(set);
	*out = set;
	return 0;
}

void vt_snapset_close(struct vt_snapset *set)
{
	if (!set)
		return;
	vt_inval_destroy(&set->inval); /* stores what is queued first */
	for (uint64_t p = 0; set->chunks && p < set->npages; p++)
		free(set->chunks[p]);
	free(set->chunks);
	free(set->entries);
	for (unsigned i = 0; i < set->npool; i++)
		free(set->pool[i]);
	free(set->pool);
	pthread_mutex_destroy(&set->lock);
	free(set);
}

int vt_snapset_start_invalidator(struct vt_snapset *set)
{
	return vt_inval_start(&set->inval);
}

uint32_t vt_snapset_next_seq(struct vt_snapset *set)
{
	pthread_mutex_lock(&set->lock);
	uint32_t s = set->next_seq;
	pthread_mutex_unlock(&set->lock);
	return s;
}

int vt_snapset_add(struct vt_snapset *set, const struct vt_snap *snap)
{
	int err = 0;

	pthread_mutex_lock(&set->lock);
	if (set->nsnaps == CKPT_MAX)
		err = -ENOSPC;
	else if (snap->seq < set->next_seq)
		err = -EINVAL; /* a number already used */
	if (!err) {
		set->snaps[set->nsnaps++] = *snap;
		set->next_seq = snap->seq + 1;
		update_latest(set);
	}
	pthread_mutex_unlock(&set->lock);
	return err;
}

static struct vt_snap *find(struct vt_snapset *set, const char *name)
{
	for (unsigned i = 0; i < set->nsnaps; i++)
		if (!strcmp(set->snaps[i].name, name))
			return &set->snaps[i];
	return NULL;
}

/* Unlink entry `slot` from its chunk's chain. */
static void unlink_entry(struct vt_snapset *set, uint32_t slot)
{
	struct cow_entry *e = &set->entries[slot];
	uint32_t *at = chunk_word(set, e->chunk, false);

	while (at && (*at & SLOT_MASK)) {
		uint32_t cur = (*at & SLOT_MASK) - 1;
		if (cur == slot) {
			*at = (*at & ~SLOT_MASK) | e->next;
			break;
		}
		at = &set->entries[cur].next;
	}
	e->used = false;
}

int vt_snapset_remove(struct vt_snapset *set, const char *name, uint64_t *freed)
{
	uint64_t bytes = 0;

	pthread_mutex_lock(&set->lock);
	struct vt_snap *s = find(set, name);
	if (!s) {
		pthread_mutex_unlock(&set->lock);
		return -ENOENT;
	}
	*s = set->snaps[--set->nsnaps];
	update_latest(set);
	for (uint64_t slot = 0; slot < set->entries_cap; slot++) {
		struct cow_entry *e = &set->entries[slot];
		if (!e->used || live_in(set, e->lo, e->hi, false))
			continue;
		unlink_entry(set, (uint32_t)slot);
		diffstore_free(set->ds, (uint32_t)slot);
		bytes += set->chunk_size;
	}
	pthread_mutex_unlock(&set->lock);
	if (freed)
		*freed = bytes;
	return 0;
}

int vt_snapset_get(struct vt_snapset *set, const char *name, struct vt_snap *out)
{
	int err = -ENOENT;

	pthread_mutex_lock(&set->lock);
	struct vt_snap *s = find(set, name);
	if (s) {
		*out = *s;
		err = 0;
	}
	pthread_mutex_unlock(&set->lock);
	return err;
}

uint64_t vt_snapset_bytes(struct vt_snapset *set, uint32_t seq)
{
	uint64_t n = 0;

	pthread_mutex_lock(&set->lock);
	for (uint64_t slot = 0; slot < set->entries_cap; slot++) {
		const struct cow_entry *e = &set->entries[slot];
		if (e->used && e->lo < seq && seq <= e->hi)
			n++;
	}
	pthread_mutex_unlock(&set->lock);
	return n * set->chunk_size;
}

uint64_t vt_snapset_used_bytes(struct vt_snapset *set)
{
	pthread_mutex_lock(&set->lock);
	uint64_t n = diffstore_used_bytes(set->ds);
	pthread_mutex_unlock(&set->lock);
	return n;
}

/*
 * Under the lock: mark every valid snapshot in (lo, hi] invalid, and
 * queue each for the durable step (invalidator.h).  Queued under the
 * lock, so that a writer that finds them invalid also finds them queued
 * and waits for the store before it skips its copy.
 */
static void invalidate_range(struct vt_snapset *set, uint32_t lo, uint32_t hi, const char *why)
{
	for (unsigned i = 0; i < set->nsnaps; i++) {
		struct vt_snap *s = &set->snaps[i];
		if (s->seq <= lo || s->seq > hi || !s->valid)
			continue;
		s->valid = false;
		snprintf(s->why, SNAP_WHY_MAX, "%s", why);
		vt_inval_queue(&set->inval, s->name, why);
	}
}

/* On the thread that made the invalidations durable: hand the writer
 * back to its own loop, where it claims its chunk again. */
static void inval_ready(struct vt_inval_wait *iw, int err)
{
	struct vt_cow_wait *w = (struct vt_cow_wait *)((char *)iw -
						       offsetof(struct vt_cow_wait, inval));

	vt_loop_resume(w->loop, &w->park, err);
}

/* Under the lock: VT_COW_WAIT when w must wait for invalidations on
 * their way to the disk, else VT_COW_NONE. */
static enum vt_cow_claim skip_copy(struct vt_snapset *set, struct vt_cow_wait *w)
{
	w->inval.ready = inval_ready;
	return vt_inval_wait(&set->inval, &w->inval) ? VT_COW_WAIT : VT_COW_NONE;
}

static void *pool_get(struct vt_snapset *set)
{
	if (set->npool)
		return set->pool[--set->npool];
	return aligned_alloc(4096, set->chunk_size);
}

static void pool_put(struct vt_snapset *set, void *buf)
{
	if (!buf)
		return;
	if (!set->pool)
		set->pool = calloc(POOL_MAX, sizeof(void *));
	if (set->pool && set->npool < POOL_MAX)
		set->pool[set->npool++] = buf;
	else
		free(buf);
}

enum vt_cow_claim vt_snapset_claim(struct vt_snapset *set, uint64_t chunk,
				   struct vt_cow_wait *w, struct vt_cow_job *job)
{
	pthread_mutex_lock(&set->lock);
	uint32_t latest = atomic_load_explicit(&set->latest, memory_order_relaxed);
	uint32_t v = chunk_get(set, chunk);
	if (v & COPYING) {
		w->chunk = chunk;
		w->next = set->waiters;
		set->waiters = w;
		pthread_mutex_unlock(&set->lock);
		return VT_COW_WAIT;
	}
	uint32_t head = v & SLOT_MASK;
	uint32_t prev_hi = head ? set->entries[head - 1].hi : 0;
	if (latest == 0 || prev_hi >= latest) {
		pthread_mutex_unlock(&set->lock);
		return VT_COW_NONE;
	}
	if (!live_in(set, prev_hi, latest, true)) {
		/* No valid snapshot needs the copy; but until the snapshots that
		 * did are durably invalid, the chunk must not change (a rare
		 * path: whatever is queued is waited for, not just these). */
		enum vt_cow_claim r = skip_copy(set, w);
		pthread_mutex_unlock(&set->lock);
		return r;
	}
	uint32_t *word = chunk_word(set, chunk, true);
	uint32_t slot;
	int err = word ? diffstore_alloc(set->ds, &slot) : -ENOMEM;
	if (!err && (err = entries_reserve(set, slot)))
		diffstore_free(set->ds, slot);
	void *buf = err ? NULL : pool_get(set);
	if (!err && !buf) {
		diffstore_free(set->ds, slot);
		err = -ENOMEM;
	}
	if (err) {
		invalidate_range(set, prev_hi, latest, err == -ENOSPC ? "the diff store is full" :
							"no memory for a copy");
		set->copy_failures++;
		enum vt_cow_claim r = skip_copy(set, w);
		pthread_mutex_unlock(&set->lock);
		vt_inval_run(&set->inval);
		return r;
	}
	*word |= COPYING;
	job->chunk = chunk;
	job->off = chunk << set->chunk_shift;
	job->len = set->vol->size - job->off < set->chunk_size ? set->vol->size - job->off
								: set->chunk_size;
	job->slot = slot;
	job->buf = buf;
	job->rec = (struct ds_record){ .chunk = chunk, .lo = prev_hi, .hi = latest };
	/* The epochs as they are now, which is as they were at every
	 * snapshot in (lo, hi]: the chunk has not been written since lo, and
	 * this write marks the map only after its copy. */
	uint64_t b0 = job->off >> set->gran_shift;
	uint64_t nb = (job->len + (1ull << set->gran_shift) - 1) >> set->gran_shift;
	job->rec.nblocks = (uint8_t)nb;
	for (uint64_t b = 0; b < nb; b++)
		job->rec.epochs[b] = atomic_load_explicit(&set->cm->epoch[b0 + b],
							  memory_order_relaxed);
	pthread_mutex_unlock(&set->lock);
	return VT_COW_COPY;
}

void vt_snapset_publish(struct vt_snapset *set, struct vt_cow_job *job, int err)
{
	char why[SNAP_WHY_MAX];
	struct vt_cow_wait *wake = NULL, **at;

	pthread_mutex_lock(&set->lock);
	uint32_t *word = chunk_word(set, job->chunk, false);
	*word &= ~COPYING;
	if (!err && !live_in(set, job->rec.lo, job->rec.hi, false)) {
		/* Every snapshot it was for was deleted while it ran. */
		diffstore_free(set->ds, job->slot);
	} else if (!err) {
		struct cow_entry *e = &set->entries[job->slot];
		*e = (struct cow_entry){ .chunk = job->chunk, .lo = job->rec.lo,
					 .hi = job->rec.hi, .used = true, .zero = job->rec.zero,
					 .nblocks = job->rec.nblocks };
		memcpy(e->epochs, job->rec.epochs, DS_MAX_BLOCKS);
		link_entry(set, word, job->slot);
		set->copies++;
	} else {
		diffstore_free(set->ds, job->slot);
		snprintf(why, sizeof(why), "copying a chunk into the diff store failed: %s",
			 strerror(-err));
		invalidate_range(set, job->rec.lo, job->rec.hi, why);
		set->copy_failures++;
	}
	pool_put(set, job->buf);
	job->buf = NULL;
	diffstore_copy_end(set->ds);
	for (at = &set->waiters; *at;) {
		struct vt_cow_wait *w = *at;
		if (w->chunk == job->chunk) {
			*at = w->next;
			w->next = wake;
			wake = w;
		} else {
			at = &w->next;
		}
	}
	pthread_mutex_unlock(&set->lock);
	if (err)
		vt_inval_run(&set->inval);
	while (wake) {
		struct vt_cow_wait *w = wake;
		wake = w->next;
		vt_loop_resume(w->loop, &w->park, 0);
	}
}

int vt_snapset_lookup(struct vt_snapset *set, uint32_t seq, uint64_t chunk, uint32_t *slot,
		      struct vt_cow_wait *w)
{
	int r = 0;

	pthread_mutex_lock(&set->lock);
	uint32_t v = chunk_get(set, chunk);
	uint32_t cur = v & SLOT_MASK;
	while (cur) {
		const struct cow_entry *e = &set->entries[cur - 1];
		if (e->hi < seq)
			break;
		if (e->lo < seq) {
			*slot = cur - 1;
			r = e->zero ? VT_SNAP_FROM_ZEROES : VT_SNAP_FROM_STORE;
			break;
		}
		cur = e->next;
	}
	/* Not copied for seq yet, but a copy is under way: it is the one
	 * (every copy under way began after seq was taken, which drained
	 * the writes of any older one), and the volume may be overwritten
	 * as soon as it is done.  Without w, say so and wait for nothing. */
	if (r == 0 && (v & COPYING) && !w)
		r = -EAGAIN;
	else if (r == 0 && (v & COPYING)) {
		w->chunk = chunk;
		w->next = set->waiters;
		set->waiters = w;
		r = -EAGAIN;
	}
	pthread_mutex_unlock(&set->lock);
	return r;
}

/* The epoch block b had when snapshot seq was taken (as far as the map
 * can tell), with set->lock held. */
static uint8_t epoch_at_locked(struct vt_snapset *set, uint32_t seq, uint64_t block)
{
	unsigned per_chunk_shift = set->chunk_shift - set->gran_shift;
	uint64_t chunk = block >> per_chunk_shift;
	/* The map first, the copy second: a write marks the map only after
	 * its copy is published, so a raised epoch read here means the walk
	 * below finds the copy and its epoch from before (and no publish
	 * can come in between while the lock is held). */
	uint8_t e = atomic_load_explicit(&set->cm->epoch[block], memory_order_seq_cst);
	uint32_t cur = chunk_get(set, chunk) & SLOT_MASK;

	while (cur) {
		const struct cow_entry *en = &set->entries[cur - 1];
		if (en->hi < seq)
			break;
		if (en->lo < seq)
			return en->epochs[block - (chunk << per_chunk_shift)];
		cur = en->next;
	}
	return e;
}

uint64_t vt_snapset_changed_run(struct vt_snapset *set, uint32_t seq, uint8_t since,
				uint64_t block, uint64_t max, bool *changed)
{
	enum { BATCH = 4096 };
	uint64_t n = 0;

	if (!max)
		return 0;
	pthread_mutex_lock(&set->lock);
	*changed = epoch_at_locked(set, seq, block) > since;
	for (n = 1; n < max; n++) {
		if (n % BATCH == 0) {
			pthread_mutex_unlock(&set->lock);
			pthread_mutex_lock(&set->lock);
		}
		if ((epoch_at_locked(set, seq, block + n) > since) != *changed)
			break;
	}
	pthread_mutex_unlock(&set->lock);
	return n;
}

void vt_snapset_invalidate(struct vt_snapset *set, const char *name, const char *why)
{
	pthread_mutex_lock(&set->lock);
	struct vt_snap *s = find(set, name);
	if (s && s->valid) {
		s->valid = false;
		snprintf(s->why, SNAP_WHY_MAX, "%s", why);
	}
	pthread_mutex_unlock(&set->lock);
}

void vt_snapset_renumber(struct vt_snapset *set, const uint8_t t[256])
{
	pthread_mutex_lock(&set->lock);
	for (unsigned i = 0; i < set->nsnaps; i++)
		set->snaps[i].epoch = t[set->snaps[i].epoch];
	for (uint64_t slot = 0; slot < set->entries_cap; slot++) {
		struct cow_entry *e = &set->entries[slot];
		if (!e->used)
			continue;
		for (unsigned b = 0; b < e->nblocks; b++)
			e->epochs[b] = t[e->epochs[b]];
	}
	pthread_mutex_unlock(&set->lock);
}

int vt_snapset_store_records(struct vt_snapset *set)
{
	uint8_t rec[DS_RECORD_SIZE];
	int err = 0;

	pthread_mutex_lock(&set->lock);
	for (uint64_t slot = 0; !err && slot < set->entries_cap; slot++) {
		const struct cow_entry *e = &set->entries[slot];
		if (!e->used)
			continue;
		struct ds_record r = { .chunk = e->chunk, .lo = e->lo, .hi = e->hi,
				       .nblocks = e->nblocks, .zero = e->zero };
		memcpy(r.epochs, e->epochs, DS_MAX_BLOCKS);
		diffstore_encode(set->ds, (uint32_t)slot, &r, rec);
		err = set->ds->ops->pwrite(set->ds->ops, set->ds->map_fd, rec, DS_RECORD_SIZE,
					   diffstore_record_offset((uint32_t)slot));
	}
	pthread_mutex_unlock(&set->lock);
	return err ? err : set->ds->ops->fdatasync(set->ds->ops, set->ds->map_fd);
}
