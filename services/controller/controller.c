#include "controller.h"

#include <stdatomic.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "crypto.h"
#include "dispatch.h"
#include "json.h"
#include "log.h"
#include "model/model.h"
#include "pool.h"
#include "watch.h"
#include "util.h"

typedef enum role { ROLE_NONE = 0, ROLE_VIEWER, ROLE_OPERATOR, ROLE_ADMIN } role;

/* Per HTTP worker thread: connections opened on first use and reopened after a
 * failure, so the controller starts (and reports 503) while a dependency is down. */
typedef struct worker {
    gt_ctl *ctl;
    bool dispatch;          /* HTTP workers hand runs to the execution pool or the broker */
    char *declared;         /* the last work queue this worker declared */
    int64_t bus_retry_at;   /* no broker connect before this (monotonic ms) */
    gt_store *store;
    gt_api *api;
    gt_sessions *sess;
    gt_bus *bus;
    /* When this worker last renewed a login token's TTL, by token hash (direct-mapped:
     * a collision only costs an early renewal). */
    struct renewed { char hash[65]; int64_t at_ms; } renewed[256];
} worker;

typedef struct session {
    char user[160];
    role role;
    bool login;             /* a login token (sliding expiry), not an API key */
    bool must_change;
    char hash[65];
} session;

#define N_METHODS 8
#define N_BUCKETS 12
static const double buckets[N_BUCKETS] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                          0.1,   0.25,   0.5,   1,    2.5,   10};
static const char *const methods[N_METHODS] = {"GET",  "POST", "PUT",     "PATCH",
                                               "DELETE", "HEAD", "OPTIONS", "OTHER"};

typedef struct metrics {
    pthread_mutex_t mu;
    uint64_t requests[N_METHODS][500]; /* by method and status 100..599 */
    uint64_t bucket[N_BUCKETS];
    uint64_t count;
    double sum;
} metrics;

struct gt_ctl {
    gt_ctl_config c;
    char *queue_name;          /* tokend's request queue */
    worker *workers;
    gt_pool *pool;             /* runs executions on this node (not distributed) */
    gt_watch *watch;           /* the process's change watcher: the pool's cancels */
    metrics m;
};

/* ---------- responses ---------- */

static void respond(gt_http_response *resp, int status, cJSON *body)
{
    free(resp->body);
    resp->status = status;
    resp->body = gt_json_print(body);
    resp->body_len = strlen(resp->body);
    cJSON_Delete(body);
}

static void respond_error(gt_http_response *resp, int status, const char *code,
                          const char *message, const char *field)
{
    cJSON *b = cJSON_CreateObject();
    cJSON *e = cJSON_AddObjectToObject(b, "error");
    gt_json_set_str(e, "code", code);
    gt_json_set_str(e, "message", message);
    if (field && field[0])
        gt_json_set_str(e, "field", field);
    respond(resp, status, b);
}

static gt_err enqueue(void *arg, const cJSON *ex, gt_error *err);
static gt_err publish_run(void *arg, const cJSON *ex, gt_error *err);

/* ---------- per-thread connections ---------- */

static gt_err worker_store(gt_ctl *ctl, worker *w, gt_error *err)
{
    if (w->api)
        return GT_OK;
    gt_err rc = ctl->c.open_store(ctl->c.open_store_arg, &w->store, err);
    if (rc != GT_OK)
        return rc;
    gt_api_deps d = {
        .store = w->store,
        .key_file = ctl->c.key_file,
        .key_file_explicit = ctl->c.key_file_explicit,
        .run = ctl->c.run,
        .runner_name = ctl->c.node,
        .dispatch = !w->dispatch ? NULL : ctl->c.distributed ? publish_run : enqueue,
        .dispatch_arg = ctl->c.distributed ? (void *)w : (void *)ctl,
        .queued = ctl->c.distributed,
    };
    return (w->api = gt_api_new(&d, err)) ? GT_OK : GT_EUNAVAIL;
}

static gt_err worker_sessions(gt_ctl *ctl, worker *w, gt_error *err)
{
    if (w->sess == NULL)
        w->sess = gt_sessions_new(&ctl->c.sessions, err);
    return w->sess ? GT_OK : GT_EUNAVAIL;
}

