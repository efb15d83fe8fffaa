/* Forward-pass kernels: a reference loop, a scalar path and an AVX2/FMA/F16C
 * path for each (see kernels.h). The vector exp used by softmax and SiLU is
 * Cephes' expf polynomial (about 1 ulp on the reduced range); inputs are
 * clamped to [-87.3, 88] so that the 2^n scaling never overflows. */
#include "kernels.h"

#include <math.h>
#include <stdatomic.h>
#include <string.h>

#include "convert.h"
#include "kernels_internal.h"
#include "lm_error.h"

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>
#define KERNEL_X86 1
#else
#define KERNEL_X86 0
#endif

/* ===== Dispatch ===== */

static atomic_int kernel_path_cap = KERNEL_PATH_AVX512;
static atomic_int kernel_cpu_path = -1; /* -1: not checked yet */

/* The best path the CPU (and the OS, for the wide registers) supports:
 * AVX2 and FMA through __builtin_cpu_supports, F16C from CPUID leaf 1 (not
 * every compiler knows it as a __builtin_cpu_supports name), AVX-512F
 * through __builtin_cpu_supports (which checks that the OS saves the
 * registers). */
static int cpu_best_path(void)
{
#if KERNEL_X86
    unsigned eax, ebx, ecx, edx;
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma"))
        return KERNEL_PATH_PORTABLE;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx) || !(ecx & (1u << 29)))
        return KERNEL_PATH_PORTABLE;
    return __builtin_cpu_supports("avx512f") ? KERNEL_PATH_AVX512 : KERNEL_PATH_AVX2;
#else
    return KERNEL_PATH_PORTABLE;
#endif
}

enum kernel_path kernel_path_active(void)
{
    int best = atomic_load_explicit(&kernel_cpu_path, memory_order_relaxed);
    if (best < 0) {
        best = cpu_best_path();
        atomic_store_explicit(&kernel_cpu_path, best, memory_order_relaxed);
    }
    int cap = atomic_load_explicit(&kernel_path_cap, memory_order_relaxed);
    return (enum kernel_path)LM_MIN(best, cap);
}

static int use_vector(void)
{
    return kernel_path_active() >= KERNEL_PATH_AVX2;
}

const char *kernel_path_name(enum kernel_path p)
{
    switch (p) {
    case KERNEL_PATH_AVX512:
        return "avx512f";
    case KERNEL_PATH_AVX2:
        return "avx2+fma+f16c";
    default:
        return "scalar";
    }
}

const char *kernel_impl_name(void)
{
    return kernel_path_name(kernel_path_active());
}

enum kernel_path kernel_force_path(enum kernel_path max)
{
    return (enum kernel_path)atomic_exchange(&kernel_path_cap, (int)max);
}

int kernel_force_scalar(int on)
{
    return kernel_force_path(on ? KERNEL_PATH_PORTABLE : KERNEL_PATH_AVX512) == KERNEL_PATH_PORTABLE;
}

bool kernel_weight_type_ok(enum lm_dtype t, int64_t cols)
{
    return lm_dtype_is_float_supported(t) || (t == LM_DTYPE_Q8_0 && cols % LM_Q8_GROUP == 0);
}


/* ===== Reference versions (the definitions the tests check against) ===== */

void kernel_matmul_rows_ref(float *out, int64_t ldo, const void *w, enum lm_dtype wtype, int64_t cols,
                            const float *x, int64_t ldx, int64_t n_tok, int64_t r0, int64_t r1)
{
    LM_ASSERT(kernel_weight_type_ok(wtype, cols));
    const unsigned char *wb = w;
    size_t row_bytes = lm_dtype_bytes(wtype, (size_t)cols);
    for (int64_t r = r0; r < r1; r++) {
        const unsigned char *row = wb + (size_t)r * row_bytes;
        for (int64_t t = 0; t < n_tok; t++) {
            double s = 0.0;
            for (int64_t c = 0; c < cols; c++)
                s += (double)weight_at(row, wtype, c) * (double)x[t * ldx + c];
            out[t * ldo + r] = (float)s;
        }
    }
}

