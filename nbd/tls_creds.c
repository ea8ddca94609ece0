/*
 * TLS credentials (tls.h): loaded and checked once, before the server
 * listens, so that a bad file is a clear error at start-up rather than
 * a handshake that fails for every client.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gnutls/gnutls.h>

#include "log.h"
#include "tls_internal.h"

/* psktool writes one short line per user; a larger file is not one. */
#define MAX_PSK_FILE (1u << 20)
#define MAX_PSK_USER 256

static int fail(char *msg, size_t msglen, int err, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static int fail(char *msg, size_t msglen, int err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, msglen, fmt, ap);
	va_end(ap);
	return err;
}

/* Only TLS 1.2 and later (the NBD spec: older versions only by a
 * configuration change), on top of the system's policy. */
static int set_priority(struct nbd_tls_creds *c, bool psk, char *msg, size_t msglen)
{
	const char *extra = psk ? "-VERS-TLS1.1:-VERS-TLS1.0:+ECDHE-PSK:+DHE-PSK:+PSK"
				: "-VERS-TLS1.1:-VERS-TLS1.0";
	const char *where = NULL;
	int r = gnutls_priority_init2(&c->prio, extra, &where, GNUTLS_PRIORITY_INIT_DEF_APPEND);

	if (r < 0)
		return fail(msg, msglen, -EINVAL, "cannot set the TLS priorities (at '%s'): %s",
			    where ? where : "?", gnutls_strerror(r));
	return 0;
}

/* open(2)'s verdict on a file, for a message that names the file. */
static int readable(const char *path, bool secret, char *msg, size_t msglen)
{
	struct stat st;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return fail(msg, msglen, -errno, "%s: %s", path, strerror(errno));
	if (fstat(fd, &st) == 0 && !S_ISREG(st.st_mode)) {
		close(fd);
		return fail(msg, msglen, -EINVAL, "%s: not a regular file", path);
	}
	if (secret && (st.st_mode & 077))
		vt_warn("%s is readable by other users (mode %03o); it should be 0600",
			path, (unsigned)(st.st_mode & 0777));
	close(fd);
	return 0;
}

static char *join(const char *dir, const char *name)
{
	char *p;

	return asprintf(&p, "%s/%s", dir, name) < 0 ? NULL : p;
}

int nbd_tls_creds_x509(const char *dir, bool verify_peer, struct nbd_tls_creds **out,
		       char *msg, size_t msglen)
{
	struct nbd_tls_creds *c = calloc(1, sizeof(*c));
	char *ca = join(dir, "ca-cert.pem"), *crl = join(dir, "ca-crl.pem");
	char *cert = join(dir, "server-cert.pem"), *key = join(dir, "server-key.pem");
	int err = 0, r;

	if (!c || !ca || !crl || !cert || !key) {
		err = fail(msg, msglen, -ENOMEM, "out of memory");
		goto out;
	}
	c->kind = NBD_TLS_X509;
	c->verify_peer = verify_peer;
	err = readable(ca, false, msg, msglen);
	if (!err)
		err = readable(cert, false, msg, msglen);
	if (!err)
		err = readable(key, true, msg, msglen);
	if (err)
		goto out;
	r = gnutls_certificate_allocate_credentials(&c->x509);
	if (r < 0) {
		err = fail(msg, msglen, -ENOMEM, "cannot allocate TLS credentials: %s",
			   gnutls_strerror(r));
		goto out;
	}
	r = gnutls_certificate_set_x509_trust_file(c->x509, ca, GNUTLS_X509_FMT_PEM);
	if (r <= 0) {
		err = fail(msg, msglen, -EINVAL, "%s: %s", ca,
			   r == 0 ? "no certificate in it" : gnutls_strerror(r));
		goto out;
	}
	/* Optional, as for qemu-nbd: revoked client certificates. */
	if (access(crl, F_OK) == 0) {
		r = gnutls_certificate_set_x509_crl_file(c->x509, crl, GNUTLS_X509_FMT_PEM);
		if (r < 0) {
			err = fail(msg, msglen, -EINVAL, "%s: %s", crl, gnutls_strerror(r));
			goto out;
		}
	}
	/* Also checks that the key belongs to the certificate. */
	r = gnutls_certificate_set_x509_key_file(c->x509, cert, key, GNUTLS_X509_FMT_PEM);
	if (r < 0) {
		err = fail(msg, msglen, -EINVAL, "%s, %s: %s", cert, key, gnutls_strerror(r));
		goto out;
	}
	err = set_priority(c, false, msg, msglen);
out:
	free(ca);
	free(crl);
	free(cert);
	free(key);
	if (err) {
		nbd_tls_creds_free(c);
		return err;
	}
	*out = c;
	return 0;
}

static int hexval(char ch)
{
	if (ch >= '0' && ch <= '9')
		return ch - '0';
	if (ch >= 'a' && ch <= 'f')
		return ch - 'a' + 10;
	if (ch >= 'A' && ch <= 'F')
		return ch - 'A' + 10;
	return -1;
}

