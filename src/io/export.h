/*
 * export: something a frontend serves as a block device, behind a table
 * of operations.
 *
 * The live volume is one implementation (vt_export_volume()); a
 * read-only snapshot will be another.  Frontends (the NBD server, the
 * control socket that adds and removes exports) see only this
 * interface.  Contract:
 *
 *   - Operations that move data are asynchronous: they take a struct
 *     vt_op (op.h) the frontend embeds in its request slot and complete
 *     it through op->done on the loop's owner thread.  vt_export_start()
 *     is the one entry: it routes READ, FLUSH and the write family, and
 *     completes a write on a read-only export with -EPERM.
 *   - The other operations are synchronous and may run on any thread.
 *   - An export is reference-counted.  vt_export_create() returns the
 *     first reference; whoever stores or uses the pointer on another
 *     thread holds one (vt_export_get), and the last vt_export_put()
 *     calls ops->release(impl).  A connection holding a reference keeps
 *     an export usable after it has been unlisted.
 */
#ifndef VOLTRACK_IO_EXPORT_H
#define VOLTRACK_IO_EXPORT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "loop.h"
#include "op.h"

struct tracker;
struct volume;

struct vt_export_ops {
	uint64_t (*size)(void *impl);
	void (*read)(void *impl, struct vt_loop *loop, struct vt_op *op);
	/* WRITE, TRIM, ZERO.  NULL makes the export read-only. */
	void (*write)(void *impl, struct vt_loop *loop, struct vt_op *op);
	void (*flush)(void *impl, struct vt_loop *loop, struct vt_op *op);
	/* Sets *hole when [off, off + *run) reads as zeroes without being
	 * stored, and the length of the run, at most len, that shares it.
	 * "Data" is always a safe answer. */
	void (*allocation)(void *impl, uint64_t off, uint64_t len, bool *hole,
			   uint64_t *run);
	/* Hint that [off, off+len) will be read soon; may be NULL. */
	void (*cache)(void *impl, uint64_t off, uint64_t len);
	/* The tracker whose checkpoints describe this export's changes
	 * (qemu:dirty-bitmap:NAME), or NULL for none. */
	struct tracker *(*tracker)(void *impl);
	/*
	 * For qemu:dirty-bitmap on an export that is not the live volume:
	 * only checkpoints whose epoch is below bitmap_limit() are offered,
	 * and changed() answers like changemap_run(): the run at off, at
	 * most len, whose blocks agree on "changed since epoch `since`".
	 * NULL for both: every checkpoint, and the tracker's map as it is.
	 */
	unsigned (*bitmap_limit)(void *impl);
	uint64_t (*changed)(void *impl, uint8_t since, uint64_t off, uint64_t len,
			    bool *changed);
	/* The last reference is gone: free impl. */
	void (*release)(void *impl);
};

#define VT_EXPORT_READ_ONLY 1u

struct vt_export {
	char *name;			/* "" for the live volume */
	char *description;
	const struct vt_export_ops *ops;
	void *impl;
	unsigned flags;			/* VT_EXPORT_*; READ_ONLY when ops->write is NULL */
	atomic_uint refs;
};

/* Takes over impl: on failure ops->release(impl) has run. */
int vt_export_create(const char *name, const char *description,
		     const struct vt_export_ops *ops, void *impl, unsigned flags,
		     struct vt_export **out);
struct vt_export *vt_export_get(struct vt_export *e);
void vt_export_put(struct vt_export *e);

static inline bool vt_export_read_only(const struct vt_export *e)
{
	return e->flags & VT_EXPORT_READ_ONLY;
}

static inline uint64_t vt_export_size(const struct vt_export *e)
{
	return e->ops->size(e->impl);
}

static inline struct tracker *vt_export_tracker(const struct vt_export *e)
{
	return e->ops->tracker ? e->ops->tracker(e->impl) : NULL;
}

/* Start op (type and flags as in op.h) on loop's owner thread. */
void vt_export_start(struct vt_export *e, struct vt_loop *loop, struct vt_op *op);

/*
 * The live volume: every operation goes through the write pipeline
 * (op.h) with tracker, or untracked when tracker is NULL.  vol and
 * tracker are borrowed and must outlive the export's last reference.
 */
int vt_export_volume(const char *name, const char *description, struct volume *vol,
		     struct tracker *tracker, bool read_only, struct vt_export **out);

/* The same over a whole target: with its gate and snapshots, writes are
 * held by snapshots' holds and copied on write.  tgt is copied; what it
 * points to is borrowed. */
int vt_export_live(const char *name, const char *description, const struct vt_target *tgt,
		   bool read_only, struct vt_export **out);

#endif
