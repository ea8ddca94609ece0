#include "export.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "volume.h"

int vt_export_create(const char *name, const char *description,
		     const struct vt_export_ops *ops, void *impl, unsigned flags,
		     struct vt_export **out)
{
	struct vt_export *e = calloc(1, sizeof(*e));

	if (e) {
		e->name = strdup(name);
		e->description = strdup(description ? description : "");
	}
	if (!e || !e->name || !e->description) {
		if (e) {
			free(e->name);
			free(e->description);
			free(e);
		}
		ops->release(impl);
		return -ENOMEM;
	}
	e->ops = ops;
	e->impl = impl;
	e->flags = flags | (ops->write ? 0 : VT_EXPORT_READ_ONLY);
	atomic_init(&e->refs, 1);
	*out = e;
	return 0;
}

struct vt_export *vt_export_get(struct vt_export *e)
{
	atomic_fetch_add(&e->refs, 1);
	return e;
}

void vt_export_put(struct vt_export *e)
{
	if (e && atomic_fetch_sub(&e->refs, 1) == 1) {
		e->ops->release(e->impl);
		free(e->name);
		free(e->description);
		free(e);
	}
}

void vt_export_start(struct vt_export *e, struct vt_loop *loop, struct vt_op *op)
{
	/* Here, not in each implementation: a slot's op is reused, and a
	 * stale why from its last request must never reach a client. */
	op->why = NULL;
	switch (op->type) {
	case VT_OP_READ:
		e->ops->read(e->impl, loop, op);
		return;
	case VT_OP_FLUSH:
		e->ops->flush(e->impl, loop, op);
		return;
	default:
		if (vt_export_read_only(e)) {
			op->done(op, -EPERM);
			return;
		}
		e->ops->write(e->impl, loop, op);
		return;
	}
}

/* ---- the live volume ---- */

struct live {
	struct vt_target tgt;
};

static uint64_t live_size(void *impl)
{
	return ((struct live *)impl)->tgt.vol->size;
}

static void live_start(void *impl, struct vt_loop *loop, struct vt_op *op)
{
	vt_op_start(loop, &((struct live *)impl)->tgt, op);
}

static void live_allocation(void *impl, uint64_t off, uint64_t len, bool *hole,
			    uint64_t *run)
{
	volume_allocation(((struct live *)impl)->tgt.vol, off, len, hole, run);
}

static void live_cache(void *impl, uint64_t off, uint64_t len)
{
	volume_cache(((struct live *)impl)->tgt.vol, off, len);
}

static struct tracker *live_tracker(void *impl)
{
	return ((struct live *)impl)->tgt.tracker;
}

static void live_release(void *impl)
{
	free(impl);
}

static const struct vt_export_ops live_ops = {
	.size = live_size,
	.read = live_start,
	.write = live_start,
	.flush = live_start,
	.allocation = live_allocation,
	.cache = live_cache,
	.tracker = live_tracker,
	.release = live_release,
};

int vt_export_live(const char *name, const char *description, const struct vt_target *tgt,
		   bool read_only, struct vt_export **out)
{
	struct live *l = malloc(sizeof(*l));

	if (!l)
		return -ENOMEM;
	l->tgt = *tgt;
	return vt_export_create(name, description, &live_ops, l,
				read_only || tgt->vol->read_only ? VT_EXPORT_READ_ONLY : 0, out);
}

int vt_export_volume(const char *name, const char *description, struct volume *vol,
		     struct tracker *tracker, bool read_only, struct vt_export **out)
{
	struct vt_target tgt = { .vol = vol, .tracker = tracker };

	return vt_export_live(name, description, &tgt, read_only, out);
}
