/*
 * checkpoints: the named epoch boundaries (META/checkpoints).
 *
 * Checkpoint k closes epoch k: "changed since NAME" means epoch > k.
 * The list and the number of the open epoch are one small file,
 * replaced atomically (temporary file, fdatasync, rename, directory
 * fsync) before the in-memory list changes.  Epochs are one byte in the
 * change map, so at most CKPT_MAX checkpoints exist over a history.
 */
#ifndef VOLTRACK_CHECKPOINTS_H
#define VOLTRACK_CHECKPOINTS_H

#include <stdbool.h>
#include <stdint.h>

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
};

/* Names are 1-200 characters from [A-Za-z0-9._+@:-]: safe in export
 * names, context names, file names and shells. */
bool checkpoint_name_valid(const char *name);

const struct checkpoint *checkpoint_find(const struct checkpoint_list *l, const char *name);

/* A missing file is an empty list with epoch 1 open. -EBADMSG if corrupt. */
int checkpoints_load(int dirfd, const struct superblock *sb, struct checkpoint_list *l);
int checkpoints_store(int dirfd, const struct superblock *sb, const struct checkpoint_list *l);

#endif
