/*
 * server: an NBD server over any number of listening sockets.
 *
 * Threads: one acceptor; one short-lived thread per connection while it
 * negotiates (blocking I/O, bounded by a deadline and the connection
 * cap); and a fixed set of workers, each an event loop on its own vio
 * engine, that run the transmission phase of the connections handed to
 * them.  A request is received, executed and answered on one worker, so
 * the data path has no cross-thread hand-off.
 *
 * nbd_server_stop() stops accepting, cuts negotiations short, lets each
 * connection finish the requests it already received (answering any
 * still buffered with ESHUTDOWN) and closes it; after a grace period it
 * closes stragglers.  When it returns no thread touches the exports.
 */
#ifndef VOLTRACK_NBD_SERVER_H
#define VOLTRACK_NBD_SERVER_H

#include <stdint.h>

#include "exports.h"
#include "metactx.h"
#include "vio.h"

struct nbd_tls_creds;

struct nbd_server_config {
	unsigned workers;		/* event loops; 0: one per CPU */
	unsigned max_connections;	/* negotiating and transmitting */
	unsigned handshake_timeout_ms;	/* whole negotiation */
	unsigned shutdown_grace_ms;	/* for in-flight requests at stop */
	uint32_t max_payload;		/* READ/WRITE limit, advertised */
	enum vio_backend backend;
	/* Non-NULL: TLS is required (FORCEDTLS in the NBD spec).  Owned by
	 * the caller; it must outlive the server. */
	const struct nbd_tls_creds *tls;
};

#define NBD_DEFAULT_MAX_CONNECTIONS 128
#define NBD_DEFAULT_HANDSHAKE_TIMEOUT_MS 10000
#define NBD_DEFAULT_SHUTDOWN_GRACE_MS 5000
#define NBD_DEFAULT_MAX_PAYLOAD (32u << 20)

void nbd_server_config_defaults(struct nbd_server_config *cfg);

struct nbd_server;

int nbd_server_create(const struct nbd_server_config *cfg, struct nbd_server **out);
/* Frees everything; only after stop, or if never started. */
void nbd_server_destroy(struct nbd_server *srv);

/*
 * Offer e under its name, from the next negotiation on (the server takes
 * a reference of its own), or stop offering it: connections already
 * using it keep it until they close.  Any thread, at any time, also
 * while the server runs.  -EEXIST for a taken name, -ENOENT for an
 * unknown one.
 */
int nbd_server_add_export(struct nbd_server *srv, struct vt_export *e);
int nbd_server_remove_export(struct nbd_server *srv, const char *name);

struct metactx_registry *nbd_server_contexts(struct nbd_server *srv);

/* Adopt a socket that is already listening; the server closes it. */
int nbd_server_add_listener(struct nbd_server *srv, int fd);

/*
 * Serve one client on a socket that is already connected (one end of a
 * socketpair, or an inherited connection), exactly as if it had been
 * accepted: the same cap, deadline and negotiation.  Only while the
 * server runs; the server closes fd.
 */
int nbd_server_add_client(struct nbd_server *srv, int fd);

int nbd_server_start(struct nbd_server *srv);
void nbd_server_stop(struct nbd_server *srv);

/* "io_uring" or "threads", once started. */
const char *nbd_server_engine(const struct nbd_server *srv);

#endif
