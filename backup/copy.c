/*
 * copy: workers, slices and extents (see copy.h).
 */
#include <errno.h>
#include <libnbd.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "chunk.h"
#include "copy.h"
#include "joberr.h"

#define CTX_ALLOC "base:allocation"
#define CTX_DIRTY_PREFIX "qemu:dirty-bitmap:"
/* Requests in flight per connection: bytes of chunk buffers at most. */
#define WINDOW_BYTES (32u << 20)
#define WINDOW_MAX 8
#define READ_MAX (4u << 20)	/* one NBD read request */

unsigned bk_default_jobs(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);

	return n < 2 ? 2 : n > 8 ? 8 : (unsigned)n;
}

struct extent {
	uint64_t off, len;
	uint32_t flags;
};

struct extents {
	struct extent *v;
	size_t n, cap;
	uint64_t end;		/* covered up to here */
};

struct job {
	struct bk_repo *r;
	const char *uri;
	char bitmap_ctx[BK_FIELD_MAX + 32];
	bool incremental;
	const struct bk_manifest *parent;
	struct bk_manifest *m;
	uint64_t slice_chunks, nslices;
	atomic_uint_least64_t next_slice;
	atomic_uint_least64_t bytes_read, bytes_stored, chunks_read, chunks_new;
	struct bk_progress *prog;
	struct bk_joberr fail;
};

#define job_fail(j, ...) bk_joberr_set(&(j)->fail, __VA_ARGS__)

static struct nbd_handle *connect_source(const char *uri, const char *bitmap_ctx, int *err,
					 char *msg, size_t msglen)
{
	struct nbd_handle *h = nbd_create();

	if (!h) {
		*err = -ENOMEM;
		snprintf(msg, msglen, "%s", nbd_get_error());
		return NULL;
	}
	if (nbd_add_meta_context(h, CTX_ALLOC) ||
	    (bitmap_ctx && nbd_add_meta_context(h, bitmap_ctx)) || nbd_connect_uri(h, uri)) {
		*err = nbd_get_errno() ? -nbd_get_errno() : -EIO;
		snprintf(msg, msglen, "cannot connect to %s: %s", uri, nbd_get_error());
		nbd_close(h);
		return NULL;
	}
	return h;
}

int bk_source_probe(const char *uri, const char *bitmap, uint64_t *size, bool *has_bitmap,
		    char *msg, size_t msglen)
{
	char ctx[BK_FIELD_MAX + 32];
	int err = 0;

	if (bitmap)
		snprintf(ctx, sizeof(ctx), CTX_DIRTY_PREFIX "%s", bitmap);
	struct nbd_handle *h = connect_source(uri, bitmap ? ctx : NULL, &err, msg, msglen);
	if (!h)
		return err;
	int64_t s = nbd_get_size(h);
	*has_bitmap = bitmap && nbd_can_meta_context(h, ctx) == 1;
	nbd_close(h);
	if (s < 0) {
		snprintf(msg, msglen, "cannot get the size of %s", uri);
		return -EIO;
	}
	*size = (uint64_t)s;
	return 0;
}

static int ext_push(struct extents *e, uint64_t off, uint64_t len, uint32_t flags)
{
	if (e->n && e->v[e->n - 1].flags == flags && e->v[e->n - 1].off + e->v[e->n - 1].len == off) {
		e->v[e->n - 1].len += len;
	} else {
		if (e->n == e->cap) {
			size_t cap = e->cap ? 2 * e->cap : 64;
			struct extent *v = realloc(e->v, cap * sizeof(*v));
			if (!v)
				return -ENOMEM;
			e->v = v;
			e->cap = cap;
		}
		e->v[e->n++] = (struct extent){ off, len, flags };
	}
	e->end = off + len;
	return 0;
}

struct status_ctx {
	struct job *j;
	struct extents *alloc, *dirty;
	uint64_t limit;
	int err;
};

