/* venv.c: the venv key (repository, requirements and everything they reference) and
 * the refusal of anything a requirements file names outside the checkout. pip is not
 * run here: gt_venv_key does every check gt_venv_ensure does before it builds. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "run.h"
#include "util.h"
#include "venv.h"

static char tmp[] = "/tmp/gt-venv-XXXXXX";

static void sh(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *cmd = NULL;
    if (vasprintf(&cmd, fmt, ap) < 0)
        fail();
    va_end(ap);
    /* test scaffolding only: the code under test never uses a shell */
    if (system(cmd) != 0)
        fail_msg("%s failed", cmd);
    free(cmd);
}

/* A checkout at tmp/name with requirements text and a ./greetlib package saying who. */
static char *checkout(const char *name, const char *reqs, const char *who)
{
    char *root = gt_xasprintf("%s/%s", tmp, name);
    sh("mkdir -p %s/greetlib/greetlib && printf '%%s' '%s' > %s/requirements.txt && "
       "echo 'WHO = \"%s\"' > %s/greetlib/greetlib/__init__.py && "
       "echo 'from setuptools import setup' > %s/greetlib/setup.py",
       root, reqs, root, who, root, root);
    return root;
}

static gt_err key(const char *repo, const char *root, char out[25], gt_error *e)
{
    gt_run_options o = {.python = "python3", .working_dir = tmp};
    char *reqs = gt_path_join(root, "requirements.txt");
    gt_error_clear(e);
    gt_err rc = gt_venv_key(&o, repo, reqs, root, root, out, e);
    free(reqs);
    return rc;
}

static void test_key_covers_repository_and_contents(void **state)
{
    (void)state;
    char *a = checkout("a", "./greetlib\n", "alice");
    char *b = checkout("b", "./greetlib\n", "mallory");
    char *a2 = checkout("a2", "./greetlib\n", "alice");
    char ka[25], kb[25], ka2[25], kx[25];
    gt_error e = {0};
    assert_int_equal(key("r\n/srv/a", a, ka, &e), GT_OK);
    assert_int_equal(strlen(ka), 24);
    /* same requirements text, other package contents: another venv */
    assert_int_equal(key("r\n/srv/a", b, kb, &e), GT_OK);
    assert_string_not_equal(ka, kb);
    /* the same content checked out elsewhere (every run has its own scratch) */
    assert_int_equal(key("r\n/srv/a", a2, ka2, &e), GT_OK);
    assert_string_equal(ka, ka2);
    /* another repository with identical content */
    assert_int_equal(key("other\n/srv/b", a2, kx, &e), GT_OK);
    assert_string_not_equal(ka, kx);
    /* a new file, a changed mode, a changed byte */
    sh("touch %s/greetlib/greetlib/new.py", a2);
    assert_int_equal(key("r\n/srv/a", a2, kx, &e), GT_OK);
    assert_string_not_equal(ka, kx);
    sh("rm %s/greetlib/greetlib/new.py && chmod +x %s/greetlib/setup.py", a2, a2);
    assert_int_equal(key("r\n/srv/a", a2, kx, &e), GT_OK);
    assert_string_not_equal(ka, kx);
    sh("chmod -x %s/greetlib/setup.py", a2);
    assert_int_equal(key("r\n/srv/a", a2, kx, &e), GT_OK);
    assert_string_equal(ka, kx);
    /* nested requirements files count too */
    char *n = checkout("n", "-r more.txt\n", "x");
    sh("echo './greetlib' > %s/more.txt", n);
    char kn[25];
    assert_int_equal(key("r", n, kn, &e), GT_OK);
    sh("echo 'WHO = 2' > %s/greetlib/greetlib/__init__.py", n);
    assert_int_equal(key("r", n, kx, &e), GT_OK);
    assert_string_not_equal(kn, kx);
    free(n);
    free(a);
    free(b);
    free(a2);
}