float kernel_dot_ref(const float *a, const float *b, int64_t n)
{
    double s = 0.0;
    for (int64_t i = 0; i < n; i++)
        s += (double)a[i] * (double)b[i];
    return (float)s;
}

void kernel_axpy_ref(float *y, float a, const float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        y[i] += a * x[i];
}

void kernel_rmsnorm_ref(float *o, const float *x, const float *w, int64_t n, float eps)
{
    double ss = 0.0;
    for (int64_t i = 0; i < n; i++)
        ss += (double)x[i] * (double)x[i];
    float inv = (float)(1.0 / sqrt(ss / (double)n + (double)eps));
    for (int64_t i = 0; i < n; i++)
        o[i] = w[i] * (x[i] * inv);
}

void kernel_softmax_ref(float *x, int64_t n)
{
    double mx = x[0];
    for (int64_t i = 1; i < n; i++)
        if (x[i] > mx)
            mx = x[i];
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++)
        sum += exp((double)x[i] - mx);
    for (int64_t i = 0; i < n; i++)
        x[i] = (float)(exp((double)x[i] - mx) / sum);
}

void kernel_silu_mul_ref(float *gate, const float *up, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        double g = gate[i];
        gate[i] = (float)(g / (1.0 + exp(-g)) * (double)up[i]);
    }
}

void kernel_rope_ref(float *x, int64_t n_heads, int64_t head_dim, const float *cos_t,
                     const float *sin_t)
{
    int64_t h = head_dim / 2;
    for (int64_t k = 0; k < n_heads; k++) {
        float *v = x + k * head_dim;
        for (int64_t i = 0; i < h; i++) {
            double x1 = v[i], x2 = v[i + h];
            v[i] = (float)(x1 * cos_t[i] - x2 * sin_t[i]);
            v[i + h] = (float)(x2 * cos_t[i] + x1 * sin_t[i]);
        }
    }
}

/* ===== Scalar path ===== */

static float dot_row_scalar(const unsigned char *row, enum lm_dtype t, const float *x, int64_t n)
{
    float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 += weight_at(row, t, i) * x[i];
        s1 += weight_at(row, t, i + 1) * x[i + 1];
        s2 += weight_at(row, t, i + 2) * x[i + 2];
        s3 += weight_at(row, t, i + 3) * x[i + 3];
    }
    for (; i < n; i++)
        s0 += weight_at(row, t, i) * x[i];
    return (s0 + s1) + (s2 + s3);
}

/* A Q8_0 row: each group's products summed, then scaled once. */
static float dot_row_q8_scalar(const unsigned char *row, const float *x, int64_t n)
{
    float s = 0.0f;
    for (int64_t g = 0; g < n; g += LM_Q8_GROUP, row += LM_Q8_GROUP_BYTES) {
        const int8_t *q = (const int8_t *)(const void *)(row + 2);
        float gs = 0.0f;
        for (int i = 0; i < LM_Q8_GROUP; i++)
            gs += (float)q[i] * x[g + i];
        s += lm_f16_to_f32((uint16_t)(row[0] | row[1] << 8)) * gs;
    }
    return s;
}

static void matmul_rows_scalar(float *out, int64_t ldo, const unsigned char *w, enum lm_dtype wtype,
                               int64_t cols, const float *x, int64_t ldx, int64_t n_tok,
                               int64_t r0, int64_t r1)
{
    size_t row_bytes = lm_dtype_bytes(wtype, (size_t)cols);
    for (int64_t r = r0; r < r1; r++) {
        const unsigned char *row = w + (size_t)r * row_bytes;
        for (int64_t t = 0; t < n_tok; t++)
            out[t * ldo + r] = wtype == LM_DTYPE_Q8_0 ? dot_row_q8_scalar(row, x + t * ldx, cols)
                                                      : dot_row_scalar(row, wtype, x + t * ldx, cols);
    }
}

static float dot_scalar(const float *a, const float *b, int64_t n)
{
    float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 += a[i] * b[i];
        s1 += a[i + 1] * b[i + 1];
        s2 += a[i + 2] * b[i + 2];
        s3 += a[i + 3] * b[i + 3];
    }
    for (; i < n; i++)
        s0 += a[i] * b[i];
    return (s0 + s1) + (s2 + s3);
}

