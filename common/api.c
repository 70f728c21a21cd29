#include "api.h"

#include <ctype.h>
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "crypto.h"
#include "exec.h"
#include "json.h"
#include "lifecycle.h"
#include "log.h"
#include "mask.h"
#include "model/model.h"
#include "output.h"
#include "schema.h"
#include "util.h"

#define MAX_PARAMS 4
#define EXECUTIONS GT_EXECUTIONS

struct gt_api {
    gt_api_deps d;
    gt_key *key;    /* loaded on first use: most commands never touch secrets */
};

typedef struct req {
    gt_api *api;
    const char *method;
    char *params[MAX_PARAMS];
    const gt_model_kind *kind;
    const char *query;
    cJSON *body;
    gt_api_response *resp;
    const char *idempotency_key;   /* the request's Idempotency-Key, or NULL */
    bool start_raced;              /* execute: another write came between load and running */
    gt_error err;
} req;

typedef gt_err (*handler_fn)(req *r);

typedef struct route {
    const char *method;
    const char *pattern;   /* segments; "{kind}" matches a model kind, "{x}" any segment */
    handler_fn handler;
    bool needs_body;
} route;

/* ---------- helpers ---------- */

int gt_api_status(gt_err code)
{
    switch (code) {
    case GT_OK: return 200;
    case GT_EINVAL: return 400;
    case GT_EPERM: return 403;
    case GT_ENOTFOUND: return 404;
    case GT_ECONFLICT: return 409;
    case GT_EUNAVAIL: return 503;
    case GT_ETIMEDOUT: return 504;
    case GT_EAGAIN: return 503;
    default: return 500;
    }
}

static const char *code_name(gt_err code)
{
    switch (code) {
    case GT_EINVAL: return "invalid_argument";
    case GT_EPERM: return "permission_denied";
    case GT_ENOTFOUND: return "not_found";
    case GT_ECONFLICT: return "conflict";
    case GT_EUNAVAIL: return "unavailable";
    case GT_ETIMEDOUT: return "timeout";
    case GT_ECRYPTO: return "secret_key";
    case GT_EAGAIN: return "try_again";
    default: return "internal";
    }
}

static void reply(req *r, int status, cJSON *body)
{
    cJSON_Delete(r->resp->body);
    r->resp->status = status;
    r->resp->body = body;
}

static void reply_error(gt_api_response *resp, int status, gt_err code, const char *message,
                        const char *field)
{
    cJSON *body = cJSON_CreateObject();
    cJSON *e = cJSON_AddObjectToObject(body, "error");
    gt_json_set_str(e, "code", code_name(code));
    gt_json_set_str(e, "message", message);
    if (field && field[0])
        gt_json_set_str(e, "field", field);
    cJSON_Delete(resp->body);
    resp->status = status;
    resp->body = body;
}

static void now_str(char *buf, size_t n)
{
    gt_format_time(gt_now_ms(), buf, n);
}

/* A stored document as the API shows it: hidden members removed, revision added.
 * Takes doc. */
static cJSON *public_doc(const gt_model_kind *k, cJSON *doc, int64_t rev)
{
    /* executions (k == NULL): where a run's processes are is not the caller's business */
    static const char *const exec_private[] = {"owner_pid", "owner_start", "child_pid",
                                               "child_start", "dispatched_at_ms", NULL};
    const char *const *hidden = k ? k->hidden : exec_private;
    for (size_t i = 0; hidden[i]; i++)
        cJSON_DeleteItemFromObjectCaseSensitive(doc, hidden[i]);
    if (k && k->present)
        k->present(doc);
    gt_json_set_num(doc, "revision", (double)rev);
    return doc;
}

static cJSON *public_view(const gt_model_kind *k, const char *body, int64_t rev)
{
    cJSON *doc = cJSON_Parse(body);
    return public_doc(k, doc ? doc : cJSON_CreateObject(), rev);
}

