/*
 * Directory-entry trials: power cuts that find creates and renames no
 * directory sync has made durable, and failing renames, directory syncs
 * and reads.
 *
 * faultfs (faultfs.h) keeps a create or rename only in the directory
 * until the directory is synced: a power cut before that keeps or loses
 * each one, and a created file whose entry is lost is gone with its
 * data.  The tracker's references are the test's own, as in faults.c: a
 * hash of every block at each checkpoint, and invariant I1 checked
 * against them after recovery.
 *
 * Scenarios:
 *  s  the simulator itself: what a cut does to unsynced creates,
 *     renames, unlinks, directories and lengths, and its faults;
 *  i  init (a new volume file, the metadata directory, every file and
 *     the superblock), then a cut that keeps nothing unsynced: all of it
 *     is there and the next start is clean;
 *  c  a clean close, then such a cut: the next start is clean;
 *  r  a replacement cut before its directory sync (the sync fails, then
 *     the power goes): the superblock at a close and at a live start,
 *     and the change map, intent file, checkpoint list and superblock
 *     rewritten when history is reset.  The old or the new file is there,
 *     whole, and I1 holds; trials repeat until both outcomes were seen;
 *  e  a failing rename (the superblock at a close), failing reads of
 *     every metadata file at a start, and failures while creating a
 *     volume or a metadata directory: a clear error, nothing written,
 *     no history lost.
 *
 * VOLTRACK_FAULTS_SEED sets the seed (default: the time); each scenario
 * derives its own from it and prints it.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "metablock.h"
#include "scenario.h"

/* A scenario with no volume or tracker: just a directory of its own. */
static void bare_begin(struct scen *s, const char *label, uint64_t seed)
{
	static unsigned n;

	memset(s, 0, sizeof(*s));
	s->label = label;
	s->seed = seed;
	s->failed_before = failed;
	scenarios++;
	printf("[%s] seed %llu\n", label, (unsigned long long)seed);
	faultfs_init(&s->ff, seed);
	pthread_mutex_init(&s->lock, NULL);
	pthread_cond_init(&s->cond, NULL);
	snprintf(s->meta, sizeof(s->meta), "%s/bare-%u", top_dir, n++);
	if (mkdir(s->meta, 0700) < 0) {
		perror("mkdir");
		exit(2);
	}
}

static bool exists(int dirfd, const char *name)
{
	struct stat st;
	return fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0;
}

static ino_t inode_of(int dirfd, const char *name)
{
	struct stat st;
	return fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 ? st.st_ino : 0;
}

static uint64_t size_of(int dirfd, const char *name)
{
	struct stat st;
	return fstatat(dirfd, name, &st, 0) == 0 ? (uint64_t)st.st_size : UINT64_MAX;
}

/* The simulator's hidden names left in a directory. */
static unsigned hidden_left(int dirfd)
{
	DIR *d = fdopendir(dup(dirfd));
	struct dirent *e;
	unsigned n = 0;

	if (!d)
		return 0;
	rewinddir(d);
	while ((e = readdir(d)))
		n += strncmp(e->d_name, ".faultfs-", 9) == 0;
	closedir(d);
	return n;
}

/* dirfd/name holds exactly `want`. */
static bool holds(int dirfd, const char *name, const char *want)
{
	char buf[64];
	int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return false;
	n = pread(fd, buf, sizeof(buf), 0);
	close(fd);
	return n == (ssize_t)strlen(want) && memcmp(buf, want, (size_t)n) == 0;
}

/* Write a new file through ops, its data synced (its entry not). */
static int put(const struct vt_fsops *o, int dirfd, const char *name, const char *text)
{
	int fd = o->openat(o, dirfd, name, O_WRONLY | O_CREAT | O_TRUNC);
	int err;

	if (fd < 0)
		return fd;
	err = o->pwrite(o, fd, text, strlen(text), 0);
	if (!err)
		err = o->fdatasync(o, fd);
	close(fd);
	return err;
}

/* ---- (s) the simulator ---- */

