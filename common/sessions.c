/* Sessions in Redis over hiredis 0.14's synchronous API.
 *
 * Discovery follows the Sentinel client guidelines: ask each sentinel in order for
 * the master's address, connect, AUTH and SELECT, and believe the answer only when
 * the node itself says ROLE master (a sentinel may still name a demoted node during
 * a failover). Every command goes through run(): on an I/O error, or a reply telling
 * us the node is no longer a usable master (READONLY, LOADING, MASTERDOWN), the
 * connection is dropped, the master is found again and the command is sent once more.
 *
 * That retry means a command may run twice when the first attempt reached the server
 * but its reply was lost. Everything here is idempotent (SET, GET, DEL, PEXPIRE,
 * SADD, SREM) except INCR, which may then count one extra: acceptable for rate
 * limits, which should err towards counting more, not less.
 *
 * A slow master costs at most about three timeouts per call: the command, then the
 * rediscovery's connect or ROLE, then the retried command.
 *
 * Counters use PEXPIRE ... NX, so Redis 7.0 or later is required.
 *
 * Authentication: AUTH username password (Redis 6+ ACL users) or AUTH password to the data
 * nodes; sentinels that require it get AUTH [sentinel_username] sentinel_password. Session
 * records carry an HMAC (gt_sessions_seal/open below): Redis holds them, but a password to
 * Redis is not enough to mint one.
 *
 * Known limit (Sentinel's, not ours): when a master that is still alive is failed
 * over, it keeps accepting writes until a sentinel turns it into a replica (about ten
 * seconds; it then closes its clients' connections, which sends us to the new
 * master), and the writes made there in between are lost. */
#include "sessions.h"

#include <cjson/cJSON.h>
#include <hiredis/hiredis.h>
#include <limits.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/kdf.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include "json.h"
#include "log.h"

#define SESS_MAX_ARGS 8
#define SESS_DEFAULT_TIMEOUT_MS 2000
#define SESS_MAX_TIMEOUT_MS (24 * 3600 * 1000)

/* A "host:port" from the config, parsed once. */
typedef struct sess_node {
    char *text;      /* as configured, for messages */
    char *host;
    int port;
} sess_node;

struct gt_sessions {
    sess_node *sentinels;
    size_t nsentinels;
    sess_node host;  /* used when nsentinels == 0 */
    char *master_name;
    char *username;
    char *password;
    char *sentinel_username;
    char *sentinel_password;
    bool signing_key_set;
    unsigned char signing_key[GT_SESSIONS_KEY_LEN];
    char db[24];     /* decimal, for SELECT; "" for db 0 */
    int64_t timeout_ms;
    char *prefix;
    size_t prefix_len;
    redisContext *c; /* NULL until connected, and after an I/O error */
    bool sigpipe_ignored; /* by the process, when the handle was made */
    char master[300];  /* "host:port" of the master last connected to */
};

/* One command's arguments, binary-safe. */
typedef struct sess_cmd {
    int argc;
    const char *argv[SESS_MAX_ARGS];
    size_t len[SESS_MAX_ARGS];
} sess_cmd;

static void cmd_arg(sess_cmd *c, const char *p, size_t n)
{
    c->argv[c->argc] = p;
    c->len[c->argc] = n;
    c->argc++;
}

static void cmd_str(sess_cmd *c, const char *s)
{
    cmd_arg(c, s, strlen(s));
}

/* ---- addresses and configuration ------------------------------------------------ */

/* "host:port" or "[v6addr]:port". */
static gt_err node_parse(const char *text, sess_node *n, const char *what, gt_error *err)
{
    gt_err rc = GT_OK;
    char *host = NULL;
    const char *colon = text ? strrchr(text, ':') : NULL;
    int64_t port = 0;
    if (colon == NULL || colon == text) {
        rc = gt_error_set(err, GT_EINVAL, "%s: \"%s\" is not host:port", what, text ? text : "");
        goto done;
    }
    if (text[0] == '[') {
        if (colon[-1] != ']' || colon - text < 3) {
            rc = gt_error_set(err, GT_EINVAL, "%s: \"%s\" is not [address]:port", what, text);
            goto done;
        }
        host = gt_xstrndup(text + 1, (size_t)(colon - text - 2));
    } else {
        host = gt_xstrndup(text, (size_t)(colon - text));
        if (strchr(host, ':') != NULL) {  /* an IPv6 address needs brackets */
            rc = gt_error_set(err, GT_EINVAL, "%s: \"%s\": write IPv6 addresses as [address]:port",
                              what, text);
            goto done;
        }
    }
    rc = gt_parse_int64(colon + 1, 1, 65535, &port, what, err);
    if (rc != GT_OK)
        goto done;
    n->text = gt_xstrdup(text);
    n->host = host;
    n->port = (int)port;
    host = NULL;
done:
    free(host);
    return rc;
}

static void node_free(sess_node *n)
{
    free(n->text);
    free(n->host);
    n->text = n->host = NULL;
}

static void addr_format(char *out, size_t n, const char *host, int port)
{
    snprintf(out, n, strchr(host, ':') ? "[%s]:%d" : "%s:%d", host, port);
}

/* ---- SIGPIPE ---------------------------------------------------------------------- */

/* hiredis 0.14 writes with write(2), so a peer that went away raises SIGPIPE, whose
 * default action would end the daemon. Block it on this thread for the duration of a
 * call and swallow one we caused, leaving the process's dispositions alone -- unless
 * the process ignores SIGPIPE (every Gantry daemon does, in its main.c), which is
 * checked once per handle: then the two sigprocmask calls per command are skipped. */
typedef struct sigpipe_guard {
    sigset_t old;
    bool active;
    bool pending_before;
} sigpipe_guard;

