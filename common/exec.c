/* Child processes without a shell: fork + execve into their own process group (fork, not
 * posix_spawn, because the child must set PR_SET_PDEATHSIG and its limits before exec),
 * pipes for stdout/stderr (and stdin when there is data), a poll() loop that reads
 * everything, a timeout and cancellation that end the whole group (TERM, then KILL), and
 * a bounded drain once the child is gone. No global state: safe to call from several
 * threads. Between fork and execve the child makes only async-signal-safe calls; all it
 * needs is prepared before the fork (another thread may hold malloc's lock).
 *
 * Dying with the spawner: the child gets PR_SET_PDEATHSIG(SIGKILL) (then checks
 * getppid(), in case we died before the prctl); it fires when the spawning thread exits,
 * which gt_exec_run's blocking call makes the same as the end of the run. Its own
 * children do not inherit that, so an unsandboxed child also gets a guard: a forked
 * process in the child's group that waits on a pipe only we hold open, and kills the
 * group when it reads EOF (we are gone). A sandboxed child needs no guard: bwrap's
 * --die-with-parent and its pid namespace take everything inside down with it. */
#include "exec.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "sandbox.h"
#include "util.h"

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

#define EXEC_DEFAULT_GRACE_MS 5000
#define EXEC_DEFAULT_CAP (1024 * 1024)
/* How often *cancel is looked at (and the child polled when there is no pidfd). */
#define EXEC_TICK_MS 100
/* After the child is reaped and its group killed, how long we keep reading pipes still
 * held open by a process that left the group (setsid): the run must end. */
#define EXEC_DRAIN_MS 2000
/* execvp's default when the environment has no PATH. */
#define EXEC_DEFAULT_PATH "/usr/local/bin:/usr/bin:/bin"

typedef struct exec_stream {
    int fd;           /* parent's read end; -1 once at EOF */
    char *data;
    size_t len;
    size_t alloc;
    size_t cap;
    bool truncated;
} exec_stream;

/* Where the search for a program ended: what a caller needs to say why. */
typedef enum which_status { WHICH_FOUND, WHICH_MISSING, WHICH_NOEXEC } which_status;

static which_status check_exec_file(const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return WHICH_MISSING;
    if (!S_ISREG(st.st_mode) || access(path, X_OK) != 0)
        return WHICH_NOEXEC;
    return WHICH_FOUND;
}

/* Relative and empty PATH entries are skipped: they would resolve against whatever the
 * working directory happens to be, which is how a checked-out repository hijacks `git`.
 * With sb, so are programs the sandbox does not show (a PATH entry under a HOME that is a
 * private tmpfs inside): the search finds what the run itself would find. */
static which_status which_in(const char *file, const char *path, const gt_sandbox *sb,
                             char **out)
{
    which_status best = WHICH_MISSING;
    *out = NULL;
    if (file == NULL || *file == '\0')
        return WHICH_MISSING;
    if (strchr(file, '/') != NULL) {
        which_status st = check_exec_file(file);
        if (st == WHICH_FOUND)
            *out = gt_xstrdup(file);
        return st;
    }
    for (const char *p = path ? path : ""; ; ) {
        const char *colon = strchr(p, ':');
        size_t n = colon ? (size_t)(colon - p) : strlen(p);
        if (n > 0 && p[0] == '/') {
            char *cand = gt_xasprintf("%.*s%s%s", (int)n, p, p[n - 1] == '/' ? "" : "/", file);
            which_status st = check_exec_file(cand);
            if (st == WHICH_FOUND && sb && !gt_sandbox_sees(sb, NULL, cand))
                st = WHICH_MISSING;
            if (st == WHICH_FOUND) {
                *out = cand;
                return WHICH_FOUND;
            }
            if (st == WHICH_NOEXEC)
                best = WHICH_NOEXEC;
            free(cand);
        }
        if (colon == NULL)
            break;
        p = colon + 1;
    }
    return best;
}

char *gt_exec_which(const char *file, const char *path)
{
    char *out = NULL;
    if (path == NULL)
        path = getenv("PATH") ? getenv("PATH") : EXEC_DEFAULT_PATH;
    which_in(file, path, NULL, &out);
    return out;
}

static const char *env_path(char *const *envp)
{
    for (size_t i = 0; envp && envp[i]; i++)
        if (strncmp(envp[i], "PATH=", 5) == 0)
            return envp[i] + 5;
    return EXEC_DEFAULT_PATH;
}

/* Finds the program to run and checks the working directory before spawning, so the
 * error says which of them is wrong instead of posix_spawn's bare ENOENT. */