static gt_err worker_bus(gt_ctl *ctl, worker *w, gt_error *err)
{
    if (w->bus && !gt_bus_connected(w->bus))
        gt_bus_free(&w->bus);
    /* while the broker is away, a request does not wait for a connect each time:
     * what it dispatches stays queued for the sweeper */
    if (w->bus == NULL && gt_mono_ms() < w->bus_retry_at)
        return gt_error_set(err, GT_EUNAVAIL, "the message broker is away (retrying)");
    if (w->bus == NULL && (w->bus = gt_bus_connect(&ctl->c.bus, err)) == NULL)
        w->bus_retry_at = gt_mono_ms() + 2000;
    return w->bus ? GT_OK : GT_EUNAVAIL;
}

static void worker_close(worker *w)
{
    free(w->declared);
    w->declared = NULL;
    gt_api_free(&w->api);
    gt_store_free(&w->store);
    gt_sessions_free(&w->sess);
    gt_bus_free(&w->bus);
}

/* ---------- authentication ---------- */

static role role_parse(const char *s)
{
    return !s ? ROLE_NONE : strcmp(s, "admin") == 0 ? ROLE_ADMIN
                          : strcmp(s, "operator") == 0 ? ROLE_OPERATOR
                          : strcmp(s, "viewer") == 0 ? ROLE_VIEWER : ROLE_NONE;
}

/* Reads the session behind the request's bearer token. Fills resp and returns
 * false when the request may not go on. */
/* The renewed[] slot of a token hash (lower-case hex): its first byte. */
static size_t renewed_slot(const char *hash)
{
    size_t v = 0;
    for (int i = 0; i < 2; i++)
        v = v * 16 + (size_t)(hash[i] <= '9' ? hash[i] - '0' : hash[i] - 'a' + 10);
    return v & 255;
}

static bool authenticate(gt_ctl *ctl, worker *w, const gt_http_request *req, session *s,
                         gt_http_response *resp)
{
    const char *h = req->authorization;
    if (h == NULL || strncasecmp(h, "Bearer ", 7) != 0 || h[7] == '\0') {
        respond_error(resp, 401, "unauthenticated",
                      "login required: send \"Authorization: Bearer TOKEN\" (gantry login)", NULL);
        return false;
    }
    const char *token = h + 7;
    size_t n = strlen(token);
    if (n > 512) {
        respond_error(resp, 401, "unauthenticated", "token is invalid or expired", NULL);
        return false;
    }
    gt_sha256_hex(token, n, s->hash);
    char key[96];
    snprintf(key, sizeof key, "session:%s", s->hash);
    gt_error e = {0};
    char *value = NULL;
    gt_err rc = worker_sessions(ctl, w, &e);
    if (rc == GT_OK)
        rc = gt_sessions_get(w->sess, key, &value, &e);
    if (rc == GT_ENOTFOUND) {
        respond_error(resp, 401, "unauthenticated", "token is invalid or expired", NULL);
        return false;
    }
    if (rc != GT_OK) {
        gt_warn("sessions: %s", e.message);
        if (w->sess && rc != GT_EINVAL)
            gt_sessions_free(&w->sess);
        respond_error(resp, 503, "unavailable", "the session store (Redis) does not answer", NULL);
        return false;
    }
    /* Redis holds the record, but only tokend holds what signs it: a record whose MAC
     * does not verify was written by someone else (or under another signing key). */
    gt_session_record rec;
    e = (gt_error){0};
    rc = gt_sessions_open(w->sess, s->hash, value, &rec, &e);
    free(value);
    if (rc == GT_ECRYPTO)
        gt_warn("refused a token: %s", e.message);
    else if (rc != GT_OK)
        gt_warn("refused a token: its session record is damaged: %s", e.message);
    snprintf(s->user, sizeof s->user, "%s", rec.user);
    s->role = role_parse(rec.role);
    s->login = strcmp(rec.kind, "login") == 0;
    s->must_change = rec.must_change_password;
    /* An API key does not slide: past its expiry it is dead, whatever Redis's TTL says. */
    bool expired = rc == GT_OK && !s->login && rec.expires_at <= gt_now_ms();
    if (rc != GT_OK || expired || s->role == ROLE_NONE || s->user[0] == '\0' ||
        (!s->login && strcmp(rec.kind, "apikey") != 0)) {
        respond_error(resp, 401, "unauthenticated", "token is invalid or expired", NULL);
        return false;
    }
    /* Sliding expiry: a session in use stays alive. This worker renews it (PEXPIRE) only
     * when it has not done so for half the TTL, so a request costs one GET, not a GET
     * plus MULTI/GET/PEXPIRE/EXEC; an idle session ends between ttl/2 and ttl after
     * its last use. */
    if (s->login) {
        struct renewed *rn = &w->renewed[renewed_slot(s->hash)];
        int64_t now = gt_mono_ms();
        if (strcmp(rn->hash, s->hash) != 0 || now - rn->at_ms >= ctl->c.token_ttl_ms / 2) {
            if (gt_sessions_expire(w->sess, key, ctl->c.token_ttl_ms, NULL) == GT_OK) {
                memcpy(rn->hash, s->hash, sizeof rn->hash);
                rn->at_ms = now;
            }
        }
    }
    return true;
}

