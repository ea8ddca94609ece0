/*
 * repo: a backup repository directory (doc/backup-format.md): its
 * config, its writer lock, and the one way files are made durable in it.
 *
 * bk_repo_open() reads the config; bk_repo_create() makes a new
 * repository (or opens it when one exists).  Writers call
 * bk_repo_lock() before adding or removing anything: an exclusive
 * flock on REPO/lock, held until bk_repo_close(); it also clears what
 * a killed writer left in tmp/.  Readers take no lock.
 *
 * bk_repo_write_atomic() is the commit primitive: write to tmp/, fsync,
 * rename into place, fsync the directory.  A reader sees the old state
 * or the new file whole, also after a crash.
 *
 * A bk_repo is used by several threads at once for chunk I/O; nothing
 * in it changes after open except through the lock calls.
 * Functions return 0 or -errno.
 */
#ifndef VOLTRACK_BACKUP_REPO_H
#define VOLTRACK_BACKUP_REPO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "keys.h"

#define BK_DEFAULT_CHUNK (4u << 20)
#define BK_MIN_CHUNK (64u << 10)
#define BK_MAX_CHUNK (64u << 20)

struct bk_repo {
	char *path;
	int dirfd;		/* REPO */
	int chunksfd;		/* REPO/chunks */
	int backupsfd;		/* REPO/backups */
	int tmpfd;		/* REPO/tmp */
	int lockfd;		/* REPO/lock while locked, else -1 */
	char id[17];
	uint32_t chunk_size;
	bool compress;
	/* This writer's zstd level (not recorded: readers need none). */
	int zstd_level;
	struct bk_keys keys;
	/* Set by bk_repo_lock() when a writer died with chunks not yet
	 * synced and the machine has restarted since: chunk files written
	 * from this time (seconds) on may be torn. */
	bool suspect;
	int64_t suspect_since;
	int64_t pending_since;		/* a dead writer's mark of this boot, else 0 */
	const char *boot_id_path;	/* NULL: the kernel's; tests set it */
};

struct bk_repo_params {
	uint32_t chunk_size;	/* 0: BK_DEFAULT_CHUNK */
	bool no_compress;
	const char *key_file;	/* NULL: not encrypted */
};

/*
 * Open REPO.  key_file is needed for an encrypted repository and is
 * checked against the config (-EKEYREJECTED when it does not match,
 * -ENOKEY when missing).  -ENOENT when there is no repository there,
 * -EBADMSG when the config is damaged.
 */
int bk_repo_open(const char *path, const char *key_file, struct bk_repo **out);
/* Open REPO, creating it with params when it does not exist.  *created
 * says which happened.  An existing repository keeps its own settings. */
int bk_repo_create(const char *path, const struct bk_repo_params *params,
		   struct bk_repo **out, bool *created);
void bk_repo_close(struct bk_repo *r);

/* Take the writer lock, waiting for another writer when wait is set
 * (-EBUSY otherwise); then clear tmp/. */
int bk_repo_lock(struct bk_repo *r, bool wait);

/* Write data as name in the directory dirfd of the repository,
 * atomically and durably (tmp/, fsync, rename, directory fsync). */
int bk_repo_write_atomic(struct bk_repo *r, int dirfd, const char *name, const void *data,
			 size_t len);
/* A unique temporary file in tmp/ for writing (its name into name, 64
 * bytes); O_CLOEXEC.  Returns the fd or -errno. */
int bk_repo_tmpfile(struct bk_repo *r, char name[64]);
/*
 * An unnamed file (O_TMPFILE) for writing, or -EOPNOTSUPP where the
 * filesystem has none (then use bk_repo_tmpfile).  A crash before
 * bk_repo_link() leaves nothing behind, and creating it touches no
 * directory, so writers do not contend on tmp/.
 */
int bk_repo_anonfile(struct bk_repo *r);
/* Give the unnamed file fd the name `name` in dirfd, replacing what is
 * there (as a rename would).  Not durable by itself. */
int bk_repo_link(struct bk_repo *r, int fd, int dirfd, const char *name);

/*
 * Chunk files are not synced one by one (a disk flush per chunk would
 * cost a backup most of its time); instead a writer marks the
 * repository before its first chunk (REPO/pending: the kernel's boot
 * id and the time, durably) and bk_repo_sync() before its manifest
 * makes every chunk durable at once (syncfs) and clears the mark.  A
 * writer that finds the mark under the same boot id knows only a
 * process died: the page cache kept every chunk.  Under another boot
 * id, chunks named since the mark's time may be torn, and
 * bk_repo_lock() sets r->suspect for the caller to check them
 * (bk_chunk_recheck()) before any is trusted by name.
 */
int bk_repo_mark_pending(struct bk_repo *r);
/* Make every chunk written so far durable (syncfs) and clear the mark. */
int bk_repo_sync(struct bk_repo *r);

/* Read a whole file relative to dirfd into a malloc'd buffer. */
int bk_read_file(int dirfd, const char *name, char **data, size_t *len);

#endif
