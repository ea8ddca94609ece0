#include "commands.h"

#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "checkpoints.h"
#include "intent.h"
#include "mapfile.h"
#include "metablock.h"
#include "size.h"
#include "cmd_snapshot.h"
#include "snapshots.h"

static int fail(FILE *out, int status, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int fail(FILE *out, int status, const char *fmt, ...)
{
	va_list ap;

	fputs("voltrack: ", out);
	va_start(ap, fmt);
	vfprintf(out, fmt, ap);
	va_end(ap);
	fputc('\n', out);
	return status;
}

static void json_string(FILE *out, const char *s)
{
	/* Checkpoint names are restricted to safe characters; paths and
	 * messages may not be. */
	fputc('"', out);
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			fprintf(out, "\\%c", *s);
		else if ((unsigned char)*s < 0x20)
			fprintf(out, "\\u%04x", *s);
		else
			fputc(*s, out);
	}
	fputc('"', out);
}

static void iso_time(uint64_t t, char *buf, size_t len)
{
	time_t tt = (time_t)t;
	struct tm tm;

	gmtime_r(&tt, &tm);
	strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/*
 * [--json] and the options a command allows (OPT_*), and positional
 * arguments, in any order.  Hand-parsed: getopt keeps its state in
 * globals, and commands run on the control thread while other code may
 * use getopt.
 */
#define MAX_ARGS 4
#define OPT_RANGE 1u	/* --since NAME, --until NAME */
#define OPT_FORGET 2u	/* --forget */
struct opts {
	bool json, forget;
	const char *since, *until;
	const char *args[MAX_ARGS];
	int nargs;
};

static int parse_opts(int argc, char **argv, struct opts *o, unsigned allow, FILE *out)
{
	memset(o, 0, sizeof(*o));
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *val = NULL;
		const char **slot = NULL;

		if (!strcmp(a, "--json")) {
			o->json = true;
			continue;
		}
		if (!strcmp(a, "--forget") && (allow & OPT_FORGET)) {
			o->forget = true;
			continue;
		}
		if (!strncmp(a, "--since", 7) && (a[7] == 0 || a[7] == '='))
			slot = &o->since;
		else if (!strncmp(a, "--until", 7) && (a[7] == 0 || a[7] == '='))
			slot = &o->until;
		if (slot) {
			if (!(allow & OPT_RANGE))
				return fail(out, 2, "%s: unexpected option '%s'", argv[0], a);
			val = a[7] == '=' ? a + 8 : (i + 1 < argc ? argv[++i] : NULL);
			if (!val)
				return fail(out, 2, "%s: %.7s needs a checkpoint NAME", argv[0], a);
			*slot = val;
			continue;
		}
		if (a[0] == '-' && a[1])
			return fail(out, 2, "%s: unexpected option '%s'", argv[0], a);
		if (o->nargs == MAX_ARGS)
			return fail(out, 2, "%s: too many arguments", argv[0]);
		o->args[o->nargs++] = a;
	}
	return 0;
}

static int bad_name(FILE *out, const char *name)
{
	return fail(out, 2, "'%s' is not a valid checkpoint name "
		    "(1-%d characters from A-Z a-z 0-9 . _ + @ : -)", name, CKPT_NAME_MAX);
}

static int cmd_checkpoint(struct tracker *t, int argc, char **argv, FILE *out)
{
	struct opts o;
	struct checkpoint c;

	if (parse_opts(argc, argv, &o, 0, out))
		return 2;
	if (o.nargs != 1)
		return fail(out, 2, "checkpoint takes one NAME");
	const char *name = o.args[0];
	int err = tracker_checkpoint(t, name, &c);
	if (err == -EINVAL)
		return bad_name(out, name);
	if (err == -EEXIST)
		return fail(out, 1, "checkpoint '%s' already exists", name);
	if (err == -ENOSPC)
		return fail(out, 1, "no room for another checkpoint: at most %d at once "
			    "('delete --forget' old ones)", CKPT_MAX);
	if (err)
		return fail(out, 1, "cannot create checkpoint '%s': %s", name, strerror(-err));
	if (o.json)
		fprintf(out, "{\"name\":\"%s\",\"epoch\":%u,\"created\":%llu}\n", c.name, c.epoch,
			(unsigned long long)c.created);
	else
		fprintf(out, "checkpoint %s created (epoch %u)\n", c.name, c.epoch);
	return 0;
}

