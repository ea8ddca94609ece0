/*
 * restore: see restore.h.
 */
#include <errno.h>
#include <fcntl.h>
#include <libnbd.h>
#include <linux/fs.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "chunk.h"
#include "joberr.h"
#include "restore.h"

#define BLOCK 4096u

bool bk_is_uri(const char *target)
{
	return !strncmp(target, "nbd://", 6) || !strncmp(target, "nbd+unix://", 11) ||
	       !strncmp(target, "nbds://", 7) || !strncmp(target, "nbds+unix://", 12) ||
	       !strncmp(target, "nbd+vsock://", 12);
}

enum kind { T_FILE, T_BLOCK, T_NBD };

struct rjob {
	struct bk_repo *r;
	const struct bk_manifest *m;
	const char *target;
	enum kind kind;
	int fd;			/* a file or a block device: what is written */
	int rfd;		/* what the verify pass reads: fd, or O_DIRECT */
	unsigned align;		/* rfd's reads: whole units of this, aligned */
	unsigned sector;	/* a block device's logical block size */
	bool reading;		/* the verify pass */
	atomic_uint_least64_t next;
	atomic_uint_least64_t written, zeroed;
	struct bk_progress *prog;
	struct bk_joberr fail;
};

#define rfail(j, ...) bk_joberr_set(&(j)->fail, __VA_ARGS__)

static int nbd_err(void)
{
	return nbd_get_errno() ? -nbd_get_errno() : -EIO;
}

/* All of len bytes to or from fd at off. */
static int fdio(int fd, void *buf, uint64_t len, uint64_t off, bool out)
{
	char *p = buf;

	while (len) {
		ssize_t n = out ? pwrite(fd, p, len, (off_t)off) : pread(fd, p, len, (off_t)off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n < 0 ? -errno : -EIO;
		p += n;
		len -= (uint64_t)n;
		off += (uint64_t)n;
	}
	return 0;
}

static int put(struct rjob *j, struct nbd_handle *h, const void *buf, uint64_t len,
	       uint64_t off)
{
	if (h)
		return nbd_pwrite(h, buf, len, off, 0) ? nbd_err() : 0;
	return fdio(j->fd, (void *)buf, len, off, true);
}

/*
 * Read len bytes at off into buf, which has room for len rounded up to
 * j->align.  An O_DIRECT read is of whole logical blocks: the device
 * holds them, being at least the backup's size and a whole number of
 * blocks long.
 */
static int get(struct rjob *j, struct nbd_handle *h, void *buf, uint64_t len, uint64_t off)
{
	if (h)
		return nbd_pread(h, buf, len, off, 0) ? nbd_err() : 0;
	return fdio(j->rfd, buf, (len + j->align - 1) / j->align * j->align, off, false);
}

static int put_zeroes(struct rjob *j, struct nbd_handle *h, uint64_t off, uint64_t len,
		      const void *zbuf)
{
	for (uint64_t p = 0; p < len; p += BLOCK * 16) {
		uint64_t n = len - p < BLOCK * 16 ? len - p : BLOCK * 16;
		int err = put(j, h, zbuf, n, off + p);
		if (err)
			return err;
	}
	return 0;
}

/*
 * Zero [off, off + len) of a block device without writing it from here.
 * fallocate(PUNCH_HOLE) asks for zeroes the device may deallocate (a
 * thin or loop device stays sparse) and fails rather than have the
 * kernel write them; BLKZEROOUT then zeroes however the device can,
 * writing zeroes if it must.  BLKDISCARD is never used: a discard
 * promises nothing about what reads return after it (BLKDISCARDZEROES
 * is 0 on every current kernel).  Both requests drop the range from
 * the page cache.  -EOPNOTSUPP: neither can; the caller writes zeroes.
 */
static int blk_zero(int fd, uint64_t off, uint64_t len)
{
	uint64_t range[2] = { off, len };

	if (!fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len))
		return 0;
	if (errno != EOPNOTSUPP && errno != EINVAL)
		return -errno;
	if (!ioctl(fd, BLKZEROOUT, range))
		return 0;
	return errno == EOPNOTSUPP || errno == EINVAL || errno == ENOTTY ? -EOPNOTSUPP : -errno;
}

/*
 * Make [off, off + len) read as zeroes.  A fresh file already does.  A
 * range of a device that is not whole logical blocks (only the tail of
 * a backup whose size is not a multiple of one) is written.
 */
