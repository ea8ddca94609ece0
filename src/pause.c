#include "pause.h"

#ifdef VOLTRACK_PAUSE_POINTS

#include <stdatomic.h>
#include <stddef.h>

static _Atomic(vt_pause_hook_fn) hook;
static void *_Atomic hook_arg;

void vt_pause_set_hook(vt_pause_hook_fn fn, void *arg)
{
	atomic_store(&hook_arg, arg);
	atomic_store(&hook, fn);
}

void vt_pause_point(const char *point)
{
	vt_pause_hook_fn fn = atomic_load(&hook);

	if (fn)
		fn(point, atomic_load(&hook_arg));
}

#else

/* ISO C wants at least one declaration in a translation unit. */
typedef int vt_pause_points_disabled;

#endif
