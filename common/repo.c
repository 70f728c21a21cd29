#include "repo.h"

#include <ctype.h>
#include <dirent.h>
#include <limits.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "crypto.h"
#include "log.h"
#include "util.h"

/* git's own rule (transport.c): a URL that starts with a scheme-like word followed
 * by "::" names a remote helper, git-remote-<word>, which is handed the rest. "ext::"
 * runs a command line and "fd::" talks over inherited descriptors; no helper is an
 * address Gantry should fetch from. */
static bool is_remote_helper(const char *url)
{
    const char *p = url;
    while ((p == url && isalpha((unsigned char)*p)) ||
           (p != url && (isalnum((unsigned char)*p) || *p == '+' || *p == '-' || *p == '.')))
        p++;
    return p != url && p[0] == ':' && p[1] == ':';
}

/* The password in a "scheme://user:password@host/..." URL: *pw and *n, false if none. */
static bool url_password(const char *url, const char **pw, size_t *n)
{
    const char *sep = strstr(url, "://");
    if (sep == NULL)
        return false; /* scp-like user@host:path has no password part */
    const char *auth = sep + 3;
    size_t alen = strcspn(auth, "/?#");
    const char *at = NULL;
    for (size_t i = 0; i < alen; i++)
        if (auth[i] == '@')
            at = auth + i; /* the last '@' of the authority ends the userinfo */
    if (at == NULL)
        return false;
    const char *colon = memchr(auth, ':', (size_t)(at - auth));
    if (colon == NULL)
        return false;
    *pw = colon + 1;
    *n = (size_t)(at - colon - 1);
    return true;
}

bool gt_repo_url_has_password(const char *url)
{
    const char *pw;
    size_t n;
    return url && url_password(url, &pw, &n);
}

char *gt_repo_url_mask(const char *url)
{
    const char *pw;
    size_t n;
    if (url == NULL)
        return NULL;
    if (!url_password(url, &pw, &n))
        return gt_xstrdup(url);
    return gt_xasprintf("%.*s***%s", (int)(pw - url), url, pw + n);
}

/* Replaces every copy of url's password in s, a buffer of size bytes (a message: git
 * prints the URLs it was given), with "***". */
static void scrub_password(char *s, size_t size, const char *url)
{
    const char *pw;
    size_t n;
    if (s == NULL || !url_password(url, &pw, &n) || n == 0)
        return;
    char *want = gt_xstrndup(pw, n);
    gt_buf b = {0};
    for (const char *p = s, *hit; *p; p = hit + n) {
        if ((hit = strstr(p, want)) == NULL) {
            gt_buf_puts(&b, p);
            break;
        }
        gt_buf_append(&b, p, (size_t)(hit - p));
        gt_buf_puts(&b, "***");
    }
    snprintf(s, size, "%s", b.data ? b.data : "");
    gt_buf_free(&b);
    free(want);
}

