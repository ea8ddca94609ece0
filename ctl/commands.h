/*
 * commands: the tracking commands (checkpoint, changes, list, status),
 * run against an open tracker, output as text or --json.
 *
 * The same code answers over the control socket while a server runs
 * and directly on the metadata when none does, so both give the same
 * answer byte for byte.
 */
#ifndef VOLTRACK_CTL_COMMANDS_H
#define VOLTRACK_CTL_COMMANDS_H

#include <stdio.h>

#include "metadir.h"
#include "tracker.h"

/* argv[0] is the command.  Writes the answer, or one error line, to out.
 * Returns the exit status: 0, 1 (failed) or 2 (usage). */
int ctl_run(struct tracker *t, struct metadir *md, int argc, char **argv, FILE *out);

/* voltrack check: verify every checksum and structure in the metadata
 * directory, read-only.  0 when sound, else 1 with a precise report. */
int ctl_check(struct metadir *md, FILE *out);

#endif