static bool sigpipe_pending(void)
{
    sigset_t pend;
    sigemptyset(&pend);
    return sigpending(&pend) == 0 && sigismember(&pend, SIGPIPE) == 1;
}

static bool sigpipe_ignored(void)
{
    struct sigaction sa;
    return sigaction(SIGPIPE, NULL, &sa) == 0 && !(sa.sa_flags & SA_SIGINFO) &&
           sa.sa_handler == SIG_IGN;
}

static void sigpipe_block(sigpipe_guard *g, bool ignored)
{
    g->active = false;
    if (ignored)
        return;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    g->active = pthread_sigmask(SIG_BLOCK, &set, &g->old) == 0;
    g->pending_before = g->active && sigpipe_pending();
}

static void sigpipe_restore(sigpipe_guard *g)
{
    if (!g->active)
        return;
    if (!g->pending_before && sigpipe_pending()) {
        sigset_t set;
        struct timespec zero = {0, 0};
        sigemptyset(&set);
        sigaddset(&set, SIGPIPE);
        sigtimedwait(&set, NULL, &zero);
    }
    pthread_sigmask(SIG_SETMASK, &g->old, NULL);
}

/* ---- connections ------------------------------------------------------------------ */

static struct timeval ms_tv(int64_t ms)
{
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
    return tv;
}

/* Why a context failed, saying "no answer within N ms" for a timeout (hiredis 0.14
 * reports it only as EAGAIN's or ETIMEDOUT's strerror). */
static void io_why(const gt_sessions *s, const redisContext *c, int64_t started, char *why,
                   size_t n)
{
    int64_t elapsed = gt_mono_ms() - started;
    if (c == NULL)
        snprintf(why, n, "cannot allocate a connection");
    else if (c->err == REDIS_ERR_IO && elapsed >= s->timeout_ms * 9 / 10)
        snprintf(why, n, "no answer within %lld ms (%s)", (long long)s->timeout_ms, c->errstr);
    else
        snprintf(why, n, "%s", c->errstr[0] ? c->errstr : "connection failed");
}

/* Connects with the connect timeout and sets the command timeout. */
static redisContext *node_connect(const gt_sessions *s, const char *host, int port, char *why,
                                  size_t n)
{
    int64_t started = gt_mono_ms();
    redisContext *c = redisConnectWithTimeout(host, port, ms_tv(s->timeout_ms));
    if (c == NULL || c->err != 0) {
        io_why(s, c, started, why, n);
        goto fail;
    }
    if (redisSetTimeout(c, ms_tv(s->timeout_ms)) != REDIS_OK) {
        snprintf(why, n, "cannot set the timeout: %s", c->errstr);
        goto fail;
    }
    return c;
fail:
    if (c)
        redisFree(c);
    return NULL;
}

/* One command on c. NULL with why set on a transport error; otherwise the reply,
 * which may be an error reply. (cmd is not const: hiredis 0.14 takes char **argv.) */
static redisReply *node_call(const gt_sessions *s, redisContext *c, sess_cmd *cmd,
                             char *why, size_t n)
{
    int64_t started = gt_mono_ms();
    redisReply *r = redisCommandArgv(c, cmd->argc, cmd->argv, cmd->len);
    if (r == NULL)
        io_why(s, c, started, why, n);
    return r;
}

static bool reply_is(const redisReply *r, int type)
{
    return r != NULL && r->type == type;
}

/* AUTH [user] password on c; false with why set when refused or unanswered. */
static bool node_auth(const gt_sessions *s, redisContext *c, const char *user,
                      const char *password, char *why, size_t n)
{
    sess_cmd cmd = {0};
    cmd_str(&cmd, "AUTH");
    if (user)
        cmd_str(&cmd, user);
    cmd_str(&cmd, password);
    redisReply *r = node_call(s, c, &cmd, why, n);
    if (r == NULL)
        return false;
    bool ok = r->type != REDIS_REPLY_ERROR;
    if (!ok) /* Redis never echoes the password */
        snprintf(why, n, "AUTH%s%s: %s", user ? " as " : "", user ? user : "", r->str);
    freeReplyObject(r);
    return ok;
}

/* Connects to a data node, AUTH, SELECT, then checks it is a master (ROLE, for an
 * address from a sentinel) or that it answers at all (PING, for a configured host). */
static redisContext *master_open(const gt_sessions *s, const char *host, int port,
                                 bool check_role, char *why, size_t n)
{
    redisContext *c = node_connect(s, host, port, why, n);
    redisReply *r = NULL;
    sess_cmd cmd;
    if (c == NULL)
        return NULL;
    if (s->password && !node_auth(s, c, s->username, s->password, why, n))
        goto fail;
    if (s->db[0]) {
        cmd = (sess_cmd){0};
        cmd_str(&cmd, "SELECT");
        cmd_str(&cmd, s->db);
        if ((r = node_call(s, c, &cmd, why, n)) == NULL)
            goto fail;
        if (r->type == REDIS_REPLY_ERROR) {
            snprintf(why, n, "SELECT %s: %s", s->db, r->str);
            goto fail;
        }
        freeReplyObject(r);
    }
    cmd = (sess_cmd){0};
    cmd_str(&cmd, check_role ? "ROLE" : "PING");
    if ((r = node_call(s, c, &cmd, why, n)) == NULL)
        goto fail;
    if (r->type == REDIS_REPLY_ERROR) {
        snprintf(why, n, "%s: %s", cmd.argv[0], r->str);
        goto fail;
    }
    if (check_role) {
        if (r->type != REDIS_REPLY_ARRAY || r->elements < 1 ||
            !reply_is(r->element[0], REDIS_REPLY_STRING)) {
            snprintf(why, n, "ROLE: unexpected reply");
            goto fail;
        }
        if (strcmp(r->element[0]->str, "master") != 0) {
            snprintf(why, n, "is a %s, not a master", r->element[0]->str);
            goto fail;
        }
    }
    freeReplyObject(r);
    return c;
fail:
    if (r)
        freeReplyObject(r);
    redisFree(c);
    return NULL;
}

