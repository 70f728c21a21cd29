/* lifecycle.c, output.c and the UTF-8 helpers: the state table, conditional and fenced
 * records, output stored apart, and the record of last resort, on a memory store. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "lifecycle.h"
#include "log.h"
#include "output.h"
#include "store.h"
#include "util.h"

static int setup(void **state)
{
    gt_log_setup(NULL, GT_LOG_ERROR, false, "test");
    *state = gt_store_open_memory(NULL);
    return *state ? 0 : -1;
}

static int teardown(void **state)
{
    gt_store *s = *state;
    gt_store_free(&s);
    return 0;
}

static cJSON *new_ex(const char *id)
{
    cJSON *ex = cJSON_CreateObject();
    gt_json_set_str(ex, "id", id);
    gt_json_set_num(ex, "attempt", 1);
    return ex;
}

static cJSON *stored(gt_store *s, const char *id, int64_t *rev)
{
    char *body = NULL;
    assert_int_equal(gt_store_get(s, GT_EXECUTIONS, id, &body, rev, NULL), GT_OK);
    cJSON *doc = cJSON_Parse(body);
    free(body);
    assert_non_null(doc);
    return doc;
}

static const char *state_of(const cJSON *ex)
{
    return cJSON_GetObjectItemCaseSensitive(ex, "state")->valuestring;
}

static void test_table(void **state)
{
    (void)state;
    /* who may create, run, end, retry */
    assert_true(gt_lifecycle_allowed(NULL, "queued", GT_ACTOR_CLIENT));
    assert_false(gt_lifecycle_allowed(NULL, "running", GT_ACTOR_WORKER));
    assert_true(gt_lifecycle_allowed("queued", "running", GT_ACTOR_WORKER));
    assert_false(gt_lifecycle_allowed("queued", "succeeded", GT_ACTOR_WORKER));
    assert_true(gt_lifecycle_allowed("running", "succeeded", GT_ACTOR_WORKER));
    assert_false(gt_lifecycle_allowed("running", "succeeded", GT_ACTOR_REAPER));
    assert_true(gt_lifecycle_allowed("running", "queued", GT_ACTOR_REAPER));
    assert_true(gt_lifecycle_allowed("running", "lost", GT_ACTOR_REAPER));
    assert_false(gt_lifecycle_allowed("running", "lost", GT_ACTOR_WORKER));
    assert_false(gt_lifecycle_allowed("running", "canceled", GT_ACTOR_CANCEL));
    assert_true(gt_lifecycle_allowed("queued", "canceled", GT_ACTOR_CANCEL));
    assert_true(gt_lifecycle_allowed("queued", "queued", GT_ACTOR_DISPATCH));
    assert_false(gt_lifecycle_allowed("running", "queued", GT_ACTOR_DISPATCH));
    /* an ended execution never moves again, whoever asks */
    static const char *const ends[] = {"succeeded", "failed", "timed_out", "canceled", "lost"};
    static const char *const all[] = {"accepted", "queued", "running", "succeeded", "failed",
                                      "timed_out", "canceled", "lost"};
    for (size_t i = 0; i < 5; i++)
        for (size_t j = 0; j < 8; j++)
            for (int who = GT_ACTOR_CLIENT; who <= GT_ACTOR_DISPATCH; who++)
                assert_false(gt_lifecycle_allowed(ends[i], all[j], (gt_actor)who));
    assert_false(gt_lifecycle_allowed("bogus", "running", GT_ACTOR_WORKER));
    assert_false(gt_lifecycle_allowed("queued", "bogus", GT_ACTOR_WORKER));
}

