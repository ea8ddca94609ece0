/*
 * faultfs: directory entries.  See faultfs.h for the model.
 *
 * Every change is made to the real directory at once, and remembered
 * with what undoing it needs.  An inode the change took a name from (the
 * file a rename replaced, the file unlinked) is kept linked under a
 * hidden name in the same directory, so that an undo can put it back;
 * renames within one directory cannot fail for want of space or cross a
 * file system, so undoing and redoing are renames too.
 */
#include "faultfs.h"
#include "faultfs_impl.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum entry_kind {
	E_CREATE,	/* name made (a file, or with is_dir a directory) */
	E_RENAME,	/* from renamed to name; hold: what name was, if anything */
	E_UNLINK,	/* name removed; hold: the file */
};

struct fault_entry {
	struct fault_file *dir;
	enum entry_kind kind;
	bool is_dir;
	char name[NAME_MAX + 1];
	char from[NAME_MAX + 1];
	char hold[48];		/* hidden name keeping an inode, or "" */
	struct fault_entry *next, *prev;
};

static void new_hold(struct faultfs *ff, char *hold, size_t size)
{
	snprintf(hold, size, ".faultfs-%lx-%u", (unsigned long)((uintptr_t)ff & 0xffffff),
		 ++ff->holds);
}

/* A record for a change about to be made in dirfd; NULL and *err on
 * failure.  Made before the change, so that a change made is always
 * remembered. */
static struct fault_entry *entry_new(struct faultfs *ff, int dirfd, enum entry_kind kind,
				     const char *name, int *err)
{
	struct fault_entry *e = calloc(1, sizeof(*e));

	*err = -ENOMEM;
	if (!e)
		return NULL;
	if (strlen(name) > NAME_MAX) {
		*err = -ENAMETOOLONG;
		free(e);
		return NULL;
	}
	e->dir = ff_file_get(ff, dirfd, err);
	if (!e->dir) {
		free(e);
		return NULL;
	}
	e->kind = kind;
	snprintf(e->name, sizeof(e->name), "%s", name);
	return e;
}

static void entry_free(struct faultfs *ff, struct fault_entry *e)
{
	ff_file_put(ff, e->dir);
	free(e);
}

static void entry_append(struct faultfs *ff, struct fault_entry *e)
{
	e->prev = ff->etail;
	if (ff->etail)
		ff->etail->next = e;
	else
		ff->ehead = e;
	ff->etail = e;
	ff->entry_changes++;
}

static void entry_unlink(struct faultfs *ff, struct fault_entry *e)
{
	if (e->prev)
		e->prev->next = e->next;
	else
		ff->ehead = e->next;
	if (e->next)
		e->next->prev = e->prev;
	else
		ff->etail = e->prev;
	entry_free(ff, e);
}

/* The change is durable: the inode it took a name from is not needed. */
static void entry_settle(struct faultfs *ff, struct fault_entry *e)
{
	if (e->kind != E_CREATE && e->hold[0])
		unlinkat(e->dir->fd, e->hold, 0);
	entry_unlink(ff, e);
}

static bool entry_names(const struct fault_entry *e, const char *name)
{
	return strcmp(e->name, name) == 0 || (e->kind == E_RENAME && strcmp(e->from, name) == 0);
}

bool ff_entries_pending(struct faultfs *ff, const struct stat *dir, const char *name)
{
	for (struct fault_entry *e = ff->ehead; e; e = e->next)
		if (ff_same_file(e->dir, dir) && (!name || entry_names(e, name)))
			return true;
	return false;
}

unsigned faultfs_pending_entries(struct faultfs *ff, int dirfd)
{
	struct stat st;
	unsigned n = 0;

	if (dirfd >= 0 && fstat(dirfd, &st) < 0)
		return 0;
	pthread_mutex_lock(&ff->lock);
	for (struct fault_entry *e = ff->ehead; e; e = e->next)
		n += dirfd < 0 || ff_same_file(e->dir, &st);
	pthread_mutex_unlock(&ff->lock);
	return n;
}

