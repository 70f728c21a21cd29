#include "lifecycle.h"

#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "log.h"
#include "model/model.h"
#include "output.h"
#include "util.h"

enum { S_NEW, S_ACCEPTED, S_QUEUED, S_RUNNING, S_SUCCEEDED, S_FAILED, S_TIMED_OUT, S_CANCELED,
       S_LOST, S_COUNT };

static const char *const state_names[S_COUNT] = {
    NULL, "accepted", "queued", "running", "succeeded", "failed", "timed_out", "canceled", "lost",
};

#define W (1u << GT_ACTOR_WORKER)
#define C (1u << GT_ACTOR_CLIENT)
#define X (1u << GT_ACTOR_CANCEL)
#define R (1u << GT_ACTOR_REAPER)
#define D (1u << GT_ACTOR_DISPATCH)

/* who may move from the row's state to the column's: one bit per actor. Terminal rows
 * are empty: an ended execution never changes again. */
static const unsigned table[S_COUNT][S_COUNT] = {
    /*             new accepted queued running succeeded failed timed_out canceled lost */
    [S_NEW]      = {0, C,       C,     0,      0,        0,     0,        0,       0},
    /* accepted: kept by one process; a dead owner's is taken over (R) or failed/lost */
    [S_ACCEPTED] = {0, R | W,   0,     W,      0,        C | W, 0,        X,       R},
    /* queued: waits for a runner; the sweeper may announce it again */
    [S_QUEUED]   = {0, 0,       D,     W,      0,        C | W, 0,        X,       0},
    /* running: updates (the child's pid) and the end come from its worker; the reaper
     * retries (queued, next attempt) or ends (lost) the attempt of a dead runner */
    [S_RUNNING]  = {0, 0,       R,     W,      W,        W,     W,        W,       R},
};

#undef W
#undef C
#undef X
#undef R
#undef D

static int state_index(const char *s)
{
    if (s == NULL)
        return S_NEW;
    for (int i = 1; i < S_COUNT; i++)
        if (strcmp(state_names[i], s) == 0)
            return i;
    return -1;
}

const char *gt_actor_name(gt_actor who)
{
    static const char *const names[] = {"client", "worker", "cancel", "reaper", "dispatch"};
    return (unsigned)who < sizeof names / sizeof names[0] ? names[who] : "?";
}

bool gt_lifecycle_allowed(const char *from, const char *to, gt_actor who)
{
    int f = state_index(from), t = state_index(to);
    if (f < 0 || t <= 0)
        return false;
    return (table[f][t] >> who) & 1u;
}

static gt_err put(gt_store *s, const cJSON *ex, const char *id, int64_t *rev,
                  const gt_store_fence *fence, gt_error *err)
{
    char *text = gt_json_print(ex);
    int64_t new_rev = 0; /* *rev stays what was read until a write succeeded */
    gt_err rc = gt_store_put_fenced(s, GT_EXECUTIONS, id, text, *rev, &new_rev, fence, err);
    if (rc == GT_OK)
        *rev = new_rev;
    free(text);
    return rc;
}

/* The record of last resort: the state, times and reason, without the output. */
static cJSON *small_record(const cJSON *ex, const char *why)
{
    static const char *const drop[] = {"stdout", "stderr", "output", NULL};
    cJSON *small = cJSON_Duplicate(ex, 1);
    for (size_t i = 0; drop[i]; i++)
        cJSON_DeleteItemFromObjectCaseSensitive(small, drop[i]);
    gt_json_set_bool(small, "stdout_truncated", true);
    gt_json_set_bool(small, "stderr_truncated", true);
    const cJSON *old = cJSON_GetObjectItemCaseSensitive(ex, "error");
    /* bounded, and cut on a character boundary: it must fit whatever failed before */
    const char *o = cJSON_IsString(old) ? old->valuestring : "";
    int keep = (int)gt_utf8_cut(o, strlen(o) < 2000 ? strlen(o) : 2000);
    char *msg = gt_xasprintf("%.*s%sthe output could not be stored: %.*s", keep, o,
                             o[0] ? "; " : "", (int)gt_utf8_cut(why, strlen(why) < 300 ? strlen(why) : 300),
                             why);
    gt_json_set_str(small, "error", msg);
    free(msg);
    return small;
}

gt_err gt_lifecycle_store(gt_store *s, cJSON *ex, int64_t *rev, const char *to, gt_actor who,
                          const gt_store_fence *fence, gt_error *err)
{
    const cJSON *idv = cJSON_GetObjectItemCaseSensitive(ex, "id");
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(ex, "state");
    if (!cJSON_IsString(idv))
        return gt_error_set(err, GT_EINVAL, "execution: no id");
    const char *id = idv->valuestring;
    char *from = *rev == GT_REV_NONE ? NULL : gt_xstrdup(cJSON_IsString(st) ? st->valuestring : "?");
    gt_err rc;
    if (!gt_lifecycle_allowed(from, to, who)) {
        gt_warn("execution %s: %s may not move it from %s to %s; refused", id, gt_actor_name(who),
                from ? from : "(new)", to);
        rc = gt_error_set(err, GT_EPERM, "execution %s: cannot move from %s to %s", id,
                          from ? from : "(new)", to);
        goto done;
    }
    gt_json_set_str(ex, "state", to);
    /* text from outside (a run's output, a tool's error) is stored as valid UTF-8 */
    static const char *const texts[] = {"stdout", "stderr", "error", NULL};
    for (size_t i = 0; texts[i]; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(ex, texts[i]);
        if (cJSON_IsString(v)) {
            char *clean = gt_utf8_clean(v->valuestring, strlen(v->valuestring), NULL);
            gt_json_set_str(ex, texts[i], clean);
            free(clean);
        }
    }
    bool terminal = gt_execution_state_terminal(to);
    if (terminal && !cJSON_IsString(cJSON_GetObjectItemCaseSensitive(ex, "finished_at"))) {
        char ts[40];
        gt_format_time(gt_now_ms(), ts, sizeof ts);
        gt_json_set_str(ex, "finished_at", ts);
    }
    gt_error e = {0};
    /* the stored record may have its output apart; ex keeps it for the caller */
    cJSON *rec = terminal ? cJSON_Duplicate(ex, 1) : ex;
    rc = terminal ? gt_output_put(s, rec, fence, &e) : GT_OK;
    if (rc == GT_OK)
        rc = put(s, rec, id, rev, fence, &e);
    if (rec != ex)
        cJSON_Delete(rec);
    if (terminal && rc != GT_OK && rc != GT_ECONFLICT) {
        /* the outcome matters more than its output: store it without */
        gt_warn("execution %s: storing the %s record: %s; storing it without its output", id, to,
                e.message);
        cJSON *small = small_record(ex, e.message);
        e = (gt_error){0};
        if ((rc = put(s, small, id, rev, fence, &e)) == GT_OK)
            gt_json_set(ex, "error", cJSON_DetachItemFromObjectCaseSensitive(small, "error"));
        cJSON_Delete(small);
    }
    if (rc != GT_OK) {
        gt_error_set(err, rc, "recording execution %s as %s: %s", id, to, e.message);
        if (from)
            gt_json_set_str(ex, "state", from);
    }
done:
    free(from);
    return rc;
}
