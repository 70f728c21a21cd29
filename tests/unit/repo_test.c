/* repo.c and model/repository.c: which URLs are fetched, credentials in URLs, and a
 * git that nothing but Gantry steers (no hooks, no planted or global config). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <string.h>
#include <unistd.h>

#include "json.h"
#include "log.h"
#include "model/model.h"
#include "repo.h"
#include "run.h"
#include "util.h"

static void test_remote_helpers(void **state)
{
    (void)state;
    const char *bad[] = {"ext::sh -c touch% /tmp/marker", "fd::3", "fd::3,4", "a::b",
                         "git+x::y", "testgit::/srv/r", "x.y-z+w::anything", "ext::",
                         "https://h/r\n", "/srv/r\tx", "file:///srv/\x7f"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        gt_error e = {0};
        if (gt_repo_url_valid(bad[i]))
            fail_msg("%s should be invalid", bad[i]);
        assert_int_equal(gt_repo_url_check(bad[i], "$.url", &e), GT_EINVAL);
        assert_string_equal(e.field, "$.url");
    }
    gt_error e = {0};
    gt_repo_url_check("ext::sh -c x", NULL, &e);
    assert_non_null(strstr(e.message, "remote helper"));
    /* "::" where git does not read a helper name */
    const char *good[] = {"ssh://git@[::1]/r.git", "/srv/with::colons", "[::1]:repo",
                          "git@h:r::x"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        if (!gt_repo_url_valid(good[i]) || gt_repo_url_check(good[i], NULL, NULL) != GT_OK)
            fail_msg("%s should be valid", good[i]);
}

static void test_passwords(void **state)
{
    (void)state;
    struct {
        const char *url, *masked;
        bool pw;
    } cases[] = {
        {"https://bob:s3cret@h/r.git", "https://bob:***@h/r.git", true},
        {"https://:tok@h/r", "https://:***@h/r", true},
        {"https://bob:p:q@h:8443/r", "https://bob:***@h:8443/r", true},
        {"https://bob:p@ss@h/r", "https://bob:***@h/r", true}, /* the last '@' ends it */
        {"ssh://git:pw@h/r", "ssh://git:***@h/r", true},
        {"https://bob@h/r", "https://bob@h/r", false},
        {"https://h/a:b@c", "https://h/a:b@c", false},          /* in the path */
        {"git@h:r.git", "git@h:r.git", false},
        {"/srv/r", "/srv/r", false},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        assert_int_equal(gt_repo_url_has_password(cases[i].url), cases[i].pw);
        char *m = gt_repo_url_mask(cases[i].url);
        assert_string_equal(m, cases[i].masked);
        free(m);
    }
    assert_null(gt_repo_url_mask(NULL));
}

static void test_model(void **state)
{
    (void)state;
    cJSON *doc = cJSON_Parse("{\"name\":\"r\",\"url\":\"https://bob:hunter22@h/r.git\"}");
    gt_error e = {0};
    assert_int_equal(gt_model_repository.validate(doc, &e), GT_EINVAL);
    assert_string_equal(e.field, "$.url");
    assert_non_null(strstr(e.message, "secret"));
    assert_non_null(strstr(e.message, "private_key_name"));
    assert_null(strstr(e.message, "hunter22"));
    /* stored before the check: shown masked */
    gt_model_repository.present(doc);
    assert_string_equal(cJSON_GetObjectItem(doc, "url")->valuestring, "https://bob:***@h/r.git");
    cJSON_Delete(doc);
    doc = cJSON_Parse("{\"name\":\"r\",\"url\":\"fd::3\"}");
    gt_error_clear(&e);
    assert_int_equal(gt_model_repository.validate(doc, &e), GT_EINVAL);
    assert_string_equal(e.field, "$.url");
    assert_true(strncmp(e.message, "$.url: ", 7) == 0);
    cJSON_Delete(doc);
    doc = cJSON_Parse("{\"name\":\"r\",\"url\":\"https://bob@h/r.git\"}");
    assert_int_equal(gt_model_repository.validate(doc, NULL), GT_OK);
    cJSON_Delete(doc);
}

