#include "setup.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "crypto.h"
#include "log.h"
#include "util.h"

void gt_setup_run_options(const gt_config *cfg, char *const *envp, gt_run_options *o)
{
    *o = (gt_run_options){
        .working_dir = cfg->application.working_dir,
        .git = cfg->runner.git,
        .python = cfg->runner.python,
        .ansible_playbook = cfg->runner.ansible_playbook,
        .output_limit = (size_t)cfg->runner.output_limit,
        .kill_grace_ms = cfg->runner.kill_grace_period,
        .default_timeout_ms = cfg->runner.default_timeout,
        .fetch_timeout_ms = cfg->runner.fetch_timeout,
        .reference_max_age_ms = cfg->runner.reference_max_age,
        .pip_index_url = cfg->runner.pip_index_url,
        .pip_extra_index_url = cfg->runner.pip_extra_index_url,
        .pip_find_links = cfg->runner.pip_find_links,
        .pip_trusted_host = cfg->runner.pip_trusted_host,
        .pip_no_index = cfg->runner.pip_no_index,
        .allow_http = cfg->runner.allow_http_repositories,
        .environ = envp,
        .sandbox_none = cfg->runner.sandbox == GT_SANDBOX_NONE,
        .limits = {
            .memory = cfg->runner.memory_limit,
            .processes = cfg->runner.process_limit,
            .cpu_ms = cfg->runner.cpu_time_limit,
            .open_files = cfg->runner.open_files_limit,
        },
    };
    if (o->sandbox_none)
        gt_warn("[runner] sandbox = none (%s): runs are not isolated; a service's process can "
                "signal Gantry, read its store and key file, and outlive its run",
                gt_config_source(cfg, "runner", "sandbox"));
}

gt_err gt_setup_open_store(const gt_config *cfg, gt_store **store, gt_error *err)
{
    switch (cfg->store.backend) {
    case GT_BACKEND_LOCAL:
        *store = gt_store_open_local(cfg->store.path, err);
        break;
    case GT_BACKEND_MEMORY:
        *store = gt_store_open_memory(err);
        break;
    case GT_BACKEND_ETCD: {
        const gt_store_etcd_config ec = {
            .hosts = (const char *const *)cfg->store.etcd_hosts.v,
            .n_hosts = cfg->store.etcd_hosts.n,
            .cluster_id = cfg->application.cluster_id,
            .use_tls = cfg->store.etcd_use_tls,
            .client_cert_auth = cfg->store.etcd_client_cert_auth,
            .ca_file = cfg->store.etcd_ca_certificate_file,
            .cert_file = cfg->store.etcd_certificate_file,
            .key_file = cfg->store.etcd_private_key_file,
            .username = cfg->store.etcd_username,
            .password = cfg->store.etcd_password,
        };
        *store = gt_store_open_etcd(&ec, err);
        break;
    }
    case GT_BACKEND_MONGODB: {
        const gt_store_mongo_config mc = {
            .uri = cfg->store.mongodb_uri,
            .database = cfg->store.mongodb_database,
            .cluster_id = cfg->application.cluster_id,
        };
        *store = gt_store_open_mongo(&mc, err);
        break;
    }
    default:
        return gt_error_set(err, GT_EINVAL, "[store] backend = %s: no such driver",
                            gt_config_backend_name(cfg->store.backend));
    }
    return *store ? GT_OK : GT_EUNAVAIL;
}

bool gt_setup_key_file_explicit(const gt_config *cfg)
{
    const char *src = gt_config_source(cfg, "secrets", "encrypt_key_file");
    return src && strncmp(src, "derived", 7) != 0;
}

gt_err gt_setup_load(const char *path, char *const *envp, gt_config **cfg, gt_error *err)
{
    *cfg = gt_config_new();
    gt_err rc = gt_config_load(*cfg, path, envp, err);
    if (rc == GT_OK)
        rc = gt_config_finish(*cfg, err);
    if (rc != GT_OK)
        gt_config_free(cfg);
    return rc;
}

