/*
 * The backup repository: chunks stored and read back whole, damage of
 * every kind detected, manifests committed atomically and refused when
 * truncated or altered, the writer lock, encryption with the right and
 * the wrong key.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <sys/resource.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "chunk.h"
#include "manifest.h"
#include "repo.h"

struct fixture {
	char dir[64];
	char repo[96];
	char key[96];
};

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));

	snprintf(f->dir, sizeof(f->dir), "/tmp/test-repo-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	snprintf(f->repo, sizeof(f->repo), "%s/repo", f->dir);
	snprintf(f->key, sizeof(f->key), "%s/key", f->dir);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	char cmd[160];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
	assert_int_equal(system(cmd), 0);
	free(f);
	return 0;
}

static struct bk_repo *create(struct fixture *f, const char *key, bool *created)
{
	struct bk_repo *r = NULL;
	struct bk_repo_params p = { .chunk_size = 64 << 10, .key_file = key };

	assert_int_equal(bk_repo_create(f->repo, &p, &r, created), 0);
	return r;
}

static void fill(uint8_t *buf, size_t len, unsigned seed)
{
	for (size_t i = 0; i < len; i++)
		buf[i] = (uint8_t)((i * 7 + seed) ^ (i >> 9));
}

static void flip_byte(struct fixture *f, const uint8_t digest[32], off_t at)
{
	char path[68], full[256];
	uint8_t b;

	bk_chunk_path(digest, path);
	snprintf(full, sizeof(full), "%s/chunks/%s", f->repo, path);
	int fd = open(full, O_RDWR);
	assert_true(fd >= 0);
	struct stat st;
	assert_int_equal(fstat(fd, &st), 0);
	if (at < 0)
		at += st.st_size;
	assert_int_equal(pread(fd, &b, 1, at), 1);
	b ^= 0x10;
	assert_int_equal(pwrite(fd, &b, 1, at), 1);
	close(fd);
}

static void roundtrip(struct fixture *f, struct bk_repo *r)
{
	size_t len = 64 << 10, got;
	uint8_t *data = malloc(len), *back = malloc(len), d[32];
	struct bk_chunk_buf w = { 0 };
	uint64_t stored;
	const char *why;

	fill(data, len, 3);
	assert_int_equal(bk_digest(&r->keys, data, len, d), 0);
	assert_false(bk_chunk_exists(r, d));
	assert_int_equal(bk_chunk_put(r, d, data, len, &w, &stored), 0);
	assert_true(stored > 0);
	assert_true(bk_chunk_exists(r, d));
	/* Stored once: a second put writes nothing. */
	assert_int_equal(bk_chunk_put(r, d, data, len, &w, &stored), 0);
	assert_int_equal(stored, 0);
	assert_int_equal(bk_chunk_get(r, d, back, len, &got, &w, &why), 0);
	assert_int_equal(got, len);
	assert_memory_equal(data, back, len);

	/* A flipped bit anywhere in the payload is found. */
	flip_byte(f, d, -5);
	assert_int_equal(bk_chunk_get(r, d, back, len, &got, &w, &why), -EBADMSG);
	flip_byte(f, d, -5);
	assert_int_equal(bk_chunk_get(r, d, back, len, &got, &w, &why), 0);
	/* And in the header. */
	flip_byte(f, d, 8);
	assert_int_equal(bk_chunk_get(r, d, back, len, &got, &w, &why), -EBADMSG);
	flip_byte(f, d, 8);

	/* Incompressible data is stored as it is, and still checked. */
	for (size_t i = 0; i < len; i++)
		data[i] = (uint8_t)(rand() >> 7);
	assert_int_equal(bk_digest(&r->keys, data, len, d), 0);
	assert_int_equal(bk_chunk_put(r, d, data, len, &w, &stored), 0);
	assert_int_equal(bk_chunk_get(r, d, back, len, &got, &w, &why), 0);
	assert_memory_equal(data, back, len);
	flip_byte(f, d, 100);
	assert_int_equal(bk_chunk_get(r, d, back, len, &got, &w, &why), -EBADMSG);

	/* A chunk named by a digest that is not its contents. */
	uint8_t other[32];
	memset(other, 0xab, sizeof(other));
	fill(data, len, 9);
	assert_int_equal(bk_chunk_put(r, other, data, len, &w, &stored), 0);
	assert_int_equal(bk_chunk_get(r, other, back, len, &got, &w, &why), -EBADMSG);
	assert_string_equal(why, "contents do not match the chunk's digest");
	uint8_t none[32] = { 1 };
	assert_int_equal(bk_chunk_get(r, none, back, len, &got, &w, &why), -ENOENT);
	bk_chunk_buf_free(&w);
	free(data);
	free(back);
}

