/*
 * Forgetting checkpoints and renumbering epochs, through the tracker:
 * writers and readers racing the renumbering pass, driven one step at a
 * time through pause points (src/pause.h), the numbering as it is stored
 * and loaded again, a thousand checkpoints in a rolling window, and
 * epochs that run out.
 *
 * References are the test's own: a hash of every block at each
 * checkpoint (after a crash: every block that differs must be reported,
 * invariant I1), or, where nothing crashed, the exact set of blocks the
 * test wrote since (the answer must be exactly that).  Each test asserts
 * its premise: the pause was reached, the race left the value it is
 * about, the block really differs.
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

#include "checkpoints.h"
#include "metablock.h"
#include "metadir.h"
#include "pause.h"
#include "tracker.h"
#include "testvol.h"
#include "volume.h"

#define VOL_SIZE (128ull << 20)	/* two 64 MiB intent regions */
#define G (8u << 10)
#define NBLOCKS (VOL_SIZE / G)	/* 16384: five map pages */
#define PAGE_BYTES ((uint64_t)CM_PAGE_ENTRIES * G)
#define MAX_REFS 8

/* ---- stops: any number of named points, each stopping one thread ---- */

#define MAX_STOPS 16
static struct {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct stop {
		const char *point;
		bool reached, released;
	} s[MAX_STOPS];
} stops = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, { { 0 } } };

static void stop_hook(const char *point, void *arg)
{
	pthread_mutex_lock(&stops.lock);
	for (int i = MAX_STOPS - 1; i >= 0; i--) {
		struct stop *s = &stops.s[i];
		if (!s->point || s->reached || strcmp(s->point, point) != 0)
			continue;
		s->reached = true; /* one-shot: later threads pass */
		pthread_cond_broadcast(&stops.cond);
		while (!s->released)
			pthread_cond_wait(&stops.cond, &stops.lock);
		break;
	}
	pthread_mutex_unlock(&stops.lock);
}

/* The newest arming of a point. */
static struct stop *stop_find(const char *point)
{
	for (int i = MAX_STOPS - 1; i >= 0; i--)
		if (stops.s[i].point && strcmp(stops.s[i].point, point) == 0)
			return &stops.s[i];
	return NULL;
}

/* Arm a point: the next thread to reach it stops there until go().  Each
 * arming takes a fresh entry, so a thread just released never stops again. */
static void stop_at(const char *point)
{
	pthread_mutex_lock(&stops.lock);
	int i = 0;
	while (i < MAX_STOPS && stops.s[i].point)
		i++;
	assert_true(i < MAX_STOPS);
	stops.s[i] = (struct stop){ .point = point };
	pthread_mutex_unlock(&stops.lock);
}

/* Wait up to 5 s for a thread at the point; nudge the tracker meanwhile
 * when given one (for points on the flusher). */
static bool stopped(const char *point, struct tracker *nudge)
{
	bool reached = false;

	for (int i = 0; i < 500 && !reached; i++) {
		if (nudge)
			tracker_nudge(nudge);
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 10000000;
		if (ts.tv_nsec >= 1000000000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000;
		}
		pthread_mutex_lock(&stops.lock);
		struct stop *s = stop_find(point);
		if (s && !s->reached)
			pthread_cond_timedwait(&stops.cond, &stops.lock, &ts);
		reached = s && s->reached;
		pthread_mutex_unlock(&stops.lock);
	}
	return reached;
}

static void go(const char *point)
{
	pthread_mutex_lock(&stops.lock);
	struct stop *s = stop_find(point);
	if (s)
		s->released = true;
	pthread_cond_broadcast(&stops.cond);
	pthread_mutex_unlock(&stops.lock);
}

static void go_all(void)
{
	pthread_mutex_lock(&stops.lock);
	for (int i = 0; i < MAX_STOPS; i++)
		stops.s[i].released = true;
	pthread_cond_broadcast(&stops.cond);
	pthread_mutex_unlock(&stops.lock);
}

static void stops_clear(void)
{
	pthread_mutex_lock(&stops.lock);
	memset(stops.s, 0, sizeof(stops.s));
	pthread_mutex_unlock(&stops.lock);
}

/* ---- the fixture ---- */

struct ref {
	char name[32];
	uint64_t *hash;
	bool live;
};

struct fixture {
	struct testvol tv;
	struct tracker *t;
	struct ref refs[MAX_REFS];
	unsigned nrefs;
	uint8_t fill;
	unsigned idle_ticks;
};

