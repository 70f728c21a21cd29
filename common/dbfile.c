#include "dbfile.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "json.h"

/* ---------- where each value of the file is: a pointer -> line:column table ---------- */

typedef struct postab {
    const void **keys;
    int *lines;
    size_t cap, n;
} postab;

static size_t pos_slot(const postab *t, const void *p)
{
    uint64_t h = (uint64_t)(uintptr_t)p * UINT64_C(0x9E3779B97F4A7C15);
    size_t i = (size_t)(h >> 20) & (t->cap - 1);
    while (t->keys[i] && t->keys[i] != p)
        i = (i + 1) & (t->cap - 1);
    return i;
}

static void pos_put(postab *t, const void *p, int line)
{
    if ((t->n + 1) * 2 > t->cap) {
        postab bigger = {.cap = t->cap ? t->cap * 2 : 1024};
        bigger.keys = gt_xcalloc(bigger.cap, sizeof *bigger.keys);
        bigger.lines = gt_xcalloc(bigger.cap, sizeof *bigger.lines);
        for (size_t i = 0; i < t->cap; i++)
            if (t->keys[i]) {
                size_t j = pos_slot(&bigger, t->keys[i]);
                bigger.keys[j] = t->keys[i];
                bigger.lines[j] = t->lines[i];
                bigger.n++;
            }
        free(t->keys);
        free(t->lines);
        *t = bigger;
    }
    size_t i = pos_slot(t, p);
    if (t->keys[i] == NULL)
        t->n++;
    t->keys[i] = p;
    t->lines[i] = line;
}

static int pos_line(const postab *t, const void *p)
{
    if (t->cap == 0 || p == NULL)
        return 0;
    size_t i = pos_slot(t, p);
    return t->keys[i] ? t->lines[i] : 0;
}

static void pos_free(postab *t)
{
    free(t->keys);
    free(t->lines);
    *t = (postab){0};
}

/* ---------- a string -> number map (anchors, names, the store's answers) ---------- */

typedef struct strmap {
    char **keys;
    long *vals;
    size_t cap, n;
} strmap;

static size_t sm_slot(const strmap *m, const char *k)
{
    uint64_t h = UINT64_C(1469598103934665603);
    for (const unsigned char *p = (const unsigned char *)k; *p; p++)
        h = (h ^ *p) * UINT64_C(1099511628211);
    size_t i = (size_t)h & (m->cap - 1);
    while (m->keys[i] && strcmp(m->keys[i], k) != 0)
        i = (i + 1) & (m->cap - 1);
    return i;
}

static void sm_put(strmap *m, const char *k, long v)
{
    if ((m->n + 1) * 2 > m->cap) {
        strmap bigger = {.cap = m->cap ? m->cap * 2 : 64};
        bigger.keys = gt_xcalloc(bigger.cap, sizeof *bigger.keys);
        bigger.vals = gt_xcalloc(bigger.cap, sizeof *bigger.vals);
        for (size_t i = 0; i < m->cap; i++)
            if (m->keys[i]) {
                size_t j = sm_slot(&bigger, m->keys[i]);
                bigger.keys[j] = m->keys[i];
                bigger.vals[j] = m->vals[i];
                bigger.n++;
            }
        free(m->keys);
        free(m->vals);
        *m = bigger;
    }
    size_t i = sm_slot(m, k);
    if (m->keys[i] == NULL) {
        m->keys[i] = gt_xstrdup(k);
        m->n++;
    }
    m->vals[i] = v;
}

static long sm_get(const strmap *m, const char *k, long dflt)
{
    if (m->cap == 0)
        return dflt;
    size_t i = sm_slot(m, k);
    return m->keys[i] ? m->vals[i] : dflt;
}

static void sm_free(strmap *m)
{
    for (size_t i = 0; i < m->cap; i++)
        free(m->keys[i]);
    free(m->keys);
    free(m->vals);
    *m = (strmap){0};
}

/* ---------- errors: "file:line: path: message", at most GT_DBFILE_MAX_ERRORS ---------- */

typedef struct report_ctx {
    const char *file;
    gt_strv *errors;
    size_t n;
} report_ctx;

static void report(report_ctx *r, int line, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void report(report_ctx *r, int line, const char *path, const char *fmt, ...)
{
    if (r->n++ >= GT_DBFILE_MAX_ERRORS) {
        if (r->n == GT_DBFILE_MAX_ERRORS + 1 && r->errors)
            gt_strv_push(r->errors, "(more errors not shown)");
        return;
    }
    gt_buf b = {0};
    char *msg;
    va_list ap;
    va_start(ap, fmt);
    if (vasprintf(&msg, fmt, ap) < 0)
        msg = NULL;
    va_end(ap);
    gt_buf_puts(&b, r->file);
    if (line > 0)
        gt_buf_printf(&b, ":%d", line);
    gt_buf_printf(&b, ": %s%s%s", path && path[0] ? path : "", path && path[0] ? ": " : "",
                  msg ? msg : "out of memory");
    free(msg);
    if (r->errors)
        gt_strv_push_owned(r->errors, gt_buf_steal(&b));
    gt_buf_free(&b);
}

/* ---------- YAML 1.2 core schema scalars ---------- */

static bool is_digits(const char *s, size_t n, int base)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!(base == 16 ? isxdigit((unsigned char)s[i])
              : base == 8 ? (s[i] >= '0' && s[i] <= '7')
                          : isdigit((unsigned char)s[i])))
            return false;
    return true;
}

/* [-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)? */
static bool is_float(const char *s, size_t n)
{
    size_t i = 0, d = 0;
    if (i < n && (s[i] == '-' || s[i] == '+'))
        i++;
    while (i < n && isdigit((unsigned char)s[i]))
        i++, d++;
    if (i < n && s[i] == '.') {
        i++;
        while (i < n && isdigit((unsigned char)s[i]))
            i++, d++;
    }
    if (d == 0)
        return false;
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < n && (s[i] == '-' || s[i] == '+'))
            i++;
        size_t e = i;
        while (i < n && isdigit((unsigned char)s[i]))
            i++;
        if (i == e)
            return false;
    }
    return i == n;
}

static bool is_int_text(const char *s, size_t n)
{
    if (n > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'o'))
        return is_digits(s + 2, n - 2, s[1] == 'x' ? 16 : 8);
    if (n > 0 && (s[0] == '-' || s[0] == '+'))
        s++, n--;
    return is_digits(s, n, 10);
}

static bool word_in(const char *s, size_t n, const char *const *words)
{
    for (size_t i = 0; words[i]; i++)
        if (strlen(words[i]) == n && memcmp(s, words[i], n) == 0)
            return true;
    return false;
}

#define MAX_EXACT 9007199254740992.0 /* 2^53: larger integers do not survive a double */

/* The value of a plain scalar: null, a boolean, a number, or else a string. NULL with
 * *why set for what JSON cannot hold (infinities, NaN, integers past 2^53). */
static cJSON *resolve_plain(const char *s, size_t n, const char **why)
{
    static const char *const nulls[] = {"", "~", "null", "Null", "NULL", NULL};
    static const char *const trues[] = {"true", "True", "TRUE", NULL};
    static const char *const falses[] = {"false", "False", "FALSE", NULL};
    static const char *const nonfinite[] = {".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF",
                                            "-.inf", "-.Inf", "-.INF", ".nan", ".NaN", ".NAN",
                                            NULL};
    if (word_in(s, n, nulls))
        return cJSON_CreateNull();
    if (word_in(s, n, trues))
        return cJSON_CreateTrue();
    if (word_in(s, n, falses))
        return cJSON_CreateFalse();
    if (word_in(s, n, nonfinite)) {
        *why = "not a finite number (JSON has no infinity or NaN)";
        return NULL;
    }
    char buf[64];
    if (is_int_text(s, n)) {
        bool radix = n > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'o');
        size_t off = radix ? 2 : 0;
        if (n - off >= sizeof buf) {
            *why = "an integer too large to keep exactly (more than 2^53)";
            return NULL;
        }
        memcpy(buf, s + off, n - off);
        buf[n - off] = '\0';
        errno = 0;
        long long v = strtoll(buf, NULL, radix ? (s[1] == 'x' ? 16 : 8) : 10);
        if (errno == ERANGE || v < -(long long)MAX_EXACT || v > (long long)MAX_EXACT) {
            *why = "an integer too large to keep exactly (more than 2^53)";
            return NULL;
        }
        return cJSON_CreateNumber((double)v);
    }
    if (is_float(s, n)) {
        if (n >= sizeof buf) {
            *why = "a number with too many digits";
            return NULL;
        }
        memcpy(buf, s, n);
        buf[n] = '\0';
        double d = strtod(buf, NULL);
        if (!isfinite(d)) {
            *why = "a number out of range";
            return NULL;
        }
        return cJSON_CreateNumber(d);
    }
    char *str = gt_xstrndup(s, n);
    cJSON *v = cJSON_CreateString(str);
    free(str);
    return v;
}

