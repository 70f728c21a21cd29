/* libFuzzer harness for http.c. Three kinds of input:
 *  - anything not starting with 'R' or 'P': raw bytes sent as a request to a real
 *    server (our framing + the worker pool, body limit 256 bytes) over loopback; the
 *    client half closes and the loop runs until the server closes the connection. The
 *    server lives for the whole run, so state that leaks between inputs shows up too.
 *  - "P" + bytes: gt_http_parse_head and gt_http_chunked_decode on the bytes, with
 *    the properties the server relies on checked (see fuzz_parser).
 *  - "R" + bytes: the bytes are served as the answer to gt_http_request_send, which
 *    parses status line, headers, chunked/length/close framing.
 * No crash, no leak, no UB, no hang (a connection the server never closes aborts). */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>

#include "http.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void echo(void *arg, int worker, const gt_http_request *req, gt_http_response *resp)
{
    (void)arg;
    (void)worker;
    gt_buf b = {0};
    gt_buf_printf(&b, "%s %s %s %s %s %zu", req->method, req->path, req->query ? req->query : "-",
                  req->authorization ? req->authorization : "-",
                  req->content_type ? req->content_type : "-", req->body_len);
    if (req->body && req->body_len && req->body[req->body_len] != '\0')
        abort(); /* the copy must be NUL-terminated */
    if (strcmp(req->path, "/zero") == 0) {
        gt_buf_free(&b);
        return; /* status 0 -> 500 */
    }
    resp->status = strcmp(req->path, "/missing") == 0 ? 404 : 200;
    if (req->query && strcmp(req->query, "retry") == 0)
        resp->retry_after = gt_xstrdup("1");
    resp->body_len = b.len;
    resp->body = gt_buf_steal(&b);
}

typedef struct server_state {
    struct event_base *base;
    gt_http_server *srv;
    int port;
} server_state;

typedef struct exchange {
    server_state *st;
    int fd;
    const uint8_t *data;
    size_t len, sent;
    struct event *rd, *wr, *deadline;
    bool closed;
} exchange;

static void on_write(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    exchange *x = arg;
    while (x->sent < x->len) {
        ssize_t w = send(fd, x->data + x->sent, x->len - x->sent, MSG_NOSIGNAL);
        if (w > 0) {
            x->sent += (size_t)w;
            continue;
        }
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return; /* the event fires again when there is room */
        x->sent = x->len; /* the server closed early: fine, stop sending */
    }
    shutdown(fd, SHUT_WR);
    event_del(x->wr);
}

static void on_read(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    exchange *x = arg;
    char buf[16384];
    for (;;) {
        ssize_t r = recv(fd, buf, sizeof buf, 0);
        if (r > 0)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        x->closed = true; /* end of stream or reset: the server let go */
        event_base_loopbreak(x->st->base);
        return;
    }
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    fprintf(stderr, "fuzz_http: the server kept a half-closed connection open\n");
    abort();
}

/* Thousands of connections a second leave ports in TIME_WAIT; on loopback Linux reuses
 * them for connect() (tcp_tw_reuse=2) after a second, so wait rather than fail. */
static int loopback_connect(int port, int flags)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    for (int tries = 0; tries < 5000; tries++) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | flags, 0);
        if (fd < 0)
            abort();
        if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0 || errno == EINPROGRESS)
            return fd;
        int e = errno;
        close(fd);
        if (e != EADDRNOTAVAIL && e != EAGAIN)
            break;
        usleep(1000);
    }
    perror("fuzz_http: connect");
    abort();
}

static server_state *server(void)
{
    static server_state st;
    if (st.srv)
        return &st;
    signal(SIGPIPE, SIG_IGN);
    st.base = event_base_new();
    gt_http_server_config cfg = {
        .listen_address = "127.0.0.1",
        .max_body_size = 256,
        .workers = 2,
        .timeout_ms = 2000,
        .handler = echo,
    };
    gt_error e = {0};
    st.srv = gt_http_server_new(st.base, &cfg, &e);
    if (st.srv == NULL) {
        fprintf(stderr, "fuzz_http: %s\n", e.message);
        abort();
    }
    st.port = gt_http_server_port(st.srv);
    return &st;
}

static void fuzz_request(const uint8_t *data, size_t size)
{
    server_state *st = server();
    exchange x = {.st = st, .data = data, .len = size};
    x.fd = loopback_connect(st->port, SOCK_NONBLOCK);
    x.rd = event_new(st->base, x.fd, EV_READ | EV_PERSIST, on_read, &x);
    x.wr = event_new(st->base, x.fd, EV_WRITE | EV_PERSIST, on_write, &x);
    x.deadline = evtimer_new(st->base, on_deadline, &x);
    struct timeval tv = {.tv_sec = 8};
    event_add(x.rd, NULL);
    event_add(x.wr, NULL);
    evtimer_add(x.deadline, &tv);
    while (!x.closed)
        event_base_loop(st->base, EVLOOP_ONCE);
    event_free(x.rd);
    event_free(x.wr);
    event_free(x.deadline);
    close(x.fd);
    /* let the server finish with its side before the next input (and the leak check) */
    event_base_loop(st->base, EVLOOP_NONBLOCK);
}

typedef struct canned {
    int lfd;
    const uint8_t *data;
    size_t size;
} canned;

