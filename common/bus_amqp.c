/* The bus over AMQP 0-9-1 (RabbitMQ) with librabbitmq-c 0.11.
 *
 * One gt_bus is one connection, used by one thread at a time. Its channels each have one
 * job, so that the broker's asynchronous frames never mix:
 *   1 (CH_PUB)  publishes in confirm mode (and declares queues): every publish waits
 *               for the basic.ack/basic.nack of its own delivery tag;
 *   2 (CH_RPC)  RPC requests, and the direct reply-to consumer (no confirms: RabbitMQ
 *               does not support direct reply-to together with confirm mode everywhere,
 *               and the reply is the confirmation anyway);
 *   3, 4, ...   one per consumer (gt_bus_consume_start, gt_bus_serve_rpc), manual acks,
 *               its own basic.qos prefetch.
 * All reading goes through bus_pump(), which dispatches whatever arrives to the state of
 * the channel it belongs to: deliveries are queued on their consumer, so a caller that
 * publishes (and waits for the confirm) while consuming loses none of them.
 *
 * Connecting: hosts in order, each within connect_timeout_ms (TCP connect done here so
 * the error keeps its reason; TLS through amqp_socket_open_noblock, peer and hostname
 * verified), then PLAIN login with heartbeats. Errors name host:port and the broker's
 * reply text, never the password.
 *
 * Reconnection: any library error leaves the connection in an undefined state, so it is
 * dropped; the next call reconnects (across the hosts, with backoff). Before each call an
 * idle connection is polled, so one the broker closed (restart, missed heartbeats while
 * the thread was idle) is noticed before a message is written to it, not after.
 * Consumers subscribe again by themselves on their next gt_bus_consume_next.
 *
 * Delivery tags belong to a channel of a connection. Each subscription of a consumer
 * gets a generation of its own (unique within the gt_bus), carried by its deliveries: an
 * ack for a delivery of an earlier subscription is refused here (GT_ECONFLICT) instead
 * of acking some other message on the new channel -- or closing it with "unknown
 * delivery tag". The broker requeued those deliveries when the old channel went.
 *
 * Routes (bus.h): with a cluster_id, the cluster's queues are published through exchanges
 * of their own (bus_route), so that RabbitMQ's per-exchange write permission says who may
 * publish to which queue; the default exchange is left for RPC replies (direct reply-to
 * publishes through it, so gantry-tokend alone needs write on "amq.default") and for
 * queues outside the scheme (tests, dead-letter queues). Declaring a routed queue binds
 * it, when the broker user is allowed to (bus_bind_route).
 *
 * Delivery guarantee of gt_bus_publish: at least once. If the connection is lost after
 * the message was written but before its confirm arrived, the publish is retried once on
 * a new connection, and the broker may then hold it twice: consumers must deduplicate on
 * an id carried in the message (executions carry theirs). */
#include "bus.h"

#include <errno.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <amqp.h>
#include <amqp_ssl_socket.h>
#include <amqp_tcp_socket.h>

#include "log.h"
#include "util.h"

enum { CH_PUB = 1, CH_RPC = 2, CH_FIXED = 3 /* consumers' channels from here on */ };

#define BUS_FRAME_MAX 131072
#define BUS_OP_MS 15000          /* broker round trips: confirms, declares, channel opens */
#define BUS_POLL_MS 200          /* how often a consumer looks at its stop flag */
#define BUS_CALL_BACKOFF_MS 100  /* first reconnect pause inside a call (then doubles) */
#define BUS_CALL_BACKOFF_MAX_MS 2000
#define BUS_SERVE_BACKOFF_MS 1000 /* a consumer rides out a broker restart (~5-10 s) */
#define BUS_SERVE_BACKOFF_MAX_MS 10000
#define BUS_REPLY_TO "amq.rabbitmq.reply-to"
#define BUS_DEAD_SUFFIX ".dead"

/* A delivery received and not handed out yet. */
typedef struct bus_pending {
    struct bus_pending *next;
    gt_bus_delivery d;
} bus_pending;

struct gt_bus_consumer {
    gt_bus *bus;                  /* NULL once the bus was freed under it */
    gt_bus_consumer *next;        /* the bus's list */
    char *queue;
    uint16_t prefetch;
    amqp_channel_t ch;            /* fixed for the consumer's life */
    bool declare;                 /* gt_bus_serve_rpc: declare the queue on each subscribe */
    bool open;                    /* its channel is open on the current connection */
    bool active;                  /* subscribed (basic.consume-ok, no basic.cancel since) */
    bool cancelled;               /* gt_bus_consume_cancel: never subscribe again */
    char *tag;                    /* the broker's consumer tag */
    uint64_t gen;                 /* the current (or last) subscription; 0: none yet */
    bus_pending *pend_head, *pend_tail;
    /* Tags of this subscription received and not acked or rejected yet, ascending (the
     * broker numbers a channel's deliveries upwards). At most about prefetch of them. */
    uint64_t *unacked;
    size_t n_unacked, cap_unacked;
    /* Reconnecting: failed subscribes in a row and when the next may be tried. */
    int failures;
    int64_t retry_at;
};

typedef enum bus_pub_state { PUB_PENDING, PUB_ACKED, PUB_NACKED } bus_pub_state;

struct gt_bus {
    /* The configuration, copied. */
    gt_strv hosts;
    char *vhost, *username, *password, *ca_file, *cert_file, *key_file;
    char *cluster;                /* routes (bus.h); NULL: the default exchange for all */
    bool use_tls;
    int heartbeat_s;
    int64_t connect_timeout_ms;
    int attempts;

    amqp_connection_state_t conn; /* NULL while disconnected */
    char *host;                   /* host:port of the current (or last) connection */
    bool ch_open[CH_FIXED];
    int close_code;               /* the broker's last channel/connection close */
    char close_text[256];

    /* CH_PUB: confirm mode and the one publish waiting for its confirm. */
    bool confirming;
    uint64_t next_tag;
    uint64_t wait_tag;            /* 0: nothing waits */
    bus_pub_state pub_state;
    bool pub_returned;            /* unroutable (mandatory): basic.return came first */

    /* CH_RPC: the reply consumer and the one call waiting. */
    bool rpc_consuming;
    const char *rpc_corr;         /* correlation id awaited; NULL: none */
    bool rpc_done, rpc_returned;
    char *rpc_reply;
    int wake_fd;                  /* gt_bus_set_wakeup; -1: none */
    size_t rpc_reply_len;

    /* The consumers, each on a channel of its own. */
    gt_bus_consumer *consumers;
    int next_ch;                  /* the next consumer channel number on this connection */
};

/* --- small helpers ------------------------------------------------------------------ */

static struct timeval bus_tv(int64_t ms)
{
    if (ms < 0)
        ms = 0;
    struct timeval tv = {.tv_sec = (time_t)(ms / 1000), .tv_usec = (suseconds_t)(ms % 1000) * 1000};
    return tv;
}

static char *bus_bytes_dup(amqp_bytes_t b)
{
    char *s = gt_xmalloc(b.len + 1);
    if (b.len > 0)
        memcpy(s, b.bytes, b.len);
    s[b.len] = '\0';
    return s;
}

static bool bus_bytes_eq(amqp_bytes_t b, const char *s)
{
    size_t n = strlen(s);
    return b.len == n && (n == 0 || memcmp(b.bytes, s, n) == 0);
}

/* Marks a message with the broker user we logged in as (see bus.h): RabbitMQ checks it. */
static void bus_set_user_id(const gt_bus *bus, amqp_basic_properties_t *props)
{
    if (bus->username != NULL && bus->username[0] != '\0') {
        props->_flags |= AMQP_BASIC_USER_ID_FLAG;
        props->user_id = amqp_cstring_bytes(bus->username);
    }
}

/* Sleeps ms in slices, returning early (true) when *stop is set. */
static bool bus_sleep(int64_t ms, atomic_int *stop)
{
    int64_t end = gt_mono_ms() + ms;
    for (;;) {
        if (stop != NULL && *stop)
            return true;
        int64_t left = end - gt_mono_ms();
        if (left <= 0)
            return false;
        if (left > 100)
            left = 100;
        struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)left * 1000000L};
        nanosleep(&ts, NULL);
    }
}

/* Backoff before reconnect attempt n (n >= 1): base * 2^(n-1), capped, +-20% jitter so a
 * fleet of runners does not reconnect in lockstep after a broker restart. */
static int64_t bus_backoff(int n, int64_t base, int64_t cap)
{
    int64_t d = base;
    for (int i = 1; i < n && d < cap; i++)
        d *= 2;
    if (d > cap)
        d = cap;
    uint16_t r = 0;
    if (gt_random_bytes(&r, sizeof r, NULL) == GT_OK)
        d += (d * ((int64_t)(r % 41) - 20)) / 100;
    return d;
}

/* Splits "host:port" / "[v6]:port" / "host" into a new host string and a port. */
static gt_err bus_split_host(const char *hostport, int default_port, char **host, int *port,
                             gt_error *err)
{
    const char *colon;
    const char *start = hostport, *end;
    if (hostport[0] == '[') {
        end = strchr(hostport, ']');
        if (end == NULL)
            return gt_error_setf(err, GT_EINVAL, hostport, "amqp host %s: missing ']'", hostport);
        start = hostport + 1;
        colon = end[1] == ':' ? end + 1 : NULL;
        if (end[1] != '\0' && colon == NULL)
            return gt_error_setf(err, GT_EINVAL, hostport, "amqp host %s: junk after ']'",
                                 hostport);
    } else {
        colon = strrchr(hostport, ':');
        end = colon ? colon : hostport + strlen(hostport);
    }
    if (end == start)
        return gt_error_setf(err, GT_EINVAL, hostport, "amqp host %s: empty host name", hostport);
    int64_t p = default_port;
    if (colon != NULL && gt_parse_int64(colon + 1, 1, 65535, &p, "amqp port", err) != GT_OK)
        return GT_EINVAL;
    *host = gt_xstrndup(start, (size_t)(end - start));
    *port = (int)p;
    return GT_OK;
}