static void rmsnorm_scalar(float *o, const float *x, const float *w, int64_t n, float eps)
{
    float ss = 0.0f;
    for (int64_t i = 0; i < n; i++)
        ss += x[i] * x[i];
    float inv = 1.0f / sqrtf(ss / (float)n + eps);
    for (int64_t i = 0; i < n; i++)
        o[i] = w[i] * (x[i] * inv);
}

static void softmax_scalar(float *x, int64_t n)
{
    float mx = x[0];
    for (int64_t i = 1; i < n; i++)
        if (x[i] > mx)
            mx = x[i];
    float sum = 0.0f;
    for (int64_t i = 0; i < n; i++) {
        x[i] = expf(x[i] - mx);
        sum += x[i];
    }
    float inv = 1.0f / sum;
    for (int64_t i = 0; i < n; i++)
        x[i] *= inv;
}

static void silu_mul_scalar(float *gate, const float *up, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        float g = gate[i];
        gate[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

static void rope_scalar(float *x, int64_t n_heads, int64_t head_dim, const float *cos_t,
                        const float *sin_t)
{
    int64_t h = head_dim / 2;
    for (int64_t k = 0; k < n_heads; k++) {
        float *v = x + k * head_dim;
        for (int64_t i = 0; i < h; i++) {
            float x1 = v[i], x2 = v[i + h];
            v[i] = x1 * cos_t[i] - x2 * sin_t[i];
            v[i + h] = x2 * cos_t[i] + x1 * sin_t[i];
        }
    }
}

/* ===== AVX2 + FMA + F16C path ===== */

#if KERNEL_X86
#define KERNEL_TARGET __attribute__((target("avx2,fma,f16c")))

KERNEL_TARGET
static inline float hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

KERNEL_TARGET
static inline float hmax8(__m256 v)
{
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

/* Eight weights starting at p (unaligned) as floats. */
KERNEL_TARGET
static inline __m256 load8_bf16(const unsigned char *p)
{
    __m128i h = _mm_loadu_si128((const __m128i *)(const void *)p);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

KERNEL_TARGET
static inline __m256 load8_f16(const unsigned char *p)
{
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)p));
}

KERNEL_TARGET
static inline __m256 load8_f32(const unsigned char *p)
{
    return _mm256_loadu_ps((const float *)(const void *)p);
}

/* Weight rows are prefetched this many bytes ahead. The hardware streamer
 * stops at 4 KiB page boundaries (mmapped weights are in 4 KiB pages);
 * software prefetches do not. Measured single-threaded on a server core:
 * 9.1 GB/s without, 11.9 at 1 KiB, 13.6 at 2 KiB, and 4 KiB slightly ahead
 * of 2 and 8 KiB in 16-thread decoding. */
#define KERNEL_PF_DIST 4096
#define KERNEL_PREFETCH(p) _mm_prefetch((const char *)(p) + KERNEL_PF_DIST, _MM_HINT_T0)

/* One weight row dotted with x: four independent accumulators hide the FMA
 * latency; the tail goes element by element. */
#define KERNEL_DOT_ROW(name, load8, esz, dtype)                                          \
    KERNEL_TARGET                                                                        \
    static float name(const unsigned char *row, const float *x, int64_t n)              \
    {                                                                                    \
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();                       \
        __m256 a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();                       \
        int64_t i = 0;                                                                   \
        for (; i + 32 <= n; i += 32) {                                                   \
            KERNEL_PREFETCH(row + (esz) * i);                                            \
            a0 = _mm256_fmadd_ps(load8(row + (esz) * i), _mm256_loadu_ps(x + i), a0);          \
            a1 = _mm256_fmadd_ps(load8(row + (esz) * (i + 8)), _mm256_loadu_ps(x + i + 8), a1);  \
            a2 = _mm256_fmadd_ps(load8(row + (esz) * (i + 16)), _mm256_loadu_ps(x + i + 16), a2); \
            a3 = _mm256_fmadd_ps(load8(row + (esz) * (i + 24)), _mm256_loadu_ps(x + i + 24), a3); \
        }                                                                                \
        for (; i + 8 <= n; i += 8)                                                       \
            a0 = _mm256_fmadd_ps(load8(row + (esz) * i), _mm256_loadu_ps(x + i), a0);    \
        float s = hsum8(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));    \
        for (; i < n; i++)                                                               \
            s += weight_at(row, dtype, i) * x[i];                                        \
        return s;                                                                        \
    }

