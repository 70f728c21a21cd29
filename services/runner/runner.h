/* gantry-runner: takes executions from exec.<cluster>.<pool> queues and runs them on the
 * shared worker pool (common/pool.h). It holds a lease in the store ("runner:<id>"),
 * renewed by a heartbeat thread of its own that never waits on the broker; every write
 * about an attempt is fenced by that lease. A message is acked once its execution's
 * terminal state is durable, and handed back (rejected with requeue) when the store
 * failed before that. A runner that cannot renew its lease for two heartbeats kills its
 * runs at once and stops: by the time the reaper may start another attempt (lease
 * expired plus a grace), the old one is dead. */
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

/* The lease a runner holds lives this many heartbeats; it is fenced out after two
 * without a renewal, and the reaper takes it once it expired. */
#define GT_RUNNER_LEASE_BEATS 3

/* Opens the store, takes the runner's lease and registers it. The broker may be away:
 * the runner connects when it can. */
gt_runner *gt_runner_new(const gt_runner_config *cfg, gt_error *err) __attribute__((warn_unused_result));
/* Serves until *stop, then drains: stops consuming, hands back what did not start, lets
 * in-flight work finish within drain_ms, then cancels it. Broker outages of any length
 * are waited out. GT_ECONFLICT when the runner was fenced out (its lease lost: the
 * cluster may have declared it dead); its runs were killed and nothing more recorded. */
gt_err gt_runner_serve(gt_runner *r, atomic_int *stop, gt_error *err);
void gt_runner_free(gt_runner **r);

#endif
