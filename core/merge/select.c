/* Top-k selection by magnitude: radix select over the IEEE bits of |x|.
 *
 * For a float that is not NaN, the bit pattern of |x| read as an unsigned
 * integer grows with the magnitude (+0 and -0 both read 0, +inf reads
 * 0x7f800000), so the k-th largest magnitude is the k-th largest such key,
 * and NaNs are exactly the keys above 0x7f800000. topk_find histograms the
 * high 16 bits of the keys, finds the bucket that holds the k-th largest,
 * then histograms the low 16 bits of the keys in that bucket: two passes,
 * the exact threshold, and the number of entries strictly above it, with no
 * sorting and no allocation (the 256 KiB histogram lives on the stack; from
 * 2^32 entries on, a three-pass variant with 64-bit counters takes over).
 *
 * Conventions the header leaves open:
 *   - k larger than the number of non-NaN entries keeps every non-NaN entry
 *     (cut.k says how many). torch.topk would rank NaN above everything;
 *     here NaN is never kept.
 *   - A cut that keeps every non-NaN entry (k >= n) is reported as threshold
 *     0 with keep_at_threshold = the number of zeros, which the rule above
 *     reads as "everything but NaN"; keep_all is set when there is no NaN.
 *   - n = 0 gives keep_all with k = 0.
 * The streaming loops (NaN/zero count, apply, mask) use SSE2 where the
 * compiler targets it (every x86-64), with plain loops for the tails and
 * elsewhere; select results do not depend on which ran.
 *
 * topk_find_diff selects on x - b without writing it out, in about one pass
 * where the two above would take three (write, then two histograms): see
 * "Selection on a difference". Its gathering pass and the block walk have
 * AVX2 forms, taken when merge_simd_avx2() says so; the cuts are the same
 * whichever runs. */
#include "select.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "lm_error.h"
#include "merge_method.h"

#if defined(__GNUC__)
#define SELECT_INLINE inline __attribute__((always_inline))
#else
#define SELECT_INLINE inline
#endif

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#include <immintrin.h>
#define SELECT_X86 1
#define SELECT_AVX2_TARGET __attribute__((target("avx2")))
#else
#define SELECT_X86 0
#endif

#if defined(__SSE2__)
#include <emmintrin.h>
#define SELECT_SSE2 1
#else
#define SELECT_SSE2 0
#endif

#define KEY_INF     0x7f800000u  /* key of +-inf; larger keys are NaN */
#define LM_SELECT_MIN(a, b) ((a) < (b) ? (a) : (b))
#define HI_BUCKETS  0x8000u      /* keys >> 16 for non-NaN keys: 0 .. 0x7f80 */
#define HI_NAN      HI_BUCKETS   /* extra high-histogram bucket for NaNs */

/* |x[e]|'s bits: the sort key. */
static inline uint32_t key_at(const float *x, uint64_t e)
{
    uint32_t u;
    memcpy(&u, &x[e], sizeof u);
    return u & 0x7fffffffu;
}

/* The key of x[e] - b[e] (of x[e] when b is NULL), the difference rounded
 * to float32 as the callers' kernels compute it. */
static inline uint32_t diff_key(const float *x, const float *b, uint64_t e)
{
    float v = b ? x[e] - b[e] : x[e];
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    return u & 0x7fffffffu;
}

/* diff_key for loops that know whether b is used: `use_b` is a constant
 * after inlining, so the loop carries no test. */
static SELECT_INLINE uint32_t key_of(const float *x, const float *b, bool use_b, uint64_t e)
{
    float v = use_b ? x[e] - b[e] : x[e];
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    return u & 0x7fffffffu;
}

static float key_to_float(uint32_t key)
{
    float f;
    memcpy(&f, &key, sizeof f);
    return f;
}

#if SELECT_SSE2
/* Sum of the four unsigned 32-bit lanes. */
static uint64_t sum_lanes(__m128i v)
{
    uint32_t l[4];
    _mm_storeu_si128((__m128i *)(void *)l, v);
    return (uint64_t)l[0] + l[1] + l[2] + l[3];
}

/* Lanes of all ones where lo_key <= |x| key <= KEY_INF (keys are below 2^31,
 * so signed compares order them). */
static inline __m128i keep_lanes(__m128i v, __m128i lo_minus_1)
{
    __m128i a = _mm_and_si128(v, _mm_set1_epi32(0x7fffffff));
    return _mm_andnot_si128(_mm_cmpgt_epi32(a, _mm_set1_epi32((int)KEY_INF)),
                            _mm_cmpgt_epi32(a, lo_minus_1));
}
#endif

uint64_t topk_count(double density, uint64_t n)
{
    /* `!(density > 0)` also sends NaN to 0. */
    if (!(density > 0.0))
        return 0;
    if (density >= 1.0)
        return n;
    /* Python's int(density * numel): one double multiply, truncated. */
    double v = density * (double)n;
    if (v >= (double)n)
        return n;
    return (uint64_t)v;
}

/* The cut that keeps every non-NaN entry: threshold 0, every zero kept. */
static struct topk_cut cut_all_non_nan(uint64_t kept, uint64_t zeros, bool keep_all)
{
    struct topk_cut c = { .k = kept, .threshold = 0.0f, .keep_at_threshold = zeros,
                          .keep_all = keep_all };
    return c;
}

/* Counts NaN and zero entries in one branch-free pass. */
static void count_nan_zero(const float *x, uint64_t n, uint64_t *nan_count, uint64_t *zero_count)
{
    uint64_t nans = 0, zeros = 0, e = 0;
#if SELECT_SSE2
    /* Blocks of at most 2^31 lanes' worth keep the 32-bit lane counters exact. */
    const __m128i abs_mask = _mm_set1_epi32(0x7fffffff), inf = _mm_set1_epi32((int)KEY_INF);
    while (n - e >= 4) {
        uint64_t stop = e + LM_SELECT_MIN(n - e, (uint64_t)1 << 31) / 4 * 4;
        __m128i cn = _mm_setzero_si128(), cz = _mm_setzero_si128();
        for (; e < stop; e += 4) {
            __m128i a = _mm_and_si128(_mm_loadu_si128((const __m128i *)(const void *)(x + e)), abs_mask);
            cn = _mm_sub_epi32(cn, _mm_cmpgt_epi32(a, inf));
            cz = _mm_sub_epi32(cz, _mm_cmpeq_epi32(a, _mm_setzero_si128()));
        }
        nans += sum_lanes(cn);
        zeros += sum_lanes(cz);
    }
#endif
    for (; e < n; e++) {
        uint32_t a = key_at(x, e);
        nans += a > KEY_INF;
        zeros += a == 0;
    }
    *nan_count = nans;
    *zero_count = zeros;
}

/* Finishes a cut once the threshold key and the number of entries strictly
 * above it are known; `k` does not exceed the number of non-NaN entries. */
static struct topk_cut cut_make(uint64_t k, uint32_t thr_key, uint64_t greater)
{
    struct topk_cut c = { .k = k, .threshold = key_to_float(thr_key),
                          .keep_at_threshold = k - greater, .keep_all = false };
    return c;
}

