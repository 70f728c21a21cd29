/* gantry-controller: the REST API. main.c wires configuration, store, sessions,
 * bus and the HTTP server together and owns the event loop. */
#include <event2/event.h>
#include <event2/thread.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "controller.h"
#include "crypto.h"
#include "http.h"
#include "log.h"
#include "setup.h"
#include "store.h"
#include "util.h"

extern char **environ;

/* Measured: with an arena per HTTP worker (glibc's default) the controller holds 0.5 MiB
 * more when idle, and 5.5 MiB more after 40 bodies of 0.9 MiB (each worker's arena keeps
 * its own free pages), than with two shared ones; authenticated wrk req/s at two cores
 * was within the noise (22.1k vs 23.3k, means of four 5 s runs). */
enum { CTL_ARENA_MAX = 2 };

static int open_store(void *arg, gt_store **store, gt_error *err)
{
    const gt_config *cfg = arg;
    /* one memory store per thread would split the data */
    if (cfg->store.backend == GT_BACKEND_MEMORY)
        return gt_error_set(err, GT_EINVAL, "[store] backend = memory cannot be shared by the "
                                            "controller's threads; use local");
    return gt_setup_open_store(cfg, store, err);
}

typedef struct stopping {
    struct event_base *base;
    gt_ha *ha;
} stopping;

static void on_signal(evutil_socket_t fd, short what, void *arg)
{
    stopping *st = arg;
    (void)fd;
    (void)what;
    gt_info("shutting down");
    /* first give the lease up, so a standby takes over while requests here finish */
    gt_ha_resign(st->ha);
    event_base_loopexit(st->base, NULL);
}

