/*
 * TLS sessions (tls.h): GnuTLS over our own transport functions, which
 * either wait on the socket until the negotiation's deadline, or, once
 * detached for transmission, only copy to and from two buffers that the
 * worker's event loop fills and drains.
 */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <gnutls/gnutls.h>

#include "deadline.h"
#include "log.h"
#include "tls_internal.h"

/* Room for alerts and key updates queued while a batch waits. */
#define TX_SLACK (16u << 10)

struct nbd_tls {
	gnutls_session_t s;
	const struct nbd_tls_creds *creds;
	/* negotiation phase */
	int fd;
	uint64_t deadline_ms;
	int io_err;		/* the transport's own failure, as -errno */
	/* transmission phase */
	bool detached;
	uint8_t *rx;		/* ciphertext in: [rx_head, rx_tail) unread */
	size_t rx_head, rx_tail;
	uint8_t *tx;		/* ciphertext out: [tx_head, tx_tail) unsent */
	size_t tx_head, tx_tail, tx_cap;
};

/* ---- transport ---- */

static ssize_t pull(gnutls_transport_ptr_t p, void *buf, size_t len)
{
	struct nbd_tls *t = p;

	if (t->detached) {
		size_t k = t->rx_tail - t->rx_head;
		if (k == 0) {
			gnutls_transport_set_errno(t->s, EAGAIN);
			return -1;
		}
		if (k > len)
			k = len;
		memcpy(buf, t->rx + t->rx_head, k);
		t->rx_head += k;
		return (ssize_t)k;
	}
	for (;;) {
		int err = net_wait(t->fd, POLLIN, t->deadline_ms);
		ssize_t n = err ? -1 : recv(t->fd, buf, len, MSG_DONTWAIT);
		if (n >= 0)
			return n;
		if (!err && (errno == EAGAIN || errno == EINTR))
			continue;
		t->io_err = err ? err : -errno;
		gnutls_transport_set_errno(t->s, -t->io_err);
		return -1;
	}
}

static ssize_t push(gnutls_transport_ptr_t p, const void *buf, size_t len)
{
	struct nbd_tls *t = p;

	if (t->detached) {
		/* Sized so that this cannot happen (nbd_tls_detach); if it
		 * did, GnuTLS would keep the record and report EAGAIN. */
		if (t->tx_cap - t->tx_tail < len) {
			gnutls_transport_set_errno(t->s, EAGAIN);
			return -1;
		}
		memcpy(t->tx + t->tx_tail, buf, len);
		t->tx_tail += len;
		return (ssize_t)len;
	}
	for (;;) {
		int err = net_wait(t->fd, POLLOUT, t->deadline_ms);
		ssize_t n = err ? -1 : send(t->fd, buf, len, MSG_DONTWAIT | MSG_NOSIGNAL);
		if (n >= 0)
			return n;
		if (!err && (errno == EAGAIN || errno == EINTR))
			continue;
		t->io_err = err ? err : -errno;
		gnutls_transport_set_errno(t->s, -t->io_err);
		return -1;
	}
}

/* GnuTLS asks this before some reads; our pull waits by itself. */
static int pull_timeout(gnutls_transport_ptr_t p, unsigned ms)
{
	struct nbd_tls *t = p;

	if (t->detached)
		return t->rx_tail > t->rx_head;
	uint64_t until = net_now_ms() + ms;
	int err = net_wait(t->fd, POLLIN, until < t->deadline_ms ? until : t->deadline_ms);
	if (err == -ETIMEDOUT)
		return net_now_ms() >= t->deadline_ms ? -1 : 0;
	return err ? -1 : 1;
}

int nbd_tls_psk_lookup(gnutls_session_t s, const char *username, gnutls_datum_t *key)
{
	struct nbd_tls *t = gnutls_session_get_ptr(s);
	const struct nbd_tls_creds *c = t->creds;

	for (size_t i = 0; i < c->npsk; i++) {
		if (strcmp(c->psk_keys[i].user, username) != 0)
			continue;
		/* GnuTLS frees the copy with gnutls_free. */
		key->data = gnutls_malloc(c->psk_keys[i].keylen);
		if (!key->data)
			return -1;
		memcpy(key->data, c->psk_keys[i].key, c->psk_keys[i].keylen);
		key->size = (unsigned)c->psk_keys[i].keylen;
		return 0;
	}
	vt_warn("TLS: unknown PSK user '%.64s'", username);
	return -1;
}

/* ---- negotiation phase ---- */