/* A short file left under a chunk's name (torn by a power cut) is not
 * taken for the chunk: the next put replaces it, and no temporary file
 * is left behind. */
static void test_torn_leftover(void **state)
{
	struct fixture *f = *state;
	bool created;
	struct bk_repo *r = create(f, NULL, &created);
	size_t len = 64 << 10, got;
	uint8_t *data = malloc(len), *back = malloc(len), d[32];
	struct bk_chunk_buf w = { 0 };
	char path[68], full[256];
	uint64_t stored;

	fill(data, len, 5);
	assert_int_equal(bk_digest(&r->keys, data, len, d), 0);
	bk_chunk_path(d, path);
	snprintf(full, sizeof(full), "%s/chunks/%s", f->repo, path);
	int fd = open(full, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, "VTCK", 4), 4);
	close(fd);
	assert_false(bk_chunk_exists(r, d));
	assert_int_equal(bk_chunk_put(r, d, data, len, &w, &stored), 0);
	assert_true(stored > 0);
	bk_chunk_buf_free(&w);
	assert_int_equal(bk_chunk_get(r, d, back, len, &got, &w, NULL), 0);
	assert_memory_equal(data, back, len);
	snprintf(full, sizeof(full), "%s/tmp", f->repo);
	DIR *dir = opendir(full);
	assert_non_null(dir);
	struct dirent *e;
	while ((e = readdir(dir)))
		assert_true(e->d_name[0] == '.');
	closedir(dir);
	bk_chunk_buf_free(&w);
	bk_repo_close(r);
	free(data);
	free(back);
}

/* The files a worker keeps open for their writeback give their
 * descriptors back when the process runs out. */
static void test_few_descriptors(void **state)
{
	struct fixture *f = *state;
	bool created;
	struct bk_repo *r = create(f, NULL, &created);
	size_t len = 4096;
	uint8_t data[4096], d[32];
	struct bk_chunk_buf w = { 0 };
	struct rlimit old, few;
	uint64_t stored;

	assert_int_equal(getrlimit(RLIMIT_NOFILE, &old), 0);
	few = old;
	few.rlim_cur = 24;
	assert_int_equal(setrlimit(RLIMIT_NOFILE, &few), 0);
	/* More chunks than the limit, and than the files kept under way. */
	for (unsigned i = 0; i < BK_WRITEBACK_FILES + 16; i++) {
		fill(data, len, i);
		assert_int_equal(bk_digest(&r->keys, data, len, d), 0);
		assert_int_equal(bk_chunk_put(r, d, data, len, &w, &stored), 0);
		assert_true(stored > 0);
		assert_true(w.wb_n < few.rlim_cur);
	}
	bk_chunk_buf_free(&w);
	assert_int_equal(setrlimit(RLIMIT_NOFILE, &old), 0);
	bk_repo_close(r);
}

static void test_chunks(void **state)
{
	struct fixture *f = *state;
	bool created;
	struct bk_repo *r = create(f, NULL, &created);

	assert_true(created);
	assert_int_equal(r->chunk_size, 64 << 10);
	assert_false(r->keys.encrypted);
	roundtrip(f, r);
	bk_repo_close(r);
	/* Opening again keeps the settings and the id. */
	r = create(f, NULL, &created);
	assert_false(created);
	assert_int_equal(r->chunk_size, 64 << 10);
	bk_repo_close(r);
}

static void test_encrypted(void **state)
{
	struct fixture *f = *state;
	FILE *k = fopen(f->key, "w");
	bool created;

	fputs("00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n", k);
	fclose(k);
	struct bk_repo *r = create(f, f->key, &created);
	assert_true(r->keys.encrypted);
	roundtrip(f, r);
	/* The digest is keyed: not plain SHA-256. */
	uint8_t a[32], b[32], z[16] = { 0 };
	bk_digest(&r->keys, z, sizeof(z), a);
	bk_sha256(z, sizeof(z), b);
	assert_memory_not_equal(a, b, 32);
	bk_repo_close(r);

	struct bk_repo *r2 = NULL;
	assert_int_equal(bk_repo_open(f->repo, NULL, &r2), -ENOKEY);
	k = fopen(f->key, "w");
	fputs("ff112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n", k);
	fclose(k);
	assert_int_equal(bk_repo_open(f->repo, f->key, &r2), -EKEYREJECTED);
}

