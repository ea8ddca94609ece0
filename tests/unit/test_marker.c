/*
 * The copies-pending mark is set off the loops (src/snap/marker.h).
 *
 * A write that must copy a chunk while the mark is clear waits for the
 * marker's durable write of the mark; meanwhile the loop it runs on
 * must go on serving.  The record file's fdatasync is blocked inside
 * the test's file operations until the test lets it go, so the order is
 * driven: a read on the same loop completes while the writes wait,
 * writers that arrive during one sync share it, and their copies are
 * made once it returned.  A failed mark costs the
 * snapshot, never the write.
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "checkpoints.h"
#include "op.h"
#include "snapshots.h"
#include "testop.h"
#include "testvol.h"
#include "tracker.h"

#define G (64u << 10)
#define VOL_SIZE (16u << 20)

/* fdatasync of the watched descriptor blocks while `block` is set. */
struct blocking_fsops {
	struct vt_fsops ops;		/* first */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int watch_fd;			/* -1: none */
	bool block;
	int fail;			/* the watched sync returns this */
	unsigned blocked, synced;	/* watched syncs entered, returned */
};

static struct blocking_fsops *bf_of(const struct vt_fsops *ops)
{
	return (struct blocking_fsops *)ops;
}

static int bf_fdatasync(const struct vt_fsops *ops, int fd)
{
	struct blocking_fsops *bf = bf_of(ops);

	pthread_mutex_lock(&bf->lock);
	bool watched = fd == bf->watch_fd;
	if (watched) {
		bf->blocked++;
		pthread_cond_broadcast(&bf->cond);
		while (bf->block)
			pthread_cond_wait(&bf->cond, &bf->lock);
	}
	int fail = watched ? bf->fail : 0;
	pthread_mutex_unlock(&bf->lock);
	int err = fail ? fail : vt_fsops_posix.fdatasync(&vt_fsops_posix, fd);
	if (watched) {
		pthread_mutex_lock(&bf->lock);
		bf->synced++;
		pthread_cond_broadcast(&bf->cond);
		pthread_mutex_unlock(&bf->lock);
	}
	return err;
}

struct fixture {
	struct blocking_fsops bf;
	struct testvol tv;
	struct tracker *t;
	struct vt_snapshots *s;
	struct vt_loop loop;
	struct vt_target tgt;
};

static void start(struct fixture *f, struct testop_req *r, uint8_t type, uint64_t off,
		  uint8_t fill)
{
	testop_start(&f->loop, &f->tgt, r, type, off, fill);
}

static void run_until(struct fixture *f, const bool *done)
{
	assert_int_equal(testop_run_until(&f->loop, done), 0);
}

static void wait_blocked(struct fixture *f, unsigned n)
{
	pthread_mutex_lock(&f->bf.lock);
	while (f->bf.blocked < n)
		pthread_cond_wait(&f->bf.cond, &f->bf.lock);
	pthread_mutex_unlock(&f->bf.lock);
}

static void unblock(struct fixture *f)
{
	pthread_mutex_lock(&f->bf.lock);
	f->bf.block = false;
	pthread_cond_broadcast(&f->bf.cond);
	pthread_mutex_unlock(&f->bf.lock);
}

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	struct tracker_config cfg;
	struct volume_identity id;
	struct vt_snap_phases ph;

	f->bf.ops = vt_fsops_posix;
	f->bf.ops.fdatasync = bf_fdatasync;
	f->bf.watch_fd = -1;
	pthread_mutex_init(&f->bf.lock, NULL);
	pthread_cond_init(&f->bf.cond, NULL);
	assert_int_equal(testvol_create(&f->tv, "voltrack-marker", VOL_SIZE, G, &f->bf.ops), 0);
	tracker_config_defaults(&cfg);
	cfg.persist_interval_ms = 3600000;
	cfg.volume = f->tv.vol;
	assert_int_equal(volume_identity(f->tv.vol, &id), 0);
	assert_int_equal(tracker_open(f->tv.md, &id, true, &cfg, &f->t), 0);
	assert_int_equal(vt_snapshots_open(f->tv.md, f->t, f->tv.vol,
					   &(struct diffstore_config){ 0 }, false, &f->s), 0);
	assert_int_equal(diffstore_start_marker(f->s->ds), 0);
	assert_int_equal(vt_loop_init(&f->loop, VIO_BACKEND_THREADS, 8), 0);
	f->tgt = (struct vt_target){ .vol = f->tv.vol, .tracker = f->t };
	vt_snapshots_target(f->s, &f->tgt);

	/* A snapshot of zeroes, then a settle: the mark is clear, and the
	 * next copy needs it set again. */
	assert_int_equal(vt_snapshots_take(f->s, "a", 10000, &ph), 0);
	assert_int_equal(vt_snapshots_settle(f->s), 0);
	assert_false(atomic_load(&f->s->ds->pending));
	pthread_mutex_lock(&f->bf.lock);
	f->bf.watch_fd = f->s->ds->map_fd;
	f->bf.block = true;
	pthread_mutex_unlock(&f->bf.lock);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	unblock(f);
	vt_loop_destroy(&f->loop);
	vt_snapshots_close(f->s);
	tracker_abandon(f->t);
	testvol_destroy(&f->tv);
	free(f);
	return 0;
}

