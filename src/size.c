#include "size.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <strings.h>

int size_parse(const char *text, uint64_t *out)
{
	static const char units[] = "KMGTPE";
	uint64_t value = 0;
	const char *p = text;

	if (!text || !isdigit((unsigned char)*p))
		return -EINVAL;
	for (; isdigit((unsigned char)*p); p++) {
		unsigned digit = (unsigned)(*p - '0');
		if (value > (UINT64_MAX - digit) / 10)
			return -ERANGE;
		value = value * 10 + digit;
	}
	if (*p) {
		unsigned shift = 0;
		for (unsigned i = 0; units[i]; i++)
			if (toupper((unsigned char)*p) == units[i])
				shift = 10 * (i + 1);
		if (!shift)
			return -EINVAL;
		p++;
		if (*p && strcasecmp(p, "B") && strcasecmp(p, "iB"))
			return -EINVAL;
		if (value > (UINT64_MAX >> shift))
			return -ERANGE;
		value <<= shift;
	}
	*out = value;
	return 0;
}

void size_format(uint64_t bytes, char *buf, size_t buflen)
{
	static const char units[] = "KMGTPE";
	unsigned i = 0;

	if (bytes == 0) {
		snprintf(buf, buflen, "0");
		return;
	}
	while (i < sizeof(units) - 1 && (bytes & 1023) == 0) {
		bytes >>= 10;
		i++;
	}
	if (i == 0)
		snprintf(buf, buflen, "%llu", (unsigned long long)bytes);
	else
		snprintf(buf, buflen, "%llu%c", (unsigned long long)bytes,
			 units[i - 1]);
}