static gt_err resolve(const gt_exec_spec *spec, char **prog, gt_error *err)
{
    gt_err rc = GT_OK;
    char *check = NULL;
    *prog = NULL;
    if (spec->cwd != NULL) {
        struct stat st;
        if (stat(spec->cwd, &st) != 0) {
            rc = gt_error_set(err, errno == EACCES ? GT_EPERM : GT_ENOTFOUND,
                              "working directory \"%s\": %s", spec->cwd, strerror(errno));
            goto done;
        }
        if (!S_ISDIR(st.st_mode)) {
            rc = gt_error_set(err, GT_ENOTFOUND, "working directory \"%s\" is not a directory",
                              spec->cwd);
            goto done;
        }
        if (access(spec->cwd, X_OK) != 0) {
            rc = gt_error_set(err, GT_EPERM, "working directory \"%s\": %s", spec->cwd,
                              strerror(errno));
            goto done;
        }
    }
    if (spec->file == NULL || spec->file[0] == '\0' || spec->argv == NULL ||
        spec->argv[0] == NULL) {
        rc = gt_error_set(err, GT_EINVAL, "no program to run (file and argv[0] are required)");
        goto done;
    }
    if (strchr(spec->file, '/') != NULL) {
        /* The child chdirs before exec, so a relative path is relative to cwd. */
        check = (spec->file[0] != '/' && spec->cwd) ? gt_path_join(spec->cwd, spec->file)
                                                    : gt_xstrdup(spec->file);
        which_status st = check_exec_file(check);
        if (st == WHICH_MISSING)
            rc = gt_error_set(err, GT_ENOTFOUND, "program \"%s\" not found", spec->file);
        else if (st == WHICH_NOEXEC)
            rc = gt_error_set(err, GT_EPERM, "program \"%s\" is not an executable file",
                              spec->file);
        else
            *prog = gt_xstrdup(spec->file);
        goto done;
    }
    which_status st = which_in(spec->file, env_path(spec->envp), spec->sandbox, prog);
    if (st == WHICH_MISSING && spec->sandbox)
        rc = gt_error_set(err, GT_ENOTFOUND, "program \"%s\" not found in PATH, in what a run's "
                          "sandbox shows (/usr, its checkout, its venv)", spec->file);
    else if (st == WHICH_MISSING)
        rc = gt_error_set(err, GT_ENOTFOUND, "program \"%s\" not found in PATH", spec->file);
    else if (st == WHICH_NOEXEC)
        rc = gt_error_set(err, GT_EPERM, "program \"%s\" found in PATH but not executable",
                          spec->file);
done:
    free(check);
    return rc;
}

static void close_fd(int *fd)
{
    if (*fd >= 0) {
        close(*fd);
        *fd = -1;
    }
}

/* A close-on-exec pipe whose ends are both >= 4: dup2 onto 0-3 in the child must never
 * be a no-op that leaves FD_CLOEXEC set (it happens when our own 0/1/2 were closed), nor
 * overwrite another pipe the child still needs. */
static int pipe_high(int p[2])
{
    if (pipe2(p, O_CLOEXEC) != 0)
        return -1;
    for (int i = 0; i < 2; i++) {
        if (p[i] >= 4)
            continue;
        int fd = fcntl(p[i], F_DUPFD_CLOEXEC, 4);
        if (fd < 0) {
            int e = errno;
            close(p[0]);
            close(p[1]);
            p[0] = p[1] = -1;
            errno = e;
            return -1;
        }
        close(p[i]);
        p[i] = fd;
    }
    return 0;
}

static void set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0)
        fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

static gt_err spawn_errno(int e, const char *file, gt_error *err)
{
    switch (e) {
    case ENOENT:
    case ENOTDIR:
        return gt_error_set(err, GT_ENOTFOUND, "program \"%s\": %s", file, strerror(e));
    case EACCES:
    case EPERM:
    case ENOEXEC:
    case EISDIR:
        return gt_error_set(err, GT_EPERM, "program \"%s\": %s", file, strerror(e));
    default:
        return gt_error_set(err, GT_EIO, "cannot start \"%s\": %s", file, strerror(e));
    }
}

/* Reads what is available; everything beyond the cap is read and dropped so the child
 * never blocks on a full pipe. Closes the stream at EOF or on a read error. */
static void stream_read(exec_stream *s)
{
    char chunk[65536];
    for (;;) {
        ssize_t n = read(s->fd, chunk, sizeof chunk);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n <= 0) {
            close_fd(&s->fd);
            return;
        }
        size_t keep = s->cap - s->len;
        if ((size_t)n < keep)
            keep = (size_t)n;
        else if ((size_t)n > keep)
            s->truncated = true;
        if (keep > 0) {
            if (s->len + keep + 1 > s->alloc) {
                size_t a = s->alloc ? s->alloc : 4096;
                while (a < s->len + keep + 1)
                    a *= 2;
                if (a > s->cap + 1)
                    a = s->cap + 1;
                s->data = gt_xrealloc(s->data, a);
                s->alloc = a;
            }
            memcpy(s->data + s->len, chunk, keep);
            s->len += keep;
        }
    }
}

static char *stream_take(exec_stream *s, size_t *len)
{
    char *p = s->data ? s->data : gt_xmalloc(1);
    p[s->len] = '\0';
    *len = s->len;
    s->data = NULL;
    return p;
}

/* Signals the whole group. Only called while the leader is unreaped, so its pid (the
 * group id) cannot have been reused by an unrelated process. */
static void signal_group(pid_t pid, int sig)
{
    if (kill(-pid, sig) != 0)
        kill(pid, sig);
}

static int open_pidfd(pid_t pid)
{
#ifdef SYS_pidfd_open
    return (int)syscall(SYS_pidfd_open, pid, 0); /* close-on-exec by definition */
#else
    (void)pid;
    return -1;
#endif
}

/* Has the child exited? Checks without reaping (WNOWAIT), so the group can still be
 * killed safely afterwards. Returns 1 exited, 0 running, -1 error (errno). */
static int child_exited(pid_t pid)
{
    for (;;) {
        siginfo_t si;
        memset(&si, 0, sizeof si);
        if (waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG | WNOWAIT) != 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        return si.si_pid != 0;
    }
}

