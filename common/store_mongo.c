/* The MongoDB store driver (mongo-c-driver 1.23; a replica set running MongoDB 4.4+).
 *
 * Layout, in the configured database, for cluster C:
 *   C:<coll>     one collection per store collection; a document is
 *                {_id: id, rev, b: the JSON text as written, x: {top-level strings}}
 *   C:_revs      {_id: "rev", n}: the cluster's revision counter
 *   C:_leases    {_id: name, holder, epoch, expires: date}
 * One collection per (cluster, coll) rather than a cluster field in shared
 * collections: _id is then the document id, so its unique index is the
 * if-absent check and gives id order for free; an index declaration is one MongoDB
 * index on that collection only; and a cluster's data is found (and dropped) by name.
 * ':' is in neither alphabet of cluster ids nor collection names, so names cannot
 * run into each other, and store collections (which start with a letter or digit)
 * cannot meet the driver's own (which start with '_').
 *
 * Revisions come from the cluster's counter (findAndModify $inc), so a document
 * deleted and created again continues above every revision it had. Writes are
 * compare-and-set through the filter: expect_rev N is a replace with filter
 * {_id, rev: N}; GT_REV_NONE is an insert (a duplicate _id is the conflict); GT_REV_ANY
 * is an upsert with filter {_id, rev: {$lt: R}}, so a writer that drew an older R than
 * the stored revision fails on the duplicate _id and draws again: revisions of a
 * document only grow.
 *
 * Index fields are answered from x: every top-level string member is copied there at
 * write time, so declaring an index (an index {x.field: 1, _id: 1} named x_<field>)
 * needs no rebuild of existing documents and other processes' writes are covered too.
 *
 * Leases are decided by the server's clock alone: findAndModify with an
 * aggregation-pipeline update and $$NOW. Fenced writes and gt_store_apply run as one
 * multi-document transaction (snapshot read concern, majority commit) that also
 * updates the lease document under the fence's filter {holder, epoch, expires > $$NOW}:
 * that write makes any concurrent acquire of the lease conflict with the transaction,
 * so the fence holds at commit, not only when it was read. A CHECK op likewise bumps
 * the checked document (or inserts and deletes a placeholder for "absent").
 *
 * Change positions are cluster times (Timestamp(t, i) = t << 32 | i, so they end in
 * 2038, when t reaches 2^31); changes_wait is a database change stream filtered to the
 * cluster's collections, started at since + 1. A CHECK of an absent document shows
 * there as a delete (rev 0) of that id: watchers re-read and find nothing.
 *
 * Timeouts are the URI's (serverSelectionTimeoutMS, socketTimeoutMS, wtimeoutMS, which
 * is 10 s when the URI names none); handles of one URI share a mongoc_client_pool_t
 * (maxPoolSize, 100 by default, bounds the handles open at once).
 *
 * Every message names the store by its hosts and database only: the URI's password
 * (and a TLS key password) never appear; they are scrubbed from driver messages too. */
#include "store.h"

#include <cjson/cJSON.h>
#include <inttypes.h>
#include <mongoc/mongoc.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "store_driver.h"
#include "store_mongo.h"
#include "util.h"

enum {
    MAX_RETRIES = 32,
    MAX_CHANGES = 1000,
    CODE_DUPKEY = 11000,
    CODE_NS_EXISTS = 48,
    CODE_NS_NOT_FOUND = 26,
    DEFAULT_WTIMEOUT_MS = 10000,
};

/* ---- conversions (outside input: server replies) ---- */

/* The string at key in doc, with its length; NULL when absent or not a string. */
static const char *bson_str(const bson_t *doc, const char *key, uint32_t *len)
{
    bson_iter_t it;
    if (!bson_iter_init_find(&it, doc, key) || !BSON_ITER_HOLDS_UTF8(&it))
        return NULL;
    return bson_iter_utf8(&it, len);
}

/* A string fit for a C string: valid UTF-8 without NUL. */
static bool text_ok(const char *s, uint32_t len)
{
    return s && bson_utf8_validate(s, len, false) && memchr(s, '\0', len) == NULL;
}

static bool bson_int(const bson_t *doc, const char *key, int64_t *out)
{
    bson_iter_t it;
    if (!bson_iter_init_find(&it, doc, key))
        return false;
    if (BSON_ITER_HOLDS_INT64(&it))
        *out = bson_iter_int64(&it);
    else if (BSON_ITER_HOLDS_INT32(&it))
        *out = bson_iter_int32(&it);
    else
        return false;
    return true;
}

/* Could name be an index field (store.c's check_field)? Only those are kept in x. */
static bool field_name_ok(const char *name)
{
    size_t n = strlen(name);
    if (n < 1 || n > 64)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
              (i > 0 && c >= '0' && c <= '9')))
            return false;
    }
    return true;
}

typedef struct member {
    const cJSON *item;
    size_t pos;
} member;

static int member_cmp(const void *a, const void *b)
{
    const member *x = a, *y = b;
    int c = strcmp(x->item->string, y->item->string);
    return c ? c : (x->pos < y->pos ? -1 : x->pos > y->pos);
}

void gt_mongo__doc_bson(const char *id, const char *body, int64_t rev, bson_t *out)
{
    bson_init(out);
    BSON_APPEND_UTF8(out, "_id", id);
    BSON_APPEND_INT64(out, "rev", rev);
    BSON_APPEND_UTF8(out, "b", body);
    bson_t x;
    BSON_APPEND_DOCUMENT_BEGIN(out, "x", &x);
    cJSON *root = cJSON_Parse(body);
    size_t n = 0, cap = 0;
    member *m = NULL;
    const cJSON *it;
    cJSON_ArrayForEach(it, root)
    {
        if (!cJSON_IsString(it) || !field_name_ok(it->string))
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            m = gt_xrealloc(m, cap * sizeof *m);
        }
        m[n] = (member){it, n};
        n++;
    }
    /* Sorted by name, then position: the first of duplicate names wins (as cJSON's
     * lookup in the memory driver), in O(n log n) even for huge bodies. */
    qsort(m, n, sizeof *m, member_cmp);
    for (size_t i = 0; i < n; i++)
        if (i == 0 || strcmp(m[i].item->string, m[i - 1].item->string) != 0)
            BSON_APPEND_UTF8(&x, m[i].item->string, m[i].item->valuestring);
    free(m);
    cJSON_Delete(root);
    bson_append_document_end(out, &x);
}

gt_err gt_mongo__doc_read(const bson_t *doc, char **id, char **body, int64_t *rev,
                          gt_error *err)
{
    uint32_t id_len = 0, b_len = 0;
    const char *i = bson_str(doc, "_id", &id_len);
    const char *b = bson_str(doc, "b", &b_len);
    if (id)
        *id = NULL;
    *body = NULL;
    *rev = 0;
    if (!text_ok(i, id_len) || id_len == 0)
        return gt_error_set(err, GT_EIO, "mongodb: stored document without a string _id");
    if (!text_ok(b, b_len))
        return gt_error_set(err, GT_EIO, "mongodb: stored document %.*s: no text body b",
                            (int)(id_len > 200 ? 200 : id_len), i);
    int64_t r = 0;
    if (!bson_int(doc, "rev", &r) || r < 1)
        return gt_error_set(err, GT_EIO, "mongodb: stored document %.*s: rev is not a "
                            "positive integer", (int)(id_len > 200 ? 200 : id_len), i);
    if (id)
        *id = gt_xstrndup(i, id_len);
    *body = gt_xstrndup(b, b_len);
    *rev = r;
    return GT_OK;
}

gt_err gt_mongo__lease_read(const bson_t *doc, gt_mongo_lease *out, gt_error *err)
{
    bson_iter_t it;
    memset(out, 0, sizeof *out);
    uint32_t len = 0;
    const char *h = bson_str(doc, "holder", &len);
    if (bson_iter_init_find(&it, doc, "holder") && !text_ok(h, len))
        return gt_error_set(err, GT_EIO, "mongodb: lease: holder is not a string");
    if (bson_iter_init_find(&it, doc, "epoch") && (!bson_int(doc, "epoch", &out->epoch) ||
                                                   out->epoch < 0))
        return gt_error_set(err, GT_EIO, "mongodb: lease: epoch is not an integer >= 0");
    if (bson_iter_init_find(&it, doc, "expires")) {
        if (!BSON_ITER_HOLDS_DATE_TIME(&it))
            return gt_error_set(err, GT_EIO, "mongodb: lease: expires is not a date");
        out->expires_ms = bson_iter_date_time(&it);
    }
    if (bson_iter_init_find(&it, doc, "now")) {
        if (!BSON_ITER_HOLDS_DATE_TIME(&it))
            return gt_error_set(err, GT_EIO, "mongodb: lease: now is not a date");
        out->now_ms = bson_iter_date_time(&it);
    }
    out->holder = h ? gt_xstrndup(h, len) : gt_xstrdup("");
    return GT_OK;
}

void gt_mongo__lease_clear(gt_mongo_lease *l)
{
    free(l->holder);
    memset(l, 0, sizeof *l);
}

gt_err gt_mongo__pos_from_ts(uint32_t t, uint32_t i, int64_t *pos, gt_error *err)
{
    *pos = 0;
    if (t > (uint32_t)INT32_MAX)
        return gt_error_set(err, GT_EIO, "mongodb: cluster time %" PRIu32 " does not fit a "
                            "change position", t);
    *pos = (int64_t)(((uint64_t)t << 32) | i);
    return GT_OK;
}

