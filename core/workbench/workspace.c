#include "workspace.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "calib.h"
#include "convert.h"
#include "disk_cache.h"
#include "fsutil.h"
#include "hash.h"
#include "clock.h"
#include "lm_error.h"
#include "merge_plan.h"
#include "merge_stream.h"
#include "output_policy.h"
#include "pool.h"
#include "select.h"
#include "strbuf.h"
#include "units.h"

#define EMBED_NAME   "model.embed_tokens.weight"
#define LM_HEAD_NAME "lm_head.weight"

enum vocab_policy { VOCAB_ERROR, VOCAB_TRUNCATE, VOCAB_PAD };

/* The tokenized calibration data of the recipe and the key that names the
 * settings that produced it. */
struct calib_input {
    struct calib_file file;
    struct calib_tokens tokens;
    char *key;
};

static void calib_input_deinit(struct calib_input *in);

struct workspace {
    struct recipe *recipe;
    struct merge_plan plan;
    struct ws_params params;
    struct pool *pool;
    struct ws_scratch *scratch;     /* one per pool worker */
    struct ws_model sources[WS_MAX_SOURCES]; /* [0] = base */
    int n_sources;
    struct ws_tensor *tensors;
    size_t n_tensors;
    int n_layers;
    bool output_tied;
    int64_t out_vocab;
    enum vocab_policy vocab;
    int config_from;                /* source index */
    int tokenizer_from;
    char *notes;
    struct stats_raw *stats;
    atomic_bool *stats_done;
    /* Non-finite values per tensor, as the last pass over it counted them
     * (each tensor is written by the one worker that merges it). */
    struct ws_nonfinite *nonfinite;
    void **merged;                  /* output-dtype bytes per tensor, or NULL */
    void **spare;                   /* buffers of invalidated merges, reused by the next */
    /* Calibration results (aim, sens), each with the key of the settings
     * that produced it; NULL = not computed. The results are published
     * whole through atomic pointers, because the workbench's UI thread
     * reads them (the sens factors) while its worker may recalibrate;
     * results replaced are kept until ws_free, so a reader never sees freed
     * memory. */
    char *act_key, *sens_key;
    _Atomic(struct calib_activations *) act;
    _Atomic(struct calib_sensitivity *) sens;
    void **retired;                 /* replaced results, freed by ws_free */
    bool *retired_sens;             /* which of them are sensitivities */
    size_t n_retired;
    /* The last calibration data read and tokenized, kept so that a cost
     * estimate followed by the passes (or a sweep asking before every
     * setting) reads and tokenizes the file once. */
    struct calib_input calib_in;
    struct ws_calib_cost calib_cost;
    bool have_calib_cost;
    /* The largest RssAnon seen by the passes' samples (bytes). */
    atomic_uint_fast64_t peak_anon;
};

struct ws_params ws_default_params(void)
{
    struct ws_params p = { .n_threads = 0 };
    return p;
}

struct ws_write_params ws_default_write_params(void)
{
    struct ws_write_params p = { .out_dtype = -1, .shard_size = 0 };
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
            return lm_err(LM_EMISMATCH, "model '%s' (%s) has no tensor '%s', which the base has",
                          m->name, m->dir, name);
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
            return lm_err(LM_EMISMATCH, "tensor '%s': model '%s' has shape [%s] but the base has [%s]",
                          name, m->name, sa, sb);
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
                return lm_err(LM_EMISMATCH, "model '%s' (%s) has tensor '%s', which the base (%s) lacks",
                              ws->sources[s].name, ws->sources[s].dir, name, ws->sources[0].dir);
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

struct workspace *ws_open(const struct recipe *r, struct ws_params params)
{
    struct workspace *ws = lm_calloc(1, sizeof(*ws));
    if (!ws)
        return NULL;
    ws->params = params;
    ws->recipe = recipe_clone(r);
    if (!ws->recipe)
        goto fail;
    if (merge_plan_init(&ws->plan, ws->recipe))
        goto fail;
    const char *label = r->source_path ? r->source_path : "recipe";
    if (!r->base) {
        lm_err(LM_EFORMAT, "%s: base: missing (task vectors are taken against the base model)", label);
        goto fail;
    }
    if (r->output.vocab) {
        if (strcmp(r->output.vocab, "truncate") == 0)
            ws->vocab = VOCAB_TRUNCATE;
        else if (strcmp(r->output.vocab, "pad") == 0)
            ws->vocab = VOCAB_PAD;
    }
    if (open_source(ws, 0, "base", r->base))
        goto fail;
    ws->n_sources = 1;
    for (size_t i = 0; i < r->n_models; i++) {
        if (open_source(ws, (int)i + 1, r->models[i].name, r->models[i].path))
            goto fail;
        ws->n_sources++;
    }
    ws->config_from = source_index(ws, r->output.config_from, 0);
    ws->tokenizer_from = source_index(ws, r->output.tokenizer_from, ws->config_from);
    if (line_up(ws) || compare_configs(ws))
        goto fail;
    ws->plan.n_layers = ws->n_layers;
    if (check_selection(ws, &ws->plan))
        goto fail;
    if (!ws->notes && !(ws->notes = lm_strdup("")))
        goto fail;

    ws->stats = lm_calloc(ws->n_tensors, sizeof(*ws->stats));
    ws->stats_done = lm_calloc(ws->n_tensors ? ws->n_tensors : 1, sizeof(*ws->stats_done));
    for (size_t i = 0; ws->stats_done && i < ws->n_tensors; i++)
        atomic_init(&ws->stats_done[i], false);

