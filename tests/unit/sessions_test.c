/* sessions.c against real redis-server and redis-sentinel processes, started by
 * scripts/test-servers (or scripts/testenv/redis.py) and found through
 * GANTRY_TEST_SENTINELS, GANTRY_TEST_REDIS_MASTER_NAME and GANTRY_TEST_REDIS, with the
 * credentials of GANTRY_TEST_REDIS_USERNAME/_PASSWORD (the app's ACL user),
 * GANTRY_TEST_SENTINEL_USERNAME/_PASSWORD and GANTRY_TEST_REDIS_ADMIN_PASSWORD (the
 * default user, for the checks made directly). Session records' MACs need no server.
 * The tests of bad configs and unreachable servers need no server and always run.
 * The failover test runs last and fails back, leaving the original master in place. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <arpa/inet.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "error.h"
#include "sessions.h"
#include "util.h"

/* ---- helpers ---------------------------------------------------------------------- */

typedef struct live {
    gt_strv sentinels;
    const char *master_name;
    const char *redis;      /* the master when the servers started */
    const char *username, *password;                   /* the app's, on the data nodes */
    const char *sentinel_username, *sentinel_password; /* the app's, on the sentinels */
    char prefix[128];       /* unique per test and run */
} live;

static const char *env_or_null(const char *name)
{
    const char *v = getenv(name);
    return v && v[0] ? v : NULL;
}

/* Fills l from the environment, or says loudly why the test is skipped. */
static bool live_get(live *l, const char *test)
{
    const char *sentinels = getenv("GANTRY_TEST_SENTINELS");
    memset(l, 0, sizeof *l);
    if (sentinels == NULL || sentinels[0] == '\0') {
        printf("SKIPPED: no Redis test servers (GANTRY_TEST_SENTINELS unset; run under "
               "scripts/test-servers)\n");
        return false;
    }
    const char *name = getenv("GANTRY_TEST_REDIS_MASTER_NAME");
    l->master_name = name && name[0] ? name : "gantry-test";
    l->redis = getenv("GANTRY_TEST_REDIS");
    l->username = env_or_null("GANTRY_TEST_REDIS_USERNAME");
    l->password = env_or_null("GANTRY_TEST_REDIS_PASSWORD");
    l->sentinel_username = env_or_null("GANTRY_TEST_SENTINEL_USERNAME");
    l->sentinel_password = env_or_null("GANTRY_TEST_SENTINEL_PASSWORD");
    char *copy = gt_xstrdup(sentinels), *save = NULL;
    for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save))
        gt_strv_push(&l->sentinels, t);
    free(copy);
    snprintf(l->prefix, sizeof l->prefix, "gantry-unit:%ld:%s:", (long)getpid(), test);
    return true;
}

#define LIVE(l)                                                                            \
    do {                                                                                   \
        if (!live_get(&(l), __func__))                                                     \
            skip();                                                                        \
    } while (0)

static gt_sessions_config live_cfg(const live *l)
{
    gt_sessions_config cfg = {0};
    cfg.sentinels = l->sentinels.v;
    cfg.master_name = l->master_name;
    cfg.prefix = l->prefix;
    cfg.timeout_ms = 2000;
    cfg.username = l->username;
    cfg.password = l->password;
    cfg.sentinel_username = l->sentinel_username;
    cfg.sentinel_password = l->sentinel_password;
    return cfg;
}

/* A single-host configuration for addr with the app's credentials. */
static gt_sessions_config host_cfg(const live *l, const char *addr)
{
    gt_sessions_config cfg = {.host = addr, .prefix = l->prefix, .username = l->username,
                              .password = l->password};
    return cfg;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

/* A direct hiredis connection to "host:port", for checking what sessions.c did. */
static redisContext *raw(const char *addr)
{
    char host[256];
    const char *colon = strrchr(addr, ':');
    assert_non_null(colon);
    snprintf(host, sizeof host, "%.*s", (int)(colon - addr), addr);
    struct timeval tv = {2, 0};
    redisContext *c = redisConnectWithTimeout(host, atoi(colon + 1), tv);
    assert_non_null(c);
    if (c->err)
        fail_msg("connect %s: %s", addr, c->errstr);
    redisSetTimeout(c, tv);
    const char *admin = env_or_null("GANTRY_TEST_REDIS_ADMIN_PASSWORD");
    if (admin) { /* the default user, on data nodes and sentinels alike */
        redisReply *r = redisCommand(c, "AUTH %s", admin);
        if (r == NULL || r->type == REDIS_REPLY_ERROR)
            fail_msg("AUTH on %s: %s", addr, r ? r->str : c->errstr);
        freeReplyObject(r);
    }
    return c;
}

/* An integer reply to a command on addr (test data only in fmt). */
static long long raw_int(const char *addr, const char *fmt, ...)
{
    redisContext *c = raw(addr);
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    assert_non_null(r);
    if (r->type != REDIS_REPLY_INTEGER)
        fail_msg("%s: want an integer, got type %d %s", fmt, r->type, r->str ? r->str : "");
    long long v = r->integer;
    freeReplyObject(r);
    redisFree(c);
    return v;
}

/* The string reply (or NULL for nil) to a command on addr; the caller frees. */
static char *raw_str(const char *addr, const char *fmt, ...)
{
    redisContext *c = raw(addr);
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    assert_non_null(r);
    char *v = NULL;
    if (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS)
        v = gt_xstrndup(r->str, r->len);
    else if (r->type != REDIS_REPLY_NIL)
        fail_msg("%s: got type %d %s", fmt, r->type, r->str ? r->str : "");
    freeReplyObject(r);
    redisFree(c);
    return v;
}

/* A loopback port nothing listens on (right now). */
static int closed_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t n = sizeof a;
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &n), 0);
    close(fd);
    return ntohs(a.sin_port);
}

