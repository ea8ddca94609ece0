/*
 * marker: sets the diff store's copies-pending mark (diffstore.h) for the
 * loops' copiers, on a thread of its own.
 *
 * The first copy after the store was last settled must not start before
 * the mark is durable: a write and a sync of the record file, which under
 * load wait behind the disk's queue for tens of milliseconds.  Made on a
 * worker's loop, that sync would stall every connection the loop serves.
 * Instead the copier parks, the marker writes the mark, and every copier
 * that parked meanwhile is handed back with one outcome: one sync for
 * them all (group commit).
 *
 * Contract:
 *   - ds_marker_wait() is called by a copier that found the mark not set
 *     (diffstore_copy_begin()).  It returns 0 when the mark is set after
 *     all, or 1: w->ready(w, err) then runs once, on the marker's
 *     thread, after the mark was made durable (err 0) or could not be
 *     (err < 0: the copy must not be made).
 *   - ds_marker_stop() only once no copier can call ds_marker_wait()
 *     again; it waits for the copiers it has taken in.
 */
#ifndef VOLTRACK_SNAP_MARKER_H
#define VOLTRACK_SNAP_MARKER_H

#include <pthread.h>
#include <stdbool.h>

struct diffstore;

struct ds_mark_wait {
	void (*ready)(struct ds_mark_wait *w, int err);
	struct ds_mark_wait *next;
};

struct ds_marker {
	struct diffstore *ds;
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct ds_mark_wait *head, *tail;	/* waiting, in arrival order */
	bool stop;
	unsigned long batches, waits;		/* syncs made, copiers served */
};

int ds_marker_start(struct diffstore *ds, struct ds_marker **out);
void ds_marker_stop(struct ds_marker *m);
int ds_marker_wait(struct ds_marker *m, struct ds_mark_wait *w);

#endif
