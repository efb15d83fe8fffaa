/* dtype conversion between BF16/F16 and F32.
 *
 * The scalar routines define the results; the AVX2/F16C routines reproduce
 * them bit for bit (the unit test checks every 16-bit pattern and a million
 * random 32-bit ones). NaN rules, chosen to match what the F16C instructions
 * do so that both paths agree:
 *   F16 -> F32:  sign kept, payload shifted into the top of the F32 payload,
 *                quiet bit set (a signalling NaN comes back quiet).
 *   F32 -> F16:  sign kept, top 10 payload bits kept, quiet bit set.
 *   BF16 -> F32: the bits shifted up (exact, signalling NaNs stay so).
 *   F32 -> BF16: the canonical quiet NaN 0x7fc0 with the input's sign (torch
 *                gives 0x7fc0 whatever the sign).
 * Everything else rounds to nearest, ties to even, as IEEE 754 and torch's
 * `.to()` do. */
#include "convert.h"

#include <math.h>
#include <stdatomic.h>
#include <string.h>

#include "lm_error.h"

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>
#define CONVERT_X86 1
#else
#define CONVERT_X86 0
#endif

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* ===== Scalar conversions (the definition) ===== */

float lm_bf16_to_f32(uint16_t h)
{
    return bits_f32((uint32_t)h << 16);
}

uint16_t lm_f32_to_bf16(float f)
{
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)(((u >> 16) & 0x8000u) | 0x7fc0u);
    /* Adding 0x7fff plus the lowest kept bit rounds ties to even; a carry out
     * of the mantissa bumps the exponent, up to infinity. */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float lm_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    if (exp == 0x1f) {
        if (mant == 0)
            return bits_f32(sign | 0x7f800000u);
        return bits_f32(sign | 0x7fc00000u | (mant << 13));
    }
    if (exp == 0) {
        /* Zero or subnormal: mant * 2^-24, exact in float. */
        float v = (float)mant * 0x1p-24f;
        return bits_f32(sign | f32_bits(v));
    }
    return bits_f32(sign | ((exp + 112u) << 23) | (mant << 13));
}

uint16_t lm_f32_to_f16(float f)
{
    uint32_t u = f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7fffffffu;

    if (a > 0x7f800000u) /* NaN */
        return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
    if (a >= 0x477ff000u) /* >= 65520: rounds to infinity (or is infinite) */
        return (uint16_t)(sign | 0x7c00u);
    if (a >= 0x38800000u) {
        /* Normal: rebias the exponent (127 -> 15), round 13 bits away. */
        a += 0xfffu + ((a >> 13) & 1u);
        return (uint16_t)(sign | ((a - 0x38000000u) >> 13));
    }
    if (a <= 0x33000000u) /* <= 2^-25: half the smallest subnormal or less -> 0 */
        return sign;
    /* Subnormal result: value / 2^-24 rounded to an integer, ties to even.
     * With exponent e the value is mant * 2^(e - 150), so the shift is
     * 126 - e, between 14 and 24 here. A result of 0x400 is the smallest
     * normal, which is the right encoding. */
    uint32_t e = a >> 23;
    uint32_t mant = (a & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126u - e;
    uint32_t q = mant >> shift;
    uint32_t rem = mant & ((1u << shift) - 1u);
    uint32_t half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (q & 1u)))
        q++;
    return (uint16_t)(sign | q);
}

/* ===== Bulk scalar loops (also the tails of the vector loops) =====
 * Sources may be unaligned (views into mmapped files), hence memcpy loads. */

static void bf16_to_f32_scalar(float *dst, const unsigned char *src, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, src + 2 * i, sizeof h);
        dst[i] = lm_bf16_to_f32(h);
    }
}

static void f16_to_f32_scalar(float *dst, const unsigned char *src, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, src + 2 * i, sizeof h);
        dst[i] = lm_f16_to_f32(h);
    }
}

static void f32_to_bf16_scalar(unsigned char *dst, const float *src, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint16_t h = lm_f32_to_bf16(src[i]);
        memcpy(dst + 2 * i, &h, sizeof h);
    }
}

static void f32_to_f16_scalar(unsigned char *dst, const float *src, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint16_t h = lm_f32_to_f16(src[i]);
        memcpy(dst + 2 * i, &h, sizeof h);
    }
}

/* ===== Q8_0, scalar (the definition) ===== */

/* Each group: d = max |x| / 127 stored as F16, q = round(x / d) computed
 * with the unrounded d as GGUF's reference quantiser does, rounded half
 * away from zero and clamped to [-127, 127]. NaN values become 0. */
