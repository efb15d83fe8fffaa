/* mergescope stats: task-vector statistics as a table, CSV or JSON. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "lm_error.h"
#include "workspace.h"

static const char stats_usage[] =
    "usage: mergescope stats RECIPE [options]\n"
    "       mergescope stats --base DIR --model DIR [--model DIR ...] [options]\n"
    "\n"
    "Task-vector statistics of each model against the base (d_i = model_i - base),\n"
    "computed in one streaming pass over the memory-mapped weights:\n"
    "  norm(m)        ||d_m||_2\n"
    "  rel(m)         ||d_m|| / ||base||\n"
    "  topk(m)        share of ||d_m||^2 held by the top `density` fraction of entries\n"
    "  cos(a,b)       cosine between task vectors\n"
    "  conflict(a,b)  among entries where both are non-zero, the fraction of opposite signs\n"
    "  ties_conflict  after TIES trimming, the fraction of kept entries against the elected sign\n"
    "  sign_flip      fraction of entries whose sign differs between base and merged\n"
    "  merged_rel     ||merged - base|| / ||base||\n"
    "With a recipe, `merged` is the recipe's merge and density/weights are the recipe's\n"
    "(per layer). With --base/--model it is a TIES merge at --density (default 0.2).\n"
    "\n"
    "Options:\n"
    "  --format table|csv|json   output format (default table)\n"
    "  --by tensor|layer|module  one row per tensor, per layer, or per (layer, module)\n"
    "                            (default layer)\n"
    "  --method NAME             merge method for --base/--model (default ties)\n"
    "  --density D               density for --base/--model (default 0.2)\n"
    "  --threads N               worker threads (default: one per CPU)\n"
    "  -v, --verbose             print the peak memory at the end\n"
    "  -h, --help                this help\n";

struct column {
    char title[96];
    int kind;   /* 0 norm, 1 rel, 2 topk, 3 cos, 4 conflict, 5 ties, 6 flip, 7 merged */
    int a, b;
};

static size_t build_columns(const struct workspace *ws, struct column *cols, size_t max)
{
    size_t n = 0;
    int m = ws_n_models(ws);
    static const char *const per_model[] = { "norm", "rel", "topk" };
    for (int i = 0; i < m; i++)
        for (int k = 0; k < 3 && n < max; k++, n++) {
            snprintf(cols[n].title, sizeof(cols[n].title), "%s(%s)", per_model[k], ws_model(ws, i)->name);
            cols[n].kind = k;
            cols[n].a = i;
        }
    for (int i = 0; i < m; i++)
        for (int j = i + 1; j < m; j++)
            for (int k = 0; k < 2 && n < max; k++, n++) {
                snprintf(cols[n].title, sizeof(cols[n].title), "%s(%s,%s)", k ? "conflict" : "cos",
                         ws_model(ws, i)->name, ws_model(ws, j)->name);
                cols[n].kind = 3 + k;
                cols[n].a = i;
                cols[n].b = j;
            }
    static const char *const tail[] = { "ties_conflict", "sign_flip", "merged_rel" };
    for (int k = m >= 2 ? 0 : 1; k < 3 && n < max; k++, n++) {
        snprintf(cols[n].title, sizeof(cols[n].title), "%s", tail[k]);
        cols[n].kind = 5 + k;
    }
    return n;
}

static double column_value(const struct column *c, const struct stats_raw *s)
{
    switch (c->kind) {
    case 0: return stats_norm(s, c->a);
    case 1: return stats_rel(s, c->a);
    case 2: return stats_topk_energy(s, c->a);
    case 3: return stats_cos(s, c->a, c->b);
    case 4: return stats_conflict(s, c->a, c->b);
    case 5: return stats_ties_conflict(s);
    case 6: return stats_sign_flip(s);
    default: return stats_merged_rel(s);
    }
}

static void print_json_number(double v)
{
    if (isfinite(v))
        printf("%.17g", v);
    else
        fputs("null", stdout);
}

static void print_json_string(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c < 0x20)
            printf("\\u%04x", c);
        else
            putchar(c);
    }
    putchar('"');
}

