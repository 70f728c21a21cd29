/* The store: collections of JSON documents keyed by id, each with a revision.
 * Drivers: local (SQLite), memory, etcd, mongodb. All pass one conformance
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
    const char *username;       /* etcd's auth (NULL: none); the token is renewed when */
    const char *password;       /* etcd says it expired */
    long timeout_ms;            /* per request; 0: 5000 */
} gt_store_etcd_config;
/* Opens an etcd store (checks that a member answers). One handle per thread. */
gt_store *gt_store_open_etcd(const gt_store_etcd_config *cfg, gt_error *err)
    __attribute__((warn_unused_result));
/* A MongoDB replica set (4.4+): documents of cluster_id in collections named
 * "<cluster_id>:<coll>" of database. Majority write and read concern and retryable
 * writes are always on, whatever the URI says. */
typedef struct gt_store_mongo_config {
    const char *uri;            /* mongodb:// or mongodb+srv://; its password is a secret */
    const char *database;       /* NULL: "gantry" */
    const char *cluster_id;
} gt_store_mongo_config;
/* Opens a MongoDB store (checks that the primary answers and that it is a replica set;
 * GT_EUNAVAIL when it cannot be reached). Handles share one client pool per URI in the
 * process; each handle holds one client, so use one handle per thread. */
gt_store *gt_store_open_mongo(const gt_store_mongo_config *cfg, gt_error *err)
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

/* Range queries and counts on an indexed field (or on the id, field NULL).
 * Values compare as bytes, so fixed-width UTC times ("2026-12-01T21:25:01.757Z") and
 * ULID ids sort by time: due times, created-before for retention. */

/* Lists documents of coll whose indexed field value v (field NULL: the id) has
 * lo <= v < hi (lo NULL: no lower bound; hi NULL: no upper bound), ordered by
 * (v, id) ascending, starting after cursor (an opaque string from next_cursor; NULL:
 * from the start), at most limit (1..10000). A document without the field (or with a
 * non-string value there) is in no range. */
gt_err gt_store_query_range(gt_store *s, const char *coll, const char *field, const char *lo,
                            const char *hi, const char *cursor, size_t limit,
                            gt_store_page *page, gt_error *err);

/* What gt_store_count counts: every document of the collection (field NULL and no
 * bounds), those whose indexed field equals eq, or those in [lo, hi) as above (eq
 * NULL; field NULL then bounds the id). */
typedef struct gt_store_filter {
    const char *field;
    const char *eq;
    const char *lo;
    const char *hi;
} gt_store_filter;
/* *n = the number of documents of coll matching f (NULL: all), read without fetching
 * their bodies. */
gt_err gt_store_count(gt_store *s, const char *coll, const gt_store_filter *f, int64_t *n,
                      gt_error *err);

/* Small atomic multi-document writes: all ops apply, or none (an execution and its
 * dispatch record; a schedule and its next firing). */
typedef enum gt_store_op_kind {
    GT_STORE_OP_PUT,      /* coll/id = body if its revision is expect_rev (as gt_store_put) */
    GT_STORE_OP_DELETE,   /* delete coll/id if its revision is expect_rev (GT_REV_ANY: any;
                           * an absent document is GT_ENOTFOUND, as gt_store_delete) */
    GT_STORE_OP_CHECK     /* write nothing; require coll/id's revision to be expect_rev
                           * (GT_REV_NONE: absent; GT_REV_ANY: present, else GT_ENOTFOUND) */
} gt_store_op_kind;
typedef struct gt_store_op {
    gt_store_op_kind kind;
    const char *coll;
    const char *id;
    const char *body;     /* PUT only */
    int64_t expect_rev;
    int64_t new_rev;      /* out: a PUT's new revision on success, else 0 */
} gt_store_op;
#define GT_STORE_MAX_OPS 8
/* Applies ops[0..n) (1..GT_STORE_MAX_OPS, no coll/id twice) in one atomic step, fenced
 * by fence (NULL: unfenced). On a revision mismatch nothing is written and the result
 * is the one the single-document call would give, naming that document; err->field
 * is then "ops[i]". */
gt_err gt_store_apply(gt_store *s, gt_store_op *ops, size_t n, const gt_store_fence *fence,
                      gt_error *err);

/* Change notification. Every write has a position in the store's order of writes (an
 * etcd revision, SQLite's revision sequence, a MongoDB cluster time): positions only
 * grow. */
typedef struct gt_store_change {
    char *coll;
    char *id;
    int64_t rev;      /* the revision written; 0 when the document was deleted */
} gt_store_change;
typedef struct gt_store_changes {
    gt_store_change *v;
    size_t n;
    int64_t next;     /* pass as since next time */
    bool reset;       /* the changes after since are no longer known (etcd compaction, a
                       * trimmed log): re-read what you watch, then go on from next */
} gt_store_changes;
/* Waits up to wait_ms (0..60000) for writes after position since to the collections
 * colls[0..n_colls) (n_colls 0: every collection), and fills out with them: one entry
 * per document, its latest change, in position order, at most 1000 (next then points
 * inside the backlog). since 0 returns at once with no changes and next = the current
 * position, which starts a watch. A change is seen within about 100 ms of its write,
 * from any process sharing the store. Release out with gt_store_changes_clear. */
gt_err gt_store_changes_wait(gt_store *s, const char *const *colls, size_t n_colls,
                             int64_t since, long wait_ms, gt_store_changes *out, gt_error *err);
void gt_store_changes_clear(gt_store_changes *c);

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

/* Name of the driver ("local", "memory", "etcd", "mongodb"). */
const char *gt_store_driver(const gt_store *s);

#endif
