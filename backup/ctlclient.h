/*
 * ctlclient: the orchestrated backup's side of voltrack's control
 * socket (wire format in doc/control.md: NUL-terminated arguments, a
 * half-close, then one status byte and the output), and just enough
 * JSON reading for the answers of `status --json` and `list --json`.
 * Kept apart from the server's code on purpose: the backup client
 * relies on the documented protocol only.
 */
#ifndef VOLTRACK_BACKUP_CTLCLIENT_H
#define VOLTRACK_BACKUP_CTLCLIENT_H

#include <stdbool.h>
#include <stddef.h>

/*
 * Run argv on the server at sock.  *status is its exit status (0, 1,
 * 2) and *out its output (malloc'd, NUL-terminated).  Returns 0, or
 * -errno when no server answers.
 */
int bk_ctl_call(const char *sock, int argc, const char *const *argv, int *status, char **out);

/* The string value of "key" in the JSON object text (the first one at
 * any depth), unescaped into out; -ENOENT when absent. */
int bk_json_string(const char *text, const char *key, char *out, size_t cap);
/* The same for an unsigned number. */
int bk_json_u64(const char *text, const char *key, unsigned long long *out);

/*
 * Call fn for each object of the top-level JSON array text, with the
 * object's text (NUL-terminated copy).  Stops when fn returns non-zero
 * and returns that.
 */
int bk_json_each(const char *text, int (*fn)(void *arg, const char *obj), void *arg);

#endif
