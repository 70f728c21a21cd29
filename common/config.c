#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* A config file larger than this is a mistake, not a configuration. */
#define CFG_MAX_FILE (1024 * 1024)
/* Bounds per-line profile lookups and the duplicate-key bookkeeping. */
#define CFG_MAX_PROFILES 64
#define CFG_MAX_PROFILE_NAME 64

#define MS_SEC INT64_C(1000)
#define MS_MIN (60 * MS_SEC)
#define MS_HOUR (60 * MS_MIN)
#define MS_DAY (24 * MS_HOUR)
#define KIB INT64_C(1024)
#define MIB (1024 * KIB)
#define GIB (1024 * MIB)

typedef enum cfg_type {
    T_STR,      /* char *, NULL when empty */
    T_PATH,     /* char *, "~" expanded by gt_config_finish */
    T_BOOL,
    T_INT,      /* int64_t in [min, max] */
    T_SIZE,     /* int64_t bytes: 1048576, 512KiB, 1M (binary multiples) */
    T_DURATION, /* int64_t ms: 90s, 15m, 24h, 30d, 1h30m, 500ms; a plain number is in `unit` */
    T_LIST,     /* gt_strv: items separated by spaces or commas */
    T_MODE,     /* gt_config_mode */
    T_BACKEND,  /* gt_config_backend */
    T_LEVEL,    /* gt_log_level */
    T_SANDBOX   /* gt_config_sandbox */
} cfg_type;

enum {
    F_SECRET = 1,     /* never printed */
    F_URI_SECRET = 2, /* a URI whose password is never printed */
    F_PROFILE = 4     /* also settable in [client:NAME] profiles */
};

/* Checks one string (or one list item); on false writes the reason to why. */
typedef bool (*cfg_check)(const char *s, gt_buf *why);

typedef struct cfg_key {
    const char *section;
    const char *key;
    cfg_type type;
    size_t offset;      /* into gt_config */
    int64_t min, max;   /* T_INT, T_SIZE, T_DURATION (ms) */
    int64_t unit;       /* T_DURATION: ms per plain number */
    const char *def;    /* parsed like any value by gt_config_new */
    cfg_check check;
    unsigned flags;
    const char *help;
} cfg_key;

static bool chk_name(const char *s, gt_buf *why);
static bool chk_host(const char *s, gt_buf *why);
static bool chk_hostport(const char *s, gt_buf *why);
static bool chk_url(const char *s, gt_buf *why);
static bool chk_client_hosts(const char *s, gt_buf *why);
static bool chk_mongodb_uri(const char *s, gt_buf *why);
static bool chk_dbname(const char *s, gt_buf *why);
static bool chk_timezone(const char *s, gt_buf *why);