/* One "username:hexkey" line, already cut at its end. */
static int psk_add(struct nbd_tls_creds *c, const char *file, unsigned lineno, char *line,
		   char *msg, size_t msglen)
{
	char *colon = strchr(line, ':');
	size_t ulen, hlen;
	struct nbd_tls_psk *e, *grown;

	if (!colon)
		return fail(msg, msglen, -EINVAL, "%s:%u: expected username:hexkey", file, lineno);
	*colon = '\0';
	ulen = strlen(line);
	hlen = strlen(colon + 1);
	if (ulen == 0 || ulen > MAX_PSK_USER)
		return fail(msg, msglen, -EINVAL, "%s:%u: the username must be 1-%u bytes",
			    file, lineno, MAX_PSK_USER);
	if (hlen == 0 || hlen % 2)
		return fail(msg, msglen, -EINVAL, "%s:%u: the key must be an even number of "
			    "hex digits", file, lineno);
	for (size_t i = 0; i < c->npsk; i++)
		if (strcmp(c->psk_keys[i].user, line) == 0)
			return fail(msg, msglen, -EINVAL, "%s:%u: user '%s' appears twice",
				    file, lineno, line);
	grown = realloc(c->psk_keys, (c->npsk + 1) * sizeof(*grown));
	if (!grown)
		return fail(msg, msglen, -ENOMEM, "out of memory");
	c->psk_keys = grown;
	e = &c->psk_keys[c->npsk];
	e->user = strdup(line);
	e->key = malloc(hlen / 2);
	e->keylen = hlen / 2;
	if (!e->user || !e->key) {
		free(e->user);
		free(e->key);
		return fail(msg, msglen, -ENOMEM, "out of memory");
	}
	c->npsk++;
	for (size_t i = 0; i < hlen / 2; i++) {
		int hi = hexval(colon[1 + 2 * i]), lo = hexval(colon[2 + 2 * i]);
		if (hi < 0 || lo < 0)
			return fail(msg, msglen, -EINVAL, "%s:%u: the key is not hexadecimal",
				    file, lineno);
		e->key[i] = (uint8_t)(hi << 4 | lo);
	}
	return 0;
}

static int read_file(const char *file, char **out, char *msg, size_t msglen)
{
	int fd = open(file, O_RDONLY | O_CLOEXEC);
	struct stat st;
	char *text;
	size_t got = 0;

	if (fd < 0)
		return fail(msg, msglen, -errno, "%s: %s", file, strerror(errno));
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size > MAX_PSK_FILE) {
		close(fd);
		return fail(msg, msglen, -EINVAL, "%s: not a PSK file (a regular file of at most "
			    "1 MiB)", file);
	}
	if (st.st_mode & 077)
		vt_warn("%s is readable by other users (mode %03o); it should be 0600",
			file, (unsigned)(st.st_mode & 0777));
	text = malloc((size_t)st.st_size + 1);
	if (!text) {
		close(fd);
		return fail(msg, msglen, -ENOMEM, "out of memory");
	}
	while (got < (size_t)st.st_size) {
		ssize_t n = read(fd, text + got, (size_t)st.st_size - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			int e = n < 0 ? errno : EIO;
			close(fd);
			free(text);
			return fail(msg, msglen, -e, "%s: %s", file, strerror(e));
		}
		got += (size_t)n;
	}
	close(fd);
	text[got] = '\0';
	if (strlen(text) != got) {
		free(text);
		return fail(msg, msglen, -EINVAL, "%s: contains a NUL byte", file);
	}
	*out = text;
	return 0;
}

int nbd_tls_creds_psk(const char *file, struct nbd_tls_creds **out, char *msg, size_t msglen)
{
	struct nbd_tls_creds *c = calloc(1, sizeof(*c));
	char *text = NULL, *line, *save = NULL;
	unsigned lineno = 0;
	int err, r;

	if (!c)
		return fail(msg, msglen, -ENOMEM, "out of memory");
	c->kind = NBD_TLS_PSK;
	err = read_file(file, &text, msg, msglen);
	/* Line numbers count blank lines too: split on '\n' by hand. */
	for (line = text; !err && line && *line; line = save) {
		char *end = strchr(line, '\n');
		save = end ? end + 1 : NULL;
		if (end)
			*end = '\0';
		lineno++;
		size_t n = strlen(line);
		if (n && line[n - 1] == '\r')
			line[--n] = '\0';
		if (n)
			err = psk_add(c, file, lineno, line, msg, msglen);
	}
	if (text) {
		explicit_bzero(text, strlen(text));
		free(text);
	}
	if (!err && c->npsk == 0)
		err = fail(msg, msglen, -EINVAL, "%s: no username:hexkey line", file);
	if (!err) {
		r = gnutls_psk_allocate_server_credentials(&c->psk);
		if (r < 0)
			err = fail(msg, msglen, -ENOMEM, "cannot allocate TLS credentials: %s",
				   gnutls_strerror(r));
	}
	if (!err) {
		/* Keys come from memory (tls.c), so a file changed or made
		 * unreadable after start-up changes nothing. */
		gnutls_psk_set_server_credentials_function(c->psk, nbd_tls_psk_lookup);
		/* The RFC 7919 groups for DHE-PSK; ECDHE-PSK needs none. */
		gnutls_psk_set_server_known_dh_params(c->psk, GNUTLS_SEC_PARAM_MEDIUM);
		err = set_priority(c, true, msg, msglen);
	}
	if (err) {
		nbd_tls_creds_free(c);
		return err;
	}
	*out = c;
	return 0;
}

void nbd_tls_creds_free(struct nbd_tls_creds *c)
{
	if (!c)
		return;
	for (size_t i = 0; i < c->npsk; i++) {
		explicit_bzero(c->psk_keys[i].key, c->psk_keys[i].keylen);
		free(c->psk_keys[i].key);
		free(c->psk_keys[i].user);
	}
	free(c->psk_keys);
	if (c->psk)
		gnutls_psk_free_server_credentials(c->psk);
	if (c->x509)
		gnutls_certificate_free_credentials(c->x509);
	if (c->prio)
		gnutls_priority_deinit(c->prio);
	free(c);
}

const char *nbd_tls_creds_kind(const struct nbd_tls_creds *c)
{
	return c->kind == NBD_TLS_X509 ? "x509" : "psk";
}
