/* DELLA (mergekit's "della", sparsification della_magprune): keep each
 * task-vector entry at random with a probability that grows with its
 * magnitude rank within its row, from density - epsilon (smallest) to
 * density + epsilon (largest), rescale the survivors, then TIES sign
 * election ("della_linear": the same without the election).
 *
 * As mergekit: ranks are taken within each row of a 2-D tensor (argsort
 * over dim 1), a vector being one row; with c entries in a row the keep
 * probability of the entry of rank r (0 smallest) is density - epsilon +
 * 2 epsilon r / (c - 1). Equal magnitudes: the lower index ranks higher
 * (mergekit's argsort is not stable; README.md says so).
 *
 * The draw for entry e of model i is merge_mask_uniform_model(seed, name,
 * i, e) < p[e], as for DARE. Survivors are scaled by 1/p[e] ("rescale":
 * "inverse", the DELLA paper's rule, default) or by ||d||_1 / ||kept d||_1
 * ("l1", mergekit's). Density 1 keeps everything unscaled and density 0
 * nothing; otherwise density -/+ epsilon must lie inside (0, 1). */
#include "merge_method.h"

#include <string.h>

/* Stable LSD radix sort of 64-bit items by their bits 32..62 (the magnitude
 * key), in digits of 11, 11 and 9 bits. Returns the buffer holding the
 * sorted items (a or b). */
static uint64_t *sort_by_magnitude(uint64_t *a, uint64_t *b, uint64_t n)
{
    static const unsigned shifts[3] = { 32, 43, 54 };
    uint64_t count[2048];
    for (int pass = 0; pass < 3; pass++) {
        const unsigned sh = shifts[pass];
        memset(count, 0, sizeof count);
        for (uint64_t j = 0; j < n; j++)
            count[(a[j] >> sh) & 0x7ffu]++;
        /* A digit shared by every item leaves the order as it is. */
        bool one_bucket = false;
        for (int c = 0; c < 2048 && !one_bucket; c++)
            one_bucket = count[c] == n;
        if (one_bucket)
            continue;
        uint64_t pos = 0;
        for (int c = 0; c < 2048; c++) {
            uint64_t k = count[c];
            count[c] = pos;
            pos += k;
        }
        for (uint64_t j = 0; j < n; j++)
            b[count[(a[j] >> sh) & 0x7ffu]++] = a[j];
        uint64_t *t = a;
        a = b;
        b = t;
    }
    return a;
}

void merge_della_probs(float *p, const float *d, uint64_t n, double density, double epsilon,
                       uint64_t *ka, uint64_t *kb)
{
    if (n == 0)
        return;
    /* Items are (|d| bits << 32 | index), listed from the highest index
     * down, so that after a stable sort by magnitude equal magnitudes put
     * the lower index later (ranked higher). */
    for (uint64_t j = 0; j < n; j++) {
        uint64_t e = n - 1 - j;
        uint32_t u;
        memcpy(&u, &d[e], sizeof u);
        ka[j] = ((uint64_t)(u & 0x7fffffffu) << 32) | e;
    }
    const uint64_t *order = sort_by_magnitude(ka, kb, n);
    const double lo = density - epsilon, span = 2.0 * epsilon;
    for (uint64_t j = 0; j < n; j++) {
        double r = n > 1 ? (double)j / (double)(n - 1) : 0.5;
        p[order[j] & 0xffffffffu] = (float)(lo + r * span);
    }
}

static const enum merge_param_id della_params[] = {
    MERGE_PARAM_WEIGHT, MERGE_PARAM_DENSITY, MERGE_PARAM_EPSILON, MERGE_PARAM_LAMBDA,
    MERGE_PARAM_NORMALIZE, MERGE_PARAM_SEED, MERGE_PARAM_RESCALE, MERGE_PARAM_COUNT,
};

static void della_defaults(struct merge_tensor_params *p)
{
    p->normalize = true; /* mergekit: della normalizes by default */
}

static int della_merge(const struct merge_tensor_job *job)
{
    int rc = merge_job_check(&merge_method_della, job);
    if (rc)
        return rc;
    return merge_gta_tensor(job, MERGE_SPARSIFY_DELLA, true);
}

const struct merge_method merge_method_della = {
    .name = "della",
    .summary = "DELLA: keep entries at random with probability ranked by magnitude "
               "(density -/+ epsilon), rescale, TIES sign election",
    .min_models = 1,
    .max_models = MERGE_MAX_MODELS,
    .params = della_params,
    .set_defaults = della_defaults,
    .merge_tensor = della_merge,
};

/* della_linear (mergekit's "della_linear"): the same sparsification and
 * rescaling, then task arithmetic without sign election; normalize off by
 * default, as in mergekit. */
static int della_linear_merge(const struct merge_tensor_job *job)
{
    int rc = merge_job_check(&merge_method_della_linear, job);
    if (rc)
        return rc;
    return merge_gta_tensor(job, MERGE_SPARSIFY_DELLA, false);
}

const struct merge_method merge_method_della_linear = {
    .name = "della_linear",
    .summary = "DELLA's magnitude-ranked random drop and rescale, then task arithmetic "
               "(no sign election)",
    .min_models = 1,
    .max_models = MERGE_MAX_MODELS,
    .params = della_params,
    .set_defaults = NULL,
    .merge_tensor = della_linear_merge,
};
