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
 * A NaN result is written as the quiet NaN 0x7fc00000 (merge_method.h).
 *
 * Top-k cuts are found without writing the task vectors out (select.h's
 * topk_find_diff). Two implementations then compute the above: the portable
 * one below (entry by entry, a block of models' values at a time), and an
 * AVX2 one (eight entries at a time, four doubles per vector, taken when the
 * CPU has AVX2) that performs the same IEEE operations in the same order on
 * every entry, recomputing the task vector and the keep decision in the one
 * combining pass instead of storing them, with DARE's mask hash in 64-bit
 * vector lanes. Both give the same bits; test_merge_methods compares them.
 *
 * TIES trims with select.h: k = int(density n) entries of largest |d_i|,
 * equal magnitudes broken by the lower index (mergekit's argsort is not
 * stable, so where equal magnitudes straddle the cut it keeps whichever
 * the sort put first; README.md says so). Density defaults to 1 (keep
 * everything, as mergekit's default); density >= 1 leaves d_i untouched,
 * and a k of 0 (density 0, or density n < 1) is an error naming the
 * tensor, as mergekit stops there with an assertion. */
#include "merge_method.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "lm_error.h"
#include "merge_stream.h"
#include "select.h"

#define KEY_INF 0x7f800000u

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#include <immintrin.h>
#define GTA_X86 1
#define GTA_AVX2 __attribute__((target("avx2")))
#define GTA_AVX512 __attribute__((target("avx2,avx512f")))
#if defined(__clang__)
/* AVX-512F brings FMA: no product may be fused into a sum here. */
#pragma clang fp contract(off)
#endif
#define GTA_INLINE inline __attribute__((always_inline))
/* Loops over models: those with a constant count of 1 or 2 unroll
 * completely (the models' values then stay in registers). */
#define GTA_UNROLL _Pragma("GCC unroll 2")
#else
#define GTA_X86 0
#endif

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
    /* top-k cuts over |x - b|, walked in index order (select.h) */
    struct topk_walk walk_lo, walk_hi;
    /* breadcrumbs: the cut keeps the *last* entries at its threshold (in
     * index order), the walk counting the ones it leaves out first */
    bool           flip_lo, flip_hi;
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

/* Entries per block: the combine works a block of entries at a time, each
 * model's weighted kept deltas first, then the sums across models. */
#define GTA_BLOCK 256

/* v[j] = w * ((x - b) * scale) for the kept entries among e0 .. e0 + len,
 * 0 for the dropped ones, advancing `m`'s walk. `b` points at entry e0 of
 * the base; `u` is work space for len doubles. */
static void gta_fill(struct gta_model *m, const float *b, uint64_t e0, uint64_t idx, size_t len,
                     double w, double *v, double *u)
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
    case KEEP_TOPK: {
        /* within the cut: above the threshold, or at it up to position c */
        const int64_t c = topk_walk_block(&m->walk_lo, x, b, len);
        const uint32_t thr = m->walk_lo.thr;
        for (size_t j = 0; j < len; j++) {
            const uint32_t a = abs_key(x[j] - b[j]);
            const bool in = a <= KEY_INF && (a > thr || (a == thr && (int64_t)j <= c));
            v[j] = in ? w * (((double)x[j] - (double)b[j]) * scale) : 0.0;
        }
        break;
    }
    case KEEP_BAND: {
        const int64_t c_lo = topk_walk_block(&m->walk_lo, x, b, len);
        const int64_t c_hi = topk_walk_block(&m->walk_hi, x, b, len);
        const uint32_t lo = m->walk_lo.thr, hi = m->walk_hi.thr;
        const bool flo = m->flip_lo, fhi = m->flip_hi;
        for (size_t j = 0; j < len; j++) {
            const uint32_t a = abs_key(x[j] - b[j]);
            const bool in_lo = a <= KEY_INF && (a > lo || (a == lo && (((int64_t)j <= c_lo) != flo)));
            const bool in_hi = a <= KEY_INF && (a > hi || (a == hi && (((int64_t)j <= c_hi) != fhi)));
            v[j] = in_lo && !in_hi ? w * (((double)x[j] - (double)b[j]) * scale) : 0.0;
        }
        break;
    }
    case KEEP_RANDOM: {
        const double density = m->density;
        merge_mask_fill(u, m->key, idx, len);
        for (size_t j = 0; j < len; j++)
            v[j] = u[j] < density ? w * (((double)x[j] - (double)b[j]) * scale) : 0.0;
        break;
    }
    case KEEP_DELLA: {
        const float *prob = m->prob + e0;
        merge_mask_fill(u, m->key, idx, len);
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
        gta_fill(&m, b + e0, e0, e0, len, 1.0, v, u);
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

/* The cut of model i's top `k` entries by |x_i - b|: on the arrays of
 * `job`, or read through `sj` when it is given. */
static int gta_cut(const struct merge_tensor_job *job, const struct merge_stream_job *sj, int i,
                   uint64_t k, uint32_t *work, size_t wlen, struct topk_cut *cut)
{
    struct merge_cut_memo *memo = job->cut_memo;
    for (int e = 0; memo && e < MERGE_CUT_MEMO; e++)
        if (memo->e[e].used && memo->e[e].model == i && memo->e[e].k == k) {
            *cut = memo->e[e].cut;
            return 0;
        }
    int rc = 0;
    if (!sj)
        *cut = topk_find_diff(job->models[i], job->base, job->n, k, work, wlen);
    else
        rc = merge_read_cut(sj->read, sj->ud, i, job->n, k, work, wlen, cut);
    if (!rc && memo) {
        unsigned slot = memo->next++ % MERGE_CUT_MEMO;
        memo->e[slot].used = true;
        memo->e[slot].model = i;
        memo->e[slot].k = k;
        memo->e[slot].cut = *cut;
    }
    return rc;
}

/* breadcrumbs (mergekit's magnitude_outliers) for n entries at density
 * and gamma: mergekit keeps positions [n_bot, n - n_top) of the entries
 * sorted by ascending |d|, with target = int(density n), n_top =
 * int(gamma n), n_bot = n - target - n_top (when negative, n_top shrinks
 * by it and n_bot is 0). With n_top 0 that slice, indices[n_bot:-0], is
 * empty: the tensor keeps nothing. Returns n_top; *keep = the entries kept
 * (target, or 0 when n_top is 0). */
static uint64_t outlier_counts(double density, double gamma, uint64_t n, uint64_t *keep)
{
    const uint64_t target = topk_count(density, n);
    uint64_t top = topk_count(gamma, n);
    if (top > n - target)
        top = n - target;
    *keep = top > 0 ? target : 0;
    return top;
}

/* The number of entries at cut's threshold that a cut of the same size
 * leaves out when equal magnitudes are broken the other way (the higher
 * index counting as larger): all entries at the threshold minus the
 * cut's keep_at_threshold. */
static int gta_cut_skip(const struct merge_tensor_job *job, const struct merge_stream_job *sj,
                        int i, const struct topk_cut *cut, uint64_t *skip)
{
    uint32_t key;
    memcpy(&key, &cut->threshold, sizeof key);
    key &= 0x7fffffffu;
    uint64_t total = 0;
    if (!sj) {
        total = topk_count_equal_diff(job->models[i], job->base, job->n, key);
    } else {
        int rc = merge_read_count_equal(sj->read, sj->ud, i, job->n, key, &total);
        if (rc)
            return lm_err_context(rc, "tensor '%s'", job->name ? job->name : "?");
    }
    LM_ASSERT(total >= cut->keep_at_threshold);
    *skip = total - cut->keep_at_threshold;
    return 0;
}

/* TIES read block by block: the cuts of every model that needs one and
 * has none remembered, found in one pass that reads the base once for all
 * of them (select.h's topk_find_diffs_read), and remembered, so that
 * gta_find_cuts then finds them in the memo. Nothing to do without a memo
 * or with fewer than two such models. */
static int gta_read_cuts_together(const struct merge_tensor_job *job,
                                  const struct merge_stream_job *sj, struct topk_cut *cuts)
{
    struct merge_cut_memo *memo = job->cut_memo;
    const uint64_t n = job->n;
    const size_t wlen = topk_work_len(n);
    int src[TOPK_MAX_DIFFS];
    uint64_t k[TOPK_MAX_DIFFS];
    uint32_t *work[TOPK_MAX_DIFFS];
    struct topk_cut found[TOPK_MAX_DIFFS];
    int m = 0;
    for (int i = 0; memo && i < job->n_models && m < TOPK_MAX_DIFFS; i++) {
        const double density = job->params->density[i];
        const uint64_t keep = topk_count(density, n);
        if (!(density > 0.0) || density >= 1.0 || keep == 0)
            continue;
        bool known = false;
        for (int e = 0; e < MERGE_CUT_MEMO && !known; e++)
            known = memo->e[e].used && memo->e[e].model == i && memo->e[e].k == keep;
        if (known)
            continue;
        src[m] = 1 + i;
        k[m++] = keep;
    }
    if (m < 2 || m > MERGE_CUT_MEMO || wlen == 0)
        return 0;
    for (int j = 0; j < m; j++) {
        float *w = merge_scratch_get(job->scratch, j, wlen);
        if (!w)
            return lm_err_context(LM_ENOMEM, "tensor '%s'", job->name ? job->name : "?");
        work[j] = (uint32_t *)(void *)w; /* heap memory, only ever used as uint32 */
    }
    int rc = topk_find_diffs_read(sj->read, sj->ud, n, m, src, k, work, wlen, found);
    for (int j = 0; j < m && !rc; j++) {
        unsigned slot = memo->next++ % MERGE_CUT_MEMO;
        memo->e[slot].used = true;
        memo->e[slot].model = src[j] - 1;
        memo->e[slot].k = k[j];
        memo->e[slot].cut = found[j];
        cuts[2 * (src[j] - 1)] = found[j];
    }
    return rc;
}

/* The top-k cuts that ties (one per model: its top int(density n)) and
 * breadcrumbs (two per model, see outlier_counts: its top n - n_bot and
 * its top n_top) need, for the models with 0 < density < 1 that keep
 * something: cuts[2 i] and cuts[2 i + 1]. Found on the float task vectors
 * x_i - b without writing them out (select.h's topk_find_diff), or read a
 * chunk at a time through `sj` when it is non-NULL (a block by block merge,
 * whose `job` holds placeholder arrays), with work space in scratch slot 0.
 *
 * Breadcrumbs break ties in magnitude as mergekit's ascending sort does
 * when it is stable: the lower index counts as the smaller. Its cuts are
 * select.h's (lower index larger) with the entries at the threshold taken
 * from the end instead: skip[2 i], skip[2 i + 1] say how many equal entries
 * each leaves out at the start. */
static int gta_find_cuts(const struct merge_tensor_job *job, const struct merge_stream_job *sj,
                         enum merge_sparsify sparsify, struct topk_cut *cuts, uint64_t *skip)
{
    const struct merge_tensor_params *p = job->params;
    const uint64_t n = job->n;
    const size_t wlen = topk_work_len(n);
    uint32_t *work = NULL;
    int rc = sj && sparsify == MERGE_SPARSIFY_MAGNITUDE ? gta_read_cuts_together(job, sj, cuts) : 0;
    if (rc)
        return rc;
    for (int i = 0; i < job->n_models; i++) {
        const double density = p->density[i];
        uint64_t keep = topk_count(density, n), top = 0;
        if (sparsify == MERGE_SPARSIFY_OUTLIERS)
            top = outlier_counts(density, p->gamma, n, &keep);
        if (!(density > 0.0) || density >= 1.0 || keep == 0)
            continue;
        if (wlen > 0 && !work) {
            float *w = merge_scratch_get(job->scratch, 0, wlen);
            if (!w)
                return lm_err_context(LM_ENOMEM, "tensor '%s'", job->name ? job->name : "?");
            work = (uint32_t *)(void *)w; /* heap memory, only ever used as uint32 */
        }
        rc = gta_cut(job, sj, i, keep + top, work, wlen, &cuts[2 * i]);
        if (!rc && sparsify == MERGE_SPARSIFY_OUTLIERS)
            rc = gta_cut(job, sj, i, top, work, wlen, &cuts[2 * i + 1]);
        if (!rc && sparsify == MERGE_SPARSIFY_OUTLIERS)
            rc = gta_cut_skip(job, sj, i, &cuts[2 * i], &skip[2 * i]);
        if (!rc && sparsify == MERGE_SPARSIFY_OUTLIERS)
            rc = gta_cut_skip(job, sj, i, &cuts[2 * i + 1], &skip[2 * i + 1]);
        if (rc)
            return rc;
    }
    return 0;
}

/* Sets up model i's sparsification; `cuts` holds its cuts from
 * gta_find_cuts (ties, breadcrumbs). */
static int gta_prepare(const struct merge_tensor_job *job, enum merge_sparsify sparsify,
                       int i, const struct topk_cut *cuts, const uint64_t *skip,
                       struct gta_model *m)
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
    if (!(density > 0.0) && sparsify != MERGE_SPARSIFY_MAGNITUDE) {
        m->mode = KEEP_NONE;
        return 0;
    }

    switch (sparsify) {
    case MERGE_SPARSIFY_NONE:
        break;
    case MERGE_SPARSIFY_MAGNITUDE:
        /* the cut comes from gta_find_cuts */
        if (topk_count(density, n) == 0)
            return lm_err(LM_EFORMAT, "tensor '%s': density %g of model %d keeps int(%g x %llu) = 0 "
                          "entries; mergekit stops on this (magnitude sparsification keeps at least "
                          "one entry), so mergescope does too: raise the density for this tensor",
                          name, density, i, density, (unsigned long long)n);
        m->mode = cuts[0].keep_all ? KEEP_ALL : KEEP_TOPK;
        topk_walk_init(&m->walk_lo, &cuts[0]);
        break;
    case MERGE_SPARSIFY_OUTLIERS: {
        /* the cuts come from gta_find_cuts */
        uint64_t keep;
        (void)outlier_counts(density, p->gamma, n, &keep);
        if (keep == 0) {
            m->mode = KEEP_NONE;
            break;
        }
        m->mode = KEEP_BAND;
        topk_walk_init(&m->walk_lo, &cuts[0]);
        topk_walk_init(&m->walk_hi, &cuts[1]);
        m->walk_lo.left = skip[0];
        m->walk_hi.left = skip[1];
        m->flip_lo = m->flip_hi = true;
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
        /* mergekit ranks within each row (argsort over dim 1 of the
         * tensor, a vector being one row) */
        const uint64_t cols = job->rows && job->cols ? job->cols : n;
        const uint64_t rows = job->rows && job->cols ? job->rows : 1;
        if (cols > UINT32_MAX || rows * cols != n)
            return lm_err(LM_EUNSUPPORTED, "tensor '%s': della ranks rows of at most 2^32 - 1 "
                          "entries; this tensor's %llu x %llu does not fit", name,
                          (unsigned long long)rows, (unsigned long long)cols);
        float *d = merge_scratch_get(job->scratch, 0, n);
        float *prob = merge_scratch_get(job->scratch, 1 + i, n);
        float *ka = merge_scratch_get(job->scratch, MERGE_MAX_MODELS + 1, 2 * n);
        float *kb = merge_scratch_get(job->scratch, MERGE_MAX_MODELS + 2, 2 * n);
        if (!d || !prob || !ka || !kb)
            return lm_err_context(LM_ENOMEM, "tensor '%s'", name);
        task_vector(d, m->x, job->base, n);
        /* The sort buffers are heap memory (malloc-aligned) that only ever
         * holds uint64 values: 2n floats each. */
        for (uint64_t r = 0; r < rows; r++)
            merge_della_probs(prob + r * cols, d + r * cols, cols, density, eps,
                              (uint64_t *)(void *)ka, (uint64_t *)(void *)kb);
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

/* What the combine needs besides the models. */
struct gta_combine {
    bool   consensus, normalize;
    double lambda, div_all;
};

/* The portable combine: a block of entries at a time, each model's
 * weighted kept deltas first (gta_fill), then the sums across models. */
static void gta_portable(struct gta_model *m, int nm, const float *b, uint64_t n, float *out,
                         const struct gta_combine *c, uint64_t idx0)
{
    double v[MERGE_MAX_MODELS][GTA_BLOCK], u[GTA_BLOCK];
    for (uint64_t e0 = 0; e0 < n; e0 += GTA_BLOCK) {
        const size_t len = (size_t)LM_MIN((uint64_t)GTA_BLOCK, n - e0);
        for (int i = 0; i < nm; i++)
            gta_fill(&m[i], b + e0, e0, idx0 + e0, len, m[i].weight, v[i], u);
        for (size_t j = 0; j < len; j++) {
            double sum = 0.0;
            for (int i = 0; i < nm; i++)
                sum += v[i][j];
            double mixed, div;
            if (c->consensus) {
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
                div = c->div_all;
            }
            if (c->normalize)
                mixed /= div;
            out[e0 + j] = merge_nan_canonical((float)((double)b[e0 + j] + c->lambda * mixed));
        }
    }
}

#if GTA_X86
/* ----- The AVX2 kernel -----
 * Blocks of GTA_VBLOCK entries; within a block, groups of eight entries,
 * each handled as two vectors of four doubles (entries 0-3 and 4-7). For
 * every entry and model it forms d = (double)x - (double)b, the keep
 * decision, v = w * (d * scale) and masks v to +0 where the entry is
 * dropped; then the sums over models from +0 in recipe order, the sign
 * election, the division and b + lambda * mixed, as gta_portable does.
 * Adding a dropped entry's +0 instead of skipping it changes nothing: every
 * sum starts at +0, and a sum of round-to-nearest additions is -0 only when
 * all its terms are. For the same reason models that keep nothing are left
 * out beforehand. "* scale" is skipped where scale is always 1 (x * 1 is x,
 * bit for bit, NaN included).
 *
 * The kernel is compiled for each sparsification kind and for one, two or
 * any number of models, so that the loops over models unroll and the
 * per-model constants stay in registers. */

#define GTA_VBLOCK 1024

enum gta_kind {
    GTA_KIND_ALL,     /* every model KEEP_ALL: task arithmetic */
    GTA_KIND_TOPK,    /* KEEP_TOPK or KEEP_ALL: ties */
    GTA_KIND_BAND,    /* KEEP_BAND or KEEP_ALL: breadcrumbs */
    GTA_KIND_RANDOM,  /* KEEP_RANDOM or KEEP_ALL (as density 1, scale 1): dare */
    GTA_KIND_ANY,     /* anything (della) */
};

static const uint64_t mask_golden = UINT64_C(0x9e3779b97f4a7c15);

/* merge_nan_canonical on eight floats. */
GTA_AVX2 static GTA_INLINE __m256 nan_canonical8(__m256 r)
{
    const __m256 nan = _mm256_castsi256_ps(_mm256_set1_epi32((int)MERGE_NAN_BITS));
    return _mm256_blendv_ps(r, nan, _mm256_cmp_ps(r, r, _CMP_UNORD_Q));
}

/* a * c modulo 2^64 in each 64-bit lane (AVX2 multiplies 32 x 32 bits). */
GTA_AVX2 static GTA_INLINE __m256i mul64_const(__m256i a, uint64_t c)
{
    const __m256i clo = _mm256_set1_epi64x((long long)(c & 0xffffffffu));
    const __m256i chi = _mm256_set1_epi64x((long long)(c >> 32));
    const __m256i lo = _mm256_mul_epu32(a, clo);
    const __m256i cross = _mm256_add_epi64(_mm256_mul_epu32(_mm256_srli_epi64(a, 32), clo),
                                           _mm256_mul_epu32(a, chi));
    return _mm256_add_epi64(lo, _mm256_slli_epi64(cross, 32));
}

/* The mask hash's mix (splitmix64's finaliser) in four lanes. */
GTA_AVX2 static GTA_INLINE __m256i mask_mix4(__m256i z)
{
    z = mul64_const(_mm256_xor_si256(z, _mm256_srli_epi64(z, 30)), UINT64_C(0xbf58476d1ce4e5b9));
    z = mul64_const(_mm256_xor_si256(z, _mm256_srli_epi64(z, 27)), UINT64_C(0x94d049bb133111eb));
    return _mm256_xor_si256(z, _mm256_srli_epi64(z, 31));
}

/* merge_mask_at for four consecutive indices: z holds key + G * (index + 1)
 * per lane. The 53-bit integer goes to double exactly through its two
 * halves (2^84 + hi 2^32 and 2^52 + lo, the offsets subtracted exactly). */
GTA_AVX2 static GTA_INLINE __m256d mask_uniform4(__m256i z)
{
    const __m256i m = _mm256_srli_epi64(mask_mix4(z), 11);
    const __m256i lo = _mm256_blend_epi32(m, _mm256_set1_epi64x(0x4330000000000000LL), 0xaa);
    const __m256i hi = _mm256_or_si256(_mm256_srli_epi64(m, 32),
                                       _mm256_set1_epi64x(0x4530000000000000LL));
    const __m256d offset = _mm256_set1_pd(0x1p84 + 0x1p52);
    const __m256d md = _mm256_add_pd(_mm256_sub_pd(_mm256_castsi256_pd(hi), offset),
                                     _mm256_castsi256_pd(lo));
    return _mm256_mul_pd(md, _mm256_set1_pd(0x1p-53));
}

/* DARE's keep test without leaving the integers: with u the mixed value,
 * (u >> 11) 2^-53 < density exactly when u >> 11 < ceil(density 2^53) = T
 * (the scaling by 2^53 is exact), that is when u <= T 2^11 - 1. Returns that
 * bound (density in (0, 1]: T >= 1, and density 1 gives 2^64 - 1). */
static uint64_t mask_keep_bound(double density)
{
    const uint64_t t = (uint64_t)ceil(density * 0x1p53);
    return (t << 11) - 1;
}

/* Lanes (64-bit masks) whose mixed value u is above `bound` (unsigned):
 * the entries DARE drops. */
GTA_AVX2 static GTA_INLINE __m256i lanes_dropped(__m256i u, __m256i bound_flipped)
{
    const __m256i sign = _mm256_set1_epi64x((long long)0x8000000000000000ULL);
    return _mm256_cmpgt_epi64(_mm256_xor_si256(u, sign), bound_flipped);
}

/* A cut's rule for the lanes of one block: a lane is within it when its
 * key is at most `limit` and above `lo1`, where lo1 is thr - 1 at block
 * positions <= c and thr past them (topk_walk_block's answer c), or, for
 * a flipped cut (breadcrumbs), thr at positions <= c and thr - 1 past
 * them: lo1 = a + (pos > c ? d : 0) with (a, d) = (thr - 1, 1) or
 * (thr, -1). */
struct lane_cut {
    __m256i a, c, limit, d;
};

GTA_AVX2 static GTA_INLINE __m256i lanes_in(const struct lane_cut *r, __m256i key, __m256i pos)
{
    const __m256i lo1 = _mm256_add_epi32(r->a, _mm256_and_si256(_mm256_cmpgt_epi32(pos, r->c), r->d));
    return _mm256_andnot_si256(_mm256_cmpgt_epi32(key, r->limit), _mm256_cmpgt_epi32(key, lo1));
}

/* The rule for a walked cut over the block, or for "every entry, NaN
 * included" (KEEP_ALL) or "none" (an empty cut). */
GTA_AVX2 static GTA_INLINE struct lane_cut lane_cut_walk(struct topk_walk *w, bool flip,
                                                         const float *x, const float *b, size_t len)
{
    const int64_t c = topk_walk_block(w, x, b, len);
    struct lane_cut r = {
        _mm256_set1_epi32(flip ? (int)w->thr : (int)w->thr - 1), _mm256_set1_epi32((int)c),
        _mm256_set1_epi32((int)KEY_INF), _mm256_set1_epi32(flip ? -1 : 1),
    };
    return r;
}

GTA_AVX2 static GTA_INLINE struct lane_cut lane_cut_all(void)
{
    struct lane_cut r = {
        _mm256_set1_epi32(-1), _mm256_set1_epi32(GTA_VBLOCK), _mm256_set1_epi32(0x7fffffff),
        _mm256_set1_epi32(1),
    };
    return r;
}

GTA_AVX2 static GTA_INLINE struct lane_cut lane_cut_none(void)
{
    struct lane_cut r = {
        _mm256_set1_epi32(0x7fffffff), _mm256_set1_epi32(GTA_VBLOCK), _mm256_set1_epi32(0x7fffffff),
        _mm256_set1_epi32(1),
    };
    return r;
}

/* Per-model constants of the kernel. */
struct vmodel {
    enum keep_mode mode;
    bool           inv_prob;
    double         weight, scale, density;
    uint64_t       key;
    uint64_t       keep_bound_flipped; /* RANDOM: mask_keep_bound ^ 2^63 */
};

/* One group of eight entries: `xs[i]` and `ps[i]` point at model i's values
 * and (della) keep probabilities for the group, `bp` at the base's, `op` at
 * the output; `e` is the group's first tensor index, `pos` its lanes' block
 * positions, `lo` / `hi` the models' lane rules for the block. */
GTA_AVX2 static GTA_INLINE void gta_group(const enum gta_kind kind, const int nm,
                                          const struct vmodel *vm, const struct lane_cut *lo,
                                          const struct lane_cut *hi, const float *const *xs,
                                          const float *const *ps, const float *bp, float *op,
                                          uint64_t e, __m256i pos, const struct gta_combine *c)
{
    const __m256d zero = _mm256_setzero_pd();
    const __m256 bf = _mm256_loadu_ps(bp);
    const __m256d b0 = _mm256_cvtps_pd(_mm256_castps256_ps128(bf));
    const __m256d b1 = _mm256_cvtps_pd(_mm256_extractf128_ps(bf, 1));
    __m256d v0[MERGE_MAX_MODELS], v1[MERGE_MAX_MODELS];
    __m256d s0 = zero, s1 = zero;
    GTA_UNROLL
    for (int i = 0; i < nm; i++) {
        const __m256 xf = _mm256_loadu_ps(xs[i]);
        const __m256d d0 = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(xf)), b0);
        const __m256d d1 = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(xf, 1)), b1);
        const enum keep_mode mode = kind == GTA_KIND_ANY ? vm[i].mode : KEEP_ALL;
        __m256d t0 = d0, t1 = d1;
        __m256d k0 = _mm256_castsi256_pd(_mm256_set1_epi32(-1)), k1 = k0;
        if (kind == GTA_KIND_TOPK || kind == GTA_KIND_BAND ||
            (kind == GTA_KIND_ANY && (mode == KEEP_TOPK || mode == KEEP_BAND))) {
            const __m256i key = _mm256_and_si256(_mm256_castps_si256(_mm256_sub_ps(xf, bf)),
                                                 _mm256_set1_epi32(0x7fffffff));
            __m256i keep = lanes_in(&lo[i], key, pos);
            if (kind == GTA_KIND_BAND || (kind == GTA_KIND_ANY && mode == KEEP_BAND))
                keep = _mm256_andnot_si256(lanes_in(&hi[i], key, pos), keep);
            k0 = _mm256_castsi256_pd(_mm256_cvtepi32_epi64(_mm256_castsi256_si128(keep)));
            k1 = _mm256_castsi256_pd(_mm256_cvtepi32_epi64(_mm256_extracti128_si256(keep, 1)));
        } else if (kind == GTA_KIND_RANDOM ||
                   (kind == GTA_KIND_ANY && (mode == KEEP_RANDOM || mode == KEEP_DELLA))) {
            const __m256i step = _mm256_setr_epi64x(0, (long long)mask_golden,
                                                    (long long)(2 * mask_golden),
                                                    (long long)(3 * mask_golden));
            const uint64_t z = vm[i].key + mask_golden * (e + 1);
            const __m256i z0 = _mm256_add_epi64(_mm256_set1_epi64x((long long)z), step);
            const __m256i z1 = _mm256_add_epi64(_mm256_set1_epi64x((long long)(z + 4 * mask_golden)),
                                                step);
            __m256d p0 = k0, p1 = k0;
            if (mode == KEEP_DELLA) {
                const __m256 pf = _mm256_loadu_ps(ps[i]);
                p0 = _mm256_cvtps_pd(_mm256_castps256_ps128(pf));
                p1 = _mm256_cvtps_pd(_mm256_extractf128_ps(pf, 1));
                k0 = _mm256_cmp_pd(mask_uniform4(z0), p0, _CMP_LT_OQ);
                k1 = _mm256_cmp_pd(mask_uniform4(z1), p1, _CMP_LT_OQ);
            } else {
                const __m256i bound = _mm256_set1_epi64x((long long)vm[i].keep_bound_flipped);
                k0 = _mm256_castsi256_pd(_mm256_xor_si256(lanes_dropped(mask_mix4(z0), bound),
                                                          _mm256_set1_epi32(-1)));
                k1 = _mm256_castsi256_pd(_mm256_xor_si256(lanes_dropped(mask_mix4(z1), bound),
                                                          _mm256_set1_epi32(-1)));
            }
            if (mode == KEEP_DELLA && vm[i].inv_prob) {
                t0 = _mm256_mul_pd(d0, _mm256_div_pd(_mm256_set1_pd(1.0), p0));
                t1 = _mm256_mul_pd(d1, _mm256_div_pd(_mm256_set1_pd(1.0), p1));
            } else {
                t0 = _mm256_mul_pd(d0, _mm256_set1_pd(vm[i].scale));
                t1 = _mm256_mul_pd(d1, _mm256_set1_pd(vm[i].scale));
            }
        } else if (kind == GTA_KIND_ANY && vm[i].scale != 1.0) {
            t0 = _mm256_mul_pd(d0, _mm256_set1_pd(vm[i].scale));
            t1 = _mm256_mul_pd(d1, _mm256_set1_pd(vm[i].scale));
        }
        const __m256d w = _mm256_set1_pd(vm[i].weight);
        v0[i] = _mm256_mul_pd(w, t0);
        v1[i] = _mm256_mul_pd(w, t1);
        if (kind != GTA_KIND_ALL) {
            v0[i] = _mm256_and_pd(v0[i], k0);
            v1[i] = _mm256_and_pd(v1[i], k1);
        }
        s0 = _mm256_add_pd(s0, v0[i]);
        s1 = _mm256_add_pd(s1, v1[i]);
    }
    __m256d mixed0 = s0, mixed1 = s1, div0 = zero, div1 = zero;
    if (c->consensus) {
        const __m256d plus0 = _mm256_cmp_pd(s0, zero, _CMP_GE_OQ);
        const __m256d plus1 = _mm256_cmp_pd(s1, zero, _CMP_GE_OQ);
        /* The agreeing terms are never -0 and +0 + t is t for any other t,
         * so these sums may start at the first model's term; a -0 weight
         * can only turn a zero div into -0, which becomes 1 all the same. */
        GTA_UNROLL
        for (int i = 0; i < nm; i++) {
            const __m256d w = _mm256_set1_pd(vm[i].weight);
            const __m256d a0 = _mm256_blendv_pd(_mm256_cmp_pd(v0[i], zero, _CMP_LT_OQ),
                                                _mm256_cmp_pd(v0[i], zero, _CMP_GT_OQ), plus0);
            const __m256d a1 = _mm256_blendv_pd(_mm256_cmp_pd(v1[i], zero, _CMP_LT_OQ),
                                                _mm256_cmp_pd(v1[i], zero, _CMP_GT_OQ), plus1);
            if (i == 0) {
                mixed0 = _mm256_and_pd(v0[i], a0);
                mixed1 = _mm256_and_pd(v1[i], a1);
                div0 = _mm256_and_pd(w, a0);
                div1 = _mm256_and_pd(w, a1);
            } else {
                mixed0 = _mm256_add_pd(mixed0, _mm256_and_pd(v0[i], a0));
                mixed1 = _mm256_add_pd(mixed1, _mm256_and_pd(v1[i], a1));
                div0 = _mm256_add_pd(div0, _mm256_and_pd(w, a0));
                div1 = _mm256_add_pd(div1, _mm256_and_pd(w, a1));
            }
        }
        const __m256d one = _mm256_set1_pd(1.0);
        div0 = _mm256_blendv_pd(div0, one, _mm256_cmp_pd(div0, zero, _CMP_EQ_OQ));
        div1 = _mm256_blendv_pd(div1, one, _mm256_cmp_pd(div1, zero, _CMP_EQ_OQ));
    } else {
        div0 = div1 = _mm256_set1_pd(c->div_all);
    }
    if (c->normalize) {
        mixed0 = _mm256_div_pd(mixed0, div0);
        mixed1 = _mm256_div_pd(mixed1, div1);
    }
    const __m256d lambda = _mm256_set1_pd(c->lambda);
    const __m128 r0 = _mm256_cvtpd_ps(_mm256_add_pd(b0, _mm256_mul_pd(lambda, mixed0)));
    const __m128 r1 = _mm256_cvtpd_ps(_mm256_add_pd(b1, _mm256_mul_pd(lambda, mixed1)));
    _mm256_storeu_ps(op, nan_canonical8(_mm256_insertf128_ps(_mm256_castps128_ps256(r0), r1, 1)));
}

/* The kernel over a whole tensor for models m[0 .. nm) (none KEEP_NONE),
 * for a group function (gta_group, gta_group512) compiled for its
 * instruction set. */
#define GTA_DEFINE_RUN(name, target, group)                                                         \
    target static GTA_INLINE void name(const enum gta_kind kind, const int nm, struct gta_model *m, \
                                       const float *b, uint64_t n, float *out,                      \
                                       const struct gta_combine *c, uint64_t idx0)                  \
{                                                                                                   \
    struct vmodel vm[MERGE_MAX_MODELS];                                                             \
    for (int i = 0; i < nm; i++) {                                                                  \
        vm[i].mode = m[i].mode;                                                                     \
        vm[i].inv_prob = m[i].inv_prob;                                                             \
        vm[i].weight = m[i].weight;                                                                 \
        vm[i].scale = m[i].scale;                                                                   \
        vm[i].density = m[i].mode == KEEP_ALL ? 1.0 : m[i].density; /* RANDOM: u < 1 keeps all */   \
        vm[i].key = m[i].key;                                                                       \
        vm[i].keep_bound_flipped = 0;                                                               \
        if (kind == GTA_KIND_RANDOM || (kind == GTA_KIND_ANY && m[i].mode == KEEP_RANDOM))          \
            vm[i].keep_bound_flipped = mask_keep_bound(vm[i].density) ^ UINT64_C(0x8000000000000000);\
    }                                                                                               \
    struct lane_cut lo[MERGE_MAX_MODELS], hi[MERGE_MAX_MODELS];                                     \
    const float *xs[MERGE_MAX_MODELS], *ps[MERGE_MAX_MODELS];                                       \
    const __m256i lane_pos = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);                             \
    for (uint64_t e0 = 0; e0 < n; e0 += GTA_VBLOCK) {                                               \
        const size_t len = (size_t)LM_MIN((uint64_t)GTA_VBLOCK, n - e0);                            \
        for (int i = 0; i < nm; i++) {                                                              \
            ps[i] = NULL;                                                                           \
            if (kind == GTA_KIND_TOPK || kind == GTA_KIND_BAND || kind == GTA_KIND_ANY) {           \
                if (m[i].mode == KEEP_TOPK || m[i].mode == KEEP_BAND)                               \
                    lo[i] = lane_cut_walk(&m[i].walk_lo, m[i].flip_lo, m[i].x + e0, b + e0, len);   \
                else                                                                                \
                    lo[i] = lane_cut_all();                                                         \
                if (m[i].mode == KEEP_BAND)                                                         \
                    hi[i] = lane_cut_walk(&m[i].walk_hi, m[i].flip_hi, m[i].x + e0, b + e0, len);   \
                else                                                                                \
                    hi[i] = lane_cut_none();                                                        \
            }                                                                                       \
        }                                                                                           \
        size_t j = 0;                                                                               \
        __m256i pos = lane_pos;                                                                     \
        for (; j + 8 <= len; j += 8) {                                                              \
            GTA_UNROLL                                                                              \
            for (int i = 0; i < nm; i++) {                                                          \
                xs[i] = m[i].x + e0 + j;                                                            \
                if (kind == GTA_KIND_ANY && m[i].mode == KEEP_DELLA)                                \
                    ps[i] = m[i].prob + e0 + j;                                                     \
            }                                                                                       \
            group(kind, nm, vm, lo, hi, xs, ps, b + e0 + j, out + e0 + j, idx0 + e0 + j, pos, c);   \
            pos = _mm256_add_epi32(pos, _mm256_set1_epi32(8));                                      \
        }                                                                                           \
        if (j < len) {                                                                              \
            /* The last few entries, through zero-padded copies. */                                 \
            const size_t r = len - j;                                                               \
            float pb[8] = { 0 }, po[8], px[MERGE_MAX_MODELS][8], pp[MERGE_MAX_MODELS][8];           \
            memcpy(pb, b + e0 + j, r * sizeof(float));                                              \
            for (int i = 0; i < nm; i++) {                                                          \
                memset(px[i], 0, sizeof px[i]);                                                     \
                memcpy(px[i], m[i].x + e0 + j, r * sizeof(float));                                  \
                xs[i] = px[i];                                                                      \
                if (kind == GTA_KIND_ANY && m[i].mode == KEEP_DELLA) {                              \
                    for (int l = 0; l < 8; l++)                                                     \
                        pp[i][l] = 1.0f;                                                            \
                    memcpy(pp[i], m[i].prob + e0 + j, r * sizeof(float));                           \
                    ps[i] = pp[i];                                                                  \
                }                                                                                   \
            }                                                                                       \
            group(kind, nm, vm, lo, hi, xs, ps, pb, po, idx0 + e0 + j, pos, c);                     \
            memcpy(out + e0 + j, po, r * sizeof(float));                                            \
        }                                                                                           \
    }                                                                                               \
}

