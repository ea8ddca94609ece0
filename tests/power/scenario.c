/* The harness of the fault trials: see scenario.h and faults.c. */
#include "scenario.h"

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
#include "metablock.h"

char top_dir[64], vol_path[96];
unsigned passed, failed, scenarios, scenarios_failed;
char failed_labels[2048];


void check(struct scen *s, bool ok, const char *fmt, ...)
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


void note(const char *fmt, ...)
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
void config(struct scen *s, struct tracker_config *cfg, unsigned persist_ms,
	    unsigned idle_ticks)
{
	tracker_config_defaults(cfg);
	cfg->persist_interval_ms = persist_ms;
	cfg->idle_ticks = idle_ticks;
	cfg->volume = s->vol;
}

int vol_fd(const struct scen *s)
{
	return s->vol->fd;
}

uint64_t block_hash(const uint8_t *p)
{
	/* two independent CRCs: a collision would need both to agree */
	return ((uint64_t)crc32c(0, p, GRAN) << 32) | crc32c(0x5bd1e995, p, GRAN);
}

void hash_volume(struct scen *s, uint64_t *out)
{
	uint8_t *buf = malloc(GRAN);

	for (uint64_t b = 0; b < NBLOCKS; b++) {
		if (file_pread_full(vol_fd(s), buf, GRAN, b * GRAN))
			memset(buf, 0xee, GRAN);
		out[b] = block_hash(buf);
	}
	free(buf);
}

void msleep(unsigned ms)
{
	struct timespec ts = { (time_t)(ms / 1000), (long)(ms % 1000) * 1000000 };
	nanosleep(&ts, NULL);
}

uint64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

const char *errname(int err)
{
	return err ? strerror(-err) : "ok";
}

/* A fresh metadata directory over the shared volume, closed cleanly. */
void begin(struct scen *s, const char *label, uint64_t seed)
{
	static unsigned n;
	struct superblock sb = { .version = SB_VERSION };
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
	if (volume_open(vol_path, 0, &s->vol) || metadir_open(s->meta, true, &vt_fsops_posix, &s->md) ||
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

void end(struct scen *s)
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

int open_tracker(struct scen *s, bool live, unsigned persist_ms, unsigned idle_ticks,
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

void open_live(struct scen *s, unsigned persist_ms, unsigned idle_ticks)
{
	int err = open_tracker(s, true, persist_ms, idle_ticks, NULL);

	check(s, err == 0, "live open: %s", errname(err));
	if (err) {
		printf("cannot go on\n");
		exit(1);
	}
}

/* The generation the next recovery is compared with. */
void remember_generation(struct scen *s)
{
	struct tracker_info info;

	tracker_info(s->t, &info);
	s->gen_at_stop = info.generation;
}

/* kill -9: nothing more is persisted, the page cache survives. */
void kill_tracker(struct scen *s)
{
	remember_generation(s);
	tracker_abandon(s->t);
	s->t = NULL;
}

/* The power goes out; *before* receives the volume's identity as the
 * file system recorded it. */
void power_cut(struct scen *s, bool lose_all, struct volume_identity *before)
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

void on_ready(struct intent_wait *w, int err)
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
int tracked_write(struct scen *s, uint64_t off, size_t len, const uint8_t *data)
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

void random_fill(struct scen *s, uint8_t *p, size_t len)
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
unsigned write_blocks(struct scen *s, uint64_t first, unsigned n)
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

int checkpoint(struct scen *s, const char *name)
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
bool wait_quiet(struct scen *s, unsigned timeout_ms)
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
void recover_and_verify(struct scen *s, const struct volume_identity *given,
			struct verdict *v)
{
	struct tracker_info info;
	uint64_t *now = malloc(sizeof(uint64_t) * NBLOCKS);
	char line[2048];	/* MAX_REFS results of at most ~150 bytes */
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
		if (r->forget_acked)
			check(s, !res->present, "checkpoint %s came back after its delete was "
			      "acknowledged", r->name);
		if (!res->present && r->forgotten) {
			pos += (size_t)snprintf(line + pos, sizeof(line) - pos, "; %s gone (deleted)",
						r->name);
			continue;
		}
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
					"%llu over-reported", r->name, !r->acked ?
					" [creation had failed, came back]" : r->forgotten ?
					" [delete had failed, still there]" : "", epoch,
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
bool kept_history(const struct verdict *v)
{
	return !v->gen_changed && (v->start == TRACKER_START_CLEAN ||
				   v->start == TRACKER_START_RECOVERED);
}

/* Stop as `cut` says (kill, or kill then power cut), recover, verify. */
void stop_and_verify(struct scen *s, bool cut, bool lose_all, struct verdict *v)
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

/* ---- the volume file ---- */

static bool top_made;

/* Also on exit() from a scenario that cannot go on. */
void remove_top_dir(void)
{
	char cmd[128];

	if (!top_made)
		return;
	snprintf(cmd, sizeof(cmd), "rm -rf %s", top_dir);
	if (system(cmd)) {
		/* leaving a temporary directory behind is not a test failure */
	}
}

void make_volume(uint64_t seed)
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
