/* pool.c: every job submitted comes back to done exactly once, the queue empties (it does
 * not grow with what ran), unstarted jobs can be taken back, and a pool fenced out
 * (cancel_all KILL) starts nothing more. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "exec.h"
#include "log.h"
#include "pool.h"
#include "store.h"
#include "util.h"

static int open_store(void *arg, gt_store **store, gt_error *err)
{
    (void)arg;
    (void)err;
    /* the memory store is one per process here; each worker gets its own empty one:
     * every job is for an execution that does not exist, which is what this test wants */
    *store = gt_store_open_memory(NULL);
    return *store ? GT_OK : GT_EUNAVAIL;
}

typedef struct tally {
    atomic_int done, ok, fenced;
} tally;

static void on_done(void *arg, void *job, gt_err rc, const gt_error *err)
{
    tally *t = arg;
    (void)job;
    t->done++;
    if (rc == GT_OK)
        t->ok++;
    if (rc == GT_ECONFLICT && err && strstr(err->message, "fenced"))
        t->fenced++;
}

static gt_pool *new_pool(tally *t, int workers)
{
    static gt_run_options run;
    gt_pool_config c = {
        .workers = workers,
        .open_store = open_store,
        .key_file = "/nonexistent/key",
        .run = &run,
        .runner_name = "test",
        .done = on_done,
        .done_arg = t,
    };
    gt_pool *p = gt_pool_new(&c, NULL);
    assert_non_null(p);
    return p;
}

static void wait_idle(gt_pool *p)
{
    for (int i = 0; i < 2000 && gt_pool_busy(p) > 0; i++) {
        struct timespec ts = {0, 5 * 1000000L};
        nanosleep(&ts, NULL);
    }
    assert_int_equal(gt_pool_busy(p), 0);
}

static void test_every_job_comes_back_once(void **state)
{
    (void)state;
    tally t = {0};
    gt_pool *p = new_pool(&t, 3);
    for (int i = 0; i < 2000; i++) {
        char id[32];
        snprintf(id, sizeof id, "01P%023d", i);
        assert_int_equal(gt_pool_submit(p, id, 1, NULL, NULL), GT_OK);
    }
    wait_idle(p);
    gt_pool_free(&p);
    assert_int_equal(t.done, 2000);
    assert_int_equal(t.ok, 0); /* none of them exists: each is an error, reported */
}

static void count_back(void *arg, void *job)
{
    (void)job;
    (*(int *)arg)++;
}

static void test_take_back_and_fence(void **state)
{
    (void)state;
    tally t = {0};
    gt_pool *p = new_pool(&t, 1);
    gt_pool_cancel_all(p, GT_CANCEL_KILL);
    for (int i = 0; i < 50; i++)
        assert_int_equal(gt_pool_submit(p, "01QQQQQQQQQQQQQQQQQQQQQQQQ", 1, NULL, NULL), GT_OK);
    int back = 0;
    size_t n = gt_pool_take_back(p, count_back, &back);
    assert_int_equal((int)n, back);
    wait_idle(p);
    gt_pool_free(&p);
    /* what a worker had taken before the take-back was refused as fenced, not run */
    assert_int_equal(t.done + back, 50);
    assert_int_equal(t.fenced, t.done);
    assert_null(p);
}

int main(void)
{
    gt_log_setup(NULL, GT_LOG_OFF, false, "test");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_job_comes_back_once),
        cmocka_unit_test(test_take_back_and_fence),
    };
    return cmocka_run_group_tests_name("pool", tests, NULL, NULL);
}
