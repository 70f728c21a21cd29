/* JSON Schema validation: the schema is compiled once into a graph of nodes (one per
 * subschema, $refs resolved to node pointers, regexes compiled), then instances are
 * walked against that graph. Draft 7 semantics by default; a root "$schema" naming
 * 2019-09 or 2020-12 lets $ref sit beside other keywords, as those drafts say. */
#include "schema.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <arpa/inet.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "util.h"

/* Limits that turn hostile input into an error instead of a stack overflow or a hang. */
enum {
    MAX_COMPILE_DEPTH = 200,   /* nested subschemas */
    MAX_EVAL_DEPTH = 512,      /* nested (subschema, instance) evaluations */
    MAX_SHOWN = 80,            /* bytes of a value quoted in a message */
};
#define MAX_STEPS 10000000UL   /* evaluations + comparisons per validation */

enum {
    T_NULL = 1 << 0,
    T_BOOL = 1 << 1,
    T_OBJECT = 1 << 2,
    T_ARRAY = 1 << 3,
    T_NUMBER = 1 << 4,
    T_INTEGER = 1 << 5,
    T_STRING = 1 << 6,
};

static const struct {
    const char *name;
    const char *phrase;
    unsigned bit;
} type_names[] = {
    {"null", "null", T_NULL},          {"boolean", "a boolean", T_BOOL},
    {"object", "an object", T_OBJECT}, {"array", "an array", T_ARRAY},
    {"number", "a number", T_NUMBER},  {"integer", "an integer", T_INTEGER},
    {"string", "a string", T_STRING},
};

typedef enum format {
    F_NONE,
    F_DATE_TIME,
    F_DATE,
    F_TIME,
    F_IPV4,
    F_IPV6,
    F_HOSTNAME,
    F_EMAIL,
    F_URI,
} format;

static const struct {
    const char *name;
    format f;
} format_names[] = {
    {"date-time", F_DATE_TIME}, {"date", F_DATE},         {"time", F_TIME},
    {"ipv4", F_IPV4},           {"ipv6", F_IPV6},         {"hostname", F_HOSTNAME},
    {"email", F_EMAIL},         {"uri", F_URI},
};

enum { H_MIN = 1, H_MAX = 2, H_XMIN = 4, H_XMAX = 8, H_MULT = 16 };

typedef struct node node;

typedef struct named {
    const char *name;   /* borrowed from the schema tree */
    node *schema;
} named;

typedef struct patterned {
    const char *source;
    pcre2_code *re;
    node *schema;
} patterned;

typedef struct dep_req {
    const char *name;
    const cJSON *names; /* array of strings */
} dep_req;

typedef struct node_list {
    node **v;
    size_t n;
} node_list;

struct node {
    const cJSON *json;
    char *path;          /* where it sits in the schema, for compile errors */
    int boolean;         /* -1: an object schema; 0 or 1: the schema false or true */
    bool ref_only;       /* draft 7: $ref hides every sibling keyword */
    char *ref_uri;       /* resolved $ref, until linked */
    node *ref;
    unsigned types;      /* 0: any */
    const cJSON *enum_;
    const cJSON *const_;
    unsigned has;        /* H_* */
    double minimum, maximum, excl_min, excl_max, multiple_of;
    int64_t min_len, max_len, min_items, max_items, min_props, max_props;
    int64_t min_contains, max_contains;
    bool unique_items;
    pcre2_code *pattern;
    const char *pattern_src;
    format fmt;
    const char *fmt_name;
    named *props;
    size_t nprops;
    patterned *pprops;
    size_t npprops;
    node *additional_props;
    const cJSON *required;
    node *property_names;
    node_list prefix;    /* items (array form) or prefixItems */
    node *rest;          /* items (schema form), or additionalItems after a prefix */
    node *contains;
    dep_req *dreq;
    size_t ndreq;
    named *dschemas;
    size_t ndschemas;
    node_list all_of, any_of, one_of;
    node *not_, *if_, *then_, *else_;
};

struct gt_schema {
    cJSON *root;
    node *top;
    node **nodes;        /* every node, for freeing */
    size_t nnodes, capnodes;
    pcre2_match_context *mctx;
    bool modern;         /* 2019-09 / 2020-12 */
};

/* ---- paths ---------------------------------------------------------------------- */

static bool is_ident(const char *k)
{
    if (!((*k >= 'A' && *k <= 'Z') || (*k >= 'a' && *k <= 'z') || *k == '_' || *k == '$'))
        return false;
    for (k++; *k; k++)
        if (!((*k >= 'A' && *k <= 'Z') || (*k >= 'a' && *k <= 'z') || (*k >= '0' && *k <= '9') ||
              *k == '_' || *k == '$'))
            return false;
    return true;
}

/* Appends s as the inside of a JSON string literal. */
static void append_escaped(gt_buf *b, const char *s)
{
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            gt_buf_printf(b, "\\%c", ch);
        else if (ch < 0x20)
            gt_buf_printf(b, "\\u%04x", ch);
        else
            gt_buf_append(b, s, 1);
    }
}

static void append_key(gt_buf *b, const char *key)
{
    if (is_ident(key)) {
        gt_buf_printf(b, ".%s", key);
        return;
    }
    gt_buf_puts(b, "[\"");
    append_escaped(b, key);
    gt_buf_puts(b, "\"]");
}

static char *path_join(const char *parent, const char *kw, const char *key, long index)
{
    gt_buf b = {0};
    gt_buf_puts(&b, parent);
    if (kw)
        append_key(&b, kw);
    if (key)
        append_key(&b, key);
    if (index >= 0)
        gt_buf_printf(&b, "[%ld]", index);
    return gt_buf_steal(&b);
}

/* ---- small helpers ---------------------------------------------------------------- */

static bool is_integral(double d)
{
    return isfinite(d) && floor(d) == d;
}

static void fmt_num(double d, char *buf, size_t n)
{
    if (is_integral(d) && fabs(d) < 1e17) {
        snprintf(buf, n, "%.0f", d);
        return;
    }
    snprintf(buf, n, "%.15g", d);
    if (strtod(buf, NULL) != d)
        snprintf(buf, n, "%.17g", d);
}

/* Cuts s to at most max (> 3) bytes without splitting a UTF-8 sequence; "..." marks
 * the cut and stays within the old length. */
static void clip(char *s, size_t max)
{
    size_t len = strlen(s);
    if (len <= max)
        return;
    size_t cut = max - 3;
    while (cut > 0 && ((unsigned char)s[cut] & 0xC0) == 0x80)
        cut--;
    memcpy(s + cut, "...", 4);
}

/* s as a JSON string literal, its content shortened for a message; buf is at least
 * MAX_SHOWN + 8 bytes. */
static void show_str(const char *s, char *buf, size_t n)
{
    gt_buf b = {0};
    gt_buf_puts(&b, "");
    append_escaped(&b, s);
    clip(b.data, MAX_SHOWN - 2);
    snprintf(buf, n, "\"%s\"", b.data);
    gt_buf_free(&b);
}

/* The JSON text of j, shortened for a message, into buf (MAX_SHOWN + 8 bytes or more). */
static void show(const cJSON *j, char *buf, size_t n)
{
    if (cJSON_IsNumber(j)) {
        fmt_num(j->valuedouble, buf, n);
        return;
    }
    if (cJSON_IsString(j)) {
        show_str(j->valuestring, buf, n);
        return;
    }
    char *text = cJSON_PrintUnformatted(j);
    snprintf(buf, n, "%s", text ? text : "?");
    free(text);
    clip(buf, MAX_SHOWN);
}

static size_t utf8_length(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        if (((unsigned char)*s & 0xC0) != 0x80)
            n++;
    return n;
}

static bool json_equal(const cJSON *a, const cJSON *b, int depth)
{
    if (depth > 10000)
        return false;
    if (cJSON_IsNumber(a) && cJSON_IsNumber(b))
        return a->valuedouble == b->valuedouble;
    if ((a->type & 0xFF) != (b->type & 0xFF))
        return false;
    if (cJSON_IsString(a))
        return strcmp(a->valuestring, b->valuestring) == 0;
    if (cJSON_IsArray(a)) {
        const cJSON *x = a->child, *y = b->child;
        for (; x && y; x = x->next, y = y->next)
            if (!json_equal(x, y, depth + 1))
                return false;
        return x == NULL && y == NULL;
    }
    if (cJSON_IsObject(a)) {
        if (cJSON_GetArraySize(a) != cJSON_GetArraySize(b))
            return false;
        for (const cJSON *x = a->child; x; x = x->next) {
            const cJSON *y = cJSON_GetObjectItemCaseSensitive(b, x->string);
            if (y == NULL || !json_equal(x, y, depth + 1))
                return false;
        }
        return true;
    }
    return true; /* null, true, false */
}

static unsigned instance_types(const cJSON *j)
{
    switch (j->type & 0xFF) {
    case cJSON_NULL: return T_NULL;
    case cJSON_False:
    case cJSON_True: return T_BOOL;
    case cJSON_Number: return is_integral(j->valuedouble) ? (T_NUMBER | T_INTEGER) : T_NUMBER;
    case cJSON_String: return T_STRING;
    case cJSON_Array: return T_ARRAY;
    case cJSON_Object: return T_OBJECT;
    default: return 0;
    }
}

/* ---- URIs (RFC 3986) for $id and $ref ---------------------------------------------- */

typedef struct uri_parts {
    const char *scheme, *auth, *path, *query, *frag;
    size_t scheme_len, auth_len, path_len, query_len, frag_len;
    bool has_scheme, has_auth, has_query, has_frag;
} uri_parts;

static void uri_split(const char *s, uri_parts *u)
{
    memset(u, 0, sizeof *u);
    size_t k = strcspn(s, ":/?#");
    if (k > 0 && s[k] == ':') {
        u->has_scheme = true;
        u->scheme = s;
        u->scheme_len = k;
        s += k + 1;
    }
    if (s[0] == '/' && s[1] == '/') {
        s += 2;
        k = strcspn(s, "/?#");
        u->has_auth = true;
        u->auth = s;
        u->auth_len = k;
        s += k;
    }
    k = strcspn(s, "?#");
    u->path = s;
    u->path_len = k;
    s += k;
    if (*s == '?') {
        s++;
        k = strcspn(s, "#");
        u->has_query = true;
        u->query = s;
        u->query_len = k;
        s += k;
    }
    if (*s == '#') {
        s++;
        u->has_frag = true;
        u->frag = s;
        u->frag_len = strlen(s);
    }
}

