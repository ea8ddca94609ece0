/*
 * voltrack backup | restore | backups | verify: the backup client's
 * commands (backup/).  Argument parsing and output only; the work is in
 * backup/.  Errors are one line on stderr; --json prints one JSON
 * value on stdout (and progress as JSON lines on stderr).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backup.h"
#include "chunk.h"
#include "cli.h"
#include "cmd_backup.h"
#include "restore.h"
#include "verify.h"

static void json_str(const char *s)
{
	putchar('"');
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			printf("\\%c", *s);
		else if ((unsigned char)*s < 0x20)
			printf("\\u%04x", *s);
		else
			putchar(*s);
	}
	putchar('"');
}

static void json_str_or_null(const char *s)
{
	if (s[0])
		json_str(s);
	else
		fputs("null", stdout);
}

static void iso(uint64_t t, char *out, size_t n)
{
	time_t tt = (time_t)t;
	struct tm tm;

	gmtime_r(&tt, &tm);
	strftime(out, n, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* Bytes for people: B, KiB, MiB or GiB. */
static void mib(uint64_t b, char *out, size_t n)
{
	static const char *const unit[] = { "B", "KiB", "MiB", "GiB", "TiB" };
	double v = (double)b;
	int u = 0;

	while (v >= 1024 && u < 4) {
		v /= 1024;
		u++;
	}
	snprintf(out, n, u ? "%.1f %s" : "%.0f %s", v, unit[u]);
}

int bk_cli_options(struct bk_cli *c, const char *cmd, int argc, char **argv, unsigned allow)
{
	memset(c, 0, sizeof(*c));
	c->progress = BK_PROGRESS_AUTO;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char **slot = !strcmp(a, "--key") && (allow & BK_OPT_KEY) ? &c->key :
				    !strcmp(a, "--meta") && (allow & BK_OPT_BACKUP) ? &c->meta :
				    !strcmp(a, "--socket") && (allow & BK_OPT_BACKUP) ? &c->socket :
				    !strcmp(a, "--from") && (allow & BK_OPT_BACKUP) ? &c->from :
				    !strcmp(a, "--bitmap") && (allow & BK_OPT_BACKUP) ? &c->bitmap :
				    !strcmp(a, "--against") && (allow & BK_OPT_AGAINST) ? &c->against :
				    NULL;
		if (slot) {
			if (++i == argc)
				return cli_usage(cmd, "%s needs a value", a);
			*slot = argv[i];
		} else if (!strcmp(a, "--jobs") && (allow & BK_OPT_JOBS)) {
			if (++i == argc || cli_parse_uint("--jobs", argv[i], 64, &c->jobs))
				return EXIT_USAGE;
			if (!c->jobs)
				return cli_usage(cmd, "--jobs is at least 1");
		} else if (!strcmp(a, "--chunk-size") && (allow & BK_OPT_BACKUP)) {
			uint64_t v;
			if (++i == argc || cli_parse_size("--chunk-size", argv[i], &v))
				return EXIT_USAGE;
			if (v < BK_MIN_CHUNK || v > BK_MAX_CHUNK || (v & (v - 1)))
				return cli_usage(cmd, "--chunk-size is a power of two from 64K to 64M");
			c->chunk_size = (uint32_t)v;
		} else if (allow & BK_OPT_PRUNE && !strncmp(a, "--keep-", 7)) {
			unsigned *v = !strcmp(a, "--keep-last") ? &c->keep_last :
				      !strcmp(a, "--keep-daily") ? &c->keep_daily :
				      !strcmp(a, "--keep-weekly") ? &c->keep_weekly :
				      !strcmp(a, "--keep-monthly") ? &c->keep_monthly : NULL;
			if (!v)
				return cli_usage(cmd, "unknown option '%s'", a);
			if (++i == argc || cli_parse_uint(a, argv[i], 1000000, v))
				return EXIT_USAGE;
		} else if (!strcmp(a, "--dry-run") && (allow & BK_OPT_PRUNE)) {
			c->dry_run = true;
		} else if (!strcmp(a, "--json")) {
			c->json = true;
			c->progress = BK_PROGRESS_JSON;
		} else if (!strcmp(a, "--quiet") || !strcmp(a, "-q")) {
			c->quiet = true;
		} else if (!strcmp(a, "--full") && (allow & BK_OPT_BACKUP)) {
			c->full = true;
		} else if (!strcmp(a, "--no-compress") && (allow & BK_OPT_BACKUP)) {
			c->no_compress = true;
		} else if (!strcmp(a, "--compress-level") && (allow & BK_OPT_BACKUP)) {
			if (++i == argc || cli_parse_int(a, argv[i], BK_ZSTD_LEVEL_MIN,
							 BK_ZSTD_LEVEL_MAX, &c->compress_level))
				return EXIT_USAGE;
			if (!c->compress_level)
				return cli_usage(cmd, "--compress-level 0: zstd's levels are %d to -1 "
						 "(fast) and 1 to %d", BK_ZSTD_LEVEL_MIN,
						 BK_ZSTD_LEVEL_MAX);
			c->compress_level_set = true;
		} else if (!strcmp(a, "--verify") && (allow & BK_OPT_VERIFY)) {
			c->verify = true;
		} else if (a[0] == '-' && a[1]) {
			return cli_usage(cmd, "unknown option '%s'", a);
		} else if (c->nargs == 4) {
			return cli_usage(cmd, "unexpected '%s'", a);
		} else {
			c->args[c->nargs++] = a;
		}
	}
	if (c->quiet)
		c->progress = BK_PROGRESS_OFF;
	return 0;
}

