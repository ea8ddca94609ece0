#include "fsops.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <unistd.h>

#include "metablock.h"

static int posix_pwrite(const struct vt_fsops *ops, int fd, const void *buf, size_t len,
			uint64_t off)
{
	return file_pwrite_full(fd, buf, len, off);
}

static int posix_fdatasync(const struct vt_fsops *ops, int fd)
{
	return fdatasync(fd) < 0 ? -errno : 0;
}

const struct vt_fsops vt_fsops_posix = {
	.pwrite = posix_pwrite,
	.fdatasync = posix_fdatasync,
};

int vt_replace_file(const struct vt_fsops *ops, int dirfd, int fd, const char *tmp_name,
		    const char *name, int err)
{
	if (!err)
		err = ops->fdatasync(ops, fd);
	close(fd);
	if (!err && renameat(dirfd, tmp_name, dirfd, name) < 0)
		err = -errno;
	if (!err && fsync(dirfd) < 0)
		err = -errno;
	if (err)
		unlinkat(dirfd, tmp_name, 0);
	return err;
}

/* fsync the directory holding path, so that a new entry in it survives
 * a power cut. */
int vt_sync_parent(const char *path)
{
	char *copy = strdup(path);
	int fd, err = 0;

	if (!copy)
		return -ENOMEM;
	fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0 || fsync(fd) < 0)
		err = -errno;
	if (fd >= 0)
		close(fd);
	free(copy);
	return err;
}
