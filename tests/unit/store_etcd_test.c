/* The etcd driver against a real three-member cluster (GANTRY_TEST_ETCD, set by
 * scripts/test-servers): the conformance suite with a new cluster id (key prefix) per
 * test, and the concurrency checks with two handles, as two threads would have. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>
#include <netinet/in.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "output.h"
#include "store.h"
#include "store_etcd.h"
#include "store_conformance.h"
#include "util.h"

typedef struct etcd_ctx {
    gt_strv hosts;
    char cluster[64];   /* the current test's cluster id */
} etcd_ctx;

static gt_store *open_cluster(etcd_ctx *c)
{
    gt_error err = {0};
    gt_store_etcd_config cfg = {
        .hosts = (const char *const *)c->hosts.v,
        .n_hosts = c->hosts.n,
        .cluster_id = c->cluster,
        .timeout_ms = 10000,
    };
    gt_store *s = gt_store_open_etcd(&cfg, &err);
    if (s == NULL)
        print_error("open etcd store: %s\n", err.message);
    return s;
}

static gt_store *open_fresh(void *ctx)
{
    etcd_ctx *c = ctx;
    char *id = gt_id_new();
    snprintf(c->cluster, sizeof c->cluster, "test-%s", id);
    free(id);
    return open_cluster(c);
}

typedef struct pair {
    etcd_ctx *c;
    gt_store *h[2];
} pair;

static int setup_pair(void **state)
{
    pair *p = *state;
    p->h[0] = open_fresh(p->c);
    p->h[1] = p->h[0] ? open_cluster(p->c) : NULL;
    return p->h[1] ? 0 : -1;
}

static int teardown_pair(void **state)
{
    pair *p = *state;
    gt_store_free(&p->h[0]);
    gt_store_free(&p->h[1]);
    return 0;
}

static void test_cas_race_two_handles(void **state)
{
    pair *p = *state;
    gt_store_conformance_cas_race(p->h[0], p->h[1], 100);
}

static void test_apply_race_two_handles(void **state)
{
    pair *p = *state;
    gt_store_conformance_apply_race(p->h[0], p->h[1], 100);
}

/* An apply whose documents and index entries need more than etcd's 128 operations per
 * Txn (--max-txn-ops, the default) is refused up front, naming the limit; nothing is
 * written. Each document here has 20 indexed fields whose values all change. */
static void test_apply_txn_ops_limit(void **state)
{
    pair *p = *state;
    gt_store *s = p->h[0];
    gt_error err = {0};
    char old[512] = "{", neu[512] = "{";
    for (int k = 0; k < 20; k++) {
        char field[8];
        snprintf(field, sizeof field, "f%d", k);
        assert_int_equal(gt_store_index(s, "wide", field, &err), GT_OK);
        size_t n = strlen(old);
        snprintf(old + n, sizeof old - n, "%s\"%s\":\"a\"", k ? "," : "", field);
        n = strlen(neu);
        snprintf(neu + n, sizeof neu - n, "%s\"%s\":\"b\"", k ? "," : "", field);
    }
    strcat(old, "}");
    strcat(neu, "}");
    gt_store_op ops[4];
    char ids[4][16];
    for (int i = 0; i < 4; i++) {
        snprintf(ids[i], sizeof ids[i], "w%d", i);
        assert_int_equal(gt_store_put(s, "wide", ids[i], old, GT_REV_NONE, NULL, &err), GT_OK);
        ops[i] = (gt_store_op){GT_STORE_OP_PUT, "wide", ids[i], neu, GT_REV_ANY, 0};
    }
    /* 3 documents: 3 x (1 + 20 deletes + 20 puts) = 123 operations, which fit */
    assert_int_equal(gt_store_apply(s, ops, 3, NULL, &err), GT_OK);
    for (int i = 0; i < 3; i++)
        ops[i].body = old;
    gt_error_clear(&err);
    assert_int_equal(gt_store_apply(s, ops, 4, NULL, &err), GT_EINVAL);
    assert_non_null(strstr(err.message, "128"));
    gt_store_filter fa = {"f7", "a", NULL, NULL}, fb = {"f7", "b", NULL, NULL};
    int64_t na = -1, nb = -1;
    assert_int_equal(gt_store_count(s, "wide", &fa, &na, &err), GT_OK);
    assert_int_equal(gt_store_count(s, "wide", &fb, &nb, &err), GT_OK);
    assert_int_equal(na, 1);
    assert_int_equal(nb, 3);
}