/* What a tag asks for: the core tags only; a service file is plain data, so
 * "!!python/object" and the like are refused. */
typedef enum tag_kind { TAG_NONE, TAG_STR, TAG_INT, TAG_FLOAT, TAG_BOOL, TAG_NULL, TAG_MAP,
                        TAG_SEQ, TAG_OTHER } tag_kind;

static tag_kind tag_of(const yaml_char_t *tag)
{
    static const struct { const char *name; tag_kind kind; } core[] = {
        {"tag:yaml.org,2002:str", TAG_STR},   {"tag:yaml.org,2002:int", TAG_INT},
        {"tag:yaml.org,2002:float", TAG_FLOAT}, {"tag:yaml.org,2002:bool", TAG_BOOL},
        {"tag:yaml.org,2002:null", TAG_NULL}, {"tag:yaml.org,2002:map", TAG_MAP},
        {"tag:yaml.org,2002:seq", TAG_SEQ},   {"!", TAG_NONE},
    };
    if (tag == NULL)
        return TAG_NONE;
    for (size_t i = 0; i < sizeof core / sizeof core[0]; i++)
        if (strcmp((const char *)tag, core[i].name) == 0)
            return core[i].kind;
    return TAG_OTHER;
}

/* ---------- the loader: libyaml events -> one cJSON tree with line numbers ---------- */

typedef struct frame {
    cJSON *node;
    char *path;       /* "services[1]" */
    char *key;        /* a mapping's key waiting for its value */
    int key_line;
    char *anchor;
    size_t first;     /* values counted before this one */
    int height;       /* levels below it so far */
    int n;            /* items so far (sequences) */
} frame;

typedef struct anchor {
    char *name;
    const cJSON *node;
    size_t count;     /* values it holds */
    int height;
} anchor_def;

typedef struct loader {
    yaml_parser_t p;
    report_ctx *r;
    const char *text;
    size_t len;
    postab *pos;
    frame stack[GT_DBFILE_MAX_DEPTH];
    int depth;
    anchor_def *anchors;
    size_t nanchors, anchors_cap;
    strmap anchor_index;   /* name -> the latest anchor of that name */
    size_t nodes;
    cJSON *root;
} loader;

