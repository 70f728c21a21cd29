/* What every program derives the same way from a loaded configuration: the options
 * runs use, the store, and whether the secrets key file was chosen by the user.
 * (Reading the file stays in main.c; these only translate what was read.) */
#ifndef GT_SETUP_H
#define GT_SETUP_H

#include <stdbool.h>

#include "config.h"
#include "run.h"
#include "store.h"

/* Fills o from cfg's [application] and [runner]; o borrows cfg's strings and envp. */
void gt_setup_run_options(const gt_config *cfg, char *const *envp, gt_run_options *o);

/* Opens the store [store] backend names (local or memory). GT_EINVAL naming the
 * backend when this build has no driver for it. */
gt_err gt_setup_open_store(const gt_config *cfg, gt_store **store, gt_error *err);

/* True when [secrets] encrypt_key_file was set by the user (file, env or flag), so a
 * missing file is an error rather than a key to create. */
bool gt_setup_key_file_explicit(const gt_config *cfg);

#endif
