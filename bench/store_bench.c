/* Store driver rates: puts, gets and indexed queries, one at a time from one handle, as
 * one thread of a daemon does them. Figures, not a test.
 *
 *   store_bench [--driver local|memory|etcd] [-n N] [--etcd HOST:PORT,...] [--json]
 *
 * local: a new SQLite file under $TMPDIR; etcd: the members of --etcd (default
 * $GANTRY_TEST_ETCD, as scripts/test-servers sets it), under a new cluster id. Documents
 * look like small execution records (~300 bytes, an indexed "service" field with 20
 * values); a query asks for one service's first 20. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "store.h"
#include "util.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

typedef struct result {
    const char *op;
    long n;
    double seconds;
    double p50_ms, p99_ms;
} result;

static void summarize(result *r, double *lat, long n, double seconds)
{
    qsort(lat, (size_t)n, sizeof *lat, cmp_double);
    r->n = n;
    r->seconds = seconds;
    r->p50_ms = lat[n / 2] * 1e3;
    r->p99_ms = lat[(n * 99) / 100 < n ? (n * 99) / 100 : n - 1] * 1e3;
}

static int usage(void)
{
    fprintf(stderr, "usage: store_bench [--driver local|memory|etcd] [-n N] [--etcd HOSTS] "
                    "[--json]\n");
    return 2;
}

int main(int argc, char **argv)
{
    const char *driver = "local", *etcd = getenv("GANTRY_TEST_ETCD");
    long n = 2000;
    bool json = false;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--driver") == 0 && i + 1 < argc)
            driver = argv[++i];
        else if (strcmp(argv[i], "-n") == 0 && i + 1 < argc)
            n = strtol(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--etcd") == 0 && i + 1 < argc)
            etcd = argv[++i];
        else if (strcmp(argv[i], "--json") == 0)
            json = true;
        else
            return usage();
    }
    if (n < 10 || n > 1000000)
        return usage();

    gt_error err = {0};
    gt_store *s = NULL;
    char dir[] = "/tmp/gantry-store-bench-XXXXXX", path[64] = "";
    gt_strv hosts = {0};
    if (strcmp(driver, "local") == 0) {
        if (mkdtemp(dir) == NULL) {
            perror("mkdtemp");
            return 1;
        }
        snprintf(path, sizeof path, "%s/bench.db", dir);
        s = gt_store_open_local(path, &err);
    } else if (strcmp(driver, "memory") == 0) {
        s = gt_store_open_memory(&err);
    } else if (strcmp(driver, "etcd") == 0) {
        if (etcd == NULL || etcd[0] == '\0') {
            fprintf(stderr, "store_bench: --driver etcd needs --etcd or GANTRY_TEST_ETCD\n");
            return 2;
        }
        char *list = gt_xstrdup(etcd), *save = NULL;
        for (char *h = strtok_r(list, ", ", &save); h; h = strtok_r(NULL, ", ", &save))
            gt_strv_push(&hosts, h);
        free(list);
        char *id = gt_id_new(), cluster[64];
        snprintf(cluster, sizeof cluster, "bench-%s", id);
        free(id);
        gt_store_etcd_config cfg = {.hosts = (const char *const *)hosts.v, .n_hosts = hosts.n,
                                    .cluster_id = cluster};
        s = gt_store_open_etcd(&cfg, &err);
    } else {
        return usage();
    }
    if (s == NULL || gt_store_index(s, "executions", "service", &err) != GT_OK) {
        fprintf(stderr, "store_bench: %s: %s\n", driver, err.message);
        return 1;
    }

    double *lat = gt_xcalloc((size_t)n, sizeof *lat);
    char **ids = gt_xcalloc((size_t)n, sizeof *ids);
    result r[3] = {{.op = "put"}, {.op = "get"}, {.op = "query"}};
    int failed = 0;

    double t0 = now();
    for (long i = 0; i < n && !failed; i++) {
        ids[i] = gt_id_new();
        char body[512];
        snprintf(body, sizeof body,
                 "{\"id\":\"%s\",\"service\":\"svc-%02ld\",\"state\":\"succeeded\","
                 "\"attempt\":1,\"rc\":0,\"created\":\"2026-12-01T21:25:01.757Z\","
                 "\"started\":\"2026-12-01T21:25:01.760Z\",\"ended\":\"2026-12-01T21:25:01.829Z\","
                 "\"runner\":\"runner-1\",\"commit\":\"41d72464b47703296dc5d1e154dc757610dfee53\","
                 "\"inputs\":{\"name\":\"Gantry\",\"count\":2}}",
                 ids[i], i % 20);
        double a = now();
        if (gt_store_put(s, "executions", ids[i], body, GT_REV_NONE, NULL, &err) != GT_OK)
            failed = 1;
        lat[i] = now() - a;
    }
    summarize(&r[0], lat, n, now() - t0);

    t0 = now();
    for (long i = 0; i < n && !failed; i++) {
        char *body = NULL;
        double a = now();
        if (gt_store_get(s, "executions", ids[(i * 7919) % n], &body, NULL, &err) != GT_OK)
            failed = 1;
        lat[i] = now() - a;
        free(body);
    }
    summarize(&r[1], lat, n, now() - t0);

    long nq = n / 10;
    t0 = now();
    for (long i = 0; i < nq && !failed; i++) {
        char value[16];
        snprintf(value, sizeof value, "svc-%02ld", i % 20);
        gt_store_page page;
        double a = now();
        if (gt_store_query(s, "executions", "service", value, NULL, 20, &page, &err) != GT_OK)
            failed = 1;
        lat[i] = now() - a;
        gt_store_page_clear(&page);
    }
    summarize(&r[2], lat, nq, now() - t0);

    if (failed) {
        fprintf(stderr, "store_bench: %s: %s\n", driver, err.message);
    } else if (json) {
        printf("{\"tool\":\"store_bench\",\"driver\":\"%s\"", driver);
        for (int i = 0; i < 3; i++)
            printf(",\"%s\":{\"n\":%ld,\"per_second\":%.1f,\"p50_ms\":%.3f,\"p99_ms\":%.3f}",
                   r[i].op, r[i].n, (double)r[i].n / r[i].seconds, r[i].p50_ms, r[i].p99_ms);
        printf("}\n");
    } else {
        for (int i = 0; i < 3; i++)
            printf("%-6s %-5s %8.0f/s  p50 %7.3f ms  p99 %7.3f ms  (%ld ops)\n", driver, r[i].op,
                   (double)r[i].n / r[i].seconds, r[i].p50_ms, r[i].p99_ms, r[i].n);
    }
    for (long i = 0; i < n; i++)
        free(ids[i]);
    free(ids);
    free(lat);
    gt_store_free(&s);
    gt_strv_free(&hosts);
    if (path[0]) {
        char wal[80], shm[80];
        snprintf(wal, sizeof wal, "%s-wal", path);
        snprintf(shm, sizeof shm, "%s-shm", path);
        unlink(path);
        unlink(wal);
        unlink(shm);
        rmdir(dir);
    }
    return failed;
}
