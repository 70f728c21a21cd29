/* gantry-tokend's logic: the only writer of identities.
 *
 * Protocol: one JSON object per request, {"op": OP, ...}; unknown members are
 * rejected. Every request gets a reply:
 *   {"ok": true, ...}
 *   {"ok": false, "error": {"code": C, "message": M, "field": "$.member"?},
 *    "retry_after": SECONDS?}
 * C is invalid_argument | unauthenticated | forbidden | not_found | conflict |
 * throttled | locked | internal.
 *
 *   ping                                    -> {}
 *   login {username, password, source}      -> {token, user, role, expires_at,
 *                                               expires_at_ms, must_change_password}
 *   change_password {username, password, new_password, source?} -> {}
 *   logout {token_hash}                     -> {}
 *   create_user {username, role, password?} -> {user: {name, role, created_at}, password?}
 *   delete_user {username}                  -> {}
 *   reset_password {username, password?}    -> {password?}
 *   list_users                              -> {items: [{name, role,
 *                                               must_change_password, created_at}]}
 *   create_apikey {username, name?}         -> {api_key, expires_at, expires_at_ms, name?}
 *
 * Who may ask: only the controllers. Every request must carry the AMQP user_id of one of
 * [tokend] controller_users (RabbitMQ refuses a message whose user_id is not its
 * sender's login, and only the controllers' broker user may publish to the auth
 * exchange at all: bus.h, "Routes"); anything else is answered forbidden and logged at
 * WARN. Authorization of the end user (who may create users, reset passwords, ...) is
 * then the controller's job, and so is $.source, the address a login came from, which
 * the throttles count. Times are RFC 3339 strings, *_ms are milliseconds since the
 * epoch.
 *
 * Store: collection "users", id = name: {name, role, password_hash,
 * must_change_password, failed_logins, last_failure_ms, created_at, updated_at};
 * every update is a put under the revision it read.
 * Redis (keys below get the sessions prefix): "session:<sha256 hex of token>" ->
 * {user, role, kind, must_change_password, expires_at (ms)}; the set
 * "user-sessions:<user>" holds a user's session hashes, for revocation;
 * "fail:src:<source>" counts failed logins per source in a 15-minute window and
 * "fail:src-at:<source>" holds the time of the last one. Failed logins for names that
 * are not users are counted in "fail:user:<name>" / "fail:user-at:<name>" (30 days) and
 * throttled and locked exactly like a user's, so the answers never tell which names
 * exist. Session records are signed (sessions.h): see session_issue. */
#include "tokend.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "crypto.h"
#include "json.h"
#include "log.h"
#include "password.h"
#include "util.h"

#define USERS "users"
#define UNKNOWN_USER_TTL_MS (30LL * 24 * 3600 * 1000)
#define BAD_CREDENTIALS "invalid username or password"
#define LOCKED_MSG "account locked after 100 failed logins; an admin must reset it"

enum {
    MAX_FAILED = 100,            /* consecutive failures that lock an account */
    ACCOUNT_FREE = 3,            /* failures before the per-account delay starts */
    SOURCE_FREE = 20,            /* failures per source window before its delay */
    SOURCE_WINDOW_MS = 15 * 60 * 1000,

    BACKOFF_CAP_MS = 300 * 1000,
    PASSWORD_MIN = 8,            /* characters */
    PASSWORD_MAX = 1024,         /* bytes: beyond this it is not a password */
    SOURCE_MAX = 255,
    TEMP_PASSWORD_LEN = 16,
    UPDATE_TRIES = 8,            /* re-reads when another writer got in between */
};

struct gt_tokend {
    gt_store *store;
    gt_sessions *sessions;
    gt_strv controller_users;
    char *admin_password_file;
    int64_t token_ttl_ms;
    int64_t api_key_ttl_ms;
    int64_t (*clock_ms)(void *arg);
    void *clock_arg;
    char *dummy_hash;            /* what unknown users are verified against */
};

/* A reply's error, set once: the first failure is the one the caller hears about. */
typedef struct reply_err {
    const char *code;            /* NULL: no error */
    char field[128];
    char message[512];
    int64_t retry_after;         /* seconds; 0: none */
} reply_err;

typedef struct user {
    char *name;
    char *role;
    char *password_hash;
    bool must_change;
    int64_t failed_logins;
    int64_t last_failure_ms;
    char *created_at;
    char *updated_at;
    int64_t rev;                 /* GT_REV_NONE: not stored yet */
} user;

static int64_t now_ms(const gt_tokend *t)
{
    return t->clock_ms ? t->clock_ms(t->clock_arg) : gt_now_ms();
}

static void fmt_time(int64_t ms, char buf[40])
{
    gt_format_time(ms, buf, 40);
}

