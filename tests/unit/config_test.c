/* Tests for common/config.c: defaults, the seed's example files, every error class
 * with its file:line, precedence (file < env < flag), value syntax, --show-config
 * and the cross-field checks of gt_config_finish. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "util.h"

typedef struct fixture {
    char dir[64];
    char home[128];
    char *envp[16];
    size_t nenv;
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "/tmp/gt_config_test.XXXXXX");
    if (mkdtemp(f->dir) == NULL)
        return -1;
    snprintf(f->home, sizeof f->home, "%s/home", f->dir);
    gt_mkdir_p(f->home, 0700, NULL);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    for (size_t i = 0; i < f->nenv; i++)
        free(f->envp[i]);
    gt_rm_rf(f->dir, NULL);
    free(f);
    return 0;
}

/* Adds NAME=value to the fixture's environment (HOME is always first). */
static char *const *env(fixture *f, const char *entry)
{
    if (f->nenv == 0)
        f->envp[f->nenv++] = gt_xasprintf("HOME=%s", f->home);
    if (entry)
        f->envp[f->nenv++] = gt_xstrdup(entry);
    f->envp[f->nenv] = NULL;
    return f->envp;
}

/* Writes text to DIR/name and returns the path (caller frees). */
static char *write_conf(fixture *f, const char *name, const char *text)
{
    char *path = gt_xasprintf("%s/%s", f->dir, name);
    assert_int_equal(gt_write_file_atomic(path, text, strlen(text), 0600, NULL), GT_OK);
    return path;
}

/* Loads text as a file; returns the code and leaves the config in *out. */
static gt_err load_text(fixture *f, const char *text, gt_config **out, gt_error *err)
{
    char *path = write_conf(f, "gantry.conf", text);
    *out = gt_config_new();
    gt_error_clear(err);
    gt_err rc = gt_config_load(*out, path, env(f, NULL), err);
    free(path);
    return rc;
}

/* Expects text to fail with a message equal to "<dir>/gantry.conf:" + want. */
static void expect_file_error(fixture *f, const char *text, const char *want)
{
    gt_config *cfg = NULL;
    gt_error err = {0};
    assert_int_equal(load_text(f, text, &cfg, &err), GT_EINVAL);
    char *full = gt_xasprintf("%s/gantry.conf:%s", f->dir, want);
    if (strcmp(err.message, full) != 0)
        fail_msg("got  \"%s\"\nwant \"%s\"", err.message, full);
    /* field is "file:line" */
    char *colon = strchr(want, ':');
    char *field = gt_xasprintf("%s/gantry.conf:%.*s", f->dir, (int)(colon - want), want);
    assert_string_equal(err.field, field);
    free(field);
    free(full);
    gt_config_free(&cfg);
}

/* noinline: GCC 12 at -O2 misreads the inlined out-parameter as a dangling pointer */
__attribute__((noinline)) static char *dump_to_string(fixture *f, const gt_config *cfg)
{
    char *path = gt_xasprintf("%s/dump.txt", f->dir);
    FILE *out = fopen(path, "w");
    assert_non_null(out);
    gt_config_dump(cfg, out);
    fclose(out);
    char *text = NULL;
    assert_int_equal(gt_read_file(path, 1 << 20, &text, NULL, NULL), GT_OK);
    free(path);
    return text;
}

/* ---- defaults ---- */