static void test_manifest(void **state)
{
	struct fixture *f = *state;
	bool created;
	struct bk_repo *r = create(f, NULL, &created);
	struct bk_manifest m = { 0 }, back;
	char why[BK_FIELD_MAX];

	assert_int_equal(bk_manifest_alloc(&m, (10u << 16) + 100, 64 << 10), 0);
	assert_int_equal(m.nchunks, 11);
	m.created = 1764648900;
	m.full = false;
	strcpy(m.parent, "20261202T040000Z");
	strcpy(m.source, "voltrack:abc");
	strcpy(m.checkpoint, "vtbackup-x");
	m.bytes_read = 12345;
	for (int i = 0; i < 11; i++)
		if (i != 3 && i != 4 && i != 5 && i != 10) {
			memset(m.chunks[i].digest, i + 1, 32);
			m.chunks[i].hole = false;
		}
	assert_int_equal(bk_manifest_new_id(r, m.created, &m), 0);
	assert_string_equal(m.id, "20251202T041500Z");
	assert_int_equal(bk_manifest_write(r, &m), 0);
	int rr = bk_manifest_read(r, m.id, &back, why);
	if (rr)
		print_error("%s\n", why);
	assert_int_equal(rr, 0);
	assert_string_equal(back.parent, m.parent);
	assert_string_equal(back.reason, "");
	assert_false(back.full);
	assert_int_equal(back.size, m.size);
	assert_int_equal(back.bytes_read, 12345);
	assert_int_equal(back.nchunks, 11);
	for (int i = 0; i < 11; i++) {
		assert_int_equal(back.chunks[i].hole, m.chunks[i].hole);
		if (!m.chunks[i].hole)
			assert_memory_equal(back.chunks[i].digest, m.chunks[i].digest, 32);
	}
	assert_int_equal(bk_manifest_data_bytes(&back), 7u << 16);
	bk_manifest_free(&back);

	/* The same second again gets a suffix; list sorts -10 after -2. */
	char first[BK_ID_MAX];
	strcpy(first, m.id);
	for (int i = 2; i <= 11; i++) {
		assert_int_equal(bk_manifest_new_id(r, m.created, &m), 0);
		assert_int_equal(bk_manifest_write(r, &m), 0);
	}
	assert_string_equal(m.id, "20251202T041500Z-11");
	char **ids, latest[BK_ID_MAX];
	size_t n;
	assert_int_equal(bk_manifest_list(r, &ids, &n), 0);
	assert_int_equal(n, 11);
	assert_string_equal(ids[0], first);
	assert_string_equal(ids[1], "20251202T041500Z-2");
	assert_string_equal(ids[10], "20251202T041500Z-11");
	bk_manifest_list_free(ids, n);
	assert_int_equal(bk_manifest_resolve(r, "latest", latest), 0);
	assert_string_equal(latest, "20251202T041500Z-11");
	assert_int_equal(bk_manifest_resolve(r, "20991202T040500Z", latest), -ENOENT);

	/* Truncated anywhere, or one byte changed: refused whole. */
	char path[256];
	snprintf(path, sizeof(path), "%s/backups/%s", f->repo, first);
	struct stat st;
	assert_int_equal(stat(path, &st), 0);
	char *orig = malloc((size_t)st.st_size);
	FILE *fp = fopen(path, "r");
	assert_int_equal(fread(orig, 1, (size_t)st.st_size, fp), (size_t)st.st_size);
	fclose(fp);
	for (off_t cut = 0; cut < st.st_size; cut += 37) {
		assert_int_equal(truncate(path, cut), 0);
		assert_int_equal(bk_manifest_read(r, first, &back, why), -EBADMSG);
	}
	fp = fopen(path, "w");
	orig[40] ^= 1;
	fwrite(orig, 1, (size_t)st.st_size, fp);
	fclose(fp);
	assert_int_equal(bk_manifest_read(r, first, &back, why), -EBADMSG);
	assert_non_null(strstr(why, "checksum"));
	free(orig);
	bk_manifest_free(&m);
	bk_repo_close(r);
	(void)created;
}

static void test_lock(void **state)
{
	struct fixture *f = *state;
	bool created;
	struct bk_repo *a = create(f, NULL, &created), *b = create(f, NULL, &created);
	char tmp[64];

	assert_int_equal(bk_repo_lock(a, false), 0);
	int fd = bk_repo_tmpfile(a, tmp);
	assert_true(fd >= 0);
	close(fd);
	assert_int_equal(bk_repo_lock(b, false), -EBUSY);
	bk_repo_close(a);
	/* The next writer clears what the last one left in tmp/. */
	assert_int_equal(bk_repo_lock(b, false), 0);
	char path[256];
	struct stat st;
	snprintf(path, sizeof(path), "%s/tmp/%s", f->repo, tmp);
	assert_int_equal(stat(path, &st), -1);
	bk_repo_close(b);
}

