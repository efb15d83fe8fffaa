/* Block by block merging and statistics (merge_stream.h, stats_stream_*,
 * topk_find_diff_read) against the whole-tensor routines: the same bits
 * for every streamable method, block size, kernel path and density, on
 * data with many equal magnitudes (bf16-like values) so that cuts fall
 * inside runs of equal keys. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lm_error.h"
#include "merge_method.h"
#include "merge_stream.h"
#include "select.h"
#include "stats.h"
#include "test.h"

#define NM 2

static uint64_t rng = 0x243f6a8885a308d3ull;
static double uniform(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (double)(rng >> 11) / 9007199254740992.0;
}

/* Rounds to bf16 (the values a bf16 checkpoint holds). */
static float bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    memcpy(&f, &u, sizeof f);
    return f;
}

struct arrays {
    const float *src[1 + NM];
};

static int read_arrays(void *ud, int source, uint64_t e0, size_t len, float *dst)
{
    const struct arrays *a = ud;
    memcpy(dst, a->src[source] + e0, len * sizeof(float));
    return 0;
}

struct diff_src {
    const float *x, *b;
};

static int read_diff(void *ud, uint64_t e0, size_t len, float *x, float *b)
{
    const struct diff_src *d = ud;
    memcpy(x, d->x + e0, len * sizeof(float));
    memcpy(b, d->b + e0, len * sizeof(float));
    return 0;
}

/* A reader asked to stop after `left` reads, as the workbench's reader is
 * when the user edits or quits mid-tensor. */
struct stopping {
    const float *x, *b;
    int left, calls_after;
};

static int read_stopping(void *ud, uint64_t e0, size_t len, float *x, float *b)
{
    struct stopping *s = ud;
    if (s->left-- <= 0) {
        s->calls_after++;
        return LM_ECANCELED;
    }
    memcpy(x, s->x + e0, len * sizeof(float));
    memcpy(b, s->b + e0, len * sizeof(float));
    return 0;
}

static void check_stop_midway(void)
{
    enum { N = 1 << 20 };
    float *x = malloc(N * sizeof(float)), *b = calloc(N, sizeof(float));
    for (int i = 0; i < N; i++)
        x[i] = (float)(((unsigned)i * 7919u) % 1000u) - 500.0f;
    uint32_t *work = malloc(topk_work_len(N) * sizeof(uint32_t));
    const int stops[] = { 0, 5, 40, 200 };
    bool ok = true;
    for (size_t k = 0; k < sizeof stops / sizeof stops[0]; k++) {
        struct stopping s = { x, b, stops[k], 0 };
        struct topk_cut cut;
        int rc = topk_find_diff_read(read_stopping, &s, N, N / 5, work, topk_work_len(N), &cut);
        ok = ok && rc == LM_ECANCELED && s.calls_after == 1;
    }
    TEST_COND("a reader that stops (after 0, 5, 40, 200 chunks) ends the top-k search with its error, "
              "asked once", ok);
    free(x);
    free(b);
    free(work);
}

static bool same_cut(const struct topk_cut *a, const struct topk_cut *b)
{
    return a->k == b->k && memcmp(&a->threshold, &b->threshold, sizeof(float)) == 0 &&
           a->keep_at_threshold == b->keep_at_threshold && a->keep_all == b->keep_all;
}

/* Merges by stream with blocks of `block` entries; true when the bits equal
 * `want`. *streamed says whether the method gave a stream. */