/* Milliseconds from outside can be anything: saturate instead of overflowing. */
static int64_t add_ms(int64_t a, int64_t b)
{
    return b > INT64_MAX - a ? INT64_MAX : a + b;
}

static int64_t min_wait(int64_t cur, int64_t until, int64_t now)
{
    int64_t w = until > now ? until - now : 0;
    if (w > INT_MAX)
        w = INT_MAX;
    return (cur < 0 || w < cur) ? w : cur;
}

/* ---- bwrap's --json-status-fd: where the sandbox's processes are, how it ended ---- */

typedef struct sandbox_status {
    int fd;          /* read end; -1 when closed or not sandboxed */
    gt_buf buf;      /* bytes not yet parsed */
    pid_t inner;     /* the sandbox's pid 1, as we number it: its session and group */
    long long pidns; /* inode of its pid namespace */
    bool have_exit;  /* bwrap reported the program's exit (so the program did start) */
    int exit_code;
    int64_t count_max; /* > 0: count the sandbox's processes each tick (see below) */
} sandbox_status;

/* The non-negative integer after "key": in line, if any. */
static bool json_llong(const char *line, const char *key, long long *out)
{
    const char *p = strstr(line, key);
    if (p == NULL)
        return false;
    p += strlen(key);
    while (*p == ' ' || *p == ':')
        p++;
    char *end;
    errno = 0;
    long long v = strtoll(p, &end, 10);
    if (end == p || errno == ERANGE || v < 0)
        return false;
    *out = v;
    return true;
}

static bool json_int(const char *line, const char *key, long long *out)
{
    return json_llong(line, key, out) && *out <= INT_MAX;
}

/* Processes in the sandbox's pid namespace. Only used when Gantry runs as root: the
 * kernel never applies RLIMIT_NPROC to uid 0, not even inside a user namespace (the
 * sandbox's uid maps to it), so the process limit is then kept by counting, every
 * EXEC_TICK_MS, and ending the sandbox once it has more. Threads are not counted. */
static int64_t sandbox_scan(long long pidns)
{
    char want[64];
    int64_t n = 0;
    snprintf(want, sizeof want, "pid:[%lld]", pidns);
    DIR *d = opendir("/proc");
    if (d == NULL)
        return 0;
    for (struct dirent *de; (de = readdir(d)) != NULL;) {
        if (de->d_name[0] < '1' || de->d_name[0] > '9')
            continue;
        char path[300], link[64];
        snprintf(path, sizeof path, "/proc/%.20s/ns/pid", de->d_name);
        ssize_t len = readlink(path, link, sizeof link - 1);
        if (len > 0) {
            link[len] = '\0';
            n += strcmp(link, want) == 0;
        }
    }
    closedir(d);
    return n;
}

/* Appends the children of every thread of pid (from /proc/PID/task/TID/children). */
static void tree_children(pid_t pid, pid_t **v, size_t *n, size_t *cap)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    DIR *d = opendir(path);
    if (d == NULL)
        return;
    for (struct dirent *de; (de = readdir(d)) != NULL;) {
        if (de->d_name[0] < '1' || de->d_name[0] > '9')
            continue;
        char cpath[96], buf[4096];
        snprintf(cpath, sizeof cpath, "/proc/%d/task/%.20s/children", (int)pid, de->d_name);
        int fd = open(cpath, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue;
        ssize_t len = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (len <= 0)
            continue;
        buf[len] = '\0';
        for (char *p = buf, *end; *p; p = end) {
            long c = strtol(p, &end, 10);
            if (end == p)
                break;
            if (c > 0) {
                if (*n == *cap) {
                    *cap = *cap ? *cap * 2 : 16;
                    *v = gt_xrealloc(*v, *cap * sizeof **v);
                }
                (*v)[(*n)++] = (pid_t)c;
            }
        }
    }
    closedir(d);
}

/* Processes in the sandbox (inner, its pid 1, and all below it), counted up to max + 1.
 * Every process of a pid namespace descends from its init, orphans included (they are
 * reparented to it), so walking the tree from inner costs what the sandbox holds, not
 * what the machine runs: a scan of all of /proc each tick for each of hundreds of runs
 * would take the CPUs. Without /proc/PID/task/TID/children (CONFIG_PROC_CHILDREN) the
 * whole of /proc is scanned for the namespace. */
static int64_t sandbox_count(pid_t inner, long long pidns, int64_t max)
{
    static atomic_int tree_ok = -1; /* -1: not tried yet */
    if (tree_ok < 0) {
        char path[64];
        snprintf(path, sizeof path, "/proc/%d/task/%d/children", (int)getpid(), (int)getpid());
        tree_ok = access(path, R_OK) == 0;
    }
    if (!tree_ok)
        return sandbox_scan(pidns);
    size_t cap = 16, n = 1;
    pid_t *v = gt_xmalloc(cap * sizeof *v);
    v[0] = inner;
    for (size_t i = 0; i < n && (int64_t)n <= max; i++)
        tree_children(v[i], &v, &n, &cap);
    free(v);
    return (int64_t)n;
}