static void open_tracker(struct fixture *f, bool live)
{
	struct tracker_config cfg;
	struct volume_identity id;

	tracker_config_defaults(&cfg);
	cfg.persist_interval_ms = 3600000; /* the flusher runs when nudged */
	cfg.idle_ticks = f->idle_ticks;
	cfg.lease_ms = 3600000;
	cfg.volume = f->tv.vol;
	assert_int_equal(volume_identity(f->tv.vol, &id), 0);
	assert_int_equal(tracker_open(f->tv.md, &id, live, &cfg, &f->t), 0);
}

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));

	assert_int_equal(testvol_create(&f->tv, "voltrack-renumber", VOL_SIZE, G, NULL), 0);
	vt_pause_set_hook(stop_hook, NULL);
	f->idle_ticks = 1;
	open_tracker(f, true);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	/* Released stops let every thread through, also one reaching a
	 * point only now; forget them once no thread can be in one. */
	go_all();
	if (f->t)
		tracker_abandon(f->t);
	vt_pause_set_hook(NULL, NULL);
	stops_clear();
	for (unsigned i = 0; i < f->nrefs; i++)
		free(f->refs[i].hash);
	testvol_destroy(&f->tv);
	free(f);
	return 0;
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

/* One 4 KiB write of new content as the server makes it: begin (maybe
 * parked until its intent is durable), data, end. */
static void write_at(struct fixture *f, uint64_t off)
{
	struct parked p = { .wait.ready = on_ready };
	uint8_t buf[4096];
	int rc;

	pthread_mutex_init(&p.lock, NULL);
	pthread_cond_init(&p.cond, NULL);
	memset(buf, ++f->fill, sizeof(buf));
	buf[0] = (uint8_t)(off >> 12); /* never the same as before */
	buf[1] = (uint8_t)(off >> 20);
	rc = tracker_write_begin(f->t, off, sizeof(buf), &p.wait);
	if (rc == 1) {
		pthread_mutex_lock(&p.lock);
		while (!p.ready)
			pthread_cond_wait(&p.cond, &p.lock);
		rc = p.err;
		pthread_mutex_unlock(&p.lock);
	}
	assert_int_equal(rc, 0);
	assert_int_equal(file_pwrite_full(f->tv.vol->fd, buf, sizeof(buf), off), 0);
	tracker_write_end(f->t, off, sizeof(buf));
	pthread_cond_destroy(&p.cond);
	pthread_mutex_destroy(&p.lock);
}

/* One whole flusher turn (persist, clamp, intents), started now. */
static void flusher_turn(struct fixture *f)
{
	stop_at("tracker.flush.done");
	assert_true(stopped("tracker.flush.done", f->t));
	go("tracker.flush.done");
}

static void hash_volume(struct fixture *f, uint64_t *out)
{
	assert_int_equal(testvol_hash(&f->tv, G, NBLOCKS, out), 0);
}

static struct ref *checkpoint(struct fixture *f, const char *name)
{
	struct ref *r = &f->refs[f->nrefs++];

	assert_int_equal(tracker_checkpoint(f->t, name, NULL), 0);
	snprintf(r->name, sizeof(r->name), "%s", name);
	r->hash = malloc(sizeof(uint64_t) * NBLOCKS);
	hash_volume(f, r->hash);
	r->live = true;
	return r;
}

static void forget(struct fixture *f, const char *name)
{
	assert_int_equal(tracker_forget(f->t, name), 0);
	for (unsigned i = 0; i < f->nrefs; i++)
		if (!strcmp(f->refs[i].name, name))
			f->refs[i].live = false;
}

static uint8_t epoch_of(struct fixture *f, const char *name)
{
	uint8_t e;

	assert_int_equal(tracker_checkpoint_epoch(f->t, name, &e), 0);
	return e;
}

static uint8_t map_at(struct fixture *f, uint64_t off)
{
	return atomic_load(&tracker_map(f->t)->epoch[off / G]);
}

static uint8_t open_epoch(struct fixture *f)
{
	struct tracker_info info;

	tracker_info(f->t, &info);
	return info.open_epoch;
}

/*
 * Every live reference against the map: each block that differs from it
 * must be reported (I1).  With `exact`, also nothing else: no crash and
 * no intent set, so the map alone answers and must be exact.
 */
