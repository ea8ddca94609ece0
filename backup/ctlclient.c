/*
 * ctlclient: see ctlclient.h.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "ctlclient.h"

int bk_ctl_call(const char *sock, int argc, const char *const *argv, int *status, char **out)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd, err = 0;

	if (strlen(sock) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	strcpy(sa.sun_path, sock);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa))) {
		err = -errno;
		close(fd);
		return err;
	}
	for (int i = 0; i < argc && !err; i++) {
		size_t n = strlen(argv[i]) + 1, done = 0;
		while (done < n) {
			ssize_t w = send(fd, argv[i] + done, n - done, MSG_NOSIGNAL);
			if (w < 0 && errno == EINTR)
				continue;
			if (w < 0) {
				err = -errno;
				break;
			}
			done += (size_t)w;
		}
	}
	if (!err && shutdown(fd, SHUT_WR))
		err = -errno;
	char *buf = NULL;
	size_t len = 0, cap = 0;
	while (!err) {
		if (cap - len < 4096) {
			char *nb = realloc(buf, cap + 65536);
			if (!nb) {
				err = -ENOMEM;
				break;
			}
			buf = nb;
			cap += 65536;
		}
		ssize_t n = recv(fd, buf + len, cap - len - 1, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			err = -errno;
		if (n <= 0)
			break;
		len += (size_t)n;
	}
	close(fd);
	if (!err && (len == 0 || buf[0] < '0' || buf[0] > '9'))
		err = -EPROTO;
	if (err) {
		free(buf);
		return err;
	}
	buf[len] = 0;
	*status = buf[0] - '0';
	memmove(buf, buf + 1, len);
	*out = buf;
	return 0;
}

/* Points just past "key": in text (whitespace skipped), or NULL. */
static const char *find_key(const char *text, const char *key)
{
	size_t klen = strlen(key);

	for (const char *p = strchr(text, '"'); p; p = strchr(p + 1, '"')) {
		if (!strncmp(p + 1, key, klen) && p[1 + klen] == '"') {
			const char *q = p + 2 + klen;
			while (*q == ' ')
				q++;
			if (*q == ':') {
				q++;
				while (*q == ' ')
					q++;
				return q;
			}
		}
	}
	return NULL;
}

int bk_json_string(const char *text, const char *key, char *out, size_t cap)
{
	const char *p = find_key(text, key);
	size_t n = 0;

	if (!p || *p != '"')
		return -ENOENT;
	for (p++; *p && *p != '"'; p++) {
		char c = *p;
		if (c == '\\' && p[1]) {
			p++;
			c = *p == 'n' ? '\n' : *p == 't' ? '\t' : *p == 'u' ? '?' : *p;
			if (*p == 'u')
				p += strlen(p) >= 5 ? 4 : 0;
		}
		if (n + 1 >= cap)
			return -ENAMETOOLONG;
		out[n++] = c;
	}
	out[n] = 0;
	return *p == '"' ? 0 : -EPROTO;
}

int bk_json_u64(const char *text, const char *key, unsigned long long *out)
{
	const char *p = find_key(text, key);
	char *end;

	if (!p || *p < '0' || *p > '9')
		return -ENOENT;
	*out = strtoull(p, &end, 10);
	return 0;
}

int bk_json_each(const char *text, int (*fn)(void *arg, const char *obj), void *arg)
{
	const char *p = strchr(text, '[');
	int depth = 0;
	bool in_str = false;
	const char *start = NULL;

	if (!p)
		return -EPROTO;
	for (p++; *p; p++) {
		if (in_str) {
			if (*p == '\\' && p[1])
				p++;
			else if (*p == '"')
				in_str = false;
			continue;
		}
		if (*p == '"') {
			in_str = true;
		} else if (*p == '{') {
			if (depth++ == 0)
				start = p;
		} else if (*p == '}') {
			if (--depth == 0 && start) {
				size_t n = (size_t)(p - start + 1);
				char *obj = malloc(n + 1);
				if (!obj)
					return -ENOMEM;
				memcpy(obj, start, n);
				obj[n] = 0;
				int r = fn(arg, obj);
				free(obj);
				if (r)
					return r;
			}
		} else if (*p == ']' && depth == 0) {
			return 0;
		}
	}
	return -EPROTO;
}
