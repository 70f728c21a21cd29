/* A run's output in the store. Small outputs stay in the execution document; larger
 * ones are stored apart, in chunks of the "outputs" collection, so that 1 MiB of
 * stdout plus 1 MiB of stderr never exceed a driver's per-document limit and never
 * block the terminal record. Output is text: invalid UTF-8 was replaced by U+FFFD
 * before it got here (gt_utf8_clean). */
#ifndef GT_OUTPUT_H
#define GT_OUTPUT_H

#include <cjson/cJSON.h>

#include "error.h"
#include "store.h"

#define GT_OUTPUTS "outputs"

/* Up to this many bytes of stdout + stderr stay in the execution document. */
#define GT_OUTPUT_INLINE_MAX (64 * 1024)
/* Bytes of text per chunk: escaped as JSON (at most 6 bytes per byte) it stays well
 * under the store's 1 MiB per document. */
#define GT_OUTPUT_CHUNK (128 * 1024)

/* When ex's "stdout" and "stderr" are larger than GT_OUTPUT_INLINE_MAX together, writes
 * them as chunks (ids "<execution>.<attempt>.<stream>.<n>", fenced by fence, which may be
 * NULL) and replaces them in ex by "output": {"attempt", "stdout_chunks",
 * "stderr_chunks"}. ex is unchanged on error. */
gt_err gt_output_put(gt_store *s, cJSON *ex, const gt_store_fence *fence, gt_error *err);

/* The reverse, for readers: when ex has "output", reads the chunks back into "stdout"
 * and "stderr" and drops "output". A missing chunk is an error (err names it). */
gt_err gt_output_load(gt_store *s, cJSON *ex, gt_error *err);

#endif