static void test_moves_are_checked_and_conditional(void **state)
{
    gt_store *s = *state;
    gt_error err = {0};
    cJSON *ex = new_ex("e1");
    int64_t rev = GT_REV_NONE;
    assert_int_equal(gt_lifecycle_store(s, ex, &rev, "queued", GT_ACTOR_CLIENT, NULL, &err), GT_OK);
    int64_t queued_rev = rev;
    /* a refused move writes nothing and keeps the state */
    err = (gt_error){0};
    assert_int_equal(gt_lifecycle_store(s, ex, &rev, "succeeded", GT_ACTOR_WORKER, NULL, &err),
                     GT_EPERM);
    assert_non_null(strstr(err.message, "from queued to succeeded"));
    assert_string_equal(state_of(ex), "queued");
    assert_int_equal(rev, queued_rev);
    /* two workers read the same revision: exactly one takes it */
    cJSON *other = cJSON_Duplicate(ex, 1);
    int64_t other_rev = rev;
    assert_int_equal(gt_lifecycle_store(s, ex, &rev, "running", GT_ACTOR_WORKER, NULL, &err), GT_OK);
    err = (gt_error){0};
    assert_int_equal(gt_lifecycle_store(s, other, &other_rev, "running", GT_ACTOR_WORKER, NULL, &err),
                     GT_ECONFLICT);
    assert_string_equal(state_of(other), "queued");
    /* the end sets finished_at */
    gt_json_set_str(ex, "stdout", "hello\n");
    assert_int_equal(gt_lifecycle_store(s, ex, &rev, "succeeded", GT_ACTOR_WORKER, NULL, &err),
                     GT_OK);
    cJSON *doc = stored(s, "e1", NULL);
    assert_string_equal(state_of(doc), "succeeded");
    assert_true(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(doc, "finished_at")));
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(doc, "stdout")->valuestring, "hello\n");
    cJSON_Delete(doc);
    cJSON_Delete(other);
    cJSON_Delete(ex);
}

static void test_fenced_worker_cannot_overwrite(void **state)
{
    gt_store *s = *state;
    gt_error err = {0};
    int64_t epoch = 0, rev = GT_REV_NONE;
    assert_int_equal(gt_store_lease_acquire(s, "runner:r1", "r1", 60000, &epoch, NULL), GT_OK);
    gt_store_fence f = {"runner:r1", "r1", epoch};
    cJSON *ex = new_ex("e2");
    assert_int_equal(gt_lifecycle_store(s, ex, &rev, "queued", GT_ACTOR_CLIENT, NULL, &err), GT_OK);
    assert_int_equal(gt_lifecycle_store(s, ex, &rev, "running", GT_ACTOR_WORKER, &f, &err), GT_OK);
    /* the runner is declared dead: the reaper holds its lease now */
    assert_int_equal(gt_store_lease_release(s, "runner:r1", "r1", NULL), GT_OK);
    assert_int_equal(gt_store_lease_acquire(s, "runner:r1", "reaper", 60000, &epoch, NULL), GT_OK);
    err = (gt_error){0};
    assert_int_equal(gt_lifecycle_store(s, ex, &rev, "succeeded", GT_ACTOR_WORKER, &f, &err),
                     GT_ECONFLICT);
    assert_non_null(strstr(err.message, "fenced"));
    cJSON *doc = stored(s, "e2", NULL);
    assert_string_equal(state_of(doc), "running");
    cJSON_Delete(doc);
    cJSON_Delete(ex);
}

static char *big_text(size_t n, char c)
{
    char *t = gt_xcalloc(1, n + 1);
    for (size_t i = 0; i < n; i++)
        t[i] = (i % 80 == 79) ? '\n' : c;
    return t;
}

/* 1 MiB of stdout and 1 MiB of stderr (the default caps) always reach the store. */
static void test_big_output_is_stored_apart(void **state)
{
    gt_store *s = *state;
    gt_error err = {0};
    int64_t rev = GT_REV_NONE;
    cJSON *ex = new_ex("e3");
    assert_int_equal(gt_lifecycle_store(s, ex, &rev, "queued", GT_ACTOR_CLIENT, NULL, &err), GT_OK);
    assert_int_equal(gt_lifecycle_store(s, ex, &rev, "running", GT_ACTOR_WORKER, NULL, &err), GT_OK);
    char *out = big_text(1 << 20, 'x');
    /* control characters escape to six bytes each in JSON: the worst case */
    char *er = big_text(1 << 20, '\001');
    gt_json_set_str(ex, "stdout", out);
    gt_json_set_str(ex, "stderr", er);
    assert_int_equal(gt_lifecycle_store(s, ex, &rev, "succeeded", GT_ACTOR_WORKER, NULL, &err), GT_OK);
    cJSON *doc = stored(s, "e3", NULL);
    assert_string_equal(state_of(doc), "succeeded");
    assert_null(cJSON_GetObjectItemCaseSensitive(doc, "stdout"));
    assert_true(cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(doc, "output")));
    assert_int_equal(gt_output_load(s, doc, &err), GT_OK);
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(doc, "stdout")->valuestring, out);
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(doc, "stderr")->valuestring, er);
    assert_null(cJSON_GetObjectItemCaseSensitive(doc, "output"));
    cJSON_Delete(doc);
    free(out);
    free(er);
    cJSON_Delete(ex);
}

