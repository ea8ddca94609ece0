/*
 * The change map's queries against a plain array model, and the
 * checkpoint list's encoding against damage.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "changemap.h"
#include "checkpoints.h"

#define G 4096u

static void test_mark_rounds_out_to_blocks(void **state)
{
	struct changemap cm;

	assert_int_equal(changemap_init(&cm, 100 * G + 123, G), 0);
	assert_int_equal(cm.nblocks, 101);
	changemap_mark(&cm, 5 * G + 1, 1, 3);		/* inside block 5 */
	changemap_mark(&cm, 9 * G - 1, 2, 3);		/* straddles 8 and 9 */
	changemap_mark(&cm, 100 * G + 100, 1000, 3);	/* partial last block, past the end */
	for (uint64_t b = 0; b < cm.nblocks; b++) {
		bool want = b == 5 || b == 8 || b == 9 || b == 100;
		assert_int_equal(atomic_load(&cm.epoch[b]) == 3, want);
	}
	/* the partial last block counts only its real bytes */
	uint64_t since[256];
	changemap_changed_since(&cm, since);
	assert_int_equal(since[2], 4 * G - (G - 123));
	assert_int_equal(since[3], 0);
	assert_int_equal(since[0], since[2]);
	changemap_free(&cm);
}

static void test_runs_match_a_model(void **state)
{
	struct changemap cm;
	uint8_t model[1000];
	unsigned seed = 7;

	assert_int_equal(changemap_init(&cm, 1000 * G, G), 0);
	memset(model, 0, sizeof(model));
	for (int i = 0; i < 300; i++) {
		uint64_t b = (uint64_t)rand_r(&seed) % 1000;
		uint64_t n = 1 + (uint64_t)rand_r(&seed) % 5;
		uint8_t e = (uint8_t)(1 + rand_r(&seed) % 6);
		changemap_mark(&cm, b * G, n * G, e);
		/* marks only ever raise an epoch */
		for (uint64_t k = b; k < b + n && k < 1000; k++)
			if (model[k] < e)
				model[k] = e;
	}
	for (uint8_t since = 0; since < 7; since++) {
		uint64_t off = 0;
		while (off < 1000 * G) {
			bool changed;
			uint64_t run = changemap_run(&cm, off, 1000 * G - off, since, &changed);
			assert_true(run > 0);
			for (uint64_t b = off / G; b < (off + run) / G; b++)
				assert_int_equal(model[b] > since, changed);
			/* a run ends where the answer flips */
			if (off + run < 1000 * G)
				assert_int_not_equal(model[(off + run) / G] > since, changed);
			off += run;
		}
	}
	changemap_free(&cm);
}

/* A writer holding the epoch from before a checkpoint marks late: the
 * block must keep the newer epoch another writer gave it. */
static void test_late_mark_never_lowers(void **state)
{
	struct changemap cm;
	bool changed;

	assert_int_equal(changemap_init(&cm, 8 * G, G), 0);
	changemap_mark(&cm, 2 * G, 1, 4);	/* after checkpoint 3 */
	changemap_mark(&cm, 2 * G, 1, 3);	/* the late writer */
	assert_int_equal(atomic_load(&cm.epoch[2]), 4);
	changemap_run(&cm, 2 * G, G, 3, &changed);
	assert_true(changed);
	changemap_free(&cm);
}

static void test_raise_and_dirty_pages(void **state)
{
	struct changemap cm;

	assert_int_equal(changemap_init(&cm, (uint64_t)3 * CM_PAGE_ENTRIES * G, G), 0);
	assert_int_equal(cm.npages, 3);
	changemap_mark(&cm, 0, G, 9);
	changemap_raise_page(&cm, 1, 5);
	assert_true(atomic_load(&cm.page_dirty[0]));
	assert_true(atomic_load(&cm.page_dirty[1]));
	assert_false(atomic_load(&cm.page_dirty[2]));
	/* raising never lowers */
	changemap_raise_all(&cm, 4);
	assert_int_equal(atomic_load(&cm.epoch[0]), 9);
	assert_int_equal(atomic_load(&cm.epoch[CM_PAGE_ENTRIES]), 5);
	assert_int_equal(atomic_load(&cm.epoch[2 * CM_PAGE_ENTRIES]), 4);
	changemap_free(&cm);
}

