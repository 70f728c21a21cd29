/* The store's front door: checks every argument once, the same way for every driver,
 * then dispatches through the driver's ops. Also the helpers drivers share so that
 * codes and messages do not depend on the driver. */
#include "store.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store_driver.h"
#include "util.h"

/* ---- argument checks ---- */

static bool utf8_valid(const unsigned char *p, size_t n);

/* Collections become SQL identifiers, etcd key segments and MongoDB collection names:
 * keep them to a portable alphabet. */
static gt_err check_coll(const char *coll, gt_error *err)
{
    size_t n = coll ? strlen(coll) : 0;
    bool ok = n >= 1 && n <= 64;
    for (size_t i = 0; ok && i < n; i++) {
        char c = coll[i];
        bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
        ok = alnum || (i > 0 && (c == '_' || c == '-' || c == '.'));
    }
    if (!ok)
        return gt_error_setf(err, GT_EINVAL, "coll",
                             "store: collection \"%s\": expected 1-64 of [A-Za-z0-9_.-], "
                             "starting with a letter or digit", coll ? coll : "(null)");
    return GT_OK;
}

static gt_err check_id(const char *coll, const char *id, gt_error *err)
{
    size_t n = id ? strlen(id) : 0;
    if (n == 0)
        return gt_error_setf(err, GT_EINVAL, "id", "%s: empty document id", coll);
    if (n > GT_STORE__MAX_ID)
        return gt_error_setf(err, GT_EINVAL, "id", "%s: document id of %zu bytes (max %d)", coll,
                             n, GT_STORE__MAX_ID);
    if (!utf8_valid((const unsigned char *)id, n))
        return gt_error_setf(err, GT_EINVAL, "id", "%s: document id is not valid UTF-8", coll);
    return GT_OK;
}

/* Top-level field names go into JSON paths ('$.field') and index names verbatim. */
static gt_err check_field(const char *coll, const char *field, gt_error *err)
{
    size_t n = strlen(field);
    bool ok = n >= 1 && n <= 64;
    for (size_t i = 0; ok && i < n; i++) {
        char c = field[i];
        ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
             (i > 0 && c >= '0' && c <= '9');
    }
    if (!ok)
        return gt_error_setf(err, GT_EINVAL, "field",
                             "%s: index field \"%s\": expected 1-64 of [A-Za-z0-9_], "
                             "not starting with a digit", coll, field);
    return GT_OK;
}

static gt_err check_name(const char *what, const char *s, gt_error *err)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > GT_STORE__MAX_NAME || !utf8_valid((const unsigned char *)s, n))
        return gt_error_setf(err, GT_EINVAL, what, "store: lease %s: expected 1-%d bytes of UTF-8",
                             what, GT_STORE__MAX_NAME);
    return GT_OK;
}

/* ---- strict JSON (RFC 8259) ----
 * cJSON and SQLite each accept a few things the other rejects (cJSON: "+1", "01",
 * raw control characters; neither checks UTF-8), and a body SQLite cannot parse would
 * break every json_extract query over its collection. One strict check here means
 * every driver stores exactly the same set of documents. */

enum { JSON_MAX_DEPTH = 512 };

typedef struct jscan {
    const unsigned char *p, *end;
    int depth;
} jscan;

static bool utf8_valid(const unsigned char *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = p[i];
        size_t len;
        unsigned lo = 0x80, hi = 0xBF;
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            len = 2;
        } else if (c >= 0xE0 && c <= 0xEF) {
            len = 3;
            if (c == 0xE0)
                lo = 0xA0;      /* overlong */
            else if (c == 0xED)
                hi = 0x9F;      /* surrogates */
        } else if (c >= 0xF0 && c <= 0xF4) {
            len = 4;
            if (c == 0xF0)
                lo = 0x90;
            else if (c == 0xF4)
                hi = 0x8F;      /* > U+10FFFF */
        } else {
            return false;
        }
        if (n - i < len || p[i + 1] < lo || p[i + 1] > hi)
            return false;
        for (size_t k = 2; k < len; k++)
            if (p[i + k] < 0x80 || p[i + k] > 0xBF)
                return false;
        i += len;
    }
    return true;
}

static void js_ws(jscan *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
        s->p++;
}