/* A listener that never accepts: connecting works (the kernel's backlog), nothing
 * ever answers. Returns the fd; *port is its port. */
static int blackhole(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t n = sizeof a;
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(fd, 64), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &n), 0);
    *port = ntohs(a.sin_port);
    return fd;
}

static int strv_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* ---- without servers -------------------------------------------------------------- */

static void want_einval(const gt_sessions_config *cfg, const char *what)
{
    gt_error e = {0};
    gt_sessions *s = gt_sessions_new(cfg, &e);
    if (s != NULL || e.code != GT_EINVAL)
        fail_msg("%s: want GT_EINVAL, got %d (%s)", what, e.code, e.message);
    assert_true(e.message[0] != '\0');
}

static void test_config_invalid(void **state)
{
    (void)state;
    want_einval(NULL, "no config");
    gt_sessions_config cfg = {0};
    want_einval(&cfg, "neither sentinels nor host");
    char *one[] = {"127.0.0.1:26379", NULL};
    cfg.sentinels = one;
    want_einval(&cfg, "sentinels without master_name");
    cfg.master_name = "m";
    cfg.timeout_ms = -1;
    want_einval(&cfg, "negative timeout");
    cfg.timeout_ms = 0;
    cfg.db = -1;
    want_einval(&cfg, "negative db");
    cfg.db = 0;
    const char *bad[] = {"nohostport", "host:", "host:0", "host:65536", "host:12x", ":6379",
                         "::1:6379", "[::1]6379", "[]:6379"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *list[] = {"127.0.0.1:26379", (char *)bad[i], NULL};
        cfg.sentinels = list;
        want_einval(&cfg, bad[i]);
        gt_sessions_config h = {.host = bad[i]};
        want_einval(&h, bad[i]);
    }
    gt_sessions *s = NULL;
    gt_sessions_free(&s);
    gt_sessions_free(NULL);
    assert_string_equal(gt_sessions_master(NULL), "");
    gt_error e = {0};
    assert_int_equal(gt_sessions_ping(NULL, &e), GT_EINVAL);
}

static void test_bad_sentinels(void **state)
{
    (void)state;
    int hole_port = 0;
    int hole = blackhole(&hole_port);
    char a[64], b[64], c[64];
    snprintf(a, sizeof a, "127.0.0.1:%d", closed_port());
    snprintf(b, sizeof b, "127.0.0.1:%d", hole_port);
    snprintf(c, sizeof c, "[::1]:%d", closed_port());
    char *list[] = {a, b, c, NULL};
    gt_sessions_config cfg = {.sentinels = list, .master_name = "gantry-test", .timeout_ms = 300,
                              .password = "hunter2-not-printed"};
    gt_error e = {0};
    int64_t t0 = gt_mono_ms();
    gt_sessions *s = gt_sessions_new(&cfg, &e);
    int64_t took = gt_mono_ms() - t0;
    printf("# bad sentinels: %s (%lld ms)\n", e.message, (long long)took);
    assert_null(s);
    assert_int_equal(e.code, GT_EUNAVAIL);
    assert_non_null(strstr(e.message, "gantry-test"));
    assert_non_null(strstr(e.message, a));
    assert_non_null(strstr(e.message, b));
    assert_non_null(strstr(e.message, c));
    assert_non_null(strstr(e.message, "no answer within 300 ms"));
    assert_null(strstr(e.message, "hunter2"));
    assert_true(took < 2000);
    close(hole);
}

static void test_unreachable_host(void **state)
{
    (void)state;
    char addr[64];
    gt_error e = {0};
    gt_sessions_config cfg = {.host = addr, .timeout_ms = 300};

    snprintf(addr, sizeof addr, "127.0.0.1:%d", closed_port());
    assert_null(gt_sessions_new(&cfg, &e));
    printf("# closed port: %s\n", e.message);
    assert_int_equal(e.code, GT_EUNAVAIL);
    assert_non_null(strstr(e.message, addr));
    assert_non_null(strstr(e.message, "refused"));

    /* accepts the connection, never answers: the command timeout must fire */
    int port = 0;
    int hole = blackhole(&port);
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    gt_error_clear(&e);
    int64_t t0 = gt_mono_ms();
    assert_null(gt_sessions_new(&cfg, &e));
    int64_t took = gt_mono_ms() - t0;
    printf("# silent server: %s (%lld ms)\n", e.message, (long long)took);
    assert_int_equal(e.code, GT_EUNAVAIL);
    assert_non_null(strstr(e.message, "no answer within 300 ms"));
    assert_true(took >= 250 && took < 1500);
    close(hole);

    /* TEST-NET-1 routes nowhere: the connect timeout (or an immediate "unreachable") */
    snprintf(addr, sizeof addr, "192.0.2.1:6379");
    gt_error_clear(&e);
    t0 = gt_mono_ms();
    assert_null(gt_sessions_new(&cfg, &e));
    took = gt_mono_ms() - t0;
    printf("# unroutable: %s (%lld ms)\n", e.message, (long long)took);
    assert_int_equal(e.code, GT_EUNAVAIL);
    assert_non_null(strstr(e.message, "192.0.2.1:6379"));
    assert_true(took < 1500);
}

/* ---- against the servers ---------------------------------------------------------- */

static gt_sessions *open_live(const live *l)
{
    gt_sessions_config cfg = live_cfg(l);
    gt_error e = {0};
    gt_sessions *s = gt_sessions_new(&cfg, &e);
    if (s == NULL)
        fail_msg("gt_sessions_new: %s", e.message);
    return s;
}

static void want_value(gt_sessions *s, const char *key, const char *want)
{
    gt_error e = {0};
    char *v = NULL;
    gt_err rc = gt_sessions_get(s, key, &v, &e);
    if (rc != GT_OK)
        fail_msg("get %s: %s", key, e.message);
    assert_string_equal(v, want);
    free(v);
}

