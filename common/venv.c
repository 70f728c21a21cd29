#include "venv.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include "crypto.h"
#include "log.h"
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

gt_err gt_venv_ensure(const gt_run_options *o, const char *requirements, const char *cwd,
                      char **dir, gt_error *err)
{
    gt_err rc = GT_OK;
    char *text = NULL;
    char *venvs = gt_path_join(o->working_dir, "venvs");
    char *path = NULL, *lock_path = NULL, *ready = NULL, *pybin = NULL;
    gt_strv argv = {0}, env = {0}, opts = {0};
    gt_buf key = {0};
    int lock_fd = -1;

    if ((rc = gt_read_file(requirements, 1 << 20, &text, NULL, err)) != GT_OK)
        goto done;
    /* The cache key: interpreter, requirements and pip options all change the result. */
    pip_options(o, &opts);
    gt_buf_printf(&key, "%s\n%s\n", o->python ? o->python : "python3", text);
    for (size_t i = 0; i < opts.n; i++)
        gt_buf_printf(&key, "%s\n", opts.v[i]);
    char hash[65];
    gt_sha256_hex(key.data, key.len, hash);
    hash[24] = '\0';
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
    gt_run_env_base(o, &env);
    gt_strv_push(&env, "PIP_DISABLE_PIP_VERSION_CHECK=1");
    gt_strv_push(&env, "PIP_NO_INPUT=1");
    gt_strv_push(&argv, o->python ? o->python : "python3");
    gt_strv_push(&argv, "-m");
    gt_strv_push(&argv, "venv");
    gt_strv_push(&argv, path);
    if ((rc = gt_run_tool(o, argv.v, env.v, cwd, "python -m venv", NULL, err)) != GT_OK)
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
    if ((rc = gt_run_tool(o, argv.v, env.v, cwd, "pip install -r requirements.txt", NULL,
                          err)) != GT_OK)
        goto fail;
    if ((rc = gt_write_file_atomic(ready, "", 0, 0600, err)) != GT_OK)
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
    gt_buf_free(&key);
    gt_strv_free(&opts);
    gt_strv_free(&argv);
    gt_strv_free(&env);
    free(text);
    free(pybin);
    free(ready);
    free(lock_path);
    free(path);
    free(venvs);
    return rc;
}