static bool fail(loader *L, int line, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static bool fail(loader *L, int line, const char *path, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    report(L->r, line, path, "%s", msg);
    return false;
}

static frame *top(loader *L)
{
    return L->depth ? &L->stack[L->depth - 1] : NULL;
}

/* The path of the value about to be attached. */
static char *child_path(loader *L)
{
    frame *t = top(L);
    if (t == NULL)
        return gt_xstrdup("");
    if (cJSON_IsArray(t->node))
        return gt_xasprintf("%s[%d]", t->path, t->n);
    return t->path[0] ? gt_xasprintf("%s.%s", t->path, t->key) : gt_xstrdup(t->key);
}

static const char *path_or_top(const char *p)
{
    return p[0] ? p : "(top level)";
}

static bool utf8_ok(const char *s)
{
    size_t n = strlen(s), cl = 0;
    char *clean = gt_utf8_clean(s, n, &cl);
    bool ok = cl == n && memcmp(clean, s, n) == 0;
    free(clean);
    return ok;
}

/* Whether every key and string in v is UTF-8 text (JSON and YAML carry nothing else). */
static bool all_utf8(const cJSON *v)
{
    if ((v->string && !utf8_ok(v->string)) || (cJSON_IsString(v) && !utf8_ok(v->valuestring)))
        return false;
    for (const cJSON *c = v->child; c; c = c->next)
        if (!all_utf8(c))
            return false;
    return true;
}

static bool count(loader *L, size_t n, int line)
{
    if (L->nodes + n > GT_DBFILE_MAX_NODES) {
        char *p = child_path(L);
        fail(L, line, path_or_top(p),
             "the file holds (or its aliases expand to) more than %d values, the limit for a "
             "service file", GT_DBFILE_MAX_NODES);
        free(p);
        return false;
    }
    L->nodes += n;
    return true;
}

static void attach(loader *L, cJSON *v, int line)
{
    frame *t = top(L);
    pos_put(L->pos, v, line);
    if (t == NULL) {
        L->root = v;
    } else if (cJSON_IsArray(t->node)) {
        cJSON_AddItemToArray(t->node, v);
        t->n++;
    } else {
        cJSON_AddItemToObject(t->node, t->key, v);
        free(t->key);
        t->key = NULL;
    }
}

static void add_anchor(loader *L, const yaml_char_t *name, const cJSON *node, size_t n, int height)
{
    if (L->nanchors == L->anchors_cap) {
        L->anchors_cap = L->anchors_cap ? L->anchors_cap * 2 : 16;
        L->anchors = gt_xrealloc(L->anchors, L->anchors_cap * sizeof *L->anchors);
    }
    sm_put(&L->anchor_index, (const char *)name, (long)L->nanchors);
    L->anchors[L->nanchors++] = (anchor_def){gt_xstrdup((const char *)name), node, n, height};
}

static bool is_key_slot(loader *L)
{
    frame *t = top(L);
    return t && cJSON_IsObject(t->node) && t->key == NULL;
}

static bool on_scalar(loader *L, const yaml_event_t *ev)
{
    const char *s = (const char *)ev->data.scalar.value;
    size_t n = ev->data.scalar.length;
    int line = (int)ev->start_mark.line + 1;
    bool plain = ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
    tag_kind tag = tag_of(ev->data.scalar.tag);
    char *path = child_path(L);
    bool ok = false;
    if (is_key_slot(L)) {
        frame *t = top(L);
        free(path);
        path = gt_xstrdup(t->path);
        if (memchr(s, '\0', n))
            fail(L, line, path_or_top(path), "a key contains a NUL character");
        else if (tag != TAG_NONE && tag != TAG_STR)
            fail(L, line, path_or_top(path), "a key must be a plain string (tag %.64s)",
                 (const char *)ev->data.scalar.tag);
        else if (ev->data.scalar.anchor)
            fail(L, line, path_or_top(path), "anchors on keys are not supported");
        else if (plain && n == 2 && memcmp(s, "<<", 2) == 0)
            fail(L, line, path_or_top(path), "merge keys (<<) are not supported: write the fields out");
        else {
            t->key = gt_xstrndup(s, n);
            t->key_line = line;
            ok = true;
        }
        free(path);
        return ok;
    }
    cJSON *v = NULL;
    const char *why = NULL;
    if (memchr(s, '\0', n)) {
        fail(L, line, path_or_top(path), "contains a NUL character");
        goto done;
    }
    if (tag == TAG_OTHER || tag == TAG_MAP || tag == TAG_SEQ) {
        fail(L, line, path_or_top(path), "tag %.64s is not accepted: a service file holds plain "
             "data (strings, numbers, booleans, null, lists and mappings)",
             (const char *)ev->data.scalar.tag);
        goto done;
    }
    if (tag == TAG_STR || (tag == TAG_NONE && (!plain || ev->data.scalar.tag))) {
        char *str = gt_xstrndup(s, n);
        v = cJSON_CreateString(str);
        free(str);
    } else {
        v = resolve_plain(s, n, &why);
        bool match = v == NULL || tag == TAG_NONE ||
                     (tag == TAG_INT && cJSON_IsNumber(v) && is_int_text(s, n)) ||
                     (tag == TAG_FLOAT && cJSON_IsNumber(v)) || (tag == TAG_BOOL && cJSON_IsBool(v)) ||
                     (tag == TAG_NULL && cJSON_IsNull(v));
        if (!match) {
            cJSON_Delete(v);
            v = NULL;
            why = "does not match its tag";
        }
    }
    if (v == NULL) {
        fail(L, line, path_or_top(path), "%s", why ? why : "cannot be read");
        goto done;
    }
    if (!count(L, 1, line)) {
        cJSON_Delete(v);
        goto done;
    }
    attach(L, v, line);
    if (ev->data.scalar.anchor)
        add_anchor(L, ev->data.scalar.anchor, v, 1, 0);
    ok = true;
done:
    free(path);
    return ok;
}

static bool on_start(loader *L, const yaml_event_t *ev, bool mapping)
{
    int line = (int)ev->start_mark.line + 1;
    const yaml_char_t *tagname = mapping ? ev->data.mapping_start.tag : ev->data.sequence_start.tag;
    const yaml_char_t *anchor = mapping ? ev->data.mapping_start.anchor
                                        : ev->data.sequence_start.anchor;
    tag_kind tag = tag_of(tagname);
    frame *t = top(L);
    char *path = is_key_slot(L) ? gt_xstrdup(t->path) : child_path(L);
    bool ok = false;
    if (is_key_slot(L))
        fail(L, line, path_or_top(path), "a key must be a string, not a %s",
             mapping ? "mapping" : "list");
    else if (L->depth == GT_DBFILE_MAX_DEPTH)
        fail(L, line, path_or_top(path), "nested more than %d levels deep, the limit for a "
             "service file", GT_DBFILE_MAX_DEPTH);
    else if (tag != TAG_NONE && tag != (mapping ? TAG_MAP : TAG_SEQ))
        fail(L, line, path_or_top(path), "tag %.64s is not accepted: a service file holds plain "
             "data", (const char *)tagname);
    else if (count(L, 1, line)) {
        cJSON *v = mapping ? cJSON_CreateObject() : cJSON_CreateArray();
        attach(L, v, line);
        L->stack[L->depth++] = (frame){.node = v, .path = path, .first = L->nodes - 1,
                                       .anchor = anchor ? gt_xstrdup((const char *)anchor) : NULL};
        return true;
    }
    free(path);
    return ok;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static bool on_end(loader *L)
{
    frame *t = top(L);
    bool ok = true;
    if (cJSON_IsObject(t->node)) {
        /* a duplicate key would silently lose one of the values: refuse it */
        size_t n = (size_t)cJSON_GetArraySize(t->node), i = 0;
        const char **keys = gt_xcalloc(n + 1, sizeof *keys);
        const cJSON *it;
        cJSON_ArrayForEach(it, t->node)
            keys[i++] = it->string;
        qsort(keys, n, sizeof *keys, cmp_str);
        for (i = 1; i < n && ok; i++)
            if (strcmp(keys[i], keys[i - 1]) == 0) {
                const cJSON *second = NULL;
                int seen = 0;
                cJSON_ArrayForEach(it, t->node)
                    if (strcmp(it->string, keys[i]) == 0 && ++seen == 2)
                        second = it;
                ok = fail(L, pos_line(L->pos, second), path_or_top(t->path),
                          "key \"%.128s\" appears twice", keys[i]);
            }
        free(keys);
    }
    if (ok && t->anchor)
        add_anchor(L, (const yaml_char_t *)t->anchor, t->node, L->nodes - t->first, t->height);
    int h = t->height;
    free(t->path);
    free(t->anchor);
    free(t->key);
    L->depth--;
    if (L->depth && L->stack[L->depth - 1].height < h + 1)
        L->stack[L->depth - 1].height = h + 1;
    return ok;
}

static void pos_tree(postab *pos, const cJSON *v, int line)
{
    pos_put(pos, v, line);
    for (const cJSON *c = v->child; c; c = c->next)
        pos_tree(pos, c, line);
}

static bool on_alias(loader *L, const yaml_event_t *ev)
{
    int line = (int)ev->start_mark.line + 1;
    const char *name = (const char *)ev->data.alias.anchor;
    char *path = is_key_slot(L) ? gt_xstrdup(top(L)->path) : child_path(L);
    bool ok = false;
    long ai = sm_get(&L->anchor_index, name, -1);
    const anchor_def *a = ai >= 0 ? &L->anchors[ai] : NULL;
    if (is_key_slot(L))
        fail(L, line, path_or_top(path), "an alias cannot be a key");
    else if (a == NULL)
        fail(L, line, path_or_top(path), "alias *%.64s names no anchor before it", name);
    else if (L->depth + a->height >= GT_DBFILE_MAX_DEPTH)
        fail(L, line, path_or_top(path), "alias *%.64s nests more than %d levels deep", name,
             GT_DBFILE_MAX_DEPTH);
    else if (count(L, a->count, line)) {
        cJSON *copy = cJSON_Duplicate(a->node, 1);
        if (copy == NULL) {
            fail(L, line, path_or_top(path), "out of memory");
        } else {
            attach(L, copy, line);
            pos_tree(L->pos, copy, line);
            if (L->depth && L->stack[L->depth - 1].height < a->height + 1)
                L->stack[L->depth - 1].height = a->height + 1;
            ok = true;
        }
    }
    free(path);
    return ok;
}

static void offset_line_col(const char *text, size_t len, size_t off, int *line, int *col)
{
    *line = 1;
    *col = 1;
    for (size_t i = 0; i < off && i < len; i++) {
        if (text[i] == '\n')
            (*line)++, *col = 1;
        else if (((unsigned char)text[i] & 0xC0) != 0x80)
            (*col)++;
    }
}

static void syntax_error(loader *L)
{
    const yaml_parser_t *p = &L->p;
    int line, col;
    char msg[512];
    if (p->error == YAML_READER_ERROR) {
        offset_line_col(L->text, L->len, p->problem_offset, &line, &col);
        snprintf(msg, sizeof msg, "not valid text: %s", p->problem ? p->problem : "unreadable");
    } else {
        line = (int)p->problem_mark.line + 1;
        col = (int)p->problem_mark.column + 1;
        snprintf(msg, sizeof msg, "invalid YAML: %s%s%s",
                 p->error == YAML_MEMORY_ERROR ? "out of memory"
                 : p->problem                  ? p->problem
                                               : "syntax error",
                 p->context ? " " : "", p->context ? p->context : "");
    }
    if (L->r->n++ < GT_DBFILE_MAX_ERRORS && L->r->errors)
        gt_strv_push_owned(L->r->errors, gt_xasprintf("%s:%d:%d: %s", L->r->file, line, col, msg));
}

/* The checks the loader makes, on a tree cJSON read: values, depth, duplicate keys. */
static bool json_checks(report_ctx *r, const cJSON *v, const char *path, int depth, size_t *nodes)
{
    if (++*nodes > GT_DBFILE_MAX_NODES) {
        report(r, 0, path_or_top(path), "the file holds more than %d values, the limit for a "
               "service file", GT_DBFILE_MAX_NODES);
        return false;
    }
    if (depth > GT_DBFILE_MAX_DEPTH) {
        report(r, 0, path_or_top(path), "nested more than %d levels deep, the limit for a "
               "service file", GT_DBFILE_MAX_DEPTH);
        return false;
    }
    if (cJSON_IsNumber(v) && (!isfinite(v->valuedouble) ||
                              (v->valuedouble == floor(v->valuedouble) &&
                               fabs(v->valuedouble) > MAX_EXACT))) {
        report(r, 0, path_or_top(path), "a number too large to keep exactly");
        return false;
    }
    bool ok = true;
    const char *texts[2] = {v->string, cJSON_IsString(v) ? v->valuestring : NULL};
    for (size_t t = 0; t < 2 && ok; t++)
        if (texts[t] && !(ok = utf8_ok(texts[t])))
            report(r, 0, path_or_top(path), "not valid UTF-8 text");
    if (ok && cJSON_IsObject(v)) {
        size_t n = (size_t)cJSON_GetArraySize(v), i = 0;
        const char **keys = gt_xcalloc(n + 1, sizeof *keys);
        for (const cJSON *c = v->child; c; c = c->next)
            keys[i++] = c->string;
        qsort(keys, n, sizeof *keys, cmp_str);
        for (i = 1; i < n && ok; i++)
            if (strcmp(keys[i], keys[i - 1]) == 0) {
                report(r, 0, path_or_top(path), "key \"%.128s\" appears twice", keys[i]);
                ok = false;
            }
        free(keys);
    }
    int i = 0;
    for (const cJSON *c = v->child; c && ok; c = c->next, i++) {
        char *p = cJSON_IsArray(v) ? gt_xasprintf("%s[%d]", path, i)
                  : path[0]        ? gt_xasprintf("%s.%s", path, c->string)
                                   : gt_xstrdup(c->string);
        ok = json_checks(r, c, p, depth + 1, nodes);
        free(p);
    }
    return ok;
}

static cJSON *load(report_ctx *r, const char *text, size_t len, postab *pos, bool *syntax)
{
    loader L = {.r = r, .text = text, .len = len, .pos = pos};
    bool ok = true, done = false;
    int docs = 0;
    if (!yaml_parser_initialize(&L.p)) {
        report(r, 0, "", "out of memory");
        return NULL;
    }
    yaml_parser_set_input_string(&L.p, (const unsigned char *)text, len);
    while (ok && !done) {
        yaml_event_t ev;
        if (!yaml_parser_parse(&L.p, &ev)) {
            syntax_error(&L);
            *syntax = true;
            ok = false;
            break;
        }
        switch (ev.type) {
        case YAML_STREAM_END_EVENT: done = true; break;
        case YAML_DOCUMENT_START_EVENT:
            if (++docs > 1)
                ok = fail(&L, (int)ev.start_mark.line + 1, "",
                          "a second YAML document (---): a service file is one document");
            break;
        case YAML_SCALAR_EVENT: ok = on_scalar(&L, &ev); break;
        case YAML_SEQUENCE_START_EVENT: ok = on_start(&L, &ev, false); break;
        case YAML_MAPPING_START_EVENT: ok = on_start(&L, &ev, true); break;
        case YAML_SEQUENCE_END_EVENT:
        case YAML_MAPPING_END_EVENT: ok = on_end(&L); break;
        case YAML_ALIAS_EVENT: ok = on_alias(&L, &ev); break;
        default: break;
        }
        yaml_event_delete(&ev);
    }
    while (L.depth > 0) {
        frame *t = &L.stack[--L.depth];
        free(t->path);
        free(t->anchor);
        free(t->key);
    }
    for (size_t i = 0; i < L.nanchors; i++)
        free(L.anchors[i].name);
    free(L.anchors);
    sm_free(&L.anchor_index);
    yaml_parser_delete(&L.p);
    if (!ok) {
        cJSON_Delete(L.root);
        return NULL;
    }
    if (L.root == NULL)
        report(r, 0, "", "empty: expected a mapping with decorators, repositories and services");
    return L.root;
}

/* ---------- file fields <-> API fields ---------- */

typedef struct field_def {
    const char *file;
    const char *api;    /* NULL: handled by its own code (runtime) */
} field_def;

static const field_def decorator_fields[] = {
    {"name", "name"}, {"description", "description"}, {"schema", "schema"}, {NULL, NULL},
};
static const field_def repository_fields[] = {
    {"name", "name"}, {"description", "description"}, {"url", "url"},
    {"reference", "reference"}, {"private-key-name", "private_key_name"}, {NULL, NULL},
};
/* The seed's order: what it is, where its code is, how it runs, then Gantry's own. */
static const field_def service_fields[] = {
    {"name", "name"}, {"type", "type"}, {"description", "description"},
    {"repository", "repository"}, {"decorator", "decorator"},
    {"working-directory", "working_dir"}, {"filename", "filename"},
    {"playbooks", "playbooks"}, {"runtime", NULL}, {"env", "env"}, {"secrets", "secrets"},
    {"allowed-secrets", "allowed_secrets"}, {"timeout", "timeout"}, {"retries", "retries"},
    {"pool", "pool"}, {"limits", "limits"}, {"arg-format", "arg_format"},
    {"interpreter", "interpreter"}, {NULL, NULL},
};
/* ansible-playbook's runtime: {inventory: [FILE], extra-vars: {...}} */
static const field_def runtime_fields[] = {
    {"inventory", "inventory"}, {"extra-vars", "extra_vars"}, {NULL, NULL},
};
static const field_def limit_fields[] = {
    {"memory", "memory"}, {"processes", "processes"}, {"cpu-time", "cpu_time"},
    {"open-files", "open_files"}, {NULL, NULL},
};
static const field_def binding_fields[] = {
    {"name", "name"}, {"type", "type"}, {"target", "target"}, {NULL, NULL},
};

/* What the server adds to every document: never part of a file. */
static const char *const server_fields[] = {"revision", "created_at", "updated_at", NULL};

static const gt_model_kind *const file_kinds[] = {&gt_model_decorator, &gt_model_repository,
                                                  &gt_model_service};

static const field_def *fields_of(const gt_model_kind *k)
{
    return k == &gt_model_decorator ? decorator_fields
           : k == &gt_model_repository ? repository_fields
           : k == &gt_model_service    ? service_fields
                                       : NULL;
}

static const field_def *by_file(const field_def *t, const char *name)
{
    for (; t && t->file; t++)
        if (strcmp(t->file, name) == 0)
            return t;
    return NULL;
}

static const field_def *by_api(const field_def *t, const char *name)
{
    for (; t && t->file; t++)
        if (t->api && strcmp(t->api, name) == 0)
            return t;
    return NULL;
}

static bool is_server_field(const char *k)
{
    for (size_t i = 0; server_fields[i]; i++)
        if (strcmp(server_fields[i], k) == 0)
            return true;
    return false;
}

const char *gt_dbfile_field_name(const gt_model_kind *kind, const char *api_field)
{
    static const char *const runtime_names[] = {"runtime.inventory", "runtime.extra-vars"};
    if (kind == &gt_model_service)
        for (size_t i = 0; runtime_fields[i].file; i++)
            if (strcmp(runtime_fields[i].api, api_field) == 0)
                return runtime_names[i];
    const field_def *f = by_api(fields_of(kind), api_field);
    return f ? f->file : NULL;
}

/* Fields of Itential Automation Gateway's format that Gantry has no equivalent for:
 * refused with a message that says so, since ignoring one (runtime.check) would run
 * the automation differently from what the file asks. */
static const char *const seed_only[] = {"tags", "check", "diff", "skip-tags", "verbose-level",
                                        "limit", "forks", "start-at-task", "executable-object",
                                        "req-file", "requirements-file", "vars-file", NULL};

static bool in_list(const char *const *l, const char *s)
{
    for (size_t i = 0; l[i]; i++)
        if (strcmp(l[i], s) == 0)
            return true;
    return false;
}

/* ---------- the parsed file ---------- */

struct gt_dbfile {
    char *name;
    cJSON *root;
    postab pos;
    gt_dbfile_item *items;
    size_t n, cap;
};

typedef struct pctx {
    report_ctx r;
    gt_dbfile *f;
    bool bad;       /* this item had an error */
} pctx;

static int line_of(pctx *c, const cJSON *node)
{
    return pos_line(&c->f->pos, node);
}

static void err_at(pctx *c, const cJSON *node, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void err_at(pctx *c, const cJSON *node, const char *path, const char *fmt, ...)
{
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    report(&c->r, line_of(c, node), path, "%s", msg);
    c->bad = true;
}

static void unknown_field(pctx *c, const cJSON *m, const char *path, const field_def *allowed)
{
    gt_buf names = {0};
    for (const field_def *f = allowed; f->file; f++)
        gt_buf_printf(&names, "%s%s", names.len ? ", " : "", f->file);
    if (in_list(seed_only, m->string))
        err_at(c, m, path, "\"%.64s\" is a field of Itential Automation Gateway's format that "
               "Gantry does not support: remove it", m->string);
    else if (strcmp(m->string, "value") == 0)
        err_at(c, m, path, "a secret's value never goes in a service file: secrets are "
               "referenced by name (create them with gantry create secret)");
    else
        err_at(c, m, path, "unknown field \"%.64s\" (expected one of: %s)", m->string, names.data);
    gt_buf_free(&names);
}

/* A member that must name a secret. The value is never echoed: it may be the secret
 * itself, pasted where its name belongs. */
static bool secret_name(pctx *c, const cJSON *v, const char *path)
{
    if (cJSON_IsString(v) && gt_name_valid(v->valuestring))
        return true;
    err_at(c, v, path, "expected the name of a secret (1-128 of A-Z a-z 0-9 _ . -, not starting "
           "with . or -), not its value: secrets are referenced by name (the value given is not "
           "shown)");
    return false;
}

/* Copies members of src named in t into dst under their API names; unknown ones are
 * errors. Nulls are dropped: they mean "not set", as in the API. */
static void copy_fields(pctx *c, const cJSON *src, const char *path, const field_def *t, cJSON *dst)
{
    const cJSON *m;
    cJSON_ArrayForEach(m, src) {
        char *p = gt_xasprintf("%s.%s", path, m->string);
        const field_def *f = by_file(t, m->string);
        if (f == NULL)
            unknown_field(c, m, p, t);
        else if (!cJSON_IsNull(m) && f->api)
            gt_json_set(dst, f->api, cJSON_Duplicate(m, 1));
        free(p);
    }
}

static void service_specials(pctx *c, const cJSON *node, const char *path, cJSON *doc)
{
    char *p;
    const cJSON *v;
    /* limits: hyphenated keys */
    if ((v = cJSON_GetObjectItemCaseSensitive(node, "limits")) && cJSON_IsObject(v)) {
        cJSON *lim = cJSON_CreateObject();
        p = gt_xasprintf("%s.limits", path);
        copy_fields(c, v, p, limit_fields, lim);
        free(p);
        gt_json_set(doc, "limits", lim);
    }
    /* runtime: ansible's inventory (a list of one, or a string) and extra vars */
    if ((v = cJSON_GetObjectItemCaseSensitive(node, "runtime")) && !cJSON_IsNull(v)) {
        p = gt_xasprintf("%s.runtime", path);
        if (!cJSON_IsObject(v)) {
            err_at(c, v, p, "expected a mapping (inventory, extra-vars)");
        } else {
            copy_fields(c, v, p, runtime_fields, doc);
            const cJSON *inv = cJSON_GetObjectItemCaseSensitive(v, "inventory");
            if (cJSON_IsArray(inv)) {
                int n = cJSON_GetArraySize(inv);
                if (n == 1 && cJSON_IsString(inv->child))
                    gt_json_set_str(doc, "inventory", inv->child->valuestring);
                else if (n == 0)
                    cJSON_DeleteItemFromObjectCaseSensitive(doc, "inventory");
                else {
                    char *ip = gt_xasprintf("%s.inventory", p);
                    err_at(c, inv, ip, "Gantry runs a playbook with one inventory (a file or a "
                           "host list): give a list of one");
                    free(ip);
                }
            }
        }
        free(p);
    }
    /* secret bindings: names only */
    if ((v = cJSON_GetObjectItemCaseSensitive(node, "secrets")) && cJSON_IsArray(v)) {
        cJSON *list = cJSON_CreateArray();
        int i = 0;
        const cJSON *b;
        cJSON_ArrayForEach(b, v) {
            p = gt_xasprintf("%s.secrets[%d]", path, i++);
            if (!cJSON_IsObject(b)) {
                err_at(c, b, p, "expected {name: SECRET, type: env, target: VARIABLE}");
            } else {
                cJSON *o = cJSON_CreateObject();
                copy_fields(c, b, p, binding_fields, o);
                char *np = gt_xasprintf("%s.name", p);
                const cJSON *n = cJSON_GetObjectItemCaseSensitive(b, "name");
                if (n)
                    secret_name(c, n, np);
                free(np);
                cJSON_AddItemToArray(list, o);
            }
            free(p);
        }
        gt_json_set(doc, "secrets", list);
    }
    if ((v = cJSON_GetObjectItemCaseSensitive(node, "allowed-secrets")) && cJSON_IsArray(v)) {
        int i = 0;
        const cJSON *n;
        cJSON_ArrayForEach(n, v) {
            p = gt_xasprintf("%s.allowed-secrets[%d]", path, i++);
            secret_name(c, n, p);
            free(p);
        }
    }
}

/* Walks path (".a.b[2]" relative to node) as far as it goes; returns the deepest
 * node found. */
static const cJSON *walk(const cJSON *node, const char *path)
{
    const char *s = path;
    while (node && *s) {
        if (*s == '.') {
            s++;
            size_t n = strcspn(s, ".[");
            const cJSON *c = NULL;
            for (const cJSON *m = cJSON_IsObject(node) ? node->child : NULL; m && !c; m = m->next)
                if (strlen(m->string) == n && strncmp(m->string, s, n) == 0)
                    c = m;
            if (c == NULL)
                return node;
            node = c;
            s += n;
        } else if (*s == '[') {
            char *end;
            long i = strtol(s + 1, &end, 10);
            const cJSON *c = cJSON_IsArray(node) && *end == ']' ? cJSON_GetArrayItem(node, (int)i)
                                                                 : NULL;
            if (c == NULL)
                return node;
            node = c;
            s = end + 1;
        } else {
            return node;
        }
    }
    return node;
}

/* A model error (about "$.api_field...") reported at the file field it came from. */
static void model_error(pctx *c, const gt_model_kind *k, const cJSON *node, const char *path,
                        const gt_error *e)
{
    const char *field = e->field;
    const char *msg = e->message;
    size_t fl = strlen(field);
    if (fl && strncmp(msg, field, fl) == 0 && msg[fl] == ':')
        msg += fl + (msg[fl + 1] == ' ' ? 2 : 1);
    gt_buf fp = {0};
    if (strncmp(field, "$.", 2) == 0) {
        const char *seg = field + 2;
        size_t n = strcspn(seg, ".[/");
        char *api = gt_xstrndup(seg, n);
        const char *file = gt_dbfile_field_name(k, api);
        const char *rest = seg + n;
        gt_buf_printf(&fp, ".%s", file ? file : api);
        if (strcmp(api, "limits") == 0 && rest[0] == '.') {
            const field_def *lf = by_api(limit_fields, rest + 1);
            if (lf) {
                gt_buf_printf(&fp, ".%s", lf->file);
                rest = "";
            }
        }
        gt_buf_puts(&fp, rest);
        free(api);
    }
    const cJSON *at = walk(node, fp.data ? fp.data : "");
    char *p = gt_xasprintf("%s%s", path, fp.data ? fp.data : "");
    err_at(c, at, p, "%s", msg);
    free(p);
    gt_buf_free(&fp);
}

static void add_item(pctx *c, const gt_model_kind *k, const cJSON *node, int index,
                     const char *list)
{
    char *path = gt_xasprintf("%s[%d]", list, index);
    c->bad = false;
    if (!cJSON_IsObject(node)) {
        err_at(c, node, path, "expected a mapping (name: ..., ...)");
        free(path);
        return;
    }
    cJSON *doc = cJSON_CreateObject();
    copy_fields(c, node, path, fields_of(k), doc);
    if (k == &gt_model_service)
        service_specials(c, node, path, doc);
    const cJSON *pk = cJSON_GetObjectItemCaseSensitive(node, "private-key-name");
    if (k == &gt_model_repository && pk && !cJSON_IsNull(pk)) {
        char *p = gt_xasprintf("%s.private-key-name", path);
        secret_name(c, pk, p);
        free(p);
    }
    gt_error e = {0};
    if (!c->bad && k->validate(doc, &e) != GT_OK)
        model_error(c, k, node, path, &e);
    if (c->bad) {
        cJSON_Delete(doc);
    } else {
        gt_dbfile *f = c->f;
        if (f->n == f->cap) {
            f->cap = f->cap ? f->cap * 2 : 16;
            f->items = gt_xrealloc(f->items, f->cap * sizeof *f->items);
        }
        f->items[f->n++] = (gt_dbfile_item){
            .kind = k,
            .name = cJSON_GetObjectItemCaseSensitive(doc, "name")->valuestring,
            .doc = doc,
            .node = node,
            .index = index,
        };
    }
    free(path);
}

typedef struct named {
    const char *name;
    int index;
    const cJSON *node;
} named;

static int cmp_named(const void *a, const void *b)
{
    const named *x = a, *y = b;
    int d = strcmp(x->name, y->name);
    return d ? d : x->index - y->index;
}

/* Names that appear twice in one list (the later one is reported). */
static void check_duplicates(pctx *c, const cJSON *list, const char *lname)
{
    size_t n = 0, cap = (size_t)cJSON_GetArraySize(list);
    named *v = gt_xcalloc(cap + 1, sizeof *v);
    int i = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, list) {
        const cJSON *nm = cJSON_GetObjectItemCaseSensitive(it, "name");
        if (cJSON_IsString(nm))
            v[n++] = (named){nm->valuestring, i, nm};
        i++;
    }
    qsort(v, n, sizeof *v, cmp_named);
    for (size_t k = 1; k < n; k++)
        if (strcmp(v[k].name, v[k - 1].name) == 0) {
            char *p = gt_xasprintf("%s[%d].name", lname, v[k].index);
            size_t first = k - 1;
            while (first > 0 && strcmp(v[first - 1].name, v[k].name) == 0)
                first--;
            err_at(c, v[k].node, p, "\"%.128s\" appears twice in %s (also %s[%d], line %d)",
                   v[k].name, lname, lname, v[first].index, line_of(c, v[first].node));
            free(p);
        }
    free(v);
}

gt_dbfile *gt_dbfile_parse(const char *name, const char *text, size_t len, gt_strv *errors)
{
    gt_dbfile *f = gt_xcalloc(1, sizeof *f);
    pctx c = {.r = {.file = name, .errors = errors}, .f = f};
    f->name = gt_xstrdup(name);
    if (len > GT_DBFILE_MAX_BYTES) {
        report(&c.r, 0, "", "%zu bytes: larger than %u MiB, the limit for a service file", len,
               GT_DBFILE_MAX_BYTES >> 20);
        goto fail;
    }
    /* JSON (it starts with '{'): JSON's own syntax errors, at JSON's line:column */
    size_t ws = 0;
    cJSON *json = NULL;
    while (ws < len && text[ws] && strchr(" \t\r\n", text[ws]))
        ws++;
    if (ws < len && text[ws] == '{') {
        gt_error e = {0};
        if (gt_json_parse(text, len, name, &json, &e) != GT_OK) {
            c.r.n++;
            if (errors)
                gt_strv_push(errors, e.message); /* "name:line:col: invalid JSON" */
            goto fail;
        }
    }
    size_t before = errors ? errors->n : 0;
    bool syntax = false;
    f->root = load(&c.r, text, len, &f->pos, &syntax);
    if (f->root == NULL && json && syntax) {
        /* valid JSON that libyaml refuses (it rejects \uD83D\uDE00, the escapes of a
         * surrogate pair, and raw DEL and C1 control characters, which YAML wants
         * escaped): use cJSON's reading, without line numbers; json_checks makes the
         * checks the loader would have made, UTF-8 included */
        while (errors && errors->n > before)
            free(errors->v[--errors->n]);
        if (errors && errors->v)
            errors->v[errors->n] = NULL;
        c.r.n = 0;
        size_t nodes = 0;
        if (json_checks(&c.r, json, "", 1, &nodes)) {
            f->root = json;
            json = NULL;
        }
    }
    cJSON_Delete(json);
    if (f->root == NULL)
        goto fail;
    if (!cJSON_IsObject(f->root)) {
        err_at(&c, f->root, "", "expected a mapping with decorators, repositories and services");
        goto fail;
    }
    static const char *const lists[] = {"decorators", "repositories", "services"};
    const cJSON *m;
    cJSON_ArrayForEach(m, f->root) {
        bool known = false;
        for (size_t i = 0; i < 3; i++)
            known |= strcmp(m->string, lists[i]) == 0;
        if (strcmp(m->string, "secrets") == 0)
            err_at(&c, m, "secrets", "secrets are not part of a service file: their values "
                   "never leave the store; create them with gantry create secret, and refer to "
                   "them by name");
        else if (!known)
            err_at(&c, m, m->string, "unknown field (expected decorators, repositories, services)");
        else if (!cJSON_IsArray(m) && !cJSON_IsNull(m))
            err_at(&c, m, m->string, "expected a list");
    }
    for (size_t k = 0; k < 3; k++) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(f->root, lists[k]);
        if (!cJSON_IsArray(list))
            continue;
        int i = 0;
        const cJSON *it;
        cJSON_ArrayForEach(it, list)
            add_item(&c, file_kinds[k], it, i++, lists[k]);
        check_duplicates(&c, list, lists[k]);
    }
    if (c.r.n > 0)
        goto fail;
    return f;
fail:
    gt_dbfile_free(&f);
    return NULL;
}

void gt_dbfile_free(gt_dbfile **fp)
{
    if (fp == NULL || *fp == NULL)
        return;
    gt_dbfile *f = *fp;
    for (size_t i = 0; i < f->n; i++) {
        cJSON_Delete(f->items[i].doc);
        cJSON_Delete(f->items[i].stored);
    }
    free(f->items);
    cJSON_Delete(f->root);
    pos_free(&f->pos);
    free(f->name);
    free(f);
    *fp = NULL;
}

size_t gt_dbfile_items(gt_dbfile *f, gt_dbfile_item **items)
{
    *items = f->items;
    return f->n;
}

/* ---------- plan: references and actions, through the API ---------- */

static gt_err status_code(int status)
{
    switch (status) {
    case 400: return GT_EINVAL;
    case 401:
    case 403: return GT_EPERM;
    case 404: return GT_ENOTFOUND;
    case 409: return GT_ECONFLICT;
    case 503: return GT_EUNAVAIL;
    case 504: return GT_ETIMEDOUT;
    default: return GT_EINTERNAL;
    }
}

static const char *resp_message(const gt_api_response *resp)
{
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(resp->body, "error");
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(e, "message");
    return cJSON_IsString(m) ? m->valuestring : "unexpected answer";
}

/* GET /api/v1/<plural>/<name>: 1 with *doc (may be NULL) when it exists, 0 when not,
 * -1 with err set when the API fails. */
static int fetch(gt_dbfile_call call, void *arg, const gt_model_kind *k, const char *name,
                 cJSON **doc, gt_error *err)
{
    char *path = gt_xasprintf("/api/v1/%s/%s", k->plural, name);
    gt_api_response resp = {0};
    call(arg, "GET", path, NULL, NULL, &resp);
    free(path);
    int rc;
    if (resp.status == 200) {
        rc = 1;
        if (doc) {
            *doc = resp.body;
            resp.body = NULL;
        }
    } else if (resp.status == 404) {
        rc = 0;
    } else {
        gt_error_set(err, status_code(resp.status), "reading %s \"%s\": %s", k->singular, name,
                     resp_message(&resp));
        rc = -1;
    }
    gt_api_response_clear(&resp);
    return rc;
}

typedef struct plan_ctx {
    pctx c;
    gt_dbfile_call call;
    void *arg;
    gt_error *err;
    strmap seen;           /* "kind/name" -> 1 or 0: the store's answers */
    strmap in_file;        /* "kind/name" of the file's resources */
    bool failed;           /* err is set */
} plan_ctx;

static bool in_store(plan_ctx *p, const gt_model_kind *k, const char *name)
{
    char *key = gt_xasprintf("%s/%s", k->plural, name);
    long v = sm_get(&p->seen, key, -1);
    if (v < 0 && !p->failed) {
        int rc = fetch(p->call, p->arg, k, name, NULL, p->err);
        if (rc < 0)
            p->failed = true;
        v = rc == 1;
        sm_put(&p->seen, key, v);
    }
    free(key);
    return v == 1;
}

static bool in_file(plan_ctx *p, const gt_model_kind *k, const char *name)
{
    char *key = gt_xasprintf("%s/%s", k->plural, name);
    bool found = sm_get(&p->in_file, key, 0) == 1;
    free(key);
    return found;
}

/* A reference at file path `where` (relative to the item) to a resource of kind k. */
static void check_ref(plan_ctx *p, const gt_dbfile_item *it, const char *lname, const char *where,
                      const gt_model_kind *k, const char *name, bool file_too)
{
    if ((file_too && in_file(p, k, name)) || in_store(p, k, name) || p->failed)
        return;
    char *path = gt_xasprintf("%s[%d]%s", lname, it->index, where);
    if (k == &gt_model_secret)
        err_at(&p->c, walk(it->node, where), path,
               "secret \"%s\" is not in the store (secrets are never in a service file: create "
               "it first with gantry create secret %s)", name, name);
    else
        err_at(&p->c, walk(it->node, where), path, "%s \"%s\" is neither in this file nor in the "
               "store", k->singular, name);
    free(path);
}

static void check_refs(plan_ctx *p, const gt_dbfile_item *it)
{
    const char *lname = it->kind->plural;
    const char *s = NULL;
    if (it->kind == &gt_model_repository) {
        if (gt_json_opt_str(it->doc, "$", "private_key_name", &s, NULL) == GT_OK && s)
            check_ref(p, it, lname, ".private-key-name", &gt_model_secret, s, false);
        return;
    }
    if (it->kind != &gt_model_service)
        return;
    if (gt_json_opt_str(it->doc, "$", "repository", &s, NULL) == GT_OK && s)
        check_ref(p, it, lname, ".repository", &gt_model_repository, s, true);
    s = NULL;
    if (gt_json_opt_str(it->doc, "$", "decorator", &s, NULL) == GT_OK && s)
        check_ref(p, it, lname, ".decorator", &gt_model_decorator, s, true);
    int i = 0;
    const cJSON *b;
    cJSON_ArrayForEach(b, cJSON_GetObjectItemCaseSensitive(it->doc, "secrets")) {
        const cJSON *n = cJSON_GetObjectItemCaseSensitive(b, "name");
        char where[64];
        snprintf(where, sizeof where, ".secrets[%d].name", i++);
        if (cJSON_IsString(n))
            check_ref(p, it, lname, where, &gt_model_secret, n->valuestring, false);
    }
    i = 0;
    cJSON_ArrayForEach(b, cJSON_GetObjectItemCaseSensitive(it->doc, "allowed_secrets")) {
        char where[64];
        snprintf(where, sizeof where, ".allowed-secrets[%d]", i++);
        if (cJSON_IsString(b))
            check_ref(p, it, lname, where, &gt_model_secret, b->valuestring, false);
    }
}

/* The stored document without what the server adds, for comparison with the file's. */
static cJSON *user_fields(const cJSON *stored)
{
    cJSON *d = cJSON_Duplicate(stored, 1);
    for (size_t i = 0; server_fields[i]; i++)
        cJSON_DeleteItemFromObjectCaseSensitive(d, server_fields[i]);
    return d;
}

gt_err gt_dbfile_plan(gt_dbfile *f, gt_dbfile_call call, void *arg, bool force,
                      gt_strv *errors, gt_error *err)
{
    plan_ctx p = {.c = {.r = {.file = f->name, .errors = errors}, .f = f},
                  .call = call, .arg = arg, .err = err};
    for (size_t i = 0; i < f->n; i++) {
        char *key = gt_xasprintf("%s/%s", f->items[i].kind->plural, f->items[i].name);
        sm_put(&p.in_file, key, 1);
        free(key);
    }
    for (size_t i = 0; i < f->n && !p.failed; i++)
        check_refs(&p, &f->items[i]);
    for (size_t i = 0; i < f->n && !p.failed && p.c.r.n == 0; i++) {
        gt_dbfile_item *it = &f->items[i];
        cJSON_Delete(it->stored);
        it->stored = NULL;
        int rc = fetch(call, arg, it->kind, it->name, &it->stored, err);
        if (rc < 0) {
            p.failed = true;
        } else if (rc == 0) {
            it->action = GT_DBFILE_ADD;
        } else {
            cJSON *mine = user_fields(it->stored);
            bool same = cJSON_Compare(mine, it->doc, true);
            cJSON_Delete(mine);
            it->action = same ? GT_DBFILE_UNCHANGED : force ? GT_DBFILE_REPLACE : GT_DBFILE_CONFLICT;
        }
    }
    sm_free(&p.seen);
    sm_free(&p.in_file);
    if (p.failed)
        return err && err->code ? err->code : GT_EINTERNAL;
    return p.c.r.n ? GT_EINVAL : GT_OK;
}

/* ---------- apply ---------- */

gt_err gt_dbfile_apply(gt_dbfile *f, gt_dbfile_call call, void *arg, size_t *written,
                       gt_error *err)
{
    gt_buf conflicts = {0};
    size_t nconf = 0, done = 0;
    gt_err rc = GT_OK;
    for (size_t i = 0; i < f->n; i++)
        if (f->items[i].action == GT_DBFILE_CONFLICT && nconf++ < 10)
            gt_buf_printf(&conflicts, "%s%s %s", conflicts.len ? ", " : "",
                          f->items[i].kind->singular, f->items[i].name);
    if (nconf) {
        rc = gt_error_set(err, GT_ECONFLICT, "%zu %s from the file (%s%s); nothing was written: "
                          "--check shows them, --force replaces them", nconf,
                          nconf == 1 ? "resource already exists and differs"
                                     : "resources already exist and differ",
                          conflicts.data, nconf > 10 ? ", ..." : "");
        goto out;
    }
    for (size_t i = 0; i < f->n && rc == GT_OK; i++) {
        gt_dbfile_item *it = &f->items[i];
        if (it->action == GT_DBFILE_UNCHANGED)
            continue;
        cJSON *body = cJSON_Duplicate(it->doc, 1);
        char *path;
        const char *method;
        int want;
        if (it->action == GT_DBFILE_REPLACE) {
            /* a merge patch that also removes what the file does not set */
            const cJSON *m;
            cJSON_ArrayForEach(m, it->stored)
                if (!is_server_field(m->string) &&
                    !cJSON_GetObjectItemCaseSensitive(body, m->string))
                    cJSON_AddNullToObject(body, m->string);
            path = gt_xasprintf("/api/v1/%s/%s", it->kind->plural, it->name);
            method = "PATCH";
            want = 200;
        } else {
            path = gt_xasprintf("/api/v1/%s", it->kind->plural);
            method = "POST";
            want = 201;
        }
        gt_api_response resp = {0};
        call(arg, method, path, NULL, body, &resp);
        if (resp.status != want)
            rc = gt_error_set(err, status_code(resp.status), "writing %s \"%s\": %s",
                              it->kind->singular, it->name, resp_message(&resp));
        else
            done++;
        gt_api_response_clear(&resp);
        cJSON_Delete(body);
        free(path);
    }
out:
    if (written)
        *written = done;
    gt_buf_free(&conflicts);
    return rc;
}

/* ---------- writing: API documents -> a service file ---------- */

static cJSON *rename_fields(const cJSON *src, const field_def *t, const char *what, gt_error *err)
{
    cJSON *o = cJSON_CreateObject();
    const cJSON *m;
    cJSON_ArrayForEach(m, src) {
        const field_def *f = by_api(t, m->string);
        if (f == NULL) {
            gt_error_set(err, GT_EINVAL, "%s: field \"%s\" has no place in a service file", what,
                         m->string);
            cJSON_Delete(o);
            return NULL;
        }
        gt_json_set(o, f->file, cJSON_Duplicate(m, 1));
    }
    return o;
}

/* One API document as the file shows it, fields in the table's order. */
static cJSON *to_file(const gt_model_kind *k, const cJSON *doc, gt_error *err)
{
    const cJSON *nm = cJSON_GetObjectItemCaseSensitive(doc, "name");
    char what[200];
    snprintf(what, sizeof what, "%s \"%s\"", k->singular, cJSON_IsString(nm) ? nm->valuestring : "?");
    if (!cJSON_IsObject(doc)) {
        gt_error_set(err, GT_EINVAL, "%s: not an object", what);
        return NULL;
    }
    const cJSON *m;
    if (!all_utf8(doc)) {
        gt_error_set(err, GT_EINVAL, "%s: holds text that is not UTF-8", what);
        return NULL;
    }
    cJSON_ArrayForEach(m, doc)
        if (!is_server_field(m->string) && gt_dbfile_field_name(k, m->string) == NULL) {
            gt_error_set(err, GT_EINVAL, "%s: field \"%s\" has no place in a service file", what,
                         m->string);
            return NULL;
        }
    cJSON *out = cJSON_CreateObject();
    for (const field_def *f = fields_of(k); f->file; f++) {
        if (f->api == NULL) { /* runtime */
            cJSON *rt = cJSON_CreateObject();
            const cJSON *inv = cJSON_GetObjectItemCaseSensitive(doc, "inventory");
            const cJSON *ev = cJSON_GetObjectItemCaseSensitive(doc, "extra_vars");
            if (inv && !cJSON_IsNull(inv)) {
                cJSON *l = cJSON_AddArrayToObject(rt, "inventory");
                cJSON_AddItemToArray(l, cJSON_Duplicate(inv, 1));
            }
            if (ev && !cJSON_IsNull(ev))
                gt_json_set(rt, "extra-vars", cJSON_Duplicate(ev, 1));
            if (rt->child)
                gt_json_set(out, "runtime", rt);
            else
                cJSON_Delete(rt);
            continue;
        }
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(doc, f->api);
        if (v == NULL || cJSON_IsNull(v))
            continue;
        cJSON *copy;
        if (strcmp(f->api, "limits") == 0 && cJSON_IsObject(v)) {
            if ((copy = rename_fields(v, limit_fields, what, err)) == NULL) {
                cJSON_Delete(out);
                return NULL;
            }
        } else {
            copy = cJSON_Duplicate(v, 1);
        }
        gt_json_set(out, f->file, copy);
    }
    return out;
}

typedef struct emitter {
    yaml_emitter_t e;
    gt_error *err;
} emitter;

static gt_err emit(emitter *em, yaml_event_t *ev, int ok)
{
    if (!ok || !yaml_emitter_emit(&em->e, ev))
        return gt_error_set(em->err, GT_EINVAL, "cannot be written as YAML: %s",
                            em->e.problem ? em->e.problem : "a string that is not UTF-8");
    return GT_OK;
}

/* Strings that a reader would take for something else (true, 12, null, "") are
 * double-quoted; libyaml picks the style of the rest (plain when it can). */
static gt_err emit_string(emitter *em, const char *s)
{
    size_t n = strlen(s);
    const char *why = NULL;
    cJSON *as = resolve_plain(s, n, &why);
    bool quote = as == NULL || !cJSON_IsString(as) || strcmp(s, "<<") == 0; /* a merge key */
    cJSON_Delete(as);
    if (n > INT_MAX)
        return gt_error_set(em->err, GT_EINVAL, "a string too long to write");
    yaml_event_t ev;
    int ok = yaml_scalar_event_initialize(&ev, NULL, NULL, (yaml_char_t *)s, (int)n, !quote, 1,
                                          quote ? YAML_DOUBLE_QUOTED_SCALAR_STYLE
                                                : YAML_ANY_SCALAR_STYLE);
    return emit(em, &ev, ok);
}

static gt_err emit_plain(emitter *em, const char *s)
{
    yaml_event_t ev;
    int ok = yaml_scalar_event_initialize(&ev, NULL, NULL, (yaml_char_t *)s, (int)strlen(s), 1, 0,
                                          YAML_PLAIN_SCALAR_STYLE);
    return emit(em, &ev, ok);
}

static gt_err emit_value(emitter *em, const cJSON *v)
{
    yaml_event_t ev;
    gt_err rc;
    if (cJSON_IsString(v))
        return emit_string(em, v->valuestring);
    if (cJSON_IsBool(v))
        return emit_plain(em, cJSON_IsTrue(v) ? "true" : "false");
    if (cJSON_IsNull(v))
        return emit_plain(em, "null");
    if (cJSON_IsNumber(v)) {
        char num[48];
        double d = v->valuedouble;
        if (!isfinite(d))
            return gt_error_set(em->err, GT_EINVAL, "a number that is not finite");
        if (d == floor(d) && fabs(d) <= MAX_EXACT)
            snprintf(num, sizeof num, "%lld", (long long)d);
        else
            snprintf(num, sizeof num, "%.17g", d);
        return emit_plain(em, num);
    }
    if (cJSON_IsArray(v)) {
        if ((rc = emit(em, &ev, yaml_sequence_start_event_initialize(&ev, NULL, NULL, 1,
                                                                      YAML_BLOCK_SEQUENCE_STYLE))))
            return rc;
        for (const cJSON *it = v->child; it; it = it->next)
            if ((rc = emit_value(em, it)) != GT_OK)
                return rc;
        return emit(em, &ev, yaml_sequence_end_event_initialize(&ev));
    }
    if (cJSON_IsObject(v)) {
        if ((rc = emit(em, &ev, yaml_mapping_start_event_initialize(&ev, NULL, NULL, 1,
                                                                     YAML_BLOCK_MAPPING_STYLE))))
            return rc;
        for (const cJSON *it = v->child; it; it = it->next)
            if ((rc = emit_string(em, it->string)) != GT_OK || (rc = emit_value(em, it)) != GT_OK)
                return rc;
        return emit(em, &ev, yaml_mapping_end_event_initialize(&ev));
    }
    return gt_error_set(em->err, GT_EINVAL, "not a JSON value");
}

static int write_cb(void *data, unsigned char *buffer, size_t size)
{
    gt_buf_append(data, buffer, size);
    return 1;
}

static gt_err emit_yaml(const cJSON *doc, char **out, gt_error *err)
{
    gt_buf text = {0};
    emitter em = {.err = err};
    yaml_event_t ev;
    gt_err rc;
    if (!yaml_emitter_initialize(&em.e))
        return gt_error_set(err, GT_ENOMEM, "YAML emitter: out of memory");
    yaml_emitter_set_output(&em.e, write_cb, &text);
    yaml_emitter_set_unicode(&em.e, 1);
    yaml_emitter_set_width(&em.e, -1);
    yaml_emitter_set_indent(&em.e, 2);
    if ((rc = emit(&em, &ev, yaml_stream_start_event_initialize(&ev, YAML_UTF8_ENCODING))) == GT_OK &&
        (rc = emit(&em, &ev, yaml_document_start_event_initialize(&ev, NULL, NULL, NULL, 1))) == GT_OK &&
        (rc = emit_value(&em, doc)) == GT_OK &&
        (rc = emit(&em, &ev, yaml_document_end_event_initialize(&ev, 1))) == GT_OK &&
        (rc = emit(&em, &ev, yaml_stream_end_event_initialize(&ev))) == GT_OK &&
        !yaml_emitter_flush(&em.e))
        rc = gt_error_set(err, GT_EIO, "YAML emitter: flush failed");
    yaml_emitter_delete(&em.e);
    if (rc == GT_OK)
        *out = text.data ? gt_buf_steal(&text) : gt_xstrdup("");
    gt_buf_free(&text);
    return rc;
}

gt_err gt_dbfile_write(const cJSON *decorators, const cJSON *repositories,
                       const cJSON *services, bool json, char **out, gt_error *err)
{
    const cJSON *lists[3] = {decorators, repositories, services};
    static const char *const names[3] = {"decorators", "repositories", "services"};
    cJSON *doc = cJSON_CreateObject();
    gt_err rc = GT_OK;
    for (size_t k = 0; k < 3 && rc == GT_OK; k++) {
        cJSON *l = cJSON_AddArrayToObject(doc, names[k]);
        for (const cJSON *it = lists[k] ? lists[k]->child : NULL; it && rc == GT_OK; it = it->next) {
            cJSON *fd = to_file(file_kinds[k], it, err);
            if (fd == NULL)
                rc = err && err->code ? err->code : GT_EINVAL;
            else
                cJSON_AddItemToArray(l, fd);
        }
    }
    if (rc == GT_OK) {
        if (json) {
            char *s = cJSON_Print(doc);
            *out = gt_xasprintf("%s\n", s);
            free(s);
        } else {
            rc = emit_yaml(doc, out, err);
        }
    }
    cJSON_Delete(doc);
    return rc;
}

/* ---------- export ---------- */

static void query_escape(gt_buf *b, const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (isalnum(*p) || strchr("-_.~", *p))
            gt_buf_append(b, p, 1);
        else
            gt_buf_printf(b, "%%%02X", *p);
}

/* Every document of a kind, page by page. */
static gt_err fetch_all(gt_dbfile_call call, void *arg, const gt_model_kind *k, cJSON *into,
                        gt_error *err)
{
    char *path = gt_xasprintf("/api/v1/%s", k->plural);
    char *cursor = NULL;
    gt_err rc = GT_OK;
    for (;;) {
        gt_buf q = {0};
        gt_buf_puts(&q, "limit=1000");
        if (cursor) {
            gt_buf_puts(&q, "&cursor=");
            query_escape(&q, cursor);
        }
        gt_api_response resp = {0};
        call(arg, "GET", path, q.data, NULL, &resp);
        gt_buf_free(&q);
        free(cursor);
        cursor = NULL;
        if (resp.status != 200) {
            rc = gt_error_set(err, status_code(resp.status), "listing %s: %s", k->plural,
                              resp_message(&resp));
            gt_api_response_clear(&resp);
            break;
        }
        cJSON *items = cJSON_GetObjectItemCaseSensitive(resp.body, "items");
        cJSON *it;
        while (cJSON_IsArray(items) && (it = cJSON_DetachItemFromArray(items, 0)) != NULL)
            cJSON_AddItemToArray(into, it);
        const cJSON *next = cJSON_GetObjectItemCaseSensitive(resp.body, "next_cursor");
        if (cJSON_IsString(next) && next->valuestring[0])
            cursor = gt_xstrdup(next->valuestring);
        gt_api_response_clear(&resp);
        if (cursor == NULL)
            break;
    }
    free(path);
    return rc;
}

gt_err gt_dbfile_export(gt_dbfile_call call, void *arg, bool json, char **out, size_t counts[3],
                        gt_error *err)
{
    cJSON *lists[3];
    gt_err rc = GT_OK;
    for (size_t k = 0; k < 3; k++)
        lists[k] = cJSON_CreateArray();
    for (size_t k = 0; k < 3 && rc == GT_OK; k++)
        rc = fetch_all(call, arg, file_kinds[k], lists[k], err);
    if (rc == GT_OK)
        rc = gt_dbfile_write(lists[0], lists[1], lists[2], json, out, err);
    for (size_t k = 0; k < 3; k++) {
        if (counts)
            counts[k] = (size_t)cJSON_GetArraySize(lists[k]);
        cJSON_Delete(lists[k]);
    }
    return rc;
}
