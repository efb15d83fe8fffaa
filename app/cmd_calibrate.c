/* mergescope calibrate: what the activation-based methods measure, and
 * what measuring costs, before (or instead of) a merge. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "calib.h"
#include "cli.h"
#include "lm_error.h"
#include "merge_method.h"
#include "strbuf.h"
#include "workspace.h"

static void print_plan(const struct ws_calib_cost *c)
{
    fprintf(stderr,
            "mergescope: calibration: %zu samples, %lld tokens (%lld in responses, longest %lld%s); "
            "%d forward + %d forward/backward passes per sample; about %.3g GFLOP and %.1f MB extra memory\n",
            c->samples, (long long)c->tokens, (long long)c->response_tokens, (long long)c->longest,
            c->truncated ? ", some cut to max_tokens" : "", c->forward_passes, c->backward_passes,
            c->flops / 1e9, (double)c->memory_bytes / 1e6);
}

int cli_calibrate(struct workspace *ws, bool quiet)
{
    if (!ws_method(ws)->needs)
        return 0;
    struct ws_calib_cost plan;
    int rc = ws_calib_plan(ws, &plan);
    if (rc)
        return rc;
    if (plan.cached)
        return 0;
    if (!quiet)
        print_plan(&plan);
    rc = ws_calibrate(ws, cli_progress, NULL);
    cli_progress_done();
    if (rc)
        return rc;
    const struct ws_calib_cost *done = ws_calib_last(ws);
    if (!quiet && done && done->from_cache)
        fprintf(stderr, "mergescope: calibration results read from the cache in %.2f s "
                "(MERGESCOPE_CACHE_DIR=off recomputes)\n", done->seconds);
    else if (!quiet && done)
        fprintf(stderr, "mergescope: calibration took %.2f s%s\n", done->seconds,
                done->cache_written ? " (results cached)" : "");
    return 0;
}

static const char calibrate_usage[] =
    "usage: mergescope calibrate RECIPE [--dry-run] [--format table|json] [--threads N]\n"
    "\n"
    "Runs the calibration the recipe's method needs and prints what it measured,\n"
    "per layer: for aim, the base model's input-channel importance of each linear\n"
    "layer (mean, and the share of channels above 0.5); for sens, each model's\n"
    "layer sensitivity sum |w * dL/dw| and the coefficient its task vector gets\n"
    "there with the recipe's alpha and temperature (and, with two models or more,\n"
    "the alignment scores). The recipe's \"calibration\" section names the JSONL\n"
    "file of {\"prompt\": ..., \"response\": ...} samples and its limits.\n"
    "\n"
    "Options:\n"
    "  --dry-run          only print the cost estimate (samples, tokens, passes,\n"
    "                     work, extra memory); run nothing\n"
    "  --format F         table (default) or json\n"
    "  --threads N        worker threads (default: one per CPU)\n"
    "  -h, --help         this help\n";

static double mean(const float *v, int64_t n, double *above_half)
{
    double s = 0;
    int64_t k = 0;
    for (int64_t i = 0; i < n; i++) {
        s += v[i];
        k += v[i] > 0.5f;
    }
    *above_half = n ? (double)k / (double)n : 0;
    return n ? s / (double)n : 0;
}

/* The parameters a tensor of `layer` gets (alpha, temperature). */
static void layer_params(const struct workspace *ws, int layer, struct merge_tensor_params *p)
{
    for (size_t i = 0; i < ws_n_tensors(ws); i++)
        if (ws_tensor(ws, i)->info.layer == layer) {
            ws_tensor_params(ws, i, p);
            return;
        }
    merge_tensor_params_default(p, ws_n_models(ws));
}

static void print_activations(const struct workspace *ws, const struct calib_activations *a, bool json)
{
    static const char *const names[MODEL_PROBE_COUNT] = { "attn_in", "attn_out", "mlp_in", "mlp_act", "head_in" };
    if (json)
        printf("  \"activations\": [");
    else
        printf("%-7s %-9s %8s %8s\n", "layer", "input", "mean I", "I>0.5");
    bool first = true;
    for (int l = 0; l <= a->n_layer; l++)
        for (int w = 0; w < MODEL_PROBE_COUNT; w++) {
            if ((l == a->n_layer) != (w == MODEL_PROBE_HEAD_IN))
                continue;
            const float *imp = a->importance[CALIB_NORM_MINMAX][l * MODEL_PROBE_COUNT + w];
            double above, m = mean(imp, a->width[w], &above);
            if (json) {
                printf("%s\n    {\"layer\": %d, \"input\": \"%s\", \"width\": %lld, \"mean\": %.6g, \"above_half\": %.6g}",
                       first ? "" : ",", l == a->n_layer ? -1 : l, names[w], (long long)a->width[w], m, above);
            } else {
                char lab[16];
                snprintf(lab, sizeof(lab), l == a->n_layer ? "head" : "%d", l);
                printf("%-7s %-9s %8.4f %7.1f%%\n", lab, names[w], m, 100 * above);
            }
            first = false;
        }
    (void)ws;
    if (json)
        printf("\n  ]");
}

