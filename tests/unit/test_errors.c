/*
 * The tracker when a sync fails, and the order of its durable steps.
 *
 * A wrapper around the real file operations (struct vt_fsops) fails a
 * chosen fdatasync, of the checkpoint list or of the volume, and logs
 * every write and sync with the file it went to.  Each test asserts that
 * its fault really fired, and checks the outcome against what the test
 * itself wrote: a hash of the volume at each checkpoint.
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
#include "crc32c.h"
#include "intent.h"
#include "metablock.h"
#include "metadir.h"
#include "tracker.h"
#include "testvol.h"
#include "volume.h"

#define VOL_SIZE (256ull << 20)
#define G (64u << 10)
#define NBLOCKS (VOL_SIZE / G)
#define MIB (1ull << 20)

enum target { T_OTHER, T_VOLUME, T_INTENT, T_CHECKPOINTS };

struct faulty {
	struct vt_fsops ops;	/* first: the tracker sees only this */
	pthread_mutex_t lock;
	int dirfd;
	ino_t vol_ino;
	int fail_sync[4];	/* syncs still to fail, per target */
	int fired[4];
	char log[4096];		/* "v" volume sync, "I" intent write, ... */
	size_t nlog;
};

static enum target target_of(struct faulty *f, int fd)
{
	struct stat st, named;

	if (fstat(fd, &st) < 0)
		return T_OTHER;
	if (st.st_ino == f->vol_ino)
		return T_VOLUME;
	if (fstatat(f->dirfd, INTENT_NAME, &named, 0) == 0 && named.st_ino == st.st_ino)
		return T_INTENT;
	if (fstatat(f->dirfd, CHECKPOINTS_NAME, &named, 0) == 0 && named.st_ino == st.st_ino)
		return T_CHECKPOINTS;
	return T_OTHER;
}

static void note(struct faulty *f, char c)
{
	pthread_mutex_lock(&f->lock);
	if (f->nlog + 1 < sizeof(f->log))
		f->log[f->nlog++] = c;
	pthread_mutex_unlock(&f->lock);
}

/* How many injected failures fired; the flusher thread counts them. */
static int fired(struct faulty *f, enum target t)
{
	pthread_mutex_lock(&f->lock);
	int n = f->fired[t];
	pthread_mutex_unlock(&f->lock);
	return n;
}

static int f_pwrite(const struct vt_fsops *ops, int fd, const void *buf, size_t len,
		    uint64_t off)
{
	struct faulty *f = (struct faulty *)ops;

	note(f, "ovic"[target_of(f, fd)]); /* lower case: a write */
	return vt_fsops_posix.pwrite(&vt_fsops_posix, fd, buf, len, off);
}

static int f_fdatasync(const struct vt_fsops *ops, int fd)
{
	struct faulty *f = (struct faulty *)ops;
	enum target tg = target_of(f, fd);
	bool fail = false;

	pthread_mutex_lock(&f->lock);
	if (f->fail_sync[tg] > 0) {
		f->fail_sync[tg]--;
		f->fired[tg]++;
		fail = true;
	}
	pthread_mutex_unlock(&f->lock);
	note(f, "OVIC"[tg]);
	/* A failed writeback is reported once; the kernel's next sync of
	 * the same file succeeds.  Model exactly that: fail, do nothing. */
	return fail ? -EIO : vt_fsops_posix.fdatasync(&vt_fsops_posix, fd);
}

struct fixture {
	struct testvol tv;		/* md and vol below are its */
	struct metadir *md;
	struct volume *vol;
	struct tracker *t;
	struct faulty fs;
	uint64_t ref[NBLOCKS];
	uint8_t ref_epoch;
};

static void open_tracker(struct fixture *f, bool live)
{
	struct tracker_config cfg;
	struct volume_identity id;

	tracker_config_defaults(&cfg);
	cfg.persist_interval_ms = 3600000; /* turns happen when nudged */
	cfg.idle_ticks = 1;
	cfg.lease_ms = 3600000;
	cfg.volume = f->vol;
	assert_int_equal(volume_identity(f->vol, &id), 0);
	assert_int_equal(tracker_open(f->md, &id, live, &cfg, &f->t), 0);
}

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	struct stat st;

	assert_int_equal(testvol_create(&f->tv, "voltrack-errors", VOL_SIZE, G, NULL), 0);
	f->md = f->tv.md;
	f->vol = f->tv.vol;

	f->fs.ops = vt_fsops_posix;	/* but for the two it watches */
	f->fs.ops.pwrite = f_pwrite;
	f->fs.ops.fdatasync = f_fdatasync;
	pthread_mutex_init(&f->fs.lock, NULL);
	f->fs.dirfd = metadir_fd(f->md);
	assert_int_equal(fstat(f->vol->fd, &st), 0);
	f->fs.vol_ino = st.st_ino;
	metadir_set_fsops(f->md, &f->fs.ops);
	open_tracker(f, true);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	if (f->t)
		tracker_abandon(f->t);
	pthread_mutex_destroy(&f->fs.lock);
	testvol_destroy(&f->tv);
	free(f);
	return 0;
}

