/* linear, average and task_arithmetic.
 *
 * linear (mergekit's linear.py): out = sum_i w_i x_i, divided by sum_i w_i
 * when `normalize` (the default, as in mergekit) unless |sum_i w_i| < 1e-8.
 * The base model does not take part. average is linear with every weight 1
 * and normalize on: the plain mean of the models.
 *
 * task_arithmetic is the generalized task arithmetic engine with no
 * sparsification and no sign election (merge_ties.c):
 * out = b + lambda * sum_i w_i d_i, divided by sum_i w_i when `normalize`
 * (off by default, as in mergekit).
 *
 * Sums run in double over the models in recipe order, rounded to float once. */
#include "merge_method.h"

#include <math.h>


/* sum_i w[i] x_i (/ sum w when normalize) for every entry. */
static void linear_combine(const struct merge_tensor_job *job, const double *w, bool normalize)
{
    const int nm = job->n_models;
    double wsum = 0.0;
    for (int i = 0; i < nm; i++)
        wsum += w[i];
    const bool divide = normalize && !(fabs(wsum) < 1e-8);
    for (uint64_t e = 0; e < job->n; e++) {
        double acc = 0.0;
        for (int i = 0; i < nm; i++)
            acc += w[i] * (double)job->models[i][e];
        if (divide)
            acc /= wsum;
        job->out[e] = (float)acc;
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
    if (rc)
        return rc;
    linear_combine(job, job->params->weight, job->params->normalize);
    return 0;
}

const struct merge_method merge_method_linear = {
    .name = "linear",
    .summary = "weighted average of the models: sum w_i x_i / sum w_i (base not used)",
    .mergekit_name = "linear",
    .min_models = 1,
    .max_models = MERGE_MAX_MODELS,
    .params = linear_params,
    .set_defaults = linear_defaults,
    .merge_tensor = linear_merge,
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
    .mergekit_name = "linear",
    .min_models = 1,
    .max_models = MERGE_MAX_MODELS,
    .params = average_params,
    .set_defaults = average_defaults,
    .merge_tensor = average_merge,
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
    .mergekit_name = "task_arithmetic",
    .min_models = 1,
    .max_models = MERGE_MAX_MODELS,
    .params = task_arithmetic_params,
    .set_defaults = NULL,
    .merge_tensor = task_arithmetic_merge,
};