static void print_sensitivity(const struct workspace *ws, const struct calib_sensitivity *s, bool json)
{
    int n = s->n_models;
    double scale[MERGE_MAX_MODELS];
    if (json) {
        for (int k = 0; k < 2; k++) {
            printf(k ? "},\n  \"alignment\": {" : "  \"loss\": {");
            for (int i = 0; i < n; i++) {
                struct lm_strbuf name = { 0 };
                lm_strbuf_json_string(&name, ws_model(ws, i)->name);
                char *quoted = lm_strbuf_finish(&name);
                printf("%s%s: %.6g", i ? ", " : "", quoted ? quoted : "\"?\"", k ? s->alignment[i] : s->loss[i]);
                free(quoted);
            }
        }
        printf("},\n  \"layers\": [");
    } else {
        for (int i = 0; i < n; i++) {
            printf("model %-12s response loss %.4f", ws_model(ws, i)->name, s->loss[i]);
            if (n > 1)
                printf("  alignment %.4f", s->alignment[i]);
            putchar('\n');
        }
        printf("%-6s", "layer");
        for (int i = 0; i < n; i++)
            printf(" %12s %8s", "sens", "coef");
        printf("\n");
    }
    for (int l = 0; l < s->n_layer; l++) {
        struct merge_tensor_params p;
        layer_params(ws, l, &p);
        calib_sens_scale(s, l, p.alpha, p.temperature, scale);
        if (json) {
            printf("%s\n    {\"layer\": %d, \"sensitivity\": [", l ? "," : "", l);
            for (int i = 0; i < n; i++)
                printf("%s%.6g", i ? ", " : "", s->layer[(size_t)i * (size_t)s->n_layer + (size_t)l]);
            printf("], \"coefficient\": [");
            for (int i = 0; i < n; i++)
                printf("%s%.6g", i ? ", " : "", scale[i]);
            printf("]}");
        } else {
            printf("%-6d", l);
            for (int i = 0; i < n; i++)
                printf(" %12.5g %8.4f", s->layer[(size_t)i * (size_t)s->n_layer + (size_t)l], scale[i]);
            printf("\n");
        }
    }
    if (json)
        printf("\n  ]");
}

int cmd_calibrate(int argc, char **argv)
{
    static const struct option options[] = {
        { "dry-run", no_argument, NULL, 'n' },
        { "format", required_argument, NULL, 'f' },
        { "threads", required_argument, NULL, 't' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    bool dry = false;
    enum cli_format format = CLI_FORMAT_TABLE;
    struct ws_params params = ws_default_params();
    int c, rc;
    if (cli_help_asked(argc, argv, "h", options, calibrate_usage))
        return CLI_EXIT_OK;
    while ((c = getopt_long(argc, argv, "h", options, NULL)) != -1) {
        switch (c) {
        case 'n': dry = true; break;
        case 'f':
            if ((rc = cli_parse_format("calibrate", optarg, false, &format)))
                return rc;
            break;
        case 't':
            if ((rc = cli_parse_threads("calibrate", optarg, &params.n_threads)))
                return rc;
            break;
        default: return cli_usage_error("calibrate", "bad option");
        }
    }
    bool json = format == CLI_FORMAT_JSON;
    if (optind + 1 != argc)
        return cli_usage_error("calibrate", "expected exactly one RECIPE");
    struct recipe *r = cli_load_recipe(argv[optind]);
    if (!r)
        return CLI_EXIT_BAD_INPUT;
    cli_install_interrupt();
    struct workspace *ws = ws_open(r, params);
    recipe_free(r);
    if (!ws)
        return cli_fail(LM_EFORMAT);
    cli_print_notes(ws_notes(ws));
    const struct merge_method *m = ws_method(ws);
    if (!m->needs) {
        ws_free(ws);
        lm_err(LM_EINVAL, "method '%s' needs no calibration (aim and sens do)", m->name);
        return cli_fail(LM_EINVAL);
    }
    struct ws_calib_cost plan;
    if ((rc = ws_calib_plan(ws, &plan))) {
        ws_free(ws);
        return cli_fail(rc);
    }
    if (dry) {
        if (json)
            printf("{\n  \"samples\": %zu,\n  \"tokens\": %lld,\n  \"response_tokens\": %lld,\n"
                   "  \"longest\": %lld,\n  \"truncated\": %zu,\n  \"forward_passes\": %d,\n"
                   "  \"backward_passes\": %d,\n  \"flops\": %.6g,\n  \"memory_bytes\": %llu\n}\n",
                   plan.samples, (long long)plan.tokens, (long long)plan.response_tokens,
                   (long long)plan.longest, plan.truncated, plan.forward_passes, plan.backward_passes,
                   plan.flops, (unsigned long long)plan.memory_bytes);
        else
            print_plan(&plan);
        ws_free(ws);
        return CLI_EXIT_OK;
    }
    if ((rc = cli_calibrate(ws, json)) != 0) {
        ws_free(ws);
        return cli_fail(rc);
    }
    const struct ws_calib_cost *done = ws_calib_last(ws);
    if (json)
        printf("{\n  \"method\": \"%s\",\n  \"samples\": %zu,\n  \"tokens\": %lld,\n  \"seconds\": %.3f,\n",
               m->name, plan.samples, (long long)plan.tokens, done ? done->seconds : 0.0);
    const struct calib_activations *a = ws_calib_activations(ws);
    const struct calib_sensitivity *s = ws_calib_sensitivity(ws);
    if (a)
        print_activations(ws, a, json);
    if (s) {
        if (json && a)
            printf(",\n");
        print_sensitivity(ws, s, json);
    }
    if (json)
        printf("\n}\n");
    ws_free(ws);
    return CLI_EXIT_OK;
}