    ws->merged = lm_calloc(ws->n_tensors, sizeof(*ws->merged));
    ws->spare = lm_calloc(ws->n_tensors ? ws->n_tensors : 1, sizeof(*ws->spare));
    ws->nonfinite = lm_calloc(ws->n_tensors ? ws->n_tensors : 1, sizeof(*ws->nonfinite));
    ws->pool = pool_new(params.n_threads);
    if (!ws->stats || !ws->stats_done || !ws->merged || !ws->spare || !ws->nonfinite || !ws->pool)
        goto fail;
    ws->scratch = lm_calloc((size_t)pool_n_workers(ws->pool), sizeof(*ws->scratch));
    if (!ws->scratch)
        goto fail;
    return ws;
fail:
    ws_free(ws);
    return NULL;
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
    calib_input_deinit(&ws->calib_in);
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

int ws_set_recipe(struct workspace *ws, const struct recipe *r, bool *changed)
{
    const struct recipe *old = ws->recipe;
    bool same_models = r->n_models == old->n_models && r->base && strcmp(r->base, old->base) == 0;
    for (size_t i = 0; same_models && i < r->n_models; i++)
        same_models = strcmp(r->models[i].name, old->models[i].name) == 0 &&
                      strcmp(r->models[i].path, old->models[i].path) == 0;
    if (!same_models)
        return lm_err(LM_EINVAL, "the new recipe names other models; open it in a new workspace");
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

/* ===== Calibration ===== */

static void calib_input_deinit(struct calib_input *in)
{
    calib_file_deinit(&in->file);
    calib_tokens_deinit(&in->tokens);
    free(in->key);
    memset(in, 0, sizeof(*in));
}

/* The settings key: file (resolved, with size and modification time, so an
 * edited file is read again), sample and token limits, chat format. NULL
 * with an error when the recipe has no calibration section. */
static int calib_key(const struct workspace *ws, char **out)
{
    *out = NULL;
    const struct recipe *r = ws->recipe;
    const struct recipe_calibration *c = &r->calibration;
    const char *label = r->source_path ? r->source_path : "recipe";
    if (!c->file)
        return lm_err(LM_EFORMAT,
                      "%s: method '%s' needs calibration data: add \"calibration\": {\"file\": "
                      "\"calib.jsonl\"} (JSONL of {\"prompt\": ..., \"response\": ...})",
                      label, ws->plan.method->name);
    char *path = recipe_resolve_path(r, c->file);
    if (!path)
        return LM_ENOMEM;
    struct stat st;
    if (stat(path, &st) != 0) {
        int rc = lm_err(LM_EIO, "calibration.file: cannot read '%s': %s", path, strerror(errno));
        free(path);
        return rc;
    }
    char buf[PATH_MAX + 256], real[PATH_MAX];
    snprintf(buf, sizeof(buf), "%s|%lld|%lld.%09ld|%lld|%lld|%s", realpath(path, real) ? real : path,
             (long long)st.st_size,
             (long long)st.st_mtim.tv_sec, (long)st.st_mtim.tv_nsec, (long long)c->samples,
             (long long)c->max_tokens, c->chat ? c->chat : "auto");
    free(path);
    *out = lm_strdup(buf);
    return *out ? 0 : LM_ENOMEM;
}

static int calib_input_load(const struct workspace *ws, struct calib_input *in)
{
    memset(in, 0, sizeof(*in));
    const struct recipe_calibration *c = &ws->recipe->calibration;
    int rc = calib_key(ws, &in->key);
    if (rc)
        return rc;
    char *path = recipe_resolve_path(ws->recipe, c->file);
    if (!path)
        return LM_ENOMEM;
    rc = calib_file_load(path, &in->file);
    free(path);
    if (rc)
        return rc;
    enum chat_format format = CHAT_FORMAT_NONE;
    bool is_auto = true;
    if (c->chat && (rc = chat_format_parse(c->chat, &format, &is_auto)) != 0)
        return lm_err_context(rc, "calibration.chat");
    struct chat_detected det = { 0 };
    const char *tok_dir = ws_tokenizer_dir(ws);
    if (is_auto) {
        if ((rc = chat_detect_dir(tok_dir, &det)) != 0)
            return rc;
        format = det.format;
    }
    struct tok *t = tok_load(tok_dir);
    if (!t) {
        chat_detected_deinit(&det);
        return lm_err_context(LM_EFORMAT, "calibration tokenizer");
    }
    rc = calib_tokenize(&in->file, t, format, chat_default_system(format, is_auto ? &det : NULL),
                        c->samples, c->max_tokens, &in->tokens);
    tok_free(t);
    chat_detected_deinit(&det);
    return rc;
}

/* Weights one forward pass multiplies by: every matrix but the embedding
 * lookup, and lm_head (which a tied model reads from the embedding) when
 * `with_head`. */
static double matmul_weights(const struct workspace *ws, bool with_head)
{
    double n = 0;
    for (size_t i = 0; i < ws->n_tensors; i++) {
        const struct ws_tensor *t = &ws->tensors[i];
        if (t->ndim != 2)
            continue;
        if (t->info.group == TN_GROUP_LM_HEAD || (ws->output_tied && t->info.group == TN_GROUP_EMBED))
            n += with_head ? (double)t->n_elements : 0.0;
        else if (t->info.group != TN_GROUP_EMBED)
            n += (double)t->n_elements;
    }
    return n;
}

static void calib_estimate(const struct workspace *ws, const struct calib_tokens *tk,
                           struct ws_calib_cost *out)
{
    unsigned needs = ws->plan.method->needs;
    int n_models = ws->n_sources - 1;
    memset(out, 0, sizeof(*out));
    out->needed = needs != 0;
    out->samples = tk->n;
    out->tokens = tk->n_tokens;
    out->response_tokens = tk->n_response_tokens;
    out->truncated = tk->n_truncated;
    for (size_t i = 0; i < tk->n; i++)
        out->longest = LM_MAX(out->longest, tk->seqs[i].len);
    out->forward_passes = 0;
    out->backward_passes = 0;
    if (needs & MERGE_NEEDS_ACTIVATIONS)
        out->forward_passes++;
    if (needs & MERGE_NEEDS_SENSITIVITY) {
        out->backward_passes = n_models;
        if (n_models > 1)
            out->forward_passes++;
    }
    /* aim's pass skips lm_head; sens's passes need the logits. */
    double fwd = 2.0 * matmul_weights(ws, false) * (double)tk->n_tokens;
    double fwd_head = 2.0 * matmul_weights(ws, true) * (double)tk->n_tokens;
    out->flops = 0;
    if (needs & MERGE_NEEDS_ACTIVATIONS)
        out->flops += fwd;
    if (needs & MERGE_NEEDS_SENSITIVITY)
        out->flops += 3.0 * fwd_head * (double)out->backward_passes + (n_models > 1 ? fwd_head : 0.0);

    const struct hf_config *cfg = &ws->sources[0].config;
    double L = (double)out->longest, vocab = (double)ws->out_vocab;
    double dim = (double)cfg->hidden_size, ff = (double)cfg->intermediate_size;
    double heads = (double)cfg->num_attention_heads, layers = (double)cfg->num_hidden_layers;
    double bytes = 0;
    if (needs & MERGE_NEEDS_ACTIVATIONS)  /* the forward pass's batch scratch; no logits */
        bytes = 128.0 * (6.0 * dim + 2.0 * ff) * 4.0 + L * layers * 2.0 * dim * 4.0;
    if (needs & MERGE_NEEDS_SENSITIVITY) {
        /* The logits of a sample (and, with two models or more, every
         * participant's response rows for the alignment); the backward
         * pass's residual stream per layer and one layer's recomputed
         * activations; the embedding gradient and one reused gradient
         * buffer (backward.h). */
        /* One model: the backward pass's logits chunk (64 MB at most). */
        double logits = n_models > 1 ? L * vocab * 4.0 * ((double)n_models + 2.0)
                                     : LM_MIN(L * vocab * 4.0, 64e6);
        double saved = L * layers * dim * 4.0 + L * (8.0 * dim + 3.0 * ff + 64.0 * heads) * 4.0;
        double embed = 0, largest = 0;
        for (size_t i = 0; i < ws->n_tensors; i++) {
            const struct ws_tensor *t = &ws->tensors[i];
            if (t->info.group == TN_GROUP_EMBED)
                embed = LM_MAX(embed, (double)t->n_elements);
            else if (t->info.layer >= 0)
                largest = LM_MAX(largest, (double)t->n_elements);
        }
        bytes = LM_MAX(bytes, logits + saved + (embed + largest) * 4.0);
    }
    out->memory_bytes = (uint64_t)bytes;
}

/* Whether results for calibration settings `key` are held for every pass
 * the method needs. */
static bool calib_held(const struct workspace *ws, const char *key)
{
    unsigned needs = ws->plan.method->needs;
    return (!(needs & MERGE_NEEDS_ACTIVATIONS) || (ws->act_key && strcmp(ws->act_key, key) == 0)) &&
           (!(needs & MERGE_NEEDS_SENSITIVITY) || (ws->sens_key && strcmp(ws->sens_key, key) == 0));
}

/* The recipe's calibration data, tokenized: the copy held when its
 * settings key is unchanged, else read and tokenized again. */
static int calib_input_get(struct workspace *ws, const struct calib_input **out)
{
    char *key;
    int rc = calib_key(ws, &key);
    if (rc)
        return rc;
    bool same = ws->calib_in.key && strcmp(ws->calib_in.key, key) == 0;
    free(key);
    if (!same) {
        calib_input_deinit(&ws->calib_in);
        if ((rc = calib_input_load(ws, &ws->calib_in)) != 0) {
            calib_input_deinit(&ws->calib_in);
            return rc;
        }
    }
    *out = &ws->calib_in;
    return 0;
}

int ws_calib_plan(struct workspace *ws, struct ws_calib_cost *out)
{
    memset(out, 0, sizeof(*out));
    if (!ws->plan.method->needs)
        return 0;
    const struct calib_input *in;
    int rc = calib_input_get(ws, &in);
    if (rc)
        return rc;
    calib_estimate(ws, &in->tokens, out);
    out->cached = calib_held(ws, in->key);
    return 0;
}

/* Opens source s as a runnable model on the workspace's pool. NULL with an
 * error naming the model. */
static struct model *open_model(struct workspace *ws, int s, int64_t n_ctx, struct model_dir **dir)
{
    *dir = model_dir_open(ws->sources[s].dir);
    if (!*dir) {
        lm_err_context(LM_EFORMAT, "%s", ws->sources[s].name);
        return NULL;
    }
    struct model_params mp = model_default_params();
    mp.pool = ws->pool;
    mp.n_ctx = n_ctx;
    struct model_source src = model_dir_source(*dir);
    struct model *m = model_load(model_dir_config(*dir), &src, mp);
    if (!m) {
        lm_err_context(LM_EFORMAT, "%s", ws->sources[s].name);
        model_dir_close(*dir);
        *dir = NULL;
    }
    return m;
}

/* The key of a result in the on-disk cache: a hash of the token sequences
 * the pass runs (which covers the calibration file, the sample and token
 * limits, the tokenizer, the chat format and its system prompt), and each
 * model the pass reads, identified by its config.json's content and its
 * weight files' paths, sizes and modification times. */
static char *disk_key(const struct workspace *ws, const struct calib_tokens *tk, bool with_base,
                      bool with_models)
{
    struct lm_strbuf b = { 0 };
    char buf[PATH_MAX];
    uint64_t h = LM_FNV1A_OFFSET;
    for (size_t i = 0; i < tk->n; i++) {
        const struct calib_seq *q = &tk->seqs[i];
        h = lm_fnv1a(h, &q->len, sizeof(q->len));
        h = lm_fnv1a(h, &q->resp_from, sizeof(q->resp_from));
        h = lm_fnv1a(h, q->ids, (size_t)q->len * sizeof(int32_t));
    }
    lm_strbuf_printf(&b, "mergescope-calibration v%d\ntokens %zu %016llx\n", CALIB_VERSION, tk->n,
                     (unsigned long long)h);
    for (int s = with_base ? 0 : 1; s < (with_models ? ws->n_sources : 1); s++) {
        const struct ws_model *m = &ws->sources[s];
        char *cfg_path = lm_path_join(m->dir, "config.json");
        size_t len = 0;
        char *cfg = cfg_path && lm_is_file(cfg_path) ? lm_read_file(cfg_path, (size_t)1 << 24, &len) : NULL;
        lm_clear_error();
        lm_strbuf_printf(&b, "model %s config %016llx\n", realpath(m->dir, buf) ? buf : m->dir,
                         cfg ? (unsigned long long)lm_fnv1a(LM_FNV1A_OFFSET, cfg, len) : 0ull);
        free(cfg);
        free(cfg_path);
        for (size_t f = 0; f < st_set_n_files(m->weights); f++) {
            const char *path = st_set_file_path(m->weights, f);
            struct stat st;
            if (stat(path, &st) != 0) {
                free(lm_strbuf_finish(&b));
                return NULL;
            }
            /* The file itself, however the recipe spelt its way there. */
            char real[PATH_MAX];
            lm_strbuf_printf(&b, "  %s %lld %lld.%09ld\n", realpath(path, real) ? real : path,
                             (long long)st.st_size,
                             (long long)st.st_mtim.tv_sec, (long)st.st_mtim.tv_nsec);
        }
    }
    return lm_strbuf_finish(&b);
}

struct calib_progress {
    lm_progress_fn fn;
    void *ud;
    double from, span;   /* this pass's share of the whole */
};

static bool calib_report(double frac, const char *what, void *ud)
{
    struct calib_progress *cp = ud;
    char label[96];
    snprintf(label, sizeof(label), "calibration: %s", what);
    return !cp->fn || cp->fn(cp->from + cp->span * frac, label, cp->ud);
}

static void invalidate_all(struct workspace *ws)
{
    ws_drop_merged(ws);
    for (size_t i = 0; i < ws->n_tensors; i++)
        atomic_store(&ws->stats_done[i], false);
}

/* Keeps a replaced result until ws_free: a reader on another thread may
 * still hold it. */
static int retire(struct workspace *ws, void *p, bool is_sens)
{
    if (!p)
        return 0;
    void **list = lm_realloc_array(ws->retired, ws->n_retired + 1, sizeof(*list));
    if (list)
        ws->retired = list;
    bool *kinds = list ? lm_realloc_array(ws->retired_sens, ws->n_retired + 1, sizeof(*kinds)) : NULL;
    if (!kinds)
        return LM_ENOMEM;
    ws->retired_sens = kinds;
    ws->retired[ws->n_retired] = p;
    ws->retired_sens[ws->n_retired++] = is_sens;
    return 0;
}

/* Forgets the held activations or sensitivities: the pointer is cleared
 * (the data kept until ws_free) and every merge and statistic made from
 * them is dropped. */
static int drop_calibration(struct workspace *ws, bool sens)
{
    void *old = sens ? (void *)atomic_exchange(&ws->sens, NULL) : (void *)atomic_exchange(&ws->act, NULL);
    char **key = sens ? &ws->sens_key : &ws->act_key;
    free(*key);
    *key = NULL;
    invalidate_all(ws);
    int rc = retire(ws, old, sens);
    if (rc) { /* keep it reachable for ws_free; ws_calibrate fails before any merge */
        if (sens)
            atomic_store(&ws->sens, old);
        else
            atomic_store(&ws->act, old);
    }
    return rc;
}

int ws_calibrate(struct workspace *ws, lm_progress_fn progress, void *ud)
{
    int irc = ws_check_inputs(ws);
    if (irc)
        return irc;
    unsigned needs = ws->plan.method->needs;
    if (!needs)
        return 0;
    char *key;
    int rc = calib_key(ws, &key);
    if (rc)
        return rc;
    if (calib_held(ws, key)) {
        free(key);
        return 0;
    }
    bool need_act = (needs & MERGE_NEEDS_ACTIVATIONS) && !(ws->act_key && strcmp(ws->act_key, key) == 0);
    bool need_sens = (needs & MERGE_NEEDS_SENSITIVITY) && !(ws->sens_key && strcmp(ws->sens_key, key) == 0);
    free(key);

    const struct calib_input *in;
    if ((rc = calib_input_get(ws, &in)) != 0)
        return rc;
    struct ws_calib_cost cost;
    calib_estimate(ws, &in->tokens, &cost);
    double t0 = lm_now_seconds();
    int n_models = ws->n_sources - 1;
    double act_work = need_act ? 1.0 : 0.0;
    double sens_work = need_sens ? 3.0 * n_models + (n_models > 1 ? 1.0 : 0.0) : 0.0;
    struct calib_progress cp = { .fn = progress, .ud = ud, .from = 0, .span = 1 };
    struct model_dir *dirs[WS_MAX_SOURCES] = { 0 };
    struct model *models[WS_MAX_SOURCES] = { 0 };
    int64_t n_ctx = LM_MAX(cost.longest, 1);

    if (need_act && !(rc = drop_calibration(ws, false))) {
        cp.span = act_work / (act_work + sens_work);
        struct calib_activations *a = lm_calloc(1, sizeof(*a));
        char *dk = disk_key(ws, &in->tokens, true, false);
        void *blob = NULL;
        size_t blen = 0;
        if (!a) {
            rc = LM_ENOMEM;
        } else if (dk && disk_cache_get("aim", dk, &blob, &blen) == 0 &&
                   calib_activations_unpack(blob, blen, a) == 0) {
            cost.from_cache = true;
        } else {
            lm_clear_error();
            if (!(models[0] = open_model(ws, 0, n_ctx, &dirs[0])))
                rc = LM_EFORMAT;
            if (!rc)
                rc = calib_activations_compute(models[0], &in->tokens, calib_report, &cp, a);
            free(blob);
            blob = NULL;
            if (!rc && dk && calib_activations_pack(a, &blob, &blen) == 0)
                cost.cache_written |= disk_cache_put("aim", dk, blob, blen, NULL) == 0;
        }
        free(blob);
        free(dk);
        if (!rc && !(ws->act_key = lm_strdup(in->key)))
            rc = LM_ENOMEM;
        if (rc) {
            free(a);
        } else {
            atomic_store_explicit(&ws->act, a, memory_order_release);
        }
        cp.from += cp.span;
    }
    if (!rc && need_sens && !(rc = drop_calibration(ws, true))) {
        cp.span = sens_work / (act_work + sens_work);
        struct calib_sensitivity *sn = lm_calloc(1, sizeof(*sn));
        char *dk = disk_key(ws, &in->tokens, n_models > 1, true);
        void *blob = NULL;
        size_t blen = 0;
        if (!sn) {
            rc = LM_ENOMEM;
        } else if (dk && disk_cache_get("sens", dk, &blob, &blen) == 0 &&
                   calib_sensitivity_unpack(blob, blen, sn) == 0 && sn->n_models == n_models) {
            cost.from_cache = true;
        } else {
            lm_clear_error();
            calib_sensitivity_deinit(sn);
            for (int s = n_models > 1 ? 0 : 1; s < ws->n_sources && !rc; s++)
                if (!models[s] && !(models[s] = open_model(ws, s, n_ctx, &dirs[s])))
                    rc = LM_EFORMAT;
            if (!rc)
                rc = calib_sensitivity_compute(models[0], models + 1, n_models, &in->tokens,
                                               calib_report, &cp, sn);
            free(blob);
            blob = NULL;
            if (!rc && dk && calib_sensitivity_pack(sn, &blob, &blen) == 0)
                cost.cache_written |= disk_cache_put("sens", dk, blob, blen, NULL) == 0;
        }
        free(blob);
        free(dk);
        if (!rc && !(ws->sens_key = lm_strdup(in->key)))
            rc = LM_ENOMEM;
        if (rc) {
            calib_sensitivity_deinit(sn);
            free(sn);
        } else {
            atomic_store_explicit(&ws->sens, sn, memory_order_release);
        }
    }
    for (int s = 0; s < WS_MAX_SOURCES; s++) {
        model_free(models[s]);
        model_dir_close(dirs[s]);
    }
    if (rc)
        return lm_err_context(rc, "calibration");
    cost.seconds = lm_now_seconds() - t0;
    ws->calib_cost = cost;
    ws->have_calib_cost = true;
    return 0;
}

const struct calib_activations *ws_calib_activations(const struct workspace *ws)
{
    return atomic_load_explicit(&ws->act, memory_order_acquire);
}

const struct calib_sensitivity *ws_calib_sensitivity(const struct workspace *ws)
{
    return atomic_load_explicit(&ws->sens, memory_order_acquire);
}

const struct ws_calib_cost *ws_calib_last(const struct workspace *ws)
{
    return ws->have_calib_cost ? &ws->calib_cost : NULL;
}

/* ===== Merging one tensor ===== */

/* Entries [e0, e0 + len) of source s of tensor t as float32: rows the
 * source lacks are the base's (zero past the base's own rows). */
static void read_source(const struct ws_tensor *t, int s, uint64_t e0, size_t len, float *dst)
{
    const struct st_tensor *src = t->src[s];
    uint64_t rows = t->ndim > 0 ? (uint64_t)t->shape[0] : 1;
    uint64_t row_len = rows ? t->n_elements / rows : 0;
    uint64_t have = LM_MIN((uint64_t)t->src_rows[s], rows) * row_len;
    size_t n1 = e0 >= have ? 0 : (size_t)LM_MIN((uint64_t)len, have - e0);
    if (n1)
        lm_convert_to_f32(dst, (const char *)src->data + e0 * lm_dtype_size(src->dtype), src->dtype, n1);
    if (n1 < len) {
        if (s == 0)
            memset(dst + n1, 0, (len - n1) * sizeof(float));
        else
            read_source(t, 0, e0 + n1, len - n1, dst + n1);
    }
}

/* Loads base and models of tensor i as float32 into scratch slots. */
static int load_inputs(const struct workspace *ws, size_t i, struct ws_scratch *sc,
                       float **base, const float **models)
{
    const struct ws_tensor *t = &ws->tensors[i];
    size_t n = (size_t)t->n_elements;
    for (int s = 0; s < ws->n_sources; s++) {
        float *buf = merge_scratch_get(&sc->inputs, s, n);
        if (!buf)
            return lm_err_context(LM_ENOMEM, "tensor '%s'", t->name);
        read_source(t, s, 0, n, buf);
        if (s == 0)
            *base = buf;
        else
            models[s - 1] = buf;
    }
    return 0;
}

int ws_merge_tensor(struct workspace *ws, size_t i, float *out, struct ws_scratch *sc)
{
    const struct ws_tensor *t = &ws->tensors[i];
    float *base = NULL;
    const float *models[MERGE_MAX_MODELS];
    int rc = load_inputs(ws, i, sc, &base, models);
    if (rc)
        return rc;
    struct merge_tensor_params p;
    merge_plan_resolve(&ws->plan, t->name, &t->info, &p);
    struct merge_context ctx = { 0 };
    double scale[MERGE_MAX_MODELS];
    unsigned needs = ws->plan.method->needs;
    const struct calib_activations *act = ws_calib_activations(ws);
    const struct calib_sensitivity *sens = ws_calib_sensitivity(ws);
    if (((needs & MERGE_NEEDS_ACTIVATIONS) && !act) || ((needs & MERGE_NEEDS_SENSITIVITY) && !sens))
        return lm_err(LM_EINVAL, "tensor '%s': method '%s' needs calibration, which has not run",
                      t->name, ws->plan.method->name);
    struct merge_tensor_job job = {
        .name = t->name, .n = t->n_elements, .base = base, .models = models,
        .n_models = ws->n_sources - 1, .params = &p, .out = out, .scratch = &sc->method,
        .rows = t->ndim == 2 ? (uint64_t)t->shape[0] : 1,
        .cols = t->ndim == 2 ? (uint64_t)t->shape[1] : t->n_elements,
        .ctx = needs ? &ctx : NULL,
    };
    if (needs & MERGE_NEEDS_ACTIVATIONS)
        ctx.channel_importance = calib_activations_for(act, t->name, &t->info, job.cols,
                                                       (enum calib_norm)p.importance);
    if (needs & MERGE_NEEDS_SENSITIVITY) {
        calib_sens_scale(sens, t->info.layer, p.alpha, p.temperature, scale);
        ctx.model_scale = scale;
    }
    rc = ws->plan.method->merge_tensor(&job);
    if (rc)
        return lm_err_context(rc, "merging '%s'", t->name);
    return 0;
}

/* ===== Parallel passes ===== */

struct pass {
    struct workspace *ws;
    const size_t *todo;      /* tensor indices */
    size_t n_todo;
    uint64_t total_elements;
    atomic_uint_fast64_t done_elements;
    atomic_int failed;       /* first error code, 0 if none */
    atomic_bool cancel;
    lm_progress_fn progress;
    void *ud;
    const char *what;
    char error[1024];
    /* write pass */
    enum lm_dtype out_dtype;
    bool keep_merged;        /* merge-layer pass: cache float results */
    bool stats;              /* stats pass */
    struct st_writer *writer; /* write pass: tensor i is the writer's tensor i */
    bool fixed_dtype;        /* write pass: out_dtype for every tensor, else the base's */
};

static void pass_fail(struct pass *p, int rc)
{
    int expected = 0;
    if (atomic_compare_exchange_strong(&p->failed, &expected, rc))
        snprintf(p->error, sizeof(p->error), "%s", lm_last_error());
    atomic_store(&p->cancel, true);
}

static void pass_report(struct pass *p, int worker, uint64_t n)
{
    uint64_t done = atomic_fetch_add(&p->done_elements, n) + n;
    if (worker != 0 || !p->progress)
        return;
    double frac = p->total_elements ? (double)done / (double)p->total_elements : 1.0;
    if (!p->progress(frac, p->what, p->ud) && !atomic_load(&p->cancel)) {
        lm_err(LM_ECANCELED, "cancelled");
        pass_fail(p, LM_ECANCELED);
    }
}

/* ===== Memory ===== */

/* A field of /proc/self/status in bytes ("VmHWM", "RssAnon"), 0 when
 * unknown. */
static uint64_t proc_status_bytes(const char *field)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (!f)
        return 0;
    char line[256];
    size_t len = strlen(field);
    uint64_t v = 0;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, field, len) == 0 && line[len] == ':') {
            v = (uint64_t)strtoull(line + len + 1, NULL, 10) * 1024u;
            break;
        }
    }
    fclose(f);
    return v;
}