#define OFF(sec, f) offsetof(gt_config, sec.f)
#define KSTR(S, sec, f, def, chk, fl, help) \
    {S, #f, T_STR, OFF(sec, f), 0, 0, 0, def, chk, fl, help}
#define KPATH(S, sec, f, def, fl, help) \
    {S, #f, T_PATH, OFF(sec, f), 0, 0, 0, def, NULL, fl, help}
#define KBOOL(S, sec, f, def, fl, help) \
    {S, #f, T_BOOL, OFF(sec, f), 0, 0, 0, def, NULL, fl, help}
#define KINT(S, sec, f, def, lo, hi, fl, help) \
    {S, #f, T_INT, OFF(sec, f), lo, hi, 0, def, NULL, fl, help}
#define KSIZE(S, sec, f, def, lo, hi, help) \
    {S, #f, T_SIZE, OFF(sec, f), lo, hi, 0, def, NULL, 0, help}
#define KDUR(S, sec, f, def, lo, hi, unit, help) \
    {S, #f, T_DURATION, OFF(sec, f), lo, hi, unit, def, NULL, 0, help}
#define KLIST(S, sec, f, def, chk, help) \
    {S, #f, T_LIST, OFF(sec, f), 0, 0, 0, def, chk, 0, help}
#define KENUM(T, S, sec, f, def, help) \
    {S, #f, T, OFF(sec, f), 0, 0, 0, def, NULL, 0, help}

/* Every key, once. Section and key names and defaults follow the seed's
 * (Itential Automation Gateway 5) documented gateway.conf; entries marked Gantry
 * are ours. Order here is the order of --show-config. */
static const cfg_key keys[] = {
    /* [application] */
    KENUM(T_MODE, "application", application, mode, "local",
          "local | server | client | runner"),
    KPATH("application", application, ca_certificate_file, "", 0,
          "CA certificate for every TLS connection between nodes"),
    KSTR("application", application, cluster_id, "cluster_1", chk_name, 0,
         "names this cluster; runners take work from exec.<cluster_id>.<pool>"),
    KPATH("application", application, working_dir, "~/.gantry", 0,
          "working files: store, key file, caches (seed: ~/.gateway.d)"),
    KDUR("application", application, venv_sweep_interval, "24h", MS_MIN, 365 * MS_DAY, MS_SEC,
         "how often idle virtual environments are pruned"),
    KDUR("application", application, venv_retention_period, "30d", MS_MIN, 3650 * MS_DAY,
         MS_SEC, "idle time after which a virtual environment is removed"),
    KBOOL("application", application, auto_accept_eula, "false", 0,
          "accepted for older seed files; Gantry has no EULA"),

    /* [server] */
    KSTR("server", server, listen_address, "127.0.0.1", chk_host, 0,
         "address the REST API listens on"),
    KINT("server", server, port, "50051", 0, 65535, 0,
         "port the REST API listens on (0: any free port)"),
    KBOOL("server", server, use_tls, "true", 0,
          "serve HTTPS; needs certificate_file and private_key_file"),
    KPATH("server", server, certificate_file, "", 0, "server certificate (PEM)"),
    KPATH("server", server, private_key_file, "", 0, "server private key (PEM)"),
    KBOOL("server", server, client_cert_auth, "false", 0,
          "require client certificates signed by [application] ca_certificate_file (mutual "
          "TLS; needs use_tls)"),
    KDUR("server", server, api_key_expiration, "1440", MS_MIN, 3650 * MS_DAY, MS_MIN,
         "lifetime of an API key; a plain number is minutes"),
    KBOOL("server", server, distributed_execution, "false", 0,
          "run services on runner nodes instead of on the server"),
    KSIZE("server", server, grpc_max_recv_msg_size, "4MiB", 0, 2 * GIB,
          "accepted from seed files (5.5.1+); Gantry speaks REST, see max_body_size"),
    /* Gantry */
    KSIZE("server", server, max_body_size, "1MiB", KIB, GIB, "largest request body accepted"),
    KINT("server", server, worker_threads, "4", 1, 256, 0, "threads for blocking work"),
    KINT("server", server, max_connections, "1024", 1, 1000000, 0,
         "client connections served at once; more are answered 503"),
    KSIZE("server", server, max_buffered_bytes, "64MiB", 64 * KIB, 64 * GIB,
          "request bytes (heads and bodies) held across all connections; past it 503"),
    KBOOL("server", server, ha_enabled, "false", 0,
          "controllers compete for one lease; only its holder serves (active/standby)"),
    KDUR("server", server, ha_lease_ttl, "2s", MS_SEC, 60 * MS_SEC, MS_SEC,
         "the active controller's lease; a standby takes over this long after it died"),
    KSTR("server", server, advertise_address, "", chk_hostport, 0,
         "host:port clients reach this controller at (default: host name and port)"),

    /* [client], also [client:NAME] profiles */
    KSTR("client", client, host, "", chk_client_hosts, F_PROFILE,
         "server host the CLI talks to in client mode; several (host or host:port, space "
         "separated) are tried in turn"),
    KINT("client", client, port, "50051", 1, 65535, F_PROFILE, "server port"),
    KBOOL("client", client, use_tls, "true", F_PROFILE, "use HTTPS to reach the server"),
    KPATH("client", client, certificate_file, "", F_PROFILE, "client certificate (PEM)"),
    KPATH("client", client, private_key_file, "", F_PROFILE, "client private key (PEM)"),
    KSTR("client", client, api_key, "", NULL, F_PROFILE | F_SECRET, "API key sent to the server"),

    /* [connect] (the seed's Gateway Manager link; accepted, not used by Gantry) */
    KBOOL("connect", connect, enabled, "true", 0, "connect to a manager"),
    KLIST("connect", connect, hosts, "", chk_hostport, "manager hosts, host:port, space separated"),
    KPATH("connect", connect, certificate_file, "", 0, "certificate for the manager link"),
    KPATH("connect", connect, private_key_file, "", 0, "private key for the manager link"),
    KBOOL("connect", connect, insecure_tls, "false", 0, "skip certificate verification"),
    KBOOL("connect", connect, server_ha_enabled, "false", 0, "several servers, one active"),
    KBOOL("connect", connect, server_ha_is_primary, "false", 0,
          "this server is preferred as active"),
    KSTR("connect", connect, proxy_url, "", chk_url, 0, "HTTP(S) proxy for the manager link"),

    /* [features] */
    KBOOL("features", features, ansible_enabled, "true", 0, "Ansible playbooks and services"),
    KBOOL("features", features, hostkeys_enabled, "true", 0, "SSH host key management"),
    KBOOL("features", features, mcp_enabled, "true", 0, "accepted from seed files (5.5+)"),
    KBOOL("features", features, opentofu_enabled, "true", 0, "OpenTofu plans and services"),
    KBOOL("features", features, python_enabled, "true", 0, "Python scripts and services"),

    /* [log] */
    KENUM(T_LEVEL, "log", log, level, "info", "trace | debug | info | warn | error | fatal | off"),
    KBOOL("log", log, console_json, "false", 0, "console logs as JSON lines"),
    KBOOL("log", log, file_enabled, "true", 0, "also write gantry.log"),
    KBOOL("log", log, file_json, "false", 0, "file logs as JSON lines"),
    KPATH("log", log, server_dir, "/var/log/gantry", 0, "directory of gantry.log for daemons"),
    KSTR("log", log, timestamp_timezone, "utc", chk_timezone, 0, "utc, local or a tz name"),

    /* [runner] */
    KSTR("runner", runner, announcement_address, "", chk_host, 0,
         "address a runner announces (default: its own)"),
    KSTR("runner", runner, listen_address, "127.0.0.1", chk_host, 0, "address a runner listens on"),
    KINT("runner", runner, port, "50051", 0, 65535, 0, "port a runner listens on"),
    KBOOL("runner", runner, use_tls, "true", 0, "TLS between servers and runners"),
    KPATH("runner", runner, certificate_file, "", 0, "runner certificate (PEM)"),
    KPATH("runner", runner, private_key_file, "", 0, "runner private key (PEM)"),
    KBOOL("runner", runner, client_cert_auth, "false", 0, "accepted from older seed files"),
    /* Gantry */
    KLIST("runner", runner, pools, "default", chk_name,
          "pools this runner serves, space or comma separated"),
    KINT("runner", runner, capacity, "4", 1, 1024, 0, "executions run at once"),
    KDUR("runner", runner, heartbeat_interval, "5s", 100, MS_HOUR, MS_SEC,
         "how often a runner announces itself"),
    KSIZE("runner", runner, output_limit, "1048576", KIB, GIB,
          "bytes of stdout and of stderr kept per run"),
    KDUR("runner", runner, kill_grace_period, "5s", 0, MS_HOUR, MS_SEC,
         "SIGTERM to SIGKILL delay on timeout"),
    KDUR("runner", runner, drain_timeout, "30s", 0, MS_HOUR, MS_SEC,
         "SIGTERM: how long in-flight runs may finish before they are canceled (Gantry)"),
    KDUR("runner", runner, default_timeout, "0", 0, 30 * MS_DAY, MS_SEC,
         "run timeout when a service sets none (0: none)"),
    KDUR("runner", runner, fetch_timeout, "5m", 0, MS_DAY, MS_SEC, "timeout for git and pip"),
    KDUR("runner", runner, reference_max_age, "0", 0, MS_HOUR, MS_SEC,
         "reuse the commit a repository's reference resolved to this long before asking the "
         "remote again (0: ask on every run) (Gantry)"),
    KDUR("runner", runner, redispatch_after, "30s", MS_SEC, MS_DAY, MS_SEC,
         "the scheduler announces queued work again when no runner took it this long "
         "(doubling per announcement, up to 16 times this)"),
    KSTR("runner", runner, python, "python3", NULL, 0, "Python interpreter"),
    KSTR("runner", runner, ansible_playbook, "ansible-playbook", NULL, 0,
         "ansible-playbook program"),
    KSTR("runner", runner, git, "git", NULL, 0, "git program"),
    KSTR("runner", runner, tofu, "tofu", NULL, 0, "OpenTofu program"),
    KSTR("runner", runner, pip_index_url, "", chk_url, 0, "pip --index-url"),
    KSTR("runner", runner, pip_extra_index_url, "", NULL, 0, "pip --extra-index-url"),
    KSTR("runner", runner, pip_find_links, "", NULL, 0, "pip --find-links"),
    KBOOL("runner", runner, pip_no_index, "false", 0, "pip --no-index"),
    KBOOL("runner", runner, allow_http_repositories, "false", 0,
          "let git fetch repositories over plain http:// (unauthenticated, unencrypted)"),
    KSTR("runner", runner, pip_trusted_host, "", NULL, 0, "pip --trusted-host"),
    /* Gantry: run isolation and limits (a service's "limits" override the four limits) */
    KENUM(T_SANDBOX, "runner", runner, sandbox, "bubblewrap",
          "bubblewrap | none: each run in a bubblewrap sandbox, or not isolated (a warning)"),
    KSIZE("runner", runner, memory_limit, "2GiB", 0, 1024 * GIB,
          "address space per process of a run (RLIMIT_AS); 0: none"),
    KINT("runner", runner, process_limit, "256", 0, 1 << 22, 0,
         "processes and threads of a run; 0: none"),
    KDUR("runner", runner, cpu_time_limit, "1h", 0, 30 * MS_DAY, MS_SEC,
         "CPU time per process of a run (SIGXCPU, then SIGKILL); 0: none"),
    KINT("runner", runner, open_files_limit, "1024", 0, 1 << 20, 0,
         "open files per process of a run; 0: none"),

    /* [store] */
    KENUM(T_BACKEND, "store", store, backend, "local", "local | memory | etcd | mongodb"),
    /* Gantry */
    KPATH("store", store, path, "", 0, "SQLite file (default <working_dir>/gantry.db)"),
    KLIST("store", store, etcd_hosts, "localhost:2379", chk_hostport,
          "etcd members, host:port, space separated"),
    KBOOL("store", store, etcd_use_tls, "true", 0, "TLS to etcd"),
    KBOOL("store", store, etcd_client_cert_auth, "false", 0,
          "present a client certificate to etcd"),
    KPATH("store", store, etcd_ca_certificate_file, "", 0, "CA of the etcd cluster"),
    KPATH("store", store, etcd_certificate_file, "", 0, "client certificate for etcd"),
    KPATH("store", store, etcd_private_key_file, "", 0, "client private key for etcd"),
    /* Gantry */
    KSTR("store", store, etcd_username, "", NULL, 0,
         "etcd user (etcd's auth); empty: no authentication"),
    KSTR("store", store, etcd_password, "", NULL, F_SECRET,
         "that user's password (better from GANTRY_STORE_ETCD_PASSWORD)"),
    KSTR("store", store, dynamodb_table_name, "", NULL, 0,
         "accepted from seed files; Gantry has no DynamoDB driver"),
    /* Gantry */
    KSTR("store", store, mongodb_uri, "", chk_mongodb_uri, F_URI_SECRET,
         "mongodb:// or mongodb+srv:// URI"),
    KSTR("store", store, mongodb_database, "gantry", chk_dbname, 0, "MongoDB database name"),

    /* [secrets] */
    KPATH("secrets", secrets, encrypt_key_file, "", 0,
          "key file for secrets (default <working_dir>/secrets.key)"),

    /* [broker]: Gantry (RabbitMQ) */
    KLIST("broker", broker, hosts, "127.0.0.1:5672", chk_hostport,
          "AMQP hosts, host:port, space separated"),
    KSTR("broker", broker, vhost, "/", NULL, 0, "AMQP virtual host"),
    KSTR("broker", broker, username, "guest", NULL, 0, "AMQP user"),
    KSTR("broker", broker, password, "guest", NULL, F_SECRET, "AMQP password"),
    KBOOL("broker", broker, use_tls, "false", 0, "AMQPS"),
    KPATH("broker", broker, ca_certificate_file, "", 0, "CA of the broker"),
    KPATH("broker", broker, certificate_file, "", 0, "client certificate for the broker"),
    KPATH("broker", broker, private_key_file, "", 0, "client private key for the broker"),
    KDUR("broker", broker, heartbeat, "60s", 0, MS_HOUR, MS_SEC, "AMQP heartbeat (0: off)"),
    KINT("broker", broker, prefetch, "10", 1, 65535, 0, "unacknowledged deliveries per consumer"),

    /* [sessions]: Gantry (Redis, optionally through Sentinel) */
    KLIST("sessions", sessions, sentinels, "", chk_hostport, "Sentinel addresses; empty: use host"),
    KSTR("sessions", sessions, master_name, "mymaster", NULL, 0, "Sentinel master name"),
    KSTR("sessions", sessions, host, "127.0.0.1:6379", chk_hostport, 0,
         "Redis host:port when there are no sentinels"),
    KSTR("sessions", sessions, username, "", chk_host, 0,
         "Redis ACL user (AUTH username password); empty: the default user"),
    KSTR("sessions", sessions, password, "", NULL, F_SECRET, "Redis password"),
    KSTR("sessions", sessions, sentinel_username, "", chk_host, 0,
         "user for the sentinels, when they require AUTH"),
    KSTR("sessions", sessions, sentinel_password, "", NULL, F_SECRET,
         "password for the sentinels, when they require AUTH"),
    KINT("sessions", sessions, db, "0", 0, 1023, 0, "Redis database number"),
    KDUR("sessions", sessions, token_ttl, "60", MS_SEC, 365 * MS_DAY, MS_MIN,
         "login token lifetime; a plain number is minutes"),
    KBOOL("sessions", sessions, use_tls, "false", 0, "TLS to Redis"),
    KPATH("sessions", sessions, ca_certificate_file, "", 0, "CA of Redis"),
    KPATH("sessions", sessions, signing_key_file, "", 0,
          "key that signs login sessions (default <working_dir>/sessions.key); the same file "
          "on every tokend and controller, and on no runner"),

    /* [tokend]: Gantry */
    KLIST("tokend", tokend, controller_users, "gantry-controller", chk_host,
          "broker users (AMQP user_id) whose requests gantry-tokend serves"),

    /* [registry] */
    KBOOL("registry", registry, default_overridable, "true", 0,
          "services may override the default package registry"),

    /* [terminal] */
    KBOOL("terminal", terminal, no_color, "false", 0, "no colors in terminal output"),
    KSTR("terminal", terminal, timestamp_timezone, "utc", chk_timezone, 0,
         "utc, local or a tz name"),

    /* [python-script] */
    KSTR("python-script", python_script, requirements_file, "requirements.txt", NULL, 0,
         "requirements file looked for in a repository"),
};

#define NKEYS (sizeof keys / sizeof keys[0])

/* Other names the seed documents for the same key. */
static const struct {
    const char *section, *alias, *key;
} aliases[] = {
    {"application", "application_mode", "mode"}, /* the seed's variables page */
};

static const char *const sections[] = {
    "application", "server", "client", "connect", "features", "log", "runner", "store",
    "secrets", "broker", "sessions", "tokend", "registry", "terminal", "python-script",
};
#define NSECTIONS (sizeof sections / sizeof sections[0])

static const char *const mode_names[] = {"local", "server", "client", "runner"};
static const char *const backend_names[] = {"local", "memory", "etcd", "mongodb"};
static const char *const sandbox_names[] = {"bubblewrap", "none"};

typedef struct cfg_profile {
    char *name;          /* lower case */
    gt_config_client c;
    char **sources;      /* NKEYS, only F_PROFILE entries used; NULL = unset */
} cfg_profile;

struct gt_config_state {
    char **sources;      /* NKEYS; NULL = default */
    char *path;
    char *home;          /* HOME from the envp given to load; NULL: getenv */
    cfg_profile *profiles;
    size_t nprofiles;
};

/* A parsed value before it is stored. */
typedef struct cfg_val {
    char *s;
    bool b;
    int64_t i;
    gt_strv list;
} cfg_val;

const char *gt_config_mode_name(gt_config_mode mode)
{
    return (unsigned)mode < 4 ? mode_names[mode] : "?";
}

const char *gt_config_backend_name(gt_config_backend backend)
{
    return (unsigned)backend < 4 ? backend_names[backend] : "?";
}

/* ---- small helpers ---- */

static char *trim(char *s)
{
    while (*s && isspace((unsigned char)*s))
        s++;
    size_t n = strlen(s);
    while (n > 0 && isspace((unsigned char)s[n - 1]))
        s[--n] = '\0';
    return s;
}

static void lower(char *s)
{
    for (; *s; s++)
        *s = (char)tolower((unsigned char)*s);
}

/* Copies s for a message, cut to 64 characters, control bytes as '?'. */
static const char *shown(const char *s, char buf[80])
{
    size_t i = 0;
    for (; s[i] && i < 64; i++)
        buf[i] = (unsigned char)s[i] < 0x20 || s[i] == 0x7f ? '?' : s[i];
    if (s[i])
        memcpy(buf + i, "...", 4);
    else
        buf[i] = '\0';
    return buf;
}

static void *slot_of(gt_config *cfg, cfg_profile *p, const cfg_key *k)
{
    if (p)
        return (char *)&p->c + (k->offset - offsetof(gt_config, client));
    return (char *)cfg + k->offset;
}

static const void *cslot_of(const gt_config *cfg, const cfg_profile *p, const cfg_key *k)
{
    if (p)
        return (const char *)&p->c + (k->offset - offsetof(gt_config, client));
    return (const char *)cfg + k->offset;
}

static char **source_of(gt_config *cfg, cfg_profile *p, const cfg_key *k)
{
    size_t i = (size_t)(k - keys);
    return p ? &p->sources[i] : &cfg->state->sources[i];
}

static void slot_clear(void *slot, const cfg_key *k)
{
    if (k->type == T_STR || k->type == T_PATH) {
        free(*(char **)slot);
        *(char **)slot = NULL;
    } else if (k->type == T_LIST) {
        gt_strv_free((gt_strv *)slot);
    }
}

/* Moves v into the slot, releasing what was there. */
static void slot_store(void *slot, const cfg_key *k, cfg_val *v)
{
    slot_clear(slot, k);
    switch (k->type) {
    case T_STR:
    case T_PATH:
        *(char **)slot = v->s;
        v->s = NULL;
        break;
    case T_BOOL:
        *(bool *)slot = v->b;
        break;
    case T_INT:
    case T_SIZE:
    case T_DURATION:
        *(int64_t *)slot = v->i;
        break;
    case T_LIST:
        *(gt_strv *)slot = v->list;
        memset(&v->list, 0, sizeof v->list);
        break;
    case T_MODE:
        *(gt_config_mode *)slot = (gt_config_mode)v->i;
        break;
    case T_BACKEND:
        *(gt_config_backend *)slot = (gt_config_backend)v->i;
        break;
    case T_LEVEL:
        *(gt_log_level *)slot = (gt_log_level)v->i;
        break;
    case T_SANDBOX:
        *(gt_config_sandbox *)slot = (gt_config_sandbox)v->i;
        break;
    }
}

static void val_free(cfg_val *v)
{
    free(v->s);
    gt_strv_free(&v->list);
    memset(v, 0, sizeof *v);
}

/* Optimal string alignment distance, for "did you mean" (short words only). */
static size_t edit_distance(const char *a, const char *b)
{
    size_t n = strlen(a), m = strlen(b);
    if (n > 48 || m > 48)
        return SIZE_MAX;
    size_t d[49][49];
    for (size_t i = 0; i <= n; i++)
        d[i][0] = i;
    for (size_t j = 0; j <= m; j++)
        d[0][j] = j;
    for (size_t i = 1; i <= n; i++) {
        for (size_t j = 1; j <= m; j++) {
            size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
            size_t v = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < v)
                v = d[i][j - 1] + 1;
            if (d[i - 1][j - 1] + cost < v)
                v = d[i - 1][j - 1] + cost;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] &&
                d[i - 2][j - 2] + 1 < v)
                v = d[i - 2][j - 2] + 1;
            d[i][j] = v;
        }
    }
    return d[n][m];
}

/* The closest candidate within two edits (and fewer edits than the word is long). */
static const char *closest(const char *word, const char *cand, const char *best, size_t *bestd)
{
    size_t d = edit_distance(word, cand);
    if (d <= 2 && d < strlen(word) && d < *bestd) {
        *bestd = d;
        return cand;
    }
    return best;
}

static const char *suggest_key(const char *section, const char *word, bool profile)
{
    const char *best = NULL;
    size_t bestd = SIZE_MAX;
    for (size_t i = 0; i < NKEYS; i++)
        if (strcmp(keys[i].section, section) == 0 && (!profile || (keys[i].flags & F_PROFILE)))
            best = closest(word, keys[i].key, best, &bestd);
    return best;
}

static const char *suggest_section(const char *word)
{
    const char *best = NULL;
    size_t bestd = SIZE_MAX;
    for (size_t i = 0; i < NSECTIONS; i++)
        best = closest(word, sections[i], best, &bestd);
    return best;
}

static const char *known_section(const char *name)
{
    for (size_t i = 0; i < NSECTIONS; i++)
        if (strcmp(sections[i], name) == 0)
            return sections[i];
    return NULL;
}

/* The entry for section/key (lower case), aliases included; NULL if none. */
static const cfg_key *find_key(const char *section, const char *key)
{
    for (size_t i = 0; i < sizeof aliases / sizeof aliases[0]; i++)
        if (strcmp(aliases[i].section, section) == 0 && strcmp(aliases[i].alias, key) == 0)
            key = aliases[i].key;
    for (size_t i = 0; i < NKEYS; i++)
        if (strcmp(keys[i].section, section) == 0 && strcmp(keys[i].key, key) == 0)
            return &keys[i];
    return NULL;
}

/* ---- validators ---- */

static bool chk_name(const char *s, gt_buf *why)
{
    if (gt_name_valid(s))
        return true;
    gt_buf_puts(why, "expected 1-128 characters of A-Z a-z 0-9 _ . - (not starting with . or -)");
    return false;
}

static bool chk_host(const char *s, gt_buf *why)
{
    size_t n = strlen(s);
    for (size_t i = 0; i < n; i++) {
        if (isspace((unsigned char)s[i]) || iscntrl((unsigned char)s[i])) {
            gt_buf_puts(why, "a host name or address has no spaces");
            return false;
        }
    }
    if (n > 255) {
        gt_buf_puts(why, "longer than 255 characters");
        return false;
    }
    return true;
}

static bool chk_hostport(const char *s, gt_buf *why)
{
    const char *colon;
    size_t hostlen;
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (close == NULL || close[1] != ':') {
            gt_buf_puts(why, "expected [ipv6]:port");
            return false;
        }
        colon = close + 1;
        hostlen = (size_t)(close - s - 1);
    } else {
        colon = strrchr(s, ':');
        if (colon == NULL) {
            gt_buf_puts(why, "expected host:port");
            return false;
        }
        hostlen = (size_t)(colon - s);
        if (memchr(s, ':', hostlen) != NULL) {
            gt_buf_puts(why, "an IPv6 address needs brackets: [addr]:port");
            return false;
        }
    }
    if (hostlen == 0) {
        gt_buf_puts(why, "expected host:port (the host is missing)");
        return false;
    }
    if (!chk_host(s, why))
        return false;
    int64_t port;
    gt_error e = {0};
    if (gt_parse_int64(colon + 1, 1, 65535, &port, "port", &e) != GT_OK) {
        gt_buf_puts(why, e.message);
        return false;
    }
    return true;
}

static bool chk_client_hosts(const char *s, gt_buf *why)
{
    size_t n = 0;
    char *copy = gt_xstrdup(s), *save = NULL;
    bool ok = true;
    for (char *h = strtok_r(copy, " \t", &save); h && ok; h = strtok_r(NULL, " \t", &save)) {
        n++;
        /* host:port (or [v6]:port) names its own port; a plain host uses [client] port */
        bool has_port = h[0] == '[' || (strchr(h, ':') && strchr(h, ':') == strrchr(h, ':'));
        ok = has_port ? chk_hostport(h, why) : chk_host(h, why);
        if (!ok)
            gt_buf_printf(why, " (in \"%s\")", h);
    }
    free(copy);
    if (ok && n > 16) {
        gt_buf_puts(why, "at most 16 hosts");
        ok = false;
    }
    return ok;
}

static bool chk_url(const char *s, gt_buf *why)
{
    if (strncmp(s, "http://", 7) == 0 || strncmp(s, "https://", 8) == 0 ||
        strncmp(s, "file://", 7) == 0)
        return chk_host(s, why);
    gt_buf_puts(why, "expected an http://, https:// or file:// URL");
    return false;
}

static bool chk_mongodb_uri(const char *s, gt_buf *why)
{
    if (strncmp(s, "mongodb://", 10) == 0 || strncmp(s, "mongodb+srv://", 14) == 0)
        return true;
    gt_buf_puts(why, "expected a mongodb:// or mongodb+srv:// URI");
    return false;
}

static bool chk_dbname(const char *s, gt_buf *why)
{
    size_t n = strlen(s);
    if (n > 63 || strpbrk(s, "/\\. \"$*<>:|?") != NULL) {
        gt_buf_puts(why, "a MongoDB database name has at most 63 characters and none of "
                         "/\\. \"$*<>:|?");
        return false;
    }
    return true;
}

static bool chk_timezone(const char *s, gt_buf *why)
{
    if (strcasecmp(s, "utc") == 0 || strcasecmp(s, "local") == 0)
        return true;
    bool ok = s[0] != '/' && strstr(s, "..") == NULL && strlen(s) <= 64;
    for (const char *p = s; ok && *p; p++)
        ok = isalnum((unsigned char)*p) || strchr("/_+-", *p) != NULL;
    if (!ok)
        gt_buf_puts(why, "expected utc, local or a tz name such as America/New_York");
    return ok;
}

/* ---- typed parsing ---- */

static bool parse_enum(const char *s, const char *const *names, size_t n, int64_t *out,
                       gt_buf *why)
{
    for (size_t i = 0; i < n; i++) {
        if (strcasecmp(s, names[i]) == 0) {
            *out = (int64_t)i;
            return true;
        }
    }
    char b[80];
    gt_buf_printf(why, "\"%s\" is not one of", shown(s, b));
    for (size_t i = 0; i < n; i++)
        gt_buf_printf(why, "%s %s", i ? "," : "", names[i]);
    return false;
}

static void format_duration(int64_t ms, char *buf, size_t n)
{
    static const struct { int64_t ms; const char *unit; } parts[] = {
        {MS_DAY, "d"}, {MS_HOUR, "h"}, {MS_MIN, "m"}, {MS_SEC, "s"}, {1, "ms"},
    };
    if (ms == 0) {
        snprintf(buf, n, "0");
        return;
    }
    size_t len = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < sizeof parts / sizeof parts[0] && len < n; i++) {
        int64_t q = ms / parts[i].ms;
        ms %= parts[i].ms;
        if (q > 0) {
            int w = snprintf(buf + len, n - len, "%lld%s", (long long)q, parts[i].unit);
            if (w < 0)
                break;
            len += (size_t)w;
        }
    }
}

/* Go-style durations ("1h30m", "1.5h", "500ms") plus days ("30d"); a plain number is
 * counted in unit milliseconds. */
static bool parse_duration(const char *s, int64_t unit, int64_t *out, gt_buf *why)
{
    static const struct { const char *name; int64_t ms; } units[] = {
        {"ms", 1}, {"s", MS_SEC}, {"m", MS_MIN}, {"h", MS_HOUR}, {"d", MS_DAY},
    };
    const int64_t limit = INT64_MAX / 4;
    char b[80];
    const char *p = s;
    int64_t total = 0;
    bool plain = true;
    for (const char *q = s; *q; q++)
        plain = plain && isdigit((unsigned char)*q);
    if (plain) {
        errno = 0;
        char *end;
        long long v = strtoll(s, &end, 10);
        if (errno == ERANGE || *end != '\0' || v > limit / unit)
            goto bad;
        *out = (int64_t)v * unit;
        return true;
    }
    while (*p) {
        int64_t whole = 0, frac = 0, scale = 1;
        bool digits = false;
        for (; isdigit((unsigned char)*p); p++, digits = true) {
            if (whole > limit / 10)
                goto bad;
            whole = whole * 10 + (*p - '0');
        }
        if (*p == '.') {
            for (p++; isdigit((unsigned char)*p); p++, digits = true) {
                if (scale < INT64_C(1000000000)) {
                    frac = frac * 10 + (*p - '0');
                    scale *= 10;
                }
            }
        }
        if (!digits)
            goto bad;
        int64_t ums = 0;
        for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
            size_t n = strlen(units[i].name);
            if (strncmp(p, units[i].name, n) == 0 && !isalpha((unsigned char)p[n])) {
                ums = units[i].ms;
                p += n;
                break;
            }
        }
        if (ums == 0 || whole > limit / ums)
            goto bad;
        int64_t part = whole * ums + frac * ums / scale;
        if (total > limit - part)
            goto bad;
        total += part;
    }
    *out = total;
    return true;
bad:
    gt_buf_printf(why, "expected a duration such as 90s, 15m, 24h, 30d or 1h30m, got \"%s\"",
                  shown(s, b));
    return false;
}

/* Bytes, optionally with a binary unit: 1048576, 512K, 512KiB, 1M, 1MiB, 2G. */
static bool parse_size(const char *s, int64_t *out, gt_buf *why)
{
    static const struct { const char *name; int64_t mult; } units[] = {
        {"", 1},      {"b", 1},      {"k", KIB},    {"kb", KIB}, {"kib", KIB}, {"m", MIB},
        {"mb", MIB},  {"mib", MIB},  {"g", GIB},    {"gb", GIB}, {"gib", GIB},
    };
    char b[80];
    const char *p = s;
    int64_t v = 0;
    if (!isdigit((unsigned char)*p))
        goto bad;
    for (; isdigit((unsigned char)*p); p++) {
        if (v > (INT64_MAX / 4) / 10)
            goto bad;
        v = v * 10 + (*p - '0');
    }
    while (*p == ' ')
        p++;
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        if (strcasecmp(p, units[i].name) == 0) {
            if (v > (INT64_MAX / 4) / units[i].mult)
                goto bad;
            *out = v * units[i].mult;
            return true;
        }
    }
bad:
    gt_buf_printf(why, "expected a size in bytes such as 1048576, 512KiB or 1MiB, got \"%s\"",
                  shown(s, b));
    return false;
}

gt_err gt_config_parse_size(const char *s, const char *what, int64_t *out, gt_error *err)
{
    gt_buf why = {0};
    gt_err rc = GT_OK;
    if (s == NULL || *s == '\0' || !parse_size(s, out, &why))
        rc = gt_error_set(err, GT_EINVAL, "%s: %s", what,
                          why.data ? why.data : "expected a size such as 512KiB or 1MiB");
    gt_buf_free(&why);
    return rc;
}

gt_err gt_config_parse_duration(const char *s, int64_t unit_ms, const char *what, int64_t *out,
                                gt_error *err)
{
    gt_buf why = {0};
    gt_err rc = GT_OK;
    if (s == NULL || *s == '\0' || !parse_duration(s, unit_ms > 0 ? unit_ms : 1, out, &why))
        rc = gt_error_set(err, GT_EINVAL, "%s: %s", what,
                          why.data ? why.data : "expected a duration such as 90s or 1h30m");
    gt_buf_free(&why);
    return rc;
}

/* Parses text (non-empty, already unquoted) for k into v; on false, why holds
 * "[section] key: reason". label names the key in that message. */
static bool parse_value(const cfg_key *k, const char *label, const char *text, cfg_val *v,
                        gt_buf *why)
{
    gt_buf reason = {0};
    bool ok = true;
    char b1[32], b2[32], b3[80];
    switch (k->type) {
    case T_STR:
    case T_PATH:
        ok = k->check == NULL || k->check(text, &reason);
        if (ok)
            v->s = text[0] ? gt_xstrdup(text) : NULL;
        break;
    case T_BOOL: {
        gt_error e = {0};
        ok = gt_parse_bool(text, &v->b, label, &e) == GT_OK;
        if (!ok) {
            gt_buf_puts(why, e.message);
            goto done;
        }
        break;
    }
    case T_INT: {
        gt_error e = {0};
        ok = gt_parse_int64(text, k->min, k->max, &v->i, label, &e) == GT_OK;
        if (!ok) {
            gt_buf_puts(why, e.message);
            goto done;
        }
        break;
    }
    case T_SIZE:
        ok = parse_size(text, &v->i, &reason);
        if (ok && (v->i < k->min || v->i > k->max)) {
            gt_buf_printf(&reason, "%lld bytes is out of range [%lld, %lld]", (long long)v->i,
                          (long long)k->min, (long long)k->max);
            ok = false;
        }
        break;
    case T_DURATION:
        ok = parse_duration(text, k->unit, &v->i, &reason);
        if (ok && (v->i < k->min || v->i > k->max)) {
            format_duration(k->min, b1, sizeof b1);
            format_duration(k->max, b2, sizeof b2);
            gt_buf_printf(&reason, "\"%s\" is out of range [%s, %s]", shown(text, b3), b1, b2);
            ok = false;
        }
        break;
    case T_LIST: {
        char *copy = gt_xstrdup(text);
        for (char *save = NULL, *item = strtok_r(copy, " \t,", &save); item && ok;
             item = strtok_r(NULL, " \t,", &save)) {
            if (k->check && !k->check(item, &reason)) {
                gt_buf why_item = {0};
                gt_buf_printf(&why_item, "item \"%s\": %s", shown(item, b3),
                              reason.data ? reason.data : "");
                gt_buf_free(&reason);
                reason = why_item;
                ok = false;
            } else {
                gt_strv_push(&v->list, item);
            }
        }
        free(copy);
        break;
    }
    case T_MODE:
        ok = parse_enum(text, mode_names, 4, &v->i, &reason);
        break;
    case T_BACKEND:
        ok = parse_enum(text, backend_names, 4, &v->i, &reason);
        break;
    case T_SANDBOX:
        ok = parse_enum(text, sandbox_names, 2, &v->i, &reason);
        break;
    case T_LEVEL: {
        /* the seed's levels include FATAL, which Gantry logs as error */
        gt_log_level level = GT_LOG_ERROR;
        ok = strcasecmp(text, "fatal") == 0 || gt_log_level_parse(text, &level, NULL) == GT_OK;
        if (ok)
            v->i = (int64_t)level;
        else
            gt_buf_printf(&reason,
                          "\"%s\" is not one of trace, debug, info, warn, error, fatal, off",
                          shown(text, b3));
        break;
    }
    }
    if (!ok)
        gt_buf_printf(why, "%s: %s", label, reason.data ? reason.data : "invalid value");
done:
    gt_buf_free(&reason);
    if (!ok)
        val_free(v);
    return ok;
}

static void make_label(char *buf, size_t n, const cfg_key *k, const cfg_profile *p)
{
    if (p)
        snprintf(buf, n, "[client:%s] %s", p->name, k->key);
    else
        snprintf(buf, n, "[%s] %s", k->section, k->key);
}

/* Sets k (in cfg, or in profile p) from text. source is recorded (NULL: default);
 * field prefixes an error message and becomes err->field. Empty text restores the
 * default (a profile key: inherits again). */
static gt_err apply(gt_config *cfg, cfg_profile *p, const cfg_key *k, const char *text,
                    const char *source, const char *field, gt_error *err)
{
    char label[CFG_MAX_PROFILE_NAME + 64];
    make_label(label, sizeof label, k, p);
    char **src = source_of(cfg, p, k);
    void *slot = slot_of(cfg, p, k);
    if (text == NULL || text[0] == '\0') {
        if (p) {
            slot_clear(slot, k);
            free(*src);
            *src = NULL;
            return GT_OK;
        }
        text = k->def;
    }
    cfg_val v = {0};
    gt_buf why = {0};
    if (text[0] == '\0') {
        /* only strings and lists have empty defaults: unset */
        slot_clear(slot, k);
    } else if (!parse_value(k, label, text, &v, &why)) {
        gt_err rc;
        if (k->flags & (F_SECRET | F_URI_SECRET)) /* never echo a secret */
            rc = gt_error_setf(err, GT_EINVAL, field, "%s: %s: invalid value (not shown)",
                               field, label);
        else
            rc = gt_error_setf(err, GT_EINVAL, field, "%s: %s", field, why.data);
        gt_buf_free(&why);
        return rc;
    } else {
        slot_store(slot, k, &v);
        val_free(&v);
    }
    free(*src);
    *src = source ? gt_xstrdup(source) : NULL;
    return GT_OK;
}

/* ---- profiles ---- */

static bool profile_name_valid(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > CFG_MAX_PROFILE_NAME)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]))
            return false;
    return true;
}