static void sh(const char *cmd)
{
    /* test scaffolding only: the code under test never uses a shell */
    if (system(cmd) != 0)
        fail_msg("%s failed", cmd);
}

static void test_run_time_refusals(void **state)
{
    (void)state;
    char dir[] = "/tmp/gt-repo-XXXXXX";
    assert_non_null(mkdtemp(dir));
    extern char **environ;
    gt_run_options o = {.working_dir = dir, .git = "git", .environ = environ};
    char *marker = gt_xasprintf("%s/marker", dir);
    char *url = gt_xasprintf("ext::sh -c touch%% %s", marker);
    char *dest = gt_xasprintf("%s/co", dir), *commit = NULL;
    gt_error e = {0};
    assert_int_equal(gt_repo_checkout(&o, url, NULL, NULL, dest, &commit, &e), GT_EINVAL);
    assert_non_null(strstr(e.message, "remote helper"));
    assert_false(gt_file_exists(marker));
    gt_error_clear(&e);
    assert_int_equal(gt_repo_checkout(&o, "http://127.0.0.1:1/r", NULL, NULL, dest, &commit, &e),
                     GT_EPERM);
    assert_non_null(strstr(e.message, "allow_http_repositories"));
    /* a password never reaches the message, even from git's own output */
    gt_error_clear(&e);
    assert_int_equal(gt_repo_checkout(&o, "https://bob:hunter22@127.0.0.1:1/r", NULL, NULL, dest,
                                      &commit, &e), GT_EIO);
    assert_null(strstr(e.message, "hunter22"));
    assert_non_null(strstr(e.message, "bob:***@127.0.0.1"));
    assert_null(commit);
    free(dest);
    free(url);
    free(marker);
    gt_rm_rf(dir, NULL);
}

static void test_no_hooks_no_foreign_config(void **state)
{
    (void)state;
    char dir[] = "/tmp/gt-hooks-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char *cmd = gt_xasprintf(
        "cd %s && mkdir home planted && git init -q -b main src && cd src && echo one > f && "
        "git add f && git -c user.name=t -c user.email=t@t commit -qm one", dir);
    sh(cmd);
    free(cmd);
    /* the environment Gantry starts from names a HOME with a .gitconfig */
    char *home = gt_xasprintf("HOME=%s/home", dir);
    char *envv[] = {home, "PATH=/usr/bin:/bin", NULL};
    gt_run_options o = {.working_dir = dir, .git = "git", .environ = envv};
    char *url = gt_xasprintf("%s/src", dir);
    char *dest = gt_xasprintf("%s/co1", dir), *commit = NULL;
    assert_int_equal(gt_repo_checkout(&o, url, NULL, NULL, dest, &commit, NULL), GT_OK);
    free(commit);
    free(dest);
    /* plant hooks in the cache, a config pointing at more, and a global one */
    cmd = gt_xasprintf(
        "cd %s && c=$(ls -d repos/*.git) && mkdir -p $c/hooks $c/objects/info && "
        "for d in planted $c/hooks; do "
        "for h in reference-transaction post-checkout post-index-change pre-auto-gc; do "
        "printf '#!/bin/sh\\necho $0 >> %s/ran\\n' > $d/$h; chmod +x $d/$h; done; done && "
        "printf '[core]\\n\\thooksPath = %s/planted\\n' >> $c/config && "
        "printf '[core]\\n\\thooksPath = %s/planted\\n' > home/.gitconfig && "
        "echo %s/elsewhere/objects > $c/objects/info/alternates && "
        "cd src && echo two > f && git -c user.name=t -c user.email=t@t commit -qam two",
        dir, dir, dir, dir, dir);
    sh(cmd);
    free(cmd);
    dest = gt_xasprintf("%s/co2", dir);
    gt_error e = {0};
    if (gt_repo_checkout(&o, url, NULL, NULL, dest, &commit, &e) != GT_OK)
        fail_msg("checkout: %s", e.message);
    char *ran = gt_xasprintf("%s/ran", dir);
    if (gt_file_exists(ran)) {
        char *text = NULL;
        gt_read_file(ran, 4096, &text, NULL, NULL);
        fail_msg("a planted hook ran: %s", text);
    }
    /* the checkout is the new commit, and the cache's config is Gantry's again */
    char *f = gt_xasprintf("%s/f", dest);
    char *text = NULL;
    assert_int_equal(gt_read_file(f, 100, &text, NULL, NULL), GT_OK);
    assert_string_equal(text, "two\n");
    free(text);
    free(f);
    cmd = gt_xasprintf("cd %s/repos/*.git && ! grep -q hooksPath config && "
                       "! test -e objects/info/alternates", dir);
    sh(cmd);
    free(cmd);
    free(ran);
    free(commit);
    free(dest);
    free(url);
    free(home);
    gt_rm_rf(dir, NULL);
}

