/*
 * fsops: the file operations whose outcome or durability matters, behind
 * a table so that tests can put a power-cut and I/O-error simulator
 * (tests/power/faultfs) under them.
 *
 * The library makes every one of these through the table: every read,
 * write and sync of metadata, every change to the metadata directory
 * (creating, replacing and removing its files, and making the directory
 * itself), the creation of a volume file, and every sync of the volume
 * that the tracker relies on (a client's FLUSH takes the data path,
 * src/io/vio.h).  Only opening a directory to name files under it, fstat
 * and close(2) are made directly: none of them changes anything a crash
 * could keep or lose.  vt_fsops_posix is the real thing.
 *
 * Durability, as the callers rely on it and faultfs models it:
 *   - pwrite and ftruncate are seen by readers at once, and are durable
 *     once fdatasync of that file has returned 0;
 *   - creating (openat with O_CREAT, mkdirat), rename and unlink change
 *     the directory at once for lookups, and are durable once fsync_dir
 *     of that directory has returned 0.  Until then a power cut may keep
 *     or lose each of them; a new file whose entry is lost is gone, its
 *     data with it, however well that data was synced;
 *   - a sync that failed says nothing of what became durable.
 *
 * Every entry returns 0 (or a count or a descriptor, where said) or a
 * negative errno.
 */
#ifndef VOLTRACK_FSOPS_H
#define VOLTRACK_FSOPS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct vt_fsops {
	/* Whole-length positional write. */
	int (*pwrite)(const struct vt_fsops *ops, int fd, const void *buf, size_t len,
		      uint64_t off);
	/* Positional read, repeated over short reads until len bytes or the
	 * end of the file: the number of bytes read. */
	ssize_t (*pread)(const struct vt_fsops *ops, int fd, void *buf, size_t len,
			 uint64_t off);
	/* Set the file's length. */
	int (*ftruncate)(const struct vt_fsops *ops, int fd, uint64_t len);
	/* Make fd's written data, and its length, durable. */
	int (*fdatasync)(const struct vt_fsops *ops, int fd);
	/* Open dirfd/name with flags (O_CLOEXEC added; a file it creates gets
	 * mode 0600): a descriptor. */
	int (*openat)(const struct vt_fsops *ops, int dirfd, const char *name, int flags);
	/* Make the directory dirfd/name, mode 0700. */
	int (*mkdirat)(const struct vt_fsops *ops, int dirfd, const char *name);
	/* Rename dirfd/from to dirfd/to, replacing what `to` named. */
	int (*rename)(const struct vt_fsops *ops, int dirfd, const char *from, const char *to);
	/* Remove the file dirfd/name. */
	int (*unlink)(const struct vt_fsops *ops, int dirfd, const char *name);
	/* Make every change to the directory's entries durable. */
	int (*fsync_dir)(const struct vt_fsops *ops, int dirfd);
};

extern const struct vt_fsops vt_fsops_posix;

/* Read exactly len bytes: -EBADMSG when the file ends first (a short
 * file is damage, not an error of the call). */
int vt_read_full(const struct vt_fsops *ops, int fd, void *buf, size_t len, uint64_t off);

/*
 * Finish a file written in full under dirfd/tmp_name: sync it, close fd,
 * rename it over dirfd/name and sync the directory, so that after a
 * crash either the old file or the whole new one is there.  `err` is the
 * outcome of writing it.  Returns the first error, or 0.  When it fails
 * before the rename, the temporary file is removed and `name` is as it
 * was; when the directory sync fails, the new file is in place but a
 * crash may still bring the old one back.  Either way `name` is one of
 * the two, whole.
 */
int vt_replace_file(const struct vt_fsops *ops, int dirfd, int fd, const char *tmp_name,
		    const char *name, int err);

/*
 * Open the directory that holds path, to create or sync its entry
 * through the table: a descriptor, with the entry's name in *name (the
 * caller frees it), or -errno.
 */
int vt_open_parent(const char *path, char **name);

#endif
