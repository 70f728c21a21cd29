#include "ha.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "log.h"
#include "presence.h"
#include "util.h"

/* Where the active controller says who it is, for standbys to name in their 503s. */
#define ACTIVE_COLL "cluster"
#define ACTIVE_ID "active-controller"

struct gt_ha {
    gt_ha_config c;
    gt_store *store;            /* the thread's own */
    pthread_t thread;
    bool started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool resign;                /* under mu */
    atomic_llong epoch;         /* 0: standby */
    atomic_llong renewed_ms;    /* monotonic, when the last successful renewal began */
    char active[256];           /* under mu */
    int64_t recorded_epoch;     /* the last presence record (thread only): its epoch, */
    int64_t recorded_ms;        /* and when (monotonic) */
};

/* This controller's entry in "controllers"; the active one's also as cluster/active. */
static void record(gt_ha *ha, const char *role, int64_t epoch)
{
    /* a standby asks for the lease twice a second; its record needs a write only when
     * its role changes, or as often as the active one renews */
    int64_t now = gt_mono_ms();
    if (epoch == ha->recorded_epoch && strcmp(role, "stopped") != 0 &&
        now - ha->recorded_ms < ha->c.ttl_ms / 3)
        return;
    ha->recorded_epoch = epoch;
    ha->recorded_ms = now;
    gt_presence p = {GT_HA_COLLECTION, ha->c.node, ha->c.address, role, epoch, ha->c.ttl_ms,
                     GT_HA_LEASE};
    gt_presence_record(ha->store, &p, epoch > 0 ? ACTIVE_COLL : NULL, ACTIVE_ID);
}

/* A standby learns where the active controller is. */
static void read_active(gt_ha *ha)
{
    char *body = NULL;
    char addr[256] = "";
    if (gt_store_get(ha->store, ACTIVE_COLL, ACTIVE_ID, &body, NULL, NULL) == GT_OK) {
        cJSON *d = cJSON_Parse(body);
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(d, "address");
        const cJSON *n = cJSON_GetObjectItemCaseSensitive(d, "node");
        if (cJSON_IsString(a) && cJSON_IsString(n) && strcmp(n->valuestring, ha->c.node) != 0)
            snprintf(addr, sizeof addr, "%s", a->valuestring);
        cJSON_Delete(d);
        free(body);
    }
    pthread_mutex_lock(&ha->mu);
    memcpy(ha->active, addr, sizeof addr);
    pthread_mutex_unlock(&ha->mu);
}

/* One round: renew or take the lease, or stay standby. */
static void round_once(gt_ha *ha)
{
    int64_t began = gt_mono_ms(), epoch = 0;
    gt_error e = {0};
    gt_err rc = gt_store_lease_acquire(ha->store, GT_HA_LEASE, ha->c.node, ha->c.ttl_ms, &epoch,
                                       &e);
    int64_t was = atomic_load(&ha->epoch);
    if (rc == GT_OK) {
        atomic_store(&ha->renewed_ms, began);
        atomic_store(&ha->epoch, epoch);
        if (was != epoch)
            gt_info("ha: active (lease %s, epoch %lld)", GT_HA_LEASE, (long long)epoch);
        pthread_mutex_lock(&ha->mu);
        snprintf(ha->active, sizeof ha->active, "%s", ha->c.address);
        pthread_mutex_unlock(&ha->mu);
        record(ha, "active", epoch);
    } else if (rc == GT_ECONFLICT) {
        atomic_store(&ha->epoch, 0);
        if (was != 0)
            gt_warn("ha: standby: another controller holds the lease (%s)", e.message);
        read_active(ha);
        record(ha, "standby", 0);
    } else {
        /* the store does not answer: keep the state; gt_ha_is_active stops serving once
         * the last renewal is too old to still hold */
        gt_warn("ha: the store: %s", e.message);
    }
}

static void *loop(void *arg)
{
    gt_ha *ha = arg;
    pthread_mutex_lock(&ha->mu);
    while (!ha->resign) {
        /* the active renews three times a lease; a standby asks more often (at least
         * twice a second), so it takes over soon after the lease is free */
        bool on = atomic_load(&ha->epoch) > 0;
        int64_t every = on ? ha->c.ttl_ms / 3 : ha->c.ttl_ms / 6 < 500 ? ha->c.ttl_ms / 6 : 500;
        gt_cond_wait_ms(&ha->cv, &ha->mu, every > 100 ? every : 100);
        if (ha->resign)
            break;
        pthread_mutex_unlock(&ha->mu);
        round_once(ha);
        pthread_mutex_lock(&ha->mu);
    }
    pthread_mutex_unlock(&ha->mu);
    /* give the lease up now: a standby takes over at its next round, not after the ttl */
    if (atomic_exchange(&ha->epoch, 0) > 0) {
        gt_error e = {0};
        if (gt_store_lease_release(ha->store, GT_HA_LEASE, ha->c.node, &e) != GT_OK)
            gt_warn("ha: releasing the lease: %s", e.message);
        else
            gt_info("ha: resigned: the lease is free for a standby");
    }
    record(ha, "stopped", 0);
    return NULL;
}

gt_ha *gt_ha_new(const gt_ha_config *cfg, gt_error *err)
{
    gt_ha *ha = gt_xcalloc(1, sizeof *ha);
    ha->c = *cfg;
    ha->c.node = gt_xstrdup(cfg->node);
    ha->c.address = gt_xstrdup(cfg->address);
    ha->recorded_epoch = -1;
    pthread_mutex_init(&ha->mu, NULL);
    pthread_cond_init(&ha->cv, NULL);
    if (cfg->open_store(cfg->open_store_arg, &ha->store, err) != GT_OK)
        goto fail;
    round_once(ha);
    int pe = pthread_create(&ha->thread, NULL, loop, ha);
    if (pe != 0) {
        gt_error_set(err, GT_EUNAVAIL, "ha: starting its thread: %s", strerror(pe));
        goto fail;
    }
    ha->started = true;
    return ha;
fail:
    gt_ha_free(&ha);
    return NULL;
}

bool gt_ha_is_active(gt_ha *ha, char *active, size_t n)
{
    bool on = atomic_load(&ha->epoch) > 0 &&
              gt_mono_ms() - atomic_load(&ha->renewed_ms) < ha->c.ttl_ms * 5 / 6;
    if (active && n) {
        pthread_mutex_lock(&ha->mu);
        snprintf(active, n, "%s", ha->active);
        pthread_mutex_unlock(&ha->mu);
    }
    return on;
}

int64_t gt_ha_epoch(gt_ha *ha)
{
    return atomic_load(&ha->epoch);
}

void gt_ha_resign(gt_ha *ha)
{
    if (ha == NULL)
        return;
    pthread_mutex_lock(&ha->mu);
    bool was = ha->resign;
    ha->resign = true;
    pthread_cond_broadcast(&ha->cv);
    pthread_mutex_unlock(&ha->mu);
    if (!was && ha->started)
        pthread_join(ha->thread, NULL);
    ha->started = false;
}

void gt_ha_free(gt_ha **pha)
{
    if (pha == NULL || *pha == NULL)
        return;
    gt_ha *ha = *pha;
    gt_ha_resign(ha);
    gt_store_free(&ha->store);
    pthread_cond_destroy(&ha->cv);
    pthread_mutex_destroy(&ha->mu);
    free((char *)ha->c.node);
    free((char *)ha->c.address);
    free(ha);
    *pha = NULL;
}
