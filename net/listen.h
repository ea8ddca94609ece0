/*
 * listen: the sockets a server accepts on.
 *
 * Unix sockets (the default), TCP with an explicit HOST:PORT, and
 * sockets inherited from systemd socket activation.  Each function
 * returns listening, close-on-exec descriptors or -errno.
 */
#ifndef VOLTRACK_NET_LISTEN_H
#define VOLTRACK_NET_LISTEN_H

#include <stddef.h>

/* Bind PATH, replacing a stale socket file (the caller holds the lock
 * that makes any existing one stale).  The socket is mode 0600 before it
 * accepts anything: only its owner (and root) can connect. */
int listen_unix(const char *path, int *fd);

/*
 * "HOST:PORT", "[V6ADDR]:PORT" or ":PORT" (all addresses).  Binds every
 * address HOST resolves to; fills at most max descriptors.
 */
int listen_tcp(const char *hostport, int *fds, size_t max, size_t *n);

/* Descriptors passed with LISTEN_PID/LISTEN_FDS; *n = 0 when none. */
int listen_systemd(int *fds, size_t max, size_t *n);

#endif
