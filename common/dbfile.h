/* Service files: the decorators, repositories and services of a store as one YAML (or
 * JSON) document, in the shape of Itential Automation Gateway's `iagctl db export`:
 * top-level lists `decorators`, `repositories`, `services`, fields named with hyphens
 * (`working-directory`, `private-key-name`, ansible's `runtime: {inventory: [...]}`).
 * Secrets appear by name only; a file never holds a secret's value.
 *
 * Everything goes through the API (gt_dbfile_call: in-process in local mode, over HTTP
 * in client mode), so an import is checked and permitted exactly like `gantry create`. */
#ifndef GT_DBFILE_H
#define GT_DBFILE_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>

#include "api.h"
#include "error.h"
#include "model/model.h"
#include "util.h"

/* Limits on what an import reads: bytes of the file, values in it (aliases count as
 * many values as they expand to: "billion laughs" stops here), nesting depth, and the
 * errors reported before giving up. */
#define GT_DBFILE_MAX_BYTES (16u << 20)
#define GT_DBFILE_MAX_NODES 1000000
#define GT_DBFILE_MAX_DEPTH 64
#define GT_DBFILE_MAX_ERRORS 20

/* One API request; fills resp (status and body, which the callee owns until
 * gt_api_response_clear). */
typedef void (*gt_dbfile_call)(void *arg, const char *method, const char *path,
                               const char *query, const cJSON *body, gt_api_response *resp);

typedef enum gt_dbfile_action {
    GT_DBFILE_ADD,         /* new: created */
    GT_DBFILE_CONFLICT,    /* exists and differs: refused without force */
    GT_DBFILE_REPLACE,     /* exists and differs: replaced (force) */
    GT_DBFILE_UNCHANGED,   /* exists exactly as in the file: left alone */
} gt_dbfile_action;

typedef struct gt_dbfile_item {
    const gt_model_kind *kind;
    const char *name;          /* borrowed from doc */
    cJSON *doc;                /* the API document (validated, normalized) */
    const cJSON *node;         /* where it is in the file */
    int index;                 /* in its list */
    gt_dbfile_action action;   /* set by gt_dbfile_plan */
    cJSON *stored;             /* the store's version, when there is one */
} gt_dbfile_item;

typedef struct gt_dbfile gt_dbfile;

/* Reads a service file (YAML or JSON, at most GT_DBFILE_MAX_BYTES) named name (used in
 * messages) and checks everything that needs no store: structure, field names and types,
 * duplicate names, each resource as the API would check it (decorator schemas compiled).
 * NULL on error, with one "name:line: path: message" line per problem in errors. */
gt_dbfile *gt_dbfile_parse(const char *name, const char *text, size_t len, gt_strv *errors)
    __attribute__((warn_unused_result));
void gt_dbfile_free(gt_dbfile **f);

/* The resources, in write order (decorators, repositories, services); borrowed. */
size_t gt_dbfile_items(gt_dbfile *f, gt_dbfile_item **items);

/* Checks references (repository, decorator, secrets) against the file and the store,
 * and sets each item's action (force: conflicts become replacements). Writes nothing.
 * GT_EINVAL with messages in errors for bad references; another code, with err set,
 * when the API answers something else (unavailable, permission). */
gt_err gt_dbfile_plan(gt_dbfile *f, gt_dbfile_call call, void *arg, bool force,
                      gt_strv *errors, gt_error *err);

/* Writes a planned file in order: adds with POST, replacements with PATCH (fields the
 * file lacks are removed), unchanged ones skipped. Refuses (GT_ECONFLICT) when any item
 * is a conflict. Stops at the first failure; *written (may be NULL) counts the writes
 * that were done. */
gt_err gt_dbfile_apply(gt_dbfile *f, gt_dbfile_call call, void *arg, size_t *written,
                       gt_error *err);

/* The service file for lists of API documents (as GET /api/v1/{kind} returns them;
 * server fields are dropped). json: JSON, else YAML. *out is the caller's. */
gt_err gt_dbfile_write(const cJSON *decorators, const cJSON *repositories,
                       const cJSON *services, bool json, char **out, gt_error *err)
    __attribute__((warn_unused_result));

/* Reads every decorator, repository and service through the API and writes them;
 * counts (may be NULL) receives how many of each. */
gt_err gt_dbfile_export(gt_dbfile_call call, void *arg, bool json, char **out, size_t counts[3],
                        gt_error *err) __attribute__((warn_unused_result));

/* The file field for an API field of kind ("working_dir" -> "working-directory",
 * "inventory" -> "runtime.inventory"), or NULL when the format has none. */
const char *gt_dbfile_field_name(const gt_model_kind *kind, const char *api_field);

#endif
