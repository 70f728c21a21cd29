/* gantry-tokend: users, passwords, login tokens and API keys. main.c wires the
 * configuration, the store, Redis and the bus to tokend.c and serves the auth RPC
 * queue "gantry.<cluster_id>.auth" until SIGTERM or SIGINT.
 *
 * Everything runs on the main thread: the bus, the store and Redis are synchronous
 * and each is used from this one thread only, so there is no event loop to feed. */
#include <stdatomic.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bus.h"
#include "config.h"
#include "crypto.h"
#include "log.h"
#include "setup.h"
#include "sessions.h"
#include "store.h"
#include "tokend.h"
#include "util.h"

extern char **environ;

/* Blocks from this size up get a mapping of their own: argon2id's 19 MiB are far above it. */
#define TOKEND_MMAP_THRESHOLD ((size_t)1 << 20)

/* Set from the signal handler; gt_bus_serve_rpc polls it. */
static atomic_int stop_requested;

static void on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

typedef struct options {
    const char *config;
    bool recover_admin;
    bool help;
} options;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: gantry-tokend [--config FILE] [--recover-admin-user]\n"
            "\n"
            "Serves users, passwords, login tokens and API keys to the controllers over the\n"
            "auth RPC queue gantry.<cluster_id>.auth (RabbitMQ), keeping sessions in Redis.\n"
            "\n"
            "  --config FILE          configuration file (default: $GANTRY_CONFIG,\n"
            "                         ~/.gantry/gantry.conf, /etc/gantry/gantry.conf)\n"
            "  --recover-admin-user   give user admin a new temporary password, written to\n"
            "                         <working_dir>/initial-admin-password (mode 0600),\n"
            "                         revoke admin's sessions and exit\n"
            "  --help                 this text\n");
}

static bool parse_args(int argc, char **argv, options *o)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            o->help = true;
        } else if (strcmp(a, "--recover-admin-user") == 0) {
            o->recover_admin = true;
        } else if (strcmp(a, "--config") == 0) {
            if (i + 1 >= argc || argv[i + 1][0] == '\0') {
                fprintf(stderr, "gantry-tokend: --config needs a file\n");
                return false;
            }
            o->config = argv[++i];
        } else if (strncmp(a, "--config=", 9) == 0 && a[9] != '\0') {
            o->config = a + 9;
        } else {
            fprintf(stderr, "gantry-tokend: unknown argument %s (see --help)\n", a);
            return false;
        }
    }
    return true;
}

static gt_store *open_store(const gt_config *cfg, gt_error *err)
{
    gt_store *store = NULL;
    if (cfg->store.backend == GT_BACKEND_MEMORY)
        gt_warn("[store] backend = memory: users vanish when gantry-tokend exits");
    if (gt_mkdir_p(cfg->application.working_dir, 0700, err) != GT_OK ||
        gt_setup_open_store(cfg, &store, err) != GT_OK)
        return NULL;
    return store;
}

static gt_sessions *open_sessions(const gt_config *cfg, const char *prefix, gt_error *err)
{
    gt_sessions_config sc;
    if (gt_setup_sessions_config(cfg, prefix, &sc, err) != GT_OK)
        return NULL;
    return gt_sessions_new(&sc, err);
}

static gt_bus *open_bus(const gt_config *cfg, gt_error *err)
{
    gt_bus_config bc;
    if (gt_setup_bus_config(cfg, &bc, err) != GT_OK)
        return NULL;
    return gt_bus_connect(&bc, err);
}

/* The bus calls back with a void *; tokend.c keeps its typed signature. */
static gt_err serve_one(void *arg, const char *user_id, const char *body, size_t len,
                        char **reply, size_t *reply_len)
{
    return gt_tokend_handle(arg, user_id, body, len, reply, reply_len);
}

