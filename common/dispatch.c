#include "dispatch.h"

#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "lifecycle.h"
#include "log.h"
#include "model/model.h"
#include "util.h"

/* The work queue of ex's pool. */
static char *pool_queue(const char *cluster_id, const cJSON *ex)
{
    const cJSON *pool = cJSON_GetObjectItemCaseSensitive(ex, "pool");
    return gt_xasprintf("exec.%s.%s", cluster_id,
                        cJSON_IsString(pool) ? pool->valuestring : "default");
}

gt_err gt_dispatch_publish(gt_bus *bus, const char *cluster_id, const cJSON *ex,
                           char **declared, gt_error *err)
{
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(ex, "id");
    const cJSON *at = cJSON_GetObjectItemCaseSensitive(ex, "attempt");
    if (!cJSON_IsString(id) || !cJSON_IsNumber(at))
        return gt_error_set(err, GT_EINVAL, "dispatch: the execution has no id or attempt");
    char *queue = pool_queue(cluster_id, ex);
    char *body = gt_execution_message(id->valuestring, gt_json_member_i64(ex, "attempt", 1));
    gt_err rc = GT_OK;
    if (declared == NULL || *declared == NULL || strcmp(*declared, queue) != 0) {
        rc = gt_bus_declare_work_queue(bus, queue, err);
        if (rc == GT_OK && declared) {
            free(*declared);
            *declared = gt_xstrdup(queue);
        }
    }
    if (rc == GT_OK)
        rc = gt_bus_publish(bus, "", queue, body, strlen(body), true, err);
    if (rc != GT_OK && declared) { /* a new connection must declare again */
        free(*declared);
        *declared = NULL;
    }
    free(body);
    free(queue);
    return rc;
}

typedef struct sweep {
    gt_store *store;
    gt_bus *bus;
    const char *cluster_id;
    const gt_store_fence *fence;
    int64_t now, after;
    int sent;
    bool broker_down;
    char *queue;            /* the last pool's queue looked at, and whether it is empty */
    bool queue_empty;
} sweep;

/* Whether ex's queue holds no message ready for a runner. An execution can wait long
 * behind a deep queue of work (5,000 queued for a full runner): announcing it again then
 * only adds duplicates. Its message can be lost only if the queue is empty once runners
 * have taken all, so it is announced again then. */
static bool queue_empty(sweep *w, const cJSON *ex)
{
    char *queue = pool_queue(w->cluster_id, ex);
    if (w->queue && strcmp(w->queue, queue) == 0) {
        free(queue);
        return w->queue_empty;
    }
    free(w->queue);
    w->queue = queue;
    int64_t ready = 0;
    gt_error e = {0};
    /* a queue that cannot be looked at (gone, the broker away): announce, as before */
    w->queue_empty = gt_bus_queue_ready(w->bus, queue, &ready, &e) != GT_OK || ready == 0;
    return w->queue_empty;
}

static bool sweep_one(void *arg, const gt_store_item *it)
{
    sweep *w = arg;
    cJSON *ex = cJSON_Parse(it->body);
    if (ex == NULL)
        return true;
    int64_t last = gt_json_member_i64(ex, "dispatched_at_ms", 0);
    int64_t times = gt_json_member_i64(ex, "dispatches", 0);
    int64_t wait = w->after << (times > 0 ? (times < 4 ? times : 4) : 0);
    if (w->now - last < wait || !queue_empty(w, ex)) {
        cJSON_Delete(ex);
        return true;
    }
    gt_error e = {0};
    if (gt_dispatch_publish(w->bus, w->cluster_id, ex, NULL, &e) != GT_OK) {
        gt_warn("dispatch sweeper: execution %s: %s (the broker is away; next pass)", it->id,
                e.message);
        w->broker_down = true;
        cJSON_Delete(ex);
        return false;
    }
    gt_json_set_num(ex, "dispatched_at_ms", (double)w->now);
    gt_json_set_num(ex, "dispatches", (double)(times + 1));
    int64_t rev = it->rev;
    e = (gt_error){0};
    /* a conflict means a runner took it meanwhile: the message sent is a harmless extra */
    if (gt_lifecycle_store(w->store, ex, &rev, "queued", GT_ACTOR_DISPATCH, w->fence, &e) != GT_OK)
        gt_debug("dispatch sweeper: execution %s: %s", it->id, e.message);
    gt_info("execution %s: announced again (queued for %lld ms)", it->id,
            (long long)(w->now - last));
    w->sent++;
    cJSON_Delete(ex);
    return true;
}

int gt_dispatch_sweep(gt_store *store, gt_bus *bus, const char *cluster_id,
                      const gt_store_fence *fence, int64_t now_ms, int64_t after_ms)
{
    sweep w = {store, bus, cluster_id, fence, now_ms, after_ms > 0 ? after_ms : 1, 0, false,
               NULL, false};
    gt_store_each(store, GT_EXECUTIONS, "state", "queued", sweep_one, &w, NULL);
    free(w.queue);
    return w.sent;
}
