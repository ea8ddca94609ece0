/*
 * Renumbering epochs (src/epochs.c), without threads: the plan keeps
 * every answer of every remaining checkpoint, the passes only lower and
 * flag what they change, the load tables clamp, and the checkpoint list
 * stores its numbering record (and still reads a list without one).
 *
 * The reference for "keeps every answer" is the definition itself:
 * before, block epoch v is changed since checkpoint c when v > c's old
 * epoch; after, the translated epoch must compare the same way with c's
 * new epoch, for every v and every remaining c.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "changemap.h"
#include "checkpoints.h"
#include "epochs.h"
#include "metablock.h"

#define G (64u << 10)

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint64_t rnd(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

/* n checkpoints at random increasing epochs (gaps allowed), open above. */
static void random_list(struct checkpoint_list *l, uint32_t n)
{
	memset(l, 0, sizeof(*l));
	uint32_t room = 254 - n, e = 0;
	for (uint32_t i = 0; i < n; i++) {
		uint32_t gap = room ? (uint32_t)(rnd() % (room / 8 + 1)) : 0;
		room -= gap;
		e += 1 + gap;
		snprintf(l->items[i].name, sizeof(l->items[i].name), "c%u", i);
		l->items[i].epoch = (uint8_t)e;
		l->items[i].serial = 100 + i;
	}
	l->n = n;
	l->open_epoch = (uint8_t)(e + 1 + (room ? rnd() % (room + 1) : 0));
	l->numbering.count = 7;
}

static void check_plan(const struct checkpoint_list *cur, uint32_t drop)
{
	struct checkpoint_list *next = malloc(sizeof(*next));
	const uint8_t *t = next->numbering.from_prev;

	epochs_plan(cur, drop, next);
	uint32_t m = cur->n - (drop < cur->n);
	assert_int_equal(next->n, m);
	assert_int_equal(next->open_epoch, m + 1);
	assert_int_equal(next->numbering.count, cur->numbering.count + 1);
	assert_int_equal(t[0], 0);
	for (unsigned v = 1; v < 256; v++) {
		assert_true(t[v] <= v);		/* only ever lowers */
		assert_true(t[v] >= t[v - 1]);	/* keeps the order */
		if (v >= cur->open_epoch)
			assert_int_equal(t[v], next->open_epoch);
	}
	for (uint32_t i = 0, k = 0; i < cur->n; i++) {
		if (i == drop)
			continue;
		const struct checkpoint *old = &cur->items[i], *new = &next->items[k++];
		assert_string_equal(old->name, new->name);
		assert_int_equal(old->serial, new->serial);
		assert_int_equal(new->epoch, k);	/* compact: the k-th gets k */
		for (unsigned v = 0; v < 256; v++)
			assert_int_equal(v > old->epoch, t[v] > new->epoch);
	}
	free(next);
}

static void test_plan_keeps_every_answer(void **state)
{
	struct checkpoint_list *l = malloc(sizeof(*l));

	for (int trial = 0; trial < 300; trial++) {
		uint32_t n = trial < 4 ? (uint32_t)trial : (uint32_t)(rnd() % 255);
		random_list(l, n);
		check_plan(l, EPOCHS_KEEP_ALL);
		if (n) {
			check_plan(l, 0);
			check_plan(l, n - 1);
			check_plan(l, (uint32_t)(rnd() % n));
		}
	}
	/* the fullest list, forgetting its first */
	random_list(l, CKPT_MAX);
	assert_int_equal(l->open_epoch, 255);
	check_plan(l, 0);
	free(l);
}

/* Forget the oldest of a compact list: everything above it moves down one. */
static void test_plan_rolling_window(void **state)
{
	struct checkpoint_list *l = malloc(sizeof(*l)), *next = malloc(sizeof(*next));

	random_list(l, 0);
	for (uint32_t i = 0; i < 30; i++) {
		snprintf(l->items[i].name, sizeof(l->items[i].name), "d%u", i);
		l->items[i].epoch = (uint8_t)(i + 1);
	}
	l->n = 30;
	l->open_epoch = 31;
	epochs_plan(l, 0, next);
	assert_int_equal(next->open_epoch, 30);
	assert_int_equal(next->numbering.from_prev[1], 1);
	assert_int_equal(next->numbering.from_prev[2], 1);
	assert_int_equal(next->numbering.from_prev[31], 30);
	assert_string_equal(next->items[0].name, "d1");
	free(l);
	free(next);
}