static void fail(reply_err *e, const char *code, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void fail(reply_err *e, const char *code, const char *field, const char *fmt, ...)
{
    if (e->code)
        return;
    e->code = code;
    snprintf(e->field, sizeof e->field, "%s", field ? field : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
}

/* Copies msg with every run of 32 or more hex digits replaced: session keys hold a
 * token's hash, and a lower layer may quote the key it failed on. */
static void redact(const char *msg, char *buf, size_t n)
{
    size_t o = 0;
    for (size_t i = 0; msg[i] && o + 1 < n;) {
        size_t run = 0;
        while (msg[i + run] && strchr("0123456789abcdefABCDEF", msg[i + run]))
            run++;
        if (run >= 32) {
            o += (size_t)snprintf(buf + o, n - o, "[redacted]");
            if (o >= n)
                o = n - 1;
            i += run;
        } else if (run > 0) {
            size_t k = run < n - 1 - o ? run : n - 1 - o;
            memcpy(buf + o, msg + i, k);
            o += k;
            i += run;
        } else {
            buf[o++] = msg[i++];
        }
    }
    buf[o] = '\0';
}

/* A failure of the store or Redis: logged in full (redacted), answered as internal. */
static void fail_internal(reply_err *e, const char *what, const gt_error *err)
{
    char clean[sizeof err->message];
    redact(err->message[0] ? err->message : gt_strerror(err->code), clean, sizeof clean);
    gt_errorlog("%s: %s", what, clean);
    fail(e, "internal", NULL, "%s: %s", what, clean);
}

static void fail_throttled(reply_err *e, int64_t wait_ms, const char *why)
{
    int64_t s = (wait_ms + 999) / 1000;
    if (s < 1)
        s = 1;
    fail(e, "throttled", NULL, "%s; retry in %lld s", why, (long long)s);
    if (e->retry_after == 0)
        e->retry_after = s;
}

/* ---- requests ---- */

static bool req_str(const cJSON *req, const char *key, bool required, const char **out,
                    reply_err *e)
{
    gt_error err = {0};
    gt_err rc = required ? gt_json_str(req, "$", key, out, &err)
                         : gt_json_opt_str(req, "$", key, out, &err);
    if (rc != GT_OK)
        fail(e, "invalid_argument", err.field, "%s", err.message);
    return rc == GT_OK;
}

static bool check_username(const char *name, const char *field, reply_err *e)
{
    if (gt_name_valid(name))
        return true;
    fail(e, "invalid_argument", field,
         "%s: must be 1-128 characters of A-Z a-z 0-9 _ . - not starting with '.' or '-'",
         field);
    return false;
}

static bool check_role(const char *role, reply_err *e)
{
    if (strcmp(role, "admin") == 0 || strcmp(role, "operator") == 0 ||
        strcmp(role, "viewer") == 0)
        return true;
    fail(e, "invalid_argument", "$.role", "$.role: must be admin, operator or viewer");
    return false;
}

static bool check_password_size(const char *pw, const char *field, reply_err *e)
{
    if (strlen(pw) <= PASSWORD_MAX)
        return true;
    fail(e, "invalid_argument", field, "%s: longer than %d bytes", field, PASSWORD_MAX);
    return false;
}

/* Characters, not bytes: a UTF-8 sequence counts once. */
static size_t utf8_chars(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        n += ((unsigned char)*s & 0xC0) != 0x80;
    return n;
}

/* The policy for a password a person chose for user name; old (may be NULL) is the
 * current one. */
static bool check_new_password(const char *pw, const char *old, const char *name,
                               const char *field, reply_err *e)
{
    if (!check_password_size(pw, field, e))
        return false;
    if (utf8_chars(pw) < PASSWORD_MIN) {
        fail(e, "invalid_argument", field, "%s: must be at least %d characters", field,
             PASSWORD_MIN);
        return false;
    }
    if (old && strcmp(pw, old) == 0) {
        fail(e, "invalid_argument", field, "%s: must differ from the current password",
             field);
        return false;
    }
    if (name && strcasecmp(pw, name) == 0) {
        fail(e, "invalid_argument", field, "%s: must not be the user name", field);
        return false;
    }
    if (gt_password_common(pw)) {
        fail(e, "invalid_argument", field, "%s: is one of the most common passwords, the "
             "first ones an attacker tries; choose another", field);
        return false;
    }
    return true;
}

/* A source is an address or a label from the controller: printable, no spaces. */
static bool check_source(const char *source, reply_err *e)
{
    size_t n = strlen(source);
    bool ok = n > 0 && n <= SOURCE_MAX;
    for (size_t i = 0; ok && i < n; i++)
        ok = source[i] > 0x20 && source[i] < 0x7f;
    if (!ok)
        fail(e, "invalid_argument", "$.source",
             "$.source: must be 1-%d printable characters without spaces", SOURCE_MAX);
    return ok;
}

static bool is_token_hash(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++)
        if (!strchr("0123456789abcdef", s[n]))
            return false;
    return n == 64;
}

/* Wipes the string values of the named members (passwords, tokens) before the
 * tree is freed. */
static void wipe_members(cJSON *obj, const char *const *keys)
{
    for (size_t i = 0; obj && keys[i]; i++) {
        cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, keys[i]);
        if (cJSON_IsString(it) && it->valuestring)
            gt_wipe(it->valuestring, strlen(it->valuestring));
    }
}

static const char *const secret_members[] = {"password", "new_password", "token", "api_key",
                                             NULL};

/* ---- users in the store ---- */

static void user_clear(user *u)
{
    free(u->name);
    free(u->role);
    free(u->password_hash);
    free(u->created_at);
    free(u->updated_at);
    memset(u, 0, sizeof *u);
}

static gt_err user_load(gt_tokend *t, const char *name, user *u, gt_error *err)
{
    char *body = NULL;
    cJSON *doc = NULL;
    gt_error bad = {0};
    const char *role = NULL, *hash = NULL, *created = NULL, *updated = NULL;
    int64_t rev = 0;

    gt_err rc = gt_store_get(t->store, USERS, name, &body, &rev, err);
    if (rc != GT_OK)
        goto done;
    if (gt_json_parse(body, strlen(body), "users document", &doc, &bad) != GT_OK ||
        gt_json_str(doc, "$", "role", &role, &bad) != GT_OK ||
        gt_json_str(doc, "$", "password_hash", &hash, &bad) != GT_OK ||
        gt_json_opt_bool(doc, "$", "must_change_password", &u->must_change, &bad) != GT_OK ||
        gt_json_opt_int(doc, "$", "failed_logins", &u->failed_logins, &bad) != GT_OK ||
        gt_json_opt_int(doc, "$", "last_failure_ms", &u->last_failure_ms, &bad) != GT_OK ||
        gt_json_opt_str(doc, "$", "created_at", &created, &bad) != GT_OK ||
        gt_json_opt_str(doc, "$", "updated_at", &updated, &bad) != GT_OK) {
        rc = gt_error_set(err, GT_EINTERNAL, "users/%s: damaged document: %s", name,
                          bad.message);
        goto done;
    }
    u->name = gt_xstrdup(name);
    u->role = gt_xstrdup(role);
    u->password_hash = gt_xstrdup(hash);
    u->created_at = gt_xstrdup(created);
    u->updated_at = gt_xstrdup(updated);
    u->rev = rev;
    if (u->failed_logins < 0)
        u->failed_logins = 0;
done:
    cJSON_Delete(doc);
    free(body);
    return rc;
}

/* Writes u under the revision it was read at (GT_REV_NONE: create); GT_ECONFLICT
 * when someone else wrote first. Updates u->rev. */
static gt_err user_save(gt_tokend *t, user *u, gt_error *err)
{
    char ts[40];
    fmt_time(now_ms(t), ts);
    free(u->updated_at);
    u->updated_at = gt_xstrdup(ts);
    if (u->created_at == NULL)
        u->created_at = gt_xstrdup(ts);

    cJSON *doc = cJSON_CreateObject();
    gt_json_set_str(doc, "name", u->name);
    gt_json_set_str(doc, "role", u->role);
    gt_json_set_str(doc, "password_hash", u->password_hash);
    gt_json_set_bool(doc, "must_change_password", u->must_change);
    gt_json_set_num(doc, "failed_logins", (double)u->failed_logins);
    gt_json_set_num(doc, "last_failure_ms", (double)u->last_failure_ms);
    gt_json_set_str(doc, "created_at", u->created_at);
    gt_json_set_str(doc, "updated_at", u->updated_at);
    char *text = gt_json_print(doc);
    gt_err rc = gt_store_put(t->store, USERS, u->name, text, u->rev, &u->rev, err);
    free(text);
    cJSON_Delete(doc);
    return rc;
}

typedef gt_err (*user_mutate_fn)(gt_tokend *t, user *u, void *arg, gt_error *err);

