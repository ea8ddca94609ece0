#include "faultfs.h"
#include "faultfs_impl.h"

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

/* An unsynced write (off, len, the bytes it replaced and its own), or
 * change of the file's length (resize). */
struct fault_write {
	struct fault_file *file;
	uint64_t off;
	size_t len;
	uint8_t *old;
	uint8_t *data;
	bool resize;		/* an ftruncate from old_len to new_len */
	uint64_t old_len, new_len;
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

/* The record of fd's file (a directory too), made on first use. */
struct fault_file *ff_file_get(struct faultfs *ff, int fd, int *err)
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
	 * write-only) and outlives the tracker's; a directory's is a copy. */
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

void ff_file_put(struct faultfs *ff, struct fault_file *f)
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

bool ff_same_file(const struct fault_file *f, const struct stat *st)
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
		if (!w->failed && ff_same_file(w->file, st))
			return true;
	return false;
}

/* Does the call name `want`?  See fault_spec.file. */
static bool call_names(struct faultfs *ff, const struct fault_call *c, const char *want)
{
	if (c->op == FAULT_FSYNC_DIR)
		return ff_entries_pending(ff, c->st, want);
	if (c->name)
		return strcmp(c->name, want) == 0 || (c->name2 && strcmp(c->name2, want) == 0);
	return name_matches(c->fd, want);
}

/* Has the sync something to make durable? */
static bool sync_has_work(struct faultfs *ff, const struct fault_call *c)
{
	if (c->op == FAULT_FSYNC_DIR)
		return ff_entries_pending(ff, c->st, NULL);
	return has_dirty(ff, c->st);
}

/* The earliest armed fault that fires takes the call; later ones do not
 * see it. */
struct fault *ff_fault_take(struct faultfs *ff, const struct fault_call *c)
{
	bool sync = c->op == FAULT_FDATASYNC || c->op == FAULT_FSYNC_DIR;

	for (unsigned i = 0; i < ff->nfaults; i++) {
		struct fault *f = &ff->faults[i];
		unsigned times = f->spec.times ? f->spec.times : 1;

		if (!f->armed || f->spec.op != c->op)
			continue;
		if (f->spec.fd >= 0 && f->spec.fd != c->fd)
			continue;
		if (f->file[0] && !call_names(ff, c, f->file))
			continue;
		if (sync && !f->spec.even_clean && !sync_has_work(ff, c))
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

static void append_write(struct faultfs *ff, struct fault_write *w)
{
	w->prev = ff->tail;
	if (ff->tail)
		ff->tail->next = w;
	else
		ff->head = w;
	ff->tail = w;
}

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
	w->file = ff_file_get(ff, fd, &err);
	if (!w->old || !w->data || !w->file) {
		if (w->file)
			ff_file_put(ff, w->file);
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
		ff_file_put(ff, w->file);
		free(w->old);
		free(w->data);
		free(w);
		return err;
	}
	append_write(ff, w);
	return 0;
}

static int ff_pwrite(const struct vt_fsops *ops, int fd, const void *buf, size_t len,
		     uint64_t off)
{
	struct faultfs *ff = (struct faultfs *)ops;
	int err = 0;

	pthread_mutex_lock(&ff->lock);
	struct fault_call c = { .op = FAULT_PWRITE, .fd = fd };
	struct fault *f = ff_fault_take(ff, &c);
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

/* Reads see every write at once, as from the page cache. */
static ssize_t ff_pread(const struct vt_fsops *ops, int fd, void *buf, size_t len,
			uint64_t off)
{
	struct faultfs *ff = (struct faultfs *)ops;
	struct fault_call c = { .op = FAULT_PREAD, .fd = fd };
	ssize_t n;

	pthread_mutex_lock(&ff->lock);
	struct fault *f = ff_fault_take(ff, &c);
	n = f ? f->spec.err : vt_fsops_posix.pread(&vt_fsops_posix, fd, buf, len, off);
	pthread_mutex_unlock(&ff->lock);
	return n;
}

static int ff_ftruncate(const struct vt_fsops *ops, int fd, uint64_t len)
{
	struct faultfs *ff = (struct faultfs *)ops;
	struct fault_call c = { .op = FAULT_FTRUNCATE, .fd = fd };
	struct fault_write *w = NULL;
	struct stat st;
	int err = 0;

	pthread_mutex_lock(&ff->lock);
	struct fault *f = ff_fault_take(ff, &c);
	if (f) {
		err = f->spec.err;
		goto out;
	}
	w = calloc(1, sizeof(*w));
	if (!w || fstat(fd, &st) < 0) {
		err = w ? -errno : -ENOMEM;
		goto out;
	}
	w->resize = true;
	w->old_len = (uint64_t)st.st_size;
	w->new_len = len;
	w->file = ff_file_get(ff, fd, &err);
	if (w->file)
		err = vt_fsops_posix.ftruncate(&vt_fsops_posix, fd, len);
	if (!err) {
		append_write(ff, w);
		w = NULL;
	} else if (w->file) {
		ff_file_put(ff, w->file);
	}
out:
	pthread_mutex_unlock(&ff->lock);
	free(w);
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
	ff_file_put(ff, w->file);
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
	struct fault_call c = { .op = FAULT_FDATASYNC, .fd = fd, .st = &st };
	struct fault *f = ff_fault_take(ff, &c);
	if (f) {
		/* Written back or not, none of it will be written again. */
		for (struct fault_write *w = ff->head; w; w = w->next) {
			if (ff_same_file(w->file, &st) && !w->failed) {
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
			if (!ff_same_file(w->file, &st) || w->failed)
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
	ff->ops = (struct vt_fsops){
		.pwrite = ff_pwrite,
		.pread = ff_pread,
		.ftruncate = ff_ftruncate,
		.fdatasync = ff_fdatasync,
		.openat = ff_openat,
		.mkdirat = ff_mkdirat,
		.rename = ff_rename,
		.unlink = ff_unlink,
		.fsync_dir = ff_fsync_dir,
	};
	ff->rng = seed ? seed : 0x9e3779b97f4a7c15ull;
	pthread_mutex_init(&ff->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&ff->fired_cond, &ca);
	pthread_condattr_destroy(&ca);
}

/* What is left unsynced stays as it is now, as if it had been synced. */
void faultfs_destroy(struct faultfs *ff)
{
	while (ff->head)
		unlink_write(ff, ff->head);
	ff_entries_forget(ff);
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
		n += fd < 0 || ff_same_file(w->file, &st);
	pthread_mutex_unlock(&ff->lock);
	return n;
}

static unsigned crash(struct faultfs *ff, bool lose_all)
{
	unsigned n = 0;

	pthread_mutex_lock(&ff->lock);
	/* Back to what was durable... */
	for (struct fault_write *w = ff->tail; w; w = w->prev, n++) {
		if (w->resize) {
			if (ftruncate(w->file->fd, (off_t)w->old_len) < 0)
				perror("faultfs: undoing a resize");
		} else {
			file_pwrite_full(w->file->fd, w->old, w->len, w->off);
		}
	}
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
		if (w->resize) {
			if (faultfs_random(ff) & 1) {
				ff->dropped++;
			} else {
				ff->kept++;
				if (ftruncate(w->file->fd, (off_t)w->new_len) < 0)
					perror("faultfs: redoing a resize");
			}
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
	n += ff_entries_crash(ff, lose_all);
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