static void print_json(const struct workspace *ws, const struct ws_stats_row *rows, size_t n_rows)
{
    int m = ws_n_models(ws);
    printf("{\n  \"models\": [");
    for (int i = 0; i < m; i++) {
        printf("%s", i ? ", " : "");
        print_json_string(ws_model(ws, i)->name);
    }
    printf("],\n  \"method\": ");
    print_json_string(ws_method(ws)->name);
    printf(",\n  \"rows\": [\n");
    for (size_t r = 0; r < n_rows; r++) {
        const struct stats_raw *s = &rows[r].raw;
        printf("    {\"name\": ");
        print_json_string(rows[r].label);
        printf(", \"layer\": %d, \"group\": ", rows[r].layer);
        print_json_string(rows[r].group == TN_GROUP_COUNT ? "layer" : tn_group_name(rows[r].group));
        printf(", \"n_elements\": %llu, \"base_norm\": ", (unsigned long long)s->n_elements);
        print_json_number(sqrt(s->base_sq));
        printf(", \"models\": {");
        for (int i = 0; i < m; i++) {
            printf("%s", i ? ", " : "");
            print_json_string(ws_model(ws, i)->name);
            printf(": {\"norm\": ");
            print_json_number(stats_norm(s, i));
            printf(", \"rel\": ");
            print_json_number(stats_rel(s, i));
            printf(", \"topk_energy\": ");
            print_json_number(stats_topk_energy(s, i));
            printf("}");
        }
        printf("}, \"pairs\": [");
        int first = 1;
        for (int i = 0; i < m; i++)
            for (int j = i + 1; j < m; j++) {
                printf("%s{\"a\": ", first ? "" : ", ");
                first = 0;
                print_json_string(ws_model(ws, i)->name);
                printf(", \"b\": ");
                print_json_string(ws_model(ws, j)->name);
                printf(", \"cos\": ");
                print_json_number(stats_cos(s, i, j));
                printf(", \"conflict\": ");
                print_json_number(stats_conflict(s, i, j));
                printf("}");
            }
        printf("], \"ties_conflict\": ");
        print_json_number(stats_ties_conflict(s));
        printf(", \"sign_flip\": ");
        print_json_number(stats_sign_flip(s));
        printf(", \"merged_rel\": ");
        print_json_number(stats_merged_rel(s));
        printf("}%s\n", r + 1 < n_rows ? "," : "");
    }
    printf("  ]\n}\n");
}

static void print_csv_field(const char *s)
{
    if (strpbrk(s, ",\"\n")) {
        putchar('"');
        for (; *s; s++) {
            if (*s == '"')
                putchar('"');
            putchar(*s);
        }
        putchar('"');
    } else {
        fputs(s, stdout);
    }
}

static void print_rows(const struct workspace *ws, const struct ws_stats_row *rows, size_t n_rows,
                       enum cli_format format)
{
    struct column cols[256];
    size_t n_cols = build_columns(ws, cols, 256);
    if (format == CLI_FORMAT_CSV) {
        printf("name,layer,n_elements");
        for (size_t c = 0; c < n_cols; c++) {
            putchar(',');
            print_csv_field(cols[c].title);
        }
        putchar('\n');
        for (size_t r = 0; r < n_rows; r++) {
            print_csv_field(rows[r].label);
            printf(",%d,%llu", rows[r].layer, (unsigned long long)rows[r].raw.n_elements);
            for (size_t c = 0; c < n_cols; c++) {
                double v = column_value(&cols[c], &rows[r].raw);
                if (isfinite(v))
                    printf(",%.9g", v);
                else
                    printf(",");
            }
            putchar('\n');
        }
        return;
    }
    int label_w = 5;
    for (size_t r = 0; r < n_rows; r++)
        label_w = LM_MAX(label_w, (int)strlen(rows[r].label));
    int col_w[256];
    printf("%-*s", label_w, "name");
    for (size_t c = 0; c < n_cols; c++) {
        col_w[c] = LM_MAX(10, (int)strlen(cols[c].title));
        printf("  %*s", col_w[c], cols[c].title);
    }
    putchar('\n');
    for (size_t r = 0; r < n_rows; r++) {
        printf("%-*s", label_w, rows[r].label);
        for (size_t c = 0; c < n_cols; c++) {
            double v = column_value(&cols[c], &rows[r].raw);
            if (isfinite(v))
                printf("  %*.4g", col_w[c], v);
            else
                printf("  %*s", col_w[c], "-");
        }
        putchar('\n');
    }
}

