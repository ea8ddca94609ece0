#include "gate.h"

#include <errno.h>
#include <time.h>

#include "pause.h"

int vt_gate_init(struct vt_gate *g)
{
	pthread_condattr_t ca;
	int err;

	atomic_init(&g->held, false);
	atomic_init(&g->inflight, 0);
	g->head = g->tail = NULL;
	g->parked_total = 0;
	err = pthread_mutex_init(&g->lock, NULL);
	if (err)
		return -err;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	err = pthread_cond_init(&g->drained, &ca);
	pthread_condattr_destroy(&ca);
	if (err) {
		pthread_mutex_destroy(&g->lock);
		return -err;
	}
	return 0;
}

void vt_gate_destroy(struct vt_gate *g)
{
	pthread_cond_destroy(&g->drained);
	pthread_mutex_destroy(&g->lock);
}

/* The last admitted write is gone: a hold waiting for that may go on. */
static void wake_holder(struct vt_gate *g)
{
	pthread_mutex_lock(&g->lock);
	pthread_cond_broadcast(&g->drained);
	pthread_mutex_unlock(&g->lock);
}

bool vt_gate_enter(struct vt_gate *g, struct vt_gate_wait *w)
{
	/*
	 * Count first, look second; the holder sets `held` first and counts
	 * second.  Both sequentially consistent, so either this write sees
	 * the hold and steps back, or the holder sees this write and waits
	 * for it to leave: no write slips past a hold uncounted.
	 */
	atomic_fetch_add(&g->inflight, 1);
	if (!atomic_load(&g->held))
		return true;
	VT_PAUSE_POINT("gate.enter.held");
	pthread_mutex_lock(&g->lock);
	if (!atomic_load(&g->held)) {
		/* Released between the two looks: go on, still counted. */
		pthread_mutex_unlock(&g->lock);
		return true;
	}
	w->next = NULL;
	if (g->tail)
		g->tail->next = w;
	else
		g->head = w;
	g->tail = w;
	g->parked_total++;
	if (atomic_fetch_sub(&g->inflight, 1) == 1)
		pthread_cond_broadcast(&g->drained);
	pthread_mutex_unlock(&g->lock);
	return false;
}

void vt_gate_leave(struct vt_gate *g)
{
	if (atomic_fetch_sub(&g->inflight, 1) == 1 && atomic_load(&g->held))
		wake_holder(g);
}

long vt_gate_inflight(struct vt_gate *g)
{
	return atomic_load(&g->inflight);
}

int vt_gate_hold(struct vt_gate *g, uint64_t deadline_ns)
{
	struct timespec ts = { .tv_sec = (time_t)(deadline_ns / 1000000000ull),
			       .tv_nsec = (long)(deadline_ns % 1000000000ull) };
	int err = 0;

	pthread_mutex_lock(&g->lock);
	atomic_store(&g->held, true);
	while (atomic_load(&g->inflight) > 0 && err == 0)
		err = pthread_cond_timedwait(&g->drained, &g->lock, &ts);
	if (err == ETIMEDOUT && atomic_load(&g->inflight) == 0)
		err = 0;
	pthread_mutex_unlock(&g->lock);
	return err ? -ETIMEDOUT : 0;
}

unsigned vt_gate_release(struct vt_gate *g)
{
	struct vt_gate_wait *list;
	unsigned n = 0;

	pthread_mutex_lock(&g->lock);
	atomic_store(&g->held, false);
	list = g->head;
	g->head = g->tail = NULL;
	pthread_mutex_unlock(&g->lock);
	/* In arrival order; each loop runs what it is handed in that order. */
	while (list) {
		struct vt_gate_wait *w = list;
		list = w->next;
		vt_loop_resume(w->loop, &w->park, 0);
		n++;
	}
	return n;
}