static void test_counter_two_handles(void **state)
{
    pair *p = *state;
    gt_store_conformance_counter(p->h, 2, 50);
}

/* A '/' in an indexed value cannot leak one value's entries into another's. */
static void test_slash_in_values(void **state)
{
    pair *p = *state;
    gt_store *s = p->h[0];
    gt_store_page page;
    assert_int_equal(gt_store_index(s, "things", "kind", NULL), GT_OK);
    assert_int_equal(gt_store_put(s, "things", "a/b", "{\"kind\":\"x/y\"}", GT_REV_NONE, NULL,
                                  NULL), GT_OK);
    assert_int_equal(gt_store_put(s, "things", "c", "{\"kind\":\"x\"}", GT_REV_NONE, NULL, NULL),
                     GT_OK);
    assert_int_equal(gt_store_query(s, "things", "kind", "x", NULL, 10, &page, NULL), GT_OK);
    assert_int_equal(page.n, 1);
    assert_string_equal(page.items[0].id, "c");
    gt_store_page_clear(&page);
    assert_int_equal(gt_store_query(s, "things", "kind", "x/y", NULL, 10, &page, NULL), GT_OK);
    assert_int_equal(page.n, 1);
    assert_string_equal(page.items[0].id, "a/b");
    gt_store_page_clear(&page);
}

/* An index declared after its documents exist is built over them (several scan pages,
 * and documents without the field or with a non-string one are left out). */
static void test_index_after_documents(void **state)
{
    pair *p = *state;
    gt_store *s = p->h[0];
    gt_error err = {0};
    for (int i = 0; i < 230; i++) {
        char id[16], body[64];
        snprintf(id, sizeof id, "d%03d", i);
        if (i % 10 == 9)
            snprintf(body, sizeof body, "{\"kind\":%d}", i);
        else
            snprintf(body, sizeof body, "{\"kind\":\"%s\"}", i % 2 ? "odd" : "even");
        assert_int_equal(gt_store_put(s, "many", id, body, GT_REV_NONE, NULL, &err), GT_OK);
    }
    gt_store_page page;
    assert_int_equal(gt_store_query(s, "many", "kind", "odd", NULL, 10, &page, NULL), GT_EINVAL);
    assert_int_equal(gt_store_index(s, "many", "kind", &err), GT_OK);
    assert_int_equal(gt_store_index(s, "many", "kind", &err), GT_OK);   /* idempotent */
    assert_int_equal(gt_store_query(s, "many", "kind", "odd", NULL, 1000, &page, &err), GT_OK);
    assert_int_equal(page.n, 92);   /* 115 odd ids, less the 23 with a number */
    assert_null(page.next_cursor);
    gt_store_page_clear(&page);
    /* the new index follows later writes too, through the other handle */
    assert_int_equal(gt_store_put(p->h[1], "many", "d001", "{\"kind\":\"even\"}", GT_REV_ANY,
                                  NULL, &err), GT_OK);
    assert_int_equal(gt_store_delete(p->h[1], "many", "d003", GT_REV_ANY, &err), GT_OK);
    assert_int_equal(gt_store_query_order(s, "many", "kind", "odd", NULL, 1000, true, &page,
                                          &err), GT_OK);
    assert_int_equal(page.n, 90);
    assert_string_equal(page.items[0].id, "d227");
    assert_string_equal(page.items[89].id, "d005");
    gt_store_page_clear(&page);
}

