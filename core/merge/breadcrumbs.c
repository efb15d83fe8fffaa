/* Model breadcrumbs (mergekit's "breadcrumbs", sparsification
 * magnitude_outliers): in each task vector drop the int(gamma n)
 * largest-magnitude entries as outliers and keep the next int(density n),
 * dropping the small rest; then task arithmetic (no sign election, no
 * rescaling). When int(density n) + int(gamma n) exceeds n, fewer outliers
 * are dropped so that int(density n) entries stay. Density 1 keeps the task
 * vector untouched (gamma is then ignored), as in mergekit.
 *
 * Exactly mergekit's slice indices[n_bot:-n_top] of the entries sorted by
 * ascending magnitude, including its edges: when no outlier is dropped
 * (int(gamma n) is 0, as for every tensor of fewer than 1/gamma entries,
 * or int(density n) == n) the slice is empty and the tensor keeps nothing
 * of that task vector. Equal magnitudes are ordered as a stable ascending
 * sort orders them, the lower index first (counting as the smaller), so
 * the band is one definite set; mergekit's sort is not guaranteed stable,
 * which README.md notes. */
#include "merge_method.h"
#include "merge_stream.h"

static const enum merge_param_id breadcrumbs_params[] = {
    MERGE_PARAM_WEIGHT, MERGE_PARAM_DENSITY, MERGE_PARAM_GAMMA, MERGE_PARAM_LAMBDA,
    MERGE_PARAM_NORMALIZE, MERGE_PARAM_COUNT,
};

static int breadcrumbs_merge(const struct merge_tensor_job *job)
{
    int rc = merge_job_check(&merge_method_breadcrumbs, job);
    if (rc)
        return rc;
    return merge_gta_tensor(job, MERGE_SPARSIFY_OUTLIERS, false);
}

static int breadcrumbs_stream(const struct merge_stream_job *job, struct merge_stream **out)
{
    return merge_gta_stream_begin(&merge_method_breadcrumbs, job, MERGE_SPARSIFY_OUTLIERS, false, out);
}

const struct merge_method merge_method_breadcrumbs = {
    .name = "breadcrumbs",
    .summary = "drop each task vector's largest gamma and its smallest entries (keep density), "
               "then task arithmetic",
    .min_models = 1,
    .max_models = MERGE_MAX_MODELS,
    .params = breadcrumbs_params,
    .set_defaults = NULL,
    .merge_tensor = breadcrumbs_merge,
    .stream_begin = breadcrumbs_stream,
};

/* breadcrumbs_ties (mergekit's "breadcrumbs_ties"): the same sparsification,
 * then TIES sign election; normalize off by default, as in mergekit. */
static int breadcrumbs_ties_merge(const struct merge_tensor_job *job)
{
    int rc = merge_job_check(&merge_method_breadcrumbs_ties, job);
    if (rc)
        return rc;
    return merge_gta_tensor(job, MERGE_SPARSIFY_OUTLIERS, true);
}

static int breadcrumbs_ties_stream(const struct merge_stream_job *job, struct merge_stream **out)
{
    return merge_gta_stream_begin(&merge_method_breadcrumbs_ties, job, MERGE_SPARSIFY_OUTLIERS, true, out);
}

const struct merge_method merge_method_breadcrumbs_ties = {
    .name = "breadcrumbs_ties",
    .summary = "breadcrumbs' sparsification (drop the largest gamma and the smallest), "
               "then TIES sign election",
    .min_models = 1,
    .max_models = MERGE_MAX_MODELS,
    .params = breadcrumbs_params,
    .set_defaults = NULL,
    .merge_tensor = breadcrumbs_ties_merge,
    .stream_begin = breadcrumbs_ties_stream,
};
