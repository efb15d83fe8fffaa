/* Task-vector statistics (DESIGN.md section 5) as raw sums.
 *
 * One tensor is one pass over its entries in blocks, models in recipe
 * order, every sum in double with a fixed association (see "One tensor,
 * block by block"): the same inputs give the same bits on every call, on
 * the portable path and the AVX2 one alike (see "The AVX2 kernel"). When a
 * density below 1 needs a cut, it is found on the task vector without
 * writing it out (select.h's topk_find_diff, about one extra pass over x_i
 * and b per model) with work space in scratch slot 0; the portable path's
 * block work arrays live in slot 1, so the inputs must not live in those
 * slots of the scratch passed. The TIES figures trim exactly as the TIES
 * merge does: the top-k cut is found on the float32 task vector x_i - b
 * (select.h, ties by lower index, NaN never kept), and the weighted values
 * and their sum are formed in double from the float32 inputs.
 *
 * Conventions where a definition leaves a case open:
 *   - An entry's sign is -1, 0 or +1; a NaN entry has sign 0, so it never
 *     counts as non-zero for conflict_ij and is never kept by the trim.
 *   - ties_conflict: a kept entry is one whose trimmed d_i[e] is non-zero;
 *     its sign is that of w_i * d_i[e], so a negative weight flips it (as in
 *     mergekit) and a zero weight gives sign 0, which disagrees with either
 *     elected sign.
 *   - Ratios with a zero denominator: cos, conflict, ties_conflict,
 *     topk_energy and sign_flip give 0; rel and merged_rel give 0 when the
 *     numerator is 0 too and +inf otherwise (a base of all zeros that moved).
 *   - has_merged: stats_raw_init sets it (no element lacks a merged value
 *     yet), accumulating without a merged tensor clears it, and
 *     stats_raw_add keeps it only when both sides have it, so per-layer sums
 *     know sign_flip and merged_rel exactly when every tensor did. */
#include "stats.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "lm_error.h"
#include "select.h"

#define KEY_INF 0x7f800000u

enum trim_mode {
    TRIM_ALL,   /* k = n: every non-NaN entry */
    TRIM_NONE,  /* k = 0 */
    TRIM_CUT,   /* a top-k cut, walked in index order */
};

struct trim_state {
    enum trim_mode   mode;
    uint32_t         thr;   /* |d| bits at the cut */
    uint64_t         left;  /* threshold entries still to keep */
    struct topk_walk walk;  /* the same cut, for the AVX2 kernel */
};

static inline uint32_t abs_key(float v)
{
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    return u & 0x7fffffffu;
}

/* Whether the next entry (in index order) with float task-vector value `fd`
 * is kept by the trim: select.h's rule, without branches on the data. */
static inline int trim_step(struct trim_state *t, float fd)
{
    uint32_t a = abs_key(fd);
    int not_nan = a <= KEY_INF;
    switch (t->mode) {
    case TRIM_ALL:
        return not_nan;
    case TRIM_NONE:
        return 0;
    case TRIM_CUT:
        break;
    }
    int at = (a == t->thr) & (t->left > 0);
    t->left -= (uint64_t)at;
    return ((a > t->thr) & not_nan) | at;
}

void stats_raw_init(struct stats_raw *s, int n_models)
{
    LM_ASSERT(n_models >= 0 && n_models <= MERGE_MAX_MODELS);
    memset(s, 0, sizeof *s);
    s->n_models = n_models;
    s->has_merged = 1;
}

void stats_raw_add(struct stats_raw *s, const struct stats_raw *t)
{
    LM_ASSERT(s->n_models == t->n_models);
    const int m = s->n_models;
    s->n_elements += t->n_elements;
    s->base_sq += t->base_sq;
    for (int i = 0; i < m; i++) {
        s->delta_sq[i] += t->delta_sq[i];
        s->topk_sq[i] += t->topk_sq[i];
        for (int j = i + 1; j < m; j++) {
            s->dot[i][j] += t->dot[i][j];
            s->both_nonzero[i][j] += t->both_nonzero[i][j];
            s->opposite[i][j] += t->opposite[i][j];
        }
    }
    s->ties_kept += t->ties_kept;
    s->ties_disagree += t->ties_disagree;
    s->sign_flips += t->sign_flips;
    s->merged_delta_sq += t->merged_delta_sq;
    s->has_merged = s->has_merged && t->has_merged;
}

/* Where the trims' cuts come from: model i's cut is cuts[i] where
 * has_cut[i] (a merge's cut, merge_stream.h), else it is found on the float
 * task vector x_i - b without writing it out: on the arrays (select.h's
 * topk_find_diff) or, when `read` is set, read through it a chunk at a time
 * (topk_find_diff_read). */
struct trim_src {
    const float *base;
    const float *const *models;
    merge_read_fn read;
    void *ud;
    const bool *has_cut;
    const struct topk_cut *cuts;
};

/* Model i's cut keeping its top k of n entries, from `src`; *work is the
 * selection work space, taken from scratch slot 0 the first time. */
static int trim_cut(const struct trim_src *src, int i, uint64_t n, uint64_t k,
                    struct merge_scratch *scratch, uint32_t **work, struct topk_cut *cut)
{
    if (src->has_cut && src->has_cut[i]) {
        *cut = src->cuts[i];
        return 0;
    }
    const size_t wlen = topk_work_len(n);
    if (wlen > 0 && !*work) {
        LM_ASSERT(scratch);
        float *w = merge_scratch_get(scratch, 0, wlen);
        if (!w)
            return lm_err_context(LM_ENOMEM, "stats: selection work space for %llu entries",
                                  (unsigned long long)n);
        *work = (uint32_t *)(void *)w; /* heap memory, only ever used as uint32 */
    }
    if (!src->read) {
        *cut = topk_find_diff(src->models[i], src->base, n, k, *work, wlen);
        return 0;
    }
    return merge_read_cut(src->read, src->ud, i, n, k, *work, wlen, cut);
}

/* Prepares the models' trims: the top-k cut on each float task vector for
 * 0 < k < n. */
static int trims_prepare(struct trim_state *trim, const struct trim_src *src, int m, uint64_t n,
                         const double *density, struct merge_scratch *scratch)
{
    uint32_t *work = NULL;
    for (int i = 0; i < m; i++) {
        struct trim_state *t = &trim[i];
        uint64_t k = topk_count(density[i], n);
        memset(t, 0, sizeof *t);
        if (k >= n) {
            /* topk_find would keep every non-NaN entry: no need to look. */
            t->mode = TRIM_ALL;
            continue;
        }
        if (k == 0) {
            t->mode = TRIM_NONE;
            continue;
        }
        struct topk_cut cut;
        int rc = trim_cut(src, i, n, k, scratch, &work, &cut);
        if (rc)
            return rc;
        t->mode = TRIM_CUT;
        topk_walk_init(&t->walk, &cut);
        t->thr = abs_key(cut.threshold);
        t->left = cut.keep_at_threshold;
    }
    return 0;
}

/* ===== One tensor, block by block =====
 * Entries go through in blocks of STATS_BLOCK. Every double sum is kept in
 * four partial sums, entry e going to lane e % 4, and the lanes are added
 * together (lane 0 first) at the end: a fixed order, so the result is the
 * same on every run, and the same whether the SSE2 loops or the portable
 * ones run (both do the same IEEE operations lane by lane; only the payload
 * of a sum that is NaN anyway may differ; define STATS_PORTABLE to build
 * the portable loops on x86 too). A short last block
 * is copied into zero-padded buffers; zero entries change no sum or count. */

