#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "json.h"
#include "model/model.h"

/* ---------- flags ---------- */

const cli_flag cli_global_flags[] = {
    {"config", FLAG_STR, "FILE", "configuration file (default: $GANTRY_CONFIG, ~/.gantry/gantry.conf, /etc/gantry/gantry.conf)", false},
    {"output", FLAG_STR, "FORMAT", "output format: table (default), json or yaml; also -o", false},
    {"help", FLAG_BOOL, NULL, "show help; also -h", false},
    {NULL, 0, NULL, NULL, false},
};

#define F_DESCRIPTION {"description", FLAG_STR, "TEXT", "a description", false}
#define F_END {NULL, 0, NULL, NULL, false}

static const cli_flag repo_update_flags[] = {
    {"url", FLAG_STR, "URL", "Git URL: an absolute path, file://, ssh://, user@host:path or https://", false},
    {"reference", FLAG_STR, "REF", "branch, tag or commit to run (default: the remote's HEAD)", false},
    {"private-key-name", FLAG_STR, "SECRET", "secret holding the SSH private key for the URL", false},
    F_DESCRIPTION, F_END,
};

static const cli_flag repo_flags[] = {
    {"url", FLAG_STR, "URL", "Git URL: an absolute path, file://, ssh://, user@host:path or https://", true},
    {"reference", FLAG_STR, "REF", "branch, tag or commit to run (default: the remote's HEAD)", false},
    {"private-key-name", FLAG_STR, "SECRET", "secret holding the SSH private key for the URL", false},
    F_DESCRIPTION, F_END,
};

#define SERVICE_FLAGS(req) \
    {"repository", FLAG_STR, "NAME", "repository holding the code", req}, \
    {"filename", FLAG_STR, "FILE", "file to run, relative to the working dir", false}, \
    {"working-dir", FLAG_STR, "DIR", "directory in the repository to run from", false}, \
    {"decorator", FLAG_STR, "NAME", "decorator (JSON Schema) that inputs must match", false}, \
    {"env", FLAG_LIST, "KEY=VALUE", "environment variable for the run", false}, \
    {"secret", FLAG_LIST, "name=S,type=env,target=VAR", "secret S exposed as environment variable VAR", false}, \
    {"allow-secret", FLAG_LIST, "NAME", "a secret that run requests may bind (--set-secret); an update replaces the list", false}, \
    {"timeout", FLAG_STR, "SECONDS", "kill the run after this long (0: [runner] default_timeout)", false}, \
    {"playbook", FLAG_LIST, "FILE", "ansible-playbook: a playbook to run", false}, \
    {"inventory", FLAG_STR, "FILE", "ansible-playbook: inventory file or host list", false}, \
    {"extra-vars", FLAG_STR, "JSON", "ansible-playbook: extra variables (inputs override them)", false}, \
    {"arg-format", FLAG_STR, "FORMAT", "executable: how each input becomes arguments (default \"--{key} {value}\")", false}, \
    {"interpreter", FLAG_STR, "PROGRAM", "executable: run the file through this program", false}, \
    {"retries", FLAG_STR, "N", "times a lost run is retried (default 0)", false}, \
    {"pool", FLAG_STR, "NAME", "runner pool that runs it", false}, \
    F_DESCRIPTION

static const cli_flag service_flags[] = {SERVICE_FLAGS(true), F_END};
static const cli_flag service_update_flags[] = {SERVICE_FLAGS(false), F_END};

static const cli_flag decorator_flags[] = {
    {"schema", FLAG_STR, "JSON|@FILE", "JSON Schema for the inputs, inline or from a file", true},
    F_DESCRIPTION, F_END,
};

static const cli_flag decorator_update_flags[] = {
    {"schema", FLAG_STR, "JSON|@FILE", "JSON Schema for the inputs, inline or from a file", false},
    F_DESCRIPTION, F_END,
};

static const cli_flag secret_flags[] = {
    {"value", FLAG_STR, "VALUE", "the value; \"-\" reads it from standard input (a value here is visible in the process list: prefer --value-file or stdin)", false},
    {"value-file", FLAG_STR, "FILE", "read the value from a file", false},
    F_DESCRIPTION, F_END,
};

static const cli_flag list_flags[] = {
    {"limit", FLAG_STR, "N", "at most N items (default 100)", false},
    {"cursor", FLAG_STR, "CURSOR", "continue after this cursor", false},
    F_END,
};

static const cli_flag exec_list_flags[] = {
    {"limit", FLAG_STR, "N", "at most N items (default 100)", false},
    {"cursor", FLAG_STR, "CURSOR", "continue after this cursor", false},
    {"service", FLAG_STR, "NAME", "only executions of this service", false},
    {"state", FLAG_STR, "STATE", "only executions in this state", false},
    {"oldest-first", FLAG_BOOL, NULL, "list the oldest first (default: the newest first)", false},
    F_END,
};

static const cli_flag run_flags[] = {
    {"set", FLAG_LIST, "KEY=VALUE", "an input value", false},
    {"inputs", FLAG_STR, "JSON|@FILE", "all inputs as a JSON object (--set overrides)", false},
    {"set-secret", FLAG_LIST, "name=S,type=env,target=VAR", "a secret for this run only", false},
    F_END,
};

static const cli_flag version_flags[] = {
    {"show-config", FLAG_BOOL, NULL, "print the configuration and where each value came from", false},
    F_END,
};

static const cli_flag no_flags[] = {F_END};

static const cli_flag login_flags[] = {
    {"change-password", FLAG_BOOL, NULL, "change the password (asks for the current and the new one)", false},
    {"password-stdin", FLAG_BOOL, NULL, "read the password(s) from standard input, one per line", false},
    {"raw", FLAG_BOOL, NULL, "print the token as JSON (for scripts); it is saved either way", false},
    F_END,
};