static void sample_memory(struct workspace *ws)
{
    uint64_t anon = proc_status_bytes("RssAnon");
    uint_fast64_t old = atomic_load(&ws->peak_anon);
    while (anon > old && !atomic_compare_exchange_weak(&ws->peak_anon, &old, anon))
        ;
}

void ws_memory_peak(struct workspace *ws, struct ws_memory *out)
{
    sample_memory(ws);
    out->peak_rss_anon = atomic_load(&ws->peak_anon);
    out->hwm = proc_status_bytes("VmHWM");
}

/* ===== Non-finite values ===== */

/* Entries of x[0 .. n) that are NaN or infinite (exponent bits all set). */
static uint64_t count_nonfinite(const float *x, size_t n)
{
    uint64_t c = 0;
    for (size_t j = 0; j < n; j++) {
        uint32_t u;
        memcpy(&u, &x[j], sizeof u);
        c += (u & 0x7f800000u) == 0x7f800000u;
    }
    return c;
}

/* Counts the non-finite entries of one block of inputs in[s] and of the
 * merged `out` into *nf; an output entry that is not finite while every
 * input entry at its place is finite was made by the merge itself. */
static void tally_nonfinite(struct ws_nonfinite *nf, int n_sources, float *const *in,
                            const float *out, uint64_t e0, size_t len)
{
    for (int s = 0; s < n_sources; s++)
        nf->inputs[s] += count_nonfinite(in[s], len);
    if (!out || count_nonfinite(out, len) == 0)
        return;
    for (size_t j = 0; j < len; j++) {
        if (isfinite(out[j]))
            continue;
        bool inputs_finite = true;
        for (int s = 0; s < n_sources && inputs_finite; s++)
            inputs_finite = isfinite(in[s][j]);
        if (inputs_finite && nf->created++ == 0)
            nf->first_created = e0 + j;
    }
}

