/* Tests for common/sandbox.c and what feeds it: the bubblewrap command line (layout,
 * order, the environment kept out of argv), what a sandbox shows, the [runner] keys,
 * a service's "limits" and the reasons a limit hit is given. Running sandboxes is
 * exec_test.c's job. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "exec.h"
#include "json.h"
#include "model/model.h"
#include "sandbox.h"
#include "util.h"

static bool sandbox_ok(void)
{
    gt_error err = {0};
    if (gt_sandbox_check(&err) == GT_OK)
        return true;
    print_message("SKIPPED: %s\n", err.message);
    return false;
}

/* Index of the first argv[i..] == a (and argv[i+1] == b when b), or -1. */
static long find(const gt_strv *v, size_t from, const char *a, const char *b)
{
    for (size_t i = from; i < v->n; i++)
        if (strcmp(v->v[i], a) == 0 && (b == NULL || (i + 1 < v->n && strcmp(v->v[i + 1], b) == 0)))
            return (long)i;
    return -1;
}

static bool has(char *const *v, const char *s)
{
    for (; v && *v; v++)
        if (strcmp(*v, s) == 0)
            return true;
    return false;
}

static void test_command_line(void **state)
{
    (void)state;
    if (!sandbox_ok())
        skip();
    char *rw[] = {"/srv/work/runs/abc", NULL};
    char *ro[] = {"/srv/work/venvs/0123", NULL};
    gt_sandbox sb = {.writable = rw, .readonly = ro, .tmpfs_size = 64 << 20};
    char *const cmd[] = {"/usr/bin/python3", "main.py", "--name=x", NULL};
    char *const env[] = {"PATH=/usr/bin:/bin", "API_TOKEN=s3cr3t", "HOME=/root/elsewhere",
                         "TMPDIR=/var/tmp/x", "LD_PRELOAD=/srv/evil.so", "GCONV_PATH=/x", NULL};
    gt_strv argv = {0}, benv = {0};
    gt_error err = {0};
    assert_int_equal(gt_sandbox_command(&sb, "/srv/work/runs/abc/src", 16, 3, cmd, env, &argv,
                                        &benv, &err),
                     GT_OK);
    for (size_t i = 0; i < argv.n; i++)
        assert_null(strstr(argv.v[i], "s3cr3t"));
    /* namespaces, no capabilities, life bound to ours */
    static const char *const flags[] = {"--unshare-user", "--unshare-pid", "--unshare-ipc",
                                        "--unshare-uts", "--die-with-parent", "--new-session",
                                        "--disable-userns"};
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++)
        assert_true(find(&argv, 0, flags[i], NULL) > 0);
    assert_int_equal(find(&argv, 0, "--unshare-net", NULL), -1);
    assert_true(find(&argv, 0, "--cap-drop", "ALL") > 0);
    assert_int_equal(find(&argv, 0, "--clearenv", NULL), -1);
    /* the layout, in order: tmpfs, /usr, /etc parts, the caller's binds, then ro / */
    long tmp = find(&argv, 0, "--tmpfs", "/tmp");
    long home = find(&argv, 0, "--tmpfs", gt_sandbox_home());
    long usr = find(&argv, 0, "--ro-bind", "/usr");
    long venv = find(&argv, 0, "--ro-bind", ro[0]);
    long work = find(&argv, 0, "--bind", rw[0]);
    long rootro = find(&argv, 0, "--remount-ro", "/");
    assert_true(tmp > 0 && home > 0 && usr > 0 && venv > 0 && work > 0 && rootro > 0);
    assert_true(tmp < usr && home < usr && usr < venv && venv < rootro && work < rootro);
    assert_string_equal(argv.v[venv + 2], ro[0]);
    assert_string_equal(argv.v[work + 2], rw[0]);
    assert_string_equal(argv.v[tmp - 1], "67108864"); /* --size (64 MiB) before --tmpfs */
    assert_true(find(&argv, 0, "--ro-bind-try", "/etc/passwd") > 0);
    assert_int_equal(find(&argv, 0, "--ro-bind-try", "/etc/shadow"), -1);
    assert_int_equal(find(&argv, 0, "--ro-bind", "/etc"), -1);
    assert_true(find(&argv, 0, "--chdir", "/srv/work/runs/abc/src") > 0);
    assert_true(find(&argv, 0, "--json-status-fd", "3") > 0);
    /* loader variables act on bwrap: they reach the child through --setenv */
    long ld = find(&argv, 0, "--setenv", "LD_PRELOAD");
    assert_true(ld > 0);
    assert_string_equal(argv.v[ld + 2], "/srv/evil.so");
    assert_true(find(&argv, 0, "--setenv", "GCONV_PATH") > 0);
    long h = find(&argv, 0, "--setenv", "HOME");
    assert_true(h > 0);
    assert_string_equal(argv.v[h + 2], gt_sandbox_home());
    assert_true(find(&argv, 0, "--setenv", "TMPDIR") > 0);
    /* the command after "--", through prlimit for the process limit */
    long dash = find(&argv, 0, "--", NULL);
    assert_true(dash > rootro && dash > ld);
    assert_string_equal(argv.v[dash + 1], "/usr/bin/prlimit");
    assert_string_equal(argv.v[dash + 2], "--nproc=16");
    assert_string_equal(argv.v[dash + 3], "--");
    assert_string_equal(argv.v[dash + 4], "/usr/bin/python3");
    assert_string_equal(argv.v[dash + 6], "--name=x");
    assert_null(argv.v[argv.n]);
    /* bwrap's own environment: everything else, which it hands on unchanged */
    assert_true(has(benv.v, "API_TOKEN=s3cr3t"));
    assert_true(has(benv.v, "PATH=/usr/bin:/bin"));
    assert_false(has(benv.v, "LD_PRELOAD=/srv/evil.so"));
    assert_false(has(benv.v, "HOME=/root/elsewhere"));
    assert_false(has(benv.v, "TMPDIR=/var/tmp/x"));
    gt_strv_free(&argv);
    gt_strv_free(&benv);

    /* no process limit, no status fd: neither prlimit nor --json-status-fd */
    gt_sandbox bare = {0};
    assert_int_equal(gt_sandbox_command(&bare, NULL, 0, -1, cmd, env, &argv, &benv, &err), GT_OK);
    assert_int_equal(find(&argv, 0, "--json-status-fd", NULL), -1);
    assert_int_equal(find(&argv, 0, "/usr/bin/prlimit", NULL), -1);
    assert_int_equal(find(&argv, 0, "--size", NULL), -1);
    assert_string_equal(argv.v[find(&argv, 0, "--", NULL) + 1], "/usr/bin/python3");
    gt_strv_free(&argv);
    gt_strv_free(&benv);
}