static int zero(struct rjob *j, struct nbd_handle *h, uint64_t off, uint64_t len, void *zbuf)
{
	int err = -EOPNOTSUPP;

	if (j->kind == T_FILE || !len)
		return 0;
	if (h && nbd_can_zero(h) == 1)
		err = nbd_zero(h, len, off, 0) ? nbd_err() : 0;
	else if (!h && !((off | len) % j->sector))
		err = blk_zero(j->fd, off, len);
	if (err == -EOPNOTSUPP)
		err = put_zeroes(j, h, off, len, zbuf);
	if (!err)
		atomic_fetch_add(&j->zeroed, len);
	return err;
}

/* The end of the run of 4 KiB blocks at p of buf that are all zero, or
 * all not; *zero says which. */
static uint64_t run_end(const uint8_t *buf, uint64_t len, uint64_t p, bool *zero)
{
	uint64_t q = p + (len - p < BLOCK ? len - p : BLOCK);

	*zero = bk_is_zero(buf + p, q - p);
	while (q < len) {
		uint64_t n = len - q < BLOCK ? len - q : BLOCK;
		if (bk_is_zero(buf + q, n) != *zero)
			break;
		q += n;
	}
	return q;
}

/* Write buf (chunk at off) as runs of data and of zero blocks. */
static int write_chunk(struct rjob *j, struct nbd_handle *h, const uint8_t *buf, uint64_t len,
		       uint64_t off, void *zbuf)
{
	uint64_t p = 0;

	while (p < len) {
		bool z;
		uint64_t q = run_end(buf, len, p, &z);
		int err = z ? zero(j, h, off + p, q - p, zbuf) : put(j, h, buf + p, q - p, off + p);
		if (err)
			return err;
		if (!z)
			atomic_fetch_add(&j->written, q - p);
		p = q;
	}
	return 0;
}

/*
 * Restore into an NBD export with many requests in flight.  Each
 * worker owns a few chunk buffers ("slots"): while the writes of one
 * chunk are in flight the next is read and decompressed into another.
 * A server may make the first write into a region wait for something
 * durable (voltrack's write-intent commit); writes in flight together
 * share that wait, where writes one at a time would each pay it.
 * Completions run in this worker's thread, from nbd_poll: no locks.
 * A slot is reused, and every slot freed, only once none of its
 * requests is in flight (the caller frees them after nbd_close).
 */
#define WINDOW_BYTES (32u << 20)	/* chunk buffers per connection, at most */
#define WINDOW_MAX 8
#define REQS_MAX 64			/* requests in flight per connection */
#define REQ_FALLBACK (32u << 20)	/* one write, if the server names no maximum */

struct slot {
	struct aworker *w;
	uint8_t *buf;
	uint64_t off, len, written, zeroed;
	bool hole, failed;
	unsigned inflight;
};

struct aworker {
	struct rjob *j;
	struct nbd_handle *h;
	uint64_t max_req;
	bool can_zero;
	const void *zbuf;
	int err;		/* the first failed request's -errno */
	uint64_t err_off;	/* and its chunk's offset */
	bool err_hole, reported;
};

static unsigned aio_slots(uint32_t chunk_size)
{
	unsigned n = WINDOW_BYTES / (chunk_size ? chunk_size : 1);

	return n < 2 ? 2 : n > WINDOW_MAX ? WINDOW_MAX : n;
}

/* A chunk whose requests all succeeded counts as restored. */
static void slot_done(struct slot *s)
{
	struct rjob *j = s->w->j;

	atomic_fetch_add(&j->written, s->written);
	atomic_fetch_add(&j->zeroed, s->zeroed);
	atomic_fetch_add(&j->prog->done, s->len);
}

static int on_done(void *user, int *error)
{
	struct slot *s = user;
	struct aworker *w = s->w;

	if (*error) {
		s->failed = true;
		if (!w->err) {
			w->err = -*error;
			w->err_off = s->off;
			w->err_hole = s->hole;
		}
	}
	if (--s->inflight == 0 && !s->failed)
		slot_done(s);
	return 1;	/* retire the command */
}

/* Run the connection until fewer than REQS_MAX requests are in flight. */
static int aio_room(struct aworker *w)
{
	while (nbd_aio_in_flight(w->h) >= REQS_MAX)
		if (nbd_poll(w->h, -1) == -1)
			return nbd_err();
	return 0;
}

/* Counted in flight before it is issued: a completion may run inside
 * the call.  A command that fails to be issued never completes. */