static void status_read(sandbox_status *st)
{
    char chunk[1024];
    for (;;) {
        ssize_t n = read(st->fd, chunk, sizeof chunk);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        if (n <= 0) {
            close_fd(&st->fd);
            break;
        }
        if (st->buf.len < 65536)
            gt_buf_append(&st->buf, chunk, (size_t)n);
    }
    /* One JSON object per line. */
    char *nl;
    while (st->buf.data && (nl = memchr(st->buf.data, '\n', st->buf.len)) != NULL) {
        *nl = '\0';
        long long v;
        if (json_int(st->buf.data, "\"child-pid\"", &v) && v > 1)
            st->inner = (pid_t)v;
        long long ns;
        if (json_llong(st->buf.data, "\"pid-namespace\"", &ns))
            st->pidns = ns;
        if (json_int(st->buf.data, "\"exit-code\"", &v)) {
            st->have_exit = true;
            st->exit_code = (int)v;
        }
        size_t used = (size_t)(nl + 1 - st->buf.data);
        memmove(st->buf.data, nl + 1, st->buf.len - used);
        st->buf.len -= used;
        st->buf.data[st->buf.len] = '\0';
    }
}

/* Stops the run: inside a sandbox the program's group first (bwrap would die of the
 * TERM itself and take everything down at once, with no chance to clean up). */
static void stop_signal(pid_t pid, const sandbox_status *st, int sig)
{
    if (st->inner > 0 && sig != SIGKILL) {
        kill(-st->inner, sig);
        return;
    }
    if (st->inner > 0)
        kill(st->inner, SIGKILL); /* the sandbox's init: its pid namespace goes with it */
    signal_group(pid, sig);
}

static gt_err run_loop(const gt_exec_spec *spec, pid_t pid, int pidfd, exec_stream *out,
                       exec_stream *er, int *in_fd, sandbox_status *sst, gt_exec_result *res,
                       gt_error *err)
{
    gt_err rc = GT_OK;
    const char *in_data = spec->stdin_data;
    size_t in_left = in_data ? strlen(in_data) : 0;
    int64_t grace = spec->kill_grace_ms > 0 ? spec->kill_grace_ms : EXEC_DEFAULT_GRACE_MS;
    int64_t start = gt_mono_ms();
    int64_t deadline = spec->timeout_ms > 0 ? add_ms(start, spec->timeout_ms) : -1;
    int64_t kill_at = -1;      /* when SIGKILL follows the SIGTERM already sent */
    int64_t drain_until = -1;  /* set once the child is reaped */
    bool reaped = false;

    if (*in_fd >= 0 && in_left == 0)
        close_fd(in_fd);
    for (;;) {
        int64_t now = gt_mono_ms();
        if (!reaped) {
            bool stop = false;
            if (spec->cancel && *spec->cancel && !res->canceled && !res->timed_out)
                stop = res->canceled = true;
            if (deadline >= 0 && now >= deadline && !res->timed_out && !res->canceled)
                stop = res->timed_out = true;
            if (stop) {
                stop_signal(pid, sst, SIGTERM);
                stop_signal(pid, sst, SIGCONT); /* a stopped child must see the TERM */
                kill_at = add_ms(now, grace);
            }
            bool kill_now = spec->cancel && *spec->cancel == GT_CANCEL_KILL;
            if (kill_at >= 0 && (now >= kill_at || kill_now)) {
                stop_signal(pid, sst, SIGKILL);
                kill_at = -1;
            }
            if (sst->count_max > 0 && sst->pidns > 0 && sst->inner > 0 && !res->nproc_exceeded) {
                int64_t n = sandbox_count(sst->inner, sst->pidns, sst->count_max);
                if (n > sst->count_max) {
                    res->nproc_exceeded = true;
                    res->nproc_seen = n;
                    stop_signal(pid, sst, SIGKILL);
                }
            }
            int ex = child_exited(pid);
            if (ex != 0) {
                int status = 0;
                if (ex > 0) {
                    struct rusage ru;
                    memset(&ru, 0, sizeof ru);
                    /* Orphans left in the group would hold our pipes open forever. */
                    signal_group(pid, SIGKILL);
                    while (wait4(pid, &status, 0, &ru) < 0 && errno == EINTR)
                        ;
                    res->cpu_ms = (int64_t)ru.ru_utime.tv_sec * 1000 + ru.ru_utime.tv_usec / 1000 +
                                  (int64_t)ru.ru_stime.tv_sec * 1000 + ru.ru_stime.tv_usec / 1000;
                    if (WIFEXITED(status)) {
                        res->exit_code = WEXITSTATUS(status);
                    } else if (WIFSIGNALED(status)) {
                        res->term_signal = WTERMSIG(status);
                        res->exit_code = 128 + res->term_signal;
                    }
                } else {
                    /* ECHILD: someone else reaped it (SIGCHLD ignored, or a waitpid(-1)
                     * elsewhere in the process): the status is lost. */
                    res->exit_code = -1;
                    rc = gt_error_set(err, GT_EINTERNAL,
                                      "lost the exit status of pid %ld: %s (is SIGCHLD ignored?)",
                                      (long)pid, strerror(errno));
                }
                reaped = true;
                drain_until = now + EXEC_DRAIN_MS;
                close_fd(in_fd);
            }
        }
        if (reaped && ((out->fd < 0 && er->fd < 0 && sst->fd < 0) || now >= drain_until))
            break;

        struct pollfd pfd[5];
        int nfd = 0, i_out = -1, i_err = -1, i_in = -1, i_st = -1;
        if (out->fd >= 0) {
            i_out = nfd;
            pfd[nfd++] = (struct pollfd){.fd = out->fd, .events = POLLIN};
        }
        if (er->fd >= 0) {
            i_err = nfd;
            pfd[nfd++] = (struct pollfd){.fd = er->fd, .events = POLLIN};
        }
        if (sst->fd >= 0) {
            i_st = nfd;
            pfd[nfd++] = (struct pollfd){.fd = sst->fd, .events = POLLIN};
        }
        if (*in_fd >= 0) {
            i_in = nfd;
            pfd[nfd++] = (struct pollfd){.fd = *in_fd, .events = POLLOUT};
        }
        /* Readable when the child exits: it only wakes us, child_exited() decides. */
        if (!reaped && pidfd >= 0)
            pfd[nfd++] = (struct pollfd){.fd = pidfd, .events = POLLIN};
        int64_t wait = -1;
        if (!reaped) {
            if (spec->cancel || pidfd < 0 || sst->count_max > 0)
                wait = EXEC_TICK_MS;
            if (deadline >= 0 && !res->timed_out && !res->canceled)
                wait = min_wait(wait, deadline, now);
            if (kill_at >= 0)
                wait = min_wait(wait, kill_at, now);
        } else {
            wait = min_wait(wait, drain_until, now);
        }
        int n = poll(pfd, (nfds_t)nfd, (int)wait);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            rc = gt_error_set(err, GT_EIO, "poll: %s", strerror(errno));
            /* Never leave a child behind: end it and reap it before returning. */
            if (!reaped) {
                stop_signal(pid, sst, SIGKILL);
                while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
                    ;
            }
            break;
        }
        if (i_out >= 0 && pfd[i_out].revents)
            stream_read(out);
        if (i_err >= 0 && pfd[i_err].revents)
            stream_read(er);
        if (i_st >= 0 && pfd[i_st].revents)
            status_read(sst);
        if (i_in >= 0 && pfd[i_in].revents) {
            if (pfd[i_in].revents & (POLLERR | POLLHUP)) {
                close_fd(in_fd);
            } else {
                ssize_t w = write(*in_fd, in_data, in_left);
                if (w > 0) {
                    in_data += w;
                    in_left -= (size_t)w;
                    if (in_left == 0)
                        close_fd(in_fd); /* EOF for the child */
                } else if (w < 0 && errno != EINTR && errno != EAGAIN) {
                    close_fd(in_fd); /* EPIPE: the child does not want the rest */
                }
            }
        }
    }
    if (sst->fd >= 0)
        status_read(sst); /* bwrap wrote the exit before it exited */
    return rc;
}