static void test_defaults(void **state)
{
    fixture *f = *state;
    gt_config *cfg = gt_config_new();
    assert_non_null(cfg);
    assert_int_equal(cfg->application.mode, GT_MODE_LOCAL);
    assert_string_equal(cfg->application.cluster_id, "cluster_1");
    assert_string_equal(cfg->application.working_dir, "~/.gantry");
    assert_int_equal(cfg->application.venv_sweep_interval, 24 * 3600 * 1000LL);
    assert_int_equal(cfg->application.venv_retention_period, 30 * 86400 * 1000LL);
    assert_int_equal(cfg->store.backend, GT_BACKEND_LOCAL);
    assert_null(cfg->store.path);
    assert_string_equal(cfg->store.mongodb_database, "gantry");
    assert_int_equal(cfg->store.etcd_hosts.n, 1);
    assert_string_equal(cfg->store.etcd_hosts.v[0], "localhost:2379");
    assert_true(cfg->store.etcd_use_tls);
    assert_null(cfg->secrets.encrypt_key_file);
    assert_int_equal(cfg->log.level, GT_LOG_INFO);
    assert_false(cfg->log.console_json);
    assert_true(cfg->log.file_enabled);
    assert_string_equal(cfg->log.timestamp_timezone, "utc");
    assert_string_equal(cfg->server.listen_address, "127.0.0.1");
    assert_int_equal(cfg->server.port, 50051);
    assert_true(cfg->server.use_tls);
    assert_int_equal(cfg->server.api_key_expiration, 1440 * 60 * 1000LL);
    assert_int_equal(cfg->server.max_body_size, 1024 * 1024);
    assert_int_equal(cfg->server.worker_threads, 4);
    assert_int_equal(cfg->client.port, 50051);
    assert_null(cfg->client.host);
    assert_true(cfg->features.python_enabled);
    assert_int_equal(cfg->runner.pools.n, 1);
    assert_string_equal(cfg->runner.pools.v[0], "default");
    assert_int_equal(cfg->runner.capacity, 4);
    assert_int_equal(cfg->runner.heartbeat_interval, 5000);
    assert_int_equal(cfg->runner.output_limit, 1048576);
    assert_int_equal(cfg->runner.kill_grace_period, 5000);
    assert_int_equal(cfg->runner.default_timeout, 0);
    assert_string_equal(cfg->runner.python, "python3");
    assert_string_equal(cfg->runner.ansible_playbook, "ansible-playbook");
    assert_string_equal(cfg->runner.git, "git");
    assert_null(cfg->runner.pip_index_url);
    assert_false(cfg->runner.pip_no_index);
    assert_int_equal(cfg->broker.hosts.n, 1);
    assert_string_equal(cfg->broker.hosts.v[0], "127.0.0.1:5672");
    assert_string_equal(cfg->broker.vhost, "/");
    assert_string_equal(cfg->broker.username, "guest");
    assert_int_equal(cfg->broker.heartbeat, 60000);
    assert_int_equal(cfg->sessions.sentinels.n, 0);
    assert_string_equal(cfg->sessions.master_name, "mymaster");
    assert_string_equal(cfg->sessions.host, "127.0.0.1:6379");
    assert_int_equal(cfg->sessions.db, 0);
    assert_int_equal(cfg->sessions.token_ttl, 3600 * 1000LL);
    assert_true(cfg->registry.default_overridable);
    assert_string_equal(cfg->python_script.requirements_file, "requirements.txt");
    assert_string_equal(gt_config_source(cfg, "store", "backend"), "default");
    assert_null(gt_config_source(cfg, "store", "nope"));
    assert_null(gt_config_path(cfg));
    assert_string_equal(gt_config_mode_name(cfg->application.mode), "local");
    assert_string_equal(gt_config_backend_name(GT_BACKEND_MONGODB), "mongodb");

    /* finish derives paths from working_dir and expands "~" with the load's HOME */
    gt_error err = {0};
    assert_int_equal(gt_config_load(cfg, NULL, env(f, NULL), &err), GT_OK);
    assert_int_equal(gt_config_finish(cfg, &err), GT_OK);
    char *wd = gt_xasprintf("%s/.gantry", f->home);
    char *db = gt_xasprintf("%s/.gantry/gantry.db", f->home);
    char *key = gt_xasprintf("%s/.gantry/secrets.key", f->home);
    assert_string_equal(cfg->application.working_dir, wd);
    assert_string_equal(cfg->store.path, db);
    assert_string_equal(cfg->secrets.encrypt_key_file, key);
    assert_string_equal(gt_config_source(cfg, "store", "path"),
                        "derived from application.working_dir");
    free(wd);
    free(db);
    free(key);
    gt_config_free(&cfg);
    assert_null(cfg);
    gt_config_free(NULL);
    gt_config_free(&cfg);
}

/* ---- the seed's own files ---- */

/* The example from the seed's "Configuration variables" page, every line as written
 * there (including its client profiles), followed by the sections its Ansible
 * collection writes into server configs ([python-script], [registry], [terminal]),
 * single-quoted as they are there. */
static const char seed_example[] =
    "[application]\n"
    "mode                = local\n"
    "ca_certificate_file = \n"
    "cluster_id          = cluster_1\n"
    "working_dir         = ~/.gateway.d\n"
    "venv_sweep_interval     = 24h\n"
    "venv_retention_period   = 30d\n"
    "\n"
    "[client]\n"
    "certificate_file =\n"
    "host             =\n"
    "port             = 50051\n"
    "private_key_file =\n"
    "use_tls          = true\n"
    " \n"
    "# Named client profiles \xe2\x80\x94 override individual client settings per cluster.\n"
    "# Profiles inherit unset values from the base [client] section.\n"
    "# Use with: iagctl --profile <profile_name> <command>\n"
    "[client:production]\n"
    "host = gw.prod.example.com\n"
    "certificate_file = ~/.gateway.d/certs/prod.crt\n"
    "private_key_file = ~/.gateway.d/certs/prod.key\n"
    "\n"
    "[client:staging]\n"
    "host = gw.staging.example.com\n"
    "\n"
    "[connect]\n"
    "#certificate_file     = /etc/gateway/gw-manager.pem\n"
    "#private_key_file     = /etc/gateway/gw-manager-key.pem\n"
    "#enabled              = true\n"
    "#insecure_tls         = false\n"
    "#server_ha_enabled    = false\n"
    "#server_ha_is_primary = false\n"
    "#hosts                = # space separated list\n"
    "hosts                = # space separated list\n"
    "\n"
    "[features]\n"
    "ansible_enabled  = true\n"
    "hostkeys_enabled = true\n"
    "opentofu_enabled = true\n"
    "python_enabled   = true\n"
    "\n"
    "[log]\n"
    "console_json       = false\n"
    "file_enabled       = true\n"
    "file_json          = false\n"
    "level              = INFO\n"
    "server_dir         = /var/log/gateway\n"
    "timestamp_timezone = utc\n"
    "\n"
    "[runner]\n"
    "announcement_address =\n"
    "certificate_file     =\n"
    "listen_address       = 127.0.0.1\n"
    "port                 = 50051\n"
    "private_key_file     =\n"
    "use_tls              = true\n"
    "\n"
    "[secrets]\n"
    "encrypt_key_file = ''\n"
    "\n"
    "[server]\n"
    "api_key_expiration    = 1440\n"
    "certificate_file      =\n"
    "distributed_execution = false\n"
    "listen_address        = 127.0.0.1\n"
    "port                  = 50051\n"
    "private_key_file      =\n"
    "use_tls               = true\n"
    "\n"
    "[store]\n"
    "backend                  = 'local'\n"
    "dynamodb_table_name      = 'itential.gateway5.store'\n"
    "etcd_ca_certificate_file = ''\n"
    "etcd_certificate_file    = ''\n"
    "etcd_client_cert_auth    = false\n"
    "etcd_hosts               = 'localhost:2379'\n"
    "etcd_private_key_file    = ''\n"
    "etcd_use_tls             = true\n"
    "\n"
    "[python-script]\n"
    "requirements_file = requirements.txt\n"
    "\n"
    "[registry]\n"
    "default_overridable = true\n"
    "\n"
    "[terminal]\n"
    "no_color           = false\n"
    "timestamp_timezone = 'utc'\n";