static bool stream_equals(const struct merge_method *m, const struct merge_tensor_params *p,
                          const float *base, const float *const *x, uint64_t n, size_t block,
                          const float *want, bool *streamed, struct merge_scratch *sc)
{
    struct arrays a = { { base, x[0], x[1] } };
    struct merge_stream_job sj = {
        .name = "model.layers.3.mlp.up_proj.weight", .n = n, .rows = 1, .cols = n,
        .n_models = NM, .params = p, .read = read_arrays, .ud = &a, .scratch = sc,
    };
    struct merge_stream *st = NULL;
    *streamed = false;
    if (merge_stream_begin(m, &sj, &st) != 0) {
        printf("      begin: %s\n", lm_last_error());
        return false;
    }
    if (!st)
        return true;
    *streamed = true;
    float *out = malloc(n * sizeof(float));
    bool ok = out != NULL;
    for (uint64_t e0 = 0; ok && e0 < n; e0 += block) {
        size_t len = (size_t)(n - e0 < block ? n - e0 : block);
        const float *xs[NM] = { x[0] + e0, x[1] + e0 };
        ok = merge_stream_block(st, e0, len, base + e0, xs, out + e0) == 0;
    }
    ok = ok && memcmp(out, want, n * sizeof(float)) == 0;
    merge_stream_free(st);
    free(out);
    return ok;
}

