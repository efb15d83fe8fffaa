/* Batched products for prefill, calibration and gradients (see kernels.h,
 * "Batched products"): out = X W^T and out = X W with W read in its own
 * type. The structure is the classic one of BLIS-style sgemm:
 *
 *   for each panel of NR (32) output columns (weight rows for X W^T):
 *     for each pass of up to KC (256) products k:
 *       pack the weight panel B[k][NR] as float32 (converted from
 *         bf16/f16/q8 in registers, transposed for X W^T): 32 KiB, L1
 *       for each group of MR (12) packed tokens:
 *         micro-kernel: a 12 x 32 tile of outputs in registers, one
 *         broadcast token value times two panel vectors per k
 *
 * Between passes the tile goes back to `out` and is reloaded, which does
 * not change any bits: every output is the chain acc = acc + w[k] * x[k]
 * for k = 0 .. K-1 in order (fused on AVX2 and AVX-512, so those two paths
 * agree bit for bit; a separate multiply and add on the portable path).
 * Columns past the end of the range and tokens past n_tok are zeros in
 * the packed panels and are never stored. */
#include "kernels.h"

#include <stdint.h>
#include <string.h>

#include "convert.h"
#include "kernels_internal.h"
#include "lm_error.h"

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#include <immintrin.h>
#define GEMM_X86 1
#else
#define GEMM_X86 0
#endif

#define MR KERNEL_GEMM_MR
#define NR KERNEL_GEMM_NR
#define KC KERNEL_GEMM_KC

/* ===== Shared helpers ===== */


/* The panel inside caller scratch, on a 64-byte boundary. */
static float *panel_of(float *scratch)
{
    uintptr_t p = (uintptr_t)scratch;
    return (float *)(void *)((p + 63) & ~(uintptr_t)63);
}

int64_t kernel_gemm_xpack_size(int64_t n_tok, int64_t k)
{
    return (n_tok + MR - 1) / MR * MR * k;
}

/* Group g holds xp[g * MR * k + kk * MR + t] = x[(g * MR + t) * ldx + kk]. */
void kernel_gemm_pack_x(float *xp, const float *x, int64_t ldx, int64_t n_tok, int64_t k,
                        int64_t g0, int64_t g1)
{
    for (int64_t g = g0; g < g1; g++) {
        float *dst = xp + g * MR * k;
        for (int64_t t = 0; t < MR; t++) {
            int64_t tok = g * MR + t;
            if (tok < n_tok) {
                const float *src = x + tok * ldx;
                for (int64_t kk = 0; kk < k; kk++)
                    dst[kk * MR + t] = src[kk];
            } else {
                for (int64_t kk = 0; kk < k; kk++)
                    dst[kk * MR + t] = 0.0f;
            }
        }
    }
}

/* ===== Portable path ===== */

/* wp[kk][j] = W[n0 + j][k0 + kk] (transposed: X W^T) or W[k0 + kk][n0 + j]
 * (X W), zero for j >= nc. */
static void pack_scalar(float *wp, const unsigned char *w, enum lm_dtype t, size_t row_bytes,
                        bool trans, int64_t n0, int64_t nc, int64_t k0, int64_t kc)
{
    for (int64_t kk = 0; kk < kc; kk++) {
        float *dst = wp + kk * NR;
        for (int64_t j = 0; j < NR; j++) {
            if (j >= nc)
                dst[j] = 0.0f;
            else if (trans)
                dst[j] = weight_at(w + (size_t)(n0 + j) * row_bytes, t, k0 + kk);
            else
                dst[j] = weight_at(w + (size_t)(k0 + kk) * row_bytes, t, n0 + j);
        }
    }
}

/* The tile c[t][j] (t < nt, j < nc; row stride ldc) = (load ? c : 0) +
 * sum_kk wp[kk][j] * xg[kk][t], in kk order. */
