#include <stdlib.h>
#include <string.h>

#include "cli.h"

static int flag_index(const cli_flag *flags, const char *name, size_t n)
{
    for (int i = 0; flags && flags[i].name; i++)
        if (strlen(flags[i].name) == n && strncmp(flags[i].name, name, n) == 0)
            return i;
    return -1;
}

static size_t flag_count(const cli_flag *flags)
{
    size_t n = 0;
    while (flags && flags[n].name)
        n++;
    return n;
}

bool cli_global(cli *c, const char *name, const char *value)
{
    if (strcmp(name, "config") == 0) {
        c->config_path = value;
        return true;
    }
    if (strcmp(name, "output") == 0) {
        if (strcmp(value, "table") == 0)
            c->format = CLI_TABLE;
        else if (strcmp(value, "json") == 0)
            c->format = CLI_JSON;
        else if (strcmp(value, "yaml") == 0)
            c->format = CLI_YAML;
        else {
            fprintf(c->err, "gantry: --output: \"%s\" is not one of table, json, yaml\n", value);
            return false;
        }
        return true;
    }
    fprintf(c->err, "gantry: unknown flag --%s\n", name);
    return false;
}

bool cli_parse(cli *c, const cli_cmd *cmd, int argc, char **argv, cli_args *a)
{
    size_t nf = flag_count(cmd->flags);
    a->flags = cmd->flags;
    a->values = gt_xcalloc(nf + 1, sizeof *a->values);
    bool only_pos = false;
    for (int i = 0; i < argc; i++) {
        const char *w = argv[i];
        if (only_pos || w[0] != '-' || w[1] == '\0') {
            gt_strv_push(&a->pos, w);
            continue;
        }
        if (strcmp(w, "--") == 0) {
            only_pos = true;
            continue;
        }
        if (w[1] == 'o') { /* -o FORMAT, -oFORMAT */
            const char *v = w[2] ? w + 2 : (i + 1 < argc ? argv[++i] : NULL);
            if (v == NULL) {
                fprintf(c->err, "gantry: -o needs a value (table, json or yaml)\n");
                return false;
            }
            if (!cli_global(c, "output", v))
                return false;
            continue;
        }
        if (w[1] != '-') {
            fprintf(c->err, "gantry %s%s%s: unknown flag %s (flags are --name)\n", cmd->verb,
                    cmd->kind ? " " : "", cmd->kind ? cmd->kind : "", w);
            return false;
        }
        const char *name = w + 2;
        const char *eq = strchr(name, '=');
        size_t n = eq ? (size_t)(eq - name) : strlen(name);
        int fi = flag_index(cmd->flags, name, n);
        int gi = flag_index(cli_global_flags, name, n);
        if (fi < 0 && gi >= 0 && cli_global_flags[gi].type == FLAG_STR) {
            const char *v = eq ? eq + 1 : (i + 1 < argc ? argv[++i] : NULL);
            if (v == NULL) {
                fprintf(c->err, "gantry: --%.*s needs a value\n", (int)n, name);
                return false;
            }
            if (!cli_global(c, cli_global_flags[gi].name, v))
                return false;
            continue;
        }
        if (fi < 0) {
            fprintf(c->err, "gantry %s%s%s: unknown flag --%.*s (see --help)\n", cmd->verb,
                    cmd->kind ? " " : "", cmd->kind ? cmd->kind : "", (int)n, name);
            return false;
        }
        const cli_flag *f = &cmd->flags[fi];
        const char *value;
        if (f->type == FLAG_BOOL) {
            if (eq && strcmp(eq + 1, "true") != 0 && strcmp(eq + 1, "false") != 0) {
                fprintf(c->err, "gantry: --%s takes no value (or =true/=false)\n", f->name);
                return false;
            }
            value = eq ? eq + 1 : "true";
        } else if (eq) {
            value = eq + 1;
        } else if (i + 1 < argc) {
            value = argv[++i];
        } else {
            fprintf(c->err, "gantry: --%s needs a value (%s)\n", f->name, f->metavar);
            return false;
        }
        if (f->type != FLAG_LIST && a->values[fi].n > 0) {
            fprintf(c->err, "gantry: --%s given twice\n", f->name);
            return false;
        }
        gt_strv_push(&a->values[fi], value);
    }
    return true;
}

void cli_args_free(cli_args *a)
{
    size_t nf = flag_count(a->flags);
    for (size_t i = 0; a->values && i < nf; i++)
        gt_strv_free(&a->values[i]);
    free(a->values);
    gt_strv_free(&a->pos);
    a->values = NULL;
}

const gt_strv *cli_flag_list(const cli_args *a, const char *name)
{
    int i = flag_index(a->flags, name, strlen(name));
    return i < 0 ? NULL : &a->values[i];
}

const char *cli_flag_str(const cli_args *a, const char *name)
{
    const gt_strv *v = cli_flag_list(a, name);
    return (v && v->n) ? v->v[v->n - 1] : NULL;
}

bool cli_flag_bool(const cli_args *a, const char *name)
{
    const char *v = cli_flag_str(a, name);
    return v && strcmp(v, "true") == 0;
}

static void print_flags(FILE *f, const cli_flag *flags)
{
    for (size_t i = 0; flags && flags[i].name; i++) {
        char left[64];
        if (flags[i].type == FLAG_BOOL)
            snprintf(left, sizeof left, "--%s", flags[i].name);
        else
            snprintf(left, sizeof left, "--%s %s", flags[i].name, flags[i].metavar);
        fprintf(f, "  %-34s %s%s%s\n", left, flags[i].help,
                flags[i].type == FLAG_LIST ? " (repeatable)" : "",
                flags[i].required ? " (required)" : "");
    }
}

void cli_print_help(cli *c, const cli_cmd *cmd)
{
    fprintf(c->out, "%s\n\nUsage:\n  gantry %s%s%s%s%s [flags]\n", cmd->summary, cmd->verb,
            cmd->kind ? " " : "", cmd->kind ? cmd->kind : "", cmd->usage ? " " : "",
            cmd->usage ? cmd->usage : "");
    if (cmd->flags && cmd->flags[0].name) {
        fprintf(c->out, "\nFlags:\n");
        print_flags(c->out, cmd->flags);
    }
    fprintf(c->out, "\nGlobal flags:\n");
    print_flags(c->out, cli_global_flags);
}

void cli_print_usage(cli *c)
{
    fprintf(c->out,
            "gantry runs automation (Python scripts, Ansible playbooks, executables) from Git\n"
            "repositories, with validated inputs and encrypted secrets.\n\n"
            "Usage:\n  gantry [global flags] COMMAND [KIND] [ARGS] [flags]\n\nCommands:\n");
    for (const cli_cmd *cmd = cli_commands; cmd->verb; cmd++) {
        char left[80];
        snprintf(left, sizeof left, "%s%s%s%s%s", cmd->verb, cmd->kind ? " " : "",
                 cmd->kind ? cmd->kind : "", cmd->usage ? " " : "", cmd->usage ? cmd->usage : "");
        fprintf(c->out, "  %-36s %s\n", left, cmd->summary);
    }
    fprintf(c->out, "\nGlobal flags:\n");
    print_flags(c->out, cli_global_flags);
    fprintf(c->out, "\nRun \"gantry COMMAND [KIND] --help\" for a command's flags.\n");
}
