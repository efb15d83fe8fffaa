/* Calibration passes for aim and sens; see calib.h for what they measure. */
#include "calib.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backward.h"
#include "convert.h"
#include "dtype.h"
#include "lm_error.h"

/* ===== Tokenization ===== */

void calib_tokens_deinit(struct calib_tokens *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->n; i++)
        free(t->seqs[i].ids);
    free(t->seqs);
    memset(t, 0, sizeof(*t));
}

/* The token that ends an assistant turn in `format`, or -1: <|im_end|> for
 * ChatML, <|eot_id|> for Llama 3, <｜end▁of▁sentence｜> for DeepSeek-R1
 * (each only if the vocabulary has it); none for plain text, whose
 * responses simply stop. */
static int32_t end_of_turn(const struct tok *t, enum chat_format format)
{
    switch (format) {
    case CHAT_FORMAT_CHATML:      return tok_token_to_id(t, "<|im_end|>");
    case CHAT_FORMAT_LLAMA3:      return tok_token_to_id(t, "<|eot_id|>");
    case CHAT_FORMAT_DEEPSEEK_R1: return tok_token_to_id(t, "<｜end▁of▁sentence｜>");
    case CHAT_FORMAT_NONE:        break;
    }
    return -1;
}

int calib_tokenize(const struct calib_file *f, const struct tok *t, enum chat_format format,
                   const char *system, int64_t max_samples, int64_t max_tokens,
                   struct calib_tokens *out)
{
    memset(out, 0, sizeof(*out));
    if (max_tokens <= 0)
        max_tokens = CALIB_DEFAULT_MAX_TOKENS;
    size_t n = f->n;
    if (max_samples > 0 && (uint64_t)max_samples < n)
        n = (size_t)max_samples;
    int32_t eot = end_of_turn(t, format);
    int rc = 0;
    if (!(out->seqs = lm_calloc(n ? n : 1, sizeof(*out->seqs))))
        return LM_ENOMEM;
    for (size_t i = 0; i < n && rc == 0; i++) {
        const struct calib_sample *s = &f->samples[i];
        struct tok_ids ids = { 0 };
        rc = chat_encode(t, format, system, s->prompt, &ids);
        size_t resp_from = ids.n;
        if (!rc)
            rc = tok_encode(t, s->response, strlen(s->response), true, &ids);
        if (!rc && eot >= 0)
            rc = tok_ids_push(&ids, eot);
        if (rc) {
            tok_ids_free(&ids);
            break;
        }
        if (resp_from == 0) {
            /* A position before the first response token is needed to
             * predict it; a prompt always gives one in chat formats. */
            tok_ids_free(&ids);
            rc = lm_err(LM_EFORMAT, "%s: sample %zu: the prompt encodes to no tokens", f->path, i + 1);
            break;
        }
        if ((int64_t)resp_from >= max_tokens) {
            tok_ids_free(&ids);
            rc = lm_err(LM_EINVAL,
                        "%s: sample %zu: the prompt alone is %zu tokens, the limit is %lld "
                        "(raise calibration.max_tokens)",
                        f->path, i + 1, resp_from, (long long)max_tokens);
            break;
        }
        if ((int64_t)ids.n > max_tokens) {
            ids.n = (size_t)max_tokens;
            out->n_truncated++;
        }
        out->seqs[i] = (struct calib_seq){
            .ids = ids.data, .len = (int64_t)ids.n, .resp_from = (int64_t)resp_from,
        };
        out->n = i + 1;
        out->n_tokens += (int64_t)ids.n;
        out->n_response_tokens += (int64_t)ids.n - (int64_t)resp_from;
    }
    if (rc)
        calib_tokens_deinit(out);
    return rc;
}

static bool report(calib_progress_fn progress, void *ud, double frac, const char *what)
{
    return !progress || progress(frac, what, ud);
}

/* ===== Activations ===== */


