#include "repo.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include "crypto.h"
#include "log.h"
#include "util.h"

bool gt_repo_url_valid(const char *url)
{
    if (url == NULL || url[0] == '\0' || url[0] == '-')
        return false;
    if (url[0] == '/')
        return true;
    static const char *schemes[] = {"file://", "ssh://", "git+ssh://", "https://", "http://",
                                    "git://"};
    for (size_t i = 0; i < sizeof schemes / sizeof schemes[0]; i++)
        if (strncmp(url, schemes[i], strlen(schemes[i])) == 0)
            return url[strlen(schemes[i])] != '\0';
    if (strstr(url, "://"))
        return false; /* a scheme Gantry does not fetch from */
    /* scp-like: [user@]host:path, with no slash before the colon */
    const char *colon = strchr(url, ':');
    const char *slash = strchr(url, '/');
    return colon && colon != url && (slash == NULL || slash > colon) && colon[1] != '\0';
}

static bool is_ssh_url(const char *url)
{
    return strncmp(url, "ssh://", 6) == 0 || strncmp(url, "git+ssh://", 10) == 0 ||
           (url[0] != '/' && strstr(url, "://") == NULL);
}

/* Environment for git: never prompt (a prompt would hang a run), C locale for
 * parseable errors, and an ssh identity when the repository has a key. */
static void git_env(const gt_run_options *o, const char *key_path, const char *known_hosts,
                    gt_strv *env)
{
    gt_run_env_base(o, env);
    gt_strv_push(env, "GIT_TERMINAL_PROMPT=0");
    gt_strv_push(env, "GIT_ASKPASS=/bin/false");
    gt_strv_push(env, "SSH_ASKPASS=/bin/false");
    gt_strv_push(env, "LC_ALL=C");
    gt_strv_push(env, "GIT_CONFIG_NOSYSTEM=1");
    if (key_path) {
        /* git runs GIT_SSH_COMMAND through sh; only paths Gantry made go into it,
         * single-quoted, and those contain no quote. */
        gt_strv_push_owned(env, gt_xasprintf(
            "GIT_SSH_COMMAND=ssh -i '%s' -o IdentitiesOnly=yes -o BatchMode=yes "
            "-o StrictHostKeyChecking=accept-new -o UserKnownHostsFile='%s'",
            key_path, known_hosts));
    } else {
        gt_strv_push(env, "GIT_SSH_COMMAND=ssh -o BatchMode=yes");
    }
}

static gt_err git(const gt_run_options *o, gt_strv *env, const char *what, char **out,
                  gt_error *err, ...)
{
    gt_strv argv = {0};
    gt_strv_push(&argv, o->git ? o->git : "git");
    va_list ap;
    va_start(ap, err);
    for (const char *a; (a = va_arg(ap, const char *)) != NULL;)
        gt_strv_push(&argv, a);
    va_end(ap);
    gt_err rc = gt_run_tool(o, argv.v, env->v, NULL, what, out, err);
    gt_strv_free(&argv);
    return rc;
}

static char *trim(char *s)
{
    size_t n = strlen(s);
    while (n && (s[n - 1] == '\n' || s[n - 1] == '\r' || s[n - 1] == ' '))
        s[--n] = '\0';
    return s;
}

/* Resolves reference in the cache to a commit SHA: branch, then tag, then anything
 * rev-parse understands (a full or abbreviated SHA). */
static gt_err resolve(const gt_run_options *o, gt_strv *env, const char *gitdir,
                      const char *url, const char *reference, char **commit, gt_error *err)
{
    char *cands[3] = {0};
    if (reference == NULL || reference[0] == '\0') {
        cands[0] = gt_xstrdup("refs/gantry/HEAD^{commit}");
    } else {
        cands[0] = gt_xasprintf("refs/heads/%s^{commit}", reference);
        cands[1] = gt_xasprintf("refs/tags/%s^{commit}", reference);
        cands[2] = gt_xasprintf("%s^{commit}", reference);
    }
    gt_err rc = GT_ENOTFOUND;
    for (int i = 0; i < 3 && cands[i] && rc != GT_OK; i++) {
        char *out = NULL;
        char *gd = gt_xasprintf("--git-dir=%s", gitdir);
        if (git(o, env, "git rev-parse", &out, NULL, gd, "rev-parse", "--verify", "--quiet",
                "--end-of-options", cands[i], (char *)NULL) == GT_OK) {
            *commit = gt_xstrdup(trim(out));
            rc = GT_OK;
        }
        free(out);
        free(gd);
    }
    for (int i = 0; i < 3; i++)
        free(cands[i]);
    if (rc != GT_OK)
        gt_error_set(err, GT_ENOTFOUND, "reference \"%s\" not found in repository %s",
                     reference && reference[0] ? reference : "HEAD", url);
    return rc;
}

