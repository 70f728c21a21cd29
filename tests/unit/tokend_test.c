/* gantry-tokend's logic, through gt_tokend_handle as the bus would call it, against a
 * memory store and a real Redis (GANTRY_TEST_REDIS = "127.0.0.1:port", with
 * GANTRY_TEST_REDIS_USERNAME/_PASSWORD and GANTRY_TEST_REDIS_ADMIN_PASSWORD when it
 * requires AUTH; SKIPPED without it). Time is a fake clock, so the throttling sequences
 * run without sleeping. Every reply is checked for secrets, and so is everything logged:
 * no password, not even the first admin's, which goes to a file of its own.
 *
 * tokend.c lives in services/tokend/ and unit tests link only libgantry.a, so it is
 * compiled into this test directly. */
#include "../../services/tokend/tokend.c"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <hiredis/hiredis.h>

#define T0 1700000000000LL
#define MIN_MS 60000LL
#define CONTROLLER "gantry-controller"

typedef struct fixture {
    gt_store *store;
    gt_sessions *sessions;
    gt_tokend *t;
    int64_t now;
    char prefix[64];
    redisContext *redis;       /* direct, for TTLs and raw keys */
    FILE *log;
    gt_strv secrets;           /* must appear in no reply but their own, nor in logs */
    char dir[64];              /* a temporary working dir: the admin password file */
    char pwfile[128];
    const char *caller;        /* the broker user requests come from */
} fixture;

static char *const controllers[] = {CONTROLLER, "gantry-controller-2", NULL};

static const char *env_or_null(const char *name)
{
    const char *v = getenv(name);
    return v && v[0] ? v : NULL;
}

static const char *redis_addr(void)
{
    const char *a = getenv("GANTRY_TEST_REDIS");
    return a && *a ? a : NULL;
}

static int64_t fake_clock(void *arg)
{
    return ((fixture *)arg)->now;
}

static int setup(void **state)
{
    const char *addr = redis_addr();
    if (addr == NULL) {
        *state = NULL;
        return 0;
    }
    fixture *f = gt_xcalloc(1, sizeof *f);
    gt_error err = {0};
    f->now = T0;
    unsigned char rnd[6];
    assert_int_equal(gt_random_bytes(rnd, sizeof rnd, NULL), GT_OK);
    snprintf(f->prefix, sizeof f->prefix, "gantry-test:%02x%02x%02x%02x%02x%02x:", rnd[0],
             rnd[1], rnd[2], rnd[3], rnd[4], rnd[5]);
    f->log = tmpfile();
    assert_non_null(f->log);
    gt_log_setup(f->log, GT_LOG_DEBUG, false, "tokend-test");

    f->caller = CONTROLLER;
    snprintf(f->dir, sizeof f->dir, "/tmp/gantry-tokend-test-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->pwfile, sizeof f->pwfile, "%s/initial-admin-password", f->dir);
    f->store = gt_store_open_memory(&err);
    assert_non_null(f->store);
    gt_sessions_config sc = {.host = addr, .prefix = f->prefix,
                             .username = env_or_null("GANTRY_TEST_REDIS_USERNAME"),
                             .password = env_or_null("GANTRY_TEST_REDIS_PASSWORD"),
                             .signing_key_set = true};
    assert_int_equal(gt_random_bytes(sc.signing_key, sizeof sc.signing_key, NULL), GT_OK);
    f->sessions = gt_sessions_new(&sc, &err);
    if (f->sessions == NULL)
        fail_msg("cannot reach Redis at %s: %s", addr, err.message);
    gt_tokend_config tc = {
        .store = f->store,
        .sessions = f->sessions,
        .token_ttl_ms = 60 * MIN_MS,
        .api_key_ttl_ms = 1440 * MIN_MS,
        .clock_ms = fake_clock,
        .clock_arg = f,
        .controller_users = controllers,
        .admin_password_file = f->pwfile,
    };
    f->t = gt_tokend_new(&tc, &err);
    assert_non_null(f->t);

    char host[64];
    snprintf(host, sizeof host, "%s", addr);
    char *colon = strrchr(host, ':');
    assert_non_null(colon);
    *colon = '\0';
    f->redis = redisConnect(host, atoi(colon + 1));
    assert_true(f->redis && !f->redis->err);
    const char *admin = env_or_null("GANTRY_TEST_REDIS_ADMIN_PASSWORD");
    if (admin) {
        redisReply *r = redisCommand(f->redis, "AUTH %s", admin);
        assert_true(r && r->type != REDIS_REPLY_ERROR);
        freeReplyObject(r);
    }
    *state = f;
    return 0;
}

/* Everything logged during the test; the caller frees. */
static char *log_text(fixture *f)
{
    fflush(f->log);
    long n = ftell(f->log);
    assert_true(n >= 0);
    char *text = gt_xcalloc(1, (size_t)n + 1);
    rewind(f->log);
    assert_int_equal(fread(text, 1, (size_t)n, f->log), (size_t)n);
    fseek(f->log, 0, SEEK_END);
    return text;
}

/* Everything logged during the test, with no secret in it at all. */
static void check_log(fixture *f)
{
    char *text = log_text(f);
    assert_null(strstr(text, "$argon2"));
    for (size_t i = 0; i < f->secrets.n; i++)
        if (strstr(text, f->secrets.v[i]))
            fail_msg("secret found in the log: %s", text);
    free(text);
}

static int teardown(void **state)
{
    fixture *f = *state;
    if (f == NULL)
        return 0;
    /* The stored hashes, and the sessions' hashes, are secrets as well. */
    gt_store_page page = {0};
    assert_int_equal(gt_store_query(f->store, USERS, NULL, NULL, NULL, 1000, &page, NULL), GT_OK);
    for (size_t i = 0; i < page.n; i++) {
        cJSON *doc = cJSON_Parse(page.items[i].body);
        gt_strv_push(&f->secrets,
                     cJSON_GetObjectItemCaseSensitive(doc, "password_hash")->valuestring);
        cJSON_Delete(doc);
    }
    gt_store_page_clear(&page);
    /* Leave nothing behind in the shared Redis, even when the log check fails. */
    redisReply *r = redisCommand(f->redis, "KEYS %s*", f->prefix);
    for (size_t i = 0; r && i < r->elements; i++)
        freeReplyObject(redisCommand(f->redis, "DEL %s", r->element[i]->str));
    freeReplyObject(r);
    check_log(f);
    gt_log_setup(NULL, GT_LOG_INFO, false, "tokend-test");
    fclose(f->log);
    redisFree(f->redis);
    gt_tokend_free(&f->t);
    gt_sessions_free(&f->sessions);
    gt_store_free(&f->store);
    gt_strv_free(&f->secrets);
    unlink(f->pwfile);
    rmdir(f->dir);
    free(f);
    return 0;
}

#define FIXTURE(state)                                                           \
    fixture *f = *(state);                                                       \
    if (f == NULL) {                                                             \
        skip();                                                                  \
        return;                                                                  \
    }

/* ---- helpers ---- */

static void add_secret(fixture *f, const char *s)
{
    gt_strv_push(&f->secrets, s);
}

static cJSON *call_raw(fixture *f, const char *body, size_t len)
{
    char *reply = NULL;
    size_t rlen = 0;
    assert_int_equal(gt_tokend_handle(f->t, f->caller, body, len, &reply, &rlen), GT_OK);
    assert_non_null(reply);
    assert_int_equal(strlen(reply), rlen);
    assert_null(strstr(reply, "$argon2"));
    cJSON *r = cJSON_Parse(reply);
    assert_non_null(r);
    const cJSON *ok = cJSON_GetObjectItemCaseSensitive(r, "ok");
    assert_true(cJSON_IsBool(ok));
    if (!cJSON_IsTrue(ok)) {
        /* An error carries no password, token or hash. */
        for (size_t i = 0; i < f->secrets.n; i++)
            if (strstr(reply, f->secrets.v[i]))
                fail_msg("secret in an error reply: %s", reply);
        const cJSON *e = cJSON_GetObjectItemCaseSensitive(r, "error");
        assert_true(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(e, "code")));
        assert_true(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(e, "message")));
    }
    free(reply);
    return r;
}

