/* The store conformance suite (see store_conformance.h). Each test gets a fresh store
 * from the driver's open_fresh. Linked into every unit test binary: only static
 * functions and one entry point, no global state. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "store_conformance.h"
#include "util.h"

typedef struct fixture {
    const char *driver;
    gt_store *(*open_fresh)(void *ctx);
    void *ctx;
    gt_store *s;
} fixture;

static int setup(void **state)
{
    fixture *f = *state;
    f->s = f->open_fresh(f->ctx);
    return f->s ? 0 : -1;
}

static int teardown(void **state)
{
    fixture *f = *state;
    gt_store_free(&f->s);
    return 0;
}

static gt_store *store_of(void **state)
{
    return ((fixture *)*state)->s;
}

/* ---- helpers: each call gets its own gt_error (errors are set once) ---- */

static int64_t put_ok(gt_store *s, const char *coll, const char *id, const char *body,
                      int64_t expect)
{
    gt_error err = {0};
    int64_t rev = -7;
    gt_err rc = gt_store_put(s, coll, id, body, expect, &rev, &err);
    if (rc != GT_OK)
        fail_msg("put %s/%s: %s: %s", coll, id, gt_strerror(rc), err.message);
    assert_true(rev >= 1);
    return rev;
}

static gt_err put_rc(gt_store *s, const char *coll, const char *id, const char *body,
                     int64_t expect, gt_error *err)
{
    gt_error_clear(err);
    return gt_store_put(s, coll, id, body, expect, NULL, err);
}

/* Asserts coll/id holds body at rev (rev 0: any revision). */
static void expect_doc(gt_store *s, const char *coll, const char *id, const char *body,
                       int64_t rev)
{
    gt_error err = {0};
    char *got = NULL;
    int64_t got_rev = 0;
    gt_err rc = gt_store_get(s, coll, id, &got, &got_rev, &err);
    if (rc != GT_OK)
        fail_msg("get %s/%s: %s: %s", coll, id, gt_strerror(rc), err.message);
    assert_string_equal(got, body);
    if (rev)
        assert_int_equal(got_rev, rev);
    free(got);
}

static void expect_missing(gt_store *s, const char *coll, const char *id)
{
    gt_error err = {0};
    char *got = (char *)"x";
    int64_t rev = 5;
    assert_int_equal(gt_store_get(s, coll, id, &got, &rev, &err), GT_ENOTFOUND);
    assert_null(got);
    assert_int_equal(err.code, GT_ENOTFOUND);
}

