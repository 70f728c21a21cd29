/* The memory store: for tests and throwaway runs. Each collection keeps its documents
 * in an array sorted by id (binary search; pagination is a walk from the cursor), so
 * it behaves like the other drivers without their machinery. Revisions come from one
 * store-wide counter, as in the local driver. One mutex guards everything, so a
 * handle may be shared by threads. Field queries parse bodies as they go: fine for
 * the sizes this driver is meant for. */
#include <cjson/cJSON.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "store_driver.h"
#include "util.h"

typedef struct mem_doc {
    char *id;
    char *body;
    int64_t rev;
} mem_doc;

typedef struct mem_coll {
    char *name;
    mem_doc *docs;   /* sorted by id (strcmp: byte order, as SQLite and etcd) */
    size_t n, cap;
    gt_strv fields;  /* declared indexes */
} mem_coll;

typedef struct mem_lease {
    char *name;
    char *holder;    /* "" when free */
    int64_t epoch;
    int64_t expires_ms;
} mem_lease;

typedef struct mem_store {
    gt_store base;
    pthread_mutex_t mu;
    int64_t seq;
    mem_coll **colls;
    size_t ncolls, colls_cap;
    mem_lease *leases;
    size_t nleases, leases_cap;
} mem_store;

static const gt_store_ops mem_ops;

gt_store *gt_store_open_memory(gt_error *err)
{
    (void)err;   /* nothing can fail but memory, and that aborts */
    mem_store *ms = gt_xcalloc(1, sizeof *ms);
    ms->base.ops = &mem_ops;
    pthread_mutex_init(&ms->mu, NULL);
    return &ms->base;
}

static void mem_close(gt_store *s)
{
    mem_store *ms = (mem_store *)s;
    for (size_t i = 0; i < ms->ncolls; i++) {
        mem_coll *c = ms->colls[i];
        for (size_t k = 0; k < c->n; k++) {
            free(c->docs[k].id);
            free(c->docs[k].body);
        }
        free(c->docs);
        gt_strv_free(&c->fields);
        free(c->name);
        free(c);
    }
    free(ms->colls);
    for (size_t i = 0; i < ms->nleases; i++) {
        free(ms->leases[i].name);
        free(ms->leases[i].holder);
    }
    free(ms->leases);
    pthread_mutex_destroy(&ms->mu);
    free(ms);
}

/* The collection named coll; created when create is set, else NULL when absent. */
static mem_coll *coll_find(mem_store *ms, const char *coll, bool create)
{
    for (size_t i = 0; i < ms->ncolls; i++)
        if (strcmp(ms->colls[i]->name, coll) == 0)
            return ms->colls[i];
    if (!create)
        return NULL;
    if (ms->ncolls == ms->colls_cap) {
        ms->colls_cap = ms->colls_cap ? ms->colls_cap * 2 : 8;
        ms->colls = gt_xrealloc(ms->colls, ms->colls_cap * sizeof *ms->colls);
    }
    mem_coll *c = gt_xcalloc(1, sizeof *c);
    c->name = gt_xstrdup(coll);
    ms->colls[ms->ncolls++] = c;
    return c;
}

