/*
 * faultfs: a power-cut simulator under the tracker's file operations.
 *
 * Writes are applied at once (reads see them, as with a page cache) and
 * remembered with the bytes they replaced until the file is synced.  At
 * faultfs_crash() every unsynced write is undone, newest first, and then
 * a random subset is applied again in order, some of them torn: only a
 * random selection of their 512-byte sectors lands.  Test-only.
 */
#ifndef VOLTRACK_FAULTFS_H
#define VOLTRACK_FAULTFS_H

#include <pthread.h>
#include <stdint.h>

#include "fsops.h"

struct fault_write;

struct faultfs {
	struct vt_fsops ops;		/* first: the tracker sees only this */
	pthread_mutex_t lock;
	struct fault_write *head, *tail;
	uint64_t rng;
	/* what the last crash did */
	unsigned kept, dropped, torn;
};

void faultfs_init(struct faultfs *ff, uint64_t seed);
void faultfs_destroy(struct faultfs *ff);
/* Simulate the power cut; returns the number of unsynced writes. */
unsigned faultfs_crash(struct faultfs *ff);
uint64_t faultfs_random(struct faultfs *ff);

#endif