static cfg_profile *profile_find(const gt_config *cfg, const char *name)
{
    for (size_t i = 0; i < cfg->state->nprofiles; i++)
        if (strcasecmp(cfg->state->profiles[i].name, name) == 0)
            return &cfg->state->profiles[i];
    return NULL;
}

/* Finds or adds profile name (valid, any case). NULL when the limit is reached. */
static cfg_profile *profile_get(gt_config *cfg, const char *name)
{
    cfg_profile *p = profile_find(cfg, name);
    if (p || cfg->state->nprofiles >= CFG_MAX_PROFILES)
        return p;
    struct gt_config_state *st = cfg->state;
    if (st->profiles == NULL)
        st->profiles = gt_xcalloc(CFG_MAX_PROFILES, sizeof *st->profiles);
    p = &st->profiles[st->nprofiles++];
    p->name = gt_xstrdup(name);
    lower(p->name);
    p->sources = gt_xcalloc(NKEYS, sizeof *p->sources);
    return p;
}

static void profile_free(cfg_profile *p)
{
    for (size_t i = 0; i < NKEYS; i++) {
        if (keys[i].flags & F_PROFILE)
            slot_clear((char *)&p->c + (keys[i].offset - offsetof(gt_config, client)), &keys[i]);
        free(p->sources[i]);
    }
    free(p->sources);
    free(p->name);
}

