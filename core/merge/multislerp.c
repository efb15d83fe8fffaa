/* Multi-SLERP (mergekit's "multislerp"): barycentric interpolation of the
 * task vectors d_i = x_i - b on the sphere. With weights w_i (divided by
 * their sum when normalize_weights), n_i = |d_i| and u_i = d_i / (n_i + eps):
 *
 *   m = sum w_i u_i, normalised (when |m| < eps: two models give
 *       b + w_0 d_0 + w_1 d_1, more are an error naming the tensor)
 *   v = sum w_i (u_i - (u_i . m) m),  s = |v| + eps
 *   out = b + (cos(s) m + sin(s) / s v) (sum w_i n_i)
 *
 * over the whole tensor as one vector. One model gives itself. Without a
 * base model (job->base NULL, mergekit's base_model left out) the models
 * themselves take the task vectors' place, d_i = x_i, and nothing is added
 * to the result, as in mergekit. Computed in float32 in mergekit's
 * order; its norms and dot products are float32 reductions in an order of
 * PyTorch's choosing, summed here in double and rounded once, and the
 * sums over models are taken from the first model on. Merges whole
 * tensors. */
#include "merge_method.h"

#include <math.h>
#include <stdlib.h>

#include "lm_error.h"

static const enum merge_param_id multislerp_params[] = {
    MERGE_PARAM_WEIGHT, MERGE_PARAM_NORMALIZE_WEIGHTS, MERGE_PARAM_EPS, MERGE_PARAM_COUNT,
};

/* Entry e of model x's vector: its task vector x - b, or x itself
 * without a base. */
static inline float ms_d(const float *x, const float *b, uint64_t e)
{
    return b ? x[e] - b[e] : x[e];
}

static int multislerp_merge(const struct merge_tensor_job *job)
{
    int rc = merge_job_check(&merge_method_multislerp, job);
    if (rc)
        return rc;
    const struct merge_tensor_params *p = job->params;
    const int nm = job->n_models;
    const uint64_t n = job->n;
    const float *b = job->base, *const *x = job->models;
    float *out = job->out;
    if (nm == 1) {
        for (uint64_t e = 0; e < n; e++)
            out[e] = merge_nan_canonical(x[0][e]);
        return 0;
    }
    float w[MERGE_MAX_MODELS];
    float wsum = 0.0f;
    for (int i = 0; i < nm; i++) {
        w[i] = (float)p->weight[i];
        wsum = i == 0 ? w[i] : wsum + w[i];
    }
    if (p->normalize_weights)
        for (int i = 0; i < nm; i++)
            w[i] = w[i] / wsum;
    const float eps = (float)p->eps;

    float norm[MERGE_MAX_MODELS], den[MERGE_MAX_MODELS];
    for (int i = 0; i < nm; i++) {
        double s = 0;
        for (uint64_t e = 0; e < n; e++) {
            const float d = ms_d(x[i], b, e);
            s += (double)d * (double)d;
        }
        norm[i] = (float)sqrt(s);
        den[i] = norm[i] + eps;
    }
    float *mean = merge_scratch_get(job->scratch, 0, n);
    float *tan = merge_scratch_get(job->scratch, 1, n);
    if (!mean || !tan)
        return LM_ENOMEM;
    double ms = 0;
    for (uint64_t e = 0; e < n; e++) {
        float s = 0.0f;
        for (int i = 0; i < nm; i++) {
            const float u = ms_d(x[i], b, e) / den[i];
            const float pr = u * w[i];
            s = i == 0 ? pr : s + pr;
        }
        mean[e] = s;
        ms += (double)s * (double)s;
    }
    const float mean_norm = (float)sqrt(ms);
    if (mean_norm < eps) {
        if (nm != 2)
            return lm_err(LM_EFORMAT, "tensor '%s': multislerp: the weighted sum of the task "
                          "vectors' directions is zero (opposite task vectors with balancing "
                          "weights); give other weights", job->name ? job->name : "?");
        for (uint64_t e = 0; e < n; e++) {
            const float p0 = ms_d(x[0], b, e) * w[0], p1 = ms_d(x[1], b, e) * w[1];
            out[e] = merge_nan_canonical(b ? (p0 + p1) + b[e] : p0 + p1);
        }
        return 0;
    }
    for (uint64_t e = 0; e < n; e++)
        mean[e] = mean[e] / mean_norm;
    float dots[MERGE_MAX_MODELS];
    for (int i = 0; i < nm; i++) {
        double s = 0;
        for (uint64_t e = 0; e < n; e++) {
            const float u = ms_d(x[i], b, e) / den[i];
            const float pr = u * mean[e];
            s += (double)pr;
        }
        dots[i] = (float)s;
    }
    double ts = 0;
    for (uint64_t e = 0; e < n; e++) {
        float s = 0.0f;
        for (int i = 0; i < nm; i++) {
            const float u = ms_d(x[i], b, e) / den[i];
            const float dm = dots[i] * mean[e];
            const float tv = u - dm;
            const float pr = tv * w[i];
            s = i == 0 ? pr : s + pr;
        }
        tan[e] = s;
        ts += (double)s * (double)s;
    }
    const float tn = (float)sqrt(ts) + eps;
    const float ct = cosf(tn), sc = sinf(tn) / tn;
    float avg = 0.0f;
    for (int i = 0; i < nm; i++) {
        const float pr = norm[i] * w[i];
        avg = i == 0 ? pr : avg + pr;
    }
    for (uint64_t e = 0; e < n; e++) {
        const float l = mean[e] * ct, r = tan[e] * sc;
        const float res = (l + r) * avg;
        out[e] = merge_nan_canonical(b ? res + b[e] : res);
    }
    return 0;
}

static void multislerp_defaults(struct merge_tensor_params *p)
{
    p->normalize_weights = true;
    p->eps = 1e-8;
}

const struct merge_method merge_method_multislerp = {
    .name = "multislerp",
    .summary = "Multi-SLERP: weighted spherical mean of the task vectors (tangent-space "
               "interpolation), scaled by their weighted mean norm; without a base, of the models",
    .min_models = 1,
    .max_models = MERGE_MAX_MODELS,
    .params = multislerp_params,
    .set_defaults = multislerp_defaults,
    .merge_tensor = multislerp_merge,
    .stream_begin = NULL,
    .base_optional = true,
};
