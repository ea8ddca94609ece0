#include "volume.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int describe(int fd, enum sb_volume_kind *kind, uint64_t *size)
{
	struct stat st;

	if (fstat(fd, &st) < 0)
		return -errno;
	if (S_ISREG(st.st_mode)) {
		*kind = SB_KIND_FILE;
		*size = (uint64_t)st.st_size;
		return 0;
	}
	if (S_ISBLK(st.st_mode)) {
		*kind = SB_KIND_BLOCKDEV;
		return ioctl(fd, BLKGETSIZE64, size) < 0 ? -errno : 0;
	}
	return -EINVAL; /* directories, sockets, character devices */
}

int volume_probe(const char *path, enum sb_volume_kind *kind, uint64_t *size)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	int err;

	if (fd < 0)
		return -errno;
	err = describe(fd, kind, size);
	close(fd);
	return err;
}

int volume_create_file(const struct vt_fsops *ops, const char *path, uint64_t size)
{
	char *name;
	int dirfd = vt_open_parent(path, &name), fd, err;

	if (dirfd < 0)
		return dirfd;
	fd = ops->openat(ops, dirfd, name, O_WRONLY | O_CREAT | O_EXCL);
	if (fd < 0) {
		err = fd;
		goto out;
	}
	err = ops->ftruncate(ops, fd, size);
	/* The length is what fdatasync must make durable here. */
	if (!err)
		err = ops->fdatasync(ops, fd);
	close(fd);
	/* And the entry, or `init` could report a volume that a power cut
	 * then takes away. */
	if (!err)
		err = ops->fsync_dir(ops, dirfd);
	if (err)
		ops->unlink(ops, dirfd, name);
out:
	close(dirfd);
	free(name);
	return err;
}

int volume_open(const char *path, unsigned flags, struct volume **out)
{
	struct volume *vol = calloc(1, sizeof(*vol));
	int oflags = O_CLOEXEC | ((flags & VOLUME_READ_ONLY) ? O_RDONLY : O_RDWR);
	int err;

	if (!vol)
		return -ENOMEM;
	vol->read_only = flags & VOLUME_READ_ONLY;
	vol->witness_fd = -1;
	vol->fd = open(path, oflags);
	if (vol->fd < 0) {
		err = -errno;
		goto fail;
	}
	/* Right after the main descriptor: every writeback error the main
	 * one can be told of from now on, the witness is told of too. */
	if (!vol->read_only) {
		vol->witness_fd = open(path, O_RDONLY | O_CLOEXEC);
		if (vol->witness_fd < 0) {
			err = -errno;
			goto fail;
		}
	}
	err = describe(vol->fd, &vol->kind, &vol->size);
	if (err)
		goto fail;
	if ((flags & VOLUME_EXCLUSIVE) && flock(vol->fd, LOCK_EX | LOCK_NB) < 0) {
		err = errno == EWOULDBLOCK ? -EBUSY : -errno;
		goto fail;
	}
	*out = vol;
	return 0;
fail:
	volume_close(vol);
	return err;
}

int volume_sync_done(struct volume *vol, int err)
{
	int none = 0;

	if (err < 0)
		atomic_compare_exchange_strong(&vol->sync_error, &none, err);
	return atomic_load(&vol->sync_error);
}

int volume_sync_error(struct volume *vol)
{
	return atomic_load(&vol->sync_error);
}

int volume_sync(struct volume *vol, const struct vt_fsops *ops)
{
	int err = volume_sync_error(vol);

	if (err)
		return err;
	return volume_sync_done(vol, ops->fdatasync(ops, vol->fd));
}

void volume_close(struct volume *vol)
{
	if (!vol)
		return;
	if (vol->fd >= 0)
		close(vol->fd);
	if (vol->witness_fd >= 0)
		close(vol->witness_fd);
	free(vol);
}

