/*
 * loop: one thread's I/O engine, and the door through which work parked
 * on other threads comes back to it.
 *
 * Contract:
 *   - A loop belongs to one thread, its owner, which created it with
 *     vt_loop_init() and runs it with vt_loop_run().  Operations started
 *     on a loop (vio requests, vt_op) complete on the owner thread only.
 *   - An operation that must wait for something another thread provides
 *     (a write-intent commit today; later a held snapshot gate or a
 *     copy-before-write) embeds a struct vt_parked.  Whoever ends the
 *     wait calls vt_loop_resume() from any thread; the owner then calls
 *     parked->resume(parked, err) from its next vt_loop_run(), never
 *     from inside vt_loop_resume().  err is 0, or the -errno that ended
 *     the wait, for the operation to report as its own.
 *   - vt_loop_wake() and vt_loop_resume() are the only calls allowed
 *     from other threads, and only until vt_loop_destroy() begins;
 *     destroy takes the same lock they do, so a waker racing with it
 *     either finishes first or finds the engine gone.
 *
 * Nothing here allocates per operation, and the resume path costs one
 * lock and one wake-up per parked operation; operations that never park
 * pay nothing (one relaxed atomic load per loop turn).
 */
#ifndef VOLTRACK_IO_LOOP_H
#define VOLTRACK_IO_LOOP_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "vio.h"

struct vt_parked {
	/* Called on the loop's owner thread when the wait is over. */
	void (*resume)(struct vt_parked *p, int err);
	struct vt_parked *next;	/* loop-private */
	int err;		/* loop-private */
};

struct vt_loop {
	struct vio_engine *eng;		/* owner thread only, until destroy */
	pthread_mutex_t lock;		/* guards resumed, and eng against destroy */
	struct vt_parked *resumed;
	atomic_bool has_resumed;
};

/* On the owner thread: an io_uring ring is tied to the thread that
 * submits to it.  Returns 0 or -errno from vio_engine_create(). */
int vt_loop_init(struct vt_loop *l, enum vio_backend backend, unsigned queue_depth);
/* The same over an engine the caller made (a test's, say); the loop owns
 * it from here and destroys it with itself. */
void vt_loop_init_engine(struct vt_loop *l, struct vio_engine *eng);

/* Any thread, once the owner has stopped running the loop: frees the
 * engine.  Operations still parked must not be resumed afterwards. */
void vt_loop_destroy(struct vt_loop *l);

/* Any thread: make the owner's current or next vt_loop_run() return. */
void vt_loop_wake(struct vt_loop *l);

/* Any thread: hand a parked operation back to the owner (see above). */
void vt_loop_resume(struct vt_loop *l, struct vt_parked *p, int err);

/*
 * Owner thread: submit what is queued, wait up to timeout_ms (-1:
 * forever) for a completion or a wake-up, run the callbacks of what
 * completed, then resume what was handed back.  Whatever those callbacks
 * queue is submitted by the next call, so the caller's own follow-up
 * (sending replies) belongs between two calls.  Returns the number of
 * callbacks run, or -errno from vio_run().
 */
int vt_loop_run(struct vt_loop *l, int timeout_ms);

#endif
