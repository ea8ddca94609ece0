/*
 * vio_engine: what a vio backend provides.  Private to src/vio*.c.
 */
#ifndef VOLTRACK_VIO_ENGINE_H
#define VOLTRACK_VIO_ENGINE_H

#include "vio.h"

struct vio_engine_ops {
	const char *name;
	void (*submit)(struct vio_engine *eng, struct vio_req *req);
	int (*run)(struct vio_engine *eng, int timeout_ms);
	void (*wake)(struct vio_engine *eng);
	int (*stream_attach)(struct vio_engine *eng, struct vio_stream *s);
	void (*stream_cancel)(struct vio_engine *eng, struct vio_stream *s);
	void (*stream_detach)(struct vio_engine *eng, struct vio_stream *s);
	void (*destroy)(struct vio_engine *eng);
};

struct vio_engine {
	const struct vio_engine_ops *ops;
};

int vio_uring_create(unsigned queue_depth, struct vio_engine **out);
int vio_threads_create(unsigned queue_depth, struct vio_engine **out);

/* True for operations io_uring cannot express and a helper thread runs. */
static inline bool vio_op_blocks(enum vio_op op)
{
	return op == VIO_BLKDISCARD || op == VIO_BLKZEROOUT ||
	       op == VIO_WRITE_ZEROES;
}

#endif