static void read_snapshot(struct fixture *f, uint64_t off, uint8_t *out)
{
	struct vt_export *e;
	struct testop_req r;

	assert_int_equal(vt_snapshots_export(f->s, "a", &e), 0);
	memset(&r, 0, sizeof(r));
	r.iov = (struct iovec){ .iov_base = r.buf, .iov_len = sizeof(r.buf) };
	r.op = (struct vt_op){ .type = VT_OP_READ, .off = off, .len = sizeof(r.buf),
			       .iov = &r.iov, .iovcnt = 1, .done = testop_req_done };
	vt_export_start(e, &f->loop, &r.op);
	run_until(f, &r.done);
	assert_int_equal(r.err, 0);
	memcpy(out, r.buf, sizeof(r.buf));
	vt_export_put(e);
}

static void test_loop_serves_while_the_mark_is_set(void **state)
{
	struct fixture *f = *state;
	struct testop_req w[3], rd;
	uint8_t snap[4096], zero[4096] = { 0 };

	/* Three writes into three fresh chunks: all wait for one mark. */
	for (int i = 0; i < 3; i++)
		start(f, &w[i], VT_OP_WRITE, (uint64_t)(1 + 2 * i) * G, (uint8_t)(0x41 + i));
	wait_blocked(f, 1);

	/* The loop goes on: a read on it completes while they wait. */
	start(f, &rd, VT_OP_READ, 8 * G, 0);
	run_until(f, &rd.done);
	assert_int_equal(rd.err, 0);
	for (int i = 0; i < 3; i++)
		assert_false(w[i].done);

	unblock(f);
	for (int i = 0; i < 3; i++) {
		run_until(f, &w[i].done);
		assert_int_equal(w[i].err, 0);
	}
	/* One durable write of the mark served all three (those that came
	 * during it found it set on the marker's next round). */
	assert_int_equal(f->bf.synced, 1);
	struct ds_marker *m = f->s->ds->marker;
	pthread_mutex_lock(&m->lock);
	unsigned long waits = m->waits;
	pthread_mutex_unlock(&m->lock);
	assert_int_equal(waits, 3);
	assert_true(atomic_load(&f->s->ds->pending));

	/* And the copies were made: the snapshot still reads zeroes. */
	for (int i = 0; i < 3; i++) {
		read_snapshot(f, (uint64_t)(1 + 2 * i) * G, snap);
		assert_memory_equal(snap, zero, sizeof(zero));
	}
}

static void test_failed_mark_costs_the_snapshot(void **state)
{
	struct fixture *f = *state;
	struct testop_req w;
	struct checkpoint_list *l = malloc(sizeof(*l));

	pthread_mutex_lock(&f->bf.lock);
	f->bf.block = false;
	f->bf.fail = -EIO;
	pthread_mutex_unlock(&f->bf.lock);
	start(f, &w, VT_OP_WRITE, 5 * G, 0x55);
	run_until(f, &w.done);
	assert_int_equal(w.err, 0);		/* the write goes on (I5) */
	assert_true(f->bf.synced >= 1);		/* the premise: the mark's sync failed */
	tracker_checkpoints(f->t, l);
	assert_int_equal(l->n, 1);
	assert_true(l->items[0].flags & CKPT_F_INVALID);
	free(l);
}

struct taker {
	struct vt_snapshots *s;
	int err;
};

static void *take_b(void *arg)
{
	struct taker *tk = arg;
	struct vt_snap_phases ph;

	tk->err = vt_snapshots_take(tk->s, "b", 60000, &ph);
	return NULL;
}

/*
 * A write admitted before a hold is part of the snapshot, and its data
 * may reach the origin only after a settle's origin sync started while
 * the hold drained.  That settle must not leave the mark clear: the
 * chunk is read from the origin, and a power cut would take the write
 * from the snapshot with no mark to say so.
 */
