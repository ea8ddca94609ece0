#include "checkpoints.h"

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "metablock.h"

#define MAGIC "VTRKCKPT"
/* Entry: epoch (1), name length (1), flags (1), reserved (1), snapshot
 * sequence (4), created (8), name. */
#define ENTRY_FIXED 16
#define FILE_BLOCKS 64	/* 254 entries of up to 216 bytes fit in 256 KiB */

bool checkpoint_name_valid(const char *name)
{
	size_t len = strlen(name);

	if (len == 0 || len > CKPT_NAME_MAX)
		return false;
	/* "." and ".." name directories wherever a name becomes a path */
	if (!strcmp(name, ".") || !strcmp(name, ".."))
		return false;
	for (size_t i = 0; i < len; i++) {
		char c = name[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      strchr("._+@:-", c)))
			return false;
	}
	return true;
}

const struct checkpoint *checkpoint_find(const struct checkpoint_list *l, const char *name)
{
	for (uint32_t i = 0; i < l->n; i++)
		if (strcmp(l->items[i].name, name) == 0)
			return &l->items[i];
	return NULL;
}

/*
 * File: two slots of SLOT_BLOCKS metadata blocks.  Block b of slot s has
 * index s * SLOT_BLOCKS + b; all blocks of one update share its sequence.
 * Block 0's payload starts with the block count (4), the checkpoint
 * count (4), the open epoch (1), flags (1), reserved (6); with flag
 * NUMBERED the numbering record follows: boundary (8), count (4),
 * reserved (4), translation (256).  Then the entries, which continue
 * across the blocks' payloads.
 */
#define SLOT_BLOCKS FILE_BLOCKS
#define HEAD 16
#define FLAG_NUMBERED 0x01
#define RECORD 272

/* A translation from one numbering to the next only ever lowers epochs
 * and keeps their order; anything else is not ours. */
static bool translation_valid(const uint8_t t[256])
{
	if (t[0] != 0)
		return false;
	for (int v = 1; v < 256; v++)
		if (t[v] > v || t[v] < t[v - 1])
			return false;
	return true;
}

static int encode(const struct checkpoint_list *l, uint8_t *payload, uint32_t *nblocks)
{
	size_t pos = HEAD;

	memset(payload, 0, (size_t)SLOT_BLOCKS * MB_PAYLOAD);
	if (l->numbering.count) {
		uint64_t boundary = htole64(l->numbering.boundary);
		uint32_t count = htole32(l->numbering.count);
		payload[9] = FLAG_NUMBERED;
		memcpy(payload + pos, &boundary, 8);
		memcpy(payload + pos + 8, &count, 4);
		memcpy(payload + pos + 16, l->numbering.from_prev, 256);
		pos += RECORD;
	}
	for (uint32_t i = 0; i < l->n; i++) {
		const struct checkpoint *c = &l->items[i];
		size_t nlen = strlen(c->name);
		uint64_t created = htole64(c->created);
		payload[pos] = c->epoch;
		payload[pos + 1] = (uint8_t)nlen;
		payload[pos + 2] = c->flags;
		uint32_t sseq = htole32(c->snap_seq);
		memcpy(payload + pos + 4, &sseq, 4);
		memcpy(payload + pos + 8, &created, 8);
		memcpy(payload + pos + ENTRY_FIXED, c->name, nlen);
		pos += ENTRY_FIXED + nlen;
	}
	*nblocks = (uint32_t)((pos + MB_PAYLOAD - 1) / MB_PAYLOAD);
	uint32_t nb = htole32(*nblocks), n = htole32(l->n);
	memcpy(payload, &nb, 4);
	memcpy(payload + 4, &n, 4);
	payload[8] = l->open_epoch;
	return 0;
}

static int write_slot(const struct vt_fsops *ops, int fd, const struct superblock *sb, const uint8_t *payload,
		      uint32_t nblocks, unsigned slot, uint64_t seq, uint8_t *blk)
{
	uint64_t tag = mb_gen_tag(&sb->generation);
	int err = 0;

	for (uint32_t b = 0; !err && b < nblocks; b++) {
		memcpy(blk + MB_HEADER, payload + (size_t)b * MB_PAYLOAD, MB_PAYLOAD);
		mb_seal(blk, MAGIC, slot * SLOT_BLOCKS + b, seq, tag);
		err = ops->pwrite(ops, fd, blk, MB_SIZE, (uint64_t)(slot * SLOT_BLOCKS + b) * MB_SIZE);
	}
	return err;
}

int checkpoints_create(int dirfd, const struct vt_fsops *ops, const struct superblock *sb,
		       struct checkpoint_list *l)
{
	uint8_t *payload = malloc((size_t)SLOT_BLOCKS * MB_PAYLOAD);
	uint8_t *blk = aligned_alloc(MB_SIZE, MB_SIZE);
	uint32_t nblocks;
	int fd = -1, err = 0;

