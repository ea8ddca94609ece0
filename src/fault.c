#include "fault.h"

#ifdef VOLTRACK_FAULT_POINTS

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

#define ARMED_MAX 512

static pthread_once_t once = PTHREAD_ONCE_INIT;
static char armed[ARMED_MAX];	/* ",point,point," */

static void read_env(void)
{
	const char *v = getenv("VOLTRACK_TEST_FAULTS");

	if (v && *v && strlen(v) + 3 <= sizeof(armed)) {
		armed[0] = ',';
		strcpy(armed + 1, v);
		strcat(armed, ",");
	}
	if (armed[0])
		vt_warn("test build: fault points armed: %s", v);
	else if (v && *v)
		vt_error("test build: VOLTRACK_TEST_FAULTS is too long; no fault armed");
}

int vt_fault_point(const char *point)
{
	char key[128];

	pthread_once(&once, read_env);
	if (!armed[0] || strlen(point) + 3 > sizeof(key))
		return 0;
	key[0] = ',';
	strcpy(key + 1, point);
	strcat(key, ",");
	if (!strstr(armed, key))
		return 0;
	vt_error("test fault injected: %s fails with EIO", point);
	return -EIO;
}

#else

/* ISO C wants at least one declaration in a translation unit. */
typedef int vt_fault_points_disabled;

#endif
