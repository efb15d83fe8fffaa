/* The model's insides, shared by the forward pass (model.c) and the loss
 * gradient (backward.c). Nothing outside those two files includes this:
 * everyone else sees struct model as an opaque handle through model.h.
 *
 * Shapes are (rows, cols), row-major, llama2.c style. */
#ifndef MS_CORE_ENGINE_MODEL_INTERNAL_H
#define MS_CORE_ENGINE_MODEL_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dtype.h"
#include "kernels.h"
#include "model.h"

struct pool;

/* Batched products (kernel_gemm_*) take the batch's activations packed in
 * chunks of at most MODEL_GEMM_CHUNK tokens (a multiple of the kernels'
 * token group), and split a matrix's output rows into tasks of
 * MODEL_GEMM_BLOCK_ROWS (whole panels). Neither changes any bits. */
#define MODEL_GEMM_CHUNK (11 * KERNEL_GEMM_MR)
#define MODEL_GEMM_BLOCK_ROWS (2 * KERNEL_GEMM_NR)

/* A weight matrix W (rows, cols), row-major, read in place. */
struct model_matrix {
    enum lm_dtype dtype;
    const void *data;
    int64_t rows, cols;
};

struct model_layer {
    const float *attn_norm;        /* (dim) input_layernorm */
    struct model_matrix wq;        /* (n_head * head_dim, dim) */
    struct model_matrix wk;        /* (n_kv_head * head_dim, dim) */
    struct model_matrix wv;        /* (n_kv_head * head_dim, dim) */
    struct model_matrix wo;        /* (dim, n_head * head_dim) */
    const float *bq, *bk, *bv, *bo; /* biases of the same rows, or NULL */
    const float *q_norm, *k_norm;  /* (head_dim) Qwen3 only, else NULL */
    const float *ffn_norm;         /* (dim) post_attention_layernorm */
    struct model_matrix w_gate;    /* (n_ff, dim) */
    struct model_matrix w_up;      /* (n_ff, dim) */
    struct model_matrix w_down;    /* (dim, n_ff) */
    float *k_cache, *v_cache;      /* (cache_cap, n_kv_head * head_dim) */
};

struct model {
    struct model_info info;
    float eps;
    float attn_scale;              /* 1 / sqrt(head_dim) */
    struct model_matrix embed;     /* (n_vocab, dim) */
    struct model_matrix lm_head;   /* (n_vocab, dim); the embedding when tied */
    const float *final_norm;       /* (dim) */
    struct model_layer *layers;    /* n_layer */
    float *inv_freq;               /* (head_dim / 2) RoPE inverse frequencies */
    float *vectors;                /* owned float32 copies of norms and biases */
    size_t n_vectors_used, n_vectors_cap;

    struct pool *pool;
    bool own_pool;
    int n_workers;
    int64_t n_batch;
    int64_t n_past;
    int64_t cache_cap;             /* positions allocated in each cache */

    model_probe_fn probe;          /* NULL: no probe */
    void *probe_ud;

    /* scratch for one batch of up to n_batch tokens */
    float *x;                      /* (n_batch, dim) residual stream */
    float *xb;                     /* (n_batch, dim) normed input / block output */
    float *q;                      /* (n_batch, n_head * head_dim) */
    float *att;                    /* (n_batch, n_head * head_dim) attention output */
    float *gate, *up;              /* (n_batch, n_ff) */
    float *rope_cos, *rope_sin;    /* (n_batch, head_dim / 2) */
    float **worker_scores;         /* per worker: (cache_cap) attention weights */
    float **worker_attn;           /* per worker: kernel_attention's scratch for a
                                      chunk of queries against cache_cap keys */
    float **worker_panel;          /* per worker: KERNEL_GEMM_SCRATCH floats, the
                                      weight panel of kernel_gemm_* */
    float *xpack;                  /* activations packed for kernel_gemm_*: up to
                                      MODEL_GEMM_CHUNK tokens of xpack_cols */
    int64_t xpack_cols;            /* >= every matrix's cols and KERNEL_GEMM_KC */
};

/* ===== Matrix products on the pool =====
 *
 * out[t][r] = sum_c x[t][c] * W[r][c] for up to three matrices sharing one
 * input, run as one pool_for over blocks of weight rows (after one that
 * packs the input, for batched products). Each output element is computed
 * by one fixed chain of operations whatever the blocking and the batch:
 * results do not depend on the thread count. */

struct model_mm_task {
    const struct model_matrix *w;
    float *out;
    int64_t ldo;
    int64_t block_rows;
    int64_t n_blocks;
};

struct model_mm_job {
    struct model *m;
    const float *x;     /* (n_tok, ldx) */
    int64_t ldx;
    int64_t n_tok;
    bool gemm;          /* kernel_gemm_nt on packed input; else kernel_matmul_rows */
    struct model_mm_task task[3];
    int n_task;
    int64_t t0, nt;     /* the token chunk being run (gemm) */
};

/* Starts a job over n_tok input rows of x. `gemm` picks the batched
 * product (for batches) over reading each weight row once (decoding). */
void model_mm_begin(struct model_mm_job *job, struct model *m, const float *x, int64_t ldx,
                    int64_t n_tok, bool gemm);
/* Adds W's product, written to out with row stride ldo (at most three). */
void model_mm_add(struct model_mm_job *job, const struct model_matrix *w, float *out, int64_t ldo);
/* Runs every product added and returns when all are done. */
void model_mm_run(struct model_mm_job *job);

#endif
