/* Git repositories through the git CLI (spawned without a shell): a bare cache per
 * URL under <working_dir>/repos, fetched on every use, and a checkout of one commit
 * into a scratch directory. libgit2 would also do, but the git CLI brings ssh,
 * credential helpers and every URL scheme users already have configured. */
#ifndef GT_REPO_H
#define GT_REPO_H

#include "error.h"
#include "run.h"

/* True for a URL Gantry accepts: an absolute local path, file://, ssh://, scp-like
 * user@host:path, http(s)://. */
bool gt_repo_url_valid(const char *url);

/* Fetches url into its cache and checks out reference (branch, tag or commit; NULL or
 * "" = the remote's HEAD) into dest, a directory that must not exist. *commit is the
 * resolved SHA (caller frees). ssh_key: private key text for ssh URLs, or NULL. */
gt_err gt_repo_checkout(const gt_run_options *o, const char *url, const char *reference,
                        const char *ssh_key, const char *dest, char **commit, gt_error *err);

#endif
