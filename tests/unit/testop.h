/*
 * testop: one 4 KiB request through the library's write pipeline, for
 * the unit tests that drive a loop by hand (the marker, the
 * invalidator).  Functions return 0 or a negative errno, so that any
 * test harness can use them.
 */
#ifndef VOLTRACK_TESTOP_H
#define VOLTRACK_TESTOP_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include "loop.h"
#include "op.h"

struct testop_req {
	struct vt_op op;	/* first: done() finds the request from it */
	struct iovec iov;
	uint8_t buf[4096];
	bool done;
	int err;
};

/* op->done for a testop_req: records the outcome. */
void testop_req_done(struct vt_op *op, int err);

/* Start a request of `type` over [off, off + 4096), its buffer filled
 * with `fill`, on `loop` (the caller's thread owns it) against `tgt`. */
void testop_start(struct vt_loop *loop, struct vt_target *tgt, struct testop_req *r,
		  uint8_t type, uint64_t off, uint8_t fill);

/* Run `loop` until *done, for at most about 30 s: 0, -ETIMEDOUT, or the
 * loop's error. */
int testop_run_until(struct vt_loop *loop, const bool *done);

#endif
