#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "size.h"

static uint64_t parsed(const char *s)
{
	uint64_t v = 0;
	assert_int_equal(size_parse(s, &v), 0);
	return v;
}

static void test_parse(void **state)
{
	uint64_t v;

	assert_true(parsed("0") == 0);
	assert_true(parsed("512") == 512);
	assert_true(parsed("64K") == 65536);
	assert_true(parsed("64k") == 65536);
	assert_true(parsed("1M") == 1048576);
	assert_true(parsed("10G") == 10737418240ull);
	assert_true(parsed("1T") == 1099511627776ull);
	assert_true(parsed("2GiB") == 2147483648ull);
	assert_true(parsed("4KB") == 4096);
	assert_true(parsed("15E") == 15ull << 60);
	assert_int_equal(size_parse("16E", &v), -ERANGE);
	assert_int_equal(size_parse("99999999999999999999", &v), -ERANGE);
	assert_int_equal(size_parse("", &v), -EINVAL);
	assert_int_equal(size_parse("-1", &v), -EINVAL);
	assert_int_equal(size_parse("1X", &v), -EINVAL);
	assert_int_equal(size_parse("1KK", &v), -EINVAL);
	assert_int_equal(size_parse("K", &v), -EINVAL);
	assert_int_equal(size_parse("1 K", &v), -EINVAL);
}

static void test_format(void **state)
{
	char buf[32];

	size_format(65536, buf, sizeof(buf));
	assert_string_equal(buf, "64K");
	size_format(1000, buf, sizeof(buf));
	assert_string_equal(buf, "1000");
	size_format(1ull << 40, buf, sizeof(buf));
	assert_string_equal(buf, "1T");
	size_format(3ull << 29, buf, sizeof(buf));
	assert_string_equal(buf, "1536M");
	size_format(0, buf, sizeof(buf));
	assert_string_equal(buf, "0");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse),
		cmocka_unit_test(test_format),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
