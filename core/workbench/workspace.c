/* The workspace's life and shape: opening a recipe's models and lining up
 * their tensors (workspace.h states the rules), the notes gathered on the
 * way, the accessors, a new recipe for the same models (ws_set_recipe), and
 * the checks on inputs and output paths. Calibration is in ws_calibrate.c,
 * the passes over tensors in ws_passes.c, histograms and statistics rows in
 * ws_stats.c, the merged model's directory in ws_write.c; what they share
 * is in workspace_internal.h. */
#include "workspace.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "calib.h"
#include "fsutil.h"
#include "lm_error.h"
#include "merge_plan.h"
#include "output_policy.h"
#include "pool.h"
#include "workspace_internal.h"

#define EMBED_NAME   "model.embed_tokens.weight"
#define LM_HEAD_NAME "lm_head.weight"

struct ws_params ws_default_params(void)
{
    struct ws_params p = { .n_threads = 0 };
    return p;
}

void ws_scratch_deinit(struct ws_scratch *s)
{
    if (!s)
        return;
    merge_scratch_deinit(&s->inputs);
    merge_scratch_deinit(&s->method);
}

/* ===== Notes ===== */

static int add_note(struct workspace *ws, const char *fmt, ...) LM_PRINTF(2, 3);
static int add_note(struct workspace *ws, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    char *joined = lm_asprintf("%s%s\n", ws->notes ? ws->notes : "", line);
    if (!joined)
        return LM_ENOMEM;
    free(ws->notes);
    ws->notes = joined;
    return 0;
}

/* ===== Opening ===== */

static int open_source(struct workspace *ws, int s, const char *name, const char *path)
{
    struct ws_model *m = &ws->sources[s];
    m->name = lm_strdup(name);
    m->dir = recipe_resolve_path(ws->recipe, path);
    if (!m->name || !m->dir)
        return LM_ENOMEM;
    if (!lm_is_dir(m->dir))
        return lm_err(LM_EFORMAT, "model '%s': %s is not a directory", name, m->dir);
    char *cfg = lm_path_join(m->dir, "config.json");
    if (!cfg)
        return LM_ENOMEM;
    if (lm_is_file(cfg)) {
        int rc = hf_config_load(cfg, &m->config);
        if (rc) {
            free(cfg);
            return lm_err_context(rc, "model '%s'", name);
        }
        m->has_config = true;
    }
    free(cfg);
    m->weights = st_set_open_dir(m->dir);
    if (!m->weights)
        return lm_err_context(LM_EFORMAT, "model '%s'", name);
    return 0;
}

static int source_index(const struct workspace *ws, const char *name, int fallback)
{
    if (!name)
        return fallback;
    for (int s = 0; s < ws->n_sources; s++)
        if (strcmp(ws->sources[s].name, name) == 0)
            return s;
    return fallback;
}

static bool is_vocab_tensor(const char *name)
{
    return strcmp(name, EMBED_NAME) == 0 || strcmp(name, LM_HEAD_NAME) == 0;
}

/* Does source s use its embeddings as lm_head? */
static bool source_tied(const struct ws_model *m)
{
    bool has_head = st_set_find(m->weights, LM_HEAD_NAME) != NULL;
    if (m->has_config && m->config.has_tie_word_embeddings)
        return m->config.tie_word_embeddings;
    return !has_head;
}

/* What source 0 is called in messages. */
static const char *reference_word(const struct workspace *ws)
{
    return ws->has_base ? "the base" : "the first model";
}

static int compare_tensors(const void *a, const void *b)
{
    const struct ws_tensor *x = a, *y = b;
    return tn_compare_names(x->name, y->name);
}

/* Fills one output tensor from the base tensor `bt` (or, for a materialised
 * lm_head, from the base's embeddings). */
