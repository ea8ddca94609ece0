#include "faultfs.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "metablock.h"

#define SECTOR 512

/* One file written through faultfs, for as long as it has unsynced
 * writes: its own read-write descriptor, so that a crash can still undo
 * them after the tracker closed its descriptor. */
struct fault_file {
	dev_t dev;
	ino_t ino;
	int fd;
	unsigned refs;
	struct fault_file *next;
};

struct fault_write {
	struct fault_file *file;
	uint64_t off;
	size_t len;
	uint8_t *old;
	uint8_t *data;
	bool failed;		/* a sync of its file failed while it was unsynced */
	struct fault_write *next, *prev;
};

uint64_t faultfs_random(struct faultfs *ff)
{
	/* xorshift64*: deterministic for a seed, no hidden state */
	ff->rng ^= ff->rng >> 12;
	ff->rng ^= ff->rng << 25;
	ff->rng ^= ff->rng >> 27;
	return ff->rng * 0x2545f4914f6cdd1dull;
}

/* ---- files ---- */

static struct fault_file *file_get(struct faultfs *ff, int fd, int *err)
{
	struct stat st;
	char path[64];

	if (fstat(fd, &st) < 0) {
		*err = -errno;
		return NULL;
	}
	for (struct fault_file *f = ff->files; f; f = f->next) {
		if (f->dev == st.st_dev && f->ino == st.st_ino) {
			f->refs++;
			return f;
		}
	}
	struct fault_file *f = calloc(1, sizeof(*f));
	if (!f) {
		*err = -ENOMEM;
		return NULL;
	}
	/* A descriptor of our own that can read (the tracker's may be
	 * write-only) and outlives the tracker's. */
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	f->fd = open(path, O_RDWR | O_CLOEXEC);
	if (f->fd < 0)
		f->fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
	if (f->fd < 0) {
		*err = -errno;
		free(f);
		return NULL;
	}
	f->dev = st.st_dev;
	f->ino = st.st_ino;
	f->refs = 1;
	f->next = ff->files;
	ff->files = f;
	return f;
}

static void file_put(struct faultfs *ff, struct fault_file *f)
{
	if (--f->refs)
		return;
	for (struct fault_file **p = &ff->files; *p; p = &(*p)->next) {
		if (*p == f) {
			*p = f->next;
			break;
		}
	}
	close(f->fd);
	free(f);
}

static bool same_file(const struct fault_file *f, const struct stat *st)
{
	return f->dev == st->st_dev && f->ino == st->st_ino;
}

/* ---- faults ---- */

static bool name_matches(int fd, const char *want)
{
	char link[64], path[4096];
	ssize_t n;

	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	n = readlink(link, path, sizeof(path) - 1);
	if (n < 0)
		return false;
	path[n] = 0;
	const char *base = strrchr(path, '/');
	return strcmp(base ? base + 1 : path, want) == 0;
}

/* Has fd's file writes a sync would write back?  Called with the lock
 * held. */
static bool has_dirty(struct faultfs *ff, const struct stat *st)
{
	for (struct fault_write *w = ff->head; w; w = w->next)
		if (!w->failed && same_file(w->file, st))
			return true;
	return false;
}

/* The fault this call fails, if any.  Called with the lock held; st is
 * fd's for a sync.  The earliest armed fault that fires takes the call;
 * later ones do not see it. */
static struct fault *fault_take(struct faultfs *ff, enum fault_op op, int fd,
				const struct stat *st)
{
	for (unsigned i = 0; i < ff->nfaults; i++) {
		struct fault *f = &ff->faults[i];
		unsigned times = f->spec.times ? f->spec.times : 1;

		if (!f->armed || f->spec.op != op)
			continue;
		if (f->spec.fd >= 0 && f->spec.fd != fd)
			continue;
		if (f->file[0] && !name_matches(fd, f->file))
			continue;
		if (op == FAULT_FDATASYNC && !f->spec.even_clean && !has_dirty(ff, st))
			continue;
		if (f->seen++ < f->spec.skip)
			continue;
		if (times != FAULT_FOREVER && f->fired >= times)
			continue;
		f->fired++;
		pthread_cond_broadcast(&ff->fired_cond);
		return f;
	}
	return NULL;
}

int faultfs_arm(struct faultfs *ff, const struct fault_spec *spec)
{
	int id = -ENOSPC;

	pthread_mutex_lock(&ff->lock);
	if (ff->nfaults < FAULT_MAX) {
		struct fault *f = &ff->faults[ff->nfaults];
		memset(f, 0, sizeof(*f));
		f->spec = *spec;
		if (spec->file)
			snprintf(f->file, sizeof(f->file), "%s", spec->file);
		f->spec.file = NULL;
		f->armed = true;
		id = (int)ff->nfaults++;
	}
	pthread_mutex_unlock(&ff->lock);
	return id;
}

