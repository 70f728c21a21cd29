#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cli.h"
#include "json.h"

void cli_print_json(FILE *f, const cJSON *v)
{
    char *s = cJSON_Print(v);
    fprintf(f, "%s\n", s ? s : "null");
    free(s);
}

/* A minimal YAML emitter: block mappings and sequences, scalars plain when that is
 * unambiguous and JSON-quoted otherwise (JSON strings are valid YAML). libyaml's
 * emitter would need an event per node for no gain in output. */
static bool plain_ok(const char *s)
{
    static const char *const words[] = {"true", "false", "null", "yes", "no", "on", "off",
                                        "y", "n", "~", NULL};
    if (s[0] == '\0' || isspace((unsigned char)s[0]) || isspace((unsigned char)s[strlen(s) - 1]))
        return false;
    for (size_t i = 0; words[i]; i++)
        if (strcasecmp(s, words[i]) == 0)
            return false;
    char *end;
    strtod(s, &end);
    if (*end == '\0')
        return false; /* would read back as a number */
    if (strchr("-?:,[]{}#&*!|>'\"%@`", s[0]))
        return false;
    for (const char *p = s; *p; p++) {
        unsigned char ch = (unsigned char)*p;
        if (ch < 0x20 || ch == 0x7f || (ch == ':' && (p[1] == ' ' || p[1] == '\0')) ||
            (ch == ' ' && p[1] == '#'))
            return false;
    }
    return true;
}

static void yaml_scalar(FILE *f, const cJSON *v)
{
    if (cJSON_IsString(v)) {
        if (plain_ok(v->valuestring)) {
            fputs(v->valuestring, f);
        } else {
            char *q = cJSON_PrintUnformatted(v);
            fputs(q, f);
            free(q);
        }
    } else {
        char *q = cJSON_PrintUnformatted(v);
        fputs(q ? q : "null", f);
        free(q);
    }
}

static bool yaml_empty_container(const cJSON *v)
{
    return (cJSON_IsObject(v) || cJSON_IsArray(v)) && v->child == NULL;
}

static void yaml_node(FILE *f, const cJSON *v, int indent);

static void yaml_key(FILE *f, const char *k)
{
    cJSON tmp = {.type = cJSON_String, .valuestring = (char *)k};
    yaml_scalar(f, &tmp);
}

static void yaml_node(FILE *f, const cJSON *v, int indent)
{
    const cJSON *it;
    if (cJSON_IsObject(v) && v->child) {
        bool first = true;
        cJSON_ArrayForEach(it, v) {
            if (!first)
                fprintf(f, "%*s", indent, "");
            first = false;
            yaml_key(f, it->string);
            fputc(':', f);
            if ((cJSON_IsObject(it) || cJSON_IsArray(it)) && !yaml_empty_container(it)) {
                fputc('\n', f);
                fprintf(f, "%*s", indent + 2, "");
                yaml_node(f, it, indent + 2);
            } else {
                fputc(' ', f);
                yaml_node(f, it, indent + 2);
            }
        }
    } else if (cJSON_IsArray(v) && v->child) {
        bool first = true;
        cJSON_ArrayForEach(it, v) {
            if (!first)
                fprintf(f, "%*s", indent, "");
            first = false;
            fputs("- ", f);
            yaml_node(f, it, indent + 2);
        }
    } else if (cJSON_IsObject(v)) {
        fputs("{}\n", f);
    } else if (cJSON_IsArray(v)) {
        fputs("[]\n", f);
    } else {
        yaml_scalar(f, v);
        fputc('\n', f);
    }
}

void cli_print_yaml(FILE *f, const cJSON *v)
{
    yaml_node(f, v, 0);
}

static char *cell(const cJSON *item, const char *col)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(item, col);
    if (v == NULL || cJSON_IsNull(v))
        return gt_xstrdup("");
    if (cJSON_IsString(v)) {
        /* one line per row: cut at the first newline */
        const char *nl = strchr(v->valuestring, '\n');
        return nl ? gt_xasprintf("%.*s...", (int)(nl - v->valuestring), v->valuestring)
                  : gt_xstrdup(v->valuestring);
    }
    if (cJSON_IsNumber(v)) {
        double d = v->valuedouble;
        return d == floor(d) ? gt_xasprintf("%lld", (long long)d) : gt_xasprintf("%g", d);
    }
    if (cJSON_IsArray(v)) {
        gt_buf b = {0};
        const cJSON *e;
        cJSON_ArrayForEach(e, v) {
            char *s = cJSON_IsString(e) ? gt_xstrdup(e->valuestring) : gt_json_print(e);
            gt_buf_printf(&b, "%s%s", b.len ? "," : "", s);
            free(s);
        }
        return gt_buf_steal(&b);
    }
    return gt_json_print(v);
}

/* Display width of UTF-8 text: code points, close enough for names and paths. */
static size_t width(const char *s)
{
    size_t w = 0;
    for (; *s; s++)
        w += ((unsigned char)*s & 0xC0) != 0x80;
    return w;
}

void cli_print_table(FILE *f, const cJSON *items, const char *const *cols,
                     const char *const *heads)
{
    size_t nc = 0;
    while (cols[nc])
        nc++;
    int rows = cJSON_GetArraySize(items);
    char ***cells = gt_xcalloc((size_t)rows + 1, sizeof *cells);
    size_t *w = gt_xcalloc(nc, sizeof *w);
    for (size_t c = 0; c < nc; c++)
        w[c] = width(heads[c]);
    for (int r = 0; r < rows; r++) {
        cells[r] = gt_xcalloc(nc, sizeof **cells);
        for (size_t c = 0; c < nc; c++) {
            cells[r][c] = cell(cJSON_GetArrayItem(items, r), cols[c]);
            if (width(cells[r][c]) > w[c])
                w[c] = width(cells[r][c]);
        }
    }
    for (size_t c = 0; c < nc; c++)
        fprintf(f, "%s%*s", heads[c], c + 1 < nc ? (int)(w[c] - width(heads[c]) + 3) : 0, "");
    fputc('\n', f);
    for (int r = 0; r < rows; r++) {
        for (size_t c = 0; c < nc; c++) {
            fprintf(f, "%s%*s", cells[r][c],
                    c + 1 < nc ? (int)(w[c] - width(cells[r][c]) + 3) : 0, "");
            free(cells[r][c]);
        }
        fputc('\n', f);
        free(cells[r]);
    }
    free(cells);
    free(w);
}

void cli_print_error(cli *c, const gt_api_response *resp)
{
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(resp->body, "error");
    const cJSON *msg = cJSON_GetObjectItemCaseSensitive(e, "message");
    const cJSON *field = cJSON_GetObjectItemCaseSensitive(e, "field");
    const char *m = cJSON_IsString(msg) ? msg->valuestring : "unexpected response";
    /* messages about a JSON path already start with it */
    if (cJSON_IsString(field) && strstr(m, field->valuestring) == NULL)
        fprintf(c->err, "gantry: error: %s (at %s)\n", m, field->valuestring);
    else
        fprintf(c->err, "gantry: error: %s\n", m);
}

int cli_status_exit(int status)
{
    if (status >= 200 && status < 300)
        return CLI_OK;
    if (status >= 400 && status < 500)
        return CLI_USAGE;
    return CLI_ERROR;
}