static int aio_issue(struct aworker *w, struct slot *s, const void *buf, uint64_t len,
		     uint64_t off, bool zero)
{
	nbd_completion_callback cb = { .callback = on_done, .user_data = s };
	int err = aio_room(w);

	if (err)
		return err;
	s->inflight++;
	if ((zero ? nbd_aio_zero(w->h, len, off, cb, 0) :
		    nbd_aio_pwrite(w->h, buf, len, off, cb, 0)) == -1) {
		s->inflight--;
		return nbd_err();
	}
	return 0;
}

static int aio_put(struct aworker *w, struct slot *s, const uint8_t *buf, uint64_t len,
		   uint64_t off, uint64_t piece)
{
	for (uint64_t p = 0; p < len; p += piece) {
		int err = aio_issue(w, s, buf, len - p < piece ? len - p : piece, off + p, false);
		if (err)
			return err;
		if (buf != w->zbuf)
			buf += piece;
	}
	return 0;
}

/* As zero(): NBD_CMD_WRITE_ZEROES where the server can, else zeroes written. */
static int aio_zero(struct aworker *w, struct slot *s, uint64_t off, uint64_t len)
{
	if (!len)
		return 0;
	s->zeroed += len;
	if (w->can_zero)
		return aio_issue(w, s, NULL, len, off, true);
	return aio_put(w, s, w->zbuf, len, off, w->max_req < BLOCK * 16 ? w->max_req : BLOCK * 16);
}

/* As write_chunk(), from s->buf. */
static int aio_chunk(struct aworker *w, struct slot *s)
{
	const uint8_t *buf = s->buf;
	uint64_t p = 0, len = s->len;

	while (p < len) {
		bool z;
		uint64_t q = run_end(buf, len, p, &z);
		int err = z ? aio_zero(w, s, s->off + p, q - p) :
			  aio_put(w, s, buf + p, q - p, s->off + p, w->max_req);
		if (err)
			return err;
		if (!z)
			s->written += q - p;
		p = q;
	}
	return 0;
}

static void aio_fail(struct aworker *w, int err, uint64_t off, bool hole)
{
	struct rjob *j = w->j;

	if (w->reported)
		return;
	w->reported = true;
	if (w->err) {	/* a request that failed comes first */
		err = w->err;
		off = w->err_off;
		hole = w->err_hole;
	}
	rfail(j, err, "cannot %s %s at offset %llu: %s", hole ? "zero" : "write", j->target,
	      (unsigned long long)off, strerror(-err));
}

/* Until nothing of this connection is in flight, or it is dead. */
static void aio_drain(struct aworker *w)
{
	while (nbd_aio_in_flight(w->h) > 0)
		if (nbd_poll(w->h, -1) == -1)
			break;
}

static void aio_restore(struct rjob *j, struct nbd_handle *h, struct slot *slots,
			unsigned nslots, const void *zbuf, struct bk_chunk_buf *work)
{
	const struct bk_manifest *m = j->m;
	int64_t max = nbd_get_block_size(h, LIBNBD_SIZE_MAXIMUM);
	struct aworker w = {
		.j = j, .h = h, .zbuf = zbuf, .can_zero = nbd_can_zero(h) == 1,
		.max_req = max > 0 ? (uint64_t)max : REQ_FALLBACK,
	};

	for (unsigned k = 0; k < nslots; k++)
		slots[k].w = &w;
	for (uint64_t k = 0;; k++) {
		uint64_t i = atomic_fetch_add(&j->next, 1);
		if (i >= m->nchunks || bk_joberr_stopped(&j->fail) || w.err)
			break;
		uint64_t off = i * m->chunk_size;
		uint64_t len = m->size - off < m->chunk_size ? m->size - off : m->chunk_size;
		const struct bk_entry *e = &m->chunks[i];
		struct slot *s = &slots[k % nslots];
		int err = 0;
		while (s->inflight && !err)
			if (nbd_poll(h, -1) == -1)
				err = nbd_err();
		if (err || w.err) {
			aio_fail(&w, err, off, e->hole);
			break;
		}
		s->off = off;
		s->len = len;
		s->hole = e->hole;
		s->failed = false;
		s->written = s->zeroed = 0;
		if (!e->hole) {
			char hex[2 * BK_DIGEST_LEN + 1];
			size_t got;
			const char *why = "";
			bk_hex(e->digest, BK_DIGEST_LEN, hex);
			err = bk_chunk_get(j->r, e->digest, s->buf, m->chunk_size, &got, work, &why);
			if (!err && got != len)
				err = -EBADMSG, why = "chunk of the wrong length for its offset";
			if (err) {
				rfail(j, err, "backup %s is damaged: chunk %llu at offset %llu (%s): "
				      "%s; the restore is incomplete", m->id, (unsigned long long)i,
				      (unsigned long long)off, hex,
				      err == -EBADMSG ? why : strerror(-err));
				break;
			}
		}
		/* Held in flight until every request of the chunk is issued. */
		s->inflight++;
		err = e->hole ? aio_zero(&w, s, off, len) : aio_chunk(&w, s);
		if (!err && !--s->inflight && !s->failed)
			slot_done(s);
		if (err) {
			s->inflight--;
			s->failed = true;
			aio_fail(&w, err, off, e->hole);
			break;
		}
		/* Send what the socket takes now and reap what has come
		 * back, before the next chunk's read keeps this thread busy. */
		while (nbd_aio_in_flight(h) > 0 && nbd_poll(h, 0) == 1)
			;
	}
	aio_drain(&w);
	if (w.err)
		aio_fail(&w, w.err, 0, false);
	else if (nbd_aio_in_flight(h) > 0)
		aio_fail(&w, -EIO, 0, false);
	if (!bk_joberr_stopped(&j->fail) && nbd_can_flush(h) == 1 && nbd_flush(h, 0))
		rfail(j, nbd_err(), "cannot flush %s: %s", j->target, nbd_get_error());
}

