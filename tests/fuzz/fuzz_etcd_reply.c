/* libFuzzer harness for the etcd driver's reply parser: a gateway reply is outside
 * input (a member, a proxy, or anything listening on the configured port). Parsing it,
 * reading its txn result and decoding every kv of a range or txn reply must fail
 * cleanly, never crash. */
#include <stdint.h>
#include <stdlib.h>

#include "store_etcd.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cJSON *root = NULL;
    int64_t rev = 0;
    gt_error err = {0};
    if (gt_etcd__parse_reply((const char *)data, size, &root, &rev, &err) != GT_OK)
        return 0;
    if (rev < 1)
        abort();
    gt_etcd_kvs kvs = {0};
    (void)gt_etcd__range_kvs(root, &kvs, NULL);
    gt_etcd__kvs_free(&kvs);
    bool ok;
    int64_t id;
    (void)gt_etcd__int(root, "ID", &id, NULL);
    if (gt_etcd__txn_result(root, &ok, NULL) == GT_OK)
        for (size_t i = 0; i < 4; i++) {
            const cJSON *rr = gt_etcd__txn_range(root, i);
            if (rr && gt_etcd__range_kvs(rr, &kvs, NULL) == GT_OK)
                for (size_t k = 0; k < kvs.n; k++)
                    if (kvs.v[k].mod_revision < 1)
                        abort();
            gt_etcd__kvs_free(&kvs);
        }
    cJSON_Delete(root);
    return 0;
}
