/* mergescope import: a mergekit YAML configuration as a recipe. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "fsutil.h"
#include "lm_error.h"
#include "merge_plan.h"
#include "mergekit_import.h"

#define IMPORT_MAX_BYTES (16u << 20)

static const char import_usage[] =
    "usage: mergescope import CONFIG.yml [-o RECIPE.json]\n"
    "\n"
    "Reads a mergekit configuration (merge_method, base_model, models with their\n"
    "parameters, global parameters with gradients and filters, dtype, out_dtype,\n"
    "tokenizer_source, and slices that take every layer) and writes the recipe that\n"
    "merges the same model: to RECIPE.json with its paths rewritten to stay right\n"
    "from there, or on stdout with the paths as written. Every command that takes\n"
    "a recipe also opens a .yml/.yaml file directly, as this reads it. A key\n"
    "mergescope does not understand is an error naming it and its line; what\n"
    "mergescope cannot match exactly is printed as a warning.\n"
    "\n"
    "Options:\n"
    "  -o, --output FILE   write the recipe here (a .json file) instead of stdout\n"
    "  -h, --help          this help\n";

/* Prints each line of `text` as a warning. */
static void print_warnings(const char *text)
{
    for (const char *w = text; w && *w;) {
        size_t n = strcspn(w, "\n");
        fprintf(stderr, "mergescope: warning: %.*s\n", (int)n, w);
        w += n;
        if (*w == '\n')
            w++;
    }
}

int cmd_import(int argc, char **argv)
{
    static const struct option options[] = {
        { "output", required_argument, NULL, 'o' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    const char *out = NULL;
    int c, rc;
    if (cli_help_asked(argc, argv, "o:h", options, import_usage))
        return CLI_EXIT_OK;
    while ((c = getopt_long(argc, argv, "o:h", options, NULL)) != -1) {
        switch (c) {
        case 'o':
            if ((rc = cli_path_option("import", "-o", optarg, &out)))
                return rc;
            break;
        default: return cli_usage_error("import", "bad option");
        }
    }
    if (optind + 1 != argc)
        return cli_usage_error("import", "expected exactly one CONFIG.yml");
    const char *in = argv[optind];
    if (out && recipe_path_is_yaml(out))
        return cli_usage_error("import", "-o %s: import writes a JSON recipe (use a .json name)", out);
    if ((rc = cli_check_input(in)))
        return rc;

    size_t len = 0;
    char *text = lm_read_file(in, IMPORT_MAX_BYTES, &len);
    char *dir = text ? lm_path_dirname(in) : NULL;
    if (!dir) {
        free(text);
        return cli_fail(LM_EIO);
    }
    char *warnings = NULL;
    struct recipe *r = recipe_from_mergekit_yaml(text, len, in, dir, &warnings);
    free(text);
    free(dir);
    if (!r)
        return cli_fail(LM_EFORMAT);
    if (r->source_path == NULL)
        r->source_path = lm_strdup(in);
    /* The parameters and their ranges, as merge and the workbench check them. */
    struct merge_plan plan;
    int err = merge_plan_init(&plan, r);
    if (!err && out) {
        err = recipe_save_as(r, out);
    } else if (!err) {
        char *json = recipe_to_json(r);
        if (!json)
            err = LM_ENOMEM;
        else
            printf("%s%s", json, json[0] && json[strlen(json) - 1] == '\n' ? "" : "\n");
        free(json);
    }
    recipe_free(r);
    if (err) {
        free(warnings);
        return cli_fail(err);
    }
    print_warnings(warnings);
    free(warnings);
    return CLI_EXIT_OK;
}
