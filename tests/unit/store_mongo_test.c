/* The MongoDB driver. Without a server (none can be installed here): its conversions
 * of what a server sends (stored documents, leases, change events, positions) and
 * what opening an unreachable or bad URI says. With
 * GANTRY_TEST_MONGODB_URI (a replica set): the conformance suite with a new cluster id
 * per test in a database of its own, dropped at the end, and the new operations. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <mongoc/mongoc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "log.h"
#include "setup.h"
#include "store.h"
#include "store_conformance.h"
#include "store_driver.h"
#include "store_mongo.h"
#include "util.h"

/* ---- without a server ---- */

static const char *x_string(const bson_t *doc, const char *field)
{
    bson_iter_t it, v;
    char *path = gt_xasprintf("x.%s", field);
    const char *s = NULL;
    if (bson_iter_init(&it, doc) && bson_iter_find_descendant(&it, path, &v) &&
        BSON_ITER_HOLDS_UTF8(&v))
        s = bson_iter_utf8(&v, NULL);
    free(path);
    return s;
}

static void test_doc_roundtrip(void **state)
{
    (void)state;
    const char *body = " {\"kind\":\"a\",\"n\":5,\"dup\":\"first\",\"dup\":\"second\","
                       "\"nested\":{\"kind\":\"no\"},\"num\":\"5\",\"list\":[\"x\"],"
                       "\"a.b\":\"dot\",\"$where\":\"dollar\",\"\":\"empty\",\"9x\":\"digit\","
                       "\"esc\":\"caf\\u00e9 \\ud83d\\ude00\",\"f\":-0.5e+10} ";
    bson_t doc;
    gt_mongo__doc_bson("id-\xc3\xa9", body, 42, &doc);
    /* top-level strings with an index field's name, the first of duplicates */
    assert_string_equal(x_string(&doc, "kind"), "a");
    assert_string_equal(x_string(&doc, "dup"), "first");
    assert_string_equal(x_string(&doc, "num"), "5");
    assert_string_equal(x_string(&doc, "esc"), "caf\xc3\xa9 \xf0\x9f\x98\x80");
    assert_null(x_string(&doc, "n"));
    assert_null(x_string(&doc, "nested"));
    assert_null(x_string(&doc, "list"));
    assert_null(x_string(&doc, "f"));
    bson_iter_t it, x;
    assert_true(bson_iter_init_find(&it, &doc, "x") && bson_iter_recurse(&it, &x));
    int keys = 0;
    while (bson_iter_next(&x)) {
        const char *k = bson_iter_key(&x);
        assert_true(strchr(k, '.') == NULL && k[0] != '$' && k[0] != '\0' && k[0] != '9');
        keys++;
    }
    assert_int_equal(keys, 4);
    /* and back: the text exactly as written */
    char *id = NULL, *got = NULL;
    int64_t rev = 0;
    assert_int_equal(gt_mongo__doc_read(&doc, &id, &got, &rev, NULL), GT_OK);
    assert_string_equal(id, "id-\xc3\xa9");
    assert_string_equal(got, body);
    assert_int_equal(rev, 42);
    free(id);
    free(got);
    bson_destroy(&doc);

    /* many duplicate members stay fast (sorted once) and keep the first */
    gt_buf big = {0};
    gt_buf_puts(&big, "{");
    for (int i = 0; i < 60000; i++)
        gt_buf_printf(&big, "%s\"k%d\":\"v%d\"", i ? "," : "", i % 3, i);
    gt_buf_puts(&big, "}");
    int64_t t0 = gt_mono_ms();
    gt_mongo__doc_bson("big", big.data, 1, &doc);
    assert_true(gt_mono_ms() - t0 < 5000);
    assert_string_equal(x_string(&doc, "k0"), "v0");
    assert_string_equal(x_string(&doc, "k2"), "v2");
    bson_destroy(&doc);
    gt_buf_free(&big);
}

static void expect_doc_eio(const bson_t *doc)
{
    char *id = (char *)"x", *body = (char *)"x";
    int64_t rev = 9;
    gt_error err = {0};
    assert_int_equal(gt_mongo__doc_read(doc, &id, &body, &rev, &err), GT_EIO);
    assert_int_equal(err.code, GT_EIO);
    assert_non_null(strstr(err.message, "mongodb"));
    assert_null(id);
    assert_null(body);
    assert_int_equal(rev, 0);
}

