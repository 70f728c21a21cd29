/* Client-mode commands that deal with identities: login (and password change),
 * logout, users and API keys. They talk to gantry-controller, which asks
 * gantry-tokend. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#include "cli.h"
#include "json.h"

static int needs_client(cli *c, const char *what)
{
    if (c->client)
        return CLI_OK;
    fprintf(c->err, "gantry %s: local mode has no users or logins; set [application] mode = client "
                    "and [client] host to use a server\n", what);
    return CLI_USAGE;
}

char *cli_read_secret(cli *c, const char *prompt, bool from_stdin)
{
    FILE *in = NULL;
    struct termios old, quiet;
    bool tty = false;
    if (!from_stdin && (in = fopen("/dev/tty", "r+e")) != NULL && tcgetattr(fileno(in), &old) == 0) {
        tty = true;
        quiet = old;
        quiet.c_lflag &= ~(tcflag_t)ECHO;
        tcsetattr(fileno(in), TCSAFLUSH, &quiet);
        fputs(prompt, c->err);
        fflush(c->err);
    } else {
        if (in)
            fclose(in);
        in = stdin;
    }
    char buf[1024];
    char *line = fgets(buf, sizeof buf, in);
    if (tty) {
        tcsetattr(fileno(in), TCSAFLUSH, &old);
        fputc('\n', c->err);
        fclose(in);
    }
    if (line == NULL)
        return NULL;
    buf[strcspn(buf, "\r\n")] = '\0';
    char *s = gt_xstrdup(buf);
    gt_wipe(buf, sizeof buf);
    return s;
}

static void free_secret(char *s)
{
    if (s) {
        gt_wipe(s, strlen(s));
        free(s);
    }
}

int cli_cmd_login(cli *c, const cli_cmd *cmd, const cli_args *a)
{
    (void)cmd;
    int rc = needs_client(c, "login");
    if (rc != CLI_OK)
        return rc;
    const char *user = a->pos.n ? a->pos.v[0] : "admin";
    bool from_stdin = cli_flag_bool(a, "password-stdin");
    bool change = cli_flag_bool(a, "change-password");
    char prompt[256];
    snprintf(prompt, sizeof prompt, "Password for %s: ", user);
    char *pw = cli_read_secret(c, prompt, from_stdin), *npw = NULL, *again = NULL;
    cJSON *body = cJSON_CreateObject(), *out = NULL;
    if (pw == NULL) {
        fprintf(c->err, "gantry login: no password given\n");
        rc = CLI_USAGE;
        goto done;
    }
    gt_json_set_str(body, "username", user);
    if (change) {
        npw = cli_read_secret(c, "New password: ", from_stdin);
        again = from_stdin ? gt_xstrdup(npw ? npw : "") : cli_read_secret(c, "Repeat the new password: ", false);
        if (npw == NULL || again == NULL || strcmp(npw, again) != 0) {
            fprintf(c->err, "gantry login: the new passwords do not match\n");
            rc = CLI_USAGE;
            goto done;
        }
        gt_json_set_str(body, "password", pw);
        gt_json_set_str(body, "new_password", npw);
        rc = cli_request(c, "POST", "/api/v1/password", NULL, body, &out);
        if (rc != CLI_OK)
            goto done;
        cJSON_Delete(out);
        out = NULL;
        fprintf(c->err, "Password changed.\n");
        cJSON_DeleteItemFromObjectCaseSensitive(body, "new_password");
        gt_json_set_str(body, "password", npw);
    } else {
        gt_json_set_str(body, "password", pw);
    }
    if ((rc = cli_request(c, "POST", "/api/v1/login", NULL, body, &out)) != CLI_OK)
        goto done;
    const cJSON *tok = cJSON_GetObjectItemCaseSensitive(out, "token");
    const cJSON *role = cJSON_GetObjectItemCaseSensitive(out, "role");
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(out, "must_change_password"))) {
        fprintf(c->err, "gantry login: the password of %s must be changed first: run "
                        "gantry login %s --change-password\n", user, user);
        rc = CLI_FAILED;
        goto done;
    }
    if (!cJSON_IsString(tok)) {
        fprintf(c->err, "gantry login: the server sent no token\n");
        rc = CLI_ERROR;
        goto done;
    }
    if ((rc = c->store_token(c, tok->valuestring)) != CLI_OK)
        goto done;
    if (cli_flag_bool(a, "raw")) {
        cJSON *raw = cJSON_CreateObject();
        gt_json_set_str(raw, "token", tok->valuestring);
        cli_print_json(c->out, raw);
        cJSON_Delete(raw);
    } else {
        fprintf(c->out, "Logged in as %s (%s).\n", user, cJSON_IsString(role) ? role->valuestring : "?");
    }
done:
    if (out) {
        cJSON *t = cJSON_GetObjectItemCaseSensitive(out, "token");
        if (cJSON_IsString(t))
            gt_wipe(t->valuestring, strlen(t->valuestring));
    }
    cJSON *pv = cJSON_GetObjectItemCaseSensitive(body, "password");
    if (cJSON_IsString(pv))
        gt_wipe(pv->valuestring, strlen(pv->valuestring));
    cJSON *nv = cJSON_GetObjectItemCaseSensitive(body, "new_password");
    if (cJSON_IsString(nv))
        gt_wipe(nv->valuestring, strlen(nv->valuestring));
    cJSON_Delete(out);
    cJSON_Delete(body);
    free_secret(pw);
    free_secret(npw);
    free_secret(again);
    return rc;
}

int cli_cmd_logout(cli *c, const cli_cmd *cmd, const cli_args *a)
{
    (void)cmd;
    (void)a;
    int rc = needs_client(c, "logout");
    if (rc != CLI_OK)
        return rc;
    if (c->token == NULL) {
        fprintf(c->out, "Not logged in.\n");
        return CLI_OK;
    }
    cJSON *out = NULL;
    rc = cli_request(c, "POST", "/api/v1/logout", NULL, NULL, &out);
    cJSON_Delete(out);
    /* the local token goes either way: a revoked or expired token is useless */
    int src = c->store_token(c, NULL);
    if (rc == CLI_OK || rc == CLI_USAGE) {
        fprintf(c->out, "Logged out.\n");
        return src;
    }
    return rc;
}