void gt_mongo__ts_from_pos(int64_t pos, uint32_t *t, uint32_t *i)
{
    *t = (uint32_t)((uint64_t)pos >> 32);
    *i = (uint32_t)((uint64_t)pos & 0xffffffffu);
}

gt_err gt_mongo__change_read(const bson_t *ev, const char *prefix, gt_mongo_event *kind,
                             int64_t *pos, gt_store_change *out, gt_error *err)
{
    bson_iter_t it, sub;
    uint32_t len = 0, t = 0, i = 0;
    memset(out, 0, sizeof *out);
    *kind = GT_MONGO_EV_SKIP;
    *pos = 0;
    if (!bson_iter_init_find(&it, ev, "clusterTime") || !BSON_ITER_HOLDS_TIMESTAMP(&it))
        return gt_error_set(err, GT_EIO, "mongodb: change event without a clusterTime");
    bson_iter_timestamp(&it, &t, &i);
    gt_err rc = gt_mongo__pos_from_ts(t, i, pos, err);
    if (rc != GT_OK)
        return rc;
    const char *op = bson_str(ev, "operationType", &len);
    if (!text_ok(op, len))
        return gt_error_set(err, GT_EIO, "mongodb: change event without an operationType");
    bool del = strcmp(op, "delete") == 0;
    if (strcmp(op, "drop") == 0 || strcmp(op, "dropDatabase") == 0 ||
        strcmp(op, "rename") == 0 || strcmp(op, "invalidate") == 0) {
        *kind = GT_MONGO_EV_RESET;
        return GT_OK;
    }
    if (!del && strcmp(op, "insert") != 0 && strcmp(op, "replace") != 0)
        return GT_OK;   /* updates are CHECK bumps: no revision changed */
    const char *coll = NULL;
    if (bson_iter_init(&it, ev) && bson_iter_find_descendant(&it, "ns.coll", &sub) &&
        BSON_ITER_HOLDS_UTF8(&sub))
        coll = bson_iter_utf8(&sub, &len);
    if (!text_ok(coll, len))
        return gt_error_set(err, GT_EIO, "mongodb: %s event without ns.coll", op);
    size_t plen = strlen(prefix);
    if (len <= plen || strncmp(coll, prefix, plen) != 0 || coll[plen] == '_')
        return GT_OK;   /* not one of this cluster's store collections */
    const char *id = NULL;
    uint32_t id_len = 0;
    if (bson_iter_init(&it, ev) && bson_iter_find_descendant(&it, "documentKey._id", &sub) &&
        BSON_ITER_HOLDS_UTF8(&sub))
        id = bson_iter_utf8(&sub, &id_len);
    if (!text_ok(id, id_len) || id_len == 0)
        return gt_error_set(err, GT_EIO, "mongodb: %s event without a string documentKey._id",
                            op);
    int64_t rev = 0;
    if (!del) {
        bool has = bson_iter_init(&it, ev) &&
                   bson_iter_find_descendant(&it, "fullDocument.rev", &sub);
        if (!has)
            return GT_OK;   /* a CHECK's placeholder: never a stored document */
        if (BSON_ITER_HOLDS_INT64(&sub))
            rev = bson_iter_int64(&sub);
        else if (BSON_ITER_HOLDS_INT32(&sub))
            rev = bson_iter_int32(&sub);
        if (rev < 1)
            return gt_error_set(err, GT_EIO, "mongodb: %s event: fullDocument.rev is not a "
                                "positive integer", op);
    }
    out->coll = gt_xstrndup(coll + plen, len - plen);
    out->id = gt_xstrndup(id, id_len);
    out->rev = rev;
    *kind = GT_MONGO_EV_DOC;
    return GT_OK;
}

void gt_mongo__uri_guarantees(mongoc_uri_t *uri)
{
    mongoc_write_concern_t *wc = mongoc_write_concern_new();
    mongoc_write_concern_set_w(wc, MONGOC_WRITE_CONCERN_W_MAJORITY);
    /* without a bound, a write waits for a lost majority until the socket times out
     * (5 minutes); after wtimeoutMS it is GT_EUNAVAIL, its outcome unknown */
    int64_t wt = mongoc_write_concern_get_wtimeout_int64(mongoc_uri_get_write_concern(uri));
    mongoc_write_concern_set_wtimeout_int64(wc, wt > 0 ? wt : DEFAULT_WTIMEOUT_MS);
    mongoc_uri_set_write_concern(uri, wc);
    mongoc_write_concern_destroy(wc);
    mongoc_read_concern_t *rcn = mongoc_read_concern_new();
    mongoc_read_concern_set_level(rcn, MONGOC_READ_CONCERN_LEVEL_MAJORITY);
    mongoc_uri_set_read_concern(uri, rcn);
    mongoc_read_concern_destroy(rcn);
    /* a secondary's majority snapshot may not hold this client's last write yet */
    mongoc_read_prefs_t *rp = mongoc_read_prefs_new(MONGOC_READ_PRIMARY);
    mongoc_uri_set_read_prefs_t(uri, rp);
    mongoc_read_prefs_destroy(rp);
    mongoc_uri_set_option_as_bool(uri, MONGOC_URI_RETRYWRITES, true);
    mongoc_uri_set_option_as_bool(uri, MONGOC_URI_RETRYREADS, true);
}

/* ---- the process's client pools: one per URI, shared by its handles ---- */

typedef struct mongo_pool {
    struct mongo_pool *next;
    char *key;    /* the final URI text (holds the password: never printed) */
    mongoc_client_pool_t *pool;
    int refs;
} mongo_pool;

static pthread_mutex_t pools_mu = PTHREAD_MUTEX_INITIALIZER;
static mongo_pool *pools;
static pthread_once_t init_once = PTHREAD_ONCE_INIT;

/* mongoc logs through this: warnings and worse into Gantry's log, the rest at debug. */
static void mongoc_log_to_gt(mongoc_log_level_t level, const char *domain, const char *message,
                             void *user)
{
    (void)user;
    gt_log_level l = level <= MONGOC_LOG_LEVEL_ERROR      ? GT_LOG_ERROR
                     : level == MONGOC_LOG_LEVEL_WARNING ? GT_LOG_WARN
                                                          : GT_LOG_DEBUG;
    if (level != MONGOC_LOG_LEVEL_TRACE)
        gt_log(l, "mongoc %s: %s", domain, message);
}

static void mongo_init(void)
{
    mongoc_init();
    mongoc_log_set_handler(mongoc_log_to_gt, NULL);
}

static mongo_pool *pool_ref(const mongoc_uri_t *uri, bson_error_t *e)
{
    const char *key = mongoc_uri_get_string(uri);
    pthread_mutex_lock(&pools_mu);
    mongo_pool *p = pools;
    while (p && strcmp(p->key, key) != 0)
        p = p->next;
    if (p == NULL) {
        mongoc_client_pool_t *cp = mongoc_client_pool_new_with_error(uri, e);
        if (cp) {
            mongoc_client_pool_set_error_api(cp, MONGOC_ERROR_API_VERSION_2);
            if (mongoc_uri_get_appname(uri) == NULL)
                mongoc_client_pool_set_appname(cp, "gantry");
            p = gt_xcalloc(1, sizeof *p);
            p->key = gt_xstrdup(key);
            p->pool = cp;
            p->next = pools;
            pools = p;
        }
    }
    if (p)
        p->refs++;
    pthread_mutex_unlock(&pools_mu);
    return p;
}

static void pool_unref(mongo_pool *p, mongoc_client_t *client)
{
    pthread_mutex_lock(&pools_mu);
    if (client)
        mongoc_client_pool_push(p->pool, client);
    if (--p->refs == 0) {
        mongo_pool **pp = &pools;
        while (*pp != p)
            pp = &(*pp)->next;
        *pp = p->next;
        mongoc_client_pool_destroy(p->pool);
        gt_wipe(p->key, strlen(p->key));
        free(p->key);
        free(p);
    }
    pthread_mutex_unlock(&pools_mu);
}

/* ---- the handle ---- */

typedef struct mongo_store {
    gt_store base;
    mongo_pool *pool;
    mongoc_client_t *client;
    mongoc_client_session_t *session;   /* for transactions; started on first use */
    char *dbname;
    char *prefix;      /* "<cluster_id>:" */
    char *where;       /* "mongodb store (hosts/db, cluster C)" for messages */
    gt_strv secrets;   /* scrubbed from every driver message */
    gt_strv indexed;   /* "coll\nfield" known to be declared */
    gt_strv made;      /* collections known to exist */
} mongo_store;

static const gt_store_ops mongo_ops;

/* Is a server error code one that says it cannot serve now (an election, a shutdown,
 * the network)? */
static bool code_unavailable(uint32_t code)
{
    static const uint32_t codes[] = {6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602,
                                     13435, 13436};
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++)
        if (codes[i] == code)
            return true;
    return false;
}

/* The driver's message with every secret replaced by ****. */
static char *scrub(const mongo_store *ms, const char *msg)
{
    char *out = gt_xstrdup(msg);
    for (size_t k = 0; ms && k < ms->secrets.n; k++) {
        const char *s = ms->secrets.v[k];
        size_t sl = strlen(s);
        gt_buf b = {0};
        const char *p = out, *hit;
        while ((hit = strstr(p, s)) != NULL) {
            gt_buf_append(&b, p, (size_t)(hit - p));
            gt_buf_puts(&b, "****");
            p = hit + sl;
        }
        gt_buf_puts(&b, p);
        free(out);
        out = gt_buf_steal(&b);
    }
    return out;
}

