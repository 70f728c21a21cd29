/* JSON Schema (draft 7, plus the 2020-12 keywords that matter for inputs) for
 * decorators: compile once, validate many. */
#ifndef GT_SCHEMA_H
#define GT_SCHEMA_H

#include <cjson/cJSON.h>

#include "error.h"

typedef struct gt_schema gt_schema;

/* Compiles schema (an object or a boolean). The tree is copied. Rejects schemas
 * that are not well formed (wrong keyword types, bad regex, unresolvable $ref),
 * naming the JSON path in the schema: err->field = "$.properties.port.maximum". */
gt_schema *gt_schema_compile(const cJSON *schema, gt_error *err)
    __attribute__((warn_unused_result));
void gt_schema_free(gt_schema **s);

/* Validates instance. GT_OK or GT_EINVAL with err->field the JSON path of the first
 * violation in the instance ("$.interfaces[2].mtu") and err->message a sentence that
 * starts with that path ("$.port: 70000 is greater than the maximum 65535"). */
gt_err gt_schema_validate(const gt_schema *s, const cJSON *instance, gt_error *err);

/* Adds, to the object instance, the "default" of every top-level property the schema's
 * "properties" declares and the instance lacks. Returns the number added. */
int gt_schema_apply_defaults(const gt_schema *s, cJSON *instance);

#endif