static bool authorize(const session *s, role need, gt_http_response *resp)
{
    if (s->must_change) {
        respond_error(resp, 403, "password_change_required",
                      "the password must be changed first (gantry login --change-password)", NULL);
        return false;
    }
    if (s->role < need) {
        static const char *names[] = {"", "viewer", "operator", "admin"};
        char msg[128];
        snprintf(msg, sizeof msg, "this needs the %s role", names[need]);
        respond_error(resp, 403, "forbidden", msg, NULL);
        return false;
    }
    return true;
}

/* ---------- gantry-tokend over AMQP ---------- */

static int tokend_status(const char *code)
{
    static const struct { const char *code; int status; } map[] = {
        {"invalid_argument", 400}, {"unauthenticated", 401}, {"forbidden", 403},
        {"locked", 403},           {"not_found", 404},      {"conflict", 409},
        {"throttled", 429},
    };
    for (size_t i = 0; code && i < sizeof map / sizeof map[0]; i++)
        if (strcmp(code, map[i].code) == 0)
            return map[i].status;
    return 500;
}

/* Sends req to tokend. On success *out is its reply; otherwise resp is filled. */
static bool tokend_call(gt_ctl *ctl, worker *w, cJSON *req, cJSON **out, gt_http_response *resp)
{
    gt_error e = {0};
    char *text = gt_json_print(req), *reply = NULL;
    size_t len = 0;
    gt_err rc = worker_bus(ctl, w, &e);
    if (rc == GT_OK)
        rc = gt_bus_rpc(w->bus, ctl->queue_name, text, strlen(text),
                        ctl->c.rpc_timeout_ms ? ctl->c.rpc_timeout_ms : 5000, &reply, &len, &e);
    gt_wipe(text, strlen(text)); /* may hold a password */
    free(text);
    if (rc == GT_ETIMEDOUT) {
        respond_error(resp, 503, "unavailable", "the token service (gantry-tokend) did not answer",
                      NULL);
        return false;
    }
    if (rc != GT_OK) {
        gt_warn("broker: %s", e.message);
        gt_bus_free(&w->bus);
        respond_error(resp, 503, "unavailable", "the message broker (RabbitMQ) does not answer", NULL);
        return false;
    }
    cJSON *r = cJSON_Parse(reply);
    gt_wipe(reply, len); /* may hold a token */
    free(reply);
    if (!cJSON_IsObject(r)) {
        cJSON_Delete(r);
        respond_error(resp, 502, "internal", "gantry-tokend sent a malformed reply", NULL);
        return false;
    }
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(r, "ok"))) {
        cJSON_DeleteItemFromObjectCaseSensitive(r, "ok");
        *out = r;
        return true;
    }
    const cJSON *err = cJSON_GetObjectItemCaseSensitive(r, "error");
    const char *code = NULL, *msg = NULL, *field = NULL;
    gt_json_opt_str(err, "$", "code", &code, NULL);
    gt_json_opt_str(err, "$", "message", &msg, NULL);
    gt_json_opt_str(err, "$", "field", &field, NULL);
    int status = tokend_status(code);
    const cJSON *ra = cJSON_GetObjectItemCaseSensitive(r, "retry_after");
    if (cJSON_IsNumber(ra))
        resp->retry_after = gt_xasprintf("%d", ra->valueint > 0 ? ra->valueint : 1);
    respond_error(resp, status, code ? code : "internal", msg ? msg : "token service error", field);
    cJSON_Delete(r);
    return false;
}

/* The request body as a JSON object with only the allowed members. */
static cJSON *body_object(const gt_http_request *req, const char *const *allowed,
                          gt_http_response *resp)
{
    cJSON *b = NULL;
    gt_error e = {0};
    if (req->body == NULL || req->body_len == 0) {
        respond_error(resp, 400, "invalid_argument", "a JSON object body is required", "$");
        return NULL;
    }
    if (gt_json_parse(req->body, req->body_len, "request body", &b, &e) != GT_OK ||
        (!cJSON_IsObject(b) && gt_error_setf(&e, GT_EINVAL, "$", "$: expected a JSON object")) ||
        gt_json_only(b, "$", allowed, &e) != GT_OK) {
        respond_error(resp, 400, "invalid_argument", e.message, e.field);
        cJSON_Delete(b);
        return NULL;
    }
    return b;
}