static void declare(gt_store *s, const char *coll, const char *field)
{
    gt_error err = {0};
    gt_err rc = gt_store_index(s, coll, field, &err);
    if (rc != GT_OK)
        fail_msg("index %s.%s: %s", coll, field, err.message);
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

/* The short lease of the expiry tests: 30 ms, or the driver's granularity when that is
 * coarser (etcd: 1 s). The tests wait 4 such TTLs for it to expire. */
static int64_t short_ttl(gt_store *s)
{
    int64_t g = gt_store_lease_granularity_ms(s);
    return g > 30 ? g : 30;
}

/* Walks a whole query page by page; returns the ids in order (caller frees with
 * gt_strv_free) and checks what every page must satisfy. */
static gt_strv walk(gt_store *s, const char *coll, const char *field, const char *value,
                    size_t limit, size_t *pages)
{
    gt_strv ids = {0};
    char *cursor = NULL;
    *pages = 0;
    for (;;) {
        gt_error err = {0};
        gt_store_page page;
        gt_err rc = gt_store_query(s, coll, field, value, cursor, limit, &page, &err);
        if (rc != GT_OK)
            fail_msg("query %s: %s", coll, err.message);
        (*pages)++;
        assert_true(page.n <= limit);
        for (size_t i = 0; i < page.n; i++) {
            assert_true(page.items[i].rev >= 1);
            if (ids.n > 0 && strcmp(ids.v[ids.n - 1], page.items[i].id) >= 0)
                fail_msg("%s: %s after %s: not in ascending order", coll, page.items[i].id,
                         ids.v[ids.n - 1]);
            gt_strv_push(&ids, page.items[i].id);
        }
        free(cursor);
        cursor = NULL;
        if (page.next_cursor) {
            /* A cursor is the page's last id; an empty page is always the last. */
            assert_true(page.n > 0);
            assert_string_equal(page.next_cursor, page.items[page.n - 1].id);
            cursor = gt_xstrdup(page.next_cursor);
        }
        gt_store_page_clear(&page);
        assert_null(page.items);
        if (cursor == NULL)
            break;
        assert_true(*pages < 100000);
    }
    return ids;
}

/* ---- tests ---- */

static void test_driver_name(void **state)
{
    fixture *f = *state;
    assert_string_equal(gt_store_driver(f->s), f->driver);
}

static void test_get_missing(void **state)
{
    gt_store *s = store_of(state);
    gt_error err = {0};
    char *body = NULL;
    expect_missing(s, "things", "nope");
    assert_int_equal(gt_store_get(s, "things", "nope", &body, NULL, &err), GT_ENOTFOUND);
    assert_non_null(strstr(err.message, "things/nope"));
    assert_null(body);
}

static void test_put_new_and_get(void **state)
{
    gt_store *s = store_of(state);
    const char *body = "{\"name\":\"a\",\"n\":1,\"list\":[1,2,{\"x\":null}]}";
    int64_t rev = put_ok(s, "things", "a", body, GT_REV_NONE);
    expect_doc(s, "things", "a", body, rev);
    /* rev may be NULL on get and new_rev on put. */
    gt_error err = {0};
    char *got = NULL;
    assert_int_equal(gt_store_get(s, "things", "a", &got, NULL, &err), GT_OK);
    assert_string_equal(got, body);
    free(got);
    assert_int_equal(gt_store_put(s, "things", "b", "{}", GT_REV_ANY, NULL, &err), GT_OK);
    expect_doc(s, "things", "b", "{}", 0);
}

static void test_put_if_none_conflict(void **state)
{
    gt_store *s = store_of(state);
    gt_error err = {0};
    int64_t rev = put_ok(s, "things", "a", "{\"v\":1}", GT_REV_NONE);
    int64_t new_rev = 99;
    assert_int_equal(gt_store_put(s, "things", "a", "{\"v\":2}", GT_REV_NONE, &new_rev, &err),
                     GT_ECONFLICT);
    assert_int_equal(new_rev, 0);
    assert_non_null(strstr(err.message, "things/a"));
    expect_doc(s, "things", "a", "{\"v\":1}", rev);
}

static void test_cas(void **state)
{
    gt_store *s = store_of(state);
    gt_error err = {0};
    int64_t r1 = put_ok(s, "things", "a", "{\"v\":1}", GT_REV_NONE);
    int64_t r2 = put_ok(s, "things", "a", "{\"v\":2}", r1);
    assert_true(r2 > r1);
    /* A stale revision fails and writes nothing. */
    assert_int_equal(put_rc(s, "things", "a", "{\"v\":3}", r1, &err), GT_ECONFLICT);
    assert_non_null(strstr(err.message, "things/a"));
    expect_doc(s, "things", "a", "{\"v\":2}", r2);
    /* A revision from the future too. */
    assert_int_equal(put_rc(s, "things", "a", "{\"v\":3}", r2 + 1000, &err), GT_ECONFLICT);
    /* CAS on an absent document is a conflict and creates nothing. */
    assert_int_equal(put_rc(s, "things", "b", "{\"v\":1}", r2, &err), GT_ECONFLICT);
    expect_missing(s, "things", "b");
    /* Unconditional always writes. */
    int64_t r3 = put_ok(s, "things", "a", "{\"v\":4}", GT_REV_ANY);
    assert_true(r3 > r2);
    expect_doc(s, "things", "a", "{\"v\":4}", r3);
}

static void test_revisions_increase(void **state)
{
    gt_store *s = store_of(state);
    int64_t last_a = 0, last_b = 0;
    char body[64];
    for (int i = 0; i < 50; i++) {
        snprintf(body, sizeof body, "{\"i\":%d}", i);
        int64_t ra = put_ok(s, "things", "a", body, i % 2 ? last_a : GT_REV_ANY);
        assert_true(ra > last_a);
        last_a = ra;
        if (i % 3 == 0) {
            int64_t rb = put_ok(s, "things", "b", body, GT_REV_ANY);
            assert_true(rb > last_b);
            last_b = rb;
        }
    }
    expect_doc(s, "things", "a", "{\"i\":49}", last_a);
}

static void test_delete(void **state)
{
    gt_store *s = store_of(state);
    gt_error err = {0};
    assert_int_equal(gt_store_delete(s, "things", "a", GT_REV_ANY, &err), GT_ENOTFOUND);
    assert_non_null(strstr(err.message, "things/a"));
    int64_t r1 = put_ok(s, "things", "a", "{\"v\":1}", GT_REV_NONE);
    gt_error_clear(&err);
    assert_int_equal(gt_store_delete(s, "things", "a", r1 + 1, &err), GT_ECONFLICT);
    assert_non_null(strstr(err.message, "things/a"));
    expect_doc(s, "things", "a", "{\"v\":1}", r1);
    gt_error_clear(&err);
    assert_int_equal(gt_store_delete(s, "things", "a", r1, &err), GT_OK);
    expect_missing(s, "things", "a");
    assert_int_equal(gt_store_delete(s, "things", "a", r1, &err), GT_ENOTFOUND);
    put_ok(s, "things", "b", "{}", GT_REV_NONE);
    assert_int_equal(gt_store_delete(s, "things", "b", GT_REV_ANY, &err), GT_OK);
    expect_missing(s, "things", "b");
}

static void test_delete_recreate_no_reuse(void **state)
{
    gt_store *s = store_of(state);
    gt_error err = {0};
    int64_t r1 = put_ok(s, "things", "a", "{\"v\":1}", GT_REV_NONE);
    int64_t r2 = put_ok(s, "things", "a", "{\"v\":2}", r1);
    assert_int_equal(gt_store_delete(s, "things", "a", r2, &err), GT_OK);
    int64_t r3 = put_ok(s, "things", "a", "{\"v\":3}", GT_REV_NONE);
    assert_true(r3 > r2);
    /* Holders of the old revisions cannot overwrite the new document. */
    assert_int_equal(put_rc(s, "things", "a", "{\"stale\":1}", r1, &err), GT_ECONFLICT);
    assert_int_equal(put_rc(s, "things", "a", "{\"stale\":2}", r2, &err), GT_ECONFLICT);
    gt_error_clear(&err);
    assert_int_equal(gt_store_delete(s, "things", "a", r1, &err), GT_ECONFLICT);
    expect_doc(s, "things", "a", "{\"v\":3}", r3);
    /* And again, several times over. */
    int64_t last = r3;
    for (int i = 0; i < 5; i++) {
        gt_error_clear(&err);
        assert_int_equal(gt_store_delete(s, "things", "a", GT_REV_ANY, &err), GT_OK);
        int64_t r = put_ok(s, "things", "a", "{}", GT_REV_NONE);
        assert_true(r > last);
        last = r;
    }
}

enum { NDOCS = 250 };

static void put_numbered(gt_store *s, int64_t *revs)
{
    /* Insert in a scrambled order (97 is prime to 250), so order comes from the store. */
    for (int k = 0; k < NDOCS; k++) {
        int i = (k * 97) % NDOCS;
        char id[32], body[128];
        snprintf(id, sizeof id, "doc-%03d", i);
        snprintf(body, sizeof body, "{\"n\":%d,\"parity\":\"%s\",\"third\":\"t%d\"}", i,
                 i % 2 ? "odd" : "even", i % 3);
        revs[i] = put_ok(s, "things", id, body, GT_REV_NONE);
    }
}

static void test_query_all_paginated(void **state)
{
    gt_store *s = store_of(state);
    int64_t revs[NDOCS];
    put_numbered(s, revs);
    put_ok(s, "other", "doc-000", "{\"n\":-1}", GT_REV_NONE);   /* must not show up */

    size_t pages;
    gt_strv ids = walk(s, "things", NULL, NULL, 7, &pages);
    assert_int_equal(ids.n, NDOCS);
    for (int i = 0; i < NDOCS; i++) {
        char id[32];
        snprintf(id, sizeof id, "doc-%03d", i);
        assert_string_equal(ids.v[i], id);
    }
    assert_true(pages <= NDOCS / 7 + 2);
    gt_strv_free(&ids);

    /* Bodies and revisions come back as written, page after page. */
    gt_error err = {0};
    gt_store_page page;
    char *cursor = NULL;
    int seen = 0;
    do {
        assert_int_equal(gt_store_query(s, "things", NULL, NULL, cursor, 7, &page, &err), GT_OK);
        free(cursor);
        cursor = gt_xstrdup(page.next_cursor);
        for (size_t i = 0; i < page.n; i++, seen++) {
            char body[128];
            snprintf(body, sizeof body, "{\"n\":%d,\"parity\":\"%s\",\"third\":\"t%d\"}", seen,
                     seen % 2 ? "odd" : "even", seen % 3);
            assert_string_equal(page.items[i].body, body);
            assert_int_equal(page.items[i].rev, revs[seen]);
        }
        gt_store_page_clear(&page);
    } while (cursor);
    assert_int_equal(seen, NDOCS);

    /* One big page holds everything and says it is the last. */
    assert_int_equal(gt_store_query(s, "things", NULL, NULL, NULL, 10000, &page, &err), GT_OK);
    assert_int_equal(page.n, NDOCS);
    assert_null(page.next_cursor);
    gt_store_page_clear(&page);
}

typedef struct each_ctx {
    gt_store *s;
    int seen;
    int stop_after;         /* 0: never */
    bool rewrite;           /* write each document back while walking */
} each_ctx;

static bool each_visit(void *arg, const gt_store_item *it)
{
    each_ctx *c = arg;
    char id[32];
    snprintf(id, sizeof id, "doc-%03d", c->seen);
    assert_string_equal(it->id, id);
    if (c->rewrite)
        assert_int_equal(gt_store_put(c->s, "things", it->id, it->body, it->rev, NULL, NULL), GT_OK);
    c->seen++;
    return c->stop_after == 0 || c->seen < c->stop_after;
}

static bool each_odd(void *arg, const gt_store_item *it)
{
    (void)it;
    (*(int *)arg)++;
    return true;
}

/* gt_store_each: every document once in order across pages, early stop, a field
 * filter, and writes to the documents walked. */
static void test_each(void **state)
{
    gt_store *s = store_of(state);
    int64_t revs[NDOCS];
    put_numbered(s, revs);
    each_ctx all = {s, 0, 0, false};
    assert_int_equal(gt_store_each(s, "things", NULL, NULL, each_visit, &all, NULL), GT_OK);
    assert_int_equal(all.seen, NDOCS);
    each_ctx some = {s, 0, 10, false};
    assert_int_equal(gt_store_each(s, "things", NULL, NULL, each_visit, &some, NULL), GT_OK);
    assert_int_equal(some.seen, 10);
    each_ctx rewrite = {s, 0, 0, true};
    assert_int_equal(gt_store_each(s, "things", NULL, NULL, each_visit, &rewrite, NULL), GT_OK);
    assert_int_equal(rewrite.seen, NDOCS);
    assert_int_equal(gt_store_index(s, "things", "parity", NULL), GT_OK);
    int odd = 0;
    assert_int_equal(gt_store_each(s, "things", "parity", "odd", each_odd, &odd, NULL), GT_OK);
    assert_int_equal(odd, NDOCS / 2);
    gt_error e = {0};
    assert_int_equal(gt_store_each(s, "things", "nope", "x", each_odd, &odd, &e), GT_EINVAL);
}

/* Descending order: every document once, newest id first, across pages and with an
 * indexed field; the cursor is an exclusive upper bound. */
static void test_query_descending(void **state)
{
    gt_store *s = store_of(state);
    int64_t revs[NDOCS];
    put_numbered(s, revs);
    assert_int_equal(gt_store_index(s, "things", "parity", NULL), GT_OK);
    for (int filtered = 0; filtered < 2; filtered++) {
        gt_store_page page;
        char *cursor = NULL;
        int expect = NDOCS - 1 - (filtered ? 0 : 0);
        if (filtered && expect % 2 == 0)
            expect--; /* the highest odd number */
        int seen = 0;
        do {
            assert_int_equal(gt_store_query_order(s, "things", filtered ? "parity" : NULL,
                                                  filtered ? "odd" : NULL, cursor, 7, true, &page,
                                                  NULL), GT_OK);
            free(cursor);
            cursor = gt_xstrdup(page.next_cursor);
            for (size_t i = 0; i < page.n; i++, seen++) {
                char id[32];
                snprintf(id, sizeof id, "doc-%03d", expect);
                assert_string_equal(page.items[i].id, id);
                assert_int_equal(page.items[i].rev, revs[expect]);
                expect -= filtered ? 2 : 1;
            }
            gt_store_page_clear(&page);
        } while (cursor);
        assert_int_equal(seen, filtered ? NDOCS / 2 : NDOCS);
    }
    /* a cursor in the middle: strictly before it */
    gt_store_page page;
    assert_int_equal(gt_store_query_order(s, "things", NULL, NULL, "doc-100", 3, true, &page, NULL),
                     GT_OK);
    assert_int_equal(page.n, 3);
    assert_string_equal(page.items[0].id, "doc-099");
    assert_string_equal(page.items[2].id, "doc-097");
    gt_store_page_clear(&page);
}

static void test_query_page_edges(void **state)
{
    gt_store *s = store_of(state);
    gt_error err = {0};
    gt_store_page page;
    /* An empty or unknown collection is an empty last page. */
    assert_int_equal(gt_store_query(s, "things", NULL, NULL, NULL, 5, &page, &err), GT_OK);
    assert_int_equal(page.n, 0);
    assert_null(page.next_cursor);
    gt_store_page_clear(&page);

    const char *names[] = {"a", "b", "c", "d", "e"};
    for (int i = 0; i < 5; i++)
        put_ok(s, "things", names[i], "{}", GT_REV_NONE);
    /* Exactly limit left: either no cursor, or a cursor to an empty last page. */
    assert_int_equal(gt_store_query(s, "things", NULL, NULL, "b", 3, &page, &err), GT_OK);
    assert_int_equal(page.n, 3);
    assert_string_equal(page.items[0].id, "c");
    if (page.next_cursor) {
        gt_store_page next;
        assert_int_equal(gt_store_query(s, "things", NULL, NULL, page.next_cursor, 3, &next, &err),
                         GT_OK);
        assert_int_equal(next.n, 0);
        assert_null(next.next_cursor);
        gt_store_page_clear(&next);
    }
    gt_store_page_clear(&page);

    /* A cursor is an id to start after: it still works once that document is gone,
     * and it need not name a document at all. */
    assert_int_equal(gt_store_query(s, "things", NULL, NULL, NULL, 2, &page, &err), GT_OK);
    assert_int_equal(page.n, 2);
    assert_string_equal(page.next_cursor, "b");
    gt_store_page_clear(&page);
    assert_int_equal(gt_store_delete(s, "things", "b", GT_REV_ANY, &err), GT_OK);
    assert_int_equal(gt_store_query(s, "things", NULL, NULL, "b", 2, &page, &err), GT_OK);
    assert_int_equal(page.n, 2);
    assert_string_equal(page.items[0].id, "c");
    assert_string_equal(page.items[1].id, "d");
    gt_store_page_clear(&page);
    assert_int_equal(gt_store_query(s, "things", NULL, NULL, "cc", 10, &page, &err), GT_OK);
    assert_int_equal(page.n, 2);
    assert_string_equal(page.items[0].id, "d");
    assert_null(page.next_cursor);
    gt_store_page_clear(&page);
    assert_int_equal(gt_store_query(s, "things", NULL, NULL, "zzz", 10, &page, &err), GT_OK);
    assert_int_equal(page.n, 0);
    assert_null(page.next_cursor);
    gt_store_page_clear(&page);
}

static void test_query_by_field(void **state)
{
    gt_store *s = store_of(state);
    int64_t revs[NDOCS];
    /* Declared after the documents exist: they are found too. */
    put_numbered(s, revs);
    declare(s, "things", "parity");
    declare(s, "things", "parity");   /* idempotent */
    declare(s, "things", "third");

    size_t pages;
    gt_strv ids = walk(s, "things", "parity", "even", 7, &pages);
    assert_int_equal(ids.n, NDOCS / 2);
    for (size_t i = 0; i < ids.n; i++) {
        char id[32];
        snprintf(id, sizeof id, "doc-%03d", (int)(2 * i));
        assert_string_equal(ids.v[i], id);
    }
    gt_strv_free(&ids);
    ids = walk(s, "things", "third", "t1", 10, &pages);
    assert_int_equal(ids.n, 83);   /* 1, 4, ..., 247 */
    assert_string_equal(ids.v[0], "doc-001");
    assert_string_equal(ids.v[82], "doc-247");
    gt_strv_free(&ids);
    ids = walk(s, "things", "parity", "neither", 7, &pages);
    assert_int_equal(ids.n, 0);
    gt_strv_free(&ids);

    /* Only equal top-level strings match: not numbers, objects, nested fields, or
     * documents without the field. */
    put_ok(s, "things", "x-num", "{\"parity\":5}", GT_REV_NONE);
    put_ok(s, "things", "x-obj", "{\"parity\":{\"a\":1}}", GT_REV_NONE);
    put_ok(s, "things", "x-nested", "{\"inner\":{\"parity\":\"5\"}}", GT_REV_NONE);
    put_ok(s, "things", "x-none", "{}", GT_REV_NONE);
    put_ok(s, "things", "x-case", "{\"Parity\":\"5\"}", GT_REV_NONE);
    ids = walk(s, "things", "parity", "5", 7, &pages);
    assert_int_equal(ids.n, 0);
    gt_strv_free(&ids);
    ids = walk(s, "things", "parity", "{\"a\":1}", 7, &pages);
    assert_int_equal(ids.n, 0);
    gt_strv_free(&ids);
    put_ok(s, "things", "x-str", "{\"parity\":\"5\"}", GT_REV_NONE);
    ids = walk(s, "things", "parity", "5", 7, &pages);
    assert_int_equal(ids.n, 1);
    assert_string_equal(ids.v[0], "x-str");
    gt_strv_free(&ids);

    /* Updates and deletes move documents in and out of results. */
    put_ok(s, "things", "doc-000", "{\"parity\":\"odd\"}", GT_REV_ANY);
    gt_error err = {0};
    assert_int_equal(gt_store_delete(s, "things", "doc-002", GT_REV_ANY, &err), GT_OK);
    ids = walk(s, "things", "parity", "even", 1000, &pages);
    assert_int_equal(ids.n, NDOCS / 2 - 2);
    assert_string_equal(ids.v[0], "doc-004");
    gt_strv_free(&ids);

    /* Another collection's documents never show up. */
    declare(s, "other", "parity");
    put_ok(s, "other", "o1", "{\"parity\":\"even\"}", GT_REV_NONE);
    ids = walk(s, "other", "parity", "even", 7, &pages);
    assert_int_equal(ids.n, 1);
    gt_strv_free(&ids);
}

static void test_query_undeclared_field(void **state)
{
    gt_store *s = store_of(state);
    gt_error err = {0};
    gt_store_page page;
    put_ok(s, "things", "a", "{\"kind\":\"x\"}", GT_REV_NONE);
    assert_int_equal(gt_store_query(s, "things", "kind", "x", NULL, 10, &page, &err), GT_EINVAL);
    assert_non_null(strstr(err.message, "things"));
    assert_non_null(strstr(err.message, "kind"));
    assert_int_equal(page.n, 0);
    assert_null(page.items);
    /* Declared on another collection does not count. */
    declare(s, "other", "kind");
    gt_error_clear(&err);
    assert_int_equal(gt_store_query(s, "things", "kind", "x", NULL, 10, &page, &err), GT_EINVAL);
    /* Nor does a declaration on an unknown collection break anything. */
    declare(s, "empty", "kind");
    assert_int_equal(gt_store_query(s, "empty", "kind", "x", NULL, 10, &page, &err), GT_OK);
    assert_int_equal(page.n, 0);
    gt_store_page_clear(&page);
}

static void test_invalid_json_rejected(void **state)
{
    gt_store *s = store_of(state);
    static const char *const bad[] = {
        "", " ", "{", "}", "[]", "[1,2]", "\"str\"", "42", "null", "true",
        "{\"a\":1,}", "{,}", "{\"a\":+1}", "{\"a\":01}", "{\"a\":.5}", "{\"a\":1.}",
        "{\"a\":1e}", "{\"a\":-}", "{'a':1}", "{a:1}", "{\"a\" 1}", "{\"a\":1 \"b\":2}",
        "{\"a\":1} {}", "{\"a\":1} x", "{\"a\":[1,]}", "{\"a\":NaN}", "{\"a\":Infinity}",
        "{\"a\":tru}", "{\"a\":nul}", "{\"a\":\"unterminated}",
        "{\"a\":\"\x01\"}", "{\"a\":\"tab\there\"}", "{\"a\":\"\\x41\"}", "{\"a\":\"\\u12\"}",
        "{\"a\":\"\xff\"}", "{\"a\":\"\xc3\"}", "{\"a\":\"\xc0\xaf\"}", "{\"a\":\"\xed\xa0\x80\"}",
        "{\"a\":\"\\ud800\"}", "{\"a\":\"\\udc00\"}", "{\"a\":\"\\ud800\\u0041\"}",
        "{\"a\":\"\\u0000\"}", "{\"a\":1}\x01", "{\"a\":/*c*/1}",
    };
    gt_error err = {0};
    declare(s, "things", "a");   /* so drivers that index bodies see every good one */
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char id[32];
        snprintf(id, sizeof id, "bad-%zu", i);
        gt_err rc = put_rc(s, "things", id, bad[i], GT_REV_ANY, &err);
        if (rc != GT_EINVAL)
            fail_msg("body #%zu <%s> accepted (%s)", i, bad[i], gt_strerror(rc));
        assert_non_null(strstr(err.message, "things/"));
        expect_missing(s, "things", id);
    }
    /* Over an existing document: it stays as it was. */
    int64_t rev = put_ok(s, "things", "a", "{\"v\":1}", GT_REV_NONE);
    assert_int_equal(put_rc(s, "things", "a", "{\"v\":", rev, &err), GT_EINVAL);
    assert_int_equal(put_rc(s, "things", "a", "[]", GT_REV_ANY, &err), GT_EINVAL);
    assert_int_equal(put_rc(s, "things", "a", NULL, GT_REV_ANY, &err), GT_EINVAL);
    expect_doc(s, "things", "a", "{\"v\":1}", rev);
    gt_store_page page;
    assert_int_equal(gt_store_query(s, "things", NULL, NULL, NULL, 100, &page, &err), GT_OK);
    assert_int_equal(page.n, 1);
    gt_store_page_clear(&page);

    /* Strict is not picky: all of JSON's grammar is accepted. */
    static const char *const good[] = {
        "{}", " \t\r\n{ }\n", "{\"a\":-0.5e+10,\"b\":[true,false,null,[],{}],\"c\":0}",
        "{\"s\":\"\\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\\ud83d\\ude00\"}", "{\"a\":1E-3,\"b\":-0}",
        "{\"\":\"empty key\",\"dup\":1,\"dup\":2}",
        "{\"u\":\"caf\xc3\xa9 \xe2\x98\x83 \xf0\x9f\x98\x80\"}",
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        char id[32];
        snprintf(id, sizeof id, "good-%zu", i);
        int64_t r = put_ok(s, "things", id, good[i], GT_REV_NONE);
        expect_doc(s, "things", id, good[i], r);
    }
    /* Deep nesting is bounded. */
    gt_buf deep = {0};
    gt_buf_puts(&deep, "{\"a\":");
    for (int i = 0; i < 100; i++)
        gt_buf_puts(&deep, "[");
    for (int i = 0; i < 100; i++)
        gt_buf_puts(&deep, "]");
    gt_buf_puts(&deep, "}");
    put_ok(s, "things", "deep-100", deep.data, GT_REV_NONE);
    gt_buf_free(&deep);
    size_t pages;
    gt_strv ids = walk(s, "things", "a", "x", 3, &pages);
    assert_int_equal(ids.n, 0);
    gt_strv_free(&ids);
    put_ok(s, "things", "a-x", "{\"a\":\"x\"}", GT_REV_NONE);
    ids = walk(s, "things", "a", "x", 3, &pages);
    assert_int_equal(ids.n, 1);
    gt_strv_free(&ids);
    gt_buf_puts(&deep, "{\"a\":");
    for (int i = 0; i < 100000; i++)
        gt_buf_puts(&deep, "[");
    for (int i = 0; i < 100000; i++)
        gt_buf_puts(&deep, "]");
    gt_buf_puts(&deep, "}");
    assert_int_equal(put_rc(s, "things", "deep-100000", deep.data, GT_REV_ANY, &err), GT_EINVAL);
    gt_buf_free(&deep);
    expect_missing(s, "things", "deep-100000");
}