static void test_seed_example(void **state)
{
    fixture *f = *state;
    gt_config *cfg = NULL;
    gt_error err = {0};
    gt_err rc = load_text(f, seed_example, &cfg, &err);
    if (rc != GT_OK)
        fail_msg("%s", err.message);
    assert_int_equal(gt_config_finish(cfg, &err), GT_OK);
    char *wd = gt_xasprintf("%s/.gateway.d", f->home);
    assert_string_equal(cfg->application.working_dir, wd);
    free(wd);
    assert_int_equal(cfg->connect.hosts.n, 0);
    assert_string_equal(cfg->log.server_dir, "/var/log/gateway");
    assert_string_equal(cfg->store.dynamodb_table_name, "itential.gateway5.store");
    assert_int_equal(cfg->server.api_key_expiration, 1440 * 60000LL);
    assert_null(cfg->runner.announcement_address);

    const gt_config_client *prod = gt_config_client_profile(cfg, "PRODUCTION");
    assert_non_null(prod);
    assert_string_equal(prod->host, "gw.prod.example.com");
    assert_int_equal(prod->port, 50051); /* inherited */
    assert_true(prod->use_tls);
    char *crt = gt_xasprintf("%s/.gateway.d/certs/prod.crt", f->home);
    assert_string_equal(prod->certificate_file, crt);
    free(crt);
    const gt_config_client *staging = gt_config_client_profile(cfg, "staging");
    assert_non_null(staging);
    assert_string_equal(staging->host, "gw.staging.example.com");
    assert_null(staging->certificate_file);
    assert_null(gt_config_client_profile(cfg, "dev"));
    assert_ptr_equal(gt_config_client_profile(cfg, NULL), &cfg->client);
    gt_config_free(&cfg);
}

/* The seed's Ansible server template, rendered: quoted values, server mode, TLS on. */
static void test_seed_server_template(void **state)
{
    fixture *f = *state;
    gt_config *cfg = NULL;
    gt_error err = {0};
    const char *text =
        "[application]\n"
        "mode                = 'server'\n"
        "cluster_id          = 'east'\n"
        "working_dir         = '/var/lib/gateway'\n"
        "ca_certificate_file = '/etc/gateway/ssl/ca.pem'\n"
        "\n"
        "[connect]\n"
        "enabled              = true\n"
        "hosts                = 'platform.example.com:443'\n"
        "certificate_file     = '/etc/gateway/ssl/server.pem'\n"
        "private_key_file     = '/etc/gateway/ssl/server-key.pem'\n"
        "insecure_tls         = false\n"
        "server_ha_enabled    = false\n"
        "server_ha_is_primary = false\n"
        "\n"
        "[log]\n"
        "level              = 'DEBUG'\n"
        "\n"
        "[server]\n"
        "listen_address        = '0.0.0.0'\n"
        "port                  = 50051\n"
        "distributed_execution = false\n"
        "api_key_expiration    = 1440\n"
        "use_tls               = true\n"
        "certificate_file      = '/etc/gateway/ssl/server.pem'\n"
        "private_key_file      = '/etc/gateway/ssl/server-key.pem'\n";
    if (load_text(f, text, &cfg, &err) != GT_OK)
        fail_msg("%s", err.message);
    assert_int_equal(gt_config_finish(cfg, &err), GT_OK);
    assert_int_equal(cfg->application.mode, GT_MODE_SERVER);
    assert_string_equal(cfg->application.cluster_id, "east");
    assert_int_equal(cfg->log.level, GT_LOG_DEBUG);
    assert_string_equal(cfg->server.listen_address, "0.0.0.0");
    assert_string_equal(cfg->store.path, "/var/lib/gateway/gantry.db");
    assert_string_equal(cfg->connect.hosts.v[0], "platform.example.com:443");
    gt_config_free(&cfg);
}

