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
 * checkpoint being created, which was never acknowledged.  Epochs are one
 * byte in the change map, so at most CKPT_MAX checkpoints exist.
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

struct checkpoint {
	char name[CKPT_NAME_MAX + 1];
	uint8_t epoch;
	uint64_t created;	/* unix seconds */
};

struct checkpoint_list {
	uint32_t n;
	uint8_t open_epoch;	/* the epoch writes land in now */
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
int checkpoints_load(int dirfd, const struct superblock *sb, struct checkpoint_list *l,
		     bool *damaged);
/* Write l into the slot not holding `prev`; on success l records it.
 * *touched says whether the file may have changed, also on failure
 * (false when it failed before writing anything). */
int checkpoints_store(int dirfd, const struct vt_fsops *ops, const struct superblock *sb,
		      const struct checkpoint_list *prev, struct checkpoint_list *l,
		      bool *touched);

#endif
