#include "run.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "exec.h"
#include "extravars.h"
#include "json.h"
#include "log.h"
#include "model/model.h"
#include "repo.h"
#include "sandbox.h"
#include "venv.h"

void gt_run_env_base(const gt_run_options *o, gt_strv *env)
{
    static const char *keep[] = {"PATH=", "HOME=", "LANG=", "LC_", "TZ=", "USER=",
                                 "LOGNAME=", "TMPDIR="};
    bool have_path = false;
    for (char *const *e = o->environ; e && *e; e++) {
        for (size_t i = 0; i < sizeof keep / sizeof keep[0]; i++) {
            if (strncmp(*e, keep[i], strlen(keep[i])) == 0) {
                gt_strv_push(env, *e);
                have_path |= i == 0;
                break;
            }
        }
    }
    if (!have_path)
        gt_strv_push(env, "PATH=/usr/local/bin:/usr/bin:/bin");
}

/* The last `max` bytes of s, starting at a line boundary when there is one. */
static const char *tail(const char *s, size_t len, size_t max)
{
    if (len <= max)
        return s;
    const char *p = s + len - max;
    const char *nl = strchr(p, '\n');
    return nl ? nl + 1 : p;
}

gt_err gt_run_tool(const gt_run_options *o, char *const *argv, char *const *env,
                   const char *cwd, const char *what, char **out, gt_error *err)
{
    return gt_run_tool_in(o, NULL, argv, env, cwd, what, out, err);
}

gt_err gt_run_tool_in(const gt_run_options *o, const gt_sandbox *sb, char *const *argv,
                      char *const *env, const char *cwd, const char *what, char **out,
                      gt_error *err)
{
    gt_exec_result res = {0};
    gt_exec_spec spec = {
        .file = argv[0],
        .argv = argv,
        .envp = env,
        .cwd = cwd,
        .timeout_ms = o->fetch_timeout_ms ? o->fetch_timeout_ms : 300000,
        .kill_grace_ms = o->kill_grace_ms,
        .output_cap = 256 * 1024,
        .cancel = o->cancel,
        .sandbox = sb,
    };
    gt_err rc = gt_exec_run(&spec, &res, err);
    if (rc != GT_OK)
        goto done;
    if (res.canceled) {
        rc = gt_error_set(err, GT_EAGAIN, "%s was canceled", what);
    } else if (res.timed_out) {
        rc = gt_error_set(err, GT_ETIMEDOUT, "%s timed out after %lld s", what,
                          (long long)spec.timeout_ms / 1000);
    } else if (res.exit_code != 0) {
        const char *msg = res.err_len ? res.err : res.out;
        size_t n = res.err_len ? res.err_len : res.out_len;
        rc = gt_error_set(err, GT_EIO, "%s failed (exit %d): %s", what, res.exit_code,
                          n ? tail(msg, n, 600) : "no output");
        /* drop the trailing newline the tool printed */
        if (err && err->message[0]) {
            size_t m = strlen(err->message);
            while (m && err->message[m - 1] == '\n')
                err->message[--m] = '\0';
        }
    } else if (out) {
        *out = res.out;
        res.out = NULL;
    }
done:
    gt_exec_result_clear(&res);
    return rc;
}

char *gt_run_value_string(const cJSON *v)
{
    if (cJSON_IsString(v))
        return gt_xstrdup(v->valuestring);
    if (cJSON_IsBool(v))
        return gt_xstrdup(cJSON_IsTrue(v) ? "true" : "false");
    if (cJSON_IsNull(v))
        return gt_xstrdup("");
    if (cJSON_IsNumber(v)) {
        double d = v->valuedouble;
        if (d == floor(d) && fabs(d) < 9007199254740992.0)
            return gt_xasprintf("%lld", (long long)d);
        return gt_xasprintf("%.17g", d);
    }
    return gt_json_print(v);
}

