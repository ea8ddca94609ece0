/*
 * vio_fsops: an I/O engine that runs every positional request through a
 * struct vt_fsops table, for tests that put faultfs under the data path
 * too (the write pipeline's data writes, copy-on-write copies and their
 * records).  Test-only.
 *
 * Requests run at once, on the submitting thread, in submission order;
 * their completions are delivered by the next vio_run(), so that several
 * ops in flight on one loop still interleave stage by stage.  READ,
 * WRITE (VIO_F_DSYNC: followed by fdatasync) and FDATASYNC go through
 * the table; FALLOCATE runs as the real call (faultfs does not model it:
 * its effect is durable at once); stream requests and the block-device
 * and zeroing requests are refused with -EOPNOTSUPP.
 */
#ifndef VOLTRACK_TESTS_VIO_FSOPS_H
#define VOLTRACK_TESTS_VIO_FSOPS_H

#include "fsops.h"
#include "vio.h"

/* 0 or -ENOMEM.  ops must outlive the engine. */
int vio_fsops_create(const struct vt_fsops *ops, struct vio_engine **out);

#endif
