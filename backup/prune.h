/*
 * prune: forget old backups by rules, then collect the chunks no
 * remaining backup names (doc/backup-format.md, "Pruning").
 *
 * Rules are applied per source (what was backed up), newest first, as
 * restic counts them: keep_last keeps the N newest; keep_daily (weekly,
 * monthly) the newest backup of each of the N most recent days (ISO
 * weeks, months, in UTC) that have one.  A backup any rule keeps stays.
 * At least one rule must be given (-EINVAL otherwise).  A repository
 * with a damaged manifest is refused (-EBADMSG): what that backup needs
 * cannot be known, so no chunk could be collected safely.
 *
 * The caller holds the writer lock: no backup adds references while
 * chunks are collected.  Order: manifests unlinked and the directory
 * synced, then the sweep; a crash part way leaves only unreferenced
 * chunks, for the next prune.  Prints one line per removed backup to
 * out.  Returns 0 or -errno.
 */
#ifndef VOLTRACK_BACKUP_PRUNE_H
#define VOLTRACK_BACKUP_PRUNE_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "repo.h"

struct bk_keep {
	unsigned last, daily, weekly, monthly;
};

struct bk_prune_stats {
	unsigned kept, removed;
	uint64_t chunks_removed, bytes_freed, chunks_kept;
};

int bk_prune(struct bk_repo *r, const struct bk_keep *k, bool dry_run, FILE *out,
	     struct bk_prune_stats *st, char *msg, size_t msglen);

#endif
