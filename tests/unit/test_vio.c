/*
 * Both vio backends against the same expectations, checked with plain
 * pread(2) and a reference buffer rather than through vio itself.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>
#include <linux/falloc.h>

#include "vio.h"

#define FILE_SIZE (4u << 20)
#define NREQ 64
#define REQ_SIZE 16384

struct fixture {
	enum vio_backend backend;
	struct vio_engine *eng;
	int fd;
	char path[64];
	int completed;
};

/* A request that bumps a counter when it completes. */
struct tracked {
	struct vio_req req;
	struct iovec iov;
	int *counter;
};

static void tracked_done(struct vio_req *req)
{
	struct tracked *t = (struct tracked *)req;
	(*t->counter)++;
}

static void run_until(struct fixture *f, int target)
{
	for (int turns = 0; f->completed < target; turns++) {
		assert_true(turns < 100000);
		int n = vio_run(f->eng, 1000);
		assert_true(n >= 0);
	}
}

static int setup(void **state, enum vio_backend backend)
{
	struct fixture *f = calloc(1, sizeof(*f));
	f->backend = backend;
	strcpy(f->path, "/tmp/vio-test-XXXXXX");
	f->fd = mkstemp(f->path);
	if (f->fd < 0 || ftruncate(f->fd, FILE_SIZE) < 0)
		return -1;
	if (vio_engine_create(backend, 64, &f->eng))
		return -1;
	*state = f;
	return 0;
}

static int setup_uring(void **state) { return setup(state, VIO_BACKEND_URING); }
static int setup_threads(void **state) { return setup(state, VIO_BACKEND_THREADS); }

static int teardown(void **state)
{
	struct fixture *f = *state;
	vio_engine_destroy(f->eng);
	close(f->fd);
	unlink(f->path);
	free(f);
	return 0;
}

static void test_concurrent_writes_then_reads(void **state)
{
	struct fixture *f = *state;
	static struct tracked reqs[NREQ];
	uint8_t *ref = calloc(1, FILE_SIZE);
	uint8_t *bufs = malloc((size_t)NREQ * REQ_SIZE);
	uint8_t *check = malloc(FILE_SIZE);

	srand(7);
	/* Non-overlapping random slots, so completion order cannot matter. */
	for (int i = 0; i < NREQ; i++) {
		uint8_t *b = bufs + (size_t)i * REQ_SIZE;
		uint64_t off = (uint64_t)i * (FILE_SIZE / NREQ) + (uint64_t)(rand() % 4096);
		for (int k = 0; k < REQ_SIZE; k++)
			b[k] = (uint8_t)rand();
		memcpy(ref + off, b, REQ_SIZE);
		reqs[i] = (struct tracked){ .counter = &f->completed };
		reqs[i].iov = (struct iovec){ b, REQ_SIZE };
		reqs[i].req = (struct vio_req){ .op = VIO_WRITE, .fd = f->fd, .iov = &reqs[i].iov,
						 .iovcnt = 1, .off = off, .done = tracked_done };
		if (i % 3 == 0)
			reqs[i].req.flags = VIO_F_DSYNC;
		vio_submit(f->eng, &reqs[i].req);
	}
	run_until(f, NREQ);
	for (int i = 0; i < NREQ; i++)
		assert_int_equal(reqs[i].req.res, REQ_SIZE);
	assert_int_equal(pread(f->fd, check, FILE_SIZE, 0), FILE_SIZE);
	assert_memory_equal(check, ref, FILE_SIZE);

	/* Read back through the engine, into cleared buffers. */
	memset(bufs, 0, (size_t)NREQ * REQ_SIZE);
	f->completed = 0;
	for (int i = 0; i < NREQ; i++) {
		reqs[i].req.op = VIO_READ;
		reqs[i].req.flags = 0;
		reqs[i].iov = (struct iovec){ bufs + (size_t)i * REQ_SIZE, REQ_SIZE };
		reqs[i].req.iov = &reqs[i].iov;
		reqs[i].req.iovcnt = 1;
		vio_submit(f->eng, &reqs[i].req);
	}
	run_until(f, NREQ);
	for (int i = 0; i < NREQ; i++) {
		assert_int_equal(reqs[i].req.res, REQ_SIZE);
		assert_memory_equal(bufs + (size_t)i * REQ_SIZE, ref + reqs[i].req.off, REQ_SIZE);
	}
	free(ref);
	free(bufs);
	free(check);
}

static struct tracked one(struct fixture *f, enum vio_op op, uint64_t off, uint64_t len)
{
	return (struct tracked){ .counter = &f->completed,
				 .req = { .op = (uint8_t)op, .fd = f->fd, .off = off, .len = len,
					  .done = tracked_done } };
}

