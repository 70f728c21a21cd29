/* Small helpers every module uses: allocation that aborts on OOM (decided once,
 * here), a growable string buffer, checked number parsing, files and ids. */
#ifndef GT_UTIL_H
#define GT_UTIL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"

/* Allocation: never returns NULL; aborts with a message on out-of-memory. */
void *gt_xmalloc(size_t n);
void *gt_xcalloc(size_t n, size_t size);
void *gt_xrealloc(void *p, size_t n);
char *gt_xstrdup(const char *s);                 /* NULL in, NULL out */
char *gt_xstrndup(const char *s, size_t n);
char *gt_xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Growable NUL-terminated buffer. */
typedef struct gt_buf {
    char *data;
    size_t len;
    size_t cap;
} gt_buf;
void gt_buf_append(gt_buf *b, const void *p, size_t n);
void gt_buf_puts(gt_buf *b, const char *s);
void gt_buf_printf(gt_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
char *gt_buf_steal(gt_buf *b);                   /* caller frees; b is reset */
void gt_buf_free(gt_buf *b);

/* Whole-string integer parsing with range checks; what names the value in the error. */
gt_err gt_parse_int64(const char *s, int64_t min, int64_t max, int64_t *out,
                      const char *what, gt_error *err);
/* "true/false/yes/no/on/off/1/0" (case-insensitive). */
gt_err gt_parse_bool(const char *s, bool *out, const char *what, gt_error *err);

/* Files. gt_read_file returns a NUL-terminated buffer the caller frees; max bounds the size. */
gt_err gt_read_file(const char *path, size_t max, char **out, size_t *len, gt_error *err);
/* Writes via a temporary file and rename, with the given mode. */
gt_err gt_write_file_atomic(const char *path, const void *data, size_t len, int mode,
                            gt_error *err);
gt_err gt_mkdir_p(const char *path, int mode, gt_error *err);
/* Removes a directory tree (no symlink following). */
gt_err gt_rm_rf(const char *path, gt_error *err);
/* "~/x" -> "$HOME/x"; returns a new string. */
char *gt_expand_home(const char *path);
char *gt_path_join(const char *a, const char *b);
bool gt_file_exists(const char *path);

/* Time. */
int64_t gt_now_ms(void);                          /* wall clock, ms since the epoch */
int64_t gt_mono_ms(void);                         /* monotonic */
/* Waits on cv (mu held) for at most ms (pthread_cond_timedwait's deadline, computed). */
int gt_cond_wait_ms(pthread_cond_t *cv, pthread_mutex_t *mu, int64_t ms);

/* Raises this process's soft limit of open descriptors to its hard limit (at most 2^20):
 * a runner holds about five per run, and the usual soft limit of 1024 would end a
 * runner of capacity 500 with EMFILE. Runs get their own limit ([runner] limits). */
void gt_raise_fd_limit(void);
/* Sets glibc malloc up for a small idle footprint; a daemon's main calls it first.
 * arena_max > 0 caps the per-thread arenas (each keeps its own free pages);
 * mmap_threshold > 0 fixes the size from which blocks get their own mapping (given back
 * at free) instead of letting glibc raise it after the first big free, which would
 * keep the next big block (argon2id's 19 MiB) in the heap for good. 0 leaves either
 * as glibc decides. No effect under the sanitizers, whose allocator ignores mallopt. */
void gt_malloc_tune(int arena_max, size_t mmap_threshold);
/* RFC 3339 UTC with milliseconds into buf (at least 32 bytes). */
void gt_format_time(int64_t ms, char *buf, size_t n);

/* A new id: 26-char ULID (time-ordered, 80 random bits from the OS); caller frees. */
char *gt_id_new(void);

/* Fills buf with n bytes from the OS random source. */
gt_err gt_random_bytes(void *buf, size_t n, gt_error *err);

/* A resource name: 1-128 chars of [A-Za-z0-9_.-], not starting with '.' or '-'. */
bool gt_name_valid(const char *name);

/* Output as text: a copy of p[0..n) in which every byte that is not part of a valid
 * UTF-8 sequence (RFC 3629: no overlongs, surrogates or values past U+10FFFF), and every
 * NUL, is replaced by U+FFFD; *out_len (may be NULL) is its length. Caller frees. */
char *gt_utf8_clean(const char *p, size_t n, size_t *out_len);
/* The length of the longest prefix of p[0..n) that ends on a UTF-8 sequence boundary
 * (p must be valid UTF-8): a cut there never splits a character. */
size_t gt_utf8_cut(const char *p, size_t n);

/* Zeroes n bytes of p in a way the compiler may not remove (secrets). */
void gt_wipe(void *p, size_t n);

/* NULL-terminated string vector. */
typedef struct gt_strv {
    char **v;
    size_t n;
    size_t cap;
} gt_strv;
void gt_strv_push(gt_strv *s, const char *str);   /* copies str */
void gt_strv_push_owned(gt_strv *s, char *str);   /* takes str */
void gt_strv_free(gt_strv *s);

#endif
