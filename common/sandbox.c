/* The bubblewrap command line for a run, and the probe that says whether it can work.
 *
 * What a sandboxed run sees, in the order the mounts are made (later ones go on top):
 *   /            an empty tmpfs, made read-only once everything below is in place
 *   /tmp, HOME   private tmpfs each (mode 0700; size-capped when tmpfs_size is set);
 *                HOME is the passwd home of Gantry's uid (tools such as ssh look there)
 *   /usr         read-only, with /bin /sbin /lib /lib64 ... as the host has them
 *                (merged-/usr symlinks, or read-only binds on older layouts)
 *   /etc         only what programs need, read-only: users and groups, name resolution,
 *                TLS certificates, the dynamic loader's cache, time zone, alternatives,
 *                python3*, ansible, the ssh client's config (never host keys or shadow)
 *   /proc /dev   a /proc of its own pid namespace (no other process is visible) and a
 *                minimal /dev (null, zero, random, urandom, tty, shm, pts)
 *   the caller's writable and read-only directories, at their own paths
 * Nothing else of the host: not Gantry's working directory (store, key file, repository
 * cache, other runs), not /root, /home, /var, /run. Namespaces: user (no capabilities,
 * nested user namespaces disabled), pid, ipc, uts and cgroup; the network is shared.
 * --die-with-parent and a pid namespace mean nothing started inside outlives bwrap;
 * --new-session keeps a run off any terminal Gantry has. */
#include "sandbox.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "exec.h"

/* Files and directories of /etc a run may read (absent ones are skipped). */
static const char *const etc_files[] = {
    "/etc/passwd", "/etc/group", "/etc/nsswitch.conf", "/etc/host.conf", "/etc/hosts",
    "/etc/hostname", "/etc/resolv.conf", "/etc/gai.conf", "/etc/services", "/etc/protocols",
    "/etc/networks", "/etc/localtime", "/etc/timezone", "/etc/ld.so.cache",
    "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/alternatives", "/etc/ssl/certs",
    "/etc/ssl/openssl.cnf", "/etc/ca-certificates", "/etc/pki/tls/certs",
    "/etc/crypto-policies", "/etc/mime.types", "/etc/os-release", "/etc/debian_version",
    "/etc/lsb-release", "/etc/locale.alias", "/etc/shells", "/etc/ansible",
    "/etc/ssh/ssh_config", "/etc/ssh/ssh_config.d",
};

/* The top-level entries that merged /usr turns into symlinks. */
static const char *const usr_links[] = {"bin", "sbin", "lib", "lib32", "lib64", "libx32"};

/* Environment variables that the dynamic loader or libc act on in bwrap itself before it
 * hands them on (glibc's list of variables unsafe for privileged programs, plus
 * GLIBC_TUNABLES): they go to the child through --setenv instead. The secrets policy
 * never binds a secret to one of these names, so no secret value reaches an argv. */
static const char *const loader_vars[] = {
    "GCONV_PATH", "GETCONF_DIR", "GLIBC_TUNABLES", "HOSTALIASES", "LOCALDOMAIN", "LOCPATH",
    "MALLOC_TRACE", "NIS_PATH", "NLSPATH", "RESOLV_HOST_CONF", "RES_OPTIONS", "TZDIR",
};

#define FALLBACK_HOME "/home/gantry"
#define DEFAULT_PATH "/usr/local/bin:/usr/bin:/bin"

/* ---- the probe, once per process ---- */

static pthread_once_t probe_once = PTHREAD_ONCE_INIT;
static gt_error probe_err;
static char *probe_bwrap;
static bool probe_prlimit;
static char home_dir[PATH_MAX];

static bool under(const char *path, const char *dir)
{
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/')
        n--;
    return strncmp(path, dir, n) == 0 && (path[n] == '\0' || path[n] == '/');
}

/* A home directory that can be a tmpfs of its own: absolute, not /, and not a system
 * directory the sandbox shows or hides anyway. */
static bool home_usable(const char *h)
{
    static const char *const system[] = {"/usr", "/etc", "/proc", "/dev", "/tmp", "/bin",
                                         "/sbin", "/lib", "/lib64", "/sys"};
    if (h == NULL || h[0] != '/' || h[1] == '\0' || strlen(h) >= sizeof home_dir ||
        strstr(h, "/../") || strstr(h, "/./"))
        return false;
    for (size_t i = 0; i < sizeof system / sizeof system[0]; i++)
        if (under(h, system[i]))
            return false;
    return true;
}