static int line_up_tensor(struct workspace *ws, struct ws_tensor *t, const char *name)
{
    t->name = lm_strdup(name);
    if (!t->name)
        return LM_ENOMEM;
    tn_classify(name, &t->info);
    bool head = strcmp(name, LM_HEAD_NAME) == 0;
    for (int s = 0; s < ws->n_sources; s++) {
        const struct ws_model *m = &ws->sources[s];
        const struct st_tensor *src = st_set_find(m->weights, name);
        if (head && !src && source_tied(m))
            src = st_set_find(m->weights, EMBED_NAME);
        if (!src) {
            if (head)
                return lm_err(LM_EMISMATCH, "model '%s' (%s): no %s and its config does not tie "
                              "embeddings", m->name, m->dir, LM_HEAD_NAME);
            return lm_err(LM_EMISMATCH, "model '%s' (%s) has no tensor '%s', which %s has",
                          m->name, m->dir, name, reference_word(ws));
        }
        if (!lm_dtype_is_float_supported(src->dtype))
            return lm_err(LM_EUNSUPPORTED, "model '%s': tensor '%s' has dtype %s; only F32, F16 "
                          "and BF16 tensors can be merged", m->name, name, lm_dtype_name(src->dtype));
        t->src[s] = src;
        t->src_rows[s] = src->ndim > 0 ? src->shape[0] : 1;
        if (s == 0) {
            t->ndim = src->ndim;
            memcpy(t->shape, src->shape, sizeof(t->shape));
            t->base_dtype = src->dtype;
            continue;
        }
        const struct st_tensor *b = t->src[0];
        bool same = src->ndim == b->ndim;
        for (int d = 0; same && d < src->ndim; d++)
            if (src->shape[d] != b->shape[d] && !(d == 0 && is_vocab_tensor(name)))
                same = false;
        if (!same) {
            char sa[96] = "", sb[96] = "";
            for (int d = 0; d < src->ndim; d++)
                snprintf(sa + strlen(sa), sizeof(sa) - strlen(sa), "%s%lld", d ? ", " : "", (long long)src->shape[d]);
            for (int d = 0; d < b->ndim; d++)
                snprintf(sb + strlen(sb), sizeof(sb) - strlen(sb), "%s%lld", d ? ", " : "", (long long)b->shape[d]);
            return lm_err(LM_EMISMATCH, "tensor '%s': model '%s' (%s) has shape [%s] but %s has [%s]",
                          name, m->name, m->dir, sa, reference_word(ws), sb);
        }
    }
    return 0;
}

/* Decides embedding/lm_head rows when models disagree about vocab size. */
static int settle_vocab(struct workspace *ws)
{
    int64_t lo = INT64_MAX, hi = 0;
    for (size_t i = 0; i < ws->n_tensors; i++) {
        struct ws_tensor *t = &ws->tensors[i];
        if (!is_vocab_tensor(t->name))
            continue;
        for (int s = 0; s < ws->n_sources; s++) {
            lo = LM_MIN(lo, t->src_rows[s]);
            hi = LM_MAX(hi, t->src_rows[s]);
        }
    }
    if (hi == 0) {
        ws->out_vocab = 0;
        return 0;
    }
    if (lo != hi) {
        char sizes[512] = "";
        const struct ws_tensor *t = NULL;
        for (size_t i = 0; i < ws->n_tensors && !t; i++)
            if (is_vocab_tensor(ws->tensors[i].name))
                t = &ws->tensors[i];
        for (int s = 0; s < ws->n_sources; s++)
            snprintf(sizes + strlen(sizes), sizeof(sizes) - strlen(sizes), "%s%s %lld",
                     s ? ", " : "", ws->sources[s].name, (long long)t->src_rows[s]);
        if (ws->vocab == VOCAB_ERROR)
            return lm_err(LM_EMISMATCH, "vocabulary sizes differ (%s rows in %s); set output.vocab "
                          "to \"truncate\" or \"pad\" in the recipe", sizes, t->name);
        char *note = lm_asprintf("vocabulary sizes differ (%s); %s to %lld rows", sizes,
                                 ws->vocab == VOCAB_TRUNCATE ? "truncating" : "padding",
                                 (long long)(ws->vocab == VOCAB_TRUNCATE ? lo : hi));
        int rc = note ? add_note(ws, "%s", note) : LM_ENOMEM;
        free(note);
        if (rc)
            return rc;
    }
    ws->out_vocab = ws->vocab == VOCAB_PAD ? hi : lo;
    for (size_t i = 0; i < ws->n_tensors; i++) {
        struct ws_tensor *t = &ws->tensors[i];
        if (!is_vocab_tensor(t->name))
            continue;
        t->shape[0] = ws->out_vocab;
    }
    return 0;
}