/* Every file in config/ loads and finishes (paths relative to the repository). */
static void test_example_files(void **state)
{
    fixture *f = *state;
    const char *names[] = {"local", "server", "client", "runner"};
    for (size_t i = 0; i < 4; i++) {
        char *path = gt_xasprintf("config/%s.conf", names[i]);
        if (!gt_file_exists(path)) {
            free(path);
            path = gt_xasprintf("../../../config/%s.conf", names[i]);
        }
        if (!gt_file_exists(path)) {
            free(path);
            skip();
        }
        gt_config *cfg = gt_config_new();
        gt_error err = {0};
        if (gt_config_load(cfg, path, env(f, NULL), &err) != GT_OK ||
            gt_config_finish(cfg, &err) != GT_OK)
            fail_msg("%s: %s", path, err.message);
        assert_string_equal(gt_config_mode_name(cfg->application.mode), names[i]);
        free(path);
        gt_config_free(&cfg);
    }
}

/* ---- errors, each with its file:line ---- */

static void test_error_unknown_key(void **state)
{
    expect_file_error(*state, "[server]\nport = 1\n\nprot = 8080\n",
                      "4: [server] prot: unknown key (did you mean port?)");
    expect_file_error(*state, "[store]\nzzzzzzzz = 1\n", "2: [store] zzzzzzzz: unknown key");
    expect_file_error(*state, "[client:prod]\nvhost = x\n",
                      "2: [client:prod] vhost: unknown key (did you mean host?)");
    /* profiles take only the connection keys */
    expect_file_error(*state, "[client:prod]\nprefetch = 1\n",
                      "2: [client:prod] prefetch: unknown key");
}

static void test_error_unknown_section(void **state)
{
    expect_file_error(*state, "# c\n[stroe]\nbackend = local\n",
                      "2: unknown section [stroe] (did you mean [store]?)");
    expect_file_error(*state, "[nothing]\n", "1: unknown section [nothing]");
    expect_file_error(*state, "[client:bad-name]\n",
                      "1: [client:bad-name]: a profile name is 1-64 letters and digits");
    expect_file_error(*state, "[server\n", "1: section header without ']'");
    expect_file_error(*state, "[server] x\n", "1: unexpected text after the section header");
}

static void test_error_syntax(void **state)
{
    expect_file_error(*state, "[server]\nport 8080\n",
                      "2: expected \"key = value\" or \"[section]\" (no '=' on this line)");
    expect_file_error(*state, "port = 1\n", "1: key \"port\" is outside any [section]");
    expect_file_error(*state, "[server]\n= 1\n", "2: missing key before '='");
    expect_file_error(*state, "[server]\nlisten_address = \"0.0.0.0\n",
                      "2: [server] listen_address: unterminated double quote");
    expect_file_error(*state, "[server]\nlisten_address = '0.0.0.0' x\n",
                      "2: [server] listen_address: unexpected text after the closing quote");
    gt_config *cfg = gt_config_new();
    gt_error err = {0};
    assert_int_equal(gt_config_load_buffer(cfg, "[server]\npo\0rt = 1\n", 18, "nul.conf", &err),
                     GT_EINVAL);
    assert_string_equal(err.message, "nul.conf:2: NUL byte in line");
    gt_config_free(&cfg);
}

static void test_error_duplicate(void **state)
{
    /* duplicates are errors (not last-wins): two values for one key is a typo */
    expect_file_error(*state, "[server]\nport = 1\n[log]\nlevel = info\n[server]\nport = 2\n",
                      "6: [server] port: duplicate key (first set on line 2)");
    expect_file_error(*state, "[application]\nmode = local\napplication_mode = server\n",
                      "3: [application] mode: duplicate key (first set on line 2)");
    expect_file_error(*state, "[client:a]\nhost = x\n[client:A]\nhost = y\n",
                      "4: [client:a] host: duplicate key (first set on line 2)");
}

static void test_error_values(void **state)
{
    expect_file_error(*state, "[store]\nbackend = foo\n",
                      "2: [store] backend: \"foo\" is not one of local, memory, etcd, mongodb");
    expect_file_error(*state, "[application]\nmode = cloud\n",
                      "2: [application] mode: \"cloud\" is not one of local, server, "
                      "client, runner");
    expect_file_error(*state, "[server]\nport = 70000\n",
                      "2: [server] port: 70000 is out of range [0, 65535]");
    expect_file_error(*state, "[server]\nport = 80x\n",
                      "2: [server] port: expected an integer, got \"80x\"");
    expect_file_error(*state, "[server]\nuse_tls = maybe\n",
                      "2: [server] use_tls: expected true or false, got \"maybe\"");
    expect_file_error(*state, "[runner]\nheartbeat_interval = 5 seconds\n",
                      "2: [runner] heartbeat_interval: expected a duration such as 90s, 15m, "
                      "24h, 30d or 1h30m, got \"5 seconds\"");
    expect_file_error(*state, "[runner]\nheartbeat_interval = 2h\n",
                      "2: [runner] heartbeat_interval: \"2h\" is out of range [100ms, 1h]");
    expect_file_error(*state, "[runner]\noutput_limit = 100\n",
                      "2: [runner] output_limit: 100 bytes is out of range [1024, 1073741824]");
    expect_file_error(*state, "[runner]\noutput_limit = lots\n",
                      "2: [runner] output_limit: expected a size in bytes such as 1048576, "
                      "512KiB or 1MiB, got \"lots\"");
    expect_file_error(*state, "[runner]\npools = a, .b\n",
                      "2: [runner] pools: item \".b\": expected 1-128 characters of A-Z a-z 0-9 "
                      "_ . - (not starting with . or -)");
    expect_file_error(*state, "[store]\netcd_hosts = a:1 b\n",
                      "2: [store] etcd_hosts: item \"b\": expected host:port");
    expect_file_error(*state, "[broker]\nhosts = h:0\n",
                      "2: [broker] hosts: item \"h:0\": port: 0 is out of range [1, 65535]");
    expect_file_error(*state, "[log]\nlevel = loud\n",
                      "2: [log] level: \"loud\" is not one of trace, debug, info, warn, error, "
                      "fatal, off");
    expect_file_error(*state, "[log]\ntimestamp_timezone = ../etc\n",
                      "2: [log] timestamp_timezone: expected utc, local or a tz name such as "
                      "America/New_York");
    /* a bad secret is reported without its value */
    expect_file_error(*state, "[store]\nmongodb_uri = postgres://u:hunter2@h\n",
                      "2: [store] mongodb_uri: invalid value (not shown)");
}

