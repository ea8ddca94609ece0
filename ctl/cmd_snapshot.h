/*
 * The snapshot commands of the control socket (snapshot, delete); same
 * conventions as commands.h: answer or one error line to out, exit
 * status returned.
 */
#ifndef VOLTRACK_CTL_CMD_SNAPSHOT_H
#define VOLTRACK_CTL_CMD_SNAPSHOT_H

#include <stdint.h>
#include <stdio.h>

#include "commands.h"

int ctl_snapshot(const struct ctl_env *env, int argc, char **argv, FILE *out);
int ctl_snapshot_step(const struct ctl_env *env, int argc, char **argv, FILE *out);
/* The snapshot half of delete: its data and its export.  0, or the
 * exit status after an error line on out. */
int ctl_delete_snapshot(const struct ctl_env *env, const char *name, uint64_t *freed,
			FILE *out);

#endif
