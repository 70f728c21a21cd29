/* libFuzzer harness for common/schema.c. The input is a schema and an instance:
 * two JSON texts separated by the first NUL byte, or one {"schema":...,"instance":...}
 * document; any other JSON value is compiled and then validated against itself.
 * Besides crashes it checks the module's promises: errors name a JSON path and start
 * with it, validation is deterministic, and everything is freed. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "schema.h"

static void check_error(const gt_error *err)
{
    size_t flen = strlen(err->field);
    if (err->code != GT_EINVAL || err->field[0] != '$')
        __builtin_trap();
    /* The message starts with the field, unless the field had to be cut. */
    if (flen < sizeof err->field - 1 &&
        (strncmp(err->message, err->field, flen) != 0 || err->message[flen] != ':'))
        __builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data;
    const uint8_t *nul = memchr(data, 0, size);
    cJSON *first = NULL, *second = NULL;
    const cJSON *schema = NULL, *instance = NULL;

    if (nul) {
        size_t n = (size_t)(nul - data);
        first = cJSON_ParseWithLength(text, n);
        second = cJSON_ParseWithLength((const char *)nul + 1, size - n - 1);
        schema = first;
        instance = second;
    } else {
        first = cJSON_ParseWithLength(text, size);
        schema = cJSON_GetObjectItemCaseSensitive(first, "schema");
        instance = cJSON_GetObjectItemCaseSensitive(first, "instance");
        if (schema == NULL)
            schema = instance = first;
    }
    if (schema == NULL)
        goto done;

    gt_error err = {0};
    gt_schema *s = gt_schema_compile(schema, &err);
    if (s == NULL) {
        check_error(&err);
        goto done;
    }
    if (instance) {
        gt_error e1 = {0}, e2 = {0};
        gt_err r1 = gt_schema_validate(s, instance, &e1);
        gt_err r2 = gt_schema_validate(s, instance, &e2);
        if (r1 != r2 || strcmp(e1.message, e2.message) != 0)
            __builtin_trap();
        if (r1 == GT_OK && e1.code != GT_OK)
            __builtin_trap();
        if (r1 != GT_OK)
            check_error(&e1);
        cJSON *copy = cJSON_Duplicate(instance, 1);
        if (copy) {
            int added = gt_schema_apply_defaults(s, copy);
            if (added < 0 || (!cJSON_IsObject(copy) && added != 0))
                __builtin_trap();
            cJSON_Delete(copy);
        }
    }
    gt_schema_free(&s);
    if (s != NULL)
        __builtin_trap();
done:
    cJSON_Delete(first);
    cJSON_Delete(second);
    return 0;
}
