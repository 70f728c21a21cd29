/* Child process execution: capture, exit status, timeouts, cancellation, process
 * groups, descriptor hygiene, dying with the spawner, the bubblewrap sandbox and
 * resource limits. Time bounds are generous on purpose: these run on a
 * loaded two-core machine, so they only check that nothing waits for the long sleeps. */
#include <stdatomic.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "exec.h"
#include "sandbox.h"
#include "util.h"

/* Upper bound for anything that must not wait for a child's `sleep 100`. */
#define SLOW_MS 30000

static char *const test_env[] = {"PATH=/usr/bin:/bin", "LC_ALL=C", NULL};

/* Runs argv (file = argv[0]) with the spec given; returns gt_exec_run's code. */
static gt_err run_spec(gt_exec_spec *spec, gt_exec_result *res, gt_error *err)
{
    if (spec->file == NULL)
        spec->file = spec->argv[0];
    if (spec->envp == NULL)
        spec->envp = test_env;
    gt_error_clear(err);
    return gt_exec_run(spec, res, err);
}

static gt_err run_sh(const char *script, gt_exec_result *res)
{
    char *const argv[] = {"/bin/sh", "-c", (char *)script, NULL};
    gt_exec_spec spec = {.argv = argv};
    gt_error err;
    gt_err rc = run_spec(&spec, res, &err);
    if (rc != GT_OK)
        print_error("run_sh: %s\n", err.message);
    return rc;
}

static void test_capture_stdout_stderr(void **state)
{
    (void)state;
    gt_exec_result res;
    assert_int_equal(run_sh("echo out; echo err >&2; printf 'no newline'", &res), GT_OK);
    assert_string_equal(res.out, "out\nno newline");
    assert_int_equal(res.out_len, strlen("out\nno newline"));
    assert_string_equal(res.err, "err\n");
    assert_int_equal(res.exit_code, 0);
    assert_int_equal(res.term_signal, 0);
    assert_false(res.timed_out);
    assert_false(res.canceled);
    assert_false(res.out_truncated);
    assert_false(res.err_truncated);
    assert_true(res.pid > 0);
    assert_true(res.start_ms > 0);
    assert_true(res.end_ms >= res.start_ms);
    gt_exec_result_clear(&res);
    assert_null(res.out);

    /* No output at all is an empty string, not NULL. */
    assert_int_equal(run_sh("true", &res), GT_OK);
    assert_non_null(res.out);
    assert_non_null(res.err);
    assert_int_equal(res.out_len, 0);
    assert_string_equal(res.out, "");
    gt_exec_result_clear(&res);
}

static void test_exit_codes(void **state)
{
    (void)state;
    gt_exec_result res;
    assert_int_equal(run_sh("exit 3", &res), GT_OK);
    assert_int_equal(res.exit_code, 3);
    assert_int_equal(res.term_signal, 0);
    gt_exec_result_clear(&res);

    assert_int_equal(run_sh("exit 255", &res), GT_OK);
    assert_int_equal(res.exit_code, 255);
    gt_exec_result_clear(&res);

    char *const argv[] = {"false", NULL};
    gt_exec_spec spec = {.argv = argv};
    gt_error err;
    assert_int_equal(run_spec(&spec, &res, &err), GT_OK);
    assert_int_equal(res.exit_code, 1);
    gt_exec_result_clear(&res);

    /* Absurd limits saturate instead of overflowing. */
    char *const argv2[] = {"true", NULL};
    gt_exec_spec spec2 = {.argv = argv2, .timeout_ms = INT64_MAX, .kill_grace_ms = INT64_MAX};
    assert_int_equal(run_spec(&spec2, &res, &err), GT_OK);
    assert_int_equal(res.exit_code, 0);
    assert_false(res.timed_out);
    gt_exec_result_clear(&res);

    /* Nothing to run. */
    char *const none[] = {NULL};
    gt_exec_spec spec3 = {.argv = none, .file = "true"};
    assert_int_equal(run_spec(&spec3, &res, &err), GT_EINVAL);
    gt_exec_result_clear(&res);
}

static void test_killed_by_signal(void **state)
{
    (void)state;
    gt_exec_result res;
    assert_int_equal(run_sh("echo before; kill -KILL $$; echo after", &res), GT_OK);
    assert_string_equal(res.out, "before\n");
    assert_int_equal(res.exit_code, 137);
    assert_int_equal(res.term_signal, SIGKILL);
    assert_false(res.timed_out);
    gt_exec_result_clear(&res);
}

/* The child ignores SIGTERM: SIGKILL must follow after the grace period. */
static void test_timeout_term_ignored(void **state)
{
    (void)state;
    char *const argv[] = {"/bin/sh", "-c", "trap '' TERM; echo started; sleep 100", NULL};
    gt_exec_spec spec = {.argv = argv, .timeout_ms = 300, .kill_grace_ms = 300};
    gt_exec_result res;
    gt_error err;
    int64_t t0 = gt_mono_ms();
    assert_int_equal(run_spec(&spec, &res, &err), GT_OK);
    int64_t took = gt_mono_ms() - t0;
    assert_true(res.timed_out);
    assert_false(res.canceled);
    assert_int_equal(res.term_signal, SIGKILL);
    assert_int_equal(res.exit_code, 137);
    assert_string_equal(res.out, "started\n");
    assert_true(took >= 300);
    assert_true(took < SLOW_MS);
    gt_exec_result_clear(&res);
}

/* The child honours SIGTERM, even though this process ignores it: the disposition must
 * not be inherited. The grace period is long, so ending early proves TERM did it. */
