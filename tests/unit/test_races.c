/*
 * Interleavings of writers, the intent committer, the flusher and
 * checkpoints, driven one step at a time.
 *
 * Each test stops one thread at a named pause point (src/pause.h; this
 * binary links the library built with them), runs another thread through
 * the window, lets the first go on, then "kills" the tracker (abandon:
 * the page cache survives, nothing more is persisted) and recovers it.
 * The reference is the test's own: a hash of every block of the volume
 * taken at the checkpoint.  Every block that differs from it must be
 * reported changed since the checkpoint (invariant I1).  Each test also
 * asserts its premise: that the pause was really reached and that the
 * block really differs.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "crc32c.h"
#include "metablock.h"
#include "metadir.h"
#include "pause.h"
#include "tracker.h"
#include "testvol.h"
#include "volume.h"

#define VOL_SIZE (256ull << 20)	/* four 64 MiB intent regions */
#define G (64u << 10)
#define NBLOCKS (VOL_SIZE / G)
#define MIB (1ull << 20)

/* ---- the pause gate: stop the first thread that reaches a point ----
 *
 * Each arming has a number; the thread that takes it waits until that
 * number is released.  gate_pass() releases the paused thread and arms
 * the next point in one step, so that nothing slips past in between. */

static struct {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	const char *armed;
	unsigned arm_gen, reached_gen, released_gen;
} gate = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL, 0, 0, 0 };

static void gate_hook(const char *point, void *arg)
{
	pthread_mutex_lock(&gate.lock);
	if (gate.armed && strcmp(point, gate.armed) == 0) {
		unsigned mine = gate.arm_gen;
		gate.armed = NULL; /* one-shot: later threads pass */
		gate.reached_gen = mine;
		pthread_cond_broadcast(&gate.cond);
		while ((int)(gate.released_gen - mine) < 0)
			pthread_cond_wait(&gate.cond, &gate.lock);
	}
	pthread_mutex_unlock(&gate.lock);
}

static void gate_arm(const char *point)
{
	pthread_mutex_lock(&gate.lock);
	gate.released_gen = gate.arm_gen;
	gate.armed = point;
	gate.arm_gen++;
	pthread_cond_broadcast(&gate.cond);
	pthread_mutex_unlock(&gate.lock);
}

/* Release whoever is paused and arm `next`, atomically. */
static void gate_pass(const char *next)
{
	gate_arm(next);
}

/* Wait up to 5 s for the armed point; with `poke`, call it every 10 ms. */
static bool gate_wait(void (*poke)(void *), void *arg)
{
	bool reached = false;

	for (int i = 0; i < 500 && !reached; i++) {
		if (poke)
			poke(arg);
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 10000000;
		if (ts.tv_nsec >= 1000000000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000;
		}
		pthread_mutex_lock(&gate.lock);
		if (gate.reached_gen != gate.arm_gen)
			pthread_cond_timedwait(&gate.cond, &gate.lock, &ts);
		reached = gate.reached_gen == gate.arm_gen;
		pthread_mutex_unlock(&gate.lock);
	}
	return reached;
}

static void gate_release(void)
{
	pthread_mutex_lock(&gate.lock);
	gate.armed = NULL;
	gate.released_gen = gate.arm_gen;
	pthread_cond_broadcast(&gate.cond);
	pthread_mutex_unlock(&gate.lock);
}

/* ---- a volume, its metadata and a tracker over them ---- */

struct fixture {
	struct testvol tv;		/* md and vol below are its */
	struct metadir *md;
	struct volume *vol;
	struct tracker *t;
	uint64_t ref[NBLOCKS];
	uint8_t ref_epoch;
};

static void identity(struct fixture *f, struct volume_identity *id)
{
	assert_int_equal(volume_identity(f->vol, id), 0);
}

static void open_tracker(struct fixture *f, bool live)
{
	struct tracker_config cfg;
	struct volume_identity id;

	tracker_config_defaults(&cfg);
	cfg.persist_interval_ms = 3600000; /* the flusher runs when nudged */
	cfg.idle_ticks = 1;
	cfg.lease_ms = 3600000;	/* no lease renewal commits in the way */
	cfg.volume = f->vol;
	identity(f, &id);
	assert_int_equal(tracker_open(f->md, &id, live, &cfg, &f->t), 0);
}

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));

	assert_int_equal(testvol_create(&f->tv, "voltrack-races", VOL_SIZE, G, NULL), 0);
	f->md = f->tv.md;
	f->vol = f->tv.vol;
	vt_pause_set_hook(gate_hook, NULL);
	open_tracker(f, true);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	gate_release();
	vt_pause_set_hook(NULL, NULL);
	if (f->t)
		tracker_abandon(f->t);
	testvol_destroy(&f->tv);
	free(f);
	return 0;
}