/* ---- new / free ---- */

gt_config *gt_config_new(void)
{
    gt_config *cfg = gt_xcalloc(1, sizeof *cfg);
    cfg->state = gt_xcalloc(1, sizeof *cfg->state);
    cfg->state->sources = gt_xcalloc(NKEYS, sizeof *cfg->state->sources);
    for (size_t i = 0; i < NKEYS; i++) {
        /* a default that does not parse is a bug in the table above, caught by
         * config_test's test_defaults; there is no caller that could handle it */
        if (apply(cfg, NULL, &keys[i], keys[i].def, NULL, "default", NULL) != GT_OK)
            abort();
    }
    return cfg;
}

void gt_config_free(gt_config **pcfg)
{
    if (pcfg == NULL || *pcfg == NULL)
        return;
    gt_config *cfg = *pcfg;
    struct gt_config_state *st = cfg->state;
    for (size_t i = 0; i < NKEYS; i++) {
        slot_clear(slot_of(cfg, NULL, &keys[i]), &keys[i]);
        free(st->sources[i]);
    }
    for (size_t i = 0; i < st->nprofiles; i++)
        profile_free(&st->profiles[i]);
    free(st->profiles);
    free(st->sources);
    free(st->path);
    free(st->home);
    free(st);
    free(cfg);
    *pcfg = NULL;
}

