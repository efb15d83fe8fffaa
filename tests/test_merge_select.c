/* Top-k selection against a sort-based reference: random arrays full of
 * duplicate magnitudes, signed zeros, infinities and NaNs, every size class
 * and density, on both the 32-bit-counter path and the 64-bit-counter path
 * (which the library only takes from 2^32 entries on; the test lowers
 * that bound through select.h's test knobs), plus hand cases and a timing line. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lm_error.h"
#include "merge_method.h"
#include "select.h"
#include "test.h"

static uint64_t rng_state = 0x9e3779b97f4a7c15u;

static uint64_t rng_next(void)
{
    /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1du;
}

static float bits_float(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static uint32_t float_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* A value drawn so that magnitudes repeat often and the special values
 * appear: a small pool of magnitudes with either sign, zeros of both signs,
 * infinities, NaNs with various payloads and signs, subnormals, and arbitrary
 * finite floats. */
static float random_value(void)
{
    static const float pool[] = { 1.0f, 0.5f, 0.25f, 3.0f, 1e-3f, 7.5f, 2.0f, 1e-30f };
    uint64_t r = rng_next();
    uint32_t sign = (uint32_t)(r >> 63) << 31;
    switch ((r >> 8) % 16) {
    case 0: return bits_float(sign);                         /* +-0 */
    case 1: return bits_float(sign | 0x7f800000u);           /* +-inf */
    case 2: return bits_float(sign | 0x7f800000u | (uint32_t)(1 + (r >> 20) % 0x7fffffu)); /* NaN */
    case 3: return bits_float(sign | (uint32_t)((r >> 20) % 0x7fffffu)); /* subnormal */
    case 4: case 5: case 6: {                                  /* any non-NaN */
        uint32_t u = (uint32_t)(r >> 24) & 0x7fffffffu;
        if (u > 0x7f800000u)
            u = 0x3f800000u;
        return bits_float(sign | u);
    }
    default: return bits_float(sign | float_bits(pool[(r >> 16) % LM_ARRAY_SIZE(pool)]));
    }
}

/* Reference: indices stably sorted by |x| descending (ties: lower index
 * first), NaNs last; the first min(k, non-NaN count) are kept. */
static const float *ref_x;

static int ref_cmp(const void *pa, const void *pb)
{
    uint64_t a = *(const uint64_t *)pa, b = *(const uint64_t *)pb;
    float fa = fabsf(ref_x[a]), fb = fabsf(ref_x[b]);
    int na = isnan(fa), nb = isnan(fb);
    if (na != nb)
        return na - nb;
    if (!na && fa != fb)
        return fa > fb ? -1 : 1;
    return a < b ? -1 : (a > b ? 1 : 0);
}

static void ref_mask(uint8_t *mask, const float *x, uint64_t n, uint64_t k)
{
    uint64_t *idx = malloc((n ? n : 1) * sizeof *idx);
    for (uint64_t e = 0; e < n; e++)
        idx[e] = e;
    ref_x = x;
    qsort(idx, n, sizeof *idx, ref_cmp);
    memset(mask, 0, n);
    for (uint64_t r = 0; r < k && r < n; r++)
        if (!isnan(x[idx[r]]))
            mask[idx[r]] = 1;
    free(idx);
}

/* Checks one array at one density against the reference; returns 1 when
 * everything matched. */