gt_err gt_setup_bus_config(const gt_config *cfg, gt_bus_config *bc, gt_error *err)
{
    *bc = (gt_bus_config){
        .hosts = cfg->broker.hosts.v,
        .vhost = cfg->broker.vhost,
        .username = cfg->broker.username,
        .password = cfg->broker.password,
        .use_tls = cfg->broker.use_tls,
        .ca_certificate_file = cfg->broker.ca_certificate_file ? cfg->broker.ca_certificate_file
                                                               : cfg->application.ca_certificate_file,
        .certificate_file = cfg->broker.certificate_file,
        .private_key_file = cfg->broker.private_key_file,
        .heartbeat_s = cfg->broker.heartbeat / 1000, /* config durations are in ms */
        /* the cluster's queues through its exchanges: broker permissions decide who
         * may publish to which (bus.h, "Routes") */
        .cluster_id = cfg->application.cluster_id,
    };
    if (cfg->broker.hosts.n == 0)
        return gt_error_set(err, GT_EINVAL, "[broker] hosts is empty");
    return GT_OK;
}

/* The signing key from [sessions] signing_key_file. A file derived from working_dir is
 * created (0600, O_EXCL: one racing tokend or controller wins, the other reads it); one
 * the user named must exist, since a key made here would differ from the other nodes'. */
static gt_err load_signing_key(const gt_config *cfg, unsigned char key[GT_SESSIONS_KEY_LEN],
                               gt_error *err)
{
    const char *path = cfg->sessions.signing_key_file;
    const char *src = gt_config_source(cfg, "sessions", "signing_key_file");
    bool derived = src == NULL || strncmp(src, "derived", 7) == 0;
    char *text = NULL;
    size_t len = 0;
    gt_error e = {0};
    gt_err rc = GT_OK;
    struct stat st;
    if (path == NULL)
        return gt_error_setf(err, GT_EINVAL, "sessions.signing_key_file",
                             "[sessions] signing_key_file is not set");
    if (stat(path, &st) != 0 && errno == ENOENT) {
        if (!derived)
            return gt_error_setf(err, GT_ENOTFOUND, "sessions.signing_key_file",
                                 "[sessions] signing_key_file %s: not found (copy it from the "
                                 "other tokend and controller nodes)", path);
        /* working_dir may not exist yet: a controller can start before tokend */
        if ((rc = gt_mkdir_p(cfg->application.working_dir, 0700, &e)) != GT_OK)
            return gt_error_setf(err, rc, "sessions.signing_key_file", "%s", e.message);
        rc = gt_key_generate(path, &e);
        if (rc == GT_OK)
            gt_warn("created the session signing key %s; every gantry-tokend and "
                    "gantry-controller of the cluster needs this same file", path);
        else if (rc != GT_ECONFLICT) /* ECONFLICT: created meanwhile by another process */
            return gt_error_setf(err, rc, "sessions.signing_key_file",
                                 "[sessions] signing_key_file: %s", e.message);
        gt_error_clear(&e);
    }
    rc = gt_read_file(path, 64 * 1024, &text, &len, &e);
    if (rc != GT_OK)
        return gt_error_setf(err, rc, "sessions.signing_key_file",
                             "[sessions] signing_key_file %s", e.message);
    while (len > 0 && (text[len - 1] == '\n' || text[len - 1] == '\r' ||
                       text[len - 1] == ' ' || text[len - 1] == '\t'))
        len--;
    if (len < 32)
        rc = gt_error_setf(err, GT_EINVAL, "sessions.signing_key_file",
                           "[sessions] signing_key_file %s is too short (%zu bytes; at least 32 "
                           "needed)", path, len);
    else
        rc = gt_sessions_derive_key(text, len, cfg->application.cluster_id, key, err);
    gt_wipe(text, len);
    free(text);
    return rc;
}

gt_err gt_setup_sessions_config(const gt_config *cfg, const char *prefix, gt_sessions_config *sc,
                                gt_error *err)
{
    *sc = (gt_sessions_config){
        .sentinels = cfg->sessions.sentinels.n > 0 ? cfg->sessions.sentinels.v : NULL,
        .master_name = cfg->sessions.master_name,
        .host = cfg->sessions.host,
        .username = cfg->sessions.username,
        .password = cfg->sessions.password,
        .sentinel_username = cfg->sessions.sentinel_username,
        .sentinel_password = cfg->sessions.sentinel_password,
        .db = cfg->sessions.db,
        .prefix = prefix,
    };
    if (cfg->sessions.use_tls)
        return gt_error_set(err, GT_EINVAL, "[sessions] use_tls = true is not supported yet "
                                            "(hiredis 0.14 has no TLS)");
    if (cfg->sessions.password == NULL)
        gt_warn("[sessions] password is empty: anyone who reaches Redis can delete or flood "
                "sessions (they still cannot forge one without [sessions] signing_key_file)");
    gt_err rc = load_signing_key(cfg, sc->signing_key, err);
    sc->signing_key_set = rc == GT_OK;
    return rc;
}