/* A broker reply code as our error code. */
static gt_err bus_code(int reply_code)
{
    switch (reply_code) {
    case AMQP_NOT_FOUND:
        return GT_ENOTFOUND;
    case AMQP_ACCESS_REFUSED:
    case AMQP_NOT_ALLOWED:
        return GT_EPERM;
    case AMQP_PRECONDITION_FAILED:
    case AMQP_RESOURCE_LOCKED:
        return GT_ECONFLICT;
    default:
        return GT_EUNAVAIL;
    }
}

static void bus_note_close(gt_bus *bus, int code, amqp_bytes_t text)
{
    bus->close_code = code;
    size_t n = text.len < sizeof bus->close_text - 1 ? text.len : sizeof bus->close_text - 1;
    if (n > 0)
        memcpy(bus->close_text, text.bytes, n);
    bus->close_text[n] = '\0';
}

void gt_bus_delivery_clear(gt_bus_delivery *d)
{
    if (d == NULL)
        return;
    free(d->body);
    free(d->message_id);
    free(d->correlation_id);
    free(d->reply_to);
    free(d->content_type);
    free(d->user_id);
    memset(d, 0, sizeof *d);
}

static void bus_free_pending(gt_bus_consumer *c)
{
    while (c->pend_head != NULL) {
        bus_pending *p = c->pend_head;
        c->pend_head = p->next;
        gt_bus_delivery_clear(&p->d);
        free(p);
    }
    c->pend_tail = NULL;
}

static gt_bus_consumer *bus_consumer_on(gt_bus *bus, amqp_channel_t ch)
{
    for (gt_bus_consumer *c = bus->consumers; c != NULL; c = c->next)
        if (c->ch == ch && ch != 0)
            return c;
    return NULL;
}

static void bus_consumer_unlink(gt_bus_consumer *c)
{
    if (c->bus == NULL)
        return;
    for (gt_bus_consumer **pp = &c->bus->consumers; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    }
    c->bus = NULL;
    c->next = NULL;
}

/* The unacked set: append (tags come in ascending), find, remove. */
static void bus_unacked_add(gt_bus_consumer *c, uint64_t tag)
{
    if (c->n_unacked == c->cap_unacked) {
        c->cap_unacked = c->cap_unacked ? c->cap_unacked * 2 : 16;
        c->unacked = gt_xrealloc(c->unacked, c->cap_unacked * sizeof *c->unacked);
    }
    size_t i = c->n_unacked;
    while (i > 0 && c->unacked[i - 1] > tag) /* never, unless the broker misnumbers */
        i--;
    memmove(c->unacked + i + 1, c->unacked + i, (c->n_unacked - i) * sizeof *c->unacked);
    c->unacked[i] = tag;
    c->n_unacked++;
}

static bool bus_unacked_remove(gt_bus_consumer *c, uint64_t tag)
{
    size_t lo = 0, hi = c->n_unacked;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (c->unacked[mid] < tag)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == c->n_unacked || c->unacked[lo] != tag)
        return false;
    memmove(c->unacked + lo, c->unacked + lo + 1, (c->n_unacked - lo - 1) * sizeof *c->unacked);
    c->n_unacked--;
    return true;
}

/* Forgets a consumer's channel: the broker requeues whatever it had not acked. */
static void bus_consumer_reset(gt_bus_consumer *c)
{
    c->ch = 0; /* its number may go to another consumer on the next connection */
    c->open = false;
    c->active = false;
    free(c->tag);
    c->tag = NULL;
    bus_free_pending(c);
    c->n_unacked = 0;
}

/* Forgets what a channel had set up (the broker closed it, or the connection went). */
static void bus_channel_reset(gt_bus *bus, amqp_channel_t ch)
{
    if (ch >= CH_FIXED) {
        gt_bus_consumer *c = bus_consumer_on(bus, ch);
        if (c != NULL)
            bus_consumer_reset(c);
        return;
    }
    bus->ch_open[ch] = false;
    switch (ch) {
    case CH_PUB:
        bus->confirming = false;
        bus->next_tag = 1;
        break;
    case CH_RPC:
        bus->rpc_consuming = false;
        break;
    default:
        break;
    }
}

static void bus_channels_reset(gt_bus *bus)
{
    for (amqp_channel_t ch = 1; ch < CH_FIXED; ch++)
        bus_channel_reset(bus, ch);
    for (gt_bus_consumer *c = bus->consumers; c != NULL; c = c->next)
        bus_consumer_reset(c);
}

/* Drops the connection without a goodbye (it is broken or undefined). */
static void bus_drop(gt_bus *bus)
{
    if (bus->conn != NULL) {
        amqp_destroy_connection(bus->conn);
        bus->conn = NULL;
    }
    bus_channels_reset(bus);
}

/* Turns the result of the last synchronous method (channel.open, queue.declare, ...) into
 * an error, answering a close from the broker as the protocol wants. */
static gt_err bus_rpc_result(gt_bus *bus, amqp_channel_t ch, const char *what, gt_error *err)
{
    amqp_rpc_reply_t r = amqp_get_rpc_reply(bus->conn);
    gt_err rc;
    switch (r.reply_type) {
    case AMQP_RESPONSE_NORMAL:
        return GT_OK;
    case AMQP_RESPONSE_SERVER_EXCEPTION:
        if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
            amqp_channel_close_t *m = r.reply.decoded;
            bus_note_close(bus, m->reply_code, m->reply_text);
            amqp_channel_close_ok_t ok = {0};
            rc = gt_error_set(err, bus_code(m->reply_code), "amqp %s: %s: %s", bus->host, what,
                              bus->close_text);
            int st = amqp_send_method(bus->conn, ch, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok);
            if (st != AMQP_STATUS_OK)
                bus_drop(bus);
            else
                bus_channel_reset(bus, ch);
            return rc;
        }
        if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
            amqp_connection_close_t *m = r.reply.decoded;
            bus_note_close(bus, m->reply_code, m->reply_text);
            amqp_connection_close_ok_t ok = {0};
            (void)amqp_send_method(bus->conn, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
            rc = gt_error_set(err, m->reply_code == AMQP_CONNECTION_FORCED
                                       ? GT_EUNAVAIL : bus_code(m->reply_code),
                              "amqp %s: %s: connection closed by the broker: %s", bus->host,
                              what, bus->close_text);
            bus_drop(bus);
            return rc;
        }
        rc = gt_error_set(err, GT_EUNAVAIL, "amqp %s: %s: unexpected method 0x%08" PRIx32,
                          bus->host, what, (uint32_t)r.reply.id);
        bus_drop(bus);
        return rc;
    case AMQP_RESPONSE_LIBRARY_EXCEPTION:
        rc = gt_error_set(err, GT_EUNAVAIL, "amqp %s: %s: %s", bus->host, what,
                          amqp_error_string2(r.library_error));
        bus_drop(bus);
        return rc;
    default:
        rc = gt_error_set(err, GT_EUNAVAIL, "amqp %s: %s: no reply", bus->host, what);
        bus_drop(bus);
        return rc;
    }
}

/* --- connecting --------------------------------------------------------------------- */

/* A non-blocking TCP connection to host:port within timeout_ms (every address tried in
 * the time left). librabbitmq's own open reports every failure as "a socket error
 * occurred"; doing it here keeps the reason (refused, unreachable, timed out). Returns
 * the descriptor, non-blocking as librabbitmq 0.11 expects, or -1 with why filled in. */
static int bus_tcp_connect(const char *host, int port, int64_t timeout_ms, char *why, size_t n)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_ADDRCONFIG};
    struct addrinfo *res = NULL;
    char service[16];
    snprintf(service, sizeof service, "%d", port);
    int gai = getaddrinfo(host, service, &hints, &res);
    if (gai != 0) {
        snprintf(why, n, "cannot resolve host: %s", gai_strerror(gai));
        return -1;
    }
    int64_t deadline = gt_mono_ms() + timeout_ms;
    int fd = -1, e = ETIMEDOUT;
    for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            e = errno;
            continue;
        }
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
            break;
        e = errno;
        while (e == EINPROGRESS || e == EINTR) {
            int64_t left = deadline - gt_mono_ms();
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            int r = left > 0 ? poll(&p, 1, (int)left) : 0;
            if (r < 0) {
                e = errno;
            } else if (r == 0) {
                e = ETIMEDOUT;
            } else {
                socklen_t len = sizeof e;
                if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &len) < 0)
                    e = errno;
            }
        }
        if (e == 0)
            break;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0) {
        if (e == ETIMEDOUT)
            snprintf(why, n, "no answer within %" PRId64 " ms", timeout_ms);
        else
            snprintf(why, n, "%s", strerror(e));
        return -1;
    }
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

