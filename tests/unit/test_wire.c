/*
 * The wire codec against the rules of the NBD specification, written out
 * by hand here (byte layouts and error codes from doc/proto.md), so a
 * codec bug cannot hide behind its own encoder.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "proto.h"
#include "wire.h"

static const struct nbd_limits rw_limits = {
	.export_size = 1 << 20,
	.max_payload = 32 << 20,
	.eflags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA |
		  NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_DF |
		  NBD_FLAG_SEND_CACHE | NBD_FLAG_SEND_FAST_ZERO | NBD_FLAG_CAN_MULTI_CONN,
	.structured = true,
	.have_contexts = true,
};

static struct nbd_request rq(uint16_t type, uint16_t flags, uint64_t off, uint32_t len)
{
	return (struct nbd_request){ .type = type, .flags = flags, .offset = off, .length = len };
}

static uint32_t check(struct nbd_request r)
{
	return nbd_request_check(&r, &rw_limits);
}

static void test_request_decode(void **state)
{
	/* 0x25609513, flags 0x0001, type 1, cookie, offset, length */
	uint8_t raw[28] = { 0x25, 0x60, 0x95, 0x13, 0x00, 0x01, 0x00, 0x01,
			    1, 2, 3, 4, 5, 6, 7, 8,
			    0, 0, 0, 0, 0, 0, 0x10, 0x00,
			    0x00, 0x00, 0x02, 0x00 };
	struct nbd_request r;

	assert_int_equal(nbd_request_decode(raw, &r), 0);
	assert_int_equal(r.flags, NBD_CMD_FLAG_FUA);
	assert_int_equal(r.type, NBD_CMD_WRITE);
	assert_true(r.cookie == 0x0102030405060708ull);
	assert_int_equal(r.offset, 4096);
	assert_int_equal(r.length, 512);
	assert_int_equal(nbd_request_payload(&r), 512);

	raw[3] = 0x14;
	assert_int_equal(nbd_request_decode(raw, &r), -EINVAL);
}

static void test_valid_requests_pass(void **state)
{
	assert_int_equal(check(rq(NBD_CMD_READ, 0, 0, 4096)), 0);
	assert_int_equal(check(rq(NBD_CMD_READ, NBD_CMD_FLAG_DF, 0, 4096)), 0);
	assert_int_equal(check(rq(NBD_CMD_WRITE, NBD_CMD_FLAG_FUA, (1 << 20) - 512, 512)), 0);
	assert_int_equal(check(rq(NBD_CMD_FLUSH, 0, 0, 0)), 0);
	assert_int_equal(check(rq(NBD_CMD_TRIM, 0, 0, 1 << 20)), 0);
	assert_int_equal(check(rq(NBD_CMD_CACHE, 0, 0, 1 << 20)), 0);
	assert_int_equal(check(rq(NBD_CMD_WRITE_ZEROES,
				  NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO, 0, 1 << 20)), 0);
	assert_int_equal(check(rq(NBD_CMD_BLOCK_STATUS, NBD_CMD_FLAG_REQ_ONE, 0, 1 << 20)), 0);
	assert_int_equal(check(rq(NBD_CMD_DISC, 0, 0, 0)), 0);
	/* exactly the maximum payload is valid (CVE-2020-10761 class) */
	struct nbd_limits big = rw_limits;
	big.export_size = 1ull << 40;
	struct nbd_request r = rq(NBD_CMD_READ, 0, 0, 32 << 20);
	assert_int_equal(nbd_request_check(&r, &big), 0);
}

static void test_flags_on_wrong_command(void **state)
{
	assert_int_equal(check(rq(NBD_CMD_READ, NBD_CMD_FLAG_NO_HOLE, 0, 1)), NBD_EINVAL);
	assert_int_equal(check(rq(NBD_CMD_WRITE, NBD_CMD_FLAG_DF, 0, 1)), NBD_EINVAL);
	assert_int_equal(check(rq(NBD_CMD_WRITE, NBD_CMD_FLAG_FAST_ZERO, 0, 1)), NBD_EINVAL);
	assert_int_equal(check(rq(NBD_CMD_READ, NBD_CMD_FLAG_REQ_ONE, 0, 1)), NBD_EINVAL);
	assert_int_equal(check(rq(NBD_CMD_TRIM, NBD_CMD_FLAG_NO_HOLE, 0, 1)), NBD_EINVAL);
	assert_int_equal(check(rq(NBD_CMD_READ, 1u << 7, 0, 1)), NBD_EINVAL);
	assert_int_equal(check(rq(NBD_CMD_FLUSH, 0x8000, 0, 0)), NBD_EINVAL);
}

