/*
 * checkpoints: the named epoch boundaries (META/checkpoints).
 *
 * Checkpoint k closes epoch k: "changed since NAME" means epoch > k.
 * The list and the number of the open epoch live in one of two
 * preallocated slots of META/checkpoints; an update rewrites the older
 * slot in place and fdatasyncs it before the in-memory list changes.
 * Overwriting allocated blocks needs no filesystem journal commit, so a
 * checkpoint stays fast while the volume takes heavy allocating writes.
 * Falling back to the older slot (a torn update) can only lose the
 * update being made, which was never acknowledged.  Epochs are one byte
 * in the change map, so at most CKPT_MAX checkpoints exist at once; when
 * one is forgotten the epochs are renumbered (epochs.h), and the list
 * then also carries the numbering record below.
 */
#ifndef VOLTRACK_CHECKPOINTS_H
#define VOLTRACK_CHECKPOINTS_H

#include <stdbool.h>
#include <stdint.h>

#include "fsops.h"
#include "superblock.h"

#define CKPT_NAME_MAX 200
#define CKPT_MAX 254
#define CHECKPOINTS_NAME "checkpoints"

/* The checkpoint carries a snapshot (copy-on-write since its instant). */
#define CKPT_F_SNAPSHOT 1u
/* ... which has lost a copy, or could not be kept: reads fail. */
#define CKPT_F_INVALID 2u
#define CKPT_F_KNOWN (CKPT_F_SNAPSHOT | CKPT_F_INVALID)

struct checkpoint {
	char name[CKPT_NAME_MAX + 1];
	uint8_t epoch;
	uint8_t flags;		/* CKPT_F_* */
	uint32_t snap_seq;	/* the snapshot's sequence number (diffstore.h) */
	uint64_t created;	/* unix seconds */
	/* In memory only, set by the tracker: unique within one run, never
	 * reused, so that a holder can tell "the same checkpoint" from
	 * "another one of the same name". */
	uint64_t serial;
};

/*
 * How the current epoch numbers came to be (doc/format.md).  The last
 * renumbering translated every epoch v of the previous numbering to
 * from_prev[v].  Change-map pages whose sequence is at most `boundary`
 * may still be stored in that previous numbering and are translated when
 * loaded; later pages are in the current one.  boundary 0: no page is.
 * count is 0 for a history never renumbered, and then the record is not
 * stored at all (the list reads as in format version 2).
 */
struct ckpt_numbering {
	uint32_t count;		/* renumberings so far */
	uint64_t boundary;
	uint8_t from_prev[256];
};

struct checkpoint_list {
	uint32_t n;
	uint8_t open_epoch;	/* the epoch writes land in now */
	struct ckpt_numbering numbering;
	struct checkpoint items[CKPT_MAX];
	/* where it is stored: the slot holding it and its sequence */
	uint8_t slot;
	uint64_t seq;
};

/* Names are 1-200 characters from [A-Za-z0-9._+@:-], other than "."
 * and "..": safe in export names, context names, file names and shells. */
bool checkpoint_name_valid(const char *name);

const struct checkpoint *checkpoint_find(const struct checkpoint_list *l, const char *name);

/* A new file holding l in both slots. */
int checkpoints_create(int dirfd, const struct vt_fsops *ops, const struct superblock *sb,
		       struct checkpoint_list *l);
/* -ENOENT when missing, -EBADMSG when no slot is valid.  *damaged
 * (optional) reports a bad slot beside the one used. */
int checkpoints_load(int dirfd, const struct vt_fsops *ops, const struct superblock *sb,
		     struct checkpoint_list *l, bool *damaged);
/* Write l into the slot not holding `prev`; on success l records it.
 * *touched says whether the file may have changed, also on failure
 * (false when it failed before writing anything). */
int checkpoints_store(int dirfd, const struct vt_fsops *ops, const struct superblock *sb,
		      const struct checkpoint_list *prev, struct checkpoint_list *l,
		      bool *touched);

/* checkpoints_store() in two steps: the slot reaches the kernel, and is
 * made durable later by checkpoints_sync().  Until then a crash may fall
 * back to prev, which must be acceptable to the caller. */
int checkpoints_write(int dirfd, const struct vt_fsops *ops, const struct superblock *sb,
		      const struct checkpoint_list *prev, struct checkpoint_list *l,
		      bool *touched);
int checkpoints_sync(int dirfd, const struct vt_fsops *ops);

#endif
