/* gantry db export / db import: service files, through the same API requests as
 * `gantry create` and `gantry get` (so the same checks and permissions apply). */
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "dbfile.h"
#include "json.h"

static void call(void *arg, const char *method, const char *path, const char *query,
                 const cJSON *body, gt_api_response *resp)
{
    cli *c = arg;
    c->call(c, method, path, query, body, resp);
}

static int exit_for(gt_err code)
{
    return code == GT_EINVAL || code == GT_EPERM || code == GT_ECONFLICT || code == GT_ENOTFOUND
               ? CLI_USAGE
               : CLI_ERROR;
}

static const char *plural_of(size_t n, const char *one, const char *many)
{
    return n == 1 ? one : many;
}

int cli_cmd_db_export(cli *c, const cli_cmd *cmd, const cli_args *a)
{
    (void)cmd;
    const char *file = cli_flag_str(a, "file");
    char *text = NULL;
    size_t n[3] = {0};
    gt_error e = {0};
    gt_err rc = gt_dbfile_export(call, c, c->format == CLI_JSON, &text, n, &e);
    if (rc != GT_OK) {
        fprintf(c->err, "gantry: error: export: %s\n", e.message);
        return exit_for(rc);
    }
    int out = CLI_OK;
    if (file == NULL || strcmp(file, "-") == 0) {
        fputs(text, c->out);
    } else if (gt_write_file_atomic(file, text, strlen(text), 0644, &e) != GT_OK) {
        fprintf(c->err, "gantry: error: --file: %s\n", e.message);
        out = CLI_ERROR;
    } else {
        fprintf(c->err, "exported %zu %s, %zu %s and %zu %s to %s\n", n[0],
                plural_of(n[0], "decorator", "decorators"), n[1],
                plural_of(n[1], "repository", "repositories"), n[2],
                plural_of(n[2], "service", "services"), file);
    }
    free(text);
    return out;
}

static const char *check_word(gt_dbfile_action a)
{
    switch (a) {
    case GT_DBFILE_ADD: return "add";
    case GT_DBFILE_CONFLICT: return "conflict";
    case GT_DBFILE_REPLACE: return "replacement";
    default: return "unchanged";
    }
}

static const char *done_word(gt_dbfile_action a)
{
    switch (a) {
    case GT_DBFILE_ADD: return "added";
    case GT_DBFILE_REPLACE: return "replaced";
    default: return "unchanged";
    }
}

static void print_items(cli *c, const char *file, gt_dbfile_item *items, size_t n, bool done)
{
    cJSON *out = cJSON_CreateObject(), *list = cJSON_CreateArray();
    gt_json_set_str(out, "file", file);
    for (size_t i = 0; i < n; i++) {
        cJSON *o = cJSON_CreateObject();
        gt_json_set_str(o, "kind", items[i].kind->singular);
        gt_json_set_str(o, "name", items[i].name);
        gt_json_set_str(o, "action", done ? done_word(items[i].action) : check_word(items[i].action));
        cJSON_AddItemToArray(list, o);
    }
    gt_json_set(out, "items", list);
    if (c->format != CLI_TABLE) {
        cli_print_doc(c, out);
    } else if (n == 0) {
        fprintf(c->out, "%s: no resources\n", file);
    } else {
        static const char *const cols[] = {"kind", "name", "action", NULL};
        static const char *const heads[] = {"KIND", "NAME", "ACTION", NULL};
        cli_print_table(c->out, list, cols, heads);
    }
    cJSON_Delete(out);
}

int cli_cmd_db_import(cli *c, const cli_cmd *cmd, const cli_args *a)
{
    (void)cmd;
    const char *file = a->pos.v[0];
    bool validate = cli_flag_bool(a, "validate"), check = cli_flag_bool(a, "check");
    bool force = cli_flag_bool(a, "force");
    char *text = NULL;
    size_t len = 0;
    gt_strv errors = {0};
    gt_error e = {0};
    gt_dbfile *f = NULL;
    int rc = CLI_OK;
    gt_err r = gt_read_file(file, GT_DBFILE_MAX_BYTES, &text, &len, &e);
    if (r == GT_EINVAL) {
        fprintf(c->err, "gantry: error: %s: larger than %u MiB, the limit for a service file\n",
                file, GT_DBFILE_MAX_BYTES >> 20);
        return CLI_USAGE;
    }
    if (r != GT_OK) {
        fprintf(c->err, "gantry: error: %s\n", e.message);
        return r == GT_ENOTFOUND ? CLI_USAGE : CLI_ERROR;
    }
    /* everything is checked before anything is written */
    if ((f = gt_dbfile_parse(file, text, len, &errors)) == NULL ||
        (r = gt_dbfile_plan(f, call, c, force, &errors, &e)) == GT_EINVAL) {
        for (size_t i = 0; i < errors.n; i++)
            fprintf(c->err, "gantry: error: %s\n", errors.v[i]);
        fprintf(c->err, "gantry: %s: not imported; nothing was written\n", file);
        rc = CLI_USAGE;
        goto done;
    }
    if (r != GT_OK) {
        fprintf(c->err, "gantry: error: %s: %s; nothing was written\n", file, e.message);
        rc = exit_for(r);
        goto done;
    }
    gt_dbfile_item *items = NULL;
    size_t n = gt_dbfile_items(f, &items);
    if (check) {
        print_items(c, file, items, n, false);
        goto done;
    }
    if (validate) {
        size_t k[3] = {0};
        for (size_t i = 0; i < n; i++)
            k[items[i].kind == &gt_model_decorator ? 0 : items[i].kind == &gt_model_repository ? 1 : 2]++;
        if (c->format == CLI_TABLE)
            fprintf(c->out, "%s: valid: %zu %s, %zu %s, %zu %s\n", file, k[0],
                    plural_of(k[0], "decorator", "decorators"), k[1],
                    plural_of(k[1], "repository", "repositories"), k[2],
                    plural_of(k[2], "service", "services"));
        else {
            cJSON *o = cJSON_CreateObject();
            gt_json_set_str(o, "file", file);
            gt_json_set_bool(o, "valid", true);
            gt_json_set_num(o, "decorators", (double)k[0]);
            gt_json_set_num(o, "repositories", (double)k[1]);
            gt_json_set_num(o, "services", (double)k[2]);
            cli_print_doc(c, o);
            cJSON_Delete(o);
        }
        goto done;
    }
    size_t written = 0;
    if ((r = gt_dbfile_apply(f, call, c, &written, &e)) != GT_OK) {
        if (r == GT_ECONFLICT && written == 0)
            fprintf(c->err, "gantry: error: %s: %s\n", file, e.message);
        else if (written == 0)
            fprintf(c->err, "gantry: error: %s: %s; nothing was written\n", file, e.message);
        else
            fprintf(c->err, "gantry: error: %s: %s; %zu resource%s before it %s written: run the "
                            "same import again to finish (what is already there is left "
                            "unchanged)\n", file, e.message, written, written == 1 ? "" : "s",
                    written == 1 ? "was" : "were");
        rc = exit_for(r);
        goto done;
    }
    print_items(c, file, items, n, true);
done:
    gt_dbfile_free(&f);
    gt_strv_free(&errors);
    free(text);
    return rc;
}