/* A string member of a stored document, or NULL: stored documents are read defensively. */
static const char *doc_str(const cJSON *doc, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(doc, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* Reads and parses coll/id; "<what> \"id\" not found" when absent. */
static gt_err load(req *r, const char *coll, const char *what, const char *id, cJSON **doc,
                   int64_t *rev)
{
    char *body = NULL;
    gt_error e = {0};
    gt_err rc = gt_store_get(r->api->d.store, coll, id, &body, rev, &e);
    if (rc == GT_ENOTFOUND)
        gt_error_set(&r->err, rc, "%s \"%s\" not found", what, id);
    else if (rc != GT_OK)
        gt_error_set(&r->err, rc, "%s", e.message);
    else
        rc = gt_json_parse(body, strlen(body), coll, doc, &r->err);
    free(body);
    return rc;
}

static gt_err must_exist(req *r, const gt_model_kind *k, const char *name, const char *field)
{
    char *body = NULL;
    gt_error e = {0};
    gt_err rc = gt_store_get(r->api->d.store, k->plural, name, &body, NULL, &e);
    free(body);
    if (rc == GT_ENOTFOUND)
        return gt_error_setf(&r->err, GT_EINVAL, field, "%s: %s \"%s\" does not exist", field,
                             k->singular, name);
    if (rc != GT_OK)
        return gt_error_set(&r->err, rc, "%s", e.message);
    return GT_OK;
}

/* ---------- query strings ---------- */

static int hexval(int c)
{
    return isdigit(c) ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10
                                : (c >= 'A' && c <= 'F') ? c - 'A' + 10 : -1;
}

/* Percent-decodes s[0..n) ('+' is a space); NULL when malformed or when it
 * would decode to a NUL byte. */
static char *pct_decode(const char *s, size_t n)
{
    gt_buf b = {0};
    for (size_t i = 0; i < n; i++) {
        char ch = s[i] == '+' ? ' ' : s[i];
        if (s[i] == '%') {
            int hi = i + 1 < n ? hexval((unsigned char)s[i + 1]) : -1;
            int lo = i + 2 < n ? hexval((unsigned char)s[i + 2]) : -1;
            if (hi < 0 || lo < 0 || hi * 16 + lo == 0) {
                gt_buf_free(&b);
                return NULL;
            }
            ch = (char)(hi * 16 + lo);
            i += 2;
        }
        gt_buf_append(&b, &ch, 1);
    }
    return gt_buf_steal(&b);
}

/* The value of key in the query string (decoded, caller frees), or NULL. GT_EINVAL
 * when the query is malformed or the key is not one the route knows. */
static gt_err query_get(req *r, const char *const *known, const char *key, char **out)
{
    *out = NULL;
    const char *q = r->query ? r->query : "";
    while (*q) {
        const char *amp = strchr(q, '&');
        size_t n = amp ? (size_t)(amp - q) : strlen(q);
        const char *eq = memchr(q, '=', n);
        size_t kn = eq ? (size_t)(eq - q) : n;
        char *k = pct_decode(q, kn);
        char *v = eq ? pct_decode(eq + 1, n - kn - 1) : gt_xstrdup("");
        gt_err rc = GT_OK;
        if (k == NULL || v == NULL) {
            rc = gt_error_setf(&r->err, GT_EINVAL, "query", "malformed query string");
        } else if (kn > 0) {
            bool ok = false;
            for (size_t i = 0; known[i]; i++)
                ok |= strcmp(k, known[i]) == 0;
            if (!ok)
                rc = gt_error_setf(&r->err, GT_EINVAL, k, "unknown query parameter \"%s\"", k);
            else if (strcmp(k, key) == 0 && *out == NULL) {
                *out = v;
                v = NULL;
            }
        }
        free(k);
        free(v);
        if (rc != GT_OK) {
            free(*out);
            *out = NULL;
            return rc;
        }
        q += n + (amp ? 1 : 0);
    }
    return GT_OK;
}

/* order=asc (default) or desc, by id: executions' ids sort by creation time */
static gt_err query_order(req *r, const char *const *known, bool *desc)
{
    char *s = NULL;
    gt_err rc = query_get(r, known, "order", &s);
    if (rc == GT_OK && s) {
        if (strcmp(s, "desc") == 0)
            *desc = true;
        else if (strcmp(s, "asc") != 0)
            rc = gt_error_setf(&r->err, GT_EINVAL, "order", "order: \"%s\" is not asc or desc", s);
    }
    free(s);
    return rc;
}

static gt_err query_limit(req *r, const char *const *known, size_t *limit)
{
    char *s = NULL;
    gt_err rc = query_get(r, known, "limit", &s);
    if (rc == GT_OK && s) {
        int64_t v;
        if (gt_parse_int64(s, 1, 1000, &v, "limit", NULL) != GT_OK)
            rc = gt_error_setf(&r->err, GT_EINVAL, "limit",
                               "limit: \"%s\" is not a number from 1 to 1000", s);
        else
            *limit = (size_t)v;
    }
    free(s);
    return rc;
}

/* ---------- secrets ---------- */

static gt_err key_get(req *r, bool create, gt_key **key)
{
    gt_api *a = r->api;
    if (a->key == NULL) {
        gt_error e = {0};
        if (create && !a->d.key_file_explicit && !gt_file_exists(a->d.key_file)) {
            if (gt_key_generate(a->d.key_file, &e) != GT_OK)
                return gt_error_set(&r->err, e.code, "%s", e.message);
            gt_warn("created secrets key file %s; back it up: secrets cannot be read without it",
                    a->d.key_file);
        }
        a->key = gt_key_load(a->d.key_file, &e);
        if (a->key == NULL)
            return gt_error_set(&r->err, e.code == GT_ENOTFOUND ? GT_ECRYPTO : e.code, "%s",
                                e.message);
    }
    *key = a->key;
    return GT_OK;
}

/* Decrypts secret `name`; *plain is wiped and freed by the caller. */
static gt_err secret_open(req *r, const char *name, const char *field, char **plain, size_t *len)
{
    cJSON *doc = NULL;
    gt_key *key = NULL;
    gt_error e = {0};
    gt_err rc;
    char *body = NULL;
    rc = gt_store_get(r->api->d.store, "secrets", name, &body, NULL, &e);
    if (rc == GT_ENOTFOUND) {
        rc = gt_error_setf(&r->err, GT_EINVAL, field, "%s: secret \"%s\" does not exist", field, name);
        goto done;
    }
    if (rc != GT_OK) {
        gt_error_set(&r->err, rc, "%s", e.message);
        goto done;
    }
    if ((rc = key_get(r, false, &key)) != GT_OK)
        goto done;
    doc = cJSON_Parse(body);
    const char *sealed = NULL, *key_id = NULL;
    gt_json_opt_str(doc, "$", "sealed", &sealed, NULL);
    gt_json_opt_str(doc, "$", "key_id", &key_id, NULL);
    char fp[17];
    gt_key_fingerprint(key, fp);
    if (key_id && strcmp(key_id, fp) != 0) {
        rc = gt_error_set(&r->err, GT_ECRYPTO,
                          "secret \"%s\" was encrypted with another key (key id %s); the key file "
                          "%s has key id %s", name, key_id, r->api->d.key_file, fp);
        goto done;
    }
    if ((rc = gt_secret_open(key, name, sealed ? sealed : "", plain, len, &e)) != GT_OK)
        gt_error_set(&r->err, rc, "secret \"%s\": %s", name, e.message);
done:
    cJSON_Delete(doc);
    free(body);
    return rc;
}

/* Wipes a secret's "value" in doc (a request body or a copy of it) before it is freed. */
static void wipe_value(cJSON *doc)
{
    cJSON *v = cJSON_GetObjectItemCaseSensitive(doc, "value");
    if (cJSON_IsString(v))
        gt_wipe(v->valuestring, strlen(v->valuestring));
}

/* Replaces "value" in a secret document with "sealed" and "key_id". */
static gt_err seal_value(req *r, cJSON *doc)
{
    cJSON *v = cJSON_GetObjectItemCaseSensitive(doc, "value");
    if (!cJSON_IsString(v))
        return GT_OK;
    gt_key *key = NULL;
    gt_err rc = key_get(r, true, &key);
    char *sealed = NULL;
    gt_error e = {0};
    const char *name = doc_str(doc, "name"); /* bound into the seal (validated by now) */
    if (rc == GT_OK && (rc = gt_secret_seal(key, name, v->valuestring, strlen(v->valuestring),
                                            &sealed, &e)) != GT_OK)
        gt_error_set(&r->err, rc, "%s", e.message);
    gt_wipe(v->valuestring, strlen(v->valuestring));
    cJSON_DeleteItemFromObjectCaseSensitive(doc, "value");
    if (rc == GT_OK) {
        char fp[17];
        gt_key_fingerprint(key, fp);
        gt_json_set_str(doc, "sealed", sealed);
        gt_json_set_str(doc, "key_id", fp);
    }
    free(sealed);
    return rc;
}

/* ---------- references between resources ---------- */

static gt_err check_refs(req *r, const gt_model_kind *k, const cJSON *doc)
{
    const char *s = NULL;
    gt_err rc = GT_OK;
    if (k == &gt_model_service) {
        if (gt_json_opt_str(doc, "$", "repository", &s, NULL) == GT_OK && s &&
            (rc = must_exist(r, &gt_model_repository, s, "$.repository")) != GT_OK)
            return rc;
        s = NULL;
        if (gt_json_opt_str(doc, "$", "decorator", &s, NULL) == GT_OK && s &&
            (rc = must_exist(r, &gt_model_decorator, s, "$.decorator")) != GT_OK)
            return rc;
        const cJSON *b;
        int i = 0;
        cJSON_ArrayForEach(b, cJSON_GetObjectItemCaseSensitive(doc, "secrets")) {
            char field[64];
            snprintf(field, sizeof field, "$.secrets[%d].name", i++);
            const char *name = NULL;
            gt_json_opt_str(b, "$", "name", &name, NULL);
            if (name && (rc = must_exist(r, &gt_model_secret, name, field)) != GT_OK)
                return rc;
        }
        i = 0;
        cJSON_ArrayForEach(b, cJSON_GetObjectItemCaseSensitive(doc, "allowed_secrets")) {
            char field[64];
            snprintf(field, sizeof field, "$.allowed_secrets[%d]", i++);
            if (cJSON_IsString(b) && (rc = must_exist(r, &gt_model_secret, b->valuestring,
                                                      field)) != GT_OK)
                return rc;
        }
    } else if (k == &gt_model_repository) {
        if (gt_json_opt_str(doc, "$", "private_key_name", &s, NULL) == GT_OK && s &&
            (rc = must_exist(r, &gt_model_secret, s, "$.private_key_name")) != GT_OK)
            return rc;
    }
    return GT_OK;
}

typedef struct users_ctx {
    const char *singular;   /* of the collection walked */
    const char *name;       /* the resource referred to */
    bool in_secrets;        /* look in the document's "secrets" bindings */
    gt_buf *users;
} users_ctx;

static bool add_user(void *arg, const gt_store_item *it)
{
    users_ctx *u = arg;
    bool uses = !u->in_secrets;
    if (u->in_secrets) {
        cJSON *doc = cJSON_Parse(it->body);
        const cJSON *b;
        cJSON_ArrayForEach(b, cJSON_GetObjectItemCaseSensitive(doc, "secrets")) {
            const cJSON *n = cJSON_GetObjectItemCaseSensitive(b, "name");
            uses |= cJSON_IsString(n) && strcmp(n->valuestring, u->name) == 0;
        }
        cJSON_ArrayForEach(b, cJSON_GetObjectItemCaseSensitive(doc, "allowed_secrets"))
            uses |= cJSON_IsString(b) && strcmp(b->valuestring, u->name) == 0;
        cJSON_Delete(doc);
    }
    if (uses)
        gt_buf_printf(u->users, "%s%s %s", u->users->len ? ", " : "", u->singular, it->id);
    return true;
}

/* Appends to users the names of `coll` documents that refer to name. */
static gt_err users_of(req *r, const char *coll, const char *field, const char *name,
                       bool in_secrets, gt_buf *users)
{
    users_ctx u = {gt_model_find(coll)->singular, name, in_secrets, users};
    return gt_store_each(r->api->d.store, coll, in_secrets ? NULL : field, in_secrets ? NULL : name,
                         add_user, &u, &r->err);
}

static gt_err check_unused(req *r, const gt_model_kind *k, const char *name)
{
    gt_buf users = {0};
    gt_err rc = GT_OK;
    if (k == &gt_model_repository)
        rc = users_of(r, "services", "repository", name, false, &users);
    else if (k == &gt_model_decorator)
        rc = users_of(r, "services", "decorator", name, false, &users);
    else if (k == &gt_model_secret) {
        rc = users_of(r, "repositories", "private_key_name", name, false, &users);
        if (rc == GT_OK)
            rc = users_of(r, "services", NULL, name, true, &users);
    }
    if (rc == GT_OK && users.len)
        rc = gt_error_set(&r->err, GT_ECONFLICT, "%s \"%s\" is still used by %s; delete or change "
                          "those first", k->singular, name, users.data);
    gt_buf_free(&users);
    return rc;
}

/* ---------- generic resource handlers ---------- */

static const char *const server_fields[] = {"created_at", "updated_at", "revision", NULL};

static gt_err create_resource(req *r)
{
    const gt_model_kind *k = r->kind;
    cJSON *doc = cJSON_Duplicate(r->body, 1);
    char *text = NULL;
    gt_err rc;
    if ((rc = k->validate(doc, &r->err)) != GT_OK)
        goto done;
    if (k == &gt_model_secret && !cJSON_IsString(cJSON_GetObjectItemCaseSensitive(doc, "value"))) {
        rc = gt_error_setf(&r->err, GT_EINVAL, "$.value", "$.value: is required");
        goto done;
    }
    if ((rc = check_refs(r, k, doc)) != GT_OK || (rc = seal_value(r, doc)) != GT_OK)
        goto done;
    char ts[40];
    now_str(ts, sizeof ts);
    gt_json_set_str(doc, "created_at", ts);
    gt_json_set_str(doc, "updated_at", ts);
    const char *name = cJSON_GetObjectItemCaseSensitive(doc, "name")->valuestring;
    text = gt_json_print(doc);
    int64_t rev = 0;
    gt_error e = {0};
    rc = gt_store_put(r->api->d.store, k->plural, name, text, GT_REV_NONE, &rev, &e);
    if (rc == GT_ECONFLICT)
        gt_error_setf(&r->err, rc, "$.name", "%s \"%s\" already exists", k->singular, name);
    else if (rc != GT_OK)
        gt_error_set(&r->err, rc, "%s", e.message);
    else
        reply(r, 201, public_view(k, text, rev));
done:
    free(text);
    wipe_value(doc); /* when refused before seal_value took it */
    cJSON_Delete(doc);
    return rc;
}

static gt_err get_one(req *r, const gt_model_kind *k, const char *coll, const char *what,
                      const char *id)
{
    cJSON *doc = NULL;
    int64_t rev = 0;
    gt_err rc = load(r, coll, what, id, &doc, &rev);
    if (rc == GT_OK)
        reply(r, 200, public_doc(k, doc, rev));
    return rc;
}

static gt_err get_resource(req *r)
{
    return get_one(r, r->kind, r->kind->plural, r->kind->singular, r->params[1]);
}

static void add_page(cJSON *out, gt_store_page *page, const gt_model_kind *k,
                     const char *const *drop)
{
    cJSON *items = cJSON_AddArrayToObject(out, "items");
    for (size_t i = 0; i < page->n; i++) {
        cJSON *v = public_view(k, page->items[i].body, page->items[i].rev);
        for (size_t j = 0; drop && drop[j]; j++)
            cJSON_DeleteItemFromObjectCaseSensitive(v, drop[j]);
        cJSON_AddItemToArray(items, v);
    }
    gt_json_set(out, "next_cursor", page->next_cursor ? cJSON_CreateString(page->next_cursor)
                                                      : cJSON_CreateNull());
}

static gt_err list_resources(req *r)
{
    static const char *const known[] = {"limit", "cursor", "order", NULL};
    size_t limit = 100;
    char *cursor = NULL;
    bool desc = false;
    gt_store_page page = {0};
    gt_err rc;
    if ((rc = query_limit(r, known, &limit)) != GT_OK ||
        (rc = query_order(r, known, &desc)) != GT_OK ||
        (rc = query_get(r, known, "cursor", &cursor)) != GT_OK)
        goto done;
    gt_error e = {0};
    if ((rc = gt_store_query_order(r->api->d.store, r->kind->plural, NULL, NULL, cursor, limit, desc,
                                   &page, &e)) != GT_OK) {
        gt_error_set(&r->err, rc, "%s", e.message);
        goto done;
    }
    cJSON *out = cJSON_CreateObject();
    add_page(out, &page, r->kind, NULL);
    reply(r, 200, out);
done:
    gt_store_page_clear(&page);
    free(cursor);
    return rc;
}

/* RFC 7386 merge patch of patch into target. */
static void merge_patch(cJSON *target, const cJSON *patch)
{
    const cJSON *p;
    cJSON_ArrayForEach(p, patch) {
        if (cJSON_IsNull(p)) {
            cJSON_DeleteItemFromObjectCaseSensitive(target, p->string);
        } else if (cJSON_IsObject(p) &&
                   cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(target, p->string))) {
            merge_patch(cJSON_GetObjectItemCaseSensitive(target, p->string), p);
        } else {
            gt_json_set(target, p->string, cJSON_Duplicate(p, 1));
        }
    }
}

static gt_err update_resource(req *r)
{
    const gt_model_kind *k = r->kind;
    cJSON *stored = NULL, *doc = NULL;
    char *text = NULL;
    int64_t rev = 0;
    gt_err rc;
    const cJSON *nm = cJSON_GetObjectItemCaseSensitive(r->body, "name");
    if (nm && (!cJSON_IsString(nm) || strcmp(nm->valuestring, r->params[1]) != 0)) {
        rc = gt_error_setf(&r->err, GT_EINVAL, "$.name", "$.name: a %s cannot be renamed",
                           k->singular);
        goto done;
    }
    if ((rc = load(r, k->plural, k->singular, r->params[1], &stored, &rev)) != GT_OK)
        goto done;
    /* Validate the user's fields as they will be after the patch. */
    doc = cJSON_Duplicate(stored, 1);
    for (size_t i = 0; server_fields[i]; i++)
        cJSON_DeleteItemFromObjectCaseSensitive(doc, server_fields[i]);
    for (size_t i = 0; k->hidden[i]; i++)
        cJSON_DeleteItemFromObjectCaseSensitive(doc, k->hidden[i]);
    cJSON_DeleteItemFromObjectCaseSensitive(doc, "key_id");
    merge_patch(doc, r->body);
    if ((rc = k->validate(doc, &r->err)) != GT_OK || (rc = check_refs(r, k, doc)) != GT_OK ||
        (rc = seal_value(r, doc)) != GT_OK)
        goto done;
    /* Keep what the server owns: the sealed value when no new one came, created_at. */
    static const char *const keep[] = {"sealed", "key_id", "created_at", NULL};
    for (size_t i = 0; keep[i]; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(stored, keep[i]);
        if (v && !cJSON_GetObjectItemCaseSensitive(doc, keep[i]))
            gt_json_set(doc, keep[i], cJSON_Duplicate(v, 1));
    }
    char ts[40];
    now_str(ts, sizeof ts);
    gt_json_set_str(doc, "updated_at", ts);
    text = gt_json_print(doc);
    gt_error e = {0};
    int64_t nrev = 0;
    rc = gt_store_put(r->api->d.store, k->plural, r->params[1], text, rev, &nrev, &e);
    if (rc == GT_ECONFLICT)
        gt_error_set(&r->err, rc, "%s \"%s\" was changed by someone else meanwhile; try again",
                     k->singular, r->params[1]);
    else if (rc != GT_OK)
        gt_error_set(&r->err, rc, "%s", e.message);
    else
        reply(r, 200, public_view(k, text, nrev));
done:
    free(text);
    wipe_value(doc);
    cJSON_Delete(doc);
    cJSON_Delete(stored);
    return rc;
}

static gt_err delete_resource(req *r)
{
    const gt_model_kind *k = r->kind;
    gt_err rc = check_unused(r, k, r->params[1]);
    if (rc != GT_OK)
        return rc;
    gt_error e = {0};
    rc = gt_store_delete(r->api->d.store, k->plural, r->params[1], GT_REV_ANY, &e);
    if (rc == GT_ENOTFOUND)
        gt_error_set(&r->err, rc, "%s \"%s\" not found", k->singular, r->params[1]);
    else if (rc != GT_OK)
        gt_error_set(&r->err, rc, "%s", e.message);
    else {
        cJSON *out = cJSON_CreateObject();
        gt_json_set_str(out, "deleted", r->params[1]);
        gt_json_set_str(out, "kind", k->singular);
        reply(r, 200, out);
    }
    return rc;
}

/* ---------- executions ---------- */

#define CANCELS GT_API_CANCELS

/* Every write of an execution goes through the lifecycle: the move is checked against
 * its table and stored on the revision read, fenced by this process's lease if it has
 * one. */
static gt_err move(req *r, cJSON *ex, int64_t *rev, const char *to, gt_actor who)
{
    const char *id = cJSON_GetObjectItemCaseSensitive(ex, "id")->valuestring;
    gt_error e = {0};
    gt_err rc = gt_lifecycle_store(r->api->d.store, ex, rev, to, who, r->api->d.fence, &e);
    if (rc != GT_OK)
        gt_error_set(&r->err, rc, "%s", e.message);
    /* nothing to cancel any more; a read first, since a delete is a (synced) write */
    if (rc == GT_OK && gt_execution_state_terminal(to) && gt_api_cancel_requested(r->api, id))
        gt_store_delete(r->api->d.store, CANCELS, id, GT_REV_ANY, NULL);
    return rc;
}

/* Start time of a process in clock ticks since boot (field 22 of /proc/PID/stat),
 * so a recycled pid is not mistaken for the gantry process that owned a run. */
static long long proc_start(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "re");
    if (f == NULL)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')');
    if (p == NULL)
        return -1;
    long long v = -1;
    /* after ") " come fields 3..; starttime is field 22 */
    int field = 2;
    for (const char *s = p + 1; *s && field < 22; s++)
        if (*s == ' ' && ++field == 22)
            v = strtoll(s + 1, NULL, 10);
    return v;
}

