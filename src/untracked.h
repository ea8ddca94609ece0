/*
 * untracked: was the volume written while no tracker ran (invariant I6)?
 *
 * The verdicts recovery reaches from what the last run recorded (the
 * identity in the superblock at a clean close, or the stamp of the
 * newest intent commit after an unclean stop) and from the volume as it
 * is now.  Each returns NULL when the record can be trusted, else why
 * not, in words fit for the log and `status`; the caller then reports
 * everything changed under a new generation.  See doc/tracking.md, "the
 * stamp".  Pure functions: they read nothing but their arguments.
 *
 * *seen says whether the verdict rests on evidence of a change (a size,
 * inode or ctime that differs, a ctime past the lease, a --no-track run)
 * rather than on what the record cannot rule out (a ctime taken within
 * the filesystem's timestamp granularity of the last write).  Change
 * tracking treats both alike; a snapshot is invalidated only by the
 * first, since a timestamp that cannot tell is the ordinary case of a
 * stop just after a write, and the volume's own server is the only
 * writer the contract allows.
 */
#ifndef VOLTRACK_UNTRACKED_H
#define VOLTRACK_UNTRACKED_H

#include "intent.h"
#include "superblock.h"
#include "volume.h"

/* After a clean close: the identity recorded then against `id`. */
const char *untracked_since_close(const struct superblock *sb, const struct volume_identity *id,
				  bool *seen);

/* After an unclean stop: the newest intent stamp `st` against `id`. */
const char *untracked_after_crash(const struct superblock *sb, const struct intent_stamp *st,
				  const struct volume_identity *id, bool *seen);

#endif
