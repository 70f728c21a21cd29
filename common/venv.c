#include "venv.h"

#include <dirent.h>
#include <errno.h>
#include <ctype.h>
#include <limits.h>
#include <stdio.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "crypto.h"
#include "log.h"
#include "run.h"
#include "sandbox.h"
#include "util.h"

static void pip_options(const gt_run_options *o, gt_strv *argv)
{
    if (o->pip_no_index)
        gt_strv_push(argv, "--no-index");
    if (o->pip_index_url && o->pip_index_url[0]) {
        gt_strv_push(argv, "--index-url");
        gt_strv_push(argv, o->pip_index_url);
    }
    if (o->pip_extra_index_url && o->pip_extra_index_url[0]) {
        gt_strv_push(argv, "--extra-index-url");
        gt_strv_push(argv, o->pip_extra_index_url);
    }
    if (o->pip_find_links && o->pip_find_links[0]) {
        gt_strv_push(argv, "--find-links");
        gt_strv_push(argv, o->pip_find_links);
    }
    if (o->pip_trusted_host && o->pip_trusted_host[0]) {
        gt_strv_push(argv, "--trusted-host");
        gt_strv_push(argv, o->pip_trusted_host);
    }
}


/* ---------- what a requirements file references ---------- */

#define MAX_INCLUDE_DEPTH 8     /* -r inside -r inside ... */
#define MAX_TREE_DEPTH 32       /* directories (and symlinks to them) inside a package */
#define MAX_FILES 100000        /* files hashed for one venv key */

typedef struct scan {
    const char *root;           /* the checkout, resolved */
    const char *cwd;            /* where pip runs */
    EVP_MD_CTX *md;
    size_t files;
    gt_error *err;
} scan;

static void feed(scan *sc, const void *p, size_t n)
{
    EVP_DigestUpdate(sc->md, p, n);
}