static void find_home(void)
{
    struct passwd pw, *found = NULL;
    char buf[4096];
    const char *h = NULL;
    if (getpwuid_r(getuid(), &pw, buf, sizeof buf, &found) == 0 && found)
        h = found->pw_dir;
    snprintf(home_dir, sizeof home_dir, "%s", home_usable(h) ? h : FALLBACK_HOME);
    size_t n = strlen(home_dir);
    while (n > 1 && home_dir[n - 1] == '/')
        home_dir[--n] = '\0';
}

const char *gt_sandbox_home(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, find_home);
    return home_dir;
}

/* "1" / "0" from a /proc/sys file; -1 when absent or unreadable. */
static int read_sysctl(const char *path)
{
    FILE *f = fopen(path, "re");
    int v = -1;
    if (f) {
        if (fscanf(f, "%d", &v) != 1)
            v = -1;
        fclose(f);
    }
    return v;
}

/* The first line bwrap printed, without the "bwrap: " prefix. */
static void first_line(const char *s, char *out, size_t n)
{
    const char *p = strstr(s ? s : "", "bwrap: ");
    p = p ? p + 7 : (s ? s : "");
    size_t len = strcspn(p, "\n");
    if (len >= n)
        len = n - 1;
    memcpy(out, p, len);
    out[len] = '\0';
}

