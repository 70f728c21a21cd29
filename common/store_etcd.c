/* The etcd store driver (etcd 3.4+).
 *
 * Transport: etcd's JSON gateway under /v3/ (kv/range, kv/txn, lease/grant,
 * lease/revoke) over HTTP/1.1 with libcurl. Debian has no well-kept C gRPC client,
 * and the gateway is etcd's supported JSON API for the same RPCs: keys and values are
 * base64, 64-bit integers are decimal strings. One CURL easy handle per gt_store (a
 * store is used by one thread), with keep-alive and a per-request timeout; a member that
 * cannot be reached is skipped for the next, and reads are also sent again elsewhere
 * after a timeout (see call_ex).
 *
 * Layout, under P = /gantry/<cluster_id>/:
 *   P d/<coll>/<id>                      the document; its revision is etcd's mod_revision
 *                                        (cluster-wide, strictly increasing, never reused)
 *   P x/<coll>/<field>                   an index declaration: "building" or "ready"
 *   P i/<coll>/<field>/<hex(value)>/<id> an index entry (empty value), changed in the same
 *                                        Txn as its document
 *   P l/<name>                           a held lease {"holder","epoch"}, attached to an etcd
 *                                        lease, so etcd's clock expires it by deleting it
 *   P e/<name>                           the last epoch of a lease name (never leased), so
 *                                        fencing epochs never repeat
 * The value is hex-encoded so a '/' in it cannot run into the id; ids are the last
 * segment and stay raw, so keys within one value sort in id (byte) order.
 *
 * Writes read the document and the collection's index declarations, then commit one
 * Txn that compares the document's mod_revision (and that no declaration changed since
 * the read, and for a fenced write the lease key's exact value) and retries when only
 * that optimistic check failed. etcd's leases have whole-second TTLs (and a server-side
 * minimum of 1.5 election timeouts, rounded up): ttl_ms is rounded up to a second, so a
 * lease may outlive what its holder asked for, never the reverse. */
#include "store.h"

#include <curl/curl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "crypto.h"
#include "json.h"
#include "store_driver.h"
#include "store_etcd.h"
#include "util.h"

enum { MAX_RETRIES = 32, FETCH_CHUNK = 100, BUILD_PAGE = 100 };

typedef struct etcd_store {
    gt_store base;
    CURL *curl;
    struct curl_slist *headers;
    gt_strv hosts;
    size_t cur;   /* the member that answered last */
    bool tls;
    char *prefix;
    gt_buf resp;
    char curl_err[CURL_ERROR_SIZE];
    char *user;       /* etcd auth, or NULL */
    char *password;   /* kept to renew the token; never in a message */
} etcd_store;

/* ---- reply parsing (outside input) ---- */

gt_err gt_etcd__int(const cJSON *obj, const char *key, int64_t *out, gt_error *err)
{
    *out = 0;
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (it == NULL || cJSON_IsNull(it))
        return GT_OK;
    if (!cJSON_IsString(it))
        return gt_error_set(err, GT_EIO, "etcd: reply: %s: expected an integer string", key);
    gt_error why = {0};
    if (gt_parse_int64(it->valuestring, INT64_MIN, INT64_MAX, out, key, &why) != GT_OK)
        return gt_error_set(err, GT_EIO, "etcd: reply: %s", why.message);
    return GT_OK;
}

gt_err gt_etcd__parse_reply(const char *body, size_t len, cJSON **root, int64_t *revision,
                            gt_error *err)
{
    gt_error why = {0};
    *root = NULL;
    *revision = 0;
    cJSON *r = NULL;
    if (gt_json_parse(body, len, "etcd reply", &r, &why) != GT_OK)
        return gt_error_set(err, GT_EIO, "etcd: %s", why.message);
    gt_err rc = GT_OK;
    const cJSON *h = cJSON_GetObjectItemCaseSensitive(r, "header");
    if (!cJSON_IsObject(r) || !cJSON_IsObject(h)) {
        rc = gt_error_set(err, GT_EIO, "etcd: reply without a header");
        goto done;
    }
    if ((rc = gt_etcd__int(h, "revision", revision, err)) != GT_OK)
        goto done;
    if (*revision < 1)
        rc = gt_error_set(err, GT_EIO, "etcd: reply: revision %" PRId64, *revision);
done:
    if (rc != GT_OK)
        cJSON_Delete(r);
    else
        *root = r;
    return rc;
}

static gt_err b64_field(const cJSON *kv, const char *key, char **out, size_t *n, gt_error *err)
{
    *out = NULL;
    *n = 0;
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(kv, key);
    if (it == NULL || cJSON_IsNull(it)) {
        *out = gt_xstrdup("");
        return GT_OK;
    }
    if (!cJSON_IsString(it))
        return gt_error_set(err, GT_EIO, "etcd: reply: kv %s: expected base64", key);
    unsigned char *raw = NULL;
    gt_error why = {0};
    if (gt_base64_decode(it->valuestring, &raw, n, &why) != GT_OK)
        return gt_error_set(err, GT_EIO, "etcd: reply: kv %s: %s", key, why.message);
    if (memchr(raw, '\0', *n)) {
        free(raw);
        return gt_error_set(err, GT_EIO, "etcd: reply: kv %s holds a NUL byte", key);
    }
    *out = gt_xstrndup((const char *)raw, *n);
    free(raw);
    return GT_OK;
}

void gt_etcd__kvs_free(gt_etcd_kvs *kvs)
{
    if (kvs == NULL)
        return;
    for (size_t i = 0; i < kvs->n; i++) {
        free(kvs->v[i].key);
        free(kvs->v[i].value);
    }
    free(kvs->v);
    kvs->v = NULL;
    kvs->n = 0;
}

gt_err gt_etcd__range_kvs(const cJSON *rr, gt_etcd_kvs *out, gt_error *err)
{
    memset(out, 0, sizeof *out);
    if (!cJSON_IsObject(rr))
        return gt_error_set(err, GT_EIO, "etcd: reply: expected a range response");
    const cJSON *kvs = cJSON_GetObjectItemCaseSensitive(rr, "kvs");
    if (kvs == NULL || cJSON_IsNull(kvs))
        return GT_OK;
    if (!cJSON_IsArray(kvs))
        return gt_error_set(err, GT_EIO, "etcd: reply: kvs: expected an array");
    int n = cJSON_GetArraySize(kvs);
    out->v = gt_xcalloc(n > 0 ? (size_t)n : 1, sizeof *out->v);
    gt_err rc = GT_OK;
    const cJSON *kv;
    cJSON_ArrayForEach(kv, kvs)
    {
        gt_etcd_kv *k = &out->v[out->n++];
        if (!cJSON_IsObject(kv))
            return gt_error_set(err, GT_EIO, "etcd: reply: kv: expected an object");
        if ((rc = b64_field(kv, "key", &k->key, &k->key_len, err)) ||
            (rc = b64_field(kv, "value", &k->value, &k->value_len, err)) ||
            (rc = gt_etcd__int(kv, "create_revision", &k->create_revision, err)) ||
            (rc = gt_etcd__int(kv, "mod_revision", &k->mod_revision, err)) ||
            (rc = gt_etcd__int(kv, "lease", &k->lease, err)))
            return rc;
        if (k->mod_revision < 1 || k->create_revision < 1)
            return gt_error_set(err, GT_EIO, "etcd: reply: kv with revision %" PRId64,
                                k->mod_revision);
    }
    return GT_OK;
}

gt_err gt_etcd__txn_result(const cJSON *root, bool *succeeded, gt_error *err)
{
    const cJSON *ok = cJSON_GetObjectItemCaseSensitive(root, "succeeded");
    *succeeded = false;   /* the gateway omits false */
    if (ok && !cJSON_IsBool(ok))
        return gt_error_set(err, GT_EIO, "etcd: reply: succeeded: expected a boolean");
    *succeeded = cJSON_IsTrue(ok);
    const cJSON *resp = cJSON_GetObjectItemCaseSensitive(root, "responses");
    if (resp && !cJSON_IsNull(resp) && !cJSON_IsArray(resp))
        return gt_error_set(err, GT_EIO, "etcd: reply: responses: expected an array");
    return GT_OK;
}

