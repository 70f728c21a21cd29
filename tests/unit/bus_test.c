/* The AMQP bus against a real RabbitMQ: GANTRY_TEST_AMQP=host:port names a test node
 * (scripts/testenv/rabbitmq.py starts one; guest/guest on loopback). Without it every
 * test says SKIPPED. When GANTRY_TEST_AMQP_RESTART_CMD is set (the harness's command that
 * restarts the node and returns once it is ready again) the last test restarts the broker
 * under a serving server and a client.
 *
 * Queue names carry a fresh id so runs against a shared node never meet. Checks that the
 * bus cannot make (message counts, delivery mode) use librabbitmq directly. Threads
 * record what they saw; only the main thread asserts (cmocka is not thread-safe). */
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <unistd.h>

#include <cmocka.h>

#include <amqp.h>
#include <amqp_tcp_socket.h>

#include "bus.h"
#include "util.h"

/* Generous bounds: a loaded two-core machine under ASan. */
#define SLACK_MS 3000

static const char *amqp_addr(void)
{
    const char *a = getenv("GANTRY_TEST_AMQP");
    return a && a[0] ? a : NULL;
}

#define NEED_BROKER()                                                                        \
    do {                                                                                     \
        if (amqp_addr() == NULL) {                                                           \
            printf("SKIPPED: no RabbitMQ test server (GANTRY_TEST_AMQP unset; run under "    \
                   "scripts/test-servers)\n");                                               \
            skip();                                                                          \
            return;                                                                          \
        }                                                                                    \
    } while (0)

typedef struct test_cfg {
    char *hosts[4];
    gt_bus_config cfg;
} test_cfg;

static void cfg_init(test_cfg *t, const char *host1, const char *host2, const char *password)
{
    memset(t, 0, sizeof *t);
    t->hosts[0] = (char *)host1;
    t->hosts[1] = (char *)host2;
    t->cfg.hosts = t->hosts;
    t->cfg.vhost = "/";
    t->cfg.username = "guest";
    t->cfg.password = password;
    t->cfg.connect_timeout_ms = 2000;
}

static gt_bus *connect_ok(void)
{
    test_cfg t;
    cfg_init(&t, amqp_addr(), NULL, "guest");
    gt_error err;
    gt_error_clear(&err);
    gt_bus *bus = gt_bus_connect(&t.cfg, &err);
    if (bus == NULL)
        print_error("connect: %s\n", err.message);
    assert_non_null(bus);
    assert_true(gt_bus_connected(bus));
    return bus;
}

/* A queue name of our own: "gt-test-<what>-<id>"; caller frees. */
static char *qname(const char *what)
{
    char *id = gt_id_new();
    char *q = gt_xasprintf("gt-test-%s-%s", what, id);
    free(id);
    return q;
}

/* A TCP port on 127.0.0.1 nothing listens on. */
static int closed_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t n = sizeof a;
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &n), 0);
    close(fd);
    return ntohs(a.sin_port);
}

/* --- librabbitmq directly, for checks ------------------------------------------------ */

static amqp_connection_state_t raw_connect(void)
{
    char *host = gt_xstrdup(amqp_addr());
    char *colon = strrchr(host, ':');
    assert_non_null(colon);
    *colon = '\0';
    amqp_connection_state_t c = amqp_new_connection();
    amqp_socket_t *s = amqp_tcp_socket_new(c);
    assert_int_equal(amqp_socket_open(s, host, atoi(colon + 1)), AMQP_STATUS_OK);
    free(host);
    amqp_rpc_reply_t r = amqp_login(c, "/", 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, "guest", "guest");
    assert_int_equal(r.reply_type, AMQP_RESPONSE_NORMAL);
    amqp_channel_open(c, 1);
    assert_int_equal(amqp_get_rpc_reply(c).reply_type, AMQP_RESPONSE_NORMAL);
    return c;
}

static void raw_close(amqp_connection_state_t c)
{
    amqp_channel_close(c, 1, AMQP_REPLY_SUCCESS);
    amqp_connection_close(c, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(c);
}

/* Messages ready in queue (passive declare); -1 when it does not exist. */
static long raw_count(const char *queue)
{
    amqp_connection_state_t c = raw_connect();
    amqp_queue_declare_ok_t *ok =
        amqp_queue_declare(c, 1, amqp_cstring_bytes(queue), 1, 0, 0, 0, amqp_empty_table);
    long n = ok ? (long)ok->message_count : -1;
    if (ok != NULL)
        raw_close(c);
    else
        amqp_destroy_connection(c);
    return n;
}

static void raw_delete(const char *queue)
{
    amqp_connection_state_t c = raw_connect();
    amqp_queue_delete(c, 1, amqp_cstring_bytes(queue), 0, 0);
    if (amqp_get_rpc_reply(c).reply_type == AMQP_RESPONSE_NORMAL)
        raw_close(c);
    else
        amqp_destroy_connection(c);
}

/* basic.get one message: its delivery mode and body (caller frees); -1 when empty. */
static int raw_get(const char *queue, char **body)
{
    amqp_connection_state_t c = raw_connect();
    amqp_rpc_reply_t r = amqp_basic_get(c, 1, amqp_cstring_bytes(queue), 1);
    assert_int_equal(r.reply_type, AMQP_RESPONSE_NORMAL);
    int mode = -1;
    *body = NULL;
    if (r.reply.id == AMQP_BASIC_GET_OK_METHOD) {
        amqp_message_t m;
        assert_int_equal(amqp_read_message(c, 1, &m, 0).reply_type, AMQP_RESPONSE_NORMAL);
        bool has_mode = (m.properties._flags & AMQP_BASIC_DELIVERY_MODE_FLAG) != 0;
        mode = has_mode ? m.properties.delivery_mode : 0;
        *body = gt_xstrndup(m.body.bytes, m.body.len);
        amqp_destroy_message(&m);
    }
    raw_close(c);
    return mode;
}

/* n requests straight onto queue, with reply_to (NULL: none). */
static void raw_publish(const char *queue, const char *body, const char *reply_to, int n)
{
    amqp_connection_state_t c = raw_connect();
    amqp_basic_properties_t props = {0};
    if (reply_to != NULL) {
        props._flags = AMQP_BASIC_REPLY_TO_FLAG;
        props.reply_to = amqp_cstring_bytes(reply_to);
    }
    for (int i = 0; i < n; i++)
        assert_int_equal(amqp_basic_publish(c, 1, amqp_empty_bytes, amqp_cstring_bytes(queue), 0,
                                            0, &props, amqp_cstring_bytes(body)),
                         AMQP_STATUS_OK);
    raw_close(c);
}

/* --- an RPC server in a thread -------------------------------------------------------- */

typedef struct server {
    const char *queue;
    const char *cluster; /* when set, the server's bus routes this cluster's queues */
    const char *audit;   /* when set, the handler publishes each body there first */
    gt_bus *bus;         /* the server's own bus (the handler publishes on it) */
    pthread_t thread;
    atomic_int stop;
    atomic_int calls;
    atomic_int failed_calls;
    gt_err rc;
    gt_error err;
    int64_t stopped_ms;  /* when serve_rpc returned */
} server;

/* Answers "echo:<body>"; a body starting with "fail" is an error; "whoami" answers
 * "user:<the caller's broker user>". */
static gt_err echo_fn(void *arg, const char *user_id, const char *body, size_t len, char **reply,
                      size_t *reply_len)
{
    server *s = arg;
    atomic_fetch_add(&s->calls, 1);
    if (strlen(body) != len)
        return GT_EINTERNAL; /* the body must come NUL-terminated */
    if (strcmp(body, "whoami") == 0) {
        *reply = gt_xasprintf("user:%s", user_id ? user_id : "(none)");
        *reply_len = strlen(*reply);
        return GT_OK;
    }
    if (strcmp(body, "slow") == 0)
        usleep(50 * 1000);
    if (strncmp(body, "fail", 4) == 0) {
        atomic_fetch_add(&s->failed_calls, 1);
        return GT_EINVAL;
    }
    /* As a runner will: a confirmed publish on the serving bus before answering. */
    if (s->audit != NULL && gt_bus_publish(s->bus, "", s->audit, body, len, true, NULL) != GT_OK)
        return GT_EUNAVAIL;
    *reply = gt_xasprintf("echo:%s", body);
    *reply_len = strlen(*reply);
    return GT_OK;
}

static void *server_main(void *arg)
{
    server *s = arg;
    test_cfg t;
    cfg_init(&t, amqp_addr(), NULL, "guest");
    t.cfg.cluster_id = s->cluster;
    gt_error_clear(&s->err);
    gt_bus *bus = gt_bus_connect(&t.cfg, &s->err);
    if (bus == NULL) {
        s->rc = s->err.code;
        return NULL;
    }
    s->bus = bus;
    s->rc = gt_bus_serve_rpc(bus, s->queue, echo_fn, s, &s->stop, &s->err);
    s->stopped_ms = gt_mono_ms();
    gt_bus_free(&bus);
    return NULL;
}

static void server_start_audit(server *s, const char *queue, const char *audit)
{
    memset(s, 0, sizeof *s);
    s->queue = queue;
    s->audit = audit;
    atomic_init(&s->calls, 0);
    atomic_init(&s->failed_calls, 0);
    assert_int_equal(pthread_create(&s->thread, NULL, server_main, s), 0);
}

static void server_start(server *s, const char *queue)
{
    server_start_audit(s, queue, NULL);
}

/* Stops the server; returns how long serve_rpc took to notice. */
static int64_t server_stop(server *s)
{
    int64_t t0 = gt_mono_ms();
    s->stop = 1;
    pthread_join(s->thread, NULL);
    if (s->rc != GT_OK)
        print_error("server: %s\n", s->err.message);
    assert_int_equal(s->rc, GT_OK);
    return s->stopped_ms - t0;
}

/* Declares queue (classic) so requests wait there until a server consumes. */
static void declare(gt_bus *bus, const char *queue, bool quorum)
{
    gt_error err;
    gt_error_clear(&err);
    gt_err rc = gt_bus_declare_queue(bus, queue, quorum, &err);
    if (rc != GT_OK)
        print_error("declare %s: %s\n", queue, err.message);
    assert_int_equal(rc, GT_OK);
}

static void rpc_ok(gt_bus *bus, const char *queue, const char *body, int64_t timeout_ms)
{
    char *reply = NULL;
    size_t len = 0;
    gt_error err;
    gt_error_clear(&err);
    gt_err rc = gt_bus_rpc(bus, queue, body, strlen(body), timeout_ms, &reply, &len, &err);
    if (rc != GT_OK)
        print_error("rpc: %s\n", err.message);
    assert_int_equal(rc, GT_OK);
    char *want = gt_xasprintf("echo:%s", body);
    assert_string_equal(reply, want);
    assert_int_equal(len, strlen(want));
    free(want);
    free(reply);
}

/* --- connecting ------------------------------------------------------------------------ */

static void test_connect_refused_names_host(void **state)
{
    (void)state;
    char host[64];
    snprintf(host, sizeof host, "127.0.0.1:%d", closed_port());
    test_cfg t;
    cfg_init(&t, host, NULL, "guest");
    gt_error err;
    gt_error_clear(&err);
    int64_t t0 = gt_mono_ms();
    gt_bus *bus = gt_bus_connect(&t.cfg, &err);
    int64_t took = gt_mono_ms() - t0;
    assert_null(bus);
    assert_int_equal(err.code, GT_EUNAVAIL);
    printf("  refused: %s (%lld ms)\n", err.message, (long long)took);
    assert_non_null(strstr(err.message, host));
    assert_true(took < t.cfg.connect_timeout_ms + SLACK_MS);
}

/* A peer that accepts TCP but never speaks AMQP: the handshake timeout ends it. */
static void test_connect_silent_peer_times_out(void **state)
{
    (void)state;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t n = sizeof a;
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(fd, 4), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &n), 0);
    char host[64];
    snprintf(host, sizeof host, "127.0.0.1:%d", ntohs(a.sin_port));
    test_cfg t;
    cfg_init(&t, host, NULL, "guest");
    t.cfg.connect_timeout_ms = 500;
    gt_error err;
    gt_error_clear(&err);
    int64_t t0 = gt_mono_ms();
    gt_bus *bus = gt_bus_connect(&t.cfg, &err);
    int64_t took = gt_mono_ms() - t0;
    close(fd);
    assert_null(bus);
    assert_int_equal(err.code, GT_EUNAVAIL);
    printf("  silent peer: %s (%lld ms)\n", err.message, (long long)took);
    assert_non_null(strstr(err.message, host));
    assert_true(took < 500 + SLACK_MS);
}