/* A failed handshake, as -errno, said once in the log. */
static int handshake_error(struct nbd_tls *t, int r)
{
	if (t->io_err) {
		if (t->io_err == -ETIMEDOUT)
			vt_warn("TLS handshake: the negotiation deadline passed");
		return t->io_err;
	}
	switch (r) {
	case GNUTLS_E_PREMATURE_TERMINATION:
		return -ECONNRESET; /* the client gave up, likely on our certificate */
	case GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR: {
		gnutls_datum_t why = { 0 };
		unsigned status = gnutls_session_get_verify_cert_status(t->s);
		if (gnutls_certificate_verification_status_print(status, GNUTLS_CRT_X509,
								 &why, 0) == 0) {
			vt_warn("TLS handshake: client certificate refused: %s", why.data);
			gnutls_free(why.data);
		} else {
			vt_warn("TLS handshake: client certificate refused");
		}
		return -EACCES;
	}
	case GNUTLS_E_NO_CERTIFICATE_FOUND:
	case GNUTLS_E_CERTIFICATE_REQUIRED:
		vt_warn("TLS handshake: the client sent no certificate");
		return -EACCES;
	case GNUTLS_E_DECRYPTION_FAILED:
	case GNUTLS_E_BAD_COOKIE:
	case GNUTLS_E_INSUFFICIENT_CREDENTIALS:
		vt_warn("TLS handshake: client refused: %s", gnutls_strerror(r));
		return -EACCES;
	default:
		vt_warn("TLS handshake failed: %s", gnutls_strerror(r));
		return -EPROTO;
	}
}

int nbd_tls_accept(const struct nbd_tls_creds *c, int fd, uint64_t deadline_ms,
		   struct nbd_tls **out)
{
	struct nbd_tls *t = calloc(1, sizeof(*t));
	int r;

	if (!t)
		return -ENOMEM;
	t->creds = c;
	t->fd = fd;
	t->deadline_ms = deadline_ms;
	/* No tickets: resumption would need a ticket key to manage and
	 * buys nothing for connections that live for a backup. */
	r = gnutls_init(&t->s, GNUTLS_SERVER | GNUTLS_NO_TICKETS);
	if (r < 0) {
		free(t);
		return -ENOMEM;
	}
	gnutls_session_set_ptr(t->s, t);
	gnutls_transport_set_ptr(t->s, t);
	gnutls_transport_set_pull_function(t->s, pull);
	gnutls_transport_set_push_function(t->s, push);
	gnutls_transport_set_pull_timeout_function(t->s, pull_timeout);
	/* Our deadline bounds the handshake together with the options. */
	gnutls_handshake_set_timeout(t->s, 0);
	r = gnutls_priority_set(t->s, c->prio);
	if (r >= 0 && c->kind == NBD_TLS_X509) {
		r = gnutls_credentials_set(t->s, GNUTLS_CRD_CERTIFICATE, c->x509);
		if (r >= 0 && c->verify_peer) {
			gnutls_certificate_server_set_request(t->s, GNUTLS_CERT_REQUIRE);
			/* Verified inside the handshake, which then fails with
			 * an alert the client can report. */
			gnutls_session_set_verify_cert(t->s, NULL, 0);
		}
	} else if (r >= 0) {
		r = gnutls_credentials_set(t->s, GNUTLS_CRD_PSK, c->psk);
	}
	if (r < 0) {
		vt_warn("TLS: cannot set up a session: %s", gnutls_strerror(r));
		nbd_tls_free(t);
		return -ENOMEM;
	}
	do {
		r = gnutls_handshake(t->s);
	} while (r < 0 && !gnutls_error_is_fatal(r) && !t->io_err);
	if (r < 0) {
		int err = handshake_error(t, r);
		nbd_tls_free(t);
		return err;
	}
	*out = t;
	return 0;
}

static int record_error(struct nbd_tls *t, ssize_t r)
{
	if (t->io_err)
		return t->io_err;
	if (r == GNUTLS_E_REHANDSHAKE) {
		vt_warn("TLS: client asked to renegotiate; refused");
		return -EPROTO;
	}
	if (r != GNUTLS_E_PREMATURE_TERMINATION)
		vt_warn("TLS: %s", gnutls_strerror((int)r));
	return r == GNUTLS_E_PREMATURE_TERMINATION ? -ECONNRESET : -EPROTO;
}

static bool retry(ssize_t r)
{
	return r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED ||
	       (r < 0 && !gnutls_error_is_fatal((int)r) && r != GNUTLS_E_REHANDSHAKE);
}

int nbd_tls_read(struct nbd_tls *t, void *buf, size_t len)
{
	uint8_t *p = buf;

	while (len) {
		ssize_t r = gnutls_record_recv(t->s, p, len);
		if (r == 0)
			return -ECONNRESET;
		if (r < 0) {
			if (retry(r) && !t->io_err)
				continue;
			return record_error(t, r);
		}
		p += r;
		len -= (size_t)r;
	}
	return 0;
}