	if (!payload || !blk) {
		err = -ENOMEM;
		goto out;
	}
	fd = ops->openat(ops, dirfd, CHECKPOINTS_NAME ".tmp", O_RDWR | O_CREAT | O_TRUNC);
	if (fd < 0) {
		err = fd;
		goto out;
	}
	/* Allocate every block now, so that updates never allocate. */
	memset(blk, 0, MB_SIZE);
	for (uint32_t b = 0; !err && b < 2 * SLOT_BLOCKS; b++)
		err = ops->pwrite(ops, fd, blk, MB_SIZE, (uint64_t)b * MB_SIZE);
	encode(l, payload, &nblocks);
	if (!err)
		err = write_slot(ops, fd, sb, payload, nblocks, 0, 1, blk);
	if (!err)
		err = write_slot(ops, fd, sb, payload, nblocks, 1, 2, blk);
	err = vt_replace_file(ops, dirfd, fd, CHECKPOINTS_NAME ".tmp", CHECKPOINTS_NAME, err);
	if (!err) {
		l->slot = 1;
		l->seq = 2;
	}
out:
	free(payload);
	free(blk);
	return err;
}

/* Write l into the slot not holding prev, without syncing it. */
static int write_other_slot(int dirfd, const struct vt_fsops *ops, const struct superblock *sb,
			    const struct checkpoint_list *prev, struct checkpoint_list *l,
			    bool *touched, bool sync)
{
	uint8_t *payload = malloc((size_t)SLOT_BLOCKS * MB_PAYLOAD);
	uint8_t *blk = aligned_alloc(MB_SIZE, MB_SIZE);
	unsigned slot = prev->slot ^ 1;
	uint32_t nblocks;
	int fd = -1, err = 0;

	*touched = false;
	if (!payload || !blk) {
		err = -ENOMEM;
		goto out;
	}
	fd = ops->openat(ops, dirfd, CHECKPOINTS_NAME, O_WRONLY);
	if (fd < 0) {
		err = fd;
		goto out;
	}
	encode(l, payload, &nblocks);
	*touched = true;
	err = write_slot(ops, fd, sb, payload, nblocks, slot, prev->seq + 1, blk);
	if (!err && sync)
		err = ops->fdatasync(ops, fd);
	close(fd);
	if (!err) {
		l->slot = (uint8_t)slot;
		l->seq = prev->seq + 1;
	}
out:
	free(payload);
	free(blk);
	return err;
}

int checkpoints_store(int dirfd, const struct vt_fsops *ops, const struct superblock *sb,
		      const struct checkpoint_list *prev, struct checkpoint_list *l,
		      bool *touched)
{
	return write_other_slot(dirfd, ops, sb, prev, l, touched, true);
}

int checkpoints_write(int dirfd, const struct vt_fsops *ops, const struct superblock *sb,
		      const struct checkpoint_list *prev, struct checkpoint_list *l,
		      bool *touched)
{
	return write_other_slot(dirfd, ops, sb, prev, l, touched, false);
}

int checkpoints_sync(int dirfd, const struct vt_fsops *ops)
{
	int fd = ops->openat(ops, dirfd, CHECKPOINTS_NAME, O_WRONLY);
	int err;

	if (fd < 0)
		return fd;
	/* Any descriptor of the file will do: writeback is per inode. */
	err = ops->fdatasync(ops, fd);
	close(fd);
	return err;
}