static cJSON *call(fixture *f, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static cJSON *call(fixture *f, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char buf[4096];
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return call_raw(f, buf, strlen(buf));
}

static void expect_ok(cJSON *r)
{
    if (!cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(r, "ok"))) {
        char *s = cJSON_PrintUnformatted(r);
        fail_msg("expected ok, got %s", s);
    }
}

/* Asserts the reply is the error code (and field, when given); returns its message. */
static const char *expect_err(cJSON *r, const char *code, const char *field)
{
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(r, "error");
    if (!cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(r, "ok")) || e == NULL) {
        char *s = cJSON_PrintUnformatted(r);
        fail_msg("expected error %s, got %s", code, s);
    }
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(e, "code")->valuestring, code);
    const cJSON *fl = cJSON_GetObjectItemCaseSensitive(e, "field");
    if (field) {
        assert_true(cJSON_IsString(fl));
        assert_string_equal(fl->valuestring, field);
    }
    return cJSON_GetObjectItemCaseSensitive(e, "message")->valuestring;
}

static void expect_ok_free(cJSON *r)
{
    expect_ok(r);
    cJSON_Delete(r);
}

static void expect_err_free(cJSON *r, const char *code, const char *field)
{
    expect_err(r, code, field);
    cJSON_Delete(r);
}

static int64_t retry_after(const cJSON *r)
{
    const cJSON *ra = cJSON_GetObjectItemCaseSensitive(r, "retry_after");
    assert_true(cJSON_IsNumber(ra));
    return (int64_t)ra->valuedouble;
}

static const char *str_of(const cJSON *r, const char *key)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(r, key);
    if (!cJSON_IsString(it))
        fail_msg("no string %s", key);
    return it->valuestring;
}

static void create_user(fixture *f, const char *name, const char *role, const char *pw)
{
    add_secret(f, pw);
    expect_ok_free(call(f, "{\"op\":\"create_user\",\"username\":\"%s\",\"role\":\"%s\","
                           "\"password\":\"%s\"}", name, role, pw));
}

/* Logs in; returns the token (caller frees). */
static char *login(fixture *f, const char *name, const char *pw)
{
    cJSON *r = call(f, "{\"op\":\"login\",\"username\":\"%s\",\"password\":\"%s\","
                       "\"source\":\"127.0.0.1\"}", name, pw);
    expect_ok(r);
    char *tok = gt_xstrdup(str_of(r, "token"));
    add_secret(f, tok);
    char hex[65];
    gt_sha256_hex(tok, strlen(tok), hex);
    add_secret(f, hex);
    cJSON_Delete(r);
    return tok;
}

static cJSON *login_reply(fixture *f, const char *name, const char *pw, const char *source)
{
    return call(f, "{\"op\":\"login\",\"username\":\"%s\",\"password\":\"%s\","
                   "\"source\":\"%s\"}", name, pw, source);
}

static void token_hash(const char *tok, char hex[65])
{
    gt_sha256_hex(tok, strlen(tok), hex);
}

/* The session document of a token, or NULL when it is gone. */
static cJSON *session_of(fixture *f, const char *tok)
{
    char hex[65];
    token_hash(tok, hex);
    redisReply *r = redisCommand(f->redis, "GET %ssession:%s", f->prefix, hex);
    assert_non_null(r);
    cJSON *s = r->type == REDIS_REPLY_STRING ? cJSON_Parse(r->str) : NULL;
    freeReplyObject(r);
    return s;
}

static long long pttl_of(fixture *f, const char *tok)
{
    char hex[65];
    token_hash(tok, hex);
    redisReply *r = redisCommand(f->redis, "PTTL %ssession:%s", f->prefix, hex);
    assert_true(r && r->type == REDIS_REPLY_INTEGER);
    long long v = r->integer;
    freeReplyObject(r);
    return v;
}

static long long set_size(fixture *f, const char *name)
{
    redisReply *r = redisCommand(f->redis, "SCARD %suser-sessions:%s", f->prefix, name);
    assert_true(r && r->type == REDIS_REPLY_INTEGER);
    long long v = r->integer;
    freeReplyObject(r);
    return v;
}

static int64_t failed_logins(fixture *f, const char *name)
{
    char *body = NULL;
    assert_int_equal(gt_store_get(f->store, USERS, name, &body, NULL, NULL), GT_OK);
    cJSON *doc = cJSON_Parse(body);
    int64_t n = (int64_t)cJSON_GetObjectItemCaseSensitive(doc, "failed_logins")->valuedouble;
    cJSON_Delete(doc);
    free(body);
    return n;
}

/* Overwrites a user's failure counters directly in the store. */
static void set_failures(fixture *f, const char *name, int64_t n, int64_t last_ms)
{
    char *body = NULL;
    int64_t rev = 0;
    assert_int_equal(gt_store_get(f->store, USERS, name, &body, &rev, NULL), GT_OK);
    cJSON *doc = cJSON_Parse(body);
    gt_json_set_num(doc, "failed_logins", (double)n);
    gt_json_set_num(doc, "last_failure_ms", (double)last_ms);
    char *text = gt_json_print(doc);
    assert_int_equal(gt_store_put(f->store, USERS, name, text, rev, NULL, NULL), GT_OK);
    free(text);
    cJSON_Delete(doc);
    free(body);
}

/* The admin password file: mode 0600, a regular file, holding pw and a newline. */
static void check_password_file(fixture *f, const char *pw)
{
    struct stat st;
    assert_int_equal(lstat(f->pwfile, &st), 0);
    assert_true(S_ISREG(st.st_mode));
    assert_int_equal(st.st_mode & 07777, 0600);
    char *text = NULL;
    assert_int_equal(gt_read_file(f->pwfile, 4096, &text, NULL, NULL), GT_OK);
    char *want = gt_xasprintf("%s\n", pw);
    assert_string_equal(text, want);
    free(want);
    free(text);
}