static void prep_base(struct vio_req *req, enum vio_op op, int fd)
{
	req->op = (uint8_t)op;
	req->flags = 0;
	req->fd = fd;
	req->iov = NULL;
	req->iovcnt = 0;
	req->mode = 0;
	req->off = 0;
	req->len = 0;
}

void volume_prep_read(struct volume *vol, struct vio_req *req,
		      struct iovec *iov, unsigned iovcnt, uint64_t off)
{
	prep_base(req, VIO_READ, vol->fd);
	req->iov = iov;
	req->iovcnt = iovcnt;
	req->off = off;
}

void volume_prep_write(struct volume *vol, struct vio_req *req,
		       struct iovec *iov, unsigned iovcnt, uint64_t off, bool fua)
{
	prep_base(req, VIO_WRITE, vol->fd);
	req->iov = iov;
	req->iovcnt = iovcnt;
	req->off = off;
	if (fua)
		req->flags = VIO_F_DSYNC;
	else if (vio_iov_length(iov, iovcnt) <= VOLUME_INLINE_WRITE_MAX)
		req->flags = VIO_F_INLINE;
}

void volume_prep_flush(struct volume *vol, struct vio_req *req)
{
	prep_base(req, VIO_FDATASYNC, vol->fd);
}

bool volume_space_error(int err)
{
	return err == -ENOSPC || err == -EDQUOT || err == -EFBIG;
}

void volume_prep_witness(struct volume *vol, struct vio_req *req)
{
	prep_base(req, VIO_FDATASYNC, vol->witness_fd);
}

void volume_prep_trim(struct volume *vol, struct vio_req *req,
		      uint64_t off, uint64_t len)
{
	if (vol->kind == SB_KIND_BLOCKDEV) {
		prep_base(req, VIO_BLKDISCARD, vol->fd);
	} else {
		prep_base(req, VIO_FALLOCATE, vol->fd);
		req->mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
	}
	req->off = off;
	req->len = len;
}

enum zero_method {
	ZM_PUNCH,	/* fallocate punch hole: unmaps, reads back zeroes */
	ZM_ZERO_RANGE,	/* fallocate zero range: keeps allocation */
	ZM_BLKZEROOUT,	/* block device: the kernel may write zeroes itself */
	ZM_WRITE,	/* write literal zeroes */
	ZM_END,
};

/* The ladders, per kind and flags; ZM_END terminates each. */
static const enum zero_method *zero_ladder(enum sb_volume_kind kind, unsigned zflags)
{
	static const enum zero_method file_unmap[] = { ZM_PUNCH, ZM_ZERO_RANGE, ZM_WRITE, ZM_END };
	static const enum zero_method file_keep[] = { ZM_ZERO_RANGE, ZM_WRITE, ZM_END };
	static const enum zero_method file_fast_unmap[] = { ZM_PUNCH, ZM_ZERO_RANGE, ZM_END };
	static const enum zero_method file_fast_keep[] = { ZM_ZERO_RANGE, ZM_END };
	/* On a block device, fallocate punch-hole asks for zeroing without
	 * the kernel's slow fallback, which is what "fast" means. */
	static const enum zero_method blk_unmap[] = { ZM_PUNCH, ZM_BLKZEROOUT, ZM_END };
	static const enum zero_method blk_keep[] = { ZM_BLKZEROOUT, ZM_END };
	static const enum zero_method blk_fast_unmap[] = { ZM_PUNCH, ZM_END };
	static const enum zero_method none[] = { ZM_END };
	bool unmap = zflags & VOLUME_ZERO_MAY_UNMAP;
	bool fast = zflags & VOLUME_ZERO_FAST;

	if (kind == SB_KIND_BLOCKDEV) {
		if (fast)
			return unmap ? blk_fast_unmap : none;
		return unmap ? blk_unmap : blk_keep;
	}
	if (fast)
		return unmap ? file_fast_unmap : file_fast_keep;
	return unmap ? file_unmap : file_keep;
}