static void test_doc_read_malformed(void **state)
{
    (void)state;
    bson_t *d;
    d = BCON_NEW("b", BCON_UTF8("{}"), "rev", BCON_INT64(1));
    expect_doc_eio(d);
    bson_destroy(d);
    d = BCON_NEW("_id", BCON_INT32(7), "b", BCON_UTF8("{}"), "rev", BCON_INT64(1));
    expect_doc_eio(d);
    bson_destroy(d);
    d = BCON_NEW("_id", BCON_UTF8(""), "b", BCON_UTF8("{}"), "rev", BCON_INT64(1));
    expect_doc_eio(d);
    bson_destroy(d);
    d = BCON_NEW("_id", BCON_UTF8("a"), "rev", BCON_INT64(1));
    expect_doc_eio(d);
    bson_destroy(d);
    d = BCON_NEW("_id", BCON_UTF8("a"), "b", BCON_INT32(1), "rev", BCON_INT64(1));
    expect_doc_eio(d);
    bson_destroy(d);
    d = BCON_NEW("_id", BCON_UTF8("a"), "b", BCON_UTF8("{}"));
    expect_doc_eio(d);
    bson_destroy(d);
    d = BCON_NEW("_id", BCON_UTF8("a"), "b", BCON_UTF8("{}"), "rev", BCON_INT64(0));
    expect_doc_eio(d);
    bson_destroy(d);
    d = BCON_NEW("_id", BCON_UTF8("a"), "b", BCON_UTF8("{}"), "rev", BCON_DOUBLE(3.0));
    expect_doc_eio(d);
    bson_destroy(d);
    /* a NUL inside, and bytes that are not UTF-8 */
    d = bson_new();
    BSON_APPEND_UTF8(d, "_id", "a");
    bson_append_utf8(d, "b", 1, "{}\0x", 4);
    BSON_APPEND_INT64(d, "rev", 1);
    expect_doc_eio(d);
    bson_destroy(d);
    d = bson_new();
    bson_append_utf8(d, "_id", 3, "\xff\xfe", 2);
    BSON_APPEND_UTF8(d, "b", "{}");
    BSON_APPEND_INT64(d, "rev", 1);
    expect_doc_eio(d);
    bson_destroy(d);
    /* an int32 revision (a server may narrow small numbers) reads fine */
    d = BCON_NEW("_id", BCON_UTF8("a"), "b", BCON_UTF8("{}"), "rev", BCON_INT32(3), "k",
                 BCON_INT64(9));
    char *body = NULL;
    int64_t rev = 0;
    assert_int_equal(gt_mongo__doc_read(d, NULL, &body, &rev, NULL), GT_OK);
    assert_string_equal(body, "{}");
    assert_int_equal(rev, 3);
    free(body);
    bson_destroy(d);
}

/* A lease read back, and what the driver decides from it after its conditional
 * findAndModify did not match (the shared helpers, with the server's clock). */