static void touch(const char *path)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fclose(f);
}

static void test_sees(void **state)
{
    (void)state;
    char tmpl[] = "/tmp/gt-sandbox-test-XXXXXX";
    assert_non_null(mkdtemp(tmpl));
    char *src = gt_xasprintf("%s/work/runs/abc/src", tmpl);
    char *other = gt_xasprintf("%s/work/runs/abcd", tmpl);
    char *vbin = gt_xasprintf("%s/work/venvs/0123/bin", tmpl);
    assert_int_equal(gt_mkdir_p(src, 0700, NULL), GT_OK);
    assert_int_equal(gt_mkdir_p(other, 0700, NULL), GT_OK);
    assert_int_equal(gt_mkdir_p(vbin, 0700, NULL), GT_OK);
    char *run = gt_path_join(src, "run.sh"), *orun = gt_path_join(other, "run.sh");
    char *key = gt_xasprintf("%s/work/secrets.key", tmpl);
    char *evil = gt_path_join(src, "evil"), *py = gt_path_join(vbin, "python");
    touch(run);
    touch(orun);
    touch(key);
    assert_int_equal(symlink(key, evil), 0);
    assert_int_equal(symlink("/usr/bin/python3", py), 0);

    char *rw[] = {gt_xasprintf("%s/work/runs/abc", tmpl), NULL};
    char *ro[] = {gt_xasprintf("%s/work/venvs/0123", tmpl), NULL};
    gt_sandbox sb = {.writable = rw, .readonly = ro};
    assert_true(gt_sandbox_sees(&sb, NULL, "/bin/sh"));          /* through the symlink */
    assert_true(gt_sandbox_sees(&sb, NULL, "/usr/bin/env"));
    assert_false(gt_sandbox_sees(&sb, NULL, "/etc/passwd"));    /* not a program's place */
    assert_true(gt_sandbox_sees(&sb, NULL, run));
    assert_true(gt_sandbox_sees(&sb, src, "./run.sh"));
    assert_true(gt_sandbox_sees(&sb, NULL, py));                 /* venv -> /usr */
    assert_false(gt_sandbox_sees(&sb, NULL, key));
    assert_false(gt_sandbox_sees(&sb, NULL, orun));              /* another run's */
    assert_false(gt_sandbox_sees(&sb, src, "../../abcd/run.sh"));
    assert_false(gt_sandbox_sees(&sb, src, "./evil"));           /* a symlink out */
    assert_false(gt_sandbox_sees(&sb, src, "./missing"));
    gt_rm_rf(tmpl, NULL);
    free(rw[0]);
    free(ro[0]);
    free(py);
    free(evil);
    free(key);
    free(orun);
    free(run);
    free(vbin);
    free(other);
    free(src);
}