/* ---- tests ---- */

static void test_ping(void **state)
{
    FIXTURE(state);
    cJSON *r = call(f, "{\"op\":\"ping\"}");
    expect_ok(r);
    assert_int_equal(cJSON_GetArraySize(r), 1);
    cJSON_Delete(r);
}

static void test_bootstrap_once(void **state)
{
    FIXTURE(state);
    gt_error err = {0};
    char *pw = NULL;
    assert_int_equal(gt_tokend_bootstrap(f->t, &pw, &err), GT_OK);
    assert_non_null(pw);
    assert_int_equal(strlen(pw), 16);
    add_secret(f, pw);
    /* The password is in a file only its owner reads; the log names the file. */
    check_password_file(f, pw);
    char *logged = log_text(f);
    assert_non_null(strstr(logged, f->pwfile));
    assert_null(strstr(logged, pw));
    free(logged);

    /* Second start: users exist, nothing is created or logged. */
    char *again = (char *)"x";
    assert_int_equal(gt_tokend_bootstrap(f->t, &again, &err), GT_OK);
    assert_null(again);

    cJSON *r = call(f, "{\"op\":\"list_users\"}");
    expect_ok(r);
    const cJSON *items = cJSON_GetObjectItemCaseSensitive(r, "items");
    assert_int_equal(cJSON_GetArraySize(items), 1);
    const cJSON *admin = cJSON_GetArrayItem(items, 0);
    assert_string_equal(str_of(admin, "name"), "admin");
    assert_string_equal(str_of(admin, "role"), "admin");
    assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(admin, "must_change_password")));
    cJSON_Delete(r);

    /* The temporary password works, and the session says it must be changed. */
    r = login_reply(f, "admin", pw, "127.0.0.1");
    expect_ok(r);
    assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(r, "must_change_password")));
    char *tok = gt_xstrdup(str_of(r, "token"));
    add_secret(f, tok);
    cJSON_Delete(r);
    cJSON *s = session_of(f, tok);
    assert_non_null(s);
    assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(s, "must_change_password")));
    cJSON_Delete(s);
    free(tok);
    free(pw);
}

static void test_login(void **state)
{
    FIXTURE(state);
    create_user(f, "alice", "operator", "alice-pass-1");

    cJSON *r = login_reply(f, "alice", "alice-pass-1", "10.1.1.1");
    expect_ok(r);
    const char *tok = str_of(r, "token");
    add_secret(f, tok);
    assert_int_equal(strlen(tok), 43);
    assert_string_equal(str_of(r, "user"), "alice");
    assert_string_equal(str_of(r, "role"), "operator");
    assert_true(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(r, "must_change_password")));
    assert_int_equal((int64_t)cJSON_GetObjectItemCaseSensitive(r, "expires_at_ms")->valuedouble,
                     T0 + 60 * MIN_MS);
    char ts[40];
    gt_format_time(T0 + 60 * MIN_MS, ts, sizeof ts);
    assert_string_equal(str_of(r, "expires_at"), ts);

    /* Redis holds the session under the token's hash, never the token. */
    cJSON *s = session_of(f, tok);
    assert_non_null(s);
    assert_string_equal(str_of(s, "user"), "alice");
    assert_string_equal(str_of(s, "role"), "operator");
    assert_string_equal(str_of(s, "kind"), "login");
    assert_true(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(s, "must_change_password")));
    assert_int_equal((int64_t)cJSON_GetObjectItemCaseSensitive(s, "expires_at")->valuedouble,
                     T0 + 60 * MIN_MS);
    cJSON_Delete(s);
    long long ttl = pttl_of(f, tok);
    assert_true(ttl > 60 * MIN_MS - 10000 && ttl <= 60 * MIN_MS);
    assert_int_equal(set_size(f, "alice"), 1);
    char hex[65];
    token_hash(tok, hex);
    add_secret(f, hex);
    cJSON_Delete(r);

    /* Wrong password and unknown user: the same answer. */
    r = login_reply(f, "alice", "alice-pass-2", "10.1.1.1");
    const char *m1 = expect_err(r, "unauthenticated", NULL);
    assert_string_equal(m1, "invalid username or password");
    assert_null(cJSON_GetObjectItemCaseSensitive(r, "retry_after"));
    cJSON_Delete(r);
    assert_int_equal(failed_logins(f, "alice"), 1);

    r = login_reply(f, "mallory", "alice-pass-1", "10.1.1.1");
    assert_string_equal(expect_err(r, "unauthenticated", NULL), "invalid username or password");
    cJSON_Delete(r);

    /* Both count against the source. */
    redisReply *rr = redisCommand(f->redis, "GET %sfail:src:10.1.1.1", f->prefix);
    assert_true(rr && rr->type == REDIS_REPLY_STRING);
    assert_string_equal(rr->str, "2");
    freeReplyObject(rr);
    rr = redisCommand(f->redis, "PTTL %sfail:src:10.1.1.1", f->prefix);
    assert_true(rr->integer > 14 * MIN_MS && rr->integer <= 15 * MIN_MS);
    freeReplyObject(rr);

    /* Success resets the account's counter. */
    char *tok2 = login(f, "alice", "alice-pass-1");
    assert_int_equal(failed_logins(f, "alice"), 0);
    assert_int_equal(set_size(f, "alice"), 2);
    free(tok2);

    /* An unknown user costs argon2 time like a known one (a loose bound: sanitizers). */
    struct timespec a, b, c;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int i = 0; i < 3; i++)
        cJSON_Delete(login_reply(f, "nobody", "whatever-pw", "10.9.9.9"));
    clock_gettime(CLOCK_MONOTONIC, &b);
    for (int i = 0; i < 3; i++)
        cJSON_Delete(login_reply(f, "alice", "whatever-pw", "10.9.9.8"));
    clock_gettime(CLOCK_MONOTONIC, &c);
    double unknown = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
    double known = (double)(c.tv_sec - b.tv_sec) + (double)(c.tv_nsec - b.tv_nsec) / 1e9;
    assert_true(unknown > known * 0.5);
}

