/* NuSLERP (mergekit's "nuslerp"): spherical interpolation between the task
 * vectors v0 = x_0 - b and v1 = x_1 - b of two models, at
 * t = w_1 / (w_0 + w_1) (0.5 when |w_0 + w_1| < 1e-6):
 *
 *   u_k = v_k / max(|v_k|, 1e-7),  theta = acos(clamp(u_0 . u_1, -1, 1))
 *   out = b + (sin((1 - t) theta) v0 + sin(t theta) v1) / sin(theta)
 *         (b + (1 - t) v0 + t v1 where |sin theta| < 1e-8)
 *
 * over the whole tensor as one vector (nuslerp_flatten, the default), or
 * else row by row, or with nuslerp_row_wise column by column (mergekit's
 * dim 0; a vector is always one). Without a base model (job->base NULL,
 * mergekit's base_model left out) the same interpolation runs between the
 * models themselves, v_k = x_k, and out is its result (nothing added, as
 * mergekit returns it). Computed in
 * float32 in mergekit's order; its norms and dot products are float32
 * reductions in an order of PyTorch's choosing, summed here in double and
 * rounded once, and row by row it takes vectorised sines that may differ
 * from the C library's in the last bit. Merges whole tensors. */
#include "merge_method.h"

#include <math.h>
#include <stdlib.h>

#include "lm_error.h"

static const enum merge_param_id nuslerp_params[] = {
    MERGE_PARAM_WEIGHT, MERGE_PARAM_ROW_WISE, MERGE_PARAM_FLATTEN, MERGE_PARAM_COUNT,
};

/* Entry e of model x's vector: its task vector x - b, or x itself
 * without a base. */
static inline float nuslerp_v(const float *x, const float *b, uint64_t e)
{
    return b ? x[e] - b[e] : x[e];
}

/* One vector of `len` entries, `stride` apart, starting at entry e0. */
static void nuslerp_vector(const struct merge_tensor_job *job, double t, uint64_t e0,
                           uint64_t len, uint64_t stride)
{
    const float *b = job->base, *x0 = job->models[0], *x1 = job->models[1];
    double s0 = 0, s1 = 0;
    for (uint64_t j = 0, e = e0; j < len; j++, e += stride) {
        const float v0 = nuslerp_v(x0, b, e), v1 = nuslerp_v(x1, b, e);
        s0 += (double)v0 * (double)v0;
        s1 += (double)v1 * (double)v1;
    }
    float n0 = (float)sqrt(s0), n1 = (float)sqrt(s1);
    const float eps = 1e-7f;
    n0 = n0 < eps ? eps : n0;
    n1 = n1 < eps ? eps : n1;
    double dot = 0;
    for (uint64_t j = 0, e = e0; j < len; j++, e += stride) {
        const float u0 = nuslerp_v(x0, b, e) / n0, u1 = nuslerp_v(x1, b, e) / n1;
        const float pr = u0 * u1;
        dot += (double)pr;
    }
    float c = (float)dot;
    c = c < -1.0f ? -1.0f : c > 1.0f ? 1.0f : c;
    const float theta = acosf(c);
    const float st = sinf(theta);
    const float tf = (float)t, omt = (float)(1.0 - t);
    const bool colinear = fabsf(st) < 1e-8f;
    const float a0 = sinf(omt * theta), a1 = sinf(tf * theta);
    for (uint64_t j = 0, e = e0; j < len; j++, e += stride) {
        const float v0 = nuslerp_v(x0, b, e), v1 = nuslerp_v(x1, b, e);
        float r;
        if (colinear) {
            const float p0 = omt * v0, p1 = tf * v1;
            r = p0 + p1;
        } else {
            const float p0 = a0 * v0, p1 = a1 * v1;
            r = (p0 + p1) / st;
        }
        job->out[e] = merge_nan_canonical(b ? b[e] + r : r);
    }
}

static int nuslerp_merge(const struct merge_tensor_job *job)
{
    int rc = merge_job_check(&merge_method_nuslerp, job);
    if (rc)
        return rc;
    const struct merge_tensor_params *p = job->params;
    const double wsum = p->weight[0] + p->weight[1];
    const double t = fabs(wsum) < 1e-6 ? 0.5 : p->weight[1] / wsum;
    const uint64_t n = job->n;
    uint64_t rows = job->rows, cols = job->cols;
    if (rows == 0 || cols == 0 || rows * cols != n) {
        rows = 1;
        cols = n;
    }
    if (p->flatten || rows == 1) {
        nuslerp_vector(job, t, 0, n, 1);
    } else if (p->row_wise) {
        for (uint64_t c = 0; c < cols; c++)
            nuslerp_vector(job, t, c, rows, cols);
    } else {
        for (uint64_t r = 0; r < rows; r++)
            nuslerp_vector(job, t, r * cols, cols, 1);
    }
    return 0;
}

const struct merge_method merge_method_nuslerp = {
    .name = "nuslerp",
    .summary = "NuSLERP: spherical interpolation between two task vectors at t = w_2 / (w_1 + w_2), "
               "whole tensor, rows or columns; without a base, between the two models",
    .min_models = 2,
    .max_models = 2,
    .params = nuslerp_params,
    .set_defaults = NULL,
    .merge_tensor = nuslerp_merge,
    .stream_begin = NULL,
    .base_optional = true,
};