KERNEL_DOT_ROW(dot_row_bf16_avx2, load8_bf16, 2, LM_DTYPE_BF16)
KERNEL_DOT_ROW(dot_row_f16_avx2, load8_f16, 2, LM_DTYPE_F16)
KERNEL_DOT_ROW(dot_row_f32_avx2, load8_f32, 4, LM_DTYPE_F32)

/* Eight int8 weights at p as floats. */
KERNEL_TARGET
static inline __m256 load8_i8(const unsigned char *p)
{
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)p)));
}

/* A Q8_0 row: each group's int8 values widened and scaled to floats in
 * registers, then four accumulators as for the 16-bit types. */
KERNEL_TARGET
static float dot_row_q8_avx2(const unsigned char *row, const float *x, int64_t n)
{
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    __m256 a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    for (int64_t i = 0; i < n; i += LM_Q8_GROUP, row += LM_Q8_GROUP_BYTES) {
        KERNEL_PREFETCH(row);
        __m256 d = _mm256_set1_ps(_cvtsh_ss((unsigned short)(row[0] | row[1] << 8)));
        const unsigned char *q = row + 2;
        a0 = _mm256_fmadd_ps(_mm256_mul_ps(load8_i8(q), d), _mm256_loadu_ps(x + i), a0);
        a1 = _mm256_fmadd_ps(_mm256_mul_ps(load8_i8(q + 8), d), _mm256_loadu_ps(x + i + 8), a1);
        a2 = _mm256_fmadd_ps(_mm256_mul_ps(load8_i8(q + 16), d), _mm256_loadu_ps(x + i + 16), a2);
        a3 = _mm256_fmadd_ps(_mm256_mul_ps(load8_i8(q + 24), d), _mm256_loadu_ps(x + i + 24), a3);
    }
    return hsum8(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
}

/* A Q8_0 row with AVX-512F: sixteen int8 widened per instruction, each
 * group's products summed unscaled and then scaled once, two groups in
 * flight. Half the instructions of the AVX2 loop, which is what limits
 * 8-bit decoding (its bytes are half of bf16's). */
__attribute__((target("avx512f")))
static float dot_row_q8_avx512(const unsigned char *row, const float *x, int64_t n)
{
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 2 * LM_Q8_GROUP <= n; i += 2 * LM_Q8_GROUP, row += 2 * LM_Q8_GROUP_BYTES) {
        KERNEL_PREFETCH(row);
        const unsigned char *r1 = row + LM_Q8_GROUP_BYTES;
        __m512 g0 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(const void *)(row + 2)))),
                                  _mm512_loadu_ps(x + i));
        g0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(const void *)(row + 18)))),
                             _mm512_loadu_ps(x + i + 16), g0);
        __m512 g1 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(const void *)(r1 + 2)))),
                                  _mm512_loadu_ps(x + i + 32));
        g1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(const void *)(r1 + 18)))),
                             _mm512_loadu_ps(x + i + 48), g1);
        a0 = _mm512_fmadd_ps(_mm512_set1_ps(lm_f16_to_f32((uint16_t)(row[0] | row[1] << 8))), g0, a0);
        a1 = _mm512_fmadd_ps(_mm512_set1_ps(lm_f16_to_f32((uint16_t)(r1[0] | r1[1] << 8))), g1, a1);
    }
    float s = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
    if (i < n) /* one group left */
        s += dot_row_q8_avx2(row, x + i, n - i);
    return s;
}