static void *rworker(void *arg)
{
	struct rjob *j = arg;
	const struct bk_manifest *m = j->m;
	struct nbd_handle *h = NULL;
	struct bk_chunk_buf work = { 0 };
	uint8_t *buf = malloc(m->chunk_size), *back = NULL;
	void *zbuf = calloc(1, BLOCK * 16);
	size_t a = j->align > BLOCK ? j->align : BLOCK;	/* O_DIRECT's buffer alignment */
	bool aio = j->kind == T_NBD && !j->reading;
	unsigned nslots = aio ? aio_slots(m->chunk_size) : 0;
	struct slot *slots = aio ? calloc(nslots, sizeof(*slots)) : NULL;

	if (posix_memalign((void **)&back, a, m->chunk_size + a))
		back = NULL;
	bool nomem = aio && !slots;

	for (unsigned k = 0; slots && k < nslots; k++)
		if (!(slots[k].buf = malloc(m->chunk_size)))
			nomem = true;
	if (!buf || !back || !zbuf || nomem) {
		rfail(j, -ENOMEM, "out of memory");
		goto out;
	}
	if (j->kind == T_NBD) {
		h = nbd_create();
		if (!h || nbd_connect_uri(h, j->target)) {
			rfail(j, nbd_err(), "cannot connect to %s: %s", j->target, nbd_get_error());
			goto out;
		}
	}
	if (aio) {
		aio_restore(j, h, slots, nslots, zbuf, &work);
		goto out;
	}
	for (;;) {
		uint64_t i = atomic_fetch_add(&j->next, 1);
		if (i >= m->nchunks || bk_joberr_stopped(&j->fail))
			break;
		uint64_t off = i * m->chunk_size;
		uint64_t len = m->size - off < m->chunk_size ? m->size - off : m->chunk_size;
		const struct bk_entry *e = &m->chunks[i];
		char hex[2 * BK_DIGEST_LEN + 1];
		bk_hex(e->digest, BK_DIGEST_LEN, hex);
		int err;
		if (j->reading) {
			uint8_t d[BK_DIGEST_LEN];
			err = get(j, h, back, len, off);
			if (err) {
				rfail(j, err, "cannot read %s back at offset %llu: %s", j->target,
				      (unsigned long long)off, strerror(-err));
				break;
			}
			bool ok = e->hole ? bk_is_zero(back, len) :
				  !bk_digest(&j->r->keys, back, len, d) &&
				  !memcmp(d, e->digest, BK_DIGEST_LEN);
			if (!ok) {
				rfail(j, -EIO, "verify: %s differs from backup %s in chunk %llu at "
				      "offset %llu", j->target, m->id, (unsigned long long)i,
				      (unsigned long long)off);
				break;
			}
		} else if (e->hole) {
			err = zero(j, h, off, len, zbuf);
			if (err) {
				rfail(j, err, "cannot zero %s at offset %llu: %s", j->target,
				      (unsigned long long)off, strerror(-err));
				break;
			}
		} else {
			size_t got;
			const char *why = "";
			err = bk_chunk_get(j->r, e->digest, buf, m->chunk_size, &got, &work, &why);
			if (!err && got != len)
				err = -EBADMSG, why = "chunk of the wrong length for its offset";
			if (err) {
				rfail(j, err, "backup %s is damaged: chunk %llu at offset %llu (%s): "
				      "%s; the restore is incomplete", m->id, (unsigned long long)i,
				      (unsigned long long)off, hex,
				      err == -EBADMSG ? why : strerror(-err));
				break;
			}
			err = write_chunk(j, h, buf, len, off, zbuf);
			if (err) {
				rfail(j, err, "cannot write %s at offset %llu: %s", j->target,
				      (unsigned long long)off, strerror(-err));
				break;
			}
		}
		atomic_fetch_add(&j->prog->done, len);
	}
	if (h && !j->reading && !bk_joberr_stopped(&j->fail) && nbd_can_flush(h) == 1 && nbd_flush(h, 0))
		rfail(j, nbd_err(), "cannot flush %s: %s", j->target, nbd_get_error());
out:
	if (h)
		nbd_close(h);	/* nothing in flight after this: the slots can go */
	for (unsigned k = 0; slots && k < nslots; k++)
		free(slots[k].buf);
	free(slots);
	free(buf);
	free(back);
	free(zbuf);
	bk_chunk_buf_free(&work);
	return NULL;
}