/* Why user namespaces do not work, from the sysctls that switch them off. */
static const char *userns_reason(void)
{
    struct stat st;
    if (stat("/proc/self/ns/user", &st) != 0)
        return "the kernel has no user namespaces (CONFIG_USER_NS)";
    if (read_sysctl("/proc/sys/user/max_user_namespaces") == 0)
        return "user namespaces are disabled (sysctl user.max_user_namespaces = 0)";
    if (getuid() != 0 && read_sysctl("/proc/sys/kernel/unprivileged_userns_clone") == 0)
        return "unprivileged user namespaces are disabled (sysctl "
               "kernel.unprivileged_userns_clone = 0)";
    if (getuid() != 0 &&
        read_sysctl("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == 1)
        return "AppArmor restricts unprivileged user namespaces (sysctl "
               "kernel.apparmor_restrict_unprivileged_userns = 1)";
    return NULL;
}

static void build(const gt_sandbox *sb, const char *bwrap, const char *cwd, int64_t nproc,
                  bool prlimit, int status_fd, const gt_strv *extra, char *const *cmd,
                  gt_strv *argv);

gt_err gt_sandbox_probe(const char *path, char **bwrap_out, gt_error *err)
{
    gt_err rc = GT_OK;
    char *bwrap = gt_exec_which("bwrap", path ? path : (getenv("PATH") ? getenv("PATH")
                                                                       : DEFAULT_PATH));
    gt_strv argv = {0};
    gt_exec_result res = {0};
    gt_error e = {0};
    char said[512] = "";
    char *const env[] = {"PATH=" DEFAULT_PATH, NULL};
    char *const cmd[] = {"/bin/true", NULL};

    if (bwrap_out)
        *bwrap_out = NULL;
    if (bwrap == NULL) {
        rc = gt_error_set(err, GT_EUNAVAIL,
                          "runs are sandboxed with bubblewrap, and \"bwrap\" is not installed "
                          "(Debian package bubblewrap); install it, or set [runner] sandbox = "
                          "none to run without isolation");
        goto done;
    }
    /* The same options as a real run, around /bin/true. */
    gt_sandbox none = {0};
    build(&none, bwrap, NULL, 0, false, -1, NULL, cmd, &argv);
    gt_exec_spec spec = {
        .file = argv.v[0],
        .argv = argv.v,
        .envp = env,
        .timeout_ms = 30000,
        .kill_grace_ms = 1000,
        .output_cap = 16384,
    };
    if (gt_exec_run(&spec, &res, &e) != GT_OK) {
        rc = gt_error_set(err, GT_EUNAVAIL, "runs are sandboxed with bubblewrap, which cannot "
                          "start here: %s; or set [runner] sandbox = none", e.message);
        goto done;
    }
    if (res.exit_code != 0 || res.timed_out) {
        first_line(res.err, said, sizeof said);
        const char *why = userns_reason();
        rc = gt_error_set(err, GT_EUNAVAIL,
                          "runs are sandboxed with bubblewrap, which cannot create a sandbox "
                          "here: %s (bwrap: %s); fix that, or set [runner] sandbox = none to "
                          "run without isolation",
                          why ? why : "user namespaces do not work (a chroot, a seccomp filter "
                                      "or a container that forbids them?)",
                          res.timed_out ? "timed out" : said[0] ? said : "no message");
        goto done;
    }
    if (bwrap_out) {
        *bwrap_out = bwrap;
        bwrap = NULL;
    }
done:
    gt_exec_result_clear(&res);
    gt_strv_free(&argv);
    free(bwrap);
    return rc;
}

static void probe(void)
{
    if (gt_sandbox_probe(NULL, &probe_bwrap, &probe_err) == GT_OK) {
        struct stat st;
        probe_prlimit = stat("/usr/bin/prlimit", &st) == 0 && access("/usr/bin/prlimit", X_OK) == 0;
    }
}

gt_err gt_sandbox_check(gt_error *err)
{
    pthread_once(&probe_once, probe);
    if (probe_bwrap == NULL)
        return gt_error_set(err, probe_err.code ? probe_err.code : GT_EUNAVAIL, "%s",
                            probe_err.message);
    return GT_OK;
}

/* ---- the command line ---- */

static void push2(gt_strv *v, const char *a, const char *b)
{
    gt_strv_push(v, a);
    gt_strv_push(v, b);
}

static void push3(gt_strv *v, const char *a, const char *b, const char *c)
{
    gt_strv_push(v, a);
    gt_strv_push(v, b);
    gt_strv_push(v, c);
}

/* A symlink into /usr is recreated as a symlink (tools read /etc/localtime's target to
 * name the zone); anything else is bound read-only when it exists. */
static void etc_entry(gt_strv *argv, const char *path)
{
    struct stat st;
    char target[PATH_MAX];
    if (lstat(path, &st) != 0)
        return;
    if (S_ISLNK(st.st_mode)) {
        ssize_t n = readlink(path, target, sizeof target - 1);
        char real[PATH_MAX];
        if (n > 0) {
            target[n] = '\0';
            if (realpath(path, real) && under(real, "/usr")) {
                push3(argv, "--symlink", target, path);
                return;
            }
        }
    }
    push3(argv, "--ro-bind-try", path, path);
}

static void tmpfs(gt_strv *argv, const char *path, int64_t size)
{
    push2(argv, "--perms", "0700");
    if (size > 0) {
        gt_strv_push(argv, "--size");
        gt_strv_push_owned(argv, gt_xasprintf("%lld", (long long)size));
    }
    push2(argv, "--tmpfs", path);
}

/* extra: more options (--setenv ...), placed before the command. */
static void build(const gt_sandbox *sb, const char *bwrap, const char *cwd, int64_t nproc,
                  bool prlimit, int status_fd, const gt_strv *extra, char *const *cmd,
                  gt_strv *argv)
{
    gt_strv_push(argv, bwrap);
    gt_strv_push(argv, "--unshare-user");
    gt_strv_push(argv, "--unshare-pid");
    gt_strv_push(argv, "--unshare-ipc");
    gt_strv_push(argv, "--unshare-uts");
    gt_strv_push(argv, "--unshare-cgroup-try");
    gt_strv_push(argv, "--disable-userns");
    /* As root bwrap would keep every capability inside the user namespace (enough to
     * remount the read-only binds); drop them all, whoever runs Gantry. */
    push2(argv, "--cap-drop", "ALL");
    gt_strv_push(argv, "--die-with-parent");
    gt_strv_push(argv, "--new-session");
    /* tmpfs first: a working directory under /tmp or HOME is bound on top of them. */
    tmpfs(argv, "/tmp", sb->tmpfs_size);
    tmpfs(argv, gt_sandbox_home(), sb->tmpfs_size);
    push3(argv, "--ro-bind", "/usr", "/usr");
    for (size_t i = 0; i < sizeof usr_links / sizeof usr_links[0]; i++) {
        char path[32], target[PATH_MAX];
        struct stat st;
        snprintf(path, sizeof path, "/%s", usr_links[i]);
        if (lstat(path, &st) != 0)
            continue;
        ssize_t n = S_ISLNK(st.st_mode) ? readlink(path, target, sizeof target - 1) : -1;
        if (n > 0) {
            target[n] = '\0';
            push3(argv, "--symlink", target, path);
        } else if (S_ISDIR(st.st_mode)) {
            push3(argv, "--ro-bind", path, path);
        }
    }
    for (size_t i = 0; i < sizeof etc_files / sizeof etc_files[0]; i++)
        etc_entry(argv, etc_files[i]);
    DIR *d = opendir("/etc");
    if (d) {
        /* python3, python3.11, ...: sitecustomize and the interpreter's config */
        gt_strv py = {0};
        for (struct dirent *de; (de = readdir(d)) != NULL;)
            if (strncmp(de->d_name, "python3", 7) == 0)
                gt_strv_push_owned(&py, gt_xasprintf("/etc/%s", de->d_name));
        closedir(d);
        for (size_t i = 0; i < py.n; i++)
            etc_entry(argv, py.v[i]);
        gt_strv_free(&py);
    }
    push2(argv, "--proc", "/proc");
    push2(argv, "--dev", "/dev");
    push3(argv, "--symlink", "/tmp", "/var/tmp");
    push3(argv, "--symlink", "../proc/self/mounts", "/etc/mtab");
    for (char *const *p = sb->readonly; p && *p; p++)
        push3(argv, "--ro-bind", *p, *p);
    for (char *const *p = sb->writable; p && *p; p++)
        push3(argv, "--bind", *p, *p);
    gt_strv_push(argv, "--remount-ro");
    gt_strv_push(argv, "/");
    if (cwd)
        push2(argv, "--chdir", cwd);
    if (status_fd >= 0) {
        gt_strv_push(argv, "--json-status-fd");
        gt_strv_push_owned(argv, gt_xasprintf("%d", status_fd));
    }
    for (size_t i = 0; extra && i < extra->n; i++)
        gt_strv_push(argv, extra->v[i]);
    gt_strv_push(argv, "--");
    if (nproc > 0 && prlimit) {
        gt_strv_push(argv, "/usr/bin/prlimit");
        gt_strv_push_owned(argv, gt_xasprintf("--nproc=%lld", (long long)nproc));
        gt_strv_push(argv, "--");
    }
    for (char *const *c = cmd; *c; c++)
        gt_strv_push(argv, *c);
}

static bool is_loader_var(const char *entry, size_t name_len)
{
    if (name_len >= 3 && strncmp(entry, "LD_", 3) == 0)
        return true;
    if (name_len >= 7 && strncmp(entry, "MALLOC_", 7) == 0)
        return true;
    for (size_t i = 0; i < sizeof loader_vars / sizeof loader_vars[0]; i++)
        if (strlen(loader_vars[i]) == name_len && strncmp(entry, loader_vars[i], name_len) == 0)
            return true;
    return false;
}

gt_err gt_sandbox_command(const gt_sandbox *sb, const char *cwd, int64_t nproc, int status_fd,
                          char *const *cmd, char *const *env, gt_strv *argv, gt_strv *bwrap_env,
                          gt_error *err)
{
    gt_err rc = gt_sandbox_check(err);
    if (rc != GT_OK)
        return rc;
    if (cmd == NULL || cmd[0] == NULL)
        return gt_error_set(err, GT_EINVAL, "no program to run in the sandbox");
    gt_strv opts = {0};
    for (char *const *e = env; e && *e; e++) {
        const char *eq = strchr(*e, '=');
        size_t n = eq ? (size_t)(eq - *e) : strlen(*e);
        if (eq == NULL || n == 0)
            continue;
        if ((n == 4 && strncmp(*e, "HOME", 4) == 0) || (n == 6 && strncmp(*e, "TMPDIR", 6) == 0))
            continue;
        if (is_loader_var(*e, n)) {
            gt_strv_push(&opts, "--setenv");
            gt_strv_push_owned(&opts, gt_xstrndup(*e, n));
            gt_strv_push(&opts, eq + 1);
        } else {
            gt_strv_push(bwrap_env, *e);
        }
    }
    push3(&opts, "--setenv", "HOME", gt_sandbox_home());
    push3(&opts, "--setenv", "TMPDIR", "/tmp");
    build(sb, probe_bwrap, cwd, nproc, probe_prlimit, status_fd, &opts, cmd, argv);
    gt_strv_free(&opts);
    return GT_OK;
}

bool gt_sandbox_sees(const gt_sandbox *sb, const char *cwd, const char *path)
{
    char *abs = path[0] == '/' ? gt_xstrdup(path) : gt_path_join(cwd ? cwd : "/", path);
    char real[PATH_MAX];
    bool seen = false;
    const char *check[2] = {abs, realpath(abs, real) ? real : NULL};
    for (int k = 0; k < 2; k++) {
        const char *p = check[k];
        bool ok = p && (under(p, "/usr") || under(p, "/bin") || under(p, "/sbin") ||
                        under(p, "/lib") || under(p, "/lib64"));
        for (char *const *d = sb->writable; p && !ok && d && *d; d++)
            ok = under(p, *d);
        for (char *const *d = sb->readonly; p && !ok && d && *d; d++)
            ok = under(p, *d);
        seen = k == 0 ? ok : seen && ok;
    }
    free(abs);
    return seen;
}
