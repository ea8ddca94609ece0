/*
 * ctl server: the control socket (META/control.sock) of a running
 * `voltrack serve`, through which the CLI's tracking commands reach the
 * live tracker.
 *
 * Wire format (doc/control.md): the client sends its arguments, each
 * terminated by a NUL byte, and shuts down its sending side; end of
 * stream ends the request.  The server answers one byte, the exit status
 * ('0', '1' or '2'), then the command's output, and closes.  Requests
 * are bounded (64 KiB, 64 arguments, 5 s) and served one at a time.
 * The socket is mode 0600, and a peer (SO_PEERCRED) that is neither
 * root nor the owner of the metadata directory gets status 1 and a
 * refusal; nothing it sends is parsed.
 */
#ifndef VOLTRACK_CTL_SERVER_H
#define VOLTRACK_CTL_SERVER_H

#include <stdio.h>

#include "commands.h"

#define CTL_SOCKET_NAME "control.sock"

struct ctl_server;

/* Serve env (copied; what it points to must outlive the server). */
int ctl_server_start(const char *path, const struct ctl_env *env, struct ctl_server **out);
void ctl_server_stop(struct ctl_server *s);

/*
 * Send argv to the server at path and copy its answer to stdout (or
 * stderr for a failure).  Returns the exit status, or -errno when no
 * server answers there.
 */
int ctl_client_call(const char *path, int argc, char **argv);

/* The same, but the whole answer goes to `to` (NULL: as above), for a
 * caller that reports several servers' answers as one. */
int ctl_client_call_to(const char *path, int argc, char **argv, FILE *to);

#endif
