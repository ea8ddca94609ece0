/*
 * vio_pool: threads that run vio requests synchronously.
 *
 * Requests go in from the owner thread; completed ones collect on a list
 * the owner reaps.  When the list goes from empty to non-empty the pool
 * writes 1 to notify_fd (an eventfd the owner's loop watches), so a burst
 * of completions costs one wake-up.
 */
#ifndef VOLTRACK_VIO_POOL_H
#define VOLTRACK_VIO_POOL_H

#include "vio.h"

struct vio_pool;

int vio_pool_create(unsigned nthreads, int notify_fd, struct vio_pool **out);
/* Waits for every queued request to finish, then stops the threads. */
void vio_pool_destroy(struct vio_pool *pool);
void vio_pool_submit(struct vio_pool *pool, struct vio_req *req);
/* Completed requests in completion order, linked through ->next. */
struct vio_req *vio_pool_reap(struct vio_pool *pool);

#endif
