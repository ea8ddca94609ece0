/*
 * tracker: crash-safe changed-block tracking for one volume.
 *
 * Ties together the in-memory change map, its persistent copy, the
 * write-intent map and the checkpoint list, all in the metadata
 * directory.  The I/O path calls tracker_write_begin() before issuing
 * any write, TRIM or WRITE_ZEROES and tracker_write_end() once it has
 * finished, failed or been abandoned.  Between the two, the covered
 * blocks are marked in the open epoch, and the data write is not issued
 * before its region's intent is durable.
 *
 * Opening recovers: the persisted map, plus every block of every region
 * whose intent is set, counted as changed in the open epoch.  Anything
 * that cannot be trusted (a corrupt page, a volume changed while nothing
 * tracked it, unreadable metadata) is counted as changed too, and said
 * in the log and in tracker_info().  See doc/tracking.md.
 */
#ifndef VOLTRACK_TRACKER_H
#define VOLTRACK_TRACKER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "changemap.h"
#include "checkpoints.h"
#include "intent.h"
#include "mapfile.h"
#include "metadir.h"
#include "superblock.h"
#include "volume.h"

/* Create the tracking files for a freshly written superblock. */
int tracker_format(struct metadir *md, const struct superblock *sb);

enum tracker_start {
	TRACKER_START_CLEAN,		/* closed cleanly, volume unchanged */
	TRACKER_START_RECOVERED,	/* after a crash: intent regions counted */
	TRACKER_START_OFFLINE_CHANGE,	/* modified untracked: all changed */
	TRACKER_START_RESET,		/* metadata unreadable: history reset */
	TRACKER_START_NEW_GENERATION,	/* a checkpoint may be lost: new generation */
};

const char *tracker_start_name(enum tracker_start s);

struct tracker_info {
	enum tracker_start start;
	char start_detail[256];		/* why, in words, for non-clean starts */
	uint32_t bad_pages;		/* map pages reported changed for doubt */
	uint32_t regions_recovered;	/* intent regions counted at start */
	uint32_t regions_set;		/* intent regions set now */
	uint64_t region_size;
	uint32_t granularity;
	uint64_t volume_size;
	uint8_t open_epoch;
	uint32_t checkpoints;
	struct vt_uuid generation;
	struct vt_uuid volume_uuid;
	int last_persist_error;
	int volume_sync_error;		/* latched (volume_sync()); 0 when none */
};

struct tracker_config {
	unsigned persist_interval_ms;	/* how often the map is written */
	unsigned idle_ticks;		/* persists a region must sit idle before clearing */
	unsigned lease_ms;		/* write lease (intent.h); 0: the default, 3 s */
	/*
	 * The volume the tracker covers.  It is synced (volume_sync) before
	 * any intent is cleared, so that no write an intent covers can be
	 * lost by a power cut once the intent is gone; a sync error latched
	 * in it keeps every intent set and the superblock unclean.  Without
	 * one, intents are never cleared.
	 */
	struct volume *volume;
};

void tracker_config_defaults(struct tracker_config *cfg);

struct tracker;

/*
 * Open with the metadata directory locked by the caller.  `id` is the
 * volume as it is now.  With `live`, the flusher and committer threads
 * run and the superblock is marked in use before this returns.
 * -ERANGE when the volume is not the size the superblock records (the
 * caller says so: `init --force` adopts a new size); the superblock's
 * errors (metadir_read_superblock) when it cannot be read.
 */
int tracker_open(struct metadir *md, const struct volume_identity *id, bool live,
		 const struct tracker_config *cfg, struct tracker **out);

/*
 * Record, durably and before the first untracked write is served, that
 * the volume is being written without tracking (`serve --no-track`).
 * The next tracker_open() then reports everything changed under a new
 * generation: nothing else could say which blocks those writes touched.
 */
int tracker_mark_untracked(struct metadir *md);

/* Persist the map, sync the volume, clear the intents and mark the
 * superblock clean with `id`, in that order.  No writes may be in
 * flight.  On any failure (a latched volume sync error among them) the
 * superblock stays unclean and the next open recovers.  Frees the
 * tracker even on error. */
int tracker_close(struct tracker *t, const struct volume_identity *id);

/* Stop and free without marking anything clean (error paths): the next
 * open recovers as after a crash. */
void tracker_abandon(struct tracker *t);

/* 0: issue now.  1: parked; w->ready() follows from another thread.
 * <0: do not issue.  Always followed by tracker_write_end(). */
