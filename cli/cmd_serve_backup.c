/*
 * voltrack serve-backup REPO BACKUP|latest [--socket PATH] [--listen HOST:PORT]
 *                       [--key FILE]
 *
 * Export one backup over NBD, read-only, as export "": instant access
 * to a restore point (nbdfuse and a loop device, or a VM's disk)
 * without restoring it.  The export is an implementation of the
 * library's export interface (src/io/export.h) over the repository, so
 * the whole of voltrack's NBD server serves it: base:allocation
 * reports the backup's holes, writes are refused with EPERM.
 *
 * A read is answered on the worker that receives it, synchronously:
 * each chunk it touches comes from a small cache of decoded chunks or
 * is read, checked and decompressed there.  A damaged chunk fails the
 * read with EIO and says which chunk in the log.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "chunk.h"
#include "cli.h"
#include "cmd_backup.h"
#include "export.h"
#include "listen.h"
#include "log.h"
#include "manifest.h"
#include "metactx.h"
#include "server.h"

#define CACHE_SLOTS 8

struct cached {
	uint64_t index;		/* UINT64_MAX: empty */
	uint64_t used;		/* LRU clock */
	uint8_t *data;
};

struct bexport {
	struct bk_repo *r;
	struct bk_manifest m;
	pthread_mutex_t lock;	/* the cache and the chunk buffer */
	struct cached cache[CACHE_SLOTS];
	uint64_t clock;
	struct bk_chunk_buf work;
};

static uint64_t be_size(void *impl)
{
	return ((struct bexport *)impl)->m.size;
}

/* The decoded chunk i, under be->lock. */
static int chunk_at(struct bexport *be, uint64_t i, const uint8_t **data)
{
	struct cached *victim = &be->cache[0];

	for (int s = 0; s < CACHE_SLOTS; s++) {
		struct cached *c = &be->cache[s];
		if (c->index == i) {
			c->used = ++be->clock;
			*data = c->data;
			return 0;
		}
		if (c->used < victim->used)
			victim = c;
	}
	size_t len;
	const char *why = "";
	int err = bk_chunk_get(be->r, be->m.chunks[i].digest, victim->data, be->m.chunk_size, &len,
			       &be->work, &why);
	if (err) {
		char hex[2 * BK_DIGEST_LEN + 1];
		bk_hex(be->m.chunks[i].digest, BK_DIGEST_LEN, hex);
		vt_error("backup %s: chunk %llu at offset %llu (%s): %s", be->m.id,
			 (unsigned long long)i, (unsigned long long)(i * be->m.chunk_size), hex,
			 err == -EBADMSG ? why : strerror(-err));
		victim->index = UINT64_MAX;
		return -EIO;
	}
	victim->index = i;
	victim->used = ++be->clock;
	*data = victim->data;
	return 0;
}

/* Copy n bytes from src into the iov at byte position pos. */
static void to_iov(struct vt_op *op, uint64_t pos, const uint8_t *src, uint64_t n)
{
	for (unsigned k = 0; k < op->iovcnt && n; k++) {
		uint64_t l = op->iov[k].iov_len;
		if (pos >= l) {
			pos -= l;
			continue;
		}
		uint64_t take = l - pos < n ? l - pos : n;
		if (src) {
			memcpy((uint8_t *)op->iov[k].iov_base + pos, src, take);
			src += take;
		} else {
			memset((uint8_t *)op->iov[k].iov_base + pos, 0, take);
		}
		n -= take;
		pos = 0;
	}
}

static void be_read(void *impl, struct vt_loop *loop, struct vt_op *op)
{
	struct bexport *be = impl;
	uint64_t cs = be->m.chunk_size, done = 0;
	int err = 0;

	if (op->off + op->len > be->m.size) {
		op->done(op, -EINVAL);
		return;
	}
	pthread_mutex_lock(&be->lock);
	while (done < op->len && !err) {
		uint64_t pos = op->off + done, i = pos / cs, in = pos % cs;
		uint64_t n = cs - in < op->len - done ? cs - in : op->len - done;
		const uint8_t *data = NULL;
		if (!be->m.chunks[i].hole)
			err = chunk_at(be, i, &data);
		if (!err)
			to_iov(op, done, data ? data + in : NULL, n);
		done += n;
	}
	pthread_mutex_unlock(&be->lock);
	if (err)
		op->why = "the backup's chunk is damaged (see the server's log)";
	op->done(op, err);
}

static void be_flush(void *impl, struct vt_loop *loop, struct vt_op *op)
{
	op->done(op, 0);
}

static void be_allocation(void *impl, uint64_t off, uint64_t len, bool *hole, uint64_t *run)
{
	struct bexport *be = impl;
	uint64_t cs = be->m.chunk_size, i = off / cs;
	bool h = be->m.chunks[i].hole;
	uint64_t end = (i + 1) * cs;

	while (end < off + len && end < be->m.size && be->m.chunks[end / cs].hole == h)
		end += cs;
	*hole = h;
	*run = (end < off + len ? end : off + len) - off;
}

