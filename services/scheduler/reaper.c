#include "reaper.h"

#include <stdlib.h>
#include <string.h>

#include "dispatch.h"
#include "json.h"
#include "lifecycle.h"
#include "log.h"
#include "model/model.h"
#include "util.h"

/* Kept for a year: a dead runner's lease is never given back, so it stays fenced out. */
#define DEAD_LEASE_MS ((int64_t)365 * 24 * 3600 * 1000)

static int64_t num(const cJSON *o, const char *k, int64_t dflt)
{
    return gt_json_member_i64(o, k, dflt);
}

static const char *str(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

typedef struct reap_ctx {
    const gt_reaper_config *c;
    const char *runner;     /* the dead runner */
    const char *why;
    int64_t now_ms;
    int handled;
    int failed;             /* not moved: the next pass tries again */
} reap_ctx;

/* Retries or ends one running execution of the dead runner. */
static bool reap_one(void *arg, const gt_store_item *it)
{
    reap_ctx *x = arg;
    const gt_reaper_config *c = x->c;
    cJSON *ex = cJSON_Parse(it->body);
    const char *owner = str(ex, "runner");
    if (ex == NULL || owner == NULL || strcmp(owner, x->runner) != 0 ||
        !cJSON_IsString(cJSON_GetObjectItemCaseSensitive(ex, "id"))) {
        cJSON_Delete(ex);
        return true;
    }
    int64_t retries = 0, attempt = num(ex, "attempt", 1);
    char *svc_body = NULL;
    const char *service = str(ex, "service");
    if (service && gt_store_get(c->store, "services", service, &svc_body, NULL, NULL) == GT_OK) {
        cJSON *svc = cJSON_Parse(svc_body);
        retries = num(svc, "retries", 0);
        cJSON_Delete(svc);
    }
    free(svc_body);
    bool retry = attempt <= retries;
    const char *to = retry ? "queued" : "lost";
    if (retry) {
        gt_json_set_num(ex, "attempt", (double)(attempt + 1));
        gt_json_set(ex, "runner", cJSON_CreateNull());
        gt_json_set_str(ex, "retry_reason", x->why);
        gt_json_set_num(ex, "dispatched_at_ms", (double)x->now_ms);
        cJSON_DeleteItemFromObjectCaseSensitive(ex, "dispatches");
    } else {
        gt_json_set_str(ex, "error", x->why);
    }
    static const char *const owned[] = {"owner_pid", "owner_start", "child_pid", "child_start",
                                        NULL};
    for (size_t i = 0; owned[i]; i++)
        cJSON_DeleteItemFromObjectCaseSensitive(ex, owned[i]);
    int64_t rev = it->rev;
    gt_error e = {0};
    /* on the revision read: if anything wrote since, the next pass looks again */
    if (gt_lifecycle_store(c->store, ex, &rev, to, GT_ACTOR_REAPER, c->fence, &e) != GT_OK) {
        gt_warn("execution %s: reaping: %s", it->id, e.message);
        x->failed++;
    } else if (retry) {
        x->handled++;
        e = (gt_error){0};
        if (c->bus == NULL || gt_dispatch_publish(c->bus, c->cluster_id, ex, NULL, &e) != GT_OK)
            gt_warn("execution %s: queued for attempt %lld; not announced yet (%s): the "
                    "dispatch sweeper will", it->id, (long long)(attempt + 1),
                    c->bus ? e.message : "no broker");
        else
            gt_warn("execution %s: %s; retrying as attempt %lld", it->id, x->why,
                    (long long)(attempt + 1));
    } else {
        x->handled++;
        gt_warn("execution %s lost: %s", it->id, x->why);
    }
    cJSON_Delete(ex);
    return true;
}

static bool put_runner(const gt_reaper_config *c, const gt_store_item *it, cJSON *doc)
{
    char *text = gt_json_print(doc);
    gt_error e = {0};
    bool ok = gt_store_put_fenced(c->store, "runners", it->id, text, it->rev, NULL, c->fence,
                                  &e) == GT_OK;
    if (!ok)
        gt_warn("runner %s: %s", it->id, e.message);
    free(text);
    return ok;
}

int gt_reaper_pass(const gt_reaper_config *c, int64_t now_ms)
{
    int handled = 0;
    gt_store_page runners = {0};
    if (gt_store_query(c->store, "runners", NULL, NULL, NULL, 10000, &runners, NULL) != GT_OK)
        return 0;
    for (size_t i = 0; i < runners.n; i++) {
        const gt_store_item *it = &runners.items[i];
        cJSON *r = cJSON_Parse(it->body);
        const char *state = str(r, "state");
        if (r == NULL || state == NULL || strcmp(state, "stopped") == 0 ||
            cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(r, "reaped"))) {
            cJSON_Delete(r);
            continue;
        }
        if (strcmp(state, "dead") != 0) {
            /* taking its lease succeeds only once the runner's has expired */
            char *lease = gt_xasprintf("runner:%s", it->id);
            int64_t epoch = 0;
            gt_error e = {0};
            gt_err rc = gt_store_lease_acquire(c->store, lease, GT_REAPER_HOLDER, DEAD_LEASE_MS,
                                               &epoch, &e);
            free(lease);
            if (rc == GT_OK) {
                gt_warn("runner %s: its lease expired (last heartbeat %s); declared dead", it->id,
                        str(r, "last_heartbeat") ? str(r, "last_heartbeat") : "?");
                gt_json_set_str(r, "state", "dead");
                gt_json_set_num(r, "dead_at_ms", (double)now_ms);
                /* with no grace period its work moves at once: one more pass, which
                 * reads the runner as dead (once: it is dead from now on) */
                if (put_runner(c, it, r) && c->grace_ms <= 0) {
                    cJSON_Delete(r);
                    gt_store_page_clear(&runners);
                    return handled + gt_reaper_pass(c, now_ms);
                }
            }
            cJSON_Delete(r);
            continue;
        }
        if (now_ms - num(r, "dead_at_ms", 0) < c->grace_ms) {
            cJSON_Delete(r);
            continue;
        }
        const char *last = str(r, "last_heartbeat");
        char *why = gt_xasprintf("runner %s stopped heartbeating (last at %s)", it->id,
                                 last ? last : "?");
        reap_ctx x = {c, it->id, why, now_ms, 0, 0};
        gt_error e = {0};
        if (gt_store_each(c->store, GT_EXECUTIONS, "state", "running", reap_one, &x, &e) == GT_OK &&
            x.failed == 0) {
            gt_json_set_bool(r, "reaped", true);
            put_runner(c, it, r);
        } else if (x.failed == 0) {
            gt_warn("runner %s: reading its executions: %s", it->id, e.message);
        }
        handled += x.handled;
        free(why);
        cJSON_Delete(r);
    }
    gt_store_page_clear(&runners);
    return handled;
}
