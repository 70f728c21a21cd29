/* libFuzzer harness for what the MongoDB driver reads from server replies: stored
 * documents, leases and change stream events are BSON from the server (or anything
 * listening where the URI points). Each conversion must fail cleanly on any bytes,
 * never crash, and what it accepts must satisfy what its callers rely on. */
#include <stdint.h>
#include <stdlib.h>

#include "store_mongo.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    bson_t doc;
    if (bson_init_static(&doc, data, size)) {
        char *id = NULL, *body = NULL;
        int64_t rev = 0;
        if (gt_mongo__doc_read(&doc, &id, &body, &rev, NULL) == GT_OK) {
            if (rev < 1 || id == NULL || id[0] == '\0' || body == NULL)
                abort();
        } else if (id || body || rev) {
            abort();
        }
        free(id);
        free(body);
        gt_mongo_lease l;
        if (gt_mongo__lease_read(&doc, &l, NULL) == GT_OK && (l.holder == NULL || l.epoch < 0))
            abort();
        gt_mongo__lease_clear(&l);
        gt_mongo_event kind;
        int64_t pos = 0;
        gt_store_change c;
        if (gt_mongo__change_read(&doc, "c1:", &kind, &pos, &c, NULL) == GT_OK) {
            if (pos < 0 || (kind == GT_MONGO_EV_DOC && (!c.coll || !c.id || c.rev < 0)) ||
                (kind != GT_MONGO_EV_DOC && (c.coll || c.id)))
                abort();
        }
        free(c.coll);
        free(c.id);
    }
    return 0;
}
