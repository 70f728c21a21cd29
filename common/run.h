/* Running a service once: fetch its repository at the reference, prepare the
 * interpreter (a venv for python-script), build argv/env from the inputs without a
 * shell, execute with limits, and describe the result as JSON. Shared by local mode
 * (the CLI), the controller's worker pool and runners. */
#ifndef GT_RUN_H
#define GT_RUN_H

#include <stdatomic.h>
#include <cjson/cJSON.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "exec.h"
#include "util.h"

typedef struct gt_run_options {
    const char *working_dir;       /* caches live under it: repos/, venvs/, runs/ */
    const char *git;               /* program names or paths */
    const char *python;
    const char *ansible_playbook;
    size_t output_limit;           /* bytes kept per stream */
    int64_t kill_grace_ms;
    int64_t default_timeout_ms;    /* when the service sets none; 0 = no limit */
    int64_t fetch_timeout_ms;      /* git and pip; 0 = 300 s */
    int64_t reference_max_age_ms;  /* reuse a resolved reference this long; 0: ask every run */
    const char *pip_index_url;     /* pip options; NULL or "" = pip's default */
    const char *pip_extra_index_url;
    const char *pip_find_links;
    const char *pip_trusted_host;
    bool pip_no_index;
    bool allow_http;               /* git may fetch http:// URLs ([runner] allow_http_repositories) */
    char *const *environ;          /* the environment children start from (filtered) */
    /* Set per run by gt_run_execute (on its own copy): git and pip are canceled with the
     * run, so a cancel or a drain is never held up by a fetch. NULL otherwise. */
    atomic_int *cancel;
    bool sandbox_none;             /* [runner] sandbox = none: the service's process runs
                                    * without bubblewrap (helper tools never use it) */
    gt_exec_limits limits;         /* [runner] defaults; a service's "limits" override each */
} gt_run_options;

/* What a run needs besides the service document. */
typedef struct gt_run_request {
    const cJSON *service;          /* the stored service document */
    const cJSON *repository;       /* the stored repository document */
    const cJSON *inputs;           /* validated inputs (object) or NULL */
    char *const *secret_env;       /* "VAR=value" entries, NULL-terminated, or NULL */
    const char *ssh_key;           /* private key text for the repository, or NULL */
    const char *execution_id;      /* names the scratch directory */
    int64_t attempt;               /* GANTRY_ATTEMPT for the service (0: not set) */
    atomic_int *cancel; /* set non-zero to cancel */
    void (*on_start)(int64_t pid, void *arg); /* the service's process started */
    void *on_start_arg;
} gt_run_request;

/* Runs the request to completion. On GT_OK *result is a new object:
 * {state, return_code, signal, stdout, stderr, stdout_truncated, stderr_truncated,
 *  started_at, finished_at, duration_ms, commit, error?}. Failures to prepare (fetch,
 * missing file, venv) are GT_OK too, with state "failed" and "error" saying why:
 * they are the execution's outcome. Other codes mean the run could not be described. */
gt_err gt_run_execute(const gt_run_options *o, const gt_run_request *req, cJSON **result,
                      gt_error *err);

/* Checks a run's inputs against what its service makes of them: every name matches
 * ^[A-Za-z_][A-Za-z0-9_-]*$; an ansible-playbook input is never a name Ansible gives a
 * meaning to (ansible_*, hostvars, become*, ...); an executable whose arg format makes
 * a value an argument of its own gets no value starting with '-'. GT_EINVAL with the
 * field "$.inputs.<name>". inputs may be NULL. */
gt_err gt_run_check_inputs(const cJSON *service, const cJSON *inputs, gt_error *err);

/* Builds the child's argv for a service and its inputs (exposed for tests), after
 * gt_run_check_inputs. python may be NULL (defaults). An ansible-playbook's inputs are
 * written to scratch/extra-vars.yml (0600; see extravars.h) and passed as
 * "--extra-vars @<absolute path>"; scratch may be NULL for the other types. */
gt_err gt_run_build_argv(const gt_run_options *o, const cJSON *service, const cJSON *inputs,
                         const char *python, const char *scratch, gt_strv *argv,
                         gt_error *err);

/* Renders a JSON input value as an argument string; caller frees. */
char *gt_run_value_string(const cJSON *v);

/* What gt_run_path_inside requires the path to be. */
typedef enum gt_path_kind { GT_PATH_FILE, GT_PATH_DIR, GT_PATH_ANY } gt_path_kind;

/* base/rel (rel NULL or "" = base), once every symlink is resolved, must be inside
 * root (the checkout) and be what kind says: a regular file, a directory, or either.
 * GT_ENOTFOUND or GT_EPERM with a message naming what ("requirements file") and rel,
 * never where a link leads. *out (may be NULL) receives the resolved path (caller
 * frees). */
gt_err gt_run_path_inside(const char *root, const char *base, const char *rel,
                          gt_path_kind kind, const char *what, char **out, gt_error *err);

#endif

/* Internal to run.c, repo.c and venv.c: appends to env the variables a child may
 * inherit from o->environ (PATH, HOME, LANG, LC_*, TZ, USER, LOGNAME, TMPDIR). */
void gt_run_env_base(const gt_run_options *o, gt_strv *env);

/* Runs a helper tool (git, pip) to completion. GT_OK on exit 0; otherwise GT_EIO
 * with "<what> failed (exit N): <last lines of its output>". *out (may be NULL)
 * receives its stdout (caller frees). */
gt_err gt_run_tool(const gt_run_options *o, char *const *argv, char *const *env,
                   const char *cwd, const char *what, char **out, gt_error *err);
/* As gt_run_tool, inside the sandbox sb (NULL: directly). */
struct gt_sandbox;
gt_err gt_run_tool_in(const gt_run_options *o, const struct gt_sandbox *sb, char *const *argv,
                      char *const *env, const char *cwd, const char *what, char **out,
                      gt_error *err);