/* ---- the operations ---- */

static struct fault *take(struct faultfs *ff, enum fault_op op, int dirfd, const char *name,
			  const char *name2)
{
	struct fault_call c = { .op = op, .fd = dirfd, .name = name, .name2 = name2 };
	return ff_fault_take(ff, &c);
}

int ff_openat(const struct vt_fsops *ops, int dirfd, const char *name, int flags)
{
	struct faultfs *ff = (struct faultfs *)ops;
	struct fault_entry *e = NULL;
	struct stat st;
	int fd, err = 0;

	pthread_mutex_lock(&ff->lock);
	struct fault *f = take(ff, FAULT_OPEN, dirfd, name, NULL);
	if (f) {
		pthread_mutex_unlock(&ff->lock);
		return f->spec.err;
	}
	if ((flags & O_CREAT) && fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0 &&
	    errno == ENOENT) {
		e = entry_new(ff, dirfd, E_CREATE, name, &err);
		if (!e) {
			pthread_mutex_unlock(&ff->lock);
			return err;
		}
	}
	fd = vt_fsops_posix.openat(&vt_fsops_posix, dirfd, name, flags);
	if (e && fd >= 0)
		entry_append(ff, e);
	else if (e)
		entry_free(ff, e);
	pthread_mutex_unlock(&ff->lock);
	return fd;
}

int ff_mkdirat(const struct vt_fsops *ops, int dirfd, const char *name)
{
	struct faultfs *ff = (struct faultfs *)ops;
	struct fault_entry *e;
	int err;

	pthread_mutex_lock(&ff->lock);
	struct fault *f = take(ff, FAULT_MKDIR, dirfd, name, NULL);
	if (f) {
		err = f->spec.err;
	} else if ((e = entry_new(ff, dirfd, E_CREATE, name, &err))) {
		e->is_dir = true;
		err = vt_fsops_posix.mkdirat(&vt_fsops_posix, dirfd, name);
		if (!err)
			entry_append(ff, e);
		else
			entry_free(ff, e);
	}
	pthread_mutex_unlock(&ff->lock);
	return err;
}

int ff_rename(const struct vt_fsops *ops, int dirfd, const char *from, const char *to)
{
	struct faultfs *ff = (struct faultfs *)ops;
	struct fault_entry *e;
	struct stat st;
	int err;

	pthread_mutex_lock(&ff->lock);
	struct fault *f = take(ff, FAULT_RENAME, dirfd, from, to);
	if (f) {
		err = f->spec.err;
		goto out;
	}
	e = entry_new(ff, dirfd, E_RENAME, to, &err);
	if (!e)
		goto out;
	snprintf(e->from, sizeof(e->from), "%s", from);
	/* Keep what `to` names, for an undo; only files are replaced here. */
	if (fstatat(dirfd, to, &st, AT_SYMLINK_NOFOLLOW) == 0) {
		new_hold(ff, e->hold, sizeof(e->hold));
		if (linkat(dirfd, to, dirfd, e->hold, 0) < 0) {
			err = -errno;
			entry_free(ff, e);
			goto out;
		}
	}
	err = vt_fsops_posix.rename(&vt_fsops_posix, dirfd, from, to);
	if (!err) {
		entry_append(ff, e);
	} else {
		if (e->hold[0])
			unlinkat(dirfd, e->hold, 0);
		entry_free(ff, e);
	}
out:
	pthread_mutex_unlock(&ff->lock);
	return err;
}

int ff_unlink(const struct vt_fsops *ops, int dirfd, const char *name)
{
	struct faultfs *ff = (struct faultfs *)ops;
	struct fault_entry *e;
	struct stat st;
	int err;

	pthread_mutex_lock(&ff->lock);
	struct fault *f = take(ff, FAULT_UNLINK, dirfd, name, NULL);
	if (f) {
		err = f->spec.err;
		goto out;
	}
	if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
		err = -errno;
		goto out;
	}
	if (S_ISDIR(st.st_mode)) {
		err = -EISDIR;
		goto out;
	}
	e = entry_new(ff, dirfd, E_UNLINK, name, &err);
	if (!e)
		goto out;
	/* Gone from `name` as an unlink would have it, but kept for an undo. */
	new_hold(ff, e->hold, sizeof(e->hold));
	if (renameat(dirfd, name, dirfd, e->hold) < 0) {
		err = -errno;
		entry_free(ff, e);
		goto out;
	}
	entry_append(ff, e);
	err = 0;
