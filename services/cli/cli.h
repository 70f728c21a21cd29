/* The gantry command: shared types of the CLI's modules. */
#ifndef GT_CLI_H
#define GT_CLI_H

#include <stdatomic.h>
#include <cjson/cJSON.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>

#include "api.h"
#include "util.h"

typedef enum cli_format { CLI_TABLE, CLI_JSON, CLI_YAML } cli_format;

typedef enum cli_flag_type { FLAG_STR, FLAG_LIST, FLAG_BOOL } cli_flag_type;

typedef struct cli_flag {
    const char *name;       /* long name without "--" */
    cli_flag_type type;
    const char *metavar;
    const char *help;
    bool required;          /* checked before the command runs */
} cli_flag;

typedef struct cli_args {
    gt_strv pos;            /* positional arguments after verb and kind */
    const cli_flag *flags;  /* the command's flags */
    gt_strv *values;        /* values[i] for flags[i]; bools hold "true" */
} cli_args;

typedef struct cli cli;
typedef struct cli_cmd cli_cmd;
typedef int (*cli_fn)(cli *c, const cli_cmd *cmd, const cli_args *a);

struct cli_cmd {
    const char *verb;       /* "create" */
    const char *kind;       /* "service", or NULL for verbs without one */
    const char *usage;      /* positional part: "TYPE NAME" */
    int min_args, max_args;
    const cli_flag *flags;
    cli_fn fn;
    const char *resource;   /* API collection the command acts on: "services" */
    const char *summary;
};

/* Sends one API request (in-process in local mode). Returns the response; on a
 * transport failure status is 503 with an error body. */
typedef void (*cli_call_fn)(cli *c, const char *method, const char *path, const char *query,
                            const cJSON *body, gt_api_response *resp);

struct cli {
    bool client;                 /* client mode: requests go to a server */
    char *token;                 /* client mode: the saved login token, or NULL */
    /* client mode: saves (token != NULL) or removes the token file */
    int (*store_token)(cli *c, const char *token);
    atomic_int *interrupted; /* set by SIGINT/SIGTERM */
    cli_format format;
    FILE *out;
    FILE *err;
    cli_call_fn call;
    /* Sent with the next request as its Idempotency-Key; a request that has one is sent
     * again when the connection fails, since the server runs it at most once. */
    const char *idempotency_key;
    gt_api *api;                 /* local mode */
    const char *config_path;     /* --config */
    /* Loads the configuration and, when backend is set, opens what commands talk to.
     * Prints its own errors; returns a CLI_ exit status. */
    int (*prepare)(cli *c, bool backend);
    void (*show_config)(cli *c); /* prints the loaded configuration */
    void *ctx;                   /* the caller's */
};

/* Exit statuses: documented in the README. */
enum { CLI_OK = 0, CLI_FAILED = 1, CLI_USAGE = 2, CLI_ERROR = 3 };

/* commands.c */
extern const cli_cmd cli_commands[];
extern const cli_flag cli_global_flags[];
/* Runs argv (without the program name and global flags). */
int cli_dispatch(cli *c, int argc, char **argv);

/* flags.c */
/* Parses argv against cmd's flags; positional words go to a->pos. Prints the error
 * (naming the flag) and returns false on bad usage. */
bool cli_parse(cli *c, const cli_cmd *cmd, int argc, char **argv, cli_args *a);
void cli_args_free(cli_args *a);
/* Handles a global flag (config, output) given anywhere; false with a message when
 * its value is bad. */
bool cli_global(cli *c, const char *name, const char *value);
const char *cli_flag_str(const cli_args *a, const char *name);   /* last value or NULL */
const gt_strv *cli_flag_list(const cli_args *a, const char *name);
bool cli_flag_bool(const cli_args *a, const char *name);
void cli_print_help(cli *c, const cli_cmd *cmd);
void cli_print_usage(cli *c);

/* output.c */
void cli_print_json(FILE *f, const cJSON *v);
void cli_print_yaml(FILE *f, const cJSON *v);
/* A table of items with the given columns (JSON member names) and headers. */
void cli_print_table(FILE *f, const cJSON *items, const char *const *cols,
                     const char *const *heads);
/* Prints an API error body as "gantry: error: message (field)". */
void cli_print_error(cli *c, const gt_api_response *resp);
/* Exit status for an HTTP status. */
int cli_status_exit(int status);

/* session.c: login, logout, users, API keys (client mode) */
int cli_cmd_login(cli *c, const cli_cmd *cmd, const cli_args *a);
int cli_cmd_logout(cli *c, const cli_cmd *cmd, const cli_args *a);
int cli_cmd_create_user(cli *c, const cli_cmd *cmd, const cli_args *a);
int cli_cmd_create_apikey(cli *c, const cli_cmd *cmd, const cli_args *a);
/* Reads a secret line: from the terminal without echo, else one line of stdin. */
char *cli_read_secret(cli *c, const char *prompt, bool from_stdin);
/* Sends a request and prints an error on failure; *out is the body on success. */
int cli_request(cli *c, const char *method, const char *path, const char *query,
                const cJSON *body, cJSON **out);

/* commands.c */
void cli_print_doc(cli *c, const cJSON *doc);

/* db.c: service files (gantry db export, gantry db import) */
int cli_cmd_db_export(cli *c, const cli_cmd *cmd, const cli_args *a);
int cli_cmd_db_import(cli *c, const cli_cmd *cmd, const cli_args *a);

/* completion.c */
int cli_completion(cli *c, const char *shell);

#endif
