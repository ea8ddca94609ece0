/*
 * A lost copy's invalidation is made durable off the loops
 * (src/snap/invalidator.h).
 *
 * The diff store holds one chunk; once it is used, the next write to
 * another chunk cannot be copied, its snapshot becomes invalid, and that
 * write may reach the volume only once the checkpoint list says so
 * durably.  The list's fdatasync blocks inside the test's file
 * operations until the test lets it go, so the order is driven: a read
 * and a write that needs no copy complete on the same loop while the
 * writers that need the invalidation wait, their data is not on the
 * volume until the store returned, one store serves them all, and none
 * of them fails.  A failed store is logged and the writes go on (I5);
 * the snapshot is never served again.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
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

/*
 * fdatasync of the checkpoint list (by inode: every store opens it
 * anew) blocks while `block` is set and returns `list_fail`; that of
 * descriptor fail_fd returns `fd_fail`.
 */
struct blocking_fsops {
	struct vt_fsops ops;		/* first */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	ino_t list_ino;			/* 0: none */
	bool block;
	int list_fail;
	int fail_fd, fd_fail;		/* -1: none */
	unsigned entered, synced;	/* list syncs entered, returned */
};

static struct blocking_fsops *bf_of(const struct vt_fsops *ops)
{
	return (struct blocking_fsops *)ops;
}

static int bf_fdatasync(const struct vt_fsops *ops, int fd)
{
	struct blocking_fsops *bf = bf_of(ops);
	struct stat st;
	bool list = fstat(fd, &st) == 0;

	pthread_mutex_lock(&bf->lock);
	list = list && bf->list_ino && st.st_ino == bf->list_ino;
	int fail = fd == bf->fail_fd ? bf->fd_fail : 0;
	if (list) {
		bf->entered++;
		pthread_cond_broadcast(&bf->cond);
		while (bf->block)
			pthread_cond_wait(&bf->cond, &bf->lock);
		fail = bf->list_fail;
	}
	pthread_mutex_unlock(&bf->lock);
	int err = fail ? fail : vt_fsops_posix.fdatasync(&vt_fsops_posix, fd);
	if (list) {
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

/* A few turns of the loop, for whatever could complete now. */
static void run_some(struct fixture *f)
{
	for (int i = 0; i < 20; i++)
		assert_true(vt_loop_run(&f->loop, 5) >= 0);
}

/* Run the loop (a copy's failure may come back through it) until n
 * syncs of the list were entered. */
static void run_until_entered(struct fixture *f, unsigned n)
{
	for (int i = 0; i < 3000; i++) {
		pthread_mutex_lock(&f->bf.lock);
		unsigned entered = f->bf.entered;
		pthread_mutex_unlock(&f->bf.lock);
		if (entered >= n)
			return;
		assert_true(vt_loop_run(&f->loop, 10) >= 0);
	}
	fail_msg("the checkpoint list's sync was never entered");
}

static void set_block(struct fixture *f, bool block, int list_fail)
{
	pthread_mutex_lock(&f->bf.lock);
	f->bf.block = block;
	f->bf.list_fail = list_fail;
	pthread_cond_broadcast(&f->bf.cond);
	pthread_mutex_unlock(&f->bf.lock);
}

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	struct tracker_config cfg;
	struct volume_identity id;
	struct vt_snap_phases ph;
	struct stat st;

	f->bf.ops = vt_fsops_posix;
	f->bf.ops.fdatasync = bf_fdatasync;
	f->bf.fail_fd = -1;
	pthread_mutex_init(&f->bf.lock, NULL);
	pthread_cond_init(&f->bf.cond, NULL);
	assert_int_equal(testvol_create(&f->tv, "voltrack-inval", VOL_SIZE, G, &f->bf.ops), 0);
	tracker_config_defaults(&cfg);
	cfg.persist_interval_ms = 3600000;
	cfg.volume = f->tv.vol;
	assert_int_equal(volume_identity(f->tv.vol, &id), 0);
	assert_int_equal(tracker_open(f->tv.md, &id, true, &cfg, &f->t), 0);
	/* Room for one copy. */
	assert_int_equal(vt_snapshots_open(f->tv.md, f->t, f->tv.vol,
					   &(struct diffstore_config){ .limit = G }, false, &f->s), 0);
	assert_int_equal(diffstore_start_marker(f->s->ds), 0);
	assert_int_equal(vt_snapset_start_invalidator(f->s->set), 0);
	assert_int_equal(vt_loop_init(&f->loop, VIO_BACKEND_THREADS, 8), 0);
	f->tgt = (struct vt_target){ .vol = f->tv.vol, .tracker = f->t };
	vt_snapshots_target(f->s, &f->tgt);

	/* A snapshot of zeroes; its prepare left the copies-pending mark
	 * set, so copies do not wait for the marker. */
	assert_int_equal(vt_snapshots_take(f->s, "a", 10000, &ph), 0);
	assert_int_equal(fstatat(metadir_fd(f->tv.md), CHECKPOINTS_NAME, &st, 0), 0);
	pthread_mutex_lock(&f->bf.lock);
	f->bf.list_ino = st.st_ino;
	pthread_mutex_unlock(&f->bf.lock);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	set_block(f, false, 0);
	pthread_mutex_lock(&f->bf.lock);
	f->bf.fail_fd = -1;
	pthread_mutex_unlock(&f->bf.lock);
	vt_loop_destroy(&f->loop);
	vt_snapshots_close(f->s);
	tracker_abandon(f->t);
	testvol_destroy(&f->tv);
	free(f);
	return 0;
}

static void write_ok(struct fixture *f, uint64_t off, uint8_t fill)
{
	struct testop_req w;

	start(f, &w, VT_OP_WRITE, off, fill);
	run_until(f, &w.done);
	assert_int_equal(w.err, 0);
}

/* What the volume holds at off, read past the pipeline. */
static uint8_t on_volume(struct fixture *f, uint64_t off)
{
	uint8_t b = 0xee;

	assert_int_equal(pread(f->tv.vol->fd, &b, 1, (off_t)off), 1);
	return b;
}

static unsigned list_flags(struct fixture *f, const char *name)
{
	struct checkpoint c;

	assert_int_equal(tracker_checkpoint_find(f->t, name, &c), 0);
	return c.flags;
}

static int read_snapshot(struct fixture *f, uint64_t off)
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
	vt_export_put(e);
	return r.err;
}

