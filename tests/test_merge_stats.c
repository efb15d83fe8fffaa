/* Task-vector statistics: small cases worked by hand, aggregation by adding
 * raw sums, the zero-denominator conventions, and a random cross-check
 * against a naive double-precision reimplementation written here. */
#include "stats.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lm_error.h"
#include "test.h"

static uint64_t rng_state = 0x6a09e667f3bcc909u;

static uint64_t rng_next(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1du;
}

/* A small integer in [-r, r]: sums of products of these are exact in double. */
static float small_int(int r)
{
    return (float)((int)(rng_next() % (uint64_t)(2 * r + 1)) - r);
}

static struct merge_scratch scratch;

static struct stats_raw run(const float *b, const float *const *x, int m, const float *merged,
                            uint64_t n, const double *density, const double *weight)
{
    struct stats_raw s;
    stats_raw_init(&s, m);
    int rc = stats_accumulate(&s, b, x, m, merged, n, density, weight, &scratch);
    if (rc)
        printf("      stats_accumulate failed: %s\n", lm_last_error());
    return s;
}

/* ---- the worked example ----
 * b  = [1, 2, 3, 4], x1 = [2, 2, 1, 4], x2 = [0, 3, 4, 4]
 * d1 = [1, 0, -2, 0], d2 = [-1, 1, 1, 0]
 * ||b||^2 = 30, ||d1||^2 = 5, ||d2||^2 = 3, <d1, d2> = -1 - 2 = -3
 * norm1 = sqrt 5, norm2 = sqrt 3, rel1 = sqrt(5/30), rel2 = sqrt(3/30)
 * cos = -3 / sqrt 15; both non-zero at {0, 2}, opposite at both: conflict 1.
 *
 * TIES, density 0.5 (k = int(0.5 * 4) = 2), weights [1, 1]:
 *   |d1| = [1, 0, 2, 0] -> keeps {2, 0}: t1 = [1, 0, -2, 0], energy 5/5 = 1
 *   |d2| = [1, 1, 1, 0] -> three tie at 1, lower indices win: keeps {0, 1}:
 *          t2 = [-1, 1, 0, 0], energy 2/3
 *   sums: e0 1 - 1 = 0 -> +, e1 0 + 1 -> +, e2 -2 + 0 -> -, e3 0 -> +
 *   kept (trimmed non-zero): (1,e0) + agrees, (1,e2) - agrees,
 *                            (2,e0) - disagrees, (2,e1) + agrees
 *   ties_conflict = 1/4.
 * Weights [1, -1] (model 2's sign flips): e0 1 + 1 -> +, model 2's sign is
 *   sign(-1 * -1) = + (agrees); e1 -1 -> -, model 2 sign(-1 * 1) = - agrees;
 *   e2 -2 -> -, model 1 agrees: ties_conflict = 0/4 = 0.
 * Density 0.75 (k = 3), weights [1, 1]: t1 = [1, 0, -2, 0] (the third kept
 *   entry is the zero at index 1, which does not count), t2 = [-1, 1, 1, 0];
 *   e0 0 -> +: model 1 agrees, model 2 disagrees; e1 1 -> +: agrees;
 *   e2 -2 + 1 = -1 -> -: model 1 agrees, model 2 disagrees: 2/5.
 * Merged m = [1, -2, 0, 5]: sign(b) = [+,+,+,+], sign(m) = [+,-,0,+]:
 *   2 flips of 4 = 0.5; ||m - b||^2 = 0 + 16 + 9 + 1 = 26: merged_rel =
 *   sqrt(26/30). */