KERNEL_TARGET
static void matmul_rows_avx2(float *out, int64_t ldo, const unsigned char *w, enum lm_dtype wtype,
                             int64_t cols, const float *x, int64_t ldx, int64_t n_tok,
                             int64_t r0, int64_t r1)
{
    float (*dot)(const unsigned char *, const float *, int64_t) =
        wtype == LM_DTYPE_BF16 ? dot_row_bf16_avx2 :
        wtype == LM_DTYPE_F16  ? dot_row_f16_avx2 :
        wtype == LM_DTYPE_Q8_0 ? (kernel_path_active() >= KERNEL_PATH_AVX512 ? dot_row_q8_avx512 : dot_row_q8_avx2) :
        dot_row_f32_avx2;
    size_t row_bytes = lm_dtype_bytes(wtype, (size_t)cols);
    for (int64_t r = r0; r < r1; r++) {
        const unsigned char *row = w + (size_t)r * row_bytes;
        for (int64_t t = 0; t < n_tok; t++)
            out[t * ldo + r] = dot(row, x + t * ldx, cols);
    }
}

KERNEL_TARGET
static float dot_avx2(const float *a, const float *b, int64_t n)
{
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), a1);
    }
    for (; i + 8 <= n; i += 8)
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), a0);
    float s = hsum8(_mm256_add_ps(a0, a1));
    for (; i < n; i++)
        s += a[i] * b[i];
    return s;
}

KERNEL_TARGET
static void axpy_avx2(float *y, float a, const float *x, int64_t n)
{
    __m256 va = _mm256_set1_ps(a);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++)
        y[i] += a * x[i];
}

/* e^x for eight lanes (Cephes expf): x = n ln2 + r with |r| <= ln2/2,
 * e^r by a degree-7 polynomial, 2^n put straight into the exponent. */
KERNEL_TARGET
static inline __m256 exp8(__m256 x)
{
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.0f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

KERNEL_TARGET
static void rmsnorm_avx2(float *o, const float *x, const float *w, int64_t n, float eps)
{
    __m256 acc = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        acc = _mm256_fmadd_ps(v, v, acc);
    }
    float ss = hsum8(acc);
    for (; i < n; i++)
        ss += x[i] * x[i];
    float inv = 1.0f / sqrtf(ss / (float)n + eps);
    __m256 vinv = _mm256_set1_ps(inv);
    for (i = 0; i + 8 <= n; i += 8)
        _mm256_storeu_ps(o + i, _mm256_mul_ps(_mm256_loadu_ps(w + i),
                                              _mm256_mul_ps(_mm256_loadu_ps(x + i), vinv)));
    for (; i < n; i++)
        o[i] = w[i] * (x[i] * inv);
}

KERNEL_TARGET
static void softmax_avx2(float *x, int64_t n)
{
    int64_t i = 0;
    float mx = x[0];
    if (n >= 8) {
        __m256 vm = _mm256_loadu_ps(x);
        for (i = 8; i + 8 <= n; i += 8)
            vm = _mm256_max_ps(vm, _mm256_loadu_ps(x + i));
        mx = hmax8(vm);
    }
    for (; i < n; i++)
        if (x[i] > mx)
            mx = x[i];
    __m256 vmx = _mm256_set1_ps(mx), vsum = _mm256_setzero_ps();
    for (i = 0; i + 8 <= n; i += 8) {
        __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), vmx));
        _mm256_storeu_ps(x + i, e);
        vsum = _mm256_add_ps(vsum, e);
    }
    float sum = hsum8(vsum);
    for (; i < n; i++) {
        x[i] = expf(x[i] - mx);
        sum += x[i];
    }
    float inv = 1.0f / sum;
    __m256 vinv = _mm256_set1_ps(inv);
    for (i = 0; i + 8 <= n; i += 8)
        _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), vinv));
    for (; i < n; i++)
        x[i] *= inv;
}