static void micro_scalar(float *c, int64_t ldc, const float *wp, const float *xg, int64_t kc, int nt,
                         int nc, bool load)
{
    float acc[MR][NR];
    for (int t = 0; t < nt; t++)
        for (int j = 0; j < NR; j++)
            acc[t][j] = load && j < nc ? c[t * ldc + j] : 0.0f;
    for (int64_t kk = 0; kk < kc; kk++) {
        const float *wk = wp + kk * NR, *xk = xg + kk * MR;
        for (int t = 0; t < nt; t++) {
            float xv = xk[t];
            for (int j = 0; j < NR; j++)
                acc[t][j] += wk[j] * xv;
        }
    }
    for (int t = 0; t < nt; t++)
        for (int j = 0; j < nc; j++)
            c[t * ldc + j] = acc[t][j];
}

/* ===== AVX2 + FMA + F16C path ===== */

#if GEMM_X86
#define GEMM_TARGET __attribute__((target("avx2,fma,f16c")))
#define GEMM_TARGET512 __attribute__((target("avx512f,avx2,fma,f16c")))

/* Eight weights of a row at element index k, as floats. For Q8_0, k is a
 * multiple of 8, so the eight share one group's scale. */
GEMM_TARGET __attribute__((always_inline))
static inline __m256 load8_weights(const unsigned char *row, enum lm_dtype t, int64_t k)
{
    switch (t) {
    case LM_DTYPE_BF16: {
        __m128i h = _mm_loadu_si128((const __m128i *)(const void *)(row + 2 * k));
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    case LM_DTYPE_F16:
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(row + 2 * k)));
    case LM_DTYPE_Q8_0: {
        const unsigned char *g = row + (size_t)(k / LM_Q8_GROUP) * LM_Q8_GROUP_BYTES;
        __m256 d = _mm256_set1_ps(_cvtsh_ss((unsigned short)(g[0] | g[1] << 8)));
        __m128i q = _mm_loadl_epi64((const __m128i *)(const void *)(g + 2 + k % LM_Q8_GROUP));
        return _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), d);
    }
    default:
        return _mm256_loadu_ps((const float *)(const void *)(row + 4 * k));
    }
}

