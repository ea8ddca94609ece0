#include "snapshots.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "pause.h"

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

	(void)why;
	return tracker_set_flags(s->tracker, name, CKPT_F_INVALID, 0);
}

int vt_snapshots_open(struct metadir *md, struct tracker *t, struct volume *vol,
		      const struct diffstore_config *cfg, struct vt_snapshots **out)
{
	struct vt_snapshots *s = calloc(1, sizeof(*s));
	struct checkpoint_list *l = malloc(sizeof(*l));
	struct vt_snap *snaps = calloc(CKPT_MAX, sizeof(*snaps));
	const struct changemap *cm = tracker_map(t);
	unsigned n = 0;
	int err = s && l && snaps ? 0 : -ENOMEM;

	if (!err)
		err = vt_gate_init(&s->gate);
	if (err) {
		free(s);
		free(l);
		free(snaps);
		return err;
	}
	s->tracker = t;
	s->vol = vol;
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

int vt_snapshots_take(struct vt_snapshots *s, const char *name, unsigned timeout_ms,
		      struct vt_snap_phases *ph)
{
	struct checkpoint c;
	uint64_t t0 = mono_us(), t1, t2, t3;
	int err;

	memset(ph, 0, sizeof(*ph));
	if (!checkpoint_name_valid(name))
		return -EINVAL;
	uint8_t ignored;
	if (tracker_checkpoint_epoch(s->tracker, name, &ignored) == 0)
		return -EEXIST;

	/* prepare: a persist now leaves the hold nothing of the map to do */
	tracker_nudge(s->tracker);
	uint32_t seq = vt_snapset_next_seq(s->set);
	t1 = mono_us();
	ph->prepare_us = t1 - t0;

	/* hold: the deadline counts from the start of the hold */
	ph->draining = vt_gate_inflight(&s->gate);
	uint64_t deadline = (t1 + (uint64_t)timeout_ms * 1000) * 1000;
	err = vt_gate_hold(&s->gate, deadline);
	VT_PAUSE_POINT("snapshots.held");
	t2 = mono_us();
	ph->hold_us = t2 - t1;

	/*
	 * commit: one update of the checkpoint list makes checkpoint and
	 * snapshot.  It only reaches the kernel here; its sync waits until
	 * after the release, so the hold never waits on the disk's queue.
	 * Nothing is acknowledged before that sync, and a crash before it
	 * loses only this snapshot: writes after the release carry the next
	 * epoch, an over-report against the list that survives, and their
	 * copies name a sequence number no snapshot will get again.
	 */
	if (!err)
		err = tracker_checkpoint_staged(s->tracker, name, CKPT_F_SNAPSHOT, seq, &c);
	if (!err) {
		struct vt_snap sn = { .seq = seq, .epoch = c.epoch, .valid = true,
				      .created = c.created };
		memcpy(sn.name, c.name, sizeof(sn.name));
		err = vt_snapset_add(s->set, &sn);
		if (err) /* cannot happen after the checks above */
			tracker_set_flags(s->tracker, name, CKPT_F_INVALID, 0);
	}
	t3 = mono_us();
	ph->commit_us = t3 - t2;

	ph->writes_held = vt_gate_release(&s->gate);
	uint64_t t4 = mono_us();
	ph->release_us = t4 - t3;
	if (err)
		return err;

	/* durable: only now is the snapshot there to be acknowledged */
	err = tracker_checkpoints_sync(s->tracker);
	ph->sync_us = mono_us() - t4;
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