/* ---- fork + execve ---- */

#define MAX_LIMITS 5

/* Everything the child does between fork and execve, prepared before the fork. */
typedef struct child_plan {
    const char *prog;
    char *const *argv;
    char *const *envp;
    const char *cwd;
    int in_fd;                 /* -1: /dev/null */
    int out_fd, err_fd;
    int pass_fd;               /* -1, or a descriptor the child gets as 3 */
    int report_fd;             /* close-on-exec pipe: why the exec did not happen */
    pid_t parent;
    int nlim;
    int lim_res[MAX_LIMITS];
    struct rlimit lim[MAX_LIMITS];
} child_plan;

enum { STAGE_SETUP = 1, STAGE_CHDIR, STAGE_LIMIT, STAGE_EXEC };

__attribute__((noreturn)) static void child_fail(const child_plan *p, int stage, int e)
{
    int msg[2] = {stage, e};
    ssize_t w = write(p->report_fd, msg, sizeof msg);
    (void)w;
    _exit(127);
}

/* Marks every descriptor from first on close-on-exec (close_range, or one by one). */
static void cloexec_from(int first)
{
#ifdef SYS_close_range
    if (syscall(SYS_close_range, (unsigned)first, ~0U, CLOSE_RANGE_CLOEXEC) == 0)
        return;
#endif
    struct rlimit rl;
    long max = 65536;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
        rl.rlim_cur < (1u << 20))
        max = (long)rl.rlim_cur;
    for (long fd = first; fd < max; fd++)
        fcntl((int)fd, F_SETFD, FD_CLOEXEC);
}

__attribute__((noreturn)) static void child_exec(const child_plan *p)
{
    struct sigaction dfl;
    sigset_t none;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigemptyset(&none);

    /* Own group (pgid = pid) so timeouts reach grandchildren. */
    if (setpgid(0, 0) != 0)
        child_fail(p, STAGE_SETUP, errno);
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0)
        child_fail(p, STAGE_SETUP, errno);
    if (getppid() != p->parent)
        _exit(127); /* the spawner died before the prctl: nobody waits for us */
    /* Default dispositions: what this daemon ignores (SIGPIPE) must not leak into the
     * child (handlers are reset by execve anyway; ignored signals are not). */
    for (int sig = 1; sig < NSIG; sig++)
        if (sig != SIGKILL && sig != SIGSTOP)
            sigaction(sig, &dfl, NULL);
    int in = p->in_fd;
    if (in < 0 && (in = open("/dev/null", O_RDONLY)) < 0)
        child_fail(p, STAGE_SETUP, errno);
    if (dup2(in, 0) < 0 || dup2(p->out_fd, 1) < 0 || dup2(p->err_fd, 2) < 0)
        child_fail(p, STAGE_SETUP, errno);
    if (p->pass_fd >= 0 && dup2(p->pass_fd, 3) < 0)
        child_fail(p, STAGE_SETUP, errno);
    /* Nothing of ours beyond what we gave reaches the child, whatever other threads or
     * libraries opened without O_CLOEXEC. */
    cloexec_from(p->pass_fd >= 0 ? 4 : 3);
    if (p->cwd && chdir(p->cwd) != 0)
        child_fail(p, STAGE_CHDIR, errno);
    for (int i = 0; i < p->nlim; i++)
        if (setrlimit(p->lim_res[i], &p->lim[i]) != 0)
            child_fail(p, STAGE_LIMIT, errno);
    sigprocmask(SIG_SETMASK, &none, NULL);
    execve(p->prog, p->argv, p->envp);
    child_fail(p, STAGE_EXEC, errno);
}

