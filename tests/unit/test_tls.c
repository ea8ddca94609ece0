/*
 * The TLS session layer (nbd/tls.h) against a real GnuTLS client.
 *
 * PSK files: what psktool writes loads; each malformed line is refused
 * with a message naming the file and line.  A session: the handshake
 * and a record each way on the blocking socket, then the memory
 * transport pumped by hand as a worker's loop would pump it, with
 * payloads larger than one batch and a TLS 1.3 key update in the middle
 * (the server must answer it from inside decrypt), and the client's
 * close_notify read as the end.  A client with the wrong key and one
 * with an unknown user are refused.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <gnutls/gnutls.h>

#include "deadline.h"
#include "tls.h"

#define KEY_HEX "0123456789abcdef0123456789abcdef"
#define BIG (1u << 20)		/* more than one NBD_TLS_TX_BATCH */

static char dir[] = "/tmp/voltrack-test-tls.XXXXXX";

static char *file_with(const char *name, const char *text)
{
	static char path[512];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
	chmod(path, 0600);
	return path;
}

static void refused(const char *text, const char *words)
{
	struct nbd_tls_creds *c = NULL;
	char msg[512] = "";
	int err = nbd_tls_creds_psk(file_with("bad.psk", text), &c, msg, sizeof(msg));

	assert_int_equal(err, -EINVAL);
	assert_null(c);
	if (!strstr(msg, words))
		fail_msg("'%s' does not say '%s'", msg, words);
}

static void test_psk_files(void **state)
{
	struct nbd_tls_creds *c = NULL;
	char msg[512];

	assert_int_equal(nbd_tls_creds_psk(file_with("ok.psk", "alice:" KEY_HEX "\n\r\nbob:00ff\r\n"),
					   &c, msg, sizeof(msg)), 0);
	assert_string_equal(nbd_tls_creds_kind(c), "psk");
	nbd_tls_creds_free(c);

	refused("alice " KEY_HEX "\n", "bad.psk:1: expected username:hexkey");
	refused("\nalice:abc\n", "bad.psk:2: the key must be an even number");
	refused("alice:\n", "the key must be");
	refused(":00ff\n", "the username must be");
	refused("alice:zz00\n", "not hexadecimal");
	refused("alice:00\nalice:11\n", "user 'alice' appears twice");
	refused("\n\n", "no username:hexkey line");
	refused("", "no username:hexkey line");

	char path[512];
	snprintf(path, sizeof(path), "%s/none.psk", dir);
	assert_int_equal(nbd_tls_creds_psk(path, &c, msg, sizeof(msg)), -ENOENT);
	assert_non_null(strstr(msg, "none.psk: No such file"));
	snprintf(path, sizeof(path), "%s/nowhere", dir);
	assert_int_equal(nbd_tls_creds_x509(path, false, &c, msg, sizeof(msg)), -ENOENT);
	assert_non_null(strstr(msg, "ca-cert.pem"));
}

/* ---- a session against a GnuTLS client ---- */

struct client {
	int fd;
	const char *user;
	const char *key_hex;
	int handshake;		/* gnutls result */
	int version;
	int key_update;
	bool ok;		/* every step after the handshake */
	uint8_t *sent, *got;
};

static bool send_all(gnutls_session_t s, const uint8_t *p, size_t n)
{
	while (n) {
		ssize_t r = gnutls_record_send(s, p, n);
		if (r < 0)
			return false;
		p += r;
		n -= (size_t)r;
	}
	return true;
}

static bool recv_all(gnutls_session_t s, uint8_t *p, size_t n)
{
	while (n) {
		ssize_t r = gnutls_record_recv(s, p, n);
		if (r <= 0)
			return false;
		p += r;
		n -= (size_t)r;
	}
	return true;
}

static void *client_main(void *arg)
{
	struct client *cl = arg;
	gnutls_psk_client_credentials_t cred;
	gnutls_session_t s;
	gnutls_datum_t key = { (unsigned char *)cl->key_hex, (unsigned)strlen(cl->key_hex) };
	uint8_t pong[4];

	gnutls_psk_allocate_client_credentials(&cred);
	gnutls_psk_set_client_credentials(cred, cl->user, &key, GNUTLS_PSK_KEY_HEX);
	gnutls_init(&s, GNUTLS_CLIENT);
	gnutls_priority_set_direct(s, "NORMAL:+ECDHE-PSK:+DHE-PSK:+PSK", NULL);
	gnutls_credentials_set(s, GNUTLS_CRD_PSK, cred);
	gnutls_transport_set_int(s, cl->fd);
	do {
		cl->handshake = gnutls_handshake(s);
	} while (cl->handshake < 0 && !gnutls_error_is_fatal(cl->handshake));
	if (cl->handshake == 0) {
		cl->version = gnutls_protocol_get_version(s);
		cl->ok = send_all(s, (const uint8_t *)"ping", 4) && recv_all(s, pong, 4) &&
			 memcmp(pong, "pong", 4) == 0 &&
			 /* transmission: the server is detached from here */
			 send_all(s, cl->sent, BIG / 2);
		if (cl->ok && cl->version == GNUTLS_TLS1_3)
			cl->key_update = gnutls_session_key_update(s, GNUTLS_KU_PEER);
		cl->ok = cl->ok && send_all(s, cl->sent + BIG / 2, BIG / 2) &&
			 recv_all(s, cl->got, BIG) && gnutls_bye(s, GNUTLS_SHUT_WR) == 0;
	}
	gnutls_deinit(s);
	gnutls_psk_free_client_credentials(cred);
	shutdown(cl->fd, SHUT_WR);
	return NULL;
}

/* One turn of a worker's loop: tx -> socket, and socket -> rx when
 * the session wants more. */