static char *read_text(const char *dir, const char *name)
{
    char *path = gt_path_join(dir, name), *text = NULL;
    if (gt_read_file(path, 4096, &text, NULL, NULL) != GT_OK)
        fail_msg("cannot read %s", path);
    free(path);
    return text;
}

static int count_trees(const char *dir)
{
    char *cmd = gt_xasprintf("test $(ls %s/repos/*.trees | wc -l) -le 8", dir);
    int rc = system(cmd);
    free(cmd);
    return rc;
}

/* A checked-out tree is reused per commit: a run's writes never reach the next run,
 * a push is seen by the very next run, a SHA reference works, modes and symlinks are
 * kept, and the number of trees kept is bounded. */
static void test_tree_reuse(void **state)
{
    (void)state;
    char dir[] = "/tmp/gt-trees-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char *cmd = gt_xasprintf(
        "cd %s && git init -q -b main src && cd src && echo one > f && mkdir d && "
        "printf '#!/bin/sh\\n' > d/run && chmod +x d/run && ln -s d/run link && git add . && "
        "git -c user.name=t -c user.email=t@t commit -qm one", dir);
    sh(cmd);
    free(cmd);
    extern char **environ;
    gt_run_options o = {.working_dir = dir, .git = "git", .environ = environ};
    char *url = gt_xasprintf("%s/src", dir);
    char *first = NULL, *commit = NULL;
    char *dest = gt_xasprintf("%s/co1", dir);
    gt_error e = {0};
    if (gt_repo_checkout(&o, url, "main", NULL, dest, &first, &e) != GT_OK)
        fail_msg("checkout: %s", e.message);
    /* the run scribbles over its copy */
    cmd = gt_xasprintf("cd %s && echo changed > f && rm d/run && echo new > extra", dest);
    sh(cmd);
    free(cmd);
    free(dest);
    dest = gt_xasprintf("%s/co2", dir);
    assert_int_equal(gt_repo_checkout(&o, url, "main", NULL, dest, &commit, &e), GT_OK);
    assert_string_equal(commit, first);
    char *text = read_text(dest, "f");
    assert_string_equal(text, "one\n");
    free(text);
    char *extra = gt_path_join(dest, "extra"), *run = gt_path_join(dest, "d/run");
    char *link = gt_path_join(dest, "link");
    assert_false(gt_file_exists(extra));
    struct stat st;
    assert_int_equal(stat(run, &st), 0);
    assert_true(st.st_mode & S_IXUSR);
    assert_int_equal(lstat(link, &st), 0);
    assert_true(S_ISLNK(st.st_mode));
    free(link);
    free(run);
    free(extra);
    free(commit);
    free(dest);
    /* a push is seen at once, with no window */
    cmd = gt_xasprintf("cd %s/src && echo two > f && git -c user.name=t -c user.email=t@t "
                       "commit -qam two", dir);
    sh(cmd);
    free(cmd);
    dest = gt_xasprintf("%s/co3", dir);
    assert_int_equal(gt_repo_checkout(&o, url, "main", NULL, dest, &commit, &e), GT_OK);
    assert_string_not_equal(commit, first);
    text = read_text(dest, "f");
    assert_string_equal(text, "two\n");
    free(text);
    free(commit);
    free(dest);
    /* the first commit by its SHA, from the trees kept */
    dest = gt_xasprintf("%s/co4", dir);
    assert_int_equal(gt_repo_checkout(&o, url, first, NULL, dest, &commit, &e), GT_OK);
    assert_string_equal(commit, first);
    text = read_text(dest, "f");
    assert_string_equal(text, "one\n");
    free(text);
    free(commit);
    free(dest);
    /* more commits than trees kept: the oldest go */
    for (int i = 0; i < 10; i++) {
        cmd = gt_xasprintf("cd %s/src && echo %d > f && git -c user.name=t -c user.email=t@t "
                           "commit -qam c%d", dir, i, i);
        sh(cmd);
        free(cmd);
        dest = gt_xasprintf("%s/loop%d", dir, i);
        assert_int_equal(gt_repo_checkout(&o, url, NULL, NULL, dest, &commit, &e), GT_OK);
        free(commit);
        free(dest);
    }
    assert_int_equal(count_trees(dir), 0);
    free(first);
    free(url);
    gt_rm_rf(dir, NULL);
}

