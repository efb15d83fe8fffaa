/* slerp: spherical interpolation between the base (t = 0) and exactly one
 * model (t = 1) over the flattened tensor, as mergekit's slerp.py does it:
 *
 *   dot = <v0/|v0|, v1/|v1|>     (a vector with norm <= 1e-8 is used as is)
 *   |dot| > 0.9995:  out = (1 - t) v0 + t v1          (nearly parallel: lerp)
 *   otherwise:       theta0 = acos(dot), theta_t = theta0 t
 *                    s0 = sin(theta0 - theta_t) / sin(theta0)
 *                    s1 = sin(theta_t) / sin(theta0)
 *                    out = s0 v0 + s1 v1
 *
 * on the original (unnormalised) vectors, v0 = base, v1 = model. Norms, the
 * dot product and the combination run in double (mergekit works in float32),
 * and the result is rounded to float once. */
#include "merge_method.h"

#include <math.h>

#include "lm_error.h"

#define SLERP_DOT_THRESHOLD 0.9995
#define SLERP_EPS 1e-8

static const enum merge_param_id slerp_params[] = { MERGE_PARAM_T, MERGE_PARAM_COUNT };

static int slerp_merge(const struct merge_tensor_job *job)
{
    int rc = merge_job_check(&merge_method_slerp, job);
    if (rc)
        return rc;
    const float *v0 = job->base, *v1 = job->models[0];
    const uint64_t n = job->n;
    const double t = job->params->t;
    LM_ASSERT(v0);

    double n0 = 0.0, n1 = 0.0, dot = 0.0;
    for (uint64_t e = 0; e < n; e++) {
        double a = v0[e], b = v1[e];
        n0 += a * a;
        n1 += b * b;
        dot += a * b;
    }
    n0 = sqrt(n0);
    n1 = sqrt(n1);
    if (n0 > SLERP_EPS)
        dot /= n0;
    if (n1 > SLERP_EPS)
        dot /= n1;

    double s0, s1;
    if (fabs(dot) > SLERP_DOT_THRESHOLD) {
        s0 = 1.0 - t;
        s1 = t;
    } else {
        const double theta0 = acos(dot);
        const double sin_theta0 = sin(theta0);
        const double theta_t = theta0 * t;
        s0 = sin(theta0 - theta_t) / sin_theta0;
        s1 = sin(theta_t) / sin_theta0;
    }
    for (uint64_t e = 0; e < n; e++)
        job->out[e] = (float)(s0 * (double)v0[e] + s1 * (double)v1[e]);
    return 0;
}

const struct merge_method merge_method_slerp = {
    .name = "slerp",
    .summary = "spherical interpolation from the base (t = 0) to one model (t = 1)",
    .mergekit_name = "slerp",
    .min_models = 1,
    .max_models = 1,
    .params = slerp_params,
    .set_defaults = NULL,
    .merge_tensor = slerp_merge,
};