static void test_lease_read_and_decide(void **state)
{
    (void)state;
    gt_mongo_lease l;
    gt_error err = {0};
    bson_t *d = BCON_NEW("_id", BCON_UTF8("leader"), "holder", BCON_UTF8("node-a"), "epoch",
                         BCON_INT64(7), "expires", BCON_DATE_TIME(100000), "now",
                         BCON_DATE_TIME(90000), "fenced", BCON_INT64(3));
    assert_int_equal(gt_mongo__lease_read(d, &l, &err), GT_OK);
    assert_string_equal(l.holder, "node-a");
    assert_int_equal(l.epoch, 7);
    assert_int_equal(l.expires_ms, 100000);
    assert_int_equal(l.now_ms, 90000);
    gt_store_lease cur = {l.holder, l.epoch, l.expires_ms}, next;
    /* live and another's: refused, naming the holder */
    assert_int_equal(gt_store__lease_take("leader", &cur, "node-b", l.now_ms, 5000, &next, &err),
                     GT_ECONFLICT);
    assert_non_null(strstr(err.message, "node-a"));
    /* expired by the server's clock: a new term */
    assert_int_equal(gt_store__lease_take("leader", &cur, "node-b", 100000, 5000, &next, NULL),
                     GT_OK);
    assert_int_equal(next.epoch, 8);
    /* a fence at the stored epoch holds until expiry, never after */
    gt_store_fence f = {"leader", "node-a", 7};
    assert_int_equal(gt_store__fence_check(&f, &cur, 99999, NULL), GT_OK);
    gt_error_clear(&err);
    assert_int_equal(gt_store__fence_check(&f, &cur, 100000, &err), GT_ECONFLICT);
    assert_non_null(strstr(err.message, "leader"));
    gt_mongo__lease_clear(&l);
    bson_destroy(d);

    /* a released lease: free, its epoch kept */
    d = BCON_NEW("_id", BCON_UTF8("leader"), "holder", BCON_UTF8(""), "epoch", BCON_INT64(7),
                 "expires", BCON_DATE_TIME(0));
    assert_int_equal(gt_mongo__lease_read(d, &l, NULL), GT_OK);
    assert_string_equal(l.holder, "");
    assert_int_equal(l.now_ms, 0);
    gt_mongo__lease_clear(&l);
    bson_destroy(d);
    /* nothing stored: free, never taken */
    d = bson_new();
    assert_int_equal(gt_mongo__lease_read(d, &l, NULL), GT_OK);
    assert_string_equal(l.holder, "");
    assert_int_equal(l.epoch, 0);
    gt_mongo__lease_clear(&l);
    bson_destroy(d);

    bson_t *bad[] = {
        BCON_NEW("holder", BCON_INT32(1)),
        BCON_NEW("holder", BCON_UTF8("a"), "epoch", BCON_UTF8("7")),
        BCON_NEW("holder", BCON_UTF8("a"), "epoch", BCON_INT64(-1)),
        BCON_NEW("holder", BCON_UTF8("a"), "expires", BCON_INT64(5)),
        BCON_NEW("holder", BCON_UTF8("a"), "now", BCON_UTF8("soon")),
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        gt_error_clear(&err);
        assert_int_equal(gt_mongo__lease_read(bad[i], &l, &err), GT_EIO);
        assert_null(l.holder);
        assert_non_null(strstr(err.message, "lease"));
        bson_destroy(bad[i]);
    }
}

static void test_positions(void **state)
{
    (void)state;
    int64_t a, b, c;
    uint32_t t, i;
    assert_int_equal(gt_mongo__pos_from_ts(1764624301, 5, &a, NULL), GT_OK);
    assert_int_equal(a, ((int64_t)1764624301 << 32) | 5);
    gt_mongo__ts_from_pos(a, &t, &i);
    assert_int_equal(t, 1764624301);
    assert_int_equal(i, 5);
    /* order: by time, then by increment */
    assert_int_equal(gt_mongo__pos_from_ts(1764624301, 6, &b, NULL), GT_OK);
    assert_int_equal(gt_mongo__pos_from_ts(1764624302, 0, &c, NULL), GT_OK);
    assert_true(a < b && b < c);
    /* since + 1 is the first position after since, across an increment's end */
    assert_int_equal(gt_mongo__pos_from_ts(1764624301, UINT32_MAX, &a, NULL), GT_OK);
    gt_mongo__ts_from_pos(a + 1, &t, &i);
    assert_int_equal(t, 1764624302);
    assert_int_equal(i, 0);
    assert_int_equal(a + 1, c);
    /* the last representable time, and past it */
    assert_int_equal(gt_mongo__pos_from_ts(INT32_MAX, UINT32_MAX, &a, NULL), GT_OK);
    assert_int_equal(a, INT64_MAX);
    gt_error err = {0};
    assert_int_equal(gt_mongo__pos_from_ts((uint32_t)INT32_MAX + 1, 0, &a, &err), GT_EIO);
    assert_int_equal(a, 0);
    assert_true(err.message[0] != '\0');
}

static bson_t *event(const char *op, const char *coll, const char *id, int64_t rev, bool with_rev)
{
    bson_t *ev = BCON_NEW("_id", "{", "_data", BCON_UTF8("8262..."), "}", "operationType",
                          BCON_UTF8(op), "clusterTime", BCON_TIMESTAMP(1764624301, 9), "ns", "{",
                          "db", BCON_UTF8("gantry"), "coll", BCON_UTF8(coll), "}", "documentKey",
                          "{", "_id", BCON_UTF8(id), "}");
    if (with_rev) {
        bson_t fd;
        BSON_APPEND_DOCUMENT_BEGIN(ev, "fullDocument", &fd);
        BSON_APPEND_INT64(&fd, "rev", rev);
        bson_append_document_end(ev, &fd);
    }
    return ev;
}

