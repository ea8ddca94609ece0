#include "export.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

void export_table_init(struct nbd_export_table *t)
{
	pthread_mutex_init(&t->lock, NULL);
	t->head = NULL;
}

void export_table_destroy(struct nbd_export_table *t)
{
	struct nbd_export *e = t->head;

	while (e) {
		struct nbd_export *next = e->next;
		export_put(e);
		e = next;
	}
	t->head = NULL;
	pthread_mutex_destroy(&t->lock);
}

int export_table_add(struct nbd_export_table *t, const char *name,
		     const char *description, struct volume *vol,
		     struct tracker *tracker, bool read_only)
{
	struct nbd_export *e = calloc(1, sizeof(*e));

	if (!e)
		return -ENOMEM;
	e->name = strdup(name);
	e->description = strdup(description ? description : "");
	if (!e->name || !e->description) {
		free(e->name);
		free(e->description);
		free(e);
		return -ENOMEM;
	}
	e->vol = vol;
	e->tracker = tracker;
	e->read_only = read_only || vol->read_only;
	atomic_init(&e->refs, 1);

	pthread_mutex_lock(&t->lock);
	struct nbd_export **tail = &t->head;
	for (; *tail; tail = &(*tail)->next) {
		if (strcmp((*tail)->name, name) == 0) {
			pthread_mutex_unlock(&t->lock);
			export_put(e);
			return -EEXIST;
		}
	}
	*tail = e;
	pthread_mutex_unlock(&t->lock);
	return 0;
}

int export_table_remove(struct nbd_export_table *t, const char *name)
{
	pthread_mutex_lock(&t->lock);
	for (struct nbd_export **p = &t->head; *p; p = &(*p)->next) {
		if (strcmp((*p)->name, name) == 0) {
			struct nbd_export *e = *p;
			*p = e->next;
			pthread_mutex_unlock(&t->lock);
			export_put(e);
			return 0;
		}
	}
	pthread_mutex_unlock(&t->lock);
	return -ENOENT;
}

struct nbd_export *export_table_get(struct nbd_export_table *t,
				    const char *name, size_t len)
{
	struct nbd_export *found = NULL;

	pthread_mutex_lock(&t->lock);
	for (struct nbd_export *e = t->head; e; e = e->next) {
		if (strlen(e->name) == len && memcmp(e->name, name, len) == 0) {
			atomic_fetch_add(&e->refs, 1);
			found = e;
			break;
		}
	}
	pthread_mutex_unlock(&t->lock);
	return found;
}

void export_put(struct nbd_export *e)
{
	if (e && atomic_fetch_sub(&e->refs, 1) == 1) {
		free(e->name);
		free(e->description);
		free(e);
	}
}

int export_table_each(struct nbd_export_table *t,
		      int (*fn)(void *arg, const struct nbd_export *e), void *arg)
{
	int ret = 0;

	pthread_mutex_lock(&t->lock);
	for (struct nbd_export *e = t->head; e && !ret; e = e->next)
		ret = fn(arg, e);
	pthread_mutex_unlock(&t->lock);
	return ret;
}