static void test_connect_wrong_password(void **state)
{
    (void)state;
    NEED_BROKER();
    const char *secret = "not-the-password-7f3a";
    test_cfg t;
    cfg_init(&t, amqp_addr(), NULL, secret);
    gt_error err;
    gt_error_clear(&err);
    gt_bus *bus = gt_bus_connect(&t.cfg, &err);
    assert_null(bus);
    printf("  wrong password: %s\n", err.message);
    assert_int_equal(err.code, GT_EPERM);
    assert_non_null(strstr(err.message, amqp_addr()));
    assert_non_null(strstr(err.message, "ACCESS_REFUSED"));
    assert_null(strstr(err.message, secret));
}

static void test_connect_fails_over_to_next_host(void **state)
{
    (void)state;
    NEED_BROKER();
    char bad[64];
    snprintf(bad, sizeof bad, "127.0.0.1:%d", closed_port());
    test_cfg t;
    cfg_init(&t, bad, amqp_addr(), "guest");
    gt_error err;
    gt_error_clear(&err);
    gt_bus *bus = gt_bus_connect(&t.cfg, &err);
    assert_non_null(bus);
    assert_true(gt_bus_connected(bus));
    gt_bus_free(&bus);
    assert_null(bus);
    gt_bus_free(&bus); /* NULL is fine */
}

static void test_config_errors(void **state)
{
    (void)state;
    gt_error err;
    gt_error_clear(&err);
    char *none[] = {NULL};
    gt_bus_config cfg = {.hosts = none};
    assert_null(gt_bus_connect(&cfg, &err));
    assert_int_equal(err.code, GT_EINVAL);
    char *bad[] = {"127.0.0.1:99999", NULL};
    cfg.hosts = bad;
    gt_error_clear(&err);
    assert_null(gt_bus_connect(&cfg, &err));
    assert_int_equal(err.code, GT_EINVAL);
    assert_false(gt_bus_connected(NULL));
}

/* --- queues and publishing -------------------------------------------------------------- */

static void test_declare_classic_and_quorum(void **state)
{
    (void)state;
    NEED_BROKER();
    gt_bus *bus = connect_ok();
    char *classic = qname("classic"), *quorum = qname("quorum");
    declare(bus, classic, false);
    declare(bus, classic, false); /* idempotent */
    declare(bus, quorum, true);
    declare(bus, quorum, true);
    assert_int_equal(raw_count(classic), 0);
    assert_int_equal(raw_count(quorum), 0);

    /* The same name with other arguments is a conflict, named; the bus goes on working. */
    gt_error err;
    gt_error_clear(&err);
    assert_int_equal(gt_bus_declare_queue(bus, classic, true, &err), GT_ECONFLICT);
    printf("  redeclare: %s\n", err.message);
    assert_non_null(strstr(err.message, classic));
    assert_true(gt_bus_connected(bus));
    assert_int_equal(gt_bus_publish(bus, "", quorum, "x", 1, true, NULL), GT_OK);
    assert_int_equal(raw_count(quorum), 1);

    gt_error_clear(&err);
    assert_int_equal(gt_bus_declare_queue(bus, "", false, &err), GT_EINVAL);
    raw_delete(classic);
    raw_delete(quorum);
    free(classic);
    free(quorum);
    gt_bus_free(&bus);
}

static void publish_many(gt_bus *bus, const char *queue, int n, const char *label)
{
    char body[128];
    int64_t t0 = gt_mono_ms();
    for (int i = 0; i < n; i++) {
        int len = snprintf(body, sizeof body, "{\"n\":%d,\"pad\":\"%040d\"}", i, i);
        gt_error err;
        gt_error_clear(&err);
        gt_err rc = gt_bus_publish(bus, "", queue, body, (size_t)len, true, &err);
        if (rc != GT_OK)
            print_error("publish %d: %s\n", i, err.message);
        assert_int_equal(rc, GT_OK);
    }
    int64_t ms = gt_mono_ms() - t0;
    printf("  %d confirmed persistent publishes to a %s queue in %lld ms: %.0f/s\n", n, label,
           (long long)ms, ms > 0 ? n * 1000.0 / (double)ms : 0.0);
}

static void test_publish_1000_persistent_confirmed(void **state)
{
    (void)state;
    NEED_BROKER();
    gt_bus *bus = connect_ok();
    char *quorum = qname("pubq"), *classic = qname("pubc");
    declare(bus, quorum, true);
    declare(bus, classic, false);
    publish_many(bus, quorum, 1000, "quorum");
    publish_many(bus, classic, 1000, "classic");
    /* Confirmed means there: every one is in the queue already, persistent. */
    assert_int_equal(raw_count(quorum), 1000);
    assert_int_equal(raw_count(classic), 1000);
    char *body = NULL;
    assert_int_equal(raw_get(quorum, &body), AMQP_DELIVERY_PERSISTENT);
    assert_string_equal(body, "{\"n\":0,\"pad\":\"0000000000000000000000000000000000000000\"}");
    free(body);
    /* And a transient one is transient. */
    raw_delete(classic);
    declare(bus, classic, false);
    assert_int_equal(gt_bus_publish(bus, "", classic, "t", 1, false, NULL), GT_OK);
    assert_int_equal(raw_get(classic, &body), AMQP_DELIVERY_NONPERSISTENT);
    free(body);
    raw_delete(quorum);
    raw_delete(classic);
    free(quorum);
    free(classic);
    gt_bus_free(&bus);
}

static void test_publish_unroutable_and_missing_exchange(void **state)
{
    (void)state;
    NEED_BROKER();
    gt_bus *bus = connect_ok();
    char *nowhere = qname("nowhere");
    gt_error err;
    gt_error_clear(&err);
    /* The default exchange with no such queue: returned, not silently dropped. */
    assert_int_equal(gt_bus_publish(bus, "", nowhere, "x", 1, true, &err), GT_ENOTFOUND);
    printf("  unroutable: %s\n", err.message);
    assert_non_null(strstr(err.message, nowhere));
    /* A named exchange that does not exist closes the channel (404); the next call reopens. */
    gt_error_clear(&err);
    assert_int_equal(gt_bus_publish(bus, "gt-test-no-such-exchange", "k", "x", 1, true, &err),
                     GT_ENOTFOUND);
    printf("  no exchange: %s\n", err.message);
    assert_non_null(strstr(err.message, "NOT_FOUND"));
    assert_true(gt_bus_connected(bus));
    /* amq.topic exists and has no bindings: accepted (events may have no subscriber). */
    assert_int_equal(gt_bus_publish(bus, "amq.topic", "gantry.test", "x", 1, false, NULL), GT_OK);
    char *q = qname("after");
    declare(bus, q, false);
    assert_int_equal(gt_bus_publish(bus, "", q, "", 0, true, NULL), GT_OK); /* empty body */
    assert_int_equal(raw_count(q), 1);
    raw_delete(q);
    free(q);
    free(nowhere);
    gt_bus_free(&bus);
}

/* --- RPC ------------------------------------------------------------------------------ */

static void test_rpc_round_trip(void **state)
{
    (void)state;
    NEED_BROKER();
    char *q = qname("rpc");
    gt_bus *bus = connect_ok();
    declare(bus, q, false);
    server s;
    server_start(&s, q);
    rpc_ok(bus, q, "hello", 10000);
    rpc_ok(bus, q, "", 10000); /* empty body, empty-ish reply */
    /* Publishing with confirms and calling on the same bus do not disturb each other. */
    char *work = qname("work");
    declare(bus, work, true);
    for (int i = 0; i < 20; i++) {
        assert_int_equal(gt_bus_publish(bus, "", work, "job", 3, true, NULL), GT_OK);
        char body[32];
        snprintf(body, sizeof body, "call-%d", i);
        rpc_ok(bus, q, body, 10000);
    }
    assert_int_equal(raw_count(work), 20);

    /* Round trips per second, one caller, one server. */
    int n = 500;
    int64_t t0 = gt_mono_ms();
    for (int i = 0; i < n; i++)
        rpc_ok(bus, q, "bench", 10000);
    int64_t ms = gt_mono_ms() - t0;
    printf("  %d sequential RPC round trips in %lld ms: %.0f/s\n", n, (long long)ms,
           ms > 0 ? n * 1000.0 / (double)ms : 0.0);

    int64_t stop_ms = server_stop(&s);
    printf("  server stopped %lld ms after the flag\n", (long long)stop_ms);
    assert_true(stop_ms < 200 + SLACK_MS);
    assert_int_equal(atomic_load(&s.calls), 2 + 20 + n);
    raw_delete(q);
    raw_delete(work);
    free(q);
    free(work);
    gt_bus_free(&bus);
}

