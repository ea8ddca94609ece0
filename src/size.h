/*
 * size: parse and print byte sizes the way qemu-img does.
 *
 * "64K", "1G", "512" (bytes), "2T".  Suffixes are binary (K = 1024) and
 * case-insensitive; an optional trailing "B" or "iB" is accepted.  Values
 * that overflow 64 bits are rejected with -ERANGE, junk with -EINVAL.
 */
#ifndef VOLTRACK_SIZE_H
#define VOLTRACK_SIZE_H

#include <stddef.h>
#include <stdint.h>

int size_parse(const char *text, uint64_t *out);

/* Shortest exact rendering: 65536 -> "64K", 1000 -> "1000". */
void size_format(uint64_t bytes, char *buf, size_t buflen);

#endif