static const cli_flag user_flags[] = {
    {"role", FLAG_STR, "ROLE", "admin, operator or viewer", true},
    {"password-stdin", FLAG_BOOL, NULL, "read the password from standard input (default: a temporary one is generated)", false},
    F_END,
};

static const cli_flag apikey_flags[] = {
    {"name", FLAG_STR, "NAME", "a label for the key", false},
    F_END,
};

/* ---------- helpers ---------- */

int cli_request(cli *c, const char *method, const char *path, const char *query,
                const cJSON *body, cJSON **out)
{
    gt_api_response resp = {0};
    c->call(c, method, path, query, body, &resp);
    int rc = cli_status_exit(resp.status);
    if (rc != CLI_OK) {
        cli_print_error(c, &resp);
        gt_api_response_clear(&resp);
        return rc;
    }
    *out = resp.body;
    return CLI_OK;
}

static int usage_error(cli *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int usage_error(cli *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(c->err, "gantry: ");
    vfprintf(c->err, fmt, ap);
    fputc('\n', c->err);
    va_end(ap);
    return CLI_USAGE;
}

/* JSON from "JSON" or "@FILE"; errors name the flag and line:column. */
static int json_arg(cli *c, const char *flag, const char *value, cJSON **out)
{
    char *text = NULL;
    size_t len = 0;
    const char *what = flag;
    gt_error e = {0};
    if (value[0] == '@') {
        if (gt_read_file(value + 1, 16 << 20, &text, &len, &e) != GT_OK)
            return usage_error(c, "--%s: %s", flag, e.message);
        what = value + 1;
    } else {
        text = gt_xstrdup(value);
        len = strlen(text);
    }
    gt_err rc = gt_json_parse(text, len, what, out, &e);
    free(text);
    if (rc != GT_OK)
        return usage_error(c, "--%s: %s", flag, e.message);
    return CLI_OK;
}

static void set_str(cJSON *o, const char *key, const char *v)
{
    if (v)
        gt_json_set_str(o, key, v);
}

/* "name=S,type=env,target=VAR" -> {"name":..., "type":..., "target":...} */
static int binding_arg(cli *c, const char *flag, const char *value, cJSON *list)
{
    cJSON *b = cJSON_CreateObject();
    char *copy = gt_xstrdup(value), *save = NULL;
    int rc = CLI_OK;
    for (char *kv = strtok_r(copy, ",", &save); kv; kv = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(kv, '=');
        if (eq == NULL) {
            rc = usage_error(c, "--%s: \"%s\" is not key=value (expected name=S,type=env,target=VAR)",
                             flag, kv);
            break;
        }
        *eq = '\0';
        if (strcmp(kv, "name") != 0 && strcmp(kv, "type") != 0 && strcmp(kv, "target") != 0) {
            rc = usage_error(c, "--%s: unknown key \"%s\" (expected name, type, target)", flag, kv);
            break;
        }
        gt_json_set_str(b, kv, eq + 1);
    }
    free(copy);
    if (rc == CLI_OK)
        cJSON_AddItemToArray(list, b);
    else
        cJSON_Delete(b);
    return rc;
}

/* KEY=VALUE pairs of a list flag into obj (values as strings). */
static int pairs_arg(cli *c, const char *flag, const gt_strv *v, cJSON *obj)
{
    for (size_t i = 0; v && i < v->n; i++) {
        const char *eq = strchr(v->v[i], '=');
        if (eq == NULL || eq == v->v[i])
            return usage_error(c, "--%s: \"%s\" is not KEY=VALUE", flag, v->v[i]);
        char *k = gt_xstrndup(v->v[i], (size_t)(eq - v->v[i]));
        gt_json_set_str(obj, k, eq + 1);
        free(k);
    }
    return CLI_OK;
}

static int int_arg(cli *c, const char *flag, const char *value, int64_t max, cJSON *obj,
                   const char *key)
{
    int64_t n;
    gt_error e = {0};
    char what[64];
    snprintf(what, sizeof what, "--%s", flag);
    if (gt_parse_int64(value, 0, max, &n, what, &e) != GT_OK)
        return usage_error(c, "%s", e.message);
    gt_json_set_num(obj, key, (double)n);
    return CLI_OK;
}

void cli_print_doc(cli *c, const cJSON *doc)
{
    if (c->format == CLI_JSON)
        cli_print_json(c->out, doc);
    else
        cli_print_yaml(c->out, doc);
}

static char *resource_path(const char *plural, const char *name)
{
    /* names are [A-Za-z0-9_.-]: nothing to escape; other input is rejected before */
    return name ? gt_xasprintf("/api/v1/%s/%s", plural, name) : gt_xasprintf("/api/v1/%s", plural);
}

static int check_name(cli *c, const char *name)
{
    if (!gt_name_valid(name))
        return usage_error(c, "\"%s\" is not a valid name (1-128 of A-Z a-z 0-9 _ . -, not starting "
                              "with . or -)", name);
    return CLI_OK;
}

/* ---------- create / update ---------- */

static int repo_body(cli *c, const cli_args *a, cJSON *b)
{
    (void)c;
    const char *url = cli_flag_str(a, "url");
    if (url && url[0] != '/' && strstr(url, "://") == NULL && strchr(url, ':') == NULL) {
        /* a relative local path: make it absolute, so later runs from any directory work */
        char *cwd = getcwd(NULL, 0);
        char *abs = gt_path_join(cwd ? cwd : "/", url);
        char *real = realpath(abs, NULL);
        gt_json_set_str(b, "url", real ? real : abs);
        free(real);
        free(abs);
        free(cwd);
    } else {
        set_str(b, "url", url);
    }
    set_str(b, "reference", cli_flag_str(a, "reference"));
    set_str(b, "private_key_name", cli_flag_str(a, "private-key-name"));
    set_str(b, "description", cli_flag_str(a, "description"));
    return CLI_OK;
}

static int service_body(cli *c, const cli_args *a, cJSON *b)
{
    int rc;
    set_str(b, "repository", cli_flag_str(a, "repository"));
    set_str(b, "filename", cli_flag_str(a, "filename"));
    set_str(b, "working_dir", cli_flag_str(a, "working-dir"));
    set_str(b, "decorator", cli_flag_str(a, "decorator"));
    set_str(b, "inventory", cli_flag_str(a, "inventory"));
    set_str(b, "arg_format", cli_flag_str(a, "arg-format"));
    set_str(b, "interpreter", cli_flag_str(a, "interpreter"));
    set_str(b, "pool", cli_flag_str(a, "pool"));
    set_str(b, "description", cli_flag_str(a, "description"));
    const gt_strv *env = cli_flag_list(a, "env");
    if (env && env->n) {
        cJSON *o = cJSON_AddObjectToObject(b, "env");
        if ((rc = pairs_arg(c, "env", env, o)) != CLI_OK)
            return rc;
    }
    const gt_strv *sec = cli_flag_list(a, "secret");
    if (sec && sec->n) {
        cJSON *l = cJSON_AddArrayToObject(b, "secrets");
        for (size_t i = 0; i < sec->n; i++)
            if ((rc = binding_arg(c, "secret", sec->v[i], l)) != CLI_OK)
                return rc;
    }
    const gt_strv *allow = cli_flag_list(a, "allow-secret");
    if (allow && allow->n) {
        cJSON *l = cJSON_AddArrayToObject(b, "allowed_secrets");
        for (size_t i = 0; i < allow->n; i++) {
            if ((rc = check_name(c, allow->v[i])) != CLI_OK)
                return rc;
            cJSON_AddItemToArray(l, cJSON_CreateString(allow->v[i]));
        }
    }
    const gt_strv *pbs = cli_flag_list(a, "playbook");
    if (pbs && pbs->n) {
        cJSON *l = cJSON_AddArrayToObject(b, "playbooks");
        for (size_t i = 0; i < pbs->n; i++)
            cJSON_AddItemToArray(l, cJSON_CreateString(pbs->v[i]));
    }
    const char *s;
    if ((s = cli_flag_str(a, "timeout")) && (rc = int_arg(c, "timeout", s, 604800, b, "timeout")))
        return rc;
    if ((s = cli_flag_str(a, "retries")) && (rc = int_arg(c, "retries", s, 100, b, "retries")))
        return rc;
    if ((s = cli_flag_str(a, "extra-vars"))) {
        cJSON *ev = NULL;
        if ((rc = json_arg(c, "extra-vars", s, &ev)) != CLI_OK)
            return rc;
        gt_json_set(b, "extra_vars", ev);
    }
    return CLI_OK;
}

static int decorator_body(cli *c, const cli_args *a, cJSON *b)
{
    const char *s = cli_flag_str(a, "schema");
    set_str(b, "description", cli_flag_str(a, "description"));
    if (s) {
        cJSON *schema = NULL;
        int rc = json_arg(c, "schema", s, &schema);
        if (rc != CLI_OK)
            return rc;
        gt_json_set(b, "schema", schema);
    }
    return CLI_OK;
}

/* The value from --value, --value-file or standard input (one of them; "--value -" is
 * standard input). */
static int secret_body(cli *c, const cli_args *a, cJSON *b, bool required)
{
    const char *v = cli_flag_str(a, "value");
    const char *file = cli_flag_str(a, "value-file");
    set_str(b, "description", cli_flag_str(a, "description"));
    if (v && file)
        return usage_error(c, "--value and --value-file exclude each other");
    bool from_stdin = v && strcmp(v, "-") == 0;
    if (from_stdin) {
        v = NULL;
        required = true;
    } else if (v) {
        /* Still accepted (scripts use it), but the value is already exposed by now. */
        fprintf(c->err, "gantry: warning: --value puts the secret on the command line, where "
                        "other users of this machine can read it (ps, /proc/<pid>/cmdline) and "
                        "the shell keeps it in its history; use --value-file FILE, or pipe it "
                        "in (--value - or no --value)\n");
    }
    char *text = NULL;
    size_t len = 0;
    gt_error e = {0};
    if (file) {
        if (gt_read_file(file, 1 << 20, &text, &len, &e) != GT_OK)
            return usage_error(c, "--value-file: %s", e.message);
    } else if (v) {
        text = gt_xstrdup(v);
        len = strlen(text);
    } else if (required || !isatty(STDIN_FILENO)) {
        if (isatty(STDIN_FILENO))
            fprintf(c->err, "Enter the secret value, then Ctrl-D: ");
        if (gt_read_file("/dev/stdin", 1 << 20, &text, &len, &e) != GT_OK)
            return usage_error(c, "reading the value from standard input: %s", e.message);
        if (len == 0 && required) {
            free(text);
            return usage_error(c, "no secret value: give --value, --value-file or standard input");
        }
    }
    if (text) {
        if (memchr(text, '\0', len)) {
            gt_wipe(text, len);
            free(text);
            return usage_error(c, "the secret value contains a NUL byte");
        }
        /* one trailing newline from a file or echo is not part of the value */
        if (len && text[len - 1] == '\n' && (file || !v))
            text[--len] = '\0';
        if (len > 0 || required)
            gt_json_set_str(b, "value", text);
        gt_wipe(text, len);
        free(text);
    }
    return CLI_OK;
}

static int create_update(cli *c, const cli_cmd *cmd, const cli_args *a, bool create)
{
    const char *plural = cmd->resource;
    size_t np = 0;
    const char *type = NULL;
    if (strcmp(plural, "services") == 0 && create)
        type = a->pos.v[np++];
    const char *name = a->pos.v[np];
    int rc = check_name(c, name);
    if (rc != CLI_OK)
        return rc;
    cJSON *b = cJSON_CreateObject(), *out = NULL;
    if (create)
        gt_json_set_str(b, "name", name);
    if (type)
        gt_json_set_str(b, "type", type);
    if (strcmp(plural, "repositories") == 0)
        rc = repo_body(c, a, b);
    else if (strcmp(plural, "services") == 0)
        rc = service_body(c, a, b);
    else if (strcmp(plural, "decorators") == 0)
        rc = decorator_body(c, a, b);
    else
        rc = secret_body(c, a, b, create);
    if (rc == CLI_OK && !create && cJSON_GetArraySize(b) == 0)
        rc = usage_error(c, "nothing to update: give at least one flag (see --help)");
    if (rc == CLI_OK) {
        char *path = resource_path(plural, create ? NULL : name);
        rc = cli_request(c, create ? "POST" : "PATCH", path, NULL, b, &out);
        free(path);
    }
    /* the request may hold a secret value */
    cJSON *v = cJSON_GetObjectItemCaseSensitive(b, "value");
    if (cJSON_IsString(v))
        gt_wipe(v->valuestring, strlen(v->valuestring));
    cJSON_Delete(b);
    if (rc == CLI_OK) {
        if (c->format == CLI_TABLE)
            fprintf(c->out, "%s %s %s\n", cmd->kind, name, create ? "created" : "updated");
        else
            cli_print_doc(c, out);
    }
    cJSON_Delete(out);
    return rc;
}

static int cmd_create(cli *c, const cli_cmd *cmd, const cli_args *a)
{
    return create_update(c, cmd, a, true);
}

static int cmd_update(cli *c, const cli_cmd *cmd, const cli_args *a)
{
    return create_update(c, cmd, a, false);
}

/* ---------- get / describe / delete ---------- */

typedef struct table_spec {
    const char *plural;
    const char *const *cols;
    const char *const *heads;
} table_spec;

static const char *const repo_cols[] = {"name", "url", "reference", "private_key_name", "description", NULL};
static const char *const repo_heads[] = {"NAME", "URL", "REFERENCE", "KEY", "DESCRIPTION", NULL};
static const char *const svc_cols[] = {"name", "type", "repository", "filename", "playbooks", "decorator", "description", NULL};
static const char *const svc_heads[] = {"NAME", "TYPE", "REPOSITORY", "FILE", "PLAYBOOKS", "DECORATOR", "DESCRIPTION", NULL};
static const char *const dec_cols[] = {"name", "description", "updated_at", NULL};
static const char *const dec_heads[] = {"NAME", "DESCRIPTION", "UPDATED", NULL};
static const char *const sec_cols[] = {"name", "description", "key_id", "updated_at", NULL};
static const char *const sec_heads[] = {"NAME", "DESCRIPTION", "KEY ID", "UPDATED", NULL};
static const char *const ex_cols[] = {"id", "service", "state", "return_code", "created_at", "duration_ms", NULL};
static const char *const ex_heads[] = {"ID", "SERVICE", "STATE", "RC", "CREATED", "DURATION(ms)", NULL};

static const char *const user_cols[] = {"name", "role", "must_change_password", "created_at", NULL};
static const char *const user_heads[] = {"NAME", "ROLE", "MUST CHANGE PASSWORD", "CREATED", NULL};

static const char *const runner_cols[] = {"id", "status", "pools", "capacity", "in_flight", "last_heartbeat", NULL};
static const char *const runner_heads[] = {"ID", "STATUS", "POOLS", "CAPACITY", "IN FLIGHT", "LAST HEARTBEAT", NULL};

static const table_spec tables[] = {
    {"runners", runner_cols, runner_heads},
    {"users", user_cols, user_heads},
    {"repositories", repo_cols, repo_heads}, {"services", svc_cols, svc_heads},
    {"decorators", dec_cols, dec_heads},     {"secrets", sec_cols, sec_heads},
    {"executions", ex_cols, ex_heads},
};

static void query_add(gt_buf *q, const char *key, const char *value)
{
    if (value == NULL)
        return;
    gt_buf_printf(q, "%s%s=", q->len ? "&" : "", key);
    for (const unsigned char *p = (const unsigned char *)value; *p; p++) {
        if ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
            strchr("-_.~", *p))
            gt_buf_append(q, p, 1);
        else
            gt_buf_printf(q, "%%%02X", *p);
    }
}