static void test_timeout_term_honored_despite_parent_ignoring(void **state)
{
    (void)state;
    struct sigaction ign = {.sa_handler = SIG_IGN}, old;
    sigaction(SIGTERM, &ign, &old);
    char *const argv[] = {"/bin/sh", "-c", "sleep 100", NULL};
    gt_exec_spec spec = {.argv = argv, .timeout_ms = 200, .kill_grace_ms = 120000};
    gt_exec_result res;
    gt_error err;
    int64_t t0 = gt_mono_ms();
    gt_err rc = run_spec(&spec, &res, &err);
    int64_t took = gt_mono_ms() - t0;
    sigaction(SIGTERM, &old, NULL);
    assert_int_equal(rc, GT_OK);
    assert_true(res.timed_out);
    assert_int_equal(res.term_signal, SIGTERM);
    assert_int_equal(res.exit_code, 128 + SIGTERM);
    assert_true(took < SLOW_MS);
    gt_exec_result_clear(&res);
}

/* A stopped child still ends: SIGCONT follows SIGTERM. */
static void test_timeout_stopped_child(void **state)
{
    (void)state;
    char *const argv[] = {"/bin/sh", "-c", "kill -STOP $$; sleep 100", NULL};
    gt_exec_spec spec = {.argv = argv, .timeout_ms = 300, .kill_grace_ms = 120000};
    gt_exec_result res;
    gt_error err;
    int64_t t0 = gt_mono_ms();
    assert_int_equal(run_spec(&spec, &res, &err), GT_OK);
    assert_true(gt_mono_ms() - t0 < SLOW_MS);
    assert_true(res.timed_out);
    assert_int_equal(res.term_signal, SIGTERM);
    gt_exec_result_clear(&res);
}

static void test_signal_mask_and_dispositions_reset(void **state)
{
    (void)state;
    sigset_t block, old_mask;
    sigemptyset(&block);
    sigaddset(&block, SIGUSR1);
    sigaddset(&block, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &block, &old_mask);
    struct sigaction ign = {.sa_handler = SIG_IGN}, old_int;
    sigaction(SIGINT, &ign, &old_int);

    char *const argv[] = {"grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status", NULL};
    gt_exec_spec spec = {.argv = argv};
    gt_exec_result res;
    gt_error err;
    gt_err rc = run_spec(&spec, &res, &err);
    sigaction(SIGINT, &old_int, NULL);
    pthread_sigmask(SIG_SETMASK, &old_mask, NULL);
    assert_int_equal(rc, GT_OK);
    unsigned long long blk = 1, ignored = 1;
    assert_int_equal(sscanf(res.out, "SigBlk: %llx SigIgn: %llx", &blk, &ignored), 2);
    gt_exec_result_clear(&res);
    assert_int_equal(blk, 0);
    /* Signals 1-31 only: glibc's spawn sets its two internal real-time signals (32, 33)
     * to SIG_IGN in every child, on purpose. */
    assert_int_equal(ignored & 0x7fffffffULL, 0);
}

/* The child is its own group leader: pgid == pid. */
static void test_own_process_group(void **state)
{
    (void)state;
    char *const argv[] = {"/bin/sh", "-c", "echo $$; cut -d' ' -f5 /proc/$$/stat", NULL};
    gt_exec_spec spec = {.argv = argv};
    gt_exec_result res;
    gt_error err;
    assert_int_equal(run_spec(&spec, &res, &err), GT_OK);
    long pid = 0, pgid = 0;
    assert_int_equal(sscanf(res.out, "%ld %ld", &pid, &pgid), 2);
    assert_int_equal(pid, res.pid);
    assert_int_equal(pgid, res.pid);
    assert_int_not_equal(pgid, getpgrp());
    gt_exec_result_clear(&res);
}

static char *make_tmpdir(void)
{
    char tmpl[] = "/tmp/gt-exec-test-XXXXXX";
    assert_non_null(mkdtemp(tmpl));
    return gt_xstrdup(tmpl);
}

static void write_file(const char *path, const char *text, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    chmod(path, mode);
}

/* A background grandchild keeps the pipes open; the run ends when the child does. */
static void test_grandchild_holding_pipe(void **state)
{
    (void)state;
    gt_exec_result res;
    int64_t t0 = gt_mono_ms();
    assert_int_equal(run_sh("sleep 100 & echo started", &res), GT_OK);
    assert_true(gt_mono_ms() - t0 < SLOW_MS);
    assert_string_equal(res.out, "started\n");
    assert_int_equal(res.exit_code, 0);
    gt_exec_result_clear(&res);
}

/* A grandchild that left the group (setsid) cannot be killed with it: the drain after
 * the child exits is bounded. */
static void test_grandchild_escaped_group(void **state)
{
    (void)state;
    char *dir = make_tmpdir();
    char *pidfile = gt_path_join(dir, "pid");
    /* The grandchild records its pid once it has left the group; the child waits for
     * that, so it cannot be killed with the group before it escaped. */
    char *script = gt_xasprintf("setsid sh -c 'echo $$ > %s.tmp; mv %s.tmp %s; exec sleep 40' & "
                                "while [ ! -s %s ]; do sleep 0.05; done; echo started",
                                pidfile, pidfile, pidfile, pidfile);
    gt_exec_result res;
    int64_t t0 = gt_mono_ms();
    assert_int_equal(run_sh(script, &res), GT_OK);
    int64_t took = gt_mono_ms() - t0;
    assert_true(took < SLOW_MS);
    assert_string_equal(res.out, "started\n");
    gt_exec_result_clear(&res);

    char *text = NULL;
    assert_int_equal(gt_read_file(pidfile, 64, &text, NULL, NULL), GT_OK);
    long pid = strtol(text, NULL, 10);
    assert_true(pid > 1);
    kill((pid_t)pid, SIGKILL);
    free(text);
    unlink(pidfile);
    rmdir(dir);
    free(pidfile);
    free(script);
    free(dir);
}

static long max_rss_kb(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss;
}