/* Opens and logs in to one host; on success bus->conn is the new connection. */
static gt_err bus_open_host(gt_bus *bus, const char *hostport, gt_error *err)
{
    char *host = NULL;
    int port = 0;
    amqp_connection_state_t conn = NULL;
    gt_err rc = bus_split_host(hostport, bus->use_tls ? 5671 : 5672, &host, &port, err);
    if (rc != GT_OK)
        goto done;
    conn = amqp_new_connection();
    if (conn == NULL) {
        rc = gt_error_set(err, GT_ENOMEM, "amqp %s: cannot allocate a connection", hostport);
        goto done;
    }
    amqp_socket_t *sock = bus->use_tls ? amqp_ssl_socket_new(conn) : amqp_tcp_socket_new(conn);
    if (sock == NULL) {
        rc = gt_error_set(err, GT_ENOMEM, "amqp %s: cannot create a socket", hostport);
        goto done;
    }
    if (bus->use_tls) {
        amqp_ssl_socket_set_verify_peer(sock, 1);
        amqp_ssl_socket_set_verify_hostname(sock, 1);
        if (bus->ca_file != NULL &&
            amqp_ssl_socket_set_cacert(sock, bus->ca_file) != AMQP_STATUS_OK) {
            rc = gt_error_set(err, GT_EINVAL, "amqp: cannot load CA certificate %s", bus->ca_file);
            goto done;
        }
        if (bus->cert_file != NULL &&
            amqp_ssl_socket_set_key(sock, bus->cert_file, bus->key_file) != AMQP_STATUS_OK) {
            rc = gt_error_set(err, GT_EINVAL, "amqp: cannot load certificate %s and key %s",
                              bus->cert_file, bus->key_file ? bus->key_file : "(none)");
            goto done;
        }
    }
    struct timeval ctv = bus_tv(bus->connect_timeout_ms);
    if (bus->use_tls) {
        /* The TLS socket of 0.11 cannot adopt a descriptor: its own open, then. */
        int st = amqp_socket_open_noblock(sock, host, port, &ctv);
        if (st != AMQP_STATUS_OK) {
            rc = gt_error_set(err, GT_EUNAVAIL, "amqp %s: connect (TLS): %s", hostport,
                              st == AMQP_STATUS_TIMEOUT ? "no answer in time"
                                                        : amqp_error_string2(st));
            goto done;
        }
    } else {
        char why[200];
        int fd = bus_tcp_connect(host, port, bus->connect_timeout_ms, why, sizeof why);
        if (fd < 0) {
            rc = gt_error_set(err, GT_EUNAVAIL, "amqp %s: connect: %s", hostport, why);
            goto done;
        }
        amqp_tcp_socket_set_sockfd(sock, fd); /* the connection owns and closes it now */
    }
    struct timeval otv = bus_tv(BUS_OP_MS);
    amqp_set_handshake_timeout(conn, &ctv);
    amqp_set_rpc_timeout(conn, &otv);
    amqp_rpc_reply_t r = amqp_login(conn, bus->vhost, 0, BUS_FRAME_MAX, bus->heartbeat_s,
                                    AMQP_SASL_METHOD_PLAIN, bus->username, bus->password);
    if (r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION &&
        r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
        /* The broker says why (ACCESS_REFUSED, vhost not found); it never echoes the password. */
        amqp_connection_close_t *m = r.reply.decoded;
        rc = gt_error_set(err, m->reply_code == AMQP_CONNECTION_FORCED ? GT_EUNAVAIL
                                                                       : bus_code(m->reply_code),
                          "amqp %s: login as '%s' on vhost '%s': %.*s", hostport, bus->username,
                          bus->vhost, (int)m->reply_text.len, (const char *)m->reply_text.bytes);
        goto done;
    }
    if (r.reply_type != AMQP_RESPONSE_NORMAL) {
        rc = gt_error_set(err, GT_EUNAVAIL, "amqp %s: login as '%s' on vhost '%s': %s", hostport,
                          bus->username, bus->vhost,
                          r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION
                              ? amqp_error_string2(r.library_error) : "unexpected reply");
        goto done;
    }
    bus->conn = conn;
    conn = NULL;
    free(bus->host);
    bus->host = gt_xstrdup(hostport);
    bus_channels_reset(bus);
    bus->next_ch = CH_FIXED; /* channel numbers are per connection */
done:
    if (conn != NULL)
        amqp_destroy_connection(conn);
    free(host);
    return rc;
}

/* One pass over the hosts in order. The error lists every host's reason; its code is
 * GT_EPERM when a broker refused the credentials (retrying will not help), else
 * GT_EUNAVAIL. */
static gt_err bus_connect_pass(gt_bus *bus, gt_error *err)
{
    gt_buf why = {0};
    gt_err code = GT_EUNAVAIL;
    for (size_t i = 0; i < bus->hosts.n; i++) {
        gt_error e;
        gt_error_clear(&e);
        gt_err rc = bus_open_host(bus, bus->hosts.v[i], &e);
        if (rc == GT_OK) {
            gt_buf_free(&why);
            return GT_OK;
        }
        if (rc == GT_EPERM || rc == GT_EINVAL || rc == GT_ENOMEM)
            code = rc;
        gt_buf_printf(&why, "%s%s", why.len ? "; " : "", e.message);
    }
    gt_err rc = gt_error_set(err, code, "%s", why.data ? why.data : "amqp: no hosts");
    gt_buf_free(&why);
    return rc;
}

/* Reconnects if needed: up to the configured attempts with backoff (base doubling up to
 * cap), stopping early on a credentials error or when *stop is set. */
static gt_err bus_ensure(gt_bus *bus, int64_t base, int64_t cap, atomic_int *stop,
                         gt_error *err)
{
    if (bus->conn != NULL)
        return GT_OK;
    gt_error last;
    gt_error_clear(&last);
    gt_err rc = GT_EUNAVAIL;
    for (int i = 0; i < bus->attempts; i++) {
        if (i > 0 && bus_sleep(bus_backoff(i, base, cap), stop))
            break;
        gt_error_clear(&last);
        rc = bus_connect_pass(bus, &last);
        if (rc == GT_OK) {
            gt_info("amqp: connected to %s", bus->host);
            return GT_OK;
        }
        if (rc != GT_EUNAVAIL)
            break;
    }
    if (last.code == GT_OK)
        return gt_error_set(err, GT_EUNAVAIL, "amqp: stopped while reconnecting");
    return gt_error_set(err, rc, "%s", last.message);
}

/* --- reading: every frame goes through here ------------------------------------------ */

static void bus_confirm(gt_bus *bus, uint64_t tag, bool multiple, bool ack)
{
    if (bus->wait_tag == 0 || bus->pub_state != PUB_PENDING)
        return;
    if (tag == bus->wait_tag || (multiple && tag >= bus->wait_tag))
        bus->pub_state = ack ? PUB_ACKED : PUB_NACKED;
}

/* An integer field table value (RabbitMQ sends x-delivery-count as a long). */
static bool bus_field_int(const amqp_field_value_t *v, int64_t *out)
{
    switch (v->kind) {
    case AMQP_FIELD_KIND_I8: *out = v->value.i8; return true;
    case AMQP_FIELD_KIND_U8: *out = v->value.u8; return true;
    case AMQP_FIELD_KIND_I16: *out = v->value.i16; return true;
    case AMQP_FIELD_KIND_U16: *out = v->value.u16; return true;
    case AMQP_FIELD_KIND_I32: *out = v->value.i32; return true;
    case AMQP_FIELD_KIND_U32: *out = v->value.u32; return true;
    case AMQP_FIELD_KIND_I64: *out = v->value.i64; return true;
    case AMQP_FIELD_KIND_U64: *out = v->value.u64 > INT64_MAX ? INT64_MAX : (int64_t)v->value.u64;
        return true;
    default: return false;
    }
}

/* Handles a delivery. Returns the tag to reject with requeue once the envelope is
 * destroyed (a delivery for a consumer cancelled meanwhile), else 0. */
static uint64_t bus_on_delivery(gt_bus *bus, amqp_envelope_t *env)
{
    amqp_basic_properties_t *p = &env->message.properties;
    bool has_corr = (p->_flags & AMQP_BASIC_CORRELATION_ID_FLAG) != 0;
    if (env->channel == CH_RPC) {
        /* Replies to calls that already timed out are dropped here. */
        if (bus->rpc_corr == NULL || bus->rpc_done || !has_corr ||
            !bus_bytes_eq(p->correlation_id, bus->rpc_corr))
            return 0;
        free(bus->rpc_reply);
        bus->rpc_reply = bus_bytes_dup(env->message.body);
        bus->rpc_reply_len = env->message.body.len;
        bus->rpc_done = true;
        return 0;
    }
    gt_bus_consumer *c = env->channel >= CH_FIXED ? bus_consumer_on(bus, env->channel) : NULL;
    if (c == NULL || !c->open)
        return 0; /* its channel is gone (closed by us): the broker requeued it */
    if (!c->active) {
        /* Sent before the broker saw our basic.cancel: back to the queue for others. A
         * quorum queue counts that as a return; GT_BUS_DELIVERY_LIMIT leaves room. */
        return c->cancelled ? env->delivery_tag : 0;
    }
    bus_pending *n = gt_xcalloc(1, sizeof *n);
    gt_bus_delivery *d = &n->d;
    d->body = bus_bytes_dup(env->message.body);
    d->len = env->message.body.len;
    d->redelivered = env->redelivered != 0;
    d->delivery_tag = env->delivery_tag;
    d->generation = c->gen;
    if (p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG)
        d->message_id = bus_bytes_dup(p->message_id);
    if (has_corr)
        d->correlation_id = bus_bytes_dup(p->correlation_id);
    if (p->_flags & AMQP_BASIC_REPLY_TO_FLAG)
        d->reply_to = bus_bytes_dup(p->reply_to);
    if (p->_flags & AMQP_BASIC_CONTENT_TYPE_FLAG)
        d->content_type = bus_bytes_dup(p->content_type);
    if (p->_flags & AMQP_BASIC_USER_ID_FLAG)
        d->user_id = bus_bytes_dup(p->user_id);
    if (p->_flags & AMQP_BASIC_HEADERS_FLAG) {
        for (int i = 0; i < p->headers.num_entries; i++) {
            amqp_table_entry_t *e = &p->headers.entries[i];
            int64_t v;
            if (bus_bytes_eq(e->key, "x-delivery-count") && bus_field_int(&e->value, &v))
                d->delivery_count = v < 0 ? 0 : v;
        }
    }
    bus_unacked_add(c, env->delivery_tag);
    if (c->pend_tail != NULL)
        c->pend_tail->next = n;
    else
        c->pend_head = n;
    c->pend_tail = n;
    return 0;
}

static gt_err bus_lost(gt_bus *bus, const char *why, gt_error *err)
{
    gt_err rc = gt_error_set(err, GT_EUNAVAIL, "amqp %s: connection lost: %s", bus->host, why);
    gt_warn("amqp %s: connection lost: %s", bus->host, why);
    bus_drop(bus);
    return rc;
}

