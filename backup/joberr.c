#include "joberr.h"

#include <stdarg.h>
#include <stdio.h>

void bk_joberr_init(struct bk_joberr *e)
{
	pthread_mutex_init(&e->lock, NULL);
	atomic_init(&e->stop, false);
	e->err = 0;
	e->msg[0] = 0;
}

void bk_joberr_set(struct bk_joberr *e, int err, const char *fmt, ...)
{
	va_list ap;

	pthread_mutex_lock(&e->lock);
	if (!e->err) {
		e->err = err;
		va_start(ap, fmt);
		vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
		va_end(ap);
	}
	pthread_mutex_unlock(&e->lock);
	atomic_store(&e->stop, true);
}

int bk_joberr_finish(struct bk_joberr *e, char *msg, size_t msglen)
{
	int err = e->err;

	if (err && msg && msglen)
		snprintf(msg, msglen, "%s", e->msg);
	pthread_mutex_destroy(&e->lock);
	return err;
}