static void test_error_too_big(void **state)
{
    fixture *f = *state;
    size_t n = 1024 * 1024 + 10;
    char *big = gt_xmalloc(n + 1);
    memset(big, '#', n);
    big[n] = '\0';
    gt_config *cfg = NULL;
    gt_error err = {0};
    assert_int_not_equal(load_text(f, big, &cfg, &err), GT_OK);
    assert_non_null(strstr(err.message, "larger than"));
    gt_config_free(&cfg);
    cfg = gt_config_new();
    gt_error_clear(&err);
    assert_int_equal(gt_config_load_buffer(cfg, big, n, "big.conf", &err), GT_EINVAL);
    assert_string_equal(err.message, "big.conf: larger than 1048576 bytes");
    gt_config_free(&cfg);
    free(big);
}

/* ---- where the file comes from ---- */

static void test_missing_files(void **state)
{
    fixture *f = *state;
    gt_config *cfg = gt_config_new();
    gt_error err = {0};
    char *missing = gt_xasprintf("%s/nope.conf", f->dir);
    char *entry = gt_xasprintf("GANTRY_CONFIG=%s", missing);
    assert_int_equal(gt_config_load(cfg, missing, env(f, NULL), &err), GT_ENOTFOUND);
    assert_string_equal(err.field, "--config");
    assert_non_null(strstr(err.message, missing));

    gt_error_clear(&err);
    assert_int_equal(gt_config_load(cfg, NULL, env(f, entry), &err), GT_ENOTFOUND);
    assert_string_equal(err.field, "GANTRY_CONFIG");
    assert_non_null(strstr(err.message, "GANTRY_CONFIG: "));
    assert_non_null(strstr(err.message, missing));
    free(entry);
    free(missing);
    gt_config_free(&cfg);
}

static void test_search_order(void **state)
{
    fixture *f = *state;
    /* ~/.gantry/gantry.conf when nothing else is given */
    char *dir = gt_xasprintf("%s/.gantry", f->home);
    char *home_conf = gt_xasprintf("%s/gantry.conf", dir);
    gt_mkdir_p(dir, 0700, NULL);
    assert_int_equal(gt_write_file_atomic(home_conf, "[log]\nlevel = warn\n", 19, 0600, NULL),
                     GT_OK);
    gt_config *cfg = gt_config_new();
    gt_error err = {0};
    assert_int_equal(gt_config_load(cfg, NULL, env(f, NULL), &err), GT_OK);
    assert_string_equal(gt_config_path(cfg), home_conf);
    assert_int_equal(cfg->log.level, GT_LOG_WARN);
    gt_config_free(&cfg);

    /* $GANTRY_CONFIG beats it, --config beats both */
    char *a = write_conf(f, "a.conf", "[log]\nlevel = error\n");
    char *b = write_conf(f, "b.conf", "[log]\nlevel = debug\n");
    char *entry = gt_xasprintf("GANTRY_CONFIG=%s", a);
    cfg = gt_config_new();
    assert_int_equal(gt_config_load(cfg, NULL, env(f, entry), &err), GT_OK);
    assert_string_equal(gt_config_path(cfg), a);
    assert_int_equal(cfg->log.level, GT_LOG_ERROR);
    gt_config_free(&cfg);
    cfg = gt_config_new();
    assert_int_equal(gt_config_load(cfg, b, env(f, NULL), &err), GT_OK);
    assert_string_equal(gt_config_path(cfg), b);
    assert_int_equal(cfg->log.level, GT_LOG_DEBUG);
    gt_config_free(&cfg);
    free(entry);
    free(a);
    free(b);
    free(home_conf);
    free(dir);
}

/* ---- precedence ---- */

