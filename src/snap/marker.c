#include "marker.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "diffstore.h"

static void *marker_main(void *arg)
{
	struct ds_marker *m = arg;

	pthread_mutex_lock(&m->lock);
	for (;;) {
		while (!m->head && !m->stop)
			pthread_cond_wait(&m->cond, &m->lock);
		if (!m->head)
			break; /* stopped, and nobody waits */
		struct ds_mark_wait *w = m->head;
		m->head = m->tail = NULL;
		pthread_mutex_unlock(&m->lock);

		/* One durable write of the mark for every copier taken in;
		 * those arriving during it wait for the next (or find the
		 * mark set and do not wait at all). */
		int err = diffstore_mark_pending(m->ds);
		unsigned long n = 0;
		while (w) {
			struct ds_mark_wait *next = w->next;
			w->ready(w, err);
			w = next;
			n++;
		}
		pthread_mutex_lock(&m->lock);
		m->batches++;
		m->waits += n;
	}
	pthread_mutex_unlock(&m->lock);
	return NULL;
}

int ds_marker_start(struct diffstore *ds, struct ds_marker **out)
{
	struct ds_marker *m = calloc(1, sizeof(*m));

	if (!m)
		return -ENOMEM;
	m->ds = ds;
	pthread_mutex_init(&m->lock, NULL);
	pthread_cond_init(&m->cond, NULL);
	int err = -pthread_create(&m->thread, NULL, marker_main, m);
	if (err) {
		pthread_cond_destroy(&m->cond);
		pthread_mutex_destroy(&m->lock);
		free(m);
		return err;
	}
	*out = m;
	return 0;
}

void ds_marker_stop(struct ds_marker *m)
{
	if (!m)
		return;
	pthread_mutex_lock(&m->lock);
	m->stop = true;
	pthread_cond_signal(&m->cond);
	pthread_mutex_unlock(&m->lock);
	pthread_join(m->thread, NULL);
	pthread_cond_destroy(&m->cond);
	pthread_mutex_destroy(&m->lock);
	free(m);
}

int ds_marker_wait(struct ds_marker *m, struct ds_mark_wait *w)
{
	pthread_mutex_lock(&m->lock);
	/* Looked at again under the lock: the batch before may have set it. */
	if (atomic_load(&m->ds->pending)) {
		pthread_mutex_unlock(&m->lock);
		return 0;
	}
	w->next = NULL;
	if (m->tail)
		m->tail->next = w;
	else
		m->head = w;
	m->tail = w;
	pthread_cond_signal(&m->cond);
	pthread_mutex_unlock(&m->lock);
	return 1;
}
