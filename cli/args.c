#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "metadir.h"
#include "size.h"

int cli_fail(const char *fmt, ...)
{
	va_list ap;

	fputs("voltrack: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	return 1;
}

int cli_usage(const char *cmd, const char *fmt, ...)
{
	va_list ap;

	fputs("voltrack: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\nTry 'voltrack help' for the usage of '%s'.\n", cmd);
	return EXIT_USAGE;
}

int cli_parse_size(const char *opt, const char *text, uint64_t *out)
{
	int err = size_parse(text, out);

	if (err == -ERANGE)
		cli_fail("%s %s: too large", opt, text);
	else if (err)
		cli_fail("%s %s: not a size (examples: 4096, 64K, 10G)", opt, text);
	return err;
}

int cli_parse_uint(const char *opt, const char *text, unsigned max, unsigned *out)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = strtoul(text, &end, 10);
	if (errno || end == text || *end || text[0] == '-' || v > max) {
		cli_fail("%s %s: expected a whole number from 0 to %u", opt, text, max);
		return -EINVAL;
	}
	*out = (unsigned)v;
	return 0;
}

int cli_parse_int(const char *opt, const char *text, int min, int max, int *out)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(text, &end, 10);
	if (errno || end == text || *end || v < min || v > max) {
		cli_fail("%s %s: expected a whole number from %d to %d", opt, text, min, max);
		return -EINVAL;
	}
	*out = (int)v;
	return 0;
}

int cli_meta_path(const char *volume, const char *meta_opt,
		  enum sb_volume_kind kind, char **out)
{
	if (meta_opt) {
		*out = strdup(meta_opt);
		return *out ? 0 : -ENOMEM;
	}
	if (kind == SB_KIND_BLOCKDEV) {
		cli_fail("%s is a block device: give --meta DIR for its metadata", volume);
		return -EINVAL;
	}
	return metadir_default_path(volume, out);
}
