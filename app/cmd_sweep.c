/* mergescope sweep: `eval` of every combination of --vary values, each
 * merged in memory from one recipe, with one row per combination against a
 * reference model.
 *
 * cmd_sweep() runs the steps in order, each a function below: parse the
 * command line (sweep_parse_args), expand the --vary values into checked
 * combinations (sweep_expand, sweep_check_combos), evaluate the reference
 * (sweep_eval_reference) and every combination (sweep_eval_combos), print
 * the rows (print_sweep_table, print_sweep_json). */
#include "cmd_sweep.h"

#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "cli.h"
#include "cmd_engine.h"
#include "eval_cli.h"
#include "fsutil.h"
#include "lm_error.h"
#include "merge_method.h"
#include "merged_source.h"
#include "workspace.h"

#define SWEEP_MAX_VARY 16
#define SWEEP_MAX_COMBOS 100000

/* ===== --vary KEY=V1,V2,... ===== */

enum vary_kind { VARY_METHOD, VARY_PARAM, VARY_MODEL_PARAM };

/* One --vary KEY=V1,V2,... */
struct vary {
    char *key;                /* KEY, for messages and column titles */
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
    free(v->key);
}

/* True when a method this sweep can use (one of --vary method's values,
 * else the recipe's) takes parameter `id`. */
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

/* Sets v->kind, v->model and v->spec from v->key, checked against the
 * recipe. 0, or an exit status after printing an error that names the key. */
static int vary_parse_key(struct vary *v, const struct recipe *r)
{
    const char *key = v->key, *pname = NULL;
    if (strcmp(key, "method") == 0) {
        v->kind = VARY_METHOD;
        return 0;
    }
    if (strncmp(key, "params.", 7) == 0) {
        v->kind = VARY_PARAM;
        pname = key + 7;
    } else if (strncmp(key, "models.", 7) == 0) {
        v->kind = VARY_MODEL_PARAM;
        const char *dot = strrchr(key + 7, '.');
        if (!dot || dot == key + 7 || !dot[1])
            return cli_usage_error("sweep", "--vary %s: expected models.NAME.PARAM", key);
        if (!(v->model = lm_strndup(key + 7, (size_t)(dot - (key + 7)))))
            return cli_fail(LM_ENOMEM);
        if (!recipe_find_model(r, v->model)) {
            char names[512] = "";
            for (size_t i = 0; i < r->n_models; i++)
                snprintf(names + strlen(names), sizeof(names) - strlen(names), "%s%s", i ? ", " : "",
                         r->models[i].name);
            return cli_usage_error("sweep", "--vary %s: the recipe has no model '%s' (its models: %s)", key,
                                   v->model, names);
        }
        pname = dot + 1;
    } else {
        return cli_usage_error("sweep", "--vary %s: unknown key (use method, params.NAME or "
                               "models.NAME.PARAM)", key);
    }
    if (!(v->spec = merge_param_find(pname)))
        return cli_usage_error("sweep", "--vary %s: unknown parameter", key);
    if (v->kind == VARY_MODEL_PARAM && !v->spec->per_model)
        return cli_usage_error("sweep", "--vary %s: '%s' is not a per-model parameter (set it with "
                               "params.%s)", key, pname, pname);
    if (v->spec->kind == MERGE_PARAM_KIND_CHOICE)
        return cli_usage_error("sweep", "--vary %s: choice parameters cannot be varied", key);
    return 0;
}

/* Checks one value `val` of --vary v->key (kind and spec set) and stores
 * its number in *d (1 or 0 for true or false; 0 for a method). 0, or an
 * exit status after printing an error that names the key. */
