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
 * elsewhere; select results do not depend on which ran. */
#include "select.h"

#include <string.h>

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

/* Two passes with 16-bit digits and 32-bit counters: n <= UINT32_MAX.
 * 0 < k < n. The histogram (256 KiB) lives on the stack. */
static struct topk_cut find_narrow(const float *x, uint64_t n, uint64_t k)
{
    uint32_t hist[1u << 16];

    /* Pass 1: high halves of the keys; NaNs go to their own bucket. */
    memset(hist, 0, (HI_BUCKETS + 1) * sizeof hist[0]);
    for (uint64_t e = 0; e < n; e++) {
        uint32_t a = key_at(x, e);
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
        uint32_t a = key_at(x, e);
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
static struct topk_cut find_wide(const float *x, uint64_t n, uint64_t k)
{
    uint64_t hist[2049];

    /* Pass 1: key bits 30..21; NaNs in bucket 1024. */
    memset(hist, 0, sizeof hist);
    for (uint64_t e = 0; e < n; e++) {
        uint32_t a = key_at(x, e);
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
        uint32_t a = key_at(x, e);
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
        uint32_t a = key_at(x, e);
        if ((a >> 10) == prefix)
            hist[a & 0x3ffu]++;
    }
    uint32_t d3 = 0x3ffu;
    while (greater + hist[d3] < k)
        greater += hist[d3--];
    return cut_make(k, (prefix << 10) | d3, greater);
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
        if (nans == 0)
            return cut_all_non_nan(n, zeros, true);
        if (nans == n)
            return cut_make(0, KEY_INF, 0);
        return cut_all_non_nan(n - nans, zeros, false);
    }
    if (k == 0) {
        struct topk_cut none = { .k = 0, .threshold = key_to_float(KEY_INF),
                                 .keep_at_threshold = 0, .keep_all = false };
        return none;
    }
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
