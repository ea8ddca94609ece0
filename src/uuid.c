#include "uuid.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>

int vt_uuid_generate(struct vt_uuid *out)
{
	size_t got = 0;

	while (got < sizeof(out->bytes)) {
		ssize_t n = getrandom(out->bytes + got, sizeof(out->bytes) - got, 0);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		got += (size_t)n;
	}
	out->bytes[6] = (uint8_t)((out->bytes[6] & 0x0f) | 0x40); /* version 4 */
	out->bytes[8] = (uint8_t)((out->bytes[8] & 0x3f) | 0x80); /* RFC 4122 variant */
	return 0;
}

void vt_uuid_format(const struct vt_uuid *u, char out[VT_UUID_STRLEN])
{
	const uint8_t *b = u->bytes;

	snprintf(out, VT_UUID_STRLEN,
		 "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
		 b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9],
		 b[10], b[11], b[12], b[13], b[14], b[15]);
}

bool vt_uuid_equal(const struct vt_uuid *a, const struct vt_uuid *b)
{
	return memcmp(a->bytes, b->bytes, sizeof(a->bytes)) == 0;
}

bool vt_uuid_is_nil(const struct vt_uuid *u)
{
	static const struct vt_uuid nil;
	return vt_uuid_equal(u, &nil);
}