static int vary_parse_value(const struct vary *v, const char *val, double *d)
{
    const char *key = v->key;
    *d = 0;
    if (v->kind == VARY_METHOD) {
        if (merge_method_find(val))
            return 0;
        char names[512] = "";
        for (const struct merge_method *const *m = merge_methods; *m; m++)
            snprintf(names + strlen(names), sizeof(names) - strlen(names), "%s%s",
                     m == merge_methods ? "" : ", ", (*m)->name);
        return cli_usage_error("sweep", "--vary method: unknown method '%s' (known: %s)", val, names);
    }
    if (v->spec->kind == MERGE_PARAM_KIND_BOOL) {
        if (strcmp(val, "true") == 0)
            *d = 1;
        else if (strcmp(val, "false") != 0)
            return cli_usage_error("sweep", "--vary %s: '%s' is not true or false", key, val);
        return 0;
    }
    char *end;
    *d = strtod(val, &end);
    if (end == val || *end || !isfinite(*d))
        return cli_usage_error("sweep", "--vary %s: '%s' is not a number", key, val);
    if (*d < v->spec->min || *d > v->spec->max ||
        (v->spec->kind == MERGE_PARAM_KIND_INT && *d != (double)(long long)*d))
        return cli_usage_error("sweep", "--vary %s: %s is out of range (%s from %g to %g)", key, val,
                               v->spec->kind == MERGE_PARAM_KIND_INT ? "an integer" : "a number",
                               v->spec->min, v->spec->max);
    return 0;
}

/* Parses `text` (KEY=V1,V2,...) into *v against the recipe. 0, or an exit
 * status after printing an error that names the key (vary_deinit() either
 * way). */
static int vary_parse(struct vary *v, const char *text, const struct recipe *r)
{
    memset(v, 0, sizeof(*v));
    const char *eq = strchr(text, '=');
    if (!eq || eq == text || !eq[1])
        return cli_usage_error("sweep", "--vary %s: expected KEY=V1,V2,...", text);
    if (!(v->key = lm_strndup(text, (size_t)(eq - text))))
        return cli_fail(LM_ENOMEM);
    int rc = vary_parse_key(v, r);
    for (const char *p = eq + 1; !rc;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        if (len == 0) {
            rc = cli_usage_error("sweep", "--vary %s: empty value in '%s'", v->key, eq + 1);
            break;
        }
        char **vals = lm_realloc_array(v->values, v->n_values + 1, sizeof(*vals));
        double *nums = vals ? lm_realloc_array(v->numbers, v->n_values + 1, sizeof(*nums)) : NULL;
        if (vals)
            v->values = vals;
        if (nums)
            v->numbers = nums;
        if (!vals || !nums || !(v->values[v->n_values] = lm_strndup(p, len))) {
            rc = cli_fail(LM_ENOMEM);
            break;
        }
        const char *val = v->values[v->n_values++];
        if ((rc = vary_parse_value(v, val, &v->numbers[v->n_values - 1])) || !comma)
            break;
        p = comma + 1;
    }
    return rc;
}

/* ===== Combinations: one value index per --vary ===== */

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

/* A copy of `r` with combination `combo` applied, in *out. When the method
 * is varied, the global and per-model parameters a combination's method
 * does not take are left out of it (so that ties' density does not stop
 * task_arithmetic). 0 or an LM_E* code (not printed). */