/* Adds limit res = want (soft; hard = hard_want), never above the hard limit we have:
 * only a privileged process may raise it, and then limits would fail to apply. */
static void plan_limit(child_plan *p, int res, rlim_t want, rlim_t hard_want)
{
    struct rlimit cur;
    if (p->nlim >= MAX_LIMITS || getrlimit(res, &cur) != 0)
        return;
    if (cur.rlim_max != RLIM_INFINITY && hard_want > cur.rlim_max)
        hard_want = cur.rlim_max;
    if (want > hard_want)
        want = hard_want;
    p->lim_res[p->nlim] = res;
    p->lim[p->nlim] = (struct rlimit){.rlim_cur = want, .rlim_max = hard_want};
    p->nlim++;
}

static void plan_limits(child_plan *p, const gt_exec_limits *lim, bool nproc)
{
    if (lim == NULL)
        return;
    plan_limit(p, RLIMIT_CORE, 0, 0); /* a limit hit must not leave cores in the checkout */
    if (lim->memory > 0)
        plan_limit(p, RLIMIT_AS, (rlim_t)lim->memory, (rlim_t)lim->memory);
    if (lim->cpu_ms > 0) {
        rlim_t s = (rlim_t)((lim->cpu_ms + 999) / 1000);
        plan_limit(p, RLIMIT_CPU, s, s + 5); /* SIGXCPU at s, SIGKILL 5 s later */
    }
    if (lim->open_files > 0)
        plan_limit(p, RLIMIT_NOFILE, (rlim_t)lim->open_files, (rlim_t)lim->open_files);
    if (nproc && lim->processes > 0)
        plan_limit(p, RLIMIT_NPROC, (rlim_t)lim->processes, (rlim_t)lim->processes);
}

/* Forks and execs plan. GT_OK with *pid once the program runs; otherwise the error says
 * which step failed (the child is reaped). */
static gt_err spawn(child_plan *plan, const char *file, pid_t *pid_out, gt_error *err)
{
    int rp[2] = {-1, -1};
    sigset_t all, old;
    if (pipe_high(rp) != 0)
        return gt_error_set(err, GT_EIO, "pipe: %s", strerror(errno));
    plan->report_fd = rp[1];
    plan->parent = getpid();
    /* No handler of ours may run in the child before execve. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pid_t pid = fork();
    if (pid == 0)
        child_exec(plan);
    int fork_errno = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    close(rp[1]);
    if (pid < 0) {
        close(rp[0]);
        return gt_error_set(err, GT_EIO, "cannot start \"%s\": fork: %s", file,
                            strerror(fork_errno));
    }
    setpgid(pid, pid); /* from here too, so that no signal to the group can miss it */
    int msg[2] = {0, 0};
    ssize_t n;
    while ((n = read(rp[0], msg, sizeof msg)) < 0 && errno == EINTR)
        ;
    close(rp[0]);
    if (n != (ssize_t)sizeof msg) {
        *pid_out = pid;
        return GT_OK; /* EOF: execve closed the pipe */
    }
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
        ;
    switch (msg[0]) {
    case STAGE_EXEC:
        return spawn_errno(msg[1], file, err);
    case STAGE_CHDIR:
        return gt_error_set(err, msg[1] == EACCES ? GT_EPERM : GT_ENOTFOUND,
                            "working directory \"%s\": %s", plan->cwd, strerror(msg[1]));
    case STAGE_LIMIT:
        return gt_error_set(err, GT_EIO, "cannot set the resource limits of \"%s\": %s", file,
                            strerror(msg[1]));
    default:
        return gt_error_set(err, GT_EIO, "cannot start \"%s\": %s", file, strerror(msg[1]));
    }
}

/* The guard of an unsandboxed child's group (see the top of this file). Returns its pid
 * and the pipe end we keep (*keep), or -1 when it could not be started. */