/* Index of the first document whose id is >= id (strictly > when after is set). */
static size_t doc_lower(const mem_coll *c, const char *id, bool after)
{
    size_t lo = 0, hi = c->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int cmp = strcmp(c->docs[mid].id, id);
        if (cmp < 0 || (after && cmp == 0))
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* The document coll/id, or NULL; *pos is where it is or would be inserted. */
static mem_doc *doc_find(mem_coll *c, const char *id, size_t *pos)
{
    size_t i = c ? doc_lower(c, id, false) : 0;
    if (pos)
        *pos = i;
    return (c && i < c->n && strcmp(c->docs[i].id, id) == 0) ? &c->docs[i] : NULL;
}

static bool coll_indexed(const mem_coll *c, const char *field)
{
    for (size_t i = 0; c && i < c->fields.n; i++)
        if (strcmp(c->fields.v[i], field) == 0)
            return true;
    return false;
}

static gt_err mem_index(gt_store *s, const char *coll, const char *field, gt_error *err)
{
    (void)err;
    mem_store *ms = (mem_store *)s;
    pthread_mutex_lock(&ms->mu);
    mem_coll *c = coll_find(ms, coll, true);
    if (!coll_indexed(c, field))
        gt_strv_push(&c->fields, field);
    pthread_mutex_unlock(&ms->mu);
    return GT_OK;
}

static gt_err mem_get(gt_store *s, const char *coll, const char *id, char **body, int64_t *rev,
                      gt_error *err)
{
    mem_store *ms = (mem_store *)s;
    gt_err rc = GT_OK;
    pthread_mutex_lock(&ms->mu);
    mem_doc *d = doc_find(coll_find(ms, coll, false), id, NULL);
    if (d == NULL) {
        rc = gt_error_set(err, GT_ENOTFOUND, "%s/%s: not found", coll, id);
    } else {
        *body = gt_xstrdup(d->body);
        *rev = d->rev;
    }
    pthread_mutex_unlock(&ms->mu);
    return rc;
}

static mem_lease *lease_find(mem_store *ms, const char *name, bool create);

/* The fence as the memory store holds it; called under the lock. */
static gt_err mem_fence_check(mem_store *ms, const gt_store_fence *fence, gt_error *err)
{
    mem_lease *l = lease_find(ms, fence->name, false);
    gt_store_lease cur = {l ? l->holder : "", l ? l->epoch : 0, l ? l->expires_ms : 0};
    return gt_store__fence_check(fence, &cur, gt_now_ms(), err);
}

/* Stores coll/id = body at the next revision and returns it; called under the lock. */
static int64_t doc_write(mem_store *ms, const char *coll, const char *id, const char *body)
{
    size_t pos;
    mem_coll *c = coll_find(ms, coll, true);
    mem_doc *d = doc_find(c, id, &pos);
    if (d == NULL) {
        if (c->n == c->cap) {
            c->cap = c->cap ? c->cap * 2 : 16;
            c->docs = gt_xrealloc(c->docs, c->cap * sizeof *c->docs);
        }
        memmove(&c->docs[pos + 1], &c->docs[pos], (c->n - pos) * sizeof *c->docs);
        c->n++;
        d = &c->docs[pos];
        d->id = gt_xstrdup(id);
        d->body = NULL;
    }
    free(d->body);
    d->body = gt_xstrdup(body);
    d->rev = ++ms->seq;
    return d->rev;
}

/* Removes coll/id, which exists; called under the lock. */
static void doc_remove(mem_store *ms, const char *coll, const char *id)
{
    size_t pos;
    mem_coll *c = coll_find(ms, coll, false);
    mem_doc *d = doc_find(c, id, &pos);
    free(d->id);
    free(d->body);
    memmove(&c->docs[pos], &c->docs[pos + 1], (c->n - pos - 1) * sizeof *c->docs);
    c->n--;
}

static gt_err mem_put(gt_store *s, const char *coll, const char *id, const char *body,
                      int64_t expect_rev, int64_t *new_rev, const gt_store_fence *fence,
                      gt_error *err)
{
    mem_store *ms = (mem_store *)s;
    gt_err rc = GT_OK;
    pthread_mutex_lock(&ms->mu);
    if (fence && (rc = mem_fence_check(ms, fence, err)) != GT_OK)
        goto done;
    mem_doc *d = doc_find(coll_find(ms, coll, false), id, NULL);
    rc = gt_store__check_rev(coll, id, d != NULL, d ? d->rev : 0, expect_rev, false, err);
    if (rc != GT_OK)
        goto done;
    *new_rev = doc_write(ms, coll, id, body);
done:
    pthread_mutex_unlock(&ms->mu);
    return rc;
}

static gt_err mem_del(gt_store *s, const char *coll, const char *id, int64_t expect_rev,
                      gt_error *err)
{
    mem_store *ms = (mem_store *)s;
    pthread_mutex_lock(&ms->mu);
    mem_doc *d = doc_find(coll_find(ms, coll, false), id, NULL);
    gt_err rc = gt_store__check_rev(coll, id, d != NULL, d ? d->rev : 0, expect_rev, true, err);
    if (rc == GT_OK)
        doc_remove(ms, coll, id);
    pthread_mutex_unlock(&ms->mu);
    return rc;
}

/* Whether body's top-level string member field equals value. */
static bool doc_matches(const char *body, const char *field, const char *value)
{
    cJSON *root = cJSON_Parse(body);
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, field);
    bool yes = cJSON_IsString(it) && strcmp(it->valuestring, value) == 0;
    cJSON_Delete(root);
    return yes;
}