static int on_extents(void *user, const char *context, uint64_t offset, uint32_t *entries,
		      size_t n, int *error)
{
	struct status_ctx *c = user;
	struct extents *e = !strcmp(context, CTX_ALLOC) ? c->alloc :
			    !strcmp(context, c->j->bitmap_ctx) ? c->dirty : NULL;

	if (!e || *error)
		return 0;
	/* Both contexts answer from the offset asked; a list that was
	 * already further keeps what it had and takes only what is new. */
	if (offset > e->end) {
		c->err = -EPROTO;
		return 0;
	}
	for (size_t i = 0; i + 1 < n && offset < c->limit; i += 2) {
		uint64_t a = offset, b = offset + entries[i];
		offset = b;
		if (entries[i] == 0) {
			c->err = -EPROTO;
			return 0;
		}
		if (b <= e->end)
			continue;
		if (a < e->end)
			a = e->end;
		if (b > c->limit)
			b = c->limit;
		if (ext_push(e, a, b - a, entries[i + 1])) {
			c->err = -ENOMEM;
			return 0;
		}
	}
	return 0;
}

/* Extents of [a, b) for each selected context, each list covering it
 * whole.  Without base:allocation everything is data. */
static int slice_extents(struct job *j, struct nbd_handle *h, bool alloc_ok, uint64_t a,
			 uint64_t b, struct extents *alloc, struct extents *dirty)
{
	struct status_ctx c = { .j = j, .alloc = alloc, .dirty = dirty, .limit = b };

	alloc->n = dirty->n = 0;
	alloc->end = dirty->end = a;
	if (!alloc_ok && ext_push(alloc, a, b - a, 0))
		return -ENOMEM;
	if (!j->incremental)
		dirty->end = b;
	while ((alloc->end < b || dirty->end < b) && !c.err) {
		uint64_t from = alloc->end < dirty->end ? alloc->end : dirty->end;
		uint64_t before_a = alloc->end, before_d = dirty->end;
		uint64_t len = b - from;
		if (len > (1ull << 31))
			len = 1ull << 31;
		nbd_extent_callback cb = { .callback = on_extents, .user_data = &c };
		if (nbd_block_status(h, len, from, cb, 0))
			return nbd_get_errno() ? -nbd_get_errno() : -EIO;
		if (!c.err && alloc->end == before_a && dirty->end == before_d)
			return -EPROTO; /* no progress */
	}
	return c.err;
}

static bool overlaps_dirty(const struct extents *d, uint64_t a, uint64_t b, size_t *cursor)
{
	while (*cursor < d->n && d->v[*cursor].off + d->v[*cursor].len <= a)
		(*cursor)++;
	for (size_t i = *cursor; i < d->n && d->v[i].off < b; i++)
		if (d->v[i].flags & 1)
			return true;
	return false;
}

#define SLOT_COOKIES 32

struct slot {
	uint64_t index;		/* chunk */
	uint64_t off, len;
	uint8_t *buf;
	int64_t cookies[SLOT_COOKIES];
	int ncookies;
	uint64_t nread;
	bool patched;		/* buf started from the parent's chunk */
};

static int read_run(struct nbd_handle *h, struct slot *s, uint64_t a, uint64_t b)
{
	for (uint64_t p = a; p < b; p += READ_MAX) {
		uint64_t n = b - p < READ_MAX ? b - p : READ_MAX;
		if (s->ncookies == SLOT_COOKIES)
			return -E2BIG;
		int64_t c = nbd_aio_pread(h, s->buf + (p - s->off), n, p, NBD_NULL_COMPLETION, 0);
		if (c < 0)
			return nbd_get_errno() ? -nbd_get_errno() : -EIO;
		s->cookies[s->ncookies++] = c;
		s->nread += n;
	}
	return 0;
}

struct run {
	uint64_t a, b;
};

struct runs {
	struct run v[SLOT_COOKIES / 2];
	size_t n;
	bool overflow;
	/* What base:allocation promises to be zero, to be zeroed in buf
	 * (it may hold the parent's contents) unless nothing is read and
	 * nothing patched: then the chunk is a hole and buf unused. */
	struct run z[SLOT_COOKIES];
	size_t nz;
	bool z_overflow;
};

/* Append [x, y) to the cap runs at v, merging with the last one when
 * they touch; *overflow when there is no room. */
