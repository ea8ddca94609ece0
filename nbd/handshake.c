/*
 * Fixed-newstyle negotiation, on a blocking socket in its own thread.
 *
 * Every read and write waits at most until the deadline the whole
 * negotiation shares, so a client that stalls or trickles cannot hold a
 * thread past it.  Option payloads are bounded before they are read.  A
 * malformed option gets NBD_REP_ERR_INVALID and negotiation goes on; only
 * a broken frame (bad magic, an impossible length, unknown client flags)
 * ends the connection.
 *
 * With TLS configured the server is in the spec's FORCEDTLS mode: before
 * STARTTLS every option but ABORT is refused with ERR_TLS_REQD (without
 * acting on it), and EXPORT_NAME, which cannot be refused, closes the
 * connection.  A successful STARTTLS starts from a clean session, so
 * nothing a man in the middle may have sent in plaintext carries over
 * (the CVE-2021-3716 class).
 */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "deadline.h"
#include "log.h"
#include "proto.h"
#include "server_internal.h"
#include "tls.h"
#include "wire.h"

/* Generous for 64 contexts of 4 KiB names; anything larger is hostile. */
#define MAX_OPTION_LEN (1u << 20)

struct hs {
	struct nbd_server *srv;
	int fd;
	uint64_t deadline_ms;
	bool fixed;
	bool no_zeroes;
	uint8_t *buf;		/* current option's payload */
	size_t cap;
	struct nbd_session *s;
};

static int hs_wait(struct hs *h, short events)
{
	return net_wait(h->fd, events, h->deadline_ms);
}

