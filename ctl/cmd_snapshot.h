/*
 * The snapshot commands of the control socket (snapshot, delete); same
 * conventions as commands.h: answer or one error line to out, exit
 * status returned.
 */
#ifndef VOLTRACK_CTL_CMD_SNAPSHOT_H
#define VOLTRACK_CTL_CMD_SNAPSHOT_H

#include <stdio.h>

#include "commands.h"

int ctl_snapshot(const struct ctl_env *env, int argc, char **argv, FILE *out);
int ctl_snapshot_step(const struct ctl_env *env, int argc, char **argv, FILE *out);
int ctl_delete(const struct ctl_env *env, int argc, char **argv, FILE *out);

#endif
