/* util.c, json.c, error.c, log.c */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "error.h"
#include "json.h"
#include "log.h"
#include "util.h"

static void test_error_set_once(void **state)
{
    (void)state;
    gt_error e = {0};
    assert_int_equal(gt_error_setf(&e, GT_EINVAL, "$.a", "first %d", 1), GT_EINVAL);
    assert_int_equal(gt_error_set(&e, GT_EIO, "second"), GT_EIO);
    assert_int_equal(e.code, GT_EINVAL);
    assert_string_equal(e.message, "first 1");
    assert_string_equal(e.field, "$.a");
    assert_int_equal(gt_error_set(NULL, GT_ENOTFOUND, "x"), GT_ENOTFOUND);
    gt_error_clear(&e);
    assert_int_equal(e.code, GT_OK);
    assert_string_equal(gt_strerror(GT_ENOTFOUND), "not found");
}

static void test_parse_int64(void **state)
{
    (void)state;
    int64_t v = 0;
    gt_error e = {0};
    assert_int_equal(gt_parse_int64("42", 0, 100, &v, "n", &e), GT_OK);
    assert_int_equal(v, 42);
    assert_int_equal(gt_parse_int64("-1", 0, 100, &v, "n", &e), GT_EINVAL);
    assert_non_null(strstr(e.message, "out of range"));
    const char *bad[] = {"", " 1", "1x", "0x10", "99999999999999999999", "abc"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        gt_error_clear(&e);
        assert_int_equal(gt_parse_int64(bad[i], INT64_MIN, INT64_MAX, &v, "n", &e), GT_EINVAL);
        assert_non_null(strstr(e.message, "n:"));
    }
    bool b = false;
    assert_int_equal(gt_parse_bool("Yes", &b, "b", NULL), GT_OK);
    assert_true(b);
    assert_int_equal(gt_parse_bool("maybe", &b, "b", NULL), GT_EINVAL);
}

static void test_buf_and_strv(void **state)
{
    (void)state;
    gt_buf b = {0};
    for (int i = 0; i < 1000; i++)
        gt_buf_printf(&b, "%d,", i);
    assert_int_equal(b.len, strlen(b.data));
    char *s = gt_buf_steal(&b);
    assert_memory_equal(s, "0,1,2,", 6);
    free(s);
    gt_strv v = {0};
    for (int i = 0; i < 100; i++)
        gt_strv_push_owned(&v, gt_xasprintf("s%d", i));
    assert_int_equal(v.n, 100);
    assert_null(v.v[100]);
    assert_string_equal(v.v[99], "s99");
    gt_strv_free(&v);
    gt_strv_free(&v); /* twice is fine */
}

static void test_ids_sort_by_time_and_are_unique(void **state)
{
    (void)state;
    char *prev = gt_id_new();
    assert_int_equal(strlen(prev), 26);
    for (int i = 0; i < 200; i++) {
        usleep(i % 50 == 0 ? 2000 : 0);
        char *id = gt_id_new();
        assert_true(gt_name_valid(id));
        assert_string_not_equal(id, prev);
        if (i % 50 == 0) /* a later millisecond sorts later */
            assert_true(strcmp(id, prev) > 0);
        free(prev);
        prev = id;
    }
    free(prev);
}

static void test_names(void **state)
{
    (void)state;
    assert_true(gt_name_valid("a.b-c_9"));
    assert_false(gt_name_valid(""));
    assert_false(gt_name_valid(".hidden"));
    assert_false(gt_name_valid("-flag"));
    assert_false(gt_name_valid("a/b"));
    assert_false(gt_name_valid("a b"));
    char long_name[200];
    memset(long_name, 'a', sizeof long_name - 1);
    long_name[199] = '\0';
    assert_false(gt_name_valid(long_name));
}

static void test_files(void **state)
{
    (void)state;
    char dir[] = "/tmp/gt-util-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char *nested = gt_xasprintf("%s/a/b/c", dir);
    assert_int_equal(gt_mkdir_p(nested, 0700, NULL), GT_OK);
    char *f = gt_path_join(nested, "f.txt");
    assert_int_equal(gt_write_file_atomic(f, "hello", 5, 0600, NULL), GT_OK);
    char *text = NULL;
    size_t n = 0;
    assert_int_equal(gt_read_file(f, 100, &text, &n, NULL), GT_OK);
    assert_string_equal(text, "hello");
    free(text);
    gt_error e = {0};
    assert_int_equal(gt_read_file(f, 3, &text, &n, &e), GT_EINVAL);
    assert_non_null(strstr(e.message, "larger than"));
    gt_error_clear(&e);
    char *missing = gt_path_join(dir, "missing");
    assert_int_equal(gt_read_file(missing, 3, &text, &n, &e), GT_ENOTFOUND);
    assert_non_null(strstr(e.message, missing));
    assert_int_equal(gt_rm_rf(dir, NULL), GT_OK);
    assert_false(gt_file_exists(dir));
    assert_int_equal(gt_rm_rf(dir, NULL), GT_OK);
    setenv("HOME", "/home/x", 1);
    char *h = gt_expand_home("~/y");
    assert_string_equal(h, "/home/x/y");
    free(h);
    free(missing);
    free(f);
    free(nested);
}

