/*
 * voltrack serve: export a volume over NBD until SIGINT or SIGTERM.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "listen.h"
#include "log.h"
#include "metadir.h"
#include "server.h"
#include "tracker.h"
#include "ctl_server.h"
#include "snapshots.h"
#include "size.h"
#include "tls.h"
#include "volume.h"

#define MAX_LISTENERS 16

/* The control socket publishes exports through the NBD server. */
static int add_export(void *srv, struct vt_export *e)
{
	return nbd_server_add_export(srv, e);
}

static int remove_export(void *srv, const char *name)
{
	return nbd_server_remove_export(srv, name);
}

struct serve_opts {
	const char *volume;
	const char *meta;
	const char *socket;
	const char *listen;
	bool read_only;
	bool no_track;
	const char *tls_creds;		/* X.509 directory */
	const char *tls_psk;		/* psktool file */
	bool tls_verify_peer;
	unsigned persist_ms;
	struct diffstore_config diff;
	struct nbd_server_config cfg;
};

static int parse(int argc, char **argv, struct serve_opts *o)
{
	static const struct option opts[] = {
		{ "meta", required_argument, NULL, 'm' },
		{ "socket", required_argument, NULL, 's' },
		{ "listen", required_argument, NULL, 'l' },
		{ "io-engine", required_argument, NULL, 'e' },
		{ "workers", required_argument, NULL, 'w' },
		{ "max-connections", required_argument, NULL, 'c' },
		{ "handshake-timeout", required_argument, NULL, 't' },
		{ "read-only", no_argument, NULL, 'r' },
		{ "no-track", no_argument, NULL, 'n' },
		{ "persist-interval", required_argument, NULL, 'p' },
		{ "diff-store", required_argument, NULL, 'D' },
		{ "diff-limit", required_argument, NULL, 'L' },
		{ "tls-creds", required_argument, NULL, 'T' },
		{ "tls-psk", required_argument, NULL, 'P' },
		{ "tls-verify-peer", no_argument, NULL, 'V' },
		{ NULL, 0, NULL, 0 },
	};
	unsigned v;
	int c;

	nbd_server_config_defaults(&o->cfg);
	optind = 1;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'm': o->meta = optarg; break;
		case 's': o->socket = optarg; break;
		case 'l': o->listen = optarg; break;
		case 'r': o->read_only = true; break;
		case 'n': o->no_track = true; break;
		case 'p':
			if (cli_parse_uint("--persist-interval", optarg, 3600000, &v))
				return EXIT_USAGE;
			if (v < 10)
				return cli_usage("serve", "--persist-interval is at least 10 ms");
			o->persist_ms = v;
			break;
		case 'D': o->diff.data_path = optarg; break;
		case 'T': o->tls_creds = optarg; break;
		case 'P': o->tls_psk = optarg; break;
		case 'V': o->tls_verify_peer = true; break;
		case 'L':
			if (cli_parse_size("--diff-limit", optarg, &o->diff.limit))
				return EXIT_USAGE;
			if (o->diff.limit == 0)
				return cli_usage("serve", "--diff-limit must be more than 0");
			break;
		case 'e':
			if (!strcmp(optarg, "auto"))
				o->cfg.backend = VIO_BACKEND_AUTO;
			else if (!strcmp(optarg, "io_uring"))
				o->cfg.backend = VIO_BACKEND_URING;
			else if (!strcmp(optarg, "threads"))
				o->cfg.backend = VIO_BACKEND_THREADS;
			else
				return cli_usage("serve", "--io-engine takes auto, io_uring or threads");
			break;
		case 'w':
			if (cli_parse_uint("--workers", optarg, 64, &v))
				return EXIT_USAGE;
			o->cfg.workers = v;
			break;
		case 'c':
			if (cli_parse_uint("--max-connections", optarg, 65536, &v))
				return EXIT_USAGE;
			if (v == 0)
				return cli_usage("serve", "--max-connections must be at least 1");
			o->cfg.max_connections = v;
			break;
		case 't':
			if (cli_parse_uint("--handshake-timeout", optarg, 3600, &v))
				return EXIT_USAGE;
			if (v == 0)
				return cli_usage("serve", "--handshake-timeout must be at least 1");
			o->cfg.handshake_timeout_ms = v * 1000;
			break;
		default:
			return cli_usage("serve", "bad option");
		}
	}
	if (o->tls_creds && o->tls_psk)
		return cli_usage("serve", "--tls-creds and --tls-psk exclude each other");
	if (o->tls_verify_peer && !o->tls_creds)
		return cli_usage("serve", "--tls-verify-peer needs --tls-creds DIR");
	if (optind != argc - 1)
		return cli_usage("serve", "serve takes exactly one VOLUME");
	o->volume = argv[optind];
	return 0;
}

