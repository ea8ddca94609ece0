/*
 * The transmission phase: one connection's requests, on one worker.
 *
 * Receive: one stream read is outstanding per connection, into a buffer
 * that usually holds many requests; each parsed request takes a slot
 * (preallocated, with a reusable payload buffer) and starts its I/O at
 * once, so requests run concurrently and finish in any order.  A large
 * WRITE payload that has not arrived yet is read straight into its slot.
 * When slots or the in-flight byte budget run out, reading pauses and
 * TCP pushes back on the client.
 *
 * Send: finished slots queue their replies; after each loop turn the
 * worker sends everything queued on a connection with one gathered
 * write, and one send is outstanding per connection so replies never
 * interleave.
 *
 * A connection dies (protocol error, socket error) by shutting its
 * socket down; it is freed only once no I/O of its own is outstanding,
 * because the kernel may still be writing into its buffers.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "log.h"
#include "proto.h"
#include "server_internal.h"
#include "wire.h"

#define RBUF_SIZE	(256u << 10)
#define MAX_SLOTS	128
#define SEND_IOV	64
#define INFLIGHT_BUDGET	(64u << 20)	/* payload bytes held by slots */
#define RETAIN_BUDGET	(16u << 20)	/* idle slot buffers kept per connection */
#define MAX_EXTENTS	16384		/* descriptors per context per reply */
#define HDR_SIZE	64		/* room for any reply header */

struct nbd_slot {
	struct nbd_conn *conn;
	struct nbd_slot *next;		/* free list or send queue */
	struct nbd_request rq;
	struct vt_op op;		/* READ, the write family, FLUSH */
	struct iovec iov;
	uint8_t *buf;			/* payload: WRITE in, READ out, BLOCK_STATUS out */
	size_t cap;
	uint64_t filled;		/* WRITE payload received so far */
	bool counted;			/* rq.length is in conn->inflight_bytes */
	uint32_t deferred_error;	/* answer once the payload is dropped */
	/* reply */
	uint8_t hdr[HDR_SIZE];
	struct iovec out[2];
	unsigned nout;
	uint64_t out_len;
	uint64_t out_sent;
};

enum rx_state { RX_HEADER, RX_PAYLOAD, RX_DISCARD };

struct nbd_conn {
	struct nbd_worker *w;
	struct nbd_conn *next;		/* worker's list */
	struct nbd_conn *dirty_next;
	bool dirty;
	int fd;
	struct vio_stream stream;
	struct nbd_session s;
	struct nbd_limits lim;

	uint8_t *rbuf;
	size_t rhead, rtail;
	struct vio_req rreq;
	struct iovec riov;
	bool recv_pending;
	enum rx_state rx;
	struct nbd_slot *rx_slot;	/* RX_PAYLOAD, or RX_DISCARD's rejected WRITE */
	uint64_t rx_need;		/* RX_PAYLOAD / RX_DISCARD bytes left */
	bool rx_done;			/* no more reading: EOF, error, shutdown */
	bool disc;			/* NBD_CMD_DISC seen: parse no further */

	struct nbd_slot slots[MAX_SLOTS];
	struct nbd_slot *free_slots;
	unsigned busy;			/* slots not on the free list */
	uint64_t inflight_bytes;
	uint64_t retained_bytes;

	struct nbd_slot *sendq_head, *sendq_tail;
	struct vio_req sreq;
	struct iovec siov[SEND_IOV];
	bool send_pending;

	bool dead;			/* no more replies; close when idle */
	bool draining;			/* server stopping */
};

static void conn_mark_dirty(struct nbd_conn *c)
{
	if (!c->dirty) {
		c->dirty = true;
		c->dirty_next = c->w->dirty;
		c->w->dirty = c;
	}
}

static void conn_kill(struct nbd_conn *c, const char *why)
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

/* ---- slots ---- */

static struct nbd_slot *slot_get(struct nbd_conn *c)
{
	struct nbd_slot *sl = c->free_slots;

	if (sl) {
		c->free_slots = sl->next;
		sl->next = NULL;
		c->busy++;
	}
	return sl;
}

static void slot_put(struct nbd_conn *c, struct nbd_slot *sl)
{
	if (sl->counted)
		c->inflight_bytes -= sl->rq.length;
	sl->counted = false;
	/* Keep buffers for reuse, but not without bound: RSS stays flat. */
	if (sl->cap && c->retained_bytes + sl->cap > RETAIN_BUDGET) {
		free(sl->buf);
		sl->buf = NULL;
		sl->cap = 0;
	}
	sl->next = c->free_slots;
	c->free_slots = sl;
	c->busy--;
	conn_mark_dirty(c); /* reading may resume */
}

