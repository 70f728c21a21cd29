#include "model/model.h"

#include <stdio.h>

#include "json.h"
#include "util.h"

char *gt_execution_message(const char *id, int64_t attempt)
{
    cJSON *m = cJSON_CreateObject();
    gt_json_set_str(m, "id", id);
    gt_json_set_num(m, "attempt", (double)attempt);
    char *text = gt_json_print(m);
    cJSON_Delete(m);
    return text;
}

gt_err gt_execution_message_parse(const char *body, size_t len, char **id, int64_t *attempt,
                                  gt_error *err)
{
    static const char *const keys[] = {"id", "attempt", NULL};
    cJSON *doc = NULL;
    const char *s = NULL;
    int64_t a = 0;
    gt_err rc = gt_json_parse(body, len, "message", &doc, err);
    if (rc == GT_OK && !cJSON_IsObject(doc))
        rc = gt_error_setf(err, GT_EINVAL, "$", "message: expected a JSON object");
    if (rc == GT_OK && ((rc = gt_json_only(doc, "$", keys, err)) != GT_OK ||
                        (rc = gt_json_str(doc, "$", "id", &s, err)) != GT_OK ||
                        (rc = gt_json_int(doc, "$", "attempt", &a, err)) != GT_OK))
        goto done;
    if (rc == GT_OK && !gt_name_valid(s))
        rc = gt_error_setf(err, GT_EINVAL, "$.id", "$.id: not an execution id");
    else if (rc == GT_OK && (a < 1 || a > 1000))
        rc = gt_error_setf(err, GT_EINVAL, "$.attempt", "$.attempt: %lld is out of range [1, 1000]",
                           (long long)a);
    if (rc == GT_OK) {
        *id = gt_xstrdup(s);
        *attempt = a;
    }
done:
    cJSON_Delete(doc);
    return rc;
}