/* Copies the string members named in keys from body into req (missing → error). */
static bool copy_strings(const cJSON *body, cJSON *req, const char *const *keys,
                         const char *const *as, bool required, gt_http_response *resp)
{
    for (size_t i = 0; keys[i]; i++) {
        const char *v = NULL;
        gt_error e = {0};
        gt_err rc = required ? gt_json_str(body, "$", keys[i], &v, &e)
                             : gt_json_opt_str(body, "$", keys[i], &v, &e);
        if (rc != GT_OK) {
            respond_error(resp, 400, "invalid_argument", e.message, e.field);
            return false;
        }
        if (v)
            gt_json_set_str(req, as[i], v);
    }
    return true;
}

typedef struct ctx {
    gt_ctl *ctl;
    worker *w;
    const gt_http_request *req;
    gt_http_response *resp;
    session s;
    char *param;       /* {name} */
} ctx;

static void rpc_reply(ctx *x, cJSON *rpc, int status)
{
    cJSON *out = NULL;
    if (tokend_call(x->ctl, x->w, rpc, &out, x->resp))
        respond(x->resp, status, out);
    cJSON_Delete(rpc);
}

/* login and change_password: the body's credentials, the caller's address, to tokend */
static void credentials_rpc(ctx *x, const char *op, const char *const *keys)
{
    cJSON *b = body_object(x->req, keys, x->resp);
    if (b == NULL)
        return;
    cJSON *rpc = cJSON_CreateObject();
    gt_json_set_str(rpc, "op", op);
    /* What tokend's per-source throttle counts: the peer's address, never a value the
     * client sends; one shared bucket when the transport gives none. */
    gt_json_set_str(rpc, "source", x->req->peer && x->req->peer[0] ? x->req->peer : "unknown");
    if (copy_strings(b, rpc, keys, keys, true, x->resp))
        rpc_reply(x, rpc, 200);
    else
        cJSON_Delete(rpc);
    cJSON_Delete(b);
}

static void h_login(ctx *x)
{
    static const char *const keys[] = {"username", "password", NULL};
    credentials_rpc(x, "login", keys);
}

static void h_password(ctx *x)
{
    static const char *const keys[] = {"username", "password", "new_password", NULL};
    credentials_rpc(x, "change_password", keys);
}

static void h_logout(ctx *x)
{
    cJSON *rpc = cJSON_CreateObject();
    gt_json_set_str(rpc, "op", "logout");
    gt_json_set_str(rpc, "token_hash", x->s.hash);
    rpc_reply(x, rpc, 200);
}

static void h_users_list(ctx *x)
{
    cJSON *rpc = cJSON_CreateObject();
    gt_json_set_str(rpc, "op", "list_users");
    rpc_reply(x, rpc, 200);
}

static void h_users_create(ctx *x)
{
    static const char *const allowed[] = {"name", "role", "password", NULL};
    static const char *const req_keys[] = {"name", "role", NULL};
    static const char *const req_as[] = {"username", "role", NULL};
    static const char *const opt_keys[] = {"password", NULL};
    cJSON *b = body_object(x->req, allowed, x->resp);
    if (b == NULL)
        return;
    cJSON *rpc = cJSON_CreateObject();
    gt_json_set_str(rpc, "op", "create_user");
    if (copy_strings(b, rpc, req_keys, req_as, true, x->resp) &&
        copy_strings(b, rpc, opt_keys, opt_keys, false, x->resp))
        rpc_reply(x, rpc, 201);
    else
        cJSON_Delete(rpc);
    cJSON_Delete(b);
}

static void h_users_delete(ctx *x)
{
    cJSON *rpc = cJSON_CreateObject();
    gt_json_set_str(rpc, "op", "delete_user");
    gt_json_set_str(rpc, "username", x->param);
    rpc_reply(x, rpc, 200);
}

