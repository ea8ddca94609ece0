/*
 * worker: one event loop (see server.h) running the transmission phase
 * of the connections handed to it.  Each turn: adopt new connections,
 * service those touched in the last turn (conn.h), then wait on the
 * loop, which also resumes requests parked off this thread.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conn.h"
#include "deadline.h"
#include "log.h"
#include "tls.h"

int nbd_transmit_start(struct nbd_worker *w, int fd, struct nbd_session *s)
{
	struct nbd_conn *c = calloc(1, sizeof(*c));

	if (!c)
		return -ENOMEM;
	c->rbuf = malloc(RBUF_SIZE);
	/* From here the session does no I/O: the loop moves its bytes. */
	if (!c->rbuf || (s->tls && nbd_tls_detach(s->tls) < 0)) {
		free(c->rbuf);
		free(c);
		return -ENOMEM;
	}
	c->w = w;
	c->fd = fd;
	c->s = *s;
	memset(s, 0, sizeof(*s)); /* the connection owns the references now */
	c->lim = (struct nbd_limits){
		.export_size = vt_export_size(c->s.export),
		.max_payload = w->srv->cfg.max_payload,
		.eflags = c->s.eflags,
		.structured = c->s.structured,
		.have_contexts = c->s.contexts.n > 0,
	};
	for (unsigned i = 0; i < MAX_SLOTS; i++) {
		c->slots[i].conn = c;
		c->slots[i].next = i + 1 < MAX_SLOTS ? &c->slots[i + 1] : NULL;
	}
	c->free_slots = &c->slots[0];

	pthread_mutex_lock(&w->lock);
	c->next = w->incoming;
	w->incoming = c;
	atomic_store(&w->has_incoming, true);
	pthread_mutex_unlock(&w->lock);
	vt_loop_wake(&w->loop);
	return 0;
}

static void adopt_incoming(struct nbd_worker *w)
{
	struct nbd_conn *list;

	if (!atomic_exchange(&w->has_incoming, false))
		return;
	pthread_mutex_lock(&w->lock);
	list = w->incoming;
	w->incoming = NULL;
	pthread_mutex_unlock(&w->lock);
	while (list) {
		struct nbd_conn *c = list;
		list = c->next;
		int err = vio_stream_attach(w->loop.eng, &c->stream, c->fd);
		c->next = w->conns;
		w->conns = c;
		if (err)
			conn_kill(c, "cannot attach socket to the event loop");
		if (w->drain_started) {
			c->draining = true;
			c->rx_done = true;
		}
		conn_mark_dirty(c);
	}
}

static void begin_drain(struct nbd_worker *w)
{
	w->drain_started = true;
	w->drain_deadline_ms = net_now_ms() + w->srv->cfg.shutdown_grace_ms;
	for (struct nbd_conn *c = w->conns; c; c = c->next) {
		c->draining = true;
		/* Stop reading; requests already buffered get ESHUTDOWN. */
		shutdown(c->fd, SHUT_RD);
		if (c->recv_pending)
			vio_stream_cancel(w->loop.eng, &c->stream);
		conn_mark_dirty(c);
	}
}

static void close_conn(struct nbd_worker *w, struct nbd_conn *c)
{
	/* Servicing may have queued it again; it must not outlive the list. */
	if (c->dirty) {
		for (struct nbd_conn **p = &w->dirty; *p; p = &(*p)->dirty_next) {
			if (*p == c) {
				*p = c->dirty_next;
				break;
			}
		}
	}
	for (struct nbd_conn **p = &w->conns; *p; p = &(*p)->next) {
		if (*p == c) {
			*p = c->next;
			break;
		}
	}
	vio_stream_detach(w->loop.eng, &c->stream);
	close(c->fd);
	conn_free(c);
	nbd_server_conn_closed(w->srv);
}

void *nbd_worker_main(void *arg)
{
	struct nbd_worker *w = arg;

	for (;;) {
		adopt_incoming(w);
		if (atomic_load(&w->draining) && !w->drain_started)
			begin_drain(w);
		if (w->drain_started && net_now_ms() >= w->drain_deadline_ms)
			for (struct nbd_conn *c = w->conns; c; c = c->next)
				conn_kill(c, "shutdown grace period over");

		/* Service every connection touched in the last turn.  New ones
		 * may be marked while we go; loop until the list is empty. */
		while (w->dirty) {
			struct nbd_conn *c = w->dirty;
			w->dirty = c->dirty_next;
			c->dirty = false;
			if (!conn_service(c))
				close_conn(w, c);
		}
		if (w->drain_started && !w->conns)
			break;
		/* Requests parked off this worker (an intent commit) come back
		 * in here and mark their connections dirty for the next turn. */
		int ret = vt_loop_run(&w->loop, w->drain_started ? 100 : -1);
		if (ret < 0 && ret != -EINTR) {
			vt_error("event loop failed: %s", strerror(-ret));
			break;
		}
	}
	return NULL;
}