static int run(struct rjob *j, unsigned jobs)
{
	pthread_t tids[64];
	unsigned started = 0;

	atomic_store(&j->next, 0);
	if (jobs > 64)
		jobs = 64;
	for (; started < (jobs ? jobs : 1); started++)
		if (pthread_create(&tids[started], NULL, rworker, j))
			break;
	if (!started)
		rfail(j, -EAGAIN, "cannot start a worker thread");
	while (atomic_load(&j->next) < j->m->nchunks + started && !bk_joberr_stopped(&j->fail)) {
		bk_progress_tick(j->prog);
		usleep(50000);
	}
	for (unsigned i = 0; i < started; i++)
		pthread_join(tids[i], NULL);
	bk_progress_end(j->prog);
	return j->fail.err;
}

static bool blk_read_only(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC), ro = 0;

	if (fd < 0)
		return false;
	if (ioctl(fd, BLKROGET, &ro))
		ro = 0;
	close(fd);
	return ro;
}

/*
 * A block device: opened exclusively, so that one that is mounted or
 * held by another program (a RAID member, a loop's backing device, a
 * device another restore writes) is refused rather than overwritten
 * under it; not read-only; at least the backup's size.  Nothing is
 * written before all three hold.  A larger device's tail is left as
 * it is.
 */
static int open_blk(struct rjob *j)
{
	const struct bk_manifest *m = j->m;
	uint64_t size;
	int ro = 0, sector = 0, err;

	j->fd = open(j->target, O_RDWR | O_EXCL | O_CLOEXEC);
	if (j->fd < 0) {
		err = -errno;
		if (err == -EBUSY)
			rfail(j, err, "cannot restore to %s: it is in use (mounted, or open "
			      "exclusively by another program)", j->target);
		else if ((err == -EROFS || err == -EACCES || err == -EPERM) &&
			 blk_read_only(j->target))
			rfail(j, err = -EROFS, "cannot restore to %s: the device is read-only",
			      j->target);
		else
			rfail(j, err, "cannot open %s: %s", j->target, strerror(-err));
		return err;
	}
	if (ioctl(j->fd, BLKROGET, &ro) || ioctl(j->fd, BLKGETSIZE64, &size) ||
	    ioctl(j->fd, BLKSSZGET, &sector)) {
		err = -errno;
		rfail(j, err, "cannot get the size of %s: %s", j->target, strerror(-err));
		return err;
	}
	if (ro) {
		rfail(j, -EROFS, "cannot restore to %s: the device is read-only", j->target);
		return -EROFS;
	}
	if (size < m->size) {
		rfail(j, -ENOSPC, "%s is smaller (%llu bytes) than backup %s (%llu)",
		      j->target, (unsigned long long)size, m->id, (unsigned long long)m->size);
		return -ENOSPC;
	}
	j->sector = sector > 0 ? (unsigned)sector : 512;
	return 0;
}