/* The cut for k == n, from the counts of NaN and zero entries. */
static struct topk_cut cut_keep_non_nan(uint64_t n, uint64_t nans, uint64_t zeros)
{
    if (nans == 0)
        return cut_all_non_nan(n, zeros, true);
    if (nans == n)
        return cut_make(0, KEY_INF, 0);
    return cut_all_non_nan(n - nans, zeros, false);
}

/* Two passes with 16-bit digits and 32-bit counters: n <= UINT32_MAX.
 * 0 < k < n. The keys are those of x - b when use_b, of x otherwise. The
 * histogram (256 KiB) lives on the stack. */
static SELECT_INLINE struct topk_cut find_narrow_impl(const float *x, const float *b, bool use_b,
                                                      uint64_t n, uint64_t k)
{
    uint32_t hist[1u << 16];

    /* Pass 1: high halves of the keys; NaNs go to their own bucket. */
    memset(hist, 0, (HI_BUCKETS + 1) * sizeof hist[0]);
    for (uint64_t e = 0; e < n; e++) {
        uint32_t a = key_of(x, b, use_b, e);
        hist[a > KEY_INF ? HI_NAN : a >> 16]++;
    }
    uint64_t non_nan = n - hist[HI_NAN];
    if (k >= non_nan) {
        if (non_nan == 0)
            return cut_make(0, KEY_INF, 0);
        k = non_nan; /* keep every non-NaN entry; find the smallest below */
    }

    /* Walk down from the infinity bucket to the one holding the k-th key. */
    uint64_t greater = 0;
    uint32_t hi = KEY_INF >> 16;
    while (greater + hist[hi] < k)
        greater += hist[hi--];
    if (hi == KEY_INF >> 16)
        return cut_make(k, KEY_INF, greater); /* that bucket holds only inf */

    /* Pass 2: low halves of the keys inside that bucket. */
    memset(hist, 0, sizeof hist);
    for (uint64_t e = 0; e < n; e++) {
        uint32_t a = key_of(x, b, use_b, e);
        if ((a >> 16) == hi)
            hist[a & 0xffffu]++;
    }
    uint32_t lo = 0xffffu;
    while (greater + hist[lo] < k)
        greater += hist[lo--];
    return cut_make(k, (hi << 16) | lo, greater);
}

/* Three passes with 10/11/10-bit digits and 64-bit counters, for tensors too
 * large for 32-bit counts. 0 < k < n. */
static SELECT_INLINE struct topk_cut find_wide_impl(const float *x, const float *b, bool use_b,
                                                    uint64_t n, uint64_t k)
{
    uint64_t hist[2049];

    /* Pass 1: key bits 30..21; NaNs in bucket 1024. */
    memset(hist, 0, sizeof hist);
    for (uint64_t e = 0; e < n; e++) {
        uint32_t a = key_of(x, b, use_b, e);
        hist[a > KEY_INF ? 1024u : a >> 21]++;
    }
    uint64_t non_nan = n - hist[1024];
    if (k >= non_nan) {
        if (non_nan == 0)
            return cut_make(0, KEY_INF, 0);
        k = non_nan;
    }
    uint64_t greater = 0;
    uint32_t d1 = KEY_INF >> 21;
    while (greater + hist[d1] < k)
        greater += hist[d1--];
    if (d1 == KEY_INF >> 21)
        return cut_make(k, KEY_INF, greater); /* only inf in that bucket */

    /* Pass 2: key bits 20..10 under prefix d1. */
    memset(hist, 0, sizeof hist);
    for (uint64_t e = 0; e < n; e++) {
        uint32_t a = key_of(x, b, use_b, e);
        if ((a >> 21) == d1)
            hist[(a >> 10) & 0x7ffu]++;
    }
    uint32_t d2 = 0x7ffu;
    while (greater + hist[d2] < k)
        greater += hist[d2--];
    uint32_t prefix = (d1 << 11) | d2;

    /* Pass 3: key bits 9..0 under prefix (d1, d2). */
    memset(hist, 0, sizeof hist);
    for (uint64_t e = 0; e < n; e++) {
        uint32_t a = key_of(x, b, use_b, e);
        if ((a >> 10) == prefix)
            hist[a & 0x3ffu]++;
    }
    uint32_t d3 = 0x3ffu;
    while (greater + hist[d3] < k)
        greater += hist[d3--];
    return cut_make(k, (prefix << 10) | d3, greater);
}

static struct topk_cut find_narrow(const float *x, uint64_t n, uint64_t k)
{
    return find_narrow_impl(x, NULL, false, n, k);
}

static struct topk_cut find_wide(const float *x, uint64_t n, uint64_t k)
{
    return find_wide_impl(x, NULL, false, n, k);
}

static struct topk_cut find_narrow_diff(const float *x, const float *b, uint64_t n, uint64_t k)
{
    return find_narrow_impl(x, b, true, n, k);
}

static struct topk_cut find_wide_diff(const float *x, const float *b, uint64_t n, uint64_t k)
{
    return find_wide_impl(x, b, true, n, k);
}

/* Tensors from this size on take the 64-bit-counter path. A variable so that
 * the unit test can run that path on small arrays. */
static uint64_t select_wide_from = (uint64_t)UINT32_MAX + 1;

struct topk_cut topk_find(const float *x, uint64_t n, uint64_t k)
{
    if (k > n)
        k = n;
    if (k == n) {
        /* Density 1 is the common default: one cheap pass decides it. */
        uint64_t nans, zeros;
        count_nan_zero(x, n, &nans, &zeros);
        return cut_keep_non_nan(n, nans, zeros);
    }
    if (k == 0)
        return cut_make(0, KEY_INF, 0); /* nothing kept */
    return n >= select_wide_from ? find_wide(x, n, k) : find_narrow(x, n, k);
}

/* ----- applying a cut -----
 * Entry e is kept when key > thr (and not NaN), or key == thr while fewer
 * than keep_at_threshold earlier entries equal to thr were kept. Both
 * routines walk blocks: while some threshold entries remain to be kept, a
 * block whose threshold entries all fit is taken with "key >= thr"; the one
 * block where the allowance runs out goes entry by entry; afterwards it is
 * "key > thr" only. The range loops use SSE2 where available. */

#define APPLY_BLOCK 1024u

/* Entries of x[0..n) whose key is `thr`; n <= APPLY_BLOCK. */
static uint64_t count_equal_keys(const float *x, uint64_t n, uint32_t thr)
{
    uint64_t c = 0, e = 0;
#if SELECT_SSE2
    const __m128i t = _mm_set1_epi32((int)thr), abs_mask = _mm_set1_epi32(0x7fffffff);
    __m128i acc = _mm_setzero_si128();
    for (; e + 4 <= n; e += 4) {
        __m128i a = _mm_and_si128(_mm_loadu_si128((const __m128i *)(const void *)(x + e)), abs_mask);
        acc = _mm_sub_epi32(acc, _mm_cmpeq_epi32(a, t));
    }
    c = sum_lanes(acc);
#endif
    for (; e < n; e++)
        c += key_at(x, e) == thr;
    return c;
}

