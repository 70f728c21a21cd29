#include "presence.h"

#include <stdlib.h>

#include "json.h"
#include "log.h"
#include "util.h"

gt_err gt_presence_record(gt_store *s, const gt_presence *p, const char *also_coll,
                          const char *also_id)
{
    cJSON *d = cJSON_CreateObject();
    char ts[40];
    int64_t now = gt_now_ms();
    gt_format_time(now, ts, sizeof ts);
    gt_json_set_str(d, "node", p->id);
    if (p->address)
        gt_json_set_str(d, "address", p->address);
    gt_json_set_str(d, "role", p->role);
    gt_json_set_num(d, "epoch", (double)(p->epoch > 0 ? p->epoch : 0));
    gt_json_set_str(d, "renewed_at", ts);
    gt_json_set_num(d, "renewed_ms", (double)now);
    gt_json_set_num(d, "lease_ttl_ms", (double)p->lease_ttl_ms);
    char *body = gt_json_print(d);
    cJSON_Delete(d);
    gt_store_fence f = {p->lease, p->id, p->epoch};
    const gt_store_fence *fence = p->epoch > 0 && p->lease ? &f : NULL;
    gt_error e = {0};
    gt_err rc = gt_store_put_fenced(s, p->coll, p->id, body, GT_REV_ANY, NULL, fence, &e);
    if (rc == GT_OK && also_coll && also_id)
        rc = gt_store_put_fenced(s, also_coll, also_id, body, GT_REV_ANY, NULL, fence, &e);
    if (rc != GT_OK)
        gt_debug("presence %s/%s: %s", p->coll, p->id, e.message);
    free(body);
    return rc;
}