static gt_mongo_event read_event(bson_t *ev, gt_store_change *c, gt_err want_rc)
{
    gt_mongo_event kind = GT_MONGO_EV_DOC;
    int64_t pos = 0;
    gt_error err = {0};
    assert_int_equal(gt_mongo__change_read(ev, "c1:", &kind, &pos, c, &err), want_rc);
    if (want_rc == GT_OK)
        assert_int_equal(pos, ((int64_t)1764624301 << 32) | 9);
    else
        assert_true(err.message[0] != '\0');
    bson_destroy(ev);
    return kind;
}

static void test_change_events(void **state)
{
    (void)state;
    gt_store_change c;
    assert_int_equal(read_event(event("insert", "c1:things", "a", 12, true), &c, GT_OK),
                     GT_MONGO_EV_DOC);
    assert_string_equal(c.coll, "things");
    assert_string_equal(c.id, "a");
    assert_int_equal(c.rev, 12);
    free(c.coll);
    free(c.id);
    assert_int_equal(read_event(event("replace", "c1:x.y", "b", 13, true), &c, GT_OK),
                     GT_MONGO_EV_DOC);
    assert_string_equal(c.coll, "x.y");
    free(c.coll);
    free(c.id);
    assert_int_equal(read_event(event("delete", "c1:things", "a", 0, false), &c, GT_OK),
                     GT_MONGO_EV_DOC);
    assert_int_equal(c.rev, 0);
    free(c.coll);
    free(c.id);
    /* not a stored document of this cluster: a CHECK's bump or placeholder, another
     * cluster (c10 is not c1), the driver's own collections */
    assert_int_equal(read_event(event("update", "c1:things", "a", 0, false), &c, GT_OK),
                     GT_MONGO_EV_SKIP);
    assert_int_equal(read_event(event("insert", "c1:things", "a", 0, false), &c, GT_OK),
                     GT_MONGO_EV_SKIP);
    assert_int_equal(read_event(event("insert", "c10:things", "a", 3, true), &c, GT_OK),
                     GT_MONGO_EV_SKIP);
    assert_int_equal(read_event(event("insert", "c1:_revs", "rev", 3, true), &c, GT_OK),
                     GT_MONGO_EV_SKIP);
    assert_int_equal(read_event(event("insert", "c1:", "a", 3, true), &c, GT_OK),
                     GT_MONGO_EV_SKIP);
    assert_null(c.coll);
    /* what ends the history */
    assert_int_equal(read_event(event("drop", "c1:things", "a", 0, false), &c, GT_OK),
                     GT_MONGO_EV_RESET);
    assert_int_equal(read_event(event("invalidate", "c1:things", "a", 0, false), &c, GT_OK),
                     GT_MONGO_EV_RESET);
    /* malformed */
    read_event(event("insert", "c1:things", "a", 0, true), &c, GT_EIO);
    read_event(event("insert", "c1:things", "", 1, true), &c, GT_EIO);
    bson_t *ev = BCON_NEW("operationType", BCON_UTF8("insert"));
    read_event(ev, &c, GT_EIO);
    ev = BCON_NEW("operationType", BCON_UTF8("delete"), "clusterTime",
                  BCON_TIMESTAMP(1764624301, 9), "documentKey", "{", "_id", BCON_UTF8("a"), "}");
    read_event(ev, &c, GT_EIO);   /* no ns */
    ev = BCON_NEW("operationType", BCON_UTF8("delete"), "clusterTime",
                  BCON_TIMESTAMP(1764624301, 9), "ns", "{", "coll", BCON_UTF8("c1:t"), "}",
                  "documentKey", "{", "_id", BCON_INT32(5), "}");
    read_event(ev, &c, GT_EIO);   /* a non-string id */
    ev = BCON_NEW("clusterTime", BCON_TIMESTAMP(1764624301, 9));
    read_event(ev, &c, GT_EIO);   /* no operationType */
}