const char *gt_config_path(const gt_config *cfg)
{
    return cfg ? cfg->state->path : NULL;
}

/* ---- the INI parser ---- */

/* Value text after '=': a matching pair of ' or " is removed and its content kept
 * verbatim; otherwise a '#' or ';' at the start or after whitespace starts a comment.
 * Writes the value into v (in place). */
static bool unquote(char *raw, char **v, gt_buf *why)
{
    char *s = raw;
    while (*s && isspace((unsigned char)*s))
        s++;
    if (*s == '"' || *s == '\'') {
        char q = *s;
        char *close = strchr(s + 1, q);
        if (close == NULL) {
            gt_buf_printf(why, "unterminated %s quote", q == '"' ? "double" : "single");
            return false;
        }
        *close = '\0';
        char *rest = close + 1;
        while (*rest && isspace((unsigned char)*rest))
            rest++;
        if (*rest && *rest != '#' && *rest != ';') {
            gt_buf_puts(why, "unexpected text after the closing quote");
            return false;
        }
        *v = s + 1;
        return true;
    }
    for (char *p = s; *p; p++) {
        if ((*p == '#' || *p == ';') && (p == s || isspace((unsigned char)p[-1]))) {
            *p = '\0';
            break;
        }
    }
    *v = trim(s);
    return true;
}

typedef struct parse_ctx {
    gt_config *cfg;
    const char *name;
    int *seen;            /* (1 + CFG_MAX_PROFILES) * NKEYS first lines */
    const char *section;  /* current known section, or NULL */
    cfg_profile *profile; /* current [client:NAME], or NULL */
    size_t lineno;
    char loc[300];
} parse_ctx;

static gt_err parse_error(parse_ctx *c, gt_error *err, const char *what)
{
    return gt_error_setf(err, GT_EINVAL, c->loc, "%s: %s", c->loc, what);
}

