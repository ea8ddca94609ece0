/*
 * tracker_impl: the tracker's state, shared by the files that make it up
 * (tracker.c: opening, recovery, the flusher, the write path;
 * tracker_checkpoints.c: the checkpoint list and its renumberings).
 * Nothing outside src/tracker*.c includes this.
 */
#ifndef VOLTRACK_TRACKER_IMPL_H
#define VOLTRACK_TRACKER_IMPL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "epochs.h"
#include "tracker.h"

struct tracker {
	struct metadir *md;
	const struct vt_fsops *ops;
	int dirfd;
	struct superblock sb;
	struct changemap cm;
	struct mapfile *mf;
	struct intent *in;
	struct tracker_config cfg;
	struct tracker_info info;

	pthread_mutex_t lock;		/* checkpoints, persist, info */
	struct checkpoint_list ckpts;
	_Atomic uint8_t open_epoch;
	atomic_uint tick;
	pthread_mutex_t persist_lock;	/* map persists; taken after lock */
	struct epochs_seq numbering;	/* readers' tickets (epochs.h) */
	uint64_t serials;		/* the last checkpoint serial given */
	struct tracker_renumber_hook hook;

	bool live;
	pthread_t flusher;
	pthread_mutex_t flush_lock;
	pthread_cond_t flush_cond;
	bool flush_stop, flush_nudged;
};

/*
 * After a latched volume sync error, count every region whose intent is
 * set as changed in the open epoch (see tracker.c); cheap when nothing
 * is latched.  Called after every checkpoint and every query.
 */
void tracker_doubt_unsynced(struct tracker *t);

#endif
