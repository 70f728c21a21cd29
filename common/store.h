/* The store: collections of JSON documents keyed by id, each with a revision.
 * Drivers: local (SQLite), memory, etcd; later mongodb. All pass one conformance
 * suite (tests/unit/store_conformance.c). Thread-safety: one gt_store per thread
 * unless a driver says otherwise. */
#ifndef GT_STORE_H
#define GT_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"

typedef struct gt_store gt_store;

/* expect_rev values for gt_store_put / gt_store_delete. */
#define GT_REV_ANY (-1)   /* unconditional */
#define GT_REV_NONE 0     /* put only if the document does not exist */

/* Opens the SQLite store at path (WAL mode, created if absent). */
gt_store *gt_store_open_local(const char *path, gt_error *err) __attribute__((warn_unused_result));
/* Opens an empty in-memory store. */
gt_store *gt_store_open_memory(gt_error *err) __attribute__((warn_unused_result));
/* An etcd v3 cluster (3.4+), reached through its JSON gateway under /v3/. */
typedef struct gt_store_etcd_config {
    const char *const *hosts;   /* host:port, tried in order on a connection failure */
    size_t n_hosts;
    const char *cluster_id;     /* keys live under /gantry/<cluster_id>/ */
    bool use_tls;
    bool client_cert_auth;      /* present cert_file/key_file */
    const char *ca_file;        /* NULL: the system's CAs */
    const char *cert_file;
    const char *key_file;
    long timeout_ms;            /* per request; 0: 5000 */
} gt_store_etcd_config;
/* Opens an etcd store (checks that a member answers). One handle per thread. */
gt_store *gt_store_open_etcd(const gt_store_etcd_config *cfg, gt_error *err)
    __attribute__((warn_unused_result));
/* Closes and frees *s; sets it to NULL; accepts NULL. */
void gt_store_free(gt_store **s);

/* Declares that documents of coll are queried by the top-level string field `field`.
 * Idempotent. Querying an undeclared field is GT_EINVAL. */
gt_err gt_store_index(gt_store *s, const char *coll, const char *field, gt_error *err);

/* Reads coll/id: *body is the JSON text (caller frees), *rev its revision (>= 1).
 * GT_ENOTFOUND when absent (err says which). rev may be NULL. */
gt_err gt_store_get(gt_store *s, const char *coll, const char *id, char **body, int64_t *rev,
                    gt_error *err);

/* Writes coll/id = body (valid JSON object text) if the stored revision equals
 * expect_rev (GT_REV_NONE: must not exist; GT_REV_ANY: unconditional). On success
 * *new_rev (may be NULL) is the new revision, strictly greater than the old one.
 * GT_ECONFLICT when the revision does not match; nothing is written then. */
gt_err gt_store_put(gt_store *s, const char *coll, const char *id, const char *body,
                    int64_t expect_rev, int64_t *new_rev, gt_error *err);

/* A fence: a write that carries one succeeds only while the lease `name` is held by
 * `holder` at `epoch` (not expired by the store's clock), checked in the same atomic
 * step as the write. A deposed leader or a runner declared dead cannot overwrite the
 * new owner's work. */
typedef struct gt_store_fence {
    const char *name;
    const char *holder;
    int64_t epoch;
} gt_store_fence;

/* As gt_store_put, fenced by fence (NULL: unfenced). GT_ECONFLICT, naming the lease,
 * when the lease has another holder or epoch or has expired; nothing is written then. */
gt_err gt_store_put_fenced(gt_store *s, const char *coll, const char *id, const char *body,
                           int64_t expect_rev, int64_t *new_rev, const gt_store_fence *fence,
                           gt_error *err);

/* Deletes coll/id if its revision equals expect_rev (or GT_REV_ANY).
 * GT_ENOTFOUND when absent, GT_ECONFLICT on a revision mismatch. */
gt_err gt_store_delete(gt_store *s, const char *coll, const char *id, int64_t expect_rev,
                       gt_error *err);

typedef struct gt_store_item {
    char *id;
    char *body;
    int64_t rev;
} gt_store_item;

typedef struct gt_store_page {
    gt_store_item *items;
    size_t n;
    char *next_cursor;   /* NULL on the last page; pass back as cursor for the next */
} gt_store_page;

/* Lists documents of coll, in ascending id order, whose indexed field equals value
 * (field == NULL: all documents), starting after cursor (NULL: from the start), at
 * most limit (1..10000). page is filled; release it with gt_store_page_clear. */
gt_err gt_store_query(gt_store *s, const char *coll, const char *field, const char *value,
                      const char *cursor, size_t limit, gt_store_page *page, gt_error *err);
void gt_store_page_clear(gt_store_page *page);

/* Calls fn for every document of coll whose indexed field equals value (field NULL:
 * all), in ascending id order, a page at a time; fn returns false to stop early. The
 * item is borrowed for the call; fn may write to the store (the cursor is the id). */
typedef bool (*gt_store_each_fn)(void *arg, const gt_store_item *item);
gt_err gt_store_each(gt_store *s, const char *coll, const char *field, const char *value,
                     gt_store_each_fn fn, void *arg, gt_error *err);

/* As gt_store_query, in descending id order when descending is set (the cursor is
 * then an exclusive upper bound). Ids that sort by time (executions) list newest first. */
gt_err gt_store_query_order(gt_store *s, const char *coll, const char *field, const char *value,
                            const char *cursor, size_t limit, bool descending,
                            gt_store_page *page, gt_error *err);

/* Leases: a named singleton duty held by holder until now + ttl_ms.
 * Acquire takes a free or expired lease (epoch incremented) or renews one holder
 * already holds (epoch unchanged); *epoch is the fencing epoch. GT_ECONFLICT when
 * another holder's lease has not expired. Release frees it if holder holds it. */
gt_err gt_store_lease_acquire(gt_store *s, const char *name, const char *holder, int64_t ttl_ms,
                              int64_t *epoch, gt_error *err);
gt_err gt_store_lease_release(gt_store *s, const char *name, const char *holder, gt_error *err);

/* The shortest lease the driver can time, in ms (1 for local and memory; 1000 for etcd,
 * whose leases have whole-second TTLs): a shorter ttl_ms is rounded up to it. */
int64_t gt_store_lease_granularity_ms(const gt_store *s);

/* Name of the driver ("local", "memory", "etcd"). */
const char *gt_store_driver(const gt_store *s);

#endif
