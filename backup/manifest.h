/*
 * manifest: one backup's manifest (doc/backup-format.md, "Manifests"):
 * what was backed up, from where and when, and the digest of every
 * chunk, holes marked.
 *
 * bk_manifest_write() commits a manifest atomically and durably (after
 * the caller has made its chunks durable); bk_manifest_read() parses one
 * strictly and refuses it whole (-EBADMSG) unless its end checksum
 * matches.  bk_manifest_list() gives the IDs of the committed backups,
 * oldest first.  Functions return 0 or -errno.
 */
#ifndef VOLTRACK_BACKUP_MANIFEST_H
#define VOLTRACK_BACKUP_MANIFEST_H

#include <stdbool.h>
#include <stdint.h>

#include "keys.h"
#include "repo.h"

#define BK_ID_MAX 32
#define BK_FIELD_MAX 256

struct bk_entry {
	uint8_t digest[BK_DIGEST_LEN];
	bool hole;
};

struct bk_manifest {
	char id[BK_ID_MAX];
	uint64_t created;		/* seconds since the epoch, UTC */
	bool full;
	char parent[BK_ID_MAX];		/* "" for none */
	char reason[BK_FIELD_MAX];	/* why full; "" when not asked otherwise */
	char source[BK_FIELD_MAX];
	char volume_uuid[64];		/* "" when unknown */
	char generation[64];
	char checkpoint[BK_FIELD_MAX];
	uint64_t size;
	uint32_t chunk_size;
	uint64_t bytes_read;
	uint64_t nchunks;
	struct bk_entry *chunks;	/* nchunks entries, malloc'd */
};

/* Allocate m->chunks for size and chunk_size (all holes). */
int bk_manifest_alloc(struct bk_manifest *m, uint64_t size, uint32_t chunk_size);
void bk_manifest_free(struct bk_manifest *m);

/* Pick a fresh ID for a backup created at `created` (into m->id). */
int bk_manifest_new_id(struct bk_repo *r, uint64_t created, struct bk_manifest *m);

int bk_manifest_write(struct bk_repo *r, const struct bk_manifest *m);
/* On -EBADMSG, why (BK_FIELD_MAX bytes) says what is wrong. */
int bk_manifest_read(struct bk_repo *r, const char *id, struct bk_manifest *m, char *why);

/* IDs of every committed backup, oldest first; free with
 * bk_manifest_list_free().  Files in backups/ that are not IDs are
 * skipped. */
int bk_manifest_list(struct bk_repo *r, char ***ids, size_t *n);
void bk_manifest_list_free(char **ids, size_t n);

/* Resolve "latest" (the newest ID) or check that id exists; the result
 * is copied into out. */
int bk_manifest_resolve(struct bk_repo *r, const char *name, char out[BK_ID_MAX]);

/* Bytes of the volume that are not holes. */
uint64_t bk_manifest_data_bytes(const struct bk_manifest *m);

#endif
