#include "pool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api.h"
#include "exec.h"
#include "log.h"
#include "util.h"

typedef struct pjob {
    struct pjob *next;
    char *id;
    int64_t attempt;
    void *job;
} pjob;

typedef struct worker {
    gt_pool *p;
    pthread_t thread;
    gt_store *store;
    gt_api *api;
    atomic_int cancel;
    char current[64];          /* guarded by gt_pool.mu; "" when idle */
} worker;

struct gt_pool {
    gt_pool_config c;
    worker *w;
    pthread_t watcher;
    bool watcher_started;
    pthread_mutex_t mu;
    pthread_cond_t cv;         /* work for the workers */
    pthread_cond_t watch_cv;   /* the watcher's own, so a worker's wake-up is never taken by it */
    pjob *head, *tail;         /* FIFO of jobs not started; freed as they are taken */
    int queued, running;
    int started, idle;         /* worker threads: started (w[0..started)), waiting for work */
    bool stopping;
    bool killing;              /* cancel_all(KILL) was called: nothing new starts */
    int watch_sub;             /* subscription to GT_API_CANCELS on c.watch; 0: none */
    bool cancels_changed;      /* a cancel request of a run here may have come */
};

/* IDLE_CLOSE_MS: a worker that had nothing to do this long closes its store handle (a
 * runner of capacity 500 would otherwise keep 500 connections and their caches after a
 * burst); the next job opens one again. */
enum { CANCEL_POLL_MS = 300, CANCEL_SAFETY_POLL_MS = 5000, IDLE_CLOSE_MS = 30000 };

static gt_err open_api(gt_pool *p, gt_store **store, gt_api **api, atomic_int *cancel,
                       gt_error *err)
{
    gt_err rc = (gt_err)p->c.open_store(p->c.open_store_arg, store, err);
    if (rc != GT_OK)
        return rc;
    gt_api_deps d = {
        .store = *store,
        .key_file = p->c.key_file,
        .key_file_explicit = p->c.key_file_explicit,
        .run = p->c.run,
        .runner_name = p->c.runner_name,
        .cancel = cancel,
        .fence = p->c.fence,
    };
    return (*api = gt_api_new(&d, err)) ? GT_OK : GT_EUNAVAIL;
}

static void job_free(pjob *j)
{
    if (j) {
        free(j->id);
        free(j);
    }
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    gt_pool *p = w->p;
    for (;;) {
        pthread_mutex_lock(&p->mu);
        p->idle++;
        while (!p->stopping && p->head == NULL) {
            if (gt_cond_wait_ms(&p->cv, &p->mu, IDLE_CLOSE_MS) != 0 && p->head == NULL &&
                w->api) {
                pthread_mutex_unlock(&p->mu);
                gt_api_free(&w->api);
                gt_store_free(&w->store);
                pthread_mutex_lock(&p->mu);
            }
        }
        p->idle--;
        if (p->stopping) {
            pthread_mutex_unlock(&p->mu);
            break;
        }
        pjob *j = p->head;
        p->head = j->next;
        if (p->head == NULL)
            p->tail = NULL;
        p->queued--;
        p->running++;
        snprintf(w->current, sizeof w->current, "%s", j->id);
        w->cancel = p->killing ? GT_CANCEL_KILL : GT_CANCEL_NONE;
        pthread_cond_signal(&p->watch_cv);
        pthread_mutex_unlock(&p->mu);

        gt_error e = {0};
        gt_err rc = GT_OK;
        if (w->cancel == GT_CANCEL_KILL) /* fenced out: start nothing more */
            rc = gt_error_set(&e, GT_ECONFLICT, "execution %s: not started, the pool is fenced out",
                              j->id);
        else if (w->api == NULL && (rc = open_api(p, &w->store, &w->api, &w->cancel, &e)) != GT_OK)
            gt_errorlog("pool: store: %s", e.message);
        if (rc == GT_OK && (rc = gt_api_execute(w->api, j->id, j->attempt, &e)) != GT_OK)
            gt_errorlog("execution %s attempt %lld: %s", j->id, (long long)j->attempt, e.message);
        if ((rc == GT_EUNAVAIL || rc == GT_EIO || rc == GT_EINTERNAL) && w->api) {
            /* a store error may have broken the handle: open a new one next time */
            gt_api_free(&w->api);
            gt_store_free(&w->store);
        }
        pthread_mutex_lock(&p->mu);
        w->current[0] = '\0';
        p->running--;
        pthread_mutex_unlock(&p->mu);
        if (p->c.done)
            p->c.done(p->c.done_arg, j->job, rc, &e);
        job_free(j);
    }
    gt_api_free(&w->api);
    gt_store_free(&w->store);
    return NULL;
}