/* The error for tensor i when the merge made non-finite values. */
static int refuse_created(const struct workspace *ws, size_t i)
{
    const struct ws_nonfinite *nf = &ws->nonfinite[i];
    return lm_err(LM_EFORMAT, "tensor '%s': the merge made %llu values that are not finite (NaN or "
                  "Inf) from finite inputs, the first at entry %llu; nothing is written (look at "
                  "this tensor's weights, lambda and normalisation in the recipe)",
                  ws->tensors[i].name, (unsigned long long)nf->created,
                  (unsigned long long)nf->first_created);
}

const struct ws_nonfinite *ws_tensor_nonfinite(const struct workspace *ws, size_t i)
{
    return &ws->nonfinite[i];
}

char *ws_nonfinite_report(const struct workspace *ws)
{
    struct lm_strbuf b = { 0 };
    size_t shown = 0, tensors = 0;
    for (size_t i = 0; i < ws->n_tensors; i++) {
        const struct ws_nonfinite *nf = &ws->nonfinite[i];
        bool any = nf->created > 0;
        for (int s = 0; s < ws->n_sources; s++)
            any = any || nf->inputs[s] > 0;
        if (!any)
            continue;
        tensors++;
        if (shown++ >= 8)
            continue;
        lm_strbuf_printf(&b, "%s  %s:", shown > 1 ? "\n" : "", ws->tensors[i].name);
        for (int s = 0; s < ws->n_sources; s++)
            if (nf->inputs[s])
                lm_strbuf_printf(&b, " %llu in %s", (unsigned long long)nf->inputs[s], ws->sources[s].name);
        if (nf->created)
            lm_strbuf_printf(&b, " %llu made by the merge", (unsigned long long)nf->created);
    }
    if (tensors == 0)
        return NULL;
    if (tensors > 8)
        lm_strbuf_printf(&b, "\n  ... and %zu more tensors", tensors - 8);
    char *list = lm_strbuf_finish(&b);
    char *text = list ? lm_asprintf("%zu tensor%s hold values that are not finite (NaN or Inf):\n%s",
                                    tensors, tensors == 1 ? "" : "s", list) : NULL;
    free(list);
    return text;
}