/* Majority writes and reads, primary reads and retries, whatever the URI asked for. */
static void test_uri_guarantees(void **state)
{
    (void)state;
    static const char *const uris[] = {
        "mongodb://h1,h2/?replicaSet=rs0",
        "mongodb://h1/?w=1&readConcernLevel=local&readPreference=secondary&retryWrites=false"
        "&retryReads=false",
        "mongodb://h1/?w=0&wtimeoutMS=2500",
    };
    static const int64_t wtimeout[] = {10000, 10000, 2500};
    for (size_t k = 0; k < sizeof uris / sizeof uris[0]; k++) {
        bson_error_t e;
        mongoc_uri_t *uri = mongoc_uri_new_with_error(uris[k], &e);
        assert_non_null(uri);
        gt_mongo__uri_guarantees(uri);
        const mongoc_write_concern_t *wc = mongoc_uri_get_write_concern(uri);
        assert_true(mongoc_write_concern_get_wmajority(wc));
        assert_int_equal(mongoc_write_concern_get_wtimeout_int64(wc), wtimeout[k]);
        assert_string_equal(mongoc_read_concern_get_level(mongoc_uri_get_read_concern(uri)),
                            "majority");
        assert_int_equal(mongoc_read_prefs_get_mode(mongoc_uri_get_read_prefs_t(uri)),
                         MONGOC_READ_PRIMARY);
        assert_true(mongoc_uri_get_option_as_bool(uri, MONGOC_URI_RETRYWRITES, false));
        assert_true(mongoc_uri_get_option_as_bool(uri, MONGOC_URI_RETRYREADS, false));
        mongoc_uri_destroy(uri);
    }
}

/* Opening a store that cannot be reached: GT_EUNAVAIL naming the store and where, and
 * no password, neither in the error nor in the log. */
static void test_open_unreachable(void **state)
{
    (void)state;
    char *logbuf = NULL;
    size_t loglen = 0;
    FILE *log = open_memstream(&logbuf, &loglen);
    gt_log_setup(log, GT_LOG_DEBUG, false, "test");
    gt_store_mongo_config cfg = {
        .uri = "mongodb://gantry:s3cr%40t-pw@127.0.0.1:1/?serverSelectionTimeoutMS=200",
        .cluster_id = "c1",
    };
    gt_error err = {0};
    int64_t t0 = gt_mono_ms();
    gt_store *s = gt_store_open_mongo(&cfg, &err);
    assert_null(s);
    assert_true(gt_mono_ms() - t0 < 10000);
    assert_int_equal(err.code, GT_EUNAVAIL);
    print_message("unreachable: %s\n", err.message);
    assert_non_null(strstr(err.message, "mongodb store"));
    assert_non_null(strstr(err.message, "127.0.0.1:1"));
    assert_non_null(strstr(err.message, "/gantry"));
    assert_null(strstr(err.message, "s3cr"));
    assert_null(strstr(err.message, "gantry:"));
    /* a bad URI: EINVAL naming the key, without its password */
    cfg.uri = "mongodb://gantry:hunter2-pw@/?replicaSet=";
    gt_error_clear(&err);
    assert_null(gt_store_open_mongo(&cfg, &err));
    assert_int_equal(err.code, GT_EINVAL);
    assert_non_null(strstr(err.message, "mongodb_uri"));
    assert_null(strstr(err.message, "hunter2"));
    /* mongoc quotes a password with unescaped characters in its message: scrubbed */
    cfg.uri = "mongodb://gantry:p:w0rd-secret@127.0.0.1/";
    gt_error_clear(&err);
    assert_null(gt_store_open_mongo(&cfg, &err));
    assert_int_equal(err.code, GT_EINVAL);
    print_message("unescaped password: %s\n", err.message);
    assert_non_null(strstr(err.message, "****"));
    assert_null(strstr(err.message, "w0rd"));
    cfg.uri = "mongodb://u:hunter2-pw@127.0.0.1:1/?serverSelectionTimeoutMS=100&authSource=x&"
              "appname=gantry-test";
    cfg.cluster_id = "";
    gt_error_clear(&err);
    assert_null(gt_store_open_mongo(&cfg, &err));
    assert_int_equal(err.code, GT_EINVAL);
    /* names too long for MongoDB's namespaces */
    char *cluster = gt_xasprintf("%0128d", 7), *db = gt_xasprintf("%063d", 7);
    cfg.cluster_id = cluster;
    cfg.database = db;
    gt_error_clear(&err);
    assert_null(gt_store_open_mongo(&cfg, &err));
    assert_int_equal(err.code, GT_EINVAL);
    assert_non_null(strstr(err.message, "too long"));
    assert_null(strstr(err.message, "hunter2"));
    free(cluster);
    free(db);
    fclose(log);
    gt_log_setup(NULL, GT_LOG_WARN, false, "test");
    assert_null(strstr(logbuf ? logbuf : "", "hunter2"));
    assert_null(strstr(logbuf ? logbuf : "", "s3cr"));
    free(logbuf);
}