/* Keeps entries with lo_key <= key <= KEY_INF: out = kept ? x : +0. */
static void apply_range(float *out, const float *x, uint64_t n, uint32_t lo_key)
{
    uint64_t e = 0;
#if SELECT_SSE2
    const __m128i lo1 = _mm_set1_epi32((int)lo_key - 1); /* lo_key >= 0 keeps this >= -1 */
    for (; e + 4 <= n; e += 4) {
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(x + e));
        _mm_storeu_si128((__m128i *)(void *)(out + e), _mm_and_si128(v, keep_lanes(v, lo1)));
    }
#endif
    for (; e < n; e++) {
        uint32_t u;
        memcpy(&u, &x[e], sizeof u);
        uint32_t a = u & 0x7fffffffu;
        uint32_t keep = (uint32_t)0 - (uint32_t)((a >= lo_key) & (a <= KEY_INF));
        u &= keep;
        memcpy(&out[e], &u, sizeof u);
    }
}

/* mask = 1 for entries with lo_key <= key <= KEY_INF, else 0. */
static void mask_range(uint8_t *mask, const float *x, uint64_t n, uint32_t lo_key)
{
    uint64_t e = 0;
#if SELECT_SSE2
    const __m128i lo1 = _mm_set1_epi32((int)lo_key - 1), one = _mm_set1_epi8(1);
    for (; e + 16 <= n; e += 16) {
        const __m128i *p = (const __m128i *)(const void *)(x + e);
        __m128i k0 = keep_lanes(_mm_loadu_si128(p + 0), lo1);
        __m128i k1 = keep_lanes(_mm_loadu_si128(p + 1), lo1);
        __m128i k2 = keep_lanes(_mm_loadu_si128(p + 2), lo1);
        __m128i k3 = keep_lanes(_mm_loadu_si128(p + 3), lo1);
        /* 0 / -1 lanes narrow to 0 / -1 bytes with signed saturation. */
        __m128i b = _mm_packs_epi16(_mm_packs_epi32(k0, k1), _mm_packs_epi32(k2, k3));
        _mm_storeu_si128((__m128i *)(void *)(mask + e), _mm_and_si128(b, one));
    }
#endif
    for (; e < n; e++) {
        uint32_t a = key_at(x, e);
        mask[e] = (uint8_t)((a >= lo_key) & (a <= KEY_INF));
    }
}

void topk_apply(float *out, const float *x, uint64_t n, const struct topk_cut *cut)
{
    if (cut->keep_all) {
        if (out != x && n > 0)
            memmove(out, x, n * sizeof *out);
        return;
    }
    uint32_t thr;
    memcpy(&thr, &cut->threshold, sizeof thr);
    thr &= 0x7fffffffu;
    uint64_t left = cut->keep_at_threshold;
    uint64_t e = 0;
    while (left > 0 && e < n) {
        uint64_t len = n - e < APPLY_BLOCK ? n - e : APPLY_BLOCK;
        uint64_t eq = count_equal_keys(x + e, len, thr);
        if (eq <= left) {
            apply_range(out + e, x + e, len, thr);
            left -= eq;
        } else {
            for (uint64_t j = e; j < e + len; j++) {
                uint32_t a = key_at(x, j);
                int keep = (a > thr && a <= KEY_INF) || (a == thr && left > 0);
                if (a == thr && left > 0)
                    left--;
                if (!keep)
                    out[j] = 0.0f;
                else if (out != x)
                    out[j] = x[j];
            }
        }
        e += len;
    }
    /* Past the allowance: strictly above the threshold (thr <= KEY_INF, so
     * thr + 1 does not wrap). */
    if (e < n)
        apply_range(out + e, x + e, n - e, thr + 1);
}

void topk_mask(uint8_t *mask, const float *x, uint64_t n, const struct topk_cut *cut)
{
    if (cut->keep_all) {
        if (n > 0)
            memset(mask, 1, n);
        return;
    }
    uint32_t thr;
    memcpy(&thr, &cut->threshold, sizeof thr);
    thr &= 0x7fffffffu;
    uint64_t left = cut->keep_at_threshold;
    uint64_t e = 0;
    while (left > 0 && e < n) {
        uint64_t len = n - e < APPLY_BLOCK ? n - e : APPLY_BLOCK;
        uint64_t eq = count_equal_keys(x + e, len, thr);
        if (eq <= left) {
            mask_range(mask + e, x + e, len, thr);
            left -= eq;
        } else {
            for (uint64_t j = e; j < e + len; j++) {
                uint32_t a = key_at(x, j);
                int keep = (a > thr && a <= KEY_INF) || (a == thr && left > 0);
                if (a == thr && left > 0)
                    left--;
                mask[j] = (uint8_t)keep;
            }
        }
        e += len;
    }
    if (e < n)
        mask_range(mask + e, x + e, n - e, thr + 1);
}

/* ===== Selection on a difference (topk_find_diff) =====
 * A sample of the keys, taken in 256 runs of consecutive entries spread
 * evenly over the tensor (a reader then reads 256 short pieces, not one
 * entry at a time), brackets the k-th largest
 * key: [lo, hi] spans the sample ranks around k/n of the sample size by six
 * standard deviations of a sampled rank. One pass then counts the keys above
 * hi and the NaNs and gathers the keys inside [lo, hi] into a list in
 * `work`. Task vectors of bf16 weights take few distinct values, each many
 * times, so the list can outgrow its room; from then on the keys are counted
 * in up to 65536 buckets of equal key width instead, each remembering
 * whether it saw more than one key (a narrow bracket is counted that way
 * from the start, one key per bucket). When the k-th largest key is inside
 * the bracket it comes from a radix select on the list, or from its bucket
 * when that bucket saw that key only. Otherwise (the sample misled, or a
 * bucket mixes keys) the two exact histogram passes run on x - b instead.
 * Only the speed depends on the sample: the cut is always the exact one. */

#define SAMPLE_MIN_N   ((uint64_t)1 << 16) /* smaller inputs: two passes */
#define SAMPLE_MAX     32768u
#define SAMPLE_MIN     4096u
#define SAMPLE_RUNS    256u  /* the sample: this many runs of consecutive entries, spread evenly */
#define GATHER_CHUNK   8192u               /* entries between flushes */
#define GATHER_SLACK   (GATHER_CHUNK + 64u)
#define BUCKETS        65536u
#define KEY_EMPTY      0xffffffffu         /* bucket key: none seen yet */
#define KEY_MIXED      0x80000000u         /* bucket key flag: more than one seen */

/* For tests: take the two exact passes even when `work` would do. */
static int select_bracket_off;

static size_t sample_size(uint64_t n)
{
    uint64_t s = n / 256;
    if (s < SAMPLE_MIN)
        s = SAMPLE_MIN;
    if (s > SAMPLE_MAX)
        s = SAMPLE_MAX;
    return (size_t)s;
}

/* Room for the list: an eighth of the entries, at least a chunk. */
static size_t list_cap(uint64_t n)
{
    return (size_t)(n / 8) > GATHER_SLACK ? (size_t)(n / 8) : GATHER_SLACK;
}

size_t topk_work_len(uint64_t n)
{
    if (n < SAMPLE_MIN_N || n / 8 > (uint64_t)(SIZE_MAX / 2))
        return 0;
    /* list (and staging) | bucket counts | bucket keys; the sample and its
     * sorting space fit in the list's room */
    return list_cap(n) + GATHER_SLACK + 2 * (size_t)BUCKETS;
}