/* A process id recorded on a stored document: > 1 and a valid pid, else 0 (never 0, -1
 * or a group: kill() on those would reach this very process or every process). */
static pid_t doc_pid(const cJSON *ex, const char *key)
{
    int64_t v = gt_json_member_i64(ex, key, 0);
    return v > 1 && v <= INT32_MAX ? (pid_t)v : 0;
}

static bool owner_alive(const cJSON *ex)
{
    pid_t pid = doc_pid(ex, "owner_pid");
    int64_t start = gt_json_member_i64(ex, "owner_start", -2);
    if (pid == 0 || start < 0)
        return false;
    if (kill(pid, 0) != 0 && errno == ESRCH)
        return false;
    return proc_start(pid) == start;
}

/* Kills the process group a dead owner left behind, if it is still the same one. */
static void kill_orphan(const cJSON *ex)
{
    pid_t pid = doc_pid(ex, "child_pid");
    int64_t start = gt_json_member_i64(ex, "child_start", -2);
    if (pid != 0 && start >= 0 && proc_start(pid) == start)
        kill(-pid, SIGKILL);
}

typedef struct started {
    req *r;
    cJSON *ex;
    int64_t *rev;
} started;

/* Records the child's pid on the execution, for kill_orphan. */
static void on_child_start(int64_t pid, void *arg)
{
    started *s = arg;
    gt_json_set_num(s->ex, "child_pid", (double)pid);
    gt_json_set_num(s->ex, "child_start", (double)proc_start((pid_t)pid));
    if (move(s->r, s->ex, s->rev, "running", GT_ACTOR_WORKER) != GT_OK)
        gt_warn("execution: could not record the child's pid; a crash would orphan it");
}

/* Sets ex's terminal fields from a run result (or an error message); the state to
 * move to is the result's (or `state`), and is returned (a copy: the caller frees). */
static char *finish_execution(cJSON *ex, cJSON *result, const char *state, const char *error)
{
    char *to = NULL;
    if (result) {
        const cJSON *rs = cJSON_GetObjectItemCaseSensitive(result, "state");
        to = gt_xstrdup(cJSON_IsString(rs) ? rs->valuestring : "failed");
        cJSON_DeleteItemFromObjectCaseSensitive(result, "state");
        cJSON *it = result->child;
        while (it) {
            cJSON *next = it->next;
            /* cJSON frees the item's own key when it is re-keyed: pass a copy */
            char *key = gt_xstrdup(it->string);
            gt_json_set(ex, key, cJSON_DetachItemViaPointer(result, it));
            free(key);
            it = next;
        }
    } else {
        to = gt_xstrdup(state);
        gt_json_set_str(ex, "error", error);
        char ts[40];
        now_str(ts, sizeof ts);
        gt_json_set_str(ex, "finished_at", ts);
    }
    static const char *const owner[] = {"owner_pid", "owner_start", "child_pid", "child_start",
                                        NULL};
    for (size_t i = 0; owner[i]; i++)
        cJSON_DeleteItemFromObjectCaseSensitive(ex, owner[i]);
    return to;
}

