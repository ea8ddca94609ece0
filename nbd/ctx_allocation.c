/*
 * base:allocation: which ranges are holes that read as zeroes.
 *
 * Answered by the export's allocation operation at query time (for the
 * live volume, SEEK_DATA / SEEK_HOLE on the filesystem), so it is always
 * current.  0 ("data") is the safe answer where nothing can tell.
 */
#include <errno.h>
#include <string.h>

#include "metactx.h"
#include "proto.h"

#define NAME "base:allocation"

static void alloc_list(void *opaque, const struct vt_export *exp,
		       const char *query, size_t qlen, metactx_emit_fn emit, void *arg)
{
	if (!query || metactx_name_is(query, qlen, "base:") || metactx_name_is(query, qlen, NAME))
		emit(arg, NAME);
}

static int alloc_open(void *opaque, const struct vt_export *exp,
		      const char *name, size_t len, void **ctx)
{
	*ctx = NULL;
	return metactx_name_is(name, len, NAME) ? 0 : -ENOENT;
}

static int alloc_extents(void *ctx, const struct vt_export *exp, uint64_t off,
			 uint64_t len, struct nbd_extent *out, size_t max)
{
	size_t n = 0;

	while (len && n < max) {
		bool hole;
		uint64_t run;
		exp->ops->allocation(exp->impl, off, len, &hole, &run);
		uint32_t flags = hole ? NBD_STATE_HOLE | NBD_STATE_ZERO : 0;
		if (n && out[n - 1].flags == flags &&
		    (uint64_t)out[n - 1].length + run <= UINT32_MAX) {
			out[n - 1].length += (uint32_t)run;
		} else {
			/* run <= len, and the request length fits in 32 bits */
			out[n].length = (uint32_t)run;
			out[n].flags = flags;
			n++;
		}
		off += run;
		len -= run;
	}
	return (int)n;
}

const struct metactx_provider metactx_base_allocation = {
	.prefix = "base:",
	.opaque = NULL,
	.list = alloc_list,
	.open = alloc_open,
	.extents = alloc_extents,
	.close = NULL,
};
