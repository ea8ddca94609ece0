/*
 * request: a connection's request slots, from a parsed request to its
 * queued reply (see conn.h).  Everything that moves data goes to the
 * export as a vt_op; this file only translates between NBD and that.
 */
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>

#include "conn.h"
#include "proto.h"

/* ---- slots ---- */

struct nbd_slot *slot_get(struct nbd_conn *c)
{
	struct nbd_slot *sl = c->free_slots;

	if (sl) {
		c->free_slots = sl->next;
		sl->next = NULL;
		c->busy++;
	}
	return sl;
}

void slot_put(struct nbd_conn *c, struct nbd_slot *sl)
{
	c->inflight_bytes -= sl->budget;
	sl->budget = 0;
	/* Keep buffers for reuse, but not without bound: RSS stays flat.
	 * retained_bytes counts every slot's buffer, this one included. */
	if (sl->cap && c->retained_bytes > RETAIN_BUDGET) {
		c->retained_bytes -= sl->cap;
		free(sl->buf);
		sl->buf = NULL;
		sl->cap = 0;
	}
	sl->next = c->free_slots;
	c->free_slots = sl;
	c->busy--;
	conn_mark_dirty(c); /* reading may resume */
}

int slot_reserve(struct nbd_conn *c, struct nbd_slot *sl, size_t len)
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

void reply_error(struct nbd_slot *sl, uint32_t err, const char *msg)
{
	if (sl->conn->s.structured)
		reply_header_only(sl, nbd_error_chunk_encode(sl->hdr, sizeof(sl->hdr),
							     sl->rq.cookie, err, msg));
	else
		reply_header_only(sl, nbd_simple_reply_encode(sl->hdr, err, sl->rq.cookie));
}

const char *error_text(uint32_t err)
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
		/* Out-of-range requests never get here (nbd_request_check):
		 * an ENOSPC from the pipeline is the volume's storage full. */
		const char *text = wire == NBD_ENOSPC ? "no space left for the volume's data" :
				   error_text(wire);
		reply_error(sl, wire, op->why ? op->why : text);
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

static size_t extents_max(const struct nbd_request *rq)
{
	return (rq->flags & NBD_CMD_FLAG_REQ_ONE) ? 1 : MAX_EXTENTS;
}

uint64_t slot_buffer_size(const struct nbd_conn *c, const struct nbd_request *rq)
{
	if (rq->type == NBD_CMD_BLOCK_STATUS)
		return c->s.contexts.n * (NBD_CHUNK_HEADER_SIZE + 4 + extents_max(rq) * 8);
	return rq->type == NBD_CMD_READ || rq->type == NBD_CMD_WRITE ? rq->length : 0;
}

static void block_status(struct nbd_slot *sl)
{
	struct nbd_conn *c = sl->conn;
	const struct metactx_selection *sel = &c->s.contexts;
	size_t max = extents_max(&sl->rq);
	size_t chunk_max = NBD_CHUNK_HEADER_SIZE + 4 + max * 8;
	size_t pos = 0;

	if (slot_reserve(c, sl, slot_buffer_size(c, &sl->rq)) < 0) {
		reply_error(sl, NBD_ENOMEM, "out of memory");
		return;
	}
	for (size_t i = 0; i < sel->n; i++) {
		const struct metactx_selected *ctx = &sel->items[i];
		uint8_t *chunk = sl->buf + pos;
		struct nbd_extent *ext = (struct nbd_extent *)(chunk + NBD_CHUNK_HEADER_SIZE + 4);
		int n = ctx->provider->extents(ctx->ctx, c->s.export, sl->rq.offset,
					       sl->rq.length, ext, max);
		if (n == -ENOENT) {
			reply_error(sl, NBD_EINVAL, "the context's checkpoint was deleted");
			return;
		}
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
void slot_start(struct nbd_slot *sl)
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