static gt_err mem_query(gt_store *s, const char *coll, const char *field, const char *value,
                        const char *cursor, size_t limit, bool descending, gt_store_page *page,
                        gt_error *err)
{
    mem_store *ms = (mem_store *)s;
    gt_err rc = GT_OK;
    pthread_mutex_lock(&ms->mu);
    mem_coll *c = coll_find(ms, coll, false);
    if (field && !coll_indexed(c, field)) {
        rc = gt_error_setf(err, GT_EINVAL, "field", "%s: field %s is not indexed", coll, field);
        goto done;
    }
    size_t n = c ? c->n : 0;
    /* ascending from the first id after cursor; descending from the last id before it */
    size_t start = !c ? 0 : descending ? (cursor ? doc_lower(c, cursor, false) : n)
                                       : (cursor ? doc_lower(c, cursor, true) : 0);
    for (size_t k = 0; c && k < (descending ? start : n - start); k++) {
        const mem_doc *d = &c->docs[descending ? start - 1 - k : start + k];
        if (field && !doc_matches(d->body, field, value))
            continue;
        if (page->n == limit) {
            gt_store__page_more(page);
            break;
        }
        gt_store__page_add(page, d->id, strlen(d->id), d->body, strlen(d->body), d->rev);
    }
done:
    pthread_mutex_unlock(&ms->mu);
    return rc;
}

/* ---- range queries, counts, apply ---- */

/* The value d has for a range over field (NULL: its id); NULL when the field is absent
 * or not a string. *root keeps the parse alive: cJSON_Delete it. */
static const char *range_value(const mem_doc *d, const char *field, cJSON **root)
{
    *root = NULL;
    if (field == NULL)
        return d->id;
    *root = cJSON_Parse(d->body);
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(*root, field);
    return cJSON_IsString(it) ? it->valuestring : NULL;
}

static bool in_range(const char *v, const char *lo, const char *hi)
{
    return v && (lo == NULL || strcmp(v, lo) >= 0) && (hi == NULL || strcmp(v, hi) < 0);
}

typedef struct range_hit {
    char *value;
    const mem_doc *d;
} range_hit;

/* (value, id) ascending, in byte order */
static int hit_cmp(const void *a, const void *b)
{
    const range_hit *x = a, *y = b;
    int c = strcmp(x->value, y->value);
    return c ? c : strcmp(x->d->id, y->d->id);
}

static gt_err mem_query_range(gt_store *s, const char *coll, const char *field, const char *lo,
                              const char *hi, const char *cursor, size_t limit,
                              gt_store_page *page, gt_error *err)
{
    mem_store *ms = (mem_store *)s;
    char *cv = NULL, *cid = NULL;
    range_hit *hits = NULL;
    size_t nhits = 0;
    gt_err rc = GT_OK;
    pthread_mutex_lock(&ms->mu);
    mem_coll *c = coll_find(ms, coll, false);
    if (field && !coll_indexed(c, field)) {
        rc = gt_error_setf(err, GT_EINVAL, "field", "%s: field %s is not indexed", coll, field);
        goto done;
    }
    if (cursor &&
        (rc = gt_store__range_cursor_parse(coll, field, cursor, &cv, &cid, err)) != GT_OK)
        goto done;
    mem_doc after_doc = {cid, NULL, 0};
    range_hit after = {cv, &after_doc};   /* the cursor's (value, id) */
    hits = gt_xcalloc(c && c->n ? c->n : 1, sizeof *hits);
    for (size_t k = 0; c && k < c->n; k++) {
        cJSON *root;
        const char *v = range_value(&c->docs[k], field, &root);
        range_hit h = {(char *)v, &c->docs[k]};
        if (in_range(v, lo, hi) && (cv == NULL || hit_cmp(&h, &after) > 0))
            hits[nhits++] = (range_hit){gt_xstrdup(v), &c->docs[k]};
        cJSON_Delete(root);
    }
    qsort(hits, nhits, sizeof *hits, hit_cmp);
    for (size_t k = 0; k < nhits && k < limit; k++) {
        const mem_doc *d = hits[k].d;
        gt_store__page_add(page, d->id, strlen(d->id), d->body, strlen(d->body), d->rev);
    }
    if (nhits > limit)
        page->next_cursor = gt_store__range_cursor(hits[limit - 1].value, hits[limit - 1].d->id);
done:
    pthread_mutex_unlock(&ms->mu);
    for (size_t k = 0; k < nhits; k++)
        free(hits[k].value);
    free(hits);
    free(cv);
    free(cid);
    return rc;
}