/* A member that does not answer is skipped. */
static void test_dead_member_first(void **state)
{
    pair *p = *state;
    gt_strv hosts = {0};
    gt_strv_push(&hosts, "127.0.0.1:1");
    for (size_t i = 0; i < p->c->hosts.n; i++)
        gt_strv_push(&hosts, p->c->hosts.v[i]);
    gt_store_etcd_config cfg = {.hosts = (const char *const *)hosts.v, .n_hosts = hosts.n,
                                .cluster_id = p->c->cluster};
    gt_error err = {0};
    gt_store *s = gt_store_open_etcd(&cfg, &err);
    if (s == NULL)
        fail_msg("open with a dead first member: %s", err.message);
    assert_int_equal(gt_store_put(s, "things", "z", "{}", GT_REV_ANY, NULL, &err), GT_OK);
    gt_store_free(&s);
    /* only dead members: unavailable, with a message */
    gt_strv dead = {0};
    gt_strv_push(&dead, "127.0.0.1:1");
    cfg.hosts = (const char *const *)dead.v;
    cfg.n_hosts = dead.n;
    gt_error_clear(&err);
    assert_null(gt_store_open_etcd(&cfg, &err));
    assert_int_equal(err.code, GT_EUNAVAIL);
    gt_strv_free(&dead);
    gt_strv_free(&hosts);
}

/* A member that accepts connections and never answers: reads time out there and go to
 * the next member, and later calls start at the one that answered. */
static void test_silent_member_first(void **state)
{
    pair *p = *state;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof a;
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(fd, 8), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &alen), 0);
    gt_strv hosts = {0};
    gt_strv_push_owned(&hosts, gt_xasprintf("127.0.0.1:%d", ntohs(a.sin_port)));
    for (size_t i = 0; i < p->c->hosts.n; i++)
        gt_strv_push(&hosts, p->c->hosts.v[i]);
    gt_store_etcd_config cfg = {.hosts = (const char *const *)hosts.v, .n_hosts = hosts.n,
                                .cluster_id = p->c->cluster, .timeout_ms = 500};
    gt_error err = {0};
    gt_store *s = gt_store_open_etcd(&cfg, &err);
    if (s == NULL)
        fail_msg("open with a silent first member: %s", err.message);
    int64_t rev = 0;
    assert_int_equal(gt_store_put(s, "things", "q", "{}", GT_REV_NONE, &rev, &err), GT_OK);
    char *body = NULL;
    assert_int_equal(gt_store_get(s, "things", "q", &body, NULL, &err), GT_OK);
    free(body);
    gt_store_free(&s);
    close(fd);
    gt_strv_free(&hosts);
}

/* TLS with a client certificate (member 0's TLS listener, GANTRY_TEST_ETCD_TLS): the
 * CA is checked, and without a client certificate the member refuses. */
static void test_tls(void **state)
{
    pair *p = *state;
    const char *host = getenv("GANTRY_TEST_ETCD_TLS"), *dir = getenv("GANTRY_TEST_ETCD_TLS_DIR");
    if (host == NULL || dir == NULL) {
        print_message("tls: SKIPPED: GANTRY_TEST_ETCD_TLS(_DIR) not set\n");
        return;
    }
    char *ca = gt_xasprintf("%s/ca.pem", dir), *cert = gt_xasprintf("%s/client.pem", dir);
    char *key = gt_xasprintf("%s/client.key", dir), *wrong_ca = gt_xasprintf("%s/other-ca.pem", dir);
    const char *hosts[] = {host};
    gt_store_etcd_config cfg = {.hosts = hosts, .n_hosts = 1, .cluster_id = p->c->cluster,
                                .use_tls = true, .client_cert_auth = true, .ca_file = ca,
                                .cert_file = cert, .key_file = key};
    gt_error err = {0};
    gt_store *s = gt_store_open_etcd(&cfg, &err);
    if (s == NULL)
        fail_msg("open over TLS: %s", err.message);
    int64_t rev = 0;
    assert_int_equal(gt_store_put(s, "things", "tls", "{\"over\":\"tls\"}", GT_REV_NONE, &rev,
                                  &err), GT_OK);
    gt_store_free(&s);
    /* the same document through a plain member: one cluster */
    char *body = NULL;
    assert_int_equal(gt_store_get(p->h[0], "things", "tls", &body, NULL, &err), GT_OK);
    assert_string_equal(body, "{\"over\":\"tls\"}");
    free(body);
    cfg.client_cert_auth = false;
    gt_error_clear(&err);
    assert_null(gt_store_open_etcd(&cfg, &err));
    assert_int_equal(err.code, GT_EUNAVAIL);
    cfg.client_cert_auth = true;
    cfg.ca_file = wrong_ca;   /* not the CA that signed the member's certificate */
    gt_error_clear(&err);
    assert_null(gt_store_open_etcd(&cfg, &err));
    assert_int_equal(err.code, GT_EUNAVAIL);
    free(ca);
    free(cert);
    free(key);
    free(wrong_ca);
}

