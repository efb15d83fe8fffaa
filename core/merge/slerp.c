/* slerp: spherical interpolation between the base (t = 0) and exactly one
 * model (t = 1) over the flattened tensor, as mergekit's slerp.py does it:
 *
 *   dot = <v0/|v0|, v1/|v1|>     (a vector with norm <= 1e-8 is used as is)
 *   |dot| > 0.9995:  out = (1 - t) v0 + t v1          (nearly parallel: lerp)
 *   otherwise:       theta0 = acos(dot), theta_t = theta0 t
 *                    s0 = sin(theta0 - theta_t) / sin(theta0)
 *                    s1 = sin(theta_t) / sin(theta0)
 *                    out = s0 v0 + s1 v1
 *
 * on the original (unnormalised) vectors, v0 = base, v1 = model. Norms, the
 * dot product and the combination run in double (mergekit works in float32),
 * and the result is rounded to float once.
 *
 * The three sums are kept in eight partial sums each, entry e going to lane
 * e % 8 in index order, and the lanes are added as ((0+1)+(2+3))+((4+5)+
 * (6+7)): a fixed order, so the bits depend only on the inputs, and one
 * that the AVX2 form (taken when the CPU has AVX2) follows exactly. A NaN or
 * infinity in either tensor makes every output NaN, written as the quiet NaN
 * 0x7fc00000 (merge_method.h). */
#include "merge_method.h"

#include <math.h>
#include <string.h>

#include "lm_error.h"

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#include <immintrin.h>
#define SLERP_X86 1
#define SLERP_AVX2 __attribute__((target("avx2")))
#else
#define SLERP_X86 0
#endif

#define SLERP_LANES 8

/* Lane sums of a * a, b * b and a * b over the two vectors. */
struct slerp_sums {
    double aa[SLERP_LANES], bb[SLERP_LANES], ab[SLERP_LANES];
};

static double lanes8_total(const double *l)
{
    return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
}

static void slerp_sums_portable(struct slerp_sums *s, const float *v0, const float *v1, uint64_t n)
{
    memset(s, 0, sizeof *s);
    for (uint64_t e = 0; e < n; e++) {
        const double a = v0[e], b = v1[e];
        const int l = (int)(e % SLERP_LANES);
        s->aa[l] += a * a;
        s->bb[l] += b * b;
        s->ab[l] += a * b;
    }
}

static void slerp_mix_portable(float *out, const float *v0, const float *v1, uint64_t n, double s0,
                               double s1)
{
    for (uint64_t e = 0; e < n; e++)
        out[e] = merge_nan_canonical((float)(s0 * (double)v0[e] + s1 * (double)v1[e]));
}

#if SLERP_X86
/* Eight entries at a time: lanes 0-3 and 4-7 in two vectors; the last few
 * through zero-padded copies (adding zeros changes no sum). */
SLERP_AVX2 static void slerp_sums_avx2(struct slerp_sums *s, const float *v0, const float *v1,
                                       uint64_t n)
{
    __m256d aa0 = _mm256_setzero_pd(), aa1 = aa0, bb0 = aa0, bb1 = aa0, ab0 = aa0, ab1 = aa0;
    for (uint64_t e = 0; e < n; e += 8) {
        __m256 af, bf;
        if (n - e >= 8) {
            af = _mm256_loadu_ps(v0 + e);
            bf = _mm256_loadu_ps(v1 + e);
        } else {
            float pa[8] = { 0 }, pb[8] = { 0 };
            memcpy(pa, v0 + e, (size_t)(n - e) * sizeof(float));
            memcpy(pb, v1 + e, (size_t)(n - e) * sizeof(float));
            af = _mm256_loadu_ps(pa);
            bf = _mm256_loadu_ps(pb);
        }
        const __m256d a0 = _mm256_cvtps_pd(_mm256_castps256_ps128(af));
        const __m256d a1 = _mm256_cvtps_pd(_mm256_extractf128_ps(af, 1));
        const __m256d b0 = _mm256_cvtps_pd(_mm256_castps256_ps128(bf));
        const __m256d b1 = _mm256_cvtps_pd(_mm256_extractf128_ps(bf, 1));
        aa0 = _mm256_add_pd(aa0, _mm256_mul_pd(a0, a0));
        aa1 = _mm256_add_pd(aa1, _mm256_mul_pd(a1, a1));
        bb0 = _mm256_add_pd(bb0, _mm256_mul_pd(b0, b0));
        bb1 = _mm256_add_pd(bb1, _mm256_mul_pd(b1, b1));
        ab0 = _mm256_add_pd(ab0, _mm256_mul_pd(a0, b0));
        ab1 = _mm256_add_pd(ab1, _mm256_mul_pd(a1, b1));
    }
    _mm256_storeu_pd(s->aa, aa0);
    _mm256_storeu_pd(s->aa + 4, aa1);
    _mm256_storeu_pd(s->bb, bb0);
    _mm256_storeu_pd(s->bb + 4, bb1);
    _mm256_storeu_pd(s->ab, ab0);
    _mm256_storeu_pd(s->ab + 4, ab1);
}