static void test_must_change_flow(void **state)
{
    FIXTURE(state);
    cJSON *r = call(f, "{\"op\":\"create_user\",\"username\":\"bob\",\"role\":\"viewer\"}");
    expect_ok(r);
    char *temp = gt_xstrdup(str_of(r, "password"));
    add_secret(f, temp);
    assert_int_equal(strlen(temp), 16);
    const cJSON *u = cJSON_GetObjectItemCaseSensitive(r, "user");
    assert_string_equal(str_of(u, "name"), "bob");
    assert_string_equal(str_of(u, "role"), "viewer");
    str_of(u, "created_at");
    assert_int_equal(cJSON_GetArraySize(u), 3);
    cJSON_Delete(r);

    r = login_reply(f, "bob", temp, "127.0.0.1");
    expect_ok(r);
    assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(r, "must_change_password")));
    add_secret(f, str_of(r, "token"));
    cJSON_Delete(r);

    /* The policy, before anything is checked or counted. */
    expect_err_free(call(f, "{\"op\":\"change_password\",\"username\":\"bob\",\"password\":"
                            "\"%s\",\"new_password\":\"short\"}", temp),
                    "invalid_argument", "$.new_password");
    expect_err_free(call(f, "{\"op\":\"change_password\",\"username\":\"bob\",\"password\":"
                            "\"%s\",\"new_password\":\"%s\"}", temp, temp),
                    "invalid_argument", "$.new_password");
    /* Eight characters, not eight bytes: "é" is two bytes. */
    expect_err_free(call(f, "{\"op\":\"change_password\",\"username\":\"bob\",\"password\":"
                            "\"%s\",\"new_password\":\"\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\"}",
                         temp),
                    "invalid_argument", "$.new_password");
    assert_int_equal(failed_logins(f, "bob"), 0);

    add_secret(f, "bob-new-password");
    expect_err_free(call(f, "{\"op\":\"change_password\",\"username\":\"bob\",\"password\":"
                            "\"not-the-password\",\"new_password\":\"bob-new-password\"}"),
                    "unauthenticated", NULL);
    assert_int_equal(failed_logins(f, "bob"), 1);
    expect_ok_free(call(f, "{\"op\":\"change_password\",\"username\":\"bob\",\"password\":"
                           "\"%s\",\"new_password\":\"bob-new-password\","
                           "\"source\":\"10.0.0.1\"}", temp));
    assert_int_equal(failed_logins(f, "bob"), 0);

    expect_err_free(login_reply(f, "bob", temp, "127.0.0.1"), "unauthenticated", NULL);
    r = login_reply(f, "bob", "bob-new-password", "127.0.0.1");
    expect_ok(r);
    assert_true(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(r, "must_change_password")));
    add_secret(f, str_of(r, "token"));
    cJSON_Delete(r);

    r = call(f, "{\"op\":\"list_users\"}");
    const cJSON *item = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(r, "items"), 0);
    assert_true(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(item, "must_change_password")));
    cJSON_Delete(r);
    free(temp);
}

static void test_change_password_revokes(void **state)
{
    FIXTURE(state);
    create_user(f, "carol", "operator", "carol-pass-1");
    char *t1 = login(f, "carol", "carol-pass-1");
    char *t2 = login(f, "carol", "carol-pass-1");
    cJSON *r = call(f, "{\"op\":\"create_apikey\",\"username\":\"carol\"}");
    expect_ok(r);
    char *k = gt_xstrdup(str_of(r, "api_key"));
    add_secret(f, k);
    cJSON_Delete(r);
    /* Another user's session is left alone. */
    create_user(f, "dan", "viewer", "dan-pass-12");
    char *other = login(f, "dan", "dan-pass-12");

    assert_int_equal(set_size(f, "carol"), 3);
    cJSON *s1 = session_of(f, t1), *s2 = session_of(f, t2), *s3 = session_of(f, k);
    assert_true(s1 && s2 && s3);
    cJSON_Delete(s1);
    cJSON_Delete(s2);
    cJSON_Delete(s3);

    add_secret(f, "carol-pass-2");
    expect_ok_free(call(f, "{\"op\":\"change_password\",\"username\":\"carol\",\"password\":"
                           "\"carol-pass-1\",\"new_password\":\"carol-pass-2\"}"));
    assert_null(session_of(f, t1));
    assert_null(session_of(f, t2));
    assert_null(session_of(f, k));
    assert_int_equal(set_size(f, "carol"), 0);
    cJSON *so = session_of(f, other);
    assert_non_null(so);
    cJSON_Delete(so);

    char *t3 = login(f, "carol", "carol-pass-2");
    free(t3);
    free(t1);
    free(t2);
    free(k);
    free(other);
}

static void test_throttle_account(void **state)
{
    FIXTURE(state);
    create_user(f, "erin", "viewer", "erin-pass-1");
    /* Three failures pass through. */
    for (int i = 0; i < 3; i++)
        expect_err_free(login_reply(f, "erin", "wrong-pass", "10.2.0.1"), "unauthenticated",
                        NULL);
    assert_int_equal(failed_logins(f, "erin"), 3);

    /* The fourth attempt must wait 2^0 s, and is refused unchecked (even the right
     * password), without counting. */
    cJSON *r = login_reply(f, "erin", "erin-pass-1", "10.2.0.1");
    expect_err(r, "throttled", NULL);
    assert_int_equal(retry_after(r), 1);
    cJSON_Delete(r);
    assert_int_equal(failed_logins(f, "erin"), 3);

    f->now += 1000;
    expect_err_free(login_reply(f, "erin", "wrong-pass", "10.2.0.1"), "unauthenticated", NULL);
    assert_int_equal(failed_logins(f, "erin"), 4);
    r = login_reply(f, "erin", "erin-pass-1", "10.2.0.1");
    expect_err(r, "throttled", NULL);
    assert_int_equal(retry_after(r), 2);
    cJSON_Delete(r);
    f->now += 1500;
    r = login_reply(f, "erin", "erin-pass-1", "10.2.0.1");
    expect_err(r, "throttled", NULL);
    assert_int_equal(retry_after(r), 1); /* 500 ms left rounds up */
    cJSON_Delete(r);
    f->now += 500;
    expect_err_free(login_reply(f, "erin", "wrong-pass", "10.2.0.1"), "unauthenticated", NULL);
    r = login_reply(f, "erin", "wrong-pass", "10.2.0.1");
    assert_int_equal(retry_after(r), 4);
    cJSON_Delete(r);

    /* The delay doubles up to the 300 s cap. */
    set_failures(f, "erin", 11, f->now);
    r = login_reply(f, "erin", "erin-pass-1", "10.2.0.1");
    assert_int_equal(retry_after(r), 256);
    cJSON_Delete(r);
    set_failures(f, "erin", 12, f->now);
    r = login_reply(f, "erin", "erin-pass-1", "10.2.0.1");
    assert_int_equal(retry_after(r), 300);
    cJSON_Delete(r);
    set_failures(f, "erin", 60, f->now);
    r = login_reply(f, "erin", "erin-pass-1", "10.2.0.1");
    assert_int_equal(retry_after(r), 300);
    cJSON_Delete(r);
    /* A clock that stepped back does not lengthen the wait. */
    set_failures(f, "erin", 60, f->now + 3600 * 1000);
    r = login_reply(f, "erin", "erin-pass-1", "10.2.0.1");
    assert_int_equal(retry_after(r), 300);
    cJSON_Delete(r);

    /* change_password is throttled the same way. */
    set_failures(f, "erin", 5, f->now);
    add_secret(f, "erin-pass-2");
    r = call(f, "{\"op\":\"change_password\",\"username\":\"erin\",\"password\":"
                "\"erin-pass-1\",\"new_password\":\"erin-pass-2\"}");
    expect_err(r, "throttled", NULL);
    assert_int_equal(retry_after(r), 4);
    cJSON_Delete(r);

    /* Once waited out, success resets the count. */
    f->now += 4000;
    char *tok = login(f, "erin", "erin-pass-1");
    assert_int_equal(failed_logins(f, "erin"), 0);
    free(tok);
}