static void print_extent(FILE *out, bool json, bool *first, uint64_t start, uint64_t len)
{
	if (json)
		fprintf(out, "%s{\"offset\":%llu,\"length\":%llu}", *first ? "" : ",",
			(unsigned long long)start, (unsigned long long)len);
	else
		fprintf(out, "%llu %llu\n", (unsigned long long)start, (unsigned long long)len);
	*first = false;
}

/* The merged extents changed since epoch `since`, as lines or JSON objects. */
/* Changed since `since`; with set, up to snapshot seq instead of now:
 * exact, from the epochs kept beside its copies (snapset.h). */
static void print_changes(const struct changemap *cm, uint8_t since, struct vt_snapset *set,
			  uint32_t seq, bool json, FILE *out)
{
	bool first = true;
	uint64_t off = 0, start = 0, len = 0;

	while (off < cm->volume_size) {
		bool changed;
		uint64_t run;
		if (set) {
			uint64_t b = off >> cm->gran_shift;
			uint64_t n = vt_snapset_changed_run(set, seq, since, b, cm->nblocks - b,
							    &changed);
			uint64_t next = (b + n) << cm->gran_shift;
			run = (next < cm->volume_size ? next : cm->volume_size) - off;
		} else {
			run = changemap_run(cm, off, cm->volume_size - off, since, &changed);
		}
		if (changed && len && start + len == off) {
			len += run;
		} else if (changed) {
			if (len)
				print_extent(out, json, &first, start, len);
			start = off;
			len = run;
		}
		off += run;
	}
	if (len)
		print_extent(out, json, &first, start, len);
}

static int cmd_changes(const struct ctl_env *env, int argc, char **argv, FILE *out)
{
	struct tracker *t = env->tracker;
	struct opts o;
	struct checkpoint since, until;
	char *text = NULL;
	size_t text_len = 0;
	uint64_t ticket;

	if (parse_opts(argc, argv, &o, OPT_RANGE, out))
		return 2;
	if (!o.since || o.nargs)
		return fail(out, 2, "changes needs --since NAME and nothing else");
	const struct changemap *cm = tracker_map(t);
	/* Epochs and map from one numbering: a renumbering in between
	 * (a checkpoint forgotten) means starting over. */
	do {
		free(text);
		text = NULL;
		ticket = tracker_read_begin(t);
		if (tracker_checkpoint_find(t, o.since, &since))
			return fail(out, 1, "no checkpoint named '%s'", o.since);
		/*
		 * Only the latest write per block is kept, so a block written
		 * after a plain checkpoint UNTIL may also have changed before
		 * it: such blocks are reported, which keeps the answer a
		 * superset.  A snapshot UNTIL kept each block's epoch at its
		 * instant beside the copy: that answer is exact.
		 */
		if (o.until && tracker_checkpoint_find(t, o.until, &until))
			return fail(out, 1, "no checkpoint named '%s'", o.until);
		if (o.until && until.epoch < since.epoch)
			return fail(out, 1, "checkpoint '%s' is older than '%s'", o.until, o.since);
		struct vt_snap sn;
		bool exact = o.until && (until.flags & CKPT_F_SNAPSHOT) && env->snaps &&
			     vt_snapset_get(env->snaps->set, o.until, &sn) == 0 && sn.valid;
		FILE *mem = open_memstream(&text, &text_len);
		if (!mem)
			return fail(out, 1, "out of memory");
		print_changes(cm, since.epoch, exact ? env->snaps->set : NULL, exact ? sn.seq : 0,
			      o.json, mem);
		if (fclose(mem)) {
			free(text);
			return fail(out, 1, "out of memory");
		}
	} while (tracker_read_retry(t, ticket));
	if (o.json)
		fprintf(out, "{\"granularity\":%u,\"extents\":[%s]}\n",
			1u << cm->gran_shift, text);
	else
		fputs(text, out);
	free(text);
	return 0;
}

