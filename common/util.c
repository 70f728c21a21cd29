#include "util.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <malloc.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static void oom(size_t n)
{
    fprintf(stderr, "gantry: out of memory allocating %zu bytes\n", n);
    abort();
}

void *gt_xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (p == NULL)
        oom(n);
    return p;
}

void *gt_xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (p == NULL)
        oom(n * size);
    return p;
}

void *gt_xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (q == NULL)
        oom(n);
    return q;
}

char *gt_xstrdup(const char *s)
{
    return s ? gt_xstrndup(s, strlen(s)) : NULL;
}

char *gt_xstrndup(const char *s, size_t n)
{
    char *p = gt_xmalloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *gt_xasprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        oom(0);
    char *p = gt_xmalloc((size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(p, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return p;
}

static void buf_reserve(gt_buf *b, size_t extra)
{
    if (b->len + extra + 1 <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + extra + 1)
        cap *= 2;
    b->data = gt_xrealloc(b->data, cap);
    b->cap = cap;
}

void gt_buf_append(gt_buf *b, const void *p, size_t n)
{
    buf_reserve(b, n);
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
}

void gt_buf_puts(gt_buf *b, const char *s)
{
    gt_buf_append(b, s, strlen(s));
}

void gt_buf_printf(gt_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    buf_reserve(b, (size_t)n);
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

char *gt_buf_steal(gt_buf *b)
{
    if (b->data == NULL)
        return gt_xstrdup("");
    char *p = b->data;
    b->data = NULL;
    b->len = b->cap = 0;
    return p;
}

void gt_buf_free(gt_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

gt_err gt_parse_int64(const char *s, int64_t min, int64_t max, int64_t *out,
                      const char *what, gt_error *err)
{
    if (s == NULL || *s == '\0' || isspace((unsigned char)*s))
        return gt_error_set(err, GT_EINVAL, "%s: expected an integer, got \"%s\"", what,
                            s ? s : "");
    errno = 0;
    char *end = NULL;
    long long v = strtoll(s, &end, 10);
    if (end == s || *end != '\0')
        return gt_error_set(err, GT_EINVAL, "%s: expected an integer, got \"%s\"", what, s);
    if (errno == ERANGE || v < min || v > max)
        return gt_error_set(err, GT_EINVAL, "%s: %s is out of range [%lld, %lld]", what, s,
                            (long long)min, (long long)max);
    *out = (int64_t)v;
    return GT_OK;
}

gt_err gt_parse_bool(const char *s, bool *out, const char *what, gt_error *err)
{
    static const char *yes[] = {"true", "yes", "on", "1"};
    static const char *no[] = {"false", "no", "off", "0"};
    for (size_t i = 0; s && i < 4; i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = true;
            return GT_OK;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = false;
            return GT_OK;
        }
    }
    return gt_error_set(err, GT_EINVAL, "%s: expected true or false, got \"%s\"", what,
                        s ? s : "");
}

gt_err gt_read_file(const char *path, size_t max, char **out, size_t *len, gt_error *err)
{
    gt_err rc = GT_OK;
    gt_buf b = {0};
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return gt_error_set(err, errno == ENOENT ? GT_ENOTFOUND : GT_EIO, "%s: %s", path,
                            strerror(errno));
    char chunk[8192];
    for (;;) {
        ssize_t n = read(fd, chunk, sizeof chunk);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            rc = gt_error_set(err, GT_EIO, "%s: %s", path, strerror(errno));
            goto done;
        }
        if (n == 0)
            break;
        if (b.len + (size_t)n > max) {
            rc = gt_error_set(err, GT_EINVAL, "%s: larger than %zu bytes", path, max);
            goto done;
        }
        gt_buf_append(&b, chunk, (size_t)n);
    }
    if (len)
        *len = b.len;
    *out = gt_buf_steal(&b);
done:
    gt_buf_free(&b);
    close(fd);
    return rc;
}

gt_err gt_write_file_atomic(const char *path, const void *data, size_t len, int mode,
                            gt_error *err)
{
    gt_err rc = GT_OK;
    char *tmp = gt_xasprintf("%s.tmp.%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (fd < 0) {
        rc = gt_error_set(err, GT_EIO, "%s: %s", tmp, strerror(errno));
        goto done;
    }
    const char *p = data;
    size_t left = len;
    while (left > 0) {
        ssize_t n = write(fd, p, left);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            rc = gt_error_set(err, GT_EIO, "%s: %s", tmp, strerror(errno));
            break;
        }
        p += n;
        left -= (size_t)n;
    }
    if (rc == GT_OK && fsync(fd) != 0)
        rc = gt_error_set(err, GT_EIO, "%s: %s", tmp, strerror(errno));
    close(fd);
    if (rc == GT_OK && rename(tmp, path) != 0)
        rc = gt_error_set(err, GT_EIO, "%s: %s", path, strerror(errno));
    if (rc != GT_OK)
        unlink(tmp);
done:
    free(tmp);
    return rc;
}

gt_err gt_mkdir_p(const char *path, int mode, gt_error *err)
{
    char *p = gt_xstrdup(path);
    gt_err rc = GT_OK;
    for (char *s = p + 1; ; s++) {
        if (*s == '/' || *s == '\0') {
            char c = *s;
            *s = '\0';
            if (mkdir(p, (mode_t)mode) != 0 && errno != EEXIST) {
                rc = gt_error_set(err, GT_EIO, "mkdir %s: %s", p, strerror(errno));
                break;
            }
            *s = c;
            if (c == '\0')
                break;
        }
    }
    free(p);
    return rc;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

gt_err gt_rm_rf(const char *path, gt_error *err)
{
    struct stat st;
    if (lstat(path, &st) != 0)
        return errno == ENOENT ? GT_OK : gt_error_set(err, GT_EIO, "%s: %s", path, strerror(errno));
    if (nftw(path, rm_one, 32, FTW_DEPTH | FTW_PHYS) != 0)
        return gt_error_set(err, GT_EIO, "remove %s: %s", path, strerror(errno));
    return GT_OK;
}

char *gt_expand_home(const char *path)
{
    if (path[0] == '~' && (path[1] == '/' || path[1] == '\0')) {
        const char *home = getenv("HOME");
        return gt_xasprintf("%s%s", home ? home : "", path + 1);
    }
    return gt_xstrdup(path);
}

char *gt_path_join(const char *a, const char *b)
{
    if (b[0] == '/')
        return gt_xstrdup(b);
    size_t n = strlen(a);
    return gt_xasprintf("%s%s%s", a, (n && a[n - 1] == '/') ? "" : "/", b);
}

bool gt_file_exists(const char *path)
{
    return access(path, F_OK) == 0;
}

int64_t gt_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t gt_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void gt_format_time(int64_t ms, char *buf, size_t n)
{
    time_t s = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&s, &tm);
    char base[32];
    strftime(base, sizeof base, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf, n, "%s.%03dZ", base, (int)(ms % 1000));
}

gt_err gt_random_bytes(void *buf, size_t n, gt_error *err)
{
    unsigned char *p = buf;
    while (n > 0) {
        ssize_t got = getrandom(p, n, 0);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            return gt_error_set(err, GT_EIO, "getrandom: %s", strerror(errno));
        }
        p += got;
        n -= (size_t)got;
    }
    return GT_OK;
}

char *gt_id_new(void)
{
    /* ULID: 48-bit ms timestamp + 80 random bits, Crockford base32. */
    static const char alphabet[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    unsigned char raw[16];
    uint64_t ms = (uint64_t)gt_now_ms();
    for (int i = 0; i < 6; i++)
        raw[i] = (unsigned char)(ms >> (8 * (5 - i)));
    if (gt_random_bytes(raw + 6, 10, NULL) != GT_OK)
        abort(); /* the OS random source failing is not recoverable */
    char *out = gt_xmalloc(27);
    /* 128 bits -> 26 chars of 5 bits, the first char holding the top 3 bits. */
    int bit = -2; /* 26*5 = 130 bits: two leading zero bits */
    for (int c = 0; c < 26; c++) {
        int v = 0;
        for (int k = 0; k < 5; k++, bit++) {
            v <<= 1;
            if (bit >= 0)
                v |= (raw[bit / 8] >> (7 - bit % 8)) & 1;
        }
        out[c] = alphabet[v];
    }
    out[26] = '\0';
    return out;
}

bool gt_name_valid(const char *name)
{
    size_t n = name ? strlen(name) : 0;
    if (n == 0 || n > 128 || name[0] == '.' || name[0] == '-')
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)name[i];
        if (!isalnum(c) && c != '_' && c != '.' && c != '-')
            return false;
    }
    return true;
}