static void test_unicode(void **state)
{
    gt_store *s = store_of(state);
    static const char *const ids[] = {
        "z-ascii", "\xc3\xa9t\xc3\xa9",                 /* été */
        "\xe6\x97\xa5\xe6\x9c\xac",                     /* 日本 */
        "\xf0\x9f\x98\x80-emoji",                       /* 😀 */
        "\xce\xa9mega", "A b/c?d#e%f&g=h+i", "\xe2\x98\x83", "Zebra", "zebra",
    };
    const size_t n = sizeof ids / sizeof ids[0];
    declare(s, "things", "name");
    for (size_t i = 0; i < n; i++) {
        char body[256];
        snprintf(body, sizeof body, "{\"name\":\"Gr\xc3\xbc\xc3\x9f" "e %s\",\"i\":%zu}", ids[i],
                 i);
        int64_t rev = put_ok(s, "things", ids[i], body, GT_REV_NONE);
        expect_doc(s, "things", ids[i], body, rev);
    }
    /* Order is byte order of the UTF-8 ids (what strcmp gives). */
    size_t pages;
    gt_strv got = walk(s, "things", NULL, NULL, 2, &pages);
    assert_int_equal(got.n, n);
    for (size_t i = 0; i < n; i++) {
        size_t below = 0;
        for (size_t k = 0; k < n; k++)
            below += strcmp(ids[k], got.v[i]) < 0;
        assert_int_equal(below, i);
    }
    gt_strv_free(&got);
    /* A unicode value matches, including one the body spells with \u escapes. */
    got = walk(s, "things", "name", "Gr\xc3\xbc\xc3\x9f" "e \xe6\x97\xa5\xe6\x9c\xac", 5, &pages);
    assert_int_equal(got.n, 1);
    assert_string_equal(got.v[0], "\xe6\x97\xa5\xe6\x9c\xac");
    gt_strv_free(&got);
    put_ok(s, "things", "escaped", "{\"name\":\"caf\\u00e9 \\ud83d\\ude00\"}", GT_REV_NONE);
    got = walk(s, "things", "name", "caf\xc3\xa9 \xf0\x9f\x98\x80", 5, &pages);
    assert_int_equal(got.n, 1);
    assert_string_equal(got.v[0], "escaped");
    gt_strv_free(&got);
}

static void test_large_body(void **state)
{
    gt_store *s = store_of(state);
    gt_error err = {0};
    const size_t max = (size_t)1 << 20;
    char *body = gt_xmalloc(max + 1);
    /* {"blob":"xxx...x"} of exactly 1 MiB, with some multi-byte characters in it. */
    memcpy(body, "{\"blob\":\"", 9);
    for (size_t i = 9; i < max - 2; i++)
        body[i] = (char)('a' + i % 26);
    memcpy(body + 1000, "\xe2\x98\x83", 3);
    memcpy(body + max - 2, "\"}", 3);
    assert_int_equal(strlen(body), max);
    int64_t rev = put_ok(s, "things", "big", body, GT_REV_NONE);
    expect_doc(s, "things", "big", body, rev);
    gt_store_page page;
    assert_int_equal(gt_store_query(s, "things", NULL, NULL, NULL, 10, &page, &err), GT_OK);
    assert_int_equal(page.n, 1);
    assert_string_equal(page.items[0].body, body);
    gt_store_page_clear(&page);
    /* One byte more is refused, and the stored one is untouched. */
    char *over = gt_xasprintf("%.*sx\"}", (int)(max - 2), body);
    assert_int_equal(strlen(over), max + 1);
    assert_int_equal(put_rc(s, "things", "big", over, GT_REV_ANY, &err), GT_EINVAL);
    assert_non_null(strstr(err.message, "things/big"));
    free(over);
    expect_doc(s, "things", "big", body, rev);
    free(body);
}

static void test_collections_isolated(void **state)
{
    gt_store *s = store_of(state);
    gt_error err = {0};
    put_ok(s, "things", "x", "{\"in\":\"things\"}", GT_REV_NONE);
    put_ok(s, "other", "x", "{\"in\":\"other\"}", GT_REV_NONE);
    put_ok(s, "things2", "x", "{\"in\":\"things2\"}", GT_REV_NONE);
    expect_doc(s, "things", "x", "{\"in\":\"things\"}", 0);
    expect_doc(s, "other", "x", "{\"in\":\"other\"}", 0);
    assert_int_equal(gt_store_delete(s, "other", "x", GT_REV_ANY, &err), GT_OK);
    expect_missing(s, "other", "x");
    expect_doc(s, "things", "x", "{\"in\":\"things\"}", 0);
    size_t pages;
    gt_strv ids = walk(s, "things", NULL, NULL, 10, &pages);
    assert_int_equal(ids.n, 1);
    gt_strv_free(&ids);
}