static int cmd_list(cli *c, const cli_cmd *cmd, const cli_args *a)
{
    const char *plural = cmd->resource;
    gt_buf q = {0};
    query_add(&q, "limit", cli_flag_str(a, "limit"));
    query_add(&q, "cursor", cli_flag_str(a, "cursor"));
    if (strcmp(plural, "executions") == 0) {
        query_add(&q, "service", cli_flag_str(a, "service"));
        query_add(&q, "state", cli_flag_str(a, "state"));
        if (!cli_flag_bool(a, "oldest-first"))
            query_add(&q, "order", "desc");
    }
    char *path = resource_path(plural, NULL);
    cJSON *out = NULL;
    int rc = cli_request(c, "GET", path, q.len ? q.data : NULL, NULL, &out);
    free(path);
    gt_buf_free(&q);
    if (rc != CLI_OK)
        return rc;
    if (c->format != CLI_TABLE) {
        cli_print_doc(c, out);
    } else {
        for (size_t i = 0; i < sizeof tables / sizeof tables[0]; i++)
            if (strcmp(tables[i].plural, plural) == 0)
                cli_print_table(c->out, cJSON_GetObjectItemCaseSensitive(out, "items"),
                                tables[i].cols, tables[i].heads);
        const cJSON *next = cJSON_GetObjectItemCaseSensitive(out, "next_cursor");
        if (cJSON_IsString(next))
            fprintf(c->out, "(more: --cursor %s)\n", next->valuestring);
    }
    cJSON_Delete(out);
    return CLI_OK;
}