void gt_strv_push_owned(gt_strv *s, char *str)
{
    if (s->n + 2 > s->cap) {
        s->cap = s->cap ? s->cap * 2 : 8;
        s->v = gt_xrealloc(s->v, s->cap * sizeof *s->v);
    }
    s->v[s->n++] = str;
    s->v[s->n] = NULL;
}

void gt_strv_push(gt_strv *s, const char *str)
{
    gt_strv_push_owned(s, gt_xstrdup(str));
}

void gt_strv_free(gt_strv *s)
{
    for (size_t i = 0; i < s->n; i++)
        free(s->v[i]);
    free(s->v);
    s->v = NULL;
    s->n = s->cap = 0;
}

void gt_wipe(void *p, size_t n)
{
    if (p)
        explicit_bzero(p, n);
}

/* Length of the valid UTF-8 sequence at p (at most n bytes), or 0 when invalid. */
static size_t utf8_seq(const unsigned char *p, size_t n)
{
    unsigned c = p[0];
    size_t len;
    unsigned min;
    if (c < 0x80)
        return c ? 1 : 0;
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
        min = 0x80;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        min = 0x800;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        min = 0x10000;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    unsigned cp = c & (0x7F >> len);
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return len;
}

char *gt_utf8_clean(const char *p, size_t n, size_t *out_len)
{
    gt_buf b = {0};
    const unsigned char *s = (const unsigned char *)p;
    size_t i = 0, run = 0; /* run: valid bytes not copied yet, ending at i */
    gt_buf_append(&b, "", 0);
    while (i < n) {
        size_t l = utf8_seq(s + i, n - i);
        if (l) {
            i += l;
            run += l;
            continue;
        }
        gt_buf_append(&b, s + i - run, run);
        gt_buf_append(&b, "\xEF\xBF\xBD", 3);
        run = 0;
        i++;
    }
    gt_buf_append(&b, s + i - run, run);
    if (out_len)
        *out_len = b.len;
    return gt_buf_steal(&b);
}

