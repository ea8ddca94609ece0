/*
 * scenario: the harness of the fault trials (faults.c).
 *
 * A volume file filled with random data, a metadata directory over
 * faultfs, the real tracker, writes made as the server makes them, a
 * reference (the hash of every block) at each checkpoint, and the check
 * of invariant I1 after a recovery.  Test-only.
 */
#ifndef VOLTRACK_SCENARIO_H
#define VOLTRACK_SCENARIO_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "faultfs.h"
#include "metadir.h"
#include "tracker.h"
#include "volume.h"

#define VOL_SIZE (256ull << 20)		/* four 64 MiB intent regions */
#define GRAN (64u << 10)
#define NBLOCKS (VOL_SIZE / GRAN)
#define REGION_BLOCKS ((uint64_t)(64u << 20) / GRAN)
#define MAX_REFS 6

struct reference {
	char name[32];
	bool acked;			/* tracker_checkpoint() succeeded */
	bool forgotten;			/* tracker_forget() was tried: may be gone */
	bool forget_acked;		/* ...and succeeded: must be gone */
	uint64_t *hash;			/* each block's hash at that instant */
};

/* What a recovery found for one checkpoint. */
struct ref_result {
	bool present;
	uint64_t differ, missed, over;
};

struct verdict {
	enum tracker_start start;
	bool gen_changed;
	struct ref_result r[MAX_REFS];
};

struct scen {
	const char *label;
	uint64_t seed;
	struct faultfs ff;
	char meta[128];
	struct metadir *md;
	struct volume *vol;
	struct tracker *t;
	struct reference refs[MAX_REFS];
	unsigned nrefs;
	struct vt_uuid gen_at_stop;
	unsigned failed_before;
	/* parked writes */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool ready;
	int ready_err;
};


/*
 * Intents are cleared IDLE_TICKS persists after a region's last write
 * unless a scenario says otherwise: long enough that the identity in the
 * quiet intent commit is taken in a later clock tick than the last
 * write's ctime.  Otherwise recovery must doubt everything (doc/
 * tracking.md, "the stamp"), and a scenario could no longer tell a right
 * map from a wrong one.
 */
#define PERSIST_MS 10
#define IDLE_TICKS 5

/* Totals over every scenario, and the volume file they share. */
extern char top_dir[64], vol_path[96];
extern unsigned passed, failed, scenarios, scenarios_failed;
extern char failed_labels[2048];

void check(struct scen *s, bool ok, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
void note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void config(struct scen *s, struct tracker_config *cfg, unsigned persist_ms,
	    unsigned idle_ticks);
int vol_fd(const struct scen *s);
uint64_t block_hash(const uint8_t *p);
void hash_volume(struct scen *s, uint64_t *out);
void msleep(unsigned ms);
uint64_t mono_ms(void);
const char *errname(int err);
void begin(struct scen *s, const char *label, uint64_t seed);
void end(struct scen *s);
int open_tracker(struct scen *s, bool live, unsigned persist_ms, unsigned idle_ticks,
		 const struct volume_identity *given);
void open_live(struct scen *s, unsigned persist_ms, unsigned idle_ticks);
void remember_generation(struct scen *s);
void kill_tracker(struct scen *s);
void power_cut(struct scen *s, bool lose_all, struct volume_identity *before);
void on_ready(struct intent_wait *w, int err);
int tracked_write(struct scen *s, uint64_t off, size_t len, const uint8_t *data);
void random_fill(struct scen *s, uint8_t *p, size_t len);
unsigned write_blocks(struct scen *s, uint64_t first, unsigned n);
int checkpoint(struct scen *s, const char *name);
bool wait_quiet(struct scen *s, unsigned timeout_ms);
void recover_and_verify(struct scen *s, const struct volume_identity *given,
			struct verdict *v);
bool kept_history(const struct verdict *v);
void stop_and_verify(struct scen *s, bool cut, bool lose_all, struct verdict *v);
void remove_top_dir(void);
void make_volume(uint64_t seed);

#endif
