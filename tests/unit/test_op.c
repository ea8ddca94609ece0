/*
 * The write pipeline (src/io/op.h) and the live export over it, driven
 * the way a frontend drives them: an op embedded in the caller's own
 * memory, started on a loop, completed through done on that loop's
 * thread.
 *
 * Each test counts tracker_write_end() through its pause point (this
 * binary links the library built with pause points) and checks the
 * contract: exactly one end per begun write, on every path, and before
 * done.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <signal.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cmocka.h>

#include "export.h"
#include "loop.h"
#include "metadir.h"
#include "op.h"
#include "pause.h"
#include "tracker.h"
#include "testvol.h"
#include "volume.h"

#define VOL_SIZE (256ull << 20)	/* four 64 MiB intent regions */
#define REGION (64ull << 20)
#define G (64u << 10)

/* Metadata writes that fail on demand: a failed intent commit. */
struct faulty_fsops {
	struct vt_fsops ops;
	atomic_bool fail;		/* every write and sync */
	atomic_bool fail_sync_only;	/* only fdatasync */
	atomic_uint failed;		/* calls failed */
};

static int faulty_pwrite(const struct vt_fsops *ops, int fd, const void *buf, size_t len,
			 uint64_t off)
{
	const struct faulty_fsops *f = (const struct faulty_fsops *)ops;

	if (atomic_load(&f->fail))
		return -EIO;
	return vt_fsops_posix.pwrite(&vt_fsops_posix, fd, buf, len, off);
}

static int faulty_fdatasync(const struct vt_fsops *ops, int fd)
{
	struct faulty_fsops *f = (struct faulty_fsops *)ops;

	if (atomic_load(&f->fail) || atomic_load(&f->fail_sync_only)) {
		atomic_fetch_add(&f->failed, 1);
		return -EIO;
	}
	return vt_fsops_posix.fdatasync(&vt_fsops_posix, fd);
}

struct fixture {
	struct testvol tv;		/* md and vol below are its */
	struct faulty_fsops fs;
	struct metadir *md;
	struct volume *vol;
	struct tracker *t;
	struct vt_target tgt;
	struct vt_loop loop;
	atomic_uint ends;		/* tracker_write_end calls */
	unsigned ends_at_done;		/* ends seen when done ran */
	/* the op under test and what its completion saw */
	struct vt_op op;
	struct iovec iov;
	uint8_t buf[2 * G];
	int done_calls;
	int err;
	const char *why;
	pthread_t done_thread;
};

static void count_points(const char *point, void *arg)
{
	struct fixture *f = arg;

	if (strcmp(point, "tracker.end.epoch_loaded") == 0)
		atomic_fetch_add(&f->ends, 1);
}

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	struct tracker_config cfg;
	struct volume_identity id;

	f->fs.ops = vt_fsops_posix;
	f->fs.ops.pwrite = faulty_pwrite;
	f->fs.ops.fdatasync = faulty_fdatasync;
	assert_int_equal(testvol_create(&f->tv, "voltrack-op", VOL_SIZE, G, &f->fs.ops), 0);
	f->md = f->tv.md;
	f->vol = f->tv.vol;
	tracker_config_defaults(&cfg);
	cfg.persist_interval_ms = 3600000; /* nothing clears intents under the test */
	cfg.volume = f->vol;
	assert_int_equal(volume_identity(f->vol, &id), 0);
	assert_int_equal(tracker_open(f->md, &id, true, &cfg, &f->t), 0);
	f->tgt = (struct vt_target){ .vol = f->vol, .tracker = f->t };
	/* The thread-pool engine: valgrind cannot follow io_uring. */
	assert_int_equal(vt_loop_init(&f->loop, VIO_BACKEND_THREADS, 64), 0);
	vt_pause_set_hook(count_points, f);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	vt_pause_set_hook(NULL, NULL);
	vt_loop_destroy(&f->loop);
	tracker_abandon(f->t);
	testvol_destroy(&f->tv);
	free(f);
	return 0;
}

static void op_done(struct vt_op *op, int err)
{
	struct fixture *f = (struct fixture *)((char *)op - offsetof(struct fixture, op));

	f->done_calls++;
	f->err = err;
	f->why = op->why;
	f->done_thread = pthread_self();
	f->ends_at_done = atomic_load(&f->ends);
}

/* Fill the op as a frontend would, over f->buf. */
static struct vt_op *prep(struct fixture *f, enum vt_op_type type, unsigned flags,
			  uint64_t off, uint64_t len)
{
	memset(&f->op, 0, sizeof(f->op));
	f->done_calls = 0;
	f->err = 1;
	f->why = NULL;
	f->iov = (struct iovec){ .iov_base = f->buf, .iov_len = len };
	f->op.type = (uint8_t)type;
	f->op.flags = (uint8_t)flags;
	f->op.off = off;
	f->op.len = len;
	f->op.iov = &f->iov;
	f->op.iovcnt = 1;
	f->op.done = op_done;
	return &f->op;
}