/* [store] backend = mongodb goes to this driver through gt_setup_open_store. */
static void test_setup_opens_mongodb(void **state)
{
    (void)state;
    const char *text = "[store]\nbackend = mongodb\nmongodb_uri = "
                       "mongodb://app:pw-not-shown@127.0.0.1:1/?serverSelectionTimeoutMS=200\n"
                       "mongodb_database = gantry_prod\n[application]\ncluster_id = east\n";
    gt_config *cfg = gt_config_new();
    gt_error err = {0};
    assert_int_equal(gt_config_load_buffer(cfg, text, strlen(text), "t.conf", &err), GT_OK);
    assert_int_equal(gt_config_finish(cfg, &err), GT_OK);
    gt_store *s = (gt_store *)1;
    assert_int_equal(gt_setup_open_store(cfg, &s, &err), GT_EUNAVAIL);
    assert_null(s);
    assert_non_null(strstr(err.message, "127.0.0.1:1/gantry_prod, cluster east"));
    assert_null(strstr(err.message, "pw-not-shown"));
    gt_config_free(&cfg);
}

/* ---- against a server ---- */

typedef struct live {
    const char *uri;
    char db[64];
    char cluster[64];
} live;

static gt_store *open_cluster(live *l)
{
    gt_error err = {0};
    gt_store_mongo_config cfg = {.uri = l->uri, .database = l->db, .cluster_id = l->cluster};
    gt_store *s = gt_store_open_mongo(&cfg, &err);
    if (s == NULL)
        print_error("open mongodb store: %s\n", err.message);
    return s;
}

static gt_store *open_fresh(void *ctx)
{
    live *l = ctx;
    char *id = gt_id_new();
    snprintf(l->cluster, sizeof l->cluster, "t%s", id);
    free(id);
    return open_cluster(l);
}

typedef struct pair {
    live *l;
    gt_store *h[2];
} pair;

static int setup_pair(void **state)
{
    pair *p = *state;
    p->h[0] = open_fresh(p->l);
    p->h[1] = p->h[0] ? open_cluster(p->l) : NULL;
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
    gt_store_conformance_cas_race(p->h[0], p->h[1], 50);
}

static void test_apply_race_two_handles(void **state)
{
    pair *p = *state;
    gt_store_conformance_apply_race(p->h[0], p->h[1], 50);
}

static void test_counter_two_handles(void **state)
{
    pair *p = *state;
    gt_store_conformance_counter(p->h, 2, 30);
}

/* An index declared through one handle answers the other's queries; one declared
 * after its documents exist finds them. */
static void test_index_across_handles(void **state)
{
    pair *p = *state;
    gt_store_page page;
    for (int i = 0; i < 30; i++) {
        char id[16], body[64];
        snprintf(id, sizeof id, "d%02d", i);
        snprintf(body, sizeof body, "{\"kind\":\"%s\"}", i % 3 ? "x" : "y");
        assert_int_equal(gt_store_put(p->h[0], "many", id, body, GT_REV_NONE, NULL, NULL), GT_OK);
    }
    assert_int_equal(gt_store_query(p->h[1], "many", "kind", "y", NULL, 100, &page, NULL),
                     GT_EINVAL);
    assert_int_equal(gt_store_index(p->h[0], "many", "kind", NULL), GT_OK);
    assert_int_equal(gt_store_query(p->h[1], "many", "kind", "y", NULL, 100, &page, NULL), GT_OK);
    assert_int_equal(page.n, 10);
    gt_store_page_clear(&page);
}

