#include "diffstore.h"

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "crc32c.h"
#include "metablock.h"

/*
 * Header (block 0 of the record file, written once at creation):
 * magic "VTRKDIFF" (8), version (4), CRC-32C of the 4096 bytes with
 * this field zero (4), chunk size (4), reserved (4), store id (16).
 *
 * Record (64 bytes at 4096 + 64 * slot): magic "VTDR" (4), CRC-32C of
 * the store id followed by the 64 bytes with this field zero (4), slot
 * (4), blocks (1), flags (1), reserved (2), chunk (8), lo (4), hi (4),
 * reserved (8), epochs (16), reserved (16).  All zeroes: never written.
 *
 * Version 2 added the flags byte (bit 0: the chunk was zeroes, its slot
 * was not written).  A version 1 store is read as it stands and never
 * given such a record, so that the voltrack that made it can still read
 * it; a store made anew is version 2.
 */
#define HDR_MAGIC "VTRKDIFF"
#define HDR_VERSION 2
#define REC_MAGIC "VTDR"
#define REC_ZERO 1u

static void put32(uint8_t *p, uint32_t v) { v = htole32(v); memcpy(p, &v, 4); }
static void put64(uint8_t *p, uint64_t v) { v = htole64(v); memcpy(p, &v, 8); }
static uint32_t get32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return le32toh(v); }
static uint64_t get64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return le64toh(v); }

static uint32_t rec_crc(const struct diffstore *ds, const uint8_t rec[DS_RECORD_SIZE])
{
	uint8_t copy[DS_RECORD_SIZE];

	memcpy(copy, rec, DS_RECORD_SIZE);
	memset(copy + 4, 0, 4);
	return crc32c(crc32c(0, ds->id.bytes, sizeof(ds->id.bytes)), copy, DS_RECORD_SIZE);
}

void diffstore_encode(const struct diffstore *ds, uint32_t slot, const struct ds_record *rec,
		      uint8_t out[DS_RECORD_SIZE])
{
	memset(out, 0, DS_RECORD_SIZE);
	memcpy(out, REC_MAGIC, 4);
	put32(out + 8, slot);
	out[12] = rec->nblocks;
	out[13] = rec->zero ? REC_ZERO : 0;
	put64(out + 16, rec->chunk);
	put32(out + 24, rec->lo);
	put32(out + 28, rec->hi);
	memcpy(out + 40, rec->epochs, DS_MAX_BLOCKS);
	put32(out + 4, rec_crc(ds, out));
}

/* 1 valid, 0 never written, -EBADMSG damaged. */
static int decode(const struct diffstore *ds, uint32_t slot, const uint8_t in[DS_RECORD_SIZE],
		  struct ds_record *rec)
{
	static const uint8_t zero[DS_RECORD_SIZE];

	if (!memcmp(in, zero, DS_RECORD_SIZE))
		return 0;
	if (memcmp(in, REC_MAGIC, 4) || get32(in + 4) != rec_crc(ds, in) ||
	    get32(in + 8) != slot || in[12] == 0 || in[12] > DS_MAX_BLOCKS ||
	    (in[13] & ~(ds->zero_records ? REC_ZERO : 0u)) || get32(in + 24) >= get32(in + 28))
		return -EBADMSG;
	rec->nblocks = in[12];
	rec->zero = in[13] & REC_ZERO;
	rec->chunk = get64(in + 16);
	rec->lo = get32(in + 24);
	rec->hi = get32(in + 28);
	memcpy(rec->epochs, in + 40, DS_MAX_BLOCKS);
	return 1;
}

#define HDR_PATH_MAX 4000

