/* gantry: the command line. Local mode runs everything in-process against the
 * embedded store; main.c wires configuration, store, API and commands together. */
#include <stdatomic.h>
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "api.h"
#include "cli.h"
#include "http.h"
#include "json.h"
#include "config.h"
#include "crypto.h"
#include "log.h"
#include "run.h"
#include "setup.h"
#include "store.h"

extern char **environ;

typedef struct main_ctx {
    gt_config *cfg;
    gt_store *store;
    gt_api *api;
    gt_run_options run;
    gt_http_client_config http;
    gt_strv hosts;          /* [client] host, split: "host" or "host:port" each */
    int64_t *ports;
    size_t cur;             /* the host that answered last */
    char *token_path;
} main_ctx;

/* Set by SIGINT/SIGTERM: a running service is stopped and recorded as canceled. */
static atomic_int canceled;

static void on_signal(int sig)
{
    (void)sig;
    canceled = 1;
}

static void local_call(cli *c, const char *method, const char *path, const char *query,
                       const cJSON *body, gt_api_response *resp)
{
    main_ctx *m = c->ctx;
    char *text = body ? cJSON_PrintUnformatted(body) : NULL;
    gt_api_handle_key(m->api, method, path, query, text, text ? strlen(text) : 0,
                      c->idempotency_key, resp);
    if (text)
        gt_wipe(text, strlen(text)); /* may carry a secret value */
    free(text);
}

/* A standby controller's 503: nothing ran there, so the next host may be asked. */
static bool is_standby(int status, const char *reply)
{
    if (status != 503 || reply == NULL)
        return false;
    cJSON *b = cJSON_Parse(reply);
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(b, "status");
    bool yes = cJSON_IsString(st) && strcmp(st->valuestring, "standby") == 0;
    cJSON_Delete(b);
    return yes;
}

/* Client mode: the same requests, over HTTP(S) to gantry-controller; the hosts of
 * [client] host in turn, from the one that answered last, past standbys and (for a
 * request safe to send again) hosts that do not answer; three rounds at most. */
static void remote_call(cli *c, const char *method, const char *path, const char *query,
                        const cJSON *body, gt_api_response *resp)
{
    main_ctx *m = c->ctx;
    char *target = query ? gt_xasprintf("%s?%s", path, query) : gt_xstrdup(path);
    char *text = body ? cJSON_PrintUnformatted(body) : NULL, *reply = NULL;
    int status = 0;
    gt_error e = {0};
    gt_http_client_config hc = m->http;
    hc.idempotency_key = c->idempotency_key;
    /* a failed connection may have lost the answer of a request that ran: only one the
     * server runs at most once (a read, or by its key) is safe to send again */
    bool resend = hc.idempotency_key || strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
    gt_err rc = GT_EUNAVAIL;
    size_t n = m->hosts.n ? m->hosts.n : 1;
    for (int round = 1;; round++) {
        bool done = false, standby = false;
        for (size_t k = 0; k < n && !done; k++) {
            size_t h = (m->cur + k) % n;
            if (m->hosts.n) {
                hc.host = m->hosts.v[h];
                hc.port = m->ports[h];
            }
            free(reply);
            reply = NULL;
            e = (gt_error){0};
            bool unsent = false;
            rc = gt_http_request_send_ex(&hc, method, target, c->token, text,
                                         text ? strlen(text) : 0, &status, &reply, &unsent, &e);
            standby = rc == GT_OK && is_standby(status, reply);
            bool next = standby || (rc == GT_EUNAVAIL && (resend || unsent) && n > 1);
            if (!next || (c->interrupted && *c->interrupted)) {
                m->cur = h;
                done = true;
            } else if (n > 1) {
                fprintf(c->err, "gantry: %s:%lld %s; trying the next host\n", hc.host,
                        (long long)hc.port, rc == GT_OK ? "is a standby" : "does not answer");
            }
        }
        if (done || !(resend || standby) || round == 3 || (c->interrupted && *c->interrupted))
            break;
        fprintf(c->err, "gantry: %s; trying again\n",
                rc == GT_OK ? "no active controller answered" : e.message);
        sleep(1);
    }
    if (text)
        gt_wipe(text, strlen(text));
    free(text);
    free(target);
    resp->status = status;
    resp->body = NULL;
    if (rc == GT_OK && reply)
        resp->body = cJSON_Parse(reply);
    if (rc != GT_OK || resp->body == NULL) {
        cJSON *b = cJSON_CreateObject();
        cJSON *err = cJSON_AddObjectToObject(b, "error");
        gt_json_set_str(err, "code", "unavailable");
        char *msg = rc != GT_OK ? gt_xstrdup(e.message)
                                : gt_xasprintf("the server answered %d without a JSON body", status);
        gt_json_set_str(err, "message", msg);
        free(msg);
        resp->status = rc != GT_OK ? 503 : (status >= 400 ? status : 502);
        resp->body = b;
    }
    if (resp->status == 401 && c->token) {
        cJSON *err = cJSON_GetObjectItemCaseSensitive(resp->body, "error");
        cJSON *msg = cJSON_GetObjectItemCaseSensitive(err, "message");
        if (cJSON_IsString(msg)) {
            char *more = gt_xasprintf("%s; log in again with: gantry login", msg->valuestring);
            gt_json_set_str(err, "message", more);
            free(more);
        }
    }
    free(reply);
}