typedef struct reap_ctx {
    gt_api *api;
    bool accepted;          /* the pass over "accepted" (else "running") */
    int reaped;
} reap_ctx;

/* Reaps one execution whose owning process on this machine is gone. */
static bool reap_one_local(void *arg, const gt_store_item *it)
{
    reap_ctx *c = arg;
    gt_api *api = c->api;
    cJSON *ex = cJSON_Parse(it->body);
    const cJSON *runner = cJSON_GetObjectItemCaseSensitive(ex, "runner");
    const char *mine = api->d.runner_name ? api->d.runner_name : "local";
    if (ex == NULL || !cJSON_IsString(cJSON_GetObjectItemCaseSensitive(ex, "id")) ||
        !cJSON_IsString(runner) || strcmp(runner->valuestring, mine) != 0 || owner_alive(ex)) {
        cJSON_Delete(ex);
        return true;
    }
    req r = {.api = api};
    int64_t rev = it->rev;
    bool again = c->accepted && api->d.dispatch != NULL;
    char *to = NULL;
    if (again) {
        /* never started: safe to run, now owned by this process */
        gt_json_set_num(ex, "owner_pid", (double)getpid());
        gt_json_set_num(ex, "owner_start", (double)proc_start(getpid()));
        to = gt_xstrdup("accepted");
    } else {
        kill_orphan(ex);
        to = finish_execution(ex, NULL, "lost",
                              "the gantry process running it ended before it finished");
    }
    if (move(&r, ex, &rev, to, GT_ACTOR_REAPER) == GT_OK) {
        if (again && api->d.dispatch(api->d.dispatch_arg, ex, NULL) == GT_OK)
            gt_warn("execution %s dispatched again: its controller process is gone", it->id);
        else if (!again)
            gt_warn("execution %s marked lost: its gantry process is gone", it->id);
        c->reaped++;
    }
    free(to);
    cJSON_Delete(ex);
    return true;
}

int gt_api_reap_local(gt_api *api)
{
    reap_ctx c = {.api = api, .accepted = true};
    gt_store_each(api->d.store, EXECUTIONS, "state", "accepted", reap_one_local, &c, NULL);
    c.accepted = false;
    gt_store_each(api->d.store, EXECUTIONS, "state", "running", reap_one_local, &c, NULL);
    return c.reaped;
}

static void wipe_strv(gt_strv *v)
{
    for (size_t i = 0; i < v->n; i++)
        gt_wipe(v->v[i], strlen(v->v[i]));
    gt_strv_free(v);
}

/* Decrypts the service's and the request's secret bindings into "VAR=value". */
static gt_err bind_secrets(req *r, const cJSON *lists[2], gt_strv *env)
{
    static const char *paths[2] = {"service.secrets", "$.secrets"};
    for (int l = 0; l < 2; l++) {
        const cJSON *b;
        int i = 0;
        /* again at run time: documents stored before a check existed are not trusted */
        gt_err vrc = gt_service_check_secrets(lists[l], paths[l], &r->err);
        if (vrc != GT_OK)
            return vrc;
        cJSON_ArrayForEach(b, lists[l]) {
            char field[64];
            snprintf(field, sizeof field, "%s[%d].name", paths[l], i++);
            const char *name = doc_str(b, "name"), *target = doc_str(b, "target");
            if (name == NULL || target == NULL)
                return gt_error_setf(&r->err, GT_EINVAL, field, "%s: a secret binding needs a name "
                                     "and a target", field);
            char *plain = NULL;
            size_t len = 0;
            gt_err rc = secret_open(r, name, field, &plain, &len);
            if (rc != GT_OK)
                return rc;
            gt_strv_push_owned(env, gt_xasprintf("%s=%s", target, plain));
            gt_secret_wipe_free(plain, len);
        }
    }
    return GT_OK;
}

/* Inputs from --set arrive as strings; where the decorator declares a property as
 * a number, integer, boolean, array or object, a string that parses as JSON of
 * another type is replaced by that value (the schema then checks it). */
static void coerce_inputs(const cJSON *schema, cJSON *inputs)
{
    const cJSON *props = cJSON_GetObjectItemCaseSensitive(schema, "properties");
    for (cJSON *in = inputs->child, *next; in; in = next) {
        next = in->next;
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(props, in->string);
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(p, "type");
        if (!cJSON_IsString(in) || !cJSON_IsString(type) ||
            strcmp(type->valuestring, "string") == 0 || strcmp(type->valuestring, "null") == 0)
            continue;
        cJSON *v = cJSON_Parse(in->valuestring);
        if (v == NULL || cJSON_IsString(v)) {
            cJSON_Delete(v);
            continue;
        }
        cJSON_ReplaceItemInObjectCaseSensitive(inputs, in->string, v);
    }
}

/* Secrets and the repository key a run needs, decrypted. */
typedef struct run_secrets {
    gt_strv env;        /* "VAR=value" */
    char *ssh_key;
    size_t ssh_len;
} run_secrets;

static void run_secrets_clear(run_secrets *s)
{
    wipe_strv(&s->env);
    if (s->ssh_key)
        gt_secret_wipe_free(s->ssh_key, s->ssh_len);
    s->ssh_key = NULL;
}

/* A run request binds only secrets its service grants (its own bindings' and its
 * allowed_secrets): running a service must not read every stored secret. GT_EPERM
 * naming the secret and the service; a secret that does not exist is GT_EINVAL. */
static gt_err check_grants(req *r, const cJSON *svc, const cJSON *bindings)
{
    const cJSON *b;
    int i = 0;
    cJSON_ArrayForEach(b, bindings) {
        char field[64];
        snprintf(field, sizeof field, "$.secrets[%d].name", i++);
        const char *name = doc_str(b, "name"), *svc_name = doc_str(svc, "name");
        if (name == NULL || gt_service_grants_secret(svc, name))
            continue;
        gt_err rc = must_exist(r, &gt_model_secret, name, field);
        if (rc == GT_OK)
            rc = gt_error_setf(&r->err, GT_EPERM, field,
                               "%s: secret \"%s\" is not granted to runs of service \"%s\" (an "
                               "admin lists it in the service's allowed_secrets)", field, name,
                               svc_name ? svc_name : "?");
        return rc;
    }
    return GT_OK;
}

static gt_err open_run_secrets(req *r, const cJSON *svc, const cJSON *repo,
                               const cJSON *bindings, run_secrets *out)
{
    const cJSON *lists[2] = {cJSON_GetObjectItemCaseSensitive(svc, "secrets"), bindings};
    gt_err rc = check_grants(r, svc, bindings); /* again: a grant may be gone since */
    if (rc == GT_OK)
        rc = bind_secrets(r, lists, &out->env);
    const cJSON *pk = cJSON_GetObjectItemCaseSensitive(repo, "private_key_name");
    if (rc == GT_OK && cJSON_IsString(pk))
        rc = secret_open(r, pk->valuestring, "repository.private_key_name", &out->ssh_key,
                         &out->ssh_len);
    return rc;
}

static int64_t doc_attempt(const cJSON *ex)
{
    int64_t n = gt_json_member_i64(ex, "attempt", 1);
    return n >= 1 && n <= 1000000 ? n : 1;
}

/* How long the end of a run is retried while the store fails. */
#define END_RETRY_MS (10 * 60 * 1000)

static bool fenced(const gt_api *a)
{
    return a->d.cancel && *a->d.cancel == GT_CANCEL_KILL;
}

/* Stores the end of a run. The outcome is known, and the message that brought the run is
 * acked only once it is durable: keep trying while the store fails (busy, unreachable),
 * with a backoff; stop on a conflict or a refusal (a reaper or a cancel moved it: the
 * record is theirs now) or when this process is fenced out. */
static gt_err record_end(req *r, cJSON *ex, int64_t *rev, const char *to)
{
    const char *id = cJSON_GetObjectItemCaseSensitive(ex, "id")->valuestring;
    int64_t wait = 100, until = gt_mono_ms() + END_RETRY_MS;
    for (;;) {
        gt_error_clear(&r->err);
        gt_err rc = move(r, ex, rev, to, GT_ACTOR_WORKER);
        if (rc == GT_OK || rc == GT_ECONFLICT || rc == GT_EPERM || fenced(r->api) ||
            gt_mono_ms() >= until)
            return rc;
        gt_warn("execution %s: %s; retrying in %lld ms", id, r->err.message, (long long)wait);
        struct timespec ts = {wait / 1000, (wait % 1000) * 1000000L};
        nanosleep(&ts, NULL);
        wait = wait * 2 > 5000 ? 5000 : wait * 2;
    }
}

/* Replaces the run's secret values and repository key lines by "***" in what it
 * printed and in its error (mask.c); the unmasked text is wiped. */
static void mask_result(cJSON *result, gt_error *e, const run_secrets *secrets)
{
    gt_mask *m = gt_mask_new(secrets->env.v, secrets->ssh_key);
    static const char *const texts[] = {"stdout", "stderr", "error", NULL};
    for (size_t i = 0; texts[i] && !gt_mask_empty(m); i++) {
        cJSON *t = cJSON_GetObjectItemCaseSensitive(result, texts[i]);
        if (!cJSON_IsString(t))
            continue;
        char *masked = gt_mask_apply(m, t->valuestring);
        gt_wipe(t->valuestring, strlen(t->valuestring));
        cJSON_ReplaceItemInObjectCaseSensitive(result, texts[i], cJSON_CreateString(masked));
        free(masked);
    }
    if (!gt_mask_empty(m) && e->message[0]) {
        char *masked = gt_mask_apply(m, e->message);
        snprintf(e->message, sizeof e->message, "%s", masked);
        free(masked);
    }
    gt_mask_free(&m);
}