static void drop(gt_sessions *s)
{
    if (s->c) {
        redisFree(s->c);
        s->c = NULL;
    }
}

/* Asks one sentinel for the master's address. */
static bool sentinel_ask(const gt_sessions *s, const sess_node *sn, char *host, size_t hostn,
                         int *port, char *why, size_t n)
{
    bool ok = false;
    redisReply *r = NULL;
    int64_t p = 0;
    sess_cmd cmd = {0};
    redisContext *c = node_connect(s, sn->host, sn->port, why, n);
    if (c == NULL)
        goto done;
    if (s->sentinel_password &&
        !node_auth(s, c, s->sentinel_username, s->sentinel_password, why, n))
        goto done;
    cmd_str(&cmd, "SENTINEL");
    cmd_str(&cmd, "get-master-addr-by-name");
    cmd_str(&cmd, s->master_name);
    if ((r = node_call(s, c, &cmd, why, n)) == NULL)
        goto done;
    if (r->type == REDIS_REPLY_NIL) {
        snprintf(why, n, "does not know a master named \"%s\"", s->master_name);
        goto done;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        snprintf(why, n, "%s", r->str);
        goto done;
    }
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
        !reply_is(r->element[0], REDIS_REPLY_STRING) ||
        !reply_is(r->element[1], REDIS_REPLY_STRING) ||
        gt_parse_int64(r->element[1]->str, 1, 65535, &p, "port", NULL) != GT_OK ||
        r->element[0]->len == 0 || r->element[0]->len >= hostn) {
        snprintf(why, n, "unexpected reply to SENTINEL get-master-addr-by-name");
        goto done;
    }
    memcpy(host, r->element[0]->str, r->element[0]->len + 1);
    *port = (int)p;
    ok = true;
done:
    if (r)
        freeReplyObject(r);
    if (c)
        redisFree(c);
    return ok;
}

static void connected(gt_sessions *s, redisContext *c, const char *host, int port)
{
    char addr[sizeof s->master];
    addr_format(addr, sizeof addr, host, port);
    if (s->master[0] == '\0')
        gt_debug("sessions: the Redis master is %s", addr);
    else if (strcmp(addr, s->master) != 0)
        gt_info("sessions: the Redis master is now %s (was %s)", addr, s->master);
    snprintf(s->master, sizeof s->master, "%s", addr);
    s->c = c;
}

/* Finds and connects to the master; GT_EUNAVAIL names everything tried. */
static gt_err discover(gt_sessions *s, gt_error *err)
{
    gt_err rc = GT_OK;
    gt_buf tried = {0};
    char why[512];
    redisContext *c = NULL;
    drop(s);
    if (s->nsentinels == 0) {
        c = master_open(s, s->host.host, s->host.port, false, why, sizeof why);
        if (c == NULL) {
            rc = gt_error_set(err, GT_EUNAVAIL, "redis %s: %s", s->host.text, why);
            goto done;
        }
        connected(s, c, s->host.host, s->host.port);
        goto done;
    }
    for (size_t i = 0; i < s->nsentinels; i++) {
        const sess_node *sn = &s->sentinels[i];
        char host[256];
        int port = 0;
        if (tried.len)
            gt_buf_puts(&tried, "; ");
        if (!sentinel_ask(s, sn, host, sizeof host, &port, why, sizeof why)) {
            gt_buf_printf(&tried, "%s: %s", sn->text, why);
            continue;
        }
        c = master_open(s, host, port, true, why, sizeof why);
        if (c == NULL) {
            char addr[300];
            addr_format(addr, sizeof addr, host, port);
            gt_buf_printf(&tried, "%s: master %s: %s", sn->text, addr, why);
            continue;
        }
        connected(s, c, host, port);
        goto done;
    }
    rc = gt_error_set(err, GT_EUNAVAIL, "no Redis master \"%s\" from sentinels (%s)",
                      s->master_name, tried.data);
done:
    gt_buf_free(&tried);
    return rc;
}

/* ---- running commands ------------------------------------------------------------- */

/* Replies that mean "this node is not (or no longer) a master that can serve". */
static bool failover_error(const redisReply *r)
{
    static const char *const codes[] = {"READONLY", "LOADING", "MASTERDOWN"};
    if (!reply_is(r, REDIS_REPLY_ERROR) || r->str == NULL)
        return false;
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
        size_t n = strlen(codes[i]);
        if (strncmp(r->str, codes[i], n) == 0 && (r->str[n] == ' ' || r->str[n] == '\0'))
            return true;
    }
    return false;
}

/* r or, for an EXEC array, one of its elements when it is a failover error; else NULL.
 * (Inside MULTI, Redis refuses a write on a replica when it is queued, so the
 * READONLY shows on the queued command and EXEC answers EXECABORT.) */
static const redisReply *failover_reply(const redisReply *r)
{
    if (failover_error(r))
        return r;
    for (size_t j = 0; r->type == REDIS_REPLY_ARRAY && j < r->elements; j++)
        if (failover_error(r->element[j]))
            return r->element[j];
    return NULL;
}

static void replies_free(redisReply **replies, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (replies[i])
            freeReplyObject(replies[i]);
        replies[i] = NULL;
    }
}

/* Sends the n commands as one pipeline and reads the n replies. On a transport error
 * or a failover reply the connection is dropped and *retry is set. */
