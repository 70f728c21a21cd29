/* Sessions, API keys and counters in Redis (hiredis 0.14, synchronous calls with
 * timeouts: call it from worker threads, never from an event loop). The master is
 * found through Sentinel ([sessions] sentinels + master_name) and found again after
 * a failover; a command that fails on a dead or demoted master is retried once on
 * the new one. A single [sessions] host works when no Sentinel is configured.
 * A gt_sessions is not thread-safe: one per thread. */
#ifndef GT_SESSIONS_H
#define GT_SESSIONS_H

#include <stdint.h>

#include "error.h"
#include "util.h"

typedef struct gt_sessions gt_sessions;

typedef struct gt_sessions_config {
    char *const *sentinels;   /* "host:port" entries, NULL-terminated; NULL or empty: use host */
    const char *master_name;  /* Sentinel's name for the master */
    const char *host;         /* "host:port" of a single Redis when no Sentinel is set */
    const char *password;     /* NULL: none; never logged */
    int64_t db;
    int64_t timeout_ms;       /* connect and command timeout; 0 = 2000 */
    const char *prefix;       /* prepended to every key, e.g. "gantry:cluster_1:" */
} gt_sessions_config;

/* Connects (discovering the master). The config is copied. GT_EUNAVAIL when no
 * Sentinel or Redis answers, naming what was tried. */
gt_sessions *gt_sessions_new(const gt_sessions_config *cfg, gt_error *err)
    __attribute__((warn_unused_result));
void gt_sessions_free(gt_sessions **s);

/* SET key value PX ttl_ms (ttl_ms 0: no expiry). */
gt_err gt_sessions_set(gt_sessions *s, const char *key, const char *value, int64_t ttl_ms,
                       gt_error *err);
/* GET: *value is a new string; GT_ENOTFOUND when absent or expired. */
gt_err gt_sessions_get(gt_sessions *s, const char *key, char **value, gt_error *err);
/* GET and, when present, PEXPIRE key ttl_ms in one round trip (sliding sessions). */
gt_err gt_sessions_get_touch(gt_sessions *s, const char *key, int64_t ttl_ms, char **value,
                             gt_error *err);
/* DEL; deleting an absent key is GT_OK. */
gt_err gt_sessions_del(gt_sessions *s, const char *key, gt_error *err);
/* INCR key, setting PEXPIRE ttl_ms when the key is new; *value is the new count. */
gt_err gt_sessions_incr(gt_sessions *s, const char *key, int64_t ttl_ms, int64_t *value,
                        gt_error *err);
/* Sets: SADD (with PEXPIRE ttl_ms when ttl_ms > 0), SMEMBERS, SREM. */
gt_err gt_sessions_sadd(gt_sessions *s, const char *key, const char *member, int64_t ttl_ms,
                        gt_error *err);
gt_err gt_sessions_smembers(gt_sessions *s, const char *key, gt_strv *members, gt_error *err);
gt_err gt_sessions_srem(gt_sessions *s, const char *key, const char *member, gt_error *err);
/* PING the current master. */
gt_err gt_sessions_ping(gt_sessions *s, gt_error *err);
/* "host:port" of the master in use (borrowed), for health and logs. */
const char *gt_sessions_master(const gt_sessions *s);

#endif