size_t gt_utf8_cut(const char *p, size_t n)
{
    const unsigned char *s = (const unsigned char *)p;
    size_t i = n;
    /* back over continuation bytes to the lead byte of the last sequence */
    while (i > 0 && (s[i - 1] & 0xC0) == 0x80 && n - i < 3)
        i--;
    if (i == 0)
        return 0;
    size_t l = utf8_seq(s + i - 1, n - (i - 1));
    return l == n - (i - 1) ? n : i - 1;
}

void gt_malloc_tune(int arena_max, size_t mmap_threshold)
{
#ifdef __GLIBC__
    if (arena_max > 0)
        mallopt(M_ARENA_MAX, arena_max);
    if (mmap_threshold > 0 && mmap_threshold <= INT_MAX)
        mallopt(M_MMAP_THRESHOLD, (int)mmap_threshold);
#else
    (void)arena_max;
    (void)mmap_threshold;
#endif
}

void gt_raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    rlim_t want = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > (1u << 20) ? (1u << 20)
                                                                           : rl.rlim_max;
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < want) {
        rl.rlim_cur = want;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

int gt_cond_wait_ms(pthread_cond_t *cv, pthread_mutex_t *mu, int64_t ms)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += ms / 1000;
    until.tv_nsec += (ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    return pthread_cond_timedwait(cv, mu, &until);
}
