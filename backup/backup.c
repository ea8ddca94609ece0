/*
 * backup: choosing full or incremental, reading, committing; and the
 * voltrack orchestration around it (see backup.h).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backup.h"
#include "chunk.h"
#include "ctlclient.h"

#define say(res, ...) snprintf((res)->msg, sizeof((res)->msg), __VA_ARGS__)

int bk_find_parent(struct bk_repo *r, const char *source, struct bk_manifest *m)
{
	char **ids, why[BK_FIELD_MAX];
	size_t n;
	int err = bk_manifest_list(r, &ids, &n);

	if (err)
		return err;
	err = -ENOENT;
	for (size_t i = n; i-- > 0;) {
		struct bk_manifest c;
		if (bk_manifest_read(r, ids[i], &c, why))
			continue; /* a damaged manifest is no parent; verify names it */
		if (!strcmp(c.source, source)) {
			*m = c;
			err = 0;
			break;
		}
		bk_manifest_free(&c);
	}
	bk_manifest_list_free(ids, n);
	return err;
}

static int open_repo(const struct bk_backup_opts *o, struct bk_backup_result *res,
		     struct bk_repo **r)
{
	int err = bk_repo_create(o->repo, &o->params, r, &res->created_repo);

	if (err) {
		say(res, "cannot open repository %s: %s", o->repo,
		    err == -EKEYREJECTED ? "the key does not match it" :
		    err == -ENOKEY ? "it is encrypted: --key FILE is needed" :
		    err == -EBADMSG ? "its config is damaged" : strerror(-err));
		return err;
	}
	if (o->compress_level)
		(*r)->zstd_level = o->compress_level;
	err = bk_repo_lock(*r, true);
	if (err) {
		say(res, "cannot lock repository %s: %s", o->repo, strerror(-err));
		bk_repo_close(*r);
		return err;
	}
	if ((*r)->suspect) {
		uint64_t removed;
		fprintf(stderr, "voltrack: a backup into %s was cut short by a crash of the "
				"machine; checking the chunks it wrote\n", o->repo);
		err = bk_chunk_recheck(*r, &removed);
		if (err) {
			say(res, "cannot check the chunks of %s: %s", o->repo, strerror(-err));
			bk_repo_close(*r);
			return err;
		}
		if (removed)
			fprintf(stderr, "voltrack: %llu torn chunk(s) removed\n",
				(unsigned long long)removed);
	}
	/* Before the first chunk: a crash of the machine from here on
	 * leaves the mark (repo.h). */
	err = bk_repo_mark_pending(*r);
	if (err) {
		say(res, "cannot write to repository %s: %s", o->repo, strerror(-err));
		bk_repo_close(*r);
	}
	return err;
}

/* Read uri into res->m (geometry from size) and commit it. */
static int read_and_commit(struct bk_repo *r, const struct bk_backup_opts *o, const char *uri,
			   const char *bitmap, const struct bk_manifest *parent, uint64_t size,
			   struct bk_backup_result *res)
{
	struct bk_progress prog;
	uint64_t t0 = bk_now_ns();
	char msg[512];
	int err;

	err = bk_manifest_alloc(&res->m, size, r->chunk_size);
	if (err)
		return err;
	bk_progress_start(&prog, o->progress, "backup", size);
	err = bk_copy(r, uri, parent ? bitmap : NULL, parent, &res->m,
		      o->jobs ? o->jobs : bk_default_jobs(), &prog, &res->st, msg, sizeof(msg));
	if (err) {
		say(res, "backup failed, nothing committed: %s", msg);
		/* What it stored stays for the next run to reuse, durably. */
		bk_repo_sync(r);
		return err;
	}
	res->m.bytes_read = res->st.bytes_read;
	res->m.full = !parent;
	snprintf(res->m.parent, sizeof(res->m.parent), "%s", parent ? parent->id : "");
	/* Chunks durable first, then the manifest that names them. */
	err = bk_repo_sync(r);
	if (!err)
		err = bk_manifest_new_id(r, res->m.created, &res->m);
	if (!err)
		err = bk_manifest_write(r, &res->m);
	if (err)
		say(res, "cannot commit the backup to %s: %s", o->repo, strerror(-err));
	res->seconds = (double)(bk_now_ns() - t0) / 1e9;
	return err;
}

