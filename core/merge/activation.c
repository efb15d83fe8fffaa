/* The activation-based methods: aim and sens. Both wrap a task-vector
 * method (`on`) and take what calibration measured through job->ctx; see
 * calib.h for how the measurements are made.
 *
 * aim (activation-informed merging, applied to the result of `on`, TIES by
 * default as in the long-to-short study): for the weight of a linear layer
 * with input-channel importance I (the base model's normalised mean
 * |activation| of that channel, in [0, 1]),
 *
 *     merged[r][c] = b[r][c] + (m[r][c] - b[r][c]) * (1 - I[c] * (1 - omega))
 *
 * where m is the wrapped method's result: the channels the base relies on
 * most keep only `omega` of the change, idle channels keep all of it.
 * Tensors that are not linear weights (embeddings, norms, biases) are the
 * wrapped method's result unchanged. The paper normalises I to [0, 1]
 * without saying how: `importance` chooses min-max per linear layer (the
 * default) or division by the layer's largest value (calib.h).
 *
 * sens (Sens-Merging): each model's task vector is multiplied by its
 * coefficient for the tensor's layer (calib_sens_scale: the softmax of the
 * layer sensitivities with `alpha` and `temperature`, times the models'
 * alignment factors) before the wrapped method (task arithmetic by default)
 * combines them. The scaled inputs are b + scale_i * (x_i - b), so that
 * trimming, sign election and normalisation all see scaled task vectors.
 */
#include <math.h>

#include "lm_error.h"
#include "merge_method.h"

/* Parameters a wrapping method takes itself; the wrapped method's come
 * through merge_method_accepts. */
static const enum merge_param_id aim_params[] = {
    MERGE_PARAM_WEIGHT, MERGE_PARAM_ON, MERGE_PARAM_OMEGA, MERGE_PARAM_IMPORTANCE, MERGE_PARAM_COUNT,
};

static void aim_defaults(struct merge_tensor_params *p)
{
    p->on = 1; /* ties */
}

static int aim_merge(const struct merge_tensor_job *job)
{
    int rc = merge_job_check(&merge_method_aim, job);
    if (rc)
        return rc;
    if ((rc = merge_inner_tensor(job)) != 0)
        return rc;
    const float *imp = job->ctx ? job->ctx->channel_importance : NULL;
    if (!imp)
        return 0;
    uint64_t rows = job->rows ? job->rows : 1, cols = job->cols ? job->cols : job->n;
    if (rows * cols != job->n)
        return lm_err(LM_EINVAL, "tensor '%s': shape %llu x %llu does not hold %llu values",
                      job->name ? job->name : "?", (unsigned long long)rows,
                      (unsigned long long)cols, (unsigned long long)job->n);
    const double omega = job->params->omega;
    for (uint64_t r = 0; r < rows; r++) {
        const float *b = job->base + r * cols;
        float *o = job->out + r * cols;
        for (uint64_t c = 0; c < cols; c++) {
            double keep = 1.0 - (double)imp[c] * (1.0 - omega);
            o[c] = merge_nan_canonical((float)((double)b[c] + ((double)o[c] - (double)b[c]) * keep));
        }
    }
    return 0;
}

const struct merge_method merge_method_aim = {
    .name = "aim",
    .summary = "AIM: another method's delta shrunk on the base's most active input channels (calibration)",
    .min_models = 1,
    .max_models = MERGE_MAX_MODELS,
    .params = aim_params,
    .set_defaults = aim_defaults,
    .merge_tensor = aim_merge,
    .needs = MERGE_NEEDS_ACTIVATIONS,
    .wraps = true,
};

static const enum merge_param_id sens_params[] = {
    MERGE_PARAM_WEIGHT, MERGE_PARAM_ON, MERGE_PARAM_ALPHA, MERGE_PARAM_TEMPERATURE, MERGE_PARAM_COUNT,
};

static int sens_merge(const struct merge_tensor_job *job)
{
    int rc = merge_job_check(&merge_method_sens, job);
    if (rc)
        return rc;
    const double *scale = job->ctx ? job->ctx->model_scale : NULL;
    if (!scale)
        return merge_inner_tensor(job);
    const float *scaled[MERGE_MAX_MODELS];
    for (int i = 0; i < job->n_models; i++) {
        float *x = merge_scratch_get(job->scratch, MERGE_SCRATCH_WRAP + i, (size_t)job->n);
        if (!x)
            return lm_err(LM_ENOMEM, "tensor '%s': out of memory", job->name ? job->name : "?");
        const float *src = job->models[i], *b = job->base;
        const double s = scale[i];
        for (uint64_t e = 0; e < job->n; e++)
            x[e] = (float)((double)b[e] + s * ((double)src[e] - (double)b[e]));
        scaled[i] = x;
    }
    struct merge_tensor_job inner = *job;
    inner.models = scaled;
    return merge_inner_tensor(&inner);
}

const struct merge_method merge_method_sens = {
    .name = "sens",
    .summary = "Sens-Merging: task vectors scaled per layer by loss sensitivity and model alignment (calibration)",
    .min_models = 1,
    .max_models = MERGE_MAX_MODELS,
    .params = sens_params,
    .set_defaults = NULL,
    .merge_tensor = sens_merge,
    .needs = MERGE_NEEDS_SENSITIVITY,
    .wraps = true,
};
