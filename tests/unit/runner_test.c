/* services/runner/runner.c: a runner whose lease renewal hangs (the store's host takes
 * the connection and never answers, as across a cut link) fences itself out after two
 * heartbeats, not when the hung request finally times out: its lease (three heartbeats)
 * must still run when its runs are killed, or the reaper's next attempt could overlap. */
#include "../../services/runner/runner.c"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#define HANG_MS 4000   /* how long a renewal to the silent host blocks */

typedef struct fx {
    int silent;         /* a listening socket that never accepts: connects, then silence */
    int closed_port;    /* nothing listens there: the broker is "away" */
    char silent_host[32];
    int opened;
} fx;

static int listen_on_loopback(int backlog, int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t len = sizeof a;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    if (backlog > 0)
        assert_int_equal(listen(fd, backlog), 0);
    *port = ntohs(a.sin_port);
    return fd;
}

/* The first store (gt_runner_new's: lease and registry) works; every later one (the
 * heartbeat's) talks to the silent host. */
static int open_store(void *arg, gt_store **store, gt_error *err)
{
    fx *f = arg;
    if (f->opened++ == 0) {
        *store = gt_store_open_memory(err);
    } else {
        const char *hosts[] = {f->silent_host};
        gt_store_etcd_config cfg = {.hosts = hosts, .n_hosts = 1, .cluster_id = "t",
                                    .timeout_ms = HANG_MS};
        *store = gt_store_open_etcd(&cfg, err);
    }
    return *store ? GT_OK : GT_EUNAVAIL;
}

static void hung_renewal_fences_within_two_heartbeats(void **state)
{
    (void)state;
    gt_log_setup(NULL, GT_LOG_OFF, false, "test");
    fx f = {0};
    int port = 0;
    f.silent = listen_on_loopback(16, &port);
    snprintf(f.silent_host, sizeof f.silent_host, "127.0.0.1:%d", port);
    /* bound, not listening: connections to it are refused at once */
    int unused = listen_on_loopback(0, &f.closed_port);
    char broker[32];
    snprintf(broker, sizeof broker, "127.0.0.1:%d", f.closed_port);
    char *broker_hosts[] = {broker, NULL};
    char *pools[] = {"default", NULL};
    gt_run_options run = {0};
    gt_runner_config cfg = {
        .id = "test/1", .cluster_id = "t", .pools = pools, .capacity = 1,
        .heartbeat_ms = 200, .drain_ms = 1000, .open_store = open_store, .open_store_arg = &f,
        .run = &run,
        .bus = {.hosts = broker_hosts, .username = "u", .password = "p", .cluster_id = "t",
                .connect_timeout_ms = 200, .reconnect_attempts = 1},
    };
    gt_error e = {0};
    gt_runner *r = gt_runner_new(&cfg, &e);
    assert_non_null(r);
    atomic_int stop = 0;
    int64_t t0 = gt_mono_ms();
    gt_err rc = gt_runner_serve(r, &stop, &e);
    int64_t took = gt_mono_ms() - t0;
    assert_int_equal(rc, GT_ECONFLICT);
    assert_non_null(strstr(e.message, "fenced out"));
    /* two heartbeats (400 ms) after the last renewal that held, not when the hung
     * request gives up (HANG_MS after the first beat); slack for a loaded machine */
    assert_true(took < HANG_MS / 2);
    assert_true(took >= 2 * cfg.heartbeat_ms - 100);
    gt_runner_free(&r);
    assert_null(r);
    close(unused);
    close(f.silent);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(hung_renewal_fences_within_two_heartbeats),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