const cJSON *gt_etcd__txn_range(const cJSON *root, size_t i)
{
    const cJSON *resp = cJSON_GetObjectItemCaseSensitive(root, "responses");
    if (!cJSON_IsArray(resp) || i > (size_t)INT32_MAX)
        return NULL;
    const cJSON *r = cJSON_GetArrayItem(resp, (int)i);
    const cJSON *rr = cJSON_GetObjectItemCaseSensitive(r, "response_range");
    return cJSON_IsObject(rr) ? rr : NULL;
}

/* The kvs of txn response i, which must be a range response. */
static gt_err txn_kvs(const cJSON *root, size_t i, gt_etcd_kvs *out, gt_error *err)
{
    const cJSON *rr = gt_etcd__txn_range(root, i);
    memset(out, 0, sizeof *out);
    if (rr == NULL)
        return gt_error_set(err, GT_EIO, "etcd: reply: txn response %zu is not a range", i);
    return gt_etcd__range_kvs(rr, out, err);
}

/* ---- transport ---- */

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
    etcd_store *s = arg;
    if (s->resp.len + size * n > ((size_t)64 << 20))
        return 0;   /* bigger than any reply this driver asks for: refuse */
    gt_buf_append(&s->resp, p, size * n);
    return size * n;
}

/* POSTs req (consumed) to /v3/<path>; *root and *rev are the parsed reply. A request
 * that never reached a member (no connection) goes to the next one; one that may have
 * been applied (timeout, connection lost mid-way, 503) is sent again elsewhere only when
 * resend says it is a read: resending a write could apply it twice or report a conflict
 * with itself, so that is GT_EUNAVAIL and the caller decides. */
static gt_err authenticate(etcd_store *s, gt_error *err);

static gt_err call_ex(etcd_store *s, const char *path, cJSON *req, bool resend, cJSON **root,
                      int64_t *rev, gt_error *err)
{
    char *text = gt_json_print(req);
    cJSON_Delete(req);
    *root = NULL;
    gt_err rc = GT_OK;
    CURLcode cc = CURLE_OK;
    long status = 0;
    bool renewed = false;
again:
    for (size_t tries = 0; tries < s->hosts.n; tries++) {
        const char *host = s->hosts.v[s->cur];
        char *url = gt_xasprintf("%s://%s/v3/%s", s->tls ? "https" : "http", host, path);
        gt_buf_free(&s->resp);
        s->curl_err[0] = '\0';
        curl_easy_setopt(s->curl, CURLOPT_URL, url);
        curl_easy_setopt(s->curl, CURLOPT_POSTFIELDS, text);
        curl_easy_setopt(s->curl, CURLOPT_POSTFIELDSIZE, (long)strlen(text));
        cc = curl_easy_perform(s->curl);
        free(url);
        status = 0;
        if (cc == CURLE_OK)
            curl_easy_getinfo(s->curl, CURLINFO_RESPONSE_CODE, &status);
        bool unsent = cc == CURLE_COULDNT_CONNECT || cc == CURLE_COULDNT_RESOLVE_HOST;
        bool maybe_applied = cc == CURLE_OPERATION_TIMEDOUT || cc == CURLE_SEND_ERROR ||
                             cc == CURLE_RECV_ERROR || cc == CURLE_GOT_NOTHING || status == 503;
        if (unsent || maybe_applied)
            s->cur = (s->cur + 1) % s->hosts.n;   /* the next call starts elsewhere */
        if (!unsent && !(maybe_applied && resend))
            break;
    }
    if (cc != CURLE_OK) {
        rc = gt_error_set(err, GT_EUNAVAIL, "etcd: %s: %s", path,
                          s->curl_err[0] ? s->curl_err : curl_easy_strerror(cc));
        goto done;
    }
    if (status != 200) {
        cJSON *e = cJSON_ParseWithLength(s->resp.data ? s->resp.data : "", s->resp.len);
        const cJSON *m = cJSON_GetObjectItemCaseSensitive(e, "message");
        const char *msg = cJSON_IsString(m) ? m->valuestring : "(no message)";
        /* etcd refuses a request with an expired token before applying it, so it is
         * safe to send again once, with a new token */
        bool expired = s->user && strstr(msg, "invalid auth token") != NULL;
        bool denied = status == 401 || status == 403 || strstr(msg, "permission denied") ||
                      strstr(msg, "authentication failed") || strstr(msg, "user name is empty");
        if (expired && !renewed && strcmp(path, "auth/authenticate") != 0) {
            cJSON_Delete(e);
            gt_error why = {0};
            if ((rc = authenticate(s, &why)) != GT_OK) {
                rc = gt_error_set(err, rc, "%s", why.message);
                goto done;
            }
            renewed = true;
            goto again;
        }
        rc = gt_error_set(err, denied ? GT_EPERM : GT_EUNAVAIL, "etcd: %s: HTTP %ld: %s", path,
                          status, msg);
        cJSON_Delete(e);
        goto done;
    }
    rc = gt_etcd__parse_reply(s->resp.data ? s->resp.data : "", s->resp.len, root, rev, err);
done:
    free(text);
    gt_buf_free(&s->resp);
    return rc;
}

static gt_err call(etcd_store *s, const char *path, cJSON *req, cJSON **root, int64_t *rev,
                   gt_error *err)
{
    bool read = strcmp(path, "kv/range") == 0;
    return call_ex(s, path, req, read, root, rev, err);
}

/* ---- request builders ---- */

static void add_b64(cJSON *o, const char *name, const void *p, size_t n)
{
    char *b = gt_base64_encode(p, n);
    gt_json_set_str(o, name, b);
    free(b);
}

static void add_i64(cJSON *o, const char *name, int64_t v)
{
    char buf[32];
    snprintf(buf, sizeof buf, "%" PRId64, v);
    gt_json_set_str(o, name, buf);
}

/* The first key after every key that starts with prefix. */
static char *prefix_end(const char *prefix, size_t *n)
{
    *n = strlen(prefix);
    char *e = gt_xstrndup(prefix, *n);
    /* prefixes here end in '/', so the last byte is never 0xff */
    e[*n - 1] = (char)(e[*n - 1] + 1);
    return e;
}

static cJSON *range_req(const char *key, size_t klen, const char *end, size_t elen,
                        int64_t limit, bool desc)
{
    cJSON *r = cJSON_CreateObject();
    add_b64(r, "key", key, klen);
    if (end)
        add_b64(r, "range_end", end, elen);
    if (limit > 0)
        add_i64(r, "limit", limit);
    if (desc) {
        gt_json_set_str(r, "sort_order", "DESCEND");
        gt_json_set_str(r, "sort_target", "KEY");
    }
    return r;
}

static cJSON *range_prefix_req(const char *prefix, int64_t limit)
{
    size_t n;
    char *end = prefix_end(prefix, &n);
    cJSON *r = range_req(prefix, strlen(prefix), end, n, limit, false);
    free(end);
    return r;
}

typedef struct txn {
    cJSON *root, *compare, *success, *failure;
} txn;

static void txn_init(txn *t)
{
    t->root = cJSON_CreateObject();
    t->compare = cJSON_AddArrayToObject(t->root, "compare");
    t->success = cJSON_AddArrayToObject(t->root, "success");
    t->failure = cJSON_AddArrayToObject(t->root, "failure");
}

/* compare target (MOD, CREATE, VALUE) result (EQUAL, LESS) against a number or bytes */
static void cmp_num(txn *t, const char *key, const char *range_end, const char *target,
                    const char *result, int64_t v)
{
    cJSON *c = cJSON_CreateObject();
    add_b64(c, "key", key, strlen(key));
    if (range_end)
        add_b64(c, "range_end", range_end, strlen(range_end));
    gt_json_set_str(c, "target", target);
    gt_json_set_str(c, "result", result);
    add_i64(c, strcmp(target, "MOD") == 0 ? "mod_revision" : "create_revision", v);
    cJSON_AddItemToArray(t->compare, c);
}

static void cmp_value(txn *t, const char *key, const char *value)
{
    cJSON *c = cJSON_CreateObject();
    add_b64(c, "key", key, strlen(key));
    gt_json_set_str(c, "target", "VALUE");
    gt_json_set_str(c, "result", "EQUAL");
    add_b64(c, "value", value, strlen(value));
    cJSON_AddItemToArray(t->compare, c);
}

static void op_put(cJSON *ops, const char *key, const char *value, int64_t lease)
{
    cJSON *p = cJSON_CreateObject();
    add_b64(p, "key", key, strlen(key));
    add_b64(p, "value", value, strlen(value));
    if (lease)
        add_i64(p, "lease", lease);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddItemToObject(o, "request_put", p);
    cJSON_AddItemToArray(ops, o);
}

