/* TIES, and the generalized task arithmetic (GTA) engine that task
 * arithmetic, TIES, DARE, breadcrumbs and DELLA share, as mergekit's
 * generalized_task_arithmetic.py defines it:
 *
 *   d_i   = x_i - b                           task vectors
 *   s_i   = sparsify(d_i)                     per method, within the tensor
 *   v_i   = w_i * s_i                         weighted
 *   consensus (ties, dare_ties, della):
 *     sign  = +1 where sum_i v_i >= 0, else -1   (a zero sum elects +)
 *     keep_i = sign(v_i) == sign               (zero entries never agree)
 *     mixed = sum_i keep_i v_i,  div = sum_i keep_i w_i  (0 becomes 1)
 *   otherwise:
 *     mixed = sum_i v_i,         div = sum_i w_i  (|div| < 1e-8 becomes 1)
 *   out   = b + lambda * (normalize ? mixed / div : mixed)
 *
 * Selection (top-k, breadcrumbs' band, DELLA's ranks) looks at the float32
 * task vectors x_i - b; the arithmetic on the kept entries is done in double
 * from the float32 inputs and rounded to float once. Entries are visited in
 * index order and models in recipe order, so a tensor's result depends only
 * on its inputs.
 *
 * TIES trims with select.h: k = int(density n) entries of largest |d_i|,
 * equal magnitudes broken by the lower index. Density defaults to 1 (keep
 * everything, as mergekit's default); density >= 1 leaves d_i untouched and
 * a k of 0 (density 0, or density n < 1) keeps nothing, where mergekit
 * would stop with an assertion. */
#include "merge_method.h"

#include <math.h>
#include <string.h>

#include "lm_error.h"
#include "select.h"

#define KEY_INF 0x7f800000u

enum keep_mode {
    KEEP_ALL,     /* every entry, scale 1 */
    KEEP_NONE,    /* no entry */
    KEEP_TOPK,    /* within cut `lo` */
    KEEP_BAND,    /* within cut `lo` but not within cut `hi` */
    KEEP_RANDOM,  /* mask draw merge_mask_at(key, e) < density */
    KEEP_DELLA,   /* mask draw merge_mask_at(key, e) < prob[e] */
};

/* One task vector's sparsification, walked entry by entry in index order. */
struct gta_model {
    const float   *x;
    double         weight;
    enum keep_mode mode;
    double         scale;      /* factor on kept entries (rescaling) */
    bool           inv_prob;   /* DELLA "inverse": kept entries scaled by 1/prob[e] */
    /* top-k cuts over |x - b| and how many threshold entries were seen */
    uint32_t       lo_thr, hi_thr;
    uint64_t       lo_left, hi_left;
    /* random masks */
    uint64_t       key;
    double         density;
    const float   *prob;
};

/* |v|'s bits, the order select.h sorts by (NaN above every number). */
static inline uint32_t abs_key(float v)
{
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    return u & 0x7fffffffu;
}

static void cut_load(const struct topk_cut *c, uint32_t *thr, uint64_t *left)
{
    *thr = abs_key(c->threshold);
    *left = c->keep_at_threshold;
}

/* Whether the entry with float task-vector value `fd` lies within a cut;
 * must see every entry once, in index order (select.h's rule: above the
 * threshold, or at it while the allowance lasts). */
static inline bool cut_step(uint32_t thr, uint64_t *left, float fd)
{
    uint32_t a = abs_key(fd);
    if (a > KEY_INF)
        return false;
    if (a > thr)
        return true;
    if (a == thr && *left > 0) {
        (*left)--;
        return true;
    }
    return false;
}

/* Entries per block: the combine works a block of entries at a time, each
 * model's weighted kept deltas first, then the sums across models. */
#define GTA_BLOCK 256

/* v[j] = w * ((x - b) * scale) for the kept entries among e0 .. e0 + len,
 * 0 for the dropped ones, advancing `m`'s walk. `b` points at entry e0 of
 * the base; `u` is work space for len doubles. */
