/*
 * crc32c: the Castagnoli CRC (iSCSI, ext4, btrfs metadata).
 *
 * Used for every checksummed on-disk structure.  crc32c(0, buf, len) is
 * the standard value (0xe3069283 for "123456789").
 */
#ifndef VOLTRACK_CRC32C_H
#define VOLTRACK_CRC32C_H

#include <stddef.h>
#include <stdint.h>

uint32_t crc32c(uint32_t crc, const void *buf, size_t len);

#endif