int bk_cli_open_repo(const struct bk_cli *c, const char *path, struct bk_repo **r)
{
	int err = bk_repo_open(path, c->key, r);

	if (err == -ENOENT)
		return cli_fail("%s is not a backup repository", path);
	if (err == -ENOKEY)
		return cli_fail("repository %s is encrypted: --key FILE is needed", path);
	if (err == -EKEYREJECTED)
		return cli_fail("the key does not match repository %s", path);
	if (err == -EBADMSG)
		return cli_fail("repository %s: its config is damaged", path);
	if (err)
		return cli_fail("cannot open repository %s: %s", path, strerror(-err));
	return 0;
}

int cmd_backup(int argc, char **argv)
{
	struct bk_cli c;
	int status = bk_cli_options(&c, "backup", argc, argv,
				    BK_OPT_BACKUP | BK_OPT_KEY | BK_OPT_JOBS);

	if (status)
		return status;
	struct bk_backup_opts o = {
		.params = { .chunk_size = c.chunk_size, .no_compress = c.no_compress,
			    .key_file = c.key },
		.full = c.full, .jobs = c.jobs, .progress = c.progress,
		.compress_level = c.compress_level_set ? c.compress_level : BK_ZSTD_LEVEL_DEFAULT,
		.meta = c.meta, .nbd_socket = c.socket,
	};
	struct bk_backup_result res;
	int err;
	if (c.from) {
		if (c.nargs != 1)
			return cli_usage("backup", "backup --from URI [--bitmap NAME] takes one REPO");
		if (c.meta || c.socket)
			return cli_usage("backup", "--meta and --socket are for a voltrack VOLUME, "
					 "not --from");
		o.repo = c.args[0];
		o.uri = c.from;
		o.bitmap = c.bitmap;
		err = bk_backup_from(&o, &res);
	} else {
		if (c.nargs != 2)
			return cli_usage("backup", "backup takes VOLUME REPO, or --from URI "
					 "--bitmap NAME REPO");
		if (c.bitmap)
			return cli_usage("backup", "--bitmap goes with --from");
		o.volume = c.args[0];
		o.repo = c.args[1];
		err = bk_backup_volume(&o, &res);
	}
	if (err) {
		bk_manifest_free(&res.m);
		return cli_fail("%s", res.msg);
	}
	const struct bk_manifest *m = &res.m;
	if (c.json) {
		printf("{\"id\":");
		json_str(m->id);
		printf(",\"type\":\"%s\",\"parent\":", m->full ? "full" : "incremental");
		json_str_or_null(m->parent);
		printf(",\"reason\":");
		json_str_or_null(m->reason);
		printf(",\"checkpoint\":");
		json_str_or_null(m->checkpoint);
		printf(",\"size\":%llu,\"bytes_read\":%llu,\"chunks_read\":%llu,"
		       "\"chunks_new\":%llu,\"bytes_stored\":%llu,\"seconds\":%.3f}\n",
		       (unsigned long long)m->size, (unsigned long long)res.st.bytes_read,
		       (unsigned long long)res.st.chunks_read, (unsigned long long)res.st.chunks_new,
		       (unsigned long long)res.st.bytes_stored, res.seconds);
	} else {
		char rd[32], sd[32];
		mib(res.st.bytes_read, rd, sizeof(rd));
		mib(res.st.bytes_stored, sd, sizeof(sd));
		if (m->full && m->reason[0])
			printf("full backup: %s\n", m->reason);
		printf("backup %s committed (%s%s%s): %llu of %llu chunks read (%s), %llu new "
		       "(%s stored), %.2f s\n",
		       m->id, m->full ? "full" : "incremental from ", m->full ? "" : m->parent,
		       "", (unsigned long long)res.st.chunks_read, (unsigned long long)m->nchunks,
		       rd, (unsigned long long)res.st.chunks_new, sd, res.seconds);
	}
	bk_manifest_free(&res.m);
	return 0;
}

