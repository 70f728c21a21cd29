#include "runner.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "exec.h"
#include "json.h"
#include "log.h"
#include "model/model.h"
#include "pool.h"
#include "util.h"
#include "watch.h"

/* A delivery taken from a work queue, until it is settled (acked or handed back). */
typedef struct job {
    gt_bus_delivery d;
    int consumer;
    char *id;
    int64_t attempt;
    gt_err rc;              /* the pool's outcome: GT_OK is recorded (or nothing to do) */
    int64_t settle_at;      /* a hand-back waits until then (monotonic ms) */
} job;

struct gt_runner {
    gt_runner_config c;
    gt_store *store;        /* the main thread's: registration */
    gt_pool *pool;
    gt_watch *watch;        /* the process's change watcher: the pool's cancels */
    char *lease_name;
    gt_store_fence fence;   /* every execution write carries it */
    int64_t lease_ttl_ms;

    gt_bus *bus;            /* the main thread's; NULL until the broker first answered */
    int64_t bus_retry_at;
    bool broker_waiting;    /* said so in the log, once per outage */
    gt_bus_consumer **consumers;
    char **queues;
    int nqueues;

    pthread_t beat, watchdog;
    bool beat_started, watchdog_started;
    _Atomic int64_t beat_ok_ms; /* monotonic: when the last renewal that held was sent */
    pthread_mutex_t mu;     /* guards done and the heartbeat's wait */
    pthread_cond_t beat_cv;
    job **done;             /* finished by the pool, to settle on the main thread */
    size_t ndone, capdone;
    int wake[2];            /* a finished job wakes the main thread out of its broker wait */
    bool woken_by_bus;      /* the bus honours wake[0]: no short polling slices needed */

    atomic_int fenced;      /* the lease is lost: kill, record nothing, stop */
    atomic_int beat_stop;
    atomic_int in_flight;   /* taken from the queue, not settled yet */
    atomic_int draining;
    atomic_int broker_up;
    int64_t started_ms;
};

static void job_free(job *j)
{
    if (j == NULL)
        return;
    gt_bus_delivery_clear(&j->d);
    free(j->id);
    free(j);
}

/* ---------- registration and heartbeats ---------- */

static void registry_put(gt_runner *r, gt_store *store, const char *state)
{
    cJSON *doc = cJSON_CreateObject();
    char host[128] = "";
    gethostname(host, sizeof host);
    gt_json_set_str(doc, "id", r->c.id);
    gt_json_set_str(doc, "host", host);
    gt_json_set_num(doc, "pid", (double)getpid());
    cJSON *pools = cJSON_AddArrayToObject(doc, "pools");
    for (char *const *p = r->c.pools; p && *p; p++)
        cJSON_AddItemToArray(pools, cJSON_CreateString(*p));
    gt_json_set_num(doc, "capacity", r->c.capacity);
    gt_json_set(doc, "running", r->pool ? gt_pool_running(r->pool) : cJSON_CreateArray());
    gt_json_set_num(doc, "in_flight", r->in_flight);
    gt_json_set_str(doc, "state", state);
    gt_json_set_str(doc, "broker", r->broker_up ? "connected" : "away");
    gt_json_set_str(doc, "lease", r->lease_name);
    gt_json_set_num(doc, "lease_epoch", (double)r->fence.epoch);
    int64_t now = gt_now_ms();
    char ts[40];
    gt_format_time(now, ts, sizeof ts);
    gt_json_set_str(doc, "last_heartbeat", ts);
    gt_json_set_num(doc, "last_heartbeat_ms", (double)now);
    gt_json_set_num(doc, "heartbeat_interval_ms", (double)r->c.heartbeat_ms);
    gt_format_time(r->started_ms, ts, sizeof ts);
    gt_json_set_str(doc, "started_at", ts);
    char *text = gt_json_print(doc);
    gt_error e = {0};
    if (gt_store_put(store, "runners", r->c.id, text, GT_REV_ANY, NULL, &e) != GT_OK)
        gt_warn("runner: registry: %s", e.message);
    free(text);
    cJSON_Delete(doc);
}

