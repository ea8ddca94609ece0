/*
 * exports: the table of named exports an NBD server offers.
 *
 * What an export is and does lives in the library (src/io/export.h);
 * this is only the list clients choose from by name: "" is the live
 * volume, snapshots will add "snapshot/NAME".  Handshake threads look
 * exports up while the server may add or remove them, so the table is
 * locked; it holds one reference per export, and a lookup hands out
 * another, which keeps an export alive after its removal until the
 * connections using it close.
 */
#ifndef VOLTRACK_NBD_EXPORTS_H
#define VOLTRACK_NBD_EXPORTS_H

#include <pthread.h>
#include <stddef.h>

#include "export.h"

struct nbd_export_table {
	pthread_mutex_t lock;
	struct vt_export **items;
	size_t n;
};

void export_table_init(struct nbd_export_table *t);
/* Drops the table's references; connections may still hold theirs. */
void export_table_destroy(struct nbd_export_table *t);

/* Takes a reference of its own; -EEXIST when the name is taken. */
int export_table_add(struct nbd_export_table *t, struct vt_export *e);
/* -ENOENT when no export has that name. */
int export_table_remove(struct nbd_export_table *t, const char *name);

/* A counted reference (vt_export_put() it), or NULL. */
struct vt_export *export_table_get(struct nbd_export_table *t,
				   const char *name, size_t len);

/* Calls fn for each export in order; stops early when fn returns non-zero. */
int export_table_each(struct nbd_export_table *t,
		      int (*fn)(void *arg, const struct vt_export *e), void *arg);

#endif
