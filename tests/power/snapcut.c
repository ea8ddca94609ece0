/*
 * Power cuts under snapshots: each snapshot comes back intact or
 * reported invalid, never silently wrong (doc/snapshots.md).
 *
 * The real write pipeline runs (gate, copy-on-write, tracking, data)
 * with faultfs under all of its I/O: the volume's data writes and
 * flushes, the copies into the diff store and their records (through
 * tests/power/vio_fsops), and every metadata write and sync.  Each
 * trial, on a fresh volume, mixes batches of concurrent writes,
 * flushes, snapshots, deletes and settles of the diff store (what the
 * server's keeper does after a quiet second), then cuts the power: any
 * subset of the unsynced writes, data, copies and metadata alike, is
 * lost or torn.  Recovery opens the tracker and the snapshots as a
 * server started after the machine came back would, under a new boot id.
 *
 * The reference is the test's own: when a snapshot is taken (nothing in
 * flight), it hashes every block of the volume.  After the cut, every
 * acknowledged snapshot must still be listed; one listed valid must
 * read, block for block, as its reference; one listed invalid is
 * allowed only if the copies-pending mark was set when the power went.
 *
 * VOLTRACK_SNAPCUT_TRIALS sets the number of trials (default 40),
 * VOLTRACK_SNAPCUT_SEED the seed.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "crc32c.h"
#include "export.h"
#include "faultfs.h"
#include "metablock.h"
#include "metadir.h"
#include "snapshots.h"
#include "tracker.h"
#include "vio_fsops.h"

#define VOL_SIZE (8u << 20)
#define GRAN (64u << 10)
#define NBLOCKS (VOL_SIZE / GRAN)
#define MAX_SNAPS 4
#define MAX_BATCH 4
#define MAX_WRITE (192u << 10)

struct snap_ref {
	char name[32];
	bool invalid_before;	/* invalidated before the cut (e.g. store full) */
	uint64_t hash[NBLOCKS];
};

struct batch_op {
	struct vt_op op;
	struct iovec iov;
	uint8_t *buf;
	int err;
	bool done;
};

struct trial {
	struct faultfs *ff;
	char dir[64], vol_path[96], meta_path[96], boot_path[96];
	struct volume *vol;
	struct metadir *md;
	struct tracker *t;
	struct vt_snapshots *s;
	struct vt_loop loop;
	struct vt_target tgt;
	struct snap_ref refs[MAX_SNAPS];
	unsigned nrefs;
	struct batch_op ops[MAX_BATCH];
};

static struct {
	unsigned passed, failed;
	unsigned writes, snapshots, deletes, settled, copies, marker_waits;
	unsigned cuts_pending, cuts_clear;
	unsigned valid_checked, invalid_seen;
	unsigned dropped, torn, kept;
} stats;

