#include "metactx.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

bool metactx_name_is(const char *s, size_t len, const char *lit)
{
	return len == strlen(lit) && memcmp(s, lit, len) == 0;
}

void metactx_registry_init(struct metactx_registry *r)
{
	pthread_mutex_init(&r->lock, NULL);
	r->n = 0;
}

void metactx_registry_destroy(struct metactx_registry *r)
{
	pthread_mutex_destroy(&r->lock);
}

int metactx_register(struct metactx_registry *r, const struct metactx_provider *p)
{
	int err = 0;

	pthread_mutex_lock(&r->lock);
	if (r->n == METACTX_MAX_PROVIDERS)
		err = -ENOSPC;
	else
		r->providers[r->n++] = p;
	pthread_mutex_unlock(&r->lock);
	return err;
}

/* Length of the namespace part, colon included; 0 if there is none. */
static size_t namespace_len(const char *s, size_t len)
{
	const char *colon = memchr(s, ':', len);
	return colon ? (size_t)(colon - s) + 1 : 0;
}

static bool in_namespace(const struct metactx_provider *p, const char *q, size_t qlen)
{
	size_t plen = strlen(p->prefix);
	size_t ns = namespace_len(p->prefix, plen);
	return ns && qlen >= ns && memcmp(q, p->prefix, ns) == 0;
}

void metactx_selection_clear(struct metactx_selection *sel)
{
	for (size_t i = 0; i < sel->n; i++) {
		if (sel->items[i].provider->close)
			sel->items[i].provider->close(sel->items[i].ctx);
		free(sel->items[i].name);
	}
	sel->n = 0;
	sel->export = NULL;
}

void metactx_list(struct metactx_registry *r, const struct vt_export *exp,
		  const struct nbd_meta_request *req, metactx_emit_fn emit, void *arg)
{
	pthread_mutex_lock(&r->lock);
	for (size_t i = 0; i < r->n; i++) {
		const struct metactx_provider *p = r->providers[i];
		if (req->nqueries == 0) {
			p->list(p->opaque, exp, NULL, 0, emit, arg);
			continue;
		}
		struct nbd_meta_iter it;
		const char *q;
		uint32_t qlen;
		nbd_meta_iter_init(&it, req);
		while (nbd_meta_iter_next(&it, &q, &qlen))
			if (in_namespace(p, q, qlen))
				p->list(p->opaque, exp, q, qlen, emit, arg);
	}
	pthread_mutex_unlock(&r->lock);
}

static bool already_selected(const struct metactx_selection *sel,
			     const char *q, size_t qlen)
{
	for (size_t i = 0; i < sel->n; i++)
		if (strlen(sel->items[i].name) == qlen &&
		    memcmp(sel->items[i].name, q, qlen) == 0)
			return true;
	return false;
}

int metactx_select(struct metactx_registry *r, const struct vt_export *exp,
		   const struct nbd_meta_request *req, struct metactx_selection *sel)
{
	struct nbd_meta_iter it;
	const char *q;
	uint32_t qlen;
	int err = 0;

	metactx_selection_clear(sel);
	sel->export = exp;
	nbd_meta_iter_init(&it, req);
	pthread_mutex_lock(&r->lock);
	while (!err && nbd_meta_iter_next(&it, &q, &qlen)) {
		if (already_selected(sel, q, qlen))
			continue;
		for (size_t i = 0; i < r->n; i++) {
			const struct metactx_provider *p = r->providers[i];
			void *ctx = NULL;
			if (!in_namespace(p, q, qlen) || p->open(p->opaque, exp, q, qlen, &ctx))
				continue;
			char *name = sel->n < METACTX_MAX_SELECTED ? strndup(q, qlen) : NULL;
			if (!name) {
				if (p->close)
					p->close(ctx);
				err = sel->n < METACTX_MAX_SELECTED ? -ENOMEM : -E2BIG;
				break;
			}
			sel->items[sel->n++] = (struct metactx_selected){
				.id = ++sel->next_id, .provider = p, .ctx = ctx, .name = name,
			};
			break;
		}
	}
	pthread_mutex_unlock(&r->lock);
	if (err)
		metactx_selection_clear(sel);
	return err;
}
