/*
 * faultfs: a power-cut and I/O-error simulator under the tracker's file
 * operations.
 *
 * Writes are applied at once (reads see them, as with a page cache) and
 * remembered with the bytes they replaced until their file is synced.
 * At faultfs_crash() every unsynced write is undone, newest first, and
 * then a random subset is applied again in order, some of them torn:
 * only a random selection of their 512-byte sectors lands.  Test-only.
 *
 * A change of a file's length (ftruncate) is a write too: undone at the
 * crash unless the file was synced, then kept or lost.
 *
 * Files are told apart by device and inode, not by descriptor number, so
 * a write still unsynced when its descriptor is closed (and the number
 * reused) is undone in the right file.
 *
 * Directory entries: creating a file or a directory, a rename and an
 * unlink change the directory at once (lookups see them) and are
 * remembered until that directory is synced (fsync_dir).  At
 * faultfs_crash() every unsynced change is undone, newest first, and then
 * each is kept or lost at random, in order; a rename whose source is gone
 * with a lost create is lost with it.  A file whose creation is lost is
 * gone with all its data, synced or not.  So, as ext4 may without the
 * directory's sync, a replacement by rename can leave the old file, the
 * new one, or the old one beside the temporary.  Meanwhile an inode a
 * crash may need again (a file replaced by a rename, or unlinked) stays
 * linked under a hidden name, ".faultfs-...", in the same directory,
 * until the directory is synced.  O_TRUNC of an existing file is not
 * modelled (it is durable at once).  A failed fsync_dir leaves the
 * directory's changes unsynced: a later successful one makes them
 * durable (ext4 aborts its journal on such an error, so no later one
 * succeeds; arm FAULT_FOREVER to model that).
 *
 * Fault injection: faultfs_arm() makes chosen future calls fail.  A
 * fault matches one operation, optionally one descriptor and/or one file
 * name, lets `skip` matching calls through, then fails the next `times`
 * ones with `err`; a failed call changes nothing.  A pwrite fault may be
 * a short write: the first `apply` bytes land (unsynced) before the
 * error.  A sync fault (fdatasync, fsync_dir) only counts syncs that have
 * something to make durable, unless told otherwise.  Each fault counts
 * how often it fired, so that a test can assert that its premise really
 * happened.
 *
 * A failed fdatasync models Linux writeback errors: the kernel may have
 * written some, all or none of the file's dirty data, reports the error
 * once, and marks the pages it could not write clean, so no later sync
 * writes them again.  So every write of that file still unsynced at the
 * failure stays unsynced for good ("failed"): later successful syncs of
 * the file do not make it durable, and faultfs_crash() always loses it
 * (its bytes that a later, synced write covered stay as that write left
 * them).  Until the crash, reads still see it, as when the kernel keeps
 * the page cached.
 */
#ifndef VOLTRACK_FAULTFS_H
#define VOLTRACK_FAULTFS_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "fsops.h"

struct fault_write;
struct fault_file;
struct fault_entry;

/* One per operation of struct vt_fsops. */
enum fault_op {
	FAULT_PWRITE = 1,
	FAULT_FDATASYNC,
	FAULT_PREAD,
	FAULT_FTRUNCATE,
	FAULT_OPEN,		/* openat, creating or not */
	FAULT_MKDIR,
	FAULT_RENAME,
	FAULT_UNLINK,
	FAULT_FSYNC_DIR,
};

#define FAULT_MAX 16
#define FAULT_FOREVER 0xffffffffu	/* `times`: fail every matching call */

struct fault_spec {
	enum fault_op op;
	int fd;			/* only this descriptor (for the directory
				 * operations, the directory's); -1: any */
	/* Only calls on this name; NULL: any.  For a call on a descriptor,
	 * its file's last path component, as /proc/self/fd says now; for
	 * openat, mkdirat and unlink the entry; for rename either name; for
	 * fsync_dir any name among the changes it would make durable. */
	const char *file;
	unsigned skip;		/* matching calls let through before it fires */
	unsigned times;		/* calls failed after that; 0 means 1 */
	int err;		/* what the failed call returns, e.g. -EIO */
	/* pwrite only: a short write.  The first `apply` bytes (at most
	 * len - 1) land, unsynced, before the error; 0: nothing lands. */
	size_t apply;
	/* fdatasync and fsync_dir: also match a sync with nothing to make
	 * durable.  By default such a sync is not a matching call: a
	 * writeback error comes from writing something back. */
	bool even_clean;
};

struct fault {
	struct fault_spec spec;
	char file[64];
	bool armed;
	unsigned seen;		/* matching calls so far */
	unsigned fired;		/* calls it failed */
};

struct faultfs {
	struct vt_fsops ops;		/* first: the tracker sees only this */
	pthread_mutex_t lock;
	pthread_cond_t fired_cond;
	struct fault_write *head, *tail;
	struct fault_entry *ehead, *etail;	/* unsynced directory changes */
	struct fault_file *files;		/* and directories */
	unsigned holds;				/* hidden names handed out */
	uint64_t rng;
	struct fault faults[FAULT_MAX];
	unsigned nfaults;
	/* writes a failed fdatasync left unsynced for good (ever) */
	unsigned failed_writes;
	/* directory changes seen, and made durable by a sync (ever) */
	unsigned entry_changes, entries_synced;
	/* what the last crash did; `dropped` includes `lost_failed` */
	unsigned kept, dropped, torn, lost_failed;
	unsigned entries_kept, entries_lost;
};

void faultfs_init(struct faultfs *ff, uint64_t seed);
void faultfs_destroy(struct faultfs *ff);
/* Simulate the power cut; returns the number of unsynced writes and
 * directory changes. */
unsigned faultfs_crash(struct faultfs *ff);
/* The same, but the disk got none of them. */
unsigned faultfs_crash_lose_all(struct faultfs *ff);
uint64_t faultfs_random(struct faultfs *ff);

/* Unsynced writes to fd's file (-1: to any file), failed ones included. */
unsigned faultfs_pending(struct faultfs *ff, int fd);
/* Unsynced changes to the entries of directory dirfd (-1: of any). */
unsigned faultfs_pending_entries(struct faultfs *ff, int dirfd);

/* Arm a fault; returns its id (>= 0), or -ENOSPC when FAULT_MAX are armed
 * (faultfs_disarm_all() frees every slot). */
int faultfs_arm(struct faultfs *ff, const struct fault_spec *spec);
/* One call fails with err: the (skip+1)th matching op on fd (-1: any). */
int faultfs_fail(struct faultfs *ff, enum fault_op op, int fd, unsigned skip, int err);
/* The same, selecting the file by name ("checkpoints", "intent", ...;
 * see fault_spec.file for what a name means to each operation). */
int faultfs_fail_file(struct faultfs *ff, enum fault_op op, const char *file,
		      unsigned skip, int err);
/* A short pwrite on a file of that name: `apply` bytes land, then err. */
int faultfs_fail_short(struct faultfs *ff, const char *file, unsigned skip, size_t apply,
		       int err);
/* How many calls fault id has failed so far. */
unsigned faultfs_fired(struct faultfs *ff, int id);
/* Wait until fault id has fired at least once; false on timeout. */
bool faultfs_wait_fired(struct faultfs *ff, int id, unsigned timeout_ms);
/* Stop fault id from firing again (its count stays readable). */
void faultfs_disarm(struct faultfs *ff, int id);
/* Stop every fault and forget them all (ids become invalid). */
void faultfs_disarm_all(struct faultfs *ff);

#endif