/* "--{key} {value}" -> tokens split on spaces, {key} and {value} substituted. */
static void format_args(const char *fmt, const char *key, const char *value, gt_strv *argv)
{
    char *copy = gt_xstrdup(fmt);
    char *save = NULL;
    for (char *tok = strtok_r(copy, " \t", &save); tok; tok = strtok_r(NULL, " \t", &save)) {
        gt_buf b = {0};
        for (const char *p = tok; *p;) {
            if (strncmp(p, "{key}", 5) == 0) {
                gt_buf_puts(&b, key);
                p += 5;
            } else if (strncmp(p, "{value}", 7) == 0) {
                gt_buf_puts(&b, value);
                p += 7;
            } else {
                gt_buf_append(&b, p++, 1);
            }
        }
        gt_strv_push_owned(argv, gt_buf_steal(&b));
    }
    free(copy);
}

static const char *str_or(const cJSON *obj, const char *key, const char *dflt)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsString(it) ? it->valuestring : dflt;
}

static bool ascii_alpha(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

/* ^[A-Za-z_][A-Za-z0-9_-]*$ (ASCII, whatever the locale): a name that becomes
 * "--name=..." stays one option, and one that cannot start with '-' or be empty
 * (which would make "--" or "---x"). */
static bool input_key_valid(const char *k)
{
    if (k == NULL || !(ascii_alpha(k[0]) || k[0] == '_'))
        return false;
    for (const char *p = k; *p; p++)
        if (!(ascii_alpha(*p) || (*p >= '0' && *p <= '9') || *p == '_' || *p == '-'))
            return false;
    return true;
}

/* Names Ansible gives a meaning to (its "Special Variables", the connection and become
 * settings, the Jinja globals it defines): as extra vars, which win over everything,
 * they would re-point a play (ansible_host, ansible_connection=local,
 * ansible_become_user=root, ansible_python_interpreter=/tmp/x) or change what its
 * templates see. */
static bool ansible_reserved(const char *k)
{
    static const char *const names[] = {
        "hostvars", "groups", "group_names", "ungrouped", "inventory_hostname",
        "inventory_hostname_short", "inventory_dir", "inventory_file", "playbook_dir",
        "play_hosts", "role_path", "role_name", "role_names", "role_uuid", "omit",
        "environment", "vars", "connection", "remote_user", "remote_addr", "delegate_to",
        "delegate_facts", "lookup", "query", "q", "now", "undef", NULL};
    static const char *const prefixes[] = {"ansible_", "become", NULL};
    for (size_t i = 0; names[i]; i++)
        if (strcmp(k, names[i]) == 0)
            return true;
    for (size_t i = 0; prefixes[i]; i++)
        if (strncmp(k, prefixes[i], strlen(prefixes[i])) == 0)
            return true;
    return false;
}

/* Whether some token of an executable's arg format starts with the value: there the
 * value is an argv entry of its own, and one starting with '-' could be read as an
 * option. *after_option: every such token follows one that starts with '-' (the
 * value is then that option's argument). */
static bool value_starts_token(const char *fmt, bool *after_option)
{
    bool split = false, prev_dash = false;
    *after_option = true;
    for (const char *p = fmt; *p;) {
        p += strspn(p, " \t");
        if (*p == '\0')
            break;
        size_t n = strcspn(p, " \t");
        if (strncmp(p, "{value}", 7) == 0) {
            split = true;
            *after_option &= prev_dash;
        }
        prev_dash = p[0] == '-';
        p += n;
    }
    return split;
}

gt_err gt_run_check_inputs(const cJSON *service, const cJSON *inputs, gt_error *err)
{
    if (inputs == NULL || cJSON_IsNull(inputs))
        return GT_OK;
    if (!cJSON_IsObject(inputs))
        return gt_error_setf(err, GT_EINVAL, "$.inputs", "$.inputs: expected an object");
    const char *type = str_or(service, "type", "");
    const char *fmt = str_or(service, "arg_format", "--{key} {value}");
    bool after_option = false;
    bool split = strcmp(type, "executable") == 0 && value_starts_token(fmt, &after_option);
    const cJSON *in;
    cJSON_ArrayForEach(in, inputs) {
        char field[300];
        snprintf(field, sizeof field, "$.inputs.%.200s", in->string);
        if (!input_key_valid(in->string))
            return gt_error_setf(err, GT_EINVAL, field,
                                 "%s: \"%.200s\" is not a valid input name (a letter or _, then "
                                 "letters, digits, _ or -)", field, in->string);
        if (strcmp(type, "ansible-playbook") == 0 && ansible_reserved(in->string))
            return gt_error_setf(err, GT_EINVAL, field,
                                 "%s: \"%s\" is a name Ansible gives a meaning to (magic, "
                                 "connection or become variable) and cannot be an input", field,
                                 in->string);
        /* python-script passes "--key=value", one argument, and so do arg formats
         * like "--{key}={value}": a value there is never an option. Where the format
         * makes the value an argument of its own ("--{key} {value}", "{value}"), one
         * starting with '-' is refused rather than rewritten: the program's own parser
         * decides what "-x" means, and a quiet rewrite would change the data. Numbers
         * after an option token ("--count -1") are its argument to every parser
         * (getopt, argparse, a shell loop) and stay allowed. */
        if (split) {
            char *v = gt_run_value_string(in);
            bool bad = v[0] == '-' && (!after_option || !cJSON_IsNumber(in));
            free(v);
            if (bad)
                return gt_error_setf(err, GT_EINVAL, field,
                                     "%s: the value starts with \"-\" and the service's arg "
                                     "format \"%s\" passes it as an argument of its own, where "
                                     "it could be read as an option; use an arg format that "
                                     "joins key and value, like --{key}={value}", field, fmt);
        }
    }
    return GT_OK;
}

/* Writes the inputs (and nothing else) as an extra-vars file under scratch, 0600;
 * *path is its absolute name (caller frees). */
static gt_err write_extravars(const cJSON *inputs, const char *scratch, char **path,
                              gt_error *err)
{
    char *text = NULL, *file = NULL;
    size_t len = 0;
    char real[PATH_MAX];
    gt_err rc = gt_extravars_yaml(inputs, "$.inputs", &text, &len, err);
    if (rc != GT_OK)
        goto done;
    /* ansible-playbook runs in the checkout: the path it is given must be absolute */
    if (scratch == NULL || realpath(scratch, real) == NULL) {
        rc = gt_error_set(err, GT_EIO, "extra vars: scratch directory %s: %s",
                          scratch ? scratch : "(none)", scratch ? strerror(errno) : "not given");
        goto done;
    }
    file = gt_path_join(real, "extra-vars.yml");
    if ((rc = gt_write_file_atomic(file, text, len, 0600, err)) != GT_OK)
        goto done;
    *path = file;
    file = NULL;
done:
    if (text)
        gt_wipe(text, len);
    free(text);
    free(file);
    return rc;
}

gt_err gt_run_build_argv(const gt_run_options *o, const cJSON *service, const cJSON *inputs,
                         const char *python, const char *scratch, gt_strv *argv,
                         gt_error *err)
{
    const char *type = str_or(service, "type", "");
    const char *file = str_or(service, "filename", "");
    const cJSON *in;
    gt_err rc;
    /* checked when the run was requested; again here for executions stored before */
    if ((rc = gt_run_check_inputs(service, inputs, err)) != GT_OK)
        return rc;
    if (strcmp(type, "python-script") == 0) {
        gt_strv_push(argv, python ? python : (o->python ? o->python : "python3"));
        gt_strv_push(argv, file);
        cJSON_ArrayForEach(in, inputs) {
            char *v = gt_run_value_string(in);
            gt_strv_push_owned(argv, gt_xasprintf("--%s=%s", in->string, v));
            free(v);
        }
        return GT_OK;
    }
    if (strcmp(type, "ansible-playbook") == 0) {
        gt_strv_push(argv, o->ansible_playbook ? o->ansible_playbook : "ansible-playbook");
        const cJSON *pb;
        cJSON_ArrayForEach(pb, cJSON_GetObjectItemCaseSensitive(service, "playbooks"))
            if (cJSON_IsString(pb))
                gt_strv_push(argv, pb->valuestring);
        const char *inv = str_or(service, "inventory", NULL);
        if (inv && inv[0]) {
            gt_strv_push(argv, "-i");
            gt_strv_push(argv, inv);
        }
        /* The service's own extra vars are its author's settings and may be templates
         * ("{{ inventory_hostname }}"): they stay JSON in argv, as before. Inputs come
         * from whoever runs the service: they go in a file in which every string is
         * !unsafe (never templated), given last so that inputs win. */
        const cJSON *ev = cJSON_GetObjectItemCaseSensitive(service, "extra_vars");
        if (cJSON_IsObject(ev) && cJSON_GetArraySize(ev) > 0) {
            gt_strv_push(argv, "--extra-vars");
            gt_strv_push_owned(argv, gt_json_print(ev));
        }
        if (cJSON_GetArraySize(inputs) > 0) {
            char *path = NULL;
            if ((rc = write_extravars(inputs, scratch, &path, err)) != GT_OK)
                return rc;
            gt_strv_push(argv, "--extra-vars");
            gt_strv_push_owned(argv, gt_xasprintf("@%s", path));
            free(path);
        }
        return GT_OK;
    }
    if (strcmp(type, "executable") == 0) {
        const char *interp = str_or(service, "interpreter", NULL);
        if (interp && interp[0])
            gt_strv_push(argv, interp);
        gt_strv_push_owned(argv, gt_xasprintf("./%s", file));
        const char *fmt = str_or(service, "arg_format", "--{key} {value}");
        cJSON_ArrayForEach(in, inputs) {
            char *v = gt_run_value_string(in);
            format_args(fmt, in->string, v, argv);
            free(v);
        }
        return GT_OK;
    }
    return gt_error_setf(err, GT_EINVAL, "$.type", "service type \"%s\" cannot be run", type);
}

gt_err gt_run_path_inside(const char *root, const char *base, const char *rel,
                          gt_path_kind kind, const char *what, char **out, gt_error *err)
{
    char *joined = gt_path_join(base, rel && rel[0] ? rel : ".");
    char real_root[PATH_MAX], real[PATH_MAX];
    struct stat st;
    gt_err rc = GT_OK;
    size_t n = 0;
    if (realpath(root, real_root) == NULL || realpath(joined, real) == NULL) {
        struct stat lst;
        rc = lstat(joined, &lst) == 0 && S_ISLNK(lst.st_mode)
                 ? gt_error_set(err, GT_ENOTFOUND, "%s \"%s\" is a symbolic link to nothing in "
                                "the repository", what, rel)
                 : gt_error_set(err, GT_ENOTFOUND, "%s \"%s\" not found in the repository", what,
                                rel);
        goto done;
    }
    n = strlen(real_root);
    if (strncmp(real, real_root, n) != 0 || (real[n] != '/' && real[n] != '\0')) {
        /* the message names the path in the repository, never where it leads */
        rc = gt_error_set(err, GT_EPERM, "%s \"%s\" points outside the repository (a symbolic "
                          "link out of the checkout)", what, rel);
        goto done;
    }
    if (stat(real, &st) != 0) {
        rc = gt_error_set(err, GT_ENOTFOUND, "%s \"%s\": %s", what, rel, strerror(errno));
        goto done;
    }
    if (kind == GT_PATH_FILE && !S_ISREG(st.st_mode))
        rc = gt_error_set(err, GT_EPERM, "%s \"%s\" is not a regular file", what, rel);
    else if (kind == GT_PATH_DIR && !S_ISDIR(st.st_mode))
        rc = gt_error_set(err, GT_EPERM, "%s \"%s\" is not a directory", what, rel);
    else if (kind == GT_PATH_ANY && !S_ISDIR(st.st_mode) && !S_ISREG(st.st_mode))
        rc = gt_error_set(err, GT_EPERM, "%s \"%s\" is neither a file nor a directory", what, rel);
    if (rc == GT_OK && out)
        *out = gt_xstrdup(real);
done:
    free(joined);
    return rc;
}

static void set_result_times(cJSON *r, int64_t start, int64_t end)
{
    char ts[40];
    gt_format_time(start, ts, sizeof ts);
    gt_json_set_str(r, "started_at", ts);
    gt_format_time(end, ts, sizeof ts);
    gt_json_set_str(r, "finished_at", ts);
    gt_json_set_num(r, "duration_ms", (double)(end - start));
}

static cJSON *failed_result(const char *message, int64_t start, const char *commit)
{
    cJSON *r = cJSON_CreateObject();
    gt_json_set_str(r, "state", "failed");
    gt_json_set_str(r, "error", message);
    gt_json_set(r, "return_code", cJSON_CreateNull());
    gt_json_set_str(r, "stdout", "");
    gt_json_set_str(r, "stderr", "");
    gt_json_set_bool(r, "stdout_truncated", false);
    gt_json_set_bool(r, "stderr_truncated", false);
    if (commit)
        gt_json_set_str(r, "commit", commit);
    set_result_times(r, start, gt_now_ms());
    return r;
}

/* Runs that start at once in this process. A checkout (git processes, a tree copy) and
 * a sandbox setup cost CPU milliseconds each; hundreds started together (a full runner
 * of capacity 500) starve everything else of the CPU, the lease renewals and store
 * writes included, until the lease lapses. Beyond this many a run waits its turn for
 * each of the two (checkout; sandbox spawn); once its process runs, it no longer
 * counts. */
static pthread_mutex_t start_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t start_cv = PTHREAD_COND_INITIALIZER;
static int starting;

typedef struct start_turn {
    bool held;
    const gt_run_request *req;
} start_turn;

static void start_enter(start_turn *t)
{
    static int limit; /* under start_mu; sysconf reads /sys: once, not twice a run */
    pthread_mutex_lock(&start_mu);
    if (limit == 0) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        limit = cpus > 0 ? (int)(2 * cpus) : 2;
    }
    while (starting >= limit && !(t->req->cancel && *t->req->cancel))
        gt_cond_wait_ms(&start_cv, &start_mu, 200);
    starting++;
    t->held = true;
    pthread_mutex_unlock(&start_mu);
}