/* [runner] reference_max_age: a reference resolved less than that long ago is reused
 * (a push inside the window is not seen yet), and asked again once it has passed. */
static void test_reference_max_age(void **state)
{
    (void)state;
    char dir[] = "/tmp/gt-refage-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char *cmd = gt_xasprintf("cd %s && git init -q -b main src && cd src && echo one > f && "
                             "git add f && git -c user.name=t -c user.email=t@t commit -qm one", dir);
    sh(cmd);
    free(cmd);
    extern char **environ;
    gt_run_options o = {.working_dir = dir, .git = "git", .environ = environ,
                        .reference_max_age_ms = 60000};
    char *url = gt_xasprintf("%s/src", dir);
    char *first = NULL, *commit = NULL;
    char *dest = gt_xasprintf("%s/co1", dir);
    assert_int_equal(gt_repo_checkout(&o, url, "main", NULL, dest, &first, NULL), GT_OK);
    free(dest);
    cmd = gt_xasprintf("cd %s/src && echo two > f && git -c user.name=t -c user.email=t@t "
                       "commit -qam two", dir);
    sh(cmd);
    free(cmd);
    dest = gt_xasprintf("%s/co2", dir);
    assert_int_equal(gt_repo_checkout(&o, url, "main", NULL, dest, &commit, NULL), GT_OK);
    assert_string_equal(commit, first); /* inside the window */
    char *text = read_text(dest, "f");
    assert_string_equal(text, "one\n");
    free(text);
    free(commit);
    free(dest);
    /* the window passed (the stamp made old) */
    cmd = gt_xasprintf("touch -d '2 minutes ago' %s/repos/*.refs/*", dir);
    sh(cmd);
    free(cmd);
    dest = gt_xasprintf("%s/co3", dir);
    assert_int_equal(gt_repo_checkout(&o, url, "main", NULL, dest, &commit, NULL), GT_OK);
    assert_string_not_equal(commit, first);
    text = read_text(dest, "f");
    assert_string_equal(text, "two\n");
    free(text);
    free(commit);
    free(dest);
    /* the default (0) asks every time: back to one, seen at once */
    o.reference_max_age_ms = 0;
    cmd = gt_xasprintf("cd %s/src && echo three > f && git -c user.name=t -c user.email=t@t "
                       "commit -qam three", dir);
    sh(cmd);
    free(cmd);
    dest = gt_xasprintf("%s/co4", dir);
    assert_int_equal(gt_repo_checkout(&o, url, "main", NULL, dest, &commit, NULL), GT_OK);
    text = read_text(dest, "f");
    assert_string_equal(text, "three\n");
    free(text);
    free(commit);
    free(dest);
    free(first);
    free(url);
    gt_rm_rf(dir, NULL);
}

int main(void)
{
    gt_log_setup(NULL, GT_LOG_ERROR, false, "test");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_remote_helpers),
        cmocka_unit_test(test_passwords),
        cmocka_unit_test(test_model),
        cmocka_unit_test(test_run_time_refusals),
        cmocka_unit_test(test_no_hooks_no_foreign_config),
        cmocka_unit_test(test_tree_reuse),
        cmocka_unit_test(test_reference_max_age),
    };
    return cmocka_run_group_tests_name("repo", tests, NULL, NULL);
}
