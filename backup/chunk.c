/*
 * chunk: chunk files: header, zstd, AES-256-GCM (see chunk.h).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>
#include <zstd.h>

#include "chunk.h"


enum { COMP_NONE = 0, COMP_ZSTD = 1 };
enum { ENC_NONE = 0, ENC_GCM = 1 };

static void put_le32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}

static uint32_t get_le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
	       (uint32_t)p[3] << 24;
}

bool bk_is_zero(const void *buf, size_t len)
{
	const uint8_t *p = buf;

	/* Compare the buffer with itself shifted: one pass, no zero page. */
	if (len == 0)
		return true;
	return p[0] == 0 && (len == 1 || !memcmp(p, p + 1, len - 1));
}

/*
 * A backup writes chunk files far faster than the disk takes them.  Left
 * to the page cache, gigabytes of them sit dirty until the sync before
 * the manifest, which then waits for all of it, and they push the
 * machine's useful cache out.  So each chunk's writeback starts as soon
 * as it is written, and once a worker has more than BK_WRITEBACK_BYTES
 * (or files) under way, it waits for its oldest to be on disk and drops
 * its pages: the backup runs at the disk's pace with a bounded
 * footprint, and the final sync has little left to do.  (Only hints:
 * errors are the sync's to report, bk_repo_sync().)
 */
static void writeback_retire(struct bk_chunk_buf *b)
{
	int fd = b->wb_fd[b->wb_head];

	(void)sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE |
					 SYNC_FILE_RANGE_WAIT_AFTER);
	(void)posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
	close(fd);
	b->wb_bytes -= b->wb_size[b->wb_head];
	b->wb_head = (b->wb_head + 1) % BK_WRITEBACK_FILES;
	b->wb_n--;
}

/* fd was just written whole (size bytes): start its writeback; keep it
 * open until it is retired. */
static void writeback_add(struct bk_chunk_buf *b, int fd, uint64_t size)
{
	(void)sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE);
	while (b->wb_n && (b->wb_n == BK_WRITEBACK_FILES || b->wb_bytes + size > BK_WRITEBACK_BYTES))
		writeback_retire(b);
	unsigned at = (b->wb_head + b->wb_n) % BK_WRITEBACK_FILES;
	b->wb_fd[at] = fd;
	b->wb_size[at] = size;
	b->wb_n++;
	b->wb_bytes += size;
}

void bk_chunk_buf_free(struct bk_chunk_buf *b)
{
	while (b->wb_n)
		writeback_retire(b);
	free(b->buf);
	b->buf = NULL;
	b->cap = 0;
	ZSTD_freeCCtx(b->cctx);
	ZSTD_freeDCtx(b->dctx);
	b->cctx = NULL;
	b->dctx = NULL;
}

static int reserve(struct bk_chunk_buf *b, size_t n)
{
	if (b->cap >= n)
		return 0;
	uint8_t *p = realloc(b->buf, n);
	if (!p)
		return -ENOMEM;
	b->buf = p;
	b->cap = n;
	return 0;
}

void bk_chunk_path(const uint8_t digest[BK_DIGEST_LEN], char path[68])
{
	char hex[2 * BK_DIGEST_LEN + 1];

	bk_hex(digest, BK_DIGEST_LEN, hex);
	memcpy(path, hex, 2);
	path[2] = '/';
	memcpy(path + 3, hex, sizeof(hex));
}

bool bk_chunk_exists(struct bk_repo *r, const uint8_t digest[BK_DIGEST_LEN])
{
	char path[68];
	struct stat st;

	bk_chunk_path(digest, path);
	return fstatat(r->chunksfd, path, &st, 0) == 0 && st.st_size >= BK_CHUNK_HEADER;
}

/* Write a then b at the start of fd, whole. */
static int write_all(int fd, const void *a, size_t alen, const void *b, size_t blen)
{
	struct iovec iov[2] = { { (void *)a, alen }, { (void *)b, blen } };
	struct iovec *v = iov;
	int cnt = 2;

	while (cnt) {
		ssize_t n = writev(fd, v, cnt);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			return -EIO;
		while (cnt && (size_t)n >= v->iov_len) {
			n -= (ssize_t)v->iov_len;
			v++;
			cnt--;
		}
		if (cnt) {
			v->iov_base = (char *)v->iov_base + n;
			v->iov_len -= (size_t)n;
		}
	}
	return 0;
}

