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
/* Entry: epoch (1), name length (1), reserved (6), created (8), name. */
#define ENTRY_FIXED 16
#define FILE_BLOCKS 64	/* 254 entries of up to 216 bytes fit in 256 KiB */

bool checkpoint_name_valid(const char *name)
{
	size_t len = strlen(name);

	if (len == 0 || len > CKPT_NAME_MAX)
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
 * File: a sequence of metadata blocks; block 0's payload starts with
 * count (4), open epoch (1), reserved (3), then entries, which continue
 * across blocks' payloads.  Every block carries its own checksum.
 */
int checkpoints_store(int dirfd, const struct superblock *sb, const struct checkpoint_list *l)
{
	uint8_t *payload = calloc(FILE_BLOCKS, MB_PAYLOAD);
	uint8_t *blk = aligned_alloc(MB_SIZE, MB_SIZE);
	uint64_t tag = mb_gen_tag(&sb->generation);
	size_t pos = 8;
	int fd = -1, err = 0;

	if (!payload || !blk) {
		err = -ENOMEM;
		goto out;
	}
	uint32_t n = htole32(l->n);
	memcpy(payload, &n, 4);
	payload[4] = l->open_epoch;
	for (uint32_t i = 0; i < l->n; i++) {
		const struct checkpoint *c = &l->items[i];
		size_t nlen = strlen(c->name);
		uint64_t created = htole64(c->created);
		payload[pos] = c->epoch;
		payload[pos + 1] = (uint8_t)nlen;
		memcpy(payload + pos + 8, &created, 8);
		memcpy(payload + pos + ENTRY_FIXED, c->name, nlen);
		pos += ENTRY_FIXED + nlen;
	}
	uint32_t nblocks = (uint32_t)((pos + MB_PAYLOAD - 1) / MB_PAYLOAD);
	fd = openat(dirfd, CHECKPOINTS_NAME ".tmp", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0) {
		err = -errno;
		goto out;
	}
	for (uint32_t b = 0; !err && b < nblocks; b++) {
		memcpy(blk + MB_HEADER, payload + (size_t)b * MB_PAYLOAD, MB_PAYLOAD);
		/* The sequence field holds the block count, so a file cut
		 * short at a block boundary is detected. */
		mb_seal(blk, MAGIC, b, nblocks, tag);
		err = file_pwrite_full(fd, blk, MB_SIZE, (uint64_t)b * MB_SIZE);
	}
	if (!err && fdatasync(fd) < 0)
		err = -errno;
	close(fd);
	if (!err && renameat(dirfd, CHECKPOINTS_NAME ".tmp", dirfd, CHECKPOINTS_NAME) < 0)
		err = -errno;
	if (!err && fsync(dirfd) < 0)
		err = -errno;
	if (err)
		unlinkat(dirfd, CHECKPOINTS_NAME ".tmp", 0);
out:
	free(payload);
	free(blk);
	return err;
}

int checkpoints_load(int dirfd, const struct superblock *sb, struct checkpoint_list *l)
{
	uint8_t *payload = NULL, *blk = NULL;
	uint64_t tag = mb_gen_tag(&sb->generation), count;
	int fd, err = 0;

	memset(l, 0, sizeof(*l));
	l->open_epoch = 1;
	fd = openat(dirfd, CHECKPOINTS_NAME, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? 0 : -errno;
	payload = calloc(FILE_BLOCKS, MB_PAYLOAD);
	blk = aligned_alloc(MB_SIZE, MB_SIZE);
	if (!payload || !blk) {
		err = -ENOMEM;
		goto out;
	}
	err = file_pread_full(fd, blk, MB_SIZE, 0);
	if (err || mb_check(blk, MAGIC, 0, tag, &count) || count == 0 || count > FILE_BLOCKS) {
		err = -EBADMSG;
		goto out;
	}
	for (uint32_t b = 0; b < count; b++) {
		uint64_t c2;
		if (b && (file_pread_full(fd, blk, MB_SIZE, (uint64_t)b * MB_SIZE) ||
			  mb_check(blk, MAGIC, b, tag, &c2) || c2 != count)) {
			err = -EBADMSG;
			goto out;
		}
		memcpy(payload + (size_t)b * MB_PAYLOAD, blk + MB_HEADER, MB_PAYLOAD);
	}
	uint32_t n;
	memcpy(&n, payload, 4);
	n = le32toh(n);
	l->open_epoch = payload[4];
	if (n > CKPT_MAX || l->open_epoch == 0) {
		err = -EBADMSG;
		goto out;
	}
	size_t pos = 8, end = (size_t)count * MB_PAYLOAD;
	for (uint32_t i = 0; i < n; i++) {
		struct checkpoint *c = &l->items[i];
		if (pos + ENTRY_FIXED > end) {
			err = -EBADMSG;
			goto out;
		}
		size_t nlen = payload[pos + 1];
		uint64_t created;
		if (nlen == 0 || nlen > CKPT_NAME_MAX || pos + ENTRY_FIXED + nlen > end) {
			err = -EBADMSG;
			goto out;
		}
		c->epoch = payload[pos];
		memcpy(&created, payload + pos + 8, 8);
		c->created = le64toh(created);
		memcpy(c->name, payload + pos + ENTRY_FIXED, nlen);
		c->name[nlen] = 0;
		/* epochs strictly increase and stay below the open one */
		if (!checkpoint_name_valid(c->name) || c->epoch >= l->open_epoch ||
		    (i && c->epoch <= l->items[i - 1].epoch)) {
			err = -EBADMSG;
			goto out;
		}
		pos += ENTRY_FIXED + nlen;
	}
	l->n = n;
out:
	if (err) {
		memset(l, 0, sizeof(*l));
		l->open_epoch = 1;
	}
	close(fd);
	free(payload);
	free(blk);
	return err;
}
