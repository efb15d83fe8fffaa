/* Karcher mean (mergekit's "karcher"): the models' weighted mean on the
 * unit sphere, rescaled by their mean norm. With N models x_i (the base
 * takes no part), alpha_i = 1/N, n_i = ||x_i|| and u_i = x_i / n_i:
 *
 *   the models with n_i > tol take part, their alphas normalised to a sum
 *   of 1 (a_i); m starts at sum a_i u_i normalised (u of the first valid
 *   model when that sum is shorter than tol); then, at most max_iter times,
 *     v = sum over i with theta_i = acos(clamp(m . u_i)) >= tol of
 *         a_i theta_i / sin(theta_i) (u_i - (m . u_i) m)
 *     stop when |v| < tol; m = cos|v| m + sin|v| v / |v|, normalised
 *   out = (sum_i alpha_i n_i) m   (0 when no model has a norm above tol)
 *
 * over the whole tensor as one vector. One model gives itself. mergekit
 * computes in float32, operation by operation, with the norms and
 * coefficients as Python doubles where it takes .item(); so does this
 * file. Its dot products and norms are float32 reductions in an order of
 * PyTorch's choosing; this file sums them in double and rounds once.
 * Needs the whole tensor, so it merges whole tensors. */
#include "merge_method.h"

#include <math.h>
#include <stdlib.h>

#include "lm_error.h"

static const enum merge_param_id karcher_params[] = {
    MERGE_PARAM_MAX_ITER, MERGE_PARAM_TOL, MERGE_PARAM_COUNT,
};

static float norm_f(const float *x, uint64_t n)
{
    double s = 0;
    for (uint64_t e = 0; e < n; e++)
        s += (double)x[e] * (double)x[e];
    return (float)sqrt(s);
}

/* torch.dot(mean, unit) with unit = x / nx computed entry by entry. */
static float dot_unit(const float *m, const float *x, float nx, uint64_t n)
{
    double s = 0;
    for (uint64_t e = 0; e < n; e++)
        s += (double)m[e] * (double)(x[e] / nx);
    return (float)s;
}

static int karcher_merge(const struct merge_tensor_job *job)
{
    int rc = merge_job_check(&merge_method_karcher, job);
    if (rc)
        return rc;
    const struct merge_tensor_params *p = job->params;
    const int nm = job->n_models;
    const uint64_t n = job->n;
    const float *const *x = job->models;
    float *out = job->out;
    if (nm == 1) {
        for (uint64_t e = 0; e < n; e++)
            out[e] = merge_nan_canonical(x[0][e]);
        return 0;
    }
    const double tol = p->tol;
    float *mean = merge_scratch_get(job->scratch, 0, n);
    float *tan = merge_scratch_get(job->scratch, 1, n);
    if (!mean || !tan)
        return LM_ENOMEM;

    double norm[MERGE_MAX_MODELS];
    float normf[MERGE_MAX_MODELS];
    int valid[MERGE_MAX_MODELS], nv = 0;
    const double alpha = 1.0 / nm;
    double alpha_sum = 0;
    for (int i = 0; i < nm; i++) {
        normf[i] = norm_f(x[i], n);
        norm[i] = (double)normf[i];
        if (norm[i] > tol) {
            valid[nv++] = i;
            alpha_sum += alpha;
        }
    }
    if (nv == 0) {
        for (uint64_t e = 0; e < n; e++)
            out[e] = 0.0f;
        return 0;
    }
    float a[MERGE_MAX_MODELS];
    for (int k = 0; k < nv; k++)
        a[k] = (float)(alpha / alpha_sum);

    /* mean = sum a_k u_k, then normalised. */
    for (uint64_t e = 0; e < n; e++) {
        float s = 0.0f;
        for (int k = 0; k < nv; k++) {
            const int i = valid[k];
            s = s + a[k] * (x[i][e] / normf[i]);
        }
        mean[e] = s;
    }
    const float mean_norm = norm_f(mean, n);
    if ((double)mean_norm < tol) {
        const int i = valid[0];
        for (uint64_t e = 0; e < n; e++)
            mean[e] = x[i][e] / normf[i];
    } else {
        for (uint64_t e = 0; e < n; e++)
            mean[e] = mean[e] / mean_norm;
    }

    for (int it = 0; it < p->max_iter; it++) {
        for (uint64_t e = 0; e < n; e++)
            tan[e] = 0.0f;
        for (int k = 0; k < nv; k++) {
            const int i = valid[k];
            float dot = dot_unit(mean, x[i], normf[i], n);
            dot = dot < -1.0f ? -1.0f : dot > 1.0f ? 1.0f : dot;
            const float theta = acosf(dot);
            if ((double)theta < tol)
                continue;
            const float q = theta / sinf(theta);
            const float c = a[k] * q;
            for (uint64_t e = 0; e < n; e++) {
                const float u = x[i][e] / normf[i];
                const float dm = dot * mean[e];
                const float diff = u - dm;
                tan[e] = tan[e] + c * diff;
            }
        }
        const float tn = norm_f(tan, n);
        if ((double)tn < tol)
            break;
        const float ct = cosf(tn), st = sinf(tn);
        for (uint64_t e = 0; e < n; e++) {
            const float l = ct * mean[e];
            const float r = st * (tan[e] / tn);
            mean[e] = l + r;
        }
        const float un = norm_f(mean, n);
        if ((double)un > tol)
            for (uint64_t e = 0; e < n; e++)
                mean[e] = mean[e] / un;
    }

    double scale = 0;
    for (int i = 0; i < nm; i++)
        scale += alpha * norm[i];
    const float sf = (float)scale;
    for (uint64_t e = 0; e < n; e++)
        out[e] = merge_nan_canonical(sf * mean[e]);
    return 0;
}

static void karcher_defaults(struct merge_tensor_params *p)
{
    p->max_iter = 10;
    p->tol = 1e-5;
}

const struct merge_method merge_method_karcher = {
    .name = "karcher",
    .summary = "Karcher mean: the models' mean direction on the unit sphere (iterated), scaled by "
               "their mean norm (base not used)",
    .min_models = 1,
    .max_models = MERGE_MAX_MODELS,
    .params = karcher_params,
    .set_defaults = karcher_defaults,
    .merge_tensor = karcher_merge,
    .stream_begin = NULL,
    .base_optional = true,
};