/* RFC 3986 5.2.4, appending the result to out. */
static void remove_dots(gt_buf *out, const char *path, size_t len)
{
    char *in = gt_xstrndup(path, len);
    size_t start = out->len;
    char *p = in;
    while (*p) {
        if (strncmp(p, "../", 3) == 0) {
            p += 3;
        } else if (strncmp(p, "./", 2) == 0) {
            p += 2;
        } else if (strncmp(p, "/./", 3) == 0) {
            p += 2;
        } else if (strcmp(p, "/.") == 0) {
            p[1] = '/';
            p += 1;
        } else if (strncmp(p, "/../", 4) == 0 || strcmp(p, "/..") == 0) {
            if (p[3] == '\0') {
                p[2] = '/';
                p += 2;
            } else {
                p += 3;
            }
            size_t cut = out->len;
            while (cut > start && out->data[cut - 1] != '/')
                cut--;
            if (cut > start)
                cut--;
            out->len = cut;
            out->data[cut] = '\0';
        } else if (strcmp(p, ".") == 0 || strcmp(p, "..") == 0) {
            break;
        } else {
            size_t seg = 1 + strcspn(p + 1, "/");
            if (*p != '/')
                seg = strcspn(p, "/");
            gt_buf_append(out, p, seg);
            p += seg;
        }
    }
    free(in);
}

/* RFC 3986 5.2.2: ref resolved against base; the caller frees the result. */
static char *uri_resolve(const char *base, const char *ref)
{
    uri_parts b, r;
    uri_split(base, &b);
    uri_split(ref, &r);
    gt_buf out = {0};
    gt_buf_puts(&out, "");
    const uri_parts *scheme = r.has_scheme ? &r : &b;
    if (scheme->has_scheme) {
        gt_buf_append(&out, scheme->scheme, scheme->scheme_len);
        gt_buf_puts(&out, ":");
    }
    if (r.has_scheme || r.has_auth) {
        if (r.has_auth) {
            gt_buf_puts(&out, "//");
            gt_buf_append(&out, r.auth, r.auth_len);
        }
        remove_dots(&out, r.path, r.path_len);
        if (r.has_query) {
            gt_buf_puts(&out, "?");
            gt_buf_append(&out, r.query, r.query_len);
        }
    } else {
        if (b.has_auth) {
            gt_buf_puts(&out, "//");
            gt_buf_append(&out, b.auth, b.auth_len);
        }
        if (r.path_len == 0) {
            gt_buf_append(&out, b.path, b.path_len);
            const uri_parts *q = r.has_query ? &r : &b;
            if (q->has_query) {
                gt_buf_puts(&out, "?");
                gt_buf_append(&out, q->query, q->query_len);
            }
        } else {
            if (r.path[0] == '/') {
                remove_dots(&out, r.path, r.path_len);
            } else {
                gt_buf merged = {0};
                if (b.has_auth && b.path_len == 0) {
                    gt_buf_puts(&merged, "/");
                } else {
                    size_t keep = b.path_len;
                    while (keep > 0 && b.path[keep - 1] != '/')
                        keep--;
                    gt_buf_append(&merged, b.path, keep);
                }
                gt_buf_append(&merged, r.path, r.path_len);
                remove_dots(&out, merged.data, merged.len);
                gt_buf_free(&merged);
            }
            if (r.has_query) {
                gt_buf_puts(&out, "?");
                gt_buf_append(&out, r.query, r.query_len);
            }
        }
    }
    if (r.has_frag) {
        gt_buf_puts(&out, "#");
        gt_buf_append(&out, r.frag, r.frag_len);
    }
    return gt_buf_steal(&out);
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Percent-decodes s; NULL if an escape is malformed or decodes to NUL. */
static char *pct_decode(const char *s)
{
    gt_buf b = {0};
    gt_buf_puts(&b, "");
    for (; *s; s++) {
        if (*s != '%') {
            gt_buf_append(&b, s, 1);
            continue;
        }
        int hi = hexval(s[1]), lo = hi < 0 ? -1 : hexval(s[2]);
        if (lo < 0 || (hi == 0 && lo == 0)) {
            gt_buf_free(&b);
            return NULL;
        }
        char ch = (char)(hi * 16 + lo);
        gt_buf_append(&b, &ch, 1);
        s += 2;
    }
    return gt_buf_steal(&b);
}

/* Walks a JSON pointer ("/a/0/b~1c") from root; NULL when it leads nowhere. */
static const cJSON *pointer_walk(const cJSON *root, const char *ptr)
{
    const cJSON *at = root;
    while (at && *ptr == '/') {
        ptr++;
        size_t len = strcspn(ptr, "/");
        char *tok = gt_xmalloc(len + 1);
        size_t o = 0;
        for (size_t i = 0; i < len; i++) {
            if (ptr[i] == '~' && i + 1 < len && (ptr[i + 1] == '0' || ptr[i + 1] == '1')) {
                tok[o++] = ptr[i + 1] == '0' ? '~' : '/';
                i++;
            } else {
                tok[o++] = ptr[i];
            }
        }
        tok[o] = '\0';
        if (cJSON_IsObject(at)) {
            at = cJSON_GetObjectItemCaseSensitive(at, tok);
        } else if (cJSON_IsArray(at)) {
            char *end = NULL;
            unsigned long idx = strtoul(tok, &end, 10);
            bool digits = tok[0] >= '0' && tok[0] <= '9' && (tok[0] != '0' || tok[1] == '\0');
            at = (digits && *end == '\0' && idx < (unsigned long)cJSON_GetArraySize(at))
                     ? cJSON_GetArrayItem(at, (int)idx)
                     : NULL;
        } else {
            at = NULL;
        }
        free(tok);
        ptr += len;
    }
    return *ptr == '\0' ? at : NULL;
}

/* The schema path of a JSON pointer below the node at path. */
static char *pointer_path(const char *path, const char *ptr)
{
    gt_buf b = {0};
    gt_buf_puts(&b, path);
    for (const char *p = ptr; *p == '/';) {
        p++;
        size_t len = strcspn(p, "/");
        char *tok = gt_xmalloc(len + 1);
        size_t o = 0;
        bool number = len > 0;
        for (size_t i = 0; i < len; i++) {
            number &= p[i] >= '0' && p[i] <= '9';
            if (p[i] == '~' && i + 1 < len && (p[i + 1] == '0' || p[i + 1] == '1'))
                tok[o++] = p[++i] == '0' ? '~' : '/';
            else
                tok[o++] = p[i];
        }
        tok[o] = '\0';
        if (number)
            gt_buf_printf(&b, "[%s]", tok);
        else
            append_key(&b, tok);
        free(tok);
        p += len;
    }
    return gt_buf_steal(&b);
}

/* ---- compiling ------------------------------------------------------------------- */

/* A schema resource ($id or the document) or an anchor, by absolute URI. */
typedef struct resource {
    char *uri;          /* no fragment for documents; "doc#name" for anchors */
    char *base;         /* base URI for what is inside */
    char *path;         /* schema path of json */
    const cJSON *json;
} resource;

typedef struct cctx {
    gt_schema *s;
    gt_error *err;
    bool failed;
    resource *res;
    size_t nres, capres;
    node **pending;     /* nodes whose $ref is still a URI */
    size_t npending, cappending;
    const cJSON **mkeys; /* memo: schema json -> node, open addressing */
    node **mvals;
    size_t mcap, mcount;
    pcre2_compile_context *ccx;
} cctx;

static bool cerr(cctx *c, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static bool cerr(cctx *c, const char *path, const char *fmt, ...)
{
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    gt_error_setf(c->err, GT_EINVAL, path, "%s: %s", path, msg);
    c->failed = true;
    return false;
}

/* An error about keyword kw of node n. */
static bool kerr(cctx *c, const node *n, const char *kw, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static bool kerr(cctx *c, const node *n, const char *kw, const char *fmt, ...)
{
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    char *path = path_join(n->path, kw, NULL, -1);
    cerr(c, path, "%s", msg);
    free(path);
    return false;
}

static size_t ptr_hash(const void *p)
{
    uint64_t x = (uint64_t)(uintptr_t)p;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return (size_t)x;
}

static node *memo_get(const cctx *c, const cJSON *json)
{
    if (c->mcap == 0)
        return NULL;
    for (size_t i = ptr_hash(json) & (c->mcap - 1); c->mkeys[i]; i = (i + 1) & (c->mcap - 1))
        if (c->mkeys[i] == json)
            return c->mvals[i];
    return NULL;
}

static void memo_put(cctx *c, const cJSON *json, node *n)
{
    if ((c->mcount + 1) * 2 > c->mcap) {
        size_t cap = c->mcap ? c->mcap * 2 : 64;
        const cJSON **keys = gt_xcalloc(cap, sizeof *keys);
        node **vals = gt_xcalloc(cap, sizeof *vals);
        for (size_t i = 0; i < c->mcap; i++) {
            if (c->mkeys[i] == NULL)
                continue;
            size_t j = ptr_hash(c->mkeys[i]) & (cap - 1);
            while (keys[j])
                j = (j + 1) & (cap - 1);
            keys[j] = c->mkeys[i];
            vals[j] = c->mvals[i];
        }
        free(c->mkeys);
        free(c->mvals);
        c->mkeys = keys;
        c->mvals = vals;
        c->mcap = cap;
    }
    size_t i = ptr_hash(json) & (c->mcap - 1);
    while (c->mkeys[i])
        i = (i + 1) & (c->mcap - 1);
    c->mkeys[i] = json;
    c->mvals[i] = n;
    c->mcount++;
}

static const resource *res_find(const cctx *c, const char *uri)
{
    for (size_t i = 0; i < c->nres; i++)
        if (strcmp(c->res[i].uri, uri) == 0)
            return &c->res[i];
    return NULL;
}

/* The first registration of a URI wins. */
static void res_add(cctx *c, const char *uri, const char *base, const char *path,
                    const cJSON *json)
{
    if (res_find(c, uri))
        return;
    if (c->nres == c->capres) {
        c->capres = c->capres ? c->capres * 2 : 8;
        c->res = gt_xrealloc(c->res, c->capres * sizeof *c->res);
    }
    c->res[c->nres++] = (resource){gt_xstrdup(uri), gt_xstrdup(base), gt_xstrdup(path), json};
}

static node *node_new(cctx *c, const cJSON *json, const char *path)
{
    gt_schema *s = c->s;
    node *n = gt_xcalloc(1, sizeof *n);
    n->json = json;
    n->path = gt_xstrdup(path);
    n->boolean = -1;
    n->min_len = n->max_len = n->min_items = n->max_items = -1;
    n->min_props = n->max_props = n->min_contains = n->max_contains = -1;
    if (s->nnodes == s->capnodes) {
        s->capnodes = s->capnodes ? s->capnodes * 2 : 16;
        s->nodes = gt_xrealloc(s->nodes, s->capnodes * sizeof *s->nodes);
    }
    s->nodes[s->nnodes++] = n;
    memo_put(c, json, n);
    return n;
}

static void node_free(node *n)
{
    free(n->path);
    free(n->ref_uri);
    free(n->props);
    for (size_t i = 0; i < n->npprops; i++)
        pcre2_code_free(n->pprops[i].re);
    free(n->pprops);
    pcre2_code_free(n->pattern);
    free(n->prefix.v);
    free(n->dreq);
    free(n->dschemas);
    free(n->all_of.v);
    free(n->any_of.v);
    free(n->one_of.v);
    free(n);
}

static node *compile_node(cctx *c, const cJSON *json, const char *base, const char *path,
                          int depth);

/* Compiles the subschema at parent.kw[key] or parent.kw[index]. */
static node *compile_sub(cctx *c, const node *parent, const cJSON *json, const char *base,
                         const char *kw, const char *key, long index, int depth)
{
    char *path = path_join(parent->path, kw, key, index);
    node *n = compile_node(c, json, base, path, depth + 1);
    free(path);
    return n;
}

static bool compile_list(cctx *c, node *n, const cJSON *arr, const char *base, const char *kw,
                         node_list *out, int depth)
{
    if (!cJSON_IsArray(arr) || cJSON_GetArraySize(arr) == 0)
        return kerr(c, n, kw, "expected a non-empty array of schemas");
    out->n = (size_t)cJSON_GetArraySize(arr);
    out->v = gt_xcalloc(out->n, sizeof *out->v);
    long i = 0;
    for (const cJSON *it = arr->child; it; it = it->next, i++)
        if ((out->v[i] = compile_sub(c, n, it, base, kw, NULL, i, depth)) == NULL)
            return false;
    return true;
}

/* A schema-valued keyword, when present. */
static bool compile_opt(cctx *c, node *n, const char *kw, const char *base, node **out,
                        int depth)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(n->json, kw);
    if (j == NULL)
        return true;
    *out = compile_sub(c, n, j, base, kw, NULL, -1, depth);
    return *out != NULL;
}

/* An object of name -> schema (properties, definitions, ...). */
static bool compile_map(cctx *c, node *n, const char *kw, const char *base, named **out,
                        size_t *nout, int depth)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(n->json, kw);
    if (j == NULL)
        return true;
    if (!cJSON_IsObject(j))
        return kerr(c, n, kw, "expected an object of schemas");
    size_t cnt = (size_t)cJSON_GetArraySize(j), i = 0;
    named *v = cnt ? gt_xcalloc(cnt, sizeof *v) : NULL;
    for (const cJSON *it = j->child; it; it = it->next, i++) {
        v[i].name = it->string;
        if ((v[i].schema = compile_sub(c, n, it, base, kw, it->string, -1, depth)) == NULL) {
            free(v);
            return false;
        }
    }
    if (out) {
        *out = v;
        *nout = cnt;
    } else {
        free(v);
    }
    return true;
}

static bool get_number(cctx *c, node *n, const char *kw, double *out, unsigned bit)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(n->json, kw);
    if (j == NULL)
        return true;
    if (cJSON_IsBool(j) && (bit == H_XMIN || bit == H_XMAX))
        return kerr(c, n, kw, "expected a number (the draft-4 boolean form is not supported)");
    if (!cJSON_IsNumber(j) || !isfinite(j->valuedouble))
        return kerr(c, n, kw, "expected a number");
    *out = j->valuedouble;
    n->has |= bit;
    return true;
}