static void op_del(cJSON *ops, const char *key)
{
    cJSON *d = cJSON_CreateObject();
    add_b64(d, "key", key, strlen(key));
    cJSON *o = cJSON_CreateObject();
    cJSON_AddItemToObject(o, "request_delete_range", d);
    cJSON_AddItemToArray(ops, o);
}

static void op_range(cJSON *ops, cJSON *range)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddItemToObject(o, "request_range", range);
    cJSON_AddItemToArray(ops, o);
}

/* Commits t (consumed): *ok whether the compares held; *root (caller frees) the reply. */
static gt_err txn_commit(etcd_store *s, txn *t, bool *ok, cJSON **root, int64_t *rev,
                         gt_error *err)
{
    /* a Txn of nothing but ranges is a read (a consistent snapshot of several keys) */
    bool read = cJSON_GetArraySize(t->compare) == 0;
    const cJSON *op;
    cJSON_ArrayForEach(op, t->success)
        read = read && cJSON_GetObjectItemCaseSensitive(op, "request_range") != NULL;
    cJSON_ArrayForEach(op, t->failure)
        read = read && cJSON_GetObjectItemCaseSensitive(op, "request_range") != NULL;
    gt_err rc = call_ex(s, "kv/txn", t->root, read, root, rev, err);
    t->root = NULL;
    if (rc == GT_OK && (rc = gt_etcd__txn_result(*root, ok, err)) != GT_OK) {
        cJSON_Delete(*root);
        *root = NULL;
    }
    return rc;
}

/* ---- keys ---- */

static char *doc_key(etcd_store *s, const char *coll, const char *id)
{
    return gt_xasprintf("%sd/%s/%s", s->prefix, coll, id);
}

static char *hex(const char *v)
{
    static const char digits[] = "0123456789abcdef";
    size_t n = strlen(v);
    char *h = gt_xmalloc(2 * n + 1);
    for (size_t i = 0; i < n; i++) {
        h[2 * i] = digits[(unsigned char)v[i] >> 4];
        h[2 * i + 1] = digits[(unsigned char)v[i] & 15];
    }
    h[2 * n] = '\0';
    return h;
}

static char *index_base(etcd_store *s, const char *coll, const char *field, const char *value)
{
    char *h = hex(value);
    char *k = gt_xasprintf("%si/%s/%s/%s/", s->prefix, coll, field, h);
    free(h);
    return k;
}

static char *index_key(etcd_store *s, const char *coll, const char *field, const char *value,
                       const char *id)
{
    char *base = index_base(s, coll, field, value);
    char *k = gt_xasprintf("%s%s", base, id);
    free(base);
    return k;
}

/* Index entries of body (NULL: none) for the declared fields, appended to out. */
static void index_keys(etcd_store *s, const char *coll, const char *id, const char *body,
                       const gt_strv *fields, gt_strv *out)
{
    if (body == NULL || fields->n == 0)
        return;
    cJSON *root = cJSON_Parse(body);
    for (size_t i = 0; i < fields->n; i++) {
        const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, fields->v[i]);
        if (cJSON_IsString(it))
            gt_strv_push_owned(out, index_key(s, coll, fields->v[i], it->valuestring, id));
    }
    cJSON_Delete(root);
}

static bool strv_has(const gt_strv *v, const char *s)
{
    for (size_t i = 0; i < v->n; i++)
        if (strcmp(v->v[i], s) == 0)
            return true;
    return false;
}

/* ---- document writes ---- */

typedef struct doc_state {
    bool exists;
    int64_t mod;
    char *body;
    gt_strv fields;    /* declared index fields of the collection */
    int64_t read_rev;  /* the store revision the read saw */
} doc_state;

static void doc_state_clear(doc_state *d)
{
    free(d->body);
    gt_strv_free(&d->fields);
    memset(d, 0, sizeof *d);
}

static gt_err read_doc(etcd_store *s, const char *coll, const char *key, doc_state *d,
                       gt_error *err)
{
    txn t;
    txn_init(&t);
    op_range(t.success, range_req(key, strlen(key), NULL, 0, 0, false));
    char *xp = gt_xasprintf("%sx/%s/", s->prefix, coll);
    op_range(t.success, range_prefix_req(xp, 0));
    cJSON *root = NULL;
    bool ok;
    gt_etcd_kvs doc = {0}, decl = {0};
    gt_err rc = txn_commit(s, &t, &ok, &root, &d->read_rev, err);
    if (rc == GT_OK && (rc = txn_kvs(root, 0, &doc, err)) == GT_OK &&
        (rc = txn_kvs(root, 1, &decl, err)) == GT_OK) {
        if (doc.n > 0) {
            d->exists = true;
            d->mod = doc.v[0].mod_revision;
            d->body = gt_xstrdup(doc.v[0].value);
        }
        size_t xl = strlen(xp);
        for (size_t i = 0; i < decl.n; i++)
            if (decl.v[i].key_len > xl)
                gt_strv_push(&d->fields, decl.v[i].key + xl);
    }
    gt_etcd__kvs_free(&doc);
    gt_etcd__kvs_free(&decl);
    cJSON_Delete(root);
    free(xp);
    return rc;
}

static char *lease_value(const char *holder, int64_t epoch)
{
    cJSON *o = cJSON_CreateObject();
    gt_json_set_str(o, "holder", holder);
    gt_json_set_num(o, "epoch", (double)epoch);
    char *v = gt_json_print(o);
    cJSON_Delete(o);
    return v;
}

/* A lease key's value; GT_EIO when it is not one this driver wrote. */
static gt_err lease_parse(const char *value, char **holder, int64_t *epoch, gt_error *err)
{
    cJSON *o = NULL;
    const char *h = NULL;
    gt_error why = {0};
    *holder = NULL;
    gt_err rc = gt_json_parse(value, strlen(value), "etcd lease", &o, &why);
    if (rc == GT_OK)
        rc = gt_json_str(o, "$", "holder", &h, &why);
    if (rc == GT_OK)
        rc = gt_json_int(o, "$", "epoch", epoch, &why);
    if (rc == GT_OK)
        *holder = gt_xstrdup(h);
    cJSON_Delete(o);
    if (rc != GT_OK)
        return gt_error_set(err, GT_EIO, "etcd: lease record: %s", why.message);
    return GT_OK;
}

static char *lease_key(etcd_store *s, const char *name)
{
    return gt_xasprintf("%sl/%s", s->prefix, name);
}

/* After a fenced Txn failed: GT_ECONFLICT when the fence did not hold (from the lease
 * key as the failure branch read it), GT_OK when it did (the document moved). */
static gt_err fence_verdict(const gt_store_fence *f, const cJSON *root, size_t i,
                            gt_error *err)
{
    gt_etcd_kvs kvs = {0};
    gt_err rc = txn_kvs(root, i, &kvs, err);
    if (rc != GT_OK)
        goto done;
    gt_store_lease cur = {"", 0, 0};
    char *holder = NULL;
    if (kvs.n > 0) {
        if ((rc = lease_parse(kvs.v[0].value, &holder, &cur.epoch, err)) != GT_OK)
            goto done;
        cur.holder = holder;
        cur.expires_ms = 1;   /* present: etcd has not expired it */
    }
    rc = gt_store__fence_check(f, &cur, 0, err);
    free(holder);
done:
    gt_etcd__kvs_free(&kvs);
    return rc;
}

