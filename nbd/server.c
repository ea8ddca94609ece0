#include "server.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "server_internal.h"

void nbd_server_config_defaults(struct nbd_server_config *cfg)
{
	*cfg = (struct nbd_server_config){
		.workers = 0,
		.max_connections = NBD_DEFAULT_MAX_CONNECTIONS,
		.handshake_timeout_ms = NBD_DEFAULT_HANDSHAKE_TIMEOUT_MS,
		.shutdown_grace_ms = NBD_DEFAULT_SHUTDOWN_GRACE_MS,
		.max_payload = NBD_DEFAULT_MAX_PAYLOAD,
		.backend = VIO_BACKEND_AUTO,
	};
}

int nbd_server_create(const struct nbd_server_config *cfg, struct nbd_server **out)
{
	struct nbd_server *srv = calloc(1, sizeof(*srv));

	if (!srv)
		return -ENOMEM;
	srv->cfg = *cfg;
	if (!srv->cfg.workers) {
		long n = sysconf(_SC_NPROCESSORS_ONLN);
		srv->cfg.workers = n > 0 ? (unsigned)n : 1;
	}
	if (!srv->cfg.max_connections)
		srv->cfg.max_connections = 1;
	srv->handshake_fds = malloc(srv->cfg.max_connections * sizeof(int));
	srv->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (!srv->handshake_fds || srv->stop_fd < 0) {
		int err = srv->handshake_fds ? -errno : -ENOMEM;
		free(srv->handshake_fds);
		if (srv->stop_fd >= 0)
			close(srv->stop_fd);
		free(srv);
		return err;
	}
	for (unsigned i = 0; i < srv->cfg.max_connections; i++)
		srv->handshake_fds[i] = -1;
	export_table_init(&srv->exports);
	metactx_registry_init(&srv->contexts);
	pthread_mutex_init(&srv->lock, NULL);
	pthread_cond_init(&srv->changed, NULL);
	*out = srv;
	return 0;
}

void nbd_server_destroy(struct nbd_server *srv)
{
	if (!srv)
		return;
	for (size_t i = 0; i < srv->nlisten; i++)
		if (srv->listen_fds[i] >= 0)
			close(srv->listen_fds[i]);
	free(srv->listen_fds);
	free(srv->workers);
	free(srv->handshake_fds);
	close(srv->stop_fd);
	export_table_destroy(&srv->exports);
	metactx_registry_destroy(&srv->contexts);
	pthread_cond_destroy(&srv->changed);
	pthread_mutex_destroy(&srv->lock);
	free(srv);
}

int nbd_server_add_export(struct nbd_server *srv, struct vt_export *e)
{
	return export_table_add(&srv->exports, e);
}

int nbd_server_remove_export(struct nbd_server *srv, const char *name)
{
	return export_table_remove(&srv->exports, name);
}

struct metactx_registry *nbd_server_contexts(struct nbd_server *srv)
{
	return &srv->contexts;
}

const char *nbd_server_engine(const struct nbd_server *srv)
{
	return srv->engine_name ? srv->engine_name : "none";
}

int nbd_server_add_listener(struct nbd_server *srv, int fd)
{
	int *grown = realloc(srv->listen_fds, (srv->nlisten + 1) * sizeof(int));

	if (!grown)
		return -ENOMEM;
	srv->listen_fds = grown;
	srv->listen_fds[srv->nlisten++] = fd;
	return 0;
}

void nbd_server_conn_closed(struct nbd_server *srv)
{
	pthread_mutex_lock(&srv->lock);
	srv->nconns--;
	pthread_cond_broadcast(&srv->changed);
	pthread_mutex_unlock(&srv->lock);
}

/* ---- negotiation threads ---- */

struct handshake_job {
	struct nbd_server *srv;
	int fd;
	unsigned slot;
};

