/* Configuration: one INI file (gantry.conf), GANTRY_<SECTION>_<KEY> environment
 * variables and command-line flags, checked against one table in config.c that also
 * gives the defaults, the environment names, --show-config output and the
 * "file:line: [section] key: ..." errors.
 *
 * Use, in this order, from main.c:
 *   gt_config *cfg = gt_config_new();              defaults
 *   gt_config_load(cfg, flag_config, envp, &err);   file, then environment
 *   gt_config_set(cfg, "log", "level", "debug", "flag --log-level", &err);  flags win
 *   gt_config_finish(cfg, &err);                    derived paths, "~", cross checks
 * then read the typed fields: cfg->application.mode, cfg->store.path, ...
 *
 * Field conventions: strings are NULL when unset or empty; durations are in
 * milliseconds; sizes are in bytes; lists are gt_strv (n may be 0, v is NULL then).
 * Everything the struct points to is owned by the gt_config. Files follow the seed
 * (Itential Automation Gateway 5) so its gateway.conf files load unchanged; the
 * files in config/ are commented examples of every key. */
#ifndef GT_CONFIG_H
#define GT_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "error.h"
#include "log.h"
#include "util.h"

typedef enum gt_config_mode {
    GT_MODE_LOCAL = 0,   /* the CLI does everything in-process */
    GT_MODE_SERVER,      /* controller, tokend, scheduler */
    GT_MODE_CLIENT,      /* the CLI talks to a server over REST */
    GT_MODE_RUNNER       /* execution only */
} gt_config_mode;

typedef enum gt_config_backend {
    GT_BACKEND_LOCAL = 0,  /* SQLite file at store.path */
    GT_BACKEND_MEMORY,
    GT_BACKEND_ETCD,
    GT_BACKEND_MONGODB
} gt_config_backend;

/* [runner] sandbox: how a run is isolated from the daemon and the host. */
typedef enum gt_config_sandbox {
    GT_SANDBOX_BUBBLEWRAP = 0, /* each run in a bubblewrap sandbox (sandbox.h) */
    GT_SANDBOX_NONE            /* runs are not isolated; a warning at start */
} gt_config_sandbox;

/* [client] and each named profile [client:NAME]. */
typedef struct gt_config_client {
    char *host;
    int64_t port;
    bool use_tls;
    char *certificate_file;
    char *private_key_file;
    char *api_key;                    /* secret */
} gt_config_client;

typedef struct gt_config {
    struct {
        gt_config_mode mode;
        char *cluster_id;
        char *working_dir;            /* "~" expanded by gt_config_finish */
        char *ca_certificate_file;
        int64_t venv_sweep_interval;
        int64_t venv_retention_period;
        bool auto_accept_eula;
    } application;
    struct {
        char *listen_address;
        int64_t port;                 /* 0: any free port */
        bool use_tls;
        char *certificate_file;
        char *private_key_file;
        bool client_cert_auth;
        int64_t api_key_expiration;
        bool distributed_execution;
        int64_t grpc_max_recv_msg_size;
        int64_t max_body_size;
        int64_t worker_threads;
        int64_t max_connections;
        int64_t max_buffered_bytes;
        bool ha_enabled;              /* also [connect] server_ha_enabled */
        int64_t ha_lease_ttl;         /* ms */
        char *advertise_address;      /* host:port; NULL: host name and port */
    } server;
    gt_config_client client;
    struct {
        bool enabled;
        gt_strv hosts;
        char *certificate_file;
        char *private_key_file;
        bool insecure_tls;
        bool server_ha_enabled;
        bool server_ha_is_primary;
        char *proxy_url;
    } connect;
    struct {
        bool ansible_enabled;
        bool hostkeys_enabled;
        bool mcp_enabled;
        bool opentofu_enabled;
        bool python_enabled;
    } features;
    struct {
        gt_log_level level;
        bool console_json;
        bool file_enabled;
        bool file_json;
        char *server_dir;
        char *timestamp_timezone;
    } log;
    struct {
        char *announcement_address;
        char *listen_address;
        int64_t port;
        bool use_tls;
        char *certificate_file;
        char *private_key_file;
        bool client_cert_auth;
        gt_strv pools;
        int64_t capacity;
        int64_t heartbeat_interval;
        int64_t output_limit;         /* bytes kept per stream */
        int64_t kill_grace_period;
        int64_t drain_timeout;        /* runner SIGTERM: in-flight runs may take this long */
        int64_t default_timeout;      /* 0: no limit */
        int64_t fetch_timeout;        /* git and pip */
        int64_t reference_max_age;    /* a resolved reference is reused this long; 0: never */
        int64_t redispatch_after;     /* queued work not taken this long is announced again */
        char *python;
        char *ansible_playbook;
        char *git;
        char *tofu;
        char *pip_index_url;
        char *pip_extra_index_url;
        char *pip_find_links;
        bool pip_no_index;
        char *pip_trusted_host;
        bool allow_http_repositories; /* git may fetch http:// URLs */
        gt_config_sandbox sandbox;
        int64_t memory_limit;         /* bytes of address space per process; 0: none */
        int64_t process_limit;        /* processes and threads of a run; 0: none */
        int64_t cpu_time_limit;       /* ms of CPU per process; 0: none */
        int64_t open_files_limit;     /* descriptors per process; 0: none */
    } runner;
    struct {
        gt_config_backend backend;
        char *path;                   /* local backend; derived from working_dir */
        gt_strv etcd_hosts;
        bool etcd_use_tls;
        bool etcd_client_cert_auth;
        char *etcd_ca_certificate_file;
        char *etcd_certificate_file;
        char *etcd_private_key_file;
        char *etcd_username;          /* etcd auth; NULL: none */
        char *etcd_password;          /* secret */
        char *dynamodb_table_name;    /* accepted from seed files; no driver */
        char *mongodb_uri;            /* secret (its password is masked) */
        char *mongodb_database;
    } store;
    struct {
        char *encrypt_key_file;       /* derived: <working_dir>/secrets.key */
    } secrets;
    struct {
        gt_strv hosts;
        char *vhost;
        char *username;
        char *password;               /* secret */
        bool use_tls;
        char *ca_certificate_file;
        char *certificate_file;
        char *private_key_file;
        int64_t heartbeat;
        int64_t prefetch;
    } broker;
    struct {
        gt_strv sentinels;
        char *master_name;
        char *host;
        char *username;               /* Redis ACL user; NULL: the default user */
        char *password;               /* secret */
        char *sentinel_username;      /* when the sentinels require AUTH */
        char *sentinel_password;      /* secret */
        int64_t db;
        int64_t token_ttl;
        bool use_tls;
        char *ca_certificate_file;
        char *signing_key_file;       /* derived: <working_dir>/sessions.key */
    } sessions;
    struct {
        gt_strv controller_users;     /* broker users whose requests gantry-tokend serves */
    } tokend;
    struct {
        bool default_overridable;
    } registry;
    struct {
        bool no_color;
        char *timestamp_timezone;
    } terminal;
    struct {
        char *requirements_file;
    } python_script;                  /* section [python-script] */

    struct gt_config_state *state;    /* private: sources, loaded path, profiles */
} gt_config;

