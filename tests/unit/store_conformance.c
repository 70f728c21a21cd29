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

/* ---- change notification ---- */

/* The position a watch starts from (since 0). */
static int64_t changes_start(gt_store *s)
{
    gt_store_changes ch;
    gt_error err = {0};
    gt_err rc = gt_store_changes_wait(s, NULL, 0, 0, 0, &ch, &err);
    if (rc != GT_OK)
        fail_msg("changes since 0: %s: %s", gt_strerror(rc), err.message);
    assert_int_equal(ch.n, 0);
    assert_false(ch.reset);
    assert_true(ch.next >= 0);
    int64_t next = ch.next;
    gt_store_changes_clear(&ch);
    return next;
}

/* What a watcher saw: each document's latest change, merged over calls. */
typedef struct seen_changes {
    gt_strv keys;       /* "coll/id" */
    int64_t revs[64];
    int64_t next;
    int calls;
} seen_changes;

static int64_t seen_rev(const seen_changes *w, const char *coll, const char *id)
{
    char key[256];
    snprintf(key, sizeof key, "%s/%s", coll, id);
    for (size_t i = 0; i < w->keys.n; i++)
        if (strcmp(w->keys.v[i], key) == 0)
            return w->revs[i];
    return -1;
}

/* Waits from since for changes to colls until want documents have been seen or 10 s
 * passed (a driver may deliver one write's changes per call). Checks what every reply
 * must satisfy: one entry per document, in position order, next never going back. */
static void watch_until(gt_store *s, const char *const *colls, size_t n_colls, int64_t since,
                        size_t want, seen_changes *w)
{
    memset(w, 0, sizeof *w);
    w->next = since;
    int64_t deadline = gt_mono_ms() + 10000;
    while (w->keys.n < want && gt_mono_ms() < deadline) {
        gt_store_changes ch;
        gt_error err = {0};
        gt_err rc = gt_store_changes_wait(s, colls, n_colls, w->next, 2000, &ch, &err);
        if (rc != GT_OK)
            fail_msg("changes since %" PRId64 ": %s: %s", w->next, gt_strerror(rc), err.message);
        assert_false(ch.reset);
        assert_true(ch.next >= w->next);
        int64_t last_put = 0;
        for (size_t i = 0; i < ch.n; i++) {
            for (size_t k = 0; k < i; k++)
                if (strcmp(ch.v[k].coll, ch.v[i].coll) == 0 && strcmp(ch.v[k].id, ch.v[i].id) == 0)
                    fail_msg("%s/%s twice in one reply", ch.v[i].coll, ch.v[i].id);
            if (ch.v[i].rev) {   /* a put's revision is its position */
                assert_true(ch.v[i].rev > last_put);
                assert_true(ch.v[i].rev > w->next && ch.v[i].rev <= ch.next);
                last_put = ch.v[i].rev;
            }
            char key[256];
            snprintf(key, sizeof key, "%s/%s", ch.v[i].coll, ch.v[i].id);
            size_t k = 0;
            while (k < w->keys.n && strcmp(w->keys.v[k], key) != 0)
                k++;
            if (k == w->keys.n) {
                assert_true(k < 64);
                gt_strv_push(&w->keys, key);
            }
            w->revs[k] = ch.v[i].rev;
        }
        w->next = ch.next;
        w->calls++;
        gt_store_changes_clear(&ch);
    }
}

static void seen_clear(seen_changes *w)
{
    gt_strv_free(&w->keys);
}

static void test_changes_since_zero(void **state)
{
    gt_store *s = store_of(state);
    int64_t p0 = changes_start(s);
    int64_t rev = put_ok(s, "c_pos", "a", "{}", GT_REV_NONE);
    int64_t p1 = changes_start(s);
    assert_true(p1 >= rev);
    assert_true(p1 > p0);
}

static void test_changes_put_and_delete(void **state)
{
    gt_store *s = store_of(state);
    put_ok(s, "c_pd", "old", "{}", GT_REV_NONE);
    int64_t since = changes_start(s);
    int64_t rev = put_ok(s, "c_pd", "new", "{\"v\":1}", GT_REV_NONE);
    assert_int_equal(gt_store_delete(s, "c_pd", "old", GT_REV_ANY, NULL), GT_OK);
    seen_changes w;
    watch_until(s, NULL, 0, since, 2, &w);
    assert_int_equal(w.keys.n, 2);
    assert_int_equal(seen_rev(&w, "c_pd", "new"), rev);
    assert_int_equal(seen_rev(&w, "c_pd", "old"), 0);
    assert_true(w.next > rev);   /* the delete came after the put */
    seen_clear(&w);
}