KERNEL_TARGET
static void silu_mul_avx2(float *gate, const float *up, int64_t n)
{
    const __m256 one = _mm256_set1_ps(1.0f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 g = _mm256_loadu_ps(gate + i);
        __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
        __m256 s = _mm256_div_ps(g, _mm256_add_ps(one, e));
        _mm256_storeu_ps(gate + i, _mm256_mul_ps(s, _mm256_loadu_ps(up + i)));
    }
    for (; i < n; i++) {
        float g = gate[i];
        gate[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

KERNEL_TARGET
static void rope_avx2(float *x, int64_t n_heads, int64_t head_dim, const float *cos_t,
                      const float *sin_t)
{
    int64_t h = head_dim / 2;
    for (int64_t k = 0; k < n_heads; k++) {
        float *v = x + k * head_dim;
        int64_t i = 0;
        for (; i + 8 <= h; i += 8) {
            __m256 x1 = _mm256_loadu_ps(v + i), x2 = _mm256_loadu_ps(v + h + i);
            __m256 c = _mm256_loadu_ps(cos_t + i), s = _mm256_loadu_ps(sin_t + i);
            _mm256_storeu_ps(v + i, _mm256_fmsub_ps(x1, c, _mm256_mul_ps(x2, s)));
            _mm256_storeu_ps(v + h + i, _mm256_fmadd_ps(x2, c, _mm256_mul_ps(x1, s)));
        }
        for (; i < h; i++) {
            float x1 = v[i], x2 = v[i + h];
            v[i] = x1 * cos_t[i] - x2 * sin_t[i];
            v[i + h] = x2 * cos_t[i] + x1 * sin_t[i];
        }
    }
}

KERNEL_TARGET
static void add_avx2(float *y, const float *x, int64_t n)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_add_ps(_mm256_loadu_ps(y + i), _mm256_loadu_ps(x + i)));
    for (; i < n; i++)
        y[i] += x[i];
}
#endif

/* ===== Public entry points ===== */

void kernel_matmul_rows(float *out, int64_t ldo, const void *w, enum lm_dtype wtype, int64_t cols,
                        const float *x, int64_t ldx, int64_t n_tok, int64_t r0, int64_t r1)
{
    LM_ASSERT(kernel_weight_type_ok(wtype, cols));
#if KERNEL_X86
    if (use_vector()) {
        matmul_rows_avx2(out, ldo, w, wtype, cols, x, ldx, n_tok, r0, r1);
        return;
    }
#endif
    matmul_rows_scalar(out, ldo, w, wtype, cols, x, ldx, n_tok, r0, r1);
}

float kernel_dot(const float *a, const float *b, int64_t n)
{
#if KERNEL_X86
    if (use_vector())
        return dot_avx2(a, b, n);
#endif
    return dot_scalar(a, b, n);
}

void kernel_axpy(float *y, float a, const float *x, int64_t n)
{
#if KERNEL_X86
    if (use_vector()) {
        axpy_avx2(y, a, x, n);
        return;
    }
#endif
    kernel_axpy_ref(y, a, x, n);
}

void kernel_rmsnorm(float *o, const float *x, const float *w, int64_t n, float eps)
{
#if KERNEL_X86
    if (use_vector()) {
        rmsnorm_avx2(o, x, w, n, eps);
        return;
    }
#endif
    rmsnorm_scalar(o, x, w, n, eps);
}

void kernel_softmax(float *x, int64_t n)
{
#if KERNEL_X86
    if (use_vector()) {
        softmax_avx2(x, n);
        return;
    }
#endif
    softmax_scalar(x, n);
}

void kernel_silu_mul(float *gate, const float *up, int64_t n)
{
#if KERNEL_X86
    if (use_vector()) {
        silu_mul_avx2(gate, up, n);
        return;
    }
#endif
    silu_mul_scalar(gate, up, n);
}

void kernel_rope(float *x, int64_t n_heads, int64_t head_dim, const float *cos_t, const float *sin_t)
{
#if KERNEL_X86
    if (use_vector()) {
        rope_avx2(x, n_heads, head_dim, cos_t, sin_t);
        return;
    }
#endif
    rope_scalar(x, n_heads, head_dim, cos_t, sin_t);
}

void kernel_add(float *y, const float *x, int64_t n)
{
#if KERNEL_X86
    if (use_vector()) {
        add_avx2(y, x, n);
        return;
    }
#endif
    for (int64_t i = 0; i < n; i++)
        y[i] += x[i];
}
