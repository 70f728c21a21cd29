/* Typed accessors over cJSON. Each names the JSON path on a mismatch:
 * gt_json_str(obj, "$.spec", "name", &s, err) -> "$.spec.name: expected a string".
 * Strings read from a tree are borrowed from it. */
#ifndef GT_JSON_H
#define GT_JSON_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdint.h>

#include "error.h"

/* Parses text (len bytes, need not be NUL-terminated); on error names the line and
 * column. what names the source ("request body", a file name). Caller cJSON_Deletes. */
gt_err gt_json_parse(const char *text, size_t len, const char *what, cJSON **out,
                     gt_error *err);

/* Required members. path is the parent's JSON path ("$" for the root). */
gt_err gt_json_str(const cJSON *obj, const char *path, const char *key, const char **out,
                   gt_error *err);
gt_err gt_json_int(const cJSON *obj, const char *path, const char *key, int64_t *out,
                   gt_error *err);
gt_err gt_json_bool(const cJSON *obj, const char *path, const char *key, bool *out,
                    gt_error *err);

/* Optional members: absent or null leaves *out unchanged and returns GT_OK. */
gt_err gt_json_opt_str(const cJSON *obj, const char *path, const char *key, const char **out,
                       gt_error *err);
gt_err gt_json_opt_int(const cJSON *obj, const char *path, const char *key, int64_t *out,
                       gt_error *err);
gt_err gt_json_opt_bool(const cJSON *obj, const char *path, const char *key, bool *out,
                        gt_error *err);

/* Rejects members of obj not named in allowed (NULL-terminated), naming the first. */
gt_err gt_json_only(const cJSON *obj, const char *path, const char *const *allowed,
                    gt_error *err);

/* Unformatted text of item; caller frees. */
char *gt_json_print(const cJSON *item);

/* obj's member key as an integer when it is a number that an int64 holds exactly
 * (|v| <= 2^53), else dflt: for documents read back from the store, which may be hostile. */
int64_t gt_json_member_i64(const cJSON *obj, const char *key, int64_t dflt);
/* Adds or replaces obj[key] = string. */
void gt_json_set_str(cJSON *obj, const char *key, const char *value);
void gt_json_set_num(cJSON *obj, const char *key, double value);
void gt_json_set_bool(cJSON *obj, const char *key, bool value);
void gt_json_set(cJSON *obj, const char *key, cJSON *item); /* takes item */

#endif
