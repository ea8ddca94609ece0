#include "metadir.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

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

/* Make the directory at path and sync its entry in the parent. */
static int make_dir(const struct vt_fsops *ops, const char *path)
{
	char *name;
	int parent = vt_open_parent(path, &name), err;

	if (parent < 0)
		return parent;
	err = ops->mkdirat(ops, parent, name);
	/* Synced even when it was there already: a run that made it and died
	 * before this sync may have left an entry a power cut would take
	 * away, with every file in it. */
	if (!err || err == -EEXIST)
		err = ops->fsync_dir(ops, parent);
	close(parent);
	free(name);
	return err;
}

int metadir_open(const char *path, bool create, const struct vt_fsops *ops,
		 struct metadir **out)
{
	struct metadir *md;

	if (create) {
		int err = make_dir(ops, path);
		if (err)
			return err;
	}
	md = calloc(1, sizeof(*md));
	if (!md)
		return -ENOMEM;
	md->lockfd = -1;
	md->ops = ops;
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
	/* Its content and its durability do not matter: the lock is the
	 * flock, held only while this process lives. */
	int fd = md->ops->openat(md->ops, md->dirfd, "lock", O_RDWR | O_CREAT);
	if (fd < 0)
		return fd;
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
	int fd = md->ops->openat(md->ops, md->dirfd, SB_NAME, O_RDONLY);
	int err;

	if (fd < 0)
		return fd;
	err = vt_read_full(md->ops, fd, block, sizeof(block), 0);
	close(fd);
	if (err)
		return err;
	return sb_decode(block, sb);
}

int metadir_write_superblock(struct metadir *md, const struct superblock *sb)
{
	uint8_t block[SB_SIZE];
	int fd, err;

	/* Written at the version it was read or made at: a directory is
	 * raised only when something it stores needs it (doc/format.md). */
	if (sb->version == 0 || sb->version > SB_VERSION)
		return -EINVAL;
	sb_encode(sb, block);
	fd = md->ops->openat(md->ops, md->dirfd, SB_TMP_NAME, O_WRONLY | O_CREAT | O_TRUNC);
	if (fd < 0)
		return fd;
	err = md->ops->pwrite(md->ops, fd, block, sizeof(block), 0);
	return vt_replace_file(md->ops, md->dirfd, fd, SB_TMP_NAME, SB_NAME, err);
}