/* The human view of an execution: its output, then a summary. */
static void print_execution(cli *c, const cJSON *ex)
{
    const char *keys[] = {"stdout", "stderr"};
    for (int i = 0; i < 2; i++) {
        const cJSON *s = cJSON_GetObjectItemCaseSensitive(ex, keys[i]);
        char tk[32];
        snprintf(tk, sizeof tk, "%s_truncated", keys[i]);
        bool trunc = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(ex, tk));
        const char *text = cJSON_IsString(s) ? s->valuestring : "";
        fprintf(c->out, "%s:%s\n%s", keys[i], trunc ? " (truncated)" : "", text);
        if (text[0] && text[strlen(text) - 1] != '\n')
            fputc('\n', c->out);
    }
    static const char *const fields[][2] = {
        {"id", "execution"}, {"service", "service"}, {"state", "state"},
        {"return_code", "return code"}, {"signal", "signal"}, {"error", "error"},
        {"commit", "commit"}, {"started_at", "start time"}, {"finished_at", "end time"},
    };
    fputc('\n', c->out);
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(ex, fields[i][0]);
        if (cJSON_IsString(v))
            fprintf(c->out, "%s: %s\n", fields[i][1], v->valuestring);
        else if (cJSON_IsNumber(v))
            fprintf(c->out, "%s: %d\n", fields[i][1], v->valueint);
    }
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(ex, "duration_ms");
    if (cJSON_IsNumber(d))
        fprintf(c->out, "elapsed time: %.3f seconds\n", d->valuedouble / 1000.0);
}