static void *handshake_main(void *arg)
{
	struct handshake_job *job = arg;
	struct nbd_server *srv = job->srv;
	struct nbd_session session;
	int fd = job->fd;
	int err = nbd_handshake(srv, fd, &session);
	bool stopping;

	pthread_mutex_lock(&srv->lock);
	srv->handshake_fds[job->slot] = -1;
	stopping = atomic_load(&srv->stopping);
	pthread_mutex_unlock(&srv->lock);

	if (!err && stopping) {
		nbd_session_release(&session);
		err = -ESHUTDOWN;
	}
	if (!err) {
		unsigned i = __atomic_fetch_add(&srv->next_worker, 1, __ATOMIC_RELAXED);
		err = nbd_transmit_start(&srv->workers[i % srv->nworkers], fd, &session);
		if (err)
			nbd_session_release(&session);
	}
	if (err)
		close(fd);

	pthread_mutex_lock(&srv->lock);
	srv->nhandshakes--;
	if (err)
		srv->nconns--;
	pthread_cond_broadcast(&srv->changed);
	pthread_mutex_unlock(&srv->lock);
	free(job);
	return NULL;
}

/* Admit a new connection, or refuse it when over the cap. */
static void admit(struct nbd_server *srv, int fd)
{
	struct handshake_job *job;
	pthread_attr_t attr;
	pthread_t thread;
	unsigned slot = 0;

	pthread_mutex_lock(&srv->lock);
	if (srv->nconns >= srv->cfg.max_connections) {
		pthread_mutex_unlock(&srv->lock);
		vt_warn("refusing connection: %u connections already open",
			srv->cfg.max_connections);
		close(fd);
		return;
	}
	while (srv->handshake_fds[slot] >= 0)
		slot++; /* a free slot exists: nhandshakes <= nconns < max */
	srv->handshake_fds[slot] = fd;
	srv->nconns++;
	srv->nhandshakes++;
	pthread_mutex_unlock(&srv->lock);

	/* Replies are already batched; Nagle would only add latency.  Fails
	 * harmlessly on Unix sockets. */
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));

	job = malloc(sizeof(*job));
	if (job) {
		*job = (struct handshake_job){ .srv = srv, .fd = fd, .slot = slot };
		pthread_attr_init(&attr);
		pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
		/* Negotiation needs little stack; keep the footprint small. */
		pthread_attr_setstacksize(&attr, 256 << 10);
		int err = pthread_create(&thread, &attr, handshake_main, job);
		pthread_attr_destroy(&attr);
		if (!err)
			return;
		free(job);
	}
	vt_warn("cannot start a thread for a new connection");
	close(fd);
	pthread_mutex_lock(&srv->lock);
	srv->handshake_fds[slot] = -1;
	srv->nconns--;
	srv->nhandshakes--;
	pthread_cond_broadcast(&srv->changed);
	pthread_mutex_unlock(&srv->lock);
}

int nbd_server_add_client(struct nbd_server *srv, int fd)
{
	if (!srv->started || atomic_load(&srv->stopping)) {
		close(fd);
		return -ESHUTDOWN;
	}
	admit(srv, fd);
	return 0;
}

static void *acceptor_main(void *arg)
{
	struct nbd_server *srv = arg;
	struct pollfd *pfd = calloc(srv->nlisten + 1, sizeof(*pfd));

	if (!pfd) {
		vt_error("acceptor: out of memory");
		return NULL;
	}
	for (size_t i = 0; i < srv->nlisten; i++)
		pfd[i] = (struct pollfd){ .fd = srv->listen_fds[i], .events = POLLIN };
	pfd[srv->nlisten] = (struct pollfd){ .fd = srv->stop_fd, .events = POLLIN };

	while (!atomic_load(&srv->stopping)) {
		int n = poll(pfd, srv->nlisten + 1, -1);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			vt_error("acceptor: poll: %s", strerror(errno));
			break;
		}
		for (size_t i = 0; i < srv->nlisten; i++) {
			if (!(pfd[i].revents & POLLIN))
				continue;
			int fd = accept4(pfd[i].fd, NULL, NULL, SOCK_CLOEXEC);
			if (fd < 0) {
				if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
					vt_warn("accept: %s", strerror(errno));
				if (errno == EMFILE || errno == ENFILE)
					poll(NULL, 0, 100); /* let connections close */
				continue;
			}
			admit(srv, fd);
		}
	}
	free(pfd);
	return NULL;
}

/* ---- lifecycle ---- */

struct worker_boot {
	struct nbd_worker *w;
	pthread_mutex_t lock;
	pthread_cond_t ready;
	bool done;
};