/* TLS credentials, checked before anything else is opened. */
static int load_tls(struct serve_opts *o, struct nbd_tls_creds **out)
{
	char msg[512];
	int err;

	if (!o->tls_creds && !o->tls_psk)
		return 0;
	if (o->tls_creds)
		err = nbd_tls_creds_x509(o->tls_creds, o->tls_verify_peer, out, msg, sizeof(msg));
	else
		err = nbd_tls_creds_psk(o->tls_psk, out, msg, sizeof(msg));
	if (err)
		return cli_fail("cannot use the TLS credentials: %s", msg);
	o->cfg.tls = *out;
	return 0;
}

/* Every snapshot the metadata holds is served as "snapshot/NAME". */
static int add_snapshot_exports(struct vt_snapshots *snaps, struct nbd_server *srv)
{
	struct checkpoint_list *l = malloc(sizeof(*l));
	int err = l ? 0 : -ENOMEM;

	if (l)
		tracker_checkpoints(snaps->tracker, l);
	for (uint32_t i = 0; !err && i < l->n; i++) {
		struct vt_export *e;
		if (!(l->items[i].flags & CKPT_F_SNAPSHOT))
			continue;
		err = vt_snapshots_export(snaps, l->items[i].name, &e);
		if (!err) {
			err = nbd_server_add_export(srv, e);
			vt_export_put(e);
		}
	}
	free(l);
	return err;
}

/* Open everything the server needs; prints its own errors. */
static int open_volume(const struct serve_opts *o, struct metadir **md,
		       struct volume **vol, char **meta_path)
{
	enum sb_volume_kind kind;
	uint64_t size;
	struct superblock sb;
	int err = volume_probe(o->volume, &kind, &size);

	if (err == -EINVAL)
		return cli_fail("%s is neither a regular file nor a block device", o->volume);
	if (err)
		return cli_fail("cannot open %s: %s", o->volume, strerror(-err));
	if (cli_meta_path(o->volume, o->meta, kind, meta_path))
		return 1;
	err = metadir_open(*meta_path, false, &vt_fsops_posix, md);
	if (err == -ENOENT)
		return cli_fail("%s has no metadata at %s; run 'voltrack init %s' first",
				o->volume, *meta_path, o->volume);
	if (err)
		return cli_fail("cannot open %s: %s", *meta_path, strerror(-err));
	err = metadir_lock(*md);
	if (err == -EBUSY)
		return cli_fail("%s is already being served (%s is locked)", o->volume, *meta_path);
	if (err)
		return cli_fail("cannot lock %s: %s", *meta_path, strerror(-err));
	err = metadir_read_superblock(*md, &sb);
	if (err == -ENOENT)
		return cli_fail("%s has no superblock; run 'voltrack init %s' first",
				*meta_path, o->volume);
	if (err == -EPROTONOSUPPORT)
		return cli_fail("%s/superblock was written by a newer voltrack", *meta_path);
	if (err)
		return cli_fail("%s/superblock is corrupt (%s); 'voltrack init --force' starts over",
				*meta_path, strerror(-err));
	/*
	 * We hold the metadata lock, so a busy volume lock is either a
	 * server using other metadata, or one that just died: the kernel
	 * releases a killed process's io_uring, and with it the file, a
	 * moment after the process is gone.  Give the latter time.
	 */
	for (int tries = 0;; tries++) {
		err = volume_open(o->volume, VOLUME_EXCLUSIVE | (o->read_only ? VOLUME_READ_ONLY : 0),
				  vol);
		if (err != -EBUSY || tries == 50)
			break;
		if (tries == 0)
			vt_info("%s is still locked; waiting for its previous user to go", o->volume);
		usleep(100000);
	}
	if (err == -EBUSY)
		return cli_fail("%s is locked by another process", o->volume);
	if (err)
		return cli_fail("cannot open %s: %s", o->volume, strerror(-err));
	if ((*vol)->size != sb.volume_size) {
		char was[32], now[32];
		size_format(sb.volume_size, was, sizeof(was));
		size_format((*vol)->size, now, sizeof(now));
		return cli_fail("%s changed size from %s to %s since 'voltrack init'; "
				"re-run init --force to adopt it", o->volume, was, now);
	}
	return 0;
}