#if defined(__SSE2__) && !defined(STATS_PORTABLE)
#include <emmintrin.h>
#define STATS_SSE2 1
#else
#define STATS_SSE2 0
#endif

#define STATS_BLOCK 256 /* a multiple of 4 */
#define STATS_LANES 4

struct lanes {
    double l[STATS_LANES];
};

static double lanes_total(const struct lanes *a)
{
    return ((a->l[0] + a->l[1]) + a->l[2]) + a->l[3];
}

/* Partial sums of one tensor. */
struct stats_acc {
    struct lanes base_sq, merged_sq;
    struct lanes delta_sq[MERGE_MAX_MODELS], topk_sq[MERGE_MAX_MODELS];
    struct lanes dot[MERGE_MAX_MODELS][MERGE_MAX_MODELS];
    uint64_t     both[MERGE_MAX_MODELS][MERGE_MAX_MODELS], opp[MERGE_MAX_MODELS][MERGE_MAX_MODELS];
    uint64_t     ties_kept, ties_disagree, sign_flips;
};

/* Per-block work arrays (in scratch slot 1). Masks are 0 or -1. */
struct stats_block {
    double  *vsum;                    /* [B] sum_i w_i * trimmed d_i */
    int32_t *kept;                    /* [B] the trim of the model at hand */
    double  *dd[MERGE_MAX_MODELS];    /* [B] d_i in double */
    int32_t *nz[MERGE_MAX_MODELS];    /* [B] d_i != 0 (not NaN) */
    int32_t *pos[MERGE_MAX_MODELS];   /* [B] d_i > 0 */
    int32_t *knz[MERGE_MAX_MODELS];   /* [B] kept and d_i != 0 */
    int32_t *vp[MERGE_MAX_MODELS];    /* [B] w_i * trimmed d_i > 0 */
    int32_t *vn[MERGE_MAX_MODELS];    /* [B] w_i * trimmed d_i < 0 */
};

static int stats_block_init(struct stats_block *bk, int m, struct merge_scratch *scratch)
{
    const size_t b = STATS_BLOCK;
    size_t bytes = b * sizeof(double) * (1 + (size_t)m) + b * sizeof(int32_t) * (1 + 5 * (size_t)m);
    LM_ASSERT(scratch);
    float *mem = merge_scratch_get(scratch, 1, bytes / sizeof(float));
    if (!mem)
        return lm_err_context(LM_ENOMEM, "stats: block buffers");
    /* Doubles first: the buffer is malloc-aligned. */
    double *dp = (double *)(void *)mem;
    bk->vsum = dp;
    dp += b;
    for (int i = 0; i < m; i++, dp += b)
        bk->dd[i] = dp;
    int32_t *ip = (int32_t *)(void *)dp;
    bk->kept = ip;
    ip += b;
    for (int i = 0; i < m; i++) {
        bk->nz[i] = ip;
        bk->pos[i] = ip + b;
        bk->knz[i] = ip + 2 * b;
        bk->vp[i] = ip + 3 * b;
        bk->vn[i] = ip + 4 * b;
        ip += 5 * b;
    }
    return 0;
}

#if STATS_SSE2
static inline __m128i key4(const float *x, const float *b)
{
    __m128 fd = _mm_sub_ps(_mm_loadu_ps(x), _mm_loadu_ps(b));
    return _mm_and_si128(_mm_castps_si128(fd), _mm_set1_epi32(0x7fffffff));
}

static inline uint64_t count_lanes(__m128i c)
{
    int32_t l[4];
    _mm_storeu_si128((__m128i *)(void *)l, c);
    return (uint64_t)(uint32_t)l[0] + (uint32_t)l[1] + (uint32_t)l[2] + (uint32_t)l[3];
}

static inline void lanes_load(const struct lanes *a, __m128d *lo, __m128d *hi)
{
    *lo = _mm_loadu_pd(&a->l[0]);
    *hi = _mm_loadu_pd(&a->l[2]);
}

static inline void lanes_store(struct lanes *a, __m128d lo, __m128d hi)
{
    _mm_storeu_pd(&a->l[0], lo);
    _mm_storeu_pd(&a->l[2], hi);
}

/* Two 64-bit masks to four 32-bit ones. */
static inline __m128i narrow_masks(__m128d lo, __m128d hi)
{
    return _mm_castps_si128(_mm_shuffle_ps(_mm_castpd_ps(lo), _mm_castpd_ps(hi), _MM_SHUFFLE(2, 0, 2, 0)));
}
#endif

/* kept[k] = the trim's verdict (-1 or 0) on entry k of the block, whose
 * float task vector is x[k] - b[k]; walks the cut in index order. */
static void trim_block(struct trim_state *t, const float *x, const float *b, int len, int32_t *kept)
{
    uint32_t lo = 0; /* keep keys in [lo, KEY_INF] */
    switch (t->mode) {
    case TRIM_NONE:
        memset(kept, 0, (size_t)len * sizeof *kept);
        return;
    case TRIM_ALL:
        lo = 0;
        break;
    case TRIM_CUT: {
        uint64_t eq = 0;
        if (t->left > 0) {
            int k = 0;
#if STATS_SSE2
            const __m128i thr = _mm_set1_epi32((int)t->thr);
            __m128i c = _mm_setzero_si128();
            for (; k + 4 <= len; k += 4)
                c = _mm_sub_epi32(c, _mm_cmpeq_epi32(key4(x + k, b + k), thr));
            eq = count_lanes(c);
#endif
            for (; k < len; k++)
                eq += abs_key(x[k] - b[k]) == t->thr;
        }
        if (eq > t->left) {
            /* The allowance runs out inside this block: entry by entry. */
            for (int k = 0; k < len; k++)
                kept[k] = -trim_step(t, x[k] - b[k]);
            return;
        }
        /* Every threshold entry here fits the allowance: keep them all;
         * with none here the strict test is the same thing. */
        lo = eq > 0 ? t->thr : t->thr + 1;
        t->left -= eq;
        break;
    }
    }
    int k = 0;
#if STATS_SSE2
    const __m128i lo1 = _mm_set1_epi32((int)lo - 1), inf = _mm_set1_epi32((int)KEY_INF);
    for (; k + 4 <= len; k += 4) {
        __m128i a = key4(x + k, b + k);
        __m128i keep = _mm_andnot_si128(_mm_cmpgt_epi32(a, inf), _mm_cmpgt_epi32(a, lo1));
        _mm_storeu_si128((__m128i *)(void *)(kept + k), keep);
    }
#endif
    for (; k < len; k++) {
        uint32_t a = abs_key(x[k] - b[k]);
        kept[k] = -(int32_t)((a >= lo) & (a <= KEY_INF));
    }
}

/* Model i's pass over a block of len (a multiple of 4) entries: its sums,
 * its sign masks, and its weighted trimmed values added into vsum. */
