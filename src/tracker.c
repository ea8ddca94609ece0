#include "tracker.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "epochs.h"
#include "log.h"
#include "metablock.h"
#include "pause.h"
#include "tracker_impl.h"
#include "untracked.h"


void tracker_config_defaults(struct tracker_config *cfg)
{
	cfg->persist_interval_ms = 1000;
	cfg->idle_ticks = 2;
	cfg->lease_ms = 0;
	cfg->volume = NULL;
}

const char *tracker_start_name(enum tracker_start s)
{
	switch (s) {
	case TRACKER_START_CLEAN: return "clean";
	case TRACKER_START_RECOVERED: return "recovered";
	case TRACKER_START_OFFLINE_CHANGE: return "modified-offline";
	case TRACKER_START_RESET: return "history-reset";
	case TRACKER_START_NEW_GENERATION: return "new-generation";
	}
	return "unknown";
}

int tracker_format(struct metadir *md, const struct superblock *sb)
{
	struct changemap cm;
	static struct checkpoint_list empty = { .n = 0, .open_epoch = 1 };
	const struct vt_fsops *ops = metadir_fsops(md);
	int dirfd = metadir_fd(md);
	int err = changemap_init(&cm, sb->volume_size, sb->granularity);

	if (err)
		return err;
	err = mapfile_create(dirfd, ops, sb, &cm);
	if (!err)
		err = intent_create(dirfd, ops, sb);
	if (!err) {
		struct checkpoint_list *l = malloc(sizeof(*l));
		err = l ? 0 : -ENOMEM;
		if (l) {
			*l = empty;
			err = checkpoints_create(dirfd, ops, sb, l);
			free(l);
		}
	}
	changemap_free(&cm);
	return err;
}

/* For intent commits: the volume's identity now (see intent.h). */
static int stamp_identity(void *arg, struct intent_identity *out)
{
	struct tracker *t = arg;
	struct volume_identity id;
	int err;

	if (!t->cfg.volume)
		return -ENODEV;
	err = volume_identity(t->cfg.volume, &id);
	if (!err) {
		out->size = id.size;
		out->ino = id.ino;
		out->ctime_ns = id.ctime_ns;
		out->taken_ns = id.taken_ns;
	}
	return err;
}

/* Write the superblock with the given state; bumps its sequence. */
static int store_superblock(struct tracker *t)
{
	t->sb.sequence++;
	return metadir_write_superblock(t->md, &t->sb);
}

static int sync_volume(void *arg);

/*
 * History is lost: everything is changed since every checkpoint.  A new
 * generation says so to anyone comparing; every file is rewritten under
 * it.  Any crash part way leaves files whose generation disagrees with
 * the superblock, which a later open treats the same way.
 */
static int reset_history(struct tracker *t, bool keep_checkpoints, bool all_changed)
{
	int err = vt_uuid_generate(&t->sb.generation);

	if (err)
		return err;
	if (!keep_checkpoints) {
		t->ckpts.n = 0;
		t->ckpts.open_epoch = 1;
	}
	t->ckpts.numbering.boundary = 0; /* the new map file holds memory's numbering */
	/*
	 * The intents are about to be emptied: the data they cover (the
	 * crashed server's writes, possibly still only in the page cache)
	 * must be durable first, or a power cut could undo a write that no
	 * intent and no checkpoint taken after this reset would report.
	 */
	err = sync_volume(t);
	if (err)
		return err;
	/* Whatever made us doubt has been answered by this reset. */
	t->sb.state &= ~SB_STATE_UNTRACKED;
	if (all_changed)
		changemap_raise_all(&t->cm, t->ckpts.open_epoch);
	err = mapfile_create(t->dirfd, t->ops, &t->sb, &t->cm);
	if (!err)
		err = intent_create(t->dirfd, t->ops, &t->sb);
	if (!err)
		err = checkpoints_create(t->dirfd, t->ops, &t->sb, &t->ckpts);
	if (!err)
		err = store_superblock(t);
	return err;
}

static void *flusher_main(void *arg);

