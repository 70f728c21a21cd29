/* The bus: AMQP 0-9-1 to RabbitMQ through librabbitmq-c 0.11 (synchronous: call it
 * from worker threads, one gt_bus per thread). Publishes wait for the broker's
 * confirm (confirm.select; basic.ack/nack tracked by delivery tag, since 0.11 has no
 * helper for it). Consumers ack manually. On a lost connection the next call
 * reconnects across [broker] hosts with backoff. */
#ifndef GT_BUS_H
#define GT_BUS_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"

typedef struct gt_bus gt_bus;

typedef struct gt_bus_config {
    char *const *hosts;          /* "host:port", NULL-terminated */
    const char *vhost;
    const char *username;
    const char *password;        /* never logged */
    bool use_tls;
    const char *ca_certificate_file;
    const char *certificate_file;
    const char *private_key_file;
    int64_t heartbeat_s;         /* AMQP heartbeat; 0 = 30 */
    int64_t connect_timeout_ms;  /* 0 = 5000 */
    int reconnect_attempts;      /* per call before GT_EUNAVAIL; 0 = 5 */
} gt_bus_config;

/* Connects to the first host that answers. The config is copied. */
gt_bus *gt_bus_connect(const gt_bus_config *cfg, gt_error *err) __attribute__((warn_unused_result));
void gt_bus_free(gt_bus **bus);

/* Declares a durable queue (quorum when quorum is set); idempotent. */
gt_err gt_bus_declare_queue(gt_bus *bus, const char *queue, bool quorum, gt_error *err);

/* Publishes to exchange ("" = default) with routing key, and returns once the
 * broker confirmed it (GT_EUNAVAIL on nack or lost connection). */
gt_err gt_bus_publish(gt_bus *bus, const char *exchange, const char *key, const void *body,
                      size_t len, bool persistent, gt_error *err);

/* A request/reply call: publishes body to queue with a correlation id and a
 * reply-to (RabbitMQ direct reply-to), and waits up to timeout_ms for the answer.
 * *reply is a new buffer (NUL-terminated). GT_ETIMEDOUT when nobody answered in
 * time; GT_EUNAVAIL when the broker is away. */
gt_err gt_bus_rpc(gt_bus *bus, const char *queue, const void *body, size_t len,
                  int64_t timeout_ms, char **reply, size_t *reply_len, gt_error *err);

/* Answers one request: returns GT_OK and sets *reply (malloc'd) to send it; any other
 * code nacks the request without requeueing it. */
typedef gt_err (*gt_bus_rpc_fn)(void *arg, const char *body, size_t len, char **reply,
                                size_t *reply_len);

/* Serves requests on queue (declared here) until *stop becomes non-zero, checking it
 * at least every 200 ms: each request's reply goes to its reply-to with its
 * correlation id, then the request is acked. Reconnects on its own; returns
 * GT_EUNAVAIL only when the broker stays away past the reconnect attempts. */
gt_err gt_bus_serve_rpc(gt_bus *bus, const char *queue, gt_bus_rpc_fn fn, void *arg,
                        volatile sig_atomic_t *stop, gt_error *err);

/* True when the connection is open (a cheap check for health). */
bool gt_bus_connected(const gt_bus *bus);

#endif