static void fence_out(gt_runner *r, const char *why)
{
    if (atomic_exchange(&r->fenced, 1))
        return;
    gt_errorlog("runner %s: fenced out: %s; killing its runs and recording nothing more", r->c.id,
                why);
    gt_pool_cancel_all(r->pool, GT_CANCEL_KILL);
}

/* Renews the lease every heartbeat on a store handle of its own; never touches the
 * broker, so a stalled broker cannot make a healthy runner look dead. A renewal can
 * block for the store's whole request timeout (a cut link), longer than the lease
 * lives: watchdog_main, not this thread, decides when the lease is lost. */
static void *beat_main(void *arg)
{
    gt_runner *r = arg;
    gt_store *store = NULL;
    while (!r->beat_stop && !r->fenced) {
        pthread_mutex_lock(&r->mu);
        if (!r->beat_stop)
            gt_cond_wait_ms(&r->beat_cv, &r->mu, r->c.heartbeat_ms);
        pthread_mutex_unlock(&r->mu);
        if (r->beat_stop)
            break;
        gt_error e = {0};
        int64_t epoch = 0;
        /* the lease runs from when etcd renewed it, no earlier than this */
        int64_t sent = gt_mono_ms();
        gt_err rc = store ? GT_OK : (gt_err)r->c.open_store(r->c.open_store_arg, &store, &e);
        if (rc == GT_OK)
            rc = gt_store_lease_acquire(store, r->lease_name, r->c.id, r->lease_ttl_ms, &epoch, &e);
        if (rc == GT_OK && epoch == r->fence.epoch) {
            r->beat_ok_ms = sent;
            registry_put(r, store, r->draining ? "draining" : "up");
        } else if (rc == GT_OK) {
            /* it had expired: whatever ran under the old epoch may be another's now */
            fence_out(r, "the lease expired before it was renewed");
        } else if (rc == GT_ECONFLICT) {
            fence_out(r, e.message);
        } else {
            gt_warn("runner: renewing the lease: %s", e.message);
            gt_store_free(&store); /* reopen next time */
        }
    }
    gt_store_free(&store);
    return NULL;
}

/* Fences the runner out once no renewal has held for two heartbeats, however long the
 * renewal in progress blocks: the lease (three heartbeats) then still runs, so the runs
 * are dead before the reaper may start another attempt. */
static void *watchdog_main(void *arg)
{
    gt_runner *r = arg;
    int64_t step = r->c.heartbeat_ms / 10 > 0 ? r->c.heartbeat_ms / 10 : 1;
    while (!r->beat_stop && !r->fenced) {
        pthread_mutex_lock(&r->mu);
        if (!r->beat_stop)
            gt_cond_wait_ms(&r->beat_cv, &r->mu, step);
        pthread_mutex_unlock(&r->mu);
        if (!r->beat_stop && gt_mono_ms() - r->beat_ok_ms > 2 * r->c.heartbeat_ms)
            fence_out(r, "the lease could not be renewed for two heartbeats");
    }
    return NULL;
}

/* ---------- the pool hands finished jobs back ---------- */

static void job_done(void *arg, void *jp, gt_err rc, const gt_error *err)
{
    (void)err;
    gt_runner *r = arg;
    job *j = jp;
    j->rc = rc;
    pthread_mutex_lock(&r->mu);
    if (r->ndone == r->capdone) {
        r->capdone = r->capdone ? r->capdone * 2 : 16;
        r->done = gt_xrealloc(r->done, r->capdone * sizeof *r->done);
    }
    r->done[r->ndone++] = j;
    pthread_mutex_unlock(&r->mu);
    char c = 1;
    if (write(r->wake[1], &c, 1) < 0 && errno != EAGAIN) /* full: a wake-up is pending */
        gt_warn("runner: waking the main thread: %s", strerror(errno));
}

static void drain_wake(gt_runner *r)
{
    char buf[64];
    while (read(r->wake[0], buf, sizeof buf) > 0)
        ;
}

static void hand_back(void *arg, void *jp)
{
    gt_runner *r = arg;
    job *j = jp;
    gt_bus_reject(r->consumers[j->consumer], &j->d, true, NULL);
    r->in_flight--;
    job_free(j);
}

