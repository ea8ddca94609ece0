/*
 * io_uring backend.  One ring per engine, created on the thread that runs
 * it so the kernel may apply single-issuer and deferred task-run
 * optimisations: completions are then reaped only inside our own
 * io_uring_enter, which also submits, so one loop turn costs one syscall.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <liburing.h>

#include "vio_engine.h"
#include "vio_pool.h"

#define REAP_BATCH 256

struct uring_engine {
	struct vio_engine base;
	struct io_uring ring;
	int wake_fd;
	uint64_t wake_value;
	struct iovec wake_iov;
	struct vio_req wake_req;	/* a read on wake_fd, always pending */
	struct vio_pool *helper;	/* started on first blocking op */
	struct vio_req *backlog_head, *backlog_tail; /* waiting for SQ room */
	struct vio_req *ready_head, *ready_tail;	/* finished, callback due */
};

#define to_uring(e) ((struct uring_engine *)(e))

int vio_uring_probe(void)
{
	struct io_uring ring;
	struct io_uring_probe *probe;
	static const int needed[] = {
		IORING_OP_READV, IORING_OP_WRITEV, IORING_OP_READ, IORING_OP_WRITE,
		IORING_OP_FSYNC, IORING_OP_FALLOCATE, IORING_OP_ASYNC_CANCEL,
	};
	int ret = io_uring_queue_init(4, &ring, 0);

	if (ret < 0)
		return ret;
	probe = io_uring_get_probe_ring(&ring);
	if (!probe) {
		ret = -ENOSYS;
	} else {
		for (size_t i = 0; i < sizeof(needed) / sizeof(needed[0]); i++)
			if (!io_uring_opcode_supported(probe, needed[i]))
				ret = -ENOSYS;
		io_uring_free_probe(probe);
	}
	io_uring_queue_exit(&ring);
	return ret;
}

static void prep(struct io_uring_sqe *sqe, struct vio_req *req)
{
	uint64_t off = req->off + req->progress;

	switch ((enum vio_op)req->op) {
	case VIO_READ:
		if (req->iovcnt == 1)
			io_uring_prep_read(sqe, req->fd, req->iov[0].iov_base,
					   (unsigned)req->iov[0].iov_len, off);
		else
			io_uring_prep_readv(sqe, req->fd, req->iov, req->iovcnt, off);
		break;
	case VIO_WRITE:
		if (req->iovcnt == 1)
			io_uring_prep_write(sqe, req->fd, req->iov[0].iov_base,
					    (unsigned)req->iov[0].iov_len, off);
		else
			io_uring_prep_writev(sqe, req->fd, req->iov, req->iovcnt, off);
		if (req->flags & VIO_F_DSYNC)
			sqe->rw_flags = RWF_DSYNC;
		break;
	case VIO_FDATASYNC:
		io_uring_prep_fsync(sqe, req->fd, IORING_FSYNC_DATASYNC);
		break;
	case VIO_FALLOCATE:
		io_uring_prep_fallocate(sqe, req->fd, req->mode, req->off, req->len);
		break;
	case VIO_STREAM_READ:
		/* Offset 0: sockets reject anything else with ESPIPE. */
		io_uring_prep_readv(sqe, req->stream->fd, req->iov, req->iovcnt, 0);
		break;
	case VIO_STREAM_WRITE:
		if (req->stream->socket) {
			/* One write is pending per stream, so its msghdr can
			 * live in the stream until the completion. */
			struct msghdr *msg = &req->stream->msg;
			*msg = (struct msghdr){ .msg_iov = req->iov, .msg_iovlen = req->iovcnt };
			io_uring_prep_sendmsg(sqe, req->stream->fd, msg, MSG_NOSIGNAL);
		} else {
			io_uring_prep_writev(sqe, req->stream->fd, req->iov, req->iovcnt, 0);
		}
		break;
	default:
		/* Blocking ops never reach the ring; see uring_submit(). */
		io_uring_prep_nop(sqe);
		break;
	}
	io_uring_sqe_set_data(sqe, req);
}

static bool queue_sqe(struct uring_engine *u, struct vio_req *req)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);

	if (!sqe) {
		/* Make room by handing the queued batch to the kernel now. */
		io_uring_submit(&u->ring);
		sqe = io_uring_get_sqe(&u->ring);
		if (!sqe)
			return false;
	}
	prep(sqe, req);
	return true;
}

