/* nearswap (mergekit's "nearswap"): per entry, move from the base b toward
 * the one model x by w = clamp(t / |b - x|, 0, 1), with w = 1 where b and
 * x are equal (t / 0):
 *
 *   out = w x + (1 - w) b
 *
 * Entries that differ by at most t take the model's value; entries that
 * differ more keep mostly the base's. t is a sameness threshold and must
 * be above 0 (mergekit refuses 0 too).
 *
 * mergekit computes this in float32, operation by operation, and so does
 * this file: |b - x| rounded to float, t / that as PyTorch writes a
 * scalar divided by a tensor (the reciprocal, then times t as a float),
 * NaN and infinities replaced by 1, clamped, then w x, 1 - w, (1 - w) b
 * and their sum each rounded to float. Each entry depends only on itself,
 * so the tensor merges block by block. */
#include "merge_method.h"
#include "merge_stream.h"

#include <math.h>
#include <stdlib.h>

#include "lm_error.h"

static const enum merge_param_id nearswap_params[] = { MERGE_PARAM_T, MERGE_PARAM_COUNT };

static void nearswap_run(const float *b, const float *x, uint64_t n, double t, float *out)
{
    const float tf = (float)t;
    for (uint64_t e = 0; e < n; e++) {
        const float d = fabsf(b[e] - x[e]);
        const float r = 1.0f / d;
        float w = r * tf;
        if (isnan(w) || isinf(w))
            w = 1.0f;
        if (w < 0.0f)
            w = 0.0f;
        if (w > 1.0f)
            w = 1.0f;
        const float a = w * x[e];
        const float om = 1.0f - w;
        const float c = om * b[e];
        out[e] = merge_nan_canonical(a + c);
    }
}

static int nearswap_check(const char *name, double t)
{
    if (!(t > 0.0))
        return lm_err(LM_EFORMAT, "tensor '%s': nearswap needs a threshold t above 0, got %g",
                      name ? name : "?", t);
    return 0;
}

static int nearswap_merge(const struct merge_tensor_job *job)
{
    int rc = merge_job_check(&merge_method_nearswap, job);
    if (!rc)
        rc = nearswap_check(job->name, job->params->t);
    if (rc)
        return rc;
    nearswap_run(job->base, job->models[0], job->n, job->params->t, job->out);
    return 0;
}

struct nearswap_stream {
    struct merge_stream pub;
    double t;
};

static int nearswap_block(struct merge_stream *ps, uint64_t e0, size_t len, const float *base,
                          const float *const *models, float *out)
{
    (void)e0;
    const struct nearswap_stream *st = (const struct nearswap_stream *)(void *)ps;
    nearswap_run(base, models[0], (uint64_t)len, st->t, out);
    return 0;
}

static int nearswap_stream(const struct merge_stream_job *job, struct merge_stream **out)
{
    *out = NULL;
    int rc = merge_stream_check(&merge_method_nearswap, job);
    if (!rc)
        rc = nearswap_check(job->name, job->params->t);
    if (rc)
        return rc;
    struct nearswap_stream *st = lm_calloc(1, sizeof(*st));
    if (!st)
        return LM_ENOMEM;
    st->t = job->params->t;
    st->pub.block = nearswap_block;
    *out = &st->pub;
    return 0;
}

const struct merge_method merge_method_nearswap = {
    .name = "nearswap",
    .summary = "NearSwap: per entry, take the model's value where it is within t of the base's, "
               "else interpolate by t / |b - x|",
    .min_models = 1,
    .max_models = 1,
    .params = nearswap_params,
    .set_defaults = NULL,
    .merge_tensor = nearswap_merge,
    .stream_begin = nearswap_stream,
};