static int check_one(const float *x, uint64_t n, double density)
{
    uint64_t k = topk_count(density, n);
    uint8_t *want = malloc(n + 1), *got = malloc(n + 1);
    float *out = malloc((n + 1) * sizeof *out), *inplace = malloc((n + 1) * sizeof *inplace);
    ref_mask(want, x, n, k);
    uint64_t want_k = 0, nans = 0;
    for (uint64_t e = 0; e < n; e++) {
        want_k += want[e];
        nans += isnan(x[e]) != 0;
    }

    struct topk_cut cut = topk_find(x, n, k);
    topk_mask(got, x, n, &cut);
    topk_apply(out, x, n, &cut);
    if (n > 0)
        memcpy(inplace, x, n * sizeof *x);
    topk_apply(inplace, inplace, n, &cut);

    int ok = cut.k == want_k && cut.keep_all == (k == n && nans == 0);
    for (uint64_t e = 0; e < n && ok; e++) {
        uint32_t expect = want[e] ? float_bits(x[e]) : 0u;
        ok = got[e] == want[e] && float_bits(out[e]) == expect && float_bits(inplace[e]) == expect;
    }
    /* The cut itself describes the kept set: count kept by its definition. */
    if (ok && !cut.keep_all) {
        uint64_t above = 0, at = 0;
        for (uint64_t e = 0; e < n; e++) {
            float a = fabsf(x[e]);
            above += a > cut.threshold;
            at += a == cut.threshold;
        }
        ok = above + cut.keep_at_threshold == cut.k && cut.keep_at_threshold <= at;
    }
    if (!ok)
        printf("      mismatch: n %llu density %g k %llu cut.k %llu thr %g at %llu\n",
               (unsigned long long)n, density, (unsigned long long)k,
               (unsigned long long)cut.k, (double)cut.threshold,
               (unsigned long long)cut.keep_at_threshold);
    free(want);
    free(got);
    free(out);
    free(inplace);
    return ok;
}

static void test_random(const char *path_name)
{
    static const uint64_t sizes[] = { 0, 1, 7, 1000, 100003 };
    static const double densities[] = { 0.0, 0.2, 0.5, 1.0 };
    for (size_t si = 0; si < LM_ARRAY_SIZE(sizes); si++) {
        uint64_t n = sizes[si];
        int ok = 1;
        for (int rep = 0; rep < (n < 1000 ? 50 : 2); rep++) {
            float *x = malloc((n + 1) * sizeof *x);
            for (uint64_t e = 0; e < n; e++)
                x[e] = random_value();
            /* Second repetition of the big sizes: no NaN at all. */
            if (rep == 1)
                for (uint64_t e = 0; e < n; e++)
                    if (isnan(x[e]))
                        x[e] = -0.0f;
            for (size_t di = 0; di < LM_ARRAY_SIZE(densities); di++)
                ok &= check_one(x, n, densities[di]);
            free(x);
        }
        char descr[128];
        snprintf(descr, sizeof descr, "%s path: n = %llu, densities 0/0.2/0.5/1 match the sorted reference",
                 path_name, (unsigned long long)n);
        TEST_COND(descr, ok);
    }
}


/* ===== topk_find_diff and the block walk ===== */

static int cuts_equal(struct topk_cut a, struct topk_cut b)
{
    return a.k == b.k && float_bits(a.threshold) == float_bits(b.threshold) &&
           a.keep_at_threshold == b.keep_at_threshold && a.keep_all == b.keep_all;
}

/* A bf16-like value: few distinct magnitudes near `scale`, so that the
 * difference of two of them ties often, as real task vectors do. */
static float bf16_like(float scale)
{
    float v = scale * (float)((int)(rng_next() % 2001) - 1000) / 1000.0f;
    uint32_t u = float_bits(v) & 0xffff0000u;
    return bits_float(u);
}

/* topk_find_diff against topk_find on the materialised difference, with and
 * without work space, on both kernel paths; and the walk against
 * topk_mask. Returns 1 when everything matched. */