static void test_unknown_command(void **state)
{
	assert_int_equal(check(rq(8, 0, 0, 0)), NBD_EINVAL);
	assert_int_equal(check(rq(0xffff, 0, 0, 0)), NBD_EINVAL);
}

static void test_range_errors(void **state)
{
	/* beyond the end: ENOSPC for writes, EINVAL otherwise */
	assert_int_equal(check(rq(NBD_CMD_WRITE, 0, (1 << 20) - 511, 512)), NBD_ENOSPC);
	assert_int_equal(check(rq(NBD_CMD_WRITE_ZEROES, 0, 1 << 20, 1)), NBD_ENOSPC);
	assert_int_equal(check(rq(NBD_CMD_READ, 0, 1 << 20, 1)), NBD_EINVAL);
	assert_int_equal(check(rq(NBD_CMD_TRIM, 0, 0, (1 << 20) + 1)), NBD_EINVAL);
	assert_int_equal(check(rq(NBD_CMD_BLOCK_STATUS, 0, 1 << 20, 1)), NBD_EINVAL);
	assert_int_equal(check(rq(NBD_CMD_CACHE, 0, UINT64_MAX, 1)), NBD_EINVAL);
	/* offset + length wrapping past 2^64 */
	assert_int_equal(check(rq(NBD_CMD_READ, 0, UINT64_MAX - 10, 4096)), NBD_EINVAL);
	assert_int_equal(check(rq(NBD_CMD_WRITE, 0, UINT64_MAX, 1)), NBD_EINVAL);
	/* over the advertised maximum payload */
	struct nbd_limits big = rw_limits;
	big.export_size = 1ull << 40;
	struct nbd_request r = rq(NBD_CMD_WRITE, 0, 0, (32 << 20) + 1);
	assert_int_equal(nbd_request_check(&r, &big), NBD_EINVAL);
	r.type = NBD_CMD_READ;
	assert_int_equal(nbd_request_check(&r, &big), NBD_EINVAL);
	/* ...but TRIM and WRITE_ZEROES may exceed it */
	r.type = NBD_CMD_TRIM;
	assert_int_equal(nbd_request_check(&r, &big), 0);
}

static void test_read_only_export(void **state)
{
	struct nbd_limits ro = rw_limits;
	ro.eflags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_READ_ONLY | NBD_FLAG_SEND_FLUSH |
		    NBD_FLAG_SEND_CACHE | NBD_FLAG_SEND_DF;
	struct nbd_request w = rq(NBD_CMD_WRITE, 0, 0, 512);
	struct nbd_request t = rq(NBD_CMD_TRIM, 0, 0, 512);
	struct nbd_request z = rq(NBD_CMD_WRITE_ZEROES, 0, 0, 512);
	struct nbd_request r = rq(NBD_CMD_READ, 0, 0, 512);
	struct nbd_request fua = rq(NBD_CMD_READ, NBD_CMD_FLAG_FUA, 0, 512);

	assert_int_equal(nbd_request_check(&w, &ro), NBD_EPERM);
	assert_int_equal(nbd_request_check(&t, &ro), NBD_EPERM);
	assert_int_equal(nbd_request_check(&z, &ro), NBD_EPERM);
	assert_int_equal(nbd_request_check(&r, &ro), 0);
	/* FUA was not advertised on this export */
	assert_int_equal(nbd_request_check(&fua, &ro), NBD_EINVAL);
}

static void test_negotiation_dependent(void **state)
{
	struct nbd_limits simple = rw_limits;
	simple.structured = false;
	simple.have_contexts = false;
	struct nbd_request bs = rq(NBD_CMD_BLOCK_STATUS, 0, 0, 512);
	struct nbd_request df = rq(NBD_CMD_READ, NBD_CMD_FLAG_DF, 0, 512);

	assert_int_equal(nbd_request_check(&bs, &simple), NBD_EINVAL);
	assert_int_equal(nbd_request_check(&df, &simple), NBD_EINVAL);
	/* a zero-length block status is meaningless */
	assert_int_equal(check(rq(NBD_CMD_BLOCK_STATUS, 0, 0, 0)), NBD_EINVAL);
}