int cmd_stats(int argc, char **argv)
{
    static const struct option options[] = {
        { "base", required_argument, NULL, 'b' },
        { "model", required_argument, NULL, 'm' },
        { "format", required_argument, NULL, 'f' },
        { "by", required_argument, NULL, 'y' },
        { "method", required_argument, NULL, 'M' },
        { "density", required_argument, NULL, 'd' },
        { "threads", required_argument, NULL, 't' },
        { "verbose", no_argument, NULL, 'v' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    static const char *const by_names[] = { "tensor", "layer", "module", NULL };
    static const enum ws_stats_by by_values[] = { WS_STATS_BY_TENSOR, WS_STATS_BY_LAYER, WS_STATS_BY_MODULE };
    const char *base = NULL, *method = "ties";
    const char **models = calloc((size_t)argc + 1, sizeof(*models));
    int n_models = 0;
    enum cli_format format = CLI_FORMAT_TABLE;
    enum ws_stats_by by = WS_STATS_BY_LAYER;
    double density = 0.2;
    struct ws_params params = ws_default_params();
    int rc = CLI_EXIT_OK, c, i;
    bool verbose = false;
    if (!models)
        return cli_fail(LM_ENOMEM);
    if (cli_help_asked(argc, argv, "hv", options, stats_usage))
        goto out;
    while ((c = getopt_long(argc, argv, "hv", options, NULL)) != -1) {
        switch (c) {
        case 'b': rc = cli_path_option("stats", "--base", optarg, &base); break;
        case 'm': rc = cli_path_option("stats", "--model", optarg, &models[n_models++]); break;
        case 'M': rc = cli_name_option("stats", "--method", optarg, &method); break;
        case 'f': rc = cli_parse_format("stats", optarg, true, &format); break;
        case 'y':
            if (!(rc = cli_parse_choice("stats", "--by", optarg, by_names, &i)))
                by = by_values[i];
            break;
        case 'd': rc = cli_parse_double_option("stats", "--density", optarg, 0, 1, &density); break;
        case 't': rc = cli_parse_threads("stats", optarg, &params.n_threads); break;
        case 'v': verbose = true; break;
        default: rc = cli_usage_error("stats", "bad option"); break;
        }
        if (rc)
            goto out;
    }
    struct recipe *r = NULL;
    if (optind < argc) {
        if (base || n_models || optind + 1 < argc) {
            rc = cli_usage_error("stats", "give either one RECIPE or --base and --model");
            goto out;
        }
        r = cli_load_recipe(argv[optind]);
    } else {
        if (!base || !n_models) {
            rc = cli_usage_error("stats", "give a RECIPE, or --base DIR and at least one --model DIR");
            goto out;
        }
        if (!(r = cli_recipe_from_dirs(base, models, n_models, method))) {
            rc = CLI_EXIT_FAILURE;
            goto out;
        }
        int err = 0;
        if (merge_param_find("density") && strcmp(method, "ties") == 0 &&
            (err = recipe_set_number(&r->params, &r->n_params, "density", density))) {
            recipe_free(r);
            rc = cli_fail(err);
            goto out;
        }
    }
    if (!r) {
        rc = CLI_EXIT_BAD_INPUT;
        goto out;
    }
    cli_install_interrupt();
    struct workspace *ws = ws_open(r, params);
    recipe_free(r);
    if (!ws) {
        rc = cli_fail(LM_EFORMAT);
        goto out;
    }
    cli_print_notes(ws_notes(ws));
    int err = cli_calibrate(ws, false);
    if (!err)
        err = ws_stats_compute(ws, cli_progress, NULL);
    cli_progress_done();
    cli_print_nonfinite(ws);
    if (err) {
        rc = cli_fail(err);
        ws_free(ws);
        goto out;
    }
    struct ws_stats_row *rows = NULL;
    size_t n_rows = 0;
    if ((err = ws_stats_rows(ws, by, &rows, &n_rows))) {
        rc = cli_fail(err);
    } else if (format == CLI_FORMAT_JSON) {
        print_json(ws, rows, n_rows);
    } else {
        print_rows(ws, rows, n_rows, format);
    }
    free(rows);
    if (verbose)
        cli_print_peak_memory(ws);
    ws_free(ws);
out:
    free(models);
    return rc;
}