/* Runs an accepted execution to its end and records every transition. ex and *rev
 * are the stored execution; secrets may be NULL (they are opened here then). */
static gt_err execute(req *r, cJSON *ex, int64_t *rev, const cJSON *svc, const cJSON *repo,
                      run_secrets *secrets)
{
    gt_api *a = r->api;
    run_secrets own = {0};
    cJSON *result = NULL;
    char *to = NULL;
    gt_err rc;
    const char *id = cJSON_GetObjectItemCaseSensitive(ex, "id")->valuestring;
    gt_json_set_num(ex, "owner_pid", (double)getpid());
    gt_json_set_num(ex, "owner_start", (double)proc_start(getpid()));
    if (secrets == NULL) {
        secrets = &own;
        gt_error_clear(&r->err);
        if (open_run_secrets(r, svc, repo, cJSON_GetObjectItemCaseSensitive(ex, "secret_bindings"),
                             secrets) != GT_OK) {
            /* a secret that cannot be opened now is this execution's failure */
            to = finish_execution(ex, NULL, "failed", r->err.message);
            gt_error_clear(&r->err);
            rc = record_end(r, ex, rev, to);
            goto done;
        }
    }
    char ts[40];
    now_str(ts, sizeof ts);
    gt_json_set_str(ex, "started_at", ts);
    if ((rc = move(r, ex, rev, "running", GT_ACTOR_WORKER)) != GT_OK) {
        r->start_raced = rc == GT_ECONFLICT;
        goto done;
    }
    started st = {.r = r, .ex = ex, .rev = rev};
    gt_run_request rr = {
        /* A sandboxed run dies with this process (bwrap --die-with-parent ends its pid
         * namespace), so only an unsandboxed one needs its pid stored for kill_orphan:
         * one store write (and fsync) fewer per run. */
        .on_start = a->d.run->sandbox_none ? on_child_start : NULL,
        .on_start_arg = &st,
        .service = svc,
        .repository = repo,
        .inputs = cJSON_GetObjectItemCaseSensitive(ex, "inputs"),
        .secret_env = secrets->env.v,
        .ssh_key = secrets->ssh_key,
        .execution_id = id,
        .attempt = doc_attempt(ex),
        .cancel = a->d.cancel,
    };
    gt_error e = {0};
    gt_err xrc = gt_run_execute(a->d.run, &rr, &result, &e);
    mask_result(result, &e, secrets); /* before anything of it is recorded */
    if (xrc != GT_OK)
        to = finish_execution(ex, NULL, "failed", e.message);
    else
        to = finish_execution(ex, result, NULL, NULL);
    if (fenced(a)) {
        /* this process's lease is going: the attempt is the reaper's to end */
        rc = gt_error_set(&r->err, GT_ECONFLICT, "execution %s: fenced out; not recorded", id);
        goto done;
    }
    rc = record_end(r, ex, rev, to);
done:
    free(to);
    run_secrets_clear(&own);
    cJSON_Delete(result);
    return rc;
}

static gt_err execute_once(gt_api *api, const char *execution_id, int64_t attempt, bool *raced,
                           gt_error *err)
{
    req r = {.api = api};
    cJSON *ex = NULL, *svc = NULL, *repo = NULL;
    int64_t rev = 0;
    char *to = NULL;
    gt_err rc = load(&r, EXECUTIONS, "execution", execution_id, &ex, &rev);
    if (rc != GT_OK)
        goto done;
    const char *st = doc_str(ex, "state"), *service = doc_str(ex, "service");
    const char *repository = doc_str(ex, "repository");
    const cJSON *at = cJSON_GetObjectItemCaseSensitive(ex, "attempt");
    bool waiting = st && (strcmp(st, "accepted") == 0 || strcmp(st, "queued") == 0);
    if (!waiting || (attempt > 0 && cJSON_IsNumber(at) && gt_json_member_i64(ex, "attempt", -1) != attempt))
        goto done; /* already taken, finished, or retried: nothing to do */
    /* recorded as this process's before anything runs */
    gt_json_set_str(ex, "runner", api->d.runner_name ? api->d.runner_name : "local");
    if (!cJSON_IsString(cJSON_GetObjectItemCaseSensitive(ex, "id")) || service == NULL ||
        repository == NULL) {
        gt_json_set_str(ex, "id", execution_id);
        to = finish_execution(ex, NULL, "failed", "the stored execution is malformed");
        rc = record_end(&r, ex, &rev, to);
        goto done;
    }
    if (load(&r, "services", "service", service, &svc, NULL) != GT_OK ||
        load(&r, "repositories", "repository", repository, &repo, NULL) != GT_OK) {
        if (r.err.code != GT_ENOTFOUND && r.err.code != GT_EINVAL) {
            rc = r.err.code; /* the store failed: try again later */
            goto done;
        }
        /* deleted between acceptance and now */
        to = finish_execution(ex, NULL, "failed", r.err.message);
        gt_error_clear(&r.err);
        rc = record_end(&r, ex, &rev, to);
        goto done;
    }
    rc = execute(&r, ex, &rev, svc, repo, NULL);
done:
    *raced = r.start_raced;
    if (rc != GT_OK)
        gt_error_set(err, r.err.code ? r.err.code : rc, "%s", r.err.message);
    free(to);
    cJSON_Delete(repo);
    cJSON_Delete(svc);
    cJSON_Delete(ex);
    return rc;
}

/* A conflict on the move to running means the record changed since it was read: a
 * cancel, a reaper, another runner (all of which the next read shows), or only the
 * dispatch sweeper announcing it again. Read it again and decide anew, rather than hand
 * the message back and hold the slot for nothing. */
gt_err gt_api_execute(gt_api *api, const char *execution_id, int64_t attempt, gt_error *err)
{
    gt_err rc;
    bool raced = false;
    for (int tries = 0;; tries++) {
        gt_error_clear(err);
        rc = execute_once(api, execution_id, attempt, &raced, err);
        if (!raced || tries == 4)
            return rc;
    }
}

/* Inputs validated against the service's decorator (defaults applied). */
static gt_err check_inputs(req *r, const cJSON *svc, cJSON *inputs)
{
    const cJSON *dname = cJSON_GetObjectItemCaseSensitive(svc, "decorator");
    if (!cJSON_IsString(dname))
        return GT_OK;
    cJSON *dec = NULL;
    gt_schema *schema = NULL;
    gt_err rc = load(r, "decorators", "decorator", dname->valuestring, &dec, NULL);
    if (rc != GT_OK)
        return rc;
    const cJSON *sch = cJSON_GetObjectItemCaseSensitive(dec, "schema");
    gt_error e = {0};
    if ((schema = gt_schema_compile(sch, &e)) == NULL) {
        rc = gt_error_set(&r->err, GT_EINTERNAL, "decorator \"%s\": %s", dname->valuestring,
                          e.message);
        goto done;
    }
    coerce_inputs(sch, inputs);
    gt_schema_apply_defaults(schema, inputs);
    e = (gt_error){0};
    if ((rc = gt_schema_validate(schema, inputs, &e)) != GT_OK) {
        /* instance paths are relative to $.inputs: re-root the field and the message */
        char field[sizeof e.field + 16];
        snprintf(field, sizeof field, "$.inputs%.255s", e.field[0] == '$' ? e.field + 1 : "");
        size_t fl = strlen(e.field);
        const char *rest = (fl && strncmp(e.message, e.field, fl) == 0) ? e.message + fl : NULL;
        if (rest)
            gt_error_setf(&r->err, rc, field, "inputs do not match decorator \"%s\": %s%s",
                          dname->valuestring, field, rest);
        else
            gt_error_setf(&r->err, rc, field, "inputs do not match decorator \"%s\": %s",
                          dname->valuestring, e.message);
    }
done:
    gt_schema_free(&schema);
    cJSON_Delete(dec);
    return rc;
}

#define IDEMPOTENCY "idempotency"

/* The execution id an Idempotency-Key stands for, for this service: *id is the one a
 * first request recorded (and *repeat set when that execution exists), or a new one now
 * recorded for the key. The key document is written before the execution, so a crash
 * in between leaves a key whose execution the next request with it creates. */
/* Idempotency keys are kept this long: a key used again later starts a new run. */
#define IDEMPOTENCY_TTL_MS ((int64_t)24 * 3600 * 1000)

/* Claims the request's Idempotency-Key for service: *id is the execution it names, new
 * (*repeat false) or the first request's (*repeat true). The same key with another
 * request body is answered 422 here (*id NULL, *repeat true). */
