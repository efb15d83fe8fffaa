/* mergescope eval and sweep: what the long-to-short paper measures, for one
 * model or for every combination of recipe settings merged in memory. */
#include "cmd_eval.h"

#include <errno.h>
#include <math.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "chat.h"
#include "cli.h"
#include "cmd_engine.h"
#include "eval.h"
#include "fsutil.h"
#include "generate.h"
#include "lm_error.h"
#include "merge_method.h"
#include "merged_source.h"
#include "pool.h"
#include "workspace.h"

/* ===== What eval and sweep share ===== */

enum out_format { OUT_TABLE, OUT_JSON };

struct eval_opts {
    const char *bench_path;
    long limit;                   /* 0: all */
    int64_t max_new;
    const char *chat_name;
    const char *prompt_template;  /* NULL: the default for the chat format */
    const char *system;           /* NULL: the chat template's default */
    int threads;                  /* 0: one per CPU */
    int jobs;                     /* 0: as many as threads */
    enum out_format format;
};

static void eval_opts_init(struct eval_opts *o)
{
    memset(o, 0, sizeof(*o));
    o->max_new = 512;
    o->chat_name = "auto";
    o->format = OUT_TABLE;
}

/* Options both commands take. 1 when `c` was one of them, 0 when not, or
 * an exit code (negated) for a bad value. */
static int eval_opts_parse(struct eval_opts *o, const char *cmd, int c, const char *arg)
{
    long n;
    switch (c) {
    case 'b': o->bench_path = arg; return 1;
    case 'l':
        if ((n = cli_parse_long(arg, 1, 1000000000)) < 0)
            return -cli_usage_error(cmd, "--limit must be a positive number");
        o->limit = n;
        return 1;
    case 'n':
        if ((n = cli_parse_long(arg, 1, 100000000)) < 0)
            return -cli_usage_error(cmd, "--max-new must be a positive number");
        o->max_new = n;
        return 1;
    case 'c': o->chat_name = arg; return 1;
    case 's': o->system = arg; return 1;
    case 'P':
        if (!strstr(arg, "{question}"))
            return -cli_usage_error(cmd, "--prompt-template must contain {question}");
        o->prompt_template = arg;
        return 1;
    case 't':
        if ((n = cli_parse_long(arg, 1, 1024)) < 0)
            return -cli_usage_error(cmd, "--threads must be a number from 1 to 1024");
        o->threads = (int)n;
        return 1;
    case 'j':
        if ((n = cli_parse_long(arg, 1, 1024)) < 0)
            return -cli_usage_error(cmd, "--jobs must be a number from 1 to 1024");
        o->jobs = (int)n;
        return 1;
    case 'f':
        if (strcmp(arg, "table") == 0)
            o->format = OUT_TABLE;
        else if (strcmp(arg, "json") == 0)
            o->format = OUT_JSON;
        else
            return -cli_usage_error(cmd, "--format must be table or json, not '%s'", arg);
        return 1;
    default:
        return 0;
    }
}

#define EVAL_LONG_OPTIONS \
    { "bench", required_argument, NULL, 'b' }, \
    { "limit", required_argument, NULL, 'l' }, \
    { "max-new", required_argument, NULL, 'n' }, \
    { "chat", required_argument, NULL, 'c' }, \
    { "prompt-template", required_argument, NULL, 'P' }, \
    { "system", required_argument, NULL, 's' }, \
    { "threads", required_argument, NULL, 't' }, \
    { "jobs", required_argument, NULL, 'j' }, \
    { "format", required_argument, NULL, 'f' }, \
    { "help", no_argument, NULL, 'h' }

#define EVAL_OPTIONS_HELP \
    "  --bench FILE.jsonl     problems, one {\"question\": ..., \"answer\": ...} per line\n" \
    "                         (required)\n" \
    "  --limit N              only the first N problems\n" \
    "  -n, --max-new N        generate at most N tokens per answer (default 512)\n" \
    "  --chat FORMAT          auto, none, chatml, deepseek-r1 or llama3 (default auto:\n" \
    "                         from tokenizer_config.json's chat template)\n" \
    "  --prompt-template T    the user message, with {question} where the question\n" \
    "                         goes (default for chat formats: the question, a new\n" \
    "                         line, then \"Please reason step by step, and put your\n" \
    "                         final answer within \\boxed{}.\"; for none: the question)\n" \
    "  --system TEXT          system prompt (default: the chat template's own, if any)\n" \
    "  --threads N            threads in all (default: one per CPU)\n" \
    "  --jobs J               problems decoded at once, each on its own copy of the\n" \
    "                         run state with N/J threads (default: N, or 1 for\n" \
    "                         models over 256 MB); the numbers do not depend on N or J\n" \
    "  --format table|json    output format (default table)\n" \
    "  -h, --help             this help\n"

/* How prompts are built and when answers stop, for one tokenizer. */
struct prompt_setup {
    struct chat_detected det;
    bool have_det;
    enum chat_format chat;
    const char *system;
    const char *prompt_template;
    struct tok_ids stops;
};

static void prompt_setup_deinit(struct prompt_setup *ps)
{
    if (ps->have_det)
        chat_detected_deinit(&ps->det);
    tok_ids_free(&ps->stops);
    memset(ps, 0, sizeof(*ps));
}