static void test_env_beats_file_flag_beats_env(void **state)
{
    fixture *f = *state;
    char *path = write_conf(f, "gantry.conf",
                            "[store]\nbackend = memory\n[runner]\ncapacity = 2\n"
                            "[server]\nport = 9000\n");
    gt_config *cfg = gt_config_new();
    gt_error err = {0};
    env(f, "GANTRY_STORE_BACKEND=etcd");
    env(f, "GANTRY_RUNNER_CAPACITY=8");
    env(f, "GANTRY_APPLICATION_MODE=runner");
    env(f, "GANTRY_PYTHON_SCRIPT_REQUIREMENTS_FILE=reqs.txt");
    env(f, "GANTRY_CLIENT_PROD_HOST=prod.example.com");
    env(f, "GANTRY_CLIENT_PROD_USE_TLS=false");
    env(f, "GANTRY_CLIENT_API_KEY=k1");
    /* not configuration keys */
    env(f, "GANTRY_BIN=/usr/bin/gantry");
    env(f, "GANTRY_TEST_MONGODB_URI=nope");
    env(f, "GANTRY_TESTDATA=/x");
    assert_int_equal(gt_config_load(cfg, path, f->envp, &err), GT_OK);
    assert_int_equal(cfg->store.backend, GT_BACKEND_ETCD);
    assert_string_equal(gt_config_source(cfg, "store", "backend"), "env GANTRY_STORE_BACKEND");
    assert_int_equal(cfg->runner.capacity, 8);
    assert_int_equal(cfg->application.mode, GT_MODE_RUNNER);
    assert_string_equal(cfg->python_script.requirements_file, "reqs.txt");
    assert_string_equal(cfg->client.api_key, "k1");
    assert_int_equal(cfg->server.port, 9000);
    char *loc = gt_xasprintf("%s:6", path);
    assert_string_equal(gt_config_source(cfg, "server", "port"), loc);
    free(loc);

    /* flags win over both */
    assert_int_equal(gt_config_set(cfg, "runner", "capacity", "16", "flag --capacity", &err),
                     GT_OK);
    assert_int_equal(cfg->runner.capacity, 16);
    assert_string_equal(gt_config_source(cfg, "runner", "capacity"), "flag --capacity");
    assert_int_equal(gt_config_set(cfg, "Log", "Level", "debug", NULL, &err), GT_OK);
    assert_int_equal(cfg->log.level, GT_LOG_DEBUG);
    assert_string_equal(gt_config_source(cfg, "log", "level"), "flag");
    /* NULL restores the default */
    assert_int_equal(gt_config_set(cfg, "server", "port", NULL, "flag --port", &err), GT_OK);
    assert_int_equal(cfg->server.port, 50051);
    assert_int_equal(gt_config_set(cfg, "server", "port", "x", "flag --port", &err), GT_EINVAL);
    assert_string_equal(err.field, "flag --port");
    assert_string_equal(err.message,
                        "flag --port: [server] port: expected an integer, got \"x\"");
    gt_error_clear(&err);
    assert_int_equal(gt_config_set(cfg, "server", "nope", "1", "--x", &err), GT_EINVAL);
    assert_string_equal(err.message, "--x: [server] nope: unknown key");
    gt_error_clear(&err);
    assert_int_equal(gt_config_set(cfg, "nope", "port", "1", "--x", &err), GT_EINVAL);
    gt_error_clear(&err);
    assert_int_equal(gt_config_set(cfg, "client:dev", "host", "dev.example.com", "--host", &err),
                     GT_OK);

    assert_int_equal(gt_config_finish(cfg, &err), GT_OK);
    const gt_config_client *prod = gt_config_client_profile(cfg, "prod");
    assert_non_null(prod);
    assert_string_equal(prod->host, "prod.example.com");
    assert_false(prod->use_tls);
    assert_string_equal(prod->api_key, "k1"); /* inherited */
    assert_string_equal(gt_config_source(cfg, "client:prod", "host"),
                        "env GANTRY_CLIENT_PROD_HOST");
    assert_string_equal(gt_config_client_profile(cfg, "dev")->host, "dev.example.com");
    gt_config_free(&cfg);
    free(path);
}

static void test_env_errors(void **state)
{
    fixture *f = *state;
    gt_config *cfg = gt_config_new();
    gt_error err = {0};
    env(f, "GANTRY_SERVER_PROT=1");
    assert_int_equal(gt_config_load(cfg, NULL, f->envp, &err), GT_EINVAL);
    assert_string_equal(err.field, "GANTRY_SERVER_PROT");
    assert_string_equal(err.message,
                        "GANTRY_SERVER_PROT: unknown configuration variable: [server] has no "
                        "key \"prot\" (did you mean GANTRY_SERVER_PORT?)");
    gt_config_free(&cfg);

    fixture g = *f;
    g.nenv = 0;
    cfg = gt_config_new();
    gt_error_clear(&err);
    env(&g, "GANTRY_STORE_BACKEND=foo");
    assert_int_equal(gt_config_load(cfg, NULL, g.envp, &err), GT_EINVAL);
    assert_string_equal(err.field, "GANTRY_STORE_BACKEND");
    assert_string_equal(err.message,
                        "GANTRY_STORE_BACKEND: [store] backend: \"foo\" is not one of local, "
                        "memory, etcd, mongodb");
    gt_config_free(&cfg);
    for (size_t i = 0; i < g.nenv; i++)
        free(g.envp[i]);
}

/* ---- value syntax ---- */