static gt_err claim_key(req *r, const char *service, char **id, bool *repeat)
{
    const char *k = r->idempotency_key;
    size_t n = strlen(k);
    *repeat = false;
    *id = NULL;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)k[i] < 0x20 || (unsigned char)k[i] > 0x7e)
            n = 0;
    if (n == 0 || n > 255)
        return gt_error_setf(&r->err, GT_EINVAL, "Idempotency-Key",
                             "Idempotency-Key: expected 1 to 255 printable ASCII characters");
    char *material = gt_xasprintf("%s\n%s", service, k), hex[65], fp[65];
    gt_sha256_hex(material, strlen(material), hex);
    free(material);
    /* what the request asked for: the same key with another body is a client's mistake */
    char *req_text = r->body ? cJSON_PrintUnformatted(r->body) : gt_xstrdup("{}");
    gt_sha256_hex(req_text, strlen(req_text), fp);
    gt_wipe(req_text, strlen(req_text));
    free(req_text);
    gt_err rc = GT_OK;
    for (int round = 0; round < 3; round++) {
        char *body = NULL;
        int64_t rev = GT_REV_NONE;
        gt_error e = {0};
        rc = gt_store_get(r->api->d.store, IDEMPOTENCY, hex, &body, &rev, &e);
        if (rc == GT_OK) {
            cJSON *doc = cJSON_Parse(body);
            free(body);
            const char *ex_id = doc_str(doc, "execution");
            const char *had = doc_str(doc, "request");
            int64_t at = gt_json_member_i64(doc, "created_ms", 0);
            if (ex_id == NULL || !gt_name_valid(ex_id)) {
                cJSON_Delete(doc);
                return gt_error_set(&r->err, GT_EINTERNAL, "Idempotency-Key: its record is malformed");
            }
            if (at > 0 && gt_now_ms() - at > IDEMPOTENCY_TTL_MS) {
                cJSON_Delete(doc);   /* expired: claim it anew, on the revision read */
            } else if (had && strcmp(had, fp) != 0) {
                cJSON_Delete(doc);
                reply_error(r->resp, 422, GT_EINVAL,
                            "Idempotency-Key: this key was used with a different request body "
                            "(within 24 hours); use a new key for a new request",
                            "Idempotency-Key");
                *repeat = true;
                return GT_OK;
            } else {
                *id = gt_xstrdup(ex_id);
                char *ex_body = NULL;
                *repeat = gt_store_get(r->api->d.store, EXECUTIONS, ex_id, &ex_body, NULL, NULL) ==
                          GT_OK;
                free(ex_body);   /* not stored yet: the claim's run is this request's */
                cJSON_Delete(doc);
                return GT_OK;
            }
        } else if (rc != GT_ENOTFOUND) {
            return gt_error_set(&r->err, rc, "%s", e.message);
        }
        char *new_id = gt_id_new(), ts[40];
        now_str(ts, sizeof ts);
        cJSON *doc = cJSON_CreateObject();
        gt_json_set_str(doc, "execution", new_id);
        gt_json_set_str(doc, "service", service);
        gt_json_set_str(doc, "request", fp);
        gt_json_set_str(doc, "created_at", ts);
        gt_json_set_num(doc, "created_ms", (double)gt_now_ms());
        char *text = gt_json_print(doc);
        cJSON_Delete(doc);
        e = (gt_error){0};
        rc = gt_store_put(r->api->d.store, IDEMPOTENCY, hex, text, rev, NULL, &e);
        free(text);
        if (rc == GT_OK) {
            *id = new_id;
            return GT_OK;
        }
        free(new_id);
        if (rc != GT_ECONFLICT) /* on a conflict, a concurrent twin won: read its id */
            return gt_error_set(&r->err, rc, "%s", e.message);
    }
    return gt_error_set(&r->err, GT_ECONFLICT, "Idempotency-Key: changed too often; try again");
}

/* Answers a repeated request with the execution the first one created. */
static gt_err reply_existing(req *r, const char *id)
{
    cJSON *ex = NULL;
    int64_t rev = 0;
    gt_err rc = load(r, EXECUTIONS, "execution", id, &ex, &rev);
    if (rc == GT_OK) {
        gt_json_set_bool(ex, "idempotent_replay", true);
        reply(r, 200, public_doc(NULL, ex, rev));
    }
    return rc;
}

static gt_err run_service(req *r)
{
    static const char *const fields[] = {"inputs", "secrets", NULL};
    gt_api *a = r->api;
    cJSON *svc = NULL, *repo = NULL, *inputs = NULL, *ex = NULL;
    run_secrets secrets = {0};
    char *id = NULL;
    int64_t rev = GT_REV_NONE;
    gt_err rc;

    if ((rc = gt_json_only(r->body, "$", fields, &r->err)) != GT_OK)
        goto done;
    const cJSON *in = cJSON_GetObjectItemCaseSensitive(r->body, "inputs");
    if (in && !cJSON_IsNull(in) && !cJSON_IsObject(in)) {
        rc = gt_error_setf(&r->err, GT_EINVAL, "$.inputs", "$.inputs: expected an object");
        goto done;
    }
    inputs = cJSON_IsObject(in) ? cJSON_Duplicate(in, 1) : cJSON_CreateObject();
    const cJSON *req_secrets = cJSON_GetObjectItemCaseSensitive(r->body, "secrets");
    if ((rc = gt_service_check_secrets(req_secrets, "$.secrets", &r->err)) != GT_OK ||
        (rc = load(r, "services", "service", r->params[0], &svc, NULL)) != GT_OK)
        goto done;
    const char *repo_name = doc_str(svc, "repository");
    if (repo_name == NULL || doc_str(svc, "type") == NULL) {
        rc = gt_error_set(&r->err, GT_EINTERNAL, "service \"%s\": the stored document is malformed",
                          r->params[0]);
        goto done;
    }
    if ((rc = load(r, "repositories", "repository", repo_name, &repo, NULL)) != GT_OK ||
        (rc = check_inputs(r, svc, inputs)) != GT_OK ||
        (rc = gt_run_check_inputs(svc, inputs, &r->err)) != GT_OK ||
        (rc = check_grants(r, svc, req_secrets)) != GT_OK)
        goto done;
    /* Inline runs open their secrets before anything is recorded, so a wrong key is
     * an error of the request; dispatched runs open them on the worker. */
    if (a->d.dispatch == NULL) {
        if ((rc = open_run_secrets(r, svc, repo, req_secrets, &secrets)) != GT_OK)
            goto done;
    } else {
        const cJSON *b;
        int i = 0;
        cJSON_ArrayForEach(b, req_secrets) {
            char field[64];
            snprintf(field, sizeof field, "$.secrets[%d].name", i++);
            if ((rc = must_exist(r, &gt_model_secret,
                                 cJSON_GetObjectItemCaseSensitive(b, "name")->valuestring, field)) != GT_OK)
                goto done;
        }
    }

    /* accepted: stored before anything runs, with its owner so a crash is reaped */
    if (r->idempotency_key) {
        bool repeat = false;
        if ((rc = claim_key(r, r->params[0], &id, &repeat)) != GT_OK)
            goto done;
        if (repeat) {
            if (id) /* else claim_key answered 422 */
                rc = reply_existing(r, id);
            goto done;
        }
    } else {
        id = gt_id_new();
    }
    ex = cJSON_CreateObject();
    gt_json_set_str(ex, "id", id);
    gt_json_set_str(ex, "service", r->params[0]);
    gt_json_set_str(ex, "service_type", doc_str(svc, "type"));
    gt_json_set_str(ex, "repository", repo_name);
    gt_json_set(ex, "inputs", inputs);
    inputs = NULL;
    if (cJSON_IsArray(req_secrets) && cJSON_GetArraySize(req_secrets) > 0)
        gt_json_set(ex, "secret_bindings", cJSON_Duplicate(req_secrets, 1));
    bool queued = a->d.dispatch && a->d.queued;
    gt_json_set_num(ex, "attempt", 1);
    const cJSON *pool = cJSON_GetObjectItemCaseSensitive(svc, "pool");
    gt_json_set_str(ex, "pool", cJSON_IsString(pool) && pool->valuestring[0] ? pool->valuestring
                                                                          : "default");
    gt_json_set_str(ex, "runner", a->d.runner_name ? a->d.runner_name : "local");
    gt_json_set_num(ex, "owner_pid", (double)getpid());
    gt_json_set_num(ex, "owner_start", (double)proc_start(getpid()));
    char ts[40];
    now_str(ts, sizeof ts);
    gt_json_set_str(ex, "created_at", ts);
    if (queued) /* for the dispatch sweeper: when it was last announced */
        gt_json_set_num(ex, "dispatched_at_ms", (double)gt_now_ms());
    if ((rc = move(r, ex, &rev, queued ? "queued" : "accepted", GT_ACTOR_CLIENT)) != GT_OK) {
        if (rc == GT_ECONFLICT && r->idempotency_key) { /* a twin request created it first */
            gt_error_clear(&r->err);
            rc = reply_existing(r, id);
        }
        goto done;
    }
    if (a->d.dispatch) {
        gt_error de = {0};
        if (a->d.dispatch(a->d.dispatch_arg, ex, &de) != GT_OK) {
            if (queued) {
                /* durable already: the dispatch sweeper announces it once the broker is back */
                gt_warn("execution %s: stored as queued, not announced yet: %s", id, de.message);
            } else {
                char *to = finish_execution(ex, NULL, "failed", de.message);
                rc = move(r, ex, &rev, to, GT_ACTOR_CLIENT);
                free(to);
                if (rc == GT_OK)
                    rc = gt_error_set(&r->err, de.code ? de.code : GT_EUNAVAIL, "%s", de.message);
                goto done;
            }
        }
        reply(r, 202, public_doc(NULL, ex, rev));
        ex = NULL;
        goto done;
    }
    if ((rc = execute(r, ex, &rev, svc, repo, &secrets)) != GT_OK)
        goto done;
    reply(r, 201, public_doc(NULL, ex, rev));
    ex = NULL;
done:
    run_secrets_clear(&secrets);
    cJSON_Delete(ex);
    cJSON_Delete(inputs);
    cJSON_Delete(repo);
    cJSON_Delete(svc);
    free(id);
    return rc;
}

bool gt_api_cancel_requested(gt_api *api, const char *execution_id)
{
    char *body = NULL;
    bool yes = gt_store_get(api->d.store, CANCELS, execution_id, &body, NULL, NULL) == GT_OK;
    free(body);
    return yes;
}

/* Cancels an execution: one not started yet ends at once; a running one is asked to
 * stop (its runner kills the process group and records "canceled"). */