int volume_prep_zero(struct volume *vol, struct vio_req *req, uint64_t off,
		     uint64_t len, unsigned zflags, unsigned step)
{
	const enum zero_method *ladder = zero_ladder(vol->kind, zflags);

	for (unsigned i = 0; i < step; i++)
		if (ladder[i] == ZM_END)
			return -ENOTSUP;
	switch (ladder[step]) {
	case ZM_PUNCH:
		prep_base(req, VIO_FALLOCATE, vol->fd);
		req->mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
		break;
	case ZM_ZERO_RANGE:
		prep_base(req, VIO_FALLOCATE, vol->fd);
		req->mode = FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE;
		break;
	case ZM_BLKZEROOUT:
		prep_base(req, VIO_BLKZEROOUT, vol->fd);
		break;
	case ZM_WRITE:
		prep_base(req, VIO_WRITE_ZEROES, vol->fd);
		break;
	case ZM_END:
		return -ENOTSUP;
	}
	req->off = off;
	req->len = len;
	return 0;
}

bool volume_zero_retryable(int64_t res)
{
	return res == -EOPNOTSUPP || res == -ENOTTY || res == -EINVAL ||
	       res == -ENOSYS;
}

int volume_identity(const struct volume *vol, struct volume_identity *id)
{
	struct stat st;
	struct timespec now;

	/* The clock first: any write after the fstat gets a ctime at or
	 * past this (the kernel stamps from the same coarse clock). */
	clock_gettime(CLOCK_REALTIME_COARSE, &now);
	id->taken_ns = (uint64_t)now.tv_sec * 1000000000ull + (uint64_t)now.tv_nsec;
	if (fstat(vol->fd, &st) < 0)
		return -errno;
	id->size = vol->size;
	if (vol->kind == SB_KIND_FILE) {
		id->size = (uint64_t)st.st_size;
		id->ino = (uint64_t)st.st_ino;
		id->ctime_ns = (uint64_t)st.st_ctim.tv_sec * 1000000000ull +
			       (uint64_t)st.st_ctim.tv_nsec;
	} else {
		id->ino = 0;
		id->ctime_ns = 0;
	}
	return 0;
}

void volume_cache(struct volume *vol, uint64_t off, uint64_t len)
{
	/* Advisory; a failure changes nothing the client can observe. */
	posix_fadvise(vol->fd, (off_t)off, (off_t)len, POSIX_FADV_WILLNEED);
}

void volume_allocation(struct volume *vol, uint64_t off, uint64_t len,
		       bool *hole, uint64_t *run)
{
	*hole = false;
	*run = len;
	if (vol->kind != SB_KIND_FILE)
		return;

	off_t data = lseek(vol->fd, (off_t)off, SEEK_DATA);
	if (data < 0) {
		/* ENXIO: no data from off to end of file; anything else:
		 * unsupported, so claim data. */
		*hole = errno == ENXIO;
		return;
	}
	if ((uint64_t)data > off) {
		*hole = true;
		if ((uint64_t)data - off < len)
			*run = (uint64_t)data - off;
		return;
	}
	off_t end = lseek(vol->fd, (off_t)off, SEEK_HOLE);
	if (end > (off_t)off && (uint64_t)end - off < len)
		*run = (uint64_t)end - off;
}

bool volume_identity_decisive(const struct volume_identity *id)
{
	/* Whole seconds suggest a filesystem that keeps no finer
	 * timestamps (FAT keeps two): allow for that much. */
	uint64_t granule = id->ctime_ns % 1000000000ull == 0 ? 2000000000ull : 0;

	return id->taken_ns > id->ctime_ns + granule;
}

int volume_identity_settled(const struct volume *vol, struct volume_identity *id)
{
	/* At most a little over the largest granule allowed for above. */
	for (int tries = 0;; tries++) {
		int err = volume_identity(vol, id);
		if (err || volume_identity_decisive(id) || tries == 250)
			return err;
		struct timespec pause = { 0, 10000000 };
		nanosleep(&pause, NULL);
	}
}