static int slot_reserve(struct nbd_conn *c, struct nbd_slot *sl, size_t len)
{
	if (sl->cap >= len)
		return 0;
	size_t cap = (len + 4095) & ~(size_t)4095;
	uint8_t *buf = malloc(cap);
	if (!buf)
		return -ENOMEM;
	if (sl->cap)
		c->retained_bytes -= sl->cap;
	free(sl->buf);
	sl->buf = buf;
	sl->cap = cap;
	c->retained_bytes += cap;
	return 0;
}

/* ---- replies ---- */

static void slot_queue_reply(struct nbd_slot *sl)
{
	struct nbd_conn *c = sl->conn;

	if (c->dead) {
		slot_put(c, sl);
		return;
	}
	sl->out_len = sl->out[0].iov_len + (sl->nout > 1 ? sl->out[1].iov_len : 0);
	sl->out_sent = 0;
	sl->next = NULL;
	if (c->sendq_tail)
		c->sendq_tail->next = sl;
	else
		c->sendq_head = sl;
	c->sendq_tail = sl;
	conn_mark_dirty(c);
}

static void reply_header_only(struct nbd_slot *sl, size_t len)
{
	sl->out[0].iov_base = sl->hdr;
	sl->out[0].iov_len = len;
	sl->nout = 1;
	slot_queue_reply(sl);
}

static void reply_ok(struct nbd_slot *sl)
{
	if (sl->conn->s.structured)
		reply_header_only(sl, nbd_chunk_encode(sl->hdr, NBD_REPLY_FLAG_DONE,
						       NBD_REPLY_TYPE_NONE, sl->rq.cookie, 0));
	else
		reply_header_only(sl, nbd_simple_reply_encode(sl->hdr, 0, sl->rq.cookie));
}

static void reply_error(struct nbd_slot *sl, uint32_t err, const char *msg)
{
	if (sl->conn->s.structured)
		reply_header_only(sl, nbd_error_chunk_encode(sl->hdr, sizeof(sl->hdr),
							     sl->rq.cookie, err, msg));
	else
		reply_header_only(sl, nbd_simple_reply_encode(sl->hdr, err, sl->rq.cookie));
}

static const char *error_text(uint32_t err)
{
	switch (err) {
	case NBD_EPERM: return "read-only export";
	case NBD_EINVAL: return "invalid request";
	case NBD_ENOSPC: return "beyond the end of the export";
	case NBD_ENOTSUP: return "cannot zero quickly";
	case NBD_ESHUTDOWN: return "server is shutting down";
	case NBD_ENOMEM: return "out of memory";
	default: return "I/O error";
	}
}

static void reply_errno(struct nbd_slot *sl, int64_t res)
{
	uint32_t err = nbd_errno_to_wire((int)res);
	reply_error(sl, err, error_text(err));
}

static void reply_read(struct nbd_slot *sl)
{
	size_t hlen;

	if (sl->conn->s.structured) {
		hlen = nbd_chunk_encode(sl->hdr, NBD_REPLY_FLAG_DONE,
					NBD_REPLY_TYPE_OFFSET_DATA, sl->rq.cookie,
					8 + sl->rq.length);
		put_be64(sl->hdr + hlen, sl->rq.offset);
		hlen += 8;
	} else {
		hlen = nbd_simple_reply_encode(sl->hdr, 0, sl->rq.cookie);
	}
	sl->out[0].iov_base = sl->hdr;
	sl->out[0].iov_len = hlen;
	sl->out[1].iov_base = sl->buf;
	sl->out[1].iov_len = sl->rq.length;
	sl->nout = 2;
	slot_queue_reply(sl);
}

/* ---- command execution ---- */

/* The pipeline's completion, on this worker: answer the client. */
static void op_done(struct vt_op *op, int err)
{
	struct nbd_slot *sl = (struct nbd_slot *)((char *)op - offsetof(struct nbd_slot, op));

	if (err) {
		uint32_t wire = nbd_errno_to_wire(err);
		reply_error(sl, wire, op->why ? op->why : error_text(wire));
	} else if (sl->rq.type == NBD_CMD_READ) {
		reply_read(sl);
	} else {
		reply_ok(sl);
	}
}

