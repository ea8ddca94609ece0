#include "metablock.h"

#include <endian.h>
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "crc32c.h"

uint64_t mb_gen_tag(const struct vt_uuid *generation)
{
	uint64_t tag;
	memcpy(&tag, generation->bytes, 8);
	return tag;
}

static uint32_t block_crc(const uint8_t blk[MB_SIZE])
{
	static const uint8_t zero[4];
	uint32_t crc = crc32c(0, blk, 12);
	crc = crc32c(crc, zero, 4);
	return crc32c(crc, blk + 16, MB_SIZE - 16);
}

void mb_seal(uint8_t blk[MB_SIZE], const char magic[8], uint32_t index,
	     uint64_t seq, uint64_t gen_tag)
{
	uint32_t idx = htole32(index), crc;
	uint64_t s = htole64(seq);

	memcpy(blk, magic, 8);
	memcpy(blk + 8, &idx, 4);
	memset(blk + 12, 0, 4);
	memcpy(blk + 16, &s, 8);
	memcpy(blk + 24, &gen_tag, 8); /* stored as the UUID's own bytes */
	crc = htole32(block_crc(blk));
	memcpy(blk + 12, &crc, 4);
}

int mb_check(const uint8_t blk[MB_SIZE], const char magic[8], uint32_t index,
	     uint64_t gen_tag, uint64_t *seq)
{
	uint32_t idx, crc;
	uint64_t s;

	if (memcmp(blk, magic, 8) != 0)
		return -EBADMSG;
	memcpy(&idx, blk + 8, 4);
	memcpy(&crc, blk + 12, 4);
	memcpy(&s, blk + 16, 8);
	if (le32toh(idx) != index || memcmp(blk + 24, &gen_tag, 8) != 0 ||
	    le32toh(crc) != block_crc(blk))
		return -EBADMSG;
	*seq = le64toh(s);
	return 0;
}

int file_pread_full(int fd, void *buf, size_t len, uint64_t off)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = pread(fd, (char *)buf + done, len - done, (off_t)(off + done));
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			return -EBADMSG;
		done += (size_t)n;
	}
	return 0;
}

int file_pwrite_full(int fd, const void *buf, size_t len, uint64_t off)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = pwrite(fd, (const char *)buf + done, len - done, (off_t)(off + done));
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		done += (size_t)n;
	}
	return 0;
}