/* A frame that is not a delivery: confirms, returns, closes, cancels. */
static gt_err bus_on_frame(gt_bus *bus, gt_error *err)
{
    amqp_frame_t f;
    int st = amqp_simple_wait_frame(bus->conn, &f);
    if (st != AMQP_STATUS_OK)
        return bus_lost(bus, amqp_error_string2(st), err);
    if (f.frame_type != AMQP_FRAME_METHOD)
        return GT_OK; /* stray content of a message nobody waits for */
    amqp_channel_t ch = f.channel;
    switch (f.payload.method.id) {
    case AMQP_BASIC_ACK_METHOD: {
        amqp_basic_ack_t *m = f.payload.method.decoded;
        if (ch == CH_PUB)
            bus_confirm(bus, m->delivery_tag, m->multiple, true);
        break;
    }
    case AMQP_BASIC_NACK_METHOD: {
        amqp_basic_nack_t *m = f.payload.method.decoded;
        if (ch == CH_PUB)
            bus_confirm(bus, m->delivery_tag, m->multiple, false);
        break;
    }
    case AMQP_BASIC_RETURN_METHOD: {
        /* Unroutable with mandatory set; its content follows and must be read. */
        amqp_message_t msg;
        amqp_rpc_reply_t r = amqp_read_message(bus->conn, ch, &msg, 0);
        if (r.reply_type != AMQP_RESPONSE_NORMAL)
            return bus_lost(bus, "reading a returned message", err);
        if (ch == CH_PUB && bus->wait_tag != 0)
            bus->pub_returned = true;
        if (ch == CH_RPC && bus->rpc_corr != NULL &&
            (msg.properties._flags & AMQP_BASIC_CORRELATION_ID_FLAG) &&
            bus_bytes_eq(msg.properties.correlation_id, bus->rpc_corr))
            bus->rpc_returned = true;
        amqp_destroy_message(&msg);
        break;
    }
    case AMQP_BASIC_CANCEL_METHOD:
        /* The broker cancelled a consumer (its queue was deleted): it subscribes again
         * (on a fresh channel) on its next gt_bus_consume_next. */
        if (ch >= CH_FIXED) {
            gt_bus_consumer *c = bus_consumer_on(bus, ch);
            if (c != NULL && c->active) {
                c->active = false;
                gt_warn("amqp %s: the broker cancelled the consumer of '%s'", bus->host,
                        c->queue);
            }
        } else if (ch == CH_RPC) {
            bus->rpc_consuming = false;
        }
        break;
    case AMQP_CHANNEL_CLOSE_METHOD: {
        amqp_channel_close_t *m = f.payload.method.decoded;
        bus_note_close(bus, m->reply_code, m->reply_text);
        gt_warn("amqp %s: channel %u closed by the broker: %s", bus->host, (unsigned)ch,
                bus->close_text);
        amqp_channel_close_ok_t ok = {0};
        if (amqp_send_method(bus->conn, ch, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok) != AMQP_STATUS_OK)
            return bus_lost(bus, "answering channel.close", err);
        bus_channel_reset(bus, ch);
        break;
    }
    case AMQP_CONNECTION_CLOSE_METHOD: {
        amqp_connection_close_t *m = f.payload.method.decoded;
        bus_note_close(bus, m->reply_code, m->reply_text);
        amqp_connection_close_ok_t ok = {0};
        (void)amqp_send_method(bus->conn, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
        return bus_lost(bus, bus->close_text, err);
    }
    case AMQP_CONNECTION_BLOCKED_METHOD:
        gt_warn("amqp %s: the broker blocks publishers (resource alarm)", bus->host);
        break;
    case AMQP_CONNECTION_UNBLOCKED_METHOD:
        gt_info("amqp %s: the broker accepts publishers again", bus->host);
        break;
    default:
        break;
    }
    return GT_OK;
}

/* Reads and dispatches one delivery or frame, waiting up to timeout_ms. GT_OK when
 * something was handled, GT_ETIMEDOUT when nothing came, GT_EUNAVAIL when the
 * connection is gone (bus->conn is then NULL). */
static gt_err bus_pump(gt_bus *bus, int64_t timeout_ms, gt_error *err)
{
    if (bus->conn == NULL)
        return gt_error_set(err, GT_EUNAVAIL, "amqp %s: not connected", bus->host);
    amqp_maybe_release_buffers(bus->conn);
    struct timeval tv = bus_tv(timeout_ms);
    amqp_envelope_t env;
    amqp_rpc_reply_t r = amqp_consume_message(bus->conn, &env, &tv, 0);
    if (r.reply_type == AMQP_RESPONSE_NORMAL) {
        amqp_channel_t ch = env.channel;
        uint64_t requeue = bus_on_delivery(bus, &env);
        amqp_destroy_envelope(&env);
        if (requeue != 0) {
            int st = amqp_basic_reject(bus->conn, ch, requeue, 1);
            if (st != AMQP_STATUS_OK)
                return bus_lost(bus, amqp_error_string2(st), err);
        }
        return GT_OK;
    }
    if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION) {
        if (r.library_error == AMQP_STATUS_TIMEOUT)
            return GT_ETIMEDOUT;
        if (r.library_error == AMQP_STATUS_UNEXPECTED_STATE)
            return bus_on_frame(bus, err);
        return bus_lost(bus, amqp_error_string2(r.library_error), err);
    }
    return bus_lost(bus, "unexpected reply while reading", err);
}

/* Handles whatever already arrived without waiting; drops a connection the broker closed
 * while we were idle. */
static void bus_drain(gt_bus *bus)
{
    for (int i = 0; i < 10000 && bus->conn != NULL; i++)
        if (bus_pump(bus, 0, NULL) != GT_OK)
            break;
}

/* --- channels ----------------------------------------------------------------------- */

/* Opens channel ch if needed and sets up its job. */
static gt_err bus_channel(gt_bus *bus, amqp_channel_t ch, gt_error *err)
{
    gt_err rc;
    if (!bus->ch_open[ch]) {
        amqp_channel_open(bus->conn, ch);
        if ((rc = bus_rpc_result(bus, ch, "channel.open", err)) != GT_OK)
            return rc;
        bus->ch_open[ch] = true;
    }
    if (ch == CH_PUB && !bus->confirming) {
        amqp_confirm_select(bus->conn, ch);
        if ((rc = bus_rpc_result(bus, ch, "confirm.select", err)) != GT_OK)
            return rc;
        bus->confirming = true;
        bus->next_tag = 1; /* the broker numbers a channel's publishes from 1 */
    }
    if (ch == CH_RPC && !bus->rpc_consuming) {
        /* Direct reply-to: the pseudo-queue must be consumed, no-ack, before publishing. */
        amqp_basic_consume(bus->conn, ch, amqp_cstring_bytes(BUS_REPLY_TO), amqp_empty_bytes, 0, 1,
                           0, amqp_empty_table);
        if ((rc = bus_rpc_result(bus, ch, "basic.consume " BUS_REPLY_TO, err)) != GT_OK)
            return rc;
        bus->rpc_consuming = true;
    }
    return GT_OK;
}

/* Makes the bus ready for a call on channel ch: connected (reconnecting if needed), idle
 * input handled, channel set up. A connection that turns out dead on the way is
 * replaced once. */
static gt_err bus_ready(gt_bus *bus, amqp_channel_t ch, gt_error *err)
{
    gt_error e;
    gt_err rc = GT_EUNAVAIL;
    for (int pass = 0; pass < 2; pass++) {
        gt_error_clear(&e);
        rc = bus_ensure(bus, BUS_CALL_BACKOFF_MS, BUS_CALL_BACKOFF_MAX_MS, NULL, &e);
        if (rc != GT_OK)
            break;
        bus_drain(bus);
        if (bus->conn == NULL) {
            rc = GT_EUNAVAIL; /* closed while idle: reconnect once more */
            continue;
        }
        rc = bus_channel(bus, ch, &e);
        if (rc == GT_OK || bus->conn != NULL)
            break; /* done, or the broker refused something: not a connectivity problem */
    }
    if (rc == GT_OK)
        return GT_OK;
    if (e.code == GT_OK)
        return gt_error_set(err, rc, "amqp %s: connection lost twice while idle", bus->host);
    return gt_error_set(err, e.code, "%s", e.message);
}

/* --- public calls ------------------------------------------------------------------- */

gt_bus *gt_bus_connect(const gt_bus_config *cfg, gt_error *err)
{
    if (cfg == NULL || cfg->hosts == NULL || cfg->hosts[0] == NULL) {
        gt_error_set(err, GT_EINVAL, "amqp: no broker hosts configured");
        return NULL;
    }
    gt_bus *bus = gt_xcalloc(1, sizeof *bus);
    for (char *const *h = cfg->hosts; *h != NULL; h++)
        gt_strv_push(&bus->hosts, *h);
    bus->vhost = gt_xstrdup(cfg->vhost && cfg->vhost[0] ? cfg->vhost : "/");
    bus->username = gt_xstrdup(cfg->username ? cfg->username : "");
    bus->password = gt_xstrdup(cfg->password ? cfg->password : "");
    bus->use_tls = cfg->use_tls;
    bus->ca_file = gt_xstrdup(cfg->ca_certificate_file);
    bus->cert_file = gt_xstrdup(cfg->certificate_file);
    bus->key_file = gt_xstrdup(cfg->private_key_file);
    bus->cluster = cfg->cluster_id && cfg->cluster_id[0] ? gt_xstrdup(cfg->cluster_id) : NULL;
    bus->heartbeat_s = cfg->heartbeat_s <= 0 ? 30 : cfg->heartbeat_s > 3600 ? 3600
                                                                          : (int)cfg->heartbeat_s;
    bus->connect_timeout_ms = cfg->connect_timeout_ms > 0 ? cfg->connect_timeout_ms : 5000;
    bus->attempts = cfg->reconnect_attempts > 0 ? cfg->reconnect_attempts : 5;
    bus->host = gt_xstrdup(bus->hosts.v[0]);
    bus->next_tag = 1;
    bus->wake_fd = -1;
    /* The first connection is one pass over the hosts: a daemon starting against a
     * wrong address should hear about it now, not after a round of backoff. */
    if (bus_connect_pass(bus, err) != GT_OK)
        gt_bus_free(&bus);
    return bus;
}