static void test_worked_example(void)
{
    const float b[4] = { 1, 2, 3, 4 }, x1[4] = { 2, 2, 1, 4 }, x2[4] = { 0, 3, 4, 4 };
    const float merged[4] = { 1, -2, 0, 5 };
    const float *x[2] = { x1, x2 };
    const double dens[2] = { 0.5, 0.5 }, w11[2] = { 1, 1 }, w1m[2] = { 1, -1 };

    struct stats_raw s = run(b, x, 2, merged, 4, dens, w11);
    TEST_COND("example: 4 elements, 2 models", s.n_elements == 4 && s.n_models == 2);
    TEST_NEAR("example: norm1 = sqrt 5", stats_norm(&s, 0), sqrt(5.0), 1e-15);
    TEST_NEAR("example: norm2 = sqrt 3", stats_norm(&s, 1), sqrt(3.0), 1e-15);
    TEST_NEAR("example: rel1 = sqrt(5/30)", stats_rel(&s, 0), sqrt(5.0 / 30.0), 1e-15);
    TEST_NEAR("example: rel2 = sqrt(3/30)", stats_rel(&s, 1), sqrt(3.0 / 30.0), 1e-15);
    TEST_NEAR("example: cos = -3/sqrt 15", stats_cos(&s, 0, 1), -3.0 / sqrt(15.0), 1e-15);
    TEST_NEAR("example: cos is symmetric", stats_cos(&s, 1, 0), -3.0 / sqrt(15.0), 1e-15);
    TEST_COND("example: cos(i, i) = 1", stats_cos(&s, 0, 0) == 1.0);
    TEST_COND("example: both non-zero 2, opposite 2, conflict 1",
              s.both_nonzero[0][1] == 2 && s.opposite[0][1] == 2 && stats_conflict(&s, 0, 1) == 1.0 &&
              stats_conflict(&s, 1, 0) == 1.0);
    TEST_COND("example: density 0.5, weights [1,1]: 4 kept, 1 disagrees, ties_conflict 0.25",
              s.ties_kept == 4 && s.ties_disagree == 1 && stats_ties_conflict(&s) == 0.25);
    TEST_COND("example: topk_energy1 = 1 (5 of 5)", stats_topk_energy(&s, 0) == 1.0);
    TEST_NEAR("example: topk_energy2 = 2/3 (ties by lower index)", stats_topk_energy(&s, 1), 2.0 / 3.0, 1e-15);
    TEST_COND("example: sign_flip = 0.5", stats_sign_flip(&s) == 0.5);
    TEST_NEAR("example: merged_rel = sqrt(26/30)", stats_merged_rel(&s), sqrt(26.0 / 30.0), 1e-15);

    s = run(b, x, 2, NULL, 4, dens, w1m);
    TEST_COND("example: weights [1,-1] flip model 2's signs: ties_conflict 0",
              s.ties_kept == 4 && s.ties_disagree == 0 && stats_ties_conflict(&s) == 0.0);
    TEST_COND("example: no merged tensor: sign_flip and merged_rel are NaN",
              isnan(stats_sign_flip(&s)) && isnan(stats_merged_rel(&s)) && !s.has_merged);

    const double d75[2] = { 0.75, 0.75 };
    s = run(b, x, 2, NULL, 4, d75, w11);
    TEST_COND("example: density 0.75: 5 kept, 2 disagree, ties_conflict 0.4",
              s.ties_kept == 5 && s.ties_disagree == 2 && stats_ties_conflict(&s) == 0.4);

    const double d1[2] = { 1, 1 }, d0[2] = { 0, 0 };
    s = run(b, x, 2, NULL, 4, d1, w11);
    TEST_COND("example: density 1: both topk_energy 1, same TIES figures as 0.75",
              stats_topk_energy(&s, 0) == 1.0 && stats_topk_energy(&s, 1) == 1.0 &&
              s.ties_kept == 5 && s.ties_disagree == 2);
    s = run(b, x, 2, NULL, 4, d0, w11);
    TEST_COND("example: density 0: nothing kept, ties_conflict 0, topk_energy 0",
              s.ties_kept == 0 && stats_ties_conflict(&s) == 0.0 && stats_topk_energy(&s, 0) == 0.0);

    /* Per-model densities: model 1 at 0.25 keeps only index 2. */
    const double dmix[2] = { 0.25, 1 };
    s = run(b, x, 2, NULL, 4, dmix, w11);
    /* t1 = [0,0,-2,0], t2 = [-1,1,1,0]: e0 -1 -> - (model 2 agrees),
     * e1 1 -> + agrees, e2 -1 -> -: model 1 agrees, model 2 disagrees. */
    TEST_COND("example: densities [0.25, 1]: 4 kept, 1 disagrees; energy1 = 4/5",
              s.ties_kept == 4 && s.ties_disagree == 1 && stats_topk_energy(&s, 0) == 4.0 / 5.0);
}

