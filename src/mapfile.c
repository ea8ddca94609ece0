#include "mapfile.h"

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pause.h"

#define HDR_MAGIC "VTRKMAPH"
#define PAGE_MAGIC "VTRKMAPP"
#define SLOT_NONE 2
#define READ_BATCH 128	/* slots per pread when loading */

struct mapfile {
	int fd;
	const struct vt_fsops *ops;
	uint32_t npages;
	uint64_t gen_tag;
	uint64_t seq;
	uint8_t *cur;		/* per page: newest valid slot, or SLOT_NONE */
	uint8_t *heal;		/* per page: a slot is damaged; rewrite both */
	uint8_t *buf;
};

/* Header payload: nblocks (8), granularity (4), npages (4), page entries (4). */
static void header_fill(uint8_t blk[MB_SIZE], const struct superblock *sb,
			const struct changemap *cm)
{
	uint64_t nb = htole64(cm->nblocks);
	uint32_t g = htole32(sb->granularity), np = htole32(cm->npages),
		 pe = htole32(CM_PAGE_ENTRIES);

	memset(blk, 0, MB_SIZE);
	memcpy(blk + MB_HEADER, &nb, 8);
	memcpy(blk + MB_HEADER + 8, &g, 4);
	memcpy(blk + MB_HEADER + 12, &np, 4);
	memcpy(blk + MB_HEADER + 16, &pe, 4);
	mb_seal(blk, HDR_MAGIC, 0, 1, mb_gen_tag(&sb->generation));
}

static uint64_t slot_offset(uint32_t page, unsigned slot)
{
	return (uint64_t)MB_SIZE * (1 + 2 * (uint64_t)page + slot);
}

/* Returns the largest epoch in the page. */
static uint8_t page_fill(uint8_t blk[MB_SIZE], const struct changemap *cm, uint32_t page,
			 uint64_t seq, uint64_t tag)
{
	uint64_t first = (uint64_t)page * CM_PAGE_ENTRIES;
	uint32_t n = changemap_page_blocks(cm, page);
	uint8_t max = 0;

	for (uint32_t i = 0; i < n; i++) {
		uint8_t e = atomic_load_explicit(&cm->epoch[first + i], memory_order_relaxed);
		blk[MB_HEADER + i] = e;
		max = e > max ? e : max;
	}
	memset(blk + MB_HEADER + n, 0, CM_PAGE_ENTRIES - n);
	mb_seal(blk, PAGE_MAGIC, page, seq, tag);
	return max;
}

int mapfile_create(int dirfd, const struct vt_fsops *ops, const struct superblock *sb,
		   const struct changemap *cm)
{
	uint8_t *blk = aligned_alloc(MB_SIZE, MB_SIZE);
	uint64_t tag = mb_gen_tag(&sb->generation);
	int fd, err = 0;

	if (!blk)
		return -ENOMEM;
	fd = ops->openat(ops, dirfd, MAPFILE_NAME ".tmp", O_RDWR | O_CREAT | O_TRUNC);
	if (fd < 0) {
		free(blk);
		return fd;
	}
	header_fill(blk, sb, cm);
	err = ops->pwrite(ops, fd, blk, MB_SIZE, 0);
	/* Both slots of every page hold a valid copy from the start, so an
	 * invalid slot later always means damage or a torn write. */
	for (uint32_t p = 0; !err && p < cm->npages; p++) {
		for (unsigned slot = 0; !err && slot < 2; slot++) {
			page_fill(blk, cm, p, 1 + slot, tag);
			err = ops->pwrite(ops, fd, blk, MB_SIZE, slot_offset(p, slot));
		}
	}
	err = vt_replace_file(ops, dirfd, fd, MAPFILE_NAME ".tmp", MAPFILE_NAME, err);
	free(blk);
	return err;
}

static int check_header(const struct vt_fsops *ops, int fd, const struct superblock *sb,
			uint64_t nblocks, uint32_t npages, uint8_t *blk)
{
	uint64_t seq, nb;
	uint32_t g, np, pe;
	int err = vt_read_full(ops, fd, blk, MB_SIZE, 0);

	if (err)
		return err;
	if (mb_check(blk, HDR_MAGIC, 0, mb_gen_tag(&sb->generation), &seq))
		return -EBADMSG;
	memcpy(&nb, blk + MB_HEADER, 8);
	memcpy(&g, blk + MB_HEADER + 8, 4);
	memcpy(&np, blk + MB_HEADER + 12, 4);
	memcpy(&pe, blk + MB_HEADER + 16, 4);
	if (le64toh(nb) != nblocks || le32toh(g) != sb->granularity ||
	    le32toh(np) != npages || le32toh(pe) != CM_PAGE_ENTRIES)
		return -EBADMSG;
	return 0;
}

/*
 * Walk every page, calling found(page, newest valid slot's block) or
 * lost(page).  Reads in batches: a 1 TiB volume has 4000 pages.
 */
