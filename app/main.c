/* mergescope: a workbench for merging LLM checkpoints.
 *
 * git-style dispatch: `mergescope CMD ARGS...` runs the command's function
 * and returns its exit status (enum cli_exit; the convention is in cli.h
 * and, for users, in print_help()). */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "cmd_engine.h"
#include "cmd_eval.h"
#include "cmd_sweep.h"
#include "cmd_tokenize.h"
#include "cmd_tui.h"
#include "fault.h"
#include "merge_method.h"
#include "mergekit_import.h"

#define MS_VERSION "0.1.0"

struct cli_command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
};

static const struct cli_command commands[] = {
    { "stats",    cmd_stats,    "per-tensor, per-layer and per-module task-vector statistics" },
    { "merge",    cmd_merge,    "merge the models a recipe names and write an HF model directory" },
    { "export",   cmd_export,   "print a recipe as mergekit YAML" },
    { "import",   cmd_import,   "read a mergekit YAML configuration as a recipe" },
    { "calibrate", cmd_calibrate, "run and show a recipe's calibration (aim, sens): cost, importance, sensitivity" },
    { "generate", cmd_generate, "stream a model's (or a recipe's merged model's) continuation of a prompt" },
    { "logits",   cmd_logits,   "write prefill logits as float32 [n_tokens x vocab]" },
    { "eval",     cmd_eval,     "accuracy, mean response length and reflection of a model on a benchmark" },
    { "sweep",    cmd_sweep,    "one eval row per combination of recipe settings, merged in memory" },
    { "tokenize", cmd_tokenize, "print the token ids of a text" },
};

static void print_help(FILE *out)
{
    fprintf(out,
            "usage: mergescope [RECIPE.json|CONFIG.yml | --base DIR --model DIR [--model DIR ...]] [--theme NAME]\n"
            "       mergescope COMMAND [ARGS...]\n"
            "\n"
            "mergescope opens a base model and models fine-tuned from it (Hugging Face\n"
            "safetensors directories), measures where their task vectors are large and\n"
            "where they conflict, and merges them by a recipe, bit for bit reproducibly.\n"
            "\n"
            "With a recipe or --base/--model it opens the interactive workbench (see\n"
            "'mergescope --base DIR --model DIR --help' for its options and keys).\n"
            "\n"
            "Commands:\n");
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        fprintf(out, "  %-9s %s\n", commands[i].name, commands[i].summary);
    fprintf(out, "\nMerge methods:\n");
    for (const struct merge_method *const *m = merge_methods; *m; m++)
        fprintf(out, "  %-16s %s\n", (*m)->name, (*m)->summary);
    char names[128];
    merge_base_optional_names(names, sizeof(names));
    fprintf(out, "A recipe without \"base\" (mergekit's base_model left out) merges the models\n"
            "themselves; only %s take one.\n", names);
    fprintf(out,
            "\n'mergescope COMMAND --help' describes a command's options; --help (or -h)\n"
            "anywhere among them shows the help and runs nothing.\n"
            "\n"
            "Exit status, the same for every command:\n"
            "  0  success\n"
            "  1  runtime failure: a file that cannot be read or written, out of memory,\n"
            "     interrupted (Ctrl-C), an input that changed while in use\n"
            "  2  usage error: an unknown option, a bad value, a missing argument, or an\n"
            "     option given where a path belongs (-o --help)\n"
            "  3  bad input: a model directory, recipe or tokenizer that is missing,\n"
            "     malformed or unsupported, models that cannot be merged together, or an\n"
            "     output that would destroy an input\n");
}

int main(int argc, char **argv)
{
    fault_install();
    if (argc < 2)
        return cmd_tui(argc, argv);
    const char *cmd = argv[1];
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        print_help(stdout);
        return CLI_EXIT_OK;
    }
    if (strcmp(cmd, "--version") == 0) {
        printf("mergescope %s\n", MS_VERSION);
        return CLI_EXIT_OK;
    }
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        if (strcmp(cmd, commands[i].name) == 0)
            return commands[i].run(argc - 1, argv + 1);
    /* A recipe file or --base/--model: the workbench. */
    if (cmd[0] == '-' || strstr(cmd, ".json") || recipe_path_is_yaml(cmd) || strchr(cmd, '/'))
        return cmd_tui(argc, argv);
    fprintf(stderr, "mergescope: error: unknown command '%s'\n", cmd);
    print_help(stderr);
    return CLI_EXIT_USAGE;
}