static void test_rpc_timeout_without_server(void **state)
{
    (void)state;
    NEED_BROKER();
    gt_bus *bus = connect_ok();
    char *q = qname("idle");
    declare(bus, q, false);
    char *reply = (char *)"untouched";
    size_t len = 7;
    gt_error err;
    gt_error_clear(&err);
    int64_t t0 = gt_mono_ms();
    assert_int_equal(gt_bus_rpc(bus, q, "x", 1, 500, &reply, &len, &err), GT_ETIMEDOUT);
    int64_t took = gt_mono_ms() - t0;
    printf("  timeout: %s (%lld ms)\n", err.message, (long long)took);
    assert_null(reply);
    assert_int_equal(len, 0);
    assert_true(took >= 450 && took < 500 + SLACK_MS);
    assert_true(gt_bus_connected(bus));
    /* The request expired with the caller's patience: no server will find it later. */
    usleep(300 * 1000);
    assert_int_equal(raw_count(q), 0);

    /* A queue nobody declared answers at once. */
    char *none = qname("undeclared");
    gt_error_clear(&err);
    t0 = gt_mono_ms();
    assert_int_equal(gt_bus_rpc(bus, none, "x", 1, 5000, &reply, &len, &err), GT_EUNAVAIL);
    took = gt_mono_ms() - t0;
    printf("  no queue: %s (%lld ms)\n", err.message, (long long)took);
    assert_true(took < 4000);

    /* A late server answers the next call; the stale reply of the first one is ignored. */
    server s;
    server_start(&s, q);
    rpc_ok(bus, q, "late", 10000);
    server_stop(&s);
    gt_error_clear(&err);
    assert_int_equal(gt_bus_rpc(bus, q, "x", 1, 0, &reply, &len, &err), GT_EINVAL);
    raw_delete(q);
    free(q);
    free(none);
    gt_bus_free(&bus);
}

typedef struct client {
    pthread_t thread;
    const char *queue;
    int id, calls, ok, wrong;
    gt_error err;
} client;

static void *client_main(void *arg)
{
    client *c = arg;
    test_cfg t;
    cfg_init(&t, amqp_addr(), NULL, "guest");
    gt_error_clear(&c->err);
    gt_bus *bus = gt_bus_connect(&t.cfg, &c->err);
    if (bus == NULL)
        return NULL;
    for (int i = 0; i < c->calls; i++) {
        char body[64], want[80];
        snprintf(body, sizeof body, "client-%d-call-%d", c->id, i);
        snprintf(want, sizeof want, "echo:%s", body);
        char *reply = NULL;
        size_t len = 0;
        gt_error_clear(&c->err);
        if (gt_bus_rpc(bus, c->queue, body, strlen(body), 20000, &reply, &len, &c->err) != GT_OK)
            break;
        if (strcmp(reply, want) == 0 && len == strlen(want))
            c->ok++;
        else
            c->wrong++;
        free(reply);
    }
    gt_bus_free(&bus);
    return NULL;
}

static void test_rpc_many_concurrent_clients(void **state)
{
    (void)state;
    NEED_BROKER();
    enum { CLIENTS = 8, CALLS = 50, SERVERS = 3 };
    char *q = qname("many");
    gt_bus *bus = connect_ok();
    declare(bus, q, false);
    server s[SERVERS];
    for (int i = 0; i < SERVERS; i++)
        server_start(&s[i], q);
    client c[CLIENTS];
    int64_t t0 = gt_mono_ms();
    for (int i = 0; i < CLIENTS; i++) {
        c[i] = (client){.queue = q, .id = i, .calls = CALLS};
        assert_int_equal(pthread_create(&c[i].thread, NULL, client_main, &c[i]), 0);
    }
    for (int i = 0; i < CLIENTS; i++)
        pthread_join(c[i].thread, NULL);
    int64_t ms = gt_mono_ms() - t0;
    int served = 0;
    for (int i = 0; i < SERVERS; i++) {
        server_stop(&s[i]);
        served += atomic_load(&s[i].calls);
    }
    printf("  %d clients x %d calls over %d servers in %lld ms: %.0f round trips/s\n", CLIENTS,
           CALLS, SERVERS, (long long)ms, ms > 0 ? CLIENTS * CALLS * 1000.0 / (double)ms : 0.0);
    for (int i = 0; i < CLIENTS; i++) {
        if (c[i].ok != CALLS)
            print_error("client %d: %d ok, %d wrong: %s\n", i, c[i].ok, c[i].wrong,
                        c[i].err.message);
        assert_int_equal(c[i].ok, CALLS);
        assert_int_equal(c[i].wrong, 0);
    }
    assert_int_equal(served, CLIENTS * CALLS);
    raw_delete(q);
    free(q);
    gt_bus_free(&bus);
}

/* A handler that publishes (with confirms) on the bus it is served from, as the runner
 * will publish a result before acking: the connection's channels do not get in each
 * other's way. */
static void test_handler_publishes_on_serving_bus(void **state)
{
    (void)state;
    NEED_BROKER();
    char *q = qname("audited"), *audit = qname("audit");
    gt_bus *bus = connect_ok();
    declare(bus, q, false);
    declare(bus, audit, true);
    server s;
    server_start_audit(&s, q, audit);
    for (int i = 0; i < 50; i++) {
        char body[32];
        snprintf(body, sizeof body, "audited-%d", i);
        rpc_ok(bus, q, body, 10000);
    }
    server_stop(&s);
    assert_int_equal(atomic_load(&s.calls), 50);
    assert_int_equal(raw_count(audit), 50);
    char *body = NULL;
    assert_int_equal(raw_get(audit, &body), AMQP_DELIVERY_PERSISTENT);
    assert_string_equal(body, "audited-0");
    free(body);
    raw_delete(q);
    raw_delete(audit);
    free(q);
    free(audit);
    gt_bus_free(&bus);
}

static void test_serve_stops_on_flag(void **state)
{
    (void)state;
    NEED_BROKER();
    char *q = qname("stop");
    server s;
    server_start(&s, q); /* serve_rpc declares the queue itself */
    for (int i = 0; i < 100 && raw_count(q) < 0; i++)
        usleep(100 * 1000);
    usleep(300 * 1000); /* idle in its consume loop */
    int64_t ms = server_stop(&s);
    printf("  idle server stopped %lld ms after the flag\n", (long long)ms);
    assert_true(ms < 200 + SLACK_MS);
    assert_int_equal(raw_count(q), 0); /* it exists: serve_rpc declared it */
    /* A flag already set: returns at once. */
    gt_bus *bus = connect_ok();
    atomic_int stop = 1;
    assert_int_equal(gt_bus_serve_rpc(bus, q, echo_fn, NULL, &stop, NULL), GT_OK);
    assert_int_equal(gt_bus_serve_rpc(bus, q, NULL, NULL, &stop, NULL), GT_EINVAL);
    raw_delete(q);
    free(q);
    gt_bus_free(&bus);
}

static void test_handler_error_and_malformed_rejected(void **state)
{
    (void)state;
    NEED_BROKER();
    char *q = qname("reject");
    gt_bus *bus = connect_ok();
    declare(bus, q, false);
    server s;
    server_start(&s, q);
    rpc_ok(bus, q, "warm-up", 10000); /* the server consumes now */
    char *reply = NULL;
    size_t len = 0;
    gt_error err;
    gt_error_clear(&err);
    /* The handler fails: no answer (the caller times out) and no redelivery. */
    assert_int_equal(gt_bus_rpc(bus, q, "fail-1", 6, 800, &reply, &len, &err), GT_ETIMEDOUT);
    /* No reply-to: rejected without calling the handler. */
    raw_publish(q, "no-reply-to", NULL, 1);
    rpc_ok(bus, q, "after", 10000); /* the server is still there */
    usleep(300 * 1000);
    server_stop(&s);
    assert_int_equal(atomic_load(&s.failed_calls), 1);
    assert_int_equal(atomic_load(&s.calls), 3); /* warm-up, fail-1 once (not requeued), after */
    assert_int_equal(raw_count(q), 0);          /* nothing requeued */
    raw_delete(q);
    free(q);
    gt_bus_free(&bus);
}

/* A server stopped in the middle of a backlog leaves the rest ready in the queue: every
 * request is either answered or back in the queue, none held unacked. */
static void test_stop_mid_backlog_leaves_rest_queued(void **state)
{
    (void)state;
    NEED_BROKER();
    char *q = qname("backlog"), *replies = qname("replies");
    gt_bus *bus = connect_ok();
    declare(bus, q, false);
    declare(bus, replies, false);
    raw_publish(q, "slow", replies, 40);
    server s;
    server_start(&s, q);
    for (int i = 0; i < 400 && atomic_load(&s.calls) < 2; i++)
        usleep(25 * 1000);
    server_stop(&s);
    int calls = atomic_load(&s.calls);
    printf("  answered %d of 40 before the stop\n", calls);
    assert_true(calls > 0 && calls < 40);
    assert_int_equal(raw_count(replies), calls);
    assert_int_equal(raw_count(q), 40 - calls);
    raw_delete(q);
    raw_delete(replies);
    free(q);
    free(replies);
    gt_bus_free(&bus);
}

/* The broker drops a connection that missed its heartbeats while the thread was idle;
 * the next call notices before writing and reconnects, without an error. */
