/* The memory driver: the conformance suite, plus sharing one handle between threads
 * (this driver is thread-safe). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "store.h"
#include "store_conformance.h"

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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_cas_race_shared_handle, setup, teardown),
        cmocka_unit_test_setup_teardown(test_apply_race_shared_handle, setup, teardown),
        cmocka_unit_test_setup_teardown(test_counter_shared_handle, setup, teardown),
    };
    int failed = gt_store_conformance_run("memory", open_fresh, NULL);
    failed += cmocka_run_group_tests_name("store/memory threads", tests, NULL, NULL);
    return failed ? 1 : 0;
}
