/*
 * invalidator: makes snapshots' invalidity durable for the loops'
 * writers, on a thread of its own.
 *
 * A copy that fails, or finds the diff store full, costs the snapshots
 * it was for, never the write (I5): they are marked invalid in memory,
 * and the write goes on without its copy.  It may reach the volume only
 * once the invalidity is durable (the checkpoint list's flag), or a
 * crash could bring a snapshot back valid with that write in it.  That
 * store is a write and a sync of the checkpoint list, which under load
 * waits behind the disk's queue; made on a worker's loop it would stall
 * every connection the loop serves.  Instead the names are queued here,
 * the writers that need them durable park, and the thread stores what
 * is queued and hands back every writer that waited for it: one store
 * per snapshot lost, however many writers wait for it.
 *
 * Contract:
 *   - vt_inval_queue() is called by whoever marked a snapshot invalid in
 *     memory, under the lock under which writers can see that (the
 *     snapset's), so that a writer that sees a snapshot invalid sees its
 *     invalidation queued.
 *   - vt_inval_wait() is called by a writer that would skip a copy
 *     because its snapshots are invalid.  It returns 0 when every
 *     invalidation queued so far is stored, or 1: w->ready(w, err) then
 *     runs once, on the thread that stored the last of them, with 0 or
 *     the first error among those stores.  A store that failed is logged
 *     and the writer goes on all the same: the origin comes first, and
 *     the snapshot, invalid in memory, is never served again by this
 *     process; only a restart could find it valid.
 *   - vt_inval_run() stores what is queued on the calling thread when no
 *     thread was started (offline use, tests), and does nothing when one
 *     runs.  Call it after vt_inval_queue(), without the caller's lock.
 *   - vt_inval_start() before any writer can queue.
 *   - vt_inval_stop() only once no writer can queue or wait again; it
 *     stores what is queued first, so that every waiter is handed back.
 */
#ifndef VOLTRACK_SNAP_INVALIDATOR_H
#define VOLTRACK_SNAP_INVALIDATOR_H

#include <pthread.h>
#include <stdbool.h>

struct vt_inval_wait {
	void (*ready)(struct vt_inval_wait *w, int err);	/* in */
	struct vt_inval_wait *next;				/* private */
	unsigned long ticket;					/* private */
};

struct vt_inval_item;

struct vt_invalidator {
	/* The durable step: the checkpoint list's INVALID flag. */
	int (*store)(void *arg, const char *name, const char *why);
	void *arg;

	pthread_mutex_t lock;		/* everything below */
	pthread_cond_t cond;
	struct vt_inval_item *items;	/* queued, in order; allocated on first use */
	unsigned nitems, taken;		/* items[0, taken) are being stored */
	unsigned long queued, stored;	/* tickets: items ever queued, ever stored */
	int err;			/* first error of the stores under way */
	struct vt_inval_wait *waiters;
	bool running, started, stop;	/* a store under way; the thread */
	pthread_t thread;
	unsigned long stores, waits, failures;	/* for tests and logs */
};

void vt_inval_init(struct vt_invalidator *inv,
		   int (*store)(void *arg, const char *name, const char *why), void *arg);
/* Stores what is queued on a thread of its own from now on. */
int vt_inval_start(struct vt_invalidator *inv);
void vt_inval_stop(struct vt_invalidator *inv);
void vt_inval_destroy(struct vt_invalidator *inv);

void vt_inval_queue(struct vt_invalidator *inv, const char *name, const char *why);
int vt_inval_wait(struct vt_invalidator *inv, struct vt_inval_wait *w);
void vt_inval_run(struct vt_invalidator *inv);

#endif