static uint64_t count_elements(const struct ws_tensor *t)
{
    uint64_t n = 1;
    for (int d = 0; d < t->ndim; d++)
        n *= (uint64_t)t->shape[d];
    return n;
}

static int line_up(struct workspace *ws)
{
    const struct st_set *base = ws->sources[0].weights;
    bool all_tied = true;
    for (int s = 0; s < ws->n_sources; s++)
        all_tied = all_tied && source_tied(&ws->sources[s]);
    ws->output_tied = all_tied;

    /* Every model must hold exactly the base's tensors (lm_head aside). */
    for (int s = 1; s < ws->n_sources; s++) {
        const struct st_set *w = ws->sources[s].weights;
        for (size_t i = 0; i < st_set_n_tensors(w); i++) {
            const char *name = st_set_tensor(w, i)->name;
            if (strcmp(name, LM_HEAD_NAME) == 0)
                continue;
            if (!st_set_find(base, name))
                return lm_err(LM_EMISMATCH, "model '%s' (%s) has tensor '%s', which %s (%s) lacks",
                              ws->sources[s].name, ws->sources[s].dir, name, reference_word(ws),
                              ws->sources[0].dir);
        }
    }

    size_t n_base = st_set_n_tensors(base);
    ws->tensors = lm_calloc(n_base + 1, sizeof(*ws->tensors));
    if (!ws->tensors)
        return LM_ENOMEM;
    for (size_t i = 0; i < n_base; i++) {
        const char *name = st_set_tensor(base, i)->name;
        if (strcmp(name, LM_HEAD_NAME) == 0)
            continue;
        int rc = line_up_tensor(ws, &ws->tensors[ws->n_tensors++], name);
        if (rc)
            return rc;
    }
    if (!all_tied) {
        int rc = line_up_tensor(ws, &ws->tensors[ws->n_tensors++], LM_HEAD_NAME);
        if (rc)
            return rc;
        bool any_tied = false;
        for (int s = 0; s < ws->n_sources; s++)
            any_tied = any_tied || source_tied(&ws->sources[s]);
        if (any_tied && (rc = add_note(ws, "models disagree about tied embeddings: lm_head is "
                                       "materialised from embed_tokens for the tied ones and the output "
                                       "is untied (tie_word_embeddings: false)")))
            return rc;
    }
    int rc = settle_vocab(ws);
    if (rc)
        return rc;
    for (size_t i = 0; i < ws->n_tensors; i++) {
        struct ws_tensor *t = &ws->tensors[i];
        t->n_elements = count_elements(t);
        if (t->info.layer >= ws->n_layers)
            ws->n_layers = t->info.layer + 1;
    }
    qsort(ws->tensors, ws->n_tensors, sizeof(*ws->tensors), compare_tensors);
    return 0;
}

/* ===== Layer stacking ("slices", passthrough) =====
 *
 * Output layer L of a slice is input layer l = start + offset of the one
 * source the slice names. Its tensors are renamed to layer L and line up,
 * in the base's place, the base's tensor of the same input layer l (so the
 * statistics say how far the stacked layer is from the base's layer it
 * stands for; zero where the source is the base) and, in every model's
 * place, the source's tensor, which passthrough copies. Tensors outside the
 * layer stack come, as mergekit plans them, from the first slice's source
 * (embeddings) or the last slice's (the final norm, lm_head). */

/* `name` of layer `from` renamed to layer `to`. */
static char *rename_layer(const char *name, int from, int to)
{
    char pat[32];
    snprintf(pat, sizeof(pat), ".layers.%d.", from);
    const char *p = strstr(name, pat);
    if (!p) {
        lm_err(LM_EUNSUPPORTED, "tensor '%s': layer %d is not named '...%s...'; cannot stack it",
               name, from, pat);
        return NULL;
    }
    return lm_asprintf("%.*s.layers.%d.%s", (int)(p - name), name, to, p + strlen(pat));
}