static int create_map(int dirfd, const struct vt_fsops *ops, uint32_t chunk_size,
		      const struct diffstore_config *cfg, struct vt_uuid *id, int *out)
{
	size_t plen = cfg->data_path ? strlen(cfg->data_path) : 0;

	if (plen > HDR_PATH_MAX)
		return -ENAMETOOLONG;
	uint8_t *hdr = calloc(1, DS_STATE_OFFSET);
	int err = hdr ? vt_uuid_generate(id) : -ENOMEM;
	int fd = -1;

	if (!err) {
		memcpy(hdr, HDR_MAGIC, 8);
		put32(hdr + 8, HDR_VERSION);
		put32(hdr + 16, chunk_size);
		memcpy(hdr + 24, id->bytes, 16);
		put64(hdr + 40, cfg->limit);
		put32(hdr + 48, (uint32_t)plen);
		if (plen)
			memcpy(hdr + 64, cfg->data_path, plen);
		put32(hdr + 12, crc32c(0, hdr, DS_STATE_OFFSET));
		fd = ops->openat(ops, dirfd, DS_MAP_NAME ".tmp", O_RDWR | O_CREAT | O_TRUNC);
		err = fd < 0 ? fd : ops->pwrite(ops, fd, hdr, DS_STATE_OFFSET, 0);
	}
	free(hdr);
	if (fd < 0)
		return err;
	/* The rename makes it whole or absent; reopen for the store's use. */
	err = vt_replace_file(ops, dirfd, fd, DS_MAP_NAME ".tmp", DS_MAP_NAME, err);
	if (err)
		return err;
	fd = ops->openat(ops, dirfd, DS_MAP_NAME, O_RDWR);
	if (fd < 0)
		return fd;
	*out = fd;
	return 0;
}

/*
 * The mark (4096 bytes at 4096 in the record file): magic "VTRKDSTA"
 * (8), CRC-32C of the block with this field zero (4), pending (4: 1
 * set, 0 clear), boot id (40, text as the kernel gives it).  Never
 * written, or damaged: read as set under an unknown boot, which doubts
 * the copies (a damaged mark cannot say they were synced) only when
 * there are copies at all.
 */
#define MARK_MAGIC "VTRKDSTA"

