/*
 * epochs: giving epoch numbers back, so that a volume can take
 * checkpoints forever while at most CKPT_MAX exist at once.
 *
 * An epoch is one byte in the change map.  Forgetting checkpoint i merges
 * the epoch intervals on either side of it; a renumbering then gives
 * every epoch v the rank of the interval it lies in among the checkpoints
 * that remain (c_1 < ... < c_m):
 *
 *	v' = 0                          for v = 0 (never written)
 *	v' = 1 + #{k : c_k < v}          otherwise
 *
 * so the k-th remaining checkpoint gets epoch k and the open epoch m + 1.
 * For every remaining c, v > c exactly when v' > c': no answer changes.
 * The translation keeps order and never raises (v' <= v), and it sends
 * every value above the old open epoch to the new one.
 *
 * Crash safety.  The map file and the checkpoint list are separate files
 * and cannot be written together.  The list therefore records, with the
 * new numbering, the translation from the previous one and a boundary:
 * the newest map-page sequence at the time (mapfile_last_seq()).  Pages
 * stored at or below the boundary are in the previous numbering and are
 * translated when loaded; later pages are in the new one.  The steps, in
 * this order, each durable before the next:
 *
 *   1. every dirty map page is persisted, so that every page on disk says
 *      what memory says, in the current numbering;
 *   2. the list with the new numbering, translation and boundary;
 *   3. only then is memory translated, and later persists store the
 *      new numbering, above the boundary.
 *
 * A crash before 2 lands leaves the old list and pages in its numbering;
 * after, the new list and pages that are either translated on load or
 * already new.  What must never happen is a page of the new numbering
 * read as old, which would translate it twice and lower it below the
 * truth: hence 3 after 2, and page sequences that never fall back to the
 * boundary (mapfile.h).  The opposite mistake only over-reports, since
 * translations lower and keep order (an old value v is at least its
 * translation, and a checkpoint's new epoch at most its old one).  Step 1
 * keeps the answers exact: with it one stored translation is always
 * enough; without it a page left two numberings behind would be
 * translated once, an over-report that could only grow.  A page whose
 * translation changes it, on load or in memory, is marked dirty, so
 * "clean" always means "stored as memory reads it".
 *
 * Concurrency.  Writers mark without locks, with an atomic maximum of the
 * open epoch they loaded.  The pass lowers each block by compare-and-swap
 * while the old open epoch is still published, and the new one is
 * published after it, so a concurrent mark either lands before the
 * block's translation (and is translated with it) or after (and stays at
 * the old open epoch).  That value is at least the write's epoch in the
 * new numbering, since every translation only lowers: an over-report,
 * never a miss.  It may sit above the new open epoch, where it would also
 * count as changed since checkpoints taken later; epochs_clamp() lowers
 * such values to the open epoch, which answers the same for every
 * existing checkpoint.  The tracker clamps when a persist writes a value
 * above the open epoch, and every load clamps.
 *
 * Readers compare map values with a checkpoint's epoch and must use both
 * from one numbering.  They bracket the look-up and the scan with
 * epochs_read_begin() and epochs_read_retry() (a sequence counter, odd
 * while a pass runs) and start over when a renumbering ran in between.
 */
#ifndef VOLTRACK_EPOCHS_H
#define VOLTRACK_EPOCHS_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "changemap.h"
#include "checkpoints.h"
#include "mapfile.h"
#include "metadir.h"

/* epochs_plan(): forget nothing, only close the gaps. */
#define EPOCHS_KEEP_ALL UINT32_MAX

struct epochs_seq;

/* What a renumbering works on: the tracker's own, lent for one call. */
struct epochs_host {
	struct metadir *md;		/* where the superblock is written */
	int dirfd;			/* and the checkpoint list, through ops */
	const struct vt_fsops *ops;
	struct superblock *sb;		/* its version may be raised */
	struct changemap *cm;
	struct mapfile *mf;
	struct checkpoint_list *ckpts;	/* replaced by the new list */
	_Atomic uint8_t *open_epoch;	/* what writers load */
	struct epochs_seq *numbering;
	/* Called inside the pass, after the map is translated: others who
	 * keep epochs (snapshots' copies) translate theirs.  May be NULL. */
	void (*translated)(void *arg, const uint8_t t[256]);
	void *arg;
};

/*
 * Forget item `drop` of h->ckpts (EPOCHS_KEEP_ALL: none) and renumber,
 * in the three steps above.  The caller keeps every other change of the
 * list, every map persist and the open epoch out meanwhile; writers may
 * mark and readers read.  On failure memory keeps the old numbering: if
 * the new list may have reached the disk all the same, pages stored
 * later lie above its boundary and would be read as new, which only
 * over-reports (every translation lowers).  -errno from the I/O, or
 * -ENOMEM.
 */
int epochs_renumber(const struct epochs_host *h, uint32_t drop);

/*
 * The list after forgetting item `drop` of cur (EPOCHS_KEEP_ALL: none),
 * renumbered as above, into next.  next->numbering gets the translation
 * from cur's numbering and the next count; its boundary is left for the
 * caller, who knows the map file.
 */
void epochs_plan(const struct checkpoint_list *cur, uint32_t drop, struct checkpoint_list *next);

/*
 * Translate every block's epoch v to t[v], in place, while writers mark
 * (see above: publish the new open epoch only after).  Pages that change
 * are marked dirty.  Returns the number of blocks changed.
 */
uint64_t epochs_translate(struct changemap *cm, const uint8_t t[256]);

/*
 * Lower every epoch above `open` to it; dirty pages as above.  The caller
 * must keep the open epoch from changing meanwhile (no checkpoint, no
 * renumbering): a value lowered to an epoch older than a concurrent
 * writer's would hide its write.  Writers may mark.  Returns the number
 * of blocks lowered.
 */
uint64_t epochs_clamp(struct changemap *cm, uint8_t open);

/*
 * How to load the stored map under list l: pages up to the boundary
 * through l's translation, the others as stored, both clamped to l's
 * open epoch.  x points into the two tables.
 */
void epochs_load_tables(const struct checkpoint_list *l, uint8_t before[256],
			uint8_t after[256], struct mapfile_xlate *x);

/*
 * The numbering's sequence counter.  Even: stable; odd: a pass runs.
 * The writer holds `lock` (given to epochs_read_begin) from before
 * write_begin to after write_end, so a reader that finds it odd waits
 * there instead of spinning.
 */
struct epochs_seq {
	_Atomic uint64_t seq;
};

void epochs_write_begin(struct epochs_seq *s);
void epochs_write_end(struct epochs_seq *s);
/* A ticket for one consistent read; waits while a pass runs. */
uint64_t epochs_read_begin(struct epochs_seq *s, pthread_mutex_t *lock);
/* True when the numbering changed since the ticket: read again. */
bool epochs_read_retry(struct epochs_seq *s, uint64_t ticket);

#endif