/* Sorts s[0..len) ascending (keys below 2^31) by LSD radix with digits of
 * 11, 11 and 9 bits; `tmp` holds len entries. The result ends in `s`... or
 * in `tmp`: the returned pointer says which. */
static uint32_t *sort_keys(uint32_t *s, uint32_t *tmp, size_t len)
{
    static const unsigned shifts[3] = { 0, 11, 22 };
    size_t count[2048];
    for (int pass = 0; pass < 3; pass++) {
        const unsigned sh = shifts[pass];
        memset(count, 0, sizeof count);
        for (size_t j = 0; j < len; j++)
            count[(s[j] >> sh) & 0x7ffu]++;
        size_t pos = 0;
        for (int c = 0; c < 2048; c++) {
            size_t m = count[c];
            count[c] = pos;
            pos += m;
        }
        for (size_t j = 0; j < len; j++)
            tmp[count[(s[j] >> sh) & 0x7ffu]++] = s[j];
        uint32_t *t = s;
        s = tmp;
        tmp = t;
    }
    return s;
}

/* Where the difference x - b comes from: float32 arrays in memory (b may
 * be NULL), or, when `read` is set, a reader (topk_find_diff_read) filling
 * two buffers of READ_WINDOW entries: the passes in index order read a
 * window at a time and take GATHER_CHUNK entries from it per step (fewer,
 * larger reads), the sample reads its short runs one by one. */
struct diff_src {
    const float *x, *b;
    topk_read_fn read;
    void        *ud;
    float       *rx, *rb;
    int         *err;      /* with `read`: its first error; the passes stop at it */
    uint64_t     n;        /* with `read`: the entries there are */
    uint64_t    *win;      /* with `read`: the window the buffers hold, [win[0], win[1]) */
};

#define READ_WINDOW ((size_t)1 << 16)

/* Points *x and *b at entries [e0, e0 + len) (len <= GATHER_CHUNK); *b is
 * NULL when the difference is x alone. `ahead`: the caller goes on in
 * index order, so a read may fill the whole window. Nonzero when the
 * reader failed (or was stopped): the buffers are zeros, *s->err holds the
 * error and the caller's pass stops. */
static int src_chunk(const struct diff_src *s, uint64_t e0, size_t len, bool ahead, const float **x,
                     const float **b)
{
    if (s->read) {
        uint64_t *w = s->win;
        if (!(e0 >= w[0] && e0 + len <= w[1])) {
            size_t want = ahead ? (size_t)LM_SELECT_MIN((uint64_t)READ_WINDOW, s->n - e0) : len;
            want = want > len ? want : len;
            int rc = *s->err ? *s->err : s->read(s->ud, e0, want, s->rx, s->rb);
            if (rc) {
                *s->err = rc;
                memset(s->rx, 0, len * sizeof(float));
                memset(s->rb, 0, len * sizeof(float));
                w[0] = w[1] = 0;
                *x = s->rx;
                *b = s->rb;
                return rc;
            }
            w[0] = e0;
            w[1] = e0 + want;
        }
        *x = s->rx + (e0 - w[0]);
        *b = s->rb + (e0 - w[0]);
        return 0;
    }
    *x = s->x + e0;
    *b = s->b ? s->b + e0 : NULL;
    return 0;
}

/* The cut for k == n: one pass counting NaN and zero keys. */
static struct topk_cut src_keep_non_nan(const struct diff_src *s, uint64_t n)
{
    uint64_t nans = 0, zeros = 0;
    for (uint64_t e0 = 0; e0 < n; e0 += GATHER_CHUNK) {
        const size_t len = (size_t)LM_SELECT_MIN(n - e0, (uint64_t)GATHER_CHUNK);
        const float *x, *b;
        if (src_chunk(s, e0, len, true, &x, &b))
            break;
        for (size_t j = 0; j < len; j++) {
            const uint32_t a = diff_key(x, b, j);
            nans += a > KEY_INF;
            zeros += a == 0;
        }
    }
    return cut_keep_non_nan(n, nans, zeros);
}

/* The bracket [*lo, *hi] for the k-th largest key, from a sample in `work`
 * (2 * sample_size(n) entries). False when the sample holds a NaN: NaN-laden
 * tensors take the exact passes. */
static bool bracket_from_sample(const struct diff_src *src, uint64_t n, uint64_t k,
                                uint32_t *work, uint32_t *lo, uint32_t *hi)
{
    const size_t s = sample_size(n), run = s / SAMPLE_RUNS;
    const uint64_t stride = n / SAMPLE_RUNS;
    for (size_t r = 0; r < SAMPLE_RUNS; r++) {
        const float *x, *b;
        if (src_chunk(src, (uint64_t)r * stride + (stride - run) / 2, run, false, &x, &b))
            return false;
        for (size_t j = 0; j < run; j++) {
            uint32_t key = diff_key(x, b, j);
            if (key > KEY_INF)
                return false;
            work[r * run + j] = key;
        }
    }
    const uint32_t *sorted = sort_keys(work, work + s, s);
    /* rank from the top, 0-based, of the k-th largest in the sample */
    const double p = (double)k / (double)n;
    const double r = p * (double)s - 1.0;
    const double spread = 6.0 * sqrt((double)s * p * (1.0 - p)) + 8.0;
    const double top = r - spread, bottom = r + spread;
    *hi = top < 0.0 ? KEY_INF : sorted[s - 1 - (size_t)top];
    *lo = bottom >= (double)(s - 1) ? 0u : sorted[s - 1 - (size_t)ceil(bottom)];
    return true;
}

struct gather {
    uint64_t  greater;    /* keys in (hi, KEY_INF] */
    uint64_t  nans;       /* keys above KEY_INF */
    uint64_t  count;      /* keys in [lo, hi] */
    uint32_t  lo, hi;
    uint32_t *work;       /* the list, or the staging area for the buckets */
    size_t    listed;     /* keys in work[0 .. listed) */
    size_t    cap;        /* the list's room */
    bool      bucketed;   /* counted in buckets (else listed) */
    unsigned  shift;      /* bucket of key: (key - lo) >> shift */
    uint32_t *bucket_n;   /* keys per bucket */
    uint32_t *bucket_key; /* the bucket's key, KEY_EMPTY, or it | KEY_MIXED */
};

static void buckets_start(struct gather *g)
{
    unsigned sh = 0;
    while (((g->hi - g->lo) >> sh) >= BUCKETS)
        sh++;
    g->shift = sh;
    const size_t nb = (size_t)((g->hi - g->lo) >> sh) + 1;
    memset(g->bucket_n, 0, nb * sizeof *g->bucket_n);
    memset(g->bucket_key, 0xff, nb * sizeof *g->bucket_key);
    g->bucketed = true;
}

static void buckets_add(struct gather *g, const uint32_t *keys, size_t len)
{
    uint32_t *bn = g->bucket_n, *bk = g->bucket_key;
    const uint32_t lo = g->lo;
    const unsigned sh = g->shift;
    for (size_t j = 0; j < len; j++) {
        const uint32_t k = keys[j], i = (k - lo) >> sh, f = bk[i];
        bn[i]++;
        bk[i] = f == KEY_EMPTY ? k : (f == k ? f : f | KEY_MIXED);
    }
    g->count += len;
}