static void test_single_model(void)
{
    /* d = [3, -1, 0.5, 2, -4]; density 0.4 -> k = 2 keeps 4 and 3:
     * energy (16 + 9) / (9 + 1 + 0.25 + 4 + 16) = 25 / 30.25. */
    const float b[5] = { 1, 1, -1, 0, 2 };
    const float x1[5] = { 4, 0, -0.5f, 2, -2 };
    const float merged[5] = { 1, -1, -1, 0, 0 }; /* signs + - - 0 0 vs b + + - 0 + */
    const float *x[1] = { x1 };
    const double dens[1] = { 0.4 }, w[1] = { 1 };
    struct stats_raw s = run(b, x, 1, merged, 5, dens, w);
    TEST_NEAR("one model: topk_energy at density 0.4 = 25/30.25", stats_topk_energy(&s, 0), 25.0 / 30.25, 1e-15);
    /* One model: the elected sign is its own wherever it is kept. */
    TEST_COND("one model: ties_conflict 0 (2 kept)", s.ties_kept == 2 && stats_ties_conflict(&s) == 0.0);
    TEST_COND("one model: sign_flip 2/5 (+ vs -, + vs 0)", stats_sign_flip(&s) == 2.0 / 5.0);
    /* m - b = [0, -2, 0, 0, -2]: 8; ||b||^2 = 1 + 1 + 1 + 0 + 4 = 7 */
    TEST_NEAR("one model: merged_rel = sqrt(8/7)", stats_merged_rel(&s), sqrt(8.0 / 7.0), 1e-15);
    /* A negative weight: the elected sign is the flipped one, so still agreeing. */
    const double wn[1] = { -2 };
    s = run(b, x, 1, NULL, 5, dens, wn);
    TEST_COND("one model, weight -2: still no disagreement", s.ties_kept == 2 && s.ties_disagree == 0);
    /* A zero weight: sign(0 * d) = 0 disagrees with the elected +. */
    const double wz[1] = { 0 };
    s = run(b, x, 1, NULL, 5, dens, wz);
    TEST_COND("one model, weight 0: every kept entry disagrees (documented)",
              s.ties_kept == 2 && s.ties_disagree == 2);
}

static void test_zero_conventions(void)
{
    const float b[3] = { 0, 0, 0 }, x1[3] = { 0, 0, 0 }, x2[3] = { 1, -1, 0 };
    const float *x[2] = { x1, x2 };
    const double dens[2] = { 0.5, 0.5 }, w[2] = { 1, 1 };
    struct stats_raw s = run(b, x, 2, b, 3, dens, w);
    TEST_COND("zero delta: cos 0, conflict 0, topk_energy 0",
              stats_cos(&s, 0, 1) == 0.0 && stats_conflict(&s, 0, 1) == 0.0 &&
              stats_topk_energy(&s, 0) == 0.0 && stats_cos(&s, 0, 0) == 0.0);
    TEST_COND("zero base: rel 0 for a zero delta, +inf for a non-zero one",
              stats_rel(&s, 0) == 0.0 && isinf(stats_rel(&s, 1)) && stats_merged_rel(&s) == 0.0);
    TEST_COND("zero base, merged = base: sign_flip 0", stats_sign_flip(&s) == 0.0);

    struct stats_raw e;
    stats_raw_init(&e, 2);
    TEST_COND("empty accumulator: every ratio 0, sign_flip 0 (not unknown)",
              stats_norm(&e, 0) == 0.0 && stats_ties_conflict(&e) == 0.0 && stats_sign_flip(&e) == 0.0);

    /* NaN in a task vector: never kept, sign 0. */
    const float bn[4] = { 0, 0, 0, 0 }, xn[4] = { NAN, 3, -1, 2 };
    const float *xx[1] = { xn };
    const double dn[1] = { 0.5 }, wn[1] = { 1 };
    s = run(bn, xx, 1, NULL, 4, dn, wn);
    TEST_COND("a NaN entry is never kept by the trim (keeps 3 and 2)",
              s.ties_kept == 2 && s.topk_sq[0] == 13.0);

    int rc = stats_accumulate(&e, bn, xx, 1, NULL, 4, dn, wn, &scratch);
    TEST_COND("model count differing from stats_raw_init is LM_EINVAL", rc == LM_EINVAL);
}

/* ---- naive reference ---- */

struct ref_stats {
    double base_sq, delta_sq[4], topk_sq[4], dot[4][4], merged_sq;
    uint64_t both[4][4], opp[4][4], kept, disagree, flips;
};

static const float *ref_d;

static int ref_cmp(const void *pa, const void *pb)
{
    uint64_t a = *(const uint64_t *)pa, b = *(const uint64_t *)pb;
    float fa = fabsf(ref_d[a]), fb = fabsf(ref_d[b]);
    if (isnan(fa) != isnan(fb))
        return isnan(fa) ? 1 : -1;
    if (!isnan(fa) && fa != fb)
        return fa > fb ? -1 : 1;
    return a < b ? -1 : 1;
}