/* Points every model's place of `t` at what source `k` holds there. */
static void take_source(struct workspace *ws, struct ws_tensor *t, const struct ws_tensor *from, int k)
{
    for (int s = 1; s < ws->n_sources; s++) {
        t->src[s] = from->src[k];
        t->src_rows[s] = from->src_rows[k];
    }
}

static int stack_layers(struct workspace *ws)
{
    const struct recipe *r = ws->recipe;
    const char *label = r->source_path ? r->source_path : "recipe";
    if (r->n_slices == 0)
        return 0;
    int in_layers = ws->n_layers;
    size_t per_layer = 0, out_layers = 0;
    for (size_t i = 0; i < ws->n_tensors; i++)
        per_layer += ws->tensors[i].info.layer == 0;
    int first = 0, last = 0;
    for (size_t i = 0; i < r->n_slices; i++) {
        const struct recipe_slice_source *src = &r->slices[i].sources[0];
        int k = source_index(ws, src->model, -1);
        if (k < 0)
            return lm_err(LM_EFORMAT, "%s: slices[%zu].sources[0].model: unknown model '%s'",
                          label, i, src->model);
        if (src->end > in_layers)
            return lm_err(LM_EFORMAT, "%s: slices[%zu].sources[0].layers: [%d, %d] reaches beyond "
                          "model '%s''s %d layers (0-%d)", label, i, src->start, src->end,
                          src->model, in_layers, in_layers - 1);
        if (i == 0)
            first = k;
        last = k;
        out_layers += (size_t)(src->end - src->start);
    }
    if (out_layers > 100000)
        return lm_err(LM_EFORMAT, "%s: slices: %zu output layers, too many", label, out_layers);
    size_t n_out = ws->n_tensors - (size_t)in_layers * per_layer + out_layers * per_layer;
    struct ws_tensor *out = lm_calloc(n_out ? n_out : 1, sizeof(*out));
    if (!out)
        return LM_ENOMEM;
    size_t n = 0;
    int rc = 0;
    for (size_t i = 0; !rc && i < ws->n_tensors; i++) {
        const struct ws_tensor *t = &ws->tensors[i];
        if (t->info.layer >= 0)
            continue;
        out[n] = *t;
        out[n].name = lm_strdup(t->name);
        if (!out[n].name) {
            rc = LM_ENOMEM;
            break;
        }
        take_source(ws, &out[n], t, t->info.group == TN_GROUP_EMBED ? first : last);
        n++;
    }
    int L = 0;
    for (size_t si = 0; !rc && si < r->n_slices; si++) {
        const struct recipe_slice_source *src = &r->slices[si].sources[0];
        int k = source_index(ws, src->model, 0);
        for (int l = src->start; !rc && l < src->end; l++, L++) {
            for (size_t i = 0; !rc && i < ws->n_tensors; i++) {
                const struct ws_tensor *t = &ws->tensors[i];
                if (t->info.layer != l)
                    continue;
                if (n >= n_out) {
                    rc = lm_err(LM_EMISMATCH, "%s: slices: layer %d of the models has more tensors "
                                "than layer 0", label, l);
                    break;
                }
                out[n] = *t;
                out[n].name = rename_layer(t->name, l, L);
                if (!out[n].name) {
                    rc = LM_EUNSUPPORTED;
                    break;
                }
                tn_classify(out[n].name, &out[n].info);
                take_source(ws, &out[n], t, k);
                n++;
            }
        }
    }
    if (rc) {
        for (size_t i = 0; i < n; i++)
            free(out[i].name);
        free(out);
        return rc;
    }
    for (size_t i = 0; i < ws->n_tensors; i++)
        free(ws->tensors[i].name);
    free(ws->tensors);
    ws->tensors = out;
    ws->n_tensors = n;
    ws->n_layers = (int)out_layers;
    qsort(ws->tensors, ws->n_tensors, sizeof(*ws->tensors), compare_tensors);
    return 0;
}

