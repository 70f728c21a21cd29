#include "model/model.h"

#include <stdio.h>
#include <string.h>

#include "json.h"
#include "util.h"

const gt_model_kind *const gt_model_kinds[] = {
    &gt_model_repository, &gt_model_service, &gt_model_decorator, &gt_model_secret, NULL,
};

const gt_model_kind *gt_model_find(const char *name)
{
    for (size_t i = 0; name && gt_model_kinds[i]; i++)
        if (strcmp(name, gt_model_kinds[i]->plural) == 0 ||
            strcmp(name, gt_model_kinds[i]->singular) == 0)
            return gt_model_kinds[i];
    return NULL;
}

gt_err gt_model_check_name(const cJSON *doc, gt_error *err)
{
    const char *name = NULL;
    gt_err rc = gt_json_str(doc, "$", "name", &name, err);
    if (rc != GT_OK)
        return rc;
    if (!gt_name_valid(name))
        return gt_error_setf(err, GT_EINVAL, "$.name",
                             "$.name: \"%s\" is not a valid name (1-128 of A-Z a-z 0-9 _ . -, "
                             "not starting with . or -)", name);
    return GT_OK;
}

gt_err gt_model_check_relpath(const char *path, const char *field, gt_error *err)
{
    if (path[0] == '/')
        return gt_error_setf(err, GT_EINVAL, field, "%s: \"%s\" must be relative to the repository",
                             field, path);
    for (const char *p = path; *p;) {
        const char *slash = strchr(p, '/');
        size_t n = slash ? (size_t)(slash - p) : strlen(p);
        if (n == 2 && p[0] == '.' && p[1] == '.')
            return gt_error_setf(err, GT_EINVAL, field, "%s: \"%s\" must not contain \"..\"",
                                 field, path);
        p += n + (slash ? 1 : 0);
    }
    return GT_OK;
}

gt_err gt_model_check_ref(const cJSON *doc, const char *key, gt_error *err)
{
    const char *v = NULL;
    char field[64];
    snprintf(field, sizeof field, "$.%s", key);
    gt_err rc = gt_json_opt_str(doc, "$", key, &v, err);
    if (rc == GT_OK && v && !gt_name_valid(v))
        rc = gt_error_setf(err, GT_EINVAL, field, "%s: \"%s\" is not a valid name", field, v);
    return rc;
}

static const char *const states[] = {"accepted", "queued", "running", "succeeded", "failed",
                                     "timed_out", "canceled", "lost", NULL};

bool gt_execution_state_valid(const char *state)
{
    for (size_t i = 0; state && states[i]; i++)
        if (strcmp(state, states[i]) == 0)
            return true;
    return false;
}

bool gt_execution_state_terminal(const char *state)
{
    return gt_execution_state_valid(state) && strcmp(state, "accepted") != 0 &&
           strcmp(state, "queued") != 0 && strcmp(state, "running") != 0;
}