/* Read BACKUP (or latest) of r into m; prints the error itself. */
static int load(struct bk_repo *r, const char *repo, const char *name, struct bk_manifest *m)
{
	char id[BK_ID_MAX], why[BK_FIELD_MAX];
	int err = bk_manifest_resolve(r, name, id);

	if (err == -ENOENT)
		return !strcmp(name, "latest") ? cli_fail("repository %s holds no backup", repo) :
						 cli_fail("no backup '%s' in %s", name, repo);
	if (err)
		return cli_fail("cannot list the backups of %s: %s", repo, strerror(-err));
	err = bk_manifest_read(r, id, m, why);
	if (err == -EBADMSG)
		return cli_fail("backup %s is damaged: %s; refusing to use it", id, why);
	if (err)
		return cli_fail("cannot read backup %s: %s", id, strerror(-err));
	return 0;
}

int cmd_restore(int argc, char **argv)
{
	struct bk_cli c;
	struct bk_repo *r;
	struct bk_manifest m;
	int status = bk_cli_options(&c, "restore", argc, argv,
				    BK_OPT_KEY | BK_OPT_JOBS | BK_OPT_VERIFY);

	if (status)
		return status;
	if (c.nargs != 3)
		return cli_usage("restore", "restore takes REPO BACKUP|latest TARGET");
	if (bk_cli_open_repo(&c, c.args[0], &r))
		return 1;
	if (load(r, c.args[0], c.args[1], &m)) {
		bk_repo_close(r);
		return 1;
	}
	struct bk_progress prog;
	struct bk_restore_stats st;
	char msg[512];
	uint64_t t0 = bk_now_ns();
	bk_progress_start(&prog, c.progress, "restore", m.size);
	int err = bk_restore(r, &m, c.args[2], c.jobs ? c.jobs : bk_default_jobs(), c.verify,
			     &prog, &st, msg, sizeof(msg));
	double secs = (double)(bk_now_ns() - t0) / 1e9;
	if (err) {
		status = cli_fail("%s", msg);
	} else if (c.json) {
		printf("{\"id\":");
		json_str(m.id);
		printf(",\"target\":");
		json_str(c.args[2]);
		printf(",\"size\":%llu,\"bytes_written\":%llu,\"verified\":%s,\"seconds\":%.3f}\n",
		       (unsigned long long)m.size, (unsigned long long)st.bytes_written,
		       c.verify ? "true" : "false", secs);
	} else {
		char w[32];
		mib(st.bytes_written, w, sizeof(w));
		printf("backup %s restored to %s: %s written%s, %.2f s\n", m.id, c.args[2], w,
		       c.verify ? ", read back and verified" : "", secs);
	}
	bk_manifest_free(&m);
	bk_repo_close(r);
	return status;
}

