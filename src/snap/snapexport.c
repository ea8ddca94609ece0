/*
 * The read-only export of one snapshot, "snapshot/NAME".
 *
 * A read goes to the volume first, then each chunk the snapshot has a
 * copy of is read again from the diff store over its part of the
 * buffer.  That order is what makes it safe against a write racing the
 * read: a write may change a chunk only after the chunk's copy is
 * published, so if the volume read saw the write's data, the lookup
 * after it finds the copy (or the copy under way, which it waits for)
 * and the stale part is replaced.
 *
 * qemu:dirty-bitmap:C on it means "changed between C and the snapshot":
 * a block's epoch at the snapshot is the one kept beside its chunk's
 * copy, or the map's own where the chunk has not been written since.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "snapshots.h"
#include "volume.h"

struct snap_export {
	struct vt_target tgt;		/* first: a read's op->tgt points here */
	struct vt_snapshots *s;
	char name[CKPT_NAME_MAX + 1];
	uint32_t seq;
};

#define OP_OF(ptr, member) ((struct vt_op *)((char *)(ptr) - offsetof(struct vt_op, member)))

/*
 * A read's own state, kept in fields of the op the write family uses
 * and a read does not: cow_iov holds the caller's buffer as it was
 * (the engine may advance op->iov), cow_next the chunk to look at.
 */

static uint64_t se_size(void *impl)
{
	return ((struct snap_export *)impl)->s->vol->size;
}

/* 0 when the snapshot can be read, else -EIO with op->why set. */
static int usable(struct snap_export *se, struct vt_op *op)
{
	struct vt_snap sn;

	if (vt_snapset_get(se->s->set, se->name, &sn) || sn.seq != se->seq) {
		op->why = "the snapshot was deleted";
		return -EIO;
	}
	if (!sn.valid) {
		op->why = "the snapshot is invalid (see voltrack list)";
		return -EIO;
	}
	return 0;
}

static void patch_next(struct vt_op *op);

static bool usable_quiet(struct snap_export *se)
{
	struct vt_snap sn;

	return vt_snapset_get(se->s->set, se->name, &sn) == 0 && sn.seq == se->seq && sn.valid;
}

static void patch_done(struct vio_req *io)
{
	struct vt_op *op = OP_OF(io, io);

	if (io->res < 0) {
		op->done(op, (int)io->res);
		return;
	}
	if ((uint64_t)io->res != op->cow.len) {
		/* The copy is not all there: never hand out the volume's
		 * newer data in its place. */
		op->why = "the diff store is shorter than its records say";
		op->done(op, -EIO);
		return;
	}
	patch_next(op);
}

static void patch_resumed(struct vt_parked *p, int err)
{
	(void)err;
	patch_next(OP_OF(p, cow_wait.park));
}

static void patch_next(struct vt_op *op)
{
	struct snap_export *se = (struct snap_export *)op->tgt;
	struct vt_snapset *set = se->s->set;
	uint64_t end = op->off + op->len;
	uint64_t last = (end - 1) >> set->chunk_shift;

	while (op->cow_next <= last) {
		uint64_t chunk = op->cow_next;
		uint32_t slot;
		int r = vt_snapset_lookup(set, se->seq, chunk, &slot, &op->cow_wait);
		if (r == -EAGAIN)
			return; /* patch_resumed() looks again */
		op->cow_next++;
		if (r == VT_SNAP_FROM_VOLUME)
			continue;
		uint64_t c0 = chunk << set->chunk_shift;
		uint64_t from = c0 > op->off ? c0 : op->off;
		uint64_t to = c0 + set->chunk_size < end ? c0 + set->chunk_size : end;
		if (r == VT_SNAP_FROM_ZEROES) {
			memset((char *)op->cow_iov.iov_base + (from - op->off), 0, to - from);
			continue;
		}
		op->io = (struct vio_req){
			.op = VIO_READ, .fd = se->s->ds->data_fd, .iov = &op->iov[0],
			.iovcnt = 1, .off = diffstore_slot_offset(se->s->ds, slot) + (from - c0),
			.done = patch_done };
		op->iov[0].iov_base = (char *)op->cow_iov.iov_base + (from - op->off);
		op->iov[0].iov_len = to - from;
		op->cow.len = to - from;
		vio_submit(op->loop->eng, &op->io);
		return;
	}
	/* Deleted while being read: its slots may hold other chunks now. */
	op->done(op, usable(se, op));
}

static void origin_done(struct vio_req *io)
{
	struct vt_op *op = OP_OF(io, io);

	if (io->res < 0) {
		op->done(op, (int)io->res);
		return;
	}
	if ((uint64_t)io->res != op->len) {
		op->why = "volume shrank under the server";
		op->done(op, -EIO);
		return;
	}
	patch_next(op);
}