void gt_bus_free(gt_bus **busp)
{
    if (busp == NULL || *busp == NULL)
        return;
    gt_bus *bus = *busp;
    if (bus->conn != NULL) {
        /* A polite close, but not a long wait for a broker that does not answer. */
        struct timeval tv = bus_tv(1000);
        amqp_set_rpc_timeout(bus->conn, &tv);
        (void)amqp_connection_close(bus->conn, AMQP_REPLY_SUCCESS);
    }
    bus_drop(bus);
    /* Consumers left over are detached: their calls say so, gt_bus_consume_stop frees. */
    while (bus->consumers != NULL)
        bus_consumer_unlink(bus->consumers);
    gt_strv_free(&bus->hosts);
    free(bus->vhost);
    free(bus->username);
    if (bus->password != NULL) {
        gt_wipe(bus->password, strlen(bus->password));
        free(bus->password);
    }
    free(bus->ca_file);
    free(bus->cert_file);
    free(bus->key_file);
    free(bus->cluster);
    free(bus->host);
    free(bus->rpc_reply);
    free(bus);
    *busp = NULL;
}

bool gt_bus_connected(const gt_bus *bus)
{
    return bus != NULL && bus->conn != NULL;
}

/* Declares queue on channel ch: durable, with these arguments. */
static gt_err bus_declare_args(gt_bus *bus, amqp_channel_t ch, const char *queue, amqp_table_t args,
                               gt_error *err)
{
    char what[300];
    snprintf(what, sizeof what, "declare queue '%s'", queue);
    amqp_queue_declare(bus->conn, ch, amqp_cstring_bytes(queue), 0, 1, 0, 0, args);
    return bus_rpc_result(bus, ch, what, err);
}

static amqp_table_entry_t bus_str_arg(const char *key, const char *value)
{
    return (amqp_table_entry_t){.key = amqp_cstring_bytes(key),
                                .value = {.kind = AMQP_FIELD_KIND_UTF8,
                                          .value.bytes = amqp_cstring_bytes(value)}};
}

/* Declares queue on channel ch: durable, quorum or classic. */
static gt_err bus_declare(gt_bus *bus, amqp_channel_t ch, const char *queue, bool quorum,
                          gt_error *err)
{
    amqp_table_entry_t entry = bus_str_arg("x-queue-type", "quorum");
    amqp_table_t args = quorum ? (amqp_table_t){.num_entries = 1, .entries = &entry}
                               : amqp_empty_table;
    return bus_declare_args(bus, ch, queue, args, err);
}

/* --- routes ---------------------------------------------------------------------------- */

/* The exchange (into exchange[n]) that queue is published through, or false for the
 * default exchange: gantry.<c>.auth -> itself, exec.<c>.<pool> -> gantry.<c>.exec,
 * results.<c> -> gantry.<c>.results. Dead-letter queues ("<queue>.dead") are filled by
 * the broker itself and stay on the default exchange. */
static bool bus_route(const gt_bus *bus, const char *queue, char *exchange, size_t n)
{
    const char *c = bus->cluster;
    if (c == NULL || queue == NULL)
        return false;
    size_t cl = strlen(c), ql = strlen(queue), dl = strlen(BUS_DEAD_SUFFIX);
    const char *family = NULL;
    if (strncmp(queue, "gantry.", 7) == 0 && strncmp(queue + 7, c, cl) == 0 &&
        strcmp(queue + 7 + cl, ".auth") == 0)
        family = "auth";
    else if (strncmp(queue, "results.", 8) == 0 && strcmp(queue + 8, c) == 0)
        family = "results";
    else if (strncmp(queue, "exec.", 5) == 0 && strncmp(queue + 5, c, cl) == 0 &&
             queue[5 + cl] == '.' && queue[6 + cl] != '\0' &&
             !(ql > dl && strcmp(queue + ql - dl, BUS_DEAD_SUFFIX) == 0))
        family = "exec";
    if (family == NULL)
        return false;
    int w = snprintf(exchange, n, "gantry.%s.%s", c, family);
    return w > 0 && (size_t)w < n;
}

/* Declares exchange (direct, durable) and binds queue to it with its own name as the key,
 * on channel ch. A refusal (this broker user may not configure the exchange or bind the
 * queue: a runner) is not an error: whoever publishes there binds it; the channel the
 * broker closed is reopened by the next call. */
static gt_err bus_bind(gt_bus *bus, amqp_channel_t ch, const char *queue, const char *exchange,
                       gt_error *err)
{
    char what[600];
    gt_error e;
    gt_error_clear(&e);
    snprintf(what, sizeof what, "declare exchange '%s'", exchange);
    amqp_exchange_declare(bus->conn, ch, amqp_cstring_bytes(exchange), amqp_cstring_bytes("direct"),
                          0, 1, 0, 0, amqp_empty_table);
    gt_err rc = bus_rpc_result(bus, ch, what, &e);
    if (rc == GT_OK) {
        snprintf(what, sizeof what, "bind queue '%s' to exchange '%s'", queue, exchange);
        amqp_queue_bind(bus->conn, ch, amqp_cstring_bytes(queue), amqp_cstring_bytes(exchange),
                        amqp_cstring_bytes(queue), amqp_empty_table);
        rc = bus_rpc_result(bus, ch, what, &e);
    }
    if (rc == GT_EPERM && bus->conn != NULL) {
        gt_debug("%s (left to a broker user that may)", e.message);
        return GT_OK;
    }
    return rc == GT_OK ? GT_OK : gt_error_set(err, rc, "%s", e.message);
}

/* Binds a routed queue to its exchange (bus_bind); nothing for other queues. */
static gt_err bus_bind_route(gt_bus *bus, amqp_channel_t ch, const char *queue, gt_error *err)
{
    char exchange[300];
    if (!bus_route(bus, queue, exchange, sizeof exchange))
        return GT_OK;
    return bus_bind(bus, ch, queue, exchange, err);
}

gt_err gt_bus_declare_queue(gt_bus *bus, const char *queue, bool quorum, gt_error *err)
{
    if (queue == NULL || queue[0] == '\0' || strlen(queue) > 255)
        return gt_error_set(err, GT_EINVAL, "amqp: queue name must be 1-255 bytes");
    gt_error e;
    gt_err rc = GT_EUNAVAIL;
    /* Declaring is idempotent, so a connection lost on the way is simply retried once. */
    for (int pass = 0; pass < 2; pass++) {
        gt_error_clear(&e);
        if ((rc = bus_ready(bus, CH_PUB, &e)) != GT_OK)
            break;
        rc = bus_declare(bus, CH_PUB, queue, quorum, &e);
        if (rc == GT_OK)
            rc = bus_bind_route(bus, CH_PUB, queue, &e);
        if (rc == GT_OK || bus->conn != NULL)
            break;
    }
    return rc == GT_OK ? GT_OK : gt_error_set(err, rc, "%s", e.message);
}

gt_err gt_bus_queue_ready(gt_bus *bus, const char *queue, int64_t *ready, gt_error *err)
{
    if (bus == NULL || queue == NULL || queue[0] == '\0' || strlen(queue) > 255)
        return gt_error_set(err, GT_EINVAL, "amqp: a queue name must be 1-255 bytes");
    gt_err rc = bus_ready(bus, CH_PUB, err);
    if (rc != GT_OK)
        return rc;
    char what[300];
    snprintf(what, sizeof what, "look at queue '%s'", queue);
    /* passive: only reads the queue's counts, never creates or changes it */
    amqp_queue_declare_ok_t *ok = amqp_queue_declare(bus->conn, CH_PUB, amqp_cstring_bytes(queue),
                                                     1, 0, 0, 0, amqp_empty_table);
    if ((rc = bus_rpc_result(bus, CH_PUB, what, err)) == GT_OK)
        *ready = ok ? (int64_t)ok->message_count : 0;
    return rc;
}