/* Whether two recipes stack the same layers (the tensor list follows). */
static bool same_slices(const struct recipe *a, const struct recipe *b)
{
    if (a->n_slices != b->n_slices)
        return false;
    for (size_t i = 0; i < a->n_slices; i++) {
        if (a->slices[i].n_sources != b->slices[i].n_sources)
            return false;
        for (size_t k = 0; k < a->slices[i].n_sources; k++) {
            const struct recipe_slice_source *x = &a->slices[i].sources[k], *y = &b->slices[i].sources[k];
            if (strcmp(x->model, y->model) != 0 || x->start != y->start || x->end != y->end)
                return false;
        }
    }
    return true;
}

/* Models of different architectures (config.json's architectures[0] or
 * model_type) are not merged, as mergekit refuses to mix them: the tensors
 * may even line up (a Llama and a Mistral) while meaning other things. */
static int check_architectures(const struct workspace *ws)
{
    const struct ws_model *ref = &ws->sources[0];
    if (!ref->has_config)
        return 0;
    for (int s = 1; s < ws->n_sources; s++) {
        const struct ws_model *m = &ws->sources[s];
        if (!m->has_config)
            continue;
        const char *a = ref->config.architecture, *b = m->config.architecture;
        const char *what = "architecture";
        if (!(a && b && strcmp(a, b) != 0)) {
            a = ref->config.model_type;
            b = m->config.model_type;
            what = "model_type";
        }
        if (a && b && strcmp(a, b) != 0)
            return lm_err(LM_EMISMATCH, "model '%s' (%s): %s %s, but %s (%s) is %s; models of "
                          "different architectures cannot be merged", m->name, m->dir, what, b,
                          reference_word(ws), ref->dir, a);
    }
    return 0;
}

/* Records config.json differences between the output's config source and
 * every other model, so that the user hears about them. */
static int compare_configs(struct workspace *ws)
{
    const struct ws_model *ref = &ws->sources[ws->config_from];
    if (!ref->has_config)
        return 0;
    for (int s = 0; s < ws->n_sources; s++) {
        const struct ws_model *m = &ws->sources[s];
        if (s == ws->config_from || !m->has_config)
            continue;
        char *diff = hf_config_diff(ref->config.path, ref->name, m->config.path, m->name);
        if (!diff)
            return LM_EFORMAT;
        char *p = diff;
        while (*p) {
            char *nl = strchr(p, '\n');
            if (nl)
                *nl = '\0';
            int rc = add_note(ws, "config.json differs: %s", p);
            if (rc) {
                free(diff);
                return rc;
            }
            if (!nl)
                break;
            p = nl + 1;
        }
        free(diff);
    }
    return 0;
}

int ws_check_inputs(const struct workspace *ws)
{
    for (int i = 0; i < ws->n_sources; i++) {
        int rc = st_set_check_unchanged(ws->sources[i].weights);
        if (rc)
            return rc;
    }
    return 0;
}

/* merge_plan_check_selection over the workspace's tensors. */
static int check_selection(const struct workspace *ws, const struct merge_plan *plan)
{
    const char **names = lm_malloc_array(ws->n_tensors ? ws->n_tensors : 1, sizeof(char *));
    struct tn_info *infos = lm_malloc_array(ws->n_tensors ? ws->n_tensors : 1, sizeof(*infos));
    int rc = (!names || !infos) ? LM_ENOMEM : 0;
    for (size_t i = 0; !rc && i < ws->n_tensors; i++) {
        names[i] = ws->tensors[i].name;
        infos[i] = ws->tensors[i].info;
    }
    if (!rc)
        rc = merge_plan_check_selection(plan, names, infos, ws->n_tensors);
    free(names);
    free(infos);
    return rc;
}