static gt_err etcd_put(gt_store *gs, const char *coll, const char *id, const char *body,
                       int64_t expect_rev, int64_t *new_rev, const gt_store_fence *fence,
                       gt_error *err)
{
    etcd_store *s = (etcd_store *)gs;
    char *key = doc_key(s, coll, id);
    char *xp = gt_xasprintf("%sx/%s/", s->prefix, coll);
    size_t xel;
    char *xe = prefix_end(xp, &xel);
    char *lkey = fence ? lease_key(s, fence->name) : NULL;
    char *lval = fence ? lease_value(fence->holder, fence->epoch) : NULL;
    gt_err rc = GT_OK;
    for (int attempt = 0;; attempt++) {
        doc_state d = {0};
        gt_strv old = {0}, neu = {0};
        cJSON *root = NULL;
        bool ok = false;
        int64_t rev = 0;
        if ((rc = read_doc(s, coll, key, &d, err)) != GT_OK ||
            (rc = gt_store__check_rev(coll, id, d.exists, d.mod, expect_rev, false, err)) !=
                GT_OK)
            goto next;
        index_keys(s, coll, id, d.body, &d.fields, &old);
        index_keys(s, coll, id, body, &d.fields, &neu);
        txn t;
        txn_init(&t);
        if (d.exists)
            cmp_num(&t, key, NULL, "MOD", "EQUAL", d.mod);
        else
            cmp_num(&t, key, NULL, "CREATE", "EQUAL", 0);
        cmp_num(&t, xp, xe, "MOD", "LESS", d.read_rev + 1);
        if (fence) {
            cmp_value(&t, lkey, lval);
            op_range(t.failure, range_req(lkey, strlen(lkey), NULL, 0, 0, false));
        }
        op_put(t.success, key, body, 0);
        for (size_t i = 0; i < old.n; i++)
            if (!strv_has(&neu, old.v[i]))
                op_del(t.success, old.v[i]);
        for (size_t i = 0; i < neu.n; i++)
            op_put(t.success, neu.v[i], "", 0);
        if ((rc = txn_commit(s, &t, &ok, &root, &rev, err)) != GT_OK)
            goto next;
        if (ok) {
            *new_rev = rev;
        } else if (fence) {
            rc = fence_verdict(fence, root, 0, err);
        }
    next:
        cJSON_Delete(root);
        gt_strv_free(&old);
        gt_strv_free(&neu);
        doc_state_clear(&d);
        if (rc != GT_OK || ok)
            break;
        if (attempt == MAX_RETRIES) {
            rc = gt_error_set(err, GT_EAGAIN, "%s/%s: still contended after %d tries", coll, id,
                              MAX_RETRIES);
            break;
        }
    }
    free(key);
    free(xp);
    free(xe);
    free(lkey);
    free(lval);
    return rc;
}

static gt_err etcd_del(gt_store *gs, const char *coll, const char *id, int64_t expect_rev,
                       gt_error *err)
{
    etcd_store *s = (etcd_store *)gs;
    char *key = doc_key(s, coll, id);
    char *xp = gt_xasprintf("%sx/%s/", s->prefix, coll);
    size_t xel;
    char *xe = prefix_end(xp, &xel);
    gt_err rc = GT_OK;
    for (int attempt = 0;; attempt++) {
        doc_state d = {0};
        gt_strv old = {0};
        cJSON *root = NULL;
        bool ok = false;
        int64_t rev = 0;
        if ((rc = read_doc(s, coll, key, &d, err)) != GT_OK ||
            (rc = gt_store__check_rev(coll, id, d.exists, d.mod, expect_rev, true, err)) != GT_OK)
            goto next;
        index_keys(s, coll, id, d.body, &d.fields, &old);
        txn t;
        txn_init(&t);
        cmp_num(&t, key, NULL, "MOD", "EQUAL", d.mod);
        cmp_num(&t, xp, xe, "MOD", "LESS", d.read_rev + 1);
        op_del(t.success, key);
        for (size_t i = 0; i < old.n; i++)
            op_del(t.success, old.v[i]);
        rc = txn_commit(s, &t, &ok, &root, &rev, err);
    next:
        cJSON_Delete(root);
        gt_strv_free(&old);
        doc_state_clear(&d);
        if (rc != GT_OK || ok)
            break;
        if (attempt == MAX_RETRIES) {
            rc = gt_error_set(err, GT_EAGAIN, "%s/%s: still contended after %d tries", coll, id,
                              MAX_RETRIES);
            break;
        }
    }
    free(key);
    free(xp);
    free(xe);
    return rc;
}

static gt_err etcd_get(gt_store *gs, const char *coll, const char *id, char **body, int64_t *rev,
                       gt_error *err)
{
    etcd_store *s = (etcd_store *)gs;
    char *key = doc_key(s, coll, id);
    cJSON *root = NULL;
    int64_t r;
    gt_etcd_kvs kvs = {0};
    gt_err rc = call(s, "kv/range", range_req(key, strlen(key), NULL, 0, 0, false), &root, &r,
                     err);
    if (rc == GT_OK && (rc = gt_etcd__range_kvs(root, &kvs, err)) == GT_OK) {
        if (kvs.n == 0) {
            rc = gt_error_set(err, GT_ENOTFOUND, "%s/%s: not found", coll, id);
        } else {
            *body = kvs.v[0].value;
            kvs.v[0].value = NULL;
            *rev = kvs.v[0].mod_revision;
        }
    }
    gt_etcd__kvs_free(&kvs);
    cJSON_Delete(root);
    free(key);
    return rc;
}

/* ---- indexes ---- */

static gt_err etcd_index(gt_store *gs, const char *coll, const char *field, gt_error *err)
{
    etcd_store *s = (etcd_store *)gs;
    char *xkey = gt_xasprintf("%sx/%s/%s", s->prefix, coll, field);
    char *dp = gt_xasprintf("%sd/%s/", s->prefix, coll);
    size_t del;
    char *de = prefix_end(dp, &del);
    cJSON *root = NULL;
    int64_t r;
    gt_etcd_kvs kvs = {0};
    char *from = gt_xstrdup(dp);
    size_t from_len = strlen(dp);
    gt_err rc = call(s, "kv/range", range_req(xkey, strlen(xkey), NULL, 0, 0, false), &root, &r,
                     err);
    if (rc != GT_OK || (rc = gt_etcd__range_kvs(root, &kvs, err)) != GT_OK)
        goto done;
    if (kvs.n > 0 && strcmp(kvs.v[0].value, "ready") == 0)
        goto done;
    /* Declare first: every write that commits after this sees the declaration (its
     * Txn compares the declarations it read), so the scan below only has to cover
     * documents written before it. */
    cJSON_Delete(root);
    root = NULL;
    {
        txn t;
        txn_init(&t);
        op_put(t.success, xkey, "building", 0);
        bool ok;
        if ((rc = txn_commit(s, &t, &ok, &root, &r, err)) != GT_OK)
            goto done;
    }
    gt_strv fields = {0};
    gt_strv_push(&fields, field);
    for (;;) {
        gt_etcd__kvs_free(&kvs);
        cJSON_Delete(root);
        root = NULL;
        rc = call(s, "kv/range", range_req(from, from_len, de, del, BUILD_PAGE, false), &root,
                  &r, err);
        if (rc != GT_OK || (rc = gt_etcd__range_kvs(root, &kvs, err)) != GT_OK)
            break;
        for (size_t i = 0; i < kvs.n && rc == GT_OK; i++) {
            gt_strv keys = {0};
            const char *id = kvs.v[i].key + strlen(dp);
            index_keys(s, coll, id, kvs.v[i].value, &fields, &keys);
            if (keys.n > 0) {
                txn t;
                txn_init(&t);
                cmp_num(&t, kvs.v[i].key, NULL, "MOD", "EQUAL", kvs.v[i].mod_revision);
                op_put(t.success, keys.v[0], "", 0);
                cJSON *tr = NULL;
                bool ok;
                int64_t tr_rev;
                /* a failed compare: the document changed since, and that write indexed it */
                rc = txn_commit(s, &t, &ok, &tr, &tr_rev, err);
                cJSON_Delete(tr);
            }
            gt_strv_free(&keys);
        }
        if (rc != GT_OK || kvs.n < BUILD_PAGE)
            break;
        /* the next page starts just after the last key */
        free(from);
        from_len = kvs.v[kvs.n - 1].key_len + 1;
        from = gt_xmalloc(from_len);
        memcpy(from, kvs.v[kvs.n - 1].key, from_len);   /* includes the NUL: key + "\0" */
    }
    gt_strv_free(&fields);
    if (rc == GT_OK) {
        cJSON_Delete(root);
        root = NULL;
        txn t;
        txn_init(&t);
        op_put(t.success, xkey, "ready", 0);
        bool ok;
        rc = txn_commit(s, &t, &ok, &root, &r, err);
    }
done:
    gt_etcd__kvs_free(&kvs);
    cJSON_Delete(root);
    free(xkey);
    free(dp);
    free(de);
    free(from);
    return rc;
}

/* ---- queries ---- */