static void test_idle_connection_replaced(void **state)
{
    (void)state;
    NEED_BROKER();
    test_cfg t;
    cfg_init(&t, amqp_addr(), NULL, "guest");
    t.cfg.heartbeat_s = 1;
    gt_error err;
    gt_error_clear(&err);
    gt_bus *bus = gt_bus_connect(&t.cfg, &err);
    assert_non_null(bus);
    char *q = qname("idle-hb");
    declare(bus, q, true);
    sleep(4); /* > 2 heartbeats without a word from us */
    gt_error_clear(&err);
    gt_err rc = gt_bus_publish(bus, "", q, "x", 1, true, &err);
    if (rc != GT_OK)
        print_error("publish after idle: %s\n", err.message);
    assert_int_equal(rc, GT_OK);
    assert_int_equal(raw_count(q), 1);
    raw_delete(q);
    free(q);
    gt_bus_free(&bus);
}

/* --- work queues and consumers ------------------------------------------------------------ */

/* Generous: a loaded two-core machine under ASan, a quorum queue behind it. */
#define WAIT_MS 30000

static gt_bus *connect_hb(int64_t heartbeat_s, int attempts)
{
    test_cfg t;
    cfg_init(&t, amqp_addr(), NULL, "guest");
    t.cfg.heartbeat_s = heartbeat_s;
    t.cfg.reconnect_attempts = attempts;
    gt_error err;
    gt_error_clear(&err);
    gt_bus *bus = gt_bus_connect(&t.cfg, &err);
    if (bus == NULL)
        print_error("connect: %s\n", err.message);
    assert_non_null(bus);
    return bus;
}

static void work_queue(gt_bus *bus, const char *queue)
{
    gt_error err;
    gt_error_clear(&err);
    gt_err rc = gt_bus_declare_work_queue(bus, queue, &err);
    if (rc != GT_OK)
        print_error("declare work queue %s: %s\n", queue, err.message);
    assert_int_equal(rc, GT_OK);
}

static void work_queue_delete(const char *queue)
{
    char *dead = gt_xasprintf("%s.dead", queue);
    raw_delete(queue);
    raw_delete(dead);
    free(dead);
}

static gt_bus_consumer *consume(gt_bus *bus, const char *queue, int prefetch)
{
    gt_error err;
    gt_error_clear(&err);
    gt_bus_consumer *c = gt_bus_consume_start(bus, queue, prefetch, &err);
    if (c == NULL)
        print_error("consume %s: %s\n", queue, err.message);
    assert_non_null(c);
    assert_true(gt_bus_consuming(c));
    return c;
}

/* The next delivery, waiting up to WAIT_MS in short calls (as the runner will). */
static void next_ok(gt_bus_consumer *c, gt_bus_delivery *d)
{
    int64_t end = gt_mono_ms() + WAIT_MS;
    gt_error err;
    gt_err rc;
    do {
        gt_error_clear(&err);
        rc = gt_bus_consume_next(c, 200, d, &err);
    } while (rc == GT_ETIMEDOUT && gt_mono_ms() < end);
    if (rc != GT_OK)
        print_error("consume_next: %s\n", err.message);
    assert_int_equal(rc, GT_OK);
    assert_non_null(d->body);
    assert_int_equal(strlen(d->body), d->len); /* the test bodies hold no NUL */
    assert_true(d->generation != 0);
}

/* Nothing arrives within ms (calls of 200 ms). */
static void next_none(gt_bus_consumer *c, int64_t ms)
{
    int64_t end = gt_mono_ms() + ms;
    while (gt_mono_ms() < end) {
        gt_bus_delivery d;
        gt_err rc = gt_bus_consume_next(c, 200, &d, NULL);
        if (rc == GT_OK)
            print_error("unexpected delivery: %s\n", d.body);
        assert_int_equal(rc, GT_ETIMEDOUT);
        assert_null(d.body);
    }
}

static void ack_ok(gt_bus_consumer *c, const gt_bus_delivery *d)
{
    gt_error err;
    gt_error_clear(&err);
    gt_err rc = gt_bus_ack(c, d, &err);
    if (rc != GT_OK)
        print_error("ack: %s\n", err.message);
    assert_int_equal(rc, GT_OK);
}

static void publish_jobs(gt_bus *bus, const char *queue, int from, int n)
{
    for (int i = from; i < from + n; i++) {
        char body[32];
        int len = snprintf(body, sizeof body, "job-%d", i);
        gt_error err;
        gt_error_clear(&err);
        gt_err rc = gt_bus_publish(bus, "", queue, body, (size_t)len, true, &err);
        if (rc != GT_OK)
            print_error("publish %s: %s\n", body, err.message);
        assert_int_equal(rc, GT_OK);
    }
}

static int job_number(const gt_bus_delivery *d)
{
    int n = -1;
    assert_int_equal(sscanf(d->body, "job-%d", &n), 1);
    return n;
}

/* Waits until queue holds n ready messages (a quorum queue applies returns
 * asynchronously), then checks it. */
static void count_becomes(const char *queue, long n)
{
    int64_t end = gt_mono_ms() + WAIT_MS;
    long got;
    while ((got = raw_count(queue)) != n && gt_mono_ms() < end)
        usleep(100 * 1000);
    assert_int_equal(got, n);
}

/* A message with properties, straight onto queue. */
static void raw_publish_props(const char *queue, const void *body, size_t len,
                              const char *message_id)
{
    amqp_connection_state_t c = raw_connect();
    amqp_basic_properties_t props = {
        ._flags = AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_CORRELATION_ID_FLAG |
                  AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG,
        .message_id = amqp_cstring_bytes(message_id),
        .correlation_id = amqp_cstring_bytes("corr-1"),
        .content_type = amqp_cstring_bytes("application/json"),
        .delivery_mode = AMQP_DELIVERY_PERSISTENT,
    };
    amqp_bytes_t b = {.len = len, .bytes = (void *)body};
    assert_int_equal(amqp_basic_publish(c, 1, amqp_empty_bytes, amqp_cstring_bytes(queue), 0, 0,
                                        &props, b),
                     AMQP_STATUS_OK);
    raw_close(c);
}

static void test_work_queue_declare(void **state)
{
    (void)state;
    NEED_BROKER();
    gt_bus *bus = connect_ok();
    char *q = qname("wq");
    char *dead = gt_xasprintf("%s.dead", q);
    work_queue(bus, q);
    work_queue(bus, q); /* idempotent */
    assert_int_equal(raw_count(q), 0);
    assert_int_equal(raw_count(dead), 0);
    /* Both quorum: the dead-letter queue has no other arguments, the work queue has. */
    declare(bus, dead, true);
    gt_error err;
    gt_error_clear(&err);
    assert_int_equal(gt_bus_declare_queue(bus, q, true, &err), GT_ECONFLICT);
    assert_true(gt_bus_connected(bus));

    /* A classic queue of that name: a conflict, named. */
    char *classic = qname("wq-classic");
    declare(bus, classic, false);
    gt_error_clear(&err);
    assert_int_equal(gt_bus_declare_work_queue(bus, classic, &err), GT_ECONFLICT);
    printf("  over a classic queue: %s\n", err.message);
    assert_non_null(strstr(err.message, classic));

    /* Names: the ".dead" must fit in 255 bytes. */
    char name[300];
    memset(name, 'w', sizeof name);
    name[251] = '\0';
    gt_error_clear(&err);
    assert_int_equal(gt_bus_declare_work_queue(bus, name, &err), GT_EINVAL);
    printf("  long name: %s\n", err.message);
    assert_int_equal(gt_bus_declare_work_queue(bus, "", NULL), GT_EINVAL);
    assert_int_equal(gt_bus_declare_work_queue(bus, NULL, NULL), GT_EINVAL);
    char *id = gt_id_new();
    snprintf(name, sizeof name, "gt-test-%s-", id);
    free(id);
    memset(name + strlen(name), 'w', 250 - strlen(name));
    name[250] = '\0';
    work_queue(bus, name);
    work_queue_delete(name);

    assert_int_equal(gt_bus_publish(bus, "", q, "x", 1, true, NULL), GT_OK);
    assert_int_equal(raw_count(q), 1);
    work_queue_delete(q);
    raw_delete(classic);
    free(classic);
    free(dead);
    free(q);
    gt_bus_free(&bus);
}

/* At most prefetch deliveries unacked at a time; each ack lets one more in. */
static void test_consume_prefetch_bounds_unacked(void **state)
{
    (void)state;
    NEED_BROKER();
    enum { JOBS = 10, PREFETCH = 3 };
    gt_bus *bus = connect_ok();
    char *q = qname("prefetch");
    work_queue(bus, q);
    publish_jobs(bus, q, 0, JOBS);
    gt_error err;
    gt_error_clear(&err);
    assert_null(gt_bus_consume_start(bus, q, 0, &err));
    assert_int_equal(err.code, GT_EINVAL);
    gt_error_clear(&err);
    assert_null(gt_bus_consume_start(bus, q, 65536, &err));
    assert_int_equal(err.code, GT_EINVAL);
    char *none = qname("no-such-queue");
    gt_error_clear(&err);
    assert_null(gt_bus_consume_start(bus, none, 1, &err));
    printf("  no queue: %s\n", err.message);
    assert_int_equal(err.code, GT_ENOTFOUND);
    free(none);

    gt_bus_consumer *c = consume(bus, q, PREFETCH);
    gt_bus_delivery d[JOBS];
    for (int i = 0; i < PREFETCH; i++) {
        next_ok(c, &d[i]);
        assert_int_equal(job_number(&d[i]), i);
        assert_false(d[i].redelivered);
        assert_int_equal(d[i].delivery_count, 0);
        assert_int_equal(d[i].generation, d[0].generation);
        assert_null(d[i].message_id);
    }
    next_none(c, 1000); /* PREFETCH unacked: the broker holds the rest back */
    /* A short wait returns in time, and a wait of 0 only looks. */
    gt_bus_delivery x;
    int64_t t0 = gt_mono_ms();
    assert_int_equal(gt_bus_consume_next(c, 300, &x, NULL), GT_ETIMEDOUT);
    assert_int_equal(gt_bus_consume_next(c, 0, &x, NULL), GT_ETIMEDOUT);
    int64_t took = gt_mono_ms() - t0;
    printf("  idle consume_next(300) + consume_next(0): %lld ms\n", (long long)took);
    assert_true(took < 300 + SLACK_MS);

    for (int i = PREFETCH; i < JOBS; i++) {
        ack_ok(c, &d[i - PREFETCH]); /* one out, one in */
        next_ok(c, &d[i]);
        assert_int_equal(job_number(&d[i]), i);
        next_none(c, 300);
    }
    /* Settling twice is refused locally (the broker would close the channel). */
    gt_error_clear(&err);
    assert_int_equal(gt_bus_ack(c, &d[0], &err), GT_EINVAL);
    printf("  ack twice: %s\n", err.message);
    assert_int_equal(gt_bus_reject(c, &d[0], true, NULL), GT_EINVAL);
    assert_true(gt_bus_consuming(c));
    for (int i = JOBS - PREFETCH; i < JOBS; i++)
        ack_ok(c, &d[i]);
    for (int i = 0; i < JOBS; i++)
        gt_bus_delivery_clear(&d[i]);
    gt_bus_consume_stop(&c);
    assert_null(c);
    gt_bus_consume_stop(&c); /* NULL is fine */
    count_becomes(q, 0);
    gt_bus_delivery_clear(NULL);
    work_queue_delete(q);
    free(q);
    gt_bus_free(&bus);
}