/* ws_open, with the error's code: 0 and *out set, or an LM_E* code. */
static int open_workspace(const struct recipe *r, struct ws_params params, struct workspace **out)
{
    *out = NULL;
    struct workspace *ws = lm_calloc(1, sizeof(*ws));
    if (!ws)
        return LM_ENOMEM;
    int rc = 0;
    ws->params = params;
    ws->recipe = recipe_clone(r);
    if (!ws->recipe) {
        rc = LM_ENOMEM;
        goto fail;
    }
    if ((rc = merge_plan_init(&ws->plan, ws->recipe)))
        goto fail;
    /* merge_plan_init has checked that a recipe without a base names a
     * method that merges without one, and at least one model. */
    ws->has_base = r->base != NULL;
    if (r->output.vocab) {
        if (strcmp(r->output.vocab, "truncate") == 0)
            ws->vocab = VOCAB_TRUNCATE;
        else if (strcmp(r->output.vocab, "pad") == 0)
            ws->vocab = VOCAB_PAD;
    }
    if ((rc = ws->has_base ? open_source(ws, 0, "base", r->base)
                           : open_source(ws, 0, r->models[0].name, r->models[0].path)))
        goto fail;
    ws->n_sources = 1;
    for (size_t i = 0; i < r->n_models; i++) {
        if ((rc = open_source(ws, (int)i + 1, r->models[i].name, r->models[i].path)))
            goto fail;
        ws->n_sources++;
    }
    ws->config_from = source_index(ws, r->output.config_from, 0);
    ws->tokenizer_from = source_index(ws, r->output.tokenizer_from, ws->config_from);
    if ((rc = check_architectures(ws)) || (rc = line_up(ws)))
        goto fail;
    ws->in_layers = ws->n_layers;
    if ((rc = stack_layers(ws)) || (rc = compare_configs(ws)))
        goto fail;
    if (!ws->has_base && (rc = add_note(ws, "the recipe has no base model: %s merges the models "
                                        "themselves; statistics take task vectors against the first "
                                        "model, '%s'", ws->plan.method->name, ws->sources[0].name)))
        goto fail;
    ws->plan.n_layers = ws->n_layers;
    if ((rc = check_selection(ws, &ws->plan)))
        goto fail;
    /* what reading the recipe noted (mergekit YAML's warnings) */
    const char *ln = r->load_notes;
    if (ln && *ln && (rc = add_note(ws, "%.*s", (int)(strlen(ln) - (ln[strlen(ln) - 1] == '\n')), ln)))
        goto fail;
    if (!ws->notes && !(ws->notes = lm_strdup(""))) {
        rc = LM_ENOMEM;
        goto fail;
    }

    ws->stats = lm_calloc(ws->n_tensors, sizeof(*ws->stats));
    ws->stats_done = lm_calloc(ws->n_tensors ? ws->n_tensors : 1, sizeof(*ws->stats_done));
    for (size_t i = 0; ws->stats_done && i < ws->n_tensors; i++)
        atomic_init(&ws->stats_done[i], false);

    ws->merged = lm_calloc(ws->n_tensors, sizeof(*ws->merged));
    ws->preview = WS_PREVIEW_OUTPUT;
    ws->spare = lm_calloc(ws->n_tensors ? ws->n_tensors : 1, sizeof(*ws->spare));
    ws->cut_memo = lm_calloc(ws->n_tensors ? ws->n_tensors : 1, sizeof(*ws->cut_memo));
    ws->nonfinite = lm_calloc(ws->n_tensors ? ws->n_tensors : 1, sizeof(*ws->nonfinite));
    ws->pool = pool_new(params.n_threads);
    if (!ws->stats || !ws->stats_done || !ws->merged || !ws->spare || !ws->cut_memo || !ws->nonfinite ||
        !ws->pool) {
        rc = LM_ENOMEM;
        goto fail;
    }
    ws->scratch = lm_calloc((size_t)pool_n_workers(ws->pool), sizeof(*ws->scratch));
    if (!ws->scratch) {
        rc = LM_ENOMEM;
        goto fail;
    }
    *out = ws;
    return 0;
fail:
    ws_free(ws);
    return rc;
}

struct workspace *ws_open(const struct recipe *r, struct ws_params params)
{
    struct workspace *ws;
    open_workspace(r, params, &ws);
    return ws;
}