static void push_run(struct run *v, size_t *n, size_t cap, bool *overflow, uint64_t x,
		     uint64_t y)
{
	if (*n && v[*n - 1].b == x)
		v[*n - 1].b = y;
	else if (*n == cap)
		*overflow = true;
	else
		v[(*n)++] = (struct run){ x, y };
}

/* Add the parts of [a, b) that base:allocation does not promise to be
 * zero to the runs, and those it does to the zero runs. */
static void data_runs(const struct extents *alloc, size_t *cursor, uint64_t a, uint64_t b,
		      struct slot *s, struct runs *r)
{
	while (*cursor < alloc->n && alloc->v[*cursor].off + alloc->v[*cursor].len <= a)
		(*cursor)++;
	for (size_t i = *cursor; i < alloc->n && alloc->v[i].off < b; i++) {
		uint64_t x = alloc->v[i].off > a ? alloc->v[i].off : a;
		uint64_t y = alloc->v[i].off + alloc->v[i].len < b ? alloc->v[i].off + alloc->v[i].len :
								      b;
		if (alloc->v[i].flags & LIBNBD_STATE_ZERO)
			push_run(r->z, &r->nz, sizeof(r->z) / sizeof(r->z[0]), &r->z_overflow, x, y);
		else
			push_run(r->v, &r->n, sizeof(r->v) / sizeof(r->v[0]), &r->overflow, x, y);
	}
}

/*
 * Issue the reads of chunk idx into s.  A full backup reads what
 * base:allocation does not promise to be zero.  An incremental one
 * starts from the parent's contents of the chunk (from the
 * repository) and reads only the dirty blocks among those, so what
 * crosses the network is the change, not the chunk.  Should the
 * parent's chunk be unreadable, or the chunk too fragmented for a
 * slot, the whole chunk is read.
 */
static int issue(struct job *j, struct nbd_handle *h, const struct extents *alloc,
		 size_t *acur, const struct extents *dirty, size_t *dcur, uint64_t idx,
		 struct slot *s, struct bk_chunk_buf *work)
{
	uint64_t cs = j->m->chunk_size;
	struct runs r = { .n = 0, .nz = 0 };

	s->index = idx;
	s->off = idx * cs;
	s->len = j->m->size - s->off < cs ? j->m->size - s->off : cs;
	s->ncookies = 0;
	s->nread = 0;
	s->patched = false;
	uint64_t end = s->off + s->len;
	const struct bk_entry *pe = dirty ? &j->parent->chunks[idx] : NULL;
	if (pe && !pe->hole) {
		size_t got;
		s->patched = !bk_chunk_get(j->r, pe->digest, s->buf, cs, &got, work, NULL) &&
			     got == s->len;
		if (!s->patched)
			pe = NULL; /* read it all from the server */
	}
	/* The parent's chunk is a hole: its contents are zeroes. */
	bool zeroed = pe && !s->patched;
	if (zeroed)
		memset(s->buf, 0, s->len);
	if (pe) {
		while (*acur < alloc->n && alloc->v[*acur].off + alloc->v[*acur].len <= s->off)
			(*acur)++;
		while (*dcur < dirty->n && dirty->v[*dcur].off + dirty->v[*dcur].len <= s->off)
			(*dcur)++;
		for (size_t i = *dcur; i < dirty->n && dirty->v[i].off < end; i++) {
			if (!(dirty->v[i].flags & 1))
				continue;
			uint64_t x = dirty->v[i].off > s->off ? dirty->v[i].off : s->off;
			uint64_t y = dirty->v[i].off + dirty->v[i].len < end ?
					     dirty->v[i].off + dirty->v[i].len : end;
			size_t c = *acur; /* dirty ranges are in order: each rescans little */
			data_runs(alloc, &c, x, y, s, &r);
		}
	} else {
		data_runs(alloc, acur, s->off, end, s, &r);
	}
	if (r.overflow || r.z_overflow) {
		/* Too fragmented to keep its runs: read it whole. */
		s->ncookies = 0;
		s->nread = 0;
		return read_run(h, s, s->off, end);
	}
	/*
	 * Otherwise every byte of a chunk not patched is read or promised
	 * zero (slice_extents covers the slice whole), so only the promised
	 * zeroes are written here, and not even those for a hole, which
	 * finish_slot() recognises without looking at buf.
	 */
	if (!zeroed && (s->patched || r.n))
		for (size_t i = 0; i < r.nz; i++)
			memset(s->buf + (r.z[i].a - s->off), 0, r.z[i].b - r.z[i].a);
	for (size_t i = 0; i < r.n; i++) {
		int err = read_run(h, s, r.v[i].a, r.v[i].b);
		if (err)
			return err;
	}
	return 0;
}

