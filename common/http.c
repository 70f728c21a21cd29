/* HTTP server (libevent 2.1 bufferevents, our own framing, a worker pool) and a
 * blocking client. The server's design is described above its code below.
 *
 * The client is a small blocking implementation (poll + OpenSSL over memory BIOs)
 * rather than evhttp's: evhttp 2.1 loses the cause of a refused connection (errno
 * is clobbered before its callback runs), and a CLI wants "connection refused" or
 * the certificate error in its message. All I/O uses MSG_NOSIGNAL, so no SIGPIPE. */
#include "http.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <event2/util.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "json.h"
#include "log.h"

#ifndef GANTRY_VERSION
#define GANTRY_VERSION "dev" /* the fuzz build does not pass it */
#endif

#define GT_HTTP_DEFAULT_TIMEOUT_MS 30000
#define GT_HTTP_MAX_HEADERS (64 * 1024)
#define GT_HTTP_MAX_QUEUE 4096                   /* pending jobs before 503 */
#define GT_HTTP_MAX_RESPONSE (256 * 1024 * 1024) /* client side: body */
#define GT_HTTP_MAX_RESPONSE_HEAD (64 * 1024)      /* client side: status line + headers */

/* ------------------------------------------------------------------------ */
/* Shared helpers */

/* OpenSSL's reason for the most recent error on this thread's queue, which is
 * then cleared (the queue is per thread, so concurrent calls do not mix). */
static void gt_http_ssl_reason(char *buf, size_t n, const char *fallback)
{
    unsigned long e, last = 0;
    while ((e = ERR_get_error()) != 0)
        last = e;
    const char *r = last ? ERR_reason_error_string(last) : NULL;
    if (r)
        snprintf(buf, n, "%s", r);
    else if (last)
        ERR_error_string_n(last, buf, n);
    else
        snprintf(buf, n, "%s", fallback);
}

static const char *gt_http_strerror(int e, char *buf, size_t n)
{
    /* GNU strerror_r: thread-safe, may return a static string instead of buf */
    return strerror_r(e, buf, n);
}

/* A byte that may not appear in a request line or header value we build. */
static bool gt_http_unsafe(const char *s)
{
    for (; s && *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return true;
    return false;
}

static SSL_CTX *gt_http_ssl_ctx(bool server, gt_error *err)
{
    SSL_CTX *ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
    if (ctx == NULL) {
        char why[256];
        gt_http_ssl_reason(why, sizeof why, "unknown error");
        gt_error_set(err, GT_ECRYPTO, "cannot create a TLS context: %s", why);
        return NULL;
    }
    if (!SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) ||
        !SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION)) {
        SSL_CTX_free(ctx);
        gt_error_set(err, GT_ECRYPTO, "cannot restrict TLS to versions 1.2 and 1.3");
        return NULL;
    }
    /* Renegotiation is a known CPU DoS on TLS 1.2 servers and nothing here needs it. */
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    return ctx;
}

static gt_err gt_http_ssl_load_pair(SSL_CTX *ctx, const char *cert, const char *key,
                                    gt_error *err)
{
    char why[256];
    ERR_clear_error();
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
        gt_http_ssl_reason(why, sizeof why, "cannot read");
        return gt_error_setf(err, GT_EINVAL, cert, "certificate %s: %s", cert, why);
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
        gt_http_ssl_reason(why, sizeof why, "cannot read");
        return gt_error_setf(err, GT_EINVAL, key, "private key %s: %s", key, why);
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        gt_http_ssl_reason(why, sizeof why, "does not match");
        return gt_error_setf(err, GT_EINVAL, key, "private key %s does not match certificate %s: %s",
                             key, cert, why);
    }
    return GT_OK;
}

/* ------------------------------------------------------------------------ */
/* Request framing (RFC 9112), strictly: whatever two parsers could read two ways is
 * refused, since that is how requests get smuggled past a proxy. */

#define GT_HTTP_MAX_LINE 8192         /* request line, before 414 */
#define GT_HTTP_MAX_FIELDS 100        /* header lines, before 431 */
#define GT_HTTP_MAX_CHUNK_LINE 4096   /* a chunk size line with its extensions */
#define GT_HTTP_MAX_TRAILERS 8192

static int gt_http_refuse(gt_http_head *h, int status, const char *why)
{
    h->status = status;
    h->why = why;
    return -1;
}

/* tchar (RFC 9110 5.6.2) */
static bool gt_http_tchar(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static bool gt_http_ows(char c)
{
    return c == ' ' || c == '\t';
}

/* The line at *pos, which must end in CRLF: 1 found (*n bytes without the CRLF, *pos
 * past it), 0 incomplete, -1 a bare CR or LF. */
static int gt_http_head_line(const char *d, size_t len, size_t *pos, size_t *n, gt_http_head *h)
{
    for (size_t i = *pos; i < len; i++) {
        if (d[i] == '\n')
            return gt_http_refuse(h, 400, "a line ends in LF without CR");
        if (d[i] == '\r') {
            if (i + 1 == len)
                return 0;
            if (d[i + 1] != '\n')
                return gt_http_refuse(h, 400, "bare CR in the request head");
            *n = i - *pos;
            *pos = i + 2;
            return 1;
        }
    }
    return 0;
}

/* The next element of a comma-separated list in [*p, end), OWS trimmed (may be empty);
 * false when the list is exhausted. */
static bool gt_http_list_next(const char **p, const char *end, const char **e, size_t *n)
{
    if (*p > end)
        return false;
    const char *s = *p, *comma = memchr(s, ',', (size_t)(end - s));
    const char *stop = comma ? comma : end;
    *p = comma ? comma + 1 : end + 1;
    while (s < stop && gt_http_ows(*s))
        s++;
    while (stop > s && gt_http_ows(stop[-1]))
        stop--;
    *e = s;
    *n = (size_t)(stop - s);
    return true;
}

static bool gt_http_word(const char *p, size_t n, const char *word)
{
    return n == strlen(word) && strncasecmp(p, word, n) == 0;
}

/* Content-Length: 1*DIGIT, or a list of equal ones (RFC 9110 8.6); every line must
 * agree with the ones before. */
static int gt_http_content_length_field(const char *v, size_t n, gt_http_head *h)
{
    const char *p = v, *e;
    size_t k;
    while (gt_http_list_next(&p, v + n, &e, &k)) {
        if (k == 0 || k > 18)
            return gt_http_refuse(h, 400, k ? "bad Content-Length (too large)" : "bad Content-Length");
        int64_t x = 0;
        for (size_t i = 0; i < k; i++) {
            if (e[i] < '0' || e[i] > '9')
                return gt_http_refuse(h, 400, "bad Content-Length (not a decimal number)");
            x = x * 10 + (e[i] - '0');
        }
        if (h->content_length >= 0 && h->content_length != x)
            return gt_http_refuse(h, 400, "conflicting Content-Length values");
        h->content_length = x;
    }
    return 0;
}

/* A Host value: uri-host [":" port], no whitespace, no userinfo. */
static bool gt_http_host_ok(const char *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)v[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              strchr("-._~!$&'()*+,;=:%[]", c) != NULL) || c == '\0')
            return false;
    }
    return true;
}

static const char *gt_http_method_of(const char *m, size_t n)
{
    static const char *const known[] = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"};
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (n == strlen(known[i]) && memcmp(m, known[i], n) == 0)
            return known[i];
    return NULL;
}

/* method SP request-target SP HTTP-version, each separated by exactly one space. */
static int gt_http_request_line(const char *l, size_t n, gt_http_head *h)
{
    size_t i = 0;
    while (i < n && gt_http_tchar((unsigned char)l[i]))
        i++;
    size_t mlen = i;
    if (mlen == 0 || i == n || l[i] != ' ')
        return gt_http_refuse(h, 400, "malformed request line");
    size_t t0 = ++i;
    for (; i < n && l[i] != ' '; i++)
        if ((unsigned char)l[i] <= 0x20 || (unsigned char)l[i] >= 0x7f)
            return gt_http_refuse(h, 400, "bad character in the request target");
    size_t tlen = i - t0;
    if (tlen == 0 || i == n)
        return gt_http_refuse(h, 400, "malformed request line");
    const char *v = l + i + 1;
    size_t vlen = n - i - 1;
    if (vlen != 8 || memcmp(v, "HTTP/", 5) != 0 || v[5] < '0' || v[5] > '9' || v[6] != '.' ||
        v[7] < '0' || v[7] > '9')
        return gt_http_refuse(h, 400, "malformed request line");
    if (v[5] != '1')
        return gt_http_refuse(h, 505, "HTTP version not supported (HTTP/1.0 and 1.1 are)");
    h->minor = v[7] == '0' ? 0 : 1;
    if ((h->method = gt_http_method_of(l, mlen)) == NULL)
        return gt_http_refuse(h, 501, "method not implemented");

    const char *t = l + t0;
    if (memchr(t, '#', tlen))
        return gt_http_refuse(h, 400, "a fragment in the request target");
    const char *path = NULL;
    size_t plen = 0;
    if (t[0] == '/') {
        path = t;
        plen = tlen;
    } else if (tlen == 1 && t[0] == '*' && strcmp(h->method, "OPTIONS") == 0) {
        path = t;
        plen = 1;
    } else {
        /* absolute-form (RFC 9112 3.2.2): the path starts after the authority */
        size_t skip = tlen > 7 && strncasecmp(t, "http://", 7) == 0    ? 7
                      : tlen > 8 && strncasecmp(t, "https://", 8) == 0 ? 8
                                                                        : 0;
        if (skip == 0)
            return gt_http_refuse(h, 400, "bad request target");
        size_t a = skip;
        while (a < tlen && t[a] != '/' && t[a] != '?')
            a++;
        if (a == skip)
            return gt_http_refuse(h, 400, "bad request target");
        path = t + a;
        plen = tlen - a;
    }
    const char *q = memchr(path, '?', plen);
    if (q) {
        h->query = q + 1;
        h->query_len = plen - (size_t)(q - path) - 1;
        plen = (size_t)(q - path);
    }
    h->path = plen ? path : "/";
    h->path_len = plen ? plen : 1;
    return 0;
}