static void test_changes_filter(void **state)
{
    gt_store *s = store_of(state);
    int64_t since = changes_start(s);
    put_ok(s, "c_f_a", "x", "{}", GT_REV_NONE);
    int64_t rb = put_ok(s, "c_f_b", "y", "{}", GT_REV_NONE);
    put_ok(s, "c_f_c", "z", "{}", GT_REV_NONE);
    int64_t last = put_ok(s, "c_f_a", "w", "{}", GT_REV_NONE);
    const char *only_b[] = {"c_f_b"};
    seen_changes w;
    watch_until(s, only_b, 1, since, 1, &w);
    assert_int_equal(w.keys.n, 1);
    assert_int_equal(seen_rev(&w, "c_f_b", "y"), rb);
    seen_clear(&w);
    const char *a_and_c[] = {"c_f_a", "c_f_c"};
    watch_until(s, a_and_c, 2, since, 3, &w);
    assert_int_equal(w.keys.n, 3);
    assert_int_equal(seen_rev(&w, "c_f_b", "y"), -1);
    assert_int_equal(seen_rev(&w, "c_f_a", "w"), last);
    seen_clear(&w);
}

static void test_changes_coalesce(void **state)
{
    gt_store *s = store_of(state);
    put_ok(s, "c_co", "gone", "{}", GT_REV_NONE);
    int64_t since = changes_start(s);
    int64_t r = 0;
    for (int i = 0; i < 5; i++)
        r = put_ok(s, "c_co", "hot", "{}", GT_REV_ANY);
    assert_int_equal(gt_store_delete(s, "c_co", "gone", GT_REV_ANY, NULL), GT_OK);
    int64_t again = put_ok(s, "c_co", "gone", "{\"back\":true}", GT_REV_NONE);
    assert_true(again > r);
    /* all of it is in the past now: one reply gives each document once, its latest */
    gt_store_changes ch;
    gt_error err = {0};
    gt_err rc = gt_store_changes_wait(s, NULL, 0, since, 5000, &ch, &err);
    if (rc != GT_OK)
        fail_msg("changes: %s", err.message);
    assert_int_equal(ch.n, 2);
    assert_string_equal(ch.v[0].id, "hot");
    assert_int_equal(ch.v[0].rev, r);
    assert_string_equal(ch.v[1].id, "gone");
    assert_int_equal(ch.v[1].rev, again);
    assert_true(ch.next >= again);
    gt_store_changes_clear(&ch);
    /* and nothing more after next */
    assert_int_equal(gt_store_changes_wait(s, NULL, 0, again, 0, &ch, NULL), GT_OK);
    assert_int_equal(ch.n, 0);
    gt_store_changes_clear(&ch);
}

static void test_changes_timeout(void **state)
{
    gt_store *s = store_of(state);
    put_ok(s, "c_to", "a", "{}", GT_REV_NONE);
    int64_t since = changes_start(s);
    gt_store_changes ch;
    int64_t t0 = gt_mono_ms();
    assert_int_equal(gt_store_changes_wait(s, NULL, 0, since, 300, &ch, NULL), GT_OK);
    int64_t took = gt_mono_ms() - t0;
    assert_int_equal(ch.n, 0);
    assert_false(ch.reset);
    assert_int_equal(ch.next, since);
    assert_true(took >= 250);   /* it waited (a little less: clocks round) */
    gt_store_changes_clear(&ch);
    /* a write to another collection is not what this watch waits for */
    const char *colls[] = {"c_to_other"};
    put_ok(s, "c_to", "b", "{}", GT_REV_NONE);
    assert_int_equal(gt_store_changes_wait(s, colls, 1, since, 200, &ch, NULL), GT_OK);
    assert_int_equal(ch.n, 0);
    assert_true(ch.next >= since);
    gt_store_changes_clear(&ch);
    /* wait 0 only looks */
    assert_int_equal(gt_store_changes_wait(s, NULL, 0, since, 0, &ch, NULL), GT_OK);
    assert_true(ch.n <= 1);
    gt_store_changes_clear(&ch);
}

