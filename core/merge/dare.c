/* DARE: drop each task-vector entry at random, keeping it with probability
 * `density`, and rescale the survivors; then combine as task arithmetic
 * (dare_linear) or with TIES sign election (dare_ties). Both run through the
 * generalized task arithmetic engine in ties.c.
 *
 * The keep decision for entry e of model i in tensor `name` is
 *   merge_mask_uniform_model(seed, name, i, e) < density
 * (merge_method.h documents that function bit for bit): a pure function, so
 * a recipe gives the same bits whatever the thread count, and each model
 * gets its own mask. Survivors are scaled by 1/density ("rescale":
 * "inverse", the papers' rule and the default) or by ||d||_1 / ||kept d||_1
 * ("l1", what mergekit's rescale does; no scaling when either norm is below
 * 1e-7). Density 1 keeps every entry unscaled; density 0 keeps none.
 *
 * Defaults follow mergekit: normalize off for both. */
#include "merge_method.h"
#include "merge_stream.h"

static const enum merge_param_id dare_params[] = {
    MERGE_PARAM_WEIGHT, MERGE_PARAM_DENSITY, MERGE_PARAM_LAMBDA, MERGE_PARAM_NORMALIZE,
    MERGE_PARAM_SEED, MERGE_PARAM_RESCALE, MERGE_PARAM_COUNT,
};

static int dare_linear_merge(const struct merge_tensor_job *job)
{
    int rc = merge_job_check(&merge_method_dare_linear, job);
    if (rc)
        return rc;
    return merge_gta_tensor(job, MERGE_SPARSIFY_RANDOM, false);
}

static int dare_ties_merge(const struct merge_tensor_job *job)
{
    int rc = merge_job_check(&merge_method_dare_ties, job);
    if (rc)
        return rc;
    return merge_gta_tensor(job, MERGE_SPARSIFY_RANDOM, true);
}

static int dare_linear_stream(const struct merge_stream_job *job, struct merge_stream **out)
{
    return merge_gta_stream_begin(&merge_method_dare_linear, job, MERGE_SPARSIFY_RANDOM, false, out);
}

static int dare_ties_stream(const struct merge_stream_job *job, struct merge_stream **out)
{
    return merge_gta_stream_begin(&merge_method_dare_ties, job, MERGE_SPARSIFY_RANDOM, true, out);
}

const struct merge_method merge_method_dare_linear = {
    .name = "dare_linear",
    .summary = "DARE: keep task-vector entries at random with probability density, rescale, "
               "then task arithmetic",
    .min_models = 1,
    .max_models = MERGE_MAX_MODELS,
    .params = dare_params,
    .set_defaults = NULL,
    .merge_tensor = dare_linear_merge,
    .stream_begin = dare_linear_stream,
};

const struct merge_method merge_method_dare_ties = {
    .name = "dare_ties",
    .summary = "DARE random drop and rescale, then TIES sign election",
    .min_models = 1,
    .max_models = MERGE_MAX_MODELS,
    .params = dare_params,
    .set_defaults = NULL,
    .merge_tensor = dare_ties_merge,
    .stream_begin = dare_ties_stream,
};