struct act_acc {
    int n_layer;
    int64_t width[MODEL_PROBE_COUNT];
    double **sum;     /* like calib_activations.importance, in double */
    uint64_t rows[MODEL_PROBE_COUNT];
    bool bad;         /* a probe of unexpected width fired */
};

static int act_slot(int n_layer, int layer, enum model_probe where)
{
    if (where == MODEL_PROBE_HEAD_IN)
        return n_layer * MODEL_PROBE_COUNT + MODEL_PROBE_HEAD_IN;
    return layer * MODEL_PROBE_COUNT + (int)where;
}

static void act_probe(void *ud, int layer, enum model_probe where, const float *x, int64_t n_tok,
                      int64_t dim)
{
    struct act_acc *a = ud;
    if (where >= MODEL_PROBE_COUNT || dim != a->width[where] ||
        (where != MODEL_PROBE_HEAD_IN && (layer < 0 || layer >= a->n_layer))) {
        a->bad = true;
        return;
    }
    double *s = a->sum[act_slot(a->n_layer, layer, where)];
    for (int64_t r = 0; r < n_tok; r++)
        for (int64_t c = 0; c < dim; c++)
            s[c] += fabs((double)x[r * dim + c]);
    if (layer <= 0)
        a->rows[where] += (uint64_t)n_tok;
}

void calib_activations_deinit(struct calib_activations *a)
{
    if (!a)
        return;
    int n_slots = (a->n_layer + 1) * MODEL_PROBE_COUNT;
    for (int k = -1; k < CALIB_NORM_COUNT; k++) {
        float **v = k < 0 ? a->mean_abs : a->importance[k];
        if (v)
            for (int i = 0; i < n_slots; i++)
                free(v[i]);
        free(v);
    }
    memset(a, 0, sizeof(*a));
}

/* Allocates the vectors of every used slot (mean_abs and each
 * normalisation) for a->n_layer and a->width. */
static int act_alloc(struct calib_activations *a)
{
    int n_slots = (a->n_layer + 1) * MODEL_PROBE_COUNT;
    for (int k = -1; k < CALIB_NORM_COUNT; k++) {
        float ***v = k < 0 ? &a->mean_abs : &a->importance[k];
        if (!(*v = lm_calloc((size_t)n_slots, sizeof(float *))))
            return LM_ENOMEM;
        for (int l = 0; l <= a->n_layer; l++)
            for (int w = 0; w < MODEL_PROBE_COUNT; w++) {
                if ((l == a->n_layer) != (w == MODEL_PROBE_HEAD_IN))
                    continue;
                if (!((*v)[l * MODEL_PROBE_COUNT + w] = lm_calloc((size_t)a->width[w] + 1, sizeof(float))))
                    return LM_ENOMEM;
            }
    }
    return 0;
}

/* The importance vectors from mean_abs. */
static void act_normalise(struct calib_activations *a)
{
    for (int slot = 0; slot < (a->n_layer + 1) * MODEL_PROBE_COUNT; slot++) {
        const float *m = a->mean_abs[slot];
        if (!m)
            continue;
        int64_t width = a->width[slot % MODEL_PROBE_COUNT];
        double lo = INFINITY, hi = -INFINITY;
        for (int64_t c = 0; c < width; c++) {
            lo = m[c] < lo ? m[c] : lo;
            hi = m[c] > hi ? m[c] : hi;
        }
        for (int64_t c = 0; c < width; c++) {
            a->importance[CALIB_NORM_MINMAX][slot][c] = hi > lo ? (float)((m[c] - lo) / (hi - lo)) : 0.0f;
            a->importance[CALIB_NORM_MAX][slot][c] = hi > 0 ? (float)(m[c] / hi) : 0.0f;
        }
    }
}