static int add_listeners(const struct serve_opts *o, struct nbd_server *srv,
			 const char *meta_path, char **unix_path)
{
	int fds[MAX_LISTENERS];
	size_t n = 0;
	int err = listen_systemd(fds, MAX_LISTENERS, &n);

	if (err)
		return cli_fail("bad socket activation (LISTEN_FDS): %s", strerror(-err));
	if (n) {
		vt_info("using %zu socket(s) from socket activation", n);
	} else {
		if (o->socket)
			*unix_path = strdup(o->socket);
		else if (asprintf(unix_path, "%s/nbd.sock", meta_path) < 0)
			*unix_path = NULL;
		if (!*unix_path)
			return cli_fail("out of memory");
		err = listen_unix(*unix_path, &fds[n]);
		if (err)
			return cli_fail("cannot listen on %s: %s", *unix_path, strerror(-err));
		n++;
		if (o->listen) {
			size_t k;
			err = listen_tcp(o->listen, fds + n, MAX_LISTENERS - n, &k);
			if (err) {
				close(fds[0]);
				return cli_fail("cannot listen on %s: %s", o->listen,
						err == -EINVAL ? "expected HOST:PORT" : strerror(-err));
			}
			n += k;
		}
	}
	for (size_t i = 0; i < n; i++)
		if (nbd_server_add_listener(srv, fds[i]))
			return cli_fail("out of memory");
	return 0;
}