static void start_leave(start_turn *t)
{
    if (!t->held)
        return;
    pthread_mutex_lock(&start_mu);
    starting--;
    t->held = false;
    pthread_cond_signal(&start_cv);
    pthread_mutex_unlock(&start_mu);
}

static void on_started(int64_t pid, void *arg)
{
    start_turn *t = arg;
    start_leave(t);
    if (t->req->on_start)
        t->req->on_start(pid, t->req->on_start_arg);
}

gt_err gt_run_execute(const gt_run_options *opts, const gt_run_request *req, cJSON **result,
                      gt_error *err)
{
    start_turn turn = {.req = req};
    gt_run_options run_opts = *opts;
    run_opts.cancel = req->cancel;
    const gt_run_options *o = &run_opts;
    gt_err rc = GT_OK;
    gt_error why = {0};
    int64_t start = gt_now_ms();
    char *runs = gt_path_join(o->working_dir, "runs");
    char *scratch = gt_xasprintf("%s/%s", runs, req->execution_id);
    char *src = gt_path_join(scratch, "src");
    char *commit = NULL, *cwd = NULL, *file = NULL, *venv = NULL, *python = NULL;
    char *limit_why = NULL;
    gt_strv argv = {0}, env = {0};
    gt_exec_result res = {0};
    const cJSON *svc = req->service;
    const char *type = str_or(svc, "type", "");

    gt_rm_rf(scratch, NULL);
    if ((rc = gt_mkdir_p(scratch, 0700, err)) != GT_OK)
        goto done;
    start_enter(&turn);
    gt_err crc = gt_repo_checkout(o, str_or(req->repository, "url", ""),
                                  str_or(req->repository, "reference", NULL), req->ssh_key, src,
                                  &commit, &why);
    start_leave(&turn); /* a venv build may take minutes: it does not hold a turn */
    if (crc != GT_OK)
        goto failed;
    /* Every path the run (or pip, for it) reads stays inside the checkout. */
    if (gt_run_path_inside(src, src, str_or(svc, "working_dir", ""), GT_PATH_DIR,
                           "working directory", &cwd, &why) != GT_OK)
        goto failed;
    const char *fname = str_or(svc, "filename", "");
    if (fname[0] && gt_run_path_inside(src, cwd, fname, GT_PATH_FILE, "file", &file, &why) != GT_OK)
        goto failed;
    const cJSON *pb;
    cJSON_ArrayForEach(pb, cJSON_GetObjectItemCaseSensitive(svc, "playbooks"))
        if (cJSON_IsString(pb) && gt_run_path_inside(src, cwd, pb->valuestring, GT_PATH_FILE,
                                                     "playbook", NULL, &why) != GT_OK)
            goto failed;
    /* an inventory is a file or a directory of them; "host1,host2," is a host list */
    const char *inv = str_or(svc, "inventory", NULL);
    if (inv && inv[0] && strchr(inv, ',') == NULL &&
        gt_run_path_inside(src, cwd, inv, GT_PATH_ANY, "inventory", NULL, &why) != GT_OK)
        goto failed;

    gt_run_env_base(o, &env);
    if (strcmp(type, "python-script") == 0) {
        char *reqs_path = gt_path_join(cwd, "requirements.txt");
        char *reqs = NULL;
        struct stat st;
        /* lstat: a dangling or escaping symlink is refused, not taken for "no file" */
        bool have = lstat(reqs_path, &st) == 0;
        free(reqs_path);
        if (have && gt_run_path_inside(src, cwd, "requirements.txt", GT_PATH_FILE,
                                       "requirements file", &reqs, &why) != GT_OK)
            goto failed;
        if (reqs) {
            char *repo_id = gt_xasprintf("%s\n%s", str_or(req->repository, "name", ""),
                                         str_or(req->repository, "url", ""));
            gt_err vrc = gt_venv_ensure(o, repo_id, reqs, src, cwd, &venv, &why);
            free(repo_id);
            if (vrc != GT_OK) {
                free(reqs);
                goto failed;
            }
            python = gt_xasprintf("%s/bin/python", venv);
            gt_strv_push_owned(&env, gt_xasprintf("VIRTUAL_ENV=%s", venv));
            /* the venv's bin first on PATH, as `activate` would do */
            for (size_t i = 0; i < env.n; i++) {
                if (strncmp(env.v[i], "PATH=", 5) == 0) {
                    char *p = gt_xasprintf("PATH=%s/bin:%s", venv, env.v[i] + 5);
                    free(env.v[i]);
                    env.v[i] = p;
                }
            }
        }
        free(reqs);
        gt_strv_push(&env, "PYTHONUNBUFFERED=1");
    } else if (strcmp(type, "ansible-playbook") == 0) {
        gt_strv_push(&env, "ANSIBLE_NOCOLOR=1");
        gt_strv_push(&env, "ANSIBLE_RETRY_FILES_ENABLED=False");
        gt_strv_push(&env, "ANSIBLE_LOCALHOST_WARNING=False");
        gt_strv_push(&env, "ANSIBLE_INVENTORY_UNPARSED_WARNING=False");
        gt_strv_push_owned(&env, gt_xasprintf("ANSIBLE_LOCAL_TEMP=%s/ansible-tmp", scratch));
        gt_strv_push_owned(&env, gt_xasprintf("ANSIBLE_HOME=%s/ansible-home", scratch));
    } else if (strcmp(type, "executable") == 0) {
        const char *interp = str_or(svc, "interpreter", NULL);
        if ((interp == NULL || interp[0] == '\0') && access(file, X_OK) != 0) {
            gt_error_set(&why, GT_EPERM,
                         "file \"%s\" is not executable (make it executable in the repository "
                         "or set an interpreter)", fname);
            goto failed;
        }
    }
    gt_strv_push_owned(&env, gt_xasprintf("GANTRY_EXECUTION_ID=%s", req->execution_id));
    if (req->attempt > 0)
        gt_strv_push_owned(&env, gt_xasprintf("GANTRY_ATTEMPT=%lld", (long long)req->attempt));
    const cJSON *kv;
    cJSON_ArrayForEach(kv, cJSON_GetObjectItemCaseSensitive(svc, "env"))
        if (cJSON_IsString(kv))
            gt_strv_push_owned(&env, gt_xasprintf("%s=%s", kv->string, kv->valuestring));
    for (char *const *s = req->secret_env; s && *s; s++)
        gt_strv_push(&env, *s);

    if (gt_run_build_argv(o, svc, req->inputs, python, scratch, &argv, &why) != GT_OK)
        goto failed;
    int64_t timeout_s = 0;
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(svc, "timeout");
    if (cJSON_IsNumber(t))
        timeout_s = gt_json_member_i64(svc, "timeout", 0);
    /* Isolation: the run sees its scratch directory (the checkout, writable) and its venv
     * (read-only) at their own paths, nothing else of the working directory. */
    gt_service_limits sl;
    if (gt_service_limits_get(svc, &sl, &why) != GT_OK)
        goto failed;
    gt_exec_limits lim = {
        .memory = sl.memory >= 0 ? sl.memory : o->limits.memory,
        .processes = sl.processes >= 0 ? sl.processes : o->limits.processes,
        .cpu_ms = sl.cpu_ms >= 0 ? sl.cpu_ms : o->limits.cpu_ms,
        .open_files = sl.open_files >= 0 ? sl.open_files : o->limits.open_files,
    };
    char *rw[] = {scratch, NULL}, *ro[] = {venv, NULL};
    gt_sandbox sb = {.writable = rw, .readonly = venv ? ro : NULL, .tmpfs_size = lim.memory};
    gt_exec_spec spec = {
        .file = argv.v[0],
        .argv = argv.v,
        .envp = env.v,
        .cwd = cwd,
        .timeout_ms = timeout_s > 0 ? timeout_s * 1000 : o->default_timeout_ms,
        .kill_grace_ms = o->kill_grace_ms,
        .output_cap = o->output_limit,
        .cancel = req->cancel,
        .on_start = on_started,
        .on_start_arg = &turn,
        .limits = &lim,
        .sandbox = o->sandbox_none ? NULL : &sb,
    };
    start_enter(&turn);  /* left once the sandbox's process started */
    if (gt_exec_run(&spec, &res, &why) != GT_OK)
        goto failed;
    limit_why = gt_exec_limit_reason(&lim, &res);

    cJSON *r = cJSON_CreateObject();
    const char *state = res.canceled ? "canceled"
                        : res.timed_out ? "timed_out"
                        : res.exit_code == 0 ? "succeeded" : "failed";
    gt_json_set_str(r, "state", state);
    gt_json_set_num(r, "return_code", res.exit_code);
    if (res.term_signal)
        gt_json_set_num(r, "signal", res.term_signal);
    /* output is stored as text: invalid UTF-8 and NULs become U+FFFD */
    char *out_text = gt_utf8_clean(res.out ? res.out : "", res.out ? res.out_len : 0, NULL);
    char *err_text = gt_utf8_clean(res.err ? res.err : "", res.err ? res.err_len : 0, NULL);
    gt_json_set_str(r, "stdout", out_text);
    gt_json_set_str(r, "stderr", err_text);
    free(out_text);
    free(err_text);
    gt_json_set_bool(r, "stdout_truncated", res.out_truncated);
    gt_json_set_bool(r, "stderr_truncated", res.err_truncated);
    gt_json_set_str(r, "commit", commit);
    if (res.timed_out)
        gt_json_set(r, "error", cJSON_CreateString("timed out"));
    else if (limit_why && strcmp(state, "failed") == 0)
        gt_json_set_str(r, "error", limit_why);
    set_result_times(r, start, res.end_ms > start ? res.end_ms : gt_now_ms());
    *result = r;
    goto done;
failed:
    *result = failed_result(why.message, start, commit);
    if (why.code == GT_EAGAIN && req->cancel && *req->cancel) /* canceled while preparing */
        gt_json_set_str(*result, "state", "canceled");
done:
    start_leave(&turn);
    gt_exec_result_clear(&res);
    gt_rm_rf(scratch, NULL);
    gt_strv_free(&argv);
    /* secret values live in env: wipe them before the memory goes back */
    for (size_t i = 0; i < env.n; i++)
        gt_wipe(env.v[i], strlen(env.v[i]));
    gt_strv_free(&env);
    free(limit_why);
    free(python);
    free(venv);
    free(file);
    free(cwd);
    free(commit);
    free(src);
    free(scratch);
    free(runs);
    return rc;
}