/* A checkpoint's snapshot, in words for list: "", "valid" or "invalid". */
static const char *snap_state(const struct ctl_env *env, const struct checkpoint *c,
			      uint64_t *bytes, const char **why)
{
	struct vt_snap sn;

	*bytes = 0;
	*why = "";
	if (!(c->flags & CKPT_F_SNAPSHOT))
		return "";
	if (!env->snaps || vt_snapset_get(env->snaps->set, c->name, &sn))
		return c->flags & CKPT_F_INVALID ? "invalid" : "valid";
	*bytes = vt_snapset_bytes(env->snaps->set, sn.seq);
	if (!sn.valid) {
		static const char lost[] = "it lost a copy of a chunk";
		*why = sn.why[0] ? "" : lost;
		return "invalid";
	}
	return "valid";
}

static int cmd_list(const struct ctl_env *env, int argc, char **argv, FILE *out)
{
	struct tracker *t = env->tracker;
	struct opts o;
	struct checkpoint_list l;
	uint64_t since[256];

	if (parse_opts(argc, argv, &o, 0, out))
		return 2;
	if (o.nargs)
		return fail(out, 2, "list takes no arguments");
	uint64_t ticket;
	do {
		ticket = tracker_read_begin(t);
		tracker_checkpoints(t, &l);
		changemap_changed_since(tracker_map(t), since);
	} while (tracker_read_retry(t, ticket));
	if (o.json)
		fputs("[", out);
	else if (l.n)
		fprintf(out, "%-24s %5s  %-20s  %-22s  %s\n", "NAME", "EPOCH", "CREATED",
			"CHANGED SINCE", "SNAPSHOT");
	for (uint32_t i = 0; i < l.n; i++) {
		const struct checkpoint *c = &l.items[i];
		char when[32], sz[32], ch[64];
		uint64_t bytes;
		const char *why;
		const char *st = snap_state(env, c, &bytes, &why);
		struct vt_snap sn = { 0 };
		if (env->snaps)
			vt_snapset_get(env->snaps->set, c->name, &sn);
		if (!why[0])
			why = sn.why;
		iso_time(c->created, when, sizeof(when));
		if (o.json) {
			fprintf(out, "%s{\"name\":", i ? "," : "");
			json_string(out, c->name);
			fprintf(out, ",\"epoch\":%u,\"created\":\"%s\",\"changed-bytes\":%llu",
				c->epoch, when, (unsigned long long)since[c->epoch]);
			if (st[0]) {
				fprintf(out, ",\"snapshot\":{\"state\":\"%s\",\"export\":\""
					VT_SNAPSHOT_PREFIX "%s\",\"diff-bytes\":%llu,\"why\":",
					st, c->name, (unsigned long long)bytes);
				json_string(out, st[0] == 'i' ? why : "");
				fputc('}', out);
			}
			fputc('}', out);
		} else {
			size_format(since[c->epoch], sz, sizeof(sz));
			snprintf(ch, sizeof(ch), "%llu (%s)", (unsigned long long)since[c->epoch], sz);
			fprintf(out, "%-24s %5u  %-20s  %-22s  ", c->name, c->epoch, when, ch);
			if (!st[0]) {
				fputs("-\n", out);
			} else {
				size_format(bytes, sz, sizeof(sz));
				fprintf(out, "%s, %s in the diff store%s%s\n", st, sz,
					st[0] == 'i' ? ": " : "", st[0] == 'i' ? why : "");
			}
		}
	}
	if (o.json)
		fputs("]\n", out);
	else if (!l.n)
		fputs("no checkpoints\n", out);
	return 0;
}