static gt_err parse_section(parse_ctx *c, char *line, gt_error *err)
{
    char b[80];
    char *close = strchr(line, ']');
    if (close == NULL)
        return parse_error(c, err, "section header without ']'");
    *close = '\0';
    char *rest = trim(close + 1);
    if (*rest && *rest != '#' && *rest != ';')
        return parse_error(c, err, "unexpected text after the section header");
    char *name = trim(line + 1);
    lower(name);
    c->section = NULL;
    c->profile = NULL;
    if (strncmp(name, "client:", 7) == 0) {
        char *pname = trim(name + 7);
        if (!profile_name_valid(pname)) {
            gt_buf m = {0};
            gt_buf_printf(&m, "[client:%s]: a profile name is 1-%d letters and digits",
                          shown(pname, b), CFG_MAX_PROFILE_NAME);
            gt_err rc = parse_error(c, err, m.data);
            gt_buf_free(&m);
            return rc;
        }
        c->profile = profile_get(c->cfg, pname);
        if (c->profile == NULL)
            return parse_error(c, err, "too many client profiles");
        c->section = "client";
        return GT_OK;
    }
    c->section = known_section(name);
    if (c->section == NULL) {
        const char *s = suggest_section(name);
        gt_buf m = {0};
        gt_buf_printf(&m, "unknown section [%s]", shown(name, b));
        if (s)
            gt_buf_printf(&m, " (did you mean [%s]?)", s);
        gt_err rc = parse_error(c, err, m.data);
        gt_buf_free(&m);
        return rc;
    }
    return GT_OK;
}

static gt_err parse_assignment(parse_ctx *c, char *line, gt_error *err)
{
    char b[80];
    char *eq = strchr(line, '=');
    if (eq == NULL) /* not echoed: it may be a mistyped "password: ..." */
        return parse_error(c, err,
                           "expected \"key = value\" or \"[section]\" (no '=' on this line)");
    *eq = '\0';
    char *key = trim(line);
    lower(key);
    if (*key == '\0')
        return parse_error(c, err, "missing key before '='");
    if (c->section == NULL) {
        gt_buf m = {0};
        gt_buf_printf(&m, "%s: key \"%s\" is outside any [section]", c->loc, shown(key, b));
        gt_err rc = gt_error_setf(err, GT_EINVAL, c->loc, "%s", m.data);
        gt_buf_free(&m);
        return rc;
    }
    const cfg_key *k = find_key(c->section, key);
    if (k == NULL || (c->profile && !(k->flags & F_PROFILE))) {
        const char *s = suggest_key(c->section, key, c->profile != NULL);
        gt_buf m = {0};
        if (c->profile)
            gt_buf_printf(&m, "%s: [client:%s] %s: unknown key", c->loc, c->profile->name,
                          shown(key, b));
        else
            gt_buf_printf(&m, "%s: [%s] %s: unknown key", c->loc, c->section, shown(key, b));
        if (s)
            gt_buf_printf(&m, " (did you mean %s?)", s);
        gt_err rc = gt_error_setf(err, GT_EINVAL, c->loc, "%s", m.data);
        gt_buf_free(&m);
        return rc;
    }
    size_t slot = (size_t)(k - keys);
    if (c->profile)
        slot += NKEYS * (1 + (size_t)(c->profile - c->cfg->state->profiles));
    char label[CFG_MAX_PROFILE_NAME + 64];
    make_label(label, sizeof label, k, c->profile);
    if (c->seen[slot])
        return gt_error_setf(err, GT_EINVAL, c->loc,
                             "%s: %s: duplicate key (first set on line %d)", c->loc, label,
                             c->seen[slot]);
    c->seen[slot] = (int)c->lineno;
    char *value;
    gt_buf why = {0};
    if (!unquote(eq + 1, &value, &why)) {
        gt_err rc = gt_error_setf(err, GT_EINVAL, c->loc, "%s: %s: %s", c->loc, label, why.data);
        gt_buf_free(&why);
        return rc;
    }
    return apply(c->cfg, c->profile, k, value, c->loc, c->loc, err);
}

gt_err gt_config_load_buffer(gt_config *cfg, const char *text, size_t len, const char *name,
                             gt_error *err)
{
    if (name == NULL)
        name = "config";
    if (len > CFG_MAX_FILE)
        return gt_error_setf(err, GT_EINVAL, name, "%s: larger than %d bytes", name,
                             CFG_MAX_FILE);
    gt_err rc = GT_OK;
    char *copy = gt_xstrndup(text, len);
    parse_ctx c = {.cfg = cfg, .name = name};
    c.seen = gt_xcalloc((1 + CFG_MAX_PROFILES) * NKEYS, sizeof *c.seen);
    char *p = copy;
    char *end = copy + len;
    if (len >= 3 && memcmp(p, "\xEF\xBB\xBF", 3) == 0) /* UTF-8 byte order mark */
        p += 3;
    while (p < end) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        char *eol = nl ? nl : end;
        c.lineno++;
        snprintf(c.loc, sizeof c.loc, "%s:%zu", name, c.lineno);
        if (memchr(p, '\0', (size_t)(eol - p)) != NULL) {
            rc = parse_error(&c, err, "NUL byte in line");
            goto done;
        }
        *eol = '\0';
        char *line = trim(p);
        p = eol + 1;
        if (*line == '\0' || *line == '#' || *line == ';')
            continue;
        rc = *line == '[' ? parse_section(&c, line, err) : parse_assignment(&c, line, err);
        if (rc != GT_OK)
            goto done;
    }
    free(cfg->state->path);
    cfg->state->path = gt_xstrdup(name);
done:
    free(c.seen);
    free(copy);
    return rc;
}

/* ---- environment ---- */

static const char *env_get(char *const *envp, const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 0; envp && envp[i]; i++)
        if (strncmp(envp[i], name, n) == 0 && envp[i][n] == '=')
            return envp[i] + n + 1;
    return NULL;
}

/* "python-script" -> "PYTHON_SCRIPT", "use_tls" -> "USE_TLS". */
static void env_upper(const char *s, char *out, size_t n)
{
    size_t i = 0;
    for (; s[i] && i + 1 < n; i++)
        out[i] = s[i] == '-' ? '_' : (char)toupper((unsigned char)s[i]);
    out[i] = '\0';
}

/* Applies one GANTRY_ variable (name, value) if its name starts with a section. */
static gt_err apply_env(gt_config *cfg, const char *name, const char *value, gt_error *err)
{
    char up[64], b[80];
    const char *section = NULL;
    const char *rest = NULL;
    for (size_t i = 0; i < NSECTIONS && section == NULL; i++) {
        env_upper(sections[i], up, sizeof up);
        size_t n = strlen(up);
        if (strncmp(name + 7, up, n) == 0 && name[7 + n] == '_') {
            section = sections[i];
            rest = name + 7 + n + 1;
        }
    }
    if (section == NULL)
        return GT_OK; /* GANTRY_HOME, GANTRY_TESTDATA, ...: not configuration */
    char origin[300];
    snprintf(origin, sizeof origin, "env %s", shown(name, b));
    for (size_t i = 0; i < NKEYS; i++) {
        if (strcmp(keys[i].section, section) != 0)
            continue;
        env_upper(keys[i].key, up, sizeof up);
        if (strcmp(rest, up) == 0)
            return apply(cfg, NULL, &keys[i], value, origin, name, err);
    }
    if (strcmp(section, "client") == 0) {
        /* GANTRY_CLIENT_<PROFILE>_<KEY>; profile names have no '_', so this is exact */
        for (size_t i = 0; i < NKEYS; i++) {
            if (!(keys[i].flags & F_PROFILE))
                continue;
            env_upper(keys[i].key, up, sizeof up);
            size_t kl = strlen(up), rl = strlen(rest);
            if (rl <= kl + 1 || rest[rl - kl - 1] != '_' || strcmp(rest + rl - kl, up) != 0)
                continue;
            char pname[CFG_MAX_PROFILE_NAME + 2];
            if (rl - kl - 1 > CFG_MAX_PROFILE_NAME)
                continue;
            memcpy(pname, rest, rl - kl - 1);
            pname[rl - kl - 1] = '\0';
            if (!profile_name_valid(pname))
                continue;
            cfg_profile *p = profile_get(cfg, pname);
            if (p == NULL)
                return gt_error_setf(err, GT_EINVAL, name, "%s: too many client profiles",
                                     name);
            return apply(cfg, p, &keys[i], value, origin, name, err);
        }
    }
    char lowrest[64];
    snprintf(lowrest, sizeof lowrest, "%s", rest);
    lower(lowrest);
    const char *s = suggest_key(section, lowrest, false);
    if (s) {
        env_upper(s, up, sizeof up);
        char sec[32];
        env_upper(section, sec, sizeof sec);
        return gt_error_setf(err, GT_EINVAL, name,
                             "%s: unknown configuration variable: [%s] has no key \"%s\" (did "
                             "you mean GANTRY_%s_%s?)",
                             shown(name, b), section, lowrest, sec, up);
    }
    return gt_error_setf(err, GT_EINVAL, name,
                         "%s: unknown configuration variable: [%s] has no key \"%s\"",
                         shown(name, b), section, lowrest);
}