static void check_refs(struct fixture *f, bool exact)
{
	uint64_t *now = malloc(sizeof(uint64_t) * NBLOCKS);
	const struct changemap *cm = tracker_map(f->t);

	hash_volume(f, now);
	for (unsigned i = 0; i < f->nrefs; i++) {
		struct ref *r = &f->refs[i];
		if (!r->live)
			continue;
		uint8_t e = epoch_of(f, r->name);
		uint64_t missed = 0, over = 0, differ = 0;
		for (uint64_t b = 0; b < NBLOCKS; b++) {
			bool d = now[b] != r->hash[b], rep = atomic_load(&cm->epoch[b]) > e;
			differ += d;
			missed += d && !rep;
			over += rep && !d;
		}
		if (missed || (exact && over))
			fprintf(stderr, "%s (epoch %u): %llu differ, %llu missed, %llu over\n",
				r->name, e, (unsigned long long)differ, (unsigned long long)missed,
				(unsigned long long)over);
		assert_int_equal(missed, 0);
		if (exact)
			assert_int_equal(over, 0);
	}
	free(now);
}

static void crash_and_recover(struct fixture *f)
{
	go_all();
	tracker_abandon(f->t);
	f->t = NULL;
	open_tracker(f, false);
}

/* c1, c2, c3 with writes before and between them, on every map page. */
static void three_checkpoints(struct fixture *f)
{
	for (int k = 1; k <= 3; k++) {
		char name[8];
		for (uint64_t p = 0; p < 5; p++)
			write_at(f, p * PAGE_BYTES + (uint64_t)k * 3 * G);
		snprintf(name, sizeof(name), "c%d", k);
		checkpoint(f, name);
	}
	write_at(f, 2 * PAGE_BYTES + 40 * G);
}

struct forgetter {
	pthread_t thread;
	struct fixture *f;
	const char *name;
	int err;
};

static void *forget_main(void *arg)
{
	struct forgetter *fg = arg;

	fg->err = tracker_forget(fg->f->t, fg->name);
	return NULL;
}

static void forget_start(struct forgetter *fg, struct fixture *f, const char *name)
{
	fg->f = f;
	fg->name = name;
	assert_int_equal(pthread_create(&fg->thread, NULL, forget_main, fg), 0);
}

static void forget_join(struct forgetter *fg)
{
	pthread_join(fg->thread, NULL);
	assert_int_equal(fg->err, 0);
	for (unsigned i = 0; i < fg->f->nrefs; i++)
		if (!strcmp(fg->f->refs[i].name, fg->name))
			fg->f->refs[i].live = false;
}

struct writer {
	pthread_t thread;
	struct fixture *f;
	uint64_t off[2];
	unsigned n;
};

static void *writer_main(void *arg)
{
	struct writer *w = arg;

	for (unsigned i = 0; i < w->n; i++)
		write_at(w->f, w->off[i]);
	return NULL;
}

/*
 * A writer loads the open epoch, the renumbering runs to its end, then
 * the writer marks: the block holds the old open epoch, above the new
 * one.  It must be reported changed since every remaining checkpoint;
 * the next persist must clamp it, so that a checkpoint taken after the
 * write does not count it; and a restart must keep I1.
 */
static void test_writer_marks_after_the_pass(void **state)
{
	struct fixture *f = *state;
	struct writer w = { .f = f, .off = { 4 * PAGE_BYTES + 7 * G }, .n = 1 };

	three_checkpoints(f);
	uint8_t old_open = open_epoch(f);
	stop_at("tracker.end.epoch_loaded");
	assert_int_equal(pthread_create(&w.thread, NULL, writer_main, &w), 0);
	assert_true(stopped("tracker.end.epoch_loaded", NULL));
	flusher_turn(f);	/* nothing dirty is left for the forget to store */
	stop_at("mapfile.persist.page_taken"); /* the flusher's next persist */

	forget(f, "c1");
	assert_int_equal(open_epoch(f), old_open - 1);
	go("tracker.end.epoch_loaded");
	pthread_join(w.thread, NULL);
	/* the premise: a value from the old numbering, above the open epoch */
	assert_int_equal(map_at(f, w.off[0]), old_open);
	check_refs(f, true);

	/* The flusher (nudged by the forget) writes it, sees it, clamps it. */
	assert_true(stopped("mapfile.persist.page_taken", NULL));
	stop_at("tracker.flush.done");
	go("mapfile.persist.page_taken");
	assert_true(stopped("tracker.flush.done", NULL));
	go("tracker.flush.done");
	assert_int_equal(map_at(f, w.off[0]), open_epoch(f));

	/* A checkpoint after the write: the block is not changed since it. */
	checkpoint(f, "c4");
	assert_false(map_at(f, w.off[0]) > epoch_of(f, "c4"));
	write_at(f, 3 * PAGE_BYTES);
	check_refs(f, true);
	crash_and_recover(f);
	check_refs(f, false);
}

