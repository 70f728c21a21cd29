/* Test support (fuzz_extravars.c and tests/unit/extravars_test.c): reads a document
 * gt_extravars_yaml wrote back with libyaml's parser, independently of the emitter,
 * and checks the promises that keep Ansible from templating it: every string scalar
 * (mapping keys, list items, values) is double-quoted and tagged !unsafe, every other
 * scalar is an untagged plain null, true, false or number, there are no anchors or
 * aliases, and the values read back equal the JSON that was written. */
#ifndef GT_EXTRAVARS_ROUNDTRIP_H
#define GT_EXTRAVARS_ROUNDTRIP_H

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include <cjson/cJSON.h>

typedef struct rt_reader {
    yaml_parser_t p;
    const char *why;      /* set when a promise is broken */
} rt_reader;

static bool rt_next(rt_reader *r, yaml_event_t *ev)
{
    if (!yaml_parser_parse(&r->p, ev)) {
        r->why = r->p.problem ? r->p.problem : "parse error";
        return false;
    }
    return true;
}

/* A plain untagged scalar as YAML 1.1 would resolve the ones the emitter writes. */
static cJSON *rt_plain(rt_reader *r, const char *s, size_t n)
{
    if (strlen(s) != n) {
        r->why = "NUL inside a plain scalar";
        return NULL;
    }
    if (strcmp(s, "null") == 0)
        return cJSON_CreateNull();
    if (strcmp(s, "true") == 0)
        return cJSON_CreateTrue();
    if (strcmp(s, "false") == 0)
        return cJSON_CreateFalse();
    /* a YAML 1.1 int ([-+]?(0|[1-9][0-9]*)) or float (a '.' in the mantissa) */
    const char *p = s + (s[0] == '-');
    bool dot = false, ok = *p >= '0' && *p <= '9';
    for (; ok && *p && *p != 'e'; p++)
        ok = (*p >= '0' && *p <= '9') || (*p == '.' && !dot && (dot = true));
    if (ok && *p == 'e')
        ok = dot && (p[1] == '+' || p[1] == '-') && p[2] >= '0' && p[2] <= '9';
    char *end = NULL;
    double d = ok ? strtod(s, &end) : 0;
    if (!ok || end == NULL || *end != '\0' || !isfinite(d)) {
        r->why = "a plain scalar that is not null, a boolean or a YAML 1.1 number";
        return NULL;
    }
    return cJSON_CreateNumber(d);
}

static cJSON *rt_node(rt_reader *r, yaml_event_t *ev);

static cJSON *rt_scalar(rt_reader *r, yaml_event_t *ev, bool key)
{
    const char *tag = (const char *)ev->data.scalar.tag;
    const char *val = (const char *)ev->data.scalar.value;
    size_t n = ev->data.scalar.length;
    if (ev->data.scalar.anchor) {
        r->why = "anchor";
        return NULL;
    }
    if (tag) {
        if (strcmp(tag, "!unsafe") != 0 || ev->data.scalar.style != YAML_DOUBLE_QUOTED_SCALAR_STYLE) {
            r->why = "a tagged scalar that is not a double-quoted !unsafe";
            return NULL;
        }
        if (strlen(val) != n) {
            r->why = "NUL inside a string";
            return NULL;
        }
        return cJSON_CreateString(val);
    }
    if (key || ev->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) {
        r->why = "a string (or key) without the !unsafe tag";
        return NULL;
    }
    return rt_plain(r, val, n);
}