int gt_http_parse_head(const char *d, size_t len, size_t max, gt_http_head *h)
{
    *h = (gt_http_head){.content_length = -1};
    size_t pos = 0, n = 0;
    int r;
    /* RFC 9112 2.2: empty lines before the request line are ignored */
    while (len - pos >= 2 && d[pos] == '\r' && d[pos + 1] == '\n')
        pos += 2;
    size_t line0 = pos;
    if ((r = gt_http_head_line(d, len, &pos, &n, h)) <= 0) {
        if (r == 0 && len - line0 > GT_HTTP_MAX_LINE)
            return gt_http_refuse(h, 414, "request line too long");
        if (r == 0 && len > max)
            return gt_http_refuse(h, 431, "request head too large");
        return r;
    }
    if (n > GT_HTTP_MAX_LINE)
        return gt_http_refuse(h, 414, "request line too long");
    if (gt_http_request_line(d + line0, n, h) != 0)
        return -1;

    int fields = 0, hosts = 0;
    bool te = false, keep_alive = false;
    for (;;) {
        size_t l0 = pos;
        if ((r = gt_http_head_line(d, len, &pos, &n, h)) <= 0) {
            if (r == 0 && len > max)
                return gt_http_refuse(h, 431, "request head too large");
            return r;
        }
        if (pos > max)
            return gt_http_refuse(h, 431, "request head too large");
        const char *l = d + l0;
        if (n == 0)
            break;
        if (gt_http_ows(l[0]))
            return gt_http_refuse(h, 400, "obs-fold (a header line that starts with whitespace) "
                                          "is not accepted");
        if (++fields > GT_HTTP_MAX_FIELDS)
            return gt_http_refuse(h, 431, "too many header fields");
        size_t k = 0;
        while (k < n && gt_http_tchar((unsigned char)l[k]))
            k++;
        if (k < n && k > 0 && gt_http_ows(l[k])) {
            size_t w = k;
            while (w < n && gt_http_ows(l[w]))
                w++;
            if (w < n && l[w] == ':')
                return gt_http_refuse(h, 400, "whitespace between a header name and the colon");
        }
        if (k == n && memchr(l, ':', n) == NULL)
            return gt_http_refuse(h, 400, "a header line with no colon");
        if (k == 0 || k == n || l[k] != ':')
            return gt_http_refuse(h, 400, "a header name that is not a token");
        const char *v = l + k + 1, *vend = l + n;
        while (v < vend && gt_http_ows(*v))
            v++;
        while (vend > v && gt_http_ows(vend[-1]))
            vend--;
        size_t vn = (size_t)(vend - v);
        for (size_t i = 0; i < vn; i++) {
            unsigned char c = (unsigned char)v[i];
            if ((c < 0x20 && c != '\t') || c == 0x7f)
                return gt_http_refuse(h, 400, "control character in a header value");
        }

        if (gt_http_word(l, k, "Content-Length")) {
            if (gt_http_content_length_field(v, vn, h) != 0)
                return -1;
        } else if (gt_http_word(l, k, "Transfer-Encoding")) {
            /* only chunked, once: Gantry decodes no other coding */
            const char *p = v, *e;
            size_t en;
            te = true;
            while (gt_http_list_next(&p, vend, &e, &en)) {
                if (en == 0)
                    continue;
                if (!gt_http_word(e, en, "chunked"))
                    return gt_http_refuse(h, 400, "unsupported transfer coding (only chunked is accepted)");
                if (h->chunked)
                    return gt_http_refuse(h, 400, "transfer coding chunked applied twice");
                h->chunked = true;
            }
        } else if (gt_http_word(l, k, "Host")) {
            if (++hosts > 1)
                return gt_http_refuse(h, 400, "more than one Host header");
            if (!gt_http_host_ok(v, vn))
                return gt_http_refuse(h, 400, "bad Host header");
        } else if (gt_http_word(l, k, "Connection")) {
            const char *p = v, *e;
            size_t en;
            while (gt_http_list_next(&p, vend, &e, &en)) {
                if (gt_http_word(e, en, "close"))
                    h->close = true;
                else if (gt_http_word(e, en, "keep-alive"))
                    keep_alive = true;
            }
        } else if (gt_http_word(l, k, "Expect")) {
            if (!gt_http_word(v, vn, "100-continue"))
                return gt_http_refuse(h, 417, "only Expect: 100-continue is supported");
            h->expect_continue = true;
        } else if (gt_http_word(l, k, "Authorization")) {
            if (h->authorization)
                return gt_http_refuse(h, 400, "more than one Authorization header");
            h->authorization = v;
            h->authorization_len = vn;
        } else if (gt_http_word(l, k, "Content-Type")) {
            if (h->content_type)
                return gt_http_refuse(h, 400, "more than one Content-Type header");
            h->content_type = v;
            h->content_type_len = vn;
        } else if (gt_http_word(l, k, "Idempotency-Key")) {
            if (h->idempotency_key)
                return gt_http_refuse(h, 400, "more than one Idempotency-Key header");
            h->idempotency_key = v;
            h->idempotency_key_len = vn;
        }
    }
    if (te && h->content_length >= 0)
        return gt_http_refuse(h, 400, "both Transfer-Encoding and Content-Length");
    if (te && h->minor == 0)
        return gt_http_refuse(h, 400, "Transfer-Encoding in an HTTP/1.0 request");
    if (te && !h->chunked)
        return gt_http_refuse(h, 400, "empty Transfer-Encoding: no transfer coding named");
    if (h->minor == 1 && hosts == 0)
        return gt_http_refuse(h, 400, "missing Host header (required in HTTP/1.1)");
    (void)keep_alive; /* HTTP/1.0 connections are not kept: one request, one answer */
    if (h->minor == 0)
        h->close = true;
    h->size = pos;
    return 1;
}

enum {
    CK_SIZE0,      /* the first hex digit of a chunk size */
    CK_SIZE,       /* more digits, ';', whitespace or CR */
    CK_BWS,        /* whitespace after the size: more of it, or ';' */
    CK_EXT,        /* a chunk extension, up to CR */
    CK_SIZE_LF,
    CK_DATA,
    CK_DATA_CR,
    CK_DATA_LF,
    CK_TRAILER0,   /* the start of a trailer line, or CR of the final empty line */
    CK_TRAILER,
    CK_TRAILER_LF,
    CK_END_LF,
    CK_DONE
};

static int gt_http_hex(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : (c | 0x20) >= 'a' && (c | 0x20) <= 'f' ? (c | 0x20) - 'a' + 10 : -1;
}

long gt_http_chunked_decode(gt_http_chunked *c, const char *in, size_t len, gt_buf *body,
                            uint64_t max, bool *done, const char **why)
{
    size_t i = 0;
    *done = c->state == CK_DONE;
#define CK_BAD(msg) \
    do {            \
        *why = msg; \
        return -1;  \
    } while (0)
    while (i < len && c->state != CK_DONE) {
        char ch = in[i];
        unsigned char u = (unsigned char)ch;
        switch (c->state) {
        case CK_SIZE0:
        case CK_SIZE: {
            int x = gt_http_hex(ch);
            if (x >= 0) {
                if (c->left > (UINT64_MAX >> 4) || ++c->line > 16)
                    CK_BAD("bad chunk size (too large)");
                c->left = c->left * 16 + (uint64_t)x;
                c->state = CK_SIZE;
            } else if (c->state == CK_SIZE0) {
                CK_BAD("bad chunk size");
            } else if (ch == '\r') {
                c->state = CK_SIZE_LF;
            } else if (ch == ';') {
                c->state = CK_EXT;
            } else if (gt_http_ows(ch)) {
                c->state = CK_BWS;
            } else {
                CK_BAD("bad chunk size");
            }
            i++;
            break;
        }
        case CK_BWS:
            if (ch == ';')
                c->state = CK_EXT;
            else if (!gt_http_ows(ch))
                CK_BAD("bad chunk size line");
            i++;
            break;
        case CK_EXT:
            if (ch == '\r')
                c->state = CK_SIZE_LF;
            else if ((u < 0x20 && ch != '\t') || u == 0x7f)
                CK_BAD("control character in a chunk extension");
            else if (++c->line > GT_HTTP_MAX_CHUNK_LINE)
                CK_BAD("chunk extension too long");
            i++;
            break;
        case CK_SIZE_LF:
            if (ch != '\n')
                CK_BAD("bare CR in a chunk size line");
            c->line = 0;
            c->state = c->left ? CK_DATA : CK_TRAILER0;
            i++;
            break;
        case CK_DATA: {
            size_t take = len - i;
            if ((uint64_t)take > c->left)
                take = (size_t)c->left;
            if (c->total + take > max) {
                *why = "request body too large";
                return -2;
            }
            if (body)
                gt_buf_append(body, in + i, take);
            c->total += take;
            c->left -= take;
            i += take;
            if (c->left == 0)
                c->state = CK_DATA_CR;
            break;
        }
        case CK_DATA_CR:
            if (ch != '\r')
                CK_BAD("chunk data longer than its size (no CRLF after it)");
            c->state = CK_DATA_LF;
            i++;
            break;
        case CK_DATA_LF:
            if (ch != '\n')
                CK_BAD("bare CR after chunk data");
            c->state = CK_SIZE0;
            i++;
            break;
        case CK_TRAILER0:
            if (ch == '\r') {
                c->state = CK_END_LF;
            } else if (!gt_http_tchar(u)) {
                CK_BAD(gt_http_ows(ch) ? "obs-fold in the trailers" : "bad trailer line");
            } else {
                c->colon = false;
                c->state = CK_TRAILER;
            }
            if (++c->trailers > GT_HTTP_MAX_TRAILERS)
                CK_BAD("trailers too large");
            i++;
            break;
        case CK_TRAILER:
            if (ch == '\r') {
                if (!c->colon)
                    CK_BAD("a trailer line with no colon");
                c->state = CK_TRAILER_LF;
            } else if (ch == ':') {
                c->colon = true;
            } else if ((u < 0x20 && ch != '\t') || u == 0x7f) {
                CK_BAD("control character in a trailer");
            } else if (!c->colon && !gt_http_tchar(u)) {
                CK_BAD("a trailer name that is not a token");
            }
            if (++c->trailers > GT_HTTP_MAX_TRAILERS)
                CK_BAD("trailers too large");
            i++;
            break;
        case CK_TRAILER_LF:
        case CK_END_LF:
            if (ch != '\n')
                CK_BAD("bare CR in the trailers");
            c->state = c->state == CK_END_LF ? CK_DONE : CK_TRAILER0;
            i++;
            break;
        default:
            CK_BAD("chunked decoder misused");
        }
    }
#undef CK_BAD
    *done = c->state == CK_DONE;
    return (long)i;
}