static void backlog_push(struct uring_engine *u, struct vio_req *req)
{
	req->next = NULL;
	if (u->backlog_tail)
		u->backlog_tail->next = req;
	else
		u->backlog_head = req;
	u->backlog_tail = req;
}

static void ready_push(struct uring_engine *u, struct vio_req *req)
{
	req->next = NULL;
	if (u->ready_tail)
		u->ready_tail->next = req;
	else
		u->ready_head = req;
	u->ready_tail = req;
}

static void uring_submit(struct vio_engine *eng, struct vio_req *req)
{
	struct uring_engine *u = to_uring(eng);

	if (req->flags & VIO_F_INLINE) {
		/* Completes on the next vio_run(), never inside submit. */
		vio_exec_sync(req);
		ready_push(u, req);
		return;
	}
	if (vio_op_blocks((enum vio_op)req->op)) {
		if (!u->helper) {
			int err = vio_pool_create(1, u->wake_fd, &u->helper);
			if (err) {
				/* Without a helper, run it here: slow but correct. */
				vio_exec_sync(req);
				ready_push(u, req);
				return;
			}
		}
		vio_pool_submit(u->helper, req);
		return;
	}
	if (req->op == VIO_STREAM_READ)
		req->stream->pending_read = req;
	else if (req->op == VIO_STREAM_WRITE)
		req->stream->pending_write = req;
	if (u->backlog_head || !queue_sqe(u, req))
		backlog_push(u, req);
}

static void arm_wake(struct uring_engine *u)
{
	u->wake_iov.iov_base = &u->wake_value;
	u->wake_iov.iov_len = sizeof(u->wake_value);
	memset(&u->wake_req, 0, sizeof(u->wake_req));
	u->wake_req.op = VIO_READ;
	u->wake_req.fd = u->wake_fd;
	u->wake_req.iov = &u->wake_iov;
	u->wake_req.iovcnt = 1;
	if (!queue_sqe(u, &u->wake_req))
		backlog_push(u, &u->wake_req);
}

/* Returns true when req is finished and its callback should run. */
static bool complete_one(struct uring_engine *u, struct vio_req *req, int res)
{
	enum vio_op op = (enum vio_op)req->op;

	if (op == VIO_STREAM_READ || op == VIO_STREAM_WRITE) {
		if (op == VIO_STREAM_READ)
			req->stream->pending_read = NULL;
		else
			req->stream->pending_write = NULL;
		req->res = res;
		return true;
	}
	if (op != VIO_READ && op != VIO_WRITE) {
		req->res = res;
		return true;
	}
	if (res == -EAGAIN || res == -EINTR) {
		backlog_push(u, req);
		return false;
	}
	if (res < 0) {
		req->res = res;
		return true;
	}
	if (res == 0) {
		/* End of file on a read; a write that makes no progress fails. */
		req->res = op == VIO_READ ? (int64_t)req->progress : -EIO;
		return true;
	}
	req->progress += (uint64_t)res;
	req->iovcnt = vio_iov_advance(&req->iov, req->iovcnt, (uint64_t)res);
	if (req->iovcnt == 0) {
		req->res = (int64_t)req->progress;
		return true;
	}
	backlog_push(u, req); /* short transfer: go again for the rest */
	return false;
}

static int dispatch_helper(struct uring_engine *u)
{
	int n = 0;
	struct vio_req *req = u->helper ? vio_pool_reap(u->helper) : NULL;

	while (req) {
		struct vio_req *next = req->next;
		req->done(req);
		req = next;
		n++;
	}
	return n;
}

