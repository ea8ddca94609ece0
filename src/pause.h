/*
 * pause: named points at which a test can stop a thread.
 *
 * Races between writers, the intent committer, the flusher and
 * checkpoints are rare and silent; random trials do not find them.  A
 * test instead stops one thread at a named point, runs another thread
 * through the window, and lets the first go on, driving one interleaving
 * deterministically.
 *
 * The points exist only in the test build of the library (compiled with
 * VOLTRACK_PAUSE_POINTS, see tests/meson.build).  In the shipped build
 * VT_PAUSE_POINT() expands to nothing and costs nothing.  The hook is
 * process-wide state, which is why it is confined to test builds.
 */
#ifndef VOLTRACK_PAUSE_H
#define VOLTRACK_PAUSE_H

#ifdef VOLTRACK_PAUSE_POINTS

/* Called at every point with its name; NULL (the default) does nothing. */
typedef void (*vt_pause_hook_fn)(const char *point, void *arg);
void vt_pause_set_hook(vt_pause_hook_fn fn, void *arg);
void vt_pause_point(const char *point);

#define VT_PAUSE_POINT(name) vt_pause_point(name)

#else

#define VT_PAUSE_POINT(name) ((void)0)

#endif
#endif
