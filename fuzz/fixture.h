/*
 * fixture: what every fuzz target stands on.
 *
 * A private scratch directory (under $TMPDIR, else /dev/shm, else /tmp)
 * removed at exit, a sparse volume file in it with metadata formatted
 * exactly as `voltrack init` leaves it, and a checking macro that names
 * the broken property before it aborts, so that libFuzzer keeps the
 * input and the report says why.
 *
 * Targets call fixture_* from LLVMFuzzerInitialize only: the state is
 * set up once per process and each input then runs against it.
 */
#ifndef VOLTRACK_FUZZ_FIXTURE_H
#define VOLTRACK_FUZZ_FIXTURE_H

#include <stddef.h>
#include <stdint.h>

#include "fsops.h"
#include "metadir.h"
#include "superblock.h"
#include "volume.h"

/* libFuzzer's entry points, defined by each target. */
int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct fixture {
	char dir[256];		/* the scratch directory */
	char vol_path[300];
	char meta_path[300];
	struct metadir *md;	/* locked */
	struct volume *vol;	/* read-write */
	struct superblock sb;	/* as formatted */
};

/* Scratch directory, volume of `size` bytes, metadata beside it (clean,
 * identity recorded).  Exits the process on failure: without its
 * fixture a target has nothing to test. */
void fixture_create(struct fixture *fx, const char *name, uint64_t size, uint32_t granularity,
		    const struct vt_fsops *ops);

/* Metadata writes that skip the syncs: the scratch directory lives in
 * memory and durability is not what a fuzz target checks. */
extern const struct vt_fsops fixture_fsops_nosync;

/* Abort with a one-line reason that reaches libFuzzer's report. */
void fixture_fail(const char *file, int line, const char *what) __attribute__((noreturn));

#define FUZZ_CHECK(cond, what) \
	do { \
		if (!(cond)) \
			fixture_fail(__FILE__, __LINE__, what); \
	} while (0)

#endif
