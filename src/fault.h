/*
 * fault: named points at which a test build of the library fails an
 * operation on purpose.
 *
 * Some failures the code must survive cannot be caused from outside a
 * running server without failing far more than the one step a test is
 * about: a sync of the checkpoint list, say, which the same file sees
 * several times in one snapshot.  A fault point names that one step.
 *
 * The points exist only in the test build of the library (compiled with
 * VOLTRACK_FAULT_POINTS, see src/meson.build and tests/meson.build).
 * There VT_FAULT_POINT(name) is -EIO each time it is passed while the
 * environment variable VOLTRACK_TEST_FAULTS, read once, lists the name
 * (comma-separated), and 0 otherwise; every fault injected is logged
 * with one line naming its point, so that a test can check that its
 * fault really fired.  In the shipped build it is the constant 0: no
 * code, no environment read.  The list is process-wide state, which is
 * why it is confined to test builds.
 *
 * Points (name: what fails):
 *   snapshots.release.sync-checkpoints
 *       the sync that makes a snapshot's commit durable after its
 *       release (vt_snapshots_release), as if fdatasync of the
 *       checkpoint list had failed; later stores of the list work.
 */
#ifndef VOLTRACK_FAULT_H
#define VOLTRACK_FAULT_H

#ifdef VOLTRACK_FAULT_POINTS

/* -EIO when `point` is armed (and says so on stderr), else 0. */
int vt_fault_point(const char *point);

#define VT_FAULT_POINT(name) vt_fault_point(name)

#else

#define VT_FAULT_POINT(name) 0

#endif
#endif
