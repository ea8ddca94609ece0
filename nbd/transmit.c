/*
 * transmit: the socket side of a connection (see conn.h): receive and
 * parse requests, send queued replies, and decide when it is done.
 */
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "conn.h"
#include "log.h"
#include "proto.h"
#include "tls.h"

void conn_mark_dirty(struct nbd_conn *c)
{
	if (!c->dirty) {
		c->dirty = true;
		c->dirty_next = c->w->dirty;
		c->w->dirty = c;
	}
}

void conn_kill(struct nbd_conn *c, const char *why)
{
	if (c->dead)
		return;
	if (why)
		vt_warn("closing connection: %s", why);
	c->dead = true;
	c->rx_done = true;
	/* Makes outstanding socket reads and writes complete promptly. */
	shutdown(c->fd, SHUT_RDWR);
	vio_stream_cancel(c->w->loop.eng, &c->stream);
	conn_mark_dirty(c);
}

/* ---- receive ---- */

static void recv_done(struct vio_req *io);

/*
 * Parse complete requests out of rbuf.  Returns when the buffer runs dry,
 * or a request must wait for a free slot or for budget.
 */
static void conn_parse(struct nbd_conn *c)
{
	while (!c->dead) {
		size_t avail = c->rtail - c->rhead;
		const uint8_t *p = c->rbuf + c->rhead;

		if (c->rx == RX_DISCARD) {
			size_t k = avail < c->rx_need ? avail : (size_t)c->rx_need;
			c->rhead += k;
			c->rx_need -= k;
			if (c->rx_need)
				return;
			c->rx = RX_HEADER;
			if (c->rx_slot) {
				struct nbd_slot *sl = c->rx_slot;
				c->rx_slot = NULL;
				reply_error(sl, sl->deferred_error, error_text(sl->deferred_error));
			}
			continue;
		}
		if (c->rx == RX_PAYLOAD) {
			struct nbd_slot *sl = c->rx_slot;
			size_t k = avail < c->rx_need ? avail : (size_t)c->rx_need;
			memcpy(sl->buf + sl->filled, p, k);
			sl->filled += k;
			c->rhead += k;
			c->rx_need -= k;
			if (c->rx_need)
				return;
			c->rx = RX_HEADER;
			c->rx_slot = NULL;
			slot_start(sl);
			continue;
		}

		/* Requests already buffered still run after EOF or shutdown;
		 * nothing after a DISC does. */
		if (c->disc || avail < NBD_REQUEST_SIZE)
			return;
		struct nbd_request rq;
		if (nbd_request_decode(p, &rq) < 0) {
			conn_kill(c, "bad request magic");
			return;
		}
		uint64_t payload = nbd_request_payload(&rq);
		bool carries_data = rq.type == NBD_CMD_READ || rq.type == NBD_CMD_WRITE;
		/* Block-status replies count too: with many contexts each
		 * needs megabytes, and 128 of them in flight would be a
		 * gigabyte per connection. */
		uint64_t cost = slot_buffer_size(c, &rq);
		if (cost && c->busy && c->inflight_bytes + cost > INFLIGHT_BUDGET)
			return; /* wait for completions to free budget */
		struct nbd_slot *sl = slot_get(c);
		if (!sl)
			return; /* wait for a free slot */
		c->rhead += NBD_REQUEST_SIZE;
		sl->rq = rq;

		if (rq.type == NBD_CMD_DISC) {
			/* Finish what is in flight, then close. */
			slot_put(c, sl);
			c->disc = true;
			c->rx_done = true;
			return;
		}
		uint32_t err = c->draining ? NBD_ESHUTDOWN : nbd_request_check(&rq, &c->lim);
		if (!err && carries_data && slot_reserve(c, sl, rq.length) < 0)
			err = NBD_ENOMEM;
		if (err) {
			if (payload) {
				/* Answer once the payload is gone: a client still
				 * sending it may not expect the reply yet. */
				c->rx = RX_DISCARD;
				c->rx_need = payload;
				c->rx_slot = sl;
				sl->deferred_error = err;
				continue;
			}
			reply_error(sl, err, error_text(err));
			continue;
		}
		c->inflight_bytes += cost;
		sl->budget = cost;
		if (rq.type == NBD_CMD_WRITE && rq.length) {
			/* An empty WRITE has no payload and no buffer: it
			 * starts (and is answered) at once. */
			sl->filled = 0;
			c->rx = RX_PAYLOAD;
			c->rx_slot = sl;
			c->rx_need = rq.length;
			continue;
		}
		slot_start(sl);
	}
}