static void submit_wait(struct fixture *f, struct tracked *t)
{
	f->completed = 0;
	vio_submit(f->eng, &t->req);
	run_until(f, 1);
}

static void test_read_at_end_of_file(void **state)
{
	struct fixture *f = *state;
	uint8_t buf[8192];
	struct tracked t = one(f, VIO_READ, FILE_SIZE - 4096, 0);

	t.iov = (struct iovec){ buf, sizeof(buf) };
	t.req.iov = &t.iov;
	t.req.iovcnt = 1;
	submit_wait(f, &t);
	assert_int_equal(t.req.res, 4096);
}

static void fill(int fd, uint64_t off, size_t len, uint8_t v)
{
	uint8_t *b = malloc(len);
	memset(b, v, len);
	assert_int_equal(pwrite(fd, b, len, (off_t)off), (ssize_t)len);
	free(b);
}

static void assert_zero(int fd, uint64_t off, size_t len)
{
	uint8_t *b = malloc(len), *z = calloc(1, len);
	assert_int_equal(pread(fd, b, len, (off_t)off), (ssize_t)len);
	assert_memory_equal(b, z, len);
	free(b);
	free(z);
}

static void test_zeroing_ops(void **state)
{
	struct fixture *f = *state;

	fill(f->fd, 0, 3 << 20, 0x5a);
	struct tracked punch = one(f, VIO_FALLOCATE, 4096, 65536);
	punch.req.mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
	submit_wait(f, &punch);
	assert_int_equal(punch.req.res, 0);
	assert_zero(f->fd, 4096, 65536);

	struct tracked zr = one(f, VIO_FALLOCATE, 1 << 20, 12345);
	zr.req.mode = FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE;
	submit_wait(f, &zr);
	assert_int_equal(zr.req.res, 0);
	assert_zero(f->fd, 1 << 20, 12345);

	/* literal zeroes, longer than one internal batch and unaligned */
	struct tracked wz = one(f, VIO_WRITE_ZEROES, (2 << 20) + 3, (1 << 20) + 77);
	submit_wait(f, &wz);
	assert_int_equal(wz.req.res, 0);
	assert_zero(f->fd, (2 << 20) + 3, (1 << 20) + 77);

	/* the bytes around each range are untouched */
	uint8_t b;
	assert_int_equal(pread(f->fd, &b, 1, 4095), 1);
	assert_int_equal(b, 0x5a);
	assert_int_equal(pread(f->fd, &b, 1, (2 << 20) + 2), 1);
	assert_int_equal(b, 0x5a);

	struct tracked sync = one(f, VIO_FDATASYNC, 0, 0);
	submit_wait(f, &sync);
	assert_int_equal(sync.req.res, 0);

	/* block-device ioctls on a regular file fail, and say so */
	struct tracked disc = one(f, VIO_BLKDISCARD, 0, 4096);
	submit_wait(f, &disc);
	assert_true(disc.req.res < 0);
}

struct writer_args {
	int fd;
	size_t len;
};

static void *peer_writer(void *arg)
{
	struct writer_args *a = arg;
	uint8_t chunk[1000];
	size_t sent = 0;

	while (sent < a->len) {
		size_t k = a->len - sent < sizeof(chunk) ? a->len - sent : sizeof(chunk);
		for (size_t i = 0; i < k; i++)
			chunk[i] = (uint8_t)((sent + i) * 31);
		ssize_t n = write(a->fd, chunk, k);
		if (n <= 0)
			break;
		sent += (size_t)n;
	}
	shutdown(a->fd, SHUT_WR);
	return NULL;
}

static void test_stream_read_to_eof(void **state)
{
	struct fixture *f = *state;
	int sv[2];
	struct vio_stream s;
	pthread_t th;
	const size_t total = 3 << 20;
	uint8_t *got = malloc(total + 1);
	size_t have = 0;

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	assert_int_equal(vio_stream_attach(f->eng, &s, sv[0]), 0);
	struct writer_args a = { sv[1], total };
	pthread_create(&th, NULL, peer_writer, &a);
	for (;;) {
		struct tracked t = { .counter = &f->completed };
		t.iov = (struct iovec){ got + have, total + 1 - have };
		t.req = (struct vio_req){ .op = VIO_STREAM_READ, .stream = &s, .iov = &t.iov,
					  .iovcnt = 1, .done = tracked_done };
		submit_wait(f, &t);
		assert_true(t.req.res >= 0);
		if (t.req.res == 0)
			break;
		have += (size_t)t.req.res;
	}
	pthread_join(th, NULL);
	assert_int_equal(have, total);
	for (size_t i = 0; i < total; i++)
		if (got[i] != (uint8_t)(i * 31))
			fail_msg("byte %zu differs", i);
	vio_stream_detach(f->eng, &s);
	close(sv[0]);
	close(sv[1]);
	free(got);
}