/* Sets err from a driver error: the store, what was being done, and the cause. */
static gt_err fail(const mongo_store *ms, gt_error *err, const bson_error_t *e, const char *fmt,
                   ...) __attribute__((format(printf, 4, 5)));
static gt_err fail(const mongo_store *ms, gt_error *err, const bson_error_t *e, const char *fmt,
                   ...)
{
    gt_err rc = GT_EIO;
    bool server = e->domain == MONGOC_ERROR_SERVER;
    if (e->domain == MONGOC_ERROR_SERVER_SELECTION || e->domain == MONGOC_ERROR_STREAM ||
        e->domain == MONGOC_ERROR_WRITE_CONCERN || (server && code_unavailable(e->code)))
        rc = GT_EUNAVAIL;
    else if ((e->domain == MONGOC_ERROR_CLIENT && e->code == MONGOC_ERROR_CLIENT_AUTHENTICATE) ||
             (server && (e->code == 13 || e->code == 18)))
        rc = GT_EPERM;   /* Unauthorized, AuthenticationFailed */
    else if (server && e->code == 50)
        rc = GT_ETIMEDOUT;   /* MaxTimeMSExpired */
    char what[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    char *msg = scrub(ms, e->message);
    gt_error_set(err, rc, "%s: %s: %s", ms->where, what, msg);
    free(msg);
    return rc;
}

static bool is_code(const bson_error_t *e, uint32_t code)
{
    return e->code == code && e->domain != MONGOC_ERROR_CLIENT &&
           e->domain != MONGOC_ERROR_STREAM && e->domain != MONGOC_ERROR_SERVER_SELECTION;
}

static mongoc_collection_t *coll_of(mongo_store *ms, const char *coll)
{
    char *name = gt_xasprintf("%s%s", ms->prefix, coll);
    mongoc_collection_t *c = mongoc_client_get_collection(ms->client, ms->dbname, name);
    free(name);
    return c;
}

/* Creates coll unless known to exist (transactions on 4.4 cannot always create one). */
static gt_err coll_make(mongo_store *ms, const char *coll, gt_error *err)
{
    for (size_t i = 0; i < ms->made.n; i++)
        if (strcmp(ms->made.v[i], coll) == 0)
            return GT_OK;
    char *name = gt_xasprintf("%s%s", ms->prefix, coll);
    mongoc_database_t *db = mongoc_client_get_database(ms->client, ms->dbname);
    bson_error_t e;
    mongoc_collection_t *c = mongoc_database_create_collection(db, name, NULL, &e);
    gt_err rc = GT_OK;
    if (c == NULL && !is_code(&e, CODE_NS_EXISTS))
        rc = fail(ms, err, &e, "create collection %s", coll);
    else
        gt_strv_push(&ms->made, coll);
    mongoc_collection_destroy(c);
    mongoc_database_destroy(db);
    free(name);
    return rc;
}

static int64_t reply_count(const bson_t *reply, const char *key)
{
    bson_iter_t it;
    if (bson_iter_init_find(&it, reply, key) && BSON_ITER_HOLDS_NUMBER(&it))
        return bson_iter_as_int64(&it);
    return 0;
}

/* Draws a new revision from the cluster's counter. */
static gt_err rev_next(mongo_store *ms, int64_t *out, gt_error *err)
{
    mongoc_collection_t *c = coll_of(ms, "_revs");
    bson_t *query = BCON_NEW("_id", BCON_UTF8("rev"));
    bson_t *update = BCON_NEW("$inc", "{", "n", BCON_INT64(1), "}");
    mongoc_find_and_modify_opts_t *fm = mongoc_find_and_modify_opts_new();
    mongoc_find_and_modify_opts_set_update(fm, update);
    mongoc_find_and_modify_opts_set_flags(fm, MONGOC_FIND_AND_MODIFY_UPSERT |
                                                  MONGOC_FIND_AND_MODIFY_RETURN_NEW);
    gt_err rc = GT_OK;
    *out = 0;
    for (int attempt = 0; *out == 0; attempt++) {
        bson_t reply;
        bson_error_t e;
        bool ok = mongoc_collection_find_and_modify_with_opts(c, query, fm, &reply, &e);
        bson_iter_t it, v;
        int64_t n = 0;
        if (ok && bson_iter_init_find(&it, &reply, "value") && BSON_ITER_HOLDS_DOCUMENT(&it) &&
            bson_iter_recurse(&it, &v) && bson_iter_find(&v, "n") && BSON_ITER_HOLDS_INT64(&v))
            n = bson_iter_int64(&v);
        bson_destroy(&reply);
        if (!ok && is_code(&e, CODE_DUPKEY) && attempt < MAX_RETRIES)
            continue;   /* two first upserts raced */
        if (!ok) {
            rc = fail(ms, err, &e, "revision counter");
            break;
        }
        if (n < 1) {
            rc = gt_error_set(err, GT_EIO, "%s: revision counter: reply without a count",
                              ms->where);
            break;
        }
        *out = n;
    }
    mongoc_find_and_modify_opts_destroy(fm);
    bson_destroy(update);
    bson_destroy(query);
    mongoc_collection_destroy(c);
    return rc;
}

/* Reads coll/id outside any transaction: *exists, and body/rev when wanted. */
static gt_err doc_fetch(mongo_store *ms, const char *coll, const char *id, bool *exists,
                        char **body, int64_t *rev, gt_error *err)
{
    mongoc_collection_t *c = coll_of(ms, coll);
    bson_t *filter = BCON_NEW("_id", BCON_UTF8(id));
    bson_t *opts = BCON_NEW("limit", BCON_INT64(1), "projection", "{", "b", BCON_INT32(1),
                            "rev", BCON_INT32(1), "}");
    mongoc_cursor_t *cur = mongoc_collection_find_with_opts(c, filter, opts, NULL);
    const bson_t *doc;
    bson_error_t e;
    gt_err rc = GT_OK;
    char *b = NULL;
    int64_t r = 0;
    *exists = false;
    if (mongoc_cursor_next(cur, &doc)) {
        *exists = true;
        rc = gt_mongo__doc_read(doc, NULL, &b, &r, err);
    } else if (mongoc_cursor_error(cur, &e)) {
        rc = fail(ms, err, &e, "read %s/%s", coll, id);
    }
    if (rc == GT_OK && body)
        *body = b;
    else
        free(b);
    if (rev)
        *rev = r;
    mongoc_cursor_destroy(cur);
    bson_destroy(opts);
    bson_destroy(filter);
    mongoc_collection_destroy(c);
    return rc;
}

/* After a write matched nothing: the conflict (or not-found) message from what is
 * stored now. A state that would have let the write through means it changed again in
 * between: still a conflict. */
static gt_err rev_refused(mongo_store *ms, const char *coll, const char *id, int64_t expect_rev,
                          bool is_delete, gt_error *err)
{
    bool exists = false;
    int64_t cur = 0;
    gt_err rc = doc_fetch(ms, coll, id, &exists, NULL, &cur, err);
    if (rc != GT_OK)
        return rc;
    rc = gt_store__check_rev(coll, id, exists, cur, expect_rev, is_delete, err);
    if (rc == GT_OK)
        rc = gt_error_set(err, GT_ECONFLICT, "%s/%s: revision conflict: changed concurrently",
                          coll, id);
    return rc;
}

/* Options for one operation: the session when in a transaction. */
static bson_t *op_opts(mongoc_client_session_t *session, bool upsert)
{
    bson_t *o = bson_new();
    if (upsert)
        BSON_APPEND_BOOL(o, "upsert", true);
    if (session)
        mongoc_client_session_append(session, o, NULL);
    return o;
}

/* What a write inside a transaction hands back: the reply (for its error labels). */
typedef struct txn_note {
    bson_t *reply;
} txn_note;

static void note_reply(txn_note *note, const bson_t *reply)
{
    if (note && note->reply == NULL && reply)
        note->reply = bson_copy(reply);
}

/* Writes coll/id = body at revision R if its revision is expect_rev. GT_EAGAIN: R is
 * not above the stored revision (GT_REV_ANY); draw another. */
static gt_err doc_write(mongo_store *ms, mongoc_client_session_t *session, txn_note *note,
                        const char *coll, const char *id, const char *body, int64_t expect_rev,
                        int64_t R, gt_error *err)
{
    /* No reader can have seen a revision drawn after R: whatever is stored now, the
     * write fails (it takes effect, or not, at the draw). */
    if (expect_rev >= R)
        return rev_refused(ms, coll, id, expect_rev, false, err);
    mongoc_collection_t *c = coll_of(ms, coll);
    bson_t doc, reply;
    gt_mongo__doc_bson(id, body, R, &doc);
    bson_t *opts = op_opts(session, expect_rev == GT_REV_ANY);
    bson_t *filter = NULL;
    bson_error_t e;
    bool ok;
    gt_err rc = GT_OK;
    if (expect_rev == GT_REV_NONE) {
        ok = mongoc_collection_insert_one(c, &doc, opts, &reply, &e);
    } else {
        filter = expect_rev == GT_REV_ANY
                     ? BCON_NEW("_id", BCON_UTF8(id), "rev", "{", "$lt", BCON_INT64(R), "}")
                     : BCON_NEW("_id", BCON_UTF8(id), "rev", BCON_INT64(expect_rev));
        ok = mongoc_collection_replace_one(c, filter, &doc, opts, &reply, &e);
    }
    if (!ok && is_code(&e, CODE_DUPKEY))
        rc = expect_rev == GT_REV_ANY ? GT_EAGAIN
                                      : rev_refused(ms, coll, id, expect_rev, false, err);
    else if (!ok)
        rc = fail(ms, err, &e, "write %s/%s", coll, id);
    else if (expect_rev > 0 && reply_count(&reply, "matchedCount") == 0)
        rc = rev_refused(ms, coll, id, expect_rev, false, err);
    if (!ok)
        note_reply(note, &reply);
    bson_destroy(&reply);
    bson_destroy(filter);
    bson_destroy(opts);
    bson_destroy(&doc);
    mongoc_collection_destroy(c);
    return rc;
}

static gt_err doc_delete(mongo_store *ms, mongoc_client_session_t *session, txn_note *note,
                         const char *coll, const char *id, int64_t expect_rev, gt_error *err)
{
    mongoc_collection_t *c = coll_of(ms, coll);
    bson_t *filter = expect_rev == GT_REV_ANY
                         ? BCON_NEW("_id", BCON_UTF8(id))
                         : BCON_NEW("_id", BCON_UTF8(id), "rev", BCON_INT64(expect_rev));
    bson_t *opts = op_opts(session, false);
    bson_t reply;
    bson_error_t e;
    gt_err rc = GT_OK;
    bool ok = mongoc_collection_delete_one(c, filter, opts, &reply, &e);
    if (!ok) {
        note_reply(note, &reply);
        rc = fail(ms, err, &e, "delete %s/%s", coll, id);
    } else if (reply_count(&reply, "deletedCount") == 0) {
        rc = rev_refused(ms, coll, id, expect_rev, true, err);
    }
    bson_destroy(&reply);
    bson_destroy(opts);
    bson_destroy(filter);
    mongoc_collection_destroy(c);
    return rc;
}

/* A CHECK inside a transaction. It writes, so that a concurrent change of the document
 * conflicts with the transaction: a bump of k on the document at expect_rev (any
 * revision for GT_REV_ANY), or for "absent" a placeholder inserted and deleted again. */
static gt_err doc_check(mongo_store *ms, mongoc_client_session_t *session, txn_note *note,
                        const char *coll, const char *id, int64_t expect_rev, gt_error *err)
{
    mongoc_collection_t *c = coll_of(ms, coll);
    bson_t *opts = op_opts(session, false);
    bson_t reply;
    bson_error_t e;
    gt_err rc = GT_OK;
    bool ok;
    if (expect_rev == GT_REV_NONE) {
        bson_t *ph = BCON_NEW("_id", BCON_UTF8(id), "placeholder", BCON_BOOL(true));
        ok = mongoc_collection_insert_one(c, ph, opts, &reply, &e);
        if (ok) {
            bson_destroy(&reply);
            ok = mongoc_collection_delete_one(c, ph, opts, &reply, &e);
        }
        bson_destroy(ph);
        if (!ok && is_code(&e, CODE_DUPKEY))
            rc = rev_refused(ms, coll, id, expect_rev, false, err);
    } else {
        /* GT_REV_ANY asks that the document exist, as a delete would */
        bool any = expect_rev == GT_REV_ANY;
        bson_t *filter = any ? BCON_NEW("_id", BCON_UTF8(id))
                             : BCON_NEW("_id", BCON_UTF8(id), "rev", BCON_INT64(expect_rev));
        bson_t *bump = BCON_NEW("$inc", "{", "k", BCON_INT64(1), "}");
        ok = mongoc_collection_update_one(c, filter, bump, opts, &reply, &e);
        if (ok && reply_count(&reply, "matchedCount") == 0)
            rc = rev_refused(ms, coll, id, expect_rev, any, err);
        bson_destroy(bump);
        bson_destroy(filter);
    }
    if (!ok && rc == GT_OK) {
        note_reply(note, &reply);
        rc = fail(ms, err, &e, "check %s/%s", coll, id);
    }
    bson_destroy(&reply);
    bson_destroy(opts);
    mongoc_collection_destroy(c);
    return rc;
}

/* ---- leases ---- */

/* The lease name as stored now, with the server's clock ($$NOW) beside it. */
static gt_err lease_fetch(mongo_store *ms, const char *name, gt_mongo_lease *out, gt_error *err)
{
    mongoc_collection_t *c = coll_of(ms, "_leases");
    bson_t *pipeline = BCON_NEW("pipeline", "[", "{", "$match", "{", "_id", BCON_UTF8(name), "}",
                                "}", "{", "$project", "{", "holder", BCON_INT32(1), "epoch",
                                BCON_INT32(1), "expires", BCON_INT32(1), "now", BCON_UTF8("$$NOW"),
                                "}", "}", "]");
    mongoc_cursor_t *cur = mongoc_collection_aggregate(c, MONGOC_QUERY_NONE, pipeline, NULL, NULL);
    const bson_t *doc;
    bson_error_t e;
    gt_err rc = GT_OK;
    memset(out, 0, sizeof *out);
    if (mongoc_cursor_next(cur, &doc))
        rc = gt_mongo__lease_read(doc, out, err);
    else if (mongoc_cursor_error(cur, &e))
        rc = fail(ms, err, &e, "read lease %s", name);
    else
        out->holder = gt_xstrdup("");
    mongoc_cursor_destroy(cur);
    bson_destroy(pipeline);
    mongoc_collection_destroy(c);
    return rc;
}

static gt_store_lease lease_view(const gt_mongo_lease *l)
{
    return (gt_store_lease){l->holder ? l->holder : "", l->epoch, l->expires_ms};
}

/* The aggregation expression "the stored lease is live": a holder, and an expiry after
 * the server's $$NOW. */
static bson_t *live_expr(void)
{
    return BCON_NEW("$and", "[", "{", "$ne", "[", "{", "$ifNull", "[", BCON_UTF8("$holder"),
                    BCON_UTF8(""), "]", "}", BCON_UTF8(""), "]", "}", "{", "$gt", "[", "{",
                    "$ifNull", "[", BCON_UTF8("$expires"), BCON_DATE_TIME(0), "]", "}",
                    BCON_UTF8("$$NOW"), "]", "}", "]");
}

static gt_err mongo_lease_acquire(gt_store *s, const char *name, const char *holder,
                                  int64_t ttl_ms, int64_t *epoch, gt_error *err)
{
    mongo_store *ms = (mongo_store *)s;
    mongoc_collection_t *c = coll_of(ms, "_leases");
    bson_t *live = live_expr();
    bson_t *mine = BCON_NEW("$eq", "[", BCON_UTF8("$holder"), "{", "$literal", BCON_UTF8(holder),
                            "}", "]");
    /* takeable: not live, or ours (a missing lease is inserted from _id) */
    bson_t *query = BCON_NEW("_id", BCON_UTF8(name), "$expr", "{", "$or", "[", "{", "$not", "[",
                             BCON_DOCUMENT(live), "]", "}", BCON_DOCUMENT(mine), "]", "}");
    /* a pipeline: a live lease of ours keeps its epoch, anything else is a new term
     * (epoch + 1); then holder and expiry, by the server's clock */
    bson_t *update = BCON_NEW(
        "0", "{", "$set", "{", "epoch", "{", "$cond", "{", "if", "{", "$and", "[",
        BCON_DOCUMENT(live), BCON_DOCUMENT(mine), "]", "}", "then", BCON_UTF8("$epoch"), "else",
        "{", "$add", "[", "{", "$ifNull", "[", BCON_UTF8("$epoch"), BCON_INT64(0), "]", "}",
        BCON_INT64(1), "]", "}", "}", "}", "}", "}",
        "1", "{", "$set", "{", "holder", "{", "$literal", BCON_UTF8(holder), "}", "expires", "{",
        "$add", "[", BCON_UTF8("$$NOW"), BCON_INT64(ttl_ms), "]", "}", "}", "}");
    mongoc_find_and_modify_opts_t *fm = mongoc_find_and_modify_opts_new();
    mongoc_find_and_modify_opts_set_update(fm, update);
    mongoc_find_and_modify_opts_set_flags(fm, MONGOC_FIND_AND_MODIFY_UPSERT |
                                                  MONGOC_FIND_AND_MODIFY_RETURN_NEW);
    gt_err rc = GT_OK;
    for (int attempt = 0;; attempt++) {
        bson_t reply;
        bson_error_t e;
        bool ok = mongoc_collection_find_and_modify_with_opts(c, query, fm, &reply, &e);
        if (ok) {
            bson_iter_t it;
            uint32_t len = 0;
            const uint8_t *raw = NULL;
            bson_t value;
            gt_mongo_lease got = {0};
            if (bson_iter_init_find(&it, &reply, "value") && BSON_ITER_HOLDS_DOCUMENT(&it)) {
                bson_iter_document(&it, &len, &raw);
                if (bson_init_static(&value, raw, len))
                    rc = gt_mongo__lease_read(&value, &got, err);
                else
                    rc = gt_error_set(err, GT_EIO, "%s: lease %s: bad reply", ms->where, name);
            } else {
                rc = gt_error_set(err, GT_EIO, "%s: lease %s: reply without the lease",
                                  ms->where, name);
            }
            if (rc == GT_OK && (strcmp(got.holder, holder) != 0 || got.epoch < 1))
                rc = gt_error_set(err, GT_EIO, "%s: lease %s: stored lease is not the one taken",
                                  ms->where, name);
            *epoch = got.epoch;
            gt_mongo__lease_clear(&got);
            bson_destroy(&reply);
            break;
        }
        bson_destroy(&reply);
        if (!is_code(&e, CODE_DUPKEY)) {
            rc = fail(ms, err, &e, "acquire lease %s", name);
            break;
        }
        /* the filter did not match an existing lease: someone else's, live (or it
         * expired just now: try again) */
        gt_mongo_lease cur;
        gt_store_lease next;
        if ((rc = lease_fetch(ms, name, &cur, err)) != GT_OK)
            break;
        gt_store_lease view = lease_view(&cur);
        rc = gt_store__lease_take(name, &view, holder, cur.now_ms, ttl_ms, &next, err);
        gt_mongo__lease_clear(&cur);
        if (rc != GT_OK)
            break;
        if (attempt >= MAX_RETRIES) {
            rc = gt_error_set(err, GT_ECONFLICT, "lease %s: contended, not taken", name);
            break;
        }
    }
    mongoc_find_and_modify_opts_destroy(fm);
    bson_destroy(update);
    bson_destroy(query);
    bson_destroy(mine);
    bson_destroy(live);
    mongoc_collection_destroy(c);
    return rc;
}

static gt_err mongo_lease_release(gt_store *s, const char *name, const char *holder,
                                  gt_error *err)
{
    mongo_store *ms = (mongo_store *)s;
    mongoc_collection_t *c = coll_of(ms, "_leases");
    bson_t *filter = BCON_NEW("_id", BCON_UTF8(name), "holder", BCON_UTF8(holder));
    /* the epoch stays, so the next term's is higher */
    bson_t *update = BCON_NEW("$set", "{", "holder", BCON_UTF8(""), "expires", BCON_DATE_TIME(0),
                              "}");
    bson_t reply;
    bson_error_t e;
    gt_err rc = GT_OK;
    if (!mongoc_collection_update_one(c, filter, update, NULL, &reply, &e)) {
        rc = fail(ms, err, &e, "release lease %s", name);
    } else if (reply_count(&reply, "matchedCount") == 0) {
        gt_mongo_lease cur;
        bool store_free = false;
        if ((rc = lease_fetch(ms, name, &cur, err)) == GT_OK) {
            gt_store_lease view = lease_view(&cur);
            rc = gt_store__lease_give(name, &view, holder, cur.now_ms, &store_free, err);
            gt_mongo__lease_clear(&cur);
        }
    }
    bson_destroy(&reply);
    bson_destroy(update);
    bson_destroy(filter);
    mongoc_collection_destroy(c);
    return rc;
}

/* Inside a transaction: the fence's lease must be held at its epoch and not expired by
 * the server's clock; the write to it (a counter) makes a concurrent acquire conflict. */
static gt_err fence_hold(mongo_store *ms, mongoc_client_session_t *session, txn_note *note,
                         const gt_store_fence *f, gt_error *err)
{
    mongoc_collection_t *c = coll_of(ms, "_leases");
    bson_t *filter = BCON_NEW("_id", BCON_UTF8(f->name), "holder", BCON_UTF8(f->holder), "epoch",
                              BCON_INT64(f->epoch), "$expr", "{", "$gt", "[", BCON_UTF8("$expires"),
                              BCON_UTF8("$$NOW"), "]", "}");
    bson_t *bump = BCON_NEW("$inc", "{", "fenced", BCON_INT64(1), "}");
    bson_t *opts = op_opts(session, false);
    bson_t reply;
    bson_error_t e;
    gt_err rc = GT_OK;
    if (!mongoc_collection_update_one(c, filter, bump, opts, &reply, &e)) {
        note_reply(note, &reply);
        rc = fail(ms, err, &e, "fence %s", f->name);
    } else if (reply_count(&reply, "matchedCount") == 0) {
        gt_mongo_lease cur;
        if ((rc = lease_fetch(ms, f->name, &cur, err)) == GT_OK) {
            gt_store_lease view = lease_view(&cur);
            rc = gt_store__fence_check(f, &view, cur.now_ms, err);
            if (rc == GT_OK)
                rc = gt_error_set(err, GT_ECONFLICT, "fenced: lease %s changed concurrently",
                                  f->name);
            gt_mongo__lease_clear(&cur);
        }
    }
    bson_destroy(&reply);
    bson_destroy(opts);
    bson_destroy(bump);
    bson_destroy(filter);
    mongoc_collection_destroy(c);
    return rc;
}

/* ---- transactions: gt_store_apply and fenced puts ---- */

typedef struct txn_ctx {
    mongo_store *ms;
    gt_store_op *ops;
    size_t n;
    const gt_store_fence *fence;
    int64_t R;
    bool mark_ops;       /* name the failing op in err->field (apply, not put_fenced) */
    gt_err rc;           /* the callback's verdict */
    gt_error err;
} txn_ctx;

static bool txn_body(mongoc_client_session_t *session, void *arg, bson_t **reply,
                     bson_error_t *error)
{
    txn_ctx *t = arg;
    txn_note note = {NULL};
    gt_error_clear(&t->err);   /* a retried transaction starts over */
    t->rc = GT_OK;
    if (t->fence)
        t->rc = fence_hold(t->ms, session, &note, t->fence, &t->err);
    for (size_t i = 0; i < t->n && t->rc == GT_OK; i++) {
        gt_store_op *o = &t->ops[i];
        switch (o->kind) {
        case GT_STORE_OP_PUT:
            t->rc = doc_write(t->ms, session, &note, o->coll, o->id, o->body, o->expect_rev, t->R,
                              &t->err);
            break;
        case GT_STORE_OP_DELETE:
            t->rc = doc_delete(t->ms, session, &note, o->coll, o->id, o->expect_rev, &t->err);
            break;
        case GT_STORE_OP_CHECK:
            t->rc = doc_check(t->ms, session, &note, o->coll, o->id, o->expect_rev, &t->err);
            break;
        }
        if (t->rc != GT_OK && t->rc != GT_EAGAIN && t->mark_ops)
            gt_store__at_op(&t->err, t->rc, i);
    }
    *reply = note.reply;   /* carries TransientTransactionError when there was one */
    if (t->rc == GT_OK)
        return true;
    bson_set_error(error, MONGOC_ERROR_CLIENT, 0, "%s",
                   t->err.message[0] ? t->err.message : "revision drawn again");
    return false;
}

static gt_err run_txn(mongo_store *ms, gt_store_op *ops, size_t n, const gt_store_fence *fence,
                      bool mark_ops, gt_error *err)
{
    bson_error_t e;
    gt_err rc = GT_OK;
    for (size_t i = 0; i < n; i++)
        if ((rc = coll_make(ms, ops[i].coll, err)) != GT_OK)
            return mark_ops ? gt_store__at_op(err, rc, i) : rc;
    if (ms->session == NULL && (ms->session = mongoc_client_start_session(ms->client, NULL, &e)) ==
                                   NULL)
        return fail(ms, err, &e, "start a session");
    mongoc_transaction_opt_t *to = mongoc_transaction_opts_new();
    mongoc_read_concern_t *rcn = mongoc_read_concern_new();
    mongoc_write_concern_t *wc = mongoc_write_concern_new();
    mongoc_read_concern_set_level(rcn, MONGOC_READ_CONCERN_LEVEL_SNAPSHOT);
    mongoc_write_concern_set_w(wc, MONGOC_WRITE_CONCERN_W_MAJORITY);
    mongoc_transaction_opts_set_read_concern(to, rcn);
    mongoc_transaction_opts_set_write_concern(to, wc);
    txn_ctx t = {.ms = ms, .ops = ops, .n = n, .fence = fence, .mark_ops = mark_ops};
    for (int attempt = 0;; attempt++) {
        if ((rc = rev_next(ms, &t.R, err)) != GT_OK)
            break;
        bson_t reply;
        bool ok = mongoc_client_session_with_transaction(ms->session, txn_body, to, &t, &reply, &e);
        bson_destroy(&reply);
        if (ok) {
            for (size_t i = 0; i < n; i++)
                ops[i].new_rev = ops[i].kind == GT_STORE_OP_PUT ? t.R : 0;
            break;
        }
        if (t.rc == GT_EAGAIN && attempt < MAX_RETRIES)
            continue;
        if (t.rc == GT_EAGAIN) {
            rc = gt_error_set(err, GT_ECONFLICT, "%s: write contended, not applied", ms->where);
        } else if (t.rc != GT_OK) {
            rc = t.rc;
            if (err && err->code == GT_OK)
                *err = t.err;
        } else {
            rc = fail(ms, err, &e, "transaction");
        }
        break;
    }
    mongoc_write_concern_destroy(wc);
    mongoc_read_concern_destroy(rcn);
    mongoc_transaction_opts_destroy(to);
    return rc;
}

/* ---- the ops ---- */

static gt_err mongo_get(gt_store *s, const char *coll, const char *id, char **body, int64_t *rev,
                        gt_error *err)
{
    bool exists = false;
    gt_err rc = doc_fetch((mongo_store *)s, coll, id, &exists, body, rev, err);
    if (rc == GT_OK && !exists)
        rc = gt_error_set(err, GT_ENOTFOUND, "%s/%s: not found", coll, id);
    return rc;
}

static gt_err mongo_put(gt_store *s, const char *coll, const char *id, const char *body,
                        int64_t expect_rev, int64_t *new_rev, const gt_store_fence *fence,
                        gt_error *err)
{
    mongo_store *ms = (mongo_store *)s;
    gt_err rc;
    if (fence) {
        gt_store_op op = {GT_STORE_OP_PUT, coll, id, body, expect_rev, 0};
        rc = run_txn(ms, &op, 1, fence, false, err);
        *new_rev = op.new_rev;
        return rc;
    }
    int64_t R = 0;
    for (int attempt = 0;; attempt++) {
        if ((rc = rev_next(ms, &R, err)) != GT_OK)
            return rc;
        rc = doc_write(ms, NULL, NULL, coll, id, body, expect_rev, R, err);
        if (rc != GT_EAGAIN)
            break;
        if (attempt >= MAX_RETRIES)
            return gt_error_set(err, GT_ECONFLICT, "%s/%s: contended, not written", coll, id);
    }
    if (rc == GT_OK)
        *new_rev = R;
    return rc;
}

static gt_err mongo_del(gt_store *s, const char *coll, const char *id, int64_t expect_rev,
                        gt_error *err)
{
    return doc_delete((mongo_store *)s, NULL, NULL, coll, id, expect_rev, err);
}

static gt_err mongo_apply(gt_store *s, gt_store_op *ops, size_t n, const gt_store_fence *fence,
                          gt_error *err)
{
    return run_txn((mongo_store *)s, ops, n, fence, true, err);
}

static char *index_key(const char *coll, const char *field)
{
    return gt_xasprintf("%s\n%s", coll, field);
}

static gt_err mongo_index(gt_store *s, const char *coll, const char *field, gt_error *err)
{
    mongo_store *ms = (mongo_store *)s;
    char *key = gt_xasprintf("x.%s", field), *name = gt_xasprintf("x_%s", field);
    char *full = gt_xasprintf("%s%s", ms->prefix, coll);
    bson_t *cmd = BCON_NEW("createIndexes", BCON_UTF8(full), "indexes", "[", "{", "key", "{",
                           key, BCON_INT32(1), "_id", BCON_INT32(1), "}", "name", BCON_UTF8(name),
                           "}", "]");
    mongoc_database_t *db = mongoc_client_get_database(ms->client, ms->dbname);
    bson_t reply;
    bson_error_t e;
    gt_err rc = GT_OK;
    if (!mongoc_database_write_command_with_opts(db, cmd, NULL, &reply, &e))
        rc = fail(ms, err, &e, "declare index %s.%s", coll, field);
    else
        gt_strv_push_owned(&ms->indexed, index_key(coll, field));
    bson_destroy(&reply);
    mongoc_database_destroy(db);
    bson_destroy(cmd);
    free(full);
    free(name);
    free(key);
    return rc;
}

/* Is field declared on coll? Asked of the server (another process may have declared
 * it) until this handle has seen it. */
static gt_err check_indexed(mongo_store *ms, const char *coll, const char *field, gt_error *err)
{
    char *key = index_key(coll, field);
    for (size_t i = 0; i < ms->indexed.n; i++)
        if (strcmp(ms->indexed.v[i], key) == 0) {
            free(key);
            return GT_OK;
        }
    char *want = gt_xasprintf("x_%s", field);
    mongoc_collection_t *c = coll_of(ms, coll);
    mongoc_cursor_t *cur = mongoc_collection_find_indexes_with_opts(c, NULL);
    const bson_t *spec;
    bson_error_t e;
    bool found = false;
    gt_err rc = GT_OK;
    while (!found && mongoc_cursor_next(cur, &spec)) {
        uint32_t len = 0;
        const char *n = bson_str(spec, "name", &len);
        found = n && strcmp(n, want) == 0;
    }
    if (!found && mongoc_cursor_error(cur, &e) && !is_code(&e, CODE_NS_NOT_FOUND))
        rc = fail(ms, err, &e, "list indexes of %s", coll);
    else if (!found)
        rc = gt_error_setf(err, GT_EINVAL, "field", "%s: field %s is not indexed", coll, field);
    if (found)
        gt_strv_push_owned(&ms->indexed, key);
    else
        free(key);
    mongoc_cursor_destroy(cur);
    mongoc_collection_destroy(c);
    free(want);
    return rc;
}

/* Runs a find and fills page with at most limit items (limit + 1 asked for, so the
 * page knows whether more follow). A range's next_cursor is the shared (value, id)
 * cursor, its value from value_key (an x field; NULL: a range on ids). */
static gt_err find_page(mongo_store *ms, const char *coll, const bson_t *filter, const bson_t *sort,
                        size_t limit, bool range, const char *value_key, gt_store_page *page,
                        gt_error *err)
{
    mongoc_collection_t *c = coll_of(ms, coll);
    bson_t opts, proj;
    bson_init(&opts);
    BSON_APPEND_DOCUMENT(&opts, "sort", sort);
    BSON_APPEND_INT64(&opts, "limit", (int64_t)limit + 1);
    BSON_APPEND_DOCUMENT_BEGIN(&opts, "projection", &proj);
    BSON_APPEND_INT32(&proj, "b", 1);
    BSON_APPEND_INT32(&proj, "rev", 1);
    if (value_key)
        BSON_APPEND_INT32(&proj, value_key, 1);
    bson_append_document_end(&opts, &proj);
    mongoc_cursor_t *cur = mongoc_collection_find_with_opts(c, filter, &opts, NULL);
    const bson_t *doc;
    bson_error_t e;
    gt_err rc = GT_OK;
    char *last_value = NULL;
    while (rc == GT_OK && mongoc_cursor_next(cur, &doc)) {
        if (page->n == limit) {
            const char *last = page->items[page->n - 1].id;
            if (!range)
                gt_store__page_more(page);
            else
                page->next_cursor = gt_store__range_cursor(value_key ? last_value : last, last);
            break;
        }
        char *id = NULL, *body = NULL;
        int64_t rev = 0;
        if ((rc = gt_mongo__doc_read(doc, &id, &body, &rev, err)) != GT_OK)
            break;
        if (value_key) {
            bson_iter_t it, v;
            uint32_t len = 0;
            const char *s = NULL;
            if (bson_iter_init(&it, doc) && bson_iter_find_descendant(&it, value_key, &v) &&
                BSON_ITER_HOLDS_UTF8(&v))
                s = bson_iter_utf8(&v, &len);
            free(last_value);
            last_value = text_ok(s, len) ? gt_xstrndup(s, len) : NULL;
            if (last_value == NULL)
                rc = gt_error_set(err, GT_EIO, "%s: %s/%s: range reply without %s", ms->where,
                                  coll, id, value_key);
        }
        if (rc == GT_OK)
            gt_store__page_add(page, id, strlen(id), body, strlen(body), rev);
        free(id);
        free(body);
    }
    if (rc == GT_OK && mongoc_cursor_error(cur, &e))
        rc = fail(ms, err, &e, "query %s", coll);
    free(last_value);
    mongoc_cursor_destroy(cur);
    bson_destroy(&opts);
    mongoc_collection_destroy(c);
    return rc;
}

static gt_err mongo_query(gt_store *s, const char *coll, const char *field, const char *value,
                          const char *cursor, size_t limit, bool descending, gt_store_page *page,
                          gt_error *err)
{
    mongo_store *ms = (mongo_store *)s;
    gt_err rc;
    if (field && (rc = check_indexed(ms, coll, field, err)) != GT_OK)
        return rc;
    bson_t filter, idc;
    bson_init(&filter);
    if (field) {
        char *key = gt_xasprintf("x.%s", field);
        BSON_APPEND_UTF8(&filter, key, value);
        free(key);
    }
    if (cursor) {
        BSON_APPEND_DOCUMENT_BEGIN(&filter, "_id", &idc);
        BSON_APPEND_UTF8(&idc, descending ? "$lt" : "$gt", cursor);
        bson_append_document_end(&filter, &idc);
    }
    bson_t *sort = BCON_NEW("_id", BCON_INT32(descending ? -1 : 1));
    rc = find_page(ms, coll, &filter, sort, limit, false, NULL, page, err);
    bson_destroy(sort);
    bson_destroy(&filter);
    return rc;
}

/* Appends to the $and array and the conditions "lo <= key < hi" (a string when neither
 * bound is given). */
static void append_bounds(bson_t *and_arr, int *k, const char *key, const char *lo,
                          const char *hi)
{
    char idx[16];
    bson_t cond, ops;
    snprintf(idx, sizeof idx, "%d", (*k)++);
    BSON_APPEND_DOCUMENT_BEGIN(and_arr, idx, &cond);
    BSON_APPEND_DOCUMENT_BEGIN(&cond, key, &ops);
    if (lo)
        BSON_APPEND_UTF8(&ops, "$gte", lo);
    if (hi)
        BSON_APPEND_UTF8(&ops, "$lt", hi);
    if (!lo && !hi)
        BSON_APPEND_UTF8(&ops, "$type", "string");
    bson_append_document_end(&cond, &ops);
    bson_append_document_end(and_arr, &cond);
}

static gt_err mongo_query_range(gt_store *s, const char *coll, const char *field, const char *lo,
                                const char *hi, const char *cursor, size_t limit,
                                gt_store_page *page, gt_error *err)
{
    mongo_store *ms = (mongo_store *)s;
    gt_err rc;
    char *cv = NULL, *cid = NULL;
    if (field && (rc = check_indexed(ms, coll, field, err)) != GT_OK)
        return rc;
    if (cursor &&
        (rc = gt_store__range_cursor_parse(coll, field, cursor, &cv, &cid, err)) != GT_OK)
        return rc;
    char *key = field ? gt_xasprintf("x.%s", field) : gt_xstrdup("_id");
    bson_t filter, and_arr;
    bson_init(&filter);
    BSON_APPEND_ARRAY_BEGIN(&filter, "$and", &and_arr);
    int k = 0;
    append_bounds(&and_arr, &k, key, lo, hi);
    if (cursor && !field) {
        bson_t *after = BCON_NEW("_id", "{", "$gt", BCON_UTF8(cid), "}");
        BSON_APPEND_DOCUMENT(&and_arr, "1", after);
        bson_destroy(after);
    } else if (cursor) {
        /* after (cv, cid) in (value, id) order */
        bson_t *after = BCON_NEW("$or", "[", "{", key, "{", "$gt", BCON_UTF8(cv), "}", "}", "{",
                                 key, BCON_UTF8(cv), "_id", "{", "$gt", BCON_UTF8(cid), "}", "}",
                                 "]");
        BSON_APPEND_DOCUMENT(&and_arr, "1", after);
        bson_destroy(after);
    }
    bson_append_array_end(&filter, &and_arr);
    bson_t *sort = field ? BCON_NEW(key, BCON_INT32(1), "_id", BCON_INT32(1))
                         : BCON_NEW("_id", BCON_INT32(1));
    rc = find_page(ms, coll, &filter, sort, limit, true, field ? key : NULL, page, err);
    bson_destroy(sort);
    bson_destroy(&filter);
    free(key);
    free(cv);
    free(cid);
    return rc;
}

static gt_err mongo_count(gt_store *s, const char *coll, const gt_store_filter *f, int64_t *n,
                          gt_error *err)
{
    mongo_store *ms = (mongo_store *)s;
    gt_err rc;
    if (f->field && (rc = check_indexed(ms, coll, f->field, err)) != GT_OK)
        return rc;
    char *key = f->field ? gt_xasprintf("x.%s", f->field) : gt_xstrdup("_id");
    bson_t filter, and_arr;
    bson_init(&filter);
    if (f->eq) {
        BSON_APPEND_UTF8(&filter, key, f->eq);
    } else if (f->field || f->lo || f->hi) {
        int k = 0;
        BSON_APPEND_ARRAY_BEGIN(&filter, "$and", &and_arr);
        append_bounds(&and_arr, &k, key, f->lo, f->hi);
        bson_append_array_end(&filter, &and_arr);
    }
    mongoc_collection_t *c = coll_of(ms, coll);
    bson_t reply;
    bson_error_t e;
    int64_t got = mongoc_collection_count_documents(c, &filter, NULL, NULL, &reply, &e);
    rc = GT_OK;
    if (got < 0)
        rc = fail(ms, err, &e, "count %s", coll);
    else
        *n = got;
    bson_destroy(&reply);
    mongoc_collection_destroy(c);
    bson_destroy(&filter);
    free(key);
    return rc;
}

/* ---- change notification ---- */

/* The majority-committed cluster time now: the operationTime of a majority read.
 * Writes not yet majority-committed come after it, so a watch started here misses none. */
static gt_err position_now(mongo_store *ms, int64_t *pos, gt_error *err)
{
    char *name = gt_xasprintf("%s_revs", ms->prefix);
    bson_t *cmd = BCON_NEW("find", BCON_UTF8(name), "filter", "{", "_id", BCON_UTF8("rev"), "}",
                           "limit", BCON_INT32(1), "singleBatch", BCON_BOOL(true));
    bson_t reply;
    bson_error_t e;
    gt_err rc = GT_OK;
    bson_iter_t it;
    if (!mongoc_client_read_command_with_opts(ms->client, ms->dbname, cmd, NULL, NULL, &reply, &e))
        rc = fail(ms, err, &e, "read the cluster time");
    else if (!bson_iter_init_find(&it, &reply, "operationTime") || !BSON_ITER_HOLDS_TIMESTAMP(&it))
        rc = gt_error_set(err, GT_EIO, "%s: reply without an operationTime (is it a replica "
                          "set?)", ms->where);
    else {
        uint32_t t, i;
        bson_iter_timestamp(&it, &t, &i);
        rc = gt_mongo__pos_from_ts(t, i, pos, err);
    }
    bson_destroy(&reply);
    bson_destroy(cmd);
    free(name);
    return rc;
}

/* Escapes s for a regular expression. */
static char *regex_quote(const char *s)
{
    gt_buf b = {0};
    for (; *s; s++) {
        if (strchr("\\^$.|?*+()[]{}-", *s))
            gt_buf_puts(&b, "\\");
        gt_buf_append(&b, s, 1);
    }
    return gt_buf_steal(&b);
}

/* The changes seen so far: one entry per document, its latest change, in the order of
 * those positions. */
typedef struct seen {
    gt_store_change c;
    int64_t pos;
} seen;
typedef struct seen_list {
    seen *v;
    size_t n, cap;
} seen_list;

static void seen_add(seen_list *l, gt_store_change *c, int64_t pos)
{
    for (size_t k = 0; k < l->n; k++)
        if (strcmp(l->v[k].c.coll, c->coll) == 0 && strcmp(l->v[k].c.id, c->id) == 0) {
            free(l->v[k].c.coll);
            free(l->v[k].c.id);
            memmove(&l->v[k], &l->v[k + 1], (l->n - k - 1) * sizeof *l->v);
            l->n--;
            break;
        }
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 16;
        l->v = gt_xrealloc(l->v, l->cap * sizeof *l->v);
    }
    l->v[l->n++] = (seen){*c, pos};
}

