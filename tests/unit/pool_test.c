/* pool.c: every job submitted comes back to done exactly once, the queue empties (it does
 * not grow with what ran), unstarted jobs can be taken back, a pool fenced out
 * (cancel_all KILL) starts nothing more, and with a change watcher a cancel request made
 * elsewhere stops a run at once, not at the next poll. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "api.h"
#include "exec.h"
#include "log.h"
#include "pool.h"
#include "store.h"
#include "util.h"
#include "watch.h"

extern char **environ;

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

/* ---- cancel through the change watcher ---- */

typedef struct shared_file {
    char dir[64];
    char *db;
} shared_file;

static int open_file_store(void *arg, gt_store **store, gt_error *err)
{
    shared_file *f = arg;
    *store = gt_store_open_local(f->db, err);
    return *store ? GT_OK : GT_EUNAVAIL;
}

static cJSON *api_call(gt_api *api, const char *method, const char *path, const char *body,
                       int want)
{
    gt_api_response r = {0};
    gt_api_handle(api, method, path, NULL, body, body ? strlen(body) : 0, &r);
    assert_non_null(r.body);
    if (r.status != want) {
        char *text = cJSON_PrintUnformatted(r.body);
        fail_msg("%s %s: %d, not %d: %s", method, path, r.status, want, text);
    }
    return r.body;
}

static gt_err keep_id(void *arg, const cJSON *ex, gt_error *err)
{
    (void)err;
    gt_strv_push(arg, cJSON_GetObjectItemCaseSensitive(ex, "id")->valuestring);
    return GT_OK;
}

/* The state of execution id, as stored. */
static char *state_of(gt_api *api, const char *id)
{
    char *path = gt_xasprintf("/api/v1/executions/%s", id);
    cJSON *b = api_call(api, "GET", path, NULL, 200);
    char *st = gt_xstrdup(cJSON_GetObjectItemCaseSensitive(b, "state")->valuestring);
    cJSON_Delete(b);
    free(path);
    return st;
}

static void test_cancel_through_watch(void **state)
{
    (void)state;
    shared_file f = {0};
    snprintf(f.dir, sizeof f.dir, "/tmp/gt-pool-XXXXXX");
    assert_non_null(mkdtemp(f.dir));
    f.db = gt_xasprintf("%s/gantry.db", f.dir);
    char *cmd = gt_xasprintf(
        "cd %s && git init -q -b main src && cd src && printf '#!/bin/sh\\nsleep 30\\n' > wait.sh && "
        "chmod +x wait.sh && git add wait.sh && git -c user.name=t -c user.email=t@t commit -qm w",
        f.dir);
    if (system(cmd) != 0)   /* test scaffolding only */
        fail_msg("%s failed", cmd);
    free(cmd);
    gt_run_options run = {.working_dir = f.dir, .git = "git", .environ = environ,
                          .sandbox_none = true, .kill_grace_ms = 1000};
    gt_store *store = NULL;
    assert_int_equal(open_file_store(&f, &store, NULL), GT_OK);
    /* the controller that takes the requests: runs are dispatched, here to this pool */
    gt_strv ids = {0};
    gt_api_deps d = {.store = store, .key_file = "/nonexistent/key", .run = &run,
                     .dispatch = keep_id, .dispatch_arg = &ids};
    gt_api *api = gt_api_new(&d, NULL);
    assert_non_null(api);
    char *body = gt_xasprintf("{\"name\":\"r\",\"url\":\"%s/src\"}", f.dir);
    cJSON_Delete(api_call(api, "POST", "/api/v1/repositories", body, 201));
    free(body);
    cJSON_Delete(api_call(api, "POST", "/api/v1/services",
                          "{\"name\":\"wait\",\"type\":\"executable\",\"repository\":\"r\","
                          "\"filename\":\"wait.sh\"}", 201));
    cJSON_Delete(api_call(api, "POST", "/api/v1/services/wait/run", NULL, 202));
    assert_int_equal(ids.n, 1);

    gt_watch *watch = gt_watch_new(open_file_store, &f, NULL);
    assert_non_null(watch);
    tally t = {0};
    gt_pool_config c = {
        .workers = 1,
        .open_store = open_file_store,
        .open_store_arg = &f,
        .key_file = "/nonexistent/key",
        .run = &run,
        .runner_name = "test",
        .watch = watch,
        .cancel_poll_ms = 60000,   /* only the watcher can notice it in time */
        .done = on_done,
        .done_arg = &t,
    };
    gt_pool *p = gt_pool_new(&c, NULL);
    assert_non_null(p);
    assert_int_equal(gt_pool_submit(p, ids.v[0], 0, NULL, NULL), GT_OK);
    char *st = NULL;
    for (int i = 0; i < 400; i++) {   /* 20 s: a checkout on a loaded machine */
        free(st);
        st = state_of(api, ids.v[0]);
        if (strcmp(st, "running") == 0)
            break;
        struct timespec ts = {0, 50 * 1000000L};
        nanosleep(&ts, NULL);
    }
    assert_string_equal(st, "running");
    free(st);
    st = NULL;
    char *path = gt_xasprintf("/api/v1/executions/%s/cancel", ids.v[0]);
    int64_t t0 = gt_mono_ms();
    cJSON_Delete(api_call(api, "POST", path, NULL, 202));
    wait_idle(p);   /* the run ended: at most 10 s */
    int64_t took = gt_mono_ms() - t0;
    st = state_of(api, ids.v[0]);
    assert_string_equal(st, "canceled");
    print_message("cancel through the watcher: %lld ms from the request to the end of the run\n",
                  (long long)took);
    /* well within the 60 s poll and the 30 s run; the run's kill grace is 1 s */
    assert_true(took < 5000);
    assert_int_equal(t.done, 1);
    gt_pool_free(&p);
    gt_watch_free(&watch);
    gt_api_free(&api);
    gt_store_free(&store);
    gt_strv_free(&ids);
    free(st);
    free(path);
    gt_rm_rf(f.dir, NULL);
    free(f.db);
}

int main(void)
{
    gt_log_setup(NULL, GT_LOG_OFF, false, "test");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_job_comes_back_once),
        cmocka_unit_test(test_take_back_and_fence),
        cmocka_unit_test(test_cancel_through_watch),
    };
    return cmocka_run_group_tests_name("pool", tests, NULL, NULL);
}
