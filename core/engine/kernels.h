/* The numeric kernels of the transformer forward pass, llama2.c style:
 * output first, then inputs, then sizes; float32 activations throughout.
 *
 * Weights are row-major matrices W (rows, cols) stored as F32, F16 or BF16,
 * read in place (views on a mmap or on merged buffers, possibly unaligned).
 * Each kernel has an AVX2/FMA/F16C path, chosen once at run time from the
 * CPU's feature bits, and a scalar path (the fallback on other CPUs, and
 * what kernel_force_scalar() selects for tests); the batched products also
 * have an AVX-512 path (enum kernel_path). A *_ref version of each is
 * the plain textbook loop, kept for the tests to compare against.
 *
 * The vector and scalar paths sum in different orders, so they agree to
 * rounding, not bit for bit. Every kernel is deterministic for a given path
 * and input: results never depend on threads (callers split work by output
 * rows, and each row is computed by one call). */
#ifndef MS_CORE_ENGINE_KERNELS_H
#define MS_CORE_ENGINE_KERNELS_H

#include <stdbool.h>
#include <stdint.h>

#include "dtype.h"

/* The code paths, from the most portable up. The AVX-512 path differs
 * from the AVX2 one only in the batched products (kernel_gemm_*); every
 * other kernel runs its AVX2 code there. */
enum kernel_path {
    KERNEL_PATH_PORTABLE, /* plain C */
    KERNEL_PATH_AVX2,     /* AVX2 + FMA + F16C */
    KERNEL_PATH_AVX512,   /* AVX-512F on top of the AVX2 set */
};

/* The path in use: the best the CPU has, capped by kernel_force_path(). */
enum kernel_path kernel_path_active(void);

/* "avx512f", "avx2+fma+f16c" or "scalar". */
const char *kernel_path_name(enum kernel_path p);

/* The name of the active path (kernel_path_name(kernel_path_active())). */
const char *kernel_impl_name(void);

/* Caps the path at `max` (KERNEL_PATH_AVX512: no cap); returns the previous
 * cap. Meant for tests and benchmarks, between products, not during one. */
enum kernel_path kernel_force_path(enum kernel_path max);

/* kernel_force_path(KERNEL_PATH_PORTABLE) when on != 0, no cap otherwise;
 * returns 1 when the previous cap was the portable path. */
int kernel_force_scalar(int on);

/* ===== Matrix products ===== */

/* True when rows of `cols` weights of type t can be multiplied: F32, F16,
 * BF16, or Q8_0 (dtype.h) when cols is a multiple of its group. */
bool kernel_weight_type_ok(enum lm_dtype t, int64_t cols);

/* Rows [r0, r1) of W (rows, cols) times n_tok input vectors:
 *   out[t * ldo + r] = sum_c W[r][c] * x[t * ldx + c]   for t in [0, n_tok)
 * W has dtype wtype (kernel_weight_type_ok; LM_ASSERT otherwise) and rows
 * of `cols` elements laid end to end. Each weight row is read once for all n_tok
 * vectors, which is what decoding (n_tok = 1) and short batches want. */
void kernel_matmul_rows(float *out, int64_t ldo, const void *w, enum lm_dtype wtype, int64_t cols,
                        const float *x, int64_t ldx, int64_t n_tok, int64_t r0, int64_t r1);
void kernel_matmul_rows_ref(float *out, int64_t ldo, const void *w, enum lm_dtype wtype, int64_t cols,
                            const float *x, int64_t ldx, int64_t n_tok, int64_t r0, int64_t r1);

/* ===== Batched products (prefill, calibration, gradients) =====
 *
 * out = X W^T and out = X W for a batch X of n_tok float32 rows and a
 * weight matrix W (rows, cols) read in place in its own type: F32, F16,
 * BF16 or Q8_0 (kernel_weight_type_ok). Weights are converted to float32
 * a cache-sized panel at a time (KERNEL_GEMM_NR weight vectors by up to
 * KERNEL_GEMM_KC products) into caller scratch, never as whole blocks;
 * activations stay float32 (no bf16 rounding of X).
 *
 * X is first packed (kernel_gemm_pack_x) into groups of KERNEL_GEMM_MR
 * tokens, the layout shared by every path. Each output element is one
 * sequential multiply-add chain over k = 0 .. K-1, so its bits depend on
 * neither the blocking, the thread count nor the batch it came in: the
 * AVX-512 and AVX2 paths (fused multiply-add) give identical bits; the
 * portable path (separate multiply and add) agrees to rounding. */

#define KERNEL_GEMM_MR 12  /* tokens per packed group */
#define KERNEL_GEMM_NR 32  /* weight vectors (output columns) per panel */
#define KERNEL_GEMM_KC 256 /* products per panel pass */

/* Floats kernel_gemm_pack_x writes for n_tok rows of k values. */
int64_t kernel_gemm_xpack_size(int64_t n_tok, int64_t k);

/* Floats of scratch one kernel_gemm_* call needs (one weight panel, plus
 * room to put it on a cache-line boundary). */
#define KERNEL_GEMM_SCRATCH (KERNEL_GEMM_NR * KERNEL_GEMM_KC + 16)