/* Read-modify-write of one user under its revision, from the start again when
 * another writer got in between. With create, an absent user starts blank (fn
 * fills it). On GT_OK *out (may be NULL) holds what was written. */
static gt_err user_update(gt_tokend *t, const char *name, bool create, user_mutate_fn fn,
                          void *arg, user *out, gt_error *err)
{
    for (int i = 0; i < UPDATE_TRIES; i++) {
        user u = {0};
        gt_error e = {0};
        bool raced = false;
        gt_err rc = user_load(t, name, &u, &e);
        if (rc == GT_ENOTFOUND && create) {
            u.name = gt_xstrdup(name);
            u.rev = GT_REV_NONE;
            rc = GT_OK;
        }
        if (rc == GT_OK)
            rc = fn(t, &u, arg, &e);
        if (rc == GT_OK) {
            rc = user_save(t, &u, &e);
            raced = rc == GT_ECONFLICT; /* only a lost race is worth another read */
        }
        if (rc == GT_OK && out) {
            *out = u;
            memset(&u, 0, sizeof u);
        }
        user_clear(&u);
        if (!raced) {
            if (rc != GT_OK && err && err->code == GT_OK)
                *err = e;
            return rc;
        }
    }
    return gt_error_set(err, GT_ECONFLICT, "users/%s: changed concurrently; try again", name);
}

static bool count_admin(void *arg, const gt_store_item *it)
{
    cJSON *doc = cJSON_Parse(it->body);
    const cJSON *role = cJSON_GetObjectItemCaseSensitive(doc, "role");
    *(int64_t *)arg += cJSON_IsString(role) && strcmp(role->valuestring, "admin") == 0;
    cJSON_Delete(doc);
    return true;
}

static gt_err count_admins(gt_tokend *t, int64_t *n, gt_error *err)
{
    *n = 0;
    return gt_store_each(t->store, USERS, NULL, NULL, count_admin, n, err);
}

/* ---- sessions in Redis ---- */

/* A gt_error is set once, so a lookup that may miss (GT_ENOTFOUND is an answer,
 * not a failure) uses a scratch one: this passes real failures on to err and turns
 * a miss into GT_OK. */
static gt_err missing_ok(gt_err rc, const gt_error *scratch, gt_error *err)
{
    if (rc == GT_ENOTFOUND)
        return GT_OK;
    if (rc != GT_OK && err && err->code == GT_OK)
        *err = *scratch;
    return rc;
}

static char *session_key(const char *hash)
{
    return gt_xasprintf("session:%s", hash);
}

static char *user_set_key(const char *name)
{
    return gt_xasprintf("user-sessions:%s", name);
}

/* Drops the members of a user's set whose session expired, so the set only holds
 * live sessions (it has no TTL of its own: a login session slides on use). */
static gt_err sessions_prune(gt_tokend *t, const char *name, gt_error *err)
{
    char *set = user_set_key(name);
    gt_strv members = {0};
    gt_error e = {0};
    gt_err rc = missing_ok(gt_sessions_smembers(t->sessions, set, &members, &e), &e, err);
    for (size_t i = 0; rc == GT_OK && i < members.n; i++) {
        char *key = session_key(members.v[i]);
        char *value = NULL;
        gt_error ge = {0};
        gt_err g = gt_sessions_get(t->sessions, key, &value, &ge);
        if (g == GT_ENOTFOUND)
            rc = gt_sessions_srem(t->sessions, set, members.v[i], err);
        else
            rc = missing_ok(g, &ge, err);
        free(value);
        free(key);
    }
    gt_strv_free(&members);
    free(set);
    return rc;
}

/* Deletes every session and API key of a user. */
static gt_err sessions_revoke_user(gt_tokend *t, const char *name, gt_error *err)
{
    char *set = user_set_key(name);
    gt_strv members = {0};
    gt_error e = {0};
    gt_err rc = missing_ok(gt_sessions_smembers(t->sessions, set, &members, &e), &e, err);
    for (size_t i = 0; rc == GT_OK && i < members.n; i++) {
        char *key = session_key(members.v[i]);
        rc = gt_sessions_del(t->sessions, key, err);
        /* SREM per member rather than DEL of the set: a login racing with this keeps
         * its new member, and so stays revocable. */
        if (rc == GT_OK)
            rc = gt_sessions_srem(t->sessions, set, members.v[i], err);
        free(key);
    }
    if (rc == GT_OK && members.n > 0)
        gt_info("revoked %zu session(s) of user %s", members.n, name);
    gt_strv_free(&members);
    free(set);
    return rc;
}

/* A new login token or API key for u: *token is the secret (caller frees), Redis
 * keeps only its hash. */
static gt_err session_issue(gt_tokend *t, const user *u, const char *kind, int64_t ttl_ms,
                            char **token, int64_t *expires_ms, gt_error *err)
{
    char hash[65];
    char *tok = NULL, *key = NULL, *set = NULL, *text = NULL;
    int64_t expires = now_ms(t) + ttl_ms;

    gt_err rc = sessions_prune(t, u->name, err);
    if (rc != GT_OK)
        goto done;
    tok = gt_token_new();
    gt_sha256_hex(tok, strlen(tok), hash);
    key = session_key(hash);
    set = user_set_key(u->name);

    /* Signed with the cluster's session key: a controller believes only records whose
     * MAC verifies, so write access to Redis alone cannot mint a token. */
    gt_session_record rec = {.must_change_password = u->must_change, .expires_at = expires};
    snprintf(rec.user, sizeof rec.user, "%s", u->name);
    snprintf(rec.role, sizeof rec.role, "%s", u->role);
    snprintf(rec.kind, sizeof rec.kind, "%s", kind);
    if ((rc = gt_sessions_seal(t->sessions, hash, &rec, &text, err)) != GT_OK)
        goto done;

    /* Into the user's set first: a session that exists is always revocable. */
    rc = gt_sessions_sadd(t->sessions, set, hash, 0, err);
    if (rc != GT_OK)
        goto done;
    rc = gt_sessions_set(t->sessions, key, text, ttl_ms, err);
    if (rc != GT_OK) {
        (void)gt_sessions_srem(t->sessions, set, hash, NULL);
        goto done;
    }
    *token = tok;
    tok = NULL;
    *expires_ms = expires;
done:
    if (tok)
        gt_secret_wipe_free(tok, strlen(tok));
    gt_wipe(hash, sizeof hash);
    free(text);
    free(set);
    free(key);
    return rc;
}

/* ---- throttling ---- */

/* 2^k seconds, capped. */
static int64_t backoff_ms(int64_t k)
{
    if (k < 0)
        return 0;
    if (k >= 9)
        return BACKOFF_CAP_MS;
    int64_t ms = (int64_t)1000 << k;
    return ms < BACKOFF_CAP_MS ? ms : BACKOFF_CAP_MS;
}

