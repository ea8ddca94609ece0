/*
 * diffstore: where copy-on-write keeps the old content of chunks.
 *
 * Two files.  The data file (META/diffstore, or --diff-store PATH) holds
 * chunk copies at slot * chunk_size; it grows by fallocate, a step at a
 * time, up to a limit, and freed slots are reused before it grows.  The
 * record file (META/diffstore.map) says what each slot holds: a header
 * block, then one 64-byte record per slot at a fixed place, so a record
 * is rewritten in place when its slot is reused and nothing is ever
 * appended or compacted.  Format and invariants: doc/format.md.
 *
 * A record names the chunk, the range of snapshot sequence numbers
 * (lo, hi] the copy serves, and the epoch each tracking block of the
 * chunk had in the change map when it was copied.  Whether a slot is in
 * use is not stored: a slot is used exactly when its record is valid and
 * some live snapshot's sequence number lies in its range.  Deleting a
 * snapshot therefore needs no write here; sequence numbers are never
 * reused, so a stale record can never be taken for a new snapshot's:
 * the next one is above every live snapshot's and every valid record's
 * hi, which is all that could name it (snapset.c finds it at the scan).
 *
 * Nothing here touches the volume or the gate: diff-store I/O is the
 * server's own (invariant I3).  Slot allocation and the free list are
 * guarded by the caller (snapset.c); I/O helpers are thread-safe.
 */
#ifndef VOLTRACK_SNAP_DIFFSTORE_H
#define VOLTRACK_SNAP_DIFFSTORE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "fsops.h"
#include "marker.h"
#include "uuid.h"

#define DS_DATA_NAME "diffstore"
#define DS_MAP_NAME "diffstore.map"
#define DS_RECORD_SIZE 64
#define DS_MAX_BLOCKS 16	/* tracking blocks per chunk */
#define DS_GROW_STEP (64ull << 20)

struct ds_record {
	uint64_t chunk;
	uint32_t lo, hi;		/* serves snapshots with lo < seq <= hi */
	uint8_t nblocks;
	/* The chunk read as zeroes when it was copied, so its slot's data
	 * was never written: it reads as zeroes.  Only in stores that say
	 * they may hold such records (zero_records). */
	bool zero;
	uint8_t epochs[DS_MAX_BLOCKS];
};

struct diffstore {
	int data_fd, map_fd;
	const struct vt_fsops *ops;
	uint32_t chunk_size;
	uint64_t limit;			/* bytes the data file may reach */
	uint64_t file_slots;		/* slots the data file has room for */
	uint64_t next_slot;		/* slots ever handed out (high mark) */
	uint32_t *free_slots;		/* stack of reusable slots */
	uint64_t nfree, free_cap;
	struct vt_uuid id;		/* tags records to this store */
	bool own_path;			/* data file inside the metadata dir */
	bool data_new;			/* the data file was created by this open */
	bool zero_records;		/* version 2: records may say "zeroes" */

	/*
	 * The copies-pending mark (block 1 of the record file).  Copies are
	 * not synced before their chunk is overwritten: after a power cut
	 * the overwrite may be on disk and its copy not.  So before the
	 * first copy after the store was last known synced, the mark is set
	 * durably, with the kernel's boot id; it is cleared once a sync
	 * covered every copy made.  A start that finds it set under another
	 * boot id (the machine went down, not just the process) cannot
	 * trust any copy, and invalidates every snapshot.
	 */
	pthread_mutex_t mark_lock;
	atomic_bool pending;		/* the mark on disk is (being) set */
	atomic_ulong copies_started, copies_done;
	atomic_ulong marks_asked;	/* diffstore_mark_pending() calls */
	unsigned long settle_seen;	/* copies_started at the last settle */
	atomic_int sync_error;		/* the first failed diffstore_sync(), kept */
	char boot_id[40];		/* this boot's */
	char pending_boot_id[40];	/* found in the mark at open */
	bool found_pending;
	struct ds_marker *marker;	/* sets the mark off the loops (live) */
};

struct diffstore_config {
	const char *data_path;		/* NULL: as recorded at init, or META/diffstore */
	uint64_t limit;			/* 0: as recorded at init, or the volume's size */
	const char *boot_id_path;	/* NULL: /proc/sys/kernel/random/boot_id */
};