static void gta_fill(struct gta_model *m, const float *b, uint64_t e0, size_t len, double w,
                     double *v, double *u)
{
    const float *x = m->x + e0;
    const double scale = m->scale;
    switch (m->mode) {
    case KEEP_ALL:
        for (size_t j = 0; j < len; j++)
            v[j] = w * (((double)x[j] - (double)b[j]) * scale);
        break;
    case KEEP_NONE:
        for (size_t j = 0; j < len; j++)
            v[j] = 0.0;
        break;
    case KEEP_TOPK:
        if (m->lo_left == 0) {
            /* past the threshold allowance: strictly above it */
            const uint32_t thr = m->lo_thr;
            for (size_t j = 0; j < len; j++) {
                uint32_t a = abs_key(x[j] - b[j]);
                v[j] = a > thr && a <= KEY_INF ? w * (((double)x[j] - (double)b[j]) * scale) : 0.0;
            }
            break;
        }
        for (size_t j = 0; j < len; j++)
            v[j] = cut_step(m->lo_thr, &m->lo_left, x[j] - b[j])
                   ? w * (((double)x[j] - (double)b[j]) * scale) : 0.0;
        break;
    case KEEP_BAND:
        for (size_t j = 0; j < len; j++) {
            float fd = x[j] - b[j];
            bool in_lo = cut_step(m->lo_thr, &m->lo_left, fd);
            bool in_hi = cut_step(m->hi_thr, &m->hi_left, fd);
            v[j] = in_lo && !in_hi ? w * (((double)x[j] - (double)b[j]) * scale) : 0.0;
        }
        break;
    case KEEP_RANDOM: {
        const double density = m->density;
        merge_mask_fill(u, m->key, e0, len);
        for (size_t j = 0; j < len; j++)
            v[j] = u[j] < density ? w * (((double)x[j] - (double)b[j]) * scale) : 0.0;
        break;
    }
    case KEEP_DELLA: {
        const float *prob = m->prob + e0;
        merge_mask_fill(u, m->key, e0, len);
        for (size_t j = 0; j < len; j++) {
            double pe = (double)prob[j];
            double s = m->inv_prob ? 1.0 / pe : scale;
            v[j] = u[j] < pe ? w * (((double)x[j] - (double)b[j]) * s) : 0.0;
        }
        break;
    }
    }
}

/* mergekit's L1 rescale (sparsify.py rescaled_masked_tensor, norm "l1"):
 * ||d||_1 / ||kept d||_1, or 1 when either is below 1e-7. Walks a copy of
 * `m`, so the caller's walk state is untouched. */
static double gta_l1_scale(const struct gta_model *m0, const float *b, uint64_t n)
{
    struct gta_model m = *m0;
    m.scale = 1.0;
    m.inv_prob = false;
    double v[GTA_BLOCK], u[GTA_BLOCK];
    double before = 0.0, after = 0.0;
    for (uint64_t e0 = 0; e0 < n; e0 += GTA_BLOCK) {
        size_t len = (size_t)LM_MIN((uint64_t)GTA_BLOCK, n - e0);
        gta_fill(&m, b + e0, e0, len, 1.0, v, u);
        for (size_t j = 0; j < len; j++) {
            before += fabs((double)m.x[e0 + j] - (double)b[e0 + j]);
            after += fabs(v[j]);
        }
    }
    if (!(before >= 1e-7) || !(after >= 1e-7))
        return 1.0;
    return before / after;
}

/* Writes the float task vector x - b to `d`. */
static void task_vector(float *d, const float *x, const float *b, uint64_t n)
{
    for (uint64_t e = 0; e < n; e++)
        d[e] = x[e] - b[e];
}

/* Sets up model i's sparsification. */
static int gta_prepare(const struct merge_tensor_job *job, enum merge_sparsify sparsify,
                       int i, struct gta_model *m)
{
    const struct merge_tensor_params *p = job->params;
    const char *name = job->name ? job->name : "?";
    const uint64_t n = job->n;
    const double density = p->density[i];

    memset(m, 0, sizeof(*m));
    m->x = job->models[i];
    m->weight = p->weight[i];
    m->mode = KEEP_ALL;
    m->scale = 1.0;
    /* mergekit's sparsifiers all return the task vector untouched at
     * density >= 1 (no rescale, no outlier cut). */
    if (sparsify == MERGE_SPARSIFY_NONE || density >= 1.0)
        return 0;
    if (!(density > 0.0)) {
        m->mode = KEEP_NONE;
        return 0;
    }

    switch (sparsify) {
    case MERGE_SPARSIFY_NONE:
        break;
    case MERGE_SPARSIFY_MAGNITUDE:
    case MERGE_SPARSIFY_OUTLIERS: {
        uint64_t keep = topk_count(density, n);
        if (keep == 0) {
            m->mode = KEEP_NONE;
            break;
        }
        float *d = merge_scratch_get(job->scratch, 0, n);
        if (!d)
            return lm_err_context(LM_ENOMEM, "tensor '%s'", name);
        task_vector(d, m->x, job->base, n);
        if (sparsify == MERGE_SPARSIFY_MAGNITUDE) {
            struct topk_cut lo = topk_find(d, n, keep);
            m->mode = lo.keep_all ? KEEP_ALL : KEEP_TOPK;
            cut_load(&lo, &m->lo_thr, &m->lo_left);
            break;
        }
        /* breadcrumbs (mergekit's magnitude_outliers): drop the top
         * int(gamma n) entries and everything below the top
         * int(density n) + int(gamma n), shrinking the top cut when the
         * two do not fit in n. */
        uint64_t top = topk_count(p->gamma, n);
        if (top > n - keep)
            top = n - keep;
        struct topk_cut lo = topk_find(d, n, keep + top);
        struct topk_cut hi = topk_find(d, n, top);
        m->mode = KEEP_BAND;
        cut_load(&lo, &m->lo_thr, &m->lo_left);
        cut_load(&hi, &m->hi_thr, &m->hi_left);
        break;
    }
    case MERGE_SPARSIFY_RANDOM:
        m->mode = KEEP_RANDOM;
        m->key = merge_mask_key(p->seed, job->name, (uint64_t)i);
        m->density = density;
        if (p->rescale == MERGE_RESCALE_L1)
            m->scale = gta_l1_scale(m, job->base, n);
        else
            m->scale = 1.0 / density;
        break;
    case MERGE_SPARSIFY_DELLA: {
        double eps = p->epsilon;
        if (!(density - eps > 0.0) || !(density + eps < 1.0))
            return lm_err(LM_EINVAL, "tensor '%s': della needs density -/+ epsilon inside (0, 1); "
                          "model %d has density %g, epsilon %g", name, i, density, eps);
        if (n > UINT32_MAX)
            return lm_err(LM_EUNSUPPORTED, "tensor '%s': della ranks at most 2^32 - 1 entries, "
                          "this tensor has %llu", name, (unsigned long long)n);
        float *d = merge_scratch_get(job->scratch, 0, n);
        float *prob = merge_scratch_get(job->scratch, 1 + i, n);
        float *ka = merge_scratch_get(job->scratch, MERGE_MAX_MODELS + 1, 2 * n);
        float *kb = merge_scratch_get(job->scratch, MERGE_MAX_MODELS + 2, 2 * n);
        if (!d || !prob || !ka || !kb)
            return lm_err_context(LM_ENOMEM, "tensor '%s'", name);
        task_vector(d, m->x, job->base, n);
        /* The sort buffers are heap memory (malloc-aligned) that only ever
         * holds uint64 values: 2n floats each. */
        merge_della_probs(prob, d, n, density, eps, (uint64_t *)(void *)ka, (uint64_t *)(void *)kb);
        m->mode = KEEP_DELLA;
        m->key = merge_mask_key(p->seed, job->name, (uint64_t)i);
        m->prob = prob;
        if (p->rescale == MERGE_RESCALE_L1)
            m->scale = gta_l1_scale(m, job->base, n);
        else
            m->inv_prob = true;
        break;
    }
    }
    return 0;
}

