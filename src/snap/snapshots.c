#include "snapshots.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fault.h"
#include "log.h"
#include "pause.h"

enum { PENDING_NONE, PENDING_HELD, PENDING_COMMITTED };

static void stop_watchdog(struct vt_snapshots *s);

static uint64_t mono_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

/* The snapset's hook: a snapshot that lost a copy says so durably. */
static int mark_invalid(void *arg, const char *name, const char *why)
{
	struct vt_snapshots *s = arg;
	struct checkpoint c;

	(void)why;
	/* Stored off the loops, a while after the loss: a snapshot deleted
	 * meanwhile leaves a plain checkpoint, which has nothing to lose. */
	if (tracker_checkpoint_find(s->tracker, name, &c) || !(c.flags & CKPT_F_SNAPSHOT))
		return 0;
	return tracker_set_flags(s->tracker, name, CKPT_F_INVALID, 0);
}

/* Before the copies-pending mark is cleared: the origin's writes from
 * before every snapshot's instant are made durable (diffstore.h). */
static int sync_origin(void *arg)
{
	struct vt_snapshots *s = arg;

	return volume_sync(s->vol, s->ops);
}

int vt_snapshots_settle(struct vt_snapshots *s)
{
	return diffstore_settle(s->ds, false, sync_origin, s);
}

/*
 * The keeper: once a second, sync the diff store and clear its
 * copies-pending mark when no copy is under way, so that a power cut
 * costs the snapshots only when it strikes within a second of a copy.
 */
static void *keeper_main(void *arg)
{
	struct vt_snapshots *s = arg;
	bool warned = false;

	pthread_mutex_lock(&s->lock);
	while (!s->keeper_stop) {
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		ts.tv_sec += 1;
		pthread_cond_timedwait(&s->cond, &s->lock, &ts);
		if (s->keeper_stop)
			break;
		pthread_mutex_unlock(&s->lock);
		int err = diffstore_settle(s->ds, true, sync_origin, s);
		if (err && err != -EAGAIN && !warned)
			vt_error("cannot sync the diff store: %s; a power cut now would invalidate "
				 "the snapshots", strerror(-err));
		warned = err && err != -EAGAIN;
		pthread_mutex_lock(&s->lock);
	}
	pthread_mutex_unlock(&s->lock);
	return NULL;
}

/* At open: a mark left set by another boot means the machine went down
 * with copies that may never have reached the disk. */
static void doubt_copies(struct vt_snapshots *s)
{
	struct checkpoint_list *l;
	static const char why[] = "the machine went down (power cut or kernel crash) while "
				  "copies for it were not yet synced";

	if (!diffstore_lost_power(s->ds) || !(l = malloc(sizeof(*l))))
		return;
	tracker_checkpoints(s->tracker, l);
	for (uint32_t i = 0; i < l->n; i++) {
		const struct checkpoint *c = &l->items[i];
		if ((c->flags & CKPT_F_SNAPSHOT) && !(c->flags & CKPT_F_INVALID)) {
			vt_error("snapshot '%s' is no longer valid: %s", c->name, why);
			vt_snapset_invalidate(s->set, c->name, why);
			int err = tracker_set_flags(s->tracker, c->name, CKPT_F_INVALID, 0);
			if (err)
				vt_error("cannot record it: %s", strerror(-err));
		}
	}
	free(l);
}

static void epochs_translated(void *arg, const uint8_t t[256])
{
	vt_snapset_renumber(((struct vt_snapshots *)arg)->set, t);
}

/* The records on disk follow; until they do, a crash leaves old values
 * there, which are never below the new ones: an over-report only. */
static void epochs_renumbered(void *arg)
{
	int err = vt_snapset_store_records(((struct vt_snapshots *)arg)->set);

	if (err)
		vt_warn("cannot rewrite the diff store's records after a renumbering: %s; a "
			"crash now makes snapshots' bitmaps over-report", strerror(-err));
}

