/*
 * voltrack init: create (or adopt) a volume and write its superblock.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "diffstore.h"
#include "snapset.h"
#include "metadir.h"
#include "size.h"
#include "tracker.h"
#include "volume.h"

int cmd_init(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "size", required_argument, NULL, 's' },
		{ "granularity", required_argument, NULL, 'g' },
		{ "meta", required_argument, NULL, 'm' },
		{ "force", no_argument, NULL, 'f' },
		{ "diff-store", required_argument, NULL, 'D' },
		{ "diff-limit", required_argument, NULL, 'L' },
		{ NULL, 0, NULL, 0 },
	};
	uint64_t size = 0, granularity = SB_DEFAULT_GRANULARITY;
	struct diffstore_config diff = { 0 };
	bool have_size = false, force = false;
	const char *meta_opt = NULL;
	enum sb_volume_kind kind;
	uint64_t actual;
	struct superblock sb, old;
	struct metadir *md = NULL;
	char *meta = NULL;
	int c, err, status = 1;

	optind = 1;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 's':
			if (cli_parse_size("--size", optarg, &size))
				return EXIT_USAGE;
			have_size = true;
			break;
		case 'g':
			if (cli_parse_size("--granularity", optarg, &granularity))
				return EXIT_USAGE;
			break;
		case 'D':
			diff.data_path = optarg;
			break;
		case 'L':
			if (cli_parse_size("--diff-limit", optarg, &diff.limit))
				return EXIT_USAGE;
			if (diff.limit == 0)
				return cli_usage("init", "--diff-limit must be more than 0");
			break;
		case 'm':
			meta_opt = optarg;
			break;
		case 'f':
			force = true;
			break;
		default:
			return cli_usage("init", "bad option");
		}
	}
	if (optind != argc - 1)
		return cli_usage("init", "init takes exactly one VOLUME");
	const char *volume = argv[optind];

	if (!sb_granularity_valid(granularity))
		return cli_usage("init", "--granularity must be a power of two from 4K to 64M");
	if (have_size && size == 0)
		return cli_usage("init", "--size must be more than 0");

	err = volume_probe(volume, &kind, &actual);
	if (err == -ENOENT) {
		if (!have_size)
			return cli_fail("%s does not exist; give --size to create it", volume);
		err = volume_create_file(&vt_fsops_posix, volume, size);
		if (err)
			return cli_fail("cannot create %s: %s", volume, strerror(-err));
		kind = SB_KIND_FILE;
		actual = size;
	} else if (err == -EINVAL) {
		return cli_fail("%s is neither a regular file nor a block device", volume);
	} else if (err) {
		return cli_fail("cannot open %s: %s", volume, strerror(-err));
	} else if (have_size && size != actual) {
		char want[32], got[32];
		size_format(size, want, sizeof(want));
		size_format(actual, got, sizeof(got));
		return cli_fail("%s already exists with size %s, not %s; voltrack does not resize volumes",
				volume, got, want);
	}
	if (actual == 0)
		return cli_fail("%s is empty; a volume needs a size", volume);

	if (cli_meta_path(volume, meta_opt, kind, &meta))
		return 1;
	err = metadir_open(meta, true, &vt_fsops_posix, &md);
	if (err) {
		cli_fail("cannot create metadata directory %s: %s", meta, strerror(-err));
		goto out;
	}
	err = metadir_lock(md);
	if (err) {
		cli_fail(err == -EBUSY ? "%s is in use by a running server; stop it first" :
			 "cannot lock %s: %s", meta, strerror(-err));
		goto out;
	}
	err = metadir_read_superblock(md, &old);
	if (err != -ENOENT && !force) {
		if (err == 0) {
			char id[VT_UUID_STRLEN];
			vt_uuid_format(&old.volume_uuid, id);
			cli_fail("%s already holds voltrack metadata (volume %s); "
				 "--force discards it and its history", meta, id);
		} else {
			cli_fail("%s holds unreadable voltrack metadata (%s); "
				 "--force discards it and its history", meta, strerror(-err));
		}
		goto out;
	}

	memset(&sb, 0, sizeof(sb));
	if (vt_uuid_generate(&sb.volume_uuid) || vt_uuid_generate(&sb.generation)) {
		cli_fail("cannot generate identifiers: %s", strerror(errno));
		goto out;
	}
	sb.version = SB_VERSION;
	sb.volume_size = actual;
	sb.granularity = (uint32_t)granularity;
	sb.volume_kind = kind;
	sb.created = (uint64_t)time(NULL);
	sb.sequence = 1;

	/* Record the volume as it is now, so that a change made before the
	 * first serve is noticed like any other untracked change. */
	struct volume *vol;
	struct volume_identity id;
	err = volume_open(volume, VOLUME_READ_ONLY, &vol);
	if (!err) {
		err = volume_identity_settled(vol, &id);
		volume_close(vol);
	}
	if (err) {
		cli_fail("cannot read %s: %s", volume, strerror(-err));
		goto out;
	}
	sb.state = SB_STATE_CLEAN;
	sb.id_size = id.size;
	sb.id_ino = id.ino;
	sb.id_ctime_ns = id.ctime_ns;
	sb.id_taken_ns = id.taken_ns;

	/* Tracking files first: a superblock never points at a generation
	 * whose files are not there. */
	err = tracker_format(md, &sb);
	if (!err)
		err = diffstore_create(metadir_fd(md), metadir_fsops(md), &diff,
				       vt_snapset_chunk_size(sb.granularity));
	if (!err)
		err = metadir_write_superblock(md, &sb);
	if (err) {
		cli_fail("cannot write metadata in %s: %s", meta, strerror(-err));
		goto out;
	}

	char sz[32], gr[32];
	size_format(actual, sz, sizeof(sz));
	size_format(granularity, gr, sizeof(gr));
	printf("initialised %s: size %s, granularity %s, metadata in %s\n", volume, sz, gr, meta);
	status = 0;
out:
	metadir_close(md);
	free(meta);
	return status;
}