/* How long from now until `delay` has passed since `last`; clamped to delay so a
 * clock that stepped back cannot lock anyone out for longer. */
static int64_t remaining_ms(int64_t last, int64_t delay, int64_t now)
{
    int64_t r = last + delay - now;
    if (r > delay)
        r = delay;
    return r > 0 ? r : 0;
}

/* The per-account delay after `failed` consecutive failures, the last at `last`: the
 * same for a user and for a name that is not one. */
static int64_t account_wait_ms(int64_t failed, int64_t last, int64_t now)
{
    if (failed < ACCOUNT_FREE)
        return 0;
    return remaining_ms(last, backoff_ms(failed - ACCOUNT_FREE), now);
}

/* A counter or timestamp kept as a decimal string; absent reads as 0. */
static gt_err read_count(gt_tokend *t, const char *key, int64_t *out, gt_error *err)
{
    char *value = NULL;
    gt_error e = {0};
    *out = 0;
    gt_err rc = gt_sessions_get(t->sessions, key, &value, &e);
    if (rc == GT_OK && gt_parse_int64(value, 0, INT64_MAX, out, key, NULL) != GT_OK)
        *out = 0; /* not ours to fail on; the window expires it */
    free(value);
    return missing_ok(rc, &e, err);
}

static gt_err source_wait_ms(gt_tokend *t, const char *source, int64_t now, int64_t *wait,
                             gt_error *err)
{
    char *ckey = gt_xasprintf("fail:src:%s", source);
    char *akey = gt_xasprintf("fail:src-at:%s", source);
    int64_t count = 0, last = 0;
    *wait = 0;
    gt_err rc = read_count(t, ckey, &count, err);
    if (rc == GT_OK && count > SOURCE_FREE)
        rc = read_count(t, akey, &last, err);
    if (rc == GT_OK && count > SOURCE_FREE)
        *wait = remaining_ms(last, backoff_ms(count - SOURCE_FREE - 1), now);
    free(akey);
    free(ckey);
    return rc;
}

/* Counts a failure against source; a Redis failure here is logged, not answered:
 * the caller's reply (unauthenticated) is the more useful one. */
static void source_failed(gt_tokend *t, const char *source, int64_t now)
{
    if (source == NULL)
        return;
    char *ckey = gt_xasprintf("fail:src:%s", source);
    char *akey = gt_xasprintf("fail:src-at:%s", source);
    char at[32];
    snprintf(at, sizeof at, "%lld", (long long)now);
    int64_t count = 0;
    gt_error err = {0};
    if (gt_sessions_incr(t->sessions, ckey, SOURCE_WINDOW_MS, &count, &err) != GT_OK ||
        gt_sessions_set(t->sessions, akey, at, SOURCE_WINDOW_MS, &err) != GT_OK) {
        char clean[sizeof err.message];
        redact(err.message, clean, sizeof clean);
        gt_warn("cannot count a failed login from %s: %s", source, clean);
    } else if (count == SOURCE_FREE + 1) {
        gt_warn("%d failed logins from %s in 15 minutes: throttling it", SOURCE_FREE + 1,
                source);
    }
    free(akey);
    free(ckey);
}

/* A name that is no user: its failures as a user's would be (count, last), from Redis. */
static gt_err unknown_failures(gt_tokend *t, const char *name, int64_t *count, int64_t *last,
                               gt_error *err)
{
    char *ckey = gt_xasprintf("fail:user:%s", name);
    char *akey = gt_xasprintf("fail:user-at:%s", name);
    gt_err rc = read_count(t, ckey, count, err);
    if (rc == GT_OK)
        rc = read_count(t, akey, last, err);
    free(akey);
    free(ckey);
    return rc;
}

/* Counts a failure for a name that is no user; *count is the new total. */
static gt_err unknown_failed(gt_tokend *t, const char *name, int64_t now, int64_t *count,
                             gt_error *err)
{
    char *ckey = gt_xasprintf("fail:user:%s", name);
    char *akey = gt_xasprintf("fail:user-at:%s", name);
    char at[32];
    snprintf(at, sizeof at, "%lld", (long long)now);
    gt_err rc = gt_sessions_incr(t->sessions, ckey, UNKNOWN_USER_TTL_MS, count, err);
    if (rc == GT_OK)
        rc = gt_sessions_set(t->sessions, akey, at, UNKNOWN_USER_TTL_MS, err);
    free(akey);
    free(ckey);
    return rc;
}

/* An unknown name gets the answers a user with as many failures would get: locked at
 * MAX_FAILED, throttled from ACCOUNT_FREE on (without a password check), otherwise the
 * same argon2 time and "invalid username or password". */
static void authenticate_unknown(gt_tokend *t, const char *name, const char *password,
                                 const char *source, int64_t now, reply_err *e)
{
    gt_error err = {0};
    int64_t count = 0, last = 0;
    const char *from = source ? source : "(no source)";
    if (unknown_failures(t, name, &count, &last, &err) != GT_OK) {
        fail_internal(e, "sessions", &err);
        return;
    }
    if (count >= MAX_FAILED) {
        fail(e, "locked", NULL, LOCKED_MSG);
        return;
    }
    int64_t wait = account_wait_ms(count, last, now);
    if (wait > 0) {
        fail_throttled(e, wait, "too many failed logins for this account");
        return;
    }
    /* Same argon2 time as a known user, so timing does not tell names apart. */
    (void)gt_password_verify(t->dummy_hash, password);
    source_failed(t, source, now);
    if (unknown_failed(t, name, now, &count, &err) != GT_OK) {
        fail_internal(e, "sessions", &err);
        return;
    }
    gt_info("failed login %lld for an unknown user from %s", (long long)count, from);
    if (count >= MAX_FAILED)
        fail(e, "locked", NULL, LOCKED_MSG);
    else
        fail(e, "unauthenticated", NULL, BAD_CREDENTIALS);
}

static gt_err mutate_failed(gt_tokend *t, user *u, void *arg, gt_error *err)
{
    (void)t;
    (void)err;
    if (u->failed_logins < MAX_FAILED)
        u->failed_logins++;
    u->last_failure_ms = *(const int64_t *)arg;
    return GT_OK;
}

static gt_err mutate_succeeded(gt_tokend *t, user *u, void *arg, gt_error *err)
{
    (void)t;
    (void)arg;
    (void)err;
    u->failed_logins = 0;
    return GT_OK;
}

/* Checks name/password under both throttles. True with *u filled on success;
 * otherwise e holds the reply. source may be NULL (no per-source accounting). */
