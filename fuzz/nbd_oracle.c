#include "nbd_oracle.h"

#include <stdbool.h>
#include <string.h>

#include "fixture.h"

/* The protocol's numbers, written out here rather than taken from nbd/. */
#define M_NBD		0x4e42444d41474943ull
#define M_OPT		0x49484156454F5054ull
#define M_REP		0x3e889045565a9ull
#define M_REQ		0x25609513u
#define M_SIMPLE	0x67446698u
#define M_CHUNK		0x668e33efu
#define MAX_OPTION	(1u << 20)	/* doc/nbd.md: longer options close */
#define MAX_REQS	4096

struct stream {
	const uint8_t *p;
	size_t n, pos;
};

static bool have(const struct stream *s, size_t k)
{
	return s->n - s->pos >= k;
}

static uint64_t be(const uint8_t *p, int bytes)
{
	uint64_t v = 0;

	for (int i = 0; i < bytes; i++)
		v = v << 8 | p[i];
	return v;
}

static uint64_t take(struct stream *s, int bytes)
{
	uint64_t v = be(s->p + s->pos, bytes);

	s->pos += (size_t)bytes;
	return v;
}

static bool nbd_error(uint32_t e)
{
	return e == 1 || e == 5 || e == 12 || e == 22 || e == 28 || e == 75 || e == 95 ||
	       e == 108;
}

struct req {
	uint64_t cookie, off;
	uint32_t len;
	uint16_t type, flags;
	bool answered;
};

static struct req reqs[MAX_REQS];

/* The requests the server reads: up to a bad magic, a DISC or the end. */
static size_t parse_requests(struct stream *c)
{
	size_t n = 0;

	while (n < MAX_REQS && have(c, 28)) {
		const uint8_t *h = c->p + c->pos;
		if (be(h, 4) != M_REQ)
			break;
		struct req *r = &reqs[n];
		r->flags = (uint16_t)be(h + 4, 2);
		r->type = (uint16_t)be(h + 6, 2);
		r->cookie = be(h + 8, 8);
		r->off = be(h + 16, 8);
		r->len = (uint32_t)be(h + 24, 4);
		r->answered = false;
		c->pos += 28;
		if (r->type == 2)	/* DISC: nothing after it is read */
			break;
		n++;
		if (r->type == 1) {	/* a WRITE's payload is read, also when refused */
			if (!have(c, r->len))
				break;	/* never complete: never started */
			c->pos += r->len;
		}
	}
	return n;
}

/* The unanswered request a reply with this cookie answers; NULL when
 * none; *ambiguous when several of different shapes could be it. */
static struct req *match(size_t n, uint64_t cookie, bool *ambiguous)
{
	struct req *found = NULL;

	*ambiguous = false;
	for (size_t i = 0; i < n; i++) {
		struct req *r = &reqs[i];
		if (r->answered || r->cookie != cookie)
			continue;
		if (!found)
			found = r;
		else if (found->type != r->type || found->len != r->len ||
			 found->flags != r->flags || found->off != r->off)
			*ambiguous = true;
	}
	return found;
}

static void check_block_status(const struct req *r, const uint8_t *p, uint32_t len)
{
	FUZZ_CHECK(r->type == 7, "a BLOCK_STATUS chunk answers another command");
	FUZZ_CHECK(len >= 12 && (len - 4) % 8 == 0, "a BLOCK_STATUS chunk of a bad length");
	uint32_t nd = (len - 4) / 8;
	uint64_t sum = 0;
	for (uint32_t i = 0; i < nd; i++) {
		uint32_t l = (uint32_t)be(p + 4 + 8 * i, 4);
		FUZZ_CHECK(l != 0, "a block-status descriptor of length 0");
		sum += l;
	}
	FUZZ_CHECK(sum <= r->len, "block-status descriptors run past the request");
	if (r->flags & 8)
		FUZZ_CHECK(nd == 1, "REQ_ONE answered with more than one descriptor");
}

static void check_chunk(const struct req *r, uint16_t type, const uint8_t *p, uint32_t len,
			bool done)
{
	switch (type) {
	case 0:		/* NONE */
		FUZZ_CHECK(len == 0 && done, "a NONE chunk with data, or not final");
		break;
	case 1: {	/* OFFSET_DATA */
		FUZZ_CHECK(r->type == 0 && len >= 8, "OFFSET_DATA for no READ");
		uint64_t off = be(p, 8);
		FUZZ_CHECK(off >= r->off && off + (len - 8) <= r->off + r->len,
			   "OFFSET_DATA outside the request");
		break;
	}
	case 2: {	/* OFFSET_HOLE */
		FUZZ_CHECK(r->type == 0 && len == 12, "OFFSET_HOLE for no READ, or malformed");
		uint64_t off = be(p, 8);
		FUZZ_CHECK(off >= r->off && off + be(p + 8, 4) <= r->off + r->len,
			   "OFFSET_HOLE outside the request");
		break;
	}
	case 5:		/* BLOCK_STATUS */
		check_block_status(r, p, len);
		break;
	case 0x8001:	/* ERROR */
	case 0x8002:	/* ERROR_OFFSET */
		FUZZ_CHECK(len >= 6, "an error chunk too short for its error");
		FUZZ_CHECK(nbd_error((uint32_t)be(p, 4)), "an error outside the NBD set");
		FUZZ_CHECK(be(p + 4, 2) + 6 + (type == 0x8002 ? 8 : 0) == len,
			   "an error chunk whose message length disagrees with it");
		break;
	default:
		FUZZ_CHECK(0, "a chunk of unknown type");
	}
}