static int read_boot_id(const char *path, char out[40])
{
	int fd = open(path ? path : "/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);
	ssize_t n;

	memset(out, 0, 40);
	if (fd < 0)
		return -errno;
	n = read(fd, out, 39);
	close(fd);
	if (n <= 0)
		return n < 0 ? -errno : -EIO;
	out[strcspn(out, "\n")] = 0;
	return 0;
}

static int write_mark(struct diffstore *ds, bool pending)
{
	uint8_t *blk = calloc(1, 4096);
	int err;

	if (!blk)
		return -ENOMEM;
	memcpy(blk, MARK_MAGIC, 8);
	put32(blk + 12, pending ? 1 : 0);
	memcpy(blk + 16, ds->boot_id, 40);
	put32(blk + 8, crc32c(0, blk, 4096));
	err = ds->ops->pwrite(ds->ops, ds->map_fd, blk, 4096, DS_STATE_OFFSET);
	if (!err)
		err = ds->ops->fdatasync(ds->ops, ds->map_fd);
	free(blk);
	return err;
}

static void read_mark(struct diffstore *ds)
{
	uint8_t *blk = malloc(4096);
	static const uint8_t zero[16];

	ds->found_pending = false;
	if (!blk)
		return;
	if (vt_read_full(ds->ops, ds->map_fd, blk, 4096, DS_STATE_OFFSET) == 0) {
		uint32_t crc = get32(blk + 8);
		memset(blk + 8, 0, 4);
		if (!memcmp(blk, zero, 16) && crc == 0) {
			/* never written: no copy was ever made under a mark */
		} else if (memcmp(blk, MARK_MAGIC, 8) || crc != crc32c(0, blk, 4096)) {
			ds->found_pending = true; /* damaged: doubt */
		} else if (get32(blk + 12)) {
			ds->found_pending = true;
			memcpy(ds->pending_boot_id, blk + 16, 40);
			ds->pending_boot_id[39] = 0;
		}
	}
	free(blk);
}

bool diffstore_lost_power(const struct diffstore *ds)
{
	return ds->found_pending && strcmp(ds->pending_boot_id, ds->boot_id) != 0;
}

int diffstore_mark_pending(struct diffstore *ds)
{
	int err = 0;

	/* Count first, look second, as diffstore_copy_begin() does. */
	atomic_fetch_add(&ds->marks_asked, 1);
	if (atomic_load(&ds->pending))
		return 0;
	pthread_mutex_lock(&ds->mark_lock);
	if (!atomic_load(&ds->pending)) {
		err = write_mark(ds, true);
		if (!err)
			atomic_store(&ds->pending, true);
	}
	pthread_mutex_unlock(&ds->mark_lock);
	return err;
}

int diffstore_copy_begin(struct diffstore *ds, struct ds_mark_wait *w)
{
	/* Count first, look second; diffstore_settle() clears the flag
	 * first and counts second, so a copy it did not count sets the
	 * mark again.  On error the caller ends the copy as failed. */
	atomic_fetch_add(&ds->copies_started, 1);
	if (atomic_load(&ds->pending))
		return 0;
	if (ds->marker && w)
		return ds_marker_wait(ds->marker, w);
	return diffstore_mark_pending(ds);
}

int diffstore_start_marker(struct diffstore *ds)
{
	return ds->marker ? 0 : ds_marker_start(ds, &ds->marker);
}

void diffstore_copy_end(struct diffstore *ds)
{
	atomic_fetch_add(&ds->copies_done, 1);
}

int diffstore_settle(struct diffstore *ds, bool when_quiet, int (*sync_origin)(void *arg),
		     void *arg)
{
	if (!atomic_load(&ds->pending))
		return 0;
	unsigned long asked = atomic_load(&ds->marks_asked);
	unsigned long started = atomic_load(&ds->copies_started);
	bool quiet = started == ds->settle_seen;
	ds->settle_seen = started;
	if (atomic_load(&ds->copies_done) != started || (when_quiet && !quiet))
		return -EAGAIN;	/* a copy is under way, or copies go on */
	int err = sync_origin(arg);
	if (!err)
		err = diffstore_sync(ds);
	if (err)
		return err;
	pthread_mutex_lock(&ds->mark_lock);
	atomic_store(&ds->pending, false);
	if (atomic_load(&ds->copies_started) != started ||
	    atomic_load(&ds->marks_asked) != asked) {
		/* A copy began, or a snapshot was prepared, after the syncs
		 * were counted: not yet. */
		atomic_store(&ds->pending, true);
		err = -EAGAIN;
	} else {
		err = write_mark(ds, false);
		if (err)
			atomic_store(&ds->pending, true);
	}
	pthread_mutex_unlock(&ds->mark_lock);
	return err;
}

static int read_header(const struct vt_fsops *ops, int fd, uint32_t *version, uint32_t *chunk_size,
		       struct vt_uuid *id, uint64_t *limit, char **path)
{
	uint8_t *hdr = malloc(DS_STATE_OFFSET);
	int err = hdr ? vt_read_full(ops, fd, hdr, DS_STATE_OFFSET, 0) : -ENOMEM;

	if (!err) {
		uint32_t crc = get32(hdr + 12);
		memset(hdr + 12, 0, 4);
		if (memcmp(hdr, HDR_MAGIC, 8) || crc != crc32c(0, hdr, DS_STATE_OFFSET))
			err = -EBADMSG;
		else if (get32(hdr + 8) > HDR_VERSION)
			err = -EPROTONOSUPPORT;
		*version = get32(hdr + 8);
		*chunk_size = get32(hdr + 16);
		memcpy(id->bytes, hdr + 24, 16);
		*limit = get64(hdr + 40);
		uint32_t plen = get32(hdr + 48);
		if (!err && plen > HDR_PATH_MAX)
			err = -EBADMSG;
		if (!err && plen && !(*path = strndup((char *)hdr + 64, plen)))
			err = -ENOMEM;
	}
	free(hdr);
	return err;
}

/*
 * The data file begins with a block naming its store: magic "VTRKDIFD"
 * (8), the store id (16), zeroes.  A data file of another store is
 * refused; a new (empty) one is stamped, and ds->data_new tells the
 * caller that any copy the records name is gone.
 */
#define DATA_MAGIC "VTRKDIFD"

static int check_data_header(struct diffstore *ds, bool empty)
{
	uint8_t *blk = calloc(1, DS_DATA_OFFSET);
	int err = blk ? 0 : -ENOMEM;

	if (!err && empty) {
		memcpy(blk, DATA_MAGIC, 8);
		memcpy(blk + 8, ds->id.bytes, 16);
		err = ds->ops->pwrite(ds->ops, ds->data_fd, blk, DS_DATA_OFFSET, 0);
		if (!err)
			err = ds->ops->fdatasync(ds->ops, ds->data_fd);
		ds->data_new = true;
	} else if (!err) {
		err = vt_read_full(ds->ops, ds->data_fd, blk, DS_DATA_OFFSET, 0);
		if (!err && (memcmp(blk, DATA_MAGIC, 8) || memcmp(blk + 8, ds->id.bytes, 16)))
			err = -EXDEV;
	}
	free(blk);
	return err;
}

int diffstore_open(int dirfd, const struct vt_fsops *ops, const struct diffstore_config *cfg,
		   uint32_t chunk_size, uint64_t volume_size, struct diffstore **out)
{
	struct diffstore *ds = calloc(1, sizeof(*ds));
	uint32_t have_chunk = chunk_size, version = HDR_VERSION;
	struct stat st;
	int err = 0;

	if (!ds)
		return -ENOMEM;
	ds->ops = ops;
	ds->chunk_size = chunk_size;
	ds->data_fd = ds->map_fd = -1;
	uint64_t dflt_limit = 0;
	char *dflt_path = NULL;
	ds->map_fd = ops->openat(ops, dirfd, DS_MAP_NAME, O_RDWR);
	if (ds->map_fd == -ENOENT)
		err = create_map(dirfd, ops, chunk_size, &(struct diffstore_config){ 0 }, &ds->id,
				 &ds->map_fd);
	else if (ds->map_fd < 0)
		err = ds->map_fd;
	else
		err = read_header(ops, ds->map_fd, &version, &have_chunk, &ds->id, &dflt_limit,
				  &dflt_path);
	if (!err && have_chunk != chunk_size)
		err = -EINVAL;
	ds->zero_records = version >= 2;
	/* This run's options first, then what init recorded, then defaults. */
	ds->limit = cfg->limit ? cfg->limit : dflt_limit ? dflt_limit : volume_size;
	const char *path = cfg->data_path ? cfg->data_path : dflt_path;
	if (!err) {
		ds->own_path = !path;
		/* A path of the user's own is outside the metadata directory,
		 * which is all the simulator models. */
		ds->data_fd = path ? open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600) :
			ops->openat(ops, dirfd, DS_DATA_NAME, O_RDWR | O_CREAT);
		if (ds->data_fd < 0)
			err = path ? -errno : ds->data_fd;
		/* A data file made here must stay: its entry is synced (if
		 * it is lost all the same, a new one invalidates the copies). */
		if (!err && !path)
			err = ops->fsync_dir(ops, dirfd);
	}
	free(dflt_path);
	if (!err && fstat(ds->data_fd, &st) < 0)
		err = -errno;
	if (err) {
		diffstore_close(ds);
		return err;
	}
	if (!err)
		err = check_data_header(ds, st.st_size == 0);
	if (err) {
		diffstore_close(ds);
		return err;
	}
	ds->file_slots = st.st_size > DS_DATA_OFFSET ?
		((uint64_t)st.st_size - DS_DATA_OFFSET) / chunk_size : 0;
	pthread_mutex_init(&ds->mark_lock, NULL);
	read_mark(ds);
	/* A mark left set stays set until a sync settles it. */
	atomic_init(&ds->pending, ds->found_pending);
	err = read_boot_id(cfg->boot_id_path, ds->boot_id);
	if (err) {
		/* Without a boot id a later start could not tell a crash of
		 * the process from one of the machine: always the latter. */
		snprintf(ds->boot_id, sizeof(ds->boot_id), "unknown");
	}
	*out = ds;
	return 0;
}

