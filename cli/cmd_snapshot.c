/*
 * voltrack snapshot VOLUME NAME [--hold-timeout SEC] [--freeze-cmd CMD]
 *                  [--thaw-cmd CMD] [--json] [--meta DIR]
 *
 * The freeze and thaw hooks run here, around the server's hold:
 *   freeze hook -> [server: prepare, hold, commit, release] -> thaw hook
 * The hold timeout bounds the whole window in which writers may be
 * stopped, from the start of the freeze hook to the release: a freeze
 * hook still running at the deadline is killed (its process group) and
 * the snapshot aborted.  A freeze hook that fails aborts before any
 * hold.  The thaw hook runs whenever the freeze hook was started and did
 * not fail on its own, so whatever it froze is thawed, also on timeout.
 */
#include <errno.h>
#include <stdbool.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "checkpoints.h"
#include "cli.h"
#include "ctl_server.h"
#include "volume.h"

static uint64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Run cmd with sh -c in its own process group, killing the group at
 * deadline_ms (0: none).  Returns its exit status, 124 on timeout, or
 * -errno when it could not be started. */
static int run_hook(const char *what, const char *cmd, uint64_t deadline_ms)
{
	pid_t pid = fork();
	int st;

	if (pid < 0)
		return -errno;
	if (pid == 0) {
		setpgid(0, 0);
		execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
		_exit(127);
	}
	setpgid(pid, pid);
	for (;;) {
		pid_t r = waitpid(pid, &st, deadline_ms ? WNOHANG : 0);
		if (r == pid)
			break;
		if (r < 0 && errno != EINTR)
			return -errno;
		if (deadline_ms && mono_ms() >= deadline_ms) {
			kill(-pid, SIGKILL);
			waitpid(pid, &st, 0);
			fprintf(stderr, "voltrack: %s hook did not finish within the hold timeout; "
				"killed\n", what);
			return 124;
		}
		usleep(2000);
	}
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

#define GROUP_MAX 64

/*
 * One step of a group on one volume's server: its exit status (1 when no
 * server answers), with its whole answer in *text (the caller frees it;
 * NULL when there was no memory for it).  Answers are kept, not shown:
 * the group reports once, for all its volumes.
 */
static int step(const char *sock, char **text, const char *a0, const char *a1,
		const char *a2, const char *a3)
{
	char *argv[] = { (char *)a0, (char *)a1, (char *)a2, (char *)a3, NULL };
	int argc = a2 ? (a3 ? 4 : 3) : 2;
	size_t len;
	FILE *to = open_memstream(text, &len);

	if (!to) {
		*text = NULL;
		return 1;
	}
	int r = ctl_client_call_to(sock, argc, argv, to);
	if (r < 0)
		fprintf(to, "no server answers on %s (%s); a group snapshot needs each volume "
			"served", sock, strerror(-r));
	fclose(to);
	return r < 0 ? 1 : r;
}

/* A server's answer as a reason within one line: its first line, without
 * the "voltrack: " every message starts with. */
static const char *reason(char *text)
{
	static const char prefix[] = "voltrack: ";

	if (!text)
		return "out of memory";
	text[strcspn(text, "\n")] = '\0';
	if (!strncmp(text, prefix, sizeof(prefix) - 1))
		text += sizeof(prefix) - 1;
	return *text ? text : "no reason given";
}

/* Whether the server's checkpoint list still names NAME: 1, 0, or -1
 * when it cannot tell. */
static int still_listed(const char *sock, const char *name)
{
	char *text, key[CKPT_NAME_MAX + 16];
	int r = step(sock, &text, "list", "--json", NULL, NULL);

	snprintf(key, sizeof(key), "\"name\":\"%s\"", name);
	r = r || !text ? -1 : strstr(text, key) != NULL;
	free(text);
	return r;
}

/* Take back what a failed group left on each volume, snapshot and
 * checkpoint alike: a group checkpoint on some volumes only would let
 * an incremental backup mix instants.  Returns how many could not. */
static int forget_everywhere(char **socks, int nvols, const char *name, int *first_kept)
{
	int kept = 0;

	*first_kept = -1;
	for (int i = 0; i < nvols; i++) {
		char *text;
		/* A volume whose hold timed out has nothing to delete: the
		 * name is gone, which is what this is for. */
		if (step(socks[i], &text, "delete", name, "--forget", NULL) &&
		    still_listed(socks[i], name) != 0) {
			if (!kept++)
				*first_kept = i;
		}
		free(text);
	}
	return kept;
}

/*
 * Several volumes at one instant: every server holds (drained), then
 * each commits, then each releases, so that no write admitted after
 * any volume's instant precedes another's.  If a hold or a commit
 * fails, every volume's hold is aborted, commits taken back, and
 * nothing is kept.  If a release cannot make its commit durable, the
 * snapshot and checkpoint are deleted on every volume.  Either way the
 * command fails with one line naming the first volume that failed, and
 * why.
 */
static int group_snapshot(const char **vols, int nvols, const char *name, const char *meta,
			  uint64_t deadline, bool json)
{
	char *socks[GROUP_MAX] = { 0 }, *answers[GROUP_MAX] = { 0 };
	char *why = NULL;
	const char *what = NULL;
	int status = 0, held = 0, committed = 0, bad = -1;

	if (meta && nvols > 1)
		return cli_usage("snapshot", "--meta names one directory: it cannot go with "
				 "several volumes");
	for (int i = 0; i < nvols && !status; i++) {
		enum sb_volume_kind kind;
		uint64_t size;
		char *m = NULL;
		int err = volume_probe(vols[i], &kind, &size);
		if (err)
			status = cli_fail("cannot open %s: %s; no hold was taken, nothing kept",
					  vols[i], strerror(-err));
		else if (cli_meta_path(vols[i], meta, kind, &m))
			status = 1;
		else if (asprintf(&socks[i], "%s/%s", m, CTL_SOCKET_NAME) < 0)
			status = cli_fail("out of memory");
		free(m);
	}
	for (; !status && !what && held < nvols; held++) {
		uint64_t now = mono_ms();
		char ms[24];
		snprintf(ms, sizeof(ms), "%llu",
			 (unsigned long long)(now < deadline ? deadline - now : 1));
		if (step(socks[held], &why, "snapshot-hold", name, ms, NULL)) {
			what = "could not be held";
			bad = held--; /* the one that failed holds nothing */
		} else {
			free(why);
			why = NULL;
		}
	}
	for (; !status && !what && committed < held; committed++) {
		if (step(socks[committed], &why, "snapshot-commit", name, NULL, NULL)) {
			what = "could not commit it";
			bad = committed;
		} else {
			free(why);
			why = NULL;
		}
	}
	if (!status && what) {
		for (int i = 0; i < held; i++) {
			char *text;
			step(socks[i], &text, "snapshot-abort", name, NULL, NULL);
			free(text);
		}
		status = cli_fail("group snapshot '%s' failed: %s %s (%s); nothing kept on any "
				  "volume", name, vols[bad], what, reason(why));
	} else if (!status) {
		int failed = 0;
		for (int i = 0; i < nvols; i++)
			if (step(socks[i], &answers[i], "snapshot-release", name,
				 json ? "--json" : NULL, NULL) && !failed++)
				bad = i;
		if (!failed) {
			for (int i = 0; i < nvols; i++)
				fputs(answers[i] ? answers[i] : "", stdout);
		} else {
			char more[48] = "";
			int first_kept;
			int kept = forget_everywhere(socks, nvols, name, &first_kept);
			if (failed > 1)
				snprintf(more, sizeof(more), " (and %d more)", failed - 1);
			if (kept)
				status = cli_fail("group snapshot '%s' failed: %s could not make it "
						  "durable (%s)%s, and %d of the %d volumes, %s first, "
						  "could not delete it: delete it with 'voltrack delete "
						  "VOLUME %s --forget'", name, vols[bad],
						  reason(answers[bad]), more, kept, nvols,
						  vols[first_kept], name);
			else
				status = cli_fail("group snapshot '%s' failed: %s could not make it "
						  "durable (%s)%s; nothing kept on any volume", name,
						  vols[bad], reason(answers[bad]), more);
		}
	}
	free(why);
	for (int i = 0; i < nvols; i++) {
		free(socks[i]);
		free(answers[i]);
	}
	return status;
}

int cmd_snapshot(int argc, char **argv)
{
	const char *freeze = NULL, *thaw = NULL, *meta = NULL, *group = NULL;
	const char *args[GROUP_MAX + 1];
	int nargs = 0;
	unsigned timeout_s = 10;
	bool json = false;

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char **slot = !strcmp(a, "--freeze-cmd") ? &freeze :
				    !strcmp(a, "--thaw-cmd") ? &thaw :
				    !strcmp(a, "--group") ? &group :
				    !strcmp(a, "--meta") ? &meta : NULL;
		if (slot) {
			if (++i == argc)
				return cli_usage("snapshot", "%s needs a value", a);
			*slot = argv[i];
		} else if (!strcmp(a, "--hold-timeout")) {
			if (++i == argc || cli_parse_uint("--hold-timeout", argv[i], 3600, &timeout_s))
				return EXIT_USAGE;
			if (timeout_s == 0)
				return cli_usage("snapshot", "--hold-timeout is at least 1 second");
		} else if (!strcmp(a, "--json")) {
			json = true;
		} else if (a[0] == '-' || nargs == GROUP_MAX) {
			return cli_usage("snapshot", "unexpected '%s'", a);
		} else {
			args[nargs++] = a;
		}
	}
	if (group && !checkpoint_name_valid(group))
		return cli_usage("snapshot", "'%s' is not a valid snapshot name", group);
	if (group ? nargs < 1 : nargs != 2)
		return cli_usage("snapshot", "snapshot takes VOLUME NAME, or VOLUME... --group NAME");

	uint64_t deadline = mono_ms() + (uint64_t)timeout_s * 1000;
	bool thaw_needed = false;
	if (freeze) {
		int r = run_hook("freeze", freeze, deadline);
		if (r != 0 && r != 124) {
			return cli_fail("freeze hook failed (%s %d); no hold was taken, nothing kept",
					r < 0 ? "could not start:" : "exit", r < 0 ? -r : r);
		}
		thaw_needed = true;
		if (r == 124) {
			int t = thaw ? run_hook("thaw", thaw, 0) : 0;
			if (t)
				fprintf(stderr, "voltrack: thaw hook failed (exit %d)\n", t);
			return cli_fail("snapshot '%s' aborted: the freeze hook outlived the %u s hold "
					"timeout; no hold was taken, nothing kept",
					group ? group : args[1], timeout_s);
		}
	}
	if (group) {
		int status = group_snapshot(args, nargs, group, meta, deadline, json);
		if (thaw_needed && thaw) {
			int t = run_hook("thaw", thaw, 0);
			if (t) {
				fprintf(stderr, "voltrack: thaw hook failed (exit %d)\n", t);
				status = status ? status : 1;
			}
		}
		return status;
	}
	uint64_t now = mono_ms();
	unsigned left = now < deadline ? (unsigned)(deadline - now) : 1;
	char left_s[16];
	snprintf(left_s, sizeof(left_s), "%u", left);
	char *sub[9];
	int n = 0;
	sub[n++] = "snapshot";
	sub[n++] = (char *)args[0];
	sub[n++] = (char *)args[1];
	sub[n++] = "--hold-timeout-ms";
	sub[n++] = left_s;
	if (json)
		sub[n++] = "--json";
	if (meta) {
		sub[n++] = "--meta";
		sub[n++] = (char *)meta;
	}
	sub[n] = NULL;
	int status = cmd_track(n, sub);
	if (thaw_needed && thaw) {
		int t = run_hook("thaw", thaw, 0);
		if (t) {
			fprintf(stderr, "voltrack: thaw hook failed (exit %d)\n", t);
			if (!status)
				status = 1;
		}
	}
	return status;
}
