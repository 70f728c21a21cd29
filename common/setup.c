#include "setup.h"

#include <string.h>

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
        .pip_index_url = cfg->runner.pip_index_url,
        .pip_extra_index_url = cfg->runner.pip_extra_index_url,
        .pip_find_links = cfg->runner.pip_find_links,
        .pip_trusted_host = cfg->runner.pip_trusted_host,
        .pip_no_index = cfg->runner.pip_no_index,
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
    default:
        return gt_error_set(err, GT_EINVAL, "[store] backend = %s has no driver in this build yet; "
                                            "use local or memory",
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
    };
    if (cfg->broker.hosts.n == 0)
        return gt_error_set(err, GT_EINVAL, "[broker] hosts is empty");
    return GT_OK;
}

gt_err gt_setup_sessions_config(const gt_config *cfg, const char *prefix, gt_sessions_config *sc,
                                gt_error *err)
{
    *sc = (gt_sessions_config){
        .sentinels = cfg->sessions.sentinels.n > 0 ? cfg->sessions.sentinels.v : NULL,
        .master_name = cfg->sessions.master_name,
        .host = cfg->sessions.host,
        .password = cfg->sessions.password,
        .db = cfg->sessions.db,
        .prefix = prefix,
    };
    if (cfg->sessions.use_tls)
        return gt_error_set(err, GT_EINVAL, "[sessions] use_tls = true is not supported yet "
                                            "(hiredis 0.14 has no TLS)");
    return GT_OK;
}
