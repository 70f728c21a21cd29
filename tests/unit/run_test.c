/* run.c and repo.c: argv per service type, input rendering and checks, the extra-vars
 * file, paths inside the checkout, URLs, checkouts. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
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

static gt_err check_inputs(const char *service, const char *inputs, gt_error *e)
{
    cJSON *s = cJSON_Parse(service), *in = cJSON_Parse(inputs);
    assert_non_null(s);
    assert_non_null(in);
    gt_error_clear(e);
    gt_err rc = gt_run_check_inputs(s, in, e);
    cJSON_Delete(s);
    cJSON_Delete(in);
    return rc;
}

static void test_input_names(void **state)
{
    (void)state;
    static const char *const types[] = {
        "{\"type\":\"python-script\",\"filename\":\"m.py\"}",
        "{\"type\":\"executable\",\"filename\":\"t.sh\"}",
        "{\"type\":\"ansible-playbook\",\"playbooks\":[\"a.yml\"]}"};
    const char *good[] = {"a", "_x", "a-b", "A1_b-2", "name", "target", "Z"};
    const char *bad[] = {"", "-x", "--", "1a", "a b", "a=b", "a.b", "caf\xc3\xa9", "a\nb", "-"};
    gt_error e = {0};
    for (size_t t = 0; t < 3; t++) {
        for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
            char *in = gt_xasprintf("{\"%s\":\"v\"}", good[i]);
            if (check_inputs(types[t], in, &e) != GT_OK)
                fail_msg("%s refused for %s: %s", good[i], types[t], e.message);
            free(in);
        }
        for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
            cJSON *in = cJSON_CreateObject();
            cJSON_AddItemToObject(in, bad[i], cJSON_CreateString("v"));
            char *text = gt_json_print(in);
            cJSON_Delete(in);
            assert_int_equal(check_inputs(types[t], text, &e), GT_EINVAL);
            char *field = gt_xasprintf("$.inputs.%s", bad[i]);
            assert_string_equal(e.field, field);
            assert_non_null(strstr(e.message, "not a valid input name"));
            free(field);
            free(text);
        }
    }
    /* not an object, or none */
    assert_int_equal(check_inputs(types[0], "[1]", &e), GT_EINVAL);
    assert_string_equal(e.field, "$.inputs");
    cJSON *s = cJSON_Parse(types[0]);
    assert_int_equal(gt_run_check_inputs(s, NULL, NULL), GT_OK);
    cJSON_Delete(s);
}

static void test_ansible_reserved_names(void **state)
{
    (void)state;
    const char *pb = "{\"type\":\"ansible-playbook\",\"playbooks\":[\"a.yml\"]}";
    const char *py = "{\"type\":\"python-script\",\"filename\":\"m.py\"}";
    const char *reserved[] = {"ansible_host", "ansible_connection", "ansible_become_password",
                              "ansible_python_interpreter", "ansible_", "hostvars", "groups",
                              "group_names", "inventory_hostname", "inventory_hostname_short",
                              "inventory_dir", "inventory_file", "playbook_dir", "play_hosts",
                              "role_path", "omit", "environment", "vars", "become",
                              "become_user", "become_method", "connection", "remote_user",
                              "delegate_to", "lookup"};
    gt_error e = {0};
    for (size_t i = 0; i < sizeof reserved / sizeof reserved[0]; i++) {
        char *in = gt_xasprintf("{\"ok\":1,\"%s\":\"x\"}", reserved[i]);
        assert_int_equal(check_inputs(pb, in, &e), GT_EINVAL);
        char *field = gt_xasprintf("$.inputs.%s", reserved[i]);
        assert_string_equal(e.field, field);
        assert_non_null(strstr(e.message, reserved[i]));
        assert_non_null(strstr(e.message, "Ansible"));
        /* the same name means nothing to a python script */
        assert_int_equal(check_inputs(py, in, &e), GT_OK);
        free(field);
        free(in);
    }
    /* near misses are ordinary names */
    assert_int_equal(check_inputs(pb, "{\"my_ansible_host\":1,\"Ansible_x\":1,\"variables\":1,"
                                      "\"hosts\":1,\"name\":1}", &e), GT_OK);
}