static void want_absent(gt_sessions *s, const char *key)
{
    gt_error e = {0};
    char *v = NULL;
    assert_int_equal(gt_sessions_get(s, key, &v, &e), GT_ENOTFOUND);
    assert_int_equal(e.code, GT_ENOTFOUND);
    assert_null(v);
}

static void test_set_get_expiry(void **state)
{
    (void)state;
    live l;
    LIVE(l);
    gt_sessions *s = open_live(&l);
    gt_error e = {0};
    char key[256];

    assert_int_equal(gt_sessions_set(s, "forever", "v1", 0, &e), GT_OK);
    want_value(s, "forever", "v1");
    snprintf(key, sizeof key, "%sforever", l.prefix);
    assert_int_equal(raw_int(gt_sessions_master(s), "PTTL %s", key), -1);
    assert_int_equal(gt_sessions_set(s, "forever", "v2", 0, &e), GT_OK);
    want_value(s, "forever", "v2");

    /* arguments go as argv: nothing in them is a format or a separator */
    const char *odd = "a b\r\n%s%n\"'\t*1\r\n$4\r\nPING";
    assert_int_equal(gt_sessions_set(s, "odd key %s", odd, 60000, &e), GT_OK);
    want_value(s, "odd key %s", odd);
    assert_int_equal(gt_sessions_set(s, "empty", "", 60000, &e), GT_OK);
    want_value(s, "empty", "");

    assert_int_equal(gt_sessions_set(s, "short", "gone soon", 200, &e), GT_OK);
    want_value(s, "short", "gone soon");
    snprintf(key, sizeof key, "%sshort", l.prefix);
    long long pttl = raw_int(gt_sessions_master(s), "PTTL %s", key);
    assert_true(pttl > 0 && pttl <= 200);
    sleep_ms(350);
    want_absent(s, "short");

    assert_int_equal(gt_sessions_set(s, "neg", "x", -1, &e), GT_EINVAL);
    gt_error_clear(&e);
    assert_int_equal(gt_sessions_set(s, NULL, "x", 0, &e), GT_EINVAL);
    gt_error_clear(&e);
    assert_int_equal(gt_sessions_set(s, "k", NULL, 0, &e), GT_EINVAL);

    gt_sessions_del(s, "forever", NULL);
    gt_sessions_del(s, "odd key %s", NULL);
    gt_sessions_del(s, "empty", NULL);
    gt_sessions_free(&s);
    assert_null(s);
    gt_strv_free(&l.sentinels);
}

static void test_get_touch(void **state)
{
    (void)state;
    live l;
    LIVE(l);
    gt_sessions *s = open_live(&l);
    gt_error e = {0};
    char *v = NULL;
    char key[256];
    snprintf(key, sizeof key, "%stok", l.prefix);

    assert_int_equal(gt_sessions_set(s, "tok", "user-1", 600, &e), GT_OK);
    sleep_ms(400);
    assert_int_equal(gt_sessions_get_touch(s, "tok", 600, &v, &e), GT_OK);
    assert_string_equal(v, "user-1");
    free(v);
    v = NULL;
    long long pttl = raw_int(gt_sessions_master(s), "PTTL %s", key);
    assert_true(pttl > 400 && pttl <= 600);
    sleep_ms(400);   /* 800 ms after the SET: alive only because the TTL was renewed */
    want_value(s, "tok", "user-1");
    sleep_ms(400);
    want_absent(s, "tok");

    assert_int_equal(gt_sessions_get_touch(s, "tok", 600, &v, &e), GT_ENOTFOUND);
    assert_null(v);
    assert_int_equal(raw_int(gt_sessions_master(s), "EXISTS %s", key), 0);
    gt_error_clear(&e);
    assert_int_equal(gt_sessions_get_touch(s, "tok", 0, &v, &e), GT_EINVAL);

    /* WRONGTYPE inside MULTI/EXEC is an error, not a retry */
    assert_int_equal(gt_sessions_sadd(s, "aset", "m", 60000, NULL), GT_OK);
    gt_error_clear(&e);
    assert_int_equal(gt_sessions_get_touch(s, "aset", 600, &v, &e), GT_EIO);
    assert_non_null(strstr(e.message, "WRONGTYPE"));
    assert_null(v);
    gt_sessions_del(s, "aset", NULL);
    gt_sessions_free(&s);
    gt_strv_free(&l.sentinels);
}

static void test_expire(void **state)
{
    (void)state;
    live l;
    LIVE(l);
    gt_sessions *s = open_live(&l);
    gt_error e = {0};
    char key[256];
    snprintf(key, sizeof key, "%stok2", l.prefix);
    assert_int_equal(gt_sessions_set(s, "tok2", "user-2", 60000, &e), GT_OK);
    assert_int_equal(gt_sessions_expire(s, "tok2", 600, &e), GT_OK);
    long long pttl = raw_int(gt_sessions_master(s), "PTTL %s", key);
    assert_true(pttl > 0 && pttl <= 600);
    want_value(s, "tok2", "user-2");
    sleep_ms(800);
    want_absent(s, "tok2");
    assert_int_equal(gt_sessions_expire(s, "tok2", 600, NULL), GT_ENOTFOUND);
    assert_int_equal(gt_sessions_expire(s, "tok2", 0, NULL), GT_EINVAL);
    gt_sessions_free(&s);
    gt_strv_free(&l.sentinels);
}

static void test_del(void **state)
{
    (void)state;
    live l;
    LIVE(l);
    gt_sessions *s = open_live(&l);
    gt_error e = {0};
    assert_int_equal(gt_sessions_set(s, "d", "x", 60000, &e), GT_OK);
    assert_int_equal(gt_sessions_del(s, "d", &e), GT_OK);
    want_absent(s, "d");
    assert_int_equal(gt_sessions_del(s, "d", &e), GT_OK);
    assert_int_equal(gt_sessions_del(s, "never-there", &e), GT_OK);
    assert_int_equal(e.code, GT_OK);
    gt_sessions_free(&s);
    gt_strv_free(&l.sentinels);
}