static pid_t start_guard(pid_t group, int *keep)
{
    int gp[2];
    sigset_t all, old;
    if (pipe_high(gp) != 0)
        return -1;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pid_t g = fork();
    if (g == 0) {
        struct sigaction ign;
        sigset_t none;
        static const int quiet[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGPIPE, SIGUSR1,
                                    SIGUSR2, SIGALRM, SIGTSTP, SIGTTIN, SIGTTOU};
        memset(&ign, 0, sizeof ign);
        ign.sa_handler = SIG_IGN;
        sigemptyset(&ign.sa_mask);
        sigemptyset(&none);
        /* The run's own TERM (a timeout) is not for the guard; only KILL ends it. */
        for (size_t i = 0; i < sizeof quiet / sizeof quiet[0]; i++)
            sigaction(quiet[i], &ign, NULL);
        /* Joining the group also keeps its id from being reused while we wait. */
        if (setpgid(0, group) != 0)
            _exit(0);
        prctl(PR_SET_NAME, "gantry-guard", 0, 0, 0);
        if (dup2(gp[0], 0) < 0)
            _exit(0);
#ifdef SYS_close_range
        if (syscall(SYS_close_range, 1U, ~0U, 0) != 0)
#endif
            for (int fd = 1; fd < 65536; fd++)
                close(fd);
        sigprocmask(SIG_SETMASK, &none, NULL);
        char c;
        ssize_t n;
        while ((n = read(0, &c, 1)) < 0 && errno == EINTR)
            ;
        if (n == 0)
            kill(-group, SIGKILL);
        _exit(0);
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    close(gp[0]);
    if (g < 0) {
        close(gp[1]);
        return -1;
    }
    setpgid(g, group);
    *keep = gp[1];
    return g;
}

static void stop_guard(pid_t *guard, int *keep)
{
    if (*guard > 0) {
        kill(*guard, SIGKILL); /* still our unreaped child: the pid is its own */
        while (waitpid(*guard, NULL, 0) < 0 && errno == EINTR)
            ;
        *guard = -1;
    }
    close_fd(keep);
}

gt_err gt_exec_run(const gt_exec_spec *spec, gt_exec_result *res, gt_error *err)
{
    gt_err rc = GT_OK;
    char *prog = NULL;
    int po[2] = {-1, -1}, pe[2] = {-1, -1}, pi[2] = {-1, -1}, ps[2] = {-1, -1};
    int pidfd = -1, guard_fd = -1;
    pid_t pid = -1, guard = -1;
    bool sigpipe_blocked = false;
    sigset_t pipe_set, old_mask;
    char *const empty_env[] = {NULL};
    size_t cap = spec->output_cap ? spec->output_cap : EXEC_DEFAULT_CAP;
    exec_stream out = {.fd = -1, .cap = cap}, er = {.fd = -1, .cap = cap};
    sandbox_status sst = {.fd = -1};
    gt_strv sb_argv = {0}, sb_env = {0};
    child_plan plan = {.in_fd = -1, .pass_fd = -1};

    memset(res, 0, sizeof *res);
    res->start_ms = gt_now_ms();
    if ((rc = resolve(spec, &prog, err)) != GT_OK)
        goto done;
    if (pipe_high(po) != 0 || pipe_high(pe) != 0 || (spec->stdin_data && pipe_high(pi) != 0) ||
        (spec->sandbox && pipe_high(ps) != 0)) {
        rc = gt_error_set(err, GT_EIO, "pipe: %s", strerror(errno));
        goto done;
    }
    plan.prog = prog;
    plan.argv = spec->argv;
    plan.envp = spec->envp ? spec->envp : empty_env;
    plan.cwd = spec->cwd;
    plan.in_fd = pi[0];
    plan.out_fd = po[1];
    plan.err_fd = pe[1];
    plan_limits(&plan, spec->limits, spec->sandbox == NULL);
    if (spec->sandbox) {
        if ((rc = gt_sandbox_check(err)) != GT_OK)
            goto done;
        if (!gt_sandbox_sees(spec->sandbox, spec->cwd, prog)) {
            rc = gt_error_set(err, GT_ENOTFOUND,
                              "program \"%s\" is outside the run's sandbox (a run sees /usr, "
                              "its checkout and its venv)", prog);
            goto done;
        }
        /* bwrap runs the program: it gets argv[0] as the path found here. */
        gt_strv cmd = {0};
        gt_strv_push(&cmd, prog);
        for (size_t i = 1; spec->argv[i]; i++)
            gt_strv_push(&cmd, spec->argv[i]);
        int64_t nproc = spec->limits ? spec->limits->processes : 0;
        if (getuid() == 0) {
            sst.count_max = nproc; /* see sandbox_count() */
            nproc = 0;
        }
        rc = gt_sandbox_command(spec->sandbox, spec->cwd, nproc, 3, cmd.v, plan.envp, &sb_argv,
                                &sb_env, err);
        gt_strv_free(&cmd);
        if (rc != GT_OK)
            goto done;
        plan.prog = sb_argv.v[0];
        plan.argv = sb_argv.v;
        plan.envp = sb_env.v ? sb_env.v : empty_env;
        plan.cwd = "/"; /* bwrap enters spec->cwd inside the sandbox */
        plan.pass_fd = ps[1];
        res->sandboxed = true;
    }

    if ((rc = spawn(&plan, spec->sandbox ? "bwrap" : spec->file, &pid, err)) != GT_OK)
        goto done;
    res->pid = pid;
    if (spec->sandbox == NULL)
        guard = start_guard(pid, &guard_fd);
    close_fd(&po[1]);
    close_fd(&pe[1]);
    close_fd(&pi[0]);
    close_fd(&ps[1]);
    out.fd = po[0];
    er.fd = pe[0];
    sst.fd = ps[0];
    po[0] = pe[0] = ps[0] = -1;
    set_nonblock(out.fd);
    set_nonblock(er.fd);
    if (sst.fd >= 0)
        set_nonblock(sst.fd);
    if (pi[1] >= 0)
        set_nonblock(pi[1]);
    pidfd = open_pidfd(pid);
    if (spec->on_start)
        spec->on_start((int64_t)pid, spec->on_start_arg);

    /* A write to a child that closed its stdin must fail with EPIPE, not kill the
     * daemon: block SIGPIPE in this thread only, and drop any we caused. */
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    sigpipe_blocked = pthread_sigmask(SIG_BLOCK, &pipe_set, &old_mask) == 0 &&
                      !sigismember(&old_mask, SIGPIPE);

    rc = run_loop(spec, pid, pidfd, &out, &er, &pi[1], &sst, res, err);
    res->out = stream_take(&out, &res->out_len);
    res->out_truncated = out.truncated;
    res->err = stream_take(&er, &res->err_len);
    res->err_truncated = er.truncated;
    if (rc == GT_OK && spec->sandbox) {
        if (sst.have_exit) {
            /* bwrap reports a program killed by signal N as 128 + N */
            res->exit_code = sst.exit_code;
            res->term_signal = sst.exit_code > 128 && sst.exit_code < 128 + 32
                                   ? sst.exit_code - 128 : 0;
        } else if (res->term_signal == 0) {
            /* bwrap exited on its own before the program ran: it said why */
            char said[512];
            const char *p = strstr(res->err, "bwrap: ");
            p = p ? p + 7 : res->err;
            snprintf(said, sizeof said, "%.*s", (int)strcspn(p, "\n"), p);
            rc = gt_error_set(err, strstr(said, "execvp") ? GT_ENOTFOUND : GT_EIO,
                              "the sandbox could not start \"%s\": %s", spec->file,
                              said[0] ? said : "bwrap failed without a message");
        }
    }

done:
    stop_guard(&guard, &guard_fd);
    if (sigpipe_blocked) {
        struct timespec zero = {0, 0};
        sigset_t pending;
        while (sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE) &&
               sigtimedwait(&pipe_set, NULL, &zero) == SIGPIPE)
            ;
        pthread_sigmask(SIG_SETMASK, &old_mask, NULL);
    }
    close_fd(&pidfd);
    close_fd(&out.fd);
    close_fd(&er.fd);
    close_fd(&sst.fd);
    for (int i = 0; i < 2; i++) {
        close_fd(&po[i]);
        close_fd(&pe[i]);
        close_fd(&pi[i]);
        close_fd(&ps[i]);
    }
    gt_buf_free(&sst.buf);
    /* bwrap's environment holds the run's secrets */
    for (size_t i = 0; i < sb_env.n; i++)
        gt_wipe(sb_env.v[i], strlen(sb_env.v[i]));
    gt_strv_free(&sb_env);
    gt_strv_free(&sb_argv);
    free(out.data);
    free(er.data);
    free(prog);
    res->end_ms = gt_now_ms();
    return rc;
}

