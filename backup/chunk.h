/*
 * chunk: the chunk store of a repository (doc/backup-format.md, "Chunk
 * files").
 *
 * bk_chunk_put() stores contents under their digest unless a chunk of
 * that digest exists (a complete file: chunks are written to a temporary
 * name and renamed into place; bk_repo_sync() makes them durable before
 * a manifest names them); bk_chunk_get() reads one back and checks it
 * whole: header, tag, length and digest.  Both are thread-safe and keep
 * their working buffers and zstd contexts in a bk_chunk_buf the caller
 * keeps per thread, so steady-state I/O does not allocate.
 * Return 0 or -errno: -ENOENT (no such chunk), -EBADMSG (damaged: the
 * message in why).
 */
#ifndef VOLTRACK_BACKUP_CHUNK_H
#define VOLTRACK_BACKUP_CHUNK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "repo.h"

#define BK_CHUNK_HEADER 32

/*
 * zstd's level, by default 1, as Proxmox Backup Server uses.  On 64 MiB
 * of shared libraries here: level 1 packs 2.44x at 366 MB/s, level 3
 * 2.69x at 229 MB/s; on fio's default write buffers 1.13x either way, at
 * 207 against 113 MB/s.  A backup spends its CPU on compression, so the
 * speed wins.  The fast levels (negative) go further: -1 packs fio's
 * buffers as well at 2.6 times the speed, binaries and text 10-15% less
 * well (backup --compress-level).  Readers need not know the level.
 */
#define BK_ZSTD_LEVEL_DEFAULT 1
#define BK_ZSTD_LEVEL_MIN (-7)
#define BK_ZSTD_LEVEL_MAX 19

#define BK_WRITEBACK_FILES 64
#define BK_WRITEBACK_BYTES (32u << 20)

struct bk_chunk_buf {
	uint8_t *buf;
	size_t cap;
	/* Made on first use, kept: a fresh context per chunk costs more than
	 * compressing a 64 KiB chunk does. */
	struct ZSTD_CCtx_s *cctx;
	struct ZSTD_DCtx_s *dctx;
	/* Chunk files this worker wrote last, still open while the disk
	 * writes them back: a ring, oldest at wb_head (see chunk.c). */
	int wb_fd[BK_WRITEBACK_FILES];
	uint64_t wb_size[BK_WRITEBACK_FILES];
	unsigned wb_head, wb_n;
	uint64_t wb_bytes;
};

/* Also waits for the writeback of the files above and closes them. */
void bk_chunk_buf_free(struct bk_chunk_buf *b);

/* The file name of a digest: "XX/HEX" (68 bytes with the NUL). */
void bk_chunk_path(const uint8_t digest[BK_DIGEST_LEN], char path[68]);

/*
 * Store data[0, len) under digest (computed by the caller with
 * bk_digest()).  *stored is the number of bytes written to the
 * repository, 0 when the chunk was already there.
 */
int bk_chunk_put(struct bk_repo *r, const uint8_t digest[BK_DIGEST_LEN], const void *data,
		 size_t len, struct bk_chunk_buf *work, uint64_t *stored);

/* Whether a chunk of that digest is stored. */
bool bk_chunk_exists(struct bk_repo *r, const uint8_t digest[BK_DIGEST_LEN]);

/*
 * Read the chunk into out (room for cap bytes); *len is its length.
 * Checks everything; on -EBADMSG, why (if not NULL) says what was
 * wrong, in a few words.
 */
int bk_chunk_get(struct bk_repo *r, const uint8_t digest[BK_DIGEST_LEN], void *out,
		 size_t cap, size_t *len, struct bk_chunk_buf *work, const char **why);

/*
 * After bk_repo_lock() found r->suspect: read every chunk file changed
 * since r->suspect_since and remove those that are not sound, so that
 * none is trusted by its name alone; then clear the mark.  *removed
 * counts them.
 */
int bk_chunk_recheck(struct bk_repo *r, uint64_t *removed);

/* Whether buf[0, len) is all zeroes. */
bool bk_is_zero(const void *buf, size_t len);

#endif
