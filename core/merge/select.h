/* Top-k selection by magnitude, as TIES and the statistics need it: keep the
 * k = floor(density * n) entries of largest |x| within a tensor (mergekit's
 * `int(density * numel)`), breaking ties in magnitude by lower index so that
 * the result is one definite set whatever the thread count.
 *
 * The cut is described by a threshold and a count: entry e is kept when
 * |x[e]| > threshold, or |x[e]| == threshold and e is among the first
 * `keep_at_threshold` entries (in index order) whose |x| equals the
 * threshold. NaN entries are never kept. */
#ifndef MS_CORE_MERGE_SELECT_H
#define MS_CORE_MERGE_SELECT_H

#include <stdbool.h>
#include <stddef.h>
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

/* ---- Additions below; declarations above are the fixed API. ---- */

/* Work space, in uint32 entries, with which topk_find_diff reads its inputs
 * about once instead of twice; 0 when n is too small for that to pay. */
size_t topk_work_len(uint64_t n);

/* The cut topk_find(d, n, k) returns for the float32 difference
 * d[e] = x[e] - b[e] (d = x when b is NULL), found without writing d out.
 * With `work` holding at least topk_work_len(n) entries, a fixed sample of
 * the entries brackets the threshold and one pass counts the entries above
 * the bracket and gathers those inside it, which are then selected exactly;
 * when the bracket misses (unusual data) or `work` is short, two histogram
 * passes over x and b find the cut as topk_find does. The cut is the same
 * either way, and the same as topk_find's on the materialised difference. */
struct topk_cut topk_find_diff(const float *x, const float *b, uint64_t n, uint64_t k,
                               uint32_t *work, size_t work_len);

/* Reads entries [e0, e0 + len) of x and of b as float32 into x[0..len) and
 * b[0..len) (len <= 65536): how topk_find_diff_read sees a difference held
 * in another form (bf16 weights in mapped files). 0, or an LM_E* code
 * (LM_ECANCELED: the caller was asked to stop) that ends the search. */
typedef int (*topk_read_fn)(void *ud, uint64_t e0, size_t len, float *x, float *b);

/* topk_find_diff's cut of x - b for inputs read through `read` a chunk at a
 * time: the same cut, with the same work space (topk_work_len(n) entries;
 * shorter work takes the exact passes, three reads of the inputs). 0 or
 * LM_ENOMEM (64 KiB of buffers), or the reader's error. */
int topk_find_diff_read(topk_read_fn read, void *ud, uint64_t n, uint64_t k, uint32_t *work,
                        size_t work_len, struct topk_cut *cut);

/* Reads entries [e0, e0 + len) of source `source` (0: b, else one of the
 * x) as float32 into dst[0..len) (len <= 65536); errors as topk_read_fn. */
typedef int (*topk_source_fn)(void *ud, int source, uint64_t e0, size_t len, float *dst);

#define TOPK_MAX_DIFFS 16

/* The cuts of m <= TOPK_MAX_DIFFS differences x_j - b at once: x_j is
 * source src[j], cut[j] keeps its top k[j], with work[j] of work_len
 * entries as work space. The same cuts as topk_find_diff_read on each,
 * with b read once for all of them in the gathering pass. 0, LM_ENOMEM, or
 * the reader's error. */
int topk_find_diffs_read(topk_source_fn read, void *ud, uint64_t n, int m, const int *src,
                         const uint64_t *k, uint32_t *const *work, size_t work_len,
                         struct topk_cut *cut);

/* An index-order walk over a cut for kernels that decide a block of entries
 * at once: topk_walk_init starts it, and each topk_walk_block call covers
 * the next `len` entries (values x[j] - b[j] in float32, or x[j] when b is
 * NULL) and returns c in [-1, len - 1] such that entry j of the block is
 * within the cut exactly when its |value| is above the threshold, or equal
 * to it and j <= c; NaN never is. Blocks must follow one another with no
 * gap, starting at entry 0. */
struct topk_walk {
    uint32_t thr;   /* |threshold|'s bits */
    uint64_t left;  /* threshold entries still to keep */
};
void topk_walk_init(struct topk_walk *w, const struct topk_cut *cut);
int64_t topk_walk_block(struct topk_walk *w, const float *x, const float *b, size_t len);

/* How many entries of x - b (x when b is NULL) have |value|'s bits equal
 * to `key` (a cut's threshold bits without the sign): with a cut's
 * keep_at_threshold, how many equal entries a cut leaves out. */
uint64_t topk_count_equal_diff(const float *x, const float *b, uint64_t n, uint32_t key);

/* ----- For tests: forcing the paths that real sizes decide -----
 * topk_test_wide_from sets the size from which the 64-bit-counter path is
 * taken (2^32 by default) and topk_test_bracket_off makes topk_find_diff
 * skip the sampled bracket; each returns the old setting. topk_test_bracketed
 * runs the sampled bracket alone: true when it found the cut of x - b.
 * topk_test_sampled says whether the bracket's sample of n entries takes
 * entry e. */
uint64_t topk_test_wide_from(uint64_t n);
int topk_test_bracket_off(int off);
bool topk_test_bracketed(const float *x, const float *b, uint64_t n, uint64_t k, uint32_t *work,
                         size_t work_len, struct topk_cut *cut);
bool topk_test_sampled(uint64_t n, uint64_t e);

#endif
