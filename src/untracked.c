#include "untracked.h"

/* The identity recorded at the clean close against the volume now; NULL
 * when it matches and can be trusted to, else why not. */
const char *untracked_since_close(const struct superblock *sb, const struct volume_identity *id,
				  bool *seen)
{
	*seen = true;
	if (sb->id_size != id->size)
		return "the volume changed size while nothing tracked it: everything is "
		       "reported changed";
	if (sb->volume_kind != SB_KIND_FILE)
		return NULL; /* a block device's node says nothing of its content */
	if (sb->id_ino != id->ino || sb->id_ctime_ns != id->ctime_ns)
		return "the volume was modified while nothing tracked it (inode or ctime "
		       "differ): everything is reported changed";
	struct volume_identity then = { .ctime_ns = sb->id_ctime_ns, .taken_ns = sb->id_taken_ns };
	*seen = false;
	if (sb->id_taken_ns && !volume_identity_decisive(&then))
		return "the volume was closed within its filesystem's timestamp granularity of "
		       "its last write, so a later change could leave its ctime as it was: "
		       "everything is reported changed";
	return NULL;
}

/*
 * After an unclean stop, could anything but the tracker have written the
 * volume since?  The newest intent commit says (see intent.h): with no
 * region set it holds the volume's identity, which must still match;
 * otherwise it holds the write lease, and the tracker issued no write
 * whose ctime is past it.  NULL when the intents can be trusted, else
 * why not.  Block devices have no ctime: only their size can tell.
 */
const char *untracked_after_crash(const struct superblock *sb, const struct intent_stamp *st,
				  const struct volume_identity *id, bool *seen)
{
	bool file = sb->volume_kind == SB_KIND_FILE;

	*seen = true;
	if (id->size != sb->volume_size || (st->id.size && st->id.size != id->size))
		return "the volume changed size after the last server stopped uncleanly: "
		       "everything is reported changed";
	if (!file)
		return NULL;
	if (st->id.ino && st->id.ino != id->ino)
		return "the volume file was replaced after the last server stopped uncleanly: "
		       "everything is reported changed";
	if (id->ctime_ns < st->id.ctime_ns)
		return "the volume's ctime went backwards after the last server stopped "
		       "uncleanly (a restored file system, or a clock set back): everything "
		       "is reported changed";
	if (st->quiet) {
		struct volume_identity then = { .ctime_ns = st->id.ctime_ns,
						 .taken_ns = st->id.taken_ns };
		if (st->id.ctime_ns != id->ctime_ns)
			return "the volume was modified after the last server stopped uncleanly "
			       "(its ctime differs from when it was last idle): everything is "
			       "reported changed";
		*seen = false;
		if (!volume_identity_decisive(&then))
			return "the last server stopped uncleanly within its file system's "
			       "timestamp granularity of its last write, so a later change could "
			       "leave the ctime as it was: everything is reported changed";
		return NULL;
	}
	if (st->lease_ns == 0 || id->ctime_ns > st->lease_ns)
		return "the volume was modified after the last server stopped uncleanly "
		       "(its ctime is past the server's last write lease): everything is "
		       "reported changed";
	return NULL;
}