/* After each chunk: keys staged in work[0 .. listed) go to the buckets; a
 * list that outgrew its room moves to them. */
static void gather_flush(struct gather *g)
{
    if (!g->bucketed) {
        g->count = g->listed;
        if (g->listed <= g->cap)
            return;
        g->count = 0;
        buckets_start(g);
    }
    buckets_add(g, g->work, g->listed);
    g->listed = 0;
}

/* One chunk of at most GATHER_CHUNK entries, portable: counts the keys
 * above the bracket and the NaNs, lists or stages the ones inside. */
static SELECT_INLINE void gather_chunk_portable_impl(const float *x, const float *b, bool use_b,
                                                     size_t len, struct gather *g)
{
    const uint32_t lo = g->lo, hi = g->hi;
    uint32_t *work = g->work;
    uint64_t greater = 0, nans = 0;
    size_t c = g->listed;
    for (size_t e = 0; e < len; e++) {
        const uint32_t key = key_of(x, b, use_b, e);
        work[c] = key;
        c += (key >= lo) & (key <= hi);
        greater += (key > hi) & (key <= KEY_INF);
        nans += key > KEY_INF;
    }
    g->listed = c;
    g->greater += greater;
    g->nans += nans;
    gather_flush(g);
}

#if SELECT_X86
/* lut[m]: the positions of m's set bits, 3 bits each from the lowest, and
 * their number in bits 24 and up: the permutation that packs the lanes
 * selected by an 8-bit mask to the front of a vector. */
static const uint32_t gather_lut[256] = {
    0x00000000, 0x01000000, 0x01000001, 0x02000008, 0x01000002, 0x02000010,
    0x02000011, 0x03000088, 0x01000003, 0x02000018, 0x02000019, 0x030000c8,
    0x0200001a, 0x030000d0, 0x030000d1, 0x04000688, 0x01000004, 0x02000020,
    0x02000021, 0x03000108, 0x02000022, 0x03000110, 0x03000111, 0x04000888,
    0x02000023, 0x03000118, 0x03000119, 0x040008c8, 0x0300011a, 0x040008d0,
    0x040008d1, 0x05004688, 0x01000005, 0x02000028, 0x02000029, 0x03000148,
    0x0200002a, 0x03000150, 0x03000151, 0x04000a88, 0x0200002b, 0x03000158,
    0x03000159, 0x04000ac8, 0x0300015a, 0x04000ad0, 0x04000ad1, 0x05005688,
    0x0200002c, 0x03000160, 0x03000161, 0x04000b08, 0x03000162, 0x04000b10,
    0x04000b11, 0x05005888, 0x03000163, 0x04000b18, 0x04000b19, 0x050058c8,
    0x04000b1a, 0x050058d0, 0x050058d1, 0x0602c688, 0x01000006, 0x02000030,
    0x02000031, 0x03000188, 0x02000032, 0x03000190, 0x03000191, 0x04000c88,
    0x02000033, 0x03000198, 0x03000199, 0x04000cc8, 0x0300019a, 0x04000cd0,
    0x04000cd1, 0x05006688, 0x02000034, 0x030001a0, 0x030001a1, 0x04000d08,
    0x030001a2, 0x04000d10, 0x04000d11, 0x05006888, 0x030001a3, 0x04000d18,
    0x04000d19, 0x050068c8, 0x04000d1a, 0x050068d0, 0x050068d1, 0x06034688,
    0x02000035, 0x030001a8, 0x030001a9, 0x04000d48, 0x030001aa, 0x04000d50,
    0x04000d51, 0x05006a88, 0x030001ab, 0x04000d58, 0x04000d59, 0x05006ac8,
    0x04000d5a, 0x05006ad0, 0x05006ad1, 0x06035688, 0x030001ac, 0x04000d60,
    0x04000d61, 0x05006b08, 0x04000d62, 0x05006b10, 0x05006b11, 0x06035888,
    0x04000d63, 0x05006b18, 0x05006b19, 0x060358c8, 0x05006b1a, 0x060358d0,
    0x060358d1, 0x071ac688, 0x01000007, 0x02000038, 0x02000039, 0x030001c8,
    0x0200003a, 0x030001d0, 0x030001d1, 0x04000e88, 0x0200003b, 0x030001d8,
    0x030001d9, 0x04000ec8, 0x030001da, 0x04000ed0, 0x04000ed1, 0x05007688,
    0x0200003c, 0x030001e0, 0x030001e1, 0x04000f08, 0x030001e2, 0x04000f10,
    0x04000f11, 0x05007888, 0x030001e3, 0x04000f18, 0x04000f19, 0x050078c8,
    0x04000f1a, 0x050078d0, 0x050078d1, 0x0603c688, 0x0200003d, 0x030001e8,
    0x030001e9, 0x04000f48, 0x030001ea, 0x04000f50, 0x04000f51, 0x05007a88,
    0x030001eb, 0x04000f58, 0x04000f59, 0x05007ac8, 0x04000f5a, 0x05007ad0,
    0x05007ad1, 0x0603d688, 0x030001ec, 0x04000f60, 0x04000f61, 0x05007b08,
    0x04000f62, 0x05007b10, 0x05007b11, 0x0603d888, 0x04000f63, 0x05007b18,
    0x05007b19, 0x0603d8c8, 0x05007b1a, 0x0603d8d0, 0x0603d8d1, 0x071ec688,
    0x0200003e, 0x030001f0, 0x030001f1, 0x04000f88, 0x030001f2, 0x04000f90,
    0x04000f91, 0x05007c88, 0x030001f3, 0x04000f98, 0x04000f99, 0x05007cc8,
    0x04000f9a, 0x05007cd0, 0x05007cd1, 0x0603e688, 0x030001f4, 0x04000fa0,
    0x04000fa1, 0x05007d08, 0x04000fa2, 0x05007d10, 0x05007d11, 0x0603e888,
    0x04000fa3, 0x05007d18, 0x05007d19, 0x0603e8c8, 0x05007d1a, 0x0603e8d0,
    0x0603e8d1, 0x071f4688, 0x030001f5, 0x04000fa8, 0x04000fa9, 0x05007d48,
    0x04000faa, 0x05007d50, 0x05007d51, 0x0603ea88, 0x04000fab, 0x05007d58,
    0x05007d59, 0x0603eac8, 0x05007d5a, 0x0603ead0, 0x0603ead1, 0x071f5688,
    0x04000fac, 0x05007d60, 0x05007d61, 0x0603eb08, 0x05007d62, 0x0603eb10,
    0x0603eb11, 0x071f5888, 0x05007d63, 0x0603eb18, 0x0603eb19, 0x071f58c8,
    0x0603eb1a, 0x071f58d0, 0x071f58d1, 0x08fac688,
};

/* The chunk with AVX2: eight keys at a time, the ones inside the bracket
 * packed to the front of a vector and stored at the end of the list. */
