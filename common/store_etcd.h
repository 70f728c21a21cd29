/* Internal: the etcd driver's reply parser, callable without a server (the fuzz
 * harness tests/fuzz/fuzz_etcd_reply.c feeds it arbitrary bytes). Users of the store
 * include store.h only. */
#ifndef GT_STORE_ETCD_H
#define GT_STORE_ETCD_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"

/* One key-value as etcd returns it, decoded from base64. key and value are
 * NUL-terminated copies (neither may contain a NUL byte); the kv owns them. */
typedef struct gt_etcd_kv {
    char *key;
    size_t key_len;
    char *value;
    size_t value_len;
    int64_t create_revision;
    int64_t mod_revision;
    int64_t lease;
} gt_etcd_kv;

typedef struct gt_etcd_kvs {
    gt_etcd_kv *v;
    size_t n;
} gt_etcd_kvs;

/* Parses a gateway reply body: a JSON object with a header whose revision is a
 * positive integer string. *root (caller cJSON_Deletes) and *revision are set on
 * success; anything else is GT_EIO naming what was wrong. */
gt_err gt_etcd__parse_reply(const char *body, size_t len, cJSON **root, int64_t *revision,
                            gt_error *err);
/* Decodes the kvs of a RangeResponse object (absent: none) into *out (zeroed first;
 * release with gt_etcd__kvs_free even on error). GT_EIO on anything malformed. */
gt_err gt_etcd__range_kvs(const cJSON *range_response, gt_etcd_kvs *out, gt_error *err);
/* From a TxnResponse: *succeeded, and response i's response_range (NULL when it is
 * not a range response or i is out of bounds). */
gt_err gt_etcd__txn_result(const cJSON *root, bool *succeeded, gt_error *err);
const cJSON *gt_etcd__txn_range(const cJSON *root, size_t i);
/* An int64 that the gateway prints as a decimal string (absent: 0). */
gt_err gt_etcd__int(const cJSON *obj, const char *key, int64_t *out, gt_error *err);
void gt_etcd__kvs_free(gt_etcd_kvs *kvs);

#endif
