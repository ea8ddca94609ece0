#include "metaharness.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "commands.h"
#include "fixture.h"
#include "metablock.h"
#include "metaref.h"
#include "tracker.h"

#define VOLUME_SIZE (256ull << 20)
#define GRANULARITY (64u << 10)
/* The volume at 4 KiB blocks, the finest a superblock may claim. */
#define MAX_REF_BLOCKS (VOLUME_SIZE / 4096)

static const char *const file_names[META_NFILES] = {
	"superblock", "changemap", "intent", "checkpoints",
};

struct image {
	uint8_t *data[META_NFILES];
	size_t len[META_NFILES];
};

static struct fixture fx;
static struct image golden[2];		/* [0] clean close, [1] crash */
static struct volume_identity vol_id;	/* the volume never changes */
static uint8_t *work;			/* the fuzzed file */
static size_t work_cap;

static void die(const char *what, int err)
{
	fprintf(stderr, "metaharness: %s: %s\n", what, strerror(-err));
	exit(1);
}

/* ---- building the history ---- */

struct waiter {
	struct intent_wait w;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int done, err;
};

static void waiter_ready(struct intent_wait *w, int err)
{
	struct waiter *x = (struct waiter *)w;

	pthread_mutex_lock(&x->lock);
	x->done = 1;
	x->err = err;
	pthread_cond_signal(&x->cond);
	pthread_mutex_unlock(&x->lock);
}

/* A tracked write of [off, off+len), without the data. */
static void mark(struct tracker *t, uint64_t off, uint64_t len)
{
	struct waiter x = { .w.ready = waiter_ready };
	int r;

	pthread_mutex_init(&x.lock, NULL);
	pthread_cond_init(&x.cond, NULL);
	r = tracker_write_begin(t, off, len, &x.w);
	if (r == 1) {
		pthread_mutex_lock(&x.lock);
		while (!x.done)
			pthread_cond_wait(&x.cond, &x.lock);
		pthread_mutex_unlock(&x.lock);
		r = x.err;
	}
	tracker_write_end(t, off, len);
	pthread_cond_destroy(&x.cond);
	pthread_mutex_destroy(&x.lock);
	if (r)
		die("tracked write", r);
}

static struct tracker *open_live(void)
{
	struct tracker_config cfg;
	struct tracker *t;
	int err;

	tracker_config_defaults(&cfg);
	cfg.volume = fx.vol;
	cfg.persist_interval_ms = 3600000; /* persists happen when we say */
	err = tracker_open(fx.md, &vol_id, true, &cfg, &t);
	if (err)
		die("tracker_open", err);
	return t;
}

static void save(struct image *img)
{
	for (int f = 0; f < META_NFILES; f++) {
		int fd = openat(metadir_fd(fx.md), file_names[f], O_RDONLY | O_CLOEXEC);
		off_t len = fd < 0 ? -1 : lseek(fd, 0, SEEK_END);
		if (len < 0)
			die(file_names[f], -errno);
		img->len[f] = (size_t)len;
		img->data[f] = malloc((size_t)len);
		if (!img->data[f] || file_pread_full(fd, img->data[f], (size_t)len, 0))
			die("reading back metadata", -EIO);
		close(fd);
		if ((size_t)len * 2 + 8 > work_cap)
			work_cap = (size_t)len * 2 + 8;
	}
}

void meta_harness_init(void)
{
	struct tracker *t;
	int err;

	fixture_create(&fx, "meta", VOLUME_SIZE, GRANULARITY, &fixture_fsops_nosync);
	/* Fixed identifiers, so that a seed written by one process still
	 * belongs to this history in the next. */
	memset(fx.sb.volume_uuid.bytes, 0x11, 16);
	memset(fx.sb.generation.bytes, 0x22, 16);
	err = tracker_format(fx.md, &fx.sb);
	if (!err)
		err = metadir_write_superblock(fx.md, &fx.sb);
	if (!err)
		err = volume_identity(fx.vol, &vol_id);
	if (err)
		die("formatting", err);

	t = open_live();
	mark(t, 0, 4096);				/* epoch 1 */
	mark(t, 10 << 20, 200 << 10);
	mark(t, 100 << 20, 64 << 10);
	if ((err = tracker_checkpoint(t, "a", NULL)))
		die("checkpoint a", err);
	mark(t, 70 << 20, 1);				/* epoch 2 */
	mark(t, 200ull << 20, 1 << 20);
	mark(t, 255ull << 20, 128 << 10);		/* map page 1 */
	if ((err = tracker_checkpoint(t, "b", NULL)))
		die("checkpoint b", err);
	mark(t, 130ull << 20, 4096);			/* epoch 3, open */
	mark(t, 0, 4096);
	if ((err = tracker_close(t, &vol_id)))
		die("close", err);
	save(&golden[0]);

	t = open_live();
	mark(t, 190ull << 20, 8192);			/* region 2 */
	mark(t, 5 << 20, 4096);				/* region 0 */
	tracker_abandon(t);				/* as kill -9 leaves it */
	save(&golden[1]);

	work = malloc(work_cap);
	if (!work)
		die("malloc", -ENOMEM);
}

