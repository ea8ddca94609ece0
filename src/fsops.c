#include "fsops.h"

#include <errno.h>
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
