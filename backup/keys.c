/*
 * keys: digests and AES-256-GCM through GnuTLS (see keys.h).
 */
#include <errno.h>
#include <fcntl.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "keys.h"

void bk_hex(const uint8_t *in, size_t n, char *out)
{
	static const char digits[] = "0123456789abcdef";

	for (size_t i = 0; i < n; i++) {
		out[2 * i] = digits[in[i] >> 4];
		out[2 * i + 1] = digits[in[i] & 15];
	}
	out[2 * n] = 0;
}

static int nibble(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

int bk_unhex(const char *in, uint8_t *out, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		int hi = nibble(in[2 * i]), lo = hi < 0 ? -1 : nibble(in[2 * i + 1]);
		if (hi < 0 || lo < 0)
			return -EINVAL;
		out[i] = (uint8_t)(hi << 4 | lo);
	}
	return 0;
}

int bk_random(void *buf, size_t len)
{
	uint8_t *p = buf;

	while (len) {
		ssize_t n = getrandom(p, len, 0);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static int hmac(const uint8_t key[32], const void *data, size_t len, uint8_t out[32])
{
	return gnutls_hmac_fast(GNUTLS_MAC_SHA256, key, 32, data, len, out) ? -EIO : 0;
}

void bk_keys_none(struct bk_keys *k)
{
	memset(k, 0, sizeof(*k));
}

int bk_keys_load(const char *path, struct bk_keys *k)
{
	uint8_t raw[80], master[32];
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return -errno;
	n = read(fd, raw, sizeof(raw));
	int err = n < 0 ? -errno : 0;
	close(fd);
	if (err)
		return err;
	while (n > 0 && (raw[n - 1] == '\n' || raw[n - 1] == '\r' || raw[n - 1] == ' '))
		n--;
	if (n == 64) {
		raw[64] = 0;
		if (bk_unhex((char *)raw, master, 32))
			return -EINVAL;
	} else if (n == 32) {
		memcpy(master, raw, 32);
	} else {
		return -EINVAL;
	}
	memset(k, 0, sizeof(*k));
	k->encrypted = true;
	static const char enc[] = "voltrack-backup encryption", id[] = "voltrack-backup chunk id",
			  chk[] = "voltrack-backup key check";
	err = hmac(master, enc, strlen(enc), k->enc_key);
	if (!err)
		err = hmac(master, id, strlen(id), k->id_key);
	if (!err)
		err = hmac(master, chk, strlen(chk), k->check);
	memset(master, 0, sizeof(master));
	memset(raw, 0, sizeof(raw));
	return err;
}

int bk_sha256(const void *data, size_t len, uint8_t out[BK_DIGEST_LEN])
{
	return gnutls_hash_fast(GNUTLS_DIG_SHA256, data, len, out) ? -EIO : 0;
}

int bk_digest(const struct bk_keys *k, const void *data, size_t len,
	      uint8_t out[BK_DIGEST_LEN])
{
	return k->encrypted ? hmac(k->id_key, data, len, out) : bk_sha256(data, len, out);
}

static int aead_init(const struct bk_keys *k, gnutls_aead_cipher_hd_t *h)
{
	gnutls_datum_t key = { .data = (unsigned char *)k->enc_key, .size = 32 };

	return gnutls_aead_cipher_init(h, GNUTLS_CIPHER_AES_256_GCM, &key) ? -EIO : 0;
}

int bk_seal(const struct bk_keys *k, const void *aad, size_t aadlen, uint8_t *buf,
	    size_t len, uint8_t nonce[BK_NONCE_LEN])
{
	gnutls_aead_cipher_hd_t h;
	size_t outlen = len + BK_TAG_LEN;
	int err = bk_random(nonce, BK_NONCE_LEN);

	if (!err)
		err = aead_init(k, &h);
	if (err)
		return err;
	/* GnuTLS encrypts in place when the buffers are the same. */
	if (gnutls_aead_cipher_encrypt(h, nonce, BK_NONCE_LEN, aad, aadlen, BK_TAG_LEN, buf, len,
				       buf, &outlen) ||
	    outlen != len + BK_TAG_LEN)
		err = -EIO;
	gnutls_aead_cipher_deinit(h);
	return err;
}

int bk_open(const struct bk_keys *k, const void *aad, size_t aadlen, uint8_t *buf,
	    size_t len, const uint8_t nonce[BK_NONCE_LEN], size_t *plain)
{
	gnutls_aead_cipher_hd_t h;
	size_t outlen = len;
	int err;

	if (len < BK_TAG_LEN)
		return -EBADMSG;
	err = aead_init(k, &h);
	if (err)
		return err;
	if (gnutls_aead_cipher_decrypt(h, nonce, BK_NONCE_LEN, aad, aadlen, BK_TAG_LEN, buf, len,
				       buf, &outlen))
		err = -EBADMSG;
	gnutls_aead_cipher_deinit(h);
	*plain = outlen;
	return err;
}
