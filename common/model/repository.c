#include "model/model.h"

#include "json.h"
#include "repo.h"

static const char *const fields[] = {"name", "description", "url", "reference",
                                     "private_key_name", NULL};
static const char *const indexes[] = {"private_key_name", NULL};
static const char *const hidden[] = {NULL};

static gt_err validate(cJSON *doc, gt_error *err)
{
    const char *url = NULL, *s = NULL;
    gt_err rc;
    if ((rc = gt_json_only(doc, "$", fields, err)) != GT_OK ||
        (rc = gt_model_check_name(doc, err)) != GT_OK ||
        (rc = gt_json_opt_str(doc, "$", "description", &s, err)) != GT_OK ||
        (rc = gt_json_opt_str(doc, "$", "reference", &s, err)) != GT_OK ||
        (rc = gt_model_check_ref(doc, "private_key_name", err)) != GT_OK ||
        (rc = gt_json_str(doc, "$", "url", &url, err)) != GT_OK)
        return rc;
    if (!gt_repo_url_valid(url))
        return gt_error_setf(err, GT_EINVAL, "$.url",
                             "$.url: \"%s\" is not a Git URL (an absolute path, file://, "
                             "ssh://, user@host:path or https://)", url);
    return GT_OK;
}

const gt_model_kind gt_model_repository = {
    .plural = "repositories",
    .singular = "repository",
    .fields = fields,
    .indexes = indexes,
    .hidden = hidden,
    .validate = validate,
};