static bool authenticate(gt_tokend *t, const char *name, const char *password,
                         const char *source, user *u, reply_err *e)
{
    gt_error err = {0};
    int64_t now = now_ms(t), wait = 0;
    const char *from = source ? source : "(no source)";

    if (source && source_wait_ms(t, source, now, &wait, &err) != GT_OK) {
        fail_internal(e, "sessions", &err);
        return false;
    }
    if (wait > 0) {
        fail_throttled(e, wait, "too many failed logins from this source");
        return false;
    }
    gt_err rc = user_load(t, name, u, &err);
    if (rc == GT_ENOTFOUND) {
        authenticate_unknown(t, name, password, source, now, e);
        return false;
    }
    if (rc != GT_OK) {
        fail_internal(e, "store", &err);
        return false;
    }
    if (u->failed_logins >= MAX_FAILED) {
        fail(e, "locked", NULL, LOCKED_MSG);
        goto refused;
    }
    wait = account_wait_ms(u->failed_logins, u->last_failure_ms, now);
    if (wait > 0) {
        fail_throttled(e, wait, "too many failed logins for this account");
        goto refused;
    }
    if (!gt_password_verify(u->password_hash, password)) {
        source_failed(t, source, now);
        user_clear(u);
        if (user_update(t, name, false, mutate_failed, &now, u, &err) != GT_OK) {
            fail_internal(e, "store", &err);
            return false;
        }
        if (u->failed_logins >= MAX_FAILED) {
            gt_warn("user %s locked after %d failed logins (last from %s)", name, MAX_FAILED,
                    from);
            fail(e, "locked", NULL, LOCKED_MSG);
        } else {
            gt_info("failed login %lld for user %s from %s", (long long)u->failed_logins,
                    name, from);
            fail(e, "unauthenticated", NULL, BAD_CREDENTIALS);
        }
        goto refused;
    }
    if (u->failed_logins != 0) {
        user_clear(u);
        if (user_update(t, name, false, mutate_succeeded, NULL, u, &err) != GT_OK) {
            fail_internal(e, "store", &err);
            return false;
        }
    }
    return true;
refused:
    user_clear(u);
    return false;
}

/* ---- ops ---- */

typedef void (*op_fn)(gt_tokend *t, const cJSON *req, cJSON *out, reply_err *e);

static void op_ping(gt_tokend *t, const cJSON *req, cJSON *out, reply_err *e)
{
    (void)t;
    (void)req;
    (void)out;
    (void)e;
}

static void op_login(gt_tokend *t, const cJSON *req, cJSON *out, reply_err *e)
{
    const char *name = NULL, *pw = NULL, *source = NULL;
    user u = {0};
    char *token = NULL;
    int64_t expires = 0;
    gt_error err = {0};

    if (!req_str(req, "username", true, &name, e) || !req_str(req, "password", true, &pw, e) ||
        !req_str(req, "source", true, &source, e) ||
        !check_username(name, "$.username", e) || !check_password_size(pw, "$.password", e) ||
        !check_source(source, e))
        return;
    if (!authenticate(t, name, pw, source, &u, e))
        return;
    if (session_issue(t, &u, "login", t->token_ttl_ms, &token, &expires, &err) != GT_OK) {
        fail_internal(e, "sessions", &err);
        goto done;
    }
    char ts[40];
    fmt_time(expires, ts);
    gt_json_set_str(out, "token", token);
    gt_json_set_str(out, "user", u.name);
    gt_json_set_str(out, "role", u.role);
    gt_json_set_str(out, "expires_at", ts);
    gt_json_set_num(out, "expires_at_ms", (double)expires);
    gt_json_set_bool(out, "must_change_password", u.must_change);
    gt_info("login: user %s (%s) from %s%s", u.name, u.role, source,
            u.must_change ? "; must change the password" : "");
done:
    if (token)
        gt_secret_wipe_free(token, strlen(token));
    user_clear(&u);
}

typedef struct new_password {
    const char *verified_hash;   /* NULL: whatever is stored */
    const char *hash;            /* the new one */
    const char *role;            /* NULL: keep */
    bool must_change;
} new_password;

static gt_err mutate_password(gt_tokend *t, user *u, void *arg, gt_error *err)
{
    (void)t;
    const new_password *np = arg;
    /* The password was checked against one hash; if it changed since, the check no
     * longer holds. */
    if (np->verified_hash && (u->rev == GT_REV_NONE ||
                              strcmp(u->password_hash, np->verified_hash) != 0))
        return gt_error_set(err, GT_ECONFLICT, "the password changed meanwhile; try again");
    free(u->password_hash);
    u->password_hash = gt_xstrdup(np->hash);
    if (np->role) {
        free(u->role);
        u->role = gt_xstrdup(np->role);
    }
    u->must_change = np->must_change;
    u->failed_logins = 0;
    u->last_failure_ms = 0;
    return GT_OK;
}

static void op_change_password(gt_tokend *t, const cJSON *req, cJSON *out, reply_err *e)
{
    const char *name = NULL, *pw = NULL, *npw = NULL, *source = NULL;
    user u = {0};
    char *hash = NULL;
    gt_error err = {0};
    (void)out;

    if (!req_str(req, "username", true, &name, e) || !req_str(req, "password", true, &pw, e) ||
        !req_str(req, "new_password", true, &npw, e) ||
        !req_str(req, "source", false, &source, e) ||
        !check_username(name, "$.username", e) || !check_password_size(pw, "$.password", e) ||
        (source && !check_source(source, e)) ||
        !check_new_password(npw, pw, name, "$.new_password", e))
        return;
    if (source == NULL) /* counted all the same: one bucket for requests that name none */
        source = "unknown";
    if (!authenticate(t, name, pw, source, &u, e))
        return;
    if (gt_password_hash(npw, &hash, &err) != GT_OK) {
        fail_internal(e, "argon2id", &err);
        goto done;
    }
    new_password np = {.verified_hash = u.password_hash, .hash = hash, .must_change = false};
    gt_err rc = user_update(t, name, false, mutate_password, &np, NULL, &err);
    if (rc == GT_ECONFLICT || rc == GT_ENOTFOUND) {
        fail(e, rc == GT_ECONFLICT ? "conflict" : "not_found", NULL, "%s", err.message);
        goto done;
    }
    if (rc != GT_OK) {
        fail_internal(e, "store", &err);
        goto done;
    }
    /* Every token and key issued under the old password goes. */
    if (sessions_revoke_user(t, name, &err) != GT_OK) {
        fail_internal(e, "password changed, but revoking the old sessions failed", &err);
        goto done;
    }
    gt_info("user %s changed the password", name);
done:
    free(hash);
    user_clear(&u);
}