int main(int argc, char **argv)
{
    options opt = {0};
    gt_error err = {0};
    gt_config *cfg = NULL;
    gt_store *store = NULL;
    gt_sessions *sessions = NULL;
    gt_tokend *tokend = NULL;
    gt_bus *bus = NULL;
    char *prefix = NULL, *queue = NULL, *password = NULL, *pwfile = NULL;
    const char *stage = "start-up";
    int status = 1;

    /* argon2id takes 19 MiB per hash: with a fixed threshold it is a mapping of its own,
     * unmapped when the hash is done, instead of staying in the heap after the first login */
    gt_malloc_tune(0, TOKEND_MMAP_THRESHOLD);
    gt_log_setup(stderr, GT_LOG_INFO, false, "gantry-tokend");
    if (!parse_args(argc, argv, &opt))
        goto done;
    if (opt.help) {
        usage(stdout);
        status = 0;
        goto done;
    }

    stage = "configuration";
    if (gt_setup_load(opt.config, environ, &cfg, &err) != GT_OK)
        goto fail;
    gt_secret_protect_process(); /* holds keys: no core dumps, ptrace or /proc reads */
    gt_log_setup(stderr, cfg->log.level, cfg->log.console_json, "gantry-tokend");
    if (cfg->application.mode != GT_MODE_SERVER)
        gt_warn("[application] mode = %s: gantry-tokend belongs to server mode",
                gt_config_mode_name(cfg->application.mode));
    prefix = gt_xasprintf("gantry:%s:", cfg->application.cluster_id);
    pwfile = gt_path_join(cfg->application.working_dir, "initial-admin-password");
    queue = gt_xasprintf("gantry.%s.auth", cfg->application.cluster_id);

    stage = "store";
    if ((store = open_store(cfg, &err)) == NULL)
        goto fail;
    stage = "sessions (Redis)";
    if ((sessions = open_sessions(cfg, prefix, &err)) == NULL)
        goto fail;
    stage = "tokend";
    gt_tokend_config tc = {
        .store = store,
        .sessions = sessions,
        .token_ttl_ms = cfg->sessions.token_ttl,
        .api_key_ttl_ms = cfg->server.api_key_expiration,
        .controller_users = cfg->tokend.controller_users.v,
        .admin_password_file = pwfile,
    };
    if ((tokend = gt_tokend_new(&tc, &err)) == NULL)
        goto fail;

    if (opt.recover_admin) {
        stage = "recover-admin-user";
        if (gt_tokend_recover_admin(tokend, &password, &err) != GT_OK)
            goto fail;
        /* The password is in the file (0600), not on the terminal or in a log. */
        printf("the new temporary password of user admin is in %s (mode 0600): read it, "
               "delete the file, and change the password at the first login\n", pwfile);
        fflush(stdout);
        status = 0;
        goto done;
    }

    stage = "first-start bootstrap";
    if (gt_tokend_bootstrap(tokend, NULL, &err) != GT_OK)
        goto fail;
    stage = "bus (RabbitMQ)";
    if ((bus = open_bus(cfg, &err)) == NULL)
        goto fail;
    /* Declared before the readiness line, so a request sent right after it is
     * queued rather than dropped by the default exchange. */
    if (gt_bus_declare_queue(bus, queue, false, &err) != GT_OK)
        goto fail;

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);

    gt_info("serving %s; store %s, Redis %s, tokens live %lld min, API keys %lld min", queue,
            gt_store_driver(store), gt_sessions_master(sessions),
            (long long)(cfg->sessions.token_ttl / 60000),
            (long long)(cfg->server.api_key_expiration / 60000));
    gt_info("gantry-tokend ready");
    stage = "serving";
    if (gt_bus_serve_rpc(bus, queue, serve_one, tokend, &stop_requested, &err) != GT_OK)
        goto fail;
    gt_info("gantry-tokend stopping");
    status = 0;
    goto done;

fail:
    /* Plain stderr, not the log: it must show whatever [log] level says. */
    fprintf(stderr, "gantry-tokend: %s: %s\n", stage,
            err.message[0] ? err.message : gt_strerror(err.code));
done:
    if (password) {
        gt_wipe(password, strlen(password));
        free(password);
    }
    gt_bus_free(&bus);
    gt_tokend_free(&tokend);
    gt_sessions_free(&sessions);
    gt_store_free(&store);
    free(pwfile);
    free(queue);
    free(prefix);
    gt_config_free(&cfg);
    return status;
}