static void f32_to_q8_scalar(unsigned char *dst, const float *src, size_t n)
{
    LM_ASSERT(n % LM_Q8_GROUP == 0);
    for (size_t g = 0; g < n; g += LM_Q8_GROUP, dst += LM_Q8_GROUP_BYTES) {
        const float *x = src + g;
        float amax = 0.0f;
        for (int i = 0; i < LM_Q8_GROUP; i++) {
            float a = x[i] < 0 ? -x[i] : x[i];
            amax = a > amax ? a : amax;
        }
        float d = amax / 127.0f;
        float id = d > 0.0f ? 1.0f / d : 0.0f;
        uint16_t h = lm_f32_to_f16(d);
        dst[0] = (unsigned char)(h & 0xff);
        dst[1] = (unsigned char)(h >> 8);
        for (int i = 0; i < LM_Q8_GROUP; i++) {
            float v = x[i] * id;
            v = v == v ? v : 0.0f;
            v = v > 127.0f ? 127.0f : v < -127.0f ? -127.0f : v;
            dst[2 + i] = (unsigned char)(int8_t)(int)roundf(v);
        }
    }
}

static void q8_to_f32_scalar(float *dst, const unsigned char *src, size_t n)
{
    LM_ASSERT(n % LM_Q8_GROUP == 0);
    for (size_t g = 0; g < n; g += LM_Q8_GROUP, src += LM_Q8_GROUP_BYTES) {
        float d = lm_f16_to_f32((uint16_t)(src[0] | src[1] << 8));
        const int8_t *q = (const int8_t *)(const void *)(src + 2);
        for (int i = 0; i < LM_Q8_GROUP; i++)
            dst[g + i] = d * (float)q[i];
    }
}

/* Entries of x[0..n) whose exponent bits are all set (NaN, +-Inf). */
static uint64_t count_nonfinite_scalar(const float *x, size_t n)
{
    uint64_t c = 0;
    for (size_t j = 0; j < n; j++) {
        uint32_t u;
        memcpy(&u, &x[j], sizeof u);
        c += (u & 0x7f800000u) == 0x7f800000u;
    }
    return c;
}

/* ===== AVX2 + F16C loops ===== */

#if CONVERT_X86
#define CONVERT_TARGET __attribute__((target("avx2,f16c")))

CONVERT_TARGET
static void bf16_to_f32_avx2(float *dst, const unsigned char *src, size_t n)
{
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        _mm_prefetch((const char *)(src + 2 * i + 4096), _MM_HINT_T0);
        __m128i h0 = _mm_loadu_si128((const __m128i *)(const void *)(src + 2 * i));
        __m128i h1 = _mm_loadu_si128((const __m128i *)(const void *)(src + 2 * i + 16));
        __m256i w0 = _mm256_slli_epi32(_mm256_cvtepu16_epi32(h0), 16);
        __m256i w1 = _mm256_slli_epi32(_mm256_cvtepu16_epi32(h1), 16);
        _mm256_storeu_si256((__m256i *)(void *)(dst + i), w0);
        _mm256_storeu_si256((__m256i *)(void *)(dst + i + 8), w1);
    }
    bf16_to_f32_scalar(dst + i, src + 2 * i, n - i);
}

CONVERT_TARGET
static void f16_to_f32_avx2(float *dst, const unsigned char *src, size_t n)
{
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m128i h0 = _mm_loadu_si128((const __m128i *)(const void *)(src + 2 * i));
        __m128i h1 = _mm_loadu_si128((const __m128i *)(const void *)(src + 2 * i + 16));
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h0));
        _mm256_storeu_ps(dst + i + 8, _mm256_cvtph_ps(h1));
    }
    f16_to_f32_scalar(dst + i, src + 2 * i, n - i);
}

/* Eight floats to eight bf16 values in the low 16 bits of 32-bit lanes. */
CONVERT_TARGET
static inline __m256i bf16_round8(__m256i u)
{
    const __m256i abs_mask = _mm256_set1_epi32(0x7fffffff);
    const __m256i inf = _mm256_set1_epi32(0x7f800000);
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
    /* Keys below 2^31 compare correctly as signed integers. */
    __m256i is_nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, abs_mask), inf);
    __m256i qnan = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x8000)),
                                   _mm256_set1_epi32(0x7fc0));
    return _mm256_blendv_epi8(r, qnan, is_nan);
}