static void test_loop_serves_while_the_invalidation_is_stored(void **state)
{
	struct fixture *f = *state;
	struct vt_invalidator *inv = &f->s->set->inval;
	struct testop_req w[3], rd, copied;

	write_ok(f, 1 * G, 0x11);		/* copied: the store is full now */
	set_block(f, true, 0);

	/* Three writes into three more chunks: none can be copied. */
	for (int i = 0; i < 3; i++)
		start(f, &w[i], VT_OP_WRITE, (uint64_t)(3 + 2 * i) * G, (uint8_t)(0x41 + i));
	run_until_entered(f, 1);			/* the premise: the store is under way */

	/* The loop goes on: a read, and a write whose chunk was copied. */
	start(f, &rd, VT_OP_READ, 12 * G, 0);
	run_until(f, &rd.done);
	assert_int_equal(rd.err, 0);
	start(f, &copied, VT_OP_WRITE, 1 * G + 4096, 0x12);
	run_until(f, &copied.done);
	assert_int_equal(copied.err, 0);
	run_some(f);
	for (int i = 0; i < 3; i++) {
		assert_false(w[i].done);
		/* Nothing reached the volume uncopied while "a" is valid on disk. */
		assert_int_equal(on_volume(f, (uint64_t)(3 + 2 * i) * G), 0);
	}
	/* (The tracker's list is not looked at here: its lock is held by
	 * the store under way, as for any checkpoint.) */

	set_block(f, false, 0);
	for (int i = 0; i < 3; i++) {
		run_until(f, &w[i].done);
		assert_int_equal(w[i].err, 0);	/* the origin comes first (I5) */
		assert_int_equal(on_volume(f, (uint64_t)(3 + 2 * i) * G), 0x41 + i);
	}
	assert_true(list_flags(f, "a") & CKPT_F_INVALID);

	/* One store of the list served all three. */
	assert_int_equal(f->bf.synced, 1);
	pthread_mutex_lock(&inv->lock);
	unsigned long stores = inv->stores, waits = inv->waits;
	pthread_mutex_unlock(&inv->lock);
	assert_int_equal(stores, 1);
	assert_int_equal(waits, 3);
	assert_int_equal(read_snapshot(f, 1 * G), -EIO);
}

/* A copy whose copies-pending mark cannot be set fails on the marker's
 * thread; the copier too waits for the invalidation, parked. */
static void test_failed_copy_waits_for_the_invalidation(void **state)
{
	struct fixture *f = *state;
	struct testop_req w, rd;

	assert_int_equal(vt_snapshots_settle(f->s), 0);
	assert_false(atomic_load(&f->s->ds->pending));	/* the next copy needs the mark */
	pthread_mutex_lock(&f->bf.lock);
	f->bf.fail_fd = f->s->ds->map_fd;
	f->bf.fd_fail = -EIO;
	pthread_mutex_unlock(&f->bf.lock);
	set_block(f, true, 0);

	start(f, &w, VT_OP_WRITE, 5 * G, 0x55);
	run_until_entered(f, 1);
	start(f, &rd, VT_OP_READ, 12 * G, 0);
	run_until(f, &rd.done);
	assert_int_equal(rd.err, 0);
	run_some(f);
	assert_false(w.done);
	assert_int_equal(on_volume(f, 5 * G), 0);

	set_block(f, false, 0);
	run_until(f, &w.done);
	assert_int_equal(w.err, 0);
	assert_int_equal(on_volume(f, 5 * G), 0x55);
	assert_true(list_flags(f, "a") & CKPT_F_INVALID);
}

/* The store fails: it is logged, the writes go on, and the snapshot,
 * invalid in memory, is never read again; the list could not say so. */
static void test_failed_store_lets_the_writes_go_on(void **state)
{
	struct fixture *f = *state;
	struct vt_invalidator *inv = &f->s->set->inval;
	struct testop_req w[2];
	struct vt_snap sn;

	write_ok(f, 1 * G, 0x11);
	set_block(f, false, -EIO);
	start(f, &w[0], VT_OP_WRITE, 3 * G, 0x33);
	start(f, &w[1], VT_OP_WRITE, 7 * G, 0x77);
	for (int i = 0; i < 2; i++) {
		run_until(f, &w[i].done);
		assert_int_equal(w[i].err, 0);
	}
	assert_true(f->bf.synced >= 1);		/* the premise: the list's sync failed */
	pthread_mutex_lock(&inv->lock);
	unsigned long failures = inv->failures;
	pthread_mutex_unlock(&inv->lock);
	assert_int_equal(failures, 1);
	assert_int_equal(on_volume(f, 3 * G), 0x33);
	assert_int_equal(on_volume(f, 7 * G), 0x77);
	assert_int_equal(vt_snapset_get(f->s->set, "a", &sn), 0);
	assert_false(sn.valid);
	assert_false(list_flags(f, "a") & CKPT_F_INVALID);
	assert_int_equal(read_snapshot(f, 1 * G), -EIO);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_loop_serves_while_the_invalidation_is_stored,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_failed_copy_waits_for_the_invalidation,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_failed_store_lets_the_writes_go_on, setup,
						teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