static cJSON *rt_node(rt_reader *r, yaml_event_t *ev)
{
    cJSON *out = NULL;
    yaml_event_t sub;
    switch (ev->type) {
    case YAML_SCALAR_EVENT:
        return rt_scalar(r, ev, false);
    case YAML_SEQUENCE_START_EVENT:
        if (ev->data.sequence_start.anchor || ev->data.sequence_start.tag) {
            r->why = "anchor or tag on a sequence";
            return NULL;
        }
        out = cJSON_CreateArray();
        for (;;) {
            if (!rt_next(r, &sub))
                goto fail;
            if (sub.type == YAML_SEQUENCE_END_EVENT) {
                yaml_event_delete(&sub);
                return out;
            }
            cJSON *item = rt_node(r, &sub);
            yaml_event_delete(&sub);
            if (item == NULL)
                goto fail;
            cJSON_AddItemToArray(out, item);
        }
    case YAML_MAPPING_START_EVENT:
        if (ev->data.mapping_start.anchor || ev->data.mapping_start.tag) {
            r->why = "anchor or tag on a mapping";
            return NULL;
        }
        out = cJSON_CreateObject();
        for (;;) {
            if (!rt_next(r, &sub))
                goto fail;
            if (sub.type == YAML_MAPPING_END_EVENT) {
                yaml_event_delete(&sub);
                return out;
            }
            cJSON *k = sub.type == YAML_SCALAR_EVENT ? rt_scalar(r, &sub, true) : NULL;
            yaml_event_delete(&sub);
            if (k == NULL) {
                if (!r->why)
                    r->why = "a mapping key that is not a scalar";
                goto fail;
            }
            if (!rt_next(r, &sub)) {
                cJSON_Delete(k);
                goto fail;
            }
            cJSON *v = rt_node(r, &sub);
            yaml_event_delete(&sub);
            if (v == NULL) {
                cJSON_Delete(k);
                goto fail;
            }
            /* duplicates keep the last, as cJSON's lookup keeps the first: compare the
             * way Ansible reads it by replacing */
            if (cJSON_GetObjectItemCaseSensitive(out, k->valuestring))
                cJSON_DeleteItemFromObjectCaseSensitive(out, k->valuestring);
            cJSON_AddItemToObject(out, k->valuestring, v);
            cJSON_Delete(k);
        }
    case YAML_ALIAS_EVENT:
        r->why = "alias";
        return NULL;
    default:
        r->why = "unexpected event";
        return NULL;
    }
fail:
    cJSON_Delete(out);
    return NULL;
}

/* Parses text (one document); NULL and *why on a broken promise or a parse error.
 * The caller compares the result with what was emitted. */
static cJSON *rt_read(const char *text, size_t len, const char **why)
{
    rt_reader r = {0};
    yaml_event_t ev;
    cJSON *doc = NULL;
    *why = NULL;
    if (!yaml_parser_initialize(&r.p)) {
        *why = "parser init";
        return NULL;
    }
    yaml_parser_set_input_string(&r.p, (const unsigned char *)text, len);
    yaml_event_type_t want[] = {YAML_STREAM_START_EVENT, YAML_DOCUMENT_START_EVENT};
    for (size_t i = 0; i < 2; i++) {
        if (!rt_next(&r, &ev))
            goto done;
        bool ok = ev.type == want[i];
        yaml_event_delete(&ev);
        if (!ok) {
            r.why = "no document";
            goto done;
        }
    }
    if (!rt_next(&r, &ev))
        goto done;
    doc = ev.type == YAML_MAPPING_START_EVENT ? rt_node(&r, &ev) : NULL;
    if (doc == NULL && !r.why)
        r.why = "the document is not a mapping";
    yaml_event_delete(&ev);
    if (doc && rt_next(&r, &ev)) {
        bool ok = ev.type == YAML_DOCUMENT_END_EVENT;
        yaml_event_delete(&ev);
        if (ok && rt_next(&r, &ev)) {
            ok = ev.type == YAML_STREAM_END_EVENT;
            yaml_event_delete(&ev);
        }
        if (!ok && !r.why)
            r.why = "more than one document";
    }
    if (r.why) {
        cJSON_Delete(doc);
        doc = NULL;
    }
done:
    yaml_parser_delete(&r.p);
    *why = r.why;
    return doc;
}

/* JSON equality where an object's duplicate keys count as Ansible (PyYAML) reads
 * them: the last one wins. */
static bool rt_equal(const cJSON *a, const cJSON *b);

static const cJSON *rt_last(const cJSON *obj, const char *key)
{
    const cJSON *found = NULL, *it;
    cJSON_ArrayForEach(it, obj)
        if (strcmp(it->string, key) == 0)
            found = it;
    return found;
}

static bool rt_equal(const cJSON *a, const cJSON *b)
{
    if ((a->type & 0xff) != (b->type & 0xff))
        return false;
    if (cJSON_IsNumber(a))
        return a->valuedouble == b->valuedouble; /* exact: "%lld" or "%.17g" round-trips */
    if (cJSON_IsString(a))
        return strcmp(a->valuestring, b->valuestring) == 0;
    if (cJSON_IsArray(a)) {
        const cJSON *x = a->child, *y = b->child;
        for (; x && y; x = x->next, y = y->next)
            if (!rt_equal(x, y))
                return false;
        return x == NULL && y == NULL;
    }
    if (cJSON_IsObject(a)) {
        const cJSON *it;
        int na = 0, nb = 0;
        cJSON_ArrayForEach(it, a) {
            if (rt_last(a, it->string) != it)
                continue; /* an earlier duplicate */
            na++;
            const cJSON *o = cJSON_GetObjectItemCaseSensitive(b, it->string);
            if (o == NULL || !rt_equal(it, o))
                return false;
        }
        cJSON_ArrayForEach(it, b)
            nb++;
        return na == nb;
    }
    return true; /* null, true, false */
}

#endif