int bk_backup_from(const struct bk_backup_opts *o, struct bk_backup_result *res)
{
	struct bk_repo *r;
	struct bk_manifest parent = { 0 };
	bool has_parent = false, has_bitmap = false;
	uint64_t size;
	char msg[512];
	int err;

	memset(res, 0, sizeof(*res));
	err = open_repo(o, res, &r);
	if (err)
		return err;
	err = bk_source_probe(o->uri, o->bitmap, &size, &has_bitmap, msg, sizeof(msg));
	if (err) {
		say(res, "%s", msg);
		goto out;
	}
	snprintf(res->m.source, sizeof(res->m.source), "%s", o->uri);
	snprintf(res->m.checkpoint, sizeof(res->m.checkpoint), "%s", o->bitmap ? o->bitmap : "");
	res->m.created = (uint64_t)time(NULL);
	if (!bk_find_parent(r, o->uri, &parent))
		has_parent = true;
	const char *why = NULL;
	if (o->full)
		why = "--full was given";
	else if (!has_parent)
		why = "no earlier backup of this source in the repository";
	else if (!o->bitmap)
		why = "no --bitmap was given";
	else if (!has_bitmap)
		why = "the server does not offer the dirty bitmap";
	else if (parent.size != size)
		why = "the export changed size since the last backup";
	else if (parent.chunk_size != r->chunk_size)
		why = "the last backup has another chunk size";
	if (why)
		snprintf(res->m.reason, sizeof(res->m.reason), "%s", why);
	err = read_and_commit(r, o, o->uri, o->bitmap, why ? NULL : &parent, size, res);
out:
	bk_manifest_free(&parent);
	bk_repo_close(r);
	return err;
}

/* --- voltrack orchestration -------------------------------------------- */

struct vol {
	const struct bk_backup_opts *o;
	char ctl[4200], nbd[4200];
	struct bk_backup_result *res;
};

/* One control-socket command; its output into *out when wanted. */
static int ctl(struct vol *v, char **out, const char *a0, const char *a1, const char *a2,
	       const char *a3)
{
	const char *argv[] = { a0, a1, a2, a3 };
	int argc = a1 ? (a2 ? (a3 ? 4 : 3) : 2) : 1, status;
	char *text = NULL;
	int err = bk_ctl_call(v->ctl, argc, argv, &status, &text);

	if (err) {
		say(v->res, "no voltrack server answers on %.300s (%s); backup needs 'voltrack serve' "
			    "running on the volume", v->ctl, strerror(-err));
		return err;
	}
	if (status) {
		char *nl = strchr(text, '\n');
		if (nl)
			*nl = 0;
		say(v->res, "'%s%s%s' failed: %s", a0, a1 ? " " : "", a1 ? a1 : "",
		    strncmp(text, "voltrack: ", 10) ? text : text + 10);
		free(text);
		return -EIO;
	}
	if (out)
		*out = text;
	else
		free(text);
	return 0;
}

struct ckpt_scan {
	struct vol *v;
	const char *prefix;
	const char *keep;	/* the parent's checkpoint */
	bool keep_found;
	char *todo[256];	/* names to forget */
	size_t n;
	char *snaps[256];	/* the kept one's snapshot data to drop */
	size_t nsnaps;
};

