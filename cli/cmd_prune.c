/*
 * voltrack prune REPO --keep-last N [--keep-daily N] [--keep-weekly N]
 *                     [--keep-monthly N] [--dry-run] [--json] [--key FILE]
 *
 * Takes the repository's writer lock (waiting for a backup that holds
 * it, and saying so), then backup/prune.c does the rest.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "cmd_backup.h"
#include "prune.h"
#include "repo.h"

int cmd_prune(int argc, char **argv)
{
	struct bk_cli c;
	struct bk_repo *r;
	int status = bk_cli_options(&c, "prune", argc, argv, BK_OPT_KEY | BK_OPT_PRUNE);

	if (status)
		return status;
	if (c.nargs != 1)
		return cli_usage("prune", "prune takes REPO and --keep-* rules");
	struct bk_keep k = { c.keep_last, c.keep_daily, c.keep_weekly, c.keep_monthly };
	if (!k.last && !k.daily && !k.weekly && !k.monthly)
		return cli_usage("prune", "prune needs at least one of --keep-last, --keep-daily, "
				 "--keep-weekly, --keep-monthly");
	if (bk_cli_open_repo(&c, c.args[0], &r))
		return 1;
	int err = bk_repo_lock(r, false);
	if (err == -EBUSY) {
		fprintf(stderr, "voltrack: %s is in use by another writer (a backup?); waiting\n",
			c.args[0]);
		err = bk_repo_lock(r, true);
	}
	if (err) {
		bk_repo_close(r);
		return cli_fail("cannot lock repository %s: %s", c.args[0], strerror(-err));
	}
	struct bk_prune_stats st;
	char msg[512];
	err = bk_prune(r, &k, c.dry_run, c.json ? stderr : stdout, &st, msg, sizeof(msg));
	bk_repo_close(r);
	if (err)
		return cli_fail("%s", msg);
	if (c.json)
		printf("{\"kept\":%u,\"removed\":%u,\"chunks_removed\":%llu,\"bytes_freed\":%llu,"
		       "\"chunks_kept\":%llu,\"dry_run\":%s}\n",
		       st.kept, st.removed, (unsigned long long)st.chunks_removed,
		       (unsigned long long)st.bytes_freed, (unsigned long long)st.chunks_kept,
		       c.dry_run ? "true" : "false");
	else
		printf("%s%u backup(s) kept, %u removed; %llu chunk(s) (%.1f MiB) %s, %llu kept\n",
		       c.dry_run ? "dry run: " : "", st.kept, st.removed,
		       (unsigned long long)st.chunks_removed, (double)st.bytes_freed / (1 << 20),
		       c.dry_run ? "would be freed" : "freed", (unsigned long long)st.chunks_kept);
	return 0;
}
