/*
 * The hold gate (src/snap/gate.h), alone and in the write pipeline.
 *
 * The pipeline test checks invariant I3 directly: a write admitted just
 * before a hold is parked on its intent commit, and the hold can drain
 * only if that commit, the tracker's own I/O, proceeds while the gate is
 * held.  The commit is blocked inside fdatasync until the test lets it
 * go, so the order is driven, not hoped for.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "gate.h"
#include "op.h"
#include "testvol.h"
#include "tracker.h"

static uint64_t mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

struct held {
	struct vt_gate_wait w;
	int id;
	int *order;
	int *n;
};

static void held_resumed(struct vt_parked *p, int err)
{
	struct held *h = (struct held *)((char *)p - offsetof(struct held, w.park));

	assert_int_equal(err, 0);
	h->order[(*h->n)++] = h->id;
}

static void test_park_and_release_in_order(void **state)
{
	struct vt_gate g;
	struct vt_loop loop;
	struct held h[5];
	int order[5], n = 0;

	(void)state;
	assert_int_equal(vt_gate_init(&g), 0);
	assert_int_equal(vt_loop_init(&loop, VIO_BACKEND_THREADS, 8), 0);
	assert_true(vt_gate_enter(&g, &h[0].w));	/* open: admitted */
	vt_gate_leave(&g);
	assert_int_equal(vt_gate_hold(&g, mono_ns() + 1000000000ull), 0);
	for (int i = 0; i < 5; i++) {
		h[i] = (struct held){ .w = { .loop = &loop }, .id = i, .order = order, .n = &n };
		h[i].w.park.resume = held_resumed;
		assert_false(vt_gate_enter(&g, &h[i].w));	/* held: parked */
	}
	assert_int_equal(vt_gate_inflight(&g), 0);
	assert_int_equal(vt_gate_release(&g), 5);
	while (n < 5)
		assert_true(vt_loop_run(&loop, 1000) >= 0);
	for (int i = 0; i < 5; i++)
		assert_int_equal(order[i], i);	/* arrival order */
	vt_loop_destroy(&loop);
	vt_gate_destroy(&g);
}

struct holder {
	struct vt_gate *g;
	uint64_t deadline;
	atomic_int result;	/* 1 while running */
};

static void *hold_thread(void *arg)
{
	struct holder *h = arg;

	atomic_store(&h->result, vt_gate_hold(h->g, h->deadline));
	return NULL;
}

static void test_hold_drains_and_times_out(void **state)
{
	struct vt_gate g;
	struct vt_gate_wait w = { 0 };
	struct holder h = { .g = &g };
	pthread_t th;

	(void)state;
	assert_int_equal(vt_gate_init(&g), 0);
	/* An admitted write: the hold waits for it to leave. */
	assert_true(vt_gate_enter(&g, &w));
	h.deadline = mono_ns() + 30000000000ull;
	atomic_store(&h.result, 1);
	assert_int_equal(pthread_create(&th, NULL, hold_thread, &h), 0);
	usleep(50000);
	assert_int_equal(atomic_load(&h.result), 1);	/* still draining */
	vt_gate_leave(&g);
	pthread_join(th, NULL);
	assert_int_equal(atomic_load(&h.result), 0);
	vt_gate_release(&g);

	/* One that never leaves: the hold gives up at its deadline. */
	assert_true(vt_gate_enter(&g, &w));
	uint64_t t0 = mono_ns();
	assert_int_equal(vt_gate_hold(&g, t0 + 100000000ull), -ETIMEDOUT);
	assert_true(mono_ns() - t0 >= 100000000ull);
	assert_int_equal(vt_gate_release(&g), 0);
	vt_gate_leave(&g);
	vt_gate_destroy(&g);
}

/* ---- I3: the hold drains only because the intent commit proceeds ---- */

struct blocking_fsops {
	struct vt_fsops ops;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool block, blocked;
	unsigned syncs_while_held;
	struct vt_gate *gate;
};

static int bf_pwrite(const struct vt_fsops *ops, int fd, const void *buf, size_t len,
		     uint64_t off)
{
	return vt_fsops_posix.pwrite(&vt_fsops_posix, fd, buf, len, off);
}

