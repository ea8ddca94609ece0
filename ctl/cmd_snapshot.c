/*
 * snapshot NAME [--hold-timeout MS] [--json]   and   delete NAME
 *
 * Run on the control thread of a live server (or on the metadata when
 * none runs, where the hold has nothing to drain).  The freeze and thaw
 * hooks are the CLI's; this is the part between them.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd_snapshot.h"
#include "snapshots.h"

static int fail(FILE *out, int status, const char *msg, const char *name, int err)
{
	fprintf(out, "voltrack: %s '%s'%s%s\n", msg, name, err ? ": " : "",
		err ? strerror(-err) : "");
	return status;
}

static void report(FILE *out, const char *name, const struct vt_snap_phases *ph, bool json)
{
	if (json)
		fprintf(out, "{\"name\":\"%s\",\"export\":\"" VT_SNAPSHOT_PREFIX "%s\","
			"\"phases-us\":{\"prepare\":%llu,\"hold\":%llu,\"commit\":%llu,"
			"\"release\":%llu,\"sync\":%llu},\"held-us\":%llu,\"draining\":%ld,"
			"\"writes-held\":%u}\n",
			name, name, (unsigned long long)ph->prepare_us,
			(unsigned long long)ph->hold_us, (unsigned long long)ph->commit_us,
			(unsigned long long)ph->release_us, (unsigned long long)ph->sync_us,
			(unsigned long long)ph->held_us, ph->draining, ph->writes_held);
	else
		fprintf(out, "snapshot %s taken: writes held %.3f ms (drain %.3f, commit %.3f, "
			"release %.3f; %ld in flight, %u parked), prepare %.3f ms, sync %.3f ms\n",
			name, ph->held_us / 1e3, ph->hold_us / 1e3, ph->commit_us / 1e3,
			ph->release_us / 1e3, ph->draining, ph->writes_held, ph->prepare_us / 1e3,
			ph->sync_us / 1e3);
}

static void publish(const struct ctl_env *env, const char *name, FILE *out)
{
	struct vt_export *e;

	if (!env->exports)
		return;
	int err = vt_snapshots_export(env->snaps, name, &e);
	if (!err) {
		err = env->exports->add(env->exports->arg, e);
		vt_export_put(e);
	}
	if (err)
		fprintf(out, "voltrack: snapshot '%s' taken, but exporting it failed: %s\n",
			name, strerror(-err));
}

/* The steps of a snapshot of several volumes at one instant, which the
 * CLI drives on every volume's server in turn: snapshot-hold NAME MS,
 * snapshot-commit NAME, snapshot-release NAME [--json], snapshot-abort
 * NAME.  Answers are silent on success but for release's report. */
int ctl_snapshot_step(const struct ctl_env *env, int argc, char **argv, FILE *out)
{
	const char *step = argv[0] + strlen("snapshot-");
	bool json = argc > 2 && !strcmp(argv[argc - 1], "--json");
	struct vt_snap_phases ph = { 0 };
	int err;

	if (argc < 2 || (!strcmp(step, "hold") && argc < 3)) {
		fprintf(out, "voltrack: %s: missing arguments\n", argv[0]);
		return 2;
	}
	const char *name = argv[1];
	if (!env->snaps) {
		fprintf(out, "voltrack: snapshots cannot be taken here (the server is read-only "
			"or untracked)\n");
		return 1;
	}
	if (!strcmp(step, "hold")) {
		char *end;
		unsigned long ms = strtoul(argv[2], &end, 10);
		if (*end || ms == 0 || ms > 3600000) {
			fprintf(out, "voltrack: snapshot-hold: bad timeout '%s'\n", argv[2]);
			return 2;
		}
		err = vt_snapshots_hold(env->snaps, name, (unsigned)ms, &ph);
	} else if (!strcmp(step, "commit")) {
		err = vt_snapshots_commit(env->snaps, name, &ph);
	} else if (!strcmp(step, "release")) {
		err = vt_snapshots_release(env->snaps, name, &ph);
		if (!err) {
			publish(env, name, out);
			report(out, name, &ph, json);
		}
	} else if (!strcmp(step, "abort")) {
		err = vt_snapshots_abort(env->snaps, name);
	} else {
		fprintf(out, "voltrack: unknown command '%s'\n", argv[0]);
		return 2;
	}
	if (err == -ETIMEDOUT)
		return fail(out, 1, "hold timed out for snapshot", name, 0);
	if (err == -EEXIST)
		return fail(out, 1, "a checkpoint already exists named", name, 0);
	if (err == -EBUSY)
		return fail(out, 1, "another snapshot is being taken; not", name, 0);
	if (err)
		return fail(out, 1, "snapshot step failed for", name, err);
	return 0;
}

int ctl_snapshot(const struct ctl_env *env, int argc, char **argv, FILE *out)
{
	const char *name = NULL;
	unsigned timeout_ms = 10000;
	bool json = false;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--json")) {
			json = true;
		} else if (!strcmp(argv[i], "--hold-timeout-ms") && i + 1 < argc) {
			char *end;
			unsigned long v = strtoul(argv[++i], &end, 10);
			if (*end || v == 0 || v > 3600000) {
				fprintf(out, "voltrack: snapshot: bad hold timeout\n");
				return 2;
			}
			timeout_ms = (unsigned)v;
		} else if (argv[i][0] == '-' || name) {
			fprintf(out, "voltrack: snapshot: unexpected '%s'\n", argv[i]);
			return 2;
		} else {
			name = argv[i];
		}
	}
	if (!name) {
		fprintf(out, "voltrack: snapshot takes one NAME\n");
		return 2;
	}
	if (!env->snaps) {
		fprintf(out, "voltrack: snapshots cannot be taken here (the server is read-only "
			"or untracked)\n");
		return 1;
	}
	struct vt_snap_phases ph;
	int err = vt_snapshots_take(env->snaps, name, timeout_ms, &ph);
	if (err == -EINVAL)
		return fail(out, 2, "not a valid snapshot name:", name, 0);
	if (err == -EEXIST)
		return fail(out, 1, "a checkpoint already exists named", name, 0);
	if (err == -ETIMEDOUT) {
		fprintf(out, "voltrack: snapshot '%s' aborted: writes in flight did not drain "
			"within the %u ms hold timeout; held writes resumed, nothing was kept\n",
			name, timeout_ms);
		return 1;
	}
	if (err == -EBUSY)
		return fail(out, 1, "another snapshot is being taken; not", name, 0);
	if (err)
		return fail(out, 1, "cannot take snapshot", name, err);
	publish(env, name, out);
	report(out, name, &ph, json);
	return 0;
}

int ctl_delete_snapshot(const struct ctl_env *env, const char *name, uint64_t *freed,
			FILE *out)
{
	if (!env->snaps)
		return fail(out, 1, "snapshots are not served here (read-only or untracked):", name, 0);
	int err = vt_snapshots_delete(env->snaps, name, freed);
	if (err == -ENOENT)
		return fail(out, 1, "no snapshot named", name, 0);
	if (err)
		return fail(out, 1, "cannot delete snapshot", name, err);
	/* Unlisted once gone (a connection still open reads EIO). */
	if (env->exports) {
		char ename[sizeof(VT_SNAPSHOT_PREFIX) + CKPT_NAME_MAX];
		snprintf(ename, sizeof(ename), VT_SNAPSHOT_PREFIX "%s", name);
		env->exports->remove(env->exports->arg, ename);
	}
	return 0;
}