SELECT_AVX2_TARGET
static SELECT_INLINE void gather_chunk_avx2_impl(const float *x, const float *b, bool use_b,
                                                 size_t len, struct gather *g)
{
    const uint32_t lo = g->lo, hi = g->hi;
    uint32_t *work = g->work;
    const __m256i abs_mask = _mm256_set1_epi32(0x7fffffff);
    const __m256i inf = _mm256_set1_epi32((int)KEY_INF);
    const __m256i lo1 = _mm256_set1_epi32((int)lo - 1); /* lo >= 0: no wrap below -1 */
    const __m256i hiv = _mm256_set1_epi32((int)hi);
    const __m256i shifts = _mm256_setr_epi32(0, 3, 6, 9, 12, 15, 18, 21);
    const __m256i seven = _mm256_set1_epi32(7);
    __m256i cg = _mm256_setzero_si256(), cn = _mm256_setzero_si256();
    size_t c = g->listed, e = 0;
    for (; e + 8 <= len; e += 8) {
        __m256 v = _mm256_loadu_ps(x + e);
        if (use_b)
            v = _mm256_sub_ps(v, _mm256_loadu_ps(b + e));
        const __m256i key = _mm256_and_si256(_mm256_castps_si256(v), abs_mask);
        const __m256i is_nan = _mm256_cmpgt_epi32(key, inf);
        const __m256i above = _mm256_cmpgt_epi32(key, hiv);
        const __m256i in = _mm256_andnot_si256(above, _mm256_cmpgt_epi32(key, lo1));
        cg = _mm256_sub_epi32(cg, _mm256_andnot_si256(is_nan, above));
        cn = _mm256_sub_epi32(cn, is_nan);
        const uint32_t l = gather_lut[_mm256_movemask_ps(_mm256_castsi256_ps(in))];
        const __m256i perm = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)l), shifts),
                                              seven);
        _mm256_storeu_si256((__m256i *)(void *)(work + c), _mm256_permutevar8x32_epi32(key, perm));
        c += l >> 24;
    }
    uint32_t lg[8], ln[8];
    _mm256_storeu_si256((__m256i *)(void *)lg, cg);
    _mm256_storeu_si256((__m256i *)(void *)ln, cn);
    uint64_t greater = 0, nans = 0;
    for (int i = 0; i < 8; i++) {
        greater += lg[i];
        nans += ln[i];
    }
    for (; e < len; e++) {
        const uint32_t key = key_of(x, b, use_b, e);
        work[c] = key;
        c += (key >= lo) & (key <= hi);
        greater += (key > hi) & (key <= KEY_INF);
        nans += key > KEY_INF;
    }
    g->listed = c;
    g->greater += greater;
    g->nans += nans;
    gather_flush(g);
}

SELECT_AVX2_TARGET
static void gather_chunk_avx2_diff(const float *x, const float *b, size_t len, struct gather *g)
{
    gather_chunk_avx2_impl(x, b, true, len, g);
}

SELECT_AVX2_TARGET
static void gather_chunk_avx2_plain(const float *x, size_t len, struct gather *g)
{
    gather_chunk_avx2_impl(x, NULL, false, len, g);
}
#endif

/* Entries x[0 .. len) (- b) into `g`; len <= GATHER_CHUNK. */
static void gather_chunk(const float *x, const float *b, size_t len, bool avx2, struct gather *g)
{
#if SELECT_X86
    if (avx2) {
        if (b)
            gather_chunk_avx2_diff(x, b, len, g);
        else
            gather_chunk_avx2_plain(x, len, g);
        return;
    }
#else
    (void)avx2;
#endif
    if (b)
        gather_chunk_portable_impl(x, b, true, len, g);
    else
        gather_chunk_portable_impl(x, NULL, false, len, g);
}

/* The kk-th largest of the keys c[0..len) (1 <= kk <= len), all in
 * [lo, hi], and how many keys are above it. Radix select on the bits in
 * which lo and hi differ (the others are shared), 11 at a time from the
 * top: each round counts the digits of the keys that share the prefix
 * found so far, finds the digit holding the kk-th largest, and moves those
 * keys to the front (c is reordered; the list is scratch). */
static void select_in_keys(uint32_t *c, size_t len, uint64_t kk, uint32_t lo, uint32_t hi,
                           uint32_t *thr, uint64_t *above)
{
    unsigned bits = 0;
    while (bits < 32 && ((lo ^ hi) >> bits) != 0)
        bits++;
    uint64_t count[2048];
    uint64_t greater = 0;
    uint32_t prefix = bits < 32 ? lo >> bits << bits : 0;
    while (bits > 0) {
        const unsigned width = bits < 11 ? bits : 11;
        const unsigned sh = bits - width;
        const uint32_t mask = (1u << width) - 1;
        memset(count, 0, (size_t)(mask + 1) * sizeof count[0]);
        for (size_t j = 0; j < len; j++)
            count[(c[j] >> sh) & mask]++;
        uint32_t digit = mask;
        while (greater + count[digit] < kk)
            greater += count[digit--];
        prefix |= digit << sh;
        bits = sh;
        if (count[digit] == len)
            continue; /* every key has this digit: nothing to drop */
        size_t w = 0;
        for (size_t j = 0; j < len; j++) {
            c[w] = c[j];
            w += ((c[j] >> sh) & mask) == digit;
        }
        len = w;
    }
    *thr = prefix;
    *above = greater;
}

/* Sets `g` up for the sampled bracket's way to the cut (0 < k < n) with
 * `work` of work_len entries: false when it does not apply (short work
 * space, NaN in the sample). */
static bool bracket_begin(const struct diff_src *src, uint64_t n, uint64_t k, uint32_t *work,
                          size_t work_len, struct gather *g)
{
    const size_t need = topk_work_len(n);
    memset(g, 0, sizeof *g);
    if (select_bracket_off || need == 0 || !work || work_len < need ||
        !bracket_from_sample(src, n, k, work, &g->lo, &g->hi))
        return false;
    g->work = work;
    g->cap = list_cap(n);
    g->bucket_n = work + g->cap + GATHER_SLACK;
    g->bucket_key = g->bucket_n + BUCKETS;
    if (g->hi - g->lo < BUCKETS)
        buckets_start(g); /* one key per bucket */
    return true;
}

/* The cut from a completed gathering pass: false when the k-th key is
 * outside the bracket or its bucket mixes keys. */
static bool bracket_end(struct gather *g, uint64_t n, uint64_t k, struct topk_cut *cut)
{
    const uint64_t non_nan = n - g->nans;
    if (non_nan == 0) {
        *cut = cut_make(0, KEY_INF, 0);
        return true;
    }
    const uint64_t kk = k < non_nan ? k : non_nan; /* as find_narrow does */
    if (!(g->greater < kk && kk <= g->greater + g->count))
        return false;
    uint32_t thr;
    uint64_t above;
    if (g->bucketed) {
        /* down from the top bucket to the one that reaches kk */
        uint64_t acc = g->greater;
        uint32_t i = (g->hi - g->lo) >> g->shift;
        while (acc + g->bucket_n[i] < kk)
            acc += g->bucket_n[i--];
        if (g->bucket_key[i] & KEY_MIXED)
            return false;
        thr = g->bucket_key[i];
        above = acc;
    } else {
        select_in_keys(g->work, (size_t)g->count, kk - g->greater, g->lo, g->hi, &thr, &above);
        above += g->greater;
    }
    *cut = cut_make(kk, thr, above);
    return true;
}