static int check_diff(const float *x, const float *b, uint64_t n, uint64_t k, uint32_t *work,
                      size_t work_len, const char *what)
{
    float *d = malloc((n + 1) * sizeof *d);
    for (uint64_t e = 0; e < n; e++)
        d[e] = b ? x[e] - b[e] : x[e];
    struct topk_cut want = topk_find(d, n, k);
    int ok = 1;
    for (int simd = 0; simd < 2; simd++) {
        int old = merge_simd_force_portable(simd == 0);
        struct topk_cut with_work = topk_find_diff(x, b, n, k, work, work_len);
        struct topk_cut without = topk_find_diff(x, b, n, k, NULL, 0);
        merge_simd_force_portable(old);
        if (!cuts_equal(with_work, want) || !cuts_equal(without, want)) {
            printf("      %s: n %llu k %llu (%s): want thr %a at %llu k %llu, got %a at %llu k %llu"
                   " / %a at %llu\n", what, (unsigned long long)n, (unsigned long long)k,
                   simd ? "avx2" : "portable", (double)want.threshold,
                   (unsigned long long)want.keep_at_threshold, (unsigned long long)want.k,
                   (double)with_work.threshold, (unsigned long long)with_work.keep_at_threshold,
                   (unsigned long long)with_work.k, (double)without.threshold,
                   (unsigned long long)without.keep_at_threshold);
            ok = 0;
        }
    }
    /* The walk, in blocks of varying size, against topk_mask (both paths). */
    uint8_t *mask = malloc(n + 1);
    topk_mask(mask, d, n, &want);
    for (int simd = 0; simd < 2; simd++) {
        int old = merge_simd_force_portable(simd == 0);
        struct topk_walk w;
        topk_walk_init(&w, &want);
        uint64_t e0 = 0;
        size_t len = 1;
        while (e0 < n && ok) {
            size_t l = (size_t)(n - e0 < len ? n - e0 : len);
            int64_t c = topk_walk_block(&w, x + e0, b ? b + e0 : NULL, l);
            uint32_t thr = float_bits(want.threshold) & 0x7fffffffu;
            for (size_t j = 0; j < l; j++) {
                uint32_t key = float_bits(d[e0 + j]) & 0x7fffffffu;
                int in = key <= 0x7f800000u && (key > thr || (key == thr && (int64_t)j <= c));
                if (in != mask[e0 + j]) {
                    printf("      %s: walk differs at %llu\n", what, (unsigned long long)(e0 + j));
                    ok = 0;
                    break;
                }
            }
            e0 += l;
            len = len * 3 + 1;
            if (len > 5000)
                len = 7;
        }
        merge_simd_force_portable(old);
    }
    free(mask);
    free(d);
    return ok;
}

