/*
 * volume: the file or block device being filtered.
 *
 * Owns the descriptor and knows how each logical operation maps onto the
 * kind of volume: a regular file punches holes with fallocate, a block
 * device discards and zeroes with the BLK* ioctls.  The prep functions
 * fill a vio_req; the caller submits it to its own engine.  Nothing here
 * keeps per-request state, so any number of threads may prepare requests
 * against one volume.
 */
#ifndef VOLTRACK_VOLUME_H
#define VOLTRACK_VOLUME_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "fsops.h"
#include "superblock.h"
#include "vio.h"

#define VOLUME_READ_ONLY 1u	/* open O_RDONLY */
#define VOLUME_EXCLUSIVE 2u	/* flock it; -EBUSY when another process has */

struct volume {
	int fd;
	int witness_fd;		/* read-only, syncs only; see volume_prep_witness() */
	enum sb_volume_kind kind;
	uint64_t size;
	bool read_only;
	_Atomic int sync_error;	/* first failed sync, latched; see volume_sync() */
};

/* Kind and size of an existing path without opening it for writing. */
int volume_probe(const char *path, enum sb_volume_kind *kind, uint64_t *size);

/* Create a sparse regular file of the given size, durably (its length
 * and its entry synced), through ops; -EEXIST if present. */
int volume_create_file(const struct vt_fsops *ops, const char *path, uint64_t size);

int volume_open(const char *path, unsigned flags, struct volume **out);
void volume_close(struct volume *vol);

void volume_prep_read(struct volume *vol, struct vio_req *req,
		      struct iovec *iov, unsigned iovcnt, uint64_t off);
/*
 * Small buffered writes are marked VIO_F_INLINE: copying a few pages into
 * the page cache costs a few microseconds, while io_uring, on filesystems
 * without non-blocking buffered writes (ext4), hands each one to a kernel
 * worker thread.  Large writes still go asynchronous, where the copy runs
 * on another core; FUA writes too, since they wait for the disk.
 */
#define VOLUME_INLINE_WRITE_MAX (64u << 10)

void volume_prep_write(struct volume *vol, struct vio_req *req,
		       struct iovec *iov, unsigned iovcnt, uint64_t off, bool fua);
void volume_prep_flush(struct volume *vol, struct vio_req *req);
/* TRIM is advisory: callers treat -EOPNOTSUPP from it as success. */
void volume_prep_trim(struct volume *vol, struct vio_req *req,
		      uint64_t off, uint64_t len);

#define VOLUME_ZERO_MAY_UNMAP 1u /* a hole that reads as zeroes is fine */
#define VOLUME_ZERO_FAST      2u /* only methods that do not write data */

/*
 * Zeroing has a ladder of methods, best first; not every filesystem or
 * device supports each one.  Prepare attempt number `step` (0 first);
 * after the request fails with -EOPNOTSUPP (or -EINVAL from a filesystem
 * that rejects the mode), prepare step + 1.  Returns -ENOTSUP when no
 * method is left, which with VOLUME_ZERO_FAST is the NBD fast-zero
 * "not fast" answer.
 */
int volume_prep_zero(struct volume *vol, struct vio_req *req, uint64_t off,
		     uint64_t len, unsigned zflags, unsigned step);

/* True when a failed zeroing attempt should fall to the next step. */
bool volume_zero_retryable(int64_t res);

/*
 * Durability of the volume's data.  Linux reports a writeback error to
 * one sync per open file, once: whichever sync sees it (the tracker's
 * before clearing intents, a client's FLUSH, the final one at shutdown)
 * consumes it, and the next returns 0 although acknowledged data may
 * never have reached the disk.  So the first error latches in the
 * volume: every later sync of it fails with that error, for every
 * caller, until the process ends.  The tracker then keeps every intent
 * set and never records a clean close; clients' FLUSHes fail.
 *
 * volume_sync() makes the data durable through ops (the real fdatasync,
 * or a test's simulator) and returns 0 or the latched error.  Syncs made
 * elsewhere (FLUSH and FUA writes on the I/O engine) report their outcome
 * through volume_sync_done(), which returns what to tell the client.
 */
int volume_sync(struct volume *vol, const struct vt_fsops *ops);
int volume_sync_done(struct volume *vol, int err);
int volume_sync_error(struct volume *vol);

/*
 * A FUA write is one pwritev2(RWF_DSYNC): the kernel copies the data,
 * then syncs, and returns the sync's error in place of the count when
 * the sync fails.  So its ENOSPC may be the copy's (the file system is
 * full: nothing was written, nothing was lost, and the next write may
 * succeed once space is freed) or a writeback error of earlier data,
 * which must latch.  The witness tells them apart: a second descriptor
 * of the volume, opened with it and used for nothing but this sync.
 * Linux reports each writeback error once to every open file, so the
 * witness's sync fails exactly when some writeback error has happened
 * since it last looked, whoever consumed it.  Its outcome goes to
 * volume_sync_done().  -1 as witness_fd (read-only volumes) means none:
 * callers then latch the write's error as before.
 */
bool volume_space_error(int err);
void volume_prep_witness(struct volume *vol, struct vio_req *req);

/* What identifies a volume's content from outside: size, inode, ctime,
 * and when it was taken.  For block devices only the size means
 * anything. */
struct volume_identity {
	uint64_t size;
	uint64_t ino;
	uint64_t ctime_ns;
	uint64_t taken_ns;	/* wall clock (coarse) just before the fstat */
};
int volume_identity(const struct volume *vol, struct volume_identity *id);

/*
 * Can an unchanged ctime prove that nothing wrote the file after this
 * identity was taken?  Only when it was taken in a later clock tick than
 * the last write, beyond the filesystem's timestamp granularity: a write
 * in the same tick (or, on a filesystem with one-second timestamps, the
 * same second) leaves the ctime as it was.
 */
bool volume_identity_decisive(const struct volume_identity *id);

/* volume_identity(), taken again (for up to 2.5 s) until it is decisive:
 * for a clean close or `init`, which can afford to wait. */
int volume_identity_settled(const struct volume *vol, struct volume_identity *id);

/* Hint the kernel to read ahead [off, off+len); always succeeds. */
void volume_cache(struct volume *vol, uint64_t off, uint64_t len);

/*
 * Allocation at off: sets *hole and the length of the run, at most len,
 * that shares it.  Block devices and filesystems without SEEK_HOLE
 * report data, which is the safe answer for base:allocation.
 */
void volume_allocation(struct volume *vol, uint64_t off, uint64_t len,
		       bool *hole, uint64_t *run);

#endif
