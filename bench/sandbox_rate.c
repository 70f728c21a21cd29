/* A baseline for the runner benchmark: how fast this machine runs /bin/true inside the
 * sandbox every Gantry run gets (bubblewrap, through gt_exec_run with the same limits,
 * binds and writable scratch directory as common/run.c), from P threads at once, each
 * running one at a time. The gap between this and bench/spawn_rate is the sandbox's
 * cost; the gap between this and the runner benchmark is everything else Gantry does.
 *
 *   sandbox_rate [-n K] [-p P] [--json]
 *
 * Every run must exit 0, otherwise the tool fails (exit status 1). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "exec.h"
#include "sandbox.h"
#include "util.h"

#define MAX_PARALLEL 256

typedef struct worker {
    pthread_t thread;
    long runs;
    double *lat;      /* ms, its slice */
    char dir[64];
    int failed;
    gt_error err;
} worker;

static void *work(void *arg)
{
    worker *w = arg;
    char *rw[] = {w->dir, NULL};
    gt_exec_limits lim = {.memory = 2LL << 30, .processes = 256, .open_files = 1024};
    gt_sandbox sb = {.writable = rw, .tmpfs_size = lim.memory};
    char *av[] = {"/bin/true", NULL};
    char *env[] = {"PATH=/usr/bin:/bin", NULL};
    atomic_int cancel = 0;
    for (long i = 0; i < w->runs; i++) {
        gt_exec_spec spec = {.file = av[0], .argv = av, .envp = env, .cwd = w->dir,
                             .output_cap = 1 << 20, .cancel = &cancel, .limits = &lim,
                             .sandbox = &sb};
        gt_exec_result res = {0};
        int64_t t = gt_mono_ms();
        if (gt_exec_run(&spec, &res, &w->err) != GT_OK || res.exit_code != 0) {
            if (w->err.message[0] == '\0')
                gt_error_set(&w->err, GT_EIO, "/bin/true exited %d in the sandbox", res.exit_code);
            w->failed = 1;
            gt_exec_result_clear(&res);
            return NULL;
        }
        w->lat[i] = (double)(gt_mono_ms() - t);
        gt_exec_result_clear(&res);
    }
    return NULL;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    long n = 300;
    int p = 1;
    bool json = false;
    for (int i = 1; i < argc; i++) {
        int64_t v;
        if (strcmp(argv[i], "--json") == 0) {
            json = true;
        } else if ((strcmp(argv[i], "-n") == 0 || strcmp(argv[i], "-p") == 0) && i + 1 < argc &&
                   gt_parse_int64(argv[i + 1], 1, argv[i][1] == 'n' ? 1000000 : MAX_PARALLEL, &v,
                                  argv[i], NULL) == GT_OK) {
            if (argv[i][1] == 'n')
                n = (long)v;
            else
                p = (int)v;
            i++;
        } else {
            fprintf(stderr, "usage: sandbox_rate [-n K] [-p P (1..%d)] [--json]\n", MAX_PARALLEL);
            return 2;
        }
    }
    gt_error e = {0};
    if (gt_sandbox_check(&e) != GT_OK) {
        fprintf(stderr, "sandbox_rate: %s\n", e.message);
        return 1;
    }
    double *lat = gt_xcalloc((size_t)n, sizeof *lat);
    worker *w = gt_xcalloc((size_t)p, sizeof *w);
    int rc = 0;
    long given = 0;
    int64_t t0 = gt_mono_ms();
    for (int i = 0; i < p; i++) {
        w[i].runs = n / p + (i < n % p);
        w[i].lat = lat + given;
        given += w[i].runs;
        snprintf(w[i].dir, sizeof w[i].dir, "/tmp/gantry-sandbox-rate-XXXXXX");
        if (mkdtemp(w[i].dir) == NULL || pthread_create(&w[i].thread, NULL, work, &w[i]) != 0) {
            fprintf(stderr, "sandbox_rate: cannot start worker %d\n", i);
            return 1;
        }
    }
    for (int i = 0; i < p; i++) {
        pthread_join(w[i].thread, NULL);
        gt_rm_rf(w[i].dir, NULL);
        if (w[i].failed) {
            fprintf(stderr, "sandbox_rate: %s\n", w[i].err.message);
            rc = 1;
        }
    }
    double secs = (double)(gt_mono_ms() - t0) / 1000;
    if (rc == 0) {
        qsort(lat, (size_t)n, sizeof *lat, cmp);
        double p50 = lat[n / 2], p99 = lat[(size_t)((double)(n - 1) * 0.99)];
        if (json)
            printf("{\"tool\":\"sandbox_rate\",\"runs\":%ld,\"parallel\":%d,\"seconds\":%.3f,"
                   "\"runs_per_second\":%.1f,\"latency_ms\":{\"p50\":%.1f,\"p99\":%.1f}}\n",
                   n, p, secs, (double)n / secs, p50, p99);
        else
            printf("sandboxed /bin/true: %.1f runs/s (%ld runs, %d parallel)   p50 %.1f ms  "
                   "p99 %.1f ms\n", (double)n / secs, n, p, p50, p99);
    }
    free(w);
    free(lat);
    return rc;
}