static bool seen_has(const seen_list *l, const gt_store_change *c)
{
    for (size_t k = 0; k < l->n; k++)
        if (strcmp(l->v[k].c.coll, c->coll) == 0 && strcmp(l->v[k].c.id, c->id) == 0)
            return true;
    return false;
}

static void seen_free(seen_list *l)
{
    for (size_t k = 0; k < l->n; k++) {
        free(l->v[k].c.coll);
        free(l->v[k].c.id);
    }
    free(l->v);
    memset(l, 0, sizeof *l);
}

static bool history_lost(const bson_error_t *e)
{
    return is_code(e, 286) || is_code(e, 280) || is_code(e, 136);
}

static gt_err mongo_changes_wait(gt_store *s, const char *const *colls, size_t n_colls,
                                 int64_t since, long wait_ms, gt_store_changes *out,
                                 gt_error *err)
{
    mongo_store *ms = (mongo_store *)s;
    if (since == 0)
        return position_now(ms, &out->next, err);
    /* which events: inserts, replaces and deletes of the cluster's store collections,
     * and whatever ends the stream's history (drops, invalidate) */
    bson_t names;
    bson_init(&names);
    if (n_colls > 0) {
        bson_t in;
        BSON_APPEND_ARRAY_BEGIN(&names, "$in", &in);
        for (size_t k = 0; k < n_colls; k++) {
            char idx[24];
            char *full = gt_xasprintf("%s%s", ms->prefix, colls[k]);
            snprintf(idx, sizeof idx, "%zu", k);
            BSON_APPEND_UTF8(&in, idx, full);
            free(full);
        }
        bson_append_array_end(&names, &in);
    } else {
        char *q = regex_quote(ms->prefix);
        char *re = gt_xasprintf("^%s[A-Za-z0-9]", q);
        BSON_APPEND_REGEX(&names, "$regex", re, "");
        free(re);
        free(q);
    }
    bson_t *pipeline = BCON_NEW(
        "pipeline", "[",
        "{", "$match", "{", "$or", "[",
        "{", "ns.db", BCON_UTF8(ms->dbname), "ns.coll", BCON_DOCUMENT(&names), "operationType",
        "{", "$in", "[", BCON_UTF8("insert"), BCON_UTF8("replace"), BCON_UTF8("delete"),
        BCON_UTF8("drop"), BCON_UTF8("rename"), "]", "}", "}",
        "{", "operationType", "{", "$in", "[", BCON_UTF8("dropDatabase"), BCON_UTF8("invalidate"),
        "]", "}", "}", "]", "}", "}",
        /* only what a change needs: not the bodies */
        "{", "$project", "{", "operationType", BCON_INT32(1), "ns", BCON_INT32(1), "documentKey",
        BCON_INT32(1), "clusterTime", BCON_INT32(1), "fullDocument.rev", BCON_INT32(1), "}", "}",
        "]");
    bson_destroy(&names);

    /* A stream that comes back empty has read the oplog past this point, so the next
     * call may start here even when nothing was seen: a quiet cluster's watchers do not
     * fall behind until their history is lost. */
    int64_t quiet = 0;
    gt_err rc = position_now(ms, &quiet, err);
    if (rc != GT_OK) {
        bson_destroy(pipeline);
        return rc;
    }
    uint32_t t, i;
    /* startAtOperationTime is inclusive */
    gt_mongo__ts_from_pos(since < INT64_MAX ? since + 1 : since, &t, &i);
    long await = wait_ms < 1 ? 1 : wait_ms < 100 ? wait_ms : 100;
    bson_t *opts = BCON_NEW("startAtOperationTime", BCON_TIMESTAMP(t, i), "maxAwaitTimeMS",
                            BCON_INT64(await), "batchSize", BCON_INT32(MAX_CHANGES));
    mongoc_database_t *db = mongoc_client_get_database(ms->client, ms->dbname);
    mongoc_change_stream_t *cs = mongoc_database_watch(db, pipeline, opts);
    int64_t deadline = gt_mono_ms() + wait_ms;
    seen_list got = {0};
    bool full = false, reset = false;
    int64_t next = since, cut = 0;
    const bson_t *ev;
    bson_error_t e;
    for (;;) {
        while (!full && !reset && rc == GT_OK && mongoc_change_stream_next(cs, &ev)) {
            gt_mongo_event kind;
            int64_t pos = 0;
            gt_store_change c;
            if ((rc = gt_mongo__change_read(ev, ms->prefix, &kind, &pos, &c, err)) != GT_OK)
                break;
            if (kind == GT_MONGO_EV_RESET) {
                reset = true;
            } else if (kind == GT_MONGO_EV_DOC && got.n == MAX_CHANGES && !seen_has(&got, &c)) {
                free(c.coll);
                free(c.id);
                full = true;
                cut = pos;
            } else {
                if (kind == GT_MONGO_EV_DOC)
                    seen_add(&got, &c, pos);
                if (pos > next)
                    next = pos;
            }
        }
        if (rc != GT_OK || full || reset)
            break;
        if (mongoc_change_stream_error_document(cs, &e, NULL)) {
            if (history_lost(&e))
                reset = true;
            else
                rc = fail(ms, err, &e, "watch changes");
            break;
        }
        if (got.n > 0 || gt_mono_ms() >= deadline)
            break;
    }
    if (full) {
        /* The next call starts before the first change left out, so what shares its
         * position (one transaction) comes then, whole. */
        while (got.n > 0 && got.v[got.n - 1].pos >= cut) {
            got.n--;
            free(got.v[got.n].c.coll);
            free(got.v[got.n].c.id);
        }
        next = got.n > 0 ? got.v[got.n - 1].pos : since;
    } else if (quiet > next) {
        next = quiet;
    }
    if (rc == GT_OK && reset) {
        out->reset = true;
        rc = position_now(ms, &out->next, err);
    } else if (rc == GT_OK) {
        out->v = gt_xcalloc(got.n ? got.n : 1, sizeof *out->v);
        for (size_t k = 0; k < got.n; k++)
            out->v[k] = got.v[k].c;
        out->n = got.n;
        got.n = 0;
        out->next = next;
    }
    seen_free(&got);
    mongoc_change_stream_destroy(cs);
    mongoc_database_destroy(db);
    bson_destroy(opts);
    bson_destroy(pipeline);
    return rc;
}

