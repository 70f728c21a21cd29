/* The worker pool that runs executions: a fixed number of threads, each with a store
 * handle and an API of its own, taking (execution id, attempt) jobs in order, and one
 * watcher that turns cancel requests found in the store into the cancel flag of the
 * worker running that execution. Controllers (their own runs) and runners (work from
 * the broker) share it, so there is one worker and one cancel mechanism. */
#ifndef GT_POOL_H
#define GT_POOL_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdint.h>

#include "error.h"
#include "run.h"
#include "store.h"
#include "watch.h"

typedef struct gt_pool gt_pool;

/* A job ended: rc is gt_api_execute's (GT_OK: recorded, or nothing to do; anything
 * else: not recorded, for example a store error before it started, so hand it back).
 * Called on the worker's thread, without the pool's lock. */
typedef void (*gt_pool_done_fn)(void *arg, void *job, gt_err rc, const gt_error *err);

typedef struct gt_pool_config {
    int workers;                   /* >= 1 */
    int (*open_store)(void *arg, gt_store **store, gt_error *err); /* gt_err; one per thread */
    void *open_store_arg;
    const char *key_file;
    bool key_file_explicit;
    const gt_run_options *run;
    const char *runner_name;       /* recorded on executions */
    const gt_store_fence *fence;   /* every execution write is fenced by it; may be NULL */
    gt_watch *watch;               /* the process's change watcher: cancel requests are
                                    * looked for when "cancels" changes; may be NULL */
    int64_t cancel_poll_ms;        /* how often cancel requests are looked for anyway;
                                    * 0 = 300 ms without a watch, 5 s with one (in case it
                                    * fails) */
    gt_pool_done_fn done;          /* may be NULL */
    void *done_arg;
} gt_pool_config;

/* Starts the workers and the cancel watcher; cfg's pointers (watch too) must outlive
 * the pool. */
gt_pool *gt_pool_new(const gt_pool_config *cfg, gt_error *err) __attribute__((warn_unused_result));

/* Queues one attempt (attempt 0: whatever is stored); job is handed back to done.
 * GT_EUNAVAIL once the pool is stopping. */
gt_err gt_pool_submit(gt_pool *p, const char *id, int64_t attempt, void *job, gt_error *err);

/* Takes back every job no worker started yet, calling fn(arg, job) for each in order
 * (a drain hands them back to the broker). Returns how many. */
size_t gt_pool_take_back(gt_pool *p, void (*fn)(void *arg, void *job), void *arg);

/* Sets the cancel flag of every run in progress to how (GT_CANCEL_STOP, GT_CANCEL_KILL). */
void gt_pool_cancel_all(gt_pool *p, int how);

/* The ids of the executions running now: a new array (caller deletes). */
cJSON *gt_pool_running(gt_pool *p);

/* Jobs queued or running. */
int gt_pool_busy(gt_pool *p);

/* Stops taking jobs, drops those not started (without calling done), waits for the
 * running ones to end, frees. NULL is fine. */
void gt_pool_free(gt_pool **p);

#endif