static void test_values_never_options(void **state)
{
    (void)state;
    const char *dflt = "{\"type\":\"executable\",\"filename\":\"t.sh\"}";
    const char *pos = "{\"type\":\"executable\",\"filename\":\"t.sh\",\"arg_format\":\"{value}\"}";
    const char *joined = "{\"type\":\"executable\",\"filename\":\"t.sh\","
                         "\"arg_format\":\"--{key}={value}\"}";
    const char *py = "{\"type\":\"python-script\",\"filename\":\"m.py\"}";
    gt_error e = {0};
    /* split formats: a value that starts with '-' is refused */
    assert_int_equal(check_inputs(dflt, "{\"a\":\"-x\"}", &e), GT_EINVAL);
    assert_string_equal(e.field, "$.inputs.a");
    assert_non_null(strstr(e.message, "--{key}={value}"));
    assert_int_equal(check_inputs(dflt, "{\"a\":\"--help\"}", &e), GT_EINVAL);
    assert_int_equal(check_inputs(pos, "{\"a\":\"--exec=x\"}", &e), GT_EINVAL);
    /* a number after its option is that option's argument; alone it could be "-1" */
    assert_int_equal(check_inputs(dflt, "{\"n\":-1}", &e), GT_OK);
    assert_int_equal(check_inputs(pos, "{\"n\":-1}", &e), GT_EINVAL);
    /* after a token that is not an option ("{key} {value}"), or twice, one of them alone */
    const char *keyval = "{\"type\":\"executable\",\"filename\":\"t.sh\","
                         "\"arg_format\":\"{key} {value}\"}";
    const char *twice = "{\"type\":\"executable\",\"filename\":\"t.sh\","
                        "\"arg_format\":\"--{key} {value} {value}\"}";
    assert_int_equal(check_inputs(keyval, "{\"n\":-1}", &e), GT_EINVAL);
    assert_int_equal(check_inputs(twice, "{\"n\":-1}", &e), GT_EINVAL);
    assert_int_equal(check_inputs(twice, "{\"n\":1}", &e), GT_OK);
    /* a string that only looks like a number is still a string */
    assert_int_equal(check_inputs(dflt, "{\"n\":\"-1\"}", &e), GT_EINVAL);
    /* a '-' later in the value, or joined forms, are fine */
    assert_int_equal(check_inputs(dflt, "{\"a\":\"x-y\",\"b\":\" -x\"}", &e), GT_OK);
    assert_int_equal(check_inputs(joined, "{\"a\":\"--help\",\"b\":-1}", &e), GT_OK);
    assert_int_equal(check_inputs(py, "{\"a\":\"--help\"}", &e), GT_OK);
    check_argv(py, "{\"a\":\"--help\",\"b\":\"-\"}", "[python3] [m.py] [--a=--help] [--b=-]");
    check_argv(joined, "{\"a\":\"-x y\"}", "[./t.sh] [--a=-x y]");
    /* gt_run_build_argv checks too (executions stored before the check) */
    gt_run_options o = {0};
    cJSON *s = cJSON_Parse(dflt), *in = cJSON_Parse("{\"a\":\"-rf\"}");
    gt_strv argv = {0};
    gt_error_clear(&e);
    assert_int_equal(gt_run_build_argv(&o, s, in, NULL, NULL, &argv, &e), GT_EINVAL);
    assert_string_equal(e.field, "$.inputs.a");
    gt_strv_free(&argv);
    cJSON_Delete(in);
    cJSON_Delete(s);
}

static void test_ansible_extravars_file(void **state)
{
    (void)state;
    char dir[] = "/tmp/gt-ev-XXXXXX";
    assert_non_null(mkdtemp(dir));
    gt_run_options o = {.ansible_playbook = "ansible-playbook"};
    cJSON *s = cJSON_Parse("{\"type\":\"ansible-playbook\",\"playbooks\":[\"a.yml\"],"
                           "\"inventory\":\"hosts\",\"extra_vars\":{\"x\":1,\"y\":2}}");
    cJSON *in = cJSON_Parse("{\"y\":3,\"name\":\"{{ lookup('pipe','id') }}\"}");
    gt_strv argv = {0};
    gt_error e = {0};
    assert_int_equal(gt_run_build_argv(&o, s, in, NULL, dir, &argv, &e), GT_OK);
    char *got = joined(&argv);
    /* the service's own vars as before; the inputs only in the file, given last */
    char *want = gt_xasprintf("[ansible-playbook] [a.yml] [-i] [hosts] [--extra-vars] "
                              "[{\"x\":1,\"y\":2}] [--extra-vars] [@%s/extra-vars.yml]", dir);
    assert_string_equal(got, want);
    assert_null(strstr(got, "lookup"));
    char *path = gt_path_join(dir, "extra-vars.yml"), *text = NULL;
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(gt_read_file(path, 4096, &text, NULL, NULL), GT_OK);
    assert_string_equal(text, "---\n!unsafe \"y\": 3\n"
                              "!unsafe \"name\": !unsafe \"{{ lookup('pipe','id') }}\"\n...\n");
    free(text);
    free(path);
    free(want);
    free(got);
    gt_strv_free(&argv);
    /* no scratch directory: refused, not written somewhere else */
    gt_error_clear(&e);
    assert_int_equal(gt_run_build_argv(&o, s, in, NULL, NULL, &argv, &e), GT_EIO);
    gt_strv_free(&argv);
    cJSON_Delete(in);
    cJSON_Delete(s);
    gt_rm_rf(dir, NULL);
}