GTA_DEFINE_RUN(gta_avx2_run, GTA_AVX2, gta_group)

/* ===== The AVX-512 kernel =====
 * gta_group for the kinds without random draws (task arithmetic, TIES,
 * breadcrumbs): the eight entries of a group in one vector of eight
 * doubles where the AVX2 kernel takes two of four, lane masks as mask
 * registers; every lane sees the same IEEE operations in the same order,
 * so the bits are the AVX2 kernel's (and the portable one's). */
GTA_AVX512 static GTA_INLINE void gta_group512(const enum gta_kind kind, const int nm,
                                              const struct vmodel *vm, const struct lane_cut *lo,
                                              const struct lane_cut *hi, const float *const *xs,
                                              const float *const *ps, const float *bp, float *op,
                                              uint64_t e, __m256i pos, const struct gta_combine *c)
{
    (void)ps; /* della's, which this kernel does not take */
    (void)e;
    const __m512d zero = _mm512_setzero_pd();
    const __m256 bf = _mm256_loadu_ps(bp);
    const __m512d b = _mm512_cvtps_pd(bf);
    __m512d v[MERGE_MAX_MODELS];
    __m512d s = zero;
    GTA_UNROLL
    for (int i = 0; i < nm; i++) {
        const __m256 xf = _mm256_loadu_ps(xs[i]);
        const __m512d d = _mm512_sub_pd(_mm512_cvtps_pd(xf), b);
        v[i] = _mm512_mul_pd(_mm512_set1_pd(vm[i].weight), d);
        if (kind == GTA_KIND_TOPK || kind == GTA_KIND_BAND) {
            const __m256i key = _mm256_and_si256(_mm256_castps_si256(_mm256_sub_ps(xf, bf)),
                                                 _mm256_set1_epi32(0x7fffffff));
            __m256i keep = lanes_in(&lo[i], key, pos);
            if (kind == GTA_KIND_BAND)
                keep = _mm256_andnot_si256(lanes_in(&hi[i], key, pos), keep);
            v[i] = _mm512_maskz_mov_pd((__mmask8)_mm256_movemask_ps(_mm256_castsi256_ps(keep)), v[i]);
        }
        s = _mm512_add_pd(s, v[i]);
    }
    __m512d mixed = s, div = zero;
    if (c->consensus) {
        const __mmask8 plus = _mm512_cmp_pd_mask(s, zero, _CMP_GE_OQ);
        GTA_UNROLL
        for (int i = 0; i < nm; i++) {
            const __m512d w = _mm512_set1_pd(vm[i].weight);
            const __mmask8 a = (__mmask8)((plus & _mm512_cmp_pd_mask(v[i], zero, _CMP_GT_OQ)) |
                                          (~plus & _mm512_cmp_pd_mask(v[i], zero, _CMP_LT_OQ)));
            if (i == 0) {
                mixed = _mm512_maskz_mov_pd(a, v[i]);
                div = _mm512_maskz_mov_pd(a, w);
            } else {
                mixed = _mm512_add_pd(mixed, _mm512_maskz_mov_pd(a, v[i]));
                div = _mm512_add_pd(div, _mm512_maskz_mov_pd(a, w));
            }
        }
        div = _mm512_mask_mov_pd(div, _mm512_cmp_pd_mask(div, zero, _CMP_EQ_OQ), _mm512_set1_pd(1.0));
    } else {
        div = _mm512_set1_pd(c->div_all);
    }
    if (c->normalize)
        mixed = _mm512_div_pd(mixed, div);
    const __m512d r = _mm512_add_pd(b, _mm512_mul_pd(_mm512_set1_pd(c->lambda), mixed));
    _mm256_storeu_ps(op, nan_canonical8(_mm512_cvtpd_ps(r)));
}