static gt_err cancel_execution(req *r)
{
    cJSON *ex = NULL;
    int64_t rev = 0;
    gt_err rc;
    for (int attempt = 0; attempt < 3; attempt++) {
        cJSON_Delete(ex);
        ex = NULL;
        if ((rc = load(r, EXECUTIONS, "execution", r->params[0], &ex, &rev)) != GT_OK)
            goto done;
        const char *state = doc_str(ex, "state");
        if (state == NULL) {
            rc = gt_error_set(&r->err, GT_EINTERNAL, "execution %s: the stored document has no state",
                              r->params[0]);
            goto done;
        }
        if (gt_execution_state_terminal(state)) {
            rc = gt_error_set(&r->err, GT_ECONFLICT, "execution %s already ended (%s)", r->params[0],
                              state);
            goto done;
        }
        if (strcmp(state, "running") != 0) {
            char *to = finish_execution(ex, NULL, "canceled", "canceled before it started");
            gt_error_clear(&r->err);
            rc = move(r, ex, &rev, to, GT_ACTOR_CANCEL);
            free(to);
            if (rc == GT_ECONFLICT) {
                gt_error_clear(&r->err);
                continue; /* it started meanwhile: cancel it running */
            }
            if (rc != GT_OK)
                goto done;
            reply(r, 200, public_doc(NULL, ex, rev));
            ex = NULL;
            goto done;
        }
        gt_error e = {0};
        if ((rc = gt_store_put(r->api->d.store, CANCELS, r->params[0], "{}", GT_REV_ANY, NULL,
                               &e)) != GT_OK) {
            gt_error_set(&r->err, rc, "%s", e.message);
            goto done;
        }
        /* it may have ended between the read and the request: then nobody would ever
         * clear the request, so look again */
        cJSON *now = NULL;
        int64_t now_rev = 0;
        if (load(r, EXECUTIONS, "execution", r->params[0], &now, &now_rev) == GT_OK &&
            doc_str(now, "state") && gt_execution_state_terminal(doc_str(now, "state"))) {
            gt_store_delete(r->api->d.store, CANCELS, r->params[0], GT_REV_ANY, NULL);
            rc = gt_error_set(&r->err, GT_ECONFLICT, "execution %s already ended (%s)",
                              r->params[0], doc_str(now, "state"));
            cJSON_Delete(now);
            goto done;
        }
        cJSON_Delete(now);
        gt_error_clear(&r->err);
        /* a local-mode run belongs to a gantry process on this machine: tell it */
        const cJSON *runner = cJSON_GetObjectItemCaseSensitive(ex, "runner");
        pid_t pid = doc_pid(ex, "owner_pid");
        if (cJSON_IsString(runner) && strcmp(runner->valuestring, "local") == 0 && pid &&
            owner_alive(ex) && pid != getpid())
            kill(pid, SIGTERM);
        gt_json_set_bool(ex, "cancel_requested", true);
        reply(r, 202, public_doc(NULL, ex, rev));
        ex = NULL;
        goto done;
    }
    rc = gt_error_set(&r->err, GT_ECONFLICT, "execution %s changed too often; try again",
                      r->params[0]);
done:
    cJSON_Delete(ex);
    return rc;
}

static gt_err list_executions(req *r)
{
    static const char *const known[] = {"limit", "cursor", "service", "state", "full", "order", NULL};
    static const char *const bulky[] = {"stdout", "stderr", "inputs", "output", NULL};
    size_t limit = 100;
    char *cursor = NULL, *service = NULL, *state = NULL, *full = NULL;
    bool desc = false;
    gt_store_page page = {0};
    gt_err rc;
    if ((rc = query_limit(r, known, &limit)) != GT_OK ||
        (rc = query_order(r, known, &desc)) != GT_OK ||
        (rc = query_get(r, known, "cursor", &cursor)) != GT_OK ||
        (rc = query_get(r, known, "service", &service)) != GT_OK ||
        (rc = query_get(r, known, "state", &state)) != GT_OK ||
        (rc = query_get(r, known, "full", &full)) != GT_OK)
        goto done;
    if (state && !gt_execution_state_valid(state)) {
        rc = gt_error_setf(&r->err, GT_EINVAL, "state", "state: \"%s\" is not an execution state",
                           state);
        goto done;
    }
    gt_error e = {0};
    if ((rc = gt_store_query_order(r->api->d.store, EXECUTIONS,
                                   service ? "service" : state ? "state" : NULL,
                                   service ? service : state, cursor, limit, desc, &page, &e)) != GT_OK) {
        gt_error_set(&r->err, rc, "%s", e.message);
        goto done;
    }
    /* both filters: the index serves one, the other filters the page */
    if (service && state) {
        size_t k = 0;
        for (size_t i = 0; i < page.n; i++) {
            cJSON *d = cJSON_Parse(page.items[i].body);
            const cJSON *st = cJSON_GetObjectItemCaseSensitive(d, "state");
            bool keep = cJSON_IsString(st) && strcmp(st->valuestring, state) == 0;
            cJSON_Delete(d);
            if (keep) {
                page.items[k++] = page.items[i];
            } else {
                free(page.items[i].id);
                free(page.items[i].body);
            }
        }
        page.n = k;
    }
    cJSON *out = cJSON_CreateObject();
    add_page(out, &page, NULL, full && strcmp(full, "true") == 0 ? NULL : bulky);
    reply(r, 200, out);
done:
    gt_store_page_clear(&page);
    free(cursor);
    free(service);
    free(state);
    free(full);
    return rc;
}

static gt_err get_execution(req *r)
{
    cJSON *ex = NULL;
    int64_t rev = 0;
    gt_error e = {0};
    gt_err rc = load(r, EXECUTIONS, "execution", r->params[0], &ex, &rev);
    if (rc == GT_OK && (rc = gt_output_load(r->api->d.store, ex, &e)) != GT_OK)
        gt_error_set(&r->err, rc, "execution %s: reading its output: %s", r->params[0], e.message);
    if (rc == GT_OK)
        reply(r, 200, public_doc(NULL, ex, rev));
    else
        cJSON_Delete(ex);
    return rc;
}

/* ---------- the runner registry ---------- */

static bool add_public(void *arg, const gt_store_item *it)
{
    cJSON_AddItemToArray(arg, public_view(NULL, it->body, it->rev));
    return true;
}

/* All documents of coll (small collections: runners) as the API shows them. */
static cJSON *all_docs(req *r, const char *coll, const char *field, const char *value)
{
    cJSON *items = cJSON_CreateArray();
    gt_store_each(r->api->d.store, coll, field, value, add_public, items, NULL);
    return items;
}

/* Runners with their status from the age of their last heartbeat: up, late (missed
 * two), dead (the reaper took its work), draining or stopped (as they said). */
static cJSON *runners_view(req *r)
{
    cJSON *items = all_docs(r, "runners", NULL, NULL);
    int64_t now = gt_now_ms();
    cJSON *it;
    cJSON_ArrayForEach(it, items) {
        const cJSON *beat = cJSON_GetObjectItemCaseSensitive(it, "last_heartbeat_ms");
        const cJSON *state = cJSON_GetObjectItemCaseSensitive(it, "state");
        int64_t age = cJSON_IsNumber(beat) ? now - gt_json_member_i64(it, "last_heartbeat_ms", now) : -1;
        int64_t iv = gt_json_member_i64(it, "heartbeat_interval_ms", 5000);
        const char *st = cJSON_IsString(state) ? state->valuestring : "up";
        const char *status = strcmp(st, "up") != 0 ? st : age > 3 * iv ? "dead" : age > 2 * iv ? "late" : "up";
        gt_json_set_str(it, "status", status);
        gt_json_set_num(it, "heartbeat_age_ms", (double)age);
    }
    return items;
}

static gt_err list_runners(req *r)
{
    cJSON *out = cJSON_CreateObject();
    gt_json_set(out, "items", runners_view(r));
    reply(r, 200, out);
    return GT_OK;
}

/* Controllers (HA) and schedulers as they recorded themselves: role, lease epoch, last
 * renewal; one that has not renewed for two of its periods is "gone" (killed, or cut
 * off from the store). */
static cJSON *members_view(req *r, const char *coll, const char *period_key)
{
    cJSON *items = all_docs(r, coll, NULL, NULL);
    int64_t now = gt_now_ms();
    cJSON *it;
    cJSON_ArrayForEach(it, items) {
        int64_t at = gt_json_member_i64(it, "renewed_ms", 0);
        int64_t period = gt_json_member_i64(it, period_key, 5000);
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(it, "role");
        const char *st = cJSON_IsString(role) ? role->valuestring : "unknown";
        bool stopped = strcmp(st, "stopped") == 0;
        gt_json_set_str(it, "status", !stopped && now - at > 2 * period ? "gone" : st);
        gt_json_set_num(it, "renewal_age_ms", (double)(now - at));
    }
    return items;
}

/* Executions in state, counted by the store without reading one. */
static size_t count_in_state(req *r, const char *state)
{
    gt_store_filter f = {.field = "state", .eq = state};
    int64_t n = 0;
    if (gt_store_count(r->api->d.store, EXECUTIONS, &f, &n, NULL) != GT_OK)
        return 0;
    return (size_t)n;
}

