/*
 * Superblock encoding, and that no corruption decodes as valid (I6).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "crc32c.h"
#include "superblock.h"

static struct superblock sample(void)
{
	struct superblock sb = {
		.version = SB_VERSION,
		.volume_size = 1ull << 40,
		.granularity = 64 << 10,
		.volume_kind = SB_KIND_FILE,
		.created = 1700000000,
		.sequence = 3,
	};
	for (int i = 0; i < 16; i++) {
		sb.volume_uuid.bytes[i] = (uint8_t)(i + 1);
		sb.generation.bytes[i] = (uint8_t)(0xf0 - i);
	}
	return sb;
}

static void test_crc32c_check_value(void **state)
{
	/* The published CRC-32C check value (RFC 3720, B.4). */
	assert_int_equal(crc32c(0, "123456789", 9), 0xe3069283u);
	/* Incremental equals one-shot. */
	assert_int_equal(crc32c(crc32c(0, "1234", 4), "56789", 5), 0xe3069283u);
	/* 32 zero bytes, from RFC 3720 B.4. */
	static const uint8_t zeros[32];
	assert_int_equal(crc32c(0, zeros, 32), 0x8a9136aau);
}

static void test_round_trip(void **state)
{
	struct superblock in = sample(), out;
	uint8_t block[SB_SIZE];

	sb_encode(&in, block);
	assert_memory_equal(block, "VTRKSUPR", 8);
	assert_int_equal(sb_decode(block, &out), 0);
	assert_memory_equal(&in.volume_uuid, &out.volume_uuid, 16);
	assert_memory_equal(&in.generation, &out.generation, 16);
	assert_true(out.volume_size == in.volume_size);
	assert_int_equal(out.granularity, in.granularity);
	assert_int_equal(out.volume_kind, in.volume_kind);
	assert_true(out.created == in.created);
	assert_true(out.sequence == in.sequence);
	/* Little-endian size at byte 56, as doc/format.md says. */
	assert_int_equal(block[56 + 5], 0x01);
}

static void test_every_bit_flip_is_caught(void **state)
{
	struct superblock in = sample(), out;
	uint8_t block[SB_SIZE];

	sb_encode(&in, block);
	for (size_t bit = 0; bit < SB_SIZE * 8; bit++) {
		block[bit / 8] ^= (uint8_t)(1u << (bit % 8));
		assert_int_not_equal(sb_decode(block, &out), 0);
		block[bit / 8] ^= (uint8_t)(1u << (bit % 8));
	}
	assert_int_equal(sb_decode(block, &out), 0);
}

static void test_foreign_and_future(void **state)
{
	struct superblock in = sample(), out;
	uint8_t block[SB_SIZE];

	memset(block, 0, sizeof(block));
	assert_int_equal(sb_decode(block, &out), -EINVAL);

	sb_encode(&in, block);
	block[8] = SB_VERSION + 1; /* a newer format, checksum left stale */
	assert_int_equal(sb_decode(block, &out), -EPROTONOSUPPORT);
}

static void test_nonsense_with_good_checksum(void **state)
{
	struct superblock in = sample(), out;
	uint8_t block[SB_SIZE];

	in.granularity = 3 << 12; /* not a power of two */
	sb_encode(&in, block);
	assert_int_equal(sb_decode(block, &out), -EBADMSG);

	in = sample();
	in.granularity = 2048; /* below the minimum */
	sb_encode(&in, block);
	assert_int_equal(sb_decode(block, &out), -EBADMSG);

	in = sample();
	memset(&in.generation, 0, sizeof(in.generation));
	sb_encode(&in, block);
	assert_int_equal(sb_decode(block, &out), -EBADMSG);
}

static void test_granularity_bounds(void **state)
{
	assert_true(sb_granularity_valid(4096));
	assert_true(sb_granularity_valid(64u << 20));
	assert_false(sb_granularity_valid(2048));
	assert_false(sb_granularity_valid(128u << 20));
	assert_false(sb_granularity_valid(65536 + 4096));
	assert_false(sb_granularity_valid(0));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_crc32c_check_value),
		cmocka_unit_test(test_round_trip),
		cmocka_unit_test(test_every_bit_flip_is_caught),
		cmocka_unit_test(test_foreign_and_future),
		cmocka_unit_test(test_nonsense_with_good_checksum),
		cmocka_unit_test(test_granularity_bounds),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
