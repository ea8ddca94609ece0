#include "op.h"

#include <errno.h>
#include <stddef.h>

#include "tracker.h"
#include "volume.h"

#define OP_OF(ptr, member) ((struct vt_op *)((char *)(ptr) - offsetof(struct vt_op, member)))

static void finish(struct vt_op *op, int err)
{
	if (op->tracked) {
		/* The one place that closes what tracker_write_begin opened:
		 * every path to done passes here, after the I/O is over. */
		op->tracked = false;
		tracker_write_end(op->tgt->tracker, op->off, op->len);
	}
	op->done(op, err);
}

static void fail(struct vt_op *op, int err, const char *why)
{
	op->why = why;
	finish(op, err);
}

static void io_done(struct vio_req *io);

static void submit(struct vt_op *op)
{
	op->io.done = io_done;
	vio_submit(op->loop->eng, &op->io);
}

static unsigned zero_flags(const struct vt_op *op)
{
	return ((op->flags & VT_OP_MAY_UNMAP) ? VOLUME_ZERO_MAY_UNMAP : 0) |
	       ((op->flags & VT_OP_FAST) ? VOLUME_ZERO_FAST : 0);
}

static void fail_zero(struct vt_op *op)
{
	/* With VT_OP_FAST, "not quickly" is the answer the client asked for. */
	if (op->flags & VT_OP_FAST)
		fail(op, -ENOTSUP, "cannot zero quickly");
	else
		fail(op, -EIO, "no way to zero this range");
}

/* ---- DATA ---- */

static void start_data(struct vt_op *op)
{
	op->stage = VT_STAGE_DATA;
	submit(op);
}

static void start_flush(struct vt_op *op)
{
	op->stage = VT_STAGE_FLUSH;
	volume_prep_flush(op->tgt->vol, &op->io);
	submit(op);
}

/* The data step of a TRIM or WRITE_ZEROES is over: fail, or make it
 * durable first when the client asked for FUA. */
static void data_done(struct vt_op *op, int64_t res)
{
	if (res < 0)
		finish(op, (int)res);
	else if (op->flags & VT_OP_FUA)
		start_flush(op);
	else
		finish(op, 0);
}

static void zero_done(struct vt_op *op, int64_t res)
{
	if (res < 0 && volume_zero_retryable(res)) {
		if (volume_prep_zero(op->tgt->vol, &op->io, op->off, op->len, zero_flags(op),
				     ++op->zero_step) == 0)
			submit(op);
		else
			fail_zero(op);
		return;
	}
	data_done(op, res);
}

static void io_done(struct vio_req *io)
{
	struct vt_op *op = OP_OF(io, io);
	struct volume *vol = op->tgt->vol;
	int64_t res = io->res;

	if (op->stage == VT_STAGE_FLUSH) {
		/* A sync error is latched in the volume: this and every later
		 * FLUSH or FUA op fails, whoever saw the error first. */
		finish(op, volume_sync_done(vol, (int)res));
		return;
	}
	switch (op->type) {
	case VT_OP_READ:
		if (res >= 0 && (uint64_t)res != op->len)
			fail(op, -EIO, "volume shrank under the server");
		else
			finish(op, res < 0 ? (int)res : 0);
		break;
	case VT_OP_TRIM:
		if (res == -EOPNOTSUPP || res == -ENOTTY)
			res = 0;
		data_done(op, res);
		break;
	case VT_OP_ZERO:
		zero_done(op, res);
		break;
	case VT_OP_WRITE:
		/* A FUA write syncs too (RWF_DSYNC): its error may be an earlier
		 * write's writeback error, reported only here, so it latches;
		 * and it is only as durable as the volume's last sync. */
		if (op->flags & VT_OP_FUA) {
			int err = volume_sync_done(vol, res < 0 ? (int)res : 0);
			if (res >= 0 && err)
				res = err;
		}
		finish(op, res < 0 ? (int)res : 0);
		break;
	case VT_OP_FLUSH: {
		int err = volume_sync_done(vol, (int)res);
		/* A client flushing wants durability: persist the change map
		 * soon too, which shortens what a crash would over-report. */
		if (op->tgt->tracker)
			tracker_nudge(op->tgt->tracker);
		finish(op, err);
		break;
	}
	}
}

/* ---- TRACK ---- */

static void track_resumed(struct vt_parked *p, int err)
{
	struct vt_op *op = OP_OF(p, park);

	if (err)
		fail(op, -EIO, "cannot record the write durably");
	else
		start_data(op);
}

/* On the committer thread: hand the op back to its own loop. */
static void intent_ready(struct intent_wait *w, int err)
{
	struct vt_op *op = OP_OF(w, intent);

	vt_loop_resume(op->loop, &op->park, err);
}

static void start_track(struct vt_op *op)
{
	struct tracker *t = op->tgt->tracker;

	op->stage = VT_STAGE_TRACK;
	if (!t) {
		start_data(op);
		return;
	}
	op->tracked = true;
	op->intent.ready = intent_ready;
	op->park.resume = track_resumed;
	int r = tracker_write_begin(t, op->off, op->len, &op->intent);
	if (r == 0)
		start_data(op);
	else if (r < 0)
		fail(op, -EIO, "cannot record the write durably");
	/* else parked: track_resumed() continues on this loop */
}

/* ---- start ---- */

/* Prepare the first data I/O; -errno when the op cannot be done at all. */
static int prep_data(struct vt_op *op)
{
	struct volume *vol = op->tgt->vol;

	switch (op->type) {
	case VT_OP_READ:
		volume_prep_read(vol, &op->io, op->iov, op->iovcnt, op->off);
		return 0;
	case VT_OP_WRITE:
		volume_prep_write(vol, &op->io, op->iov, op->iovcnt, op->off,
				  op->flags & VT_OP_FUA);
		return 0;
	case VT_OP_TRIM:
		volume_prep_trim(vol, &op->io, op->off, op->len);
		return 0;
	case VT_OP_ZERO:
		return volume_prep_zero(vol, &op->io, op->off, op->len, zero_flags(op), 0);
	case VT_OP_FLUSH:
		volume_prep_flush(vol, &op->io);
		return 0;
	}
	return -EINVAL;
}

void vt_op_start(struct vt_loop *loop, const struct vt_target *tgt, struct vt_op *op)
{
	op->tgt = tgt;
	op->loop = loop;
	op->why = NULL;
	op->tracked = false;
	op->zero_step = 0;
	int err = prep_data(op);
	if (err) {
		/* Refused before tracking: nothing will be written.  A zeroing
		 * with no method at all for its flags is the usual case. */
		if (op->type == VT_OP_ZERO)
			fail_zero(op);
		else
			fail(op, err, NULL);
		return;
	}
	if (op->type == VT_OP_READ || op->type == VT_OP_FLUSH)
		start_data(op);
	else
		start_track(op); /* the gate, when it exists, comes before */
}
