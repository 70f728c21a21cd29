/* HTTP/1.1 over libevent bufferevents, with TLS (OpenSSL, TLS 1.2 and 1.3 only) on
 * listeners and clients. The server frames requests itself, strictly by RFC 9112
 * (anything ambiguous is refused with 400 and a closed connection), caps connections
 * and the request bytes it holds, and hands each request to a pool of worker threads,
 * so a handler may block (store, Redis, AMQP, a child) without stalling the loop;
 * replies are sent from the loop thread. */
#ifndef GT_HTTP_H
#define GT_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "util.h"

struct event_base;

typedef struct gt_http_request {
    const char *method;        /* "GET", ... */
    const char *path;          /* the raw (still percent-encoded) path, without the query */
    const char *query;         /* raw query string without '?', or NULL */
    const char *authorization; /* the Authorization header, or NULL */
    const char *content_type;
    const char *idempotency_key; /* the Idempotency-Key header, or NULL */
    const char *peer;          /* client address, for throttling and logs */
    const char *body;          /* NUL-terminated copy of the body, or NULL */
    size_t body_len;
} gt_http_request;

typedef struct gt_http_response {
    int status;
    char *body;                /* malloc'd; sent as is */
    size_t body_len;
    const char *content_type;  /* static string; NULL = application/json */
    char *retry_after;         /* malloc'd value of Retry-After, or NULL */
} gt_http_response;

/* Runs on a worker thread. Fills resp (status 0 means 500). */
typedef void (*gt_http_handler)(void *arg, int worker, const gt_http_request *req,
                                gt_http_response *resp);

#define GT_HTTP_DEFAULT_MAX_CONNECTIONS 1024
#define GT_HTTP_DEFAULT_MAX_BUFFERED (64 * 1024 * 1024)

typedef struct gt_http_server_config {
    const char *listen_address;
    int64_t port;                  /* 0: any free port (see gt_http_server_port) */
    bool use_tls;
    const char *certificate_file;
    const char *private_key_file;
    bool client_cert_auth;         /* mutual TLS: needs use_tls and ca_certificate_file */
    const char *ca_certificate_file; /* client certificates must chain to this CA */
    int64_t max_body_size;         /* larger bodies get 413 with a JSON error */
    int64_t max_connections;       /* open connections; past it 503; 0 = the default */
    int64_t max_buffered_bytes;    /* request bytes held (heads, bodies, requests being
                                      handled) across connections; past it 503; 0 = default;
                                      at least max_body_size */
    int workers;                   /* worker threads, >= 1 */
    int64_t timeout_ms;            /* a request head must arrive whole within it, a body may
                                      pause and a reply stall that long; 0 = 30000 */
    gt_http_handler handler;
    void *arg;
} gt_http_server_config;

typedef struct gt_http_server gt_http_server;

/* Binds and starts serving on base (the caller runs the loop). Bind and TLS errors
 * name the address and the file. */
gt_http_server *gt_http_server_new(struct event_base *base, const gt_http_server_config *cfg,
                                   gt_error *err) __attribute__((warn_unused_result));
/* The bound port. */
int gt_http_server_port(const gt_http_server *s);
/* Stops accepting, finishes in-flight requests, joins the workers, frees. */
void gt_http_server_free(gt_http_server **s);

/* Request framing, exposed for the tests and the fuzzer. The spans point into the
 * parsed bytes. */
typedef struct gt_http_head {
    size_t size;                   /* bytes of the head, up to and with the empty line */
    const char *method;            /* static: "GET", "HEAD", "POST", ... */
    int minor;                     /* HTTP/1.<minor>: 0 or 1 */
    const char *path;              /* origin-form path (from an absolute-form target too) */
    size_t path_len;
    const char *query;             /* after '?', or NULL when there is no '?' */
    size_t query_len;
    const char *authorization, *content_type; /* values, or NULL */
    size_t authorization_len, content_type_len;
    const char *idempotency_key;   /* Idempotency-Key value, or NULL */
    size_t idempotency_key_len;
    int64_t content_length;        /* -1: none */
    bool chunked;                  /* Transfer-Encoding: chunked */
    bool close;                    /* Connection: close, or HTTP/1.0 */
    bool expect_continue;          /* Expect: 100-continue */
    int status;                    /* refused: 400, 414, 417, 431, 501 or 505 */
    const char *why;               /* refused: what was wrong (static) */
} gt_http_head;

/* Parses the request head at data[0..len), which may hold more (a body, the next
 * request): 1 complete (*h set), 0 incomplete, -1 refused (h->status, h->why). Heads
 * past max bytes are refused. */
int gt_http_parse_head(const char *data, size_t len, size_t max, gt_http_head *h);

/* The state of one chunked body; zero it before the first call. */
typedef struct gt_http_chunked {
    int state;
    uint64_t left;                 /* bytes left in the current chunk */
    size_t line;                   /* bytes in the current extension or trailer line */
    size_t trailers;               /* bytes of trailers so far */
    uint64_t total;                /* data bytes decoded */
    bool colon;
} gt_http_chunked;

/* Decodes chunked data from in[0..len), appending the data to body (NULL: counts
 * only). Returns the bytes used (fewer than len only once *done: the last chunk and
 * the trailers are read); -1 bad framing (*why), -2 more than max data bytes. */
long gt_http_chunked_decode(gt_http_chunked *c, const char *in, size_t len, gt_buf *body,
                            uint64_t max, bool *done, const char **why);

/* A blocking client for the CLI and tests. */
typedef struct gt_http_client_config {
    const char *host;
    int64_t port;
    bool use_tls;
    const char *ca_certificate_file;  /* NULL: the system's trust store */
    const char *certificate_file;     /* client certificate, optional */
    const char *private_key_file;
    int64_t timeout_ms;               /* 0 = 30000 */
    const char *idempotency_key;      /* sent as Idempotency-Key when set */
} gt_http_client_config;

/* Sends one request (Authorization: Bearer token when token is set; body as
 * application/json when set) and waits for the answer. *status and *resp (a new
 * NUL-terminated string, may be empty) are set when the server answered; a
 * connection or TLS failure is GT_EUNAVAIL naming host:port and the cause. */
gt_err gt_http_request_send(const gt_http_client_config *cfg, const char *method,
                            const char *path_and_query, const char *token, const char *body,
                            size_t body_len, int *status, char **resp, gt_error *err);
/* As gt_http_request_send; on GT_EUNAVAIL *unsent (may be NULL) says that no byte of
 * the request was written (the connection or TLS handshake failed), so it did not run
 * and may go to another server as it is. */
gt_err gt_http_request_send_ex(const gt_http_client_config *cfg, const char *method,
                               const char *path_and_query, const char *token, const char *body,
                               size_t body_len, int *status, char **resp, bool *unsent,
                               gt_error *err);

#endif