static void test_incr(void **state)
{
    (void)state;
    live l;
    LIVE(l);
    gt_sessions *s = open_live(&l);
    gt_error e = {0};
    int64_t v = 0;
    char key[256];
    snprintf(key, sizeof key, "%srate", l.prefix);

    for (int i = 1; i <= 3; i++) {
        assert_int_equal(gt_sessions_incr(s, "rate", 500, &v, &e), GT_OK);
        assert_int_equal(v, i);
    }
    long long pttl = raw_int(gt_sessions_master(s), "PTTL %s", key);
    assert_true(pttl > 0 && pttl <= 500);
    sleep_ms(200);
    assert_int_equal(gt_sessions_incr(s, "rate", 500, &v, &e), GT_OK);
    assert_int_equal(v, 4);
    pttl = raw_int(gt_sessions_master(s), "PTTL %s", key);
    assert_true(pttl > 0 && pttl <= 320);   /* the window was not extended */
    sleep_ms(400);
    assert_int_equal(gt_sessions_incr(s, "rate", 500, &v, &e), GT_OK);
    assert_int_equal(v, 1);                 /* a new window */

    assert_int_equal(gt_sessions_incr(s, "count", 0, &v, &e), GT_OK);
    assert_int_equal(gt_sessions_incr(s, "count", 0, &v, &e), GT_OK);
    assert_int_equal(v, 2);
    snprintf(key, sizeof key, "%scount", l.prefix);
    assert_int_equal(raw_int(gt_sessions_master(s), "PTTL %s", key), -1);

    assert_int_equal(gt_sessions_set(s, "text", "abc", 60000, &e), GT_OK);
    assert_int_equal(gt_sessions_incr(s, "text", 500, &v, &e), GT_EIO);
    assert_non_null(strstr(e.message, "not an integer"));
    gt_error_clear(&e);
    assert_int_equal(gt_sessions_incr(s, "text", 0, &v, &e), GT_EIO);

    gt_sessions_del(s, "rate", NULL);
    gt_sessions_del(s, "count", NULL);
    gt_sessions_del(s, "text", NULL);
    gt_sessions_free(&s);
    gt_strv_free(&l.sentinels);
}

static void test_sets(void **state)
{
    (void)state;
    live l;
    LIVE(l);
    gt_sessions *s = open_live(&l);
    gt_error e = {0};
    gt_strv m = {0};
    char key[256];
    snprintf(key, sizeof key, "%skeys", l.prefix);

    assert_int_equal(gt_sessions_smembers(s, "keys", &m, &e), GT_OK);
    assert_int_equal(m.n, 0);
    const char *members[] = {"b", "a", "c with space", "a"};
    for (size_t i = 0; i < 4; i++)
        assert_int_equal(gt_sessions_sadd(s, "keys", members[i], 5000, &e), GT_OK);
    long long pttl = raw_int(gt_sessions_master(s), "PTTL %s", key);
    assert_true(pttl > 0 && pttl <= 5000);
    assert_int_equal(gt_sessions_smembers(s, "keys", &m, &e), GT_OK);
    assert_int_equal(m.n, 3);
    qsort(m.v, m.n, sizeof *m.v, strv_cmp);
    assert_string_equal(m.v[0], "a");
    assert_string_equal(m.v[1], "b");
    assert_string_equal(m.v[2], "c with space");
    assert_null(m.v[3]);
    gt_strv_free(&m);

    assert_int_equal(gt_sessions_srem(s, "keys", "b", &e), GT_OK);
    assert_int_equal(gt_sessions_srem(s, "keys", "not a member", &e), GT_OK);
    assert_int_equal(gt_sessions_srem(s, "no such set", "x", &e), GT_OK);
    assert_int_equal(gt_sessions_smembers(s, "keys", &m, &e), GT_OK);
    assert_int_equal(m.n, 2);
    qsort(m.v, m.n, sizeof *m.v, strv_cmp);
    assert_string_equal(m.v[0], "a");
    assert_string_equal(m.v[1], "c with space");
    gt_strv_free(&m);

    assert_int_equal(gt_sessions_sadd(s, "plain", "x", 0, &e), GT_OK);
    snprintf(key, sizeof key, "%splain", l.prefix);
    assert_int_equal(raw_int(gt_sessions_master(s), "PTTL %s", key), -1);

    /* a string key is not a set: an error, and nothing added to m */
    assert_int_equal(gt_sessions_set(s, "str", "v", 60000, &e), GT_OK);
    assert_int_equal(gt_sessions_smembers(s, "str", &m, &e), GT_EIO);
    assert_non_null(strstr(e.message, "WRONGTYPE"));
    assert_int_equal(m.n, 0);
    gt_error_clear(&e);
    assert_int_equal(gt_sessions_sadd(s, "str", "x", 1000, &e), GT_EIO);
    assert_non_null(strstr(e.message, "WRONGTYPE"));

    gt_sessions_del(s, "keys", NULL);
    gt_sessions_del(s, "plain", NULL);
    gt_sessions_del(s, "str", NULL);
    gt_sessions_free(&s);
    gt_strv_free(&l.sentinels);
}