/* The reply parser on its own (no server): anything unexpected is GT_EIO, with a message. */
static void expect_bad_reply(const char *text)
{
    cJSON *root = NULL;
    int64_t rev = 0;
    gt_error err = {0};
    gt_err rc = gt_etcd__parse_reply(text, strlen(text), &root, &rev, &err);
    if (rc == GT_OK) {   /* the envelope is fine: the kvs must not be */
        gt_etcd_kvs kvs = {0};
        rc = gt_etcd__range_kvs(root, &kvs, &err);
        gt_etcd__kvs_free(&kvs);
        cJSON_Delete(root);
    }
    if (rc != GT_EIO)
        fail_msg("accepted or misreported (%d): %s", rc, text);
    assert_int_equal(err.code, GT_EIO);
    assert_true(err.message[0] != '\0');
}

static void test_reply_parser(void **state)
{
    (void)state;
    expect_bad_reply("");
    expect_bad_reply("<html>proxy error</html>");
    expect_bad_reply("[]");
    expect_bad_reply("{}");
    expect_bad_reply("{\"header\":{}}");
    expect_bad_reply("{\"header\":{\"revision\":5}}");
    expect_bad_reply("{\"header\":{\"revision\":\"-3\"}}");
    expect_bad_reply("{\"header\":{\"revision\":\"12x\"}}");
    expect_bad_reply("{\"header\":{\"revision\":\"99999999999999999999\"}}");
    expect_bad_reply("{\"header\":{\"revision\":\"2\"},\"kvs\":{}}");
    expect_bad_reply("{\"header\":{\"revision\":\"2\"},\"kvs\":[1]}");
    expect_bad_reply("{\"header\":{\"revision\":\"2\"},\"kvs\":[{\"key\":\"!!\","
                     "\"mod_revision\":\"2\",\"create_revision\":\"2\"}]}");
    expect_bad_reply("{\"header\":{\"revision\":\"2\"},\"kvs\":[{\"key\":\"AA==\","
                     "\"mod_revision\":\"2\",\"create_revision\":\"2\"}]}");   /* NUL */
    expect_bad_reply("{\"header\":{\"revision\":\"2\"},\"kvs\":[{\"key\":\"Zm9v\"}]}");
    /* and a good one decodes */
    const char *good = "{\"header\":{\"revision\":\"7\"},\"kvs\":[{\"key\":\"Zm9v\","
                       "\"create_revision\":\"3\",\"mod_revision\":\"7\",\"value\":\"e30=\","
                       "\"lease\":\"42\"}],\"count\":\"1\"}";
    cJSON *root = NULL;
    int64_t rev = 0;
    gt_etcd_kvs kvs = {0};
    assert_int_equal(gt_etcd__parse_reply(good, strlen(good), &root, &rev, NULL), GT_OK);
    assert_int_equal(rev, 7);
    assert_int_equal(gt_etcd__range_kvs(root, &kvs, NULL), GT_OK);
    assert_int_equal(kvs.n, 1);
    assert_string_equal(kvs.v[0].key, "foo");
    assert_string_equal(kvs.v[0].value, "{}");
    assert_int_equal(kvs.v[0].mod_revision, 7);
    assert_int_equal(kvs.v[0].lease, 42);
    gt_etcd__kvs_free(&kvs);
    cJSON_Delete(root);
}