static void test_lock_at_100(void **state)
{
    FIXTURE(state);
    create_user(f, "frank", "operator", "frank-pass-1");
    /* 100 real failures, each after the longest delay, from one source: the source's
     * delay (capped at 300 s too) never gets in the way either. */
    for (int i = 1; i <= 100; i++) {
        f->now += 301 * 1000;
        cJSON *r = login_reply(f, "frank", "wrong-pass", "10.3.0.1");
        if (i < 100) {
            expect_err(r, "unauthenticated", NULL);
        } else {
            assert_string_equal(expect_err(r, "locked", NULL),
                                "account locked after 100 failed logins; an admin must "
                                "reset it");
        }
        cJSON_Delete(r);
        assert_int_equal(failed_logins(f, "frank"), i);
    }
    /* Locked: the right password is not even checked, and the count stays at 100. */
    for (int i = 0; i < 3; i++) {
        f->now += 86400 * 1000LL;
        expect_err_free(login_reply(f, "frank", "frank-pass-1", "10.3.0.2"), "locked", NULL);
        expect_err_free(login_reply(f, "frank", "wrong-pass", "10.3.0.2"), "locked", NULL);
    }
    assert_int_equal(failed_logins(f, "frank"), 100);

    /* An admin's reset unlocks it, with a temporary password to change. */
    cJSON *r = call(f, "{\"op\":\"reset_password\",\"username\":\"frank\"}");
    expect_ok(r);
    char *temp = gt_xstrdup(str_of(r, "password"));
    add_secret(f, temp);
    cJSON_Delete(r);
    assert_int_equal(failed_logins(f, "frank"), 0);
    r = login_reply(f, "frank", temp, "10.3.0.2");
    expect_ok(r);
    assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(r, "must_change_password")));
    add_secret(f, str_of(r, "token"));
    cJSON_Delete(r);
    expect_err_free(login_reply(f, "frank", "frank-pass-1", "10.3.0.2"), "unauthenticated",
                    NULL);
    expect_err_free(call(f, "{\"op\":\"reset_password\",\"username\":\"nobody\"}"), "not_found",
                    "$.username");
    free(temp);
}

static void test_throttle_source(void **state)
{
    FIXTURE(state);
    create_user(f, "gina", "viewer", "gina-pass-1");
    /* Twenty-one failures (unknown users: no account delay) go through... */
    for (int i = 0; i < 21; i++) {
        cJSON *r = call(f, "{\"op\":\"login\",\"username\":\"u%d\",\"password\":\"p\","
                           "\"source\":\"192.0.2.7\"}", i);
        expect_err(r, "unauthenticated", NULL);
        cJSON_Delete(r);
    }
    /* ...then the source waits, even with the right password for a real user. */
    cJSON *r = login_reply(f, "gina", "gina-pass-1", "192.0.2.7");
    expect_err(r, "throttled", NULL);
    assert_int_equal(retry_after(r), 1);
    cJSON_Delete(r);
    assert_int_equal(failed_logins(f, "gina"), 0);
    f->now += 1000;
    expect_err_free(login_reply(f, "nobody", "p", "192.0.2.7"), "unauthenticated", NULL);
    r = login_reply(f, "gina", "gina-pass-1", "192.0.2.7");
    assert_int_equal(retry_after(r), 2);
    cJSON_Delete(r);
    f->now += 2000;
    expect_err_free(login_reply(f, "nobody", "p", "192.0.2.7"), "unauthenticated", NULL);
    r = login_reply(f, "gina", "gina-pass-1", "192.0.2.7");
    assert_int_equal(retry_after(r), 4);
    cJSON_Delete(r);

    /* Another source is not affected. */
    r = login_reply(f, "gina", "gina-pass-1", "192.0.2.8");
    expect_ok(r);
    add_secret(f, str_of(r, "token"));
    cJSON_Delete(r);
    /* Waited out, the right password works from the first source too. */
    f->now += 4000;
    r = login_reply(f, "gina", "gina-pass-1", "192.0.2.7");
    expect_ok(r);
    add_secret(f, str_of(r, "token"));
    cJSON_Delete(r);
}

static void test_users(void **state)
{
    FIXTURE(state);
    create_user(f, "hank", "operator", "hank-pass-1");
    create_user(f, "ivy", "viewer", "ivy-pass-12");
    expect_err_free(call(f, "{\"op\":\"create_user\",\"username\":\"hank\",\"role\":\"viewer\","
                            "\"password\":\"other-pass-1\"}"), "conflict", "$.username");
    expect_err_free(call(f, "{\"op\":\"create_user\",\"username\":\"-bad\",\"role\":\"viewer\"}"),
                    "invalid_argument", "$.username");
    expect_err_free(call(f, "{\"op\":\"create_user\",\"username\":\"a/b\",\"role\":\"viewer\"}"),
                    "invalid_argument", "$.username");
    expect_err_free(call(f, "{\"op\":\"create_user\",\"username\":\"jo\",\"role\":\"root\"}"),
                    "invalid_argument", "$.role");
    expect_err_free(call(f, "{\"op\":\"create_user\",\"username\":\"jo\",\"role\":\"viewer\","
                            "\"password\":\"1234567\"}"), "invalid_argument", "$.password");

    cJSON *r = call(f, "{\"op\":\"list_users\"}");
    expect_ok(r);
    const cJSON *items = cJSON_GetObjectItemCaseSensitive(r, "items");
    assert_int_equal(cJSON_GetArraySize(items), 2);
    const cJSON *it;
    int i = 0;
    cJSON_ArrayForEach(it, items) {
        /* Exactly these members: no hash, no counters. */
        assert_int_equal(cJSON_GetArraySize(it), 4);
        assert_string_equal(str_of(it, "name"), i == 0 ? "hank" : "ivy");
        assert_string_equal(str_of(it, "role"), i == 0 ? "operator" : "viewer");
        assert_true(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(it, "must_change_password")));
        str_of(it, "created_at");
        i++;
    }
    cJSON_Delete(r);

    char *tok = login(f, "ivy", "ivy-pass-12");
    expect_ok_free(call(f, "{\"op\":\"delete_user\",\"username\":\"ivy\"}"));
    assert_null(session_of(f, tok));
    assert_int_equal(set_size(f, "ivy"), 0);
    expect_err_free(login_reply(f, "ivy", "ivy-pass-12", "127.0.0.1"), "unauthenticated", NULL);
    expect_err_free(call(f, "{\"op\":\"delete_user\",\"username\":\"ivy\"}"), "not_found",
                    "$.username");
    r = call(f, "{\"op\":\"list_users\"}");
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(r, "items")), 1);
    cJSON_Delete(r);
    free(tok);
}