gt_err gt_bus_declare_work_queue(gt_bus *bus, const char *queue, gt_error *err)
{
    size_t n = queue != NULL ? strlen(queue) : 0;
    if (bus == NULL || n == 0 || n > 255 - strlen(BUS_DEAD_SUFFIX))
        return gt_error_set(err, GT_EINVAL, "amqp: a work queue name must be 1-%zu bytes "
                            "(its dead-letter queue adds \"%s\")", 255 - strlen(BUS_DEAD_SUFFIX),
                            BUS_DEAD_SUFFIX);
    char dead[256], dlx[300] = "";
    snprintf(dead, sizeof dead, "%s%s", queue, BUS_DEAD_SUFFIX);
    /* RabbitMQ lets a user declare a queue with a dead-letter exchange only if it may write
     * to that exchange; for the default one that would be write on "amq.default" (every
     * queue). A routed queue dead-letters through gantry.<cluster_id>.dead instead, to
     * which its dead-letter queue is bound. */
    char routed[300];
    if (bus_route(bus, queue, routed, sizeof routed))
        snprintf(dlx, sizeof dlx, "gantry.%s.dead", bus->cluster);
    amqp_table_entry_t dead_args[] = {bus_str_arg("x-queue-type", "quorum")};
    amqp_table_entry_t work_args[] = {
        bus_str_arg("x-queue-type", "quorum"),
        bus_str_arg("x-dead-letter-exchange", dlx),
        bus_str_arg("x-dead-letter-routing-key", dead),
        /* The broker dead-letters with confirms and keeps the message until <queue>.dead
         * has it; "at-least-once" needs overflow "reject-publish" (there is no length
         * limit, so publishing is never refused for it). */
        bus_str_arg("x-dead-letter-strategy", "at-least-once"),
        bus_str_arg("x-overflow", "reject-publish"),
        {.key = amqp_cstring_bytes("x-delivery-limit"),
         .value = {.kind = AMQP_FIELD_KIND_I64, .value.i64 = GT_BUS_DELIVERY_LIMIT}},
    };
    amqp_table_t dt = {.num_entries = 1, .entries = dead_args};
    amqp_table_t wt = {.num_entries = (int)(sizeof work_args / sizeof work_args[0]),
                       .entries = work_args};
    gt_error e;
    gt_err rc = GT_EUNAVAIL;
    /* Declaring is idempotent, so a connection lost on the way is simply retried once. The
     * dead-letter queue first: the work queue's messages always have somewhere to go. */
    for (int pass = 0; pass < 2; pass++) {
        gt_error_clear(&e);
        if ((rc = bus_ready(bus, CH_PUB, &e)) != GT_OK)
            break;
        rc = bus_declare_args(bus, CH_PUB, dead, dt, &e);
        if (rc == GT_OK && dlx[0] != '\0')
            rc = bus_bind(bus, CH_PUB, dead, dlx, &e);
        if (rc == GT_OK) {
            if ((rc = bus_ready(bus, CH_PUB, &e)) != GT_OK)
                break;
            rc = bus_declare_args(bus, CH_PUB, queue, wt, &e);
        }
        if (rc == GT_OK)
            rc = bus_bind_route(bus, CH_PUB, queue, &e);
        if (rc == GT_OK || bus->conn != NULL)
            break;
    }
    return rc == GT_OK ? GT_OK : gt_error_set(err, rc, "%s", e.message);
}

gt_err gt_bus_publish(gt_bus *bus, const char *exchange, const char *key, const void *body,
                      size_t len, bool persistent, gt_error *err)
{
    if (exchange == NULL)
        exchange = "";
    if (key == NULL)
        key = "";
    if (strlen(exchange) > 255 || strlen(key) > 255)
        return gt_error_set(err, GT_EINVAL, "amqp: exchange and routing key are at most 255 bytes");
    /* On the default exchange the key names a queue: a message nobody can receive is an
     * error (GT_ENOTFOUND), not a silent loss. So it is for a routed queue, whose exchange
     * stands in for the default one. On another named exchange (events, topics) having no
     * subscriber is normal. */
    bool mandatory = exchange[0] == '\0';
    char routed[300];
    if (mandatory && bus_route(bus, key, routed, sizeof routed))
        exchange = routed;
    amqp_basic_properties_t props = {
        ._flags = AMQP_BASIC_DELIVERY_MODE_FLAG,
        .delivery_mode = persistent ? AMQP_DELIVERY_PERSISTENT : AMQP_DELIVERY_NONPERSISTENT,
    };
    bus_set_user_id(bus, &props);
    amqp_bytes_t bytes = {.len = len, .bytes = (void *)body};
    gt_error e;
    gt_err rc = GT_EUNAVAIL;
    bool retried = false;
    for (;;) {
        bool lost = false;
        gt_error_clear(&e);
        if ((rc = bus_ready(bus, CH_PUB, &e)) != GT_OK)
            break;
        uint64_t tag = bus->next_tag++;
        bus->wait_tag = tag;
        bus->pub_state = PUB_PENDING;
        bus->pub_returned = false;
        int st = amqp_basic_publish(bus->conn, CH_PUB, amqp_cstring_bytes(exchange),
                                    amqp_cstring_bytes(key), mandatory, 0, &props, bytes);
        if (st != AMQP_STATUS_OK) {
            /* Not written completely, so the broker did not take it: retrying is safe. */
            rc = bus_lost(bus, amqp_error_string2(st), &e);
            lost = true;
        } else {
            int64_t deadline = gt_mono_ms() + BUS_OP_MS;
            while (bus->conn != NULL && bus->ch_open[CH_PUB] && bus->pub_state == PUB_PENDING) {
                int64_t left = deadline - gt_mono_ms();
                if (left <= 0)
                    break;
                (void)bus_pump(bus, left, &e);
            }
            if (bus->pub_state == PUB_ACKED && !bus->pub_returned) {
                rc = GT_OK;
            } else if (bus->pub_state == PUB_ACKED) {
                rc = gt_error_set(&e, GT_ENOTFOUND, "amqp %s: publish to '%s': no queue named '%s'",
                                  bus->host, exchange, key);
            } else if (bus->pub_state == PUB_NACKED) {
                rc = gt_error_set(&e, GT_EUNAVAIL, "amqp %s: the broker refused (nack) a message "
                                  "for '%s'/'%s'", bus->host, exchange, key);
            } else if (bus->conn != NULL && !bus->ch_open[CH_PUB]) {
                rc = gt_error_set(&e, bus_code(bus->close_code),
                                  "amqp %s: publish to '%s'/'%s': %s", bus->host, exchange, key,
                                  bus->close_text);
            } else if (bus->conn != NULL) {
                /* No confirm in time: the connection is suspect; start the next call afresh. */
                rc = gt_error_set(&e, GT_EUNAVAIL, "amqp %s: no confirm for a message to '%s'/'%s' "
                                  "within %d ms", bus->host, exchange, key, BUS_OP_MS);
                bus_drop(bus);
            } else {
                rc = GT_EUNAVAIL; /* connection lost while waiting: e says why */
                lost = true;
            }
        }
        bus->wait_tag = 0;
        if (!lost || retried)
            break;
        /* Lost before the confirm: once more on a new connection (may duplicate; see top). */
        retried = true;
    }
    return rc == GT_OK ? GT_OK : gt_error_set(err, rc, "%s", e.message);
}

gt_err gt_bus_rpc(gt_bus *bus, const char *queue, const void *body, size_t len,
                  int64_t timeout_ms, char **reply, size_t *reply_len, gt_error *err)
{
    *reply = NULL;
    if (reply_len != NULL)
        *reply_len = 0;
    if (queue == NULL || queue[0] == '\0' || strlen(queue) > 255)
        return gt_error_set(err, GT_EINVAL, "amqp: rpc needs a queue name of 1-255 bytes");
    if (timeout_ms <= 0)
        return gt_error_set(err, GT_EINVAL, "amqp: rpc timeout must be positive");
    int64_t deadline = gt_mono_ms() + timeout_ms;
    char *corr = gt_id_new();
    char expiration[24];
    /* The request expires with the caller's patience: a server that comes back later
     * does not work for someone who already gave up. */
    snprintf(expiration, sizeof expiration, "%" PRId64, timeout_ms);
    amqp_basic_properties_t props = {
        ._flags = AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_REPLY_TO_FLAG |
                  AMQP_BASIC_CORRELATION_ID_FLAG | AMQP_BASIC_EXPIRATION_FLAG,
        .delivery_mode = AMQP_DELIVERY_NONPERSISTENT,
        .reply_to = amqp_cstring_bytes(BUS_REPLY_TO),
        .correlation_id = amqp_cstring_bytes(corr),
        .expiration = amqp_cstring_bytes(expiration),
    };
    /* The caller's identity, for the server: RabbitMQ refuses the message if it is not the
     * user this connection logged in as. */
    bus_set_user_id(bus, &props);
    char routed[300];
    amqp_bytes_t exchange = bus_route(bus, queue, routed, sizeof routed) ? amqp_cstring_bytes(routed)
                                                                         : amqp_empty_bytes;
    amqp_bytes_t bytes = {.len = len, .bytes = (void *)body};
    gt_error e;
    gt_err rc = GT_EUNAVAIL;
    for (int pass = 0; pass < 2; pass++) {
        gt_error_clear(&e);
        if ((rc = bus_ready(bus, CH_RPC, &e)) != GT_OK)
            goto done;
        /* mandatory: a queue nobody declared answers at once instead of timing out. */
        int st = amqp_basic_publish(bus->conn, CH_RPC, exchange, amqp_cstring_bytes(queue),
                                    1, 0, &props, bytes);
        if (st == AMQP_STATUS_OK)
            break;
        rc = bus_lost(bus, amqp_error_string2(st), &e); /* not sent: safe to send again */
    }
    if (bus->conn == NULL)
        goto done;
    bus->rpc_corr = corr;
    bus->rpc_done = false;
    bus->rpc_returned = false;
    while (bus->conn != NULL && bus->rpc_consuming && !bus->rpc_done && !bus->rpc_returned) {
        int64_t left = deadline - gt_mono_ms();
        if (left <= 0)
            break;
        (void)bus_pump(bus, left, &e);
    }
    bus->rpc_corr = NULL;
    if (bus->rpc_done) {
        *reply = bus->rpc_reply;
        if (reply_len != NULL)
            *reply_len = bus->rpc_reply_len;
        bus->rpc_reply = NULL;
        bus->rpc_done = false;
        rc = GT_OK;
    } else if (bus->rpc_returned) {
        rc = gt_error_set(&e, GT_EUNAVAIL, "amqp %s: rpc to '%s': no such queue (nobody serves it)",
                          bus->host, queue);
    } else if (bus->conn == NULL) {
        rc = GT_EUNAVAIL; /* e says why */
    } else if (!bus->rpc_consuming && bus->close_code == AMQP_ACCESS_REFUSED) {
        rc = gt_error_set(&e, GT_EPERM, "amqp %s: rpc to '%s': %s", bus->host, queue,
                          bus->close_text);
    } else if (!bus->rpc_consuming && bus->close_code == AMQP_NOT_FOUND) {
        /* The queue's exchange was never declared: its server never started. */
        rc = gt_error_set(&e, GT_EUNAVAIL, "amqp %s: rpc to '%s': nobody serves it (%s)",
                          bus->host, queue, bus->close_text);
    } else if (!bus->rpc_consuming) {
        rc = gt_error_set(&e, GT_EUNAVAIL, "amqp %s: rpc to '%s': reply channel closed: %s",
                          bus->host, queue, bus->close_text);
    } else {
        rc = gt_error_set(&e, GT_ETIMEDOUT, "amqp %s: rpc to '%s': no answer within %" PRId64 " ms",
                          bus->host, queue, timeout_ms);
    }
done:
    free(corr);
    return rc == GT_OK ? GT_OK : gt_error_set(err, rc, "%s", e.message);
}