/* The change watcher's call: a cancel request (or any change, id NULL) for a run here
 * wakes the cancel watcher. Runs on the change watcher's thread. */
static void on_cancels(void *arg, const char *coll, const char *id, int64_t rev)
{
    gt_pool *p = arg;
    (void)coll;
    pthread_mutex_lock(&p->mu);
    bool ours = id == NULL;
    for (int i = 0; i < p->c.workers && !ours && rev != 0; i++)   /* a delete cancels nothing */
        ours = strcmp(p->w[i].current, id) == 0;
    if (ours) {
        p->cancels_changed = true;
        pthread_cond_signal(&p->watch_cv);
    }
    pthread_mutex_unlock(&p->mu);
}

/* Looks for cancel requests of the executions running here: a request may reach any
 * controller, and the store is what they share. With a change watcher it looks when
 * GT_API_CANCELS changes, and every few seconds in case the watcher fails; without one it
 * polls. */
static void *watch_main(void *arg)
{
    gt_pool *p = arg;
    gt_store *store = NULL;
    gt_api *api = NULL;
    int64_t every = p->c.cancel_poll_ms > 0 ? p->c.cancel_poll_ms
                    : p->c.watch            ? CANCEL_SAFETY_POLL_MS
                                            : CANCEL_POLL_MS;
    pthread_mutex_lock(&p->mu);
    while (!p->stopping) {
        if (p->running == 0) {
            pthread_cond_wait(&p->watch_cv, &p->mu);
            continue;
        }
        if (!p->cancels_changed)
            gt_cond_wait_ms(&p->watch_cv, &p->mu, every);
        p->cancels_changed = false;
        for (int i = 0; i < p->c.workers && !p->stopping; i++) {
            char id[64];
            snprintf(id, sizeof id, "%s", p->w[i].current);
            if (id[0] == '\0' || p->w[i].cancel != GT_CANCEL_NONE)
                continue;
            pthread_mutex_unlock(&p->mu);
            gt_error e = {0};
            if (api == NULL && open_api(p, &store, &api, NULL, &e) != GT_OK) {
                gt_warn("pool: cancel watcher: %s", e.message);
                gt_store_free(&store);
            }
            bool cancel = api && gt_api_cancel_requested(api, id);
            pthread_mutex_lock(&p->mu);
            /* the worker may have moved on to another execution meanwhile */
            if (cancel && strcmp(p->w[i].current, id) == 0 && p->w[i].cancel == GT_CANCEL_NONE) {
                gt_info("execution %s: canceling on request", id);
                p->w[i].cancel = GT_CANCEL_STOP;
            }
        }
    }
    pthread_mutex_unlock(&p->mu);
    gt_api_free(&api);
    gt_store_free(&store);
    return NULL;
}

/* Starts worker p->started; called with p->mu held. 0 or an errno. */
static int start_worker(gt_pool *p)
{
    worker *w = &p->w[p->started];
    int e = pthread_create(&w->thread, NULL, worker_main, w);
    if (e == 0)
        p->started++;
    return e;
}