static int cmd_describe(cli *c, const cli_cmd *cmd, const cli_args *a)
{
    const char *plural = cmd->resource;
    const char *name = a->pos.v[0];
    bool exec = strcmp(plural, "executions") == 0;
    int rc = exec ? CLI_OK : check_name(c, name);
    if (rc != CLI_OK)
        return rc;
    if (exec && !gt_name_valid(name))
        return usage_error(c, "\"%s\" is not an execution id", name);
    char *path = resource_path(plural, name);
    cJSON *out = NULL;
    rc = cli_request(c, "GET", path, NULL, NULL, &out);
    free(path);
    if (rc != CLI_OK)
        return rc;
    if (exec && c->format == CLI_TABLE)
        print_execution(c, out);
    else
        cli_print_doc(c, out);
    cJSON_Delete(out);
    return CLI_OK;
}


static int cmd_delete(cli *c, const cli_cmd *cmd, const cli_args *a)
{
    const char *plural = cmd->resource;
    const char *name = a->pos.v[0];
    int rc = check_name(c, name);
    if (rc != CLI_OK)
        return rc;
    char *path = resource_path(plural, name);
    cJSON *out = NULL;
    rc = cli_request(c, "DELETE", path, NULL, NULL, &out);
    free(path);
    if (rc == CLI_OK) {
        if (c->format == CLI_TABLE)
            fprintf(c->out, "%s %s deleted\n", cmd->kind, name);
        else
            cli_print_doc(c, out);
    }
    cJSON_Delete(out);
    return rc;
}


/* ---------- run ---------- */

/* A server answers a run at once (202, accepted): follow it to its end. */
static int wait_execution(cli *c, cJSON **ex)
{
    int64_t delay = 50;
    for (;;) {
        const cJSON *st = cJSON_GetObjectItemCaseSensitive(*ex, "state");
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(*ex, "id");
        if (!cJSON_IsString(st) || !cJSON_IsString(id) || gt_execution_state_terminal(st->valuestring))
            return CLI_OK;
        if (c->interrupted && *c->interrupted) {
            fprintf(c->err, "gantry: execution %s goes on on the server; follow it with: gantry "
                            "describe execution %s\n", id->valuestring, id->valuestring);
            return CLI_FAILED;
        }
        usleep((useconds_t)delay * 1000);
        delay = delay < 1000 ? delay * 2 : 1000;
        char *path = gt_xasprintf("/api/v1/executions/%s", id->valuestring);
        cJSON *next = NULL;
        int rc = cli_request(c, "GET", path, NULL, NULL, &next);
        free(path);
        if (rc != CLI_OK)
            return rc;
        cJSON_Delete(*ex);
        *ex = next;
    }
}