/* --- consuming ---------------------------------------------------------------------- */

/* Generations are unique in the process, so a delivery from another consumer (or another
 * bus) is never mistaken for one of this subscription. */
static _Atomic uint64_t bus_generations;

static gt_bus_consumer *bus_consumer_new(gt_bus *bus, const char *queue, uint16_t prefetch)
{
    gt_bus_consumer *c = gt_xcalloc(1, sizeof *c);
    c->bus = bus;
    c->queue = gt_xstrdup(queue);
    c->prefetch = prefetch;
    c->next = bus->consumers;
    bus->consumers = c;
    return c;
}

/* Closes a consumer's channel, which cancels its subscription; the broker requeues every
 * delivery of it not acked yet. */
static void bus_consumer_close(gt_bus_consumer *c)
{
    gt_bus *bus = c->bus;
    if (bus != NULL && bus->conn != NULL && c->open) {
        amqp_rpc_reply_t r = amqp_channel_close(bus->conn, c->ch, AMQP_REPLY_SUCCESS);
        if (r.reply_type != AMQP_RESPONSE_NORMAL)
            bus_drop(bus); /* in doubt: the next call starts afresh */
    }
    bus_consumer_reset(c);
}

/* Opens a channel for c with a number not used on this connection before, so frames
 * still queued for an old channel never reach the new subscription. */
static gt_err bus_consumer_channel(gt_bus_consumer *c, gt_error *err)
{
    gt_bus *bus = c->bus;
    int max = amqp_get_channel_max(bus->conn);
    if (max <= 0 || max > 65535)
        max = 65535;
    if (bus->next_ch > max) {
        bus_drop(bus); /* numbering starts again on a new connection */
        return gt_error_set(err, GT_EUNAVAIL, "amqp %s: all %d channels used; reconnecting",
                            bus->host, max);
    }
    amqp_channel_t ch = (amqp_channel_t)bus->next_ch++;
    amqp_channel_open(bus->conn, ch);
    gt_err rc = bus_rpc_result(bus, ch, "channel.open", err);
    if (rc != GT_OK)
        return rc;
    c->ch = ch;
    c->open = true;
    return GT_OK;
}

/* Subscribes c: connected (one pass over the hosts when there is no connection), a fresh
 * channel (a new number on this connection, so frames still queued for an old one never
 * reach the new subscription), the queue declared when asked, prefetch, basic.consume
 * with manual acks. A new generation on success. */
static gt_err bus_subscribe(gt_bus_consumer *c, gt_error *err)
{
    gt_bus *bus = c->bus;
    gt_err rc;
    if (bus->conn != NULL)
        bus_drain(bus); /* a connection the broker closed while we were away */
    if (bus->conn == NULL) {
        if ((rc = bus_connect_pass(bus, err)) != GT_OK)
            return rc;
        gt_info("amqp: connected to %s", bus->host);
    }
    if (c->open)
        bus_consumer_close(c); /* the broker cancelled it: start on a fresh channel */
    if (bus->conn == NULL)
        return gt_error_set(err, GT_EUNAVAIL, "amqp %s: connection lost closing a channel",
                            bus->host);
    if ((rc = bus_consumer_channel(c, err)) != GT_OK)
        return rc;
    if (c->declare) {
        gt_error e;
        gt_error_clear(&e);
        rc = bus_declare(bus, c->ch, c->queue, false, &e);
        if (rc == GT_ECONFLICT && bus->conn != NULL) {
            /* It exists with other arguments (a quorum queue, say): serve it as it is. The
             * broker closed the channel: a new one. */
            gt_debug("amqp %s: %s", bus->host, e.message);
            if ((rc = bus_consumer_channel(c, err)) != GT_OK)
                return rc;
        } else if (rc != GT_OK) {
            return gt_error_set(err, rc, "%s", e.message);
        }
        /* Bound on every subscribe: a queue deleted and declared again has lost it. */
        gt_error_clear(&e);
        if ((rc = bus_bind_route(bus, c->ch, c->queue, &e)) != GT_OK)
            return gt_error_set(err, rc, "%s", e.message);
        if (bus->conn != NULL && !c->open && (rc = bus_consumer_channel(c, err)) != GT_OK)
            return rc; /* a refused bind closed the channel */
    }
    amqp_basic_qos(bus->conn, c->ch, 0, c->prefetch, 0);
    if ((rc = bus_rpc_result(bus, c->ch, "basic.qos", err)) != GT_OK)
        return rc;
    amqp_basic_consume_ok_t *ok = amqp_basic_consume(bus->conn, c->ch, amqp_cstring_bytes(c->queue),
                                                     amqp_empty_bytes, 0, 0, 0, amqp_empty_table);
    char what[300];
    snprintf(what, sizeof what, "consume queue '%s'", c->queue);
    if ((rc = bus_rpc_result(bus, c->ch, what, err)) != GT_OK)
        return rc;
    free(c->tag);
    c->tag = ok != NULL ? bus_bytes_dup(ok->consumer_tag) : NULL;
    c->gen = atomic_fetch_add(&bus_generations, 1) + 1;
    c->n_unacked = 0;
    c->active = true;
    return GT_OK;
}

gt_bus_consumer *gt_bus_consume_start(gt_bus *bus, const char *queue, int prefetch, gt_error *err)
{
    if (bus == NULL || queue == NULL || queue[0] == '\0' || strlen(queue) > 255) {
        gt_error_set(err, GT_EINVAL, "amqp: consume needs a bus and a queue name of 1-255 bytes");
        return NULL;
    }
    if (prefetch < 1 || prefetch > 65535) {
        gt_error_set(err, GT_EINVAL, "amqp: prefetch for '%s' must be 1-65535, not %d", queue,
                     prefetch);
        return NULL;
    }
    gt_bus_consumer *c = bus_consumer_new(bus, queue, (uint16_t)prefetch);
    gt_error e;
    gt_err rc = GT_EUNAVAIL;
    /* Subscribing is idempotent, so a connection lost on the way is simply retried once. */
    for (int pass = 0; pass < 2; pass++) {
        gt_error_clear(&e);
        rc = bus_ensure(bus, BUS_CALL_BACKOFF_MS, BUS_CALL_BACKOFF_MAX_MS, NULL, &e);
        if (rc != GT_OK)
            break;
        rc = bus_subscribe(c, &e);
        if (rc == GT_OK || bus->conn != NULL)
            break;
    }
    if (rc != GT_OK) {
        gt_error_set(err, rc, "%s", e.message);
        gt_bus_consume_stop(&c);
    }
    return c;
}

bool gt_bus_consuming(const gt_bus_consumer *c)
{
    return c != NULL && c->bus != NULL && c->bus->conn != NULL && c->active;
}

gt_err gt_bus_consume_next(gt_bus_consumer *c, int64_t timeout_ms, gt_bus_delivery *d,
                           gt_error *err)
{
    if (d != NULL)
        memset(d, 0, sizeof *d);
    if (c == NULL || d == NULL)
        return gt_error_set(err, GT_EINVAL, "amqp: consume_next needs a consumer and a delivery");
    gt_bus *bus = c->bus;
    if (bus == NULL)
        return gt_error_set(err, GT_EINVAL, "amqp: '%s': its bus was freed", c->queue);
    if (timeout_ms < 0)
        timeout_ms = 0;
    int64_t deadline = gt_mono_ms() + timeout_ms;
    bool tried = false, waited = false;
    /* Whatever already arrived first: a connection the broker closed (a restart) takes
     * the deliveries queued before its close with it, instead of handing out work whose
     * ack is bound to fail. */
    if (bus->conn != NULL)
        bus_drain(bus);
    for (;;) {
        bus_pending *p = c->pend_head;
        if (p != NULL) {
            c->pend_head = p->next;
            if (c->pend_head == NULL)
                c->pend_tail = NULL;
            *d = p->d;
            free(p);
            return GT_OK;
        }
        bool want = !c->active && !c->cancelled;
        if (want && !tried && gt_mono_ms() >= c->retry_at) {
            /* One attempt per call, so the call stays bounded. */
            tried = true;
            bool again = c->gen != 0;
            gt_error e;
            gt_error_clear(&e);
            gt_err rc = bus_subscribe(c, &e);
            if (rc == GT_OK) {
                if (again)
                    gt_info("amqp %s: consuming '%s' again", bus->host, c->queue);
                c->failures = 0;
                c->retry_at = 0;
                continue;
            }
            c->failures++;
            c->retry_at = gt_mono_ms() +
                          bus_backoff(c->failures, BUS_SERVE_BACKOFF_MS, BUS_SERVE_BACKOFF_MAX_MS);
            if (rc != GT_EUNAVAIL)
                return gt_error_set(err, rc, "%s", e.message); /* a refusal: say it now */
            gt_warn("%s (attempt %d of %d)", e.message, c->failures, bus->attempts);
            if (c->failures >= bus->attempts) {
                int n = c->failures;
                c->failures = 0;
                return gt_error_set(err, GT_EUNAVAIL, "%s (consuming '%s': gave up after %d "
                                    "attempts)", e.message, c->queue, n);
            }
            continue;
        }
        int64_t now = gt_mono_ms();
        int64_t left = deadline - now;
        if (left <= 0 && waited)
            return gt_error_set(err, GT_ETIMEDOUT, "amqp: nothing from '%s' within %" PRId64 " ms",
                                c->queue, timeout_ms);
        int64_t wait = left > 0 ? left : 0;
        if (want && !tried && c->retry_at - now < wait)
            wait = c->retry_at - now > 0 ? c->retry_at - now : 0; /* wake for the attempt */
        if (bus->conn != NULL && wait > 0 && bus->wake_fd >= 0 &&
            !amqp_data_in_buffer(bus->conn) && !amqp_frames_enqueued(bus->conn)) {
            /* nothing buffered: wait on the socket and the wake-up fd together */
            struct pollfd pfd[2] = {{.fd = amqp_get_sockfd(bus->conn), .events = POLLIN},
                                    {.fd = bus->wake_fd, .events = POLLIN}};
            int n = poll(pfd, 2, (int)wait);
            if (n > 0 && pfd[1].revents)
                return gt_error_set(err, GT_ETIMEDOUT, "amqp: woken while waiting on '%s'",
                                    c->queue);
            /* also when nothing came: the library sends heartbeats from its reads */
            (void)bus_pump(bus, 0, NULL);
        } else if (bus->conn != NULL) {
            (void)bus_pump(bus, wait, NULL); /* heartbeats go out while it waits */
        } else {
            (void)bus_sleep(wait, NULL);
        }
        waited = true;
    }
}