static void test_range_and_count(void **state)
{
    pair *p = *state;
    gt_store *s = p->h[0];
    gt_error err = {0};
    assert_int_equal(gt_store_index(s, "timers", "due", &err), GT_OK);
    for (int i = 0; i < 40; i++) {
        char id[16], body[96];
        snprintf(id, sizeof id, "t%02d", 39 - i);
        /* two timers per due time, so pages split ties */
        snprintf(body, sizeof body, "{\"due\":\"2026-12-01T21:%02d:00.000Z\"}", i / 2);
        assert_int_equal(gt_store_put(s, "timers", id, body, GT_REV_NONE, NULL, &err), GT_OK);
    }
    assert_int_equal(gt_store_put(s, "timers", "nodue", "{\"due\":5}", GT_REV_NONE, NULL, &err),
                     GT_OK);
    /* [21:05, 21:15) by (due, id), page by page */
    gt_strv ids = {0};
    char *cursor = NULL;
    do {
        gt_store_page page;
        assert_int_equal(gt_store_query_range(s, "timers", "due", "2026-12-01T21:05",
                                              "2026-12-01T21:15", cursor, 3, &page, &err), GT_OK);
        free(cursor);
        cursor = gt_xstrdup(page.next_cursor);
        for (size_t i = 0; i < page.n; i++)
            gt_strv_push(&ids, page.items[i].id);
        gt_store_page_clear(&page);
    } while (cursor);
    assert_int_equal(ids.n, 20);
    assert_string_equal(ids.v[0], "t28");   /* due 21:05: t29 and t28, id order within */
    assert_string_equal(ids.v[1], "t29");
    assert_string_equal(ids.v[19], "t11");
    gt_strv_free(&ids);
    int64_t n = 0;
    gt_store_filter f = {.field = "due", .lo = "2026-12-01T21:05", .hi = "2026-12-01T21:15"};
    assert_int_equal(gt_store_count(s, "timers", &f, &n, &err), GT_OK);
    assert_int_equal(n, 20);
    gt_store_filter eq = {.field = "due", .eq = "2026-12-01T21:00:00.000Z"};
    assert_int_equal(gt_store_count(s, "timers", &eq, &n, &err), GT_OK);
    assert_int_equal(n, 2);
    assert_int_equal(gt_store_count(s, "timers", NULL, &n, &err), GT_OK);
    assert_int_equal(n, 41);
    gt_store_filter ids_lo = {.lo = "t30"};
    assert_int_equal(gt_store_count(s, "timers", &ids_lo, &n, &err), GT_OK);
    assert_int_equal(n, 10);
    gt_store_filter any_due = {.field = "due"};
    assert_int_equal(gt_store_count(s, "timers", &any_due, &n, &err), GT_OK);
    assert_int_equal(n, 40);
}

static void test_apply(void **state)
{
    pair *p = *state;
    gt_store *s = p->h[0];
    gt_error err = {0};
    int64_t ra = 0;
    assert_int_equal(gt_store_put(s, "exec", "a", "{\"v\":1}", GT_REV_NONE, &ra, &err), GT_OK);
    gt_store_op ops[3] = {
        {GT_STORE_OP_PUT, "exec", "a", "{\"v\":2}", ra, 0},
        {GT_STORE_OP_PUT, "dispatch", "a", "{\"q\":1}", GT_REV_NONE, 0},
        {GT_STORE_OP_CHECK, "exec", "absent", NULL, GT_REV_NONE, 0},
    };
    assert_int_equal(gt_store_apply(s, ops, 3, NULL, &err), GT_OK);
    assert_true(ops[0].new_rev > ra);
    assert_true(ops[1].new_rev > 0);
    /* a stale revision: nothing written, the op named */
    gt_store_op stale[2] = {
        {GT_STORE_OP_PUT, "dispatch", "b", "{}", GT_REV_NONE, 0},
        {GT_STORE_OP_PUT, "exec", "a", "{\"v\":3}", ra, 0},
    };
    gt_error_clear(&err);
    assert_int_equal(gt_store_apply(s, stale, 2, NULL, &err), GT_ECONFLICT);
    assert_string_equal(err.field, "ops[1]");
    char *body = NULL;
    assert_int_equal(gt_store_get(s, "dispatch", "b", &body, NULL, NULL), GT_ENOTFOUND);
    /* a delete of an absent document is not found */
    gt_store_op del = {GT_STORE_OP_DELETE, "exec", "zz", NULL, GT_REV_ANY, 0};
    assert_int_equal(gt_store_apply(s, &del, 1, NULL, NULL), GT_ENOTFOUND);
    /* fenced: only while the lease is held */
    int64_t e = 0;
    assert_int_equal(gt_store_lease_acquire(s, "sched", "me", 60000, &e, &err), GT_OK);
    gt_store_fence f = {"sched", "me", e}, bad = {"sched", "me", e + 1};
    gt_store_op put = {GT_STORE_OP_PUT, "exec", "f", "{}", GT_REV_ANY, 0};
    assert_int_equal(gt_store_apply(s, &put, 1, &f, &err), GT_OK);
    gt_error_clear(&err);
    assert_int_equal(gt_store_apply(s, &put, 1, &bad, &err), GT_ECONFLICT);
    assert_non_null(strstr(err.message, "sched"));
}

