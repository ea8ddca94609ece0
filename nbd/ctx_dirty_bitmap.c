/*
 * qemu:dirty-bitmap:NAME — "changed since checkpoint NAME", as QEMU's own
 * server exports it (docs/interop/nbd.rst), so qemu-img, nbdinfo and
 * backup tools read it unchanged.
 *
 * Bit 0 set means dirty.  Extents are whole tracking blocks, rounded
 * outwards.  Offered on every export that has a tracker; checkpoints
 * created while the server runs appear to new connections at once, and
 * deleted ones disappear from them.
 *
 * A selected context is bound to one checkpoint (its serial), not to an
 * epoch number: deleting any checkpoint renumbers the epochs, so each
 * query checks its ticket (tracker_read_begin) and looks the checkpoint
 * up again when the numbering moved.  Once its own checkpoint is gone
 * the context answers with an error, never with another instant's map.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "metactx.h"
#include "proto.h"
#include "tracker.h"

#define PREFIX "qemu:dirty-bitmap:"
#define PREFIX_LEN (sizeof(PREFIX) - 1)

struct bitmap_ctx {
	uint64_t serial;	/* the checkpoint it was selected for */
	uint64_t ticket;	/* the numbering `epoch` belongs to */
	uint8_t epoch;
	char name[CKPT_NAME_MAX + 1];
};

static void bitmap_list(void *opaque, const struct vt_export *exp,
			const char *query, size_t qlen, metactx_emit_fn emit, void *arg)
{
	struct tracker *t = vt_export_tracker(exp);
	struct checkpoint_list l;
	char name[PREFIX_LEN + CKPT_NAME_MAX + 1];

	if (!t)
		return;
	/* "qemu:" and "qemu:dirty-bitmap:" list everything, as QEMU does. */
	bool all = !query || metactx_name_is(query, qlen, "qemu:") || metactx_name_is(query, qlen, PREFIX);
	if (!all && (qlen <= PREFIX_LEN || memcmp(query, PREFIX, PREFIX_LEN) != 0))
		return;
	tracker_checkpoints(t, &l);
	unsigned limit = exp->ops->bitmap_limit ? exp->ops->bitmap_limit(exp->impl) : 256;
	for (uint32_t i = 0; i < l.n; i++) {
		size_t n = strlen(l.items[i].name);
		if (l.items[i].epoch >= limit)
			continue;
		if (!all && !(qlen - PREFIX_LEN == n &&
			      memcmp(query + PREFIX_LEN, l.items[i].name, n) == 0))
			continue;
		memcpy(name, PREFIX, PREFIX_LEN);
		memcpy(name + PREFIX_LEN, l.items[i].name, n + 1);
		emit(arg, name);
	}
}

static int bitmap_open(void *opaque, const struct vt_export *exp,
		       const char *name, size_t len, void **ctx)
{
	struct tracker *t = vt_export_tracker(exp);
	char ckpt[CKPT_NAME_MAX + 1];
	struct bitmap_ctx *b;
	struct checkpoint c;

	if (!t || len <= PREFIX_LEN || len - PREFIX_LEN > CKPT_NAME_MAX ||
	    memcmp(name, PREFIX, PREFIX_LEN) != 0)
		return -ENOENT;
	memcpy(ckpt, name + PREFIX_LEN, len - PREFIX_LEN);
	ckpt[len - PREFIX_LEN] = 0;
	uint64_t ticket = tracker_read_begin(t);
	if (tracker_checkpoint_find(t, ckpt, &c))
		return -ENOENT;
	/* A snapshot answers only for the checkpoints older than itself. */
	if (exp->ops->bitmap_limit && c.epoch >= exp->ops->bitmap_limit(exp->impl))
		return -ENOENT;
	b = malloc(sizeof(*b));
	if (!b)
		return -ENOMEM;
	b->serial = c.serial;
	b->ticket = ticket;
	b->epoch = c.epoch;
	memcpy(b->name, ckpt, len - PREFIX_LEN + 1);
	*ctx = b;
	return 0;
}

/* The epoch of b's checkpoint in the numbering of `ticket`, or -ENOENT
 * once that checkpoint is gone. */
static int bitmap_epoch(struct bitmap_ctx *b, struct tracker *t, uint64_t ticket)
{
	struct checkpoint c;

	if (ticket == b->ticket)
		return 0;
	if (tracker_checkpoint_find(t, b->name, &c) || c.serial != b->serial)
		return -ENOENT;
	b->epoch = c.epoch;
	b->ticket = ticket;
	return 0;
}

static int scan(const struct vt_export *exp, const struct changemap *cm, uint8_t epoch,
		uint64_t off, uint64_t len, struct nbd_extent *out, size_t max)
{
	size_t n = 0;

	while (len && n < max) {
		bool changed;
		uint64_t run = exp->ops->changed ?
			exp->ops->changed(exp->impl, epoch, off, len, &changed) :
			changemap_run(cm, off, len, epoch, &changed);
		/* Descriptor lengths are 32 bits; the request's length is too. */
		if (run > UINT32_MAX - 4095)
			run = (UINT32_MAX - 4095) & ~(uint64_t)4095;
		out[n].length = (uint32_t)run;
		out[n].flags = changed ? NBD_STATE_DIRTY : 0;
		n++;
		if (run >= len)
			break;
		off += run;
		len -= run;
	}
	return (int)n;
}

static int bitmap_extents(void *ctx, const struct vt_export *exp, uint64_t off,
			  uint64_t len, struct nbd_extent *out, size_t max)
{
	struct tracker *t = vt_export_tracker(exp);
	uint64_t ticket;
	int n;

	do {
		ticket = tracker_read_begin(t);
		n = bitmap_epoch(ctx, t, ticket);
		if (n)
			return n;
		n = scan(exp, tracker_map(t), ((struct bitmap_ctx *)ctx)->epoch, off, len, out,
			 max);
	} while (tracker_read_retry(t, ticket));
	return n;
}

static void bitmap_close(void *ctx)
{
	free(ctx);
}

const struct metactx_provider metactx_dirty_bitmap = {
	.prefix = PREFIX,
	.opaque = NULL,
	.list = bitmap_list,
	.open = bitmap_open,
	.extents = bitmap_extents,
	.close = bitmap_close,
};
