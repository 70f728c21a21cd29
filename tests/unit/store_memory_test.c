/* The memory driver: the conformance suite, plus sharing one handle between threads
 * (this driver is thread-safe). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>

#include "store.h"
#include "store_conformance.h"
#include "util.h"

static gt_store *open_fresh(void *ctx)
{
    (void)ctx;
    gt_error err = {0};
    gt_store *s = gt_store_open_memory(&err);
    if (s == NULL)
        print_error("open memory store: %s\n", err.message);
    return s;
}

static int setup(void **state)
{
    *state = open_fresh(NULL);
    return *state ? 0 : -1;
}

static int teardown(void **state)
{
    gt_store *s = *state;
    gt_store_free(&s);
    return 0;
}

static void test_cas_race_shared_handle(void **state)
{
    gt_store_conformance_cas_race(*state, *state, 2000);
}

static void test_apply_race_shared_handle(void **state)
{
    gt_store_conformance_apply_race(*state, *state, 2000);
}

static void test_counter_shared_handle(void **state)
{
    gt_store *h[8];
    for (int i = 0; i < 8; i++)
        h[i] = *state;
    gt_store_conformance_counter(h, 8, 500);
}

/* One handle shared by threads: a write wakes a waiter. */
static void test_changes_wake_shared_handle(void **state)
{
    const char *e = getenv("GANTRY_TEST_WAKE_ROUNDS");   /* raise it to measure */
    int64_t rounds = 20;
    if (e && gt_parse_int64(e, 1, 100000, &rounds, "GANTRY_TEST_WAKE_ROUNDS", NULL) != GT_OK)
        rounds = 20;
    gt_store_conformance_changes_wake(*state, *state, (int)rounds);
}

/* The log keeps the last 10000 documents' changes: a watcher further behind is reset. */
static void test_changes_trimmed(void **state)
{
    gt_store *s = *state;
    gt_store_changes ch;
    assert_int_equal(gt_store_changes_wait(s, NULL, 0, 0, 0, &ch, NULL), GT_OK);
    int64_t since = ch.next;
    int64_t rev = 0;
    for (int i = 0; i < 10010; i++) {
        char id[16];
        snprintf(id, sizeof id, "t%d", i);
        assert_int_equal(gt_store_put(s, "things", id, "{}", GT_REV_NONE, &rev, NULL), GT_OK);
    }
    assert_int_equal(gt_store_changes_wait(s, NULL, 0, since + 1, 100, &ch, NULL), GT_OK);
    assert_true(ch.reset);
    assert_int_equal(ch.n, 0);
    assert_int_equal(ch.next, rev);
    gt_store_changes_clear(&ch);
    /* within what is kept: the backlog comes 1000 at a time, in order */
    assert_int_equal(gt_store_changes_wait(s, NULL, 0, rev - 1500, 100, &ch, NULL), GT_OK);
    assert_false(ch.reset);
    assert_int_equal(ch.n, 1000);
    assert_int_equal(ch.v[0].rev, rev - 1499);
    assert_int_equal(ch.next, rev - 500);
    gt_store_changes_clear(&ch);
    assert_int_equal(gt_store_changes_wait(s, NULL, 0, rev - 500, 100, &ch, NULL), GT_OK);
    assert_int_equal(ch.n, 500);
    assert_int_equal(ch.next, rev);
    gt_store_changes_clear(&ch);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_cas_race_shared_handle, setup, teardown),
        cmocka_unit_test_setup_teardown(test_apply_race_shared_handle, setup, teardown),
        cmocka_unit_test_setup_teardown(test_counter_shared_handle, setup, teardown),
        cmocka_unit_test_setup_teardown(test_changes_wake_shared_handle, setup, teardown),
        cmocka_unit_test_setup_teardown(test_changes_trimmed, setup, teardown),
    };
    int failed = gt_store_conformance_run("memory", open_fresh, NULL);
    failed += cmocka_run_group_tests_name("store/memory threads", tests, NULL, NULL);
    return failed ? 1 : 0;
}
