#include "model/model.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "config.h"
#include "json.h"
#include "util.h"

static const char *const fields[] = {
    "name", "description", "type", "repository", "filename", "working_dir", "decorator",
    "env", "secrets", "timeout", "playbooks", "inventory", "extra_vars", "arg_format",
    "interpreter", "retries", "pool", "limits", "allowed_secrets", NULL};
static const char *const indexes[] = {"repository", "decorator", NULL};
static const char *const hidden[] = {NULL};

static const char *const types[] = {"python-script", "ansible-playbook", "executable", NULL};

static bool env_name_valid(const char *s)
{
    if (!s || !(isalpha((unsigned char)s[0]) || s[0] == '_'))
        return false;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && *s != '_')
            return false;
    return true;
}

/* Variables that configure the loader, an interpreter or a tool the run uses, or that
 * Gantry sets itself. A secret there is executed, loaded or echoed in an error message
 * (LD_PRELOAD=VALUE makes ld.so print "object 'VALUE' cannot be preloaded" on stderr),
 * and a plain value there changes what the run executes. Compared ignoring case: no
 * tool needs a lowercase spelling of these, and refusing one costs nothing. Proxy
 * variables (http_proxy, ...) are fine: they carry credentials by design. */
typedef struct refused_var {
    const char *name;   /* the exact name, or a prefix */
    bool prefix;
    const char *why;
} refused_var;

static const refused_var refused_vars[] = {
    {"LD_", true, "read by the dynamic loader"},
    {"GCONV_PATH", false, "read by the C library"},
    {"GLIBC_TUNABLES", false, "read by the C library"},
    {"MALLOC_", true, "read by the C library"},
    {"LOCPATH", false, "read by the C library"},
    {"NLSPATH", false, "read by the C library"},
    {"HOSTALIASES", false, "read by the C library"},
    {"RESOLV_HOST_CONF", false, "read by the C library"},
    {"RES_OPTIONS", false, "read by the C library"},
    {"LOCALDOMAIN", false, "read by the C library"},
    {"TZDIR", false, "read by the C library"},
    {"GETCONF_DIR", false, "read by the C library"},
    {"NIS_PATH", false, "read by the C library"},
    {"PYTHON", true, "a Python interpreter setting"},
    {"VIRTUAL_ENV", false, "a Python interpreter setting (set by Gantry)"},
    {"PERL5", true, "a Perl interpreter setting"},
    {"PERLLIB", false, "a Perl interpreter setting"},
    {"PERLIO", true, "a Perl interpreter setting"},
    {"RUBY", true, "a Ruby interpreter setting"},
    {"NODE_", true, "a Node.js setting"},
    {"JAVA_TOOL_OPTIONS", false, "read by the Java virtual machine"},
    {"_JAVA_OPTIONS", false, "read by the Java virtual machine"},
    {"JDK_JAVA_OPTIONS", false, "read by the Java launcher"},
    {"BASH_ENV", false, "a shell setting (a file every bash script runs first)"},
    {"ENV", false, "a shell setting (a file an interactive sh runs first)"},
    {"BASHOPTS", false, "a shell setting"},
    {"SHELLOPTS", false, "a shell setting"},
    {"PS4", false, "a shell setting (printed by set -x)"},
    {"IFS", false, "a shell setting"},
    {"CDPATH", false, "a shell setting"},
    {"PATH", false, "set by Gantry for the run (where programs are found)"},
    {"HOME", false, "set by Gantry for the run"},
    {"TMPDIR", false, "set by Gantry for the run"},
    {"TZ", false, "a locale setting"},
    {"LANG", false, "a locale setting"},
    {"LANGUAGE", false, "a locale setting"},
    {"LC_", true, "a locale setting"},
    {"GIT_", true, "a Git setting"},
    {"ANSIBLE_", true, "an Ansible setting"},
    {"SSH_", true, "an SSH setting"},
    {"GANTRY_", true, "reserved for Gantry"},
    {"OPENSSL_", true, "an OpenSSL setting"},
    {"SSL_", true, "an OpenSSL setting"},
    {"CURL_", true, "a curl setting"},
};

