/*
 * wire: NBD encoding and decoding as pure functions over byte buffers.
 *
 * No I/O and no allocation, so every rule about what a peer may send is
 * decided here and unit-tested in isolation.  Parsers take the length
 * the peer claimed and never read past it; they return -EINVAL for
 * malformed input and -E2BIG for valid input beyond our limits.
 */
#ifndef VOLTRACK_NBD_WIRE_H
#define VOLTRACK_NBD_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

static inline void put_be16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

static inline void put_be32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

static inline void put_be64(uint8_t *p, uint64_t v)
{
	put_be32(p, (uint32_t)(v >> 32));
	put_be32(p + 4, (uint32_t)v);
}

static inline uint16_t get_be16(const uint8_t *p)
{
	return (uint16_t)((p[0] << 8) | p[1]);
}

static inline uint32_t get_be32(const uint8_t *p)
{
	return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) |
	       ((uint32_t)p[2] << 8) | p[3];
}

static inline uint64_t get_be64(const uint8_t *p)
{
	return ((uint64_t)get_be32(p) << 32) | get_be32(p + 4);
}

/* ---- strings ---- */

/* Valid NBD string: at most 4096 bytes of UTF-8 without NUL. */
bool nbd_string_valid(const uint8_t *s, size_t len);

/* ---- options ---- */

struct nbd_option {
	uint32_t option;
	uint32_t length;
};

/* -EINVAL when the magic is wrong. */
int nbd_option_decode(const uint8_t buf[16], struct nbd_option *opt);
/* Option reply header; returns 20. */
size_t nbd_option_reply_encode(uint8_t out[20], uint32_t option,
			       uint32_t type, uint32_t length);

/* NBD_OPT_INFO / NBD_OPT_GO payload. */
struct nbd_info_request {
	const uint8_t *name;
	uint32_t name_len;
	uint16_t ninfo;
	const uint8_t *info;	/* ninfo big-endian u16 */
};
int nbd_info_parse(const uint8_t *data, uint32_t len, struct nbd_info_request *out);
static inline uint16_t nbd_info_type(const struct nbd_info_request *r, uint16_t i)
{
	return get_be16(r->info + 2 * i);
}

/* NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT payload. */
struct nbd_meta_request {
	const uint8_t *name;
	uint32_t name_len;
	uint32_t nqueries;
	const uint8_t *queries;	/* validated: nqueries x (u32 len, string) */
};
int nbd_meta_parse(const uint8_t *data, uint32_t len, struct nbd_meta_request *out);

struct nbd_meta_iter {
	const uint8_t *p;
	uint32_t left;
};
/* After a successful parse: yields each query in order. */
void nbd_meta_iter_init(struct nbd_meta_iter *it, const struct nbd_meta_request *r);
bool nbd_meta_iter_next(struct nbd_meta_iter *it, const char **query, uint32_t *len);

/* ---- transmission ---- */

struct nbd_request {
	uint16_t flags;
	uint16_t type;
	uint64_t cookie;
	uint64_t offset;
	uint32_t length;
};

/* -EINVAL when the magic is wrong: the stream cannot be trusted after. */
int nbd_request_decode(const uint8_t buf[28], struct nbd_request *rq);

/* What a connection negotiated, for request validation. */
struct nbd_limits {
	uint64_t export_size;
	uint32_t max_payload;	/* READ and WRITE lengths */
	uint16_t eflags;	/* transmission flags sent to the client */
	bool structured;
	bool have_contexts;	/* SET_META_CONTEXT selected at least one */
};

/*
 * Decide whether a well-framed request may run.  Returns 0 or the NBD
 * error to reply with.  The caller still consumes a WRITE's payload
 * (nbd_request_payload) either way, so the stream stays in step.
 */
uint32_t nbd_request_check(const struct nbd_request *rq, const struct nbd_limits *lim);

/* Bytes of payload that follow the header on the wire. */
static inline uint64_t nbd_request_payload(const struct nbd_request *rq)
{
	return rq->type == 1 /* NBD_CMD_WRITE */ ? rq->length : 0;
}

/* Map a negative errno from the I/O path onto the NBD error set. */
uint32_t nbd_errno_to_wire(int err);

/* Replies; each returns the number of bytes written to out. */
size_t nbd_simple_reply_encode(uint8_t out[16], uint32_t error, uint64_t cookie);
size_t nbd_chunk_encode(uint8_t out[20], uint16_t flags, uint16_t type,
			uint64_t cookie, uint32_t length);
/* A final error chunk with a message truncated to fit cap bytes in all. */
size_t nbd_error_chunk_encode(uint8_t *out, size_t cap, uint64_t cookie,
			      uint32_t error, const char *msg);

#endif
