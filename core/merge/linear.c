/* linear, average and task_arithmetic.
 *
 * linear (mergekit's linear.py): out = sum_i w_i x_i, divided by sum_i w_i
 * when `normalize` (the default, as in mergekit); a sum below 1e-8 in
 * magnitude is then an error naming the tensor (mergekit divides by it).
 * The base model does not take part. average is linear with every weight 1
 * and normalize on: the plain mean of the models.
 *
 * task_arithmetic is the generalized task arithmetic engine with no
 * sparsification and no sign election (ties.c):
 * out = b + lambda * sum_i w_i d_i, divided by sum_i w_i when `normalize`
 * (off by default, as in mergekit).
 *
 * Sums run in double over the models in recipe order, rounded to float once;
 * a NaN result is written as the quiet NaN 0x7fc00000 (merge_method.h).
 * linear's sums have an AVX2 form (four doubles per vector, the same
 * operations in the same order, so the same bits) taken when the CPU has
 * AVX2; task_arithmetic runs through ties.c's kernels. */
#include "merge_method.h"
#include "merge_stream.h"

#include <math.h>
#include <string.h>

#include "lm_error.h"

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#include <immintrin.h>
#define LINEAR_X86 1
#define LINEAR_AVX2 __attribute__((target("avx2")))
#define LINEAR_INLINE inline __attribute__((always_inline))
#define LINEAR_UNROLL _Pragma("GCC unroll 2")
#else
#define LINEAR_X86 0
#endif

#if LINEAR_X86
/* acc = 0; acc += w[i] * (double)x_i for each model; acc / wsum when
 * `divide`; rounded to float: eight entries at a time. The last few go
 * through zero-padded copies. */
LINEAR_AVX2 static LINEAR_INLINE void linear_avx2_run(const int nm, const float *const *models,
                                                      const double *w, bool divide, double wsum,
                                                      uint64_t n, float *out)
{
    const __m256d div = _mm256_set1_pd(wsum);
    __m256d wv[MERGE_MAX_MODELS];
    for (int i = 0; i < nm; i++)
        wv[i] = _mm256_set1_pd(w[i]);
    for (uint64_t e = 0; e < n; e += 8) {
        const float *xs[MERGE_MAX_MODELS];
        float pad[MERGE_MAX_MODELS][8], po[8];
        const bool tail = n - e < 8;
        LINEAR_UNROLL
        for (int i = 0; i < nm; i++) {
            xs[i] = models[i] + e;
            if (tail) {
                memset(pad[i], 0, sizeof pad[i]);
                memcpy(pad[i], xs[i], (size_t)(n - e) * sizeof(float));
                xs[i] = pad[i];
            }
        }
        __m256d a0 = _mm256_setzero_pd(), a1 = a0;
        LINEAR_UNROLL
        for (int i = 0; i < nm; i++) {
            const __m256 xf = _mm256_loadu_ps(xs[i]);
            a0 = _mm256_add_pd(a0, _mm256_mul_pd(wv[i], _mm256_cvtps_pd(_mm256_castps256_ps128(xf))));
            a1 = _mm256_add_pd(a1, _mm256_mul_pd(wv[i], _mm256_cvtps_pd(_mm256_extractf128_ps(xf, 1))));
        }
        if (divide) {
            a0 = _mm256_div_pd(a0, div);
            a1 = _mm256_div_pd(a1, div);
        }
        __m256 r = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm256_cvtpd_ps(a0)),
                                        _mm256_cvtpd_ps(a1), 1);
        r = _mm256_blendv_ps(r, _mm256_castsi256_ps(_mm256_set1_epi32((int)MERGE_NAN_BITS)),
                             _mm256_cmp_ps(r, r, _CMP_UNORD_Q));
        if (tail) {
            _mm256_storeu_ps(po, r);
            memcpy(out + e, po, (size_t)(n - e) * sizeof(float));
        } else {
            _mm256_storeu_ps(out + e, r);
        }
    }
}

