/*
 * cmd_backup: the options the backup client's commands share, parsed
 * once (cli/cmd_backup.c); each command allows its own subset.
 */
#ifndef VOLTRACK_CLI_CMD_BACKUP_H
#define VOLTRACK_CLI_CMD_BACKUP_H

#include <stdbool.h>
#include <stdint.h>

#include "progress.h"

enum {
	BK_OPT_KEY = 1,		/* --key FILE */
	BK_OPT_JOBS = 2,	/* --jobs N */
	BK_OPT_BACKUP = 4,	/* --full --from --bitmap --meta --socket --chunk-size --no-compress */
	BK_OPT_VERIFY = 8,	/* --verify */
	BK_OPT_AGAINST = 16,	/* --against URI */
	BK_OPT_PRUNE = 32,	/* --keep-* */
};

struct bk_cli {
	const char *args[4];
	int nargs;
	const char *key, *meta, *socket, *from, *bitmap, *against;
	unsigned jobs;
	uint32_t chunk_size;
	bool json, quiet, full, no_compress, verify, dry_run;
	bool compress_level_set;
	int compress_level;
	unsigned keep_last, keep_daily, keep_weekly, keep_monthly;
	enum bk_progress_mode progress;
};

/* Returns 0, or the exit status of a usage error it has printed. */
int bk_cli_options(struct bk_cli *c, const char *cmd, int argc, char **argv, unsigned allow);

/* Open the repository at path for reading; prints the error itself
 * and returns 1 then. */
struct bk_repo;
int bk_cli_open_repo(const struct bk_cli *c, const char *path, struct bk_repo **r);

#endif