static bool get_count(cctx *c, node *n, const char *kw, int64_t *out)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(n->json, kw);
    if (j == NULL)
        return true;
    if (!cJSON_IsNumber(j) || !is_integral(j->valuedouble) || j->valuedouble < 0 ||
        j->valuedouble > 9007199254740992.0)
        return kerr(c, n, kw, "expected a non-negative integer");
    *out = (int64_t)j->valuedouble;
    return true;
}

static bool is_string_array(const cJSON *j)
{
    if (!cJSON_IsArray(j))
        return false;
    for (const cJSON *it = j->child; it; it = it->next)
        if (!cJSON_IsString(it))
            return false;
    return true;
}

/* ECMA-262 whitespace beyond the ASCII that PCRE2's \s knows (without UCP, which would
 * also widen \d and \w, unlike ECMA). \uXXXX, since ALT_BSUX takes \x{...} away. */
#define ECMA_SPACE "\\s\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000\\ufeff"

/* Long General_Category names that ECMA accepts and PCRE2 10.42 does not. */
static const char *const gc_names[][2] = {
    {"Letter", "L"},           {"Cased_Letter", "L&"},       {"Uppercase_Letter", "Lu"},
    {"Lowercase_Letter", "Ll"}, {"Titlecase_Letter", "Lt"},  {"Modifier_Letter", "Lm"},
    {"Other_Letter", "Lo"},    {"Mark", "M"},                {"Combining_Mark", "M"},
    {"Nonspacing_Mark", "Mn"}, {"Spacing_Mark", "Mc"},       {"Enclosing_Mark", "Me"},
    {"Number", "N"},           {"Decimal_Number", "Nd"},     {"digit", "Nd"},
    {"Letter_Number", "Nl"},   {"Other_Number", "No"},       {"Punctuation", "P"},
    {"punct", "P"},            {"Connector_Punctuation", "Pc"}, {"Dash_Punctuation", "Pd"},
    {"Open_Punctuation", "Ps"}, {"Close_Punctuation", "Pe"}, {"Initial_Punctuation", "Pi"},
    {"Final_Punctuation", "Pf"}, {"Other_Punctuation", "Po"}, {"Symbol", "S"},
    {"Math_Symbol", "Sm"},     {"Currency_Symbol", "Sc"},    {"Modifier_Symbol", "Sk"},
    {"Other_Symbol", "So"},    {"Separator", "Z"},           {"Space_Separator", "Zs"},
    {"Line_Separator", "Zl"},  {"Paragraph_Separator", "Zp"}, {"Other", "C"},
    {"Control", "Cc"},         {"cntrl", "Cc"},              {"Format", "Cf"},
    {"Surrogate", "Cs"},       {"Private_Use", "Co"},        {"Unassigned", "Cn"},
};

/* Rewrites the ECMA-262 constructs PCRE2 reads differently: \s and \S (Unicode
 * whitespace in ECMA) and long \p{...} category names. The caller frees. */
static char *ecma_to_pcre2(const char *src)
{
    gt_buf b = {0};
    gt_buf_puts(&b, "");
    bool in_class = false;
    for (const char *p = src; *p; p++) {
        if (*p == '\\' && p[1]) {
            const char *close = (p[1] == 'p' || p[1] == 'P') && p[2] == '{' ? strchr(p + 3, '}')
                                                                          : NULL;
            if (close) {
                const char *name = p + 3;
                size_t len = (size_t)(close - name);
                size_t skip = len > 17 && strncmp(name, "General_Category=", 17) == 0 ? 17
                              : len > 3 && strncmp(name, "gc=", 3) == 0               ? 3
                                                                                      : 0;
                name += skip;
                len -= skip;
                const char *shortname = NULL;
                for (size_t i = 0; i < sizeof gc_names / sizeof gc_names[0]; i++)
                    if (strlen(gc_names[i][0]) == len && strncmp(gc_names[i][0], name, len) == 0)
                        shortname = gc_names[i][1];
                if (shortname)
                    gt_buf_printf(&b, "\\%c{%s}", p[1], shortname);
                else
                    gt_buf_append(&b, p, (size_t)(close - p) + 1);
                p = close;
            } else if (p[1] == 's') {
                gt_buf_puts(&b, in_class ? ECMA_SPACE : "[" ECMA_SPACE "]");
                p++;
            } else if (p[1] == 'S' && !in_class) {
                gt_buf_puts(&b, "[^" ECMA_SPACE "]");
                p++;
            } else {
                gt_buf_append(&b, p, 2);
                p++;
            }
            continue;
        }
        if (*p == '[' && !in_class) {
            in_class = true;
        } else if (*p == ']' && in_class) {
            in_class = false;
        }
        gt_buf_append(&b, p, 1);
    }
    return gt_buf_steal(&b);
}

/* ECMA-262 regexes through PCRE2: \d \w ASCII as in ECMA, \uXXXX escapes, "$" only at
 * the end, "[]" and "[^]" as ECMA reads them, and subjects that are not valid UTF-8
 * simply do not match. */
static pcre2_code *compile_regex(cctx *c, const char *src, const char *path)
{
    int code = 0;
    PCRE2_SIZE off = 0;
    char *pat = ecma_to_pcre2(src);
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED,
                                   PCRE2_UTF | PCRE2_ALT_BSUX | PCRE2_DOLLAR_ENDONLY |
                                       PCRE2_ALLOW_EMPTY_CLASS | PCRE2_MATCH_INVALID_UTF,
                                   &code, &off, c->ccx);
    if (re == NULL) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(code, msg, sizeof msg);
        /* Offsets are only meaningful when the rewrite changed nothing. */
        if (strcmp(pat, src) == 0)
            cerr(c, path, "invalid regular expression at offset %zu: %s", (size_t)off,
                 (const char *)msg);
        else
            cerr(c, path, "invalid regular expression: %s", (const char *)msg);
    }
    free(pat);
    return re;
}

static bool compile_type(cctx *c, node *n)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(n->json, "type");
    if (j == NULL)
        return true;
    if (!cJSON_IsString(j) && !(is_string_array(j) && cJSON_GetArraySize(j) > 0))
        return kerr(c, n, "type", "expected a type name or an array of type names");
    const cJSON *it = cJSON_IsString(j) ? j : j->child;
    for (; it; it = cJSON_IsString(j) ? NULL : it->next) {
        unsigned bit = 0;
        for (size_t i = 0; i < sizeof type_names / sizeof type_names[0]; i++)
            if (strcmp(it->valuestring, type_names[i].name) == 0)
                bit = type_names[i].bit;
        if (bit == 0) {
            char shown[MAX_SHOWN + 8] = "";
            show_str(it->valuestring, shown, sizeof shown);
            return kerr(c, n, "type", "unknown type %s", shown);
        }
        n->types |= bit;
    }
    return true;
}

static bool compile_ref(cctx *c, node *n, const char *base)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(n->json, "$ref");
    if (!cJSON_IsString(j))
        return kerr(c, n, "$ref", "expected a URI reference string");
    n->ref_uri = uri_resolve(base, j->valuestring);
    if (c->npending == c->cappending) {
        c->cappending = c->cappending ? c->cappending * 2 : 8;
        c->pending = gt_xrealloc(c->pending, c->cappending * sizeof *c->pending);
    }
    c->pending[c->npending++] = n;
    return true;
}

