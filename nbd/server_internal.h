/*
 * server_internal: state shared by server.c (lifecycle, accept),
 * handshake.c (negotiation) and transmit.c (transmission phase).
 */
#ifndef VOLTRACK_NBD_SERVER_INTERNAL_H
#define VOLTRACK_NBD_SERVER_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "loop.h"
#include "server.h"

/* What negotiation settled, handed from handshake to transmission. */
struct nbd_session {
	struct vt_export *export;	/* counted reference */
	bool structured;
	uint16_t eflags;
	struct metactx_selection contexts;
	struct vt_export *contexts_export; /* counted; what SET named */
	struct nbd_tls *tls;		/* owned; NULL for a plaintext session */
};

/* Drop everything the session holds, its TLS session too. */
void nbd_session_release(struct nbd_session *s);

struct nbd_conn;
struct nbd_slot;

struct nbd_worker {
	struct nbd_server *srv;
	pthread_t thread;
	struct vt_loop loop;		/* engine, and parked requests coming back */
	int start_status;		/* loop creation result */
	pthread_mutex_t lock;		/* guards incoming */
	struct nbd_conn *incoming;
	atomic_bool has_incoming;
	atomic_bool draining;
	/* worker-thread only */
	struct nbd_conn *conns;
	struct nbd_conn *dirty;
	bool drain_started;
	uint64_t drain_deadline_ms;
};

struct nbd_server {
	struct nbd_server_config cfg;
	struct nbd_export_table exports;
	struct metactx_registry contexts;
	int *listen_fds;
	size_t nlisten;
	int stop_fd;
	pthread_t acceptor;
	bool started;
	struct nbd_worker *workers;
	unsigned nworkers;
	unsigned next_worker;
	const char *engine_name;

	pthread_mutex_t lock;		/* guards the fields below */
	pthread_cond_t changed;
	unsigned nconns;		/* negotiating + transmitting */
	unsigned nhandshakes;
	int *handshake_fds;		/* max_connections slots, -1 free */
	atomic_bool stopping;
};

/* Blocking negotiation on fd.  0: enter transmission with *s filled. */
int nbd_handshake(struct nbd_server *srv, int fd, struct nbd_session *s);

/* Hand a negotiated connection to a worker; takes fd and the session. */
int nbd_transmit_start(struct nbd_worker *w, int fd, struct nbd_session *s);

/* A worker's event loop. */
void *nbd_worker_main(void *arg);

/* Called by a worker when a connection has closed. */
void nbd_server_conn_closed(struct nbd_server *srv);


#endif