static void test_changes_argument_checks(void **state)
{
    gt_store *s = store_of(state);
    gt_store_changes ch;
    const char *bad[] = {""};
    assert_int_equal(gt_store_changes_wait(s, NULL, 0, -1, 0, &ch, NULL), GT_EINVAL);
    assert_int_equal(gt_store_changes_wait(s, NULL, 0, 0, 60001, &ch, NULL), GT_EINVAL);
    assert_int_equal(gt_store_changes_wait(s, NULL, 1, 0, 0, &ch, NULL), GT_EINVAL);
    assert_int_equal(gt_store_changes_wait(s, bad, 1, 0, 0, &ch, NULL), GT_EINVAL);
    assert_int_equal(ch.n, 0);
}

typedef struct waker {
    gt_store *s;
    int64_t since;
    long wait_ms;
    gt_store_changes ch;
    gt_err rc;
    int64_t woke_us;
} waker;

static int64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void *waker_main(void *arg)
{
    waker *k = arg;
    const char *colls[] = {"c_wake"};
    k->rc = gt_store_changes_wait(k->s, colls, 1, k->since, k->wait_ms, &k->ch, NULL);
    k->woke_us = mono_us();
    return NULL;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

void gt_store_conformance_changes_wake(gt_store *waiter, gt_store *writer, int rounds)
{
    int64_t since = changes_start(waiter);
    int64_t *lat = gt_xcalloc((size_t)rounds, sizeof *lat);
    int64_t *put = gt_xcalloc((size_t)rounds, sizeof *put);   /* the write's own time */
    for (int i = 0; i < rounds; i++) {
        waker k = {.s = waiter, .since = since, .wait_ms = 10000};
        pthread_t t;
        assert_int_equal(pthread_create(&t, NULL, waker_main, &k), 0);
        /* let it start waiting; the varying part spreads writes over a poll period */
        sleep_ms(i == 0 ? 200 : 30 + (i * 17) % 50);
        char id[32];
        snprintf(id, sizeof id, "w%d", i);
        int64_t t0 = mono_us();
        int64_t rev = put_ok(writer, "c_wake", id, "{}", GT_REV_NONE);
        put[i] = mono_us() - t0;
        pthread_join(t, NULL);
        put_ok(writer, "c_wake_other", id, "{}", GT_REV_NONE);
        assert_int_equal(k.rc, GT_OK);
        if (k.ch.n == 0)
            fail_msg("round %d: the waiter saw nothing of %s (next %" PRId64 ")", i, id, k.ch.next);
        assert_int_equal(k.ch.n, 1);
        assert_string_equal(k.ch.v[0].coll, "c_wake");
        assert_string_equal(k.ch.v[0].id, id);
        assert_int_equal(k.ch.v[0].rev, rev);
        /* well before wait_ms: the waiter was woken by the write, not by its timeout */
        lat[i] = k.woke_us - t0;
        if (lat[i] >= 5000000)
            fail_msg("round %d: woke %" PRId64 " ms after the write", i, lat[i] / 1000);
        since = k.ch.next;
        gt_store_changes_clear(&k.ch);
    }
    qsort(lat, (size_t)rounds, sizeof *lat, cmp_i64);
    qsort(put, (size_t)rounds, sizeof *put, cmp_i64);
    int p99 = (rounds * 99) / 100;
    print_message("changes wake (%s): %d rounds, from the start of the write to the waiter "
                  "waking: p50 %.2f ms, p99 %.2f ms, max %.2f ms (the write itself: p50 %.2f ms, "
                  "p99 %.2f ms)\n",
                  gt_store_driver(waiter), rounds, lat[rounds / 2] / 1000.0, lat[p99] / 1000.0,
                  lat[rounds - 1] / 1000.0, put[rounds / 2] / 1000.0, put[p99] / 1000.0);
    free(lat);
    free(put);
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
        T(test_changes_since_zero),
        T(test_changes_put_and_delete),
        T(test_changes_filter),
        T(test_changes_coalesce),
        T(test_changes_timeout),
        T(test_changes_argument_checks),
    };
#undef T
    char name[128];
    snprintf(name, sizeof name, "store/%s", driver);
    return cmocka_run_group_tests_name(name, tests, NULL, NULL);
}