static gt_err cluster_health(req *r)
{
    cJSON *runners = runners_view(r), *out = cJSON_CreateObject();
    gt_json_set(out, "controllers", members_view(r, "controllers", "lease_ttl_ms"));
    gt_json_set(out, "schedulers", members_view(r, "schedulers", "lease_ttl_ms"));
    cJSON *counts = cJSON_AddObjectToObject(out, "runners");
    int capacity = 0, in_flight = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, runners) {
        const char *status = cJSON_GetObjectItemCaseSensitive(it, "status")->valuestring;
        const cJSON *n = cJSON_GetObjectItemCaseSensitive(counts, status);
        gt_json_set_num(counts, status, (n ? n->valuedouble : 0) + 1);
        if (strcmp(status, "up") == 0) {
            const cJSON *c = cJSON_GetObjectItemCaseSensitive(it, "capacity");
            const cJSON *f = cJSON_GetObjectItemCaseSensitive(it, "in_flight");
            capacity += cJSON_IsNumber(c) ? c->valueint : 0;
            in_flight += cJSON_IsNumber(f) ? f->valueint : 0;
        }
    }
    gt_json_set_num(out, "capacity", capacity);
    gt_json_set_num(out, "in_flight", in_flight);
    cJSON *ex = cJSON_AddObjectToObject(out, "executions");
    static const char *const waiting[] = {"accepted", "queued", "running", NULL};
    for (size_t i = 0; waiting[i]; i++)
        gt_json_set_num(ex, waiting[i], (double)count_in_state(r, waiting[i]));
    gt_json_set_str(out, "status", capacity > 0 ? "ok" : "no_runner");
    gt_json_set(out, "items", runners);
    reply(r, 200, out);
    return GT_OK;
}

static gt_err cluster_activity(req *r)
{
    static const char *const bulky[] = {"stdout", "stderr", "inputs", "secret_bindings", "output",
                                        NULL};
    cJSON *out = cJSON_CreateObject();
    static const char *const now[] = {"running", "queued", NULL};
    for (size_t i = 0; now[i]; i++) {
        cJSON *l = all_docs(r, EXECUTIONS, "state", now[i]);
        cJSON *e;
        cJSON_ArrayForEach(e, l)
            for (size_t k = 0; bulky[k]; k++)
                cJSON_DeleteItemFromObjectCaseSensitive(e, bulky[k]);
        gt_json_set(out, now[i], l);
    }
    /* the 20 newest that ended: ids sort by creation time, so each state's index read
     * newest first gives its 20 newest, whatever the history's length */
    static const char *const ended[] = {"succeeded", "failed", "timed_out", "canceled", "lost", NULL};
    gt_store_item *best[20];
    size_t nbest = 0;
    gt_store_page pages[5] = {{0}};
    for (size_t i = 0; ended[i]; i++) {
        if (gt_store_query_order(r->api->d.store, EXECUTIONS, "state", ended[i], NULL, 20, true,
                                 &pages[i], NULL) != GT_OK)
            continue;
        for (size_t k = 0; k < pages[i].n; k++) {
            gt_store_item *it = &pages[i].items[k];
            size_t pos = 0;
            while (pos < nbest && strcmp(best[pos]->id, it->id) > 0)
                pos++;
            if (pos >= 20)
                break; /* older ones of this state cannot make it either */
            memmove(&best[pos + 1], &best[pos], (nbest - pos - (nbest == 20)) * sizeof *best);
            best[pos] = it;
            if (nbest < 20)
                nbest++;
        }
    }
    cJSON *recent = cJSON_CreateArray();
    for (size_t k = 0; k < nbest; k++) {
        cJSON *e = public_view(NULL, best[k]->body, best[k]->rev);
        for (size_t j = 0; bulky[j]; j++)
            cJSON_DeleteItemFromObjectCaseSensitive(e, bulky[j]);
        cJSON_AddItemToArray(recent, e);
    }
    for (size_t i = 0; i < 5; i++)
        gt_store_page_clear(&pages[i]);
    gt_json_set(out, "recent", recent);
    reply(r, 200, out);
    return GT_OK;
}

/* ---------- routing ---------- */

static const route routes[] = {
    {"GET", "/api/v1/runners", list_runners, false},
    {"GET", "/api/v1/cluster/health", cluster_health, false},
    {"GET", "/api/v1/cluster/activity", cluster_activity, false},
    {"GET", "/api/v1/executions", list_executions, false},
    {"GET", "/api/v1/executions/{id}", get_execution, false},
    {"POST", "/api/v1/services/{name}/run", run_service, true},
    {"POST", "/api/v1/executions/{id}/cancel", cancel_execution, false},
    {"GET", "/api/v1/{kind}", list_resources, false},
    {"POST", "/api/v1/{kind}", create_resource, true},
    {"GET", "/api/v1/{kind}/{name}", get_resource, false},
    {"PATCH", "/api/v1/{kind}/{name}", update_resource, true},
    {"DELETE", "/api/v1/{kind}/{name}", delete_resource, false},
};

const gt_api_route_info *gt_api_routes(void)
{
    static gt_api_route_info info[sizeof routes / sizeof routes[0] + 1];
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
        info[i] = (gt_api_route_info){routes[i].method, routes[i].pattern};
    return info;
}

/* Splits a path into at most 8 decoded segments; false when malformed. */
static bool split_path(const char *path, char *segs[8], size_t *n)
{
    *n = 0;
    if (path == NULL || path[0] != '/')
        return false;
    const char *p = path + 1;
    while (*p) {
        const char *slash = strchr(p, '/');
        size_t len = slash ? (size_t)(slash - p) : strlen(p);
        if (len == 0 || *n == 8)
            return false;
        segs[*n] = pct_decode(p, len);
        if (segs[*n] == NULL)
            return false;
        (*n)++;
        p += len + (slash ? 1 : 0);
    }
    return true;
}

/* Matches segs against pattern; fills r->params and r->kind. */
static bool match(const route *rt, char **segs, size_t n, req *r)
{
    char *pat = gt_xstrdup(rt->pattern + 1);
    char *save = NULL;
    size_t i = 0, np = 0;
    bool ok = true;
    const gt_model_kind *kind = NULL;
    for (char *t = strtok_r(pat, "/", &save); t && ok; t = strtok_r(NULL, "/", &save), i++) {
        if (i >= n)
            ok = false;
        else if (t[0] != '{')
            ok = strcmp(t, segs[i]) == 0;
        else if (strcmp(t, "{kind}") == 0)
            ok = (kind = gt_model_find(segs[i])) != NULL && strcmp(kind->plural, segs[i]) == 0;
        if (ok && t[0] == '{' && np < MAX_PARAMS)
            r->params[np++] = segs[i];
    }
    free(pat);
    if (ok && i == n) {
        r->kind = kind;
        return true;
    }
    return false;
}

void gt_api_handle(gt_api *api, const char *method, const char *path, const char *query,
                   const char *body, size_t body_len, gt_api_response *resp)
{
    gt_api_handle_key(api, method, path, query, body, body_len, NULL, resp);
}

void gt_api_handle_key(gt_api *api, const char *method, const char *path, const char *query,
                       const char *body, size_t body_len, const char *idempotency_key,
                       gt_api_response *resp)
{
    req r = {.api = api, .method = method, .query = query, .resp = resp,
             .idempotency_key = idempotency_key};
    char *segs[8] = {0};
    size_t n = 0;
    const route *found = NULL;
    bool path_known = false;
    resp->status = 0;
    resp->body = NULL;
    if (!split_path(path, segs, &n)) {
        reply_error(resp, 400, GT_EINVAL, "malformed path", NULL);
        goto done;
    }
    for (size_t i = 0; i < sizeof routes / sizeof routes[0] && !found; i++) {
        memset(r.params, 0, sizeof r.params);
        if (match(&routes[i], segs, n, &r)) {
            path_known = true;
            if (strcmp(routes[i].method, method) == 0)
                found = &routes[i];
        }
    }
    if (found == NULL) {
        if (path_known)
            reply_error(resp, 405, GT_EINVAL, "method not allowed on this path", NULL);
        else
            reply_error(resp, 404, GT_ENOTFOUND, "no such route", NULL);
        goto done;
    }
    if (found->needs_body) {
        if (body == NULL || body_len == 0) {
            if (found->handler == run_service) {
                r.body = cJSON_CreateObject();
            } else {
                reply_error(resp, 400, GT_EINVAL, "a JSON object body is required", "$");
                goto done;
            }
        } else if (gt_json_parse(body, body_len, "request body", &r.body, &r.err) != GT_OK) {
            reply_error(resp, 400, r.err.code, r.err.message, r.err.field);
            goto done;
        } else if (!cJSON_IsObject(r.body)) {
            reply_error(resp, 400, GT_EINVAL, "$: expected a JSON object", "$");
            goto done;
        }
    }
    gt_err rc = found->handler(&r);
    if (rc != GT_OK) {
        if (r.err.code == GT_OK)
            gt_error_set(&r.err, rc, "%s", gt_strerror(rc));
        reply_error(resp, gt_api_status(r.err.code), r.err.code, r.err.message, r.err.field);
    } else if (resp->body == NULL) {
        reply_error(resp, 500, GT_EINTERNAL, "handler produced no response", NULL);
    }
done:
    wipe_value(r.body); /* a secret's value, when the request carried one */
    cJSON_Delete(r.body);
    for (size_t i = 0; i < n; i++)
        free(segs[i]);
}

void gt_api_response_clear(gt_api_response *resp)
{
    cJSON_Delete(resp->body);
    resp->body = NULL;
    resp->status = 0;
}

gt_api *gt_api_new(const gt_api_deps *deps, gt_error *err)
{
    for (size_t i = 0; gt_model_kinds[i]; i++)
        for (size_t j = 0; gt_model_kinds[i]->indexes[j]; j++)
            if (gt_store_index(deps->store, gt_model_kinds[i]->plural, gt_model_kinds[i]->indexes[j],
                               err) != GT_OK)
                return NULL;
    if (gt_store_index(deps->store, EXECUTIONS, "service", err) != GT_OK ||
        gt_store_index(deps->store, EXECUTIONS, "state", err) != GT_OK)
        return NULL;
    gt_api *a = gt_xcalloc(1, sizeof *a);
    a->d = *deps;
    return a;
}

void gt_api_free(gt_api **api)
{
    if (api == NULL || *api == NULL)
        return;
    gt_key_free(&(*api)->key);
    free(*api);
    *api = NULL;
}