static void h_apikey(ctx *x)
{
    static const char *const allowed[] = {"name", NULL};
    /* A key that could mint keys would never die: a leaked one would renew itself before
     * each expiry, a permanent foothold. New keys need a password login. */
    if (!x->s.login) {
        respond_error(x->resp, 403, "forbidden",
                      "an API key cannot create API keys: log in with a password (gantry "
                      "login) to create one", NULL);
        return;
    }
    cJSON *b = (x->req->body && x->req->body_len) ? body_object(x->req, allowed, x->resp)
                                                  : cJSON_CreateObject();
    if (b == NULL)
        return;
    cJSON *rpc = cJSON_CreateObject();
    gt_json_set_str(rpc, "op", "create_apikey");
    gt_json_set_str(rpc, "username", x->s.user);
    if (copy_strings(b, rpc, allowed, allowed, false, x->resp))
        rpc_reply(x, rpc, 201);
    else
        cJSON_Delete(rpc);
    cJSON_Delete(b);
}

static void h_whoami(ctx *x)
{
    static const char *names[] = {"", "viewer", "operator", "admin"};
    cJSON *b = cJSON_CreateObject();
    gt_json_set_str(b, "user", x->s.user);
    gt_json_set_str(b, "role", names[x->s.role]);
    gt_json_set_str(b, "kind", x->s.login ? "login" : "apikey");
    respond(x->resp, 200, b);
}

/* ---------- health and metrics ---------- */

static void dep(cJSON *deps, const char *name, gt_err rc, const gt_error *e, const char *detail,
                bool *ok)
{
    cJSON *d = cJSON_AddObjectToObject(deps, name);
    gt_json_set_str(d, "state", rc == GT_OK ? "up" : "down");
    if (rc != GT_OK)
        gt_json_set_str(d, "error", e->message[0] ? e->message : gt_strerror(rc));
    if (detail)
        gt_json_set_str(d, "address", detail);
    *ok &= rc == GT_OK;
}

/* The store, the broker and Redis, each "ok" or "unavailable" (*ok false then); with
 * detail, their addresses and error messages too. */
static cJSON *check_deps(ctx *x, bool detail, bool *ok)
{
    gt_ctl *ctl = x->ctl;
    cJSON *deps = cJSON_CreateObject();
    gt_error e = {0};
    gt_err rc = worker_store(ctl, x->w, &e);
    char *body = NULL;
    if (rc == GT_OK) {
        rc = gt_store_get(x->w->store, "health", "probe", &body, NULL, &e);
        free(body);
        if (rc == GT_ENOTFOUND)
            rc = GT_OK;
    }
    dep(deps, "store", rc, &e, NULL, ok);
    e = (gt_error){0};
    rc = worker_bus(ctl, x->w, &e);
    dep(deps, "broker", rc, &e, NULL, ok);
    e = (gt_error){0};
    rc = worker_sessions(ctl, x->w, &e);
    if (rc == GT_OK && (rc = gt_sessions_ping(x->w->sess, &e)) != GT_OK)
        gt_sessions_free(&x->w->sess);
    dep(deps, "sessions", rc, &e, x->w->sess ? gt_sessions_master(x->w->sess) : NULL, ok);
    if (!detail) {
        cJSON *d;
        cJSON_ArrayForEach(d, deps) {
            cJSON_DeleteItemFromObjectCaseSensitive(d, "error");
            cJSON_DeleteItemFromObjectCaseSensitive(d, "address");
        }
    }
    return deps;
}

static void h_health(ctx *x)
{
    gt_ctl *ctl = x->ctl;
    /* The load balancer asks without a token and gets states only: the node's host
     * name and port, the dependencies' addresses and their error messages are for
     * callers with a valid token (any role). A missing or bad token is not an error
     * here; it only leaves the details out. */
    bool detail = false;
    if (x->req->authorization) {
        gt_http_response ignored = {0};
        detail = authenticate(ctl, x->w, x->req, &x->s, &ignored);
        free(ignored.body);
        free(ignored.retry_after);
    }
    cJSON *b = cJSON_CreateObject();
    if (detail)
        gt_json_set_str(b, "node", ctl->c.node);
    bool exclude = x->req->query && strstr(x->req->query, "exclude-services=true");
    bool ok = true;
    if (!exclude)
        cJSON_AddItemToObject(b, "dependencies", check_deps(x, detail, &ok));
    if (ctl->c.ha) {
        cJSON *h = cJSON_AddObjectToObject(b, "ha");
        gt_json_set_str(h, "role", "active");
        gt_json_set_num(h, "epoch", (double)gt_ha_epoch(ctl->c.ha));
    }
    gt_json_set_str(b, "status", ok ? "ok" : "unavailable");
    respond(x->resp, ok ? 200 : 503, b);
}