/* Hand a request that moves data to the export (src/io/op.h). */
static void start_op(struct nbd_slot *sl, uint8_t type)
{
	const struct nbd_request *rq = &sl->rq;
	struct vt_op *op = &sl->op;

	op->type = type;
	op->flags = 0;
	if (rq->flags & NBD_CMD_FLAG_FUA)
		op->flags |= VT_OP_FUA;
	if (!(rq->flags & NBD_CMD_FLAG_NO_HOLE))
		op->flags |= VT_OP_MAY_UNMAP;
	if (rq->flags & NBD_CMD_FLAG_FAST_ZERO)
		op->flags |= VT_OP_FAST;
	op->off = rq->offset;
	op->len = rq->length;
	sl->iov.iov_base = sl->buf;
	sl->iov.iov_len = rq->length;
	op->iov = &sl->iov;
	op->iovcnt = 1;
	op->done = op_done;
	vt_export_start(sl->conn->s.export, &sl->conn->w->loop, op);
}

static void block_status(struct nbd_slot *sl)
{
	struct nbd_conn *c = sl->conn;
	const struct metactx_selection *sel = &c->s.contexts;
	size_t max = (sl->rq.flags & NBD_CMD_FLAG_REQ_ONE) ? 1 : MAX_EXTENTS;
	size_t chunk_max = NBD_CHUNK_HEADER_SIZE + 4 + max * 8;
	size_t pos = 0;

	if (slot_reserve(c, sl, sel->n * chunk_max) < 0) {
		reply_error(sl, NBD_ENOMEM, "out of memory");
		return;
	}
	for (size_t i = 0; i < sel->n; i++) {
		const struct metactx_selected *ctx = &sel->items[i];
		uint8_t *chunk = sl->buf + pos;
		struct nbd_extent *ext = (struct nbd_extent *)(chunk + NBD_CHUNK_HEADER_SIZE + 4);
		int n = ctx->provider->extents(ctx->ctx, c->s.export, sl->rq.offset,
					       sl->rq.length, ext, max);
		if (n <= 0) {
			reply_errno(sl, n < 0 ? n : -EIO);
			return;
		}
		/* Clamp to the request: only the last descriptor could
		 * overrun, and with REQ_ONE it must not. */
		uint64_t covered = 0;
		int keep = 0;
		for (; keep < n && covered < sl->rq.length; keep++) {
			if (covered + ext[keep].length > sl->rq.length)
				ext[keep].length = (uint32_t)(sl->rq.length - covered);
			covered += ext[keep].length;
		}
		/* Rewrite in place as big-endian wire descriptors. */
		for (int k = 0; k < keep; k++) {
			struct nbd_extent e = ext[k];
			put_be32((uint8_t *)&ext[k], e.length);
			put_be32((uint8_t *)&ext[k] + 4, e.flags);
		}
		uint32_t len = 4 + (uint32_t)keep * 8;
		nbd_chunk_encode(chunk, i + 1 == sel->n ? NBD_REPLY_FLAG_DONE : 0,
				 NBD_REPLY_TYPE_BLOCK_STATUS, sl->rq.cookie, len);
		put_be32(chunk + NBD_CHUNK_HEADER_SIZE, ctx->id);
		pos += NBD_CHUNK_HEADER_SIZE + len;
		if (pos + chunk_max > sl->cap && i + 1 < sel->n)
			break; /* cannot happen: reserved sel->n * chunk_max */
	}
	sl->out[0].iov_base = sl->buf;
	sl->out[0].iov_len = pos;
	sl->nout = 1;
	slot_queue_reply(sl);
}

/* Start a validated request whose payload, if any, has arrived. */
static void slot_start(struct nbd_slot *sl)
{
	struct vt_export *e = sl->conn->s.export;
	const struct nbd_request *rq = &sl->rq;

	if (rq->length == 0 && rq->type != NBD_CMD_FLUSH) {
		reply_ok(sl); /* nothing to do, and fallocate rejects 0 */
		return;
	}
	switch (rq->type) {
	case NBD_CMD_READ:
		start_op(sl, VT_OP_READ);
		break;
	case NBD_CMD_WRITE:
		start_op(sl, VT_OP_WRITE);
		break;
	case NBD_CMD_FLUSH:
		start_op(sl, VT_OP_FLUSH);
		break;
	case NBD_CMD_TRIM:
		start_op(sl, VT_OP_TRIM);
		break;
	case NBD_CMD_WRITE_ZEROES:
		start_op(sl, VT_OP_ZERO);
		break;
	case NBD_CMD_CACHE:
		if (e->ops->cache)
			e->ops->cache(e->impl, rq->offset, rq->length);
		reply_ok(sl);
		break;
	case NBD_CMD_BLOCK_STATUS:
		block_status(sl);
		break;
	}
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
		if (carries_data && c->busy && c->inflight_bytes + rq.length > INFLIGHT_BUDGET)
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
		if (carries_data) {
			c->inflight_bytes += rq.length;
			sl->counted = true;
		}
		if (rq.type == NBD_CMD_WRITE) {
			sl->filled = 0;
			c->rx = RX_PAYLOAD;
			c->rx_slot = sl;
			c->rx_need = rq.length;
			continue;
		}
		slot_start(sl);
	}
}

