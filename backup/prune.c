/*
 * prune: see prune.h.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "chunk.h"
#include "manifest.h"
#include "prune.h"

struct item {
	struct bk_manifest m;
	bool keep;
};

static void bucket(uint64_t t, int rule, char *out, size_t n)
{
	time_t tt = (time_t)t;
	struct tm tm;

	gmtime_r(&tt, &tm);
	strftime(out, n, rule == 0 ? "%Y-%m-%d" : rule == 1 ? "%G-W%V" : "%Y-%m", &tm);
}

/* Mark what the rules keep among items[] (newest last) of one source. */
static void apply_rules(struct item *it, size_t n, const char *source, const struct bk_keep *k)
{
	unsigned counts[3] = { k->daily, k->weekly, k->monthly }, last = k->last;
	char prev[3][16] = { "", "", "" };

	for (size_t i = n; i-- > 0;) {
		if (strcmp(it[i].m.source, source))
			continue;
		if (last) {
			it[i].keep = true;
			last--;
		}
		for (int rule = 0; rule < 3; rule++) {
			char b[16];
			bucket(it[i].m.created, rule, b, sizeof(b));
			if (counts[rule] && strcmp(b, prev[rule])) {
				it[i].keep = true;
				counts[rule]--;
				memcpy(prev[rule], b, sizeof(b));
			}
		}
	}
}

static int cmp_digest(const void *a, const void *b)
{
	return memcmp(a, b, BK_DIGEST_LEN);
}

/* Remove every chunk not in live (sorted). */
static int sweep(struct bk_repo *r, const uint8_t (*live)[BK_DIGEST_LEN], size_t nlive,
		 bool dry_run, struct bk_prune_stats *st)
{
	for (int sub = 0; sub < 256; sub++) {
		char name[3];
		snprintf(name, sizeof(name), "%02x", sub);
		int dfd = openat(r->chunksfd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (dfd < 0)
			return -errno;
		DIR *d = fdopendir(dfd);
		if (!d) {
			close(dfd);
			return -errno;
		}
		struct dirent *e;
		bool removed = false;
		while ((e = readdir(d))) {
			uint8_t dg[BK_DIGEST_LEN];
			if (strlen(e->d_name) != 2 * BK_DIGEST_LEN ||
			    bk_unhex(e->d_name, dg, BK_DIGEST_LEN))
				continue;
			if (bsearch(dg, live, nlive, BK_DIGEST_LEN, cmp_digest)) {
				st->chunks_kept++;
				continue;
			}
			struct stat sb;
			if (fstatat(dfd, e->d_name, &sb, 0) == 0)
				st->bytes_freed += (uint64_t)sb.st_size;
			if (!dry_run && unlinkat(dfd, e->d_name, 0) && errno != ENOENT) {
				int err = -errno;
				closedir(d);
				return err;
			}
			st->chunks_removed++;
			removed = true;
		}
		int err = removed && !dry_run && fsync(dfd) ? -errno : 0;
		closedir(d);
		if (err)
			return err;
	}
	return 0;
}

int bk_prune(struct bk_repo *r, const struct bk_keep *k, bool dry_run, FILE *out,
	     struct bk_prune_stats *st, char *msg, size_t msglen)
{
	char **ids;
	size_t n;
	int err;

	memset(st, 0, sizeof(*st));
	if (!k->last && !k->daily && !k->weekly && !k->monthly) {
		snprintf(msg, msglen, "prune needs at least one --keep-* rule");
		return -EINVAL;
	}
	err = bk_manifest_list(r, &ids, &n);
	if (err) {
		snprintf(msg, msglen, "cannot list the backups: %s", strerror(-err));
		return err;
	}
	struct item *it = calloc(n ? n : 1, sizeof(*it));
	if (!it) {
		bk_manifest_list_free(ids, n);
		return -ENOMEM;
	}
	size_t nread = 0;
	for (; nread < n; nread++) {
		char why[BK_FIELD_MAX];
		err = bk_manifest_read(r, ids[nread], &it[nread].m, why);
		if (err) {
			snprintf(msg, msglen, "backup %s is damaged (%s): which chunks it needs "
				 "cannot be known, so nothing is pruned; remove its manifest from "
				 "backups/ to go on without it", ids[nread],
				 err == -EBADMSG ? why : strerror(-err));
			goto out;
		}
	}
	for (size_t i = 0; i < n; i++) {
		bool seen = false;
		for (size_t j = 0; j < i && !seen; j++)
			seen = !strcmp(it[j].m.source, it[i].m.source);
		if (!seen)
			apply_rules(it, n, it[i].m.source, k);
	}
	/* Manifests first, durably: from here on the chunks they alone
	 * named are garbage, whatever happens next. */
	size_t nlive = 0;
	for (size_t i = 0; i < n; i++) {
		if (it[i].keep) {
			st->kept++;
			for (uint64_t c = 0; c < it[i].m.nchunks; c++)
				nlive += !it[i].m.chunks[c].hole;
			continue;
		}
		if (!dry_run && unlinkat(r->backupsfd, it[i].m.id, 0)) {
			err = -errno;
			snprintf(msg, msglen, "cannot remove backup %s: %s", it[i].m.id,
				 strerror(-err));
			goto out;
		}
		fprintf(out, "%s backup %s (%s, %s)\n", dry_run ? "would remove" : "removed",
			it[i].m.id, it[i].m.full ? "full" : "incremental", it[i].m.source);
		st->removed++;
	}
	if (!dry_run && st->removed && fsync(r->backupsfd)) {
		err = -errno;
		snprintf(msg, msglen, "cannot sync the backups directory: %s", strerror(-err));
		goto out;
	}
	uint8_t (*live)[BK_DIGEST_LEN] = malloc((nlive ? nlive : 1) * BK_DIGEST_LEN);
	if (!live) {
		err = -ENOMEM;
		goto out;
	}
	size_t w = 0;
	for (size_t i = 0; i < n; i++)
		for (uint64_t c = 0; it[i].keep && c < it[i].m.nchunks; c++)
			if (!it[i].m.chunks[c].hole)
				memcpy(live[w++], it[i].m.chunks[c].digest, BK_DIGEST_LEN);
	qsort(live, w, BK_DIGEST_LEN, cmp_digest);
	err = sweep(r, (const uint8_t (*)[BK_DIGEST_LEN])live, w, dry_run, st);
	if (err)
		snprintf(msg, msglen, "cannot collect unreferenced chunks: %s", strerror(-err));
	free(live);
out:
	for (size_t i = 0; i < nread && i < n; i++)
		bk_manifest_free(&it[i].m);
	free(it);
	bk_manifest_list_free(ids, n);
	return err;
}
