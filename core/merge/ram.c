/* RAM and RAM+ (mergekit's "ram" and "ramplus_tl", Reinforced Agent
 * Merging). With the base b and task vectors d_i = x_i - b, an entry of
 * d_i counts when |d_i| > epsilon; c[e] is how many models' entries count
 * at e. Entries only one model changes (c = 1) are taken whole, entries
 * several change are averaged over those:
 *
 *   ram:        out = b + sum_i [counts] d_i ([c = 1] + [c > 1] / c)
 *   ramplus_tl: entries only model i changes are scaled by
 *               l_i = 1 + r clamp(rho_i, 0, alpha),  rho_i = S_i / max(U_i, epsilon),
 *               S_i, U_i the numbers of model i's counted entries that
 *               are shared (c > 1) and unique (c = 1) in this tensor.
 *
 * mergekit computes in float32, operation by operation, and so does this
 * file in its order (the sum over models from the first on). ram depends
 * on each entry alone and could stream; ramplus_tl needs the counts of
 * the whole tensor. Both merge whole tensors. */
#include "merge_method.h"

#include <math.h>
#include <stdlib.h>

#include "lm_error.h"

static const enum merge_param_id ram_params[] = { MERGE_PARAM_EPSILON, MERGE_PARAM_COUNT };
static const enum merge_param_id ramplus_params[] = {
    MERGE_PARAM_R, MERGE_PARAM_ALPHA, MERGE_PARAM_EPSILON, MERGE_PARAM_COUNT,
};

static int ram_run(const struct merge_tensor_job *job, bool plus)
{
    const struct merge_tensor_params *p = job->params;
    const int nm = job->n_models;
    const uint64_t n = job->n;
    const float *b = job->base, *const *x = job->models;
    const float eps = (float)p->epsilon;
    float lambda[MERGE_MAX_MODELS];
    for (int i = 0; i < nm; i++)
        lambda[i] = 1.0f;
    if (plus) {
        uint64_t shared[MERGE_MAX_MODELS] = { 0 }, unique[MERGE_MAX_MODELS] = { 0 };
        for (uint64_t e = 0; e < n; e++) {
            int c = 0;
            for (int i = 0; i < nm; i++)
                c += fabsf(x[i][e] - b[e]) > eps;
            if (c == 0)
                continue;
            for (int i = 0; i < nm; i++)
                if (fabsf(x[i][e] - b[e]) > eps) {
                    shared[i] += c > 1;
                    unique[i] += c == 1;
                }
        }
        const float rf = (float)p->r, af = (float)p->alpha;
        for (int i = 0; i < nm; i++) {
            float u = (float)unique[i];
            u = u < eps ? eps : u;
            float rho = (float)shared[i] / u;
            rho = rho < 0.0f ? 0.0f : rho;
            rho = rho > af ? af : rho;
            lambda[i] = 1.0f + rf * rho;
        }
    }
    for (uint64_t e = 0; e < n; e++) {
        float d[MERGE_MAX_MODELS];
        int c = 0;
        bool nz[MERGE_MAX_MODELS];
        for (int i = 0; i < nm; i++) {
            d[i] = x[i][e] - b[e];
            nz[i] = fabsf(d[i]) > eps;
            c += nz[i];
        }
        const float fu = c == 1 ? 1.0f : 0.0f, fo = c > 1 ? 1.0f : 0.0f;
        const float fc = (float)(c < 1 ? 1 : c);
        float acc = 0.0f;
        for (int i = 0; i < nm; i++) {
            const float z = d[i] * (nz[i] ? 1.0f : 0.0f);
            float u = z * fu;
            if (plus)
                u = u * lambda[i];
            const float o = (z * fo) / fc;
            const float term = u + o;
            acc = i == 0 ? term : acc + term;
        }
        job->out[e] = merge_nan_canonical(b[e] + acc);
    }
    return 0;
}

static int ram_merge(const struct merge_tensor_job *job)
{
    int rc = merge_job_check(&merge_method_ram, job);
    return rc ? rc : ram_run(job, false);
}

static int ramplus_merge(const struct merge_tensor_job *job)
{
    int rc = merge_job_check(&merge_method_ramplus_tl, job);
    return rc ? rc : ram_run(job, true);
}

static void ram_defaults(struct merge_tensor_params *p)
{
    p->epsilon = 1e-5;
}

static void ramplus_defaults(struct merge_tensor_params *p)
{
    p->r = 0.1;
    p->alpha = 0.2;
    p->epsilon = 1e-5;
}

const struct merge_method merge_method_ram = {
    .name = "ram",
    .summary = "RAM: task-vector entries only one model changes (|d| > epsilon) taken whole, "
               "entries several change averaged over those",
    .min_models = 1,
    .max_models = MERGE_MAX_MODELS,
    .params = ram_params,
    .set_defaults = ram_defaults,
    .merge_tensor = ram_merge,
    .stream_begin = NULL,
};

const struct merge_method merge_method_ramplus_tl = {
    .name = "ramplus_tl",
    .summary = "RAM+ (tensor-local): as ram, with each model's unique entries scaled by "
               "1 + r min(max(shared/unique, 0), alpha)",
    .min_models = 1,
    .max_models = MERGE_MAX_MODELS,
    .params = ramplus_params,
    .set_defaults = ramplus_defaults,
    .merge_tensor = ramplus_merge,
    .stream_begin = NULL,
};