static void *serve_canned(void *arg)
{
    canned *c = arg;
    int fd = accept(c->lfd, NULL, NULL);
    if (fd < 0)
        return NULL;
    char buf[4096];
    /* the client's request is small; read its head, then answer and half close */
    size_t got = 0;
    char head[4];
    while (got < 4 || memcmp(head, "\r\n\r\n", 4) != 0) {
        ssize_t r = recv(fd, buf, 1, 0);
        if (r <= 0)
            break;
        memmove(head, head + 1, 3);
        head[3] = buf[0];
        got++;
    }
    size_t off = 0;
    while (off < c->size) {
        ssize_t w = send(fd, c->data + off, c->size - off, MSG_NOSIGNAL);
        if (w <= 0)
            break;
        off += (size_t)w;
    }
    shutdown(fd, SHUT_WR);
    while (recv(fd, buf, sizeof buf, 0) > 0)
        ;
    close(fd);
    return NULL;
}

/* One listener for the whole run: binding a fresh port per input runs out of ports. */
static int canned_listener(int *port)
{
    static int lfd = -1, lport;
    if (lfd < 0) {
        signal(SIGPIPE, SIG_IGN);
        lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        int one = 1;
        setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        struct sockaddr_in a = {.sin_family = AF_INET};
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t sl = sizeof a;
        if (bind(lfd, (struct sockaddr *)&a, sizeof a) != 0 || listen(lfd, 16) != 0 ||
            getsockname(lfd, (struct sockaddr *)&a, &sl) != 0)
            abort();
        lport = ntohs(a.sin_port);
    }
    *port = lport;
    return lfd;
}

static void fuzz_response(const uint8_t *data, size_t size)
{
    canned c = {.data = data, .size = size};
    int port = 0;
    c.lfd = canned_listener(&port);
    pthread_t t;
    if (pthread_create(&t, NULL, serve_canned, &c) != 0)
        abort();
    gt_http_client_config cc = {.host = "127.0.0.1", .port = port, .timeout_ms = 5000};
    int status = 0;
    char *resp = NULL;
    gt_error e = {0};
    gt_err rc = gt_http_request_send(&cc, (size & 1) ? "HEAD" : "GET", "/", "t", NULL, 0, &status,
                                     &resp, &e);
    if (rc == GT_OK && (resp == NULL || status < 100 || status > 599))
        abort();
    if (rc != GT_OK && (resp != NULL || e.code != GT_EUNAVAIL))
        abort();
    free(resp);
    pthread_join(t, NULL);
}

static bool inside(const char *p, size_t n, const char *d, size_t size)
{
    return p >= d && n <= size && p + n <= d + size;
}

/* Chunked data decoded in one piece and byte by byte: the same outcome. */
static void check_chunked(const char *in, size_t len)
{
    gt_http_chunked a = {0}, b = {0};
    gt_buf ba = {0}, bb = {0};
    bool done_a = false, done_b = false;
    const char *why = NULL;
    long ra = gt_http_chunked_decode(&a, in, len, &ba, 256, &done_a, &why);
    if (ra < 0 && why == NULL)
        abort();
    long rb = 0;
    size_t used = 0;
    for (size_t i = 0; i < len && !done_b; i++) {
        rb = gt_http_chunked_decode(&b, in + i, 1, &bb, 256, &done_b, &why);
        if (rb < 0)
            break;
        used += (size_t)rb;
    }
    if ((ra < 0) != (rb < 0) || (ra < 0 && ra != rb))
        abort();
    if (ra >= 0) {
        if (done_a != done_b || ba.len != bb.len || a.total != ba.len ||
            (ba.len && memcmp(ba.data, bb.data, ba.len) != 0) || (size_t)ra > len ||
            (done_a && (size_t)ra != used) || (!done_a && (size_t)ra != len))
            abort();
        if (ba.len > 256)
            abort();
    }
    gt_buf_free(&ba);
    gt_buf_free(&bb);
}

/* A head parsed complete lies inside the input, names a known method, frames its
 * body one way only, and is incomplete one byte short of its end (so the server,
 * which parses as bytes arrive, sees the same head however they are split). */
static void fuzz_parser(const uint8_t *data, size_t size)
{
    const char *d = (const char *)data;
    gt_http_head h;
    int r = gt_http_parse_head(d, size, 4096, &h);
    if (r == 1) {
        static const char *const known[] = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"};
        bool ok = false;
        for (size_t i = 0; i < 7; i++)
            ok |= h.method && strcmp(h.method, known[i]) == 0;
        if (!ok || h.size == 0 || h.size > size || h.size > 4096 || h.path_len == 0 ||
            !(inside(h.path, h.path_len, d, h.size) || (h.path_len == 1 && h.path[0] == '/')) ||
            (h.query && !inside(h.query, h.query_len, d, h.size)) ||
            (h.authorization && !inside(h.authorization, h.authorization_len, d, h.size)) ||
            (h.content_type && !inside(h.content_type, h.content_type_len, d, h.size)) ||
            (h.chunked && h.content_length >= 0) || h.content_length < -1 ||
            (h.minor != 0 && h.minor != 1) || (h.minor == 0 && !h.close))
            abort();
        for (size_t i = 0; i < h.authorization_len; i++)
            if (h.authorization[i] == '\r' || h.authorization[i] == '\n' || h.authorization[i] == '\0')
                abort();
        gt_http_head h2;
        if (gt_http_parse_head(d, h.size - 1, 4096, &h2) != 0)
            abort();
        check_chunked(d + h.size, size - h.size);
    } else if (r < 0) {
        if (h.why == NULL || (h.status != 400 && h.status != 414 && h.status != 417 &&
                              h.status != 431 && h.status != 501 && h.status != 505))
            abort();
        check_chunked(d, size);
    } else {
        check_chunked(d, size);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 0 && data[0] == 'P')
        fuzz_parser(data + 1, size - 1);
    else if (size > 0 && data[0] == 'R')
        fuzz_response(data + 1, size - 1);
    else
        fuzz_request(data, size);
    return 0;
}