/* ------------------------------------------------------------------------ */
/* Server
 *
 * The loop thread accepts connections (evconnlistener), reads and frames requests
 * with gt_http_parse_head and gt_http_chunked_decode, and queues each complete one
 * as a job; a worker runs the handler and puts the job on a done queue, then wakes
 * the loop through a pipe (not event_active, so the caller's base needs no evthread
 * set-up). The loop writes the reply. evhttp (libevent 2.1) is not used: it folds
 * obs-fold lines into the previous value, takes the first of two Content-Length
 * headers, reads "+2" as 2, lets every byte push its timeout back, and has no cap on
 * connections or buffered bytes, and none of that can be fixed from outside it.
 *
 * A connection is in one state at a time: reading a head (one deadline for the whole
 * head: a client sending a byte at a time does not keep it open), reading a body (a
 * pause of timeout_ms ends it), waiting for its handler, writing the reply, or
 * lingering: after a reply that closes, the write side is shut and what the client
 * still sends is read and dropped for a while, so that closing on unread bytes does
 * not reset the connection and destroy the answer before the client reads it.
 * Pipelined requests wait in the input buffer (bounded by its high watermark) until
 * the reply before them is written. */

#define GT_HTTP_READ_HIGH (GT_HTTP_MAX_HEADERS + 16384) /* input buffer per connection */
#define GT_HTTP_REJECT_SLOTS 64   /* connections over the cap still told 503 */
#define GT_HTTP_LINGER_MS 5000

typedef struct gt_http_job gt_http_job;
typedef struct gt_http_sconn gt_http_sconn;

typedef enum {
    GT_HTTP_C_HEAD,
    GT_HTTP_C_BODY,
    GT_HTTP_C_HANDLER,
    GT_HTTP_C_WRITING,
    GT_HTTP_C_LINGER
} gt_http_cstate;

struct gt_http_server {
    struct event_base *base;
    struct evconnlistener *listener;
    struct event *accept_retry;  /* re-enables the listener after EMFILE */
    SSL_CTX *ssl_ctx;
    struct event *wake_ev;
    int wake_fd[2];              /* workers write a byte, the loop reads */
    int port;
    int64_t max_body;
    int64_t timeout_ms;
    int64_t max_conns;
    int64_t max_buffered;
    gt_http_handler handler;
    void *arg;

    pthread_t *threads;
    struct gt_http_worker_arg *wargs;
    int nthreads;                /* started */

    /* Under mu: the work queue, the done queue and the stop flag. */
    pthread_mutex_t mu;
    pthread_cond_t cond;
    gt_http_job *work_head, *work_tail;
    size_t work_len;
    gt_http_job *done_head, *done_tail;
    bool stop;

    /* Loop thread only. */
    gt_http_sconn *conns;        /* every open connection */
    int64_t nconns;              /* served connections, counted against max_conns */
    int nrejects;                /* connections over the cap being told 503 */
    uint64_t refused;            /* since the last warning about it */
    int64_t refused_logged;      /* gt_mono_ms() of that warning */
    int64_t buffered;            /* request bytes held: input buffers, bodies, jobs */
    size_t njobs;
    bool closing;                /* gt_http_server_free started: answer 503 */
};

struct gt_http_worker_arg {
    gt_http_server *s;
    int index;
};

struct gt_http_job {
    gt_http_job *qnext;          /* work or done queue, under s->mu */
    gt_http_server *s;
    gt_http_sconn *conn;         /* NULL once the connection is gone (loop thread) */
    bool queued;                 /* handed to the workers (loop thread) */
    bool head_only;              /* HEAD: the reply has no body */
    atomic_bool orphaned;        /* lets a worker skip a request nobody waits for */
    size_t charge;               /* bytes of s->buffered this job holds */
    gt_http_request in;
    gt_http_response out;
    char *path, *query, *authorization, *content_type, *idempotency_key, *body;
    char peer[64];
};

struct gt_http_sconn {
    gt_http_server *s;
    gt_http_sconn *prev, *next;
    struct bufferevent *bev;
    struct event *timer;
    gt_http_cstate state;
    bool reject;                 /* over max_connections: told 503, counted apart */
    bool close_after;            /* close once the reply is written */
    bool peer_eof;               /* the client sent all it will send */
    bool got_bytes;              /* part of a head has arrived (a timeout gets a 408) */
    bool read_all;               /* the last request was read to its end */
    size_t scanned;              /* head bytes already searched for a line end */
    size_t charge;               /* bytes of s->buffered for the input and body */
    gt_http_job *job;            /* the request being read or handled */
    int64_t body_left;           /* Content-Length body: bytes still to come */
    bool chunked;
    gt_http_chunked ck;
    gt_buf body;
    char peer[64];
};

static void gt_http_conn_free(gt_http_sconn *c);
static void gt_http_process(gt_http_sconn *c);

static void gt_http_arm(gt_http_sconn *c, int64_t ms)
{
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    evtimer_add(c->timer, &tv);
}

/* Brings s->buffered up to date with what c holds in its input buffer and body. */
static void gt_http_charge(gt_http_sconn *c)
{
    size_t now = evbuffer_get_length(bufferevent_get_input(c->bev)) + c->body.len;
    c->s->buffered += (int64_t)now - (int64_t)c->charge;
    c->charge = now;
}

static void gt_http_job_free(gt_http_job *job)
{
    gt_http_server *s = job->s;
    s->buffered -= (int64_t)job->charge;
    s->njobs--;
    free(job->path);
    free(job->query);
    free(job->authorization);
    free(job->content_type);
    free(job->idempotency_key);
    free(job->body);
    free(job->out.body);
    free(job->out.retry_after);
    free(job);
}

static const char *gt_http_reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 417: return "Expectation Failed";
    case 422: return "Unprocessable Content";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return status < 400 ? "OK" : "Error";
    }
}

static void gt_http_free_ref(const void *data, size_t len, void *extra)
{
    (void)len;
    (void)extra;
    free((void *)data);
}

/* Queues one reply on c; body (malloc'd, may be NULL) is taken over. Moves c to
 * WRITING: the write callback goes on once it is sent. */
static void gt_http_write_reply(gt_http_sconn *c, int status, const char *ctype, char *body,
                                size_t len, bool head_only, const char *retry_after)
{
    struct evbuffer *out = bufferevent_get_output(c->bev);
    char date[64];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    bool no_body = status == 204 || status == 304;
    evbuffer_add_printf(out, "HTTP/1.1 %d %s\r\nDate: %s\r\n", status, gt_http_reason(status), date);
    if (!no_body)
        evbuffer_add_printf(out, "Content-Type: %s\r\nContent-Length: %zu\r\n",
                            ctype ? ctype : "application/json", len);
    if (retry_after)
        evbuffer_add_printf(out, "Retry-After: %s\r\n", retry_after);
    evbuffer_add(out, c->close_after ? "Connection: close\r\n\r\n" : "\r\n",
                 c->close_after ? 21 : 2);
    if (body && len && !no_body && !head_only)
        evbuffer_add_reference(out, body, len, gt_http_free_ref, NULL);
    else
        free(body);
    c->state = GT_HTTP_C_WRITING;
    bufferevent_enable(c->bev, EV_WRITE);
}

/* Answers {"error":{"code":..,"message":..}} from the loop thread, dropping the request
 * being read. close: the connection ends after it (framing errors always do). */
static void gt_http_reply_error(gt_http_sconn *c, int status, const char *code, const char *message,
                                bool close)
{
    bool head_only = c->job && c->job->head_only; /* a HEAD answer has no body */
    if (c->job && !c->job->queued) {
        gt_http_job_free(c->job);
        c->job = NULL;
    }
    gt_buf_free(&c->body);
    event_del(c->timer);
    if (close)
        c->close_after = true;
    cJSON *doc = cJSON_CreateObject();
    cJSON *e = cJSON_AddObjectToObject(doc, "error");
    gt_json_set_str(e, "code", code);
    gt_json_set_str(e, "message", message);
    char *body = gt_json_print(doc);
    cJSON_Delete(doc);
    gt_http_write_reply(c, status, NULL, body, strlen(body), head_only, status == 503 ? "1" : NULL);
    gt_http_charge(c);
}

static const char *gt_http_error_code(int status)
{
    switch (status) {
    case 408: return "timeout";
    case 413: case 414: case 431: return "too_large";
    case 501: case 505: return "not_implemented";
    case 503: return "unavailable";
    default: return "invalid_argument";
    }
}