gt_err gt_repo_url_check(const char *url, const char *field, gt_error *err)
{
    static const char *const hint =
        "an absolute path, file://, ssh://, user@host:path or https://";
    if (url == NULL || url[0] == '\0')
        return gt_error_setf(err, GT_EINVAL, field, "the repository URL is empty (%s)", hint);
    for (const char *p = url; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            return gt_error_setf(err, GT_EINVAL, field,
                                 "the repository URL contains a control character");
    char *shown = gt_repo_url_mask(url);
    gt_err rc = GT_OK;
    if (is_remote_helper(url))
        rc = gt_error_setf(err, GT_EINVAL, field,
                           "\"%s\" names a git remote helper (transport::address, such as ext:: "
                           "or fd::), which Gantry does not fetch from; use %s", shown, hint);
    else if (!gt_repo_url_valid(url))
        rc = gt_error_setf(err, GT_EINVAL, field, "\"%s\" is not a Git URL (%s)", shown, hint);
    free(shown);
    return rc;
}

bool gt_repo_url_valid(const char *url)
{
    if (url == NULL || url[0] == '\0' || url[0] == '-' || is_remote_helper(url))
        return false;
    for (const char *p = url; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
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

/* Sets NAME=value in env, replacing an entry for NAME that is already there. */
static void env_set(gt_strv *env, const char *name, const char *value)
{
    size_t n = strlen(name);
    char *entry = gt_xasprintf("%s=%s", name, value);
    for (size_t i = 0; i < env->n; i++) {
        if (strncmp(env->v[i], name, n) == 0 && env->v[i][n] == '=') {
            free(env->v[i]);
            env->v[i] = entry;
            return;
        }
    }
    gt_strv_push_owned(env, entry);
}

/* Environment for git. Nothing but Gantry's own settings may steer it: no system or
 * global config (a user's ~/.gitconfig could name hooks, helpers or a pager), HOME an
 * empty directory of this checkout's own, only the transports Gantry accepts (git
 * checks redirects and submodules against the same list), never a prompt (it would
 * hang a run), C locale for parseable errors, and an ssh identity when the repository
 * has a key. */
static void git_env(const gt_run_options *o, const char *home, const char *key_path,
                    const char *known_hosts, gt_strv *env)
{
    gt_run_env_base(o, env);
    env_set(env, "HOME", home);
    env_set(env, "GIT_CONFIG_GLOBAL", "/dev/null");
    env_set(env, "GIT_CONFIG_SYSTEM", "/dev/null");
    env_set(env, "GIT_CONFIG_NOSYSTEM", "1");
    env_set(env, "GIT_ALLOW_PROTOCOL", o->allow_http ? "file:git:ssh:https:http"
                                                     : "file:git:ssh:https");
    /* git starts in home (empty) and discovers no repository above it: a ceiling
     * stops the search before it enters home's parent */
    const char *slash = strrchr(home, '/');
    char *parent = slash && slash != home ? gt_xstrndup(home, (size_t)(slash - home))
                                          : gt_xstrdup("/");
    env_set(env, "GIT_CEILING_DIRECTORIES", parent);
    free(parent);
    env_set(env, "GIT_TERMINAL_PROMPT", "0");
    env_set(env, "SSH_ASKPASS", "/bin/false");
    env_set(env, "LC_ALL", "C");
    if (key_path) {
        /* git runs GIT_SSH_COMMAND through sh; only paths Gantry made go into it,
         * single-quoted, and those contain no quote. */
        char *cmd = gt_xasprintf(
            "ssh -i '%s' -o IdentitiesOnly=yes -o BatchMode=yes "
            "-o StrictHostKeyChecking=accept-new -o UserKnownHostsFile='%s'",
            key_path, known_hosts);
        env_set(env, "GIT_SSH_COMMAND", cmd);
        free(cmd);
    } else {
        env_set(env, "GIT_SSH_COMMAND", "ssh -o BatchMode=yes");
    }
}

/* Runs git with args (NULL-terminated) in home, an empty directory. The -c settings
 * win over any repository config: no hook runs (a run could have planted one in the
 * cache), and no automatic gc or maintenance runs inside a fetch. */
static gt_err git(const gt_run_options *o, gt_strv *env, const char *home, const char *what,
                  char **out, gt_error *err, ...)
{
    gt_strv argv = {0};
    gt_strv_push(&argv, o->git ? o->git : "git");
    static const char *const settings[] = {"core.hooksPath=/dev/null", "core.fsmonitor=false",
                                           "gc.auto=0", "maintenance.auto=false"};
    for (size_t i = 0; i < sizeof settings / sizeof settings[0]; i++) {
        gt_strv_push(&argv, "-c");
        gt_strv_push(&argv, settings[i]);
    }
    va_list ap;
    va_start(ap, err);
    for (const char *a; (a = va_arg(ap, const char *)) != NULL;)
        gt_strv_push(&argv, a);
    va_end(ap);
    gt_err rc = gt_run_tool(o, argv.v, env->v, home, what, out, err);
    gt_strv_free(&argv);
    return rc;
}

/* The cache's own config, rewritten before every use: only Gantry writes the cache,
 * and a config planted there (core.sshCommand, a credential helper, alternates of
 * another repository's objects) must not steer the next fetch. */
static gt_err reset_cache(const char *gitdir, gt_error *err)
{
    static const char config[] = "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n"
                                 "\tbare = true\n";
    char *path = gt_path_join(gitdir, "config");
    char *alternates = gt_path_join(gitdir, "objects/info/alternates");
    gt_err rc = gt_write_file_atomic(path, config, sizeof config - 1, 0600, err);
    if (rc == GT_OK && unlink(alternates) != 0 && errno != ENOENT)
        rc = gt_error_set(err, GT_EIO, "%s: %s", alternates, strerror(errno));
    free(alternates);
    free(path);
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
static gt_err resolve(const gt_run_options *o, gt_strv *env, const char *home,
                      const char *gitdir, const char *shown_url, const char *reference,
                      char **commit, gt_error *err)
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
    for (int i = 0; i < 3 && cands[i] && rc == GT_ENOTFOUND; i++) {
        char *out = NULL;
        char *gd = gt_xasprintf("--git-dir=%s", gitdir);
        gt_error why = {0};
        gt_err g = git(o, env, home, "git rev-parse", &out, &why, gd, "rev-parse", "--verify",
                       "--quiet", "--end-of-options", cands[i], (char *)NULL);
        if (g == GT_OK) {
            *commit = gt_xstrdup(trim(out));
            rc = GT_OK;
        } else if (g == GT_EAGAIN || g == GT_ETIMEDOUT) {
            /* canceled or out of time: not an answer about the reference */
            rc = gt_error_set(err, g, "%s", why.message);
        }
        free(out);
        free(gd);
    }
    for (int i = 0; i < 3; i++)
        free(cands[i]);
    if (rc == GT_ENOTFOUND)
        gt_error_set(err, GT_ENOTFOUND, "reference \"%s\" not found in repository %s",
                     reference && reference[0] ? reference : "HEAD", shown_url);
    return rc;
}

/* Commits whose checked-out tree is kept per repository, to copy from; the least
 * recently used beyond this are removed. */
#define TREES_KEPT 8

static bool is_full_sha(const char *s)
{
    size_t n = 0;
    for (; s && isxdigit((unsigned char)s[n]); n++)
        ;
    return s && n == 40 && s[n] == '\0';
}

/* The commit reference names on the remote now, asked with one `git ls-remote` (no
 * fetch): the remote's HEAD, else the branch, else the (peeled) tag, as resolve() does.
 * GT_ENOTFOUND when the remote lists no such name (it may be an abbreviated SHA: the
 * caller fetches and asks the cache); another error when the remote cannot be asked. */
static gt_err ls_remote(const gt_run_options *o, gt_strv *env, const char *home,
                        const char *url, const char *shown, const char *reference, char **sha,
                        gt_error *err)
{
    bool head = reference == NULL || reference[0] == '\0';
    char *want[3] = {0};    /* in order of preference */
    if (head) {
        want[0] = gt_xstrdup("HEAD");
    } else {
        want[0] = gt_xasprintf("refs/heads/%s", reference);
        want[1] = gt_xasprintf("refs/tags/%s^{}", reference);
        want[2] = gt_xasprintf("refs/tags/%s", reference);
    }
    char *what = gt_xasprintf("fetching %s", shown); /* what users know it as */
    char *out = NULL;
    gt_err rc = head ? git(o, env, home, what, &out, err, "ls-remote", "--end-of-options", url,
                           "HEAD", (char *)NULL)
                     : git(o, env, home, what, &out, err, "ls-remote", "--end-of-options", url,
                           want[0], want[1], want[2], (char *)NULL);
    int best = 3;
    char found[41] = "";
    for (char *line = out, *next; rc == GT_OK && line && *line; line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        char *tab = strchr(line, '\t');
        if (tab == NULL || tab - line != 40)
            continue;
        *tab = '\0';
        for (int i = 0; i < best && want[i]; i++) {
            if (strcmp(trim(tab + 1), want[i]) == 0 && is_full_sha(line)) {
                snprintf(found, sizeof found, "%s", line);
                best = i;
            }
        }
    }
    if (rc == GT_OK && found[0] == '\0')
        rc = GT_ENOTFOUND;
    else if (rc == GT_OK)
        *sha = gt_xstrdup(found);
    free(out);
    free(what);
    for (int i = 0; i < 3; i++)
        free(want[i]);
    return rc;
}

/* Copies the tree at from (a directory of regular files, directories and symlinks, as
 * git checks out) to to, which is created. Modes are kept; nothing is linked, so what
 * a run writes in its copy never reaches the cached tree. */
static gt_err copy_tree(const char *from, const char *to, gt_error *err)
{
    struct stat st;
    if (lstat(from, &st) != 0)
        return gt_error_set(err, GT_EIO, "%s: %s", from, strerror(errno));
    if (S_ISLNK(st.st_mode)) {
        char target[PATH_MAX];
        ssize_t n = readlink(from, target, sizeof target - 1);
        if (n < 0)
            return gt_error_set(err, GT_EIO, "%s: %s", from, strerror(errno));
        target[n] = '\0';
        if (symlink(target, to) != 0)
            return gt_error_set(err, GT_EIO, "%s: %s", to, strerror(errno));
        return GT_OK;
    }
    if (S_ISREG(st.st_mode)) {
        gt_err rc = GT_OK;
        int in = open(from, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        int out = in < 0 ? -1 : open(to, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, st.st_mode & 0777);
        if (in < 0 || out < 0) {
            rc = gt_error_set(err, GT_EIO, "%s: %s", in < 0 ? from : to, strerror(errno));
            goto file_done;
        }
        char buf[65536];
        for (ssize_t n; (n = read(in, buf, sizeof buf)) != 0;) {
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0) {
                rc = gt_error_set(err, GT_EIO, "%s: %s", from, strerror(errno));
                break;
            }
            for (ssize_t off = 0; off < n;) {
                ssize_t w = write(out, buf + off, (size_t)(n - off));
                if (w < 0 && errno == EINTR)
                    continue;
                if (w < 0) {
                    rc = gt_error_set(err, GT_EIO, "%s: %s", to, strerror(errno));
                    goto file_done;
                }
                off += w;
            }
        }
    file_done:
        if (in >= 0)
            close(in);
        if (out >= 0)
            close(out);
        return rc;
    }
    if (!S_ISDIR(st.st_mode))
        return gt_error_set(err, GT_EIO, "%s: not a file, directory or symlink", from);
    if (mkdir(to, 0700) != 0 && errno != EEXIST)
        return gt_error_set(err, GT_EIO, "%s: %s", to, strerror(errno));
    DIR *d = opendir(from);
    if (d == NULL)
        return gt_error_set(err, GT_EIO, "%s: %s", from, strerror(errno));
    gt_err rc = GT_OK;
    for (struct dirent *de; rc == GT_OK && (de = readdir(d)) != NULL;) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        char *a = gt_path_join(from, de->d_name), *b = gt_path_join(to, de->d_name);
        rc = copy_tree(a, b, err);
        free(a);
        free(b);
    }
    closedir(d);
    if (rc == GT_OK && chmod(to, st.st_mode & 0777) != 0)
        rc = gt_error_set(err, GT_EIO, "%s: %s", to, strerror(errno));
    return rc;
}

/* Keeps the TREES_KEPT most recently used trees of one repository (the caller holds
 * its lock exclusively) and removes what an interrupted build left. */
static void evict_trees(const char *trees)
{
    DIR *d = opendir(trees);
    if (d == NULL)
        return;
    struct { char *path; int64_t used; } keep[TREES_KEPT + 1];
    int n = 0;
    for (struct dirent *de; (de = readdir(d)) != NULL;) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        char *path = gt_path_join(trees, de->d_name);
        struct stat st;
        if (!is_full_sha(de->d_name) || lstat(path, &st) != 0) {
            gt_rm_rf(path, NULL); /* a build's leftover: only the lock holder builds */
            free(path);
            continue;
        }
        keep[n].path = path;
        keep[n].used = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
        /* insertion, newest first; the one past the bound is removed */
        for (int i = n; i > 0 && keep[i].used > keep[i - 1].used; i--) {
            __typeof__(keep[0]) t = keep[i];
            keep[i] = keep[i - 1];
            keep[i - 1] = t;
        }
        if (++n > TREES_KEPT) {
            gt_rm_rf(keep[TREES_KEPT].path, NULL);
            free(keep[TREES_KEPT].path);
            n = TREES_KEPT;
        }
    }
    closedir(d);
    for (int i = 0; i < n; i++)
        free(keep[i].path);
}

/* Takes the repository's lock as how (LOCK_SH to copy a cached tree, LOCK_EX to fetch
 * and build one), replacing what *fd held. */
static gt_err lock_repo(const char *lock_path, int *fd, int how, gt_error *err)
{
    if (*fd < 0)
        *fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (*fd < 0 || flock(*fd, how) != 0)
        return gt_error_set(err, GT_EIO, "%s: %s", lock_path, strerror(errno));
    return GT_OK;
}

/* Where the commit a reference last resolved to is remembered, for [runner]
 * reference_max_age: <repos>/<url hash>.refs/<reference hash>. Caller frees. */
static char *ref_stamp_path(const char *refs_dir, const char *reference)
{
    const char *ref = reference ? reference : "";
    char h[65];
    gt_sha256_hex(ref, strlen(ref), h);
    h[32] = '\0';
    return gt_path_join(refs_dir, h);
}

/* The commit remembered for the reference when it was resolved less than max_age_ms
 * ago, else NULL. Caller frees. */
static char *ref_stamp_read(const char *path, int64_t max_age_ms)
{
    struct stat st;
    if (max_age_ms <= 0 || lstat(path, &st) != 0 || !S_ISREG(st.st_mode))
        return NULL;
    int64_t at = (int64_t)st.st_mtim.tv_sec * 1000 + st.st_mtim.tv_nsec / 1000000;
    int64_t age = gt_now_ms() - at;
    if (age < 0 || age >= max_age_ms)
        return NULL;
    char *text = NULL;
    if (gt_read_file(path, 64, &text, NULL, NULL) != GT_OK)
        return NULL;
    trim(text);
    if (!is_full_sha(text)) {
        free(text);
        return NULL;
    }
    return text;
}

/* Remembers sha for the reference (best effort, not synced: a stamp lost in a crash only
 * means asking the remote once more). */
static void ref_stamp_write(const char *refs_dir, const char *path, const char *sha)
{
    if (gt_mkdir_p(refs_dir, 0700, NULL) != GT_OK)
        return;
    char *tmp = gt_xasprintf("%s/.tmp-XXXXXX", refs_dir);
    int fd = mkstemp(tmp);
    if (fd >= 0) {
        char line[42];
        int n = snprintf(line, sizeof line, "%s\n", sha);
        bool ok = write(fd, line, (size_t)n) == n;
        close(fd);
        if (!ok || rename(tmp, path) != 0)
            unlink(tmp);
    }
    free(tmp);
}

gt_err gt_repo_checkout(const gt_run_options *o, const char *url, const char *reference,
                        const char *ssh_key, const char *dest, char **commit, gt_error *err)
{
    gt_err rc = GT_OK;
    gt_strv env = {0};
    char hash[65];
    gt_sha256_hex(url, strlen(url), hash);
    hash[24] = '\0';
    char *shown = gt_repo_url_mask(url);
    char *cache_dir = gt_path_join(o->working_dir, "repos");
    char *gitdir = gt_xasprintf("%s/%s.git", cache_dir, hash);
    char *trees = gt_xasprintf("%s/%s.trees", cache_dir, hash);
    char *refs = gt_xasprintf("%s/%s.refs", cache_dir, hash);
    char *stamp = NULL;
    char *gd = gt_xasprintf("--git-dir=%s", gitdir);
    char *lock_path = gt_xasprintf("%s/%s.lock", cache_dir, hash);
    char *key_path = NULL;
    char *known_hosts = gt_path_join(o->working_dir, "known_hosts");
    char *index = gt_xasprintf("%s.index", dest);
    char *home = gt_xasprintf("%s.home", dest);
    char *sha = NULL, *what = NULL, *wt = NULL, *tree = NULL, *tmp = NULL;
    int lock_fd = -1;

    /* Repositories stored before URLs were checked this strictly are refused here. */
    if ((rc = gt_repo_url_check(url, NULL, err)) != GT_OK)
        goto done;
    if (!o->allow_http && strncmp(url, "http://", 7) == 0) {
        rc = gt_error_set(err, GT_EPERM, "repository %s is fetched over plain http://, which "
                          "this runner does not allow ([runner] allow_http_repositories = "
                          "false); use https:// or ssh", shown);
        goto done;
    }
    if ((rc = gt_mkdir_p(trees, 0700, err)) != GT_OK)
        goto done;
    if ((rc = gt_rm_rf(home, err)) != GT_OK || (rc = gt_mkdir_p(home, 0700, err)) != GT_OK)
        goto done;
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
    git_env(o, home, key_path, known_hosts, &env);

    /* The commit the reference names now: a full SHA names itself; anything else the
     * remote is asked about on every run (ls-remote, no fetch), so a run always sees
     * the code at its reference -- or, with [runner] reference_max_age, the commit it
     * resolved to less than that long ago. A tree already checked out for that commit
     * is copied; only a commit not seen before is fetched and checked out, under the
     * exclusive lock. */
    if (is_full_sha(reference)) {
        sha = gt_xstrdup(reference);
        for (char *p = sha; *p; p++)
            *p = (char)tolower((unsigned char)*p);
    } else {
        if (o->reference_max_age_ms > 0) {
            stamp = ref_stamp_path(refs, reference);
            sha = ref_stamp_read(stamp, o->reference_max_age_ms);
        }
        if (sha == NULL) {
            rc = ls_remote(o, &env, home, url, shown, reference, &sha, err);
            if (rc != GT_OK && rc != GT_ENOTFOUND)
                goto done;
            if (rc == GT_OK && stamp)
                ref_stamp_write(refs, stamp, sha);
        }
    }
    rc = GT_OK;
    if (sha) {
        tree = gt_path_join(trees, sha);
        if ((rc = lock_repo(lock_path, &lock_fd, LOCK_SH, err)) != GT_OK)
            goto done;
        if (gt_file_exists(tree)) {
            utimensat(AT_FDCWD, tree, NULL, 0); /* recently used: kept by evict_trees */
            rc = copy_tree(tree, dest, err);
            if (rc == GT_OK) {
                *commit = sha;
                sha = NULL;
            }
            goto done;
        }
    }
    if ((rc = lock_repo(lock_path, &lock_fd, LOCK_EX, err)) != GT_OK)
        goto done;

    /* --template= (empty): no sample hooks or other template files in the cache */
    if (!gt_file_exists(gitdir) &&
        (rc = git(o, &env, home, "git init", NULL, err, "init", "--quiet", "--bare",
                  "--template=", gitdir, (char *)NULL)) != GT_OK)
        goto done;
    if ((rc = reset_cache(gitdir, err)) != GT_OK)
        goto done;
    what = gt_xasprintf("fetching %s", shown);
    free(sha);
    sha = NULL;
    /* the fetched refs decide (a push since ls-remote wins); a full SHA is asked as is */
    if ((rc = git(o, &env, home, what, NULL, err, gd, "fetch", "--quiet", "--prune", "--force",
                  "--no-tags", "--end-of-options", url, "+HEAD:refs/gantry/HEAD",
                  "+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*",
                  (char *)NULL)) != GT_OK ||
        (rc = resolve(o, &env, home, gitdir, shown, reference, &sha, err)) != GT_OK)
        goto done;
    if (stamp)
        ref_stamp_write(refs, stamp, sha);
    free(tree);
    tree = gt_path_join(trees, sha);
    if (!gt_file_exists(tree)) {
        /* Check out into a directory of its own with an index of its own (the cache
         * stays bare), then rename it into place: a tree is complete or absent. */
        tmp = gt_xasprintf("%s/.build-%s", trees, sha);
        wt = gt_xasprintf("--work-tree=%s", tmp);
        gt_strv_push_owned(&env, gt_xasprintf("GIT_INDEX_FILE=%s", index));
        if ((rc = gt_rm_rf(tmp, err)) != GT_OK || (rc = gt_mkdir_p(tmp, 0700, err)) != GT_OK ||
            (rc = git(o, &env, home, "git read-tree", NULL, err, gd, wt, "read-tree", sha,
                      (char *)NULL)) != GT_OK ||
            (rc = git(o, &env, home, "git checkout-index", NULL, err, gd, wt, "checkout-index",
                      "-a", "-f", (char *)NULL)) != GT_OK)
            goto done;
        if (rename(tmp, tree) != 0) {
            rc = gt_error_set(err, GT_EIO, "%s: %s", tree, strerror(errno));
            goto done;
        }
        evict_trees(trees);
    }
    if ((rc = copy_tree(tree, dest, err)) != GT_OK)
        goto done;
    *commit = sha;
    sha = NULL;
done:
    if (rc != GT_OK && err)
        scrub_password(err->message, sizeof err->message, url);
    if (tmp)
        gt_rm_rf(tmp, NULL);
    if (lock_fd >= 0)
        close(lock_fd); /* releases the flock */
    if (key_path)
        unlink(key_path);
    unlink(index);
    gt_rm_rf(home, NULL);
    free(tmp);
    free(tree);
    free(wt);
    free(what);
    free(sha);
    free(home);
    free(index);
    free(known_hosts);
    free(key_path);
    free(lock_path);
    free(gd);
    free(stamp);
    free(refs);
    free(trees);
    free(gitdir);
    free(cache_dir);
    free(shown);
    gt_strv_free(&env);
    return rc;
}
