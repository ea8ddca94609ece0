/*
 * faultfs internals, shared by faultfs.c (files, faults, writes, the
 * crash) and faultfs_dir.c (directory entries).  Every function here
 * runs with ff->lock held.  Test-only.
 */
#ifndef VOLTRACK_FAULTFS_IMPL_H
#define VOLTRACK_FAULTFS_IMPL_H

#include <stdbool.h>
#include <sys/stat.h>

#include "faultfs.h"

/* A file or directory faultfs must reach again after the caller's
 * descriptor may be gone (to undo a write, or a directory change): its
 * own descriptor, kept while any record refers to it. */
struct fault_file {
	dev_t dev;
	ino_t ino;
	int fd;
	unsigned refs;
	struct fault_file *next;
};

struct fault_file *ff_file_get(struct faultfs *ff, int fd, int *err);
void ff_file_put(struct faultfs *ff, struct fault_file *f);
bool ff_same_file(const struct fault_file *f, const struct stat *st);

/* One call, as fault matching sees it (see struct fault_spec). */
struct fault_call {
	enum fault_op op;
	int fd;				/* the descriptor, or the directory's */
	const char *name, *name2;	/* entry names; NULL: the descriptor's own */
	const struct stat *st;		/* a sync: what it syncs */
};

/* The fault this call fails, if any. */
struct fault *ff_fault_take(struct faultfs *ff, const struct fault_call *c);

/* faultfs_dir.c */
/* Has directory `dir` unsynced changes (naming `name`, unless NULL)? */
bool ff_entries_pending(struct faultfs *ff, const struct stat *dir, const char *name);
/* Undo the unsynced directory changes, keep or lose each; how many. */
unsigned ff_entries_crash(struct faultfs *ff, bool lose_all);
/* Settle every unsynced change as it stands (faultfs_destroy). */
void ff_entries_forget(struct faultfs *ff);
int ff_openat(const struct vt_fsops *ops, int dirfd, const char *name, int flags);
int ff_mkdirat(const struct vt_fsops *ops, int dirfd, const char *name);
int ff_rename(const struct vt_fsops *ops, int dirfd, const char *from, const char *to);
int ff_unlink(const struct vt_fsops *ops, int dirfd, const char *name);
int ff_fsync_dir(const struct vt_fsops *ops, int dirfd);

#endif