/* Lets the workers have the request read into c->job. */
static void gt_http_dispatch(gt_http_sconn *c)
{
    gt_http_server *s = c->s;
    gt_http_job *job = c->job;
    if (c->body.len > 0) {
        job->in.body_len = c->body.len;
        job->charge += c->body.len;
        s->buffered += (int64_t)c->body.len;
        job->body = gt_buf_steal(&c->body);
    }
    gt_buf_free(&c->body);
    gt_http_charge(c);
    c->read_all = true;
    job->in.body = job->body;
    event_del(c->timer);
    pthread_mutex_lock(&s->mu);
    bool full = s->work_len >= GT_HTTP_MAX_QUEUE;
    pthread_mutex_unlock(&s->mu);
    if (full) {
        gt_http_reply_error(c, 503, "unavailable", "server busy", false);
        return;
    }
    job->queued = true;
    c->state = GT_HTTP_C_HANDLER;
    pthread_mutex_lock(&s->mu);
    if (s->work_tail)
        s->work_tail->qnext = job;
    else
        s->work_head = job;
    s->work_tail = job;
    s->work_len++;
    pthread_cond_signal(&s->cond);
    pthread_mutex_unlock(&s->mu);
}

static bool gt_http_over_cap(gt_http_sconn *c)
{
    if (c->s->buffered <= c->s->max_buffered)
        return false;
    gt_http_reply_error(c, 503, "unavailable",
                        "server busy: too many request bytes in flight, retry later", true);
    return true;
}

/* HEAD state: parses what arrived. True when a body is to be read next. */
static bool gt_http_read_head(gt_http_sconn *c)
{
    gt_http_server *s = c->s;
    struct evbuffer *in = bufferevent_get_input(c->bev);
    size_t len = evbuffer_get_length(in);
    if (len == 0) {
        if (c->peer_eof)
            gt_http_conn_free(c);
        return false;
    }
    c->got_bytes = true;
    c->read_all = false;
    gt_http_charge(c);
    if (gt_http_over_cap(c))
        return false;
    size_t n = len < GT_HTTP_MAX_HEADERS + 1 ? len : GT_HTTP_MAX_HEADERS + 1;
    const char *p = (const char *)evbuffer_pullup(in, (ev_ssize_t)n);
    /* parse again only once a new line end arrived (or the head is too large): a head
     * sent a byte at a time is not parsed again for every byte */
    if (c->scanned > n)
        c->scanned = 0;
    if (n <= GT_HTTP_MAX_HEADERS && memchr(p + c->scanned, '\n', n - c->scanned) == NULL) {
        c->scanned = n;
        if (c->peer_eof)
            gt_http_conn_free(c);
        return false;
    }
    gt_http_head h;
    int r = gt_http_parse_head(p, n, GT_HTTP_MAX_HEADERS, &h);
    if (r == 0) {
        c->scanned = n;
        if (c->peer_eof)
            gt_http_conn_free(c);
        return false;
    }
    if (r < 0) {
        gt_http_reply_error(c, h.status, gt_http_error_code(h.status), h.why, true);
        return false;
    }
    gt_http_job *job = gt_xcalloc(1, sizeof *job);
    job->s = s;
    job->conn = c;
    atomic_init(&job->orphaned, false);
    job->path = gt_xstrndup(h.path, h.path_len);
    job->query = h.query ? gt_xstrndup(h.query, h.query_len) : NULL;
    job->authorization = h.authorization ? gt_xstrndup(h.authorization, h.authorization_len) : NULL;
    job->content_type = h.content_type ? gt_xstrndup(h.content_type, h.content_type_len) : NULL;
    job->idempotency_key = h.idempotency_key
                               ? gt_xstrndup(h.idempotency_key, h.idempotency_key_len) : NULL;
    snprintf(job->peer, sizeof job->peer, "%s", c->peer);
    job->head_only = strcmp(h.method, "HEAD") == 0;
    job->in = (gt_http_request){
        .method = h.method,
        .path = job->path,
        .query = job->query,
        .authorization = job->authorization,
        .content_type = job->content_type,
        .idempotency_key = job->idempotency_key,
        .peer = job->peer,
    };
    job->charge = h.size;
    s->buffered += (int64_t)h.size;
    s->njobs++;
    c->job = job;
    c->close_after = h.close;
    c->scanned = 0;
    c->got_bytes = false;
    evbuffer_drain(in, h.size);
    gt_http_charge(c);

    char msg[128];
    bool has_body = h.content_length > 0 || h.chunked;
    bool body_method = strcmp(h.method, "POST") == 0 || strcmp(h.method, "PUT") == 0 ||
                       strcmp(h.method, "PATCH") == 0;
    if (s->closing) {
        gt_http_reply_error(c, 503, "unavailable", "server shutting down", true);
        return false;
    }
    if (has_body && !body_method) {
        snprintf(msg, sizeof msg, "%s requests take no body", h.method);
        gt_http_reply_error(c, 400, "invalid_argument", msg, true);
        return false;
    }
    if (h.content_length > s->max_body) {
        snprintf(msg, sizeof msg, "request body over %lld bytes", (long long)s->max_body);
        gt_http_reply_error(c, 413, "too_large", msg, true);
        return false;
    }
    if (!has_body) {
        gt_http_dispatch(c);
        return false;
    }
    if (h.expect_continue && h.minor == 1)
        evbuffer_add(bufferevent_get_output(c->bev), "HTTP/1.1 100 Continue\r\n\r\n", 25);
    c->state = GT_HTTP_C_BODY;
    c->chunked = h.chunked;
    c->body_left = h.chunked ? 0 : h.content_length;
    c->ck = (gt_http_chunked){0};
    gt_http_arm(c, s->timeout_ms);
    return true;
}

/* BODY state: takes what arrived into c->body. */
static void gt_http_read_body(gt_http_sconn *c)
{
    gt_http_server *s = c->s;
    struct evbuffer *in = bufferevent_get_input(c->bev);
    size_t len = evbuffer_get_length(in);
    bool done = false;
    if (len > 0)
        gt_http_arm(c, s->timeout_ms); /* a pause, not the whole body, is limited */
    if (!c->chunked) {
        size_t take = (uint64_t)len < (uint64_t)c->body_left ? len : (size_t)c->body_left;
        if (take) {
            gt_buf_append(&c->body, evbuffer_pullup(in, (ev_ssize_t)take), take);
            evbuffer_drain(in, take);
            c->body_left -= (int64_t)take;
        }
        done = c->body_left == 0;
    } else if (len > 0) {
        const char *why = NULL;
        long used = gt_http_chunked_decode(&c->ck, (const char *)evbuffer_pullup(in, -1), len,
                                           &c->body, (uint64_t)s->max_body, &done, &why);
        if (used == -2) {
            char msg[128];
            snprintf(msg, sizeof msg, "request body over %lld bytes", (long long)s->max_body);
            gt_http_reply_error(c, 413, "too_large", msg, true);
            return;
        }
        if (used < 0) {
            gt_http_reply_error(c, 400, "invalid_argument", why, true);
            return;
        }
        evbuffer_drain(in, (size_t)used);
    }
    gt_http_charge(c);
    if (gt_http_over_cap(c))
        return;
    if (done)
        gt_http_dispatch(c);
    else if (c->peer_eof)
        gt_http_conn_free(c); /* the body will not be finished */
}

static void gt_http_process(gt_http_sconn *c)
{
    switch (c->state) {
    case GT_HTTP_C_HEAD:
        if (gt_http_read_head(c))
            gt_http_read_body(c);
        break;
    case GT_HTTP_C_BODY:
        gt_http_read_body(c);
        break;
    case GT_HTTP_C_LINGER:
        evbuffer_drain(bufferevent_get_input(c->bev), evbuffer_get_length(bufferevent_get_input(c->bev)));
        if (c->peer_eof)
            gt_http_conn_free(c);
        break;
    case GT_HTTP_C_HANDLER:
    case GT_HTTP_C_WRITING:
        /* a pipelined request waits; the watermark bounds it, and past the cap this
         * connection reads nothing more until its reply is written */
        gt_http_charge(c);
        if (c->s->buffered > c->s->max_buffered)
            bufferevent_disable(c->bev, EV_READ);
        break;
    }
}

static void gt_http_on_read(struct bufferevent *bev, void *arg)
{
    (void)bev;
    gt_http_process(arg);
}

/* The reply is written: close, or read the next request. */
static void gt_http_on_write(struct bufferevent *bev, void *arg)
{
    gt_http_sconn *c = arg;
    if (c->state != GT_HTTP_C_WRITING || evbuffer_get_length(bufferevent_get_output(bev)) > 0)
        return;
    struct evbuffer *in = bufferevent_get_input(bev);
    if (!c->close_after) {
        c->state = GT_HTTP_C_HEAD;
        bufferevent_enable(bev, EV_READ);
        gt_http_arm(c, c->s->timeout_ms);
        gt_http_process(c);
        return;
    }
    if (c->peer_eof || (c->read_all && evbuffer_get_length(in) == 0)) {
        gt_http_conn_free(c);
        return;
    }
    /* the client may still be sending: drop it for a while, so that its unread bytes
     * do not turn the close into a reset that destroys the answer */
    c->state = GT_HTTP_C_LINGER;
    evbuffer_drain(in, evbuffer_get_length(in));
    gt_http_charge(c);
    shutdown(bufferevent_getfd(bev), SHUT_WR);
    bufferevent_setwatermark(bev, EV_READ, 0, 0);
    bufferevent_enable(bev, EV_READ);
    gt_http_arm(c, c->s->timeout_ms < GT_HTTP_LINGER_MS ? c->s->timeout_ms : GT_HTTP_LINGER_MS);
}

static void gt_http_on_event(struct bufferevent *bev, short what, void *arg)
{
    gt_http_sconn *c = arg;
    if (what & BEV_EVENT_CONNECTED)
        return; /* the TLS handshake is done */
    if ((what & BEV_EVENT_EOF) && !(what & (BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT))) {
        c->peer_eof = true;
        if (c->state == GT_HTTP_C_HANDLER || c->state == GT_HTTP_C_WRITING)
            return; /* answered all the same; closed once nothing is left to read */
        gt_http_process(c);
        return;
    }
    if (c->s->ssl_ctx && (what & BEV_EVENT_ERROR)) {
        unsigned long e = bufferevent_get_openssl_error(bev);
        if (e)
            gt_debug("http: TLS with %s failed: %s", c->peer, ERR_reason_error_string(e));
        ERR_clear_error();
    }
    gt_http_conn_free(c);
}