static void test_translate_and_clamp(void **state)
{
	struct changemap cm;
	uint8_t t[256];

	assert_int_equal(changemap_init(&cm, (uint64_t)3 * CM_PAGE_ENTRIES * G, G), 0);
	for (unsigned v = 0; v < 256; v++)
		t[v] = v < 10 ? (uint8_t)v : (uint8_t)(v - 5);
	/* page 0 holds low values only, page 1 high ones, page 2 both */
	changemap_mark(&cm, 0, 100 * G, 9);
	changemap_mark(&cm, (uint64_t)CM_PAGE_ENTRIES * G, 10 * G, 40);
	changemap_mark(&cm, (uint64_t)2 * CM_PAGE_ENTRIES * G, G, 3);
	changemap_mark(&cm, (uint64_t)(2 * CM_PAGE_ENTRIES + 1) * G, G, 200);
	for (uint32_t p = 0; p < cm.npages; p++)
		atomic_store(&cm.page_dirty[p], false);

	assert_int_equal(epochs_translate(&cm, t), 11);
	assert_int_equal(atomic_load(&cm.epoch[5]), 9);
	assert_int_equal(atomic_load(&cm.epoch[CM_PAGE_ENTRIES]), 35);
	assert_int_equal(atomic_load(&cm.epoch[2 * CM_PAGE_ENTRIES]), 3);
	assert_int_equal(atomic_load(&cm.epoch[2 * CM_PAGE_ENTRIES + 1]), 195);
	assert_int_equal(atomic_load(&cm.epoch[2 * CM_PAGE_ENTRIES + 2]), 0);
	assert_false(atomic_load(&cm.page_dirty[0]));	/* nothing in it changed */
	assert_true(atomic_load(&cm.page_dirty[1]));
	assert_true(atomic_load(&cm.page_dirty[2]));

	for (uint32_t p = 0; p < cm.npages; p++)
		atomic_store(&cm.page_dirty[p], false);
	assert_int_equal(epochs_clamp(&cm, 35), 1);
	assert_int_equal(atomic_load(&cm.epoch[2 * CM_PAGE_ENTRIES + 1]), 35);
	assert_int_equal(atomic_load(&cm.epoch[CM_PAGE_ENTRIES]), 35);
	assert_int_equal(atomic_load(&cm.epoch[5]), 9);
	assert_false(atomic_load(&cm.page_dirty[1]));
	assert_true(atomic_load(&cm.page_dirty[2]));
	changemap_free(&cm);
}

static void test_load_tables(void **state)
{
	struct checkpoint_list *l = calloc(1, sizeof(*l));
	uint8_t before[256], after[256];
	struct mapfile_xlate x;

	l->open_epoch = 4;
	epochs_load_tables(l, before, after, &x);
	assert_int_equal(x.boundary, 0);
	for (unsigned v = 0; v < 256; v++)
		assert_int_equal(after[v], v > 4 ? 4 : v);

	for (unsigned v = 0; v < 256; v++)
		l->numbering.from_prev[v] = (uint8_t)(v / 2);
	l->numbering.count = 1;
	l->numbering.boundary = 77;
	epochs_load_tables(l, before, after, &x);
	assert_int_equal(x.boundary, 77);
	assert_ptr_equal(x.before, before);
	assert_int_equal(before[5], 2);
	assert_int_equal(before[20], 4);	/* translated, then clamped */
	assert_int_equal(after[20], 4);
	assert_int_equal(after[3], 3);
	free(l);
}

static void test_sequence(void **state)
{
	struct epochs_seq s = { 0 };
	pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

	uint64_t a = epochs_read_begin(&s, &lock);
	assert_false(epochs_read_retry(&s, a));
	epochs_write_begin(&s);
	assert_true(epochs_read_retry(&s, a));
	epochs_write_end(&s);
	assert_true(epochs_read_retry(&s, a));
	uint64_t b = epochs_read_begin(&s, &lock);
	assert_int_equal(b, a + 2);
	assert_false(epochs_read_retry(&s, b));
}

/* ---- the numbering record in META/checkpoints ---- */

struct listdir {
	char dir[32];
	int dirfd;
	struct superblock sb;
};

static void listdir_open(struct listdir *d)
{
	snprintf(d->dir, sizeof(d->dir), "/tmp/vt-epochs-XXXXXX");
	assert_non_null(mkdtemp(d->dir));
	d->dirfd = open(d->dir, O_RDONLY | O_DIRECTORY);
	assert_true(d->dirfd >= 0);
	memset(&d->sb, 0, sizeof(d->sb));
	d->sb.generation.bytes[0] = 9;
}

static void listdir_close(struct listdir *d)
{
	char cmd[64];

	close(d->dirfd);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", d->dir);
	assert_int_equal(system(cmd), 0);
}

