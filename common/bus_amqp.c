/* The bus over AMQP 0-9-1 (RabbitMQ) with librabbitmq-c 0.11.
 *
 * One gt_bus is one connection, used by one thread at a time. It keeps three channels,
 * each with one job, so that the broker's asynchronous frames never mix:
 *   1 (CH_PUB)  publishes in confirm mode (and declares queues): every publish waits
 *               for the basic.ack/basic.nack of its own delivery tag;
 *   2 (CH_RPC)  RPC requests, and the direct reply-to consumer (no confirms: RabbitMQ
 *               does not support direct reply-to together with confirm mode everywhere,
 *               and the reply is the confirmation anyway);
 *   3 (CH_CONS) a consumer with manual acks (gt_bus_serve_rpc).
 * All reading goes through bus_pump(), which dispatches whatever arrives to the state of
 * the channel it belongs to: a handler that publishes while serving (the runner will)
 * does not lose the deliveries that arrive while it waits for its confirm.
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

enum { CH_PUB = 1, CH_RPC = 2, CH_CONS = 3, CH_COUNT = 4 };

#define BUS_FRAME_MAX 131072
#define BUS_OP_MS 15000          /* broker round trips: confirms, declares, channel opens */
#define BUS_POLL_MS 200          /* how often a consumer looks at its stop flag */
#define BUS_CALL_BACKOFF_MS 100  /* first reconnect pause inside a call (then doubles) */
#define BUS_CALL_BACKOFF_MAX_MS 2000
#define BUS_SERVE_BACKOFF_MS 1000 /* a server rides out a broker restart (~5-10 s) */
#define BUS_SERVE_BACKOFF_MAX_MS 10000
#define BUS_REPLY_TO "amq.rabbitmq.reply-to"

/* A delivery on the consumer channel, copied out of librabbitmq's buffers. */
typedef struct bus_delivery {
    struct bus_delivery *next;
    uint64_t tag;
    uint64_t epoch;        /* the consumer channel incarnation it belongs to */
    bool redelivered;
    char *body;            /* NUL-terminated */
    size_t len;
    char *reply_to;        /* NULL when absent */
    char *correlation_id;  /* NULL when absent */
} bus_delivery;

typedef enum bus_verdict { BUS_ACK, BUS_REJECT, BUS_REQUEUE } bus_verdict;
typedef bus_verdict (*bus_handler)(gt_bus *bus, void *arg, const bus_delivery *d);

typedef enum bus_pub_state { PUB_PENDING, PUB_ACKED, PUB_NACKED } bus_pub_state;

struct gt_bus {
    /* The configuration, copied. */
    gt_strv hosts;
    char *vhost, *username, *password, *ca_file, *cert_file, *key_file;
    bool use_tls;
    int heartbeat_s;
    int64_t connect_timeout_ms;
    int attempts;

    amqp_connection_state_t conn; /* NULL while disconnected */
    char *host;                   /* host:port of the current (or last) connection */
    bool ch_open[CH_COUNT];
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
    size_t rpc_reply_len;

