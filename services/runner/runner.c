#include "runner.h"

#include <stdatomic.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api.h"
#include "json.h"
#include "log.h"
#include "model/model.h"
#include "util.h"

typedef struct job {
    gt_bus_delivery d;
    int consumer;
    char *id;
    int64_t attempt;
    char *outcome;          /* state after the run, for the result message */
} job;

typedef struct slot {
    gt_runner *r;
    pthread_t thread;
    gt_store *store;
    gt_api *api;
    atomic_int cancel;
    char current[64];       /* guarded by gt_runner.mu */
} slot;

struct gt_runner {
    gt_runner_config c;
    gt_bus *bus;            /* the main thread's */
    gt_store *store;        /* the main thread's: heartbeats, cancel checks */
    gt_api *api;
    gt_bus_consumer **consumers;
    char **queues;
    int nqueues;
    char *results_queue;
    slot *slots;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    job **todo;             /* waiting for a slot */
    size_t ntodo, captodo;
    job **done;             /* waiting for publish + ack on the main thread */
    size_t ndone, capdone;
    int in_flight;          /* taken from the queue, not yet acked */
    bool stopping;
    int64_t started_ms;
};

static void push(job ***v, size_t *n, size_t *cap, job *j)
{
    if (*n == *cap) {
        *cap = *cap ? *cap * 2 : 16;
        *v = gt_xrealloc(*v, *cap * sizeof **v);
    }
    (*v)[(*n)++] = j;
}

static void job_free(job *j)
{
    if (j == NULL)
        return;
    gt_bus_delivery_clear(&j->d);
    free(j->id);
    free(j->outcome);
    free(j);
}

static gt_err open_api(gt_runner *r, gt_store **store, gt_api **api, atomic_int *cancel,
                       gt_error *err)
{
    gt_err rc = r->c.open_store(r->c.open_store_arg, store, err);
    if (rc != GT_OK)
        return rc;
    gt_api_deps d = {
        .store = *store,
        .key_file = r->c.key_file,
        .key_file_explicit = r->c.key_file_explicit,
        .run = r->c.run,
        .runner_name = r->c.id,
        .cancel = cancel,
    };
    return (*api = gt_api_new(&d, err)) ? GT_OK : GT_EUNAVAIL;
}

/* ---------- worker threads ---------- */

static void *slot_main(void *arg)
{
    slot *s = arg;
    gt_runner *r = s->r;
    for (;;) {
        pthread_mutex_lock(&r->mu);
        while (!r->stopping && r->ntodo == 0)
            pthread_cond_wait(&r->cv, &r->mu);
        if (r->ntodo == 0) { /* stopping */
            pthread_mutex_unlock(&r->mu);
            break;
        }
        job *j = r->todo[0];
        memmove(r->todo, r->todo + 1, --r->ntodo * sizeof *r->todo);
        snprintf(s->current, sizeof s->current, "%s", j->id);
        s->cancel = 0;
        pthread_mutex_unlock(&r->mu);

        gt_error e = {0};
        if (s->api == NULL && open_api(r, &s->store, &s->api, &s->cancel, &e) != GT_OK)
            gt_errorlog("runner: store: %s", e.message);
        if (s->api && gt_api_execute(s->api, j->id, j->attempt, &e) != GT_OK)
            gt_errorlog("execution %s attempt %lld: %s", j->id, (long long)j->attempt, e.message);
        /* what the store says now is the outcome, whoever wrote it */
        char *body = NULL;
        if (s->store && gt_store_get(s->store, "executions", j->id, &body, NULL, NULL) == GT_OK) {
            cJSON *doc = cJSON_Parse(body);
            const cJSON *st = cJSON_GetObjectItemCaseSensitive(doc, "state");
            j->outcome = gt_xstrdup(cJSON_IsString(st) ? st->valuestring : "unknown");
            cJSON_Delete(doc);
        }
        free(body);

        pthread_mutex_lock(&r->mu);
        s->current[0] = '\0';
        push(&r->done, &r->ndone, &r->capdone, j);
        pthread_mutex_unlock(&r->mu);
    }
    gt_api_free(&s->api);
    gt_store_free(&s->store);
    return NULL;
}

/* ---------- the main thread: bus, heartbeats, cancels ---------- */

static void heartbeat(gt_runner *r, const char *state)
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
    cJSON *running = cJSON_AddArrayToObject(doc, "running");
    pthread_mutex_lock(&r->mu);
    for (int i = 0; i < r->c.capacity; i++)
        if (r->slots[i].current[0])
            cJSON_AddItemToArray(running, cJSON_CreateString(r->slots[i].current));
    gt_json_set_num(doc, "in_flight", r->in_flight);
    pthread_mutex_unlock(&r->mu);
    gt_json_set_str(doc, "state", state);
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
    if (gt_store_put(r->store, "runners", r->c.id, text, GT_REV_ANY, NULL, &e) != GT_OK)
        gt_warn("runner: heartbeat: %s", e.message);
    free(text);
    cJSON_Delete(doc);
}