static void transmission(struct stream *c, struct stream *s, bool structured)
{
	size_t n = parse_requests(c);

	while (have(s, 4)) {
		uint32_t magic = (uint32_t)be(s->p + s->pos, 4);
		bool ambiguous;

		if (magic == M_SIMPLE) {
			if (!have(s, 16))
				return; /* cut off by a kill after a client error */
			s->pos += 4;
			uint32_t err = (uint32_t)take(s, 4);
			uint64_t cookie = take(s, 8);
			struct req *r = match(n, cookie, &ambiguous);
			if (ambiguous)
				return;
			FUZZ_CHECK(r, "a simple reply to no outstanding request");
			FUZZ_CHECK(err == 0 || nbd_error(err), "an error outside the NBD set");
			FUZZ_CHECK(!(structured && r->type == 0),
				   "a simple reply to a READ after structured replies were agreed");
			r->answered = true;
			if (r->type == 0 && err == 0) {
				if (!have(s, r->len))
					return;
				s->pos += r->len;
			}
			continue;
		}
		FUZZ_CHECK(magic == M_CHUNK, "a reply with neither reply magic");
		FUZZ_CHECK(structured, "a structured reply nobody negotiated");
		if (!have(s, 20))
			return;
		s->pos += 4;
		uint16_t flags = (uint16_t)take(s, 2), type = (uint16_t)take(s, 2);
		uint64_t cookie = take(s, 8);
		uint32_t len = (uint32_t)take(s, 4);
		if (!have(s, len))
			return;
		struct req *r = match(n, cookie, &ambiguous);
		if (ambiguous)
			return;
		FUZZ_CHECK(r, "a chunk for no outstanding request");
		check_chunk(r, type, s->p + s->pos, len, flags & 1);
		s->pos += len;
		if (flags & 1)
			r->answered = true;
	}
}

void nbd_oracle_check(const uint8_t *client, size_t client_len,
		      const uint8_t *server, size_t server_len)
{
	struct stream c = { client, client_len, 0 }, s = { server, server_len, 0 };
	bool structured = false;

	if (!have(&s, 18))
		return;
	FUZZ_CHECK(take(&s, 8) == M_NBD && take(&s, 8) == M_OPT, "a bad greeting");
	s.pos += 2;
	if (!have(&c, 4))
		return;
	uint32_t cflags = (uint32_t)take(&c, 4);
	if (cflags & ~3u) {
		FUZZ_CHECK(!have(&s, 1), "an answer to a client with unknown flags");
		return;
	}
	bool fixed = cflags & 1, no_zeroes = cflags & 2;

	while (have(&c, 16)) {
		if (take(&c, 8) != M_OPT)
			return; /* the server closes */
		uint32_t opt = (uint32_t)take(&c, 4), len = (uint32_t)take(&c, 4);
		if (len > MAX_OPTION || !have(&c, len) || (!fixed && opt != 1))
			return; /* closed, or waiting for data that never comes */
		c.pos += len;
		if (opt == 1) {	/* EXPORT_NAME: the export's size and flags, or a close */
			size_t tail = no_zeroes ? 10 : 134;
			if (!have(&s, 1))
				return;
			FUZZ_CHECK(have(&s, tail), "EXPORT_NAME answered short");
			s.pos += tail;
			transmission(&c, &s, structured);
			return;
		}
		for (;;) {
			if (!have(&s, 1))
				return; /* closed between messages */
			FUZZ_CHECK(have(&s, 20), "an option reply cut short");
			FUZZ_CHECK(take(&s, 8) == M_REP, "an option reply without its magic");
			FUZZ_CHECK(take(&s, 4) == opt, "an option reply for another option");
			uint32_t type = (uint32_t)take(&s, 4), rlen = (uint32_t)take(&s, 4);
			FUZZ_CHECK(have(&s, rlen), "an option reply shorter than it says");
			s.pos += rlen;
			if (type != 1 && !(type & 0x80000000u))
				continue; /* SERVER, INFO, META_CONTEXT: more follow */
			if (opt == 8 && type == 1)
				structured = true;
			if (opt == 7 && type == 1) {
				transmission(&c, &s, structured);
				return;
			}
			if (opt == 2) {
				FUZZ_CHECK(!have(&s, 1), "the server went on after ABORT");
				return;
			}
			break;
		}
	}
}