    /* CH_CONS: the consumer and its deliveries not handled yet. */
    bool cons_active;
    uint64_t cons_epoch;          /* bumped each time the consumer is set up */
    bus_delivery *pend_head, *pend_tail;
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

/* Sleeps ms in slices, returning early (true) when *stop is set. */
static bool bus_sleep(int64_t ms, volatile sig_atomic_t *stop)
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

static void bus_free_pending(gt_bus *bus)
{
    while (bus->pend_head != NULL) {
        bus_delivery *d = bus->pend_head;
        bus->pend_head = d->next;
        free(d->body);
        free(d->reply_to);
        free(d->correlation_id);
        free(d);
    }
    bus->pend_tail = NULL;
}

static void bus_delivery_free(bus_delivery **d)
{
    if (*d == NULL)
        return;
    free((*d)->body);
    free((*d)->reply_to);
    free((*d)->correlation_id);
    free(*d);
    *d = NULL;
}

/* Forgets what a channel had set up (the broker closed it, or the connection went). */
static void bus_channel_reset(gt_bus *bus, amqp_channel_t ch)
{
    bus->ch_open[ch] = false;
    switch (ch) {
    case CH_PUB:
        bus->confirming = false;
        bus->next_tag = 1;
        break;
    case CH_RPC:
        bus->rpc_consuming = false;
        break;
    case CH_CONS:
        bus->cons_active = false;
        bus_free_pending(bus);
        break;
    default:
        break;
    }
}

/* Drops the connection without a goodbye (it is broken or undefined). */
static void bus_drop(gt_bus *bus)
{
    if (bus->conn != NULL) {
        amqp_destroy_connection(bus->conn);
        bus->conn = NULL;
    }
    for (amqp_channel_t ch = 1; ch < CH_COUNT; ch++)
        bus_channel_reset(bus, ch);
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
    for (amqp_channel_t ch = 1; ch < CH_COUNT; ch++)
        bus_channel_reset(bus, ch);
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
static gt_err bus_ensure(gt_bus *bus, int64_t base, int64_t cap, volatile sig_atomic_t *stop,
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

static void bus_on_delivery(gt_bus *bus, amqp_envelope_t *env)
{
    amqp_basic_properties_t *p = &env->message.properties;
    bool has_corr = (p->_flags & AMQP_BASIC_CORRELATION_ID_FLAG) != 0;
    if (env->channel == CH_RPC) {
        /* Replies to calls that already timed out are dropped here. */
        if (bus->rpc_corr == NULL || bus->rpc_done || !has_corr ||
            !bus_bytes_eq(p->correlation_id, bus->rpc_corr))
            return;
        free(bus->rpc_reply);
        bus->rpc_reply = bus_bytes_dup(env->message.body);
        bus->rpc_reply_len = env->message.body.len;
        bus->rpc_done = true;
        return;
    }
    if (env->channel != CH_CONS || !bus->cons_active)
        return;
    bus_delivery *d = gt_xcalloc(1, sizeof *d);
    d->tag = env->delivery_tag;
    d->epoch = bus->cons_epoch;
    d->redelivered = env->redelivered != 0;
    d->body = bus_bytes_dup(env->message.body);
    d->len = env->message.body.len;
    if (p->_flags & AMQP_BASIC_REPLY_TO_FLAG)
        d->reply_to = bus_bytes_dup(p->reply_to);
    if (has_corr)
        d->correlation_id = bus_bytes_dup(p->correlation_id);
    if (bus->pend_tail != NULL)
        bus->pend_tail->next = d;
    else
        bus->pend_head = d;
    bus->pend_tail = d;
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
        /* The broker cancelled a consumer (its queue was deleted): set it up again. */
        if (ch == CH_CONS) {
            bus->cons_active = false;
            gt_warn("amqp %s: the broker cancelled the consumer", bus->host);
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
        if (ch < CH_COUNT)
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
        bus_on_delivery(bus, &env);
        amqp_destroy_envelope(&env);
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
    bus->heartbeat_s = cfg->heartbeat_s <= 0 ? 30 : cfg->heartbeat_s > 3600 ? 3600
                                                                          : (int)cfg->heartbeat_s;
    bus->connect_timeout_ms = cfg->connect_timeout_ms > 0 ? cfg->connect_timeout_ms : 5000;
    bus->attempts = cfg->reconnect_attempts > 0 ? cfg->reconnect_attempts : 5;
    bus->host = gt_xstrdup(bus->hosts.v[0]);
    bus->next_tag = 1;
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
    free(bus->host);
    free(bus->rpc_reply);
    free(bus);
    *busp = NULL;
}

bool gt_bus_connected(const gt_bus *bus)
{
    return bus != NULL && bus->conn != NULL;
}

/* Declares queue on channel ch: durable, quorum or classic. */
static gt_err bus_declare(gt_bus *bus, amqp_channel_t ch, const char *queue, bool quorum,
                          gt_error *err)
{
    amqp_table_entry_t entry = {.key = amqp_cstring_bytes("x-queue-type"),
                                .value = {.kind = AMQP_FIELD_KIND_UTF8,
                                          .value.bytes = amqp_cstring_bytes("quorum")}};
    amqp_table_t args = quorum ? (amqp_table_t){.num_entries = 1, .entries = &entry}
                               : amqp_empty_table;
    char what[300];
    snprintf(what, sizeof what, "declare queue '%s'", queue);
    amqp_queue_declare(bus->conn, ch, amqp_cstring_bytes(queue), 0, 1, 0, 0, args);
    return bus_rpc_result(bus, ch, what, err);
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
     * error (GT_ENOTFOUND), not a silent loss. On a named exchange (events, topics) having
     * no subscriber is normal. */
    bool mandatory = exchange[0] == '\0';
    amqp_basic_properties_t props = {
        ._flags = AMQP_BASIC_DELIVERY_MODE_FLAG,
        .delivery_mode = persistent ? AMQP_DELIVERY_PERSISTENT : AMQP_DELIVERY_NONPERSISTENT,
    };
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
    amqp_bytes_t bytes = {.len = len, .bytes = (void *)body};
    gt_error e;
    gt_err rc = GT_EUNAVAIL;
    for (int pass = 0; pass < 2; pass++) {
        gt_error_clear(&e);
        if ((rc = bus_ready(bus, CH_RPC, &e)) != GT_OK)
            goto done;
        /* mandatory: a queue nobody declared answers at once instead of timing out. */
        int st = amqp_basic_publish(bus->conn, CH_RPC, amqp_empty_bytes, amqp_cstring_bytes(queue),
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

/* Sets up the consumer on CH_CONS: queue declared, prefetch, consume with manual acks. */
static gt_err bus_consume_setup(gt_bus *bus, const char *queue, uint16_t prefetch, gt_error *err)
{
    gt_err rc;
    if (bus->conn == NULL && (rc = bus_connect_pass(bus, err)) != GT_OK)
        return rc;
    if ((rc = bus_channel(bus, CH_CONS, err)) != GT_OK)
        return rc;
    gt_error e;
    gt_error_clear(&e);
    rc = bus_declare(bus, CH_CONS, queue, false, &e);
    if (rc == GT_ECONFLICT && bus->conn != NULL) {
        /* It exists with other arguments (a quorum queue, say): serve it as it is. */
        gt_debug("amqp %s: %s", bus->host, e.message);
        if ((rc = bus_channel(bus, CH_CONS, err)) != GT_OK)
            return rc;
    } else if (rc != GT_OK) {
        return gt_error_set(err, rc, "%s", e.message);
    }
    amqp_basic_qos(bus->conn, CH_CONS, 0, prefetch, 0);
    if ((rc = bus_rpc_result(bus, CH_CONS, "basic.qos", err)) != GT_OK)
        return rc;
    amqp_basic_consume(bus->conn, CH_CONS, amqp_cstring_bytes(queue), amqp_empty_bytes, 0, 0, 0,
                       amqp_empty_table);
    char what[300];
    snprintf(what, sizeof what, "consume queue '%s'", queue);
    if ((rc = bus_rpc_result(bus, CH_CONS, what, err)) != GT_OK)
        return rc;
    bus->cons_active = true;
    bus->cons_epoch++;
    return GT_OK;
}

/* Consumes queue with manual acks until *stop: each delivery goes to fn, whose verdict is
 * sent back (ack, reject, requeue) on the channel it came from. A delivery from an
 * earlier connection is not acked (the broker already requeued it). Reconnects with
 * backoff; GT_EUNAVAIL after the configured attempts fail in a row. */
static gt_err bus_consume(gt_bus *bus, const char *queue, uint16_t prefetch, bus_handler fn,
                          void *arg, volatile sig_atomic_t *stop, gt_error *err)
{
    gt_error last;
    gt_error_clear(&last);
    int failures = 0;
    gt_err rc = GT_OK;
    while (!*stop) {
        if (bus->conn == NULL || !bus->cons_active) {
            if (failures >= bus->attempts) {
                rc = gt_error_set(err, GT_EUNAVAIL, "%s (gave up after %d attempts)", last.message,
                                  failures);
                break;
            }
            int64_t pause = bus_backoff(failures, BUS_SERVE_BACKOFF_MS, BUS_SERVE_BACKOFF_MAX_MS);
            if (failures > 0 && bus_sleep(pause, stop))
                break;
            gt_error_clear(&last);
            rc = bus_consume_setup(bus, queue, prefetch, &last);
            if (rc == GT_EPERM || rc == GT_EINVAL || rc == GT_ENOMEM) {
                gt_error_set(err, rc, "%s", last.message);
                break;
            }
            if (rc != GT_OK) {
                failures++;
                gt_warn("%s (attempt %d of %d)", last.message, failures, bus->attempts);
                continue;
            }
            if (failures > 0)
                gt_info("amqp %s: consuming '%s' again", bus->host, queue);
            failures = 0;
        }
        bus_delivery *d = bus->pend_head;
        if (d == NULL) {
            (void)bus_pump(bus, BUS_POLL_MS, NULL);
            continue;
        }
        bus->pend_head = d->next;
        if (bus->pend_head == NULL)
            bus->pend_tail = NULL;
        d->next = NULL;
        bus_verdict v = fn(bus, arg, d);
        /* fn may have published, and so lost and replaced the connection meanwhile. */
        if (bus->conn != NULL && bus->cons_active && d->epoch == bus->cons_epoch) {
            int st = v == BUS_ACK ? amqp_basic_ack(bus->conn, CH_CONS, d->tag, 0)
                                  : amqp_basic_reject(bus->conn, CH_CONS, d->tag, v == BUS_REQUEUE);
            if (st != AMQP_STATUS_OK)
                (void)bus_lost(bus, amqp_error_string2(st), NULL);
        }
        bus_delivery_free(&d);
    }
    if (bus->conn != NULL && bus->ch_open[CH_CONS]) {
        /* Closing the channel cancels the consumer and requeues what was prefetched. */
        amqp_channel_close(bus->conn, CH_CONS, AMQP_REPLY_SUCCESS);
        if (amqp_get_rpc_reply(bus->conn).reply_type != AMQP_RESPONSE_NORMAL)
            bus_drop(bus);
        else
            bus_channel_reset(bus, CH_CONS);
    }
    return *stop ? GT_OK : rc;
}

typedef struct serve_ctx {
    const char *queue;
    gt_bus_rpc_fn fn;
    void *arg;
} serve_ctx;

static bus_verdict serve_one(gt_bus *bus, void *arg, const bus_delivery *d)
{
    serve_ctx *c = arg;
    if (bus->conn == NULL)
        return BUS_REQUEUE; /* gone meanwhile; the broker requeued it already */
    if (d->reply_to == NULL || d->reply_to[0] == '\0') {
        gt_warn("amqp %s: '%s': request without reply-to rejected", bus->host, c->queue);
        return BUS_REJECT;
    }
    char *reply = NULL;
    size_t reply_len = 0;
    gt_err rc = c->fn(c->arg, d->body, d->len, &reply, &reply_len);
    if (rc != GT_OK) {
        gt_warn("amqp %s: '%s': request %s rejected: %s", bus->host, c->queue,
                d->correlation_id ? d->correlation_id : "(no correlation id)", gt_strerror(rc));
        free(reply);
        return BUS_REJECT;
    }
    amqp_basic_properties_t props = {
        ._flags = AMQP_BASIC_DELIVERY_MODE_FLAG,
        .delivery_mode = AMQP_DELIVERY_NONPERSISTENT,
    };
    if (d->correlation_id != NULL) {
        props._flags |= AMQP_BASIC_CORRELATION_ID_FLAG;
        props.correlation_id = amqp_cstring_bytes(d->correlation_id);
    }
    if (bus->conn == NULL || !bus->cons_active || d->epoch != bus->cons_epoch) {
        free(reply); /* the handler's own bus calls lost the channel: it comes again */
        return BUS_REQUEUE;
    }
    amqp_bytes_t bytes = {.len = reply_len, .bytes = reply};
    /* No confirm for replies: the caller waiting for it is the confirmation, and a caller
     * that is gone makes the broker drop the reply, which is what we want. */
    int st = amqp_basic_publish(bus->conn, CH_CONS, amqp_empty_bytes,
                                amqp_cstring_bytes(d->reply_to), 0, 0, &props, bytes);
    if (st != AMQP_STATUS_OK)
        (void)bus_lost(bus, amqp_error_string2(st), NULL); /* the request will come again */
    free(reply);
    return BUS_ACK;
}

gt_err gt_bus_serve_rpc(gt_bus *bus, const char *queue, gt_bus_rpc_fn fn, void *arg,
                        volatile sig_atomic_t *stop, gt_error *err)
{
    if (queue == NULL || queue[0] == '\0' || strlen(queue) > 255 || fn == NULL || stop == NULL)
        return gt_error_set(err, GT_EINVAL, "amqp: serve_rpc needs a queue (1-255 bytes), "
                            "a handler and a stop flag");
    serve_ctx c = {.queue = queue, .fn = fn, .arg = arg};
    /* Prefetch 1: a slow request (a password hash) does not hold others back that an idle
     * server could answer. */
    return bus_consume(bus, queue, 1, serve_one, &c, stop, err);
}
