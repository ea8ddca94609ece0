#include "fsops.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "metablock.h"

static int posix_pwrite(const struct vt_fsops *ops, int fd, const void *buf, size_t len,
			uint64_t off)
{
	return file_pwrite_full(fd, buf, len, off);
}

static ssize_t posix_pread(const struct vt_fsops *ops, int fd, void *buf, size_t len,
			   uint64_t off)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = pread(fd, (char *)buf + done, len - done, (off_t)(off + done));
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			break;
		done += (size_t)n;
	}
	return (ssize_t)done;
}

static int posix_ftruncate(const struct vt_fsops *ops, int fd, uint64_t len)
{
	if (len > INT64_MAX)
		return -EFBIG;
	return ftruncate(fd, (off_t)len) < 0 ? -errno : 0;
}

static int posix_fdatasync(const struct vt_fsops *ops, int fd)
{
	return fdatasync(fd) < 0 ? -errno : 0;
}

static int posix_openat(const struct vt_fsops *ops, int dirfd, const char *name, int flags)
{
	int fd = openat(dirfd, name, flags | O_CLOEXEC, 0600);
	return fd < 0 ? -errno : fd;
}

static int posix_mkdirat(const struct vt_fsops *ops, int dirfd, const char *name)
{
	return mkdirat(dirfd, name, 0700) < 0 ? -errno : 0;
}

static int posix_rename(const struct vt_fsops *ops, int dirfd, const char *from, const char *to)
{
	return renameat(dirfd, from, dirfd, to) < 0 ? -errno : 0;
}

static int posix_unlink(const struct vt_fsops *ops, int dirfd, const char *name)
{
	return unlinkat(dirfd, name, 0) < 0 ? -errno : 0;
}

static int posix_fsync_dir(const struct vt_fsops *ops, int dirfd)
{
	return fsync(dirfd) < 0 ? -errno : 0;
}

const struct vt_fsops vt_fsops_posix = {
	.pwrite = posix_pwrite,
	.pread = posix_pread,
	.ftruncate = posix_ftruncate,
	.fdatasync = posix_fdatasync,
	.openat = posix_openat,
	.mkdirat = posix_mkdirat,
	.rename = posix_rename,
	.unlink = posix_unlink,
	.fsync_dir = posix_fsync_dir,
};

int vt_read_full(const struct vt_fsops *ops, int fd, void *buf, size_t len, uint64_t off)
{
	ssize_t n = ops->pread(ops, fd, buf, len, off);

	if (n < 0)
		return (int)n;
	return (size_t)n < len ? -EBADMSG : 0;
}

int vt_replace_file(const struct vt_fsops *ops, int dirfd, int fd, const char *tmp_name,
		    const char *name, int err)
{
	bool renamed = false;

	if (!err)
		err = ops->fdatasync(ops, fd);
	close(fd);
	if (!err) {
		err = ops->rename(ops, dirfd, tmp_name, name);
		renamed = err == 0;
	}
	/* The rename is only in the directory until the directory is synced:
	 * without this a power cut could bring the old file back after the
	 * caller went on as if the new one were there. */
	if (!err)
		err = ops->fsync_dir(ops, dirfd);
	if (err && !renamed)
		ops->unlink(ops, dirfd, tmp_name);
	return err;
}

int vt_open_parent(const char *path, char **name)
{
	size_t len = strlen(path), cut;
	char *dir;
	int fd;

	while (len > 1 && path[len - 1] == '/')
		len--;
	for (cut = len; cut > 0 && path[cut - 1] != '/'; cut--)
		;
	/* "name" lives in ".", "/name" in "/", "a/b/name" in "a/b" */
	dir = cut == 0 ? strdup(".") : strndup(path, cut > 1 ? cut - 1 : 1);
	*name = strndup(path + cut, len - cut);
	if (!dir || !*name) {
		free(dir);
		free(*name);
		*name = NULL;
		return -ENOMEM;
	}
	fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	free(dir);
	if (fd < 0) {
		fd = -errno;
		free(*name);
		*name = NULL;
	}
	return fd;
}