static void model_block(struct stats_acc *acc, struct stats_block *bk, int i, const float *x,
                        const float *b, int len, double w)
{
    double *dd = bk->dd[i], *vsum = bk->vsum;
    const int32_t *kept = bk->kept;
    int32_t *nz = bk->nz[i], *pos = bk->pos[i], *knz = bk->knz[i], *vp = bk->vp[i], *vn = bk->vn[i];
#if STATS_SSE2
    __m128d dlo, dhi, tlo, thi;
    lanes_load(&acc->delta_sq[i], &dlo, &dhi);
    lanes_load(&acc->topk_sq[i], &tlo, &thi);
    const __m128d wv = _mm_set1_pd(w), zd = _mm_setzero_pd();
    const __m128 zf = _mm_setzero_ps();
    for (int k = 0; k < len; k += 4) {
        const __m128 xf = _mm_loadu_ps(x + k), bf = _mm_loadu_ps(b + k);
        const __m128 fd = _mm_sub_ps(xf, bf);
        /* Signs from the float difference: rounding keeps the sign, and it
         * is 0 exactly when the double difference is. */
        const __m128i p = _mm_castps_si128(_mm_cmpgt_ps(fd, zf));
        const __m128i z = _mm_castps_si128(_mm_or_ps(_mm_cmpgt_ps(fd, zf), _mm_cmplt_ps(fd, zf)));
        const __m128i kp = _mm_loadu_si128((const __m128i *)(const void *)(kept + k));
        const __m128d d0 = _mm_sub_pd(_mm_cvtps_pd(xf), _mm_cvtps_pd(bf));
        const __m128d d1 = _mm_sub_pd(_mm_cvtps_pd(_mm_movehl_ps(xf, xf)), _mm_cvtps_pd(_mm_movehl_ps(bf, bf)));
        const __m128d k0 = _mm_and_pd(d0, _mm_castsi128_pd(_mm_unpacklo_epi32(kp, kp)));
        const __m128d k1 = _mm_and_pd(d1, _mm_castsi128_pd(_mm_unpackhi_epi32(kp, kp)));
        const __m128d v0 = _mm_mul_pd(wv, k0), v1 = _mm_mul_pd(wv, k1);
        dlo = _mm_add_pd(dlo, _mm_mul_pd(d0, d0));
        dhi = _mm_add_pd(dhi, _mm_mul_pd(d1, d1));
        tlo = _mm_add_pd(tlo, _mm_mul_pd(k0, k0));
        thi = _mm_add_pd(thi, _mm_mul_pd(k1, k1));
        _mm_storeu_pd(vsum + k, _mm_add_pd(_mm_loadu_pd(vsum + k), v0));
        _mm_storeu_pd(vsum + k + 2, _mm_add_pd(_mm_loadu_pd(vsum + k + 2), v1));
        _mm_storeu_pd(dd + k, d0);
        _mm_storeu_pd(dd + k + 2, d1);
        _mm_storeu_si128((__m128i *)(void *)(nz + k), z);
        _mm_storeu_si128((__m128i *)(void *)(pos + k), p);
        _mm_storeu_si128((__m128i *)(void *)(knz + k), _mm_and_si128(kp, z));
        _mm_storeu_si128((__m128i *)(void *)(vp + k),
                         narrow_masks(_mm_cmpgt_pd(v0, zd), _mm_cmpgt_pd(v1, zd)));
        _mm_storeu_si128((__m128i *)(void *)(vn + k),
                         narrow_masks(_mm_cmplt_pd(v0, zd), _mm_cmplt_pd(v1, zd)));
    }
    lanes_store(&acc->delta_sq[i], dlo, dhi);
    lanes_store(&acc->topk_sq[i], tlo, thi);
#else
    struct lanes *ds = &acc->delta_sq[i], *ts = &acc->topk_sq[i];
    for (int k = 0; k < len; k++) {
        const float fd = x[k] - b[k];
        const double d = (double)x[k] - (double)b[k];
        const double kd = kept[k] ? d : 0.0;
        const double v = w * kd;
        const int l = k % STATS_LANES;
        ds->l[l] += d * d;
        ts->l[l] += kd * kd;
        vsum[k] += v;
        dd[k] = d;
        nz[k] = -(int32_t)((fd > 0.0f) | (fd < 0.0f));
        pos[k] = -(int32_t)(fd > 0.0f);
        knz[k] = kept[k] & nz[k];
        vp[k] = -(int32_t)(v > 0.0);
        vn[k] = -(int32_t)(v < 0.0);
    }
#endif
}

/* Dot product and sign agreement of models j and i over a block. */
static void pair_block(struct stats_acc *acc, const struct stats_block *bk, int j, int i, int len)
{
    const double *a = bk->dd[j], *c = bk->dd[i];
    const int32_t *nza = bk->nz[j], *nzc = bk->nz[i], *pa = bk->pos[j], *pc = bk->pos[i];
#if STATS_SSE2
    __m128d lo, hi;
    lanes_load(&acc->dot[j][i], &lo, &hi);
    __m128i nb = _mm_setzero_si128(), no = _mm_setzero_si128();
    for (int k = 0; k < len; k += 4) {
        lo = _mm_add_pd(lo, _mm_mul_pd(_mm_loadu_pd(a + k), _mm_loadu_pd(c + k)));
        hi = _mm_add_pd(hi, _mm_mul_pd(_mm_loadu_pd(a + k + 2), _mm_loadu_pd(c + k + 2)));
        __m128i both = _mm_and_si128(_mm_loadu_si128((const __m128i *)(const void *)(nza + k)),
                                     _mm_loadu_si128((const __m128i *)(const void *)(nzc + k)));
        __m128i differ = _mm_xor_si128(_mm_loadu_si128((const __m128i *)(const void *)(pa + k)),
                                       _mm_loadu_si128((const __m128i *)(const void *)(pc + k)));
        nb = _mm_sub_epi32(nb, both);
        no = _mm_sub_epi32(no, _mm_and_si128(both, differ));
    }
    lanes_store(&acc->dot[j][i], lo, hi);
    acc->both[j][i] += count_lanes(nb);
    acc->opp[j][i] += count_lanes(no);
#else
    struct lanes *dt = &acc->dot[j][i];
    for (int k = 0; k < len; k++) {
        dt->l[k % STATS_LANES] += a[k] * c[k];
        int32_t both = nza[k] & nzc[k];
        acc->both[j][i] += (uint64_t)(both & 1);
        acc->opp[j][i] += (uint64_t)(both & (pa[k] ^ pc[k]) & 1);
    }
#endif
}

/* Sign election over a block and each model's agreement with it. */
static void ties_block(struct stats_acc *acc, const struct stats_block *bk, int m, int len)
{
#if STATS_SSE2
    __m128i kept = _mm_setzero_si128(), dis = _mm_setzero_si128();
    const __m128d zd = _mm_setzero_pd();
    for (int k = 0; k < len; k += 4) {
        /* elected + where the sum is >= 0 (a NaN sum elects -) */
        const __m128i ep = narrow_masks(_mm_cmpge_pd(_mm_loadu_pd(bk->vsum + k), zd),
                                        _mm_cmpge_pd(_mm_loadu_pd(bk->vsum + k + 2), zd));
        for (int i = 0; i < m; i++) {
            const __m128i knz = _mm_loadu_si128((const __m128i *)(const void *)(bk->knz[i] + k));
            const __m128i vp = _mm_loadu_si128((const __m128i *)(const void *)(bk->vp[i] + k));
            const __m128i vn = _mm_loadu_si128((const __m128i *)(const void *)(bk->vn[i] + k));
            const __m128i agree = _mm_or_si128(_mm_and_si128(ep, vp), _mm_andnot_si128(ep, vn));
            kept = _mm_sub_epi32(kept, knz);
            dis = _mm_sub_epi32(dis, _mm_andnot_si128(agree, knz));
        }
    }
    acc->ties_kept += count_lanes(kept);
    acc->ties_disagree += count_lanes(dis);
#else
    for (int k = 0; k < len; k++) {
        const int32_t ep = -(int32_t)(bk->vsum[k] >= 0.0);
        for (int i = 0; i < m; i++) {
            const int32_t agree = (ep & bk->vp[i][k]) | (~ep & bk->vn[i][k]);
            acc->ties_kept += (uint64_t)(bk->knz[i][k] & 1);
            acc->ties_disagree += (uint64_t)(~agree & bk->knz[i][k] & 1);
        }
    }
#endif
}