int calib_activations_compute(struct model *m, const struct calib_tokens *t,
                              calib_progress_fn progress, void *ud, struct calib_activations *out)
{
    memset(out, 0, sizeof(*out));
    const struct model_info *info = model_get_info(m);
    int n_layer = (int)info->n_layer;
    int n_slots = (n_layer + 1) * MODEL_PROBE_COUNT;
    struct act_acc acc = { .n_layer = n_layer };
    acc.width[MODEL_PROBE_ATTN_IN] = info->n_embd;
    acc.width[MODEL_PROBE_ATTN_OUT] = info->n_head * info->head_dim;
    acc.width[MODEL_PROBE_MLP_IN] = info->n_embd;
    acc.width[MODEL_PROBE_MLP_ACT] = info->n_ff;
    acc.width[MODEL_PROBE_HEAD_IN] = info->n_embd;
    int rc = 0;
    out->n_layer = n_layer;
    memcpy(out->width, acc.width, sizeof(acc.width));
    if (!(acc.sum = lm_calloc((size_t)n_slots, sizeof(double *)))) {
        rc = LM_ENOMEM;
        goto done;
    }
    if ((rc = act_alloc(out)) != 0)
        goto done;
    for (int slot = 0; slot < n_slots; slot++)
        if (out->mean_abs[slot] &&
            !(acc.sum[slot] = lm_calloc((size_t)acc.width[slot % MODEL_PROBE_COUNT], sizeof(double)))) {
            rc = LM_ENOMEM;
            goto done;
        }

    model_set_probe(m, act_probe, &acc);
    for (size_t i = 0; i < t->n && !rc; i++) {
        char what[64];
        snprintf(what, sizeof(what), "activations %zu/%zu", i + 1, t->n);
        if (!report(progress, ud, (double)i / (double)t->n, what)) {
            rc = lm_err(LM_ECANCELED, "calibration cancelled");
            break;
        }
        model_reset(m);
        /* No logits: with a probe set, the forward pass still shows
         * lm_head's input without multiplying by lm_head. */
        const struct calib_seq *s = &t->seqs[i];
        rc = model_forward(m, s->ids, s->len, NULL, MODEL_LOGITS_NONE);
        if (rc)
            lm_err_context(rc, "calibration sample %zu", i + 1);
    }
    model_set_probe(m, NULL, NULL);
    model_reset(m);
    if (!rc && acc.bad)
        rc = lm_err(LM_EFORMAT, "calibration: a probe reported an unexpected width");
    if (rc)
        goto done;

    /* Mean |x| per channel, then the normalisations per linear layer input. */
    for (int slot = 0; slot < n_slots; slot++) {
        if (!acc.sum[slot])
            continue;
        int w = slot % MODEL_PROBE_COUNT;
        double rows = acc.rows[w] ? (double)acc.rows[w] : 1.0;
        for (int64_t c = 0; c < acc.width[w]; c++)
            out->mean_abs[slot][c] = (float)(acc.sum[slot][c] / rows);
    }
    act_normalise(out);
    report(progress, ud, 1.0, "activations");
done:
    if (acc.sum)
        for (int i = 0; i < n_slots; i++)
            free(acc.sum[i]);
    free(acc.sum);
    if (rc)
        calib_activations_deinit(out);
    return rc;
}

const float *calib_activations_for(const struct calib_activations *a, const char *name,
                                   const struct tn_info *info, uint64_t cols, enum calib_norm norm)
{
    if (!a || norm < 0 || norm >= CALIB_NORM_COUNT || !a->importance[norm])
        return NULL;
    size_t len = strlen(name);
    if (len < 7 || strcmp(name + len - 7, ".weight") != 0)
        return NULL; /* biases and anything else */
    int where = -1;
    int layer = info->layer;
    if (info->group == TN_GROUP_LM_HEAD) {
        where = MODEL_PROBE_HEAD_IN;
        layer = a->n_layer;
    } else if (layer >= 0 && layer < a->n_layer) {
        static const struct { const char *proj; enum model_probe where; } map[] = {
            { "q_proj", MODEL_PROBE_ATTN_IN }, { "k_proj", MODEL_PROBE_ATTN_IN },
            { "v_proj", MODEL_PROBE_ATTN_IN }, { "o_proj", MODEL_PROBE_ATTN_OUT },
            { "gate_proj", MODEL_PROBE_MLP_IN }, { "up_proj", MODEL_PROBE_MLP_IN },
            { "down_proj", MODEL_PROBE_MLP_ACT },
        };
        for (size_t k = 0; k < sizeof(map) / sizeof(map[0]); k++)
            if (strcmp(info->proj, map[k].proj) == 0)
                where = (int)map[k].where;
    }
    if (where < 0 || (int64_t)cols != a->width[where])
        return NULL;
    return a->importance[norm][layer * MODEL_PROBE_COUNT + where];
}

