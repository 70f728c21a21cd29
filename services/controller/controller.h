/* gantry-controller's request handling: authentication, roles, the identity
 * routes answered by gantry-tokend over AMQP, health, metrics, and everything else
 * through the shared API (common/api.h). */
#ifndef GT_CONTROLLER_H
#define GT_CONTROLLER_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "api.h"
#include "ha.h"
#include "bus.h"
#include "http.h"
#include "run.h"
#include "sessions.h"
#include "store.h"

typedef struct gt_ctl gt_ctl;

/* What the controller needs from its configuration (main.c fills it). */
typedef struct gt_ctl_config {
    const char *node;              /* this controller's name, for logs and health */
    const char *cluster_id;
    int (*open_store)(void *arg, gt_store **store, gt_error *err); /* one per thread */
    void *open_store_arg;
    const char *key_file;
    bool key_file_explicit;
    const gt_run_options *run;
    gt_sessions_config sessions;
    int64_t token_ttl_ms;
    gt_bus_config bus;
    int64_t rpc_timeout_ms;        /* tokend calls; 0 = 5000 */
    int http_workers;
    int exec_workers;              /* concurrent runs on this node */
    bool distributed;              /* [server] distributed_execution: runners execute, via
                                      exec.<cluster_id>.<pool> queues */
    gt_ha *ha;                     /* [server] ha_enabled: serve only while active; NULL:
                                      always active */
} gt_ctl_config;

/* Creates the controller; cfg's pointers must outlive it. Starts the execution
 * workers and reaps executions a previous controller process left behind. */
gt_ctl *gt_ctl_new(const gt_ctl_config *cfg, gt_error *err) __attribute__((warn_unused_result));
/* Waits for running executions to finish, stops the workers, frees. */
void gt_ctl_free(gt_ctl **ctl);

/* The HTTP handler (gt_http_handler); arg is the gt_ctl. */
void gt_ctl_handle(void *arg, int worker, const gt_http_request *req, gt_http_response *resp);

/* The controller's own routes plus the API's, "METHOD PATTERN" per entry, for the
 * OpenAPI check (gantry-controller --routes). */
void gt_ctl_print_routes(FILE *out);

#endif
