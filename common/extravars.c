#include "extravars.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "util.h"

/* libyaml's emitter does the quoting: it knows every YAML escape (\0 \n \" \\ \N \L \P
 * \xXX \uXXXX ...), when a key is too long to be a simple key (then "? key"), and how
 * to indent. With unicode off, everything outside printable ASCII is escaped. */

typedef struct emit {
    yaml_emitter_t e;
    gt_error *err;
    gt_buf *path;      /* JSON path of the value being emitted */
} emit;

static int write_cb(void *data, unsigned char *buffer, size_t size)
{
    gt_buf_append(data, buffer, size);
    return 1;
}

static gt_err emit_event(emit *em, yaml_event_t *ev, int ok)
{
    if (!ok || !yaml_emitter_emit(&em->e, ev))
        return gt_error_setf(em->err, GT_EINTERNAL, em->path->data,
                             "%s: cannot be written as YAML: %s", em->path->data,
                             em->e.problem ? em->e.problem : "bad event");
    return GT_OK;
}

/* Whether s is valid UTF-8 (no overlong forms, no surrogates, at most U+10FFFF). */
static bool utf8_valid(const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        unsigned c = s[i];
        size_t k = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3
                 : (c & 0xf8) == 0xf0 ? 4 : 0;
        if (k == 0 || i + k > n)
            return false;
        unsigned cp = k == 1 ? c : k == 2 ? c & 0x1f : k == 3 ? c & 0x0f : c & 0x07;
        for (size_t j = 1; j < k; j++) {
            if ((s[i + j] & 0xc0) != 0x80)
                return false;
            cp = (cp << 6) | (s[i + j] & 0x3f);
        }
        static const unsigned min[] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < min[k] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += k;
    }
    return true;
}

static gt_err emit_string(emit *em, const char *s)
{
    size_t n = strlen(s);
    if (n > INT_MAX)
        return gt_error_setf(em->err, GT_EINVAL, em->path->data, "%s: string too long",
                             em->path->data);
    if (!utf8_valid((const unsigned char *)s, n))
        return gt_error_setf(em->err, GT_EINVAL, em->path->data, "%s: not valid UTF-8 text",
                             em->path->data);
    yaml_event_t ev;
    int ok = yaml_scalar_event_initialize(&ev, NULL, (yaml_char_t *)"!unsafe",
                                          (yaml_char_t *)s, (int)n, 0, 0,
                                          YAML_DOUBLE_QUOTED_SCALAR_STYLE);
    return emit_event(em, &ev, ok);
}

static gt_err emit_plain(emit *em, const char *s)
{
    yaml_event_t ev;
    int ok = yaml_scalar_event_initialize(&ev, NULL, NULL, (yaml_char_t *)s, (int)strlen(s), 1,
                                          0, YAML_PLAIN_SCALAR_STYLE);
    return emit_event(em, &ev, ok);
}

bool gt_extravars_number(double d, char *buf, size_t n)
{
    if (!isfinite(d))
        return false;
    if (d == floor(d) && fabs(d) < 9007199254740992.0) {
        snprintf(buf, n, "%lld", (long long)d);
        return true;
    }
    /* YAML 1.1 reads a float only with a '.' in its mantissa: 1e+300 would be a string */
    char tmp[40];
    snprintf(tmp, sizeof tmp, "%.17g", d);
    char *e = strchr(tmp, 'e');
    if (strchr(tmp, '.') == NULL) {
        if (e)
            snprintf(buf, n, "%.*s.0%s", (int)(e - tmp), tmp, e);
        else
            snprintf(buf, n, "%s.0", tmp);
    } else {
        snprintf(buf, n, "%s", tmp);
    }
    return true;
}