static void test_values(void **state)
{
    fixture *f = *state;
    gt_config *cfg = NULL;
    gt_error err = {0};
    const char *text =
        "\xEF\xBB\xBF[Application]\r\n"
        "Working_Dir = \"/srv/gantry dir\"   # quoted, with a space\r\n"
        "cluster_id = 'c-1' ; comment after quotes\n"
        "venv_retention_period = 1.5h\n"
        "venv_sweep_interval = 1h30m\n"
        "[runner]\n"
        "pools = eu-west,  eu-east\tdefault\n"
        "output_limit = 2MiB\n"
        "kill_grace_period = 250ms\n"
        "default_timeout = 90\n"
        "capacity = +7\n"
        "pip_index_url = https://pypi.example.com/simple#frag\n"
        "python = /usr/bin/python3 # the interpreter\n"
        "pip_no_index = YES\n"
        "[server]\n"
        "use_tls = off\n"
        "api_key_expiration = 2d\n"
        "[sessions]\n"
        "sentinels = 10.0.0.1:26379 [::1]:26380\n"
        "token_ttl = 30\n"
        "[broker]\n"
        "password = \"p#ss;word\"\n"
        "[log]\n"
        "level = fatal\n"
        "[store]\n"
        "path = data/g.db\n";
    if (load_text(f, text, &cfg, &err) != GT_OK)
        fail_msg("%s", err.message);
    assert_string_equal(cfg->application.working_dir, "/srv/gantry dir");
    assert_string_equal(cfg->application.cluster_id, "c-1");
    assert_int_equal(cfg->application.venv_retention_period, 90 * 60000LL);
    assert_int_equal(cfg->application.venv_sweep_interval, 90 * 60000LL);
    assert_int_equal(cfg->runner.pools.n, 3);
    assert_string_equal(cfg->runner.pools.v[0], "eu-west");
    assert_string_equal(cfg->runner.pools.v[1], "eu-east");
    assert_string_equal(cfg->runner.pools.v[2], "default");
    assert_null(cfg->runner.pools.v[3]);
    assert_int_equal(cfg->runner.output_limit, 2 * 1024 * 1024);
    assert_int_equal(cfg->runner.kill_grace_period, 250);
    assert_int_equal(cfg->runner.default_timeout, 90000);
    assert_int_equal(cfg->runner.capacity, 7);
    assert_string_equal(cfg->runner.pip_index_url, "https://pypi.example.com/simple#frag");
    assert_string_equal(cfg->runner.python, "/usr/bin/python3");
    assert_true(cfg->runner.pip_no_index);
    assert_false(cfg->server.use_tls);
    assert_int_equal(cfg->server.api_key_expiration, 2 * 86400000LL);
    assert_int_equal(cfg->sessions.sentinels.n, 2);
    assert_string_equal(cfg->sessions.sentinels.v[1], "[::1]:26380");
    assert_int_equal(cfg->sessions.token_ttl, 30 * 60000LL);
    assert_string_equal(cfg->broker.password, "p#ss;word");
    assert_int_equal(cfg->log.level, GT_LOG_ERROR);
    assert_int_equal(gt_config_finish(cfg, &err), GT_OK);
    assert_string_equal(cfg->store.path, "/srv/gantry dir/data/g.db");
    gt_config_free(&cfg);

    /* an empty value restores the default */
    if (load_text(f, "[runner]\ncapacity =\npython = ''\n", &cfg, &err) != GT_OK)
        fail_msg("%s", err.message);
    assert_int_equal(cfg->runner.capacity, 4);
    assert_string_equal(cfg->runner.python, "python3");
    gt_config_free(&cfg);
}

/* ---- --show-config ---- */

static void test_dump(void **state)
{
    fixture *f = *state;
    gt_config *cfg = NULL;
    gt_error err = {0};
    const char *text = "[broker]\npassword = s3cret-broker\n"
                       "[store]\nmongodb_uri = "
                       "mongodb://app:s3cret-mongo@db1:27017/?replicaSet=rs0\n"
                       "[client:prod]\napi_key = s3cret-key\nhost = h\n";
    env(f, "GANTRY_SESSIONS_PASSWORD=s3cret-redis");
    if (load_text(f, text, &cfg, &err) != GT_OK)
        fail_msg("%s", err.message);
    char *path = gt_xasprintf("%s/gantry.conf", f->dir);
    assert_int_equal(gt_config_set(cfg, "runner", "capacity", "9", "flag --capacity", &err),
                     GT_OK);
    assert_int_equal(gt_config_finish(cfg, &err), GT_OK);
    char *out = dump_to_string(f, cfg);
    assert_null(strstr(out, "s3cret"));
    char *first = gt_xasprintf("# config file: %s\n", path);
    assert_non_null(strstr(out, first));
    assert_non_null(strstr(out, "broker.password = ********"));
    assert_non_null(strstr(out, "sessions.password = ********"));
    assert_non_null(strstr(out, "# env GANTRY_SESSIONS_PASSWORD\n"));
    assert_non_null(
        strstr(out, "store.mongodb_uri = mongodb://app:****@db1:27017/?replicaSet=rs0"));
    assert_non_null(strstr(out, "client:prod.api_key = ********"));
    assert_non_null(strstr(out, "client.api_key =  "));
    assert_non_null(strstr(out, "runner.capacity = 9 "));
    assert_non_null(strstr(out, "# flag --capacity\n"));
    assert_non_null(strstr(out, "store.backend = local "));
    assert_non_null(strstr(out, "server.api_key_expiration = 1d "));
    assert_non_null(strstr(out, "log.level = info "));
    assert_non_null(strstr(out, "runner.pools = default "));
    assert_non_null(strstr(out, "# derived from application.working_dir\n"));
    char *line = gt_xasprintf("    # %s:2\n", path);
    assert_non_null(strstr(out, line));
    /* every key once: application.mode appears exactly once */
    char *p = strstr(out, "application.mode = ");
    assert_non_null(p);
    assert_null(strstr(p + 1, "application.mode = "));
    free(line);
    free(first);
    free(out);
    free(path);
    gt_config_free(&cfg);
}