static void scenario_simulator(uint64_t seed)
{
	struct scen sc, *s = &sc;
	unsigned olds = 0, news = 0, beside = 0, trials = 0;
	char old[16], new[16];
	int d, f, err;

	bare_begin(s, "s the simulator: entries need the directory's sync", seed);
	const struct vt_fsops *o = &s->ff.ops;
	d = open(s->meta, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	/* A durable file, replaced by rename with no directory sync. */
	check(s, put(o, d, "a", "old") == 0 && o->fsync_dir(o, d) == 0, "a durable file");
	check(s, put(o, d, "a.tmp", "new") == 0 && o->rename(o, d, "a.tmp", "a") == 0,
	      "replace it by rename");
	check(s, holds(d, "a", "new") && !exists(d, "a.tmp"), "lookups see the rename at once");
	check(s, faultfs_pending_entries(&s->ff, d) == 2, "the create and the rename are "
	      "unsynced (%u)", faultfs_pending_entries(&s->ff, d));
	faultfs_crash_lose_all(&s->ff);
	check(s, holds(d, "a", "old") && !exists(d, "a.tmp"), "a cut that keeps nothing "
	      "brings the old file back and takes the temporary away");
	check(s, s->ff.entries_lost == 2 && hidden_left(d) == 0, "both changes lost (%u), "
	      "no hidden name left (%u)", s->ff.entries_lost, hidden_left(d));

	/* The same, with the directory synced after the rename. */
	put(o, d, "a.tmp", "new");
	o->rename(o, d, "a.tmp", "a");
	check(s, o->fsync_dir(o, d) == 0, "directory sync");
	check(s, faultfs_pending_entries(&s->ff, d) == 0, "nothing unsynced after the sync");
	faultfs_crash_lose_all(&s->ff);
	check(s, holds(d, "a", "new") && !exists(d, "a.tmp") && hidden_left(d) == 0,
	      "a synced rename survives the cut");

	/* Random cuts: the old file or the new one, whole, every time. */
	while (trials < 200 && (trials < 16 || !olds || !news || !beside)) {
		snprintf(old, sizeof(old), "old%u", trials);
		snprintf(new, sizeof(new), "new%u", trials);
		put(o, d, "a.tmp", old);
		o->rename(o, d, "a.tmp", "a");
		o->fsync_dir(o, d);
		put(o, d, "a.tmp", new);
		o->rename(o, d, "a.tmp", "a");
		faultfs_crash(&s->ff);
		trials++;
		if (holds(d, "a", new) && !exists(d, "a.tmp")) {
			news++;
		} else if (holds(d, "a", old) && (!exists(d, "a.tmp") || holds(d, "a.tmp", new))) {
			olds++;
			beside += exists(d, "a.tmp");
		} else {
			check(s, false, "cut %u: neither the old nor the new file is in place", trials);
		}
		check(s, hidden_left(d) == 0, "cut %u: no hidden name left", trials);
	}
	note("%u random cuts of a replacement: %u new, %u old (%u with the temporary beside)",
	     trials, news, olds, beside);
	check(s, news && olds && beside, "premise: every outcome was seen");

	/* A new file whose data is synced but whose entry is not: gone. */
	put(o, d, "b", "data");
	faultfs_crash_lose_all(&s->ff);
	check(s, !exists(d, "b"), "an unsynced create is lost with its synced data");

	/* An unlink is an entry change too. */
	check(s, o->unlink(o, d, "a") == 0 && !exists(d, "a"), "unlink");
	faultfs_crash_lose_all(&s->ff);
	check(s, exists(d, "a") && hidden_left(d) == 0, "an unsynced unlink is undone");
	o->unlink(o, d, "a");
	o->fsync_dir(o, d);
	faultfs_crash_lose_all(&s->ff);
	check(s, !exists(d, "a") && hidden_left(d) == 0, "a synced unlink stays");

	/* A directory whose own entry is not synced goes with its files. */
	check(s, o->mkdirat(o, d, "sub") == 0, "mkdir");
	int sd = openat(d, "sub", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	check(s, put(o, sd, "f", "x") == 0 && o->fsync_dir(o, sd) == 0, "a file in it, synced");
	close(sd);
	faultfs_crash_lose_all(&s->ff);
	check(s, !exists(d, "sub") && hidden_left(d) == 0, "an unsynced mkdir is lost with "
	      "what is in it");

	/* A length is durable once the file is synced. */
	int fd = o->openat(o, d, "c", O_WRONLY | O_CREAT);
	o->fsync_dir(o, d);
	check(s, o->ftruncate(o, fd, 1 << 20) == 0 && size_of(d, "c") == 1 << 20, "ftruncate");
	faultfs_crash_lose_all(&s->ff);
	check(s, size_of(d, "c") == 0, "an unsynced ftruncate is lost (size %llu)",
	      (unsigned long long)size_of(d, "c"));
	o->ftruncate(o, fd, 1 << 20);
	o->fdatasync(o, fd);
	faultfs_crash_lose_all(&s->ff);
	check(s, size_of(d, "c") == 1 << 20, "a synced ftruncate stays");
	close(fd);

	/* Faults: a failed call changes nothing, and counts. */
	put(o, d, "a", "one");
	o->fsync_dir(o, d);
	put(o, d, "a.tmp", "two");
	f = faultfs_fail_file(&s->ff, FAULT_RENAME, "a", 0, -EIO);
	err = o->rename(o, d, "a.tmp", "a");
	check(s, err == -EIO && faultfs_fired(&s->ff, f) == 1 && holds(d, "a", "one") &&
	      exists(d, "a.tmp"), "a failed rename: EIO (%s), fired once, nothing renamed",
	      errname(err));
	f = faultfs_fail_file(&s->ff, FAULT_FSYNC_DIR, "a", 0, -EIO);
	o->fsync_dir(o, d); /* a.tmp's create is pending, but "a" is not named */
	check(s, faultfs_fired(&s->ff, f) == 0, "a directory-sync fault waits for a sync that "
	      "would make its name durable");
	o->rename(o, d, "a.tmp", "a");
	err = o->fsync_dir(o, d);
	check(s, err == -EIO && faultfs_fired(&s->ff, f) == 1 &&
	      faultfs_pending_entries(&s->ff, d) == 1, "a failed directory sync: EIO (%s), "
	      "fired once, the rename still unsynced", errname(err));
	f = faultfs_fail_file(&s->ff, FAULT_PREAD, "a", 0, -EIO);
	char buf[8];
	fd = o->openat(o, d, "a", O_RDONLY);
	ssize_t got = o->pread(o, fd, buf, sizeof(buf), 0);
	check(s, got == -EIO && faultfs_fired(&s->ff, f) == 1, "a read fault: EIO (%zd)", got);
	got = o->pread(o, fd, buf, sizeof(buf), 0);
	check(s, got == 3 && memcmp(buf, "two", 3) == 0, "the next read works (%zd)", got);
	close(fd);
	close(d);
	end(s);
}

/* ---- (i) init, then a power cut ---- */

/*
 * The library calls `voltrack init VOLUME --size SIZE` makes
 * (cli/cmd_init.c), through ops: the volume, the metadata directory,
 * the tracking files, then the superblock.
 */
static int init_like_cli(const struct vt_fsops *ops, const char *volume, const char *meta,
			 uint64_t size, struct superblock *sb)
{
	struct metadir *md = NULL;
	struct volume *vol = NULL;
	struct volume_identity id;
	int err = volume_create_file(ops, volume, size);

	if (!err)
		err = metadir_open(meta, true, ops, &md);
	if (!err)
		err = metadir_lock(md);
	memset(sb, 0, sizeof(*sb));
	if (!err)
		err = vt_uuid_generate(&sb->volume_uuid);
	if (!err)
		err = vt_uuid_generate(&sb->generation);
	if (!err)
		err = volume_open(volume, VOLUME_READ_ONLY, &vol);
	if (!err)
		err = volume_identity_settled(vol, &id);
	volume_close(vol);
	if (!err) {
		sb->version = SB_VERSION;
		sb->volume_size = size;
		sb->granularity = GRAN;
		sb->volume_kind = SB_KIND_FILE;
		sb->created = (uint64_t)time(NULL);
		sb->sequence = 1;
		sb->state = SB_STATE_CLEAN;
		sb->id_size = id.size;
		sb->id_ino = id.ino;
		sb->id_ctime_ns = id.ctime_ns;
		sb->id_taken_ns = id.taken_ns;
		err = tracker_format(md, sb);
	}
	if (!err)
		err = metadir_write_superblock(md, sb);
	metadir_close(md);
	return err;
}

/* init into layout `sep`: the metadata beside the volume (VOLUME.voltrack),
 * or with --meta in a directory of its own, so that the volume's entry
 * and the metadata directory's are synced by different calls. */
static void init_and_cut(struct scen *s, bool sep)
{
	struct superblock sb, got;
	char vdir[500], volume[600], meta[700];
	const uint64_t size = 32ull << 20;

	snprintf(vdir, sizeof(vdir), "%s/%s", s->meta, sep ? "volumes" : "beside");
	mkdir(vdir, 0700);
	snprintf(volume, sizeof(volume), "%s/disk.img", vdir);
	if (sep)
		snprintf(meta, sizeof(meta), "%s/meta", s->meta);
	else
		snprintf(meta, sizeof(meta), "%s.voltrack", volume);
	unsigned changes = s->ff.entry_changes;
	int err = init_like_cli(&s->ff.ops, volume, meta, size, &sb);
	check(s, err == 0, "init: %s", errname(err));
	check(s, s->ff.entry_changes - changes >= 9, "premise: the entries were made through "
	      "the simulator (%u changes)", s->ff.entry_changes - changes);
	unsigned n = faultfs_crash_lose_all(&s->ff);
	note("%s: power cut after init: %u unsynced write(s) or entry change(s), all lost",
	     sep ? "--meta elsewhere" : "metadata beside the volume", n);

	int vd = open(vdir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	check(s, size_of(vd, "disk.img") == size, "the volume survives with its size (%lld)",
	      (long long)size_of(vd, "disk.img"));
	close(vd);
	struct metadir *md = NULL;
	err = metadir_open(meta, false, &vt_fsops_posix, &md);
	check(s, err == 0, "the metadata directory survives: %s", errname(err));
	if (err)
		return;
	err = metadir_read_superblock(md, &got);
	check(s, err == 0 && vt_uuid_equal(&got.volume_uuid, &sb.volume_uuid) &&
	      vt_uuid_equal(&got.generation, &sb.generation), "the superblock init wrote "
	      "survives: %s", errname(err));

	struct volume *vol = NULL;
	struct tracker *t = NULL;
	struct tracker_config cfg;
	struct volume_identity id;
	err = volume_open(volume, 0, &vol);
	if (!err)
		err = volume_identity(vol, &id);
	tracker_config_defaults(&cfg);
	cfg.volume = vol;
	if (!err)
		err = tracker_open(md, &id, false, &cfg, &t);
	check(s, err == 0, "the tracker opens: %s", errname(err));
	if (!err) {
		struct tracker_info info;
		tracker_info(t, &info);
		check(s, info.start == TRACKER_START_CLEAN, "the first start is clean (%s: %s)",
		      tracker_start_name(info.start), info.start_detail);
		tracker_abandon(t);
	}
	volume_close(vol);
	metadir_close(md);
}

static void scenario_init(uint64_t seed)
{
	struct scen sc, *s = &sc;

	bare_begin(s, "i init, then a power cut", seed);
	init_and_cut(s, false);
	init_and_cut(s, true);
	end(s);
}

/* ---- (c) a clean close, then a power cut ---- */

static void scenario_clean_close(uint64_t seed)
{
	struct scen sc, *s = &sc;
	struct verdict v;
	struct volume_identity id, before;

	begin(s, "c clean close, then a power cut", seed);
	open_live(s, PERSIST_MS, IDLE_TICKS);
	check(s, checkpoint(s, "c1") == 0, "checkpoint c1");
	write_blocks(s, 10, 8);
	write_blocks(s, REGION_BLOCKS + 3, 4);
	unsigned synced = s->ff.entries_synced;
	volume_identity_settled(s->vol, &id);
	remember_generation(s);
	int err = tracker_close(s->t, &id);
	s->t = NULL;
	check(s, err == 0, "clean close: %s", errname(err));
	check(s, s->ff.entries_synced > synced, "premise: the close replaced the superblock "
	      "through the simulator and synced its directory");
	power_cut(s, true, &before);
	recover_and_verify(s, &before, &v);
	check(s, v.start == TRACKER_START_CLEAN && !v.gen_changed, "a clean close that "
	      "returned survives a power cut: the next start is clean (got %s)",
	      tracker_start_name(v.start));
	end(s);
}

/* ---- (r) a replacement cut before its directory sync ---- */

enum replaced { R_SB_CLOSE, R_SB_START, R_MAP, R_INTENT, R_CKPT, R_SB_RESET };

static const struct {
	const char *what, *file;
} replaced[] = {
	[R_SB_CLOSE] = { "the superblock at a clean close", "superblock" },
	[R_SB_START] = { "the superblock at a live start", "superblock" },
	[R_MAP] = { "the change map at a reset", MAPFILE_NAME },
	[R_INTENT] = { "the intent file at a reset", INTENT_NAME },
	[R_CKPT] = { "the checkpoint list at a reset", CHECKPOINTS_NAME },
	[R_SB_RESET] = { "the superblock at a reset", "superblock" },
};

/* A block of the volume written while no tracker runs, durably. */
static void offline_write(struct scen *s, uint64_t block)
{
	uint8_t *data = malloc(GRAN);

	random_fill(s, data, GRAN);
	check(s, file_pwrite_full(vol_fd(s), data, GRAN, block * GRAN) == 0 &&
	      fdatasync(vol_fd(s)) == 0, "offline write");
	free(data);
}

/* One trial: true when the new file was in place after the cut. */
static bool trial_replacement(const char *label, uint64_t seed, enum replaced r)
{
	struct scen sc, *s = &sc;
	struct verdict v;
	struct volume_identity id, before;
	const char *file = replaced[r].file;
	int err;

	begin(s, label, seed);
	open_live(s, PERSIST_MS, IDLE_TICKS);
	check(s, checkpoint(s, "c1") == 0, "checkpoint c1");
	write_blocks(s, 10, 8);
	write_blocks(s, REGION_BLOCKS + 3, 4);
	check(s, wait_quiet(s, 3000), "premise: intents cleared");
	volume_identity_settled(s->vol, &id);
	remember_generation(s);
	if (r != R_SB_CLOSE) {
		err = tracker_close(s->t, &id);
		s->t = NULL;
		check(s, err == 0, "clean close: %s", errname(err));
		/* Written while nothing tracked it: the next start resets the
		 * history and rewrites every file. */
		if (r != R_SB_START)
			offline_write(s, 3 * REGION_BLOCKS + 11);
	}

	int f = faultfs_fail_file(&s->ff, FAULT_FSYNC_DIR, file, 0, -EIO);
	if (r == R_SB_CLOSE) {
		err = tracker_close(s->t, &id);
		s->t = NULL;
		check(s, err == -EIO, "a close whose directory sync fails reports it (got %s)",
		      errname(err));
	} else {
		err = open_tracker(s, true, PERSIST_MS, IDLE_TICKS, NULL);
		check(s, err == -EIO, "a start whose directory sync fails reports it (got %s)",
		      errname(err));
		if (!err)
			tracker_abandon(s->t);
		s->t = NULL;
	}
	check(s, faultfs_fired(&s->ff, f) == 1, "premise: the directory sync after replacing "
	      "%s failed (fired %u)", file, faultfs_fired(&s->ff, f));
	check(s, faultfs_pending_entries(&s->ff, metadir_fd(s->md)) > 0, "premise: the "
	      "replacement is not durable at the cut");
	ino_t replacement = inode_of(metadir_fd(s->md), file);

	power_cut(s, false, &before);
	bool is_new = inode_of(metadir_fd(s->md), file) == replacement;
	struct superblock sb;
	err = metadir_read_superblock(s->md, &sb);
	check(s, err == 0, "the superblock is there, whole: %s", errname(err));
	note("after the cut %s is the %s one", file, is_new ? "new" : "old");
	recover_and_verify(s, &before, &v);
	if (r == R_SB_CLOSE || r == R_SB_START)
		check(s, kept_history(&v), "nothing was lost that needs a reset (start %s)",
		      tracker_start_name(v.start));
	else if (v.r[0].present)
		check(s, v.r[0].differ > 0, "premise: blocks differ from c1's reference");
	/* Otherwise c1 went with the files of the old generation, under a
	 * new one (recover_and_verify checks that): the reset's own rule. */
	end(s);
	return is_new;
}

static void scenario_replacement(enum replaced r, uint64_t *seed)
{
	unsigned news = 0, olds = 0, trials = 0;
	char label[160];

	/* Each outcome comes up at least one time in four. */
	while (trials < 40 && (trials < 2 || !news || !olds)) {
		snprintf(label, sizeof(label), "r%u.%u %s, cut before its directory sync",
			 (unsigned)r + 1, trials + 1, replaced[r].what);
		*seed += 0x9e3779b97f4a7c15ull;
		if (trial_replacement(label, *seed, r))
			news++;
		else
			olds++;
		trials++;
	}
	printf("(r%u) %s: %u trial(s), new file kept %u, old file back %u\n\n", (unsigned)r + 1,
	       replaced[r].what, trials, news, olds);
	check(NULL, news && olds, "(r%u) premise: both the old and the new file were seen "
	      "after a cut", (unsigned)r + 1);
}

/* ---- (e) failing renames, reads and creations ---- */

static void scenario_failed_rename(const char *label, uint64_t seed, bool cut)
{
	struct scen sc, *s = &sc;
	struct verdict v;
	struct volume_identity id;
	struct superblock sb;

	begin(s, label, seed);
	open_live(s, PERSIST_MS, IDLE_TICKS);
	check(s, checkpoint(s, "c1") == 0, "checkpoint c1");
	write_blocks(s, 10, 8);
	write_blocks(s, 2 * REGION_BLOCKS + 3, 4);
	int f = faultfs_fail_file(&s->ff, FAULT_RENAME, "superblock", 0, -EIO);
	volume_identity_settled(s->vol, &id);
	remember_generation(s);
	int err = tracker_close(s->t, &id);
	s->t = NULL;
	check(s, faultfs_fired(&s->ff, f) == 1, "premise: the superblock's rename failed");
	check(s, err == -EIO, "a close whose rename fails reports it (got %s)", errname(err));
	check(s, !exists(metadir_fd(s->md), "superblock.tmp"), "the temporary is removed");
	err = metadir_read_superblock(s->md, &sb);
	check(s, err == 0 && !(sb.state & SB_STATE_CLEAN), "the old superblock, not clean, "
	      "is in place: %s", errname(err));
	stop_and_verify(s, cut, false, &v);
	check(s, kept_history(&v) && v.r[0].present, "no history lost (start %s)",
	      tracker_start_name(v.start));
	end(s);
}

static void scenario_failed_read(const char *label, uint64_t seed, const char *file,
				 unsigned skip)
{
	struct scen sc, *s = &sc;
	struct verdict v;
	struct superblock before, after;

	begin(s, label, seed);
	open_live(s, PERSIST_MS, IDLE_TICKS);
	check(s, checkpoint(s, "c1") == 0, "checkpoint c1");
	write_blocks(s, 10, 8);
	write_blocks(s, REGION_BLOCKS + 3, 4);
	kill_tracker(s);

	unsigned writes = faultfs_pending(&s->ff, -1), entries = s->ff.entry_changes;
	metadir_read_superblock(s->md, &before);
	struct fault_spec spec = { .op = FAULT_PREAD, .fd = -1, .file = file, .skip = skip,
				   .times = FAULT_FOREVER, .err = -EIO };
	int f = faultfs_arm(&s->ff, &spec);
	int err = open_tracker(s, true, PERSIST_MS, IDLE_TICKS, NULL);
	if (!err)
		tracker_abandon(s->t);
	s->t = NULL;
	check(s, faultfs_fired(&s->ff, f) > 0, "premise: a read of %s failed", file);
	check(s, err == -EIO, "a start whose read of %s fails reports EIO, and doubts nothing "
	      "(got %s)", file, errname(err));
	faultfs_disarm(&s->ff, f);
	err = metadir_read_superblock(s->md, &after);
	check(s, faultfs_pending(&s->ff, -1) == writes && s->ff.entry_changes == entries &&
	      err == 0 && after.sequence == before.sequence, "nothing was written");
	recover_and_verify(s, NULL, &v);
	check(s, v.start == TRACKER_START_RECOVERED && !v.gen_changed && v.r[0].present,
	      "no history lost: the next start recovers (start %s)", tracker_start_name(v.start));
	end(s);
}

static void scenario_create_errors(uint64_t seed)
{
	struct scen sc, *s = &sc;
	struct metadir *md = NULL;
	char path[1024];
	int f, err;

	bare_begin(s, "e creating a volume or a metadata directory fails", seed);
	const struct vt_fsops *o = &s->ff.ops;
	int d = open(s->meta, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	snprintf(path, sizeof(path), "%s/vol.img", s->meta);

	static const struct {
		enum fault_op op;
		const char *what;
	} volume_faults[] = {
		{ FAULT_OPEN, "create" }, { FAULT_FTRUNCATE, "ftruncate" },
		{ FAULT_FDATASYNC, "fdatasync" }, { FAULT_FSYNC_DIR, "directory sync" },
	};
	for (unsigned i = 0; i < sizeof(volume_faults) / sizeof(volume_faults[0]); i++) {
		struct fault_spec spec = { .op = volume_faults[i].op, .fd = -1, .file = "vol.img",
					   .err = -EIO };
		f = faultfs_arm(&s->ff, &spec);
		err = volume_create_file(o, path, 1 << 20);
		check(s, faultfs_fired(&s->ff, f) == 1 && err == -EIO && !exists(d, "vol.img"),
		      "a volume whose %s fails: EIO (%s), fired %u, no file left",
		      volume_faults[i].what, errname(err), faultfs_fired(&s->ff, f));
	}
	snprintf(path, sizeof(path), "%s/meta", s->meta);
	f = faultfs_fail_file(&s->ff, FAULT_MKDIR, "meta", 0, -EIO);
	err = metadir_open(path, true, o, &md);
	check(s, faultfs_fired(&s->ff, f) == 1 && err == -EIO, "a metadata directory whose "
	      "mkdir fails: EIO (%s)", errname(err));
	f = faultfs_fail_file(&s->ff, FAULT_FSYNC_DIR, "meta", 0, -EIO);
	err = metadir_open(path, true, o, &md);
	check(s, faultfs_fired(&s->ff, f) == 1 && err == -EIO, "a metadata directory whose "
	      "entry cannot be synced: EIO (%s)", errname(err));
	/* It is there now; opening it for init syncs its entry again. */
	err = metadir_open(path, true, o, &md);
	check(s, err == 0 && faultfs_pending_entries(&s->ff, d) == 0, "a second try syncs "
	      "the directory that is there: %s", errname(err));
	metadir_close(md);
	close(d);
	end(s);
}

int main(void)
{
	const char *seed_env = getenv("VOLTRACK_FAULTS_SEED");
	uint64_t seed = seed_env ? strtoull(seed_env, NULL, 0) : (uint64_t)time(NULL);
	uint64_t t0 = mono_ms();
	unsigned k = 0;
#define NEXT_SEED() (seed + 0x9e3779b97f4a7c15ull * ++k)

	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("directory-entry trials, seed %llu (VOLTRACK_FAULTS_SEED)\n\n",
	       (unsigned long long)seed);
	make_volume(seed);

	scenario_simulator(NEXT_SEED());
	scenario_init(NEXT_SEED());
	scenario_clean_close(NEXT_SEED());
	uint64_t rseed = NEXT_SEED();
	for (enum replaced r = R_SB_CLOSE; r <= R_SB_RESET; r++)
		scenario_replacement(r, &rseed);
	scenario_failed_rename("e1 superblock rename fails at close, kill", NEXT_SEED(), false);
	scenario_failed_rename("e2 superblock rename fails at close, power cut", NEXT_SEED(),
			       true);
	static const struct {
		const char *file;
		unsigned skip;
	} reads[] = {
		{ "superblock", 0 }, { CHECKPOINTS_NAME, 0 }, { CHECKPOINTS_NAME, 1 },
		{ MAPFILE_NAME, 0 }, { MAPFILE_NAME, 1 }, { INTENT_NAME, 0 }, { INTENT_NAME, 1 },
	};
	for (unsigned i = 0; i < sizeof(reads) / sizeof(reads[0]); i++) {
		char label[96];
		snprintf(label, sizeof(label), "e%u read %u of %s fails at a start", i + 3,
			 reads[i].skip + 1, reads[i].file);
		scenario_failed_read(label, NEXT_SEED(), reads[i].file, reads[i].skip);
	}
	scenario_create_errors(NEXT_SEED());

	printf("%u scenario(s), %u failed%s%s%s; %.1f s\n", scenarios, scenarios_failed,
	       scenarios_failed ? " (" : "", failed_labels, scenarios_failed ? ")" : "",
	       (double)(mono_ms() - t0) / 1000.0);
	printf("%u passed, %u failed\n", passed, failed);
	return failed ? 1 : 0;
}