static gt_err emit_value(emit *em, const cJSON *v)
{
    yaml_event_t ev;
    gt_err rc = GT_OK;
    size_t mark = em->path->len;
    if (cJSON_IsString(v))
        return emit_string(em, v->valuestring);
    if (cJSON_IsBool(v))
        return emit_plain(em, cJSON_IsTrue(v) ? "true" : "false");
    if (cJSON_IsNull(v))
        return emit_plain(em, "null");
    if (cJSON_IsNumber(v)) {
        char num[48];
        if (!gt_extravars_number(v->valuedouble, num, sizeof num))
            return gt_error_setf(em->err, GT_EINVAL, em->path->data, "%s: not a finite number",
                                 em->path->data);
        return emit_plain(em, num);
    }
    if (cJSON_IsArray(v)) {
        int ok = yaml_sequence_start_event_initialize(&ev, NULL, NULL, 1, YAML_BLOCK_SEQUENCE_STYLE);
        if ((rc = emit_event(em, &ev, ok)) != GT_OK)
            return rc;
        int i = 0;
        const cJSON *it;
        cJSON_ArrayForEach(it, v) {
            gt_buf_printf(em->path, "[%d]", i++);
            rc = emit_value(em, it);
            em->path->len = mark;
            em->path->data[mark] = '\0';
            if (rc != GT_OK)
                return rc;
        }
        return emit_event(em, &ev, yaml_sequence_end_event_initialize(&ev));
    }
    if (cJSON_IsObject(v)) {
        int ok = yaml_mapping_start_event_initialize(&ev, NULL, NULL, 1, YAML_BLOCK_MAPPING_STYLE);
        if ((rc = emit_event(em, &ev, ok)) != GT_OK)
            return rc;
        const cJSON *it;
        cJSON_ArrayForEach(it, v) {
            gt_buf_printf(em->path, ".%s", it->string);
            if ((rc = emit_string(em, it->string)) == GT_OK)
                rc = emit_value(em, it);
            em->path->len = mark;
            em->path->data[mark] = '\0';
            if (rc != GT_OK)
                return rc;
        }
        return emit_event(em, &ev, yaml_mapping_end_event_initialize(&ev));
    }
    return gt_error_setf(em->err, GT_EINVAL, em->path->data, "%s: not a JSON value",
                         em->path->data);
}

gt_err gt_extravars_yaml(const cJSON *vars, const char *path, char **out, size_t *len,
                         gt_error *err)
{
    gt_buf text = {0}, where = {0};
    gt_err rc = GT_OK;
    emit em = {.err = err, .path = &where};
    yaml_event_t ev;
    gt_buf_puts(&where, path ? path : "$");
    if (!cJSON_IsObject(vars)) {
        rc = gt_error_setf(err, GT_EINVAL, where.data, "%s: expected an object", where.data);
        goto done;
    }
    if (!yaml_emitter_initialize(&em.e)) {
        rc = gt_error_set(err, GT_ENOMEM, "YAML emitter: out of memory");
        goto done;
    }
    yaml_emitter_set_output(&em.e, write_cb, &text);
    yaml_emitter_set_unicode(&em.e, 0);
    yaml_emitter_set_width(&em.e, -1); /* no folding of long strings across lines */
    if ((rc = emit_event(&em, &ev, yaml_stream_start_event_initialize(&ev, YAML_UTF8_ENCODING))) ==
            GT_OK &&
        (rc = emit_event(&em, &ev, yaml_document_start_event_initialize(&ev, NULL, NULL, NULL,
                                                                         0))) == GT_OK &&
        (rc = emit_value(&em, vars)) == GT_OK &&
        (rc = emit_event(&em, &ev, yaml_document_end_event_initialize(&ev, 0))) == GT_OK &&
        (rc = emit_event(&em, &ev, yaml_stream_end_event_initialize(&ev))) == GT_OK &&
        !yaml_emitter_flush(&em.e))
        rc = gt_error_set(err, GT_EINTERNAL, "YAML emitter: %s",
                          em.e.problem ? em.e.problem : "flush failed");
    yaml_emitter_delete(&em.e);
    if (rc == GT_OK) {
        if (len)
            *len = text.len;
        *out = text.data ? gt_buf_steal(&text) : gt_xstrdup("");
    }
done:
    gt_buf_free(&text);
    gt_buf_free(&where);
    return rc;
}
