/* Qwen2 / Llama / Qwen3 forward pass (see model.h for what it computes and
 * how the work is split; the structs are in model_internal.h, shared with
 * the loss gradient in backward.c). Layout of this file: model directories
 * as weight sources; loading and validation; RoPE frequencies; the threaded
 * matrix products; attention; forward(). */
#include "model.h"

#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "convert.h"
#include "fsutil.h"
#include "kernels.h"
#include "lm_error.h"
#include "model_internal.h"
#include "pool.h"
#include "safetensors.h"

/* Batches at least this long go through the batched product
 * (kernel_gemm_nt); shorter ones (decoding is one token) read each weight
 * row once with kernel_matmul_rows. */
#define MODEL_GEMM_MIN_TOKENS 4
#define MODEL_DEFAULT_BATCH 128
/* Batched attention (kernel_attention) takes a head's queries this many at
 * a time: its scratch grows with this times the cache. */
#define MODEL_ATTN_CHUNK (4 * KERNEL_GEMM_MR)
/* Sanity bounds on config sizes, so that products of them fit easily. */
#define MODEL_MAX_DIM (1 << 24)
#define MODEL_MAX_LAYERS 4096

/* ===== Model directories ===== */

struct model_dir {
    char *path;
    struct hf_config config;
    bool has_config;
    struct st_set *weights;
};

struct model_dir *model_dir_open(const char *dir)
{
    if (!lm_is_dir(dir)) {
        lm_err(lm_is_file(dir) ? LM_EFORMAT : LM_EIO, "%s: %s", dir,
               lm_is_file(dir) ? "not a model directory" : "no such directory");
        return NULL;
    }
    struct model_dir *d = lm_calloc(1, sizeof(*d));
    if (!d)
        return NULL;
    char *cfg_path = NULL, *gen_path = NULL;
    if (!(d->path = lm_strdup(dir)) || !(cfg_path = lm_path_join(dir, "config.json")) ||
        !(gen_path = lm_path_join(dir, "generation_config.json")))
        goto fail;
    if (!lm_is_file(cfg_path)) {
        lm_err(LM_EFORMAT, "%s: no config.json (not a Hugging Face model directory)", dir);
        goto fail;
    }
    d->has_config = true;
    if (hf_config_load(cfg_path, &d->config) < 0 || hf_generation_config_load(gen_path, &d->config) < 0)
        goto fail;
    if (!(d->weights = st_set_open_dir(dir)))
        goto fail;
    free(cfg_path);
    free(gen_path);
    return d;
fail:
    free(cfg_path);
    free(gen_path);
    model_dir_close(d);
    return NULL;
}

void model_dir_close(struct model_dir *d)
{
    if (!d)
        return;
    st_set_close(d->weights);
    if (d->has_config)
        hf_config_deinit(&d->config);
    free(d->path);
    free(d);
}

const char *model_dir_path(const struct model_dir *d)
{
    return d->path;
}

const struct hf_config *model_dir_config(const struct model_dir *d)
{
    return &d->config;
}

static int model_dir_get(void *ud, const char *name, struct model_tensor_view *out)
{
    const struct model_dir *d = ud;
    const struct st_tensor *t = st_set_find(d->weights, name);
    if (!t)
        return MODEL_SOURCE_ABSENT;
    LM_ASSERT(t->ndim <= MODEL_MAX_DIMS);
    memset(out, 0, sizeof(*out));
    out->dtype = t->dtype;
    out->ndim = t->ndim;
    for (int i = 0; i < t->ndim; i++)
        out->shape[i] = t->shape[i];
    out->data = t->data;
    return 0;
}

struct model_source model_dir_source(const struct model_dir *d)
{
    struct model_source s = { model_dir_get, (void *)d, d->path };
    return s;
}

struct model_params model_default_params(void)
{
    struct model_params p = { 0, NULL, 0, MODEL_DEFAULT_BATCH };
    return p;
}

/* ===== Loading ===== */

