/* Child processes: spawned without a shell (fork + execve), in their own process group,
 * optionally inside a bubblewrap sandbox and under resource limits, with a timeout
 * (SIGTERM to the group, then SIGKILL after a grace period), stdout and stderr captured
 * up to a cap each with a truncation flag, and cancellation. A child never outlives the
 * process that spawned it: it gets PR_SET_PDEATHSIG(SIGKILL), and a small guard process
 * in its group kills the whole group when the spawner dies (a sandbox's pid namespace
 * does that for everything inside it). */
#ifndef GT_EXEC_H
#define GT_EXEC_H

#include <stdatomic.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"

/* Values of *cancel: STOP ends the group with SIGTERM, then SIGKILL after the grace;
 * KILL (a fenced runner: its lease is going) sends SIGKILL at once. */
enum { GT_CANCEL_NONE = 0, GT_CANCEL_STOP = 1, GT_CANCEL_KILL = 2 };

struct gt_sandbox;

/* Resource limits for a child and everything it starts; 0 = no limit. */
typedef struct gt_exec_limits {
    int64_t memory;      /* bytes of address space per process (RLIMIT_AS) */
    int64_t processes;   /* processes and threads (RLIMIT_NPROC, counted in the sandbox's own
                          * user namespace). The kernel never applies it to uid 0: when
                          * Gantry runs as root, a sandbox's processes (not threads) are
                          * counted every 100 ms instead and the run stopped above it;
                          * unsandboxed, as root, it is not enforced at all */
    int64_t cpu_ms;      /* CPU time per process (RLIMIT_CPU, whole seconds rounded up;
                          * SIGXCPU then, SIGKILL 5 s of CPU later) */
    int64_t open_files;  /* RLIMIT_NOFILE */
} gt_exec_limits;

typedef struct gt_exec_spec {
    const char *file;            /* program; searched in PATH (of envp) when it has no '/'
                                  * (sandboxed: only where the sandbox shows it) */
    char *const *argv;           /* argv[0] included; NULL-terminated */
    char *const *envp;           /* the child's whole environment; NULL-terminated */
    const char *cwd;             /* NULL: inherit */
    int64_t timeout_ms;          /* 0: none */
    int64_t kill_grace_ms;       /* SIGTERM -> SIGKILL delay; 0 means 5000 */
    size_t output_cap;           /* bytes kept per stream; 0 means 1 MiB */
    const char *stdin_data;      /* NULL: /dev/null */
    atomic_int *cancel;          /* GT_CANCEL_*: non-zero terminates the group */
    /* Called once the child runs, with its pid (= its process group id), so the caller
     * can record it (a crash of ours must not orphan the group for long). May be NULL. */
    void (*on_start)(int64_t pid, void *arg);
    void *on_start_arg;
    const gt_exec_limits *limits;      /* NULL: inherit ours; set: core dumps off too */
    const struct gt_sandbox *sandbox;  /* NULL: run directly; else inside bubblewrap */
} gt_exec_spec;

typedef struct gt_exec_result {
    int exit_code;        /* exit status, or 128 + signal when killed by one */
    int term_signal;      /* 0, or the signal that ended the child */
    bool timed_out;
    bool canceled;
    char *out;            /* NUL-terminated; caller releases with gt_exec_result_clear */
    size_t out_len;
    bool out_truncated;
    char *err;
    size_t err_len;
    bool err_truncated;
    int64_t start_ms;     /* wall clock */
    int64_t end_ms;
    int64_t pid;          /* the child (bwrap when sandboxed): its process group */
    int64_t cpu_ms;       /* user + system CPU of the child and the descendants it reaped */
    bool sandboxed;       /* exit_code/term_signal came from bwrap's report (see below) */
    bool nproc_exceeded;  /* the sandbox was stopped for having more than limits->processes */
    int64_t nproc_seen;   /* how many it had then */
} gt_exec_result;

/* Runs the child to completion, blocking the calling thread. That thread must not exit
 * before the call returns anyway: PR_SET_PDEATHSIG fires when the spawning *thread*
 * exits, and this one lives exactly as long as the child. GT_OK when the child ran
 * (whatever its exit status); GT_ENOTFOUND / GT_EPERM when it could not be started
 * (err names the program and why); GT_EUNAVAIL when the sandbox cannot work here;
 * res is then still cleared/valid (stderr holds what bwrap said). A sandboxed
 * program killed by signal N is reported by bwrap as exit status 128 + N: res then has
 * exit_code 128 + N and term_signal N, as for a direct child (a program that itself
 * exits with 129..159 looks the same). */
gt_err gt_exec_run(const gt_exec_spec *spec, gt_exec_result *res, gt_error *err);

/* Why a failed child probably hit one of lim's limits: "killed by SIGXCPU: CPU time
 * limit 10s reached", "out of memory: memory limit 64 MiB reached (...)", "process limit
 * 16 reached (...)"; NULL when nothing points at a limit. The CPU case is certain (the
 * signal says so); memory and process limits show only as failed allocations and forks,
 * so those are read from the messages the program printed on stderr. Caller frees. */
char *gt_exec_limit_reason(const gt_exec_limits *lim, const gt_exec_result *res);

/* Frees the buffers of res and zeroes it. */
void gt_exec_result_clear(gt_exec_result *res);

/* Looks up file in the PATH given (NULL: the process's); returns a new string or NULL. */
char *gt_exec_which(const char *file, const char *path);

#endif