static void *worker_boot_main(void *arg)
{
	struct worker_boot *boot = arg;
	struct nbd_worker *w = boot->w;

	/* The engine is created here: an io_uring ring is tied to the
	 * thread that submits to it. */
	w->start_status = vt_loop_init(&w->loop, w->srv->cfg.backend, 256);
	pthread_mutex_lock(&boot->lock);
	boot->done = true;
	pthread_cond_signal(&boot->ready);
	pthread_mutex_unlock(&boot->lock);
	if (w->start_status)
		return NULL;
	/* The engine outlives this thread: stop_workers() may still be
	 * waking it, and destroys it after the join. */
	return nbd_worker_main(w);
}

static int start_worker(struct nbd_worker *w)
{
	struct worker_boot boot = { .w = w };
	int err;

	pthread_mutex_init(&boot.lock, NULL);
	pthread_cond_init(&boot.ready, NULL);
	err = -pthread_create(&w->thread, NULL, worker_boot_main, &boot);
	if (!err) {
		pthread_mutex_lock(&boot.lock);
		while (!boot.done)
			pthread_cond_wait(&boot.ready, &boot.lock);
		pthread_mutex_unlock(&boot.lock);
		err = w->start_status;
		if (err)
			pthread_join(w->thread, NULL);
	}
	pthread_cond_destroy(&boot.ready);
	pthread_mutex_destroy(&boot.lock);
	return err;
}

static void stop_workers(struct nbd_server *srv, unsigned n)
{
	for (unsigned i = 0; i < n; i++) {
		atomic_store(&srv->workers[i].draining, true);
		vt_loop_wake(&srv->workers[i].loop);
	}
	for (unsigned i = 0; i < n; i++) {
		pthread_join(srv->workers[i].thread, NULL);
		/* Safe against other threads still waking it (a late intent
		 * commit): the loop frees its engine under its own lock. */
		vt_loop_destroy(&srv->workers[i].loop);
		pthread_mutex_destroy(&srv->workers[i].lock);
	}
}

int nbd_server_start(struct nbd_server *srv)
{
	int err;

	if (srv->nlisten == 0)
		return -EDESTADDRREQ;
	srv->workers = calloc(srv->cfg.workers, sizeof(*srv->workers));
	if (!srv->workers)
		return -ENOMEM;
	for (unsigned i = 0; i < srv->cfg.workers; i++) {
		struct nbd_worker *w = &srv->workers[i];
		w->srv = srv;
		pthread_mutex_init(&w->lock, NULL);
		err = start_worker(w);
		if (err) {
			pthread_mutex_destroy(&w->lock);
			stop_workers(srv, i);
			return err;
		}
		srv->nworkers = i + 1;
	}
	srv->engine_name = vio_engine_name(srv->workers[0].loop.eng);
	err = -pthread_create(&srv->acceptor, NULL, acceptor_main, srv);
	if (err) {
		stop_workers(srv, srv->nworkers);
		return err;
	}
	srv->started = true;
	return 0;
}

void nbd_server_stop(struct nbd_server *srv)
{
	uint64_t one = 1;

	if (!srv->started)
		return;
	srv->started = false;
	atomic_store(&srv->stopping, true);
	if (write(srv->stop_fd, &one, sizeof(one)) < 0) {
		/* cannot fail on a fresh eventfd */
	}
	pthread_join(srv->acceptor, NULL);
	for (size_t i = 0; i < srv->nlisten; i++) {
		close(srv->listen_fds[i]);
		srv->listen_fds[i] = -1;
	}

	/* Cut negotiations short and wait for their threads to finish: none
	 * may touch the server once stop returns (the CVE-2024-7409 class). */
	pthread_mutex_lock(&srv->lock);
	for (unsigned i = 0; i < srv->cfg.max_connections; i++)
		if (srv->handshake_fds[i] >= 0)
			shutdown(srv->handshake_fds[i], SHUT_RDWR);
	while (srv->nhandshakes)
		pthread_cond_wait(&srv->changed, &srv->lock);
	pthread_mutex_unlock(&srv->lock);

	stop_workers(srv, srv->nworkers);
}