/* Nothing on disk can be trusted to say what changed: say everything did,
 * under a new generation, with `detail` for the log and status. */
static int doubt_everything(struct tracker *t, enum tracker_start why, const char *detail,
			    bool written)
{
	snprintf(t->info.start_detail, sizeof(t->info.start_detail), "%s", detail);
	t->info.start = why;
	if (written) {
		/* Nothing copied the chunks that were overwritten: a snapshot
		 * would read the later data as its own.  Stored with the list
		 * below, so that no later open can miss it.  Only on evidence
		 * of a write (untracked.h says why). */
		for (uint32_t i = 0; i < t->ckpts.n; i++) {
			struct checkpoint *c = &t->ckpts.items[i];
			if ((c->flags & CKPT_F_SNAPSHOT) && !(c->flags & CKPT_F_INVALID)) {
				c->flags |= CKPT_F_INVALID;
				vt_error("snapshot '%s' is no longer valid: the volume was written "
					 "while nothing copied for it", c->name);
			}
		}
	}
	intent_close(t->in);
	t->in = NULL;
	mapfile_close(t->mf);
	t->mf = NULL;
	return reset_history(t, true, true);
}

static void free_tracker(struct tracker *t)
{
	intent_close(t->in);
	mapfile_close(t->mf);
	changemap_free(&t->cm);
	pthread_mutex_destroy(&t->lock);
	pthread_mutex_destroy(&t->persist_lock);
	pthread_mutex_destroy(&t->flush_lock);
	pthread_cond_destroy(&t->flush_cond);
	free(t);
}

/* Open the map and intent files again after reset_history rewrote them. */
static int reopen_files(struct tracker *t, const struct intent_config *icfg)
{
	struct mapfile_report rep;
	struct intent_stamp stamp;
	uint8_t before[256], after[256];
	struct mapfile_xlate x;
	uint32_t set;
	bool doubt, damaged;
	int err = 0;

	epochs_load_tables(&t->ckpts, before, after, &x);
	if (!t->mf)
		err = mapfile_open(t->dirfd, t->ops, &t->sb, &t->cm, &x, &t->mf, &rep);
	if (!err && !t->in)
		err = intent_open(t->dirfd, t->ops, &t->sb, icfg, &t->in, &set, &stamp, &doubt,
				  &damaged);
	return err;
}

/*
 * How long a write lease reaches past its commit.  After a crash, a
 * write by another program within the lease cannot be told from the
 * dead server's own last writes, so it is short and does not grow with
 * the persist interval: the flusher looks at it every LEASE_CHECK_MS and
 * renews it with half of it left.
 */
static uint64_t lease_for(const struct tracker_config *cfg)
{
	return (uint64_t)(cfg->lease_ms ? cfg->lease_ms : 3000) * 1000000ull;
}