out:
	pthread_mutex_unlock(&ff->lock);
	return err;
}

int ff_fsync_dir(const struct vt_fsops *ops, int dirfd)
{
	struct faultfs *ff = (struct faultfs *)ops;
	struct stat st;
	int err = 0;

	if (fstat(dirfd, &st) < 0)
		return -errno;
	pthread_mutex_lock(&ff->lock);
	struct fault_call c = { .op = FAULT_FSYNC_DIR, .fd = dirfd, .st = &st };
	struct fault *f = ff_fault_take(ff, &c);
	if (f) {
		/* What it would have made durable stays unsynced (faultfs.h). */
		err = f->spec.err;
	} else {
		for (struct fault_entry *e = ff->ehead, *next; e; e = next) {
			next = e->next;
			if (ff_same_file(e->dir, &st)) {
				entry_settle(ff, e);
				ff->entries_synced++;
			}
		}
	}
	pthread_mutex_unlock(&ff->lock);
	return err;
}

/* ---- the crash ---- */

/* Remove parent/name, with everything under it if it is a directory. */
static void remove_tree(int parent, const char *name)
{
	if (unlinkat(parent, name, 0) == 0 || (errno != EISDIR && errno != EPERM))
		return;
	int fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	struct dirent *de;

	if (!d) {
		if (fd >= 0)
			close(fd);
		return;
	}
	while ((de = readdir(d)))
		if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
			remove_tree(dirfd(d), de->d_name);
	closedir(d);
	unlinkat(parent, name, AT_REMOVEDIR);
}

unsigned ff_entries_crash(struct faultfs *ff, bool lose_all)
{
	unsigned n = 0;

	/* Back to what the directories held durably, newest first.  Each
	 * undo finds the directory as its change left it. */
	for (struct fault_entry *e = ff->etail; e; e = e->prev, n++) {
		int d = e->dir->fd;
		switch (e->kind) {
		case E_CREATE:
			new_hold(ff, e->hold, sizeof(e->hold));
			renameat(d, e->name, d, e->hold);
			break;
		case E_RENAME:
			renameat(d, e->name, d, e->from);
			if (e->hold[0])
				renameat(d, e->hold, d, e->name);
			break;
		case E_UNLINK:
			renameat(d, e->hold, d, e->name);
			break;
		}
	}
	/* ...then each change the disk happened to get, in order.  One that
	 * cannot be made again (a rename whose source was a lost create, or
	 * anything in a directory whose own creation was lost) is lost. */
	ff->entries_kept = ff->entries_lost = 0;
	for (struct fault_entry *e = ff->ehead; e; e = e->next) {
		bool keep = !lose_all && (faultfs_random(ff) & 1);
		int d = e->dir->fd;
		switch (e->kind) {
		case E_CREATE:
			if (keep)
				keep = renameat(d, e->hold, d, e->name) == 0;
			if (!keep)
				remove_tree(d, e->hold);
			break;
		case E_RENAME:
			if (keep)
				keep = renameat(d, e->from, d, e->name) == 0;
			break;
		case E_UNLINK:
			if (keep)
				keep = unlinkat(d, e->name, 0) == 0;
			break;
		}
		if (keep)
			ff->entries_kept++;
		else
			ff->entries_lost++;
	}
	while (ff->ehead)
		entry_unlink(ff, ff->ehead);
	return n;
}

void ff_entries_forget(struct faultfs *ff)
{
	while (ff->ehead)
		entry_settle(ff, ff->ehead);
}