GTA_DEFINE_RUN(gta_avx512_run, GTA_AVX512, gta_group512)

#define GTA_AVX512_VARIANT(name, kind, nm_expr)                                                \
    GTA_AVX512 static void name(int nm, struct gta_model *m, const float *b, uint64_t n,     \
                                float *out, const struct gta_combine *c, uint64_t idx0)     \
    {                                                                                       \
        (void)nm;                                                                           \
        gta_avx512_run(kind, nm_expr, m, b, n, out, c, idx0);                               \
    }

GTA_AVX512_VARIANT(gta_avx512_all_1, GTA_KIND_ALL, 1)
GTA_AVX512_VARIANT(gta_avx512_all_2, GTA_KIND_ALL, 2)
GTA_AVX512_VARIANT(gta_avx512_all_n, GTA_KIND_ALL, nm)
GTA_AVX512_VARIANT(gta_avx512_topk_1, GTA_KIND_TOPK, 1)
GTA_AVX512_VARIANT(gta_avx512_topk_2, GTA_KIND_TOPK, 2)
GTA_AVX512_VARIANT(gta_avx512_topk_n, GTA_KIND_TOPK, nm)
GTA_AVX512_VARIANT(gta_avx512_band_1, GTA_KIND_BAND, 1)
GTA_AVX512_VARIANT(gta_avx512_band_2, GTA_KIND_BAND, 2)
GTA_AVX512_VARIANT(gta_avx512_band_n, GTA_KIND_BAND, nm)

