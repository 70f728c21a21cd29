#include "reaper.h"

#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "log.h"
#include "model/model.h"
#include "util.h"

static int64_t num(const cJSON *o, const char *k, int64_t dflt)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(v) ? (int64_t)v->valuedouble : dflt;
}

static const char *str(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* Retries or ends one execution of a dead runner. */
static bool reap_execution(gt_store *store, gt_bus *bus, const char *cluster_id,
                           const gt_store_item *it, const char *runner, const char *last)
{
    cJSON *ex = cJSON_Parse(it->body);
    bool handled = false;
    char *svc_body = NULL;
    int64_t retries = 0, attempt = num(ex, "attempt", 1);
    const char *service = str(ex, "service");
    if (service && gt_store_get(store, "services", service, &svc_body, NULL, NULL) == GT_OK) {
        cJSON *svc = cJSON_Parse(svc_body);
        retries = num(svc, "retries", 0);
        cJSON_Delete(svc);
    }
    bool retry = attempt <= retries;
    char ts[40];
    gt_format_time(gt_now_ms(), ts, sizeof ts);
    char *why = gt_xasprintf("runner %s stopped heartbeating (last at %s)", runner, last);
    if (retry) {
        gt_json_set_str(ex, "state", "queued");
        gt_json_set_num(ex, "attempt", (double)(attempt + 1));
        gt_json_set(ex, "runner", cJSON_CreateNull());
        gt_json_set_str(ex, "retry_reason", why);
    } else {
        gt_json_set_str(ex, "state", "lost");
        gt_json_set_str(ex, "error", why);
        gt_json_set_str(ex, "finished_at", ts);
    }
    static const char *const owner[] = {"owner_pid", "owner_start", "child_pid", "child_start", NULL};
    for (size_t i = 0; owner[i]; i++)
        cJSON_DeleteItemFromObjectCaseSensitive(ex, owner[i]);
    char *text = gt_json_print(ex);
    gt_error e = {0};
    /* the revision we read: if the runner (or another reaper) wrote since, it is alive */
    if (gt_store_put(store, "executions", it->id, text, it->rev, NULL, &e) == GT_OK) {
        handled = true;
        if (retry) {
            const char *pool = str(ex, "pool");
            char *queue = gt_xasprintf("exec.%s.%s", cluster_id, pool ? pool : "default");
            char *msg = gt_execution_message(it->id, attempt + 1);
            e = (gt_error){0};
            /* stored before announced: if this fails the next pass cannot see it as
             * running, so say so loudly; the execution waits "queued" in the store */
            if (gt_bus_declare_work_queue(bus, queue, &e) != GT_OK ||
                gt_bus_publish(bus, "", queue, msg, strlen(msg), true, &e) != GT_OK)
                gt_errorlog("execution %s: queued for attempt %lld but not published: %s", it->id,
                            (long long)(attempt + 1), e.message);
            else
                gt_warn("execution %s: %s; retrying as attempt %lld", it->id, why,
                        (long long)(attempt + 1));
            free(msg);
            free(queue);
        } else {
            gt_warn("execution %s lost: %s", it->id, why);
        }
    }
    free(text);
    free(why);
    free(svc_body);
    cJSON_Delete(ex);
    return handled;
}

typedef struct reap_ctx {
    gt_store *store;
    gt_bus *bus;
    const char *cluster_id;
    const char *runner;     /* the dead runner */
    const char *last;       /* its last heartbeat, for the reason */
    int handled;
} reap_ctx;

/* Reaps one running execution if it belongs to the dead runner. */
static bool reap_one(void *arg, const gt_store_item *it)
{
    reap_ctx *c = arg;
    cJSON *ex = cJSON_Parse(it->body);
    const char *owner = str(ex, "runner");
    bool mine = owner && strcmp(owner, c->runner) == 0;
    cJSON_Delete(ex);
    if (mine && reap_execution(c->store, c->bus, c->cluster_id, it, c->runner, c->last))
        c->handled++;
    return true;
}

int gt_reaper_pass(gt_store *store, gt_bus *bus, const char *cluster_id, int expiry,
                   int64_t now_ms)
{
    int handled = 0;
    gt_store_page runners = {0};
    if (gt_store_query(store, "runners", NULL, NULL, NULL, 10000, &runners, NULL) != GT_OK)
        return 0;
    for (size_t i = 0; i < runners.n; i++) {
        cJSON *r = cJSON_Parse(runners.items[i].body);
        const char *state = str(r, "state");
        int64_t beat = num(r, "last_heartbeat_ms", 0), every = num(r, "heartbeat_interval_ms", 5000);
        bool dead = state && strcmp(state, "dead") != 0 && now_ms - beat > expiry * every;
        if (dead) {
            const char *last = str(r, "last_heartbeat");
            char *lastc = gt_xstrdup(last ? last : "?");
            gt_warn("runner %s: no heartbeat for %lld ms", runners.items[i].id,
                    (long long)(now_ms - beat));
            reap_ctx rc = {store, bus, cluster_id, runners.items[i].id, lastc, 0};
            gt_store_each(store, "executions", "state", "running", reap_one, &rc, NULL);
            handled += rc.handled;
            free(lastc);
            gt_json_set_str(r, "state", "dead");
            char *text = gt_json_print(r);
            gt_store_put(store, "runners", runners.items[i].id, text, runners.items[i].rev, NULL, NULL);
            free(text);
        }
        cJSON_Delete(r);
    }
    gt_store_page_clear(&runners);
    return handled;
}
