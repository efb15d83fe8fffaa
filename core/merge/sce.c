/* SCE (mergekit's "sce": select, calculate, erase). With the base b and
 * the task vectors d_i = x_i - b:
 *
 * 1. select: when select_topk < 1, keep the int(select_topk * m) entries
 *    whose values vary most across the models (population variance over
 *    i; m counts the entries whose variance is not 0; equal variances: the
 *    lower index first), zero the others in every d_i;
 * 2. calculate: w_i = mean(d_i^2) / sum_j mean(d_j^2) (1/N each when all
 *    are 0), one coefficient per model for the whole tensor;
 * 3. erase: per entry, keep the d_i whose sign is the sign of sum_i d_i
 *    (a sum of 0 counts as +; a d_i of 0 never agrees), and
 *
 *   out = b + sum_i w_i d_i / sum_i w_i     over the kept i (1 when none).
 *
 * Weights are not used (mergekit's sce takes none). mergekit computes in
 * float32, operation by operation, and so does this file in its order
 * (the sums over models from the first on). Its reductions over the
 * tensor (variance per entry, sum of squares) are float32 or double in an
 * order of PyTorch's choosing; this file sums them in double and rounds
 * once to float. mergekit's top-k breaks ties where its sort puts them.
 * Needs the whole tensor for the weights, so it merges whole tensors. */
#include "merge_method.h"

#include <math.h>
#include <stdlib.h>

#include "lm_error.h"
#include "select.h"

static const enum merge_param_id sce_params[] = { MERGE_PARAM_SELECT_TOPK, MERGE_PARAM_COUNT };

/* Whether entry e of every task vector is kept by the variance selection:
 * keep[e] (from a scratch float array, non-zero = kept), or all when NULL. */
static inline float sce_delta(const struct merge_tensor_job *job, const float *keep, int i,
                              uint64_t e)
{
    const float d = job->models[i][e] - job->base[e];
    return keep ? d * (keep[e] != 0.0f ? 1.0f : 0.0f) : d;
}

/* Variance selection: writes the kept variances (others 0) to a scratch
 * array and returns it, or NULL for no selection (select_topk 1). */
static int sce_select(const struct merge_tensor_job *job, const float **keep_out)
{
    const struct merge_tensor_params *p = job->params;
    const int nm = job->n_models;
    const uint64_t n = job->n;
    *keep_out = NULL;
    if (!(p->select_topk < 1.0))
        return 0;
    float *v = merge_scratch_get(job->scratch, 0, n);
    if (!v)
        return LM_ENOMEM;
    uint64_t nonzero = 0;
    for (uint64_t e = 0; e < n; e++) {
        double mean = 0;
        for (int i = 0; i < nm; i++)
            mean += (double)(job->models[i][e] - job->base[e]);
        mean /= nm;
        double var = 0;
        for (int i = 0; i < nm; i++) {
            const double c = (double)(job->models[i][e] - job->base[e]) - mean;
            var += c * c;
        }
        v[e] = (float)(var / nm);
        nonzero += v[e] != 0.0f;
    }
    /* k = int(abs(select_topk) * count_nonzero): a float32 product. */
    const float kf = (float)p->select_topk * (float)nonzero;
    uint64_t k = (uint64_t)kf;
    if (k > n)
        k = n;
    struct topk_cut cut = topk_find(v, n, k);
    topk_apply(v, v, n, &cut);
    *keep_out = v;
    return 0;
}

static int sce_merge(const struct merge_tensor_job *job)
{
    int rc = merge_job_check(&merge_method_sce, job);
    if (rc)
        return rc;
    const int nm = job->n_models;
    const uint64_t n = job->n;
    const float *keep;
    if ((rc = sce_select(job, &keep)) != 0)
        return rc;

    /* w_i = sum(d_i^2).item() / numel, normalised in double, then float32. */
    double w[MERGE_MAX_MODELS], wsum = 0;
    for (int i = 0; i < nm; i++) {
        double s = 0;
        for (uint64_t e = 0; e < n; e++) {
            const float d = sce_delta(job, keep, i, e);
            const float sq = d * d;
            s += (double)sq;
        }
        w[i] = (double)(float)s / (double)n;
        wsum += w[i];
    }
    float wf[MERGE_MAX_MODELS];
    for (int i = 0; i < nm; i++)
        wf[i] = (float)(wsum == 0 ? 1.0 / nm : w[i] / wsum);

    for (uint64_t e = 0; e < n; e++) {
        float d[MERGE_MAX_MODELS];
        float total = 0;
        for (int i = 0; i < nm; i++) {
            d[i] = sce_delta(job, keep, i, e);
            total = i == 0 ? d[i] : total + d[i];
        }
        const float major = total >= 0.0f ? 1.0f : -1.0f;
        float mixed = 0, div = 0;
        for (int i = 0; i < nm; i++) {
            const float sign = d[i] > 0.0f ? 1.0f : d[i] < 0.0f ? -1.0f : d[i];
            const float ew = wf[i] * (sign == major ? 1.0f : 0.0f);
            const float term = d[i] * ew;
            mixed = i == 0 ? term : mixed + term;
            div = i == 0 ? ew : div + ew;
        }
        if (div == 0.0f)
            div = 1.0f;
        mixed = mixed / div;
        job->out[e] = merge_nan_canonical(job->base[e] + mixed);
    }
    return 0;
}

static void sce_defaults(struct merge_tensor_params *p)
{
    p->select_topk = 1.0;
}

const struct merge_method merge_method_sce = {
    .name = "sce",
    .summary = "SCE: keep the entries that vary most across the models (select_topk), weight each "
               "task vector by its mean square, drop minority signs, b + weighted mean",
    .min_models = 1,
    .max_models = MERGE_MAX_MODELS,
    .params = sce_params,
    .set_defaults = sce_defaults,
    .merge_tensor = sce_merge,
    .stream_begin = NULL,
};