static void conn_post_recv(struct nbd_conn *c)
{
	if (c->recv_pending || c->rx_done || c->dead)
		return;

	if (c->rx == RX_PAYLOAD && c->rhead == c->rtail) {
		/* Nothing buffered: read the rest straight into the slot. */
		struct nbd_slot *sl = c->rx_slot;
		c->riov.iov_base = sl->buf + sl->filled;
		c->riov.iov_len = c->rx_need;
	} else {
		if (c->rx == RX_HEADER && c->rtail - c->rhead >= NBD_REQUEST_SIZE)
			return; /* a whole request waits for a slot or budget */
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
	}
	c->rreq.op = VIO_STREAM_READ;
	c->rreq.stream = &c->stream;
	c->rreq.iov = &c->riov;
	c->rreq.iovcnt = 1;
	c->rreq.done = recv_done;
	c->recv_pending = true;
	vio_submit(c->w->loop.eng, &c->rreq);
}

static void recv_done(struct vio_req *io)
{
	struct nbd_conn *c = (struct nbd_conn *)((char *)io - offsetof(struct nbd_conn, rreq));

	c->recv_pending = false;
	conn_mark_dirty(c);
	if (io->res <= 0) {
		c->rx_done = true;
		if (io->res < 0 && io->res != -ECANCELED && io->res != -ECONNRESET && !c->dead)
			vt_warn("receive failed: %s", strerror((int)-io->res));
		/* Complete requests already buffered still run and are
		 * answered; conn_service() drops a half-received one. */
		return;
	}
	if (io->iov->iov_base == c->rbuf + c->rtail) {
		c->rtail += (size_t)io->res;
	} else {
		/* direct payload read */
		struct nbd_slot *sl = c->rx_slot;
		sl->filled += (uint64_t)io->res;
		c->rx_need -= (uint64_t)io->res;
		if (c->rx_need == 0) {
			c->rx = RX_HEADER;
			c->rx_slot = NULL;
			slot_start(sl);
		}
	}
}

/* ---- send ---- */

static void send_done(struct vio_req *io);

static void conn_post_send(struct nbd_conn *c)
{
	unsigned n = 0;

	if (c->send_pending || !c->sendq_head)
		return;
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
	c->sreq.op = VIO_STREAM_WRITE;
	c->sreq.stream = &c->stream;
	c->sreq.iov = c->siov;
	c->sreq.iovcnt = n;
	c->sreq.done = send_done;
	c->send_pending = true;
	vio_submit(c->w->loop.eng, &c->sreq);
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

/* ---- lifecycle ---- */

static void conn_free(struct nbd_conn *c)
{
	for (unsigned i = 0; i < MAX_SLOTS; i++)
		free(c->slots[i].buf);
	free(c->rbuf);
	nbd_session_release(&c->s);
	free(c);
}

static bool conn_idle(const struct nbd_conn *c)
{
	return c->rx_done && c->busy == 0 && !c->recv_pending && !c->send_pending;
}

/* After a loop turn: parse, send, read more, or close. */
static bool conn_service(struct nbd_conn *c)
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
	if (!c->dead)
		conn_post_send(c);
	conn_post_recv(c);
	return !conn_idle(c);
}

int nbd_transmit_start(struct nbd_worker *w, int fd, struct nbd_session *s)
{
	struct nbd_conn *c = calloc(1, sizeof(*c));

	if (!c)
		return -ENOMEM;
	c->rbuf = malloc(RBUF_SIZE);
	if (!c->rbuf) {
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
	w->drain_deadline_ms = nbd_now_ms() + w->srv->cfg.shutdown_grace_ms;
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
		if (w->drain_started && nbd_now_ms() >= w->drain_deadline_ms)
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
