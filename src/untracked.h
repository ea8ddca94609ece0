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
 */
#ifndef VOLTRACK_UNTRACKED_H
#define VOLTRACK_UNTRACKED_H

#include "intent.h"
#include "superblock.h"
#include "volume.h"

/* After a clean close: the identity recorded then against `id`. */
const char *untracked_since_close(const struct superblock *sb, const struct volume_identity *id);

/* After an unclean stop: the newest intent stamp `st` against `id`. */
const char *untracked_after_crash(const struct superblock *sb, const struct intent_stamp *st,
				  const struct volume_identity *id);

#endif
