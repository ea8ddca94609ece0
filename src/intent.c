#include "intent.h"

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "metablock.h"
#include "pause.h"

#define MAGIC "VTRKINTN"

enum { IR_CLEAR, IR_PENDING, IR_DURABLE, IR_CLEARING };

/* Payload: nregions (4), flags (4), region size (8), bitmap from 16;
 * the stamp in the last 40 bytes.  doc/format.md has the table. */
#define P_NREGIONS 0
#define P_FLAGS 4
#define P_REGION 8
#define P_BITMAP 16
#define P_STAMP (MB_PAYLOAD - 40)
#define FLAG_QUIET 1u

_Static_assert(P_BITMAP + INTENT_MAX_REGIONS / 8 <= P_STAMP, "bitmap overlaps the stamp");

struct intent {
	int fd;
	const struct vt_fsops *ops;
	struct intent_config cfg;
	_Atomic uint64_t lease_ns;	/* durable lease: writers stop short of it */
	uint64_t gen_tag;
	unsigned region_shift;
	uint32_t nregions;
	_Atomic uint8_t *state;
	atomic_uint *inflight;
	atomic_uint *touch;

	pthread_mutex_t lock;
	pthread_cond_t work;		/* a commit is requested, or stopping */
	pthread_cond_t committed;	/* a commit finished */
	uint8_t *wanted;		/* bitmap the next commit writes */
	uint8_t *snap;			/* bitmap of the commit in flight */
	uint64_t started_gen, finished_gen;
	int finished_err;
	struct intent_wait *waiters;
	bool requested, stopping, running;
	pthread_t thread;

	uint64_t seq;
	unsigned cur_slot;
	uint8_t *blk;
};

static bool bit(const uint8_t *map, uint32_t r)
{
	return map[r / 8] & (1u << (r % 8));
}

static void set_bit(uint8_t *map, uint32_t r, bool on)
{
	if (on)
		map[r / 8] |= (uint8_t)(1u << (r % 8));
	else
		map[r / 8] &= (uint8_t)~(1u << (r % 8));
}

uint64_t intent_region_size(uint64_t volume_size)
{
	uint64_t r = INTENT_MIN_REGION;

	while ((volume_size + r - 1) / r > INTENT_MAX_REGIONS)
		r <<= 1;
	return r;
}