/*
 * Before the verify pass: read the device, not the page cache that the
 * restore has just filled.  With O_DIRECT every read reaches the device;
 * where the device refuses O_DIRECT, its cached pages (clean after the
 * fsync) are dropped instead.
 */
static void open_direct(struct rjob *j)
{
	j->rfd = open(j->target, O_RDONLY | O_DIRECT | O_CLOEXEC);
	if (j->rfd >= 0) {
		j->align = j->sector;
		return;
	}
	j->rfd = j->fd;
	posix_fadvise(j->fd, 0, 0, POSIX_FADV_DONTNEED);
}

/* Open the target and check its size. */
static int open_target(struct rjob *j)
{
	const struct bk_manifest *m = j->m;
	struct stat st;

	if (bk_is_uri(j->target)) {
		j->kind = T_NBD;
		struct nbd_handle *h = nbd_create();
		int err = 0;
		if (!h || nbd_connect_uri(h, j->target)) {
			err = nbd_err();
			rfail(j, err, "cannot connect to %s: %s", j->target, nbd_get_error());
		} else if (nbd_is_read_only(h) == 1) {
			rfail(j, err = -EROFS, "%s is read-only", j->target);
		} else if (nbd_get_size(h) < (int64_t)m->size) {
			rfail(j, err = -ENOSPC, "%s is smaller (%lld bytes) than backup %s (%llu)",
			      j->target, (long long)nbd_get_size(h), m->id,
			      (unsigned long long)m->size);
		}
		if (h)
			nbd_close(h);
		return err;
	}
	if (stat(j->target, &st) == 0 && S_ISBLK(st.st_mode)) {
		j->kind = T_BLOCK;
		return open_blk(j);
	}
	j->kind = T_FILE;
	j->fd = open(j->target, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (j->fd < 0 || fstat(j->fd, &st) || !S_ISREG(st.st_mode)) {
		int err = j->fd < 0 ? -errno : -EINVAL;
		rfail(j, err, "cannot restore to %s: %s", j->target,
		      err == -EINVAL ? "not a file, block device or NBD URI" : strerror(-err));
		return err;
	}
	/* Everything a hole first: only data is then written. */
	if (ftruncate(j->fd, 0) || ftruncate(j->fd, (off_t)m->size)) {
		int err = -errno;
		rfail(j, err, "cannot size %s: %s", j->target, strerror(-err));
		return err;
	}
	return 0;
}

int bk_restore(struct bk_repo *r, const struct bk_manifest *m, const char *target,
	       unsigned jobs, bool verify, struct bk_progress *prog,
	       struct bk_restore_stats *st, char *msg, size_t msglen)
{
	struct rjob *j = calloc(1, sizeof(*j));
	int err = 0;

	if (!j)
		return -ENOMEM;
	j->r = r;
	j->m = m;
	j->target = target;
	j->fd = j->rfd = -1;
	j->align = j->sector = 1;
	j->prog = prog;
	bk_joberr_init(&j->fail);
	/* Refuse before touching the target when chunks are missing. */
	for (uint64_t i = 0; i < m->nchunks && !err; i++) {
		if (m->chunks[i].hole || bk_chunk_exists(r, m->chunks[i].digest))
			continue;
		char hex[2 * BK_DIGEST_LEN + 1];
		bk_hex(m->chunks[i].digest, BK_DIGEST_LEN, hex);
		rfail(j, err = -ENOENT, "backup %s is damaged: chunk %llu at offset %llu (%s) is "
		      "missing; nothing was written", m->id, (unsigned long long)i,
		      (unsigned long long)(i * m->chunk_size), hex);
	}
	if (!err)
		err = open_target(j);
	if (!err)
		err = run(j, jobs);
	if (!err && j->kind != T_NBD && fsync(j->fd))
		rfail(j, err = -errno, "cannot sync %s: %s", target, strerror(errno));
	st->bytes_written = atomic_load(&j->written);
	st->bytes_zeroed = atomic_load(&j->zeroed);
	if (!err && verify) {
		j->reading = true;
		if (j->kind == T_BLOCK)
			open_direct(j);
		else
			j->rfd = j->fd;
		bk_progress_start(prog, prog->mode, "verify", m->size);
		err = run(j, jobs);
	}
	bk_joberr_finish(&j->fail, err ? msg : NULL, msglen);
	if (j->rfd >= 0 && j->rfd != j->fd)
		close(j->rfd);
	if (j->fd >= 0)
		close(j->fd);
	free(j);
	return err;
}
