/*
 * op: one request against a volume, from start to completion.
 *
 * This is the write pipeline every frontend shares (the NBD server
 * today; a ublk or kernel frontend would call the same).  For WRITE,
 * TRIM and WRITE_ZEROES it runs
 *
 *     tracking begin -> data I/O -> [FUA sync] -> tracking end -> done
 *
 * and for READ and FLUSH just the I/O.  Contract:
 *
 *   - The frontend embeds a struct vt_op in its own request slot (no
 *     allocation per request), fills the fields marked "in", and calls
 *     vt_op_start() on the thread that owns `loop`.
 *   - op->done(op, err) is then called exactly once, on that same
 *     thread, with err 0 or a negative errno; it may be called before
 *     vt_op_start() returns (a request refused up front).  When err is
 *     set, op->why may name the step that failed in words for the
 *     client ("cannot record the write durably"); NULL means err says
 *     it all.  Until done the op, its iov and its buffers belong to the
 *     pipeline.
 *   - Every write-family op that began tracking ends it
 *     (tracker_write_end) before done, whatever the outcome: I/O error,
 *     a failed intent commit, the zero ladder exhausted.
 *   - Sync errors latch in the volume (volume_sync_done): a FLUSH or a
 *     FUA op fails if any sync of the volume ever failed, whoever saw it
 *     first.
 *   - len must not be 0 except for FLUSH (fallocate rejects 0; frontends
 *     answer an empty request themselves).
 *
 * Waiting: an op that must wait for another thread parks (op->park, see
 * loop.h) and is resumed on its own loop, where the stage that parked
 * it either continues or completes the op with the error that ended
 * the wait.  Three stages park: the gate while a hold lasts, COW while
 * another write copies the same chunk, until the diff store's
 * copies-pending mark is durable (src/snap/marker.h), or until a lost
 * copy's snapshots are durably invalid (src/snap/invalidator.h), and
 * tracking until the write's intent region is durable.
 *
 * The stages of a write, in order (op->stage):
 *
 *   GATE   the volume's hold gate (src/snap/gate.h) admits the write or
 *          parks it until the hold is released.  First, so that a held
 *          write is neither copied, marked nor counted in flight by the
 *          tracker: it belongs to the epoch after the snapshot, and the
 *          hold drains only writes it admitted.  From here on, the gate
 *          must be left.
 *   COW    while a snapshot is live (src/snap/snapset.h): copy each chunk
 *          the write covers from the volume into the diff store, and
 *          write its record, before the chunk changes; parks while
 *          another write copies the same chunk.  Before TRACK, so that
 *          the copy keeps the epochs the blocks had at the snapshot
 *          (TRACK raises them).  Its own I/O is neither gated, tracked
 *          nor copied.  A failed copy invalidates the snapshot, never
 *          the write; the write waits, parked, until that is durable.
 *   DATA   the data I/O; WRITE_ZEROES walks down the volume's ladder of
 *          zeroing methods while the kernel says a method is unsupported.
 *   FLUSH  for FUA TRIM and WRITE_ZEROES: a sync once the data is done
 *          (a FUA WRITE is written through instead).
 *   WITNESS  a FUA WRITE that failed with ENOSPC (EDQUOT, EFBIG): the
 *          witness sync (volume.h) decides whether a writeback error
 *          latches; the write fails with its own error either way.  A
 *          full file system is then a failed write, not a latched one:
 *          writes and FLUSHes work again once space is freed.
 *
 * A new stage is a function that either calls the next one or parks
 * with op->park.resume set to its continuation.
 */
#ifndef VOLTRACK_IO_OP_H
#define VOLTRACK_IO_OP_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include "diffstore.h"
#include "gate.h"
#include "intent.h"
#include "loop.h"
#include "snapset.h"
#include "vio.h"

struct tracker;
struct volume;

enum vt_op_type {
	VT_OP_READ,
	VT_OP_WRITE,
	VT_OP_TRIM,		/* advisory: a volume that cannot discard ignores it */
	VT_OP_ZERO,
	VT_OP_FLUSH,
};

#define VT_OP_FUA	1u	/* durable before done (write family) */
#define VT_OP_MAY_UNMAP	2u	/* ZERO: a hole that reads as zeroes is fine */
#define VT_OP_FAST	4u	/* ZERO: -ENOTSUP rather than writing zeroes */

enum vt_op_stage {
	VT_STAGE_GATE,
	VT_STAGE_COW_READ,	/* the chunk from the volume */
	VT_STAGE_COW_WRITE,	/* ... into its diff-store slot */
	VT_STAGE_COW_RECORD,	/* ... and the slot's record */
	VT_STAGE_TRACK,
	VT_STAGE_DATA,
	VT_STAGE_FLUSH,
	VT_STAGE_WITNESS,	/* a FUA write's space error: was it writeback's? */
};

/* What an op acts on; the pointers are borrowed and outlive every op. */
struct vt_target {
	struct volume *vol;
	struct tracker *tracker;	/* NULL: writes are not tracked */
	struct vt_gate *gate;		/* NULL: writes are never held */
	struct vt_snapset *snaps;	/* NULL: no snapshots, no COW */
};

struct vt_op {
	/* in */
	uint8_t type;			/* enum vt_op_type */
	uint8_t flags;			/* VT_OP_* */
	uint64_t off;
	uint64_t len;
	struct iovec *iov;		/* READ / WRITE buffers, len bytes */
	unsigned iovcnt;
	void (*done)(struct vt_op *op, int err);
	/* out */
	const char *why;
	/* pipeline-private */
	const struct vt_target *tgt;
	struct vt_loop *loop;
	uint8_t stage;			/* enum vt_op_stage */
	uint8_t zero_step;		/* rung of the zeroing ladder */
	int data_err;			/* WITNESS: the write's own error */
	bool tracked;			/* between tracker_write_begin and _end */
	bool gated;			/* between vt_gate_enter and _leave */
	struct vio_req io;
	struct intent_wait intent;	/* TRACK's wait for the committer */
	struct vt_parked park;
	struct vt_gate_wait gate_wait;	/* GATE's wait for the release */
	struct vt_cow_wait cow_wait;	/* COW's wait for another copier */
	struct ds_mark_wait mark_wait;	/* COW's wait for the copies-pending mark */
	uint64_t cow_next;		/* the next chunk COW looks at */
	struct vt_cow_job cow;
	struct iovec cow_iov;
	uint8_t cow_rec[DS_RECORD_SIZE];
};

/* Start op on loop's owner thread; see the contract above. */
void vt_op_start(struct vt_loop *loop, const struct vt_target *tgt, struct vt_op *op);

#endif