int tracker_write_begin(struct tracker *t, uint64_t off, uint64_t len,
			struct intent_wait *w);
void tracker_write_end(struct tracker *t, uint64_t off, uint64_t len);

/* Ask for an early persist (after a FLUSH); does not wait. */
void tracker_nudge(struct tracker *t);

/* -EEXIST for a taken name, -EINVAL for a bad one, -ENOSPC when
 * CKPT_MAX exist.  Takes checkpoints forever as long as old ones are
 * forgotten: when the epochs run out it renumbers them first. */
int tracker_checkpoint(struct tracker *t, const char *name, struct checkpoint *out);

/* The same, with CKPT_F_* flags and a snapshot sequence number stored
 * in the same durable update: a snapshot and its checkpoint are one. */
int tracker_checkpoint_flags(struct tracker *t, const char *name, uint8_t flags,
			     uint32_t snap_seq, struct checkpoint *out);

/*
 * The same, but the update only reaches the kernel: the in-memory state
 * (and the open epoch) change at once, and tracker_checkpoints_sync()
 * makes it durable.  A crash before that falls back to the list without
 * it, which is safe: the checkpoint was never acknowledged, and writes
 * marked in the epoch after it only over-report against that list.
 * For a snapshot's hold, which must not wait for a sync.
 */
int tracker_checkpoint_staged(struct tracker *t, const char *name, uint8_t flags,
			      uint32_t snap_seq, struct checkpoint *out);
int tracker_checkpoints_sync(struct tracker *t);

/*
 * Raise the superblock's format version to at least `version`, durably,
 * before the caller stores what an older reader would misread (a
 * snapshot flag, a numbering record): such a reader then refuses the
 * directory instead of serving it wrongly.  A no-op when it already is.
 */
int tracker_require_version(struct tracker *t, uint32_t version);
/* Take back the newest checkpoint, staged and not yet acknowledged,
 * while no write has been admitted since: durably, with its epoch open
 * again.  -ENOENT unless NAME is the newest. */
int tracker_checkpoint_unstage(struct tracker *t, const char *name);

/* Change a checkpoint's flags durably; -ENOENT for an unknown name. */
int tracker_set_flags(struct tracker *t, const char *name, uint8_t set, uint8_t clear);

/*
 * Forget a checkpoint: durably, before this returns 0, and atomically
 * (after a crash it is either there with its right answers or gone).
 * The epochs are renumbered (epochs.h), so epoch numbers held from
 * before are stale: see tracker_read_begin().  -EINVAL for a bad name,
 * -ENOENT for an unknown one, else -errno of the metadata I/O, after
 * which the checkpoint may or may not come back at the next start.
 */
int tracker_forget(struct tracker *t, const char *name);

/*
 * Whoever else keeps epoch numbers (the snapshots, beside their copies)
 * follows renumberings: translated() runs inside the pass, with readers
 * held off, and done() after it, outside, for its own stores.
 */
struct tracker_renumber_hook {
	void (*translated)(void *arg, const uint8_t t[256]);
	void (*done)(void *arg);
	void *arg;
};
void tracker_set_renumber_hook(struct tracker *t, const struct tracker_renumber_hook *hook);

/* A consistent copy of the checkpoint list. */
void tracker_checkpoints(struct tracker *t, struct checkpoint_list *out);

/* A checkpoint by name (its epoch in the current numbering and its
 * serial), or -ENOENT. */
int tracker_checkpoint_find(struct tracker *t, const char *name, struct checkpoint *out);

/* The epoch a checkpoint closed, or -ENOENT. */
int tracker_checkpoint_epoch(struct tracker *t, const char *name, uint8_t *epoch);

/*
 * Epoch numbers change when checkpoints are forgotten.  Whoever compares
 * the map with a checkpoint's epoch takes a ticket first, looks the
 * checkpoint up and scans, then asks whether it must start over:
 *
 *	do {
 *		ticket = tracker_read_begin(t);
 *		tracker_checkpoint_find(t, name, &c);
 *		... changemap_run(map, ..., c.epoch, ...) ...
 *	} while (tracker_read_retry(t, ticket));
 *
 * read_begin waits while a renumbering pass runs (milliseconds).  A
 * ticket changes with every renumbering, so it also tells whether an
 * epoch cached with it is still good.
 */
uint64_t tracker_read_begin(struct tracker *t);
bool tracker_read_retry(struct tracker *t, uint64_t ticket);

const struct changemap *tracker_map(const struct tracker *t);
void tracker_info(struct tracker *t, struct tracker_info *info);

#endif
