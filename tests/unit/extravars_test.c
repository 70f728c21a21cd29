/* extravars.c: the extra-vars file Ansible reads. Exact output for the cases that
 * matter (a template, quotes, newlines, '#', ':', a leading '-', unicode, long keys),
 * a libyaml round trip (tests/fuzz/extravars_roundtrip.h), and what is refused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../fuzz/extravars_roundtrip.h"
#include "extravars.h"
#include "json.h"
#include "log.h"
#include "util.h"

static char *emit(const char *json)
{
    cJSON *v = cJSON_Parse(json);
    assert_non_null(v);
    char *out = NULL;
    size_t len = 0;
    gt_error e = {0};
    if (gt_extravars_yaml(v, "$.inputs", &out, &len, &e) != GT_OK)
        fail_msg("%s: %s", json, e.message);
    assert_int_equal(strlen(out), len);
    /* and it reads back, every string !unsafe, equal to what went in */
    const char *why = NULL;
    cJSON *back = rt_read(out, len, &why);
    if (back == NULL || !rt_equal(v, back))
        fail_msg("%s: round trip: %s\n%s", json, why ? why : "values differ", out);
    cJSON_Delete(back);
    cJSON_Delete(v);
    return out;
}

static void expect(const char *json, const char *yaml_body)
{
    char *out = emit(json);
    char *want = gt_xasprintf("---\n%s...\n", yaml_body);
    if (strcmp(out, want) != 0)
        fail_msg("%s:\n%s\nwant:\n%s", json, out, want);
    free(want);
    free(out);
}

static void test_strings_are_unsafe_and_escaped(void **state)
{
    (void)state;
    expect("{\"name\":\"{{ lookup('pipe','id') }}\"}",
           "!unsafe \"name\": !unsafe \"{{ lookup('pipe','id') }}\"\n");
    expect("{\"a\":\"line1\\nline2\\r\\n\",\"b\":\"say \\\"hi\\\" \\\\ back\"}",
           "!unsafe \"a\": !unsafe \"line1\\nline2\\r\\n\"\n"
           "!unsafe \"b\": !unsafe \"say \\\"hi\\\" \\\\ back\"\n");
    expect("{\"c\":\"# not a comment\",\"d\":\"key: value\",\"e\":\"- item\",\"f\":\"{% raw %}\","
           "\"g\":\"!unsafe\",\"h\":\"&a *b ? | > @ `\",\"i\":\"\",\"j\":\"  lead and trail  \"}",
           "!unsafe \"c\": !unsafe \"# not a comment\"\n"
           "!unsafe \"d\": !unsafe \"key: value\"\n"
           "!unsafe \"e\": !unsafe \"- item\"\n"
           "!unsafe \"f\": !unsafe \"{% raw %}\"\n"
           "!unsafe \"g\": !unsafe \"!unsafe\"\n"
           "!unsafe \"h\": !unsafe \"&a *b ? | > @ `\"\n"
           "!unsafe \"i\": !unsafe \"\"\n"
           "!unsafe \"j\": !unsafe \"  lead and trail  \"\n");
    /* everything outside printable ASCII is an escape: the file is ASCII */
    expect("{\"u\":\"caf\\u00e9 \\u2028 \\ud83d\\ude00 \\t\\u0001\\u007f\\u0085\\u00a0\"}",
           "!unsafe \"u\": !unsafe \"caf\\xE9 \\L \\U0001F600 \\t\\x01\\x7F\\N\\_\"\n");
    /* keys of nested objects and list items too; other scalars stay typed */
    expect("{\"n\":{\"{{k}}\":[\"{{v}}\",1,-0.5,true,false,null,{}],\"e\":[]}}",
           "!unsafe \"n\":\n"
           "  !unsafe \"{{k}}\":\n"
           "  - !unsafe \"{{v}}\"\n"
           "  - 1\n"
           "  - -0.5\n"
           "  - true\n"
           "  - false\n"
           "  - null\n"
           "  - {}\n"
           "  !unsafe \"e\": []\n");
    char *out = emit("{}");
    assert_string_equal(out, "--- {}\n...\n");
    free(out);
}