static void op_logout(gt_tokend *t, const cJSON *req, cJSON *out, reply_err *e)
{
    const char *hash = NULL;
    char *key = NULL, *value = NULL, *set = NULL;
    gt_error err = {0};
    (void)out;

    if (!req_str(req, "token_hash", true, &hash, e))
        return;
    if (!is_token_hash(hash)) {
        fail(e, "invalid_argument", "$.token_hash",
             "$.token_hash: expected the SHA-256 of a token, 64 lowercase hex digits");
        return;
    }
    key = session_key(hash);
    gt_err rc = gt_sessions_get(t->sessions, key, &value, &err);
    if (rc == GT_ENOTFOUND)
        goto done; /* already gone: logout is idempotent */
    if (rc == GT_OK)
        rc = gt_sessions_del(t->sessions, key, &err);
    if (rc != GT_OK) {
        fail_internal(e, "sessions", &err);
        goto done;
    }
    gt_session_record rec;
    /* Only a genuine record names the set to clean; a forged one is gone all the same. */
    if (gt_sessions_open(t->sessions, hash, value, &rec, NULL) == GT_OK) {
        set = user_set_key(rec.user);
        (void)gt_sessions_srem(t->sessions, set, hash, NULL); /* pruned later otherwise */
        gt_info("logout: user %s", rec.user);
    }
done:
    free(set);
    free(value);
    free(key);
}

static void op_create_user(gt_tokend *t, const cJSON *req, cJSON *out, reply_err *e)
{
    const char *name = NULL, *role = NULL, *pw = NULL;
    char *temp = NULL, *hash = NULL;
    user u = {0};
    gt_error err = {0};

    if (!req_str(req, "username", true, &name, e) || !req_str(req, "role", true, &role, e) ||
        !req_str(req, "password", false, &pw, e) || !check_username(name, "$.username", e) ||
        !check_role(role, e) || (pw && !check_new_password(pw, NULL, name, "$.password", e)))
        return;
    if (pw == NULL)
        pw = temp = gt_password_random(TEMP_PASSWORD_LEN);
    if (gt_password_hash(pw, &hash, &err) != GT_OK) {
        fail_internal(e, "argon2id", &err);
        goto done;
    }
    u.name = gt_xstrdup(name);
    u.role = gt_xstrdup(role);
    u.password_hash = hash;
    hash = NULL;
    u.must_change = temp != NULL;
    u.rev = GT_REV_NONE;
    gt_err rc = user_save(t, &u, &err);
    if (rc == GT_ECONFLICT) {
        fail(e, "conflict", "$.username", "user %s already exists", name);
        goto done;
    }
    if (rc != GT_OK) {
        fail_internal(e, "store", &err);
        goto done;
    }
    cJSON *uo = cJSON_CreateObject();
    gt_json_set_str(uo, "name", u.name);
    gt_json_set_str(uo, "role", u.role);
    gt_json_set_str(uo, "created_at", u.created_at);
    gt_json_set(out, "user", uo);
    if (temp)
        gt_json_set_str(out, "password", temp);
    gt_info("created user %s (%s)%s", u.name, u.role,
            temp ? " with a temporary password" : "");
done:
    if (temp)
        gt_secret_wipe_free(temp, strlen(temp));
    free(hash);
    user_clear(&u);
}

static void op_delete_user(gt_tokend *t, const cJSON *req, cJSON *out, reply_err *e)
{
    const char *name = NULL;
    user u = {0};
    gt_error err = {0};
    (void)out;

    if (!req_str(req, "username", true, &name, e) || !check_username(name, "$.username", e))
        return;
    gt_err rc = user_load(t, name, &u, &err);
    if (rc == GT_ENOTFOUND) {
        fail(e, "not_found", "$.username", "user %s does not exist", name);
        goto done;
    }
    if (rc != GT_OK) {
        fail_internal(e, "store", &err);
        goto done;
    }
    if (strcmp(u.role, "admin") == 0) {
        int64_t admins = 0;
        if (count_admins(t, &admins, &err) != GT_OK) {
            fail_internal(e, "store", &err);
            goto done;
        }
        if (admins <= 1) {
            fail(e, "forbidden", "$.username", "user %s is the last admin; create another "
                 "admin first", name);
            goto done;
        }
    }
    rc = gt_store_delete(t->store, USERS, name, u.rev, &err);
    if (rc == GT_ECONFLICT || rc == GT_ENOTFOUND) {
        fail(e, rc == GT_ECONFLICT ? "conflict" : "not_found", "$.username",
             "user %s changed concurrently; try again", name);
        goto done;
    }
    if (rc != GT_OK) {
        fail_internal(e, "store", &err);
        goto done;
    }
    if (sessions_revoke_user(t, name, &err) != GT_OK) {
        fail_internal(e, "user deleted, but revoking its sessions failed", &err);
        goto done;
    }
    gt_info("deleted user %s", name);
done:
    user_clear(&u);
}

/* An admin's reset: a new password (temporary when none is given) that must be
 * changed at the next login; unlocks the account and revokes its sessions. */
static void op_reset_password(gt_tokend *t, const cJSON *req, cJSON *out, reply_err *e)
{
    const char *name = NULL, *pw = NULL;
    char *temp = NULL, *hash = NULL;
    gt_error err = {0};

    if (!req_str(req, "username", true, &name, e) || !req_str(req, "password", false, &pw, e) ||
        !check_username(name, "$.username", e) ||
        (pw && !check_new_password(pw, NULL, name, "$.password", e)))
        return;
    if (pw == NULL)
        pw = temp = gt_password_random(TEMP_PASSWORD_LEN);
    if (gt_password_hash(pw, &hash, &err) != GT_OK) {
        fail_internal(e, "argon2id", &err);
        goto done;
    }
    new_password np = {.hash = hash, .must_change = true};
    gt_err rc = user_update(t, name, false, mutate_password, &np, NULL, &err);
    if (rc == GT_ENOTFOUND || rc == GT_ECONFLICT) {
        fail(e, rc == GT_ENOTFOUND ? "not_found" : "conflict", "$.username",
             rc == GT_ENOTFOUND ? "user %s does not exist" : "user %s changed concurrently; "
             "try again", name);
        goto done;
    }
    if (rc != GT_OK) {
        fail_internal(e, "store", &err);
        goto done;
    }
    if (sessions_revoke_user(t, name, &err) != GT_OK) {
        fail_internal(e, "password reset, but revoking the old sessions failed", &err);
        goto done;
    }
    if (temp)
        gt_json_set_str(out, "password", temp);
    gt_info("reset the password of user %s; it must be changed at the next login", name);
done:
    if (temp)
        gt_secret_wipe_free(temp, strlen(temp));
    free(hash);
}

/* Only what a listing needs: never the hash or the failure counters. */
static bool add_listed_user(void *arg, const gt_store_item *item)
{
    cJSON *doc = cJSON_Parse(item->body);
    const cJSON *role = cJSON_GetObjectItemCaseSensitive(doc, "role");
    const cJSON *mc = cJSON_GetObjectItemCaseSensitive(doc, "must_change_password");
    const cJSON *created = cJSON_GetObjectItemCaseSensitive(doc, "created_at");
    cJSON *it = cJSON_CreateObject();
    gt_json_set_str(it, "name", item->id);
    gt_json_set_str(it, "role", cJSON_IsString(role) ? role->valuestring : NULL);
    gt_json_set_bool(it, "must_change_password", cJSON_IsTrue(mc));
    gt_json_set_str(it, "created_at", cJSON_IsString(created) ? created->valuestring : NULL);
    cJSON_AddItemToArray(arg, it);
    cJSON_Delete(doc);
    return true;
}