static int store_token(cli *c, const char *token)
{
    main_ctx *m = c->ctx;
    gt_error e = {0};
    if (token == NULL) {
        if (unlink(m->token_path) != 0 && errno != ENOENT) {
            fprintf(c->err, "gantry: %s: %s\n", m->token_path, strerror(errno));
            return CLI_ERROR;
        }
        return CLI_OK;
    }
    if (gt_write_file_atomic(m->token_path, token, strlen(token), 0600, &e) != GT_OK) {
        fprintf(c->err, "gantry: saving the token: %s\n", e.message);
        return CLI_ERROR;
    }
    return CLI_OK;
}

static int open_client(cli *c, main_ctx *m)
{
    const gt_config *cfg = m->cfg;
    m->http = (gt_http_client_config){
        .host = cfg->client.host,
        .port = cfg->client.port,
        .use_tls = cfg->client.use_tls,
        .ca_certificate_file = cfg->application.ca_certificate_file,
        .certificate_file = cfg->client.certificate_file,
        .private_key_file = cfg->client.private_key_file,
    };
    /* [client] host may list several controllers: "host" (with [client] port) or host:port */
    char *list = gt_xstrdup(cfg->client.host), *save = NULL;
    for (char *h = strtok_r(list, " \t", &save); h; h = strtok_r(NULL, " \t", &save)) {
        int64_t port = cfg->client.port;
        char *colon = strrchr(h, ':');
        bool v6 = h[0] == '[';
        if (colon && (v6 ? colon > strchr(h, ']') : strchr(h, ':') == colon)) {
            *colon = '\0';
            port = strtoll(colon + 1, NULL, 10);   /* checked by the config's validator */
        }
        if (v6 && h[strlen(h) - 1] == ']') {
            h[strlen(h) - 1] = '\0';
            h++;
        }
        m->ports = gt_xrealloc(m->ports, (m->hosts.n + 1) * sizeof *m->ports);
        m->ports[m->hosts.n] = port;
        gt_strv_push(&m->hosts, h);
    }
    free(list);
    m->token_path = gt_path_join(cfg->application.working_dir, "token");
    char *tok = NULL;
    gt_error e = {0};
    if (gt_read_file(m->token_path, 4096, &tok, NULL, &e) == GT_OK) {
        tok[strcspn(tok, "\r\n")] = '\0';
        c->token = tok;
    }
    c->client = true;
    c->call = remote_call;
    return CLI_OK;
}

static void show_config(cli *c)
{
    main_ctx *m = c->ctx;
    const char *path = gt_config_path(m->cfg);
    fprintf(c->out, "config file: %s\n", path ? path : "(none: defaults and environment)");
    gt_config_dump(m->cfg, c->out);
}

static int load_config(cli *c, main_ctx *m)
{
    gt_error e = {0};
    if (gt_setup_load(c->config_path, environ, &m->cfg, &e) != GT_OK) {
        fprintf(c->err, "gantry: configuration: %s\n", e.message);
        return CLI_USAGE;
    }
    /* The CLI's console shows warnings and errors; [log] level = debug shows more. */
    gt_log_level level = m->cfg->log.level <= GT_LOG_DEBUG ? GT_LOG_DEBUG
                         : m->cfg->log.level < GT_LOG_WARN ? GT_LOG_WARN : m->cfg->log.level;
    gt_log_setup(stderr, level, m->cfg->log.console_json, "gantry");
    return CLI_OK;
}