gt_err gt_repo_checkout(const gt_run_options *o, const char *url, const char *reference,
                        const char *ssh_key, const char *dest, char **commit, gt_error *err)
{
    gt_err rc = GT_OK;
    gt_strv env = {0};
    char hash[65];
    gt_sha256_hex(url, strlen(url), hash);
    hash[24] = '\0';
    char *cache_dir = gt_path_join(o->working_dir, "repos");
    char *gitdir = gt_xasprintf("%s/%s.git", cache_dir, hash);
    char *lock_path = gt_xasprintf("%s/%s.lock", cache_dir, hash);
    char *key_path = NULL;
    char *known_hosts = gt_path_join(o->working_dir, "known_hosts");
    char *index = gt_xasprintf("%s.index", dest);
    char *sha = NULL;
    int lock_fd = -1;

    if ((rc = gt_mkdir_p(cache_dir, 0700, err)) != GT_OK)
        goto done;
    lock_fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (lock_fd < 0 || flock(lock_fd, LOCK_EX) != 0) {
        rc = gt_error_set(err, GT_EIO, "%s: %s", lock_path, strerror(errno));
        goto done;
    }
    if (ssh_key && is_ssh_url(url)) {
        key_path = gt_xasprintf("%s.key", dest);
        size_t n = strlen(ssh_key);
        /* ssh refuses a key file without a final newline */
        char *text = (n && ssh_key[n - 1] == '\n') ? gt_xstrdup(ssh_key) : gt_xasprintf("%s\n", ssh_key);
        rc = gt_write_file_atomic(key_path, text, strlen(text), 0600, err);
        gt_secret_wipe_free(text, strlen(text));
        if (rc != GT_OK)
            goto done;
    }
    git_env(o, key_path, known_hosts, &env);

    char *gd = gt_xasprintf("--git-dir=%s", gitdir);
    if (!gt_file_exists(gitdir))
        rc = git(o, &env, "git init", NULL, err, "init", "--quiet", "--bare", gitdir, (char *)NULL);
    if (rc == GT_OK) {
        char *what = gt_xasprintf("fetching %s", url);
        rc = git(o, &env, what, NULL, err, gd, "fetch", "--quiet", "--prune", "--force",
                 "--no-tags", "--end-of-options", url, "+HEAD:refs/gantry/HEAD",
                 "+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*", (char *)NULL);
        free(what);
    }
    if (rc == GT_OK)
        rc = resolve(o, &env, gitdir, url, reference, &sha, err);
    if (rc == GT_OK && (rc = gt_mkdir_p(dest, 0700, err)) == GT_OK) {
        /* Check out into dest with an index of its own: the cache stays bare and
         * concurrent runs of other commits do not disturb each other. */
        char *wt = gt_xasprintf("--work-tree=%s", dest);
        gt_strv_push_owned(&env, gt_xasprintf("GIT_INDEX_FILE=%s", index));
        rc = git(o, &env, "git read-tree", NULL, err, gd, wt, "read-tree", sha, (char *)NULL);
        if (rc == GT_OK)
            rc = git(o, &env, "git checkout-index", NULL, err, gd, wt, "checkout-index", "-a",
                     "-f", (char *)NULL);
        free(wt);
    }
    free(gd);
    if (rc == GT_OK) {
        *commit = sha;
        sha = NULL;
    }
done:
    if (lock_fd >= 0)
        close(lock_fd); /* releases the flock */
    if (key_path)
        unlink(key_path);
    unlink(index);
    free(sha);
    free(index);
    free(known_hosts);
    free(key_path);
    free(lock_path);
    free(gitdir);
    free(cache_dir);
    gt_strv_free(&env);
    return rc;
}
