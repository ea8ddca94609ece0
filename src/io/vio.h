/*
 * vio: the asynchronous I/O engine that every data-path operation uses.
 *
 * An engine belongs to one thread (its event loop).  The owner fills a
 * struct vio_req, calls vio_submit(), and later vio_run() calls req->done
 * on that same thread.  Requests live in memory the caller owns; the
 * engine allocates nothing per request.
 *
 * Two backends:
 *   - uring:   io_uring for every operation, one io_uring_enter per loop
 *              turn for both submissions and completions.  The few
 *              operations io_uring cannot express (block-device ioctls,
 *              writing literal zeroes) go to a lazily started helper
 *              thread.
 *   - threads: the fallback where io_uring is unavailable: a pool of
 *              threads runs positional I/O, and stream fds are driven
 *              with epoll from the owner thread.
 *
 * Positional reads and writes complete only once the whole length is
 * done (the engine resubmits short transfers; it may advance req->iov),
 * or with the first error; a read stops early only at end of file.
 * Stream operations complete on the first partial transfer, like
 * read(2) and write(2) on a socket; a stream read of 0 means end of
 * stream.  req->res is a byte count or a negative errno.
 *
 * vio_wake() is the only call that may come from another thread.
 */
#ifndef VOLTRACK_VIO_H
#define VOLTRACK_VIO_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/uio.h>

enum vio_op {
	VIO_READ,		/* preadv(iov) at off */
	VIO_WRITE,		/* pwritev(iov) at off; VIO_F_DSYNC for FUA */
	VIO_FDATASYNC,
	VIO_FALLOCATE,		/* fallocate(mode, off, len) */
	VIO_BLKDISCARD,		/* ioctl(BLKDISCARD, off, len) */
	VIO_BLKZEROOUT,		/* ioctl(BLKZEROOUT, off, len) */
	VIO_WRITE_ZEROES,	/* write literal zeroes over off, len */
	VIO_STREAM_READ,	/* readv on an attached stream */
	VIO_STREAM_WRITE,	/* writev on an attached stream; never raises SIGPIPE */
};

#define VIO_F_DSYNC 1u		/* write through to stable storage */
#define VIO_F_INLINE 2u		/* cheap enough to run on the submitting thread */

struct vio_stream;

struct vio_req {
	uint8_t op;		/* enum vio_op */
	uint8_t flags;		/* VIO_F_* */
	int fd;			/* positional ops */
	struct vio_stream *stream; /* stream ops */
	struct iovec *iov;
	unsigned iovcnt;
	int mode;		/* VIO_FALLOCATE */
	uint64_t off;
	uint64_t len;		/* non-iov ops */
	int64_t res;		/* bytes transferred, or -errno */
	void (*done)(struct vio_req *req);
	/* engine-private */
	uint64_t progress;
	struct vio_req *next;
};

/* A stream fd (socket, pipe) attached to an engine; embed it anywhere. */
struct vio_stream {
	int fd;
	bool socket;			/* writes go through sendmsg(MSG_NOSIGNAL) */
	struct msghdr msg;		/* the pending write's, for sendmsg */
	struct vio_req *pending_read;	/* engine-private */
	struct vio_req *pending_write;
	bool armed;
};

enum vio_backend {
	VIO_BACKEND_AUTO,
	VIO_BACKEND_URING,
	VIO_BACKEND_THREADS,
};

struct vio_engine;

/*
 * 0 when io_uring can be used here, else the reason as -errno (ENOSYS for
 * an old kernel, EPERM when kernel.io_uring_disabled forbids it).
 */
int vio_uring_probe(void);

/*
 * Create an engine on the thread that will run it.  AUTO picks io_uring
 * when vio_uring_probe() allows it.  queue_depth bounds the submissions
 * one loop turn can batch; more are still accepted.
 */
int vio_engine_create(enum vio_backend backend, unsigned queue_depth,
		      struct vio_engine **out);
void vio_engine_destroy(struct vio_engine *eng);
const char *vio_engine_name(const struct vio_engine *eng);

void vio_submit(struct vio_engine *eng, struct vio_req *req);

/*
 * Submit what is queued, wait up to timeout_ms (-1: forever) for at least
 * one completion or a wake-up, and call the done callbacks of everything
 * that completed.  Returns the number of callbacks run, or -errno.
 */
int vio_run(struct vio_engine *eng, int timeout_ms);

/* Make a concurrent or future vio_run() return.  Any thread. */
void vio_wake(struct vio_engine *eng);

int vio_stream_attach(struct vio_engine *eng, struct vio_stream *s, int fd);
/* Ask pending stream operations to complete now (with -ECANCELED). */
void vio_stream_cancel(struct vio_engine *eng, struct vio_stream *s);
/* Only once no stream operation is pending. */
void vio_stream_detach(struct vio_engine *eng, struct vio_stream *s);

/*
 * Run one request synchronously on the calling thread: the reference
 * semantics both backends follow.  Sets req->res and returns it as an
 * int-sized status (0 or -errno).  Does not call req->done.
 */
int vio_exec_sync(struct vio_req *req);

/* Length of an iovec array. */
uint64_t vio_iov_length(const struct iovec *iov, unsigned iovcnt);

/* Drop the first n bytes of an iovec array in place; returns the new count. */
unsigned vio_iov_advance(struct iovec **iov, unsigned iovcnt, uint64_t n);

#endif
