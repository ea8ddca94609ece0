/*
 * commands: the tracking commands (checkpoint, delete, changes, list,
 * status), run against an open tracker, output as text or --json.
 *
 * The same code answers over the control socket while a server runs
 * and directly on the metadata when none does, so both give the same
 * answer byte for byte.
 */
#ifndef VOLTRACK_CTL_COMMANDS_H
#define VOLTRACK_CTL_COMMANDS_H

#include <stdio.h>

#include "export.h"
#include "metadir.h"
#include "tracker.h"

/*
 * Where a running server publishes exports, seen through callbacks so
 * that this layer needs nothing of the NBD server's: a later `snapshot`
 * command adds "snapshot/NAME" here and `delete` removes it.  Both may
 * be called from the control thread while the server runs; add takes a
 * reference of its own.  Return 0 or -errno (-EEXIST, -ENOENT).
 */
struct ctl_exports {
	void *arg;
	int (*add)(void *arg, struct vt_export *e);
	int (*remove)(void *arg, const char *name);
};

struct vt_snapshots;

/* What the commands act on.  exports is NULL when no server runs;
 * snaps is NULL where snapshots cannot be taken (read-only serve). */
struct ctl_env {
	struct tracker *tracker;
	struct metadir *md;
	const struct ctl_exports *exports;
	struct vt_snapshots *snaps;
};

/* argv[0] is the command.  Writes the answer, or one error line, to out.
 * Returns the exit status: 0, 1 (failed) or 2 (usage). */
int ctl_run(const struct ctl_env *env, int argc, char **argv, FILE *out);

/* voltrack check: verify every checksum and structure in the metadata
 * directory, read-only.  0 when sound, else 1 with a precise report. */
int ctl_check(struct metadir *md, FILE *out);

#endif
