#include "testvol.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crc32c.h"
#include "metablock.h"
#include "superblock.h"
#include "tracker.h"

int testvol_create(struct testvol *tv, const char *prefix, uint64_t size, uint32_t granularity,
		   const struct vt_fsops *ops)
{
	struct superblock sb = { .version = SB_VERSION };
	struct volume_identity id;
	int err;

	memset(tv, 0, sizeof(*tv));
	snprintf(tv->dir, sizeof(tv->dir), "/tmp/%s-XXXXXX", prefix);
	if (!mkdtemp(tv->dir))
		return -errno;
	snprintf(tv->vol_path, sizeof(tv->vol_path), "%s/disk.img", tv->dir);
	snprintf(tv->meta_path, sizeof(tv->meta_path), "%s/meta", tv->dir);
	err = volume_create_file(&vt_fsops_posix, tv->vol_path, size);
	if (!err)
		err = volume_open(tv->vol_path, 0, &tv->vol);
	if (!err)
		err = metadir_open(tv->meta_path, true, &vt_fsops_posix, &tv->md);
	if (!err)
		err = metadir_lock(tv->md);
	if (!err && ops)
		metadir_set_fsops(tv->md, ops);
	if (!err)
		err = vt_uuid_generate(&sb.volume_uuid);
	if (!err)
		err = vt_uuid_generate(&sb.generation);
	if (!err)
		err = volume_identity_settled(tv->vol, &id);
	if (err)
		return err;
	sb.version = SB_VERSION;
	sb.volume_size = size;
	sb.granularity = granularity;
	sb.volume_kind = SB_KIND_FILE;
	sb.sequence = 1;
	sb.state = SB_STATE_CLEAN;
	sb.id_size = id.size;
	sb.id_ino = id.ino;
	sb.id_ctime_ns = id.ctime_ns;
	sb.id_taken_ns = id.taken_ns;
	err = tracker_format(tv->md, &sb);
	return err ? err : metadir_write_superblock(tv->md, &sb);
}

int testvol_hash(const struct testvol *tv, uint32_t gran, uint64_t nblocks, uint64_t *out)
{
	uint8_t *buf = malloc(gran);
	int err = buf ? 0 : -ENOMEM;

	for (uint64_t b = 0; !err && b < nblocks; b++) {
		err = file_pread_full(tv->vol->fd, buf, gran, b * gran);
		/* two independent CRCs: a collision would need both to agree */
		out[b] = ((uint64_t)crc32c(0, buf, gran) << 32) | crc32c(0x5bd1e995, buf, gran);
	}
	free(buf);
	return err;
}

void testvol_destroy(struct testvol *tv)
{
	char cmd[128];

	volume_close(tv->vol);
	metadir_close(tv->md);
	tv->vol = NULL;
	tv->md = NULL;
	if (!tv->dir[0])
		return;
	snprintf(cmd, sizeof(cmd), "rm -rf %s", tv->dir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", tv->dir);
}
