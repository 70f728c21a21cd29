/* Active/standby controllers ([server] ha_enabled): every controller competes for the
 * store lease "controller"; its holder is the active one and serves the API, the others
 * answer 503 naming it, so a load balancer that checks /health/status sends them
 * nothing. A thread of its own renews or tries the lease every ttl/3 and records this
 * controller in the "controllers" collection (role, epoch, last renewal) for
 * `gantry inspect cluster health`. */
#ifndef GT_CONTROLLER_HA_H
#define GT_CONTROLLER_HA_H

#include <stdbool.h>
#include <stdint.h>

#include "error.h"
#include "store.h"

#define GT_HA_LEASE "controller"
#define GT_HA_COLLECTION "controllers"

typedef struct gt_ha gt_ha;

typedef struct gt_ha_config {
    const char *node;          /* the lease holder: unique per controller */
    const char *address;       /* host:port clients reach this controller at */
    int64_t ttl_ms;            /* the lease */
    int (*open_store)(void *arg, gt_store **store, gt_error *err);
    void *open_store_arg;
} gt_ha_config;

/* Starts competing; the first try happens before this returns, so a lone controller is
 * active at once. cfg's strings are copied. */
gt_ha *gt_ha_new(const gt_ha_config *cfg, gt_error *err) __attribute__((warn_unused_result));

/* True while this controller holds the lease, with a renewal younger than the lease
 * (so a controller cut off from the store stops serving before another takes over).
 * active, when not NULL, gets the active controller's address ("" when none is known),
 * of at most n bytes. */
bool gt_ha_is_active(gt_ha *ha, char *active, size_t n);

/* The epoch of the lease this controller holds (0 when standby). */
int64_t gt_ha_epoch(gt_ha *ha);

/* Gives the lease up at once (SIGTERM: a standby takes over without waiting for it
 * to expire) and stops competing. Idempotent. */
void gt_ha_resign(gt_ha *ha);

/* Resigns, stops the thread, frees; accepts NULL. */
void gt_ha_free(gt_ha **ha);

#endif