static const refused_var *find_refused(const char *name)
{
    for (size_t i = 0; name && i < sizeof refused_vars / sizeof refused_vars[0]; i++) {
        const refused_var *v = &refused_vars[i];
        if (v->prefix ? strncasecmp(name, v->name, strlen(v->name)) == 0
                      : strcasecmp(name, v->name) == 0)
            return v;
    }
    return NULL;
}

const char *gt_service_env_refused(const char *name, const char **pattern)
{
    const refused_var *v = find_refused(name);
    if (v && pattern)
        *pattern = v->name;
    return v ? v->why : NULL;
}

/* GT_EINVAL at field when variable name is refused, saying why; `what` is the verb
 * phrase for the thing refused ("receive a secret"). */
static gt_err check_refused(const char *name, const char *field, const char *what, gt_error *err)
{
    const refused_var *v = find_refused(name);
    if (v == NULL)
        return GT_OK;
    return gt_error_setf(err, GT_EINVAL, field, "%s: \"%s\" cannot %s: %s%s is %s", field, name,
                         what, v->name, v->prefix ? "*" : "", v->why);
}

static gt_err check_env(const cJSON *env, gt_error *err)
{
    if (env == NULL || cJSON_IsNull(env))
        return GT_OK;
    if (!cJSON_IsObject(env))
        return gt_error_setf(err, GT_EINVAL, "$.env", "$.env: expected an object of strings");
    const cJSON *kv;
    cJSON_ArrayForEach(kv, env) {
        char field[300];
        snprintf(field, sizeof field, "$.env.%s", kv->string);
        if (!env_name_valid(kv->string))
            return gt_error_setf(err, GT_EINVAL, field, "%s: not a valid environment variable name",
                                 field);
        if (!cJSON_IsString(kv))
            return gt_error_setf(err, GT_EINVAL, field, "%s: expected a string", field);
        gt_err rc = check_refused(kv->string, field, "be set by a service", err);
        if (rc != GT_OK)
            return rc;
    }
    return GT_OK;
}

/* allowed_secrets: names of secrets an admin grants to the service's run requests. */
static gt_err check_allowed(const cJSON *list, gt_error *err)
{
    if (list == NULL || cJSON_IsNull(list))
        return GT_OK;
    if (!cJSON_IsArray(list))
        return gt_error_setf(err, GT_EINVAL, "$.allowed_secrets",
                             "$.allowed_secrets: expected a list of secret names");
    int i = 0;
    const cJSON *n;
    cJSON_ArrayForEach(n, list) {
        char f[64];
        snprintf(f, sizeof f, "$.allowed_secrets[%d]", i++);
        if (!cJSON_IsString(n))
            return gt_error_setf(err, GT_EINVAL, f, "%s: expected a secret name", f);
        if (!gt_name_valid(n->valuestring))
            return gt_error_setf(err, GT_EINVAL, f, "%s: \"%s\" is not a valid secret name", f,
                                 n->valuestring);
    }
    return GT_OK;
}

bool gt_service_grants_secret(const cJSON *svc, const char *name)
{
    const cJSON *it;
    if (name == NULL)
        return false;
    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(svc, "allowed_secrets"))
        if (cJSON_IsString(it) && strcmp(it->valuestring, name) == 0)
            return true;
    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(svc, "secrets")) {
        const cJSON *n = cJSON_GetObjectItemCaseSensitive(it, "name");
        if (cJSON_IsString(n) && strcmp(n->valuestring, name) == 0)
            return true;
    }
    return false;
}