/* A standby serves nothing: the load balancer's health check gets 503 and the active
 * controller's address, and so does a call that reached it anyway (nothing of it ran,
 * so a client may send it to the active one as it is). */
static bool standby(gt_ctl *ctl, const gt_http_request *req, gt_http_response *resp)
{
    char active[256] = "";
    if (ctl->c.ha == NULL || gt_ha_is_active(ctl->c.ha, active, sizeof active))
        return false;
    cJSON *b = cJSON_CreateObject();
    gt_json_set_str(b, "status", "standby");
    gt_json_set_str(b, "active", active);
    if (strcmp(req->path, "/health/status") != 0) {
        cJSON *e = cJSON_AddObjectToObject(b, "error");
        gt_json_set_str(e, "code", "standby");
        char *m = active[0] ? gt_xasprintf("this controller is a standby; the active one is %s",
                                           active)
                            : gt_xstrdup("this controller is a standby; no active one is known "
                                         "yet (a failover is under way)");
        gt_json_set_str(e, "message", m);
        free(m);
    }
    respond(resp, 503, b);
    free(resp->retry_after);
    resp->retry_after = gt_xstrdup("1");
    return true;
}

static int method_index(const char *m)
{
    for (int i = 0; i < N_METHODS - 1; i++)
        if (strcmp(m, methods[i]) == 0)
            return i;
    return N_METHODS - 1;
}

static void observe(gt_ctl *ctl, const char *method, int status, double seconds)
{
    metrics *m = &ctl->m;
    pthread_mutex_lock(&m->mu);
    if (status >= 100 && status <= 599)
        m->requests[method_index(method)][status - 100]++;
    for (int i = 0; i < N_BUCKETS; i++)
        if (seconds <= buckets[i])
            m->bucket[i]++;
    m->count++;
    m->sum += seconds;
    pthread_mutex_unlock(&m->mu);
}


static void h_metrics(ctx *x)
{
    gt_ctl *ctl = x->ctl;
    metrics *m = &ctl->m;
    gt_buf b = {0};
    gt_buf_puts(&b, "# HELP gantry_http_requests_total HTTP requests answered, by method and status.\n"
                    "# TYPE gantry_http_requests_total counter\n");
    pthread_mutex_lock(&m->mu);
    for (int i = 0; i < N_METHODS; i++)
        for (int s = 0; s < 500; s++)
            if (m->requests[i][s])
                gt_buf_printf(&b, "gantry_http_requests_total{method=\"%s\",code=\"%d\"} %llu\n",
                              methods[i], s + 100, (unsigned long long)m->requests[i][s]);
    gt_buf_puts(&b, "# HELP gantry_http_request_duration_seconds Time to answer a request.\n"
                    "# TYPE gantry_http_request_duration_seconds histogram\n");
    for (int i = 0; i < N_BUCKETS; i++)
        gt_buf_printf(&b, "gantry_http_request_duration_seconds_bucket{le=\"%g\"} %llu\n", buckets[i],
                      (unsigned long long)m->bucket[i]);
    gt_buf_printf(&b, "gantry_http_request_duration_seconds_bucket{le=\"+Inf\"} %llu\n"
                      "gantry_http_request_duration_seconds_sum %.6f\n"
                      "gantry_http_request_duration_seconds_count %llu\n",
                  (unsigned long long)m->count, m->sum, (unsigned long long)m->count);
    pthread_mutex_unlock(&m->mu);
    static const char *const states[] = {"accepted", "queued", "running", "succeeded", "failed",
                                         "timed_out", "canceled", "lost", NULL};
    gt_buf_puts(&b, "# HELP gantry_executions Executions in the store, by state.\n"
                    "# TYPE gantry_executions gauge\n");
    if (worker_store(ctl, x->w, NULL) == GT_OK) {
        /* counts the store keeps by its index, no bodies read (SQLite: one row of a
         * table its triggers keep; etcd and MongoDB count index keys) */
        for (size_t i = 0; states[i]; i++) {
            gt_store_filter f = {.field = "state", .eq = states[i]};
            int64_t n = 0;
            if (gt_store_count(x->w->store, "executions", &f, &n, NULL) == GT_OK)
                gt_buf_printf(&b, "gantry_executions{state=\"%s\"} %lld\n", states[i],
                              (long long)n);
        }
    }
    gt_buf_printf(&b, "# TYPE gantry_build_info gauge\ngantry_build_info{version=\"%s\",node=\"%s\"} 1\n",
                  GANTRY_VERSION, ctl->c.node);
    free(x->resp->body);
    x->resp->status = 200;
    x->resp->content_type = "text/plain; version=0.0.4";
    x->resp->body_len = b.len;
    x->resp->body = gt_buf_steal(&b);
}