/* When even that fails, the outcome is recorded without its output, with the reason. */
static void test_record_of_last_resort(void **state)
{
    gt_store *s = *state;
    gt_error err = {0};
    int64_t rev = GT_REV_NONE;
    cJSON *ex = new_ex("e4");
    assert_int_equal(gt_lifecycle_store(s, ex, &rev, "accepted", GT_ACTOR_CLIENT, NULL, &err), GT_OK);
    assert_int_equal(gt_lifecycle_store(s, ex, &rev, "running", GT_ACTOR_WORKER, NULL, &err), GT_OK);
    /* an error message far over the store's 1 MiB per document */
    char *huge = big_text(3 << 20, 'e');
    gt_json_set_str(ex, "error", huge);
    gt_json_set_str(ex, "stdout", "small");
    assert_int_equal(gt_lifecycle_store(s, ex, &rev, "failed", GT_ACTOR_WORKER, NULL, &err), GT_OK);
    cJSON *doc = stored(s, "e4", NULL);
    assert_string_equal(state_of(doc), "failed");
    const char *msg = cJSON_GetObjectItemCaseSensitive(doc, "error")->valuestring;
    assert_non_null(strstr(msg, "the output could not be stored"));
    assert_true(strlen(msg) < 4096);
    assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(doc, "stdout_truncated")));
    cJSON_Delete(doc);
    free(huge);
    cJSON_Delete(ex);
}

static void test_utf8_clean(void **state)
{
    (void)state;
    size_t n = 0;
    char *c = gt_utf8_clean("ok \xff\xfe \xc3\xa9 \xe2\x82", 11, &n);
    assert_string_equal(c, "ok \xef\xbf\xbd\xef\xbf\xbd \xc3\xa9 \xef\xbf\xbd\xef\xbf\xbd");
    assert_int_equal(n, strlen(c));
    free(c);
    /* NUL, overlong, surrogate, past U+10FFFF: each byte one U+FFFD */
    c = gt_utf8_clean("a\0b\xc0\xaf\xed\xa0\x80\xf4\x90\x80\x80", 12, NULL);
    assert_int_equal(strlen(c), 2 + 3 * 10);
    assert_memory_equal(c, "a\xef\xbf\xbd" "b\xef\xbf\xbd", 8);
    free(c);
    c = gt_utf8_clean("", 0, &n);
    assert_string_equal(c, "");
    free(c);
    /* a cut never splits a character */
    assert_int_equal(gt_utf8_cut("ab\xe2\x82\xac", 5), 5);
    assert_int_equal(gt_utf8_cut("ab\xe2\x82\xac", 4), 2);
    assert_int_equal(gt_utf8_cut("ab\xe2\x82\xac", 3), 2);
    assert_int_equal(gt_utf8_cut("abc", 2), 2);
    assert_int_equal(gt_utf8_cut("\xf0\x9f\x98\x80", 3), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_utf8_clean),
        cmocka_unit_test_setup_teardown(test_moves_are_checked_and_conditional, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fenced_worker_cannot_overwrite, setup, teardown),
        cmocka_unit_test_setup_teardown(test_big_output_is_stored_apart, setup, teardown),
        cmocka_unit_test_setup_teardown(test_record_of_last_resort, setup, teardown),
    };
    return cmocka_run_group_tests_name("lifecycle", tests, NULL, NULL);
}
