/* The bus: AMQP 0-9-1 to RabbitMQ through librabbitmq-c 0.11 (synchronous: call it
 * from worker threads, one gt_bus per thread). Publishes wait for the broker's
 * confirm (confirm.select; basic.ack/nack tracked by delivery tag, since 0.11 has no
 * helper for it). Consumers ack manually. On a lost connection the next call
 * reconnects across [broker] hosts with backoff. */
#ifndef GT_BUS_H
#define GT_BUS_H

#include <stdatomic.h>
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
    /* When set, this cluster's queues are reached through its exchanges, not the default
     * exchange (see "Routes" below). NULL: every queue through the default exchange. */
    const char *cluster_id;
} gt_bus_config;

/* --- Routes: who may publish where ---------------------------------------------------
 *
 * RabbitMQ grants a user configure/write/read on resources by name (one regex each, per
 * vhost), and publishing needs write on the *exchange*. Through the default exchange a
 * routing key names any queue, so write on "amq.default" would let a runner publish to
 * tokend's queue. With cluster_id set, the bus therefore publishes a cluster's queues
 * through direct exchanges of their own, with the queue name as routing key:
 *
 *   queue                          exchange               published by
 *   gantry.<cluster_id>.auth       gantry.<cluster_id>.auth     controllers (tokend RPC)
 *   exec.<cluster_id>.<pool>       gantry.<cluster_id>.exec     controllers, scheduler
 *   results.<cluster_id>           gantry.<cluster_id>.results  runners
 *   <one of those>.dead            gantry.<cluster_id>.dead     the broker (dead letters)
 *
 * gt_bus_publish(bus, "", queue, ...) and gt_bus_rpc(bus, queue, ...) go through the
 * queue's exchange; other keys (and "<queue>.dead") still use the default exchange. A
 * routed work queue dead-letters through gantry.<cluster_id>.dead (declaring a queue with
 * a dead-letter exchange needs write on that exchange, and on the default one that would
 * again mean every queue).
 * Declaring one of these queues (gt_bus_declare_queue, gt_bus_declare_work_queue,
 * gt_bus_serve_rpc) also declares its exchange and binds the queue to it, when the broker
 * user may (configure on the exchange, write on the queue, read on the exchange); a user
 * that may not (a runner for the exec exchange) gets its queue declared and unbound,
 * which is what it needs to consume, and the refusal is only logged at debug level.
 * The broker users and their permissions are listed in README ("Security model") and
 * made by scripts/testenv/rabbitmq.py for the tests.
 *
 * Every message the bus publishes carries the AMQP user_id property set to the broker
 * user it logged in as; RabbitMQ refuses a message whose user_id is not the connection's
 * user, so a consumer can trust it (gt_bus_delivery.user_id, the rpc handler's caller). */

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
 * code nacks the request without requeueing it. user_id is the broker user that sent it
 * (the user_id property, which RabbitMQ checked against the sender's login), NULL when
 * the request carried none. */
typedef gt_err (*gt_bus_rpc_fn)(void *arg, const char *user_id, const char *body, size_t len,
                                char **reply, size_t *reply_len);

/* Serves requests on queue (declared here) until *stop becomes non-zero, checking it
 * at least every 200 ms: each request's reply goes to its reply-to with its
 * correlation id, then the request is acked. Reconnects on its own; returns
 * GT_EUNAVAIL only when the broker stays away past the reconnect attempts. */
gt_err gt_bus_serve_rpc(gt_bus *bus, const char *queue, gt_bus_rpc_fn fn, void *arg,
                        atomic_int *stop, gt_error *err);

/* True when the connection is open (a cheap check for health). */
bool gt_bus_connected(const gt_bus *bus);

/* --- Work queues and consumers ----------------------------------------------------------
 *
 * For workers that take messages one by one and settle each when its work is done, which
 * may be minutes later: gantry-runner consumes exec.<cluster_id>.<pool> with prefetch =
 * capacity, hands each body to a worker thread, and when the work comes back publishes
 * the result (gt_bus_publish, confirmed) and only then acks.
 *
 * Everything here runs on the thread that owns the gt_bus, like every other call on it;
 * only the data of a delivery (its body, ...) may travel to other threads. The bus only
 * services its connection (heartbeats, confirms, closes) while that thread is inside a
 * bus call, so a consumer's thread never blocks on work: it calls gt_bus_consume_next
 * in a loop with a short timeout (well under the heartbeat) and settles deliveries as
 * their work comes back. Publishing on the same bus while consumers are open is fine:
 * deliveries that arrive while a publish waits for its confirm stay queued for their
 * consumer.
 *
 * At least once: a delivery not acked when its channel or connection goes is requeued
 * by the broker and delivered again (redelivered set), possibly to another consumer. A
 * consumer must recognise work it did already (by an id in the message) and not run or
 * record it twice. */

/* A message returned to a work queue this many times (rejected with requeue, or unacked
 * when its consumer's channel closed: a consumer that crashes on it, a drain) is
 * dead-lettered instead of delivered again: a poison message cannot loop forever. It is
 * fixed when the queue is first declared. */
#define GT_BUS_DELIVERY_LIMIT 20

/* Declares queue as a work queue, and its dead-letter queue "<queue>.dead"; idempotent.
 * Both are durable quorum queues. A message of queue rejected without requeue, or
 * returned more than GT_BUS_DELIVERY_LIMIT times, moves to <queue>.dead with its body and
 * properties unchanged and the broker's x-death header added (reason "rejected" or
 * "delivery_limit", the queue it came from). Dead-lettering is at-least-once: the broker
 * keeps the message in queue until <queue>.dead confirmed it. The name is 1-250 bytes
 * (GT_EINVAL). GT_ECONFLICT when either queue exists with other arguments (declared by
 * gt_bus_declare_queue, another delivery limit): arguments cannot change once declared;
 * delete the queue, or override them with a broker policy. */
gt_err gt_bus_declare_work_queue(gt_bus *bus, const char *queue, gt_error *err);

/* The messages ready (not handed to a consumer) in queue, which must exist. */
gt_err gt_bus_queue_ready(gt_bus *bus, const char *queue, int64_t *ready, gt_error *err);

typedef struct gt_bus_consumer gt_bus_consumer;

/* One message from gt_bus_consume_next, unacknowledged until gt_bus_ack or gt_bus_reject.
 * Its strings are the caller's: gt_bus_delivery_clear frees them (a caller may take body
 * and set it to NULL first). Settling needs only the delivery (tag and generation). */
typedef struct gt_bus_delivery {
    char *body;              /* a copy, NUL-terminated (it may hold NULs: use len) */
    size_t len;
    bool redelivered;        /* delivered before and not acked: it may have been worked on */
    int64_t delivery_count;  /* quorum queues: times it was returned to the queue before
                              * (header x-delivery-count); 0 when absent */
    char *message_id;        /* properties; NULL when absent */
    char *correlation_id;
    char *reply_to;
    char *content_type;
    char *user_id;           /* the publisher's broker user, checked by RabbitMQ; NULL: none */
    uint64_t delivery_tag;   /* the broker's tag on its channel, for logs */
    uint64_t generation;     /* opaque: the subscription (channel of a connection) it came
                              * on; unique in the process, never 0 */
} gt_bus_delivery;

/* Consumes queue, which must exist (gt_bus_declare_work_queue; GT_ENOTFOUND otherwise),
 * on a channel of its own with manual acks and at most prefetch (1-65535) deliveries
 * unacknowledged at a time. Connects first if needed (as gt_bus_publish does). A bus can
 * hold several consumers. NULL on error. */
gt_bus_consumer *gt_bus_consume_start(gt_bus *bus, const char *queue, int prefetch,
                                      gt_error *err) __attribute__((warn_unused_result));

/* The next delivery into *d (overwritten: clear the previous one first): GT_OK, or
 * GT_ETIMEDOUT when none came within timeout_ms (0: only what already arrived). While it
 * waits the connection is serviced: heartbeats go out, confirms and closes are handled.
 *
 * After the connection or the channel was lost (broker restart, network) it reconnects
 * across the hosts and subscribes again by itself: a new generation, and the broker
 * redelivers what the old one had not acked (acks for those answer GT_ECONFLICT). One
 * attempt per call; between attempts a backoff of 1 s doubling to 10 s (+-20% jitter),
 * during which calls return GT_ETIMEDOUT (gt_bus_consuming says false). After the
 * configured reconnect_attempts failures in a row: GT_EUNAVAIL, naming every host and its
 * reason, ending "gave up after N attempts"; a caller that goes on calling starts a new
 * round. A refusal (GT_EPERM: access refused; GT_ENOTFOUND: the queue was deleted) is
 * returned at once, each attempt.
 *
 * It never blocks longer than timeout_ms, plus one reconnect attempt when one is due
 * (connect_timeout_ms per host that does not answer, and the broker's answers to the
 * subscription), so the caller can check its stop flag between calls. After
 * gt_bus_consume_cancel it hands out nothing more and only services the connection. */
gt_err gt_bus_consume_next(gt_bus_consumer *c, int64_t timeout_ms, gt_bus_delivery *d,
                           gt_error *err);

/* While gt_bus_consume_next waits for the broker, fd (a pipe or eventfd the caller
 * owns and drains) becoming readable ends the wait early with GT_ETIMEDOUT, so another
 * thread can wake the bus's thread without a polling tick. -1 clears it. False when
 * the bus cannot honour it (TLS: the library may hold decrypted bytes a poll does not
 * see); the caller then keeps waiting in short slices. */
bool gt_bus_set_wakeup(gt_bus *bus, int fd);

/* Acknowledges d: the broker forgets the message. Ack only once the work's outcome is
 * durable (its result published with a confirm). GT_OK once the ack is written; if the
 * connection fails right then, the broker may still deliver it again. GT_ECONFLICT when
 * d came on an earlier subscription (the connection or channel was lost since, or the
 * broker cancelled the consumer): nothing is sent, because the broker has requeued it
 * already and will deliver it again -- log and go on; the redelivery is recognised as
 * done. GT_EUNAVAIL when the connection broke while sending (same outcome). GT_EINVAL
 * when d was settled already. */
gt_err gt_bus_ack(gt_bus_consumer *c, const gt_bus_delivery *d, gt_error *err);

/* Rejects d. With requeue it goes back to the queue to be delivered again (redelivered
 * set; it counts towards GT_BUS_DELIVERY_LIMIT). Without, it goes to the queue's
 * dead-letter queue (a work queue's "<queue>.dead"), or is dropped when the queue has
 * none: the broker records only "rejected", so log the reason first. Results as
 * gt_bus_ack. */
gt_err gt_bus_reject(gt_bus_consumer *c, const gt_bus_delivery *d, bool requeue,
                     gt_error *err);

/* For a drain (SIGTERM): stops new deliveries (basic.cancel). Deliveries received but not
 * handed out yet go back to the queue at once, for other consumers; those handed out stay
 * ackable until gt_bus_consume_stop, which requeues whatever is still unacked. Keep
 * calling gt_bus_consume_next meanwhile (it returns GT_ETIMEDOUT and services the
 * connection). Idempotent. An error means the channel or connection went: the broker
 * requeued everything unacked. */
gt_err gt_bus_consume_cancel(gt_bus_consumer *c, gt_error *err);

/* True when c is subscribed on an open connection (for health checks). */
bool gt_bus_consuming(const gt_bus_consumer *c);

/* Ends *c, frees it and sets *c to NULL (NULL is fine): closing its channel cancels the
 * subscription and requeues every delivery of it not acked yet (delivered again,
 * redelivered set). Call it before gt_bus_free; a consumer left over is detached
 * (gt_bus_consume_next, gt_bus_ack and gt_bus_reject return GT_EINVAL) and must still be
 * stopped. */
void gt_bus_consume_stop(gt_bus_consumer **c);

/* Frees a delivery's strings and zeroes it; NULL and a zeroed delivery are fine. */
void gt_bus_delivery_clear(gt_bus_delivery *d);

#endif
