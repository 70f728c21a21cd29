/* libFuzzer harness for common/extravars.c, the writer of the extra-vars file that
 * ansible-playbook reads. Two inputs from each run: the data as a JSON document (when
 * it is an object), and an object built around the raw bytes (up to the first NUL)
 * as a key, a value, a list item and a nested key. Whatever is emitted is read back
 * with libyaml's parser (extravars_roundtrip.h) and must: parse as one mapping, carry
 * every string (keys included) as a double-quoted !unsafe scalar, hold only plain
 * null/true/false/numbers otherwise, be ASCII, and equal the input. What cannot be
 * emitted (text that is not UTF-8) must be refused with GT_EINVAL naming a path under
 * "$.inputs". */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "extravars.h"
#include "extravars_roundtrip.h"

static void check(const cJSON *vars)
{
    char *text = NULL;
    size_t len = 0;
    gt_error err = {0};
    gt_err rc = gt_extravars_yaml(vars, "$.inputs", &text, &len, &err);
    if (rc != GT_OK) {
        if (rc != GT_EINVAL || strncmp(err.field, "$.inputs", 8) != 0 ||
            strncmp(err.message, err.field, strlen(err.field)) != 0)
            __builtin_trap();
        return;
    }
    if (strlen(text) != len)
        __builtin_trap();
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)text[i] >= 0x80 ||
            ((unsigned char)text[i] < 0x20 && text[i] != '\n'))
            __builtin_trap(); /* everything else is escaped */
    const char *why = NULL;
    cJSON *back = rt_read(text, len, &why);
    if (back == NULL || !rt_equal(vars, back))
        __builtin_trap();
    cJSON_Delete(back);
    free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cJSON *doc = cJSON_ParseWithLength((const char *)data, size);
    if (cJSON_IsObject(doc))
        check(doc);
    cJSON_Delete(doc);

    const uint8_t *nul = memchr(data, 0, size);
    size_t n = nul ? (size_t)(nul - data) : size;
    char *s = malloc(n + 1);
    memcpy(s, data, n);
    s[n] = '\0';
    cJSON *o = cJSON_CreateObject();
    cJSON_AddItemToObject(o, "value", cJSON_CreateString(s));
    cJSON *list = cJSON_CreateArray();
    cJSON_AddItemToArray(list, cJSON_CreateString(s));
    cJSON *inner = cJSON_CreateObject();
    cJSON_AddItemToObject(inner, s, cJSON_CreateString(s));
    cJSON_AddItemToArray(list, inner);
    cJSON_AddItemToObject(o, s, list);
    double d = 0;
    if (size >= sizeof d) {
        memcpy(&d, data + size - sizeof d, sizeof d);
        cJSON_AddItemToObject(o, "number", cJSON_CreateNumber(d));
    }
    check(o);
    cJSON_Delete(o);
    free(s);
    return 0;
}
