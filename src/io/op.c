#include "op.h"

#include <errno.h>
#include <stddef.h>
#include <string.h>

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
	if (op->gated) {
		/* Likewise for the gate: a hold waits for exactly this. */
		op->gated = false;
		vt_gate_leave(op->tgt->gate);
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

static void cow_io_done(struct vt_op *op, int64_t res);

static void io_done(struct vio_req *io)
{
	struct vt_op *op = OP_OF(io, io);
	struct volume *vol = op->tgt->vol;
	int64_t res = io->res;

	if (op->stage >= VT_STAGE_COW_READ && op->stage <= VT_STAGE_COW_RECORD) {
		cow_io_done(op, res);
		return;
	}
	if (op->stage == VT_STAGE_WITNESS) {
		/* The witness's error is a writeback error: latch it.  The
		 * write itself failed, whatever the witness says. */
		volume_sync_done(vol, (int)res);
		finish(op, op->data_err);
		return;
	}
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
		if ((op->flags & VT_OP_FUA) && volume_space_error((int)res) &&
		    vol->witness_fd >= 0) {
			op->data_err = (int)res;
			op->stage = VT_STAGE_WITNESS;
			volume_prep_witness(vol, &op->io);
			submit(op);
			break;
		}
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

/* ---- COW ---- */

static int prep_data(struct vt_op *op);

/* Every chunk is copied (or needs no copy): the data I/O can follow. */
static void cow_done(struct vt_op *op)
{
	/* COW used op->io for its own I/O: prepare the write's again (it
	 * was accepted once, so it is accepted again). */
	prep_data(op);
	start_track(op);
}

static void cow_next(struct vt_op *op);

static void cow_resumed(struct vt_parked *p, int err)
{
	/* Another writer's copy is over, or an invalidation is durable (or
	 * could not be made so: the write goes on all the same, I5). */
	(void)err;
	cow_next((struct vt_op *)((char *)p - offsetof(struct vt_op, cow_wait.park)));
}

/*
 * The copy could not be made: its snapshots lose, the write goes on
 * (I5), but not before they are durably invalid.  Claiming the chunk
 * again waits for that, parked, off this loop's way (snapset.h).
 */
static void cow_failed(struct vt_op *op, int err)
{
	vt_snapset_publish(op->tgt->snaps, &op->cow, err);
	op->cow_next = op->cow.chunk;
	cow_next(op);
}

static void cow_submit(struct vt_op *op, uint8_t stage, int fd, void *buf, uint64_t len,
		       uint64_t off)
{
	op->stage = stage;
	op->cow_iov = (struct iovec){ .iov_base = buf, .iov_len = len };
	op->io = (struct vio_req){ .op = stage == VT_STAGE_COW_READ ? VIO_READ : VIO_WRITE,
				   .fd = fd, .iov = &op->cow_iov, .iovcnt = 1, .off = off };
	/*
	 * The copy's two writes go into the page cache on this thread, as a
	 * small volume write does (volume_prep_write): io_uring cannot write
	 * a file buffered without blocking on most file systems, so it hands
	 * such writes to its worker threads, which run the writes to one
	 * file one after another.  Behind a burst of copies (every write
	 * right after a snapshot makes one), a write would wait for all the
	 * others' copies before its own.  The read stays asynchronous: from
	 * the page cache io_uring completes it at once, and a read from the
	 * disk must not stop the loop.
	 */
	if (stage != VT_STAGE_COW_READ && len <= VOLUME_INLINE_WRITE_MAX)
		op->io.flags = VIO_F_INLINE;
	submit(op);
}

static bool all_zero(const void *buf, size_t len)
{
	const unsigned char *p = buf;

	return !len || (!p[0] && !memcmp(p, p + 1, len - 1));
}

/* Copy first, record second: a record never names a slot whose data has
 * not reached the kernel. */
static void cow_write_record(struct vt_op *op)
{
	struct diffstore *ds = op->tgt->snaps->ds;

	diffstore_encode(ds, op->cow.slot, &op->cow.rec, op->cow_rec);
	cow_submit(op, VT_STAGE_COW_RECORD, ds->map_fd, op->cow_rec, DS_RECORD_SIZE,
		   diffstore_record_offset(op->cow.slot));
}

static void cow_io_done(struct vt_op *op, int64_t res)
{
	struct vt_snapset *set = op->tgt->snaps;
	struct diffstore *ds = set->ds;
	struct vt_cow_job *job = &op->cow;

	if (res >= 0 && op->stage == VT_STAGE_COW_READ && (uint64_t)res != job->len)
		res = -EIO; /* the volume shrank under the server */
	if (res < 0) {
		cow_failed(op, (int)res);
		return;
	}
	switch (op->stage) {
	case VT_STAGE_COW_READ:
		/*
		 * A chunk of zeroes (most of a sparse volume) needs no copy:
		 * its record says so, and the snapshot reads zeroes.  That is
		 * a write fewer per first write to such a chunk, and on a
		 * sparse volume the one that most often allocated blocks.
		 */
		if (ds->zero_records && all_zero(job->buf, job->len)) {
			job->rec.zero = true;
			cow_write_record(op);
			break;
		}
		cow_submit(op, VT_STAGE_COW_WRITE, ds->data_fd, job->buf, job->len,
			   diffstore_slot_offset(ds, job->slot));
		break;
	case VT_STAGE_COW_WRITE:
		cow_write_record(op);
		break;
	default:
		/* Both reached the kernel: a kill -9 from here on keeps the
		 * copy, and only now may the chunk change. */
		vt_snapset_publish(set, job, 0);
		cow_next(op);
		break;
	}
}

/* The chunk is claimed and the mark set: copy it out. */
static void cow_copy(struct vt_op *op)
{
	cow_submit(op, VT_STAGE_COW_READ, op->tgt->vol->fd, op->cow.buf, op->cow.len,
		   op->cow.off);
}

static void mark_resumed(struct vt_parked *p, int err)
{
	struct vt_op *op = OP_OF(p, park);

	if (err)
		cow_failed(op, err); /* no mark, no copy */
	else
		cow_copy(op);
}

/* On the marker's thread: hand the op back to its own loop. */
static void mark_ready(struct ds_mark_wait *w, int err)
{
	struct vt_op *op = OP_OF(w, mark_wait);

	vt_loop_resume(op->loop, &op->park, err);
}

/* Walk the chunks the write covers, copying those a snapshot needs. */
static void cow_next(struct vt_op *op)
{
	struct vt_snapset *set = op->tgt->snaps;
	uint64_t last = (op->off + op->len - 1) >> set->chunk_shift;

	while (op->cow_next <= last) {
		switch (vt_snapset_claim(set, op->cow_next, &op->cow_wait, &op->cow)) {
		case VT_COW_NONE:
			op->cow_next++;
			continue;
		case VT_COW_WAIT:
			/* for another writer's copy, or an invalidation:
			 * cow_resumed() claims the same chunk again */
			return;
		case VT_COW_COPY: {
			op->cow_next++;
			/* Before its first I/O: the copies-pending mark must be
			 * durable (diffstore.h), or a power cut could leave the
			 * overwrite on disk and no sign that its copy is not. */
			op->mark_wait.ready = mark_ready;
			op->park.resume = mark_resumed;
			int r = diffstore_copy_begin(set->ds, &op->mark_wait);
			if (r < 0) {
				cow_failed(op, r);
				return;
			}
			if (r == 0)
				cow_copy(op);
			/* else parked: mark_resumed() continues on this loop */
			return;
		}
		}
	}
	cow_done(op);
}

static void start_cow(struct vt_op *op)
{
	if (!vt_snapset_active(op->tgt->snaps)) {
		/* The hot path when no snapshot is live: this one branch. */
		start_track(op);
		return;
	}
	op->cow_wait.loop = op->loop;
	op->cow_wait.park.resume = cow_resumed;
	op->cow_next = op->off >> op->tgt->snaps->chunk_shift;
	cow_next(op);
}

/* ---- GATE ---- */

static void gate_resumed(struct vt_parked *p, int err);

static void start_gate(struct vt_op *op)
{
	struct vt_gate *g = op->tgt->gate;

	op->stage = VT_STAGE_GATE;
	if (!g) {
		start_cow(op);
		return;
	}
	op->gate_wait.loop = op->loop;
	op->gate_wait.park.resume = gate_resumed;
	if (vt_gate_enter(g, &op->gate_wait)) {
		op->gated = true;
		start_cow(op);
	}
	/* else held: gate_resumed() knocks again after the release */
}

static void gate_resumed(struct vt_parked *p, int err)
{
	struct vt_op *op = (struct vt_op *)((char *)p - offsetof(struct vt_op, gate_wait.park));

	(void)err; /* a held write is never failed */
	start_gate(op);
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
	op->gated = false;
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
		start_gate(op);
}
