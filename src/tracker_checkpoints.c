/*
 * The tracker's checkpoint list: taking, staging, flagging, taking back
 * and forgetting checkpoints, renumbering epochs, and the readers'
 * consistent look-ups.  Every change of the list is durable before the
 * in-memory list changes, under t->lock (see tracker.h).
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "metadir.h"
#include "pause.h"
#include "tracker_impl.h"

/* Forget item `drop` of the list (EPOCHS_KEEP_ALL: none) and renumber;
 * with t->lock held, which keeps checkpoints and readers' look-ups out. */
static int renumber(struct tracker *t, uint32_t drop)
{
	struct epochs_host h = {
		.md = t->md, .dirfd = t->dirfd, .ops = t->ops, .sb = &t->sb, .cm = &t->cm,
		.mf = t->mf, .ckpts = &t->ckpts, .open_epoch = &t->open_epoch,
		.numbering = &t->numbering,
		.translated = t->hook.translated, .arg = t->hook.arg,
	};

	pthread_mutex_lock(&t->persist_lock);
	int err = epochs_renumber(&h, drop);
	pthread_mutex_unlock(&t->persist_lock);
	if (!err && t->hook.done)
		t->hook.done(t->hook.arg);
	if (!err && t->live)
		tracker_nudge(t); /* store the translated pages soon */
	return err;
}

void tracker_set_renumber_hook(struct tracker *t, const struct tracker_renumber_hook *hook)
{
	pthread_mutex_lock(&t->lock);
	t->hook = hook ? *hook : (struct tracker_renumber_hook){ 0 };
	pthread_mutex_unlock(&t->lock);
}

int tracker_forget(struct tracker *t, const char *name)
{
	int err = -ENOENT;

	if (!checkpoint_name_valid(name))
		return -EINVAL;
	pthread_mutex_lock(&t->lock);
	const struct checkpoint *c = checkpoint_find(&t->ckpts, name);
	if (c)
		err = renumber(t, (uint32_t)(c - t->ckpts.items));
	pthread_mutex_unlock(&t->lock);
	return err;
}

int tracker_require_version(struct tracker *t, uint32_t version)
{
	int err = 0;

	pthread_mutex_lock(&t->lock);
	if (t->sb.version < version) {
		uint32_t was = t->sb.version;
		t->sb.version = version;
		t->sb.sequence++;
		err = metadir_write_superblock(t->md, &t->sb);
		if (err)
			t->sb.version = was;
	}
	pthread_mutex_unlock(&t->lock);
	return err;
}

static int add_checkpoint(struct tracker *t, const char *name, uint8_t flags,
			  uint32_t snap_seq, bool sync, struct checkpoint *out);

int tracker_checkpoint(struct tracker *t, const char *name, struct checkpoint *out)
{
	return add_checkpoint(t, name, 0, 0, true, out);
}

int tracker_checkpoint_flags(struct tracker *t, const char *name, uint8_t flags,
			     uint32_t snap_seq, struct checkpoint *out)
{
	return add_checkpoint(t, name, flags, snap_seq, true, out);
}

int tracker_checkpoint_staged(struct tracker *t, const char *name, uint8_t flags,
			      uint32_t snap_seq, struct checkpoint *out)
{
	return add_checkpoint(t, name, flags, snap_seq, false, out);
}

int tracker_checkpoints_sync(struct tracker *t)
{
	pthread_mutex_lock(&t->lock);
	int err = checkpoints_sync(t->dirfd, t->ops);
	pthread_mutex_unlock(&t->lock);
	return err;
}