void ws_free(struct workspace *ws)
{
    if (!ws)
        return;
    if (ws->scratch)
        for (int w = 0; w < pool_n_workers(ws->pool); w++)
            ws_scratch_deinit(&ws->scratch[w]);
    free(ws->scratch);
    pool_free(ws->pool);
    ws_drop_merged(ws);
    free(ws->merged);
    free(ws->spare);
    free(ws->cut_memo);
    free(ws->stats);
    free(ws->nonfinite);
    free(ws->stats_done);
    for (size_t i = 0; i < ws->n_tensors; i++)
        free(ws->tensors[i].name);
    free(ws->tensors);
    for (int s = 0; s < WS_MAX_SOURCES; s++) {
        struct ws_model *m = &ws->sources[s];
        free(m->name);
        free(m->dir);
        hf_config_deinit(&m->config);
        st_set_close(m->weights);
    }
    free(ws->notes);
    recipe_free(ws->recipe);
    free(ws->act_key);
    free(ws->sens_key);
    ws_calib_input_deinit(&ws->calib_in);
    struct calib_activations *a = atomic_load(&ws->act);
    struct calib_sensitivity *sn = atomic_load(&ws->sens);
    calib_activations_deinit(a);
    free(a);
    calib_sensitivity_deinit(sn);
    free(sn);
    for (size_t k = 0; k < ws->n_retired; k++) {
        if (ws->retired_sens[k])
            calib_sensitivity_deinit(ws->retired[k]);
        else
            calib_activations_deinit(ws->retired[k]);
        free(ws->retired[k]);
    }
    free(ws->retired);
    free(ws->retired_sens);
    free(ws);
}

const struct recipe *ws_recipe(const struct workspace *ws) { return ws->recipe; }
const struct merge_method *ws_method(const struct workspace *ws) { return ws->plan.method; }
int ws_n_models(const struct workspace *ws) { return ws->n_sources - 1; }
const struct ws_model *ws_model(const struct workspace *ws, int i) { return &ws->sources[i + 1]; }
size_t ws_n_tensors(const struct workspace *ws) { return ws->n_tensors; }
const struct ws_tensor *ws_tensor(const struct workspace *ws, size_t i) { return &ws->tensors[i]; }
int ws_n_layers(const struct workspace *ws) { return ws->n_layers; }
int ws_n_input_layers(const struct workspace *ws) { return ws->in_layers; }
bool ws_has_base(const struct workspace *ws) { return ws->has_base; }
bool ws_output_tied(const struct workspace *ws) { return ws->output_tied; }
int64_t ws_output_vocab(const struct workspace *ws) { return ws->out_vocab; }
const char *ws_notes(const struct workspace *ws) { return ws->notes; }

const char *ws_tokenizer_dir(const struct workspace *ws)
{
    return ws->sources[ws->tokenizer_from].dir;
}

long ws_find_tensor(const struct workspace *ws, const char *name)
{
    for (size_t i = 0; i < ws->n_tensors; i++)
        if (strcmp(ws->tensors[i].name, name) == 0)
            return (long)i;
    return -1;
}

void ws_tensor_params(const struct workspace *ws, size_t i, struct merge_tensor_params *out)
{
    const struct ws_tensor *t = &ws->tensors[i];
    merge_plan_resolve(&ws->plan, t->name, &t->info, out);
}