static void gt_http_on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    gt_http_sconn *c = arg;
    if ((c->state == GT_HTTP_C_HEAD && c->got_bytes) || c->state == GT_HTTP_C_BODY)
        gt_http_reply_error(c, 408, "timeout", "the request did not arrive in time", true);
    else
        gt_http_conn_free(c); /* idle, lingering, or a rejected one that did not read */
}

static void gt_http_conn_free(gt_http_sconn *c)
{
    gt_http_server *s = c->s;
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    if (c->job) {
        if (c->job->queued) {
            c->job->conn = NULL; /* freed when the worker hands it back */
            atomic_store(&c->job->orphaned, true);
        } else {
            gt_http_job_free(c->job);
        }
    }
    s->buffered -= (int64_t)c->charge;
    if (c->reject)
        s->nrejects--;
    else
        s->nconns--;
    event_free(c->timer);
    bufferevent_free(c->bev);
    gt_buf_free(&c->body);
    free(c);
}

static void gt_http_send_job(gt_http_job *job)
{
    gt_http_sconn *c = job->conn;
    gt_http_response *r = &job->out;
    int status = r->status;
    if (status < 200 || status > 599) {
        if (status != 0)
            gt_warn("http: handler returned status %d for %s %s; answering 500", status,
                    job->in.method, job->in.path);
        free(r->body);
        r->body = gt_xstrdup("{\"error\":{\"code\":\"internal\",\"message\":\"no response\"}}");
        r->body_len = strlen(r->body);
        r->content_type = NULL;
        status = 500;
    }
    c->job = NULL;
    const char *retry = r->retry_after && !gt_http_unsafe(r->retry_after) ? r->retry_after : NULL;
    char *body = r->body;
    r->body = NULL;
    gt_http_write_reply(c, status, r->content_type, body, body ? r->body_len : 0, job->head_only, retry);
    gt_http_job_free(job);
}

/* Loop thread: sends the replies the workers finished. */
static void gt_http_deliver(gt_http_server *s)
{
    pthread_mutex_lock(&s->mu);
    gt_http_job *list = s->done_head;
    s->done_head = s->done_tail = NULL;
    pthread_mutex_unlock(&s->mu);
    while (list) {
        gt_http_job *job = list;
        list = job->qnext;
        job->qnext = NULL;
        if (job->conn == NULL)
            gt_http_job_free(job); /* the client left meanwhile */
        else
            gt_http_send_job(job);
    }
}

static void gt_http_on_wake(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    char drain[256];
    /* drain before taking the queue: a push after the take writes a new byte */
    while (read(fd, drain, sizeof drain) > 0)
        ;
    gt_http_deliver(arg);
}

static void *gt_http_worker(void *arg)
{
    struct gt_http_worker_arg *wa = arg;
    gt_http_server *s = wa->s;
    int index = wa->index;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (s->work_head == NULL && !s->stop)
            pthread_cond_wait(&s->cond, &s->mu);
        gt_http_job *job = s->work_head;
        if (job == NULL)
            break; /* stopping and the queue is empty */
        s->work_head = job->qnext;
        if (s->work_head == NULL)
            s->work_tail = NULL;
        s->work_len--;
        job->qnext = NULL;
        pthread_mutex_unlock(&s->mu);

        if (!atomic_load(&job->orphaned))
            s->handler(s->arg, index, &job->in, &job->out);

        pthread_mutex_lock(&s->mu);
        bool was_empty = s->done_head == NULL;
        if (s->done_tail)
            s->done_tail->qnext = job;
        else
            s->done_head = job;
        s->done_tail = job;
        if (was_empty) {
            ssize_t w;
            do
                w = write(s->wake_fd[1], "", 1);
            while (w < 0 && errno == EINTR);
            /* EAGAIN: the pipe is full of wake-ups already */
        }
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

static void gt_http_on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
                              int salen, void *arg)
{
    (void)l;
    (void)salen;
    gt_http_server *s = arg;
    bool reject = s->nconns >= s->max_conns;
    if (reject && s->nrejects >= GT_HTTP_REJECT_SLOTS) {
        evutil_closesocket(fd); /* nothing can be answered: close before reading */
        s->refused++;
        return;
    }
    /* A response goes out as soon as it is written: with Nagle on, the last segment of
     * a reply larger than one segment waits for the client's delayed ACK (40 ms). */
    int one = 1;
    if (sa && sa->sa_family != AF_UNIX)
        (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct bufferevent *bev = NULL;
    int opts = BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS;
    if (s->ssl_ctx) {
        SSL *ssl = SSL_new(s->ssl_ctx);
        if (ssl)
            bev = bufferevent_openssl_socket_new(s->base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING, opts);
        if (ssl && bev == NULL)
            SSL_free(ssl);
        /* a client that closes without close_notify has still sent a complete request */
        if (bev)
            bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
    } else {
        bev = bufferevent_socket_new(s->base, fd, opts);
    }
    if (bev == NULL) {
        gt_warn("http: cannot set up a connection (out of memory)");
        evutil_closesocket(fd);
        return;
    }
    gt_http_sconn *c = gt_xcalloc(1, sizeof *c);
    c->s = s;
    c->bev = bev;
    c->reject = reject;
    if (reject)
        s->nrejects++;
    else
        s->nconns++;
    c->timer = evtimer_new(s->base, gt_http_on_timer, c);
    if (c->timer == NULL) {
        gt_errorlog("http: evtimer_new failed (out of memory)");
        abort();
    }
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((struct sockaddr_in *)sa)->sin_addr, c->peer, sizeof c->peer);
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)sa)->sin6_addr, c->peer, sizeof c->peer);
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    bufferevent_setcb(bev, gt_http_on_read, gt_http_on_write, gt_http_on_event, c);
    bufferevent_setwatermark(bev, EV_READ, 0, GT_HTTP_READ_HIGH);
    struct timeval wt = {.tv_sec = s->timeout_ms / 1000, .tv_usec = (s->timeout_ms % 1000) * 1000};
    bufferevent_set_timeouts(bev, NULL, &wt);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
    gt_http_arm(c, s->timeout_ms); /* the TLS handshake and the first head */
    c->state = GT_HTTP_C_HEAD;
    if (reject) {
        s->refused++;
        int64_t now = gt_mono_ms();
        if (now - s->refused_logged >= 1000) { /* once a second, not once a connection */
            gt_warn("http: %lld connections open ([server] max_connections): %llu refused",
                    (long long)s->nconns, (unsigned long long)s->refused);
            s->refused_logged = now;
            s->refused = 0;
        }
        gt_http_reply_error(c, 503, "unavailable", "too many connections, retry later", true);
        gt_http_arm(c, s->timeout_ms); /* bounds the whole refusal */
    }
}

static void gt_http_on_accept_retry(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    gt_http_server *s = arg;
    if (s->listener)
        evconnlistener_enable(s->listener);
}

/* accept() failed for a reason that will not go away by itself (no descriptors left):
 * pause accepting for a second rather than spin. */
static void gt_http_on_accept_error(struct evconnlistener *l, void *arg)
{
    gt_http_server *s = arg;
    char eb[128];
    int e = EVUTIL_SOCKET_ERROR();
    gt_warn("http: accept: %s; pausing for a second", gt_http_strerror(e, eb, sizeof eb));
    evconnlistener_disable(l);
    struct timeval tv = {.tv_sec = 1};
    evtimer_add(s->accept_retry, &tv);
}

static gt_err gt_http_start_workers(gt_http_server *s, int n, gt_error *err)
{
    s->threads = gt_xcalloc((size_t)n, sizeof *s->threads);
    s->wargs = gt_xcalloc((size_t)n, sizeof *s->wargs);
    for (int i = 0; i < n; i++) {
        s->wargs[i] = (struct gt_http_worker_arg){.s = s, .index = i};
        int rc = pthread_create(&s->threads[i], NULL, gt_http_worker, &s->wargs[i]);
        if (rc != 0) {
            char eb[128];
            return gt_error_set(err, GT_EAGAIN, "cannot start HTTP worker thread: %s",
                                gt_http_strerror(rc, eb, sizeof eb));
        }
        s->nthreads++;
    }
    return GT_OK;
}

static void gt_http_stop_workers(gt_http_server *s)
{
    pthread_mutex_lock(&s->mu);
    s->stop = true;
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->mu);
    for (int i = 0; i < s->nthreads; i++)
        pthread_join(s->threads[i], NULL);
    s->nthreads = 0;
}

static void gt_http_on_deadline(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    *(bool *)arg = true;
}

/* Jobs not answered yet, or replies not written yet. */
static bool gt_http_busy(const gt_http_server *s)
{
    if (s->njobs > 0)
        return true;
    for (const gt_http_sconn *c = s->conns; c; c = c->next)
        if (c->state == GT_HTTP_C_WRITING)
            return true;
    return false;
}

/* After the workers are joined: send the finished replies and run the loop until
 * they are written or the timeout passes. Called after the caller's loop returned;
 * if it is still running (a callback freed us), event_base_loop refuses and the
 * replies are dropped with their connections. */
static void gt_http_drain(gt_http_server *s)
{
    gt_http_deliver(s);
    if (!gt_http_busy(s))
        return;
    bool expired = false;
    struct event *timer = evtimer_new(s->base, gt_http_on_deadline, &expired);
    struct timeval tv = {.tv_sec = s->timeout_ms / 1000, .tv_usec = (s->timeout_ms % 1000) * 1000};
    if (timer == NULL || evtimer_add(timer, &tv) != 0) {
        if (timer)
            event_free(timer);
        return;
    }
    while (gt_http_busy(s) && !expired)
        if (event_base_loop(s->base, EVLOOP_ONCE) != 0)
            break;
    event_free(timer);
}

