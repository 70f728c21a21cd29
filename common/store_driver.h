/* Internal: what a store driver provides and the helpers drivers share.
 * Users of the store include store.h only.
 *
 * store.c checks every argument once before calling a driver, so a driver may
 * assume: s, coll, id, body, name, holder are non-NULL and valid (store.c's rules);
 * out-parameters (body, rev, new_rev, epoch, page) are non-NULL; body is a valid
 * JSON object of at most GT_STORE__MAX_BODY bytes; page is zeroed; cursor is NULL
 * or non-empty; value is non-NULL when field is. On error a driver may leave a
 * partly filled page: store.c clears it. */
#ifndef GT_STORE_DRIVER_H
#define GT_STORE_DRIVER_H

#include <stdbool.h>

#include "store.h"

/* Limits every driver can honour (etcd's default request limit is 1.5 MiB). */
#define GT_STORE__MAX_BODY ((size_t)1 << 20)
#define GT_STORE__MAX_ID 1024
#define GT_STORE__MAX_NAME 256
#define GT_STORE__MAX_LIMIT 10000
#define GT_STORE__MAX_TTL_MS ((int64_t)365 * 24 * 3600 * 1000)

typedef struct gt_store_ops {
    const char *name;
    int64_t lease_granularity_ms;   /* 0: 1 ms */
    void (*close)(gt_store *s);   /* frees s and everything it holds */
    gt_err (*index)(gt_store *s, const char *coll, const char *field, gt_error *err);
    gt_err (*get)(gt_store *s, const char *coll, const char *id, char **body, int64_t *rev,
                  gt_error *err);
    /* fence is NULL or valid (names checked) */
    gt_err (*put)(gt_store *s, const char *coll, const char *id, const char *body,
                  int64_t expect_rev, int64_t *new_rev, const gt_store_fence *fence,
                  gt_error *err);
    gt_err (*del)(gt_store *s, const char *coll, const char *id, int64_t expect_rev,
                  gt_error *err);
    /* Fills at most limit items; next_cursor only when more follow (fetch limit + 1). */
    gt_err (*query)(gt_store *s, const char *coll, const char *field, const char *value,
                    const char *cursor, size_t limit, bool descending, gt_store_page *page,
                    gt_error *err);
    gt_err (*lease_acquire)(gt_store *s, const char *name, const char *holder, int64_t ttl_ms,
                            int64_t *epoch, gt_error *err);
    gt_err (*lease_release)(gt_store *s, const char *name, const char *holder, gt_error *err);
    /* field NULL: the id; lo/hi NULL: unbounded; cursor NULL or from this driver */
    gt_err (*query_range)(gt_store *s, const char *coll, const char *field, const char *lo,
                          const char *hi, const char *cursor, size_t limit,
                          gt_store_page *page, gt_error *err);
    /* f is non-NULL (store.c passes an all-NULL filter for "all") */
    gt_err (*count)(gt_store *s, const char *coll, const gt_store_filter *f, int64_t *n,
                    gt_error *err);
    /* ops checked: 1..GT_STORE_MAX_OPS, valid names and bodies, no coll/id twice */
    gt_err (*apply)(gt_store *s, gt_store_op *ops, size_t n, const gt_store_fence *fence,
                    gt_error *err);
    /* colls checked; out zeroed; since >= 0 */
    gt_err (*changes_wait)(gt_store *s, const char *const *colls, size_t n_colls, int64_t since,
                           long wait_ms, gt_store_changes *out, gt_error *err);
} gt_store_ops;

/* Every driver's handle starts with this member, so a gt_store * is the driver's. */
struct gt_store {
    const gt_store_ops *ops;
};

/* Decides a conditional write on coll/id given what is stored now, with the same
 * codes and messages for every driver: GT_OK to go ahead, GT_ENOTFOUND (delete of an
 * absent document) or GT_ECONFLICT. */
gt_err gt_store__check_rev(const char *coll, const char *id, bool exists, int64_t cur_rev,
                           int64_t expect_rev, bool is_delete, gt_error *err);

/* Sets err's field to "ops[i]" (the operation of gt_store_apply it is about); returns rc. */
gt_err gt_store__at_op(gt_error *err, gt_err rc, size_t i);

/* A lease as stored. holder "" means free; epoch 0 means never taken. */
typedef struct gt_store_lease {
    const char *holder;
    int64_t epoch;
    int64_t expires_ms;
} gt_store_lease;

/* Acquire: from cur (epoch 0 and holder "" when absent) computes the lease to store
 * in *next (next->holder points at holder), or GT_ECONFLICT naming the holder. */
gt_err gt_store__lease_take(const char *name, const gt_store_lease *cur, const char *holder,
                            int64_t now_ms, int64_t ttl_ms, gt_store_lease *next,
                            gt_error *err);
/* Release: *store_free is set when the caller must store cur as free (holder "",
 * expires 0, epoch kept so fencing epochs never repeat); GT_ECONFLICT when another
 * holder's lease is live. */
gt_err gt_store__lease_give(const char *name, const gt_store_lease *cur, const char *holder,
                            int64_t now_ms, bool *store_free, gt_error *err);

/* Decides whether a fenced write may go ahead given the lease as stored now:
 * GT_OK, or GT_ECONFLICT naming the lease, the holder and epochs. */
gt_err gt_store__fence_check(const gt_store_fence *f, const gt_store_lease *cur, int64_t now_ms,
                             gt_error *err);

/* Appends a copy of an item to page (lengths exclude the NUL). */
void gt_store__page_add(gt_store_page *page, const char *id, size_t id_len, const char *body,
                        size_t body_len, int64_t rev);
/* Marks that more items follow the page: next_cursor = the last item's id. */
void gt_store__page_more(gt_store_page *page);

/* Range queries and apply. A range cursor is hex(value) "/" id (for an id range the
 * value is the id): it resumes exactly after (value, id), and hex keeps byte order, so
 * etcd uses it as an index key suffix. Caller frees. */
char *gt_store__range_cursor(const char *value, const char *id);
/* Splits a cursor made by gt_store__range_cursor (caller frees *value and *id);
 * GT_EINVAL naming coll when it is not one, or not an id range's when field is NULL. */
gt_err gt_store__range_cursor_parse(const char *coll, const char *field, const char *cursor,
                                    char **value, char **id, gt_error *err);
/* Decides op i of an apply given what is stored now, as the single-document call
 * would (a CHECK at GT_REV_ANY requires the document to exist: GT_ENOTFOUND), with
 * err->field "ops[i]". */
gt_err gt_store__check_op(const gt_store_op *op, size_t i, bool exists, int64_t cur_rev,
                          gt_error *err);

#endif
