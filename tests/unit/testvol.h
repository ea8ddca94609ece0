/*
 * testvol: a fresh volume file with formatted tracking metadata beside
 * it, in a temporary directory, for the tests that drive the tracker
 * through the library.  Functions return 0 or a negative errno, so that
 * any test harness can use them.
 */
#ifndef VOLTRACK_TESTVOL_H
#define VOLTRACK_TESTVOL_H

#include <stdint.h>

#include "fsops.h"
#include "metadir.h"
#include "volume.h"

struct testvol {
	char dir[64], vol_path[96], meta_path[96];
	struct metadir *md;	/* locked, using `ops` */
	struct volume *vol;	/* read-write */
};

/* A sparse file of `size` bytes under /tmp/PREFIX-XXXXXX, metadata in
 * its meta/ (closed cleanly, identity recorded), written through `ops`
 * (NULL: the real ones). */
int testvol_create(struct testvol *tv, const char *prefix, uint64_t size, uint32_t granularity,
		   const struct vt_fsops *ops);

/* The test's own reference: a hash of each block of `gran` bytes of
 * the volume as it reads now, into out[0..nblocks).  0 or -errno. */
int testvol_hash(const struct testvol *tv, uint32_t gran, uint64_t nblocks, uint64_t *out);

/* Close everything and remove the directory. */
void testvol_destroy(struct testvol *tv);

#endif
