/* libFuzzer harness for what Gantry reads back from its store about executions: an
 * execution document and an output chunk, both hostile (another writer, a corrupted or
 * older store). Reading them, moving them through the lifecycle and loading their output
 * must fail cleanly, never crash. Also: gt_utf8_clean of any bytes is valid UTF-8 with
 * no NUL, and cleaning it again changes nothing. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "lifecycle.h"
#include "log.h"
#include "output.h"
#include "store.h"
#include "util.h"

static const char *const states[] = {"accepted", "queued", "running", "succeeded", "failed",
                                     "timed_out", "canceled", "lost"};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool quiet;
    if (!quiet) {
        gt_log_setup(NULL, GT_LOG_OFF, false, "fuzz");
        quiet = true;
    }
    size_t n = 0;
    char *clean = gt_utf8_clean((const char *)data, size, &n);
    if (strlen(clean) != n)
        abort();
    char *again = gt_utf8_clean(clean, n, NULL);
    if (strcmp(clean, again) != 0)
        abort();
    free(again);
    free(clean);

    /* the input: an execution document, then "\n--\n", then an output chunk */
    const char *sep = memmem(data, size, "\n--\n", 4);
    size_t doc_len = sep ? (size_t)(sep - (const char *)data) : size;
    char *doc = gt_xstrndup((const char *)data, doc_len);
    char *chunk = sep ? gt_xstrndup(sep + 4, size - doc_len - 4) : NULL;
    gt_store *s = gt_store_open_memory(NULL);
    int64_t rev = 0;
    if (gt_store_put(s, GT_EXECUTIONS, "01FUZZ", doc, GT_REV_NONE, &rev, NULL) == GT_OK) {
        if (chunk)
            gt_store_put(s, GT_OUTPUTS, "01FUZZ.1.stdout.0", chunk, GT_REV_ANY, NULL, NULL);
        char *body = NULL;
        cJSON *ex = NULL;
        if (gt_store_get(s, GT_EXECUTIONS, "01FUZZ", &body, &rev, NULL) == GT_OK &&
            gt_json_parse(body, strlen(body), "fuzz", &ex, NULL) == GT_OK && cJSON_IsObject(ex)) {
            gt_output_load(s, ex, NULL);
            for (size_t i = 0; i < sizeof states / sizeof states[0]; i++) {
                gt_lifecycle_store(s, ex, &rev, states[i], (gt_actor)(i % 5), NULL, NULL);
                gt_output_load(s, ex, NULL);
            }
        }
        cJSON_Delete(ex);
        free(body);
    }
    gt_store_free(&s);
    free(chunk);
    free(doc);
    return 0;
}