int tracker_open(struct metadir *md, const struct volume_identity *id, bool live,
		 const struct tracker_config *cfg, struct tracker **out)
{
	struct tracker *t = calloc(1, sizeof(*t));
	struct mapfile_report rep;
	struct intent_stamp stamp = { 0 };
	uint32_t set = 0;
	bool intent_doubt = false, map_doubt = false, intent_damaged = false;
	bool ckpt_damaged = false;
	int err;

	if (!t)
		return -ENOMEM;
	t->md = md;
	t->ops = metadir_fsops(md);
	t->dirfd = metadir_fd(md);
	t->cfg = *cfg;
	pthread_mutex_init(&t->lock, NULL);
	pthread_mutex_init(&t->persist_lock, NULL);
	pthread_mutex_init(&t->flush_lock, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&t->flush_cond, &ca);
	pthread_condattr_destroy(&ca);
	atomic_init(&t->tick, 1);
	struct intent_config icfg = {
		.lease_ns = live ? lease_for(cfg) : 0,
		.identity = stamp_identity,
		.arg = t,
	};

	err = metadir_read_superblock(md, &t->sb);
	/* The superblock's geometry sizes everything allocated below; it is
	 * trusted only for the volume it describes, so that a damaged or
	 * forged size can never ask for terabytes of map. */
	if (!err && t->sb.volume_size != id->size)
		err = -ERANGE;
	if (!err)
		err = changemap_init(&t->cm, t->sb.volume_size, t->sb.granularity);
	if (err)
		goto fail;
	t->info.start = TRACKER_START_CLEAN;

	/*
	 * 1. checkpoints: without them no answer can be given at all.  Only
	 * content found damaged is doubted; a call that failed (EACCES,
	 * ENOMEM, EIO) says nothing of the content, so nothing is reset.
	 */
	err = checkpoints_load(t->dirfd, t->ops, &t->sb, &t->ckpts, &ckpt_damaged);
	if (err == -EBADMSG || err == -ENOENT) {
		snprintf(t->info.start_detail, sizeof(t->info.start_detail),
			 "checkpoint list unreadable (%s): every checkpoint is gone, "
			 "the next backup must be full", strerror(-err));
		t->info.start = TRACKER_START_RESET;
		err = reset_history(t, false, true);
	}
	if (err)
		goto fail;

	/* 2. the persisted map, in the list's numbering */
	if (t->info.start != TRACKER_START_RESET) {
		uint8_t before[256], after[256];
		struct mapfile_xlate x;
		epochs_load_tables(&t->ckpts, before, after, &x);
		err = mapfile_open(t->dirfd, t->ops, &t->sb, &t->cm, &x, &t->mf, &rep);
		if (err == -ENOENT || err == -EBADMSG) {
			map_doubt = true;
		} else if (err) {
			goto fail;
		} else if (rep.bad_pages) {
			t->info.bad_pages = rep.bad_pages;
			vt_error("change map: %u page(s) damaged, first at page %u; "
				 "their blocks are reported changed since every checkpoint",
				 rep.bad_pages, rep.first_bad);
		}
	}

	/* 3. the intents */
	if (t->info.start != TRACKER_START_RESET) {
		err = intent_open(t->dirfd, t->ops, &t->sb, &icfg, &t->in, &set, &stamp,
				  &intent_doubt, &intent_damaged);
		if (err == -ENOENT) {
			intent_doubt = true;
		} else if (err) {
			goto fail;
		} else if (intent_damaged && !intent_doubt) {
			vt_warn("write-intent map: one copy damaged; the volume was closed cleanly, "
				"so the other is used and the damaged one rewritten");
		}
	}

	/* 4. was the volume written by anything but a tracker since? */
	const char *why;
	bool seen;
	err = 0;
	if (t->info.start == TRACKER_START_RESET) {
		/* the checkpoint list was lost: already reset above */
	} else if (map_doubt || intent_doubt) {
		err = doubt_everything(t, TRACKER_START_RESET, map_doubt ?
				       "change map unreadable: everything is reported changed "
				       "since every checkpoint" :
				       "write-intent map unreadable: everything is reported "
				       "changed since every checkpoint", false);
	} else if (t->sb.state & SB_STATE_UNTRACKED) {
		err = doubt_everything(t, TRACKER_START_OFFLINE_CHANGE,
				       "the volume was served without tracking (serve --no-track) "
				       "since the last tracked run: everything is reported changed",
				       true);
	} else if (!(t->sb.state & SB_STATE_CLEAN)) {
		why = untracked_after_crash(&t->sb, &stamp, id, &seen);
		if (why) {
			err = doubt_everything(t, TRACKER_START_OFFLINE_CHANGE, why, seen);
		} else {
			t->info.start = TRACKER_START_RECOVERED;
			snprintf(t->info.start_detail, sizeof(t->info.start_detail),
				 "not closed cleanly: %u write-intent region(s) counted as changed",
				 set);
		}
	} else if ((why = untracked_since_close(&t->sb, id, &seen))) {
		err = doubt_everything(t, TRACKER_START_OFFLINE_CHANGE, why, seen);
	}
	if (!err)
		err = reopen_files(t, &icfg);
	if (err)
		goto fail;
	atomic_store(&t->open_epoch, t->ckpts.open_epoch);
	for (uint32_t i = 0; i < t->ckpts.n; i++)
		t->ckpts.items[i].serial = ++t->serials;

	/* Recovery: every block of every intent region, and of every damaged
	 * map page, is changed in the open epoch. */
	t->info.regions_recovered = 0;
	for (uint32_t r = 0; r < intent_nregions(t->in); r++) {
		if (!intent_region_set(t->in, r))
			continue;
		t->info.regions_recovered++;
		uint64_t rb = intent_region_bytes(t->in);
		changemap_mark(&t->cm, (uint64_t)r * rb, rb, t->ckpts.open_epoch);
	}
	if (t->info.bad_pages)
		mapfile_mark_lost(t->mf, &t->cm, t->ckpts.open_epoch);

	/*
	 * 5. One copy of the checkpoint list was damaged.  It may have been
	 * a store cut short, but it may as well have held the newest,
	 * acknowledged checkpoint: its name could then be created again for
	 * another instant, and a backup chain resting on it would silently
	 * go wrong.  The surviving checkpoints still answer correctly, so
	 * they and the map are kept, under a new generation.
	 */
	if (ckpt_damaged && (t->info.start == TRACKER_START_CLEAN ||
			     t->info.start == TRACKER_START_RECOVERED)) {
		snprintf(t->info.start_detail, sizeof(t->info.start_detail),
			 "one copy of the checkpoint list is damaged: the newest checkpoint may "
			 "be lost, so a new generation starts (the %u surviving checkpoint(s) "
			 "still answer)", t->ckpts.n);
		t->info.start = TRACKER_START_NEW_GENERATION;
		intent_close(t->in);
		t->in = NULL;
		mapfile_close(t->mf);
		t->mf = NULL;
		err = reset_history(t, true, false);
		if (!err)
			err = reopen_files(t, &icfg);
		if (err)
			goto fail;
	}

	if (t->info.start == TRACKER_START_RECOVERED)
		vt_warn("change tracking: %s", t->info.start_detail);
	else if (t->info.start != TRACKER_START_CLEAN)
		vt_error("change tracking: %s", t->info.start_detail);

	if (live) {
		/* From here on a crash must be recovered from: say so on disk
		 * before the first write can happen. */
		t->sb.state &= ~SB_STATE_CLEAN;
		err = store_superblock(t);
		if (!err)
			err = intent_start(t->in);
		/*
		 * This run's first stamp and lease, without waiting: its sync
		 * may queue behind a crashed server's dirty pages.  Until it
		 * lands, a second crash finds the old, expired lease and
		 * doubts everything: an over-report, never a miss.
		 */
		if (!err)
			intent_kick(t->in);
		if (!err)
			err = -pthread_create(&t->flusher, NULL, flusher_main, t);
		if (err) {
			intent_stop(t->in);
			goto fail;
		}
		t->live = true;
	}
	*out = t;
	return 0;
fail:
	free_tracker(t);
	return err;
}