/* Where the next bytes go (c->riov): false when nothing is to be read. */
static bool conn_recv_dest(struct nbd_conn *c)
{
	if (c->rx == RX_PAYLOAD && c->rhead == c->rtail) {
		/* Nothing buffered: read the rest straight into the slot. */
		struct nbd_slot *sl = c->rx_slot;
		c->riov.iov_base = sl->buf + sl->filled;
		c->riov.iov_len = c->rx_need;
		return true;
	}
	if (c->rx == RX_HEADER && c->rtail - c->rhead >= NBD_REQUEST_SIZE)
		return false; /* a whole request waits for a slot or budget */
	if (c->rhead == c->rtail) {
		c->rhead = c->rtail = 0;
	} else if (RBUF_SIZE - c->rtail < RBUF_SIZE / 4) {
		/* Little room left: move the partial request to the front. */
		memmove(c->rbuf, c->rbuf + c->rhead, c->rtail - c->rhead);
		c->rtail -= c->rhead;
		c->rhead = 0;
	}
	c->riov.iov_base = c->rbuf + c->rtail;
	c->riov.iov_len = RBUF_SIZE - c->rtail;
	return true;
}

/* n bytes (or the end, or an error) arrived at base, as conn_recv_dest chose. */
static void recv_landed(struct nbd_conn *c, const void *base, int64_t n)
{
	conn_mark_dirty(c);
	if (n <= 0) {
		c->rx_done = true;
		if (n < 0 && n != -ECANCELED && n != -ECONNRESET && !c->dead)
			vt_warn("receive failed: %s", strerror((int)-n));
		/* Complete requests already buffered still run and are
		 * answered; conn_service() drops a half-received one. */
		return;
	}
	if (base == c->rbuf + c->rtail) {
		c->rtail += (size_t)n;
	} else {
		/* direct payload read */
		struct nbd_slot *sl = c->rx_slot;
		sl->filled += (uint64_t)n;
		c->rx_need -= (uint64_t)n;
		if (c->rx_need == 0) {
			c->rx = RX_HEADER;
			c->rx_slot = NULL;
			slot_start(sl);
		}
	}
}

static void post_read(struct nbd_conn *c, struct iovec *iov, void (*done)(struct vio_req *))
{
	c->rreq.op = VIO_STREAM_READ;
	c->rreq.stream = &c->stream;
	c->rreq.iov = iov;
	c->rreq.iovcnt = 1;
	c->rreq.done = done;
	c->recv_pending = true;
	vio_submit(c->w->loop.eng, &c->rreq);
}

static void tls_recv_done(struct vio_req *io);

/*
 * TLS: decrypt what the session holds into the destination; only when
 * it holds nothing does a socket read go out, into its ciphertext
 * buffer.  Plaintext found here is parsed in the same loop turn (the
 * worker services a connection marked dirty again before it waits).
 */
static void tls_recv(struct nbd_conn *c)
{
	struct nbd_tls *t = c->s.tls;
	ssize_t n = nbd_tls_decrypt(t, c->riov.iov_base, c->riov.iov_len);

	if (nbd_tls_tx_data(t).iov_len && !c->send_pending)
		conn_mark_dirty(c); /* an alert or a key update to send */
	if (n >= 0) {
		recv_landed(c, c->riov.iov_base, n);
	} else if (n == -EAGAIN) {
		c->riov = nbd_tls_rx_room(t);
		post_read(c, &c->riov, tls_recv_done);
	} else {
		c->rx_done = true;
		conn_kill(c, n == -ECONNRESET ? NULL : "TLS session broken");
	}
}

static void tls_recv_done(struct vio_req *io)
{
	struct nbd_conn *c = (struct nbd_conn *)((char *)io - offsetof(struct nbd_conn, rreq));

	c->recv_pending = false;
	if (io->res <= 0)
		recv_landed(c, NULL, io->res);
	else {
		nbd_tls_rx_added(c->s.tls, (size_t)io->res);
		conn_mark_dirty(c);
	}
}

static void conn_post_recv(struct nbd_conn *c)
{
	if (c->recv_pending || c->rx_done || c->dead || !conn_recv_dest(c))
		return;
	if (c->s.tls)
		tls_recv(c);
	else
		post_read(c, &c->riov, recv_done);
}

static void recv_done(struct vio_req *io)
{
	struct nbd_conn *c = (struct nbd_conn *)((char *)io - offsetof(struct nbd_conn, rreq));

	c->recv_pending = false;
	recv_landed(c, io->iov->iov_base, io->res);
}

/* ---- send ---- */

/* Gather the queued replies' unsent bytes into c->siov; the count. */
static unsigned conn_gather(struct nbd_conn *c)
{
	unsigned n = 0;

	for (struct nbd_slot *sl = c->sendq_head; sl && n + 2 <= SEND_IOV; sl = sl->next) {
		uint64_t skip = sl->out_sent;
		for (unsigned i = 0; i < sl->nout; i++) {
			struct iovec v = sl->out[i];
			if (skip >= v.iov_len) {
				skip -= v.iov_len;
				continue;
			}
			v.iov_base = (char *)v.iov_base + skip;
			v.iov_len -= skip;
			skip = 0;
			c->siov[n++] = v;
		}
	}
	return n;
}

