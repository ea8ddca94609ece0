/*
 * uuid: random (version 4) identifiers for volumes and generations.
 */
#ifndef VOLTRACK_UUID_H
#define VOLTRACK_UUID_H

#include <stdbool.h>
#include <stdint.h>

#define VT_UUID_STRLEN 37 /* 36 characters and the NUL */

struct vt_uuid {
	uint8_t bytes[16];
};

int vt_uuid_generate(struct vt_uuid *out);
void vt_uuid_format(const struct vt_uuid *u, char out[VT_UUID_STRLEN]);
bool vt_uuid_equal(const struct vt_uuid *a, const struct vt_uuid *b);
bool vt_uuid_is_nil(const struct vt_uuid *u);

#endif
