/*
 * Power cuts while checkpoints are deleted and the epochs renumbered.
 *
 * The real tracker runs over faultfs (the power-cut simulator).  A run
 * takes five checkpoints with writes between them, hashing every block at
 * each (the reference), then deletes c1 and c3: two renumberings in a row,
 * the second before the first one's translated pages were rewritten.
 *
 * The power goes out after the k-th metadata write or sync of that phase,
 * for k = 0, 1, 2, ... until a run gets through without the cut: every
 * durable step of both deletes and of what follows them.  From the cut on
 * nothing more reaches the disk; at the cut, faultfs loses or tears any
 * subset of what was not synced.  Recovery then opens the tracker as a
 * restarted server would, and for every checkpoint still there, every
 * block that differs from its reference must be reported changed since
 * it (invariant I1).  A delete that was acknowledged must stay done; one
 * that failed may have happened or not.  After that, one more delete
 * (c2) on the recovered metadata, with no fault, and the same check.
 *
 * Two ways to run the phase: offline (the CLI with no server: recover,
 * delete, delete, close; every step in order on one thread) and live (a
 * server: the deletes, then the flusher storing the translated pages).
 *
 * VOLTRACK_RENUMBER_SEED sets the seed (default: the time);
 * VOLTRACK_RENUMBER_STRIDE=n cuts only after every n-th call (default 1).
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "scenario.h"

/* Passes metadata I/O (and volume syncs) on to faultfs; once armed, until
 * `left` calls have gone by, and from then on the power is off: every
 * call fails and nothing lands. */
struct cutfs {
	struct vt_fsops ops;	/* first: the tracker sees only this */
	struct faultfs *ff;
	pthread_mutex_t lock;
	bool armed;
	long left;		/* calls still let through; < 0: never cut */
	unsigned calls;		/* calls let through since armed */
	bool fired;
};

static bool cut_now(struct cutfs *c)
{
	pthread_mutex_lock(&c->lock);
	bool off = c->armed && (c->fired || c->left == 0);
	if (off) {
		c->fired = true;
	} else if (c->armed) {
		c->calls++;
		if (c->left > 0)
			c->left--;
	}
	pthread_mutex_unlock(&c->lock);
	return off;
}

static void cut_arm(struct cutfs *c)
{
	pthread_mutex_lock(&c->lock);
	c->armed = true;
	pthread_mutex_unlock(&c->lock);
}

static bool cut_fired(struct cutfs *c)
{
	pthread_mutex_lock(&c->lock);
	bool fired = c->fired;
	pthread_mutex_unlock(&c->lock);
	return fired;
}

static int cut_pwrite(const struct vt_fsops *ops, int fd, const void *buf, size_t len,
		      uint64_t off)
{
	struct cutfs *c = (struct cutfs *)ops;

	if (cut_now(c))
		return -EIO;
	return c->ff->ops.pwrite(&c->ff->ops, fd, buf, len, off);
}

static int cut_fdatasync(const struct vt_fsops *ops, int fd)
{
	struct cutfs *c = (struct cutfs *)ops;

	if (cut_now(c))
		return -EIO;
	return c->ff->ops.fdatasync(&c->ff->ops, fd);
}

static struct reference *ref(struct scen *s, const char *name)
{
	for (unsigned i = 0; i < s->nrefs; i++)
		if (!strcmp(s->refs[i].name, name))
			return &s->refs[i];
	return NULL;
}

static int forget(struct scen *s, const char *name)
{
	struct reference *r = ref(s, name);
	int err = tracker_forget(s->t, name);

	r->forgotten = true;
	r->forget_acked = err == 0;
	return err;
}

/* Five checkpoints over writes in every region; some of the map persisted
 * and its intents cleared, the newest writes not. */
static void history(struct scen *s)
{
	check(s, checkpoint(s, "c1") == 0, "checkpoint c1");
	write_blocks(s, 10, 8);
	check(s, checkpoint(s, "c2") == 0, "checkpoint c2");
	write_blocks(s, REGION_BLOCKS + 10, 8);
	check(s, checkpoint(s, "c3") == 0, "checkpoint c3");
	write_blocks(s, 2 * REGION_BLOCKS + 10, 8);
	write_blocks(s, 12, 2);
	check(s, wait_quiet(s, 3000), "premise: the map persisted and intents cleared");
	check(s, checkpoint(s, "c4") == 0, "checkpoint c4");
	write_blocks(s, 40, 6);
	check(s, checkpoint(s, "c5") == 0, "checkpoint c5");
	write_blocks(s, 3 * REGION_BLOCKS + 5, 4);
	write_blocks(s, REGION_BLOCKS + 12, 3);
}

/* One run with the power cut after `k` calls (k < 0: no cut).  Returns
 * whether the cut fired. */