static void test_refused_references(void **state)
{
    (void)state;
    sh("echo TOPSECRET > %s/secret.txt && mkdir -p %s/outpkg", tmp, tmp);
    struct {
        const char *reqs;
        const char *msg;
    } cases[] = {
        {"-r ../secret.txt\n", "outside the repository"},
        {"-r/etc/passwd\n", "outside the repository"},
        {"--requirement=../secret.txt\n", "outside the repository"},
        {"-c ../secret.txt\n", "outside the repository"},
        {"-r https://example.com/r.txt\n", "only files in the repository"},
        {"../outpkg\n", "outside the repository"},
        {"greetlib @ file:///etc\n", "outside the repository"},
        {"file:///etc/passwd\n", "outside the repository"},
        {"file://otherhost/x\n", "another host"},
        {"~/pkg\n", "outside the repository"},
        {"git+file:///srv/repo#egg=x\n", "outside the repository"},
        {"--find-links /etc\n", "outside the repository"},
        {"-f ../outpkg\n", "outside the repository"},
        {"--index-url file:///etc\n", "outside the repository"},
        {"-e ./greetlib\n", "editable"},
        {"./missing\n", "not found"},
        {"requests \\\n  @ file:///etc\n", "outside the repository"}, /* a continued line */
        {"-r\n", "needs a value"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *name = gt_xasprintf("bad%zu", i);
        char *root = checkout(name, cases[i].reqs, "x");
        char k[25];
        gt_error e = {0};
        if (key("r", root, k, &e) == GT_OK)
            fail_msg("%s accepted", cases[i].reqs);
        if (strstr(e.message, cases[i].msg) == NULL)
            fail_msg("%s: \"%s\" lacks \"%s\"", cases[i].reqs, e.message, cases[i].msg);
        assert_null(strstr(e.message, "TOPSECRET"));
        free(root);
        free(name);
    }
    /* a package whose files lead out of the checkout */
    char *root = checkout("linkpkg", "./greetlib\n", "x");
    sh("ln -s %s/secret.txt %s/greetlib/greetlib/data.txt", tmp, root);
    char k[25];
    gt_error e = {0};
    assert_int_equal(key("r", root, k, &e), GT_EPERM);
    assert_non_null(strstr(e.message, "points outside the repository"));
    free(root);
    /* a symlink loop inside the package ends, refused */
    root = checkout("loop", "./greetlib\n", "x");
    sh("ln -s .. %s/greetlib/greetlib/up", root);
    assert_int_equal(key("r", root, k, &e), GT_EINVAL);
    assert_non_null(strstr(e.message, "nested more than"));
    free(root);
    /* the requirements file itself may not lead out */
    root = checkout("linkreqs", "x", "x");
    sh("rm %s/requirements.txt && ln -s %s/secret.txt %s/requirements.txt", root, tmp, root);
    assert_int_equal(key("r", root, k, &e), GT_EPERM);
    assert_non_null(strstr(e.message, "requirements file"));
    free(root);
}

static void test_accepted_references(void **state)
{
    (void)state;
    const char *ok[] = {
        "requests>=2.0 ; python_version > \"3\"\n",
        "# a comment\n\nflask==2.*  # trailing\n--pre\n--hash=sha256:abcd\n",
        "./greetlib[extra]\n",
        "greetlib/\n",
        "-r sub/more.txt\n",
        "--find-links ./greetlib\n-i https://pypi.example/simple\n",
        "pkg @ https://example.com/pkg-1.0.tar.gz\n",
        "git+https://example.com/r.git#egg=x\n",
        "-e git+https://example.com/r.git#egg=x\n",
        "./link-in\n",
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        char *name = gt_xasprintf("ok%zu", i);
        char *root = checkout(name, ok[i], "x");
        sh("mkdir -p %s/sub && echo ./greetlib > %s/sub/more.txt && ln -s greetlib %s/link-in",
           root, root, root);
        char k[25];
        gt_error e = {0};
        if (key("r", root, k, &e) != GT_OK)
            fail_msg("%s refused: %s", ok[i], e.message);
        free(root);
        free(name);
    }
}

static int setup(void **state)
{
    (void)state;
    return mkdtemp(tmp) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    return gt_rm_rf(tmp, NULL) == GT_OK ? 0 : -1;
}

int main(void)
{
    gt_log_setup(NULL, GT_LOG_ERROR, false, "test");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_key_covers_repository_and_contents),
        cmocka_unit_test(test_refused_references),
        cmocka_unit_test(test_accepted_references),
    };
    return cmocka_run_group_tests_name("venv", tests, setup, teardown);
}
