#include "vio.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "vio_engine.h"

int vio_engine_create(enum vio_backend backend, unsigned queue_depth,
		      struct vio_engine **out)
{
	switch (backend) {
	case VIO_BACKEND_URING:
		return vio_uring_create(queue_depth, out);
	case VIO_BACKEND_THREADS:
		return vio_threads_create(queue_depth, out);
	case VIO_BACKEND_AUTO:
		if (vio_uring_probe() == 0 && vio_uring_create(queue_depth, out) == 0)
			return 0;
		return vio_threads_create(queue_depth, out);
	}
	return -EINVAL;
}

void vio_engine_destroy(struct vio_engine *eng)
{
	if (eng)
		eng->ops->destroy(eng);
}

const char *vio_engine_name(const struct vio_engine *eng)
{
	return eng->ops->name;
}

void vio_submit(struct vio_engine *eng, struct vio_req *req)
{
	req->progress = 0;
	req->next = NULL;
	eng->ops->submit(eng, req);
}

int vio_run(struct vio_engine *eng, int timeout_ms)
{
	return eng->ops->run(eng, timeout_ms);
}

void vio_wake(struct vio_engine *eng)
{
	eng->ops->wake(eng);
}

int vio_stream_attach(struct vio_engine *eng, struct vio_stream *s, int fd)
{
	int type;
	socklen_t len = sizeof(type);

	memset(s, 0, sizeof(*s));
	s->fd = fd;
	/* A peer that vanishes mid-reply must cost an EPIPE, never the
	 * process: writes to sockets carry MSG_NOSIGNAL, whatever the
	 * embedding program did with SIGPIPE. */
	s->socket = getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0;
	return eng->ops->stream_attach(eng, s);
}

void vio_stream_cancel(struct vio_engine *eng, struct vio_stream *s)
{
	eng->ops->stream_cancel(eng, s);
}

void vio_stream_detach(struct vio_engine *eng, struct vio_stream *s)
{
	eng->ops->stream_detach(eng, s);
}

uint64_t vio_iov_length(const struct iovec *iov, unsigned iovcnt)
{
	uint64_t len = 0;

	for (unsigned i = 0; i < iovcnt; i++)
		len += iov[i].iov_len;
	return len;
}

unsigned vio_iov_advance(struct iovec **iovp, unsigned iovcnt, uint64_t n)
{
	struct iovec *iov = *iovp;

	while (iovcnt && n >= iov->iov_len) {
		n -= iov->iov_len;
		iov++;
		iovcnt--;
	}
	if (iovcnt && n) {
		iov->iov_base = (char *)iov->iov_base + n;
		iov->iov_len -= n;
	}
	*iovp = iov;
	return iovcnt;
}

/* Sixteen 64 KiB runs of zeroes: 1 MiB per write without a 1 MiB buffer. */
static const char zero_block[64 << 10];

static int64_t write_zeroes_sync(int fd, uint64_t off, uint64_t len)
{
	struct iovec iov[16];

	while (len) {
		unsigned n = 0;
		uint64_t chunk = 0;
		for (; n < 16 && chunk < len; n++) {
			uint64_t piece = len - chunk < sizeof(zero_block) ?
					 len - chunk : sizeof(zero_block);
			iov[n].iov_base = (void *)zero_block;
			iov[n].iov_len = piece;
			chunk += piece;
		}
		ssize_t w = pwritev(fd, iov, (int)n, (off_t)off);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		off += (uint64_t)w;
		len -= (uint64_t)w;
	}
	return 0;
}

static int64_t rw_sync(struct vio_req *req, bool write)
{
	struct iovec *iov = req->iov;
	unsigned cnt = req->iovcnt;
	uint64_t done = 0;

	while (cnt) {
		ssize_t n;
		if (write)
			n = pwritev2(req->fd, iov, (int)cnt, (off_t)(req->off + done),
				     (req->flags & VIO_F_DSYNC) ? RWF_DSYNC : 0);
		else
			n = preadv(req->fd, iov, (int)cnt, (off_t)(req->off + done));
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0) {
			if (write)
				return -EIO;
			break; /* end of file */
		}
		done += (uint64_t)n;
		cnt = vio_iov_advance(&iov, cnt, (uint64_t)n);
	}
	return (int64_t)done;
}

int vio_exec_sync(struct vio_req *req)
{
	int64_t res;
	uint64_t range[2] = { req->off, req->len };

	switch ((enum vio_op)req->op) {
	case VIO_READ:
		res = rw_sync(req, false);
		break;
	case VIO_WRITE:
		res = rw_sync(req, true);
		break;
	case VIO_FDATASYNC:
		res = fdatasync(req->fd) < 0 ? -errno : 0;
		break;
	case VIO_FALLOCATE:
		res = fallocate(req->fd, req->mode, (off_t)req->off, (off_t)req->len) < 0 ?
		      -errno : 0;
		break;
	case VIO_BLKDISCARD:
		res = ioctl(req->fd, BLKDISCARD, range) < 0 ? -errno : 0;
		break;
	case VIO_BLKZEROOUT:
		res = ioctl(req->fd, BLKZEROOUT, range) < 0 ? -errno : 0;
		break;
	case VIO_WRITE_ZEROES:
		res = write_zeroes_sync(req->fd, req->off, req->len);
		break;
	case VIO_STREAM_READ:
		res = readv(req->stream->fd, req->iov, (int)req->iovcnt);
		res = res < 0 ? -errno : res;
		break;
	case VIO_STREAM_WRITE:
		if (req->stream->socket) {
			struct msghdr msg = { .msg_iov = req->iov, .msg_iovlen = req->iovcnt };
			res = sendmsg(req->stream->fd, &msg, MSG_NOSIGNAL);
		} else {
			res = writev(req->stream->fd, req->iov, (int)req->iovcnt);
		}
		res = res < 0 ? -errno : res;
		break;
	default:
		res = -EINVAL;
	}
	req->res = res;
	return res < 0 ? (int)res : 0;
}