#define GTA_AVX2_VARIANT(name, kind, nm_expr)                                                  \
    GTA_AVX2 static void name(int nm, struct gta_model *m, const float *b, uint64_t n,       \
                              float *out, const struct gta_combine *c, uint64_t idx0)       \
    {                                                                                       \
        (void)nm;                                                                           \
        gta_avx2_run(kind, nm_expr, m, b, n, out, c, idx0);                                 \
    }

GTA_AVX2_VARIANT(gta_avx2_all_1, GTA_KIND_ALL, 1)
GTA_AVX2_VARIANT(gta_avx2_all_2, GTA_KIND_ALL, 2)
GTA_AVX2_VARIANT(gta_avx2_all_n, GTA_KIND_ALL, nm)
GTA_AVX2_VARIANT(gta_avx2_topk_1, GTA_KIND_TOPK, 1)
GTA_AVX2_VARIANT(gta_avx2_topk_2, GTA_KIND_TOPK, 2)
GTA_AVX2_VARIANT(gta_avx2_topk_n, GTA_KIND_TOPK, nm)
GTA_AVX2_VARIANT(gta_avx2_random_1, GTA_KIND_RANDOM, 1)
GTA_AVX2_VARIANT(gta_avx2_random_2, GTA_KIND_RANDOM, 2)
GTA_AVX2_VARIANT(gta_avx2_random_n, GTA_KIND_RANDOM, nm)
GTA_AVX2_VARIANT(gta_avx2_band_1, GTA_KIND_BAND, 1)
GTA_AVX2_VARIANT(gta_avx2_band_2, GTA_KIND_BAND, 2)
GTA_AVX2_VARIANT(gta_avx2_band_n, GTA_KIND_BAND, nm)
GTA_AVX2_VARIANT(gta_avx2_any_n, GTA_KIND_ANY, nm)

