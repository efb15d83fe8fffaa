/* Top-k selection by magnitude, as TIES and the statistics need it: keep the
 * k = floor(density * n) entries of largest |x| within a tensor (mergekit's
 * `int(density * numel)`), breaking ties in magnitude by lower index so that
 * the result is one definite set whatever the thread count.
 *
 * The cut is described by a threshold and a count: entry e is kept when
 * |x[e]| > threshold, or |x[e]| == threshold and e is among the first
 * `keep_at_threshold` entries (in index order) whose |x| equals the
 * threshold. NaN entries are never kept. */
#ifndef LM_CORE_SELECT_H
#define LM_CORE_SELECT_H

#include <stdbool.h>
#include <stdint.h>

struct topk_cut {
    uint64_t k;                 /* entries kept */
    float    threshold;         /* |x| at the cut (+inf when k == 0: nothing kept) */
    uint64_t keep_at_threshold; /* how many entries with |x| == threshold are kept */
    bool     keep_all;          /* k == n: every entry kept (density >= 1) */
};

/* floor(density * n) clamped to [0, n], computed without float error for
 * densities 0 and 1. */
uint64_t topk_count(double density, uint64_t n);

/* Finds the cut for keeping the k largest |x| of x[0..n). Linear time (radix
 * select on the float bits of |x|), no allocation beyond a fixed histogram. */
struct topk_cut topk_find(const float *x, uint64_t n, uint64_t k);

/* Applies a cut: out[e] = kept ? x[e] : 0. `out` may equal `x`. */
void topk_apply(float *out, const float *x, uint64_t n, const struct topk_cut *cut);

/* Writes mask[e] = 1 when kept, else 0. */
void topk_mask(uint8_t *mask, const float *x, uint64_t n, const struct topk_cut *cut);

#endif