static void hash_volume(struct fixture *f, uint64_t *out)
{
	assert_int_equal(testvol_hash(&f->tv, G, NBLOCKS, out), 0);
}

struct parked {
	struct intent_wait w;
	int done;		/* 1 ready, <0 failed */
};

static void on_ready(struct intent_wait *w, int err)
{
	struct parked *p = (struct parked *)((char *)w - offsetof(struct parked, w));

	__atomic_store_n(&p->done, err ? err : 1, __ATOMIC_SEQ_CST);
}

/* One write as the server does it; waits out a parked begin. */
static void tracked_write(struct fixture *f, uint64_t off, uint8_t fill)
{
	struct parked p = { .w.ready = on_ready };
	uint8_t buf[4096];
	int rc;

	memset(buf, fill, sizeof(buf));
	rc = tracker_write_begin(f->t, off, sizeof(buf), &p.w);
	if (rc == 1) {
		while (!(rc = __atomic_load_n(&p.done, __ATOMIC_SEQ_CST)))
			usleep(1000);
		rc = rc == 1 ? 0 : rc;
	}
	assert_int_equal(rc, 0);
	assert_int_equal(file_pwrite_full(f->vol->fd, buf, sizeof(buf), off), 0);
	tracker_write_end(f->t, off, sizeof(buf));
}

static void checkpoint(struct fixture *f, const char *name)
{
	struct checkpoint c;

	assert_int_equal(tracker_checkpoint(f->t, name, &c), 0);
	f->ref_epoch = c.epoch;
	hash_volume(f, f->ref);
}

/* Every block that differs from the reference of the checkpoint with
 * epoch `since` must be reported; `must_differ` is the premise. */
static void assert_reported(struct fixture *f, const uint64_t *ref, uint8_t since,
			    uint64_t must_differ)
{
	uint64_t now[NBLOCKS];
	const struct changemap *cm = tracker_map(f->t);
	unsigned missed = 0;

	hash_volume(f, now);
	assert_true(now[must_differ / G] != ref[must_differ / G]);
	for (uint64_t b = 0; b < NBLOCKS; b++)
		if (now[b] != ref[b] && atomic_load(&cm->epoch[b]) <= since) {
			fprintf(stderr, "block %llu changed since epoch %u but is not reported\n",
				(unsigned long long)b, since);
			missed++;
		}
	assert_int_equal(missed, 0);
}

/* Nudge the flusher through a few turns. */
static void flusher_turns(struct fixture *f, int n)
{
	for (int i = 0; i < n; i++) {
		tracker_nudge(f->t);
		usleep(30000);
	}
}

/*
 * A checkpoint whose fdatasync failed after its slot was written: the
 * slot may come back at the next start.  Writes made after the failed
 * attempt must then count as changed since it.
 */
static void test_failed_checkpoint_comes_back_right(void **state)
{
	struct fixture *f = *state;
	struct checkpoint_list list;

	tracked_write(f, 1 * MIB, 1);
	checkpoint(f, "c1");
	f->fs.fail_sync[T_CHECKPOINTS] = 1;
	assert_int_equal(tracker_checkpoint(f->t, "c2", NULL), -EIO);
	assert_int_equal(fired(&f->fs, T_CHECKPOINTS), 1);	/* the premise */
	uint64_t at_c2[NBLOCKS];
	hash_volume(f, at_c2);
	tracked_write(f, 5 * MIB, 2);				/* after the attempt */

	struct volume_identity id;
	assert_int_equal(volume_identity_settled(f->vol, &id), 0);
	int rc = tracker_close(f->t, &id);
	f->t = NULL; /* freed even on error */
	assert_int_equal(rc, 0);
	open_tracker(f, false);
	tracker_checkpoints(f->t, &list);
	const struct checkpoint *c2 = checkpoint_find(&list, "c2");
	if (c2)	/* it came back: then it must be right */
		assert_reported(f, at_c2, c2->epoch, 5 * MIB);
	assert_reported(f, f->ref, f->ref_epoch, 5 * MIB);
	/* A retry under the same name works, and is right too. */
	if (!c2) {
		checkpoint(f, "c2");
		tracked_write(f, 9 * MIB, 3);
		assert_reported(f, f->ref, f->ref_epoch, 9 * MIB);
	}
}

