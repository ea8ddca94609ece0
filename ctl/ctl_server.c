#include "ctl_server.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "commands.h"
#include "deadline.h"
#include "listen.h"
#include "log.h"

#define MAX_REQUEST (64 << 10)
#define MAX_ARGS 64
#define REQUEST_TIMEOUT_MS 5000

struct ctl_server {
	int listen_fd;
	int stop_fd;
	char *path;
	struct ctl_env env;
	pthread_t thread;
};

/* Read a request up to the client's end of stream; its length or -errno. */
static int read_request(int fd, char *buf)
{
	uint64_t deadline = net_now_ms() + REQUEST_TIMEOUT_MS;
	size_t len = 0;

	for (;;) {
		int err = net_wait(fd, POLLIN, deadline);
		if (err)
			return err;
		ssize_t n = recv(fd, buf + len, MAX_REQUEST - len, MSG_DONTWAIT);
		if (n == 0)
			return (int)len;
		if (n < 0) {
			if (errno == EAGAIN || errno == EINTR)
				continue;
			return -errno;
		}
		len += (size_t)n;
		if (len == MAX_REQUEST)
			return -E2BIG;
	}
}

/* Split NUL-terminated arguments; -EINVAL if malformed, -E2BIG if too many. */
static int split_request(char *buf, int len, char **argv)
{
	int argc = 0;

	if (len == 0 || buf[len - 1] != 0)
		return -EINVAL;
	for (int pos = 0; pos < len; pos += (int)strlen(buf + pos) + 1) {
		if (argc == MAX_ARGS)
			return -E2BIG;
		argv[argc++] = buf + pos;
	}
	return argc;
}

static void serve_one(struct ctl_server *s, int fd)
{
	char *buf = malloc(MAX_REQUEST);
	char *argv[MAX_ARGS];
	char *text = NULL;
	size_t text_len = 0;
	int argc = 0, status;

	if (!buf)
		return;
	int len = read_request(fd, buf);
	FILE *out = open_memstream(&text, &text_len);
	if (!out) {
		free(buf);
		return;
	}
	if (len >= 0)
		argc = split_request(buf, len, argv);
	if (len < 0 || argc < 0) {
		int err = len < 0 ? len : argc;
		fprintf(out, "voltrack: bad control request: %s\n",
			err == -EINVAL ? "arguments must each end in a NUL byte" : strerror(-err));
		status = 2;
	} else {
		status = ctl_run(&s->env, argc, argv, out);
	}
	fclose(out);
	char code = (char)('0' + status);
	if (send(fd, &code, 1, MSG_NOSIGNAL) == 1 && text_len) {
		size_t sent = 0;
		while (sent < text_len) {
			ssize_t n = send(fd, text + sent, text_len - sent, MSG_NOSIGNAL);
			if (n <= 0)
				break;
			sent += (size_t)n;
		}
	}
	free(text);
	free(buf);
}

/*
 * Whoever can reach the socket could checkpoint, or read the change
 * history of, the volume: only root and the owner of the metadata
 * directory may, whatever the modes of the directory and the socket
 * (which ought to keep everyone else out already).  The owner is looked
 * up for each connection, so a chown takes effect at once.
 */
static int peer_allowed(const struct ctl_server *s, int fd, uid_t *uid)
{
	struct ucred cred;
	socklen_t len = sizeof(cred);
	struct stat st;

	*uid = (uid_t)-1;
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 || len != sizeof(cred))
		return -errno ? -errno : -EPROTO;
	*uid = cred.uid;
	if (fstat(metadir_fd(s->env.md), &st) < 0)
		return -errno;
	return cred.uid == 0 || cred.uid == st.st_uid ? 0 : -EPERM;
}

static void refuse(int fd, uid_t uid, int err)
{
	static const char msg[] = "1voltrack: the control socket serves only root and the owner "
				  "of the metadata directory\n";
	char *scratch = malloc(MAX_REQUEST);

	/* The request is read (bounded as any other) but never parsed: a
	 * Unix socket closed with unread data resets its peer, which would
	 * lose the refusal. */
	if (scratch)
		read_request(fd, scratch);
	free(scratch);
	vt_warn("control socket: refused a client (uid %ld): %s", uid == (uid_t)-1 ? -1L : (long)uid,
		strerror(-err));
	if (send(fd, msg, sizeof(msg) - 1, MSG_NOSIGNAL) < 0) {
		/* it is going away anyway */
	}
}