/* $id (and 2020-12's $anchor): registers the resource and returns the new base. */
static bool compile_id(cctx *c, node *n, const char *base, const char **new_base)
{
    *new_base = base;
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(n->json, "$id");
    if (id) {
        if (!cJSON_IsString(id))
            return kerr(c, n, "$id", "expected a URI string");
        char *abs = uri_resolve(base, id->valuestring);
        char *hash = strchr(abs, '#');
        if (hash)
            *hash = '\0';
        const char *frag = hash ? hash + 1 : "";
        /* "#name" (draft 7's anchor) names a place, it does not start a new resource. */
        if (id->valuestring[0] != '#') {
            res_add(c, abs, abs, n->path, n->json);
            *new_base = res_find(c, abs)->base;
        }
        if (*frag && *frag != '/') {
            char *anchor = gt_xasprintf("%s#%s", abs, frag);
            res_add(c, anchor, *new_base, n->path, n->json);
            free(anchor);
        }
        free(abs);
    }
    const cJSON *anchor = cJSON_GetObjectItemCaseSensitive(n->json, "$anchor");
    if (anchor) {
        if (!cJSON_IsString(anchor) || anchor->valuestring[0] == '\0')
            return kerr(c, n, "$anchor", "expected a name");
        char *doc = gt_xstrdup(*new_base);
        doc[strcspn(doc, "#")] = '\0';
        char *uri = gt_xasprintf("%s#%s", doc, anchor->valuestring);
        res_add(c, uri, *new_base, n->path, n->json);
        free(uri);
        free(doc);
    }
    return true;
}

static bool compile_properties(cctx *c, node *n, const char *base, int depth)
{
    if (!compile_map(c, n, "properties", base, &n->props, &n->nprops, depth))
        return false;

    const cJSON *pp = cJSON_GetObjectItemCaseSensitive(n->json, "patternProperties");
    if (pp) {
        if (!cJSON_IsObject(pp))
            return kerr(c, n, "patternProperties", "expected an object of schemas");
        size_t cnt = (size_t)cJSON_GetArraySize(pp);
        n->pprops = cnt ? gt_xcalloc(cnt, sizeof *n->pprops) : NULL;
        for (const cJSON *it = pp->child; it; it = it->next) {
            patterned *p = &n->pprops[n->npprops];
            char *path = path_join(n->path, "patternProperties", it->string, -1);
            p->source = it->string;
            p->re = compile_regex(c, it->string, path);
            free(path);
            if (p->re == NULL)
                return false;
            n->npprops++;
            p->schema = compile_sub(c, n, it, base, "patternProperties", it->string, -1, depth);
            if (p->schema == NULL)
                return false;
        }
    }
    if (!compile_opt(c, n, "additionalProperties", base, &n->additional_props, depth) ||
        !compile_opt(c, n, "propertyNames", base, &n->property_names, depth))
        return false;

    const cJSON *req = cJSON_GetObjectItemCaseSensitive(n->json, "required");
    if (req) {
        if (!is_string_array(req))
            return kerr(c, n, "required", "expected an array of property names");
        n->required = req;
    }
    if (!get_count(c, n, "minProperties", &n->min_props) ||
        !get_count(c, n, "maxProperties", &n->max_props))
        return false;

    /* dependencies (draft 7) and its 2019-09 halves, dependentRequired/dependentSchemas. */
    static const char *const dep_kws[] = {"dependencies", "dependentRequired",
                                          "dependentSchemas"};
    size_t total = 0;
    for (size_t k = 0; k < 3; k++) {
        const cJSON *d = cJSON_GetObjectItemCaseSensitive(n->json, dep_kws[k]);
        if (d && !cJSON_IsObject(d))
            return kerr(c, n, dep_kws[k], "expected an object");
        total += d ? (size_t)cJSON_GetArraySize(d) : 0;
    }
    if (total) {
        n->dreq = gt_xcalloc(total, sizeof *n->dreq);
        n->dschemas = gt_xcalloc(total, sizeof *n->dschemas);
    }
    for (size_t k = 0; k < 3; k++) {
        const cJSON *d = cJSON_GetObjectItemCaseSensitive(n->json, dep_kws[k]);
        for (const cJSON *it = d ? d->child : NULL; it; it = it->next) {
            bool as_names = k == 1 || (k == 0 && cJSON_IsArray(it));
            if (as_names) {
                if (!is_string_array(it)) {
                    char *path = path_join(n->path, dep_kws[k], it->string, -1);
                    cerr(c, path, "expected an array of property names");
                    free(path);
                    return false;
                }
                n->dreq[n->ndreq++] = (dep_req){it->string, it};
            } else {
                node *sub = compile_sub(c, n, it, base, dep_kws[k], it->string, -1, depth);
                if (sub == NULL)
                    return false;
                n->dschemas[n->ndschemas++] = (named){it->string, sub};
            }
        }
    }
    return true;
}

static bool compile_items(cctx *c, node *n, const char *base, int depth)
{
    const cJSON *items = cJSON_GetObjectItemCaseSensitive(n->json, "items");
    const cJSON *prefix = cJSON_GetObjectItemCaseSensitive(n->json, "prefixItems");
    if (prefix) {
        if (!compile_list(c, n, prefix, base, "prefixItems", &n->prefix, depth))
            return false;
        if (cJSON_IsArray(items))
            return kerr(c, n, "items", "expected a schema (prefixItems is present)");
        if (!compile_opt(c, n, "items", base, &n->rest, depth))
            return false;
    } else if (cJSON_IsArray(items)) {
        /* An empty array is allowed here (draft 7), unlike allOf & co. */
        n->prefix.n = (size_t)cJSON_GetArraySize(items);
        n->prefix.v = n->prefix.n ? gt_xcalloc(n->prefix.n, sizeof *n->prefix.v) : NULL;
        long i = 0;
        for (const cJSON *it = items->child; it; it = it->next, i++)
            if ((n->prefix.v[i] = compile_sub(c, n, it, base, "items", NULL, i, depth)) == NULL)
                return false;
        if (!compile_opt(c, n, "additionalItems", base, &n->rest, depth))
            return false;
    } else {
        if (!compile_opt(c, n, "items", base, &n->rest, depth))
            return false;
        /* additionalItems means nothing without an items array, but must still be sound. */
        node *ignored = NULL;
        if (!compile_opt(c, n, "additionalItems", base, &ignored, depth))
            return false;
    }
    if (!compile_opt(c, n, "contains", base, &n->contains, depth) ||
        !get_count(c, n, "minContains", &n->min_contains) ||
        !get_count(c, n, "maxContains", &n->max_contains) ||
        !get_count(c, n, "minItems", &n->min_items) ||
        !get_count(c, n, "maxItems", &n->max_items))
        return false;
    const cJSON *u = cJSON_GetObjectItemCaseSensitive(n->json, "uniqueItems");
    if (u) {
        if (!cJSON_IsBool(u))
            return kerr(c, n, "uniqueItems", "expected true or false");
        n->unique_items = cJSON_IsTrue(u);
    }
    return true;
}

static bool compile_scalars(cctx *c, node *n)
{
    if (!compile_type(c, n))
        return false;
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(n->json, "enum");
    if (e) {
        if (!cJSON_IsArray(e))
            return kerr(c, n, "enum", "expected an array of values");
        n->enum_ = e;
    }
    n->const_ = cJSON_GetObjectItemCaseSensitive(n->json, "const");

    if (!get_number(c, n, "minimum", &n->minimum, H_MIN) ||
        !get_number(c, n, "maximum", &n->maximum, H_MAX) ||
        !get_number(c, n, "exclusiveMinimum", &n->excl_min, H_XMIN) ||
        !get_number(c, n, "exclusiveMaximum", &n->excl_max, H_XMAX) ||
        !get_number(c, n, "multipleOf", &n->multiple_of, H_MULT))
        return false;
    if ((n->has & H_MULT) && !(n->multiple_of > 0))
        return kerr(c, n, "multipleOf", "expected a number greater than 0");

    if (!get_count(c, n, "minLength", &n->min_len) ||
        !get_count(c, n, "maxLength", &n->max_len))
        return false;
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(n->json, "pattern");
    if (p) {
        if (!cJSON_IsString(p))
            return kerr(c, n, "pattern", "expected a regular expression string");
        char *path = path_join(n->path, "pattern", NULL, -1);
        n->pattern = compile_regex(c, p->valuestring, path);
        free(path);
        if (n->pattern == NULL)
            return false;
        n->pattern_src = p->valuestring;
    }
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(n->json, "format");
    if (f) {
        if (!cJSON_IsString(f))
            return kerr(c, n, "format", "expected a format name");
        n->fmt_name = f->valuestring;
        for (size_t i = 0; i < sizeof format_names / sizeof format_names[0]; i++)
            if (strcmp(f->valuestring, format_names[i].name) == 0)
                n->fmt = format_names[i].f; /* unknown formats are annotations only */
    }
    return true;
}

static node *compile_node(cctx *c, const cJSON *json, const char *base, const char *path,
                          int depth)
{
    node *n = memo_get(c, json);
    if (n)
        return n;
    if (depth > MAX_COMPILE_DEPTH) {
        cerr(c, path, "schema nested too deeply (more than %d levels)", MAX_COMPILE_DEPTH);
        return NULL;
    }
    if (cJSON_IsBool(json)) {
        n = node_new(c, json, path);
        n->boolean = cJSON_IsTrue(json) ? 1 : 0;
        return n;
    }
    if (!cJSON_IsObject(json)) {
        cerr(c, path, "expected a schema (an object or a boolean)");
        return NULL;
    }
    n = node_new(c, json, path);

    /* Keywords whose support would change what validates: refusing them is safer than
     * silently accepting what the author meant to reject. */
    static const char *const refused[] = {"unevaluatedProperties", "unevaluatedItems",
                                          "$dynamicRef", "$recursiveRef"};
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++)
        if (cJSON_GetObjectItemCaseSensitive(json, refused[i])) {
            kerr(c, n, refused[i], "keyword not supported");
            return NULL;
        }

    bool has_ref = cJSON_GetObjectItemCaseSensitive(json, "$ref") != NULL;
    n->ref_only = has_ref && !c->s->modern;
    if (!n->ref_only && !compile_id(c, n, base, &base))
        return NULL;
    if (has_ref && !compile_ref(c, n, base))
        return NULL;
    /* Definitions are compiled even where nothing refers to them, so that their $ids are
     * known and their mistakes reported. */
    if (!compile_map(c, n, "definitions", base, NULL, NULL, depth) ||
        !compile_map(c, n, "$defs", base, NULL, NULL, depth))
        return NULL;
    if (n->ref_only)
        return n;

    if (!compile_scalars(c, n) || !compile_properties(c, n, base, depth) ||
        !compile_items(c, n, base, depth))
        return NULL;

    static const char *const lists[] = {"allOf", "anyOf", "oneOf"};
    node_list *outs[] = {&n->all_of, &n->any_of, &n->one_of};
    for (size_t i = 0; i < 3; i++) {
        const cJSON *l = cJSON_GetObjectItemCaseSensitive(json, lists[i]);
        if (l && !compile_list(c, n, l, base, lists[i], outs[i], depth))
            return NULL;
    }
    if (!compile_opt(c, n, "not", base, &n->not_, depth) ||
        !compile_opt(c, n, "if", base, &n->if_, depth) ||
        !compile_opt(c, n, "then", base, &n->then_, depth) ||
        !compile_opt(c, n, "else", base, &n->else_, depth))
        return NULL;
    return n;
}

