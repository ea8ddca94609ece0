#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <unistd.h>

void vt_log(enum vt_log_level level, const char *fmt, ...)
{
	static const char *const prefix[] = {
		[VT_LOG_ERROR] = "error: ",
		[VT_LOG_WARN] = "warning: ",
		[VT_LOG_INFO] = "",
	};
	char line[1024];
	int n = snprintf(line, sizeof(line), "voltrack: %s", prefix[level]);
	va_list ap;

	va_start(ap, fmt);
	n += vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
	va_end(ap);
	if (n > (int)sizeof(line) - 2)
		n = (int)sizeof(line) - 2;
	line[n++] = '\n';
	/* One write per line so concurrent threads never interleave. */
	if (write(STDERR_FILENO, line, (size_t)n) < 0) {
		/* Nowhere left to report a failure to report. */
	}
}
