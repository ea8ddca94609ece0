#include "wire.h"

#include <errno.h>

#include "proto.h"

bool nbd_string_valid(const uint8_t *s, size_t len)
{
	size_t i = 0;

	if (len > NBD_MAX_STRING)
		return false;
	while (i < len) {
		uint8_t c = s[i];
		uint32_t cp;
		size_t need;

		if (c == 0)
			return false;
		if (c < 0x80) {
			i++;
			continue;
		}
		if ((c & 0xe0) == 0xc0) {
			need = 1;
			cp = c & 0x1f;
		} else if ((c & 0xf0) == 0xe0) {
			need = 2;
			cp = c & 0x0f;
		} else if ((c & 0xf8) == 0xf0) {
			need = 3;
			cp = c & 0x07;
		} else {
			return false;
		}
		if (len - i - 1 < need)
			return false;
		for (size_t k = 1; k <= need; k++) {
			if ((s[i + k] & 0xc0) != 0x80)
				return false;
			cp = (cp << 6) | (s[i + k] & 0x3f);
		}
		/* reject overlong forms, surrogates and beyond U+10FFFF */
		if ((need == 1 && cp < 0x80) || (need == 2 && cp < 0x800) ||
		    (need == 3 && cp < 0x10000) || cp > 0x10ffff ||
		    (cp >= 0xd800 && cp <= 0xdfff))
			return false;
		i += need + 1;
	}
	return true;
}

int nbd_option_decode(const uint8_t buf[16], struct nbd_option *opt)
{
	if (get_be64(buf) != NBD_IHAVEOPT)
		return -EINVAL;
	opt->option = get_be32(buf + 8);
	opt->length = get_be32(buf + 12);
	return 0;
}

size_t nbd_option_reply_encode(uint8_t out[20], uint32_t option,
			       uint32_t type, uint32_t length)
{
	put_be64(out, NBD_REP_MAGIC);
	put_be32(out + 8, option);
	put_be32(out + 12, type);
	put_be32(out + 16, length);
	return NBD_OPTION_REPLY_HEADER_SIZE;
}

int nbd_info_parse(const uint8_t *data, uint32_t len, struct nbd_info_request *out)
{
	if (len < 6)
		return -EINVAL;
	out->name_len = get_be32(data);
	if (out->name_len > len - 6)
		return -EINVAL;
	out->name = data + 4;
	if (!nbd_string_valid(out->name, out->name_len))
		return -EINVAL;
	out->ninfo = get_be16(data + 4 + out->name_len);
	out->info = data + 6 + out->name_len;
	if ((uint64_t)out->ninfo * 2 != (uint64_t)len - 6 - out->name_len)
		return -EINVAL;
	return 0;
}

int nbd_meta_parse(const uint8_t *data, uint32_t len, struct nbd_meta_request *out)
{
	uint32_t pos;

	if (len < 8)
		return -EINVAL;
	out->name_len = get_be32(data);
	if (out->name_len > len - 8)
		return -EINVAL;
	out->name = data + 4;
	if (!nbd_string_valid(out->name, out->name_len))
		return -EINVAL;
	pos = 4 + out->name_len;
	out->nqueries = get_be32(data + pos);
	pos += 4;
	out->queries = data + pos;
	for (uint32_t i = 0; i < out->nqueries; i++) {
		if (len - pos < 4)
			return -EINVAL;
		uint32_t qlen = get_be32(data + pos);
		pos += 4;
		if (qlen > len - pos || !nbd_string_valid(data + pos, qlen))
			return -EINVAL;
		pos += qlen;
	}
	return pos == len ? 0 : -EINVAL;
}

void nbd_meta_iter_init(struct nbd_meta_iter *it, const struct nbd_meta_request *r)
{
	it->p = r->queries;
	it->left = r->nqueries;
}

bool nbd_meta_iter_next(struct nbd_meta_iter *it, const char **query, uint32_t *len)
{
	if (!it->left)
		return false;
	*len = get_be32(it->p);
	*query = (const char *)it->p + 4;
	it->p += 4 + *len;
	it->left--;
	return true;
}

int nbd_request_decode(const uint8_t buf[28], struct nbd_request *rq)
{
	if (get_be32(buf) != NBD_REQUEST_MAGIC)
		return -EINVAL;
	rq->flags = get_be16(buf + 4);
	rq->type = get_be16(buf + 6);
	rq->cookie = get_be64(buf + 8);
	rq->offset = get_be64(buf + 16);
	rq->length = get_be32(buf + 24);
	return 0;
}

