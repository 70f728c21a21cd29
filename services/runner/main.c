/* gantry-runner ([application] mode = runner): wires configuration, store and bus
 * to the runner module and serves until SIGTERM, then drains. */
#include <stdatomic.h>
#include <stdbool.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "crypto.h"
#include "log.h"
#include "runner.h"
#include "setup.h"

extern char **environ;

static atomic_int stop;

static void on_signal(int sig)
{
    (void)sig;
    stop = 1;
}

static int open_store(void *arg, gt_store **store, gt_error *err)
{
    const gt_config *cfg = arg;
    if (cfg->store.backend == GT_BACKEND_MEMORY)
        return gt_error_set(err, GT_EINVAL, "[store] backend = memory cannot be shared with the "
                                            "controllers; use local (one machine) or a shared store");
    return gt_setup_open_store(cfg, store, err);
}

/* --check-config: what can be known without the network: the file, the mode, a store
 * that can be shared, a broker, and the key file when one is named (a missing or short
 * key would only show at the first run with a secret). */
static int check_config(const gt_config *cfg)
{
    gt_error e = {0};
    gt_bus_config bc;
    gt_key *key = NULL;
    if (cfg->store.backend == GT_BACKEND_MEMORY) {
        fprintf(stderr, "gantry-runner: [store] backend = memory cannot be shared with the "
                        "controllers\n");
        return 2;
    }
    if (gt_setup_bus_config(cfg, &bc, &e) != GT_OK) {
        fprintf(stderr, "gantry-runner: %s\n", e.message);
        return 2;
    }
    if (gt_setup_key_file_explicit(cfg)) {
        if ((key = gt_key_load(cfg->secrets.encrypt_key_file, &e)) == NULL) {
            fprintf(stderr, "gantry-runner: %s\n", e.message);
            return 2;
        }
        gt_key_free(&key);
    }
    printf("configuration OK (%s)\n", gt_config_path(cfg) ? gt_config_path(cfg) : "defaults");
    return 0;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'}, {"check-config", no_argument, NULL, 'k'},
        {"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0},
    };
    const char *config_path = NULL;
    bool check_only = false;
    for (int o; (o = getopt_long(argc, argv, "h", opts, NULL)) != -1;) {
        if (o == 'c') {
            config_path = optarg;
        } else if (o == 'k') {
            check_only = true;
        } else {
            fprintf(o == 'h' ? stdout : stderr,
                    "Usage: gantry-runner [--config FILE] [--check-config]\n"
                    "Runs executions from exec.<cluster_id>.<pool> queues ([application] mode = runner;\n"
                    "[runner] pools, capacity, heartbeat_interval; [broker]; [store]).\n"
                    "  --check-config   load and check the configuration (and the key file), then exit\n");
            return o == 'h' ? 0 : 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "gantry-runner: unexpected argument \"%s\"\n", argv[optind]);
        return 2;
    }
    gt_error e = {0};
    gt_config *cfg = NULL;
    if (gt_setup_load(config_path, environ, &cfg, &e) != GT_OK) {
        fprintf(stderr, "gantry-runner: configuration: %s\n", e.message);
        return 2;
    }
    gt_secret_protect_process(); /* holds keys: no core dumps, ptrace or /proc reads */
    if (cfg->application.mode != GT_MODE_RUNNER) {
        fprintf(stderr, "gantry-runner: [application] mode is %s; the runner needs runner\n",
                gt_config_mode_name(cfg->application.mode));
        gt_config_free(&cfg);
        return 2;
    }
    if (check_only) {
        int crc = check_config(cfg);
        gt_config_free(&cfg);
        return crc;
    }
    gt_log_setup(stderr, cfg->log.level, cfg->log.console_json, "runner");
    signal(SIGPIPE, SIG_IGN);
    gt_raise_fd_limit();
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    int rc = 1;
    gt_runner *r = NULL;
    if (gt_mkdir_p(cfg->application.working_dir, 0700, &e) != GT_OK) {
        fprintf(stderr, "gantry-runner: %s\n", e.message);
        goto done;
    }
    gt_run_options run;
    gt_setup_run_options(cfg, environ, &run);
    char host[128] = "runner";
    gethostname(host, sizeof host);
    char *id = gt_xasprintf("%s/%ld", host, (long)getpid());
    gt_runner_config rc_cfg = {
        .id = id,
        .cluster_id = cfg->application.cluster_id,
        .pools = cfg->runner.pools.v,
        .capacity = (int)cfg->runner.capacity,
        .heartbeat_ms = cfg->runner.heartbeat_interval,
        .drain_ms = cfg->runner.drain_timeout,
        .open_store = open_store,
        .open_store_arg = cfg,
        .key_file = cfg->secrets.encrypt_key_file,
        .key_file_explicit = gt_setup_key_file_explicit(cfg),
        .run = &run,
    };
    if (gt_setup_bus_config(cfg, &rc_cfg.bus, &e) != GT_OK ||
        (r = gt_runner_new(&rc_cfg, &e)) == NULL) {
        fprintf(stderr, "gantry-runner: %s\n", e.message);
        free(id);
        goto done;
    }
    gt_info("gantry-runner ready: %s, pools %s..., capacity %d", id, rc_cfg.pools[0], rc_cfg.capacity);
    if (gt_runner_serve(r, &stop, &e) != GT_OK) {
        /* fenced out: a supervisor restarts us under a new id; the broker gave back what
         * was not acked, and the reaper ends or retries what we were running */
        fprintf(stderr, "gantry-runner: stopping: %s\n", e.message);
        rc = 1;
    } else {
        gt_info("stopped");
        rc = 0;
    }
    gt_runner_free(&r);
    free(id);
done:
    gt_config_free(&cfg);
    return rc;
}
