/* The transformer: Qwen2, Llama (with llama3 RoPE scaling) and Qwen3 decoder
 * stacks as Hugging Face transformers defines them, run on the CPU with
 * float32 activations and a float32 KV cache.
 *
 * What is implemented, per HF's modeling_qwen2.py / modeling_llama.py /
 * modeling_qwen3.py:
 *   x = embed_tokens[ids]
 *   per layer:  h = input_layernorm(x)                      RMSNorm, eps from config
 *               q, k, v = q_proj(h), k_proj(h), v_proj(h)   biases: Qwen2 q/k/v always;
 *                                                           Llama/Qwen3 q/k/v/o when
 *                                                           attention_bias is true
 *               q, k = q_norm(q), k_norm(k)                 Qwen3 only, per head
 *               q, k = rope(q), rope(k)                     rotate-half, inv_freq =
 *                                                           1 / theta^(2i/d) in float32
 *                                                           (llama3/linear scaling too)
 *               x += o_proj(softmax(q k^T / sqrt(d) + causal) v)   GQA: kv head = head / (H/KV)
 *               x += down_proj(silu(gate_proj(h2)) * up_proj(h2)),  h2 = post_attention_layernorm(x)
 *   logits = lm_head(norm(x))       lm_head = embed_tokens when tie_word_embeddings
 *
 * Weights are never copied whole: the model keeps views that a model_source
 * hands out (a model directory's mmap, or merged buffers held in memory) and
 * reads F32/F16/BF16 in place; matrices may also be Q8_0 (dtype.h), the
 * 8-bit form a preview of a merged model can be held in. Only the small vectors (norm weights,
 * biases) are converted to float32 copies at load time.
 *
 * Speed: decoding (one token) and short batches use kernel_matmul_rows,
 * which reads each weight row once in its stored dtype, with the rows split
 * across the thread pool. Longer batches (prefill) use the batched product
 * kernel_gemm_nt (kernels.h): the batch is packed once, then each pool
 * worker takes blocks of weight rows and converts them a cache-sized panel
 * at a time in its own scratch while it multiplies the whole batch by
 * them. The pool is the only source of parallelism (OpenBLAS, left with
 * the gradient's float32 products, is set to one thread). Results do not
 * depend on the number of threads.
 *
 * A model is not thread-safe: one forward pass (or model_loss_grad, see
 * backward.h) at a time. */
#ifndef MS_CORE_ENGINE_MODEL_H
#define MS_CORE_ENGINE_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "dtype.h"
#include "hf_config.h"

struct pool;

/* ===== Where the weights come from ===== */

#define MODEL_MAX_DIMS 8

/* A tensor as the model sees it: a borrowed view. `data` holds
 * shape-product elements of `dtype`, may be unaligned, and must stay valid
 * and unchanged until model_free(). */
struct model_tensor_view {
    enum lm_dtype dtype;
    int           ndim;
    int64_t       shape[MODEL_MAX_DIMS];
    const void   *data;
};

/* get() returned this: the source has no tensor of that name (no error
 * recorded; the model decides whether that is an error). */
#define MODEL_SOURCE_ABSENT 1

/* A set of named tensors. get() returns 0 after filling *out,
 * MODEL_SOURCE_ABSENT, or a negative LM_E* code after lm_err(). `label`
 * names the model in messages (a directory, a recipe). */
struct model_source {
    int (*get)(void *ud, const char *name, struct model_tensor_view *out);
    void *ud;
    const char *label;
};

/* A model directory: config.json (plus generation_config.json's EOS ids)
 * and its safetensors weights, memory-mapped. */
struct model_dir;

/* NULL with an error: LM_EIO when `dir` cannot be read, LM_EFORMAT when
 * config.json is missing or malformed or the weights are. */
struct model_dir *model_dir_open(const char *dir);
void model_dir_close(struct model_dir *d);
const char *model_dir_path(const struct model_dir *d);
const struct hf_config *model_dir_config(const struct model_dir *d);
/* A source serving the directory's tensors; valid while `d` is open. */
struct model_source model_dir_source(const struct model_dir *d);

/* ===== The model ===== */

struct model_params {
    int n_threads;       /* <= 0: one per CPU; ignored when `pool` is set */
    struct pool *pool;   /* borrowed pool to run on; NULL: the model makes its own */
    int64_t n_ctx;       /* positions the KV cache may hold; <= 0 or more than
                            max_position_embeddings: max_position_embeddings */
    int64_t n_batch;     /* tokens per forward step in prefill, bounding the
                            scratch memory; <= 0: 128 */
};
struct model_params model_default_params(void);