static void test_settle_during_hold_keeps_the_mark(void **state)
{
	struct fixture *f = *state;
	struct vt_gate_wait gw = { .loop = &f->loop };
	struct taker tk = { .s = f->s, .err = 1 };
	pthread_t th;
	uint8_t data[4096];

	unblock(f);
	assert_true(vt_gate_enter(&f->s->gate, &gw));	/* W: admitted before the hold */
	assert_int_equal(pthread_create(&th, NULL, take_b, &tk), 0);
	while (!atomic_load(&f->s->gate.held))
		sched_yield();
	/* The hold's prepare set the mark; the keeper settles meanwhile
	 * (its origin sync comes before W's data). */
	assert_true(atomic_load(&f->s->ds->pending));
	assert_int_equal(vt_snapshots_settle(f->s), 0);
	assert_false(atomic_load(&f->s->ds->pending));	/* the premise: it cleared */
	/* W's data reaches the page cache, W leaves: the hold drains. */
	memset(data, 0x77, sizeof(data));
	assert_int_equal(pwrite(f->tv.vol->fd, data, sizeof(data), 9 * G), (ssize_t)sizeof(data));
	vt_gate_leave(&f->s->gate);
	assert_int_equal(pthread_join(th, NULL), 0);
	assert_int_equal(tk.err, 0);
	/* Snapshot b's block at 9 G is W's data, in no copy and maybe not
	 * on disk: the mark must still be set. */
	assert_true(atomic_load(&f->s->ds->pending));
}

/*
 * A failed sync of the store's data may have dropped a copy for good
 * (Linux marks the pages it could not write clean and reports the error
 * once): a later sync that succeeds proves nothing about it, so the
 * mark must stay set, and a power cut then invalidates the snapshots
 * instead of serving a lost copy.
 */
static void test_failed_store_sync_keeps_the_mark(void **state)
{
	struct fixture *f = *state;
	struct testop_req w;

	unblock(f);
	start(f, &w, VT_OP_WRITE, 3 * G, 0x33);	/* a copy, under a new mark */
	run_until(f, &w.done);
	assert_int_equal(w.err, 0);
	assert_true(atomic_load(&f->s->ds->pending));
	pthread_mutex_lock(&f->bf.lock);
	f->bf.watch_fd = f->s->ds->data_fd;
	f->bf.fail = -EIO;
	unsigned before = f->bf.synced;
	pthread_mutex_unlock(&f->bf.lock);
	assert_int_equal(vt_snapshots_settle(f->s), -EIO);
	assert_int_equal(f->bf.synced, before + 1);	/* the premise: that sync failed */
	pthread_mutex_lock(&f->bf.lock);
	f->bf.fail = 0;
	pthread_mutex_unlock(&f->bf.lock);
	assert_int_not_equal(vt_snapshots_settle(f->s), 0);
	assert_true(atomic_load(&f->s->ds->pending));
}

static void *take_c(void *arg)
{
	struct taker *tk = arg;
	struct vt_snap_phases ph;

	tk->err = vt_snapshots_take(tk->s, "c", 60000, &ph);
	return NULL;
}

/*
 * A hold taken while a write waits for the marker: the write was
 * admitted by the gate, so the hold drains only once the marker's sync
 * (the store's own I/O) returns and the copy is made.  No deadlock, and
 * the write is not failed.
 */
static void test_hold_drains_a_write_parked_on_the_marker(void **state)
{
	struct fixture *f = *state;
	struct taker tk = { .s = f->s, .err = 1 };
	struct testop_req w;
	pthread_t th;

	start(f, &w, VT_OP_WRITE, 7 * G, 0x71);
	wait_blocked(f, 1);			/* parked on the marker's sync */
	assert_int_equal(vt_gate_inflight(&f->s->gate), 1);
	assert_int_equal(pthread_create(&th, NULL, take_c, &tk), 0);
	unblock(f);
	run_until(f, &w.done);
	assert_int_equal(w.err, 0);
	assert_int_equal(pthread_join(th, NULL), 0);
	assert_int_equal(tk.err, 0);
	uint8_t snap[4096], zero[4096] = { 0 };
	read_snapshot(f, 7 * G, snap);		/* "a" still reads its zeroes */
	assert_memory_equal(snap, zero, sizeof(zero));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_loop_serves_while_the_mark_is_set, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_failed_mark_costs_the_snapshot, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_settle_during_hold_keeps_the_mark, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_failed_store_sync_keeps_the_mark, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_hold_drains_a_write_parked_on_the_marker,
						setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