static void feedf(scan *sc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void feedf(scan *sc, const char *fmt, ...)
{
    char buf[PATH_MAX + 256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n > 0)
        feed(sc, buf, (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1);
}

/* real (resolved) relative to the checkout: what goes into the key, so that the same
 * content checked out under another scratch directory gives the same key. */
static const char *rel_to_root(const scan *sc, const char *real)
{
    size_t n = strlen(sc->root);
    return real[n] == '/' ? real + n + 1 : real + n;
}

static gt_err hash_file(scan *sc, const char *real, const char *name, const struct stat *st)
{
    if (++sc->files > MAX_FILES)
        return gt_error_set(sc->err, GT_EINVAL, "requirements: more than %d files to read",
                            MAX_FILES);
    FILE *f = fopen(real, "rb");
    if (f == NULL)
        return gt_error_set(sc->err, GT_EIO, "requirements: %s: %s", name, strerror(errno));
    feedf(sc, "F %s %o %lld\n", name, (unsigned)(st->st_mode & 0777), (long long)st->st_size);
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0)
        feed(sc, buf, n);
    bool bad = ferror(f);
    fclose(f);
    return bad ? gt_error_set(sc->err, GT_EIO, "requirements: cannot read %s", name) : GT_OK;
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Hashes dir (resolved, inside the checkout) in a stable order: names sorted, each
 * entry's kind, path, mode and content. A symlink is followed only when it resolves
 * inside the checkout (what pip would copy into a build); one leading out refuses the
 * requirement, since pip would read its target for the run. */
static gt_err hash_tree(scan *sc, const char *dir, const char *what, int depth)
{
    if (depth > MAX_TREE_DEPTH)
        return gt_error_set(sc->err, GT_EINVAL, "requirement \"%s\": directories nested more "
                            "than %d deep (a symlink loop?)", what, MAX_TREE_DEPTH);
    gt_strv names = {0};
    gt_err rc = GT_OK;
    DIR *d = opendir(dir);
    if (d == NULL)
        return gt_error_set(sc->err, GT_EIO, "requirement \"%s\": %s", what, strerror(errno));
    for (struct dirent *de; (de = readdir(d)) != NULL;)
        if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
            gt_strv_push(&names, de->d_name);
    closedir(d);
    if (names.n)
        qsort(names.v, names.n, sizeof names.v[0], cmp_names);
    feedf(sc, "D %s\n", rel_to_root(sc, dir));
    for (size_t i = 0; i < names.n && rc == GT_OK; i++) {
        char *path = gt_path_join(dir, names.v[i]);
        char *real = NULL;
        struct stat st;
        if (lstat(path, &st) != 0) {
            rc = gt_error_set(sc->err, GT_EIO, "requirement \"%s\": %s: %s", what,
                              rel_to_root(sc, path), strerror(errno));
        } else if (S_ISLNK(st.st_mode)) {
            char target[PATH_MAX];
            ssize_t n = readlink(path, target, sizeof target - 1);
            target[n > 0 ? n : 0] = '\0';
            char *shown = gt_xasprintf("requirement %s: file", what);
            rc = gt_run_path_inside(sc->root, sc->root, rel_to_root(sc, path), GT_PATH_ANY, shown,
                                    &real, sc->err);
            free(shown);
            if (rc == GT_OK && stat(real, &st) == 0) {
                feedf(sc, "L %s -> %s\n", rel_to_root(sc, path), target);
                rc = S_ISDIR(st.st_mode) ? hash_tree(sc, real, what, depth + 1)
                                         : hash_file(sc, real, rel_to_root(sc, path), &st);
            }
        } else if (S_ISDIR(st.st_mode)) {
            rc = hash_tree(sc, path, what, depth + 1);
        } else if (S_ISREG(st.st_mode)) {
            rc = hash_file(sc, path, rel_to_root(sc, path), &st);
        } else {
            rc = gt_error_set(sc->err, GT_EPERM, "requirement \"%s\": %s is not a file or a "
                              "directory", what, rel_to_root(sc, path));
        }
        free(real);
        free(path);
    }
    gt_strv_free(&names);
    return rc;
}

/* A local path a requirement or option names: inside the checkout, then hashed. base
 * is the directory relative paths start from. */
static gt_err local_path(scan *sc, const char *base, const char *path, const char *what)
{
    char *real = NULL;
    struct stat st;
    if (path[0] == '~')
        return gt_error_set(sc->err, GT_EPERM, "%s \"%s\" points outside the repository", what,
                            path);
    gt_err rc = gt_run_path_inside(sc->root, base, path, GT_PATH_ANY, what, &real, sc->err);
    if (rc == GT_OK && stat(real, &st) != 0)
        rc = gt_error_set(sc->err, GT_EIO, "%s \"%s\": %s", what, path, strerror(errno));
    if (rc == GT_OK)
        rc = S_ISDIR(st.st_mode) ? hash_tree(sc, real, path, 0)
                                 : hash_file(sc, real, rel_to_root(sc, real), &st);
    free(real);
    return rc;
}

/* The path of a file: URL (file:///p, file://localhost/p, file:p), percent-decoded;
 * NULL when another host is named. Caller frees. */
static char *file_url_path(const char *url)
{
    const char *p = url + 5;
    if (strncmp(p, "//", 2) == 0) {
        p += 2;
        if (strncmp(p, "localhost/", 10) == 0)
            p += 9;
        else if (*p != '/')
            return NULL;
    }
    gt_buf b = {0};
    for (; *p; p++) {
        if (p[0] == '%' && isxdigit((unsigned char)p[1]) && isxdigit((unsigned char)p[2])) {
            char hex[3] = {p[1], p[2], 0};
            char c = (char)strtol(hex, NULL, 16);
            gt_buf_append(&b, &c, 1);
            p += 2;
        } else {
            gt_buf_append(&b, p, 1);
        }
    }
    return b.data ? gt_buf_steal(&b) : gt_xstrdup("");
}

static bool has_scheme(const char *s, const char **colon)
{
    const char *p = s;
    while (isalnum((unsigned char)*p) || *p == '+' || *p == '-' || *p == '.')
        p++;
    *colon = p;
    return p != s && isalpha((unsigned char)s[0]) && *p == ':';
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* A location pip would read: a URL (http(s) and VCS over the network are fine, their
 * content is not local), a file: URL or a path. Local ones must be in the checkout
 * and are hashed. */
static gt_err location(scan *sc, const char *base, const char *loc, const char *what)
{
    const char *colon;
    if (has_scheme(loc, &colon) && colon - loc > 1) { /* "C:" is not a scheme here */
        size_t n = (size_t)(colon - loc);
        if (n == 4 && strncmp(loc, "file", 4) == 0) {
            char *path = file_url_path(loc);
            gt_err rc = path ? local_path(sc, base, path, what)
                             : gt_error_set(sc->err, GT_EPERM, "%s \"%s\" names another host",
                                            what, loc);
            free(path);
            return rc;
        }
        /* git+file://, hg+file:// ...: a local repository outside the checkout */
        if (n > 5 && strncmp(colon - 5, "+file", 5) == 0)
            return gt_error_set(sc->err, GT_EPERM, "%s \"%s\" points outside the repository",
                                what, loc);
        return GT_OK;
    }
    return local_path(sc, base, loc, what);
}

static bool looks_like_path(const char *cwd, const char *spec)
{
    static const char *const archives[] = {".whl", ".zip", ".tar.gz", ".tgz", ".tar", ".tar.bz2",
                                           ".tbz", ".tar.xz", ".txz", ".tlz", ".tar.lz",
                                           ".tar.lzma", NULL};
    if (spec[0] == '.' || spec[0] == '/' || spec[0] == '~' || strchr(spec, '/'))
        return true;
    for (size_t i = 0; archives[i]; i++) {
        if (ends_with(spec, archives[i])) {
            char *p = gt_path_join(cwd, spec);
            struct stat st;
            bool yes = lstat(p, &st) == 0;
            free(p);
            return yes;
        }
    }
    return false;
}

/* One requirement: "name[extras] >= 1; marker", "name @ URL", a URL, or a path. */
static gt_err requirement(scan *sc, char *spec)
{
    char *semi = strstr(spec, " ;");
    if (semi == NULL && strstr(spec, "://") == NULL)
        semi = strchr(spec, ';');
    if (semi)
        *semi = '\0'; /* environment markers */
    size_t n = strlen(spec);
    while (n && isspace((unsigned char)spec[n - 1]))
        spec[--n] = '\0';
    char *at = strstr(spec, " @ ");
    if (at)
        return location(sc, sc->cwd, at + 3 + strspn(at + 3, " "), "requirement");
    const char *colon;
    if (has_scheme(spec, &colon) && colon - spec > 1)
        return location(sc, sc->cwd, spec, "requirement");
    if (!looks_like_path(sc->cwd, spec))
        return GT_OK; /* a project from the index */
    char *br = strchr(spec, '[');
    if (br && ends_with(spec, "]"))
        *br = '\0'; /* ./pkg[extra] */
    return location(sc, sc->cwd, spec, "requirement");
}

static gt_err scan_file(scan *sc, const char *real, int depth);

/* One option line: "-r f", "-rf", "--requirement=f", "--requirement f". */
static gt_err option(scan *sc, const char *file_dir, char **tok, size_t ntok, int depth)
{
    static const struct {
        const char *shrt, *lng;
        char kind; /* r: requirements file, e: editable, l: location, -: no path */
    } opts[] = {{"-r", "--requirement", 'r'}, {"-c", "--constraint", 'r'},
                {"-e", "--editable", 'e'},    {"-f", "--find-links", 'l'},
                {"-i", "--index-url", 'l'},   {NULL, "--extra-index-url", 'l'}};
    const char *t = tok[0], *value = NULL;
    char kind = '-';
    for (size_t i = 0; i < sizeof opts / sizeof opts[0] && kind == '-'; i++) {
        size_t ln = strlen(opts[i].lng);
        if (opts[i].shrt && strncmp(t, opts[i].shrt, 2) == 0 && t[1] != '-') {
            kind = opts[i].kind;
            value = t[2] ? t + 2 + (t[2] == '=') : (ntok > 1 ? tok[1] : NULL);
        } else if (strncmp(t, opts[i].lng, ln) == 0 && (t[ln] == '\0' || t[ln] == '=')) {
            kind = opts[i].kind;
            value = t[ln] == '=' ? t + ln + 1 : (ntok > 1 ? tok[1] : NULL);
        }
    }
    if (kind == '-')
        return GT_OK; /* --hash, --pre, --no-binary ...: no file behind them */
    if (value == NULL || value[0] == '\0')
        return gt_error_set(sc->err, GT_EINVAL, "requirements: %s needs a value", t);
    if (kind == 'e') {
        const char *colon;
        if (!has_scheme(value, &colon) || colon - value <= 1 ||
            strncmp(value, "file:", 5) == 0)
            /* the checkout is removed after the run: the venv would point at nothing */
            return gt_error_set(sc->err, GT_EINVAL, "requirements: \"-e %s\": editable installs "
                                "of local paths are not supported (each run has a new checkout); "
                                "install the path without -e", value);
        return location(sc, sc->cwd, value, "requirement");
    }
    if (kind == 'l') {
        /* pip tries find-links relative to the requirements file first, then cwd */
        char *p = gt_path_join(file_dir, value);
        struct stat st;
        bool rel_file = value[0] != '/' && strstr(value, ":") == NULL && lstat(p, &st) == 0;
        free(p);
        return location(sc, rel_file ? file_dir : sc->cwd, value, "pip option location");
    }
    /* -r / -c: a nested requirements file, relative to the one that names it */
    const char *colon;
    if (has_scheme(value, &colon) && colon - value > 1 && strncmp(value, "file:", 5) != 0)
        return gt_error_set(sc->err, GT_EPERM, "requirements: \"%s %s\": a requirements file "
                            "may include only files in the repository", t, value);
    char *path = strncmp(value, "file:", 5) == 0 ? file_url_path(value) : gt_xstrdup(value);
    char *real = NULL;
    gt_err rc = path ? gt_run_path_inside(sc->root, file_dir, path, GT_PATH_FILE,
                                          "requirements file", &real, sc->err)
                     : gt_error_set(sc->err, GT_EPERM, "requirements: \"%s\" names another host",
                                    value);
    if (rc == GT_OK)
        rc = scan_file(sc, real, depth + 1);
    free(real);
    free(path);
    return rc;
}

/* Reads a requirements file (resolved, inside the checkout) the way pip does — lines
 * joined at a trailing backslash, comments dropped — checks what each line names and
 * feeds the text and every local thing it references into the key. */
static gt_err scan_file(scan *sc, const char *real, int depth)
{
    if (depth > MAX_INCLUDE_DEPTH)
        return gt_error_set(sc->err, GT_EINVAL, "requirements: -r/-c nested more than %d deep",
                            MAX_INCLUDE_DEPTH);
    char *text = NULL;
    size_t len = 0;
    gt_err rc = gt_read_file(real, 1 << 20, &text, &len, sc->err);
    if (rc != GT_OK)
        return rc;
    feedf(sc, "R %s %zu\n", rel_to_root(sc, real), len);
    feed(sc, text, len);
    char *dir = gt_xstrdup(real);
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = '\0';
    gt_buf line = {0};
    for (char *p = text; rc == GT_OK && p && *p;) {
        char *nl = strchr(p, '\n');
        size_t n = nl ? (size_t)(nl - p) : strlen(p);
        if (n && p[n - 1] == '\r')
            n--;
        bool cont = n && p[n - 1] == '\\';
        gt_buf_append(&line, p, cont ? n - 1 : n);
        p = nl ? nl + 1 : NULL;
        if (cont && p)
            continue;
        /* "# comment", or " #" after something */
        char *l = line.data ? line.data : (char *)"";
        for (char *h = l; (h = strchr(h, '#')) != NULL; h++)
            if (h == l || isspace((unsigned char)h[-1])) {
                *h = '\0';
                break;
            }
        gt_strv tok = {0};
        for (char *save = NULL, *t = strtok_r(l, " \t", &save); t; t = strtok_r(NULL, " \t", &save))
            gt_strv_push(&tok, t);
        if (tok.n && tok.v[0][0] == '-') {
            rc = option(sc, dir, tok.v, tok.n, depth);
        } else if (tok.n) {
            /* a requirement is everything before its per-requirement options */
            gt_buf spec = {0};
            for (size_t i = 0; i < tok.n && tok.v[i][0] != '-'; i++)
                gt_buf_printf(&spec, "%s%s", i ? " " : "", tok.v[i]);
            rc = requirement(sc, spec.data);
            gt_buf_free(&spec);
        }
        gt_strv_free(&tok);
        gt_buf_free(&line);
    }
    gt_buf_free(&line);
    free(dir);
    free(text);
    return rc;
}

/* ---------- the venv ---------- */

gt_err gt_venv_key(const gt_run_options *o, const char *repo_id, const char *requirements,
                   const char *root, const char *cwd, char key[25], gt_error *err)
{
    char real_root[PATH_MAX], real_cwd[PATH_MAX], *real = NULL;
    gt_strv opts = {0};
    gt_err rc;
    if (realpath(root, real_root) == NULL || realpath(cwd, real_cwd) == NULL)
        return gt_error_set(err, GT_EIO, "checkout %s: %s", root, strerror(errno));
    scan sc = {.root = real_root, .cwd = real_cwd, .err = err, .md = EVP_MD_CTX_new()};
    if (sc.md == NULL || !EVP_DigestInit_ex(sc.md, EVP_sha256(), NULL)) {
        rc = gt_error_set(err, GT_ENOMEM, "sha256: cannot start a digest");
        goto done;
    }
    if ((rc = gt_run_path_inside(real_root, real_root, requirements, GT_PATH_FILE,
                                 "requirements file", &real, err)) != GT_OK)
        goto done;
    /* The key: repository, interpreter and pip options, then the requirements and all
     * they reference. Each part is length- or line-delimited, so no two inputs meet. */
    pip_options(o, &opts);
    feedf(&sc, "gantry-venv 2\nrepo %zu\n", strlen(repo_id ? repo_id : ""));
    if (repo_id)
        feed(&sc, repo_id, strlen(repo_id));
    feedf(&sc, "\npython %s\ncwd %s\n", o->python ? o->python : "python3",
          rel_to_root(&sc, real_cwd));
    for (size_t i = 0; i < opts.n; i++)
        feedf(&sc, "opt %s\n", opts.v[i]);
    if ((rc = scan_file(&sc, real, 0)) != GT_OK)
        goto done;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (!EVP_DigestFinal_ex(sc.md, md, &mdlen) || mdlen < 12) {
        rc = gt_error_set(err, GT_EINTERNAL, "sha256: digest failed");
        goto done;
    }
    for (unsigned i = 0; i < 12; i++)
        snprintf(key + 2 * i, 3, "%02x", md[i]);
done:
    EVP_MD_CTX_free(sc.md);
    gt_strv_free(&opts);
    free(real);
    return rc;
}

/* Takes write permission from group and others on every entry of the tree (symlinks
 * are left alone: their mode means nothing). */
static gt_err no_group_write(const char *dir, gt_error *err)
{
    gt_err rc = GT_OK;
    DIR *d = opendir(dir);
    struct stat st;
    if (d == NULL || stat(dir, &st) != 0 || chmod(dir, st.st_mode & 07755) != 0) {
        rc = gt_error_set(err, GT_EIO, "%s: %s", dir, strerror(errno));
        goto done;
    }
    for (struct dirent *de; rc == GT_OK && (de = readdir(d)) != NULL;) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        char *p = gt_path_join(dir, de->d_name);
        if (lstat(p, &st) != 0)
            rc = gt_error_set(err, GT_EIO, "%s: %s", p, strerror(errno));
        else if (S_ISDIR(st.st_mode))
            rc = no_group_write(p, err);
        else if (!S_ISLNK(st.st_mode) && (st.st_mode & 022) && chmod(p, st.st_mode & 07755) != 0)
            rc = gt_error_set(err, GT_EIO, "%s: %s", p, strerror(errno));
        free(p);
    }
done:
    if (d)
        closedir(d);
    return rc;
}

gt_err gt_venv_ensure(const gt_run_options *o, const char *repo_id, const char *requirements,
                      const char *root, const char *cwd, char **dir, gt_error *err)
{
    gt_err rc = GT_OK;
    char *venvs = gt_path_join(o->working_dir, "venvs");
    char *path = NULL, *lock_path = NULL, *ready = NULL, *pybin = NULL;
    gt_strv argv = {0}, env = {0}, opts = {0};
    int lock_fd = -1;
    char hash[25];

    if ((rc = gt_venv_key(o, repo_id, requirements, root, cwd, hash, err)) != GT_OK)
        goto done;
    pip_options(o, &opts);
    path = gt_xasprintf("%s/%s", venvs, hash);
    lock_path = gt_xasprintf("%s.lock", path);
    ready = gt_xasprintf("%s/.gantry-ready", path);
    pybin = gt_xasprintf("%s/bin/python", path);
    if ((rc = gt_mkdir_p(venvs, 0700, err)) != GT_OK)
        goto done;
    lock_fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (lock_fd < 0 || flock(lock_fd, LOCK_EX) != 0) {
        rc = gt_error_set(err, GT_EIO, "%s: %s", lock_path, strerror(errno));
        goto done;
    }
    if (gt_file_exists(ready))
        goto done;
    /* A half-built venv (a run killed mid-install) is rebuilt from scratch. */
    if ((rc = gt_rm_rf(path, err)) != GT_OK)
        goto done;
    gt_info("building python virtual environment %s", path);
    /* python -m venv and pip run the repository's code (setup.py): in the sandbox, seeing
     * only the new venv and this run's own checkout (writable: pip builds local packages
     * in place; the checkout is the run's and is thrown away after it) */
    if ((rc = gt_mkdir_p(path, 0700, err)) != GT_OK)
        goto fail;
    char *rw[] = {path, (char *)root, NULL}, *ro[] = {NULL, NULL};
    if (o->pip_find_links && o->pip_find_links[0] == '/' && gt_file_exists(o->pip_find_links))
        ro[0] = (char *)o->pip_find_links;
    gt_sandbox sb = {.writable = rw, .readonly = ro};
    const gt_sandbox *in = o->sandbox_none ? NULL : &sb;
    gt_run_env_base(o, &env);
    gt_strv_push(&env, "PIP_DISABLE_PIP_VERSION_CHECK=1");
    gt_strv_push(&env, "PIP_NO_INPUT=1");
    gt_strv_push(&argv, o->python ? o->python : "python3");
    gt_strv_push(&argv, "-m");
    gt_strv_push(&argv, "venv");
    gt_strv_push(&argv, path);
    if ((rc = gt_run_tool_in(o, in, argv.v, env.v, cwd, "python -m venv", NULL, err)) != GT_OK)
        goto fail;
    gt_strv_free(&argv);
    gt_strv_push(&argv, pybin);
    gt_strv_push(&argv, "-m");
    gt_strv_push(&argv, "pip");
    gt_strv_push(&argv, "install");
    gt_strv_push(&argv, "--quiet");
    for (size_t i = 0; i < opts.n; i++)
        gt_strv_push(&argv, opts.v[i]);
    gt_strv_push(&argv, "-r");
    gt_strv_push(&argv, requirements);
    if ((rc = gt_run_tool_in(o, in, argv.v, env.v, cwd, "pip install -r requirements.txt", NULL,
                             err)) != GT_OK)
        goto fail;
    /* Runs use the venv; only Gantry changes it. */
    if ((rc = no_group_write(path, err)) != GT_OK ||
        (rc = gt_write_file_atomic(ready, "", 0, 0600, err)) != GT_OK)
        goto fail;
    goto done;
fail:
    gt_rm_rf(path, NULL);
done:
    if (rc == GT_OK) {
        *dir = path;
        path = NULL;
    }
    if (lock_fd >= 0)
        close(lock_fd);
    gt_strv_free(&opts);
    gt_strv_free(&argv);
    gt_strv_free(&env);
    free(pybin);
    free(ready);
    free(lock_path);
    free(path);
    free(venvs);
    return rc;
}
