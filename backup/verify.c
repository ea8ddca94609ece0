/*
 * verify: see verify.h.
 */
#include <errno.h>
#include <libnbd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "chunk.h"
#include "verify.h"

struct uniq {
	uint8_t digest[BK_DIGEST_LEN];
	int err;		/* 0 sound, else -errno */
	const char *why;	/* static text for -EBADMSG */
};

struct vjob {
	struct bk_repo *r;
	struct uniq *u;
	size_t n;
	atomic_size_t next;
	atomic_uint_least64_t bytes;
	struct bk_progress *prog;
};

static int cmp_digest(const void *a, const void *b)
{
	return memcmp(a, b, BK_DIGEST_LEN);
}

static void *vworker(void *arg)
{
	struct vjob *j = arg;
	struct bk_chunk_buf work = { 0 };
	uint8_t *buf = malloc(j->r->chunk_size);

	for (;;) {
		size_t i = atomic_fetch_add(&j->next, 1);
		if (i >= j->n)
			break;
		size_t len = 0;
		j->u[i].why = "";
		j->u[i].err = buf ? bk_chunk_get(j->r, j->u[i].digest, buf, j->r->chunk_size, &len,
						 &work, &j->u[i].why) :
				    -ENOMEM;
		atomic_fetch_add(&j->bytes, len);
		atomic_fetch_add(&j->prog->done, 1);
		atomic_fetch_add(&j->prog->moved, len);
	}
	free(buf);
	bk_chunk_buf_free(&work);
	return NULL;
}

long bk_verify(struct bk_repo *r, const char *id, unsigned jobs, struct bk_progress *prog,
	       FILE *out, struct bk_verify_stats *st)
{
	char **ids = NULL;
	size_t nids = 0;
	long problems = 0;
	int err;

	memset(st, 0, sizeof(*st));
	if (id) {
		ids = malloc(sizeof(*ids));
		if (!ids || !(ids[0] = strdup(id))) {
			free(ids);
			return -ENOMEM;
		}
		nids = 1;
	} else if ((err = bk_manifest_list(r, &ids, &nids))) {
		return err;
	}
	struct bk_manifest *ms = calloc(nids ? nids : 1, sizeof(*ms));
	bool *ok = calloc(nids ? nids : 1, sizeof(*ok));
	size_t total = 0;
	if (!ms || !ok) {
		problems = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < nids; i++) {
		char why[BK_FIELD_MAX];
		err = bk_manifest_read(r, ids[i], &ms[i], why);
		if (err) {
			fprintf(out, "backup %s: manifest %s\n", ids[i],
				err == -EBADMSG ? why : strerror(-err));
			problems++;
			continue;
		}
		ok[i] = true;
		st->backups++;
		for (uint64_t c = 0; c < ms[i].nchunks; c++)
			total += !ms[i].chunks[c].hole;
	}
	/* Each distinct chunk once, however many backups name it. */
	struct uniq *u = calloc(total ? total : 1, sizeof(*u));
	if (!u) {
		problems = -ENOMEM;
		goto out;
	}
	size_t n = 0;
	for (size_t i = 0; i < nids; i++)
		for (uint64_t c = 0; ok[i] && c < ms[i].nchunks; c++)
			if (!ms[i].chunks[c].hole)
				memcpy(u[n++].digest, ms[i].chunks[c].digest, BK_DIGEST_LEN);
	qsort(u, n, sizeof(*u), cmp_digest);
	size_t w = 0;
	for (size_t i = 0; i < n; i++)
		if (!w || memcmp(u[w - 1].digest, u[i].digest, BK_DIGEST_LEN))
			u[w++] = u[i];
	n = w;

	struct vjob j = { .r = r, .u = u, .n = n, .prog = prog };
	pthread_t tids[64];
	unsigned started = 0;
	atomic_init(&j.next, 0);
	atomic_init(&j.bytes, 0);
	if (jobs > 64)
		jobs = 64;
	for (; started < (jobs ? jobs : 1); started++)
		if (pthread_create(&tids[started], NULL, vworker, &j))
			break;
	if (!started)
		vworker(&j);
	while (atomic_load(&j.next) < n + started) {
		bk_progress_tick(prog);
		usleep(50000);
	}
	for (unsigned i = 0; i < started; i++)
		pthread_join(tids[i], NULL);
	bk_progress_end(prog);
	st->chunks = n;
	st->bytes = atomic_load(&j.bytes);

	for (size_t i = 0; i < nids; i++)
		for (uint64_t c = 0; ok[i] && c < ms[i].nchunks; c++) {
			if (ms[i].chunks[c].hole)
				continue;
			struct uniq *x = bsearch(ms[i].chunks[c].digest, u, n, sizeof(*u),
						 cmp_digest);
			if (!x || !x->err)
				continue;
			char hex[2 * BK_DIGEST_LEN + 1];
			bk_hex(ms[i].chunks[c].digest, BK_DIGEST_LEN, hex);
			fprintf(out, "backup %s: chunk %llu at offset %llu (%s): %s\n", ids[i],
				(unsigned long long)c,
				(unsigned long long)(c * ms[i].chunk_size), hex,
				x->err == -EBADMSG ? x->why :
				x->err == -ENOENT ? "missing" : strerror(-x->err));
			problems++;
		}
	free(u);
out:
	for (size_t i = 0; ms && i < nids; i++)
		bk_manifest_free(&ms[i]);
	free(ms);
	free(ok);
	bk_manifest_list_free(ids, nids);
	return problems;
}

long bk_verify_against(struct bk_repo *r, const struct bk_manifest *m, const char *uri,
		       FILE *out, char *msg, size_t msglen)
{
	struct nbd_handle *h = nbd_create();
	uint8_t *buf = malloc(m->chunk_size);
	long diffs = 0;

	if (!h || !buf || nbd_connect_uri(h, uri)) {
		snprintf(msg, msglen, "cannot connect to %s: %s", uri,
			 h ? nbd_get_error() : "out of memory");
		diffs = -EIO;
		goto out;
	}
	if (nbd_get_size(h) != (int64_t)m->size) {
		fprintf(out, "backup %s: size %llu, %s: %lld\n", m->id,
			(unsigned long long)m->size, uri, (long long)nbd_get_size(h));
		diffs++;
		goto out;
	}
	for (uint64_t c = 0; c < m->nchunks; c++) {
		uint64_t off = c * m->chunk_size;
		uint64_t len = m->size - off < m->chunk_size ? m->size - off : m->chunk_size;
		uint8_t d[BK_DIGEST_LEN];
		if (nbd_pread(h, buf, len, off, 0)) {
			snprintf(msg, msglen, "cannot read %s at offset %llu: %s", uri,
				 (unsigned long long)off, nbd_get_error());
			diffs = -EIO;
			goto out;
		}
		bool same = m->chunks[c].hole ? bk_is_zero(buf, len) :
			    !bk_digest(&r->keys, buf, len, d) &&
			    !memcmp(d, m->chunks[c].digest, BK_DIGEST_LEN);
		if (!same) {
			fprintf(out, "backup %s: chunk %llu at offset %llu differs from %s\n", m->id,
				(unsigned long long)c, (unsigned long long)off, uri);
			diffs++;
		}
	}
out:
	if (h)
		nbd_close(h);
	free(buf);
	return diffs;
}