/* The sampled bracket's way to the cut for 0 < k < n: false when it does
 * not apply. */
static bool find_bracketed(const struct diff_src *src, uint64_t n, uint64_t k, uint32_t *work,
                           size_t work_len, struct topk_cut *cut)
{
    struct gather g;
    if (!bracket_begin(src, n, k, work, work_len, &g))
        return false;
    const bool avx2 = merge_simd_avx2();
    for (uint64_t e0 = 0; e0 < n; e0 += GATHER_CHUNK) {
        const size_t len = (size_t)LM_SELECT_MIN(n - e0, (uint64_t)GATHER_CHUNK);
        const float *x, *b;
        if (src_chunk(src, e0, len, true, &x, &b))
            return false;
        gather_chunk(x, b, len, avx2, &g);
    }
    return bracket_end(&g, n, k, cut);
}

/* The exact two passes (topk_find's) on x - b. */
static struct topk_cut find_exact_diff(const float *x, const float *b, uint64_t n, uint64_t k)
{
    if (!b)
        return n >= select_wide_from ? find_wide(x, n, k) : find_narrow(x, n, k);
    return n >= select_wide_from ? find_wide_diff(x, b, n, k) : find_narrow_diff(x, b, n, k);
}

/* topk_find_diff's way to the cut of src's difference short of the exact
 * passes: false when they are needed. */
static bool find_diff_quick(const struct diff_src *src, uint64_t n, uint64_t k, uint32_t *work,
                            size_t work_len, struct topk_cut *cut)
{
    if (k == n) {
        *cut = src_keep_non_nan(src, n);
        return true;
    }
    if (k == 0) {
        *cut = cut_make(0, KEY_INF, 0);
        return true;
    }
    return find_bracketed(src, n, k, work, work_len, cut);
}

struct topk_cut topk_find_diff(const float *x, const float *b, uint64_t n, uint64_t k,
                               uint32_t *work, size_t work_len)
{
    if (k > n)
        k = n;
    const struct diff_src src = { .x = x, .b = b };
    struct topk_cut cut;
    if (find_diff_quick(&src, n, k, work, work_len, &cut))
        return cut;
    return find_exact_diff(x, b, n, k);
}

/* ===== Selection on a difference read in blocks (topk_find_diff_read) =====
 * The same cut as topk_find_diff, for inputs that are not float32 arrays
 * in memory (bf16 weights in a mapped file): the sample reads its entries
 * one by one, the gathering pass and the exact passes read GATHER_CHUNK
 * entries at a time into two small buffers. The cut is a function of the
 * keys alone, so every way to it gives the same one. */

/* The exact cut by three histogram passes (find_wide's digits), read in
 * chunks. 0 < k < n. */
static struct topk_cut find_exact_read(const struct diff_src *src, uint64_t n, uint64_t k)
{
    uint64_t hist[2049];
    static const unsigned shift[3] = { 21, 10, 0 };
    static const uint32_t mask[3] = { 0x3ffu, 0x7ffu, 0x3ffu };
    uint32_t prefix = 0;
    uint64_t greater = 0;
    for (int pass = 0; pass < 3; pass++) {
        memset(hist, 0, sizeof hist);
        const unsigned sh = shift[pass], psh = pass == 0 ? 32 : shift[pass - 1];
        for (uint64_t e0 = 0; e0 < n; e0 += GATHER_CHUNK) {
            const size_t len = (size_t)LM_SELECT_MIN(n - e0, (uint64_t)GATHER_CHUNK);
            const float *x, *b;
            if (src_chunk(src, e0, len, true, &x, &b))
                return cut_make(0, KEY_INF, 0);
            for (size_t j = 0; j < len; j++) {
                const uint32_t a = diff_key(x, b, j);
                if (pass == 0)
                    hist[a > KEY_INF ? 1024u : a >> 21]++;
                else if (a <= KEY_INF && (a >> psh) == prefix)
                    hist[(a >> sh) & mask[pass]]++;
            }
        }
        if (pass == 0) {
            const uint64_t non_nan = n - hist[1024];
            if (k >= non_nan) {
                if (non_nan == 0)
                    return cut_make(0, KEY_INF, 0);
                k = non_nan;
            }
        }
        uint32_t d = pass == 0 ? KEY_INF >> 21 : mask[pass];
        while (greater + hist[d] < k)
            greater += hist[d--];
        prefix = pass == 0 ? d : (prefix << (pass == 1 ? 11 : 10)) | d;
        if (pass == 0 && d == KEY_INF >> 21)
            return cut_make(k, KEY_INF, greater);
    }
    return cut_make(k, prefix, greater);
}

int topk_find_diff_read(topk_read_fn read, void *ud, uint64_t n, uint64_t k, uint32_t *work,
                        size_t work_len, struct topk_cut *cut)
{
    if (k > n)
        k = n;
    if (k == 0) {
        *cut = cut_make(0, KEY_INF, 0);
        return 0;
    }
    float *buf = malloc(2 * READ_WINDOW * sizeof(float));
    if (!buf)
        return lm_err(LM_ENOMEM, "top-k selection: %zu bytes of buffers",
                      2 * READ_WINDOW * sizeof(float));
    int err = 0;
    uint64_t win[2] = { 0, 0 };
    const struct diff_src src = { .read = read, .ud = ud, .rx = buf, .rb = buf + READ_WINDOW,
                                  .err = &err, .n = n, .win = win };
    if (!find_diff_quick(&src, n, k, work, work_len, cut) && !err)
        *cut = find_exact_read(&src, n, k);
    free(buf);
    return err;
}

/* ===== Several differences against one b (topk_find_diffs_read) ===== */

/* One difference of a topk_source_fn, as a topk_read_fn. */
struct one_diff {
    topk_source_fn read;
    void *ud;
    int src;
};

static int read_one_diff(void *ud, uint64_t e0, size_t len, float *x, float *b)
{
    const struct one_diff *o = ud;
    int rc = o->read(o->ud, o->src, e0, len, x);
    return rc ? rc : o->read(o->ud, 0, e0, len, b);
}

