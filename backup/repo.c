/*
 * repo: layout, config, lock and atomic writes of a backup repository
 * (see repo.h and doc/backup-format.md).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "repo.h"

static int write_all(int fd, const void *data, size_t len)
{
	const char *p = data;

	while (len) {
		ssize_t n = write(fd, p, len);
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

int bk_read_file(int dirfd, const char *name, char **data, size_t *len)
{
	int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC);
	struct stat st;
	char *buf;
	size_t got = 0;

	if (fd < 0)
		return -errno;
	if (fstat(fd, &st)) {
		int err = -errno;
		close(fd);
		return err;
	}
	buf = malloc((size_t)st.st_size + 1);
	if (!buf) {
		close(fd);
		return -ENOMEM;
	}
	while (got < (size_t)st.st_size) {
		ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	close(fd);
	buf[got] = 0;
	*data = buf;
	*len = got;
	return 0;
}

/* A name in tmp/ that no other writer of this process uses. */
static void tmp_name(char name[64])
{
	static atomic_uint seq;

	snprintf(name, 64, "%d.%u", (int)getpid(), atomic_fetch_add(&seq, 1));
}

int bk_repo_tmpfile(struct bk_repo *r, char name[64])
{
	for (int tries = 0; tries < 100; tries++) {
		tmp_name(name);
		int fd = openat(r->tmpfd, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
		if (fd >= 0 || errno != EEXIST)
			return fd >= 0 ? fd : -errno;
	}
	return -EEXIST;
}

int bk_repo_anonfile(struct bk_repo *r)
{
	int fd = openat(r->tmpfd, ".", O_TMPFILE | O_WRONLY | O_CLOEXEC, 0644);

	if (fd >= 0)
		return fd;
	/* Older kernels and some filesystems say "no" in several ways. */
	return errno == EISDIR || errno == ENOENT || errno == EOPNOTSUPP || errno == EINVAL ?
		       -EOPNOTSUPP : -errno;
}

/* linkat() of an open file: by its descriptor where we may (it takes
 * CAP_DAC_READ_SEARCH), else through /proc. */
static int link_fd(int fd, int dirfd, const char *name)
{
	char proc[40];

	if (!linkat(fd, "", dirfd, name, AT_EMPTY_PATH))
		return 0;
	if (errno != ENOENT && errno != EPERM)
		return -errno;
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
	return linkat(AT_FDCWD, proc, dirfd, name, AT_SYMLINK_FOLLOW) ? -errno : 0;
}

int bk_repo_link(struct bk_repo *r, int fd, int dirfd, const char *name)
{
	char tmp[64];
	int err = link_fd(fd, dirfd, name);

	if (err != -EEXIST)
		return err;
	/* Something (a torn leftover, say) has the name: link under tmp/
	 * and rename over it, so that the name never goes missing. */
	for (int tries = 0; tries < 100; tries++) {
		tmp_name(tmp);
		err = link_fd(fd, r->tmpfd, tmp);
		if (err != -EEXIST)
			break;
	}
	if (err)
		return err;
	if (renameat(r->tmpfd, tmp, dirfd, name)) {
		err = -errno;
		unlinkat(r->tmpfd, tmp, 0);
	}
	return err;
}

int bk_repo_write_atomic(struct bk_repo *r, int dirfd, const char *name, const void *data,
			 size_t len)
{
	char tmp[64];
	int fd = bk_repo_tmpfile(r, tmp), err;

	if (fd < 0)
		return fd;
	err = write_all(fd, data, len);
	if (!err && fsync(fd))
		err = -errno;
	close(fd);
	if (!err && renameat(r->tmpfd, tmp, dirfd, name))
		err = -errno;
	if (!err && fsync(dirfd))
		err = -errno;
	if (err)
		unlinkat(r->tmpfd, tmp, 0);
	return err;
}

static int boot_id(struct bk_repo *r, char out[40])
{
	int fd = open(r->boot_id_path ? r->boot_id_path : "/proc/sys/kernel/random/boot_id",
		      O_RDONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return -errno;
	n = read(fd, out, 39);
	close(fd);
	if (n <= 0)
		return -EIO;
	out[n] = 0;
	out[strcspn(out, "\n")] = 0;
	return 0;
}

int bk_repo_mark_pending(struct bk_repo *r)
{
	char id[40], text[96];
	int err = boot_id(r, id);

	if (err)
		return err;
	/* A dead writer's chunks of this boot are no more durable than
	 * ours: the mark keeps the older time. */
	long long since = r->pending_since ? r->pending_since : (long long)time(NULL);
	int n = snprintf(text, sizeof(text), "%s %lld\n", id, since);
	return bk_repo_write_atomic(r, r->dirfd, "pending", text, (size_t)n);
}

int bk_repo_sync(struct bk_repo *r)
{
	/* One call covers every chunk file and every rename into chunks/. */
	if (syncfs(r->dirfd))
		return -errno;
	if (unlinkat(r->dirfd, "pending", 0) && errno != ENOENT)
		return -errno;
	return fsync(r->dirfd) ? -errno : 0;
}

/* Read the pending mark a dead writer left: suspect when it names
 * another boot. */
static int check_pending(struct bk_repo *r)
{
	char *text, id[40], mark[64];
	size_t len;
	long long since;
	int err = bk_read_file(r->dirfd, "pending", &text, &len);

	if (err == -ENOENT)
		return 0;
	if (err)
		return err;
	bool parsed = sscanf(text, "%63s %lld", mark, &since) == 2;
	free(text);
	err = boot_id(r, id);
	if (err)
		return err;
	if (!parsed || strcmp(mark, id)) {
		r->suspect = true;
		/* An unreadable mark: every chunk is suspect. */
		r->suspect_since = parsed ? since - 2 : 0;
	} else {
		r->pending_since = since;
	}
	return 0;
}

static int parse_config(struct bk_repo *r, const char *text)
{
	const char *p = text;
	char key[32], val[128];
	bool magic = false, have_id = false, have_chunk = false, enc = false, check = false;
	uint8_t chk[32];

	while (*p) {
		const char *nl = strchr(p, '\n');
		size_t n = nl ? (size_t)(nl - p) : strlen(p);
		char line[192];
		if (n >= sizeof(line))
			return -EBADMSG;
		memcpy(line, p, n);
		line[n] = 0;
		p += n + (nl ? 1 : 0);
		if (sscanf(line, "%31s %127s", key, val) != 2)
			return -EBADMSG;
		if (!strcmp(key, "voltrack-backup-repository")) {
			if (strcmp(val, "1"))
				return -EPROTONOSUPPORT;
			magic = true;
		} else if (!strcmp(key, "id")) {
			if (strlen(val) != 16)
				return -EBADMSG;
			memcpy(r->id, val, 17);
			have_id = true;
		} else if (!strcmp(key, "chunk-size")) {
			char *end;
			unsigned long v = strtoul(val, &end, 10);
			if (*end || v < BK_MIN_CHUNK || v > BK_MAX_CHUNK || (v & (v - 1)))
				return -EBADMSG;
			r->chunk_size = (uint32_t)v;
			have_chunk = true;
		} else if (!strcmp(key, "compression")) {
			if (strcmp(val, "zstd") && strcmp(val, "none"))
				return -EBADMSG;
			r->compress = !strcmp(val, "zstd");
		} else if (!strcmp(key, "encryption")) {
			if (strcmp(val, "none") && strcmp(val, "aes-256-gcm"))
				return -EBADMSG;
			enc = !strcmp(val, "aes-256-gcm");
		} else if (!strcmp(key, "key-check")) {
			if (strlen(val) != 64 || bk_unhex(val, chk, 32))
				return -EBADMSG;
			check = true;
		}
		/* Unknown keys are for later versions to add; ignored. */
	}
	if (!magic || !have_id || !have_chunk || (enc && !check))
		return -EBADMSG;
	r->keys.encrypted = enc;
	if (enc)
		memcpy(r->keys.check, chk, 32);
	return 0;
}

static int open_dirs(struct bk_repo *r)
{
	r->chunksfd = openat(r->dirfd, "chunks", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	r->backupsfd = openat(r->dirfd, "backups", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	r->tmpfd = openat(r->dirfd, "tmp", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	return r->chunksfd < 0 || r->backupsfd < 0 || r->tmpfd < 0 ? -EBADMSG : 0;
}

static struct bk_repo *repo_alloc(const char *path)
{
	struct bk_repo *r = calloc(1, sizeof(*r));

	if (!r)
		return NULL;
	r->path = strdup(path);
	r->dirfd = r->chunksfd = r->backupsfd = r->tmpfd = r->lockfd = -1;
	if (!r->path) {
		free(r);
		return NULL;
	}
	return r;
}

void bk_repo_close(struct bk_repo *r)
{
	if (!r)
		return;
	int fds[] = { r->dirfd, r->chunksfd, r->backupsfd, r->tmpfd, r->lockfd };
	for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++)
		if (fds[i] >= 0)
			close(fds[i]);
	memset(&r->keys, 0, sizeof(r->keys));
	free(r->path);
	free(r);
}

int bk_repo_open(const char *path, const char *key_file, struct bk_repo **out)
{
	struct bk_repo *r = repo_alloc(path);
	char *text = NULL;
	size_t len;
	int err;

	if (!r)
		return -ENOMEM;
	r->dirfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	err = r->dirfd < 0 ? -errno : bk_read_file(r->dirfd, "config", &text, &len);
	if (!err)
		err = parse_config(r, text);
	free(text);
	if (!err)
		err = open_dirs(r);
	if (!err && r->keys.encrypted) {
		struct bk_keys k;
		if (!key_file)
			err = -ENOKEY;
		else if (!(err = bk_keys_load(key_file, &k)))
			err = memcmp(k.check, r->keys.check, 32) ? -EKEYREJECTED : 0;
		if (!err)
			r->keys = k;
		memset(&k, 0, sizeof(k));
	} else if (!err) {
		bk_keys_none(&r->keys);
	}
	if (err) {
		bk_repo_close(r);
		return err;
	}
	*out = r;
	return 0;
}

static int make_layout(int dirfd)
{
	if (mkdirat(dirfd, "chunks", 0755) && errno != EEXIST)
		return -errno;
	int cfd = openat(dirfd, "chunks", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (cfd < 0)
		return -errno;
	for (int i = 0; i < 256; i++) {
		char sub[3];
		snprintf(sub, sizeof(sub), "%02x", i);
		if (mkdirat(cfd, sub, 0755) && errno != EEXIST) {
			int err = -errno;
			close(cfd);
			return err;
		}
	}
	int err = fsync(cfd) ? -errno : 0;
	close(cfd);
	if (!err && mkdirat(dirfd, "backups", 0755) && errno != EEXIST)
		err = -errno;
	if (!err && mkdirat(dirfd, "tmp", 0755) && errno != EEXIST)
		err = -errno;
	if (!err && fsync(dirfd))
		err = -errno;
	return err;
}

int bk_repo_create(const char *path, const struct bk_repo_params *params,
		   struct bk_repo **out, bool *created)
{
	int err = bk_repo_open(path, params->key_file, out);

	*created = false;
	if (err != -ENOENT)
		return err;
	uint32_t cs = params->chunk_size ? params->chunk_size : BK_DEFAULT_CHUNK;
	if (cs < BK_MIN_CHUNK || cs > BK_MAX_CHUNK || (cs & (cs - 1)))
		return -EINVAL;
	struct bk_keys k;
	bk_keys_none(&k);
	if (params->key_file && (err = bk_keys_load(params->key_file, &k)))
		return err;
	if (mkdir(path, 0755) && errno != EEXIST)
		return -errno;
	struct bk_repo *r = repo_alloc(path);
	if (!r)
		return -ENOMEM;
	r->dirfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	err = r->dirfd < 0 ? -errno : make_layout(r->dirfd);
	if (!err)
		err = open_dirs(r);
	uint8_t idb[8];
	if (!err)
		err = bk_random(idb, sizeof(idb));
	if (!err) {
		char cfg[512], chk[65];
		bk_hex(idb, 8, r->id);
		bk_hex(k.check, 32, chk);
		int n = snprintf(cfg, sizeof(cfg),
				 "voltrack-backup-repository 1\nid %s\nchunk-size %u\n"
				 "compression %s\nencryption %s\n%s%s%s",
				 r->id, cs, params->no_compress ? "none" : "zstd",
				 k.encrypted ? "aes-256-gcm" : "none",
				 k.encrypted ? "key-check " : "", k.encrypted ? chk : "",
				 k.encrypted ? "\n" : "");
		/* The config last: a directory without one is no repository
		 * yet, and creating it again finishes the job. */
		err = bk_repo_write_atomic(r, r->dirfd, "config", cfg, (size_t)n);
	}
	bk_repo_close(r);
	memset(&k, 0, sizeof(k));
	if (err)
		return err;
	*created = true;
	return bk_repo_open(path, params->key_file, out);
}

int bk_repo_lock(struct bk_repo *r, bool wait)
{
	if (r->lockfd >= 0)
		return 0;
	int fd = openat(r->dirfd, "lock", O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	while (flock(fd, LOCK_EX | (wait ? 0 : LOCK_NB))) {
		if (errno == EINTR)
			continue;
		int err = errno == EWOULDBLOCK ? -EBUSY : -errno;
		close(fd);
		return err;
	}
	r->lockfd = fd;
	int err = check_pending(r);
	if (err)
		return err;
	/* Whatever is in tmp/ belongs to a writer that died. */
	DIR *d = fdopendir(dup(r->tmpfd));
	if (!d)
		return 0;
	struct dirent *e;
	rewinddir(d);
	while ((e = readdir(d)))
		if (e->d_name[0] != '.')
			unlinkat(r->tmpfd, e->d_name, 0);
	closedir(d);
	return 0;
}
