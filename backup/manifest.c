/*
 * manifest: text manifests with a SHA-256 end line (see manifest.h).
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "manifest.h"

int bk_manifest_alloc(struct bk_manifest *m, uint64_t size, uint32_t chunk_size)
{
	m->size = size;
	m->chunk_size = chunk_size;
	m->nchunks = (size + chunk_size - 1) / chunk_size;
	m->chunks = calloc(m->nchunks ? m->nchunks : 1, sizeof(*m->chunks));
	if (!m->chunks)
		return -ENOMEM;
	for (uint64_t i = 0; i < m->nchunks; i++)
		m->chunks[i].hole = true;
	return 0;
}

void bk_manifest_free(struct bk_manifest *m)
{
	free(m->chunks);
	m->chunks = NULL;
}

uint64_t bk_manifest_data_bytes(const struct bk_manifest *m)
{
	uint64_t n = 0;

	for (uint64_t i = 0; i < m->nchunks; i++)
		if (!m->chunks[i].hole) {
			uint64_t off = i * m->chunk_size;
			n += m->size - off < m->chunk_size ? m->size - off : m->chunk_size;
		}
	return n;
}

static bool id_valid(const char *s)
{
	size_t n = strlen(s);

	/* YYYYMMDDTHHMMSSZ[-N] */
	if (n < 16 || n >= BK_ID_MAX || s[8] != 'T' || s[15] != 'Z')
		return false;
	for (size_t i = 0; i < 15; i++)
		if (i != 8 && (s[i] < '0' || s[i] > '9'))
			return false;
	if (n == 16)
		return true;
	if (s[16] != '-' || n == 17)
		return false;
	for (size_t i = 17; i < n; i++)
		if (s[i] < '0' || s[i] > '9')
			return false;
	return true;
}

int bk_manifest_new_id(struct bk_repo *r, uint64_t created, struct bk_manifest *m)
{
	time_t t = (time_t)created;
	struct tm tm;
	char base[20];
	struct stat st;

	gmtime_r(&t, &tm);
	strftime(base, sizeof(base), "%Y%m%dT%H%M%SZ", &tm);
	for (unsigned n = 1; n < 100000; n++) {
		if (n == 1)
			snprintf(m->id, sizeof(m->id), "%s", base);
		else
			snprintf(m->id, sizeof(m->id), "%s-%u", base, n);
		if (fstatat(r->backupsfd, m->id, &st, 0) && errno == ENOENT)
			return 0;
	}
	return -EEXIST;
}

/* Text fields are one line of printable characters; "-" stands for empty. */
static const char *field(const char *s)
{
	return s[0] ? s : "-";
}

int bk_manifest_write(struct bk_repo *r, const struct bk_manifest *m)
{
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);
	int err = 0;

	if (!f)
		return -ENOMEM;
	fprintf(f, "voltrack-backup 1\nid %s\ncreated %llu\ntype %s\nparent %s\nreason %s\n"
		   "source %s\nvolume-uuid %s\ngeneration %s\ncheckpoint %s\nsize %llu\n"
		   "chunk-size %u\nbytes-read %llu\nchunks %llu\n",
		m->id, (unsigned long long)m->created, m->full ? "full" : "incremental",
		field(m->parent), field(m->reason), field(m->source), field(m->volume_uuid),
		field(m->generation), field(m->checkpoint), (unsigned long long)m->size,
		m->chunk_size, (unsigned long long)m->bytes_read,
		(unsigned long long)m->nchunks);
	for (uint64_t i = 0; i < m->nchunks;) {
		if (m->chunks[i].hole) {
			uint64_t j = i;
			while (j < m->nchunks && m->chunks[j].hole)
				j++;
			fprintf(f, "z %llu\n", (unsigned long long)(j - i));
			i = j;
		} else {
			char hex[2 * BK_DIGEST_LEN + 1];
			bk_hex(m->chunks[i].digest, BK_DIGEST_LEN, hex);
			fprintf(f, "c %s\n", hex);
			i++;
		}
	}
	if (fclose(f))
		err = -ENOMEM;
	uint8_t sum[BK_DIGEST_LEN];
	char hex[2 * BK_DIGEST_LEN + 1];
	if (!err)
		err = bk_sha256(text, len, sum);
	char *full = NULL;
	int n = -1;
	if (!err) {
		bk_hex(sum, BK_DIGEST_LEN, hex);
		n = asprintf(&full, "%send %s\n", text, hex);
		if (n < 0)
			err = -ENOMEM;
	}
	free(text);
	if (!err)
		err = bk_repo_write_atomic(r, r->backupsfd, m->id, full, (size_t)n);
	free(full);
	return err;
}