/* The runner's shape: the owning thread consumes and settles; workers run the jobs and
 * hand them back through a queue of their own; results are published (confirmed) on the
 * same bus before the ack, while other deliveries keep arriving. */
typedef struct job {
    struct job *next;
    gt_bus_delivery d;   /* moved to the worker and back */
    char *result;
    pthread_t thread;
} job;

typedef struct done_list {
    pthread_mutex_t mu;
    job *head;
} done_list;

typedef struct worker_arg {
    done_list *done;
    job *j;
} worker_arg;

static void *worker_main(void *arg)
{
    worker_arg *w = arg;
    usleep(300 * 1000); /* the work: longer than a few of the owner's consume_next calls */
    w->j->result = gt_xasprintf("done:%s", w->j->d.body);
    pthread_mutex_lock(&w->done->mu);
    w->j->next = w->done->head;
    w->done->head = w->j;
    pthread_mutex_unlock(&w->done->mu);
    free(w);
    return NULL;
}

static void test_consume_late_ack_from_owner(void **state)
{
    (void)state;
    NEED_BROKER();
    enum { JOBS = 8, PREFETCH = 3 };
    gt_bus *bus = connect_ok();
    char *q = qname("late"), *results = qname("results");
    work_queue(bus, q);
    work_queue(bus, results);
    publish_jobs(bus, q, 0, JOBS);
    gt_bus_consumer *c = consume(bus, q, PREFETCH);
    done_list done = {.head = NULL};
    pthread_mutex_init(&done.mu, NULL);
    int in_flight = 0, max_in_flight = 0, finished = 0, seen[JOBS] = {0};
    int64_t end = gt_mono_ms() + 4 * WAIT_MS;
    while (finished < JOBS && gt_mono_ms() < end) {
        job *j = gt_xcalloc(1, sizeof *j);
        gt_err rc = gt_bus_consume_next(c, 50, &j->d, NULL);
        if (rc == GT_OK) {
            int n = job_number(&j->d);
            assert_true(n >= 0 && n < JOBS);
            seen[n]++;
            if (++in_flight > max_in_flight)
                max_in_flight = in_flight;
            worker_arg *w = gt_xcalloc(1, sizeof *w);
            *w = (worker_arg){.done = &done, .j = j};
            assert_int_equal(pthread_create(&j->thread, NULL, worker_main, w), 0);
        } else {
            assert_int_equal(rc, GT_ETIMEDOUT);
            free(j);
        }
        pthread_mutex_lock(&done.mu);
        job *list = done.head;
        done.head = NULL;
        pthread_mutex_unlock(&done.mu);
        while (list != NULL) {
            job *f = list;
            list = f->next;
            pthread_join(f->thread, NULL);
            gt_error err;
            gt_error_clear(&err);
            rc = gt_bus_publish(bus, "", results, f->result, strlen(f->result), true, &err);
            if (rc != GT_OK)
                print_error("publish result: %s\n", err.message);
            assert_int_equal(rc, GT_OK);
            ack_ok(c, &f->d); /* only now */
            in_flight--;
            finished++;
            gt_bus_delivery_clear(&f->d);
            free(f->result);
            free(f);
        }
    }
    printf("  %d jobs, at most %d in flight\n", finished, max_in_flight);
    assert_int_equal(finished, JOBS);
    assert_true(max_in_flight <= PREFETCH);
    for (int i = 0; i < JOBS; i++)
        assert_int_equal(seen[i], 1);
    gt_bus_consume_stop(&c);
    count_becomes(results, JOBS);
    count_becomes(q, 0); /* all acked: the stop requeued nothing */
    char *body = NULL;
    assert_int_equal(raw_get(results, &body), AMQP_DELIVERY_PERSISTENT);
    assert_non_null(strstr(body, "done:job-"));
    free(body);
    pthread_mutex_destroy(&done.mu);
    work_queue_delete(q);
    work_queue_delete(results);
    free(q);
    free(results);
    gt_bus_free(&bus);
}

/* reject without requeue: to <queue>.dead, body and properties intact; two consumers on
 * one bus. */
static void test_reject_dead_letters(void **state)
{
    (void)state;
    NEED_BROKER();
    gt_bus *bus = connect_ok();
    char *q = qname("dlq");
    char *dead = gt_xasprintf("%s.dead", q);
    work_queue(bus, q);
    unsigned char bin[64];
    for (size_t i = 0; i < sizeof bin; i++)
        bin[i] = (unsigned char)(255 - i * 4); /* NULs and high bytes */
    bin[10] = 0;
    assert_int_equal(gt_bus_publish(bus, "", q, bin, sizeof bin, true, NULL), GT_OK);
    raw_publish_props(q, "{\"malformed\"", 12, "msg-42");

    gt_bus_consumer *c = consume(bus, q, 10);
    gt_bus_consumer *dc = consume(bus, dead, 10);
    gt_bus_delivery d, m, x;
    memset(&d, 0, sizeof d);
    memset(&m, 0, sizeof m);
    gt_error err;
    gt_error_clear(&err);
    for (int64_t end = gt_mono_ms() + WAIT_MS; gt_mono_ms() < end;)
        if (gt_bus_consume_next(c, 200, &d, &err) != GT_ETIMEDOUT)
            break;
    assert_non_null(d.body);
    assert_int_equal(d.len, sizeof bin);
    assert_memory_equal(d.body, bin, sizeof bin);
    assert_int_equal(d.body[d.len], '\0');
    next_ok(c, &m);
    assert_string_equal(m.body, "{\"malformed\"");
    assert_string_equal(m.message_id, "msg-42");
    assert_string_equal(m.correlation_id, "corr-1");
    assert_string_equal(m.content_type, "application/json");
    assert_null(m.reply_to);
    assert_int_equal(gt_bus_reject(c, &d, false, NULL), GT_OK);
    assert_int_equal(gt_bus_reject(c, &m, false, NULL), GT_OK);
    gt_bus_delivery_clear(&m);
    assert_null(m.body);

    /* Both in <queue>.dead (in either order), as they were. */
    for (int i = 0; i < 2; i++) {
        memset(&x, 0, sizeof x);
        for (int64_t end = gt_mono_ms() + WAIT_MS; gt_mono_ms() < end;)
            if (gt_bus_consume_next(dc, 200, &x, NULL) != GT_ETIMEDOUT)
                break;
        assert_non_null(x.body);
        assert_false(x.redelivered);
        assert_true(x.generation != d.generation);
        if (x.len == sizeof bin) {
            assert_memory_equal(x.body, bin, sizeof bin);
            assert_null(x.message_id);
            ack_ok(dc, &x);
            gt_bus_delivery_clear(&x);
            continue;
        }
        m = x;
    }
    assert_non_null(m.body);
    assert_string_equal(m.body, "{\"malformed\"");
    assert_string_equal(m.message_id, "msg-42");
    assert_string_equal(m.content_type, "application/json");
    /* The delivery belongs to the other consumer: refused, nothing sent. */
    assert_int_equal(gt_bus_ack(c, &m, NULL), GT_ECONFLICT);
    ack_ok(dc, &m);
    gt_bus_delivery_clear(&m);
    gt_bus_delivery_clear(&d);
    next_none(c, 500);
    gt_bus_consume_stop(&c);
    gt_bus_consume_stop(&dc);
    count_becomes(q, 0);
    count_becomes(dead, 0);
    work_queue_delete(q);
    free(dead);
    free(q);
    gt_bus_free(&bus);
}

static void test_reject_requeue_redelivers(void **state)
{
    (void)state;
    NEED_BROKER();
    gt_bus *bus = connect_ok();
    char *q = qname("requeue");
    work_queue(bus, q);
    publish_jobs(bus, q, 0, 1);
    gt_bus_consumer *c = consume(bus, q, 1);
    gt_bus_delivery d;
    next_ok(c, &d);
    assert_false(d.redelivered);
    assert_int_equal(d.delivery_count, 0);
    assert_int_equal(gt_bus_reject(c, &d, true, NULL), GT_OK);
    gt_bus_delivery_clear(&d);
    next_ok(c, &d);
    printf("  again: redelivered %d, delivery count %lld\n", d.redelivered,
           (long long)d.delivery_count);
    assert_string_equal(d.body, "job-0");
    assert_true(d.redelivered);
    assert_int_equal(d.delivery_count, 1);
    ack_ok(c, &d);
    gt_bus_delivery_clear(&d);
    next_none(c, 500);
    gt_bus_consume_stop(&c);
    count_becomes(q, 0);
    work_queue_delete(q);
    free(q);
    gt_bus_free(&bus);
}