static void test_output_flood_truncated(void **state)
{
    (void)state;
    char *const argv[] = {"head", "-c", "50000000", "/dev/zero", NULL};
    gt_exec_spec spec = {.argv = argv, .output_cap = 1024 * 1024};
    gt_exec_result res;
    gt_error err;
    long rss0 = max_rss_kb();
    assert_int_equal(run_spec(&spec, &res, &err), GT_OK);
    long rss1 = max_rss_kb();
    assert_int_equal(res.exit_code, 0); /* read to the end: head was never blocked */
    assert_int_equal(res.out_len, 1024 * 1024);
    assert_true(res.out_truncated);
    assert_false(res.err_truncated);
    assert_int_equal(res.err_len, 0);
    assert_int_equal(res.out[res.out_len], '\0');
    for (size_t i = 0; i < res.out_len; i += 4096)
        assert_int_equal(res.out[i], 0);
    /* 50 MB went through; far less may stay (sanitizer overhead included). */
    assert_true(rss1 - rss0 < 20 * 1024);
    gt_exec_result_clear(&res);
}

static void test_small_cap_both_streams(void **state)
{
    (void)state;
    char *const argv[] = {"/bin/sh", "-c", "echo 0123456789; echo abcdefghij >&2; echo ok", NULL};
    gt_exec_spec spec = {.argv = argv, .output_cap = 5};
    gt_exec_result res;
    gt_error err;
    assert_int_equal(run_spec(&spec, &res, &err), GT_OK);
    assert_string_equal(res.out, "01234");
    assert_true(res.out_truncated);
    assert_string_equal(res.err, "abcde");
    assert_true(res.err_truncated);
    gt_exec_result_clear(&res);

    /* Exactly at the cap is not truncated. */
    char *const argv2[] = {"printf", "12345", NULL};
    gt_exec_spec spec2 = {.argv = argv2, .output_cap = 5};
    assert_int_equal(run_spec(&spec2, &res, &err), GT_OK);
    assert_string_equal(res.out, "12345");
    assert_false(res.out_truncated);
    gt_exec_result_clear(&res);
}

static void test_stdin_data(void **state)
{
    (void)state;
    /* Larger than a pipe buffer, so writing and reading must interleave. */
    size_t n = 1024 * 1024 + 7;
    char *in = gt_xmalloc(n + 1);
    for (size_t i = 0; i < n; i++)
        in[i] = (char)('a' + i % 26);
    in[n] = '\0';
    char *const argv[] = {"cat", NULL};
    gt_exec_spec spec = {.argv = argv, .stdin_data = in, .output_cap = 2 * n};
    gt_exec_result res;
    gt_error err;
    assert_int_equal(run_spec(&spec, &res, &err), GT_OK);
    assert_int_equal(res.out_len, n);
    assert_memory_equal(res.out, in, n);
    gt_exec_result_clear(&res);

    /* A child that does not read its stdin: no SIGPIPE for us. */
    char *const argv2[] = {"true", NULL};
    gt_exec_spec spec2 = {.argv = argv2, .stdin_data = in};
    assert_int_equal(run_spec(&spec2, &res, &err), GT_OK);
    assert_int_equal(res.exit_code, 0);
    gt_exec_result_clear(&res);
    free(in);

    /* Empty data: immediate EOF. */
    gt_exec_spec spec3 = {.argv = argv, .stdin_data = ""};
    assert_int_equal(run_spec(&spec3, &res, &err), GT_OK);
    assert_string_equal(res.out, "");
    gt_exec_result_clear(&res);

    /* No data: /dev/null. */
    char *const argv4[] = {"readlink", "/proc/self/fd/0", NULL};
    gt_exec_spec spec4 = {.argv = argv4};
    assert_int_equal(run_spec(&spec4, &res, &err), GT_OK);
    assert_string_equal(res.out, "/dev/null\n");
    gt_exec_result_clear(&res);
}

static void test_cwd(void **state)
{
    (void)state;
    char *dir = make_tmpdir();
    char real[PATH_MAX];
    assert_non_null(realpath(dir, real));
    char *const argv[] = {"pwd", NULL};
    gt_exec_spec spec = {.argv = argv, .cwd = dir};
    gt_exec_result res;
    gt_error err;
    assert_int_equal(run_spec(&spec, &res, &err), GT_OK);
    char *want = gt_xasprintf("%s\n", real);
    assert_string_equal(res.out, want);
    free(want);
    gt_exec_result_clear(&res);

    /* A relative program path is relative to the child's working directory. */
    char *script = gt_path_join(dir, "hello.sh");
    write_file(script, "#!/bin/sh\necho hello from \"$PWD\"\n", 0755);
    char *const argv2[] = {"./hello.sh", NULL};
    gt_exec_spec spec2 = {.argv = argv2, .cwd = dir};
    assert_int_equal(run_spec(&spec2, &res, &err), GT_OK);
    assert_int_equal(strncmp(res.out, "hello from ", 11), 0);
    gt_exec_result_clear(&res);

    unlink(script);
    free(script);
    rmdir(dir);
    free(dir);
}

static void test_missing_program(void **state)
{
    (void)state;
    gt_exec_result res;
    gt_error err;
    char *const argv[] = {"gt-no-such-program", NULL};
    gt_exec_spec spec = {.argv = argv};
    assert_int_equal(run_spec(&spec, &res, &err), GT_ENOTFOUND);
    assert_int_equal(err.code, GT_ENOTFOUND);
    assert_string_equal(err.message, "program \"gt-no-such-program\" not found in PATH");
    assert_null(res.out);
    assert_int_equal(res.pid, 0);
    gt_exec_result_clear(&res);

    char *const argv2[] = {"/nonexistent/dir/prog", NULL};
    gt_exec_spec spec2 = {.argv = argv2};
    assert_int_equal(run_spec(&spec2, &res, &err), GT_ENOTFOUND);
    assert_non_null(strstr(err.message, "/nonexistent/dir/prog"));
    gt_exec_result_clear(&res);
}