/* Fetches the documents of ids at store revision rev into page, in order. */
static gt_err fetch_docs(etcd_store *s, const char *coll, char **ids, size_t n, int64_t rev,
                         gt_store_page *page, gt_error *err)
{
    gt_err rc = GT_OK;
    for (size_t off = 0; off < n && rc == GT_OK; off += FETCH_CHUNK) {
        size_t m = n - off < FETCH_CHUNK ? n - off : FETCH_CHUNK;
        txn t;
        txn_init(&t);
        for (size_t i = 0; i < m; i++) {
            char *k = doc_key(s, coll, ids[off + i]);
            cJSON *rq = range_req(k, strlen(k), NULL, 0, 0, false);
            add_i64(rq, "revision", rev);
            op_range(t.success, rq);
            free(k);
        }
        cJSON *root = NULL;
        bool ok;
        int64_t r;
        if ((rc = txn_commit(s, &t, &ok, &root, &r, err)) != GT_OK)
            break;
        for (size_t i = 0; i < m && rc == GT_OK; i++) {
            gt_etcd_kvs kvs = {0};
            if ((rc = txn_kvs(root, i, &kvs, err)) == GT_OK && kvs.n > 0)
                gt_store__page_add(page, ids[off + i], strlen(ids[off + i]), kvs.v[0].value,
                                   kvs.v[0].value_len, kvs.v[0].mod_revision);
            else if (rc == GT_OK)
                rc = gt_error_set(err, GT_EIO, "etcd: %s/%s: indexed but absent at revision %"
                                  PRId64, coll, ids[off + i], rev);
            gt_etcd__kvs_free(&kvs);
        }
        cJSON_Delete(root);
    }
    return rc;
}

static gt_err etcd_query(gt_store *gs, const char *coll, const char *field, const char *value,
                         const char *cursor, size_t limit, bool descending, gt_store_page *page,
                         gt_error *err)
{
    etcd_store *s = (etcd_store *)gs;
    char *base = field ? index_base(s, coll, field, value)
                       : gt_xasprintf("%sd/%s/", s->prefix, coll);
    size_t bl = strlen(base), endl;
    char *end = prefix_end(base, &endl);
    char *from = NULL, *to = NULL;
    size_t from_len, to_len;
    char *xkey = field ? gt_xasprintf("%sx/%s/%s", s->prefix, coll, field) : NULL;
    gt_etcd_kvs kvs = {0}, decl = {0};
    gt_strv ids = {0};
    cJSON *root = NULL;
    int64_t rev;
    bool ok;
    gt_err rc;
    if (cursor && !descending) {   /* exclusive lower bound: the cursor's key + "\0" */
        from_len = bl + strlen(cursor) + 1;
        from = gt_xasprintf("%s%s", base, cursor);
    } else {
        from = gt_xstrdup(base);
        from_len = bl;
    }
    if (cursor && descending) {   /* range_end is exclusive already */
        to = gt_xasprintf("%s%s", base, cursor);
        to_len = strlen(to);
    } else {
        to = gt_xstrdup(end);
        to_len = endl;
    }
    txn t;
    txn_init(&t);
    op_range(t.success, range_req(from, from_len, to, to_len, (int64_t)limit + 1, descending));
    if (xkey)
        op_range(t.success, range_req(xkey, strlen(xkey), NULL, 0, 0, false));
    if ((rc = txn_commit(s, &t, &ok, &root, &rev, err)) != GT_OK ||
        (rc = txn_kvs(root, 0, &kvs, err)) != GT_OK)
        goto done;
    if (xkey) {
        if ((rc = txn_kvs(root, 1, &decl, err)) != GT_OK)
            goto done;
        if (decl.n == 0) {
            rc = gt_error_setf(err, GT_EINVAL, "field", "%s: field %s is not indexed", coll,
                               field);
            goto done;
        }
    }
    size_t n = kvs.n > limit ? limit : kvs.n;
    for (size_t i = 0; i < n; i++) {
        if (kvs.v[i].key_len <= bl || memcmp(kvs.v[i].key, base, bl) != 0) {
            rc = gt_error_set(err, GT_EIO, "etcd: a key outside the range asked for");
            goto done;
        }
        if (field)
            gt_strv_push(&ids, kvs.v[i].key + bl);
        else
            gt_store__page_add(page, kvs.v[i].key + bl, kvs.v[i].key_len - bl, kvs.v[i].value,
                               kvs.v[i].value_len, kvs.v[i].mod_revision);
    }
    if (field && (rc = fetch_docs(s, coll, ids.v, ids.n, rev, page, err)) != GT_OK)
        goto done;
    if (kvs.n > limit)
        gt_store__page_more(page);
done:
    gt_strv_free(&ids);
    gt_etcd__kvs_free(&kvs);
    gt_etcd__kvs_free(&decl);
    cJSON_Delete(root);
    free(base);
    free(end);
    free(from);
    free(to);
    free(xkey);
    return rc;
}

/* ---- range queries, counts, apply ---- */

/* etcd's default --max-txn-ops: a Txn with more operations is refused. */
enum { MAX_TXN_OPS = 128 };

/* Byte-wise order of two keys that may hold NUL bytes. */
static int key_cmp(const char *a, size_t al, const char *b, size_t bl)
{
    int c = memcmp(a, b, al < bl ? al : bl);
    return c ? c : (al > bl) - (al < bl);
}

/* The keys of a range over field (NULL: the documents' ids) of coll in [lo, hi),
 * after the item whose key suffix is after (NULL: none): [from, to) holds keys
 * base + suffix. Index key suffixes are hex(value) "/" id and hex keeps byte order,
 * so a value that is a prefix of another sorts first ('/' is below every hex digit). */
typedef struct key_range {
    char *base, *from, *to;
    size_t from_len, to_len;
} key_range;

static void key_range_clear(key_range *r)
{
    free(r->base);
    free(r->from);
    free(r->to);
    memset(r, 0, sizeof *r);
}

static void key_range_init(etcd_store *s, const char *coll, const char *field, const char *lo,
                           const char *hi, const char *after, key_range *r)
{
    r->base = field ? gt_xasprintf("%si/%s/%s/", s->prefix, coll, field)
                    : gt_xasprintf("%sd/%s/", s->prefix, coll);
    char *l = lo && field ? hex(lo) : gt_xstrdup(lo ? lo : "");
    r->from = gt_xasprintf("%s%s", r->base, l);
    r->from_len = strlen(r->from);
    free(l);
    if (after) {   /* exclusive: the item's key + "\0" */
        size_t n = strlen(r->base) + strlen(after) + 1;
        char *k = gt_xmalloc(n + 1);
        snprintf(k, n + 1, "%s%s", r->base, after);
        k[n - 1] = '\0';
        if (key_cmp(k, n, r->from, r->from_len) > 0) {
            free(r->from);
            r->from = k;
            r->from_len = n;
        } else {
            free(k);
        }
    }
    if (hi) {
        char *h = field ? hex(hi) : gt_xstrdup(hi);
        r->to = gt_xasprintf("%s%s", r->base, h);
        r->to_len = strlen(r->to);
        free(h);
    } else {
        r->to = prefix_end(r->base, &r->to_len);
    }
}

static bool key_range_empty(const key_range *r)
{
    return key_cmp(r->from, r->from_len, r->to, r->to_len) >= 0;
}

/* The key suffix a cursor resumes after: the index entry's (hex(value) "/" id) or, for
 * an id range, the id. */
static gt_err cursor_suffix(const char *coll, const char *field, const char *cursor,
                            char **suffix, gt_error *err)
{
    char *v = NULL, *id = NULL;
    *suffix = NULL;
    gt_err rc = gt_store__range_cursor_parse(coll, field, cursor, &v, &id, err);
    if (rc == GT_OK)
        *suffix = field ? gt_store__range_cursor(v, id) : gt_xstrdup(id);
    free(v);
    free(id);
    return rc;
}

/* Txn response i: GT_EINVAL unless the declaration of coll's field was there. */
static gt_err check_declared(const cJSON *root, size_t i, const char *coll, const char *field,
                             gt_error *err)
{
    gt_etcd_kvs decl = {0};
    gt_err rc = txn_kvs(root, i, &decl, err);
    if (rc == GT_OK && decl.n == 0)
        rc = gt_error_setf(err, GT_EINVAL, "field", "%s: field %s is not indexed", coll, field);
    gt_etcd__kvs_free(&decl);
    return rc;
}

