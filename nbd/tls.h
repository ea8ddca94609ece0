/*
 * tls: the TLS session layer of the NBD server (GnuTLS), one session per
 * connection, in two phases that match the server's two phases.
 *
 * Credentials are loaded once, before the server listens, and checked
 * there: a missing, unreadable or malformed file is an error at start-up
 * with a one-line message, never a failed handshake later.  X.509 uses
 * the directory layout of qemu-nbd and nbdkit (ca-cert.pem,
 * server-cert.pem, server-key.pem, and optionally ca-crl.pem); PSK uses
 * psktool's "username:hexkey" lines, read into memory at start-up.
 * Only TLS 1.2 and later are offered, on top of the system's priority
 * policy; session tickets (resumption) are off.
 *
 * Negotiation phase (the handshake thread): nbd_tls_accept() runs the
 * TLS handshake on the blocking socket, and nbd_tls_read()/_write()
 * carry the rest of the option haggling.  Every wait ends at the
 * negotiation's one deadline, so the TLS handshake is bounded by the
 * same --handshake-timeout as the options around it.  Nothing is read
 * from the socket beyond what GnuTLS asks for, so plaintext a client
 * (or a man in the middle) sent after STARTTLS is fed to the TLS
 * handshake, which rejects it, and can never be taken for an option.
 *
 * Transmission phase (the connection's worker): nbd_tls_detach() cuts
 * the session loose from the socket.  From then on it does no I/O at
 * all: the worker's event loop (io_uring or epoll) reads ciphertext into
 * nbd_tls_rx_room() and writes it out of nbd_tls_tx_data(), and
 * nbd_tls_decrypt()/_encrypt() move between those buffers and the
 * connection's own.  Why this shape rather than a non-blocking fd under
 * GnuTLS: the socket stays on the ring, so one io_uring_enter per loop
 * turn still submits every connection's socket I/O with the file I/O,
 * and one receive brings in many records (a non-blocking fd path would
 * cost a recv(2) per 16 KiB record and a syscall per send).  The price
 * is one memcpy each way between these buffers and GnuTLS's, small next
 * to the cipher.  Kernel TLS would save both; it is not used because it
 * depends on the kernel, the GnuTLS build and the system configuration.
 *
 * Buffers are allocated once per connection (nbd_tls_detach); GnuTLS
 * itself allocates record buffers internally.  A session belongs to one
 * thread at a time: the handshake thread, then its worker (the hand-off
 * goes through the worker's lock).
 */
#ifndef VOLTRACK_NBD_TLS_H
#define VOLTRACK_NBD_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

/* Plaintext encrypted per nbd_tls_encrypt() call, at most. */
#define NBD_TLS_TX_BATCH	(256u << 10)
/* Ciphertext one socket read may bring in. */
#define NBD_TLS_RX_SIZE		(256u << 10)

struct nbd_tls_creds;
struct nbd_tls;

/*
 * X.509 credentials from dir.  verify_peer: clients must present a
 * certificate signed by ca-cert.pem (and not revoked by ca-crl.pem).
 * 0 or -errno, with a one-line reason in msg.
 */
int nbd_tls_creds_x509(const char *dir, bool verify_peer, struct nbd_tls_creds **out,
		       char *msg, size_t msglen);
/* PSK credentials from a psktool file.  0 or -errno, reason in msg. */
int nbd_tls_creds_psk(const char *file, struct nbd_tls_creds **out, char *msg, size_t msglen);
void nbd_tls_creds_free(struct nbd_tls_creds *c);
/* "x509" or "psk", for the log. */
const char *nbd_tls_creds_kind(const struct nbd_tls_creds *c);

/* ---- negotiation phase: blocking socket, one deadline ---- */

/*
 * Run a server-side TLS handshake on fd, waiting at most until
 * deadline_ms (monotonic, see deadline.h).  0 with *out set, or -errno
 * (-ETIMEDOUT, -ECONNRESET, -EACCES for a refused peer, -EPROTO for any
 * other TLS failure); the reason is logged as a warning.
 */
int nbd_tls_accept(const struct nbd_tls_creds *c, int fd, uint64_t deadline_ms,
		   struct nbd_tls **out);
/* Exactly len bytes / all of buf, before the deadline.  0 or -errno. */
int nbd_tls_read(struct nbd_tls *t, void *buf, size_t len);
int nbd_tls_write(struct nbd_tls *t, const void *buf, size_t len);

/* ---- transmission phase: memory transport, no I/O ---- */

/* Switch to the memory transport and allocate its buffers: 0 or -ENOMEM. */
int nbd_tls_detach(struct nbd_tls *t);

/* Where the next socket read may put ciphertext (never empty once
 * detached unless nbd_tls_rx_ready() is true), and how much it put. */
struct iovec nbd_tls_rx_room(struct nbd_tls *t);
void nbd_tls_rx_added(struct nbd_tls *t, size_t n);
/* Plaintext may be had without another socket read. */
bool nbd_tls_rx_ready(struct nbd_tls *t);

/*
 * Decrypt into buf, up to len bytes: the count (> 0), 0 when the peer
 * closed the TLS session, -EAGAIN when more ciphertext is needed, or
 * -errno for a broken or refused session.  May queue output (an alert,
 * a key update): look at nbd_tls_tx_data() afterwards.
 */
ssize_t nbd_tls_decrypt(struct nbd_tls *t, void *buf, size_t len);

/*
 * Encrypt up to NBD_TLS_TX_BATCH bytes of iov into the output buffer,
 * only while it is empty: the plaintext bytes consumed (0 when the
 * buffer still holds ciphertext), or -errno.  Consumed bytes are
 * copied; the caller may reuse them at once.
 */
ssize_t nbd_tls_encrypt(struct nbd_tls *t, const struct iovec *iov, unsigned iovcnt);
/* Queue the TLS close_notify alert (a soft disconnect). */
int nbd_tls_bye(struct nbd_tls *t);

/* Ciphertext waiting for the socket (empty when none), and how much of
 * it a socket write took. */
struct iovec nbd_tls_tx_data(struct nbd_tls *t);
void nbd_tls_tx_sent(struct nbd_tls *t, size_t n);

void nbd_tls_free(struct nbd_tls *t);

#endif
