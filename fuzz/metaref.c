#include "metaref.h"

#include <string.h>

/* CRC-32C (Castagnoli, reflected 0x82F63B78), its table built here from
 * the polynomial rather than taken from the library. */
uint32_t ref_crc32c(uint32_t crc, const uint8_t *p, size_t n)
{
	static uint32_t table[256];

	if (!table[1]) {
		for (uint32_t i = 0; i < 256; i++) {
			uint32_t c = i;
			for (int k = 0; k < 8; k++)
				c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1)));
			table[i] = c;
		}
	}
	crc = ~crc;
	while (n--)
		crc = (crc >> 8) ^ table[(crc ^ *p++) & 0xff];
	return ~crc;
}

static uint32_t le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t le64(const uint8_t *p)
{
	return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32;
}

static void put_le32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

/* CRC of a block with its 4-byte checksum field at `at` read as zero. */
static uint32_t crc_without(const uint8_t *blk, size_t at)
{
	static const uint8_t zero[4];
	uint32_t c = ref_crc32c(0, blk, at);

	c = ref_crc32c(c, zero, 4);
	return ref_crc32c(c, blk + at + 4, REF_BLOCK - at - 4);
}

void ref_reseal_superblock(uint8_t *file, size_t len)
{
	if (len >= REF_BLOCK)
		put_le32(file + 16, crc_without(file, 16));
}

void ref_reseal_blocks(uint8_t *file, size_t len)
{
	for (size_t off = 0; off + REF_BLOCK <= len; off += REF_BLOCK)
		put_le32(file + off + 12, crc_without(file + off, 12));
}

static bool nil16(const uint8_t *u)
{
	for (int i = 0; i < 16; i++)
		if (u[i])
			return false;
	return true;
}

void ref_superblock(const uint8_t *f, size_t len, struct ref_sb *sb)
{
	memset(sb, 0, sizeof(*sb));
	if (len < REF_BLOCK || memcmp(f, "VTRKSUPR", 8) != 0)
		return;
	sb->version = le32(f + 8);
	if (sb->version == 0 || sb->version > 3 || le32(f + 12) != REF_BLOCK ||
	    le32(f + 16) != crc_without(f, 16))
		return;
	memcpy(sb->volume_uuid, f + 24, 16);
	memcpy(sb->generation, f + 40, 16);
	sb->volume_size = le64(f + 56);
	sb->granularity = le32(f + 64);
	sb->kind = le32(f + 68);
	sb->state = le32(f + 88);
	sb->id_size = le64(f + 96);
	sb->id_ino = le64(f + 104);
	sb->id_ctime = le64(f + 112);
	uint32_t g = sb->granularity;
	sb->ok = g >= 4096 && g <= (64u << 20) && (g & (g - 1)) == 0 &&
		 (sb->kind == 1 || sb->kind == 2) && !nil16(sb->volume_uuid) &&
		 !nil16(sb->generation);
}

uint64_t ref_nblocks(const struct ref_sb *sb)
{
	return sb->volume_size / sb->granularity + (sb->volume_size % sb->granularity != 0);
}

uint32_t ref_npages(const struct ref_sb *sb)
{
	uint64_t nb = ref_nblocks(sb);
	return (uint32_t)(nb / REF_PAYLOAD + (nb % REF_PAYLOAD != 0));
}

void ref_intent_geometry(const struct ref_sb *sb, uint64_t *region, uint32_t *nregions)
{
	uint64_t r = 64ull << 20;

	/* the smallest power of two of at least 64 MiB leaving at most 32064 regions */
	while (sb->volume_size / r + (sb->volume_size % r != 0) > 32064)
		r <<= 1;
	*region = r;
	*nregions = (uint32_t)(sb->volume_size / r + (sb->volume_size % r != 0));
}

bool ref_block(const uint8_t *f, size_t len, size_t block, const char magic[8],
	       uint32_t index, const uint8_t gen[8], uint64_t *seq)
{
	const uint8_t *b = f + block * REF_BLOCK;

	if ((block + 1) * REF_BLOCK > len)
		return false;
	if (memcmp(b, magic, 8) != 0 || le32(b + 8) != index || memcmp(b + 24, gen, 8) != 0 ||
	    le32(b + 12) != crc_without(b, 12))
		return false;
	*seq = le64(b + 16);
	return true;
}