int bk_chunk_put(struct bk_repo *r, const uint8_t digest[BK_DIGEST_LEN], const void *data,
		 size_t len, struct bk_chunk_buf *work, uint64_t *stored)
{
	size_t bound = ZSTD_compressBound(len);
	uint8_t *hdr, *payload;
	size_t plen = 0;
	int err;

	*stored = 0;
	if (len > UINT32_MAX)
		return -EINVAL;
	if (bk_chunk_exists(r, digest))
		return 0;
	err = reserve(work, BK_CHUNK_HEADER + (bound > len ? bound : len) + BK_TAG_LEN);
	if (err)
		return err;
	hdr = work->buf;
	payload = hdr + BK_CHUNK_HEADER;
	memset(hdr, 0, BK_CHUNK_HEADER);
	memcpy(hdr, "VTCK", 4);
	hdr[4] = 1;
	hdr[5] = COMP_NONE;
	if (r->compress && !work->cctx && !(work->cctx = ZSTD_createCCtx()))
		return -ENOMEM;
	if (r->compress) {
		size_t z = ZSTD_compressCCtx(work->cctx, payload, bound, data, len,
					     r->zstd_level ? r->zstd_level : BK_ZSTD_LEVEL_DEFAULT);
		if (!ZSTD_isError(z) && z < len) {
			hdr[5] = COMP_ZSTD;
			plen = z;
		}
	}
	if (hdr[5] == COMP_NONE) {
		/* Sealing works in place; a plain chunk is written from the
		 * caller's buffer as it is (one copy fewer per chunk). */
		if (r->keys.encrypted)
			memcpy(payload, data, len);
		else
			payload = (uint8_t *)data;
		plen = len;
	}
	put_le32(hdr + 8, (uint32_t)len);
	if (r->keys.encrypted) {
		hdr[6] = ENC_GCM;
		put_le32(hdr + 12, (uint32_t)(plen + BK_TAG_LEN));
		/* The header is the associated data, with the nonce field
		 * zeroed (the nonce is an input of GCM anyway). */
		uint8_t aad[BK_CHUNK_HEADER];
		memcpy(aad, hdr, BK_CHUNK_HEADER);
		memset(aad + 16, 0, BK_NONCE_LEN);
		err = bk_seal(&r->keys, aad, sizeof(aad), payload, plen, hdr + 16);
		if (err)
			return err;
		plen += BK_TAG_LEN;
	} else {
		put_le32(hdr + 12, (uint32_t)plen);
	}

	/*
	 * Written whole, then named: a reader never finds a part of a
	 * chunk under its name.  Not synced here: bk_repo_sync() syncs all
	 * of them before the manifest that names them, and the pending mark
	 * covers a crash before that (repo.h).  Its writeback starts now,
	 * though.  An unnamed file costs one directory operation, not two
	 * (a create in tmp/ and a rename), and leaves nothing after a crash.
	 */
	char tmp[64] = "", path[68];
	int fd;
	for (;;) {
		fd = bk_repo_anonfile(r);
		if (fd == -EOPNOTSUPP)
			fd = bk_repo_tmpfile(r, tmp);
		if ((fd != -EMFILE && fd != -ENFILE) || !work->wb_n)
			break;
		/* Out of descriptors (many workers): the files kept for
		 * their writeback give theirs back. */
		while (work->wb_n)
			writeback_retire(work);
	}
	if (fd < 0)
		return fd;
	size_t total = BK_CHUNK_HEADER + plen;
	err = write_all(fd, hdr, BK_CHUNK_HEADER, payload, plen);
	bk_chunk_path(digest, path);
	if (!err && tmp[0] && renameat(r->tmpfd, tmp, r->chunksfd, path))
		err = -errno;
	else if (!err && !tmp[0])
		err = bk_repo_link(r, fd, r->chunksfd, path);
	if (err) {
		close(fd);
		if (tmp[0])
			unlinkat(r->tmpfd, tmp, 0);
		return err;
	}
	writeback_add(work, fd, total);
	*stored = total;
	return 0;
}

static int damaged(const char **why, const char *what)
{
	if (why)
		*why = what;
	return -EBADMSG;
}