static void test_long_keys_and_values(void **state)
{
    (void)state;
    /* a key longer than a simple key may be ("? key"), a value longer than a line */
    gt_buf key = {0}, val = {0};
    for (int i = 0; i < 300; i++)
        gt_buf_puts(&key, "k");
    for (int i = 0; i < 500; i++)
        gt_buf_puts(&val, "{{ x }} ");
    cJSON *o = cJSON_CreateObject();
    cJSON_AddItemToObject(o, key.data, cJSON_CreateString(val.data));
    char *json = gt_json_print(o);
    char *out = emit(json);
    assert_non_null(strstr(out, "? !unsafe \"kkk"));
    assert_null(strstr(out, "\\\n")); /* no line folding */
    free(out);
    free(json);
    cJSON_Delete(o);
    gt_buf_free(&key);
    gt_buf_free(&val);
}

static void test_numbers(void **state)
{
    (void)state;
    struct {
        double d;
        const char *want;
    } cases[] = {{0, "0"}, {-3, "-3"}, {0.5, "0.5"}, {1e300, "1.0000000000000001e+300"},
                 {1e20, "1.0e+20"}, {-2.5e-7, "-2.4999999999999999e-07"},
                 {9007199254740991.0, "9007199254740991"}, {9007199254740992.0, "9007199254740992.0"}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char buf[48];
        assert_true(gt_extravars_number(cases[i].d, buf, sizeof buf));
        assert_string_equal(buf, cases[i].want);
        assert_true(strtod(buf, NULL) == cases[i].d);
    }
    char buf[48];
    assert_false(gt_extravars_number(INFINITY, buf, sizeof buf));
    assert_false(gt_extravars_number(NAN, buf, sizeof buf));
}

static void test_refused(void **state)
{
    (void)state;
    cJSON *o = cJSON_CreateObject();
    cJSON *list = cJSON_AddArrayToObject(o, "list");
    cJSON_AddItemToArray(list, cJSON_CreateString("ok"));
    cJSON_AddItemToArray(list, cJSON_CreateString("bad \xff\xfe"));
    char *out = NULL;
    gt_error e = {0};
    assert_int_equal(gt_extravars_yaml(o, "$.inputs", &out, NULL, &e), GT_EINVAL);
    assert_string_equal(e.field, "$.inputs.list[1]");
    assert_non_null(strstr(e.message, "UTF-8"));
    assert_null(out);
    cJSON_Delete(o);
    /* overlong and surrogate encodings are not UTF-8 either, in keys as in values */
    const char *bad[] = {"\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xe2\x82"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        o = cJSON_CreateObject();
        cJSON_AddItemToObject(o, bad[i], cJSON_CreateNull());
        gt_error_clear(&e);
        assert_int_equal(gt_extravars_yaml(o, "$.inputs", &out, NULL, &e), GT_EINVAL);
        cJSON_Delete(o);
    }
    o = cJSON_CreateObject();
    cJSON_AddItemToObject(o, "n", cJSON_CreateNumber(INFINITY));
    gt_error_clear(&e);
    assert_int_equal(gt_extravars_yaml(o, "$.inputs", &out, NULL, &e), GT_EINVAL);
    assert_string_equal(e.field, "$.inputs.n");
    cJSON_Delete(o);
    o = cJSON_CreateArray();
    assert_int_equal(gt_extravars_yaml(o, "$.inputs", &out, NULL, NULL), GT_EINVAL);
    cJSON_Delete(o);
}

static void test_checker_catches_templatable_text(void **state)
{
    (void)state;
    /* the round-trip reader itself: what it must reject */
    const char *bad[] = {"a: b\n", "!unsafe \"a\": b\n", "!unsafe \"a\": '{{x}}'\n",
                         "!unsafe \"a\": !unsafe '{{x}}'\n", "!unsafe \"a\": &x 1\n",
                         "!unsafe \"a\": !!str \"x\"\n", "!unsafe \"a\": 1e3\n", "- 1\n"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *why = NULL;
        cJSON *v = rt_read(bad[i], strlen(bad[i]), &why);
        if (v != NULL)
            fail_msg("accepted %s", bad[i]);
        assert_non_null(why);
    }
}

int main(void)
{
    gt_log_setup(NULL, GT_LOG_ERROR, false, "test");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_strings_are_unsafe_and_escaped),
        cmocka_unit_test(test_long_keys_and_values),
        cmocka_unit_test(test_numbers),
        cmocka_unit_test(test_refused),
        cmocka_unit_test(test_checker_catches_templatable_text),
    };
    return cmocka_run_group_tests_name("extravars", tests, NULL, NULL);
}
