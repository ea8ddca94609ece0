/*
 * log: one-line diagnostics on stderr.
 *
 * The server runs in the foreground and logs to stderr; a supervisor
 * (systemd, a test harness) owns timestamps and rotation, so lines carry
 * only the level and the message.  Safe to call from any thread: each
 * line is formatted into a local buffer and written with one write(2).
 */
#ifndef VOLTRACK_LOG_H
#define VOLTRACK_LOG_H

enum vt_log_level { VT_LOG_ERROR, VT_LOG_WARN, VT_LOG_INFO };

void vt_log(enum vt_log_level level, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

#define vt_error(...) vt_log(VT_LOG_ERROR, __VA_ARGS__)
#define vt_warn(...)  vt_log(VT_LOG_WARN, __VA_ARGS__)
#define vt_info(...)  vt_log(VT_LOG_INFO, __VA_ARGS__)

#endif