/* ---------- routing ---------- */

typedef struct route {
    const char *method;
    const char *pattern;   /* "{name}" matches one segment */
    void (*fn)(ctx *x);
    role need;
    bool auth;
} route;

static const route routes[] = {
    {"POST", "/api/v1/login", h_login, ROLE_NONE, false},
    {"POST", "/api/v1/password", h_password, ROLE_NONE, false},
    {"POST", "/api/v1/logout", h_logout, ROLE_NONE, true},
    {"GET", "/api/v1/whoami", h_whoami, ROLE_VIEWER, true},
    {"GET", "/api/v1/users", h_users_list, ROLE_ADMIN, true},
    {"POST", "/api/v1/users", h_users_create, ROLE_ADMIN, true},
    {"DELETE", "/api/v1/users/{name}", h_users_delete, ROLE_ADMIN, true},
    {"POST", "/api/v1/apikeys", h_apikey, ROLE_VIEWER, true},
    {"GET", "/health/status", h_health, ROLE_NONE, false},
    {"GET", "/metrics", h_metrics, ROLE_NONE, false},
};

/* Matches path against pattern; *param gets the {name} segment (malloc'd). */
static bool match(const char *pattern, const char *path, char **param)
{
    const char *brace = strchr(pattern, '{');
    if (brace == NULL)
        return strcmp(pattern, path) == 0;
    size_t pre = (size_t)(brace - pattern);
    if (strncmp(pattern, path, pre) != 0)
        return false;
    const char *seg = path + pre;
    size_t n = strcspn(seg, "/");
    if (n == 0 || seg[n] != '\0' || n > 256)
        return false;
    *param = gt_xstrndup(seg, n);
    return true;
}

/* Role an API route needs: reading is for viewers, running for operators, the rest
 * for admins. */
static role api_role(const char *method, const char *path)
{
    if (strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0)
        return ROLE_VIEWER;
    size_t n = strlen(path);
    if (strcmp(method, "POST") == 0 && ((n > 4 && strcmp(path + n - 4, "/run") == 0) ||
                                        (n > 7 && strcmp(path + n - 7, "/cancel") == 0)))
        return ROLE_OPERATOR;
    return ROLE_ADMIN;
}

void gt_ctl_handle(void *arg, int worker_index, const gt_http_request *req, gt_http_response *resp)
{
    gt_ctl *ctl = arg;
    int64_t t0 = gt_mono_ms();
    ctx x = {.ctl = ctl, .w = &ctl->workers[worker_index], .req = req, .resp = resp};
    if (strcmp(req->path, "/metrics") != 0 && standby(ctl, req, resp)) {
        observe(ctl, req->method, resp->status, (double)(gt_mono_ms() - t0) / 1000.0);
        return;
    }
    const route *found = NULL;
    bool path_known = false;
    for (size_t i = 0; i < sizeof routes / sizeof routes[0] && !found; i++) {
        char *param = NULL;
        if (match(routes[i].pattern, req->path, &param)) {
            path_known = true;
            if (strcmp(routes[i].method, req->method) == 0) {
                found = &routes[i];
                x.param = param;
                param = NULL;
            }
        }
        free(param);
    }
    if (found) {
        if (!found->auth || (authenticate(ctl, x.w, req, &x.s, resp) &&
                             (found->fn == h_logout || authorize(&x.s, found->need, resp))))
            found->fn(&x);
    } else if (path_known) {
        respond_error(resp, 405, "invalid_argument", "method not allowed on this path", NULL);
    } else if (strncmp(req->path, "/api/v1/", 8) != 0) {
        respond_error(resp, 404, "not_found", "no such route", NULL);
    } else if (authenticate(ctl, x.w, req, &x.s, resp) &&
               authorize(&x.s, api_role(req->method, req->path), resp)) {
        gt_error e = {0};
        if (worker_store(ctl, x.w, &e) != GT_OK) {
            respond_error(resp, 503, "unavailable", e.message, NULL);
        } else {
            gt_api_response ar = {0};
            gt_api_handle_key(x.w->api, req->method, req->path, req->query, req->body,
                              req->body_len, req->idempotency_key, &ar);
            /* the cluster's health includes what only a controller can see */
            if (ar.status == 200 && strcmp(req->path, "/api/v1/cluster/health") == 0) {
                bool ok = true;
                cJSON_AddItemToObject(ar.body, "dependencies", check_deps(&x, true, &ok));
            }
            respond(resp, ar.status, ar.body);
        }
    }
    free(x.param);
    observe(ctl, req->method, resp->status, (double)(gt_mono_ms() - t0) / 1000.0);
}