static bool js_hex4(jscan *s, unsigned *out)
{
    unsigned v = 0;
    if (s->end - s->p < 4)
        return false;
    for (int i = 0; i < 4; i++) {
        unsigned c = *s->p++;
        if (c >= '0' && c <= '9')
            v = v * 16 + (c - '0');
        else if (c >= 'a' && c <= 'f')
            v = v * 16 + (c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v = v * 16 + (c - 'A' + 10);
        else
            return false;
    }
    *out = v;
    return true;
}

static bool js_string(jscan *s)
{
    s->p++;   /* the opening quote */
    while (s->p < s->end) {
        unsigned c = *s->p;
        if (c == '"') {
            s->p++;
            return true;
        }
        if (c < 0x20)
            return false;
        if (c == '\\') {
            s->p++;
            if (s->p >= s->end)
                return false;
            c = *s->p++;
            if (c == 'u') {
                unsigned u;
                if (!js_hex4(s, &u) || u == 0 || (u >= 0xDC00 && u <= 0xDFFF))
                    return false;   /* NUL cannot live in a C string; lone low surrogate */
                if (u >= 0xD800 && u <= 0xDBFF) {
                    if (s->end - s->p < 2 || s->p[0] != '\\' || s->p[1] != 'u')
                        return false;
                    s->p += 2;
                    if (!js_hex4(s, &u) || u < 0xDC00 || u > 0xDFFF)
                        return false;
                }
            } else if (!strchr("\"\\/bfnrt", (int)c) || c == 0) {
                return false;
            }
            continue;
        }
        if (c < 0x80) {
            s->p++;
            continue;
        }
        /* One multi-byte UTF-8 sequence. */
        size_t len = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
        if ((size_t)(s->end - s->p) < len || !utf8_valid(s->p, len))
            return false;
        s->p += len;
    }
    return false;
}

static bool js_digits(jscan *s)
{
    const unsigned char *start = s->p;
    while (s->p < s->end && *s->p >= '0' && *s->p <= '9')
        s->p++;
    return s->p > start;
}

static bool js_number(jscan *s)
{
    if (*s->p == '-')
        s->p++;
    if (s->p < s->end && *s->p == '0')
        s->p++;
    else if (!js_digits(s))
        return false;
    if (s->p < s->end && *s->p == '.') {
        s->p++;
        if (!js_digits(s))
            return false;
    }
    if (s->p < s->end && (*s->p == 'e' || *s->p == 'E')) {
        s->p++;
        if (s->p < s->end && (*s->p == '+' || *s->p == '-'))
            s->p++;
        if (!js_digits(s))
            return false;
    }
    return true;
}

static bool js_literal(jscan *s, const char *lit)
{
    size_t n = strlen(lit);
    if ((size_t)(s->end - s->p) < n || memcmp(s->p, lit, n) != 0)
        return false;
    s->p += n;
    return true;
}

static bool js_value(jscan *s);

/* Object or array, after its opening bracket. */
static bool js_container(jscan *s, bool object)
{
    char close = object ? '}' : ']';
    if (++s->depth > JSON_MAX_DEPTH)
        return false;
    s->p++;
    js_ws(s);
    if (s->p < s->end && *s->p == close) {
        s->p++;
        s->depth--;
        return true;
    }
    for (;;) {
        if (object) {
            js_ws(s);
            if (s->p >= s->end || *s->p != '"' || !js_string(s))
                return false;
            js_ws(s);
            if (s->p >= s->end || *s->p != ':')
                return false;
            s->p++;
        }
        if (!js_value(s))
            return false;
        js_ws(s);
        if (s->p >= s->end)
            return false;
        if (*s->p == ',') {
            s->p++;
            continue;
        }
        if (*s->p != close)
            return false;
        s->p++;
        s->depth--;
        return true;
    }
}

static bool js_value(jscan *s)
{
    js_ws(s);
    if (s->p >= s->end)
        return false;
    switch (*s->p) {
    case '{': return js_container(s, true);
    case '[': return js_container(s, false);
    case '"': return js_string(s);
    case 't': return js_literal(s, "true");
    case 'f': return js_literal(s, "false");
    case 'n': return js_literal(s, "null");
    default:
        if (*s->p == '-' || (*s->p >= '0' && *s->p <= '9'))
            return js_number(s);
        return false;
    }
}

static gt_err check_body(const char *coll, const char *id, const char *body, gt_error *err)
{
    if (body == NULL)
        return gt_error_setf(err, GT_EINVAL, "body", "%s/%s: no body", coll, id);
    size_t n = strlen(body);
    if (n > GT_STORE__MAX_BODY)
        return gt_error_setf(err, GT_EINVAL, "body", "%s/%s: body of %zu bytes (max %zu)", coll,
                             id, n, GT_STORE__MAX_BODY);
    jscan s = {(const unsigned char *)body, (const unsigned char *)body + n, 0};
    js_ws(&s);
    bool ok = s.p < s.end && *s.p == '{' && js_value(&s);
    if (ok) {
        js_ws(&s);
        ok = s.p == s.end;
    }
    if (!ok)
        return gt_error_setf(err, GT_EINVAL, "$",
                             "%s/%s: body is not a valid JSON object (at byte %zu)", coll, id,
                             (size_t)(s.p - (const unsigned char *)body));
    return GT_OK;
}

static gt_err check_store(const gt_store *s, gt_error *err)
{
    if (s == NULL)
        return gt_error_set(err, GT_EINVAL, "store: no store");
    return GT_OK;
}

/* ---- public API ---- */

void gt_store_free(gt_store **s)
{
    if (s == NULL || *s == NULL)
        return;
    (*s)->ops->close(*s);
    *s = NULL;
}

const char *gt_store_driver(const gt_store *s)
{
    return s ? s->ops->name : "none";
}

int64_t gt_store_lease_granularity_ms(const gt_store *s)
{
    return s && s->ops->lease_granularity_ms > 0 ? s->ops->lease_granularity_ms : 1;
}

gt_err gt_store_index(gt_store *s, const char *coll, const char *field, gt_error *err)
{
    gt_err rc;
    if ((rc = check_store(s, err)) || (rc = check_coll(coll, err)))
        return rc;
    if (field == NULL)
        return gt_error_setf(err, GT_EINVAL, "field", "%s: no index field", coll);
    if ((rc = check_field(coll, field, err)))
        return rc;
    return s->ops->index(s, coll, field, err);
}

gt_err gt_store_get(gt_store *s, const char *coll, const char *id, char **body, int64_t *rev,
                    gt_error *err)
{
    int64_t r = 0;
    gt_err rc;
    if (body)
        *body = NULL;
    if (rev)
        *rev = 0;
    if ((rc = check_store(s, err)) || (rc = check_coll(coll, err)) ||
        (rc = check_id(coll, id, err)))
        return rc;
    if (body == NULL)
        return gt_error_setf(err, GT_EINVAL, "body", "%s/%s: nowhere to put the body", coll, id);
    rc = s->ops->get(s, coll, id, body, &r, err);
    if (rc != GT_OK) {
        free(*body);
        *body = NULL;
        return rc;
    }
    if (rev)
        *rev = r;
    return GT_OK;
}

gt_err gt_store_put(gt_store *s, const char *coll, const char *id, const char *body,
                    int64_t expect_rev, int64_t *new_rev, gt_error *err)
{
    return gt_store_put_fenced(s, coll, id, body, expect_rev, new_rev, NULL, err);
}

gt_err gt_store_put_fenced(gt_store *s, const char *coll, const char *id, const char *body,
                           int64_t expect_rev, int64_t *new_rev, const gt_store_fence *fence,
                           gt_error *err)
{
    int64_t r = 0;
    gt_err rc;
    if (new_rev)
        *new_rev = 0;
    if ((rc = check_store(s, err)) || (rc = check_coll(coll, err)) ||
        (rc = check_id(coll, id, err)) || (rc = check_body(coll, id, body, err)))
        return rc;
    if (expect_rev < GT_REV_ANY)
        return gt_error_setf(err, GT_EINVAL, "expect_rev", "%s/%s: bad expected revision %" PRId64,
                             coll, id, expect_rev);
    if (fence && ((rc = check_name("fence name", fence->name, err)) ||
                  (rc = check_name("fence holder", fence->holder, err))))
        return rc;
    rc = s->ops->put(s, coll, id, body, expect_rev, &r, fence, err);
    if (rc == GT_OK && new_rev)
        *new_rev = r;
    return rc;
}

gt_err gt_store_delete(gt_store *s, const char *coll, const char *id, int64_t expect_rev,
                       gt_error *err)
{
    gt_err rc;
    if ((rc = check_store(s, err)) || (rc = check_coll(coll, err)) ||
        (rc = check_id(coll, id, err)))
        return rc;
    if (expect_rev != GT_REV_ANY && expect_rev < 1)
        return gt_error_setf(err, GT_EINVAL, "expect_rev",
                             "%s/%s: bad expected revision %" PRId64 " for a delete", coll, id,
                             expect_rev);
    return s->ops->del(s, coll, id, expect_rev, err);
}

gt_err gt_store_query(gt_store *s, const char *coll, const char *field, const char *value,
                      const char *cursor, size_t limit, gt_store_page *page, gt_error *err)
{
    return gt_store_query_order(s, coll, field, value, cursor, limit, false, page, err);
}

gt_err gt_store_each(gt_store *s, const char *coll, const char *field, const char *value,
                     gt_store_each_fn fn, void *arg, gt_error *err)
{
    char *cursor = NULL;
    gt_err rc;
    bool more = true;
    do {
        gt_store_page page;
        rc = gt_store_query(s, coll, field, value, cursor, 500, &page, err);
        free(cursor);
        cursor = NULL;
        if (rc != GT_OK)
            break;
        for (size_t i = 0; i < page.n && more; i++)
            more = fn(arg, &page.items[i]);
        if (more)
            cursor = gt_xstrdup(page.next_cursor);
        gt_store_page_clear(&page);
    } while (cursor);
    return rc;
}

/* What every query checks first: the store, the collection, the page and the limit. */
static gt_err check_query(const gt_store *s, const char *coll, gt_store_page *page, size_t limit,
                          gt_error *err)
{
    gt_err rc;
    if (page)
        memset(page, 0, sizeof *page);
    if ((rc = check_store(s, err)) || (rc = check_coll(coll, err)))
        return rc;
    if (page == NULL)
        return gt_error_setf(err, GT_EINVAL, "page", "%s: nowhere to put the page", coll);
    if (limit < 1 || limit > GT_STORE__MAX_LIMIT)
        return gt_error_setf(err, GT_EINVAL, "limit", "%s: limit %zu not in 1..%d", coll, limit,
                             GT_STORE__MAX_LIMIT);
    return GT_OK;
}

gt_err gt_store_query_order(gt_store *s, const char *coll, const char *field, const char *value,
                            const char *cursor, size_t limit, bool descending,
                            gt_store_page *page, gt_error *err)
{
    gt_err rc;
    if ((rc = check_query(s, coll, page, limit, err)))
        return rc;
    if (field) {
        if ((rc = check_field(coll, field, err)))
            return rc;
        if (value == NULL)
            return gt_error_setf(err, GT_EINVAL, "value", "%s: query on %s without a value", coll,
                                 field);
    }
    if (cursor && cursor[0] == '\0')
        cursor = NULL;
    rc = s->ops->query(s, coll, field, value, cursor, limit, descending, page, err);
    if (rc != GT_OK)
        gt_store_page_clear(page);
    return rc;
}

void gt_store_page_clear(gt_store_page *page)
{
    if (page == NULL)
        return;
    for (size_t i = 0; i < page->n; i++) {
        free(page->items[i].id);
        free(page->items[i].body);
    }
    free(page->items);
    free(page->next_cursor);
    memset(page, 0, sizeof *page);
}

/* A bound of a range: any UTF-8 string of at most an id's length (NULL: none). */
static gt_err check_bound(const char *coll, const char *what, const char *v, gt_error *err)
{
    if (v == NULL)
        return GT_OK;
    size_t n = strlen(v);
    if (n > GT_STORE__MAX_ID || !utf8_valid((const unsigned char *)v, n))
        return gt_error_setf(err, GT_EINVAL, what, "%s: range %s: expected at most %d bytes of "
                             "UTF-8", coll, what, GT_STORE__MAX_ID);
    return GT_OK;
}

gt_err gt_store_query_range(gt_store *s, const char *coll, const char *field, const char *lo,
                            const char *hi, const char *cursor, size_t limit,
                            gt_store_page *page, gt_error *err)
{
    gt_err rc;
    if ((rc = check_query(s, coll, page, limit, err)))
        return rc;
    if ((field && (rc = check_field(coll, field, err))) ||
        (rc = check_bound(coll, "lo", lo, err)) || (rc = check_bound(coll, "hi", hi, err)))
        return rc;
    if (cursor && cursor[0] == '\0')
        cursor = NULL;
    rc = s->ops->query_range(s, coll, field, lo, hi, cursor, limit, page, err);
    if (rc != GT_OK)
        gt_store_page_clear(page);
    return rc;
}

gt_err gt_store_count(gt_store *s, const char *coll, const gt_store_filter *f, int64_t *n,
                      gt_error *err)
{
    static const gt_store_filter all = {0};
    gt_err rc;
    if (n)
        *n = 0;
    if ((rc = check_store(s, err)) || (rc = check_coll(coll, err)))
        return rc;
    if (n == NULL)
        return gt_error_setf(err, GT_EINVAL, "n", "%s: nowhere to put the count", coll);
    if (f == NULL)
        f = &all;
    if (f->eq && f->field == NULL)
        return gt_error_setf(err, GT_EINVAL, "eq", "%s: count by value without a field", coll);
    if (f->eq && (f->lo || f->hi))
        return gt_error_setf(err, GT_EINVAL, "eq", "%s: count by value and by range at once",
                             coll);
    if ((f->field && (rc = check_field(coll, f->field, err))) ||
        (rc = check_bound(coll, "eq", f->eq, err)) || (rc = check_bound(coll, "lo", f->lo, err)) ||
        (rc = check_bound(coll, "hi", f->hi, err)))
        return rc;
    return s->ops->count(s, coll, f, n, err);
}

gt_err gt_store_apply(gt_store *s, gt_store_op *ops, size_t n, const gt_store_fence *fence,
                      gt_error *err)
{
    gt_err rc;
    if ((rc = check_store(s, err)))
        return rc;
    if (ops == NULL || n < 1 || n > GT_STORE_MAX_OPS)
        return gt_error_setf(err, GT_EINVAL, "ops", "store: apply: %zu operations (1..%d)", n,
                             GT_STORE_MAX_OPS);
    for (size_t i = 0; i < n; i++) {
        gt_store_op *o = &ops[i];
        char field[32];
        snprintf(field, sizeof field, "ops[%zu]", i);
        o->new_rev = 0;
        if ((rc = check_coll(o->coll, err)) || (rc = check_id(o->coll, o->id, err)))
            return gt_store__at_op(err, rc, i);
        bool put = o->kind == GT_STORE_OP_PUT;
        if (o->kind != GT_STORE_OP_PUT && o->kind != GT_STORE_OP_DELETE &&
            o->kind != GT_STORE_OP_CHECK)
            return gt_error_setf(err, GT_EINVAL, field, "store: apply: %s/%s: unknown operation %d",
                                 o->coll, o->id, (int)o->kind);
        if (put && (rc = check_body(o->coll, o->id, o->body, err)))
            return gt_store__at_op(err, rc, i);
        if (o->expect_rev < GT_REV_ANY ||
            (o->kind == GT_STORE_OP_DELETE && o->expect_rev == GT_REV_NONE))
            return gt_error_setf(err, GT_EINVAL, field,
                                 "%s/%s: bad expected revision %" PRId64, o->coll, o->id,
                                 o->expect_rev);
        for (size_t j = 0; j < i; j++)
            if (strcmp(ops[j].coll, o->coll) == 0 && strcmp(ops[j].id, o->id) == 0)
                return gt_error_setf(err, GT_EINVAL, field, "store: apply: %s/%s twice", o->coll,
                                     o->id);
    }
    if (fence && ((rc = check_name("fence name", fence->name, err)) ||
                  (rc = check_name("fence holder", fence->holder, err))))
        return rc;
    rc = s->ops->apply(s, ops, n, fence, err);
    if (rc != GT_OK)
        for (size_t i = 0; i < n; i++)
            ops[i].new_rev = 0;
    return rc;
}

gt_err gt_store_changes_wait(gt_store *s, const char *const *colls, size_t n_colls,
                             int64_t since, long wait_ms, gt_store_changes *out, gt_error *err)
{
    gt_err rc;
    if (out)
        memset(out, 0, sizeof *out);
    if ((rc = check_store(s, err)))
        return rc;
    if (out == NULL)
        return gt_error_setf(err, GT_EINVAL, "out", "store: changes: nowhere to put them");
    if (n_colls > 0 && colls == NULL)
        return gt_error_setf(err, GT_EINVAL, "colls", "store: changes: no collection names");
    for (size_t i = 0; i < n_colls; i++)
        if ((rc = check_coll(colls[i], err)))
            return rc;
    if (since < 0 || wait_ms < 0 || wait_ms > 60000)
        return gt_error_setf(err, GT_EINVAL, since < 0 ? "since" : "wait_ms",
                             "store: changes: since %" PRId64 " must be >= 0 and wait %ld ms "
                             "in 0..60000", since, wait_ms);
    rc = s->ops->changes_wait(s, colls, n_colls, since, wait_ms, out, err);
    if (rc != GT_OK)
        gt_store_changes_clear(out);
    return rc;
}

void gt_store_changes_clear(gt_store_changes *c)
{
    if (c == NULL)
        return;
    for (size_t i = 0; i < c->n; i++) {
        free(c->v[i].coll);
        free(c->v[i].id);
    }
    free(c->v);
    memset(c, 0, sizeof *c);
}

gt_err gt_store_lease_acquire(gt_store *s, const char *name, const char *holder, int64_t ttl_ms,
                              int64_t *epoch, gt_error *err)
{
    int64_t e = 0;
    gt_err rc;
    if (epoch)
        *epoch = 0;
    if ((rc = check_store(s, err)) || (rc = check_name("name", name, err)) ||
        (rc = check_name("holder", holder, err)))
        return rc;
    if (ttl_ms < 1 || ttl_ms > GT_STORE__MAX_TTL_MS)
        return gt_error_setf(err, GT_EINVAL, "ttl_ms", "lease %s: ttl %" PRId64 " ms not in 1..%"
                             PRId64, name, ttl_ms, GT_STORE__MAX_TTL_MS);
    rc = s->ops->lease_acquire(s, name, holder, ttl_ms, &e, err);
    if (rc == GT_OK && epoch)
        *epoch = e;
    return rc;
}

gt_err gt_store_lease_release(gt_store *s, const char *name, const char *holder, gt_error *err)
{
    gt_err rc;
    if ((rc = check_store(s, err)) || (rc = check_name("name", name, err)) ||
        (rc = check_name("holder", holder, err)))
        return rc;
    return s->ops->lease_release(s, name, holder, err);
}

/* ---- helpers for drivers ---- */

gt_err gt_store__at_op(gt_error *err, gt_err rc, size_t i)
{
    if (err)
        snprintf(err->field, sizeof err->field, "ops[%zu]", i);
    return rc;
}

gt_err gt_store__check_rev(const char *coll, const char *id, bool exists, int64_t cur_rev,
                           int64_t expect_rev, bool is_delete, gt_error *err)
{
    if (is_delete && !exists)
        return gt_error_set(err, GT_ENOTFOUND, "%s/%s: not found", coll, id);
    if (expect_rev == GT_REV_ANY)
        return GT_OK;
    if (expect_rev == GT_REV_NONE) {
        if (exists)
            return gt_error_set(err, GT_ECONFLICT, "%s/%s: already exists (revision %" PRId64 ")",
                                coll, id, cur_rev);
        return GT_OK;
    }
    if (!exists)
        return gt_error_set(err, GT_ECONFLICT,
                            "%s/%s: revision conflict: expected %" PRId64 ", document is gone",
                            coll, id, expect_rev);
    if (cur_rev != expect_rev)
        return gt_error_set(err, GT_ECONFLICT,
                            "%s/%s: revision conflict: expected %" PRId64 ", stored %" PRId64,
                            coll, id, expect_rev, cur_rev);
    return GT_OK;
}

static bool lease_live(const gt_store_lease *l, int64_t now_ms)
{
    return l->holder && l->holder[0] && l->expires_ms > now_ms;
}

gt_err gt_store__lease_take(const char *name, const gt_store_lease *cur, const char *holder,
                            int64_t now_ms, int64_t ttl_ms, gt_store_lease *next, gt_error *err)
{
    if (lease_live(cur, now_ms) && strcmp(cur->holder, holder) != 0)
        return gt_error_set(err, GT_ECONFLICT,
                            "lease %s: held by %s (epoch %" PRId64 ") for another %" PRId64 " ms",
                            name, cur->holder, cur->epoch, cur->expires_ms - now_ms);
    next->holder = holder;
    /* A live lease of ours is renewed; anything else is a new term with a new epoch. */
    next->epoch = lease_live(cur, now_ms) ? cur->epoch : cur->epoch + 1;
    next->expires_ms = now_ms + ttl_ms;
    return GT_OK;
}

gt_err gt_store__lease_give(const char *name, const gt_store_lease *cur, const char *holder,
                            int64_t now_ms, bool *store_free, gt_error *err)
{
    *store_free = false;
    if (cur->holder && strcmp(cur->holder, holder) == 0) {
        *store_free = true;
        return GT_OK;
    }
    if (lease_live(cur, now_ms))
        return gt_error_set(err, GT_ECONFLICT, "lease %s: held by %s (epoch %" PRId64 "), not %s",
                            name, cur->holder, cur->epoch, holder);
    return GT_OK;
}

gt_err gt_store__fence_check(const gt_store_fence *f, const gt_store_lease *cur, int64_t now_ms,
                             gt_error *err)
{
    if (!lease_live(cur, now_ms))
        return gt_error_set(err, GT_ECONFLICT, "fenced: lease %s of %s (epoch %" PRId64
                            ") has expired", f->name, f->holder, f->epoch);
    if (strcmp(cur->holder, f->holder) != 0 || cur->epoch != f->epoch)
        return gt_error_set(err, GT_ECONFLICT, "fenced: lease %s is held by %s at epoch %" PRId64
                            ", not by %s at epoch %" PRId64, f->name, cur->holder, cur->epoch,
                            f->holder, f->epoch);
    return GT_OK;
}

void gt_store__page_add(gt_store_page *page, const char *id, size_t id_len, const char *body,
                        size_t body_len, int64_t rev)
{
    /* Doubling growth; n is bounded by the query limit. */
    if ((page->n & (page->n - 1)) == 0)
        page->items = gt_xrealloc(page->items, (page->n ? page->n * 2 : 1) * sizeof *page->items);
    gt_store_item *it = &page->items[page->n++];
    it->id = gt_xstrndup(id, id_len);
    it->body = gt_xstrndup(body, body_len);
    it->rev = rev;
}

void gt_store__page_more(gt_store_page *page)
{
    if (page->n > 0)
        page->next_cursor = gt_xstrdup(page->items[page->n - 1].id);
}

/* ---- helpers for range queries and apply ---- */

char *gt_store__range_cursor(const char *value, const char *id)
{
    static const char digits[] = "0123456789abcdef";
    size_t vn = strlen(value), in = strlen(id);
    char *c = gt_xmalloc(2 * vn + 1 + in + 1);
    for (size_t i = 0; i < vn; i++) {
        c[2 * i] = digits[(unsigned char)value[i] >> 4];
        c[2 * i + 1] = digits[(unsigned char)value[i] & 15];
    }
    c[2 * vn] = '/';
    memcpy(c + 2 * vn + 1, id, in + 1);
    return c;
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

gt_err gt_store__range_cursor_parse(const char *coll, const char *field, const char *cursor,
                                    char **value, char **id, gt_error *err)
{
    *value = *id = NULL;
    const char *slash = strchr(cursor, '/');
    size_t hn = slash ? (size_t)(slash - cursor) : 0;
    bool ok = slash && hn % 2 == 0 && slash[1] != '\0';
    char *v = ok ? gt_xmalloc(hn / 2 + 1) : NULL;
    for (size_t i = 0; ok && i < hn / 2; i++) {
        int hi = hex_digit(cursor[2 * i]), lo = hex_digit(cursor[2 * i + 1]);
        ok = hi >= 0 && lo >= 0 && (hi | lo) != 0;   /* no NUL inside a value */
        if (ok)
            v[i] = (char)(hi << 4 | lo);
    }
    if (!ok) {
        free(v);
        return gt_error_setf(err, GT_EINVAL, "cursor", "%s: not a range query cursor", coll);
    }
    v[hn / 2] = '\0';
    if (field == NULL && strcmp(v, slash + 1) != 0) {
        free(v);
        return gt_error_setf(err, GT_EINVAL, "cursor", "%s: not a cursor of a range on ids",
                             coll);
    }
    *value = v;
    *id = gt_xstrdup(slash + 1);
    return GT_OK;
}

gt_err gt_store__check_op(const gt_store_op *op, size_t i, bool exists, int64_t cur_rev,
                          gt_error *err)
{
    /* a CHECK at GT_REV_ANY asks that the document exist, as a delete would */
    bool must_exist = op->kind == GT_STORE_OP_DELETE ||
                      (op->kind == GT_STORE_OP_CHECK && op->expect_rev == GT_REV_ANY);
    gt_err rc = gt_store__check_rev(op->coll, op->id, exists, cur_rev, op->expect_rev,
                                    must_exist, err);
    return rc == GT_OK ? GT_OK : gt_store__at_op(err, rc, i);
}