int bk_chunk_get(struct bk_repo *r, const uint8_t digest[BK_DIGEST_LEN], void *out,
		 size_t cap, size_t *len, struct bk_chunk_buf *work, const char **why)
{
	char path[68];
	struct stat st;
	int err = 0;

	bk_chunk_path(digest, path);
	int fd = openat(r->chunksfd, path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st)) {
		err = -errno;
		close(fd);
		return err;
	}
	size_t size = (size_t)st.st_size;
	if (size < BK_CHUNK_HEADER || size > BK_CHUNK_HEADER + ZSTD_compressBound(BK_MAX_CHUNK) +
						     BK_TAG_LEN) {
		close(fd);
		return damaged(why, "chunk file of an impossible size");
	}
	err = reserve(work, size);
	size_t done = 0;
	while (!err && done < size) {
		ssize_t n = pread(fd, work->buf + done, size - done, (off_t)done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			err = -errno;
		else if (n == 0)
			break;
		else
			done += (size_t)n;
	}
	close(fd);
	if (err)
		return err;
	if (done != size)
		return damaged(why, "chunk file shrank while read");

	uint8_t *hdr = work->buf, *payload = hdr + BK_CHUNK_HEADER;
	uint32_t raw = get_le32(hdr + 8), plen = get_le32(hdr + 12);
	if (memcmp(hdr, "VTCK", 4) || hdr[4] != 1 || hdr[5] > COMP_ZSTD || hdr[6] > ENC_GCM ||
	    hdr[7] || get_le32(hdr + 28))
		return damaged(why, "bad chunk header");
	if ((size_t)plen != size - BK_CHUNK_HEADER)
		return damaged(why, "chunk file truncated or extended");
	if (raw > cap)
		return damaged(why, "chunk longer than the repository's chunk size");
	if ((hdr[6] == ENC_GCM) != r->keys.encrypted)
		return damaged(why, "chunk encryption does not match the repository");
	size_t clen = plen;
	if (hdr[6] == ENC_GCM) {
		uint8_t aad[BK_CHUNK_HEADER];
		memcpy(aad, hdr, BK_CHUNK_HEADER);
		memset(aad + 16, 0, BK_NONCE_LEN);
		if (bk_open(&r->keys, aad, sizeof(aad), payload, plen, hdr + 16, &clen))
			return damaged(why, "chunk does not authenticate (damaged or wrong key)");
	}
	if (hdr[5] == COMP_ZSTD) {
		if (!work->dctx && !(work->dctx = ZSTD_createDCtx()))
			return -ENOMEM;
		size_t n = ZSTD_decompressDCtx(work->dctx, out, cap, payload, clen);
		if (ZSTD_isError(n) || n != raw)
			return damaged(why, "chunk does not decompress to its length");
	} else {
		if (clen != raw)
			return damaged(why, "stored length differs from the chunk's length");
		memcpy(out, payload, raw);
	}
	uint8_t d[BK_DIGEST_LEN];
	err = bk_digest(&r->keys, out, raw, d);
	if (err)
		return err;
	if (memcmp(d, digest, BK_DIGEST_LEN))
		return damaged(why, "contents do not match the chunk's digest");
	*len = raw;
	return 0;
}

int bk_chunk_recheck(struct bk_repo *r, uint64_t *removed)
{
	struct bk_chunk_buf work = { 0 };
	uint8_t *buf = malloc(r->chunk_size);
	int err = buf ? 0 : -ENOMEM;

	*removed = 0;
	for (int sub = 0; sub < 256 && !err; sub++) {
		char name[3];
		snprintf(name, sizeof(name), "%02x", sub);
		int dfd = openat(r->chunksfd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		DIR *d = dfd < 0 ? NULL : fdopendir(dfd);
		if (!d) {
			err = -errno;
			if (dfd >= 0)
				close(dfd);
			break;
		}
		struct dirent *e;
		while ((e = readdir(d))) {
			uint8_t dg[BK_DIGEST_LEN];
			struct stat st;
			size_t len;
			if (strlen(e->d_name) != 2 * BK_DIGEST_LEN ||
			    bk_unhex(e->d_name, dg, BK_DIGEST_LEN) ||
			    fstatat(dfd, e->d_name, &st, 0) ||
			    (st.st_mtime < r->suspect_since && st.st_ctime < r->suspect_since))
				continue;
			if (bk_chunk_get(r, dg, buf, r->chunk_size, &len, &work, NULL) == -EBADMSG) {
				unlinkat(dfd, e->d_name, 0);
				(*removed)++;
			}
		}
		closedir(d);
	}
	free(buf);
	bk_chunk_buf_free(&work);
	if (!err)
		err = bk_repo_sync(r);
	if (!err)
		r->suspect = false;
	return err;
}
