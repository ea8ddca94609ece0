/*
 * cli: the voltrack command line.  Each subcommand is cmd_NAME(argc,
 * argv) with argv[0] the subcommand, returning the process exit status:
 * 0 on success, 1 on failure, 2 on a usage error.  Errors are one line
 * on stderr, as qemu-img prints them.
 */
#ifndef VOLTRACK_CLI_H
#define VOLTRACK_CLI_H

#include <stdint.h>

#include "superblock.h"

#define EXIT_USAGE 2

int cmd_init(int argc, char **argv);
int cmd_serve(int argc, char **argv);
/* checkpoint, delete, changes, list, status, check */
int cmd_track(int argc, char **argv);
int cmd_snapshot(int argc, char **argv);
/* The backup client: backup, restore, backups, verify, prune, serve-backup. */
int cmd_backup(int argc, char **argv);
int cmd_restore(int argc, char **argv);
int cmd_backups(int argc, char **argv);
int cmd_verify(int argc, char **argv);
int cmd_prune(int argc, char **argv);
int cmd_serve_backup(int argc, char **argv);

/* "voltrack: message" on stderr; returns 1 for `return cli_fail(...)`. */
int cli_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The same, with the usage hint; returns EXIT_USAGE. */
int cli_usage(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Parse a SIZE argument of option opt; prints the error itself. */
int cli_parse_size(const char *opt, const char *text, uint64_t *out);
/* Parse a non-negative integer option; prints the error itself. */
int cli_parse_uint(const char *opt, const char *text, unsigned max, unsigned *out);
/* The same for a signed number in [min, max]. */
int cli_parse_int(const char *opt, const char *text, int min, int max, int *out);

/*
 * The metadata directory for VOLUME: --meta when given, else
 * VOLUME.voltrack for a regular file.  Block devices need --meta.
 * Prints the error itself; the caller frees *out.
 */
int cli_meta_path(const char *volume, const char *meta_opt,
		  enum sb_volume_kind kind, char **out);

#endif