int faultfs_fail(struct faultfs *ff, enum fault_op op, int fd, unsigned skip, int err)
{
	struct fault_spec s = { .op = op, .fd = fd, .skip = skip, .times = 1, .err = err };
	return faultfs_arm(ff, &s);
}

int faultfs_fail_file(struct faultfs *ff, enum fault_op op, const char *file,
		      unsigned skip, int err)
{
	struct fault_spec s = { .op = op, .fd = -1, .file = file, .skip = skip, .times = 1,
				.err = err };
	return faultfs_arm(ff, &s);
}

int faultfs_fail_short(struct faultfs *ff, const char *file, unsigned skip, size_t apply,
		       int err)
{
	struct fault_spec s = { .op = FAULT_PWRITE, .fd = -1, .file = file, .skip = skip,
				.times = 1, .err = err, .apply = apply };
	return faultfs_arm(ff, &s);
}

unsigned faultfs_fired(struct faultfs *ff, int id)
{
	unsigned n = 0;

	pthread_mutex_lock(&ff->lock);
	if (id >= 0 && (unsigned)id < ff->nfaults)
		n = ff->faults[id].fired;
	pthread_mutex_unlock(&ff->lock);
	return n;
}

bool faultfs_wait_fired(struct faultfs *ff, int id, unsigned timeout_ms)
{
	struct timespec until;
	bool fired;

	clock_gettime(CLOCK_MONOTONIC, &until);
	until.tv_sec += timeout_ms / 1000;
	until.tv_nsec += (long)(timeout_ms % 1000) * 1000000;
	if (until.tv_nsec >= 1000000000) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000;
	}
	pthread_mutex_lock(&ff->lock);
	if (id < 0 || (unsigned)id >= ff->nfaults) {
		pthread_mutex_unlock(&ff->lock);
		return false;
	}
	while (!ff->faults[id].fired &&
	       pthread_cond_timedwait(&ff->fired_cond, &ff->lock, &until) == 0)
		;
	fired = ff->faults[id].fired > 0;
	pthread_mutex_unlock(&ff->lock);
	return fired;
}

void faultfs_disarm(struct faultfs *ff, int id)
{
	pthread_mutex_lock(&ff->lock);
	if (id >= 0 && (unsigned)id < ff->nfaults)
		ff->faults[id].armed = false;
	pthread_mutex_unlock(&ff->lock);
}

void faultfs_disarm_all(struct faultfs *ff)
{
	pthread_mutex_lock(&ff->lock);
	ff->nfaults = 0;
	pthread_mutex_unlock(&ff->lock);
}

/* ---- the file operations ---- */

/* Apply and remember one write.  Called with the lock held. */
static int record_write(struct faultfs *ff, int fd, const void *buf, size_t len, uint64_t off)
{
	struct fault_write *w = calloc(1, sizeof(*w));
	int err = 0;

	if (!w)
		return -ENOMEM;
	w->off = off;
	w->len = len;
	w->old = calloc(1, len);
	w->data = malloc(len);
	w->file = file_get(ff, fd, &err);
	if (!w->old || !w->data || !w->file) {
		if (w->file)
			file_put(ff, w->file);
		free(w->old);
		free(w->data);
		free(w);
		return err ? err : -ENOMEM;
	}
	memcpy(w->data, buf, len);
	/* Past the end of file reads as zeroes, which is what a lost
	 * extension leaves behind. */
	ssize_t got = pread(w->file->fd, w->old, len, (off_t)off);
	(void)got;
	err = file_pwrite_full(fd, buf, len, off);
	if (err) {
		file_put(ff, w->file);
		free(w->old);
		free(w->data);
		free(w);
		return err;
	}
	w->prev = ff->tail;
	if (ff->tail)
		ff->tail->next = w;
	else
		ff->head = w;
	ff->tail = w;
	return 0;
}

static int ff_pwrite(const struct vt_fsops *ops, int fd, const void *buf, size_t len,
		     uint64_t off)
{
	struct faultfs *ff = (struct faultfs *)ops;
	int err = 0;

	pthread_mutex_lock(&ff->lock);
	struct fault *f = fault_take(ff, FAULT_PWRITE, fd, NULL);
	size_t n = len;
	if (f) {
		n = f->spec.apply < len ? f->spec.apply : (len ? len - 1 : 0);
		err = f->spec.err;
	}
	if (n) {
		int werr = record_write(ff, fd, buf, n, off);
		if (werr)
			err = werr;
	}
	pthread_mutex_unlock(&ff->lock);
	return err;
}

static void unlink_write(struct faultfs *ff, struct fault_write *w)
{
	if (w->prev)
		w->prev->next = w->next;
	else
		ff->head = w->next;
	if (w->next)
		w->next->prev = w->prev;
	else
		ff->tail = w->prev;
	file_put(ff, w->file);
	free(w->old);
	free(w->data);
	free(w);
}