static void test_leases(void **state)
{
    gt_store *s = store_of(state);
    gt_error err = {0};
    int64_t e1 = 0, e = 0, e2 = 0;
    assert_int_equal(gt_store_lease_acquire(s, "leader", "node-a", 60000, &e1, &err), GT_OK);
    assert_true(e1 >= 1);
    /* Renewal keeps the epoch. */
    assert_int_equal(gt_store_lease_acquire(s, "leader", "node-a", 60000, &e, &err), GT_OK);
    assert_int_equal(e, e1);
    /* Another holder is refused, and told who holds it. */
    assert_int_equal(gt_store_lease_acquire(s, "leader", "node-b", 60000, &e, &err), GT_ECONFLICT);
    assert_non_null(strstr(err.message, "leader"));
    assert_non_null(strstr(err.message, "node-a"));
    gt_error_clear(&err);
    assert_int_equal(gt_store_lease_release(s, "leader", "node-b", &err), GT_ECONFLICT);
    gt_error_clear(&err);
    assert_int_equal(gt_store_lease_acquire(s, "leader", "node-b", 60000, &e, &err), GT_ECONFLICT);
    /* Leases are independent of each other. */
    gt_error_clear(&err);
    assert_int_equal(gt_store_lease_acquire(s, "scheduler", "node-b", 60000, &e, &err), GT_OK);
    /* Release frees it; releasing again or something never taken is harmless. */
    assert_int_equal(gt_store_lease_release(s, "leader", "node-a", &err), GT_OK);
    assert_int_equal(gt_store_lease_release(s, "leader", "node-a", &err), GT_OK);
    assert_int_equal(gt_store_lease_release(s, "never", "node-a", &err), GT_OK);
    /* The next term has a higher epoch, even right after a release. */
    assert_int_equal(gt_store_lease_acquire(s, "leader", "node-b", 60000, &e2, &err), GT_OK);
    assert_true(e2 > e1);
    gt_error_clear(&err);
    assert_int_equal(gt_store_lease_acquire(s, "leader", "node-a", 60000, &e, &err), GT_ECONFLICT);
    gt_error_clear(&err);
    assert_int_equal(gt_store_lease_release(s, "leader", "node-b", &err), GT_OK);
    assert_int_equal(gt_store_lease_acquire(s, "leader", "node-a", 60000, &e, &err), GT_OK);
    assert_true(e > e2);
    /* Leases and documents do not share a namespace. */
    expect_missing(s, "leases", "leader");
}

static void test_lease_expiry(void **state)
{
    gt_store *s = store_of(state);
    gt_error err = {0};
    int64_t e1 = 0, e2 = 0, e3 = 0, e = 0;
    int64_t ttl = short_ttl(s);
    assert_int_equal(gt_store_lease_acquire(s, "leader", "node-a", ttl, &e1, &err), GT_OK);
    sleep_ms((int)(4 * ttl));
    /* Expired: another holder takes it with a higher epoch... */
    assert_int_equal(gt_store_lease_acquire(s, "leader", "node-b", 60000, &e2, &err), GT_OK);
    assert_true(e2 > e1);
    /* ...and the deposed holder can neither renew nor release it. */
    assert_int_equal(gt_store_lease_acquire(s, "leader", "node-a", ttl, &e, &err), GT_ECONFLICT);
    gt_error_clear(&err);
    assert_int_equal(gt_store_lease_release(s, "leader", "node-a", &err), GT_ECONFLICT);
    /* Re-acquiring one's own expired lease is a new term: new epoch. */
    gt_error_clear(&err);
    assert_int_equal(gt_store_lease_acquire(s, "solo", "node-a", ttl, &e1, &err), GT_OK);
    sleep_ms((int)(4 * ttl));
    assert_int_equal(gt_store_lease_acquire(s, "solo", "node-a", 60000, &e3, &err), GT_OK);
    assert_true(e3 > e1);
}

/* A fenced write goes through only while its lease is held at its epoch. */
static void test_fenced_writes(void **state)
{
    gt_store *s = store_of(state);
    gt_error err = {0};
    int64_t e1 = 0, e2 = 0, rev = 0;
    assert_int_equal(gt_store_lease_acquire(s, "runner:a", "a", 60000, &e1, &err), GT_OK);
    gt_store_fence f = {"runner:a", "a", e1};
    assert_int_equal(gt_store_put_fenced(s, "executions", "x", "{\"n\":1}", GT_REV_NONE, &rev, &f,
                                         &err), GT_OK);
    /* a wrong epoch or holder is refused, and nothing is written */
    gt_store_fence stale = {"runner:a", "a", e1 + 1};
    err = (gt_error){0};
    assert_int_equal(gt_store_put_fenced(s, "executions", "x", "{\"n\":2}", rev, NULL, &stale, &err),
                     GT_ECONFLICT);
    assert_non_null(strstr(err.message, "runner:a"));
    gt_store_fence other = {"runner:a", "b", e1};
    assert_int_equal(gt_store_put_fenced(s, "executions", "x", "{\"n\":2}", rev, NULL, &other, NULL),
                     GT_ECONFLICT);
    expect_doc(s, "executions", "x", "{\"n\":1}", rev);
    /* the fence is checked with the revision: both must hold */
    assert_int_equal(gt_store_put_fenced(s, "executions", "x", "{\"n\":2}", rev + 1000, NULL, &f,
                                         NULL), GT_ECONFLICT);
    /* a lease never taken fences everything out */
    gt_store_fence none = {"never", "a", 1};
    assert_int_equal(gt_store_put_fenced(s, "executions", "y", "{}", GT_REV_ANY, NULL, &none, NULL),
                     GT_ECONFLICT);
    expect_missing(s, "executions", "y");
    /* once the lease expires and another holder takes it, the old holder is out */
    assert_int_equal(gt_store_lease_acquire(s, "runner:b", "b", short_ttl(s), &e2, &err), GT_OK);
    gt_store_fence fb = {"runner:b", "b", e2};
    sleep_ms((int)(4 * short_ttl(s)));
    assert_int_equal(gt_store_put_fenced(s, "executions", "x", "{\"n\":3}", rev, NULL, &fb, NULL),
                     GT_ECONFLICT);
    int64_t e3 = 0;
    assert_int_equal(gt_store_lease_acquire(s, "runner:b", "reaper", 60000, &e3, &err), GT_OK);
    assert_true(e3 > e2);
    assert_int_equal(gt_store_put_fenced(s, "executions", "x", "{\"n\":3}", rev, NULL, &fb, NULL),
                     GT_ECONFLICT);
    gt_store_fence fr = {"runner:b", "reaper", e3};
    assert_int_equal(gt_store_put_fenced(s, "executions", "x", "{\"n\":3}", rev, &rev, &fr, &err),
                     GT_OK);
    expect_doc(s, "executions", "x", "{\"n\":3}", rev);
    /* bad fence arguments are EINVAL */
    gt_store_fence bad = {"", "a", 1};
    assert_int_equal(gt_store_put_fenced(s, "executions", "x", "{}", GT_REV_ANY, NULL, &bad, NULL),
                     GT_EINVAL);
}

static void test_argument_checks(void **state)
{
    gt_store *s = store_of(state);
    gt_error err = {0};
    char *body = NULL;
    gt_store_page page;
    int64_t e;
#define EXPECT_EINVAL(call)                       \
    do {                                          \
        gt_error_clear(&err);                     \
        assert_int_equal((call), GT_EINVAL);      \
        assert_int_equal(err.code, GT_EINVAL);    \
        assert_true(err.message[0] != '\0');      \
    } while (0)
    EXPECT_EINVAL(gt_store_get(NULL, "things", "a", &body, NULL, &err));
    EXPECT_EINVAL(gt_store_get(s, "", "a", &body, NULL, &err));
    EXPECT_EINVAL(gt_store_get(s, NULL, "a", &body, NULL, &err));
    EXPECT_EINVAL(gt_store_get(s, "a/b", "a", &body, NULL, &err));
    EXPECT_EINVAL(gt_store_get(s, "things", "", &body, NULL, &err));
    EXPECT_EINVAL(gt_store_get(s, "things", NULL, &body, NULL, &err));
    EXPECT_EINVAL(gt_store_get(s, "things", "\xff", &body, NULL, &err));
    EXPECT_EINVAL(gt_store_get(s, "things", "a", NULL, NULL, &err));
    EXPECT_EINVAL(gt_store_put(s, "things", "", "{}", GT_REV_ANY, NULL, &err));
    EXPECT_EINVAL(gt_store_put(s, "things", "a", "{}", -2, NULL, &err));
    EXPECT_EINVAL(gt_store_delete(s, "things", "a", GT_REV_NONE, &err));
    EXPECT_EINVAL(gt_store_delete(s, "", "a", GT_REV_ANY, &err));
    EXPECT_EINVAL(gt_store_index(s, "things", "a.b", &err));
    EXPECT_EINVAL(gt_store_index(s, "things", "", &err));
    EXPECT_EINVAL(gt_store_index(s, "things", "x'y", &err));
    EXPECT_EINVAL(gt_store_index(s, "things", NULL, &err));
    EXPECT_EINVAL(gt_store_query(s, "things", NULL, NULL, NULL, 0, &page, &err));
    EXPECT_EINVAL(gt_store_query(s, "things", NULL, NULL, NULL, 10001, &page, &err));
    EXPECT_EINVAL(gt_store_query(s, "things", "kind", NULL, NULL, 10, &page, &err));
    EXPECT_EINVAL(gt_store_query(s, "things", NULL, NULL, NULL, 10, NULL, &err));
    EXPECT_EINVAL(gt_store_query(s, "th'ngs", NULL, NULL, NULL, 10, &page, &err));
    EXPECT_EINVAL(gt_store_lease_acquire(s, "leader", "", 1000, &e, &err));
    EXPECT_EINVAL(gt_store_lease_acquire(s, "", "node-a", 1000, &e, &err));
    EXPECT_EINVAL(gt_store_lease_acquire(s, "leader", "node-a", 0, &e, &err));
    EXPECT_EINVAL(gt_store_lease_acquire(s, "leader", "node-a", -5, &e, &err));
    EXPECT_EINVAL(gt_store_lease_release(s, "leader", NULL, &err));
#undef EXPECT_EINVAL
    /* Limits at their bounds work; err may be NULL everywhere. */
    assert_int_equal(gt_store_query(s, "things", NULL, NULL, NULL, 10000, &page, NULL), GT_OK);
    gt_store_page_clear(&page);
    gt_store_page_clear(&page);   /* twice is harmless */
    gt_store_page_clear(NULL);
    assert_int_equal(gt_store_get(s, "things", "a", &body, NULL, NULL), GT_ENOTFOUND);
    assert_int_equal(gt_store_put(s, "things", "a", "{}", GT_REV_NONE, NULL, NULL), GT_OK);
    assert_int_equal(gt_store_put(s, "things", "a", "{}", GT_REV_NONE, NULL, NULL), GT_ECONFLICT);
    gt_store *none = NULL;
    gt_store_free(&none);
    gt_store_free(NULL);
}

static void test_error_messages(void **state)
{
    gt_store *s = store_of(state);
    gt_error err = {0};
    char *body = NULL;
    assert_int_equal(gt_store_get(s, "services", "foo", &body, NULL, &err), GT_ENOTFOUND);
    assert_non_null(strstr(err.message, "services/foo"));
    assert_non_null(strstr(err.message, "not found"));
    int64_t rev = put_ok(s, "services", "foo", "{}", GT_REV_NONE);
    gt_error_clear(&err);
    assert_int_equal(gt_store_put(s, "services", "foo", "{}", rev + 5, NULL, &err), GT_ECONFLICT);
    assert_int_equal(err.code, GT_ECONFLICT);
    assert_non_null(strstr(err.message, "services/foo"));
    gt_error_clear(&err);
    assert_int_equal(gt_store_delete(s, "services", "bar", GT_REV_ANY, &err), GT_ENOTFOUND);
    assert_non_null(strstr(err.message, "services/bar"));
    /* The first error stays: a later call on a set error changes nothing. */
    assert_int_equal(gt_store_get(s, "services", "baz", &body, NULL, &err), GT_ENOTFOUND);
    assert_non_null(strstr(err.message, "services/bar"));
}

