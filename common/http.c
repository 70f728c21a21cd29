/* HTTP server (libevent 2.1 evhttp + a worker pool) and a blocking client.
 *
 * Server threads: the loop thread owns evhttp and every evhttp_request. For each
 * request it copies what the handler needs into a job and queues it; a worker runs
 * the handler and puts the job on a done queue, then wakes the loop through a pipe
 * (not event_active, so the caller's base needs no evthread set-up). The loop sends
 * the reply. A job whose connection closed meanwhile is marked orphaned by the
 * connection's close callback and is dropped when it comes back.
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
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/util.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

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
/* Server */

typedef struct gt_http_job gt_http_job;

struct gt_http_server {
    struct event_base *base;
    struct evhttp *http;
    struct evhttp_bound_socket *listener;
    SSL_CTX *ssl_ctx;
    struct event *wake_ev;
    int wake_fd[2];              /* workers write a byte, the loop reads */
    int port;
    int64_t max_body;
    int64_t timeout_ms;
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
    gt_http_job *jobs;           /* every live job, for shutdown */
    size_t inflight;
    bool closing;                /* gt_http_server_free started: answer 503 */
};

struct gt_http_worker_arg {
    gt_http_server *s;
    int index;
};

struct gt_http_job {
    gt_http_job *qnext;          /* work or done queue, under s->mu */
    gt_http_job *prev, *next;    /* s->jobs, loop thread only */
    gt_http_server *s;
    struct evhttp_request *req;  /* NULL once the connection closed (loop thread) */
    bool sending;                /* reply handed to evhttp (loop thread) */
    atomic_bool orphaned;        /* lets a worker skip a request nobody waits for */
    gt_http_request in;
    gt_http_response out;
    char *path, *query, *authorization, *content_type, *peer, *body;
};

static const char *gt_http_method_name(enum evhttp_cmd_type t)
{
    switch (t) {
    case EVHTTP_REQ_GET: return "GET";
    case EVHTTP_REQ_POST: return "POST";
    case EVHTTP_REQ_HEAD: return "HEAD";
    case EVHTTP_REQ_PUT: return "PUT";
    case EVHTTP_REQ_DELETE: return "DELETE";
    case EVHTTP_REQ_OPTIONS: return "OPTIONS";
    case EVHTTP_REQ_PATCH: return "PATCH";
    default: return NULL;
    }
}

/* Replies from the loop thread with {"error":{"code":..,"message":..}}; message is
 * ours, never the client's, so it needs no JSON escaping. */
static void gt_http_reply_error(struct evhttp_request *req, int status, const char *code,
                                const char *message, bool close)
{
    struct evkeyvalq *out = evhttp_request_get_output_headers(req);
    evhttp_add_header(out, "Content-Type", "application/json");
    if (close)
        evhttp_add_header(out, "Connection", "close");
    if (status == 503)
        evhttp_add_header(out, "Retry-After", "1");
    struct evbuffer *buf = evbuffer_new();
    if (buf)
        evbuffer_add_printf(buf, "{\"error\":{\"code\":\"%s\",\"message\":\"%s\"}}", code,
                            message);
    evhttp_send_reply(req, status, NULL, buf);
    if (buf)
        evbuffer_free(buf);
}

static void gt_http_job_free(gt_http_job *job)
{
    gt_http_server *s = job->s;
    if (job->prev)
        job->prev->next = job->next;
    else
        s->jobs = job->next;
    if (job->next)
        job->next->prev = job->prev;
    s->inflight--;
    free(job->path);
    free(job->query);
    free(job->authorization);
    free(job->content_type);
    free(job->peer);
    free(job->body);
    free(job->out.body);
    free(job->out.retry_after);
    free(job);
}

/* evhttp frees the connection (the reply could not be written, evhttp_free): forget
 * the request. evhttp frees it with the connection, except when it failed on EOF or
 * a timeout before we replied: then it detaches the request (no connection) and
 * leaves it to us. (2.1.12 stops reading while we hold a request, so that case
 * should not arise; handled all the same.) */