int tracker_mark_untracked(struct metadir *md)
{
	struct superblock sb;
	int err = metadir_read_superblock(md, &sb);

	if (err || (sb.state & SB_STATE_UNTRACKED))
		return err;
	sb.state |= SB_STATE_UNTRACKED;
	sb.state &= ~SB_STATE_CLEAN;
	sb.sequence++;
	return metadir_write_superblock(md, &sb);
}

/* Before intents go: every write they cover must be durable (hole of a
 * power cut otherwise).  A latched error keeps failing here. */
static int sync_volume(void *arg)
{
	struct tracker *t = arg;

	if (!t->cfg.volume)
		return -ENODEV;
	bool first = volume_sync_error(t->cfg.volume) == 0;
	int err = volume_sync(t->cfg.volume, t->ops);
	if (err && first)
		vt_error("syncing the volume failed: %s; acknowledged data may be lost.  From now "
			 "on every FLUSH fails, no write intent is cleared, the regions they cover "
			 "count as changed after every checkpoint, and the stop is not marked clean",
			 strerror(-err));
	return err;
}

/*
 * After a volume sync error (latched in the volume), the kernel may have
 * dropped pages it failed to write back: blocks can read again as they
 * were before acknowledged writes, with no new write at all.  Any region
 * whose intent is set may hold such data, since intents are cleared only
 * after a successful sync (and after the error none is), so each is
 * counted changed in the open epoch, now and after every later
 * checkpoint.  Cheap when nothing is latched.
 */
