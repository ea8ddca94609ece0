/*
 * export: the table of named NBD exports a server offers.
 *
 * "" is the live volume; snapshots will add "snapshot/NAME", read-only.
 * Handshake threads look exports up while the server may add or remove
 * them, so the table is locked and each export is reference-counted: a
 * connection keeps its export alive even after removal from the table.
 */
#ifndef VOLTRACK_NBD_EXPORT_H
#define VOLTRACK_NBD_EXPORT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tracker.h"
#include "volume.h"

struct nbd_export {
	char *name;
	char *description;
	struct volume *vol;	/* borrowed: the owner outlives every export */
	struct tracker *tracker; /* borrowed; NULL when writes are not tracked */
	bool read_only;
	atomic_uint refs;
	struct nbd_export *next;
};

struct nbd_export_table {
	pthread_mutex_t lock;
	struct nbd_export *head;
};

void export_table_init(struct nbd_export_table *t);
/* Drops the table's references; connections may still hold theirs. */
void export_table_destroy(struct nbd_export_table *t);

/* -EEXIST when the name is taken. */
int export_table_add(struct nbd_export_table *t, const char *name,
		     const char *description, struct volume *vol,
		     struct tracker *tracker, bool read_only);
int export_table_remove(struct nbd_export_table *t, const char *name);

/* A counted reference, or NULL. */
struct nbd_export *export_table_get(struct nbd_export_table *t,
				    const char *name, size_t len);
void export_put(struct nbd_export *e);

/* Calls fn for each export in order; stops early when fn returns non-zero. */
int export_table_each(struct nbd_export_table *t,
		      int (*fn)(void *arg, const struct nbd_export *e), void *arg);

static inline uint64_t export_size(const struct nbd_export *e)
{
	return e->vol->size;
}

#endif
