/* gantry-runner: takes executions from exec.<cluster>.<pool> queues, runs them on a
 * fixed number of worker threads, records every transition in the shared store,
 * publishes each result (confirmed) and only then acks the message. */
#ifndef GT_RUNNER_H
#define GT_RUNNER_H

#include <stdatomic.h>
#include <signal.h>
#include <stdint.h>

#include "bus.h"
#include "run.h"
#include "store.h"

typedef struct gt_runner gt_runner;

typedef struct gt_runner_config {
    const char *id;                 /* unique per process: host/pid */
    const char *cluster_id;
    char *const *pools;             /* NULL-terminated */
    int capacity;                   /* concurrent executions */
    int64_t heartbeat_ms;
    int64_t drain_ms;               /* SIGTERM: how long in-flight work may take */
    int (*open_store)(void *arg, gt_store **store, gt_error *err); /* one per thread */
    void *open_store_arg;
    const char *key_file;
    bool key_file_explicit;
    const gt_run_options *run;
    gt_bus_config bus;
} gt_runner_config;

/* Connects, declares the queues, registers the runner. */
gt_runner *gt_runner_new(const gt_runner_config *cfg, gt_error *err) __attribute__((warn_unused_result));
/* Serves until *stop, then drains: stops consuming, lets in-flight work finish
 * within drain_ms (what does not finish goes back to the queue). GT_EUNAVAIL when
 * the broker stayed away past the bus's reconnect attempts. */
gt_err gt_runner_serve(gt_runner *r, atomic_int *stop, gt_error *err);
void gt_runner_free(gt_runner **r);

#endif
