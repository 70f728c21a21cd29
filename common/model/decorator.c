#include "model/model.h"

#include <stdio.h>

#include "json.h"
#include "schema.h"

static const char *const fields[] = {"name", "description", "schema", NULL};
static const char *const indexes[] = {NULL};
static const char *const hidden[] = {NULL};

static gt_err validate(cJSON *doc, gt_error *err)
{
    const char *s = NULL;
    gt_err rc;
    if ((rc = gt_json_only(doc, "$", fields, err)) != GT_OK ||
        (rc = gt_model_check_name(doc, err)) != GT_OK ||
        (rc = gt_json_opt_str(doc, "$", "description", &s, err)) != GT_OK)
        return rc;
    const cJSON *schema = cJSON_GetObjectItemCaseSensitive(doc, "schema");
    if (schema == NULL)
        return gt_error_setf(err, GT_EINVAL, "$.schema", "$.schema: is required");
    if (!cJSON_IsObject(schema) && !cJSON_IsBool(schema))
        return gt_error_setf(err, GT_EINVAL, "$.schema", "$.schema: expected a JSON Schema object");
    gt_error e = {0};
    gt_schema *compiled = gt_schema_compile(schema, &e);
    if (compiled == NULL) {
        /* the schema's own paths are relative to $.schema */
        char field[sizeof e.field + 16];
        snprintf(field, sizeof field, "$.schema%.255s", e.field[0] == '$' ? e.field + 1 : "");
        return gt_error_setf(err, GT_EINVAL, field, "invalid schema: %s", e.message);
    }
    gt_schema_free(&compiled);
    return GT_OK;
}

const gt_model_kind gt_model_decorator = {
    .plural = "decorators",
    .singular = "decorator",
    .fields = fields,
    .indexes = indexes,
    .hidden = hidden,
    .validate = validate,
};
