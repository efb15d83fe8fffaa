/* mergescope stats: task-vector statistics as a table, CSV or JSON. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "fsutil.h"
#include "lm_error.h"
#include "svg_plot.h"
#include "workspace.h"
#include "ws_explain.h"

static const char stats_usage[] =
    "usage: mergescope stats RECIPE [options]\n"
    "       mergescope stats RECIPE --plot FILE.svg\n"
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
    "  --plot FILE.svg           instead of the table, draw every statistic across the\n"
    "                            layers as an SVG: one panel per statistic, one line per\n"
    "                            module (attention, mlp); an existing file is replaced\n"
    "                            atomically, an input model is never overwritten\n"
    "  --plot-by module|projection  one line per module group (default) or per\n"
    "                            projection (q_proj ... down_proj)\n"
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

/* ===== --plot ===== */

/* The panel of one statistic: for per-model statistics one line per
 * module and model, for pair statistics per module and pair, else per
 * module. Series and names go into the caller's arrays. */
static int plot_panel(const struct workspace *ws, enum ws_stat stat, bool by_projection, struct svg_panel *panel,
                      struct svg_series *series, struct ws_series *data, char (*names)[96], int max, int *used,
                      char *title, size_t title_size)
{
    int m = ws_n_models(ws), n = 0;
    int n_pairs = ws_stat_per_pair(stat) ? m * (m - 1) / 2 : 1;
    int n_who = ws_stat_per_model(stat) ? m : n_pairs;
    snprintf(title, title_size, "%s", ws_stat_name(stat));
    if (n_who == 1 && ws_stat_per_model(stat))
        snprintf(title, title_size, "%s (%s)", ws_stat_name(stat), ws_model(ws, 0)->name);
    else if (n_who == 1 && ws_stat_per_pair(stat))
        snprintf(title, title_size, "%s (%s x %s)", ws_stat_name(stat), ws_model(ws, 0)->name, ws_model(ws, 1)->name);
    for (int who = 0, a = 0, b = 1; who < n_who; who++) {
        if (ws_stat_per_model(stat))
            a = who;
        struct ws_series got[WS_SERIES_MAX];
        int k = 0;
        int rc = ws_layer_series(ws, stat, by_projection, a, b, got, &k);
        if (rc)
            return rc;
        for (int i = 0; i < k; i++) {
            if (*used + n >= max) {
                ws_series_free(got + i, k - i);
                break;
            }
            char *name = names[*used + n];
            if (n_who == 1)
                snprintf(name, 96, "%.23s", got[i].name);
            else if (ws_stat_per_model(stat))
                snprintf(name, 96, "%.23s (%.60s)", got[i].name, ws_model(ws, a)->name);
            else
                snprintf(name, 96, "%.23s (%.30s x %.30s)", got[i].name, ws_model(ws, a)->name, ws_model(ws, b)->name);
            data[*used + n] = got[i];
            series[*used + n] = (struct svg_series){ name, got[i].y };
            n++;
        }
        if (ws_stat_per_pair(stat) && ++b >= m) {   /* next pair (a, b), a < b */
            a++;
            b = a + 1;
        }
    }
    *panel = (struct svg_panel){ title, ws_stat_name(stat), series + *used, n };
    *used += n;
    return 0;
}

/* Writes the SVG of every statistic worth drawing for these models. */
static int write_plot(const struct workspace *ws, const char *path, bool by_projection, int *n_panels_out)
{
    enum ws_stat stats[WS_STAT_COUNT];
    int n_stats = ws_stats_for(ws_n_models(ws), stats);
    enum { MAX_SERIES = 512 };
    static struct svg_series series[MAX_SERIES];
    static struct ws_series data[MAX_SERIES];
    static char names[MAX_SERIES][96];
    static char titles[WS_STAT_COUNT][160];
    struct svg_panel panels[WS_STAT_COUNT];
    int used = 0, rc = 0;
    for (int i = 0; i < n_stats && !rc; i++)
        rc = plot_panel(ws, stats[i], by_projection, &panels[i], series, data, names, MAX_SERIES, &used,
                        titles[i], sizeof(titles[i]));
    char *svg = NULL;
    if (!rc) {
        char title[512];
        int len = snprintf(title, sizeof(title), "%s merge of", ws_method(ws)->name);
        for (int i = 0; i < ws_n_models(ws) && len < (int)sizeof(title) - 64; i++)
            len += snprintf(title + len, sizeof(title) - (size_t)len, " %s", ws_model(ws, i)->name);
        snprintf(title + len, sizeof(title) - (size_t)len, " against the base, per layer");
        svg = svg_plot(title, "layer", ws_n_layers(ws), panels, n_stats);
        rc = svg ? lm_write_file_atomic(path, svg, strlen(svg)) : LM_ENOMEM;
        if (!svg && lm_last_error()[0])
            rc = LM_EINVAL;
    }
    free(svg);
    ws_series_free(data, used);
    *n_panels_out = n_stats;
    return rc;
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
        { "plot", required_argument, NULL, 'p' },
        { "plot-by", required_argument, NULL, 'P' },
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
    bool verbose = false, by_projection = false;
    const char *plot = NULL;
    static const char *const plot_by_names[] = { "module", "projection", NULL };
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
        case 'p': rc = cli_path_option("stats", "--plot", optarg, &plot); break;
        case 'P':
            if (!(rc = cli_parse_choice("stats", "--plot-by", optarg, plot_by_names, &i)))
                by_projection = i == 1;
            break;
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
    /* The output policy before any work: never over an input model. */
    if (plot && ws_check_output(ws, plot, true, false, NULL) != 0) {
        rc = cli_fail(LM_EREFUSED);
        ws_free(ws);
        goto out;
    }
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
    int n_panels = 0;
    if (plot) {
        if ((err = write_plot(ws, plot, by_projection, &n_panels)))
            rc = cli_fail(err);
        else
            fprintf(stderr, "mergescope: wrote %s (%d panels over %d layers)\n", plot, n_panels, ws_n_layers(ws));
    } else if ((err = ws_stats_rows(ws, by, &rows, &n_rows))) {
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