/* Base energy over a block. */
static void base_block(struct stats_acc *acc, const float *b, int len)
{
#if STATS_SSE2
    __m128d lo, hi;
    lanes_load(&acc->base_sq, &lo, &hi);
    for (int k = 0; k < len; k += 4) {
        const __m128 bf = _mm_loadu_ps(b + k);
        const __m128d b0 = _mm_cvtps_pd(bf), b1 = _mm_cvtps_pd(_mm_movehl_ps(bf, bf));
        lo = _mm_add_pd(lo, _mm_mul_pd(b0, b0));
        hi = _mm_add_pd(hi, _mm_mul_pd(b1, b1));
    }
    lanes_store(&acc->base_sq, lo, hi);
#else
    for (int k = 0; k < len; k++)
        acc->base_sq.l[k % STATS_LANES] += (double)b[k] * (double)b[k];
#endif
}

/* Sign flips and distance between base and merged over a block. */
static void merged_block(struct stats_acc *acc, const float *mg, const float *b, int len)
{
#if STATS_SSE2
    __m128d lo, hi;
    lanes_load(&acc->merged_sq, &lo, &hi);
    __m128i flips = _mm_setzero_si128();
    const __m128 zf = _mm_setzero_ps();
    for (int k = 0; k < len; k += 4) {
        const __m128 mf = _mm_loadu_ps(mg + k), bf = _mm_loadu_ps(b + k);
        const __m128d e0 = _mm_sub_pd(_mm_cvtps_pd(mf), _mm_cvtps_pd(bf));
        const __m128d e1 = _mm_sub_pd(_mm_cvtps_pd(_mm_movehl_ps(mf, mf)), _mm_cvtps_pd(_mm_movehl_ps(bf, bf)));
        lo = _mm_add_pd(lo, _mm_mul_pd(e0, e0));
        hi = _mm_add_pd(hi, _mm_mul_pd(e1, e1));
        const __m128 dp = _mm_xor_ps(_mm_cmpgt_ps(mf, zf), _mm_cmpgt_ps(bf, zf));
        const __m128 dn = _mm_xor_ps(_mm_cmplt_ps(mf, zf), _mm_cmplt_ps(bf, zf));
        flips = _mm_sub_epi32(flips, _mm_castps_si128(_mm_or_ps(dp, dn)));
    }
    lanes_store(&acc->merged_sq, lo, hi);
    acc->sign_flips += count_lanes(flips);
#else
    for (int k = 0; k < len; k++) {
        const double e = (double)mg[k] - (double)b[k];
        acc->merged_sq.l[k % STATS_LANES] += e * e;
        acc->sign_flips += (uint64_t)(((mg[k] > 0.0f) != (b[k] > 0.0f)) | ((mg[k] < 0.0f) != (b[k] < 0.0f)));
    }
#endif
}

/* ===== The AVX2 kernel =====
 * One pass over the tensor in groups of eight entries (two vectors of four
 * doubles: entries e..e+3, then e+4..e+7, e a multiple of 8), every sum in
 * a vector whose lane l takes the entries with index % 4 == l in index
 * order: the same lanes, the same order and the same IEEE operations as the
 * block loops above, so the same bits (NaN payloads aside, as there). The
 * task vectors, trims and masks of a group stay in registers instead of
 * block arrays. The trims walk their cuts a block of STATS_VBLOCK entries at
 * a time (select.h's topk_walk_block). The last, short group runs on
 * zero-padded copies, like the last block above. Compiled for one, two and
 * any number of models, so that the loops over models unroll. */

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#include <immintrin.h>
#define STATS_X86 1
#define STATS_AVX2 __attribute__((target("avx2")))
#define STATS_AVX512 __attribute__((target("avx2,avx512f,popcnt")))
#if defined(__clang__)
/* AVX-512F brings FMA: no product may be fused into a sum here. */
#pragma clang fp contract(off)
#endif
#define STATS_INLINE inline __attribute__((always_inline))
#define STATS_UNROLL _Pragma("GCC unroll 2")
#else
#define STATS_X86 0
#endif

#if STATS_X86
#define STATS_VBLOCK 1024

/* Accumulators: double lanes as in struct lanes, counts in 32-bit lanes
 * (flushed every block). */
struct vacc {
    __m256d base_sq, merged_sq;
    __m256d delta_sq[MERGE_MAX_MODELS], topk_sq[MERGE_MAX_MODELS];
    __m256d dot[MERGE_MAX_MODELS][MERGE_MAX_MODELS];
    __m256i both[MERGE_MAX_MODELS][MERGE_MAX_MODELS], opp[MERGE_MAX_MODELS][MERGE_MAX_MODELS];
    __m256i kept, disagree, flips;
    uint64_t kept_n, disagree_n;  /* the same counts, as stats_group512 keeps them */
};

/* A trim's rule for the lanes of one block: key in (lo1, limit], lo1 being
 * thr - 1 at block positions <= c and thr past them. */
struct vtrim {
    __m256i thr_m1, c, limit;
};

STATS_AVX2 static STATS_INLINE uint64_t vcount(__m256i c)
{
    uint32_t l[8];
    _mm256_storeu_si256((__m256i *)(void *)l, c);
    uint64_t t = 0;
    for (int i = 0; i < 8; i++)
        t += l[i];
    return t;
}

STATS_AVX2 static STATS_INLINE void vlanes_store(struct lanes *a, __m256d v)
{
    double l[4];
    _mm256_storeu_pd(l, v);
    for (int i = 0; i < 4; i++)
        a->l[i] = l[i];
}

/* 64-bit lane masks (two vectors of four) to eight 32-bit lane masks. */
STATS_AVX2 static STATS_INLINE __m256i narrow8(__m256d a, __m256d b)
{
    const __m256 t = _mm256_shuffle_ps(_mm256_castpd_ps(a), _mm256_castpd_ps(b), _MM_SHUFFLE(2, 0, 2, 0));
    return _mm256_permute4x64_epi64(_mm256_castps_si256(t), _MM_SHUFFLE(3, 1, 2, 0));
}