/* ===== Block by block ===== */

static void stream_read(void *ud, int source, uint64_t e0, size_t len, float *dst)
{
    read_source(ud, source, e0, len, dst);
}

/* Where the merged blocks of one tensor go. */
struct sink {
    enum lm_dtype dtype;
    struct st_writer *writer;  /* pwrite as tensor `index` */
    size_t index;
    void *bytes;               /* or convert into this whole-tensor buffer */
    void *conv;                /* MERGE_STREAM_BLOCK elements of dtype (writer) */
};

static int sink_put(struct sink *k, uint64_t e0, size_t len, const float *out)
{
    size_t es = lm_dtype_size(k->dtype);
    if (k->bytes) {
        lm_convert_from_f32((char *)k->bytes + e0 * es, k->dtype, out, len);
        return 0;
    }
    if (!k->writer)
        return 0;
    lm_convert_from_f32(k->conv, k->dtype, out, len);
    return st_writer_pwrite(k->writer, k->index, e0 * es, k->conv, len * es);
}

/* Merges tensor i block by block into `sink` (NULL: nowhere), with its
 * statistics into `raw` when non-NULL. 1 when the method cannot merge it
 * that way (nothing done), else 0 or an error. */
static int stream_tensor(struct workspace *ws, size_t i, struct ws_scratch *sc, struct sink *sink,
                         struct stats_raw *raw)
{
    const struct ws_tensor *t = &ws->tensors[i];
    if (ws->plan.method->needs)
        return 1;
    struct merge_tensor_params p;
    merge_plan_resolve(&ws->plan, t->name, &t->info, &p);
    const int nm = ws->n_sources - 1;
    struct merge_stream_job sj = {
        .name = t->name, .n = t->n_elements,
        .rows = t->ndim == 2 ? (uint64_t)t->shape[0] : 1,
        .cols = t->ndim == 2 ? (uint64_t)t->shape[1] : t->n_elements,
        .n_models = nm, .params = &p, .read = stream_read, .ud = (void *)t, .scratch = &sc->method,
    };
    struct merge_stream *st = NULL;
    int rc = merge_stream_begin(ws->plan.method, &sj, &st);
    if (rc)
        return lm_err_context(rc, "merging '%s'", t->name);
    if (!st)
        return 1;
    struct stats_stream *ss = NULL;
    if (raw)
        rc = stats_stream_begin(&ss, nm, t->n_elements, p.density, p.weight, st->has_cut, st->cut,
                                stream_read, (void *)t, &sc->method);
    const size_t B = MERGE_STREAM_BLOCK;
    float *in[WS_MAX_SOURCES];
    for (int s = 0; s < ws->n_sources && !rc; s++)
        if (!(in[s] = merge_scratch_get(&sc->inputs, s, B)))
            rc = LM_ENOMEM;
    float *out = rc ? NULL : merge_scratch_get(&sc->inputs, WS_MAX_SOURCES, B);
    if (!rc && !out)
        rc = LM_ENOMEM;
    if (!rc && sink && sink->writer && !(sink->conv = merge_scratch_get(&sc->inputs, WS_MAX_SOURCES + 1, B)))
        rc = LM_ENOMEM;
    const uint64_t n = t->n_elements;
    struct ws_nonfinite *nf = &ws->nonfinite[i];
    memset(nf, 0, sizeof(*nf));
    bool refused = false;
    for (uint64_t e0 = 0; !rc && e0 < n; e0 += B) {
        const size_t len = (size_t)LM_MIN((uint64_t)B, n - e0);
        for (int s = 0; s < ws->n_sources; s++)
            read_source(t, s, e0, len, in[s]);
        rc = merge_stream_block(st, e0, len, in[0], (const float *const *)(in + 1), out);
        if (!rc)
            tally_nonfinite(nf, ws->n_sources, in, out, e0, len);
        if (!rc && nf->created && sink && sink->writer) {
            rc = refuse_created(ws, i);
            refused = true;
        }
        if (!rc && ss)
            rc = stats_stream_block(ss, in[0], (const float *const *)(in + 1), out, len);
        if (!rc && sink)
            rc = sink_put(sink, e0, len, out);
    }
    merge_stream_free(st);
    if (ss) {
        if (!rc) {
            stats_raw_init(raw, nm);
            rc = stats_stream_end(ss, raw);
        } else {
            struct stats_raw dummy;
            stats_raw_init(&dummy, nm);
            stats_stream_end(ss, &dummy);
        }
    }
    if (refused)
        return rc;   /* refuse_created named the tensor */
    if (rc)
        return lm_err_context(rc, "merging '%s'", t->name);
    return 0;
}

/* Sends a whole merged float32 tensor (n entries) to the sink a block at
 * a time. */
static int sink_whole(struct sink *k, struct ws_scratch *sc, const float *out, uint64_t n)
{
    if (!k->bytes && !k->writer)
        return 0;
    if (k->writer && !(k->conv = merge_scratch_get(&sc->inputs, WS_MAX_SOURCES + 1, MERGE_STREAM_BLOCK)))
        return LM_ENOMEM;
    int rc = 0;
    for (uint64_t e0 = 0; !rc && e0 < n; e0 += MERGE_STREAM_BLOCK)
        rc = sink_put(k, e0, (size_t)LM_MIN((uint64_t)MERGE_STREAM_BLOCK, n - e0), out + e0);
    return rc;
}

/* Statistics of tensor i from its whole inputs, still in the scratch slots
 * ws_merge_tensor filled, and its merged float32 copy. */
static int whole_stats(struct workspace *ws, size_t i, struct ws_scratch *sc, const float *out,
                       struct stats_raw *raw)
{
    const struct ws_tensor *t = &ws->tensors[i];
    const float *models[MERGE_MAX_MODELS];
    for (int m = 0; m + 1 < ws->n_sources; m++)
        models[m] = sc->inputs.buf[m + 1];
    struct merge_tensor_params prm;
    merge_plan_resolve(&ws->plan, t->name, &t->info, &prm);
    stats_raw_init(raw, ws->n_sources - 1);
    return stats_accumulate(raw, sc->inputs.buf[0], models, ws->n_sources - 1, out, t->n_elements,
                            prm.density, prm.weight, &sc->method);
}