gt_err gt_service_check_secrets(const cJSON *list, const char *path, gt_error *err)
{
    static const char *const keys[] = {"name", "type", "target", NULL};
    if (list == NULL || cJSON_IsNull(list))
        return GT_OK;
    if (!cJSON_IsArray(list))
        return gt_error_setf(err, GT_EINVAL, path, "%s: expected a list of secrets", path);
    int i = 0;
    const cJSON *s;
    cJSON_ArrayForEach(s, list) {
        char p[128];
        snprintf(p, sizeof p, "%s[%d]", path, i++);
        const char *name = NULL, *type = "env", *target = NULL;
        gt_err rc;
        if (!cJSON_IsObject(s))
            return gt_error_setf(err, GT_EINVAL, p, "%s: expected {name, type, target}", p);
        if ((rc = gt_json_only(s, p, keys, err)) != GT_OK ||
            (rc = gt_json_str(s, p, "name", &name, err)) != GT_OK ||
            (rc = gt_json_opt_str(s, p, "type", &type, err)) != GT_OK ||
            (rc = gt_json_str(s, p, "target", &target, err)) != GT_OK)
            return rc;
        char f[160];
        if (!gt_name_valid(name)) {
            snprintf(f, sizeof f, "%s.name", p);
            return gt_error_setf(err, GT_EINVAL, f, "%s: \"%s\" is not a valid secret name", f, name);
        }
        if (strcmp(type, "env") != 0) {
            snprintf(f, sizeof f, "%s.type", p);
            return gt_error_setf(err, GT_EINVAL, f, "%s: \"%s\" is not supported (only \"env\")", f,
                                 type);
        }
        snprintf(f, sizeof f, "%s.target", p);
        if (!env_name_valid(target))
            return gt_error_setf(err, GT_EINVAL, f,
                                 "%s: \"%s\" is not a valid environment variable name", f, target);
        if ((rc = check_refused(target, f, "receive a secret", err)) != GT_OK)
            return rc;
    }
    return GT_OK;
}

/* How a member of $.limits is written: a count, a size, a duration (numbers: seconds). */
typedef enum limit_kind { PLAIN, SIZE, SECONDS } limit_kind;

/* One member of $.limits: a non-negative integer (in plain units) or, for sizes and
 * durations, a string the config parsers read. -1 when absent. */
static gt_err limit_value(const cJSON *lim, const char *key, limit_kind kind, int64_t max,
                          int64_t *out, gt_error *err)
{
    char field[64];
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(lim, key);
    gt_error why = {0};
    *out = -1;
    snprintf(field, sizeof field, "$.limits.%s", key);
    if (v == NULL || cJSON_IsNull(v))
        return GT_OK;
    if (cJSON_IsNumber(v)) {
        double d = v->valuedouble;
        if (d != (double)(int64_t)d || d < 0 || d > (double)max)
            return gt_error_setf(err, GT_EINVAL, field, "%s: expected a whole number in [0, %lld]",
                                 field, (long long)max);
        *out = (int64_t)d * (kind == SECONDS ? 1000 : 1);
    } else if (cJSON_IsString(v) && kind == SIZE) {
        if (gt_config_parse_size(v->valuestring, field, out, &why) != GT_OK)
            return gt_error_setf(err, GT_EINVAL, field, "%s", why.message);
    } else if (cJSON_IsString(v) && kind == SECONDS) {
        if (gt_config_parse_duration(v->valuestring, 1000, field, out, &why) != GT_OK)
            return gt_error_setf(err, GT_EINVAL, field, "%s", why.message);
    } else {
        return gt_error_setf(err, GT_EINVAL, field, "%s: expected %s", field,
                             kind == SIZE      ? "a size such as \"256MiB\" (or bytes)"
                             : kind == SECONDS ? "a duration such as \"10m\" (or seconds)"
                                               : "a whole number");
    }
    if ((kind == SIZE && *out > max) || (kind == SECONDS && *out > max * 1000))
        return gt_error_setf(err, GT_EINVAL, field, "%s: %s is too large", field,
                             cJSON_IsString(v) ? v->valuestring : "the value");
    if (kind == SIZE && *out > 0 && *out < (16 << 20))
        return gt_error_setf(err, GT_EINVAL, field,
                             "%s: too small to start a program: 0 (no limit) or at least 16MiB",
                             field);
    return GT_OK;
}

