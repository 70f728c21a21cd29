/* gantry: the command line. Local mode runs everything in-process against the
 * embedded store; main.c wires configuration, store, API and commands together. */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "api.h"
#include "cli.h"
#include "config.h"
#include "log.h"
#include "run.h"
#include "store.h"

extern char **environ;

typedef struct main_ctx {
    gt_config *cfg;
    gt_store *store;
    gt_api *api;
    gt_run_options run;
} main_ctx;

/* Set by SIGINT/SIGTERM: a running service is stopped and recorded as canceled. */
static volatile sig_atomic_t canceled;

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
    gt_api_handle(m->api, method, path, query, text, text ? strlen(text) : 0, resp);
    if (text)
        gt_wipe(text, strlen(text)); /* may carry a secret value */
    free(text);
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
    m->cfg = gt_config_new();
    if (gt_config_load(m->cfg, c->config_path, environ, &e) != GT_OK ||
        gt_config_finish(m->cfg, &e) != GT_OK) {
        fprintf(c->err, "gantry: configuration: %s\n", e.message);
        return CLI_USAGE;
    }
    /* The CLI's console shows warnings and errors; [log] level = debug shows more. */
    gt_log_level level = m->cfg->log.level <= GT_LOG_DEBUG ? GT_LOG_DEBUG
                         : m->cfg->log.level < GT_LOG_WARN ? GT_LOG_WARN : m->cfg->log.level;
    gt_log_setup(stderr, level, m->cfg->log.console_json, "gantry");
    return CLI_OK;
}

static void run_options(const gt_config *cfg, gt_run_options *o)
{
    *o = (gt_run_options){
        .working_dir = cfg->application.working_dir,
        .git = cfg->runner.git,
        .python = cfg->runner.python,
        .ansible_playbook = cfg->runner.ansible_playbook,
        .output_limit = (size_t)cfg->runner.output_limit,
        .kill_grace_ms = cfg->runner.kill_grace_period,
        .default_timeout_ms = cfg->runner.default_timeout,
        .fetch_timeout_ms = cfg->runner.fetch_timeout,
        .pip_index_url = cfg->runner.pip_index_url,
        .pip_extra_index_url = cfg->runner.pip_extra_index_url,
        .pip_find_links = cfg->runner.pip_find_links,
        .pip_trusted_host = cfg->runner.pip_trusted_host,
        .pip_no_index = cfg->runner.pip_no_index,
        .environ = environ,
    };
}

static int open_backend(cli *c, main_ctx *m)
{
    const gt_config *cfg = m->cfg;
    gt_error e = {0};
    if (cfg->application.mode != GT_MODE_LOCAL) {
        fprintf(c->err, "gantry: [application] mode = %s: the gantry CLI runs in local mode in this "
                        "release; client mode arrives with gantry-controller\n",
                gt_config_mode_name(cfg->application.mode));
        return CLI_USAGE;
    }
    if (gt_mkdir_p(cfg->application.working_dir, 0700, &e) != GT_OK) {
        fprintf(c->err, "gantry: working directory: %s\n", e.message);
        return CLI_ERROR;
    }
    switch (cfg->store.backend) {
    case GT_BACKEND_LOCAL:
        m->store = gt_store_open_local(cfg->store.path, &e);
        break;
    case GT_BACKEND_MEMORY:
        m->store = gt_store_open_memory(&e);
        break;
    default:
        fprintf(c->err, "gantry: [store] backend = %s is for server and runner nodes; local mode "
                        "uses local or memory\n",
                gt_config_backend_name(cfg->store.backend));
        return CLI_USAGE;
    }
    if (m->store == NULL) {
        fprintf(c->err, "gantry: store: %s\n", e.message);
        return CLI_ERROR;
    }
    run_options(cfg, &m->run);
    const char *src = gt_config_source(cfg, "secrets", "encrypt_key_file");
    gt_api_deps deps = {
        .store = m->store,
        .key_file = cfg->secrets.encrypt_key_file,
        .key_file_explicit = src && strncmp(src, "derived", 7) != 0,
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
    if (rc == CLI_OK && backend && m->api == NULL)
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
    return rc;
}
