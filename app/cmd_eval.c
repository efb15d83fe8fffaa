/* mergescope eval: what the long-to-short paper measures (accuracy, mean
 * response length in tokens, share of reflective responses) for one model
 * or a recipe merged in memory. */
#include "cmd_eval.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "cli.h"
#include "cmd_engine.h"
#include "eval_cli.h"
#include "fsutil.h"
#include "generate.h"
#include "lm_error.h"
#include "output_policy.h"
#include "strbuf.h"

static void print_summary_json(FILE *f, const struct eval_summary *s)
{
    char a[40], b[40], c[40];
    fprintf(f, "{\"n\": %zu, \"accuracy\": %s, \"mean_tokens\": %s, \"reflective\": %s}", s->n,
            eval_json_number(s->accuracy, a), eval_json_number(s->mean_tokens, b),
            eval_json_number(s->reflective, c));
}

static void print_speed(const struct eval_result *results, size_t n_items, double seconds, int n_jobs,
                        int threads_per_job, int64_t max_new)
{
    struct eval_summary s;
    eval_summarize(results, n_items, &s);
    size_t n_cut = 0;
    for (size_t i = 0; i < n_items; i++)
        n_cut += results[i].done && results[i].stop != GEN_STOP_EOS;
    fprintf(stderr, "mergescope: %zu problems in %.2f s, %lld tokens generated (%.0f tokens/s), "
            "%d job%s x %d thread%s\n",
            s.n, seconds, (long long)s.total_tokens, seconds > 0 ? (double)s.total_tokens / seconds : 0.0,
            n_jobs, n_jobs == 1 ? "" : "s", threads_per_job, threads_per_job == 1 ? "" : "s");
    if (n_cut)
        fprintf(stderr, "mergescope: note: %zu of %zu answers did not end by themselves (cut at -n %lld "
                "tokens or at the end of the context)\n", n_cut, s.n, (long long)max_new);
}

/* Writes one JSON line per finished problem to `path` (atomically). 0 or
 * an exit status after printing the error. */
static int write_details(const char *path, const struct eval_bench *b, const struct eval_result *r, size_t n)
{
    struct lm_strbuf text = { 0 };
    bool ok = true;
    for (size_t i = 0; i < n && ok; i++) {
        if (!r[i].done)
            continue;
        cJSON *o = cJSON_CreateObject();
        ok = o && cJSON_AddStringToObject(o, "question", b->items[i].question) &&
             cJSON_AddStringToObject(o, "answer", b->items[i].answer) &&
             cJSON_AddStringToObject(o, "response", r[i].response ? r[i].response : "") &&
             (r[i].extracted ? cJSON_AddStringToObject(o, "extracted", r[i].extracted) != NULL
                             : cJSON_AddNullToObject(o, "extracted") != NULL) &&
             cJSON_AddBoolToObject(o, "correct", r[i].correct) &&
             cJSON_AddNumberToObject(o, "tokens", (double)r[i].tokens) &&
             cJSON_AddBoolToObject(o, "reflective", r[i].n_reflective > 0);
        char *line = ok ? cJSON_PrintUnformatted(o) : NULL;
        if ((ok = line != NULL)) {
            lm_strbuf_puts(&text, line);
            lm_strbuf_putn(&text, "\n", 1);
        }
        free(line);
        cJSON_Delete(o);
    }
    char *data = lm_strbuf_finish(&text);
    if (!ok || !data) {
        free(data);
        lm_err(LM_ENOMEM, "%s: out of memory building the details", path);
        return cli_fail(LM_ENOMEM);
    }
    int rc = lm_write_file_atomic(path, data, strlen(data));
    free(data);
    return rc ? cli_fail(rc) : 0;
}

static const char eval_usage[] =
    "usage: mergescope eval MODEL_DIR|RECIPE --bench FILE.jsonl [options]\n"
    "\n"
    "Answers every problem of the benchmark with greedy decoding and reports what\n"
    "the long-to-short paper reports: n, accuracy (the fraction answered right),\n"
    "mean_tokens (mean response length in generated tokens, the stop token not\n"
    "counted) and reflective (the fraction of responses containing wait,\n"
    "re-examine, double-check, let me check, recap, let me just verify or let me\n"
    "just check). A RECIPE is merged in memory first; nothing is written.\n"
    "\n"
    "The answer is the content of the last \\boxed{...} (after </think> when the\n"
    "response has one), else what follows the last \"The answer is\". Answers\n"
    "compare as numbers when both are one (integers exactly; decimals and\n"
    "fractions a/b within 1e-6 relative), otherwise as text without spaces.\n"
    "\n"
    "Options:\n"
    EVAL_OPTIONS_HELP
    "  --details FILE.jsonl   also write one line per problem: question, answer,\n"
    "                         response, extracted, correct, tokens, reflective\n"
    "                         (never over the benchmark, the model or the recipe)\n"
    "\n"
    "Ctrl-C stops the run and prints the numbers for the problems done so far.\n";

