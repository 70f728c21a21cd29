/* libFuzzer harness for the etcd driver's watch stream parser: the stream of a
 * /v3/watch reply is outside input, read in whatever pieces the network gives. Any
 * bytes, split anywhere, must parse or fail cleanly, and what the parser keeps must
 * hold: at most 1000 entries, each a non-empty collection and id with a revision
 * after since, next never before since. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "store_etcd.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    /* the first byte picks the piece size, the second the filter and the mode */
    size_t step = (size_t)data[0] % 64 + 1;
    const char *colls[] = {"jobs", "x"};
    gt_etcd_watch w = {.prefix = "/gantry/c/", .colls = colls, .n_colls = data[1] % 3,
                       .since = 5, .stop_when_created = data[1] & 4,
                       .keep_reading = data[1] & 8};
    const char *p = (const char *)data + 2;
    size_t n = size - 2;
    gt_err rc = GT_OK;
    for (size_t off = 0; off < n && rc == GT_OK && !w.done; off += step)
        rc = gt_etcd__watch_feed(&w, p + off, n - off < step ? n - off : step, NULL);
    if (rc == GT_OK)
        rc = gt_etcd__watch_end(&w, NULL);
    if (w.out.n > 1000 || (rc == GT_OK && w.out.next < w.since))
        abort();
    for (size_t i = 0; i < w.out.n; i++)
        if (!w.out.v[i].coll[0] || !w.out.v[i].id[0] || w.pos[i] <= w.since ||
            (w.out.v[i].rev != 0 && w.out.v[i].rev != w.pos[i]))
            abort();
    gt_etcd__watch_clear(&w);
    return 0;
}