static void *ctl_main(void *arg)
{
	struct ctl_server *s = arg;
	struct pollfd p[2] = {
		{ .fd = s->listen_fd, .events = POLLIN },
		{ .fd = s->stop_fd, .events = POLLIN },
	};

	for (;;) {
		if (poll(p, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (p[1].revents)
			break;
		if (!(p[0].revents & POLLIN))
			continue;
		int fd = accept4(s->listen_fd, NULL, NULL, SOCK_CLOEXEC);
		if (fd < 0)
			continue;
		uid_t uid;
		int err = peer_allowed(s, fd, &uid);
		if (err)
			refuse(fd, uid, err);
		else
			serve_one(s, fd);
		close(fd);
	}
	return NULL;
}

int ctl_server_start(const char *path, const struct ctl_env *env, struct ctl_server **out)
{
	struct ctl_server *s = calloc(1, sizeof(*s));
	int err;

	if (!s)
		return -ENOMEM;
	s->env = *env;
	s->listen_fd = -1;
	s->path = strdup(path);
	s->stop_fd = eventfd(0, EFD_CLOEXEC);
	if (!s->path || s->stop_fd < 0) {
		err = s->path ? -errno : -ENOMEM;
		goto fail;
	}
	err = listen_unix(path, &s->listen_fd);
	if (err)
		goto fail;
	err = -pthread_create(&s->thread, NULL, ctl_main, s);
	if (err)
		goto fail;
	*out = s;
	return 0;
fail:
	if (s->listen_fd >= 0) {
		close(s->listen_fd);
		unlink(path);
	}
	if (s->stop_fd >= 0)
		close(s->stop_fd);
	free(s->path);
	free(s);
	return err;
}

void ctl_server_stop(struct ctl_server *s)
{
	uint64_t one = 1;

	if (!s)
		return;
	if (write(s->stop_fd, &one, sizeof(one)) < 0) {
		/* a fresh eventfd cannot refuse */
	}
	pthread_join(s->thread, NULL);
	close(s->listen_fd);
	close(s->stop_fd);
	unlink(s->path);
	free(s->path);
	free(s);
}

int ctl_client_call(const char *path, int argc, char **argv)
{
	return ctl_client_call_to(path, argc, argv, NULL);
}

int ctl_client_call_to(const char *path, int argc, char **argv, FILE *to)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	char buf[65536];
	int fd, status = -1;

	if (strlen(path) >= sizeof(addr.sun_path))
		return -ENAMETOOLONG;
	strcpy(addr.sun_path, path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
		int err = -errno;
		close(fd);
		return err;
	}
	/* One buffer, then end of stream: that is the whole request. */
	size_t total = 0;
	for (int i = 0; i < argc; i++)
		total += strlen(argv[i]) + 1;
	char *req = malloc(total ? total : 1);
	if (!req) {
		close(fd);
		return -ENOMEM;
	}
	size_t pos = 0;
	for (int i = 0; i < argc; i++) {
		size_t n = strlen(argv[i]) + 1;
		memcpy(req + pos, argv[i], n);
		pos += n;
	}
	int sent_err = 0;
	for (size_t done = 0; done < total && !sent_err;) {
		ssize_t n = send(fd, req + done, total - done, MSG_NOSIGNAL);
		if (n < 0 && errno != EINTR)
			sent_err = -errno;
		else if (n > 0)
			done += (size_t)n;
	}
	free(req);
	if (sent_err || shutdown(fd, SHUT_WR) < 0)
		goto broken;
	for (;;) {
		ssize_t n = recv(fd, buf, sizeof(buf), 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		size_t skip = 0;
		if (status < 0) {
			status = buf[0] - '0';
			skip = 1;
		}
		if (fwrite(buf + skip, 1, (size_t)n - skip, to ? to : status ? stderr : stdout)) {
			/* partial output still beats none */
		}
	}
	close(fd);
	if (status < 0) {
		fprintf(to ? to : stderr,
			"voltrack: the server closed the control connection without answering\n");
		return 1;
	}
	return status;
broken:
	close(fd);
	return -ECONNRESET;
}