static gt_err mem_count(gt_store *s, const char *coll, const gt_store_filter *f, int64_t *n,
                        gt_error *err)
{
    mem_store *ms = (mem_store *)s;
    gt_err rc = GT_OK;
    pthread_mutex_lock(&ms->mu);
    mem_coll *c = coll_find(ms, coll, false);
    if (f->field && !coll_indexed(c, f->field)) {
        rc = gt_error_setf(err, GT_EINVAL, "field", "%s: field %s is not indexed", coll,
                           f->field);
        goto done;
    }
    for (size_t k = 0; c && k < c->n; k++) {
        cJSON *root;
        const char *v = range_value(&c->docs[k], f->field, &root);
        if (f->eq ? v && strcmp(v, f->eq) == 0 : in_range(v, f->lo, f->hi))
            (*n)++;
        cJSON_Delete(root);
    }
done:
    pthread_mutex_unlock(&ms->mu);
    return rc;
}

/* Every check first, then every write, all under the lock: nobody sees a part. */
static gt_err mem_apply(gt_store *s, gt_store_op *ops, size_t n, const gt_store_fence *fence,
                        gt_error *err)
{
    mem_store *ms = (mem_store *)s;
    gt_err rc = GT_OK;
    pthread_mutex_lock(&ms->mu);
    if (fence && (rc = mem_fence_check(ms, fence, err)) != GT_OK)
        goto done;
    for (size_t i = 0; i < n; i++) {
        const mem_doc *d = doc_find(coll_find(ms, ops[i].coll, false), ops[i].id, NULL);
        if ((rc = gt_store__check_op(&ops[i], i, d != NULL, d ? d->rev : 0, err)) != GT_OK)
            goto done;
    }
    for (size_t i = 0; i < n; i++) {
        if (ops[i].kind == GT_STORE_OP_PUT)
            ops[i].new_rev = doc_write(ms, ops[i].coll, ops[i].id, ops[i].body);
        else if (ops[i].kind == GT_STORE_OP_DELETE)
            doc_remove(ms, ops[i].coll, ops[i].id);
    }
done:
    pthread_mutex_unlock(&ms->mu);
    return rc;
}

static mem_lease *lease_find(mem_store *ms, const char *name, bool create)
{
    for (size_t i = 0; i < ms->nleases; i++)
        if (strcmp(ms->leases[i].name, name) == 0)
            return &ms->leases[i];
    if (!create)
        return NULL;
    if (ms->nleases == ms->leases_cap) {
        ms->leases_cap = ms->leases_cap ? ms->leases_cap * 2 : 8;
        ms->leases = gt_xrealloc(ms->leases, ms->leases_cap * sizeof *ms->leases);
    }
    mem_lease *l = &ms->leases[ms->nleases++];
    *l = (mem_lease){gt_xstrdup(name), gt_xstrdup(""), 0, 0};
    return l;
}

static gt_err mem_lease_acquire(gt_store *s, const char *name, const char *holder, int64_t ttl_ms,
                                int64_t *epoch, gt_error *err)
{
    mem_store *ms = (mem_store *)s;
    gt_store_lease next;
    pthread_mutex_lock(&ms->mu);
    mem_lease *l = lease_find(ms, name, true);
    gt_store_lease cur = {l->holder, l->epoch, l->expires_ms};
    gt_err rc = gt_store__lease_take(name, &cur, holder, gt_now_ms(), ttl_ms, &next, err);
    if (rc == GT_OK) {
        if (strcmp(l->holder, holder) != 0) {
            free(l->holder);
            l->holder = gt_xstrdup(holder);
        }
        l->epoch = next.epoch;
        l->expires_ms = next.expires_ms;
        *epoch = next.epoch;
    }
    pthread_mutex_unlock(&ms->mu);
    return rc;
}

static gt_err mem_lease_release(gt_store *s, const char *name, const char *holder,
                                gt_error *err)
{
    mem_store *ms = (mem_store *)s;
    gt_err rc = GT_OK;
    bool store_free = false;
    pthread_mutex_lock(&ms->mu);
    mem_lease *l = lease_find(ms, name, false);
    if (l == NULL)
        goto done;
    gt_store_lease cur = {l->holder, l->epoch, l->expires_ms};
    rc = gt_store__lease_give(name, &cur, holder, gt_now_ms(), &store_free, err);
    if (rc == GT_OK && store_free) {
        l->holder[0] = '\0';   /* the epoch stays, so the next term's is higher */
        l->expires_ms = 0;
    }
done:
    pthread_mutex_unlock(&ms->mu);
    return rc;
}

static const gt_store_ops mem_ops = {
    .name = "memory",
    .close = mem_close,
    .index = mem_index,
    .get = mem_get,
    .put = mem_put,
    .del = mem_del,
    .query = mem_query,
    .lease_acquire = mem_lease_acquire,
    .lease_release = mem_lease_release,
    .query_range = mem_query_range,
    .count = mem_count,
    .apply = mem_apply,
};
