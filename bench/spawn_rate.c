/* A baseline for the runner benchmark: how fast this machine can start and reap a
 * trivial program. Spawns PROGRAM (/bin/true) K times with posix_spawn + waitpid, either
 * sequentially or from P threads at once (each thread spawns and reaps its own children,
 * one at a time), and prints the rate and the spawn-to-reaped latency of one child.
 *
 *   spawn_rate [-n K] [-p P] [--warmup W] [--program PATH] [--json]
 *
 * No shell is involved: PROGRAM is passed to posix_spawn as is, with argv {PROGRAM} and
 * this process's environment. Every child must exit 0, otherwise the run fails. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <pthread.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define MAX_PARALLEL 1024
#define MAX_RUNS 100000000L

struct worker {
    pthread_t thread;
    const char *program;
    long runs;       /* spawns this thread does */
    double *lat;     /* its slice of the latency array, seconds */
    long done;       /* spawns that exited 0 */
    int err;         /* first errno from posix_spawn / waitpid, 0 if none */
    int bad_status;  /* the first non-zero wait status, 0 if none */
};

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Spawns program once and reaps it. Returns 0 when it exited 0; otherwise sets *err
 * (an errno) or *status (a wait status) and returns -1. */
static int spawn_one(const char *program, int *err, int *status)
{
    char *argv[] = {(char *)program, NULL};
    pid_t pid;
    int rc = posix_spawn(&pid, program, NULL, NULL, argv, environ);
    if (rc != 0) {
        *err = rc;
        return -1;
    }
    int st;
    while (waitpid(pid, &st, 0) < 0) {
        if (errno != EINTR) {
            *err = errno;
            return -1;
        }
    }
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        *status = st;
        return -1;
    }
    return 0;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    for (long i = 0; i < w->runs; i++) {
        double t0 = now();
        int err = 0, st = 0;
        if (spawn_one(w->program, &err, &st) != 0) {
            w->err = err;
            w->bad_status = st;
            return NULL;
        }
        w->lat[i] = now() - t0;
        w->done++;
    }
    return NULL;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Nearest-rank percentile of a sorted array. */
static double percentile(const double *sorted, long n, double p)
{
    long rank = (long)((p / 100.0) * (double)n + 0.999999999);
    if (rank < 1)
        rank = 1;
    if (rank > n)
        rank = n;
    return sorted[rank - 1];
}

static void describe_failure(const char *program, int err, int st)
{
    if (err)
        fprintf(stderr, "spawn_rate: %s: %s\n", program, strerror(err));
    else if (WIFEXITED(st))
        fprintf(stderr, "spawn_rate: %s exited with status %d\n", program, WEXITSTATUS(st));
    else if (WIFSIGNALED(st))
        fprintf(stderr, "spawn_rate: %s was killed by signal %d\n", program, WTERMSIG(st));
    else
        fprintf(stderr, "spawn_rate: %s: unexpected wait status %d\n", program, st);
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: spawn_rate [-n K] [-p P] [--warmup W] [--program PATH] [--json]\n"
            "  -n, --runs K       spawns to time (default 10000)\n"
            "  -p, --parallel P   threads spawning at once, each sequentially (default 1)\n"
            "      --warmup W     untimed spawns before the run (default 50)\n"
            "      --program PATH the program to spawn, no shell, no arguments (default /bin/true)\n"
            "      --json         print one JSON object instead of the text line\n");
}

static int parse_long(const char *opt, const char *s, long min, long max, long *out)
{
    char *end;
    errno = 0;
    long v = s ? strtol(s, &end, 10) : 0;
    if (!s || errno || end == s || *end || v < min || v > max) {
        fprintf(stderr, "spawn_rate: %s needs an integer from %ld to %ld\n", opt, min, max);
        return -1;
    }
    *out = v;
    return 0;
}

static void json_string(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c < 0x20)
            printf("\\u%04x", c);
        else
            putchar(c);
    }
    putchar('"');
}