static void test_last_admin(void **state)
{
    FIXTURE(state);
    char *pw = NULL;
    assert_int_equal(gt_tokend_bootstrap(f->t, &pw, NULL), GT_OK);
    add_secret(f, pw);
    create_user(f, "ops", "operator", "ops-pass-12");
    expect_err_free(call(f, "{\"op\":\"delete_user\",\"username\":\"admin\"}"), "forbidden",
                    "$.username");
    create_user(f, "admin2", "admin", "admin2-pass");
    expect_ok_free(call(f, "{\"op\":\"delete_user\",\"username\":\"admin\"}"));
    expect_err_free(call(f, "{\"op\":\"delete_user\",\"username\":\"admin2\"}"), "forbidden",
                    "$.username");
    expect_ok_free(call(f, "{\"op\":\"delete_user\",\"username\":\"ops\"}"));
    free(pw);
}

static void test_apikey(void **state)
{
    FIXTURE(state);
    create_user(f, "kim", "operator", "kim-pass-12");
    f->now = T0 + 5000;
    cJSON *r = call(f, "{\"op\":\"create_apikey\",\"username\":\"kim\",\"name\":\"ci-bot\"}");
    expect_ok(r);
    const char *key = str_of(r, "api_key");
    add_secret(f, key);
    char hex[65];
    token_hash(key, hex);
    add_secret(f, hex);
    assert_int_equal(strlen(key), 43);
    assert_string_equal(str_of(r, "name"), "ci-bot");
    assert_int_equal((int64_t)cJSON_GetObjectItemCaseSensitive(r, "expires_at_ms")->valuedouble,
                     T0 + 5000 + 1440 * MIN_MS);
    cJSON *s = session_of(f, key);
    assert_non_null(s);
    assert_string_equal(str_of(s, "kind"), "apikey");
    assert_string_equal(str_of(s, "user"), "kim");
    assert_string_equal(str_of(s, "role"), "operator");
    cJSON_Delete(s);
    long long ttl = pttl_of(f, key);
    assert_true(ttl > 1440 * MIN_MS - 10000 && ttl <= 1440 * MIN_MS);
    cJSON_Delete(r);

    /* Two keys are two sessions; an expired one is pruned from the user's set. */
    r = call(f, "{\"op\":\"create_apikey\",\"username\":\"kim\"}");
    expect_ok(r);
    assert_null(cJSON_GetObjectItemCaseSensitive(r, "name"));
    char *k2 = gt_xstrdup(str_of(r, "api_key"));
    add_secret(f, k2);
    cJSON_Delete(r);
    assert_int_equal(set_size(f, "kim"), 2);
    token_hash(k2, hex);
    freeReplyObject(redisCommand(f->redis, "DEL %ssession:%s", f->prefix, hex));
    char *t = login(f, "kim", "kim-pass-12");
    assert_int_equal(set_size(f, "kim"), 2);

    expect_err_free(call(f, "{\"op\":\"create_apikey\",\"username\":\"nobody\"}"), "not_found",
                    "$.username");
    expect_err_free(call(f, "{\"op\":\"create_apikey\",\"username\":\"kim\",\"name\":\"a b\"}"),
                    "invalid_argument", "$.name");
    free(t);
    free(k2);
}

static void test_logout(void **state)
{
    FIXTURE(state);
    create_user(f, "lee", "viewer", "lee-pass-12");
    char *tok = login(f, "lee", "lee-pass-12");
    char *keep = login(f, "lee", "lee-pass-12");
    char hex[65];
    token_hash(tok, hex);
    expect_ok_free(call(f, "{\"op\":\"logout\",\"token_hash\":\"%s\"}", hex));
    assert_null(session_of(f, tok));
    assert_int_equal(set_size(f, "lee"), 1);
    cJSON *s = session_of(f, keep);
    assert_non_null(s);
    cJSON_Delete(s);
    /* Idempotent. */
    expect_ok_free(call(f, "{\"op\":\"logout\",\"token_hash\":\"%s\"}", hex));
    /* Only a hash is accepted, never a token or anything else. */
    expect_err_free(call(f, "{\"op\":\"logout\",\"token_hash\":\"%s\"}", tok), "invalid_argument",
                    "$.token_hash");
    expect_err_free(call(f, "{\"op\":\"logout\",\"token_hash\":\"%.63s\"}", hex),
                    "invalid_argument", "$.token_hash");
    expect_err_free(call(f, "{\"op\":\"logout\"}"), "invalid_argument", "$.token_hash");
    free(tok);
    free(keep);
}

static void test_recover_admin(void **state)
{
    FIXTURE(state);
    char *pw = NULL, *pw2 = NULL;
    gt_error err = {0};
    assert_int_equal(gt_tokend_bootstrap(f->t, &pw, &err), GT_OK);
    add_secret(f, pw);
    char *tok = login(f, "admin", pw);
    set_failures(f, "admin", 100, f->now);

    /* A link planted where the file goes is replaced, never followed. */
    char target[160];
    snprintf(target, sizeof target, "%s/elsewhere", f->dir);
    unlink(f->pwfile);
    assert_int_equal(symlink(target, f->pwfile), 0);
    assert_int_equal(gt_tokend_recover_admin(f->t, &pw2, &err), GT_OK);
    assert_non_null(pw2);
    assert_int_equal(strlen(pw2), 16);
    add_secret(f, pw2);
    check_password_file(f, pw2);
    assert_int_equal(access(target, F_OK), -1);
    assert_string_not_equal(pw, pw2);
    assert_null(session_of(f, tok));
    assert_int_equal(failed_logins(f, "admin"), 0);
    expect_err_free(login_reply(f, "admin", pw, "127.0.0.1"), "unauthenticated", NULL);
    cJSON *r = login_reply(f, "admin", pw2, "127.0.0.1");
    expect_ok(r);
    assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(r, "must_change_password")));
    assert_string_equal(str_of(r, "role"), "admin");
    add_secret(f, str_of(r, "token"));
    cJSON_Delete(r);
    free(tok);
    free(pw);
    free(pw2);

    /* Without any admin (a fresh store), recovery creates one. */
    gt_store *empty = gt_store_open_memory(NULL);
    gt_tokend_config tc = {.store = empty, .sessions = f->sessions, .token_ttl_ms = MIN_MS,
                           .api_key_ttl_ms = MIN_MS, .controller_users = controllers,
                           .admin_password_file = f->pwfile};
    gt_tokend *t2 = gt_tokend_new(&tc, NULL);
    char *pw3 = NULL;
    assert_int_equal(gt_tokend_recover_admin(t2, &pw3, NULL), GT_OK);
    add_secret(f, pw3);
    char *body = NULL;
    assert_int_equal(gt_store_get(empty, USERS, "admin", &body, NULL, NULL), GT_OK);
    assert_non_null(strstr(body, "\"role\":\"admin\""));
    cJSON *doc = cJSON_Parse(body);
    add_secret(f, cJSON_GetObjectItemCaseSensitive(doc, "password_hash")->valuestring);
    cJSON_Delete(doc);
    free(body);
    free(pw3);
    gt_tokend_free(&t2);
    gt_store_free(&empty);
}