int cmd_eval(int argc, char **argv)
{
    static const struct option options[] = {
        EVAL_LONG_OPTIONS,
        { "details", required_argument, NULL, 'D' },
        { NULL, 0, NULL, 0 },
    };
    struct eval_opts o;
    eval_opts_init(&o);
    const char *details = NULL;
    int c, rc;
    if (cli_help_asked(argc, argv, EVAL_SHORT_OPTIONS, options, eval_usage))
        return CLI_EXIT_OK;
    while ((c = getopt_long(argc, argv, EVAL_SHORT_OPTIONS, options, NULL)) != -1) {
        if (c == 'D')
            rc = cli_path_option("eval", "--details", optarg, &details);
        else
            rc = eval_opts_parse(&o, "eval", c, optarg);
        if (rc)
            return rc;
    }
    if (optind >= argc)
        return cli_usage_error("eval", "eval needs a MODEL_DIR or RECIPE");
    if (optind + 1 < argc)
        return cli_usage_error("eval", "unexpected argument '%s'", argv[optind + 1]);
    if (!o.bench_path)
        return cli_usage_error("eval", "eval needs a benchmark (--bench FILE.jsonl)");
    const char *model_arg = argv[optind];
    if ((rc = cli_check_input(model_arg)) || (rc = cli_check_input(o.bench_path)))
        return rc;

    /* --details must not overwrite the benchmark (nor, see engine_open,
     * the model or recipe). */
    int err;
    if (details && (err = out_check(details, OUT_FILE, &o.bench_path, 1, false, NULL)))
        return cli_fail(err);

    struct eval_bench bench;
    if ((rc = eval_bench_load(o.bench_path, &bench)) < 0)
        return cli_fail(rc);
    size_t n_items = o.limit > 0 && (size_t)o.limit < bench.n ? (size_t)o.limit : bench.n;
    int n_jobs, tpj;
    eval_plan_jobs(&o, n_items, &n_jobs, &tpj);

    cli_install_interrupt();
    struct engine e;
    struct model_params mp = model_default_params();
    mp.n_threads = tpj;
    if ((rc = engine_open(&e, model_arg, mp, true, details, o.preview))) {
        eval_bench_deinit(&bench);
        return rc;
    }
    struct prompt_setup ps;
    struct eval_result *results = NULL;
    if ((rc = prompt_setup_init(&ps, &o, e.tok, e.tokenizer_dir, e.config)))
        goto out;
    if (!(results = lm_calloc(n_items, sizeof(*results)))) {
        rc = cli_fail(LM_ENOMEM);
        goto out;
    }
    double seconds = 0;
    int erc = eval_with_jobs(&e.model, e.config, &e.source, &n_jobs, &tpj, e.tok, &ps, &o, &bench, n_items,
                             cli_progress, NULL, results, &seconds);
    if (erc < 0 && erc != LM_ECANCELED) {
        rc = cli_fail(erc);
        goto out;
    }
    struct eval_summary s;
    eval_summarize(results, n_items, &s);
    if (o.format == CLI_FORMAT_JSON) {
        print_summary_json(stdout, &s);
        fputc('\n', stdout);
    } else {
        int w = (int)strlen(model_arg) > 24 ? (int)strlen(model_arg) : 24;
        printf("%-*s %6s %9s %12s %11s\n", w, "MODEL", "N", "ACCURACY", "MEAN_TOKENS", "REFLECTIVE");
        printf("%-*s %6zu %8.1f%% %12.1f %10.1f%%\n", w, model_arg, s.n, 100.0 * s.accuracy, s.mean_tokens,
               100.0 * s.reflective);
    }
    fflush(stdout);
    print_speed(results, n_items, seconds, n_jobs, tpj, o.max_new);
    if (details && (rc = write_details(details, &bench, results, n_items)))
        goto out;
    if (erc == LM_ECANCELED) {
        fprintf(stderr, "mergescope: error: interrupted after %zu of %zu problems (the numbers above "
                "cover those)\n", s.n, n_items);
        rc = cli_exit_status(LM_ECANCELED);
    }
    if (o.verbose)
        cli_print_memory_now();
out:
    if (results)
        eval_results_deinit(results, n_items);
    free(results);
    prompt_setup_deinit(&ps);
    engine_close(&e);
    eval_bench_deinit(&bench);
    return rc;
}