/* Detects the chat format (unless given), picks the system prompt and
 * template, and collects the stop ids: the chat format's and the config's
 * EOS ids. Prints the detected format on stderr. 0 or an exit code. */
static int prompt_setup_init(struct prompt_setup *ps, const struct eval_opts *o, const struct tok *t,
                             const char *tok_dir, const struct hf_config *cfg)
{
    memset(ps, 0, sizeof(*ps));
    bool chat_auto;
    if (chat_format_parse(o->chat_name, &ps->chat, &chat_auto) < 0)
        return cli_fail(LM_EINVAL);
    if (chat_detect_dir(tok_dir, &ps->det) < 0)
        return cli_fail(LM_EFORMAT);
    ps->have_det = true;
    if (chat_auto) {
        ps->chat = ps->det.format;
        fprintf(stderr, "mergescope: chat format %s (auto: %s)\n", chat_format_name(ps->chat), ps->det.reason);
    }
    ps->system = o->system ? o->system : chat_default_system(ps->chat, &ps->det);
    if (o->system && ps->chat == CHAT_FORMAT_NONE)
        fprintf(stderr, "mergescope: note: --system is ignored with chat format none\n");
    ps->prompt_template = o->prompt_template ? o->prompt_template
                          : ps->chat != CHAT_FORMAT_NONE ? EVAL_DEFAULT_TEMPLATE : NULL;
    if (chat_stop_ids(t, ps->chat, &ps->stops) < 0)
        return cli_fail(LM_ENOMEM);
    for (int i = 0; i < cfg->n_eos_token_ids; i++) {
        int32_t id = (int32_t)cfg->eos_token_ids[i];
        bool dup = false;
        for (size_t j = 0; j < ps->stops.n; j++)
            dup |= ps->stops.data[j] == id;
        if (!dup && tok_ids_push(&ps->stops, id) < 0)
            return cli_fail(LM_ENOMEM);
    }
    return 0;
}

/* Threads per model and number of models (jobs) for n_items problems. */
static void plan_jobs(const struct eval_opts *o, size_t n_items, int *n_jobs, int *threads_per_job)
{
    int threads = o->threads > 0 ? o->threads : pool_default_workers();
    int jobs = o->jobs > 0 ? o->jobs : threads;
    if ((size_t)jobs > n_items)
        jobs = (int)n_items;
    if (jobs < 1)
        jobs = 1;
    *n_jobs = jobs;
    *threads_per_job = threads / jobs > 0 ? threads / jobs : 1;
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Above this many bytes of weights per token, and unless --jobs says
 * otherwise, problems are decoded one at a time on all threads: decoding is
 * memory-bound, so it is about as fast, and it holds one KV cache (a long
 * answer of a 1.5B model takes hundreds of MB) instead of one per job. */
#define EVAL_JOBS_MAX_WEIGHT_BYTES ((uint64_t)256 << 20)

/* Evaluates a loaded model *first (and *n_jobs - 1 more copies loaded from
 * cfg/src) on the first n_items problems. A large model is reloaded on all
 * threads as one job (see above): *first, *n_jobs and *threads_per_job are
 * updated then. Returns 0, LM_ECANCELED (results hold what was done), or
 * another LM_E* code. */
static int run_eval(struct model **first, const struct hf_config *cfg, const struct model_source *src,
                    int *n_jobs_io, int *threads_per_job_io, const struct tok *t, const struct prompt_setup *ps,
                    const struct eval_opts *o, const struct eval_bench *bench, size_t n_items,
                    lm_progress_fn progress, void *ud, struct eval_result *results, double *seconds)
{
    if (o->jobs == 0 && *n_jobs_io > 1 && model_get_info(*first)->weight_bytes > EVAL_JOBS_MAX_WEIGHT_BYTES) {
        struct model_params all = model_default_params();
        all.n_threads = o->threads > 0 ? o->threads : pool_default_workers();
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
    double t0 = now_seconds();
    rc = eval_run(models, n_jobs, t, bench, n_items, &ep, progress, ud, results);
    *seconds = now_seconds() - t0;
    cli_progress_done();
out:
    for (int i = 1; i < n_models; i++)
        model_free(models[i]);
    free(models);
    return rc;
}

/* The shortest decimal that reads back to v, as JSON wants it. */
static const char *num(double v, char buf[static 40])
{
    recipe_format_number(v, buf, 40);
    return buf;
}

static void print_summary_json(FILE *f, const struct eval_summary *s)
{
    char a[40], b[40], c[40];
    fprintf(f, "{\"n\": %zu, \"accuracy\": %s, \"mean_tokens\": %s, \"reflective\": %s}", s->n,
            num(s->accuracy, a), num(s->mean_tokens, b), num(s->reflective, c));
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

/* Writes one JSON line per finished problem. 0 or an exit code. */
static int write_details(const char *path, const struct eval_bench *b, const struct eval_result *r, size_t n)
{
    char *tmp_path = NULL;
    size_t plen = strlen(path) + 8;
    if (!(tmp_path = lm_malloc(plen)))
        return cli_fail(LM_ENOMEM);
    snprintf(tmp_path, plen, "%s.tmp", path);
    FILE *f = fopen(tmp_path, "w");
    if (!f) {
        lm_err(LM_EIO, "%s: %s", tmp_path, strerror(errno));
        free(tmp_path);
        return cli_fail(LM_EIO);
    }
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
        ok = line && fprintf(f, "%s\n", line) >= 0;
        free(line);
        cJSON_Delete(o);
    }
    if (fclose(f) != 0)
        ok = false;
    if (!ok || rename(tmp_path, path) != 0) {
        lm_err(LM_EIO, "%s: cannot write the details (%s)", path, strerror(errno));
        remove(tmp_path);
        free(tmp_path);
        return cli_fail(LM_EIO);
    }
    free(tmp_path);
    return 0;
}

/* ===== eval ===== */

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
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "n:h", options, NULL)) != -1) {
        if (c == 'h') {
            fputs(eval_usage, stdout);
            return CLI_EXIT_OK;
        }
        if (c == 'D') {
            details = optarg;
            continue;
        }
        int r = eval_opts_parse(&o, "eval", c, optarg);
        if (r < 0)
            return -r;
        if (r == 0)
            return cli_usage_error("eval", "bad option");
    }
    if (optind >= argc)
        return cli_usage_error("eval", "eval needs a MODEL_DIR or RECIPE");
    if (optind + 1 < argc)
        return cli_usage_error("eval", "unexpected argument '%s'", argv[optind + 1]);
    if (!o.bench_path)
        return cli_usage_error("eval", "eval needs a benchmark (--bench FILE.jsonl)");
    enum chat_format fmt_check;
    bool auto_check;
    if (chat_format_parse(o.chat_name, &fmt_check, &auto_check) < 0)
        return cli_usage_error("eval", "%s", lm_last_error());
    const char *model_arg = argv[optind];

    struct eval_bench bench;
    int rc = eval_bench_load(o.bench_path, &bench);
    if (rc < 0)
        return cli_fail(rc);
    size_t n_items = o.limit > 0 && (size_t)o.limit < bench.n ? (size_t)o.limit : bench.n;
    int n_jobs, tpj;
    plan_jobs(&o, n_items, &n_jobs, &tpj);

    cli_install_interrupt();
    struct engine e;
    struct model_params mp = model_default_params();
    mp.n_threads = tpj;
    if ((rc = engine_open(&e, model_arg, mp, true))) {
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
    int erc = run_eval(&e.model, e.config, &e.source, &n_jobs, &tpj, e.tok, &ps, &o, &bench, n_items,
                       cli_progress, NULL, results, &seconds);
    if (erc < 0 && erc != LM_ECANCELED) {
        rc = cli_fail(erc);
        goto out;
    }
    struct eval_summary s;
    eval_summarize(results, n_items, &s);
    if (o.format == OUT_JSON) {
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
        rc = CLI_EXIT_FAILURE;
    }
out:
    if (results)
        eval_results_deinit(results, n_items);
    free(results);
    prompt_setup_deinit(&ps);
    engine_close(&e);
    eval_bench_deinit(&bench);
    return rc;
}

