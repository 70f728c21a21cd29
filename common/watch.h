/* The change watcher of a process: one thread, with a store handle of its own, waits for
 * writes to the collections its subscribers name (gt_store_changes_wait) and calls them,
 * so a process has one watch on the store however many parts want to know. */
#ifndef GT_WATCH_H
#define GT_WATCH_H

#include <stdint.h>

#include "error.h"
#include "store.h"

typedef struct gt_watch gt_watch;

/* A write to coll/id at revision rev (0: deleted). id NULL: anything in coll may have
 * changed unseen (the watch started or was reset, or the store failed for a while):
 * re-read what matters. Runs on the watcher's thread, which waits for it: keep it short
 * (set a flag, signal a condition variable), and do not subscribe or unsubscribe in it. */
typedef void (*gt_watch_fn)(void *arg, const char *coll, const char *id, int64_t rev);

/* Opens the watcher's store (a gt_err; as gt_pool_config's open_store). */
typedef int (*gt_watch_open_fn)(void *arg, gt_store **store, gt_error *err);

/* Starts the watcher thread; open_store is called on it, again after a store error.
 * open_arg must outlive the watch. */
gt_watch *gt_watch_new(gt_watch_open_fn open_store, void *open_arg, gt_error *err)
    __attribute__((warn_unused_result));

/* From now on calls fn(arg, ...) for writes to coll (starting with one id NULL call once
 * the watcher waits on coll, at most about a second later). Returns the subscription's
 * id (> 0) for gt_watch_unsubscribe. */
int gt_watch_subscribe(gt_watch *w, const char *coll, gt_watch_fn fn, void *arg);

/* Ends subscription id: once it returns, its fn is not running and is not called again. */
void gt_watch_unsubscribe(gt_watch *w, int id);

/* Stops the thread (within about a second), frees *w, sets it to NULL; accepts NULL. */
void gt_watch_free(gt_watch **w);

#endif