static void usage(FILE *f)
{
    fprintf(f, "Usage: gantry-controller [--config FILE] [--routes] [--check-config]\n"
               "Serves Gantry's REST API ([application] mode = server).\n"
               "  --config FILE    configuration file (default: $GANTRY_CONFIG, ~/.gantry/gantry.conf,\n"
               "                   /etc/gantry/gantry.conf)\n"
               "  --check-config   load and check the configuration, then exit\n"
               "  --routes         print every route served, then exit\n");
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'}, {"routes", no_argument, NULL, 'r'},
        {"check-config", no_argument, NULL, 'k'}, {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    /* before any thread: the HTTP workers share CTL_ARENA_MAX arenas, not one each */
    gt_malloc_tune(CTL_ARENA_MAX, 0);
    const char *config_path = NULL;
    bool check_only = false;
    for (int o; (o = getopt_long(argc, argv, "h", opts, NULL)) != -1;) {
        switch (o) {
        case 'c': config_path = optarg; break;
        case 'r': gt_ctl_print_routes(stdout); return 0;
        case 'k': check_only = true; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "gantry-controller: unexpected argument \"%s\"\n", argv[optind]);
        return 2;
    }
    gt_error e = {0};
    gt_config *cfg = NULL;
    if (gt_setup_load(config_path, environ, &cfg, &e) != GT_OK) {
        fprintf(stderr, "gantry-controller: configuration: %s\n", e.message);
        return 2;
    }
    gt_secret_protect_process(); /* holds keys: no core dumps, ptrace or /proc reads */
    if (cfg->application.mode != GT_MODE_SERVER) {
        fprintf(stderr, "gantry-controller: [application] mode is %s; the controller needs server\n",
                gt_config_mode_name(cfg->application.mode));
        gt_config_free(&cfg);
        return 2;
    }
    if (check_only) {
        printf("configuration OK (%s)\n", gt_config_path(cfg) ? gt_config_path(cfg) : "defaults");
        gt_config_free(&cfg);
        return 0;
    }
    gt_log_setup(stderr, cfg->log.level, cfg->log.console_json, "controller");
    signal(SIGPIPE, SIG_IGN);
    gt_raise_fd_limit();
    evthread_use_pthreads();
    if (gt_mkdir_p(cfg->application.working_dir, 0700, &e) != GT_OK) {
        fprintf(stderr, "gantry-controller: %s\n", e.message);
        gt_config_free(&cfg);
        return 1;
    }

    gt_run_options run;
    gt_setup_run_options(cfg, environ, &run);
    char host[128] = "controller";
    gethostname(host, sizeof host);
    char *node = gt_xasprintf("%s:%lld", host, (long long)cfg->server.port);
    char *prefix = gt_xasprintf("gantry:%s:", cfg->application.cluster_id);
    int workers = cfg->server.worker_threads > 0 ? (int)cfg->server.worker_threads : 4;
    gt_ctl_config cc = {
        .node = node,
        .cluster_id = cfg->application.cluster_id,
        .open_store = open_store,
        .open_store_arg = cfg,
        .key_file = cfg->secrets.encrypt_key_file,
        .key_file_explicit = gt_setup_key_file_explicit(cfg),
        .run = &run,
        .token_ttl_ms = cfg->sessions.token_ttl,
        .http_workers = workers,
        .exec_workers = (int)cfg->runner.capacity,
        .distributed = cfg->server.distributed_execution,
    };
    int rc = 1;
    struct event_base *base = event_base_new();
    stopping st = {.base = base};
    struct event *sigint = evsignal_new(base, SIGINT, on_signal, &st);
    struct event *sigterm = evsignal_new(base, SIGTERM, on_signal, &st);
    event_add(sigint, NULL);
    event_add(sigterm, NULL);
    gt_http_server *http = NULL;
    gt_ctl *ctl = NULL;
    gt_ha *ha = NULL;
    char *address = cfg->server.advertise_address
                        ? gt_xstrdup(cfg->server.advertise_address)
                        : gt_xasprintf("%s:%lld", host, (long long)cfg->server.port);
    if (cfg->server.ha_enabled) {
        gt_ha_config hc = {.node = node, .address = address, .ttl_ms = cfg->server.ha_lease_ttl,
                           .open_store = open_store, .open_store_arg = cfg};
        if ((ha = gt_ha_new(&hc, &e)) == NULL) {
            fprintf(stderr, "gantry-controller: %s\n", e.message);
            goto done;
        }
        cc.ha = st.ha = ha;
    }
    if (gt_setup_sessions_config(cfg, prefix, &cc.sessions, &e) != GT_OK ||
        gt_setup_bus_config(cfg, &cc.bus, &e) != GT_OK || (ctl = gt_ctl_new(&cc, &e)) == NULL) {
        fprintf(stderr, "gantry-controller: %s\n", e.message);
        goto done;
    }
    gt_http_server_config hc = {
        .listen_address = cfg->server.listen_address,
        .port = cfg->server.port,
        .use_tls = cfg->server.use_tls,
        .certificate_file = cfg->server.certificate_file,
        .private_key_file = cfg->server.private_key_file,
        .client_cert_auth = cfg->server.client_cert_auth,
        .ca_certificate_file = cfg->application.ca_certificate_file,
        .max_body_size = cfg->server.max_body_size,
        .max_connections = cfg->server.max_connections,
        .max_buffered_bytes = cfg->server.max_buffered_bytes,
        .workers = workers,
        .handler = gt_ctl_handle,
        .arg = ctl,
    };
    if ((http = gt_http_server_new(base, &hc, &e)) == NULL) {
        fprintf(stderr, "gantry-controller: %s\n", e.message);
        goto done;
    }
    /* the readiness line tests and supervisors wait for */
    gt_info("gantry-controller ready on %s://%s:%d%s", cfg->server.use_tls ? "https" : "http",
            cfg->server.listen_address, gt_http_server_port(http),
            ha == NULL ? "" : gt_ha_is_active(ha, NULL, 0) ? " (active)" : " (standby)");
    event_base_dispatch(base);
    rc = 0;
done:
    gt_ha_resign(ha);
    gt_http_server_free(&http);
    gt_ctl_free(&ctl);
    gt_ha_free(&ha);
    free(address);
    event_free(sigint);
    event_free(sigterm);
    event_base_free(base);
    free(prefix);
    free(node);
    gt_config_free(&cfg);
    return rc;
}