/* PATH comes from the child's environment, not ours. */
static void test_path_from_envp(void **state)
{
    (void)state;
    gt_exec_result res;
    gt_error err;
    char *const argv[] = {"env", NULL};
    char *const env_bad[] = {"PATH=/nonexistent:relative/bin", NULL};
    gt_exec_spec spec = {.argv = argv, .envp = env_bad};
    assert_int_equal(run_spec(&spec, &res, &err), GT_ENOTFOUND);
    assert_non_null(strstr(err.message, "not found in PATH"));
    gt_exec_result_clear(&res);

    char *const env_good[] = {"PATH=/nonexistent:/usr/bin", NULL};
    gt_exec_spec spec2 = {.argv = argv, .envp = env_good};
    assert_int_equal(run_spec(&spec2, &res, &err), GT_OK);
    assert_string_equal(res.out, "PATH=/nonexistent:/usr/bin\n");
    gt_exec_result_clear(&res);

    char *p = gt_exec_which("sh", "/nonexistent::/bin");
    assert_non_null(p);
    assert_string_equal(p, "/bin/sh");
    free(p);
    assert_null(gt_exec_which("sh", "bin:usr/bin:"));
    assert_null(gt_exec_which("gt-no-such-program", "/bin:/usr/bin"));
    assert_null(gt_exec_which("", "/bin"));
    p = gt_exec_which("/bin/sh", "/nonexistent");
    assert_string_equal(p, "/bin/sh");
    free(p);
    p = gt_exec_which("sh", NULL); /* the process's PATH */
    assert_non_null(p);
    free(p);
}

static void test_missing_cwd(void **state)
{
    (void)state;
    gt_exec_result res;
    gt_error err;
    char *const argv[] = {"true", NULL};
    gt_exec_spec spec = {.argv = argv, .cwd = "/nonexistent/gt-workdir"};
    assert_int_equal(run_spec(&spec, &res, &err), GT_ENOTFOUND);
    assert_non_null(strstr(err.message, "/nonexistent/gt-workdir"));
    gt_exec_result_clear(&res);

    gt_exec_spec spec2 = {.argv = argv, .cwd = "/etc/hostname"};
    assert_int_equal(run_spec(&spec2, &res, &err), GT_ENOTFOUND);
    assert_non_null(strstr(err.message, "not a directory"));
    gt_exec_result_clear(&res);
}

static void test_not_executable(void **state)
{
    (void)state;
    char *dir = make_tmpdir();
    char *file = gt_path_join(dir, "prog");
    write_file(file, "#!/bin/sh\necho hi\n", 0644);
    gt_exec_result res;
    gt_error err;

    char *const argv[] = {file, NULL};
    gt_exec_spec spec = {.argv = argv};
    assert_int_equal(run_spec(&spec, &res, &err), GT_EPERM);
    assert_non_null(strstr(err.message, file));
    gt_exec_result_clear(&res);

    /* Found in PATH but not executable. */
    char *path_var = gt_xasprintf("PATH=%s:/usr/bin", dir);
    char *const env[] = {path_var, NULL};
    char *const argv2[] = {"prog", NULL};
    gt_exec_spec spec2 = {.argv = argv2, .envp = env};
    assert_int_equal(run_spec(&spec2, &res, &err), GT_EPERM);
    assert_non_null(strstr(err.message, "not executable"));
    gt_exec_result_clear(&res);

    /* A directory is not a program. */
    char *const argv3[] = {dir, NULL};
    gt_exec_spec spec3 = {.argv = argv3};
    assert_int_equal(run_spec(&spec3, &res, &err), GT_EPERM);
    gt_exec_result_clear(&res);

    /* Executable bit but no interpreter line and not ELF: exec itself refuses. */
    write_file(file, "echo hi\n", 0755);
    assert_int_equal(run_spec(&spec, &res, &err), GT_EPERM);
    gt_exec_result_clear(&res);

    free(path_var);
    unlink(file);
    free(file);
    rmdir(dir);
    free(dir);
}

static void test_env_exact(void **state)
{
    (void)state;
    char *const argv[] = {"/usr/bin/env", NULL};
    char *const env[] = {"A=1", "B=two words", "EMPTY=", NULL};
    gt_exec_spec spec = {.argv = argv, .envp = env};
    gt_exec_result res;
    gt_error err;
    assert_int_equal(run_spec(&spec, &res, &err), GT_OK);
    assert_string_equal(res.out, "A=1\nB=two words\nEMPTY=\n");
    gt_exec_result_clear(&res);

    char *const none[] = {NULL};
    gt_exec_spec spec2 = {.argv = argv, .envp = none};
    assert_int_equal(run_spec(&spec2, &res, &err), GT_OK);
    assert_string_equal(res.out, "");
    gt_exec_result_clear(&res);
}

typedef struct cancel_arg {
    atomic_int *flag;
    int delay_ms;
} cancel_arg;

static void *cancel_later(void *p)
{
    cancel_arg *a = p;
    struct timespec ts = {a->delay_ms / 1000, (long)(a->delay_ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
    *a->flag = 1;
    return NULL;
}

static void test_cancel_from_thread(void **state)
{
    (void)state;
    atomic_int flag = 0;
    cancel_arg a = {&flag, 300};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, cancel_later, &a), 0);
    char *const argv[] = {"/bin/sh", "-c", "echo started; sleep 100", NULL};
    gt_exec_spec spec = {.argv = argv, .cancel = &flag, .kill_grace_ms = 120000};
    gt_exec_result res;
    gt_error err;
    int64_t t0 = gt_mono_ms();
    assert_int_equal(run_spec(&spec, &res, &err), GT_OK);
    assert_true(gt_mono_ms() - t0 < SLOW_MS);
    pthread_join(th, NULL);
    assert_true(res.canceled);
    assert_false(res.timed_out);
    assert_int_equal(res.term_signal, SIGTERM);
    assert_string_equal(res.out, "started\n");
    gt_exec_result_clear(&res);

    /* Already set before the start: ends right away, with a short timeout not firing. */
    flag = 1;
    gt_exec_spec spec2 = {.argv = argv, .cancel = &flag, .timeout_ms = 600000,
                          .kill_grace_ms = 100};
    assert_int_equal(run_spec(&spec2, &res, &err), GT_OK);
    assert_true(res.canceled);
    assert_false(res.timed_out);
    gt_exec_result_clear(&res);
}

