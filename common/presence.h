/* Presence records: a singleton-duty process (an HA controller, a scheduler) says in the
 * store what it is — its role, the lease epoch it holds, when it last renewed — so that
 * `gantry inspect cluster health` can list every one of them. The active holder's record
 * is fenced by its lease, so a deposed one cannot claim to be active. */
#ifndef GT_PRESENCE_H
#define GT_PRESENCE_H

#include <stdint.h>

#include "store.h"

typedef struct gt_presence {
    const char *coll;        /* "controllers", "schedulers" */
    const char *id;          /* the holder's name */
    const char *address;     /* host:port clients use, or NULL */
    const char *role;        /* active, standby, stopped */
    int64_t epoch;           /* held (active), else 0 */
    int64_t lease_ttl_ms;
    const char *lease;       /* the lease name; with epoch > 0 the write is fenced by it */
} gt_presence;

/* Stores p as coll/id (unconditional; fenced when active). Also as coll2/id2 when
 * also_id is set (the active controller's well-known record). Best effort: a failure is
 * logged at debug level and returned. */
gt_err gt_presence_record(gt_store *s, const gt_presence *p, const char *also_coll,
                          const char *also_id);

#endif