static void test_config_keys(void **state)
{
    (void)state;
    gt_config *cfg = gt_config_new();
    gt_error err = {0};
    /* defaults */
    assert_int_equal(cfg->runner.sandbox, GT_SANDBOX_BUBBLEWRAP);
    assert_int_equal(cfg->runner.memory_limit, INT64_C(2) << 30);
    assert_int_equal(cfg->runner.process_limit, 256);
    assert_int_equal(cfg->runner.cpu_time_limit, 3600 * 1000);
    assert_int_equal(cfg->runner.open_files_limit, 1024);
    const char *text = "[runner]\nsandbox = none\nmemory_limit = 256MiB\nprocess_limit = 16\n"
                       "cpu_time_limit = 90\nopen_files_limit = 64\n";
    assert_int_equal(gt_config_load_buffer(cfg, text, strlen(text), "t.conf", &err), GT_OK);
    assert_int_equal(gt_config_finish(cfg, &err), GT_OK);
    assert_int_equal(cfg->runner.sandbox, GT_SANDBOX_NONE);
    assert_int_equal(cfg->runner.memory_limit, 256 << 20);
    assert_int_equal(cfg->runner.process_limit, 16);
    assert_int_equal(cfg->runner.cpu_time_limit, 90 * 1000); /* plain numbers are seconds */
    assert_int_equal(cfg->runner.open_files_limit, 64);
    gt_config_free(&cfg);

    cfg = gt_config_new();
    text = "[runner]\nsandbox = firejail\n";
    assert_int_equal(gt_config_load_buffer(cfg, text, strlen(text), "t.conf", &err), GT_EINVAL);
    assert_non_null(strstr(err.message, "[runner] sandbox"));
    assert_non_null(strstr(err.message, "bubblewrap, none"));
    gt_config_free(&cfg);

    cfg = gt_config_new();
    gt_error_clear(&err);
    text = "[runner]\nmemory_limit = 4MiB\n";
    assert_int_equal(gt_config_load_buffer(cfg, text, strlen(text), "t.conf", &err), GT_OK);
    assert_int_equal(gt_config_finish(cfg, &err), GT_EINVAL);
    assert_non_null(strstr(err.message, "at least 16MiB"));
    gt_config_free(&cfg);

    int64_t v = 0;
    assert_int_equal(gt_config_parse_size("1GiB", "x", &v, NULL), GT_OK);
    assert_int_equal(v, INT64_C(1) << 30);
    assert_int_equal(gt_config_parse_duration("1h30m", 1000, "x", &v, NULL), GT_OK);
    assert_int_equal(v, 5400 * 1000);
    assert_int_equal(gt_config_parse_size("", "x", &v, NULL), GT_EINVAL);
    assert_int_equal(gt_config_parse_duration("soon", 1000, "x", &v, NULL), GT_EINVAL);
}

static gt_err limits_of(const char *json, gt_service_limits *out, gt_error *err)
{
    cJSON *doc = NULL;
    gt_err rc = gt_json_parse(json, strlen(json), "test", &doc, NULL);
    assert_int_equal(rc, GT_OK);
    gt_error_clear(err);
    rc = gt_service_limits_get(doc, out, err);
    cJSON_Delete(doc);
    return rc;
}

