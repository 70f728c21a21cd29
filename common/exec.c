/* Child processes without a shell: posix_spawn into their own process group, pipes for
 * stdout/stderr (and stdin when there is data), a poll() loop that reads everything,
 * a timeout and cancellation that end the whole group (TERM, then KILL), and a bounded
 * drain once the child is gone. No global state: safe to call from several threads. */
#include "exec.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "util.h"

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
 * working directory happens to be, which is how a checked-out repository hijacks `git`. */
static which_status which_ex(const char *file, const char *path, char **out)
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
    which_ex(file, path, &out);
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
    which_status st = which_ex(spec->file, env_path(spec->envp), prog);
    if (st == WHICH_MISSING)
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

/* A close-on-exec pipe whose ends are both >= 3: dup2 onto 0/1/2 in the child must never
 * be a no-op that leaves FD_CLOEXEC set (it happens when our own 0/1/2 were closed). */
static int pipe_high(int p[2])
{
    if (pipe2(p, O_CLOEXEC) != 0)
        return -1;
    for (int i = 0; i < 2; i++) {
        if (p[i] >= 3)
            continue;
        int fd = fcntl(p[i], F_DUPFD_CLOEXEC, 3);
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

static gt_err run_loop(const gt_exec_spec *spec, pid_t pid, int pidfd, exec_stream *out,
                       exec_stream *er, int *in_fd, gt_exec_result *res, gt_error *err)
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
                signal_group(pid, SIGTERM);
                signal_group(pid, SIGCONT); /* a stopped child must see the TERM */
                kill_at = add_ms(now, grace);
            }
            bool kill_now = spec->cancel && *spec->cancel == GT_CANCEL_KILL;
            if (kill_at >= 0 && (now >= kill_at || kill_now)) {
                signal_group(pid, SIGKILL);
                kill_at = -1;
            }
            int ex = child_exited(pid);
            if (ex != 0) {
                int status = 0;
                if (ex > 0) {
                    /* Orphans left in the group would hold our pipes open forever. */
                    signal_group(pid, SIGKILL);
                    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
                        ;
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
        if (reaped && ((out->fd < 0 && er->fd < 0) || now >= drain_until))
            break;

        struct pollfd pfd[4];
        int nfd = 0, i_out = -1, i_err = -1, i_in = -1;
        if (out->fd >= 0) {
            i_out = nfd;
            pfd[nfd++] = (struct pollfd){.fd = out->fd, .events = POLLIN};
        }
        if (er->fd >= 0) {
            i_err = nfd;
            pfd[nfd++] = (struct pollfd){.fd = er->fd, .events = POLLIN};
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
            if (spec->cancel || pidfd < 0)
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
                signal_group(pid, SIGKILL);
                while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
                    ;
            }
            break;
        }
        if (i_out >= 0 && pfd[i_out].revents)
            stream_read(out);
        if (i_err >= 0 && pfd[i_err].revents)
            stream_read(er);
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
    return rc;
}

gt_err gt_exec_run(const gt_exec_spec *spec, gt_exec_result *res, gt_error *err)
{
    gt_err rc = GT_OK;
    char *prog = NULL;
    int po[2] = {-1, -1}, pe[2] = {-1, -1}, pi[2] = {-1, -1};
    int pidfd = -1, e = 0;
    pid_t pid = -1;
    bool fa_init = false, attr_init = false, sigpipe_blocked = false;
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    sigset_t pipe_set, old_mask;
    char *const empty_env[] = {NULL};
    size_t cap = spec->output_cap ? spec->output_cap : EXEC_DEFAULT_CAP;
    exec_stream out = {.fd = -1, .cap = cap}, er = {.fd = -1, .cap = cap};

    memset(res, 0, sizeof *res);
    res->start_ms = gt_now_ms();
    if ((rc = resolve(spec, &prog, err)) != GT_OK)
        goto done;
    if (pipe_high(po) != 0 || pipe_high(pe) != 0 || (spec->stdin_data && pipe_high(pi) != 0)) {
        rc = gt_error_set(err, GT_EIO, "pipe: %s", strerror(errno));
        goto done;
    }

    e = posix_spawn_file_actions_init(&fa);
    fa_init = e == 0;
    if (e == 0 && spec->stdin_data)
        e = posix_spawn_file_actions_adddup2(&fa, pi[0], 0);
    else if (e == 0)
        e = posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    if (e == 0)
        e = posix_spawn_file_actions_adddup2(&fa, po[1], 1);
    if (e == 0)
        e = posix_spawn_file_actions_adddup2(&fa, pe[1], 2);
    /* Nothing of ours beyond 0-2 reaches the child, whatever other threads or libraries
     * opened without O_CLOEXEC. */
    if (e == 0)
        e = posix_spawn_file_actions_addclosefrom_np(&fa, 3);
    if (e == 0 && spec->cwd)
        e = posix_spawn_file_actions_addchdir_np(&fa, spec->cwd);
    if (e == 0) {
        e = posix_spawnattr_init(&attr);
        attr_init = e == 0;
    }
    if (e == 0) {
        /* Own group (pgid = pid) so timeouts reach grandchildren; empty mask and default
         * dispositions so what this daemon blocks or ignores (SIGPIPE, SIGTERM) does not
         * leak into the child. */
        sigset_t none, all;
        sigemptyset(&none);
        sigfillset(&all);
        e = posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK |
                                                POSIX_SPAWN_SETSIGDEF);
        if (e == 0)
            e = posix_spawnattr_setpgroup(&attr, 0);
        if (e == 0)
            e = posix_spawnattr_setsigmask(&attr, &none);
        if (e == 0)
            e = posix_spawnattr_setsigdefault(&attr, &all);
    }
    if (e != 0) {
        rc = gt_error_set(err, GT_EIO, "cannot start \"%s\": %s", spec->file, strerror(e));
        goto done;
    }

    e = posix_spawn(&pid, prog, &fa, &attr, spec->argv,
                    spec->envp ? spec->envp : empty_env);
    if (e != 0) {
        rc = spawn_errno(e, spec->file, err);
        goto done;
    }
    res->pid = pid;
    close_fd(&po[1]);
    close_fd(&pe[1]);
    close_fd(&pi[0]);
    out.fd = po[0];
    er.fd = pe[0];
    po[0] = pe[0] = -1;
    set_nonblock(out.fd);
    set_nonblock(er.fd);
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

    rc = run_loop(spec, pid, pidfd, &out, &er, &pi[1], res, err);
    res->out = stream_take(&out, &res->out_len);
    res->out_truncated = out.truncated;
    res->err = stream_take(&er, &res->err_len);
    res->err_truncated = er.truncated;

done:
    if (sigpipe_blocked) {
        struct timespec zero = {0, 0};
        sigset_t pending;
        while (sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE) &&
               sigtimedwait(&pipe_set, NULL, &zero) == SIGPIPE)
            ;
        pthread_sigmask(SIG_SETMASK, &old_mask, NULL);
    }
    if (attr_init)
        posix_spawnattr_destroy(&attr);
    if (fa_init)
        posix_spawn_file_actions_destroy(&fa);
    close_fd(&pidfd);
    close_fd(&out.fd);
    close_fd(&er.fd);
    for (int i = 0; i < 2; i++) {
        close_fd(&po[i]);
        close_fd(&pe[i]);
        close_fd(&pi[i]);
    }
    free(out.data);
    free(er.data);
    free(prog);
    res->end_ms = gt_now_ms();
    return rc;
}

void gt_exec_result_clear(gt_exec_result *res)
{
    if (res == NULL)
        return;
    free(res->out);
    free(res->err);
    memset(res, 0, sizeof *res);
}