/* ---- gt_config_finish ---- */

static void expect_finish_error(fixture *f, const char *text, const char *field,
                                const char *want)
{
    gt_config *cfg = NULL;
    gt_error err = {0};
    if (load_text(f, text, &cfg, &err) != GT_OK)
        fail_msg("load: %s", err.message);
    assert_int_equal(gt_config_finish(cfg, &err), GT_EINVAL);
    assert_string_equal(err.field, field);
    if (strstr(err.message, want) == NULL)
        fail_msg("got \"%s\", want it to contain \"%s\"", err.message, want);
    gt_config_free(&cfg);
}

static void test_finish_checks(void **state)
{
    fixture *f = *state;
    expect_finish_error(f, "[application]\nmode = server\n", "server.use_tls",
                        "[server] use_tls is true (default) but certificate_file and "
                        "private_key_file are not set");
    expect_finish_error(f, "[server]\ncertificate_file = /a.pem\n", "server.private_key_file",
                        "[server] certificate_file is set");
    /* an empty value restores the default; a list of only separators is empty */
    expect_finish_error(f, "[store]\nbackend = etcd\netcd_hosts = ,\n", "store.etcd_hosts",
                        "needs etcd_hosts");
    expect_finish_error(f, "[store]\nbackend = etcd\netcd_client_cert_auth = true\n",
                        "store.etcd_certificate_file", "etcd_client_cert_auth needs");
    expect_finish_error(f, "[application]\nmode = server\n[server]\nuse_tls = false\n"
                           "ha_enabled = true\n",
                        "server.distributed_execution", "ha_enabled needs distributed_execution");
    /* the seed's switch turns the same thing on */
    expect_finish_error(f, "[application]\nmode = server\n[server]\nuse_tls = false\n"
                           "[connect]\nserver_ha_enabled = true\n",
                        "server.distributed_execution", "ha_enabled needs distributed_execution");
    expect_finish_error(f, "[store]\nbackend = etcd\netcd_username = gantry\n",
                        "store.etcd_password", "etcd_username and etcd_password go together");
    expect_finish_error(f, "[store]\nbackend = mongodb\n", "store.mongodb_uri",
                        "backend = mongodb needs mongodb_uri");
    expect_finish_error(f, "[application]\nmode = client\n", "client.host",
                        "client mode needs [client] host");
    expect_finish_error(f, "[client:x]\ncertificate_file = /c.pem\n", "client.certificate_file",
                        "[client:x] certificate_file and private_key_file go together");

    gt_config *cfg = NULL;
    gt_error err = {0};
    assert_int_equal(load_text(f,
                               "[application]\nmode = server\n[server]\nuse_tls = false\n"
                               "[store]\nbackend = mongodb\nmongodb_uri = mongodb://h/\n",
                               &cfg, &err),
                     GT_OK);
    assert_int_equal(gt_config_finish(cfg, &err), GT_OK);
    assert_int_equal(gt_config_finish(cfg, &err), GT_OK); /* idempotent */
    gt_config_free(&cfg);
}

static void test_etcd_store_with_default_hosts(void **state)
{
    fixture *f = *state;
    gt_config *cfg = NULL;
    gt_error err = {0};
    assert_int_equal(load_text(f, "[store]\nbackend = etcd\netcd_use_tls = false\n", &cfg, &err),
                     GT_OK);
    assert_int_equal(gt_config_finish(cfg, &err), GT_OK);
    assert_string_equal(cfg->store.etcd_hosts.v[0], "localhost:2379");
    gt_config_free(&cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_defaults, setup, teardown),
        cmocka_unit_test_setup_teardown(test_seed_example, setup, teardown),
        cmocka_unit_test_setup_teardown(test_seed_server_template, setup, teardown),
        cmocka_unit_test_setup_teardown(test_example_files, setup, teardown),
        cmocka_unit_test_setup_teardown(test_error_unknown_key, setup, teardown),
        cmocka_unit_test_setup_teardown(test_error_unknown_section, setup, teardown),
        cmocka_unit_test_setup_teardown(test_error_syntax, setup, teardown),
        cmocka_unit_test_setup_teardown(test_error_duplicate, setup, teardown),
        cmocka_unit_test_setup_teardown(test_error_values, setup, teardown),
        cmocka_unit_test_setup_teardown(test_error_too_big, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_files, setup, teardown),
        cmocka_unit_test_setup_teardown(test_search_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_env_beats_file_flag_beats_env, setup, teardown),
        cmocka_unit_test_setup_teardown(test_env_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_values, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dump, setup, teardown),
        cmocka_unit_test_setup_teardown(test_finish_checks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_etcd_store_with_default_hosts, setup, teardown),
    };
    return cmocka_run_group_tests_name("config", tests, NULL, NULL);
}
