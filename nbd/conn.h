/*
 * conn: one NBD connection in the transmission phase, shared by the
 * three files that run it on its worker:
 *
 *   transmit.c  the socket side: receive and parse requests, send the
 *               queued replies, decide when the connection is done;
 *   request.c   the request slots: start each request on the export
 *               (src/io/export.h) and turn its completion into a reply;
 *   worker.c    the worker's event loop, which adopts connections,
 *               services those touched in a turn, and closes them.
 *
 * Contract: everything here runs on the connection's worker thread
 * only; a connection never moves.  Receive: one stream read is
 * outstanding per connection, into a buffer that usually holds many
 * requests; each parsed request takes a slot (preallocated, with a
 * reusable payload buffer) and starts at once, so requests run
 * concurrently and finish in any order.  A large WRITE payload that has
 * not arrived yet is read straight into its slot.  When slots or the
 * in-flight byte budget run out, reading pauses and TCP pushes back on
 * the client.  Send: finished slots queue their replies; after each
 * loop turn the worker sends everything queued on a connection with one
 * gathered write, and one send is outstanding per connection so replies
 * never interleave.
 *
 * With TLS (tls.h) the same holds for plaintext; the socket read and
 * write then carry ciphertext to and from the session's buffers, and
 * plaintext is decrypted straight into the receive buffer or a WRITE's
 * slot.  A reply is done once it is encrypted; the connection closes
 * only once its ciphertext has left too.
 *
 * A connection dies (protocol error, socket error) by shutting its
 * socket down; it is freed only once no I/O of its own is outstanding
 * (no slot busy, no socket operation pending), because the kernel may
 * still be writing into its buffers.
 */
#ifndef VOLTRACK_NBD_CONN_H
#define VOLTRACK_NBD_CONN_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include "op.h"
#include "server_internal.h"
#include "wire.h"

#define RBUF_SIZE	(256u << 10)
#define MAX_SLOTS	128
#define SEND_IOV	64
#define INFLIGHT_BUDGET	(64u << 20)	/* buffer bytes held by slots */
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
	uint64_t budget;		/* its share of conn->inflight_bytes */
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
	struct iovec tls_out;		/* the ciphertext being written */
	bool tls_bye;			/* close_notify queued */

	bool dead;			/* no more replies; close when idle */
	bool draining;			/* server stopping */
};

/* transmit.c */
/* Queue c for servicing at the end of this loop turn. */
void conn_mark_dirty(struct nbd_conn *c);
/* No more replies; close once idle.  why is logged unless NULL. */
void conn_kill(struct nbd_conn *c, const char *why);
/* After a loop turn: parse, send, read more.  false once c may be closed. */
bool conn_service(struct nbd_conn *c);
void conn_free(struct nbd_conn *c);

/* request.c */
/* A free slot, or NULL when all are busy. */
struct nbd_slot *slot_get(struct nbd_conn *c);
void slot_put(struct nbd_conn *c, struct nbd_slot *sl);
/* Grow sl's buffer to at least len bytes: 0 or -ENOMEM. */
int slot_reserve(struct nbd_conn *c, struct nbd_slot *sl, size_t len);
/* The buffer a request needs: its payload (READ, WRITE), or room for
 * its block-status reply; what it counts against INFLIGHT_BUDGET. */
uint64_t slot_buffer_size(const struct nbd_conn *c, const struct nbd_request *rq);
/* Start a validated request whose payload, if any, has arrived; its
 * reply is queued when it completes. */
void slot_start(struct nbd_slot *sl);
void reply_error(struct nbd_slot *sl, uint32_t err, const char *msg);
const char *error_text(uint32_t err);

#endif