static bool run(const char *mode, bool live, long k, uint64_t seed, unsigned *calls)
{
	struct scen sc, *s = &sc;
	struct verdict v;
	struct volume_identity before;
	struct cutfs cut = { .ops = vt_fsops_posix, .left = k };
	char label[64];
	int e1 = 0, e2 = 0, e3 = 0;

	cut.ops.pwrite = cut_pwrite;
	cut.ops.fdatasync = cut_fdatasync;

	snprintf(label, sizeof(label), "%s, cut after %ld call(s)", mode, k);
	if (k < 0)
		snprintf(label, sizeof(label), "%s, no cut", mode);
	begin(s, label, seed);
	cut.ff = &s->ff;
	pthread_mutex_init(&cut.lock, NULL);
	metadir_set_fsops(s->md, &cut.ops);
	open_live(s, live ? 60000 : PERSIST_MS, IDLE_TICKS);
	history(s);

	if (!live) {
		kill_tracker(s);
		cut_arm(&cut);
		int err = open_tracker(s, false, 1000, IDLE_TICKS, NULL);
		check(s, err == 0 || cut_fired(&cut), "offline open: %s", errname(err));
		if (!err) {
			e1 = forget(s, "c1");
			e2 = forget(s, "c3");
			struct volume_identity id;
			volume_identity_settled(s->vol, &id);
			e3 = tracker_close(s->t, &id);
			s->t = NULL;
		}
	} else {
		cut_arm(&cut);
		e1 = forget(s, "c1");
		e2 = forget(s, "c3");
		/* the flusher stores the translated pages and clears intents */
		wait_quiet(s, cut_fired(&cut) ? 50 : 3000);
		kill_tracker(s);
	}
	bool fired = cut_fired(&cut);
	if (!fired) {
		check(s, e1 == 0 && e2 == 0 && e3 == 0, "without a cut everything succeeds "
		      "(%s, %s, %s)", errname(e1), errname(e2), errname(e3));
		*calls = cut.calls;
	}
	note("deletes: %s, %s; %s", errname(e1), errname(e2),
	     live ? "server killed" : e3 ? "close failed" : "closed");
	metadir_set_fsops(s->md, &s->ff.ops);
	power_cut(s, false, &before);
	/* A new process: the volume's latched sync error (the cut failed
	 * its syncs) went with the old one. */
	volume_close(s->vol);
	if (volume_open(vol_path, 0, &s->vol)) {
		printf("cannot open the volume again\n");
		exit(2);
	}
	recover_and_verify(s, &before, &v);
	if (k < 0)
		check(s, kept_history(&v), "premise: without a cut the history is kept (start %s)",
		      tracker_start_name(v.start));

	/* One more delete on what the recovery left, then the same check. */
	int err = open_tracker(s, false, 1000, IDLE_TICKS, &before);
	check(s, err == 0, "offline open after the recovery: %s", errname(err));
	if (!err) {
		struct volume_identity id;
		err = forget(s, "c2");
		check(s, err == 0 || err == -ENOENT, "delete c2 after the recovery: %s",
		      errname(err));
		volume_identity_settled(s->vol, &id);
		remember_generation(s);
		check(s, tracker_close(s->t, &id) == 0, "clean close after the delete");
		s->t = NULL;
		recover_and_verify(s, NULL, &v);
		check(s, kept_history(&v), "premise: the delete after recovery kept the history "
		      "(start %s)", tracker_start_name(v.start));
	}
	pthread_mutex_destroy(&cut.lock);
	end(s);
	return fired;
}

int main(void)
{
	const char *seed_env = getenv("VOLTRACK_RENUMBER_SEED");
	uint64_t seed = seed_env ? strtoull(seed_env, NULL, 0) : (uint64_t)time(NULL);
	const char *stride_env = getenv("VOLTRACK_RENUMBER_STRIDE");
	long stride = stride_env && atol(stride_env) > 0 ? atol(stride_env) : 1;
	uint64_t t0 = mono_ms();
	unsigned k = 0;
#define NEXT_SEED() (seed + 0x9e3779b97f4a7c15ull * ++k)

	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("power cuts during deletes, seed %llu (VOLTRACK_RENUMBER_SEED)\n\n",
	       (unsigned long long)seed);
	make_volume(seed);
	for (int live = 0; live < 2; live++) {
		const char *mode = live ? "live" : "offline";
		unsigned calls = 0, cuts = 0;
		run(mode, live, -1, NEXT_SEED(), &calls);
		check(NULL, calls > 8, "premise: the %s deletes write and sync (%u calls)", mode,
		      calls);
		/* every step, and a few beyond in case a run does more */
		for (long cut = 0; cut < 200; cut += stride) {
			bool fired = run(mode, live, cut, NEXT_SEED(), &calls);
			cuts += fired;
			if (!fired && cut >= (long)calls)
				break;
		}
		printf("%s: %u call(s) in the phase without a cut; %u run(s) cut\n\n", mode,
		       calls, cuts);
		check(NULL, cuts >= calls / stride, "premise: every %s step was cut (%u of %u)",
		      stride > 1 ? "n-th" : "", cuts, calls);
	}
	printf("%u scenario(s), %u failed%s%s%s; %.1f s\n", scenarios, scenarios_failed,
	       scenarios_failed ? " (" : "", failed_labels, scenarios_failed ? ")" : "",
	       (double)(mono_ms() - t0) / 1000.0);
	printf("%u passed, %u failed\n", passed, failed);
	return failed ? 1 : 0;
}
