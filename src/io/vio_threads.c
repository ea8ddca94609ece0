/*
 * Fallback backend for kernels or sandboxes without io_uring.
 *
 * Positional operations run on a pool of threads.  Stream operations
 * never occupy a thread: the owner thread tries them non-blocking and,
 * on EAGAIN, parks them until epoll (edge-triggered) reports readiness.
 * Pool completions come back through an eventfd in the same epoll set.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "vio_engine.h"
#include "vio_pool.h"

#define POOL_THREADS 8
#define EVENT_BATCH 64

struct threads_engine {
	struct vio_engine base;
	int epfd;
	int wake_fd;
	struct vio_pool *pool;
	struct vio_req *try_head, *try_tail;	/* stream ops to attempt */
	struct vio_req *ready_head, *ready_tail; /* finished, callback due */
};

#define to_threads(e) ((struct threads_engine *)(e))

static void list_push(struct vio_req **head, struct vio_req **tail, struct vio_req *req)
{
	req->next = NULL;
	if (*tail)
		(*tail)->next = req;
	else
		*head = req;
	*tail = req;
}

static void threads_submit(struct vio_engine *eng, struct vio_req *req)
{
	struct threads_engine *t = to_threads(eng);

	if (req->op == VIO_STREAM_READ || req->op == VIO_STREAM_WRITE) {
		list_push(&t->try_head, &t->try_tail, req);
	} else if (req->flags & VIO_F_INLINE) {
		vio_exec_sync(req);
		list_push(&t->ready_head, &t->ready_tail, req);
	} else {
		vio_pool_submit(t->pool, req);
	}
}

/* Try a stream op now; park it on EAGAIN, else mark it finished. */
static void attempt(struct threads_engine *t, struct vio_req *req)
{
	struct vio_stream *s = req->stream;
	bool is_read = req->op == VIO_STREAM_READ;

	vio_exec_sync(req);
	if (req->res == -EAGAIN) {
		if (is_read)
			s->pending_read = req;
		else
			s->pending_write = req;
		return;
	}
	if (is_read)
		s->pending_read = NULL;
	else
		s->pending_write = NULL;
	list_push(&t->ready_head, &t->ready_tail, req);
}

static int threads_run(struct vio_engine *eng, int timeout_ms)
{
	struct threads_engine *t = to_threads(eng);
	struct epoll_event ev[EVENT_BATCH];
	int n, ran = 0;

	while (t->try_head) {
		struct vio_req *req = t->try_head;
		t->try_head = req->next;
		if (!t->try_head)
			t->try_tail = NULL;
		attempt(t, req);
	}
	n = epoll_wait(t->epfd, ev, EVENT_BATCH, t->ready_head ? 0 : timeout_ms);
	if (n < 0 && errno != EINTR)
		return -errno;
	for (int i = 0; i < n; i++) {
		struct vio_stream *s = ev[i].data.ptr;
		if (!s) {
			uint64_t v;
			if (read(t->wake_fd, &v, sizeof(v)) < 0) {
				/* EAGAIN: another event already drained it */
			}
			for (struct vio_req *req = vio_pool_reap(t->pool), *next; req; req = next) {
				next = req->next;
				list_push(&t->ready_head, &t->ready_tail, req);
			}
			continue;
		}
		uint32_t e = ev[i].events;
		if ((e & (EPOLLIN | EPOLLERR | EPOLLHUP | EPOLLRDHUP)) && s->pending_read)
			attempt(t, s->pending_read);
		if ((e & (EPOLLOUT | EPOLLERR | EPOLLHUP)) && s->pending_write)
			attempt(t, s->pending_write);
	}
	while (t->ready_head) {
		struct vio_req *req = t->ready_head;
		t->ready_head = req->next;
		if (!t->ready_head)
			t->ready_tail = NULL;
		req->done(req);
		ran++;
	}
	return ran;
}

static void threads_wake(struct vio_engine *eng)
{
	uint64_t one = 1;

	if (write(to_threads(eng)->wake_fd, &one, sizeof(one)) < 0) {
		/* counter saturated: a wake-up is already pending */
	}
}

static int threads_stream_attach(struct vio_engine *eng, struct vio_stream *s)
{
	struct epoll_event ev = {
		.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
		.data.ptr = s,
	};
	int flags = fcntl(s->fd, F_GETFL);

	if (flags < 0 || fcntl(s->fd, F_SETFL, flags | O_NONBLOCK) < 0)
		return -errno;
	if (epoll_ctl(to_threads(eng)->epfd, EPOLL_CTL_ADD, s->fd, &ev) < 0)
		return -errno;
	s->armed = true;
	return 0;
}

static void threads_stream_cancel(struct vio_engine *eng, struct vio_stream *s)
{
	struct threads_engine *t = to_threads(eng);

	for (struct vio_req **slot = &t->try_head, *req; (req = *slot);) {
		if (req->stream == s) {
			*slot = req->next;
			req->res = -ECANCELED;
			list_push(&t->ready_head, &t->ready_tail, req);
		} else {
			slot = &req->next;
		}
	}
	t->try_tail = NULL;
	for (struct vio_req *req = t->try_head; req; req = req->next)
		t->try_tail = req;
	if (s->pending_read) {
		s->pending_read->res = -ECANCELED;
		list_push(&t->ready_head, &t->ready_tail, s->pending_read);
		s->pending_read = NULL;
	}
	if (s->pending_write) {
		s->pending_write->res = -ECANCELED;
		list_push(&t->ready_head, &t->ready_tail, s->pending_write);
		s->pending_write = NULL;
	}
}

static void threads_stream_detach(struct vio_engine *eng, struct vio_stream *s)
{
	if (s->armed)
		epoll_ctl(to_threads(eng)->epfd, EPOLL_CTL_DEL, s->fd, NULL);
	s->armed = false;
}

static void threads_destroy(struct vio_engine *eng)
{
	struct threads_engine *t = to_threads(eng);

	vio_pool_destroy(t->pool);
	close(t->epfd);
	close(t->wake_fd);
	free(t);
}

static const struct vio_engine_ops threads_ops = {
	.name = "threads",
	.submit = threads_submit,
	.run = threads_run,
	.wake = threads_wake,
	.stream_attach = threads_stream_attach,
	.stream_cancel = threads_stream_cancel,
	.stream_detach = threads_stream_detach,
	.destroy = threads_destroy,
};

int vio_threads_create(unsigned queue_depth, struct vio_engine **out)
{
	struct threads_engine *t = calloc(1, sizeof(*t));
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = NULL };
	int err;

	if (!t)
		return -ENOMEM;
	t->base.ops = &threads_ops;
	t->epfd = epoll_create1(EPOLL_CLOEXEC);
	t->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (t->epfd < 0 || t->wake_fd < 0 ||
	    epoll_ctl(t->epfd, EPOLL_CTL_ADD, t->wake_fd, &ev) < 0) {
		err = -errno;
		goto fail;
	}
	err = vio_pool_create(POOL_THREADS, t->wake_fd, &t->pool);
	if (err)
		goto fail;
	*out = &t->base;
	return 0;
fail:
	if (t->epfd >= 0)
		close(t->epfd);
	if (t->wake_fd >= 0)
		close(t->wake_fd);
	free(t);
	return err;
}