static gt_err etcd_query_range(gt_store *gs, const char *coll, const char *field, const char *lo,
                               const char *hi, const char *cursor, size_t limit,
                               gt_store_page *page, gt_error *err)
{
    etcd_store *s = (etcd_store *)gs;
    char *after = NULL, *xkey = NULL;
    key_range r = {0};
    gt_etcd_kvs kvs = {0};
    gt_strv ids = {0};
    cJSON *root = NULL;
    int64_t rev;
    bool ok;
    gt_err rc;
    if (cursor && (rc = cursor_suffix(coll, field, cursor, &after, err)) != GT_OK)
        goto done;
    key_range_init(s, coll, field, lo, hi, after, &r);
    bool empty = key_range_empty(&r);
    txn t;
    txn_init(&t);
    if (!empty)
        op_range(t.success,
                 range_req(r.from, r.from_len, r.to, r.to_len, (int64_t)limit + 1, false));
    if (field) {
        xkey = gt_xasprintf("%sx/%s/%s", s->prefix, coll, field);
        op_range(t.success, range_req(xkey, strlen(xkey), NULL, 0, 0, false));
    }
    if ((rc = txn_commit(s, &t, &ok, &root, &rev, err)) != GT_OK ||
        (field && (rc = check_declared(root, empty ? 0 : 1, coll, field, err)) != GT_OK) ||
        (!empty && (rc = txn_kvs(root, 0, &kvs, err)) != GT_OK))
        goto done;
    size_t bl = strlen(r.base), n = kvs.n > limit ? limit : kvs.n;
    for (size_t i = 0; i < n; i++) {
        const char *suffix = kvs.v[i].key + bl;
        if (kvs.v[i].key_len <= bl || memcmp(kvs.v[i].key, r.base, bl) != 0) {
            rc = gt_error_set(err, GT_EIO, "etcd: a key outside the range asked for");
            goto done;
        }
        if (field == NULL) {
            gt_store__page_add(page, suffix, kvs.v[i].key_len - bl, kvs.v[i].value,
                               kvs.v[i].value_len, kvs.v[i].mod_revision);
            continue;
        }
        char *v = NULL, *id = NULL;
        if (gt_store__range_cursor_parse(coll, field, suffix, &v, &id, NULL) != GT_OK) {
            rc = gt_error_set(err, GT_EIO, "etcd: %s: a malformed index key", coll);
            goto done;
        }
        gt_strv_push_owned(&ids, id);
        free(v);
    }
    if (field && (rc = fetch_docs(s, coll, ids.v, ids.n, rev, page, err)) != GT_OK)
        goto done;
    if (kvs.n > limit) {
        const char *last = kvs.v[limit - 1].key + bl;
        page->next_cursor = field ? gt_xstrdup(last) : gt_store__range_cursor(last, last);
    }
done:
    gt_strv_free(&ids);
    gt_etcd__kvs_free(&kvs);
    cJSON_Delete(root);
    key_range_clear(&r);
    free(after);
    free(xkey);
    return rc;
}

/* kv/range with count_only: etcd counts the keys, no value leaves the server. */
static gt_err etcd_count(gt_store *gs, const char *coll, const gt_store_filter *f, int64_t *n,
                         gt_error *err)
{
    etcd_store *s = (etcd_store *)gs;
    key_range r = {0};
    char *xkey = NULL;
    cJSON *root = NULL;
    int64_t rev;
    bool ok;
    gt_err rc;
    if (f->eq) {   /* every entry of one value: its prefix */
        r.base = index_base(s, coll, f->field, f->eq);
        r.from = gt_xstrdup(r.base);
        r.from_len = strlen(r.from);
        r.to = prefix_end(r.base, &r.to_len);
    } else {
        key_range_init(s, coll, f->field, f->lo, f->hi, NULL, &r);
    }
    bool empty = key_range_empty(&r);
    txn t;
    txn_init(&t);
    if (!empty) {
        cJSON *rq = range_req(r.from, r.from_len, r.to, r.to_len, 0, false);
        gt_json_set_bool(rq, "count_only", true);
        op_range(t.success, rq);
    }
    if (f->field) {
        xkey = gt_xasprintf("%sx/%s/%s", s->prefix, coll, f->field);
        op_range(t.success, range_req(xkey, strlen(xkey), NULL, 0, 0, false));
    }
    if ((rc = txn_commit(s, &t, &ok, &root, &rev, err)) != GT_OK ||
        (f->field && (rc = check_declared(root, empty ? 0 : 1, coll, f->field, err)) != GT_OK))
        goto done;
    if (!empty) {
        const cJSON *rr = gt_etcd__txn_range(root, 0);
        if (rr == NULL)
            rc = gt_error_set(err, GT_EIO, "etcd: reply: txn response 0 is not a range");
        else if ((rc = gt_etcd__int(rr, "count", n, err)) == GT_OK && *n < 0)
            rc = gt_error_set(err, GT_EIO, "etcd: reply: count %" PRId64, *n);
    }
done:
    cJSON_Delete(root);
    key_range_clear(&r);
    free(xkey);
    return rc;
}

/* Reads every op's document and the index declarations of their collections in one
 * Txn (one snapshot, at d[0].read_rev). */
static gt_err read_docs(etcd_store *s, const gt_store_op *ops, size_t n, char *const *keys,
                        const gt_strv *colls, doc_state *d, gt_error *err)
{
    txn t;
    txn_init(&t);
    for (size_t i = 0; i < n; i++)
        op_range(t.success, range_req(keys[i], strlen(keys[i]), NULL, 0, 0, false));
    for (size_t c = 0; c < colls->n; c++) {
        char *xp = gt_xasprintf("%sx/%s/", s->prefix, colls->v[c]);
        op_range(t.success, range_prefix_req(xp, 0));
        free(xp);
    }
    cJSON *root = NULL;
    bool ok;
    int64_t rev = 0;
    gt_err rc = txn_commit(s, &t, &ok, &root, &rev, err);
    for (size_t i = 0; i < n && rc == GT_OK; i++) {
        gt_etcd_kvs doc = {0};
        if ((rc = txn_kvs(root, i, &doc, err)) == GT_OK && doc.n > 0) {
            d[i].exists = true;
            d[i].mod = doc.v[0].mod_revision;
            d[i].body = gt_xstrdup(doc.v[0].value);
        }
        d[i].read_rev = rev;
        gt_etcd__kvs_free(&doc);
    }
    for (size_t c = 0; c < colls->n && rc == GT_OK; c++) {
        gt_etcd_kvs decl = {0};
        char *xp = gt_xasprintf("%sx/%s/", s->prefix, colls->v[c]);
        size_t xl = strlen(xp);
        if ((rc = txn_kvs(root, n + c, &decl, err)) == GT_OK)
            for (size_t i = 0; i < n; i++)
                for (size_t k = 0; strcmp(ops[i].coll, colls->v[c]) == 0 && k < decl.n; k++)
                    if (decl.v[k].key_len > xl)
                        gt_strv_push(&d[i].fields, decl.v[k].key + xl);
        gt_etcd__kvs_free(&decl);
        free(xp);
    }
    cJSON_Delete(root);
    return rc;
}

/* One Txn, as etcd_put's: it compares every document's revision as read (and that no
 * collection's index declarations changed since, and the fence's lease key), writes
 * the documents and their index entries, and is retried when only that optimistic
 * check failed. */