/* Descriptors opened without O_CLOEXEC must not reach the child. */
static void test_no_fd_leak_into_child(void **state)
{
    (void)state;
    int extra[3];
    extra[0] = open("/dev/null", O_RDONLY); /* deliberately inheritable */
    int p[2];
    assert_int_equal(pipe(p), 0);
    extra[1] = p[0];
    extra[2] = p[1];
    assert_true(extra[0] >= 0);

    char *const argv[] = {"ls", "-l", "/proc/self/fd", NULL};
    gt_exec_spec spec = {.argv = argv};
    gt_exec_result res;
    gt_error err;
    assert_int_equal(run_spec(&spec, &res, &err), GT_OK);
    int seen = 0;
    for (char *line = strtok(res.out, "\n"); line; line = strtok(NULL, "\n")) {
        char *arrow = strstr(line, " -> ");
        if (arrow == NULL)
            continue; /* "total 0" */
        char *sp = arrow;
        while (sp > line && sp[-1] != ' ')
            sp--;
        long fd = strtol(sp, NULL, 10);
        seen++;
        if (fd >= 3 && strncmp(arrow + 4, "/proc/", 6) != 0) /* ls's own directory */
            fail_msg("descriptor leaked into the child: %s", line);
    }
    assert_true(seen >= 3);
    gt_exec_result_clear(&res);
    for (int i = 0; i < 3; i++)
        close(extra[i]);
}

static int count_fds(void)
{
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    assert_non_null(d);
    while (readdir(d) != NULL)
        n++;
    closedir(d);
    return n;
}

static void test_no_fd_leak_in_parent(void **state)
{
    (void)state;
    int before = count_fds();
    char *const argv[] = {"true", NULL};
    char *const argv_missing[] = {"gt-no-such-program", NULL};
    for (int i = 0; i < 200; i++) {
        gt_exec_spec spec = {.argv = i % 10 == 9 ? argv_missing : argv,
                             .stdin_data = i % 2 ? "x" : NULL};
        gt_exec_result res;
        gt_error err;
        run_spec(&spec, &res, &err);
        gt_exec_result_clear(&res);
    }
    assert_int_equal(count_fds(), before);
}

static void *run_many(void *p)
{
    intptr_t id = (intptr_t)p;
    for (int i = 0; i < 15; i++) {
        char *script = gt_xasprintf("echo t%ld-%d; echo e >&2; exit %d", (long)id, i, i);
        char *const argv[] = {"/bin/sh", "-c", script, NULL};
        gt_exec_spec spec = {.argv = argv, .envp = test_env, .file = "/bin/sh"};
        gt_exec_result res;
        gt_error err = {0};
        char *want = gt_xasprintf("t%ld-%d\n", (long)id, i);
        bool ok = gt_exec_run(&spec, &res, &err) == GT_OK && strcmp(res.out, want) == 0 &&
                  strcmp(res.err, "e\n") == 0 && res.exit_code == i;
        gt_exec_result_clear(&res);
        free(want);
        free(script);
        if (!ok)
            return (void *)1;
    }
    return NULL;
}

/* Several threads at once: no shared state, no child stolen by another thread. */
static void test_concurrent_threads(void **state)
{
    (void)state;
    pthread_t th[4];
    for (intptr_t i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&th[i], NULL, run_many, (void *)i), 0);
    for (int i = 0; i < 4; i++) {
        void *r = NULL;
        pthread_join(th[i], &r);
        assert_null(r);
    }
}

/* ---------- dying with the spawner, sandbox, limits ---------- */