int vt_snapshots_open(struct metadir *md, struct tracker *t, struct volume *vol,
		      const struct diffstore_config *cfg, bool live, struct vt_snapshots **out)
{
	struct vt_snapshots *s = calloc(1, sizeof(*s));
	struct checkpoint_list *l = malloc(sizeof(*l));
	struct vt_snap *snaps = calloc(CKPT_MAX, sizeof(*snaps));
	const struct changemap *cm = tracker_map(t);
	unsigned n = 0;
	int err = s && l && snaps ? 0 : -ENOMEM;

	if (!err)
		err = vt_gate_init(&s->gate);
	if (!err) {
		pthread_mutex_init(&s->lock, NULL);
		pthread_condattr_t ca;
		pthread_condattr_init(&ca);
		pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
		pthread_cond_init(&s->cond, &ca);
		pthread_condattr_destroy(&ca);
	}
	if (err) {
		free(s);
		free(l);
		free(snaps);
		return err;
	}
	s->tracker = t;
	s->vol = vol;
	s->ops = metadir_fsops(md);
	uint32_t gran = 1u << cm->gran_shift;
	err = diffstore_open(metadir_fd(md), metadir_fsops(md), cfg,
			     vt_snapset_chunk_size(gran), vol->size, &s->ds);
	if (!err) {
		tracker_checkpoints(t, l);
		for (uint32_t i = 0; i < l->n; i++) {
			const struct checkpoint *c = &l->items[i];
			if (!(c->flags & CKPT_F_SNAPSHOT))
				continue;
			struct vt_snap *sn = &snaps[n++];
			sn->seq = c->snap_seq;
			sn->epoch = c->epoch;
			sn->valid = !(c->flags & CKPT_F_INVALID);
			sn->created = c->created;
			memcpy(sn->name, c->name, sizeof(sn->name));
			if (!sn->valid)
				snprintf(sn->why, sizeof(sn->why),
					 "it lost a copy of a chunk (see the server's log)");
		}
		struct vt_snapset_hooks hooks = { .arg = s, .invalidate = mark_invalid };
		err = vt_snapset_open(vol, s->ds, cm, &hooks, snaps, n, &s->set);
	}
	free(l);
	free(snaps);
	if (!err) {
		doubt_copies(s);
		err = diffstore_settle(s->ds, false, sync_origin, s);
	}
	if (!err)
		tracker_set_renumber_hook(t, &(struct tracker_renumber_hook){
			.translated = epochs_translated, .done = epochs_renumbered, .arg = s });
	if (!err && live)
		err = diffstore_start_marker(s->ds);
	if (!err && live)
		err = vt_snapset_start_invalidator(s->set);
	if (!err && live) {
		err = -pthread_create(&s->keeper, NULL, keeper_main, s);
		s->keeper_running = !err;
	}
	if (err) {
		vt_snapshots_close(s);
		return err;
	}
	*out = s;
	return 0;
}

void vt_snapshots_close(struct vt_snapshots *s)
{
	if (!s)
		return;
	if (s->set)
		tracker_set_renumber_hook(s->tracker, NULL);
	if (s->pending.state != PENDING_NONE)
		vt_snapshots_abort(s, s->pending.name);
	stop_watchdog(s);
	if (s->keeper_running) {
		pthread_mutex_lock(&s->lock);
		s->keeper_stop = true;
		pthread_cond_broadcast(&s->cond);
		pthread_mutex_unlock(&s->lock);
		pthread_join(s->keeper, NULL);
	}
	/* Every copy is over: the mark can go (a failure keeps it set, and
	 * the next start after a power cut doubts the copies). */
	if (s->ds && diffstore_settle(s->ds, false, sync_origin, s))
		vt_warn("the diff store could not be synced at close");
	pthread_cond_destroy(&s->cond);
	pthread_mutex_destroy(&s->lock);
	vt_snapset_close(s->set);
	diffstore_close(s->ds);
	vt_gate_destroy(&s->gate);
	free(s);
}

void vt_snapshots_target(struct vt_snapshots *s, struct vt_target *tgt)
{
	tgt->gate = &s->gate;
	tgt->snaps = s->set;
}

/* ---- the hold, in steps ---- */

/* Under s->lock: undo a commit, open the gate, forget the pending hold. */
static void abort_locked(struct vt_snapshots *s)
{
	struct vt_pending *p = &s->pending;

	if (p->state == PENDING_COMMITTED) {
		vt_snapset_remove(s->set, p->name, NULL);
		int err = tracker_checkpoint_unstage(s->tracker, p->name);
		if (err) {
			/* Its staged slot may still reach the disk: a snapshot
			 * that nothing copied for must never come back, so keep
			 * it whole rather than gone. */
			struct vt_snap sn = { .seq = p->seq, .epoch = p->epoch, .valid = true,
					      .created = p->created };
			memcpy(sn.name, p->name, sizeof(sn.name));
			vt_snapset_add(s->set, &sn);
			vt_error("aborting snapshot '%s': cannot take its checkpoint back (%s); "
				 "it is kept", p->name, strerror(-err));
		}
	}
	p->writes_held = vt_gate_release(&s->gate);
	p->state = PENDING_NONE;
	pthread_cond_broadcast(&s->cond);
}

/* The hold's bound (I4) does not depend on the controller coming back:
 * at the deadline this thread aborts whatever is still pending. */