static gt_err etcd_apply(gt_store *gs, gt_store_op *ops, size_t n, const gt_store_fence *fence,
                         gt_error *err)
{
    etcd_store *s = (etcd_store *)gs;
    char *keys[GT_STORE_MAX_OPS];
    gt_strv colls = {0};
    for (size_t i = 0; i < n; i++) {
        keys[i] = doc_key(s, ops[i].coll, ops[i].id);
        if (!strv_has(&colls, ops[i].coll))
            gt_strv_push(&colls, ops[i].coll);
    }
    char *lkey = fence ? lease_key(s, fence->name) : NULL;
    char *lval = fence ? lease_value(fence->holder, fence->epoch) : NULL;
    gt_err rc = GT_OK;
    for (int attempt = 0;; attempt++) {
        doc_state d[GT_STORE_MAX_OPS] = {{0}};
        cJSON *root = NULL;
        bool ok = false;
        int64_t rev = 0;
        txn t = {0};
        if ((rc = read_docs(s, ops, n, keys, &colls, d, err)) != GT_OK)
            goto next;
        for (size_t i = 0; i < n; i++)
            if ((rc = gt_store__check_op(&ops[i], i, d[i].exists, d[i].mod, err)) != GT_OK)
                goto next;
        txn_init(&t);
        for (size_t i = 0; i < n; i++) {
            if (d[i].exists)
                cmp_num(&t, keys[i], NULL, "MOD", "EQUAL", d[i].mod);
            else
                cmp_num(&t, keys[i], NULL, "CREATE", "EQUAL", 0);
        }
        for (size_t c = 0; c < colls.n; c++) {
            size_t xel;
            char *xp = gt_xasprintf("%sx/%s/", s->prefix, colls.v[c]);
            char *xe = prefix_end(xp, &xel);
            cmp_num(&t, xp, xe, "MOD", "LESS", d[0].read_rev + 1);
            free(xp);
            free(xe);
        }
        if (fence) {
            cmp_value(&t, lkey, lval);
            op_range(t.failure, range_req(lkey, strlen(lkey), NULL, 0, 0, false));
        }
        for (size_t i = 0; i < n; i++) {
            if (ops[i].kind == GT_STORE_OP_CHECK)
                continue;
            gt_strv old = {0}, neu = {0};
            const char *body = ops[i].kind == GT_STORE_OP_PUT ? ops[i].body : NULL;
            index_keys(s, ops[i].coll, ops[i].id, d[i].body, &d[i].fields, &old);
            index_keys(s, ops[i].coll, ops[i].id, body, &d[i].fields, &neu);
            if (body)
                op_put(t.success, keys[i], body, 0);
            else
                op_del(t.success, keys[i]);
            for (size_t k = 0; k < old.n; k++)
                if (!strv_has(&neu, old.v[k]))
                    op_del(t.success, old.v[k]);
            for (size_t k = 0; k < neu.n; k++)   /* all of them, as etcd_index expects */
                op_put(t.success, neu.v[k], "", 0);
            gt_strv_free(&old);
            gt_strv_free(&neu);
        }
        int nops = cJSON_GetArraySize(t.success);
        if (nops > MAX_TXN_OPS) {
            rc = gt_error_setf(err, GT_EINVAL, "ops", "store: apply: %d etcd operations "
                               "(documents and index entries), more than the %d of one Txn",
                               nops, MAX_TXN_OPS);
            goto next;
        }
        if ((rc = txn_commit(s, &t, &ok, &root, &rev, err)) != GT_OK)   /* consumes t */
            goto next;
        if (ok) {
            for (size_t i = 0; i < n; i++)
                ops[i].new_rev = ops[i].kind == GT_STORE_OP_PUT ? rev : 0;
        } else if (fence) {
            rc = fence_verdict(fence, root, 0, err);
        }
    next:
        cJSON_Delete(t.root);
        cJSON_Delete(root);
        for (size_t i = 0; i < n; i++)
            doc_state_clear(&d[i]);
        if (rc != GT_OK || ok)
            break;
        if (attempt == MAX_RETRIES) {
            rc = gt_error_set(err, GT_EAGAIN, "store: apply: %s/%s and %zu more: still "
                              "contended after %d tries", ops[0].coll, ops[0].id, n - 1,
                              MAX_RETRIES);
            break;
        }
    }
    for (size_t i = 0; i < n; i++)
        free(keys[i]);
    gt_strv_free(&colls);
    free(lkey);
    free(lval);
    return rc;
}

/* ---- leases ---- */

static gt_err lease_grant(etcd_store *s, int64_t ttl_ms, int64_t *id, gt_error *err)
{
    cJSON *req = cJSON_CreateObject(), *root = NULL;
    int64_t rev;
    add_i64(req, "TTL", ttl_ms / 1000 + (ttl_ms % 1000 != 0));
    gt_err rc = call(s, "lease/grant", req, &root, &rev, err);
    if (rc == GT_OK && (rc = gt_etcd__int(root, "ID", id, err)) == GT_OK && *id == 0)
        rc = gt_error_set(err, GT_EIO, "etcd: lease/grant: no lease ID in the reply");
    cJSON_Delete(root);
    return rc;
}

/* Best effort: a lease that is not revoked expires by itself. */
static void lease_revoke(etcd_store *s, int64_t id)
{
    if (id == 0)
        return;
    cJSON *req = cJSON_CreateObject(), *root = NULL;
    int64_t rev;
    add_i64(req, "ID", id);
    (void)call(s, "lease/revoke", req, &root, &rev, NULL);
    cJSON_Delete(root);
}

static gt_err etcd_lease_acquire(gt_store *gs, const char *name, const char *holder,
                                 int64_t ttl_ms, int64_t *epoch, gt_error *err)
{
    etcd_store *s = (etcd_store *)gs;
    char *lkey = lease_key(s, name);
    char *ekey = gt_xasprintf("%se/%s", s->prefix, name);
    gt_err rc = GT_OK;
    for (int attempt = 0;; attempt++) {
        gt_etcd_kvs lk = {0}, ek = {0};
        cJSON *root = NULL;
        char *cur_holder = NULL, *val = NULL;
        int64_t cur_epoch = 0, last_epoch = 0, rev, grant = 0;
        bool ok = false;
        txn t;
        txn_init(&t);
        op_range(t.success, range_req(lkey, strlen(lkey), NULL, 0, 0, false));
        op_range(t.success, range_req(ekey, strlen(ekey), NULL, 0, 0, false));
        if ((rc = txn_commit(s, &t, &ok, &root, &rev, err)) != GT_OK ||
            (rc = txn_kvs(root, 0, &lk, err)) != GT_OK || (rc = txn_kvs(root, 1, &ek, err)) != GT_OK)
            goto next;
        if (lk.n > 0 && (rc = lease_parse(lk.v[0].value, &cur_holder, &cur_epoch, err)) != GT_OK)
            goto next;
        if (ek.n > 0) {
            gt_error why = {0};
            if (gt_parse_int64(ek.v[0].value, 0, INT64_MAX - 1, &last_epoch, "epoch", &why)) {
                rc = gt_error_set(err, GT_EIO, "etcd: lease %s: %s", name, why.message);
                goto next;
            }
        }
        if (cur_holder && strcmp(cur_holder, holder) != 0) {
            rc = gt_error_set(err, GT_ECONFLICT, "lease %s: held by %s (epoch %" PRId64 ")",
                              name, cur_holder, cur_epoch);
            goto next;
        }
        if ((rc = lease_grant(s, ttl_ms, &grant, err)) != GT_OK)
            goto next;
        cJSON_Delete(root);
        root = NULL;
        txn_init(&t);
        if (cur_holder) {   /* ours: renew onto the new etcd lease, same epoch */
            cmp_num(&t, lkey, NULL, "MOD", "EQUAL", lk.v[0].mod_revision);
            val = lease_value(holder, cur_epoch);
            op_put(t.success, lkey, val, grant);
            *epoch = cur_epoch;
        } else {            /* free: a new term */
            int64_t e = (last_epoch > cur_epoch ? last_epoch : cur_epoch) + 1;
            char buf[32];
            snprintf(buf, sizeof buf, "%" PRId64, e);
            cmp_num(&t, lkey, NULL, "CREATE", "EQUAL", 0);
            if (ek.n > 0)
                cmp_num(&t, ekey, NULL, "MOD", "EQUAL", ek.v[0].mod_revision);
            else
                cmp_num(&t, ekey, NULL, "CREATE", "EQUAL", 0);
            val = lease_value(holder, e);
            op_put(t.success, lkey, val, grant);
            op_put(t.success, ekey, buf, 0);
            *epoch = e;
        }
        if ((rc = txn_commit(s, &t, &ok, &root, &rev, err)) != GT_OK)
            goto next;
        if (ok && cur_holder)
            lease_revoke(s, lk.v[0].lease);
        else if (!ok)
            lease_revoke(s, grant);
    next:
        if (rc != GT_OK && grant)
            lease_revoke(s, grant);
        cJSON_Delete(root);
        gt_etcd__kvs_free(&lk);
        gt_etcd__kvs_free(&ek);
        free(cur_holder);
        free(val);
        if (rc != GT_OK || ok)
            break;
        if (attempt == MAX_RETRIES) {
            rc = gt_error_set(err, GT_EAGAIN, "lease %s: still contended after %d tries", name,
                              MAX_RETRIES);
            break;
        }
    }
    if (rc != GT_OK)
        *epoch = 0;
    free(lkey);
    free(ekey);
    return rc;
}

