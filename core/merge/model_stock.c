/* Model Stock (mergekit's "model_stock", Jang et al. 2024): with the base
 * b and N >= 2 models x_i, the task vectors d_i = x_i - b, and cos the
 * mean over pairs i < j of their cosine (each clamped to [-1, 1], the norm
 * product to at least 1e-6), the merged tensor moves from the base toward
 * the models' average by
 *
 *   t   = N cos / (1 + (N - 1) cos)
 *   out = t avg(x) + (1 - t) b,   avg(x) = (x_1 + ... + x_N) / N
 *
 * over the whole tensor (mergekit's default; its `filter_wise` per-row
 * variant, which it does not recommend, is not offered). Models with
 * parallel task vectors keep their average (t = 1); orthogonal ones fall
 * back to the base (t = 0). mergekit computes in float32: the elementwise
 * steps are rounded to float here in its order (the sum from the first
 * model on, divided by N; t times the average, (1 - t) times the base,
 * added). Its dot products and norms are float32 reductions in an order
 * of PyTorch's choosing; this file sums them in double and rounds once,
 * the closest float to the exact values. Weights are not used. Needs the
 * whole tensor for cos, so it merges whole tensors. */
#include "merge_method.h"

#include <math.h>
#include <stdlib.h>

#include "lm_error.h"

static const enum merge_param_id model_stock_params[] = { MERGE_PARAM_COUNT };

/* t of mergekit's formula for N task vectors, from the whole tensor. */
static float model_stock_t(const float *b, const float *const *x, int nm, uint64_t n)
{
    double norm2[MERGE_MAX_MODELS] = { 0 };
    for (int i = 0; i < nm; i++) {
        double s = 0;
        for (uint64_t e = 0; e < n; e++) {
            const float d = x[i][e] - b[e];
            s += (double)d * (double)d;
        }
        norm2[i] = s;
    }
    float cos_sum = 0.0f;
    int pairs = 0;
    for (int i = 0; i < nm; i++) {
        for (int j = i + 1; j < nm; j++) {
            double dot = 0;
            for (uint64_t e = 0; e < n; e++) {
                const float di = x[i][e] - b[e], dj = x[j][e] - b[e];
                dot += (double)di * (double)dj;
            }
            float prod = (float)sqrt(norm2[i]) * (float)sqrt(norm2[j]);
            if (!(prod >= 1e-6f))
                prod = prod != prod ? prod : 1e-6f;
            float c = (float)dot / prod;
            if (c < -1.0f)
                c = -1.0f;
            if (c > 1.0f)
                c = 1.0f;
            cos_sum += c;
            pairs++;
        }
    }
    const float cos = cos_sum / (float)pairs;
    const float fn = (float)nm;
    const float num = fn * cos;
    const float den = 1.0f + (fn - 1.0f) * cos;
    return num / den;
}

static int model_stock_merge(const struct merge_tensor_job *job)
{
    int rc = merge_job_check(&merge_method_model_stock, job);
    if (rc)
        return rc;
    const int nm = job->n_models;
    const float t = model_stock_t(job->base, job->models, nm, job->n);
    const float om = 1.0f - t;
    const float fn = (float)nm;
    for (uint64_t e = 0; e < job->n; e++) {
        float s = job->models[0][e];
        for (int i = 1; i < nm; i++)
            s += job->models[i][e];
        const float avg = s / fn;
        const float a = t * avg;
        const float c = om * job->base[e];
        job->out[e] = merge_nan_canonical(a + c);
    }
    return 0;
}

const struct merge_method merge_method_model_stock = {
    .name = "model_stock",
    .summary = "Model Stock: move from the base toward the models' average by t = N cos / "
               "(1 + (N - 1) cos), cos the mean cosine between their task vectors",
    .min_models = 2,
    .max_models = MERGE_MAX_MODELS,
    .params = model_stock_params,
    .set_defaults = NULL,
    .merge_tensor = model_stock_merge,
    .stream_begin = NULL,
};
