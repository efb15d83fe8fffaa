/* Arcee Fusion (mergekit's "arcee_fusion"): take the model's value where
 * it changed the base most in an importance sense, keep the base's
 * elsewhere. Per row (the last dimension; a vector is one row), with
 * p = softmax(x) + 1e-8 and q = softmax(b) + 1e-8,
 *
 *   kl_row = sum p log(p / q),   s[e] = |x[e] - b[e]| kl_row
 *   threshold = median(s) + 1.5 (q3(s) - q1(s))
 *   out = b + (x - b) [s >= threshold]
 *
 * where the quantile at q is the sorted s at index int(q (n - 1)) (q and
 * the product in float32, as mergekit indexes it). mergekit samples a
 * million entries at random, with an unseeded generator, for its
 * quantiles of larger tensors; mergescope takes the exact quantiles over
 * the whole tensor, so tensors of more than a million entries can differ
 * there. The softmax and the KL sum are computed in double and rounded to
 * float (PyTorch's vectorised exp differs from any fixed rule in the last
 * bit), so an entry whose score lies within an ulp of the threshold may
 * fall the other way; the rest is float32 in mergekit's order. Merges
 * whole tensors. */
#include "merge_method.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "lm_error.h"

static const enum merge_param_id arcee_fusion_params[] = { MERGE_PARAM_COUNT };

/* A float's bits mapped so that unsigned order is numeric order; NaN
 * (torch.sort puts it last) above everything. */
static uint32_t order_key(float v)
{
    if (v != v)
        return UINT32_MAX;
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    return (u & 0x80000000u) ? ~u : u | 0x80000000u;
}

static float key_value(uint32_t k)
{
    if (k == UINT32_MAX) {
        const uint32_t q = MERGE_NAN_BITS;
        float v;
        memcpy(&v, &q, sizeof v);
        return v;
    }
    const uint32_t u = (k & 0x80000000u) ? k & 0x7fffffffu : ~k;
    float v;
    memcpy(&v, &u, sizeof v);
    return v;
}

/* Rearranges a[lo..hi] so that a[k] holds the value sorted order puts
 * there, nothing greater before it and nothing smaller after it. */
static void select_nth(uint32_t *a, int64_t lo, int64_t hi, int64_t k)
{
    while (lo < hi) {
        const uint32_t x = a[lo], y = a[lo + (hi - lo) / 2], z = a[hi];
        const uint32_t pivot = x < y ? (y < z ? y : (x < z ? z : x)) : (x < z ? x : (y < z ? z : y));
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (a[i] < pivot)
                i++;
            while (a[j] > pivot)
                j--;
            if (i <= j) {
                const uint32_t t = a[i];
                a[i++] = a[j];
                a[j--] = t;
            }
        }
        if (k <= j)
            hi = j;
        else if (k >= i)
            lo = i;
        else
            return;
    }
}

/* softmax(v[0..len)) + 1e-8 into p[0..len), as float. */
static void softmax_eps(const float *v, uint64_t len, double *p)
{
    float mx = v[0];
    for (uint64_t j = 1; j < len; j++)
        mx = v[j] > mx ? v[j] : mx;
    double s = 0;
    for (uint64_t j = 0; j < len; j++) {
        p[j] = exp((double)v[j] - (double)mx);
        s += p[j];
    }
    for (uint64_t j = 0; j < len; j++)
        p[j] = (double)((float)(p[j] / s) + 1e-8f);
}

static int arcee_fusion_merge(const struct merge_tensor_job *job)
{
    int rc = merge_job_check(&merge_method_arcee_fusion, job);
    if (rc)
        return rc;
    const uint64_t n = job->n;
    const float *b = job->base, *x = job->models[0];
    if (n == 0)
        return 0;
    uint64_t rows = job->rows, cols = job->cols;
    if (rows == 0 || cols == 0 || rows * cols != n) {
        rows = 1;
        cols = n;
    }
    float *s = merge_scratch_get(job->scratch, 0, n);
    float *sorted = merge_scratch_get(job->scratch, 1, n);
    double *pq = malloc(2 * cols * sizeof(*pq));
    if (!s || !sorted || !pq) {
        free(pq);
        return lm_err(LM_ENOMEM, "tensor '%s': out of memory", job->name ? job->name : "?");
    }
    for (uint64_t r = 0; r < rows; r++) {
        const float *xr = x + r * cols, *br = b + r * cols;
        double *p = pq, *q = pq + cols;
        softmax_eps(xr, cols, p);
        softmax_eps(br, cols, q);
        double kl = 0;
        for (uint64_t j = 0; j < cols; j++)
            kl += p[j] * log(p[j] / q[j]);
        const float klf = (float)kl;
        for (uint64_t j = 0; j < cols; j++)
            s[r * cols + j] = fabsf(xr[j] - br[j]) * klf;
    }
    free(pq);

    uint32_t *k = (uint32_t *)(void *)sorted;
    for (uint64_t e = 0; e < n; e++)
        k[e] = order_key(s[e]);
    const float nm1 = (float)(n - 1);
    const uint64_t i1 = (uint64_t)(0.25f * nm1), i2 = (uint64_t)(0.5f * nm1),
                   i3 = (uint64_t)(0.75f * nm1);
    select_nth(k, 0, (int64_t)n - 1, (int64_t)i3);
    select_nth(k, 0, (int64_t)i3, (int64_t)i2);
    select_nth(k, 0, (int64_t)i2, (int64_t)i1);
    const float q1 = key_value(k[i1]), med = key_value(k[i2]), q3 = key_value(k[i3]);
    const float spread = q3 - q1;
    const float thr = med + 1.5f * spread;
    for (uint64_t e = 0; e < n; e++) {
        const float m = s[e] >= thr ? 1.0f : 0.0f;
        const float d = x[e] - b[e];
        job->out[e] = merge_nan_canonical(b[e] + d * m);
    }
    return 0;
}

const struct merge_method merge_method_arcee_fusion = {
    .name = "arcee_fusion",
    .summary = "Arcee Fusion: the model's values where |x - b| times the row's KL divergence of "
               "softmaxes is an outlier (>= median + 1.5 IQR), the base's elsewhere",
    .min_models = 1,
    .max_models = 1,
    .params = arcee_fusion_params,
    .set_defaults = NULL,
    .merge_tensor = arcee_fusion_merge,
    .stream_begin = NULL,
};
