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
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

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

int cmd_snapshot(int argc, char **argv)
{
	const char *freeze = NULL, *thaw = NULL, *meta = NULL;
	const char *args[3];
	int nargs = 0;
	unsigned timeout_s = 10;
	bool json = false;

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char **slot = !strcmp(a, "--freeze-cmd") ? &freeze :
				    !strcmp(a, "--thaw-cmd") ? &thaw :
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
		} else if (a[0] == '-' || nargs == 2) {
			return cli_usage("snapshot", "unexpected '%s'", a);
		} else {
			args[nargs++] = a;
		}
	}
	if (nargs != 2)
		return cli_usage("snapshot", "snapshot takes VOLUME NAME");

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
					"timeout; no hold was taken, nothing kept", args[1], timeout_s);
		}
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
