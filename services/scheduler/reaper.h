/* The reaper: finds runners that stopped heartbeating and ends or retries the
 * executions they were running, so none stays "running" forever. */
#ifndef GT_REAPER_H
#define GT_REAPER_H

#include <stdint.h>

#include "bus.h"
#include "store.h"

/* One pass. A runner is dead when its last heartbeat is older than `expiry` times its
 * heartbeat interval; each of its running executions is queued again as the next
 * attempt (published to exec.<cluster_id>.<pool>) while the service's retries allow,
 * else finished as "lost" with the reason. Returns how many executions it handled. */
int gt_reaper_pass(gt_store *store, gt_bus *bus, const char *cluster_id, int expiry,
                   int64_t now_ms);

#endif