/* Run the loop until done has been called; returns its error. */
static int wait_done(struct fixture *f)
{
	for (int i = 0; i < 500 && !f->done_calls; i++)
		assert_true(vt_loop_run(&f->loop, 10) >= 0);
	assert_int_equal(f->done_calls, 1);
	assert_true(pthread_equal(f->done_thread, pthread_self()));
	return f->err;
}

static int run(struct fixture *f, enum vt_op_type type, unsigned flags, uint64_t off,
	       uint64_t len)
{
	vt_op_start(&f->loop, &f->tgt, prep(f, type, flags, off, len));
	return wait_done(f);
}

static void read_back(struct fixture *f, uint64_t off, uint8_t *out, size_t len)
{
	assert_int_equal(pread(f->vol->fd, out, len, (off_t)off), (ssize_t)len);
}

/* The first write into a region parks until its intent is durable, and
 * comes back on the loop's thread; the data lands, tracking ends once. */
static void test_write_parks_then_lands(void **state)
{
	struct fixture *f = *state;
	uint8_t back[G];

	memset(f->buf, 0xa5, G);
	vt_op_start(&f->loop, &f->tgt, prep(f, VT_OP_WRITE, 0, REGION + G, G));
	assert_int_equal(f->done_calls, 0); /* parked on the committer */
	assert_int_equal(wait_done(f), 0);
	assert_int_equal(f->ends_at_done, 1);
	read_back(f, REGION + G, back, G);
	assert_memory_equal(back, f->buf, G);

	/* Now the region is durable: the next write goes straight through. */
	assert_int_equal(run(f, VT_OP_WRITE, VT_OP_FUA, REGION, G), 0);
	assert_int_equal(atomic_load(&f->ends), 2);
}

/* A parked write whose intent commit fails is not issued, says why,
 * and still ends its tracking. */
static void test_failed_intent_commit(void **state)
{
	struct fixture *f = *state;
	uint8_t back[G], zero[G] = { 0 };

	atomic_store(&f->fs.fail, true);
	memset(f->buf, 0x5a, G);
	assert_int_equal(run(f, VT_OP_WRITE, 0, 2 * REGION, G), -EIO);
	assert_string_equal(f->why, "cannot record the write durably");
	assert_int_equal(f->ends_at_done, 1);
	read_back(f, 2 * REGION, back, G);
	assert_memory_equal(back, zero, G);
	atomic_store(&f->fs.fail, false);
}

/* Zeroing walks down the ladder; with no method left it fails, tracking
 * ended.  With no method at all it is refused before tracking begins. */
static void test_zero_ladder(void **state)
{
	struct fixture *f = *state;

	/* A file volume: the first rung (punch) works. */
	assert_int_equal(run(f, VT_OP_ZERO, VT_OP_MAY_UNMAP, 0, G), 0);
	assert_int_equal(f->ends_at_done, 1);

	/* Pretend the file is a block device: BLKZEROOUT fails with ENOTTY
	 * on it, the only rung for "keep allocated", so the ladder ends. */
	f->vol->kind = SB_KIND_BLOCKDEV;
	assert_int_equal(run(f, VT_OP_ZERO, 0, 0, G), -EIO);
	assert_string_equal(f->why, "no way to zero this range");
	assert_int_equal(f->ends_at_done, 2);

	/* Fast and kept allocated: no rung at all on a block device. */
	assert_int_equal(run(f, VT_OP_ZERO, VT_OP_FAST, 0, G), -ENOTSUP);
	assert_int_equal(atomic_load(&f->ends), 2);
	f->vol->kind = SB_KIND_FILE;
}

/* A sync error latches: every later FLUSH and FUA op fails with it,
 * plain writes do not. */
static void test_sync_error_latches(void **state)
{
	struct fixture *f = *state;

	assert_int_equal(run(f, VT_OP_FLUSH, 0, 0, 0), 0);
	assert_int_equal(volume_sync_done(f->vol, -EIO), -EIO);
	assert_int_equal(run(f, VT_OP_FLUSH, 0, 0, 0), -EIO);
	assert_int_equal(run(f, VT_OP_WRITE, VT_OP_FUA, 0, G), -EIO);
	assert_int_equal(run(f, VT_OP_TRIM, VT_OP_FUA, G, G), -EIO);
	assert_int_equal(run(f, VT_OP_WRITE, 0, 0, G), 0);
	assert_int_equal(atomic_load(&f->ends), 3);
}

/*
 * A FUA write that fails for want of space (here EFBIG, past the
 * process's file-size limit: a space error the test can make at will)
 * failed in the copy, not in writeback: it fails, and nothing latches.
 * FLUSHes and FUA writes work again once there is room, and the witness
 * sync still finds a real writeback error (none here).  Latching the
 * space error made every later FLUSH fail until the server restarted.
 */