/* Acks what is recorded; hands back, after a pause (so a broken store does not make a
 * message bounce between runners), what is not. */
static void settle(gt_runner *r)
{
    int64_t now = gt_mono_ms();
    pthread_mutex_lock(&r->mu);
    size_t k = 0;
    for (size_t i = 0; i < r->ndone; i++) {
        job *j = r->done[i];
        if (j->rc != GT_OK && !r->fenced) {
            if (j->settle_at == 0) {
                j->settle_at = now + 1000;
                gt_warn("execution %s attempt %lld: not recorded; handing it back to the queue",
                        j->id, (long long)j->attempt);
            }
            if (now < j->settle_at) {
                r->done[k++] = j;
                continue;
            }
        }
        gt_error e = {0};
        gt_err rc = j->rc == GT_OK ? gt_bus_ack(r->consumers[j->consumer], &j->d, &e)
                                   : gt_bus_reject(r->consumers[j->consumer], &j->d, true, &e);
        if (rc != GT_OK) /* an old connection's delivery: the broker redelivers it */
            gt_info("runner: settling %s: %s", j->id, e.message);
        r->in_flight--;
        job_free(j);
    }
    r->ndone = k;
    pthread_mutex_unlock(&r->mu);
}

/* ---------- the broker ---------- */

/* Connects and subscribes when the broker is (back) up; the bus reconnects by itself
 * after that. Never gives up: the runner waits as long as the broker is away. */
static void ensure_broker(gt_runner *r)
{
    if (r->bus && r->consumers[r->nqueues - 1])
        return;
    int64_t now = gt_mono_ms();
    if (now < r->bus_retry_at)
        return;
    gt_error e = {0};
    if (r->bus == NULL && (r->bus = gt_bus_connect(&r->c.bus, &e)) != NULL)
        r->woken_by_bus = gt_bus_set_wakeup(r->bus, r->wake[0]);
    for (int i = 0; r->bus && i < r->nqueues; i++) {
        if (r->consumers[i])
            continue;
        /* prefetch = capacity: a message waits in the queue, where any free runner can
         * take it, rather than behind a busy one */
        if (gt_bus_declare_work_queue(r->bus, r->queues[i], &e) != GT_OK ||
            (r->consumers[i] = gt_bus_consume_start(r->bus, r->queues[i], r->c.capacity, &e)) == NULL)
            break;
    }
    if (r->bus && r->consumers[r->nqueues - 1]) {
        if (r->broker_waiting)
            gt_info("runner: the broker is back");
        r->broker_waiting = false;
        r->broker_up = 1;
        return;
    }
    if (!r->broker_waiting)
        gt_warn("runner: waiting for the broker: %s", e.message);
    r->broker_waiting = true;
    r->broker_up = 0;
    r->bus_retry_at = now + 2000;
}

/* A message: {"id": "...", "attempt": N}. Anything else is dead-lettered. */
static void take(gt_runner *r, int i, gt_bus_delivery *d)
{
    gt_error e = {0};
    char *id = NULL;
    int64_t attempt = 0;
    if (gt_execution_message_parse(d->body, d->len, &id, &attempt, &e) != GT_OK) {
        gt_warn("runner: %s: malformed message dead-lettered: %.200s", r->queues[i], e.message);
        gt_bus_reject(r->consumers[i], d, false, NULL);
        gt_bus_delivery_clear(d);
        return;
    }
    job *j = gt_xcalloc(1, sizeof *j);
    j->id = id;
    j->attempt = attempt;
    j->d = *d;
    *d = (gt_bus_delivery){0};
    j->consumer = i;
    r->in_flight++;
    if (gt_pool_submit(r->pool, j->id, j->attempt, j, &e) != GT_OK)
        hand_back(r, j);
}

