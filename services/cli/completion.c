#include <string.h>

#include "cli.h"

/* Completion scripts are generated from the command table, so they never drift
 * from what the parser accepts. */

static void words(cli *c, const char *verb, const char *sep)
{
    const char *last = NULL;
    for (const cli_cmd *cmd = cli_commands; cmd->verb; cmd++) {
        const char *w = verb ? (strcmp(cmd->verb, verb) == 0 ? cmd->kind : NULL) : cmd->verb;
        if (w && (last == NULL || strcmp(last, w) != 0))
            fprintf(c->out, "%s%s", last ? sep : "", w);
        if (w)
            last = w;
    }
}

static void flags_of(cli *c, const cli_cmd *cmd, const char *sep)
{
    bool first = true;
    for (const cli_flag *f = cmd->flags; f && f->name; f++, first = false)
        fprintf(c->out, "%s--%s", first ? "" : sep, f->name);
    for (const cli_flag *f = cli_global_flags; f->name; f++, first = false)
        fprintf(c->out, "%s--%s", first ? "" : sep, f->name);
}

static void bash(cli *c)
{
    fprintf(c->out, "# gantry bash completion: source <(gantry completion bash)\n"
                    "_gantry() {\n"
                    "  local cur=${COMP_WORDS[COMP_CWORD]} verb=${COMP_WORDS[1]} kind=${COMP_WORDS[2]}\n"
                    "  if [ \"$COMP_CWORD\" -eq 1 ]; then\n"
                    "    COMPREPLY=($(compgen -W \"");
    words(c, NULL, " ");
    fprintf(c->out, "\" -- \"$cur\")); return\n  fi\n"
                    "  if [ \"$COMP_CWORD\" -eq 2 ]; then\n    case $verb in\n");
    const char *last = NULL;
    for (const cli_cmd *cmd = cli_commands; cmd->verb; cmd++) {
        if (cmd->kind == NULL || (last && strcmp(last, cmd->verb) == 0))
            continue;
        last = cmd->verb;
        fprintf(c->out, "      %s) COMPREPLY=($(compgen -W \"", cmd->verb);
        words(c, cmd->verb, " ");
        fprintf(c->out, "\" -- \"$cur\")); return;;\n");
    }
    fprintf(c->out, "      completion) COMPREPLY=($(compgen -W \"bash zsh fish\" -- \"$cur\")); return;;\n"
                    "    esac\n  fi\n  case \"$verb $kind\" in\n");
    for (const cli_cmd *cmd = cli_commands; cmd->verb; cmd++) {
        fprintf(c->out, "    \"%s %s\"*) COMPREPLY=($(compgen -W \"", cmd->verb,
                cmd->kind ? cmd->kind : "");
        flags_of(c, cmd, " ");
        fprintf(c->out, "\" -- \"$cur\"));;\n");
    }
    fprintf(c->out, "  esac\n}\ncomplete -o default -F _gantry gantry\n");
}

static void zsh(cli *c)
{
    fprintf(c->out, "#compdef gantry\n# gantry zsh completion: gantry completion zsh > \"${fpath[1]}/_gantry\"\n"
                    "autoload -U bashcompinit && bashcompinit\n");
    bash(c);
}

static void fish(cli *c)
{
    fprintf(c->out, "# gantry fish completion: gantry completion fish | source\n");
    fprintf(c->out, "complete -c gantry -f -n '__fish_use_subcommand' -a '");
    words(c, NULL, " ");
    fprintf(c->out, "'\n");
    const char *last = NULL;
    for (const cli_cmd *cmd = cli_commands; cmd->verb; cmd++) {
        if (cmd->kind && !(last && strcmp(last, cmd->verb) == 0)) {
            last = cmd->verb;
            fprintf(c->out, "complete -c gantry -f -n '__fish_seen_subcommand_from %s' -a '",
                    cmd->verb);
            words(c, cmd->verb, " ");
            fprintf(c->out, "'\n");
        }
        for (const cli_flag *f = cmd->flags; f && f->name; f++) {
            fprintf(c->out, "complete -c gantry -n '__fish_seen_subcommand_from %s' -l %s -d '",
                    cmd->verb, f->name);
            for (const char *h = f->help; *h; h++)
                fputs(*h == '\'' ? "\\'" : (char[]){*h, 0}, c->out);
            fputs("'\n", c->out);
        }
    }
    for (const cli_flag *f = cli_global_flags; f->name; f++)
        fprintf(c->out, "complete -c gantry -l %s\n", f->name);
}

int cli_completion(cli *c, const char *shell)
{
    if (strcmp(shell, "bash") == 0)
        bash(c);
    else if (strcmp(shell, "zsh") == 0)
        zsh(c);
    else if (strcmp(shell, "fish") == 0)
        fish(c);
    else {
        fprintf(c->err, "gantry completion: \"%s\" is not one of bash, zsh, fish\n", shell);
        return CLI_USAGE;
    }
    return CLI_OK;
}