static int bf_fdatasync(const struct vt_fsops *ops, int fd)
{
	struct blocking_fsops *b = (struct blocking_fsops *)ops;

	pthread_mutex_lock(&b->lock);
	if (b->block) {
		b->blocked = true;
		pthread_cond_broadcast(&b->cond);
		while (b->block)
			pthread_cond_wait(&b->cond, &b->lock);
	}
	if (b->gate && atomic_load(&b->gate->held))
		b->syncs_while_held++;
	pthread_mutex_unlock(&b->lock);
	return vt_fsops_posix.fdatasync(&vt_fsops_posix, fd);
}

struct write_op {
	struct vt_op op;
	struct iovec iov;
	uint8_t buf[4096];
	int err;
	bool done;
};

static void write_done(struct vt_op *op, int err)
{
	struct write_op *w = (struct write_op *)op;

	w->err = err;
	w->done = true;
}

static void test_hold_waits_on_own_io(void **state)
{
	struct blocking_fsops bf = { .ops = vt_fsops_posix };
	struct testvol tv;
	struct tracker_config cfg;
	struct volume_identity id;
	struct tracker *t;
	struct vt_gate g;
	struct vt_loop loop;
	struct write_op w = { 0 };
	struct holder h = { .g = &g };
	pthread_t th;

	(void)state;
	bf.ops.pwrite = bf_pwrite;
	bf.ops.fdatasync = bf_fdatasync;
	pthread_mutex_init(&bf.lock, NULL);
	pthread_cond_init(&bf.cond, NULL);
	assert_int_equal(testvol_create(&tv, "voltrack-gate", 256ull << 20, 64u << 10, &bf.ops), 0);
	tracker_config_defaults(&cfg);
	cfg.persist_interval_ms = 3600000;
	cfg.volume = tv.vol;
	assert_int_equal(volume_identity(tv.vol, &id), 0);
	assert_int_equal(tracker_open(tv.md, &id, true, &cfg, &t), 0);
	assert_int_equal(vt_gate_init(&g), 0);
	assert_int_equal(vt_loop_init(&loop, VIO_BACKEND_THREADS, 8), 0);
	struct vt_target tgt = { .vol = tv.vol, .tracker = t, .gate = &g };

	/* Let the start-up commit land, then block the next intent sync. */
	usleep(200000);
	pthread_mutex_lock(&bf.lock);
	bf.block = true;
	bf.gate = &g;
	pthread_mutex_unlock(&bf.lock);

	/* A write into a cold region (the last one): parks on its commit. */
	w.iov = (struct iovec){ .iov_base = w.buf, .iov_len = sizeof(w.buf) };
	w.op = (struct vt_op){ .type = VT_OP_WRITE, .off = (255ull << 20), .len = 4096,
			       .iov = &w.iov, .iovcnt = 1, .done = write_done };
	vt_op_start(&loop, &tgt, &w.op);
	pthread_mutex_lock(&bf.lock);
	while (!bf.blocked)
		pthread_cond_wait(&bf.cond, &bf.lock);
	pthread_mutex_unlock(&bf.lock);
	assert_false(w.done);
	assert_int_equal(vt_gate_inflight(&g), 1);	/* admitted before the hold */

	h.deadline = mono_ns() + 30000000000ull;
	atomic_store(&h.result, 1);
	assert_int_equal(pthread_create(&th, NULL, hold_thread, &h), 0);
	while (!atomic_load(&g.held))
		usleep(1000);
	assert_int_equal(atomic_load(&h.result), 1);	/* cannot drain yet */

	/* The commit goes on while the gate is held; the write finishes,
	 * and only then does the hold drain. */
	pthread_mutex_lock(&bf.lock);
	bf.block = false;
	pthread_cond_broadcast(&bf.cond);
	pthread_mutex_unlock(&bf.lock);
	while (!w.done)
		assert_true(vt_loop_run(&loop, 1000) >= 0);
	assert_int_equal(w.err, 0);
	pthread_join(th, NULL);
	assert_int_equal(atomic_load(&h.result), 0);
	assert_true(bf.syncs_while_held >= 1);	/* the premise: own I/O ran inside */
	vt_gate_release(&g);

	vt_loop_destroy(&loop);
	vt_gate_destroy(&g);
	tracker_abandon(t);
	testvol_destroy(&tv);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_park_and_release_in_order),
		cmocka_unit_test(test_hold_drains_and_times_out),
		cmocka_unit_test(test_hold_waits_on_own_io),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