typedef void (*gta_avx2_fn)(int nm, struct gta_model *m, const float *b, uint64_t n, float *out,
                            const struct gta_combine *c, uint64_t idx0);

/* Runs the AVX2 kernel: drops the models that keep nothing, picks the
 * variant for the models' modes and count. */
static void gta_avx2(struct gta_model *m, int nm, const float *b, uint64_t n, float *out,
                     const struct gta_combine *c, uint64_t idx0)
{
    struct gta_model live[MERGE_MAX_MODELS];
    int from[MERGE_MAX_MODELS];
    int nl = 0;
    bool any_topk = false, any_band = false, any_random = false, any_other = false;
    for (int i = 0; i < nm; i++) {
        switch (m[i].mode) {
        case KEEP_NONE:   continue;
        case KEEP_ALL:    break;
        case KEEP_TOPK:   any_topk = true; break;
        case KEEP_BAND:   any_band = true; break;
        case KEEP_RANDOM: any_random = true; break;
        case KEEP_DELLA:  any_other = true; break;
        }
        from[nl] = i;
        live[nl++] = m[i];
    }
    static const gta_avx2_fn table[4][3] = {
        { gta_avx2_all_1, gta_avx2_all_2, gta_avx2_all_n },
        { gta_avx2_topk_1, gta_avx2_topk_2, gta_avx2_topk_n },
        { gta_avx2_random_1, gta_avx2_random_2, gta_avx2_random_n },
        { gta_avx2_band_1, gta_avx2_band_2, gta_avx2_band_n },
    };
    static const gta_avx2_fn table512[4][3] = {
        { gta_avx512_all_1, gta_avx512_all_2, gta_avx512_all_n },
        { gta_avx512_topk_1, gta_avx512_topk_2, gta_avx512_topk_n },
        { gta_avx2_random_1, gta_avx2_random_2, gta_avx2_random_n },
        { gta_avx512_band_1, gta_avx512_band_2, gta_avx512_band_n },
    };
    const gta_avx2_fn (*tab)[3] = merge_simd_avx512() ? table512 : table;
    const int kinds = any_topk + any_band + any_random + any_other;
    const int col = nl == 1 ? 0 : (nl == 2 ? 1 : 2);
    gta_avx2_fn fn = gta_avx2_any_n;
    if (kinds == 0)
        fn = tab[0][col];
    else if (kinds == 1 && any_topk)
        fn = tab[1][col];
    else if (kinds == 1 && any_random)
        fn = tab[2][col];
    else if (kinds == 1 && any_band)
        fn = tab[3][col];
    fn(nl, live, b, n, out, c, idx0);
    /* the walks go on where this run left them (block by block merges) */
    for (int k = 0; k < nl; k++) {
        m[from[k]].walk_lo = live[k].walk_lo;
        m[from[k]].walk_hi = live[k].walk_hi;
    }
}
#endif