static void *watchdog_main(void *arg)
{
	struct vt_snapshots *s = arg;
	struct vt_pending *p = &s->pending;
	uint64_t ns = p->deadline_us * 1000;
	struct timespec ts = { .tv_sec = (time_t)(ns / 1000000000ull),
			       .tv_nsec = (long)(ns % 1000000000ull) };

	pthread_mutex_lock(&s->lock);
	while (p->state != PENDING_NONE && !p->watchdog_stop &&
	       pthread_cond_timedwait(&s->cond, &s->lock, &ts) == 0)
		;
	if (p->state != PENDING_NONE && !p->watchdog_stop) {
		vt_error("snapshot '%s' aborted: not released within its hold timeout", p->name);
		abort_locked(s);
		p->timed_out = true;
	}
	pthread_mutex_unlock(&s->lock);
	return NULL;
}

static void stop_watchdog(struct vt_snapshots *s)
{
	pthread_mutex_lock(&s->lock);
	bool running = s->pending.watchdog_running;
	s->pending.watchdog_stop = true;
	s->pending.watchdog_running = false;
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->lock);
	if (running)
		pthread_join(s->pending.watchdog, NULL);
}

static int hold(struct vt_snapshots *s, const char *name, unsigned timeout_ms,
		struct vt_snap_phases *ph, bool watchdog)
{
	struct vt_pending *p = &s->pending;
	uint8_t ignored;
	int err;

	memset(ph, 0, sizeof(*ph));
	if (!checkpoint_name_valid(name))
		return -EINVAL;
	if (tracker_checkpoint_epoch(s->tracker, name, &ignored) == 0)
		return -EEXIST;
	stop_watchdog(s); /* a finished hold's, if any */
	pthread_mutex_lock(&s->lock);
	if (p->state != PENDING_NONE) {
		pthread_mutex_unlock(&s->lock);
		return -EBUSY;
	}
	uint64_t t0 = mono_us();
	/* prepare: a persist now leaves little for a crash to over-report,
	 * and the copies-pending mark is set before any copy needs it, so
	 * that no write waits for its sync */
	tracker_nudge(s->tracker);
	int merr = tracker_require_version(s->tracker, SB_VERSION_SNAPSHOTS);
	if (!merr)
		merr = diffstore_mark_pending(s->ds);
	if (merr) {
		pthread_mutex_unlock(&s->lock);
		return merr;
	}
	memset(p, 0, sizeof(*p));
	snprintf(p->name, sizeof(p->name), "%s", name);
	p->seq = vt_snapset_next_seq(s->set);
	p->t_hold = mono_us();
	ph->prepare_us = p->t_hold - t0;
	p->deadline_us = p->t_hold + (uint64_t)timeout_ms * 1000;
	p->state = PENDING_HELD;

	/* hold: close the gate and drain what it admitted */
	ph->draining = vt_gate_inflight(&s->gate);
	err = vt_gate_hold(&s->gate, p->deadline_us * 1000);
	VT_PAUSE_POINT("snapshots.held");
	ph->hold_us = mono_us() - p->t_hold;
	if (err) {
		abort_locked(s);
		ph->writes_held = p->writes_held;
		pthread_mutex_unlock(&s->lock);
		return err;
	}
	if (!watchdog) {
		/* The caller goes on to commit and release at once. */
		pthread_mutex_unlock(&s->lock);
		return 0;
	}
	p->watchdog_stop = false;
	err = -pthread_create(&p->watchdog, NULL, watchdog_main, s);
	if (err) {
		abort_locked(s);
		pthread_mutex_unlock(&s->lock);
		return err;
	}
	p->watchdog_running = true;
	pthread_mutex_unlock(&s->lock);
	return 0;
}

int vt_snapshots_hold(struct vt_snapshots *s, const char *name, unsigned timeout_ms,
		      struct vt_snap_phases *ph)
{
	return hold(s, name, timeout_ms, ph, true);
}

