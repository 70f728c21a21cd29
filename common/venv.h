/* Python virtual environments for python-script services, built from a
 * requirements.txt and cached under <working_dir>/venvs by the hash of the
 * interpreter, the requirements and the pip options. */
#ifndef GT_VENV_H
#define GT_VENV_H

#include "error.h"
#include "run.h"

/* Ensures a venv for the requirements file exists and is complete; *dir is its path
 * (caller frees). pip runs in cwd so relative paths in the file resolve there.
 * On failure err carries the tail of pip's output. */
gt_err gt_venv_ensure(const gt_run_options *o, const char *requirements, const char *cwd,
                      char **dir, gt_error *err);

#endif
