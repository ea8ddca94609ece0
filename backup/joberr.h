/*
 * joberr: the first failure of a job whose workers run in parallel
 * (a backup's readers, a restore's writers).  The first error and its
 * message are kept, later ones dropped, and every worker is told to
 * stop at its next step.  Thread-safe.
 */
#ifndef VOLTRACK_BACKUP_JOBERR_H
#define VOLTRACK_BACKUP_JOBERR_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

struct bk_joberr {
	pthread_mutex_t lock;
	atomic_bool stop;
	int err;		/* 0, or the first -errno */
	char msg[512];
};

void bk_joberr_init(struct bk_joberr *e);
/* The first error wins: err and the formatted message. */
void bk_joberr_set(struct bk_joberr *e, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* True once a failure was set: workers stop taking new work. */
static inline bool bk_joberr_stopped(struct bk_joberr *e)
{
	return atomic_load(&e->stop);
}
/* The first error (0 if none), its message copied into msg. */
int bk_joberr_finish(struct bk_joberr *e, char *msg, size_t msglen);

#endif