int main(int argc, char **argv)
{
    long runs = 10000, parallel = 1, warmup = 50;
    const char *program = "/bin/true";
    int json = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-n") || !strcmp(a, "--runs")) {
            if (parse_long(a, v, 1, MAX_RUNS, &runs))
                return 2;
            i++;
        } else if (!strcmp(a, "-p") || !strcmp(a, "--parallel")) {
            if (parse_long(a, v, 1, MAX_PARALLEL, &parallel))
                return 2;
            i++;
        } else if (!strcmp(a, "--warmup")) {
            if (parse_long(a, v, 0, MAX_RUNS, &warmup))
                return 2;
            i++;
        } else if (!strcmp(a, "--program")) {
            if (!v || !*v) {
                fprintf(stderr, "spawn_rate: --program needs a path\n");
                return 2;
            }
            program = v;
            i++;
        } else if (!strcmp(a, "--json")) {
            json = 1;
        } else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "spawn_rate: unknown argument %s\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (parallel > runs)
        parallel = runs;

    for (long i = 0; i < warmup; i++) {
        int err = 0, st = 0;
        if (spawn_one(program, &err, &st) != 0) {
            describe_failure(program, err, st);
            return 1;
        }
    }

    double *lat = calloc((size_t)runs, sizeof *lat);
    struct worker *w = calloc((size_t)parallel, sizeof *w);
    if (!lat || !w) {
        fprintf(stderr, "spawn_rate: out of memory\n");
        return 1;
    }
    long off = 0;
    for (long t = 0; t < parallel; t++) {
        w[t].program = program;
        w[t].runs = runs / parallel + (t < runs % parallel ? 1 : 0);
        w[t].lat = lat + off;
        off += w[t].runs;
    }

    double t0 = now();
    long started = 0;
    int failed = 0;
    if (parallel == 1) {
        worker_main(&w[0]);
        started = 1;
    } else {
        for (; started < parallel; started++) {
            int rc = pthread_create(&w[started].thread, NULL, worker_main, &w[started]);
            if (rc != 0) {
                fprintf(stderr, "spawn_rate: pthread_create: %s\n", strerror(rc));
                failed = 1;
                break;
            }
        }
        for (long t = 0; t < started; t++)
            pthread_join(w[t].thread, NULL);
    }
    double elapsed = now() - t0;

    long done = 0;
    for (long t = 0; t < started; t++) {
        done += w[t].done;
        if (!failed && (w[t].err || w[t].bad_status)) {
            describe_failure(program, w[t].err, w[t].bad_status);
            failed = 1;
        }
    }
    if (failed || done != runs) {
        free(lat);
        free(w);
        return 1;
    }

    qsort(lat, (size_t)runs, sizeof *lat, cmp_double);
    double rate = (double)runs / elapsed;
    double p50 = percentile(lat, runs, 50), p99 = percentile(lat, runs, 99);
    if (json) {
        printf("{\"tool\":\"spawn_rate\",\"program\":");
        json_string(program);
        printf(",\"runs\":%ld,\"parallel\":%ld,\"warmup\":%ld,\"seconds\":%.6f,"
               "\"spawns_per_second\":%.1f,\"latency_ms\":{\"p50\":%.4f,\"p99\":%.4f,"
               "\"max\":%.4f}}\n",
               runs, parallel, warmup, elapsed, rate, p50 * 1e3, p99 * 1e3, lat[runs - 1] * 1e3);
    } else {
        printf("posix_spawn %s: %.0f spawns/s (%ld runs, %ld parallel)\n", program, rate, runs,
               parallel);
        printf("  spawn-to-reaped latency: p50 %.3f ms, p99 %.3f ms, max %.3f ms\n", p50 * 1e3,
               p99 * 1e3, lat[runs - 1] * 1e3);
    }
    free(lat);
    free(w);
    return 0;
}