bool ref_map_header(const uint8_t *f, size_t len, const struct ref_sb *sb)
{
	uint64_t seq;

	if (!ref_block(f, len, 0, "VTRKMAPH", 0, sb->generation, &seq))
		return false;
	const uint8_t *p = f + 32;
	return le64(p) == ref_nblocks(sb) && le32(p + 8) == sb->granularity &&
	       le32(p + 12) == ref_npages(sb) && le32(p + 16) == REF_PAYLOAD;
}

void ref_map_page(const uint8_t *f, size_t len, const struct ref_sb *sb, uint32_t page,
		  struct ref_page *out)
{
	for (unsigned s = 0; s < 2; s++) {
		size_t block = 1 + 2 * (size_t)page + s;
		out->ok[s] = ref_block(f, len, block, "VTRKMAPP", page, sb->generation, &out->seq[s]);
		out->payload[s] = out->ok[s] ? f + block * REF_BLOCK + 32 : NULL;
	}
}

void ref_intent(const uint8_t *f, size_t len, const struct ref_sb *sb, struct ref_intent *out)
{
	ref_intent_geometry(sb, &out->region, &out->nregions);
	for (unsigned s = 0; s < 2; s++) {
		const uint8_t *p = f + (size_t)s * REF_BLOCK + 32;
		out->ok[s] = ref_block(f, len, s, "VTRKINTN", 0, sb->generation, &out->seq[s]) &&
			     le32(p) == out->nregions && le64(p + 8) == out->region;
		out->bitmap[s] = out->ok[s] ? p + 16 : NULL;
	}
}

static bool name_ok(const uint8_t *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		uint8_t c = s[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '.' || c == '_' || c == '+' || c == '@' || c == ':' || c == '-'))
			return false;
	}
	if ((n == 1 && s[0] == '.') || (n == 2 && s[0] == '.' && s[1] == '.'))
		return false;
	return n >= 1 && n <= 200;
}

static void ckpt_slot(const uint8_t *f, size_t len, const struct ref_sb *sb, unsigned s,
		      struct ref_ckpt_slot *out)
{
	static uint8_t payload[64 * REF_PAYLOAD];
	uint64_t seq, seq_b;

	memset(out, 0, sizeof(*out));
	if (!ref_block(f, len, 64 * s, "VTRKCKPT", 64 * s, sb->generation, &seq))
		return;
	uint32_t nblocks = le32(f + (size_t)64 * s * REF_BLOCK + 32);
	if (nblocks == 0 || nblocks > 64)
		return;
	for (uint32_t b = 0; b < nblocks; b++) {
		size_t blk = 64 * s + b;
		if (!ref_block(f, len, blk, "VTRKCKPT", (uint32_t)blk, sb->generation, &seq_b) ||
		    seq_b != seq)
			return;
		memcpy(payload + (size_t)b * REF_PAYLOAD, f + blk * REF_BLOCK + 32, REF_PAYLOAD);
	}
	uint32_t n = le32(payload + 4);
	uint8_t open = payload[8];
	size_t pos = 16, end = (size_t)nblocks * REF_PAYLOAD;
	if (n > REF_MAX_CKPT || open == 0)
		return;
	if (payload[9] & 1) {
		/* the numbering record: count >= 1, a translation that keeps
		 * order and never raises */
		const uint8_t *t = payload + 16 + 16;
		if (le32(payload + 16 + 8) == 0 || t[0] != 0)
			return;
		for (unsigned v = 1; v < 256; v++)
			if (t[v] > v || t[v] < t[v - 1])
				return;
		pos = 16 + 272;
	}
	for (uint32_t i = 0; i < n; i++) {
		if (pos + 16 > end)
			return;
		uint8_t e = payload[pos];
		size_t nl = payload[pos + 1];
		/* flags: SNAPSHOT and INVALID only */
		/* epochs start at 1 and stay below the open one */
		if (pos + 16 + nl > end || !name_ok(payload + pos + 16, nl) || e == 0 || e >= open ||
		    (payload[pos + 2] & ~3u) ||
		    (i && e <= out->items[i - 1].epoch))
			return;
		memcpy(out->items[i].name, payload + pos + 16, nl);
		out->items[i].name[nl] = 0;
		out->items[i].epoch = e;
		pos += 16 + nl;
	}
	out->n = n;
	out->open_epoch = open;
	out->seq = seq;
	out->ok = true;
}

void ref_checkpoints(const uint8_t *f, size_t len, const struct ref_sb *sb,
		     struct ref_ckpt_slot out[2])
{
	ckpt_slot(f, len, sb, 0, &out[0]);
	ckpt_slot(f, len, sb, 1, &out[1]);
}
