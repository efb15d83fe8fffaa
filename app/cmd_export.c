/* mergescope export: a recipe in another tool's format. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "fsutil.h"
#include "hf_config.h"
#include "lm_error.h"
#include "merge_plan.h"
#include "mergekit_export.h"

static const char export_usage[] =
    "usage: mergescope export RECIPE --to mergekit\n"
    "\n"
    "Prints the equivalent mergekit YAML on stdout. What mergekit cannot express\n"
    "exactly (e.g. mergescope's DARE seeds, layer-restricted overrides without an\n"
    "exact slice form) is listed on stderr as warnings, and the YAML says so in\n"
    "comments. Exit status 0 even with warnings.\n"
    "\n"
    "Options:\n"
    "  --to mergekit   target format (the only one so far)\n"
    "  -h, --help      this help\n";

/* tie_word_embeddings of the model at recipe path `path`: 1, 0, or -1 when
 * its config.json cannot be read or does not say. */
static int model_tied(const struct recipe *r, const char *path)
{
    if (!path)
        return -1;
    char *dir = recipe_resolve_path(r, path);
    char *file = dir ? lm_path_join(dir, "config.json") : NULL;
    struct hf_config c;
    int tied = -1;
    if (file && hf_config_load(file, &c) == 0) {
        if (c.has_tie_word_embeddings)
            tied = c.tie_word_embeddings ? 1 : 0;
        hf_config_deinit(&c);
    }
    free(file);
    free(dir);
    return tied;
}

int cmd_export(int argc, char **argv)
{
    static const struct option options[] = {
        { "to", required_argument, NULL, 'T' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    const char *to = NULL;
    int c, rc;
    if (cli_help_asked(argc, argv, "h", options, export_usage))
        return CLI_EXIT_OK;
    while ((c = getopt_long(argc, argv, "h", options, NULL)) != -1) {
        switch (c) {
        case 'T':
            if ((rc = cli_name_option("export", "--to", optarg, &to)))
                return rc;
            break;
        default: return cli_usage_error("export", "bad option");
        }
    }
    if (optind + 1 != argc)
        return cli_usage_error("export", "expected exactly one RECIPE");
    if (!to)
        return cli_usage_error("export", "missing --to mergekit");
    if (strcmp(to, "mergekit") != 0)
        return cli_usage_error("export", "unknown target '%s' (known: mergekit)", to);
    struct recipe *r = cli_load_recipe(argv[optind]);
    if (!r)
        return CLI_EXIT_BAD_INPUT;
    struct merge_plan plan;
    int err = merge_plan_init(&plan, r);
    if (err) {
        recipe_free(r);
        return cli_fail(err);
    }
    /* What the models' configs say about tying, for the warnings that
     * depend on it; models that cannot be read are simply not known. */
    int *tied = lm_calloc(r->n_models + 1, sizeof(int));
    if (!tied) {
        recipe_free(r);
        return cli_fail(LM_ENOMEM);
    }
    for (size_t i = 0; i < r->n_models; i++)
        tied[i] = model_tied(r, r->models[i].path);
    struct mergekit_export_models facts = { .base_tied = model_tied(r, r->base), .model_tied = tied };
    char *warnings = NULL;
    char *yaml = recipe_to_mergekit_yaml_models(r, &facts, &warnings);
    free(tied);
    recipe_free(r);
    if (!yaml) {
        free(warnings);
        return cli_fail(LM_EUNSUPPORTED);
    }
    fputs(yaml, stdout);
    for (const char *w = warnings; w && *w;) {
        size_t n = strcspn(w, "\n");
        fprintf(stderr, "mergescope: warning: %.*s\n", (int)n, w);
        w += n;
        if (*w == '\n')
            w++;
    }
    free(yaml);
    free(warnings);
    return CLI_EXIT_OK;
}