static gt_err send_all(gt_sessions *s, const char *what, sess_cmd *cmds, size_t n,
                       redisReply **replies, bool *retry, gt_error *err)
{
    char why[512];
    gt_err rc = GT_OK;
    int64_t started = gt_mono_ms();
    for (size_t i = 0; i < n; i++) {
        if (redisAppendCommandArgv(s->c, cmds[i].argc, cmds[i].argv, cmds[i].len) != REDIS_OK) {
            snprintf(why, sizeof why, "%s", s->c->errstr);
            goto broken;
        }
    }
    for (size_t i = 0; i < n; i++) {
        void *r = NULL;
        if (redisGetReply(s->c, &r) != REDIS_OK || r == NULL) {
            io_why(s, s->c, started, why, sizeof why);
            goto broken;
        }
        replies[i] = r;
    }
    for (size_t i = 0; i < n; i++) {
        const redisReply *bad = failover_reply(replies[i]);
        if (bad) {
            snprintf(why, sizeof why, "%s", bad->str);
            goto broken;
        }
    }
    return GT_OK;
broken:
    replies_free(replies, n);
    rc = gt_error_set(err, GT_EUNAVAIL, "redis %s: %s: %s", s->master, what, why);
    *retry = true;
    drop(s);
    return rc;
}

/* Runs a pipeline on the master, finding it first when not connected, and once more
 * on a (re)discovered master when the first attempt met a dead or demoted node.
 * On GT_OK, replies[0..n) are set and the caller frees them. */
static gt_err run(gt_sessions *s, const char *what, sess_cmd *cmds, size_t n,
                  redisReply **replies, gt_error *err)
{
    gt_err rc = GT_OK;
    gt_error first = {0};
    sigpipe_guard g;
    sigpipe_block(&g, s->sigpipe_ignored);
    for (int attempt = 0;; attempt++) {
        gt_error e = {0};
        bool retry = false;
        rc = s->c ? GT_OK : discover(s, &e);
        if (rc == GT_OK)
            rc = send_all(s, what, cmds, n, replies, &retry, &e);
        if (rc == GT_OK)
            break;
        if (!retry || attempt > 0) {
            if (first.code != GT_OK)
                gt_error_set(err, rc, "%s (after: %s)", e.message, first.message);
            else
                gt_error_set(err, rc, "%s", e.message);
            break;
        }
        gt_warn("sessions: %s; finding the master again", e.message);
        first = e;
    }
    sigpipe_restore(&g);
    return rc;
}

/* An error reply as a gt_error. */
static gt_err reply_error(const gt_sessions *s, const char *what, const redisReply *r,
                          gt_error *err)
{
    if (r == NULL)
        return gt_error_set(err, GT_EIO, "redis %s: %s: no reply", s->master, what);
    if (r->type != REDIS_REPLY_ERROR)
        return gt_error_set(err, GT_EIO, "redis %s: %s: unexpected reply (type %d)", s->master,
                            what, r->type);
    bool perm = strncmp(r->str, "NOAUTH", 6) == 0 || strncmp(r->str, "NOPERM", 6) == 0 ||
                strncmp(r->str, "WRONGPASS", 9) == 0;
    return gt_error_set(err, perm ? GT_EPERM : GT_EIO, "redis %s: %s: %s", s->master, what,
                        r->str);
}

/* *x = the EXEC array of a MULTI ... EXEC pipeline of n commands, after checking
 * that every command was queued and none failed. */
static gt_err exec_reply(const gt_sessions *s, const char *what, redisReply *const *replies,
                         size_t n, const redisReply **x, gt_error *err)
{
    *x = NULL;
    for (size_t i = 0; i + 1 < n; i++)
        if (replies[i]->type != REDIS_REPLY_STATUS)
            return reply_error(s, what, replies[i], err);
    const redisReply *e = replies[n - 1];
    if (e->type != REDIS_REPLY_ARRAY || e->elements != n - 2)
        return reply_error(s, what, e, err);
    for (size_t i = 0; i < e->elements; i++)
        if (e->element[i]->type == REDIS_REPLY_ERROR)
            return reply_error(s, what, e->element[i], err);
    *x = e;
    return GT_OK;
}

/* Prefix + key, binary-safe: the caller frees. */
static char *key_make(const gt_sessions *s, const char *key, size_t *len)
{
    size_t kn = strlen(key);
    char *k = gt_xmalloc(s->prefix_len + kn + 1);
    memcpy(k, s->prefix, s->prefix_len);
    memcpy(k + s->prefix_len, key, kn + 1);
    *len = s->prefix_len + kn;
    return k;
}

static gt_err check_args(const gt_sessions *s, const char *what, const char *key,
                         int64_t ttl_ms, gt_error *err)
{
    if (s == NULL || key == NULL)
        return gt_error_set(err, GT_EINVAL, "sessions %s: no %s", what, s ? "key" : "handle");
    if (ttl_ms < 0)
        return gt_error_set(err, GT_EINVAL, "sessions %s: negative TTL %lld ms", what,
                            (long long)ttl_ms);
    return GT_OK;
}

static void cmd_multi(sess_cmd *c)
{
    *c = (sess_cmd){0};
    cmd_str(c, "MULTI");
}

static void cmd_exec(sess_cmd *c)
{
    *c = (sess_cmd){0};
    cmd_str(c, "EXEC");
}

/* Runs cmd; when ttl_ms > 0, inside one MULTI with PEXPIRE key ttl_ms (NX when nx: only
 * if the key has no TTL yet), so the command and its expiry happen together. *reply is
 * cmd's own reply, owned by r (release it with replies_free(r, 4)). */