static void test_json_parse_errors_have_positions(void **state)
{
    (void)state;
    cJSON *j = NULL;
    gt_error e = {0};
    const char *t = "{\n  \"a\": 1,\n  \"b\": ]\n}";
    assert_int_equal(gt_json_parse(t, strlen(t), "x.json", &j, &e), GT_EINVAL);
    assert_non_null(strstr(e.message, "x.json:3:"));
    gt_error_clear(&e);
    assert_int_equal(gt_json_parse("{} x", 4, "body", &j, &e), GT_EINVAL);
    assert_non_null(strstr(e.message, "after the JSON value"));
    gt_error_clear(&e);
    const char *nul = "{\"a\": \"x\\u0000y\"}";
    assert_int_equal(gt_json_parse(nul, strlen(nul), "body", &j, &e), GT_EINVAL);
    assert_non_null(strstr(e.message, "body:1:9"));
    const char *esc = "{\"a\": \"x\\\\u0000y\"}"; /* an escaped backslash, then text */
    assert_int_equal(gt_json_parse(esc, strlen(esc), "body", &j, NULL), GT_OK);
    cJSON_Delete(j);
    gt_error_clear(&e);
    assert_int_equal(gt_json_parse("", 0, "body", &j, &e), GT_EINVAL);
    assert_int_equal(gt_json_parse("{\"a\":\"s\",\"n\":2.5,\"i\":3,\"b\":true}", 33, "b", &j, NULL),
                     GT_OK);
    const char *s = NULL;
    int64_t i = 0;
    bool b = false;
    assert_int_equal(gt_json_str(j, "$", "a", &s, NULL), GT_OK);
    assert_string_equal(s, "s");
    assert_int_equal(gt_json_int(j, "$", "i", &i, NULL), GT_OK);
    assert_int_equal(i, 3);
    gt_error_clear(&e);
    assert_int_equal(gt_json_int(j, "$.x", "n", &i, &e), GT_EINVAL);
    assert_string_equal(e.field, "$.x.n");
    assert_int_equal(gt_json_bool(j, "$", "b", &b, NULL), GT_OK);
    assert_true(b);
    gt_error_clear(&e);
    assert_int_equal(gt_json_str(j, "$", "missing", &s, &e), GT_EINVAL);
    assert_non_null(strstr(e.message, "$.missing: is required"));
    static const char *const allowed[] = {"a", "n", "i", NULL};
    gt_error_clear(&e);
    assert_int_equal(gt_json_only(j, "$", allowed, &e), GT_EINVAL);
    assert_string_equal(e.field, "$.b");
    cJSON_Delete(j);
}

static void test_log_levels(void **state)
{
    (void)state;
    gt_log_level l;
    assert_int_equal(gt_log_level_parse("WARNING", &l, NULL), GT_OK);
    assert_int_equal(l, GT_LOG_WARN);
    assert_int_equal(gt_log_level_parse("loud", &l, NULL), GT_EINVAL);
    FILE *f = tmpfile();
    gt_log_setup(f, GT_LOG_INFO, true, "test");
    gt_debug("hidden");
    gt_info("shown \"quoted\"\n");
    rewind(f);
    char line[512] = {0};
    assert_non_null(fgets(line, sizeof line, f));
    assert_non_null(strstr(line, "\"message\":\"shown \\\"quoted\\\"\\u000a\""));
    assert_null(fgets(line, sizeof line, f));
    gt_log_setup(NULL, GT_LOG_INFO, false, "test");
    fclose(f);
}

/* gt_malloc_tune with a fixed threshold: a second big block is given back at free too.
 * Without it glibc raises its threshold (and its trim threshold) at the first big free,
 * so the second 19 MiB block (tokend's next argon2id hash) stays in the heap. */
static void test_malloc_tune_gives_big_blocks_back(void **state)
{
    (void)state;
#if defined(__SANITIZE_ADDRESS__) || !defined(__GLIBC__)
    skip(); /* the sanitizer's allocator ignores mallopt and mallinfo2 */
#else
    gt_malloc_tune(0, (size_t)1 << 20);
    const size_t n = (size_t)19 << 20;
    for (int i = 0; i < 2; i++) {
        char *p = gt_xmalloc(n);
        memset(p, i + 1, n);
        free(p);
    }
    assert_true(mallinfo2().arena < n);
#endif
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_error_set_once),
        cmocka_unit_test(test_parse_int64),
        cmocka_unit_test(test_buf_and_strv),
        cmocka_unit_test(test_ids_sort_by_time_and_are_unique),
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_files),
        cmocka_unit_test(test_json_parse_errors_have_positions),
        cmocka_unit_test(test_log_levels),
        cmocka_unit_test(test_malloc_tune_gives_big_blocks_back),
    };
    return cmocka_run_group_tests_name("util", tests, NULL, NULL);
}
