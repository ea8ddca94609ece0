/*
 * progress: see progress.h.
 */
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#include "progress.h"

#define PLAIN_EVERY_NS 5000000000ull
#define TTY_EVERY_NS 200000000ull
#define JSON_EVERY_NS 1000000000ull

uint64_t bk_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void bk_progress_start(struct bk_progress *p, enum bk_progress_mode mode, const char *what,
		       uint64_t total)
{
	p->mode = mode;
	p->tty = isatty(2);
	p->what = what;
	p->total = total;
	atomic_init(&p->done, 0);
	atomic_init(&p->moved, 0);
	p->start_ns = p->last_ns = bk_now_ns();
	p->drawn = false;
}

static void mib(uint64_t b, char *out, size_t n)
{
	if (b >= (10ull << 30))
		snprintf(out, n, "%.1f GiB", (double)b / (1 << 30));
	else
		snprintf(out, n, "%.1f MiB", (double)b / (1 << 20));
}

static void draw(struct bk_progress *p, uint64_t now, bool last)
{
	uint64_t done = atomic_load_explicit(&p->done, memory_order_relaxed);
	uint64_t moved = atomic_load_explicit(&p->moved, memory_order_relaxed);
	double secs = (double)(now - p->start_ns) / 1e9;
	double rate = secs > 0 ? (double)done / secs : 0;
	double mrate = secs > 0 ? (double)moved / secs : 0;
	double pct = p->total ? 100.0 * (double)done / (double)p->total : 100.0;
	double eta = rate > 0 && p->total > done ? (double)(p->total - done) / rate : 0;

	if (p->mode == BK_PROGRESS_JSON) {
		fprintf(stderr, "{\"progress\":\"%s\",\"done\":%llu,\"total\":%llu,"
				"\"transferred\":%llu,\"rate\":%.0f,\"eta\":%.1f}\n",
			p->what, (unsigned long long)done, (unsigned long long)p->total,
			(unsigned long long)moved, mrate, eta);
		return;
	}
	char d[32], t[32], m[32];
	mib(done, d, sizeof(d));
	mib(p->total, t, sizeof(t));
	mib(moved, m, sizeof(m));
	if (p->tty) {
		char bar[31];
		int fill = (int)(pct * 30 / 100);
		for (int i = 0; i < 30; i++)
			bar[i] = i < fill ? '#' : '.';
		bar[30] = 0;
		fprintf(stderr, "\r%s [%s] %5.1f%% %s of %s, %s transferred, %.1f MiB/s, ETA %.0f s ",
			p->what, bar, pct, d, t, m, mrate / (1 << 20), eta);
		if (last)
			fputs("\r\033[K", stderr);
	} else {
		fprintf(stderr, "%s: %.1f%%, %s of %s, %s transferred, %.1f MiB/s, ETA %.0f s\n",
			p->what, pct, d, t, m, mrate / (1 << 20), eta);
	}
	p->drawn = true;
}

void bk_progress_tick(struct bk_progress *p)
{
	if (p->mode == BK_PROGRESS_OFF)
		return;
	uint64_t now = bk_now_ns();
	uint64_t every = p->mode == BK_PROGRESS_JSON ? JSON_EVERY_NS :
			 p->tty ? TTY_EVERY_NS : PLAIN_EVERY_NS;
	if (now - p->last_ns < every)
		return;
	p->last_ns = now;
	draw(p, now, false);
}

void bk_progress_end(struct bk_progress *p)
{
	if (p->mode == BK_PROGRESS_OFF)
		return;
	/* A terminal's bar is erased; a log keeps a last line only if it
	 * had others, so short runs stay quiet. */
	if (p->tty ? p->drawn : (p->drawn || p->mode == BK_PROGRESS_JSON))
		draw(p, bk_now_ns(), true);
}