static gt_err run_expiring(gt_sessions *s, const char *what, const sess_cmd *cmd, const char *k,
                           size_t kn, int64_t ttl_ms, bool nx, redisReply *r[4],
                           const redisReply **reply, gt_error *err)
{
    sess_cmd cmds[4];
    size_t n = 0;
    char px[24];
    if (ttl_ms > 0)
        cmd_multi(&cmds[n++]);
    cmds[n++] = *cmd;
    if (ttl_ms > 0) {
        snprintf(px, sizeof px, "%lld", (long long)ttl_ms);
        cmds[n] = (sess_cmd){0};
        cmd_str(&cmds[n], "PEXPIRE");
        cmd_arg(&cmds[n], k, kn);
        cmd_str(&cmds[n], px);
        if (nx)
            cmd_str(&cmds[n], "NX");
        n++;
        cmd_exec(&cmds[n++]);
    }
    gt_err rc = run(s, what, cmds, n, r, err);
    if (rc != GT_OK)
        return rc;
    if (ttl_ms <= 0) {
        *reply = r[0];
        return GT_OK;
    }
    const redisReply *x = NULL;
    if ((rc = exec_reply(s, what, r, n, &x, err)) == GT_OK)
        *reply = x->element[0];
    return rc;
}

/* ---- the API ---------------------------------------------------------------------- */

gt_sessions *gt_sessions_new(const gt_sessions_config *cfg, gt_error *err)
{
    gt_sessions *s = NULL;
    size_t n = 0;
    sigpipe_guard g;
    if (cfg == NULL) {
        gt_error_set(err, GT_EINVAL, "sessions: no configuration");
        goto fail;
    }
    while (cfg->sentinels && cfg->sentinels[n])
        n++;
    if (n == 0 && (cfg->host == NULL || cfg->host[0] == '\0')) {
        gt_error_setf(err, GT_EINVAL, "sessions.host", "sessions: set sentinels or host");
        goto fail;
    }
    if (n > 0 && (cfg->master_name == NULL || cfg->master_name[0] == '\0')) {
        gt_error_setf(err, GT_EINVAL, "sessions.master_name",
                      "sessions: sentinels are set but master_name is empty");
        goto fail;
    }
    if (cfg->timeout_ms < 0 || cfg->timeout_ms > SESS_MAX_TIMEOUT_MS) {
        gt_error_setf(err, GT_EINVAL, "sessions.timeout", "sessions: timeout %lld ms out of range",
                      (long long)cfg->timeout_ms);
        goto fail;
    }
    if (cfg->db < 0 || cfg->db > INT_MAX) {
        gt_error_setf(err, GT_EINVAL, "sessions.db", "sessions: db %lld out of range",
                      (long long)cfg->db);
        goto fail;
    }
    s = gt_xcalloc(1, sizeof *s);
    s->sentinels = gt_xcalloc(n ? n : 1, sizeof *s->sentinels);
    for (size_t i = 0; i < n; i++) {
        if (node_parse(cfg->sentinels[i], &s->sentinels[i], "sessions.sentinels", err) != GT_OK)
            goto fail;
        s->nsentinels++;
    }
    if (n == 0 && node_parse(cfg->host, &s->host, "sessions.host", err) != GT_OK)
        goto fail;
    s->master_name = gt_xstrdup(cfg->master_name);
    s->username = gt_xstrdup(cfg->username && cfg->username[0] ? cfg->username : NULL);
    s->password = gt_xstrdup(cfg->password);
    s->sentinel_username = gt_xstrdup(cfg->sentinel_username && cfg->sentinel_username[0]
                                          ? cfg->sentinel_username : NULL);
    s->sentinel_password = gt_xstrdup(cfg->sentinel_password && cfg->sentinel_password[0]
                                          ? cfg->sentinel_password : NULL);
    s->signing_key_set = cfg->signing_key_set;
    memcpy(s->signing_key, cfg->signing_key, sizeof s->signing_key);
    if (cfg->db != 0)
        snprintf(s->db, sizeof s->db, "%lld", (long long)cfg->db);
    s->timeout_ms = cfg->timeout_ms ? cfg->timeout_ms : SESS_DEFAULT_TIMEOUT_MS;
    s->prefix = gt_xstrdup(cfg->prefix ? cfg->prefix : "");
    s->prefix_len = strlen(s->prefix);
    s->sigpipe_ignored = sigpipe_ignored();
    sigpipe_block(&g, s->sigpipe_ignored);
    gt_err rc = discover(s, err);
    sigpipe_restore(&g);
    if (rc != GT_OK)
        goto fail;
    return s;
fail:
    gt_sessions_free(&s);
    return NULL;
}

void gt_sessions_free(gt_sessions **sp)
{
    if (sp == NULL || *sp == NULL)
        return;
    gt_sessions *s = *sp;
    drop(s);
    for (size_t i = 0; i < s->nsentinels; i++)
        node_free(&s->sentinels[i]);
    free(s->sentinels);
    node_free(&s->host);
    free(s->master_name);
    free(s->username);
    free(s->sentinel_username);
    if (s->password) {
        gt_wipe(s->password, strlen(s->password));
        free(s->password);
    }
    if (s->sentinel_password) {
        gt_wipe(s->sentinel_password, strlen(s->sentinel_password));
        free(s->sentinel_password);
    }
    gt_wipe(s->signing_key, sizeof s->signing_key);
    free(s->prefix);
    free(s);
    *sp = NULL;
}

gt_err gt_sessions_set(gt_sessions *s, const char *key, const char *value, int64_t ttl_ms,
                       gt_error *err)
{
    gt_err rc = check_args(s, "SET", key, ttl_ms, err);
    if (rc != GT_OK)
        return rc;
    if (value == NULL)
        return gt_error_set(err, GT_EINVAL, "sessions SET: no value");
    size_t kn = 0;
    char *k = key_make(s, key, &kn);
    char px[24];
    redisReply *r[1] = {NULL};
    sess_cmd cmd = {0};
    cmd_str(&cmd, "SET");
    cmd_arg(&cmd, k, kn);
    cmd_str(&cmd, value);
    if (ttl_ms > 0) {
        snprintf(px, sizeof px, "%lld", (long long)ttl_ms);
        cmd_str(&cmd, "PX");
        cmd_str(&cmd, px);
    }
    rc = run(s, "SET", &cmd, 1, r, err);
    if (rc != GT_OK)
        goto done;
    if (r[0]->type != REDIS_REPLY_STATUS)
        rc = reply_error(s, "SET", r[0], err);
done:
    replies_free(r, 1);
    free(k);
    return rc;
}