/*
 * The renumbering pass stops after its first map page; a writer marks a
 * block of that page and one of the last page, with the old open epoch
 * (the new one is published only after the pass).  The block behind the
 * pass keeps the old value (over-reported, then clamped), the one ahead
 * is translated with the rest: both are reported, none is lost.
 */
static void test_writer_marks_during_the_pass(void **state)
{
	struct fixture *f = *state;
	struct forgetter fg;
	struct writer w = { .f = f, .off = { 100 * G, 4 * PAGE_BYTES + 9 * G }, .n = 2 };

	three_checkpoints(f);
	uint8_t old_open = open_epoch(f);
	stop_at("epochs.pass.page");
	forget_start(&fg, f, "c2");
	assert_true(stopped("epochs.pass.page", NULL));
	stop_at("mapfile.persist.page_taken"); /* hold the flusher's clamp back */

	assert_int_equal(pthread_create(&w.thread, NULL, writer_main, &w), 0);
	pthread_join(w.thread, NULL);	/* writers never wait for the pass */
	go("epochs.pass.page");
	forget_join(&fg);
	check_refs(f, true);
	assert_int_equal(open_epoch(f), old_open - 1);
	assert_int_equal(map_at(f, w.off[0]), old_open);	/* behind the pass */
	assert_int_equal(map_at(f, w.off[1]), old_open - 1);	/* translated */
	crash_and_recover(f);
	check_refs(f, false);
}

struct reader {
	pthread_t thread;
	struct fixture *f;
	uint64_t ticket;
};

static void *reader_main(void *arg)
{
	struct reader *r = arg;

	r->ticket = tracker_read_begin(r->f->t);
	return NULL;
}

/* A reader arriving while the pass runs waits for it, and then holds a
 * ticket of the new numbering. */
static void test_reader_waits_for_the_pass(void **state)
{
	struct fixture *f = *state;
	struct forgetter fg;
	struct reader r = { .f = f };

	three_checkpoints(f);
	uint64_t before = tracker_read_begin(f->t);
	stop_at("epochs.pass.page");
	stop_at("epochs.read.wait");
	forget_start(&fg, f, "c1");
	assert_true(stopped("epochs.pass.page", NULL));
	assert_int_equal(pthread_create(&r.thread, NULL, reader_main, &r), 0);
	assert_true(stopped("epochs.read.wait", NULL));	/* it saw the pass */
	go("epochs.read.wait");
	go("epochs.pass.page");
	forget_join(&fg);
	pthread_join(r.thread, NULL);
	assert_int_equal(r.ticket, before + 2);
	assert_false(tracker_read_retry(f->t, r.ticket));
	assert_true(tracker_read_retry(f->t, before));
	check_refs(f, true);
}

/* Blocks changed since `name`, scanned from block `from` to `to`. */
static uint64_t count_changed(struct fixture *f, uint8_t epoch, uint64_t from, uint64_t to,
			      const uint64_t *ref, const uint64_t *now, uint64_t *missed)
{
	const struct changemap *cm = tracker_map(f->t);
	uint64_t n = 0;

	for (uint64_t b = from; b < to; b++) {
		bool rep = atomic_load(&cm->epoch[b]) > epoch;
		n += rep;
		*missed += now[b] != ref[b] && !rep;
	}
	return n;
}

/*
 * A reader looks c2 up and scans half the map; a renumbering runs; the
 * reader scans the rest with the epoch it had.  Read so, the second half
 * under-reports (the premise); the ticket says to start over, and the
 * second reading is exact.
 */