/* A poison message (requeued over and over) ends in <queue>.dead. */
static void test_delivery_limit_dead_letters(void **state)
{
    (void)state;
    NEED_BROKER();
    gt_bus *bus = connect_ok();
    char *q = qname("poison");
    char *dead = gt_xasprintf("%s.dead", q);
    work_queue(bus, q);
    publish_jobs(bus, q, 7, 1);
    gt_bus_consumer *c = consume(bus, q, 1);
    int deliveries = 0;
    for (;;) {
        gt_bus_delivery d;
        gt_err rc = GT_ETIMEDOUT;
        for (int64_t end = gt_mono_ms() + 2000; rc == GT_ETIMEDOUT && gt_mono_ms() < end;)
            rc = gt_bus_consume_next(c, 200, &d, NULL);
        if (rc == GT_ETIMEDOUT)
            break; /* not delivered again */
        assert_int_equal(rc, GT_OK);
        assert_string_equal(d.body, "job-7");
        assert_int_equal(d.delivery_count, deliveries);
        deliveries++;
        assert_int_equal(gt_bus_reject(c, &d, true, NULL), GT_OK);
        gt_bus_delivery_clear(&d);
        assert_true(deliveries <= GT_BUS_DELIVERY_LIMIT + 1);
    }
    printf("  delivered %d times, then dead-lettered\n", deliveries);
    assert_int_equal(deliveries, GT_BUS_DELIVERY_LIMIT + 1);
    gt_bus_consume_stop(&c);
    count_becomes(dead, 1);
    count_becomes(q, 0);
    char *body = NULL;
    assert_int_equal(raw_get(dead, &body), AMQP_DELIVERY_PERSISTENT);
    assert_string_equal(body, "job-7");
    free(body);
    work_queue_delete(q);
    free(dead);
    free(q);
    gt_bus_free(&bus);
}

/* Stopping a consumer requeues what it had not acked, handed out or not. */
static void test_consume_stop_requeues_unacked(void **state)
{
    (void)state;
    NEED_BROKER();
    enum { JOBS = 5 };
    gt_bus *bus = connect_ok();
    char *q = qname("stop-requeue");
    work_queue(bus, q);
    publish_jobs(bus, q, 0, JOBS);
    gt_bus_consumer *c = consume(bus, q, JOBS);
    gt_bus_delivery a, b;
    next_ok(c, &a);
    next_ok(c, &b);
    ack_ok(c, &a);
    gt_bus_consume_stop(&c); /* b handed out and unacked; the rest prefetched or queued */
    count_becomes(q, JOBS - 1);

    c = consume(bus, q, JOBS);
    int seen[JOBS] = {0};
    for (int i = 0; i < JOBS - 1; i++) {
        gt_bus_delivery d;
        next_ok(c, &d);
        int n = job_number(&d);
        seen[n]++;
        if (n == job_number(&b))
            assert_true(d.redelivered);
        assert_true(d.generation != b.generation);
        ack_ok(c, &d);
        gt_bus_delivery_clear(&d);
    }
    assert_int_equal(seen[job_number(&a)], 0);
    for (int i = 0; i < JOBS; i++)
        if (i != job_number(&a))
            assert_int_equal(seen[i], 1);
    next_none(c, 500);
    gt_bus_consume_stop(&c);
    count_becomes(q, 0);
    gt_bus_delivery_clear(&a);
    gt_bus_delivery_clear(&b);
    work_queue_delete(q);
    free(q);
    gt_bus_free(&bus);
}

/* The drain: cancel stops deliveries and gives back the prefetched ones at once, while
 * the ones handed out can still be acked. */
static void test_consume_cancel_drains(void **state)
{
    (void)state;
    NEED_BROKER();
    enum { JOBS = 6, PREFETCH = 4 };
    gt_bus *bus = connect_ok(), *other = connect_ok();
    char *q = qname("drain");
    work_queue(bus, q);
    publish_jobs(bus, q, 0, JOBS);
    gt_bus_consumer *c = consume(bus, q, PREFETCH);
    gt_bus_delivery h[2];
    next_ok(c, &h[0]);
    next_ok(c, &h[1]);
    gt_bus_delivery x;
    /* The broker fills the prefetch meanwhile: those two are with c, received or on their
     * way (a delivery that comes after the cancel is requeued as it arrives). */
    usleep(300 * 1000);
    gt_error err;
    gt_error_clear(&err);
    gt_err rc = gt_bus_consume_cancel(c, &err);
    if (rc != GT_OK)
        print_error("cancel: %s\n", err.message);
    assert_int_equal(rc, GT_OK);
    assert_int_equal(gt_bus_consume_cancel(c, NULL), GT_OK); /* idempotent */
    assert_false(gt_bus_consuming(c));

    /* Another consumer gets everything but the two in flight, while c drains. */
    gt_bus_consumer *c2 = consume(other, q, 10);
    int seen[JOBS] = {0};
    seen[job_number(&h[0])]++;
    seen[job_number(&h[1])]++;
    for (int i = 0; i < JOBS - 2; i++) {
        gt_bus_delivery d;
        next_ok(c2, &d);
        seen[job_number(&d)]++;
        ack_ok(c2, &d);
        gt_bus_delivery_clear(&d);
        assert_int_equal(gt_bus_consume_next(c, 0, &x, NULL), GT_ETIMEDOUT); /* serviced */
    }
    for (int i = 0; i < JOBS; i++)
        assert_int_equal(seen[i], 1);
    next_none(c, 300);
    ack_ok(c, &h[0]); /* in flight during the drain: still acked */
    ack_ok(c, &h[1]);
    next_none(c2, 500);
    gt_bus_consume_stop(&c);
    gt_bus_consume_stop(&c2);
    count_becomes(q, 0);
    gt_bus_delivery_clear(&h[0]);
    gt_bus_delivery_clear(&h[1]);
    work_queue_delete(q);
    free(q);
    gt_bus_free(&bus);
    gt_bus_free(&other);
}

/* A consumer idle for longer than two heartbeats keeps its connection: consume_next
 * sends heartbeats while it waits, in short calls and in one long one. */
static void test_consume_idle_keeps_connection(void **state)
{
    (void)state;
    NEED_BROKER();
    gt_bus *bus = connect_hb(2, 0);
    char *q = qname("idle-consumer");
    work_queue(bus, q);
    gt_bus_consumer *c = consume(bus, q, 1);
    publish_jobs(bus, q, 0, 1);
    gt_bus_delivery d;
    next_ok(c, &d);
    uint64_t gen = d.generation;
    ack_ok(c, &d);
    gt_bus_delivery_clear(&d);
    next_none(c, 5000); /* short calls, > 2 x 2 s */
    gt_error err;
    gt_error_clear(&err);
    assert_int_equal(gt_bus_consume_next(c, 5000, &d, &err), GT_ETIMEDOUT); /* one long call */
    printf("  idle: %s\n", err.message);
    assert_true(gt_bus_consuming(c));
    raw_publish(q, "job-1", NULL, 1);
    next_ok(c, &d);
    assert_string_equal(d.body, "job-1");
    assert_int_equal(d.generation, gen); /* the same subscription: never reconnected */
    ack_ok(c, &d);
    gt_bus_delivery_clear(&d);
    /* A delivery held across a long idle stretch is still ackable. */
    publish_jobs(bus, q, 2, 1);
    next_ok(c, &d);
    next_none(c, 5000);
    ack_ok(c, &d);
    gt_bus_delivery_clear(&d);
    gt_bus_consume_stop(&c);
    count_becomes(q, 0);
    work_queue_delete(q);
    free(q);
    gt_bus_free(&bus);
}

/* A consumer outliving its bus is detached, not dangling. */
static void test_consumer_outlives_bus(void **state)
{
    (void)state;
    NEED_BROKER();
    gt_bus *bus = connect_ok();
    char *q = qname("detached");
    work_queue(bus, q);
    publish_jobs(bus, q, 0, 1);
    gt_bus_consumer *c = consume(bus, q, 1);
    gt_bus_delivery d;
    next_ok(c, &d);
    gt_bus_free(&bus);
    assert_false(gt_bus_consuming(c));
    gt_bus_delivery x;
    assert_int_equal(gt_bus_consume_next(c, 10, &x, NULL), GT_EINVAL);
    assert_int_equal(gt_bus_ack(c, &d, NULL), GT_EINVAL);
    assert_int_equal(gt_bus_consume_cancel(c, NULL), GT_OK);
    gt_bus_consume_stop(&c);
    gt_bus_delivery_clear(&d);
    count_becomes(q, 1); /* the connection went: requeued */
    work_queue_delete(q);
    free(q);
}

/* --- TLS ---------------------------------------------------------------------------- */

/* A TLS config for host with the harness's files (dir/ca.pem, ...); ca names the CA file. */
static void tls_cfg(test_cfg *t, char *files[3], const char *host, const char *ca, bool client_cert)
{
    const char *dir = getenv("GANTRY_TEST_AMQP_TLS_DIR");
    cfg_init(t, host, NULL, "guest");
    t->cfg.use_tls = true;
    files[0] = gt_path_join(dir, ca);
    files[1] = client_cert ? gt_path_join(dir, "client.pem") : NULL;
    files[2] = client_cert ? gt_path_join(dir, "client.key") : NULL;
    t->cfg.ca_certificate_file = files[0];
    t->cfg.certificate_file = files[1];
    t->cfg.private_key_file = files[2];
}

static void test_tls(void **state)
{
    (void)state;
    NEED_BROKER();
    const char *host = getenv("GANTRY_TEST_AMQP_TLS");
    if (host == NULL || host[0] == '\0' || getenv("GANTRY_TEST_AMQP_TLS_DIR") == NULL) {
        printf("SKIPPED: TLS (GANTRY_TEST_AMQP_TLS / GANTRY_TEST_AMQP_TLS_DIR unset)\n");
        skip();
        return;
    }
    char *files[3];
    test_cfg t;
    gt_error err;
    for (int with_cert = 0; with_cert < 2; with_cert++) {
        tls_cfg(&t, files, host, "ca.pem", with_cert);
        gt_error_clear(&err);
        gt_bus *bus = gt_bus_connect(&t.cfg, &err);
        if (bus == NULL)
            print_error("tls connect: %s\n", err.message);
        assert_non_null(bus);
        char *q = qname("tls");
        declare(bus, q, true);
        assert_int_equal(gt_bus_publish(bus, "", q, "over tls", 8, true, NULL), GT_OK);
        assert_int_equal(raw_count(q), 1);
        char *body = NULL;
        assert_int_equal(raw_get(q, &body), AMQP_DELIVERY_PERSISTENT);
        assert_string_equal(body, "over tls");
        free(body);
        server s;
        server_start(&s, q);
        rpc_ok(bus, q, "tls call", 10000);
        server_stop(&s);
        raw_delete(q);
        free(q);
        gt_bus_free(&bus);
        for (int i = 0; i < 3; i++)
            free(files[i]);
    }

    /* A server certificate from another CA is refused. */
    tls_cfg(&t, files, host, "other-ca.pem", false);
    gt_error_clear(&err);
    assert_null(gt_bus_connect(&t.cfg, &err));
    printf("  wrong CA: %s\n", err.message);
    assert_int_equal(err.code, GT_EUNAVAIL);
    assert_non_null(strstr(err.message, host));
    for (int i = 0; i < 3; i++)
        free(files[i]);

    /* The right CA but another name (the certificate is for localhost only). */
    char ip[64];
    snprintf(ip, sizeof ip, "127.0.0.1%s", strrchr(host, ':'));
    tls_cfg(&t, files, ip, "ca.pem", false);
    gt_error_clear(&err);
    assert_null(gt_bus_connect(&t.cfg, &err));
    printf("  wrong name: %s\n", err.message);
    assert_int_equal(err.code, GT_EUNAVAIL);
    for (int i = 0; i < 3; i++)
        free(files[i]);

    /* A CA file that does not exist: a configuration error, named. */
    tls_cfg(&t, files, host, "missing.pem", false);
    gt_error_clear(&err);
    assert_null(gt_bus_connect(&t.cfg, &err));
    printf("  missing CA: %s\n", err.message);
    assert_int_equal(err.code, GT_EINVAL);
    assert_non_null(strstr(err.message, "missing.pem"));
    for (int i = 0; i < 3; i++)
        free(files[i]);
}