/* ---- one input ---- */

static uint32_t get_le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* The fuzzed file from the golden one and the input; its length. */
static size_t build_file(const struct image *img, enum meta_file target, unsigned flags,
			 const uint8_t *p, size_t n)
{
	size_t len = img->len[target];

	memcpy(work, img->data[target], len);
	if ((flags & 4) && n >= 4) {
		size_t want = get_le32(p) % (2 * img->len[target] + 1);
		if (want > len)
			memset(work + len, 0, want - len);
		len = want;
		p += 4;
		n -= 4;
	}
	while (n >= 5 && len) {
		size_t off = get_le32(p) % len, k = p[4];
		p += 5;
		n -= 5;
		if (k > n)
			k = n;
		if (k > len - off)
			k = len - off;
		memcpy(work + off, p, k);
		p += k;
		n -= k;
	}
	if (flags & 2) {
		if (target == META_SUPERBLOCK)
			ref_reseal_superblock(work, len);
		else
			ref_reseal_blocks(work, len);
	}
	return len;
}

static void put_file(const char *name, const uint8_t *data, size_t len)
{
	int fd = openat(metadir_fd(fx.md), name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

	FUZZ_CHECK(fd >= 0, "cannot write the metadata directory");
	FUZZ_CHECK(file_pwrite_full(fd, data, len, 0) == 0, "cannot write a metadata file");
	close(fd);
}

/* What a correct reader must conclude, from metaref alone. */
struct expect {
	struct ref_sb sb;
	bool damaged;			/* some copy of something is bad */
	bool map_damage, ckpt_damage;
	bool doubt_all;			/* every block changed since every checkpoint */
	uint8_t *changed_all;		/* per block: changed since every checkpoint */
	uint16_t *min_epoch;		/* per block: at least this epoch */
	struct ref_ckpt_slot ck[2];
	bool ck_candidate[2];		/* the lists the tracker may have taken */
};

static struct expect ex;

static bool bit(const uint8_t *map, uint32_t r)
{
	return map[r / 8] & (1u << (r % 8));
}

static void reference(const struct image *img, enum meta_file target, size_t tlen)
{
	const uint8_t *f[META_NFILES];
	size_t len[META_NFILES];

	for (int i = 0; i < META_NFILES; i++) {
		f[i] = i == (int)target ? work : img->data[i];
		len[i] = i == (int)target ? tlen : img->len[i];
	}
	free(ex.changed_all);
	free(ex.min_epoch);
	memset(&ex, 0, sizeof(ex));
	ref_superblock(f[META_SUPERBLOCK], len[META_SUPERBLOCK], &ex.sb);
	if (!ex.sb.ok) {
		ex.damaged = true;
		return;
	}
	const struct ref_sb *sb = &ex.sb;
	uint64_t nb = ref_nblocks(sb);
	if (nb > MAX_REF_BLOCKS)
		nb = MAX_REF_BLOCKS; /* a forged size; such a superblock is refused */
	ex.changed_all = calloc(nb ? nb : 1, 1);
	ex.min_epoch = calloc(nb ? nb : 1, sizeof(*ex.min_epoch));
	FUZZ_CHECK(ex.changed_all && ex.min_epoch, "out of memory");

	bool clean = sb->state & 1;
	if (sb->state & 2)
		ex.doubt_all = true;			/* served untracked */
	if (clean && (sb->id_size != vol_id.size ||
		      (sb->kind == 1 && (sb->id_ino != vol_id.ino || sb->id_ctime != vol_id.ctime_ns))))
		ex.doubt_all = true;			/* changed while untracked */

	/* checkpoints */
	ref_checkpoints(f[META_CHECKPOINTS], len[META_CHECKPOINTS], sb, ex.ck);
	ex.ckpt_damage = !ex.ck[0].ok || !ex.ck[1].ok;
	if (ex.ck[0].ok && ex.ck[1].ok) {
		ex.ck_candidate[0] = ex.ck[0].seq >= ex.ck[1].seq;
		ex.ck_candidate[1] = ex.ck[1].seq >= ex.ck[0].seq;
	} else {
		ex.ck_candidate[0] = ex.ck[0].ok;
		ex.ck_candidate[1] = ex.ck[1].ok;
	}

	/* change map */
	if (!ref_map_header(f[META_CHANGEMAP], len[META_CHANGEMAP], sb)) {
		ex.doubt_all = ex.map_damage = true;
	} else {
		for (uint32_t p = 0; p < ref_npages(sb); p++) {
			struct ref_page pg;
			ref_map_page(f[META_CHANGEMAP], len[META_CHANGEMAP], sb, p, &pg);
			for (uint32_t i = 0; i < REF_PAYLOAD; i++) {
				uint64_t b = (uint64_t)p * REF_PAYLOAD + i;
				if (b >= nb)
					break;
				if (!pg.ok[0] || !pg.ok[1]) {
					ex.changed_all[b] = 1;
					continue;
				}
				/* equal sequences: either copy may be taken */
				uint8_t e0 = pg.payload[0][i], e1 = pg.payload[1][i];
				uint8_t e = pg.seq[0] > pg.seq[1] ? e0 : pg.seq[1] > pg.seq[0] ? e1 :
					    e0 < e1 ? e0 : e1;
				ex.min_epoch[b] = e;
			}
			if (!pg.ok[0] || !pg.ok[1])
				ex.map_damage = true;
		}
	}

	/* intents */
	struct ref_intent in;
	ref_intent(f[META_INTENT], len[META_INTENT], sb, &in);
	if ((!in.ok[0] && !in.ok[1]) || ((!in.ok[0] || !in.ok[1]) && !clean)) {
		ex.doubt_all = true;
	} else {
		for (uint32_t r = 0; r < in.nregions; r++) {
			bool set;
			if (in.ok[0] && in.ok[1] && in.seq[0] == in.seq[1])
				set = bit(in.bitmap[0], r) && bit(in.bitmap[1], r);
			else if (in.ok[0] && (!in.ok[1] || in.seq[0] > in.seq[1]))
				set = bit(in.bitmap[0], r);
			else
				set = bit(in.bitmap[1], r);
			if (!set)
				continue;
			uint64_t first = r * (in.region / sb->granularity);
			for (uint64_t b = first; b < first + in.region / sb->granularity && b < nb; b++)
				ex.changed_all[b] = 1;
		}
	}
	ex.damaged = ex.map_damage || ex.ckpt_damage || !in.ok[0] || !in.ok[1];
}

/* The checkpoint list the tracker reports must be one the file holds. */
static int matching_list(const struct checkpoint_list *l)
{
	for (int s = 0; s < 2; s++) {
		if (!ex.ck_candidate[s])
			continue;
		const struct ref_ckpt_slot *c = &ex.ck[s];
		bool all = true;
		for (uint32_t i = 0; i < l->n && all; i++) {
			bool found = false;
			for (uint32_t j = 0; j < c->n; j++)
				found |= !strcmp(c->items[j].name, l->items[i].name) &&
					 c->items[j].epoch == l->items[i].epoch;
			all = found;
		}
		if (all)
			return s;
	}
	return -1;
}

static uint8_t epoch_of(const struct changemap *cm, uint64_t b)
{
	return atomic_load_explicit(&cm->epoch[b], memory_order_relaxed);
}

/* Every assertion about one open tracker. */
static void check_open(struct tracker *t, const struct checkpoint_list *l)
{
	const struct changemap *cm = tracker_map(t);
	struct tracker_info info;

	tracker_info(t, &info);
	FUZZ_CHECK(cm->nblocks == ref_nblocks(&ex.sb), "the map does not cover the volume");
	FUZZ_CHECK(cm->nblocks <= MAX_REF_BLOCKS, "more blocks than the reference holds");
	if (l->n) {
		FUZZ_CHECK(!ex.doubt_all || info.start != TRACKER_START_CLEAN,
			   "metadata in doubt, yet a clean start");
		FUZZ_CHECK(matching_list(l) >= 0,
			   "a checkpoint is reported that the checkpoint file does not hold");
	}
	for (uint32_t i = 0; i < l->n; i++) {
		uint8_t since = l->items[i].epoch;
		for (uint64_t b = 0; b < cm->nblocks; b++) {
			bool must = ex.doubt_all || ex.changed_all[b] || ex.min_epoch[b] > since;
			if (must && epoch_of(cm, b) <= since) {
				char why[200];
				snprintf(why, sizeof(why), "block %llu may have changed since "
					 "checkpoint '%s' (epoch %u) but is reported unchanged "
					 "(epoch %u)", (unsigned long long)b, l->items[i].name,
					 since, epoch_of(cm, b));
				fixture_fail(__FILE__, __LINE__, why);
			}
		}
	}
	if (ex.map_damage)
		FUZZ_CHECK(info.bad_pages || info.start != TRACKER_START_CLEAN,
			   "a damaged change-map page went unreported");
	if (ex.ckpt_damage)
		FUZZ_CHECK(info.start != TRACKER_START_CLEAN &&
			   info.start != TRACKER_START_RECOVERED,
			   "a damaged checkpoint copy kept the generation");
}

void meta_harness_run(enum meta_file target, const uint8_t *data, size_t size)
{
	unsigned flags = size ? data[0] : 0;
	const struct image *img = &golden[flags & 1];
	struct checkpoint_list *l1 = malloc(sizeof(*l1)), *l2 = malloc(sizeof(*l2));
	struct tracker_config cfg;
	struct tracker *t;
	int err;

	FUZZ_CHECK(l1 && l2, "out of memory");
	size_t tlen = build_file(img, target, flags, size ? data + 1 : data, size ? size - 1 : 0);
	for (int f = 0; f < META_NFILES; f++) {
		if (f == (int)target)
			put_file(file_names[f], work, tlen);
		else
			put_file(file_names[f], img->data[f], img->len[f]);
	}
	reference(img, target, tlen);

	/* voltrack check */
	char *text = NULL;
	size_t text_len = 0;
	FILE *out = open_memstream(&text, &text_len);
	FUZZ_CHECK(out, "open_memstream");
	int status = ctl_check(fx.md, out);
	fclose(out);
	free(text);
	FUZZ_CHECK(status == 0 || status == 1, "check: an exit status other than 0 or 1");
	FUZZ_CHECK(!ex.damaged || status == 1, "check passed metadata with a damaged copy");

	/* the offline open every CLI command makes */
	tracker_config_defaults(&cfg);
	cfg.volume = fx.vol;
	err = tracker_open(fx.md, &vol_id, false, &cfg, &t);
	if (!ex.sb.ok) {
		FUZZ_CHECK(err == -EINVAL || err == -EBADMSG || err == -EPROTONOSUPPORT,
			   "an invalid superblock was not refused with a format error");
		goto out;
	}
	if (ex.sb.volume_size != vol_id.size) {
		FUZZ_CHECK(err == -ERANGE, "a superblock of another size was not refused");
		goto out;
	}
	FUZZ_CHECK(err == 0, "tracker_open failed on damaged metadata instead of doubting it");
	tracker_checkpoints(t, l1);
	check_open(t, l1);

	/* Close cleanly and open again: what was changed stays changed. */
	const struct changemap *cm = tracker_map(t);
	uint8_t *before = malloc(cm->nblocks ? cm->nblocks : 1);
	struct tracker_info i1, i2;
	FUZZ_CHECK(before, "out of memory");
	for (uint64_t b = 0; b < cm->nblocks; b++)
		before[b] = epoch_of(cm, b);
	tracker_info(t, &i1);
	uint64_t nblocks = cm->nblocks;
	err = tracker_close(t, &vol_id);
	FUZZ_CHECK(err == 0, "closing the recovered tracker failed");
	err = tracker_open(fx.md, &vol_id, false, &cfg, &t);
	FUZZ_CHECK(err == 0, "reopening after a clean close failed");
	tracker_info(t, &i2);
	tracker_checkpoints(t, l2);
	cm = tracker_map(t);
	FUZZ_CHECK(i2.start == TRACKER_START_CLEAN, "the start after a clean close is not clean");
	FUZZ_CHECK(vt_uuid_equal(&i1.generation, &i2.generation),
		   "the generation changed across a clean close");
	FUZZ_CHECK(cm->nblocks == nblocks, "the map changed size across a clean close");
	FUZZ_CHECK(l1->n == l2->n, "checkpoints changed across a clean close");
	for (uint32_t i = 0; i < l1->n; i++)
		FUZZ_CHECK(!strcmp(l1->items[i].name, l2->items[i].name) &&
			   l1->items[i].epoch == l2->items[i].epoch,
			   "checkpoints changed across a clean close");
	for (uint64_t b = 0; b < nblocks; b++)
		FUZZ_CHECK(epoch_of(cm, b) >= before[b],
			   "a block reported changed before a clean close is unchanged after it");
	free(before);
	tracker_abandon(t);
out:
	free(l1);
	free(l2);
}
