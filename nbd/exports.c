#include "exports.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

void export_table_init(struct nbd_export_table *t)
{
	pthread_mutex_init(&t->lock, NULL);
	t->items = NULL;
	t->n = 0;
}

void export_table_destroy(struct nbd_export_table *t)
{
	for (size_t i = 0; i < t->n; i++)
		vt_export_put(t->items[i]);
	free(t->items);
	t->items = NULL;
	t->n = 0;
	pthread_mutex_destroy(&t->lock);
}

int export_table_add(struct nbd_export_table *t, struct vt_export *e)
{
	pthread_mutex_lock(&t->lock);
	for (size_t i = 0; i < t->n; i++) {
		if (strcmp(t->items[i]->name, e->name) == 0) {
			pthread_mutex_unlock(&t->lock);
			return -EEXIST;
		}
	}
	struct vt_export **grown = realloc(t->items, (t->n + 1) * sizeof(*grown));
	if (!grown) {
		pthread_mutex_unlock(&t->lock);
		return -ENOMEM;
	}
	t->items = grown;
	t->items[t->n++] = vt_export_get(e);
	pthread_mutex_unlock(&t->lock);
	return 0;
}

int export_table_remove(struct nbd_export_table *t, const char *name)
{
	pthread_mutex_lock(&t->lock);
	for (size_t i = 0; i < t->n; i++) {
		struct vt_export *e = t->items[i];
		if (strcmp(e->name, name) == 0) {
			/* Keep the order: NBD_OPT_LIST shows exports as added. */
			memmove(&t->items[i], &t->items[i + 1], (t->n - i - 1) * sizeof(*t->items));
			t->n--;
			pthread_mutex_unlock(&t->lock);
			vt_export_put(e);
			return 0;
		}
	}
	pthread_mutex_unlock(&t->lock);
	return -ENOENT;
}

struct vt_export *export_table_get(struct nbd_export_table *t,
				   const char *name, size_t len)
{
	struct vt_export *found = NULL;

	pthread_mutex_lock(&t->lock);
	for (size_t i = 0; i < t->n; i++) {
		struct vt_export *e = t->items[i];
		/* name may be NULL when len is 0: the client sent no data. */
		if (strlen(e->name) == len && (len == 0 || memcmp(e->name, name, len) == 0)) {
			found = vt_export_get(e);
			break;
		}
	}
	pthread_mutex_unlock(&t->lock);
	return found;
}

int export_table_each(struct nbd_export_table *t,
		      int (*fn)(void *arg, const struct vt_export *e), void *arg)
{
	int ret = 0;

	pthread_mutex_lock(&t->lock);
	for (size_t i = 0; i < t->n && !ret; i++)
		ret = fn(arg, t->items[i]);
	pthread_mutex_unlock(&t->lock);
	return ret;
}