static int wait_slot(struct nbd_handle *h, struct slot *s)
{
	for (int i = 0; i < s->ncookies; i++) {
		int r;
		while ((r = nbd_aio_command_completed(h, s->cookies[i])) == 0)
			if (nbd_poll(h, -1) < 0)
				return nbd_get_errno() ? -nbd_get_errno() : -EIO;
		if (r < 0)
			return nbd_get_errno() ? -nbd_get_errno() : -EIO;
	}
	return 0;
}

static int finish_slot(struct job *j, struct slot *s, struct bk_chunk_buf *work)
{
	struct bk_entry *e = &j->m->chunks[s->index];
	uint64_t stored = 0;

	atomic_fetch_add(&j->bytes_read, s->nread);
	atomic_fetch_add(&j->prog->moved, s->nread);
	if (s->nread)
		atomic_fetch_add(&j->chunks_read, 1);
	if ((!s->nread && !s->patched) || bk_is_zero(s->buf, s->len)) {
		e->hole = true;
		return 0;
	}
	int err = bk_digest(&j->r->keys, s->buf, s->len, e->digest);
	if (!err)
		err = bk_chunk_put(j->r, e->digest, s->buf, s->len, work, &stored);
	if (err)
		return err;
	e->hole = false;
	if (stored) {
		atomic_fetch_add(&j->bytes_stored, stored);
		atomic_fetch_add(&j->chunks_new, 1);
	}
	return 0;
}

static void *worker(void *arg)
{
	struct job *j = arg;
	struct extents alloc = { 0 }, dirty = { 0 };
	struct bk_chunk_buf work = { 0 };
	struct slot slots[WINDOW_MAX];
	unsigned window = WINDOW_BYTES / j->m->chunk_size;
	int err = 0;
	char msg[256];

	if (window < 1)
		window = 1;
	if (window > WINDOW_MAX)
		window = WINDOW_MAX;
	memset(slots, 0, sizeof(slots));
	for (unsigned i = 0; i < window; i++)
		if (!(slots[i].buf = malloc(j->m->chunk_size))) {
			job_fail(j, -ENOMEM, "out of memory");
			goto out;
		}
	struct nbd_handle *h = connect_source(j->uri, j->incremental ? j->bitmap_ctx : NULL, &err,
					      msg, sizeof(msg));
	if (!h) {
		job_fail(j, err, "%s", msg);
		goto out;
	}
	bool alloc_ok = nbd_can_meta_context(h, CTX_ALLOC) == 1;
	if (j->incremental && nbd_can_meta_context(h, j->bitmap_ctx) != 1) {
		job_fail(j, -ENOENT, "the server no longer offers %s", j->bitmap_ctx);
		goto close;
	}
	for (;;) {
		uint64_t sl = atomic_fetch_add(&j->next_slice, 1);
		if (sl >= j->nslices || bk_joberr_stopped(&j->fail))
			break;
		uint64_t first = sl * j->slice_chunks;
		uint64_t last = first + j->slice_chunks < j->m->nchunks ? first + j->slice_chunks :
									   j->m->nchunks;
		uint64_t a = first * j->m->chunk_size;
		uint64_t b = last * j->m->chunk_size < j->m->size ? last * j->m->chunk_size :
								      j->m->size;
		err = slice_extents(j, h, alloc_ok, a, b, &alloc, &dirty);
		if (err) {
			job_fail(j, err, "cannot get the extents of %s at offset %llu: %s", j->uri,
				 (unsigned long long)a,
				 err == -EPROTO ? "the server's answer is inconsistent" :
						  strerror(-err));
			break;
		}
		/* A window of chunks in flight; finished in order. */
		size_t acur = 0, dcur = 0;
		unsigned head = 0, used = 0;
		uint64_t idx = first;
		while ((idx < last || used) && !err) {
			while (idx < last && used < window) {
				uint64_t ca = idx * j->m->chunk_size;
				uint64_t cb = ca + j->m->chunk_size < b ? ca + j->m->chunk_size : b;
				size_t dstart = dcur;
				if (j->incremental && !overlaps_dirty(&dirty, ca, cb, &dcur)) {
					j->m->chunks[idx] = j->parent->chunks[idx];
					idx++;
					continue;
				}
				dcur = dstart;
				err = issue(j, h, &alloc, &acur, j->incremental ? &dirty : NULL, &dcur,
					    idx, &slots[(head + used) % window], &work);
				if (err)
					break;
				used++;
				idx++;
			}
			if (err || !used)
				break;
			struct slot *s = &slots[head];
			err = wait_slot(h, s);
			if (!err)
				err = finish_slot(j, s, &work);
			if (err)
				job_fail(j, err, "chunk %llu at offset %llu: %s",
					 (unsigned long long)s->index, (unsigned long long)s->off,
					 strerror(-err));
			head = (head + 1) % window;
			used--;
		}
		if (err) {
			job_fail(j, err, "reading %s: %s", j->uri, strerror(-err));
			break;
		}
		atomic_fetch_add(&j->prog->done, b - a);
	}
close:
	nbd_close(h);
out:
	for (unsigned i = 0; i < window; i++)
		free(slots[i].buf);
	free(alloc.v);
	free(dirty.v);
	bk_chunk_buf_free(&work);
	return NULL;
}