STATS_AVX2 static STATS_INLINE void stats_group(const int m, struct vacc *a, const float *const *xs,
                                                const float *bp, const float *mp,
                                                const double *weight, const struct vtrim *tr,
                                                __m256i pos)
{
    const __m256d zd = _mm256_setzero_pd();
    const __m256 zf = _mm256_setzero_ps();
    const __m256 bf = _mm256_loadu_ps(bp);
    const __m256d b0 = _mm256_cvtps_pd(_mm256_castps256_ps128(bf));
    const __m256d b1 = _mm256_cvtps_pd(_mm256_extractf128_ps(bf, 1));
    a->base_sq = _mm256_add_pd(a->base_sq, _mm256_mul_pd(b0, b0));
    a->base_sq = _mm256_add_pd(a->base_sq, _mm256_mul_pd(b1, b1));

    __m256d d0[MERGE_MAX_MODELS], d1[MERGE_MAX_MODELS];
    __m256d vp0[MERGE_MAX_MODELS], vp1[MERGE_MAX_MODELS], vn0[MERGE_MAX_MODELS], vn1[MERGE_MAX_MODELS];
    __m256i nz[MERGE_MAX_MODELS], ps[MERGE_MAX_MODELS], knz[MERGE_MAX_MODELS];
    __m256d vs0 = zd, vs1 = zd;
    STATS_UNROLL
    for (int i = 0; i < m; i++) {
        const __m256 xf = _mm256_loadu_ps(xs[i]);
        const __m256 fd = _mm256_sub_ps(xf, bf);
        d0[i] = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(xf)), b0);
        d1[i] = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(xf, 1)), b1);
        /* the trim, on the float task vector */
        const __m256i key = _mm256_and_si256(_mm256_castps_si256(fd), _mm256_set1_epi32(0x7fffffff));
        const __m256i lo1 = _mm256_sub_epi32(tr[i].thr_m1, _mm256_cmpgt_epi32(pos, tr[i].c));
        const __m256i kept = _mm256_andnot_si256(_mm256_cmpgt_epi32(key, tr[i].limit),
                                                 _mm256_cmpgt_epi32(key, lo1));
        const __m256d k0 = _mm256_castsi256_pd(_mm256_cvtepi32_epi64(_mm256_castsi256_si128(kept)));
        const __m256d k1 = _mm256_castsi256_pd(_mm256_cvtepi32_epi64(_mm256_extracti128_si256(kept, 1)));
        const __m256d kd0 = _mm256_and_pd(d0[i], k0), kd1 = _mm256_and_pd(d1[i], k1);
        const __m256d w = _mm256_set1_pd(weight[i]);
        const __m256d v0 = _mm256_mul_pd(w, kd0), v1 = _mm256_mul_pd(w, kd1);
        a->delta_sq[i] = _mm256_add_pd(a->delta_sq[i], _mm256_mul_pd(d0[i], d0[i]));
        a->delta_sq[i] = _mm256_add_pd(a->delta_sq[i], _mm256_mul_pd(d1[i], d1[i]));
        a->topk_sq[i] = _mm256_add_pd(a->topk_sq[i], _mm256_mul_pd(kd0, kd0));
        a->topk_sq[i] = _mm256_add_pd(a->topk_sq[i], _mm256_mul_pd(kd1, kd1));
        vs0 = _mm256_add_pd(vs0, v0);
        vs1 = _mm256_add_pd(vs1, v1);
        /* signs from the float difference, as model_block */
        const __m256 pos_f = _mm256_cmp_ps(fd, zf, _CMP_GT_OQ);
        ps[i] = _mm256_castps_si256(pos_f);
        nz[i] = _mm256_castps_si256(_mm256_or_ps(pos_f, _mm256_cmp_ps(fd, zf, _CMP_LT_OQ)));
        knz[i] = _mm256_and_si256(kept, nz[i]);
        vp0[i] = _mm256_cmp_pd(v0, zd, _CMP_GT_OQ);
        vp1[i] = _mm256_cmp_pd(v1, zd, _CMP_GT_OQ);
        vn0[i] = _mm256_cmp_pd(v0, zd, _CMP_LT_OQ);
        vn1[i] = _mm256_cmp_pd(v1, zd, _CMP_LT_OQ);
        STATS_UNROLL
        for (int j = 0; j < i; j++) {
            a->dot[j][i] = _mm256_add_pd(a->dot[j][i], _mm256_mul_pd(d0[j], d0[i]));
            a->dot[j][i] = _mm256_add_pd(a->dot[j][i], _mm256_mul_pd(d1[j], d1[i]));
            const __m256i both = _mm256_and_si256(nz[j], nz[i]);
            a->both[j][i] = _mm256_sub_epi32(a->both[j][i], both);
            a->opp[j][i] = _mm256_sub_epi32(a->opp[j][i],
                                            _mm256_and_si256(both, _mm256_xor_si256(ps[j], ps[i])));
        }
    }
    /* sign election: + where the weighted sum is >= 0 (NaN elects -) */
    const __m256d ep0 = _mm256_cmp_pd(vs0, zd, _CMP_GE_OQ), ep1 = _mm256_cmp_pd(vs1, zd, _CMP_GE_OQ);
    STATS_UNROLL
    for (int i = 0; i < m; i++) {
        const __m256i agree = narrow8(_mm256_blendv_pd(vn0[i], vp0[i], ep0),
                                      _mm256_blendv_pd(vn1[i], vp1[i], ep1));
        a->kept = _mm256_sub_epi32(a->kept, knz[i]);
        a->disagree = _mm256_sub_epi32(a->disagree, _mm256_andnot_si256(agree, knz[i]));
    }
    if (mp) {
        const __m256 mf = _mm256_loadu_ps(mp);
        const __m256d e0 = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(mf)), b0);
        const __m256d e1 = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(mf, 1)), b1);
        a->merged_sq = _mm256_add_pd(a->merged_sq, _mm256_mul_pd(e0, e0));
        a->merged_sq = _mm256_add_pd(a->merged_sq, _mm256_mul_pd(e1, e1));
        const __m256 dp = _mm256_xor_ps(_mm256_cmp_ps(mf, zf, _CMP_GT_OQ),
                                        _mm256_cmp_ps(bf, zf, _CMP_GT_OQ));
        const __m256 dn = _mm256_xor_ps(_mm256_cmp_ps(mf, zf, _CMP_LT_OQ),
                                        _mm256_cmp_ps(bf, zf, _CMP_LT_OQ));
        a->flips = _mm256_sub_epi32(a->flips, _mm256_castps_si256(_mm256_or_ps(dp, dn)));
    }
}

/* Adds the eight lanes of v (entries e..e+7) to a double accumulator whose
 * lane l takes the entries with index % 4 == l: e..e+3 first, then
 * e+4..e+7, as stats_group adds its two halves. */
STATS_AVX512 static STATS_INLINE void vlanes_add8(__m256d *acc, __m512d v)
{
    *acc = _mm256_add_pd(*acc, _mm512_castpd512_pd256(v));
    *acc = _mm256_add_pd(*acc, _mm512_extractf64x4_pd(v, 1));
}

/* stats_group with the double work on eight lanes at once: the products,
 * differences and comparisons of a group in one vector of eight doubles
 * where stats_group takes two of four, and the sums still added half by
 * half into the same four-lane accumulators (vlanes_add8), so that every
 * sum sees the same operations in the same order: the same bits. */