static void test_stream_write_and_cancel(void **state)
{
	struct fixture *f = *state;
	int sv[2];
	struct vio_stream s;
	uint8_t msg[] = "reply", in[16];

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	assert_int_equal(vio_stream_attach(f->eng, &s, sv[0]), 0);

	struct tracked w = { .counter = &f->completed };
	w.iov = (struct iovec){ msg, 5 };
	w.req = (struct vio_req){ .op = VIO_STREAM_WRITE, .stream = &s, .iov = &w.iov,
				  .iovcnt = 1, .done = tracked_done };
	submit_wait(f, &w);
	assert_int_equal(w.req.res, 5);
	assert_int_equal(read(sv[1], in, sizeof(in)), 5);
	assert_memory_equal(in, "reply", 5);

	/* A read nobody will ever satisfy completes once cancelled. */
	struct tracked r = { .counter = &f->completed };
	r.iov = (struct iovec){ in, sizeof(in) };
	r.req = (struct vio_req){ .op = VIO_STREAM_READ, .stream = &s, .iov = &r.iov,
				  .iovcnt = 1, .done = tracked_done };
	f->completed = 0;
	vio_submit(f->eng, &r.req);
	assert_int_equal(vio_run(f->eng, 50), 0);
	vio_stream_cancel(f->eng, &s);
	run_until(f, 1);
	assert_int_equal(r.req.res, -ECANCELED);
	vio_stream_detach(f->eng, &s);
	close(sv[0]);
	close(sv[1]);
}

/* A peer gone mid-reply costs the writer an EPIPE, never its life, even
 * in a program that left SIGPIPE at its default (serve ignores it; a
 * library user need not). */
static void test_stream_write_to_vanished_peer(void **state)
{
	struct fixture *f = *state;
	int sv[2];
	struct vio_stream s;
	uint8_t msg[4096] = { 0 };

	signal(SIGPIPE, SIG_DFL);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	assert_int_equal(vio_stream_attach(f->eng, &s, sv[0]), 0);
	close(sv[1]);

	struct tracked w = { .counter = &f->completed };
	w.iov = (struct iovec){ msg, sizeof(msg) };
	w.req = (struct vio_req){ .op = VIO_STREAM_WRITE, .stream = &s, .iov = &w.iov,
				  .iovcnt = 1, .done = tracked_done };
	submit_wait(f, &w);
	assert_int_equal(w.req.res, -EPIPE);
	vio_stream_detach(f->eng, &s);
	close(sv[0]);
}

static void *waker(void *arg)
{
	usleep(20000);
	vio_wake(arg);
	return NULL;
}

static void test_wake_from_another_thread(void **state)
{
	struct fixture *f = *state;
	pthread_t th;

	pthread_create(&th, NULL, waker, f->eng);
	/* Would block forever without the wake-up. */
	assert_true(vio_run(f->eng, -1) >= 0);
	pthread_join(th, NULL);
}

#define BOTH(t) cmocka_unit_test_setup_teardown(t, setup_uring, teardown), \
		cmocka_unit_test_setup_teardown(t, setup_threads, teardown)
#define THREADS(t) cmocka_unit_test_setup_teardown(t, setup_threads, teardown)

int main(void)
{
	const struct CMUnitTest both[] = {
		BOTH(test_concurrent_writes_then_reads),
		BOTH(test_read_at_end_of_file),
		BOTH(test_zeroing_ops),
		BOTH(test_stream_read_to_eof),
		BOTH(test_stream_write_and_cancel),
		BOTH(test_stream_write_to_vanished_peer),
		BOTH(test_wake_from_another_thread),
	};
	/* Under valgrind: it cannot see the kernel fill buffers through
	 * io_uring's shared rings, so only the thread-pool engine runs. */
	const struct CMUnitTest threads_only[] = {
		THREADS(test_concurrent_writes_then_reads),
		THREADS(test_read_at_end_of_file),
		THREADS(test_zeroing_ops),
		THREADS(test_stream_read_to_eof),
		THREADS(test_stream_write_and_cancel),
		THREADS(test_stream_write_to_vanished_peer),
		THREADS(test_wake_from_another_thread),
	};
	if (getenv("VOLTRACK_TEST_NO_URING"))
		return cmocka_run_group_tests(threads_only, NULL, NULL);
	return cmocka_run_group_tests(both, NULL, NULL);
}