static void pump(struct nbd_tls *t, int fd, bool want_read)
{
	struct iovec out = nbd_tls_tx_data(t);

	while (out.iov_len) {
		ssize_t n = send(fd, out.iov_base, out.iov_len, MSG_NOSIGNAL);
		assert_true(n > 0);
		nbd_tls_tx_sent(t, (size_t)n);
		out = nbd_tls_tx_data(t);
	}
	if (want_read && !nbd_tls_rx_ready(t)) {
		struct iovec room = nbd_tls_rx_room(t);
		struct pollfd p = { .fd = fd, .events = POLLIN };
		assert_true(room.iov_len > 0);
		assert_int_equal(poll(&p, 1, 60000), 1);
		ssize_t n = recv(fd, room.iov_base, room.iov_len, 0);
		assert_true(n >= 0);
		nbd_tls_rx_added(t, (size_t)n);
	}
}

static struct nbd_tls_creds *server_creds(void)
{
	struct nbd_tls_creds *c = NULL;
	char msg[512];

	assert_int_equal(nbd_tls_creds_psk(file_with("server.psk", "alice:" KEY_HEX "\n"),
					   &c, msg, sizeof(msg)), 0);
	return c;
}

static void test_session(void **state)
{
	struct nbd_tls_creds *c = server_creds();
	struct client cl = { .user = "alice", .key_hex = KEY_HEX };
	uint8_t *in = malloc(BIG), *reply = malloc(BIG);
	struct nbd_tls *t = NULL;
	pthread_t th;
	uint8_t ping[4];
	int sv[2];
	size_t got = 0;

	cl.sent = malloc(BIG);
	cl.got = malloc(BIG);
	for (size_t i = 0; i < BIG; i++) {
		cl.sent[i] = (uint8_t)(i * 7 + (i >> 12));
		reply[i] = (uint8_t)(i * 13 + 5);
	}
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	cl.fd = sv[0];
	assert_int_equal(pthread_create(&th, NULL, client_main, &cl), 0);

	assert_int_equal(nbd_tls_accept(c, sv[1], net_now_ms() + 60000, &t), 0);
	assert_int_equal(nbd_tls_read(t, ping, 4), 0);
	assert_memory_equal(ping, "ping", 4);
	assert_int_equal(nbd_tls_write(t, "pong", 4), 0);

	assert_int_equal(nbd_tls_detach(t), 0);
	while (got < BIG) {
		ssize_t n = nbd_tls_decrypt(t, in + got, BIG - got);
		if (n == -EAGAIN) {
			pump(t, sv[1], true);
			continue;
		}
		assert_true(n > 0);
		got += (size_t)n;
	}
	assert_memory_equal(in, cl.sent, BIG);

	/* Encrypt in batches, as conn_post_send does, until all is out. */
	for (size_t done = 0; done < BIG;) {
		struct iovec v = { reply + done, BIG - done };
		ssize_t k = nbd_tls_encrypt(t, &v, 1);
		assert_true(k >= 0 && (size_t)k <= NBD_TLS_TX_BATCH);
		assert_int_equal(nbd_tls_encrypt(t, &v, 1), 0); /* not while output waits */
		done += (size_t)k;
		pump(t, sv[1], false);
	}
	/* The client's close_notify reads as the end. */
	for (;;) {
		ssize_t n = nbd_tls_decrypt(t, in, BIG);
		if (n == -EAGAIN) {
			pump(t, sv[1], true);
			continue;
		}
		assert_int_equal(n, 0);
		break;
	}
	pthread_join(th, NULL);
	assert_int_equal(cl.handshake, 0);
	assert_true(cl.ok);
	assert_memory_equal(cl.got, reply, BIG);
	if (cl.version == GNUTLS_TLS1_3)
		assert_int_equal(cl.key_update, 0);
	else
		print_message("TLS 1.2 negotiated: no key update exercised\n");

	nbd_tls_free(t);
	nbd_tls_creds_free(c);
	close(sv[0]);
	close(sv[1]);
	free(in);
	free(reply);
	free(cl.sent);
	free(cl.got);
}

static void refused_client(const char *user, const char *key_hex)
{
	struct nbd_tls_creds *c = server_creds();
	struct client cl = { .user = user, .key_hex = key_hex };
	struct nbd_tls *t = NULL;
	pthread_t th;
	int sv[2];

	cl.sent = calloc(1, BIG);
	cl.got = calloc(1, BIG);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	cl.fd = sv[0];
	assert_int_equal(pthread_create(&th, NULL, client_main, &cl), 0);
	int err = nbd_tls_accept(c, sv[1], net_now_ms() + 60000, &t);
	assert_true(err < 0);
	assert_null(t);
	close(sv[1]); /* the server gives up; the client sees the end */
	pthread_join(th, NULL);
	assert_true(cl.handshake < 0);
	close(sv[0]);
	free(cl.sent);
	free(cl.got);
	nbd_tls_creds_free(c);
}

static void test_refusals(void **state)
{
	refused_client("alice", "ffffffffffffffffffffffffffffffff");
	refused_client("mallory", KEY_HEX);
}

/* A peer that says nothing: the deadline ends the handshake. */
static void test_deadline(void **state)
{
	struct nbd_tls_creds *c = server_creds();
	struct nbd_tls *t = NULL;
	int sv[2];

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	assert_int_equal(nbd_tls_accept(c, sv[1], net_now_ms(), &t), -ETIMEDOUT);
	assert_null(t);
	close(sv[0]);
	close(sv[1]);
	nbd_tls_creds_free(c);
}

static int setup(void **state)
{
	return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
	char cmd[600];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	return system(cmd) == 0 ? 0 : -1;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_psk_files),
		cmocka_unit_test(test_session),
		cmocka_unit_test(test_refusals),
		cmocka_unit_test(test_deadline),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