static int cmd_run_service(cli *c, const cli_cmd *cmd, const cli_args *a)
{
    (void)cmd;
    const char *name = a->pos.v[0];
    int rc = check_name(c, name);
    if (rc != CLI_OK)
        return rc;
    cJSON *b = cJSON_CreateObject(), *inputs = NULL, *out = NULL;
    const char *in = cli_flag_str(a, "inputs");
    if (in) {
        if ((rc = json_arg(c, "inputs", in, &inputs)) != CLI_OK)
            goto done;
        if (!cJSON_IsObject(inputs)) {
            rc = usage_error(c, "--inputs: expected a JSON object");
            goto done;
        }
    } else {
        inputs = cJSON_CreateObject();
    }
    if ((rc = pairs_arg(c, "set", cli_flag_list(a, "set"), inputs)) != CLI_OK)
        goto done;
    gt_json_set(b, "inputs", inputs);
    inputs = NULL;
    const gt_strv *sec = cli_flag_list(a, "set-secret");
    if (sec && sec->n) {
        cJSON *l = cJSON_AddArrayToObject(b, "secrets");
        for (size_t i = 0; i < sec->n; i++)
            if ((rc = binding_arg(c, "set-secret", sec->v[i], l)) != CLI_OK)
                goto done;
    }
    char *path = gt_xasprintf("/api/v1/services/%s/run", name);
    /* one key per invocation: if the answer is lost, the retry names the same run */
    char *key = gt_id_new();
    c->idempotency_key = key;
    rc = cli_request(c, "POST", path, NULL, b, &out);
    c->idempotency_key = NULL;
    free(key);
    free(path);
    if (rc != CLI_OK)
        goto done;
    if ((rc = wait_execution(c, &out)) != CLI_OK)
        goto done;
    if (c->format == CLI_TABLE)
        print_execution(c, out);
    else
        cli_print_doc(c, out);
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(out, "state");
    rc = (cJSON_IsString(st) && strcmp(st->valuestring, "succeeded") == 0) ? CLI_OK : CLI_FAILED;
done:
    cJSON_Delete(inputs);
    cJSON_Delete(out);
    cJSON_Delete(b);
    return rc;
}

static int cmd_cancel(cli *c, const cli_cmd *cmd, const cli_args *a)
{
    (void)cmd;
    const char *id = a->pos.v[0];
    if (!gt_name_valid(id))
        return usage_error(c, "\"%s\" is not an execution id", id);
    char *path = gt_xasprintf("/api/v1/executions/%s/cancel", id);
    cJSON *out = NULL;
    int rc = cli_request(c, "POST", path, NULL, NULL, &out);
    free(path);
    if (rc != CLI_OK)
        return rc;
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(out, "state");
    if (c->format != CLI_TABLE)
        cli_print_doc(c, out);
    else if (cJSON_IsString(st) && strcmp(st->valuestring, "canceled") == 0)
        fprintf(c->out, "execution %s canceled\n", id);
    else
        fprintf(c->out, "execution %s: cancel requested; its process group is being stopped\n", id);
    cJSON_Delete(out);
    return CLI_OK;
}

static void print_summary(cli *c, const cJSON *items, const char *title)
{
    static const char *const cols[] = {"id", "service", "state", "runner", "attempt", "created_at", NULL};
    static const char *const heads[] = {"ID", "SERVICE", "STATE", "RUNNER", "ATTEMPT", "CREATED", NULL};
    fprintf(c->out, "%s (%d):\n", title, cJSON_GetArraySize(items));
    if (cJSON_GetArraySize(items) > 0)
        cli_print_table(c->out, items, cols, heads);
}

static int cmd_inspect(cli *c, const cli_cmd *cmd, const cli_args *a)
{
    (void)cmd;
    const char *what = a->pos.v[0];
    bool health = strcmp(what, "health") == 0;
    if (!health && strcmp(what, "activity") != 0)
        return usage_error(c, "inspect cluster: \"%s\" is not one of health, activity", what);
    cJSON *out = NULL;
    int rc = cli_request(c, "GET", health ? "/api/v1/cluster/health" : "/api/v1/cluster/activity",
                         NULL, NULL, &out);
    if (rc != CLI_OK)
        return rc;
    if (c->format != CLI_TABLE) {
        cli_print_doc(c, out);
    } else if (health) {
        const cJSON *st = cJSON_GetObjectItemCaseSensitive(out, "status");
        const cJSON *cap = cJSON_GetObjectItemCaseSensitive(out, "capacity");
        const cJSON *inf = cJSON_GetObjectItemCaseSensitive(out, "in_flight");
        fprintf(c->out, "status: %s\ncapacity: %d, in flight: %d\nexecutions waiting: ",
                cJSON_IsString(st) ? st->valuestring : "?", cap ? cap->valueint : 0,
                inf ? inf->valueint : 0);
        const cJSON *e;
        bool first = true;
        cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(out, "executions")) {
            fprintf(c->out, "%s%s %d", first ? "" : ", ", e->string, e->valueint);
            first = false;
        }
        fputs("\n", c->out);
        const cJSON *deps = cJSON_GetObjectItemCaseSensitive(out, "dependencies");
        if (cJSON_IsObject(deps)) {   /* a controller adds them; local mode has none */
            fputs("dependencies:", c->out);
            cJSON_ArrayForEach(e, deps) {
                const cJSON *dst = cJSON_GetObjectItemCaseSensitive(e, "state");
                fprintf(c->out, " %s %s", e->string, cJSON_IsString(dst) ? dst->valuestring : "?");
            }
            fputs("\n", c->out);
        }
        static const char *const member_cols[] = {"node", "status", "epoch", "address",
                                                  "renewed_at", NULL};
        static const char *const member_heads[] = {"NODE", "STATUS", "EPOCH", "ADDRESS",
                                                   "LAST RENEWAL", NULL};
        static const char *const parts[] = {"controllers", "schedulers", NULL};
        for (size_t i = 0; parts[i]; i++) {
            const cJSON *l = cJSON_GetObjectItemCaseSensitive(out, parts[i]);
            if (cJSON_GetArraySize(l) > 0) {
                fprintf(c->out, "\n%s:\n", parts[i]);
                cli_print_table(c->out, l, member_cols, member_heads);
            }
        }
        fputs("\nrunners:\n", c->out);
        cli_print_table(c->out, cJSON_GetObjectItemCaseSensitive(out, "items"), runner_cols,
                        runner_heads);
    } else {
        print_summary(c, cJSON_GetObjectItemCaseSensitive(out, "running"), "running");
        print_summary(c, cJSON_GetObjectItemCaseSensitive(out, "queued"), "queued");
        print_summary(c, cJSON_GetObjectItemCaseSensitive(out, "recent"), "recently ended");
    }
    cJSON_Delete(out);
    return CLI_OK;
}

