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
 * CKPT_MAX exist. */
int tracker_checkpoint(struct tracker *t, const char *name, struct checkpoint *out);

/* A consistent copy of the checkpoint list. */
void tracker_checkpoints(struct tracker *t, struct checkpoint_list *out);

/* The epoch a checkpoint closed, or -ENOENT. */
int tracker_checkpoint_epoch(struct tracker *t, const char *name, uint8_t *epoch);

const struct changemap *tracker_map(const struct tracker *t);
void tracker_info(struct tracker *t, struct tracker_info *info);

#endif
