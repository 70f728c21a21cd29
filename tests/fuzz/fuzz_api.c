/* libFuzzer harness for the API request path: routing, query parsing and JSON
 * bodies. Input: "METHOD\nPATH\nQUERY\nBODY". Each input gets a fresh memory store;
 * a key file that does not exist keeps secret creation from touching the disk. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "log.h"
#include "store.h"
#include "util.h"

static char *line(const char **p, const char *end)
{
    const char *nl = memchr(*p, '\n', (size_t)(end - *p));
    const char *stop = nl ? nl : end;
    char *s = gt_xstrndup(*p, (size_t)(stop - *p));
    *p = nl ? nl + 1 : end;
    return s;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    gt_log_setup(NULL, GT_LOG_OFF, false, "fuzz");
    const char *p = (const char *)data, *end = p + size;
    char *method = line(&p, end);
    char *path = line(&p, end);
    char *query = line(&p, end);
    gt_store *store = gt_store_open_memory(NULL);
    gt_run_options run = {.working_dir = "/nonexistent/gantry-fuzz"};
    gt_api_deps deps = {
        .store = store,
        .key_file = "/nonexistent/gantry-fuzz/key",
        .key_file_explicit = true,
        .run = &run,
    };
    gt_api *api = gt_api_new(&deps, NULL);
    gt_api_response resp = {0};
    gt_api_handle(api, method, path, query[0] ? query : NULL, p, (size_t)(end - p), &resp);
    if (resp.body == NULL || resp.status < 200 || resp.status > 599)
        abort();
    gt_api_response_clear(&resp);
    gt_api_free(&api);
    gt_store_free(&store);
    free(method);
    free(path);
    free(query);
    return 0;
}