static void pass_tensor(void *ud, int64_t k, int worker)
{
    struct pass *p = ud;
    struct workspace *ws = p->ws;
    if (atomic_load(&p->cancel))
        return;
    size_t i = p->todo[k];
    const struct ws_tensor *t = &ws->tensors[i];
    struct ws_scratch *sc = &ws->scratch[worker];
    size_t n = (size_t)t->n_elements;
    /* Where the merged tensor goes: the writer's tensor i, the cache (in
     * the output dtype), or nowhere (statistics). */
    struct sink sk = { .dtype = p->fixed_dtype ? p->out_dtype : t->base_dtype,
                       .writer = p->writer, .index = i };
    if (p->keep_merged) {
        sk.dtype = ws_output_dtype(ws, i, -1);
        sk.bytes = ws->spare[i] ? ws->spare[i] : lm_malloc_array(n ? n : 1, lm_dtype_size(sk.dtype));
        ws->spare[i] = NULL;
        if (!sk.bytes) {
            pass_fail(p, LM_ENOMEM);
            return;
        }
    }
    struct stats_raw raw;
    /* Block by block where the method can: no whole-tensor copies. */
    int rc = stream_tensor(ws, i, sc, &sk, p->stats ? &raw : NULL);
    const bool whole = rc == 1;
    if (whole) {
        float *out = merge_scratch_get(&sc->inputs, WS_MAX_SOURCES, n);
        rc = out ? ws_merge_tensor(ws, i, out, sc) : LM_ENOMEM;
        if (!rc && atomic_load(&p->cancel)) {
            ws->spare[i] = sk.bytes;
            return; /* someone failed or asked to stop: skip the statistics */
        }
        if (!rc) {
            memset(&ws->nonfinite[i], 0, sizeof(ws->nonfinite[i]));
            tally_nonfinite(&ws->nonfinite[i], ws->n_sources, (float *const *)sc->inputs.buf, out, 0, n);
            if (ws->nonfinite[i].created && p->writer)
                rc = refuse_created(ws, i);
        }
        if (!rc && p->stats)
            rc = whole_stats(ws, i, sc, out, &raw);
        if (!rc)
            rc = sink_whole(&sk, sc, out, t->n_elements);
    }
    if (sk.bytes) {
        if (rc)
            ws->spare[i] = sk.bytes;
        else
            ws->merged[i] = sk.bytes;
    }
    if (rc) {
        pass_fail(p, rc);
        return;
    }
    if (p->stats) {
        ws->stats[i] = raw;
        atomic_store_explicit(&ws->stats_done[i], true, memory_order_release);
    }
    if (whole || worker == 0 || t->n_elements >= ((uint64_t)1 << 24))
        sample_memory(ws);
    pass_report(p, worker, t->n_elements);
}

static int pass_finish(struct pass *p)
{
    int rc = atomic_load(&p->failed);
    if (rc)
        lm_err(rc, "%s", p->error);
    return rc;
}

/* Largest tensors first, so that the last ones to finish are small. */
static int by_size_desc(const void *a, const void *b, void *ctx)
{
    const struct workspace *ws = ctx;
    uint64_t x = ws->tensors[*(const size_t *)a].n_elements;
    uint64_t y = ws->tensors[*(const size_t *)b].n_elements;
    if (x != y)
        return x > y ? -1 : 1;
    return *(const size_t *)a < *(const size_t *)b ? -1 : 1;
}

/* Layer by layer from the first, the tensors outside the stack (embeddings,
 * final norm, lm_head: the largest) last: statistics rows complete in the
 * order a person reads them, the first within seconds even at 7B, instead
 * of after the embedding. Largest first within a layer. */
static int by_layer_then_size(const void *a, const void *b, void *ctx)
{
    const struct workspace *ws = ctx;
    int la = ws->tensors[*(const size_t *)a].info.layer;
    int lb = ws->tensors[*(const size_t *)b].info.layer;
    unsigned ka = la < 0 ? UINT_MAX : (unsigned)la, kb = lb < 0 ? UINT_MAX : (unsigned)lb;
    if (ka != kb)
        return ka < kb ? -1 : 1;
    return by_size_desc(a, b, ctx);
}

/* Sets up a pass over the tensors todo[0 .. n_todo), which it sorts with
 * `order`. */
static void pass_init(struct pass *p, struct workspace *ws, size_t *todo, size_t n_todo,
                      int (*order)(const void *, const void *, void *),
                      lm_progress_fn progress, void *ud, const char *what)
{
    qsort_r(todo, n_todo, sizeof(*todo), order, ws);
    memset(p, 0, sizeof(*p));
    p->ws = ws;
    p->todo = todo;
    p->n_todo = n_todo;
    p->progress = progress;
    p->ud = ud;
    p->what = what;
    for (size_t k = 0; k < n_todo; k++)
        p->total_elements += ws->tensors[todo[k]].n_elements;
    atomic_init(&p->done_elements, 0);
    atomic_init(&p->failed, 0);
    atomic_init(&p->cancel, false);
}

static void release_scratch(struct workspace *ws)
{
    for (int w = 0; w < pool_n_workers(ws->pool); w++)
        ws_scratch_deinit(&ws->scratch[w]);
    memset(ws->scratch, 0, sizeof(*ws->scratch) * (size_t)pool_n_workers(ws->pool));
}

int ws_stats_compute(struct workspace *ws, lm_progress_fn progress, void *ud)
{
    int rc = ws_calibrate(ws, progress, ud); /* checks the inputs first */
    if (rc)
        return rc;
    size_t *todo = lm_malloc_array(ws->n_tensors ? ws->n_tensors : 1, sizeof(size_t));
    if (!todo)
        return LM_ENOMEM;
    size_t n = 0;
    for (size_t i = 0; i < ws->n_tensors; i++)
        if (!atomic_load(&ws->stats_done[i]))
            todo[n++] = i;
    struct pass p;
    pass_init(&p, ws, todo, n, by_layer_then_size, progress, ud, "statistics");
    p.stats = true;
    pool_for(ws->pool, (int64_t)n, pass_tensor, &p);
    release_scratch(ws);
    free(todo);
    if (progress && !atomic_load(&p.failed))
        progress(1.0, "statistics", ud);
    return pass_finish(&p);
}

const struct stats_raw *ws_tensor_stats(const struct workspace *ws, size_t i)
{
    return atomic_load_explicit(&ws->stats_done[i], memory_order_acquire) ? &ws->stats[i] : NULL;
}

/* Merges the listed tensors that are not cached yet into the cache. */
static int merge_into_cache(struct workspace *ws, bool (*want)(const struct ws_tensor *, int), int arg,
                            lm_progress_fn progress, void *ud)
{
    int rc = ws_calibrate(ws, progress, ud); /* checks the inputs first */
    if (rc)
        return rc;
    size_t *todo = lm_malloc_array(ws->n_tensors ? ws->n_tensors : 1, sizeof(size_t));
    if (!todo)
        return LM_ENOMEM;
    size_t n = 0;
    for (size_t i = 0; i < ws->n_tensors; i++)
        if (want(&ws->tensors[i], arg) && !ws->merged[i])
            todo[n++] = i;
    struct pass p;
    pass_init(&p, ws, todo, n, by_size_desc, progress, ud, "merging");
    p.keep_merged = true;
    pool_for(ws->pool, (int64_t)n, pass_tensor, &p);
    free(todo);
    return pass_finish(&p);
}

static bool in_layer(const struct ws_tensor *t, int layer)
{
    return t->info.layer == layer;
}

static bool any_tensor(const struct ws_tensor *t, int unused)
{
    (void)t;
    (void)unused;
    return true;
}

int ws_merge_layer(struct workspace *ws, int layer, lm_progress_fn progress, void *ud)
{
    return merge_into_cache(ws, in_layer, layer, progress, ud);
}

int ws_merge_all(struct workspace *ws, lm_progress_fn progress, void *ud)
{
    int rc = merge_into_cache(ws, any_tensor, 0, progress, ud);
    release_scratch(ws);
    return rc;
}

const void *ws_merged(const struct workspace *ws, size_t i)
{
    return ws->merged[i];
}

enum lm_dtype ws_output_dtype(const struct workspace *ws, size_t i, int override)
{
    if (override >= 0)
        return (enum lm_dtype)override;
    int d = ws->recipe->output.dtype ? lm_dtype_from_user_name(ws->recipe->output.dtype) : -1;
    return d >= 0 ? (enum lm_dtype)d : ws->tensors[i].base_dtype;
}

int ws_output_config(const struct workspace *ws, struct hf_config *out)
{
    const struct ws_model *m = &ws->sources[ws->config_from];
    if (!m->has_config)
        return lm_err(LM_EFORMAT, "model '%s' (%s) has no config.json to run the merged model with",
                      m->name, m->dir);
    int rc = hf_config_load(m->config.path, out);
    if (rc)
        return rc;
    char *gen = lm_path_join(m->dir, "generation_config.json");
    if (!gen)
        return LM_ENOMEM;
    rc = hf_generation_config_load(gen, out);
    free(gen);
    if (rc)
        return rc;
    out->tie_word_embeddings = ws->output_tied;
    out->has_tie_word_embeddings = true;
    if (ws->out_vocab > 0)
        out->vocab_size = ws->out_vocab;
    return 0;
}

void ws_drop_merged(struct workspace *ws)
{
    if (!ws->merged)
        return;
    for (size_t i = 0; i < ws->n_tensors; i++) {
        free(ws->merged[i]);
        ws->merged[i] = NULL;
        if (ws->spare) {
            free(ws->spare[i]);
            ws->spare[i] = NULL;
        }
    }
}