static void check(bool ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void check(bool ok, const char *fmt, ...)
{
	va_list ap;

	if (ok) {
		stats.passed++;
		return;
	}
	stats.failed++;
	printf("FAIL: ");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
}

static uint64_t block_hash(const uint8_t *p)
{
	return ((uint64_t)crc32c(0, p, GRAN) << 32) | crc32c(0x5bd1e995, p, GRAN);
}

static void write_boot_id(struct trial *tr, const char *id)
{
	int fd = open(tr->boot_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

	if (fd < 0 || write(fd, id, strlen(id)) != (ssize_t)strlen(id)) {
		printf("cannot write %s\n", tr->boot_path);
		exit(2);
	}
	close(fd);
}

/* A fresh volume of random bytes, durable, and formatted metadata. */
static void setup(struct trial *tr)
{
	struct superblock sb = { .version = SB_VERSION };
	struct volume_identity id;
	uint8_t *buf = malloc(1 << 20);

	strcpy(tr->dir, "/tmp/voltrack-snapcut-XXXXXX");
	if (!buf || !mkdtemp(tr->dir))
		exit(2);
	snprintf(tr->vol_path, sizeof(tr->vol_path), "%s/disk.img", tr->dir);
	snprintf(tr->meta_path, sizeof(tr->meta_path), "%s/meta", tr->dir);
	snprintf(tr->boot_path, sizeof(tr->boot_path), "%s/boot_id", tr->dir);
	int fd = open(tr->vol_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	for (uint64_t off = 0; off < VOL_SIZE; off += 1 << 20) {
		for (size_t i = 0; i < (1 << 20) / 8; i++) {
			uint64_t v = faultfs_random(tr->ff);
			memcpy(buf + i * 8, &v, 8);
		}
		file_pwrite_full(fd, buf, 1 << 20, off);
	}
	fdatasync(fd);
	close(fd);
	free(buf);
	if (volume_open(tr->vol_path, 0, &tr->vol) || volume_identity(tr->vol, &id) ||
	    metadir_open(tr->meta_path, true, &vt_fsops_posix, &tr->md) || metadir_lock(tr->md)) {
		printf("cannot set up %s\n", tr->dir);
		exit(2);
	}
	vt_uuid_generate(&sb.volume_uuid);
	vt_uuid_generate(&sb.generation);
	sb.volume_size = VOL_SIZE;
	sb.granularity = GRAN;
	sb.volume_kind = SB_KIND_FILE;
	sb.sequence = 1;
	sb.state = SB_STATE_CLEAN;
	sb.id_size = id.size;
	sb.id_ino = id.ino;
	sb.id_ctime_ns = id.ctime_ns;
	sb.id_taken_ns = id.taken_ns;
	if (tracker_format(tr->md, &sb) || metadir_write_superblock(tr->md, &sb)) {
		printf("cannot format metadata\n");
		exit(2);
	}
	write_boot_id(tr, "00000000-0000-4000-8000-00000000000a");
}

static void teardown(struct trial *tr)
{
	metadir_close(tr->md);
	volume_close(tr->vol);
	char cmd[96];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", tr->dir);
	if (system(cmd)) {
		/* a temporary directory left behind is not a test failure */
	}
}

/* Open tracker and snapshots as a server does; live: tracking writes. */
static int open_all(struct trial *tr, bool live)
{
	struct tracker_config cfg;
	struct volume_identity id;
	/* Room for every snapshot's copies: a full store would invalidate
	 * snapshots before any cut. */
	struct diffstore_config dcfg = { .boot_id_path = tr->boot_path,
					  .limit = (MAX_SNAPS + 1) * (uint64_t)VOL_SIZE };

	tracker_config_defaults(&cfg);
	cfg.persist_interval_ms = 5;
	cfg.idle_ticks = 1;
	cfg.volume = tr->vol;
	int err = volume_identity(tr->vol, &id);
	if (!err)
		err = tracker_open(tr->md, &id, live, &cfg, &tr->t);
	if (!err) {
		err = vt_snapshots_open(tr->md, tr->t, tr->vol, &dcfg, false, &tr->s);
		if (err)
			tracker_abandon(tr->t);
	}
	if (err)
		return err;
	tr->tgt = (struct vt_target){ .vol = tr->vol, .tracker = tr->t };
	vt_snapshots_target(tr->s, &tr->tgt);
	return 0;
}

static void batch_done(struct vt_op *op, int err)
{
	struct batch_op *b = (struct batch_op *)op;

	b->err = err;
	b->done = true;
}

static void run_until_done(struct trial *tr, unsigned n)
{
	for (int turns = 0; turns < 100000; turns++) {
		unsigned done = 0;
		for (unsigned i = 0; i < n; i++)
			done += tr->ops[i].done;
		if (done == n)
			return;
		vt_loop_run(&tr->loop, 10);
	}
	printf("ops never completed\n");
	exit(2);
}

static void start_op(struct trial *tr, unsigned i, uint8_t type, uint64_t off, uint64_t len)
{
	struct batch_op *b = &tr->ops[i];

	memset(&b->op, 0, sizeof(b->op));
	b->iov = (struct iovec){ .iov_base = b->buf, .iov_len = len };
	b->op.type = type;
	b->op.off = off;
	b->op.len = len;
	b->op.iov = &b->iov;
	b->op.iovcnt = 1;
	b->op.done = batch_done;
	b->done = false;
	b->err = 1;
	vt_op_start(&tr->loop, &tr->tgt, &b->op);
}

/* Up to MAX_BATCH writes in flight at once, some overlapping chunks. */
static void write_batch(struct trial *tr)
{
	unsigned n = 1 + (unsigned)(faultfs_random(tr->ff) % MAX_BATCH);

	for (unsigned i = 0; i < n; i++) {
		uint64_t len = 512 * (1 + faultfs_random(tr->ff) % (MAX_WRITE / 512));
		uint64_t off = 512 * (faultfs_random(tr->ff) % ((VOL_SIZE - len) / 512));
		for (uint64_t k = 0; k < len; k += 8) {
			uint64_t v = faultfs_random(tr->ff);
			memcpy(tr->ops[i].buf + k, &v, 8);
		}
		start_op(tr, i, VT_OP_WRITE, off, len);
	}
	run_until_done(tr, n);
	for (unsigned i = 0; i < n; i++)
		check(tr->ops[i].err == 0, "a write was acknowledged: %s",
		      strerror(-tr->ops[i].err));
	stats.writes += n;
}

static void hash_volume(struct trial *tr, uint64_t *out)
{
	uint8_t *buf = malloc(GRAN);

	for (uint64_t b = 0; b < NBLOCKS; b++) {
		if (file_pread_full(tr->vol->fd, buf, GRAN, b * GRAN))
			memset(buf, 0xee, GRAN);
		out[b] = block_hash(buf);
	}
	free(buf);
}

static void take_snapshot(struct trial *tr, unsigned trial, unsigned step)
{
	struct snap_ref *ref = &tr->refs[tr->nrefs];
	struct vt_snap_phases ph;

	snprintf(ref->name, sizeof(ref->name), "s%u-%u", trial, step);
	int err = vt_snapshots_take(tr->s, ref->name, 10000, &ph);
	check(err == 0, "snapshot %s taken: %s", ref->name, strerror(-err));
	if (err)
		return;
	/* Nothing is in flight: the volume as it reads now is the instant. */
	hash_volume(tr, ref->hash);
	tr->nrefs++;
	stats.snapshots++;
}

static void delete_snapshot(struct trial *tr)
{
	unsigned i = (unsigned)(faultfs_random(tr->ff) % tr->nrefs);
	uint64_t freed;

	int err = vt_snapshots_delete(tr->s, tr->refs[i].name, &freed);
	check(err == 0, "snapshot %s deleted: %s", tr->refs[i].name, strerror(-err));
	tr->refs[i] = tr->refs[--tr->nrefs];
	stats.deletes++;
}

static void workload(struct trial *tr, unsigned trial)
{
	unsigned steps = 10 + (unsigned)(faultfs_random(tr->ff) % 40);

	for (unsigned step = 0; step < steps; step++) {
		unsigned pick = (unsigned)(faultfs_random(tr->ff) % 100);
		if (pick < 55) {
			write_batch(tr);
		} else if (pick < 65) {
			start_op(tr, 0, VT_OP_FLUSH, 0, 0);
			run_until_done(tr, 1);
			check(tr->ops[0].err == 0, "a flush succeeded");
		} else if (pick < 80 && tr->nrefs < MAX_SNAPS) {
			take_snapshot(tr, trial, step);
		} else if (pick < 85 && tr->nrefs) {
			delete_snapshot(tr);
		} else if (pick < 95) {
			/* what the keeper does after a quiet second */
			int err = vt_snapshots_settle(tr->s);
			check(err == 0 || err == -EAGAIN, "settle: %s", strerror(-err));
			stats.settled += err == 0;
		} else {
			tracker_nudge(tr->t);
			nanosleep(&(struct timespec){ 0, 2000000 }, NULL);
		}
	}
	if (faultfs_random(tr->ff) % 2 == 0) {
		/* End on writes not yet synced, a snapshot of them, and a
		 * settle: the cut then finds the mark clear, and the snapshot
		 * whole only if the settle made its instant durable. */
		write_batch(tr);
		if (tr->nrefs == MAX_SNAPS)
			delete_snapshot(tr);
		take_snapshot(tr, trial, steps);
		check(vt_snapshots_settle(tr->s) == 0, "trial %u: a settle with no copy under "
		      "way clears the mark", trial);
		stats.settled++;
	}
}

/* The power goes out: nothing the process does from here reaches the
 * disk, and the disk keeps what it kept. */
static bool cut_power(struct trial *tr)
{
	static struct checkpoint_list list;
	bool pending = atomic_load(&tr->s->ds->pending);

	tracker_checkpoints(tr->t, &list);
	for (unsigned i = 0; i < tr->nrefs; i++)
		for (uint32_t k = 0; k < list.n; k++)
			if (!strcmp(list.items[k].name, tr->refs[i].name))
				tr->refs[i].invalid_before = list.items[k].flags & CKPT_F_INVALID;

	stats.copies += (unsigned)atomic_load(&tr->s->ds->copies_started);
	struct ds_marker *m = tr->s->ds->marker;
	pthread_mutex_lock(&m->lock);
	stats.marker_waits += (unsigned)m->waits;
	pthread_mutex_unlock(&m->lock);
	for (enum fault_op op = FAULT_PWRITE; op <= FAULT_FSYNC_DIR; op++)
		faultfs_arm(tr->ff, &(struct fault_spec){ .op = op, .fd = -1,
							  .times = FAULT_FOREVER, .err = -EIO,
							  .even_clean = true });
	vt_loop_destroy(&tr->loop);
	vt_snapshots_close(tr->s);
	tracker_abandon(tr->t);
	faultfs_disarm_all(tr->ff);
	faultfs_crash(tr->ff);
	stats.dropped += tr->ff->dropped;
	stats.torn += tr->ff->torn;
	stats.kept += tr->ff->kept;
	return pending;
}

static void read_done(struct vt_op *op, int err)
{
	batch_done(op, err);
}

/* After the cut: every acknowledged snapshot listed; valid ones exact. */
static void verify(struct trial *tr, unsigned trial, bool pending)
{
	static struct checkpoint_list list;
	uint8_t *buf = tr->ops[0].buf;

	tracker_checkpoints(tr->t, &list);
	for (unsigned i = 0; i < tr->nrefs; i++) {
		const struct snap_ref *ref = &tr->refs[i];
		const struct checkpoint *c = NULL;
		for (uint32_t k = 0; k < list.n; k++)
			if (!strcmp(list.items[k].name, ref->name))
				c = &list.items[k];
		check(c && (c->flags & CKPT_F_SNAPSHOT), "trial %u: acknowledged snapshot %s "
		      "is still listed as a snapshot", trial, ref->name);
		if (!c || !(c->flags & CKPT_F_SNAPSHOT))
			continue;
		if (c->flags & CKPT_F_INVALID) {
			stats.invalid_seen++;
			check(pending || ref->invalid_before, "trial %u: snapshot %s invalid "
			      "although no copy was pending at the cut", trial, ref->name);
			continue;
		}
		struct vt_export *e;
		int err = vt_snapshots_export(tr->s, ref->name, &e);
		check(err == 0, "trial %u: export of %s: %s", trial, ref->name, strerror(-err));
		if (err)
			continue;
		uint64_t wrong = 0;
		for (uint64_t b = 0; b < NBLOCKS; b++) {
			struct batch_op *r = &tr->ops[0];
			memset(&r->op, 0, sizeof(r->op));
			r->iov = (struct iovec){ .iov_base = buf, .iov_len = GRAN };
			r->op = (struct vt_op){ .type = VT_OP_READ, .off = b * GRAN, .len = GRAN,
						.iov = &r->iov, .iovcnt = 1, .done = read_done };
			r->done = false;
			vt_export_start(e, &tr->loop, &r->op);
			run_until_done(tr, 1);
			wrong += r->err != 0 || block_hash(buf) != ref->hash[b];
		}
		vt_export_put(e);
		check(wrong == 0, "trial %u: snapshot %s listed valid reads %llu block(s) unlike "
		      "its instant", trial, ref->name, (unsigned long long)wrong);
		stats.valid_checked++;
	}
}

static void run_trial(struct faultfs *ff, unsigned trial)
{
	static struct trial tr;
	struct vio_engine *eng;

	memset(&tr, 0, sizeof(tr));
	tr.ff = ff;
	for (unsigned i = 0; i < MAX_BATCH; i++)
		tr.ops[i].buf = malloc(MAX_WRITE);
	setup(&tr);
	metadir_set_fsops(tr.md, &ff->ops);
	int err = open_all(&tr, true);
	check(err == 0, "trial %u: live open: %s", trial, strerror(-err));
	if (err)
		exit(1);
	/* As a server does: copiers wait for the mark on its own thread. */
	if (diffstore_start_marker(tr.s->ds))
		exit(2);
	if (vio_fsops_create(&ff->ops, &eng))
		exit(2);
	vt_loop_init_engine(&tr.loop, eng);
	workload(&tr, trial);
	bool pending = cut_power(&tr);
	stats.cuts_pending += pending;
	stats.cuts_clear += !pending;

	/* The machine comes back: another boot, a new process (the volume
	 * opened again: nothing latched survives), the real file operations. */
	volume_close(tr.vol);
	if (volume_open(tr.vol_path, 0, &tr.vol))
		exit(2);
	write_boot_id(&tr, "00000000-0000-4000-8000-00000000000b");
	metadir_set_fsops(tr.md, &vt_fsops_posix);
	err = open_all(&tr, false);
	check(err == 0, "trial %u: recovery open: %s", trial, strerror(-err));
	if (!err) {
		if (vio_fsops_create(&vt_fsops_posix, &eng))
			exit(2);
		vt_loop_init_engine(&tr.loop, eng);
		verify(&tr, trial, pending);
		vt_loop_destroy(&tr.loop);
		vt_snapshots_close(tr.s);
		struct volume_identity id;
		volume_identity(tr.vol, &id);
		err = tracker_close(tr.t, &id);
		check(err == 0, "trial %u: close after recovery: %s", trial, strerror(-err));
	}
	teardown(&tr);
	for (unsigned i = 0; i < MAX_BATCH; i++)
		free(tr.ops[i].buf);
}

int main(void)
{
	const char *env = getenv("VOLTRACK_SNAPCUT_TRIALS");
	unsigned trials = env ? (unsigned)atoi(env) : 40;
	const char *seed_env = getenv("VOLTRACK_SNAPCUT_SEED");
	uint64_t seed = seed_env ? strtoull(seed_env, NULL, 0) : (uint64_t)time(NULL);
	static struct faultfs ff;

	faultfs_init(&ff, seed);
	printf("snapshot power-cut trials: %u, seed %llu\n", trials, (unsigned long long)seed);
	for (unsigned trial = 0; trial < trials; trial++)
		run_trial(&ff, trial);
	faultfs_destroy(&ff);

	printf("writes %u, snapshots %u, deleted %u, copies %u (%u waited for the marker), "
	       "settles that cleared the mark %u\n", stats.writes, stats.snapshots, stats.deletes,
	       stats.copies, stats.marker_waits, stats.settled);
	printf("cuts with copies pending %u, with the mark clear %u; unsynced writes at the "
	       "cuts: %u lost, %u torn, %u kept\n", stats.cuts_pending, stats.cuts_clear,
	       stats.dropped, stats.torn, stats.kept);
	printf("snapshots checked valid and exact %u, reported invalid %u\n",
	       stats.valid_checked, stats.invalid_seen);
	/* The premises: without these the trials tested nothing. */
	if (trials >= 20) {
		check(stats.copies > 0, "copies were made");
		check(stats.marker_waits > 0, "copies waited for the marker to set the mark");
		check(stats.dropped > 0, "cuts lost unsynced writes");
		check(stats.cuts_pending > 0 && stats.cuts_clear > 0,
		      "cuts came both with copies pending and with the mark clear");
		check(stats.valid_checked > 0, "valid snapshots were checked after cuts");
		check(stats.invalid_seen > 0, "snapshots were invalidated after cuts");
	}
	printf("%u passed, %u failed\n", stats.passed, stats.failed);
	return stats.failed ? 1 : 0;
}
