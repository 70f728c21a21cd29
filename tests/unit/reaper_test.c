/* services/scheduler/reaper.c on a memory store: a runner is reaped only once its lease
 * expired, its runs move only after the grace, retries become the next attempt, and a
 * scheduler whose own lease is gone writes nothing. */
#include "../../services/scheduler/reaper.c"
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>
#include <cmocka.h>

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

typedef struct fx {
    gt_store *s;
    gt_store_fence fence;   /* the scheduler's */
} fx;

static int setup(void **state)
{
    gt_log_setup(NULL, GT_LOG_OFF, false, "test");
    fx *f = gt_xcalloc(1, sizeof *f);
    f->s = gt_store_open_memory(NULL);
    gt_store_index(f->s, GT_EXECUTIONS, "state", NULL);
    int64_t epoch = 0;
    assert_int_equal(gt_store_lease_acquire(f->s, "scheduler", "sched", 60000, &epoch, NULL), GT_OK);
    f->fence = (gt_store_fence){"scheduler", "sched", epoch};
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx *f = *state;
    gt_store_free(&f->s);
    free(f);
    return 0;
}

static void put(gt_store *s, const char *coll, const char *id, const char *body)
{
    assert_int_equal(gt_store_put(s, coll, id, body, GT_REV_ANY, NULL, NULL), GT_OK);
}

static cJSON *get(gt_store *s, const char *coll, const char *id)
{
    char *body = NULL;
    assert_int_equal(gt_store_get(s, coll, id, &body, NULL, NULL), GT_OK);
    cJSON *doc = cJSON_Parse(body);
    free(body);
    return doc;
}

static const char *field(const cJSON *doc, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(doc, k);
    return cJSON_IsString(v) ? v->valuestring : "";
}

/* A runner "r1" (lease ttl_ms) running one execution of a service with `retries`. */
static void running_on_r1(fx *f, int64_t ttl_ms, int retries)
{
    int64_t e = 0;
    assert_int_equal(gt_store_lease_acquire(f->s, "runner:r1", "r1", ttl_ms, &e, NULL), GT_OK);
    put(f->s, "runners", "r1", "{\"id\":\"r1\",\"state\":\"up\",\"last_heartbeat\":\"t\"}");
    char *svc = gt_xasprintf("{\"name\":\"s\",\"retries\":%d}", retries);
    put(f->s, "services", "s", svc);
    free(svc);
    put(f->s, GT_EXECUTIONS, "01X", "{\"id\":\"01X\",\"service\":\"s\",\"state\":\"running\","
                                    "\"attempt\":1,\"runner\":\"r1\",\"pool\":\"default\"}");
}

static void test_live_runner_is_left_alone(void **state)
{
    fx *f = *state;
    running_on_r1(f, 60000, 0);
    gt_reaper_config c = {.store = f->s, .cluster_id = "c", .fence = &f->fence, .grace_ms = 0};
    assert_int_equal(gt_reaper_pass(&c, gt_now_ms()), 0);
    cJSON *r = get(f->s, "runners", "r1"), *ex = get(f->s, GT_EXECUTIONS, "01X");
    assert_string_equal(field(r, "state"), "up");
    assert_string_equal(field(ex, "state"), "running");
    cJSON_Delete(r);
    cJSON_Delete(ex);
}

static void test_expired_runner_is_dead_then_reaped_after_the_grace(void **state)
{
    fx *f = *state;
    running_on_r1(f, 30, 0);
    sleep_ms(80);
    gt_reaper_config c = {.store = f->s, .cluster_id = "c", .fence = &f->fence, .grace_ms = 150};
    /* first pass: declared dead (its lease taken), nothing of its work moves yet */
    assert_int_equal(gt_reaper_pass(&c, gt_now_ms()), 0);
    cJSON *r = get(f->s, "runners", "r1"), *ex = get(f->s, GT_EXECUTIONS, "01X");
    assert_string_equal(field(r, "state"), "dead");
    assert_string_equal(field(ex, "state"), "running");
    cJSON_Delete(r);
    cJSON_Delete(ex);
    /* the runner can never take its lease back */
    int64_t e = 0;
    assert_int_equal(gt_store_lease_acquire(f->s, "runner:r1", "r1", 1000, &e, NULL), GT_ECONFLICT);
    /* after the grace: lost, once */
    sleep_ms(200);
    assert_int_equal(gt_reaper_pass(&c, gt_now_ms()), 1);
    assert_int_equal(gt_reaper_pass(&c, gt_now_ms()), 0);
    ex = get(f->s, GT_EXECUTIONS, "01X");
    assert_string_equal(field(ex, "state"), "lost");
    assert_non_null(strstr(field(ex, "error"), "runner r1 stopped heartbeating"));
    cJSON_Delete(ex);
}

static void test_retry_is_the_next_attempt(void **state)
{
    fx *f = *state;
    running_on_r1(f, 30, 1);
    sleep_ms(80);
    gt_reaper_config c = {.store = f->s, .cluster_id = "c", .fence = &f->fence, .grace_ms = 0};
    /* no grace: declared dead and its work moved in one pass, and only once */
    assert_int_equal(gt_reaper_pass(&c, gt_now_ms()), 1);
    assert_int_equal(gt_reaper_pass(&c, gt_now_ms()), 0);
    cJSON *ex = get(f->s, GT_EXECUTIONS, "01X");
    assert_string_equal(field(ex, "state"), "queued");
    assert_int_equal(gt_json_member_i64(ex, "attempt", 0), 2);
    assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(ex, "runner")));
    assert_true(gt_json_member_i64(ex, "dispatched_at_ms", 0) > 0);
    cJSON_Delete(ex);
}

/* A scheduler whose lease was taken over mid-way writes nothing more. */
static void test_deposed_scheduler_writes_nothing(void **state)
{
    fx *f = *state;
    running_on_r1(f, 30, 0);
    sleep_ms(80);
    assert_int_equal(gt_store_lease_release(f->s, "scheduler", "sched", NULL), GT_OK);
    int64_t e = 0;
    assert_int_equal(gt_store_lease_acquire(f->s, "scheduler", "other", 60000, &e, NULL), GT_OK);
    gt_reaper_config c = {.store = f->s, .cluster_id = "c", .fence = &f->fence, .grace_ms = 0};
    gt_reaper_pass(&c, gt_now_ms());
    assert_int_equal(gt_reaper_pass(&c, gt_now_ms()), 0);
    cJSON *r = get(f->s, "runners", "r1"), *ex = get(f->s, GT_EXECUTIONS, "01X");
    assert_string_equal(field(r, "state"), "up");
    assert_string_equal(field(ex, "state"), "running");
    cJSON_Delete(r);
    cJSON_Delete(ex);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_live_runner_is_left_alone, setup, teardown),
        cmocka_unit_test_setup_teardown(test_expired_runner_is_dead_then_reaped_after_the_grace,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_retry_is_the_next_attempt, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deposed_scheduler_writes_nothing, setup, teardown),
    };
    return cmocka_run_group_tests_name("reaper", tests, NULL, NULL);
}