bool gt_bus_set_wakeup(gt_bus *bus, int fd)
{
    if (bus == NULL || bus->use_tls)
        return false;
    bus->wake_fd = fd;
    return true;
}

/* Acks (how 0), rejects (1) or requeues (2) d on c. */
static gt_err bus_settle(gt_bus_consumer *c, const gt_bus_delivery *d, int how, gt_error *err)
{
    static const char *const verbs[] = {"ack", "reject", "requeue"};
    if (c == NULL || d == NULL)
        return gt_error_set(err, GT_EINVAL, "amqp: %s needs a consumer and a delivery", verbs[how]);
    gt_bus *bus = c->bus;
    if (bus == NULL)
        return gt_error_set(err, GT_EINVAL, "amqp: '%s': its bus was freed", c->queue);
    if (bus->conn != NULL)
        bus_drain(bus); /* notice a connection the broker closed meanwhile */
    if (d->generation == 0 || d->generation != c->gen || !c->open || bus->conn == NULL)
        return gt_error_set(err, GT_ECONFLICT, "amqp %s: '%s': cannot %s delivery %" PRIu64
                            ": it came on an earlier connection or channel (the broker requeued "
                            "it and delivers it again)", bus->host, c->queue, verbs[how],
                            d->delivery_tag);
    if (!bus_unacked_remove(c, d->delivery_tag))
        return gt_error_set(err, GT_EINVAL, "amqp %s: '%s': cannot %s delivery %" PRIu64
                            ": it was acked or rejected already", bus->host, c->queue,
                            verbs[how], d->delivery_tag);
    int st = how == 0 ? amqp_basic_ack(bus->conn, c->ch, d->delivery_tag, 0)
                      : amqp_basic_reject(bus->conn, c->ch, d->delivery_tag, how == 2);
    if (st != AMQP_STATUS_OK)
        return bus_lost(bus, amqp_error_string2(st), err); /* it comes again */
    return GT_OK;
}

gt_err gt_bus_ack(gt_bus_consumer *c, const gt_bus_delivery *d, gt_error *err)
{
    return bus_settle(c, d, 0, err);
}

gt_err gt_bus_reject(gt_bus_consumer *c, const gt_bus_delivery *d, bool requeue, gt_error *err)
{
    return bus_settle(c, d, requeue ? 2 : 1, err);
}

gt_err gt_bus_consume_cancel(gt_bus_consumer *c, gt_error *err)
{
    if (c == NULL)
        return gt_error_set(err, GT_EINVAL, "amqp: consume_cancel needs a consumer");
    if (c->cancelled)
        return GT_OK;
    c->cancelled = true;
    gt_bus *bus = c->bus;
    if (bus == NULL || bus->conn == NULL || !c->open)
        return GT_OK; /* no subscription: the broker requeued everything unacked already */
    if (c->active && c->tag != NULL) {
        c->active = false;
        amqp_basic_cancel(bus->conn, c->ch, amqp_cstring_bytes(c->tag));
        char what[300];
        snprintf(what, sizeof what, "cancel consumer of '%s'", c->queue);
        gt_err rc = bus_rpc_result(bus, c->ch, what, err);
        if (rc != GT_OK)
            return rc; /* channel or connection gone: requeued by the broker */
    }
    c->active = false;
    /* Received but not handed out: back to the queue now, for other consumers. (Those that
     * arrive before the broker saw the cancel are requeued by bus_pump as they come.) */
    while (c->pend_head != NULL && bus->conn != NULL && c->open) {
        bus_pending *p = c->pend_head;
        c->pend_head = p->next;
        uint64_t tag = p->d.delivery_tag;
        (void)bus_unacked_remove(c, tag);
        gt_bus_delivery_clear(&p->d);
        free(p);
        int st = amqp_basic_reject(bus->conn, c->ch, tag, 1);
        if (st != AMQP_STATUS_OK)
            return bus_lost(bus, amqp_error_string2(st), err);
    }
    if (c->pend_head == NULL)
        c->pend_tail = NULL;
    return GT_OK;
}

void gt_bus_consume_stop(gt_bus_consumer **cp)
{
    if (cp == NULL || *cp == NULL)
        return;
    gt_bus_consumer *c = *cp;
    bus_consumer_close(c);
    bus_consumer_unlink(c);
    bus_free_pending(c);
    free(c->unacked);
    free(c->tag);
    free(c->queue);
    free(c);
    *cp = NULL;
}

/* --- serving RPC requests -------------------------------------------------------------- */

typedef struct serve_ctx {
    const char *queue;
    gt_bus_rpc_fn fn;
    void *arg;
} serve_ctx;

/* Answers one request, then acks it; a request that cannot be answered is rejected (not
 * requeued). When the handler's own bus calls lost the channel meanwhile, nothing is
 * sent: the broker requeued the request and it comes again. */
static void serve_one(gt_bus_consumer *c, const serve_ctx *s, const gt_bus_delivery *d)
{
    gt_bus *bus = c->bus;
    if (d->reply_to == NULL || d->reply_to[0] == '\0') {
        gt_warn("amqp %s: '%s': request without reply-to rejected", bus->host, s->queue);
        (void)gt_bus_reject(c, d, false, NULL);
        return;
    }
    char *reply = NULL;
    size_t reply_len = 0;
    gt_err rc = s->fn(s->arg, d->user_id, d->body, d->len, &reply, &reply_len);
    if (rc != GT_OK) {
        gt_warn("amqp %s: '%s': request %s rejected: %s", bus->host, s->queue,
                d->correlation_id ? d->correlation_id : "(no correlation id)", gt_strerror(rc));
        free(reply);
        (void)gt_bus_reject(c, d, false, NULL);
        return;
    }
    if (bus->conn == NULL || !c->open || d->generation != c->gen) {
        free(reply);
        return;
    }
    amqp_basic_properties_t props = {
        ._flags = AMQP_BASIC_DELIVERY_MODE_FLAG,
        .delivery_mode = AMQP_DELIVERY_NONPERSISTENT,
    };
    if (d->correlation_id != NULL) {
        props._flags |= AMQP_BASIC_CORRELATION_ID_FLAG;
        props.correlation_id = amqp_cstring_bytes(d->correlation_id);
    }
    bus_set_user_id(bus, &props);
    amqp_bytes_t bytes = {.len = reply_len, .bytes = reply};
    /* No confirm for replies: the caller waiting for it is the confirmation, and a caller
     * that is gone makes the broker drop the reply, which is what we want. */
    int st = amqp_basic_publish(bus->conn, c->ch, amqp_empty_bytes,
                                amqp_cstring_bytes(d->reply_to), 0, 0, &props, bytes);
    free(reply);
    if (st != AMQP_STATUS_OK) {
        (void)bus_lost(bus, amqp_error_string2(st), NULL); /* the request will come again */
        return;
    }
    (void)gt_bus_ack(c, d, NULL);
}

gt_err gt_bus_serve_rpc(gt_bus *bus, const char *queue, gt_bus_rpc_fn fn, void *arg,
                        atomic_int *stop, gt_error *err)
{
    if (bus == NULL || queue == NULL || queue[0] == '\0' || strlen(queue) > 255 || fn == NULL ||
        stop == NULL)
        return gt_error_set(err, GT_EINVAL, "amqp: serve_rpc needs a queue (1-255 bytes), "
                            "a handler and a stop flag");
    if (*stop)
        return GT_OK;
    serve_ctx s = {.queue = queue, .fn = fn, .arg = arg};
    /* Prefetch 1: a slow request (a password hash) does not hold others back that an idle
     * server could answer. The queue is declared on each subscribe (classic, or as it is). */
    gt_bus_consumer *c = bus_consumer_new(bus, queue, 1);
    c->declare = true;
    gt_err rc = GT_OK;
    while (!*stop) {
        gt_bus_delivery d;
        gt_error e;
        gt_error_clear(&e);
        rc = gt_bus_consume_next(c, BUS_POLL_MS, &d, &e);
        if (rc == GT_OK) {
            serve_one(c, &s, &d);
            gt_bus_delivery_clear(&d);
            continue;
        }
        if (rc == GT_ETIMEDOUT) {
            rc = GT_OK;
            continue;
        }
        if (rc == GT_EUNAVAIL || rc == GT_EPERM || rc == GT_EINVAL || rc == GT_ENOMEM) {
            gt_error_set(err, rc, "%s", e.message); /* gave up, or will never work */
            break;
        }
        /* Another refusal (the queue went away, ...): retried after a backoff. */
        gt_warn("%s (attempt %d of %d)", e.message, c->failures, bus->attempts);
        if (c->failures >= bus->attempts) {
            gt_error_set(err, rc, "%s (gave up after %d attempts)", e.message, c->failures);
            break;
        }
        rc = GT_OK;
    }
    /* Closing the channel cancels the consumer and requeues what was prefetched. */
    gt_bus_consume_stop(&c);
    return *stop ? GT_OK : rc;
}
