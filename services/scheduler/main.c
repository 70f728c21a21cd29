/* gantry-scheduler: the cluster's singleton duties, held through a lease in the
 * store: the reaper of executions whose runner died. It also drains the results
 * queue the runners announce to. */
#include <stdatomic.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bus.h"
#include "config.h"
#include "log.h"
#include "reaper.h"
#include "setup.h"
#include "store.h"

extern char **environ;

static atomic_int stop;

static void on_signal(int sig)
{
    (void)sig;
    stop = 1;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'}, {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *config_path = NULL;
    for (int o; (o = getopt_long(argc, argv, "h", opts, NULL)) != -1;) {
        if (o == 'c') {
            config_path = optarg;
        } else {
            fprintf(o == 'h' ? stdout : stderr,
                    "Usage: gantry-scheduler [--config FILE]\n"
                    "Reaps executions whose runner stopped heartbeating (retry or lost), as the\n"
                    "holder of the cluster's \"scheduler\" lease ([application] mode = server).\n");
            return o == 'h' ? 0 : 2;
        }
    }
    gt_error e = {0};
    gt_config *cfg = NULL;
    if (gt_setup_load(config_path, environ, &cfg, &e) != GT_OK) {
        fprintf(stderr, "gantry-scheduler: configuration: %s\n", e.message);
        return 2;
    }
    gt_log_setup(stderr, cfg->log.level, cfg->log.console_json, "scheduler");
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    int rc = 1;
    gt_store *store = NULL;
    gt_bus *bus = NULL;
    gt_bus_consumer *results = NULL;
    char host[128] = "scheduler";
    gethostname(host, sizeof host);
    char *holder = gt_xasprintf("%s/%ld", host, (long)getpid());
    char *results_q = gt_xasprintf("results.%s", cfg->application.cluster_id);
    gt_bus_config bc;
    if (gt_mkdir_p(cfg->application.working_dir, 0700, &e) != GT_OK ||
        gt_setup_open_store(cfg, &store, &e) != GT_OK || gt_setup_bus_config(cfg, &bc, &e) != GT_OK ||
        (bus = gt_bus_connect(&bc, &e)) == NULL ||
        gt_bus_declare_work_queue(bus, results_q, &e) != GT_OK ||
        (results = gt_bus_consume_start(bus, results_q, 64, &e)) == NULL) {
        fprintf(stderr, "gantry-scheduler: %s\n", e.message);
        goto done;
    }
    int64_t every = cfg->runner.heartbeat_interval > 0 ? cfg->runner.heartbeat_interval : 5000;
    gt_info("gantry-scheduler ready: %s, checking runners every %lld ms", holder, (long long)every);
    int64_t next = 0;
    bool leader = false;
    while (!stop) {
        gt_bus_delivery d = {0};
        gt_err c = gt_bus_consume_next(results, 200, &d, &e);
        if (c == GT_OK) {
            gt_debug("result: %.*s", (int)d.len, d.body);
            gt_bus_ack(results, &d, NULL);
        } else if (c == GT_EUNAVAIL) {
            fprintf(stderr, "gantry-scheduler: broker: %s\n", e.message);
            gt_bus_delivery_clear(&d);
            goto done;
        }
        gt_bus_delivery_clear(&d);
        e = (gt_error){0};
        int64_t now = gt_mono_ms();
        if (now < next)
            continue;
        next = now + every;
        int64_t epoch = 0;
        gt_err lr = gt_store_lease_acquire(store, "scheduler", holder, 3 * every, &epoch, &e);
        if (lr == GT_OK && !leader)
            gt_info("holding the scheduler lease (epoch %lld)", (long long)epoch);
        if (lr != GT_OK && leader)
            gt_warn("lost the scheduler lease: %s", e.message);
        leader = lr == GT_OK;
        e = (gt_error){0};
        if (leader)
            gt_reaper_pass(store, bus, cfg->application.cluster_id, 3, gt_now_ms());
    }
    if (leader)
        gt_store_lease_release(store, "scheduler", holder, NULL);
    gt_info("stopped");
    rc = 0;
done:
    gt_bus_consume_stop(&results);
    gt_bus_free(&bus);
    gt_store_free(&store);
    free(results_q);
    free(holder);
    gt_config_free(&cfg);
    return rc;
}
