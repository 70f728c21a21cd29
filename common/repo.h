/* Git repositories through the git CLI (spawned without a shell): a bare cache per
 * URL under <working_dir>/repos, fetched on every use, and a checkout of one commit
 * into a scratch directory. libgit2 would also do, but the git CLI brings ssh,
 * credential helpers and every URL scheme users already have configured. */
#ifndef GT_REPO_H
#define GT_REPO_H

#include "error.h"
#include "run.h"

/* True for a URL Gantry accepts: an absolute local path, file://, ssh://, scp-like
 * user@host:path, http(s)://. Never a remote helper (transport::address, ext::, fd::)
 * nor a URL with control characters. */
bool gt_repo_url_valid(const char *url);

/* As gt_repo_url_valid, with GT_EINVAL and a message saying why (the URL shown with
 * its password masked); field (may be NULL) is recorded in err. */
gt_err gt_repo_url_check(const char *url, const char *field, gt_error *err);

/* True when url carries a password ("scheme://user:password@host/..."). */
bool gt_repo_url_has_password(const char *url);

/* url with the password of its userinfo replaced by "***" (unchanged when it has
 * none); NULL in, NULL out; caller frees. For every place a URL is shown. */
char *gt_repo_url_mask(const char *url);

/* Fetches url into its cache and checks out reference (branch, tag or commit; NULL or
 * "" = the remote's HEAD) into dest, a directory that must not exist. *commit is the
 * resolved SHA (caller frees). ssh_key: private key text for ssh URLs, or NULL. */
gt_err gt_repo_checkout(const gt_run_options *o, const char *url, const char *reference,
                        const char *ssh_key, const char *dest, char **commit, gt_error *err);

#endif