/* The combine over the n entries of a block that starts at entry idx0 of
 * the tensor (0: the whole tensor). */
static void gta_run(struct gta_model *m, int nm, const float *b, uint64_t n, float *out,
                    const struct gta_combine *c, uint64_t idx0)
{
#if GTA_X86
    if (merge_simd_avx2()) {
        gta_avx2(m, nm, b, n, out, c, idx0);
        return;
    }
#endif
    gta_portable(m, nm, b, n, out, c, idx0);
}

/* Sets up the models and the combine for a checked job: the top-k cuts
 * (into `cuts`, 2 * MERGE_MAX_MODELS) found as gta_find_cuts does with
 * `sj`, then each model's sparsification. */
static int gta_setup(const struct merge_tensor_job *job, const struct merge_stream_job *sj,
                     enum merge_sparsify sparsify, bool sign_consensus, struct topk_cut *cuts,
                     struct gta_model *m, struct gta_combine *c)
{
    const struct merge_tensor_params *p = job->params;
    uint64_t skip[2 * MERGE_MAX_MODELS] = { 0 };
    if (sparsify == MERGE_SPARSIFY_MAGNITUDE || sparsify == MERGE_SPARSIFY_OUTLIERS) {
        int rc = gta_find_cuts(job, sj, sparsify, cuts, skip);
        if (rc)
            return rc;
    }
    double wsum = 0.0;
    for (int i = 0; i < job->n_models; i++) {
        int rc = gta_prepare(job, sparsify, i, cuts + 2 * i, skip + 2 * i, &m[i]);
        if (rc)
            return rc;
        wsum += m[i].weight;
    }
    *c = (struct gta_combine){
        .consensus = sign_consensus,
        .normalize = p->normalize,
        .lambda = p->lambda,
        .div_all = fabs(wsum) < 1e-8 ? 1.0 : wsum,
    };
    return 0;
}

