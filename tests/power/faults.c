/*
 * Fault trials: invariant I1 when the tracker's own I/O fails.
 *
 * The real tracker runs over faultfs, which fails chosen metadata or
 * volume operations (EIO, short writes, failed fdatasyncs) and simulates
 * power cuts.  Each scenario injects one fault, asserts that it really
 * fired, then stops the tracker as a kill -9 does (tracker_abandon: the
 * page cache survives) or as a power cut does (faultfs_crash: unsynced
 * writes are lost or torn; a write whose writeback failed is always
 * lost), and recovers it as a restarted server would.
 *
 * The reference is independent of the tracker: at every checkpoint,
 * taken or attempted, the test hashes each block of the volume as it
 * stood.  After recovery, for every checkpoint that is still there,
 * every block whose content differs from its reference must be reported
 * changed since it (epoch > the checkpoint's epoch).  A checkpoint that
 * was acknowledged may only be gone together with a new generation; one
 * whose creation failed may be gone, or back, but if back it must be
 * right.
 *
 * Scenarios:
 *  a  the checkpoint list's fdatasync fails: the checkpoint may come back
 *     after a restart, and then every later write must count after it;
 *  b  after a kill, an offline command recovers, checkpoints and closes,
 *     then the power goes: the crashed run's page-cache writes must have
 *     been made durable before their intents went, or stay reported;
 *  c  the volume's fdatasync fails once: what it could not write back is
 *     lost at a power cut even though later syncs succeed, so it must
 *     stay reported, and the close must not record a clean stop;
 *  d  EIO, short writes and failed syncs on the intent file, the change
 *     map, the checkpoint list and the superblock (at close and at a
 *     live start), each followed by a kill and by a power cut.
 *
 * A power cut leaves the volume inode's ctime as the file system last
 * recorded it, while faultfs's own undoing of lost writes moves it; so
 * recovery after a cut is given the volume's identity from just before
 * the cut.
 *
 * VOLTRACK_FAULTS_SEED sets the seed (default: the time); each scenario
 * derives its own from it and prints it.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "crc32c.h"
#include "faultfs.h"
#include "metablock.h"
#include "metadir.h"
#include "tracker.h"
#include "volume.h"

#define VOL_SIZE (256ull << 20)		/* four 64 MiB intent regions */
#define GRAN (64u << 10)
#define NBLOCKS (VOL_SIZE / GRAN)
#define REGION_BLOCKS ((uint64_t)(64u << 20) / GRAN)
#define MAX_REFS 4

struct reference {
	char name[32];
	bool acked;			/* tracker_checkpoint() succeeded */
	uint64_t *hash;			/* each block's hash at that instant */
};

/* What a recovery found for one checkpoint. */
struct ref_result {
	bool present;
	uint64_t differ, missed, over;
};

struct verdict {
	enum tracker_start start;
	bool gen_changed;
	struct ref_result r[MAX_REFS];
};

struct scen {
	const char *label;
	uint64_t seed;
	struct faultfs ff;
	char meta[128];
	struct metadir *md;
	struct volume *vol;
	struct tracker *t;
	struct reference refs[MAX_REFS];
	unsigned nrefs;
	struct vt_uuid gen_at_stop;
	unsigned failed_before;
	/* parked writes */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool ready;
	int ready_err;
};

static char top_dir[64], vol_path[96];
static unsigned passed, failed, scenarios, scenarios_failed;
static char failed_labels[2048];