/* ===== Sensitivities ===== */

void calib_sensitivity_deinit(struct calib_sensitivity *s)
{
    if (!s)
        return;
    free(s->layer);
    free(s->alignment);
    free(s->loss);
    memset(s, 0, sizeof(*s));
}

struct sens_sink {
    double *layer;   /* n_layer sums of this model */
    int n_layer;
    float buf[4096];
};

/* sum |w * g| of one tensor into its layer (tensors outside the layers
 * are not counted: the coefficients apply to decoder layers only). */
static int sens_tensor(void *ud, const char *name, const float *grad,
                       const struct model_tensor_view *weight, int64_t n)
{
    struct sens_sink *s = ud;
    struct tn_info info;
    tn_classify(name, &info);
    if (info.layer < 0 || info.layer >= s->n_layer)
        return 0;
    size_t esize = lm_dtype_size(weight->dtype);
    double sum = 0;
    for (int64_t off = 0; off < n; off += 4096) {
        size_t k = (size_t)(n - off < 4096 ? n - off : 4096);
        lm_convert_to_f32(s->buf, (const char *)weight->data + (size_t)off * esize, weight->dtype, k);
        for (size_t j = 0; j < k; j++)
            sum += fabs((double)s->buf[j] * (double)grad[off + (int64_t)j]);
    }
    s->layer[info.layer] += sum;
    return 0;
}