static void check_cancels(gt_runner *r)
{
    for (int i = 0; i < r->c.capacity; i++) {
        char id[64];
        pthread_mutex_lock(&r->mu);
        snprintf(id, sizeof id, "%s", r->slots[i].current);
        pthread_mutex_unlock(&r->mu);
        if (id[0] && !r->slots[i].cancel && gt_api_cancel_requested(r->api, id)) {
            gt_info("execution %s: canceling on request", id);
            r->slots[i].cancel = 1;
        }
    }
}

/* A message: {"id": "...", "attempt": N}. Anything else is dead-lettered. */
static job *parse(const gt_bus_delivery *d, char *why, size_t n)
{
    gt_error e = {0};
    char *id = NULL;
    int64_t attempt = 0;
    if (gt_execution_message_parse(d->body, d->len, &id, &attempt, &e) != GT_OK) {
        snprintf(why, n, "%.200s", e.message);
        return NULL;
    }
    job *j = gt_xcalloc(1, sizeof *j);
    j->id = id;
    j->attempt = attempt;
    return j;
}

/* Publishes the results of finished jobs, then acks them. A job whose publish fails
 * stays for the next round (its message stays unacked). */
static void settle(gt_runner *r)
{
    for (;;) {
        pthread_mutex_lock(&r->mu);
        job *j = r->ndone ? r->done[0] : NULL;
        pthread_mutex_unlock(&r->mu);
        if (j == NULL)
            return;
        cJSON *res = cJSON_CreateObject();
        gt_json_set_str(res, "id", j->id);
        gt_json_set_num(res, "attempt", (double)j->attempt);
        gt_json_set_str(res, "state", j->outcome ? j->outcome : "unknown");
        gt_json_set_str(res, "runner", r->c.id);
        char *text = gt_json_print(res);
        cJSON_Delete(res);
        gt_error e = {0};
        gt_err rc = gt_bus_publish(r->bus, "", r->results_queue, text, strlen(text), true, &e);
        free(text);
        if (rc != GT_OK) {
            gt_warn("runner: publishing the result of %s: %s (will retry)", j->id, e.message);
            return;
        }
        e = (gt_error){0};
        rc = gt_bus_ack(r->consumers[j->consumer], &j->d, &e);
        if (rc != GT_OK) /* an old connection's tag: the redelivery finds it finished */
            gt_info("runner: ack of %s: %s", j->id, e.message);
        pthread_mutex_lock(&r->mu);
        memmove(r->done, r->done + 1, --r->ndone * sizeof *r->done);
        r->in_flight--;
        pthread_mutex_unlock(&r->mu);
        job_free(j);
    }
}

gt_err gt_runner_serve(gt_runner *r, atomic_int *stop, gt_error *err)
{
    gt_err rc = GT_OK;
    int64_t next_beat = 0, next_cancel = 0;
    bool draining = false;
    int64_t drain_until = 0;
    for (;;) {
        int64_t now = gt_mono_ms();
        if (*stop && !draining) {
            draining = true;
            drain_until = now + (r->c.drain_ms > 0 ? r->c.drain_ms : 1);
            for (int i = 0; i < r->nqueues; i++)
                gt_bus_consume_cancel(r->consumers[i], NULL);
            /* what no slot started yet goes back to the queue for other runners */
            pthread_mutex_lock(&r->mu);
            job **back = r->todo;
            size_t nback = r->ntodo;
            r->todo = NULL;
            r->ntodo = r->captodo = 0;
            r->in_flight -= (int)nback;
            pthread_mutex_unlock(&r->mu);
            for (size_t i = 0; i < nback; i++) {
                gt_bus_reject(r->consumers[back[i]->consumer], &back[i]->d, true, NULL);
                job_free(back[i]);
            }
            free(back);
            gt_info("draining: %d execution(s) in flight, %zu returned to the queue",
                    r->in_flight, nback);
            heartbeat(r, "draining");
        }
        pthread_mutex_lock(&r->mu);
        int in_flight = r->in_flight;
        pthread_mutex_unlock(&r->mu);
        if (draining && in_flight == 0)
            break;
        if (draining && now >= drain_until && drain_until > 0) {
            /* out of time: stop what still runs (recorded as canceled), then settle it */
            gt_warn("drain: %d execution(s) still running after the drain timeout; canceling",
                    in_flight);
            for (int i = 0; i < r->c.capacity; i++)
                r->slots[i].cancel = 1;
            drain_until = 0;
        }
        /* the consumers also keep the connection serviced (heartbeats, confirms); while
         * work is in flight they wait only briefly, so a finished run is settled (and
         * its slot refilled) at once rather than after an idle timeout */
        int64_t wait_ms = (in_flight > 0 ? 5 : 100) / r->nqueues + 1;
        for (int i = 0; i < r->nqueues; i++) {
            gt_bus_delivery d = {0};
            gt_error e = {0};
            gt_err c = gt_bus_consume_next(r->consumers[i], wait_ms, &d, &e);
            if (c == GT_ETIMEDOUT)
                continue;
            if (c != GT_OK) {
                if (c == GT_EUNAVAIL) {
                    rc = gt_error_set(err, c, "broker: %s", e.message);
                    goto done;
                }
                gt_warn("runner: %s: %s", r->queues[i], e.message);
                continue;
            }
            if (draining) { /* arrived before the cancel took: back to the queue */
                gt_bus_reject(r->consumers[i], &d, true, NULL);
                gt_bus_delivery_clear(&d);
                continue;
            }
            char why[256];
            job *j = parse(&d, why, sizeof why);
            if (j == NULL) {
                gt_warn("runner: %s: malformed message dead-lettered: %s", r->queues[i], why);
                gt_bus_reject(r->consumers[i], &d, false, NULL);
                gt_bus_delivery_clear(&d);
                continue;
            }
            j->d = d;
            j->consumer = i;
            pthread_mutex_lock(&r->mu);
            r->in_flight++;
            push(&r->todo, &r->ntodo, &r->captodo, j);
            pthread_cond_signal(&r->cv);
            pthread_mutex_unlock(&r->mu);
        }
        settle(r);
        now = gt_mono_ms();
        if (now >= next_cancel) {
            check_cancels(r);
            next_cancel = now + 300;
        }
        if (now >= next_beat) {
            heartbeat(r, draining ? "draining" : "up");
            next_beat = now + r->c.heartbeat_ms;
        }
    }
done:
    settle(r);
    return rc;
}