CONVERT_TARGET
static void f32_to_bf16_avx2(unsigned char *dst, const float *src, size_t n)
{
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256i a = bf16_round8(_mm256_loadu_si256((const __m256i *)(const void *)(src + i)));
        __m256i b = bf16_round8(_mm256_loadu_si256((const __m256i *)(const void *)(src + i + 8)));
        /* packus works per 128-bit lane: a0-3 b0-3 | a4-7 b4-7; reorder the
         * 64-bit quarters to a0-3 a4-7 b0-3 b4-7. Values fit in 16 bits, so
         * the unsigned saturation never triggers. */
        __m256i p = _mm256_permute4x64_epi64(_mm256_packus_epi32(a, b), 0xd8);
        _mm256_storeu_si256((__m256i *)(void *)(dst + 2 * i), p);
    }
    f32_to_bf16_scalar(dst + 2 * i, src + i, n - i);
}

CONVERT_TARGET
static void f32_to_f16_avx2(unsigned char *dst, const float *src, size_t n)
{
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m128i h0 = _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        __m128i h1 = _mm256_cvtps_ph(_mm256_loadu_ps(src + i + 8), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm_storeu_si128((__m128i *)(void *)(dst + 2 * i), h0);
        _mm_storeu_si128((__m128i *)(void *)(dst + 2 * i + 16), h1);
    }
    f32_to_f16_scalar(dst + 2 * i, src + i, n - i);
}

/* Q8_0 groups as f32_to_q8_scalar defines them: the same max, scale and
 * products; roundf as truncation plus a step away from zero where the
 * fraction is at least one half. */
CONVERT_TARGET
static void f32_to_q8_avx2(unsigned char *dst, const float *src, size_t n)
{
    LM_ASSERT(n % LM_Q8_GROUP == 0);
    const __m256 sign = _mm256_set1_ps(-0.0f), half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f);
    const __m256 lim = _mm256_set1_ps(127.0f), nlim = _mm256_set1_ps(-127.0f);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (size_t g = 0; g < n; g += LM_Q8_GROUP, dst += LM_Q8_GROUP_BYTES) {
        __m256 x[4], m = _mm256_setzero_ps();
        for (int k = 0; k < 4; k++) {
            x[k] = _mm256_loadu_ps(src + g + 8 * k);
            m = _mm256_max_ps(_mm256_andnot_ps(sign, x[k]), m); /* a NaN lane keeps m */
        }
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
        float d = _mm_cvtss_f32(m4) / 127.0f;
        float id = d > 0.0f ? 1.0f / d : 0.0f;
        uint16_t h = lm_f32_to_f16(d);
        dst[0] = (unsigned char)(h & 0xff);
        dst[1] = (unsigned char)(h >> 8);
        __m256i q[4];
        for (int k = 0; k < 4; k++) {
            __m256 v = _mm256_mul_ps(x[k], _mm256_set1_ps(id));
            v = _mm256_and_ps(v, _mm256_cmp_ps(v, v, _CMP_ORD_Q)); /* NaN -> 0 */
            v = _mm256_min_ps(_mm256_max_ps(v, nlim), lim);
            __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
            __m256 up = _mm256_cmp_ps(_mm256_andnot_ps(sign, _mm256_sub_ps(v, t)), half, _CMP_GE_OQ);
            __m256 step = _mm256_or_ps(_mm256_and_ps(v, sign), one); /* +-1 with v's sign */
            q[k] = _mm256_cvttps_epi32(_mm256_add_ps(t, _mm256_and_ps(up, step)));
        }
        __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        _mm256_storeu_si256((__m256i *)(void *)(dst + 2), _mm256_permutevar8x32_epi32(p, order));
    }
}

CONVERT_TARGET
static void q8_to_f32_avx2(float *dst, const unsigned char *src, size_t n)
{
    LM_ASSERT(n % LM_Q8_GROUP == 0);
    for (size_t g = 0; g < n; g += LM_Q8_GROUP, src += LM_Q8_GROUP_BYTES) {
        __m256 d = _mm256_set1_ps(lm_f16_to_f32((uint16_t)(src[0] | src[1] << 8)));
        for (int k = 0; k < 4; k++) {
            __m128i q = _mm_loadl_epi64((const __m128i *)(const void *)(src + 2 + 8 * k));
            _mm256_storeu_ps(dst + g + 8 * k, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q))));
        }
    }
}

/* n < 2^35: each 32-bit lane counts at most n / 8 entries. */
CONVERT_TARGET
static uint64_t count_nonfinite_avx2(const float *x, size_t n)
{
    const __m256i exp = _mm256_set1_epi32(0x7f800000);
    __m256i acc = _mm256_setzero_si256();
    size_t j = 0;
    for (; j + 8 <= n; j += 8) {
        __m256i u = _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(const void *)(x + j)), exp);
        acc = _mm256_sub_epi32(acc, _mm256_cmpeq_epi32(u, exp)); /* -1 per non-finite lane */
    }
    uint32_t lanes[8];
    _mm256_storeu_si256((__m256i *)(void *)lanes, acc);
    uint64_t c = 0;
    for (int k = 0; k < 8; k++)
        c += lanes[k];
    return c + count_nonfinite_scalar(x + j, n - j);
}
#endif

