/* What every program derives the same way from a loaded configuration: the options
 * runs use, the store, and whether the secrets key file was chosen by the user.
 * (Reading the file stays in main.c; these only translate what was read.) */
#ifndef GT_SETUP_H
#define GT_SETUP_H

#include <stdbool.h>

#include "bus.h"
#include "config.h"
#include "run.h"
#include "sessions.h"
#include "store.h"

/* new + load (path, $GANTRY_CONFIG, the default files, then the environment) + finish.
 * On error *cfg is NULL and err says what and where. */
gt_err gt_setup_load(const char *path, char *const *envp, gt_config **cfg, gt_error *err);

/* [broker] as a bus configuration ([application] ca_certificate_file when [broker] names
 * no CA); bc borrows cfg's strings. GT_EINVAL when [broker] hosts is empty. */
gt_err gt_setup_bus_config(const gt_config *cfg, gt_bus_config *bc, gt_error *err);

/* [sessions] as a sessions configuration with key prefix; sc borrows cfg's strings and
 * holds the session signing key, derived from [sessions] signing_key_file (created, mode
 * 0600, when it is the default <working_dir>/sessions.key and missing; GT_ENOTFOUND when
 * the user named it and it is missing). GT_EINVAL for use_tls (hiredis 0.14 has no TLS:
 * the password would go in clear). */
gt_err gt_setup_sessions_config(const gt_config *cfg, const char *prefix, gt_sessions_config *sc,
                                gt_error *err);

/* Fills o from cfg's [application] and [runner]; o borrows cfg's strings and envp. */
void gt_setup_run_options(const gt_config *cfg, char *const *envp, gt_run_options *o);

/* Opens the store [store] backend names (local, memory, etcd or mongodb). GT_EINVAL naming the
 * backend when this build has no driver for it. */
gt_err gt_setup_open_store(const gt_config *cfg, gt_store **store, gt_error *err);

/* True when [secrets] encrypt_key_file was set by the user (file, env or flag), so a
 * missing file is an error rather than a key to create. */
bool gt_setup_key_file_explicit(const gt_config *cfg);

#endif
