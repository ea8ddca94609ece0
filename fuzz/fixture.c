#include "fixture.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "metablock.h"
#include "tracker.h"

/* From the sanitizer runtime every fuzz build links. */
void __sanitizer_report_error_summary(const char *summary);
void __sanitizer_set_death_callback(void (*callback)(void));

static char scratch[256];

static void remove_scratch(void)
{
	char cmd[300];

	if (!scratch[0])
		return;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", scratch);
	if (system(cmd) != 0) {
		/* a leftover directory in a temporary place; nothing to do */
	}
	scratch[0] = 0;
}

static int nosync_pwrite(const struct vt_fsops *ops, int fd, const void *buf, size_t len,
			 uint64_t off)
{
	return file_pwrite_full(fd, buf, len, off);
}

static int nosync_fdatasync(const struct vt_fsops *ops, int fd)
{
	return 0;
}

/* The rest as the real table does them. */
static ssize_t nosync_pread(const struct vt_fsops *ops, int fd, void *buf, size_t len,
			    uint64_t off)
{
	return vt_fsops_posix.pread(&vt_fsops_posix, fd, buf, len, off);
}

static int nosync_ftruncate(const struct vt_fsops *ops, int fd, uint64_t len)
{
	return vt_fsops_posix.ftruncate(&vt_fsops_posix, fd, len);
}

static int nosync_openat(const struct vt_fsops *ops, int dirfd, const char *name, int flags)
{
	return vt_fsops_posix.openat(&vt_fsops_posix, dirfd, name, flags);
}

static int nosync_mkdirat(const struct vt_fsops *ops, int dirfd, const char *name)
{
	return vt_fsops_posix.mkdirat(&vt_fsops_posix, dirfd, name);
}

static int nosync_rename(const struct vt_fsops *ops, int dirfd, const char *from, const char *to)
{
	return vt_fsops_posix.rename(&vt_fsops_posix, dirfd, from, to);
}

static int nosync_unlink(const struct vt_fsops *ops, int dirfd, const char *name)
{
	return vt_fsops_posix.unlink(&vt_fsops_posix, dirfd, name);
}

static int nosync_fsync_dir(const struct vt_fsops *ops, int dirfd)
{
	return 0;
}

const struct vt_fsops fixture_fsops_nosync = {
	.pwrite = nosync_pwrite,
	.pread = nosync_pread,
	.ftruncate = nosync_ftruncate,
	.fdatasync = nosync_fdatasync,
	.openat = nosync_openat,
	.mkdirat = nosync_mkdirat,
	.rename = nosync_rename,
	.unlink = nosync_unlink,
	.fsync_dir = nosync_fsync_dir,
};

void fixture_fail(const char *file, int line, const char *what)
{
	char msg[512];

	snprintf(msg, sizeof(msg), "voltrack-fuzz: %s:%d: %s", file, line, what);
	__sanitizer_report_error_summary(msg);
	/* libFuzzer leaves on abort() without running atexit handlers. */
	remove_scratch();
	abort();
}

static void die(const char *what, int err)
{
	fprintf(stderr, "fuzz fixture: %s: %s\n", what, strerror(err < 0 ? -err : err));
	exit(1);
}

static const char *tmp_base(void)
{
	const char *t = getenv("TMPDIR");
	struct stat st;

	if (t && *t)
		return t;
	if (stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode) && access("/dev/shm", W_OK) == 0)
		return "/dev/shm";
	return "/tmp";
}

void fixture_create(struct fixture *fx, const char *name, uint64_t size, uint32_t granularity,
		    const struct vt_fsops *ops)
{
	struct volume_identity id;
	int err;

	memset(fx, 0, sizeof(*fx));
	snprintf(fx->dir, sizeof(fx->dir), "%s/voltrack-%s-XXXXXX", tmp_base(), name);
	if (!mkdtemp(fx->dir))
		die("mkdtemp", errno);
	snprintf(scratch, sizeof(scratch), "%s", fx->dir);
	atexit(remove_scratch);
	__sanitizer_set_death_callback(remove_scratch);
	snprintf(fx->vol_path, sizeof(fx->vol_path), "%s/disk.img", fx->dir);
	snprintf(fx->meta_path, sizeof(fx->meta_path), "%s/disk.img.voltrack", fx->dir);

	err = volume_create_file(&vt_fsops_posix, fx->vol_path, size);
	if (!err)
		err = volume_open(fx->vol_path, 0, &fx->vol);
	if (!err)
		err = metadir_open(fx->meta_path, true, &vt_fsops_posix, &fx->md);
	if (!err)
		err = metadir_lock(fx->md);
	if (err)
		die("volume and metadata directory", err);
	if (ops)
		metadir_set_fsops(fx->md, ops);

	/* What `voltrack init` writes. */
	struct superblock *sb = &fx->sb;
	if (vt_uuid_generate(&sb->volume_uuid) || vt_uuid_generate(&sb->generation))
		die("uuid", errno);
	err = volume_identity_settled(fx->vol, &id);
	if (err)
		die("volume identity", err);
	sb->version = SB_VERSION;
	sb->volume_size = size;
	sb->granularity = granularity;
	sb->volume_kind = SB_KIND_FILE;
	sb->created = 1;
	sb->sequence = 1;
	sb->state = SB_STATE_CLEAN;
	sb->id_size = id.size;
	sb->id_ino = id.ino;
	sb->id_ctime_ns = id.ctime_ns;
	sb->id_taken_ns = id.taken_ns;
	err = tracker_format(fx->md, sb);
	if (!err)
		err = metadir_write_superblock(fx->md, sb);
	if (err)
		die("formatting metadata", err);
}