static int add_checkpoint(struct tracker *t, const char *name, uint8_t flags,
			  uint32_t snap_seq, bool sync, struct checkpoint *out)
{
	struct checkpoint_list next; /* 54 KiB: the control thread has the stack */
	int err = 0;

	if (!checkpoint_name_valid(name))
		return -EINVAL;
	pthread_mutex_lock(&t->lock);
	if (checkpoint_find(&t->ckpts, name))
		err = -EEXIST;
	else if (t->ckpts.n == CKPT_MAX)
		err = -ENOSPC;
	else if (t->ckpts.open_epoch == CM_MAX_EPOCH)
		err = renumber(t, EPOCHS_KEEP_ALL); /* gaps left by failed stores */
	if (err) {
		pthread_mutex_unlock(&t->lock);
		return err;
	}
	next = t->ckpts;
	struct checkpoint *c = &next.items[next.n++];
	memset(c, 0, sizeof(*c));
	snprintf(c->name, sizeof(c->name), "%s", name);
	c->flags = flags;
	c->snap_seq = snap_seq;
	c->epoch = next.open_epoch;
	c->created = (uint64_t)time(NULL);
	c->serial = ++t->serials;
	next.open_epoch++;
	bool touched;
	err = sync ? checkpoints_store(t->dirfd, t->ops, &t->sb, &t->ckpts, &next, &touched) :
		     checkpoints_write(t->dirfd, t->ops, &t->sb, &t->ckpts, &next, &touched);
	if (!err) {
		/* The instant of the checkpoint: writes marked from now on
		 * belong to the new epoch. */
		t->ckpts = next;
		if (out)
			*out = *c;
	} else if (touched) {
		/*
		 * The store failed, but its slot may be on disk all the same
		 * (a failed fdatasync says nothing of what was written), and
		 * then the checkpoint comes back at the next start.  Writes
		 * from now on must count as changed since it, so the open
		 * epoch moves on anyway: over-reporting is allowed.  The
		 * attempt's sequence number is used up, so a retry can never
		 * mix its blocks with this attempt's.
		 */
		t->ckpts.open_epoch = next.open_epoch;
		t->ckpts.seq++;
		vt_error("checkpoint '%s' could not be stored: %s; writes from now on count as "
			 "changed since it, should it appear after a restart", name, strerror(-err));
	}
	VT_PAUSE_POINT("tracker.checkpoint.stored");
	atomic_store_explicit(&t->open_epoch, t->ckpts.open_epoch, memory_order_release);
	tracker_doubt_unsynced(t);
	pthread_mutex_unlock(&t->lock);
	return err;
}

int tracker_checkpoint_unstage(struct tracker *t, const char *name)
{
	struct checkpoint_list next;
	bool touched;
	int err = -ENOENT;

	pthread_mutex_lock(&t->lock);
	if (t->ckpts.n && !strcmp(t->ckpts.items[t->ckpts.n - 1].name, name)) {
		next = t->ckpts;
		next.n--;
		/* Nothing was marked in the epoch it opened (the gate is held),
		 * so that epoch can be open again. */
		next.open_epoch = next.items[next.n].epoch;
		err = checkpoints_store(t->dirfd, t->ops, &t->sb, &t->ckpts, &next, &touched);
		if (!err) {
			t->ckpts = next;
			atomic_store_explicit(&t->open_epoch, t->ckpts.open_epoch,
					      memory_order_release);
		} else if (touched) {
			t->ckpts.seq++;
		}
	}
	pthread_mutex_unlock(&t->lock);
	return err;
}

int tracker_set_flags(struct tracker *t, const char *name, uint8_t set, uint8_t clear)
{
	struct checkpoint_list next; /* 54 KiB: callers have the stack */
	bool touched;
	int err = -ENOENT;

	pthread_mutex_lock(&t->lock);
	next = t->ckpts;
	for (uint32_t i = 0; i < next.n; i++) {
		struct checkpoint *c = &next.items[i];
		if (strcmp(c->name, name))
			continue;
		uint8_t flags = (uint8_t)((c->flags | set) & ~clear);
		if (flags == c->flags) {
			err = 0;
			break;
		}
		c->flags = flags;
		err = checkpoints_store(t->dirfd, t->ops, &t->sb, &t->ckpts, &next, &touched);
		if (!err)
			t->ckpts = next;
		else if (touched)
			t->ckpts.seq++; /* as in tracker_checkpoint: never reuse it */
		break;
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

int tracker_checkpoint_find(struct tracker *t, const char *name, struct checkpoint *out)
{
	int err = -ENOENT;

	tracker_doubt_unsynced(t); /* every query sees a latched error at once */
	pthread_mutex_lock(&t->lock);
	const struct checkpoint *c = checkpoint_find(&t->ckpts, name);
	if (c) {
		*out = *c;
		err = 0;
	}
	pthread_mutex_unlock(&t->lock);
	return err;
}

int tracker_checkpoint_epoch(struct tracker *t, const char *name, uint8_t *epoch)
{
	struct checkpoint c;
	int err = tracker_checkpoint_find(t, name, &c);

	if (!err)
		*epoch = c.epoch;
	return err;
}

uint64_t tracker_read_begin(struct tracker *t)
{
	return epochs_read_begin(&t->numbering, &t->lock);
}

bool tracker_read_retry(struct tracker *t, uint64_t ticket)
{
	return epochs_read_retry(&t->numbering, ticket);
}