/* Points n->ref at the node its URI names, compiling that part of the document if no
 * keyword led there yet (a JSON pointer may aim anywhere). */
static bool link_ref(cctx *c, node *n)
{
    bool ok = false;
    char *path = path_join(n->path, "$ref", NULL, -1);
    char *doc = gt_xstrdup(n->ref_uri);
    char *hash = strchr(doc, '#');
    const char *frag = "";
    if (hash) {
        *hash = '\0';
        frag = hash + 1;
    }
    char *ptr = NULL, *target_path = NULL;
    char shown[MAX_SHOWN + 8] = "";
    show_str(n->ref_uri, shown, sizeof shown);

    const resource *r = res_find(c, doc);
    if (r == NULL) {
        cerr(c, path, "remote refs are not supported: %s is not part of this schema", shown);
        goto done;
    }
    const cJSON *target = r->json;
    const char *tbase = r->base;
    if (*frag == '/') {
        ptr = pct_decode(frag);
        target = ptr ? pointer_walk(r->json, ptr) : NULL;
        if (target)
            target_path = pointer_path(r->path, ptr);
    } else if (*frag) {
        char *anchor = gt_xasprintf("%s#%s", doc, frag);
        const resource *a = res_find(c, anchor);
        free(anchor);
        target = a ? a->json : NULL;
        if (a) {
            tbase = a->base;
            target_path = gt_xstrdup(a->path);
        }
    } else {
        target_path = gt_xstrdup(r->path);
    }
    if (target == NULL) {
        cerr(c, path, "%s does not resolve to anything in this schema", shown);
        goto done;
    }
    n->ref = compile_node(c, target, tbase, target_path, 0);
    ok = n->ref != NULL;
done:
    free(target_path);
    free(ptr);
    free(doc);
    free(path);
    return ok;
}

gt_schema *gt_schema_compile(const cJSON *schema, gt_error *err)
{
    gt_schema *s = gt_xcalloc(1, sizeof *s);
    cctx c = {.s = s, .err = err};
    bool ok = false;
    if (schema == NULL) {
        cerr(&c, "$", "expected a schema (an object or a boolean)");
        goto done;
    }
    s->root = cJSON_Duplicate(schema, 1);
    if (s->root == NULL) {
        cerr(&c, "$", "could not copy the schema");
        goto done;
    }
    const cJSON *dialect = cJSON_GetObjectItemCaseSensitive(s->root, "$schema");
    if (cJSON_IsString(dialect))
        s->modern = strstr(dialect->valuestring, "2019-09") != NULL ||
                    strstr(dialect->valuestring, "2020-12") != NULL;
    c.ccx = pcre2_compile_context_create(NULL);
    s->mctx = pcre2_match_context_create(NULL);
    if (c.ccx == NULL || s->mctx == NULL) {
        cerr(&c, "$", "out of memory for the regex engine");
        goto done;
    }
    pcre2_set_compile_extra_options(c.ccx, PCRE2_EXTRA_ALT_BSUX);
    /* Bounds backtracking so that a pathological pattern fails instead of hanging. */
    pcre2_set_match_limit(s->mctx, 1000000);
    pcre2_set_heap_limit(s->mctx, 20000);

    res_add(&c, "", "", "$", s->root);
    s->top = compile_node(&c, s->root, "", "$", 0);
    if (s->top == NULL)
        goto done;
    /* Linking can compile new parts, which can add refs: the list grows as we go. */
    for (size_t i = 0; i < c.npending; i++)
        if (!link_ref(&c, c.pending[i]))
            goto done;
    /* A chain of $refs that only leads back to itself never validates anything. */
    for (size_t i = 0; i < c.npending; i++) {
        const node *at = c.pending[i];
        for (size_t steps = 0; at->ref_only; at = at->ref)
            if (++steps > s->nnodes) {
                char *path = path_join(c.pending[i]->path, "$ref", NULL, -1);
                cerr(&c, path, "circular $ref: the reference leads only to itself");
                free(path);
                goto done;
            }
    }
    ok = true;
done:
    for (size_t i = 0; i < c.nres; i++) {
        free(c.res[i].uri);
        free(c.res[i].base);
        free(c.res[i].path);
    }
    free(c.res);
    free(c.pending);
    free(c.mkeys);
    free(c.mvals);
    pcre2_compile_context_free(c.ccx);
    if (!ok) {
        if (!c.failed)
            cerr(&c, "$", "invalid schema");
        gt_schema_free(&s);
    }
    return s;
}

void gt_schema_free(gt_schema **sp)
{
    if (sp == NULL || *sp == NULL)
        return;
    gt_schema *s = *sp;
    for (size_t i = 0; i < s->nnodes; i++)
        node_free(s->nodes[i]);
    free(s->nodes);
    cJSON_Delete(s->root);
    pcre2_match_context_free(s->mctx);
    free(s);
    *sp = NULL;
}

/* ---- formats --------------------------------------------------------------------- */