/* ---- range queries, counts, atomic multi-document writes ---- */

/* Walks a whole range query page by page and returns the ids joined by ',' (caller
 * frees), checking what every page must satisfy: at most limit items, a cursor only
 * on a full page, no item twice, each item as stored. */
static char *range_walk(gt_store *s, const char *coll, const char *field, const char *lo,
                        const char *hi, size_t limit, size_t *pages)
{
    gt_buf out = {0};
    gt_strv seen = {0};
    char *cursor = NULL;
    size_t np = 0;
    for (;;) {
        gt_error err = {0};
        gt_store_page page;
        gt_err rc = gt_store_query_range(s, coll, field, lo, hi, cursor, limit, &page, &err);
        if (rc != GT_OK)
            fail_msg("range %s.%s [%s, %s) after %s: %s: %s", coll, field ? field : "id",
                     lo ? lo : "-", hi ? hi : "-", cursor ? cursor : "-", gt_strerror(rc),
                     err.message);
        np++;
        assert_true(page.n <= limit);
        for (size_t i = 0; i < page.n; i++) {
            for (size_t k = 0; k < seen.n; k++)
                if (strcmp(seen.v[k], page.items[i].id) == 0)
                    fail_msg("%s: %s returned twice", coll, page.items[i].id);
            gt_strv_push(&seen, page.items[i].id);
            expect_doc(s, coll, page.items[i].id, page.items[i].body, page.items[i].rev);
            gt_buf_printf(&out, "%s%s", out.len ? "," : "", page.items[i].id);
        }
        free(cursor);
        cursor = NULL;
        if (page.next_cursor) {
            assert_int_equal(page.n, limit);
            cursor = gt_xstrdup(page.next_cursor);
        }
        gt_store_page_clear(&page);
        if (cursor == NULL)
            break;
        assert_true(np < 10000);
    }
    gt_strv_free(&seen);
    if (pages)
        *pages = np;
    return out.len ? gt_buf_steal(&out) : gt_xstrdup("");
}

/* Asserts the range holds exactly want (ids joined by ','), whatever the page size. */
static void expect_range(gt_store *s, const char *coll, const char *field, const char *lo,
                         const char *hi, const char *want)
{
    static const size_t limits[] = {1, 2, 3, 10000};
    for (size_t i = 0; i < sizeof limits / sizeof limits[0]; i++) {
        char *got = range_walk(s, coll, field, lo, hi, limits[i], NULL);
        if (strcmp(got, want) != 0)
            fail_msg("range %s.%s [%s, %s) limit %zu: got \"%s\", want \"%s\"", coll,
                     field ? field : "id", lo ? lo : "-", hi ? hi : "-", limits[i], got, want);
        free(got);
    }
}

static int64_t count_of(gt_store *s, const char *coll, const char *field, const char *eq,
                        const char *lo, const char *hi)
{
    gt_error err = {0};
    gt_store_filter f = {field, eq, lo, hi};
    int64_t n = -1;
    gt_err rc = gt_store_count(s, coll, &f, &n, &err);
    if (rc != GT_OK)
        fail_msg("count %s.%s: %s: %s", coll, field ? field : "id", gt_strerror(rc), err.message);
    return n;
}

/* Values of every kind under one indexed field; only strings are in ranges. */
static void put_timers(gt_store *s)
{
    static const char *const docs[][2] = {
        {"t1", "{\"due\":\"b\"}"},       {"t2", "{\"due\":\"a\"}"},
        {"t3", "{\"due\":\"ab\"}"},      {"t4", "{\"due\":\"a0\"}"},
        {"t5", "{\"due\":\"b\",\"x\":1}"}, {"t6", "{\"due\":\"c\"}"},
        {"t7", "{\"due\":\"\\u00e9\"}"}, {"t8", "{\"due\":\"z\"}"},
        {"t9", "{\"due\":\"\"}"},        {"t10", "{\"due\":\"a/b\"}"},
        {"a-tie", "{\"due\":\"b\"}"},    {"n1", "{\"due\":5}"},
        {"n2", "{\"other\":\"b\"}"},     {"n3", "{\"due\":{\"x\":\"b\"}}"},
        {"n4", "{\"due\":[\"b\"]}"},     {"n5", "{\"due\":true}"},
        {"n6", "{\"due\":null}"},        {"n7", "{\"nested\":{\"due\":\"b\"}}"},
    };
    declare(s, "timers", "due");
    for (size_t i = 0; i < sizeof docs / sizeof docs[0]; i++)
        put_ok(s, "timers", docs[i][0], docs[i][1], GT_REV_NONE);
}

static void test_range_by_field(void **state)
{
    gt_store *s = store_of(state);
    put_timers(s);
    /* (value, id) in byte order: "" < "a" < "a/b" < "a0" < "ab" < "b" (ties by id) < ...
     * < "z" < "\xc3\xa9" (é, above every ASCII byte) */
    expect_range(s, "timers", "due", NULL, NULL, "t9,t2,t10,t4,t3,a-tie,t1,t5,t6,t8,t7");
    expect_range(s, "timers", "due", "a", "b", "t2,t10,t4,t3");   /* hi is exclusive */
    expect_range(s, "timers", "due", "b", "c", "a-tie,t1,t5");    /* lo is inclusive */
    expect_range(s, "timers", "due", "b", NULL, "a-tie,t1,t5,t6,t8,t7");
    expect_range(s, "timers", "due", NULL, "a0", "t9,t2,t10");
    expect_range(s, "timers", "due", "a/", "a1", "t10,t4");
    expect_range(s, "timers", "due", "", "a", "t9");
    expect_range(s, "timers", "due", "zz", NULL, "t7");
    expect_range(s, "timers", "due", "c", "c", "");
    expect_range(s, "timers", "due", "d", "c", "");
    /* the text of an object or an array would sort inside this range: they are not strings */
    expect_range(s, "timers", "due", "[", "~", "t2,t10,t4,t3,a-tie,t1,t5,t6,t8");
    expect_range(s, "timers", "due", "{", NULL, "t7");
    expect_range(s, "timers", "due", NULL, "", "");
    /* a field nobody declared, or a collection nobody wrote, is EINVAL as for gt_store_query */
    gt_error err = {0};
    gt_store_page page;
    assert_int_equal(gt_store_query_range(s, "timers", "other", NULL, NULL, NULL, 10, &page, &err),
                     GT_EINVAL);
    assert_non_null(strstr(err.message, "other"));
    assert_int_equal(page.n, 0);
    assert_int_equal(gt_store_query_range(s, "nowhere", "due", "a", NULL, NULL, 10, &page, NULL),
                     GT_EINVAL);
    /* a cursor that no range query made is refused */
    gt_error_clear(&err);
    assert_int_equal(gt_store_query_range(s, "timers", "due", NULL, NULL, "not a cursor", 10,
                                          &page, &err), GT_EINVAL);
    assert_int_equal(err.code, GT_EINVAL);
    /* nor does a field's cursor resume a range on ids */
    assert_int_equal(gt_store_query_range(s, "timers", "due", NULL, NULL, NULL, 1, &page, &err),
                     GT_OK);
    assert_non_null(page.next_cursor);
    char *cursor = gt_xstrdup(page.next_cursor);
    gt_store_page_clear(&page);
    assert_int_equal(gt_store_query_range(s, "timers", NULL, NULL, NULL, cursor, 10, &page, NULL),
                     GT_EINVAL);
    free(cursor);
}

/* The cursor resumes exactly after the last item, inside a run of equal values, and
 * stays good when the store changes between pages. */
static void test_range_cursor_ties(void **state)
{
    gt_store *s = store_of(state);
    declare(s, "jobs", "due");
    put_ok(s, "jobs", "before", "{\"due\":\"2026-12-01T10:00:00.000Z\"}", GT_REV_NONE);
    put_ok(s, "jobs", "after", "{\"due\":\"2026-12-01T12:00:00.000Z\"}", GT_REV_NONE);
    for (int i = 0; i < 25; i++) {
        char id[16];
        snprintf(id, sizeof id, "j%02d", i);
        put_ok(s, "jobs", id, "{\"due\":\"2026-12-01T11:00:00.000Z\"}", GT_REV_NONE);
    }
    const char *lo = "2026-12-01T11:00:00.000Z", *hi = "2026-12-01T11:00:00.001Z";
    size_t pages = 0;
    char *got = range_walk(s, "jobs", "due", lo, hi, 4, &pages);
    assert_string_equal(got, "j00,j01,j02,j03,j04,j05,j06,j07,j08,j09,j10,j11,j12,j13,j14,j15,"
                             "j16,j17,j18,j19,j20,j21,j22,j23,j24");
    assert_int_equal(pages, 7);
    free(got);
    /* page 1, then writes: the cursor item deleted, a tie inserted behind and one ahead */
    gt_error err = {0};
    gt_store_page page;
    assert_int_equal(gt_store_query_range(s, "jobs", "due", lo, hi, NULL, 5, &page, &err), GT_OK);
    assert_int_equal(page.n, 5);
    assert_string_equal(page.items[4].id, "j04");
    assert_non_null(page.next_cursor);
    char *cursor = gt_xstrdup(page.next_cursor);
    gt_store_page_clear(&page);
    assert_int_equal(gt_store_delete(s, "jobs", "j04", GT_REV_ANY, &err), GT_OK);
    put_ok(s, "jobs", "j035", "{\"due\":\"2026-12-01T11:00:00.000Z\"}", GT_REV_NONE);
    put_ok(s, "jobs", "j045", "{\"due\":\"2026-12-01T11:00:00.000Z\"}", GT_REV_NONE);
    assert_int_equal(gt_store_query_range(s, "jobs", "due", lo, hi, cursor, 3, &page, &err),
                     GT_OK);
    assert_int_equal(page.n, 3);
    assert_string_equal(page.items[0].id, "j045");
    assert_string_equal(page.items[1].id, "j05");
    assert_string_equal(page.items[2].id, "j06");
    gt_store_page_clear(&page);
    /* the same cursor over the whole field: "after" follows the ties */
    assert_int_equal(gt_store_query_range(s, "jobs", "due", NULL, NULL, cursor, 10000, &page,
                                          &err), GT_OK);
    assert_int_equal(page.n, 22);
    assert_string_equal(page.items[21].id, "after");
    assert_null(page.next_cursor);
    gt_store_page_clear(&page);
    free(cursor);
    /* a last page that is exactly full has no cursor */
    assert_int_equal(gt_store_query_range(s, "jobs", "due", NULL, lo, NULL, 1, &page, &err),
                     GT_OK);
    assert_int_equal(page.n, 1);
    assert_string_equal(page.items[0].id, "before");
    assert_null(page.next_cursor);
    gt_store_page_clear(&page);
}