/* ---------- version, completion ---------- */

static int cmd_version(cli *c, const cli_cmd *cmd, const cli_args *a)
{
    (void)cmd;
    if (c->format == CLI_TABLE || cli_flag_bool(a, "show-config"))
        fprintf(c->out, "gantry %s\n", GANTRY_VERSION);
    else {
        cJSON *v = cJSON_CreateObject();
        gt_json_set_str(v, "version", GANTRY_VERSION);
        cli_print_doc(c, v);
        cJSON_Delete(v);
    }
    if (cli_flag_bool(a, "show-config") && c->show_config)
        c->show_config(c);
    return CLI_OK;
}

static int cmd_completion(cli *c, const cli_cmd *cmd, const cli_args *a)
{
    (void)cmd;
    return cli_completion(c, a->pos.v[0]);
}

static int cmd_help(cli *c, const cli_cmd *cmd, const cli_args *a);

/* ---------- the table ---------- */

const cli_cmd cli_commands[] = {
    {"create", "repository", "NAME", 1, 1, repo_flags, cmd_create, "repositories", "Register a Git repository"},
    {"create", "service", "TYPE NAME", 2, 2, service_flags, cmd_create, "services", "Create a service (python-script, ansible-playbook or executable)"},
    {"create", "decorator", "NAME", 1, 1, decorator_flags, cmd_create, "decorators", "Create a decorator: a JSON Schema for a service's inputs"},
    {"create", "secret", "NAME", 1, 1, secret_flags, cmd_create, "secrets", "Create an encrypted secret (value from --value, --value-file or stdin)"},
    {"get", "repositories", NULL, 0, 0, list_flags, cmd_list, "repositories", "List repositories"},
    {"get", "services", NULL, 0, 0, list_flags, cmd_list, "services", "List services"},
    {"get", "decorators", NULL, 0, 0, list_flags, cmd_list, "decorators", "List decorators"},
    {"get", "secrets", NULL, 0, 0, list_flags, cmd_list, "secrets", "List secrets (names and metadata, never values)"},
    {"get", "executions", NULL, 0, 0, exec_list_flags, cmd_list, "executions", "List executions, newest first"},
    {"describe", "repository", "NAME", 1, 1, no_flags, cmd_describe, "repositories", "Show a repository"},
    {"describe", "service", "NAME", 1, 1, no_flags, cmd_describe, "services", "Show a service"},
    {"describe", "decorator", "NAME", 1, 1, no_flags, cmd_describe, "decorators", "Show a decorator and its schema"},
    {"describe", "secret", "NAME", 1, 1, no_flags, cmd_describe, "secrets", "Show a secret's metadata (never its value)"},
    {"describe", "execution", "ID", 1, 1, no_flags, cmd_describe, "executions", "Show an execution with its output"},
    {"update", "repository", "NAME", 1, 1, repo_update_flags, cmd_update, "repositories", "Change a repository"},
    {"update", "service", "NAME", 1, 1, service_update_flags, cmd_update, "services", "Change a service"},
    {"update", "decorator", "NAME", 1, 1, decorator_update_flags, cmd_update, "decorators", "Change a decorator"},
    {"update", "secret", "NAME", 1, 1, secret_flags, cmd_update, "secrets", "Change a secret's value or description"},
    {"delete", "repository", "NAME", 1, 1, no_flags, cmd_delete, "repositories", "Delete a repository no service uses"},
    {"delete", "service", "NAME", 1, 1, no_flags, cmd_delete, "services", "Delete a service (its executions stay)"},
    {"delete", "decorator", "NAME", 1, 1, no_flags, cmd_delete, "decorators", "Delete a decorator no service uses"},
    {"delete", "secret", "NAME", 1, 1, no_flags, cmd_delete, "secrets", "Delete a secret nothing uses"},
    {"run", "service", "NAME", 1, 1, run_flags, cmd_run_service, "services", "Run a service and print its output"},
    {"cancel", "execution", "ID", 1, 1, no_flags, cmd_cancel, "executions", "Cancel an execution (its process group is stopped)"},
    {"get", "runners", NULL, 0, 0, no_flags, cmd_list, "runners", "List runners: status, pools, capacity, in-flight work, last heartbeat"},
    {"inspect", "cluster", "health|activity", 1, 1, no_flags, cmd_inspect, NULL, "Cluster health (runners, capacity) or activity (running, queued, recent)"},
    {"login", NULL, "[USER]", 0, 1, login_flags, cli_cmd_login, NULL, "Log in to the server (client mode); USER defaults to admin"},
    {"logout", NULL, NULL, 0, 0, no_flags, cli_cmd_logout, NULL, "Log out: the token is revoked on every controller"},
    {"get", "users", NULL, 0, 0, no_flags, cmd_list, "users", "List users (client mode, admin)"},
    {"create", "user", "NAME", 1, 1, user_flags, cli_cmd_create_user, "users", "Create a user (client mode, admin)"},
    {"delete", "user", "NAME", 1, 1, no_flags, cmd_delete, "users", "Delete a user (client mode, admin)"},
    {"create", "apikey", NULL, 0, 0, apikey_flags, cli_cmd_create_apikey, "apikeys", "Create an API key for yourself (client mode)"},
    {"version", NULL, NULL, 0, 0, version_flags, cmd_version, NULL, "Print the version (and the configuration)"},
    {"completion", NULL, "bash|zsh|fish", 1, 1, no_flags, cmd_completion, NULL, "Print a shell completion script"},
    {"help", NULL, "[COMMAND [KIND]]", 0, 2, no_flags, cmd_help, NULL, "Show help"},
    {NULL, NULL, NULL, 0, 0, NULL, NULL, NULL, NULL},
};

