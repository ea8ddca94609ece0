/*
 * mapfile: the persistent copy of the change map (META/changemap).
 *
 * Block 0 is a header fixed at creation (geometry and generation).  Each
 * map page then has two slots; a persist writes every dirty page into its
 * older slot, then fdatasyncs, and only then takes the new slots as
 * current.  A torn or lost page write leaves the other slot valid, so
 * every page always has a whole, checksummed version on disk.  Both
 * slots are valid from creation on, so a bad slot always means a torn
 * write or damage; since the surviving copy may then be stale, the page
 * is reported and the caller counts its blocks as changed (and the next
 * persist rewrites both slots).  Layout in doc/format.md.
 *
 * Page sequences only grow over the life of the file, failed writes
 * included, so a sequence also dates a page against a renumbering of the
 * epochs (epochs.h): the caller records mapfile_last_seq() with the new
 * numbering, and at the next load every page at or below it is
 * translated.
 */
#ifndef VOLTRACK_MAPFILE_H
#define VOLTRACK_MAPFILE_H

#include <stdint.h>

#include "changemap.h"
#include "fsops.h"
#include "superblock.h"

#define MAPFILE_NAME "changemap"

struct mapfile;

struct mapfile_report {
	uint32_t bad_pages;	/* pages with a damaged slot: their blocks are doubted */
	uint32_t first_bad;
};

/* Write a complete map file from cm, atomically (tmp + rename). */
int mapfile_create(int dirfd, const struct vt_fsops *ops, const struct superblock *sb,
		   const struct changemap *cm);

/*
 * How to read stored epochs: a page whose sequence is at most `boundary`
 * through `before`, any other through `after`.  A page whose values
 * change on the way in is left dirty, so that it is stored again as it
 * now reads.
 */
struct mapfile_xlate {
	uint64_t boundary;
	const uint8_t *before, *after;	/* 256 entries each */
};

/*
 * Load the newest valid version of every page into cm, translated by x
 * (NULL: as stored).  -ENOENT when the file is missing, -EBADMSG when its
 * header does not describe this volume and generation: the caller must
 * then doubt the whole map.  Later writes get sequences above both
 * every stored one and x->boundary.
 */
int mapfile_open(int dirfd, const struct vt_fsops *ops, const struct superblock *sb,
		 struct changemap *cm, const struct mapfile_xlate *x, struct mapfile **out,
		 struct mapfile_report *rep);

/* Raise the blocks of every damaged page to epoch e. */
void mapfile_mark_lost(struct mapfile *mf, struct changemap *cm, uint8_t e);

/* Write dirty pages and sync.  On failure the pages stay dirty.
 * *max_epoch (optional) receives the largest epoch written, 0 if none. */
int mapfile_persist(struct mapfile *mf, struct changemap *cm, uint8_t *max_epoch);

/* The largest sequence any page write has used so far, whether or not
 * it reached the disk: every page stored from now on is newer. */
uint64_t mapfile_last_seq(const struct mapfile *mf);

void mapfile_close(struct mapfile *mf);

/* Verify every page without loading it: for `voltrack check`. */
int mapfile_verify(int dirfd, const struct vt_fsops *ops, const struct superblock *sb,
		   uint64_t nblocks, struct mapfile_report *rep);

#endif
