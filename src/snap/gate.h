/*
 * gate: the hold of flush-and-hold.
 *
 * Every write, trim and write-zeroes passes the volume's gate before
 * anything else happens to it (before it is tracked or copied on
 * write), and leaves it once it is over.  A hold closes the gate and
 * waits until every write it had admitted has left: from then on the
 * volume does not change, and what was acknowledged is all there is.
 *
 * Contract:
 *   - vt_gate_enter() is called on the write's own loop.  It returns
 *     true when the write may go on; false when the gate is held, in
 *     which case the write has been parked and w->park.resume runs on
 *     w->loop once the hold is released (err is always 0: a held write
 *     is never failed), where it must call vt_gate_enter() again.
 *   - vt_gate_leave() follows every vt_gate_enter() that returned true,
 *     once the write is over, whatever its outcome.
 *   - Held writes resume in the order they arrived.
 *   - vt_gate_hold() and vt_gate_release() come from one controlling
 *     thread at a time (the control socket), never from a loop.
 *     vt_gate_hold() returns 0 once drained, or -ETIMEDOUT at the
 *     deadline, leaving the gate held either way: the caller always
 *     releases.  Reads, flushes and the server's own metadata and
 *     diff-store I/O never pass the gate, so a hold cannot wait on them
 *     (invariant I3).
 *
 * Cost while open: one atomic add on enter and one on leave, and one
 * load of the state; no lock.
 */
#ifndef VOLTRACK_SNAP_GATE_H
#define VOLTRACK_SNAP_GATE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "loop.h"

struct vt_gate_wait {
	struct vt_parked park;		/* in: resume; loop-private otherwise */
	struct vt_loop *loop;		/* in */
	struct vt_gate_wait *next;	/* gate-private */
};

struct vt_gate {
	atomic_bool held;
	atomic_long inflight;		/* admitted, not yet left */
	pthread_mutex_t lock;		/* guards the parked list, the waiters */
	pthread_cond_t drained;
	struct vt_gate_wait *head, *tail;
	uint64_t parked_total;		/* writes parked over the gate's life */
};

int vt_gate_init(struct vt_gate *g);
void vt_gate_destroy(struct vt_gate *g);

bool vt_gate_enter(struct vt_gate *g, struct vt_gate_wait *w);
void vt_gate_leave(struct vt_gate *g);

/* Close the gate and wait until admitted writes have left, or until
 * deadline_ns (CLOCK_MONOTONIC). */
int vt_gate_hold(struct vt_gate *g, uint64_t deadline_ns);
/* Open the gate and resume every parked write, oldest first.  Returns
 * how many were parked during this hold. */
unsigned vt_gate_release(struct vt_gate *g);

/* Writes admitted and not yet over (for tests and status). */
long vt_gate_inflight(struct vt_gate *g);

#endif
