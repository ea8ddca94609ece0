/*
 * voltrack checkpoint | delete | changes | list | status | check.
 *
 * With a server running, the command goes over META/control.sock to the
 * live tracker.  Without one, the CLI takes the metadata lock, opens the
 * tracker itself (recovering if the last server crashed), runs the same
 * command code and closes the tracker cleanly.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "commands.h"
#include "metadir.h"
#include "ctl_server.h"
#include "snapshots.h"
#include "tracker.h"
#include "volume.h"

/* Split off VOLUME and --meta DIR; the rest goes to the command. */
static int split_args(int argc, char **argv, const char **volume, const char **meta,
		      char **rest, int *nrest)
{
	*volume = NULL;
	*meta = NULL;
	*nrest = 0;
	rest[(*nrest)++] = argv[0];
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--meta")) {
			if (++i == argc)
				return cli_usage(argv[0], "--meta needs a directory");
			*meta = argv[i];
		} else if (!strncmp(argv[i], "--meta=", 7)) {
			*meta = argv[i] + 7;
		} else if (!*volume && argv[i][0] != '-') {
			*volume = argv[i];
		} else {
			rest[(*nrest)++] = argv[i];
			/* an option's value must not be taken for VOLUME */
			if ((!strcmp(argv[i], "--since") || !strcmp(argv[i], "--until") ||
			     !strcmp(argv[i], "--hold-timeout-ms")) &&
			    i + 1 < argc)
				rest[(*nrest)++] = argv[++i];
		}
	}
	rest[*nrest] = NULL;
	if (!*volume)
		return cli_usage(argv[0], "%s needs a VOLUME", argv[0]);
	return 0;
}

static int run_offline(const char *volume, const char *meta_path, int argc, char **argv,
		       bool *busy)
{
	struct metadir *md = NULL;
	struct volume *vol = NULL;
	struct tracker *t = NULL;
	struct tracker_config cfg;
	struct volume_identity id;
	int err, status = 1;

	*busy = false;
	err = metadir_open(meta_path, false, &vt_fsops_posix, &md);
	if (err)
		return cli_fail("%s has no voltrack metadata at %s (%s); run 'voltrack init' first",
				volume, meta_path, strerror(-err));
	err = metadir_lock(md);
	if (err == -EBUSY) {
		*busy = true; /* a server is starting or stopping */
		goto out;
	}
	if (err) {
		cli_fail("cannot lock %s: %s", meta_path, strerror(-err));
		goto out;
	}
	err = volume_open(volume, VOLUME_READ_ONLY, &vol);
	if (!err)
		err = volume_identity(vol, &id);
	if (err) {
		cli_fail("cannot open %s: %s", volume, strerror(-err));
		goto out;
	}
	tracker_config_defaults(&cfg);
	/* Closing syncs the volume before it clears intents: after a crash
	 * the dead server's writes may still be in the page cache only. */
	cfg.volume = vol;
	err = tracker_open(md, &id, false, &cfg, &t);
	if (err == -ERANGE) {
		cli_fail("%s changed size since 'voltrack init'; re-run init --force to adopt it",
			 volume);
		goto out;
	}
	if (err) {
		cli_fail("cannot open the change tracker in %s: %s", meta_path, strerror(-err));
		goto out;
	}
	/* With nothing in flight, a snapshot's hold has nothing to drain. */
	struct vt_snapshots *snaps = NULL;
	static const char *const snap_cmds[] = { "snapshot", "delete", "list", "status",
						 "changes" };
	for (size_t i = 0; i < sizeof(snap_cmds) / sizeof(snap_cmds[0]); i++)
		if (!strcmp(argv[0], snap_cmds[i]))
			err = vt_snapshots_open(md, t, vol, &(struct diffstore_config){ 0 }, false,
						&snaps);
	if (err) {
		cli_fail("cannot open the snapshots' diff store in %s: %s", meta_path,
			 strerror(-err));
		tracker_abandon(t);
		goto out;
	}
	/* As through the control socket: the answer on stdout, a failure's
	 * line on stderr. */
	char *text = NULL;
	size_t len = 0;
	FILE *mem = open_memstream(&text, &len);
	if (!mem) {
		cli_fail("out of memory");
		status = 1;
	} else {
		status = ctl_run(&(struct ctl_env){ .tracker = t, .md = md, .snaps = snaps },
				 argc, argv, mem);
		fclose(mem);
		fwrite(text, 1, len, status ? stderr : stdout);
		free(text);
	}
	vt_snapshots_close(snaps);
	err = tracker_close(t, &id);
	if (err) {
		cli_fail("cannot close the change tracker cleanly: %s", strerror(-err));
		status = 1;
	}
out:
	volume_close(vol);
	metadir_close(md);
	return status;
}

int cmd_track(int argc, char **argv)
{
	char *rest[argc + 1];
	const char *volume, *meta_opt;
	enum sb_volume_kind kind;
	uint64_t size;
	char *meta = NULL, *sock = NULL;
	int nrest, status;

	status = split_args(argc, argv, &volume, &meta_opt, rest, &nrest);
	if (status)
		return status;
	status = volume_probe(volume, &kind, &size);
	if (status)
		return cli_fail("cannot open %s: %s", volume, strerror(-status));
	if (cli_meta_path(volume, meta_opt, kind, &meta))
		return 1;

	if (!strcmp(argv[0], "check")) {
		struct metadir *md;
		if (nrest != 1) {
			free(meta);
			return cli_usage("check", "check takes only VOLUME [--meta DIR]");
		}
		int err = metadir_open(meta, false, &vt_fsops_posix, &md);
		if (err) {
			status = cli_fail("%s: %s", meta, strerror(-err));
		} else {
			status = ctl_check(md, stdout);
			metadir_close(md);
		}
		free(meta);
		return status;
	}

	if (asprintf(&sock, "%s/%s", meta, CTL_SOCKET_NAME) < 0) {
		free(meta);
		return cli_fail("out of memory");
	}
	/* A server may be between taking the lock and opening its socket. */
	bool busy = false;
	for (int attempt = 0; attempt < 50; attempt++) {
		if (attempt)
			usleep(100000);
		status = ctl_client_call(sock, nrest, rest);
		if (status >= 0)
			break;
		if (status != -ENOENT && status != -ECONNREFUSED) {
			status = cli_fail("cannot reach the server at %s: %s", sock, strerror(-status));
			break;
		}
		status = run_offline(volume, meta, nrest, rest, &busy);
		if (!busy)
			break;
	}
	if (busy) /* said once, when every attempt found the lock taken */
		status = cli_fail("%s is locked, but no server answers on %s", meta, sock);
	free(sock);
	free(meta);
	return status;
}