static int sgn(double v) { return (v > 0) - (v < 0); }

static void reference(struct ref_stats *r, const float *b, const float *const *x, int m,
                      const float *merged, uint64_t n, const double *density, const double *weight)
{
    memset(r, 0, sizeof *r);
    uint8_t *keep[4];
    float *d = malloc(n * sizeof *d);
    uint64_t *idx = malloc(n * sizeof *idx);
    for (int i = 0; i < m; i++) {
        keep[i] = calloc(n, 1);
        for (uint64_t e = 0; e < n; e++) {
            d[e] = x[i][e] - b[e];
            idx[e] = e;
        }
        ref_d = d;
        qsort(idx, n, sizeof *idx, ref_cmp);
        uint64_t k = (uint64_t)(density[i] * (double)n);
        for (uint64_t t = 0; t < k && t < n; t++)
            if (!isnan(d[idx[t]]))
                keep[i][idx[t]] = 1;
    }
    for (uint64_t e = 0; e < n; e++) {
        double be = b[e], dd[4], sum = 0;
        r->base_sq += be * be;
        for (int i = 0; i < m; i++) {
            dd[i] = (double)x[i][e] - be;
            r->delta_sq[i] += dd[i] * dd[i];
            if (keep[i][e]) {
                r->topk_sq[i] += dd[i] * dd[i];
                sum += weight[i] * dd[i];
            }
        }
        int elected = sum >= 0 ? 1 : -1;
        for (int i = 0; i < m; i++) {
            if (keep[i][e] && dd[i] != 0) {
                r->kept++;
                r->disagree += sgn(weight[i] * dd[i]) != elected;
            }
            for (int j = i + 1; j < m; j++) {
                r->dot[i][j] += dd[i] * dd[j];
                if (dd[i] != 0 && dd[j] != 0) {
                    r->both[i][j]++;
                    r->opp[i][j] += sgn(dd[i]) != sgn(dd[j]);
                }
            }
        }
        if (merged) {
            r->flips += sgn(be) != sgn(merged[e]);
            r->merged_sq += ((double)merged[e] - be) * ((double)merged[e] - be);
        }
    }
    for (int i = 0; i < m; i++)
        free(keep[i]);
    free(d);
    free(idx);
}

static int near_rel(double a, double b)
{
    return fabs(a - b) <= 1e-12 * fmax(fabs(a), fabs(b)) + 1e-300;
}

static int same_as_reference(const struct stats_raw *s, const struct ref_stats *r, int m)
{
    int ok = near_rel(s->base_sq, r->base_sq) && s->ties_kept == r->kept &&
             s->ties_disagree == r->disagree && s->sign_flips == r->flips &&
             near_rel(s->merged_delta_sq, r->merged_sq);
    for (int i = 0; i < m; i++) {
        ok &= near_rel(s->delta_sq[i], r->delta_sq[i]) && near_rel(s->topk_sq[i], r->topk_sq[i]);
        for (int j = i + 1; j < m; j++)
            ok &= near_rel(s->dot[i][j], r->dot[i][j]) && s->both_nonzero[i][j] == r->both[i][j] &&
                  s->opposite[i][j] == r->opp[i][j];
    }
    return ok;
}

