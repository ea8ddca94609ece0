#include "loop.h"

void vt_loop_init_engine(struct vt_loop *l, struct vio_engine *eng)
{
	l->eng = eng;
	pthread_mutex_init(&l->lock, NULL);
	l->resumed = NULL;
	atomic_init(&l->has_resumed, false);
}

int vt_loop_init(struct vt_loop *l, enum vio_backend backend, unsigned queue_depth)
{
	struct vio_engine *eng;
	int err = vio_engine_create(backend, queue_depth, &eng);

	if (!err)
		vt_loop_init_engine(l, eng);
	return err;
}

void vt_loop_destroy(struct vt_loop *l)
{
	/* Wakers hold the lock while they use the engine. */
	pthread_mutex_lock(&l->lock);
	vio_engine_destroy(l->eng);
	l->eng = NULL;
	pthread_mutex_unlock(&l->lock);
	pthread_mutex_destroy(&l->lock);
}

void vt_loop_wake(struct vt_loop *l)
{
	pthread_mutex_lock(&l->lock);
	if (l->eng)
		vio_wake(l->eng);
	pthread_mutex_unlock(&l->lock);
}

void vt_loop_resume(struct vt_loop *l, struct vt_parked *p, int err)
{
	p->err = err;
	pthread_mutex_lock(&l->lock);
	p->next = l->resumed;
	l->resumed = p;
	atomic_store(&l->has_resumed, true);
	/* Under the lock: once p is visible the owner may finish with it,
	 * and vt_loop_destroy() frees the engine only under this lock. */
	vio_wake(l->eng);
	pthread_mutex_unlock(&l->lock);
}

static int run_resumed(struct vt_loop *l)
{
	struct vt_parked *list;
	int n = 0;

	if (!atomic_exchange(&l->has_resumed, false))
		return 0;
	pthread_mutex_lock(&l->lock);
	list = l->resumed;
	l->resumed = NULL;
	pthread_mutex_unlock(&l->lock);
	/* Pushed newest first; run them in the order they were handed back
	 * (held writes resume in arrival order). */
	struct vt_parked *fifo = NULL;
	while (list) {
		struct vt_parked *p = list;
		list = p->next;
		p->next = fifo;
		fifo = p;
	}
	list = fifo;
	while (list) {
		struct vt_parked *p = list;
		list = p->next;
		p->next = NULL;
		p->resume(p, p->err);
		n++;
	}
	return n;
}

int vt_loop_run(struct vt_loop *l, int timeout_ms)
{
	int ret = vio_run(l->eng, timeout_ms);
	int resumed = run_resumed(l);

	return ret < 0 ? ret : ret + resumed;
}
