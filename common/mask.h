/* Masking secret values in a run's output before it is stored, as CI systems do with
 * their masked variables: every occurrence of a value becomes "***". */
#ifndef GT_MASK_H
#define GT_MASK_H

#include <stdbool.h>

typedef struct gt_mask gt_mask;

/* A masker for the values of env_entries ("VAR=value", NULL-terminated, may be NULL)
 * and, when key_text is not NULL, for each line of that private key. Values shorter
 * than 3 bytes, and key lines shorter than 16, are not masked (see mask.c). It holds
 * what it needs of the values and wipes it in gt_mask_free. */
gt_mask *gt_mask_new(char *const *env_entries, const char *key_text)
    __attribute__((warn_unused_result));
/* True when there is nothing to mask. */
bool gt_mask_empty(const gt_mask *m);
/* A new string (the caller frees it): text with every stretch covered by an occurrence
 * of any value replaced by "***" (overlapping and adjacent occurrences become one). Time
 * linear in the text plus the values. NULL when text is NULL. */
char *gt_mask_apply(const gt_mask *m, const char *text) __attribute__((warn_unused_result));
/* Wipes and frees *m; sets it to NULL. */
void gt_mask_free(gt_mask **m);

/* gt_mask_apply with a one-off masker for env_entries: a new string, or NULL when text
 * is NULL. */
char *gt_mask_secrets(const char *text, char *const *env_entries)
    __attribute__((warn_unused_result));

#endif