static void test_changes(void **state)
{
    pair *p = *state;
    gt_store *s = p->h[0];
    gt_error err = {0};
    gt_store_changes ch;
    assert_int_equal(gt_store_changes_wait(s, NULL, 0, 0, 0, &ch, &err), GT_OK);
    int64_t since = ch.next;
    assert_true(since > 0);
    gt_store_changes_clear(&ch);
    int64_t r1 = 0;
    assert_int_equal(gt_store_put(p->h[1], "things", "a", "{}", GT_REV_NONE, &r1, &err), GT_OK);
    assert_int_equal(gt_store_put(p->h[1], "things", "a", "{\"v\":2}", r1, &r1, &err), GT_OK);
    assert_int_equal(gt_store_put(p->h[1], "other", "b", "{}", GT_REV_NONE, NULL, &err), GT_OK);
    assert_int_equal(gt_store_delete(p->h[1], "other", "b", GT_REV_ANY, &err), GT_OK);
    const char *only[] = {"things"};
    assert_int_equal(gt_store_changes_wait(s, only, 1, since, 5000, &ch, &err), GT_OK);
    assert_int_equal(ch.n, 1);
    assert_string_equal(ch.v[0].id, "a");
    assert_int_equal(ch.v[0].rev, r1);
    assert_true(ch.next > since);
    gt_store_changes_clear(&ch);
    assert_int_equal(gt_store_changes_wait(s, NULL, 0, since, 5000, &ch, &err), GT_OK);
    assert_int_equal(ch.n, 2);
    assert_string_equal(ch.v[1].coll, "other");
    assert_int_equal(ch.v[1].rev, 0);
    int64_t next = ch.next;
    gt_store_changes_clear(&ch);
    /* nothing new: waits, then returns empty at the same place */
    int64_t t0 = gt_mono_ms();
    assert_int_equal(gt_store_changes_wait(s, NULL, 0, next, 300, &ch, &err), GT_OK);
    assert_int_equal(ch.n, 0);
    assert_true(gt_mono_ms() - t0 >= 250);
    gt_store_changes_clear(&ch);
}

int main(void)
{
    mongoc_init();   /* the driver also does, once; the offline tests call mongoc first */
    const struct CMUnitTest offline[] = {
        cmocka_unit_test(test_doc_roundtrip),
        cmocka_unit_test(test_doc_read_malformed),
        cmocka_unit_test(test_lease_read_and_decide),
        cmocka_unit_test(test_positions),
        cmocka_unit_test(test_change_events),
        cmocka_unit_test(test_uri_guarantees),
        cmocka_unit_test(test_open_unreachable),
        cmocka_unit_test(test_setup_opens_mongodb),
    };
    if (cmocka_run_group_tests_name("store/mongodb without a server", offline, NULL, NULL) != 0)
        return 1;
    const char *uri = getenv("GANTRY_TEST_MONGODB_URI");
    if (uri == NULL || uri[0] == '\0') {
        printf("SKIPPED: MongoDB conformance suite (set GANTRY_TEST_MONGODB_URI=mongodb://... to "
               "run it; no MongoDB server can be installed here)\n");
        return 0;
    }
    live l = {.uri = uri};
    char *id = gt_id_new();
    snprintf(l.db, sizeof l.db, "gantry_test_%s", id);
    free(id);
    pair p = {&l, {NULL, NULL}};
#define P(fn) cmocka_unit_test_prestate_setup_teardown(fn, setup_pair, teardown_pair, &p)
    const struct CMUnitTest tests[] = {
        P(test_cas_race_two_handles), P(test_apply_race_two_handles), P(test_counter_two_handles),
        P(test_index_across_handles), P(test_range_and_count),       P(test_apply),
        P(test_changes),
    };
#undef P
    int failed = gt_store_conformance_run("mongodb", open_fresh, &l);
    failed += cmocka_run_group_tests_name("store/mongodb two handles", tests, NULL, NULL);
    /* the test database goes, whatever happened */
    mongoc_client_t *client = mongoc_client_new(uri);
    bson_error_t e;
    if (client) {
        mongoc_database_t *db = mongoc_client_get_database(client, l.db);
        if (!mongoc_database_drop(db, &e))
            fprintf(stderr, "drop test database %s: %s\n", l.db, e.message);
        mongoc_database_destroy(db);
        mongoc_client_destroy(client);
    }
    return failed ? 1 : 0;
}
