#include "log.h"

#include <pthread.h>
#include <stdarg.h>
#include <string.h>
#include <strings.h>

#include "util.h"

/* The one piece of process-wide state: where logs go. Written once by main.c. */
static FILE *log_stream;
static gt_log_level log_min = GT_LOG_INFO;
static bool log_json;
static const char *log_component = "gantry";
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

gt_err gt_log_level_parse(const char *s, gt_log_level *out, gt_error *err)
{
    static const struct { const char *name; gt_log_level level; } names[] = {
        {"trace", GT_LOG_DEBUG}, {"debug", GT_LOG_DEBUG}, {"info", GT_LOG_INFO},
        {"warn", GT_LOG_WARN},   {"warning", GT_LOG_WARN}, {"error", GT_LOG_ERROR},
        {"off", GT_LOG_OFF},     {"disabled", GT_LOG_OFF},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (s && strcasecmp(s, names[i].name) == 0) {
            *out = names[i].level;
            return GT_OK;
        }
    }
    return gt_error_set(err, GT_EINVAL,
                        "unknown log level \"%s\" (expected debug, info, warn, error or off)",
                        s ? s : "");
}

const char *gt_log_level_name(gt_log_level level)
{
    static const char *names[] = {"DEBUG", "INFO", "WARN", "ERROR", "OFF"};
    return names[level <= GT_LOG_OFF ? level : GT_LOG_OFF];
}

void gt_log_setup(FILE *stream, gt_log_level level, bool json, const char *component)
{
    log_stream = stream;
    log_min = level;
    log_json = json;
    if (component)
        log_component = component;
}

static void json_escape(gt_buf *b, const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            gt_buf_printf(b, "\\%c", c);
        else if (c < 0x20)
            gt_buf_printf(b, "\\u%04x", c);
        else
            gt_buf_append(b, s, 1);
    }
}

void gt_log(gt_log_level level, const char *fmt, ...)
{
    if (level < log_min || level >= GT_LOG_OFF)
        return;
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    char ts[40];
    gt_format_time(gt_now_ms(), ts, sizeof ts);
    gt_buf line = {0};
    if (log_json) {
        gt_buf_printf(&line, "{\"time\":\"%s\",\"level\":\"%s\",\"component\":\"", ts,
                      gt_log_level_name(level));
        json_escape(&line, log_component);
        gt_buf_puts(&line, "\",\"message\":\"");
        json_escape(&line, msg);
        gt_buf_puts(&line, "\"}\n");
    } else {
        gt_buf_printf(&line, "%s %-5s %s: %s\n", ts, gt_log_level_name(level), log_component,
                      msg);
    }
    pthread_mutex_lock(&log_lock);
    FILE *f = log_stream ? log_stream : stderr;
    fputs(line.data, f);
    fflush(f);
    pthread_mutex_unlock(&log_lock);
    gt_buf_free(&line);
}