int topk_find_diffs_read(topk_source_fn read, void *ud, uint64_t n, int m, const int *src,
                         const uint64_t *k, uint32_t *const *work, size_t work_len,
                         struct topk_cut *cut)
{
    LM_ASSERT(m >= 0 && m <= TOPK_MAX_DIFFS);
    struct one_diff od[TOPK_MAX_DIFFS];
    struct gather g[TOPK_MAX_DIFFS];
    bool gathering[TOPK_MAX_DIFFS], done[TOPK_MAX_DIFFS];
    uint64_t kk[TOPK_MAX_DIFFS], win[TOPK_MAX_DIFFS][2];
    float *buf = malloc((size_t)(1 + m) * READ_WINDOW * sizeof(float));
    if (!buf)
        return lm_err(LM_ENOMEM, "top-k selection: %zu bytes of buffers",
                      (size_t)(1 + m) * READ_WINDOW * sizeof(float));
    float *rb = buf;
    int err = 0, n_gathering = 0;
    /* each difference's sample and bracket; k = 0 needs no look */
    for (int j = 0; j < m && !err; j++) {
        od[j] = (struct one_diff){ .read = read, .ud = ud, .src = src[j] };
        kk[j] = k[j] < n ? k[j] : n;
        gathering[j] = done[j] = false;
        if (kk[j] == 0) {
            cut[j] = cut_make(0, KEY_INF, 0);
            done[j] = true;
            continue;
        }
        if (kk[j] == n)
            continue;
        win[j][0] = win[j][1] = 0;
        const struct diff_src one = { .read = read_one_diff, .ud = &od[j],
                                      .rx = buf + (size_t)(1 + j) * READ_WINDOW, .rb = rb,
                                      .err = &err, .n = n, .win = win[j] };
        gathering[j] = bracket_begin(&one, n, kk[j], work[j], work_len, &g[j]);
        n_gathering += gathering[j];
    }
    /* one gathering pass for all: b's window once, then each x's */
    const bool avx2 = merge_simd_avx2();
    for (uint64_t w0 = 0; n_gathering > 0 && !err && w0 < n; w0 += READ_WINDOW) {
        const size_t wl = (size_t)LM_SELECT_MIN((uint64_t)READ_WINDOW, n - w0);
        err = read(ud, 0, w0, wl, rb);
        for (int j = 0; j < m && !err; j++)
            if (gathering[j])
                err = read(ud, src[j], w0, wl, buf + (size_t)(1 + j) * READ_WINDOW);
        for (size_t o = 0; !err && o < wl; o += GATHER_CHUNK) {
            const size_t len = LM_SELECT_MIN(wl - o, (size_t)GATHER_CHUNK);
            for (int j = 0; j < m; j++)
                if (gathering[j])
                    gather_chunk(buf + (size_t)(1 + j) * READ_WINDOW + o, rb + o, len, avx2, &g[j]);
        }
    }
    for (int j = 0; j < m && !err; j++)
        if (gathering[j])
            done[j] = bracket_end(&g[j], n, kk[j], &cut[j]);
    /* the rest (k = n, a misleading sample) one at a time, as alone */
    for (int j = 0; j < m && !err; j++)
        if (!done[j])
            err = topk_find_diff_read(read_one_diff, &od[j], n, k[j], work[j], work_len, &cut[j]);
    free(buf);
    return err;
}

/* ===== Walking a cut a block at a time ===== */

void topk_walk_init(struct topk_walk *w, const struct topk_cut *cut)
{
    uint32_t t;
    memcpy(&t, &cut->threshold, sizeof t);
    w->thr = t & 0x7fffffffu;
    w->left = cut->keep_at_threshold;
}

#if SELECT_X86
SELECT_AVX2_TARGET
static uint64_t count_equal_diff_avx2(const float *x, const float *b, size_t len, uint32_t thr)
{
    const __m256i t = _mm256_set1_epi32((int)thr), abs_mask = _mm256_set1_epi32(0x7fffffff);
    __m256i acc = _mm256_setzero_si256();
    size_t j = 0;
    for (; j + 8 <= len; j += 8) {
        __m256 v = _mm256_loadu_ps(x + j);
        if (b)
            v = _mm256_sub_ps(v, _mm256_loadu_ps(b + j));
        const __m256i a = _mm256_and_si256(_mm256_castps_si256(v), abs_mask);
        acc = _mm256_sub_epi32(acc, _mm256_cmpeq_epi32(a, t));
    }
    uint32_t l[8];
    _mm256_storeu_si256((__m256i *)(void *)l, acc);
    uint64_t c = 0;
    for (int i = 0; i < 8; i++)
        c += l[i];
    for (; j < len; j++)
        c += diff_key(x, b, j) == thr;
    return c;
}
#endif

/* Entries of the block whose key is `thr`. */
static uint64_t count_equal_diff(const float *x, const float *b, size_t len, uint32_t thr)
{
#if SELECT_X86
    if (merge_simd_avx2())
        return count_equal_diff_avx2(x, b, len, thr);
#endif
    uint64_t c = 0;
    size_t j = 0;
#if SELECT_SSE2
    const __m128i t = _mm_set1_epi32((int)thr), abs_mask = _mm_set1_epi32(0x7fffffff);
    __m128i acc = _mm_setzero_si128();
    for (; j + 4 <= len; j += 4) {
        __m128 v = _mm_loadu_ps(x + j);
        if (b)
            v = _mm_sub_ps(v, _mm_loadu_ps(b + j));
        __m128i a = _mm_and_si128(_mm_castps_si128(v), abs_mask);
        acc = _mm_sub_epi32(acc, _mm_cmpeq_epi32(a, t));
    }
    c = sum_lanes(acc);
#endif
    for (; j < len; j++)
        c += diff_key(x, b, j) == thr;
    return c;
}

uint64_t topk_count_equal_diff(const float *x, const float *b, uint64_t n, uint32_t key)
{
    /* in chunks: the vector counters are 32-bit lanes */
    const uint64_t chunk = (uint64_t)1 << 20;
    uint64_t c = 0;
    for (uint64_t e0 = 0; e0 < n; e0 += chunk) {
        const size_t len = (size_t)(n - e0 < chunk ? n - e0 : chunk);
        c += count_equal_diff(x + e0, b ? b + e0 : NULL, len, key & 0x7fffffffu);
    }
    return c;
}

int64_t topk_walk_block(struct topk_walk *w, const float *x, const float *b, size_t len)
{
    if (w->left == 0)
        return -1;
    const uint64_t eq = count_equal_diff(x, b, len, w->thr);
    if (eq <= w->left) {
        w->left -= eq;
        return (int64_t)len - 1;
    }
    /* The allowance runs out in this block: find where. */
    uint64_t seen = 0;
    for (size_t j = 0; j < len; j++) {
        if (diff_key(x, b, j) != w->thr)
            continue;
        if (seen == w->left) {
            w->left = 0;
            return (int64_t)j - 1;
        }
        seen++;
    }
    LM_ASSERT(0 && "topk_walk_block: count and scan disagree");
    return -1;
}

/* ===== For tests ===== */

uint64_t topk_test_wide_from(uint64_t n)
{
    uint64_t old = select_wide_from;
    select_wide_from = n;
    return old;
}

int topk_test_bracket_off(int off)
{
    int old = select_bracket_off;
    select_bracket_off = off;
    return old;
}

bool topk_test_bracketed(const float *x, const float *b, uint64_t n, uint64_t k, uint32_t *work,
                         size_t work_len, struct topk_cut *cut)
{
    const struct diff_src src = { .x = x, .b = b };
    return find_bracketed(&src, n, k, work, work_len, cut);
}

bool topk_test_sampled(uint64_t n, uint64_t e)
{
    if (n < SAMPLE_MIN_N)
        return false;
    const size_t run = sample_size(n) / SAMPLE_RUNS;
    const uint64_t stride = n / SAMPLE_RUNS, r = e / stride, start = r * stride + (stride - run) / 2;
    return r < SAMPLE_RUNS && e >= start && e < start + run;
}