/*
 * Open the store in dirfd, creating it when absent.  chunk_size is fixed
 * at creation; an existing store with another chunk size is -EINVAL, a
 * data file that belongs to another store -EXDEV.
 * The records are not read here (diffstore_scan).
 */
int diffstore_open(int dirfd, const struct vt_fsops *ops, const struct diffstore_config *cfg,
		   uint32_t chunk_size, uint64_t volume_size, struct diffstore **out);
void diffstore_close(struct diffstore *ds);

/*
 * A new, empty store (init, and init --force): cfg's data path and limit
 * are recorded in its header as the defaults every later open uses when
 * not told otherwise.  An existing data file at that path is emptied.
 */
int diffstore_create(int dirfd, const struct vt_fsops *ops, const struct diffstore_config *cfg,
		     uint32_t chunk_size);

/*
 * Call fn for every valid record, slot by slot, and learn the high mark.
 * A record that fails its checksum is reported with rec NULL.  Returns 0
 * or -errno of a failed read.
 */
int diffstore_scan(struct diffstore *ds,
		   void (*fn)(void *arg, uint32_t slot, const struct ds_record *rec), void *arg);

/* Mark slot as in use again after a scan (it is not handed out). */
void diffstore_mark_used(struct diffstore *ds, uint32_t slot);
/* After the scan: every slot below the high mark not marked is free. */
int diffstore_rebuild_free(struct diffstore *ds, const uint8_t *used);

/* A free slot, growing the file when none is free: -ENOSPC at the
 * limit or when the filesystem is full. */
int diffstore_alloc(struct diffstore *ds, uint32_t *slot);
void diffstore_free(struct diffstore *ds, uint32_t slot);

/* Bytes of the data file in use: slots handed out and not free. */
uint64_t diffstore_used_bytes(const struct diffstore *ds);

#define DS_DATA_OFFSET 4096	/* the data file's own header comes first */

static inline uint64_t diffstore_slot_offset(const struct diffstore *ds, uint32_t slot)
{
	return DS_DATA_OFFSET + (uint64_t)slot * ds->chunk_size;
}

#define DS_STATE_OFFSET 4096
#define DS_HEADER_SIZE 8192	/* records start after the header and the mark */

/*
 * Before a copy's first I/O: make sure the mark is set.  0 when it is
 * (or was just set here, synchronously, when no marker runs or w is
 * NULL); 1 when w waits for the marker (marker.h) to set it; -errno.
 */
int diffstore_copy_begin(struct diffstore *ds, struct ds_mark_wait *w);
/* A live server's: from here on copiers wait for the mark on the
 * marker's thread, not on their own.  Stopped by diffstore_close(). */
int diffstore_start_marker(struct diffstore *ds);
/* After the copy's last I/O, whatever its outcome. */
void diffstore_copy_end(struct diffstore *ds);
/* Set the mark now, ahead of the copies (a snapshot's prepare phase),
 * so that no write has to wait for it.  It also stands for the origin's
 * writes before the snapshot's instant, which may not be on disk yet:
 * a chunk never copied is read from the origin. */
int diffstore_mark_pending(struct diffstore *ds);
/*
 * If every copy begun has ended (and, with when_quiet, none began since
 * the last call): sync the origin (sync_origin(arg)), then the store,
 * and clear the mark, unless a copy began or the mark was asked for
 * again meanwhile.  0, or -EAGAIN when copies were under way (try again
 * later).  The origin comes first because a snapshot's uncopied chunks
 * are its writes from before the instant: until they are durable, a
 * power cut could take them from the snapshot too.  Clearing only
 * after a quiet period keeps a steady stream of copies from paying a
 * sync each time the mark would be set again.
 */
int diffstore_settle(struct diffstore *ds, bool when_quiet, int (*sync_origin)(void *arg),
		     void *arg);
/* At open: was the mark set by a process of another boot? */
bool diffstore_lost_power(const struct diffstore *ds);

static inline uint64_t diffstore_record_offset(uint32_t slot)
{
	return DS_HEADER_SIZE + (uint64_t)slot * DS_RECORD_SIZE;
}

/* Encode a record for slot into 64 bytes. */
void diffstore_encode(const struct diffstore *ds, uint32_t slot, const struct ds_record *rec,
		      uint8_t out[DS_RECORD_SIZE]);

/* Make copies and records durable (data, then records).  Once it
 * failed, it fails the same way for the rest of the run. */
int diffstore_sync(struct diffstore *ds);

#endif
