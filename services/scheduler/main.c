/* gantry-scheduler: the cluster's singleton duties, held through a lease in the
 * store: the reaper of executions whose runner died, and the dispatch sweeper that
 * announces again queued work no runner took. It waits out broker outages. */
#include <stdatomic.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bus.h"
#include "config.h"
#include "crypto.h"
#include "dispatch.h"
#include "log.h"
#include "presence.h"
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

/* This scheduler in "schedulers", for gantry inspect cluster health. */
static void record_self(gt_store *store, const char *holder, int64_t epoch, int64_t ttl_ms)
{
    gt_presence p = {"schedulers", holder, NULL,
                     epoch > 0 ? "active" : epoch == 0 ? "standby" : "stopped", epoch, ttl_ms,
                     "scheduler"};
    gt_presence_record(store, &p, NULL, NULL);
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
                    "Reaps executions whose runner is gone (retry or lost) and announces again\n"
                    "queued work no runner took ([runner] redispatch_after), as the holder of\n"
                    "the cluster's \"scheduler\" lease ([application] mode = server).\n");
            return o == 'h' ? 0 : 2;
        }
    }
    gt_error e = {0};
    gt_config *cfg = NULL;
    if (gt_setup_load(config_path, environ, &cfg, &e) != GT_OK) {
        fprintf(stderr, "gantry-scheduler: configuration: %s\n", e.message);
        return 2;
    }
    gt_secret_protect_process(); /* holds keys: no core dumps, ptrace or /proc reads */
    gt_log_setup(stderr, cfg->log.level, cfg->log.console_json, "scheduler");
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    int rc = 1;
    gt_store *store = NULL;
    gt_bus *bus = NULL;
    char host[128] = "scheduler";
    gethostname(host, sizeof host);
    char *holder = gt_xasprintf("%s/%ld", host, (long)getpid());
    gt_bus_config bc;
    if (gt_mkdir_p(cfg->application.working_dir, 0700, &e) != GT_OK ||
        gt_setup_open_store(cfg, &store, &e) != GT_OK || gt_setup_bus_config(cfg, &bc, &e) != GT_OK) {
        fprintf(stderr, "gantry-scheduler: %s\n", e.message);
        goto done;
    }
    int64_t every = cfg->runner.heartbeat_interval > 0 ? cfg->runner.heartbeat_interval : 5000;
    gt_info("gantry-scheduler ready: %s, checking runners every %lld ms", holder, (long long)every);
    bool leader = false, broker_waiting = false;
    int64_t recorded_role = -1, recorded_at = 0, swept_at = INT64_MIN / 2;
    int64_t bus_retry_at = 0;
    while (!stop) {
        e = (gt_error){0};
        int64_t epoch = 0;
        gt_err lr = gt_store_lease_acquire(store, "scheduler", holder, 3 * every, &epoch, &e);
        if (lr == GT_OK && !leader)
            gt_info("holding the scheduler lease (epoch %lld)", (long long)epoch);
        if (lr != GT_OK && leader)
            gt_warn("lost the scheduler lease: %s", e.message);
        leader = lr == GT_OK;
        /* the loop runs four times a heartbeat; its presence needs a write once a
         * heartbeat, or when its role changes */
        int64_t role = leader ? epoch : 0, now_mono = gt_mono_ms();
        if (role != recorded_role || now_mono - recorded_at >= every) {
            record_self(store, holder, role, 3 * every);
            recorded_role = role;
            recorded_at = now_mono;
        }
        if (leader) {
            /* the broker is needed only to announce work: the reaper runs without it */
            if (bus && !gt_bus_connected(bus))
                gt_bus_free(&bus);
            if (bus == NULL && gt_mono_ms() >= bus_retry_at) {
                e = (gt_error){0};
                if ((bus = gt_bus_connect(&bc, &e)) == NULL) {
                    if (!broker_waiting)
                        gt_warn("waiting for the broker: %s", e.message);
                    broker_waiting = true;
                    bus_retry_at = gt_mono_ms() + 2000;
                } else if (broker_waiting) {
                    gt_info("the broker is back");
                    broker_waiting = false;
                }
            }
            /* every write of this pass is fenced by the epoch held: a scheduler whose
             * lease ran out mid-pass writes nothing more */
            gt_store_fence fence = {"scheduler", holder, epoch};
            gt_reaper_config rcfg = {
                .store = store,
                .bus = bus,
                .cluster_id = cfg->application.cluster_id,
                .fence = &fence,
                /* none: a runner's watchdog kills its runs two heartbeats after its last
                 * renewal, a heartbeat before its lease (three) can expire */
                .grace_ms = 0,
            };
            gt_reaper_pass(&rcfg, gt_now_ms());
            /* the sweep reads every queued execution: often enough for redispatch_after,
             * not on every pass (thousands may be queued) */
            int64_t sweep_every = cfg->runner.redispatch_after / 4 > 1000
                                      ? cfg->runner.redispatch_after / 4 : 1000;
            if (bus && now_mono >= swept_at + sweep_every) {
                gt_dispatch_sweep(store, bus, cfg->application.cluster_id, &fence, gt_now_ms(),
                                  cfg->runner.redispatch_after);
                swept_at = now_mono;
            }
        }
        /* a quarter heartbeat: a dead runner's work moves soon after its lease expires */
        for (int64_t slept = 0; slept < every / 4 && !stop; slept += 50)
            usleep(50 * 1000);
    }
    if (leader)
        gt_store_lease_release(store, "scheduler", holder, NULL);
    record_self(store, holder, -1, 3 * every);
    gt_info("stopped");
    rc = 0;
done:
    gt_bus_free(&bus);
    gt_store_free(&store);
    free(holder);
    gt_config_free(&cfg);
    return rc;
}
