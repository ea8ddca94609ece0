/*
 * metadir: a volume's metadata directory (default VOLUME.voltrack/).
 *
 * Holds the superblock and, while a server runs, its sockets.  An
 * exclusive flock on META/lock marks the one process allowed to change
 * the metadata; metadir_lock() fails with -EBUSY when another holds it.
 * The superblock is replaced atomically: written to a temporary file,
 * fsynced, renamed over the old one, and the directory fsynced, so a
 * crash leaves either the old or the new block, never a torn one.
 */
#ifndef VOLTRACK_METADIR_H
#define VOLTRACK_METADIR_H

#include <stdbool.h>

#include "fsops.h"
#include "superblock.h"

struct metadir;

/* VOLUME.voltrack for a path; the caller frees the result. */
int metadir_default_path(const char *volume_path, char **out);

/* Open DIR, creating it when create is true (mode 0700; its entry in the
 * parent synced, also when it was there already), with `ops` for every
 * operation on it (vt_fsops_posix but in tests). */
int metadir_open(const char *path, bool create, const struct vt_fsops *ops,
		 struct metadir **out);
void metadir_close(struct metadir *md);

/* The directory's descriptor, for openat(); owned by md. */
int metadir_fd(const struct metadir *md);

/* How metadata is read, written and synced, and the directory changed;
 * every metadata file in the directory uses these. */
const struct vt_fsops *metadir_fsops(const struct metadir *md);
void metadir_set_fsops(struct metadir *md, const struct vt_fsops *ops);

/* PATH/name in a new string; NULL on allocation failure. */
char *metadir_file(const struct metadir *md, const char *name);

int metadir_lock(struct metadir *md);

/* -ENOENT when no superblock exists; sb_decode's errors otherwise. */
int metadir_read_superblock(struct metadir *md, struct superblock *sb);
/* Replace the superblock atomically (doc/format.md), at sb->version:
 * -EINVAL for a version this build does not write. */
int metadir_write_superblock(struct metadir *md, const struct superblock *sb);

#endif