int diffstore_create(int dirfd, const struct vt_fsops *ops, const struct diffstore_config *cfg,
		     uint32_t chunk_size)
{
	struct vt_uuid id;
	int fd, err;

	/* A data file left by an earlier history would not match the new
	 * store id: empty it, so that the first open stamps it. */
	fd = cfg->data_path ? open(cfg->data_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600) :
			      ops->openat(ops, dirfd, DS_DATA_NAME, O_WRONLY | O_CREAT | O_TRUNC);
	if (fd < 0)
		return cfg->data_path ? -errno : fd;
	err = ops->fdatasync(ops, fd);
	close(fd);
	if (!err)
		err = create_map(dirfd, ops, chunk_size, cfg, &id, &fd);
	if (!err)
		close(fd);
	return err;
}

void diffstore_close(struct diffstore *ds)
{
	if (!ds)
		return;
	ds_marker_stop(ds->marker);
	if (ds->data_fd >= 0)
		close(ds->data_fd);
	if (ds->map_fd >= 0)
		close(ds->map_fd);
	if (ds->boot_id[0])
		pthread_mutex_destroy(&ds->mark_lock);
	free(ds->free_slots);
	free(ds);
}

int diffstore_scan(struct diffstore *ds,
		   void (*fn)(void *arg, uint32_t slot, const struct ds_record *rec), void *arg)
{
	enum { BATCH = 1024 };
	uint8_t *buf = malloc((size_t)BATCH * DS_RECORD_SIZE);
	struct stat st;
	uint64_t nrec;

	if (!buf)
		return -ENOMEM;
	if (fstat(ds->map_fd, &st) < 0) {
		free(buf);
		return -errno;
	}
	nrec = st.st_size > DS_HEADER_SIZE ?
		((uint64_t)st.st_size - DS_HEADER_SIZE) / DS_RECORD_SIZE : 0;
	ds->next_slot = 0;
	for (uint64_t s = 0; s < nrec; s += BATCH) {
		uint64_t n = nrec - s < BATCH ? nrec - s : BATCH;
		int err = vt_read_full(ds->ops, ds->map_fd, buf, n * DS_RECORD_SIZE,
					  diffstore_record_offset((uint32_t)s));
		if (err) {
			free(buf);
			return err;
		}
		for (uint64_t i = 0; i < n; i++) {
			struct ds_record rec;
			uint32_t slot = (uint32_t)(s + i);
			int r = decode(ds, slot, buf + i * DS_RECORD_SIZE, &rec);
			if (r == 0)
				continue;
			ds->next_slot = slot + 1;
			fn(arg, slot, r > 0 ? &rec : NULL);
		}
	}
	free(buf);
	return 0;
}