static int scan_pages(const struct vt_fsops *ops, int fd, uint32_t npages, uint64_t tag,
		      uint64_t *max_seq,
		      void (*found)(void *arg, uint32_t page, unsigned slot, uint64_t seq,
				    const uint8_t *blk),
		      void (*damaged)(void *arg, uint32_t page), void *arg)
{
	/* No bigger than the map: most volumes have a page or two. */
	uint32_t most = npages < READ_BATCH ? (npages ? npages : 1) : READ_BATCH;
	uint8_t *batch = aligned_alloc(MB_SIZE, (size_t)MB_SIZE * 2 * most);

	if (!batch)
		return -ENOMEM;
	for (uint32_t p0 = 0; p0 < npages; p0 += READ_BATCH) {
		uint32_t n = npages - p0 < READ_BATCH ? npages - p0 : READ_BATCH;
		size_t len = (size_t)MB_SIZE * 2 * n;
		ssize_t got = ops->pread(ops, fd, batch, len, slot_offset(p0, 0));
		if (got < 0) {
			free(batch);
			return (int)got;
		}
		for (uint32_t i = 0; i < n; i++) {
			uint64_t s[2];
			const uint8_t *b[2] = { batch + (size_t)MB_SIZE * 2 * i,
						batch + (size_t)MB_SIZE * (2 * i + 1) };
			/* A slot the file does not hold in full is damage, as
			 * a short read is for every other metadata file: read
			 * as zeroes, an all-zero page could pass its check. */
			bool whole0 = (size_t)got >= (size_t)MB_SIZE * (2 * i + 1);
			bool whole1 = (size_t)got >= (size_t)MB_SIZE * (2 * i + 2);
			bool ok0 = whole0 && mb_check(b[0], PAGE_MAGIC, p0 + i, tag, &s[0]) == 0;
			bool ok1 = whole1 && mb_check(b[1], PAGE_MAGIC, p0 + i, tag, &s[1]) == 0;
			if (ok0 || ok1) {
				unsigned slot = ok0 && (!ok1 || s[0] > s[1]) ? 0 : 1;
				if (s[slot] > *max_seq)
					*max_seq = s[slot];
				found(arg, p0 + i, slot, s[slot], b[slot]);
			}
			/* One bad slot may be a write torn by a crash, or rot
			 * of the newest copy: the other slot could then be
			 * stale, so the page is doubted either way. */
			if (!ok0 || !ok1)
				damaged(arg, p0 + i);
		}
	}
	free(batch);
	return 0;
}

struct load_ctx {
	struct mapfile *mf;
	struct changemap *cm;
	const struct mapfile_xlate *x;
	struct mapfile_report *rep;
};

static void load_found(void *arg, uint32_t page, unsigned slot, uint64_t seq,
		       const uint8_t *blk)
{
	struct load_ctx *c = arg;

	if (c->mf)
		c->mf->cur[page] = (uint8_t)slot;
	if (!c->cm)
		return; /* only verifying */
	const uint8_t *t = !c->x ? NULL : seq <= c->x->boundary ? c->x->before : c->x->after;
	uint64_t first = (uint64_t)page * CM_PAGE_ENTRIES;
	uint32_t n = changemap_page_blocks(c->cm, page);
	bool changed = false;
	for (uint32_t i = 0; i < n; i++) {
		uint8_t stored = blk[MB_HEADER + i], e = t ? t[stored] : stored;
		changed |= e != stored;
		atomic_store_explicit(&c->cm->epoch[first + i], e, memory_order_relaxed);
	}
	/* The disk must come to say what memory says before the numbering
	 * can move on again (epochs.h). */
	if (changed)
		atomic_store_explicit(&c->cm->page_dirty[page], true, memory_order_relaxed);
}

static void load_damaged(void *arg, uint32_t page)
{
	struct load_ctx *c = arg;

	if (c->mf)
		c->mf->heal[page] = 1;
	if (c->rep->bad_pages++ == 0)
		c->rep->first_bad = page;
}

int mapfile_open(int dirfd, const struct vt_fsops *ops, const struct superblock *sb,
		 struct changemap *cm, const struct mapfile_xlate *x, struct mapfile **out,
		 struct mapfile_report *rep)
{
	struct mapfile *mf = calloc(1, sizeof(*mf));
	int err;