void tracker_doubt_unsynced(struct tracker *t)
{
	if (!t->cfg.volume || !volume_sync_error(t->cfg.volume))
		return;
	uint8_t e = atomic_load_explicit(&t->open_epoch, memory_order_acquire);
	uint64_t rb = intent_region_bytes(t->in);

	for (uint32_t r = 0; r < intent_nregions(t->in); r++)
		if (intent_region_set(t->in, r))
			changemap_mark(&t->cm, (uint64_t)r * rb, rb, e);
}

/* One flusher turn: persist the map, then clear idle intents. */
static int persist_and_clear(struct tracker *t)
{
	/*
	 * Writers read the tick with an RMW after marking (see
	 * tracker_write_end).  A writer that read a tick below `now` did so
	 * before this increment in the tick's modification order; this
	 * acquire RMW then synchronizes with it, so the persist below sees
	 * that writer's marks.
	 */
	unsigned now = atomic_fetch_add(&t->tick, 1) + 1;
	uint8_t max;
	int err;

	/*
	 * Not under t->lock: a persist under heavy write load takes tens of
	 * milliseconds (its fdatasync queues behind the volume's writeback),
	 * and checkpoints must not wait for it.  While the tracker is live
	 * only this thread and a renumbering persist, one at a time.
	 */
	pthread_mutex_lock(&t->persist_lock);
	err = mapfile_persist(t->mf, &t->cm, &max);
	pthread_mutex_unlock(&t->persist_lock);
	pthread_mutex_lock(&t->lock);
	t->info.last_persist_error = err;
	/* A writer that loaded the open epoch before a renumbering marked
	 * after it: harmless now, but it would count as changed since later
	 * checkpoints too (epochs.h). */
	if (max > t->ckpts.open_epoch)
		epochs_clamp(&t->cm, t->ckpts.open_epoch);
	pthread_mutex_unlock(&t->lock);
	if (err)
		return err;
	/* Its failures (the volume's sync, the intent commit) are logged
	 * where they happen; the intents simply stay set. */
	intent_clear_idle(t->in, now - t->cfg.idle_ticks, sync_volume, t);
	return 0;
}

static uint64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* How often the flusher looks at the lease, whatever the persist interval. */
#define LEASE_CHECK_MS 1000u

static void *flusher_main(void *arg)
{
	struct tracker *t = arg;
	bool warned = false, lease_warned = false;
	uint64_t next_persist = mono_ms() + t->cfg.persist_interval_ms;

	pthread_mutex_lock(&t->flush_lock);
	while (!t->flush_stop) {
		uint64_t now = mono_ms();
		uint64_t until = next_persist < now + LEASE_CHECK_MS ? next_persist
								    : now + LEASE_CHECK_MS;
		struct timespec ts = { .tv_sec = (time_t)(until / 1000),
				       .tv_nsec = (long)(until % 1000) * 1000000 };
		/* A monotonic deadline: a step of the wall clock must not
		 * hold persists and lease renewals back. */
		while (!t->flush_stop && !t->flush_nudged &&
		       pthread_cond_timedwait(&t->flush_cond, &t->flush_lock, &ts) == 0)
			;
		if (t->flush_stop)
			break;
		bool persist = t->flush_nudged || mono_ms() >= next_persist;
		t->flush_nudged = false;
		pthread_mutex_unlock(&t->flush_lock);
		if (persist) {
			int err = persist_and_clear(t);
			VT_PAUSE_POINT("tracker.flush.done");
			if (err && !warned)
				vt_error("cannot persist the change map: %s; intents stay set, so "
					 "nothing is lost, but a crash will over-report", strerror(-err));
			warned = err != 0;
			next_persist = mono_ms() + t->cfg.persist_interval_ms;
		}
		tracker_doubt_unsynced(t);
		int err = intent_renew_lease(t->in);
		if (err && !lease_warned)
			vt_error("cannot renew the write lease: %s; writes go on, but after a crash "
				 "everything will be reported changed", strerror(-err));
		lease_warned = err != 0;
		pthread_mutex_lock(&t->flush_lock);
	}
	pthread_mutex_unlock(&t->flush_lock);
	return NULL;
}