/* ===== sweep ===== */

enum vary_kind { VARY_METHOD, VARY_PARAM, VARY_MODEL_PARAM };

/* One --vary KEY=V1,V2,... */
struct vary {
    const char *key;          /* as given, for messages and column titles */
    enum vary_kind kind;
    char *model;              /* VARY_MODEL_PARAM */
    const struct merge_param_spec *spec;   /* VARY_PARAM, VARY_MODEL_PARAM */
    char **values;            /* as given */
    double *numbers;
    size_t n_values;
};

static void vary_deinit(struct vary *v)
{
    for (size_t i = 0; i < v->n_values; i++)
        free(v->values[i]);
    free(v->values);
    free(v->numbers);
    free(v->model);
}

static bool method_in_play(const struct recipe *r, const struct vary *vs, size_t n_vary,
                           enum merge_param_id id)
{
    for (size_t k = 0; k < n_vary; k++)
        if (vs[k].kind == VARY_METHOD) {
            for (size_t i = 0; i < vs[k].n_values; i++)
                if (merge_method_accepts(merge_method_find(vs[k].values[i]), id))
                    return true;
            return false;
        }
    const struct merge_method *m = r->method ? merge_method_find(r->method) : NULL;
    return m && merge_method_accepts(m, id);
}

/* Parses `text` (KEY=V1,V2,...) into *v against the recipe. 0 or an exit
 * code after printing an error that names the key. */