static void test_ping_and_discovery(void **state)
{
    (void)state;
    live l;
    LIVE(l);
    gt_error e = {0};
    gt_sessions *s = open_live(&l);
    assert_int_equal(gt_sessions_ping(s, &e), GT_OK);
    if (l.redis)
        assert_string_equal(gt_sessions_master(s), l.redis);
    gt_sessions_free(&s);

    /* a dead sentinel first in the list is skipped */
    char dead[64];
    snprintf(dead, sizeof dead, "127.0.0.1:%d", closed_port());
    gt_strv list = {0};
    gt_strv_push(&list, dead);
    for (size_t i = 0; i < l.sentinels.n; i++)
        gt_strv_push(&list, l.sentinels.v[i]);
    gt_sessions_config cfg = live_cfg(&l);
    cfg.sentinels = list.v;
    s = gt_sessions_new(&cfg, &e);
    if (s == NULL)
        fail_msg("with a dead sentinel first: %s", e.message);
    assert_int_equal(gt_sessions_ping(s, &e), GT_OK);
    gt_sessions_free(&s);
    gt_strv_free(&list);

    /* sentinels that do not know the name */
    cfg = live_cfg(&l);
    cfg.master_name = "no-such-master";
    assert_null(gt_sessions_new(&cfg, &e));
    assert_int_equal(e.code, GT_EUNAVAIL);
    assert_non_null(strstr(e.message, "does not know a master named \"no-such-master\""));
    assert_non_null(strstr(e.message, l.sentinels.v[0]));

    /* a password the server does not expect: refused, and never printed */
    cfg = live_cfg(&l);
    cfg.password = "hunter2-secret";
    gt_error_clear(&e);
    assert_null(gt_sessions_new(&cfg, &e));
    printf("# with a password: %s\n", e.message);
    assert_int_equal(e.code, GT_EUNAVAIL);
    assert_non_null(strstr(e.message, "AUTH"));
    assert_null(strstr(e.message, "hunter2"));
    gt_strv_free(&l.sentinels);
}

static void test_prefix(void **state)
{
    (void)state;
    live l;
    LIVE(l);
    gt_sessions_config cfg = live_cfg(&l);
    char p1[160], p2[160], key[256];
    gt_error e = {0};
    snprintf(p1, sizeof p1, "%sone:", l.prefix);
    snprintf(p2, sizeof p2, "%stwo:", l.prefix);
    cfg.prefix = p1;
    gt_sessions *s1 = gt_sessions_new(&cfg, &e);
    cfg.prefix = p2;
    gt_sessions *s2 = gt_sessions_new(&cfg, &e);
    assert_non_null(s1);
    assert_non_null(s2);
    assert_int_equal(gt_sessions_set(s1, "k", "from one", 60000, &e), GT_OK);
    want_absent(s2, "k");
    want_value(s1, "k", "from one");
    snprintf(key, sizeof key, "%sk", p1);
    char *v = raw_str(gt_sessions_master(s1), "GET %s", key);
    assert_string_equal(v, "from one");
    free(v);
    assert_null(raw_str(gt_sessions_master(s1), "GET k"));
    gt_sessions_del(s1, "k", NULL);
    gt_sessions_free(&s1);
    gt_sessions_free(&s2);
    gt_strv_free(&l.sentinels);
}

static void test_single_host(void **state)
{
    (void)state;
    live l;
    LIVE(l);
    if (l.redis == NULL)
        fail_msg("GANTRY_TEST_REDIS unset");
    gt_sessions_config cfg = host_cfg(&l, l.redis);
    cfg.db = 3;
    gt_error e = {0};
    char key[256];
    gt_sessions *s = gt_sessions_new(&cfg, &e);
    if (s == NULL)
        fail_msg("single host: %s", e.message);
    assert_string_equal(gt_sessions_master(s), l.redis);
    assert_int_equal(gt_sessions_ping(s, &e), GT_OK);
    assert_int_equal(gt_sessions_set(s, "db3", "yes", 60000, &e), GT_OK);
    want_value(s, "db3", "yes");
    /* SELECT took effect: db 0 does not have it, db 3 does */
    snprintf(key, sizeof key, "%sdb3", l.prefix);
    assert_int_equal(raw_int(l.redis, "EXISTS %s", key), 0);
    redisContext *c = raw(l.redis);
    redisReply *r = redisCommand(c, "SELECT 3");
    freeReplyObject(r);
    r = redisCommand(c, "EXISTS %s", key);
    assert_int_equal(r->integer, 1);
    freeReplyObject(r);
    redisFree(c);
    assert_int_equal(gt_sessions_del(s, "db3", &e), GT_OK);
    gt_sessions_free(&s);
    gt_strv_free(&l.sentinels);
}

