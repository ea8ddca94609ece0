/*
 * backup: one backup run, end to end.
 *
 * bk_backup_from() backs up any NBD export: incremental from the newest
 * backup of the same source when the export offers the named dirty
 * bitmap (which must cover every change since that backup), else full.
 *
 * bk_backup_volume() orchestrates a voltrack volume through its control
 * socket: snapshot, read `snapshot/NAME` (only the chunks dirty in
 * `qemu:dirty-bitmap:PARENT` when the parent backup's checkpoint and
 * generation still hold), commit the manifest, then drop the
 * snapshot's data and forget the parent's checkpoint.  It creates and
 * removes only checkpoints named vtbackup-ID8-..., ID8 being the
 * repository's; at the start it forgets every such checkpoint except
 * the newest backup's, so a run killed at any point leaves the next one
 * incremental from the last committed backup.
 *
 * Both take the repository's writer lock (waiting for it), create the
 * repository when it does not exist, and return 0 or -errno; res says
 * what happened, or on failure what failed (res->msg, one line).
 */
#ifndef VOLTRACK_BACKUP_BACKUP_H
#define VOLTRACK_BACKUP_BACKUP_H

#include <stdbool.h>
#include <stdint.h>

#include "copy.h"
#include "manifest.h"
#include "progress.h"
#include "repo.h"

#define BK_CKPT_PREFIX "vtbackup-"

struct bk_backup_opts {
	const char *repo;
	struct bk_repo_params params;	/* used when creating the repository */
	bool full;
	int compress_level;		/* zstd's; 0: BK_ZSTD_LEVEL_DEFAULT */
	unsigned jobs;			/* 0: bk_default_jobs() */
	enum bk_progress_mode progress;
	/* bk_backup_volume */
	const char *volume;
	const char *meta;		/* NULL: VOLUME.voltrack */
	const char *nbd_socket;		/* NULL: META/nbd.sock */
	/* bk_backup_from */
	const char *uri;
	const char *bitmap;		/* NULL: always full */
};

struct bk_backup_result {
	struct bk_manifest m;		/* the committed manifest; bk_manifest_free() it */
	struct bk_copy_stats st;
	double seconds;
	bool created_repo;
	char msg[768];
};

int bk_backup_from(const struct bk_backup_opts *o, struct bk_backup_result *res);
int bk_backup_volume(const struct bk_backup_opts *o, struct bk_backup_result *res);

/* The newest readable manifest of source, into *m; -ENOENT if none. */
int bk_find_parent(struct bk_repo *r, const char *source, struct bk_manifest *m);

#endif
