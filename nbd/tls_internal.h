/*
 * tls_internal: what tls_creds.c (loading) and tls.c (sessions) share.
 * Credentials are immutable once loaded, so any number of handshake
 * threads read them without a lock.
 */
#ifndef VOLTRACK_NBD_TLS_INTERNAL_H
#define VOLTRACK_NBD_TLS_INTERNAL_H

#include <gnutls/gnutls.h>

#include "tls.h"

enum nbd_tls_kind { NBD_TLS_X509, NBD_TLS_PSK };

struct nbd_tls_psk {
	char *user;
	uint8_t *key;
	size_t keylen;
};

struct nbd_tls_creds {
	enum nbd_tls_kind kind;
	gnutls_priority_t prio;
	/* X.509 */
	gnutls_certificate_credentials_t x509;
	bool verify_peer;
	/* PSK */
	gnutls_psk_server_credentials_t psk;
	struct nbd_tls_psk *psk_keys;
	size_t npsk;
};

/* GnuTLS's callback for a PSK client's username (tls.c). */
int nbd_tls_psk_lookup(gnutls_session_t s, const char *username, gnutls_datum_t *key);

#endif