int nbd_tls_write(struct nbd_tls *t, const void *buf, size_t len)
{
	const uint8_t *p = buf;

	while (len) {
		ssize_t r = gnutls_record_send(t->s, p, len);
		if (r < 0) {
			if (retry(r) && !t->io_err)
				continue;
			return record_error(t, r);
		}
		p += r;
		len -= (size_t)r;
	}
	return 0;
}

/* ---- transmission phase ---- */

int nbd_tls_detach(struct nbd_tls *t)
{
	size_t rec = gnutls_record_get_max_size(t->s);
	size_t over = (size_t)gnutls_record_overhead_size(t->s);

	/* A batch of plaintext is cut into records of at most rec bytes,
	 * each growing by at most over. */
	if (rec == 0)
		rec = 1;
	t->tx_cap = NBD_TLS_TX_BATCH + (NBD_TLS_TX_BATCH / rec + 2) * over + TX_SLACK;
	t->rx = malloc(NBD_TLS_RX_SIZE);
	t->tx = malloc(t->tx_cap);
	if (!t->rx || !t->tx)
		return -ENOMEM;
	t->detached = true;
	t->fd = -1;
	return 0;
}

struct iovec nbd_tls_rx_room(struct nbd_tls *t)
{
	if (t->rx_head == t->rx_tail) {
		t->rx_head = t->rx_tail = 0;
	} else if (NBD_TLS_RX_SIZE - t->rx_tail < NBD_TLS_RX_SIZE / 4) {
		memmove(t->rx, t->rx + t->rx_head, t->rx_tail - t->rx_head);
		t->rx_tail -= t->rx_head;
		t->rx_head = 0;
	}
	return (struct iovec){ t->rx + t->rx_tail, NBD_TLS_RX_SIZE - t->rx_tail };
}

void nbd_tls_rx_added(struct nbd_tls *t, size_t n)
{
	t->rx_tail += n;
}

bool nbd_tls_rx_ready(struct nbd_tls *t)
{
	return t->rx_tail > t->rx_head || gnutls_record_check_pending(t->s) > 0;
}

ssize_t nbd_tls_decrypt(struct nbd_tls *t, void *buf, size_t len)
{
	size_t got = 0;

	/* One record per call at most: loop to fill the destination. */
	while (got < len) {
		ssize_t r = gnutls_record_recv(t->s, (uint8_t *)buf + got, len - got);
		if (r > 0) {
			got += (size_t)r;
			continue;
		}
		if (got)
			break; /* the end or the error shows on the next call */
		if (r == 0)
			return 0;
		if (r == GNUTLS_E_AGAIN)
			return -EAGAIN;
		if (retry(r))
			continue;
		return record_error(t, r);
	}
	return (ssize_t)got;
}

ssize_t nbd_tls_encrypt(struct nbd_tls *t, const struct iovec *iov, unsigned iovcnt)
{
	size_t used = 0;
	int r = 0;

	if (t->tx_tail > t->tx_head)
		return 0;
	t->tx_head = t->tx_tail = 0;
	/*
	 * Corked, GnuTLS gathers the pieces and cuts full records at
	 * uncork: the 16-byte replies of a burst of small writes share a
	 * record (one cipher pass, one tag) instead of one record each.
	 */
	gnutls_record_cork(t->s);
	for (unsigned i = 0; i < iovcnt && used < NBD_TLS_TX_BATCH; i++) {
		size_t k = iov[i].iov_len;
		if (k > NBD_TLS_TX_BATCH - used)
			k = NBD_TLS_TX_BATCH - used;
		ssize_t n = gnutls_record_send(t->s, iov[i].iov_base, k);
		if (n < 0) {
			r = (int)n;
			break;
		}
		used += (size_t)n;
	}
	int u = gnutls_record_uncork(t->s, 0);
	if (r == 0 && u < 0)
		r = u;
	if (r < 0) {
		vt_warn("TLS: cannot encrypt: %s", gnutls_strerror(r));
		return -EPROTO;
	}
	return (ssize_t)used;
}

int nbd_tls_bye(struct nbd_tls *t)
{
	int r = gnutls_bye(t->s, GNUTLS_SHUT_WR);

	return r < 0 ? -EPROTO : 0;
}

struct iovec nbd_tls_tx_data(struct nbd_tls *t)
{
	return (struct iovec){ t->tx + t->tx_head, t->tx_tail - t->tx_head };
}

void nbd_tls_tx_sent(struct nbd_tls *t, size_t n)
{
	t->tx_head += n;
	if (t->tx_head == t->tx_tail)
		t->tx_head = t->tx_tail = 0;
}

void nbd_tls_free(struct nbd_tls *t)
{
	if (!t)
		return;
	gnutls_deinit(t->s);
	free(t->rx);
	free(t->tx);
	free(t);
}
