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
#include "store.h"
#include "util.h"

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

/* The reply stream of POST /v3/watch: one JSON object a line, {"result": {...}} or
 * {"error": ...}. The parser keeps each document's latest change under prefix d/
 * (other keys: index entries, leases, epochs, are not changes) for the collections
 * asked for, and stops at the first reply line that holds any (unless keep_reading),
 * at a compaction, or when 1000 documents are held. */
typedef struct gt_etcd_watch {
    /* set by the caller */
    const char *prefix;          /* the cluster's "/gantry/<id>/" */
    const char *const *colls;    /* n_colls 0: every collection */
    size_t n_colls;
    int64_t since;
    bool stop_when_created;      /* stop at creation when nothing can be in the past */
    bool keep_reading;           /* read every whole line (a stream kept across calls)
                                  * rather than stop at the first with changes */
    /* results */
    gt_store_changes out;        /* next: the newest position read, since when none */
    int64_t *pos;                /* out.v[i]'s position */
    int64_t created_rev;         /* the store revision when the watch was created; 0 before */
    int64_t compact_rev;         /* > 0: since was compacted away */
    bool done;                   /* nothing more to read */
    bool overflow;               /* a reply line too large to hold: its changes are lost */
    gt_buf line;                 /* a partial line */
} gt_etcd_watch;
/* Feeds n bytes of the stream (any split). GT_OK to go on (check done); GT_EUNAVAIL
 * for an error reply or a cancel, GT_EIO for anything malformed, naming what. */
gt_err gt_etcd__watch_feed(gt_etcd_watch *w, const char *p, size_t n, gt_error *err);
/* The stream ended: parses a last line without its newline. */
gt_err gt_etcd__watch_end(gt_etcd_watch *w, gt_error *err);
/* Frees what the parser holds, out included (give out away first to keep it). */
void gt_etcd__watch_clear(gt_etcd_watch *w);

#endif