/* A new configuration holding every default. Free with gt_config_free. */
gt_config *gt_config_new(void) __attribute__((warn_unused_result));
/* Frees *cfg and everything it owns; sets *cfg to NULL; accepts NULL. */
void gt_config_free(gt_config **cfg);

/* Reads the first file of: explicit_path (--config; missing is an error),
 * $GANTRY_CONFIG from envp (missing is an error), ~/.gantry/gantry.conf,
 * /etc/gantry/gantry.conf (those two only if present); then applies every
 * GANTRY_<SECTION>_<KEY>=value of envp (NULL-terminated "NAME=value" strings, may be
 * NULL). A GANTRY_ variable whose name starts with a known section but names no key
 * is an error naming the variable; GANTRY_CONFIG, GANTRY_BIN and GANTRY_TEST_* are
 * not keys. Stops at the first error; err->field is "file:line" or the variable. */
gt_err gt_config_load(gt_config *cfg, const char *explicit_path, char *const *envp,
                      gt_error *err);

/* Parses len bytes of INI text (at most 1 MiB); name labels errors and sources
 * ("name:line") and becomes gt_config_path. A key given twice in one text is an
 * error; so are unknown sections and keys, lines without '=' and bad values. */
gt_err gt_config_load_buffer(gt_config *cfg, const char *text, size_t len, const char *name,
                             gt_error *err);

/* Sets one key from a flag: section is "server", "client:prod", ...; value NULL or
 * "" restores the default. source labels it in errors and --show-config (NULL:
 * "flag"). Flags are applied after gt_config_load, so they win over both. */
gt_err gt_config_set(gt_config *cfg, const char *section, const char *key, const char *value,
                     const char *source, gt_error *err);

/* Derives what depends on other keys (store.path and secrets.encrypt_key_file from
 * working_dir, client profiles from [client]), expands "~" in paths and runs the
 * cross-field checks (TLS files, store backend settings, client host). */
gt_err gt_config_finish(gt_config *cfg, gt_error *err);

/* Writes every key as "section.key = value    # source", client profiles last;
 * secrets print as "********" when set, never their value. */
void gt_config_dump(const gt_config *cfg, FILE *out);

/* The file that was loaded, or NULL. Borrowed. */
const char *gt_config_path(const gt_config *cfg);

/* Where section.key's value came from: "default", "FILE:LINE", "env NAME", the flag
 * source, "derived ..."; NULL for an unknown key. Borrowed. */
const char *gt_config_source(const gt_config *cfg, const char *section, const char *key);

/* The client settings for profile name (case-insensitive; NULL or "" for [client]),
 * with unset values inherited from [client] once gt_config_finish has run; NULL if
 * there is no such profile. Borrowed. */
const gt_config_client *gt_config_client_profile(const gt_config *cfg, const char *name);

/* The parsers behind T_SIZE and T_DURATION keys, for sizes and durations given elsewhere
 * (a service's limits): "1048576", "512KiB", "1MiB"; "90s", "1h30m", or a plain number
 * counted in unit_ms. err names what. Never negative. */
gt_err gt_config_parse_size(const char *s, const char *what, int64_t *out, gt_error *err);
gt_err gt_config_parse_duration(const char *s, int64_t unit_ms, const char *what, int64_t *out,
                                gt_error *err);

/* Static names: "local", "server", ...; "local", "memory", "etcd", "mongodb". */
const char *gt_config_mode_name(gt_config_mode mode);
const char *gt_config_backend_name(gt_config_backend backend);

#endif
