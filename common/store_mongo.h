/* Internal: the MongoDB driver's conversions between BSON and what the store returns,
 * callable without a server (tests/unit/store_mongo_test.c, and the fuzz harness
 * tests/fuzz/fuzz_mongo_reply.c feeds server replies to them). Users of the store
 * include store.h only. */
#ifndef GT_STORE_MONGO_H
#define GT_STORE_MONGO_H

#include <bson/bson.h>
#include <mongoc/mongoc.h>
#include <stdbool.h>
#include <stdint.h>

#include "error.h"
#include "store.h"

/* The stored form of coll/id = body at rev: {_id: id, rev: rev, b: body (the JSON
 * text, byte for byte), x: {field: value, ...}} where x holds every top-level member
 * of body whose value is a string and whose name could be an index field (the first
 * of duplicate names), so an index declared later needs no rebuild. body must be a
 * valid JSON object (store.c checked it). out is initialized here; bson_destroy it. */
void gt_mongo__doc_bson(const char *id, const char *body, int64_t rev, bson_t *out);

/* Reads a stored document: *id (may be NULL: not wanted), *body and *rev, copies the
 * caller frees. GT_EIO naming what is wrong when doc is not in the stored form (a
 * non-string or non-UTF-8 _id or b, a NUL inside one, a rev that is not a positive
 * integer). */
gt_err gt_mongo__doc_read(const bson_t *doc, char **id, char **body, int64_t *rev,
                          gt_error *err);

/* A lease as the driver reads it back ({holder, epoch, expires: date} and, from reads
 * that ask for it, now: the server's $$NOW). holder is a copy the caller frees with
 * gt_mongo__lease_clear; absent fields read as a free lease (holder "", epoch 0). */
typedef struct gt_mongo_lease {
    char *holder;
    int64_t epoch;
    int64_t expires_ms;
    int64_t now_ms;    /* 0 when the document has no "now" */
} gt_mongo_lease;
gt_err gt_mongo__lease_read(const bson_t *doc, gt_mongo_lease *out, gt_error *err);
void gt_mongo__lease_clear(gt_mongo_lease *l);

/* Change positions are MongoDB cluster times: Timestamp(t, i) is t << 32 | i. A
 * position past INT64_MAX (t >= 2^31, in 2038) is GT_EIO. */
gt_err gt_mongo__pos_from_ts(uint32_t t, uint32_t i, int64_t *pos, gt_error *err);
void gt_mongo__ts_from_pos(int64_t pos, uint32_t *t, uint32_t *i);

/* One change stream event of the store's collections (names "<prefix><coll>"). */
typedef enum gt_mongo_event {
    GT_MONGO_EV_DOC,     /* *out is filled: a document written or deleted */
    GT_MONGO_EV_SKIP,    /* not about a stored document (another namespace, a placeholder) */
    GT_MONGO_EV_RESET    /* a drop, rename or invalidate: what was watched must be re-read */
} gt_mongo_event;
/* Parses ev: *kind, *pos (its clusterTime) and, for GT_MONGO_EV_DOC, out->coll, out->id
 * (copies; free them) and out->rev (0 for a delete). GT_EIO on a malformed event. */
gt_err gt_mongo__change_read(const bson_t *ev, const char *prefix, gt_mongo_event *kind,
                             int64_t *pos, gt_store_change *out, gt_error *err);

/* Sets on uri what the store's design requires, whatever it said: majority write
 * concern (keeping its wtimeoutMS, 10 s when it had none), majority read concern,
 * primary reads, retryable writes and reads. */
void gt_mongo__uri_guarantees(mongoc_uri_t *uri);

#endif