gt_err gt_service_limits_get(const cJSON *service, gt_service_limits *out, gt_error *err)
{
    static const char *const keys[] = {"memory", "processes", "cpu_time", "open_files", NULL};
    const cJSON *lim = cJSON_GetObjectItemCaseSensitive(service, "limits");
    gt_err rc;
    *out = (gt_service_limits){-1, -1, -1, -1};
    if (lim == NULL || cJSON_IsNull(lim))
        return GT_OK;
    if (!cJSON_IsObject(lim))
        return gt_error_setf(err, GT_EINVAL, "$.limits",
                             "$.limits: expected {memory, processes, cpu_time, open_files}");
    if ((rc = gt_json_only(lim, "$.limits", keys, err)) != GT_OK ||
        (rc = limit_value(lim, "memory", SIZE, INT64_C(1) << 40, &out->memory, err)) != GT_OK ||
        (rc = limit_value(lim, "processes", PLAIN, 1 << 22, &out->processes, err)) != GT_OK ||
        (rc = limit_value(lim, "cpu_time", SECONDS, 30 * 86400, &out->cpu_ms, err)) != GT_OK ||
        (rc = limit_value(lim, "open_files", PLAIN, 1 << 20, &out->open_files, err)) != GT_OK)
        return rc;
    return GT_OK;
}

/* Fields that only make sense for one type. */
static gt_err only_for(const cJSON *doc, const char *type, const char *key, const char *owner,
                       gt_error *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(doc, key);
    if (v && !cJSON_IsNull(v) && strcmp(type, owner) != 0) {
        char field[64];
        snprintf(field, sizeof field, "$.%s", key);
        return gt_error_setf(err, GT_EINVAL, field, "%s: only for %s services", field, owner);
    }
    return GT_OK;
}