static void op_list_users(gt_tokend *t, const cJSON *req, cJSON *out, reply_err *e)
{
    gt_error err = {0};
    cJSON *items = cJSON_CreateArray();
    (void)req;
    if (gt_store_each(t->store, USERS, NULL, NULL, add_listed_user, items, &err) != GT_OK)
        fail_internal(e, "store", &err);
    gt_json_set(out, "items", items);
}

static void op_create_apikey(gt_tokend *t, const cJSON *req, cJSON *out, reply_err *e)
{
    const char *name = NULL, *label = NULL;
    user u = {0};
    char *key = NULL;
    int64_t expires = 0;
    gt_error err = {0};

    if (!req_str(req, "username", true, &name, e) || !req_str(req, "name", false, &label, e) ||
        !check_username(name, "$.username", e) || (label && !check_username(label, "$.name", e)))
        return;
    gt_err rc = user_load(t, name, &u, &err);
    if (rc == GT_ENOTFOUND) {
        fail(e, "not_found", "$.username", "user %s does not exist", name);
        goto done;
    }
    if (rc != GT_OK) {
        fail_internal(e, "store", &err);
        goto done;
    }
    if (session_issue(t, &u, "apikey", t->api_key_ttl_ms, &key, &expires, &err) != GT_OK) {
        fail_internal(e, "sessions", &err);
        goto done;
    }
    char ts[40];
    fmt_time(expires, ts);
    gt_json_set_str(out, "api_key", key);
    gt_json_set_str(out, "expires_at", ts);
    gt_json_set_num(out, "expires_at_ms", (double)expires);
    if (label)
        gt_json_set_str(out, "name", label);
    gt_info("created API key %s for user %s, valid until %s", label ? label : "(unnamed)",
            name, ts);
done:
    if (key)
        gt_secret_wipe_free(key, strlen(key));
    user_clear(&u);
}

#define FIELDS(...) ((const char *const[]){"op", __VA_ARGS__, NULL})

static const struct op {
    const char *name;
    const char *const *fields;   /* the members a request may carry */
    op_fn fn;
} ops[] = {
    {"ping", FIELDS(NULL), op_ping},
    {"login", FIELDS("username", "password", "source"), op_login},
    {"change_password", FIELDS("username", "password", "new_password", "source"),
     op_change_password},
    {"logout", FIELDS("token_hash"), op_logout},
    {"create_user", FIELDS("username", "role", "password"), op_create_user},
    {"delete_user", FIELDS("username"), op_delete_user},
    {"reset_password", FIELDS("username", "password"), op_reset_password},
    {"list_users", FIELDS(NULL), op_list_users},
    {"create_apikey", FIELDS("username", "name"), op_create_apikey},
};

static char *reply_error(const reply_err *e)
{
    cJSON *r = cJSON_CreateObject();
    cJSON *eo = cJSON_CreateObject();
    gt_json_set_bool(r, "ok", false);
    gt_json_set_str(eo, "code", e->code);
    gt_json_set_str(eo, "message", e->message);
    if (e->field[0])
        gt_json_set_str(eo, "field", e->field);
    gt_json_set(r, "error", eo);
    if (e->retry_after > 0)
        gt_json_set_num(r, "retry_after", (double)e->retry_after);
    char *text = gt_json_print(r);
    cJSON_Delete(r);
    return text;
}

/* The broker user that sent a request, printable for a log line (it is any UTF-8 the
 * broker accepted as a user name). */
static void printable_user(const char *caller, char buf[80])
{
    size_t o = 0;
    for (size_t i = 0; caller && caller[i] && o + 1 < 80; i++)
        buf[o++] = (unsigned char)caller[i] > 0x20 && (unsigned char)caller[i] < 0x7f
                       ? caller[i] : '?';
    buf[o] = '\0';
}

/* True when caller is one of the controllers' broker users. */
static bool caller_allowed(const gt_tokend *t, const char *caller)
{
    for (size_t i = 0; caller && i < t->controller_users.n; i++)
        if (strcmp(caller, t->controller_users.v[i]) == 0)
            return true;
    return false;
}

gt_err gt_tokend_handle(gt_tokend *t, const char *caller, const char *body, size_t len,
                        char **reply, size_t *reply_len)
{
    reply_err e = {0};
    gt_error err = {0};
    cJSON *req = NULL;
    cJSON *out = cJSON_CreateObject();
    const char *opname = NULL;
    gt_json_set_bool(out, "ok", true);

    /* Before anything is parsed: a request from anyone but a controller is not read. */
    if (!caller_allowed(t, caller)) {
        char who[80];
        printable_user(caller, who);
        gt_warn("refused a request from broker user %s: only [tokend] controller_users may "
                "call gantry-tokend", caller ? who : "(none: no user_id property)");
        fail(&e, "forbidden", NULL, "gantry-tokend serves only the controllers' broker users "
             "([tokend] controller_users); this request came from %s",
             caller ? who : "a message without a user_id");
        goto done;
    }
    if (gt_json_parse(body ? body : "", body ? len : 0, "request", &req, &err) != GT_OK) {
        fail(&e, "invalid_argument", err.field[0] ? err.field : "$", "%s", err.message);
        goto done;
    }
    if (!cJSON_IsObject(req)) {
        fail(&e, "invalid_argument", "$", "request: expected a JSON object");
        goto done;
    }
    if (!req_str(req, "op", true, &opname, &e))
        goto done;
    const struct op *op = NULL;
    for (size_t i = 0; i < sizeof ops / sizeof ops[0] && !op; i++)
        if (strcmp(ops[i].name, opname) == 0)
            op = &ops[i];
    if (op == NULL) {
        fail(&e, "invalid_argument", "$.op", "$.op: unknown operation \"%.64s\"", opname);
        goto done;
    }
    if (gt_json_only(req, "$", op->fields, &err) != GT_OK) {
        fail(&e, "invalid_argument", err.field, "%s", err.message);
        goto done;
    }
    gt_debug("request: %s", op->name);
    op->fn(t, req, out, &e);
done:
    *reply = e.code ? reply_error(&e) : gt_json_print(out);
    *reply_len = strlen(*reply);
    wipe_members(req, secret_members);
    wipe_members(out, secret_members);
    cJSON_Delete(req);
    cJSON_Delete(out);
    return GT_OK;
}

/* ---- life cycle ---- */