static gt_err load_env(gt_config *cfg, char *const *envp, gt_error *err)
{
    for (size_t i = 0; envp && envp[i]; i++) {
        const char *e = envp[i];
        const char *eq = strchr(e, '=');
        if (strncmp(e, "GANTRY_", 7) != 0 || eq == NULL)
            continue;
        size_t n = (size_t)(eq - e);
        char *name = gt_xstrndup(e, n);
        gt_err rc = GT_OK;
        if (strcmp(name, "GANTRY_CONFIG") != 0 && strcmp(name, "GANTRY_BIN") != 0 &&
            strncmp(name, "GANTRY_TEST_", 12) != 0) {
            char *value = gt_xstrdup(eq + 1);
            rc = apply_env(cfg, name, trim(value), err);
            free(value);
        }
        free(name);
        if (rc != GT_OK)
            return rc;
    }
    return GT_OK;
}

gt_err gt_config_load(gt_config *cfg, const char *explicit_path, char *const *envp,
                      gt_error *err)
{
    gt_err rc = GT_OK;
    char *path = NULL, *text = NULL;
    size_t len = 0;
    const char *home = env_get(envp, "HOME");
    if (home == NULL)
        home = getenv("HOME");
    free(cfg->state->home);
    cfg->state->home = home ? gt_xstrdup(home) : NULL;

    const char *env_path = env_get(envp, "GANTRY_CONFIG");
    const char *required_by = NULL;
    if (explicit_path && *explicit_path) {
        path = gt_xstrdup(explicit_path);
        required_by = "--config";
    } else if (env_path && *env_path) {
        path = gt_xstrdup(env_path);
        required_by = "GANTRY_CONFIG";
    } else {
        if (home && *home) {
            path = gt_path_join(home, ".gantry/gantry.conf");
            if (!gt_file_exists(path)) {
                free(path);
                path = NULL;
            }
        }
        if (path == NULL && gt_file_exists("/etc/gantry/gantry.conf"))
            path = gt_xstrdup("/etc/gantry/gantry.conf");
    }
    if (path) {
        gt_error e = {0};
        gt_err r = gt_read_file(path, CFG_MAX_FILE, &text, &len, &e);
        if (r != GT_OK) {
            /* e.message already names the path */
            rc = gt_error_setf(err, r, required_by ? required_by : path, "%s%s%s",
                               required_by ? required_by : "", required_by ? ": " : "",
                               e.message);
            goto done;
        }
        rc = gt_config_load_buffer(cfg, text, len, path, err);
        if (rc != GT_OK)
            goto done;
    }
    rc = load_env(cfg, envp, err);
done:
    free(text);
    free(path);
    return rc;
}

gt_err gt_config_set(gt_config *cfg, const char *section, const char *key, const char *value,
                     const char *source, gt_error *err)
{
    char sec[96], k[96], b[80];
    const char *origin = source ? source : "flag";
    snprintf(sec, sizeof sec, "%s", section ? section : "");
    snprintf(k, sizeof k, "%s", key ? key : "");
    lower(sec);
    lower(k);
    cfg_profile *p = NULL;
    const char *known = known_section(sec);
    if (strncmp(sec, "client:", 7) == 0 && profile_name_valid(sec + 7)) {
        p = profile_get(cfg, sec + 7);
        if (p == NULL)
            return gt_error_setf(err, GT_EINVAL, origin, "%s: too many client profiles", origin);
        known = "client";
    }
    if (known == NULL)
        return gt_error_setf(err, GT_EINVAL, origin, "%s: unknown section [%s]", origin,
                             shown(sec, b));
    const cfg_key *ck = find_key(known, k);
    if (ck == NULL || (p && !(ck->flags & F_PROFILE)))
        return gt_error_setf(err, GT_EINVAL, origin, "%s: [%s] %s: unknown key", origin, sec,
                             shown(k, b));
    return apply(cfg, p, ck, value, origin, origin, err);
}

const char *gt_config_source(const gt_config *cfg, const char *section, const char *key)
{
    char sec[96], k[96];
    snprintf(sec, sizeof sec, "%s", section ? section : "");
    snprintf(k, sizeof k, "%s", key ? key : "");
    lower(sec);
    lower(k);
    const cfg_profile *p = NULL;
    if (strncmp(sec, "client:", 7) == 0) {
        p = profile_find(cfg, sec + 7);
        if (p == NULL)
            return NULL;
        snprintf(sec, sizeof sec, "client");
    }
    const cfg_key *ck = find_key(sec, k);
    if (ck == NULL || (p && !(ck->flags & F_PROFILE)))
        return NULL;
    const char *s = p ? p->sources[ck - keys] : cfg->state->sources[ck - keys];
    return s ? s : (p ? "unset" : "default");
}

const gt_config_client *gt_config_client_profile(const gt_config *cfg, const char *name)
{
    if (name == NULL || *name == '\0')
        return &cfg->client;
    const cfg_profile *p = profile_find(cfg, name);
    return p ? &p->c : NULL;
}

/* ---- finish ---- */

static char *expand(const gt_config *cfg, const char *path)
{
    if (path[0] == '~' && (path[1] == '/' || path[1] == '\0')) {
        const char *home = cfg->state->home ? cfg->state->home : getenv("HOME");
        return gt_xasprintf("%s%s", home ? home : "", path + 1);
    }
    return gt_xstrdup(path);
}

static void set_derived(gt_config *cfg, const char *section, const char *key, char *value,
                        const char *why)
{
    const cfg_key *k = find_key(section, key);
    char **slot = slot_of(cfg, NULL, k);
    free(*slot);
    *slot = value;
    char **src = source_of(cfg, NULL, k);
    free(*src);
    *src = gt_xstrdup(why);
}

/* A certificate without its key (or the reverse) is a mistake wherever it appears. */
static gt_err check_pair(const gt_config *cfg, const char *section, const char *cert,
                         const char *key, const char *cert_key, const char *key_key,
                         gt_error *err)
{
    if ((cert == NULL) == (key == NULL))
        return GT_OK;
    const char *set = cert ? cert_key : key_key;
    const char *unset = cert ? key_key : cert_key;
    char field[128];
    snprintf(field, sizeof field, "%s.%s", section, unset);
    return gt_error_setf(err, GT_EINVAL, field, "[%s] %s is set (%s) but %s is not", section,
                         set, gt_config_source(cfg, section, set), unset);
}

