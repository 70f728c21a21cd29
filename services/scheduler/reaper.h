/* The reaper: ends or retries the executions of runners that are gone, so none stays
 * "running" forever, and never while their runner may still run them. A runner is gone
 * when the reaper can take its lease ("runner:<id>", which the runner renews every
 * heartbeat): it expired, so the runner was fenced out (it kills its runs at two missed
 * renewals) or died (its runs died with it). The reaper keeps that lease, so a late
 * writer stays fenced out, marks the runner dead, and (after grace_ms; the scheduler
 * uses none, since a runner's watchdog kills its runs a heartbeat before its lease can
 * expire) queues each of its running executions again as the next attempt while the
 * service's retries allow, else ends it as "lost". */
#ifndef GT_REAPER_H
#define GT_REAPER_H

#include <stdint.h>

#include "bus.h"
#include "store.h"

/* The holder name the reaper takes dead runners' leases under. */
#define GT_REAPER_HOLDER "reaper"

typedef struct gt_reaper_config {
    gt_store *store;
    gt_bus *bus;                 /* may be NULL: the dispatch sweeper announces retries */
    const char *cluster_id;
    const gt_store_fence *fence; /* the scheduler's lease: every write is fenced by it */
    int64_t grace_ms;            /* after a runner is found dead, before its work moves */
} gt_reaper_config;

/* One pass; returns how many executions it ended or queued again. */
int gt_reaper_pass(const gt_reaper_config *c, int64_t now_ms);

#endif
