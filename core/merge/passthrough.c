/* passthrough: every output tensor is one input tensor copied unchanged,
 * mergekit's method for layer stacking ("slices" in a recipe). The
 * workspace lines up, for each output tensor, the one input tensor its
 * slice names in every model's place, so the copy takes the first model's
 * (the base's when a job has no model). A recipe names at least one model
 * besides the base, as for every method. mergekit's `scale`
 * parameter is not offered. */
#include "merge_method.h"

#include <string.h>

#include "lm_error.h"

static const enum merge_param_id passthrough_params[] = { MERGE_PARAM_COUNT };

static int passthrough_merge(const struct merge_tensor_job *job)
{
    int rc = merge_job_check(&merge_method_passthrough, job);
    if (rc)
        return rc;
    const float *src = job->n_models > 0 ? job->models[0] : job->base;
    for (uint64_t e = 0; e < job->n; e++)
        job->out[e] = merge_nan_canonical(src[e]);
    return 0;
}

const struct merge_method merge_method_passthrough = {
    .name = "passthrough",
    .summary = "copy each tensor of the one source its slice names (layer stacking with \"slices\")",
    .min_models = 1,
    .max_models = MERGE_MAX_MODELS,
    .params = passthrough_params,
    .set_defaults = NULL,
    .merge_tensor = passthrough_merge,
    .stream_begin = NULL,
    .stacks = true,
};