/* The server drops our connection: the next command reconnects and succeeds. */
static void test_reconnect(void **state)
{
    (void)state;
    live l;
    LIVE(l);
    gt_sessions *s = open_live(&l);
    gt_error e = {0};
    const char *m = gt_sessions_master(s);
    assert_int_equal(gt_sessions_set(s, "r", "v", 60000, &e), GT_OK);
    /* kill every unnamed normal client (ours) but the killer; sentinels name theirs */
    redisContext *c = raw(m);
    redisReply *me = redisCommand(c, "CLIENT ID");
    redisReply *list = redisCommand(c, "CLIENT LIST TYPE normal");
    assert_non_null(list);
    int killed = 0;
    char *save = NULL;
    for (char *line = strtok_r(list->str, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        long long id = strtoll(line + 3, NULL, 10);
        if (id == me->integer || strstr(line, " name= ") == NULL)
            continue;
        redisReply *k = redisCommand(c, "CLIENT KILL ID %lld", id);
        killed += k && k->type == REDIS_REPLY_INTEGER ? (int)k->integer : 0;
        freeReplyObject(k);
    }
    freeReplyObject(list);
    freeReplyObject(me);
    redisFree(c);
    assert_true(killed >= 1);
    char *before = gt_xstrdup(m);
    want_value(s, "r", "v");
    assert_string_equal(gt_sessions_master(s), before);
    assert_int_equal(gt_sessions_del(s, "r", &e), GT_OK);
    free(before);
    gt_sessions_free(&s);
    gt_strv_free(&l.sentinels);
}

/* A replica as the single host: reads work, a write meets READONLY, is retried once
 * on the (same) rediscovered node and then reported. */
static void test_readonly_replica(void **state)
{
    (void)state;
    live l;
    LIVE(l);
    char replica[300] = "";
    redisContext *c = raw(l.sentinels.v[0]);
    redisReply *r = redisCommand(c, "SENTINEL REPLICAS %s", l.master_name);
    for (size_t j = 0; r && r->type == REDIS_REPLY_ARRAY && j < r->elements && !replica[0]; j++) {
        const redisReply *f = r->element[j];
        const char *ip = NULL, *port = NULL;
        for (size_t k = 0; k + 1 < f->elements; k += 2) {
            if (strcmp(f->element[k]->str, "ip") == 0)
                ip = f->element[k + 1]->str;
            if (strcmp(f->element[k]->str, "port") == 0)
                port = f->element[k + 1]->str;
        }
        if (ip && port)
            snprintf(replica, sizeof replica, "%s:%s", ip, port);
    }
    freeReplyObject(r);
    redisFree(c);
    if (!replica[0])
        fail_msg("no replica known to %s", l.sentinels.v[0]);

    gt_sessions_config cfg = host_cfg(&l, replica);
    gt_error e = {0};
    char *v = NULL;
    int64_t n = 0;
    gt_sessions *s = gt_sessions_new(&cfg, &e);
    if (s == NULL)
        fail_msg("replica %s: %s", replica, e.message);
    assert_int_equal(gt_sessions_get(s, "nothing", &v, &e), GT_ENOTFOUND);
    gt_error_clear(&e);
    assert_int_equal(gt_sessions_set(s, "k", "v", 1000, &e), GT_EUNAVAIL);
    printf("# write on a replica: %s\n", e.message);
    assert_non_null(strstr(e.message, "READONLY"));
    assert_non_null(strstr(e.message, "(after: "));
    gt_error_clear(&e);
    assert_int_equal(gt_sessions_get_touch(s, "k", 1000, &v, &e), GT_EUNAVAIL);
    assert_non_null(strstr(e.message, "READONLY"));
    assert_null(v);
    gt_error_clear(&e);
    assert_int_equal(gt_sessions_incr(s, "k", 1000, &n, &e), GT_EUNAVAIL);
    assert_non_null(strstr(e.message, "READONLY"));
    gt_sessions_free(&s);

    /* through a sentinel the same node is never taken for the master */
    gt_sessions_config scfg = live_cfg(&l);
    gt_error_clear(&e);
    s = gt_sessions_new(&scfg, &e);
    assert_non_null(s);
    assert_string_not_equal(gt_sessions_master(s), replica);
    gt_sessions_free(&s);
    gt_strv_free(&l.sentinels);
}

/* ---- failover --------------------------------------------------------------------- */

/* SENTINEL FAILOVER through the first sentinel, retrying while it says a failover
 * is in progress or no replica is good yet (right after the previous one). */
static void force_failover(const live *l)
{
    int64_t deadline = gt_mono_ms() + 60000;
    char last[256] = "";
    while (gt_mono_ms() < deadline) {
        redisContext *c = raw(l->sentinels.v[0]);
        redisReply *r = redisCommand(c, "SENTINEL FAILOVER %s", l->master_name);
        bool ok = r && r->type == REDIS_REPLY_STATUS;
        snprintf(last, sizeof last, "%s", r && r->str ? r->str : c->errstr);
        freeReplyObject(r);
        redisFree(c);
        if (ok)
            return;
        sleep_ms(500);
    }
    fail_msg("SENTINEL FAILOVER never accepted: %s", last);
}

/* Writes through s until a write succeeds on a master other than (want == NULL) or
 * equal to want, then returns the master; bounded. */
static char *write_until_master(gt_sessions *s, const char *old, const char *want)
{
    int64_t t0 = gt_mono_ms();
    int errors = 0;
    char last[1024] = "";
    while (gt_mono_ms() - t0 < 60000) {
        gt_error e = {0};
        gt_err rc = gt_sessions_set(s, "fo:after", "written", 120000, &e);
        const char *m = gt_sessions_master(s);
        if (rc == GT_OK && (want ? strcmp(m, want) == 0 : strcmp(m, old) != 0)) {
            printf("# master %s -> %s after %lld ms (%d failed writes; last: %s)\n", old, m,
                   (long long)(gt_mono_ms() - t0), errors, last[0] ? last : "none");
            return gt_xstrdup(m);
        }
        if (rc != GT_OK) {
            errors++;
            snprintf(last, sizeof last, "%s", e.message);
        }
        sleep_ms(100);
    }
    fail_msg("no write reached a new master within 60 s (last error: %s)", last);
    return NULL;
}

/* Every sentinel names want as the master and sees a replica in sync. */
static void wait_stable(const live *l, const char *want)
{
    int64_t deadline = gt_mono_ms() + 60000;
    while (gt_mono_ms() < deadline) {
        bool ok = true;
        for (size_t i = 0; ok && i < l->sentinels.n; i++) {
            redisContext *c = raw(l->sentinels.v[i]);
            redisReply *r = redisCommand(c, "SENTINEL get-master-addr-by-name %s", l->master_name);
            char addr[300] = "";
            if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 2)
                snprintf(addr, sizeof addr, "%s:%s", r->element[0]->str, r->element[1]->str);
            ok = strcmp(addr, want) == 0;
            freeReplyObject(r);
            r = redisCommand(c, "SENTINEL REPLICAS %s", l->master_name);
            bool synced = false;
            for (size_t j = 0; ok && r && r->type == REDIS_REPLY_ARRAY && j < r->elements; j++) {
                const redisReply *f = r->element[j];
                bool slave = false, link = false;
                for (size_t k = 0; k + 1 < f->elements; k += 2) {
                    if (strcmp(f->element[k]->str, "flags") == 0)
                        slave = strcmp(f->element[k + 1]->str, "slave") == 0;
                    if (strcmp(f->element[k]->str, "master-link-status") == 0)
                        link = strcmp(f->element[k + 1]->str, "ok") == 0;
                }
                synced = synced || (slave && link);
            }
            ok = ok && synced;
            freeReplyObject(r);
            redisFree(c);
        }
        if (ok)
            return;
        sleep_ms(250);
    }
    fail_msg("the sentinels did not settle on %s with a replica in sync within 60 s", want);
}

