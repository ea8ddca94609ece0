#include "invalidator.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoints.h"
#include "log.h"
#include "snapset.h"

/* At most one invalidation per live snapshot is ever outstanding. */
#define ITEMS_MAX CKPT_MAX

struct vt_inval_item {
	char name[CKPT_NAME_MAX + 1];
	char why[SNAP_WHY_MAX];
};

void vt_inval_init(struct vt_invalidator *inv,
		   int (*store)(void *arg, const char *name, const char *why), void *arg)
{
	memset(inv, 0, sizeof(*inv));
	inv->store = store;
	inv->arg = arg;
	pthread_mutex_init(&inv->lock, NULL);
	pthread_cond_init(&inv->cond, NULL);
}

void vt_inval_destroy(struct vt_invalidator *inv)
{
	vt_inval_stop(inv);
	pthread_cond_destroy(&inv->cond);
	pthread_mutex_destroy(&inv->lock);
	free(inv->items);
}

void vt_inval_queue(struct vt_invalidator *inv, const char *name, const char *why)
{
	pthread_mutex_lock(&inv->lock);
	if (!inv->items)
		inv->items = calloc(ITEMS_MAX, sizeof(*inv->items));
	if (!inv->items || inv->nitems == ITEMS_MAX) {
		/* Nobody waits for what is not queued: the writes go on. */
		pthread_mutex_unlock(&inv->lock);
		vt_error("snapshot '%s' is no longer valid (%s), but there is no room to record "
			 "it durably; after a crash it could come back as valid", name, why);
		return;
	}
	struct vt_inval_item *it = &inv->items[inv->nitems++];
	snprintf(it->name, sizeof(it->name), "%s", name);
	snprintf(it->why, sizeof(it->why), "%s", why);
	inv->queued++;
	pthread_cond_signal(&inv->cond);
	pthread_mutex_unlock(&inv->lock);
}

int vt_inval_wait(struct vt_invalidator *inv, struct vt_inval_wait *w)
{
	pthread_mutex_lock(&inv->lock);
	if (inv->stored == inv->queued) {
		pthread_mutex_unlock(&inv->lock);
		return 0;
	}
	w->ticket = inv->queued;
	w->next = inv->waiters;
	inv->waiters = w;
	pthread_mutex_unlock(&inv->lock);
	return 1;
}

/*
 * With inv->lock held: store what is queued, batch after batch, until
 * nothing is left, handing back after each batch the writers whose
 * tickets it covered.  The stores run without the lock, so writers can
 * queue and park meanwhile; their items make the next batch.
 */
static void drain_locked(struct vt_invalidator *inv)
{
	inv->running = true;
	while (inv->nitems) {
		unsigned n = inv->taken = inv->nitems, failed = 0;
		int err = 0;

		pthread_mutex_unlock(&inv->lock);
		for (unsigned i = 0; i < n; i++) {
			const struct vt_inval_item *it = &inv->items[i];
			vt_error("snapshot '%s' is no longer valid: %s; the volume's writes go on",
				 it->name, it->why);
			int e = inv->store ? inv->store(inv->arg, it->name, it->why) : 0;
			if (e) {
				vt_error("cannot record that snapshot '%s' is invalid: %s; after a "
					 "crash it could come back as valid", it->name, strerror(-e));
				err = err ? err : e;
				failed++;
			}
		}
		pthread_mutex_lock(&inv->lock);
		/* items[0, n) stayed put: queuers only append past nitems */
		memmove(inv->items, inv->items + n, (inv->nitems - n) * sizeof(*inv->items));
		inv->nitems -= n;
		inv->taken = 0;
		inv->stored += n;
		inv->stores += n;
		inv->failures += failed;
		struct vt_inval_wait *wake = NULL, **at = &inv->waiters;
		while (*at) {
			struct vt_inval_wait *w = *at;
			if (w->ticket <= inv->stored) {
				*at = w->next;
				w->next = wake;
				wake = w;
				inv->waits++;
			} else {
				at = &w->next;
			}
		}
		pthread_mutex_unlock(&inv->lock);
		while (wake) {
			struct vt_inval_wait *w = wake;
			wake = w->next;
			w->ready(w, err);
		}
		pthread_mutex_lock(&inv->lock);
	}
	inv->running = false;
}

static void *inval_main(void *arg)
{
	struct vt_invalidator *inv = arg;

	pthread_mutex_lock(&inv->lock);
	for (;;) {
		while (!inv->nitems && !inv->stop)
			pthread_cond_wait(&inv->cond, &inv->lock);
		if (!inv->nitems)
			break; /* stopped, and nothing is left to store */
		drain_locked(inv);
	}
	pthread_mutex_unlock(&inv->lock);
	return NULL;
}

int vt_inval_start(struct vt_invalidator *inv)
{
	pthread_mutex_lock(&inv->lock);
	int err = inv->started ? 0 : -pthread_create(&inv->thread, NULL, inval_main, inv);
	if (!err)
		inv->started = true;
	pthread_mutex_unlock(&inv->lock);
	return err;
}

void vt_inval_stop(struct vt_invalidator *inv)
{
	pthread_mutex_lock(&inv->lock);
	bool started = inv->started;
	inv->stop = true;
	pthread_cond_signal(&inv->cond);
	pthread_mutex_unlock(&inv->lock);
	if (started)
		pthread_join(inv->thread, NULL);
	pthread_mutex_lock(&inv->lock);
	inv->started = inv->stop = false;
	if (!inv->running)
		drain_locked(inv); /* anything left unstored: no waiter is forgotten */
	pthread_mutex_unlock(&inv->lock);
}

void vt_inval_run(struct vt_invalidator *inv)
{
	pthread_mutex_lock(&inv->lock);
	/* One runner at a time: one already under way takes these too. */
	if (!inv->started && !inv->running)
		drain_locked(inv);
	pthread_mutex_unlock(&inv->lock);
}