static void test_reader_across_the_pass_starts_over(void **state)
{
	struct fixture *f = *state;
	struct forgetter fg;
	uint64_t *now = malloc(sizeof(uint64_t) * NBLOCKS);
	const struct ref *c2 = NULL;

	three_checkpoints(f);
	for (unsigned i = 0; i < f->nrefs; i++)
		if (!strcmp(f->refs[i].name, "c2"))
			c2 = &f->refs[i];
	hash_volume(f, now);

	uint64_t ticket = tracker_read_begin(f->t), missed = 0;
	uint8_t e = epoch_of(f, "c2");
	count_changed(f, e, 0, NBLOCKS / 2, c2->hash, now, &missed);
	forget_start(&fg, f, "c1");
	forget_join(&fg);
	count_changed(f, e, NBLOCKS / 2, NBLOCKS, c2->hash, now, &missed);
	assert_true(missed > 0);		/* what a reader without a ticket gets */
	assert_true(tracker_read_retry(f->t, ticket));

	missed = 0;
	ticket = tracker_read_begin(f->t);
	e = epoch_of(f, "c2");
	count_changed(f, e, 0, NBLOCKS, c2->hash, now, &missed);
	assert_false(tracker_read_retry(f->t, ticket));
	assert_int_equal(missed, 0);
	free(now);
	check_refs(f, true);
}

/* A clean close, with an identity the next open can trust. */
static void settle_and_close(struct fixture *f)
{
	struct volume_identity id;

	assert_int_equal(volume_identity_settled(f->tv.vol, &id), 0);
	assert_int_equal(tracker_close(f->t, &id), 0);
	f->t = NULL;
}

/*
 * A forget whose translated pages never reach the disk (an offline
 * command killed right after it): the next open reads the pages through
 * the stored translation.  Then a second forget, killed the same way,
 * before any page was rewritten: its first step must store the pages in
 * the numbering between, or the one stored translation would not be
 * enough.  Nothing crashed the volume, so the answers must be exact.
 */
static void test_forgets_killed_before_the_rewrite(void **state)
{
	struct fixture *f = *state;

	three_checkpoints(f);
	checkpoint(f, "c4");
	write_at(f, PAGE_BYTES + 50 * G);
	settle_and_close(f);

	for (int round = 0; round < 2; round++) {
		open_tracker(f, false);
		if (round) {
			/* the premise: the load translated pages, and knows it */
			const struct changemap *cm = tracker_map(f->t);
			bool dirty = false;
			for (uint32_t p = 0; p < cm->npages; p++)
				dirty |= atomic_load(&cm->page_dirty[p]);
			assert_true(dirty);
		}
		check_refs(f, true);
		forget(f, round ? "c2" : "c1");
		check_refs(f, true);
		tracker_abandon(f->t);	/* nothing more is stored */
		f->t = NULL;
	}
	open_tracker(f, false);
	struct tracker_info info;
	tracker_info(f->t, &info);
	assert_int_equal(info.start, TRACKER_START_CLEAN);
	assert_int_equal(info.checkpoints, 2);
	check_refs(f, true);
}

/*
 * A thousand checkpoints, keeping the newest 30, with writes between.
 * The reference: the step at which the test last wrote each block.  After
 * every step, every live checkpoint's answer must be exactly the blocks
 * written since it; every 250 steps the tracker is closed and opened again.
 */
static void test_thousand_checkpoints(void **state)
{
	struct fixture *f = *state;
	static uint32_t last[NBLOCKS];
	uint64_t x = 12345;

	/* intents stay set: no commit per step */
	tracker_abandon(f->t);
	f->idle_ticks = 1000000;
	open_tracker(f, true);
	memset(last, 0, sizeof(last));
	for (uint32_t step = 1; step <= 1000; step++) {
		char name[16];
		for (int k = 0; k < 3; k++) {
			x = x * 6364136223846793005ull + 1442695040888963407ull;
			uint64_t b = (x >> 33) % NBLOCKS;
			write_at(f, b * G);
			last[b] = step;
		}
		snprintf(name, sizeof(name), "k%u", step);
		assert_int_equal(tracker_checkpoint(f->t, name, NULL), 0);
		if (step > 30) {
			snprintf(name, sizeof(name), "k%u", step - 30);
			assert_int_equal(tracker_forget(f->t, name), 0);
		}
		assert_true(open_epoch(f) <= 31);
		if (step % 50 && step != 1000)
			continue;
		const struct changemap *cm = tracker_map(f->t);
		for (uint32_t s = step > 30 ? step - 29 : 1; s <= step; s++) {
			snprintf(name, sizeof(name), "k%u", s);
			uint8_t e = epoch_of(f, name);
			for (uint64_t b = 0; b < NBLOCKS; b++)
				assert_int_equal(atomic_load(&cm->epoch[b]) > e, last[b] > s);
		}
		if (step % 250 == 0 && step != 1000) {
			settle_and_close(f);
			open_tracker(f, true);
			struct tracker_info info;
			tracker_info(f->t, &info);
			assert_int_equal(info.start, TRACKER_START_CLEAN);
			assert_int_equal(info.checkpoints, 30);
		}
	}
	struct checkpoint_list l;
	tracker_checkpoints(f->t, &l);
	assert_int_equal(l.n, 30);
	assert_string_equal(l.items[0].name, "k971");
	assert_true(l.numbering.count >= 970);
}

