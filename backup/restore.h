/*
 * restore: write one backup to a target, and read targets back.
 *
 * A target is a file (created, or cut to nothing and grown to the
 * backup's size, so that what is not written stays a hole), a block
 * device (opened exclusively, writable, at least the backup's size), or
 * an NBD URI (writable, at least the backup's size).  A device's or an
 * export's zero ranges are zeroed rather than written: fallocate
 * (PUNCH_HOLE) or BLKZEROOUT, NBD_CMD_WRITE_ZEROES.  Past the backup's
 * size a larger target is left as it is.  Only non-zero data is
 * written, in runs of 4 KiB blocks.  Into an NBD export, many requests
 * are in flight per connection, none larger than the server's maximum
 * request size; a failed one fails the restore once none is left in
 * flight.  Every chunk is checked whole
 * before any of it is written; a backup whose chunk files are missing,
 * or a target that cannot take it, is refused before the target is
 * touched; one whose chunk is damaged stops at that chunk with its
 * offset named.  With verify, the target is read back (a block device
 * with O_DIRECT: the device, not the page cache) and every chunk's
 * digest compared.
 *
 * Returns 0 or -errno, with msg one line on failure.
 */
#ifndef VOLTRACK_BACKUP_RESTORE_H
#define VOLTRACK_BACKUP_RESTORE_H

#include <stdbool.h>
#include <stddef.h>

#include "manifest.h"
#include "progress.h"
#include "repo.h"

struct bk_restore_stats {
	uint64_t bytes_written;
	uint64_t bytes_zeroed;	/* zeroed on a device or NBD target */
};

int bk_restore(struct bk_repo *r, const struct bk_manifest *m, const char *target,
	       unsigned jobs, bool verify, struct bk_progress *prog,
	       struct bk_restore_stats *st, char *msg, size_t msglen);

/* Whether target names an NBD URI rather than a path. */
bool bk_is_uri(const char *target);

#endif