static void se_read(void *impl, struct vt_loop *loop, struct vt_op *op)
{
	struct snap_export *se = impl;
	int err = usable(se, op);

	if (!err && op->iovcnt != 1)
		err = -EINVAL; /* frontends read into one buffer */
	if (err) {
		op->done(op, err);
		return;
	}
	/* A snapshot read never enters the pipeline; its op->tgt leads back
	 * here from the completions. */
	op->tgt = &se->tgt;
	op->loop = loop;
	op->cow_iov = op->iov[0];
	op->cow_next = op->off >> se->s->set->chunk_shift;
	op->cow_wait.loop = loop;
	op->cow_wait.park.resume = patch_resumed;
	volume_prep_read(se->s->vol, &op->io, op->iov, 1, op->off);
	op->io.done = origin_done;
	vio_submit(loop->eng, &op->io);
}

static void se_flush(void *impl, struct vt_loop *loop, struct vt_op *op)
{
	(void)impl;
	(void)loop;
	op->done(op, 0); /* nothing is ever written through it */
}

static void se_allocation(void *impl, uint64_t off, uint64_t len, bool *hole, uint64_t *run)
{
	struct snap_export *se = impl;
	struct vt_snapset *set = se->s->set;
	uint64_t chunk = off >> set->chunk_shift;
	uint64_t c_end = (chunk + 1) << set->chunk_shift;
	uint32_t slot;

	if (len > c_end - off)
		len = c_end - off;
	/* The volume first, the copy second, as for a read: a write that
	 * changed the chunk's allocation after its copy is caught below. */
	volume_allocation(se->s->vol, off, len, hole, run);
	int from = vt_snapset_lookup(set, se->seq, chunk, &slot, NULL);
	bool usable_now = usable_quiet(se);
	if (from != VT_SNAP_FROM_VOLUME || !usable_now) {
		/* Copied or being copied: its old content is data, unless it
		 * was copied as zeroes.  (And for a snapshot that cannot be
		 * read, "data" is the safe answer.) */
		*hole = from == VT_SNAP_FROM_ZEROES && usable_now;
		*run = len;
	}
}

static struct tracker *se_tracker(void *impl)
{
	return ((struct snap_export *)impl)->s->tracker;
}

static unsigned se_bitmap_limit(void *impl)
{
	struct snap_export *se = impl;
	struct vt_snap sn;

	/* Looked up each time: a renumbering may have changed it. */
	if (vt_snapset_get(se->s->set, se->name, &sn) || sn.seq != se->seq)
		return 0;
	return sn.epoch;
}

static uint64_t se_changed(void *impl, uint8_t since, uint64_t off, uint64_t len,
			   bool *changed)
{
	struct snap_export *se = impl;
	const struct changemap *cm = tracker_map(se->s->tracker);
	uint64_t gran = 1ull << cm->gran_shift;
	uint64_t b = off >> cm->gran_shift, run = 0;

	if (!usable_quiet(se)) {
		/* Deleted or invalid: "changed" is the answer that can never
		 * make a backup skip data. */
		*changed = true;
		return len;
	}
	uint64_t last = (off + len - 1) >> cm->gran_shift;
	if (last >= cm->nblocks)
		last = cm->nblocks - 1;
	uint64_t n = vt_snapset_changed_run(se->s->set, se->seq, since, b, last - b + 1, changed);
	run = (b + n) * gran - off;
	return run < len ? run : len;
}

static void se_release(void *impl)
{
	free(impl);
}

static const struct vt_export_ops snap_ops = {
	.size = se_size,
	.read = se_read,
	.write = NULL,
	.flush = se_flush,
	.allocation = se_allocation,
	.cache = NULL,
	.tracker = se_tracker,
	.bitmap_limit = se_bitmap_limit,
	.changed = se_changed,
	.release = se_release,
};

int vt_snapshots_export(struct vt_snapshots *s, const char *name, struct vt_export **out)
{
	struct snap_export *se = calloc(1, sizeof(*se));
	struct vt_snap sn;
	char ename[sizeof(VT_SNAPSHOT_PREFIX) + CKPT_NAME_MAX];
	char desc[64 + CKPT_NAME_MAX];
	int err;

	if (!se)
		return -ENOMEM;
	err = vt_snapset_get(s->set, name, &sn);
	if (err) {
		free(se);
		return err;
	}
	se->s = s;
	se->seq = sn.seq;
	memcpy(se->name, sn.name, sizeof(se->name));
	snprintf(ename, sizeof(ename), VT_SNAPSHOT_PREFIX "%s", name);
	snprintf(desc, sizeof(desc), "snapshot %s (read-only)", name);
	return vt_export_create(ename, desc, &snap_ops, se, VT_EXPORT_READ_ONLY, out);
}