static int vary_parse(struct vary *v, const char *text, const struct recipe *r)
{
    memset(v, 0, sizeof(*v));
    const char *eq = strchr(text, '=');
    if (!eq || eq == text || !eq[1])
        return cli_usage_error("sweep", "--vary %s: expected KEY=V1,V2,...", text);
    char *key = lm_strndup(text, (size_t)(eq - text));
    if (!key)
        return cli_fail(LM_ENOMEM);
    v->key = text; /* printed up to '=' with %.*s */
    int rc = 0;
    const char *pname = NULL;
    if (strcmp(key, "method") == 0) {
        v->kind = VARY_METHOD;
    } else if (strncmp(key, "params.", 7) == 0) {
        v->kind = VARY_PARAM;
        pname = key + 7;
    } else if (strncmp(key, "models.", 7) == 0) {
        v->kind = VARY_MODEL_PARAM;
        const char *dot = strrchr(key + 7, '.');
        if (!dot || dot == key + 7 || !dot[1]) {
            rc = cli_usage_error("sweep", "--vary %s: expected models.NAME.PARAM", key);
            goto out;
        }
        if (!(v->model = lm_strndup(key + 7, (size_t)(dot - (key + 7))))) {
            rc = cli_fail(LM_ENOMEM);
            goto out;
        }
        if (!recipe_find_model(r, v->model)) {
            char names[512] = "";
            for (size_t i = 0; i < r->n_models; i++)
                snprintf(names + strlen(names), sizeof(names) - strlen(names), "%s%s", i ? ", " : "",
                         r->models[i].name);
            rc = cli_usage_error("sweep", "--vary %s: the recipe has no model '%s' (its models: %s)", key,
                                 v->model, names);
            goto out;
        }
        pname = dot + 1;
    } else {
        rc = cli_usage_error("sweep", "--vary %s: unknown key (use method, params.NAME or "
                             "models.NAME.PARAM)", key);
        goto out;
    }
    if (pname) {
        v->spec = merge_param_find(pname);
        if (!v->spec) {
            rc = cli_usage_error("sweep", "--vary %s: unknown parameter", key);
            goto out;
        }
        if (v->kind == VARY_MODEL_PARAM && !v->spec->per_model) {
            rc = cli_usage_error("sweep", "--vary %s: '%s' is not a per-model parameter (set it with "
                                 "params.%s)", key, pname, pname);
            goto out;
        }
        if (v->spec->kind == MERGE_PARAM_KIND_CHOICE) {
            rc = cli_usage_error("sweep", "--vary %s: choice parameters cannot be varied", key);
            goto out;
        }
    }
    /* The values. */
    const char *p = eq + 1;
    for (;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        if (len == 0) {
            rc = cli_usage_error("sweep", "--vary %s: empty value in '%s'", key, eq + 1);
            goto out;
        }
        char **vals = lm_realloc_array(v->values, v->n_values + 1, sizeof(*vals));
        double *nums = vals ? lm_realloc_array(v->numbers, v->n_values + 1, sizeof(*nums)) : NULL;
        if (vals)
            v->values = vals;
        if (nums)
            v->numbers = nums;
        if (!vals || !nums || !(v->values[v->n_values] = lm_strndup(p, len))) {
            rc = cli_fail(LM_ENOMEM);
            goto out;
        }
        const char *val = v->values[v->n_values++];
        double d = 0;
        if (v->kind == VARY_METHOD) {
            if (!merge_method_find(val)) {
                char names[512] = "";
                for (const struct merge_method *const *m = merge_methods; *m; m++)
                    snprintf(names + strlen(names), sizeof(names) - strlen(names), "%s%s",
                             m == merge_methods ? "" : ", ", (*m)->name);
                rc = cli_usage_error("sweep", "--vary method: unknown method '%s' (known: %s)", val, names);
                goto out;
            }
        } else if (v->spec->kind == MERGE_PARAM_KIND_BOOL) {
            if (strcmp(val, "true") == 0)
                d = 1;
            else if (strcmp(val, "false") == 0)
                d = 0;
            else {
                rc = cli_usage_error("sweep", "--vary %s: '%s' is not true or false", key, val);
                goto out;
            }
        } else {
            char *end;
            d = strtod(val, &end);
            if (end == val || *end || !isfinite(d)) {
                rc = cli_usage_error("sweep", "--vary %s: '%s' is not a number", key, val);
                goto out;
            }
            if (d < v->spec->min || d > v->spec->max ||
                (v->spec->kind == MERGE_PARAM_KIND_INT && d != (double)(long long)d)) {
                rc = cli_usage_error("sweep", "--vary %s: %s is out of range (%s from %g to %g)", key, val,
                                     v->spec->kind == MERGE_PARAM_KIND_INT ? "an integer" : "a number",
                                     v->spec->min, v->spec->max);
                goto out;
            }
        }
        v->numbers[v->n_values - 1] = d;
        if (!comma)
            break;
        p = comma + 1;
    }
out:
    free(key);
    return rc;
}

static int key_len(const struct vary *v)
{
    return (int)(strchr(v->key, '=') - v->key);
}

/* Drops from params[0..*n) the parameters method `m` does not take. */
static void drop_untaken(struct recipe_param *params, size_t *n, const struct merge_method *m)
{
    size_t w = 0;
    for (size_t i = 0; i < *n; i++) {
        const struct merge_param_spec *spec = merge_param_find(params[i].name);
        if (spec && !merge_method_accepts(m, spec->id)) {
            free(params[i].name);
            recipe_value_deinit(&params[i].value);
            continue;
        }
        params[w++] = params[i];
    }
    *n = w;
}

/* The method combination `combo` uses. */
static const struct merge_method *combo_method(const struct recipe *r, const struct vary *vs, size_t n_vary,
                                               const size_t *combo)
{
    for (size_t k = 0; k < n_vary; k++)
        if (vs[k].kind == VARY_METHOD)
            return merge_method_find(vs[k].values[combo[k]]);
    return r->method ? merge_method_find(r->method) : NULL;
}

/* False when --vary k sets a parameter the combination's method ignores. */
static bool combo_uses(const struct recipe *r, const struct vary *vs, size_t n_vary, const size_t *combo,
                       size_t k)
{
    if (vs[k].kind == VARY_METHOD)
        return true;
    const struct merge_method *m = combo_method(r, vs, n_vary, combo);
    return !m || merge_method_accepts(m, vs[k].spec->id);
}

