/*
 * testop: one 4 KiB request through the write pipeline (see testop.h).
 */
#include "testop.h"

#include <errno.h>
#include <string.h>

void testop_req_done(struct vt_op *op, int err)
{
	struct testop_req *r = (struct testop_req *)op;

	r->done = true;
	r->err = err;
}

void testop_start(struct vt_loop *loop, struct vt_target *tgt, struct testop_req *r,
		  uint8_t type, uint64_t off, uint8_t fill)
{
	memset(r, 0, sizeof(*r));
	memset(r->buf, fill, sizeof(r->buf));
	r->iov = (struct iovec){ .iov_base = r->buf, .iov_len = sizeof(r->buf) };
	r->op = (struct vt_op){ .type = type, .off = off, .len = sizeof(r->buf), .iov = &r->iov,
				.iovcnt = 1, .done = testop_req_done };
	vt_op_start(loop, tgt, &r->op);
}

int testop_run_until(struct vt_loop *loop, const bool *done)
{
	for (int i = 0; i < 3000 && !*done; i++) {
		int r = vt_loop_run(loop, 10);
		if (r < 0)
			return r;
	}
	return *done ? 0 : -ETIMEDOUT;
}
