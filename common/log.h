/* Leveled, structured logs: one line per event, text or JSON, to a stream.
 * Never pass a secret value to a log call. */
#ifndef GT_LOG_H
#define GT_LOG_H

#include <stdbool.h>
#include <stdio.h>

#include "error.h"

typedef enum gt_log_level {
    GT_LOG_DEBUG = 0,
    GT_LOG_INFO,
    GT_LOG_WARN,
    GT_LOG_ERROR,
    GT_LOG_OFF
} gt_log_level;

/* Parses "debug|info|warn|warning|error|off|disabled|trace" (any case). */
gt_err gt_log_level_parse(const char *s, gt_log_level *out, gt_error *err);
const char *gt_log_level_name(gt_log_level level);

/* Sets where logs go (NULL: stderr), the lowest level printed and the format.
 * Process-wide, set once in main.c before threads start. */
void gt_log_setup(FILE *stream, gt_log_level level, bool json, const char *component);

void gt_log(gt_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define gt_debug(...) gt_log(GT_LOG_DEBUG, __VA_ARGS__)
#define gt_info(...) gt_log(GT_LOG_INFO, __VA_ARGS__)
#define gt_warn(...) gt_log(GT_LOG_WARN, __VA_ARGS__)
#define gt_errorlog(...) gt_log(GT_LOG_ERROR, __VA_ARGS__)

#endif
