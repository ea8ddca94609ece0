/*
 * Power-cut trials: invariant I1 when un-synced writes are lost or torn.
 *
 * The real tracker runs with faultfs under every metadata write and sync,
 * and the workload's data writes and flushes go through faultfs too.
 * Each trial writes, flushes, checkpoints and pauses (so the flusher
 * persists and clears intents), then cuts power: any subset of unsynced
 * writes, data and metadata alike, is lost or torn at 512-byte sectors.
 * One trial in four first closes cleanly, but the directory sync after
 * the superblock's rename fails, so the cut keeps the new superblock or
 * brings the old one back.  Recovery then opens the tracker as a
 * restarted server would.
 *
 * The reference is independent of the tracker: at every checkpoint the
 * test hashes each block of the volume as it stood.  After the crash,
 * every block whose hash differs from a checkpoint's must be reported
 * changed since that checkpoint.
 *
 * VOLTRACK_POWERCUT_TRIALS sets the number of trials (default 20).
 */
#include <errno.h>
#include <stdarg.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "crc32c.h"
#include "faultfs.h"
#include "metadir.h"
#include "tracker.h"

#define VOL_SIZE (256ull << 20)
#define GRAN (64u << 10)
#define NBLOCKS (VOL_SIZE / GRAN)
#define MAX_CKPTS 40

struct reference {
	char name[32];
	uint64_t hash[NBLOCKS];
};

struct run {
	struct faultfs ff;
	struct metadir *md;
	int vol;			/* the volume's descriptor, owned by `volume` */
	struct volume *volume;
	char dir[64], vol_path[80], meta_path[96];
	struct reference *refs[MAX_CKPTS];
	unsigned nrefs;
	unsigned passed, failed;
	uint64_t missed, over_blocks, checks;
	/* parked writes */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool ready;
	int ready_err;
};