/* "[a, b]" into buf. */
static const char *shape_str(char *buf, size_t size, int ndim, const int64_t *shape)
{
    size_t off = 0;
    off += (size_t)snprintf(buf, size, "[");
    for (int i = 0; i < ndim && off < size; i++)
        off += (size_t)snprintf(buf + off, size - off, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (off < size)
        snprintf(buf + off, size - off, "]");
    return buf;
}

/* Fetches `name` and checks dtype and shape. Absent tensors are an error
 * unless `optional`, in which case *found says whether it was there. */
static int fetch(const struct model_source *src, const char *name, int ndim, const int64_t *shape,
                 bool optional, bool *found, struct model_tensor_view *v)
{
    if (found)
        *found = false;
    int rc = src->get(src->ud, name, v);
    if (rc == MODEL_SOURCE_ABSENT) {
        if (optional)
            return 0;
        return lm_err(LM_EFORMAT, "%s: tensor '%s' is missing", src->label, name);
    }
    if (rc < 0)
        return rc;
    /* Q8_0 only for matrices whose rows split into whole groups. */
    if (!lm_dtype_is_float_supported(v->dtype) &&
        !(v->dtype == LM_DTYPE_Q8_0 && ndim == 2 && kernel_weight_type_ok(v->dtype, shape[1])))
        return lm_err(LM_EUNSUPPORTED, "%s: tensor '%s' has dtype %s; the engine runs F32, F16 and BF16",
                      src->label, name, lm_dtype_name(v->dtype));
    bool ok = v->ndim == ndim && v->data != NULL;
    for (int i = 0; ok && i < ndim; i++)
        ok = v->shape[i] == shape[i];
    if (!ok) {
        char want[96], got[96];
        return lm_err(LM_EFORMAT, "%s: tensor '%s' has shape %s, expected %s from config.json",
                      src->label, name, shape_str(got, sizeof got, v->ndim, v->shape),
                      shape_str(want, sizeof want, ndim, shape));
    }
    if (found)
        *found = true;
    return 0;
}

static int fetch_matrix(const struct model_source *src, const char *name, int64_t rows, int64_t cols,
                        bool optional, bool *found, struct model_matrix *out)
{
    struct model_tensor_view v;
    int64_t shape[2] = { rows, cols };
    int rc = fetch(src, name, 2, shape, optional, found, &v);
    if (rc < 0 || (found && !*found))
        return rc;
    out->dtype = v.dtype;
    out->data = v.data;
    out->rows = rows;
    out->cols = cols;
    return 0;
}

/* A vector of n entries converted to float32 into the model's arena (sized
 * in advance by the caller). *out stays NULL when optional and absent. */
static int fetch_vector(struct model *m, const struct model_source *src, const char *name, int64_t n,
                        bool optional, const float **out)
{
    struct model_tensor_view v;
    bool found;
    *out = NULL;
    int rc = fetch(src, name, 1, &n, optional, &found, &v);
    if (rc < 0 || !found)
        return rc;
    LM_ASSERT(m->n_vectors_used + (size_t)n <= m->n_vectors_cap);
    float *dst = m->vectors + m->n_vectors_used;
    lm_convert_to_f32(dst, v.data, v.dtype, (size_t)n);
    m->n_vectors_used += (size_t)n;
    *out = dst;
    return 0;
}

static int check_dim(const struct hf_config *c, const char *key, int64_t v, int64_t max)
{
    if (v <= 0)
        return lm_err(LM_EFORMAT, "%s: '%s' is missing or zero", c->path ? c->path : "config.json", key);
    if (v > max)
        return lm_err(LM_EFORMAT, "%s: '%s' is %lld, more than this engine allows (%lld)",
                      c->path ? c->path : "config.json", key, (long long)v, (long long)max);
    return 0;
}

/* Sizes from the config, checked for presence and consistency. */
static int check_config(const struct hf_config *c, struct model_info *info)
{
    const char *path = c->path ? c->path : "config.json";
    if (c->arch == HF_ARCH_UNKNOWN)
        return lm_err(LM_EUNSUPPORTED,
                      "%s: model_type '%s' (architecture '%s') is not supported; the engine runs "
                      "qwen2, llama and qwen3", path, c->model_type ? c->model_type : "(none)",
                      c->architecture ? c->architecture : "(none)");
    int rc;
    if ((rc = check_dim(c, "vocab_size", c->vocab_size, INT32_MAX)) ||
        (rc = check_dim(c, "hidden_size", c->hidden_size, MODEL_MAX_DIM)) ||
        (rc = check_dim(c, "intermediate_size", c->intermediate_size, MODEL_MAX_DIM)) ||
        (rc = check_dim(c, "num_hidden_layers", c->num_hidden_layers, MODEL_MAX_LAYERS)) ||
        (rc = check_dim(c, "num_attention_heads", c->num_attention_heads, 65536)) ||
        (rc = check_dim(c, "num_key_value_heads", c->num_key_value_heads, 65536)) ||
        (rc = check_dim(c, "head_dim", c->head_dim, 65536)))
        return rc;
    if (c->num_attention_heads % c->num_key_value_heads != 0)
        return lm_err(LM_EFORMAT, "%s: num_attention_heads %lld is not a multiple of "
                      "num_key_value_heads %lld", path, (long long)c->num_attention_heads,
                      (long long)c->num_key_value_heads);
    if (c->head_dim % 2 != 0)
        return lm_err(LM_EFORMAT, "%s: head_dim %lld is odd; rotary embeddings need an even size",
                      path, (long long)c->head_dim);
    if (c->num_attention_heads * c->head_dim > MODEL_MAX_DIM)
        return lm_err(LM_EFORMAT, "%s: num_attention_heads x head_dim = %lld is too large", path,
                      (long long)(c->num_attention_heads * c->head_dim));
    if (!(c->rms_norm_eps > 0.0) || !(c->rope_theta > 0.0))
        return lm_err(LM_EFORMAT, "%s: rms_norm_eps (%g) and rope_theta (%g) must be positive", path,
                      c->rms_norm_eps, c->rope_theta);
    int64_t n_ctx_train = c->max_position_embeddings;
    if (n_ctx_train <= 0) /* transformers' defaults for the three configs */
        n_ctx_train = c->arch == HF_ARCH_LLAMA ? 2048 : 32768;
    const char *rt = c->rope_scaling_type;
    if (rt && strcmp(rt, "llama3") == 0) {
        if (!(c->rope_scaling_factor > 0.0) || c->rope_scaling_original_max_position_embeddings <= 0 ||
            !(c->rope_scaling_high_freq_factor != c->rope_scaling_low_freq_factor) ||
            !(c->rope_scaling_low_freq_factor > 0.0) || !(c->rope_scaling_high_freq_factor > 0.0))
            return lm_err(LM_EFORMAT, "%s: rope_scaling 'llama3' needs factor > 0, positive and different "
                          "low_freq_factor and high_freq_factor, and original_max_position_embeddings "
                          "(got %g, %g, %g, %lld)", path, c->rope_scaling_factor,
                          c->rope_scaling_low_freq_factor, c->rope_scaling_high_freq_factor,
                          (long long)c->rope_scaling_original_max_position_embeddings);
    } else if (rt && strcmp(rt, "linear") == 0) {
        if (!(c->rope_scaling_factor > 0.0))
            return lm_err(LM_EFORMAT, "%s: rope_scaling 'linear' needs factor > 0 (got %g)", path,
                          c->rope_scaling_factor);
    } else if (rt) {
        return lm_err(LM_EUNSUPPORTED, "%s: rope_scaling type '%s' is not supported (llama3 and linear are)",
                      path, rt);
    }
    memset(info, 0, sizeof(*info));
    info->arch = c->arch;
    info->n_vocab = c->vocab_size;
    info->n_embd = c->hidden_size;
    info->n_layer = c->num_hidden_layers;
    info->n_head = c->num_attention_heads;
    info->n_kv_head = c->num_key_value_heads;
    info->head_dim = c->head_dim;
    info->n_ff = c->intermediate_size;
    info->n_ctx_train = n_ctx_train;
    info->tied = c->tie_word_embeddings;
    return 0;
}

/* HF's rope init in float32: inv_freq[i] = 1 / theta^(2i / d), then for
 * rope_type llama3 (_compute_llama3_parameters): wavelengths shorter than
 * original_max / high_freq_factor keep their frequency, longer than
 * original_max / low_freq_factor are divided by factor, and those between
 * are blended with smooth = (original_max / wavelen - low) / (high - low).
 * The operations and their order follow the PyTorch code so that the
 * float32 values come out the same. */
static void rope_init(const struct hf_config *c, float *inv_freq, int64_t head_dim)
{
    int64_t half = head_dim / 2;
    float theta = (float)c->rope_theta;
    for (int64_t i = 0; i < half; i++)
        inv_freq[i] = 1.0f / powf(theta, (float)(2 * i) / (float)head_dim);
    const char *rt = c->rope_scaling_type;
    if (rt && strcmp(rt, "linear") == 0) {
        for (int64_t i = 0; i < half; i++)
            inv_freq[i] = inv_freq[i] / (float)c->rope_scaling_factor;
    } else if (rt && strcmp(rt, "llama3") == 0) {
        float factor = (float)c->rope_scaling_factor;
        float low = (float)c->rope_scaling_low_freq_factor;
        double old_len_d = (double)c->rope_scaling_original_max_position_embeddings;
        float old_len = (float)old_len_d;
        float low_freq_wavelen = (float)(old_len_d / c->rope_scaling_low_freq_factor);
        float high_freq_wavelen = (float)(old_len_d / c->rope_scaling_high_freq_factor);
        float span = (float)(c->rope_scaling_high_freq_factor - c->rope_scaling_low_freq_factor);
        float two_pi = (float)(2.0 * 3.14159265358979323846);
        for (int64_t i = 0; i < half; i++) {
            /* `scalar / tensor` in PyTorch is tensor.reciprocal() * scalar */
            float f = inv_freq[i];
            float wavelen = (1.0f / f) * two_pi;
            float scaled = wavelen > low_freq_wavelen ? f / factor : f;
            float smooth = ((1.0f / wavelen) * old_len - low) / span;
            float smoothed = (1.0f - smooth) * scaled / factor + smooth * scaled;
            bool medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
            inv_freq[i] = medium ? smoothed : scaled;
        }
    }
}

static void free_cache(struct model *m)
{
    if (m->layers)
        for (int64_t l = 0; l < m->info.n_layer; l++) {
            free(m->layers[l].k_cache);
            free(m->layers[l].v_cache);
            m->layers[l].k_cache = m->layers[l].v_cache = NULL;
        }
    if (m->worker_scores)
        for (int w = 0; w < m->n_workers; w++) {
            free(m->worker_scores[w]);
            m->worker_scores[w] = NULL;
        }
    if (m->worker_attn)
        for (int w = 0; w < m->n_workers; w++) {
            free(m->worker_attn[w]);
            m->worker_attn[w] = NULL;
        }
    m->cache_cap = 0;
}

void model_free(struct model *m)
{
    if (!m)
        return;
    free_cache(m);
    if (m->worker_panel)
        for (int w = 0; w < m->n_workers; w++)
            free(m->worker_panel[w]);
    free(m->worker_panel);
    free(m->xpack);
    free(m->worker_scores);
    free(m->worker_attn);
    if (m->own_pool)
        pool_free(m->pool);
    free(m->x);
    free(m->xb);
    free(m->q);
    free(m->att);
    free(m->gate);
    free(m->up);
    free(m->rope_cos);
    free(m->rope_sin);
    free(m->inv_freq);
    free(m->vectors);
    free(m->layers);
    free(m);
}

static uint64_t matrix_bytes(const struct model_matrix *w)
{
    return (uint64_t)w->rows * lm_dtype_bytes(w->dtype, (size_t)w->cols);
}

static bool any_q8(const struct model *m)
{
    bool q = m->embed.dtype == LM_DTYPE_Q8_0 || m->lm_head.dtype == LM_DTYPE_Q8_0;
    for (int64_t l = 0; l < m->info.n_layer; l++) {
        const struct model_layer *L = &m->layers[l];
        const struct model_matrix *w[] = { &L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down };
        for (size_t k = 0; k < LM_ARRAY_SIZE(w); k++)
            q = q || w[k]->dtype == LM_DTYPE_Q8_0;
    }
    return q;
}

static int load_layer(struct model *m, const struct hf_config *c, const struct model_source *src,
                      int64_t l)
{
    const struct model_info *in = &m->info;
    struct model_layer *L = &m->layers[l];
    int64_t dim = in->n_embd, q_dim = in->n_head * in->head_dim, kv_dim = in->n_kv_head * in->head_dim;
    bool qkv_bias = c->arch == HF_ARCH_QWEN2 || c->attention_bias;
    bool o_bias = c->arch != HF_ARCH_QWEN2 && c->attention_bias;
    char name[160];
    int rc;
#define LAYER_NAME(suffix) (snprintf(name, sizeof name, "model.layers.%lld.%s", (long long)l, suffix), name)
    if ((rc = fetch_vector(m, src, LAYER_NAME("input_layernorm.weight"), dim, false, &L->attn_norm)) ||
        (rc = fetch_matrix(src, LAYER_NAME("self_attn.q_proj.weight"), q_dim, dim, false, NULL, &L->wq)) ||
        (rc = fetch_matrix(src, LAYER_NAME("self_attn.k_proj.weight"), kv_dim, dim, false, NULL, &L->wk)) ||
        (rc = fetch_matrix(src, LAYER_NAME("self_attn.v_proj.weight"), kv_dim, dim, false, NULL, &L->wv)) ||
        (rc = fetch_matrix(src, LAYER_NAME("self_attn.o_proj.weight"), dim, q_dim, false, NULL, &L->wo)) ||
        (rc = fetch_vector(m, src, LAYER_NAME("post_attention_layernorm.weight"), dim, false, &L->ffn_norm)) ||
        (rc = fetch_matrix(src, LAYER_NAME("mlp.gate_proj.weight"), in->n_ff, dim, false, NULL, &L->w_gate)) ||
        (rc = fetch_matrix(src, LAYER_NAME("mlp.up_proj.weight"), in->n_ff, dim, false, NULL, &L->w_up)) ||
        (rc = fetch_matrix(src, LAYER_NAME("mlp.down_proj.weight"), dim, in->n_ff, false, NULL, &L->w_down)))
        return rc;
    if (qkv_bias &&
        ((rc = fetch_vector(m, src, LAYER_NAME("self_attn.q_proj.bias"), q_dim, false, &L->bq)) ||
         (rc = fetch_vector(m, src, LAYER_NAME("self_attn.k_proj.bias"), kv_dim, false, &L->bk)) ||
         (rc = fetch_vector(m, src, LAYER_NAME("self_attn.v_proj.bias"), kv_dim, false, &L->bv))))
        return rc;
    if (o_bias && (rc = fetch_vector(m, src, LAYER_NAME("self_attn.o_proj.bias"), dim, false, &L->bo)))
        return rc;
    if (c->arch == HF_ARCH_QWEN3 &&
        ((rc = fetch_vector(m, src, LAYER_NAME("self_attn.q_norm.weight"), in->head_dim, false, &L->q_norm)) ||
         (rc = fetch_vector(m, src, LAYER_NAME("self_attn.k_norm.weight"), in->head_dim, false, &L->k_norm))))
        return rc;
#undef LAYER_NAME
    m->info.weight_bytes += matrix_bytes(&L->wq) + matrix_bytes(&L->wk) + matrix_bytes(&L->wv) +
                            matrix_bytes(&L->wo) + matrix_bytes(&L->w_gate) + matrix_bytes(&L->w_up) +
                            matrix_bytes(&L->w_down);
    return 0;
}

struct model *model_load(const struct hf_config *cfg, const struct model_source *src,
                         struct model_params params)
{
    struct model_info info;
    if (check_config(cfg, &info) < 0)
        return NULL;
    struct model *m = lm_calloc(1, sizeof(*m));
    if (!m)
        return NULL;
    m->info = info;
    m->eps = (float)cfg->rms_norm_eps;
    m->attn_scale = (float)(1.0 / sqrt((double)info.head_dim));
    m->info.n_ctx = params.n_ctx > 0 && params.n_ctx < info.n_ctx_train ? params.n_ctx : info.n_ctx_train;
    m->n_batch = params.n_batch > 0 ? params.n_batch : MODEL_DEFAULT_BATCH;
    if (m->n_batch > m->info.n_ctx)
        m->n_batch = m->info.n_ctx;
    m->info.n_batch = m->n_batch;

    int64_t dim = info.n_embd, hd = info.head_dim, nl = info.n_layer;
    int64_t q_dim = info.n_head * hd, kv_dim = info.n_kv_head * hd;
    /* float32 copies: per layer two norms, q/k/v/o biases, q/k norms; the final norm */
    m->n_vectors_cap = (size_t)(nl * (2 * dim + q_dim + 2 * kv_dim + dim + 2 * hd) + dim);
    if (!(m->layers = lm_calloc((size_t)nl, sizeof(*m->layers))) ||
        !(m->vectors = lm_malloc_array(m->n_vectors_cap, sizeof(float))) ||
        !(m->inv_freq = lm_malloc_array((size_t)(hd / 2), sizeof(float))))
        goto fail;

    /* Tensors, checked against the config. */
    int64_t emb_shape[2] = { info.n_vocab, dim };
    if (fetch_matrix(src, "model.embed_tokens.weight", emb_shape[0], emb_shape[1], false, NULL, &m->embed) < 0 ||
        fetch_vector(m, src, "model.norm.weight", dim, false, &m->final_norm) < 0)
        goto fail;
    for (int64_t l = 0; l < nl; l++)
        if (load_layer(m, cfg, src, l) < 0)
            goto fail;
    if (info.tied) {
        m->lm_head = m->embed;
    } else {
        bool found;
        if (fetch_matrix(src, "lm_head.weight", info.n_vocab, dim, true, &found, &m->lm_head) < 0)
            goto fail;
        if (!found) {
            lm_err(LM_EFORMAT, "%s: tensor 'lm_head.weight' is missing and config.json does not set "
                   "tie_word_embeddings", src->label);
            goto fail;
        }
    }
    m->info.weight_bytes += matrix_bytes(&m->lm_head);
    m->info.quantized = any_q8(m);
    rope_init(cfg, m->inv_freq, hd);

    /* Threads: the pool does all parallel work; OpenBLAS runs inside it. */
    if (params.pool) {
        m->pool = params.pool;
    } else {
        if (!(m->pool = pool_new(params.n_threads)))
            goto fail;
        m->own_pool = true;
    }
    m->n_workers = pool_n_workers(m->pool);
    m->info.n_threads = m->n_workers;
    /* OpenBLAS is left with the float32-by-float32 products of the
     * gradient (backward.c), on the pool's threads: never its own. */
    openblas_set_num_threads(1);

    /* Scratch for one batch. */
    size_t B = (size_t)m->n_batch;
    int64_t max_cols = LM_MAX(LM_MAX(dim, info.n_ff), q_dim);
    m->xpack_cols = LM_MAX(max_cols, (int64_t)KERNEL_GEMM_KC);
    if (!(m->x = lm_malloc_array(B * (size_t)dim, sizeof(float))) ||
        !(m->xb = lm_malloc_array(B * (size_t)dim, sizeof(float))) ||
        !(m->q = lm_malloc_array(B * (size_t)q_dim, sizeof(float))) ||
        !(m->att = lm_malloc_array(B * (size_t)q_dim, sizeof(float))) ||
        !(m->gate = lm_malloc_array(B * (size_t)info.n_ff, sizeof(float))) ||
        !(m->up = lm_malloc_array(B * (size_t)info.n_ff, sizeof(float))) ||
        !(m->rope_cos = lm_malloc_array(B * (size_t)(hd / 2), sizeof(float))) ||
        !(m->rope_sin = lm_malloc_array(B * (size_t)(hd / 2), sizeof(float))) ||
        !(m->worker_scores = lm_calloc((size_t)m->n_workers, sizeof(float *))) ||
        !(m->worker_attn = lm_calloc((size_t)m->n_workers, sizeof(float *))) ||
        !(m->xpack = lm_malloc_array((size_t)(MODEL_GEMM_CHUNK * m->xpack_cols), sizeof(float))) ||
        !(m->worker_panel = lm_calloc((size_t)m->n_workers, sizeof(float *))))
        goto fail;
    for (int w = 0; w < m->n_workers; w++)
        if (!(m->worker_panel[w] = lm_malloc_array(KERNEL_GEMM_SCRATCH, sizeof(float))))
            goto fail;
    return m;
fail:
    model_free(m);
    return NULL;
}

const struct model_info *model_get_info(const struct model *m)
{
    return &m->info;
}

int64_t model_n_past(const struct model *m)
{
    return m->n_past;
}

void model_reset(struct model *m)
{
    m->n_past = 0;
}

int model_truncate(struct model *m, int64_t n_past)
{
    if (n_past < 0 || n_past > m->n_past)
        return lm_err(LM_EINVAL, "cannot truncate the KV cache to %lld positions: it holds %lld",
                      (long long)n_past, (long long)m->n_past);
    m->n_past = n_past;
    return 0;
}

/* Makes room for `need` positions in every cache (doubling, capped at
 * n_ctx). On failure the old buffers stay as they were. */
static int reserve_cache(struct model *m, int64_t need)
{
    if (need <= m->cache_cap)
        return 0;
    int64_t cap = LM_MAX(need, LM_MIN(m->info.n_ctx, LM_MAX(2 * m->cache_cap, (int64_t)256)));
    size_t kv_dim = (size_t)(m->info.n_kv_head * m->info.head_dim);
    for (int64_t l = 0; l < m->info.n_layer; l++) {
        struct model_layer *L = &m->layers[l];
        float *k = lm_realloc_array(L->k_cache, (size_t)cap, kv_dim * sizeof(float));
        if (!k)
            return LM_ENOMEM;
        L->k_cache = k;
        float *v = lm_realloc_array(L->v_cache, (size_t)cap, kv_dim * sizeof(float));
        if (!v)
            return LM_ENOMEM;
        L->v_cache = v;
    }
    for (int w = 0; w < m->n_workers; w++) {
        float *s = lm_realloc_array(m->worker_scores[w], (size_t)cap, sizeof(float));
        if (!s)
            return LM_ENOMEM;
        m->worker_scores[w] = s;
        int64_t n_attn = kernel_attention_scratch_size(MODEL_ATTN_CHUNK, cap, m->info.head_dim);
        float *a = lm_realloc_array(m->worker_attn[w], (size_t)n_attn, sizeof(float));
        if (!a)
            return LM_ENOMEM;
        m->worker_attn[w] = a;
    }
    m->cache_cap = cap;
    return 0;
}

/* ===== Matrix products on the pool ===== */

static void mm_run(void *ud, int64_t index, int worker)
{
    struct model_mm_job *job = ud;
    int k = 0;
    while (index >= job->task[k].n_blocks) {
        index -= job->task[k].n_blocks;
        k++;
    }
    const struct model_mm_task *t = &job->task[k];
    const struct model_matrix *w = t->w;
    int64_t r0 = index * t->block_rows;
    int64_t r1 = LM_MIN(r0 + t->block_rows, w->rows);
    if (!job->gemm) {
        kernel_matmul_rows(t->out, t->ldo, w->data, w->dtype, w->cols, job->x, job->ldx, job->n_tok, r0, r1);
        return;
    }
    /* out[t0 + t][r] = sum_c x[t0 + t][c] * W[r][c] for the chunk */
    kernel_gemm_nt(t->out + job->t0 * t->ldo, t->ldo, w->data, w->dtype, w->cols, job->m->xpack, job->nt,
                   r0, r1, job->m->worker_panel[worker]);
}

/* Packs token group `index` of the chunk for kernel_gemm_nt. */
static void mm_pack(void *ud, int64_t index, int worker)
{
    (void)worker;
    struct model_mm_job *job = ud;
    kernel_gemm_pack_x(job->m->xpack, job->x + job->t0 * job->ldx, job->ldx, job->nt, job->task[0].w->cols,
                       index, index + 1);
}

void model_mm_add(struct model_mm_job *job, const struct model_matrix *w, float *out, int64_t ldo)
{
    LM_ASSERT(job->n_task < (int)LM_ARRAY_SIZE(job->task));
    LM_ASSERT(job->n_task == 0 || job->task[0].w->cols == w->cols);
    LM_ASSERT(w->cols <= job->m->xpack_cols);
    struct model_mm_task *t = &job->task[job->n_task++];
    t->w = w;
    t->out = out;
    t->ldo = ldo;
    if (job->gemm) {
        t->block_rows = MODEL_GEMM_BLOCK_ROWS;
    } else {
        /* about eight blocks per worker, for balance */
        t->block_rows = w->rows / (8 * job->m->n_workers);
        t->block_rows = LM_MAX((int64_t)4, LM_MIN((int64_t)64, t->block_rows));
    }
    t->n_blocks = (w->rows + t->block_rows - 1) / t->block_rows;
}

void model_mm_begin(struct model_mm_job *job, struct model *m, const float *x, int64_t ldx,
                    int64_t n_tok, bool gemm)
{
    memset(job, 0, sizeof(*job));
    job->m = m;
    job->x = x;
    job->ldx = ldx;
    job->n_tok = n_tok;
    job->gemm = gemm;
}

void model_mm_run(struct model_mm_job *job)
{
    int64_t n = 0;
    for (int k = 0; k < job->n_task; k++)
        n += job->task[k].n_blocks;
    if (!job->gemm) {
        pool_for(job->m->pool, n, mm_run, job);
        return;
    }
    for (job->t0 = 0; job->t0 < job->n_tok; job->t0 += MODEL_GEMM_CHUNK) {
        job->nt = LM_MIN((int64_t)MODEL_GEMM_CHUNK, job->n_tok - job->t0);
        pool_for(job->m->pool, (job->nt + KERNEL_GEMM_MR - 1) / KERNEL_GEMM_MR, mm_pack, job);
        pool_for(job->m->pool, n, mm_run, job);
    }
}

/* out[t] += bias for each of n_tok rows. */
static void add_bias(float *out, int64_t ldo, const float *bias, int64_t n, int64_t n_tok)
{
    if (!bias)
        return;
    for (int64_t t = 0; t < n_tok; t++)
        kernel_add(out + t * ldo, bias, n);
}

/* ===== Attention ===== */

struct attn_job {
    struct model *m;
    const struct model_layer *L;
    int64_t pos0;     /* position of the batch's first token */
    int64_t n_tok;
};

/* One (token, head): softmax(q . k_j * scale) over positions 0..pos, then
 * the weighted sum of v_j. Mirrors HF's eager attention with the causal
 * mask (future positions get no weight) and repeat_kv's head sharing. */
static void attn_run(void *ud, int64_t index, int worker)
{
    const struct attn_job *job = ud;
    struct model *m = job->m;
    const struct model_info *in = &m->info;
    int64_t hd = in->head_dim, q_dim = in->n_head * hd, kv_dim = in->n_kv_head * hd;
    int64_t t = index / in->n_head, h = index % in->n_head;
    int64_t kvh = h / (in->n_head / in->n_kv_head);
    int64_t n_keys = job->pos0 + t + 1;
    const float *q = m->q + t * q_dim + h * hd;
    const float *kc = job->L->k_cache + kvh * hd;
    const float *vc = job->L->v_cache + kvh * hd;
    float *scores = m->worker_scores[worker];
    for (int64_t j = 0; j < n_keys; j++)
        scores[j] = kernel_dot(q, kc + j * kv_dim, hd) * m->attn_scale;
    kernel_softmax(scores, n_keys);
    float *out = m->att + t * q_dim + h * hd;
    memset(out, 0, (size_t)hd * sizeof(float));
    for (int64_t j = 0; j < n_keys; j++)
        kernel_axpy(out, scores[j], vc + j * kv_dim, hd);
}

/* One (chunk of MODEL_ATTN_CHUNK queries, head) of a batch through
 * kernel_attention, the longest chunks first. The bits are those of any
 * other split of the queries (kernel_attention), so neither the chunk
 * size nor the thread count changes them. */
static void attn_batch_run(void *ud, int64_t index, int worker)
{
    const struct attn_job *job = ud;
    struct model *m = job->m;
    const struct model_info *in = &m->info;
    int64_t hd = in->head_dim, q_dim = in->n_head * hd, kv_dim = in->n_kv_head * hd;
    int64_t n_chunks = (job->n_tok + MODEL_ATTN_CHUNK - 1) / MODEL_ATTN_CHUNK;
    int64_t c = n_chunks - 1 - index / in->n_head, h = index % in->n_head;
    int64_t kvh = h / (in->n_head / in->n_kv_head);
    int64_t t0 = c * MODEL_ATTN_CHUNK, nq = LM_MIN((int64_t)MODEL_ATTN_CHUNK, job->n_tok - t0);
    kernel_attention(m->att + t0 * q_dim + h * hd, q_dim, m->q + t0 * q_dim + h * hd, q_dim, nq,
                     job->L->k_cache + kvh * hd, job->L->v_cache + kvh * hd, kv_dim, job->pos0 + t0, hd,
                     m->attn_scale, m->worker_attn[worker], m->worker_panel[worker]);
}

/* ===== Forward ===== */

/* One batch of n_tok <= n_batch tokens at positions n_past.. The logits
 * of rows [lrow0, n_tok) go to `logits` (n_vocab floats per row) when it
 * is not NULL. The cache has room for them already. */
static void forward_batch(struct model *m, const int32_t *tokens, int64_t n_tok, float *logits,
                          int64_t lrow0)
{
    const struct model_info *in = &m->info;
    int64_t dim = in->n_embd, hd = in->head_dim, half = hd / 2, ff = in->n_ff;
    int64_t n_head = in->n_head, n_kv = in->n_kv_head;
    int64_t q_dim = n_head * hd, kv_dim = n_kv * hd;
    int64_t pos0 = m->n_past;
    float *x = m->x, *xb = m->xb;
    struct model_mm_job job;

    /* Token embeddings: x = embed_tokens(input_ids). */
    size_t row_bytes = lm_dtype_bytes(m->embed.dtype, (size_t)dim);
    for (int64_t t = 0; t < n_tok; t++)
        lm_convert_to_f32(x + t * dim, (const unsigned char *)m->embed.data + (size_t)tokens[t] * row_bytes,
                          m->embed.dtype, (size_t)dim);

    /* Rotary tables for this batch's positions: HF computes
     * freqs = inv_freq (float32) * position, then cos/sin in float32. */
    for (int64_t t = 0; t < n_tok; t++) {
        float pos = (float)(pos0 + t);
        for (int64_t i = 0; i < half; i++) {
            float a = m->inv_freq[i] * pos;
            m->rope_cos[t * half + i] = cosf(a);
            m->rope_sin[t * half + i] = sinf(a);
        }
    }

    for (int64_t l = 0; l < in->n_layer; l++) {
        const struct model_layer *L = &m->layers[l];
        float *kc = L->k_cache + pos0 * kv_dim, *vc = L->v_cache + pos0 * kv_dim;

        /* hidden_states = self.input_layernorm(hidden_states) */
        for (int64_t t = 0; t < n_tok; t++)
            kernel_rmsnorm(xb + t * dim, x + t * dim, L->attn_norm, dim, m->eps);

        if (m->probe)
            m->probe(m->probe_ud, (int)l, MODEL_PROBE_ATTN_IN, xb, n_tok, dim);

        /* q/k/v projections; keys and values land straight in the cache. */
        model_mm_begin(&job, m, xb, dim, n_tok, n_tok >= MODEL_GEMM_MIN_TOKENS);
        model_mm_add(&job, &L->wq, m->q, q_dim);
        model_mm_add(&job, &L->wk, kc, kv_dim);
        model_mm_add(&job, &L->wv, vc, kv_dim);
        model_mm_run(&job);
        add_bias(m->q, q_dim, L->bq, q_dim, n_tok);
        add_bias(kc, kv_dim, L->bk, kv_dim, n_tok);
        add_bias(vc, kv_dim, L->bv, kv_dim, n_tok);

        /* Qwen3: q_norm / k_norm, RMSNorm over each head, before RoPE. */
        if (L->q_norm) {
            for (int64_t t = 0; t < n_tok; t++) {
                for (int64_t h = 0; h < n_head; h++) {
                    float *v = m->q + t * q_dim + h * hd;
                    kernel_rmsnorm(v, v, L->q_norm, hd, m->eps);
                }
                for (int64_t h = 0; h < n_kv; h++) {
                    float *v = kc + t * kv_dim + h * hd;
                    kernel_rmsnorm(v, v, L->k_norm, hd, m->eps);
                }
            }
        }

        /* apply_rotary_pos_emb(q, k, cos, sin) */
        for (int64_t t = 0; t < n_tok; t++) {
            kernel_rope(m->q + t * q_dim, n_head, hd, m->rope_cos + t * half, m->rope_sin + t * half);
            kernel_rope(kc + t * kv_dim, n_kv, hd, m->rope_cos + t * half, m->rope_sin + t * half);
        }

        /* attn_output = softmax(q k^T * scaling + causal_mask) v */
        struct attn_job aj = { m, L, pos0, n_tok };
        if (n_tok >= MODEL_GEMM_MIN_TOKENS)
            pool_for(m->pool, (n_tok + MODEL_ATTN_CHUNK - 1) / MODEL_ATTN_CHUNK * n_head, attn_batch_run, &aj);
        else
            pool_for(m->pool, n_tok * n_head, attn_run, &aj);

        if (m->probe)
            m->probe(m->probe_ud, (int)l, MODEL_PROBE_ATTN_OUT, m->att, n_tok, q_dim);

        /* hidden_states = residual + self.o_proj(attn_output) */
        model_mm_begin(&job, m, m->att, q_dim, n_tok, n_tok >= MODEL_GEMM_MIN_TOKENS);
        model_mm_add(&job, &L->wo, xb, dim);
        model_mm_run(&job);
        add_bias(xb, dim, L->bo, dim, n_tok);
        for (int64_t t = 0; t < n_tok; t++)
            kernel_add(x + t * dim, xb + t * dim, dim);

        /* hidden_states = self.post_attention_layernorm(hidden_states) */
        for (int64_t t = 0; t < n_tok; t++)
            kernel_rmsnorm(xb + t * dim, x + t * dim, L->ffn_norm, dim, m->eps);

        if (m->probe)
            m->probe(m->probe_ud, (int)l, MODEL_PROBE_MLP_IN, xb, n_tok, dim);

        /* mlp: down_proj(act_fn(gate_proj(x)) * up_proj(x)) */
        model_mm_begin(&job, m, xb, dim, n_tok, n_tok >= MODEL_GEMM_MIN_TOKENS);
        model_mm_add(&job, &L->w_gate, m->gate, ff);
        model_mm_add(&job, &L->w_up, m->up, ff);
        model_mm_run(&job);
        for (int64_t t = 0; t < n_tok; t++)
            kernel_silu_mul(m->gate + t * ff, m->up + t * ff, ff);
        if (m->probe)
            m->probe(m->probe_ud, (int)l, MODEL_PROBE_MLP_ACT, m->gate, n_tok, ff);
        model_mm_begin(&job, m, m->gate, ff, n_tok, n_tok >= MODEL_GEMM_MIN_TOKENS);
        model_mm_add(&job, &L->w_down, xb, dim);
        model_mm_run(&job);
        for (int64_t t = 0; t < n_tok; t++)
            kernel_add(x + t * dim, xb + t * dim, dim);
    }

    /* logits = lm_head(norm(hidden_states)) for the rows asked for */
    if (logits && lrow0 < n_tok) {
        int64_t n_rows = n_tok - lrow0;
        for (int64_t t = 0; t < n_rows; t++)
            kernel_rmsnorm(xb + t * dim, x + (lrow0 + t) * dim, m->final_norm, dim, m->eps);
        if (m->probe)
            m->probe(m->probe_ud, -1, MODEL_PROBE_HEAD_IN, xb, n_rows, dim);
        model_mm_begin(&job, m, xb, dim, n_rows, n_rows >= MODEL_GEMM_MIN_TOKENS);
        model_mm_add(&job, &m->lm_head, logits, in->n_vocab);
        model_mm_run(&job);
    } else if (!logits && lrow0 == n_tok + 1 && m->probe) {
        /* MODEL_LOGITS_NONE with a probe: show lm_head's input without
         * paying for lm_head (a vocabulary-sized matrix). */
        for (int64_t t = 0; t < n_tok; t++)
            kernel_rmsnorm(xb + t * dim, x + t * dim, m->final_norm, dim, m->eps);
        m->probe(m->probe_ud, -1, MODEL_PROBE_HEAD_IN, xb, n_tok, dim);
    }
    m->n_past += n_tok;
}

void model_set_probe(struct model *m, model_probe_fn fn, void *ud)
{
    m->probe = fn;
    m->probe_ud = fn ? ud : NULL;
}

int model_forward(struct model *m, const int32_t *tokens, int64_t n, float *logits,
                  enum model_logits which)
{
    const struct model_info *in = &m->info;
    if (n <= 0)
        return n == 0 ? 0 : lm_err(LM_EINVAL, "model_forward: negative token count %lld", (long long)n);
    for (int64_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= in->n_vocab)
            return lm_err(LM_EINVAL, "token id %d (at %lld) is outside the vocabulary [0, %lld)",
                          (int)tokens[i], (long long)i, (long long)in->n_vocab);
    if (n > in->n_ctx - m->n_past)
        return lm_err(LM_EINVAL, "%lld tokens after %lld would pass the context of %lld positions%s",
                      (long long)n, (long long)m->n_past, (long long)in->n_ctx,
                      in->n_ctx == in->n_ctx_train ? " (max_position_embeddings)" : "");
    int rc = reserve_cache(m, m->n_past + n);
    if (rc < 0)
        return rc;
    for (int64_t done = 0; done < n;) {
        int64_t nb = LM_MIN(m->n_batch, n - done);
        float *out = NULL;
        int64_t lrow0 = which == MODEL_LOGITS_NONE ? nb + 1 : nb; /* nb + 1: no logits at all */
        if (which == MODEL_LOGITS_ALL && logits) {
            out = logits + done * in->n_vocab;
            lrow0 = 0;
        } else if (which == MODEL_LOGITS_LAST && logits && done + nb == n) {
            out = logits;
            lrow0 = nb - 1;
        }
        forward_batch(m, tokens + done, nb, out, lrow0);
        done += nb;
    }
    return 0;
}