static int hs_read(struct hs *h, void *buf, size_t len)
{
	uint8_t *p = buf;

	if (h->s->tls)
		return nbd_tls_read(h->s->tls, buf, len);
	while (len) {
		int err = hs_wait(h, POLLIN);
		if (err)
			return err;
		ssize_t n = recv(h->fd, p, len, MSG_DONTWAIT);
		if (n == 0)
			return -ECONNRESET;
		if (n < 0) {
			if (errno == EAGAIN || errno == EINTR)
				continue;
			return -errno;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static int hs_write(struct hs *h, const void *buf, size_t len)
{
	const uint8_t *p = buf;

	if (h->s->tls)
		return nbd_tls_write(h->s->tls, buf, len);
	while (len) {
		int err = hs_wait(h, POLLOUT);
		if (err)
			return err;
		ssize_t n = send(h->fd, p, len, MSG_DONTWAIT | MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EAGAIN || errno == EINTR)
				continue;
			return -errno;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static int reply(struct hs *h, uint32_t opt, uint32_t type, const void *data, uint32_t len)
{
	uint8_t hdr[NBD_OPTION_REPLY_HEADER_SIZE];
	int err;

	nbd_option_reply_encode(hdr, opt, type, len);
	err = hs_write(h, hdr, sizeof(hdr));
	if (!err && len)
		err = hs_write(h, data, len);
	return err;
}

/* An error reply carries a message for the human behind the client. */
static int reply_error(struct hs *h, uint32_t opt, uint32_t type, const char *msg)
{
	return reply(h, opt, type, msg, (uint32_t)strlen(msg));
}

/* Read and drop n bytes, for an option we refuse without looking. */
static int skip(struct hs *h, uint32_t n)
{
	uint8_t scratch[4096];

	while (n) {
		uint32_t k = n < sizeof(scratch) ? n : (uint32_t)sizeof(scratch);
		int err = hs_read(h, scratch, k);
		if (err)
			return err;
		n -= k;
	}
	return 0;
}

static uint16_t export_flags(const struct vt_export *e, bool structured)
{
	uint16_t f = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_CACHE |
		     NBD_FLAG_CAN_MULTI_CONN;

	/* Every connection shares one descriptor of one volume and replies
	 * only after the kernel has the data, so a FLUSH on any connection
	 * (fdatasync) covers writes acknowledged on all of them. */
	if (vt_export_read_only(e))
		f |= NBD_FLAG_READ_ONLY;
	else
		f |= NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_TRIM |
		     NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_FAST_ZERO;
	if (structured)
		f |= NBD_FLAG_SEND_DF;
	return f;
}

static struct vt_export *lookup(struct hs *h, const uint8_t *name, uint32_t len)
{
	return export_table_get(&h->srv->exports, (const char *)name, len);
}

/* Enter transmission for exp: settle what the session carries over. */
static void select_export(struct hs *h, struct vt_export *exp)
{
	struct nbd_session *s = h->s;

	s->export = exp;
	s->eflags = export_flags(exp, s->structured);
	/* Contexts chosen for another export do not carry over. */
	if (s->contexts_export != exp)
		metactx_selection_clear(&s->contexts);
}

static int opt_export_name(struct hs *h, uint32_t len)
{
	uint8_t tail[10 + 124] = { 0 };
	struct vt_export *exp;

	/* This option has no error reply: a bad or unknown name can only
	 * end the connection. */
	if (!nbd_string_valid(h->buf, len))
		return -EINVAL;
	exp = lookup(h, h->buf, len);
	if (!exp) {
		vt_warn("client asked for unknown export '%.*s'", (int)(len > 64 ? 64 : len),
			(const char *)h->buf);
		return -ENOENT;
	}
	select_export(h, exp);
	put_be64(tail, vt_export_size(exp));
	put_be16(tail + 8, h->s->eflags);
	return hs_write(h, tail, h->no_zeroes ? 10 : sizeof(tail));
}

static int send_info(struct hs *h, uint32_t opt, uint16_t type, const void *payload,
		     uint32_t len)
{
	uint8_t hdr[NBD_OPTION_REPLY_HEADER_SIZE + 2];
	int err;

	nbd_option_reply_encode(hdr, opt, NBD_REP_INFO, 2 + len);
	put_be16(hdr + NBD_OPTION_REPLY_HEADER_SIZE, type);
	err = hs_write(h, hdr, sizeof(hdr));
	if (!err && len)
		err = hs_write(h, payload, len);
	return err;
}

/* NBD_OPT_INFO and NBD_OPT_GO.  Returns 1 when GO succeeded. */
static int opt_info_go(struct hs *h, uint32_t opt, uint32_t len)
{
	struct nbd_info_request req;
	struct vt_export *exp;
	bool want_name = false, want_desc = false;
	uint8_t payload[12];
	int err;

	if (nbd_info_parse(h->buf, len, &req) < 0)
		return reply_error(h, opt, NBD_REP_ERR_INVALID, "malformed INFO/GO request");
	exp = lookup(h, req.name, req.name_len);
	if (!exp)
		return reply_error(h, opt, NBD_REP_ERR_UNKNOWN, "no such export");
	for (uint16_t i = 0; i < req.ninfo; i++) {
		uint16_t t = nbd_info_type(&req, i);
		want_name |= t == NBD_INFO_NAME;
		want_desc |= t == NBD_INFO_DESCRIPTION;
	}

	uint16_t eflags = export_flags(exp, h->s->structured);
	put_be64(payload, vt_export_size(exp));
	put_be16(payload + 8, eflags);
	err = send_info(h, opt, NBD_INFO_EXPORT, payload, 10);
	if (!err) {
		/* We honour any request size from 1 byte up to the maximum;
		 * 4 KiB is what the page cache handles best. */
		put_be32(payload, 1);
		put_be32(payload + 4, 4096);
		put_be32(payload + 8, h->srv->cfg.max_payload);
		err = send_info(h, opt, NBD_INFO_BLOCK_SIZE, payload, 12);
	}
	if (!err && want_name)
		err = send_info(h, opt, NBD_INFO_NAME, exp->name, (uint32_t)strlen(exp->name));
	if (!err && want_desc && exp->description[0])
		err = send_info(h, opt, NBD_INFO_DESCRIPTION, exp->description,
				(uint32_t)strlen(exp->description));
	if (!err)
		err = reply(h, opt, NBD_REP_ACK, NULL, 0);
	if (err || opt == NBD_OPT_INFO) {
		vt_export_put(exp);
		return err;
	}
	select_export(h, exp);
	return 1;
}

/* Names gathered under the table lock, sent after it is released. */
struct name_list {
	char **names;
	size_t n, cap;
	bool failed;
};

static void name_list_add(struct name_list *l, const char *name)
{
	for (size_t i = 0; i < l->n; i++)
		if (strcmp(l->names[i], name) == 0)
			return;
	if (l->n == l->cap) {
		size_t cap = l->cap ? 2 * l->cap : 8;
		char **grown = realloc(l->names, cap * sizeof(*grown));
		if (!grown) {
			l->failed = true;
			return;
		}
		l->names = grown;
		l->cap = cap;
	}
	l->names[l->n] = strdup(name);
	if (l->names[l->n])
		l->n++;
	else
		l->failed = true;
}

static void name_list_free(struct name_list *l)
{
	for (size_t i = 0; i < l->n; i++)
		free(l->names[i]);
	free(l->names);
}

static int collect_export(void *arg, const struct vt_export *e)
{
	name_list_add(arg, e->name);
	return 0;
}

static int opt_list(struct hs *h, uint32_t opt, uint32_t len)
{
	struct name_list l = { 0 };
	int err = 0;

	if (len != 0)
		return reply_error(h, opt, NBD_REP_ERR_INVALID, "LIST takes no data");
	export_table_each(&h->srv->exports, collect_export, &l);
	if (l.failed) {
		name_list_free(&l);
		return reply_error(h, opt, NBD_REP_ERR_INVALID, "out of memory");
	}
	for (size_t i = 0; i < l.n && !err; i++) {
		uint32_t nlen = (uint32_t)strlen(l.names[i]);
		uint8_t hdr[NBD_OPTION_REPLY_HEADER_SIZE + 4];
		nbd_option_reply_encode(hdr, opt, NBD_REP_SERVER, 4 + nlen);
		put_be32(hdr + NBD_OPTION_REPLY_HEADER_SIZE, nlen);
		err = hs_write(h, hdr, sizeof(hdr));
		if (!err)
			err = hs_write(h, l.names[i], nlen);
	}
	name_list_free(&l);
	return err ? err : reply(h, opt, NBD_REP_ACK, NULL, 0);
}

static int send_context(struct hs *h, uint32_t opt, uint32_t id, const char *name)
{
	uint32_t nlen = (uint32_t)strlen(name);
	uint8_t hdr[NBD_OPTION_REPLY_HEADER_SIZE + 4];
	int err;

	nbd_option_reply_encode(hdr, opt, NBD_REP_META_CONTEXT, 4 + nlen);
	put_be32(hdr + NBD_OPTION_REPLY_HEADER_SIZE, id);
	err = hs_write(h, hdr, sizeof(hdr));
	return err ? err : hs_write(h, name, nlen);
}

static void collect_context(void *arg, const char *name)
{
	name_list_add(arg, name);
}

static int opt_meta_context(struct hs *h, uint32_t opt, uint32_t len)
{
	struct nbd_session *s = h->s;
	struct nbd_meta_request req;
	struct vt_export *exp;
	int err = 0;

	if (opt == NBD_OPT_SET_META_CONTEXT) {
		/* SET replaces the selection even when it fails. */
		metactx_selection_clear(&s->contexts);
		vt_export_put(s->contexts_export);
		s->contexts_export = NULL;
	}
	if (!s->structured)
		return reply_error(h, opt, NBD_REP_ERR_INVALID,
				   "negotiate structured replies first");
	if (nbd_meta_parse(h->buf, len, &req) < 0)
		return reply_error(h, opt, NBD_REP_ERR_INVALID, "malformed meta context request");
	exp = lookup(h, req.name, req.name_len);
	if (!exp)
		return reply_error(h, opt, NBD_REP_ERR_UNKNOWN, "no such export");

	if (opt == NBD_OPT_LIST_META_CONTEXT) {
		struct name_list l = { 0 };
		metactx_list(&h->srv->contexts, exp, &req, collect_context, &l);
		vt_export_put(exp);
		for (size_t i = 0; i < l.n && !err; i++)
			err = send_context(h, opt, 0, l.names[i]);
		name_list_free(&l);
		return err ? err : reply(h, opt, NBD_REP_ACK, NULL, 0);
	}

	err = metactx_select(&h->srv->contexts, exp, &req, &s->contexts);
	if (err) {
		vt_export_put(exp);
		return reply_error(h, opt, err == -E2BIG ? NBD_REP_ERR_TOO_BIG : NBD_REP_ERR_INVALID,
				   err == -E2BIG ? "too many contexts" : "out of memory");
	}
	s->contexts_export = exp;
	for (size_t i = 0; i < s->contexts.n && !err; i++)
		err = send_context(h, opt, s->contexts.items[i].id, s->contexts.items[i].name);
	return err ? err : reply(h, opt, NBD_REP_ACK, NULL, 0);
}

/* Forget everything negotiated so far; keep only the TLS session. */
static void forget_negotiated(struct nbd_session *s)
{
	struct nbd_tls *tls = s->tls;

	s->tls = NULL;
	nbd_session_release(s);
	memset(s, 0, sizeof(*s));
	s->tls = tls;
}

static int opt_starttls(struct hs *h, uint32_t len)
{
	const struct nbd_tls_creds *creds = h->srv->cfg.tls;
	struct nbd_tls *tls;
	int err;

	if (!creds)
		return reply_error(h, NBD_OPT_STARTTLS, NBD_REP_ERR_POLICY,
				   "TLS is not enabled on this server");
	if (h->s->tls)
		return reply_error(h, NBD_OPT_STARTTLS, NBD_REP_ERR_INVALID,
				   "TLS is already active");
	if (len)
		return reply_error(h, NBD_OPT_STARTTLS, NBD_REP_ERR_INVALID,
				   "STARTTLS takes no data");
	err = reply(h, NBD_OPT_STARTTLS, NBD_REP_ACK, NULL, 0);
	if (!err)
		err = nbd_tls_accept(creds, h->fd, h->deadline_ms, &tls);
	if (err)
		return err; /* too late for plaintext: the ACK is out */
	forget_negotiated(h->s);
	h->s->tls = tls;
	return 0;
}

/* Before STARTTLS on a server that requires TLS: 1 if the option may
 * go ahead, 0 once refused, -errno to close. */
static int tls_gate(struct hs *h, const struct nbd_option *opt)
{
	if (!h->srv->cfg.tls || h->s->tls)
		return 1;
	switch (opt->option) {
	case NBD_OPT_STARTTLS:
	case NBD_OPT_ABORT:
		return 1;
	case NBD_OPT_EXPORT_NAME:
		vt_warn("client asked for an export without TLS; closing");
		return -EACCES; /* no error reply exists for it */
	default: {
		int err = skip(h, opt->length);
		return err ? err : reply_error(h, opt->option, NBD_REP_ERR_TLS_REQD,
					       "TLS is required: send NBD_OPT_STARTTLS first");
	}
	}
}

/* One option.  Returns 1 to enter transmission, 0 to go on, -errno to close. */
static int handle_option(struct hs *h)
{
	uint8_t raw[NBD_OPTION_HEADER_SIZE];
	struct nbd_option opt;
	int err = hs_read(h, raw, sizeof(raw));

	if (err)
		return err;
	if (nbd_option_decode(raw, &opt) < 0)
		return -EPROTO;
	if (opt.length > MAX_OPTION_LEN) {
		vt_warn("client sent a %u-byte option %u; closing", opt.length, opt.option);
		return -EPROTO;
	}
	if (!h->fixed && opt.option != NBD_OPT_EXPORT_NAME)
		return -EPROTO; /* unfixed clients cannot receive errors */
	err = tls_gate(h, &opt);
	if (err <= 0)
		return err;

	switch (opt.option) {
	case NBD_OPT_EXPORT_NAME:
	case NBD_OPT_INFO:
	case NBD_OPT_GO:
	case NBD_OPT_LIST:
	case NBD_OPT_STRUCTURED_REPLY:
	case NBD_OPT_LIST_META_CONTEXT:
	case NBD_OPT_SET_META_CONTEXT:
	case NBD_OPT_STARTTLS:
	case NBD_OPT_ABORT:
		break;
	default:
		err = skip(h, opt.length);
		if (err)
			return err;
		return reply_error(h, opt.option, NBD_REP_ERR_UNSUP, "option not supported");
	}

	if (opt.length > h->cap) {
		uint8_t *grown = realloc(h->buf, opt.length);
		if (!grown)
			return -ENOMEM;
		h->buf = grown;
		h->cap = opt.length;
	}
	err = hs_read(h, h->buf, opt.length);
	if (err)
		return err;

	switch (opt.option) {
	case NBD_OPT_EXPORT_NAME:
		err = opt_export_name(h, opt.length);
		return err ? err : 1;
	case NBD_OPT_INFO:
	case NBD_OPT_GO:
		return opt_info_go(h, opt.option, opt.length);
	case NBD_OPT_LIST:
		return opt_list(h, opt.option, opt.length);
	case NBD_OPT_STRUCTURED_REPLY:
		if (opt.length)
			return reply_error(h, opt.option, NBD_REP_ERR_INVALID,
					   "STRUCTURED_REPLY takes no data");
		h->s->structured = true;
		return reply(h, opt.option, NBD_REP_ACK, NULL, 0);
	case NBD_OPT_LIST_META_CONTEXT:
	case NBD_OPT_SET_META_CONTEXT:
		return opt_meta_context(h, opt.option, opt.length);
	case NBD_OPT_STARTTLS:
		return opt_starttls(h, opt.length);
	case NBD_OPT_ABORT:
		reply(h, opt.option, NBD_REP_ACK, NULL, 0); /* best effort */
		return -ECONNABORTED;
	}
	return -EPROTO;
}

void nbd_session_release(struct nbd_session *s)
{
	metactx_selection_clear(&s->contexts);
	vt_export_put(s->contexts_export);
	vt_export_put(s->export);
	nbd_tls_free(s->tls);
	s->contexts_export = NULL;
	s->export = NULL;
	s->tls = NULL;
}

int nbd_handshake(struct nbd_server *srv, int fd, struct nbd_session *s)
{
	struct hs h = {
		.srv = srv,
		.fd = fd,
		.deadline_ms = net_now_ms() + srv->cfg.handshake_timeout_ms,
		.s = s,
	};
	uint8_t greeting[18];
	uint8_t cflags_raw[4];
	int err;

	memset(s, 0, sizeof(*s));
	put_be64(greeting, NBD_MAGIC);
	put_be64(greeting + 8, NBD_IHAVEOPT);
	put_be16(greeting + 16, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
	err = hs_write(&h, greeting, sizeof(greeting));
	if (!err)
		err = hs_read(&h, cflags_raw, sizeof(cflags_raw));
	if (!err) {
		uint32_t cflags = get_be32(cflags_raw);
		if (cflags & ~(uint32_t)(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES))
			err = -EPROTO; /* the spec says to close on unknown flags */
		h.fixed = cflags & NBD_FLAG_C_FIXED_NEWSTYLE;
		h.no_zeroes = cflags & NBD_FLAG_C_NO_ZEROES;
	}
	while (!err) {
		err = handle_option(&h);
		if (err == 1) {
			err = 0;
			break;
		}
	}
	free(h.buf);
	if (err) {
		nbd_session_release(s);
		return err;
	}
	/* Once in transmission the selection's own reference is not needed. */
	vt_export_put(s->contexts_export);
	s->contexts_export = NULL;
	return 0;
}
