/* Resource kinds: what a stored document of each kind may hold and how it is
 * checked. Cross-resource checks (does the named repository exist?) need the store
 * and live in api.c. */
#ifndef GT_MODEL_H
#define GT_MODEL_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"

typedef struct gt_model_kind {
    const char *plural;               /* "services": collection and URL segment */
    const char *singular;             /* "service" */
    const char *const *fields;        /* members a user may set, NULL-terminated */
    const char *const *indexes;       /* top-level string fields queried, NULL-terminated */
    const char *const *hidden;        /* stored members never returned, NULL-terminated */
    /* Checks and normalizes doc (the user's fields, "name" included) in place;
     * errors name the JSON path. */
    gt_err (*validate)(cJSON *doc, gt_error *err);
    /* Adjusts a stored document, in place, before it is shown (NULL: as stored). */
    void (*present)(cJSON *doc);
} gt_model_kind;

extern const gt_model_kind gt_model_repository;
extern const gt_model_kind gt_model_service;
extern const gt_model_kind gt_model_decorator;
extern const gt_model_kind gt_model_secret;

/* The named kinds, NULL-terminated. */
extern const gt_model_kind *const gt_model_kinds[];

/* Finds a kind by plural or singular name; NULL if none. */
const gt_model_kind *gt_model_find(const char *name);

/* Shared checks. */
gt_err gt_model_check_name(const cJSON *doc, gt_error *err);
/* A relative path inside the repository: no leading '/', no ".." component. */
gt_err gt_model_check_relpath(const char *path, const char *field, gt_error *err);
/* An optional string member that, when present, is a valid resource name. */
gt_err gt_model_check_ref(const cJSON *doc, const char *key, gt_error *err);

/* Execution states (DESIGN.md §5). */
bool gt_execution_state_terminal(const char *state);
bool gt_execution_state_valid(const char *state);

/* Checks a list of secret bindings [{name, type: "env", target}] at path; a target that
 * is a loader, interpreter or tool setting is refused (gt_service_env_refused). */
gt_err gt_service_check_secrets(const cJSON *list, const char *path, gt_error *err);
/* Why a run's environment may not set variable name (a static phrase), or NULL when it
 * may; *pattern (may be NULL) receives the refused name or prefix ("LD_", "PATH"). */
const char *gt_service_env_refused(const char *name, const char **pattern);
/* True when service document svc lets run requests bind secret name: one of its own
 * "secrets" bindings or listed in its "allowed_secrets". */
bool gt_service_grants_secret(const cJSON *svc, const char *name);

/* A service's "limits": {memory, processes, cpu_time, open_files}; each -1 when the
 * service does not set it (the [runner] default applies), 0 for no limit. memory is a
 * size ("256MiB", or bytes), cpu_time a duration ("10s", "1h", or seconds). */
typedef struct gt_service_limits {
    int64_t memory;      /* bytes */
    int64_t processes;
    int64_t cpu_ms;
    int64_t open_files;
} gt_service_limits;
/* Reads and checks service's limits (errors name "$.limits.<key>"). */
gt_err gt_service_limits_get(const cJSON *service, gt_service_limits *out, gt_error *err);

/* The message that hands a run to runners: {"id": ID, "attempt": N}; caller frees. */
char *gt_execution_message(const char *id, int64_t attempt);
/* Parses one (outside input: it comes from the broker). *id is a new string. */
gt_err gt_execution_message_parse(const char *body, size_t len, char **id, int64_t *attempt,
                                  gt_error *err);

#endif
