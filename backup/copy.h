/*
 * copy: read an NBD export into the repository, as the chunks of one
 * manifest (the heart of `backup`).
 *
 * The volume is cut into slices of whole chunks.  Each of `jobs`
 * workers has its own NBD connection, claims the next slice, asks the
 * server for that slice's extents (base:allocation, and the dirty
 * bitmap for an incremental backup) and reads its chunks with several
 * requests in flight, hashing, compressing and storing each one itself.
 * So discovery never walks the whole disk before the first read, and
 * the workers keep the connections busy while others compute.
 *
 * For an incremental backup (parent non-NULL, bitmap named) a chunk in
 * which no block is dirty keeps the parent's entry and is not read.
 * A chunk whose data reads as zeroes, or which the server reports as
 * zero, is a hole, stored as nothing.  Only ZERO extents are skipped
 * without reading: HOLE alone does not promise zeroes.
 *
 * Returns 0 or -errno; on failure msg says what failed (one line).
 * -ENOENT: the bitmap is not offered by the server (nothing was read).
 */
#ifndef VOLTRACK_BACKUP_COPY_H
#define VOLTRACK_BACKUP_COPY_H

#include <stddef.h>
#include <stdint.h>

#include "manifest.h"
#include "progress.h"
#include "repo.h"

struct bk_copy_stats {
	uint64_t bytes_read;	/* payload read from the server */
	uint64_t bytes_stored;	/* chunk files written */
	uint64_t chunks_read;
	uint64_t chunks_new;
};

/* The size of the export at uri, and whether it offers the bitmap
 * (when bitmap is not NULL). */
int bk_source_probe(const char *uri, const char *bitmap, uint64_t *size, bool *has_bitmap,
		    char *msg, size_t msglen);

/* m is allocated for the export's size and the repository's chunk
 * size; parent, when given, has the same geometry. */
int bk_copy(struct bk_repo *r, const char *uri, const char *bitmap,
	    const struct bk_manifest *parent, struct bk_manifest *m, unsigned jobs,
	    struct bk_progress *prog, struct bk_copy_stats *st, char *msg, size_t msglen);

/* Default --jobs: the number of online CPUs, at least 2, at most 8. */
unsigned bk_default_jobs(void);

#endif
