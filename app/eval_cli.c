/* What eval and sweep share: options, prompt setup, jobs, one evaluation. */
#include "eval_cli.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "lm_error.h"
#include "pool.h"
#include "recipe.h"

/* ===== Options ===== */

void eval_opts_init(struct eval_opts *o)
{
    memset(o, 0, sizeof(*o));
    o->max_new = 512;
    o->chat = CHAT_FORMAT_NONE;
    o->chat_auto = true;
    o->format = CLI_FORMAT_TABLE;
    o->preview = WS_PREVIEW_OUTPUT;
}

int eval_opts_parse(struct eval_opts *o, const char *cmd, int c, const char *arg)
{
    long n;
    int rc = 0;
    switch (c) {
    case 'b': return cli_path_option(cmd, "--bench", arg, &o->bench_path);
    case 'l':
        if (!(rc = cli_parse_long_option(cmd, "--limit", arg, 1, 1000000000, &n)))
            o->limit = n;
        return rc;
    case 'n': return cli_parse_max_new(cmd, arg, &o->max_new);
    case 'c': return cli_parse_chat(cmd, arg, &o->chat, &o->chat_auto);
    case 's': o->system = arg; return 0;
    case 'P':
        if (!strstr(arg, "{question}"))
            return cli_usage_error(cmd, "--prompt-template must contain {question}");
        o->prompt_template = arg;
        return 0;
    case 't': return cli_parse_threads(cmd, arg, &o->threads);
    case 'j':
        if (!(rc = cli_parse_long_option(cmd, "--jobs", arg, 1, 1024, &n)))
            o->jobs = (int)n;
        return rc;
    case 'f': return cli_parse_format(cmd, arg, false, &o->format);
    case 'Q': return cli_parse_preview_dtype(cmd, arg, &o->preview);
    case 'v': o->verbose = true; return 0;
    default: return cli_usage_error(cmd, "bad option");
    }
}

/* ===== Prompts ===== */

void prompt_setup_deinit(struct prompt_setup *ps)
{
    if (ps->have_det)
        chat_detected_deinit(&ps->det);
    tok_ids_free(&ps->stops);
    memset(ps, 0, sizeof(*ps));
}

int prompt_setup_init(struct prompt_setup *ps, const struct eval_opts *o, const struct tok *t,
                      const char *tok_dir, const struct hf_config *cfg)
{
    memset(ps, 0, sizeof(*ps));
    ps->chat = o->chat;
    if (chat_detect_dir(tok_dir, &ps->det) < 0)
        return cli_fail(LM_EFORMAT);
    ps->have_det = true;
    if (o->chat_auto) {
        ps->chat = ps->det.format;
        fprintf(stderr, "mergescope: chat format %s (auto: %s)\n", chat_format_name(ps->chat), ps->det.reason);
    }
    ps->system = o->system ? o->system : chat_default_system(ps->chat, &ps->det);
    if (o->system && ps->chat == CHAT_FORMAT_NONE)
        fprintf(stderr, "mergescope: note: --system is ignored with chat format none\n");
    ps->prompt_template = o->prompt_template ? o->prompt_template
                          : ps->chat != CHAT_FORMAT_NONE ? EVAL_DEFAULT_TEMPLATE : NULL;
    if (chat_stop_ids(t, ps->chat, cfg, &ps->stops) < 0)
        return cli_fail(LM_ENOMEM);
    return 0;
}

/* ===== Running ===== */

/* --threads, or one per CPU. */
static int total_threads(const struct eval_opts *o)
{
    return o->threads > 0 ? o->threads : pool_default_workers();
}

void eval_plan_jobs(const struct eval_opts *o, size_t n_items, int *n_jobs, int *threads_per_job)
{
    int threads = total_threads(o);
    int jobs = o->jobs > 0 ? o->jobs : threads;
    if ((size_t)jobs > n_items)
        jobs = (int)n_items;
    if (jobs < 1)
        jobs = 1;
    *n_jobs = jobs;
    *threads_per_job = threads / jobs > 0 ? threads / jobs : 1;
}

/* Above this many bytes of weights per token, and unless --jobs says
 * otherwise, problems are decoded one at a time on all threads: decoding is
 * memory-bound, so it is about as fast, and it holds one KV cache (a long
 * answer of a 1.5B model takes hundreds of MB) instead of one per job. */
#define EVAL_JOBS_MAX_WEIGHT_BYTES ((uint64_t)256 << 20)

int eval_with_jobs(struct model **first, const struct hf_config *cfg, const struct model_source *src,
                   int *n_jobs_io, int *threads_per_job_io, const struct tok *t, const struct prompt_setup *ps,
                   const struct eval_opts *o, const struct eval_bench *bench, size_t n_items,
                   lm_progress_fn progress, void *ud, struct eval_result *results, double *seconds)
{
    if (o->jobs == 0 && *n_jobs_io > 1 && model_get_info(*first)->weight_bytes > EVAL_JOBS_MAX_WEIGHT_BYTES) {
        struct model_params all = model_default_params();
        all.n_threads = total_threads(o);
        struct model *m = model_load(cfg, src, all);
        if (!m)
            return LM_EFORMAT;
        model_free(*first);
        *first = m;
        *n_jobs_io = 1;
        *threads_per_job_io = all.n_threads;
    }
    int n_jobs = *n_jobs_io, threads_per_job = *threads_per_job_io;
    struct model **models = lm_calloc((size_t)n_jobs, sizeof(*models));
    if (!models)
        return LM_ENOMEM;
    models[0] = *first;
    struct model_params mp = model_default_params();
    mp.n_threads = threads_per_job;
    int rc = 0, n_models = 1;
    for (; n_models < n_jobs; n_models++) {
        if (!(models[n_models] = model_load(cfg, src, mp))) {
            rc = LM_EFORMAT;
            goto out;
        }
    }
    struct eval_params ep = {
        .prompt_template = ps->prompt_template,
        .chat = ps->chat,
        .system = ps->system,
        .max_new_tokens = o->max_new,
        .stop_ids = ps->stops.data,
        .n_stop_ids = ps->stops.n,
    };
    double t0 = lm_now_seconds();
    rc = eval_run(models, n_jobs, t, bench, n_items, &ep, progress, ud, results);
    *seconds = lm_now_seconds() - t0;
    cli_progress_done();
out:
    for (int i = 1; i < n_models; i++)
        model_free(models[i]);
    free(models);
    return rc;
}

const char *eval_json_number(double v, char buf[static 40])
{
    recipe_format_number(v, buf, 40);
    return buf;
}
