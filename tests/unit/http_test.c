/* http.c: evhttp server with a worker pool and TLS, and the blocking client.
 * Each test starts a server on 127.0.0.1 port 0 with its loop in a thread. Nothing
 * here depends on timing: handlers that must stay busy wait on a condition the test
 * releases, and time bounds are only upper limits for failure cases. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <event2/event.h>
#include <event2/thread.h>

#include "config.h"
#include "error.h"
#include "http.h"
#include "util.h"

extern char **environ;

/* ------------------------------------------------------------------------ */
/* Fixture: a server, its loop thread and a handler with test hooks */

typedef struct fixture {
    struct event_base *base;
    struct event *stop_ev;
    gt_http_server *srv;
    pthread_t loop;
    int port;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    int blocked;        /* handlers waiting in /block */
    bool release;       /* lets them go */
} fixture;

static char tls_dir[64];   /* certificates made once for the TLS tests; "" when skipped */

static void echo_handler(void *arg, int worker, const gt_http_request *req, gt_http_response *resp)
{
    fixture *f = arg;
    if (strcmp(req->path, "/block") == 0) {
        pthread_mutex_lock(&f->mu);
        f->blocked++;
        pthread_cond_broadcast(&f->cond);
        /* bounded so a broken test cannot hang forever */
        int64_t end = gt_mono_ms() + 30000;
        while (!f->release && gt_mono_ms() < end) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 50 * 1000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&f->cond, &f->mu, &ts);
        }
        pthread_mutex_unlock(&f->mu);
        if (req->query && strcmp(req->query, "big") == 0) {
            /* larger than any socket buffer, so writing it to a departed client fails */
            resp->status = 200;
            resp->body_len = 16 * 1024 * 1024;
            resp->body = gt_xmalloc(resp->body_len);
            memset(resp->body, 'z', resp->body_len);
            return;
        }
    } else if (strcmp(req->path, "/status/404") == 0) {
        resp->status = 404;
        resp->body = gt_xstrdup("{\"error\":{\"code\":\"not_found\",\"message\":\"nope\"}}");
        resp->body_len = strlen(resp->body);
        return;
    } else if (strcmp(req->path, "/zero") == 0) {
        return; /* status 0 */
    } else if (strcmp(req->path, "/retry") == 0) {
        resp->status = 503;
        resp->retry_after = gt_xstrdup("7");
        return;
    } else if (strcmp(req->path, "/text") == 0) {
        resp->status = 200;
        resp->content_type = "text/plain";
        resp->body = gt_xstrdup("hello");
        resp->body_len = 5;
        return;
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "method", req->method);
    cJSON_AddStringToObject(o, "path", req->path);
#define ADD_OPT(name, v) ((v) ? (void)cJSON_AddStringToObject(o, name, v) : (void)cJSON_AddNullToObject(o, name))
    ADD_OPT("query", req->query);
    ADD_OPT("authorization", req->authorization);
    ADD_OPT("content_type", req->content_type);
    ADD_OPT("body", req->body);
#undef ADD_OPT
    cJSON_AddStringToObject(o, "peer", req->peer);
    cJSON_AddNumberToObject(o, "worker", worker);
    cJSON_AddNumberToObject(o, "body_len", (double)req->body_len);
    resp->body = cJSON_PrintUnformatted(o);
    resp->body_len = strlen(resp->body);
    resp->status = 200;
    cJSON_Delete(o);
}

static void *loop_main(void *arg)
{
    fixture *f = arg;
    event_base_dispatch(f->base);
    return NULL;
}

static void on_stop(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    event_base_loopbreak(arg);
}

static gt_http_server_config default_config(fixture *f)
{
    return (gt_http_server_config){
        .listen_address = "127.0.0.1",
        .port = 0,
        .max_body_size = 1024,
        .workers = 4,
        .timeout_ms = 0,
        .handler = echo_handler,
        .arg = f,
    };
}

static fixture *start_with(const gt_http_server_config *cfg_in)
{
    fixture *f = gt_xcalloc(1, sizeof *f);
    pthread_mutex_init(&f->mu, NULL);
    pthread_cond_init(&f->cond, NULL);
    f->base = event_base_new();
    assert_non_null(f->base);
    gt_http_server_config cfg = *cfg_in;
    cfg.arg = f;
    gt_error e = {0};
    f->srv = gt_http_server_new(f->base, &cfg, &e);
    if (f->srv == NULL)
        fail_msg("gt_http_server_new: %s", e.message);
    f->port = gt_http_server_port(f->srv);
    assert_true(f->port > 0);
    /* stopping through an active event works even if the loop has not started yet */
    f->stop_ev = event_new(f->base, -1, 0, on_stop, f->base);
    assert_int_equal(pthread_create(&f->loop, NULL, loop_main, f), 0);
    return f;
}

static fixture *start(void)
{
    gt_http_server_config cfg = default_config(NULL);
    return start_with(&cfg);
}

static void release_blocked(fixture *f)
{
    pthread_mutex_lock(&f->mu);
    f->release = true;
    pthread_cond_broadcast(&f->cond);
    pthread_mutex_unlock(&f->mu);
}

static void wait_blocked(fixture *f, int n)
{
    int64_t end = gt_mono_ms() + 20000;
    pthread_mutex_lock(&f->mu);
    while (f->blocked < n && gt_mono_ms() < end) {
        pthread_mutex_unlock(&f->mu);
        usleep(2000);
        pthread_mutex_lock(&f->mu);
    }
    int got = f->blocked;
    pthread_mutex_unlock(&f->mu);
    assert_true(got >= n);
}

static void stop(fixture **fp)
{
    fixture *f = *fp;
    release_blocked(f);
    event_active(f->stop_ev, 0, 0);
    pthread_join(f->loop, NULL);
    gt_http_server_free(&f->srv);
    assert_null(f->srv);
    gt_http_server_free(&f->srv); /* NULL is fine */
    event_free(f->stop_ev);
    event_base_free(f->base);
    pthread_cond_destroy(&f->cond);
    pthread_mutex_destroy(&f->mu);
    free(f);
    *fp = NULL;
}

static gt_http_client_config client_for(int port)
{
    return (gt_http_client_config){.host = "127.0.0.1", .port = port, .timeout_ms = 20000};
}

/* Sends one request; returns the parsed JSON answer (or NULL when not JSON). */
static cJSON *call(const gt_http_client_config *cc, const char *method, const char *path,
                   const char *token, const char *body, int *status)
{
    char *resp = NULL;
    gt_error e = {0};
    gt_err rc = gt_http_request_send(cc, method, path, token, body, body ? strlen(body) : 0, status,
                                     &resp, &e);
    if (rc != GT_OK)
        fail_msg("%s %s: %s", method, path, e.message);
    assert_non_null(resp);
    cJSON *j = cJSON_Parse(resp);
    free(resp);
    return j;
}

static const char *jstr(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* ------------------------------------------------------------------------ */
/* Raw sockets, for what the client will not send */

static int raw_connect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    return fd;
}

static void raw_send(int fd, const char *s, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, s, n, MSG_NOSIGNAL);
        assert_true(w > 0);
        s += w;
        n -= (size_t)w;
    }
}

/* Reads until the peer closes or timeout_ms passes; *closed says which. */
static char *raw_read_all(int fd, int timeout_ms, bool *closed)
{
    gt_buf b = {0};
    gt_buf_append(&b, "", 0);
    int64_t end = gt_mono_ms() + timeout_ms;
    *closed = false;
    for (;;) {
        int64_t left = end - gt_mono_ms();
        if (left <= 0)
            break;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, (int)left) <= 0)
            continue;
        char buf[4096];
        ssize_t r = recv(fd, buf, sizeof buf, 0);
        if (r <= 0) {
            *closed = r == 0 || errno == ECONNRESET;
            break;
        }
        gt_buf_append(&b, buf, (size_t)r);
    }
    return gt_buf_steal(&b);
}

static char *raw_exchange(int port, const char *req, bool *closed)
{
    int fd = raw_connect(port);
    raw_send(fd, req, strlen(req));
    char *out = raw_read_all(fd, 20000, closed);
    close(fd);
    return out;
}