/* ===== Histograms ===== */

/* Every `stride`-th entry of source s of tensor t as float32 (0 past the
 * rows the source has). */
static float *load_sampled(const struct ws_tensor *t, int s, uint64_t stride, uint64_t n_s)
{
    const struct st_tensor *src = t->src[s];
    float *out = lm_malloc_array(n_s ? n_s : 1, sizeof(float));
    if (!out)
        return NULL;
    size_t es = lm_dtype_size(src->dtype);
    for (uint64_t k = 0; k < n_s; k++) {
        uint64_t e = k * stride;
        if (e < src->n_elements)
            lm_convert_to_f32(&out[k], (const char *)src->data + e * es, src->dtype, 1);
        else
            out[k] = 0;
    }
    return out;
}

static int hist_bin(double log_v, const struct ws_histogram *h)
{
    int b = (int)((log_v - h->lo) / (h->hi - h->lo) * h->n_bins);
    return b < 0 ? 0 : b >= h->n_bins ? h->n_bins - 1 : b;
}

int ws_delta_histogram(const struct workspace *ws, size_t i, int n_bins, uint64_t max_samples,
                       struct ws_histogram *h)
{
    const struct ws_tensor *t = &ws->tensors[i];
    memset(h, 0, sizeof(*h));
    h->n_models = ws->n_sources - 1;
    h->n_bins = LM_MAX(1, LM_MIN(n_bins, WS_HIST_MAX_BINS));
    uint64_t n = t->n_elements;
    uint64_t stride = max_samples && n > max_samples ? (n + max_samples - 1) / max_samples : 1;
    uint64_t n_s = (n + stride - 1) / stride;
    h->n_sampled = n_s;
    struct merge_tensor_params p;
    merge_plan_resolve(&ws->plan, t->name, &t->info, &p);
    float *base = load_sampled(t, 0, stride, n_s);
    float *d[MERGE_MAX_MODELS] = { NULL };
    int rc = base ? 0 : LM_ENOMEM;
    double maxabs = 0;
    for (int m = 0; m < h->n_models && !rc; m++) {
        if (!(d[m] = load_sampled(t, 1 + m, stride, n_s))) {
            rc = LM_ENOMEM;
            break;
        }
        for (uint64_t k = 0; k < n_s; k++) {
            d[m][k] -= base[k];
            maxabs = fmax(maxabs, fabs((double)d[m][k]));
        }
    }
    if (!rc) {
        h->hi = maxabs > 0 ? log10(maxabs) : 0;
        h->lo = h->hi - 6;
        for (int m = 0; m < h->n_models; m++) {
            for (uint64_t k = 0; k < n_s; k++) {
                double v = fabs((double)d[m][k]);
                if (v > 0)
                    h->counts[m][hist_bin(log10(v), h)] += 1;
            }
            h->threshold_bin[m] = -1;
            if (p.density[m] < 1.0) {
                struct topk_cut cut = topk_find(d[m], n_s, topk_count(p.density[m], n_s));
                if (isfinite(cut.threshold) && cut.threshold > 0)
                    h->threshold_bin[m] = hist_bin(log10(cut.threshold), h);
            }
        }
    }
    for (int m = 0; m < h->n_models; m++)
        free(d[m]);
    free(base);
    return rc;
}

/* ===== Statistics rows ===== */

static int row_index_for(enum ws_stats_by by, const struct ws_tensor *t, struct ws_stats_row *rows,
                         size_t n_rows, struct ws_stats_row *proto)
{
    memset(proto, 0, sizeof(*proto));
    proto->layer = t->info.layer;
    switch (by) {
    case WS_STATS_BY_TENSOR:
        snprintf(proto->label, sizeof(proto->label), "%s", t->name);
        proto->group = t->info.group;
        return -1;
    case WS_STATS_BY_LAYER:
        if (t->info.layer >= 0) {
            snprintf(proto->label, sizeof(proto->label), "layer %d", t->info.layer);
            proto->group = TN_GROUP_COUNT;
        } else {
            snprintf(proto->label, sizeof(proto->label), "%s", tn_group_name(t->info.group));
            proto->group = t->info.group;
        }
        break;
    case WS_STATS_BY_MODULE:
        if (t->info.layer >= 0)
            snprintf(proto->label, sizeof(proto->label), "layer %d %s", t->info.layer,
                     tn_group_name(t->info.group));
        else
            snprintf(proto->label, sizeof(proto->label), "%s", tn_group_name(t->info.group));
        proto->group = t->info.group;
        break;
    }
    for (size_t r = 0; r < n_rows; r++)
        if (strcmp(rows[r].label, proto->label) == 0)
            return (int)r;
    return -1;
}

int ws_stats_rows(const struct workspace *ws, enum ws_stats_by by, struct ws_stats_row **rows_out,
                  size_t *n_out)
{
    struct ws_stats_row *rows = lm_calloc(ws->n_tensors ? ws->n_tensors : 1, sizeof(*rows));
    if (!rows)
        return LM_ENOMEM;
    size_t n = 0;
    for (size_t i = 0; i < ws->n_tensors; i++) {
        if (!ws_tensor_stats(ws, i))
            continue;
        struct ws_stats_row proto;
        int r = row_index_for(by, &ws->tensors[i], rows, n, &proto);
        if (r < 0) {
            rows[n] = proto;
            stats_raw_init(&rows[n].raw, ws->n_sources - 1);
            r = (int)n++;
        }
        stats_raw_add(&rows[r].raw, &ws->stats[i]);
    }
    *rows_out = rows;
    *n_out = n;
    return 0;
}

/* ===== Writing ===== */

static bool is_weight_file(const char *name)
{
    size_t n = strlen(name);
    return strcmp(name, "model.safetensors.index.json") == 0 ||
           (strncmp(name, "model", 5) == 0 && n > 12 && strcmp(name + n - 12, ".safetensors") == 0);
}

/* Moves every file of `staging` into `out_dir` (renaming the staging
 * directory itself when `out_dir` does not exist yet). */
static int move_into_place(const char *staging, const char *out_dir)
{
    if (!lm_is_dir(out_dir)) {
        if (rename(staging, out_dir) != 0)
            return lm_err(LM_EIO, "%s: cannot move into place: %s", out_dir, strerror(errno));
        return 0;
    }
    DIR *d = opendir(staging);
    if (!d)
        return lm_err(LM_EIO, "%s: cannot list: %s", staging, strerror(errno));
    struct dirent *e;
    int rc = 0;
    while (!rc && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char *from = lm_path_join(staging, e->d_name);
        char *to = lm_path_join(out_dir, e->d_name);
        if (!from || !to)
            rc = LM_ENOMEM;
        else if (rename(from, to) != 0)
            rc = lm_err(LM_EIO, "%s: cannot move into place: %s", to, strerror(errno));
        free(from);
        free(to);
    }
    closedir(d);
    if (rc)
        return rc;
    rmdir(staging);
    return 0;
}

static int remove_stale_weights(const char *out_dir, char **keep, size_t n_keep)
{
    DIR *d = opendir(out_dir);
    if (!d)
        return 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!is_weight_file(e->d_name))
            continue;
        bool kept = false;
        for (size_t i = 0; i < n_keep && !kept; i++)
            kept = strcmp(keep[i], e->d_name) == 0;
        if (!kept) {
            char *p = lm_path_join(out_dir, e->d_name);
            if (p)
                unlink(p);
            free(p);
        }
    }
    closedir(d);
    return 0;
}

static int copy_if_exists(const char *src_dir, const char *dst_dir, const char *name)
{
    char *src = lm_path_join(src_dir, name);
    char *dst = lm_path_join(dst_dir, name);
    int rc = (!src || !dst) ? LM_ENOMEM : 0;
    if (!rc && lm_is_file(src))
        rc = lm_copy_file(src, dst);
    free(src);
    free(dst);
    return rc;
}

/* The recipe as written next to the merged model in `target`: its paths
 * relative to `target` where they can be, so that it reruns from there and
 * does not publish the user's directory layout. */
static struct recipe *recipe_for_output(const struct workspace *ws, const char *target)
{
    return recipe_rebased(ws->recipe, target);
}