static void check(struct scen *s, bool ok, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void check(struct scen *s, bool ok, const char *fmt, ...)
{
	va_list ap;

	if (ok) {
		passed++;
		return;
	}
	failed++;
	printf("  FAIL [%s]: ", s ? s->label : "setup");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
}

static void note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void note(const char *fmt, ...)
{
	va_list ap;

	printf("  ");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
}

/* ---- the volume and the tracker ---- */

/*
 * The one place the tracker is told which volume it covers (and which
 * descriptor the test writes it through).
 */
static void config(struct scen *s, struct tracker_config *cfg, unsigned persist_ms,
		   unsigned idle_ticks)
{
	tracker_config_defaults(cfg);
	cfg->persist_interval_ms = persist_ms;
	cfg->idle_ticks = idle_ticks;
	cfg->volume = s->vol;
}

static int vol_fd(const struct scen *s)
{
	return s->vol->fd;
}

static uint64_t block_hash(const uint8_t *p)
{
	/* two independent CRCs: a collision would need both to agree */
	return ((uint64_t)crc32c(0, p, GRAN) << 32) | crc32c(0x5bd1e995, p, GRAN);
}

static void hash_volume(struct scen *s, uint64_t *out)
{
	uint8_t *buf = malloc(GRAN);

	for (uint64_t b = 0; b < NBLOCKS; b++) {
		if (file_pread_full(vol_fd(s), buf, GRAN, b * GRAN))
			memset(buf, 0xee, GRAN);
		out[b] = block_hash(buf);
	}
	free(buf);
}

static void msleep(unsigned ms)
{
	struct timespec ts = { (time_t)(ms / 1000), (long)(ms % 1000) * 1000000 };
	nanosleep(&ts, NULL);
}

static uint64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static const char *errname(int err)
{
	return err ? strerror(-err) : "ok";
}

/* A fresh metadata directory over the shared volume, closed cleanly. */
static void begin(struct scen *s, const char *label, uint64_t seed)
{
	static unsigned n;
	struct superblock sb = { 0 };
	struct volume_identity id;

	memset(s, 0, sizeof(*s));
	s->label = label;
	s->seed = seed;
	s->failed_before = failed;
	scenarios++;
	printf("[%s] seed %llu\n", label, (unsigned long long)seed);
	faultfs_init(&s->ff, seed);
	pthread_mutex_init(&s->lock, NULL);
	pthread_cond_init(&s->cond, NULL);
	snprintf(s->meta, sizeof(s->meta), "%s/meta-%u", top_dir, n++);
	if (volume_open(vol_path, 0, &s->vol) || metadir_open(s->meta, true, &s->md) ||
	    metadir_lock(s->md)) {
		printf("cannot open the volume or the metadata directory\n");
		exit(2);
	}
	vt_uuid_generate(&sb.volume_uuid);
	vt_uuid_generate(&sb.generation);
	sb.version = SB_VERSION;
	sb.volume_size = VOL_SIZE;
	sb.granularity = GRAN;
	sb.volume_kind = SB_KIND_FILE;
	sb.sequence = 1;
	sb.state = SB_STATE_CLEAN;
	volume_identity_settled(s->vol, &id);
	sb.id_size = id.size;
	sb.id_ino = id.ino;
	sb.id_ctime_ns = id.ctime_ns;
	sb.id_taken_ns = id.taken_ns;
	if (tracker_format(s->md, &sb) || metadir_write_superblock(s->md, &sb)) {
		printf("cannot format metadata\n");
		exit(2);
	}
	/* From here on every metadata write and sync goes through faultfs. */
	metadir_set_fsops(s->md, &s->ff.ops);
}

static void end(struct scen *s)
{
	char cmd[200];

	if (s->t)
		tracker_abandon(s->t);
	for (unsigned i = 0; i < s->nrefs; i++)
		free(s->refs[i].hash);
	faultfs_destroy(&s->ff);
	metadir_close(s->md);
	volume_close(s->vol);
	pthread_cond_destroy(&s->cond);
	pthread_mutex_destroy(&s->lock);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", s->meta);
	if (system(cmd)) {
		/* a leftover directory under top_dir goes with it at the end */
	}
	bool ok = failed == s->failed_before;
	printf("[%s] %s\n\n", s->label, ok ? "ok" : "FAILED");
	if (!ok) {
		scenarios_failed++;
		size_t len = strlen(failed_labels);
		snprintf(failed_labels + len, sizeof(failed_labels) - len, "%s%s",
			 len ? ", " : "", s->label);
	}
}

/*
 * Intents are cleared IDLE_TICKS persists after a region's last write
 * unless a scenario says otherwise: long enough that the identity in the
 * quiet intent commit is taken in a later clock tick than the last
 * write's ctime.  Otherwise recovery must doubt everything (doc/
 * tracking.md, "the stamp"), and a scenario could no longer tell a right
 * map from a wrong one.
 */
#define PERSIST_MS 10
#define IDLE_TICKS 5

static int open_tracker(struct scen *s, bool live, unsigned persist_ms, unsigned idle_ticks,
			const struct volume_identity *given)
{
	struct tracker_config cfg;
	struct volume_identity id;

	config(s, &cfg, persist_ms, idle_ticks);
	if (given)
		id = *given;
	else
		volume_identity(s->vol, &id);
	return tracker_open(s->md, &id, live, &cfg, &s->t);
}

static void open_live(struct scen *s, unsigned persist_ms, unsigned idle_ticks)
{
	int err = open_tracker(s, true, persist_ms, idle_ticks, NULL);

	check(s, err == 0, "live open: %s", errname(err));
	if (err) {
		printf("cannot go on\n");
		exit(1);
	}
}

/* The generation the next recovery is compared with. */
static void remember_generation(struct scen *s)
{
	struct tracker_info info;

	tracker_info(s->t, &info);
	s->gen_at_stop = info.generation;
}

/* kill -9: nothing more is persisted, the page cache survives. */
static void kill_tracker(struct scen *s)
{
	remember_generation(s);
	tracker_abandon(s->t);
	s->t = NULL;
}

/* The power goes out; *before* receives the volume's identity as the
 * file system recorded it. */
static void power_cut(struct scen *s, bool lose_all, struct volume_identity *before)
{
	unsigned vol_pending = faultfs_pending(&s->ff, vol_fd(s));
	unsigned all;

	volume_identity(s->vol, before); /* first: undoing writes moves the ctime */
	all = lose_all ? faultfs_crash_lose_all(&s->ff) : faultfs_crash(&s->ff);
	note("power cut (%s): %u unsynced write(s), %u on the volume: %u lost (%u whose "
	     "writeback had failed), %u torn, %u kept", lose_all ? "nothing unsynced lands" :
	     "random", all, vol_pending, s->ff.dropped, s->ff.lost_failed, s->ff.torn,
	     s->ff.kept);
}

/* ---- writes ---- */

struct parked {
	struct intent_wait wait;
	struct scen *s;
};

static void on_ready(struct intent_wait *w, int err)
{
	struct scen *s = ((struct parked *)w)->s;

	pthread_mutex_lock(&s->lock);
	s->ready = true;
	s->ready_err = err;
	pthread_cond_signal(&s->cond);
	pthread_mutex_unlock(&s->lock);
}

/* One write through the tracker and faultfs, as the server does it.
 * Returns 0 when it was issued, else the tracker's refusal. */
static int tracked_write(struct scen *s, uint64_t off, size_t len, const uint8_t *data)
{
	struct parked p = { .wait.ready = on_ready, .s = s };
	int rc;

	pthread_mutex_lock(&s->lock);
	s->ready = false;
	pthread_mutex_unlock(&s->lock);
	rc = tracker_write_begin(s->t, off, len, &p.wait);
	if (rc == 1) {
		pthread_mutex_lock(&s->lock);
		while (!s->ready)
			pthread_cond_wait(&s->cond, &s->lock);
		rc = s->ready_err;
		pthread_mutex_unlock(&s->lock);
	}
	if (rc == 0) {
		int err = s->ff.ops.pwrite(&s->ff.ops, vol_fd(s), data, len, off);
		check(s, err == 0, "volume write at %llu: %s", (unsigned long long)off,
		      errname(err));
	}
	tracker_write_end(s->t, off, len);
	return rc;
}

static void random_fill(struct scen *s, uint8_t *p, size_t len)
{
	for (size_t i = 0; i < len; i += 8) {
		uint64_t v = faultfs_random(&s->ff);
		memcpy(p + i, &v, len - i < 8 ? len - i : 8);
	}
}

/*
 * n whole blocks from block `first` on, then one write from the middle
 * of the last into the next, all with new random data.  Returns how many
 * writes the tracker refused.
 */
static unsigned write_blocks(struct scen *s, uint64_t first, unsigned n)
{
	uint8_t *data = malloc(GRAN);
	unsigned refused = 0;

	for (unsigned i = 0; i <= n; i++) {
		uint64_t off = (first + i) * GRAN;
		if (i == n)
			off = (first + n) * GRAN - GRAN / 2; /* straddles two blocks */
		random_fill(s, data, GRAN);
		refused += tracked_write(s, off, GRAN, data) != 0;
	}
	free(data);
	return refused;
}

/* ---- checkpoints and the reference ---- */

static int checkpoint(struct scen *s, const char *name)
{
	struct reference *r = &s->refs[s->nrefs++];
	int err = tracker_checkpoint(s->t, name, NULL);

	snprintf(r->name, sizeof(r->name), "%s", name);
	r->acked = err == 0;
	r->hash = malloc(sizeof(uint64_t) * NBLOCKS);
	hash_volume(s, r->hash);
	return err;
}

/* Wait until every intent is cleared (the flusher persisted the map and
 * synced the volume); false after timeout_ms. */
static bool wait_quiet(struct scen *s, unsigned timeout_ms)
{
	uint64_t until = mono_ms() + timeout_ms;
	struct tracker_info info;

	for (;;) {
		tracker_info(s->t, &info);
		if (info.regions_set == 0)
			return true;
		if (mono_ms() >= until)
			return false;
		tracker_nudge(s->t);
		msleep(2);
	}
}

/*
 * Recover as a restarted server would (no faults: a new process) and
 * check I1 against every reference.  `given`: the volume's identity to
 * open with (after a power cut), else the current one.
 */
static void recover_and_verify(struct scen *s, const struct volume_identity *given,
			       struct verdict *v)
{
	struct tracker_info info;
	uint64_t *now = malloc(sizeof(uint64_t) * NBLOCKS);
	char line[512];
	size_t pos;

	memset(v, 0, sizeof(*v));
	faultfs_disarm_all(&s->ff);
	int err = open_tracker(s, false, 1000, IDLE_TICKS, given);
	check(s, err == 0, "recovery open: %s", errname(err));
	if (err) {
		free(now);
		return;
	}
	tracker_info(s->t, &info);
	v->start = info.start;
	v->gen_changed = !vt_uuid_equal(&info.generation, &s->gen_at_stop);
	pos = (size_t)snprintf(line, sizeof(line), "recovery: start %s, %s generation",
			       tracker_start_name(info.start),
			       v->gen_changed ? "NEW" : "same");
	const struct changemap *cm = tracker_map(s->t);
	hash_volume(s, now);
	for (unsigned i = 0; i < s->nrefs; i++) {
		struct reference *r = &s->refs[i];
		struct ref_result *res = &v->r[i];
		uint8_t epoch;

		res->present = tracker_checkpoint_epoch(s->t, r->name, &epoch) == 0;
		if (!res->present) {
			pos += (size_t)snprintf(line + pos, sizeof(line) - pos, "; %s gone (%s)",
						r->name, r->acked ? "acknowledged" :
						"its creation had failed");
			if (r->acked)
				check(s, v->gen_changed, "acknowledged checkpoint %s is gone and "
				      "the generation did not change", r->name);
			continue;
		}
		for (uint64_t b = 0; b < NBLOCKS; b++) {
			bool differs = now[b] != r->hash[b];
			bool reported = atomic_load(&cm->epoch[b]) > epoch;
			res->differ += differs;
			res->missed += differs && !reported;
			res->over += reported && !differs;
		}
		pos += (size_t)snprintf(line + pos, sizeof(line) - pos,
					"; %s%s (epoch %u): %llu block(s) differ, %llu missed, "
					"%llu over-reported", r->name, r->acked ? "" :
					" [creation had failed, came back]", epoch,
					(unsigned long long)res->differ,
					(unsigned long long)res->missed,
					(unsigned long long)res->over);
		check(s, res->missed == 0, "I1: %llu changed block(s) not reported changed "
		      "since %s", (unsigned long long)res->missed, r->name);
	}
	note("%s", line);
	tracker_abandon(s->t);
	s->t = NULL;
	free(now);
}

/* No reset: the recovered map and intents, not a blanket "everything
 * changed", answered. */
static bool kept_history(const struct verdict *v)
{
	return !v->gen_changed && (v->start == TRACKER_START_CLEAN ||
				   v->start == TRACKER_START_RECOVERED);
}

/* Stop as `cut` says (kill, or kill then power cut), recover, verify. */
static void stop_and_verify(struct scen *s, bool cut, bool lose_all, struct verdict *v)
{
	struct volume_identity before;

	if (s->t)
		kill_tracker(s);
	if (cut) {
		power_cut(s, lose_all, &before);
		recover_and_verify(s, &before, v);
	} else {
		recover_and_verify(s, NULL, v);
	}
}

/* ---- (a) hole 6: a checkpoint whose store failed comes back ---- */

static void scenario_failed_checkpoint(const char *label, uint64_t seed, bool cut)
{
	struct scen sc, *s = &sc;
	struct verdict v;

	begin(s, label, seed);
	open_live(s, PERSIST_MS, IDLE_TICKS);
	check(s, checkpoint(s, "c1") == 0, "checkpoint c1");
	write_blocks(s, 10, 8);
	check(s, wait_quiet(s, 3000), "premise: intents cleared after the first writes");

	/* Only the checkpoint list's own sync fails: nothing else syncs
	 * that file. */
	int f = faultfs_fail_file(&s->ff, FAULT_FDATASYNC, CHECKPOINTS_NAME, 0, -EIO);
	int err = checkpoint(s, "c2");
	check(s, faultfs_fired(&s->ff, f) == 1, "premise: the checkpoint list's fdatasync "
	      "failed (fired %u times)", faultfs_fired(&s->ff, f));
	check(s, err < 0, "checkpoint c2 with a failing sync reports an error (got %s)",
	      errname(err));
	note("checkpoint c2: %s; %u write(s) of the list left unsynced for good",
	     errname(err), s->ff.failed_writes);

	/* Writes after the failed attempt, in a known and a new region. */
	write_blocks(s, 40, 8);
	write_blocks(s, REGION_BLOCKS + 5, 8);
	bool quiet = wait_quiet(s, 3000);
	check(s, quiet, "premise: intents cleared (the map alone must tell) before the stop");
	stop_and_verify(s, cut, false, &v);
	check(s, v.r[1].present || cut, "premise: after a kill the failed checkpoint's slot "
	      "is read back (page cache kept), so c2 comes back");
	if (v.r[1].present)
		check(s, v.r[1].differ > 0, "premise: blocks written after the failed c2 "
		      "differ from its reference");
	check(s, kept_history(&v), "premise: recovery kept the history (start %s), so the "
	      "change map itself is put to the test", tracker_start_name(v.start));
	note("c2 %s after recovery", v.r[1].present ? "came back" : "is gone");
	end(s);
}

/* ---- (b) hole 3: an offline close after a kill, then a power cut ---- */

static void scenario_offline_close(const char *label, uint64_t seed, bool lose_all,
				   unsigned *unsynced_total, unsigned *lost_total)
{
	struct scen sc, *s = &sc;
	struct verdict v;
	struct volume_identity id, before;

	begin(s, label, seed);
	/* A persist interval far longer than the run: the flusher never
	 * syncs the volume, as when the kill comes soon after the writes. */
	open_live(s, 60000, IDLE_TICKS);
	check(s, checkpoint(s, "c1") == 0, "checkpoint c1");
	write_blocks(s, 100, 12);
	write_blocks(s, 2 * REGION_BLOCKS + 50, 12);
	kill_tracker(s);
	unsigned pending = faultfs_pending(&s->ff, vol_fd(s));
	check(s, pending > 0, "premise: unsynced volume writes at the kill (%u)", pending);

	/* An offline command (voltrack checkpoint) recovers and closes. */
	int err = open_tracker(s, false, 1000, IDLE_TICKS, NULL);
	check(s, err == 0, "offline open: %s", errname(err));
	if (err) {
		end(s);
		return;
	}
	err = checkpoint(s, "c2");
	check(s, err == 0, "offline checkpoint c2: %s", errname(err));
	volume_identity_settled(s->vol, &id);
	remember_generation(s);
	err = tracker_close(s->t, &id);
	s->t = NULL;
	check(s, err == 0, "offline close: %s", errname(err));
	unsigned left = faultfs_pending(&s->ff, vol_fd(s));
	note("volume writes unsynced: %u at the kill, %u after the offline close", pending,
	     left);

	power_cut(s, lose_all, &before);
	*unsynced_total += left;
	*lost_total += left ? s->ff.dropped + s->ff.torn : 0;
	recover_and_verify(s, &before, &v);
	check(s, kept_history(&v), "premise: recovery kept the history (start %s), so the "
	      "change map itself is put to the test", tracker_start_name(v.start));
	end(s);
}

/* ---- (c) hole 7: a volume sync error swallowed ---- */

static void scenario_volume_sync_error(const char *label, uint64_t seed, bool close_first)
{
	struct scen sc, *s = &sc;
	struct verdict v;
	struct volume_identity id, before;

	begin(s, label, seed);
	open_live(s, PERSIST_MS, IDLE_TICKS);
	check(s, checkpoint(s, "c1") == 0, "checkpoint c1");

	/* The flusher's sync before clearing intents is the first volume
	 * sync with these writes to write back. */
	int f = faultfs_fail(&s->ff, FAULT_FDATASYNC, vol_fd(s), 0, -EIO);
	write_blocks(s, 200, 16);
	write_blocks(s, 2 * REGION_BLOCKS + 300, 16);
	bool fired = faultfs_wait_fired(&s->ff, f, 3000);
	check(s, fired, "premise: the volume's fdatasync failed");
	check(s, s->ff.failed_writes > 0, "premise: volume writes were unsynced at the "
	      "failed sync (%u)", s->ff.failed_writes);
	note("volume fdatasync failed with %u write(s) unsynced; they never reach the disk",
	     s->ff.failed_writes);

	/* A checkpoint after the error: its reference holds the data the
	 * kernel could not write back. */
	check(s, checkpoint(s, "c2") == 0, "checkpoint c2");
	write_blocks(s, REGION_BLOCKS + 400, 8);

	/* A few more persist intervals: a later sync must not make the
	 * tracker forget what the failed one lost. */
	bool quiet = wait_quiet(s, 300);
	note("after 300 ms: intents %s", quiet ? "all cleared" : "still set");

	if (close_first) {
		struct superblock sb;
		volume_identity_settled(s->vol, &id);
		remember_generation(s);
		int err = tracker_close(s->t, &id);
		s->t = NULL;
		int rerr = metadir_read_superblock(s->md, &sb);
		bool clean = rerr == 0 && (sb.state & SB_STATE_CLEAN);
		note("close after the sync error: %s; superblock %s", errname(err),
		     clean ? "CLEAN" : "not clean");
		check(s, err != 0 || !clean, "close after a volume sync error must fail or leave "
		      "the superblock unclean (returned %s, superblock CLEAN)", errname(err));
		power_cut(s, false, &before);
		recover_and_verify(s, &before, &v);
	} else {
		stop_and_verify(s, true, false, &v);
	}
	check(s, kept_history(&v), "premise: recovery kept the history (start %s), so the "
	      "change map itself is put to the test", tracker_start_name(v.start));
	end(s);
}

/* ---- (d) every other metadata operation ---- */

enum target { T_INTENT, T_MAP, T_SB_CLOSE, T_SB_OPEN, T_CKPT };

static const char *target_file(enum target t)
{
	switch (t) {
	case T_INTENT: return INTENT_NAME;
	case T_MAP: return MAPFILE_NAME;
	case T_CKPT: return CHECKPOINTS_NAME;
	case T_SB_CLOSE:
	case T_SB_OPEN: return "superblock.tmp";
	}
	return "?";
}

struct metafault {
	enum fault_op op;
	size_t apply;		/* short pwrite: bytes that land; 0: plain error */
	unsigned times;		/* FAULT_FOREVER: every call from now on */
};

static int arm(struct scen *s, enum target t, const struct metafault *mf)
{
	struct fault_spec spec = {
		.op = mf->op, .fd = -1, .file = target_file(t), .skip = 0,
		.times = mf->times ? mf->times : 1, .err = -EIO, .apply = mf->apply,
	};
	return faultfs_arm(&s->ff, &spec);
}

static void scenario_metadata(const char *label, uint64_t seed, enum target t,
			      struct metafault mf, bool cut)
{
	struct scen sc, *s = &sc;
	struct verdict v;
	int f, err;

	begin(s, label, seed);
	if (t == T_SB_OPEN) {
		/* The live start's superblock write (unclean from now on). */
		f = arm(s, t, &mf);
		err = open_tracker(s, true, PERSIST_MS, IDLE_TICKS, NULL);
		check(s, faultfs_fired(&s->ff, f) > 0, "premise: the superblock write failed");
		check(s, err < 0, "a live open whose superblock write fails must fail (got %s)",
		      errname(err));
		if (!err)
			tracker_abandon(s->t);
		s->t = NULL;
		faultfs_disarm(&s->ff, f);
	}
	open_live(s, PERSIST_MS, IDLE_TICKS);
	check(s, checkpoint(s, "c1") == 0, "checkpoint c1");

	switch (t) {
	case T_INTENT: {
		/* Nothing set and nothing committing: the next commit is the
		 * one this write needs. */
		check(s, wait_quiet(s, 3000), "premise: no intent set before the fault");
		f = arm(s, t, &mf);
		unsigned refused = write_blocks(s, 3 * REGION_BLOCKS + 7, 0);
		check(s, faultfs_fired(&s->ff, f) > 0, "premise: the intent commit failed");
		check(s, refused == 1, "a write whose intent commit failed must not be issued "
		      "(%u of 1 refused)", refused);
		faultfs_disarm(&s->ff, f);
		note("write needing the failed intent commit: %s", refused ? "refused" : "ISSUED");
		write_blocks(s, 3 * REGION_BLOCKS + 20, 6);	/* the next commit works */
		break;
	}
	case T_MAP: {
		f = arm(s, t, &mf);
		write_blocks(s, 30, 10);
		tracker_nudge(s->t);
		check(s, faultfs_wait_fired(&s->ff, f, 3000), "premise: a map persist failed");
		msleep(100); /* several persist intervals */
		struct tracker_info info;
		tracker_info(s->t, &info);
		note("map persist failed; after 100 ms: %u intent region(s) set, last persist: %s",
		     info.regions_set, errname(info.last_persist_error));
		if (mf.times == FAULT_FOREVER) {
			check(s, info.regions_set > 0, "intents must stay set while the map "
			      "cannot be persisted");
			check(s, info.last_persist_error < 0, "the persist error is reported");
		}
		break;
	}
	case T_CKPT:
		write_blocks(s, 30, 10);
		f = arm(s, t, &mf);
		err = checkpoint(s, "c2");
		check(s, faultfs_fired(&s->ff, f) > 0, "premise: the checkpoint store failed");
		check(s, err < 0, "a checkpoint whose store fails reports an error (got %s)",
		      errname(err));
		break;
	case T_SB_CLOSE:
	case T_SB_OPEN:
		write_blocks(s, 30, 10);
		break;
	}

	/* Writes on both sides of a checkpoint, so that every reference
	 * has blocks to miss. */
	if (t != T_CKPT)
		check(s, checkpoint(s, "c2") == 0, "checkpoint c2");
	write_blocks(s, 60, 6);
	write_blocks(s, REGION_BLOCKS + 60, 6);
	if (t == T_CKPT)
		check(s, wait_quiet(s, 3000), "premise: intents cleared before the stop");

	if (t == T_SB_CLOSE) {
		struct volume_identity id;
		f = arm(s, t, &mf);
		volume_identity_settled(s->vol, &id);
		remember_generation(s);
		err = tracker_close(s->t, &id);
		s->t = NULL;
		check(s, faultfs_fired(&s->ff, f) > 0, "premise: the superblock write failed");
		check(s, err < 0, "a close whose superblock write fails must fail (got %s)",
		      errname(err));
	}
	stop_and_verify(s, cut, false, &v);
	end(s);
}

/* ---- main ---- */

static bool top_made;

/* Also on exit() from a scenario that cannot go on. */
static void remove_top_dir(void)
{
	char cmd[128];

	if (!top_made)
		return;
	snprintf(cmd, sizeof(cmd), "rm -rf %s", top_dir);
	if (system(cmd)) {
		/* leaving a temporary directory behind is not a test failure */
	}
}

static void make_volume(uint64_t seed)
{
	struct faultfs rng;
	uint8_t *buf = malloc(1 << 20);
	int fd;

	faultfs_init(&rng, seed);
	snprintf(top_dir, sizeof(top_dir), "/tmp/voltrack-faults-XXXXXX");
	if (!mkdtemp(top_dir)) {
		perror("mkdtemp");
		exit(2);
	}
	top_made = true;
	atexit(remove_top_dir);
	snprintf(vol_path, sizeof(vol_path), "%s/disk.img", top_dir);
	fd = open(vol_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	for (uint64_t off = 0; fd >= 0 && off < VOL_SIZE; off += 1 << 20) {
		for (size_t i = 0; i < (1 << 20) / 8; i++) {
			uint64_t v = faultfs_random(&rng);
			memcpy(buf + i * 8, &v, 8);
		}
		if (file_pwrite_full(fd, buf, 1 << 20, off)) {
			close(fd);
			fd = -1;
		}
	}
	if (fd < 0) {
		printf("cannot create the volume\n");
		exit(2);
	}
	close(fd);
	free(buf);
	faultfs_destroy(&rng);
}

int main(void)
{
	const char *seed_env = getenv("VOLTRACK_FAULTS_SEED");
	uint64_t seed = seed_env ? strtoull(seed_env, NULL, 0) : (uint64_t)time(NULL);
	uint64_t t0 = mono_ms();
	unsigned k = 0;
#define NEXT_SEED() (seed + 0x9e3779b97f4a7c15ull * ++k)

	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("fault trials, seed %llu (VOLTRACK_FAULTS_SEED)\n\n", (unsigned long long)seed);
	make_volume(seed);

	/* (a) */
	scenario_failed_checkpoint("a1 hole 6: failed checkpoint sync, kill", NEXT_SEED(), false);
	scenario_failed_checkpoint("a2 hole 6: failed checkpoint sync, power cut", NEXT_SEED(),
				   true);

	/* (b) several cuts; the first loses every unsynced write */
	unsigned unsynced = 0, lost = 0;
	for (unsigned i = 0; i < 4; i++) {
		char *label;
		if (asprintf(&label, "b%u hole 3: offline close after kill, power cut", i + 1) < 0)
			exit(2);
		scenario_offline_close(label, NEXT_SEED(), i == 0, &unsynced, &lost);
		free(label);
	}
	printf("(b) volume writes still unsynced at the cuts: %u; lost or torn there: %u\n\n",
	       unsynced, lost);
	check(NULL, unsynced == 0 || lost > 0, "(b) premise: the cuts that found unsynced volume "
	      "writes lost or tore some of them");

	/* (c) */
	scenario_volume_sync_error("c1 hole 7: volume sync error, kill + power cut", NEXT_SEED(),
				   false);
	scenario_volume_sync_error("c2 hole 7: volume sync error, close + power cut",
				   NEXT_SEED(), true);

	/* (d) */
	static const struct {
		const char *name;
		enum target t;
		struct metafault mf;
	} meta[] = {
		{ "intent pwrite EIO", T_INTENT, { FAULT_PWRITE, 0, 1 } },
		{ "intent pwrite short", T_INTENT, { FAULT_PWRITE, 1000, 1 } },
		{ "intent fdatasync EIO", T_INTENT, { FAULT_FDATASYNC, 0, 1 } },
		{ "map pwrite EIO, every persist", T_MAP, { FAULT_PWRITE, 0, FAULT_FOREVER } },
		{ "map pwrite short, once", T_MAP, { FAULT_PWRITE, 1000, 1 } },
		{ "map fdatasync EIO, every persist", T_MAP, { FAULT_FDATASYNC, 0, FAULT_FOREVER } },
		{ "map fdatasync EIO, once", T_MAP, { FAULT_FDATASYNC, 0, 1 } },
		{ "checkpoint pwrite EIO", T_CKPT, { FAULT_PWRITE, 0, 1 } },
		/* 16 bytes: a new header over the old slot, which tears it;
		 * 2000: every byte that differs lands, the error not withstanding */
		{ "checkpoint pwrite short, torn", T_CKPT, { FAULT_PWRITE, 16, 1 } },
		{ "checkpoint pwrite short, all landed", T_CKPT, { FAULT_PWRITE, 2000, 1 } },
		{ "superblock pwrite EIO at close", T_SB_CLOSE, { FAULT_PWRITE, 0, 1 } },
		{ "superblock pwrite short at close", T_SB_CLOSE, { FAULT_PWRITE, 100, 1 } },
		{ "superblock fdatasync EIO at close", T_SB_CLOSE, { FAULT_FDATASYNC, 0, 1 } },
		{ "superblock pwrite EIO at live open", T_SB_OPEN, { FAULT_PWRITE, 0, 1 } },
	};
	for (unsigned i = 0; i < sizeof(meta) / sizeof(meta[0]); i++) {
		for (unsigned cut = 0; cut < 2; cut++) {
			char *label;
			if (asprintf(&label, "d%u%s %s, %s", i + 1, cut ? "p" : "k", meta[i].name,
				     cut ? "power cut" : "kill") < 0)
				exit(2);
			scenario_metadata(label, NEXT_SEED(), meta[i].t, meta[i].mf, cut);
			free(label);
		}
	}

	printf("%u scenario(s), %u failed%s%s%s; %.1f s\n", scenarios, scenarios_failed,
	       scenarios_failed ? " (" : "", failed_labels, scenarios_failed ? ")" : "",
	       (double)(mono_ms() - t0) / 1000.0);
	printf("%u passed, %u failed\n", passed, failed);
	return failed ? 1 : 0;
}