/* ------------------------------------------------------------------------ */
/* Server tests */

static void test_round_trips(void **state)
{
    (void)state;
    fixture *f = start();
    gt_http_client_config cc = client_for(f->port);
    int status = 0;

    cJSON *j = call(&cc, "GET", "/things/a%20b?x=1&y=%2F", "tok123", NULL, &status);
    assert_int_equal(status, 200);
    assert_string_equal(jstr(j, "method"), "GET");
    assert_string_equal(jstr(j, "path"), "/things/a%20b");
    assert_string_equal(jstr(j, "query"), "x=1&y=%2F");
    assert_string_equal(jstr(j, "authorization"), "Bearer tok123");
    assert_string_equal(jstr(j, "peer"), "127.0.0.1");
    assert_null(jstr(j, "body"));
    int w = cJSON_GetObjectItem(j, "worker")->valueint;
    assert_true(w >= 0 && w < 4);
    cJSON_Delete(j);

    const char *methods[] = {"POST", "PUT", "PATCH"};
    for (size_t i = 0; i < 3; i++) {
        j = call(&cc, methods[i], "/items", NULL, "{\"name\":\"x\"}", &status);
        assert_int_equal(status, 200);
        assert_string_equal(jstr(j, "method"), methods[i]);
        assert_string_equal(jstr(j, "body"), "{\"name\":\"x\"}");
        assert_string_equal(jstr(j, "content_type"), "application/json");
        assert_null(jstr(j, "authorization"));
        assert_null(jstr(j, "query"));
        cJSON_Delete(j);
    }
    /* POST without a body: NULL body, still answered */
    j = call(&cc, "POST", "/items", NULL, NULL, &status);
    assert_int_equal(status, 200);
    assert_null(jstr(j, "body"));
    cJSON_Delete(j);

    j = call(&cc, "DELETE", "/items/1", "t", NULL, &status);
    assert_int_equal(status, 200);
    assert_string_equal(jstr(j, "method"), "DELETE");
    cJSON_Delete(j);
    j = call(&cc, "OPTIONS", "/items", NULL, NULL, &status);
    assert_int_equal(status, 200);
    assert_string_equal(jstr(j, "method"), "OPTIONS");
    cJSON_Delete(j);

    /* HEAD: status, no body */
    char *resp = NULL;
    assert_int_equal(gt_http_request_send(&cc, "HEAD", "/x", NULL, NULL, 0, &status, &resp, NULL), GT_OK);
    assert_int_equal(status, 200);
    assert_string_equal(resp, "");
    free(resp);

    /* a body that is not text still arrives whole */
    char bin[600];
    for (size_t i = 0; i < sizeof bin; i++)
        bin[i] = (char)('a' + i % 26);
    bin[sizeof bin - 1] = '\0';
    j = call(&cc, "PUT", "/bin", NULL, bin, &status);
    assert_string_equal(jstr(j, "body"), bin);
    cJSON_Delete(j);

    /* the client refuses what it cannot send safely */
    gt_error e = {0};
    assert_int_equal(gt_http_request_send(&cc, "GET", "/x", NULL, "{}", 2, &status, &resp, &e), GT_EINVAL);
    assert_null(resp);
    gt_error_clear(&e);
    assert_int_equal(gt_http_request_send(&cc, "GET", "/x\r\nX-Evil: 1", NULL, NULL, 0, &status, &resp, &e),
                     GT_EINVAL);
    assert_int_equal(gt_http_request_send(&cc, "BREW", "/x", NULL, NULL, 0, &status, &resp, NULL), GT_EINVAL);
    assert_int_equal(gt_http_request_send(&cc, "GET", "x", NULL, NULL, 0, &status, &resp, NULL), GT_EINVAL);
    assert_int_equal(gt_http_request_send(&cc, "GET", "/x", "a\nb", NULL, 0, &status, &resp, NULL), GT_EINVAL);
    stop(&f);
}