static char *model_card(const struct workspace *ws, const char *recipe_json, const char *dtype_name)
{
    const struct recipe *r = ws->recipe;
    char *sources = lm_strdup("");
    for (int s = 0; sources && s < ws->n_sources; s++) {
        char *line = lm_asprintf("%s- `%s`%s\n", sources, ws->sources[s].name,
                                 s == 0 ? " (the base: task vectors are taken against it)" : "");
        free(sources);
        sources = line;
    }
    if (!sources)
        return NULL;
    char *card = lm_asprintf(
        "---\n"
        "library_name: transformers\n"
        "tags:\n- mergescope\n- merge\n"
        "---\n\n"
        "# Merged model\n\n"
        "This model was produced by mergescope with the `%s` method (%s) from:\n\n%s\n"
        "Weights are stored as %s, %zu tensors, tied embeddings: %s.\n"
        "%s%s%s"
        "\n## Recipe\n\n"
        "Running `mergescope merge mergescope-recipe.json -o OUT` reproduces these weights bit for bit.\n\n"
        "```json\n%s```\n",
        ws->plan.method->name, ws->plan.method->summary, sources, dtype_name, ws->n_tensors,
        ws->output_tied ? "yes" : "no",
        r->description ? "\n" : "", r->description ? r->description : "", r->description ? "\n" : "",
        recipe_json);
    free(sources);
    return card;
}

static int write_extras(struct workspace *ws, const char *staging, const char *target,
                        const char *torch_dtype)
{
    const struct ws_model *cfg = &ws->sources[ws->config_from];
    int rc = 0;
    if (cfg->has_config) {
        char *dst = lm_path_join(staging, "config.json");
        if (!dst)
            return LM_ENOMEM;
        int64_t vocab = 0;
        if (ws->out_vocab > 0 && cfg->config.vocab_size != ws->out_vocab)
            vocab = ws->out_vocab;
        rc = hf_config_write_output(cfg->config.path, dst, ws->output_tied, torch_dtype, vocab);
        free(dst);
        if (rc)
            return rc;
    }
    if ((rc = copy_if_exists(cfg->dir, staging, "generation_config.json")))
        return rc;
    static const char *const tokenizer_files[] = {
        "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
        "merges.txt", "added_tokens.json", "chat_template.jinja", "tokenizer.model",
    };
    for (size_t i = 0; i < LM_ARRAY_SIZE(tokenizer_files); i++)
        if ((rc = copy_if_exists(ws->sources[ws->tokenizer_from].dir, staging, tokenizer_files[i])))
            return rc;

    struct recipe *out = recipe_for_output(ws, target);
    if (!out)
        return LM_ENOMEM;
    char *json = recipe_to_json(out);
    char *path = lm_path_join(staging, "mergescope-recipe.json");
    rc = (!json || !path) ? LM_ENOMEM : lm_write_file_atomic(path, json, strlen(json));
    free(path);
    if (!rc) {
        char *card = model_card(ws, json, torch_dtype);
        char *readme = lm_path_join(staging, "README.md");
        rc = (!card || !readme) ? LM_ENOMEM : lm_write_file_atomic(readme, card, strlen(card));
        free(card);
        free(readme);
    }
    free(json);
    recipe_free(out);
    return rc;
}

static int write_weights(struct workspace *ws, const char *staging, enum lm_dtype dtype_all,
                         bool fixed_dtype, uint64_t shard_size, lm_progress_fn progress, void *ud)
{
    static const char *const meta_keys[] = { "format" };
    static const char *const meta_values[] = { "pt" };
    struct st_writer_params wp = st_writer_default_params();
    wp.shard_size = shard_size;
    wp.metadata_keys = meta_keys;
    wp.metadata_values = meta_values;
    wp.n_metadata = 1;
    struct st_writer *w = st_writer_new(staging, wp);
    if (!w)
        return LM_EIO;
    int rc = 0;
    for (size_t i = 0; i < ws->n_tensors && !rc; i++) {
        const struct ws_tensor *t = &ws->tensors[i];
        rc = st_writer_add(w, t->name, fixed_dtype ? dtype_all : t->base_dtype, t->ndim, t->shape);
    }
    if (!rc)
        rc = st_writer_begin_positional(w);

    /* Every tensor goes to its place in its shard as it is merged, block by
     * block where the method allows: nothing holds the merged model, and
     * the workers take tensors largest first. */
    size_t *todo = rc ? NULL : lm_malloc_array(ws->n_tensors ? ws->n_tensors : 1, sizeof(size_t));
    if (!rc && !todo)
        rc = LM_ENOMEM;
    if (!rc) {
        for (size_t i = 0; i < ws->n_tensors; i++)
            todo[i] = i;
        struct pass p;
        pass_init(&p, ws, todo, ws->n_tensors, by_size_desc, progress, ud, "writing");
        p.writer = w;
        p.out_dtype = dtype_all;
        p.fixed_dtype = fixed_dtype;
        pool_for(ws->pool, (int64_t)ws->n_tensors, pass_tensor, &p);
        rc = pass_finish(&p);
        /* the last word before the files go into place: may still cancel */
        if (!rc && progress && !progress(1.0, "writing", ud))
            rc = lm_err(LM_ECANCELED, "cancelled");
    }
    free(todo);
    release_scratch(ws);
    if (rc) {
        st_writer_abort(w);
        return rc;
    }
    return st_writer_commit(w);
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

int ws_write(struct workspace *ws, const char *out_dir, struct ws_write_params params,
             lm_progress_fn progress, void *ud)
{
    int prc = ws_check_output(ws, out_dir, false, params.force, NULL);
    if (prc)
        return prc;
    out_remove_stale_staging(out_dir);
    int crc = ws_calibrate(ws, progress, ud);
    if (crc)
        return crc;
    const struct recipe *r = ws->recipe;
    int dtype = params.out_dtype;
    if (dtype < 0 && r->output.dtype)
        dtype = lm_dtype_from_user_name(r->output.dtype);
    uint64_t shard = params.shard_size;
    if (!shard && r->output.shard_size && lm_parse_size(r->output.shard_size, &shard) != 0)
        return lm_err(LM_EFORMAT, "output.shard_size: \"%s\" is not a size like \"5GB\"", r->output.shard_size);
    if (!shard)
        shard = 5000000000ull;

    const char *torch_dtype = dtype >= 0 ? lm_dtype_torch_name((enum lm_dtype)dtype) : NULL;
    if (!torch_dtype) {
        const struct ws_model *cfg = &ws->sources[ws->config_from];
        torch_dtype = cfg->has_config && cfg->config.torch_dtype ? cfg->config.torch_dtype
                      : ws->n_tensors ? lm_dtype_torch_name(ws->tensors[0].base_dtype) : "float32";
    }

    /* Staging directory beside out_dir, on the same file system. */
    size_t len = strlen(out_dir);
    while (len > 1 && out_dir[len - 1] == '/')
        len--;
    char *target = lm_strndup(out_dir, len);
    char *staging = target ? lm_asprintf("%s.partial-%ld", target, (long)getpid()) : NULL;
    if (!staging) {
        free(target);
        return LM_ENOMEM;
    }
    lm_remove_dir_flat(staging);
    int rc = 0;
    char *parent = lm_path_dirname(target);
    if (!parent)
        rc = LM_ENOMEM;
    else if (!lm_is_dir(parent))
        rc = lm_err(LM_EIO, "%s: parent directory %s does not exist", target, parent);
    else if (mkdir(staging, 0755) != 0)
        rc = lm_err(LM_EIO, "%s: cannot create: %s", staging, strerror(errno));
    free(parent);
    if (!rc && lm_is_file(target))
        rc = lm_err(LM_EIO, "%s: exists and is not a directory", target);

    if (!rc)
        rc = write_weights(ws, staging, dtype >= 0 ? (enum lm_dtype)dtype : LM_DTYPE_F32, dtype >= 0,
                           shard, progress, ud);
    if (!rc)
        rc = write_extras(ws, staging, target, torch_dtype);

    char **names = NULL;
    size_t n_names = 0;
    if (!rc) {
        /* Remember which weight files the new model has, then move. */
        DIR *d = opendir(staging);
        struct dirent *e;
        while (d && !rc && (e = readdir(d)) != NULL) {
            if (!is_weight_file(e->d_name))
                continue;
            char **grown = lm_realloc_array(names, n_names + 1, sizeof(char *));
            if (!grown || !(grown[n_names] = lm_strdup(e->d_name))) {
                rc = LM_ENOMEM;
                if (grown)
                    names = grown;
                break;
            }
            names = grown;
            n_names++;
        }
        if (d)
            closedir(d);
    }
    if (!rc) {
        bool existed = lm_is_dir(target);
        rc = move_into_place(staging, target);
        if (!rc && existed)
            remove_stale_weights(target, names, n_names);
    }
    for (size_t i = 0; i < n_names; i++)
        free(names[i]);
    free(names);
    if (rc)
        lm_remove_dir_flat(staging);
    if (!rc && progress)
        progress(1.0, "done", ud);
    free(staging);
    free(target);
    return rc;
}
