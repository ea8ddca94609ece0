/*
 * progress: the progress of a long run (backup, restore, verify),
 * shown on stderr: a bar with rate and ETA redrawn in place on a
 * terminal, a plain line every few seconds otherwise, a JSON object per
 * line with --json.
 *
 * Workers add to the counters from any thread (relaxed atomics); one
 * thread, the one that called bk_progress_start(), draws, from
 * bk_progress_tick() which it calls at any rate it likes.
 */
#ifndef VOLTRACK_BACKUP_PROGRESS_H
#define VOLTRACK_BACKUP_PROGRESS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

enum bk_progress_mode { BK_PROGRESS_OFF, BK_PROGRESS_AUTO, BK_PROGRESS_JSON };

struct bk_progress {
	enum bk_progress_mode mode;
	bool tty;
	const char *what;		/* "backup", "restore", ... */
	uint64_t total;			/* bytes of the volume */
	atomic_uint_least64_t done;	/* bytes of the volume covered */
	atomic_uint_least64_t moved;	/* bytes read from the server, or written */
	uint64_t start_ns, last_ns;
	bool drawn;
};

void bk_progress_start(struct bk_progress *p, enum bk_progress_mode mode, const char *what,
		       uint64_t total);
void bk_progress_tick(struct bk_progress *p);
/* Erase the bar (a terminal) or print the last line. */
void bk_progress_end(struct bk_progress *p);

uint64_t bk_now_ns(void);

#endif