static void test_strings(void **state)
{
	static uint8_t big[4097];

	assert_true(nbd_string_valid((const uint8_t *)"", 0));
	assert_true(nbd_string_valid((const uint8_t *)"snapshot/a", 10));
	assert_true(nbd_string_valid((const uint8_t *)"\xc3\xa9t\xc3\xa9", 5));    /* été */
	assert_true(nbd_string_valid((const uint8_t *)"\xf0\x9f\x92\xbe", 4));     /* U+1F4BE */
	assert_false(nbd_string_valid((const uint8_t *)"a\0b", 3));
	assert_false(nbd_string_valid((const uint8_t *)"\xc0\xaf", 2));            /* overlong */
	assert_false(nbd_string_valid((const uint8_t *)"\xed\xa0\x80", 3));        /* surrogate */
	assert_false(nbd_string_valid((const uint8_t *)"\xf4\x90\x80\x80", 4));    /* > U+10FFFF */
	assert_false(nbd_string_valid((const uint8_t *)"\xe2\x82", 2));            /* truncated */
	assert_false(nbd_string_valid((const uint8_t *)"\xff", 1));
	memset(big, 'a', sizeof(big));
	assert_true(nbd_string_valid(big, 4096));
	assert_false(nbd_string_valid(big, 4097));
}

static void test_option_header(void **state)
{
	uint8_t raw[16] = { 'I', 'H', 'A', 'V', 'E', 'O', 'P', 'T',
			    0, 0, 0, 7, 0xff, 0xff, 0xff, 0xff };
	struct nbd_option opt;
	uint8_t out[20];

	assert_int_equal(nbd_option_decode(raw, &opt), 0);
	assert_int_equal(opt.option, NBD_OPT_GO);
	assert_true(opt.length == 0xffffffffu);
	raw[0] = 'i';
	assert_int_equal(nbd_option_decode(raw, &opt), -EINVAL);

	static const uint8_t want[20] = { 0, 0x03, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9,
					  0, 0, 0, 3, 0x80, 0, 0, 6, 0, 0, 0, 9 };
	assert_int_equal(nbd_option_reply_encode(out, 3, NBD_REP_ERR_UNKNOWN, 9), 20);
	assert_memory_equal(out, want, 20);
}

static void test_info_parse(void **state)
{
	/* name "ab", 2 requests: NAME, BLOCK_SIZE */
	uint8_t ok[] = { 0, 0, 0, 2, 'a', 'b', 0, 2, 0, 1, 0, 3 };
	struct nbd_info_request r;

	assert_int_equal(nbd_info_parse(ok, sizeof(ok), &r), 0);
	assert_int_equal(r.name_len, 2);
	assert_memory_equal(r.name, "ab", 2);
	assert_int_equal(r.ninfo, 2);
	assert_int_equal(nbd_info_type(&r, 0), NBD_INFO_NAME);
	assert_int_equal(nbd_info_type(&r, 1), NBD_INFO_BLOCK_SIZE);

	/* CVE-2022-26495: a name length of -1 */
	uint8_t neg[] = { 0xff, 0xff, 0xff, 0xff, 'a', 'b', 0, 0 };
	assert_int_equal(nbd_info_parse(neg, sizeof(neg), &r), -EINVAL);
	/* request count that overruns the option */
	uint8_t over[] = { 0, 0, 0, 0, 0, 5, 0, 1 };
	assert_int_equal(nbd_info_parse(over, sizeof(over), &r), -EINVAL);
	/* trailing junk */
	uint8_t junk[] = { 0, 0, 0, 0, 0, 0, 0xaa };
	assert_int_equal(nbd_info_parse(junk, sizeof(junk), &r), -EINVAL);
	/* too short for the fixed fields */
	assert_int_equal(nbd_info_parse(ok, 5, &r), -EINVAL);
	/* NUL inside the name */
	uint8_t nul[] = { 0, 0, 0, 2, 'a', 0, 0, 0 };
	assert_int_equal(nbd_info_parse(nul, sizeof(nul), &r), -EINVAL);
}