/* What was loaded, for callers that size buffers or print a summary. */
struct model_info {
    enum hf_arch arch;
    int64_t n_vocab;       /* rows of embed_tokens and lm_head (config vocab_size) */
    int64_t n_embd;        /* hidden_size */
    int64_t n_layer;
    int64_t n_head;
    int64_t n_kv_head;
    int64_t head_dim;
    int64_t n_ff;          /* intermediate_size */
    int64_t n_ctx;         /* usable positions */
    int64_t n_ctx_train;   /* max_position_embeddings */
    bool    tied;          /* lm_head is embed_tokens */
    uint64_t weight_bytes; /* bytes of weights one decoded token reads: every
                              projection matrix and lm_head, not the embedding */
    int64_t n_batch;       /* tokens per forward step */
    int n_threads;
    bool    quantized;     /* some matrix is Q8_0 (dtype.h): forward only, no gradients */
};

struct model;

/* Checks `cfg` (architecture, sizes, RoPE settings) and every tensor's
 * presence, dtype and shape against it, then prepares the run state. NULL
 * with an error: LM_EUNSUPPORTED for an architecture, RoPE scaling type or
 * dtype this engine cannot run (naming it), LM_EFORMAT for a config value
 * that is missing or out of range or a tensor that is missing or has the
 * wrong shape (naming the tensor, the expected and the actual shape), or
 * the source's own error. `cfg` is not kept; `src`'s views must outlive the
 * model. */
struct model *model_load(const struct hf_config *cfg, const struct model_source *src,
                         struct model_params params);
/* Accepts NULL. */
void model_free(struct model *m);

const struct model_info *model_get_info(const struct model *m);
/* Positions held in the KV cache: the next token goes at this position. */
int64_t model_n_past(const struct model *m);

/* Empties the KV cache. */
void model_reset(struct model *m);
/* Forgets positions from n_past on (keeps a shared prompt prefix). LM_EINVAL
 * when n_past is negative or more than model_n_past(). */
int model_truncate(struct model *m, int64_t n_past);

enum model_logits {
    MODEL_LOGITS_NONE,   /* only fill the KV cache */
    MODEL_LOGITS_LAST,   /* logits[n_vocab] for the last token */
    MODEL_LOGITS_ALL,    /* logits[n * n_vocab], one row per token */
};

/* Runs tokens[0..n) at positions n_past .. n_past + n - 1, appending their
 * keys and values to the cache, and writes the logits asked for. On error
 * (LM_EINVAL: a token id outside [0, n_vocab), or positions beyond n_ctx;
 * LM_ENOMEM growing the cache) the model is unchanged. */
int model_forward(struct model *m, const int32_t *tokens, int64_t n, float *logits,
                  enum model_logits which);

/* ===== Probes =====
 *
 * A probe sees the inputs of the linear layers while model_forward runs,
 * for methods that weigh parameters by the activations they multiply
 * (AIM's calibration statistics, for instance). */

/* Where a probe looks: the input of the linear layers at one point of a layer. */
enum model_probe {
    MODEL_PROBE_ATTN_IN,   /* input of q/k/v_proj: input_layernorm(x), n_embd wide */
    MODEL_PROBE_ATTN_OUT,  /* input of o_proj: the attention output, n_head*head_dim wide */
    MODEL_PROBE_MLP_IN,    /* input of gate/up_proj: post_attention_layernorm(x), n_embd wide */
    MODEL_PROBE_MLP_ACT,   /* input of down_proj: silu(gate)*up, n_ff wide */
    MODEL_PROBE_HEAD_IN,   /* input of lm_head: norm(x), n_embd wide; layer = -1; for the rows whose
                              logits are computed, or for every row under MODEL_LOGITS_NONE (the
                              final norm is then computed for the probe alone, lm_head is not) */
    MODEL_PROBE_COUNT
};
/* Called by model_forward for each batch it runs with `n_tok` rows of `dim` floats. */
typedef void (*model_probe_fn)(void *ud, int layer, enum model_probe where,
                               const float *x, int64_t n_tok, int64_t dim);
/* Sets (fn != NULL) or clears the probe. The probe runs on the calling
 * thread, in layer order (ATTN_IN, ATTN_OUT, MLP_IN, MLP_ACT per layer,
 * then HEAD_IN), once per batch of at most n_batch tokens; `x` is valid
 * only during the call, rows of `dim` floats laid end to end. Only
 * model_forward calls it (model_loss_grad does not). */
void model_set_probe(struct model *m, model_probe_fn fn, void *ud);

#endif