static void consume(gt_runner *r, int64_t wait_ms)
{
    bool any = false;
    for (int i = 0; i < r->nqueues; i++) {
        if (r->consumers[i] == NULL)
            continue;
        any = true;
        gt_bus_delivery d = {0};
        gt_error e = {0};
        gt_err c = gt_bus_consume_next(r->consumers[i], wait_ms / r->nqueues + 1, &d, &e);
        r->broker_up = gt_bus_consuming(r->consumers[i]);
        if (c == GT_OK) {
            if (r->draining || r->fenced) /* arrived before the cancel took: back it goes */
                gt_bus_reject(r->consumers[i], &d, true, NULL);
            else
                take(r, i, &d);
        } else if (c != GT_ETIMEDOUT) {
            /* the bus reconnects on the next calls; a new round begins after a give-up */
            if (!r->broker_waiting)
                gt_warn("runner: %s: %s (waiting for the broker)", r->queues[i], e.message);
            r->broker_waiting = c == GT_EUNAVAIL;
        } else if (r->broker_up && r->broker_waiting) {
            gt_info("runner: the broker is back");
            r->broker_waiting = false;
        }
        gt_bus_delivery_clear(&d);
    }
    if (!any) {
        struct timespec ts = {0, wait_ms * 1000000L};
        nanosleep(&ts, NULL);
    }
}

static void stop_consuming(gt_runner *r)
{
    for (int i = 0; i < r->nqueues; i++)
        if (r->consumers[i])
            gt_bus_consume_cancel(r->consumers[i], NULL);
    /* what no worker started yet goes back to the queue for other runners */
    size_t n = gt_pool_take_back(r->pool, hand_back, r);
    gt_info("%s: %d execution(s) in flight, %zu returned to the queue",
            r->fenced ? "fenced" : "draining", (int)r->in_flight, n);
}

gt_err gt_runner_serve(gt_runner *r, atomic_int *stop, gt_error *err)
{
    int64_t drain_until = 0;
    bool stopped_consuming = false, canceled = false;
    for (;;) {
        int64_t now = gt_mono_ms();
        if ((*stop || r->fenced) && !stopped_consuming) {
            r->draining = 1;
            drain_until = now + (r->c.drain_ms > 0 ? r->c.drain_ms : 1);
            stop_consuming(r);
            stopped_consuming = true;
        }
        if (stopped_consuming && r->in_flight == 0)
            break;
        if (stopped_consuming && !canceled && now >= drain_until) {
            /* out of time: stop what still runs (recorded as canceled), then settle it */
            gt_warn("drain: %d execution(s) still running after the drain timeout; canceling",
                    (int)r->in_flight);
            gt_pool_cancel_all(r->pool, GT_CANCEL_STOP);
            canceled = true;
        }
        ensure_broker(r);
        /* a finished run is settled (and its slot refilled) at once: the pool wakes the
         * bus's wait; where the bus cannot be woken (TLS), wait only briefly while work
         * is in flight */
        consume(r, r->in_flight > 0 && !r->woken_by_bus ? 5 : 100);
        drain_wake(r);
        settle(r);
    }
    settle(r);
    if (r->fenced)
        return gt_error_set(err, GT_ECONFLICT, "runner %s was fenced out (its lease is lost); "
                            "restart it to rejoin", r->c.id);
    return GT_OK;
}