int merge_gta_tensor(const struct merge_tensor_job *job, enum merge_sparsify sparsify,
                     bool sign_consensus)
{
    const int nm = job->n_models;
    LM_ASSERT(job->base && nm >= 0 && nm <= MERGE_MAX_MODELS);
    if (sparsify != MERGE_SPARSIFY_NONE && sparsify != MERGE_SPARSIFY_RANDOM)
        LM_ASSERT(job->scratch);

    struct topk_cut cuts[2 * MERGE_MAX_MODELS];
    struct gta_model m[MERGE_MAX_MODELS];
    struct gta_combine c;
    int rc = gta_setup(job, NULL, sparsify, sign_consensus, cuts, m, &c);
    if (rc)
        return rc;
    gta_run(m, nm, job->base, job->n, job->out, &c, 0);
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

static int ties_stream(const struct merge_stream_job *job, struct merge_stream **out);

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
    .min_models = 1,
    .max_models = MERGE_MAX_MODELS,
    .params = ties_params,
    .set_defaults = ties_defaults,
    .merge_tensor = ties_merge,
    .stream_begin = ties_stream,
};

/* ===== Block by block (merge_stream.h) ===== */

struct gta_stream {
    struct merge_stream pub;  /* first: the stream handed out */
    struct gta_model m[MERGE_MAX_MODELS];
    int nm;
    struct gta_combine c;
};