int bk_copy(struct bk_repo *r, const char *uri, const char *bitmap,
	    const struct bk_manifest *parent, struct bk_manifest *m, unsigned jobs,
	    struct bk_progress *prog, struct bk_copy_stats *st, char *msg, size_t msglen)
{
	struct job *j = calloc(1, sizeof(*j));
	pthread_t tids[64];
	unsigned started = 0;

	if (!j)
		return -ENOMEM;
	if (jobs < 1)
		jobs = 1;
	if (jobs > 64)
		jobs = 64;
	j->r = r;
	j->uri = uri;
	j->incremental = parent && bitmap;
	if (bitmap)
		snprintf(j->bitmap_ctx, sizeof(j->bitmap_ctx), CTX_DIRTY_PREFIX "%s", bitmap);
	j->parent = parent;
	j->m = m;
	/* Slices small enough that every worker gets several, large
	 * enough that a clean incremental costs few round trips. */
	j->slice_chunks = m->nchunks / (jobs * 8ull);
	if (j->slice_chunks < 1)
		j->slice_chunks = 1;
	if (j->slice_chunks > 256)
		j->slice_chunks = 256;
	j->nslices = (m->nchunks + j->slice_chunks - 1) / j->slice_chunks;
	j->prog = prog;
	bk_joberr_init(&j->fail);
	for (; started < jobs; started++)
		if (pthread_create(&tids[started], NULL, worker, j))
			break;
	if (!started)
		job_fail(j, -EAGAIN, "cannot start a worker thread");
	/* Draw progress while the workers run. */
	while (atomic_load(&j->next_slice) < j->nslices + started && !bk_joberr_stopped(&j->fail)) {
		bk_progress_tick(prog);
		usleep(50000);
	}
	for (unsigned i = 0; i < started; i++)
		pthread_join(tids[i], NULL);
	bk_progress_end(prog);
	st->bytes_read = atomic_load(&j->bytes_read);
	st->bytes_stored = atomic_load(&j->bytes_stored);
	st->chunks_read = atomic_load(&j->chunks_read);
	st->chunks_new = atomic_load(&j->chunks_new);
	int err = bk_joberr_finish(&j->fail, msg, msglen);
	free(j);
	return err;
}