static void gt_http_on_close(struct evhttp_connection *evcon, void *arg)
{
    gt_http_job *job = arg;
    evhttp_connection_set_closecb(evcon, NULL, NULL);
    if (job->req && !job->sending && evhttp_request_get_connection(job->req) == NULL)
        evhttp_request_free(job->req);
    job->req = NULL;
    atomic_store(&job->orphaned, true);
    if (job->sending)
        gt_http_job_free(job); /* no on_complete will come */
}

/* The reply is written; evhttp frees the request (and maybe the connection) next. */
static void gt_http_on_complete(struct evhttp_request *req, void *arg)
{
    gt_http_job *job = arg;
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    if (evcon)
        evhttp_connection_set_closecb(evcon, NULL, NULL);
    gt_http_job_free(job);
}

static void gt_http_send_job(gt_http_job *job)
{
    struct evhttp_request *req = job->req;
    gt_http_response *r = &job->out;
    int status = r->status;
    if (status < 100 || status > 599) {
        if (status != 0)
            gt_warn("http: handler returned status %d for %s %s; answering 500", status,
                    job->in.method, job->in.path);
        free(r->body);
        r->body = gt_xstrdup("{\"error\":{\"code\":\"internal\",\"message\":\"no response\"}}");
        r->body_len = strlen(r->body);
        r->content_type = NULL;
        status = 500;
    }
    struct evkeyvalq *out = evhttp_request_get_output_headers(req);
    evhttp_add_header(out, "Content-Type", r->content_type ? r->content_type : "application/json");
    if (r->retry_after && !strpbrk(r->retry_after, "\r\n"))
        evhttp_add_header(out, "Retry-After", r->retry_after);
    struct evbuffer *buf = evbuffer_new();
    if (buf && r->body && r->body_len)
        evbuffer_add(buf, r->body, r->body_len);
    job->sending = true;
    evhttp_request_set_on_complete_cb(req, gt_http_on_complete, job);
    evhttp_send_reply(req, status, NULL, buf);
    if (buf)
        evbuffer_free(buf);
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
        if (job->req == NULL)
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

/* A header value that must be a non-negative decimal; -1 when absent. */
static int64_t gt_http_content_length(struct evkeyvalq *in, bool *bad)
{
    const char *v = evhttp_find_header(in, "Content-Length");
    int64_t n = -1;
    if (v && gt_parse_int64(v, 0, INT64_MAX, &n, "Content-Length", NULL) != GT_OK)
        *bad = true;
    return n;
}

static void gt_http_on_request(struct evhttp_request *req, void *arg)
{
    gt_http_server *s = arg;
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    struct evkeyvalq *in = evhttp_request_get_input_headers(req);
    struct evbuffer *body = evhttp_request_get_input_buffer(req);
    size_t body_len = evbuffer_get_length(body);
    const char *method = gt_http_method_name(evhttp_request_get_command(req));
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    char msg[128];

    if (s->closing) {
        gt_http_reply_error(req, 503, "unavailable", "server shutting down", true);
        return;
    }
    if (method == NULL || uri == NULL) { /* evhttp filters these; belt and braces */
        gt_http_reply_error(req, 400, "invalid_argument", "bad request line", true);
        return;
    }
    bool bad_length = false;
    int64_t clen = gt_http_content_length(in, &bad_length);
    const char *te = evhttp_find_header(in, "Transfer-Encoding");
    bool chunked = te != NULL;
    if (bad_length || (chunked && clen >= 0) || (te && strcasecmp(te, "chunked") != 0)) {
        /* ambiguous framing is how requests get smuggled past a proxy */
        gt_http_reply_error(req, 400, "invalid_argument", "bad Content-Length or Transfer-Encoding",
                            true);
        return;
    }
    if ((clen > 0 || chunked) && evhttp_request_get_command(req) != EVHTTP_REQ_POST &&
        evhttp_request_get_command(req) != EVHTTP_REQ_PUT &&
        evhttp_request_get_command(req) != EVHTTP_REQ_PATCH) {
        /* evhttp 2.1 does not read bodies of these methods: the bytes would be parsed
         * as the next request, so refuse and close. */
        snprintf(msg, sizeof msg, "%s requests take no body", method);
        gt_http_reply_error(req, 400, "invalid_argument", msg, true);
        return;
    }
    if ((int64_t)body_len > s->max_body || clen > s->max_body) {
        snprintf(msg, sizeof msg, "request body over %lld bytes", (long long)s->max_body);
        gt_http_reply_error(req, 413, "too_large", msg, false);
        return;
    }
    pthread_mutex_lock(&s->mu);
    bool full = s->work_len >= GT_HTTP_MAX_QUEUE;
    pthread_mutex_unlock(&s->mu);
    if (full) {
        gt_http_reply_error(req, 503, "unavailable", "server busy", false);
        return;
    }

    gt_http_job *job = gt_xcalloc(1, sizeof *job);
    job->s = s;
    job->req = req;
    atomic_init(&job->orphaned, false);
    const char *path = evhttp_uri_get_path(uri);
    job->path = gt_xstrdup(path && path[0] ? path : "/");
    job->query = gt_xstrdup(evhttp_uri_get_query(uri));
    job->authorization = gt_xstrdup(evhttp_find_header(in, "Authorization"));
    job->content_type = gt_xstrdup(evhttp_find_header(in, "Content-Type"));
    char *peer_addr = NULL;
    ev_uint16_t peer_port = 0;
    evhttp_connection_get_peer(evcon, &peer_addr, &peer_port);
    job->peer = gt_xstrdup(peer_addr ? peer_addr : "");
    if (body_len > 0) {
        job->body = gt_xmalloc(body_len + 1);
        evbuffer_copyout(body, job->body, body_len);
        job->body[body_len] = '\0';
    }
    job->in = (gt_http_request){
        .method = method,
        .path = job->path,
        .query = job->query,
        .authorization = job->authorization,
        .content_type = job->content_type,
        .peer = job->peer,
        .body = job->body,
        .body_len = job->body ? body_len : 0,
    };
    job->next = s->jobs;
    if (s->jobs)
        s->jobs->prev = job;
    s->jobs = job;
    s->inflight++;
    evhttp_connection_set_closecb(evcon, gt_http_on_close, job);

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

/* evhttp calls this for each accepted connection. Returning NULL would make evhttp
 * fall back to a plain socket on a TLS port, so failures abort like gt_xmalloc: both
 * only fail when memory is exhausted. */
static struct bufferevent *gt_http_tls_bev(struct event_base *base, void *arg)
{
    gt_http_server *s = arg;
    SSL *ssl = SSL_new(s->ssl_ctx);
    if (ssl == NULL) {
        gt_errorlog("http: SSL_new failed (out of memory)");
        abort();
    }
    struct bufferevent *bev = bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                                             BEV_OPT_CLOSE_ON_FREE);
    if (bev == NULL) {
        gt_errorlog("http: bufferevent_openssl_socket_new failed (out of memory)");
        abort();
    }
    /* a client that closes without close_notify has still sent a complete request */
    bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
    return bev;
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

/* After the workers are joined: send the finished replies and run the loop until
 * they are written or the timeout passes. Called after the caller's loop returned;
 * if it is still running (a callback freed us), event_base_loop refuses and the
 * replies are dropped with their connections. */
static void gt_http_drain(gt_http_server *s)
{
    gt_http_deliver(s);
    if (s->inflight == 0)
        return;
    bool expired = false;
    struct event *timer = evtimer_new(s->base, gt_http_on_deadline, &expired);
    struct timeval tv = {.tv_sec = s->timeout_ms / 1000, .tv_usec = (s->timeout_ms % 1000) * 1000};
    if (timer == NULL || evtimer_add(timer, &tv) != 0) {
        if (timer)
            event_free(timer);
        return;
    }
    while (s->inflight > 0 && !expired)
        if (event_base_loop(s->base, EVLOOP_ONCE) != 0)
            break;
    event_free(timer);
}

static void gt_http_destroy(gt_http_server *s)
{
    if (s->listener) {
        evhttp_del_accept_socket(s->http, s->listener);
        s->listener = NULL;
    }
    s->closing = true;
    gt_http_stop_workers(s);
    if (s->http)
        gt_http_drain(s);
    /* whatever is left: connections that did not take their reply in time */
    while (s->jobs) {
        gt_http_job *job = s->jobs;
        if (job->req) {
            struct evhttp_connection *evcon = evhttp_request_get_connection(job->req);
            if (evcon)
                evhttp_connection_set_closecb(evcon, NULL, NULL);
            if (job->sending)
                evhttp_request_set_on_complete_cb(job->req, NULL, NULL);
        }
        gt_http_job_free(job);
    }
    s->done_head = s->done_tail = NULL; /* drained above; workers are gone */
    if (s->http)
        evhttp_free(s->http);
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
    if (cfg->max_body_size < 1 || cfg->timeout_ms < 0) {
        gt_error_set(err, GT_EINVAL, "http server: max_body_size must be positive and timeout_ms >= 0");
        return NULL;
    }
    if (cfg->use_tls && (cfg->certificate_file == NULL || cfg->private_key_file == NULL)) {
        gt_error_set(err, GT_EINVAL, "http server: use_tls needs certificate_file and private_key_file");
        return NULL;
    }

    gt_http_server *s = gt_xcalloc(1, sizeof *s);
    s->base = base;
    s->wake_fd[0] = s->wake_fd[1] = -1;
    s->max_body = cfg->max_body_size;
    s->timeout_ms = cfg->timeout_ms ? cfg->timeout_ms : GT_HTTP_DEFAULT_TIMEOUT_MS;
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
    if ((s->http = evhttp_new(base)) == NULL) {
        gt_error_set(err, GT_ENOMEM, "http server: evhttp_new failed");
        goto fail;
    }
    struct timeval tv = {.tv_sec = s->timeout_ms / 1000, .tv_usec = (s->timeout_ms % 1000) * 1000};
    evhttp_set_timeout_tv(s->http, &tv);
    evhttp_set_allowed_methods(s->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_PUT |
                                            EVHTTP_REQ_PATCH | EVHTTP_REQ_DELETE |
                                            EVHTTP_REQ_HEAD | EVHTTP_REQ_OPTIONS);
    evhttp_set_max_headers_size(s->http, GT_HTTP_MAX_HEADERS);
    /* evhttp 2.1 cannot hand us a request before its body is read, and its own 413
     * has an HTML body. So evhttp's limit is a backstop above ours: bodies up to it are
     * read and answered by gt_http_on_request with the JSON 413; larger ones (and a
     * Content-Length past it, before any body is read) get evhttp's 413 and a close. */
    int64_t slack = s->max_body < 65536 ? 65536 : s->max_body;
    evhttp_set_max_body_size(s->http, s->max_body > INT64_MAX - slack ? -1 : s->max_body + slack);
    evhttp_set_gencb(s->http, gt_http_on_request, s);
    if (cfg->use_tls)
        evhttp_set_bevcb(s->http, gt_http_tls_bev, s);

    s->listener = evhttp_bind_socket_with_handle(s->http, cfg->listen_address, (ev_uint16_t)cfg->port);
    if (s->listener == NULL) {
        int e = EVUTIL_SOCKET_ERROR();
        gt_error_set(err, GT_EUNAVAIL, "cannot listen on %s:%lld: %s", cfg->listen_address,
                     (long long)cfg->port, e ? evutil_socket_error_to_string(e) : "bind failed");
        goto fail;
    }
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (getsockname(evhttp_bound_socket_get_fd(s->listener), (struct sockaddr *)&ss, &sl) != 0) {
        gt_error_set(err, GT_EIO, "http server: getsockname: %s", gt_http_strerror(errno, eb, sizeof eb));
        goto fail;
    }
    s->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                             : ((struct sockaddr_in *)&ss)->sin_port);
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

/* A byte that may not appear in a request line or header value we build. */
static bool gt_http_unsafe(const char *s)
{
    for (; s && *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return true;
    return false;
}

gt_err gt_http_request_send(const gt_http_client_config *cfg, const char *method,
                            const char *path_and_query, const char *token, const char *body,
                            size_t body_len, int *status, char **resp, gt_error *err)
{
    gt_err rc = GT_OK;
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
        /* evhttp (ours included) closes without close_notify; the HTTP framing
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