static void test_checkpoint_names(void **state)
{
	char long_name[CKPT_NAME_MAX + 2];

	assert_true(checkpoint_name_valid("monday"));
	assert_true(checkpoint_name_valid("backup-2026.11.24T10:00+0100@host_1"));
	assert_false(checkpoint_name_valid(""));
	assert_false(checkpoint_name_valid("a b"));
	assert_false(checkpoint_name_valid("a/b"));
	assert_false(checkpoint_name_valid("naïve"));
	memset(long_name, 'x', sizeof(long_name) - 1);
	long_name[CKPT_NAME_MAX + 1] = 0;
	assert_false(checkpoint_name_valid(long_name));
	long_name[CKPT_NAME_MAX] = 0;
	assert_true(checkpoint_name_valid(long_name));
}

static void test_checkpoint_list_round_trip_and_damage(void **state)
{
	char dir[] = "/tmp/vt-ckpt-XXXXXX";
	struct superblock sb = { .generation.bytes = { 1, 2, 3, 4, 5, 6, 7, 8 } };
	struct checkpoint_list *a = calloc(1, sizeof(*a)), *b = calloc(1, sizeof(*b));
	struct checkpoint_list *c = calloc(1, sizeof(*c));
	bool damaged, touched;

	assert_non_null(mkdtemp(dir));
	int dirfd = open(dir, O_RDONLY | O_DIRECTORY);
	a->open_epoch = 1;
	assert_int_equal(checkpoints_create(dirfd, &vt_fsops_posix, &sb, a), 0);
	/* 254 long names need more than one metadata block */
	*b = *a;
	for (uint32_t i = 0; i < CKPT_MAX; i++) {
		struct checkpoint *k = &b->items[b->n++];
		memset(k->name, 'a' + i % 26, CKPT_NAME_MAX);
		snprintf(k->name + CKPT_NAME_MAX - 4, 5, "%04u", i);
		k->epoch = (uint8_t)(i + 1);
		k->created = 1000 + i;
	}
	b->open_epoch = CKPT_MAX + 1;
	assert_int_equal(checkpoints_store(dirfd, &vt_fsops_posix, &sb, a, b, &touched), 0);
	assert_true(touched);
	assert_int_equal(checkpoints_load(dirfd, &vt_fsops_posix, &sb, c, &damaged), 0);
	assert_false(damaged);
	assert_int_equal(c->n, CKPT_MAX);
	assert_int_equal(c->open_epoch, CKPT_MAX + 1);
	assert_string_equal(c->items[253].name, b->items[253].name);
	assert_int_equal(c->items[100].created, 1100);

	/* damage the newest slot: the older one (empty list) is used, and
	 * the damage is reported */
	int fd = openat(dirfd, CHECKPOINTS_NAME, O_RDWR);
	uint64_t off = (uint64_t)c->slot * 64 * 4096 + 5000;
	char x = 0x55;
	assert_int_equal(pwrite(fd, &x, 1, (off_t)off), 1);
	assert_int_equal(checkpoints_load(dirfd, &vt_fsops_posix, &sb, c, &damaged), 0);
	assert_true(damaged);
	assert_int_equal(c->n, 0);
	/* damage the survivor too: unreadable */
	assert_int_equal(pwrite(fd, &x, 1, (off_t)((uint64_t)c->slot * 64 * 4096 + 100)), 1);
	assert_int_equal(checkpoints_load(dirfd, &vt_fsops_posix, &sb, c, &damaged), -EBADMSG);
	/* another generation's file is not ours */
	close(fd);
	sb.generation.bytes[0] ^= 1;
	assert_int_equal(checkpoints_create(dirfd, &vt_fsops_posix, &sb, a), 0);
	sb.generation.bytes[0] ^= 1;
	assert_int_equal(checkpoints_load(dirfd, &vt_fsops_posix, &sb, c, &damaged), -EBADMSG);
	close(dirfd);
	free(a);
	free(b);
	free(c);
	char cmd[64];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	assert_int_equal(system(cmd), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_mark_rounds_out_to_blocks),
		cmocka_unit_test(test_runs_match_a_model),
		cmocka_unit_test(test_late_mark_never_lowers),
		cmocka_unit_test(test_raise_and_dirty_pages),
		cmocka_unit_test(test_checkpoint_names),
		cmocka_unit_test(test_checkpoint_list_round_trip_and_damage),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
