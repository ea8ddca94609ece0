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
#include "metablock.h"
#include "scenario.h"

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
