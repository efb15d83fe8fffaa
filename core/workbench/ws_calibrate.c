/* Calibration for the methods that need it (workspace.h, ws_calibrate and
 * ws_calib_*): the recipe's calibration data read and tokenized once per
 * settings key, the cost estimate, the activation and sensitivity passes
 * over the source models, their on-disk cache, and the results published
 * to readers on other threads. */
#include "workspace.h"

#include <errno.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "calib.h"
#include "clock.h"
#include "disk_cache.h"
#include "fsutil.h"
#include "hash.h"
#include "lm_error.h"
#include "strbuf.h"
#include "workspace_internal.h"

void ws_calib_input_deinit(struct calib_input *in)
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
        /* A file the recipe names and that is not there is a recipe error
         * (exit 3), like a missing model; other failures are I/O. */
        int rc = lm_err(errno == ENOENT || errno == ENOTDIR ? LM_EFORMAT : LM_EIO,
                        "calibration.file: cannot read '%s': %s", path, strerror(errno));
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
        ws_calib_input_deinit(&ws->calib_in);
        if ((rc = calib_input_load(ws, &ws->calib_in)) != 0) {
            ws_calib_input_deinit(&ws->calib_in);
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