static int bad(char *why, const char *fmt, const char *arg)
{
	if (why)
		snprintf(why, BK_FIELD_MAX, fmt, arg);  /* may cut a long value short */
	return -EBADMSG;
}

/* Copy the value of line "key VALUE" into out; "-" reads as "". */
static int take(char **p, const char *key, char *out, size_t cap, char *why)
{
	size_t klen = strlen(key);
	char *nl = strchr(*p, '\n');

	if (!nl || strncmp(*p, key, klen) || (*p)[klen] != ' ')
		return bad(why, "manifest lacks its '%s' line", key);
	char *v = *p + klen + 1;
	size_t vlen = (size_t)(nl - v);
	if (vlen >= cap)
		return bad(why, "manifest field '%s' too long", key);
	if (vlen == 1 && v[0] == '-')
		vlen = 0;
	memcpy(out, v, vlen);
	out[vlen] = 0;
	*p = nl + 1;
	return 0;
}

static int take_u64(char **p, const char *key, uint64_t *out, char *why)
{
	char v[32], *end;

	if (take(p, key, v, sizeof(v), why))
		return -EBADMSG;
	errno = 0;
	*out = strtoull(v, &end, 10);
	if (!v[0] || *end || errno || v[0] == '-')
		return bad(why, "manifest field '%s' is not a number", key);
	return 0;
}

static int parse(char *text, size_t len, struct bk_manifest *m, char *why)
{
	char *p = text, v[BK_FIELD_MAX];
	uint64_t cs;

	if (take(&p, "voltrack-backup", v, sizeof(v), why))
		return -EBADMSG;
	if (strcmp(v, "1"))
		return bad(why, "manifest version %.20s is not supported", v);
	if (take(&p, "id", m->id, sizeof(m->id), why) || take_u64(&p, "created", &m->created, why) ||
	    take(&p, "type", v, sizeof(v), why))
		return -EBADMSG;
	if (strcmp(v, "full") && strcmp(v, "incremental"))
		return bad(why, "manifest type '%.40s' unknown", v);
	m->full = !strcmp(v, "full");
	if (take(&p, "parent", m->parent, sizeof(m->parent), why) ||
	    take(&p, "reason", m->reason, sizeof(m->reason), why) ||
	    take(&p, "source", m->source, sizeof(m->source), why) ||
	    take(&p, "volume-uuid", m->volume_uuid, sizeof(m->volume_uuid), why) ||
	    take(&p, "generation", m->generation, sizeof(m->generation), why) ||
	    take(&p, "checkpoint", m->checkpoint, sizeof(m->checkpoint), why) ||
	    take_u64(&p, "size", &m->size, why) || take_u64(&p, "chunk-size", &cs, why) ||
	    take_u64(&p, "bytes-read", &m->bytes_read, why))
		return -EBADMSG;
	if (cs < BK_MIN_CHUNK || cs > BK_MAX_CHUNK || (cs & (cs - 1)))
		return bad(why, "manifest chunk size %s is invalid", "");
	uint64_t n;
	if (take_u64(&p, "chunks", &n, why))
		return -EBADMSG;
	if (bk_manifest_alloc(m, m->size, (uint32_t)cs))
		return -ENOMEM;
	if (n != m->nchunks)
		return bad(why, "manifest chunk count does not match its size%s", "");
	uint64_t i = 0;
	while (i < n) {
		char *nl = strchr(p, '\n');
		if (!nl)
			return bad(why, "manifest ends after %s", "its chunk list began");
		*nl = 0;
		if (p[0] == 'c' && p[1] == ' ' && strlen(p) == 2 + 2 * BK_DIGEST_LEN &&
		    !bk_unhex(p + 2, m->chunks[i].digest, BK_DIGEST_LEN)) {
			m->chunks[i++].hole = false;
		} else if (p[0] == 'z' && p[1] == ' ') {
			char *end;
			uint64_t run = strtoull(p + 2, &end, 10);
			if (*end || run == 0 || run > n - i)
				return bad(why, "bad hole line in manifest: %s", p);
			i += run; /* already holes */
		} else {
			return bad(why, "bad chunk line in manifest: %.60s", p);
		}
		p = nl + 1;
	}
	if (strncmp(p, "end ", 4) || (size_t)(p - text) + 4 + 2 * BK_DIGEST_LEN + 1 != len ||
	    p[4 + 2 * BK_DIGEST_LEN] != '\n')
		return bad(why, "manifest lacks its end line (truncated?)%s", "");
	/* The end line's checksum was checked by bk_manifest_read(). */
	return 0;
}