static void test_meta_parse(void **state)
{
	uint8_t ok[] = { 0, 0, 0, 0,			/* export "" */
			 0, 0, 0, 2,			/* two queries */
			 0, 0, 0, 5, 'b', 'a', 's', 'e', ':',
			 0, 0, 0, 2, 'q', ':' };
	struct nbd_meta_request r;
	struct nbd_meta_iter it;
	const char *q;
	uint32_t qlen;

	assert_int_equal(nbd_meta_parse(ok, sizeof(ok), &r), 0);
	assert_int_equal(r.nqueries, 2);
	nbd_meta_iter_init(&it, &r);
	assert_true(nbd_meta_iter_next(&it, &q, &qlen));
	assert_int_equal(qlen, 5);
	assert_memory_equal(q, "base:", 5);
	assert_true(nbd_meta_iter_next(&it, &q, &qlen));
	assert_memory_equal(q, "q:", 2);
	assert_false(nbd_meta_iter_next(&it, &q, &qlen));

	/* every truncation of a valid request is rejected */
	for (uint32_t len = 0; len < sizeof(ok); len++)
		assert_int_equal(nbd_meta_parse(ok, len, &r), -EINVAL);
	/* a query length that lies */
	uint8_t lie[] = { 0, 0, 0, 0, 0, 0, 0, 1, 0x7f, 0xff, 0xff, 0xff, 'x' };
	assert_int_equal(nbd_meta_parse(lie, sizeof(lie), &r), -EINVAL);
	/* a query count far beyond the data */
	uint8_t many[] = { 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff };
	assert_int_equal(nbd_meta_parse(many, sizeof(many), &r), -EINVAL);
}

static void test_replies(void **state)
{
	uint8_t out[64];
	static const uint8_t simple[16] = { 0x67, 0x44, 0x66, 0x98, 0, 0, 0, 22,
					    0, 0, 0, 0, 0, 0, 0, 42 };
	assert_int_equal(nbd_simple_reply_encode(out, NBD_EINVAL, 42), 16);
	assert_memory_equal(out, simple, 16);

	static const uint8_t chunk[20] = { 0x66, 0x8e, 0x33, 0xef, 0, 1, 0, 5,
					   0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 12 };
	assert_int_equal(nbd_chunk_encode(out, NBD_REPLY_FLAG_DONE,
					  NBD_REPLY_TYPE_BLOCK_STATUS, 7, 12), 20);
	assert_memory_equal(out, chunk, 20);

	/* error chunk: header, u32 error, u16 message length, message */
	size_t n = nbd_error_chunk_encode(out, sizeof(out), 9, NBD_EIO, "disk on fire");
	assert_int_equal(n, 20 + 6 + 12);
	assert_int_equal(get_be16(out + 6), NBD_REPLY_TYPE_ERROR);
	assert_int_equal(get_be32(out + 16), 6 + 12);
	assert_int_equal(get_be32(out + 20), NBD_EIO);
	assert_int_equal(get_be16(out + 24), 12);
	assert_memory_equal(out + 26, "disk on fire", 12);

	/* truncation never splits a UTF-8 sequence */
	n = nbd_error_chunk_encode(out, 26 + 2, 9, NBD_EIO, "a\xc3\xa9");
	assert_int_equal(get_be16(out + 24), 1);
	assert_int_equal(n, 27);
}

static void test_errno_mapping(void **state)
{
	assert_int_equal(nbd_errno_to_wire(0), 0);
	assert_int_equal(nbd_errno_to_wire(-EROFS), NBD_EPERM);
	assert_int_equal(nbd_errno_to_wire(-EDQUOT), NBD_ENOSPC);
	assert_int_equal(nbd_errno_to_wire(-EFBIG), NBD_ENOSPC);
	assert_int_equal(nbd_errno_to_wire(-ENOTSUP), NBD_ENOTSUP);
	assert_int_equal(nbd_errno_to_wire(-EBADF), NBD_EIO);
	assert_int_equal(nbd_errno_to_wire(-EIO), NBD_EIO);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_request_decode),
		cmocka_unit_test(test_valid_requests_pass),
		cmocka_unit_test(test_flags_on_wrong_command),
		cmocka_unit_test(test_unknown_command),
		cmocka_unit_test(test_range_errors),
		cmocka_unit_test(test_read_only_export),
		cmocka_unit_test(test_negotiation_dependent),
		cmocka_unit_test(test_strings),
		cmocka_unit_test(test_option_header),
		cmocka_unit_test(test_info_parse),
		cmocka_unit_test(test_meta_parse),
		cmocka_unit_test(test_replies),
		cmocka_unit_test(test_errno_mapping),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