int main(void)
{
    const uint64_t n = 300001; /* several blocks, not a multiple of 8 */
    float *b = malloc(n * sizeof(float)), *x0 = malloc(n * sizeof(float)), *x1 = malloc(n * sizeof(float));
    float *want = malloc(n * sizeof(float));
    if (!b || !x0 || !x1 || !want)
        return 1;
    for (uint64_t e = 0; e < n; e++) {
        b[e] = bf16((float)(uniform() * 0.2 - 0.1));
        /* small bf16 deltas: few distinct task-vector values */
        x0[e] = bf16(b[e] + (float)((uniform() - 0.5) * 0.004));
        x1[e] = uniform() < 0.3 ? b[e] : bf16(x0[e] + (float)((uniform() - 0.5) * 0.002));
    }
    x1[17] = NAN;
    const float *xs[NM] = { x0, x1 };
    struct merge_scratch sc = { 0 };

    /* ---- topk_find_diff_read gives topk_find_diff's cut ---- */
    size_t wlen = topk_work_len(n);
    uint32_t *work = malloc(wlen * sizeof(uint32_t));
    bool cuts_ok = work != NULL;
    const double dens[] = { 0.0, 0.001, 0.2, 0.5, 0.9, 1.0 };
    for (int off = 0; off < 2; off++) {
        int old = topk_test_bracket_off(off);
        for (size_t d = 0; d < sizeof dens / sizeof dens[0]; d++) {
            for (int i = 0; i < NM; i++) {
                uint64_t k = topk_count(dens[d], n);
                struct topk_cut c1 = topk_find_diff(xs[i], b, n, k, work, wlen), c2;
                struct diff_src ds = { xs[i], b };
                cuts_ok = cuts_ok && topk_find_diff_read(read_diff, &ds, n, k, work, wlen, &c2) == 0 &&
                          same_cut(&c1, &c2);
                /* short work space: the exact passes */
                cuts_ok = cuts_ok && topk_find_diff_read(read_diff, &ds, n, k, NULL, 0, &c2) == 0 &&
                          same_cut(&c1, &c2);
            }
        }
        topk_test_bracket_off(old);
    }
    TEST_COND("topk_find_diff_read finds topk_find_diff's cuts (sampled and exact passes)", cuts_ok);

    /* ---- topk_find_diffs_read: several differences, one base, the same cuts ---- */
    {
        uint32_t *works[3];
        bool ok = true;
        for (int j = 0; j < 3; j++)
            ok = ok && (works[j] = malloc(wlen * sizeof(uint32_t))) != NULL;
        struct arrays a = { .src = { b, x0, x1 } };
        int runs = 0;
        for (int off = 0; ok && off < 2; off++) {
            int old = topk_test_bracket_off(off);
            for (size_t d = 0; d < sizeof dens / sizeof dens[0]; d++) {
                for (size_t d2 = 0; d2 < sizeof dens / sizeof dens[0]; d2++) {
                    const int src[3] = { 1, 2, 1 };
                    const uint64_t k[3] = { topk_count(dens[d], n), topk_count(dens[d2], n),
                                            topk_count(0.3, n) };
                    struct topk_cut got[3];
                    ok = ok && topk_find_diffs_read(read_arrays, &a, n, 3, src, k, works, wlen, got) == 0;
                    for (int j = 0; ok && j < 3; j++) {
                        struct topk_cut one = topk_find_diff(xs[src[j] - 1], b, n, k[j], work, wlen);
                        ok = same_cut(&one, &got[j]);
                    }
                    runs++;
                }
            }
            topk_test_bracket_off(old);
        }
        /* a NaN in one difference's sample sends that one to the exact passes alone */
        uint64_t at = 0;
        while (at < n && !topk_test_sampled(n, at))
            at++;
        float keep = x0[at];
        x0[at] = NAN;
        const int src[2] = { 1, 2 };
        const uint64_t k[2] = { topk_count(0.2, n), topk_count(0.2, n) };
        struct topk_cut got[2];
        ok = ok && at < n && topk_find_diffs_read(read_arrays, &a, n, 2, src, k, works, wlen, got) == 0;
        for (int j = 0; ok && j < 2; j++) {
            struct topk_cut one = topk_find_diff(xs[j], b, n, k[j], work, wlen);
            ok = same_cut(&one, &got[j]);
        }
        x0[at] = keep;
        char descr[160];
        snprintf(descr, sizeof descr, "topk_find_diffs_read finds each difference's own cut (%d triples "
                 "of densities, sampled and exact; a NaN in one sample)", runs);
        TEST_COND(descr, ok && runs == 72);
        for (int j = 0; j < 3; j++)
            free(works[j]);
    }

    /* ---- every streamable method, both kernel paths, several block sizes ---- */
    const struct merge_method *methods[] = {
        &merge_method_ties, &merge_method_dare_ties, &merge_method_dare_linear,
        &merge_method_breadcrumbs, &merge_method_breadcrumbs_ties, &merge_method_task_arithmetic,
        &merge_method_linear,
        &merge_method_average,
    };
    const size_t blocks[] = { MERGE_STREAM_BLOCK, 8, 4096 + 8 * 3, 1 << 20 };
    for (int portable = 0; portable < 2; portable++) {
        int old = merge_simd_force_portable(portable);
        for (size_t mi = 0; mi < sizeof methods / sizeof methods[0]; mi++) {
            const struct merge_method *m = methods[mi];
            bool all = true, any_streamed = false;
            const double dsets[3][2] = { { 0.2, 0.7 }, { 0.001, 1.0 }, { 0.5, 0.0 } };
            for (int ds = 0; ds < 3; ds++) {
                struct merge_tensor_params p;
                merge_tensor_params_default(&p, NM);
                if (m->set_defaults)
                    m->set_defaults(&p);
                p.weight[0] = 0.8;
                p.weight[1] = 0.3;
                p.density[0] = dsets[ds][0];
                p.density[1] = dsets[ds][1];
                p.lambda = 1.1;
                p.seed = 7;
                p.gamma = 0.05;
                /* density 0 is an error for ties, as in mergekit */
                if (m == &merge_method_ties && p.density[1] == 0.0)
                    p.density[1] = 0.3;
                struct merge_tensor_job job = {
                    .name = "model.layers.3.mlp.up_proj.weight", .n = n, .rows = 1, .cols = n,
                    .base = b, .models = xs, .n_models = NM, .params = &p, .out = want,
                    .scratch = &sc,
                };
                if (m->merge_tensor(&job) != 0) {
                    all = false;
                    printf("      merge: %s\n", lm_last_error());
                    continue;
                }
                for (size_t bi = 0; bi < sizeof blocks / sizeof blocks[0]; bi++) {
                    /* only the first block size for the 8-entry case: slow */
                    if (blocks[bi] == 8 && ds > 0)
                        continue;
                    bool streamed;
                    all = all && stream_equals(m, &p, b, xs, n, blocks[bi], want, &streamed, &sc);
                    any_streamed = any_streamed || streamed;
                }
            }
            char what[160];
            snprintf(what, sizeof what, "%s (%s): block by block gives the whole-tensor bits",
                     m->name, portable ? "portable" : merge_simd_name());
            TEST_COND(what, all && any_streamed);
        }
        merge_simd_force_portable(old);
    }

    /* ---- methods that need the whole tensor decline ---- */
    {
        struct merge_tensor_params p;
        merge_tensor_params_default(&p, NM);
        p.density[0] = p.density[1] = 0.5;
        p.rescale = MERGE_RESCALE_L1;
        bool streamed = true;
        stream_equals(&merge_method_dare_ties, &p, b, xs, n, MERGE_STREAM_BLOCK, want, &streamed, &sc);
        bool declined_l1 = !streamed;
        merge_tensor_params_default(&p, NM);
        struct merge_stream *st = (struct merge_stream *)1;
        struct arrays a = { { b, x0, x1 } };
        struct merge_stream_job sj = { .name = "t", .n = n, .n_models = NM, .params = &p,
                                       .read = read_arrays, .ud = &a, .scratch = &sc };
        bool declined_slerp = merge_stream_begin(&merge_method_slerp, &sj, &st) == 0 && st == NULL;
        TEST_COND("dare with the L1 rescale and slerp merge whole tensors (no stream)",
                  declined_l1 && declined_slerp);
    }

    /* ---- statistics: stream (sharing the TIES cuts) = stats_accumulate ---- */
    for (int portable = 0; portable < 2; portable++) {
        int old = merge_simd_force_portable(portable);
        struct merge_tensor_params p;
        merge_tensor_params_default(&p, NM);
        merge_method_ties.set_defaults(&p);
        p.density[0] = 0.2;
        p.density[1] = 0.7;
        p.weight[0] = 0.8;
        p.weight[1] = 0.3;
        struct merge_tensor_job job = {
            .name = "t", .n = n, .rows = 1, .cols = n, .base = b, .models = xs, .n_models = NM,
            .params = &p, .out = want, .scratch = &sc,
        };
        bool ok = merge_method_ties.merge_tensor(&job) == 0;
        struct stats_raw whole, streamed, own;
        stats_raw_init(&whole, NM);
        stats_raw_init(&streamed, NM);
        stats_raw_init(&own, NM);
        struct merge_scratch sc2 = { 0 };
        ok = ok && stats_accumulate(&whole, b, xs, NM, want, n, p.density, p.weight, &sc2) == 0;
        struct arrays a = { { b, x0, x1 } };
        struct merge_stream_job sj = { .name = "t", .n = n, .rows = 1, .cols = n, .n_models = NM,
                                       .params = &p, .read = read_arrays, .ud = &a, .scratch = &sc };
        struct merge_stream *ms = NULL;
        ok = ok && merge_stream_begin(&merge_method_ties, &sj, &ms) == 0 && ms &&
             ms->has_cut[0] && ms->has_cut[1];
        for (int shared = 0; ok && shared < 2; shared++) {
            struct stats_stream *ss = NULL;
            ok = stats_stream_begin(&ss, NM, n, p.density, p.weight, shared ? ms->has_cut : NULL,
                                    ms->cut, read_arrays, &a, &sc2) == 0;
            const size_t blk = shared ? MERGE_STREAM_BLOCK : 4096 + 24;
            for (uint64_t e0 = 0; ok && e0 < n; e0 += blk) {
                size_t len = (size_t)(n - e0 < blk ? n - e0 : blk);
                const float *bx[NM] = { x0 + e0, x1 + e0 };
                ok = stats_stream_block(ss, b + e0, bx, want + e0, len) == 0;
            }
            ok = ok && stats_stream_end(ss, shared ? &streamed : &own) == 0;
        }
        merge_stream_free(ms);
        ok = ok && memcmp(&whole, &streamed, sizeof whole) == 0 && memcmp(&whole, &own, sizeof whole) == 0;
        char what[160];
        snprintf(what, sizeof what, "stats by blocks (with the merge's cuts and its own) = "
                 "stats_accumulate, bit for bit (%s)", portable ? "portable" : merge_simd_name());
        TEST_COND(what, ok);
        merge_scratch_deinit(&sc2);
        merge_simd_force_portable(old);
    }

    merge_scratch_deinit(&sc);
    free(work);
    free(b);
    free(x0);
    free(x1);
    free(want);
    check_stop_midway();
    return test_report();
}