static void test_random_reference(void)
{
    const uint64_t n = 20011;
    const int m = 3;
    float *b = malloc(n * sizeof *b), *mg = malloc(n * sizeof *mg), *xs[3];
    for (int i = 0; i < m; i++)
        xs[i] = malloc(n * sizeof *xs[i]);
    int ok = 1, same = 1;
    for (int rep = 0; rep < 6; rep++) {
        for (uint64_t e = 0; e < n; e++) {
            /* bf16-like values with many exact ties and unchanged entries */
            b[e] = (float)((double)small_int(50) / 64.0);
            for (int i = 0; i < m; i++) {
                uint64_t r = rng_next() % 4;
                xs[i][e] = r == 0 ? b[e] : b[e] + (rep & 1 ? small_int(8) / 16.0f
                                                            : (float)((double)(rng_next() % 100000) * 1e-6 - 0.05));
            }
            mg[e] = rng_next() % 5 == 0 ? 0.0f : b[e] + small_int(3) / 8.0f;
        }
        if (rep == 5)
            xs[1][17] = NAN;
        const double dens[3] = { rep * 0.2, 0.3, 1.0 - rep * 0.1 };
        const double wt[3] = { 1.0, rep == 2 ? -0.5 : 0.7, 1.3 };
        const float *const xc[3] = { xs[0], xs[1], xs[2] };
        struct stats_raw s = run(b, xc, m, mg, n, dens, wt);
        struct ref_stats r;
        reference(&r, b, xc, m, mg, n, dens, wt);
        int this_ok = rep == 5 ? s.ties_kept == r.kept && s.ties_disagree == r.disagree &&
                                 s.topk_sq[1] == r.topk_sq[1] && isnan(s.delta_sq[1])
                               : same_as_reference(&s, &r, m);
        if (!this_ok)
            printf("      mismatch in repetition %d\n", rep);
        ok &= this_ok;
        struct stats_raw again = run(b, xc, m, mg, n, dens, wt);
        same &= memcmp(&s, &again, sizeof s) == 0;
    }
    TEST_COND("3 models x 20011 entries x 6 draws (densities 0..1, negative weight, a NaN) "
              "match the naive reference", ok);
    TEST_COND("repeated calls give identical bits", same);
    free(b);
    free(mg);
    for (int i = 0; i < m; i++)
        free(xs[i]);
}

/* Adding the raw sums of two halves equals one pass over the whole tensor
 * (integer data keeps every double sum exact; density 1 and 0 make the
 * top-k figures additive too). */
static void test_aggregation(void)
{
    const uint64_t n = 5003, cut = 2001;
    float *b = malloc(n * sizeof *b), *x1 = malloc(n * sizeof *x1), *x2 = malloc(n * sizeof *x2);
    float *mg = malloc(n * sizeof *mg);
    for (uint64_t e = 0; e < n; e++) {
        b[e] = small_int(5);
        x1[e] = b[e] + small_int(3);
        x2[e] = b[e] + small_int(2);
        mg[e] = small_int(4);
    }
    const double dens[2] = { 1.0, 0.0 }, w[2] = { 0.5, 2.0 };
    const float *whole[2] = { x1, x2 }, *tail[2] = { x1 + cut, x2 + cut };
    struct stats_raw all = run(b, whole, 2, mg, n, dens, w);
    struct stats_raw sum, part;
    stats_raw_init(&sum, 2);
    part = run(b, whole, 2, mg, cut, dens, w);
    stats_raw_add(&sum, &part);
    part = run(b + cut, tail, 2, mg + cut, n - cut, dens, w);
    stats_raw_add(&sum, &part);
    TEST_COND("stats_raw_add of two halves equals the whole tensor, field by field",
              memcmp(&sum, &all, sizeof sum) == 0);
    TEST_COND("aggregated sign_flip and merged_rel stay known", sum.has_merged == 1 &&
              !isnan(stats_sign_flip(&sum)) && stats_merged_rel(&sum) == stats_merged_rel(&all));

    part = run(b, whole, 2, NULL, cut, dens, w);
    stats_raw_add(&sum, &part);
    TEST_COND("adding a tensor without a merged one makes them unknown",
              !sum.has_merged && isnan(stats_sign_flip(&sum)));
    free(b);
    free(x1);
    free(x2);
    free(mg);
}

/* ---- the AVX2 and portable kernels agree ---- */