/* Packs tokens [g0 * MR, min(g1 * MR, n_tok)) of x (n_tok rows of k
 * values, row stride ldx), that is groups [g0, g1), into xp (sized by
 * kernel_gemm_xpack_size(n_tok, k)); tokens past n_tok are zeros. Groups
 * are independent: workers may pack disjoint ranges at once. */
void kernel_gemm_pack_x(float *xp, const float *x, int64_t ldx, int64_t n_tok, int64_t k,
                        int64_t g0, int64_t g1);

/* Rows [r0, r1) of out = X W^T (X packed, k = cols):
 *   out[t * ldo + r] = sum_c W[r][c] * x[t][c]
 * Any split of the rows between calls gives the same bits. */
void kernel_gemm_nt(float *out, int64_t ldo, const void *w, enum lm_dtype wtype, int64_t cols,
                    const float *xp, int64_t n_tok, int64_t r0, int64_t r1, float *scratch);

/* Columns [c0, c1) of out = X W (X packed, k = rows; W (rows, cols)):
 *   out[t * ldo + c] (+)= sum_r x[t][r] * W[r][c]
 * accumulating onto out when `accumulate`. For Q8_0, c0 must be a
 * multiple of the group (32). */
void kernel_gemm_nn(float *out, int64_t ldo, const void *w, enum lm_dtype wtype, int64_t rows,
                    int64_t cols, const float *xp, int64_t n_tok, int64_t c0, int64_t c1,
                    bool accumulate, float *scratch);

/* Causal attention of one head for a batch of n_q queries (prefill):
 * query i, at position pos0 + i, sees keys and values 0 .. pos0 + i:
 *   out[i * ldo + c] = sum_j p_ij v[j * ldkv + c],
 *   p_i = softmax_j(scale * sum_c q[i * ldq + c] k[j * ldkv + c])
 * (HF's eager attention with the causal mask). k and v point at the head's
 * first key and value; rows are ldkv floats apart (the cache's kv_dim).
 * The two products run through the batched product above (q k^T as X W^T,
 * p v as X W, float32 weights) and each group of KERNEL_GEMM_MR queries
 * stops at its last query's keys. Every score and every output is one
 * fixed chain of operations, so the bits do not depend on how a batch's
 * queries are split between calls or threads. scratch holds
 * kernel_attention_scratch_size(n_q, pos0 + n_q, hd) floats, panel
 * KERNEL_GEMM_SCRATCH. */
int64_t kernel_attention_scratch_size(int64_t n_q, int64_t n_keys, int64_t hd);
void kernel_attention(float *out, int64_t ldo, const float *q, int64_t ldq, int64_t n_q,
                      const float *k, const float *v, int64_t ldkv, int64_t pos0, int64_t hd,
                      float scale, float *scratch, float *panel);
/* The textbook loops (sums in double); scores holds pos0 + n_q floats. */
void kernel_attention_ref(float *out, int64_t ldo, const float *q, int64_t ldq, int64_t n_q,
                          const float *k, const float *v, int64_t ldkv, int64_t pos0, int64_t hd,
                          float scale, float *scores);

/* sum_i a[i] * b[i]. */
float kernel_dot(const float *a, const float *b, int64_t n);
float kernel_dot_ref(const float *a, const float *b, int64_t n);

/* y[i] += a * x[i]. */
void kernel_axpy(float *y, float a, const float *x, int64_t n);
void kernel_axpy_ref(float *y, float a, const float *x, int64_t n);

/* ===== Element-wise and normalisation ===== */

/* HF RMSNorm: o = x * rsqrt(mean(x^2) + eps) * w, the mean taken in float32
 * (accumulated in double here, then rounded). o may equal x. w has n
 * entries. */
void kernel_rmsnorm(float *o, const float *x, const float *w, int64_t n, float eps);
void kernel_rmsnorm_ref(float *o, const float *x, const float *w, int64_t n, float eps);

/* In place: x = exp(x - max) / sum(exp(x - max)). n >= 1. */
void kernel_softmax(float *x, int64_t n);
void kernel_softmax_ref(float *x, int64_t n);

/* SwiGLU's gate: gate[i] = silu(gate[i]) * up[i], silu(v) = v / (1 + e^-v). */
void kernel_silu_mul(float *gate, const float *up, int64_t n);
void kernel_silu_mul_ref(float *gate, const float *up, int64_t n);

/* HF rotate-half RoPE on n_heads vectors of head_dim (even) floats laid
 * end to end: with h = head_dim / 2, for i < h
 *   x[i]     = x[i] * cos[i] - x[i + h] * sin[i]
 *   x[i + h] = x[i + h] * cos[i] + x[i] * sin[i]
 * cos/sin hold h entries for this position (HF's cat(freqs, freqs) makes
 * both halves share them). */
void kernel_rope(float *x, int64_t n_heads, int64_t head_dim, const float *cos_t, const float *sin_t);
void kernel_rope_ref(float *x, int64_t n_heads, int64_t head_dim, const float *cos_t,
                     const float *sin_t);

/* y[i] += x[i] (residual connections). */
void kernel_add(float *y, const float *x, int64_t n);

#endif