static bool same_string(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

/* Whether `r` names the same base and models (names and paths, in order)
 * as `old`. */
static bool same_models(const struct recipe *r, const struct recipe *old)
{
    bool same = r->n_models == old->n_models && same_string(r->base, old->base);
    for (size_t i = 0; same && i < r->n_models; i++)
        same = strcmp(r->models[i].name, old->models[i].name) == 0 &&
               strcmp(r->models[i].path, old->models[i].path) == 0;
    return same;
}

bool ws_same_sources(const struct workspace *ws, const struct recipe *r)
{
    const struct recipe *old = ws->recipe;
    return same_models(r, old) && same_slices(r, old) &&
           same_string(r->output.vocab, old->output.vocab) &&
           same_string(r->output.config_from, old->output.config_from) &&
           same_string(r->output.tokenizer_from, old->output.tokenizer_from);
}

int ws_reopen(struct workspace *ws, const struct recipe *r)
{
    struct workspace *fresh;
    int rc = open_workspace(r, ws->params, &fresh);
    if (rc)
        return rc;
    ws_set_preview_dtype(fresh, ws->preview);
    uint_fast64_t peak = atomic_load(&ws->peak_anon);
    if (atomic_load(&fresh->peak_anon) < peak)
        atomic_store(&fresh->peak_anon, peak);
    /* Swap the whole state, then free the old one through the fresh
     * handle: callers keep `ws`. */
    struct workspace old;
    memcpy(&old, ws, sizeof(old));
    memcpy(ws, fresh, sizeof(*ws));
    memcpy(fresh, &old, sizeof(*fresh));
    ws_free(fresh);
    return 0;
}

int ws_set_recipe(struct workspace *ws, const struct recipe *r, bool *changed)
{
    const struct recipe *old = ws->recipe;
    if (!same_models(r, old))
        return lm_err(LM_EINVAL, "the new recipe names other models; open it in a new workspace");
    if (!same_slices(r, old))
        return lm_err(LM_EINVAL, "the new recipe stacks other layers (slices); open it in a new workspace");
    struct recipe *copy = recipe_clone(r);
    if (!copy)
        return LM_ENOMEM;
    struct merge_plan plan;
    int rc = merge_plan_init(&plan, copy);
    if (rc) {
        recipe_free(copy);
        return rc;
    }
    plan.n_layers = ws->n_layers;
    if ((rc = check_selection(ws, &plan))) {
        recipe_free(copy);
        return rc;
    }
    const char *old_dtype = old->output.dtype ? old->output.dtype : "";
    const char *new_dtype = copy->output.dtype ? copy->output.dtype : "";
    bool dtype_changed = strcmp(old_dtype, new_dtype) != 0;
    /* New calibration settings make every tensor of a calibration-based
     * method differ (ws_calibrate measures again when next asked). */
    const struct recipe_calibration *oc = &ws->recipe->calibration, *nc = &copy->calibration;
    bool calib_changed = plan.method->needs &&
        (!oc->file != !nc->file || (oc->file && strcmp(oc->file, nc->file) != 0) ||
         oc->samples != nc->samples || oc->max_tokens != nc->max_tokens ||
         !oc->chat != !nc->chat || (oc->chat && strcmp(oc->chat, nc->chat) != 0));
    for (size_t i = 0; i < ws->n_tensors; i++) {
        const struct ws_tensor *t = &ws->tensors[i];
        struct merge_tensor_params a, b;
        merge_plan_resolve(&ws->plan, t->name, &t->info, &a);
        merge_plan_resolve(&plan, t->name, &t->info, &b);
        bool differs = plan.method != ws->plan.method || memcmp(&a, &b, sizeof(a)) != 0 || calib_changed;
        if (differs || dtype_changed) {
            /* Keep the buffer for the re-merge: fresh pages cost more than
             * the merge itself on large tensors. */
            free(ws->spare[i]);
            ws->spare[i] = dtype_changed ? NULL : ws->merged[i];
            if (dtype_changed)
                free(ws->merged[i]);
            ws->merged[i] = NULL;
            atomic_store(&ws->stats_done[i], false);
        }
        if (changed)
            changed[i] = differs;
    }
    recipe_free(ws->recipe);
    ws->recipe = copy;
    ws->plan = plan;
    ws->plan.recipe = copy;
    return 0;
}

int ws_check_output(const struct workspace *ws, const char *out, bool is_file, bool force,
                    bool *forceable)
{
    const char *inputs[WS_MAX_SOURCES + 1];
    size_t n = 0;
    for (int s = 0; s < ws->n_sources; s++)
        inputs[n++] = ws->sources[s].dir;
    char *calib = ws->recipe->calibration.file
                  ? recipe_resolve_path(ws->recipe, ws->recipe->calibration.file) : NULL;
    if (calib && lm_is_file(calib))
        inputs[n++] = calib;
    struct out_check res;
    int rc = out_check(out, is_file ? OUT_FILE : OUT_DIR, inputs, n, force, &res);
    if (forceable)
        *forceable = rc == LM_EREFUSED && res.forceable;
    free(calib);
    return rc;
}
