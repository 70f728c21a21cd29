/* Run isolation with bubblewrap: the argv that puts a command in its own user, pid, ipc,
 * uts (and cgroup) namespaces, with no capabilities, a read-only /usr and the parts of
 * /etc programs need, a private /tmp and HOME, and only the directories the caller names;
 * plus the probe that says whether bubblewrap can work on this machine. exec.c runs the
 * result (gt_exec_spec.sandbox); nothing here forks except the probe. */
#ifndef GT_SANDBOX_H
#define GT_SANDBOX_H

#include <stdbool.h>
#include <stdint.h>

#include "error.h"
#include "util.h"

/* What a sandboxed command sees besides the fixed layout (see sandbox.c). Paths are
 * absolute and appear inside at the same path, so a venv's shebangs stay valid. */
typedef struct gt_sandbox {
    char *const *writable;   /* bound read-write; NULL-terminated, may be NULL */
    char *const *readonly;   /* bound read-only; NULL-terminated, may be NULL */
    int64_t tmpfs_size;      /* bytes for each of /tmp and HOME; 0: the kernel's default */
} gt_sandbox;

/* GT_OK when bubblewrap can start a sandbox here. Probed once per process, the answer
 * (and err's message) cached: GT_EUNAVAIL naming what is missing (the package, user
 * namespaces and the sysctl that disables them) and how to run without. Thread-safe. */
gt_err gt_sandbox_check(gt_error *err);

/* The uncached probe behind gt_sandbox_check, looking for bwrap in path (NULL: the
 * process's PATH). *bwrap (may be NULL) receives its path; caller frees. For tests. */
gt_err gt_sandbox_probe(const char *path, char **bwrap, gt_error *err);

/* Builds the whole command line that runs cmd (cmd[0] an absolute path, or relative to
 * cwd) in sb: bwrap and its options, then cmd. status_fd >= 0 adds --json-status-fd.
 * nproc > 0 sets RLIMIT_NPROC inside the sandbox (through prlimit(1), so the count is
 * that of the sandbox's own user namespace, not of every process of Gantry's uid).
 * env is the child's environment; *bwrap_env receives the environment bwrap itself
 * gets (passed through to cmd unchanged: values never appear in an argv), while the
 * few loader and libc variables (LD_*, GCONV_PATH, ...) that would act on bwrap are
 * moved to --setenv, and HOME and TMPDIR point at the sandbox's own. Requires a
 * successful gt_sandbox_check. */
gt_err gt_sandbox_command(const gt_sandbox *sb, const char *cwd, int64_t nproc, int status_fd,
                          char *const *cmd, char *const *env, gt_strv *argv, gt_strv *bwrap_env,
                          gt_error *err);

/* True when path (absolute, or relative to cwd) resolves inside what sb shows a run. */
bool gt_sandbox_sees(const gt_sandbox *sb, const char *cwd, const char *path);

/* HOME inside the sandbox: the passwd entry's home directory when usable, else
 * /home/gantry. Static string. */
const char *gt_sandbox_home(void);

#endif
