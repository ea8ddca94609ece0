/*
 * intent: the durable write-intent map (META/intent).
 *
 * The volume is cut into regions (64 MiB or more).  Before the first
 * data write into a region is issued, the region's bit must be durable
 * on disk; recovery counts every block of a marked region as changed,
 * so data can never reach the disk unrecorded (I1).  Concurrent first
 * writers share one commit: a committer thread writes the whole bitmap
 * into the older of two checksummed slots and fdatasyncs it.
 *
 * Region states (per region, atomic):
 *   CLEAR     bit not set (or being cleared on disk)
 *   PENDING   wanted; writers wait for the commit that includes it
 *   DURABLE   set on disk; writers go straight through
 *   CLEARING  a clear of the bit is being decided or committed
 *
 * Every commit also carries a stamp that recovery uses to tell whether
 * anything but the tracker wrote the volume while no server ran (I6):
 *   - the write lease: a wall-clock time by which the server means to
 *     have renewed it.  While regions are set, the tracker renews it well
 *     before it runs out.  After a crash, a file whose ctime is past the
 *     lease was written by someone else, or by a server whose renewals
 *     stalled (a hung metadata sync): either way recovery doubts
 *     everything.  Writers never wait for the lease; a stall costs an
 *     over-report after a crash, never a slower write path.
 *   - when no region is set in the commit, the volume's identity (size,
 *     inode, ctime) at that moment: no tracked write can happen before
 *     the next commit, so after a crash the volume must still match it.
 *
 * The fast path is two atomics: inflight[r]++ and a load of state[r].
 * Clearing does the mirror image: state DURABLE->CLEARING, then a load
 * of inflight[r], backing off if a writer is there.  With sequentially
 * consistent ordering at least one side sees the other, so a region is
 * never cleared under a write that believed it durable.
 */
#ifndef VOLTRACK_INTENT_H
#define VOLTRACK_INTENT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "fsops.h"
#include "superblock.h"

#define INTENT_NAME "intent"
#define INTENT_MIN_REGION (64ull << 20)
#define INTENT_MAX_REGIONS 32064u	/* bits that fit beside the stamp in one block */

/* The volume as it was at a commit; valid tells whether it was taken. */
struct intent_identity {
	uint64_t size, ino, ctime_ns;
	uint64_t taken_ns;	/* wall clock (coarse) when it was taken */
};

/* What the newest commit said, for recovery (see above). */
struct intent_stamp {
	uint64_t lease_ns;		/* 0: no lease (metadata-only use) */
	bool quiet;			/* no region set; `id` is the volume then */
	struct intent_identity id;
};

struct intent_config {
	/* How far ahead of a commit the write lease reaches; 0 for no
	 * lease (offline use, which never writes the volume). */
	uint64_t lease_ns;
	/* Fills the volume's identity for a commit with no region set;
	 * may be NULL, and then no identity is recorded. */
	int (*identity)(void *arg, struct intent_identity *id);
	void *arg;
};

struct intent_wait {
	/* Called on the committer thread once the regions are durable, or
	 * with -errno when the commit failed (the write must not be issued). */
	void (*ready)(struct intent_wait *w, int err);
	struct intent_wait *next;
	uint64_t need_gen;
};

struct intent;

/* Region size for a volume: a power of two, at least 64 MiB. */
uint64_t intent_region_size(uint64_t volume_size);

/* An empty intent file. */
int intent_create(int dirfd, const struct vt_fsops *ops, const struct superblock *sb);

/*
 * Open and load.  Regions set on disk start DURABLE; *set receives how
 * many, *stamp what the newest commit recorded.  *damaged reports a bad
 * slot.  When the file cannot be trusted (no valid slot, or one bad slot
 * after an unclean stop) the intent starts empty and *doubt is set: the
 * caller must count the whole volume as changed.
 */
int intent_open(int dirfd, const struct vt_fsops *ops, const struct superblock *sb,
		const struct intent_config *cfg, struct intent **out,
		uint32_t *set, struct intent_stamp *stamp, bool *doubt, bool *damaged);
void intent_close(struct intent *in);

/* For `voltrack check`: which of the two slots are whole and describe
 * this volume and generation.  -errno when the file cannot be read. */
int intent_verify(int dirfd, const struct vt_fsops *ops, const struct superblock *sb,
		  bool ok[2]);

int intent_start(struct intent *in);	/* the committer thread */
void intent_stop(struct intent *in);

uint64_t intent_region_bytes(const struct intent *in);
uint32_t intent_nregions(const struct intent *in);
bool intent_region_set(const struct intent *in, uint32_t r);
uint32_t intent_count_set(struct intent *in);

/* 0: go ahead now.  1: parked, w->ready() follows.  Always pair with
 * intent_end(), whatever the outcome. */
int intent_begin(struct intent *in, uint64_t off, uint64_t len, struct intent_wait *w);
void intent_end(struct intent *in, uint64_t off, uint64_t len, unsigned tick);

/*
 * Clear the regions no write has touched since tick `before` (exclusive)
 * and that have no write in flight, and wait for the commit.  The caller
 * guarantees the change map as of tick `before` is durable.  When any
 * region qualifies, sync_data() is called first, so that the data of the
 * writes being forgotten is durable too (a power cut could otherwise
 * undo a write no intent covers any more).  Returns the number cleared,
 * or -errno.
 */
int intent_clear_idle(struct intent *in, unsigned before,
		      int (*sync_data)(void *arg), void *arg);

/* With no writes in flight: clear everything, durably. */
int intent_clear_all(struct intent *in);

/* Commit the current state now and wait for it. */
int intent_commit(struct intent *in);

/* Ask the committer for a commit and return at once (a live start does,
 * so that the newest stamp soon describes this run). */
void intent_kick(struct intent *in);

/* While regions are set, commit again when less than half the lease is
 * left, so that writers never wait for it.  Returns 0 or -errno. */
int intent_renew_lease(struct intent *in);

/* Wall-clock time in nanoseconds, as the kernel stamps ctime. */
uint64_t intent_wall_ns(void);

#endif