static void gt_http_destroy(gt_http_server *s)
{
    if (s->listener) {
        evconnlistener_free(s->listener);
        s->listener = NULL;
    }
    s->closing = true;
    gt_http_stop_workers(s);
    if (s->wake_ev)
        gt_http_drain(s);
    /* whatever is left: connections that did not take their reply in time, idle ones */
    bool freed = s->conns != NULL;
    while (s->conns)
        gt_http_conn_free(s->conns);
    /* a bufferevent with a deferred callback pending is released by that callback:
     * let it run, or freeing the base would leak it (refused while the caller's loop
     * runs, which then runs them itself) */
    for (int i = 0; freed && i < 2; i++)
        event_base_loop(s->base, EVLOOP_NONBLOCK);
    gt_http_deliver(s); /* nothing should be left; frees what is */
    if (s->accept_retry)
        event_free(s->accept_retry);
    if (s->wake_ev)
        event_free(s->wake_ev);
    for (int i = 0; i < 2; i++)
        if (s->wake_fd[i] >= 0)
            close(s->wake_fd[i]);
    SSL_CTX_free(s->ssl_ctx);
    pthread_cond_destroy(&s->cond);
    pthread_mutex_destroy(&s->mu);
    free(s->threads);
    free(s->wargs);
    free(s);
}

/* A listening socket on address:port, or -1 with err set. */
static int gt_http_listen(const char *address, int64_t port, gt_error *err)
{
    char ps[16], eb[128];
    snprintf(ps, sizeof ps, "%lld", (long long)port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(address, ps, &hints, &res);
    if (rc != 0) {
        gt_error_set(err, GT_EUNAVAIL, "cannot listen on %s:%lld: %s", address, (long long)port,
                     rc == EAI_SYSTEM ? gt_http_strerror(errno, eb, sizeof eb) : gai_strerror(rc));
        return -1;
    }
    int fd = -1, e = 0;
    for (struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            e = errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, 511) != 0) {
            e = errno;
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(res);
    if (fd < 0)
        gt_error_set(err, GT_EUNAVAIL, "cannot listen on %s:%lld: %s", address, (long long)port,
                     gt_http_strerror(e, eb, sizeof eb));
    return fd;
}

gt_http_server *gt_http_server_new(struct event_base *base, const gt_http_server_config *cfg,
                                   gt_error *err)
{
    if (base == NULL || cfg == NULL || cfg->handler == NULL || cfg->listen_address == NULL) {
        gt_error_set(err, GT_EINVAL, "http server: base, listen_address and handler are required");
        return NULL;
    }
    if (cfg->port < 0 || cfg->port > 65535) {
        gt_error_setf(err, GT_EINVAL, "port", "port %lld out of range 0-65535", (long long)cfg->port);
        return NULL;
    }
    if (cfg->workers < 1 || cfg->workers > 1024) {
        gt_error_set(err, GT_EINVAL, "http server: workers %d out of range 1-1024", cfg->workers);
        return NULL;
    }
    if (cfg->max_body_size < 1 || cfg->timeout_ms < 0 || cfg->max_connections < 0 ||
        cfg->max_buffered_bytes < 0) {
        gt_error_set(err, GT_EINVAL, "http server: max_body_size must be positive; timeout_ms, "
                                     "max_connections and max_buffered_bytes >= 0");
        return NULL;
    }
    int64_t max_buffered = cfg->max_buffered_bytes ? cfg->max_buffered_bytes : GT_HTTP_DEFAULT_MAX_BUFFERED;
    if (max_buffered < cfg->max_body_size) {
        gt_error_setf(err, GT_EINVAL, "max_buffered_bytes",
                      "max_buffered_bytes (%lld) is below max_body_size (%lld): no request of the "
                      "largest size could be read",
                      (long long)max_buffered, (long long)cfg->max_body_size);
        return NULL;
    }
    if (cfg->use_tls && (cfg->certificate_file == NULL || cfg->private_key_file == NULL)) {
        gt_error_set(err, GT_EINVAL, "http server: use_tls needs certificate_file and private_key_file");
        return NULL;
    }
    if (cfg->client_cert_auth && (!cfg->use_tls || cfg->ca_certificate_file == NULL)) {
        gt_error_setf(err, GT_EINVAL, "client_cert_auth",
                      "http server: client_cert_auth needs use_tls and a CA certificate file to "
                      "verify client certificates against");
        return NULL;
    }

    gt_http_server *s = gt_xcalloc(1, sizeof *s);
    s->base = base;
    s->wake_fd[0] = s->wake_fd[1] = -1;
    s->max_body = cfg->max_body_size;
    s->timeout_ms = cfg->timeout_ms ? cfg->timeout_ms : GT_HTTP_DEFAULT_TIMEOUT_MS;
    s->max_conns = cfg->max_connections ? cfg->max_connections : GT_HTTP_DEFAULT_MAX_CONNECTIONS;
    s->max_buffered = max_buffered;
    s->handler = cfg->handler;
    s->arg = cfg->arg;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cond, NULL);

    char eb[128];
    if (cfg->use_tls) {
        if ((s->ssl_ctx = gt_http_ssl_ctx(true, err)) == NULL)
            goto fail;
        if (gt_http_ssl_load_pair(s->ssl_ctx, cfg->certificate_file, cfg->private_key_file, err) != GT_OK)
            goto fail;
        SSL_CTX_set_mode(s->ssl_ctx, SSL_MODE_RELEASE_BUFFERS); /* idle keep-alives */
        static const unsigned char sid[] = "gantry";
        SSL_CTX_set_session_id_context(s->ssl_ctx, sid, sizeof sid - 1);
        if (cfg->client_cert_auth) {
            const char *ca = cfg->ca_certificate_file;
            char why[256];
            ERR_clear_error();
            STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(ca);
            if (SSL_CTX_load_verify_locations(s->ssl_ctx, ca, NULL) != 1 || names == NULL) {
                if (names)
                    sk_X509_NAME_pop_free(names, X509_NAME_free);
                gt_http_ssl_reason(why, sizeof why, "no certificate in it");
                gt_error_setf(err, GT_EINVAL, ca, "CA certificate %s: %s", ca, why);
                goto fail;
            }
            SSL_CTX_set_client_CA_list(s->ssl_ctx, names); /* takes names */
            SSL_CTX_set_verify(s->ssl_ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
        }
    }
    if (pipe2(s->wake_fd, O_NONBLOCK | O_CLOEXEC) != 0) {
        gt_error_set(err, GT_EIO, "http server: pipe: %s", gt_http_strerror(errno, eb, sizeof eb));
        goto fail;
    }
    s->wake_ev = event_new(base, s->wake_fd[0], EV_READ | EV_PERSIST, gt_http_on_wake, s);
    if (s->wake_ev == NULL || event_add(s->wake_ev, NULL) != 0) {
        gt_error_set(err, GT_EINTERNAL, "http server: cannot add the wake-up event");
        goto fail;
    }
    if ((s->accept_retry = evtimer_new(base, gt_http_on_accept_retry, s)) == NULL) {
        gt_error_set(err, GT_ENOMEM, "http server: evtimer_new failed");
        goto fail;
    }
    int fd = gt_http_listen(cfg->listen_address, cfg->port, err);
    if (fd < 0)
        goto fail;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) != 0) {
        gt_error_set(err, GT_EIO, "http server: getsockname: %s", gt_http_strerror(errno, eb, sizeof eb));
        close(fd);
        goto fail;
    }
    s->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                             : ((struct sockaddr_in *)&ss)->sin_port);
    /* CLOSE_ON_EXEC also marks the accepted sockets: runs must not inherit them */
    s->listener = evconnlistener_new(base, gt_http_on_accept, s,
                                     LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, -1, fd);
    if (s->listener == NULL) {
        close(fd);
        gt_error_set(err, GT_ENOMEM, "http server: evconnlistener_new failed");
        goto fail;
    }
    evconnlistener_set_error_cb(s->listener, gt_http_on_accept_error);
    if (gt_http_start_workers(s, cfg->workers, err) != GT_OK)
        goto fail;
    return s;

fail:
    gt_http_destroy(s);
    return NULL;
}

int gt_http_server_port(const gt_http_server *s)
{
    return s ? s->port : 0;
}

void gt_http_server_free(gt_http_server **sp)
{
    if (sp == NULL || *sp == NULL)
        return;
    gt_http_destroy(*sp);
    *sp = NULL;
}

/* ------------------------------------------------------------------------ */
/* Client */

typedef struct gt_http_conn {
    int fd;
    SSL *ssl;
    BIO *rbio, *wbio;            /* owned by ssl: network bytes in and out */
    int64_t deadline;            /* gt_mono_ms() */
    char why[256];               /* the cause when a step fails */
} gt_http_conn;

/* Waits until fd is ready for events; -1 with why set on timeout or error. */
static int gt_http_wait(gt_http_conn *c, short events)
{
    for (;;) {
        int64_t left = c->deadline - gt_mono_ms();
        if (left <= 0) {
            snprintf(c->why, sizeof c->why, "timed out");
            return -1;
        }
        struct pollfd p = {.fd = c->fd, .events = events};
        int n = poll(&p, 1, left > INT_MAX ? INT_MAX : (int)left);
        if (n > 0)
            return 0;
        if (n < 0 && errno != EINTR) {
            char eb[128];
            snprintf(c->why, sizeof c->why, "poll: %s", gt_http_strerror(errno, eb, sizeof eb));
            return -1;
        }
    }
}

static int gt_http_send_raw(gt_http_conn *c, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
        if (w > 0) {
            p += w;
            n -= (size_t)w;
        } else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (gt_http_wait(c, POLLOUT) != 0)
                return -1;
        } else if (w < 0 && errno != EINTR) {
            char eb[128];
            snprintf(c->why, sizeof c->why, "%s", gt_http_strerror(errno, eb, sizeof eb));
            return -1;
        }
    }
    return 0;
}