STATS_AVX512 static STATS_INLINE void stats_group512(const int m, struct vacc *a,
                                                     const float *const *xs, const float *bp,
                                                     const float *mp, const double *weight,
                                                     const struct vtrim *tr, __m256i pos)
{
    const __m512d zd = _mm512_setzero_pd();
    const __m256 zf = _mm256_setzero_ps();
    const __m256 bf = _mm256_loadu_ps(bp);
    const __m512d b = _mm512_cvtps_pd(bf);
    vlanes_add8(&a->base_sq, _mm512_mul_pd(b, b));

    __m512d d[MERGE_MAX_MODELS];
    __mmask8 vp[MERGE_MAX_MODELS], vn[MERGE_MAX_MODELS];
    __m256i nz[MERGE_MAX_MODELS], ps[MERGE_MAX_MODELS], knz[MERGE_MAX_MODELS];
    __m512d vs = zd;
    STATS_UNROLL
    for (int i = 0; i < m; i++) {
        const __m256 xf = _mm256_loadu_ps(xs[i]);
        const __m256 fd = _mm256_sub_ps(xf, bf);
        d[i] = _mm512_sub_pd(_mm512_cvtps_pd(xf), b);
        const __m256i key = _mm256_and_si256(_mm256_castps_si256(fd), _mm256_set1_epi32(0x7fffffff));
        const __m256i lo1 = _mm256_sub_epi32(tr[i].thr_m1, _mm256_cmpgt_epi32(pos, tr[i].c));
        const __m256i kept = _mm256_andnot_si256(_mm256_cmpgt_epi32(key, tr[i].limit),
                                                 _mm256_cmpgt_epi32(key, lo1));
        const __m512d kd = _mm512_maskz_mov_pd((__mmask8)_mm256_movemask_ps(_mm256_castsi256_ps(kept)), d[i]);
        const __m512d v = _mm512_mul_pd(_mm512_set1_pd(weight[i]), kd);
        vlanes_add8(&a->delta_sq[i], _mm512_mul_pd(d[i], d[i]));
        vlanes_add8(&a->topk_sq[i], _mm512_mul_pd(kd, kd));
        vs = _mm512_add_pd(vs, v);
        const __m256 pos_f = _mm256_cmp_ps(fd, zf, _CMP_GT_OQ);
        ps[i] = _mm256_castps_si256(pos_f);
        nz[i] = _mm256_castps_si256(_mm256_or_ps(pos_f, _mm256_cmp_ps(fd, zf, _CMP_LT_OQ)));
        knz[i] = _mm256_and_si256(kept, nz[i]);
        vp[i] = _mm512_cmp_pd_mask(v, zd, _CMP_GT_OQ);
        vn[i] = _mm512_cmp_pd_mask(v, zd, _CMP_LT_OQ);
        STATS_UNROLL
        for (int j = 0; j < i; j++) {
            vlanes_add8(&a->dot[j][i], _mm512_mul_pd(d[j], d[i]));
            const __m256i both = _mm256_and_si256(nz[j], nz[i]);
            a->both[j][i] = _mm256_sub_epi32(a->both[j][i], both);
            a->opp[j][i] = _mm256_sub_epi32(a->opp[j][i],
                                            _mm256_and_si256(both, _mm256_xor_si256(ps[j], ps[i])));
        }
    }
    /* sign election: + where the weighted sum is >= 0 (NaN elects -) */
    const unsigned ep = _mm512_cmp_pd_mask(vs, zd, _CMP_GE_OQ);
    STATS_UNROLL
    for (int i = 0; i < m; i++) {
        const unsigned agree = (ep & vp[i]) | (~ep & vn[i]);
        const unsigned kb = (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(knz[i]));
        a->kept_n += (uint64_t)__builtin_popcount(kb);
        a->disagree_n += (uint64_t)__builtin_popcount(kb & ~agree & 0xffu);
    }
    if (mp) {
        const __m256 mf = _mm256_loadu_ps(mp);
        const __m512d e = _mm512_sub_pd(_mm512_cvtps_pd(mf), b);
        vlanes_add8(&a->merged_sq, _mm512_mul_pd(e, e));
        const __m256 dp = _mm256_xor_ps(_mm256_cmp_ps(mf, zf, _CMP_GT_OQ),
                                        _mm256_cmp_ps(bf, zf, _CMP_GT_OQ));
        const __m256 dn = _mm256_xor_ps(_mm256_cmp_ps(mf, zf, _CMP_LT_OQ),
                                        _mm256_cmp_ps(bf, zf, _CMP_LT_OQ));
        a->flips = _mm256_sub_epi32(a->flips, _mm256_castps_si256(_mm256_or_ps(dp, dn)));
    }
}

/* Adds a block's counts to `acc` and clears them. */
STATS_AVX2 static STATS_INLINE void vacc_flush_counts(const int m, struct vacc *a, struct stats_acc *acc)
{
    const __m256i z = _mm256_setzero_si256();
    for (int i = 0; i < m; i++)
        for (int j = 0; j < i; j++) {
            acc->both[j][i] += vcount(a->both[j][i]);
            acc->opp[j][i] += vcount(a->opp[j][i]);
            a->both[j][i] = a->opp[j][i] = z;
        }
    acc->ties_kept += vcount(a->kept) + a->kept_n;
    acc->ties_disagree += vcount(a->disagree) + a->disagree_n;
    acc->sign_flips += vcount(a->flips);
    a->kept = a->disagree = a->flips = z;
    a->kept_n = a->disagree_n = 0;
}

/* The loop over a tensor's groups, for a group function (stats_group,
 * stats_group512) compiled for its instruction set. */