static void test_fua_space_error_does_not_latch(void **state)
{
	struct fixture *f = *state;
	struct rlimit old, lim;
	uint8_t back[G];

	assert_int_equal(run(f, VT_OP_WRITE, 0, 2 * REGION, G), 0); /* intent durable */
	assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
	lim = old;
	lim.rlim_cur = REGION;
	signal(SIGXFSZ, SIG_IGN);
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
	memset(f->buf, 0x6b, G);
	int err = run(f, VT_OP_WRITE, VT_OP_FUA, 2 * REGION, G);
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
	signal(SIGXFSZ, SIG_DFL);
	assert_int_equal(err, -EFBIG); /* premise: the write really failed */
	assert_int_equal(f->ends_at_done, 2);
	assert_int_equal(volume_sync_error(f->vol), 0);
	assert_int_equal(run(f, VT_OP_FLUSH, 0, 0, 0), 0);
	assert_int_equal(run(f, VT_OP_WRITE, VT_OP_FUA, 2 * REGION, G), 0);
	read_back(f, 2 * REGION, back, G);
	assert_memory_equal(back, f->buf, G);
}

/* An intent commit whose fdatasync alone fails: the write is refused,
 * not issued; the next write into the region commits again and lands. */
static void test_failed_intent_sync_then_retry(void **state)
{
	struct fixture *f = *state;
	uint8_t back[G], zero[G] = { 0 };

	atomic_store(&f->fs.fail_sync_only, true);
	memset(f->buf, 0x3c, G);
	assert_int_equal(run(f, VT_OP_WRITE, VT_OP_FUA, 3 * REGION, G), -EIO);
	assert_string_equal(f->why, "cannot record the write durably");
	assert_true(atomic_load(&f->fs.failed) > 0); /* premise: the sync really failed */
	read_back(f, 3 * REGION, back, G);
	assert_memory_equal(back, zero, G);
	atomic_store(&f->fs.fail_sync_only, false);
	assert_int_equal(run(f, VT_OP_WRITE, VT_OP_FUA, 3 * REGION, G), 0);
	read_back(f, 3 * REGION, back, G);
	assert_memory_equal(back, f->buf, G);
	assert_int_equal(atomic_load(&f->ends), 2);
}

/* Reads are not tracked; a read past the end is short and fails. */
static void test_reads(void **state)
{
	struct fixture *f = *state;

	assert_int_equal(run(f, VT_OP_READ, 0, 0, G), 0);
	assert_int_equal(run(f, VT_OP_READ, 0, VOL_SIZE - G, 2 * G), -EIO);
	assert_string_equal(f->why, "volume shrank under the server");
	assert_int_equal(atomic_load(&f->ends), 0);
}

/* The live export routes ops to the pipeline; a read-only one refuses
 * writes before anything is tracked, and the last put releases it. */
static void test_export(void **state)
{
	struct fixture *f = *state;
	struct vt_export *rw, *ro;

	assert_int_equal(vt_export_volume("", "live", f->vol, f->t, false, &rw), 0);
	assert_int_equal(vt_export_volume("ro", NULL, f->vol, f->t, true, &ro), 0);
	assert_false(vt_export_read_only(rw));
	assert_true(vt_export_read_only(ro));
	assert_int_equal(vt_export_size(rw), VOL_SIZE);
	assert_ptr_equal(vt_export_tracker(ro), f->t);

	vt_export_start(rw, &f->loop, prep(f, VT_OP_WRITE, 0, 0, G));
	assert_int_equal(wait_done(f), 0);
	vt_export_start(ro, &f->loop, prep(f, VT_OP_WRITE, 0, 0, G));
	assert_int_equal(f->done_calls, 1); /* refused at once */
	assert_int_equal(f->err, -EPERM);
	vt_export_start(ro, &f->loop, prep(f, VT_OP_READ, 0, 0, G));
	assert_int_equal(wait_done(f), 0);
	assert_int_equal(atomic_load(&f->ends), 1);

	struct vt_export *held = vt_export_get(ro);
	vt_export_put(ro);
	assert_int_equal(vt_export_size(held), VOL_SIZE); /* still alive */
	vt_export_put(held);
	vt_export_put(rw);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_write_parks_then_lands, setup, teardown),
		cmocka_unit_test_setup_teardown(test_failed_intent_commit, setup, teardown),
		cmocka_unit_test_setup_teardown(test_zero_ladder, setup, teardown),
		cmocka_unit_test_setup_teardown(test_sync_error_latches, setup, teardown),
		cmocka_unit_test_setup_teardown(test_fua_space_error_does_not_latch, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_failed_intent_sync_then_retry, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_reads, setup, teardown),
		cmocka_unit_test_setup_teardown(test_export, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