gt_runner *gt_runner_new(const gt_runner_config *cfg, gt_error *err)
{
    gt_runner *r = gt_xcalloc(1, sizeof *r);
    r->c = *cfg;
    r->started_ms = gt_now_ms();
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->beat_cv, NULL);
    if (pipe2(r->wake, O_CLOEXEC | O_NONBLOCK) != 0) {
        r->wake[0] = r->wake[1] = -1;
        gt_error_set(err, GT_EUNAVAIL, "runner: pipe: %s", strerror(errno));
        goto fail;
    }
    if (r->c.capacity < 1)
        r->c.capacity = 1;
    if (r->c.heartbeat_ms <= 0)
        r->c.heartbeat_ms = 5000;
    r->lease_ttl_ms = GT_RUNNER_LEASE_BEATS * r->c.heartbeat_ms;
    r->lease_name = gt_xasprintf("runner:%s", r->c.id);
    for (char *const *p = cfg->pools; p && *p; p++)
        r->nqueues++;
    if (r->nqueues == 0) {
        gt_error_set(err, GT_EINVAL, "[runner] pools is empty");
        goto fail;
    }
    if ((gt_err)r->c.open_store(r->c.open_store_arg, &r->store, err) != GT_OK)
        goto fail;
    gt_error e = {0};
    r->beat_ok_ms = gt_mono_ms();
    if (gt_store_lease_acquire(r->store, r->lease_name, r->c.id, r->lease_ttl_ms, &r->fence.epoch,
                               &e) != GT_OK) {
        gt_error_set(err, GT_ECONFLICT, "runner %s: taking its lease: %s", r->c.id, e.message);
        goto fail;
    }
    r->fence.name = r->lease_name;
    r->fence.holder = r->c.id;
    if ((r->watch = gt_watch_new(r->c.open_store, r->c.open_store_arg, err)) == NULL)
        goto fail;
    gt_pool_config pc = {
        .workers = r->c.capacity,
        .open_store = r->c.open_store,
        .open_store_arg = r->c.open_store_arg,
        .key_file = r->c.key_file,
        .key_file_explicit = r->c.key_file_explicit,
        .run = r->c.run,
        .runner_name = r->c.id,
        .fence = &r->fence,
        .watch = r->watch,
        .done = job_done,
        .done_arg = r,
    };
    if ((r->pool = gt_pool_new(&pc, err)) == NULL)
        goto fail;
    r->queues = gt_xcalloc((size_t)r->nqueues, sizeof *r->queues);
    r->consumers = gt_xcalloc((size_t)r->nqueues, sizeof *r->consumers);
    for (int i = 0; i < r->nqueues; i++)
        r->queues[i] = gt_xasprintf("exec.%s.%s", cfg->cluster_id, cfg->pools[i]);
    ensure_broker(r);
    registry_put(r, r->store, "up");
    int pe = pthread_create(&r->beat, NULL, beat_main, r);
    if (pe != 0) {
        gt_error_set(err, GT_EUNAVAIL, "runner: starting the heartbeat thread: %s", strerror(pe));
        goto fail;
    }
    r->beat_started = true;
    if ((pe = pthread_create(&r->watchdog, NULL, watchdog_main, r)) != 0) {
        gt_error_set(err, GT_EUNAVAIL, "runner: starting the lease watchdog: %s", strerror(pe));
        goto fail;
    }
    r->watchdog_started = true;
    return r;
fail:
    gt_runner_free(&r);
    return NULL;
}

void gt_runner_free(gt_runner **pr)
{
    if (pr == NULL || *pr == NULL)
        return;
    gt_runner *r = *pr;
    if (r->beat_started || r->watchdog_started) {
        pthread_mutex_lock(&r->mu);
        r->beat_stop = 1;
        pthread_cond_broadcast(&r->beat_cv);
        pthread_mutex_unlock(&r->mu);
        if (r->watchdog_started)
            pthread_join(r->watchdog, NULL);
        if (r->beat_started)
            pthread_join(r->beat, NULL);
    }
    bool idle = r->pool == NULL || gt_pool_busy(r->pool) == 0;
    gt_pool_free(&r->pool);
    gt_watch_free(&r->watch);
    for (size_t i = 0; i < r->ndone; i++)
        job_free(r->done[i]);
    /* a clean stop gives the lease back at once; a runner fenced out, or one that still
     * had work it could not record, leaves it to expire, so the reaper takes over */
    if (r->store && r->fence.epoch && !r->fenced && idle && r->in_flight == 0) {
        registry_put(r, r->store, "stopped");
        gt_store_lease_release(r->store, r->lease_name, r->c.id, NULL);
    }
    for (int i = 0; r->consumers && i < r->nqueues; i++) {
        gt_bus_consume_stop(&r->consumers[i]);
        free(r->queues[i]);
    }
    free(r->consumers);
    free(r->queues);
    free(r->done);
    gt_bus_free(&r->bus);
    for (int i = 0; i < 2; i++)
        if (r->wake[i] >= 0)
            close(r->wake[i]);
    gt_store_free(&r->store);
    free(r->lease_name);
    pthread_cond_destroy(&r->beat_cv);
    pthread_mutex_destroy(&r->mu);
    free(r);
    *pr = NULL;
}