gt_err gt_sessions_get(gt_sessions *s, const char *key, char **value, gt_error *err)
{
    gt_err rc = check_args(s, "GET", key, 0, err);
    if (rc != GT_OK)
        return rc;
    if (value == NULL)
        return gt_error_set(err, GT_EINVAL, "sessions GET: no place for the value");
    size_t kn = 0;
    char *k = key_make(s, key, &kn);
    redisReply *r[1] = {NULL};
    sess_cmd cmd = {0};
    *value = NULL;
    cmd_str(&cmd, "GET");
    cmd_arg(&cmd, k, kn);
    rc = run(s, "GET", &cmd, 1, r, err);
    if (rc != GT_OK)
        goto done;
    if (r[0]->type == REDIS_REPLY_NIL)
        rc = gt_error_set(err, GT_ENOTFOUND, "session key not found (absent or expired)");
    else if (r[0]->type == REDIS_REPLY_STRING)
        *value = gt_xstrndup(r[0]->str, r[0]->len);
    else
        rc = reply_error(s, "GET", r[0], err);
done:
    replies_free(r, 1);
    free(k);
    return rc;
}

gt_err gt_sessions_expire(gt_sessions *s, const char *key, int64_t ttl_ms, gt_error *err)
{
    gt_err rc = check_args(s, "PEXPIRE", key, ttl_ms, err);
    if (rc != GT_OK)
        return rc;
    if (ttl_ms == 0)
        return gt_error_set(err, GT_EINVAL, "sessions PEXPIRE: TTL must be positive");
    size_t kn = 0;
    char *k = key_make(s, key, &kn);
    redisReply *r[1] = {NULL};
    sess_cmd cmd = {0};
    char px[24];
    snprintf(px, sizeof px, "%lld", (long long)ttl_ms);
    cmd_str(&cmd, "PEXPIRE");
    cmd_arg(&cmd, k, kn);
    cmd_str(&cmd, px);
    rc = run(s, "PEXPIRE", &cmd, 1, r, err);
    if (rc == GT_OK && r[0]->type != REDIS_REPLY_INTEGER)
        rc = reply_error(s, "PEXPIRE", r[0], err);
    else if (rc == GT_OK && r[0]->integer == 0)
        rc = gt_error_set(err, GT_ENOTFOUND, "session key not found (absent or expired)");
    replies_free(r, 1);
    free(k);
    return rc;
}

gt_err gt_sessions_get_touch(gt_sessions *s, const char *key, int64_t ttl_ms, char **value,
                             gt_error *err)
{
    gt_err rc = check_args(s, "GET", key, ttl_ms, err);
    if (rc != GT_OK)
        return rc;
    if (value == NULL)
        return gt_error_set(err, GT_EINVAL, "sessions GET+PEXPIRE: no place for the value");
    if (ttl_ms == 0)   /* "renew to no expiry" is not a sliding session: say so */
        return gt_error_set(err, GT_EINVAL, "sessions GET+PEXPIRE: TTL must be positive");
    size_t kn = 0;
    char *k = key_make(s, key, &kn);
    redisReply *r[4] = {NULL};
    const redisReply *got = NULL;
    *value = NULL;
    /* in one MULTI, so the TTL is renewed on exactly the value returned */
    sess_cmd get = {0};
    cmd_str(&get, "GET");
    cmd_arg(&get, k, kn);
    rc = run_expiring(s, "GET+PEXPIRE", &get, k, kn, ttl_ms, false, r, &got, err);
    if (rc != GT_OK)
        goto done;
    if (got->type == REDIS_REPLY_NIL)
        rc = gt_error_set(err, GT_ENOTFOUND, "session key not found (absent or expired)");
    else if (got->type == REDIS_REPLY_STRING)
        *value = gt_xstrndup(got->str, got->len);
    else
        rc = reply_error(s, "GET+PEXPIRE", got, err);
done:
    replies_free(r, 4);
    free(k);
    return rc;
}

gt_err gt_sessions_del(gt_sessions *s, const char *key, gt_error *err)
{
    gt_err rc = check_args(s, "DEL", key, 0, err);
    if (rc != GT_OK)
        return rc;
    size_t kn = 0;
    char *k = key_make(s, key, &kn);
    redisReply *r[1] = {NULL};
    sess_cmd cmd = {0};
    cmd_str(&cmd, "DEL");
    cmd_arg(&cmd, k, kn);
    rc = run(s, "DEL", &cmd, 1, r, err);
    if (rc == GT_OK && r[0]->type != REDIS_REPLY_INTEGER)
        rc = reply_error(s, "DEL", r[0], err);
    replies_free(r, 1);
    free(k);
    return rc;
}

gt_err gt_sessions_incr(gt_sessions *s, const char *key, int64_t ttl_ms, int64_t *value,
                        gt_error *err)
{
    gt_err rc = check_args(s, "INCR", key, ttl_ms, err);
    if (rc != GT_OK)
        return rc;
    if (value == NULL)
        return gt_error_set(err, GT_EINVAL, "sessions INCR: no place for the count");
    size_t kn = 0;
    char *k = key_make(s, key, &kn);
    redisReply *r[4] = {NULL};
    const redisReply *count = NULL;
    /* PEXPIRE ... NX (Redis 7) sets the TTL only when the key has none, i.e. on the first
     * increment of a window; in one MULTI so a counter never lives forever */
    sess_cmd incr = {0};
    cmd_str(&incr, "INCR");
    cmd_arg(&incr, k, kn);
    rc = run_expiring(s, "INCR", &incr, k, kn, ttl_ms, true, r, &count, err);
    if (rc != GT_OK)
        goto done;
    if (count->type == REDIS_REPLY_INTEGER)
        *value = count->integer;
    else
        rc = reply_error(s, "INCR", count, err);
done:
    replies_free(r, 4);
    free(k);
    return rc;
}