static void test_status_and_headers_pass_through(void **state)
{
    (void)state;
    fixture *f = start();
    gt_http_client_config cc = client_for(f->port);
    int status = 0;
    cJSON *j = call(&cc, "GET", "/status/404", NULL, NULL, &status);
    assert_int_equal(status, 404);
    assert_string_equal(jstr(cJSON_GetObjectItem(j, "error"), "code"), "not_found");
    cJSON_Delete(j);

    j = call(&cc, "GET", "/zero", NULL, NULL, &status);
    assert_int_equal(status, 500);
    assert_string_equal(jstr(cJSON_GetObjectItem(j, "error"), "code"), "internal");
    cJSON_Delete(j);

    bool closed;
    char *r = raw_exchange(f->port, "GET /retry HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", &closed);
    assert_true(closed);
    assert_non_null(strstr(r, "HTTP/1.1 503"));
    assert_non_null(strstr(r, "Retry-After: 7\r\n"));
    assert_non_null(strstr(r, "Content-Type: application/json\r\n"));
    free(r);
    r = raw_exchange(f->port, "GET /text HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", &closed);
    assert_non_null(strstr(r, "HTTP/1.1 200"));
    assert_non_null(strstr(r, "Content-Type: text/plain\r\n"));
    assert_non_null(strstr(r, "\r\n\r\nhello"));
    free(r);

    /* keep-alive: two requests on one connection, both answered in order */
    r = raw_exchange(f->port,
                     "GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                     &closed);
    char *second = strstr(r, "\"path\":\"/b\"");
    assert_non_null(strstr(r, "\"path\":\"/a\""));
    assert_non_null(second);
    assert_true(strstr(r, "\"path\":\"/a\"") < second);
    free(r);

    /* malformed request line: evhttp answers 400, the server keeps serving */
    r = raw_exchange(f->port, "BLAH\r\n\r\n", &closed);
    assert_non_null(strstr(r, " 400 "));
    free(r);
    /* a method evhttp knows but we do not allow */
    r = raw_exchange(f->port, "TRACE / HTTP/1.1\r\nHost: x\r\n\r\n", &closed);
    assert_null(strstr(r, " 200 "));
    free(r);
    /* a body on GET would be parsed as the next request by evhttp 2.1: refused and closed */
    r = raw_exchange(f->port, "GET /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", &closed);
    assert_non_null(strstr(r, "HTTP/1.1 400"));
    assert_non_null(strstr(r, "GET requests take no body"));
    assert_true(closed);
    free(r);
    /* Content-Length and Transfer-Encoding together: refused */
    r = raw_exchange(f->port,
                     "POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
                     "3\r\nabc\r\n0\r\n\r\n",
                     &closed);
    assert_non_null(strstr(r, "HTTP/1.1 400"));
    free(r);

    j = call(&cc, "GET", "/still-here", NULL, NULL, &status);
    assert_int_equal(status, 200);
    cJSON_Delete(j);
    stop(&f);
}

/* ------------------------------------------------------------------------ */
/* Framing by RFC 9112: each malformed request is refused with 400, a JSON error
 * naming what was wrong, and a closed connection; the server keeps serving. */

/* The JSON body of a raw answer, or NULL. */
static cJSON *raw_json(const char *r)
{
    const char *b = strstr(r, "\r\n\r\n");
    return b ? cJSON_Parse(b + 4) : NULL;
}

static void expect_refused(const char *req, size_t len, int status, const char *why)
{
    fixture *f = start();
    int fd = raw_connect(f->port);
    raw_send(fd, req, len);
    bool closed = false;
    char *r = raw_read_all(fd, 20000, &closed);
    close(fd);
    char want[32];
    snprintf(want, sizeof want, "HTTP/1.1 %d ", status);
    if (strncmp(r, want, strlen(want)) != 0)
        fail_msg("expected %d (%s), got: %.200s", status, why, r);
    assert_non_null(strstr(r, "Connection: close\r\n"));
    assert_non_null(strstr(r, "Content-Type: application/json\r\n"));
    cJSON *j = raw_json(r);
    cJSON *e = cJSON_GetObjectItem(j, "error");
    assert_non_null(e);
    assert_string_equal(jstr(e, "code"), status == 400 ? "invalid_argument" : jstr(e, "code"));
    if (jstr(e, "message") == NULL || strstr(jstr(e, "message"), why) == NULL)
        fail_msg("message \"%s\" does not say \"%s\"", jstr(e, "message") ? jstr(e, "message") : "", why);
    assert_true(closed);
    cJSON_Delete(j);
    free(r);
    /* still serving */
    gt_http_client_config cc = client_for(f->port);
    int st = 0;
    cJSON_Delete(call(&cc, "GET", "/after", NULL, NULL, &st));
    assert_int_equal(st, 200);
    stop(&f);
}

#define POST_HEAD "POST /x HTTP/1.1\r\nHost: x\r\n"
#define REFUSED(name, req, why)                                  \
    static void test_refuses_##name(void **state)                \
    {                                                            \
        (void)state;                                             \
        expect_refused(req, sizeof(req) - 1, 400, why);          \
    }

REFUSED(two_content_lengths, POST_HEAD "Content-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
        "conflicting Content-Length")
REFUSED(content_length_list_differs, POST_HEAD "Content-Length: 2, 3\r\n\r\nabc",
        "conflicting Content-Length")
REFUSED(two_idempotency_keys, POST_HEAD "Idempotency-Key: a\r\nIdempotency-Key: b\r\n\r\n",
        "more than one Idempotency-Key")
REFUSED(content_length_plus, POST_HEAD "Content-Length: +2\r\n\r\nab", "bad Content-Length")
REFUSED(content_length_minus, POST_HEAD "Content-Length: -1\r\n\r\n", "bad Content-Length")
REFUSED(content_length_not_digits, POST_HEAD "Content-Length: 0x2\r\n\r\nab", "bad Content-Length")
REFUSED(content_length_empty, POST_HEAD "Content-Length: \r\n\r\n", "bad Content-Length")
REFUSED(content_length_overflow, POST_HEAD "Content-Length: 99999999999999999999999\r\n\r\n",
        "bad Content-Length")
REFUSED(te_and_content_length,
        POST_HEAD "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        "both Transfer-Encoding and Content-Length")
REFUSED(te_gzip, POST_HEAD "Transfer-Encoding: gzip\r\n\r\n", "transfer coding")
REFUSED(te_gzip_then_chunked, POST_HEAD "Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        "transfer coding")
REFUSED(te_chunked_not_last, POST_HEAD "Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        "transfer coding")
REFUSED(te_chunked_twice,
        POST_HEAD "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "transfer coding")
REFUSED(te_in_http10, "POST /x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "Transfer-Encoding in an HTTP/1.0 request")
REFUSED(space_before_colon, POST_HEAD "Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        "whitespace between a header name and the colon")
REFUSED(obs_fold, "GET /x HTTP/1.1\r\nHost: x\r\nX-A: one\r\n two\r\n\r\n", "obs-fold")
REFUSED(obs_fold_tab, "GET /x HTTP/1.1\r\nHost: x\r\nX-A: one\r\n\ttwo\r\n\r\n", "obs-fold")
REFUSED(space_before_first_header, "GET /x HTTP/1.1\r\n Host: x\r\n\r\n", "obs-fold")
REFUSED(control_char_in_value, "GET /x HTTP/1.1\r\nHost: x\r\nX-A: a\x01z\r\n\r\n",
        "control character in a header value")
REFUSED(del_in_value, "GET /x HTTP/1.1\r\nHost: x\r\nX-A: a\x7fz\r\n\r\n",
        "control character in a header value")
REFUSED(nul_in_value, "GET /x HTTP/1.1\r\nHost: x\r\nX-A: a\0z\r\n\r\n",
        "control character in a header value")
REFUSED(bare_cr_in_value, "GET /x HTTP/1.1\r\nHost: x\r\nX-A: a\rz\r\n\r\n", "bare CR")
REFUSED(bare_lf, "GET /x HTTP/1.1\nHost: x\n\n", "LF without CR")
REFUSED(name_not_token, "GET /x HTTP/1.1\r\nHost: x\r\nX@A: 1\r\n\r\n", "not a token")
REFUSED(name_with_quote, "GET /x HTTP/1.1\r\nHost: x\r\nX\"A: 1\r\n\r\n", "not a token")
REFUSED(name_empty, "GET /x HTTP/1.1\r\nHost: x\r\n: 1\r\n\r\n", "not a token")
REFUSED(no_colon, "GET /x HTTP/1.1\r\nHost: x\r\nJunk\r\n\r\n", "no colon")
REFUSED(two_hosts, "GET /x HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", "Host")
REFUSED(no_host_in_http11, "GET /x HTTP/1.1\r\nX-A: 1\r\n\r\n", "Host")
REFUSED(bad_chunk_size, POST_HEAD "Transfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n",
        "chunk size")
REFUSED(chunk_without_crlf, POST_HEAD "Transfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
        "chunk")
REFUSED(request_line_double_space, "GET  /x HTTP/1.1\r\nHost: x\r\n\r\n", "request line")

/* Edge cases that are valid stay accepted. */
static void test_framing_accepted(void **state)
{
    (void)state;
    fixture *f = start();
    const struct {
        const char *req;
        const char *want; /* in the answer */
    } ok[] = {
        {POST_HEAD "Content-Length: 3, 3\r\nConnection: close\r\n\r\nabc", "\"body\":\"abc\""},
        {POST_HEAD "Content-Length: 3\r\ncontent-length: 3\r\nConnection: close\r\n\r\nabc",
         "\"body\":\"abc\""},
        {POST_HEAD "Content-Length: 0003\r\nConnection: close\r\n\r\nabc", "\"body\":\"abc\""},
        {POST_HEAD "transfer-encoding:  CHUNKED \r\nConnection: close\r\n\r\n"
                   "2;name=\"v\"\r\nab\r\n1 ;x\r\nc\r\n0\r\nTrailer-A: 1\r\n\r\n",
         "\"body\":\"abc\""},
        {"\r\nGET /lead HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "\"path\":\"/lead\""},
        {"GET http://x/abs?q=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
         "\"path\":\"/abs\""},
        {"GET /old HTTP/1.0\r\n\r\n", "\"path\":\"/old\""},
        {"GET /t HTTP/1.1\r\nHost: x\r\nX-Tab:\ta\tb\t\r\nX-Obs: caf\xc3\xa9\r\nConnection: close\r\n\r\n",
         "\"path\":\"/t\""},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        bool closed = false;
        char *r = raw_exchange(f->port, ok[i].req, &closed);
        if (strncmp(r, "HTTP/1.1 200 ", 13) != 0 || strstr(r, ok[i].want) == NULL)
            fail_msg("case %zu: %.300s", i, r);
        assert_true(closed);
        free(r);
    }
    /* Expect: 100-continue gets the interim answer before the body is sent */
    int fd = raw_connect(f->port);
    const char *head = POST_HEAD "Content-Length: 2\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n";
    raw_send(fd, head, strlen(head));
    char buf[64];
    size_t got = 0;
    while (got < 25) {
        ssize_t n = recv(fd, buf + got, sizeof buf - 1 - got, 0);
        assert_true(n > 0);
        got += (size_t)n;
    }
    buf[got] = '\0';
    assert_string_equal(buf, "HTTP/1.1 100 Continue\r\n\r\n");
    raw_send(fd, "{}", 2);
    bool closed = false;
    char *r = raw_read_all(fd, 20000, &closed);
    close(fd);
    assert_non_null(strstr(r, "HTTP/1.1 200 "));
    assert_non_null(strstr(r, "\"body\":\"{}\""));
    free(r);
    stop(&f);
}

/* A client that sends its head one byte at a time never finishes: the head has one
 * deadline (timeout_ms), which every byte does not push back. */
static void test_slowloris_head_times_out(void **state)
{
    (void)state;
    gt_http_server_config cfg = default_config(NULL);
    cfg.timeout_ms = 300;
    fixture *f = start_with(&cfg);
    int fd = raw_connect(f->port);
    raw_send(fd, "GET /x HTTP/1.1\r\nHost: x\r\nX-Slow: ", 35);
    bool gone = false;
    int64_t end = gt_mono_ms() + 20000; /* only a bound for the failure case */
    while (!gone && gt_mono_ms() < end) {
        if (send(fd, "a", 1, MSG_NOSIGNAL) != 1) {
            gone = true; /* the server closed */
            break;
        }
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 50) > 0) {
            char b[512];
            ssize_t n = recv(fd, b, sizeof b, 0);
            gone = n <= 0; /* an answer (408) may come first; the end of stream follows */
        }
    }
    close(fd);
    assert_true(gone);
    stop(&f);
}

/* ------------------------------------------------------------------------ */
/* Caps: connections and buffered request bytes */

static void expect_busy(const char *r, bool closed, const char *why)
{
    if (strncmp(r, "HTTP/1.1 503 ", 13) != 0)
        fail_msg("expected 503 (%s), got: %.200s", why, r);
    assert_non_null(strstr(r, "Retry-After: 1\r\n"));
    cJSON *j = raw_json(r);
    cJSON *e = cJSON_GetObjectItem(j, "error");
    assert_string_equal(jstr(e, "code"), "unavailable");
    assert_non_null(strstr(jstr(e, "message"), why));
    cJSON_Delete(j);
    assert_true(closed);
}

static void test_max_connections(void **state)
{
    (void)state;
    gt_http_server_config cfg = default_config(NULL);
    cfg.max_connections = 2;
    fixture *f = start_with(&cfg);
    /* the server accepts in the order the connections were made: a and b are counted
     * before c is looked at */
    int a = raw_connect(f->port), b = raw_connect(f->port);
    int c = raw_connect(f->port);
    const char *req = "GET /x HTTP/1.1\r\nHost: x\r\n\r\n";
    raw_send(c, req, strlen(req));
    bool closed = false;
    char *r = raw_read_all(c, 20000, &closed);
    expect_busy(r, closed, "too many connections");
    free(r);
    close(c);
    /* the two it took are served */
    req = "GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    raw_send(a, req, strlen(req));
    r = raw_read_all(a, 20000, &closed);
    assert_non_null(strstr(r, "HTTP/1.1 200 "));
    free(r);
    close(a);
    /* a's slot is free once its answer was written: a new connection is served */
    gt_http_client_config cc = client_for(f->port);
    int st = 0;
    cJSON_Delete(call(&cc, "GET", "/again", NULL, NULL, &st));
    assert_int_equal(st, 200);
    close(b);
    stop(&f);
}

/* Where the README is: __FILE__ is tests/unit/http_test.c under the repository. */
static char *readme_text(void)
{
    const char *src = __FILE__;
    const char *tail = strstr(src, "tests/unit/http_test.c");
    char path[4096];
    snprintf(path, sizeof path, "%.*sREADME.md", tail ? (int)(tail - src) : 0, src);
    char *text = NULL;
    if (gt_read_file(path, 1 << 20, &text, NULL, NULL) != GT_OK)
        fail_msg("cannot read %s (run the tests from the repository root)", path);
    return text;
}

/* The defaults the README states are the configuration's and the server's. */
static void test_cap_defaults(void **state)
{
    (void)state;
    gt_config *cfg = gt_config_new();
    assert_int_equal(cfg->server.max_connections, GT_HTTP_DEFAULT_MAX_CONNECTIONS);
    assert_int_equal(cfg->server.max_buffered_bytes, GT_HTTP_DEFAULT_MAX_BUFFERED);
    gt_config_free(&cfg);
    assert_int_equal(GT_HTTP_DEFAULT_MAX_CONNECTIONS, 1024);
    assert_int_equal(GT_HTTP_DEFAULT_MAX_BUFFERED, 64 * 1024 * 1024);
    char *readme = readme_text();
    const char *mc = strstr(readme, "`[server] max_connections` (default `");
    const char *mb = strstr(readme, "`max_buffered_bytes` (default `");
    assert_non_null(mc);
    assert_non_null(mb);
    assert_int_equal(strncmp(mc + strlen("`[server] max_connections` (default `"), "1024`", 5), 0);
    assert_int_equal(strncmp(mb + strlen("`max_buffered_bytes` (default `"), "64MiB`", 6), 0);
    free(readme);
}

static void test_max_buffered_bytes(void **state)
{
    (void)state;
    gt_http_server_config cfg = default_config(NULL);
    cfg.max_buffered_bytes = 1500; /* max_body_size 1024 */
    fixture *f = start_with(&cfg);
    char body[1001];
    memset(body, 'b', 1000);
    body[1000] = '\0';
    /* a holds 1000 body bytes (and its head) while its handler waits */
    gt_buf req = {0};
    gt_buf_printf(&req, "POST /block HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n%s",
                  body);
    int a = raw_connect(f->port);
    raw_send(a, req.data, req.len);
    wait_blocked(f, 1);
    /* b would take the total past 1500 bytes */
    gt_buf_free(&req);
    gt_buf_printf(&req, "POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n%s", body);
    bool closed = false;
    char *r = raw_exchange(f->port, req.data, &closed);
    expect_busy(r, closed, "too many request bytes");
    free(r);
    /* a is answered; once it is, its bytes are released and the same request passes */
    release_blocked(f);
    r = raw_read_all(a, 20000, &closed);
    assert_non_null(strstr(r, "HTTP/1.1 200 "));
    free(r);
    close(a);
    gt_http_client_config cc = client_for(f->port);
    int st = 0;
    cJSON *j = call(&cc, "POST", "/x", NULL, body, &st);
    assert_int_equal(st, 200);
    assert_int_equal(cJSON_GetObjectItem(j, "body_len")->valueint, 1000);
    cJSON_Delete(j);
    gt_buf_free(&req);
    stop(&f);

    /* a cap below the largest body could never serve it: refused at start */
    struct event_base *base = event_base_new();
    fixture dummy = {0};
    cfg = default_config(&dummy);
    cfg.max_buffered_bytes = 512;
    gt_error e = {0};
    assert_null(gt_http_server_new(base, &cfg, &e));
    assert_int_equal(e.code, GT_EINVAL);
    assert_non_null(strstr(e.message, "max_buffered_bytes"));
    event_base_free(base);
}

static void test_body_limit(void **state)
{
    (void)state;
    fixture *f = start(); /* max_body_size 1024 */
    gt_http_client_config cc = client_for(f->port);
    int status = 0;

    char *big = gt_xmalloc(4097);
    memset(big, 'x', 4096);
    big[4096] = '\0';
    cJSON *j = call(&cc, "POST", "/upload", NULL, big, &status);
    assert_int_equal(status, 413);
    cJSON *e = cJSON_GetObjectItem(j, "error");
    assert_string_equal(jstr(e, "code"), "too_large");
    assert_string_equal(jstr(e, "message"), "request body over 1024 bytes");
    cJSON_Delete(j);

    /* exactly at the limit is fine */
    big[1024] = '\0';
    j = call(&cc, "POST", "/upload", NULL, big, &status);
    assert_int_equal(status, 200);
    assert_int_equal(cJSON_GetObjectItem(j, "body_len")->valueint, 1024);
    cJSON_Delete(j);
    free(big);

    /* chunked bodies that grow past the limit */
    gt_buf req = {0};
    gt_buf_puts(&req, "POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
    for (int i = 0; i < 20; i++) {
        gt_buf_puts(&req, "64\r\n");
        for (int k = 0; k < 100; k++)
            gt_buf_puts(&req, "y");
        gt_buf_puts(&req, "\r\n");
    }
    gt_buf_puts(&req, "0\r\n\r\n");
    bool closed;
    char *r = raw_exchange(f->port, req.data, &closed);
    assert_non_null(strstr(r, "HTTP/1.1 413"));
    assert_non_null(strstr(r, "\"code\":\"too_large\""));
    free(r);
    gt_buf_free(&req);

    /* a huge Content-Length is refused before any body is read (evhttp's own 413) */
    r = raw_exchange(f->port, "POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\n\r\n", &closed);
    assert_non_null(strstr(r, "HTTP/1.1 413"));
    assert_true(closed);
    free(r);

    /* a body far past the limit: evhttp answers 413 and closes mid-upload; the client
     * reads that answer after its write fails (or, if the kernel reset the connection
     * first, reports the server unavailable) */
    size_t huge_len = 4 * 1024 * 1024;
    char *huge = gt_xmalloc(huge_len + 1);
    memset(huge, 'h', huge_len);
    huge[huge_len] = '\0';
    char *resp = NULL;
    gt_error e2 = {0};
    gt_err rc = gt_http_request_send(&cc, "POST", "/up", NULL, huge, huge_len, &status, &resp, &e2);
    assert_true((rc == GT_OK && status == 413) || rc == GT_EUNAVAIL);
    free(resp);
    free(huge);

    j = call(&cc, "GET", "/still-here", NULL, NULL, &status);
    assert_int_equal(status, 200);
    cJSON_Delete(j);
    stop(&f);
}

typedef struct bg_call {
    pthread_t t;
    int port;
    const char *path;
    int status;
    gt_err rc;
    atomic_bool done;
} bg_call;

static void *bg_call_main(void *arg)
{
    bg_call *b = arg;
    gt_http_client_config cc = client_for(b->port);
    char *resp = NULL;
    b->rc = gt_http_request_send(&cc, "GET", b->path, NULL, NULL, 0, &b->status, &resp, NULL);
    free(resp);
    atomic_store(&b->done, true);
    return NULL;
}

static void test_loop_not_blocked_by_handler(void **state)
{
    (void)state;
    fixture *f = start();
    bg_call b = {.port = f->port, .path = "/block"};
    assert_int_equal(pthread_create(&b.t, NULL, bg_call_main, &b), 0);
    wait_blocked(f, 1);
    /* the first handler is stuck until released; this one must still complete */
    gt_http_client_config cc = client_for(f->port);
    int status = 0;
    cJSON *j = call(&cc, "GET", "/quick", NULL, NULL, &status);
    assert_int_equal(status, 200);
    cJSON_Delete(j);
    assert_false(atomic_load(&b.done));
    release_blocked(f);
    pthread_join(b.t, NULL);
    assert_int_equal(b.rc, GT_OK);
    assert_int_equal(b.status, 200);
    stop(&f);
}

/* The client hangs up while its handler runs: nothing leaks, nothing crashes, and the
 * server keeps serving. */
static void test_client_gone_during_handler(void **state)
{
    (void)state;
    const char *reqs[] = {
        "POST /block HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
        "GET /block?big HTTP/1.1\r\nHost: x\r\n\r\n", /* the reply write fails */
    };
    for (size_t k = 0; k < 2; k++) {
        fixture *f = start();
        int fd = raw_connect(f->port);
        raw_send(fd, reqs[k], strlen(reqs[k]));
        wait_blocked(f, 1);
        close(fd);
        usleep(100 * 1000); /* lets the loop see the close first (either order must work) */
        release_blocked(f);
        gt_http_client_config cc = client_for(f->port);
        int status = 0;
        for (int i = 0; i < 3; i++) {
            cJSON *j = call(&cc, "GET", "/after", NULL, NULL, &status);
            assert_int_equal(status, 200);
            cJSON_Delete(j);
        }
        stop(&f);
    }
}

static void test_slow_client_dropped(void **state)
{
    (void)state;
    gt_http_server_config cfg = default_config(NULL);
    cfg.timeout_ms = 300;
    fixture *f = start_with(&cfg);
    int slow = raw_connect(f->port);
    raw_send(slow, "GET /x HTTP/1.1\r\nHost:", 22);
    int idle = raw_connect(f->port); /* connects and sends nothing at all */
    gt_http_client_config cc = client_for(f->port);
    for (int i = 0; i < 5; i++) {
        int status = 0;
        cJSON *j = call(&cc, "GET", "/meanwhile", NULL, NULL, &status);
        assert_int_equal(status, 200);
        cJSON_Delete(j);
    }
    bool closed = false;
    free(raw_read_all(slow, 15000, &closed));
    assert_true(closed);
    free(raw_read_all(idle, 15000, &closed));
    assert_true(closed);
    close(slow);
    close(idle);
    stop(&f);
}

typedef struct load {
    pthread_t t;
    int port;
    int id;
    int n;
    const char *ca;     /* TLS when set */
    atomic_int *ok;
} load;

static void *load_main(void *arg)
{
    load *l = arg;
    gt_http_client_config cc = client_for(l->port);
    cc.use_tls = l->ca != NULL;
    cc.ca_certificate_file = l->ca;
    for (int i = 0; i < l->n; i++) {
        char body[64], *resp = NULL;
        snprintf(body, sizeof body, "{\"t\":%d,\"i\":%d}", l->id, i);
        int status = 0;
        if (gt_http_request_send(&cc, "POST", "/load", "tok", body, strlen(body), &status, &resp, NULL) ==
                GT_OK &&
            status == 200) {
            cJSON *j = cJSON_Parse(resp);
            if (j && jstr(j, "body") && strcmp(jstr(j, "body"), body) == 0)
                atomic_fetch_add(l->ok, 1);
            cJSON_Delete(j);
        }
        free(resp);
    }
    return NULL;
}

static void test_concurrent_requests(void **state)
{
    (void)state;
    fixture *f = start();
    atomic_int ok;
    atomic_init(&ok, 0);
    load l[8];
    for (int i = 0; i < 8; i++) {
        l[i] = (load){.port = f->port, .id = i, .n = 25, .ok = &ok};
        assert_int_equal(pthread_create(&l[i].t, NULL, load_main, &l[i]), 0);
    }
    for (int i = 0; i < 8; i++)
        pthread_join(l[i].t, NULL);
    assert_int_equal(atomic_load(&ok), 200);
    stop(&f);
}

typedef struct releaser {
    pthread_t t;
    fixture *f;
} releaser;

static void *releaser_main(void *arg)
{
    releaser *r = arg;
    usleep(200 * 1000);
    release_blocked(r->f);
    return NULL;
}

static void test_free_with_requests_in_flight(void **state)
{
    (void)state;
    gt_http_server_config cfg = default_config(NULL);
    cfg.workers = 2;
    fixture *f = start_with(&cfg);
    bg_call b[3];
    for (int i = 0; i < 3; i++) {
        b[i] = (bg_call){.port = f->port, .path = "/block"};
        assert_int_equal(pthread_create(&b[i].t, NULL, bg_call_main, &b[i]), 0);
    }
    wait_blocked(f, 2); /* two running; the third is queued once the loop has read it */
    usleep(200 * 1000);  /* makes "queued" likely; the assertions below hold either way */
    /* a client that gives up while its request is being handled */
    int gone = raw_connect(f->port);
    raw_send(gone, "GET /block HTTP/1.1\r\nHost: x\r\n\r\n", 31);
    close(gone);

    /* stop the loop, release the handlers from another thread while free waits */
    event_active(f->stop_ev, 0, 0);
    pthread_join(f->loop, NULL);
    releaser r = {.f = f};
    assert_int_equal(pthread_create(&r.t, NULL, releaser_main, &r), 0);
    gt_http_server_free(&f->srv);
    pthread_join(r.t, NULL);
    int answered = 0;
    for (int i = 0; i < 3; i++) {
        pthread_join(b[i].t, NULL);
        /* requests the server had taken are answered during free; one it had not read
         * yet when the loop stopped is closed unanswered */
        assert_true(b[i].rc == GT_OK || b[i].rc == GT_EUNAVAIL);
        if (b[i].rc == GT_OK) {
            assert_int_equal(b[i].status, 200);
            answered++;
        }
    }
    assert_true(answered >= 2);
    event_free(f->stop_ev);
    event_base_free(f->base);
    pthread_cond_destroy(&f->cond);
    pthread_mutex_destroy(&f->mu);
    free(f);
}

/* A client that never reads its (large) reply: free still returns, bounded by the
 * server's timeout, and leaks nothing. */
static void test_free_with_stalled_reader(void **state)
{
    (void)state;
    gt_http_server_config cfg = default_config(NULL);
    cfg.timeout_ms = 300;
    fixture *f = start_with(&cfg);
    int fd = raw_connect(f->port);
    int small = 4096;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    const char *req = "GET /block?big HTTP/1.1\r\nHost: x\r\n\r\n";
    raw_send(fd, req, strlen(req));
    wait_blocked(f, 1);
    event_active(f->stop_ev, 0, 0);
    pthread_join(f->loop, NULL);
    releaser r = {.f = f};
    assert_int_equal(pthread_create(&r.t, NULL, releaser_main, &r), 0);
    int64_t t0 = gt_mono_ms();
    gt_http_server_free(&f->srv);
    assert_true(gt_mono_ms() - t0 < 20000);
    pthread_join(r.t, NULL);
    close(fd);
    event_free(f->stop_ev);
    event_base_free(f->base);
    pthread_cond_destroy(&f->cond);
    pthread_mutex_destroy(&f->mu);
    free(f);
}

static void test_config_errors(void **state)
{
    (void)state;
    struct event_base *base = event_base_new();
    fixture dummy = {0};
    gt_http_server_config cfg = default_config(&dummy);
    gt_error e = {0};
    cfg.workers = 0;
    assert_null(gt_http_server_new(base, &cfg, &e));
    assert_int_equal(e.code, GT_EINVAL);
    cfg = default_config(&dummy);
    cfg.port = 70000;
    gt_error_clear(&e);
    assert_null(gt_http_server_new(base, &cfg, &e));
    assert_int_equal(e.code, GT_EINVAL);

    /* a taken port names the address */
    cfg = default_config(&dummy);
    gt_http_server *a = gt_http_server_new(base, &cfg, &e);
    assert_non_null(a);
    cfg.port = gt_http_server_port(a);
    gt_error_clear(&e);
    assert_null(gt_http_server_new(base, &cfg, &e));
    assert_int_equal(e.code, GT_EUNAVAIL);
    char want[64];
    snprintf(want, sizeof want, "127.0.0.1:%lld", (long long)cfg.port);
    assert_non_null(strstr(e.message, want));
    gt_http_server_free(&a);

    /* TLS files that are not there are named */
    cfg = default_config(&dummy);
    cfg.use_tls = true;
    cfg.certificate_file = "/nonexistent/server.crt";
    cfg.private_key_file = "/nonexistent/server.key";
    gt_error_clear(&e);
    assert_null(gt_http_server_new(base, &cfg, &e));
    assert_int_equal(e.code, GT_EINVAL);
    assert_non_null(strstr(e.message, "/nonexistent/server.crt"));
    event_base_free(base);
}

/* ------------------------------------------------------------------------ */
/* TLS */

static int run(char *const argv[])
{
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    pid_t pid;
    int rc = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0)
        return -1;
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static char *tls_path(const char *name)
{
    return gt_path_join(tls_dir, name);
}

/* A CA, a server certificate for localhost and 127.0.0.1 signed by it, and a second,
 * unrelated CA. */
static int tls_setup(void **state)
{
    (void)state;
    snprintf(tls_dir, sizeof tls_dir, "/tmp/gt_http_test.XXXXXX");
    if (mkdtemp(tls_dir) == NULL) {
        tls_dir[0] = '\0';
        return 0;
    }
    char *ca_key = tls_path("ca.key"), *ca_crt = tls_path("ca.crt"), *srv_key = tls_path("srv.key"),
         *srv_csr = tls_path("srv.csr"), *srv_crt = tls_path("srv.crt"), *ext = tls_path("ext.cnf"),
         *other_key = tls_path("other.key"), *other_crt = tls_path("other.crt"),
         *serial = tls_path("ca.srl"), *cli_key = tls_path("cli.key"), *cli_csr = tls_path("cli.csr"),
         *cli_crt = tls_path("cli.crt"), *cli_ext = tls_path("cli.cnf");
    const char *extv = "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                       "extendedKeyUsage=serverAuth\n";
    const char *cli_extv = "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n";
    int ok = gt_write_file_atomic(ext, extv, strlen(extv), 0600, NULL) == GT_OK &&
             gt_write_file_atomic(cli_ext, cli_extv, strlen(cli_extv), 0600, NULL) == GT_OK;
    char *ca[] = {"openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                  "-nodes", "-keyout", ca_key, "-out", ca_crt, "-subj", "/CN=gantry test CA", "-days", "2",
                  "-addext", "basicConstraints=critical,CA:TRUE", "-addext",
                  "keyUsage=critical,keyCertSign,cRLSign", NULL};
    char *other[] = {"openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                     "-nodes", "-keyout", other_key, "-out", other_crt, "-subj", "/CN=other CA", "-days", "2",
                     "-addext", "basicConstraints=critical,CA:TRUE", NULL};
    char *csr[] = {"openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                   "-nodes", "-keyout", srv_key, "-out", srv_csr, "-subj", "/CN=localhost", NULL};
    char *sign[] = {"openssl", "x509", "-req", "-in", srv_csr, "-CA", ca_crt, "-CAkey", ca_key,
                    "-CAserial", serial, "-CAcreateserial", "-out", srv_crt, "-days", "2",
                    "-extfile", ext, NULL};
    /* a client certificate (extendedKeyUsage clientAuth) from the same CA */
    char *cli_req[] = {"openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                       "-nodes", "-keyout", cli_key, "-out", cli_csr, "-subj", "/CN=gantry-cli", NULL};
    char *cli_sign[] = {"openssl", "x509", "-req", "-in", cli_csr, "-CA", ca_crt, "-CAkey", ca_key,
                        "-CAserial", serial, "-out", cli_crt, "-days", "2", "-extfile", cli_ext, NULL};
    ok = ok && run(ca) == 0 && run(other) == 0 && run(csr) == 0 && run(sign) == 0 &&
         run(cli_req) == 0 && run(cli_sign) == 0;
    free(ca_key), free(ca_crt), free(srv_key), free(srv_csr), free(srv_crt), free(ext);
    free(other_key), free(other_crt), free(serial), free(cli_key), free(cli_csr), free(cli_crt), free(cli_ext);
    if (!ok) {
        fprintf(stderr, "SKIPPED TLS tests: cannot make test certificates with the openssl CLI\n");
        gt_rm_rf(tls_dir, NULL);
        tls_dir[0] = '\0';
    }
    return 0;
}

static int tls_teardown(void **state)
{
    (void)state;
    if (tls_dir[0])
        gt_rm_rf(tls_dir, NULL);
    return 0;
}

static void test_tls(void **state)
{
    (void)state;
    if (tls_dir[0] == '\0')
        skip();
    char *crt = tls_path("srv.crt"), *key = tls_path("srv.key"), *ca = tls_path("ca.crt"),
         *other = tls_path("other.crt");
    gt_http_server_config cfg = default_config(NULL);
    cfg.use_tls = true;
    cfg.certificate_file = crt;
    cfg.private_key_file = key;
    cfg.timeout_ms = 2000;
    fixture *f = start_with(&cfg);

    gt_http_client_config cc = client_for(f->port);
    cc.use_tls = true;
    cc.ca_certificate_file = ca;
    int status = 0;
    cJSON *j = call(&cc, "POST", "/secure?q=1", "tok", "{\"a\":1}", &status);
    assert_int_equal(status, 200);
    assert_string_equal(jstr(j, "body"), "{\"a\":1}");
    assert_string_equal(jstr(j, "query"), "q=1");
    assert_string_equal(jstr(j, "authorization"), "Bearer tok");
    cJSON_Delete(j);
    /* by name: SNI and the DNS name in the certificate */
    cc.host = "localhost";
    j = call(&cc, "GET", "/by-name", NULL, NULL, &status);
    assert_int_equal(status, 200);
    cJSON_Delete(j);
    cc.host = "127.0.0.1";

    /* the wrong CA: refused, and the message says why */
    gt_http_client_config bad = cc;
    bad.ca_certificate_file = other;
    char *resp = NULL;
    gt_error e = {0};
    assert_int_equal(gt_http_request_send(&bad, "GET", "/", NULL, NULL, 0, &status, &resp, &e), GT_EUNAVAIL);
    assert_null(resp);
    assert_int_equal(status, 0);
    char want[64];
    snprintf(want, sizeof want, "cannot reach https://127.0.0.1:%d: ", f->port);
    assert_non_null(strstr(e.message, want));
    assert_non_null(strstr(e.message, "certificate verify failed"));

    /* the system store does not know our CA either */
    bad.ca_certificate_file = NULL;
    gt_error_clear(&e);
    assert_int_equal(gt_http_request_send(&bad, "GET", "/", NULL, NULL, 0, &status, &resp, &e), GT_EUNAVAIL);

    /* plain HTTP to the TLS port: fails cleanly, from our client and from a raw one */
    gt_http_client_config plain = client_for(f->port);
    gt_error_clear(&e);
    assert_int_equal(gt_http_request_send(&plain, "GET", "/", NULL, NULL, 0, &status, &resp, &e), GT_EUNAVAIL);
    assert_null(resp);
    bool closed = false;
    char *r = raw_exchange(f->port, "GET / HTTP/1.1\r\nHost: x\r\n\r\n", &closed);
    assert_true(closed);
    assert_null(strstr(r, "HTTP/1.1 200"));
    free(r);
    /* a half-open TLS handshake is dropped after the timeout */
    int half = raw_connect(f->port);
    raw_send(half, "\x16\x03\x01", 3);

    /* still serving */
    j = call(&cc, "GET", "/after", NULL, NULL, &status);
    assert_int_equal(status, 200);
    cJSON_Delete(j);
    free(raw_read_all(half, 15000, &closed));
    assert_true(closed);
    close(half);

    /* a client certificate is loaded and offered (this server does not ask for one) */
    char *other_key = tls_path("other.key");
    gt_http_client_config with_cert = cc;
    with_cert.certificate_file = crt;
    with_cert.private_key_file = key;
    j = call(&with_cert, "GET", "/with-cert", NULL, NULL, &status);
    assert_int_equal(status, 200);
    cJSON_Delete(j);
    /* a key that does not match is named */
    with_cert.private_key_file = other_key;
    gt_error_clear(&e);
    assert_int_equal(gt_http_request_send(&with_cert, "GET", "/", NULL, NULL, 0, &status, &resp, &e), GT_EINVAL);
    assert_non_null(strstr(e.message, other_key));
    free(other_key);

    /* a CA file that does not exist is named */
    bad.ca_certificate_file = "/nonexistent/ca.pem";
    gt_error_clear(&e);
    assert_int_equal(gt_http_request_send(&bad, "GET", "/", NULL, NULL, 0, &status, &resp, &e), GT_EINVAL);
    assert_non_null(strstr(e.message, "/nonexistent/ca.pem"));
    stop(&f);

    /* TLS client against a plain server */
    f = start();
    gt_http_client_config tls_to_plain = client_for(f->port);
    tls_to_plain.use_tls = true;
    tls_to_plain.ca_certificate_file = ca;
    gt_error_clear(&e);
    assert_int_equal(gt_http_request_send(&tls_to_plain, "GET", "/", NULL, NULL, 0, &status, &resp, &e),
                     GT_EUNAVAIL);
    assert_non_null(strstr(e.message, "https://127.0.0.1:"));
    stop(&f);
    free(crt), free(key), free(ca), free(other);
}

/* [server] client_cert_auth: the handshake needs a certificate from the CA. */
static void test_mutual_tls(void **state)
{
    (void)state;
    if (tls_dir[0] == '\0')
        skip();
    char *crt = tls_path("srv.crt"), *key = tls_path("srv.key"), *ca = tls_path("ca.crt"),
         *cli_crt = tls_path("cli.crt"), *cli_key = tls_path("cli.key"),
         *other = tls_path("other.crt"), *other_key = tls_path("other.key");
    gt_http_server_config cfg = default_config(NULL);
    cfg.use_tls = true;
    cfg.certificate_file = crt;
    cfg.private_key_file = key;
    cfg.client_cert_auth = true;
    cfg.ca_certificate_file = ca;
    cfg.timeout_ms = 5000;
    fixture *f = start_with(&cfg);
    gt_http_client_config cc = client_for(f->port);
    cc.use_tls = true;
    cc.ca_certificate_file = ca;
    int status = 0;
    char *resp = NULL;
    gt_error e = {0};
    /* no certificate: refused (in TLS 1.3 the alert comes after the client's Finished,
     * so the client may see it on its first read) */
    assert_int_equal(gt_http_request_send(&cc, "GET", "/", NULL, NULL, 0, &status, &resp, &e), GT_EUNAVAIL);
    assert_null(resp);
    assert_int_equal(status, 0);
    /* a certificate from another CA: refused */
    gt_http_client_config wrong = cc;
    wrong.certificate_file = other;
    wrong.private_key_file = other_key;
    gt_error_clear(&e);
    assert_int_equal(gt_http_request_send(&wrong, "GET", "/", NULL, NULL, 0, &status, &resp, &e), GT_EUNAVAIL);
    /* our CA's, but for servers only (extendedKeyUsage serverAuth): refused */
    wrong.certificate_file = crt;
    wrong.private_key_file = key;
    gt_error_clear(&e);
    assert_int_equal(gt_http_request_send(&wrong, "GET", "/", NULL, NULL, 0, &status, &resp, &e), GT_EUNAVAIL);
    /* a client certificate from the CA: served */
    gt_http_client_config good = cc;
    good.certificate_file = cli_crt;
    good.private_key_file = cli_key;
    cJSON *j = call(&good, "POST", "/m", "tok", "{}", &status);
    assert_int_equal(status, 200);
    assert_string_equal(jstr(j, "body"), "{}");
    cJSON_Delete(j);
    stop(&f);

    /* start-up errors name what is missing */
    struct event_base *base = event_base_new();
    fixture dummy = {0};
    gt_http_server_config bad = default_config(&dummy);
    bad.client_cert_auth = true; /* without TLS */
    bad.ca_certificate_file = ca;
    gt_error_clear(&e);
    assert_null(gt_http_server_new(base, &bad, &e));
    assert_int_equal(e.code, GT_EINVAL);
    assert_non_null(strstr(e.message, "client_cert_auth needs use_tls"));
    bad = cfg;
    bad.arg = &dummy;
    bad.ca_certificate_file = NULL;
    gt_error_clear(&e);
    assert_null(gt_http_server_new(base, &bad, &e));
    assert_non_null(strstr(e.message, "CA certificate"));
    bad.ca_certificate_file = "/nonexistent/ca.pem";
    gt_error_clear(&e);
    assert_null(gt_http_server_new(base, &bad, &e));
    assert_non_null(strstr(e.message, "/nonexistent/ca.pem"));
    event_base_free(base);

    /* and so does the configuration, naming the keys */
    const char *confs[] = {
        "[application]\nmode = server\n[server]\nuse_tls = false\nclient_cert_auth = true\n",
        "[application]\nmode = server\n[server]\nuse_tls = true\ncertificate_file = /c.pem\n"
        "private_key_file = /k.pem\nclient_cert_auth = true\n",
    };
    for (size_t i = 0; i < 2; i++) {
        gt_config *gc = gt_config_new();
        gt_error_clear(&e);
        assert_int_equal(gt_config_load_buffer(gc, confs[i], strlen(confs[i]), "t.conf", &e), GT_OK);
        assert_int_equal(gt_config_finish(gc, &e), GT_EINVAL);
        assert_non_null(strstr(e.message, "[server] client_cert_auth"));
        assert_non_null(strstr(e.message, "[server] use_tls"));
        assert_non_null(strstr(e.message, "[application] ca_certificate_file"));
        gt_config_free(&gc);
    }
    free(crt), free(key), free(ca), free(cli_crt), free(cli_key), free(other), free(other_key);
}

static void test_tls_concurrent(void **state)
{
    (void)state;
    if (tls_dir[0] == '\0')
        skip();
    char *crt = tls_path("srv.crt"), *key = tls_path("srv.key"), *ca = tls_path("ca.crt");
    gt_http_server_config cfg = default_config(NULL);
    cfg.use_tls = true;
    cfg.certificate_file = crt;
    cfg.private_key_file = key;
    fixture *f = start_with(&cfg);
    atomic_int ok;
    atomic_init(&ok, 0);
    load l[4];
    for (int i = 0; i < 4; i++) {
        l[i] = (load){.port = f->port, .id = i, .n = 10, .ca = ca, .ok = &ok};
        assert_int_equal(pthread_create(&l[i].t, NULL, load_main, &l[i]), 0);
    }
    for (int i = 0; i < 4; i++)
        pthread_join(l[i].t, NULL);
    assert_int_equal(atomic_load(&ok), 40);
    stop(&f);
    free(crt), free(key), free(ca);
}

/* ------------------------------------------------------------------------ */
/* Client against canned responses */

typedef struct canned {
    pthread_t t;
    int lfd;
    int port;
    const char *resp;   /* NULL: say nothing, wait for the client to go */
} canned;

static void *canned_main(void *arg)
{
    canned *c = arg;
    int fd = accept(c->lfd, NULL, NULL);
    if (fd < 0)
        return NULL;
    gt_buf in = {0};
    bool closed;
    /* read the request head */
    while (in.data == NULL || strstr(in.data, "\r\n\r\n") == NULL) {
        char buf[1024];
        ssize_t r = recv(fd, buf, sizeof buf, 0);
        if (r <= 0)
            break;
        gt_buf_append(&in, buf, (size_t)r);
    }
    gt_buf_free(&in);
    if (c->resp)
        send(fd, c->resp, strlen(c->resp), MSG_NOSIGNAL);
    else
        free(raw_read_all(fd, 15000, &closed));
    close(fd);
    return NULL;
}

static void canned_start(canned *c, const char *resp)
{
    c->resp = resp;
    c->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(c->lfd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(c->lfd, 4), 0);
    socklen_t sl = sizeof a;
    getsockname(c->lfd, (struct sockaddr *)&a, &sl);
    c->port = ntohs(a.sin_port);
    assert_int_equal(pthread_create(&c->t, NULL, canned_main, c), 0);
}

static gt_err canned_call(const char *resp, int64_t timeout_ms, int *status, char **body, gt_error *e)
{
    canned c;
    canned_start(&c, resp);
    gt_http_client_config cc = client_for(c.port);
    cc.timeout_ms = timeout_ms;
    gt_err rc = gt_http_request_send(&cc, "GET", "/", NULL, NULL, 0, status, body, e);
    pthread_join(c.t, NULL);
    close(c.lfd);
    return rc;
}

static void test_client_response_framing(void **state)
{
    (void)state;
    int status = 0;
    char *body = NULL;
    gt_error e = {0};
    struct {
        const char *resp;
        int status;
        const char *body;
    } good[] = {
        {"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", 200, "hello"},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n"
         "Trailer: 1\r\n\r\n",
         200, "hello world"},
        {"HTTP/1.0 200 OK\r\nServer: old\r\n\r\nuntil close", 200, "until close"},
        {"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok", 201, "ok"},
        {"HTTP/1.1 204 No Content\n\n", 204, ""},
        {"HTTP/1.1 404 Not Found\r\ncontent-length:  3 \r\n\r\nabc", 404, "abc"},
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        gt_error_clear(&e);
        if (canned_call(good[i].resp, 10000, &status, &body, &e) != GT_OK)
            fail_msg("case %zu: %s", i, e.message);
        assert_int_equal(status, good[i].status);
        assert_string_equal(body, good[i].body);
        free(body);
        body = NULL;
    }
    const char *bad[] = {
        "SSH-2.0-OpenSSH_9.2\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
        "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
        "",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        gt_error_clear(&e);
        assert_int_equal(canned_call(bad[i], 10000, &status, &body, &e), GT_EUNAVAIL);
        assert_null(body);
        assert_int_equal(status, 0);
        assert_non_null(strstr(e.message, "cannot reach http://127.0.0.1:"));
    }
    /* no answer at all: the timeout */
    gt_error_clear(&e);
    assert_int_equal(canned_call(NULL, 300, &status, &body, &e), GT_EUNAVAIL);
    assert_non_null(strstr(e.message, "timed out"));
}

static void test_client_refused(void **state)
{
    (void)state;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t sl = sizeof a;
    getsockname(fd, (struct sockaddr *)&a, &sl);
    close(fd); /* bound, never listened: nothing there now */
    gt_http_client_config cc = client_for(ntohs(a.sin_port));
    int status = -1;
    char *resp = NULL;
    gt_error e = {0};
    assert_int_equal(gt_http_request_send(&cc, "GET", "/", NULL, NULL, 0, &status, &resp, &e), GT_EUNAVAIL);
    char want[96];
    snprintf(want, sizeof want, "cannot reach http://127.0.0.1:%d: Connection refused", ntohs(a.sin_port));
    assert_string_equal(e.message, want);
    cc.use_tls = true;
    gt_error_clear(&e);
    assert_int_equal(gt_http_request_send(&cc, "GET", "/", NULL, NULL, 0, &status, &resp, &e), GT_EUNAVAIL);
    assert_non_null(strstr(e.message, "cannot reach https://"));
    /* an unknown host */
    cc.host = "no-such-host.invalid";
    cc.use_tls = false;
    gt_error_clear(&e);
    assert_int_equal(gt_http_request_send(&cc, "GET", "/", NULL, NULL, 0, &status, &resp, &e), GT_EUNAVAIL);
    assert_non_null(strstr(e.message, "no-such-host.invalid"));
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    evthread_use_pthreads();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trips),
        cmocka_unit_test(test_status_and_headers_pass_through),
        cmocka_unit_test(test_refuses_two_content_lengths),
        cmocka_unit_test(test_refuses_content_length_list_differs),
        cmocka_unit_test(test_refuses_content_length_plus),
        cmocka_unit_test(test_refuses_two_idempotency_keys),
        cmocka_unit_test(test_refuses_content_length_minus),
        cmocka_unit_test(test_refuses_content_length_not_digits),
        cmocka_unit_test(test_refuses_content_length_empty),
        cmocka_unit_test(test_refuses_content_length_overflow),
        cmocka_unit_test(test_refuses_te_and_content_length),
        cmocka_unit_test(test_refuses_te_gzip),
        cmocka_unit_test(test_refuses_te_gzip_then_chunked),
        cmocka_unit_test(test_refuses_te_chunked_not_last),
        cmocka_unit_test(test_refuses_te_chunked_twice),
        cmocka_unit_test(test_refuses_te_in_http10),
        cmocka_unit_test(test_refuses_space_before_colon),
        cmocka_unit_test(test_refuses_obs_fold),
        cmocka_unit_test(test_refuses_obs_fold_tab),
        cmocka_unit_test(test_refuses_space_before_first_header),
        cmocka_unit_test(test_refuses_control_char_in_value),
        cmocka_unit_test(test_refuses_del_in_value),
        cmocka_unit_test(test_refuses_nul_in_value),
        cmocka_unit_test(test_refuses_bare_cr_in_value),
        cmocka_unit_test(test_refuses_bare_lf),
        cmocka_unit_test(test_refuses_name_not_token),
        cmocka_unit_test(test_refuses_name_with_quote),
        cmocka_unit_test(test_refuses_name_empty),
        cmocka_unit_test(test_refuses_no_colon),
        cmocka_unit_test(test_refuses_two_hosts),
        cmocka_unit_test(test_refuses_no_host_in_http11),
        cmocka_unit_test(test_refuses_bad_chunk_size),
        cmocka_unit_test(test_refuses_chunk_without_crlf),
        cmocka_unit_test(test_refuses_request_line_double_space),
        cmocka_unit_test(test_framing_accepted),
        cmocka_unit_test(test_slowloris_head_times_out),
        cmocka_unit_test(test_max_connections),
        cmocka_unit_test(test_cap_defaults),
        cmocka_unit_test(test_max_buffered_bytes),
        cmocka_unit_test(test_body_limit),
        cmocka_unit_test(test_loop_not_blocked_by_handler),
        cmocka_unit_test(test_client_gone_during_handler),
        cmocka_unit_test(test_slow_client_dropped),
        cmocka_unit_test(test_concurrent_requests),
        cmocka_unit_test(test_free_with_requests_in_flight),
        cmocka_unit_test(test_free_with_stalled_reader),
        cmocka_unit_test(test_config_errors),
        cmocka_unit_test(test_tls),
        cmocka_unit_test(test_tls_concurrent),
        cmocka_unit_test(test_mutual_tls),
        cmocka_unit_test(test_client_response_framing),
        cmocka_unit_test(test_client_refused),
    };
    int rc = cmocka_run_group_tests(tests, tls_setup, tls_teardown);
    libevent_global_shutdown();
    return rc;
}