LINEAR_AVX2 static void linear_avx2_1(int nm, const float *const *models, const double *w,
                                      bool divide, double wsum, uint64_t n, float *out)
{
    (void)nm;
    linear_avx2_run(1, models, w, divide, wsum, n, out);
}

LINEAR_AVX2 static void linear_avx2_2(int nm, const float *const *models, const double *w,
                                      bool divide, double wsum, uint64_t n, float *out)
{
    (void)nm;
    linear_avx2_run(2, models, w, divide, wsum, n, out);
}

LINEAR_AVX2 static void linear_avx2_any(int nm, const float *const *models, const double *w,
                                        bool divide, double wsum, uint64_t n, float *out)
{
    linear_avx2_run(nm, models, w, divide, wsum, n, out);
}
#endif


/* mergekit divides by the sum of the weights whatever it is, writing
 * infinities (or NaN) when it is 0; a recipe that asks for that is an
 * error naming the tensor instead. */
static int linear_check_sum(const char *name, const double *w, int nm, bool normalize)
{
    double wsum = 0.0;
    for (int i = 0; i < nm; i++)
        wsum += w[i];
    if (normalize && fabs(wsum) < 1e-8)
        return lm_err(LM_EFORMAT, "tensor '%s': the weights sum to %g and normalize divides by "
                      "their sum (mergekit would write infinities); set normalize to false or "
                      "change the weights", name ? name : "?", wsum);
    return 0;
}

/* sum_i w[i] x_i (/ sum w when normalize) for every entry. */
static void linear_combine(const struct merge_tensor_job *job, const double *w, bool normalize)
{
    const int nm = job->n_models;
    double wsum = 0.0;
    for (int i = 0; i < nm; i++)
        wsum += w[i];
    const bool divide = normalize && !(fabs(wsum) < 1e-8);
#if LINEAR_X86
    if (merge_simd_avx2()) {
        if (nm == 1)
            linear_avx2_1(nm, job->models, w, divide, wsum, job->n, job->out);
        else if (nm == 2)
            linear_avx2_2(nm, job->models, w, divide, wsum, job->n, job->out);
        else
            linear_avx2_any(nm, job->models, w, divide, wsum, job->n, job->out);
        return;
    }
#endif
    for (uint64_t e = 0; e < job->n; e++) {
        double acc = 0.0;
        for (int i = 0; i < nm; i++)
            acc += w[i] * (double)job->models[i][e];
        if (divide)
            acc /= wsum;
        job->out[e] = merge_nan_canonical((float)acc);
    }
}

/* ===== linear ===== */

static const enum merge_param_id linear_params[] = {
    MERGE_PARAM_WEIGHT, MERGE_PARAM_NORMALIZE, MERGE_PARAM_COUNT,
};

static void linear_defaults(struct merge_tensor_params *p)
{
    p->normalize = true; /* mergekit: linear normalizes by default */
}

static int linear_merge(const struct merge_tensor_job *job)
{
    int rc = merge_job_check(&merge_method_linear, job);
    if (!rc)
        rc = linear_check_sum(job->name, job->params->weight, job->n_models, job->params->normalize);
    if (rc)
        return rc;
    linear_combine(job, job->params->weight, job->params->normalize);
    return 0;
}

/* linear and average merge entry by entry: a block is a tensor of its
 * own. */
struct linear_stream {
    struct merge_stream pub;
    int n_models;
    double w[MERGE_MAX_MODELS];
    bool normalize;
};

static int linear_stream_block(struct merge_stream *ps, uint64_t e0, size_t len, const float *base,
                               const float *const *models, float *out)
{
    struct linear_stream *st = (struct linear_stream *)(void *)ps;
    (void)e0;
    (void)base;
    struct merge_tensor_job job = {
        .n = len, .models = models, .n_models = st->n_models, .out = out,
    };
    linear_combine(&job, st->w, st->normalize);
    return 0;
}