gt_err gt_sessions_sadd(gt_sessions *s, const char *key, const char *member, int64_t ttl_ms,
                        gt_error *err)
{
    gt_err rc = check_args(s, "SADD", key, ttl_ms, err);
    if (rc != GT_OK)
        return rc;
    if (member == NULL)
        return gt_error_set(err, GT_EINVAL, "sessions SADD: no member");
    size_t kn = 0;
    char *k = key_make(s, key, &kn);
    redisReply *r[4] = {NULL};
    const redisReply *added = NULL;
    sess_cmd sadd = {0};
    cmd_str(&sadd, "SADD");
    cmd_arg(&sadd, k, kn);
    cmd_str(&sadd, member);
    rc = run_expiring(s, "SADD", &sadd, k, kn, ttl_ms, false, r, &added, err);
    if (rc == GT_OK && added->type != REDIS_REPLY_INTEGER)
        rc = reply_error(s, "SADD", added, err);
    replies_free(r, 4);
    free(k);
    return rc;
}

gt_err gt_sessions_smembers(gt_sessions *s, const char *key, gt_strv *members, gt_error *err)
{
    gt_err rc = check_args(s, "SMEMBERS", key, 0, err);
    if (rc != GT_OK)
        return rc;
    if (members == NULL)
        return gt_error_set(err, GT_EINVAL, "sessions SMEMBERS: no place for the members");
    size_t kn = 0;
    char *k = key_make(s, key, &kn);
    redisReply *r[1] = {NULL};
    sess_cmd cmd = {0};
    cmd_str(&cmd, "SMEMBERS");
    cmd_arg(&cmd, k, kn);
    rc = run(s, "SMEMBERS", &cmd, 1, r, err);
    if (rc != GT_OK)
        goto done;
    if (r[0]->type != REDIS_REPLY_ARRAY) {
        rc = reply_error(s, "SMEMBERS", r[0], err);
        goto done;
    }
    for (size_t i = 0; i < r[0]->elements; i++) {
        if (r[0]->element[i]->type != REDIS_REPLY_STRING) {
            rc = reply_error(s, "SMEMBERS", r[0]->element[i], err);
            goto done;
        }
    }
    for (size_t i = 0; i < r[0]->elements; i++)
        gt_strv_push_owned(members, gt_xstrndup(r[0]->element[i]->str, r[0]->element[i]->len));
done:
    replies_free(r, 1);
    free(k);
    return rc;
}

gt_err gt_sessions_srem(gt_sessions *s, const char *key, const char *member, gt_error *err)
{
    gt_err rc = check_args(s, "SREM", key, 0, err);
    if (rc != GT_OK)
        return rc;
    if (member == NULL)
        return gt_error_set(err, GT_EINVAL, "sessions SREM: no member");
    size_t kn = 0;
    char *k = key_make(s, key, &kn);
    redisReply *r[1] = {NULL};
    sess_cmd cmd = {0};
    cmd_str(&cmd, "SREM");
    cmd_arg(&cmd, k, kn);
    cmd_str(&cmd, member);
    rc = run(s, "SREM", &cmd, 1, r, err);
    if (rc == GT_OK && r[0]->type != REDIS_REPLY_INTEGER)
        rc = reply_error(s, "SREM", r[0], err);
    replies_free(r, 1);
    free(k);
    return rc;
}

gt_err gt_sessions_ping(gt_sessions *s, gt_error *err)
{
    if (s == NULL)
        return gt_error_set(err, GT_EINVAL, "sessions PING: no handle");
    redisReply *r[1] = {NULL};
    sess_cmd cmd = {0};
    cmd_str(&cmd, "PING");
    gt_err rc = run(s, "PING", &cmd, 1, r, err);
    if (rc == GT_OK && !(r[0]->type == REDIS_REPLY_STATUS && strcmp(r[0]->str, "PONG") == 0))
        rc = reply_error(s, "PING", r[0], err);
    replies_free(r, 1);
    return rc;
}

const char *gt_sessions_master(const gt_sessions *s)
{
    return s ? s->master : "";
}

/* ---- session records ---------------------------------------------------------------- */

#define SESS_MAC_HEX (2 * 32)

gt_err gt_sessions_derive_key(const void *material, size_t len, const char *cluster_id,
                              unsigned char key[GT_SESSIONS_KEY_LEN], gt_error *err)
{
    static const char salt[] = "gantry sessions";
    gt_err rc = GT_OK;
    char *info = NULL;
    EVP_PKEY_CTX *ctx = NULL;
    size_t out = GT_SESSIONS_KEY_LEN;
    if (material == NULL || len < 32 || cluster_id == NULL)
        return gt_error_set(err, GT_EINVAL, "sessions: a signing key needs at least 32 bytes "
                                            "of key material and a cluster id");
    info = gt_xasprintf("session-mac v1 %s", cluster_id);
    ctx = EVP_PKEY_CTX_new_id(EVP_PKEY_HKDF, NULL);
    if (ctx == NULL || EVP_PKEY_derive_init(ctx) <= 0 ||
        EVP_PKEY_CTX_set_hkdf_md(ctx, EVP_sha256()) <= 0 ||
        EVP_PKEY_CTX_set1_hkdf_salt(ctx, (const unsigned char *)salt, (int)strlen(salt)) <= 0 ||
        EVP_PKEY_CTX_set1_hkdf_key(ctx, material, (int)len) <= 0 ||
        EVP_PKEY_CTX_add1_hkdf_info(ctx, (const unsigned char *)info, (int)strlen(info)) <= 0 ||
        EVP_PKEY_derive(ctx, key, &out) <= 0 || out != GT_SESSIONS_KEY_LEN)
        rc = gt_error_set(err, GT_EINTERNAL, "sessions: HKDF-SHA256 failed");
    EVP_PKEY_CTX_free(ctx);
    free(info);
    return rc;
}

