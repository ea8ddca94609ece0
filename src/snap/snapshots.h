/*
 * snapshots: a volume's snapshots, taken through flush-and-hold.
 *
 * Ties the gate, the copy-on-write set and the tracker together.  A
 * snapshot and the checkpoint of the same name are one entry of the
 * checkpoint list (CKPT_F_SNAPSHOT), stored by one durable update, so
 * they describe the same instant or neither exists.
 *
 * Taking one (vt_snapshots_take), with the phases timed:
 *   prepare  ask the tracker to persist its map now, so that little is
 *            left for a crash to over-report; pick the sequence number.
 *   hold     close the gate and drain the writes it admitted.  Writes
 *            arriving now are parked, never failed; reads go on; the
 *            tracker's and the diff store's own I/O never pass the gate.
 *   commit   write the checkpoint list with the new entry and switch
 *            copy-on-write on for it: from here the epoch is closed and
 *            the first write to any chunk copies it first.
 *   release  open the gate; held writes resume in arrival order.
 *   sync     make the commit durable, outside the hold; only then is
 *            the snapshot reported taken.
 * At the deadline (the hold timeout) the snapshot is abandoned: nothing
 * was committed, the writes resume, and -ETIMEDOUT is returned.  Freeze
 * and thaw hooks are the caller's (the CLI runs them around this).
 *
 * All calls come from one controlling thread at a time (the control
 * socket, or an offline command); write ops come from the loops.
 */
#ifndef VOLTRACK_SNAP_SNAPSHOTS_H
#define VOLTRACK_SNAP_SNAPSHOTS_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "diffstore.h"
#include "export.h"
#include "gate.h"
#include "snapset.h"
#include "tracker.h"

/* A hold in progress, between vt_snapshots_hold() and its end. */
struct vt_pending {
	int state;
	char name[CKPT_NAME_MAX + 1];
	uint32_t seq;
	uint8_t epoch;
	uint64_t created;
	uint64_t t_hold, deadline_us;	/* CLOCK_MONOTONIC */
	unsigned writes_held;
	bool timed_out;			/* the watchdog ended it */
	pthread_t watchdog;
	bool watchdog_running, watchdog_stop;
};

struct vt_snapshots {
	struct tracker *tracker;
	struct volume *vol;
	const struct vt_fsops *ops;	/* the metadata directory's */
	struct diffstore *ds;
	struct vt_snapset *set;
	struct vt_gate gate;
	pthread_mutex_t lock;		/* pending */
	pthread_cond_t cond;
	struct vt_pending pending;
	pthread_t keeper;		/* syncs the diff store (live only) */
	bool keeper_running, keeper_stop;
};

struct vt_snap_phases {
	uint64_t prepare_us, hold_us, commit_us, release_us;
	uint64_t held_us;		/* writers stopped: hold to release */
	uint64_t sync_us;		/* after the release: the commit made durable */
	unsigned writes_held;		/* parked during the hold */
	long draining;			/* writes in flight when the hold began */
};

/*
 * Open the diff store in md's directory (creating it when absent) and
 * rebuild copy-on-write state for every snapshot the tracker's
 * checkpoint list holds.  If the machine went down while copies were
 * not yet synced (diffstore.h), every snapshot is invalidated.  With
 * `live`, a thread syncs the store once a second.
 */
int vt_snapshots_open(struct metadir *md, struct tracker *t, struct volume *vol,
		      const struct diffstore_config *cfg, bool live, struct vt_snapshots **out);
void vt_snapshots_close(struct vt_snapshots *s);

/* The target the live export's writes go through: gated and copied. */
void vt_snapshots_target(struct vt_snapshots *s, struct vt_target *tgt);

/* -EEXIST, -EINVAL (name), -ENOSPC, -ETIMEDOUT, or a store's -errno. */
int vt_snapshots_take(struct vt_snapshots *s, const char *name, unsigned timeout_ms,
		      struct vt_snap_phases *ph);

/*
 * The same in steps, for snapshots of several volumes at one instant
 * (each volume's server holds, then each commits, then each releases).
 * vt_snapshots_hold() returns with the gate held and drained, and arms
 * a watchdog: if release or abort has not come by the deadline, the
 * hold is aborted on its own (I4) and later steps get -ETIMEDOUT.
 * Commit leaves the gate held; release opens it and makes the commit
 * durable; abort takes a commit back (durably) and opens the gate.  One
 * hold at a time: -EBUSY.
 */
int vt_snapshots_hold(struct vt_snapshots *s, const char *name, unsigned timeout_ms,
		      struct vt_snap_phases *ph);
int vt_snapshots_commit(struct vt_snapshots *s, const char *name, struct vt_snap_phases *ph);
int vt_snapshots_release(struct vt_snapshots *s, const char *name, struct vt_snap_phases *ph);
int vt_snapshots_abort(struct vt_snapshots *s, const char *name);

/* Drop a snapshot's data; its checkpoint stays, as a plain one.
 * -ENOENT when NAME has no snapshot.  *freed: diff-store bytes freed. */
int vt_snapshots_delete(struct vt_snapshots *s, const char *name, uint64_t *freed);

/*
 * Sync the volume, then the diff store, and clear the copies-pending
 * mark, unless a copy is under way (-EAGAIN).  A live server's keeper
 * does this after each quiet second; offline users and tests call it.
 */
int vt_snapshots_settle(struct vt_snapshots *s);

/* The read-only export "snapshot/NAME" (a new reference). */
int vt_snapshots_export(struct vt_snapshots *s, const char *name, struct vt_export **out);

#define VT_SNAPSHOT_PREFIX "snapshot/"

#endif
