/*
 * fsops: the two file operations whose durability matters, behind a
 * table so that tests can put a power-cut simulator under them.
 *
 * Every write of metadata and every sync of metadata or of the volume
 * made by the tracker goes through one of these.  vt_fsops_posix is the
 * real thing; tests/power/ has the fault-injecting one.
 */
#ifndef VOLTRACK_FSOPS_H
#define VOLTRACK_FSOPS_H

#include <stddef.h>
#include <stdint.h>

struct vt_fsops {
	/* Whole-length positional write: 0 or -errno. */
	int (*pwrite)(const struct vt_fsops *ops, int fd, const void *buf, size_t len,
		      uint64_t off);
	/* Make fd's written data durable: 0 or -errno. */
	int (*fdatasync)(const struct vt_fsops *ops, int fd);
};

extern const struct vt_fsops vt_fsops_posix;

/*
 * Finish a file written in full under dirfd/tmp_name: sync it, close fd,
 * rename it over dirfd/name and sync the directory, so that after a
 * crash either the old file or the whole new one is there.  `err` is the
 * outcome of writing it; on any failure the temporary file is removed.
 * Returns the first error, or 0.
 */
int vt_replace_file(const struct vt_fsops *ops, int dirfd, int fd, const char *tmp_name,
		    const char *name, int err);

/* fsync the directory that holds path, so that an entry just created
 * in it survives a power cut. */
int vt_sync_parent(const char *path);

#endif
