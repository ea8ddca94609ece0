#include "vio_pool.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

struct vio_pool {
	pthread_mutex_t lock;
	pthread_cond_t work;	/* queue became non-empty, or stopping */
	struct vio_req *queue_head, *queue_tail;
	struct vio_req *done_head, *done_tail;
	bool stopping;
	int notify_fd;
	unsigned nthreads;
	pthread_t threads[];
};

static void *pool_thread(void *arg)
{
	struct vio_pool *pool = arg;

	pthread_mutex_lock(&pool->lock);
	for (;;) {
		while (!pool->queue_head && !pool->stopping)
			pthread_cond_wait(&pool->work, &pool->lock);
		struct vio_req *req = pool->queue_head;
		if (!req)
			break; /* stopping and drained */
		pool->queue_head = req->next;
		if (!pool->queue_head)
			pool->queue_tail = NULL;
		pthread_mutex_unlock(&pool->lock);

		vio_exec_sync(req);

		pthread_mutex_lock(&pool->lock);
		req->next = NULL;
		bool was_empty = !pool->done_head;
		if (pool->done_tail)
			pool->done_tail->next = req;
		else
			pool->done_head = req;
		pool->done_tail = req;
		if (was_empty) {
			uint64_t one = 1;
			if (write(pool->notify_fd, &one, sizeof(one)) < 0) {
				/* eventfd counter saturated: a wake-up is pending anyway */
			}
		}
	}
	pthread_mutex_unlock(&pool->lock);
	return NULL;
}

int vio_pool_create(unsigned nthreads, int notify_fd, struct vio_pool **out)
{
	struct vio_pool *pool = calloc(1, sizeof(*pool) + nthreads * sizeof(pthread_t));
	int err;

	if (!pool)
		return -ENOMEM;
	pthread_mutex_init(&pool->lock, NULL);
	pthread_cond_init(&pool->work, NULL);
	pool->notify_fd = notify_fd;
	for (unsigned i = 0; i < nthreads; i++) {
		err = pthread_create(&pool->threads[i], NULL, pool_thread, pool);
		if (err) {
			pool->nthreads = i;
			vio_pool_destroy(pool);
			return -err;
		}
	}
	pool->nthreads = nthreads;
	*out = pool;
	return 0;
}

void vio_pool_destroy(struct vio_pool *pool)
{
	if (!pool)
		return;
	pthread_mutex_lock(&pool->lock);
	pool->stopping = true;
	pthread_cond_broadcast(&pool->work);
	pthread_mutex_unlock(&pool->lock);
	for (unsigned i = 0; i < pool->nthreads; i++)
		pthread_join(pool->threads[i], NULL);
	pthread_cond_destroy(&pool->work);
	pthread_mutex_destroy(&pool->lock);
	free(pool);
}

void vio_pool_submit(struct vio_pool *pool, struct vio_req *req)
{
	req->next = NULL;
	pthread_mutex_lock(&pool->lock);
	if (pool->queue_tail)
		pool->queue_tail->next = req;
	else
		pool->queue_head = req;
	pool->queue_tail = req;
	pthread_cond_signal(&pool->work);
	pthread_mutex_unlock(&pool->lock);
}

struct vio_req *vio_pool_reap(struct vio_pool *pool)
{
	pthread_mutex_lock(&pool->lock);
	struct vio_req *list = pool->done_head;
	pool->done_head = pool->done_tail = NULL;
	pthread_mutex_unlock(&pool->lock);
	return list;
}