SLERP_AVX2 static void slerp_mix_avx2(float *out, const float *v0, const float *v1, uint64_t n,
                                      double s0, double s1)
{
    const __m256d c0 = _mm256_set1_pd(s0), c1 = _mm256_set1_pd(s1);
    uint64_t e = 0;
    for (; e + 8 <= n; e += 8) {
        const __m256 af = _mm256_loadu_ps(v0 + e), bf = _mm256_loadu_ps(v1 + e);
        const __m256d r0 = _mm256_add_pd(_mm256_mul_pd(c0, _mm256_cvtps_pd(_mm256_castps256_ps128(af))),
                                         _mm256_mul_pd(c1, _mm256_cvtps_pd(_mm256_castps256_ps128(bf))));
        const __m256d r1 = _mm256_add_pd(_mm256_mul_pd(c0, _mm256_cvtps_pd(_mm256_extractf128_ps(af, 1))),
                                         _mm256_mul_pd(c1, _mm256_cvtps_pd(_mm256_extractf128_ps(bf, 1))));
        __m256 r = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm256_cvtpd_ps(r0)),
                                        _mm256_cvtpd_ps(r1), 1);
        r = _mm256_blendv_ps(r, _mm256_castsi256_ps(_mm256_set1_epi32((int)MERGE_NAN_BITS)),
                             _mm256_cmp_ps(r, r, _CMP_UNORD_Q));
        _mm256_storeu_ps(out + e, r);
    }
    slerp_mix_portable(out + e, v0 + e, v1 + e, n - e, s0, s1);
}
#endif

#define SLERP_DOT_THRESHOLD 0.9995
#define SLERP_EPS 1e-8

static const enum merge_param_id slerp_params[] = { MERGE_PARAM_T, MERGE_PARAM_COUNT };

static int slerp_merge(const struct merge_tensor_job *job)
{
    int rc = merge_job_check(&merge_method_slerp, job);
    if (rc)
        return rc;
    const float *v0 = job->base, *v1 = job->models[0];
    const uint64_t n = job->n;
    const double t = job->params->t;
    LM_ASSERT(v0);

    struct slerp_sums sums;
#if SLERP_X86
    if (merge_simd_avx2())
        slerp_sums_avx2(&sums, v0, v1, n);
    else
#endif
        slerp_sums_portable(&sums, v0, v1, n);
    double n0 = lanes8_total(sums.aa), n1 = lanes8_total(sums.bb), dot = lanes8_total(sums.ab);
    n0 = sqrt(n0);
    n1 = sqrt(n1);
    if (n0 > SLERP_EPS)
        dot /= n0;
    if (n1 > SLERP_EPS)
        dot /= n1;

    double s0, s1;
    if (fabs(dot) > SLERP_DOT_THRESHOLD) {
        s0 = 1.0 - t;
        s1 = t;
    } else {
        const double theta0 = acos(dot);
        const double sin_theta0 = sin(theta0);
        const double theta_t = theta0 * t;
        s0 = sin(theta0 - theta_t) / sin_theta0;
        s1 = sin(theta_t) / sin_theta0;
    }
#if SLERP_X86
    if (merge_simd_avx2()) {
        slerp_mix_avx2(job->out, v0, v1, n, s0, s1);
        return 0;
    }
#endif
    slerp_mix_portable(job->out, v0, v1, n, s0, s1);
    return 0;
}

const struct merge_method merge_method_slerp = {
    .name = "slerp",
    .summary = "spherical interpolation from the base (t = 0) to one model (t = 1)",
    .min_models = 1,
    .max_models = 1,
    .params = slerp_params,
    .set_defaults = NULL,
    .merge_tensor = slerp_merge,
};