static uint64_t dir_bytes(struct metadir *md)
{
	DIR *d = fdopendir(dup(metadir_fd(md)));
	struct dirent *e;
	uint64_t total = 0;

	if (!d)
		return 0;
	rewinddir(d);
	while ((e = readdir(d))) {
		struct stat st;
		if (fstatat(dirfd(d), e->d_name, &st, 0) == 0 && S_ISREG(st.st_mode))
			total += (uint64_t)st.st_blocks * 512;
	}
	closedir(d);
	return total;
}

static int cmd_status(struct tracker *t, struct metadir *md, int argc, char **argv, FILE *out)
{
	struct opts o;
	struct tracker_info i;
	char gen[VT_UUID_STRLEN], vol[VT_UUID_STRLEN], sz[32], gr[32], rs[32];

	if (parse_opts(argc, argv, &o, 0, out))
		return 2;
	if (o.nargs)
		return fail(out, 2, "status takes no arguments");
	tracker_info(t, &i);
	vt_uuid_format(&i.generation, gen);
	vt_uuid_format(&i.volume_uuid, vol);
	size_format(i.volume_size, sz, sizeof(sz));
	size_format(i.granularity, gr, sizeof(gr));
	size_format(i.region_size, rs, sizeof(rs));
	uint64_t meta = dir_bytes(md);
	if (o.json) {
		fprintf(out, "{\"volume-uuid\":\"%s\",\"generation\":\"%s\",\"size\":%llu,"
			"\"granularity\":%u,\"state\":\"%s\",\"state-detail\":",
			vol, gen, (unsigned long long)i.volume_size, i.granularity,
			tracker_start_name(i.start));
		json_string(out, i.start_detail);
		fprintf(out, ",\"checkpoints\":%u,\"open-epoch\":%u,\"intent-regions-set\":%u,"
			"\"intent-region-size\":%llu,\"regions-recovered\":%u,"
			"\"unreadable-map-pages\":%u,\"metadata-bytes\":%llu,"
			"\"last-persist-error\":",
			i.checkpoints, i.open_epoch, i.regions_set,
			(unsigned long long)i.region_size, i.regions_recovered, i.bad_pages,
			(unsigned long long)meta);
		json_string(out, i.last_persist_error ? strerror(-i.last_persist_error) : "");
		fputs(",\"volume-sync-error\":", out);
		json_string(out, i.volume_sync_error ? strerror(-i.volume_sync_error) : "");
		fputs("}\n", out);
		return 0;
	}
	fprintf(out, "volume uuid:        %s\n", vol);
	fprintf(out, "generation:         %s\n", gen);
	fprintf(out, "size:               %s (%llu bytes)\n", sz, (unsigned long long)i.volume_size);
	fprintf(out, "granularity:        %s\n", gr);
	fprintf(out, "state:              %s%s%s\n", tracker_start_name(i.start),
		i.start_detail[0] ? ": " : "", i.start_detail);
	fprintf(out, "checkpoints:        %u (open epoch %u)\n", i.checkpoints, i.open_epoch);
	fprintf(out, "intent regions set: %u of %llu (%s each)\n", i.regions_set,
		(unsigned long long)((i.volume_size + i.region_size - 1) / i.region_size), rs);
	if (i.bad_pages)
		fprintf(out, "unreadable pages:   %u (their ranges are reported changed)\n",
			i.bad_pages);
	fprintf(out, "metadata size:      %llu bytes\n", (unsigned long long)meta);
	if (i.last_persist_error)
		fprintf(out, "last persist error: %s\n", strerror(-i.last_persist_error));
	if (i.volume_sync_error)
		fprintf(out, "volume sync error:  %s (latched: FLUSH fails, intents stay set, "
			"the stop will not be clean)\n", strerror(-i.volume_sync_error));
	return 0;
}