static gt_err etcd_lease_release(gt_store *gs, const char *name, const char *holder,
                                 gt_error *err)
{
    etcd_store *s = (etcd_store *)gs;
    char *lkey = lease_key(s, name);
    gt_err rc = GT_OK;
    for (int attempt = 0;; attempt++) {
        gt_etcd_kvs lk = {0};
        cJSON *root = NULL;
        char *cur_holder = NULL;
        int64_t cur_epoch = 0, rev;
        bool ok = false;
        if ((rc = call(s, "kv/range", range_req(lkey, strlen(lkey), NULL, 0, 0, false), &root,
                       &rev, err)) != GT_OK ||
            (rc = gt_etcd__range_kvs(root, &lk, err)) != GT_OK)
            goto next;
        if (lk.n == 0) {   /* free or expired: nothing to give back */
            ok = true;
            goto next;
        }
        if ((rc = lease_parse(lk.v[0].value, &cur_holder, &cur_epoch, err)) != GT_OK)
            goto next;
        if (strcmp(cur_holder, holder) != 0) {
            rc = gt_error_set(err, GT_ECONFLICT, "lease %s: held by %s (epoch %" PRId64 "), not %s",
                              name, cur_holder, cur_epoch, holder);
            goto next;
        }
        cJSON_Delete(root);
        root = NULL;
        txn t;
        txn_init(&t);
        cmp_num(&t, lkey, NULL, "MOD", "EQUAL", lk.v[0].mod_revision);
        op_del(t.success, lkey);
        if ((rc = txn_commit(s, &t, &ok, &root, &rev, err)) == GT_OK && ok)
            lease_revoke(s, lk.v[0].lease);
    next:
        cJSON_Delete(root);
        gt_etcd__kvs_free(&lk);
        free(cur_holder);
        if (rc != GT_OK || ok)
            break;
        if (attempt == MAX_RETRIES) {
            rc = gt_error_set(err, GT_EAGAIN, "lease %s: still contended after %d tries", name,
                              MAX_RETRIES);
            break;
        }
    }
    free(lkey);
    return rc;
}

/* ---- open / close ---- */

/* The headers of every request: JSON, no 100-continue round trip, and the auth token. */
static void set_headers(etcd_store *s, const char *token)
{
    curl_slist_free_all(s->headers);
    s->headers = curl_slist_append(NULL, "Content-Type: application/json");
    s->headers = curl_slist_append(s->headers, "Expect:");
    if (token) {
        char *h = gt_xasprintf("Authorization: %s", token);
        s->headers = curl_slist_append(s->headers, h);
        gt_wipe(h, strlen(h));
        free(h);
    }
    curl_easy_setopt(s->curl, CURLOPT_HTTPHEADER, s->headers);
}

/* etcd's auth: a user and password buy a token (simple tokens expire after
 * --auth-token-ttl, 300 s by default; call_ex renews it when etcd says so). */
static gt_err authenticate(etcd_store *s, gt_error *err)
{
    set_headers(s, NULL);
    cJSON *req = cJSON_CreateObject();
    gt_json_set_str(req, "name", s->user);
    gt_json_set_str(req, "password", s->password);
    cJSON *root = NULL;
    int64_t rev = 0;
    gt_error why = {0};
    gt_err rc = call_ex(s, "auth/authenticate", req, true, &root, &rev, &why);
    if (rc != GT_OK) {
        cJSON_Delete(root);
        return gt_error_set(err, rc, "etcd: signing in as %s: %s", s->user, why.message);
    }
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(root, "token");
    if (!cJSON_IsString(t) || t->valuestring[0] == '\0' || strpbrk(t->valuestring, "\r\n")) {
        cJSON_Delete(root);
        return gt_error_set(err, GT_EIO, "etcd: signing in as %s: no token in the reply",
                            s->user);
    }
    set_headers(s, t->valuestring);
    cJSON_Delete(root);
    return GT_OK;
}

static void etcd_close(gt_store *gs)
{
    etcd_store *s = (etcd_store *)gs;
    if (s->curl)
        curl_easy_cleanup(s->curl);
    curl_slist_free_all(s->headers);
    gt_strv_free(&s->hosts);
    free(s->prefix);
    free(s->user);
    if (s->password)
        gt_wipe(s->password, strlen(s->password));
    free(s->password);
    gt_buf_free(&s->resp);
    free(s);
    curl_global_cleanup();
}

static const gt_store_ops etcd_ops = {
    .name = "etcd",
    .lease_granularity_ms = 1000,
    .close = etcd_close,
    .index = etcd_index,
    .get = etcd_get,
    .put = etcd_put,
    .del = etcd_del,
    .query = etcd_query,
    .lease_acquire = etcd_lease_acquire,
    .lease_release = etcd_lease_release,
    .query_range = etcd_query_range,
    .count = etcd_count,
    .apply = etcd_apply,
};

gt_store *gt_store_open_etcd(const gt_store_etcd_config *cfg, gt_error *err)
{
    if (cfg == NULL || cfg->n_hosts == 0 || cfg->cluster_id == NULL || !cfg->cluster_id[0] ||
        strchr(cfg->cluster_id, '/')) {
        gt_error_set(err, GT_EINVAL, "etcd: need hosts and a cluster id without '/'");
        return NULL;
    }
    /* Reference-counted, and thread-safe since libcurl 7.84 (Debian 12 has 7.88); each
     * handle's close calls curl_global_cleanup once. */
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        gt_error_set(err, GT_EINTERNAL, "etcd: curl_global_init failed");
        return NULL;
    }
    etcd_store *s = gt_xcalloc(1, sizeof *s);
    s->base.ops = &etcd_ops;
    for (size_t i = 0; i < cfg->n_hosts; i++)
        gt_strv_push(&s->hosts, cfg->hosts[i]);
    s->tls = cfg->use_tls;
    s->prefix = gt_xasprintf("/gantry/%s/", cfg->cluster_id);
    long timeout = cfg->timeout_ms > 0 ? cfg->timeout_ms : 5000;
    if ((s->curl = curl_easy_init()) == NULL) {
        gt_error_set(err, GT_EINTERNAL, "etcd: curl_easy_init failed");
        goto fail;
    }
    set_headers(s, NULL);
    curl_easy_setopt(s->curl, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(s->curl, CURLOPT_WRITEDATA, s);
    curl_easy_setopt(s->curl, CURLOPT_ERRORBUFFER, s->curl_err);
    curl_easy_setopt(s->curl, CURLOPT_TIMEOUT_MS, timeout);
    curl_easy_setopt(s->curl, CURLOPT_CONNECTTIMEOUT_MS, timeout < 2000 ? timeout : 2000);
    curl_easy_setopt(s->curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(s->curl, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(s->curl, CURLOPT_PROTOCOLS_STR, "http,https");
    if (s->tls) {
        curl_easy_setopt(s->curl, CURLOPT_SSL_VERIFYPEER, 1L);
        curl_easy_setopt(s->curl, CURLOPT_SSL_VERIFYHOST, 2L);
        if (cfg->ca_file && cfg->ca_file[0])
            curl_easy_setopt(s->curl, CURLOPT_CAINFO, cfg->ca_file);
        if (cfg->client_cert_auth) {
            curl_easy_setopt(s->curl, CURLOPT_SSLCERT, cfg->cert_file);
            curl_easy_setopt(s->curl, CURLOPT_SSLKEY, cfg->key_file);
        }
    }
    gt_err rc;
    if (cfg->username && cfg->username[0]) {
        s->user = gt_xstrdup(cfg->username);
        s->password = gt_xstrdup(cfg->password ? cfg->password : "");
        if ((rc = authenticate(s, err)) != GT_OK)
            goto fail;
    }
    /* One round trip now, so a wrong host list fails at start-up, not at first use. */
    cJSON *root = NULL;
    int64_t rev;
    char *probe = gt_xasprintf("%sprobe", s->prefix);
    rc = call(s, "kv/range", range_req(probe, strlen(probe), NULL, 0, 1, false), &root, &rev, err);
    free(probe);
    cJSON_Delete(root);
    if (rc != GT_OK)
        goto fail;
    return &s->base;
fail:
    etcd_close(&s->base);
    return NULL;
}
