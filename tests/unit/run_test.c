/* run.c and repo.c: argv per service type, input rendering, URLs, checkouts. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "json.h"
#include "log.h"
#include "repo.h"
#include "run.h"
#include "util.h"

extern char **environ;

static char *joined(const gt_strv *v)
{
    gt_buf b = {0};
    for (size_t i = 0; i < v->n; i++)
        gt_buf_printf(&b, "%s[%s]", i ? " " : "", v->v[i]);
    return gt_buf_steal(&b);
}

static void check_argv(const char *service, const char *inputs, const char *want)
{
    gt_run_options o = {.python = "python3", .ansible_playbook = "ansible-playbook"};
    cJSON *s = cJSON_Parse(service), *in = inputs ? cJSON_Parse(inputs) : NULL;
    gt_strv argv = {0};
    gt_error e = {0};
    if (gt_run_build_argv(&o, s, in, NULL, "/tmp", &argv, &e) != GT_OK)
        fail_msg("%s with %s: %s", service, inputs, e.message);
    char *got = joined(&argv);
    if (strcmp(got, want) != 0)
        fail_msg("argv %s, want %s", got, want);
    free(got);
    gt_strv_free(&argv);
    cJSON_Delete(s);
    cJSON_Delete(in);
}

static void test_argv(void **state)
{
    (void)state;
    check_argv("{\"type\":\"python-script\",\"filename\":\"m.py\"}",
               "{\"host\":\"r1\",\"port\":22,\"ratio\":0.5,\"on\":true,\"tags\":[\"a\",1],\"x\":null}",
               "[python3] [m.py] [--host=r1] [--port=22] [--ratio=0.5] [--on=true] "
               "[--tags=[\"a\",1]] [--x=]");
    check_argv("{\"type\":\"executable\",\"filename\":\"t.sh\"}", "{\"a\":\"two words\",\"b\":-1}",
               "[./t.sh] [--a] [two words] [--b] [-1]");
    check_argv("{\"type\":\"executable\",\"filename\":\"t.sh\",\"arg_format\":\"-{key}={value}\","
               "\"interpreter\":\"bash\"}", "{\"k\":\"v; rm -rf /\"}",
               "[bash] [./t.sh] [-k=v; rm -rf /]");
    check_argv("{\"type\":\"executable\",\"filename\":\"t.sh\",\"arg_format\":\"{value}\"}",
               "{\"k\":\"$(id)\"}", "[./t.sh] [$(id)]");
    check_argv("{\"type\":\"ansible-playbook\",\"playbooks\":[\"a.yml\"]}", NULL,
               "[ansible-playbook] [a.yml]");
    gt_run_options o = {0};
    cJSON *s = cJSON_Parse("{\"type\":\"opentofu-plan\"}");
    gt_strv argv = {0};
    gt_error e = {0};
    assert_int_equal(gt_run_build_argv(&o, s, NULL, NULL, NULL, &argv, &e), GT_EINVAL);
    assert_string_equal(e.field, "$.type");
    gt_strv_free(&argv);
    cJSON_Delete(s);
}

static void test_urls(void **state)
{
    (void)state;
    const char *good[] = {"/srv/repo", "file:///srv/repo", "ssh://git@h/r.git", "git@h:r.git",
                          "https://h/r.git", "http://h/r", "h:path"};
    const char *bad[] = {"", "-upload-pack=x", "ftp://h/r", "relative/path", "https://",
                         "h:", ":x", NULL};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        if (!gt_repo_url_valid(good[i]))
            fail_msg("%s should be valid", good[i]);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (gt_repo_url_valid(bad[i]))
            fail_msg("%s should be invalid", bad[i] ? bad[i] : "NULL");
}

static void sh(const char *cmd)
{
    /* test scaffolding only: the code under test never uses a shell */
    if (system(cmd) != 0)
        fail_msg("%s failed", cmd);
}

static void test_checkout(void **state)
{
    (void)state;
    char dir[] = "/tmp/gt-run-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char *cmd = gt_xasprintf(
        "cd %s && git init -q -b main src && cd src && echo one > f && git add f && "
        "git -c user.name=t -c user.email=t@t commit -qm one && git tag v1 && echo two > f && "
        "git -c user.name=t -c user.email=t@t commit -qam two", dir);
    sh(cmd);
    free(cmd);
    gt_run_options o = {.working_dir = dir, .git = "git", .environ = environ};
    char *url = gt_xasprintf("%s/src", dir);
    const char *refs[] = {NULL, "main", "v1"};
    const char *want[] = {"two\n", "two\n", "one\n"};
    for (int i = 0; i < 3; i++) {
        char *dest = gt_xasprintf("%s/co%d", dir, i), *commit = NULL, *f = NULL;
        gt_error e = {0};
        assert_int_equal(gt_repo_checkout(&o, url, refs[i], NULL, dest, &commit, &e), GT_OK);
        assert_int_equal(strlen(commit), 40);
        char *path = gt_path_join(dest, "f");
        assert_int_equal(gt_read_file(path, 100, &f, NULL, NULL), GT_OK);
        assert_string_equal(f, want[i]);
        free(f);
        free(path);
        free(commit);
        free(dest);
    }
    char *dest = gt_xasprintf("%s/bad", dir), *commit = NULL;
    gt_error e = {0};
    assert_int_equal(gt_repo_checkout(&o, url, "nope", NULL, dest, &commit, &e), GT_ENOTFOUND);
    assert_non_null(strstr(e.message, "reference \"nope\" not found"));
    free(dest);
    dest = gt_xasprintf("%s/bad2", dir);
    gt_error_clear(&e);
    char *missing = gt_xasprintf("%s/missing", dir);
    assert_int_equal(gt_repo_checkout(&o, missing, NULL, NULL, dest, &commit, &e), GT_EIO);
    assert_non_null(strstr(e.message, "fetching"));
    free(missing);
    free(dest);
    free(url);
    gt_rm_rf(dir, NULL);
}

int main(void)
{
    gt_log_setup(NULL, GT_LOG_ERROR, false, "test");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_argv),
        cmocka_unit_test(test_urls),
        cmocka_unit_test(test_checkout),
    };
    return cmocka_run_group_tests_name("run", tests, NULL, NULL);
}