static void check(struct run *r, bool ok, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void check(struct run *r, bool ok, const char *fmt, ...)
{
	va_list ap;

	if (ok) {
		r->passed++;
		return;
	}
	r->failed++;
	printf("FAIL: ");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
}

static uint64_t block_hash(const uint8_t *p)
{
	/* two independent CRCs: a collision would need both to agree */
	return ((uint64_t)crc32c(0, p, GRAN) << 32) | crc32c(0x5bd1e995, p, GRAN);
}

static void hash_volume(int fd, uint64_t *out)
{
	uint8_t *buf = malloc(GRAN);
	for (uint64_t b = 0; b < NBLOCKS; b++) {
		if (file_pread_full(fd, buf, GRAN, b * GRAN))
			memset(buf, 0xee, GRAN);
		out[b] = block_hash(buf);
	}
	free(buf);
}

static void identity(int fd, struct volume_identity *id)
{
	struct stat st;

	fstat(fd, &st);
	id->size = (uint64_t)st.st_size;
	id->ino = (uint64_t)st.st_ino;
	id->ctime_ns = (uint64_t)st.st_ctim.tv_sec * 1000000000ull + (uint64_t)st.st_ctim.tv_nsec;
}

struct parked {
	struct intent_wait wait;
	struct run *r;
};

static void on_ready(struct intent_wait *w, int err)
{
	struct run *r = ((struct parked *)w)->r;

	pthread_mutex_lock(&r->lock);
	r->ready = true;
	r->ready_err = err;
	pthread_cond_signal(&r->cond);
	pthread_mutex_unlock(&r->lock);
}

/* One write through the tracker and faultfs, as the server does it. */
static void tracked_write(struct run *r, struct tracker *t, uint64_t off, size_t len,
			  const uint8_t *data)
{
	struct parked p = { .wait.ready = on_ready, .r = r };
	int rc;

	pthread_mutex_lock(&r->lock);
	r->ready = false;
	pthread_mutex_unlock(&r->lock);
	rc = tracker_write_begin(t, off, len, &p.wait);
	if (rc == 1) {
		pthread_mutex_lock(&r->lock);
		while (!r->ready)
			pthread_cond_wait(&r->cond, &r->lock);
		rc = r->ready_err;
		pthread_mutex_unlock(&r->lock);
	}
	if (rc == 0)
		r->ff.ops.pwrite(&r->ff.ops, r->vol, data, len, off);
	tracker_write_end(t, off, len);
}

static void setup(struct run *r)
{
	struct superblock sb = { .version = SB_VERSION };
	uint8_t *buf = malloc(1 << 20);

	strcpy(r->dir, "/tmp/voltrack-power-XXXXXX");
	if (!mkdtemp(r->dir))
		exit(2);
	snprintf(r->vol_path, sizeof(r->vol_path), "%s/disk.img", r->dir);
	snprintf(r->meta_path, sizeof(r->meta_path), "%s/meta", r->dir);
	r->vol = open(r->vol_path, O_RDWR | O_CREAT, 0600);
	for (uint64_t off = 0; off < VOL_SIZE; off += 1 << 20) {
		for (size_t i = 0; i < (1 << 20) / 8; i++) {
			uint64_t v = faultfs_random(&r->ff);
			memcpy(buf + i * 8, &v, 8);
		}
		file_pwrite_full(r->vol, buf, 1 << 20, off);
	}
	fdatasync(r->vol);
	free(buf);
	close(r->vol);
	/* Every data write and sync goes through the one descriptor the
	 * tracker syncs, as in the server. */
	if (volume_open(r->vol_path, 0, &r->volume)) {
		printf("cannot open the volume\n");
		exit(2);
	}
	r->vol = r->volume->fd;

	metadir_open(r->meta_path, true, &vt_fsops_posix, &r->md);
	metadir_lock(r->md);
	vt_uuid_generate(&sb.volume_uuid);
	vt_uuid_generate(&sb.generation);
	sb.version = SB_VERSION;
	sb.volume_size = VOL_SIZE;
	sb.granularity = GRAN;
	sb.volume_kind = SB_KIND_FILE;
	sb.sequence = 1;
	struct volume_identity id;
	identity(r->vol, &id);
	sb.state = SB_STATE_CLEAN;
	sb.id_size = id.size;
	sb.id_ino = id.ino;
	sb.id_ctime_ns = id.ctime_ns;
	if (tracker_format(r->md, &sb) || metadir_write_superblock(r->md, &sb)) {
		printf("cannot format metadata\n");
		exit(2);
	}
}

static void workload(struct run *r, struct tracker *t, unsigned trial)
{
	uint8_t *data = malloc(256 << 10);

	for (unsigned op = 0; op < 120; op++) {
		unsigned pick = (unsigned)(faultfs_random(&r->ff) % 100);
		if (pick < 70) {
			/* a write somewhere in two of the four regions */
			uint64_t zone = (faultfs_random(&r->ff) % 2) * (VOL_SIZE / 2);
			size_t len = 1 + faultfs_random(&r->ff) % (256 << 10);
			uint64_t off = zone + faultfs_random(&r->ff) % (VOL_SIZE / 2 - len);
			for (size_t i = 0; i < len; i++)
				data[i] = (uint8_t)faultfs_random(&r->ff);
			tracked_write(r, t, off, len, data);
		} else if (pick < 80) {
			size_t len = GRAN * (1 + faultfs_random(&r->ff) % 4);
			uint64_t off = (faultfs_random(&r->ff) % (NBLOCKS - 4)) * GRAN;
			memset(data, 0, len); /* TRIM / WRITE_ZEROES */
			tracked_write(r, t, off, len, data);
		} else if (pick < 90) {
			r->ff.ops.fdatasync(&r->ff.ops, r->vol); /* NBD FLUSH */
			tracker_nudge(t);
		} else if (pick < 94 && r->nrefs < MAX_CKPTS) {
			struct reference *ref = malloc(sizeof(*ref));
			snprintf(ref->name, sizeof(ref->name), "t%u-%u", trial, op);
			int err = tracker_checkpoint(t, ref->name, NULL);
			check(r, err == 0, "checkpoint %s: %s", ref->name, strerror(-err));
			hash_volume(r->vol, ref->hash);
			r->refs[r->nrefs++] = ref;
		} else {
			/* let the flusher persist and clear idle regions */
			struct timespec ts = { 0, (long)(5 + faultfs_random(&r->ff) % 60) * 1000000 };
			nanosleep(&ts, NULL);
		}
	}
	free(data);
}

static void verify(struct run *r, struct tracker *t, unsigned trial)
{
	uint64_t *now = malloc(sizeof(uint64_t) * NBLOCKS);
	const struct changemap *cm = tracker_map(t);

	hash_volume(r->vol, now);
	for (unsigned i = 0; i < r->nrefs; i++) {
		uint8_t epoch;
		int err = tracker_checkpoint_epoch(t, r->refs[i]->name, &epoch);
		check(r, err == 0, "trial %u: acknowledged checkpoint %s survives", trial,
		      r->refs[i]->name);
		if (err)
			continue;
		uint64_t missed = 0, over = 0;
		for (uint64_t b = 0; b < NBLOCKS; b++) {
			bool differs = now[b] != r->refs[i]->hash[b];
			bool reported = atomic_load(&cm->epoch[b]) > epoch;
			missed += differs && !reported;
			over += reported && !differs;
		}
		r->checks++;
		r->missed += missed;
		r->over_blocks += over;
		check(r, missed == 0, "trial %u: %llu changed block(s) not reported since %s",
		      trial, (unsigned long long)missed, r->refs[i]->name);
	}
	free(now);
}

int main(void)
{
	const char *env = getenv("VOLTRACK_POWERCUT_TRIALS");
	unsigned trials = env ? (unsigned)atoi(env) : 20;
	const char *seed_env = getenv("VOLTRACK_POWERCUT_SEED");
	uint64_t seed = seed_env ? strtoull(seed_env, NULL, 0) : (uint64_t)time(NULL);
	static struct run run;
	struct run *r = &run;
	unsigned lost = 0, torn = 0, kept = 0, closes = 0, sb_lost = 0, sb_kept = 0;

	faultfs_init(&r->ff, seed);
	pthread_mutex_init(&r->lock, NULL);
	pthread_cond_init(&r->cond, NULL);
	printf("power-cut trials: %u, seed %llu\n", trials, (unsigned long long)seed);
	setup(r);

	for (unsigned trial = 0; trial < trials; trial++) {
		struct tracker_config cfg;
		struct volume_identity id;
		struct tracker *t;

		tracker_config_defaults(&cfg);
		cfg.persist_interval_ms = 10;
		cfg.idle_ticks = 1;
		cfg.volume = r->volume;
		identity(r->vol, &id);
		metadir_set_fsops(r->md, &r->ff.ops);
		int err = tracker_open(r->md, &id, true, &cfg, &t);
		check(r, err == 0, "trial %u: live open: %s", trial, strerror(-err));
		if (err)
			break;
		workload(r, t, trial);
		bool closing = faultfs_random(&r->ff) % 4 == 0;
		if (closing) {
			int f = faultfs_fail_file(&r->ff, FAULT_FSYNC_DIR, "superblock", 0, -EIO);
			identity(r->vol, &id);
			err = tracker_close(t, &id);
			check(r, err == -EIO && faultfs_fired(&r->ff, f) == 1, "trial %u: a close "
			      "whose directory sync fails reports it: %s", trial, strerror(-err));
			faultfs_disarm_all(&r->ff);
			closes++;
		} else {
			tracker_abandon(t);	/* the power goes out... */
		}
		faultfs_crash(&r->ff);		/* ...and the disk keeps what it kept */
		if (closing) {
			/* the superblock's rename is the last change of the two */
			struct superblock sb;
			err = metadir_read_superblock(r->md, &sb);
			check(r, err == 0, "trial %u: the superblock is whole after the cut: %s",
			      trial, strerror(-err));
			if (!err && (sb.state & SB_STATE_CLEAN))
				sb_kept++;
			else
				sb_lost++;
		}
		lost += r->ff.dropped;
		torn += r->ff.torn;
		kept += r->ff.kept;

		metadir_set_fsops(r->md, &vt_fsops_posix);
		identity(r->vol, &id);
		err = tracker_open(r->md, &id, false, &cfg, &t);
		check(r, err == 0, "trial %u: recovery open: %s", trial, strerror(-err));
		if (err)
			break;
		verify(r, t, trial);
		identity(r->vol, &id);
		err = tracker_close(t, &id);
		check(r, err == 0, "trial %u: clean close after recovery: %s", trial, strerror(-err));
	}
	printf("unsynced writes at the cuts: %u lost, %u torn, %u kept\n", lost, torn, kept);
	printf("closes cut before the superblock's directory sync: %u; the clean superblock "
	       "kept %u, the old one back %u\n", closes, sb_kept, sb_lost);
	printf("checks: %llu, missed blocks: %llu, over-reported: %.1f MiB per check\n",
	       (unsigned long long)r->checks, (unsigned long long)r->missed,
	       r->checks ? (double)r->over_blocks * GRAN / r->checks / (1 << 20) : 0.0);
	for (unsigned i = 0; i < r->nrefs; i++)
		free(r->refs[i]);
	metadir_close(r->md);
	volume_close(r->volume);
	faultfs_destroy(&r->ff);
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", r->dir);
	if (system(cmd)) {
		/* leaving a temporary directory behind is not a test failure */
	}
	printf("%u passed, %u failed\n", r->passed, r->failed);
	return r->failed ? 1 : 0;
}
