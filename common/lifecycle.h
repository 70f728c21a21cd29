/* The execution lifecycle (DESIGN.md §5), the one owner of its state machine:
 *
 *   accepted -> queued -> running -> succeeded | failed | timed_out | canceled | lost
 *
 * A table says which transitions exist and who may make each one; gt_lifecycle_store is
 * the only way an execution document is written: it checks the move against the table
 * (a refused move is logged with both states and the actor, and nothing is written), and
 * stores it conditionally on the revision the writer read (and, for runners and the
 * reaper, fenced by their lease), so a late writer never overwrites a newer attempt. */
#ifndef GT_LIFECYCLE_H
#define GT_LIFECYCLE_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdint.h>

#include "error.h"
#include "store.h"

#define GT_EXECUTIONS "executions"

typedef enum gt_actor {
    GT_ACTOR_CLIENT = 0, /* the API, for a request: accept, or fail what it could not hand on */
    GT_ACTOR_WORKER,     /* whoever runs the attempt: the CLI, a controller worker, a runner */
    GT_ACTOR_CANCEL,     /* a cancel request, for a run that has not started */
    GT_ACTOR_REAPER,     /* ends or retries the attempt of a dead owner (scheduler, local) */
    GT_ACTOR_DISPATCH,   /* announces queued work again (the dispatch sweeper) */
} gt_actor;

const char *gt_actor_name(gt_actor who);

/* True when `who` may move an execution from state `from` (NULL: not stored yet) to
 * `to`. Moving to the same state is an update (a child's pid, a re-dispatch). */
bool gt_lifecycle_allowed(const char *from, const char *to, gt_actor who);

/* Moves ex (as read, at revision *rev; GT_REV_NONE when new) to state `to` for `who` and
 * stores it, fenced by fence (NULL: unfenced). Sets "state", and "finished_at" when `to`
 * is terminal and ex has none. A terminal record's output goes apart first when large
 * (gt_output_put; ex keeps it); if the record still cannot be stored for another
 * reason than a conflict, a small terminal record without the output, naming the
 * reason, is stored instead. On GT_OK *rev is the new revision. GT_EPERM when the table refuses the move,
 * GT_ECONFLICT when the document changed since it was read or the fence does not hold:
 * then nothing was written and ex keeps its old state. */
gt_err gt_lifecycle_store(gt_store *s, cJSON *ex, int64_t *rev, const char *to, gt_actor who,
                          const gt_store_fence *fence, gt_error *err);

#endif
