#include "metadir.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "metablock.h"

struct metadir {
	char *path;
	int dirfd;
	int lockfd;
	const struct vt_fsops *ops;
};

#define SB_NAME "superblock"
#define SB_TMP_NAME "superblock.tmp"

int metadir_default_path(const char *volume_path, char **out)
{
	if (asprintf(out, "%s.voltrack", volume_path) < 0)
		return -ENOMEM;
	return 0;
}

int metadir_open(const char *path, bool create, struct metadir **out)
{
	struct metadir *md;

	if (create) {
		if (mkdir(path, 0700) == 0) {
			int err = vt_sync_parent(path);
			if (err)
				return err;
		} else if (errno != EEXIST) {
			return -errno;
		}
	}
	md = calloc(1, sizeof(*md));
	if (!md)
		return -ENOMEM;
	md->lockfd = -1;
	md->ops = &vt_fsops_posix;
	md->path = strdup(path);
	md->dirfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (!md->path || md->dirfd < 0) {
		int err = md->path ? -errno : -ENOMEM;
		metadir_close(md);
		return err;
	}
	*out = md;
	return 0;
}

void metadir_close(struct metadir *md)
{
	if (!md)
		return;
	if (md->lockfd >= 0)
		close(md->lockfd);
	if (md->dirfd >= 0)
		close(md->dirfd);
	free(md->path);
	free(md);
}

const struct vt_fsops *metadir_fsops(const struct metadir *md)
{
	return md->ops;
}

void metadir_set_fsops(struct metadir *md, const struct vt_fsops *ops)
{
	md->ops = ops;
}

int metadir_fd(const struct metadir *md)
{
	return md->dirfd;
}

char *metadir_file(const struct metadir *md, const char *name)
{
	char *p;

	if (asprintf(&p, "%s/%s", md->path, name) < 0)
		return NULL;
	return p;
}

int metadir_lock(struct metadir *md)
{
	if (md->lockfd >= 0)
		return 0;
	int fd = openat(md->dirfd, "lock", O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		int err = errno == EWOULDBLOCK ? -EBUSY : -errno;
		close(fd);
		return err;
	}
	md->lockfd = fd;
	return 0;
}

int metadir_read_superblock(struct metadir *md, struct superblock *sb)
{
	uint8_t block[SB_SIZE];
	int fd = openat(md->dirfd, SB_NAME, O_RDONLY | O_CLOEXEC);
	int err;

	if (fd < 0)
		return -errno;
	err = file_pread_full(fd, block, sizeof(block), 0);
	close(fd);
	if (err)
		return err;
	return sb_decode(block, sb);
}

int metadir_write_superblock(struct metadir *md, const struct superblock *sb)
{
	uint8_t block[SB_SIZE];
	int fd, err;

	sb_encode(sb, block);
	fd = openat(md->dirfd, SB_TMP_NAME, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	err = md->ops->pwrite(md->ops, fd, block, sizeof(block), 0);
	return vt_replace_file(md->ops, md->dirfd, fd, SB_TMP_NAME, SB_NAME, err);
}