int cmd_backups(int argc, char **argv)
{
	struct bk_cli c;
	struct bk_repo *r;
	char **ids;
	size_t n;
	int status = bk_cli_options(&c, "backups", argc, argv, BK_OPT_KEY);

	if (status)
		return status;
	if (c.nargs != 1)
		return cli_usage("backups", "backups takes REPO");
	if (bk_cli_open_repo(&c, c.args[0], &r))
		return 1;
	int err = bk_manifest_list(r, &ids, &n);
	if (err) {
		bk_repo_close(r);
		return cli_fail("cannot list the backups of %s: %s", c.args[0], strerror(-err));
	}
	if (c.json)
		putchar('[');
	else if (n)
		printf("%-20s %-11s %-20s %-20s %10s %10s %10s  %s\n", "ID", "TYPE", "PARENT",
		       "CREATED", "SIZE", "DATA", "READ", "CHECKPOINT");
	for (size_t i = 0; i < n; i++) {
		struct bk_manifest m;
		char why[BK_FIELD_MAX], when[32];
		err = bk_manifest_read(r, ids[i], &m, why);
		if (c.json && i)
			putchar(',');
		if (err) {
			if (c.json) {
				printf("{\"id\":");
				json_str(ids[i]);
				printf(",\"damaged\":");
				json_str(err == -EBADMSG ? why : strerror(-err));
				putchar('}');
			} else {
				printf("%-20s damaged: %s\n", ids[i],
				       err == -EBADMSG ? why : strerror(-err));
			}
			status = 1;
			continue;
		}
		iso(m.created, when, sizeof(when));
		if (c.json) {
			printf("{\"id\":");
			json_str(m.id);
			printf(",\"parent\":");
			json_str_or_null(m.parent);
			printf(",\"type\":\"%s\",\"checkpoint\":", m.full ? "full" : "incremental");
			json_str_or_null(m.checkpoint);
			printf(",\"created\":\"%s\",\"size\":%llu,\"bytes_read\":%llu,"
			       "\"data_bytes\":%llu,\"source\":",
			       when, (unsigned long long)m.size, (unsigned long long)m.bytes_read,
			       (unsigned long long)bk_manifest_data_bytes(&m));
			json_str(m.source);
			printf(",\"generation\":");
			json_str_or_null(m.generation);
			printf(",\"reason\":");
			json_str_or_null(m.reason);
			putchar('}');
		} else {
			char sz[32], data[32], rd[32];
			mib(m.size, sz, sizeof(sz));
			mib(bk_manifest_data_bytes(&m), data, sizeof(data));
			mib(m.bytes_read, rd, sizeof(rd));
			printf("%-20s %-11s %-20s %-20s %10s %10s %10s  %s\n", m.id,
			       m.full ? "full" : "incremental", m.parent[0] ? m.parent : "-", when, sz,
			       data, rd, m.checkpoint[0] ? m.checkpoint : "-");
		}
		bk_manifest_free(&m);
	}
	if (c.json)
		puts("]");
	else if (!n)
		printf("no backups in %s\n", c.args[0]);
	bk_manifest_list_free(ids, n);
	bk_repo_close(r);
	return status;
}

int cmd_verify(int argc, char **argv)
{
	struct bk_cli c;
	struct bk_repo *r;
	int status = bk_cli_options(&c, "verify", argc, argv,
				    BK_OPT_KEY | BK_OPT_JOBS | BK_OPT_AGAINST);

	if (status)
		return status;
	if (c.nargs != 1 && c.nargs != 2)
		return cli_usage("verify", "verify takes REPO [BACKUP]");
	if (bk_cli_open_repo(&c, c.args[0], &r))
		return 1;
	const char *name = c.nargs == 2 ? c.args[1] : NULL;
	char id[BK_ID_MAX];
	if (name && bk_manifest_resolve(r, name, id)) {
		bk_repo_close(r);
		return cli_fail("no backup '%s' in %s", name, c.args[0]);
	}
	if (c.against) {
		struct bk_manifest m;
		char msg[512];
		if (load(r, c.args[0], name ? id : "latest", &m)) {
			bk_repo_close(r);
			return 1;
		}
		long d = bk_verify_against(r, &m, c.against, stdout, msg, sizeof(msg));
		if (d < 0)
			status = cli_fail("%s", msg);
		else if (d)
			status = cli_fail("backup %s differs from %s in %ld chunk(s)", m.id,
					  c.against, d);
		else
			printf("backup %s matches %s\n", m.id, c.against);
		bk_manifest_free(&m);
		bk_repo_close(r);
		return status;
	}
	struct bk_progress prog;
	struct bk_verify_stats st;
	bk_progress_start(&prog, c.progress, "verify", 0);
	long p = bk_verify(r, name ? id : NULL, c.jobs ? c.jobs : bk_default_jobs(), &prog, stdout,
			   &st);
	if (p < 0)
		status = cli_fail("cannot verify %s: %s", c.args[0], strerror((int)-p));
	else if (p)
		status = cli_fail("%ld problem(s) found in %s", p, c.args[0]);
	else
		printf("%u backup(s), %llu chunk(s) (%.1f MiB) verified: sound\n", st.backups,
		       (unsigned long long)st.chunks, (double)st.bytes / (1 << 20));
	bk_repo_close(r);
	return status;
}