static void hash_volume(struct fixture *f, uint64_t *out)
{
	assert_int_equal(testvol_hash(&f->tv, G, NBLOCKS, out), 0);
}

/* A checkpoint and the test's own record of the volume at that moment. */
static void checkpoint(struct fixture *f, const char *name)
{
	struct checkpoint c;

	assert_int_equal(tracker_checkpoint(f->t, name, &c), 0);
	f->ref_epoch = c.epoch;
	hash_volume(f, f->ref);
}

struct parked {
	struct intent_wait wait;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool ready;
	int err;
};

static void on_ready(struct intent_wait *w, int err)
{
	struct parked *p = (struct parked *)((char *)w - offsetof(struct parked, wait));

	pthread_mutex_lock(&p->lock);
	p->ready = true;
	p->err = err;
	pthread_cond_broadcast(&p->cond);
	pthread_mutex_unlock(&p->lock);
}

/* One write as the server does it: begin (maybe parked), data, end. */
static void tracked_write(struct tracker *t, int fd, uint64_t off, uint8_t fill, bool *parked)
{
	struct parked p = { .wait.ready = on_ready };
	uint8_t buf[4096];
	int rc;

	pthread_mutex_init(&p.lock, NULL);
	pthread_cond_init(&p.cond, NULL);
	memset(buf, fill, sizeof(buf));
	rc = tracker_write_begin(t, off, sizeof(buf), &p.wait);
	if (parked)
		*parked = rc == 1;
	if (rc == 1) {
		pthread_mutex_lock(&p.lock);
		while (!p.ready)
			pthread_cond_wait(&p.cond, &p.lock);
		rc = p.err;
		pthread_mutex_unlock(&p.lock);
	}
	assert_int_equal(rc, 0);
	assert_int_equal(file_pwrite_full(fd, buf, sizeof(buf), off), 0);
	tracker_write_end(t, off, sizeof(buf));
	pthread_cond_destroy(&p.cond);
	pthread_mutex_destroy(&p.lock);
}

struct writer {
	pthread_t thread;
	struct fixture *f;
	uint64_t off;
	uint8_t fill;
	bool parked;
	bool done;
};

static void *writer_main(void *arg)
{
	struct writer *w = arg;

	tracked_write(w->f->t, w->f->vol->fd, w->off, w->fill, &w->parked);
	__atomic_store_n(&w->done, true, __ATOMIC_SEQ_CST);
	return NULL;
}

static void writer_start(struct writer *w, struct fixture *f, uint64_t off, uint8_t fill)
{
	w->f = f;
	w->off = off;
	w->fill = fill;
	w->done = false;
	assert_int_equal(pthread_create(&w->thread, NULL, writer_main, w), 0);
}

static void nudge(void *arg)
{
	tracker_nudge(arg);
}

/* Kill -9 (nothing more is persisted; the page cache survives), then
 * start again, as a restarted server would. */
static void crash_and_recover(struct fixture *f)
{
	tracker_abandon(f->t);
	f->t = NULL;
	open_tracker(f, false);
}

/* I1 against the test's reference; `must_differ` is the premise. */
static void assert_reported(struct fixture *f, uint64_t must_differ_off)
{
	uint64_t now[NBLOCKS];
	const struct changemap *cm = tracker_map(f->t);
	unsigned missed = 0;

	hash_volume(f, now);
	assert_true(now[must_differ_off / G] != f->ref[must_differ_off / G]);
	for (uint64_t b = 0; b < NBLOCKS; b++) {
		if (now[b] == f->ref[b])
			continue;
		if (atomic_load(&cm->epoch[b]) <= f->ref_epoch) {
			fprintf(stderr, "block %llu changed since the checkpoint but is not reported\n",
				(unsigned long long)b);
			missed++;
		}
	}
	assert_int_equal(missed, 0);
}

/*
 * The clearer checks a region idle, then a writer runs its whole write
 * (begin, data, end) before the clearer looks at the in-flight count.
 * The region must not be cleared: that write's mark is not persisted.
 */
static void test_write_completes_inside_clear_check(void **state)
{
	struct fixture *f = *state;

	tracked_write(f->t, f->vol->fd, 0, 1, NULL);
	checkpoint(f, "c1");
	gate_arm("intent.clear.idle_seen");
	assert_true(gate_wait(nudge, f->t));	/* the flusher stopped in the check */

	tracked_write(f->t, f->vol->fd, 3 * MIB, 2, NULL);	/* same region */

	gate_pass("tracker.flush.done");	/* let the clearer go on... */
	assert_true(gate_wait(NULL, NULL));	/* ...to the end of its turn */
	gate_release();

	crash_and_recover(f);
	assert_reported(f, 3 * MIB);
}