static void test_service_limits(void **state)
{
    (void)state;
    gt_service_limits l;
    gt_error err = {0};
    assert_int_equal(limits_of("{}", &l, &err), GT_OK);
    assert_true(l.memory == -1 && l.processes == -1 && l.cpu_ms == -1 && l.open_files == -1);
    assert_int_equal(limits_of("{\"limits\": {\"memory\": \"256MiB\", \"processes\": 16, "
                               "\"cpu_time\": \"10m\", \"open_files\": 0}}", &l, &err), GT_OK);
    assert_int_equal(l.memory, 256 << 20);
    assert_int_equal(l.processes, 16);
    assert_int_equal(l.cpu_ms, 600 * 1000);
    assert_int_equal(l.open_files, 0);
    assert_int_equal(limits_of("{\"limits\": {\"memory\": 268435456, \"cpu_time\": 30}}", &l,
                               &err), GT_OK);
    assert_int_equal(l.memory, 256 << 20);
    assert_int_equal(l.cpu_ms, 30 * 1000); /* numbers are seconds */
    assert_int_equal(l.processes, -1);

    static const struct { const char *json, *field; } bad[] = {
        {"{\"limits\": 5}", "$.limits"},
        {"{\"limits\": {\"disk\": 1}}", "$.limits"},
        {"{\"limits\": {\"memory\": \"lots\"}}", "$.limits.memory"},
        {"{\"limits\": {\"memory\": \"1MiB\"}}", "$.limits.memory"},
        {"{\"limits\": {\"processes\": -1}}", "$.limits.processes"},
        {"{\"limits\": {\"processes\": 1.5}}", "$.limits.processes"},
        {"{\"limits\": {\"processes\": \"16\"}}", "$.limits.processes"},
        {"{\"limits\": {\"cpu_time\": \"forever\"}}", "$.limits.cpu_time"},
        {"{\"limits\": {\"cpu_time\": true}}", "$.limits.cpu_time"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(limits_of(bad[i].json, &l, &err), GT_EINVAL);
        if (strncmp(err.field, bad[i].field, strlen(bad[i].field)) != 0)
            fail_msg("%s: field \"%s\", want \"%s\" (%s)", bad[i].json, err.field, bad[i].field,
                     err.message);
    }
}

static void test_limit_reasons(void **state)
{
    (void)state;
    gt_exec_limits lim = {.memory = 64 << 20, .processes = 16, .cpu_ms = 90 * 1000};
    gt_exec_result res = {.exit_code = 128 + SIGXCPU, .term_signal = SIGXCPU};
    char *why = gt_exec_limit_reason(&lim, &res);
    assert_string_equal(why, "killed by SIGXCPU: CPU time limit 90s reached");
    free(why);
    /* the hard limit's SIGKILL, recognized by the CPU time used */
    res = (gt_exec_result){.exit_code = 137, .term_signal = SIGKILL, .cpu_ms = 95000};
    why = gt_exec_limit_reason(&lim, &res);
    assert_string_equal(why, "killed by SIGKILL: CPU time limit 90s reached");
    free(why);
    res.cpu_ms = 100;
    assert_null(gt_exec_limit_reason(&lim, &res));
    res = (gt_exec_result){.exit_code = 1, .err = "Traceback...\nMemoryError\n"};
    why = gt_exec_limit_reason(&lim, &res);
    assert_string_equal(why, "out of memory: memory limit 64 MiB reached (an allocation failed)");
    free(why);
    res = (gt_exec_result){.exit_code = 2, .err = "sh: 1: Cannot fork\n"};
    why = gt_exec_limit_reason(&lim, &res);
    assert_string_equal(why, "process limit 16 reached (a fork or a new thread failed)");
    free(why);
    res = (gt_exec_result){.exit_code = 137, .term_signal = SIGKILL, .nproc_exceeded = true,
                           .nproc_seen = 40};
    why = gt_exec_limit_reason(&lim, &res);
    assert_string_equal(why, "process limit 16 reached (the run had 40 processes and was stopped)");
    free(why);
    /* no limit set, success, a timeout: no reason */
    gt_exec_limits none = {0};
    res = (gt_exec_result){.exit_code = 1, .err = "MemoryError"};
    assert_null(gt_exec_limit_reason(&none, &res));
    res = (gt_exec_result){.exit_code = 0, .err = "MemoryError"};
    assert_null(gt_exec_limit_reason(&lim, &res));
    res = (gt_exec_result){.exit_code = 143, .timed_out = true, .term_signal = SIGXCPU};
    assert_null(gt_exec_limit_reason(&lim, &res));
    assert_null(gt_exec_limit_reason(NULL, &res));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_command_line),
        cmocka_unit_test(test_sees),
        cmocka_unit_test(test_config_keys),
        cmocka_unit_test(test_service_limits),
        cmocka_unit_test(test_limit_reasons),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