/* One read: >0 bytes, 0 end of stream, -1 error (why set). */
static ssize_t gt_http_recv_raw(gt_http_conn *c, char *p, size_t n)
{
    for (;;) {
        ssize_t r = recv(c->fd, p, n, 0);
        if (r >= 0)
            return r;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            if (gt_http_wait(c, POLLIN) != 0)
                return -1;
        } else if (errno != EINTR) {
            char eb[128];
            snprintf(c->why, sizeof c->why, "%s", gt_http_strerror(errno, eb, sizeof eb));
            return -1;
        }
    }
}

/* Sends what OpenSSL wrote to its outgoing memory BIO. */
static int gt_http_tls_flush(gt_http_conn *c)
{
    char buf[16384];
    int n;
    while ((n = BIO_read(c->wbio, buf, sizeof buf)) > 0)
        if (gt_http_send_raw(c, buf, (size_t)n) != 0)
            return -1;
    return 0;
}

/* After an SSL call returned rc: 1 retry, -1 failed (why set), 0 clean end of stream. */
static int gt_http_tls_step(gt_http_conn *c, int rc, const char *what)
{
    int e = SSL_get_error(c->ssl, rc);
    if (gt_http_tls_flush(c) != 0)
        return -1;
    if (e == SSL_ERROR_WANT_WRITE)
        return 1;
    if (e == SSL_ERROR_WANT_READ) {
        char buf[16384];
        ssize_t r = gt_http_recv_raw(c, buf, sizeof buf);
        if (r < 0)
            return -1;
        if (r == 0)
            BIO_set_mem_eof_return(c->rbio, 0); /* OpenSSL now sees the end of stream */
        else
            BIO_write(c->rbio, buf, (int)r);
        return 1;
    }
    if (e == SSL_ERROR_ZERO_RETURN)
        return 0;
    long v = SSL_get_verify_result(c->ssl);
    if (v != X509_V_OK) {
        snprintf(c->why, sizeof c->why, "certificate verify failed: %s",
                 X509_verify_cert_error_string(v));
    } else {
        char reason[200];
        gt_http_ssl_reason(reason, sizeof reason,
                           e == SSL_ERROR_SYSCALL ? "connection closed" : "protocol error");
        snprintf(c->why, sizeof c->why, "TLS %s: %s", what, reason);
    }
    ERR_clear_error();
    return -1;
}

static int gt_http_conn_write(gt_http_conn *c, const char *p, size_t n)
{
    if (c->ssl == NULL)
        return gt_http_send_raw(c, p, n);
    while (n > 0) {
        size_t w = 0;
        int rc = SSL_write_ex(c->ssl, p, n, &w);
        if (rc == 1) {
            p += w;
            n -= w;
            continue;
        }
        if (gt_http_tls_step(c, rc, "write") != 1) {
            if (c->why[0] == '\0')
                snprintf(c->why, sizeof c->why, "connection closed");
            return -1;
        }
    }
    return gt_http_tls_flush(c);
}

static ssize_t gt_http_conn_read(gt_http_conn *c, char *p, size_t n)
{
    if (c->ssl == NULL)
        return gt_http_recv_raw(c, p, n);
    for (;;) {
        size_t r = 0;
        int rc = SSL_read_ex(c->ssl, p, n, &r);
        if (rc == 1)
            return (ssize_t)r;
        int st = gt_http_tls_step(c, rc, "read");
        if (st <= 0)
            return st;
    }
}

static bool gt_http_is_ip(const char *host)
{
    unsigned char tmp[16];
    return inet_pton(AF_INET, host, tmp) == 1 || inet_pton(AF_INET6, host, tmp) == 1;
}

static int gt_http_tls_connect(gt_http_conn *c, SSL_CTX *ctx, const char *host)
{
    c->ssl = SSL_new(ctx);
    c->rbio = BIO_new(BIO_s_mem());
    c->wbio = BIO_new(BIO_s_mem());
    if (c->ssl == NULL || c->rbio == NULL || c->wbio == NULL) {
        BIO_free(c->rbio);
        BIO_free(c->wbio);
        c->rbio = c->wbio = NULL;
        snprintf(c->why, sizeof c->why, "out of memory for TLS");
        return -1;
    }
    BIO_set_mem_eof_return(c->rbio, -1); /* empty means "retry", not end of stream */
    SSL_set_bio(c->ssl, c->rbio, c->wbio);
    bool ip = gt_http_is_ip(host);
    int ok = ip ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl), host)
                : SSL_set_tlsext_host_name(c->ssl, host) && SSL_set1_host(c->ssl, host);
    if (!ok) {
        snprintf(c->why, sizeof c->why, "cannot set the TLS host name");
        return -1;
    }
    SSL_set_hostflags(c->ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    SSL_set_connect_state(c->ssl);
    for (;;) {
        int rc = SSL_do_handshake(c->ssl);
        if (rc == 1)
            return gt_http_tls_flush(c);
        int st = gt_http_tls_step(c, rc, "handshake");
        if (st != 1) {
            if (st == 0 || c->why[0] == '\0')
                snprintf(c->why, sizeof c->why, "connection closed during the TLS handshake");
            return -1;
        }
    }
}

static int gt_http_tcp_connect(gt_http_conn *c, const char *host, int64_t port)
{
    char ps[16], eb[128];
    snprintf(ps, sizeof ps, "%lld", (long long)port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(host, ps, &hints, &res);
    if (rc != 0) {
        snprintf(c->why, sizeof c->why, "%s",
                 rc == EAI_SYSTEM ? gt_http_strerror(errno, eb, sizeof eb) : gai_strerror(rc));
        return -1;
    }
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            snprintf(c->why, sizeof c->why, "socket: %s", gt_http_strerror(errno, eb, sizeof eb));
            continue;
        }
        c->fd = fd;
        int one = 1; /* a request's headers and body are separate writes: no Nagle wait */
        (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        int e = 0;
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
            e = errno;
            if (e == EINPROGRESS || e == EINTR) {
                socklen_t el = sizeof e;
                if (gt_http_wait(c, POLLOUT) != 0)
                    e = -1; /* why says timed out */
                else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &el) != 0)
                    e = errno;
            }
        }
        if (e == 0) {
            c->why[0] = '\0';
            break;
        }
        if (e > 0)
            snprintf(c->why, sizeof c->why, "%s", gt_http_strerror(e, eb, sizeof eb));
        close(fd);
        c->fd = -1;
        if (e < 0)
            break; /* out of time for the other addresses too */
    }
    freeaddrinfo(res);
    return c->fd >= 0 ? 0 : -1;
}

/* One line of the header block at *pos (CRLF or LF); NULL when incomplete. */
static const char *gt_http_line(const char *data, size_t len, size_t *pos, size_t *line_len)
{
    const char *start = data + *pos;
    const char *nl = memchr(start, '\n', len - *pos);
    if (nl == NULL)
        return NULL;
    size_t n = (size_t)(nl - start);
    *pos += n + 1;
    if (n > 0 && start[n - 1] == '\r')
        n--;
    *line_len = n;
    return start;
}

static bool gt_http_token_eq(const char *p, size_t n, const char *word)
{
    size_t w = strlen(word);
    return n == w && strncasecmp(p, word, w) == 0;
}

/* Parses a response in data[0..len). Returns 1 complete (status and body set), 0 needs
 * more bytes, -1 bad (why set). eof says the stream ended after data. Called after
 * every read, so it re-parses only the header block unless the body may be complete. */
static int gt_http_parse_response(const char *data, size_t len, bool eof, bool head, int *status,
                                  gt_buf *body, const char **why)
{
    size_t pos = 0, n = 0;
    int code = 0;
    int64_t clen = -1;
    bool chunked = false;
    for (;;) { /* skips 1xx interim responses */
        const char *l = gt_http_line(data, len, &pos, &n);
        if (l == NULL)
            goto more_head;
        if (n < 12 || strncmp(l, "HTTP/1.", 7) != 0 || l[8] != ' ' || l[9] < '1' || l[9] > '5' ||
            l[10] < '0' || l[10] > '9' || l[11] < '0' || l[11] > '9' || (n > 12 && l[12] != ' ')) {
            *why = "not an HTTP response";
            return -1;
        }
        code = (l[9] - '0') * 100 + (l[10] - '0') * 10 + (l[11] - '0');
        clen = -1;
        chunked = false;
        for (;;) {
            l = gt_http_line(data, len, &pos, &n);
            if (l == NULL)
                goto more_head;
            if (n == 0)
                break;
            const char *colon = memchr(l, ':', n);
            if (colon == NULL) {
                *why = "malformed response header";
                return -1;
            }
            size_t nlen = (size_t)(colon - l);
            const char *v = colon + 1;
            size_t vlen = n - nlen - 1;
            while (vlen && (*v == ' ' || *v == '\t'))
                v++, vlen--;
            while (vlen && (v[vlen - 1] == ' ' || v[vlen - 1] == '\t'))
                vlen--;
            if (gt_http_token_eq(l, nlen, "Content-Length")) {
                int64_t x = 0;
                char tmp[24];
                if (vlen == 0 || vlen >= sizeof tmp) {
                    *why = "bad Content-Length";
                    return -1;
                }
                memcpy(tmp, v, vlen);
                tmp[vlen] = '\0';
                if (gt_parse_int64(tmp, 0, INT64_MAX, &x, "Content-Length", NULL) != GT_OK ||
                    (clen >= 0 && x != clen)) {
                    *why = "bad Content-Length";
                    return -1;
                }
                clen = x;
            } else if (gt_http_token_eq(l, nlen, "Transfer-Encoding")) {
                /* chunked when it is the last coding */
                size_t k = vlen;
                while (k > 0 && v[k - 1] != ',' && v[k - 1] != ' ')
                    k--;
                chunked = gt_http_token_eq(v + k, vlen - k, "chunked");
            }
        }
        if (code >= 200 || code == 101)
            break;
    }
    gt_buf_free(body);
    gt_buf_append(body, "", 0); /* an empty answer is "" rather than NULL */
    if (head || code == 204 || code == 304 || (code >= 100 && code < 200))
        goto done;
    if (chunked) {
        /* the last chunk and the trailers end in an empty line: until the data does,
         * or the stream ended, there is no point walking the chunks */
        if (!eof && !(len >= 2 && data[len - 1] == '\n' &&
                      (data[len - 2] == '\n' || (len >= 3 && data[len - 2] == '\r' && data[len - 3] == '\n'))))
            return 0;
        for (;;) {
            const char *l = gt_http_line(data, len, &pos, &n);
            if (l == NULL)
                goto more;
            size_t i = 0;
            uint64_t size = 0;
            for (; i < n && isxdigit((unsigned char)l[i]); i++) {
                if (size > (UINT64_MAX >> 4)) {
                    *why = "bad chunk size";
                    return -1;
                }
                size = size * 16 + (uint64_t)(l[i] <= '9' ? l[i] - '0' : (l[i] | 0x20) - 'a' + 10);
            }
            if (i == 0 || (i < n && l[i] != ';' && l[i] != ' ' && l[i] != '\t')) {
                *why = "bad chunk size";
                return -1;
            }
            if (size == 0)
                break;
            if (size > len - pos)
                goto more;
            if (body->len + size > GT_HTTP_MAX_RESPONSE) {
                *why = "response too large";
                return -1;
            }
            gt_buf_append(body, data + pos, (size_t)size);
            pos += (size_t)size;
            l = gt_http_line(data, len, &pos, &n);
            if (l == NULL)
                goto more;
            if (n != 0) {
                *why = "bad chunk terminator";
                return -1;
            }
        }
        for (;;) { /* trailers up to an empty line */
            const char *l = gt_http_line(data, len, &pos, &n);
            if (l == NULL)
                goto more;
            if (n == 0)
                break;
        }
        goto done;
    }
    if (clen > GT_HTTP_MAX_RESPONSE) {
        *why = "response too large";
        return -1;
    }
    if (clen >= 0) {
        if ((uint64_t)clen > len - pos)
            goto more;
        gt_buf_append(body, data + pos, (size_t)clen);
        goto done;
    }
    if (len - pos > GT_HTTP_MAX_RESPONSE) {
        *why = "response too large";
        return -1;
    }
    if (!eof)
        return 0; /* delimited by the end of the connection */
    gt_buf_append(body, data + pos, len - pos);
done:
    *status = code;
    return 1;
more_head:
    if (len > GT_HTTP_MAX_RESPONSE_HEAD) {
        *why = "response headers too large";
        return -1;
    }
more:
    if (eof) {
        *why = len == 0 ? "connection closed without an answer"
                        : "connection closed before the response was complete";
        return -1;
    }
    return 0;
}