static void test_malformed(void **state)
{
    FIXTURE(state);
    create_user(f, "mo", "viewer", "mo-pass-123");
    static const struct {
        const char *body;
        const char *field;
    } cases[] = {
        {"", "$"},
        {"{", "$"},
        {"not json", "$"},
        {"{\"op\":\"ping\"} trailing", "$"},
        {"[1,2]", "$"},
        {"\"login\"", "$"},
        {"{}", "$.op"},
        {"{\"op\":7}", "$.op"},
        {"{\"op\":null}", "$.op"},
        {"{\"op\":\"drop_tables\"}", "$.op"},
        {"{\"op\":\"ping\",\"x\":1}", "$.x"},
        {"{\"op\":\"login\",\"username\":1,\"password\":\"mo-pass-123\",\"source\":\"s\"}",
         "$.username"},
        {"{\"op\":\"login\",\"username\":\"mo\",\"source\":\"s\"}", "$.password"},
        {"{\"op\":\"login\",\"username\":\"mo\",\"password\":[\"mo-pass-123\"],\"source\":\"s\"}",
         "$.password"},
        {"{\"op\":\"login\",\"username\":\"mo\",\"password\":\"mo-pass-123\"}", "$.source"},
        {"{\"op\":\"login\",\"username\":\"mo\",\"password\":\"mo-pass-123\",\"source\":\"a b\"}",
         "$.source"},
        {"{\"op\":\"login\",\"username\":\"mo\",\"password\":\"mo-pass-123\",\"source\":\"s\","
         "\"token\":\"x\"}", "$.token"},
        {"{\"op\":\"login\",\"username\":\"mo\\u0000x\",\"password\":\"p\",\"source\":\"s\"}",
         "$"},
        {"{\"op\":\"change_password\",\"username\":\"mo\",\"password\":\"mo-pass-123\","
         "\"new_password\":false}", "$.new_password"},
        {"{\"op\":\"create_user\",\"username\":\"x\",\"role\":\"viewer\",\"password\":5}",
         "$.password"},
        {"{\"op\":\"create_user\",\"username\":\"x\"}", "$.role"},
        {"{\"op\":\"delete_user\",\"username\":{}}", "$.username"},
        {"{\"op\":\"list_users\",\"limit\":5}", "$.limit"},
        {"{\"op\":\"create_apikey\",\"username\":\"mo\",\"name\":3}", "$.name"},
        {"{\"op\":\"logout\",\"token_hash\":true}", "$.token_hash"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cJSON *r = call_raw(f, cases[i].body, strlen(cases[i].body));
        expect_err(r, "invalid_argument", cases[i].field);
        /* The message never echoes a password. */
        char *text = cJSON_PrintUnformatted(r);
        assert_null(strstr(text, "mo-pass-123"));
        free(text);
        cJSON_Delete(r);
    }
    /* A NULL body and a body that is not NUL-terminated. */
    cJSON *r = call_raw(f, NULL, 0);
    expect_err_free(r, "invalid_argument", "$");
    char raw[] = {'{', '"', 'o', 'p', '"', ':', '"', 'p', 'i', 'n', 'g', '"', '}', 'X'};
    expect_ok_free(call_raw(f, raw, 13));
    /* An overlong password is refused without being hashed. */
    gt_buf big = {0};
    gt_buf_puts(&big, "{\"op\":\"login\",\"username\":\"mo\",\"source\":\"s\",\"password\":\"");
    for (int i = 0; i < 2000; i++)
        gt_buf_puts(&big, "x");
    gt_buf_puts(&big, "\"}");
    expect_err_free(call_raw(f, big.data, big.len), "invalid_argument", "$.password");
    gt_buf_free(&big);
    assert_int_equal(failed_logins(f, "mo"), 0);
}

/* A password checked against one hash is not written over another one. */
static void test_password_changed_meanwhile(void **state)
{
    FIXTURE(state);
    create_user(f, "nia", "viewer", "nia-pass-12");
    gt_error err = {0};
    new_password np = {.verified_hash = "$argon2id$not-the-stored-one", .hash = "x"};
    assert_int_equal(user_update(f->t, "nia", false, mutate_password, &np, NULL, &err),
                     GT_ECONFLICT);
    assert_string_equal(err.message, "the password changed meanwhile; try again");
    char *tok = login(f, "nia", "nia-pass-12");
    free(tok);
}

/* Store and Redis failures answer "internal", with the hash in a key redacted. */
static void test_redact(void **state)
{
    (void)state;
    char out[200];
    redact("redis 1.2.3.4: GET gantry:c:session:"
           "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef: timeout",
           out, sizeof out);
    assert_string_equal(out, "redis 1.2.3.4: GET gantry:c:session:[redacted]: timeout");
    redact("abc 1234 deadbeef", out, sizeof out);
    assert_string_equal(out, "abc 1234 deadbeef");
    redact("0123456789abcdef0123456789abcdef", out, 5);
    assert_string_equal(out, "[red");
}

/* Attack: anyone on the broker acting as a controller. Only the controllers' broker users
 * are served; a runner's or scheduler's request, or one without a user_id, is refused
 * before it is read, and logged. */
static void test_refuses_non_controllers(void **state)
{
    FIXTURE(state);
    static const char *const others[] = {"gantry-runner", "gantry-scheduler", "guest",
                                         "gantry-controller ", "Gantry-Controller", "", NULL};
    for (size_t i = 0; i < sizeof others / sizeof others[0]; i++) {
        f->caller = others[i];
        add_secret(f, "Mallory-Pass-1234");
        cJSON *r = call(f, "{\"op\":\"create_user\",\"username\":\"mallory\",\"role\":\"admin\","
                           "\"password\":\"Mallory-Pass-1234\"}");
        const char *m = expect_err(r, "forbidden", NULL);
        assert_non_null(strstr(m, "controller_users"));
        cJSON_Delete(r);
        expect_err_free(call(f, "{\"op\":\"create_apikey\",\"username\":\"admin\"}"), "forbidden",
                        NULL);
        expect_err_free(call(f, "{\"op\":\"reset_password\",\"username\":\"admin\"}"),
                        "forbidden", NULL);
        /* garbage is refused as such, not parsed */
        expect_err_free(call_raw(f, "{", 1), "forbidden", NULL);
    }
    char *logged = log_text(f);
    assert_non_null(strstr(logged, "refused a request from broker user gantry-runner"));
    assert_non_null(strstr(logged, "no user_id"));
    free(logged);
    /* nothing was created; both controller users are served */
    f->caller = CONTROLLER;
    cJSON *r = call(f, "{\"op\":\"list_users\"}");
    expect_ok(r);
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(r, "items")), 0);
    cJSON_Delete(r);
    f->caller = "gantry-controller-2";
    expect_ok_free(call(f, "{\"op\":\"ping\"}"));

    /* a tokend without controller users would serve nobody: refused at start */
    gt_tokend_config tc = {.store = f->store, .sessions = f->sessions, .token_ttl_ms = MIN_MS,
                           .api_key_ttl_ms = MIN_MS};
    gt_error err = {0};
    assert_null(gt_tokend_new(&tc, &err));
    assert_non_null(strstr(err.message, "controller_users"));
}

