/* The Gantry API: REST-shaped requests (method, path, query, JSON body) answered
 * with a status and a JSON body. Local mode calls it in-process; the controller
 * serves the same function over HTTP, so both behave identically. Errors are
 * {"error": {"code", "message", "field"}}. */
#ifndef GT_API_H
#define GT_API_H

#include <stdatomic.h>
#include <cjson/cJSON.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>

#include "error.h"
#include "run.h"
#include "store.h"

typedef struct gt_api gt_api;

typedef struct gt_api_deps {
    gt_store *store;               /* borrowed */
    const char *key_file;          /* secrets key file */
    bool key_file_explicit;        /* configured by the user: never generated */
    const gt_run_options *run;     /* how runs execute inline */
    atomic_int *cancel;            /* GT_CANCEL_*: cancels the run in progress */
    /* When set, every write of an execution is fenced by this lease (a runner's), so
     * nothing is recorded once the cluster declared this process dead. */
    const gt_store_fence *fence;
    const char *runner_name;       /* recorded on executions: "local" */
    /* When set, runs are not executed inline: the stored execution (with "id",
     * "attempt" and "pool") is handed to dispatch, which must not block for long, and
     * the request answers 202 at once; whoever picks it up calls gt_api_execute. */
    gt_err (*dispatch)(void *arg, const cJSON *execution, gt_error *err);
    void *dispatch_arg;
    /* With dispatch: executions are "queued" (handed to a broker for runners) rather
     * than "accepted" (kept in this process) when dispatched. */
    bool queued;
} gt_api_deps;

typedef struct gt_api_response {
    int status;
    cJSON *body;                   /* always set; owned by the response */
} gt_api_response;

/* deps is copied; the pointers in it are borrowed and must outlive the api. */
gt_api *gt_api_new(const gt_api_deps *deps, gt_error *err) __attribute__((warn_unused_result));
void gt_api_free(gt_api **api);

/* Handles one request. query is the raw query string (no '?') or NULL; body is the
 * raw request body or NULL. Always fills resp. */
void gt_api_handle(gt_api *api, const char *method, const char *path, const char *query,
                   const char *body, size_t body_len, gt_api_response *resp);
void gt_api_response_clear(gt_api_response *resp);

/* As gt_api_handle, with the request's Idempotency-Key (NULL: none). A run request that
 * repeats a key already used for the same service answers with the execution the first
 * one created (200), and starts nothing new: a client that lost its answer (a dropped
 * connection, a killed controller) can send the request again safely. */
void gt_api_handle_key(gt_api *api, const char *method, const char *path, const char *query,
                       const char *body, size_t body_len, const char *idempotency_key,
                       gt_api_response *resp);

/* Runs an execution that is waiting ("accepted" or "queued") to its end, as attempt
 * (0: whatever attempt is stored), on a worker thread with an api of its own. An
 * execution no longer waiting, or waiting for another attempt, is left alone and
 * GT_OK is returned: the (id, attempt) pair is the idempotency key, so a redelivered
 * message never runs or records twice. */
gt_err gt_api_execute(gt_api *api, const char *execution_id, int64_t attempt, gt_error *err);

/* The store collection of cancel requests: one document per execution id, written when
 * a cancel is asked for and deleted when the execution ends (watch it to notice them). */
#define GT_API_CANCELS "cancels"

/* True when someone asked to cancel this (running) execution; runners poll it. */
bool gt_api_cancel_requested(gt_api *api, const char *execution_id);

/* HTTP status for an error code. */
int gt_api_status(gt_err code);

/* Local mode: marks executions whose gantry process died (SIGKILL, power loss)
 * as "lost", so none stays "running" forever. Returns how many were reaped. */
int gt_api_reap_local(gt_api *api);

/* The routes, for --help, OpenAPI checks and completion: method and pattern pairs,
 * NULL-terminated. */
typedef struct gt_api_route_info {
    const char *method;
    const char *pattern;
} gt_api_route_info;
const gt_api_route_info *gt_api_routes(void);

#endif