static float bits_f(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Mostly bf16-like values (ties galore) with zeros of both signs,
 * infinities, NaNs, subnormals and huge values mixed in when `special`. */
static float path_value(float scale, int special)
{
    uint64_t r = rng_next();
    uint32_t sign = (uint32_t)(r >> 63) << 31;
    if (special && (r >> 20) % 1000 < 20) {
        switch ((r >> 8) % 6) {
        case 0: return bits_f(sign);
        case 1: return bits_f(sign | 0x7f800000u);
        case 2: return bits_f(sign | 0x7fc00000u | (uint32_t)((r >> 30) & 0x3fffffu));
        case 3: return bits_f(sign | (uint32_t)((r >> 30) & 0x7fffffu));
        case 4: return bits_f(sign | 0x7f000000u | (uint32_t)((r >> 30) & 0x7fffffu));
        default: return bits_f(sign | 0x3f800000u);
        }
    }
    float v = scale * (float)((int)((r >> 24) % 201) - 100) / 100.0f;
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    return bits_f(u & 0xffff0000u);
}

/* Field by field: integers equal, doubles equal bit for bit or both NaN
 * (the payload of a NaN sum may differ, as stats.c says). */
static int same_dbl(double a, double b)
{
    return memcmp(&a, &b, sizeof a) == 0 || (isnan(a) && isnan(b));
}

static int same_raw(const struct stats_raw *a, const struct stats_raw *b)
{
    int ok = a->n_models == b->n_models && a->n_elements == b->n_elements &&
             same_dbl(a->base_sq, b->base_sq) && a->ties_kept == b->ties_kept &&
             a->ties_disagree == b->ties_disagree && a->sign_flips == b->sign_flips &&
             same_dbl(a->merged_delta_sq, b->merged_delta_sq) && a->has_merged == b->has_merged;
    for (int i = 0; i < a->n_models; i++) {
        ok &= same_dbl(a->delta_sq[i], b->delta_sq[i]) && same_dbl(a->topk_sq[i], b->topk_sq[i]);
        for (int j = i + 1; j < a->n_models; j++)
            ok &= same_dbl(a->dot[i][j], b->dot[i][j]) && a->both_nonzero[i][j] == b->both_nonzero[i][j] &&
                  a->opposite[i][j] == b->opposite[i][j];
    }
    return ok;
}

static void test_paths_agree(void)
{
    enum { NMAX = 70001, MMAX = 5 };
    static const uint64_t sizes[] = { 1, 5, 8, 1029, 3001, NMAX };
    static const int counts[] = { 0, 1, 2, 3, 5 };
    float *b = malloc(NMAX * sizeof *b), *mg = malloc(NMAX * sizeof *mg), *x[MMAX];
    for (int i = 0; i < MMAX; i++)
        x[i] = malloc(NMAX * sizeof *x[i]);
    printf("      kernel path on this machine: %s\n", merge_simd_name());
    int ok = 1, runs = 0;
    for (int special = 0; special < 2; special++) {
        for (uint64_t e = 0; e < NMAX; e++) {
            b[e] = path_value(0.05f, special);
            mg[e] = path_value(0.05f, special);
            for (int i = 0; i < MMAX; i++) {
                float v = b[e] + path_value(0.004f * (float)(i + 1), special);
                uint32_t u;
                memcpy(&u, &v, sizeof u);
                x[i][e] = e % 5 == 0 ? b[e] : bits_f(u & 0xffff0000u);
            }
        }
        for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
            for (size_t ci = 0; ci < sizeof counts / sizeof counts[0]; ci++) {
                const int m = counts[ci];
                for (int variant = 0; variant < 3; variant++) {
                    double dens[MMAX], w[MMAX];
                    for (int i = 0; i < m; i++) {
                        dens[i] = variant == 1 ? (i == 0 ? 0.0 : (i == 1 ? 1.0 : 0.35)) : 0.2 + 0.1 * i;
                        w[i] = variant == 2 ? (i == 1 ? -0.5 : (i == 0 ? 0.0 : 1.25)) : 0.6 + 0.3 * i;
                    }
                    const float *merged = variant == 1 ? NULL : mg;
                    int old = merge_simd_force_portable(1);
                    struct stats_raw sp = run(b, (const float *const *)x, m, merged, sizes[si], dens, w);
                    merge_simd_force_portable(0);
                    /* the AVX2 path, then the widest the CPU has */
                    for (int widest = 0; widest < 2; widest++) {
                        int old_avx2 = merge_simd_force_avx2(!widest);
                        struct stats_raw sv = run(b, (const float *const *)x, m, merged, sizes[si], dens, w);
                        if (!same_raw(&sp, &sv)) {
                            printf("      differ: %d models, n %llu, variant %d, special %d, %s\n", m,
                                   (unsigned long long)sizes[si], variant, special, merge_simd_name());
                            ok = 0;
                        }
                        merge_simd_force_avx2(old_avx2);
                    }
                    merge_simd_force_portable(old);
                    runs++;
                }
            }
        }
    }
    char descr[200];
    snprintf(descr, sizeof descr, "AVX-512, AVX2 and portable kernels give the same raw sums and counts "
             "(%d runs: NaN/inf/zeros/ties, 0-5 models, with and without merged, sizes 1..70001)", runs);
    TEST_COND(descr, ok);
    free(b);
    free(mg);
    for (int i = 0; i < MMAX; i++)
        free(x[i]);
}

int main(void)
{
    test_worked_example();
    test_single_model();
    test_zero_conventions();
    test_aggregation();
    test_random_reference();
    test_paths_agree();
    merge_scratch_deinit(&scratch);
    return test_report();
}