#define STATS_DEFINE_RUN(name, target, group)                                                   \
    target static STATS_INLINE void name(const int m, struct stats_acc *acc,                   \
                                         struct trim_state *trim, const float *base,           \
                                         const float *const *models, const float *merged,      \
                                         uint64_t n, const double *weight)                     \
{                                                                                               \
    struct vacc a;                                                                              \
    memset(&a, 0, sizeof a);                                                                    \
    /* go on from the sums so far (a tensor given block by block) */                            \
    a.base_sq = _mm256_loadu_pd(acc->base_sq.l);                                                \
    a.merged_sq = _mm256_loadu_pd(acc->merged_sq.l);                                            \
    for (int i = 0; i < m; i++) {                                                               \
        a.delta_sq[i] = _mm256_loadu_pd(acc->delta_sq[i].l);                                    \
        a.topk_sq[i] = _mm256_loadu_pd(acc->topk_sq[i].l);                                      \
        for (int j = 0; j < i; j++)                                                             \
            a.dot[j][i] = _mm256_loadu_pd(acc->dot[j][i].l);                                    \
    }                                                                                           \
    struct vtrim tr[MERGE_MAX_MODELS];                                                          \
    const float *xs[MERGE_MAX_MODELS];                                                          \
    const __m256i lane_pos = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);                         \
    for (uint64_t e0 = 0; e0 < n; e0 += STATS_VBLOCK) {                                         \
        const size_t len = (size_t)(n - e0 < STATS_VBLOCK ? n - e0 : STATS_VBLOCK);             \
        for (int i = 0; i < m; i++) {                                                           \
            struct trim_state *t = &trim[i];                                                    \
            if (t->mode == TRIM_CUT) {                                                          \
                const int64_t c = topk_walk_block(&t->walk, models[i] + e0, base + e0, len);    \
                tr[i].thr_m1 = _mm256_set1_epi32((int)t->walk.thr - 1);                         \
                tr[i].c = _mm256_set1_epi32((int)c);                                            \
            } else {                                                                            \
                /* every non-NaN key, or none */                                                \
                tr[i].thr_m1 = _mm256_set1_epi32(t->mode == TRIM_ALL ? -1 : (int)KEY_INF);      \
                tr[i].c = _mm256_set1_epi32(STATS_VBLOCK);                                      \
            }                                                                                   \
            tr[i].limit = _mm256_set1_epi32((int)KEY_INF);                                      \
        }                                                                                       \
        size_t j = 0;                                                                           \
        __m256i pos = lane_pos;                                                                 \
        for (; j + 8 <= len; j += 8) {                                                          \
            STATS_UNROLL                                                                        \
            for (int i = 0; i < m; i++)                                                         \
                xs[i] = models[i] + e0 + j;                                                     \
            group(m, &a, xs, base + e0 + j, merged ? merged + e0 + j : NULL, weight, tr, pos);  \
            pos = _mm256_add_epi32(pos, _mm256_set1_epi32(8));                                  \
        }                                                                                       \
        if (j < len) {                                                                          \
            const size_t r = len - j;                                                           \
            float pb[8] = { 0 }, pm[8] = { 0 }, px[MERGE_MAX_MODELS][8];                        \
            memcpy(pb, base + e0 + j, r * sizeof(float));                                       \
            if (merged)                                                                         \
                memcpy(pm, merged + e0 + j, r * sizeof(float));                                 \
            for (int i = 0; i < m; i++) {                                                       \
                memset(px[i], 0, sizeof px[i]);                                                 \
                memcpy(px[i], models[i] + e0 + j, r * sizeof(float));                           \
                xs[i] = px[i];                                                                  \
            }                                                                                   \
            group(m, &a, xs, pb, merged ? pm : NULL, weight, tr, pos);                          \
        }                                                                                       \
        vacc_flush_counts(m, &a, acc);                                                          \
    }                                                                                           \
    vlanes_store(&acc->base_sq, a.base_sq);                                                     \
    vlanes_store(&acc->merged_sq, a.merged_sq);                                                 \
    for (int i = 0; i < m; i++) {                                                               \
        vlanes_store(&acc->delta_sq[i], a.delta_sq[i]);                                         \
        vlanes_store(&acc->topk_sq[i], a.topk_sq[i]);                                           \
        for (int j = 0; j < i; j++)                                                             \
            vlanes_store(&acc->dot[j][i], a.dot[j][i]);                                         \
    }                                                                                           \
}

STATS_DEFINE_RUN(stats_avx2_run, STATS_AVX2, stats_group)
STATS_DEFINE_RUN(stats_avx512_run, STATS_AVX512, stats_group512)

/* The entry points, for one, two and any number of models (the loops over
 * models unroll for the first two). */
#define STATS_DEFINE_ENTRY(name, target, run, m_expr)                                          \
    target static void name(struct stats_acc *acc, struct trim_state *trim, const float *base, \
                            const float *const *models, int m, const float *merged,            \
                            uint64_t n, const double *weight)                                  \
    {                                                                                          \
        (void)m;                                                                               \
        run(m_expr, acc, trim, base, models, merged, n, weight);                               \
    }

STATS_DEFINE_ENTRY(stats_avx2_1, STATS_AVX2, stats_avx2_run, 1)
STATS_DEFINE_ENTRY(stats_avx2_2, STATS_AVX2, stats_avx2_run, 2)
STATS_DEFINE_ENTRY(stats_avx2_any, STATS_AVX2, stats_avx2_run, m)
STATS_DEFINE_ENTRY(stats_avx512_1, STATS_AVX512, stats_avx512_run, 1)
STATS_DEFINE_ENTRY(stats_avx512_2, STATS_AVX512, stats_avx512_run, 2)
STATS_DEFINE_ENTRY(stats_avx512_any, STATS_AVX512, stats_avx512_run, m)
#endif

/* The block loops over one tensor, into `acc`. 0 or an error. */
static int stats_portable(struct stats_acc *acc, struct trim_state *trim, const float *base,
                          const float *const *models, int m, const float *merged, uint64_t n,
                          const double *weight, struct merge_scratch *scratch)
{
    struct stats_block bk;
    memset(&bk, 0, sizeof bk);
    if (n > 0) {
        int rc = stats_block_init(&bk, m, scratch);
        if (rc)
            return rc;
    }

    /* Zero-padded copies for the last, short block. */
    float pad_b[STATS_BLOCK], pad_m[STATS_BLOCK], pad_x[MERGE_MAX_MODELS][STATS_BLOCK];

    for (uint64_t e0 = 0; e0 < n; e0 += STATS_BLOCK) {
        int len = (int)(n - e0 < STATS_BLOCK ? n - e0 : STATS_BLOCK);
        const float *b = base + e0, *mg = merged ? merged + e0 : NULL;
        const float *x[MERGE_MAX_MODELS];
        for (int i = 0; i < m; i++)
            x[i] = models[i] + e0;
        if (len % STATS_LANES) {
            const int padded = (len + STATS_LANES - 1) / STATS_LANES * STATS_LANES;
            memset(pad_b, 0, sizeof pad_b);
            memcpy(pad_b, b, (size_t)len * sizeof *b);
            b = pad_b;
            if (mg) {
                memset(pad_m, 0, sizeof pad_m);
                memcpy(pad_m, mg, (size_t)len * sizeof *mg);
                mg = pad_m;
            }
            for (int i = 0; i < m; i++) {
                memset(pad_x[i], 0, sizeof pad_x[i]);
                memcpy(pad_x[i], x[i], (size_t)len * sizeof *x[i]);
                x[i] = pad_x[i];
            }
            len = padded;
        }

        base_block(acc, b, len);
        memset(bk.vsum, 0, (size_t)len * sizeof *bk.vsum);
        for (int i = 0; i < m; i++) {
            /* The trim looks at the float32 task vector, as the merge does;
             * the sums use the exact difference in double. */
            trim_block(&trim[i], x[i], b, len, bk.kept);
            model_block(acc, &bk, i, x[i], b, len, weight[i]);
            for (int j = 0; j < i; j++)
                pair_block(acc, &bk, j, i, len);
        }
        if (m > 0)
            ties_block(acc, &bk, m, len);
        if (mg)
            merged_block(acc, mg, b, len);
    }
    return 0;
}

/* Adds entries [0, n) to the sums in `acc` (which may hold earlier blocks
 * of the same tensor). */
static int acc_run(struct stats_acc *acc, struct trim_state *trim, const float *base,
                   const float *const *models, int m, const float *merged, uint64_t n,
                   const double *weight, struct merge_scratch *scratch)
{
#if STATS_X86
    if (merge_simd_avx512() && n > 0) {
        if (m == 1)
            stats_avx512_1(acc, trim, base, models, m, merged, n, weight);
        else if (m == 2)
            stats_avx512_2(acc, trim, base, models, m, merged, n, weight);
        else
            stats_avx512_any(acc, trim, base, models, m, merged, n, weight);
        return 0;
    }
    if (merge_simd_avx2() && n > 0) {
        if (m == 1)
            stats_avx2_1(acc, trim, base, models, m, merged, n, weight);
        else if (m == 2)
            stats_avx2_2(acc, trim, base, models, m, merged, n, weight);
        else
            stats_avx2_any(acc, trim, base, models, m, merged, n, weight);
        return 0;
    }
#endif
    return stats_portable(acc, trim, base, models, m, merged, n, weight, scratch);
}

/* Adds one tensor's sums (n entries, m models) to `s`; has_merged: the
 * merged tensor was given (else sign flips and merged_rel stay unknown). */
