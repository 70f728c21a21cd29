/* libFuzzer harness for gantry-tokend's requests (AMQP payloads from controllers):
 * any bytes get a JSON reply and nothing crashes or leaks. Requests reach a real
 * redis-server the harness starts once on a free loopback port (stopped by its pid at
 * exit) and a memory store, with a fixed clock so throttling state stays bounded. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../../services/tokend/tokend.c"

extern char **environ;

static pid_t redis_pid;
static gt_store *store;
static gt_sessions *sessions;
static gt_tokend *tokend;

static int64_t fixed_clock(void *arg)
{
    (void)arg;
    return 1700000000000;
}

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t n = sizeof a;
    bind(fd, (struct sockaddr *)&a, sizeof a);
    getsockname(fd, (struct sockaddr *)&a, &n);
    close(fd);
    return ntohs(a.sin_port);
}

static void stop_redis(void)
{
    gt_tokend_free(&tokend);
    gt_sessions_free(&sessions);
    gt_store_free(&store);
    if (redis_pid > 0) {
        kill(redis_pid, SIGTERM);
        waitpid(redis_pid, NULL, 0);
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    gt_log_setup(NULL, GT_LOG_OFF, false, "fuzz");
    char port[16], host[32];
    int p = free_port();
    snprintf(port, sizeof port, "%d", p);
    snprintf(host, sizeof host, "127.0.0.1:%d", p);
    char *args[] = {"redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "",
                    "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning", NULL};
    if (posix_spawnp(&redis_pid, "redis-server", NULL, NULL, args, environ) != 0) {
        fprintf(stderr, "fuzz_tokend: cannot start redis-server (scripts/install-deps installs it)\n");
        exit(1);
    }
    atexit(stop_redis);
    gt_sessions_config sc = {.host = host, .prefix = "fuzz:", .signing_key_set = true};
    memset(sc.signing_key, 0x5a, sizeof sc.signing_key);
    for (int i = 0; i < 100 && sessions == NULL; i++) {
        usleep(50000);
        sessions = gt_sessions_new(&sc, NULL);
    }
    store = gt_store_open_memory(NULL);
    static char *const controllers[] = {"gantry-controller", NULL};
    gt_tokend_config tc = {.store = store, .sessions = sessions, .token_ttl_ms = 60000,
                           .api_key_ttl_ms = 60000, .clock_ms = fixed_clock,
                           .controller_users = controllers,
                           .admin_password_file = "/dev/null/fuzz-admin-password"};
    if (sessions == NULL || (tokend = gt_tokend_new(&tc, NULL)) == NULL) {
        fprintf(stderr, "fuzz_tokend: redis-server on %s did not answer\n", host);
        exit(1);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *reply = NULL;
    size_t len = 0;
    /* As a controller: the caller check passes and the request itself is parsed. */
    gt_tokend_handle(tokend, "gantry-controller", (const char *)data, size, &reply, &len);
    if (reply == NULL || len == 0 || reply[0] != '{')
        abort(); /* every request gets a JSON object back */
    free(reply);
    return 0;
}
