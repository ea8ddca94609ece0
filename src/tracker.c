#include "tracker.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "metablock.h"

struct tracker {
	struct metadir *md;
	const struct vt_fsops *ops;
	int dirfd;
	struct superblock sb;
	struct changemap cm;
	struct mapfile *mf;
	struct intent *in;
	struct tracker_config cfg;
	struct tracker_info info;

	pthread_mutex_t lock;		/* checkpoints, persist, info */
	struct checkpoint_list ckpts;
	_Atomic uint8_t open_epoch;
	atomic_uint tick;

	bool live;
	pthread_t flusher;
	pthread_mutex_t flush_lock;
	pthread_cond_t flush_cond;
	bool flush_stop, flush_nudged;
};

void tracker_config_defaults(struct tracker_config *cfg)
{
	cfg->persist_interval_ms = 1000;
	cfg->idle_ticks = 2;
	cfg->volume_fd = -1;
}

const char *tracker_start_name(enum tracker_start s)
{
	switch (s) {
	case TRACKER_START_CLEAN: return "clean";
	case TRACKER_START_RECOVERED: return "recovered";
	case TRACKER_START_OFFLINE_CHANGE: return "modified-offline";
	case TRACKER_START_RESET: return "history-reset";
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

static bool identity_matches(const struct superblock *sb, const struct volume_identity *id)
{
	if (sb->id_size != id->size)
		return false;
	if (sb->volume_kind != SB_KIND_FILE)
		return true; /* a block device's node says nothing of its content */
	return sb->id_ino == id->ino && sb->id_ctime_ns == id->ctime_ns;
}

/* Write the superblock with the given state; bumps its sequence. */
static int store_superblock(struct tracker *t)
{
	t->sb.sequence++;
	return metadir_write_superblock(t->md, &t->sb);
}

/*
 * History is lost: everything is changed since every checkpoint.  A new
 * generation says so to anyone comparing; every file is rewritten under
 * it.  Any crash part way leaves files whose generation disagrees with
 * the superblock, which a later open treats the same way.
 */
static int reset_history(struct tracker *t, bool keep_checkpoints)
{
	int err = vt_uuid_generate(&t->sb.generation);

	if (err)
		return err;
	if (!keep_checkpoints) {
		t->ckpts.n = 0;
		t->ckpts.open_epoch = 1;
	}
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
static int doubt_everything(struct tracker *t, enum tracker_start why, const char *detail)
{
	snprintf(t->info.start_detail, sizeof(t->info.start_detail), "%s", detail);
	t->info.start = why;
	intent_close(t->in);
	t->in = NULL;
	mapfile_close(t->mf);
	t->mf = NULL;
	return reset_history(t, true);
}

static void free_tracker(struct tracker *t)
{
	intent_close(t->in);
	mapfile_close(t->mf);
	changemap_free(&t->cm);
	pthread_mutex_destroy(&t->lock);
	pthread_mutex_destroy(&t->flush_lock);
	pthread_cond_destroy(&t->flush_cond);
	free(t);
}

int tracker_open(struct metadir *md, const struct volume_identity *id, bool live,
		 const struct tracker_config *cfg, struct tracker **out)
{
	struct tracker *t = calloc(1, sizeof(*t));
	struct mapfile_report rep;
	uint32_t set = 0;
	bool intent_doubt = false, map_doubt = false, intent_damaged = false;
	int err;

	if (!t)
		return -ENOMEM;
	t->md = md;
	t->ops = metadir_fsops(md);
	t->dirfd = metadir_fd(md);
	t->cfg = *cfg;
	pthread_mutex_init(&t->lock, NULL);
	pthread_mutex_init(&t->flush_lock, NULL);
	pthread_cond_init(&t->flush_cond, NULL);
	atomic_init(&t->tick, 1);

	err = metadir_read_superblock(md, &t->sb);
	if (!err)
		err = changemap_init(&t->cm, t->sb.volume_size, t->sb.granularity);
	if (err)
		goto fail;
	t->info.start = TRACKER_START_CLEAN;

	/* 1. checkpoints: without them no answer can be given at all. */
	bool ckpt_damaged = false;
	err = checkpoints_load(t->dirfd, &t->sb, &t->ckpts, &ckpt_damaged);
	if (!err && ckpt_damaged) {
		/* The newer copy may be the lost one: then the checkpoint it
		 * added was never acknowledged.  Rewrite the damaged slot. */
		struct checkpoint_list *copy = malloc(sizeof(*copy));
		vt_warn("checkpoint list: one copy damaged; using the other and rewriting it");
		if (copy) {
			*copy = t->ckpts;
			if (checkpoints_store(t->dirfd, t->ops, &t->sb, &t->ckpts, copy) == 0)
				t->ckpts = *copy;
			free(copy);
		}
	}
	if (err) {
		snprintf(t->info.start_detail, sizeof(t->info.start_detail),
			 "checkpoint list unreadable (%s): every checkpoint is gone, "
			 "the next backup must be full", strerror(-err));
		t->info.start = TRACKER_START_RESET;
		err = reset_history(t, false);
		if (err)
			goto fail;
	}

	/* 2. the persisted map */
	if (t->info.start != TRACKER_START_RESET) {
		err = mapfile_open(t->dirfd, t->ops, &t->sb, &t->cm, &t->mf, &rep);
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
		err = intent_open(t->dirfd, t->ops, &t->sb, &t->in, &set, &intent_doubt, &intent_damaged);
		if (err == -ENOENT) {
			intent_doubt = true;
		} else if (err) {
			goto fail;
		} else if (intent_damaged && !intent_doubt) {
			vt_warn("write-intent map: one copy damaged; the volume was closed cleanly, "
				"so the other is used and the damaged one rewritten");
		}
	}

	if (t->info.start == TRACKER_START_RESET) {
		/* the checkpoint list was lost: already reset above */
	} else if (map_doubt || intent_doubt) {
		err = doubt_everything(t, TRACKER_START_RESET, map_doubt ?
				       "change map unreadable: everything is reported changed "
				       "since every checkpoint" :
				       "write-intent map unreadable: everything is reported "
				       "changed since every checkpoint");
	} else if (!(t->sb.state & SB_STATE_CLEAN)) {
		t->info.start = TRACKER_START_RECOVERED;
		snprintf(t->info.start_detail, sizeof(t->info.start_detail),
			 "not closed cleanly: %u write-intent region(s) counted as changed", set);
	} else if (!identity_matches(&t->sb, id)) {
		err = doubt_everything(t, TRACKER_START_OFFLINE_CHANGE,
				       "the volume was modified while nothing tracked it "
				       "(size, inode or ctime differ): everything is reported changed");
	}
	if (err)
		goto fail;

	/* Reopen what reset_history rewrote. */
	if (!t->mf) {
		err = mapfile_open(t->dirfd, t->ops, &t->sb, &t->cm, &t->mf, &rep);
		if (err)
			goto fail;
	}
	if (!t->in) {
		err = intent_open(t->dirfd, t->ops, &t->sb, &t->in, &set, &intent_doubt, &intent_damaged);
		if (err)
			goto fail;
	}
	atomic_store(&t->open_epoch, t->ckpts.open_epoch);

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

	if (t->info.start == TRACKER_START_RESET || t->info.start == TRACKER_START_OFFLINE_CHANGE)
		vt_error("change tracking: %s", t->info.start_detail);
	else if (t->info.start != TRACKER_START_CLEAN)
		vt_warn("change tracking: %s", t->info.start_detail);

	if (live) {
		/* From here on a crash must be recovered from: say so on disk
		 * before the first write can happen. */
		t->sb.state &= ~SB_STATE_CLEAN;
		err = store_superblock(t);
		if (!err)
			err = intent_start(t->in);
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

static int sync_volume(void *arg)
{
	struct tracker *t = arg;

	return t->cfg.volume_fd < 0 ? 0 : t->ops->fdatasync(t->ops, t->cfg.volume_fd);
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
	int err;

	pthread_mutex_lock(&t->lock);
	err = mapfile_persist(t->mf, &t->cm);
	t->info.last_persist_error = err;
	pthread_mutex_unlock(&t->lock);
	if (err)
		return err;
	int cleared = intent_clear_idle(t->in, now - t->cfg.idle_ticks, sync_volume, t);
	return cleared < 0 ? cleared : 0;
}

static void *flusher_main(void *arg)
{
	struct tracker *t = arg;
	bool warned = false;

	pthread_mutex_lock(&t->flush_lock);
	while (!t->flush_stop) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += t->cfg.persist_interval_ms / 1000;
		ts.tv_nsec += (long)(t->cfg.persist_interval_ms % 1000) * 1000000;
		if (ts.tv_nsec >= 1000000000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000;
		}
		while (!t->flush_stop && !t->flush_nudged &&
		       pthread_cond_timedwait(&t->flush_cond, &t->flush_lock, &ts) == 0)
			;
		if (t->flush_stop)
			break;
		t->flush_nudged = false;
		pthread_mutex_unlock(&t->flush_lock);
		int err = persist_and_clear(t);
		if (err && !warned)
			vt_error("cannot persist the change map: %s; intents stay set, "
				 "so nothing is lost, but a crash will over-report", strerror(-err));
		warned = err != 0;
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
	/* Map durable, then intents cleared, then the superblock says clean:
	 * a crash between any two steps is recovered from. */
	err = mapfile_persist(t->mf, &t->cm);
	if (!err)
		err = intent_clear_all(t->in);
	if (!err) {
		t->sb.state |= SB_STATE_CLEAN;
		t->sb.id_size = id->size;
		t->sb.id_ino = id->ino;
		t->sb.id_ctime_ns = id->ctime_ns;
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
	changemap_mark(&t->cm, off, len, atomic_load_explicit(&t->open_epoch,
							      memory_order_acquire));
	/* An RMW, not a load: it publishes the marks above to the flusher's
	 * next increment (persist_and_clear), with no fence needed. */
	intent_end(t->in, off, len, atomic_fetch_add(&t->tick, 0));
}

int tracker_checkpoint(struct tracker *t, const char *name, struct checkpoint *out)
{
	struct checkpoint_list next; /* 54 KiB: the control thread has the stack */
	int err;

	if (!checkpoint_name_valid(name))
		return -EINVAL;
	pthread_mutex_lock(&t->lock);
	if (checkpoint_find(&t->ckpts, name)) {
		pthread_mutex_unlock(&t->lock);
		return -EEXIST;
	}
	if (t->ckpts.n == CKPT_MAX || t->ckpts.open_epoch == CM_MAX_EPOCH) {
		pthread_mutex_unlock(&t->lock);
		return -ENOSPC;
	}
	next = t->ckpts;
	struct checkpoint *c = &next.items[next.n++];
	memset(c, 0, sizeof(*c));
	snprintf(c->name, sizeof(c->name), "%s", name);
	c->epoch = next.open_epoch;
	c->created = (uint64_t)time(NULL);
	next.open_epoch++;
	err = checkpoints_store(t->dirfd, t->ops, &t->sb, &t->ckpts, &next);
	if (!err) {
		/* The instant of the checkpoint: writes marked from now on
		 * belong to the new epoch. */
		t->ckpts = next;
		atomic_store_explicit(&t->open_epoch, next.open_epoch, memory_order_release);
		if (out)
			*out = *c;
	}
	pthread_mutex_unlock(&t->lock);
	return err;
}

void tracker_checkpoints(struct tracker *t, struct checkpoint_list *out)
{
	pthread_mutex_lock(&t->lock);
	*out = t->ckpts;
	pthread_mutex_unlock(&t->lock);
}

int tracker_checkpoint_epoch(struct tracker *t, const char *name, uint8_t *epoch)
{
	int err = -ENOENT;

	pthread_mutex_lock(&t->lock);
	const struct checkpoint *c = checkpoint_find(&t->ckpts, name);
	if (c) {
		*epoch = c->epoch;
		err = 0;
	}
	pthread_mutex_unlock(&t->lock);
	return err;
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
	pthread_mutex_unlock(&t->lock);
}
