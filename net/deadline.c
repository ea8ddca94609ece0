#include "deadline.h"

#include <errno.h>
#include <poll.h>
#include <time.h>

uint64_t net_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

int net_wait(int fd, short events, uint64_t deadline_ms)
{
	for (;;) {
		uint64_t now = net_now_ms();
		if (now >= deadline_ms)
			return -ETIMEDOUT;
		struct pollfd p = { .fd = fd, .events = events };
		int n = poll(&p, 1, (int)(deadline_ms - now));
		if (n > 0)
			return 0;
		if (n == 0)
			return -ETIMEDOUT;
		if (errno != EINTR)
			return -errno;
	}
}