static void test_find_diff(void)
{
    static const uint64_t sizes[] = { 0, 1, 9, 1000, 65536, 100003, 300000 };
    static const double densities[] = { 0.0, 1e-5, 0.2, 0.5, 0.97, 1.0 };
    uint64_t nmax = 300000;
    float *x = malloc(nmax * sizeof *x), *b = malloc(nmax * sizeof *b);
    size_t work_len = topk_work_len(nmax);
    uint32_t *work = malloc(work_len * sizeof *work);
    int ok_random = 1, ok_bf16 = 1, ok_plain = 1, ok_nan = 1;
    for (size_t si = 0; si < LM_ARRAY_SIZE(sizes); si++) {
        uint64_t n = sizes[si];
        /* special values everywhere */
        for (uint64_t e = 0; e < n; e++) {
            x[e] = random_value();
            b[e] = random_value();
        }
        for (size_t di = 0; di < LM_ARRAY_SIZE(densities); di++)
            ok_nan &= check_diff(x, b, n, topk_count(densities[di], n), work, work_len, "special values");
        /* finite, bf16-like, heavy ties */
        for (uint64_t e = 0; e < n; e++) {
            b[e] = bf16_like(0.05f);
            x[e] = bits_float(float_bits(b[e] + bf16_like(0.004f)) & 0xffff0000u);
        }
        for (size_t di = 0; di < LM_ARRAY_SIZE(densities); di++) {
            ok_bf16 &= check_diff(x, b, n, topk_count(densities[di], n), work, work_len, "bf16-like");
            ok_plain &= check_diff(x, NULL, n, topk_count(densities[di], n), work, work_len, "no base");
        }
        /* continuous values, every k class */
        for (uint64_t e = 0; e < n; e++) {
            b[e] = (float)((double)(rng_next() >> 11) * 0x1p-53 - 0.5);
            x[e] = b[e] + (float)((double)(rng_next() >> 11) * 0x1p-53 - 0.5) * 0.01f;
        }
        for (uint64_t k = 0; k <= n && k < 4; k++)
            ok_random &= check_diff(x, b, n, k, work, work_len, "continuous, small k");
        if (n > 4)
            ok_random &= check_diff(x, b, n, n - 1, work, work_len, "continuous, k = n - 1");
    }
    TEST_COND("topk_find_diff = topk_find on x - b: NaN, inf, zeros, subnormals, every density", ok_nan);
    TEST_COND("topk_find_diff = topk_find on x - b: bf16-like deltas with many ties", ok_bf16);
    TEST_COND("topk_find_diff with b NULL = topk_find on x", ok_plain);
    TEST_COND("topk_find_diff = topk_find on x - b: k = 0 .. 3 and n - 1", ok_random);

    /* On data like real task vectors the sample's bracket holds the cut, so
     * one gathering pass does it (both paths). */
    {
        uint64_t n = 300000;
        for (uint64_t e = 0; e < n; e++) {
            b[e] = bf16_like(0.05f);
            x[e] = bits_float(float_bits(b[e] + bf16_like(0.004f)) & 0xffff0000u);
        }
        int hits = 0;
        for (int simd = 0; simd < 2; simd++) {
            int old = merge_simd_force_portable(simd == 0);
            for (int di = 0; di < 3; di++) {
                uint64_t k = topk_count(di == 0 ? 0.01 : di == 1 ? 0.2 : 0.9, n);
                struct topk_cut cut;
                hits += topk_test_bracketed(x, b, n, k, work, work_len, &cut);
            }
            merge_simd_force_portable(old);
        }
        /* continuous values: the gathered keys are listed */
        for (uint64_t e = 0; e < n; e++) {
            b[e] = (float)((double)(rng_next() >> 11) * 0x1p-53 - 0.5);
            x[e] = b[e] + (float)((double)(rng_next() >> 11) * 0x1p-53 - 0.5) * 0.01f;
        }
        for (int simd = 0; simd < 2; simd++) {
            int old = merge_simd_force_portable(simd == 0);
            for (int di = 0; di < 3; di++) {
                uint64_t k = topk_count(di == 0 ? 0.01 : di == 1 ? 0.2 : 0.9, n);
                struct topk_cut cut;
                hits += topk_test_bracketed(x, b, n, k, work, work_len, &cut);
            }
            merge_simd_force_portable(old);
        }
        TEST_COND("bf16-like and continuous data, densities 0.01/0.2/0.9: the sampled bracket "
                  "holds the cut (one gathering pass)", hits == 12);
    }
    /* Data the fixed sample misjudges: the sampled positions hold large
     * values, the rest small ones; and a lone NaN outside the sample. */
    {
        uint64_t n = 300000;
        for (uint64_t e = 0; e < n; e++) {
            b[e] = 0.0f;
            x[e] = topk_test_sampled(n, e) ? 100.0f + (float)(e % 7) : (float)(e % 1000) * 1e-3f;
        }
        struct topk_cut misjudged;
        int ok = !topk_test_bracketed(x, b, n, topk_count(0.2, n), work, work_len, &misjudged);
        ok &= check_diff(x, b, n, topk_count(0.2, n), work, work_len, "sample misjudged");
        x[1] = NAN;
        ok &= check_diff(x, b, n, topk_count(0.2, n), work, work_len, "NaN outside the sample");
        ok &= check_diff(x, b, n, n - 1, work, work_len, "NaN outside the sample, k = n - 1");
        TEST_COND("topk_find_diff falls back to the exact passes when the sample misleads", ok);
        /* too little work space for the gathered keys */
        for (uint64_t e = 0; e < n; e++)
            x[e] = 1.0f;
        ok = check_diff(x, b, n, topk_count(0.2, n), work, work_len, "all equal");
        TEST_COND("topk_find_diff: all entries equal (the bracket holds them all)", ok);
    }
    /* The exact passes alone give the same cuts. */
    {
        uint64_t n = 100003;
        for (uint64_t e = 0; e < n; e++) {
            b[e] = bf16_like(0.05f);
            x[e] = bits_float(float_bits(b[e] + bf16_like(0.004f)) & 0xffff0000u);
        }
        int old_off = topk_test_bracket_off(1);
        int ok = check_diff(x, b, n, topk_count(0.3, n), work, work_len, "bracket off");
        uint64_t old_wide = topk_test_wide_from(0);
        ok &= check_diff(x, b, n, topk_count(0.3, n), work, work_len, "bracket off, 64-bit");
        topk_test_wide_from(old_wide);
        topk_test_bracket_off(old_off);
        TEST_COND("topk_find_diff without the bracket (both counter widths) gives the same cut", ok);
    }
    free(x);
    free(b);
    free(work);
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

int main(void)
{
    /* topk_count is Python's int(density * n) in double precision. */
    TEST_COND("topk_count(0.2, 10) = 2", topk_count(0.2, 10) == 2);
    TEST_COND("topk_count(0.7, 10) = 7 (0.7*10 = 7.000000000000001)", topk_count(0.7, 10) == 7);
    TEST_COND("topk_count(0.29, 100) = 28 like int(0.29*100)", topk_count(0.29, 100) == 28);
    TEST_COND("topk_count(0.58, 100) = 57 like int(0.58*100)", topk_count(0.58, 100) == 57);
    TEST_COND("topk_count(0.4, 5) = 2", topk_count(0.4, 5) == 2);
    TEST_COND("topk_count: density <= 0 or NaN gives 0",
              topk_count(0.0, 10) == 0 && topk_count(-1.0, 10) == 0 && topk_count(NAN, 10) == 0);
    TEST_COND("topk_count: density >= 1 gives n", topk_count(1.0, 13) == 13 && topk_count(2.5, 13) == 13);
    TEST_COND("topk_count: n = 0 gives 0", topk_count(0.5, 0) == 0);

    /* Hand case: ties broken by lower index. */
    {
        const float x[5] = { 3, -3, 1, 3, -2 };
        uint8_t m[5];
        float out[5];
        uint64_t k = topk_count(0.4, 5);
        struct topk_cut cut = topk_find(x, 5, k);
        topk_mask(m, x, 5, &cut);
        topk_apply(out, x, 5, &cut);
        TEST_COND("[3,-3,1,3,-2] density 0.4: k = 2, threshold 3, 2 kept at it",
                  k == 2 && cut.k == 2 && cut.threshold == 3.0f && cut.keep_at_threshold == 2 &&
                  !cut.keep_all);
        TEST_COND("[3,-3,1,3,-2] density 0.4 keeps indices 0 and 1 only",
                  m[0] == 1 && m[1] == 1 && m[2] == 0 && m[3] == 0 && m[4] == 0 &&
                  out[0] == 3 && out[1] == -3 && out[2] == 0 && out[3] == 0 && out[4] == 0);
        cut = topk_find(x, 5, 4);
        topk_mask(m, x, 5, &cut);
        TEST_COND("[3,-3,1,3,-2] k = 4 keeps 0,1,3,4 (threshold 2)",
                  cut.threshold == 2.0f && cut.keep_at_threshold == 1 &&
                  m[0] && m[1] && !m[2] && m[3] && m[4]);
        cut = topk_find(x, 5, 0);
        topk_mask(m, x, 5, &cut);
        TEST_COND("k = 0: threshold +inf, nothing kept",
                  cut.k == 0 && isinf(cut.threshold) && !m[0] && !m[1] && !m[2] && !m[3] && !m[4]);
        cut = topk_find(x, 5, 5);
        TEST_COND("k = n without NaN: keep_all", cut.keep_all && cut.k == 5);
    }
    {
        const float x[6] = { NAN, 1, -NAN, INFINITY, -0.0f, 2 };
        uint8_t m[6];
        struct topk_cut cut = topk_find(x, 6, 6);
        topk_mask(m, x, 6, &cut);
        TEST_COND("k = n with NaNs: not keep_all, every non-NaN kept, NaNs dropped",
                  !cut.keep_all && cut.k == 4 && !m[0] && m[1] && !m[2] && m[3] && m[4] && m[5]);
        cut = topk_find(x, 6, 5);
        topk_mask(m, x, 6, &cut);
        TEST_COND("k above the non-NaN count keeps the non-NaN entries",
                  cut.k == 4 && !m[0] && m[1] && !m[2] && m[3] && m[4] && m[5]);
        cut = topk_find(x, 6, 1);
        topk_mask(m, x, 6, &cut);
        TEST_COND("k = 1 keeps the infinity, never a NaN",
                  cut.k == 1 && isinf(cut.threshold) && !m[0] && !m[1] && !m[2] && m[3] && !m[4] && !m[5]);
        const float z[4] = { 0.0f, -0.0f, 0.0f, 5.0f };
        cut = topk_find(z, 4, 2);
        topk_mask(m, z, 4, &cut);
        TEST_COND("-0 and +0 tie in magnitude (lower index wins)",
                  cut.threshold == 0.0f && m[0] && !m[1] && !m[2] && m[3]);
        const float nn[3] = { NAN, NAN, NAN };
        cut = topk_find(nn, 3, 2);
        topk_mask(m, nn, 3, &cut);
        TEST_COND("all-NaN array keeps nothing", cut.k == 0 && !m[0] && !m[1] && !m[2]);
    }
    /* Long runs of the threshold value across the block boundary of apply. */
    {
        uint64_t n = 5000;
        float *x = malloc(n * sizeof *x);
        for (uint64_t e = 0; e < n; e++)
            x[e] = (e % 3 == 0) ? 2.0f : 1.0f;
        int ok = 1;
        for (uint64_t k = 1600; k < 2600; k += 97)
            ok &= check_one(x, n, (double)k / (double)n + 1e-9);
        TEST_COND("threshold runs spanning apply blocks", ok);
        free(x);
    }

    test_find_diff();

    test_random("32-bit");
    uint64_t old_wide = topk_test_wide_from(0);
    test_random("64-bit");
    topk_test_wide_from(old_wide);

    /* Timing on a tensor of a realistic size (not asserted). */
    {
        uint64_t n = 13700000;
        float *x = malloc(n * sizeof *x), *out = malloc(n * sizeof *out);
        for (uint64_t e = 0; e < n; e++) {
            /* bf16-rounded deltas of magnitude around 1e-3 */
            uint32_t u = (uint32_t)(rng_next() >> 40) % 0x01000000u + 0x3a000000u;
            x[e] = bits_float((u & 0xffff0000u) | (rng_next() & 1u ? 0x80000000u : 0u));
        }
        struct topk_cut cut = topk_find(x, n, topk_count(0.2, n));
        topk_apply(out, x, n, &cut); /* faults the output pages in before timing */
        double t0 = now_s();
        cut = topk_find(x, n, topk_count(0.2, n));
        double t1 = now_s();
        topk_apply(out, x, n, &cut);
        double t2 = now_s();

        size_t wl = topk_work_len(n);
        uint32_t *work = malloc(wl * sizeof *work);
        double t3 = now_s();
        struct topk_cut cut2 = topk_find_diff(x, NULL, n, topk_count(0.2, n), work, wl);
        double t4 = now_s();
        free(work);
        printf("      timing: 13.7M-entry select: find %.1f ms, apply %.1f ms, find_diff %.1f ms\n",
               (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t4 - t3) * 1e3);
        TEST_COND("13.7M entries: topk_find_diff gives topk_find's cut", cuts_equal(cut, cut2));
        uint64_t kept = 0;
        for (uint64_t e = 0; e < n; e++)
            kept += out[e] != 0.0f;
        TEST_COND("13.7M entries, density 0.2: exactly k kept", kept == topk_count(0.2, n));
        free(x);
        free(out);
    }
    return test_report();
}