static bool digits(const char *s, int n)
{
    for (int i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return false;
    return true;
}

static int num2(const char *s)
{
    return (s[0] - '0') * 10 + (s[1] - '0');
}

/* RFC 3339 full-date at s (10 bytes). */
static bool date_ok(const char *s)
{
    if (!digits(s, 4) || s[4] != '-' || !digits(s + 5, 2) || s[7] != '-' || !digits(s + 8, 2))
        return false;
    int y = num2(s) * 100 + num2(s + 2), m = num2(s + 5), d = num2(s + 8);
    static const int mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (m < 1 || m > 12 || d < 1)
        return false;
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    return d <= mdays[m - 1] + (m == 2 && leap);
}

/* RFC 3339 full-time: the whole of s. A leap second must fall on 23:59 UTC. */
static bool time_ok(const char *s)
{
    if (!digits(s, 2) || s[2] != ':' || !digits(s + 3, 2) || s[5] != ':' || !digits(s + 6, 2))
        return false;
    int h = num2(s), m = num2(s + 3), sec = num2(s + 6);
    if (h > 23 || m > 59 || sec > 60)
        return false;
    s += 8;
    if (*s == '.') {
        s++;
        if (!digits(s, 1))
            return false;
        while (*s >= '0' && *s <= '9')
            s++;
    }
    int off = 0;
    if ((*s == 'Z' || *s == 'z') && s[1] == '\0') {
        off = 0;
    } else if (*s == '+' || *s == '-') {
        if (!digits(s + 1, 2) || s[3] != ':' || !digits(s + 4, 2) || s[6] != '\0')
            return false;
        int oh = num2(s + 1), om = num2(s + 4);
        if (oh > 23 || om > 59)
            return false;
        off = (*s == '+' ? 1 : -1) * (oh * 60 + om);
    } else {
        return false;
    }
    if (sec == 60) {
        int utc = ((h * 60 + m - off) % 1440 + 1440) % 1440;
        if (utc != 23 * 60 + 59)
            return false;
    }
    return true;
}

static bool date_time_ok(const char *s)
{
    return strlen(s) > 11 && date_ok(s) && (s[10] == 'T' || s[10] == 't') && time_ok(s + 11);
}

/* Dotted quad of decimal octets without leading zeros (inet_aton's shorthands are not). */
static bool ipv4_ok(const char *s, size_t len)
{
    int parts = 0;
    size_t i = 0;
    while (parts < 4) {
        size_t start = i;
        int v = 0;
        while (i < len && s[i] >= '0' && s[i] <= '9' && i - start < 3)
            v = v * 10 + (s[i++] - '0');
        size_t nd = i - start;
        if (nd == 0 || v > 255 || (nd > 1 && s[start] == '0'))
            return false;
        if (++parts < 4) {
            if (i >= len || s[i] != '.')
                return false;
            i++;
        }
    }
    return i == len;
}

static bool ipv6_ok(const char *s, size_t len)
{
    if (len == 0 || len > 45)
        return false;
    char buf[46];
    for (size_t i = 0; i < len; i++)
        if (!(hexval(s[i]) >= 0 || s[i] == ':' || s[i] == '.'))
            return false;
    memcpy(buf, s, len);
    buf[len] = '\0';
    /* inet_pton checks the groups and "::"; an embedded IPv4 part gets our stricter look. */
    unsigned char addr[16];
    if (inet_pton(AF_INET6, buf, addr) != 1)
        return false;
    const char *colon = strrchr(buf, ':');
    if (strchr(buf, '.') && !ipv4_ok(colon + 1, strlen(colon + 1)))
        return false;
    return true;
}

/* RFC 3492 Punycode. Returns the number of code points, or -1. */
static int punycode_decode(const char *in, size_t len, uint32_t *out, size_t max)
{
    enum { BASE = 36, TMIN = 1, TMAX = 26, SKEW = 38, DAMP = 700 };
    uint32_t n = 128, i = 0, bias = 72;
    size_t o = 0, start = 0;
    for (size_t j = 0; j < len; j++)
        if (in[j] == '-')
            start = j + 1;
    for (size_t j = 0; start && j < start - 1; j++) {
        if ((unsigned char)in[j] >= 0x80 || o >= max)
            return -1;
        out[o++] = (unsigned char)in[j];
    }
    for (size_t j = start; j < len;) {
        uint32_t oldi = i, w = 1;
        for (uint32_t k = BASE;; k += BASE) {
            if (j >= len)
                return -1;
            char ch = in[j++];
            int digit = ch >= '0' && ch <= '9'   ? ch - '0' + 26
                        : ch >= 'a' && ch <= 'z' ? ch - 'a'
                        : ch >= 'A' && ch <= 'Z' ? ch - 'A'
                                                 : -1;
            if (digit < 0 || (uint32_t)digit > (UINT32_MAX - i) / w)
                return -1;
            i += (uint32_t)digit * w;
            uint32_t t = k <= bias ? TMIN : k >= bias + TMAX ? TMAX : k - bias;
            if ((uint32_t)digit < t)
                break;
            if (w > UINT32_MAX / (BASE - t))
                return -1;
            w *= BASE - t;
        }
        /* adapt */
        uint32_t delta = oldi == 0 ? (i - oldi) / DAMP : (i - oldi) / 2;
        delta += delta / (uint32_t)(o + 1);
        uint32_t k = 0;
        while (delta > ((BASE - TMIN) * TMAX) / 2) {
            delta /= BASE - TMIN;
            k += BASE;
        }
        bias = k + (BASE - TMIN + 1) * delta / (delta + SKEW);
        if (i / (o + 1) > UINT32_MAX - n)
            return -1;
        n += i / (uint32_t)(o + 1);
        i %= (uint32_t)(o + 1);
        if (o >= max || n < 0x80 || n > 0x10FFFF || (n >= 0xD800 && n <= 0xDFFF))
            return -1;
        memmove(out + i + 1, out + i, (o - i) * sizeof *out);
        out[i++] = n;
        o++;
    }
    return (int)o;
}

static void utf8_put(gt_buf *b, uint32_t cp)
{
    char u[4];
    size_t n;
    if (cp < 0x80) {
        u[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        u[0] = (char)(0xC0 | cp >> 6);
        u[1] = (char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        u[0] = (char)(0xE0 | cp >> 12);
        u[1] = (char)(0x80 | (cp >> 6 & 0x3F));
        u[2] = (char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        u[0] = (char)(0xF0 | cp >> 18);
        u[1] = (char)(0x80 | (cp >> 12 & 0x3F));
        u[2] = (char)(0x80 | (cp >> 6 & 0x3F));
        u[3] = (char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    gt_buf_append(b, u, n);
}

/* For the Unicode script and category tests of IDNA's contextual rules. */
static bool utf8_search(const char *re_src, const char *subject)
{
    int code;
    PCRE2_SIZE off;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)re_src, PCRE2_ZERO_TERMINATED, PCRE2_UTF, &code,
                                   &off, NULL);
    if (re == NULL)
        return false;
    pcre2_match_data *md = pcre2_match_data_create(1, NULL);
    int rc = md ? pcre2_match(re, (PCRE2_SPTR)subject, PCRE2_ZERO_TERMINATED, 0, 0, md, NULL)
                : -1;
    pcre2_match_data_free(md);
    pcre2_code_free(re);
    return rc >= 0;
}

static bool is_virama(uint32_t cp)
{
    /* Canonical_Combining_Class=Virama (RFC 5892 CONTEXTJ). */
    static const uint32_t v[] = {
        0x094D,  0x09CD,  0x0A4D,  0x0ACD,  0x0B4D,  0x0BCD,  0x0C4D,  0x0CCD,  0x0D3B,
        0x0D3C,  0x0D4D,  0x0DCA,  0x0E3A,  0x0EBA,  0x0F84,  0x1039,  0x103A,  0x1714,
        0x1715,  0x1734,  0x17D2,  0x1A60,  0x1B44,  0x1BAA,  0x1BAB,  0x1BF2,  0x1BF3,
        0x2D7F,  0xA806,  0xA82C,  0xA8C4,  0xA953,  0xA9C0,  0xAAF6,  0xABED,  0x10A3F,
        0x11046, 0x11070, 0x1107F, 0x110B9, 0x11133, 0x11134, 0x111C0, 0x11235, 0x112EA,
        0x1134D, 0x11442, 0x114C2, 0x115BF, 0x1163F, 0x116B6, 0x1172B, 0x11839, 0x1193D,
        0x1193E, 0x119E0, 0x11A34, 0x11A47, 0x11A99, 0x11C3F, 0x11D44, 0x11D45, 0x11D97,
    };
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++)
        if (v[i] == cp)
            return true;
    return false;
}

/* An A-label ("xn--..."): its Punycode must decode to a U-label that IDNA2008 allows
 * (RFC 5891 4.2.3, RFC 5892 exceptions and contextual rules). */
static bool alabel_ok(const char *label, size_t len)
{
    uint32_t u[64];
    int n = punycode_decode(label + 4, len - 4, u, 64);
    if (n <= 0)
        return false;
    bool ok = false, arabic = false, ext_arabic = false, non_ascii = false;
    gt_buf b = {0};
    for (int i = 0; i < n; i++) {
        uint32_t cp = u[i], prev = i > 0 ? u[i - 1] : 0, next = i + 1 < n ? u[i + 1] : 0;
        non_ascii |= cp >= 0x80;
        if (cp == 0x0640 || cp == 0x07FA || cp == 0x302E || cp == 0x302F ||
            (cp >= 0x3031 && cp <= 0x3035) || cp == 0x303B)
            goto done; /* DISALLOWED exceptions */
        if (cp == 0x00B7 && (prev != 'l' || next != 'l'))
            goto done;
        if (cp == 0x200D && !is_virama(prev))
            goto done;
        arabic |= cp >= 0x0660 && cp <= 0x0669;
        ext_arabic |= cp >= 0x06F0 && cp <= 0x06F9;
        utf8_put(&b, cp);
    }
    if (!non_ascii || arabic & ext_arabic || u[0] == '-' || u[n - 1] == '-' ||
        (n >= 4 && u[2] == '-' && u[3] == '-'))
        goto done;
    if (utf8_search("^\\p{M}", b.data) ||
        utf8_search("\\x{375}(?!\\p{Greek})", b.data) ||
        utf8_search("(?<!\\p{Hebrew})[\\x{5F3}\\x{5F4}]", b.data))
        goto done;
    if (strstr(b.data, "\xE3\x83\xBB") && /* U+30FB KATAKANA MIDDLE DOT */
        !utf8_search("(?!\\x{30FB})[\\p{Hiragana}\\p{Katakana}\\p{Han}]", b.data))
        goto done;
    for (int i = 0; i < n; i++) {
        /* ZWNJ: after a virama, or inside a joining context, approximated here by letters
         * of the joining scripts around it (RFC 5892 A.1). */
        if (u[i] == 0x200C && !(i > 0 && is_virama(u[i - 1])) &&
            !utf8_search("[\\p{Arabic}\\p{Syriac}\\p{Nko}\\p{Mongolian}\\p{Mandaic}"
                         "\\p{Manichaean}\\p{Psalter_Pahlavi}\\p{Adlam}]\\p{Mn}*\\x{200C}"
                         "\\p{Mn}*[\\p{Arabic}\\p{Syriac}\\p{Nko}\\p{Mongolian}\\p{Mandaic}"
                         "\\p{Manichaean}\\p{Psalter_Pahlavi}\\p{Adlam}]",
                         b.data))
            goto done;
    }
    ok = true;
done:
    gt_buf_free(&b);
    return ok;
}

/* RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens. */
static bool hostname_ok(const char *s, size_t len)
{
    if (len == 0 || len > 253)
        return false;
    size_t i = 0;
    while (i <= len) {
        size_t start = i;
        while (i < len && s[i] != '.') {
            char ch = s[i];
            if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                  (ch >= '0' && ch <= '9') || ch == '-'))
                return false;
            i++;
        }
        size_t n = i - start;
        if (n == 0 || n > 63 || s[start] == '-' || s[i - 1] == '-')
            return false;
        if (n > 4 && strncasecmp(s + start, "xn--", 4) == 0 && !alabel_ok(s + start, n))
            return false;
        i++;
    }
    return true;
}

static bool atext(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           (ch && strchr("!#$%&'*+-/=?^_`{|}~", ch));
}

/* RFC 5321 mailbox: dot-atom or quoted local part, @, a host name or address literal. */
static bool email_ok(const char *s)
{
    const char *at = strrchr(s, '@');
    if (at == NULL || at == s || at[1] == '\0')
        return false;
    size_t llen = (size_t)(at - s);
    if (s[0] == '"') {
        if (llen < 2 || s[llen - 1] != '"')
            return false;
        for (size_t i = 1; i < llen - 1; i++) {
            unsigned char ch = (unsigned char)s[i];
            if (ch == '\\') {
                if (++i >= llen - 1 || s[i] < 0x20 || s[i] > 0x7E)
                    return false;
            } else if (ch == '"' || ch < 0x20 || ch > 0x7E) {
                return false;
            }
        }
    } else {
        for (size_t i = 0; i < llen; i++) {
            if (s[i] == '.') {
                if (i == 0 || i + 1 == llen || s[i + 1] == '.')
                    return false;
            } else if (!atext(s[i])) {
                return false;
            }
        }
    }
    const char *d = at + 1;
    size_t dlen = strlen(d);
    if (d[0] == '[') {
        if (d[dlen - 1] != ']')
            return false;
        if (strncasecmp(d + 1, "IPv6:", 5) == 0)
            return ipv6_ok(d + 6, dlen - 7);
        return ipv4_ok(d + 1, dlen - 2);
    }
    return hostname_ok(d, dlen);
}

static bool unreserved(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == '-' || ch == '.' || ch == '_' || ch == '~';
}

static bool sub_delim(char ch)
{
    return ch && strchr("!$&'()*+,;=", ch) != NULL;
}

/* s[0..len) is made of unreserved, sub-delims, %XX and the extra characters. */
static bool uri_chars(const char *s, size_t len, const char *extra)
{
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '%') {
            if (i + 2 >= len || hexval(s[i + 1]) < 0 || hexval(s[i + 2]) < 0)
                return false;
            i += 2;
        } else if (!unreserved(s[i]) && !sub_delim(s[i]) && !strchr(extra, s[i])) {
            return false;
        }
    }
    return true;
}

/* RFC 3986 absolute URI (with an optional fragment). */
static bool uri_ok(const char *s)
{
    if (!((s[0] >= 'a' && s[0] <= 'z') || (s[0] >= 'A' && s[0] <= 'Z')))
        return false;
    uri_parts u;
    uri_split(s, &u);
    if (!u.has_scheme)
        return false;
    for (size_t i = 0; i < u.scheme_len; i++) {
        char ch = u.scheme[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '+' || ch == '-' || ch == '.'))
            return false;
    }
    if (u.has_auth) {
        const char *a = u.auth, *end = u.auth + u.auth_len;
        const char *at = memchr(a, '@', u.auth_len);
        if (at) {
            if (!uri_chars(a, (size_t)(at - a), ":"))
                return false;
            a = at + 1;
        }
        const char *port;
        if (a < end && *a == '[') {
            const char *close = memchr(a, ']', (size_t)(end - a));
            if (close == NULL)
                return false;
            const char *lit = a + 1;
            size_t llen = (size_t)(close - lit);
            if (llen > 0 && (*lit == 'v' || *lit == 'V')) {
                size_t h = 1;
                while (h < llen && hexval(lit[h]) >= 0)
                    h++;
                if (h == 1 || h >= llen - 1 || lit[h] != '.' ||
                    !uri_chars(lit + h + 1, llen - h - 1, ":"))
                    return false;
            } else if (!ipv6_ok(lit, llen)) {
                return false;
            }
            port = close + 1;
            if (port < end && *port != ':')
                return false;
        } else {
            port = memchr(a, ':', (size_t)(end - a));
            if (port == NULL)
                port = end;
            if (!uri_chars(a, (size_t)(port - a), ""))
                return false;
        }
        if (port < end)
            for (port++; port < end; port++)
                if (*port < '0' || *port > '9')
                    return false;
    }
    return uri_chars(u.path, u.path_len, ":@/") &&
           (!u.has_query || uri_chars(u.query, u.query_len, ":@/?")) &&
           (!u.has_frag || uri_chars(u.frag, u.frag_len, ":@/?"));
}