gt_err gt_config_finish(gt_config *cfg, gt_error *err)
{
    gt_err rc = GT_OK;
    struct gt_config_state *st = cfg->state;

    /* "~" in every path, in the profiles too */
    for (size_t i = 0; i < NKEYS; i++) {
        if (keys[i].type != T_PATH)
            continue;
        char **slot = slot_of(cfg, NULL, &keys[i]);
        if (*slot) {
            char *x = expand(cfg, *slot);
            free(*slot);
            *slot = x;
        }
        for (size_t j = 0; (keys[i].flags & F_PROFILE) && j < st->nprofiles; j++) {
            char **ps = slot_of(cfg, &st->profiles[j], &keys[i]);
            if (*ps) {
                char *x = expand(cfg, *ps);
                free(*ps);
                *ps = x;
            }
        }
    }

    const char *wd = cfg->application.working_dir;
    if (wd == NULL) /* cannot happen: empty restores the default */
        return gt_error_setf(err, GT_EINVAL, "application.working_dir",
                             "[application] working_dir is empty");
    if (cfg->store.path == NULL)
        set_derived(cfg, "store", "path", gt_path_join(wd, "gantry.db"),
                    "derived from application.working_dir");
    else if (cfg->store.path[0] != '/')
        set_derived(cfg, "store", "path", gt_path_join(wd, cfg->store.path),
                    "relative to application.working_dir");
    if (cfg->secrets.encrypt_key_file == NULL)
        set_derived(cfg, "secrets", "encrypt_key_file", gt_path_join(wd, "secrets.key"),
                    "derived from application.working_dir");
    if (cfg->sessions.signing_key_file == NULL)
        set_derived(cfg, "sessions", "signing_key_file", gt_path_join(wd, "sessions.key"),
                    "derived from application.working_dir");

    /* client profiles inherit what they do not set from [client] */
    for (size_t j = 0; j < st->nprofiles; j++) {
        cfg_profile *p = &st->profiles[j];
        for (size_t i = 0; i < NKEYS; i++) {
            if (!(keys[i].flags & F_PROFILE) || p->sources[i])
                continue;
            void *dst = slot_of(cfg, p, &keys[i]);
            const void *from = slot_of(cfg, NULL, &keys[i]);
            if (keys[i].type == T_STR || keys[i].type == T_PATH)
                *(char **)dst = gt_xstrdup(*(char *const *)from);
            else if (keys[i].type == T_BOOL)
                *(bool *)dst = *(const bool *)from;
            else
                *(int64_t *)dst = *(const int64_t *)from;
            p->sources[i] = gt_xstrdup("inherited from [client]");
        }
    }

    /* cross-field checks */
    if ((rc = check_pair(cfg, "server", cfg->server.certificate_file,
                         cfg->server.private_key_file, "certificate_file", "private_key_file",
                         err)) != GT_OK ||
        (rc = check_pair(cfg, "runner", cfg->runner.certificate_file,
                         cfg->runner.private_key_file, "certificate_file", "private_key_file",
                         err)) != GT_OK ||
        (rc = check_pair(cfg, "client", cfg->client.certificate_file,
                         cfg->client.private_key_file, "certificate_file", "private_key_file",
                         err)) != GT_OK ||
        (rc = check_pair(cfg, "broker", cfg->broker.certificate_file,
                         cfg->broker.private_key_file, "certificate_file", "private_key_file",
                         err)) != GT_OK ||
        (rc = check_pair(cfg, "store", cfg->store.etcd_certificate_file,
                         cfg->store.etcd_private_key_file, "etcd_certificate_file",
                         "etcd_private_key_file", err)) != GT_OK)
        return rc;
    for (size_t j = 0; j < st->nprofiles; j++) {
        const cfg_profile *p = &st->profiles[j];
        if ((p->c.certificate_file == NULL) != (p->c.private_key_file == NULL))
            return gt_error_setf(err, GT_EINVAL, "client.certificate_file",
                                 "[client:%s] certificate_file and private_key_file go together",
                                 p->name);
    }

    if (cfg->application.mode == GT_MODE_SERVER && cfg->server.use_tls &&
        (cfg->server.certificate_file == NULL || cfg->server.private_key_file == NULL))
        return gt_error_setf(err, GT_EINVAL, "server.use_tls",
                             "[server] use_tls is true (%s) but certificate_file and "
                             "private_key_file are not set; set them or use_tls = false",
                             gt_config_source(cfg, "server", "use_tls"));
    if (cfg->application.mode == GT_MODE_SERVER && cfg->server.client_cert_auth &&
        (!cfg->server.use_tls || cfg->application.ca_certificate_file == NULL))
        return gt_error_setf(err, GT_EINVAL, "server.client_cert_auth",
                             "[server] client_cert_auth is true (%s) but %s; mutual TLS needs "
                             "[server] use_tls = true and [application] ca_certificate_file (the "
                             "CA that signs client certificates)",
                             gt_config_source(cfg, "server", "client_cert_auth"),
                             !cfg->server.use_tls ? "[server] use_tls is false"
                                                  : "[application] ca_certificate_file is not set");
    if (cfg->server.max_buffered_bytes < cfg->server.max_body_size)
        return gt_error_setf(err, GT_EINVAL, "server.max_buffered_bytes",
                             "[server] max_buffered_bytes (%lld) is below max_body_size (%lld): "
                             "no request of the largest size could be read",
                             (long long)cfg->server.max_buffered_bytes,
                             (long long)cfg->server.max_body_size);
    /* the seed's switch for the same thing */
    if (cfg->connect.server_ha_enabled)
        cfg->server.ha_enabled = true;
    if (cfg->application.mode == GT_MODE_SERVER && cfg->server.ha_enabled &&
        !cfg->server.distributed_execution)
        return gt_error_setf(err, GT_EINVAL, "server.distributed_execution",
                             "[server] ha_enabled needs distributed_execution = true: runs "
                             "execute on runners, whose leases let another node end the work of "
                             "one that died");
    if (cfg->application.mode == GT_MODE_SERVER && cfg->server.ha_enabled &&
        cfg->store.backend == GT_BACKEND_MEMORY)
        return gt_error_setf(err, GT_EINVAL, "server.ha_enabled",
                             "[server] ha_enabled needs a shared store (local, etcd or mongodb)");
    if (cfg->application.mode == GT_MODE_CLIENT && cfg->client.host == NULL)
        return gt_error_setf(err, GT_EINVAL, "client.host",
                             "client mode needs [client] host (the server to talk to)");

    switch (cfg->store.backend) {
    case GT_BACKEND_ETCD:
        if (cfg->store.etcd_hosts.n == 0)
            return gt_error_setf(err, GT_EINVAL, "store.etcd_hosts",
                                 "[store] backend = etcd needs etcd_hosts");
        if ((cfg->store.etcd_username == NULL) != (cfg->store.etcd_password == NULL))
            return gt_error_setf(err, GT_EINVAL, cfg->store.etcd_username ? "store.etcd_password"
                                                                          : "store.etcd_username",
                                 "[store] etcd_username and etcd_password go together");
        if (cfg->store.etcd_use_tls && cfg->store.etcd_client_cert_auth &&
            cfg->store.etcd_certificate_file == NULL)
            return gt_error_setf(err, GT_EINVAL, "store.etcd_certificate_file",
                                 "[store] etcd_client_cert_auth needs etcd_certificate_file "
                                 "and etcd_private_key_file");
        break;
    case GT_BACKEND_MONGODB:
        if (cfg->store.mongodb_uri == NULL)
            return gt_error_setf(err, GT_EINVAL, "store.mongodb_uri",
                                 "[store] backend = mongodb needs mongodb_uri");
        break;
    case GT_BACKEND_LOCAL:
    case GT_BACKEND_MEMORY:
        break;
    }
    if (cfg->sessions.sentinels.n > 0 && cfg->sessions.master_name == NULL)
        return gt_error_setf(err, GT_EINVAL, "sessions.master_name",
                             "[sessions] sentinels need master_name");
    if (cfg->runner.memory_limit > 0 && cfg->runner.memory_limit < 16 * MIB)
        return gt_error_setf(err, GT_EINVAL, "runner.memory_limit",
                             "[runner] memory_limit = %lld bytes (%s) is too small to start a "
                             "program: use 0 (no limit) or at least 16MiB",
                             (long long)cfg->runner.memory_limit,
                             gt_config_source(cfg, "runner", "memory_limit"));
    return rc;
}

/* ---- --show-config ---- */

/* Writes the URI with the password of its user info replaced by ****. */
static void put_masked_uri(gt_buf *b, const char *uri)
{
    const char *scheme = strstr(uri, "://");
    const char *auth = scheme ? scheme + 3 : uri;
    const char *slash = strchr(auth, '/');
    const char *at = NULL;
    for (const char *p = auth; *p && (slash == NULL || p < slash); p++)
        if (*p == '@')
            at = p;
    const char *colon = at ? memchr(auth, ':', (size_t)(at - auth)) : NULL;
    if (colon == NULL) {
        gt_buf_puts(b, uri);
        return;
    }
    gt_buf_append(b, uri, (size_t)(colon - uri) + 1);
    gt_buf_puts(b, "****");
    gt_buf_puts(b, at);
}

static void put_value(gt_buf *b, const cfg_key *k, const void *slot)
{
    char tmp[64];
    switch (k->type) {
    case T_STR:
    case T_PATH: {
        const char *s = *(char *const *)slot;
        if (s == NULL)
            break;
        if (k->flags & F_SECRET)
            gt_buf_puts(b, "********");
        else if (k->flags & F_URI_SECRET)
            put_masked_uri(b, s);
        else
            gt_buf_puts(b, s);
        break;
    }
    case T_BOOL:
        gt_buf_puts(b, *(const bool *)slot ? "true" : "false");
        break;
    case T_INT:
    case T_SIZE:
        gt_buf_printf(b, "%lld", (long long)*(const int64_t *)slot);
        break;
    case T_DURATION:
        format_duration(*(const int64_t *)slot, tmp, sizeof tmp);
        gt_buf_puts(b, tmp);
        break;
    case T_LIST: {
        const gt_strv *l = slot;
        for (size_t i = 0; i < l->n; i++)
            gt_buf_printf(b, "%s%s", i ? " " : "", l->v[i]);
        break;
    }
    case T_MODE:
        gt_buf_puts(b, gt_config_mode_name(*(const gt_config_mode *)slot));
        break;
    case T_BACKEND:
        gt_buf_puts(b, gt_config_backend_name(*(const gt_config_backend *)slot));
        break;
    case T_SANDBOX:
        gt_buf_puts(b, sandbox_names[*(const gt_config_sandbox *)slot == GT_SANDBOX_NONE]);
        break;
    case T_LEVEL: {
        snprintf(tmp, sizeof tmp, "%s", gt_log_level_name(*(const gt_log_level *)slot));
        lower(tmp);
        gt_buf_puts(b, tmp);
        break;
    }
    }
}

static void dump_line(FILE *out, const char *section, const cfg_key *k, const void *slot,
                      const char *source)
{
    gt_buf b = {0};
    gt_buf_printf(&b, "%s.%s = ", section, k->key);
    put_value(&b, k, slot);
    while (b.len < 48)
        gt_buf_puts(&b, " ");
    fprintf(out, "%s    # %s\n", b.data, source);
    gt_buf_free(&b);
}

void gt_config_dump(const gt_config *cfg, FILE *out)
{
    const struct gt_config_state *st = cfg->state;
    fprintf(out, "# config file: %s\n", st->path ? st->path : "(none)");
    for (size_t i = 0; i < NKEYS; i++)
        dump_line(out, keys[i].section, &keys[i], cslot_of(cfg, NULL, &keys[i]),
                  st->sources[i] ? st->sources[i] : "default");
    for (size_t j = 0; j < st->nprofiles; j++) {
        const cfg_profile *p = &st->profiles[j];
        char sec[CFG_MAX_PROFILE_NAME + 8];
        snprintf(sec, sizeof sec, "client:%s", p->name);
        for (size_t i = 0; i < NKEYS; i++)
            if (keys[i].flags & F_PROFILE)
                dump_line(out, sec, &keys[i], cslot_of(cfg, p, &keys[i]),
                          p->sources[i] ? p->sources[i] : "unset");
    }
}
