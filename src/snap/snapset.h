/*
 * snapset: the live snapshots of one volume and their copy-on-write
 * state.
 *
 * A snapshot is identified by a sequence number, increasing over the
 * volume's life and never reused.  The first write to a chunk after a
 * snapshot copies the chunk's old content into the diff store
 * (diffstore.h) before the write may reach the volume; the copy serves
 * every snapshot taken since the chunk was last copied, that is the
 * range (hi of the chunk's previous copy, newest snapshot].  A snapshot
 * reads a chunk from the copy whose range holds its number, else from
 * the volume, which has not changed in that chunk since.
 *
 * Beside each copy sits the epoch every tracking block of the chunk had
 * in the change map when it was copied, so that "changed between
 * checkpoint C and snapshot S" is exact even after the volume is
 * overwritten.
 *
 * Contract:
 *   - vt_snapset_active() is the write path's one test when nothing is
 *     live: a relaxed load, no lock.
 *   - A writer calls vt_snapset_claim() for each chunk it covers, in
 *     order, before its data I/O; it gets NONE (nothing to copy), COPY
 *     (it must copy the chunk, then call vt_snapset_publish()), or WAIT
 *     (another writer is copying it: the writer is parked and resumed on
 *     its loop after the publish, and must claim the chunk again).
 *   - Whatever fails on the way (no room in the diff store, an I/O
 *     error) invalidates the snapshots the copy was for and never the
 *     write: the caller goes on with its write (invariant I5).  It goes
 *     on only once the invalidation is durable (hooks->invalidate), so
 *     that no restart finds a snapshot valid that lacks a copy: until
 *     then a claim of a chunk that no valid snapshot needs any more
 *     answers WAIT, and the writer is resumed once it is durable (on
 *     the invalidator's thread, see invalidator.h, or right away when
 *     none was started).  A copier whose copy failed publishes the
 *     failure and claims the same chunk again, which parks it the same
 *     way.  Nothing blocks the loop meanwhile.
 *   - Snapshot reads look chunks up with vt_snapset_lookup(), after
 *     reading the volume (see snapexport.c for why that order is safe).
 *   - Adding and removing snapshots happens on the control thread with
 *     the volume's gate held (add) or at any time (remove).
 */
#ifndef VOLTRACK_SNAP_SNAPSET_H
#define VOLTRACK_SNAP_SNAPSET_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "changemap.h"
#include "checkpoints.h"
#include "diffstore.h"
#include "invalidator.h"
#include "loop.h"

struct volume;

#define SNAP_MIN_CHUNK (64u << 10)
#define SNAP_WHY_MAX 160

struct vt_snap {
	uint32_t seq;
	uint8_t epoch;			/* the checkpoint of the same name closed it */
	bool valid;
	char name[CKPT_NAME_MAX + 1];
	char why[SNAP_WHY_MAX];		/* why it is invalid */
	uint64_t created;
};

/* Make a snapshot's invalidity durable (the checkpoint list's flag). */
struct vt_snapset_hooks {
	void *arg;
	int (*invalidate)(void *arg, const char *name, const char *why);
};

/* A writer waiting for another writer's copy of a chunk, or for an
 * invalidation to be durable. */
struct vt_cow_wait {
	struct vt_parked park;		/* in: resume */
	struct vt_loop *loop;		/* in */
	uint64_t chunk;			/* set-private */
	struct vt_cow_wait *next;
	struct vt_inval_wait inval;	/* set-private */
};

/* One copy in progress: what vt_snapset_claim() hands its copier. */
struct vt_cow_job {
	uint64_t chunk;
	uint64_t off, len;		/* the chunk's bytes on the volume */
	uint32_t slot;
	struct ds_record rec;
	void *buf;			/* chunk_size bytes, from the set's pool */
};

enum vt_cow_claim {
	VT_COW_NONE,
	VT_COW_COPY,
	VT_COW_WAIT,
};

struct vt_snapset {
	struct volume *vol;
	struct diffstore *ds;
	const struct changemap *cm;
	struct vt_snapset_hooks hooks;
	uint32_t chunk_size;
	unsigned chunk_shift, gran_shift;
	uint64_t nchunks;
	atomic_uint latest;		/* newest live snapshot's seq; 0: none */

	/* Makes invalidations durable; writers that must not skip a copy
	 * before they are wait on it (see vt_snapset_claim). */
	struct vt_invalidator inval;
	pthread_mutex_t lock;		/* everything below */
	uint32_t **chunks;		/* page of chunk -> newest copy's slot+1 */
	uint64_t npages;
	struct cow_entry *entries;	/* by slot */
	uint64_t entries_cap;
	struct vt_snap snaps[CKPT_MAX];
	unsigned nsnaps;
	uint32_t next_seq;
	struct vt_cow_wait *waiters;
	void **pool;			/* spare copy buffers */
	unsigned npool;
	uint64_t copies, copy_failures;
};