int cli_cmd_create_user(cli *c, const cli_cmd *cmd, const cli_args *a)
{
    (void)cmd;
    int rc = needs_client(c, "create user");
    if (rc != CLI_OK)
        return rc;
    cJSON *b = cJSON_CreateObject(), *out = NULL;
    gt_json_set_str(b, "name", a->pos.v[0]);
    gt_json_set_str(b, "role", cli_flag_str(a, "role"));
    char *pw = cli_flag_bool(a, "password-stdin") ? cli_read_secret(c, "", true) : NULL;
    if (pw)
        gt_json_set_str(b, "password", pw);
    rc = cli_request(c, "POST", "/api/v1/users", NULL, b, &out);
    if (rc == CLI_OK) {
        const cJSON *tmp = cJSON_GetObjectItemCaseSensitive(out, "password");
        if (c->format != CLI_TABLE)
            cli_print_doc(c, out);
        else if (cJSON_IsString(tmp))
            fprintf(c->out, "user %s created; temporary password (shown once, must be changed at "
                            "the first login): %s\n", a->pos.v[0], tmp->valuestring);
        else
            fprintf(c->out, "user %s created\n", a->pos.v[0]);
    }
    cJSON *pv = cJSON_GetObjectItemCaseSensitive(b, "password");
    if (cJSON_IsString(pv))
        gt_wipe(pv->valuestring, strlen(pv->valuestring));
    free_secret(pw);
    cJSON_Delete(out);
    cJSON_Delete(b);
    return rc;
}

int cli_cmd_create_apikey(cli *c, const cli_cmd *cmd, const cli_args *a)
{
    (void)cmd;
    int rc = needs_client(c, "create apikey");
    if (rc != CLI_OK)
        return rc;
    cJSON *b = cJSON_CreateObject(), *out = NULL;
    const char *name = cli_flag_str(a, "name");
    if (name)
        gt_json_set_str(b, "name", name);
    rc = cli_request(c, "POST", "/api/v1/apikeys", NULL, b, &out);
    if (rc == CLI_OK) {
        const cJSON *k = cJSON_GetObjectItemCaseSensitive(out, "api_key");
        const cJSON *exp = cJSON_GetObjectItemCaseSensitive(out, "expires_at");
        if (c->format != CLI_TABLE)
            cli_print_doc(c, out);
        else
            fprintf(c->out, "%s\n(shown once; expires %s)\n", cJSON_IsString(k) ? k->valuestring : "",
                    cJSON_IsString(exp) ? exp->valuestring : "per [server] api_key_expiration");
    }
    cJSON_Delete(out);
    cJSON_Delete(b);
    return rc;
}