/* Processes alive (not zombies) whose argv is exactly {"sleep", arg}. */
static int count_sleeps(const char *arg)
{
    int n = 0;
    DIR *d = opendir("/proc");
    assert_non_null(d);
    for (struct dirent *de; (de = readdir(d)) != NULL;) {
        if (de->d_name[0] < '1' || de->d_name[0] > '9')
            continue;
        char path[300], buf[256];
        snprintf(path, sizeof path, "/proc/%.20s/cmdline", de->d_name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue;
        ssize_t len = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (len <= 0)
            continue; /* zombies have an empty cmdline */
        buf[len] = '\0';
        if (strcmp(buf, "sleep") != 0 || (size_t)len < 7 || strcmp(buf + 6, arg) != 0)
            continue;
        snprintf(path, sizeof path, "/proc/%.20s/stat", de->d_name);
        char *st = NULL;
        if (gt_read_file(path, 4096, &st, NULL, NULL) == GT_OK) {
            const char *rp = strrchr(st, ')');
            if (rp && rp[1] == ' ' && rp[2] != 'Z' && rp[2] != 'X')
                n++;
        }
        free(st);
    }
    closedir(d);
    return n;
}

/* Polls (generously: the machine is shared) until count_sleeps(arg) == want. */
static int wait_sleeps(const char *arg, int want)
{
    int n = -1;
    for (int i = 0; i < 300 && (n = count_sleeps(arg)) != want; i++)
        usleep(50 * 1000);
    return n;
}

static bool sandbox_ok(void)
{
    gt_error err = {0};
    if (gt_sandbox_check(&err) == GT_OK)
        return true;
    print_message("sandbox unavailable here: %s\n", err.message);
    return false;
}

#define NEED_SANDBOX()                                                           \
    do {                                                                         \
        if (!sandbox_ok()) {                                                     \
            print_message("SKIPPED: bubblewrap cannot run on this machine\n");   \
            skip();                                                              \
        }                                                                        \
    } while (0)

/* A helper process runs script (through gt_exec_run, sandboxed or not) and is SIGKILLed
 * once `sleep <tag>.1` and `sleep <tag>.2` run; then neither may be left. */
static void dies_with_spawner(const gt_sandbox *sb, const char *tag)
{
    char a1[32], a2[32];
    snprintf(a1, sizeof a1, "%s.1", tag);
    snprintf(a2, sizeof a2, "%s.2", tag);
    char *script = gt_xasprintf("sleep %s & sleep %s", a1, a2);
    pid_t helper = fork();
    assert_true(helper >= 0);
    if (helper == 0) {
        char *const argv[] = {"/bin/sh", "-c", script, NULL};
        gt_exec_spec spec = {.file = argv[0], .argv = argv, .envp = test_env, .sandbox = sb};
        gt_exec_result res;
        gt_exec_run(&spec, &res, NULL);
        _exit(3);
    }
    assert_int_equal(wait_sleeps(a1, 1), 1);
    assert_int_equal(wait_sleeps(a2, 1), 1);
    kill(helper, SIGKILL);
    int status = 0;
    assert_int_equal(waitpid(helper, &status, 0), helper);
    assert_true(WIFSIGNALED(status));
    /* the child (sleep <tag>.2 is sh's exec'd last command or its child) and the
     * background grandchild are both gone */
    assert_int_equal(wait_sleeps(a1, 0), 0);
    assert_int_equal(wait_sleeps(a2, 0), 0);
    free(script);
}

static void test_dies_with_spawner(void **state)
{
    (void)state;
    dies_with_spawner(NULL, "9131");
}

static void test_sandbox_dies_with_spawner(void **state)
{
    (void)state;
    NEED_SANDBOX();
    gt_sandbox sb = {0};
    dies_with_spawner(&sb, "9132");
}

/* Runs script in a sandbox that shows writable (may be NULL). */
static gt_err run_boxed(const char *script, const char *writable, char *const *env,
                        const gt_exec_limits *lim, gt_exec_result *res, gt_error *err)
{
    char *const argv[] = {"/bin/sh", "-c", (char *)script, NULL};
    char *rw[] = {(char *)writable, NULL};
    gt_sandbox sb = {.writable = writable ? rw : NULL};
    gt_exec_spec spec = {.argv = argv, .envp = env, .sandbox = &sb, .limits = lim,
                         .cwd = writable, .timeout_ms = 120000};
    return run_spec(&spec, res, err);
}

static void test_sandbox_sees_only_its_binds(void **state)
{
    (void)state;
    NEED_SANDBOX();
    char *outside = make_tmpdir();
    char *inside = make_tmpdir();
    char *key = gt_path_join(outside, "secrets.key");
    write_file(key, "top secret\n", 0600);
    char *script = gt_xasprintf(
        "cat %s 2>/dev/null && echo LEAK-file; ls %s 2>/dev/null && echo LEAK-dir; "
        "echo hello > %s/out.txt && echo wrote; touch /usr/x 2>/dev/null && echo LEAK-usr; "
        "touch /x 2>/dev/null && echo LEAK-root; ls /etc/shadow 2>/dev/null && echo LEAK-shadow; "
        "touch \"$HOME/h\" \"$TMPDIR/t\" && echo home-tmp-ok; "
        "echo procs=$(ls /proc | grep -c '^[0-9]')",
        key, outside, inside);
    gt_exec_result res;
    gt_error err;
    assert_int_equal(run_boxed(script, inside, test_env, NULL, &res, &err), GT_OK);
    assert_null(strstr(res.out, "LEAK"));
    assert_non_null(strstr(res.out, "wrote\n"));
    assert_non_null(strstr(res.out, "home-tmp-ok\n"));
    /* bwrap's init, sh, ls and grep (and $(...)'s subshell): not the host's processes */
    const char *p = strstr(res.out, "procs=");
    assert_non_null(p);
    assert_true(strtol(p + 6, NULL, 10) <= 6);
    assert_int_equal(res.exit_code, 0);
    assert_true(res.sandboxed);
    char *out = gt_path_join(inside, "out.txt");
    assert_true(gt_file_exists(out));
    gt_exec_result_clear(&res);

    /* the host's HOME and /tmp are not the sandbox's */
    char *probe = gt_xasprintf("ls %s >/dev/null 2>&1 && echo LEAK-tmp; echo done", outside);
    assert_int_equal(run_boxed(probe, NULL, test_env, NULL, &res, &err), GT_OK);
    assert_string_equal(res.out, "done\n");
    gt_exec_result_clear(&res);

    gt_rm_rf(outside, NULL);
    gt_rm_rf(inside, NULL);
    free(probe);
    free(out);
    free(script);
    free(key);
    free(inside);
    free(outside);
}

static void test_sandbox_cannot_signal_parent(void **state)
{
    (void)state;
    NEED_SANDBOX();
    char *script = gt_xasprintf("kill -9 $PPID; kill -9 %ld 2>/dev/null || echo no-such; "
                                "echo still-here",
                                (long)getpid());
    gt_exec_result res;
    gt_error err;
    assert_int_equal(run_boxed(script, NULL, test_env, NULL, &res, &err), GT_OK);
    /* $PPID is the sandbox's init (immune to its own namespace's SIGKILL); our pid does
     * not exist in there; and we are evidently still running */
    assert_non_null(strstr(res.out, "still-here\n"));
    assert_int_equal(res.exit_code, 0);
    gt_exec_result_clear(&res);
    free(script);
}

static void test_sandbox_setsid_dies_with_run(void **state)
{
    (void)state;
    NEED_SANDBOX();
    gt_exec_result res;
    gt_error err;
    int64_t t0 = gt_mono_ms();
    assert_int_equal(run_boxed("setsid sleep 91.41 & sleep 0.2; echo started", NULL, test_env,
                               NULL, &res, &err),
                     GT_OK);
    assert_true(gt_mono_ms() - t0 < SLOW_MS);
    assert_string_equal(res.out, "started\n");
    assert_int_equal(wait_sleeps("91.41", 0), 0);
    gt_exec_result_clear(&res);
}

static void read_cmdline(int64_t pid, void *arg)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%lld/cmdline", (long long)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    gt_buf *b = arg;
    char chunk[4096];
    ssize_t n;
    while (fd >= 0 && (n = read(fd, chunk, sizeof chunk)) > 0) {
        for (ssize_t i = 0; i < n; i++)
            if (chunk[i] == '\0')
                chunk[i] = ' ';
        gt_buf_append(b, chunk, (size_t)n);
    }
    if (fd >= 0)
        close(fd);
}

