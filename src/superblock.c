#include "superblock.h"

#include <endian.h>
#include <errno.h>
#include <string.h>

#include "crc32c.h"

/* Byte offsets of the on-disk fields; doc/format.md is the reference. */
enum {
	OFF_MAGIC = 0,
	OFF_VERSION = 8,
	OFF_HEADER_LEN = 12,
	OFF_CRC = 16,
	OFF_FLAGS = 20,
	OFF_VOLUME_UUID = 24,
	OFF_GENERATION = 40,
	OFF_VOLUME_SIZE = 56,
	OFF_GRANULARITY = 64,
	OFF_KIND = 68,
	OFF_CREATED = 72,
	OFF_SEQUENCE = 80,
	OFF_STATE = 88,
	OFF_ID_SIZE = 96,
	OFF_ID_INO = 104,
	OFF_ID_CTIME = 112,
	OFF_ID_TAKEN = 120,
};

static void put32(uint8_t *p, uint32_t v)
{
	v = htole32(v);
	memcpy(p, &v, 4);
}

static void put64(uint8_t *p, uint64_t v)
{
	v = htole64(v);
	memcpy(p, &v, 8);
}

static uint32_t get32(const uint8_t *p)
{
	uint32_t v;
	memcpy(&v, p, 4);
	return le32toh(v);
}

static uint64_t get64(const uint8_t *p)
{
	uint64_t v;
	memcpy(&v, p, 8);
	return le64toh(v);
}

int sb_granularity_valid(uint64_t g)
{
	return g >= SB_MIN_GRANULARITY && g <= SB_MAX_GRANULARITY &&
	       (g & (g - 1)) == 0;
}

static uint32_t sb_checksum(const uint8_t block[SB_SIZE])
{
	static const uint8_t zero[4];
	uint32_t crc = crc32c(0, block, OFF_CRC);

	crc = crc32c(crc, zero, sizeof(zero));
	return crc32c(crc, block + OFF_CRC + 4, SB_SIZE - OFF_CRC - 4);
}

void sb_encode(const struct superblock *sb, uint8_t out[SB_SIZE])
{
	memset(out, 0, SB_SIZE);
	memcpy(out + OFF_MAGIC, SB_MAGIC, 8);
	put32(out + OFF_VERSION, sb->version);
	put32(out + OFF_HEADER_LEN, SB_SIZE);
	put32(out + OFF_FLAGS, sb->flags);
	memcpy(out + OFF_VOLUME_UUID, sb->volume_uuid.bytes, 16);
	memcpy(out + OFF_GENERATION, sb->generation.bytes, 16);
	put64(out + OFF_VOLUME_SIZE, sb->volume_size);
	put32(out + OFF_GRANULARITY, sb->granularity);
	put32(out + OFF_KIND, sb->volume_kind);
	put64(out + OFF_CREATED, sb->created);
	put64(out + OFF_SEQUENCE, sb->sequence);
	put32(out + OFF_STATE, sb->state);
	put64(out + OFF_ID_SIZE, sb->id_size);
	put64(out + OFF_ID_INO, sb->id_ino);
	put64(out + OFF_ID_CTIME, sb->id_ctime_ns);
	put64(out + OFF_ID_TAKEN, sb->id_taken_ns);
	put32(out + OFF_CRC, sb_checksum(out));
}

int sb_decode(const uint8_t in[SB_SIZE], struct superblock *sb)
{
	if (memcmp(in + OFF_MAGIC, SB_MAGIC, 8) != 0)
		return -EINVAL;
	uint32_t version = get32(in + OFF_VERSION);
	if (version > SB_VERSION)
		return -EPROTONOSUPPORT;
	if (version == 0 || get32(in + OFF_HEADER_LEN) != SB_SIZE)
		return -EBADMSG;
	if (get32(in + OFF_CRC) != sb_checksum(in))
		return -EBADMSG;

	memset(sb, 0, sizeof(*sb));
	sb->version = version;
	sb->flags = get32(in + OFF_FLAGS);
	memcpy(sb->volume_uuid.bytes, in + OFF_VOLUME_UUID, 16);
	memcpy(sb->generation.bytes, in + OFF_GENERATION, 16);
	sb->volume_size = get64(in + OFF_VOLUME_SIZE);
	sb->granularity = get32(in + OFF_GRANULARITY);
	sb->volume_kind = get32(in + OFF_KIND);
	sb->created = get64(in + OFF_CREATED);
	sb->sequence = get64(in + OFF_SEQUENCE);
	sb->state = get32(in + OFF_STATE);
	sb->id_size = get64(in + OFF_ID_SIZE);
	sb->id_ino = get64(in + OFF_ID_INO);
	sb->id_ctime_ns = get64(in + OFF_ID_CTIME);
	sb->id_taken_ns = get64(in + OFF_ID_TAKEN);

	/* A correct checksum over nonsense is still nonsense. */
	if (!sb_granularity_valid(sb->granularity) ||
	    (sb->volume_kind != SB_KIND_FILE && sb->volume_kind != SB_KIND_BLOCKDEV) ||
	    vt_uuid_is_nil(&sb->volume_uuid) || vt_uuid_is_nil(&sb->generation))
		return -EBADMSG;
	return 0;
}