/* --- the broker restarts --------------------------------------------------------------- */

static void test_broker_restart(void **state)
{
    (void)state;
    NEED_BROKER();
    const char *cmd = getenv("GANTRY_TEST_AMQP_RESTART_CMD");
    if (cmd == NULL || cmd[0] == '\0') {
        printf("SKIPPED: broker restart (GANTRY_TEST_AMQP_RESTART_CMD unset)\n");
        skip();
        return;
    }
    char *q = qname("restart-rpc"), *work = qname("restart-work");
    gt_bus *bus = connect_ok();
    declare(bus, q, false);
    declare(bus, work, true);
    for (int i = 0; i < 10; i++)
        assert_int_equal(gt_bus_publish(bus, "", work, "durable", 7, true, NULL), GT_OK);
    server s;
    server_start(&s, q);
    rpc_ok(bus, q, "before", 10000);

    int64_t t0 = gt_mono_ms();
    assert_int_equal(system(cmd), 0);
    printf("  broker restarted in %lld ms\n", (long long)(gt_mono_ms() - t0));

    /* The next calls reconnect on their own; the server came back by itself. */
    t0 = gt_mono_ms();
    assert_int_equal(gt_bus_publish(bus, "", work, "durable", 7, true, NULL), GT_OK);
    rpc_ok(bus, q, "after", 20000);
    printf("  first publish + RPC after the restart took %lld ms\n",
           (long long)(gt_mono_ms() - t0));
    server_stop(&s);
    assert_int_equal(raw_count(work), 11); /* persistent messages in a quorum queue survive */
    raw_delete(q);
    raw_delete(work);
    free(q);
    free(work);
    gt_bus_free(&bus);
}

/* SIGKILL of the broker: calls fail fast and name the broker; the server waits it out;
 * confirmed persistent messages in a quorum queue survive the crash.
 *
 * RabbitMQ 3.10.8 (Debian 12) caveat, found here: a quorum queue declared shortly before
 * an unclean node stop comes back EMPTY -- Ra registers the queue's server in a DETS
 * table it does not sync (fixed upstream in rabbitmq/ra#443, 2024), so after the crash
 * the queue starts as a new, empty Ra server. Confirmed messages are safe once the
 * registration is on disk; the test makes sure of that with a clean restart between
 * declaring and publishing. */
static void test_broker_crash(void **state)
{
    (void)state;
    NEED_BROKER();
    const char *ctl = getenv("GANTRY_TEST_AMQP_CONTROL_CMD");
    if (ctl == NULL || ctl[0] == '\0') {
        printf("SKIPPED: broker crash (GANTRY_TEST_AMQP_CONTROL_CMD unset)\n");
        skip();
        return;
    }
    char *kill_cmd = gt_xasprintf("%s kill", ctl), *start_cmd = gt_xasprintf("%s start", ctl);
    char *restart_cmd = gt_xasprintf("%s restart", ctl);
    char *q = qname("crash-rpc"), *work = qname("crash-work");
    gt_bus *bus = connect_ok();
    declare(bus, q, false);
    declare(bus, work, true);
    assert_int_equal(system(restart_cmd), 0); /* see above: the registration on disk */
    for (int i = 0; i < 50; i++)
        assert_int_equal(gt_bus_publish(bus, "", work, "confirmed", 9, true, NULL), GT_OK);
    server s;
    server_start(&s, q);
    rpc_ok(bus, q, "before", 10000);

    assert_int_equal(system(kill_cmd), 0);
    gt_error err;
    gt_error_clear(&err);
    int64_t t0 = gt_mono_ms();
    assert_int_equal(gt_bus_publish(bus, "", work, "x", 1, true, &err), GT_EUNAVAIL);
    int64_t took = gt_mono_ms() - t0;
    printf("  publish, broker down: %s (%lld ms)\n", err.message, (long long)took);
    assert_non_null(strstr(err.message, amqp_addr()));
    assert_true(took < 10000);
    assert_false(gt_bus_connected(bus));
    char *reply = NULL;
    gt_error_clear(&err);
    assert_int_equal(gt_bus_rpc(bus, q, "x", 1, 1000, &reply, NULL, &err), GT_EUNAVAIL);

    t0 = gt_mono_ms();
    assert_int_equal(system(start_cmd), 0);
    printf("  broker started again in %lld ms\n", (long long)(gt_mono_ms() - t0));
    rpc_ok(bus, q, "after", 20000);
    server_stop(&s);
    assert_int_equal(raw_count(work), 50);
    raw_delete(q);
    raw_delete(work);
    free(q);
    free(work);
    free(kill_cmd);
    free(start_cmd);
    free(restart_cmd);
    gt_bus_free(&bus);
}

/* The broker restarts under two consumers of one bus: unacked deliveries come back
 * (redelivered), new ones keep flowing to both, acks for the old connection's deliveries
 * are refused. */
static void test_consume_across_broker_restart(void **state)
{
    (void)state;
    NEED_BROKER();
    const char *cmd = getenv("GANTRY_TEST_AMQP_RESTART_CMD");
    if (cmd == NULL || cmd[0] == '\0') {
        printf("SKIPPED: broker restart (GANTRY_TEST_AMQP_RESTART_CMD unset)\n");
        skip();
        return;
    }
    enum { BEFORE = 6, AFTER = 3, PREFETCH = 3 };
    gt_bus *bus = connect_ok();
    char *q = qname("restart-consume"), *q2 = qname("restart-consume2");
    work_queue(bus, q);
    work_queue(bus, q2);
    publish_jobs(bus, q, 0, BEFORE);
    gt_bus_consumer *c = consume(bus, q, PREFETCH);
    gt_bus_consumer *c2 = consume(bus, q2, 1);
    gt_bus_delivery d2;
    publish_jobs(bus, q2, 0, 1);
    next_ok(c2, &d2);
    ack_ok(c2, &d2);
    gt_bus_delivery_clear(&d2);
    gt_bus_delivery old[PREFETCH];
    for (int i = 0; i < PREFETCH; i++) {
        next_ok(c, &old[i]);
        assert_int_equal(job_number(&old[i]), i);
    }
    ack_ok(c, &old[0]);

    int64_t t0 = gt_mono_ms();
    assert_int_equal(system(cmd), 0);
    printf("  broker restarted in %lld ms\n", (long long)(gt_mono_ms() - t0));

    /* The next calls reconnect and subscribe again by themselves. */
    int seen[BEFORE + AFTER] = {0};
    seen[0] = 1;
    gt_bus_delivery d;
    t0 = gt_mono_ms();
    next_ok(c, &d);
    printf("  first delivery after the restart: %lld ms\n", (long long)(gt_mono_ms() - t0));
    assert_true(d.generation != old[1].generation);
    assert_true(gt_bus_consuming(c));
    gt_error err;
    gt_error_clear(&err);
    assert_int_equal(gt_bus_ack(c, &old[1], &err), GT_ECONFLICT);
    printf("  old ack: %s\n", err.message);
    assert_int_equal(gt_bus_reject(c, &old[2], true, NULL), GT_ECONFLICT);
    publish_jobs(bus, q, BEFORE, AFTER); /* the same bus publishes meanwhile */
    for (int got = 1;; got++) {
        int n = job_number(&d);
        assert_true(n > 0 && n < BEFORE + AFTER);
        seen[n]++;
        if (n == 1 || n == 2)
            assert_true(d.redelivered); /* the unacked ones came back */
        ack_ok(c, &d);
        gt_bus_delivery_clear(&d);
        if (got == BEFORE + AFTER - 1)
            break;
        next_ok(c, &d);
    }
    for (int i = 0; i < BEFORE + AFTER; i++)
        assert_int_equal(seen[i], 1);
    /* The other consumer of the bus subscribed again too. */
    publish_jobs(bus, q2, 1, 2);
    for (int i = 1; i < 3; i++) {
        next_ok(c2, &d2);
        assert_int_equal(job_number(&d2), i);
        ack_ok(c2, &d2);
        gt_bus_delivery_clear(&d2);
    }
    next_none(c, 500);
    next_none(c2, 200);
    gt_bus_consume_stop(&c);
    gt_bus_consume_stop(&c2);
    count_becomes(q, 0);
    count_becomes(q2, 0);
    for (int i = 0; i < PREFETCH; i++)
        gt_bus_delivery_clear(&old[i]);
    work_queue_delete(q);
    work_queue_delete(q2);
    free(q);
    free(q2);
    gt_bus_free(&bus);
}

/* The broker stays away: consume_next returns in bounded time, then gives up with a clear
 * message after the configured attempts; once the broker is back, a further call
 * subscribes again. A classic queue (see test_broker_crash on quorum queues and kills). */