static void test_sandbox_secret_not_in_cmdline(void **state)
{
    (void)state;
    NEED_SANDBOX();
    char *const env[] = {"PATH=/usr/bin:/bin", "API_TOKEN=s3cr3t-Value-42",
                         "LD_LIBRARY_PATH=/nonexistent-lib", "HOME=/somewhere-else", NULL};
    char *const argv[] = {"/bin/sh", "-c",
                          "echo token=$API_TOKEN ld=$LD_LIBRARY_PATH home=$HOME; "
                          "tr '\\0' ' ' < /proc/1/cmdline", NULL};
    gt_sandbox sb = {0};
    gt_buf cmdline = {0};
    gt_exec_spec spec = {.argv = argv, .envp = env, .sandbox = &sb, .on_start = read_cmdline,
                         .on_start_arg = &cmdline};
    gt_exec_result res;
    gt_error err;
    assert_int_equal(run_spec(&spec, &res, &err), GT_OK);
    char *want = gt_xasprintf("token=s3cr3t-Value-42 ld=/nonexistent-lib home=%s\n",
                              gt_sandbox_home());
    assert_true(strncmp(res.out, want, strlen(want)) == 0);
    /* bwrap's argv, seen from outside (on_start) and from inside (pid 1) */
    assert_non_null(cmdline.data);
    assert_non_null(strstr(cmdline.data, "--unshare-pid"));
    assert_null(strstr(cmdline.data, "s3cr3t"));
    assert_non_null(strstr(res.out + strlen(want), "--unshare-pid"));
    assert_null(strstr(res.out + strlen(want), "s3cr3t"));
    gt_exec_result_clear(&res);
    gt_buf_free(&cmdline);
    free(want);
}

static void test_sandbox_exit_status_and_errors(void **state)
{
    (void)state;
    NEED_SANDBOX();
    gt_exec_result res;
    gt_error err;
    assert_int_equal(run_boxed("exit 3", NULL, test_env, NULL, &res, &err), GT_OK);
    assert_int_equal(res.exit_code, 3);
    assert_int_equal(res.term_signal, 0);
    gt_exec_result_clear(&res);

    assert_int_equal(run_boxed("kill -TERM $$", NULL, test_env, NULL, &res, &err), GT_OK);
    assert_int_equal(res.exit_code, 128 + SIGTERM);
    assert_int_equal(res.term_signal, SIGTERM);
    gt_exec_result_clear(&res);

    /* a program outside what the sandbox shows */
    char *dir = make_tmpdir();
    char *prog = gt_path_join(dir, "tool");
    write_file(prog, "#!/bin/sh\necho hi\n", 0755);
    char *const argv[] = {prog, NULL};
    gt_sandbox sb = {0};
    gt_exec_spec spec = {.argv = argv, .sandbox = &sb};
    assert_int_equal(run_spec(&spec, &res, &err), GT_ENOTFOUND);
    assert_non_null(strstr(err.message, "outside the run's sandbox"));
    gt_exec_result_clear(&res);

    /* bwrap itself failing (a bind whose source is gone) is an error, not an exit code */
    char *gone = gt_path_join(dir, "gone");
    char *rw[] = {gone, NULL};
    gt_sandbox bad = {.writable = rw};
    char *const sh[] = {"/bin/sh", "-c", "exit 0", NULL};
    gt_exec_spec spec2 = {.argv = sh, .sandbox = &bad};
    assert_int_equal(run_spec(&spec2, &res, &err), GT_EIO);
    assert_non_null(strstr(err.message, "the sandbox could not start"));
    gt_exec_result_clear(&res);

    /* a PATH search skips what the sandbox does not show, as the run's own would */
    char *fake = gt_path_join(dir, "echo");
    write_file(fake, "#!/bin/sh\necho fake\n", 0755);
    char *path = gt_xasprintf("PATH=%s:/usr/bin:/bin", dir);
    char *const env[] = {path, NULL};
    char *const echo[] = {"echo", "real", NULL};
    gt_exec_spec spec3 = {.argv = echo, .envp = env, .sandbox = &sb};
    assert_int_equal(run_spec(&spec3, &res, &err), GT_OK);
    assert_string_equal(res.out, "real\n");
    gt_exec_result_clear(&res);
    char *solo = gt_xasprintf("PATH=%s", dir);
    char *const env2[] = {solo, NULL};
    gt_exec_spec spec4 = {.argv = echo, .envp = env2, .sandbox = &sb};
    assert_int_equal(run_spec(&spec4, &res, &err), GT_ENOTFOUND);
    assert_non_null(strstr(err.message, "sandbox shows"));
    gt_exec_result_clear(&res);

    gt_rm_rf(dir, NULL);
    free(solo);
    free(path);
    free(fake);
    free(gone);
    free(prog);
    free(dir);
}

/* A timeout reaches the program inside with SIGTERM first, so it can clean up. */
static void test_sandbox_timeout_term_first(void **state)
{
    (void)state;
    NEED_SANDBOX();
    char *const argv[] = {"/bin/sh", "-c",
                          "trap 'echo got-term; exit 7' TERM; echo ready; "
                          "while :; do sleep 0.1; done", NULL};
    gt_sandbox sb = {0};
    gt_exec_spec spec = {.argv = argv, .sandbox = &sb, .timeout_ms = 1500, .kill_grace_ms = 20000};
    gt_exec_result res;
    gt_error err;
    assert_int_equal(run_spec(&spec, &res, &err), GT_OK);
    assert_true(res.timed_out);
    assert_string_equal(res.out, "ready\ngot-term\n");
    assert_int_equal(res.exit_code, 7);
    gt_exec_result_clear(&res);
}

static void test_sandbox_unavailable_message(void **state)
{
    (void)state;
    gt_error err = {0};
    char *bwrap = NULL;
    assert_int_equal(gt_sandbox_probe("/nonexistent-dir", &bwrap, &err), GT_EUNAVAIL);
    assert_null(bwrap);
    assert_non_null(strstr(err.message, "bubblewrap"));
    assert_non_null(strstr(err.message, "sandbox = none"));
}

