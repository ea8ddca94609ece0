#include "faultfs.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "metablock.h"

#define SECTOR 512

struct fault_write {
	int fd;
	uint64_t off;
	size_t len;
	uint8_t *old;
	uint8_t *data;
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

static int ff_pwrite(const struct vt_fsops *ops, int fd, const void *buf, size_t len,
		     uint64_t off)
{
	struct faultfs *ff = (struct faultfs *)ops;
	struct fault_write *w = calloc(1, sizeof(*w));
	int err;

	if (!w)
		return -ENOMEM;
	w->fd = fd;
	w->off = off;
	w->len = len;
	w->old = calloc(1, len);
	w->data = malloc(len);
	if (!w->old || !w->data) {
		free(w->old);
		free(w->data);
		free(w);
		return -ENOMEM;
	}
	memcpy(w->data, buf, len);
	pthread_mutex_lock(&ff->lock);
	/* Past the end of file reads as zeroes, which is what a lost
	 * extension leaves behind. */
	ssize_t got = pread(fd, w->old, len, (off_t)off);
	(void)got;
	err = file_pwrite_full(fd, buf, len, off);
	if (!err) {
		w->prev = ff->tail;
		if (ff->tail)
			ff->tail->next = w;
		else
			ff->head = w;
		ff->tail = w;
	}
	pthread_mutex_unlock(&ff->lock);
	if (err) {
		free(w->old);
		free(w->data);
		free(w);
	}
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
	free(w->old);
	free(w->data);
	free(w);
}

static int ff_fdatasync(const struct vt_fsops *ops, int fd)
{
	struct faultfs *ff = (struct faultfs *)ops;

	/* Everything written to fd so far is durable now. */
	pthread_mutex_lock(&ff->lock);
	for (struct fault_write *w = ff->head, *next; w; w = next) {
		next = w->next;
		if (w->fd == fd)
			unlink_write(ff, w);
	}
	pthread_mutex_unlock(&ff->lock);
	return 0;
}

void faultfs_init(struct faultfs *ff, uint64_t seed)
{
	memset(ff, 0, sizeof(*ff));
	ff->ops.pwrite = ff_pwrite;
	ff->ops.fdatasync = ff_fdatasync;
	ff->rng = seed ? seed : 0x9e3779b97f4a7c15ull;
	pthread_mutex_init(&ff->lock, NULL);
}

void faultfs_destroy(struct faultfs *ff)
{
	while (ff->head)
		unlink_write(ff, ff->head);
	pthread_mutex_destroy(&ff->lock);
}

unsigned faultfs_crash(struct faultfs *ff)
{
	unsigned n = 0;

	pthread_mutex_lock(&ff->lock);
	/* Back to what was durable... */
	for (struct fault_write *w = ff->tail; w; w = w->prev, n++)
		file_pwrite_full(w->fd, w->old, w->len, w->off);
	/* ...then whatever the disk happened to get to. */
	ff->kept = ff->dropped = ff->torn = 0;
	for (struct fault_write *w = ff->head; w; w = w->next) {
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
					file_pwrite_full(w->fd, w->data + (a - w->off), b - a, a);
			}
			break;
		default:
			ff->kept++;
			file_pwrite_full(w->fd, w->data, w->len, w->off);
		}
	}
	while (ff->head)
		unlink_write(ff, ff->head);
	pthread_mutex_unlock(&ff->lock);
	return n;
}