/* ---- open and close ---- */

static void mongo_close(gt_store *s)
{
    mongo_store *ms = (mongo_store *)s;
    if (ms->session)
        mongoc_client_session_destroy(ms->session);
    if (ms->pool)
        pool_unref(ms->pool, ms->client);
    for (size_t i = 0; i < ms->secrets.n; i++)
        gt_wipe(ms->secrets.v[i], strlen(ms->secrets.v[i]));
    gt_strv_free(&ms->secrets);
    gt_strv_free(&ms->indexed);
    gt_strv_free(&ms->made);
    free(ms->dbname);
    free(ms->prefix);
    free(ms->where);
    free(ms);
}

/* The password as written in the URI (percent-encoded, between ':' and '@'). */
static char *uri_raw_password(const char *uri)
{
    const char *scheme = strstr(uri, "://");
    const char *auth = scheme ? scheme + 3 : uri;
    const char *end = auth + strcspn(auth, "/?");
    const char *at = NULL;
    for (const char *p = auth; p < end; p++)
        if (*p == '@')
            at = p;
    const char *colon = at ? memchr(auth, ':', (size_t)(at - auth)) : NULL;
    return colon && at > colon + 1 ? gt_xstrndup(colon + 1, (size_t)(at - colon - 1)) : NULL;
}