/*
 * delete NAME [--forget] [--json]: a name can stand for snapshot data and
 * for a checkpoint.  delete drops the snapshot data; --forget also the
 * checkpoint.  The data goes first: a checkpoint list that no longer
 * names the snapshot must never leave copies that nothing frees.
 */
static int cmd_delete(const struct ctl_env *env, int argc, char **argv, FILE *out)
{
	struct opts o;
	struct checkpoint c;

	if (parse_opts(argc, argv, &o, OPT_FORGET, out))
		return 2;
	if (o.nargs != 1)
		return fail(out, 2, "delete takes one NAME, and --forget to delete its checkpoint");
	const char *name = o.args[0];
	if (!checkpoint_name_valid(name))
		return bad_name(out, name);
	bool checkpoint = tracker_checkpoint_find(env->tracker, name, &c) == 0;
	bool snapshot = checkpoint && (c.flags & CKPT_F_SNAPSHOT);
	if (!snapshot && !o.forget)
		return checkpoint ? fail(out, 1, "no snapshot named '%s'; 'delete --forget' deletes "
					 "the checkpoint '%s'", name, name)
				  : fail(out, 1, "no snapshot or checkpoint named '%s'", name);
	uint64_t freed = 0;
	if (snapshot) {
		int err = ctl_delete_snapshot(env, name, &freed, out);
		if (err)
			return err;
		if (!o.forget) {
			if (o.json)
				fprintf(out, "{\"name\":\"%s\",\"snapshot-deleted\":true,"
					"\"checkpoint-deleted\":false,\"freed-bytes\":%llu}\n", name,
					(unsigned long long)freed);
			else
				fprintf(out, "snapshot %s deleted, %llu bytes of the diff store freed; "
					"checkpoint %s kept\n", name, (unsigned long long)freed, name);
			return 0;
		}
	}
	int err = checkpoint ? tracker_forget(env->tracker, name) : -ENOENT;
	if (err == -ENOENT)
		return fail(out, 1, "no checkpoint named '%s'", name);
	if (err)
		return fail(out, 1, "cannot delete checkpoint '%s': %s (it may still be there after "
			    "a restart)", name, strerror(-err));
	if (o.json)
		fprintf(out, "{\"name\":\"%s\",\"snapshot-deleted\":%s,\"checkpoint-deleted\":true,"
			"\"freed-bytes\":%llu}\n", name, snapshot ? "true" : "false",
			(unsigned long long)freed);
	else if (snapshot)
		fprintf(out, "snapshot %s and its checkpoint deleted, %llu bytes of the diff store "
			"freed\n", name, (unsigned long long)freed);
	else
		fprintf(out, "checkpoint %s deleted\n", name);
	return 0;
}

int ctl_run(const struct ctl_env *env, int argc, char **argv, FILE *out)
{
	struct tracker *t = env->tracker;

	if (argc < 1)
		return fail(out, 2, "no command");
	if (!strcmp(argv[0], "checkpoint"))
		return cmd_checkpoint(t, argc, argv, out);
	if (!strcmp(argv[0], "changes"))
		return cmd_changes(env, argc, argv, out);
	if (!strcmp(argv[0], "list"))
		return cmd_list(env, argc, argv, out);
	if (!strcmp(argv[0], "snapshot"))
		return ctl_snapshot(env, argc, argv, out);
	if (!strncmp(argv[0], "snapshot-", 9))
		return ctl_snapshot_step(env, argc, argv, out);
	if (!strcmp(argv[0], "status"))
		return cmd_status(t, env->md, argc, argv, out);
	if (!strcmp(argv[0], "delete"))
		return cmd_delete(env, argc, argv, out);
	return fail(out, 2, "unknown command '%s'", argv[0]);
}