gt_pool *gt_pool_new(const gt_pool_config *cfg, gt_error *err)
{
    gt_pool *p = gt_xcalloc(1, sizeof *p);
    p->c = *cfg;
    if (p->c.workers < 1)
        p->c.workers = 1;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    pthread_cond_init(&p->watch_cv, NULL);
    p->w = gt_xcalloc((size_t)p->c.workers, sizeof *p->w);
    if (p->c.watch)
        p->watch_sub = gt_watch_subscribe(p->c.watch, GT_API_CANCELS, on_cancels, p);
    for (int i = 0; i < p->c.workers; i++)
        p->w[i].p = p;
    /* one worker now (so that a machine that cannot start threads says so at once); the
     * others as work comes, up to c.workers */
    pthread_mutex_lock(&p->mu);
    int e = start_worker(p);
    pthread_mutex_unlock(&p->mu);
    if (e != 0) {
        gt_error_set(err, GT_EUNAVAIL, "pool: starting a worker: %s", strerror(e));
        goto fail;
    }
    e = pthread_create(&p->watcher, NULL, watch_main, p);
    if (e != 0) {
        gt_error_set(err, GT_EUNAVAIL, "pool: starting the cancel watcher: %s", strerror(e));
        goto fail;
    }
    p->watcher_started = true;
    return p;
fail:
    gt_pool_free(&p);
    return NULL;
}

gt_err gt_pool_submit(gt_pool *p, const char *id, int64_t attempt, void *job, gt_error *err)
{
    pjob *j = gt_xcalloc(1, sizeof *j);
    j->id = gt_xstrdup(id);
    j->attempt = attempt;
    j->job = job;
    pthread_mutex_lock(&p->mu);
    bool stopping = p->stopping;
    if (!stopping) {
        if (p->tail)
            p->tail->next = j;
        else
            p->head = j;
        p->tail = j;
        p->queued++;
        /* more jobs waiting than workers free: one more worker, while there is room */
        if (p->queued > p->idle && p->started < p->c.workers) {
            int e = start_worker(p);
            if (e != 0)
                gt_warn("pool: starting worker %d: %s (the %d running take the work)",
                        p->started, strerror(e), p->started);
        }
        pthread_cond_signal(&p->cv);
    }
    pthread_mutex_unlock(&p->mu);
    if (stopping) {
        job_free(j);
        return gt_error_set(err, GT_EUNAVAIL, "the worker pool is stopping");
    }
    return GT_OK;
}

size_t gt_pool_take_back(gt_pool *p, void (*fn)(void *arg, void *job), void *arg)
{
    pthread_mutex_lock(&p->mu);
    pjob *j = p->head;
    p->head = p->tail = NULL;
    p->queued = 0;
    pthread_mutex_unlock(&p->mu);
    size_t n = 0;
    while (j) {
        pjob *next = j->next;
        if (fn)
            fn(arg, j->job);
        job_free(j);
        j = next;
        n++;
    }
    return n;
}

void gt_pool_cancel_all(gt_pool *p, int how)
{
    pthread_mutex_lock(&p->mu);
    if (how == GT_CANCEL_KILL)
        p->killing = true;
    for (int i = 0; i < p->c.workers; i++)
        if (p->w[i].current[0] && p->w[i].cancel < how)
            p->w[i].cancel = how;
    pthread_mutex_unlock(&p->mu);
}

cJSON *gt_pool_running(gt_pool *p)
{
    cJSON *a = cJSON_CreateArray();
    pthread_mutex_lock(&p->mu);
    for (int i = 0; i < p->c.workers; i++)
        if (p->w[i].current[0])
            cJSON_AddItemToArray(a, cJSON_CreateString(p->w[i].current));
    pthread_mutex_unlock(&p->mu);
    return a;
}

int gt_pool_busy(gt_pool *p)
{
    pthread_mutex_lock(&p->mu);
    int n = p->queued + p->running;
    pthread_mutex_unlock(&p->mu);
    return n;
}

void gt_pool_free(gt_pool **pp)
{
    if (pp == NULL || *pp == NULL)
        return;
    gt_pool *p = *pp;
    if (p->watch_sub)   /* first: on_cancels takes p->mu */
        gt_watch_unsubscribe(p->c.watch, p->watch_sub);
    pthread_mutex_lock(&p->mu);
    p->stopping = true;
    pthread_cond_broadcast(&p->cv);
    pthread_cond_broadcast(&p->watch_cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->started; i++)   /* none starts once stopping is set */
        pthread_join(p->w[i].thread, NULL);
    if (p->watcher_started)
        pthread_join(p->watcher, NULL);
    gt_pool_take_back(p, NULL, NULL);
    pthread_cond_destroy(&p->watch_cv);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    free(p->w);
    free(p);
    *pp = NULL;
}