/* The sequence numbers in block 0 of both slots of META/checkpoints. */
static void slot_seqs(struct fixture *f, uint64_t seq[2])
{
	uint8_t blk[MB_SIZE];
	int fd = openat(metadir_fd(f->md), CHECKPOINTS_NAME, O_RDONLY);

	assert_true(fd >= 0);
	for (int s = 0; s < 2; s++) {
		/* slot s starts at block 64 s (doc/format.md) */
		assert_int_equal(file_pread_full(fd, blk, MB_SIZE, (uint64_t)s * 64 * MB_SIZE), 0);
		memcpy(&seq[s], blk + 16, 8);
	}
	close(fd);
}

/*
 * A retry after a failed store writes the same slot again.  It must use
 * a new sequence number: a multi-block slot mixing blocks of the two
 * attempts would otherwise still validate.
 */
static void test_retry_uses_a_new_sequence(void **state)
{
	struct fixture *f = *state;
	uint64_t failed[2], retried[2];

	checkpoint(f, "c1");
	f->fs.fail_sync[T_CHECKPOINTS] = 1;
	assert_int_equal(tracker_checkpoint(f->t, "c2", NULL), -EIO);
	assert_int_equal(fired(&f->fs, T_CHECKPOINTS), 1);	/* the premise */
	slot_seqs(f, failed);
	checkpoint(f, "c2");
	slot_seqs(f, retried);
	uint64_t attempt = failed[0] > failed[1] ? failed[0] : failed[1];
	uint64_t retry = retried[0] > retried[1] ? retried[0] : retried[1];
	assert_true(retry > attempt);
}

/*
 * The flusher's sync of the volume fails once; the next one succeeds,
 * as Linux reports a writeback error once.  The error must latch: the
 * intents stay set, blocks that may have lost their data count as changed
 * after later checkpoints, and the close is not recorded as clean.
 */
static void test_volume_sync_error_latches(void **state)
{
	struct fixture *f = *state;
	struct tracker_info info;
	struct superblock sb;

	tracked_write(f, 2 * MIB, 1);
	checkpoint(f, "c1");
	f->fs.fail_sync[T_VOLUME] = 1;
	for (int i = 0; i < 100 && !fired(&f->fs, T_VOLUME); i++)
		flusher_turns(f, 1);
	assert_int_equal(fired(&f->fs, T_VOLUME), 1);		/* the premise */
	flusher_turns(f, 5);					/* later syncs succeed */

	tracker_info(f->t, &info);
	assert_true(info.regions_set > 0);			/* intents kept */
	assert_int_equal(volume_sync_error(f->vol), -EIO);	/* latched */
	assert_int_equal(info.volume_sync_error, -EIO);		/* and shown */

	/* The page with the lost writeback may read old data later: the
	 * block must count as changed after a checkpoint taken now. */
	struct checkpoint c2;
	assert_int_equal(tracker_checkpoint(f->t, "c2", &c2), 0);
	assert_true(atomic_load(&tracker_map(f->t)->epoch[2 * MIB / G]) > c2.epoch);

	struct volume_identity id;
	assert_int_equal(volume_identity_settled(f->vol, &id), 0);
	int rc = tracker_close(f->t, &id);
	f->t = NULL;
	assert_int_not_equal(rc, 0);				/* not clean */
	assert_int_equal(metadir_read_superblock(f->md, &sb), 0);
	assert_false(sb.state & SB_STATE_CLEAN);
}

/*
 * After a kill -9 the dead server's writes may be in the page cache only.
 * An offline command recovers and closes: the volume must be synced
 * before the intent commit that clears the regions.
 */
static void test_offline_close_syncs_before_clearing(void **state)
{
	struct fixture *f = *state;

	tracked_write(f, 3 * MIB, 1);
	tracker_abandon(f->t);		/* kill -9 */
	f->t = NULL;
	f->fs.nlog = 0;
	open_tracker(f, false);		/* an offline command... */
	assert_int_equal(tracker_checkpoint(f->t, "offline", NULL), 0);
	struct volume_identity id;
	assert_int_equal(volume_identity_settled(f->vol, &id), 0);
	int rc = tracker_close(f->t, &id);		/* ...closes */
	f->t = NULL;
	assert_int_equal(rc, 0);
	f->fs.log[f->fs.nlog] = 0;
	const char *vsync = strchr(f->fs.log, 'V');
	const char *last_intent = strrchr(f->fs.log, 'i');
	fprintf(stderr, "order of durable steps: %s\n", f->fs.log);
	assert_non_null(last_intent);		/* the clear was written */
	assert_non_null(vsync);
	assert_true(vsync < last_intent);	/* data durable before intents go */
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_failed_checkpoint_comes_back_right, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_retry_uses_a_new_sequence, setup, teardown),
		cmocka_unit_test_setup_teardown(test_volume_sync_error_latches, setup, teardown),
		cmocka_unit_test_setup_teardown(test_offline_close_syncs_before_clearing, setup,
						teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
