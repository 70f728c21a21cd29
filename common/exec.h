/* Child processes: spawned without a shell, in their own process group, with a
 * timeout (SIGTERM to the group, then SIGKILL after a grace period), stdout and
 * stderr captured up to a cap each with a truncation flag, and cancellation. */
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

typedef struct gt_exec_spec {
    const char *file;            /* program; searched in PATH (of envp) when it has no '/' */
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
    int64_t pid;
} gt_exec_result;

/* Runs the child to completion (blocking the calling thread). GT_OK when the child
 * ran (whatever its exit status); GT_ENOTFOUND / GT_EPERM when it could not be
 * started (err names the program and why); res is then still cleared/valid. */
gt_err gt_exec_run(const gt_exec_spec *spec, gt_exec_result *res, gt_error *err);

/* Frees the buffers of res and zeroes it. */
void gt_exec_result_clear(gt_exec_result *res);

/* Looks up file in the PATH given (NULL: the process's); returns a new string or NULL. */
char *gt_exec_which(const char *file, const char *path);

#endif
