#include "model/model.h"

#include "json.h"

/* "value" is write-only: api.c seals it into "sealed" and never returns either. */
static const char *const fields[] = {"name", "description", "value", NULL};
static const char *const indexes[] = {NULL};
static const char *const hidden[] = {"sealed", "value", NULL};

static gt_err validate(cJSON *doc, gt_error *err)
{
    const char *s = NULL;
    gt_err rc;
    if ((rc = gt_json_only(doc, "$", fields, err)) != GT_OK ||
        (rc = gt_model_check_name(doc, err)) != GT_OK ||
        (rc = gt_json_opt_str(doc, "$", "description", &s, err)) != GT_OK ||
        (rc = gt_json_opt_str(doc, "$", "value", &s, err)) != GT_OK)
        return rc;
    return GT_OK;
}

const gt_model_kind gt_model_secret = {
    .plural = "secrets",
    .singular = "secret",
    .fields = fields,
    .indexes = indexes,
    .hidden = hidden,
    .validate = validate,
};
