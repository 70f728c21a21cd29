/* libFuzzer harness for common/dbfile.c, the reader and writer of service files
 * (gantry db import / export). Each input is read as a service file; a file that reads
 * must write (as YAML and as JSON) to text that reads back to the same resources, and a
 * file that does not read must say why, naming the file. The raw bytes are also put in
 * a decorator's description and a property of its schema and written: text that is not UTF-8 must be
 * refused, anything else must come back unchanged. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "dbfile.h"

static gt_dbfile *read_back(const char *text, gt_strv *errs)
{
    return gt_dbfile_parse("fuzz", text, strlen(text), errs);
}

/* Writes the documents (a decorators, repositories, services triple) and reads them back;
 * traps unless the same documents come back. */
static void round_trip(cJSON *lists[3])
{
    for (int json = 0; json < 2; json++) {
        char *text = NULL;
        gt_error e = {0};
        gt_err rc = gt_dbfile_write(lists[0], lists[1], lists[2], json, &text, &e);
        if (rc != GT_OK) {
            if (rc != GT_EINVAL || e.message[0] == '\0')
                __builtin_trap();
            continue; /* what YAML cannot carry (text that is not UTF-8) */
        }
        gt_strv errs = {0};
        gt_dbfile *f = read_back(text, &errs);
        if (f == NULL)
            __builtin_trap(); /* our own output must read */
        gt_dbfile_item *it = NULL;
        size_t n = gt_dbfile_items(f, &it), i = 0;
        for (int k = 0; k < 3; k++)
            for (const cJSON *d = lists[k] ? lists[k]->child : NULL; d; d = d->next, i++)
                if (i >= n || !cJSON_Compare(d, it[i].doc, true))
                    __builtin_trap();
        if (i != n)
            __builtin_trap();
        gt_dbfile_free(&f);
        gt_strv_free(&errs);
        free(text);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    memcpy(text, data, size);
    text[size] = '\0';
    gt_strv errs = {0};
    gt_dbfile *f = gt_dbfile_parse("fuzz", text, size, &errs);
    if (f == NULL) {
        if (errs.n == 0)
            __builtin_trap();
        for (size_t i = 0; i < errs.n; i++)
            if (strncmp(errs.v[i], "fuzz", 4) != 0 && strcmp(errs.v[i], "(more errors not shown)") != 0)
                __builtin_trap();
    } else {
        cJSON *lists[3] = {cJSON_CreateArray(), cJSON_CreateArray(), cJSON_CreateArray()};
        gt_dbfile_item *it = NULL;
        size_t n = gt_dbfile_items(f, &it);
        for (size_t i = 0; i < n; i++) {
            int k = it[i].kind == &gt_model_decorator ? 0 : it[i].kind == &gt_model_repository ? 1 : 2;
            cJSON_AddItemToArray(lists[k], cJSON_Duplicate(it[i].doc, 1));
        }
        round_trip(lists);
        for (int k = 0; k < 3; k++)
            cJSON_Delete(lists[k]);
    }
    gt_dbfile_free(&f);
    gt_strv_free(&errs);

    /* the bytes as a string the writer must carry (up to the first NUL) */
    cJSON *decs = cJSON_CreateArray(), *d = cJSON_CreateObject();
    cJSON_AddStringToObject(d, "name", "d");
    cJSON_AddStringToObject(d, "description", text);
    cJSON *schema = cJSON_AddObjectToObject(d, "schema");
    cJSON *props = cJSON_AddObjectToObject(schema, "properties");
    cJSON_AddStringToObject(cJSON_AddObjectToObject(props, text), "description", text);
    cJSON_AddItemToArray(decs, d);
    cJSON *lists[3] = {decs, NULL, NULL};
    round_trip(lists);
    cJSON_Delete(decs);
    free(text);
    return 0;
}