static void test_range_by_id(void **state)
{
    gt_store *s = store_of(state);
    for (int i = 0; i < 30; i++) {
        char id[16];
        snprintf(id, sizeof id, "e%02d", i);
        put_ok(s, "execs", id, "{\"n\":1}", GT_REV_NONE);
    }
    put_ok(s, "execs", "f", "{}", GT_REV_NONE);
    put_ok(s, "execs", "e1", "{}", GT_REV_NONE);      /* "e09" < "e1" < "e10" */
    put_ok(s, "other", "e15", "{}", GT_REV_NONE);     /* another collection */
    expect_range(s, "execs", NULL, "e10", "e20",
                 "e10,e11,e12,e13,e14,e15,e16,e17,e18,e19");
    expect_range(s, "execs", NULL, NULL, "e03", "e00,e01,e02");
    expect_range(s, "execs", NULL, "e25", NULL, "e25,e26,e27,e28,e29,f");
    expect_range(s, "execs", NULL, "e09", "e10", "e09,e1");
    expect_range(s, "execs", NULL, "g", NULL, "");
    expect_range(s, "nowhere", NULL, NULL, NULL, "");
    size_t pages = 0;
    char *all = range_walk(s, "execs", NULL, NULL, NULL, 7, &pages);
    assert_int_equal(pages, 5);   /* 32 ids */
    free(all);
}

/* Ranges follow writes: a changed value moves, a value that stops being a string
 * leaves, a delete removes. */
static void test_range_follows_writes(void **state)
{
    gt_store *s = store_of(state);
    declare(s, "sched", "next");
    int64_t ra = put_ok(s, "sched", "a", "{\"next\":\"2026-01-01\"}", GT_REV_NONE);
    int64_t rb = put_ok(s, "sched", "b", "{\"next\":\"2026-02-01\"}", GT_REV_NONE);
    expect_range(s, "sched", "next", "2026-01", "2026-02", "a");
    ra = put_ok(s, "sched", "a", "{\"next\":\"2026-03-01\"}", ra);
    expect_range(s, "sched", "next", "2026-01", "2026-02", "");
    expect_range(s, "sched", "next", "2026-02", NULL, "b,a");
    ra = put_ok(s, "sched", "a", "{\"next\":20260301}", ra);
    expect_range(s, "sched", "next", NULL, NULL, "b");
    ra = put_ok(s, "sched", "a", "{\"done\":true}", ra);
    expect_range(s, "sched", "next", NULL, NULL, "b");
    ra = put_ok(s, "sched", "a", "{\"next\":\"2026-01-15\"}", ra);
    expect_range(s, "sched", "next", NULL, NULL, "a,b");
    gt_error err = {0};
    assert_int_equal(gt_store_delete(s, "sched", "b", rb, &err), GT_OK);
    expect_range(s, "sched", "next", NULL, NULL, "a");
    expect_range(s, "sched", NULL, NULL, NULL, "a");
    put_ok(s, "sched", "b", "{\"next\":\"2026-01-15\"}", GT_REV_NONE);
    expect_range(s, "sched", "next", "2026-01-15", "2026-01-16", "a,b");
}

static void test_count(void **state)
{
    gt_store *s = store_of(state);
    gt_error err = {0};
    int64_t n = -1;
    /* nothing yet; NULL counts everything */
    assert_int_equal(gt_store_count(s, "timers", NULL, &n, &err), GT_OK);
    assert_int_equal(n, 0);
    put_timers(s);
    assert_int_equal(gt_store_count(s, "timers", NULL, &n, &err), GT_OK);
    assert_int_equal(n, 18);
    assert_int_equal(count_of(s, "timers", NULL, NULL, NULL, NULL), 18);
    assert_int_equal(count_of(s, "timers", "due", "b", NULL, NULL), 3);
    assert_int_equal(count_of(s, "timers", "due", "", NULL, NULL), 1);
    assert_int_equal(count_of(s, "timers", "due", "nope", NULL, NULL), 0);
    assert_int_equal(count_of(s, "timers", "due", "{\"x\":\"b\"}", NULL, NULL), 0);
    assert_int_equal(count_of(s, "timers", "due", "[\"b\"]", NULL, NULL), 0);
    assert_int_equal(count_of(s, "timers", "due", "5", NULL, NULL), 0);
    assert_int_equal(count_of(s, "timers", "due", NULL, NULL, NULL), 11);   /* the strings */
    assert_int_equal(count_of(s, "timers", "due", NULL, "a", "b"), 4);
    assert_int_equal(count_of(s, "timers", "due", NULL, "b", NULL), 6);
    assert_int_equal(count_of(s, "timers", "due", NULL, NULL, "a0"), 3);
    assert_int_equal(count_of(s, "timers", "due", NULL, "[", "~"), 9);
    assert_int_equal(count_of(s, "timers", "due", NULL, "{", NULL), 1);
    assert_int_equal(count_of(s, "timers", NULL, NULL, "t", "t5"), 5);   /* t1 t10 t2 t3 t4 */
    assert_int_equal(count_of(s, "timers", NULL, NULL, "n", NULL), 17);
    assert_int_equal(count_of(s, "timers", NULL, NULL, NULL, "n"), 1);
    /* after updates that change the indexed value, and after deletes */
    put_ok(s, "timers", "t1", "{\"due\":\"c\"}", GT_REV_ANY);
    put_ok(s, "timers", "n1", "{\"due\":\"b\"}", GT_REV_ANY);
    put_ok(s, "timers", "t5", "{\"due\":[1]}", GT_REV_ANY);
    assert_int_equal(count_of(s, "timers", "due", "b", NULL, NULL), 2);   /* a-tie, n1 */
    assert_int_equal(count_of(s, "timers", "due", "c", NULL, NULL), 2);
    assert_int_equal(count_of(s, "timers", "due", NULL, NULL, NULL), 11);
    assert_int_equal(gt_store_delete(s, "timers", "a-tie", GT_REV_ANY, &err), GT_OK);
    assert_int_equal(gt_store_delete(s, "timers", "n3", GT_REV_ANY, &err), GT_OK);
    assert_int_equal(count_of(s, "timers", "due", "b", NULL, NULL), 1);
    assert_int_equal(count_of(s, "timers", "due", NULL, "b", "c"), 1);
    assert_int_equal(count_of(s, "timers", NULL, NULL, NULL, NULL), 16);
    assert_int_equal(count_of(s, "timers", NULL, NULL, "a", "b"), 0);
    assert_int_equal(count_of(s, "other", NULL, NULL, NULL, NULL), 0);
    /* undeclared fields and contradictory filters are EINVAL */
    gt_store_filter und = {"other", "b", NULL, NULL};
    gt_error_clear(&err);
    assert_int_equal(gt_store_count(s, "timers", &und, &n, &err), GT_EINVAL);
    assert_non_null(strstr(err.message, "other"));
    gt_store_filter und_range = {"due", NULL, "a", NULL};
    assert_int_equal(gt_store_count(s, "nowhere", &und_range, &n, NULL), GT_EINVAL);
    gt_store_filter both = {"due", "b", "a", NULL};
    assert_int_equal(gt_store_count(s, "timers", &both, &n, NULL), GT_EINVAL);
    gt_store_filter nofield = {NULL, "b", NULL, NULL};
    assert_int_equal(gt_store_count(s, "timers", &nofield, &n, NULL), GT_EINVAL);
    assert_int_equal(gt_store_count(s, "timers", NULL, NULL, NULL), GT_EINVAL);
}

static void test_apply(void **state)
{
    gt_store *s = store_of(state);
    gt_error err = {0};
    declare(s, "execs", "kind");
    declare(s, "dispatch", "state");
    int64_t rs = put_ok(s, "services", "svc", "{\"name\":\"svc\"}", GT_REV_NONE);
    gt_store_op ops[GT_STORE_MAX_OPS] = {
        {GT_STORE_OP_PUT, "execs", "x", "{\"kind\":\"run\"}", GT_REV_NONE, -1},
        {GT_STORE_OP_PUT, "dispatch", "x", "{\"state\":\"queued\"}", GT_REV_NONE, -1},
        {GT_STORE_OP_CHECK, "services", "svc", NULL, rs, -1},
        {GT_STORE_OP_CHECK, "services", "absent", NULL, GT_REV_NONE, -1},
    };
    if (gt_store_apply(s, ops, 4, NULL, &err) != GT_OK)
        fail_msg("apply: %s", err.message);
    assert_true(ops[0].new_rev > rs);
    assert_true(ops[1].new_rev > rs);
    assert_int_equal(ops[2].new_rev, 0);
    assert_int_equal(ops[3].new_rev, 0);
    expect_doc(s, "execs", "x", "{\"kind\":\"run\"}", ops[0].new_rev);
    expect_doc(s, "dispatch", "x", "{\"state\":\"queued\"}", ops[1].new_rev);
    expect_doc(s, "services", "svc", "{\"name\":\"svc\"}", rs);
    expect_missing(s, "services", "absent");
    expect_range(s, "execs", "kind", "run", "run\x01", "x");
    assert_int_equal(count_of(s, "dispatch", "state", "queued", NULL, NULL), 1);
    /* an update, a delete and a create at once; indexes follow in the same step */
    int64_t rx = ops[0].new_rev, rd = ops[1].new_rev;
    gt_store_op next[] = {
        {GT_STORE_OP_PUT, "execs", "x", "{\"kind\":\"done\"}", rx, 0},
        {GT_STORE_OP_DELETE, "dispatch", "x", NULL, rd, 0},
        {GT_STORE_OP_CHECK, "services", "svc", NULL, GT_REV_ANY, 0},
        {GT_STORE_OP_PUT, "execs", "y", "{\"kind\":\"run\"}", GT_REV_ANY, 0},
    };
    if (gt_store_apply(s, next, 4, NULL, &err) != GT_OK)
        fail_msg("apply: %s", err.message);
    assert_true(next[0].new_rev > rx);
    assert_int_equal(next[1].new_rev, 0);
    assert_true(next[3].new_rev > rd);
    expect_doc(s, "execs", "x", "{\"kind\":\"done\"}", next[0].new_rev);
    expect_doc(s, "execs", "y", "{\"kind\":\"run\"}", next[3].new_rev);
    expect_missing(s, "dispatch", "x");
    assert_int_equal(count_of(s, "dispatch", "state", "queued", NULL, NULL), 0);
    assert_int_equal(count_of(s, "dispatch", NULL, NULL, NULL, NULL), 0);
    expect_range(s, "execs", "kind", NULL, NULL, "x,y");
    expect_range(s, "execs", "kind", "run", NULL, "y");
    gt_store_page page;
    assert_int_equal(gt_store_query(s, "execs", "kind", "done", NULL, 10, &page, &err), GT_OK);
    assert_int_equal(page.n, 1);
    assert_string_equal(page.items[0].id, "x");
    gt_store_page_clear(&page);
    /* GT_STORE_MAX_OPS at once; one op alone */
    char ids[GT_STORE_MAX_OPS][16];
    for (int i = 0; i < GT_STORE_MAX_OPS; i++) {
        snprintf(ids[i], sizeof ids[i], "m%d", i);
        ops[i] = (gt_store_op){GT_STORE_OP_PUT, i % 2 ? "execs" : "dispatch", ids[i],
                               i % 2 ? "{\"kind\":\"many\"}" : "{\"state\":\"many\"}",
                               GT_REV_NONE, 0};
    }
    if (gt_store_apply(s, ops, GT_STORE_MAX_OPS, NULL, &err) != GT_OK)
        fail_msg("apply %d ops: %s", GT_STORE_MAX_OPS, err.message);
    for (int i = 0; i < GT_STORE_MAX_OPS; i++)
        assert_true(ops[i].new_rev > next[0].new_rev);
    assert_int_equal(count_of(s, "execs", "kind", "many", NULL, NULL), GT_STORE_MAX_OPS / 2);
    assert_int_equal(count_of(s, "dispatch", "state", "many", NULL, NULL), GT_STORE_MAX_OPS / 2);
    gt_store_op one = {GT_STORE_OP_DELETE, "execs", "m1", NULL, ops[1].new_rev, 0};
    assert_int_equal(gt_store_apply(s, &one, 1, NULL, &err), GT_OK);
    expect_missing(s, "execs", "m1");
    assert_int_equal(count_of(s, "execs", "kind", "many", NULL, NULL), GT_STORE_MAX_OPS / 2 - 1);
    /* the front door: sizes, duplicates, bad ops */
    gt_error_clear(&err);
    assert_int_equal(gt_store_apply(s, ops, 0, NULL, &err), GT_EINVAL);
    assert_int_equal(gt_store_apply(s, ops, GT_STORE_MAX_OPS + 1, NULL, NULL), GT_EINVAL);
    gt_store_op dup[] = {{GT_STORE_OP_PUT, "execs", "d", "{}", GT_REV_ANY, 0},
                         {GT_STORE_OP_CHECK, "execs", "d", NULL, GT_REV_ANY, 0}};
    gt_error_clear(&err);
    assert_int_equal(gt_store_apply(s, dup, 2, NULL, &err), GT_EINVAL);
    assert_string_equal(err.field, "ops[1]");
    expect_missing(s, "execs", "d");
}