static int push_free(struct diffstore *ds, uint32_t slot)
{
	if (ds->nfree == ds->free_cap) {
		uint64_t cap = ds->free_cap ? ds->free_cap * 2 : 1024;
		uint32_t *p = realloc(ds->free_slots, cap * sizeof(*p));
		if (!p)
			return -ENOMEM;
		ds->free_slots = p;
		ds->free_cap = cap;
	}
	ds->free_slots[ds->nfree++] = slot;
	return 0;
}

int diffstore_rebuild_free(struct diffstore *ds, const uint8_t *used)
{
	ds->nfree = 0;
	/* Highest first on the stack's bottom: low slots are reused first. */
	for (uint64_t s = ds->next_slot; s-- > 0;)
		if (!used || !used[s]) {
			int err = push_free(ds, (uint32_t)s);
			if (err)
				return err;
		}
	return 0;
}

int diffstore_alloc(struct diffstore *ds, uint32_t *slot)
{
	if (ds->nfree) {
		*slot = ds->free_slots[--ds->nfree];
		return 0;
	}
	if ((ds->next_slot + 1) * ds->chunk_size > ds->limit || ds->next_slot >= UINT32_MAX)
		return -ENOSPC;
	if (ds->next_slot >= ds->file_slots) {
		/* Grow a step at a time, never past the limit; when the step
		 * does not fit, just the one slot. */
		uint64_t want = ds->next_slot + 1;
		uint64_t step = want + DS_GROW_STEP / ds->chunk_size;
		if (step * ds->chunk_size > ds->limit)
			step = ds->limit / ds->chunk_size;
		int err = 0;
		if (fallocate(ds->data_fd, 0, DS_DATA_OFFSET, (off_t)(step * ds->chunk_size)) < 0) {
			err = -errno;
			if (step > want && fallocate(ds->data_fd, 0, DS_DATA_OFFSET,
						     (off_t)(want * ds->chunk_size)) == 0) {
				err = 0;
				step = want;
			}
		}
		if (err)
			return err == -EDQUOT ? -ENOSPC : err;
		ds->file_slots = step;
	}
	*slot = (uint32_t)ds->next_slot++;
	return 0;
}

void diffstore_free(struct diffstore *ds, uint32_t slot)
{
	/* Cannot fail for a slot that was handed out: the stack had room for
	 * every slot below the high mark... except on its first growth. */
	if (push_free(ds, slot))
		return; /* leaked until the next start's scan finds it free */
}

uint64_t diffstore_used_bytes(const struct diffstore *ds)
{
	return (ds->next_slot - ds->nfree) * ds->chunk_size;
}

int diffstore_sync(struct diffstore *ds)
{
	/* A failed sync may have dropped copies or records for good: the
	 * kernel reports a writeback error once and marks the pages clean,
	 * so a later sync that succeeds says nothing about them.  The error
	 * stays, and with it the mark (a power cut then doubts the copies). */
	int err = atomic_load(&ds->sync_error);

	if (!err)
		err = ds->ops->fdatasync(ds->ops, ds->data_fd);
	if (!err)
		err = ds->ops->fdatasync(ds->ops, ds->map_fd);
	if (err) {
		int none = 0;
		atomic_compare_exchange_strong(&ds->sync_error, &none, err);
	}
	return err;
}