static void be_release(void *impl)
{
	struct bexport *be = impl;

	for (int s = 0; s < CACHE_SLOTS; s++)
		free(be->cache[s].data);
	bk_chunk_buf_free(&be->work);
	bk_manifest_free(&be->m);
	pthread_mutex_destroy(&be->lock);
	free(be);
}

static const struct vt_export_ops backup_export_ops = {
	.size = be_size,
	.read = be_read,
	.flush = be_flush,
	.allocation = be_allocation,
	.release = be_release,
};

int cmd_serve_backup(int argc, char **argv)
{
	const char *sock = NULL, *listen_at = NULL;
	char *rest[argc + 1];
	int nrest = 0;

	/* Its own options first; the shared ones (--key) after. */
	rest[nrest++] = argv[0];
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--socket") || !strcmp(argv[i], "--listen")) {
			if (i + 1 == argc)
				return cli_usage("serve-backup", "%s needs a value", argv[i]);
			*(!strcmp(argv[i], "--socket") ? &sock : &listen_at) = argv[i + 1];
			i++;
		} else {
			rest[nrest++] = argv[i];
		}
	}
	rest[nrest] = NULL;
	struct bk_cli c;
	int status = bk_cli_options(&c, "serve-backup", nrest, rest, BK_OPT_KEY);
	if (status)
		return status;
	if (c.nargs != 2)
		return cli_usage("serve-backup", "serve-backup takes REPO BACKUP|latest");

	struct bk_repo *r;
	if (bk_cli_open_repo(&c, c.args[0], &r))
		return 1;
	struct bexport *be = calloc(1, sizeof(*be));
	char id[BK_ID_MAX], why[BK_FIELD_MAX];
	int err = be ? bk_manifest_resolve(r, c.args[1], id) : -ENOMEM;
	if (err) {
		free(be);
		bk_repo_close(r);
		return cli_fail("no backup '%s' in %s", c.args[1], c.args[0]);
	}
	err = bk_manifest_read(r, id, &be->m, why);
	if (err) {
		free(be);
		bk_repo_close(r);
		return cli_fail("backup %s is damaged: %s; refusing to serve it", id,
				err == -EBADMSG ? why : strerror(-err));
	}
	be->r = r;
	pthread_mutex_init(&be->lock, NULL);
	for (int s = 0; s < CACHE_SLOTS; s++) {
		be->cache[s].index = UINT64_MAX;
		if (!(be->cache[s].data = malloc(be->m.chunk_size)))
			err = -ENOMEM;
	}

	sigset_t stop;
	sigemptyset(&stop);
	sigaddset(&stop, SIGINT);
	sigaddset(&stop, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &stop, NULL);
	signal(SIGPIPE, SIG_IGN);

	struct nbd_server_config cfg;
	struct nbd_server *srv = NULL;
	struct vt_export *e = NULL;
	char *path = NULL, desc[BK_ID_MAX + 16];
	nbd_server_config_defaults(&cfg);
	snprintf(desc, sizeof(desc), "backup %s", be->m.id);
	if (!err)
		err = vt_export_create("", desc, &backup_export_ops, be, VT_EXPORT_READ_ONLY, &e);
	else
		be_release(be);
	if (!err)
		err = nbd_server_create(&cfg, &srv);
	if (!err)
		err = nbd_server_add_export(srv, e);
	if (!err)
		err = metactx_register(nbd_server_contexts(srv), &metactx_base_allocation);
	if (err) {
		status = cli_fail("cannot set up the server: %s", strerror(-err));
		goto out;
	}
	if (sock)
		path = strdup(sock);
	else if (asprintf(&path, "%s/serve-%s.sock", c.args[0], id) < 0)
		path = NULL;
	int fd;
	if (!path || (err = listen_unix(path, &fd))) {
		status = cli_fail("cannot listen on %s: %s", path ? path : "", strerror(-err));
		goto out;
	}
	nbd_server_add_listener(srv, fd);
	if (listen_at) {
		int fds[8];
		size_t n;
		err = listen_tcp(listen_at, fds, 8, &n);
		if (err) {
			status = cli_fail("cannot listen on %s: %s", listen_at, strerror(-err));
			goto out;
		}
		for (size_t i = 0; i < n; i++)
			nbd_server_add_listener(srv, fds[i]);
	}
	err = nbd_server_start(srv);
	if (err) {
		status = cli_fail("cannot start the server: %s", strerror(-err));
		goto out;
	}
	vt_info("serving backup %s of %s (read-only) at nbd+unix:///?socket=%s", be->m.id,
		c.args[0], path);
	int sig;
	while (sigwait(&stop, &sig) != 0)
		;
	vt_info("%s received; stopping", strsignal(sig));
	nbd_server_stop(srv);
	status = 0;
out:
	if (path && (sock || !status))
		unlink(path);
	nbd_server_destroy(srv);
	if (e)
		vt_export_put(e);
	bk_repo_close(r);
	free(path);
	return status;
}