/* ===== Dispatch ===== */

static atomic_int convert_scalar_forced;
static atomic_int convert_cpu_ok = -1; /* -1: not checked yet */

/* AVX2 (which includes the OS's saving of the YMM registers) and F16C. Not
 * every compiler knows "f16c" as a __builtin_cpu_supports name, so that bit
 * comes from CPUID leaf 1 directly. */
static int cpu_has_avx2_f16c(void)
{
#if CONVERT_X86
    unsigned eax, ebx, ecx, edx;
    if (!__builtin_cpu_supports("avx2"))
        return 0;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx))
        return 0;
    return (ecx & (1u << 29)) != 0; /* F16C */
#else
    return 0;
#endif
}

static int use_vector(void)
{
    if (atomic_load_explicit(&convert_scalar_forced, memory_order_relaxed))
        return 0;
    int ok = atomic_load_explicit(&convert_cpu_ok, memory_order_relaxed);
    if (ok < 0) {
        ok = cpu_has_avx2_f16c();
        atomic_store_explicit(&convert_cpu_ok, ok, memory_order_relaxed);
    }
    return ok;
}

uint64_t lm_count_nonfinite(const float *x, size_t n)
{
#if CONVERT_X86
    if (use_vector()) {
        uint64_t c = 0;
        /* chunks of 2^26 entries keep every 32-bit lane counter exact */
        for (size_t j = 0; j < n; j += (size_t)1 << 26)
            c += count_nonfinite_avx2(x + j, n - j < ((size_t)1 << 26) ? n - j : (size_t)1 << 26);
        return c;
    }
#endif
    return count_nonfinite_scalar(x, n);
}

const char *lm_convert_impl_name(void)
{
    return use_vector() ? "avx2+f16c" : "scalar";
}

int lm_convert_force_scalar(int on)
{
    return atomic_exchange(&convert_scalar_forced, on ? 1 : 0);
}

void lm_convert_to_f32(float *dst, const void *src, enum lm_dtype src_type, size_t n)
{
    const unsigned char *s = src;
    int vec = use_vector();
    (void)vec;
    switch (src_type) {
    case LM_DTYPE_F32:
        if (n > 0 && (const void *)dst != src)
            memmove(dst, src, n * sizeof *dst);
        return;
    case LM_DTYPE_BF16:
#if CONVERT_X86
        if (vec) {
            bf16_to_f32_avx2(dst, s, n);
            return;
        }
#endif
        bf16_to_f32_scalar(dst, s, n);
        return;
    case LM_DTYPE_F16:
#if CONVERT_X86
        if (vec) {
            f16_to_f32_avx2(dst, s, n);
            return;
        }
#endif
        f16_to_f32_scalar(dst, s, n);
        return;
    case LM_DTYPE_Q8_0:
#if CONVERT_X86
        if (vec) {
            q8_to_f32_avx2(dst, s, n);
            return;
        }
#endif
        q8_to_f32_scalar(dst, s, n);
        return;
    default:
        lm_abort(__FILE__, __LINE__, "lm_convert_to_f32: source must be F32, F16, BF16 or Q8_0");
    }
}

void lm_convert_from_f32(void *dst, enum lm_dtype dst_type, const float *src, size_t n)
{
    unsigned char *d = dst;
    int vec = use_vector();
    (void)vec;
    switch (dst_type) {
    case LM_DTYPE_F32:
        if (n > 0 && dst != (const void *)src)
            memmove(dst, src, n * sizeof *src);
        return;
    case LM_DTYPE_BF16:
#if CONVERT_X86
        if (vec) {
            f32_to_bf16_avx2(d, src, n);
            return;
        }
#endif
        f32_to_bf16_scalar(d, src, n);
        return;
    case LM_DTYPE_F16:
#if CONVERT_X86
        if (vec) {
            f32_to_f16_avx2(d, src, n);
            return;
        }
#endif
        f32_to_f16_scalar(d, src, n);
        return;
    case LM_DTYPE_Q8_0:
#if CONVERT_X86
        if (vec) {
            f32_to_q8_avx2(d, src, n);
            return;
        }
#endif
        f32_to_q8_scalar(d, src, n);
        return;
    default:
        lm_abort(__FILE__, __LINE__, "lm_convert_from_f32: destination must be F32, F16, BF16 or Q8_0");
    }
}