/* The chunk size for a tracking granularity: at least 64 KiB, and a
 * whole number of tracking blocks. */
uint32_t vt_snapset_chunk_size(uint32_t granularity);

/*
 * Open the set over an open diff store: snaps lists the snapshots the
 * checkpoint list knows (name, seq, epoch, validity); the store's records
 * are scanned and every copy a live snapshot needs is linked.  A record
 * found damaged makes every snapshot invalid (its chunk is unknown).
 */
int vt_snapset_open(struct volume *vol, struct diffstore *ds, const struct changemap *cm,
		    const struct vt_snapset_hooks *hooks, const struct vt_snap *snaps,
		    unsigned nsnaps, struct vt_snapset **out);
void vt_snapset_close(struct vt_snapset *set);

/* From now on, invalidations are made durable on a thread of their own
 * (invalidator.h), not on the loop of the writer that met the failure.
 * Before any write; vt_snapset_close() stops it. */
int vt_snapset_start_invalidator(struct vt_snapset *set);

static inline bool vt_snapset_active(const struct vt_snapset *set)
{
	return set && atomic_load_explicit(&set->latest, memory_order_relaxed) != 0;
}

/* The sequence number the next snapshot will get. */
uint32_t vt_snapset_next_seq(struct vt_snapset *set);

/* Start copy-on-write for a new snapshot; the gate must be held, so
 * that no write is between its claim and its data I/O. */
int vt_snapset_add(struct vt_snapset *set, const struct vt_snap *snap);
/* Drop a snapshot; *freed is the diff-store bytes no live snapshot
 * needs any more.  -ENOENT for an unknown name. */
int vt_snapset_remove(struct vt_snapset *set, const char *name, uint64_t *freed);

/* A copy of a snapshot's state; -ENOENT when unknown. */
int vt_snapset_get(struct vt_snapset *set, const char *name, struct vt_snap *out);
/* Diff-store bytes a snapshot uses (copies shared with others count). */
uint64_t vt_snapset_bytes(struct vt_snapset *set, uint32_t seq);
uint64_t vt_snapset_used_bytes(struct vt_snapset *set);

enum vt_cow_claim vt_snapset_claim(struct vt_snapset *set, uint64_t chunk,
				   struct vt_cow_wait *w, struct vt_cow_job *job);
/* The copy is in the store and its record written (err 0), or failed:
 * then its snapshots are invalid, and the copier claims the chunk again
 * before it may write it (see above). */
void vt_snapset_publish(struct vt_snapset *set, struct vt_cow_job *job, int err);

/*
 * Where snapshot seq reads chunk: VT_SNAP_FROM_VOLUME, VT_SNAP_FROM_STORE
 * (at *slot), VT_SNAP_FROM_ZEROES (a copy of zeroes: nothing to read), or
 * -EAGAIN while a copy it needs is in progress (w, when given, is then
 * parked and resumed after the publish).
 */
#define VT_SNAP_FROM_VOLUME 0
#define VT_SNAP_FROM_STORE 1
#define VT_SNAP_FROM_ZEROES 2
int vt_snapset_lookup(struct vt_snapset *set, uint32_t seq, uint64_t chunk, uint32_t *slot,
		      struct vt_cow_wait *w);

/*
 * For a snapshot's qemu:dirty-bitmap contexts and `changes --until`: the
 * run of blocks from `block`, at most `max`, that agree on "changed
 * between epoch `since` and snapshot seq" (epoch_at > since), as
 * changemap_run() does for the live map: *changed, and the number of
 * blocks (at least 1 when max is).  Takes the lock once per batch of
 * blocks, not per block, so a scan of a large volume stays cheap and
 * writers still get in between batches.
 */
uint64_t vt_snapset_changed_run(struct vt_snapset *set, uint32_t seq, uint8_t since,
				uint64_t block, uint64_t max, bool *changed);

/*
 * The tracker renumbered its epochs (v becomes t[v]): translate the
 * snapshots' epochs and those kept beside the copies, in memory.  Then
 * vt_snapset_store_records() rewrites the records in the new numbering;
 * until it has, a record read after a crash holds old values, which are
 * never below the new ones (a renumbering only lowers), so a snapshot's
 * bitmaps can only over-report.
 */
void vt_snapset_renumber(struct vt_snapset *set, const uint8_t t[256]);
int vt_snapset_store_records(struct vt_snapset *set);

/* Mark a snapshot invalid in memory (already durable, or on the way). */
void vt_snapset_invalidate(struct vt_snapset *set, const char *name, const char *why);

#endif