static void test_consume_gives_up_then_recovers(void **state)
{
    (void)state;
    NEED_BROKER();
    const char *ctl = getenv("GANTRY_TEST_AMQP_CONTROL_CMD");
    if (ctl == NULL || ctl[0] == '\0') {
        printf("SKIPPED: broker down (GANTRY_TEST_AMQP_CONTROL_CMD unset)\n");
        skip();
        return;
    }
    char *kill_cmd = gt_xasprintf("%s kill", ctl), *start_cmd = gt_xasprintf("%s start", ctl);
    gt_bus *bus = connect_hb(0, 2);
    char *q = qname("down-consume");
    declare(bus, q, false);
    gt_bus_consumer *c = consume(bus, q, 1);
    assert_int_equal(system(kill_cmd), 0);
    gt_err rc = GT_ETIMEDOUT;
    gt_error err;
    int calls = 0;
    int64_t longest = 0, end = gt_mono_ms() + 4 * WAIT_MS;
    while (rc == GT_ETIMEDOUT && gt_mono_ms() < end) {
        gt_bus_delivery d;
        gt_error_clear(&err);
        int64_t t0 = gt_mono_ms();
        rc = gt_bus_consume_next(c, 200, &d, &err);
        int64_t took = gt_mono_ms() - t0;
        longest = took > longest ? took : longest;
        calls++;
    }
    printf("  broker down: %s (after %d calls, the longest %lld ms)\n", err.message, calls,
           (long long)longest);
    assert_int_equal(rc, GT_EUNAVAIL);
    assert_non_null(strstr(err.message, amqp_addr()));
    assert_non_null(strstr(err.message, "gave up after 2 attempts"));
    assert_true(longest < 200 + 2000 + SLACK_MS); /* the timeout plus one connect */
    assert_false(gt_bus_consuming(c));

    assert_int_equal(system(start_cmd), 0);
    declare(bus, q, false); /* in case the kill lost it */
    raw_publish(q, "job-1", NULL, 1);
    gt_bus_delivery d;
    next_ok(c, &d);
    assert_string_equal(d.body, "job-1");
    ack_ok(c, &d);
    gt_bus_delivery_clear(&d);
    gt_bus_consume_stop(&c);
    count_becomes(q, 0);
    raw_delete(q);
    free(q);
    free(kill_cmd);
    free(start_cmd);
    gt_bus_free(&bus);
}

static void raw_delete_exchange(const char *exchange)
{
    amqp_connection_state_t c = raw_connect();
    amqp_exchange_delete(c, 1, amqp_cstring_bytes(exchange), 0);
    if (amqp_get_rpc_reply(c).reply_type == AMQP_RESPONSE_NORMAL)
        raw_close(c);
    else
        amqp_destroy_connection(c);
}

/* True when exchange exists (passive declare). */
static bool raw_exchange_exists(const char *exchange)
{
    amqp_connection_state_t c = raw_connect();
    amqp_exchange_declare(c, 1, amqp_cstring_bytes(exchange), amqp_cstring_bytes("direct"), 1, 0,
                          0, 0, amqp_empty_table);
    bool ok = amqp_get_rpc_reply(c).reply_type == AMQP_RESPONSE_NORMAL;
    if (ok)
        raw_close(c);
    else
        amqp_destroy_connection(c);
    return ok;
}

/* With a cluster id, the cluster's queues go through exchanges of their own (so broker
 * permissions on exchanges decide who publishes where), and every message says which
 * broker user sent it. */
static void test_routes_through_cluster_exchanges(void **state)
{
    (void)state;
    NEED_BROKER();
    char *id = gt_id_new();
    char *cluster = gt_xasprintf("rt%.10s", id);
    char *auth = gt_xasprintf("gantry.%s.auth", cluster);
    char *auth_x = gt_xasprintf("gantry.%s.auth", cluster);
    char *exec = gt_xasprintf("exec.%s.p1", cluster);
    char *exec_dead = gt_xasprintf("%s.dead", exec);
    char *exec_x = gt_xasprintf("gantry.%s.exec", cluster);
    char *results = gt_xasprintf("results.%s", cluster);
    char *results_x = gt_xasprintf("gantry.%s.results", cluster);
    char *dead_x = gt_xasprintf("gantry.%s.dead", cluster);
    test_cfg t;
    cfg_init(&t, amqp_addr(), NULL, "guest");
    t.cfg.cluster_id = cluster;
    gt_error err;
    gt_error_clear(&err);
    gt_bus *bus = gt_bus_connect(&t.cfg, &err);
    assert_non_null(bus);

    /* Before anyone declared the auth exchange: nobody serves it, said at once. */
    char *reply = NULL;
    size_t len = 0;
    gt_error_clear(&err);
    assert_int_equal(gt_bus_rpc(bus, auth, "whoami", 6, 5000, &reply, &len, &err), GT_EUNAVAIL);
    assert_non_null(strstr(err.message, "nobody serves it"));

    /* The server declares queue and exchange and binds them; the caller is named. */
    server s;
    memset(&s, 0, sizeof s);
    s.queue = auth;
    s.cluster = cluster;
    atomic_init(&s.calls, 0);
    atomic_init(&s.failed_calls, 0);
    assert_int_equal(pthread_create(&s.thread, NULL, server_main, &s), 0);
    gt_err rc = GT_EUNAVAIL;
    int64_t end = gt_mono_ms() + WAIT_MS;
    while (rc != GT_OK && gt_mono_ms() < end) {
        gt_error_clear(&err);
        rc = gt_bus_rpc(bus, auth, "whoami", 6, 2000, &reply, &len, &err);
        if (rc != GT_OK)
            usleep(50 * 1000);
    }
    if (rc != GT_OK)
        print_error("rpc: %s\n", err.message);
    assert_int_equal(rc, GT_OK);
    assert_string_equal(reply, "user:guest");
    free(reply);
    assert_true(raw_exchange_exists(auth_x));
    server_stop(&s);

    /* A work queue is bound to the cluster's exec exchange; publishing by its name goes
     * there, and the delivery carries the publisher's user. */
    gt_error_clear(&err);
    assert_int_equal(gt_bus_declare_work_queue(bus, exec, &err), GT_OK);
    assert_true(raw_exchange_exists(exec_x));
    gt_error_clear(&err);
    assert_int_equal(gt_bus_publish(bus, "", exec, "job", 3, true, &err), GT_OK);
    gt_bus_consumer *c = gt_bus_consume_start(bus, exec, 1, &err);
    assert_non_null(c);
    gt_bus_delivery d;
    next_ok(c, &d);
    assert_string_equal(d.body, "job");
    assert_non_null(d.user_id);
    assert_string_equal(d.user_id, "guest");
    ack_ok(c, &d);
    gt_bus_delivery_clear(&d);
    /* Dead letters go through gantry.<c>.dead (not the default exchange) to <queue>.dead. */
    gt_error_clear(&err);
    assert_int_equal(gt_bus_publish(bus, "", exec, "poison", 6, true, &err), GT_OK);
    next_ok(c, &d);
    gt_error_clear(&err);
    assert_int_equal(gt_bus_reject(c, &d, false, &err), GT_OK);
    gt_bus_delivery_clear(&d);
    count_becomes(exec_dead, 1);
    assert_true(raw_exchange_exists(dead_x));
    gt_bus_consume_stop(&c);

    /* results.<c> goes through gantry.<c>.results, which nobody declared yet: a clear
     * error, and the bus goes on working. */
    gt_error_clear(&err);
    rc = gt_bus_publish(bus, "", results, "r", 1, true, &err);
    assert_int_equal(rc, GT_ENOTFOUND);
    gt_error_clear(&err);
    assert_int_equal(gt_bus_declare_work_queue(bus, results, &err), GT_OK);
    gt_error_clear(&err);
    assert_int_equal(gt_bus_publish(bus, "", results, "r", 1, true, &err), GT_OK);
    count_becomes(results, 1);

    gt_bus_free(&bus);
    raw_delete(auth);
    raw_delete(exec);
    raw_delete(exec_dead);
    raw_delete(results);
    char *results_dead = gt_xasprintf("%s.dead", results);
    raw_delete(results_dead);
    free(results_dead);
    raw_delete_exchange(auth_x);
    raw_delete_exchange(exec_x);
    raw_delete_exchange(results_x);
    raw_delete_exchange(dead_x);
    free(dead_x);
    free(results_x);
    free(results);
    free(exec_x);
    free(exec_dead);
    free(exec);
    free(auth_x);
    free(auth);
    free(cluster);
    free(id);
}

int main(void)
{
    if (amqp_addr() == NULL)
        printf("SKIPPED: no RabbitMQ test server (GANTRY_TEST_AMQP unset; run under "
               "scripts/test-servers): the bus tests that need a broker are skipped\n");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_errors),
        cmocka_unit_test(test_connect_refused_names_host),
        cmocka_unit_test(test_connect_silent_peer_times_out),
        cmocka_unit_test(test_connect_wrong_password),
        cmocka_unit_test(test_connect_fails_over_to_next_host),
        cmocka_unit_test(test_declare_classic_and_quorum),
        cmocka_unit_test(test_publish_1000_persistent_confirmed),
        cmocka_unit_test(test_publish_unroutable_and_missing_exchange),
        cmocka_unit_test(test_rpc_round_trip),
        cmocka_unit_test(test_rpc_timeout_without_server),
        cmocka_unit_test(test_rpc_many_concurrent_clients),
        cmocka_unit_test(test_handler_publishes_on_serving_bus),
        cmocka_unit_test(test_serve_stops_on_flag),
        cmocka_unit_test(test_handler_error_and_malformed_rejected),
        cmocka_unit_test(test_stop_mid_backlog_leaves_rest_queued),
        cmocka_unit_test(test_idle_connection_replaced),
        cmocka_unit_test(test_work_queue_declare),
        cmocka_unit_test(test_consume_prefetch_bounds_unacked),
        cmocka_unit_test(test_consume_late_ack_from_owner),
        cmocka_unit_test(test_reject_dead_letters),
        cmocka_unit_test(test_reject_requeue_redelivers),
        cmocka_unit_test(test_delivery_limit_dead_letters),
        cmocka_unit_test(test_consume_stop_requeues_unacked),
        cmocka_unit_test(test_consume_cancel_drains),
        cmocka_unit_test(test_consume_idle_keeps_connection),
        cmocka_unit_test(test_consumer_outlives_bus),
        cmocka_unit_test(test_tls),
        cmocka_unit_test(test_broker_restart),
        cmocka_unit_test(test_broker_crash),
        cmocka_unit_test(test_consume_across_broker_restart),
        cmocka_unit_test(test_consume_gives_up_then_recovers),
        cmocka_unit_test(test_routes_through_cluster_exchanges),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