void gt_ctl_print_routes(FILE *out)
{
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
        fprintf(out, "%s %s\n", routes[i].method, routes[i].pattern);
    for (const gt_api_route_info *r = gt_api_routes(); r->method; r++)
        fprintf(out, "%s %s\n", r->method, r->pattern);
}

/* ---------- execution workers ---------- */

/* Distributed execution: the run is already stored as "queued"; announce it to the
 * runners of its pool. One the broker did not confirm stays queued: the dispatch
 * sweeper announces it again. */
static gt_err publish_run(void *arg, const cJSON *ex, gt_error *err)
{
    worker *w = arg;
    gt_ctl *ctl = w->ctl;
    gt_error e = {0};
    gt_err rc = worker_bus(ctl, w, &e);
    if (rc == GT_OK)
        rc = gt_dispatch_publish(w->bus, ctl->c.cluster_id, ex, &w->declared, &e);
    if (rc != GT_OK) {
        gt_bus_free(&w->bus);
        gt_error_set(err, GT_EUNAVAIL, "the message broker did not take the run: %s", e.message);
    }
    return rc;
}

static gt_err enqueue(void *arg, const cJSON *ex, gt_error *err)
{
    gt_ctl *ctl = arg;
    return gt_pool_submit(ctl->pool, cJSON_GetObjectItemCaseSensitive(ex, "id")->valuestring, 0,
                          NULL, err);
}

gt_ctl *gt_ctl_new(const gt_ctl_config *cfg, gt_error *err)
{
    gt_ctl *ctl = gt_xcalloc(1, sizeof *ctl);
    ctl->c = *cfg;
    ctl->queue_name = gt_xasprintf("gantry.%s.auth", cfg->cluster_id);
    ctl->workers = gt_xcalloc((size_t)(cfg->http_workers > 0 ? cfg->http_workers : 1), sizeof *ctl->workers);
    pthread_mutex_init(&ctl->m.mu, NULL);
    for (int i = 0; i < (cfg->http_workers > 0 ? cfg->http_workers : 1); i++) {
        ctl->workers[i].dispatch = true;
        ctl->workers[i].ctl = ctl;
    }
    if (!cfg->distributed) {
        if ((ctl->watch = gt_watch_new(cfg->open_store, cfg->open_store_arg, err)) == NULL) {
            gt_ctl_free(&ctl);
            return NULL;
        }
        gt_pool_config pc = {
            .workers = cfg->exec_workers > 0 ? cfg->exec_workers : 4,
            .open_store = cfg->open_store,
            .open_store_arg = cfg->open_store_arg,
            .key_file = cfg->key_file,
            .key_file_explicit = cfg->key_file_explicit,
            .run = cfg->run,
            .runner_name = cfg->node,
            .watch = ctl->watch,
        };
        if ((ctl->pool = gt_pool_new(&pc, err)) == NULL) {
            gt_ctl_free(&ctl);
            return NULL;
        }
    }
    /* what a previous controller process left behind: runs it had started end as lost,
     * runs it had only accepted are dispatched again */
    worker w = {.dispatch = true, .ctl = ctl};
    if (worker_store(ctl, &w, err) != GT_OK) {
        worker_close(&w);
        gt_ctl_free(&ctl);
        return NULL;
    }
    int reaped = gt_api_reap_local(w.api);
    if (reaped)
        gt_warn("%d execution(s) of a previous controller process were lost or dispatched again",
                reaped);
    worker_close(&w);
    return ctl;
}

void gt_ctl_free(gt_ctl **pctl)
{
    if (pctl == NULL || *pctl == NULL)
        return;
    gt_ctl *ctl = *pctl;
    /* runs in progress finish; queued ones stay "accepted" and the next controller
     * start dispatches them again */
    gt_pool_free(&ctl->pool);
    gt_watch_free(&ctl->watch);
    for (int i = 0; i < (ctl->c.http_workers > 0 ? ctl->c.http_workers : 1); i++)
        worker_close(&ctl->workers[i]);
    pthread_mutex_destroy(&ctl->m.mu);
    free(ctl->workers);
    free(ctl->queue_name);
    free(ctl);
    *pctl = NULL;
}
