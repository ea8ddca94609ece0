#include "vio_fsops.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

#include "vio_engine.h"

struct fsops_engine {
	struct vio_engine base;		/* first */
	const struct vt_fsops *ops;
	struct vio_req *head, *tail;	/* done, callbacks not yet run */
	pthread_mutex_t lock;		/* guards woken against wake() */
	pthread_cond_t cond;
	bool woken;
};

static struct fsops_engine *of(struct vio_engine *eng)
{
	return (struct fsops_engine *)eng;
}

static int64_t run_iov(const struct vt_fsops *ops, struct vio_req *req)
{
	uint64_t done = 0;

	for (unsigned i = 0; i < req->iovcnt; i++) {
		const struct iovec *v = &req->iov[i];
		if (req->op == VIO_READ) {
			ssize_t n = ops->pread(ops, req->fd, v->iov_base, v->iov_len, req->off + done);
			if (n < 0)
				return n;
			done += (uint64_t)n;
			if ((size_t)n < v->iov_len)
				break;	/* the end of the file */
		} else {
			int err = ops->pwrite(ops, req->fd, v->iov_base, v->iov_len, req->off + done);
			if (err)
				return err;
			done += v->iov_len;
		}
	}
	if (req->op == VIO_WRITE && (req->flags & VIO_F_DSYNC)) {
		int err = ops->fdatasync(ops, req->fd);
		if (err)
			return err;
	}
	return (int64_t)done;
}

static void fsops_submit(struct vio_engine *eng, struct vio_req *req)
{
	struct fsops_engine *e = of(eng);

	switch (req->op) {
	case VIO_READ:
	case VIO_WRITE:
		req->res = run_iov(e->ops, req);
		break;
	case VIO_FDATASYNC:
		req->res = e->ops->fdatasync(e->ops, req->fd);
		break;
	case VIO_FALLOCATE:
		vio_exec_sync(req);
		break;
	default:
		req->res = -EOPNOTSUPP;
		break;
	}
	req->next = NULL;
	if (e->tail)
		e->tail->next = req;
	else
		e->head = req;
	e->tail = req;
}

static int fsops_run(struct vio_engine *eng, int timeout_ms)
{
	struct fsops_engine *e = of(eng);
	int n = 0;

	if (!e->head && timeout_ms != 0) {
		/* Nothing done: wait for a wake-up (a parked op handed back). */
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		long ms = timeout_ms < 0 ? 1000 : timeout_ms;
		ts.tv_sec += ms / 1000;
		ts.tv_nsec += (ms % 1000) * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		pthread_mutex_lock(&e->lock);
		while (!e->woken)
			if (pthread_cond_timedwait(&e->cond, &e->lock, &ts))
				break;
		e->woken = false;
		pthread_mutex_unlock(&e->lock);
	}
	/* Callbacks may submit more: those wait for the next call. */
	struct vio_req *req = e->head;
	e->head = e->tail = NULL;
	while (req) {
		struct vio_req *next = req->next;
		req->done(req);
		n++;
		req = next;
	}
	return n;
}

static void fsops_wake(struct vio_engine *eng)
{
	struct fsops_engine *e = of(eng);

	pthread_mutex_lock(&e->lock);
	e->woken = true;
	pthread_cond_signal(&e->cond);
	pthread_mutex_unlock(&e->lock);
}

static int fsops_stream_attach(struct vio_engine *eng, struct vio_stream *s)
{
	return -EOPNOTSUPP;
}

static void fsops_stream_none(struct vio_engine *eng, struct vio_stream *s)
{
}

static void fsops_destroy(struct vio_engine *eng)
{
	struct fsops_engine *e = of(eng);

	pthread_cond_destroy(&e->cond);
	pthread_mutex_destroy(&e->lock);
	free(e);
}

static const struct vio_engine_ops fsops_engine_ops = {
	.name = "fsops",
	.submit = fsops_submit,
	.run = fsops_run,
	.wake = fsops_wake,
	.stream_attach = fsops_stream_attach,
	.stream_cancel = fsops_stream_none,
	.stream_detach = fsops_stream_none,
	.destroy = fsops_destroy,
};

int vio_fsops_create(const struct vt_fsops *ops, struct vio_engine **out)
{
	struct fsops_engine *e = calloc(1, sizeof(*e));

	if (!e)
		return -ENOMEM;
	e->base.ops = &fsops_engine_ops;
	e->ops = ops;
	pthread_mutex_init(&e->lock, NULL);
	pthread_cond_init(&e->cond, NULL);
	*out = &e->base;
	return 0;
}
