/* HTTP/1.1 over libevent's evhttp, with TLS (OpenSSL, TLS 1.2 and 1.3 only) on
 * listeners and clients. The server hands each request to a pool of worker threads,
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

typedef struct gt_http_server_config {
    const char *listen_address;
    int64_t port;                  /* 0: any free port (see gt_http_server_port) */
    bool use_tls;
    const char *certificate_file;
    const char *private_key_file;
    int64_t max_body_size;         /* larger bodies get 413 with a JSON error */
    int workers;                   /* worker threads, >= 1 */
    int64_t timeout_ms;            /* read/write timeout per connection; 0 = 30000 */
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

/* A blocking client for the CLI and tests. */
typedef struct gt_http_client_config {
    const char *host;
    int64_t port;
    bool use_tls;
    const char *ca_certificate_file;  /* NULL: the system's trust store */
    const char *certificate_file;     /* client certificate, optional */
    const char *private_key_file;
    int64_t timeout_ms;               /* 0 = 30000 */
} gt_http_client_config;

/* Sends one request (Authorization: Bearer token when token is set; body as
 * application/json when set) and waits for the answer. *status and *resp (a new
 * NUL-terminated string, may be empty) are set when the server answered; a
 * connection or TLS failure is GT_EUNAVAIL naming host:port and the cause. */
gt_err gt_http_request_send(const gt_http_client_config *cfg, const char *method,
                            const char *path_and_query, const char *token, const char *body,
                            size_t body_len, int *status, char **resp, gt_error *err);

#endif