	memset(rep, 0, sizeof(*rep));
	if (!mf)
		return -ENOMEM;
	mf->npages = cm->npages;
	mf->ops = ops;
	mf->gen_tag = mb_gen_tag(&sb->generation);
	mf->cur = malloc(cm->npages ? cm->npages : 1);
	mf->heal = calloc(cm->npages ? cm->npages : 1, 1);
	mf->buf = aligned_alloc(MB_SIZE, MB_SIZE);
	mf->fd = -1;
	if (!mf->cur || !mf->heal || !mf->buf) {
		err = -ENOMEM;
		goto fail;
	}
	mf->fd = ops->openat(ops, dirfd, MAPFILE_NAME, O_RDWR);
	if (mf->fd < 0) {
		err = mf->fd;
		goto fail;
	}
	memset(mf->cur, SLOT_NONE, cm->npages ? cm->npages : 1);
	err = check_header(ops, mf->fd, sb, cm->nblocks, cm->npages, mf->buf);
	if (err)
		goto fail;
	struct load_ctx ctx = { mf, cm, x, rep };
	err = scan_pages(ops, mf->fd, cm->npages, mf->gen_tag, &mf->seq, load_found,
			 load_damaged, &ctx);
	if (err)
		goto fail;
	/* Pages written after a renumbering must never look older than it,
	 * even when the crash lost every page written since. */
	if (x && x->boundary > mf->seq)
		mf->seq = x->boundary;
	*out = mf;
	return 0;
fail:
	mapfile_close(mf);
	return err;
}

void mapfile_mark_lost(struct mapfile *mf, struct changemap *cm, uint8_t e)
{
	for (uint32_t p = 0; p < mf->npages; p++)
		if (mf->heal[p])
			changemap_raise_page(cm, p, e);
}

int mapfile_persist(struct mapfile *mf, struct changemap *cm, uint8_t *max_epoch)
{
	uint32_t *written = NULL;
	uint32_t nwritten = 0, cap = 0;
	uint64_t seq = mf->seq;
	uint8_t max = 0;
	int err = 0;

	for (uint32_t p = 0; p < mf->npages && !err; p++) {
		/* Acquire pairs with the marker's release: the copy below
		 * sees every mark made before the flag was set. */
		if (!atomic_exchange_explicit(&cm->page_dirty[p], false, memory_order_acquire))
			continue;
		VT_PAUSE_POINT("mapfile.persist.page_taken");
		if (nwritten == cap) {
			cap = cap ? 2 * cap : 64;
			uint32_t *grown = realloc(written, cap * sizeof(*written));
			if (!grown) {
				atomic_store(&cm->page_dirty[p], true);
				err = -ENOMEM;
				break;
			}
			written = grown;
		}
		written[nwritten++] = p;
		unsigned slot = mf->cur[p] == 0 ? 1 : 0;
		seq += 2;
		uint8_t m = page_fill(mf->buf, cm, p, seq, mf->gen_tag);
		max = m > max ? m : max;
		err = mf->ops->pwrite(mf->ops, mf->fd, mf->buf, MB_SIZE, slot_offset(p, slot));
		if (!err && mf->heal[p]) {
			/* Damaged page: replace the other copy too, one older. */
			page_fill(mf->buf, cm, p, seq - 1, mf->gen_tag);
			err = mf->ops->pwrite(mf->ops, mf->fd, mf->buf, MB_SIZE,
					      slot_offset(p, slot ^ 1));
		}
	}
	if (!err && nwritten)
		err = mf->ops->fdatasync(mf->ops, mf->fd);
	for (uint32_t i = 0; i < nwritten; i++) {
		uint32_t p = written[i];
		if (err) {
			atomic_store(&cm->page_dirty[p], true); /* try again next time */
		} else {
			mf->cur[p] = mf->cur[p] == 0 ? 1 : 0;
			mf->heal[p] = 0;
		}
	}
	/* Used up even on failure: the writes may have landed, and a later
	 * page must never share or undercut their sequence. */
	mf->seq = seq;
	if (max_epoch)
		*max_epoch = max;
	free(written);
	return err;
}

uint64_t mapfile_last_seq(const struct mapfile *mf)
{
	return mf->seq;
}

void mapfile_close(struct mapfile *mf)
{
	if (!mf)
		return;
	if (mf->fd >= 0)
		close(mf->fd);
	free(mf->cur);
	free(mf->heal);
	free(mf->buf);
	free(mf);
}

int mapfile_verify(int dirfd, const struct vt_fsops *ops, const struct superblock *sb,
		   uint64_t nblocks, struct mapfile_report *rep)
{
	uint32_t npages = (uint32_t)((nblocks + CM_PAGE_ENTRIES - 1) / CM_PAGE_ENTRIES);
	uint8_t *blk = aligned_alloc(MB_SIZE, MB_SIZE);
	uint64_t seq = 0;
	int fd, err;

	memset(rep, 0, sizeof(*rep));
	if (!blk)
		return -ENOMEM;
	fd = ops->openat(ops, dirfd, MAPFILE_NAME, O_RDONLY);
	if (fd < 0) {
		free(blk);
		return fd;
	}
	err = check_header(ops, fd, sb, nblocks, npages, blk);
	if (!err) {
		struct load_ctx ctx = { NULL, NULL, NULL, rep };
		err = scan_pages(ops, fd, npages, mb_gen_tag(&sb->generation), &seq,
				 load_found, load_damaged, &ctx);
	}
	close(fd);
	free(blk);
	return err;
}