/* Decode one slot; 0 and its sequence when whole and consistent. */
static int load_slot(const struct vt_fsops *ops, int fd, const struct superblock *sb,
		     unsigned slot, struct checkpoint_list *l, uint8_t *payload, uint8_t *blk)
{
	uint64_t tag = mb_gen_tag(&sb->generation), seq, s2;
	uint32_t nblocks, n;

	memset(l, 0, sizeof(*l));
	/* A read that fails says nothing of the content: that error goes up
	 * as it is; only a short or bad block is damage (-EBADMSG). */
	int err = vt_read_full(ops, fd, blk, MB_SIZE, (uint64_t)slot * SLOT_BLOCKS * MB_SIZE);
	if (err)
		return err;
	if (mb_check(blk, MAGIC, slot * SLOT_BLOCKS, tag, &seq))
		return -EBADMSG;
	memcpy(payload, blk + MB_HEADER, MB_PAYLOAD);
	memcpy(&nblocks, payload, 4);
	nblocks = le32toh(nblocks);
	if (nblocks == 0 || nblocks > SLOT_BLOCKS)
		return -EBADMSG;
	for (uint32_t b = 1; b < nblocks; b++) {
		uint64_t off = (uint64_t)(slot * SLOT_BLOCKS + b) * MB_SIZE;
		err = vt_read_full(ops, fd, blk, MB_SIZE, off);
		if (err)
			return err;
		if (mb_check(blk, MAGIC, slot * SLOT_BLOCKS + b, tag, &s2) || s2 != seq)
			return -EBADMSG;
		memcpy(payload + (size_t)b * MB_PAYLOAD, blk + MB_HEADER, MB_PAYLOAD);
	}
	memcpy(&n, payload + 4, 4);
	n = le32toh(n);
	l->open_epoch = payload[8];
	if (n > CKPT_MAX || l->open_epoch == 0)
		return -EBADMSG;
	size_t pos = HEAD, end = (size_t)nblocks * MB_PAYLOAD;
	if (payload[9] & FLAG_NUMBERED) {
		uint64_t boundary;
		uint32_t count;
		if (pos + RECORD > end)
			return -EBADMSG;
		memcpy(&boundary, payload + pos, 8);
		memcpy(&count, payload + pos + 8, 4);
		l->numbering.boundary = le64toh(boundary);
		l->numbering.count = le32toh(count);
		memcpy(l->numbering.from_prev, payload + pos + 16, 256);
		if (l->numbering.count == 0 || !translation_valid(l->numbering.from_prev))
			return -EBADMSG;
		pos += RECORD;
	}
	for (uint32_t i = 0; i < n; i++) {
		struct checkpoint *c = &l->items[i];
		if (pos + ENTRY_FIXED > end)
			return -EBADMSG;
		size_t nlen = payload[pos + 1];
		uint64_t created;
		if (nlen == 0 || nlen > CKPT_NAME_MAX || pos + ENTRY_FIXED + nlen > end)
			return -EBADMSG;
		c->epoch = payload[pos];
		c->flags = payload[pos + 2];
		uint32_t sseq;
		memcpy(&sseq, payload + pos + 4, 4);
		c->snap_seq = le32toh(sseq);
		/* A flag this version does not know could mean anything about
		 * the snapshot's content: the slot is not trusted.  (A newer
		 * voltrack raises the superblock's version first, which keeps
		 * this one out.) */
		if (c->flags & ~CKPT_F_KNOWN)
			return -EBADMSG;
		memcpy(&created, payload + pos + 8, 8);
		c->created = le64toh(created);
		memcpy(c->name, payload + pos + ENTRY_FIXED, nlen);
		c->name[nlen] = 0;
		/* the name is exactly nlen valid characters (a NUL inside
		 * would pass the character check); epochs strictly increase
		 * from 1 and stay below the open one */
		if (strlen(c->name) != nlen || !checkpoint_name_valid(c->name) || c->epoch == 0 ||
		    c->epoch >= l->open_epoch ||
		    (i && c->epoch <= l->items[i - 1].epoch))
			return -EBADMSG;
		pos += ENTRY_FIXED + nlen;
	}
	l->n = n;
	l->slot = (uint8_t)slot;
	l->seq = seq;
	return 0;
}

int checkpoints_load(int dirfd, const struct vt_fsops *ops, const struct superblock *sb,
		     struct checkpoint_list *l, bool *damaged)
{
	struct checkpoint_list *other = malloc(sizeof(*other));
	uint8_t *payload = malloc((size_t)SLOT_BLOCKS * MB_PAYLOAD);
	uint8_t *blk = aligned_alloc(MB_SIZE, MB_SIZE);
	int fd, err = -ENOMEM;

	memset(l, 0, sizeof(*l));
	l->open_epoch = 1;
	fd = ops->openat(ops, dirfd, CHECKPOINTS_NAME, O_RDONLY);
	if (fd < 0) {
		err = fd;
		goto out;
	}
	if (!other || !payload || !blk)
		goto out;
	int e0 = load_slot(ops, fd, sb, 0, l, payload, blk);
	int e1 = load_slot(ops, fd, sb, 1, other, payload, blk);
	if ((e0 && e0 != -EBADMSG) || (e1 && e1 != -EBADMSG)) {
		err = e0 && e0 != -EBADMSG ? e0 : e1;	/* the call failed: no verdict */
		goto out;
	}
	if (damaged)
		*damaged = e0 || e1;
	if (e0 && e1) {
		err = -EBADMSG;
		memset(l, 0, sizeof(*l));
		l->open_epoch = 1;
	} else {
		if (e0 || (!e1 && other->seq > l->seq))
			*l = *other;
		err = 0;
	}
out:
	if (fd >= 0)
		close(fd);
	free(other);
	free(payload);
	free(blk);
	return err;
}