/* Op i's failure is exactly the single-document call's, with err->field "ops[i]", and
 * then nothing at all is written. */
static void expect_apply_fails(gt_store *s, gt_store_op *ops, size_t n, size_t bad,
                               gt_err want_rc, const gt_error *want)
{
    gt_error err = {0};
    gt_err rc = gt_store_apply(s, ops, n, NULL, &err);
    if (rc != want_rc)
        fail_msg("apply: got %s (%s), want %s", gt_strerror(rc), err.message,
                 gt_strerror(want_rc));
    char field[16];
    snprintf(field, sizeof field, "ops[%zu]", bad);
    assert_string_equal(err.field, field);
    assert_int_equal(err.code, want->code);
    assert_string_equal(err.message, want->message);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(ops[i].new_rev, 0);
}

static void test_apply_conflict_writes_nothing(void **state)
{
    gt_store *s = store_of(state);
    declare(s, "execs", "kind");
    int64_t ra = put_ok(s, "execs", "a", "{\"kind\":\"k1\"}", GT_REV_NONE);
    int64_t rb = put_ok(s, "execs", "b", "{\"kind\":\"k1\"}", GT_REV_NONE);
    int64_t rc = put_ok(s, "runs", "c", "{\"kind\":\"k2\"}", GT_REV_NONE);
    int64_t rd = put_ok(s, "execs", "d", "{}", GT_REV_NONE);
    gt_error want = {0};
    /* a stale revision in the middle */
    gt_store_op ops[] = {
        {GT_STORE_OP_PUT, "execs", "a", "{\"kind\":\"k9\"}", ra, 0},
        {GT_STORE_OP_PUT, "execs", "b", "{\"kind\":\"k9\"}", ra, 0},
        {GT_STORE_OP_DELETE, "runs", "c", NULL, rc, 0},
        {GT_STORE_OP_PUT, "execs", "new", "{\"kind\":\"k9\"}", GT_REV_NONE, 0},
    };
    assert_int_equal(gt_store_put(s, "execs", "b", "{\"kind\":\"k9\"}", ra, NULL, &want),
                     GT_ECONFLICT);
    expect_apply_fails(s, ops, 4, 1, GT_ECONFLICT, &want);
    /* a delete of a document that is not there */
    ops[1] = (gt_store_op){GT_STORE_OP_DELETE, "execs", "gone", NULL, GT_REV_ANY, 0};
    gt_error_clear(&want);
    assert_int_equal(gt_store_delete(s, "execs", "gone", GT_REV_ANY, &want), GT_ENOTFOUND);
    expect_apply_fails(s, ops, 4, 1, GT_ENOTFOUND, &want);
    /* a delete at the wrong revision, last */
    ops[1] = (gt_store_op){GT_STORE_OP_CHECK, "execs", "b", NULL, rb, 0};
    ops[3] = (gt_store_op){GT_STORE_OP_DELETE, "execs", "d", NULL, rb, 0};
    gt_error_clear(&want);
    assert_int_equal(gt_store_delete(s, "execs", "d", rb, &want), GT_ECONFLICT);
    expect_apply_fails(s, ops, 4, 3, GT_ECONFLICT, &want);
    ops[3] = (gt_store_op){GT_STORE_OP_PUT, "execs", "new", "{\"kind\":\"k9\"}", GT_REV_NONE, 0};
    /* a create of something that exists */
    ops[2] = (gt_store_op){GT_STORE_OP_PUT, "runs", "c", "{}", GT_REV_NONE, 0};
    gt_error_clear(&want);
    assert_int_equal(gt_store_put(s, "runs", "c", "{}", GT_REV_NONE, NULL, &want), GT_ECONFLICT);
    expect_apply_fails(s, ops, 4, 2, GT_ECONFLICT, &want);
    ops[2] = (gt_store_op){GT_STORE_OP_DELETE, "runs", "c", NULL, rc, 0};
    /* checks: a moved revision, a document that should be absent, one that should exist */
    ops[1] = (gt_store_op){GT_STORE_OP_CHECK, "execs", "b", NULL, ra, 0};
    gt_error_clear(&want);
    assert_int_equal(gt_store_put(s, "execs", "b", "{}", ra, NULL, &want), GT_ECONFLICT);
    expect_apply_fails(s, ops, 4, 1, GT_ECONFLICT, &want);
    ops[1] = (gt_store_op){GT_STORE_OP_CHECK, "execs", "b", NULL, GT_REV_NONE, 0};
    gt_error_clear(&want);
    assert_int_equal(gt_store_put(s, "execs", "b", "{}", GT_REV_NONE, NULL, &want), GT_ECONFLICT);
    expect_apply_fails(s, ops, 4, 1, GT_ECONFLICT, &want);
    ops[1] = (gt_store_op){GT_STORE_OP_CHECK, "execs", "gone", NULL, GT_REV_ANY, 0};
    gt_error_clear(&want);
    assert_int_equal(gt_store_delete(s, "execs", "gone", GT_REV_ANY, &want), GT_ENOTFOUND);
    expect_apply_fails(s, ops, 4, 1, GT_ENOTFOUND, &want);
    ops[1] = (gt_store_op){GT_STORE_OP_CHECK, "execs", "gone", NULL, 5, 0};
    gt_error_clear(&want);
    assert_int_equal(gt_store_put(s, "execs", "gone", "{}", 5, NULL, &want), GT_ECONFLICT);
    expect_apply_fails(s, ops, 4, 1, GT_ECONFLICT, &want);
    /* every document is as it was, and so is every index */
    expect_doc(s, "execs", "a", "{\"kind\":\"k1\"}", ra);
    expect_doc(s, "execs", "b", "{\"kind\":\"k1\"}", rb);
    expect_doc(s, "runs", "c", "{\"kind\":\"k2\"}", rc);
    expect_doc(s, "execs", "d", "{}", rd);
    expect_missing(s, "execs", "new");
    expect_missing(s, "execs", "gone");
    expect_range(s, "execs", "kind", NULL, NULL, "a,b");
    expect_range(s, "execs", "kind", "k9", NULL, "");
    assert_int_equal(count_of(s, "execs", "kind", "k1", NULL, NULL), 2);
    assert_int_equal(count_of(s, "execs", "kind", "k9", NULL, NULL), 0);
    assert_int_equal(count_of(s, "runs", NULL, NULL, NULL, NULL), 1);
    /* with the stale revision fixed, the same ops go through */
    ops[1] = (gt_store_op){GT_STORE_OP_PUT, "execs", "b", "{\"kind\":\"k9\"}", rb, 0};
    gt_error err = {0};
    if (gt_store_apply(s, ops, 4, NULL, &err) != GT_OK)
        fail_msg("apply: %s", err.message);
    expect_range(s, "execs", "kind", "k9", NULL, "a,b,new");
    expect_missing(s, "runs", "c");
}

static void test_apply_fenced(void **state)
{
    gt_store *s = store_of(state);
    gt_error err = {0};
    int64_t e1 = 0, e2 = 0;
    assert_int_equal(gt_store_lease_acquire(s, "scheduler", "a", 60000, &e1, &err), GT_OK);
    gt_store_fence f = {"scheduler", "a", e1};
    gt_store_op ops[] = {
        {GT_STORE_OP_PUT, "schedules", "s1", "{\"next\":\"1\"}", GT_REV_NONE, 0},
        {GT_STORE_OP_PUT, "firings", "s1:1", "{}", GT_REV_NONE, 0},
    };
    if (gt_store_apply(s, ops, 2, &f, &err) != GT_OK)
        fail_msg("fenced apply: %s", err.message);
    int64_t r1 = ops[0].new_rev, r2 = ops[1].new_rev;
    /* another holder, another epoch, a lease never taken: refused, nothing written */
    gt_store_fence other = {"scheduler", "b", e1}, stale = {"scheduler", "a", e1 + 1};
    gt_store_fence never = {"never", "a", 1};
    const gt_store_fence *bad[] = {&other, &stale, &never};
    gt_store_op upd[] = {
        {GT_STORE_OP_PUT, "schedules", "s1", "{\"next\":\"2\"}", r1, 0},
        {GT_STORE_OP_PUT, "firings", "s1:2", "{}", GT_REV_NONE, 0},
        {GT_STORE_OP_DELETE, "firings", "s1:1", NULL, r2, 0},
    };
    for (size_t i = 0; i < 3; i++) {
        gt_error_clear(&err);
        assert_int_equal(gt_store_apply(s, upd, 3, bad[i], &err), GT_ECONFLICT);
        assert_non_null(strstr(err.message, bad[i]->name));
        assert_int_equal(upd[0].new_rev, 0);
    }
    expect_doc(s, "schedules", "s1", "{\"next\":\"1\"}", r1);
    expect_doc(s, "firings", "s1:1", "{}", r2);
    expect_missing(s, "firings", "s1:2");
    /* the right fence with a stale revision is the revision's conflict */
    upd[0].expect_rev = r2 + 1000;
    gt_error_clear(&err);
    assert_int_equal(gt_store_apply(s, upd, 3, &f, &err), GT_ECONFLICT);
    assert_string_equal(err.field, "ops[0]");
    upd[0].expect_rev = r1;
    /* an expired lease fences out its holder, even before anyone else takes it */
    assert_int_equal(gt_store_lease_acquire(s, "short", "b", short_ttl(s), &e2, &err), GT_OK);
    gt_store_fence fb = {"short", "b", e2};
    sleep_ms((int)(4 * short_ttl(s)));
    gt_error_clear(&err);
    assert_int_equal(gt_store_apply(s, upd, 3, &fb, &err), GT_ECONFLICT);
    assert_non_null(strstr(err.message, "short"));
    expect_doc(s, "schedules", "s1", "{\"next\":\"1\"}", r1);
    expect_doc(s, "firings", "s1:1", "{}", r2);
    expect_missing(s, "firings", "s1:2");
    /* the live fence goes through */
    if (gt_store_apply(s, upd, 3, &f, &err) != GT_OK)
        fail_msg("fenced apply: %s", err.message);
    expect_doc(s, "schedules", "s1", "{\"next\":\"2\"}", upd[0].new_rev);
    expect_missing(s, "firings", "s1:1");
    /* bad fence arguments are EINVAL */
    gt_store_fence empty = {"", "a", 1};
    assert_int_equal(gt_store_apply(s, upd, 1, &empty, NULL), GT_EINVAL);
}