static void test_path_inside(void **state)
{
    (void)state;
    char dir[] = "/tmp/gt-path-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char *cmd = gt_xasprintf(
        "cd %s && mkdir -p co/sub co/d && echo x > co/f && echo s > secret && "
        "ln -s ../secret co/out && ln -s %s/secret co/abs && ln -s f co/in && "
        "ln -s sub co/sub_link && ln -s nowhere co/dangling && ln -s .. co/sub/up && "
        "mkfifo co/fifo && ln -s ../f co/sub/f2", dir, dir);
    sh(cmd);
    free(cmd);
    char *root = gt_path_join(dir, "co");
    struct {
        const char *base, *rel;
        gt_path_kind kind;
        gt_err want;
        const char *msg;
    } cases[] = {
        {"", "f", GT_PATH_FILE, GT_OK, NULL},
        {"", "in", GT_PATH_FILE, GT_OK, NULL},
        {"sub", "f2", GT_PATH_FILE, GT_OK, NULL},     /* a link to elsewhere in the checkout */
        {"", "sub", GT_PATH_DIR, GT_OK, NULL},
        {"", "sub_link", GT_PATH_DIR, GT_OK, NULL},
        {"", "", GT_PATH_DIR, GT_OK, NULL},
        {"", "sub", GT_PATH_ANY, GT_OK, NULL},
        {"", "out", GT_PATH_FILE, GT_EPERM, "\"out\" points outside the repository"},
        {"", "abs", GT_PATH_FILE, GT_EPERM, "\"abs\" points outside the repository"},
        {"sub", "up/../secret", GT_PATH_ANY, GT_EPERM, "outside the repository"},
        {"", "dangling", GT_PATH_FILE, GT_ENOTFOUND, "symbolic link to nothing"},
        {"", "missing", GT_PATH_FILE, GT_ENOTFOUND, "not found"},
        {"", "sub", GT_PATH_FILE, GT_EPERM, "not a regular file"},
        {"", "f", GT_PATH_DIR, GT_EPERM, "not a directory"},
        {"", "fifo", GT_PATH_ANY, GT_EPERM, "neither a file nor a directory"},
        {"", "fifo", GT_PATH_FILE, GT_EPERM, "not a regular file"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *base = gt_path_join(root, cases[i].base);
        char *out = NULL;
        gt_error e = {0};
        gt_err rc = gt_run_path_inside(root, base, cases[i].rel, cases[i].kind, "thing", &out, &e);
        if (rc != cases[i].want)
            fail_msg("%s/%s: %d (%s), want %d", cases[i].base, cases[i].rel, rc, e.message,
                     cases[i].want);
        if (cases[i].msg && strstr(e.message, cases[i].msg) == NULL)
            fail_msg("%s: message \"%s\" lacks \"%s\"", cases[i].rel, e.message, cases[i].msg);
        /* a refusal never says where a link leads */
        if (rc != GT_OK && !strstr(cases[i].rel, "secret") && strstr(e.message, "secret"))
            fail_msg("%s: message names the target: %s", cases[i].rel, e.message);
        assert_true((rc == GT_OK) == (out != NULL));
        free(out);
        free(base);
    }
    free(root);
    gt_rm_rf(dir, NULL);
}

int main(void)
{
    gt_log_setup(NULL, GT_LOG_ERROR, false, "test");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_argv),
        cmocka_unit_test(test_urls),
        cmocka_unit_test(test_checkout),
        cmocka_unit_test(test_input_names),
        cmocka_unit_test(test_ansible_reserved_names),
        cmocka_unit_test(test_values_never_options),
        cmocka_unit_test(test_ansible_extravars_file),
        cmocka_unit_test(test_path_inside),
    };
    return cmocka_run_group_tests_name("run", tests, NULL, NULL);
}