static bool format_ok(format f, const char *s)
{
    switch (f) {
    case F_NONE: return true;
    case F_DATE_TIME: return date_time_ok(s);
    case F_DATE: return strlen(s) == 10 && date_ok(s);
    case F_TIME: return time_ok(s);
    case F_IPV4: return ipv4_ok(s, strlen(s));
    case F_IPV6: return ipv6_ok(s, strlen(s));
    case F_HOSTNAME: return hostname_ok(s, strlen(s));
    case F_EMAIL: return email_ok(s);
    case F_URI: return uri_ok(s);
    }
    return true;
}

/* ---- validating ------------------------------------------------------------------ */

typedef struct vctx {
    const gt_schema *s;
    gt_error *err;       /* NULL while probing a branch (anyOf, not, if, ...) */
    gt_buf path;         /* instance path of what is being validated */
    int depth;
    unsigned long steps;
    bool fatal;          /* a limit was hit: the whole validation fails with fatal_err */
    gt_error fatal_err;
} vctx;

static bool validate(vctx *v, const node *n, const cJSON *inst);

/* Checks that do not recurse, and the making of messages, stay out of line: their
 * buffers then do not sit in every frame of a deep validation. */
#define OUT_OF_LINE __attribute__((noinline))

static bool fail(vctx *v, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static bool fail(vctx *v, const char *fmt, ...)
{
    if (v->err == NULL)
        return false;
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    gt_error_setf(v->err, GT_EINVAL, v->path.data, "%s: %s", v->path.data, msg);
    return false;
}

static bool fatal(vctx *v, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static bool fatal(vctx *v, const char *fmt, ...)
{
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    gt_error_setf(&v->fatal_err, GT_EINVAL, v->path.data, "%s: %s", v->path.data, msg);
    v->fatal = true;
    return false;
}

static bool step(vctx *v, unsigned long n)
{
    v->steps += n;
    if (v->steps > MAX_STEPS)
        return fatal(v, "validation is too complex (more than %lu steps)", MAX_STEPS);
    return true;
}

static size_t push_key(vctx *v, const char *key)
{
    size_t old = v->path.len;
    append_key(&v->path, key);
    return old;
}

static size_t push_index(vctx *v, size_t i)
{
    size_t old = v->path.len;
    gt_buf_printf(&v->path, "[%zu]", i);
    return old;
}

static void pop(vctx *v, size_t old)
{
    v->path.len = old;
    v->path.data[old] = '\0';
}

/* Probes n against inst without reporting. */
static bool matches(vctx *v, const node *n, const cJSON *inst)
{
    gt_error *saved = v->err;
    v->err = NULL;
    bool ok = validate(v, n, inst);
    v->err = saved;
    return ok;
}

/* 1 match, 0 no match, -1 the engine gave up (a fatal error is set). */
static int regex_search(vctx *v, const pcre2_code *re, const char *subject)
{
    pcre2_match_data *md = pcre2_match_data_create(1, NULL);
    if (md == NULL) {
        fatal(v, "out of memory matching a pattern");
        return -1;
    }
    int rc = pcre2_match(re, (PCRE2_SPTR)subject, PCRE2_ZERO_TERMINATED, 0, 0, md, v->s->mctx);
    pcre2_match_data_free(md);
    if (rc >= 0)
        return 1;
    if (rc == PCRE2_ERROR_NOMATCH)
        return 0;
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(rc, msg, sizeof msg);
    fatal(v, "could not evaluate a pattern: %s", (const char *)msg);
    return -1;
}

/* The types a schema insists on, looking through draft 7 $ref chains; 0 if any. */
static unsigned declared_types(const node *n)
{
    for (int i = 0; i < 64 && n && n->ref_only; i++)
        n = n->ref;
    return (n && n->boolean < 0 && !n->ref_only) ? n->types : 0;
}

/* When no branch of anyOf/oneOf matches, the most useful report is the one branch
 * whose type fits the instance, if there is exactly one. */
static bool fail_branches(vctx *v, const node_list *l, const cJSON *inst, const char *kw)
{
    if (v->err == NULL)
        return false;
    unsigned t = instance_types(inst);
    const node *only = NULL;
    size_t fitting = 0;
    for (size_t i = 0; i < l->n; i++) {
        unsigned want = declared_types(l->v[i]);
        if (want == 0 || (want & t)) {
            fitting++;
            only = l->v[i];
        }
    }
    if (fitting == 1 && declared_types(only) != 0 && !validate(v, only, inst))
        return false;
    return fail(v, "does not match any of the schemas in %s", kw);
}

static OUT_OF_LINE bool check_type(vctx *v, const node *n, const cJSON *inst)
{
    unsigned t = instance_types(inst);
    if (n->types == 0 || (n->types & t))
        return true;
    if (v->err == NULL)
        return false;
    gt_buf want = {0};
    unsigned bits = n->types;
    for (size_t i = 0; i < sizeof type_names / sizeof type_names[0]; i++) {
        if (!(bits & type_names[i].bit))
            continue;
        bits &= ~type_names[i].bit;
        if (want.len)
            gt_buf_puts(&want, bits ? ", " : " or ");
        gt_buf_puts(&want, type_names[i].phrase);
    }
    char got[64];
    if (cJSON_IsNumber(inst)) {
        fmt_num(inst->valuedouble, got, sizeof got);
    } else {
        snprintf(got, sizeof got, "%s", "a value of unknown type");
        for (size_t i = 0; i < sizeof type_names / sizeof type_names[0]; i++)
            if (type_names[i].bit & t)
                snprintf(got, sizeof got, "%s", type_names[i].phrase);
    }
    fail(v, "expected %s, got %s", want.data, got);
    gt_buf_free(&want);
    return false;
}

static OUT_OF_LINE bool check_enum(vctx *v, const node *n, const cJSON *inst)
{
    if (n->enum_) {
        bool found = false;
        for (const cJSON *e = n->enum_->child; e && !found; e = e->next)
            found = json_equal(e, inst, 0);
        if (!step(v, (unsigned long)cJSON_GetArraySize(n->enum_)))
            return false;
        if (!found) {
            if (v->err == NULL)
                return false;
            char shown[MAX_SHOWN + 8], one[MAX_SHOWN + 8];
            show(inst, shown, sizeof shown);
            gt_buf list = {0};
            gt_buf_puts(&list, "");
            for (const cJSON *e = n->enum_->child; e; e = e->next) {
                if (list.len > 300) {
                    gt_buf_puts(&list, ", ...");
                    break;
                }
                show(e, one, sizeof one);
                gt_buf_printf(&list, "%s%s", list.len ? ", " : "", one);
            }
            fail(v, "%s is not one of %s", shown, list.data);
            gt_buf_free(&list);
            return false;
        }
    }
    if (n->const_ && !json_equal(n->const_, inst, 0)) {
        if (v->err == NULL)
            return false;
        char shown[MAX_SHOWN + 8], want[MAX_SHOWN + 8];
        show(inst, shown, sizeof shown);
        show(n->const_, want, sizeof want);
        return fail(v, "%s is not equal to %s", shown, want);
    }
    return true;
}

static OUT_OF_LINE bool check_number(vctx *v, const node *n, double x)
{
    char a[40] = "", b[40] = "";
    if (v->err)
        fmt_num(x, a, sizeof a);
    if ((n->has & H_MIN) && x < n->minimum) {
        if (v->err)
            fmt_num(n->minimum, b, sizeof b);
        return fail(v, "%s is less than the minimum %s", a, b);
    }
    if ((n->has & H_MAX) && x > n->maximum) {
        if (v->err)
            fmt_num(n->maximum, b, sizeof b);
        return fail(v, "%s is greater than the maximum %s", a, b);
    }
    if ((n->has & H_XMIN) && x <= n->excl_min) {
        if (v->err)
            fmt_num(n->excl_min, b, sizeof b);
        return fail(v, "%s is not greater than the exclusive minimum %s", a, b);
    }
    if ((n->has & H_XMAX) && x >= n->excl_max) {
        if (v->err)
            fmt_num(n->excl_max, b, sizeof b);
        return fail(v, "%s is not less than the exclusive maximum %s", a, b);
    }
    if (n->has & H_MULT) {
        /* Division with a tolerance of a few ulps: 0.0075 is a multiple of 0.0001 even
         * though neither is exact in binary. */
        double q = x / n->multiple_of;
        bool multiple = isfinite(q) ? fabs(q - nearbyint(q)) <= 8 * 2.220446049250313e-16 *
                                                                      fmax(1, fabs(q))
                                    : fmod(x, n->multiple_of) == 0; /* fmod is exact */
        if (!multiple) {
            if (v->err)
                fmt_num(n->multiple_of, b, sizeof b);
            return fail(v, "%s is not a multiple of %s", a, b);
        }
    }
    return true;
}

static OUT_OF_LINE bool check_string(vctx *v, const node *n, const char *s)
{
    if (n->min_len >= 0 || n->max_len >= 0) {
        int64_t len = (int64_t)utf8_length(s);
        if (n->min_len >= 0 && len < n->min_len)
            return fail(v, "must be at least %lld characters long (it is %lld)",
                        (long long)n->min_len, (long long)len);
        if (n->max_len >= 0 && len > n->max_len)
            return fail(v, "must be at most %lld characters long (it is %lld)",
                        (long long)n->max_len, (long long)len);
    }
    if (n->pattern) {
        int rc = regex_search(v, n->pattern, s);
        if (rc < 0)
            return false;
        if (rc == 0) {
            char shown[MAX_SHOWN + 8] = "";
            if (v->err)
                show_str(n->pattern_src, shown, sizeof shown);
            return fail(v, "does not match the pattern %s", shown);
        }
    }
    if (n->fmt != F_NONE && !format_ok(n->fmt, s)) {
        char shown[MAX_SHOWN + 8] = "";
        if (v->err)
            show_str(s, shown, sizeof shown);
        return fail(v, "%s is not a valid %s", shown, n->fmt_name);
    }
    return true;
}

static OUT_OF_LINE bool fail_required(vctx *v, const char *name)
{
    char shown[MAX_SHOWN + 8] = "";
    if (v->err)
        show_str(name, shown, sizeof shown);
    return fail(v, "missing required property %s", shown);
}

static OUT_OF_LINE bool fail_dependency(vctx *v, const char *name, const char *needed)
{
    char a[MAX_SHOWN + 8] = "", b[MAX_SHOWN + 8] = "";
    if (v->err) {
        show_str(name, a, sizeof a);
        show_str(needed, b, sizeof b);
    }
    return fail(v, "property %s requires property %s", a, b);
}

static OUT_OF_LINE bool fail_property_name(vctx *v, const char *name, const char *why)
{
    char shown[MAX_SHOWN + 8] = "";
    show_str(name, shown, sizeof shown);
    return fail(v, "property name %s is not valid: %s", shown, why);
}

static bool check_array(vctx *v, const node *n, const cJSON *inst)
{
    size_t count = (size_t)cJSON_GetArraySize(inst);
    if (n->min_items >= 0 && (int64_t)count < n->min_items)
        return fail(v, "must have at least %lld item%s (it has %zu)", (long long)n->min_items,
                    n->min_items == 1 ? "" : "s", count);
    if (n->max_items >= 0 && (int64_t)count > n->max_items)
        return fail(v, "must have at most %lld item%s (it has %zu)", (long long)n->max_items,
                    n->max_items == 1 ? "" : "s", count);

    size_t i = 0;
    for (const cJSON *it = inst->child; it; it = it->next, i++) {
        const node *sub = i < n->prefix.n ? n->prefix.v[i] : n->rest;
        if (sub == NULL)
            break;
        if (sub->boolean == 0 && i >= n->prefix.n)
            return fail(v, "must have at most %zu item%s (it has %zu)", n->prefix.n,
                        n->prefix.n == 1 ? "" : "s", count);
        size_t old = push_index(v, i);
        bool ok = validate(v, sub, it);
        pop(v, old);
        if (!ok)
            return false;
    }

    if (n->unique_items) {
        size_t a = 0;
        for (const cJSON *x = inst->child; x; x = x->next, a++) {
            size_t b = a + 1;
            if (!step(v, count - b))
                return false;
            for (const cJSON *y = x->next; y; y = y->next, b++)
                if (json_equal(x, y, 0))
                    return fail(v, "items [%zu] and [%zu] are equal; items must be unique", a,
                                b);
        }
    }

    if (n->contains) {
        int64_t found = 0;
        for (const cJSON *it = inst->child; it; it = it->next)
            if (matches(v, n->contains, it))
                found++;
        if (v->fatal)
            return false;
        int64_t min = n->min_contains >= 0 ? n->min_contains : 1;
        if (found < min) {
            if (min == 1)
                return fail(v, "no item matches the \"contains\" schema");
            return fail(v, "must have at least %lld items matching the \"contains\" schema "
                           "(it has %lld)", (long long)min, (long long)found);
        }
        if (n->max_contains >= 0 && found > n->max_contains)
            return fail(v, "must have at most %lld items matching the \"contains\" schema "
                           "(it has %lld)", (long long)n->max_contains, (long long)found);
    }
    return true;
}

static bool declared(const node *n, const char *key)
{
    for (size_t i = 0; i < n->nprops; i++)
        if (strcmp(n->props[i].name, key) == 0)
            return true;
    return false;
}

static bool check_member(vctx *v, const node *sub, const cJSON *member)
{
    size_t old = push_key(v, member->string);
    bool ok = sub->boolean == 0 ? fail(v, "property is not allowed") : validate(v, sub, member);
    pop(v, old);
    return ok;
}

static bool check_property_names(vctx *v, const node *n, const cJSON *inst)
{
    for (const cJSON *m = inst->child; m; m = m->next) {
        cJSON name = {0};
        name.type = cJSON_String;
        name.valuestring = m->string; /* read only: the schema never writes */
        if (v->err == NULL) {
            if (!validate(v, n->property_names, &name))
                return false;
            continue;
        }
        gt_error *inner = gt_xcalloc(1, sizeof *inner);
        gt_error *saved = v->err;
        v->err = inner;
        bool ok = validate(v, n->property_names, &name);
        v->err = saved;
        if (!ok && !v->fatal) {
            const char *why = inner->message;
            size_t plen = v->path.len;
            if (strncmp(why, v->path.data, plen) == 0 && strncmp(why + plen, ": ", 2) == 0)
                why += plen + 2;
            fail_property_name(v, m->string, why);
        }
        free(inner);
        if (!ok)
            return false;
    }
    return true;
}

static bool check_object(vctx *v, const node *n, const cJSON *inst)
{
    if (n->required) {
        for (const cJSON *r = n->required->child; r; r = r->next) {
            if (!cJSON_GetObjectItemCaseSensitive(inst, r->valuestring))
                return fail_required(v, r->valuestring);
        }
    }
    for (size_t i = 0; i < n->nprops; i++) {
        const cJSON *m = cJSON_GetObjectItemCaseSensitive(inst, n->props[i].name);
        if (m && !check_member(v, n->props[i].schema, m))
            return false;
    }
    if (n->npprops || n->additional_props) {
        for (const cJSON *m = inst->child; m; m = m->next) {
            bool known = declared(n, m->string);
            for (size_t i = 0; i < n->npprops; i++) {
                int rc = regex_search(v, n->pprops[i].re, m->string);
                if (rc < 0)
                    return false;
                if (rc == 0)
                    continue;
                known = true;
                if (!check_member(v, n->pprops[i].schema, m))
                    return false;
            }
            if (!known && n->additional_props && !check_member(v, n->additional_props, m))
                return false;
        }
    }
    if (n->property_names && !check_property_names(v, n, inst))
        return false;

    int64_t count = cJSON_GetArraySize(inst);
    if (n->min_props >= 0 && count < n->min_props)
        return fail(v, "must have at least %lld propert%s (it has %lld)",
                    (long long)n->min_props, n->min_props == 1 ? "y" : "ies", (long long)count);
    if (n->max_props >= 0 && count > n->max_props)
        return fail(v, "must have at most %lld propert%s (it has %lld)",
                    (long long)n->max_props, n->max_props == 1 ? "y" : "ies", (long long)count);

    for (size_t i = 0; i < n->ndreq; i++) {
        if (!cJSON_GetObjectItemCaseSensitive(inst, n->dreq[i].name))
            continue;
        for (const cJSON *r = n->dreq[i].names->child; r; r = r->next) {
            if (!cJSON_GetObjectItemCaseSensitive(inst, r->valuestring))
                return fail_dependency(v, n->dreq[i].name, r->valuestring);
        }
    }
    for (size_t i = 0; i < n->ndschemas; i++)
        if (cJSON_GetObjectItemCaseSensitive(inst, n->dschemas[i].name) &&
            !validate(v, n->dschemas[i].schema, inst))
            return false;
    return true;
}

static bool check_applicators(vctx *v, const node *n, const cJSON *inst)
{
    for (size_t i = 0; i < n->all_of.n; i++)
        if (!validate(v, n->all_of.v[i], inst))
            return false;
    if (n->any_of.n) {
        bool any = false;
        for (size_t i = 0; i < n->any_of.n && !any; i++)
            any = matches(v, n->any_of.v[i], inst);
        if (v->fatal)
            return false;
        if (!any)
            return fail_branches(v, &n->any_of, inst, "anyOf");
    }
    if (n->one_of.n) {
        size_t first = 0, hits = 0;
        for (size_t i = 0; i < n->one_of.n && hits < 2; i++) {
            if (!matches(v, n->one_of.v[i], inst))
                continue;
            if (hits++ == 0)
                first = i;
            else if (v->err)
                return fail(v, "matches both schemas [%zu] and [%zu] of oneOf; exactly one "
                               "must match", first, i);
        }
        if (v->fatal)
            return false;
        if (hits == 0)
            return fail_branches(v, &n->one_of, inst, "oneOf");
        if (hits > 1)
            return false;
    }
    if (n->not_) {
        bool hit = matches(v, n->not_, inst);
        if (v->fatal)
            return false;
        if (hit)
            return fail(v, "must not match the schema in \"not\"");
    }
    if (n->if_) {
        bool cond = matches(v, n->if_, inst);
        if (v->fatal)
            return false;
        const node *branch = cond ? n->then_ : n->else_;
        if (branch && !validate(v, branch, inst))
            return false;
    }
    return true;
}

static bool validate_keywords(vctx *v, const node *n, const cJSON *inst)
{
    if (n->ref && !validate(v, n->ref, inst))
        return false;
    if (n->ref_only)
        return true;
    if (!check_type(v, n, inst) || !check_enum(v, n, inst))
        return false;
    if (cJSON_IsNumber(inst) && !check_number(v, n, inst->valuedouble))
        return false;
    if (cJSON_IsString(inst) && !check_string(v, n, inst->valuestring))
        return false;
    if (cJSON_IsArray(inst) && !check_array(v, n, inst))
        return false;
    if (cJSON_IsObject(inst) && !check_object(v, n, inst))
        return false;
    return check_applicators(v, n, inst);
}

static bool validate(vctx *v, const node *n, const cJSON *inst)
{
    if (v->fatal)
        return false;
    if (n->boolean == 1)
        return true;
    if (n->boolean == 0)
        return fail(v, "value is not allowed");
    if (!step(v, 1))
        return false;
    if (v->depth >= MAX_EVAL_DEPTH)
        return fatal(v, "too deeply nested to validate (more than %d levels of schema)",
                     MAX_EVAL_DEPTH);
    v->depth++;
    bool ok = validate_keywords(v, n, inst);
    v->depth--;
    return ok;
}

gt_err gt_schema_validate(const gt_schema *s, const cJSON *instance, gt_error *err)
{
    if (s == NULL || instance == NULL)
        return gt_error_setf(err, GT_EINVAL, "$", "$: %s", s ? "no value to validate"
                                                              : "no schema to validate with");
    gt_error local = {0};
    vctx v = {.s = s, .err = err ? err : &local};
    gt_buf_puts(&v.path, "$");
    bool ok = validate(&v, s->top, instance);
    if (v.fatal) {
        ok = false;
        gt_error_setf(v.err, v.fatal_err.code, v.fatal_err.field, "%s", v.fatal_err.message);
    }
    gt_buf_free(&v.path);
    return ok ? GT_OK : GT_EINVAL;
}

int gt_schema_apply_defaults(const gt_schema *s, cJSON *instance)
{
    if (s == NULL || !cJSON_IsObject(instance))
        return 0;
    const node *top = s->top;
    for (size_t i = 0; i < s->nnodes && top->ref_only; i++)
        top = top->ref;
    int added = 0;
    for (size_t i = 0; i < top->nprops; i++) {
        if (cJSON_GetObjectItemCaseSensitive(instance, top->props[i].name))
            continue;
        /* "default" beside a $ref counts: it is an annotation, not a constraint. */
        const node *p = top->props[i].schema;
        const cJSON *def = NULL;
        for (size_t k = 0; p && k <= s->nnodes && def == NULL; k++, p = p->ref)
            def = cJSON_IsObject(p->json) ? cJSON_GetObjectItemCaseSensitive(p->json, "default")
                                          : NULL;
        if (def == NULL)
            continue;
        cJSON_AddItemToObject(instance, top->props[i].name, cJSON_Duplicate(def, 1));
        added++;
    }
    return added;
}