void tracker_nudge(struct tracker *t)
{
	pthread_mutex_lock(&t->flush_lock);
	t->flush_nudged = true;
	pthread_cond_signal(&t->flush_cond);
	pthread_mutex_unlock(&t->flush_lock);
}

static void stop_threads(struct tracker *t)
{
	if (!t->live)
		return;
	pthread_mutex_lock(&t->flush_lock);
	t->flush_stop = true;
	pthread_cond_signal(&t->flush_cond);
	pthread_mutex_unlock(&t->flush_lock);
	pthread_join(t->flusher, NULL);
	t->live = false;
}

int tracker_close(struct tracker *t, const struct volume_identity *id)
{
	int err;

	stop_threads(t);
	/* Map durable, then the volume's data, then intents cleared, then
	 * the superblock says clean: a crash between any two steps is
	 * recovered from, and no write loses its intent before its data is
	 * on disk (after a crash, the crashed server's writes may still be
	 * only in the page cache when an offline command closes). */
	err = mapfile_persist(t->mf, &t->cm, NULL);
	if (!err)
		err = sync_volume(t);
	if (!err)
		err = intent_clear_all(t->in);
	if (!err) {
		t->sb.state |= SB_STATE_CLEAN;
		t->sb.id_size = id->size;
		t->sb.id_ino = id->ino;
		t->sb.id_ctime_ns = id->ctime_ns;
		t->sb.id_taken_ns = id->taken_ns;
		err = store_superblock(t);
	}
	intent_stop(t->in);
	free_tracker(t);
	return err;
}

void tracker_abandon(struct tracker *t)
{
	stop_threads(t);
	intent_stop(t->in);
	free_tracker(t);
}

int tracker_write_begin(struct tracker *t, uint64_t off, uint64_t len, struct intent_wait *w)
{
	int r = intent_begin(t->in, off, len, w);

	/* Marked even if the write will not be issued: over-reporting a
	 * failed write is allowed, and a failed write may have landed. */
	changemap_mark(&t->cm, off, len, atomic_load_explicit(&t->open_epoch,
							      memory_order_acquire));
	return r;
}

void tracker_write_end(struct tracker *t, uint64_t off, uint64_t len)
{
	/* A write in flight across a checkpoint belongs after it. */
	uint8_t e = atomic_load_explicit(&t->open_epoch, memory_order_acquire);

	VT_PAUSE_POINT("tracker.end.epoch_loaded");
	changemap_mark(&t->cm, off, len, e);
	/* An RMW, not a load: it publishes the marks above to the flusher's
	 * next increment (persist_and_clear), with no fence needed. */
	intent_end(t->in, off, len, atomic_fetch_add(&t->tick, 0));
}

const struct changemap *tracker_map(const struct tracker *t)
{
	return &t->cm;
}

void tracker_info(struct tracker *t, struct tracker_info *info)
{
	pthread_mutex_lock(&t->lock);
	*info = t->info;
	info->regions_set = intent_count_set(t->in);
	info->region_size = intent_region_bytes(t->in);
	info->granularity = t->sb.granularity;
	info->volume_size = t->sb.volume_size;
	info->open_epoch = t->ckpts.open_epoch;
	info->checkpoints = t->ckpts.n;
	info->generation = t->sb.generation;
	info->volume_uuid = t->sb.volume_uuid;
	info->volume_sync_error = t->cfg.volume ? volume_sync_error(t->cfg.volume) : 0;
	pthread_mutex_unlock(&t->lock);
}