static void add_secret(mongo_store *ms, const char *s)
{
    if (s && s[0])
        gt_strv_push(&ms->secrets, s);
}

/* "mongodb store (h1:27017,h2:27017/db, cluster C)": hosts and database only, never the
 * user information or options, which may hold secrets. */
static char *describe(const mongoc_uri_t *uri, const char *db, const char *cluster)
{
    gt_buf b = {0};
    gt_buf_puts(&b, "mongodb store (");
    const char *srv = mongoc_uri_get_srv_hostname(uri);
    if (srv) {
        gt_buf_printf(&b, "srv %s", srv);
    } else {
        for (const mongoc_host_list_t *h = mongoc_uri_get_hosts(uri); h; h = h->next)
            gt_buf_printf(&b, "%s%s", h == mongoc_uri_get_hosts(uri) ? "" : ",", h->host_and_port);
    }
    gt_buf_printf(&b, "/%s, cluster %s)", db, cluster);
    return gt_buf_steal(&b);
}

gt_store *gt_store_open_mongo(const gt_store_mongo_config *cfg, gt_error *err)
{
    if (cfg == NULL || cfg->uri == NULL || cfg->cluster_id == NULL || !cfg->cluster_id[0])
        return gt_error_set(err, GT_EINVAL, "mongodb store: no URI or cluster id"), NULL;
    pthread_once(&init_once, mongo_init);
    const char *dbname = cfg->database && cfg->database[0] ? cfg->database : "gantry";
    mongo_store *ms = gt_xcalloc(1, sizeof *ms);
    ms->base.ops = &mongo_ops;
    ms->dbname = gt_xstrdup(dbname);
    ms->prefix = gt_xasprintf("%s:", cfg->cluster_id);
    char *raw = uri_raw_password(cfg->uri);
    add_secret(ms, raw);
    free(raw);
    bson_error_t e;
    mongoc_uri_t *uri = mongoc_uri_new_with_error(cfg->uri, &e);
    if (uri == NULL) {
        ms->where = gt_xstrdup("mongodb store");
        char *msg = scrub(ms, e.message);
        gt_error_setf(err, GT_EINVAL, "store.mongodb_uri", "[store] mongodb_uri: %s", msg);
        free(msg);
        goto fail;
    }
    add_secret(ms, mongoc_uri_get_password(uri));
    add_secret(ms, mongoc_uri_get_option_as_utf8(uri, MONGOC_URI_TLSCERTIFICATEKEYFILEPASSWORD,
                                                 NULL));
    ms->where = describe(uri, dbname, cfg->cluster_id);
    /* "<db>.<cluster>:<coll>" within MongoDB's 255 bytes of namespace */
    if (strlen(dbname) + 1 + strlen(ms->prefix) + 64 > 255) {
        gt_error_set(err, GT_EINVAL, "%s: database and cluster id names too long for MongoDB "
                     "collection names (at most %zu bytes together)", ms->where,
                     (size_t)(255 - 1 - 1 - 64));
        goto fail;
    }
    gt_mongo__uri_guarantees(uri);
    ms->pool = pool_ref(uri, &e);
    mongoc_uri_destroy(uri);
    uri = NULL;
    if (ms->pool == NULL) {
        fail(ms, err, &e, "client pool");
        goto fail;
    }
    /* pop would wait for a handle to close: say so instead */
    ms->client = mongoc_client_pool_try_pop(ms->pool->pool);
    if (ms->client == NULL) {
        gt_error_set(err, GT_EUNAVAIL, "%s: every client of the pool is in use (maxPoolSize "
                     "in the URI bounds the handles open at once)", ms->where);
        goto fail;
    }
    /* the primary must answer, and be part of a replica set (transactions, change
     * streams); then the driver's own collections */
    mongoc_server_description_t *sd = mongoc_client_select_server(ms->client, true, NULL, &e);
    if (sd == NULL) {
        fail(ms, err, &e, "select the primary");
        goto fail;
    }
    const char *type = mongoc_server_description_type(sd);
    bool rs = strcmp(type, "RSPrimary") == 0 || strcmp(type, "Mongos") == 0 ||
              strcmp(type, "LoadBalancer") == 0;
    char *type_copy = gt_xstrdup(type);
    mongoc_server_description_destroy(sd);
    if (!rs) {
        gt_error_set(err, GT_EINVAL, "%s: the server is %s; the store needs a replica set "
                     "(transactions and change streams)", ms->where, type_copy);
        free(type_copy);
        goto fail;
    }
    free(type_copy);
    if (coll_make(ms, "_revs", err) != GT_OK || coll_make(ms, "_leases", err) != GT_OK)
        goto fail;
    return &ms->base;
fail:
    mongoc_uri_destroy(uri);
    mongo_close(&ms->base);
    return NULL;
}

static const gt_store_ops mongo_ops = {
    .name = "mongodb",
    .close = mongo_close,
    .index = mongo_index,
    .get = mongo_get,
    .put = mongo_put,
    .del = mongo_del,
    .query = mongo_query,
    .lease_acquire = mongo_lease_acquire,
    .lease_release = mongo_lease_release,
    .query_range = mongo_query_range,
    .count = mongo_count,
    .apply = mongo_apply,
    .changes_wait = mongo_changes_wait,
};