/*
 * W1 loads the open epoch, a checkpoint closes it, W2 marks the same
 * block in the new epoch, then W1 stores its stale epoch.  The block
 * must stay changed since the checkpoint, live and after a restart.
 */
static void test_stale_epoch_never_lowers(void **state)
{
	struct fixture *f = *state;
	struct writer w1;

	tracked_write(f->t, f->vol->fd, 5 * MIB, 1, NULL);	/* region durable */
	gate_arm("tracker.end.epoch_loaded");
	writer_start(&w1, f, 10 * MIB, 2);
	assert_true(gate_wait(NULL, NULL));	/* W1 holds the old epoch */

	checkpoint(f, "c1");
	tracked_write(f->t, f->vol->fd, 10 * MIB, 3, NULL);	/* W2, after it */

	gate_release();
	pthread_join(w1.thread, NULL);
	assert_reported(f, 10 * MIB);

	struct volume_identity id;
	identity(f, &id);
	assert_int_equal(tracker_close(f->t, &id), 0);
	f->t = NULL;
	open_tracker(f, false);
	assert_reported(f, 10 * MIB);
}

/*
 * The committer has written a clear of a region but not yet told the
 * in-memory states; a writer arrives for that region meanwhile.  It must
 * wait for a commit that sets the region again, not be let go by the
 * clear.
 */
static void test_writer_arrives_during_clear_commit(void **state)
{
	struct fixture *f = *state;
	struct writer w;

	tracked_write(f->t, f->vol->fd, 70 * MIB, 1, NULL);	/* region 1 */
	checkpoint(f, "c1");
	gate_arm("intent.commit.written");
	assert_true(gate_wait(nudge, f->t));	/* a commit clearing region 1 */

	writer_start(&w, f, 71 * MIB, 2);
	usleep(100000);
	assert_false(__atomic_load_n(&w.done, __ATOMIC_SEQ_CST)); /* parked, not let through */

	gate_release();
	pthread_join(w.thread, NULL);
	assert_true(w.parked);

	crash_and_recover(f);
	assert_reported(f, 71 * MIB);
}

/*
 * The flusher has taken a map page's dirty flag but not yet copied it
 * when a writer marks a block of that page.  The mark must reach the
 * disk before the region's intent can be cleared.
 */
static void test_mark_while_page_is_persisted(void **state)
{
	struct fixture *f = *state;

	tracked_write(f->t, f->vol->fd, 130 * MIB, 1, NULL);	/* region 2 */
	checkpoint(f, "c1");
	gate_arm("mapfile.persist.page_taken");
	assert_true(gate_wait(nudge, f->t));

	tracked_write(f->t, f->vol->fd, 131 * MIB, 2, NULL);	/* same page */
	gate_release();

	/* Let the region go idle and be cleared, turn by turn. */
	for (int turn = 0; turn < 4; turn++) {
		gate_arm("tracker.flush.done");
		assert_true(gate_wait(nudge, f->t));
		gate_release();
	}
	struct tracker_info info;
	tracker_info(f->t, &info);
	assert_int_equal(info.regions_set, 0);	/* the premise: the intent is gone */

	crash_and_recover(f);
	assert_reported(f, 131 * MIB);
}

/*
 * A write in flight across a checkpoint (begun before, ended after)
 * belongs after it.
 */
static void test_write_in_flight_across_checkpoint(void **state)
{
	struct fixture *f = *state;
	struct writer w;

	tracked_write(f->t, f->vol->fd, 200 * MIB, 1, NULL);
	gate_arm("tracker.end.epoch_loaded");
	writer_start(&w, f, 201 * MIB, 2);
	assert_true(gate_wait(NULL, NULL));	/* data written, not yet ended */
	gate_release();
	pthread_join(w.thread, NULL);

	/* Now begun, checkpoint, data, end. */
	struct parked p = { .wait.ready = on_ready };
	uint8_t buf[4096];
	memset(buf, 9, sizeof(buf));
	assert_int_equal(tracker_write_begin(f->t, 202 * MIB, sizeof(buf), &p.wait), 0);
	checkpoint(f, "c1");
	assert_int_equal(file_pwrite_full(f->vol->fd, buf, sizeof(buf), 202 * MIB), 0);
	tracker_write_end(f->t, 202 * MIB, sizeof(buf));

	crash_and_recover(f);
	assert_reported(f, 202 * MIB);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_write_completes_inside_clear_check, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_stale_epoch_never_lowers, setup, teardown),
		cmocka_unit_test_setup_teardown(test_writer_arrives_during_clear_commit, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_mark_while_page_is_persisted, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_write_in_flight_across_checkpoint, setup,
						teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