/* A copy of `r` with combination `combo` (value index per --vary) applied,
 * or NULL after printing an error. When the method is varied, the global
 * and per-model parameters a combination's method does not take are left
 * out of it (so that ties' density does not stop task_arithmetic). */
static struct recipe *apply_combo(const struct recipe *r, const struct vary *vs, size_t n_vary,
                                  const size_t *combo)
{
    struct recipe *c = recipe_clone(r);
    if (!c) {
        cli_fail(LM_ENOMEM);
        return NULL;
    }
    for (size_t k = 0; k < n_vary; k++) {
        const struct vary *v = &vs[k];
        const char *val = v->values[combo[k]];
        double d = v->numbers[combo[k]];
        int rc = 0;
        if (v->kind == VARY_METHOD) {
            char *m = lm_strdup(val);
            if (!m)
                rc = LM_ENOMEM;
            else {
                free(c->method);
                c->method = m;
            }
        } else {
            struct recipe_param **params = &c->params;
            size_t *n = &c->n_params;
            if (v->kind == VARY_MODEL_PARAM) {
                for (size_t i = 0; i < c->n_models; i++)
                    if (strcmp(c->models[i].name, v->model) == 0) {
                        params = &c->models[i].params;
                        n = &c->models[i].n_params;
                    }
            }
            rc = v->spec->kind == MERGE_PARAM_KIND_BOOL ? recipe_set_bool(params, n, v->spec->name, d != 0)
                                                         : recipe_set_number(params, n, v->spec->name, d);
        }
        if (rc < 0) {
            cli_fail(rc);
            recipe_free(c);
            return NULL;
        }
    }
    bool method_varied = false;
    for (size_t k = 0; k < n_vary; k++)
        method_varied |= vs[k].kind == VARY_METHOD;
    const struct merge_method *m = method_varied ? merge_method_find(c->method) : NULL;
    if (m) {
        drop_untaken(c->params, &c->n_params, m);
        for (size_t i = 0; i < c->n_models; i++)
            drop_untaken(c->models[i].params, &c->models[i].n_params, m);
    }
    return c;
}

/* Advances `combo` to the next combination (the last --vary changes
 * fastest); false after the last. */
static bool combo_next(size_t *combo, const struct vary *vs, size_t n_vary)
{
    for (size_t k = n_vary; k-- > 0;) {
        if (++combo[k] < vs[k].n_values)
            return true;
        combo[k] = 0;
    }
    return false;
}

/* Progress over the whole sweep: step `index` of `n_steps`. */
struct sweep_progress {
    size_t index, n_steps;
    char label[64];
};

static bool sweep_on_progress(double frac, const char *what, void *ud)
{
    (void)what;
    struct sweep_progress *sp = ud;
    return cli_progress(((double)sp->index + frac) / (double)sp->n_steps, sp->label, NULL);
}

struct sweep_row {
    size_t *combo;
    struct eval_summary s;
    double seconds;
};

/* Prints `len` bytes of `text` as a JSON string. */
static void print_json_string(const char *text, size_t len)
{
    char *copy = lm_strndup(text, len);
    cJSON *s = copy ? cJSON_CreateString(copy) : NULL;
    char *q = s ? cJSON_PrintUnformatted(s) : NULL;
    fputs(q ? q : "null", stdout);
    free(q);
    cJSON_Delete(s);
    free(copy);
}