int cmd_serve(int argc, char **argv)
{
	struct serve_opts o = { 0 };
	struct metadir *md = NULL;
	struct volume *vol = NULL;
	struct nbd_server *srv = NULL;
	struct tracker *tracker = NULL;
	struct vt_snapshots *snaps = NULL;
	struct ctl_server *ctl = NULL;
	struct nbd_tls_creds *tls = NULL;
	struct ctl_exports exports = { .add = add_export, .remove = remove_export };
	char *meta_path = NULL, *unix_path = NULL;
	sigset_t stop_signals;
	int status = 1, err, sig;

	status = parse(argc, argv, &o);
	if (status)
		return status;
	status = 1;

	/* Block the stop signals before any thread exists, so every thread
	 * inherits the mask and only sigwait() below sees them. */
	sigemptyset(&stop_signals);
	sigaddset(&stop_signals, SIGINT);
	sigaddset(&stop_signals, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &stop_signals, NULL);
	signal(SIGPIPE, SIG_IGN);

	if (load_tls(&o, &tls))
		goto out;
	if (open_volume(&o, &md, &vol, &meta_path))
		goto out;
	if (!o.no_track) {
		struct tracker_config tcfg;
		struct volume_identity id;
		tracker_config_defaults(&tcfg);
		if (o.persist_ms)
			tcfg.persist_interval_ms = o.persist_ms;
		tcfg.volume = vol;
		err = volume_identity(vol, &id);
		if (!err)
			err = tracker_open(md, &id, true, &tcfg, &tracker);
		if (err) {
			cli_fail("cannot start change tracking in %s: %s", meta_path, strerror(-err));
			goto out;
		}
	} else if (!o.read_only) {
		/* Said on disk before the first untracked write can happen:
		 * nothing else would tell the next tracked start. */
		err = tracker_mark_untracked(md);
		if (err) {
			cli_fail("cannot record in %s that %s is served untracked: %s", meta_path,
				 o.volume, strerror(-err));
			goto out;
		}
		vt_warn("--no-track: writes are not tracked; the next tracked start "
			"will report everything changed");
	}
	err = nbd_server_create(&o.cfg, &srv);
	if (err) {
		cli_fail("cannot create server: %s", strerror(-err));
		goto out;
	}
	if (tracker && !o.read_only) {
		err = vt_snapshots_open(md, tracker, vol, &o.diff, true, &snaps);
		if (err) {
			cli_fail("cannot open the snapshots' diff store in %s: %s", meta_path,
				 err == -EINVAL ? "it was made for another chunk size" :
				 err == -EXDEV ? "its data file belongs to another diff store "
						 "(another --diff-store?)" : strerror(-err));
			goto out;
		}
	}
	struct vt_target tgt = { .vol = vol, .tracker = tracker };
	if (snaps)
		vt_snapshots_target(snaps, &tgt);
	struct vt_export *live = NULL;
	err = vt_export_live("", "live volume", &tgt, o.read_only, &live);
	if (!err) {
		err = nbd_server_add_export(srv, live);
		vt_export_put(live); /* the server holds its own */
	}
	if (!err && snaps)
		err = add_snapshot_exports(snaps, srv);
	if (err ||
	    metactx_register(nbd_server_contexts(srv), &metactx_base_allocation) ||
	    metactx_register(nbd_server_contexts(srv), &metactx_dirty_bitmap)) {
		cli_fail("out of memory");
		goto out;
	}
	if (add_listeners(&o, srv, meta_path, &unix_path))
		goto out;

	if (o.cfg.backend == VIO_BACKEND_AUTO) {
		err = vio_uring_probe();
		if (err) {
			vt_warn("io_uring is unavailable (%s); using the thread-pool engine",
				strerror(-err));
			o.cfg.backend = VIO_BACKEND_THREADS;
		}
	}
	if (tracker) {
		struct ctl_env env = { .tracker = tracker, .md = md, .exports = &exports,
				       .snaps = snaps };
		char *ctl_path = metadir_file(md, CTL_SOCKET_NAME);
		exports.arg = srv;
		err = ctl_path ? ctl_server_start(ctl_path, &env, &ctl) : -ENOMEM;
		free(ctl_path);
		if (err) {
			cli_fail("cannot open the control socket in %s: %s", meta_path, strerror(-err));
			goto out;
		}
	}
	err = nbd_server_start(srv);
	if (err) {
		cli_fail("cannot start server: %s", strerror(-err));
		goto out;
	}
	char sz[32];
	size_format(vol->size, sz, sizeof(sz));
	if (unix_path)
		vt_info("serving %s (%s) at nbd+unix:///?socket=%s with %s", o.volume, sz,
			unix_path, nbd_server_engine(srv));
	else
		vt_info("serving %s (%s) with %s", o.volume, sz, nbd_server_engine(srv));
	if (o.listen)
		vt_info("also listening on tcp %s", o.listen);
	if (tls)
		vt_info("TLS required (%s%s)", nbd_tls_creds_kind(tls),
			o.tls_verify_peer ? ", client certificates verified" : "");

	while (sigwait(&stop_signals, &sig) != 0)
		;
	vt_info("%s received; finishing in-flight requests", strsignal(sig));
	ctl_server_stop(ctl);
	ctl = NULL;
	nbd_server_stop(srv);
	/* Copies before the volume: a chunk's copy must never be less
	 * durable than the overwrite that followed it. */
	err = snaps ? diffstore_sync(snaps->ds) : 0;
	/* Before the tracker it follows (its hooks and checkpoints). */
	vt_snapshots_close(snaps);
	snaps = NULL;
	if (!err)
		err = volume_sync(vol, &vt_fsops_posix);
	if (err) {
		vt_error("final flush of %s failed: %s; the next start recovers as after a crash",
			 o.volume, strerror(-err));
		goto out;
	}
	if (tracker) {
		struct volume_identity id;
		err = volume_identity_settled(vol, &id);
		if (!err)
			err = tracker_close(tracker, &id);
		tracker = NULL;
		if (err) {
			vt_error("closing change tracking failed: %s; the next start will recover",
				 strerror(-err));
			goto out;
		}
	}
	vt_info("stopped cleanly");
	status = 0;
out:
	ctl_server_stop(ctl);
	if (snaps && srv)
		nbd_server_stop(srv); /* no write may be copying any more */
	vt_snapshots_close(snaps);
	snaps = NULL;
	if (tracker) {
		/* Failed before a clean close: the superblock stays marked in
		 * use, so the next start recovers from the intents. */
		if (srv)
			nbd_server_stop(srv);
		tracker_abandon(tracker);
	}
	if (unix_path)
		unlink(unix_path);
	nbd_server_destroy(srv);
	nbd_tls_creds_free(tls); /* after the server: sessions used it */
	volume_close(vol);
	metadir_close(md);
	free(unix_path);
	free(meta_path);
	return status;
}