/* ---- concurrency helpers (no cmocka assertions off the main thread) ---- */

typedef struct racer {
    gt_store *s;
    pthread_barrier_t *bar;
    int rounds;
    char *won;        /* per round */
    int errors;
    char first_error[1100];
} racer;

static void racer_fail(racer *r, const char *what, gt_err rc, const gt_error *err)
{
    if (r->errors++ == 0)
        snprintf(r->first_error, sizeof r->first_error, "%s: %s: %s", what, gt_strerror(rc),
                 err->message);
}

static void *race_main(void *arg)
{
    racer *r = arg;
    for (int i = 0; i < r->rounds; i++) {
        gt_error err = {0};
        char *body = NULL;
        int64_t rev = 0;
        pthread_barrier_wait(r->bar);   /* the previous round is over */
        gt_err rc = gt_store_get(r->s, "race", "doc", &body, &rev, &err);
        free(body);
        if (rc != GT_OK)
            racer_fail(r, "get", rc, &err);
        pthread_barrier_wait(r->bar);   /* both have read the same revision */
        char next[64];
        snprintf(next, sizeof next, "{\"round\":%d}", i);
        gt_error_clear(&err);
        rc = gt_store_put(r->s, "race", "doc", next, rev, NULL, &err);
        r->won[i] = rc == GT_OK;
        if (rc != GT_OK && rc != GT_ECONFLICT)
            racer_fail(r, "put", rc, &err);
    }
    return NULL;
}

void gt_store_conformance_cas_race(gt_store *a, gt_store *b, int rounds)
{
    pthread_barrier_t bar;
    pthread_t t[2];
    racer r[2] = {{.s = a}, {.s = b}};
    put_ok(a, "race", "doc", "{\"round\":-1}", GT_REV_ANY);
    pthread_barrier_init(&bar, NULL, 2);
    for (int k = 0; k < 2; k++) {
        r[k].bar = &bar;
        r[k].rounds = rounds;
        r[k].won = gt_xcalloc((size_t)rounds, 1);
        assert_int_equal(pthread_create(&t[k], NULL, race_main, &r[k]), 0);
    }
    for (int k = 0; k < 2; k++)
        pthread_join(t[k], NULL);
    pthread_barrier_destroy(&bar);
    int bad_round = -1, wins_a = 0;
    for (int i = 0; i < rounds; i++) {
        wins_a += r[0].won[i];
        if (r[0].won[i] + r[1].won[i] != 1 && bad_round < 0)
            bad_round = i;
    }
    int errors = r[0].errors + r[1].errors;
    char msg[2300];
    snprintf(msg, sizeof msg, "%s%s", r[0].first_error, r[1].first_error);
    int shown = bad_round < 0 ? 0 : bad_round;
    int won_a = r[0].won[shown], won_b = r[1].won[shown];
    free(r[0].won);
    free(r[1].won);
    if (errors)
        fail_msg("%d errors in the race, first: %s", errors, msg);
    if (bad_round >= 0)
        fail_msg("round %d: a %s, b %s", bad_round, won_a ? "won" : "lost", won_b ? "won" : "lost");
    print_message("cas race: %d rounds, a won %d, b won %d\n", rounds, wins_a, rounds - wins_a);
}

/* Each round both threads read race/doc, then apply {PUT race/doc at that revision, PUT
 * race/<own> unconditionally}: exactly one wins, and the loser's own document keeps its
 * earlier round (all or nothing). */
typedef struct apply_racer {
    gt_store *s;
    pthread_barrier_t *bar;
    int rounds;
    const char *own;
    char *won;
    int partial;      /* rounds where a lost apply still wrote its own document */
    int errors;
    char first_error[1400];
} apply_racer;

static void *apply_race_main(void *arg)
{
    apply_racer *r = arg;
    int last_won = -1;
    for (int i = 0; i < r->rounds; i++) {
        gt_error err = {0};
        char *body = NULL;
        int64_t rev = 0;
        pthread_barrier_wait(r->bar);
        gt_err rc = gt_store_get(r->s, "race", "doc", &body, &rev, &err);
        free(body);
        body = NULL;
        if (rc != GT_OK && r->errors++ == 0)
            snprintf(r->first_error, sizeof r->first_error, "get: %s", err.message);
        pthread_barrier_wait(r->bar);
        char next[64];
        snprintf(next, sizeof next, "{\"round\":%d}", i);
        gt_store_op ops[] = {
            {GT_STORE_OP_PUT, "race", "doc", next, rev, 0},
            {GT_STORE_OP_PUT, "race", r->own, next, GT_REV_ANY, 0},
        };
        gt_error_clear(&err);
        rc = gt_store_apply(r->s, ops, 2, NULL, &err);
        r->won[i] = rc == GT_OK;
        if (rc == GT_OK) {
            last_won = i;
            if (ops[0].new_rev <= rev || ops[1].new_rev < 1)
                r->partial++;
        } else if (rc == GT_ECONFLICT && strcmp(err.field, "ops[0]") == 0) {
            /* lost: the own document must still hold the last round this thread won */
            char want[64];
            snprintf(want, sizeof want, "{\"round\":%d}", last_won);
            gt_error_clear(&err);
            rc = gt_store_get(r->s, "race", r->own, &body, NULL, &err);
            if (rc == GT_OK ? strcmp(body, want) != 0 : last_won >= 0 || rc != GT_ENOTFOUND)
                r->partial++;
            free(body);
        } else if (r->errors++ == 0) {
            snprintf(r->first_error, sizeof r->first_error, "apply: %s: %s (%s)",
                     gt_strerror(rc), err.message, err.field);
        }
    }
    return NULL;
}

void gt_store_conformance_apply_race(gt_store *a, gt_store *b, int rounds)
{
    pthread_barrier_t bar;
    pthread_t t[2];
    apply_racer r[2] = {{.s = a, .own = "own-a"}, {.s = b, .own = "own-b"}};
    put_ok(a, "race", "doc", "{\"round\":-1}", GT_REV_ANY);
    pthread_barrier_init(&bar, NULL, 2);
    for (int k = 0; k < 2; k++) {
        r[k].bar = &bar;
        r[k].rounds = rounds;
        r[k].won = gt_xcalloc((size_t)rounds, 1);
        assert_int_equal(pthread_create(&t[k], NULL, apply_race_main, &r[k]), 0);
    }
    for (int k = 0; k < 2; k++)
        pthread_join(t[k], NULL);
    pthread_barrier_destroy(&bar);
    int bad_round = -1, wins_a = 0;
    for (int i = 0; i < rounds; i++) {
        wins_a += r[0].won[i];
        if (r[0].won[i] + r[1].won[i] != 1 && bad_round < 0)
            bad_round = i;
    }
    free(r[0].won);
    free(r[1].won);
    if (r[0].errors + r[1].errors)
        fail_msg("%d errors in the apply race, first: %s%s", r[0].errors + r[1].errors,
                 r[0].first_error, r[1].first_error);
    if (bad_round >= 0)
        fail_msg("apply race: round %d did not have exactly one winner", bad_round);
    if (r[0].partial + r[1].partial)
        fail_msg("apply race: %d rounds half applied", r[0].partial + r[1].partial);
    print_message("apply race: %d rounds, a won %d, b won %d\n", rounds, wins_a,
                  rounds - wins_a);
}

typedef struct counter_worker {
    gt_store *s;
    int increments;
    int conflicts;
    int errors;
    char first_error[1100];
} counter_worker;

static void *counter_main(void *arg)
{
    counter_worker *w = arg;
    for (int done = 0; done < w->increments;) {
        gt_error err = {0};
        char *body = NULL;
        int64_t rev = 0;
        long long n = 0;
        gt_err rc = gt_store_get(w->s, "counter", "c", &body, &rev, &err);
        if (rc == GT_OK && sscanf(body, "{\"n\":%lld}", &n) != 1)
            rc = GT_EINTERNAL;
        free(body);
        if (rc == GT_OK) {
            char next[64];
            snprintf(next, sizeof next, "{\"n\":%lld}", n + 1);
            rc = gt_store_put(w->s, "counter", "c", next, rev, NULL, &err);
        }
        if (rc == GT_OK) {
            done++;
        } else if (rc == GT_ECONFLICT) {
            w->conflicts++;
        } else {
            if (w->errors++ == 0)
                snprintf(w->first_error, sizeof w->first_error, "%s: %s", gt_strerror(rc),
                         err.message);
            if (w->errors > 100)
                break;
        }
    }
    return NULL;
}

void gt_store_conformance_counter(gt_store **handles, int nthreads, int increments)
{
    counter_worker *w = gt_xcalloc((size_t)nthreads, sizeof *w);
    pthread_t *t = gt_xcalloc((size_t)nthreads, sizeof *t);
    put_ok(handles[0], "counter", "c", "{\"n\":0}", GT_REV_ANY);
    for (int i = 0; i < nthreads; i++) {
        w[i].s = handles[i];
        w[i].increments = increments;
        assert_int_equal(pthread_create(&t[i], NULL, counter_main, &w[i]), 0);
    }
    int errors = 0, conflicts = 0;
    char first[1100] = "";
    for (int i = 0; i < nthreads; i++) {
        pthread_join(t[i], NULL);
        conflicts += w[i].conflicts;
        if (w[i].errors && errors == 0)
            snprintf(first, sizeof first, "%s", w[i].first_error);
        errors += w[i].errors;
    }
    free(w);
    free(t);
    if (errors)
        fail_msg("%d errors, first: %s", errors, first);
    char want[64];
    snprintf(want, sizeof want, "{\"n\":%d}", nthreads * increments);
    expect_doc(handles[0], "counter", "c", want, 0);
    print_message("counter: %d threads x %d increments, %d conflicts retried\n", nthreads,
                  increments, conflicts);
}

int gt_store_conformance_run(const char *driver, gt_store *(*open_fresh)(void *ctx), void *ctx)
{
    fixture f = {driver, open_fresh, ctx, NULL};
#define T(fn) cmocka_unit_test_prestate_setup_teardown(fn, setup, teardown, &f)
    const struct CMUnitTest tests[] = {
        T(test_driver_name),
        T(test_get_missing),
        T(test_put_new_and_get),
        T(test_put_if_none_conflict),
        T(test_cas),
        T(test_revisions_increase),
        T(test_delete),
        T(test_delete_recreate_no_reuse),
        T(test_query_all_paginated),
        T(test_query_descending),
        T(test_each),
        T(test_query_page_edges),
        T(test_query_by_field),
        T(test_query_undeclared_field),
        T(test_invalid_json_rejected),
        T(test_unicode),
        T(test_large_body),
        T(test_collections_isolated),
        T(test_leases),
        T(test_lease_expiry),
        T(test_fenced_writes),
        T(test_argument_checks),
        T(test_error_messages),
        T(test_range_by_field),
        T(test_range_cursor_ties),
        T(test_range_by_id),
        T(test_range_follows_writes),
        T(test_count),
        T(test_apply),
        T(test_apply_conflict_writes_nothing),
        T(test_apply_fenced),
    };
#undef T
    char name[128];
    snprintf(name, sizeof name, "store/%s", driver);
    return cmocka_run_group_tests_name(name, tests, NULL, NULL);
}
