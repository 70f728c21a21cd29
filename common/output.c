#include "output.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "util.h"

static const char *const streams[] = {"stdout", "stderr"};

static const char *text_of(const cJSON *ex, const char *stream)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(ex, stream);
    return cJSON_IsString(v) ? v->valuestring : "";
}

static char *chunk_id(const char *id, int64_t attempt, const char *stream, int n)
{
    return gt_xasprintf("%s.%lld.%s.%d", id, (long long)attempt, stream, n);
}

/* Writes one stream's chunks; *count is how many. */
static gt_err put_stream(gt_store *s, const char *id, int64_t attempt, const char *stream,
                         const char *text, const gt_store_fence *fence, int *count,
                         gt_error *err)
{
    size_t len = strlen(text), off = 0;
    int n = 0;
    gt_err rc = GT_OK;
    while (rc == GT_OK && off < len) {
        size_t take = len - off > GT_OUTPUT_CHUNK ? gt_utf8_cut(text + off, GT_OUTPUT_CHUNK)
                                                   : len - off;
        if (take == 0) /* not UTF-8 after all: never loop */
            take = len - off < GT_OUTPUT_CHUNK ? len - off : GT_OUTPUT_CHUNK;
        cJSON *doc = cJSON_CreateObject();
        char *piece = gt_xstrndup(text + off, take);
        gt_json_set_str(doc, "data", piece);
        char *body = gt_json_print(doc);
        char *cid = chunk_id(id, attempt, stream, n);
        /* unconditional: a retried write of the same attempt writes the same text */
        rc = gt_store_put_fenced(s, GT_OUTPUTS, cid, body, GT_REV_ANY, NULL, fence, err);
        free(cid);
        free(body);
        free(piece);
        cJSON_Delete(doc);
        off += take;
        n++;
    }
    *count = n;
    return rc;
}

gt_err gt_output_put(gt_store *s, cJSON *ex, const gt_store_fence *fence, gt_error *err)
{
    size_t total = strlen(text_of(ex, "stdout")) + strlen(text_of(ex, "stderr"));
    if (total <= GT_OUTPUT_INLINE_MAX)
        return GT_OK;
    const cJSON *idv = cJSON_GetObjectItemCaseSensitive(ex, "id");
    if (!cJSON_IsString(idv))
        return gt_error_set(err, GT_EINVAL, "output: the execution has no id");
    int64_t attempt = gt_json_member_i64(ex, "attempt", 1);
    int counts[2] = {0, 0};
    for (int i = 0; i < 2; i++) {
        gt_err rc = put_stream(s, idv->valuestring, attempt, streams[i], text_of(ex, streams[i]),
                               fence, &counts[i], err);
        if (rc != GT_OK)
            return rc;
    }
    cJSON *o = cJSON_CreateObject();
    gt_json_set_num(o, "attempt", (double)attempt);
    gt_json_set_num(o, "stdout_chunks", counts[0]);
    gt_json_set_num(o, "stderr_chunks", counts[1]);
    gt_json_set(ex, "output", o);
    for (int i = 0; i < 2; i++)
        cJSON_DeleteItemFromObjectCaseSensitive(ex, streams[i]);
    return GT_OK;
}

gt_err gt_output_load(gt_store *s, cJSON *ex, gt_error *err)
{
    const cJSON *o = cJSON_GetObjectItemCaseSensitive(ex, "output");
    const cJSON *idv = cJSON_GetObjectItemCaseSensitive(ex, "id");
    if (!cJSON_IsObject(o))
        return GT_OK;
    if (!cJSON_IsString(idv))
        return gt_error_set(err, GT_EINVAL, "output: the execution has no id");
    int64_t attempt = gt_json_member_i64(o, "attempt", 1);
    char *texts[2] = {NULL, NULL};
    gt_err rc = GT_OK;
    for (int i = 0; i < 2 && rc == GT_OK; i++) {
        char key[32];
        snprintf(key, sizeof key, "%s_chunks", streams[i]);
        int64_t c = gt_json_member_i64(o, key, 0);
        int count = c > 0 && c < 1000000 ? (int)c : 0;
        gt_buf b = {0};
        gt_buf_append(&b, "", 0);
        for (int n = 0; n < count && rc == GT_OK; n++) {
            char *cid = chunk_id(idv->valuestring, attempt, streams[i], n), *body = NULL;
            cJSON *doc = NULL;
            if ((rc = gt_store_get(s, GT_OUTPUTS, cid, &body, NULL, err)) == GT_OK &&
                (rc = gt_json_parse(body, strlen(body), cid, &doc, err)) == GT_OK) {
                const cJSON *d = cJSON_GetObjectItemCaseSensitive(doc, "data");
                if (cJSON_IsString(d))
                    gt_buf_puts(&b, d->valuestring);
                else
                    rc = gt_error_set(err, GT_EINVAL, "output chunk %s has no data", cid);
            }
            cJSON_Delete(doc);
            free(body);
            free(cid);
        }
        texts[i] = gt_buf_steal(&b);
    }
    if (rc == GT_OK) {
        for (int i = 0; i < 2; i++)
            gt_json_set_str(ex, streams[i], texts[i]);
        cJSON_DeleteItemFromObjectCaseSensitive(ex, "output");
    }
    free(texts[0]);
    free(texts[1]);
    return rc;
}