static int linear_stream_begin(const struct merge_method *m, const struct merge_stream_job *job,
                               const double *w, bool normalize, struct merge_stream **out)
{
    *out = NULL;
    int rc = merge_stream_check(m, job);
    if (!rc)
        rc = linear_check_sum(job->name, w, job->n_models, normalize);
    if (rc)
        return rc;
    struct linear_stream *st = lm_calloc(1, sizeof(*st));
    if (!st)
        return LM_ENOMEM;
    st->n_models = job->n_models;
    memcpy(st->w, w, sizeof st->w);
    st->normalize = normalize;
    st->pub.block = linear_stream_block;
    *out = &st->pub;
    return 0;
}

static int linear_stream(const struct merge_stream_job *job, struct merge_stream **out)
{
    return linear_stream_begin(&merge_method_linear, job, job->params->weight,
                               job->params->normalize, out);
}

static int average_stream(const struct merge_stream_job *job, struct merge_stream **out)
{
    double ones[MERGE_MAX_MODELS];
    for (int i = 0; i < MERGE_MAX_MODELS; i++)
        ones[i] = 1.0;
    return linear_stream_begin(&merge_method_average, job, ones, true, out);
}

static int task_arithmetic_stream(const struct merge_stream_job *job, struct merge_stream **out)
{
    return merge_gta_stream_begin(&merge_method_task_arithmetic, job, MERGE_SPARSIFY_NONE, false, out);
}

const struct merge_method merge_method_linear = {
    .name = "linear",
    .summary = "weighted average of the models: sum w_i x_i / sum w_i (base not used)",
    .min_models = 1,
    .max_models = MERGE_MAX_MODELS,
    .params = linear_params,
    .set_defaults = linear_defaults,
    .merge_tensor = linear_merge,
    .stream_begin = linear_stream,
    .base_optional = true,
};

/* ===== average ===== */

static const enum merge_param_id average_params[] = { MERGE_PARAM_COUNT };

static void average_defaults(struct merge_tensor_params *p)
{
    for (int i = 0; i < MERGE_MAX_MODELS; i++)
        p->weight[i] = 1.0;
    p->normalize = true;
}

static int average_merge(const struct merge_tensor_job *job)
{
    int rc = merge_job_check(&merge_method_average, job);
    if (rc)
        return rc;
    /* Equal weights whatever the params say: average takes no weights. */
    double ones[MERGE_MAX_MODELS];
    for (int i = 0; i < MERGE_MAX_MODELS; i++)
        ones[i] = 1.0;
    linear_combine(job, ones, true);
    return 0;
}

/* mergekit has no "average": it is mergekit's linear with weight 1 for
 * every model and normalize true, which is how an exporter writes it. */
const struct merge_method merge_method_average = {
    .name = "average",
    .summary = "plain mean of the models (linear with equal weights; base not used)",
    .min_models = 1,
    .max_models = MERGE_MAX_MODELS,
    .params = average_params,
    .set_defaults = average_defaults,
    .merge_tensor = average_merge,
    .stream_begin = average_stream,
    .base_optional = true,
};

/* ===== task_arithmetic ===== */

static const enum merge_param_id task_arithmetic_params[] = {
    MERGE_PARAM_WEIGHT, MERGE_PARAM_LAMBDA, MERGE_PARAM_NORMALIZE, MERGE_PARAM_COUNT,
};

static int task_arithmetic_merge(const struct merge_tensor_job *job)
{
    int rc = merge_job_check(&merge_method_task_arithmetic, job);
    if (rc)
        return rc;
    return merge_gta_tensor(job, MERGE_SPARSIFY_NONE, false);
}

const struct merge_method merge_method_task_arithmetic = {
    .name = "task_arithmetic",
    .summary = "base + lambda * sum w_i (x_i - base)",
    .min_models = 1,
    .max_models = MERGE_MAX_MODELS,
    .params = task_arithmetic_params,
    .set_defaults = NULL,
    .merge_tensor = task_arithmetic_merge,
    .stream_begin = task_arithmetic_stream,
};