/* 1 MiB of stdout and 1 MiB of stderr, of the bytes that grow most when escaped as JSON
 * (a control character becomes \u0001: six bytes), fit etcd's 1.5 MiB request limit:
 * output.c stores them apart in chunks, and they read back exactly. */
static void test_big_output(void **state)
{
    pair *p = *state;
    gt_store *s = p->h[0];
    size_t n = (size_t)1 << 20;
    char *out = gt_xmalloc(n + 1), *errs = gt_xmalloc(n + 1);
    memset(out, 0x01, n);
    out[n] = '\0';
    for (size_t i = 0; i < n; i++)
        errs[i] = "\"\\\n"[i % 3];
    errs[n] = '\0';
    cJSON *ex = cJSON_CreateObject();
    gt_json_set_str(ex, "id", "01EXAMPLEBIGOUTPUT");
    cJSON_AddNumberToObject(ex, "attempt", 1);
    gt_json_set_str(ex, "stdout", out);
    gt_json_set_str(ex, "stderr", errs);
    gt_error err = {0};
    assert_int_equal(gt_output_put(s, ex, NULL, &err), GT_OK);
    char *doc = gt_json_print(ex);
    assert_true(strlen(doc) < 64 * 1024);
    assert_int_equal(gt_store_put(s, "executions", "01EXAMPLEBIGOUTPUT", doc, GT_REV_NONE, NULL,
                                  &err), GT_OK);
    free(doc);
    cJSON_Delete(ex);

    char *body = NULL;
    assert_int_equal(gt_store_get(s, "executions", "01EXAMPLEBIGOUTPUT", &body, NULL, &err),
                     GT_OK);
    cJSON *back = cJSON_Parse(body);
    free(body);
    assert_non_null(back);
    assert_int_equal(gt_output_load(s, back, &err), GT_OK);
    const cJSON *so = cJSON_GetObjectItemCaseSensitive(back, "stdout");
    const cJSON *se = cJSON_GetObjectItemCaseSensitive(back, "stderr");
    assert_true(cJSON_IsString(so) && cJSON_IsString(se));
    assert_int_equal(strlen(so->valuestring), n);
    assert_int_equal(strlen(se->valuestring), n);
    assert_memory_equal(so->valuestring, out, n);
    assert_memory_equal(se->valuestring, errs, n);
    cJSON_Delete(back);
    free(out);
    free(errs);
}

/* ---- the leader dies under a load of writes ----
 * Writers create documents with fresh ids and increment counters by compare-and-set
 * while the harness SIGKILLs the etcd leader. Every acknowledged write must be there
 * afterwards, a fresh id must never already exist (nothing applied twice), and the
 * writers must go on acknowledging writes after the election. A write whose outcome
 * is unknown (GT_EUNAVAIL: the member died with it in flight) may or may not be there. */

enum { KILL_WRITERS = 3, KILL_OPS = 100000 };

typedef struct kill_writer {
    etcd_ctx *c;
    int n;
    atomic_bool *stop;
    atomic_long *acked_after_kill;
    atomic_bool *killed;
    unsigned char *acked;        /* per create: 1 acknowledged, 2 unknown */
    long creates, acked_creates, unknown_creates;
    long acked_incr, unknown_incr;
    long other_errors;
    char first_error[1200];
} kill_writer;

