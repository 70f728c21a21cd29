/* Ansible extra vars as a YAML file that Ansible never templates: every string, keys
 * of nested objects and list items included, is a double-quoted scalar tagged
 * !unsafe, so "{{ lookup('pipe', 'id') }}" stays those characters. Numbers, booleans
 * and null stay typed (plain YAML 1.1 scalars, which cannot hold a template). The
 * file is passed as `--extra-vars @FILE`, never in argv. */
#ifndef GT_EXTRAVARS_H
#define GT_EXTRAVARS_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>

#include "error.h"

/* The YAML document for vars (an object); *out is NUL-terminated, caller frees, *len
 * (may be NULL) its length. GT_EINVAL naming the member (path is the JSON path of
 * vars, e.g. "$.inputs") for what YAML cannot carry: a string that is not UTF-8, a
 * number that is not finite. The output is ASCII: every other character is escaped. */
gt_err gt_extravars_yaml(const cJSON *vars, const char *path, char **out, size_t *len,
                         gt_error *err) __attribute__((warn_unused_result));

/* The plain scalar for a JSON number, as YAML 1.1 (PyYAML, so Ansible) reads it back
 * with the same type and value: "3", "-0.5", "1.0e+300". buf holds at least 32
 * bytes. False for a number that is not finite. */
bool gt_extravars_number(double d, char *buf, size_t n);

#endif