static void test_failover(void **state)
{
    (void)state;
    live l;
    LIVE(l);
    gt_sessions *s = open_live(&l);
    gt_error e = {0};
    char *m0 = gt_xstrdup(gt_sessions_master(s));
    wait_stable(&l, m0);

    assert_int_equal(gt_sessions_set(s, "fo:before", "kept", 120000, &e), GT_OK);
    assert_int_equal(gt_sessions_sadd(s, "fo:set", "member", 120000, &e), GT_OK);
    /* the replica has it before the failover starts */
    assert_true(raw_int(m0, "WAIT 1 5000") >= 1);

    force_failover(&l);
    char *m1 = write_until_master(s, m0, NULL);
    assert_string_not_equal(m1, m0);
    want_value(s, "fo:before", "kept");
    want_value(s, "fo:after", "written");
    gt_strv m = {0};
    assert_int_equal(gt_sessions_smembers(s, "fo:set", &m, &e), GT_OK);
    assert_int_equal(m.n, 1);
    gt_strv_free(&m);
    int64_t v = 0;
    assert_int_equal(gt_sessions_incr(s, "fo:n", 120000, &v, &e), GT_OK);
    assert_int_equal(gt_sessions_ping(s, &e), GT_OK);

    /* back to the first master, so later tests see the cluster they started with */
    wait_stable(&l, m1);
    assert_true(raw_int(m1, "WAIT 1 5000") >= 1);
    force_failover(&l);
    char *m2 = write_until_master(s, m1, m0);
    assert_string_equal(m2, m0);
    want_value(s, "fo:before", "kept");
    wait_stable(&l, m0);

    gt_sessions_del(s, "fo:before", NULL);
    gt_sessions_del(s, "fo:after", NULL);
    gt_sessions_del(s, "fo:set", NULL);
    gt_sessions_del(s, "fo:n", NULL);
    free(m0);
    free(m1);
    free(m2);
    gt_sessions_free(&s);
    gt_strv_free(&l.sentinels);
}

/* ---- authentication --------------------------------------------------------------- */

/* Redis and the sentinels of the test harness require AUTH (as production should): without
 * credentials nothing is read or written, with the app's everything works, and the app's
 * ACL user cannot touch keys outside its prefix. */
static void test_auth_required(void **state)
{
    (void)state;
    live l;
    LIVE(l);
    if (l.password == NULL || l.sentinel_password == NULL) {
        printf("SKIPPED: the test servers do not require AUTH (GANTRY_TEST_REDIS_PASSWORD or "
               "GANTRY_TEST_SENTINEL_PASSWORD unset)\n");
        gt_strv_free(&l.sentinels);
        skip();
        return;
    }
    gt_error e = {0};
    gt_sessions_config cfg = live_cfg(&l);
    cfg.sentinel_password = NULL;
    assert_null(gt_sessions_new(&cfg, &e));
    printf("# sentinels without AUTH: %s\n", e.message);
    assert_int_equal(e.code, GT_EUNAVAIL);
    assert_non_null(strstr(e.message, "NOAUTH"));

    cfg = live_cfg(&l);
    cfg.password = NULL;
    gt_error_clear(&e);
    assert_null(gt_sessions_new(&cfg, &e));
    printf("# master without AUTH: %s\n", e.message);
    assert_non_null(strstr(e.message, "NOAUTH"));

    cfg = live_cfg(&l);
    cfg.sentinel_password = "not-the-sentinel-password";
    gt_error_clear(&e);
    assert_null(gt_sessions_new(&cfg, &e));
    assert_non_null(strstr(e.message, "AUTH"));
    assert_null(strstr(e.message, "not-the-sentinel-password"));

    /* The app's user is confined to its keys. */
    cfg = live_cfg(&l);
    cfg.prefix = "other:";
    gt_sessions *s = gt_sessions_new(&cfg, &e);
    assert_non_null(s);
    gt_error_clear(&e);
    assert_int_not_equal(gt_sessions_set(s, "k", "v", 1000, &e), GT_OK);
    assert_non_null(strstr(e.message, "NOPERM"));
    gt_sessions_free(&s);
    gt_strv_free(&l.sentinels);
}

/* ---- session records -------------------------------------------------------------- */

#define HASH_A "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
#define HASH_B "1123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

static gt_sessions *open_signed(const live *l, unsigned char fill)
{
    gt_sessions_config cfg = live_cfg(l);
    cfg.signing_key_set = true;
    memset(cfg.signing_key, fill, sizeof cfg.signing_key);
    gt_error e = {0};
    gt_sessions *s = gt_sessions_new(&cfg, &e);
    if (s == NULL)
        fail_msg("gt_sessions_new: %s", e.message);
    return s;
}

/* A record as sealed, with one member replaced by a JSON value (NULL: removed). */
static char *tampered(const char *text, const char *member, const char *json)
{
    cJSON *o = cJSON_Parse(text);
    assert_non_null(o);
    cJSON_DeleteItemFromObjectCaseSensitive(o, member);
    if (json)
        cJSON_AddItemToObject(o, member, cJSON_Parse(json));
    char *out = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return out;
}