int bk_manifest_read(struct bk_repo *r, const char *id, struct bk_manifest *m, char *why)
{
	char *text;
	size_t len;
	int err;

	memset(m, 0, sizeof(*m));
	if (!id_valid(id))
		return -ENOENT;
	err = bk_read_file(r->backupsfd, id, &text, &len);
	if (err)
		return err;
	/* Checksum first, over the bytes as stored. */
	char *end = len > 2 * BK_DIGEST_LEN + 5 ? text + len - (2 * BK_DIGEST_LEN + 5) : NULL;
	uint8_t want[BK_DIGEST_LEN], got[BK_DIGEST_LEN];
	if (!end || (end != text && end[-1] != '\n') || strncmp(end, "end ", 4) ||
	    bk_unhex(end + 4, want, BK_DIGEST_LEN) || text[len - 1] != '\n') {
		free(text);
		return bad(why, "manifest lacks its end line (truncated?)%s", "");
	}
	err = bk_sha256(text, (size_t)(end - text), got);
	if (!err && memcmp(want, got, BK_DIGEST_LEN))
		err = bad(why, "manifest checksum mismatch (damaged)%s", "");
	if (!err)
		err = parse(text, len, m, why);
	if (!err && strcmp(m->id, id))
		err = bad(why, "manifest names itself '%s', not its file name", m->id);
	free(text);
	if (err)
		bk_manifest_free(m);
	return err;
}

/* By second, then by the -N suffix (none counts as 1). */
static int cmp_ids(const void *a, const void *b)
{
	const char *x = *(char *const *)a, *y = *(char *const *)b;
	int c = strncmp(x, y, 16);

	if (c)
		return c;
	unsigned long nx = x[16] ? strtoul(x + 17, NULL, 10) : 1,
		      ny = y[16] ? strtoul(y + 17, NULL, 10) : 1;
	return nx < ny ? -1 : nx > ny;
}

void bk_manifest_list_free(char **ids, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(ids[i]);
	free(ids);
}

int bk_manifest_list(struct bk_repo *r, char ***ids, size_t *n)
{
	DIR *d = fdopendir(dup(r->backupsfd));
	struct dirent *e;
	char **v = NULL;
	size_t cnt = 0, cap = 0;

	if (!d)
		return -errno;
	rewinddir(d);
	while ((e = readdir(d))) {
		if (!id_valid(e->d_name))
			continue;
		if (cnt == cap) {
			cap = cap ? 2 * cap : 16;
			char **nv = realloc(v, cap * sizeof(*v));
			if (!nv)
				goto nomem;
			v = nv;
		}
		if (!(v[cnt] = strdup(e->d_name)))
			goto nomem;
		cnt++;
	}
	closedir(d);
	qsort(v, cnt, sizeof(*v), cmp_ids);
	*ids = v;
	*n = cnt;
	return 0;
nomem:
	closedir(d);
	bk_manifest_list_free(v, cnt);
	return -ENOMEM;
}

int bk_manifest_resolve(struct bk_repo *r, const char *name, char out[BK_ID_MAX])
{
	char **ids;
	size_t n;
	int err;

	if (strcmp(name, "latest")) {
		struct stat st;
		if (!id_valid(name) || fstatat(r->backupsfd, name, &st, 0))
			return -ENOENT;
		snprintf(out, BK_ID_MAX, "%s", name);
		return 0;
	}
	err = bk_manifest_list(r, &ids, &n);
	if (err)
		return err;
	if (!n)
		err = -ENOENT;
	else
		snprintf(out, BK_ID_MAX, "%s", ids[n - 1]);
	bk_manifest_list_free(ids, n);
	return err;
}
