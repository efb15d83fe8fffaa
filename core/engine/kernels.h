/* The numeric kernels of the transformer forward pass, llama2.c style:
 * output first, then inputs, then sizes; float32 activations throughout.
 *
 * Weights are row-major matrices W (rows, cols) stored as F32, F16 or BF16,
 * read in place (views on a mmap or on merged buffers, possibly unaligned).
 * Each kernel has an AVX2/FMA/F16C path, chosen once at run time from the
 * CPU's feature bits, and a scalar path (the fallback on other CPUs, and
 * what kernel_force_scalar() selects for tests). A *_ref version of each is
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

/* "avx2+fma+f16c" or "scalar". */
const char *kernel_impl_name(void);

/* Forces the scalar path (on != 0) for every kernel; returns the previous
 * setting. Meant for tests and benchmarks. */
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