static int gta_stream_block(struct merge_stream *ps, uint64_t e0, size_t len, const float *base,
                            const float *const *models, float *out)
{
    struct gta_stream *st = (struct gta_stream *)(void *)ps;
    for (int i = 0; i < st->nm; i++)
        st->m[i].x = models[i];
    gta_run(st->m, st->nm, base, (uint64_t)len, out, &st->c, e0);
    return 0;
}

int merge_gta_stream_begin(const struct merge_method *mm, const struct merge_stream_job *sj,
                           enum merge_sparsify sparsify, bool sign_consensus,
                           struct merge_stream **out)
{
    *out = NULL;
    const struct merge_tensor_params *p = sj->params;
    const int nm = sj->n_models;
    if (sparsify == MERGE_SPARSIFY_DELLA)
        return 0; /* ranks over the whole tensor */
    if (sparsify == MERGE_SPARSIFY_RANDOM && p && p->rescale == MERGE_RESCALE_L1)
        return 0; /* L1 norms of the whole tensor before the first entry */
    int rc = merge_stream_check(mm, sj);
    if (rc)
        return rc;
    LM_ASSERT(nm >= 0 && nm <= MERGE_MAX_MODELS);
    struct gta_stream *st = lm_calloc(1, sizeof(*st));
    if (!st)
        return LM_ENOMEM;
    /* the set-up reads no array of the job: the cuts come through sj, and
     * the models' pointers are replaced block by block */
    const float *models[MERGE_MAX_MODELS];
    struct merge_tensor_job job;
    merge_stream_whole_job(sj, models, &job);
    struct topk_cut cuts[2 * MERGE_MAX_MODELS];
    rc = gta_setup(&job, sj, sparsify, sign_consensus, cuts, st->m, &st->c);
    if (rc) {
        free(st);
        return rc;
    }
    for (int i = 0; sparsify == MERGE_SPARSIFY_MAGNITUDE && i < nm; i++) {
        const uint64_t keep = topk_count(p->density[i], sj->n);
        st->pub.has_cut[i] = keep > 0 && keep < sj->n;
        if (st->pub.has_cut[i])
            st->pub.cut[i] = cuts[2 * i];
    }
    st->nm = nm;
    st->pub.block = gta_stream_block;
    *out = &st->pub;
    return 0;
}

static int ties_stream(const struct merge_stream_job *job, struct merge_stream **out)
{
    return merge_gta_stream_begin(&merge_method_ties, job, MERGE_SPARSIFY_MAGNITUDE, true, out);
}
