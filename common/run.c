#include "run.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "exec.h"
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
    gt_exec_result res = {0};
    gt_exec_spec spec = {
        .file = argv[0],
        .argv = argv,
        .envp = env,
        .cwd = cwd,
        .timeout_ms = o->fetch_timeout_ms ? o->fetch_timeout_ms : 300000,
        .kill_grace_ms = o->kill_grace_ms,
        .output_cap = 256 * 1024,
    };
    gt_err rc = gt_exec_run(&spec, &res, err);
    if (rc != GT_OK)
        goto done;
    if (res.timed_out) {
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

gt_err gt_run_build_argv(const gt_run_options *o, const cJSON *service, const cJSON *inputs,
                         const char *python, gt_strv *argv, gt_error *err)
{
    const char *type = str_or(service, "type", "");
    const char *file = str_or(service, "filename", "");
    const cJSON *in;
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
        /* Inputs win over the service's own extra vars. */
        const cJSON *ev = cJSON_GetObjectItemCaseSensitive(service, "extra_vars");
        cJSON *vars = cJSON_IsObject(ev) ? cJSON_Duplicate(ev, 1) : cJSON_CreateObject();
        cJSON_ArrayForEach(in, inputs)
            gt_json_set(vars, in->string, cJSON_Duplicate(in, 1));
        if (cJSON_GetArraySize(vars) > 0) {
            gt_strv_push(argv, "--extra-vars");
            gt_strv_push_owned(argv, gt_json_print(vars));
        }
        cJSON_Delete(vars);
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

/* dir/rel must stay inside dir once symlinks are resolved: a repository must not be
 * able to point a run at files outside its checkout. */
static gt_err inside(const char *dir, const char *rel, const char *what, char **out,
                     gt_error *err)
{
    char *joined = gt_path_join(dir, rel && rel[0] ? rel : ".");
    char real_dir[PATH_MAX], real[PATH_MAX];
    gt_err rc = GT_OK;
    if (realpath(dir, real_dir) == NULL || realpath(joined, real) == NULL) {
        rc = gt_error_set(err, GT_ENOTFOUND, "%s \"%s\" not found in the repository", what, rel);
    } else if (strncmp(real, real_dir, strlen(real_dir)) != 0 ||
               (real[strlen(real_dir)] != '/' && real[strlen(real_dir)] != '\0')) {
        rc = gt_error_set(err, GT_EPERM, "%s \"%s\" points outside the repository", what, rel);
    } else if (out) {
        *out = gt_xstrdup(real);
    }
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

gt_err gt_run_execute(const gt_run_options *o, const gt_run_request *req, cJSON **result,
                      gt_error *err)
{
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
    if (gt_repo_checkout(o, str_or(req->repository, "url", ""),
                         str_or(req->repository, "reference", NULL), req->ssh_key, src, &commit,
                         &why) != GT_OK)
        goto failed;
    if (inside(src, str_or(svc, "working_dir", ""), "working directory", &cwd, &why) != GT_OK)
        goto failed;
    const char *fname = str_or(svc, "filename", "");
    if (fname[0] && inside(cwd, fname, "file", &file, &why) != GT_OK)
        goto failed;
    const cJSON *pb;
    cJSON_ArrayForEach(pb, cJSON_GetObjectItemCaseSensitive(svc, "playbooks"))
        if (cJSON_IsString(pb) && inside(cwd, pb->valuestring, "playbook", NULL, &why) != GT_OK)
            goto failed;
    const char *inv = str_or(svc, "inventory", NULL);
    if (inv && inv[0] && strchr(inv, ',') == NULL &&
        inside(cwd, inv, "inventory", NULL, &why) != GT_OK)
        goto failed;

    gt_run_env_base(o, &env);
    if (strcmp(type, "python-script") == 0) {
        char *reqs = gt_path_join(cwd, "requirements.txt");
        if (gt_file_exists(reqs)) {
            if (gt_venv_ensure(o, reqs, cwd, &venv, &why) != GT_OK) {
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
    const cJSON *kv;
    cJSON_ArrayForEach(kv, cJSON_GetObjectItemCaseSensitive(svc, "env"))
        if (cJSON_IsString(kv))
            gt_strv_push_owned(&env, gt_xasprintf("%s=%s", kv->string, kv->valuestring));
    for (char *const *s = req->secret_env; s && *s; s++)
        gt_strv_push(&env, *s);

    if (gt_run_build_argv(o, svc, req->inputs, python, &argv, &why) != GT_OK)
        goto failed;
    int64_t timeout_s = 0;
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(svc, "timeout");
    if (cJSON_IsNumber(t))
        timeout_s = (int64_t)t->valuedouble;
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
        .on_start = req->on_start,
        .on_start_arg = req->on_start_arg,
        .limits = &lim,
        .sandbox = o->sandbox_none ? NULL : &sb,
    };
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
    gt_json_set_str(r, "stdout", res.out ? res.out : "");
    gt_json_set_str(r, "stderr", res.err ? res.err : "");
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
done:
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