int merge_gta_tensor(const struct merge_tensor_job *job, enum merge_sparsify sparsify,
                     bool sign_consensus)
{
    const struct merge_tensor_params *p = job->params;
    const uint64_t n = job->n;
    const float *b = job->base;
    const int nm = job->n_models;
    LM_ASSERT(b && nm >= 0 && nm <= MERGE_MAX_MODELS);
    if (sparsify != MERGE_SPARSIFY_NONE && sparsify != MERGE_SPARSIFY_RANDOM)
        LM_ASSERT(job->scratch);

    struct gta_model m[MERGE_MAX_MODELS];
    double wsum = 0.0;
    for (int i = 0; i < nm; i++) {
        int rc = gta_prepare(job, sparsify, i, &m[i]);
        if (rc)
            return rc;
        wsum += m[i].weight;
    }
    const double div_all = fabs(wsum) < 1e-8 ? 1.0 : wsum;
    const double lambda = p->lambda;
    const bool normalize = p->normalize;

    double v[MERGE_MAX_MODELS][GTA_BLOCK], u[GTA_BLOCK];
    for (uint64_t e0 = 0; e0 < n; e0 += GTA_BLOCK) {
        const size_t len = (size_t)LM_MIN((uint64_t)GTA_BLOCK, n - e0);
        for (int i = 0; i < nm; i++)
            gta_fill(&m[i], b + e0, e0, len, m[i].weight, v[i], u);
        for (size_t j = 0; j < len; j++) {
            double sum = 0.0;
            for (int i = 0; i < nm; i++)
                sum += v[i][j];
            double mixed, div;
            if (sign_consensus) {
                const bool plus = sum >= 0.0;
                mixed = 0.0;
                div = 0.0;
                for (int i = 0; i < nm; i++) {
                    const double vi = v[i][j];
                    if (plus ? vi > 0.0 : vi < 0.0) {
                        mixed += vi;
                        div += m[i].weight;
                    }
                }
                if (div == 0.0)
                    div = 1.0;
            } else {
                mixed = sum;
                div = div_all;
            }
            if (normalize)
                mixed /= div;
            job->out[e0 + j] = (float)((double)b[e0 + j] + lambda * mixed);
        }
    }
    return 0;
}

/* ===== ties ===== */

static const enum merge_param_id ties_params[] = {
    MERGE_PARAM_WEIGHT, MERGE_PARAM_DENSITY, MERGE_PARAM_LAMBDA, MERGE_PARAM_NORMALIZE,
    MERGE_PARAM_COUNT,
};

static void ties_defaults(struct merge_tensor_params *p)
{
    p->normalize = true; /* mergekit: ties normalizes by default */
}

static int ties_merge(const struct merge_tensor_job *job)
{
    int rc = merge_job_check(&merge_method_ties, job);
    if (rc)
        return rc;
    return merge_gta_tensor(job, MERGE_SPARSIFY_MAGNITUDE, true);
}

const struct merge_method merge_method_ties = {
    .name = "ties",
    .summary = "TIES: trim each task vector to its top density by magnitude, elect signs, "
               "average the agreeing entries",
    .mergekit_name = "ties",
    .min_models = 1,
    .max_models = MERGE_MAX_MODELS,
    .params = ties_params,
    .set_defaults = ties_defaults,
    .merge_tensor = ties_merge,
};
