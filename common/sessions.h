/* Sessions, API keys and counters in Redis (hiredis 0.14, synchronous calls with
 * timeouts: call it from worker threads, never from an event loop). The master is
 * found through Sentinel ([sessions] sentinels + master_name) and found again after
 * a failover; a command that fails on a dead or demoted master is retried once on
 * the new one. A single [sessions] host works when no Sentinel is configured.
 * A gt_sessions is not thread-safe: one per thread. */
#ifndef GT_SESSIONS_H
#define GT_SESSIONS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "util.h"

typedef struct gt_sessions gt_sessions;

#define GT_SESSIONS_KEY_LEN 32

typedef struct gt_sessions_config {
    char *const *sentinels;   /* "host:port" entries, NULL-terminated; NULL or empty: use host */
    const char *master_name;  /* Sentinel's name for the master */
    const char *host;         /* "host:port" of a single Redis when no Sentinel is set */
    const char *username;     /* Redis ACL user (AUTH username password); NULL: AUTH password */
    const char *password;     /* NULL: no AUTH; never logged */
    const char *sentinel_username; /* AUTH to each sentinel, when they require it */
    const char *sentinel_password; /* NULL: the sentinels are asked without AUTH */
    int64_t db;
    int64_t timeout_ms;       /* connect and command timeout; 0 = 2000 */
    const char *prefix;       /* prepended to every key, e.g. "gantry:cluster_1:" */
    /* The key that signs session records (gt_sessions_seal, gt_sessions_open), copied;
     * without it (signing_key_set false) records can be neither sealed nor opened. */
    bool signing_key_set;
    unsigned char signing_key[GT_SESSIONS_KEY_LEN];
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
/* PEXPIRE key ttl_ms (> 0); GT_ENOTFOUND when the key is gone. */
gt_err gt_sessions_expire(gt_sessions *s, const char *key, int64_t ttl_ms, gt_error *err);
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

/* --- Session records ------------------------------------------------------------------
 *
 * What gantry-tokend stores under "session:<SHA-256 hex of the token>" and controllers
 * read: a JSON object {user, role, kind, must_change_password, expires_at, mac}. mac is
 * HMAC-SHA256, under the cluster's signing key, over the token hash and every other field,
 * so someone who can write Redis but does not hold the key can neither make a session
 * nor change one (a role, an expiry) nor move one to another token. */
typedef struct gt_session_record {
    char user[129];           /* a user name (gt_name_valid) */
    char role[16];            /* admin | operator | viewer */
    char kind[16];            /* login | apikey */
    bool must_change_password;
    int64_t expires_at;       /* ms since the epoch, when it was issued */
} gt_session_record;

/* The signing key for cluster_id from a key file's bytes (at least 32):
 * HKDF-SHA256(material, salt "gantry sessions", info "session-mac v1 <cluster_id>"). */
gt_err gt_sessions_derive_key(const void *material, size_t len, const char *cluster_id,
                              unsigned char key[GT_SESSIONS_KEY_LEN], gt_error *err);

/* The stored text of r for the token whose hash (64 lowercase hex digits) is token_hash;
 * *text is new (caller frees). GT_EINVAL without a signing key or for fields that do not
 * fit gt_session_record. */
gt_err gt_sessions_seal(const gt_sessions *s, const char *token_hash, const gt_session_record *r,
                        char **text, gt_error *err);

/* Parses a stored record into *r and checks it belongs to token_hash. GT_ECRYPTO when its
 * MAC is missing or does not verify (forged, altered, moved, or signed with another key):
 * r then holds the unverified fields, for a log line only. GT_EINVAL when it is not a
 * record (r is then zeroed). */
gt_err gt_sessions_open(const gt_sessions *s, const char *token_hash, const char *text,
                        gt_session_record *r, gt_error *err);

#endif