uint64_t intent_wall_ns(void)
{
	struct timespec ts;

	/* The coarse clock is the one the kernel stamps ctime from. */
	clock_gettime(CLOCK_REALTIME_COARSE, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void put64(uint8_t *p, uint64_t v)
{
	v = htole64(v);
	memcpy(p, &v, 8);
}

static uint64_t get64(const uint8_t *p)
{
	uint64_t v;
	memcpy(&v, p, 8);
	return le64toh(v);
}

static void encode(uint8_t *blk, uint32_t nregions, uint64_t region, const uint8_t *bits,
		   const struct intent_stamp *st, uint64_t seq, uint64_t tag)
{
	uint8_t *p = blk + MB_HEADER;
	uint32_t n = htole32(nregions), flags = htole32(st->quiet ? FLAG_QUIET : 0);

	memset(blk, 0, MB_SIZE);
	memcpy(p + P_NREGIONS, &n, 4);
	memcpy(p + P_FLAGS, &flags, 4);
	put64(p + P_REGION, region);
	if (bits)
		memcpy(p + P_BITMAP, bits, (nregions + 7) / 8);
	put64(p + P_STAMP, st->lease_ns);
	put64(p + P_STAMP + 8, st->id.size);
	put64(p + P_STAMP + 16, st->id.ino);
	put64(p + P_STAMP + 24, st->id.ctime_ns);
	put64(p + P_STAMP + 32, st->id.taken_ns);
	mb_seal(blk, MAGIC, 0, seq, tag);
}

static void decode_stamp(const uint8_t *blk, struct intent_stamp *st)
{
	const uint8_t *p = blk + MB_HEADER;
	uint32_t flags;

	memcpy(&flags, p + P_FLAGS, 4);
	st->quiet = le32toh(flags) & FLAG_QUIET;
	st->lease_ns = get64(p + P_STAMP);
	st->id.size = get64(p + P_STAMP + 8);
	st->id.ino = get64(p + P_STAMP + 16);
	st->id.ctime_ns = get64(p + P_STAMP + 24);
	st->id.taken_ns = get64(p + P_STAMP + 32);
}

static int geometry(const struct superblock *sb, uint64_t *region, uint32_t *nregions)
{
	*region = intent_region_size(sb->volume_size);
	*nregions = (uint32_t)((sb->volume_size + *region - 1) / *region);
	return 0;
}

int intent_create(int dirfd, const struct vt_fsops *ops, const struct superblock *sb)
{
	uint8_t *blk = aligned_alloc(MB_SIZE, MB_SIZE);
	uint64_t region;
	uint32_t n;
	int fd, err;

	if (!blk)
		return -ENOMEM;
	geometry(sb, &region, &n);
	fd = ops->openat(ops, dirfd, INTENT_NAME ".tmp", O_RDWR | O_CREAT | O_TRUNC);
	if (fd < 0) {
		free(blk);
		return fd;
	}
	/* Both slots valid from the start: an invalid one later is damage
	 * or a torn commit, never "not written yet".  No identity: the
	 * caller has just counted everything as changed, or the volume is
	 * new. */
	struct intent_stamp none = { 0 };
	encode(blk, n, region, NULL, &none, 1, mb_gen_tag(&sb->generation));
	err = ops->pwrite(ops, fd, blk, MB_SIZE, 0);
	encode(blk, n, region, NULL, &none, 2, mb_gen_tag(&sb->generation));
	if (!err)
		err = ops->pwrite(ops, fd, blk, MB_SIZE, MB_SIZE);
	err = vt_replace_file(ops, dirfd, fd, INTENT_NAME ".tmp", INTENT_NAME, err);
	free(blk);
	return err;
}

/* Read both slots into blk and say which are whole and of this volume's
 * geometry and generation.  A short file is a slot that is not there:
 * damage, not an error of the call. */
static int read_slots(const struct vt_fsops *ops, int fd, uint8_t *blk, uint32_t n,
		      uint64_t region, uint64_t tag, bool ok[2], uint64_t seq[2])
{
	for (unsigned s = 0; s < 2; s++) {
		uint8_t *b = blk + s * MB_SIZE;
		uint32_t nr;
		uint64_t rs;
		int err = vt_read_full(ops, fd, b, MB_SIZE, (uint64_t)s * MB_SIZE);

		ok[s] = false;
		if (err == -EBADMSG)
			continue;
		if (err)
			return err;
		if (mb_check(b, MAGIC, 0, tag, &seq[s]))
			continue;
		memcpy(&nr, b + MB_HEADER + P_NREGIONS, 4);
		memcpy(&rs, b + MB_HEADER + P_REGION, 8);
		ok[s] = le32toh(nr) == n && le64toh(rs) == region;
	}
	return 0;
}

int intent_verify(int dirfd, const struct vt_fsops *ops, const struct superblock *sb,
		  bool ok[2])
{
	uint8_t *blk = aligned_alloc(MB_SIZE, 2 * MB_SIZE);
	uint64_t region, seq[2];
	uint32_t n;
	int fd, err;

	if (!blk)
		return -ENOMEM;
	geometry(sb, &region, &n);
	fd = ops->openat(ops, dirfd, INTENT_NAME, O_RDONLY);
	if (fd < 0) {
		free(blk);
		return fd;
	}
	err = read_slots(ops, fd, blk, n, region, mb_gen_tag(&sb->generation), ok, seq);
	close(fd);
	free(blk);
	return err;
}

int intent_open(int dirfd, const struct vt_fsops *ops, const struct superblock *sb,
		const struct intent_config *cfg, struct intent **out,
		uint32_t *set, struct intent_stamp *stamp, bool *doubt, bool *damaged)
{
	struct intent *in = calloc(1, sizeof(*in));
	uint64_t region, seq[2];
	uint32_t n;
	bool ok[2] = { false, false };
	int err = -ENOMEM;

	*set = 0;
	memset(stamp, 0, sizeof(*stamp));
	*doubt = false;
	*damaged = false;
	if (!in)
		return -ENOMEM;
	geometry(sb, &region, &n);
	pthread_mutex_init(&in->lock, NULL);
	pthread_cond_init(&in->work, NULL);
	pthread_cond_init(&in->committed, NULL);
	in->fd = -1;
	in->ops = ops;
	in->cfg = *cfg;
	in->gen_tag = mb_gen_tag(&sb->generation);
	in->region_shift = (unsigned)__builtin_ctzll(region);
	in->nregions = n;
	in->state = calloc(n, 1);
	in->inflight = calloc(n, sizeof(*in->inflight));
	in->touch = calloc(n, sizeof(*in->touch));
	in->wanted = calloc((n + 7) / 8, 1);
	in->snap = calloc((n + 7) / 8, 1);
	in->blk = aligned_alloc(MB_SIZE, 2 * MB_SIZE);
	if (!in->state || !in->inflight || !in->touch || !in->wanted || !in->snap || !in->blk)
		goto fail;

	in->fd = ops->openat(ops, dirfd, INTENT_NAME, O_RDWR);
	if (in->fd < 0) {
		err = in->fd;
		goto fail;
	}
	err = read_slots(ops, in->fd, in->blk, n, region, in->gen_tag, ok, seq);
	if (err)
		goto fail;
	/*
	 * One bad slot is a commit torn by a crash or damage to the newest
	 * copy; the survivor may lack regions that were set, so after an
	 * unclean stop it cannot be trusted.  After a clean close every
	 * region was cleared, and the survivor can only over-report.
	 */
	*damaged = !ok[0] || !ok[1];
	if ((!ok[0] && !ok[1]) || (*damaged && !(sb->state & SB_STATE_CLEAN))) {
		*doubt = true;
		in->cur_slot = ok[0] ? 0 : 1;
	} else {
		unsigned s = ok[0] && (!ok[1] || seq[0] > seq[1]) ? 0 : 1;
		/* A damaged other slot is the next one written, which heals it. */
		in->cur_slot = s;
		in->seq = seq[s];
		memcpy(in->wanted, in->blk + s * MB_SIZE + MB_HEADER + P_BITMAP, (n + 7) / 8);
		decode_stamp(in->blk + s * MB_SIZE, stamp);
		for (uint32_t r = 0; r < n; r++) {
			if (bit(in->wanted, r)) {
				atomic_store(&in->state[r], IR_DURABLE);
				(*set)++;
			}
		}
	}
	*out = in;
	return 0;
fail:
	intent_close(in);
	return err;
}

void intent_close(struct intent *in)
{
	if (!in)
		return;
	intent_stop(in);
	if (in->fd >= 0)
		close(in->fd);
	pthread_cond_destroy(&in->committed);
	pthread_cond_destroy(&in->work);
	pthread_mutex_destroy(&in->lock);
	free((void *)in->state);
	free(in->inflight);
	free(in->touch);
	free(in->wanted);
	free(in->snap);
	free(in->blk);
	free(in);
}

uint64_t intent_region_bytes(const struct intent *in)
{
	return 1ull << in->region_shift;
}

uint32_t intent_nregions(const struct intent *in)
{
	return in->nregions;
}

bool intent_region_set(const struct intent *in, uint32_t r)
{
	uint8_t st = atomic_load_explicit(&in->state[r], memory_order_relaxed);
	return st == IR_DURABLE || st == IR_PENDING || st == IR_CLEARING;
}

uint32_t intent_count_set(struct intent *in)
{
	uint32_t n = 0;

	for (uint32_t r = 0; r < in->nregions; r++)
		n += intent_region_set(in, r);
	return n;
}

/* After `snap` is durable: only now may the in-memory states follow. */
static void states_follow_disk(struct intent *in)
{
	for (uint32_t r = 0; r < in->nregions; r++) {
		uint8_t st = atomic_load(&in->state[r]);
		if (bit(in->snap, r) && st == IR_PENDING)
			atomic_store(&in->state[r], IR_DURABLE);
		else if (!bit(in->snap, r) && st == IR_CLEARING)
			atomic_store(&in->state[r], IR_CLEAR);
	}
}

static bool snap_empty(const struct intent *in)
{
	for (uint32_t i = 0; i < (in->nregions + 7) / 8; i++)
		if (in->snap[i])
			return false;
	return true;
}

/*
 * Write `snap` into the older slot and make it durable.  Unlocked.  The
 * stamp is taken here: with no region in `snap` no data write is in
 * flight or can start before the next commit (a writer needs a DURABLE
 * region, and every such region's bit is in `snap`), so the identity
 * read now is the volume as the tracker left it.
 */
static int write_slot(struct intent *in)
{
	unsigned slot = in->cur_slot ^ 1;
	struct intent_stamp st = { 0 };
	int err;

	if (in->cfg.lease_ns)
		st.lease_ns = intent_wall_ns() + in->cfg.lease_ns;
	/* Size and inode always; the ctime means something only when quiet. */
	if (in->cfg.identity && in->cfg.identity(in->cfg.arg, &st.id) == 0)
		st.quiet = snap_empty(in);
	else
		memset(&st.id, 0, sizeof(st.id));
	/* A sequence number is never reused, even by a failed attempt: a
	 * torn slot must not pass for a whole one. */
	in->seq++;
	encode(in->blk, in->nregions, intent_region_bytes(in), in->snap, &st, in->seq, in->gen_tag);
	err = in->ops->pwrite(in->ops, in->fd, in->blk, MB_SIZE, (uint64_t)slot * MB_SIZE);
	if (!err)
		err = in->ops->fdatasync(in->ops, in->fd);
	if (!err) {
		in->cur_slot = slot;
		atomic_store(&in->lease_ns, st.lease_ns);
	}
	return err;
}

static void *committer(void *arg)
{
	struct intent *in = arg;

	pthread_mutex_lock(&in->lock);
	for (;;) {
		while (!in->requested && !in->stopping)
			pthread_cond_wait(&in->work, &in->lock);
		if (!in->requested)
			break;
		in->requested = false;
		uint64_t gen = ++in->started_gen;
		memcpy(in->snap, in->wanted, (in->nregions + 7) / 8);
		pthread_mutex_unlock(&in->lock);

		int err = write_slot(in);

		VT_PAUSE_POINT("intent.commit.written");
		pthread_mutex_lock(&in->lock);
		if (err) {
			vt_error("write-intent commit failed: %s; writes into new regions fail with EIO",
				 strerror(-err));
		} else {
			states_follow_disk(in);
		}
		in->finished_gen = gen;
		in->finished_err = err;
		struct intent_wait *ready = NULL, **p = &in->waiters;
		while (*p) {
			struct intent_wait *w = *p;
			if (w->need_gen <= gen) {
				*p = w->next;
				w->next = ready;
				ready = w;
			} else {
				p = &w->next;
			}
		}
		pthread_cond_broadcast(&in->committed);
		pthread_mutex_unlock(&in->lock);
		while (ready) {
			struct intent_wait *w = ready;
			ready = w->next;
			w->ready(w, err);
		}
		pthread_mutex_lock(&in->lock);
	}
	pthread_mutex_unlock(&in->lock);
	return NULL;
}

int intent_start(struct intent *in)
{
	int err = -pthread_create(&in->thread, NULL, committer, in);
	if (!err)
		in->running = true;
	return err;
}

void intent_stop(struct intent *in)
{
	if (!in->running)
		return;
	pthread_mutex_lock(&in->lock);
	in->stopping = true;
	pthread_cond_signal(&in->work);
	pthread_mutex_unlock(&in->lock);
	pthread_join(in->thread, NULL);
	in->running = false;
}

/* Request a commit and wait for it.  Called with the lock held. */
static int commit_locked(struct intent *in)
{
	uint64_t need = in->started_gen + 1;

	if (!in->running) {
		/* No committer (offline use): write it here. */
		memcpy(in->snap, in->wanted, (in->nregions + 7) / 8);
		int err = write_slot(in);
		if (!err)
			states_follow_disk(in);
		return err;
	}
	in->requested = true;
	pthread_cond_signal(&in->work);
	while (in->finished_gen < need)
		pthread_cond_wait(&in->committed, &in->lock);
	return in->finished_err;
}

int intent_begin(struct intent *in, uint64_t off, uint64_t len, struct intent_wait *w)
{
	uint32_t r0 = (uint32_t)(off >> in->region_shift);
	uint32_t r1 = (uint32_t)((off + (len ? len - 1 : 0)) >> in->region_shift);
	bool slow = false;

	if (r1 >= in->nregions)
		r1 = in->nregions - 1;
	for (uint32_t r = r0; r <= r1; r++)
		atomic_fetch_add(&in->inflight[r], 1);
	for (uint32_t r = r0; r <= r1; r++)
		if (atomic_load(&in->state[r]) != IR_DURABLE)
			slow = true;
	if (!slow)
		return 0;

	pthread_mutex_lock(&in->lock);
	bool all = true;
	for (uint32_t r = r0; r <= r1; r++) {
		uint8_t st = atomic_load(&in->state[r]);
		if (st == IR_DURABLE)
			continue;
		all = false;
		atomic_store(&in->state[r], IR_PENDING);
		set_bit(in->wanted, r, true);
	}
	if (all) {
		pthread_mutex_unlock(&in->lock);
		return 0;
	}
	if (!in->running) {
		int err = commit_locked(in);
		pthread_mutex_unlock(&in->lock);
		return err;
	}
	/* Wait for a commit that includes these regions. */
	w->need_gen = in->started_gen + 1;
	w->next = in->waiters;
	in->waiters = w;
	in->requested = true;
	pthread_cond_signal(&in->work);
	pthread_mutex_unlock(&in->lock);
	return 1;
}

/* (int) of the difference: ticks wrap, and compare within half a range. */
static bool tick_before(unsigned a, unsigned b)
{
	return (int)(a - b) < 0;
}

void intent_end(struct intent *in, uint64_t off, uint64_t len, unsigned tick)
{
	uint32_t r0 = (uint32_t)(off >> in->region_shift);
	uint32_t r1 = (uint32_t)((off + (len ? len - 1 : 0)) >> in->region_shift);

	if (r1 >= in->nregions)
		r1 = in->nregions - 1;
	for (uint32_t r = r0; r <= r1; r++) {
		/*
		 * The last touch only moves forward: a writer that read an
		 * older tick and stores late must not hide a newer writer
		 * from the clearer.  The loop runs once per region and tick.
		 */
		unsigned cur = atomic_load(&in->touch[r]);
		while (tick_before(cur, tick) &&
		       !atomic_compare_exchange_weak(&in->touch[r], &cur, tick))
			;
		VT_PAUSE_POINT("intent.end.touched");
		atomic_fetch_sub(&in->inflight[r], 1);
	}
}

static bool idle_since(struct intent *in, uint32_t r, unsigned before)
{
	return tick_before(atomic_load(&in->touch[r]), before);
}

int intent_clear_idle(struct intent *in, unsigned before,
		      int (*sync_data)(void *arg), void *arg)
{
	int n = 0, err = 0;
	bool any = false;

	/* A cheap unlocked look first: under steady writes nothing is idle,
	 * and then the volume is not synced either. */
	for (uint32_t r = 0; r < in->nregions && !any; r++)
		any = atomic_load(&in->state[r]) == IR_DURABLE && idle_since(in, r, before);
	if (!any)
		return 0;
	/* Every write that touched a region before `before` has completed;
	 * make its data durable before its intent can go. */
	if (sync_data) {
		err = sync_data(arg);
		if (err)
			return err;
	}

	pthread_mutex_lock(&in->lock);
	for (uint32_t r = 0; r < in->nregions; r++) {
		uint8_t expect = IR_DURABLE;
		if (!idle_since(in, r, before))
			continue; /* touched at or after `before` */
		VT_PAUSE_POINT("intent.clear.idle_seen");
		if (!atomic_compare_exchange_strong(&in->state[r], &expect, IR_CLEARING))
			continue;
		/*
		 * A writer increments inflight, then loads the state; we
		 * stored CLEARING, then load inflight.  Sequentially
		 * consistent, so either it saw CLEARING (and waits for a new
		 * commit) or we see it in flight.  But a writer that began
		 * after the idle check above and has already finished is
		 * neither: only its touch tells, so look again once inflight
		 * says nobody is there.
		 */
		if (atomic_load(&in->inflight[r]) != 0 || !idle_since(in, r, before)) {
			atomic_store(&in->state[r], IR_DURABLE); /* a writer is or was there */
			continue;
		}
		set_bit(in->wanted, r, false);
		n++;
	}
	if (n)
		err = commit_locked(in);
	pthread_mutex_unlock(&in->lock);
	return err ? err : n;
}

int intent_commit(struct intent *in)
{
	pthread_mutex_lock(&in->lock);
	int err = commit_locked(in);
	pthread_mutex_unlock(&in->lock);
	return err;
}

void intent_kick(struct intent *in)
{
	pthread_mutex_lock(&in->lock);
	in->requested = true;
	pthread_cond_signal(&in->work);
	pthread_mutex_unlock(&in->lock);
}

int intent_renew_lease(struct intent *in)
{
	if (!in->cfg.lease_ns || !in->running)
		return 0;
	uint64_t left = atomic_load(&in->lease_ns) - intent_wall_ns();
	if ((int64_t)left > (int64_t)(in->cfg.lease_ns / 2) || intent_count_set(in) == 0)
		return 0; /* plenty left, or no write can start without a commit anyway */
	return intent_commit(in);
}

int intent_clear_all(struct intent *in)
{
	int err;

	pthread_mutex_lock(&in->lock);
	for (uint32_t r = 0; r < in->nregions; r++) {
		uint8_t st = atomic_load(&in->state[r]);
		if (st != IR_CLEAR)
			atomic_store(&in->state[r], IR_CLEARING);
	}
	memset(in->wanted, 0, (in->nregions + 7) / 8);
	err = commit_locked(in);
	pthread_mutex_unlock(&in->lock);
	return err;
}
