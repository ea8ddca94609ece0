/*
 * deadline: waiting on a socket with an absolute deadline, so that a
 * peer that stalls or trickles bytes cannot hold a thread for longer
 * than one bound (the handshake, a control request).
 */
#ifndef VOLTRACK_NET_DEADLINE_H
#define VOLTRACK_NET_DEADLINE_H

#include <stdint.h>

/* Milliseconds on the monotonic clock. */
uint64_t net_now_ms(void);

/* Until fd has one of `events` (poll(2) bits) or deadline_ms passes:
 * 0, -ETIMEDOUT, or -errno. */
int net_wait(int fd, short events, uint64_t deadline_ms);

#endif
