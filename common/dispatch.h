/* Dispatch: announcing a queued execution to the runners of its pool, on the work queue
 * exec.<cluster_id>.<pool>, as {"id", "attempt"}. Durable by construction: an execution
 * is stored as "queued" (with "dispatched_at_ms") before it is announced, and the
 * dispatch sweeper announces again whatever stayed queued too long (a lost message, a
 * broker that was away, a controller killed between the two steps); (id, attempt) makes
 * a second message harmless. */
#ifndef GT_DISPATCH_H
#define GT_DISPATCH_H

#include <cjson/cJSON.h>
#include <stdint.h>

#include "bus.h"
#include "error.h"
#include "store.h"

/* Publishes ex's message (confirmed). *declared (may be NULL) remembers the last queue
 * this bus declared, so a queue is declared once per connection; the caller frees it. */
gt_err gt_dispatch_publish(gt_bus *bus, const char *cluster_id, const cJSON *ex,
                           char **declared, gt_error *err);

/* One pass of the sweeper: every queued execution last announced more than
 * after_ms * 2^min(dispatches, 4) ago is published again and its "dispatched_at_ms" and
 * "dispatches" updated (fenced by fence, which may be NULL). Returns how many were
 * announced; stops at the first publish that fails (the broker is away). */
int gt_dispatch_sweep(gt_store *store, gt_bus *bus, const char *cluster_id,
                      const gt_store_fence *fence, int64_t now_ms, int64_t after_ms);

#endif