gt_runner *gt_runner_new(const gt_runner_config *cfg, gt_error *err)
{
    gt_runner *r = gt_xcalloc(1, sizeof *r);
    r->c = *cfg;
    r->started_ms = gt_now_ms();
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    if (r->c.capacity < 1)
        r->c.capacity = 1;
    if (r->c.heartbeat_ms <= 0)
        r->c.heartbeat_ms = 5000;
    if (open_api(r, &r->store, &r->api, NULL, err) != GT_OK ||
        (r->bus = gt_bus_connect(&cfg->bus, err)) == NULL)
        goto fail;
    r->results_queue = gt_xasprintf("results.%s", cfg->cluster_id);
    if (gt_bus_declare_work_queue(r->bus, r->results_queue, err) != GT_OK)
        goto fail;
    for (char *const *p = cfg->pools; p && *p; p++)
        r->nqueues++;
    if (r->nqueues == 0) {
        gt_error_set(err, GT_EINVAL, "[runner] pools is empty");
        goto fail;
    }
    r->queues = gt_xcalloc((size_t)r->nqueues, sizeof *r->queues);
    r->consumers = gt_xcalloc((size_t)r->nqueues, sizeof *r->consumers);
    for (int i = 0; i < r->nqueues; i++) {
        r->queues[i] = gt_xasprintf("exec.%s.%s", cfg->cluster_id, cfg->pools[i]);
        if (gt_bus_declare_work_queue(r->bus, r->queues[i], err) != GT_OK ||
            /* two per slot: the next message is here when a slot frees up */
            (r->consumers[i] = gt_bus_consume_start(r->bus, r->queues[i], 2 * r->c.capacity, err)) == NULL)
            goto fail;
    }
    r->slots = gt_xcalloc((size_t)r->c.capacity, sizeof *r->slots);
    heartbeat(r, "up");
    for (int i = 0; i < r->c.capacity; i++) {
        r->slots[i].r = r;
        pthread_create(&r->slots[i].thread, NULL, slot_main, &r->slots[i]);
    }
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
    pthread_mutex_lock(&r->mu);
    r->stopping = true;
    /* jobs no slot took go back to the queue when the consumers close */
    for (size_t i = 0; i < r->ntodo; i++)
        job_free(r->todo[i]);
    r->ntodo = 0;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    for (int i = 0; r->slots && i < r->c.capacity; i++)
        if (r->slots[i].thread)
            pthread_join(r->slots[i].thread, NULL);
    for (size_t i = 0; i < r->ndone; i++)
        job_free(r->done[i]);
    if (r->store && r->api && r->slots)
        heartbeat(r, "stopped");
    for (int i = 0; i < r->nqueues; i++) {
        gt_bus_consume_stop(&r->consumers[i]);
        free(r->queues[i]);
    }
    free(r->consumers);
    free(r->queues);
    free(r->results_queue);
    free(r->slots);
    free(r->todo);
    free(r->done);
    gt_bus_free(&r->bus);
    gt_api_free(&r->api);
    gt_store_free(&r->store);
    pthread_cond_destroy(&r->cv);
    pthread_mutex_destroy(&r->mu);
    free(r);
    *pr = NULL;
}