static void want_forged(const gt_sessions *s, const char *hash, const char *text)
{
    gt_session_record r;
    gt_error e = {0};
    gt_err rc = gt_sessions_open(s, hash, text, &r, &e);
    if (rc != GT_ECRYPTO)
        fail_msg("want GT_ECRYPTO for %s, got %d (%s)", text, rc, e.message);
}

/* Only the holder of the signing key makes a record a controller believes: a record
 * written by someone with Redis access alone, altered, moved to another token, or signed
 * under another key does not open. */
static void test_record_mac(void **state)
{
    (void)state;
    live l;
    LIVE(l);
    gt_sessions *s = open_signed(&l, 0x11);
    gt_sessions *other = open_signed(&l, 0x22);
    gt_error e = {0};
    gt_session_record in = {.must_change_password = false, .expires_at = 1700000000123LL};
    snprintf(in.user, sizeof in.user, "alice");
    snprintf(in.role, sizeof in.role, "viewer");
    snprintf(in.kind, sizeof in.kind, "login");
    char *text = NULL;
    assert_int_equal(gt_sessions_seal(s, HASH_A, &in, &text, &e), GT_OK);
    assert_non_null(strstr(text, "\"mac\":\""));
    gt_session_record out;
    assert_int_equal(gt_sessions_open(s, HASH_A, text, &out, &e), GT_OK);
    assert_string_equal(out.user, "alice");
    assert_string_equal(out.role, "viewer");
    assert_string_equal(out.kind, "login");
    assert_false(out.must_change_password);
    assert_int_equal(out.expires_at, 1700000000123LL);

    /* the attack: a record written straight into Redis, without any MAC */
    want_forged(s, HASH_A, "{\"user\":\"x\",\"role\":\"admin\",\"kind\":\"login\","
                           "\"must_change_password\":false,\"expires_at\":9999999999999}");
    gt_error_clear(&e);
    gt_sessions_open(s, HASH_A, "{\"user\":\"x\",\"role\":\"admin\",\"kind\":\"login\","
                                "\"expires_at\":1}", &out, &e);
    assert_non_null(strstr(e.message, "no signature"));
    /* each field is covered */
    static const struct { const char *member, *json; } edits[] = {
        {"user", "\"bob\""}, {"role", "\"admin\""}, {"kind", "\"apikey\""},
        {"must_change_password", "true"}, {"expires_at", "1700000000124"},
        {"mac", "\"0000000000000000000000000000000000000000000000000000000000000000\""},
        {"mac", "\"abc\""},
    };
    for (size_t i = 0; i < sizeof edits / sizeof edits[0]; i++) {
        char *t = tampered(text, edits[i].member, edits[i].json);
        want_forged(s, HASH_A, t);
        free(t);
    }
    /* moved to another token's key; opened under another key */
    want_forged(s, HASH_B, text);
    want_forged(other, HASH_A, text);
    /* not a record at all */
    static const char *const junk[] = {"", "[]", "{}", "{\"user\":\"a\"}", "null",
                                       "{\"user\":\"a\",\"role\":\"viewer\",\"kind\":\"login\"}"};
    for (size_t i = 0; i < sizeof junk / sizeof junk[0]; i++) {
        gt_error_clear(&e);
        assert_int_equal(gt_sessions_open(s, HASH_A, junk[i], &out, &e), GT_EINVAL);
        assert_string_equal(out.user, "");
    }
    free(text);

    /* without a key nothing is sealed or opened */
    gt_sessions *unsigned_s = open_live(&l);
    gt_error_clear(&e);
    assert_int_equal(gt_sessions_seal(unsigned_s, HASH_A, &in, &text, &e), GT_EINVAL);
    assert_null(text);
    assert_non_null(strstr(e.message, "signing_key_file"));
    gt_sessions_free(&unsigned_s);
    gt_sessions_free(&other);
    gt_sessions_free(&s);
    gt_strv_free(&l.sentinels);
}

/* The key comes from the key file and the cluster id: the same file gives each cluster
 * its own key; short material is refused. */
static void test_derive_key(void **state)
{
    (void)state;
    unsigned char a[GT_SESSIONS_KEY_LEN], b[GT_SESSIONS_KEY_LEN], c[GT_SESSIONS_KEY_LEN];
    const char material[] = "0123456789abcdef0123456789abcdef-some-key-file";
    gt_error e = {0};
    assert_int_equal(gt_sessions_derive_key(material, strlen(material), "c1", a, &e), GT_OK);
    assert_int_equal(gt_sessions_derive_key(material, strlen(material), "c1", b, &e), GT_OK);
    assert_memory_equal(a, b, sizeof a);
    assert_int_equal(gt_sessions_derive_key(material, strlen(material), "c2", c, &e), GT_OK);
    assert_memory_not_equal(a, c, sizeof a);
    assert_int_equal(gt_sessions_derive_key(material, 31, "c1", c, &e), GT_EINVAL);
    assert_memory_not_equal(a, material, sizeof a); /* not the material itself */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_invalid),
        cmocka_unit_test(test_bad_sentinels),
        cmocka_unit_test(test_unreachable_host),
        cmocka_unit_test(test_set_get_expiry),
        cmocka_unit_test(test_get_touch),
        cmocka_unit_test(test_expire),
        cmocka_unit_test(test_del),
        cmocka_unit_test(test_incr),
        cmocka_unit_test(test_sets),
        cmocka_unit_test(test_ping_and_discovery),
        cmocka_unit_test(test_prefix),
        cmocka_unit_test(test_single_host),
        cmocka_unit_test(test_reconnect),
        cmocka_unit_test(test_readonly_replica),
        cmocka_unit_test(test_derive_key),
        cmocka_unit_test(test_auth_required),
        cmocka_unit_test(test_record_mac),
        cmocka_unit_test(test_failover),   /* last: it moves the master and back */
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