static void *kill_writer_run(void *arg)
{
    kill_writer *w = arg;
    /* each writer starts at another member, so one of them talks to the leader itself */
    etcd_ctx mine = {0};
    snprintf(mine.cluster, sizeof mine.cluster, "%s", w->c->cluster);
    for (size_t i = 0; i < w->c->hosts.n; i++)
        gt_strv_push(&mine.hosts, w->c->hosts.v[(i + (size_t)w->n) % w->c->hosts.n]);
    gt_store *s = open_cluster(&mine);
    gt_strv_free(&mine.hosts);
    if (s == NULL) {
        snprintf(w->first_error, sizeof w->first_error, "cannot open the store");
        w->other_errors++;
        return NULL;
    }
    char counter[32];
    snprintf(counter, sizeof counter, "counter-%d", w->n);
    for (long i = 0; i < KILL_OPS && !atomic_load(w->stop); i++) {
        char id[48];
        snprintf(id, sizeof id, "w%d-%06ld", w->n, i);
        gt_error err = {0};
        gt_err rc = gt_store_put(s, "load", id, "{\"v\":1}", GT_REV_NONE, NULL, &err);
        w->creates++;
        if (rc == GT_OK) {
            w->acked[i] = 1;
            w->acked_creates++;
            if (atomic_load(w->killed))
                atomic_fetch_add(w->acked_after_kill, 1);
        } else if (rc == GT_EUNAVAIL || rc == GT_ETIMEDOUT) {
            w->acked[i] = 2;
            w->unknown_creates++;
        } else {
            if (w->other_errors++ == 0)
                snprintf(w->first_error, sizeof w->first_error, "create %s: %s", id, err.message);
        }
        /* one counter increment by compare-and-set */
        char *body = NULL;
        int64_t rev = 0;
        long v = 0;
        gt_error e2 = {0};
        rc = gt_store_get(s, "load", counter, &body, &rev, &e2);
        if (rc == GT_OK) {
            if (sscanf(body, "{\"n\":%ld}", &v) != 1)
                v = -1000000;
            free(body);
        } else if (rc == GT_ENOTFOUND) {
            rev = GT_REV_NONE;
        } else {
            continue;   /* a read that failed decides nothing */
        }
        char next[48];
        snprintf(next, sizeof next, "{\"n\":%ld}", v + 1);
        rc = gt_store_put(s, "load", counter, next, rev, NULL, &e2);
        if (rc == GT_OK)
            w->acked_incr++;
        else if (rc == GT_EUNAVAIL || rc == GT_ETIMEDOUT)
            w->unknown_incr++;
        /* GT_ECONFLICT: an increment of ours whose reply was lost did apply; read again */
    }
    gt_store_free(&s);
    return NULL;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void test_leader_killed_under_load(void **state)
{
    pair *p = *state;
    const char *ctl = getenv("GANTRY_TEST_ETCD_CONTROL_CMD");
    if (ctl == NULL || ctl[0] == '\0') {
        printf("SKIPPED: etcd leader kill (GANTRY_TEST_ETCD_CONTROL_CMD unset)\n");
        return;
    }
    atomic_bool stop = false, killed = false;
    atomic_long after = 0;
    kill_writer w[KILL_WRITERS];
    pthread_t t[KILL_WRITERS];
    for (int i = 0; i < KILL_WRITERS; i++) {
        w[i] = (kill_writer){.c = p->c, .n = i, .stop = &stop, .killed = &killed,
                             .acked_after_kill = &after, .acked = calloc(KILL_OPS, 1)};
        assert_non_null(w[i].acked);
        assert_int_equal(pthread_create(&t[i], NULL, kill_writer_run, &w[i]), 0);
    }
    usleep(1000 * 1000);
    char cmd[1024], name[64] = "";
    snprintf(cmd, sizeof cmd, "%s kill-leader", ctl);
    FILE *f = popen(cmd, "r");
    assert_non_null(f);
    if (fgets(name, sizeof name, f) == NULL)
        name[0] = '\0';
    int prc = pclose(f);
    name[strcspn(name, "\n")] = '\0';
    assert_int_equal(prc, 0);
    double killed_at = now_s();
    atomic_store(&killed, true);
    /* run on until writes have been acknowledged by the new leader for a while */
    while (now_s() - killed_at < 15 && atomic_load(&after) < 200)
        usleep(50 * 1000);
    double resumed = now_s() - killed_at;
    usleep(500 * 1000);
    atomic_store(&stop, true);
    for (int i = 0; i < KILL_WRITERS; i++)
        pthread_join(t[i], NULL);
    snprintf(cmd, sizeof cmd, "%s start %s >/dev/null", ctl, name);
    int start_rc = system(cmd);

    /* every acknowledged write is there; the rest is there or not, never twice */
    gt_store *s = p->h[0];
    long acked = 0, unknown = 0, present = 0, errors = 0;
    for (int i = 0; i < KILL_WRITERS; i++) {
        acked += w[i].acked_creates;
        unknown += w[i].unknown_creates;
        errors += w[i].other_errors;
        if (w[i].other_errors)
            print_error("writer %d: %ld unexpected errors, first: %s\n", i, w[i].other_errors,
                        w[i].first_error);
        for (long j = 0; j < w[i].creates; j++) {
            char id[48];
            snprintf(id, sizeof id, "w%d-%06ld", i, j);
            gt_error err = {0};
            char *body = NULL;
            gt_err rc = gt_store_get(s, "load", id, &body, NULL, &err);
            if (rc == GT_OK)
                present++;
            if (w[i].acked[j] == 1 && rc != GT_OK)
                print_error("acknowledged %s is lost: %s\n", id, err.message);
            if (w[i].acked[j] == 1)
                assert_int_equal(rc, GT_OK);
            free(body);
        }
        char counter[32], *body = NULL;
        snprintf(counter, sizeof counter, "counter-%d", i);
        long v = 0;
        assert_int_equal(gt_store_get(s, "load", counter, &body, NULL, NULL), GT_OK);
        assert_int_equal(sscanf(body, "{\"n\":%ld}", &v), 1);
        free(body);
        assert_true(v >= w[i].acked_incr);
        assert_true(v <= w[i].acked_incr + w[i].unknown_incr);
        free(w[i].acked);
    }
    printf("etcd leader %s killed under load: %ld creates acknowledged, %ld unknown "
           "(%ld of those applied), writes acknowledged again %.2f s after the kill\n",
           name, acked, unknown, present - acked, resumed);
    assert_int_equal(errors, 0);
    assert_true(present >= acked && present <= acked + unknown);
    assert_true(atomic_load(&after) >= 200);
    assert_int_equal(start_rc, 0);
}

/* ---- etcd's auth (GANTRY_TEST_ETCD_AUTH: one member with auth on, tokens of 2 s) ---- */

typedef struct auth_ctx {
    etcd_ctx c;
    const char *password;
} auth_ctx;

static gt_store *open_auth(auth_ctx *a, const char *user, const char *password, gt_error *err)
{
    gt_store_etcd_config cfg = {
        .hosts = (const char *const *)a->c.hosts.v,
        .n_hosts = a->c.hosts.n,
        .cluster_id = a->c.cluster,
        .username = user,
        .password = password,
        .timeout_ms = 10000,
    };
    return gt_store_open_etcd(&cfg, err);
}

static gt_store *open_auth_fresh(void *ctx)
{
    auth_ctx *a = ctx;
    char *id = gt_id_new();
    snprintf(a->c.cluster, sizeof a->c.cluster, "test-%s", id);
    free(id);
    gt_error err = {0};
    gt_store *s = open_auth(a, "gantry", a->password, &err);
    if (s == NULL)
        print_error("open etcd store with auth: %s\n", err.message);
    return s;
}

static void test_auth(void **state)
{
    auth_ctx *a = *state;
    gt_store *s = open_auth_fresh(a);
    assert_non_null(s);
    assert_int_equal(gt_store_put(s, "things", "one", "{\"a\":1}", GT_REV_NONE, NULL, NULL), GT_OK);
    /* past the token's TTL: the driver signs in again by itself */
    const char *ttl = getenv("GANTRY_TEST_ETCD_AUTH_TOKEN_TTL");
    usleep((useconds_t)((ttl ? atoi(ttl) : 2) * 1000 + 1500) * 1000);
    char *body = NULL;
    gt_error err = {0};
    assert_int_equal(gt_store_get(s, "things", "one", &body, NULL, &err), GT_OK);
    assert_string_equal(body, "{\"a\":1}");
    free(body);
    assert_int_equal(gt_store_put(s, "things", "two", "{}", GT_REV_NONE, NULL, &err), GT_OK);
    gt_store_free(&s);

    /* a wrong password: refused, named, and the password is not in the message */
    gt_error e1 = {0};
    assert_null(open_auth(a, "gantry", "not-the-password-42", &e1));
    assert_int_equal(e1.code, GT_EPERM);
    assert_non_null(strstr(e1.message, "gantry"));
    assert_null(strstr(e1.message, "not-the-password-42"));
    /* no user at all against a cluster that requires one */
    gt_error e2 = {0};
    assert_null(open_auth(a, NULL, NULL, &e2));
    assert_int_equal(e2.code, GT_EPERM);
}

int main(void)
{
    const struct CMUnitTest offline[] = {cmocka_unit_test(test_reply_parser)};
    if (cmocka_run_group_tests_name("store/etcd reply parser", offline, NULL, NULL) != 0)
        return 1;
    const char *env = getenv("GANTRY_TEST_ETCD");
    if (env == NULL || env[0] == '\0') {
        printf("store/etcd: SKIPPED: GANTRY_TEST_ETCD is not set (run under scripts/test-servers)\n");
        return 0;
    }
    etcd_ctx c = {0};
    char *list = gt_xstrdup(env), *save = NULL;
    for (char *h = strtok_r(list, ", ", &save); h; h = strtok_r(NULL, ", ", &save))
        gt_strv_push(&c.hosts, h);
    free(list);
    pair p = {&c, {NULL, NULL}};
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_prestate_setup_teardown(test_cas_race_two_handles, setup_pair,
                                                 teardown_pair, &p),
        cmocka_unit_test_prestate_setup_teardown(test_apply_race_two_handles, setup_pair,
                                                 teardown_pair, &p),
        cmocka_unit_test_prestate_setup_teardown(test_apply_txn_ops_limit, setup_pair,
                                                 teardown_pair, &p),
        cmocka_unit_test_prestate_setup_teardown(test_counter_two_handles, setup_pair,
                                                 teardown_pair, &p),
        cmocka_unit_test_prestate_setup_teardown(test_slash_in_values, setup_pair,
                                                 teardown_pair, &p),
        cmocka_unit_test_prestate_setup_teardown(test_index_after_documents, setup_pair,
                                                 teardown_pair, &p),
        cmocka_unit_test_prestate_setup_teardown(test_silent_member_first, setup_pair,
                                                 teardown_pair, &p),
        cmocka_unit_test_prestate_setup_teardown(test_tls, setup_pair, teardown_pair, &p),
        cmocka_unit_test_prestate_setup_teardown(test_big_output, setup_pair, teardown_pair, &p),
        cmocka_unit_test_prestate_setup_teardown(test_dead_member_first, setup_pair,
                                                 teardown_pair, &p),
    };
    int failed = gt_store_conformance_run("etcd", open_fresh, &c);
    failed += cmocka_run_group_tests_name("store/etcd two handles", tests, NULL, NULL);
    /* last: it kills a member (and starts it again) */
    const struct CMUnitTest faults[] = {
        cmocka_unit_test_prestate_setup_teardown(test_leader_killed_under_load, setup_pair,
                                                 teardown_pair, &p),
    };
    failed += cmocka_run_group_tests_name("store/etcd faults", faults, NULL, NULL);

    const char *auth_env = getenv("GANTRY_TEST_ETCD_AUTH");
    if (auth_env == NULL || auth_env[0] == '\0' || getenv("GANTRY_TEST_ETCD_AUTH_PASSWORD") == NULL) {
        printf("store/etcd auth: SKIPPED: GANTRY_TEST_ETCD_AUTH is not set\n");
    } else {
        auth_ctx a = {.password = getenv("GANTRY_TEST_ETCD_AUTH_PASSWORD")};
        gt_strv_push(&a.c.hosts, auth_env);
        const struct CMUnitTest auth[] = {cmocka_unit_test_prestate(test_auth, &a)};
        failed += cmocka_run_group_tests_name("store/etcd auth", auth, NULL, NULL);
        printf("store/etcd: the conformance suite again, signed in through etcd's auth:\n");
        failed += gt_store_conformance_run("etcd", open_auth_fresh, &a);
        gt_strv_free(&a.c.hosts);
    }
    gt_strv_free(&c.hosts);
    return failed ? 1 : 0;
}
