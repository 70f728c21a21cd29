/* gantry-tokend's logic: users (store collection "users"), argon2id passwords, login
 * tokens and API keys (Redis sessions), login throttling. Transport-free: requests
 * and replies are JSON texts, so the same code serves the AMQP RPC queue and the
 * unit tests. Not thread-safe (its store and sessions are not): one per thread.
 *
 * Request {"op": OP, ...}; every request gets a reply, {"ok": true, ...} or
 * {"ok": false, "error": {"code", "message", "field"?}, "retry_after"?}. The ops and
 * their fields are listed at the top of tokend.c. */
#ifndef GT_TOKEND_H
#define GT_TOKEND_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "sessions.h"
#include "store.h"

typedef struct gt_tokend gt_tokend;

typedef struct gt_tokend_config {
    gt_store *store;           /* borrowed; must outlive the gt_tokend */
    gt_sessions *sessions;     /* borrowed; keys already carry the cluster prefix and it
                                  holds the session signing key */
    /* The broker users whose requests are served ([tokend] controller_users), NULL-
     * terminated, copied; at least one. Requests from anyone else are refused. */
    char *const *controller_users;
    /* Where bootstrap and recover_admin write a new admin password, mode 0600
     * (<working_dir>/initial-admin-password); copied. */
    const char *admin_password_file;
    int64_t token_ttl_ms;      /* login sessions ([sessions] token_ttl); > 0 */
    int64_t api_key_ttl_ms;    /* API keys ([server] api_key_expiration); > 0 */
    /* Wall clock in ms; NULL: gt_now_ms. Tests inject a fake one. */
    int64_t (*clock_ms)(void *arg);
    void *clock_arg;
} gt_tokend_config;

/* A new tokend over cfg (copied). Computes the dummy hash that unknown users are
 * verified against (one argon2id run). */
gt_tokend *gt_tokend_new(const gt_tokend_config *cfg, gt_error *err)
    __attribute__((warn_unused_result));
/* Frees *t (not the store or sessions); sets it to NULL; accepts NULL. */
void gt_tokend_free(gt_tokend **t);

/* First start: when the users collection is empty, creates "admin" (role admin)
 * with a random 16-character temporary password that must be changed, writes it to
 * admin_password_file (a new file, mode 0600; a stale one is replaced) and logs only
 * that file's path. *password (may be NULL) receives a copy of it for the caller to
 * free, or NULL when nothing was created. */
gt_err gt_tokend_bootstrap(gt_tokend *t, char **password, gt_error *err);

/* --recover-admin-user: gives "admin" (created if absent, role admin) a new random
 * temporary password that must be changed, clears its failed logins and revokes its
 * sessions. The password goes to admin_password_file as for bootstrap; *password is a
 * copy (caller frees). */
gt_err gt_tokend_recover_admin(gt_tokend *t, char **password, gt_error *err);

/* Answers one request (body: len bytes of JSON) from broker user caller (the AMQP
 * user_id RabbitMQ checked; NULL when the message had none). A caller that is not one
 * of controller_users is refused (forbidden, and a WARN). Always GT_OK with *reply (a
 * new NUL-terminated JSON text, caller frees) and *reply_len; failures are replies.
 * Wrap it in a gt_bus_rpc_fn to serve it on the bus. */
gt_err gt_tokend_handle(gt_tokend *t, const char *caller, const char *body, size_t len,
                        char **reply, size_t *reply_len);

#endif