/* One field of the MAC's input, length-prefixed so that no two records share an input. */
static void mac_field(gt_buf *b, const char *v)
{
    gt_buf_printf(b, "%zu:%s,", strlen(v), v);
}

/* Hex HMAC-SHA256 of the record for token_hash into out[65]. */
static void record_mac(const gt_sessions *s, const char *token_hash, const gt_session_record *r,
                       char out[SESS_MAC_HEX + 1])
{
    gt_buf b = {0};
    char exp[32];
    snprintf(exp, sizeof exp, "%lld", (long long)r->expires_at);
    mac_field(&b, "gantry-session-v1");
    mac_field(&b, token_hash);
    mac_field(&b, r->user);
    mac_field(&b, r->role);
    mac_field(&b, r->kind);
    mac_field(&b, r->must_change_password ? "1" : "0");
    mac_field(&b, exp);
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (HMAC(EVP_sha256(), s->signing_key, (int)sizeof s->signing_key,
             (const unsigned char *)b.data, b.len, mac, &n) == NULL || n != 32)
        n = 0; /* cannot happen with OpenSSL's SHA-256; an all-zero MAC matches nothing */
    memset(out, '0', SESS_MAC_HEX);
    for (unsigned int i = 0; i < n; i++)
        snprintf(out + 2 * i, 3, "%02x", mac[i]);
    out[SESS_MAC_HEX] = '\0';
    gt_wipe(mac, sizeof mac);
    gt_buf_free(&b);
}

static bool copy_field(char *dst, size_t n, const char *v)
{
    size_t len = v ? strlen(v) : 0;
    if (v == NULL || len == 0 || len >= n)
        return false;
    memcpy(dst, v, len + 1);
    return true;
}

gt_err gt_sessions_seal(const gt_sessions *s, const char *token_hash, const gt_session_record *r,
                        char **text, gt_error *err)
{
    *text = NULL;
    if (s == NULL || !s->signing_key_set)
        return gt_error_set(err, GT_EINVAL, "sessions: no signing key configured "
                                            "([sessions] signing_key_file)");
    if (token_hash == NULL || r == NULL || r->user[0] == '\0' || r->role[0] == '\0' ||
        r->kind[0] == '\0')
        return gt_error_set(err, GT_EINVAL, "sessions: a record needs a token hash, a user, "
                                            "a role and a kind");
    char mac[SESS_MAC_HEX + 1];
    record_mac(s, token_hash, r, mac);
    cJSON *o = cJSON_CreateObject();
    gt_json_set_str(o, "user", r->user);
    gt_json_set_str(o, "role", r->role);
    gt_json_set_str(o, "kind", r->kind);
    gt_json_set_bool(o, "must_change_password", r->must_change_password);
    gt_json_set_num(o, "expires_at", (double)r->expires_at);
    gt_json_set_str(o, "mac", mac);
    *text = gt_json_print(o);
    cJSON_Delete(o);
    return GT_OK;
}

gt_err gt_sessions_open(const gt_sessions *s, const char *token_hash, const char *text,
                        gt_session_record *r, gt_error *err)
{
    gt_err rc = GT_OK;
    cJSON *doc = NULL;
    const char *user = NULL, *role = NULL, *kind = NULL, *mac = NULL;
    gt_error e = {0};
    memset(r, 0, sizeof *r);
    if (s == NULL || !s->signing_key_set)
        return gt_error_set(err, GT_EINVAL, "sessions: no signing key configured "
                                            "([sessions] signing_key_file)");
    if (text == NULL || token_hash == NULL ||
        gt_json_parse(text, strlen(text), "session record", &doc, &e) != GT_OK ||
        !cJSON_IsObject(doc) || gt_json_str(doc, "$", "user", &user, &e) != GT_OK ||
        gt_json_str(doc, "$", "role", &role, &e) != GT_OK ||
        gt_json_str(doc, "$", "kind", &kind, &e) != GT_OK ||
        gt_json_opt_bool(doc, "$", "must_change_password", &r->must_change_password, &e) !=
            GT_OK ||
        gt_json_int(doc, "$", "expires_at", &r->expires_at, &e) != GT_OK ||
        gt_json_opt_str(doc, "$", "mac", &mac, &e) != GT_OK || !copy_field(r->user, sizeof r->user, user) ||
        !copy_field(r->role, sizeof r->role, role) || !copy_field(r->kind, sizeof r->kind, kind)) {
        rc = gt_error_set(err, GT_EINVAL, "sessions: not a session record%s%s",
                          e.message[0] ? ": " : "", e.message);
        goto fail;
    }
    char want[SESS_MAC_HEX + 1];
    record_mac(s, token_hash, r, want);
    bool ok = mac != NULL && strlen(mac) == SESS_MAC_HEX &&
              CRYPTO_memcmp(mac, want, SESS_MAC_HEX) == 0;
    gt_wipe(want, sizeof want);
    if (!ok) {
        rc = gt_error_set(err, GT_ECRYPTO, "sessions: the record of user %s %s", r->user,
                          mac ? "does not verify (forged, altered, or signed with another "
                                "[sessions] signing_key_file)" : "carries no signature");
        goto done;
    }
    goto done;
fail:
    memset(r, 0, sizeof *r);
done:
    cJSON_Delete(doc);
    return rc;
}