static int open_backend(cli *c, main_ctx *m)
{
    const gt_config *cfg = m->cfg;
    gt_error e = {0};
    if (cfg->application.mode != GT_MODE_LOCAL && cfg->application.mode != GT_MODE_CLIENT) {
        fprintf(c->err, "gantry: [application] mode = %s is for the daemons; the gantry CLI runs in "
                        "local or client mode\n", gt_config_mode_name(cfg->application.mode));
        return CLI_USAGE;
    }
    if (gt_mkdir_p(cfg->application.working_dir, 0700, &e) != GT_OK) {
        fprintf(c->err, "gantry: working directory: %s\n", e.message);
        return CLI_ERROR;
    }
    if (cfg->application.mode == GT_MODE_CLIENT)
        return open_client(c, m);
    gt_secret_protect_process(); /* local mode opens the key: no core dumps, ptrace or /proc reads */
    gt_err rc = gt_setup_open_store(cfg, &m->store, &e);
    if (rc != GT_OK) {
        fprintf(c->err, "gantry: store: %s\n", e.message);
        return rc == GT_EINVAL ? CLI_USAGE : CLI_ERROR;
    }
    gt_setup_run_options(cfg, environ, &m->run);
    gt_api_deps deps = {
        .store = m->store,
        .key_file = cfg->secrets.encrypt_key_file,
        .key_file_explicit = gt_setup_key_file_explicit(cfg),
        .run = &m->run,
        .cancel = &canceled,
        .runner_name = "local",
    };
    if ((m->api = gt_api_new(&deps, &e)) == NULL) {
        fprintf(c->err, "gantry: store: %s\n", e.message);
        return CLI_ERROR;
    }
    gt_api_reap_local(m->api);
    return CLI_OK;
}

static int prepare(cli *c, bool backend)
{
    main_ctx *m = c->ctx;
    int rc = m->cfg ? CLI_OK : load_config(c, m);
    if (rc == CLI_OK && backend && m->api == NULL && !c->client)
        rc = open_backend(c, m);
    return rc;
}

int main(int argc, char **argv)
{
    main_ctx m = {0};
    cli c = {
        .format = CLI_TABLE,
        .out = stdout,
        .err = stderr,
        .call = local_call,
        .prepare = prepare,
        .show_config = show_config,
        .store_token = store_token,
        .interrupted = &canceled,
        .ctx = &m,
    };
    umask(077);
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    /* global flags before the command */
    int i = 1;
    int rc = CLI_OK;
    for (; i < argc && argv[i][0] == '-' && rc == CLI_OK; i++) {
        const char *w = argv[i];
        if (strcmp(w, "-h") == 0 || strcmp(w, "--help") == 0) {
            cli_print_usage(&c);
            return CLI_OK;
        }
        if (strcmp(w, "--version") == 0) {
            printf("gantry %s\n", GANTRY_VERSION);
            return CLI_OK;
        }
        const char *name = NULL, *value = NULL;
        if (strncmp(w, "-o", 2) == 0 && w[1] == 'o') {
            name = "output";
            value = w[2] ? w + 2 : (i + 1 < argc ? argv[++i] : NULL);
        } else if (strncmp(w, "--", 2) == 0) {
            const char *eq = strchr(w, '=');
            size_t n = eq ? (size_t)(eq - w - 2) : strlen(w + 2);
            name = (n == 6 && strncmp(w + 2, "config", 6) == 0)   ? "config"
                   : (n == 6 && strncmp(w + 2, "output", 6) == 0) ? "output"
                                                                  : NULL;
            if (name)
                value = eq ? eq + 1 : (i + 1 < argc ? argv[++i] : NULL);
        }
        if (name == NULL) {
            fprintf(stderr, "gantry: unknown global flag %s (see gantry --help)\n", w);
            rc = CLI_USAGE;
        } else if (value == NULL) {
            fprintf(stderr, "gantry: --%s needs a value\n", name);
            rc = CLI_USAGE;
        } else if (!cli_global(&c, name, value)) {
            rc = CLI_USAGE;
        }
    }
    if (rc == CLI_OK)
        rc = cli_dispatch(&c, argc - i, argv + i);
    if (fflush(stdout) != 0 && errno != EPIPE && rc == CLI_OK)
        rc = CLI_ERROR;
    gt_api_free(&m.api);
    gt_store_free(&m.store);
    gt_config_free(&m.cfg);
    if (c.token)
        gt_wipe(c.token, strlen(c.token));
    free(c.token);
    free(m.token_path);
    gt_strv_free(&m.hosts);
    free(m.ports);
    return rc;
}