gt_err gt_http_request_send(const gt_http_client_config *cfg, const char *method,
                            const char *path_and_query, const char *token, const char *body,
                            size_t body_len, int *status, char **resp, gt_error *err)
{
    return gt_http_request_send_ex(cfg, method, path_and_query, token, body, body_len, status,
                                   resp, NULL, err);
}

gt_err gt_http_request_send_ex(const gt_http_client_config *cfg, const char *method,
                               const char *path_and_query, const char *token, const char *body,
                               size_t body_len, int *status, char **resp, bool *unsent,
                               gt_error *err)
{
    gt_err rc = GT_OK;
    bool wrote = false;   /* a byte of the request may have reached the server */
    if (unsent)
        *unsent = false;
    SSL_CTX *ctx = NULL;
    gt_http_conn c = {.fd = -1};
    char write_why[sizeof c.why] = "";
    gt_buf req = {0}, out = {0};
    char *in = NULL;
    size_t in_len = 0, in_cap = 0;
    if (status)
        *status = 0;
    if (resp)
        *resp = NULL;

    if (cfg == NULL || cfg->host == NULL || cfg->host[0] == '\0' || method == NULL ||
        path_and_query == NULL || status == NULL || resp == NULL) {
        return gt_error_set(err, GT_EINVAL, "http request: host, method, path and outputs are required");
    }
    const char *scheme = cfg->use_tls ? "https" : "http";
    if (cfg->port < 1 || cfg->port > 65535)
        return gt_error_set(err, GT_EINVAL, "%s://%s: port %lld out of range 1-65535", scheme,
                            cfg->host, (long long)cfg->port);
    if (path_and_query[0] != '/' || strpbrk(path_and_query, " ") || gt_http_unsafe(path_and_query) ||
        gt_http_unsafe(token) || gt_http_unsafe(cfg->host) || strpbrk(cfg->host, " /"))
        return gt_error_set(err, GT_EINVAL, "http request: bad characters in host, path or token");
    static const char *const methods[] = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"};
    size_t mi = 0;
    while (mi < sizeof methods / sizeof methods[0] && strcmp(methods[mi], method) != 0)
        mi++;
    if (mi == sizeof methods / sizeof methods[0])
        return gt_error_set(err, GT_EINVAL, "http request: unsupported method %.16s", method);
    bool body_method = mi >= 2 && mi <= 4;
    if (body && !body_method)
        return gt_error_set(err, GT_EINVAL, "http request: %s takes no body", method);

    int64_t timeout = cfg->timeout_ms > 0 ? cfg->timeout_ms : GT_HTTP_DEFAULT_TIMEOUT_MS;
    c.deadline = gt_mono_ms() + timeout;
    bool v6 = strchr(cfg->host, ':') != NULL;
    const char *lb = v6 ? "[" : "", *rb = v6 ? "]" : "";

    if (cfg->use_tls) {
        ERR_clear_error();
        if ((ctx = gt_http_ssl_ctx(false, err)) == NULL) {
            rc = GT_ECRYPTO;
            goto done;
        }
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
        /* servers (ours included) may close without close_notify; the HTTP framing
         * checks below catch a truncated answer instead */
        SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
        char why[256];
        if (cfg->ca_certificate_file) {
            if (SSL_CTX_load_verify_locations(ctx, cfg->ca_certificate_file, NULL) != 1) {
                gt_http_ssl_reason(why, sizeof why, "cannot read");
                rc = gt_error_setf(err, GT_EINVAL, cfg->ca_certificate_file, "CA certificate %s: %s",
                                   cfg->ca_certificate_file, why);
                goto done;
            }
        } else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
            gt_http_ssl_reason(why, sizeof why, "cannot load");
            rc = gt_error_set(err, GT_EINVAL, "system trust store: %s", why);
            goto done;
        }
        if (cfg->certificate_file || cfg->private_key_file) {
            if (!cfg->certificate_file || !cfg->private_key_file) {
                rc = gt_error_set(err, GT_EINVAL,
                                  "a client certificate needs both certificate_file and private_key_file");
                goto done;
            }
            if ((rc = gt_http_ssl_load_pair(ctx, cfg->certificate_file, cfg->private_key_file, err)) != GT_OK)
                goto done;
        }
    }

    if (gt_http_tcp_connect(&c, cfg->host, cfg->port) != 0 ||
        (ctx && gt_http_tls_connect(&c, ctx, cfg->host) != 0))
        goto unavailable;

    gt_buf_printf(&req, "%s %s HTTP/1.1\r\nHost: %s%s%s", method, path_and_query, lb, cfg->host, rb);
    if (cfg->port != (cfg->use_tls ? 443 : 80))
        gt_buf_printf(&req, ":%lld", (long long)cfg->port);
    gt_buf_puts(&req, "\r\nUser-Agent: gantry/" GANTRY_VERSION
                      "\r\nAccept: application/json\r\nConnection: close\r\n");
    if (token)
        gt_buf_printf(&req, "Authorization: Bearer %s\r\n", token);
    if (cfg->idempotency_key)
        gt_buf_printf(&req, "Idempotency-Key: %s\r\n", cfg->idempotency_key);
    if (body)
        gt_buf_puts(&req, "Content-Type: application/json\r\n");
    if (body_method)
        gt_buf_printf(&req, "Content-Length: %zu\r\n", body ? body_len : 0);
    gt_buf_puts(&req, "\r\n");
    if (body && body_len)
        gt_buf_append(&req, body, body_len);
    /* A server may answer and close before taking the whole body (a 413): then the
     * write fails but the answer is there to read. The TLS state survives, as the
     * socket error happened below OpenSSL's memory BIOs. */
    wrote = true;
    if (gt_http_conn_write(&c, req.data, req.len) != 0) {
        memcpy(write_why, c.why, sizeof write_why);
        c.why[0] = '\0';
    }

    for (;;) {
        if (in_cap - in_len < 16384) {
            /* the parser refuses more than head + body limits, so this stays bounded */
            in_cap = in_cap ? in_cap * 2 : 32768;
            in = gt_xrealloc(in, in_cap);
        }
        ssize_t r = gt_http_conn_read(&c, in + in_len, in_cap - in_len);
        if (r < 0)
            goto unavailable;
        in_len += (size_t)r;
        const char *why = NULL;
        int p = gt_http_parse_response(in, in_len, r == 0, mi == 1, status, &out, &why);
        if (p == 1)
            break;
        if (p < 0) {
            snprintf(c.why, sizeof c.why, "%s", why);
            goto unavailable;
        }
    }
    write_why[0] = '\0'; /* answered after all */
    *resp = gt_buf_steal(&out);
    goto done;

unavailable:
    if (write_why[0]) /* the first failure is the cause */
        memcpy(c.why, write_why, sizeof c.why);
    *status = 0;
    if (unsent)
        *unsent = !wrote;
    rc = gt_error_set(err, GT_EUNAVAIL, "cannot reach %s://%s%s%s:%lld: %s", scheme, lb, cfg->host,
                      rb, (long long)cfg->port, c.why[0] ? c.why : "unknown error");
done:
    if (c.ssl)
        SSL_free(c.ssl); /* frees the BIOs; no close_notify, the socket closes anyway */
    if (c.fd >= 0)
        close(c.fd);
    SSL_CTX_free(ctx);
    ERR_clear_error(); /* leave nothing on this thread's OpenSSL error queue */
    gt_buf_free(&req);
    gt_buf_free(&out);
    free(in);
    return rc;
}