/* Kind words users may type: singular or plural, for any verb. */
static bool kind_matches(const char *cmd_kind, const char *word)
{
    if (strcmp(cmd_kind, word) == 0)
        return true;
    const gt_model_kind *k = gt_model_find(cmd_kind);
    if (k)
        return strcmp(k->singular, word) == 0 || strcmp(k->plural, word) == 0;
    static const char *const pairs[][2] = {{"execution", "executions"}, {"user", "users"},
                                           {"apikey", "apikeys"}, {"runner", "runners"}};
    for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++)
        if (strcmp(cmd_kind, pairs[i][0]) == 0 || strcmp(cmd_kind, pairs[i][1]) == 0)
            return strcmp(word, pairs[i][0]) == 0 || strcmp(word, pairs[i][1]) == 0;
    return false;
}

static const cli_cmd *find_cmd(const char *verb, const char *kind, bool *verb_known)
{
    *verb_known = false;
    for (const cli_cmd *cmd = cli_commands; cmd->verb; cmd++) {
        if (strcmp(cmd->verb, verb) != 0)
            continue;
        *verb_known = true;
        if (cmd->kind == NULL || (kind && kind_matches(cmd->kind, kind)))
            return cmd;
    }
    return NULL;
}

static void list_kinds(cli *c, const char *verb)
{
    fprintf(c->err, "gantry %s: expected one of:", verb);
    for (const cli_cmd *cmd = cli_commands; cmd->verb; cmd++)
        if (strcmp(cmd->verb, verb) == 0 && cmd->kind)
            fprintf(c->err, " %s", cmd->kind);
    fputc('\n', c->err);
}

static int cmd_help(cli *c, const cli_cmd *self, const cli_args *a)
{
    (void)self;
    if (a->pos.n == 0) {
        cli_print_usage(c);
        return CLI_OK;
    }
    bool known;
    const cli_cmd *cmd = find_cmd(a->pos.v[0], a->pos.n > 1 ? a->pos.v[1] : NULL, &known);
    if (cmd == NULL) {
        if (!known)
            return usage_error(c, "unknown command \"%s\"%s", a->pos.v[0], "");
        list_kinds(c, a->pos.v[0]);
        return CLI_USAGE;
    }
    cli_print_help(c, cmd);
    return CLI_OK;
}

static bool required_given(cli *c, const cli_cmd *cmd, const cli_args *a)
{
    for (const cli_flag *f = cmd->flags; f && f->name; f++) {
        if (f->required && cli_flag_str(a, f->name) == NULL) {
            fprintf(c->err, "gantry %s %s: --%s is required (%s)\n", cmd->verb, cmd->kind, f->name,
                    f->help);
            return false;
        }
    }
    return true;
}

int cli_dispatch(cli *c, int argc, char **argv)
{
    if (argc == 0) {
        cli_print_usage(c);
        return CLI_USAGE;
    }
    bool known;
    const char *kind = argc > 1 ? argv[1] : NULL;
    const cli_cmd *cmd = find_cmd(argv[0], kind, &known);
    if (cmd == NULL) {
        if (!known) {
            fprintf(c->err, "gantry: unknown command \"%s\" (see gantry --help)\n", argv[0]);
            return CLI_USAGE;
        }
        if (kind && (strcmp(kind, "--help") == 0 || strcmp(kind, "-h") == 0)) {
            for (const cli_cmd *x = cli_commands; x->verb; x++)
                if (strcmp(x->verb, argv[0]) == 0)
                    fprintf(c->out, "  gantry %s %s %s\n      %s\n", x->verb, x->kind,
                            x->usage ? x->usage : "", x->summary);
            return CLI_OK;
        }
        if (kind)
            fprintf(c->err, "gantry %s: unknown kind \"%s\"\n", argv[0], kind);
        list_kinds(c, argv[0]);
        return CLI_USAGE;
    }
    int skip = cmd->kind ? 2 : 1;
    for (int i = skip; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0)
            break;
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            cli_print_help(c, cmd);
            return CLI_OK;
        }
    }
    cli_args a = {0};
    int rc;
    if (!cli_parse(c, cmd, argc - skip, argv + skip, &a)) {
        rc = CLI_USAGE;
    } else if ((int)a.pos.n < cmd->min_args || (int)a.pos.n > cmd->max_args) {
        fprintf(c->err, "gantry %s%s%s: expected %s%s (got %zu argument%s); see --help\n",
                cmd->verb, cmd->kind ? " " : "", cmd->kind ? cmd->kind : "",
                cmd->usage ? cmd->usage : "no arguments", "", a.pos.n, a.pos.n == 1 ? "" : "s");
        rc = CLI_USAGE;
    } else if (!required_given(c, cmd, &a)) {
        rc = CLI_USAGE;
    } else {
        /* what each command needs before it runs: help and completion nothing, version
         * the configuration only with --show-config, the rest the backend too */
        bool is_version = strcmp(cmd->verb, "version") == 0;
        bool plain = strcmp(cmd->verb, "help") == 0 || strcmp(cmd->verb, "completion") == 0 ||
                     (is_version && !cli_flag_bool(&a, "show-config"));
        rc = plain ? CLI_OK : c->prepare(c, !is_version);
        if (rc == CLI_OK)
            rc = cmd->fn(c, cmd, &a);
    }
    cli_args_free(&a);
    return rc;
}