static int uring_run(struct vio_engine *eng, int timeout_ms)
{
	struct uring_engine *u = to_uring(eng);
	struct io_uring_cqe *cqe;
	int ret, ran = 0;

	while (u->ready_head) {
		struct vio_req *req = u->ready_head;
		u->ready_head = req->next;
		if (!u->ready_head)
			u->ready_tail = NULL;
		req->done(req);
		ran++;
	}
	/* Requests that found the SQ full, or must go again, go first. */
	while (u->backlog_head) {
		struct vio_req *req = u->backlog_head;
		struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);
		if (!sqe)
			break;
		u->backlog_head = req->next;
		if (!u->backlog_head)
			u->backlog_tail = NULL;
		prep(sqe, req);
	}

	if (ran || u->backlog_head) {
		timeout_ms = 0;
	}
	if (timeout_ms < 0) {
		ret = io_uring_submit_and_wait(&u->ring, 1);
	} else {
		struct __kernel_timespec ts = {
			.tv_sec = timeout_ms / 1000,
			.tv_nsec = (long long)(timeout_ms % 1000) * 1000000,
		};
		ret = io_uring_submit_and_wait_timeout(&u->ring, &cqe, 1, &ts, NULL);
	}
	if (ret < 0 && ret != -ETIME && ret != -EINTR && ret != -EAGAIN &&
	    ret != -EBUSY)
		return ret;

	for (;;) {
		struct vio_req *batch[REAP_BATCH];
		int res[REAP_BATCH];
		unsigned head, n = 0;

		io_uring_for_each_cqe(&u->ring, head, cqe) {
			batch[n] = io_uring_cqe_get_data(cqe);
			res[n] = cqe->res;
			if (++n == REAP_BATCH)
				break;
		}
		io_uring_cq_advance(&u->ring, n);
		if (n == 0)
			break;
		for (unsigned i = 0; i < n; i++) {
			struct vio_req *req = batch[i];
			if (!req)
				continue; /* a cancel request's own completion */
			if (req == &u->wake_req) {
				arm_wake(u);
				ran += dispatch_helper(u);
				continue;
			}
			if (complete_one(u, req, res[i])) {
				req->done(req);
				ran++;
			}
		}
	}
	return ran;
}

static void uring_wake(struct vio_engine *eng)
{
	uint64_t one = 1;

	if (write(to_uring(eng)->wake_fd, &one, sizeof(one)) < 0) {
		/* counter saturated: a wake-up is already pending */
	}
}

static int uring_stream_attach(struct vio_engine *eng, struct vio_stream *s)
{
	return 0;
}

static void cancel_req(struct uring_engine *u, struct vio_req *req)
{
	struct io_uring_sqe *sqe;

	if (!req)
		return;
	sqe = io_uring_get_sqe(&u->ring);
	if (!sqe) {
		io_uring_submit(&u->ring);
		sqe = io_uring_get_sqe(&u->ring);
	}
	if (!sqe)
		return; /* the caller also shuts the fd down; that completes it */
	io_uring_prep_cancel(sqe, req, 0);
	io_uring_sqe_set_data(sqe, NULL);
}

static void uring_stream_cancel(struct vio_engine *eng, struct vio_stream *s)
{
	cancel_req(to_uring(eng), s->pending_read);
	cancel_req(to_uring(eng), s->pending_write);
}

static void uring_stream_detach(struct vio_engine *eng, struct vio_stream *s)
{
}

static void uring_destroy(struct vio_engine *eng)
{
	struct uring_engine *u = to_uring(eng);

	vio_pool_destroy(u->helper);
	io_uring_queue_exit(&u->ring);
	close(u->wake_fd);
	free(u);
}

static const struct vio_engine_ops uring_ops = {
	.name = "io_uring",
	.submit = uring_submit,
	.run = uring_run,
	.wake = uring_wake,
	.stream_attach = uring_stream_attach,
	.stream_cancel = uring_stream_cancel,
	.stream_detach = uring_stream_detach,
	.destroy = uring_destroy,
};

int vio_uring_create(unsigned queue_depth, struct vio_engine **out)
{
	/* Strongest first; older kernels reject flags they do not know. */
	static const unsigned flag_sets[] = {
		IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
		IORING_SETUP_COOP_TASKRUN,
		0,
	};
	struct uring_engine *u = calloc(1, sizeof(*u));
	int ret = -EINVAL;

	if (!u)
		return -ENOMEM;
	u->base.ops = &uring_ops;
	for (size_t i = 0; i < sizeof(flag_sets) / sizeof(flag_sets[0]); i++) {
		struct io_uring_params p = { .flags = flag_sets[i] | IORING_SETUP_CQSIZE,
					     .cq_entries = queue_depth * 4 };
		ret = io_uring_queue_init_params(queue_depth, &u->ring, &p);
		if (ret == 0)
			break;
	}
	if (ret < 0) {
		free(u);
		return ret;
	}
	u->wake_fd = eventfd(0, EFD_CLOEXEC);
	if (u->wake_fd < 0) {
		ret = -errno;
		io_uring_queue_exit(&u->ring);
		free(u);
		return ret;
	}
	arm_wake(u);
	*out = &u->base;
	return 0;
}
