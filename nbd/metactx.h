/*
 * metactx: the registry of NBD metadata contexts.
 *
 * The protocol code knows nothing about what a context means.  Each
 * namespace ("base:", "qemu:dirty-bitmap:") is a provider that lists the
 * contexts it offers on an export, opens one by exact name, and answers
 * block-status queries for it.  New providers (the change tracker's
 * dirty bitmaps) register at run time without touching the handshake or
 * transmission code.
 *
 * Providers are never removed while a server runs; an opened context
 * lives until the connection that opened it closes it.
 */
#ifndef VOLTRACK_NBD_METACTX_H
#define VOLTRACK_NBD_METACTX_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "export.h"
#include "wire.h"

struct nbd_extent {
	uint32_t length;
	uint32_t flags;
};

typedef void (*metactx_emit_fn)(void *arg, const char *name);

struct metactx_provider {
	const char *prefix;	/* names start with it, e.g. "base:" */
	void *opaque;
	/* Emit the contexts on exp that match query; query NULL means all.
	 * Called only for queries in this provider's namespace. */
	void (*list)(void *opaque, const struct vt_export *exp,
		     const char *query, size_t qlen, metactx_emit_fn emit, void *arg);
	/* Open the context with exactly this name: 0, or -ENOENT. */
	int (*open)(void *opaque, const struct vt_export *exp,
		    const char *name, size_t len, void **ctx);
	/* Describe [off, off+len): at least one and at most max extents, the
	 * last of which may end short of len.  -errno on failure; -ENOENT
	 * when what the context describes is gone (a deleted checkpoint). */
	int (*extents)(void *ctx, const struct vt_export *exp, uint64_t off,
		       uint64_t len, struct nbd_extent *out, size_t max);
	void (*close)(void *ctx);
};

#define METACTX_MAX_PROVIDERS 8
#define METACTX_MAX_SELECTED 64

struct metactx_registry {
	pthread_mutex_t lock;
	const struct metactx_provider *providers[METACTX_MAX_PROVIDERS];
	size_t n;
};

/* Does a query or name of `len` bytes (not NUL-terminated on the wire)
 * equal the literal?  For providers matching their names. */
bool metactx_name_is(const char *s, size_t len, const char *lit);

void metactx_registry_init(struct metactx_registry *r);
void metactx_registry_destroy(struct metactx_registry *r);
int metactx_register(struct metactx_registry *r, const struct metactx_provider *p);

struct metactx_selected {
	uint32_t id;
	const struct metactx_provider *provider;
	void *ctx;
	char *name;
};

/* What one connection selected with NBD_OPT_SET_META_CONTEXT. */
struct metactx_selection {
	struct metactx_selected items[METACTX_MAX_SELECTED];
	size_t n;
	uint32_t next_id;	/* ids are never reused within a connection */
	const struct vt_export *export; /* the export they were chosen for */
};

void metactx_selection_clear(struct metactx_selection *sel);

/* NBD_OPT_LIST_META_CONTEXT: emit every match (all, for zero queries). */
void metactx_list(struct metactx_registry *r, const struct vt_export *exp,
		  const struct nbd_meta_request *req, metactx_emit_fn emit, void *arg);

/*
 * NBD_OPT_SET_META_CONTEXT: replace sel with the contexts the queries
 * name exactly; a context named twice is selected once.  Queries that
 * name nothing are ignored.  -E2BIG (and an empty selection) when more
 * than METACTX_MAX_SELECTED would be chosen, -ENOMEM likewise.
 */
int metactx_select(struct metactx_registry *r, const struct vt_export *exp,
		   const struct nbd_meta_request *req, struct metactx_selection *sel);

/* The base:allocation provider, backed by the export's allocation op. */
extern const struct metactx_provider metactx_base_allocation;

/* qemu:dirty-bitmap:NAME for each checkpoint of a tracked export. */
extern const struct metactx_provider metactx_dirty_bitmap;

#endif