/* "64 MiB", "2 GiB", "1536 KiB", "1000 bytes". */
static void format_size(int64_t b, char *buf, size_t n)
{
    static const char *const units[] = {"GiB", "MiB", "KiB"};
    static const int64_t mult[] = {INT64_C(1) << 30, INT64_C(1) << 20, INT64_C(1) << 10};
    for (int i = 0; i < 3; i++) {
        if (b >= mult[i] && b % mult[i] == 0) {
            snprintf(buf, n, "%lld %s", (long long)(b / mult[i]), units[i]);
            return;
        }
    }
    snprintf(buf, n, "%lld bytes", (long long)b);
}

static void format_secs(int64_t ms, char *buf, size_t n)
{
    int64_t s = (ms + 999) / 1000;
    if (s % 3600 == 0)
        snprintf(buf, n, "%lldh", (long long)(s / 3600));
    else if (s % 60 == 0)
        snprintf(buf, n, "%lldm", (long long)(s / 60));
    else
        snprintf(buf, n, "%llds", (long long)s);
}

static bool said_any(const char *text, const char *const *needles)
{
    for (; text && *needles; needles++)
        if (strstr(text, *needles))
            return true;
    return false;
}

char *gt_exec_limit_reason(const gt_exec_limits *lim, const gt_exec_result *res)
{
    static const char *const oom[] = {"MemoryError", "Cannot allocate memory", "out of memory",
                                      "Out of memory", "std::bad_alloc", "memory exhausted",
                                      "failed to map segment", "mmap failed", NULL};
    static const char *const nproc[] = {"Resource temporarily unavailable", "Cannot fork",
                                        "can't fork", "fork: retry", "can't start new thread",
                                        "Cannot allocate thread", NULL};
    char v[64];
    if (lim == NULL || res == NULL || res->timed_out || res->canceled ||
        (res->exit_code == 0 && !res->nproc_exceeded))
        return NULL;
    if (lim->cpu_ms > 0 && (res->term_signal == SIGXCPU ||
                            (res->term_signal == SIGKILL && res->cpu_ms >= lim->cpu_ms))) {
        format_secs(lim->cpu_ms, v, sizeof v);
        return gt_xasprintf("killed by %s: CPU time limit %s reached",
                            res->term_signal == SIGXCPU ? "SIGXCPU" : "SIGKILL", v);
    }
    if (lim->memory > 0 && said_any(res->err, oom)) {
        format_size(lim->memory, v, sizeof v);
        return gt_xasprintf("out of memory: memory limit %s reached (an allocation failed)", v);
    }
    if (lim->processes > 0 && res->nproc_exceeded)
        return gt_xasprintf("process limit %lld reached (the run had %lld processes and was "
                            "stopped)", (long long)lim->processes, (long long)res->nproc_seen);
    if (lim->processes > 0 && said_any(res->err, nproc))
        return gt_xasprintf("process limit %lld reached (a fork or a new thread failed)",
                            (long long)lim->processes);
    return NULL;
}

void gt_exec_result_clear(gt_exec_result *res)
{
    if (res == NULL)
        return;
    free(res->out);
    free(res->err);
    memset(res, 0, sizeof *res);
}
