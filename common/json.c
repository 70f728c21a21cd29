#include "json.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

/* Offset of a \u0000 escape inside a JSON string, or len. cJSON cuts strings at a
 * NUL, so "ab\u0000cd" would be read as "ab": a value that differs from what was
 * sent must not get past validation. */
static size_t nul_escape(const char *text, size_t len)
{
    for (size_t i = 0; i + 6 <= len; i++) {
        if (text[i] != '\\')
            continue;
        if (text[i + 1] == 'u' && memcmp(text + i + 2, "0000", 4) == 0)
            return i;
        i++; /* skip the escaped character, so "\\\\u0000" is not matched */
    }
    return len;
}

static void line_col(const char *text, size_t off, int *line, int *col)
{
    *line = 1;
    *col = 1;
    for (size_t i = 0; i < off; i++) {
        if (text[i] == '\n') {
            (*line)++;
            *col = 1;
        } else {
            (*col)++;
        }
    }
}

gt_err gt_json_parse(const char *text, size_t len, const char *what, cJSON **out,
                     gt_error *err)
{
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (root == NULL) {
        /* cJSON only says where it stopped: turn that into line:column. */
        size_t off = (end && end >= text) ? (size_t)(end - text) : 0;
        if (off > len)
            off = len;
        int line, col;
        line_col(text, off, &line, &col);
        if (len == 0)
            return gt_error_set(err, GT_EINVAL, "%s: empty, expected JSON", what);
        return gt_error_setf(err, GT_EINVAL, "$", "%s:%d:%d: invalid JSON", what, line, col);
    }
    /* Trailing garbage after the value is an error too. */
    if (end) {
        while ((size_t)(end - text) < len &&
               (*end == ' ' || *end == '\n' || *end == '\r' || *end == '\t'))
            end++;
        if ((size_t)(end - text) < len && *end != '\0') {
            cJSON_Delete(root);
            return gt_error_setf(err, GT_EINVAL, "$", "%s: unexpected text after the JSON value",
                                 what);
        }
    }
    size_t nul = nul_escape(text, len);
    if (nul < len) {
        cJSON_Delete(root);
        int line, col;
        line_col(text, nul, &line, &col);
        return gt_error_setf(err, GT_EINVAL, "$", "%s:%d:%d: \\u0000 is not allowed in strings",
                             what, line, col);
    }
    *out = root;
    return GT_OK;
}

static gt_err mismatch(const char *path, const char *key, const char *want, gt_error *err)
{
    char field[256];
    snprintf(field, sizeof field, "%s.%s", path, key);
    return gt_error_setf(err, GT_EINVAL, field, "%s: expected %s", field, want);
}

static gt_err missing(const char *path, const char *key, gt_error *err)
{
    char field[256];
    snprintf(field, sizeof field, "%s.%s", path, key);
    return gt_error_setf(err, GT_EINVAL, field, "%s: is required", field);
}

static const cJSON *member(const cJSON *obj, const char *key)
{
    const cJSON *it = cJSON_IsObject(obj) ? cJSON_GetObjectItemCaseSensitive(obj, key) : NULL;
    return (it && !cJSON_IsNull(it)) ? it : NULL;
}

gt_err gt_json_opt_str(const cJSON *obj, const char *path, const char *key, const char **out,
                       gt_error *err)
{
    const cJSON *it = member(obj, key);
    if (it == NULL)
        return GT_OK;
    if (!cJSON_IsString(it))
        return mismatch(path, key, "a string", err);
    *out = it->valuestring;
    return GT_OK;
}

gt_err gt_json_opt_int(const cJSON *obj, const char *path, const char *key, int64_t *out,
                       gt_error *err)
{
    const cJSON *it = member(obj, key);
    if (it == NULL)
        return GT_OK;
    double d = it->valuedouble;
    if (!cJSON_IsNumber(it) || d != floor(d) || d < -9007199254740992.0 ||
        d > 9007199254740992.0)
        return mismatch(path, key, "an integer", err);
    *out = (int64_t)d;
    return GT_OK;
}

gt_err gt_json_opt_bool(const cJSON *obj, const char *path, const char *key, bool *out,
                        gt_error *err)
{
    const cJSON *it = member(obj, key);
    if (it == NULL)
        return GT_OK;
    if (!cJSON_IsBool(it))
        return mismatch(path, key, "true or false", err);
    *out = cJSON_IsTrue(it);
    return GT_OK;
}

gt_err gt_json_str(const cJSON *obj, const char *path, const char *key, const char **out,
                   gt_error *err)
{
    return member(obj, key) ? gt_json_opt_str(obj, path, key, out, err)
                            : missing(path, key, err);
}

gt_err gt_json_int(const cJSON *obj, const char *path, const char *key, int64_t *out,
                   gt_error *err)
{
    return member(obj, key) ? gt_json_opt_int(obj, path, key, out, err)
                            : missing(path, key, err);
}

gt_err gt_json_bool(const cJSON *obj, const char *path, const char *key, bool *out,
                    gt_error *err)
{
    return member(obj, key) ? gt_json_opt_bool(obj, path, key, out, err)
                            : missing(path, key, err);
}

gt_err gt_json_only(const cJSON *obj, const char *path, const char *const *allowed,
                    gt_error *err)
{
    const cJSON *it;
    cJSON_ArrayForEach(it, obj) {
        bool ok = false;
        for (size_t i = 0; allowed[i] && !ok; i++)
            ok = it->string && strcmp(it->string, allowed[i]) == 0;
        if (!ok) {
            char field[256];
            snprintf(field, sizeof field, "%s.%s", path, it->string ? it->string : "?");
            return gt_error_setf(err, GT_EINVAL, field, "%s: unknown field", field);
        }
    }
    return GT_OK;
}

char *gt_json_print(const cJSON *item)
{
    char *s = cJSON_PrintUnformatted(item);
    if (s == NULL) {
        fprintf(stderr, "gantry: out of memory printing JSON\n");
        abort();
    }
    return s;
}

void gt_json_set(cJSON *obj, const char *key, cJSON *item)
{
    if (cJSON_GetObjectItemCaseSensitive(obj, key))
        cJSON_ReplaceItemInObjectCaseSensitive(obj, key, item);
    else
        cJSON_AddItemToObject(obj, key, item);
}

void gt_json_set_str(cJSON *obj, const char *key, const char *value)
{
    gt_json_set(obj, key, value ? cJSON_CreateString(value) : cJSON_CreateNull());
}

void gt_json_set_num(cJSON *obj, const char *key, double value)
{
    gt_json_set(obj, key, cJSON_CreateNumber(value));
}

void gt_json_set_bool(cJSON *obj, const char *key, bool value)
{
    gt_json_set(obj, key, cJSON_CreateBool(value));
}

int64_t gt_json_member_i64(const cJSON *obj, const char *key, int64_t dflt)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= -9007199254740992.0 &&
                                v->valuedouble <= 9007199254740992.0))
        return dflt;
    return (int64_t)v->valuedouble;
}