/* ---- check ---- */

static int check_intent(int dirfd, const struct vt_fsops *ops, const struct superblock *sb,
			FILE *out)
{
	bool ok[2];
	int err = intent_verify(dirfd, ops, sb, ok);

	if (err) {
		fprintf(out, "intent: cannot read: %s\n", strerror(-err));
		return 1;
	}
	for (int s = 0; s < 2; s++)
		if (!ok[s])
			fprintf(out, "intent: copy %d is damaged\n", s);
	if (ok[0] && ok[1]) {
		fprintf(out, "intent: ok\n");
		return 0;
	}
	if (ok[0] || ok[1])
		fprintf(out, "intent: one copy left; %s\n", sb->state & SB_STATE_CLEAN ?
			"closed cleanly, so it is used and rewritten at the next start" :
			"after an unclean stop the whole volume will be reported changed");
	else
		fprintf(out, "intent: no valid copy: the whole volume will be reported changed\n");
	return 1;
}

int ctl_check(struct metadir *md, FILE *out)
{
	struct superblock sb;
	struct checkpoint_list *l = malloc(sizeof(*l));
	struct mapfile_report rep;
	const struct vt_fsops *ops = metadir_fsops(md);
	int dirfd = metadir_fd(md), problems = 0, err;

	err = metadir_read_superblock(md, &sb);
	if (err) {
		fprintf(out, "superblock: %s\n", err == -EBADMSG ? "corrupt (checksum or fields)" :
			err == -EINVAL ? "not a voltrack superblock" :
			err == -EPROTONOSUPPORT ? "written by a newer voltrack" : strerror(-err));
		fprintf(out, "1 problem found\n");
		free(l);
		return 1;
	}
	fprintf(out, "superblock: ok (sequence %llu, %s)\n", (unsigned long long)sb.sequence,
		sb.state & SB_STATE_CLEAN ? "closed cleanly" : "in use or not closed cleanly");

	bool damaged = false;
	if (!l)
		return 1;
	err = checkpoints_load(dirfd, ops, &sb, l, &damaged);
	if (err) {
		fprintf(out, "checkpoints: %s\n", err == -EBADMSG ? "no valid copy" : strerror(-err));
		problems++;
	} else if (damaged) {
		fprintf(out, "checkpoints: one copy damaged; the other holds %u checkpoint(s), "
			"open epoch %u\n", l->n, l->open_epoch);
		problems++;
	} else {
		fprintf(out, "checkpoints: ok (%u, open epoch %u", l->n, l->open_epoch);
		if (l->numbering.count)
			fprintf(out, ", epochs renumbered %u time(s)", l->numbering.count);
		fputs(")\n", out);
	}

	uint64_t nblocks = (sb.volume_size + sb.granularity - 1) / sb.granularity;
	err = mapfile_verify(dirfd, ops, &sb, nblocks, &rep);
	if (err) {
		fprintf(out, "changemap: %s\n", err == -EBADMSG ?
			"header does not match this volume or generation" : strerror(-err));
		problems++;
	} else if (rep.bad_pages) {
		uint64_t per = (uint64_t)CM_PAGE_ENTRIES * sb.granularity;
		fprintf(out, "changemap: %u page(s) with a damaged copy, first page %u "
			"(bytes %llu-%llu); those ranges are reported changed\n", rep.bad_pages,
			rep.first_bad, (unsigned long long)(rep.first_bad * per),
			(unsigned long long)((rep.first_bad + 1) * per - 1));
		problems++;
	} else {
		fprintf(out, "changemap: ok\n");
	}
	free(l);
	problems += check_intent(dirfd, ops, &sb, out);
	if (problems)
		fprintf(out, "%d problem(s) found\n", problems);
	else
		fprintf(out, "metadata is sound\n");
	return problems ? 1 : 0;
}