/* A name that is not a user gets exactly the answers a user gets, failure by failure:
 * the throttle tells no one which names exist. */
static void test_unknown_user_throttled_like_known(void **state)
{
    FIXTURE(state);
    create_user(f, "quinn", "viewer", "quinn-pass-12");
    const char *names[] = {"quinn", "no-such-user"};
    for (int round = 0; round < 6; round++) {
        char *replies[2];
        for (int i = 0; i < 2; i++) {
            /* each from its own source: the per-source throttle is not what is compared */
            cJSON *r = login_reply(f, names[i], "wrong-pass", i == 0 ? "10.7.0.1" : "10.7.0.2");
            replies[i] = cJSON_PrintUnformatted(r);
            cJSON_Delete(r);
        }
        assert_string_equal(replies[0], replies[1]);
        if (round == 3)
            assert_non_null(strstr(replies[0], "\"throttled\""));
        free(replies[0]);
        free(replies[1]);
        if (round >= 3)
            f->now += 1000 << (round - 3); /* waited out: the next one counts again */
    }
    /* The lock at 100 too (the counters are set directly; the lock test does it the long
     * way for a user). */
    set_failures(f, "quinn", 99, f->now - 400 * 1000);
    redisReply *rr = redisCommand(f->redis, "SET %sfail:user:no-such-user 99", f->prefix);
    freeReplyObject(rr);
    rr = redisCommand(f->redis, "SET %sfail:user-at:no-such-user %lld", f->prefix,
                      (long long)(f->now - 400 * 1000));
    freeReplyObject(rr);
    for (int round = 0; round < 2; round++) {
        char *replies[2];
        for (int i = 0; i < 2; i++) {
            cJSON *r = login_reply(f, names[i], "wrong-pass", i == 0 ? "10.7.1.1" : "10.7.1.2");
            replies[i] = cJSON_PrintUnformatted(r);
            cJSON_Delete(r);
        }
        assert_string_equal(replies[0], replies[1]);
        assert_non_null(strstr(replies[0], "\"locked\""));
        free(replies[0]);
        free(replies[1]);
    }
    /* change_password answers alike as well */
    char *replies[2];
    for (int i = 0; i < 2; i++) {
        cJSON *r = call(f, "{\"op\":\"change_password\",\"username\":\"%s\",\"password\":"
                           "\"wrong-pass\",\"new_password\":\"Another-pass-77\"}", names[i]);
        replies[i] = cJSON_PrintUnformatted(r);
        cJSON_Delete(r);
    }
    assert_string_equal(replies[0], replies[1]);
    free(replies[0]);
    free(replies[1]);
    /* and the unknown name's counters expire (30 days), not live forever */
    rr = redisCommand(f->redis, "PTTL %sfail:user:no-such-user", f->prefix);
    assert_true(rr && rr->type == REDIS_REPLY_INTEGER);
    freeReplyObject(rr);
}

/* New passwords: not one of the common ones (whatever the case), not the user name. */
static void test_common_passwords_refused(void **state)
{
    FIXTURE(state);
    static const char *const bad[] = {"password", "Password1", "PASSWORD123", "12345678",
                                      "qwertyuiop", "iloveyou", "trustno1", "sunshine",
                                      "1q2w3e4r", "letmein1"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cJSON *r = call(f, "{\"op\":\"create_user\",\"username\":\"rita\",\"role\":\"viewer\","
                           "\"password\":\"%s\"}", bad[i]);
        const char *m = expect_err(r, "invalid_argument", "$.password");
        assert_non_null(strstr(m, "common passwords"));
        cJSON_Delete(r);
        assert_true(gt_password_common(bad[i]));
    }
    expect_err_free(call(f, "{\"op\":\"create_user\",\"username\":\"rita-long-name\",\"role\":"
                            "\"viewer\",\"password\":\"Rita-Long-Name\"}"),
                    "invalid_argument", "$.password");
    assert_false(gt_password_common("rita-long-name"));
    create_user(f, "rita", "viewer", "rita-pass-12");
    expect_err_free(call(f, "{\"op\":\"change_password\",\"username\":\"rita\",\"password\":"
                            "\"rita-pass-12\",\"new_password\":\"Password123\"}"),
                    "invalid_argument", "$.new_password");
    expect_err_free(call(f, "{\"op\":\"reset_password\",\"username\":\"rita\",\"password\":"
                            "\"football\"}"), "invalid_argument", "$.password");
    /* the policy comes before the password check: nothing was counted */
    assert_int_equal(failed_logins(f, "rita"), 0);
    /* what the other tests use is fine */
    assert_false(gt_password_common("admin-password-1"));
    assert_false(gt_password_common("otto-password"));
    assert_false(gt_password_common(""));
    assert_false(gt_password_common(NULL));
}

/* Sessions tokend writes are signed with the cluster's key and open under it. */
static void test_sessions_signed(void **state)
{
    FIXTURE(state);
    create_user(f, "sam", "operator", "sam-pass-123");
    char *tok = login(f, "sam", "sam-pass-123");
    char hex[65];
    token_hash(tok, hex);
    redisReply *rr = redisCommand(f->redis, "GET %ssession:%s", f->prefix, hex);
    assert_true(rr && rr->type == REDIS_REPLY_STRING);
    gt_session_record rec;
    gt_error err = {0};
    assert_int_equal(gt_sessions_open(f->sessions, hex, rr->str, &rec, &err), GT_OK);
    assert_string_equal(rec.user, "sam");
    assert_string_equal(rec.role, "operator");
    assert_string_equal(rec.kind, "login");
    freeReplyObject(rr);
    /* logout of a record someone forged in Redis removes it, and touches no user's set */
    rr = redisCommand(f->redis, "SET %ssession:%s {\"user\":\"sam\",\"role\":\"admin\","
                      "\"kind\":\"login\",\"expires_at\":1}", f->prefix, hex);
    freeReplyObject(rr);
    expect_ok_free(call(f, "{\"op\":\"logout\",\"token_hash\":\"%s\"}", hex));
    assert_null(session_of(f, tok));
    assert_int_equal(set_size(f, "sam"), 1);
    free(tok);
}

int main(void)
{
    if (redis_addr() == NULL)
        printf("SKIPPED: tokend_test needs Redis: GANTRY_TEST_REDIS (127.0.0.1:PORT) is not "
               "set, so every Redis-backed test below is skipped\n");
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_redact),
        T(test_ping),
        T(test_bootstrap_once),
        T(test_login),
        T(test_must_change_flow),
        T(test_change_password_revokes),
        T(test_throttle_account),
        T(test_lock_at_100),
        T(test_throttle_source),
        T(test_users),
        T(test_last_admin),
        T(test_apikey),
        T(test_logout),
        T(test_recover_admin),
        T(test_malformed),
        T(test_password_changed_meanwhile),
        T(test_refuses_non_controllers),
        T(test_unknown_user_throttled_like_known),
        T(test_common_passwords_refused),
        T(test_sessions_signed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