gt_tokend *gt_tokend_new(const gt_tokend_config *cfg, gt_error *err)
{
    if (cfg == NULL || cfg->store == NULL || cfg->sessions == NULL ||
        cfg->token_ttl_ms <= 0 || cfg->api_key_ttl_ms <= 0) {
        gt_error_set(err, GT_EINVAL, "tokend: store, sessions and positive lifetimes are "
                     "required");
        return NULL;
    }
    if (cfg->controller_users == NULL || cfg->controller_users[0] == NULL) {
        gt_error_set(err, GT_EINVAL, "tokend: [tokend] controller_users is empty: no request "
                     "could ever be served");
        return NULL;
    }
    gt_tokend *t = gt_xcalloc(1, sizeof *t);
    t->store = cfg->store;
    t->sessions = cfg->sessions;
    for (char *const *u = cfg->controller_users; *u; u++)
        gt_strv_push(&t->controller_users, *u);
    t->admin_password_file = gt_xstrdup(cfg->admin_password_file);
    t->token_ttl_ms = cfg->token_ttl_ms;
    t->api_key_ttl_ms = cfg->api_key_ttl_ms;
    t->clock_ms = cfg->clock_ms;
    t->clock_arg = cfg->clock_arg;
    /* A hash of a password nobody knows, with the real parameters. */
    char *pw = gt_password_random(TEMP_PASSWORD_LEN);
    gt_err rc = gt_password_hash(pw, &t->dummy_hash, err);
    gt_secret_wipe_free(pw, strlen(pw));
    if (rc != GT_OK)
        gt_tokend_free(&t);
    return t;
}

void gt_tokend_free(gt_tokend **t)
{
    if (t == NULL || *t == NULL)
        return;
    free((*t)->dummy_hash);
    gt_strv_free(&(*t)->controller_users);
    free((*t)->admin_password_file);
    free(*t);
    *t = NULL;
}

/* Writes pw and a newline to path as a new file, mode 0600 (O_EXCL and O_NOFOLLOW: never
 * through a link someone planted, never into an existing file); a file already there is a
 * stale one and is removed first. The operator reads it once and deletes it. */
static gt_err write_password_file(const char *path, const char *pw, gt_error *err)
{
    gt_err rc = GT_OK;
    char *text = gt_xasprintf("%s\n", pw);
    size_t n = strlen(text), off = 0;
    if (path == NULL || path[0] == '\0') {
        rc = gt_error_set(err, GT_EINVAL, "tokend: no file to write the admin password to");
        goto done;
    }
    if (unlink(path) == 0)
        gt_info("removed the old %s", path);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
        int e = errno;
        rc = gt_error_set(err, e == EACCES ? GT_EPERM : GT_EIO, "%s: %s", path, strerror(e));
        goto done;
    }
    while (off < n) {
        ssize_t w = write(fd, text + off, n - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            rc = gt_error_set(err, GT_EIO, "%s: %s", path, strerror(errno));
            break;
        }
        off += (size_t)w;
    }
    if (rc == GT_OK && fsync(fd) != 0)
        rc = gt_error_set(err, GT_EIO, "%s: %s", path, strerror(errno));
    if (close(fd) != 0 && rc == GT_OK)
        rc = gt_error_set(err, GT_EIO, "%s: %s", path, strerror(errno));
    if (rc != GT_OK)
        (void)unlink(path);
done:
    gt_secret_wipe_free(text, n);
    return rc;
}

gt_err gt_tokend_bootstrap(gt_tokend *t, char **password, gt_error *err)
{
    gt_store_page page = {0};
    char *pw = NULL;
    user u = {0};

    if (password)
        *password = NULL;
    gt_err rc = gt_store_query(t->store, USERS, NULL, NULL, NULL, 1, &page, err);
    if (rc != GT_OK || page.n > 0)
        goto done;
    pw = gt_password_random(TEMP_PASSWORD_LEN);
    u.name = gt_xstrdup("admin");
    u.role = gt_xstrdup("admin");
    u.must_change = true;
    u.rev = GT_REV_NONE;
    rc = gt_password_hash(pw, &u.password_hash, err);
    if (rc != GT_OK)
        goto done;
    gt_error e = {0};
    rc = user_save(t, &u, &e);
    if (rc == GT_ECONFLICT) {
        rc = GT_OK; /* another tokend created it first, and wrote its password file */
        goto done;
    }
    if (rc != GT_OK) {
        if (err && err->code == GT_OK)
            *err = e;
        goto done;
    }
    /* The one place the temporary password is kept: a file only this account can read,
     * never the log, which is shipped and kept elsewhere. */
    gt_error fe = {0};
    rc = write_password_file(t->admin_password_file, pw, &fe);
    if (rc != GT_OK) {
        /* Nobody could ever log in as this admin: take it back, so the next start tries
         * again (or --recover-admin-user sets a password). */
        gt_error de = {0};
        if (gt_store_delete(t->store, USERS, "admin", u.rev, &de) != GT_OK)
            gt_errorlog("first start: removing user admin again failed: %s (use "
                        "--recover-admin-user)", de.message);
        gt_error_set(err, rc, "first start: cannot write the admin's temporary password: %s",
                     fe.message);
        goto done;
    }
    gt_warn("first start: created user admin; its temporary password is in %s (mode 0600): "
            "read it, delete the file, and change the password at the first login (gantry "
            "login --change-password)", t->admin_password_file);
    if (password)
        *password = gt_xstrdup(pw);
done:
    if (pw)
        gt_secret_wipe_free(pw, strlen(pw));
    user_clear(&u);
    gt_store_page_clear(&page);
    return rc;
}

gt_err gt_tokend_recover_admin(gt_tokend *t, char **password, gt_error *err)
{
    char *hash = NULL;
    char *pw = gt_password_random(TEMP_PASSWORD_LEN);
    *password = NULL;

    bool written = false;
    gt_err rc = gt_password_hash(pw, &hash, err);
    if (rc != GT_OK)
        goto done;
    /* The file first: a password set but lost would lock the admin out again. */
    if ((rc = write_password_file(t->admin_password_file, pw, err)) != GT_OK)
        goto done;
    written = true;
    new_password np = {.hash = hash, .role = "admin", .must_change = true};
    rc = user_update(t, "admin", true, mutate_password, &np, NULL, err);
    if (rc != GT_OK)
        goto done;
    rc = sessions_revoke_user(t, "admin", err);
    if (rc != GT_OK)
        goto done;
    gt_warn("recover-admin-user: user admin has a new temporary password, in %s (mode "
            "0600); its sessions were revoked", t->admin_password_file);
    *password = pw;
    pw = NULL;
done:
    if (rc != GT_OK && written)
        (void)unlink(t->admin_password_file);
    if (pw)
        gt_secret_wipe_free(pw, strlen(pw));
    free(hash);
    return rc;
}