static void check_cpu_limit(const gt_sandbox *sb)
{
    gt_exec_limits lim = {.cpu_ms = 1000};
    char *const argv[] = {"/bin/sh", "-c", "while :; do :; done", NULL};
    gt_exec_spec spec = {.argv = argv, .sandbox = sb, .limits = &lim, .timeout_ms = 120000};
    gt_exec_result res;
    gt_error err;
    assert_int_equal(run_spec(&spec, &res, &err), GT_OK);
    assert_false(res.timed_out);
    assert_int_equal(res.term_signal, SIGXCPU);
    char *why = gt_exec_limit_reason(&lim, &res);
    assert_non_null(why);
    assert_string_equal(why, "killed by SIGXCPU: CPU time limit 1s reached");
    free(why);
    gt_exec_result_clear(&res);
}

static void check_memory_limit(const gt_sandbox *sb)
{
    gt_exec_limits lim = {.memory = 64 << 20};
    char *const argv[] = {"python3", "-c", "x = bytearray(512 * 1024 * 1024)", NULL};
    gt_exec_spec spec = {.argv = argv, .sandbox = sb, .limits = &lim, .timeout_ms = 120000};
    gt_exec_result res;
    gt_error err;
    assert_int_equal(run_spec(&spec, &res, &err), GT_OK);
    assert_int_not_equal(res.exit_code, 0);
    assert_non_null(strstr(res.err, "MemoryError"));
    char *why = gt_exec_limit_reason(&lim, &res);
    assert_non_null(why);
    assert_string_equal(why, "out of memory: memory limit 64 MiB reached (an allocation failed)");
    free(why);
    gt_exec_result_clear(&res);
}

static void test_limits_direct(void **state)
{
    (void)state;
    check_cpu_limit(NULL);
    check_memory_limit(NULL);
    gt_exec_limits lim = {.open_files = 20};
    char *const argv[] = {"/bin/sh", "-c", "ulimit -n; ulimit -c", NULL};
    gt_exec_spec spec = {.argv = argv, .limits = &lim};
    gt_exec_result res;
    gt_error err;
    assert_int_equal(run_spec(&spec, &res, &err), GT_OK);
    assert_string_equal(res.out, "20\n0\n");
    gt_exec_result_clear(&res);
    /* nothing that points at a limit: no reason */
    assert_int_equal(run_sh("echo fine >&2; exit 1", &res), GT_OK);
    assert_null(gt_exec_limit_reason(&lim, &res));
    gt_exec_result_clear(&res);
}

static void test_limits_sandboxed(void **state)
{
    (void)state;
    NEED_SANDBOX();
    gt_sandbox sb = {0};
    check_cpu_limit(&sb);
    check_memory_limit(&sb);

    /* processes: counted in the sandbox's own user namespace, whatever uid runs us */
    gt_exec_limits lim = {.processes = 16};
    gt_exec_result res;
    gt_error err;
    assert_int_equal(run_boxed("for i in $(seq 40); do sleep 91.51 & done; wait", NULL, test_env,
                               &lim, &res, &err),
                     GT_OK);
    assert_int_not_equal(res.exit_code, 0);
    char *why = gt_exec_limit_reason(&lim, &res);
    assert_non_null(why);
    /* the kernel refused a fork, or (Gantry as root) the sandbox was counted and stopped */
    assert_true(strncmp(why, "process limit 16 reached (", 26) == 0);
    free(why);
    assert_int_equal(wait_sleeps("91.51", 0), 0);
    gt_exec_result_clear(&res);

    gt_exec_limits files = {.open_files = 20};
    assert_int_equal(run_boxed("ulimit -n", NULL, test_env, &files, &res, &err), GT_OK);
    assert_string_equal(res.out, "20\n");
    gt_exec_result_clear(&res);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_capture_stdout_stderr),
        cmocka_unit_test(test_exit_codes),
        cmocka_unit_test(test_killed_by_signal),
        cmocka_unit_test(test_timeout_term_ignored),
        cmocka_unit_test(test_timeout_term_honored_despite_parent_ignoring),
        cmocka_unit_test(test_timeout_stopped_child),
        cmocka_unit_test(test_signal_mask_and_dispositions_reset),
        cmocka_unit_test(test_own_process_group),
        cmocka_unit_test(test_grandchild_holding_pipe),
        cmocka_unit_test(test_grandchild_escaped_group),
        cmocka_unit_test(test_output_flood_truncated),
        cmocka_unit_test(test_small_cap_both_streams),
        cmocka_unit_test(test_stdin_data),
        cmocka_unit_test(test_cwd),
        cmocka_unit_test(test_missing_program),
        cmocka_unit_test(test_path_from_envp),
        cmocka_unit_test(test_missing_cwd),
        cmocka_unit_test(test_not_executable),
        cmocka_unit_test(test_env_exact),
        cmocka_unit_test(test_cancel_from_thread),
        cmocka_unit_test(test_no_fd_leak_into_child),
        cmocka_unit_test(test_no_fd_leak_in_parent),
        cmocka_unit_test(test_concurrent_threads),
        cmocka_unit_test(test_dies_with_spawner),
        cmocka_unit_test(test_sandbox_unavailable_message),
        cmocka_unit_test(test_sandbox_dies_with_spawner),
        cmocka_unit_test(test_sandbox_sees_only_its_binds),
        cmocka_unit_test(test_sandbox_cannot_signal_parent),
        cmocka_unit_test(test_sandbox_setsid_dies_with_run),
        cmocka_unit_test(test_sandbox_secret_not_in_cmdline),
        cmocka_unit_test(test_sandbox_exit_status_and_errors),
        cmocka_unit_test(test_sandbox_timeout_term_first),
        cmocka_unit_test(test_limits_direct),
        cmocka_unit_test(test_limits_sandboxed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