static int apply_combo(const struct recipe *r, const struct vary *vs, size_t n_vary, const size_t *combo,
                       struct recipe **out)
{
    *out = NULL;
    struct recipe *c = recipe_clone(r);
    if (!c)
        return LM_ENOMEM;
    const struct merge_method *varied = NULL; /* the method --vary method sets */
    for (size_t k = 0; k < n_vary; k++) {
        const struct vary *v = &vs[k];
        const char *val = v->values[combo[k]];
        double d = v->numbers[combo[k]];
        int rc = 0;
        if (v->kind == VARY_METHOD) {
            varied = merge_method_find(val);
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
            recipe_free(c);
            return rc;
        }
    }
    if (varied) {
        drop_untaken(c->params, &c->n_params, varied);
        for (size_t i = 0; i < c->n_models; i++)
            drop_untaken(c->models[i].params, &c->models[i].n_params, varied);
    }
    *out = c;
    return 0;
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

/* ===== The command line ===== */

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

struct sweep_args {
    struct eval_opts o;
    const char *vary_text[SWEEP_MAX_VARY];   /* KEY=V1,V2,... as given */
    size_t n_vary;
    const char *reference;                   /* NULL: the recipe's first model */
    const char *recipe_path;
};

/* Fills *a from the command line (not --help: see cmd_sweep). 0, or an
 * exit status after printing the error. */
static int sweep_parse_args(int argc, char **argv, const struct option *options, struct sweep_args *a)
{
    memset(a, 0, sizeof(*a));
    eval_opts_init(&a->o);
    int c, rc;
    while ((c = getopt_long(argc, argv, EVAL_SHORT_OPTIONS, options, NULL)) != -1) {
        if (c == 'V') {
            if (a->n_vary == SWEEP_MAX_VARY)
                return cli_usage_error("sweep", "at most %d --vary options", SWEEP_MAX_VARY);
            a->vary_text[a->n_vary++] = optarg;
            rc = 0;
        } else if (c == 'R') {
            rc = cli_path_option("sweep", "--reference", optarg, &a->reference);
        } else {
            rc = eval_opts_parse(&a->o, "sweep", c, optarg);
        }
        if (rc)
            return rc;
    }
    if (optind >= argc)
        return cli_usage_error("sweep", "sweep needs a RECIPE");
    if (optind + 1 < argc)
        return cli_usage_error("sweep", "unexpected argument '%s'", argv[optind + 1]);
    if (!a->o.bench_path)
        return cli_usage_error("sweep", "sweep needs a benchmark (--bench FILE.jsonl)");
    if (a->n_vary == 0)
        return cli_usage_error("sweep", "sweep needs at least one --vary KEY=V1,V2,...");
    a->recipe_path = argv[optind];
    if ((rc = cli_check_input(a->recipe_path)) || (rc = cli_check_input(a->o.bench_path)))
        return rc;
    if (!lm_is_file(a->recipe_path)) {
        lm_err(LM_EFORMAT, "%s: sweep takes a recipe file, not a model directory", a->recipe_path);
        return cli_fail(LM_EFORMAT);
    }
    return 0;
}

/* ===== A sweep and what it gave ===== */

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


/* One evaluated combination. */
struct sweep_row {
    const size_t *combo;   /* into sweep.combos */
    struct eval_summary s;
    double seconds;
};

struct sweep {
    struct recipe *recipe;
    struct vary vs[SWEEP_MAX_VARY];
    size_t n_vs;
    size_t *combos;             /* n_combos x n_vs value indices, the last --vary fastest */
    size_t n_combos;
    struct eval_bench bench;
    size_t n_items;             /* the problems evaluated: the first n_items of bench */
    int n_jobs, threads_per_job;
    struct workspace *ws;       /* every combination is merged in it */
    struct tok *tok;            /* the merges' tokenizer */
    struct prompt_setup ps;     /* the merges' prompts, set up with the first merge */
    bool have_ps;
    char *ref_dir;
    struct eval_summary ref_summary;
    struct eval_result *results; /* n_items, reused by every evaluation */
    struct sweep_row *rows;     /* n_rows of n_combos, in order */
    size_t n_rows;
    struct sweep_progress progress;
};

static void sweep_free(struct sweep *s)
{
    cli_progress_done();
    prompt_setup_deinit(&s->ps);
    free(s->results);
    free(s->rows);
    free(s->combos);
    free(s->ref_dir);
    tok_free(s->tok);
    ws_free(s->ws);
    eval_bench_deinit(&s->bench);
    for (size_t k = 0; k < s->n_vs; k++)
        vary_deinit(&s->vs[k]);
    recipe_free(s->recipe);
    memset(s, 0, sizeof(*s));
}

/* Loads the recipe, parses every --vary against it and lists the
 * combinations in s->combos. 0, or an exit status after printing the
 * error: 2 for a bad --vary, 3 for a bad recipe. */
static int sweep_expand(struct sweep *s, const struct sweep_args *a)
{
    int rc;
    if (!(s->recipe = cli_load_recipe(a->recipe_path)))
        return CLI_EXIT_BAD_INPUT;
    s->n_combos = 1;
    for (; s->n_vs < a->n_vary; s->n_vs++) {
        struct vary *v = &s->vs[s->n_vs];
        if ((rc = vary_parse(v, a->vary_text[s->n_vs], s->recipe))) {
            vary_deinit(v);
            return rc;
        }
        for (size_t k = 0; k < s->n_vs; k++)
            if (strcmp(s->vs[k].key, v->key) == 0) {
                vary_deinit(v);
                return cli_usage_error("sweep", "--vary %s is given twice", s->vs[k].key);
            }
        if (s->n_combos > SWEEP_MAX_COMBOS / v->n_values) {
            vary_deinit(v);
            return cli_usage_error("sweep", "more than %d combinations", SWEEP_MAX_COMBOS);
        }
        s->n_combos *= v->n_values;
    }
    for (size_t k = 0; k < s->n_vs; k++)
        if (s->vs[k].kind != VARY_METHOD && !method_in_play(s->recipe, s->vs, s->n_vs, s->vs[k].spec->id))
            return cli_usage_error("sweep", "--vary %s: no merge method in this sweep takes '%s'",
                                   s->vs[k].key, s->vs[k].spec->name);
    if (s->recipe->n_models == 0) {
        lm_err(LM_EFORMAT, "%s: the recipe names no models", a->recipe_path);
        return cli_fail(LM_EFORMAT);
    }
    if (!(s->combos = lm_calloc(s->n_combos * s->n_vs, sizeof(*s->combos))))
        return cli_fail(LM_ENOMEM);
    for (size_t i = 1; i < s->n_combos; i++) {
        memcpy(s->combos + i * s->n_vs, s->combos + (i - 1) * s->n_vs, s->n_vs * sizeof(*s->combos));
        combo_next(s->combos + i * s->n_vs, s->vs, s->n_vs);
    }
    return 0;
}

/* The value indices of combination i. */
static const size_t *sweep_combo(const struct sweep *s, size_t i)
{
    return s->combos + i * s->n_vs;
}

/* Loads the benchmark, opens the workspace and tries every combination's
 * recipe in it before any evaluation, so that a bad value does not surface
 * hours in. 0, or an exit status after printing the error. */
static int sweep_check_combos(struct sweep *s, const struct eval_opts *o)
{
    int rc;
    if ((rc = eval_bench_load(o->bench_path, &s->bench)) < 0)
        return cli_fail(rc);
    s->n_items = o->limit > 0 && (size_t)o->limit < s->bench.n ? (size_t)o->limit : s->bench.n;
    eval_plan_jobs(o, s->n_items, &s->n_jobs, &s->threads_per_job);

    struct ws_params wp = ws_default_params();
    wp.n_threads = o->threads;
    if (!(s->ws = ws_open(s->recipe, wp)))
        return cli_fail(LM_EFORMAT);
    cli_print_notes(ws_notes(s->ws));
    cli_set_preview(s->ws, o->preview);
    if (!(s->rows = lm_calloc(s->n_combos, sizeof(*s->rows))) ||
        !(s->results = lm_calloc(s->n_items, sizeof(*s->results))))
        return cli_fail(LM_ENOMEM);
    for (size_t i = 0; i < s->n_combos; i++) {
        const size_t *combo = sweep_combo(s, i);
        struct recipe *r;
        if ((rc = apply_combo(s->recipe, s->vs, s->n_vs, combo, &r)))
            return cli_fail(rc);
        rc = ws_set_recipe(s->ws, r, NULL);
        recipe_free(r);
        if (rc < 0) {
            char setting[512] = "";
            for (size_t k = 0; k < s->n_vs; k++)
                snprintf(setting + strlen(setting), sizeof(setting) - strlen(setting), "%s%s=%s",
                         k ? ", " : "", s->vs[k].key, s->vs[k].values[combo[k]]);
            lm_err_context(rc, "sweep setting %s", setting);
            return cli_fail(rc);
        }
    }
    return 0;
}

/* ===== Running ===== */

/* Evaluates the reference model once, as `mergescope eval MODEL_DIR` would,
 * into s->ref_summary. 0, or an exit status after printing the error. */
static int sweep_eval_reference(struct sweep *s, const struct sweep_args *a)
{
    if (a->reference)
        s->ref_dir = lm_strdup(a->reference);
    else
        s->ref_dir = recipe_resolve_path(s->recipe, s->recipe->models[0].path);
    if (!s->ref_dir)
        return cli_fail(LM_ENOMEM);
    fprintf(stderr, "mergescope: reference %s\n", s->ref_dir);
    /* A reference directory without a tokenizer uses the merges'. */
    char *tj = lm_path_join(s->ref_dir, "tokenizer.json");
    bool own_tok = !tj || lm_is_file(tj) || !lm_is_dir(s->ref_dir);
    free(tj);
    struct engine e;
    struct model_params mp = model_default_params();
    mp.n_threads = s->threads_per_job;
    int rc = engine_open(&e, s->ref_dir, mp, own_tok, NULL, WS_PREVIEW_OUTPUT);
    if (rc)
        return rc;
    const char *ref_tok_dir = own_tok ? e.tokenizer_dir : ws_tokenizer_dir(s->ws);
    if (!own_tok) {
        fprintf(stderr, "mergescope: note: %s has no tokenizer.json; using %s's\n", s->ref_dir, ref_tok_dir);
        if (!(e.tok = tok_load(ref_tok_dir))) {
            engine_close(&e);
            return cli_fail(LM_EFORMAT);
        }
    }
    struct prompt_setup rps;
    if ((rc = prompt_setup_init(&rps, &a->o, e.tok, ref_tok_dir, e.config))) {
        prompt_setup_deinit(&rps);
        engine_close(&e);
        return rc;
    }
    snprintf(s->progress.label, sizeof(s->progress.label), "reference");
    double seconds = 0;
    int n_jobs = s->n_jobs, threads_per_job = s->threads_per_job;
    int erc = eval_with_jobs(&e.model, e.config, &e.source, &n_jobs, &threads_per_job, e.tok, &rps, &a->o,
                             &s->bench, s->n_items, sweep_on_progress, &s->progress, s->results, &seconds);
    eval_summarize(s->results, s->n_items, &s->ref_summary);
    eval_results_deinit(s->results, s->n_items);
    prompt_setup_deinit(&rps);
    engine_close(&e);
    if (erc == LM_ECANCELED) {
        fprintf(stderr, "mergescope: error: interrupted while evaluating the reference\n");
        return cli_exit_status(LM_ECANCELED);
    }
    return erc < 0 ? cli_fail(erc) : 0;
}

/* Merges combination i in memory (calibrating first when its method needs
 * it) and fills *cfg with the merged model's config (hf_config_deinit()
 * it). 0 or an LM_E* code (not printed; *cfg not held). */
static int sweep_merge_combo(struct sweep *s, size_t i, struct hf_config *cfg)
{
    struct recipe *r;
    int rc = apply_combo(s->recipe, s->vs, s->n_vs, sweep_combo(s, i), &r);
    if (rc)
        return rc;
    rc = ws_set_recipe(s->ws, r, NULL);
    recipe_free(r);
    if (!rc)
        rc = cli_calibrate(s->ws, false);
    if (!rc)
        rc = ws_merge_all(s->ws, NULL, NULL);
    if (!rc)
        rc = ws_output_config(s->ws, cfg);
    return rc;
}

/* Evaluates the model merged last (config `cfg`) into s->results;
 * *seconds gets the time it took. 0, LM_ECANCELED, or another LM_E* code
 * (not printed). */
static int sweep_eval_merged(struct sweep *s, const struct eval_opts *o, const struct hf_config *cfg,
                             double *seconds)
{
    struct model_source src = ws_model_source(s->ws);
    struct model_params mp = model_default_params();
    mp.n_threads = s->threads_per_job;
    struct model *first = model_load(cfg, &src, mp);
    if (!first)
        return LM_EFORMAT;
    int jobs = s->n_jobs, threads = s->threads_per_job;
    int rc = eval_with_jobs(&first, cfg, &src, &jobs, &threads, s->tok, &s->ps, o, &s->bench, s->n_items,
                            sweep_on_progress, &s->progress, s->results, seconds);
    /* The model holds views into the workspace's cache: it is freed before
     * the next ws_set_recipe. */
    model_free(first);
    return rc;
}

/* Evaluates every combination in turn, adding a row for each. 0, or an
 * exit status after printing the error; *cancelled is set when Ctrl-C
 * stopped it (the rows so far stand). */
static int sweep_eval_combos(struct sweep *s, const struct eval_opts *o, bool *cancelled)
{
    *cancelled = false;
    /* The merges share the workspace's tokenizer. */
    if (!(s->tok = tok_load(ws_tokenizer_dir(s->ws))))
        return cli_fail(LM_EFORMAT);
    int rc = 0;
    for (size_t i = 0; i < s->n_combos && !*cancelled; i++) {
        s->progress.index = i + 1;
        snprintf(s->progress.label, sizeof(s->progress.label), "setting %zu/%zu", i + 1, s->n_combos);
        struct hf_config cfg;
        int err = sweep_merge_combo(s, i, &cfg);
        bool have_cfg = err == 0;
        if (!err && !s->have_ps) {
            if ((rc = prompt_setup_init(&s->ps, o, s->tok, ws_tokenizer_dir(s->ws), &cfg))) {
                hf_config_deinit(&cfg);
                break;
            }
            s->have_ps = true;
        }
        double seconds = 0;
        if (!err)
            err = sweep_eval_merged(s, o, &cfg, &seconds);
        if (have_cfg)
            hf_config_deinit(&cfg);
        if (err == LM_ECANCELED || (err == 0 && cli_interrupted())) {
            *cancelled = true;
        } else if (err < 0) {
            rc = cli_fail(err);
        } else {
            struct sweep_row *row = &s->rows[s->n_rows++];
            row->combo = sweep_combo(s, i);
            eval_summarize(s->results, s->n_items, &row->s);
            row->seconds = seconds;
        }
        eval_results_deinit(s->results, s->n_items);
        if (rc)
            break;
    }
    cli_progress_done();
    return rc;
}

/* ===== Printing ===== */

/* Prints `text` as a JSON string. */
static void print_json_string(const char *text)
{
    cJSON *s = cJSON_CreateString(text);
    char *q = s ? cJSON_PrintUnformatted(s) : NULL;
    fputs(q ? q : "null", stdout);
    free(q);
    cJSON_Delete(s);
}

/* The change in mean length of a row against the reference, as a fraction. */
static double length_change(const struct sweep *s, const struct sweep_row *r)
{
    const struct eval_summary *ref = &s->ref_summary;
    return ref->mean_tokens > 0 ? (r->s.mean_tokens - ref->mean_tokens) / ref->mean_tokens : 0;
}

static void print_sweep_json(const struct sweep *s)
{
    char a[40], b[40], c[40], d[40];
    const struct eval_summary *ref = &s->ref_summary;
    printf("{\n  \"reference\": {\"model\": ");
    print_json_string(s->ref_dir);
    printf(", \"n\": %zu, \"accuracy\": %s, \"mean_tokens\": %s, \"reflective\": %s},\n", ref->n,
           eval_json_number(ref->accuracy, a), eval_json_number(ref->mean_tokens, b),
           eval_json_number(ref->reflective, c));
    printf("  \"rows\": [");
    for (size_t i = 0; i < s->n_rows; i++) {
        const struct sweep_row *r = &s->rows[i];
        printf("%s\n    {\"settings\": {", i ? "," : "");
        for (size_t k = 0; k < s->n_vs; k++) {
            const struct vary *v = &s->vs[k];
            fputs(k ? ", " : "", stdout);
            print_json_string(v->key);
            fputs(": ", stdout);
            if (!combo_uses(s->recipe, s->vs, s->n_vs, r->combo, k))
                printf("null");
            else if (v->kind == VARY_METHOD)
                printf("\"%s\"", v->values[r->combo[k]]);
            else if (v->spec->kind == MERGE_PARAM_KIND_BOOL)
                printf("%s", v->numbers[r->combo[k]] != 0 ? "true" : "false");
            else
                printf("%s", eval_json_number(v->numbers[r->combo[k]], a));
        }
        printf("}, \"n\": %zu, \"accuracy\": %s, \"mean_tokens\": %s, \"length_change\": %s, "
               "\"reflective\": %s}", r->s.n, eval_json_number(r->s.accuracy, a),
               eval_json_number(r->s.mean_tokens, b), eval_json_number(length_change(s, r), d),
               eval_json_number(r->s.reflective, c));
    }
    printf("%s]\n}\n", s->n_rows ? "\n  " : "");
    fflush(stdout);
}

/* One column per --vary, then the numbers. */
static void print_sweep_table(const struct sweep *s)
{
    const struct eval_summary *ref = &s->ref_summary;
    int width[SWEEP_MAX_VARY];
    for (size_t k = 0; k < s->n_vs; k++) {
        width[k] = (int)strlen(s->vs[k].key);
        for (size_t i = 0; i < s->vs[k].n_values; i++)
            if ((int)strlen(s->vs[k].values[i]) > width[k])
                width[k] = (int)strlen(s->vs[k].values[i]);
    }
    printf("reference %s: n %zu, accuracy %.1f%%, mean tokens %.1f, reflective %.1f%%\n", s->ref_dir, ref->n,
           100.0 * ref->accuracy, ref->mean_tokens, 100.0 * ref->reflective);
    for (size_t k = 0; k < s->n_vs; k++)
        printf("%-*s  ", width[k], s->vs[k].key);
    printf("%6s %9s %12s %9s %11s\n", "N", "ACCURACY", "MEAN_TOKENS", "LENGTH", "REFLECTIVE");
    for (size_t i = 0; i < s->n_rows; i++) {
        const struct sweep_row *r = &s->rows[i];
        for (size_t k = 0; k < s->n_vs; k++)
            printf("%-*s  ", width[k],
                   combo_uses(s->recipe, s->vs, s->n_vs, r->combo, k) ? s->vs[k].values[r->combo[k]] : "-");
        printf("%6zu %8.1f%% %12.1f %+8.1f%% %10.1f%%\n", r->s.n, 100.0 * r->s.accuracy, r->s.mean_tokens,
               100.0 * length_change(s, r), 100.0 * r->s.reflective);
    }
    fflush(stdout);
}

/* ===== The command ===== */

int cmd_sweep(int argc, char **argv)
{
    static const struct option options[] = {
        EVAL_LONG_OPTIONS,
        { "vary", required_argument, NULL, 'V' },
        { "reference", required_argument, NULL, 'R' },
        { NULL, 0, NULL, 0 },
    };
    if (cli_help_asked(argc, argv, EVAL_SHORT_OPTIONS, options, sweep_usage))
        return CLI_EXIT_OK;
    struct sweep_args a;
    int rc = sweep_parse_args(argc, argv, options, &a);
    if (rc)
        return rc;

    struct sweep s;
    memset(&s, 0, sizeof(s));
    bool cancelled = false;
    if ((rc = sweep_expand(&s, &a)) || (rc = sweep_check_combos(&s, &a.o)))
        goto out;
    cli_install_interrupt();
    s.progress.n_steps = s.n_combos + 1;
    if ((rc = sweep_eval_reference(&s, &a)))
        goto out;
    rc = sweep_eval_combos(&s, &a.o, &cancelled);
    if (rc == 0 || s.n_rows > 0) {
        if (a.o.format == CLI_FORMAT_JSON)
            print_sweep_json(&s);
        else
            print_sweep_table(&s);
    }
    if (cancelled) {
        fprintf(stderr, "mergescope: error: interrupted after %zu of %zu settings (rows above)\n", s.n_rows,
                s.n_combos);
        rc = cli_exit_status(LM_ECANCELED);
    }
    if (a.o.verbose)
        cli_print_memory_now();
out:
    sweep_free(&s);
    return rc;
}