uint32_t nbd_request_check(const struct nbd_request *rq, const struct nbd_limits *lim)
{
	const uint16_t ef = lim->eflags;
	const bool ro = ef & NBD_FLAG_READ_ONLY;
	uint16_t allowed = (ef & NBD_FLAG_SEND_FUA) ? NBD_CMD_FLAG_FUA : 0;
	bool writes = false, ranged = true;

	switch (rq->type) {
	case NBD_CMD_READ:
		if (lim->structured && (ef & NBD_FLAG_SEND_DF))
			allowed |= NBD_CMD_FLAG_DF;
		break;
	case NBD_CMD_WRITE:
		writes = true;
		break;
	case NBD_CMD_DISC:
	case NBD_CMD_FLUSH:
		ranged = false;
		break;
	case NBD_CMD_TRIM:
		writes = true;
		break;
	case NBD_CMD_CACHE:
		if (!(ef & NBD_FLAG_SEND_CACHE))
			return NBD_EINVAL;
		break;
	case NBD_CMD_WRITE_ZEROES:
		writes = true;
		allowed |= NBD_CMD_FLAG_NO_HOLE;
		if (ef & NBD_FLAG_SEND_FAST_ZERO)
			allowed |= NBD_CMD_FLAG_FAST_ZERO;
		break;
	case NBD_CMD_BLOCK_STATUS:
		allowed |= NBD_CMD_FLAG_REQ_ONE;
		if (!lim->structured || !lim->have_contexts || rq->length == 0)
			return NBD_EINVAL;
		break;
	default:
		return NBD_EINVAL;
	}
	if (rq->flags & ~allowed)
		return NBD_EINVAL;
	if (writes && ro)
		return NBD_EPERM;
	if (rq->type == NBD_CMD_TRIM && !(ef & NBD_FLAG_SEND_TRIM))
		return NBD_EINVAL;
	if (rq->type == NBD_CMD_WRITE_ZEROES && !(ef & NBD_FLAG_SEND_WRITE_ZEROES))
		return NBD_EINVAL;
	if ((rq->type == NBD_CMD_READ || rq->type == NBD_CMD_WRITE) &&
	    rq->length > lim->max_payload)
		return NBD_EINVAL;
	if (!ranged)
		return 0;
	if (rq->offset > UINT64_MAX - rq->length)
		return NBD_EINVAL; /* wraps around: nonsense, not merely too far */
	if (rq->offset + rq->length > lim->export_size)
		return (rq->type == NBD_CMD_WRITE || rq->type == NBD_CMD_WRITE_ZEROES) ?
		       NBD_ENOSPC : NBD_EINVAL;
	return 0;
}

uint32_t nbd_errno_to_wire(int err)
{
	switch (-err) {
	case 0:
		return 0;
	case EPERM:
	case EROFS:
		return NBD_EPERM;
	case ENOMEM:
		return NBD_ENOMEM;
	case EINVAL:
		return NBD_EINVAL;
	case ENOSPC:
	case EDQUOT:
	case EFBIG:
		return NBD_ENOSPC;
	case EOVERFLOW:
		return NBD_EOVERFLOW;
	case ENOTSUP:
		return NBD_ENOTSUP;
	case ESHUTDOWN:
		return NBD_ESHUTDOWN;
	default:
		return NBD_EIO;
	}
}

size_t nbd_simple_reply_encode(uint8_t out[16], uint32_t error, uint64_t cookie)
{
	put_be32(out, NBD_SIMPLE_REPLY_MAGIC);
	put_be32(out + 4, error);
	put_be64(out + 8, cookie);
	return NBD_SIMPLE_REPLY_SIZE;
}

size_t nbd_chunk_encode(uint8_t out[20], uint16_t flags, uint16_t type,
			uint64_t cookie, uint32_t length)
{
	put_be32(out, NBD_CHUNK_MAGIC);
	put_be16(out + 4, flags);
	put_be16(out + 6, type);
	put_be64(out + 8, cookie);
	put_be32(out + 16, length);
	return NBD_CHUNK_HEADER_SIZE;
}

size_t nbd_error_chunk_encode(uint8_t *out, size_t cap, uint64_t cookie,
			      uint32_t error, const char *msg)
{
	size_t fixed = NBD_CHUNK_HEADER_SIZE + 6;
	size_t mlen = msg ? strlen(msg) : 0;

	if (cap < fixed)
		return 0;
	if (mlen > cap - fixed)
		mlen = cap - fixed;
	/* Never cut a UTF-8 sequence in half. */
	while (mlen && ((uint8_t)msg[mlen] & 0xc0) == 0x80)
		mlen--;
	nbd_chunk_encode(out, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, cookie,
			 (uint32_t)(6 + mlen));
	put_be32(out + 20, error);
	put_be16(out + 24, (uint16_t)mlen);
	if (mlen)
		memcpy(out + 26, msg, mlen);
	return fixed + mlen;
}