/* v[j][i] = v[i][j] for an 8 x 8 block. */
GEMM_TARGET
static inline void transpose8(__m256 v[8])
{
    __m256 t0 = _mm256_unpacklo_ps(v[0], v[1]), t1 = _mm256_unpackhi_ps(v[0], v[1]);
    __m256 t2 = _mm256_unpacklo_ps(v[2], v[3]), t3 = _mm256_unpackhi_ps(v[2], v[3]);
    __m256 t4 = _mm256_unpacklo_ps(v[4], v[5]), t5 = _mm256_unpackhi_ps(v[4], v[5]);
    __m256 t6 = _mm256_unpacklo_ps(v[6], v[7]), t7 = _mm256_unpackhi_ps(v[6], v[7]);
    __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    v[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
    v[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
    v[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
    v[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
    v[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
    v[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
    v[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
    v[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

/* pack_scalar's panel for X W^T: eight weight rows at a time, eight k
 * converted per row and transposed in registers; the k tail (cols not a
 * multiple of 8) element by element. One copy per type, so that the
 * conversion is inlined. */
#define GEMM_PACK_NT(name, dtype)                                                           \
    GEMM_TARGET                                                                             \
    static void name(float *wp, const unsigned char *w, size_t row_bytes, int64_t n0,      \
                     int64_t nc, int64_t k0, int64_t kc)                                    \
    {                                                                                       \
        int64_t kc8 = kc / 8 * 8;                                                           \
        for (int64_t jb = 0; jb < NR; jb += 8) {                                            \
            int64_t nv = LM_MAX((int64_t)0, LM_MIN((int64_t)8, nc - jb));                   \
            if (nv == 0) {                                                                  \
                for (int64_t kk = 0; kk < kc; kk++)                                         \
                    memset(wp + kk * NR + jb, 0, 8 * sizeof(float));                        \
                continue;                                                                   \
            }                                                                               \
            /* rows past the end read the last valid one, then are zeroed */                \
            const unsigned char *row[8];                                                    \
            for (int64_t i = 0; i < 8; i++)                                                 \
                row[i] = w + (size_t)(n0 + jb + LM_MIN(i, nv - 1)) * row_bytes;              \
            for (int64_t kk = 0; kk < kc8; kk += 8) {                                       \
                __m256 v[8];                                                                \
                for (int64_t i = 0; i < 8; i++)                                             \
                    v[i] = load8_weights(row[i], dtype, k0 + kk);                           \
                for (int64_t i = nv; i < 8; i++)                                            \
                    v[i] = _mm256_setzero_ps();                                             \
                transpose8(v);                                                              \
                for (int64_t j = 0; j < 8; j++)                                             \
                    _mm256_store_ps(wp + (kk + j) * NR + jb, v[j]);                         \
            }                                                                               \
            for (int64_t kk = kc8; kk < kc; kk++)                                           \
                for (int64_t i = 0; i < 8; i++)                                             \
                    wp[kk * NR + jb + i] = i < nv ? weight_at(row[i], dtype, k0 + kk) : 0.0f; \
        }                                                                                   \
    }

GEMM_PACK_NT(pack_nt_bf16_avx2, LM_DTYPE_BF16)
GEMM_PACK_NT(pack_nt_f16_avx2, LM_DTYPE_F16)
GEMM_PACK_NT(pack_nt_f32_avx2, LM_DTYPE_F32)
GEMM_PACK_NT(pack_nt_q8_avx2, LM_DTYPE_Q8_0)

GEMM_TARGET
static void pack_nt_avx2(float *wp, const unsigned char *w, enum lm_dtype t, size_t row_bytes,
                         int64_t n0, int64_t nc, int64_t k0, int64_t kc)
{
    switch (t) {
    case LM_DTYPE_BF16:
        pack_nt_bf16_avx2(wp, w, row_bytes, n0, nc, k0, kc);
        break;
    case LM_DTYPE_F16:
        pack_nt_f16_avx2(wp, w, row_bytes, n0, nc, k0, kc);
        break;
    case LM_DTYPE_Q8_0:
        pack_nt_q8_avx2(wp, w, row_bytes, n0, nc, k0, kc);
        break;
    default:
        pack_nt_f32_avx2(wp, w, row_bytes, n0, nc, k0, kc);
        break;
    }
}

/* pack_scalar's panel for X W: rows of W are already panel rows. For
 * Q8_0, n0 is a multiple of 32, so each 8 columns share one scale. */
GEMM_TARGET
static void pack_nn_avx2(float *wp, const unsigned char *w, enum lm_dtype t, size_t row_bytes,
                         int64_t n0, int64_t nc, int64_t k0, int64_t kc)
{
    for (int64_t kk = 0; kk < kc; kk++) {
        const unsigned char *row = w + (size_t)(k0 + kk) * row_bytes;
        float *dst = wp + kk * NR;
        int64_t j = 0;
        for (; j + 8 <= nc; j += 8)
            _mm256_store_ps(dst + j, load8_weights(row, t, n0 + j));
        for (; j < nc; j++)
            dst[j] = weight_at(row, t, n0 + j);
        for (; j < NR; j++)
            dst[j] = 0.0f;
    }
}

/* micro_scalar for ROWS (<= 6) tokens (xg's columns t6 .. t6 + ROWS - 1)
 * by 16 panel columns (j16 .. j16 + 15), with fused multiply-adds. ROWS is
 * a constant in each copy (micro_avx2_6x16 picks one), so that a short
 * last group of tokens costs only its own rows. */
GEMM_TARGET __attribute__((always_inline))
static inline void micro_avx2_rows(float *c, int64_t ldc, const float *wp, const float *xg, int64_t kc,
                                   const int ROWS, int nc, bool load)
{
    __m256 a[6][2];
    bool full = nc == 16;
    float tmp[6][16];
    if (load && !full) {
        memset(tmp, 0, sizeof tmp);
        for (int t = 0; t < ROWS; t++)
            for (int j = 0; j < nc; j++)
                tmp[t][j] = c[t * ldc + j];
    }
#define GEMM_INIT(t)                                                                        \
    if ((t) >= ROWS || !load) {                                                             \
        a[t][0] = _mm256_setzero_ps();                                                      \
        a[t][1] = _mm256_setzero_ps();                                                      \
    } else if (full) {                                                                      \
        a[t][0] = _mm256_loadu_ps(c + (t) * ldc);                                           \
        a[t][1] = _mm256_loadu_ps(c + (t) * ldc + 8);                                       \
    } else {                                                                                \
        a[t][0] = _mm256_loadu_ps(tmp[t]);                                                  \
        a[t][1] = _mm256_loadu_ps(tmp[t] + 8);                                              \
    }
    GEMM_INIT(0) GEMM_INIT(1) GEMM_INIT(2) GEMM_INIT(3) GEMM_INIT(4) GEMM_INIT(5)
#undef GEMM_INIT
    for (int64_t kk = 0; kk < kc; kk++) {
        const float *wk = wp + kk * NR, *xk = xg + kk * MR;
        __m256 w0 = _mm256_load_ps(wk), w1 = _mm256_load_ps(wk + 8);
#define GEMM_FMA(t)                                                                         \
    if ((t) < ROWS) {                                                                       \
        __m256 b = _mm256_broadcast_ss(xk + (t));                                           \
        a[t][0] = _mm256_fmadd_ps(w0, b, a[t][0]);                                          \
        a[t][1] = _mm256_fmadd_ps(w1, b, a[t][1]);                                          \
    }
        GEMM_FMA(0) GEMM_FMA(1) GEMM_FMA(2) GEMM_FMA(3) GEMM_FMA(4) GEMM_FMA(5)
#undef GEMM_FMA
    }
    /* (constant indices throughout, so that a[][] stays in registers) */
#define GEMM_STORE(t)                                                                       \
    if ((t) >= ROWS) {                                                                      \
    } else if (full) {                                                                      \
        _mm256_storeu_ps(c + (t) * ldc, a[t][0]);                                           \
        _mm256_storeu_ps(c + (t) * ldc + 8, a[t][1]);                                       \
    } else {                                                                                \
        _mm256_storeu_ps(tmp[t], a[t][0]);                                                  \
        _mm256_storeu_ps(tmp[t] + 8, a[t][1]);                                              \
    }
    GEMM_STORE(0) GEMM_STORE(1) GEMM_STORE(2) GEMM_STORE(3) GEMM_STORE(4) GEMM_STORE(5)
#undef GEMM_STORE
    if (full)
        return;
    for (int t = 0; t < ROWS; t++)
        for (int j = 0; j < nc; j++)
            c[t * ldc + j] = tmp[t][j];
}

#define GEMM_ROWS_AVX2(r)                                                                   \
    GEMM_TARGET static void micro_avx2_r##r(float *c, int64_t ldc, const float *wp,          \
                                             const float *xg, int64_t kc, int nc, bool load) \
    {                                                                                       \
        micro_avx2_rows(c, ldc, wp, xg, kc, r, nc, load);                                   \
    }
GEMM_ROWS_AVX2(1) GEMM_ROWS_AVX2(2) GEMM_ROWS_AVX2(3)
GEMM_ROWS_AVX2(4) GEMM_ROWS_AVX2(5) GEMM_ROWS_AVX2(6)
#undef GEMM_ROWS_AVX2

/* micro_avx2_rows for nt (1 .. 6) tokens. */
GEMM_TARGET
static void micro_avx2_6x16(float *c, int64_t ldc, const float *wp, const float *xg, int64_t kc,
                            int nt, int nc, bool load)
{
    typedef void (*fn)(float *, int64_t, const float *, const float *, int64_t, int, bool);
    static const fn by_rows[6] = { micro_avx2_r1, micro_avx2_r2, micro_avx2_r3,
                                   micro_avx2_r4, micro_avx2_r5, micro_avx2_r6 };
    by_rows[nt - 1](c, ldc, wp, xg, kc, nc, load);
}

/* The 12 x 32 tile as four 6 x 16 ones (xg and wp offset, strides kept). */
GEMM_TARGET
static void micro_avx2(float *c, int64_t ldc, const float *wp, const float *xg, int64_t kc, int nt,
                       int nc, bool load)
{
    for (int th = 0; th < 2 && th * 6 < nt; th++)
        for (int jh = 0; jh < 2 && jh * 16 < nc; jh++)
            micro_avx2_6x16(c + th * 6 * ldc + jh * 16, ldc, wp + jh * 16, xg + th * 6, kc,
                            LM_MIN(6, nt - th * 6), LM_MIN(16, nc - jh * 16), load);
}

/* ===== AVX-512 path ===== */

/* micro_scalar for ROWS (<= 12) tokens by 32 panel columns: up to 24
 * accumulators, two panel vectors and one broadcast per k; partial column
 * ranges through lane masks. ROWS is a constant in each copy
 * (micro_avx512 picks one), so that a short last group of tokens costs
 * only its own rows. */
GEMM_TARGET512 __attribute__((always_inline))
static inline void micro_avx512_rows(float *c, int64_t ldc, const float *wp, const float *xg, int64_t kc,
                                     const int ROWS, int nc, bool load)
{
    __mmask16 m0 = (__mmask16)(nc >= 16 ? 0xFFFF : (1u << nc) - 1);
    __mmask16 m1 = (__mmask16)(nc >= 32 ? 0xFFFF : nc > 16 ? (1u << (nc - 16)) - 1 : 0);
    __m512 a[MR][2];
#define GEMM_INIT(t)                                                                        \
    if (load && (t) < ROWS) {                                                               \
        a[t][0] = _mm512_maskz_loadu_ps(m0, c + (t) * ldc);                                 \
        a[t][1] = _mm512_maskz_loadu_ps(m1, c + (t) * ldc + 16);                            \
    } else {                                                                                \
        a[t][0] = _mm512_setzero_ps();                                                      \
        a[t][1] = _mm512_setzero_ps();                                                      \
    }
    GEMM_INIT(0) GEMM_INIT(1) GEMM_INIT(2) GEMM_INIT(3) GEMM_INIT(4) GEMM_INIT(5)
    GEMM_INIT(6) GEMM_INIT(7) GEMM_INIT(8) GEMM_INIT(9) GEMM_INIT(10) GEMM_INIT(11)
#undef GEMM_INIT
    for (int64_t kk = 0; kk < kc; kk++) {
        const float *wk = wp + kk * NR, *xk = xg + kk * MR;
        __m512 w0 = _mm512_load_ps(wk), w1 = _mm512_load_ps(wk + 16);
#define GEMM_FMA(t)                                                                         \
    if ((t) < ROWS) {                                                                       \
        __m512 b = _mm512_set1_ps(xk[t]);                                                   \
        a[t][0] = _mm512_fmadd_ps(w0, b, a[t][0]);                                          \
        a[t][1] = _mm512_fmadd_ps(w1, b, a[t][1]);                                          \
    }
        GEMM_FMA(0) GEMM_FMA(1) GEMM_FMA(2) GEMM_FMA(3) GEMM_FMA(4) GEMM_FMA(5)
        GEMM_FMA(6) GEMM_FMA(7) GEMM_FMA(8) GEMM_FMA(9) GEMM_FMA(10) GEMM_FMA(11)
#undef GEMM_FMA
    }
#define GEMM_STORE(t)                                                                       \
    if ((t) < ROWS) {                                                                       \
        _mm512_mask_storeu_ps(c + (t) * ldc, m0, a[t][0]);                                  \
        _mm512_mask_storeu_ps(c + (t) * ldc + 16, m1, a[t][1]);                             \
    }
    GEMM_STORE(0) GEMM_STORE(1) GEMM_STORE(2) GEMM_STORE(3) GEMM_STORE(4) GEMM_STORE(5)
    GEMM_STORE(6) GEMM_STORE(7) GEMM_STORE(8) GEMM_STORE(9) GEMM_STORE(10) GEMM_STORE(11)
#undef GEMM_STORE
}

#define GEMM_ROWS_AVX512(r)                                                                 \
    GEMM_TARGET512 static void micro_avx512_r##r(float *c, int64_t ldc, const float *wp,     \
                                                  const float *xg, int64_t kc, int nc,       \
                                                  bool load)                                 \
    {                                                                                       \
        micro_avx512_rows(c, ldc, wp, xg, kc, r, nc, load);                                 \
    }
GEMM_ROWS_AVX512(1) GEMM_ROWS_AVX512(2) GEMM_ROWS_AVX512(3) GEMM_ROWS_AVX512(4)
GEMM_ROWS_AVX512(5) GEMM_ROWS_AVX512(6) GEMM_ROWS_AVX512(7) GEMM_ROWS_AVX512(8)
GEMM_ROWS_AVX512(9) GEMM_ROWS_AVX512(10) GEMM_ROWS_AVX512(11) GEMM_ROWS_AVX512(12)
#undef GEMM_ROWS_AVX512

/* micro_avx512_rows for nt (1 .. 12) tokens. */
GEMM_TARGET512
static void micro_avx512(float *c, int64_t ldc, const float *wp, const float *xg, int64_t kc, int nt,
                         int nc, bool load)
{
    typedef void (*fn)(float *, int64_t, const float *, const float *, int64_t, int, bool);
    static const fn by_rows[MR] = { micro_avx512_r1, micro_avx512_r2,  micro_avx512_r3,
                                    micro_avx512_r4, micro_avx512_r5,  micro_avx512_r6,
                                    micro_avx512_r7, micro_avx512_r8,  micro_avx512_r9,
                                    micro_avx512_r10, micro_avx512_r11, micro_avx512_r12 };
    by_rows[nt - 1](c, ldc, wp, xg, kc, nc, load);
}
#endif

/* ===== Drivers ===== */

typedef void (*micro_fn)(float *, int64_t, const float *, const float *, int64_t, int, int, bool);

static micro_fn micro_for(enum kernel_path p)
{
#if GEMM_X86
    if (p == KERNEL_PATH_AVX512)
        return micro_avx512;
    if (p == KERNEL_PATH_AVX2)
        return micro_avx2;
#else
    (void)p;
#endif
    return micro_scalar;
}

static void pack_panel(enum kernel_path p, float *wp, const unsigned char *w, enum lm_dtype t,
                       size_t row_bytes, bool trans, int64_t n0, int64_t nc, int64_t k0, int64_t kc)
{
#if GEMM_X86
    if (p >= KERNEL_PATH_AVX2) {
        if (trans)
            pack_nt_avx2(wp, w, t, row_bytes, n0, nc, k0, kc);
        else
            pack_nn_avx2(wp, w, t, row_bytes, n0, nc, k0, kc);
        return;
    }
#else
    (void)p;
#endif
    pack_scalar(wp, w, t, row_bytes, trans, n0, nc, k0, kc);
}

/* Byte offset of element i in a row of type t (for Q8_0, rounded up to
 * the group's end). */
static size_t byte_of(enum lm_dtype t, int64_t i)
{
    if (t == LM_DTYPE_Q8_0)
        return (size_t)((i + LM_Q8_GROUP - 1) / LM_Q8_GROUP) * LM_Q8_GROUP_BYTES;
    return (size_t)i * lm_dtype_size(t);
}

/* Asks for the source rows [i0, i1) of the panel (n0, nc, k0, kc) to be
 * brought towards the cache (weights usually come from memory), so that the
 * next panel's packing does not wait on them. */
static void prefetch_rows(const unsigned char *w, enum lm_dtype t, size_t row_bytes, bool trans, int64_t n0,
                          int64_t nc, int64_t k0, int64_t kc, int64_t i0, int64_t i1)
{
#if defined(__GNUC__)
    size_t b0 = trans ? byte_of(t, k0) : byte_of(t, n0), b1 = trans ? byte_of(t, k0 + kc) : byte_of(t, n0 + nc);
    int64_t first = trans ? n0 : k0;
    for (int64_t i = i0; i < i1; i++) {
        const unsigned char *p = w + (size_t)(first + i) * row_bytes;
        for (size_t b = b0; b < b1; b += 64)
            __builtin_prefetch(p + b, 0, 2);
        __builtin_prefetch(p + b1 - 1, 0, 2);
    }
#else
    (void)w, (void)t, (void)row_bytes, (void)trans, (void)n0, (void)nc, (void)k0, (void)kc, (void)i0, (void)i1;
#endif
}

/* Columns [n0_begin, n0_end) of out = X B over K products, B[k][n] being
 * W[n][k] (trans) or W[k][n]; onto out's values when accumulate.
 *
 * With causal >= 0, token t only needs the first causal + t + 1 keys (the
 * columns n of X W^T, the products k of X W), and its other entries may be
 * left undefined (X W^T) or are zeros in X (X W). Each group of tokens
 * then skips the panels past its last token's keys (X W^T) or stops its
 * chains there (X W: the products dropped are exact zeros), which changes
 * no bits of the entries that are defined. */
static void gemm_run(float *out, int64_t ldo, const unsigned char *w, enum lm_dtype wtype,
                     size_t row_bytes, bool trans, int64_t K, const float *xp, int64_t n_tok,
                     int64_t n_begin, int64_t n_end, bool accumulate, float *scratch, int64_t causal)
{
    enum kernel_path p = kernel_path_active();
    micro_fn micro = micro_for(p);
    float *wp = panel_of(scratch);
    int64_t n_groups = (n_tok + MR - 1) / MR;
    for (int64_t n0 = n_begin; n0 < n_end; n0 += NR) {
        int nc = (int)LM_MIN((int64_t)NR, n_end - n0);
        for (int64_t k0 = 0; k0 < K; k0 += KC) {
            int64_t kc = LM_MIN((int64_t)KC, K - k0);
            pack_panel(p, wp, w, wtype, row_bytes, trans, n0, nc, k0, kc);
            /* the next panel, spread over this one's token groups */
            int64_t pn0 = k0 + KC < K ? n0 : n0 + NR, pk0 = k0 + KC < K ? k0 + KC : 0;
            int64_t pnc = LM_MIN((int64_t)NR, n_end - pn0), pkc = LM_MIN((int64_t)KC, K - pk0);
            int64_t p_rows = pn0 < n_end ? (trans ? pnc : pkc) : 0;
            for (int64_t g = 0; g < n_groups; g++) {
                prefetch_rows(w, wtype, row_bytes, trans, pn0, pnc, pk0, pkc, g * p_rows / n_groups,
                              (g + 1) * p_rows / n_groups);
                int64_t kg = kc;
                if (causal >= 0) {
                    int64_t keys = causal + LM_MIN((g + 1) * MR, n_tok);
                    if (trans ? n0 >= keys : k0 >= keys)
                        continue;
                    if (!trans)
                        kg = LM_MIN(kc, keys - k0);
                }
                micro(out + g * MR * ldo + n0, ldo, wp, xp + g * MR * K + k0 * MR, kg,
                      (int)LM_MIN((int64_t)MR, n_tok - g * MR), nc, k0 > 0 || accumulate);
            }
        }
        if (K == 0 && !accumulate)
            for (int64_t t = 0; t < n_tok; t++)
                memset(out + t * ldo + n0, 0, (size_t)nc * sizeof(float));
    }
}

void kernel_gemm_nt(float *out, int64_t ldo, const void *w, enum lm_dtype wtype, int64_t cols,
                    const float *xp, int64_t n_tok, int64_t r0, int64_t r1, float *scratch)
{
    LM_ASSERT(kernel_weight_type_ok(wtype, cols));
    gemm_run(out, ldo, w, wtype, lm_dtype_bytes(wtype, (size_t)cols), true, cols, xp, n_tok, r0, r1,
             false, scratch, -1);
}

void kernel_gemm_nn(float *out, int64_t ldo, const void *w, enum lm_dtype wtype, int64_t rows,
                    int64_t cols, const float *xp, int64_t n_tok, int64_t c0, int64_t c1,
                    bool accumulate, float *scratch)
{
    LM_ASSERT(kernel_weight_type_ok(wtype, cols));
    LM_ASSERT(wtype != LM_DTYPE_Q8_0 || c0 % LM_Q8_GROUP == 0);
    gemm_run(out, ldo, w, wtype, lm_dtype_bytes(wtype, (size_t)cols), false, rows, xp, n_tok, c0, c1,
             accumulate, scratch, -1);
}

/* ===== Attention ===== */

int64_t kernel_attention_scratch_size(int64_t n_q, int64_t n_keys, int64_t hd)
{
    int64_t padded = (n_q + MR - 1) / MR * MR;
    return padded * hd + n_q * n_keys + padded * n_keys;
}

void kernel_attention(float *out, int64_t ldo, const float *q, int64_t ldq, int64_t n_q,
                      const float *k, const float *v, int64_t ldkv, int64_t pos0, int64_t hd,
                      float scale, float *scratch, float *panel)
{
    int64_t n_keys = pos0 + n_q, groups = (n_q + MR - 1) / MR;
    float *qp = scratch, *s = qp + groups * MR * hd, *pp = s + n_q * n_keys;
    size_t kv_bytes = (size_t)ldkv * sizeof(float);

    /* s = q k^T: query i against keys 0 .. pos0 + i (each score one chain
     * over the head's dimensions) */
    kernel_gemm_pack_x(qp, q, ldq, n_q, hd, 0, groups);
    gemm_run(s, n_keys, (const unsigned char *)k, LM_DTYPE_F32, kv_bytes, true, hd, qp, n_q, 0, n_keys,
             false, panel, pos0);

    /* p = softmax(s * scale) over the keys each query sees, zeros after */
    for (int64_t i = 0; i < n_q; i++) {
        float *row = s + i * n_keys;
        int64_t len = pos0 + i + 1;
        for (int64_t j = 0; j < len; j++)
            row[j] *= scale;
        kernel_softmax(row, len);
        memset(row + len, 0, (size_t)(n_keys - len) * sizeof(float));
    }

    /* out = p v (each output one chain over the keys, in order) */
    kernel_gemm_pack_x(pp, s, n_keys, n_q, n_keys, 0, groups);
    gemm_run(out, ldo, (const unsigned char *)v, LM_DTYPE_F32, kv_bytes, false, n_keys, pp, n_q, 0, hd,
             false, panel, pos0);
}

void kernel_attention_ref(float *out, int64_t ldo, const float *q, int64_t ldq, int64_t n_q,
                          const float *k, const float *v, int64_t ldkv, int64_t pos0, int64_t hd,
                          float scale, float *scores)
{
    for (int64_t i = 0; i < n_q; i++) {
        int64_t len = pos0 + i + 1;
        for (int64_t j = 0; j < len; j++) {
            double d = 0.0;
            for (int64_t c = 0; c < hd; c++)
                d += (double)q[i * ldq + c] * (double)k[j * ldkv + c];
            scores[j] = (float)d * scale;
        }
        kernel_softmax_ref(scores, len);
        for (int64_t c = 0; c < hd; c++) {
            double o = 0.0;
            for (int64_t j = 0; j < len; j++)
                o += (double)scores[j] * (double)v[j * ldkv + c];
            out[i * ldo + c] = (float)o;
        }
    }
}
