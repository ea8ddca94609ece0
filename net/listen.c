#include "listen.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define BACKLOG 128

int listen_unix(const char *path, int *out)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	struct stat st;
	int fd;

	if (strlen(path) >= sizeof(addr.sun_path))
		return -ENAMETOOLONG;
	strcpy(addr.sun_path, path);
	if (lstat(path, &st) == 0) {
		if (!S_ISSOCK(st.st_mode))
			return -EEXIST; /* never delete something that is not ours */
		unlink(path);
	}
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	/*
	 * Owner only, whatever the umask.  Nobody can connect between the
	 * bind and the chmod: a socket refuses connections until listen().
	 * (umask() around the bind would change it for every thread.)
	 */
	if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
		int err = -errno;
		close(fd);
		return err;
	}
	if (chmod(path, 0600) < 0 || listen(fd, BACKLOG) < 0) {
		int err = -errno;
		close(fd);
		unlink(path);
		return err;
	}
	*out = fd;
	return 0;
}

int listen_tcp(const char *hostport, int *fds, size_t max, size_t *n)
{
	struct addrinfo hints = {
		.ai_family = AF_UNSPEC,
		.ai_socktype = SOCK_STREAM,
		.ai_flags = AI_PASSIVE | AI_NUMERICSERV,
	};
	struct addrinfo *res, *ai;
	char host[256];
	const char *port, *colon;
	int err = 0;

	*n = 0;
	if (hostport[0] == '[') {
		const char *close_br = strchr(hostport, ']');
		if (!close_br || close_br[1] != ':' || (size_t)(close_br - hostport - 1) >= sizeof(host))
			return -EINVAL;
		memcpy(host, hostport + 1, (size_t)(close_br - hostport - 1));
		host[close_br - hostport - 1] = 0;
		port = close_br + 2;
	} else {
		colon = strrchr(hostport, ':');
		if (!colon || (size_t)(colon - hostport) >= sizeof(host))
			return -EINVAL;
		memcpy(host, hostport, (size_t)(colon - hostport));
		host[colon - hostport] = 0;
		port = colon + 1;
	}
	if (!*port)
		return -EINVAL;
	if (getaddrinfo(host[0] ? host : NULL, port, &hints, &res) != 0)
		return -EADDRNOTAVAIL;
	for (ai = res; ai && *n < max; ai = ai->ai_next) {
		int one = 1;
		int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
		if (fd < 0) {
			err = -errno;
			continue;
		}
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (ai->ai_family == AF_INET6)
			setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
		if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, BACKLOG) < 0) {
			err = -errno;
			close(fd);
			continue;
		}
		fds[(*n)++] = fd;
	}
	freeaddrinfo(res);
	return *n ? 0 : (err ? err : -EADDRNOTAVAIL);
}

int listen_systemd(int *fds, size_t max, size_t *n)
{
	const char *pid = getenv("LISTEN_PID");
	const char *count = getenv("LISTEN_FDS");
	char *end;

	*n = 0;
	if (!pid || !count)
		return 0;
	if (strtol(pid, &end, 10) != getpid() || *end)
		return 0; /* meant for another process */
	long k = strtol(count, &end, 10);
	if (*end || k < 1 || (size_t)k > max)
		return -EINVAL;
	for (long i = 0; i < k; i++) {
		int fd = 3 + (int)i; /* SD_LISTEN_FDS_START */
		int type;
		socklen_t len = sizeof(type);
		if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0 || type != SOCK_STREAM)
			return -ENOTSOCK;
		fcntl(fd, F_SETFD, FD_CLOEXEC);
		fds[(*n)++] = fd;
	}
	/* Children must not think these were meant for them. */
	unsetenv("LISTEN_PID");
	unsetenv("LISTEN_FDS");
	unsetenv("LISTEN_FDNAMES");
	return 0;
}