/* sent bytes of the queue are gone (to the socket, or into TLS records):
 * finished replies free their slots. */
static void send_account(struct nbd_conn *c, uint64_t sent)
{
	while (c->sendq_head) {
		struct nbd_slot *sl = c->sendq_head;
		if (!c->dead) {
			uint64_t left = sl->out_len - sl->out_sent;
			if (sent < left) {
				sl->out_sent += sent;
				break;
			}
			sent -= left;
		}
		c->sendq_head = sl->next;
		if (!c->sendq_head)
			c->sendq_tail = NULL;
		slot_put(c, sl);
	}
}

static void post_write(struct nbd_conn *c, struct iovec *iov, unsigned n,
		       void (*done)(struct vio_req *))
{
	c->sreq.op = VIO_STREAM_WRITE;
	c->sreq.stream = &c->stream;
	c->sreq.iov = iov;
	c->sreq.iovcnt = n;
	c->sreq.done = done;
	c->send_pending = true;
	vio_submit(c->w->loop.eng, &c->sreq);
}

static void send_done(struct vio_req *io);
static void tls_send_done(struct vio_req *io);

/* TLS: encrypt the next batch of replies once the last one has left. */
static void tls_post_send(struct nbd_conn *c)
{
	struct nbd_tls *t = c->s.tls;

	if (!nbd_tls_tx_data(t).iov_len && c->sendq_head) {
		ssize_t k = nbd_tls_encrypt(t, c->siov, conn_gather(c));
		if (k < 0) {
			conn_kill(c, "TLS: cannot encrypt replies");
			return;
		}
		send_account(c, (uint64_t)k);
	}
	c->tls_out = nbd_tls_tx_data(t);
	if (c->tls_out.iov_len)
		post_write(c, &c->tls_out, 1, tls_send_done);
}

static void conn_post_send(struct nbd_conn *c)
{
	if (c->send_pending)
		return;
	if (c->s.tls)
		tls_post_send(c);
	else if (c->sendq_head)
		post_write(c, c->siov, conn_gather(c), send_done);
}

static void send_done(struct vio_req *io)
{
	struct nbd_conn *c = (struct nbd_conn *)((char *)io - offsetof(struct nbd_conn, sreq));
	uint64_t sent = io->res > 0 ? (uint64_t)io->res : 0;

	c->send_pending = false;
	conn_mark_dirty(c);
	if (io->res <= 0 && !c->dead)
		conn_kill(c, io->res == -EPIPE || io->res == -ECONNRESET ? NULL :
			  "cannot send to client");
	send_account(c, sent);
}

static void tls_send_done(struct vio_req *io)
{
	struct nbd_conn *c = (struct nbd_conn *)((char *)io - offsetof(struct nbd_conn, sreq));

	c->send_pending = false;
	conn_mark_dirty(c);
	if (io->res <= 0 && !c->dead)
		conn_kill(c, io->res == -EPIPE || io->res == -ECONNRESET ? NULL :
			  "cannot send to client");
	if (io->res > 0)
		nbd_tls_tx_sent(c->s.tls, (size_t)io->res);
}

/* ---- lifecycle ---- */

void conn_free(struct nbd_conn *c)
{
	for (unsigned i = 0; i < MAX_SLOTS; i++)
		free(c->slots[i].buf);
	free(c->rbuf);
	nbd_session_release(&c->s);
	free(c);
}

static bool conn_idle(const struct nbd_conn *c)
{
	/* With TLS, replies already encrypted may still be on their way. */
	bool unsent = c->s.tls && !c->dead && nbd_tls_tx_data(c->s.tls).iov_len;

	return c->rx_done && c->busy == 0 && !c->recv_pending && !c->send_pending && !unsent;
}

/* After a loop turn: parse, send, read more, or close. */
bool conn_service(struct nbd_conn *c)
{
	conn_parse(c);
	if (c->rx_done && !c->recv_pending && c->rx != RX_HEADER) {
		/* Cut off mid-payload: that request never started. */
		if (c->rx_slot)
			slot_put(c, c->rx_slot);
		c->rx_slot = NULL;
		c->rx = RX_HEADER;
	}
	if (c->dead && !c->send_pending) {
		/* Nobody will read these replies. */
		while (c->sendq_head) {
			struct nbd_slot *sl = c->sendq_head;
			c->sendq_head = sl->next;
			slot_put(c, sl);
		}
		c->sendq_tail = NULL;
	}
	/* A soft disconnect closes the TLS session first (the NBD spec). */
	if (c->s.tls && c->disc && !c->tls_bye && !c->dead && c->busy == 0) {
		c->tls_bye = true;
		nbd_tls_bye(c->s.tls);
	}
	if (!c->dead)
		conn_post_send(c);
	conn_post_recv(c);
	return !conn_idle(c);
}
