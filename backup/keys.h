/*
 * keys: chunk digests and chunk encryption (doc/backup-format.md).
 *
 * A bk_keys holds what a repository's chunks need: whether they are
 * encrypted, and if so the encryption key and the id key derived from
 * the master key file.  Without encryption a digest is SHA-256 of the
 * contents; with it, HMAC-SHA256 under the id key.  Sealing is
 * AES-256-GCM with a random nonce.  All functions are thread-safe on a
 * shared, read-only bk_keys.  They return 0 or -errno (-EBADMSG when a
 * sealed payload does not authenticate).
 */
#ifndef VOLTRACK_BACKUP_KEYS_H
#define VOLTRACK_BACKUP_KEYS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BK_DIGEST_LEN 32
#define BK_NONCE_LEN 12
#define BK_TAG_LEN 16

struct bk_keys {
	bool encrypted;
	uint8_t enc_key[32];
	uint8_t id_key[32];
	uint8_t check[32]; /* the key-check value of the config file */
};

/* Read a key file (32 raw bytes or 64 hex digits) and derive the keys. */
int bk_keys_load(const char *path, struct bk_keys *k);
/* Unencrypted: digests are plain SHA-256. */
void bk_keys_none(struct bk_keys *k);

int bk_digest(const struct bk_keys *k, const void *data, size_t len,
	      uint8_t out[BK_DIGEST_LEN]);
/* SHA-256, for manifests' end lines. */
int bk_sha256(const void *data, size_t len, uint8_t out[BK_DIGEST_LEN]);

/* Encrypt buf[0, len) in place and write the tag at buf + len (room for
 * BK_TAG_LEN more bytes); nonce is filled with fresh random bytes. */
int bk_seal(const struct bk_keys *k, const void *aad, size_t aadlen, uint8_t *buf,
	    size_t len, uint8_t nonce[BK_NONCE_LEN]);
/* Decrypt buf[0, len) (tag included) in place; *plain = len - BK_TAG_LEN. */
int bk_open(const struct bk_keys *k, const void *aad, size_t aadlen, uint8_t *buf,
	    size_t len, const uint8_t nonce[BK_NONCE_LEN], size_t *plain);

/* Random bytes from the system. */
int bk_random(void *buf, size_t len);

/* Lower-case hex of n bytes into out (2n + 1 bytes); parse it back. */
void bk_hex(const uint8_t *in, size_t n, char *out);
int bk_unhex(const char *in, uint8_t *out, size_t n);

#endif