static void test_record_round_trip(void **state)
{
	struct listdir d;
	struct checkpoint_list *a = calloc(1, sizeof(*a)), *b = malloc(sizeof(*b));
	struct checkpoint_list *c = malloc(sizeof(*c));
	bool damaged, touched;
	uint8_t blk[MB_SIZE];

	listdir_open(&d);
	random_list(a, 0);
	a->numbering.count = 0;
	a->open_epoch = 1;
	assert_int_equal(checkpoints_create(d.dirfd, &vt_fsops_posix, &d.sb, a), 0);
	/* no record: the layout of format version 2, entries at 16 */
	random_list(b, 200);
	b->numbering.count = 0;
	assert_int_equal(checkpoints_store(d.dirfd, &vt_fsops_posix, &d.sb, a, b, &touched), 0);
	int fd = openat(d.dirfd, CHECKPOINTS_NAME, O_RDONLY);
	assert_int_equal(pread(fd, blk, MB_SIZE, (off_t)b->slot * 64 * MB_SIZE), MB_SIZE);
	assert_int_equal(blk[MB_HEADER + 9], 0);
	assert_int_equal(blk[MB_HEADER + 16], b->items[0].epoch);
	assert_int_equal(blk[MB_HEADER + 17], 2);	/* "c0" */

	/* with a record, the fullest list */
	random_list(a, CKPT_MAX);
	for (unsigned v = 0; v < 256; v++)
		a->numbering.from_prev[v] = (uint8_t)(v ? v - 1 + (v == 1) : 0);
	a->numbering.count = 3;
	a->numbering.boundary = 0x123456789abull;
	assert_int_equal(checkpoints_store(d.dirfd, &vt_fsops_posix, &d.sb, b, a, &touched), 0);
	assert_int_equal(checkpoints_load(d.dirfd, &vt_fsops_posix, &d.sb, c, &damaged), 0);
	assert_false(damaged);
	assert_int_equal(c->n, CKPT_MAX);
	assert_int_equal(c->numbering.count, 3);
	assert_int_equal(c->numbering.boundary, 0x123456789abull);
	assert_memory_equal(c->numbering.from_prev, a->numbering.from_prev, 256);
	assert_string_equal(c->items[253].name, a->items[253].name);
	assert_int_equal(c->items[253].epoch, a->items[253].epoch);

	/* a translation that would raise an epoch is not ours: the older
	 * copy is used, and the damage said */
	a->numbering.from_prev[9] = 10;
	assert_int_equal(checkpoints_store(d.dirfd, &vt_fsops_posix, &d.sb, c, a, &touched), 0);
	assert_int_equal(checkpoints_load(d.dirfd, &vt_fsops_posix, &d.sb, c, &damaged), 0);
	assert_true(damaged);
	assert_int_equal(c->numbering.count, 3);
	assert_int_equal(c->numbering.from_prev[9], 8);
	close(fd);
	listdir_close(&d);
	free(a);
	free(b);
	free(c);
}

/*
 * Map pages are dated by their sequence: stored at or below the boundary
 * means the previous numbering.  A page stored after the renumbering
 * must never be taken for an old one (it would be translated twice and
 * under-report), even when the boundary lies above every sequence found
 * on disk (writes counted in it that a crash lost).
 */
static void test_map_pages_dated_by_sequence(void **state)
{
	struct listdir d;
	struct changemap cm;
	struct mapfile *mf;
	struct mapfile_report rep;
	uint8_t half[256], same[256], max;

	for (unsigned v = 0; v < 256; v++) {
		half[v] = (uint8_t)(v / 2);
		same[v] = (uint8_t)v;
	}
	listdir_open(&d);
	d.sb.granularity = G;
	assert_int_equal(changemap_init(&cm, (uint64_t)2 * CM_PAGE_ENTRIES * G, G), 0);
	changemap_mark(&cm, 0, G, 8);				/* page 0 */
	changemap_mark(&cm, (uint64_t)CM_PAGE_ENTRIES * G, G, 6);	/* page 1 */
	assert_int_equal(mapfile_create(d.dirfd, &vt_fsops_posix, &d.sb, &cm), 0);

	struct mapfile_xlate x = { .boundary = 1000, .before = half, .after = same };
	assert_int_equal(mapfile_open(d.dirfd, &vt_fsops_posix, &d.sb, &cm, &x, &mf, &rep), 0);
	assert_int_equal(atomic_load(&cm.epoch[0]), 4);
	assert_int_equal(atomic_load(&cm.epoch[CM_PAGE_ENTRIES]), 3);
	assert_true(atomic_load(&cm.page_dirty[0]));	/* translated: to be stored again */
	assert_true(mapfile_last_seq(mf) >= 1000);
	/* store page 1 only, now in the new numbering */
	atomic_store(&cm.page_dirty[0], false);
	changemap_mark(&cm, (uint64_t)CM_PAGE_ENTRIES * G + G, G, 5);
	assert_int_equal(mapfile_persist(mf, &cm, &max), 0);
	assert_int_equal(max, 5);
	assert_true(mapfile_last_seq(mf) > 1000);
	mapfile_close(mf);

	/* page 0 is still old and is translated again; page 1 is not */
	assert_int_equal(mapfile_open(d.dirfd, &vt_fsops_posix, &d.sb, &cm, &x, &mf, &rep), 0);
	assert_int_equal(rep.bad_pages, 0);
	assert_int_equal(atomic_load(&cm.epoch[0]), 4);
	assert_int_equal(atomic_load(&cm.epoch[CM_PAGE_ENTRIES]), 3);
	assert_int_equal(atomic_load(&cm.epoch[CM_PAGE_ENTRIES + 1]), 5);
	mapfile_close(mf);
	changemap_free(&cm);
	listdir_close(&d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_plan_keeps_every_answer),
		cmocka_unit_test(test_plan_rolling_window),
		cmocka_unit_test(test_translate_and_clamp),
		cmocka_unit_test(test_load_tables),
		cmocka_unit_test(test_sequence),
		cmocka_unit_test(test_record_round_trip),
		cmocka_unit_test(test_map_pages_dated_by_sequence),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