/* ---- epochs that run out: failed checkpoint stores leave gaps ---- */

struct failsync {
	struct vt_fsops ops;	/* first: the tracker sees only this */
	int dirfd;
	_Atomic int fail;	/* fdatasyncs of the checkpoint list still to fail */
};

static int fs_pwrite(const struct vt_fsops *ops, int fd, const void *buf, size_t len,
		     uint64_t off)
{
	return vt_fsops_posix.pwrite(&vt_fsops_posix, fd, buf, len, off);
}

static int fs_fdatasync(const struct vt_fsops *ops, int fd)
{
	struct failsync *fs = (struct failsync *)ops;
	struct stat st, named;

	if (atomic_load(&fs->fail) > 0 && fstat(fd, &st) == 0 &&
	    fstatat(fs->dirfd, CHECKPOINTS_NAME, &named, 0) == 0 && st.st_ino == named.st_ino) {
		atomic_fetch_sub(&fs->fail, 1);
		return -EIO;
	}
	return vt_fsops_posix.fdatasync(&vt_fsops_posix, fd);
}

/*
 * A checkpoint whose store fails still moves the open epoch on (it may
 * come back after a restart).  Enough of them and the open epoch reaches
 * the top with few checkpoints live; the next checkpoint must renumber
 * first and succeed, every answer unchanged.
 */
static void test_epochs_run_out(void **state)
{
	struct fixture *f = *state;
	struct failsync fs = { .ops = vt_fsops_posix };

	fs.ops.pwrite = fs_pwrite;
	fs.ops.fdatasync = fs_fdatasync;
	fs.dirfd = metadir_fd(f->tv.md);
	tracker_abandon(f->t);
	metadir_set_fsops(f->tv.md, &fs.ops);
	open_tracker(f, true);
	three_checkpoints(f);
	atomic_store(&fs.fail, 1000);
	int attempts = 0;
	while (open_epoch(f) < 255) {
		char name[16];
		snprintf(name, sizeof(name), "lost%d", attempts++);
		assert_int_equal(tracker_checkpoint(f->t, name, NULL), -EIO);
		write_at(f, (uint64_t)attempts * G);
	}
	atomic_store(&fs.fail, 0);
	assert_true(attempts > 200);	/* the premise: the gaps are real */
	check_refs(f, true);
	checkpoint(f, "after");
	assert_int_equal(epoch_of(f, "after"), 4);
	assert_int_equal(open_epoch(f), 5);
	write_at(f, 4 * PAGE_BYTES + 20 * G);
	check_refs(f, true);
	crash_and_recover(f);
	check_refs(f, false);
	tracker_abandon(f->t);
	f->t = NULL;
	metadir_set_fsops(f->tv.md, &vt_fsops_posix);
}

/* Forgetting what is not there, or a bad name, changes nothing. */
static void test_forget_refusals(void **state)
{
	struct fixture *f = *state;

	three_checkpoints(f);
	uint64_t ticket = tracker_read_begin(f->t);
	assert_int_equal(tracker_forget(f->t, "nope"), -ENOENT);
	assert_int_equal(tracker_forget(f->t, "bad name"), -EINVAL);
	assert_int_equal(tracker_forget(f->t, ""), -EINVAL);
	assert_false(tracker_read_retry(f->t, ticket));
	assert_int_equal(open_epoch(f), 4);
	forget(f, "c3");
	assert_int_equal(tracker_forget(f->t, "c3"), -ENOENT);
	assert_int_equal(open_epoch(f), 3);
	check_refs(f, true);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_writer_marks_after_the_pass, setup, teardown),
		cmocka_unit_test_setup_teardown(test_writer_marks_during_the_pass, setup, teardown),
		cmocka_unit_test_setup_teardown(test_reader_waits_for_the_pass, setup, teardown),
		cmocka_unit_test_setup_teardown(test_reader_across_the_pass_starts_over, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_forgets_killed_before_the_rewrite, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_thousand_checkpoints, setup, teardown),
		cmocka_unit_test_setup_teardown(test_epochs_run_out, setup, teardown),
		cmocka_unit_test_setup_teardown(test_forget_refusals, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
