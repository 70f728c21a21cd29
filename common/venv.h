/* Python virtual environments for python-script services, built from a
 * requirements.txt by Gantry alone and cached under <working_dir>/venvs by the hash
 * of: the repository, the interpreter, the pip options, the requirements text and
 * everything it references (nested -r/-c files, the files of local package
 * directories and archives). Nothing a requirements file names may lie outside the
 * checkout. */
#ifndef GT_VENV_H
#define GT_VENV_H

#include "error.h"
#include "run.h"

/* Ensures a venv for the requirements file exists and is complete; *dir is its path
 * (caller frees), a tree that group and others cannot write. repo_id names the
 * repository (name and URL); root is the checkout, requirements a file inside it;
 * pip runs in cwd so relative paths in the file resolve there. A path the file names
 * outside root is GT_EPERM before pip runs; on pip's failure err carries the tail of
 * its output. */
gt_err gt_venv_ensure(const gt_run_options *o, const char *repo_id, const char *requirements,
                      const char *root, const char *cwd, char **dir, gt_error *err);

/* The venv key (hex, 24 chars, into key[25]) gt_venv_ensure would use, after the same
 * checks (exposed for tests). */
gt_err gt_venv_key(const gt_run_options *o, const char *repo_id, const char *requirements,
                   const char *root, const char *cwd, char key[25], gt_error *err);

#endif