/* A writer that died before its sync, on another boot: every chunk
 * named since its mark is read before any is trusted, the torn ones
 * removed; on the same boot nothing is suspect. */
static void test_pending(void **state)
{
	struct fixture *f = *state;
	bool created;
	struct bk_repo *r = create(f, NULL, &created);
	char boot[128], mark[160], path[256];
	size_t len = 64 << 10, got;
	uint8_t *data = malloc(len), good[32], bad[32];
	struct bk_chunk_buf w = { 0 };
	uint64_t stored, removed;

	snprintf(boot, sizeof(boot), "%s/boot_id", f->dir);
	FILE *fp = fopen(boot, "w");
	fputs("11111111-2222-3333-4444-555555555555\n", fp);
	fclose(fp);
	r->boot_id_path = boot;
	assert_int_equal(bk_repo_lock(r, false), 0);
	assert_false(r->suspect);
	assert_int_equal(bk_repo_mark_pending(r), 0);
	fill(data, len, 1);
	bk_digest(&r->keys, data, len, good);
	assert_int_equal(bk_chunk_put(r, good, data, len, &w, &stored), 0);
	fill(data, len, 2);
	bk_digest(&r->keys, data, len, bad);
	assert_int_equal(bk_chunk_put(r, bad, data, len, &w, &stored), 0);
	flip_byte(f, bad, -3); /* as a power cut may leave it */
	bk_repo_close(r);

	/* The same boot: only the process died. */
	r = create(f, NULL, &created);
	r->boot_id_path = boot;
	assert_int_equal(bk_repo_lock(r, false), 0);
	assert_false(r->suspect);
	assert_true(r->pending_since > 0);
	bk_repo_close(r);

	fp = fopen(boot, "w");
	fputs("99999999-2222-3333-4444-555555555555\n", fp);
	fclose(fp);
	r = create(f, NULL, &created);
	r->boot_id_path = boot;
	assert_int_equal(bk_repo_lock(r, false), 0);
	assert_true(r->suspect);
	assert_int_equal(bk_chunk_recheck(r, &removed), 0);
	assert_int_equal(removed, 1);
	assert_false(bk_chunk_exists(r, bad));
	assert_int_equal(bk_chunk_get(r, good, data, len, &got, &w, NULL), 0);
	snprintf(mark, sizeof(mark), "%s/pending", f->repo);
	assert_int_equal(access(mark, F_OK), -1);
	(void)path;
	bk_chunk_buf_free(&w);
	free(data);
	bk_repo_close(r);
}

static void test_config_damage(void **state)
{
	struct fixture *f = *state;
	bool created;
	struct bk_repo *r = create(f, NULL, &created);
	char path[256];

	bk_repo_close(r);
	snprintf(path, sizeof(path), "%s/config", f->repo);
	FILE *fp = fopen(path, "w");
	fputs("voltrack-backup-repository 1\nid 0011223344556677\nchunk-size 1000\n", fp);
	fclose(fp);
	assert_int_equal(bk_repo_open(f->repo, NULL, &r), -EBADMSG);
	char other[128];
	snprintf(other, sizeof(other), "%s/none", f->dir);
	assert_int_equal(bk_repo_open(other, NULL, &r), -ENOENT);
}

static void test_zero(void **state)
{
	uint8_t b[4096] = { 0 };

	assert_true(bk_is_zero(b, sizeof(b)));
	assert_true(bk_is_zero(b, 0));
	b[4095] = 1;
	assert_false(bk_is_zero(b, sizeof(b)));
	b[4095] = 0;
	b[0] = 1;
	assert_false(bk_is_zero(b, sizeof(b)));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_chunks, setup, teardown),
		cmocka_unit_test_setup_teardown(test_torn_leftover, setup, teardown),
		cmocka_unit_test_setup_teardown(test_few_descriptors, setup, teardown),
		cmocka_unit_test_setup_teardown(test_encrypted, setup, teardown),
		cmocka_unit_test_setup_teardown(test_manifest, setup, teardown),
		cmocka_unit_test_setup_teardown(test_lock, setup, teardown),
		cmocka_unit_test_setup_teardown(test_pending, setup, teardown),
		cmocka_unit_test_setup_teardown(test_config_damage, setup, teardown),
		cmocka_unit_test(test_zero),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