int vt_snapshots_commit(struct vt_snapshots *s, const char *name, struct vt_snap_phases *ph)
{
	struct vt_pending *p = &s->pending;
	struct checkpoint c;
	int err = 0;

	pthread_mutex_lock(&s->lock);
	uint64_t t0 = mono_us();
	if (p->state != PENDING_HELD || strcmp(p->name, name))
		err = p->timed_out && !strcmp(p->name, name) ? -ETIMEDOUT : -ENOENT;
	/*
	 * One update of the checkpoint list makes checkpoint and snapshot.
	 * It only reaches the kernel here; its sync waits until after the
	 * release (vt_snapshots_release), so the hold never waits on the
	 * disk's queue.  Nothing is acknowledged before that sync, and a
	 * crash before it loses only this snapshot: writes after the
	 * release carry the next epoch, an over-report against the list
	 * that survives, and their copies name a sequence number no
	 * snapshot will get again.
	 */
	/*
	 * Asked for again now that the hold drained: a write admitted before
	 * it may have reached the origin only after a settle's origin sync
	 * began, and that settle, counting the prepare's request, would
	 * clear the mark while the write is in the page cache alone.  This
	 * request makes such a settle keep it (or sets it again); the
	 * prepare's set it already, so this is normally just a count.
	 */
	if (!err)
		err = diffstore_mark_pending(s->ds);
	if (!err)
		err = tracker_checkpoint_staged(s->tracker, name, CKPT_F_SNAPSHOT, p->seq, &c);
	if (!err) {
		struct vt_snap sn = { .seq = p->seq, .epoch = c.epoch, .valid = true,
				      .created = c.created };
		memcpy(sn.name, c.name, sizeof(sn.name));
		p->epoch = c.epoch;
		p->created = c.created;
		err = vt_snapset_add(s->set, &sn);
		if (err)
			tracker_checkpoint_unstage(s->tracker, name);
		else
			p->state = PENDING_COMMITTED;
	}
	ph->commit_us = mono_us() - t0;
	pthread_mutex_unlock(&s->lock);
	return err;
}

int vt_snapshots_release(struct vt_snapshots *s, const char *name, struct vt_snap_phases *ph)
{
	struct vt_pending *p = &s->pending;
	int err = 0;

	pthread_mutex_lock(&s->lock);
	uint64_t t0 = mono_us();
	if (p->state != PENDING_COMMITTED || strcmp(p->name, name)) {
		err = p->timed_out && !strcmp(p->name, name) ? -ETIMEDOUT : -ENOENT;
		pthread_mutex_unlock(&s->lock);
		return err;
	}
	ph->writes_held = vt_gate_release(&s->gate);
	uint64_t t1 = mono_us();
	ph->release_us = t1 - t0;
	ph->held_us = t1 - p->t_hold;
	p->state = PENDING_NONE;
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->lock);
	stop_watchdog(s);

	/* durable: only now is the snapshot there to be acknowledged */
	err = VT_FAULT_POINT("snapshots.release.sync-checkpoints");
	if (!err)
		err = tracker_checkpoints_sync(s->tracker);
	ph->sync_us = mono_us() - t1;
	if (err) {
		/* Maybe on disk, maybe not: say durably that it is no
		 * snapshot; failing that, keep copying for it, so that if it
		 * comes back it is whole. */
		int e2 = tracker_set_flags(s->tracker, name, 0, CKPT_F_SNAPSHOT);
		if (!e2)
			vt_snapset_remove(s->set, name, NULL);
		vt_error("snapshot '%s' could not be made durable: %s; %s", name, strerror(-err),
			 e2 ? "it is kept, and copied for, in case it comes back after a restart" :
			      "it was dropped, its checkpoint stays");
	}
	return err;
}

int vt_snapshots_abort(struct vt_snapshots *s, const char *name)
{
	struct vt_pending *p = &s->pending;
	int err = 0;

	pthread_mutex_lock(&s->lock);
	if (p->state == PENDING_NONE || strcmp(p->name, name))
		err = p->timed_out && !strcmp(p->name, name) ? 0 : -ENOENT;
	else
		abort_locked(s);
	pthread_mutex_unlock(&s->lock);
	stop_watchdog(s);
	return err;
}

int vt_snapshots_take(struct vt_snapshots *s, const char *name, unsigned timeout_ms,
		      struct vt_snap_phases *ph)
{
	/* One caller runs every step now: no watchdog thread to wait for. */
	int err = hold(s, name, timeout_ms, ph, false);

	if (!err)
		err = vt_snapshots_commit(s, name, ph);
	if (!err)
		err = vt_snapshots_release(s, name, ph);
	else if (err != -EINVAL && err != -EEXIST && err != -EBUSY)
		vt_snapshots_abort(s, name);
	return err;
}

int vt_snapshots_delete(struct vt_snapshots *s, const char *name, uint64_t *freed)
{
	struct vt_snap sn;
	int err = vt_snapset_get(s->set, name, &sn);

	if (err)
		return err;
	/* Durable first: a restart must never find a snapshot whose copies
	 * were handed to other chunks. */
	err = tracker_set_flags(s->tracker, name, 0, CKPT_F_SNAPSHOT | CKPT_F_INVALID);
	if (err)
		return err;
	return vt_snapset_remove(s->set, name, freed);
}