static gt_err validate(cJSON *doc, gt_error *err)
{
    const char *type = NULL, *s = NULL;
    int64_t n = 0;
    gt_err rc;
    if ((rc = gt_json_only(doc, "$", fields, err)) != GT_OK ||
        (rc = gt_model_check_name(doc, err)) != GT_OK ||
        (rc = gt_json_str(doc, "$", "type", &type, err)) != GT_OK)
        return rc;
    if (strcmp(type, "opentofu-plan") == 0)
        return gt_error_setf(err, GT_EINVAL, "$.type",
                             "$.type: opentofu-plan services are not supported yet");
    bool known = false;
    for (size_t i = 0; types[i]; i++)
        known |= strcmp(type, types[i]) == 0;
    if (!known)
        return gt_error_setf(err, GT_EINVAL, "$.type",
                             "$.type: \"%s\" is not one of python-script, ansible-playbook, "
                             "executable", type);
    if ((rc = gt_json_opt_str(doc, "$", "description", &s, err)) != GT_OK ||
        (rc = gt_json_str(doc, "$", "repository", &s, err)) != GT_OK ||
        (rc = gt_model_check_ref(doc, "repository", err)) != GT_OK ||
        (rc = gt_model_check_ref(doc, "decorator", err)) != GT_OK ||
        (rc = gt_json_opt_str(doc, "$", "pool", &s, err)) != GT_OK ||
        (rc = check_env(cJSON_GetObjectItemCaseSensitive(doc, "env"), err)) != GT_OK ||
        (rc = gt_service_check_secrets(cJSON_GetObjectItemCaseSensitive(doc, "secrets"),
                                       "$.secrets", err)) != GT_OK ||
        (rc = check_allowed(cJSON_GetObjectItemCaseSensitive(doc, "allowed_secrets"), err)) !=
            GT_OK ||
        (rc = only_for(doc, type, "playbooks", "ansible-playbook", err)) != GT_OK ||
        (rc = only_for(doc, type, "inventory", "ansible-playbook", err)) != GT_OK ||
        (rc = only_for(doc, type, "extra_vars", "ansible-playbook", err)) != GT_OK ||
        (rc = only_for(doc, type, "arg_format", "executable", err)) != GT_OK ||
        (rc = only_for(doc, type, "interpreter", "executable", err)) != GT_OK)
        return rc;

    const char *wd = NULL;
    if ((rc = gt_json_opt_str(doc, "$", "working_dir", &wd, err)) != GT_OK ||
        (wd && (rc = gt_model_check_relpath(wd, "$.working_dir", err)) != GT_OK))
        return rc;
    n = 0;
    if ((rc = gt_json_opt_int(doc, "$", "timeout", &n, err)) != GT_OK)
        return rc;
    if (n < 0 || n > 7 * 86400)
        return gt_error_setf(err, GT_EINVAL, "$.timeout",
                             "$.timeout: %lld is out of range [0, 604800] seconds", (long long)n);
    gt_service_limits lim;
    if ((rc = gt_service_limits_get(doc, &lim, err)) != GT_OK)
        return rc;
    n = 0;
    if ((rc = gt_json_opt_int(doc, "$", "retries", &n, err)) != GT_OK)
        return rc;
    if (n < 0 || n > 100)
        return gt_error_setf(err, GT_EINVAL, "$.retries", "$.retries: %lld is out of range [0, 100]",
                             (long long)n);

    const char *file = NULL;
    if ((rc = gt_json_opt_str(doc, "$", "filename", &file, err)) != GT_OK ||
        (file && (rc = gt_model_check_relpath(file, "$.filename", err)) != GT_OK))
        return rc;
    if (strcmp(type, "ansible-playbook") == 0) {
        cJSON *pbs = cJSON_GetObjectItemCaseSensitive(doc, "playbooks");
        if ((pbs == NULL || cJSON_IsNull(pbs)) && file && file[0]) {
            /* --filename names the one playbook */
            pbs = cJSON_CreateArray();
            cJSON_AddItemToArray(pbs, cJSON_CreateString(file));
            gt_json_set(doc, "playbooks", pbs);
        }
        if (!cJSON_IsArray(pbs) || cJSON_GetArraySize(pbs) == 0)
            return gt_error_setf(err, GT_EINVAL, "$.playbooks",
                                 "$.playbooks: an ansible-playbook service needs at least one playbook");
        int i = 0;
        const cJSON *pb;
        cJSON_ArrayForEach(pb, pbs) {
            char field[64];
            snprintf(field, sizeof field, "$.playbooks[%d]", i++);
            if (!cJSON_IsString(pb) || pb->valuestring[0] == '\0')
                return gt_error_setf(err, GT_EINVAL, field, "%s: expected a file name", field);
            if ((rc = gt_model_check_relpath(pb->valuestring, field, err)) != GT_OK)
                return rc;
        }
        const char *inv = NULL;
        if ((rc = gt_json_opt_str(doc, "$", "inventory", &inv, err)) != GT_OK)
            return rc;
        const cJSON *ev = cJSON_GetObjectItemCaseSensitive(doc, "extra_vars");
        if (ev && !cJSON_IsNull(ev) && !cJSON_IsObject(ev))
            return gt_error_setf(err, GT_EINVAL, "$.extra_vars", "$.extra_vars: expected an object");
    } else if (file == NULL || file[0] == '\0') {
        return gt_error_setf(err, GT_EINVAL, "$.filename", "$.filename: a %s service needs a file",
                             type);
    }
    if ((rc = gt_json_opt_str(doc, "$", "arg_format", &s, err)) != GT_OK ||
        (rc = gt_json_opt_str(doc, "$", "interpreter", &s, err)) != GT_OK)
        return rc;
    return GT_OK;
}

const gt_model_kind gt_model_service = {
    .plural = "services",
    .singular = "service",
    .fields = fields,
    .indexes = indexes,
    .hidden = hidden,
    .validate = validate,
};