static void acc_add(struct stats_raw *s, const struct stats_acc *acc, int m, uint64_t n,
                    bool has_merged)
{
    s->n_elements += n;
    s->base_sq += lanes_total(&acc->base_sq);
    for (int i = 0; i < m; i++) {
        s->delta_sq[i] += lanes_total(&acc->delta_sq[i]);
        s->topk_sq[i] += lanes_total(&acc->topk_sq[i]);
        for (int j = i + 1; j < m; j++) {
            s->dot[i][j] += lanes_total(&acc->dot[i][j]);
            s->both_nonzero[i][j] += acc->both[i][j];
            s->opposite[i][j] += acc->opp[i][j];
        }
    }
    s->ties_kept += acc->ties_kept;
    s->ties_disagree += acc->ties_disagree;
    if (has_merged) {
        s->sign_flips += acc->sign_flips;
        s->merged_delta_sq += lanes_total(&acc->merged_sq);
    } else {
        s->has_merged = 0;
    }
}

int stats_accumulate(struct stats_raw *s, const float *base, const float *const *models,
                     int n_models, const float *merged, uint64_t n,
                     const double *density, const double *weight,
                     struct merge_scratch *scratch)
{
    if (n_models < 0 || n_models > MERGE_MAX_MODELS)
        return lm_err(LM_EINVAL, "stats: %d models (at most %d)", n_models, MERGE_MAX_MODELS);
    if (n_models != s->n_models)
        return lm_err(LM_EINVAL, "stats: %d models given to an accumulator prepared for %d",
                      n_models, s->n_models);
    LM_ASSERT(n == 0 || base);
    const int m = n_models;

    struct trim_state trim[MERGE_MAX_MODELS];
    for (int i = 0; i < m; i++)
        LM_ASSERT(n == 0 || models[i]);
    const struct trim_src src = { .base = base, .models = models };
    int rc = trims_prepare(trim, &src, m, n, density, scratch);
    if (rc)
        return rc;
    static const struct stats_acc zero_acc;
    struct stats_acc acc = zero_acc;
    rc = acc_run(&acc, trim, base, models, m, merged, n, weight, scratch);
    if (rc)
        return rc;
    acc_add(s, &acc, m, n, merged != NULL);
    return 0;
}

/* ===== One tensor, block by block (stats_stream_*) ===== */

struct stats_stream {
    int m;
    uint64_t n, seen;
    bool merged_all;
    struct trim_state trim[MERGE_MAX_MODELS];
    struct stats_acc acc;
    double weight[MERGE_MAX_MODELS];
    struct merge_scratch *scratch;
};

int stats_stream_begin(struct stats_stream **out, int n_models, uint64_t n, const double *density,
                       const double *weight, const bool *has_cut, const struct topk_cut *cuts,
                       merge_read_fn read, void *ud, struct merge_scratch *scratch)
{
    *out = NULL;
    if (n_models < 0 || n_models > MERGE_MAX_MODELS)
        return lm_err(LM_EINVAL, "stats: %d models (at most %d)", n_models, MERGE_MAX_MODELS);
    struct stats_stream *st = lm_calloc(1, sizeof(*st));
    if (!st)
        return LM_ENOMEM;
    st->m = n_models;
    st->n = n;
    st->merged_all = true;
    st->scratch = scratch;
    for (int i = 0; i < n_models; i++)
        st->weight[i] = weight[i];
    const struct trim_src src = { .read = read, .ud = ud, .has_cut = has_cut, .cuts = cuts };
    int rc = trims_prepare(st->trim, &src, n_models, n, density, scratch);
    if (rc) {
        free(st);
        return rc;
    }
    *out = st;
    return 0;
}

int stats_stream_block(struct stats_stream *st, const float *base, const float *const *models,
                       const float *merged, size_t len)
{
    LM_ASSERT(st->seen + len <= st->n && (len % 8 == 0 || st->seen + len == st->n));
    if (!merged)
        st->merged_all = false;
    st->seen += len;
    if (len == 0)
        return 0;
    return acc_run(&st->acc, st->trim, base, models, st->m, merged, len, st->weight, st->scratch);
}

int stats_stream_end(struct stats_stream *st, struct stats_raw *s)
{
    if (!st)
        return 0;
    int rc = 0;
    if (s->n_models != st->m)
        rc = lm_err(LM_EINVAL, "stats: %d models given to an accumulator prepared for %d",
                    st->m, s->n_models);
    else if (st->seen != st->n)
        rc = lm_err(LM_EINVAL, "stats: %llu of %llu entries given", (unsigned long long)st->seen,
                    (unsigned long long)st->n);
    if (!rc)
        acc_add(s, &st->acc, st->m, st->n, st->merged_all);
    free(st);
    return rc;
}

/* ===== Derived figures ===== */

/* num / den for counts and energies, 0 when den is 0. */
static double ratio_or_zero(double num, double den)
{
    return den != 0.0 ? num / den : 0.0;
}

/* sqrt(num_sq / den_sq): 0 when both are 0, +inf when only den_sq is. */
static double rel_norm(double num_sq, double den_sq)
{
    if (den_sq == 0.0)
        return num_sq == 0.0 ? 0.0 : INFINITY;
    return sqrt(num_sq / den_sq);
}

static void check_model(const struct stats_raw *s, int i)
{
    LM_ASSERT(i >= 0 && i < s->n_models);
}

double stats_norm(const struct stats_raw *s, int i)
{
    check_model(s, i);
    return sqrt(s->delta_sq[i]);
}

double stats_rel(const struct stats_raw *s, int i)
{
    check_model(s, i);
    return rel_norm(s->delta_sq[i], s->base_sq);
}

double stats_cos(const struct stats_raw *s, int i, int j)
{
    check_model(s, i);
    check_model(s, j);
    if (i == j)
        return s->delta_sq[i] > 0.0 ? 1.0 : 0.0;
    if (i > j) {
        int t = i;
        i = j;
        j = t;
    }
    double den = sqrt(s->delta_sq[i]) * sqrt(s->delta_sq[j]);
    if (den == 0.0)
        return 0.0;
    double c = s->dot[i][j] / den;
    /* Rounding can push |c| a hair past 1. */
    return c > 1.0 ? 1.0 : (c < -1.0 ? -1.0 : c);
}

double stats_conflict(const struct stats_raw *s, int i, int j)
{
    check_model(s, i);
    check_model(s, j);
    if (i == j)
        return 0.0;
    if (i > j) {
        int t = i;
        i = j;
        j = t;
    }
    return ratio_or_zero((double)s->opposite[i][j], (double)s->both_nonzero[i][j]);
}

double stats_ties_conflict(const struct stats_raw *s)
{
    return ratio_or_zero((double)s->ties_disagree, (double)s->ties_kept);
}

double stats_topk_energy(const struct stats_raw *s, int i)
{
    check_model(s, i);
    return ratio_or_zero(s->topk_sq[i], s->delta_sq[i]);
}

double stats_sign_flip(const struct stats_raw *s)
{
    if (!s->has_merged)
        return NAN;
    return ratio_or_zero((double)s->sign_flips, (double)s->n_elements);
}

double stats_merged_rel(const struct stats_raw *s)
{
    if (!s->has_merged)
        return NAN;
    return rel_norm(s->merged_delta_sq, s->base_sq);
}