/* Mean over response rows of the cosine similarity of centred logits. */
static double centred_cosine(const float *a, const float *b, int64_t n)
{
    double ma = 0, mb = 0;
    for (int64_t i = 0; i < n; i++) {
        ma += a[i];
        mb += b[i];
    }
    ma /= (double)n;
    mb /= (double)n;
    double ab = 0, aa = 0, bb = 0;
    for (int64_t i = 0; i < n; i++) {
        double x = a[i] - ma, y = b[i] - mb;
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    return aa > 0 && bb > 0 ? ab / sqrt(aa * bb) : 0.0;
}

int calib_sensitivity_compute(struct model *base, struct model *const *models, int n_models,
                              const struct calib_tokens *t, calib_progress_fn progress, void *ud,
                              struct calib_sensitivity *out)
{
    memset(out, 0, sizeof(*out));
    if (n_models < 1 || (n_models > 1 && !base))
        return lm_err(LM_EINVAL, "calib_sensitivity_compute: bad arguments");
    const struct model_info *info = model_get_info(models[0]);
    int n_layer = (int)info->n_layer;
    int64_t n_vocab = info->n_vocab;
    bool align = n_models > 1;
    for (int i = 0; i < n_models; i++)
        if (model_get_info(models[i])->n_layer != n_layer ||
            model_get_info(models[i])->n_vocab != n_vocab)
            return lm_err(LM_EFORMAT,
                          "calibration: model %d has %lld layers and %lld vocabulary rows, model 1 "
                          "%d and %lld",
                          i + 1, (long long)model_get_info(models[i])->n_layer,
                          (long long)model_get_info(models[i])->n_vocab, n_layer, (long long)n_vocab);
    /* The alignment compares logits row for row: the base must share the
     * vocabulary (a recipe may pad or truncate embeddings; logits cannot). */
    if (align && model_get_info(base)->n_vocab != n_vocab)
        return lm_err(LM_EFORMAT,
                      "calibration: sens with several models compares the base's logits with the "
                      "models', but the base has %lld vocabulary rows and the models %lld",
                      (long long)model_get_info(base)->n_vocab, (long long)n_vocab);
    int n_part = align ? n_models + 1 : 0;  /* participants: base, then the models */
    int64_t max_len = 0;
    for (size_t i = 0; i < t->n; i++)
        max_len = t->seqs[i].len > max_len ? t->seqs[i].len : max_len;

    int rc = 0;
    float *logits = NULL, *resp = NULL;
    struct sens_sink *sink = NULL;
    out->n_layer = n_layer;
    out->n_models = n_models;
    if (!(out->layer = lm_calloc((size_t)n_models * (size_t)n_layer, sizeof(double))) ||
        !(out->alignment = lm_calloc((size_t)n_models, sizeof(double))) ||
        !(out->loss = lm_calloc((size_t)n_models, sizeof(double))) ||
        !(sink = lm_malloc(sizeof(*sink))) ||
        (align && !(logits = lm_malloc_array((size_t)max_len * (size_t)n_vocab, sizeof(float)))) ||
        (align && !(resp = lm_malloc_array((size_t)n_part * (size_t)max_len * (size_t)n_vocab,
                                           sizeof(float))))) {
        rc = LM_ENOMEM;
        goto done;
    }
    sink->n_layer = n_layer;
    struct model_grad_sink gs = { .tensor = sens_tensor, .ud = sink };
    double total_units = (double)t->n * (double)(n_models + (align ? 1 : 0));
    double units = 0;
    for (size_t i = 0; i < t->n && !rc; i++) {
        const struct calib_seq *s = &t->seqs[i];
        int64_t n_resp = s->len - s->resp_from;
        for (int p = 0; p < (align ? n_part : n_models) && !rc; p++) {
            int mi = align ? p - 1 : p;  /* -1: the base */
            char what[80];
            if (mi < 0)
                snprintf(what, sizeof(what), "alignment %zu/%zu (base)", i + 1, t->n);
            else
                snprintf(what, sizeof(what), "sensitivity %zu/%zu (model %d)", i + 1, t->n, mi + 1);
            if (!report(progress, ud, units / total_units, what)) {
                rc = lm_err(LM_ECANCELED, "calibration cancelled");
                break;
            }
            units += 1;
            if (mi < 0) {
                model_reset(base);
                rc = model_forward(base, s->ids, s->len, logits, MODEL_LOGITS_ALL);
                model_reset(base);
            } else {
                double loss = 0;
                sink->layer = out->layer + (size_t)mi * (size_t)n_layer;
                rc = model_loss_grad(models[mi], s->ids, s->len, s->resp_from, &loss,
                                     align ? logits : NULL, &gs);
                out->loss[mi] += loss;
            }
            if (rc) {
                lm_err_context(rc, "calibration sample %zu", i + 1);
                break;
            }
            if (align)  /* rows resp_from-1 .. len-2 predict the response */
                memcpy(resp + (size_t)p * (size_t)max_len * (size_t)n_vocab,
                       logits + (size_t)(s->resp_from - 1) * (size_t)n_vocab,
                       (size_t)n_resp * (size_t)n_vocab * sizeof(float));
        }
        if (rc || !align)
            continue;
        for (int mi = 0; mi < n_models; mi++) {
            const float *zi = resp + (size_t)(mi + 1) * (size_t)max_len * (size_t)n_vocab;
            for (int p = 0; p < n_part; p++) {
                if (p == mi + 1)
                    continue;
                const float *zp = resp + (size_t)p * (size_t)max_len * (size_t)n_vocab;
                for (int64_t r = 0; r < n_resp; r++)
                    out->alignment[mi] += centred_cosine(zi + r * n_vocab, zp + r * n_vocab, n_vocab) /
                                          (double)(n_part - 1);
            }
        }
    }
    if (!rc) {
        for (int mi = 0; mi < n_models; mi++) {
            out->loss[mi] /= t->n ? (double)t->n : 1.0;
            if (align && t->n_response_tokens > 0)
                out->alignment[mi] /= (double)t->n_response_tokens;
        }
        report(progress, ud, 1.0, "sensitivity");
    }
done:
    free(sink);
    free(logits);
    free(resp);
    if (rc)
        calib_sensitivity_deinit(out);
    return rc;
}

/* n * softmax(v / temp) into out: mean 1. */
static void softmax_scaled(const double *v, int n, double temp, double *out)
{
    double hi = -INFINITY, sum = 0;
    for (int i = 0; i < n; i++)
        hi = v[i] / temp > hi ? v[i] / temp : hi;
    for (int i = 0; i < n; i++) {
        out[i] = exp(v[i] / temp - hi);
        sum += out[i];
    }
    for (int i = 0; i < n; i++)
        out[i] = (double)n * out[i] / sum;
}

void calib_sens_scale(const struct calib_sensitivity *s, int layer, double alpha,
                      double temperature, double *scale)
{
    double g[64];
    int n = s->n_models;
    LM_ASSERT(n <= 64 && temperature > 0);
    if (n > 1)
        softmax_scaled(s->alignment, n, temperature, g);
    else
        g[0] = 1.0;
    for (int mi = 0; mi < n; mi++) {
        double c = 1.0;
        if (layer >= 0 && layer < s->n_layer && s->n_layer > 0) {
            const double *sl = s->layer + (size_t)mi * (size_t)s->n_layer;
            double hi = 0;
            for (int l = 0; l < s->n_layer; l++)
                hi = sl[l] > hi ? sl[l] : hi;
            /* u_l = s_l / max s; the softmax over layers of alpha u / T,
             * times the layer count. */
            double top = -INFINITY, sum = 0;
            for (int l = 0; l < s->n_layer; l++) {
                double u = hi > 0 ? sl[l] / hi : 0.0;
                double e = alpha * u / temperature;
                top = e > top ? e : top;
            }
            for (int l = 0; l < s->n_layer; l++) {
                double u = hi > 0 ? sl[l] / hi : 0.0;
                sum += exp(alpha * u / temperature - top);
            }
            double u = hi > 0 ? sl[layer] / hi : 0.0;
            c = (double)s->n_layer * exp(alpha * u / temperature - top) / sum;
        }
        scale[mi] = c * g[mi];
    }
}

/* ===== Packing ===== */

struct packer {
    unsigned char *p;
    size_t len, cap;
    const unsigned char *in;  /* unpacking */
    size_t pos;
    bool bad;
};

static void pk_put(struct packer *k, const void *v, size_t n)
{
    if (k->bad)
        return;
    if (k->len + n > k->cap) {
        size_t cap = k->cap ? 2 * k->cap : 4096;
        while (cap < k->len + n)
            cap *= 2;
        unsigned char *p = realloc(k->p, cap);
        if (!p) {
            k->bad = true;
            return;
        }
        k->p = p;
        k->cap = cap;
    }
    memcpy(k->p + k->len, v, n);
    k->len += n;
}

static void pk_get(struct packer *k, void *v, size_t n)
{
    if (k->bad || n > k->len - k->pos) {
        k->bad = true;
        memset(v, 0, n);
        return;
    }
    memcpy(v, k->in + k->pos, n);
    k->pos += n;
}

static int pk_finish(struct packer *k, void **data, size_t *len)
{
    if (k->bad) {
        free(k->p);
        return lm_err(LM_ENOMEM, "out of memory storing calibration results");
    }
    *data = k->p;
    *len = k->len;
    return 0;
}

int calib_activations_pack(const struct calib_activations *a, void **data, size_t *len)
{
    struct packer k = { 0 };
    int64_t head[2 + MODEL_PROBE_COUNT] = { CALIB_VERSION, a->n_layer };
    memcpy(head + 2, a->width, sizeof(a->width));
    pk_put(&k, head, sizeof(head));
    for (int i = 0; i < (a->n_layer + 1) * MODEL_PROBE_COUNT; i++)
        if (a->mean_abs[i])
            pk_put(&k, a->mean_abs[i], (size_t)a->width[i % MODEL_PROBE_COUNT] * sizeof(float));
    return pk_finish(&k, data, len);
}

int calib_activations_unpack(const void *data, size_t len, struct calib_activations *out)
{
    memset(out, 0, sizeof(*out));
    struct packer k = { .in = data, .len = len };
    int64_t head[2 + MODEL_PROBE_COUNT];
    pk_get(&k, head, sizeof(head));
    if (k.bad || head[0] != CALIB_VERSION || head[1] < 0 || head[1] > 100000)
        return lm_err(LM_EFORMAT, "stored activations: bad header");
    for (int w = 0; w < MODEL_PROBE_COUNT; w++)
        if (head[2 + w] < 0 || head[2 + w] > ((int64_t)1 << 24))
            return lm_err(LM_EFORMAT, "stored activations: bad width");
    out->n_layer = (int)head[1];
    memcpy(out->width, head + 2, sizeof(out->width));
    int n_slots = (out->n_layer + 1) * MODEL_PROBE_COUNT;
    if (act_alloc(out) != 0) {
        calib_activations_deinit(out);
        return LM_ENOMEM;
    }
    for (int i = 0; i < n_slots && !k.bad; i++)
        if (out->mean_abs[i])
            pk_get(&k, out->mean_abs[i], (size_t)out->width[i % MODEL_PROBE_COUNT] * sizeof(float));
    if (k.bad || k.pos != len) {
        calib_activations_deinit(out);
        return lm_err(LM_EFORMAT, "stored activations: wrong size");
    }
    act_normalise(out);
    return 0;
}

int calib_sensitivity_pack(const struct calib_sensitivity *s, void **data, size_t *len)
{
    struct packer k = { 0 };
    int64_t head[3] = { CALIB_VERSION, s->n_layer, s->n_models };
    pk_put(&k, head, sizeof(head));
    pk_put(&k, s->layer, (size_t)s->n_layer * (size_t)s->n_models * sizeof(double));
    pk_put(&k, s->alignment, (size_t)s->n_models * sizeof(double));
    pk_put(&k, s->loss, (size_t)s->n_models * sizeof(double));
    return pk_finish(&k, data, len);
}

int calib_sensitivity_unpack(const void *data, size_t len, struct calib_sensitivity *out)
{
    memset(out, 0, sizeof(*out));
    struct packer k = { .in = data, .len = len };
    int64_t head[3];
    pk_get(&k, head, sizeof(head));
    if (k.bad || head[0] != CALIB_VERSION || head[1] < 0 || head[1] > 100000 || head[2] < 1 ||
        head[2] > 64)
        return lm_err(LM_EFORMAT, "stored sensitivities: bad header");
    out->n_layer = (int)head[1];
    out->n_models = (int)head[2];
    size_t nl = (size_t)out->n_layer * (size_t)out->n_models;
    if (!(out->layer = lm_calloc(nl + 1, sizeof(double))) ||
        !(out->alignment = lm_calloc((size_t)out->n_models, sizeof(double))) ||
        !(out->loss = lm_calloc((size_t)out->n_models, sizeof(double)))) {
        calib_sensitivity_deinit(out);
        return LM_ENOMEM;
    }
    pk_get(&k, out->layer, nl * sizeof(double));
    pk_get(&k, out->alignment, (size_t)out->n_models * sizeof(double));
    pk_get(&k, out->loss, (size_t)out->n_models * sizeof(double));
    if (k.bad || k.pos != len) {
        calib_sensitivity_deinit(out);
        return lm_err(LM_EFORMAT, "stored sensitivities: wrong size");
    }
    return 0;
}