static void print_sweep(const struct recipe *recipe, const struct vary *vs, size_t n_vary, const struct sweep_row *rows, size_t n_rows,
                        const char *ref_label, const struct eval_summary *ref, enum out_format format)
{
    char a[40], b[40], c[40], d[40];
    if (format == OUT_JSON) {
        printf("{\n  \"reference\": {\"model\": ");
        print_json_string(ref_label, strlen(ref_label));
        printf(", \"n\": %zu, \"accuracy\": %s, \"mean_tokens\": %s, \"reflective\": %s},\n",
               ref->n, num(ref->accuracy, a), num(ref->mean_tokens, b), num(ref->reflective, c));
        printf("  \"rows\": [");
        for (size_t i = 0; i < n_rows; i++) {
            const struct sweep_row *r = &rows[i];
            printf("%s\n    {\"settings\": {", i ? "," : "");
            for (size_t k = 0; k < n_vary; k++) {
                const struct vary *v = &vs[k];
                fputs(k ? ", " : "", stdout);
                print_json_string(v->key, (size_t)key_len(v));
                fputs(": ", stdout);
                if (!combo_uses(recipe, vs, n_vary, r->combo, k))
                    printf("null");
                else if (v->kind == VARY_METHOD)
                    printf("\"%s\"", v->values[r->combo[k]]);
                else if (v->spec->kind == MERGE_PARAM_KIND_BOOL)
                    printf("%s", v->numbers[r->combo[k]] != 0 ? "true" : "false");
                else
                    printf("%s", num(v->numbers[r->combo[k]], a));
            }
            double change = ref->mean_tokens > 0 ? (r->s.mean_tokens - ref->mean_tokens) / ref->mean_tokens : 0;
            printf("}, \"n\": %zu, \"accuracy\": %s, \"mean_tokens\": %s, \"length_change\": %s, "
                   "\"reflective\": %s}", r->s.n, num(r->s.accuracy, a), num(r->s.mean_tokens, b),
                   num(change, d), num(r->s.reflective, c));
        }
        printf("%s]\n}\n", n_rows ? "\n  " : "");
        fflush(stdout);
        return;
    }
    /* Table: one column per --vary, then the numbers. */
    int width[64];
    for (size_t k = 0; k < n_vary; k++) {
        width[k] = key_len(&vs[k]);
        for (size_t i = 0; i < vs[k].n_values; i++)
            if ((int)strlen(vs[k].values[i]) > width[k])
                width[k] = (int)strlen(vs[k].values[i]);
    }
    printf("reference %s: n %zu, accuracy %.1f%%, mean tokens %.1f, reflective %.1f%%\n", ref_label, ref->n,
           100.0 * ref->accuracy, ref->mean_tokens, 100.0 * ref->reflective);
    for (size_t k = 0; k < n_vary; k++)
        printf("%-*.*s  ", width[k], key_len(&vs[k]), vs[k].key);
    printf("%6s %9s %12s %9s %11s\n", "N", "ACCURACY", "MEAN_TOKENS", "LENGTH", "REFLECTIVE");
    for (size_t i = 0; i < n_rows; i++) {
        const struct sweep_row *r = &rows[i];
        for (size_t k = 0; k < n_vary; k++)
            printf("%-*s  ", width[k],
                   combo_uses(recipe, vs, n_vary, r->combo, k) ? vs[k].values[r->combo[k]] : "-");
        double change = ref->mean_tokens > 0 ? (r->s.mean_tokens - ref->mean_tokens) / ref->mean_tokens : 0;
        printf("%6zu %8.1f%% %12.1f %+8.1f%% %10.1f%%\n", r->s.n, 100.0 * r->s.accuracy, r->s.mean_tokens,
               100.0 * change, 100.0 * r->s.reflective);
    }
    fflush(stdout);
}

static const char sweep_usage[] =
    "usage: mergescope sweep RECIPE --vary KEY=V1,V2,... [--vary ...] --bench FILE.jsonl [options]\n"
    "\n"
    "Evaluates (as `mergescope eval` does) every combination of the --vary values,\n"
    "each merged in memory from RECIPE (nothing is written; only the tensors a\n"
    "change affects are merged again), and prints one row per combination:\n"
    "the settings, accuracy, mean tokens, the change in mean length against the\n"
    "reference model, and the share of reflective responses.\n"
    "\n"
    "KEY is one of\n"
    "  method               a merge method name (ties, task_arithmetic, ...)\n"
    "  params.NAME          a global parameter (lambda, density, normalize, ...)\n"
    "  models.NAME.PARAM    a per-model parameter (models.long.weight)\n"
    "Numbers, or true/false for switches. The last --vary changes fastest.\n"
    "\n"
    "Options:\n"
    "  --vary KEY=V1,V2,...   values to try (at least one --vary)\n"
    "  --reference MODEL_DIR  the model lengths are compared with, evaluated once\n"
    "                         (default: the recipe's first model, which in a\n"
    "                         long-to-short recipe is the long model, as the paper\n"
    "                         measures length change against R1)\n"
    EVAL_OPTIONS_HELP
    "\n"
    "The reference is evaluated with its own tokenizer and chat format, exactly as\n"
    "`mergescope eval MODEL_DIR` would; the merges with the tokenizer of the\n"
    "recipe's output.tokenizer_from model. Ctrl-C prints the rows done so far.\n";

#define SWEEP_MAX_VARY 16
#define SWEEP_MAX_COMBOS 100000