/* Durable write d covers part of older failed write f: on disk, that
 * part now holds d's bytes, which undoing f must not take back. */
static void patch_failed(struct fault_write *f, const struct fault_write *d)
{
	uint64_t a = f->off > d->off ? f->off : d->off;
	uint64_t fe = f->off + f->len, de = d->off + d->len;
	uint64_t b = fe < de ? fe : de;

	if (a < b)
		memcpy(f->old + (a - f->off), d->data + (a - d->off), b - a);
}

static int ff_fdatasync(const struct vt_fsops *ops, int fd)
{
	struct faultfs *ff = (struct faultfs *)ops;
	struct stat st;
	int err = 0;

	if (fstat(fd, &st) < 0)
		return -errno;
	pthread_mutex_lock(&ff->lock);
	struct fault *f = fault_take(ff, FAULT_FDATASYNC, fd, &st);
	if (f) {
		/* Written back or not, none of it will be written again. */
		for (struct fault_write *w = ff->head; w; w = w->next) {
			if (same_file(w->file, &st) && !w->failed) {
				w->failed = true;
				ff->failed_writes++;
			}
		}
		err = f->spec.err;
	} else {
		/* Everything written to the file so far is durable now, but
		 * for the writes whose writeback failed before. */
		for (struct fault_write *w = ff->head, *next; w; w = next) {
			next = w->next;
			if (!same_file(w->file, &st) || w->failed)
				continue;
			for (struct fault_write *o = ff->head; ff->failed_writes && o != w; o = o->next)
				if (o->failed && o->file == w->file)
					patch_failed(o, w);
			unlink_write(ff, w);
		}
	}
	pthread_mutex_unlock(&ff->lock);
	return err;
}

void faultfs_init(struct faultfs *ff, uint64_t seed)
{
	pthread_condattr_t ca;

	memset(ff, 0, sizeof(*ff));
	ff->ops = vt_fsops_posix;
	ff->ops.pwrite = ff_pwrite;
	ff->ops.fdatasync = ff_fdatasync;
	ff->rng = seed ? seed : 0x9e3779b97f4a7c15ull;
	pthread_mutex_init(&ff->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&ff->fired_cond, &ca);
	pthread_condattr_destroy(&ca);
}

void faultfs_destroy(struct faultfs *ff)
{
	while (ff->head)
		unlink_write(ff, ff->head);
	pthread_cond_destroy(&ff->fired_cond);
	pthread_mutex_destroy(&ff->lock);
}

unsigned faultfs_pending(struct faultfs *ff, int fd)
{
	struct stat st;
	unsigned n = 0;

	if (fd >= 0 && fstat(fd, &st) < 0)
		return 0;
	pthread_mutex_lock(&ff->lock);
	for (struct fault_write *w = ff->head; w; w = w->next)
		n += fd < 0 || same_file(w->file, &st);
	pthread_mutex_unlock(&ff->lock);
	return n;
}

static unsigned crash(struct faultfs *ff, bool lose_all)
{
	unsigned n = 0;

	pthread_mutex_lock(&ff->lock);
	/* Back to what was durable... */
	for (struct fault_write *w = ff->tail; w; w = w->prev, n++)
		file_pwrite_full(w->file->fd, w->old, w->len, w->off);
	/* ...then whatever the disk happened to get to. */
	ff->kept = ff->dropped = ff->torn = ff->lost_failed = 0;
	for (struct fault_write *w = ff->head; w; w = w->next) {
		if (w->failed) {
			/* its writeback failed: it never reached the disk */
			ff->dropped++;
			ff->lost_failed++;
			continue;
		}
		if (lose_all) {
			ff->dropped++;
			continue;
		}
		switch (faultfs_random(ff) % 4) {
		case 0:
			ff->dropped++;
			break;
		case 1:
			ff->torn++;
			for (uint64_t s = w->off - w->off % SECTOR; s < w->off + w->len; s += SECTOR) {
				uint64_t a = s < w->off ? w->off : s;
				uint64_t b = s + SECTOR < w->off + w->len ? s + SECTOR : w->off + w->len;
				if (faultfs_random(ff) & 1)
					file_pwrite_full(w->file->fd, w->data + (a - w->off), b - a, a);
			}
			break;
		default:
			ff->kept++;
			file_pwrite_full(w->file->fd, w->data, w->len, w->off);
		}
	}
	while (ff->head)
		unlink_write(ff, ff->head);
	pthread_mutex_unlock(&ff->lock);
	return n;
}

unsigned faultfs_crash(struct faultfs *ff)
{
	return crash(ff, false);
}

unsigned faultfs_crash_lose_all(struct faultfs *ff)
{
	return crash(ff, true);
}