static int scan_ckpt(void *arg, const char *obj)
{
	struct ckpt_scan *s = arg;
	char name[256];

	if (bk_json_string(obj, "name", name, sizeof(name)))
		return 0;
	if (s->keep && !strcmp(name, s->keep)) {
		s->keep_found = true;
		if (strstr(obj, "\"snapshot\":") && s->nsnaps < 256)
			s->snaps[s->nsnaps++] = strdup(name);
		return 0;
	}
	if (!strncmp(name, s->prefix, strlen(s->prefix)) && s->n < 256)
		s->todo[s->n++] = strdup(name);
	return 0;
}

static int status_field(struct vol *v, const char *status, const char *key, char *out,
			size_t cap)
{
	if (bk_json_string(status, key, out, cap)) {
		say(v->res, "voltrack's status has no '%s'", key);
		return -EPROTO;
	}
	return 0;
}

int bk_backup_volume(const struct bk_backup_opts *o, struct bk_backup_result *res)
{
	struct vol v = { .o = o, .res = res };
	struct bk_repo *r;
	struct bk_manifest parent = { 0 };
	struct ckpt_scan scan = { 0 };
	bool has_parent = false, snap_taken = false;
	char *status = NULL, *list = NULL, prefix[32], name[64], uuid[64], gen[64], state[64];
	char detail[256] = "";
	unsigned long long size = 0, gran = 0;
	int err;

	memset(res, 0, sizeof(*res));
	snprintf(v.ctl, sizeof(v.ctl), "%s%s/control.sock", o->meta ? o->meta : o->volume,
		 o->meta ? "" : ".voltrack");
	if (o->nbd_socket)
		snprintf(v.nbd, sizeof(v.nbd), "%s", o->nbd_socket);
	else
		snprintf(v.nbd, sizeof(v.nbd), "%s%s/nbd.sock", o->meta ? o->meta : o->volume,
			 o->meta ? "" : ".voltrack");
	err = open_repo(o, res, &r);
	if (err)
		return err;
	snprintf(prefix, sizeof(prefix), BK_CKPT_PREFIX "%.8s-", r->id);

	/* Who the volume is, before anything changes. */
	err = ctl(&v, &status, "status", "--json", NULL, NULL);
	if (!err)
		err = status_field(&v, status, "volume-uuid", uuid, sizeof(uuid));
	if (err)
		goto out;
	snprintf(res->m.source, sizeof(res->m.source), "voltrack:%s", uuid);
	if (!bk_find_parent(r, res->m.source, &parent))
		has_parent = true;

	/* Leftovers of runs that did not finish: their checkpoints go
	 * (they were never committed), the parent's stays. */
	err = ctl(&v, &list, "list", "--json", NULL, NULL);
	if (err)
		goto out;
	scan.v = &v;
	scan.prefix = prefix;
	scan.keep = has_parent && parent.checkpoint[0] ? parent.checkpoint : NULL;
	bk_json_each(list, scan_ckpt, &scan);
	for (size_t i = 0; i < scan.nsnaps && !err; i++)
		err = ctl(&v, NULL, "delete", scan.snaps[i], NULL, NULL);
	for (size_t i = 0; i < scan.n && !err; i++)
		err = ctl(&v, NULL, "delete", scan.todo[i], "--forget", NULL);
	if (err)
		goto out;

	/* The snapshot, then the volume's state as of it. */
	res->m.created = (uint64_t)time(NULL);
	{
		time_t t = (time_t)res->m.created;
		struct tm tm;
		char stamp[20];
		gmtime_r(&t, &tm);
		strftime(stamp, sizeof(stamp), "%Y%m%dT%H%M%SZ", &tm);
		snprintf(name, sizeof(name), "%s%s", prefix, stamp);
		if (scan.keep && !strcmp(scan.keep, name)) /* same second as the parent */
			snprintf(name, sizeof(name), "%s%s-2", prefix, stamp);
	}
	err = ctl(&v, NULL, "snapshot", name, "--json", NULL);
	if (err)
		goto out;
	snap_taken = true;
	free(status);
	status = NULL;
	err = ctl(&v, &status, "status", "--json", NULL, NULL);
	if (!err)
		err = status_field(&v, status, "generation", gen, sizeof(gen));
	if (!err)
		err = status_field(&v, status, "volume-uuid", uuid, sizeof(uuid));
	if (!err)
		err = status_field(&v, status, "state", state, sizeof(state));
	if (!err && (bk_json_u64(status, "size", &size) || bk_json_u64(status, "granularity", &gran)))
		err = -EPROTO, say(res, "voltrack's status lacks size or granularity");
	if (err)
		goto out;
	bk_json_string(status, "state-detail", detail, sizeof(detail));
	if (gran && r->chunk_size % gran) {
		err = -EINVAL;
		say(res, "the repository's chunk size (%u) is not a multiple of the volume's "
			 "tracking granularity (%llu)", r->chunk_size, gran);
		goto out;
	}
	snprintf(res->m.volume_uuid, sizeof(res->m.volume_uuid), "%s", uuid);
	snprintf(res->m.generation, sizeof(res->m.generation), "%s", gen);
	snprintf(res->m.checkpoint, sizeof(res->m.checkpoint), "%s", name);

	char why[BK_FIELD_MAX] = "";
	if (o->full)
		snprintf(why, sizeof(why), "--full was given");
	else if (!has_parent)
		snprintf(why, sizeof(why), "first backup of this volume in the repository");
	else if (strcmp(parent.generation, gen))
		snprintf(why, sizeof(why), "voltrack lost the volume's change history since "
			 "backup %s (new generation; state %.20s%s%.60s)", parent.id, state,
			 detail[0] ? ": " : "", detail);
	else if (!scan.keep_found)
		snprintf(why, sizeof(why), "checkpoint %.80s of backup %s no longer exists",
			 parent.checkpoint, parent.id);
	else if (parent.size != size)
		snprintf(why, sizeof(why), "the volume changed size since backup %s", parent.id);
	else if (parent.chunk_size != r->chunk_size)
		snprintf(why, sizeof(why), "backup %s has another chunk size", parent.id);
	snprintf(res->m.reason, sizeof(res->m.reason), "%s", why);

	char uri[4400];
	snprintf(uri, sizeof(uri), "nbd+unix:///snapshot/%s?socket=%s", name, v.nbd);
	err = read_and_commit(r, o, uri, why[0] ? NULL : parent.checkpoint,
			      why[0] ? NULL : &parent, size, res);
	if (err)
		goto out;
	snap_taken = false;

	/* Committed: the snapshot's data is no longer needed, nor the
	 * parent's checkpoint (only ever one of ours). */
	char saved[sizeof(res->msg)];
	snprintf(saved, sizeof(saved), "%s", res->msg);
	if (ctl(&v, NULL, "delete", name, NULL, NULL) ||
	    (scan.keep_found && ctl(&v, NULL, "delete", scan.keep, "--forget", NULL)))
		/* Committed all the same; the next run tidies up. */
		fprintf(stderr, "voltrack: warning: backup %s committed, but %s\n", res->m.id,
			res->msg);
	snprintf(res->msg, sizeof(res->msg), "%s", saved);
out:
	if (err && snap_taken) {
		/* Nothing was committed: this run's checkpoint must not
		 * stand in for the parent's.  Best effort; the next run
		 * forgets it anyway. */
		char keep[sizeof(res->msg)];
		snprintf(keep, sizeof(keep), "%s", res->msg);
		ctl(&v, NULL, "delete", name, "--forget", NULL);
		snprintf(res->msg, sizeof(res->msg), "%s", keep);
	}
	for (size_t i = 0; i < scan.n; i++)
		free(scan.todo[i]);
	for (size_t i = 0; i < scan.nsnaps; i++)
		free(scan.snaps[i]);
	free(status);
	free(list);
	bk_manifest_free(&parent);
	bk_repo_close(r);
	return err;
}
