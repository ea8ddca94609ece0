/*
 * verify: check backups in a repository, and compare one with a live
 * export.
 *
 * bk_verify() reads the named backup's manifest (every backup's when
 * id is NULL) and every chunk they name, each distinct chunk once, on
 * `jobs` threads; it prints one line to out for each problem, naming
 * the backup, the chunk's index, its offset and its digest, and returns
 * the number of problems (or -errno when it could not run).
 *
 * bk_verify_against() reads the export at uri and compares each chunk
 * with the backup's digest (holes with zeroes), printing one line per
 * chunk that differs; it returns the number of differences or -errno.
 */
#ifndef VOLTRACK_BACKUP_VERIFY_H
#define VOLTRACK_BACKUP_VERIFY_H

#include <stdio.h>

#include "manifest.h"
#include "progress.h"
#include "repo.h"

struct bk_verify_stats {
	unsigned backups;
	uint64_t chunks;	/* distinct chunks checked */
	uint64_t bytes;		/* their contents */
};

long bk_verify(struct bk_repo *r, const char *id, unsigned jobs, struct bk_progress *prog,
	       FILE *out, struct bk_verify_stats *st);
long bk_verify_against(struct bk_repo *r, const struct bk_manifest *m, const char *uri,
		       FILE *out, char *msg, size_t msglen);

#endif