int cmd_sweep(int argc, char **argv)
{
    static const struct option options[] = {
        EVAL_LONG_OPTIONS,
        { "vary", required_argument, NULL, 'V' },
        { "reference", required_argument, NULL, 'R' },
        { NULL, 0, NULL, 0 },
    };
    struct eval_opts o;
    eval_opts_init(&o);
    const char *vary_text[SWEEP_MAX_VARY];
    size_t n_vary = 0;
    const char *reference = NULL;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "n:h", options, NULL)) != -1) {
        if (c == 'h') {
            fputs(sweep_usage, stdout);
            return CLI_EXIT_OK;
        }
        if (c == 'V') {
            if (n_vary == SWEEP_MAX_VARY)
                return cli_usage_error("sweep", "at most %d --vary options", SWEEP_MAX_VARY);
            vary_text[n_vary++] = optarg;
            continue;
        }
        if (c == 'R') {
            reference = optarg;
            continue;
        }
        int r = eval_opts_parse(&o, "sweep", c, optarg);
        if (r < 0)
            return -r;
        if (r == 0)
            return cli_usage_error("sweep", "bad option");
    }
    if (optind >= argc)
        return cli_usage_error("sweep", "sweep needs a RECIPE");
    if (optind + 1 < argc)
        return cli_usage_error("sweep", "unexpected argument '%s'", argv[optind + 1]);
    if (!o.bench_path)
        return cli_usage_error("sweep", "sweep needs a benchmark (--bench FILE.jsonl)");
    if (n_vary == 0)
        return cli_usage_error("sweep", "sweep needs at least one --vary KEY=V1,V2,...");
    enum chat_format fmt_check;
    bool auto_check;
    if (chat_format_parse(o.chat_name, &fmt_check, &auto_check) < 0)
        return cli_usage_error("sweep", "%s", lm_last_error());
    const char *recipe_path = argv[optind];
    if (!lm_is_file(recipe_path)) {
        lm_err(lm_is_dir(recipe_path) ? LM_EFORMAT : LM_EIO, "%s: %s", recipe_path,
               lm_is_dir(recipe_path) ? "sweep takes a recipe file, not a model directory" : "no such file");
        return cli_fail(lm_is_dir(recipe_path) ? LM_EFORMAT : LM_EIO);
    }

    /* Everything below is released at `out`. */
    int rc = 0;
    struct recipe *recipe = NULL;
    struct vary vs[SWEEP_MAX_VARY];
    size_t n_vs = 0;
    struct eval_bench bench = { 0 };
    struct workspace *ws = NULL;
    struct tok *tok = NULL;
    char *ref_dir = NULL;
    struct eval_result *results = NULL;
    struct sweep_row *rows = NULL;
    size_t *combos = NULL;
    struct prompt_setup ps = { 0 };
    size_t n_items = 0, n_rows = 0, n_combos = 1;
    struct eval_summary ref_summary = { 0 };

    if (!(recipe = cli_load_recipe(recipe_path)))
        return CLI_EXIT_BAD_INPUT;
    for (; n_vs < n_vary; n_vs++) {
        if ((rc = vary_parse(&vs[n_vs], vary_text[n_vs], recipe))) {
            vary_deinit(&vs[n_vs]);
            goto out;
        }
        for (size_t k = 0; k < n_vs; k++)
            if (key_len(&vs[k]) == key_len(&vs[n_vs]) &&
                strncmp(vs[k].key, vs[n_vs].key, (size_t)key_len(&vs[k])) == 0) {
                rc = cli_usage_error("sweep", "--vary %.*s is given twice", key_len(&vs[k]), vs[k].key);
                vary_deinit(&vs[n_vs]);
                goto out;
            }
        if (n_combos > SWEEP_MAX_COMBOS / vs[n_vs].n_values) {
            rc = cli_usage_error("sweep", "more than %d combinations", SWEEP_MAX_COMBOS);
            vary_deinit(&vs[n_vs]);
            goto out;
        }
        n_combos *= vs[n_vs].n_values;
    }
    for (size_t k = 0; k < n_vs; k++)
        if (vs[k].kind != VARY_METHOD && !method_in_play(recipe, vs, n_vs, vs[k].spec->id)) {
            rc = cli_usage_error("sweep", "--vary %.*s: no merge method in this sweep takes '%s'", key_len(&vs[k]),
                                 vs[k].key, vs[k].spec->name);
            goto out;
        }
    if (recipe->n_models == 0) {
        lm_err(LM_EFORMAT, "%s: the recipe names no models", recipe_path);
        rc = cli_fail(LM_EFORMAT);
        goto out;
    }
    if ((rc = eval_bench_load(o.bench_path, &bench)) < 0) {
        rc = cli_fail(rc);
        goto out;
    }
    n_items = o.limit > 0 && (size_t)o.limit < bench.n ? (size_t)o.limit : bench.n;
    int n_jobs, tpj;
    plan_jobs(&o, n_items, &n_jobs, &tpj);

    /* One workspace for every combination. Check all of them before any
     * evaluation, so that a bad value does not surface hours in. */
    struct ws_params wp = ws_default_params();
    wp.n_threads = o.threads;
    if (!(ws = ws_open(recipe, wp))) {
        rc = cli_fail(LM_EFORMAT);
        goto out;
    }
    cli_print_notes(ws_notes(ws));
    if (!(combos = lm_calloc(n_combos * n_vs, sizeof(*combos))) ||
        !(rows = lm_calloc(n_combos, sizeof(*rows))) ||
        !(results = lm_calloc(n_items, sizeof(*results)))) {
        rc = cli_fail(LM_ENOMEM);
        goto out;
    }
    for (size_t i = 1; i < n_combos; i++) {
        memcpy(combos + i * n_vs, combos + (i - 1) * n_vs, n_vs * sizeof(*combos));
        combo_next(combos + i * n_vs, vs, n_vs);
    }
    for (size_t i = 0; i < n_combos; i++) {
        struct recipe *r = apply_combo(recipe, vs, n_vs, combos + i * n_vs);
        if (!r) {
            rc = CLI_EXIT_FAILURE;
            goto out;
        }
        int src = ws_set_recipe(ws, r, NULL);
        recipe_free(r);
        if (src < 0) {
            char setting[512] = "";
            for (size_t k = 0; k < n_vs; k++)
                snprintf(setting + strlen(setting), sizeof(setting) - strlen(setting), "%s%.*s=%s",
                         k ? ", " : "", key_len(&vs[k]), vs[k].key, vs[k].values[combos[i * n_vs + k]]);
            lm_err_context(src, "sweep setting %s", setting);
            rc = cli_fail(src);
            goto out;
        }
    }

    cli_install_interrupt();
    struct sweep_progress sp = { 0, n_combos + 1, "" };

    /* The reference, evaluated once, as `eval` would. */
    if (!(ref_dir = reference ? lm_strdup(reference) : recipe_resolve_path(recipe, recipe->models[0].path))) {
        rc = cli_fail(LM_ENOMEM);
        goto out;
    }
    fprintf(stderr, "mergescope: reference %s\n", ref_dir);
    {
        /* A reference directory without a tokenizer uses the merges'. */
        char *tj = lm_path_join(ref_dir, "tokenizer.json");
        bool own_tok = !tj || lm_is_file(tj) || !lm_is_dir(ref_dir);
        free(tj);
        struct engine e;
        struct model_params mp = model_default_params();
        mp.n_threads = tpj;
        if ((rc = engine_open(&e, ref_dir, mp, own_tok)))
            goto out;
        const char *ref_tok_dir = own_tok ? e.tokenizer_dir : ws_tokenizer_dir(ws);
        if (!own_tok) {
            fprintf(stderr, "mergescope: note: %s has no tokenizer.json; using %s's\n", ref_dir, ref_tok_dir);
            if (!(e.tok = tok_load(ref_tok_dir))) {
                engine_close(&e);
                rc = cli_fail(LM_EFORMAT);
                goto out;
            }
        }
        struct prompt_setup rps;
        if ((rc = prompt_setup_init(&rps, &o, e.tok, ref_tok_dir, e.config))) {
            engine_close(&e);
            goto out;
        }
        snprintf(sp.label, sizeof(sp.label), "reference");
        double seconds = 0;
        int ref_jobs = n_jobs, ref_tpj = tpj;
        int erc = run_eval(&e.model, e.config, &e.source, &ref_jobs, &ref_tpj, e.tok, &rps, &o, &bench, n_items,
                           sweep_on_progress, &sp, results, &seconds);
        eval_summarize(results, n_items, &ref_summary);
        eval_results_deinit(results, n_items);
        prompt_setup_deinit(&rps);
        engine_close(&e);
        if (erc == LM_ECANCELED) {
            fprintf(stderr, "mergescope: error: interrupted while evaluating the reference\n");
            rc = CLI_EXIT_FAILURE;
            goto out;
        }
        if (erc < 0) {
            rc = cli_fail(erc);
            goto out;
        }
    }

    /* The merges share the workspace's tokenizer. */
    if (!(tok = tok_load(ws_tokenizer_dir(ws)))) {
        rc = cli_fail(LM_EFORMAT);
        goto out;
    }
    bool have_ps = false;
    bool cancelled = false;
    for (size_t i = 0; i < n_combos && !cancelled; i++) {
        sp.index = i + 1;
        snprintf(sp.label, sizeof(sp.label), "setting %zu/%zu", i + 1, n_combos);
        struct recipe *r = apply_combo(recipe, vs, n_vs, combos + i * n_vs);
        if (!r) {
            rc = CLI_EXIT_FAILURE;
            break;
        }
        int src = ws_set_recipe(ws, r, NULL);
        recipe_free(r);
        struct hf_config cfg;
        bool have_cfg = false;
        if (!src)
            src = cli_calibrate(ws, false);
        if (!src)
            src = ws_merge_all(ws, NULL, NULL);
        if (!src && !(src = ws_output_config(ws, &cfg)))
            have_cfg = true;
        if (!src && !have_ps) {
            if ((rc = prompt_setup_init(&ps, &o, tok, ws_tokenizer_dir(ws), &cfg))) {
                hf_config_deinit(&cfg);
                break;
            }
            have_ps = true;
        }
        struct model *first = NULL;
        struct model_source msrc = ws_model_source(ws);
        if (!src) {
            struct model_params mp = model_default_params();
            mp.n_threads = tpj;
            if (!(first = model_load(&cfg, &msrc, mp)))
                src = LM_EFORMAT;
        }
        double seconds = 0;
        if (!src) {
            int jobs = n_jobs, threads = tpj;
            src = run_eval(&first, &cfg, &msrc, &jobs, &threads, tok, &ps, &o, &bench, n_items, sweep_on_progress,
                           &sp, results, &seconds);
        }
        /* The model holds views into the workspace's cache: free it before
         * the next ws_set_recipe. */
        model_free(first);
        if (have_cfg)
            hf_config_deinit(&cfg);
        if (src == LM_ECANCELED || (src == 0 && cli_interrupted())) {
            cancelled = true;
        } else if (src < 0) {
            rc = cli_fail(src);
            eval_results_deinit(results, n_items);
            break;
        } else {
            rows[n_rows].combo = combos + i * n_vs;
            eval_summarize(results, n_items, &rows[n_rows].s);
            rows[n_rows].seconds = seconds;
            n_rows++;
        }
        eval_results_deinit(results, n_items);
    }
    cli_progress_done();
    if (rc == 0 || n_rows > 0)
        print_sweep(recipe, vs, n_vs, rows, n_rows, ref_dir, &ref_summary, o.format);
    if (cancelled) {
        fprintf(stderr, "mergescope: error: interrupted after %zu of %zu settings (rows above)\n", n_rows,
                n_combos);
        rc = CLI_EXIT_FAILURE;
    }
out:
    cli_progress_done();
    prompt_setup_deinit(&ps);
    free(results);
    free(rows);
    free(combos);
    free(ref_dir);
    tok_free(tok);
    ws_free(ws);
    eval_bench_deinit(&bench);
    for (size_t k = 0; k < n_vs; k++)
        vary_deinit(&vs[k]);
    recipe_free(recipe);
    return rc;
}
