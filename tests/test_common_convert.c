/* dtype conversion: exhaustive round trips of every BF16 and F16 pattern,
 * ties-to-even cases picked by hand, the vector path against the scalar one
 * bit for bit (random patterns, odd lengths, unaligned buffers), and a
 * throughput line for BF16 -> F32. */
#include "convert.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lm_error.h"
#include "test.h"

static uint64_t rng_state = 0x243f6a8885a308d3u;

static uint64_t rng_next(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1du;
}

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int bf16_is_nan(uint16_t h) { return (h & 0x7fffu) > 0x7f80u; }
static int f16_is_nan(uint16_t h) { return (h & 0x7fffu) > 0x7c00u; }

/* Every 16-bit pattern widens exactly and narrows back to itself; NaNs come
 * back as NaNs of the same sign. */
static void test_round_trips(void)
{
    int bf_ok = 1, bf_nan_ok = 1, f16_ok = 1, f16_nan_ok = 1, f16_value_ok = 1;
    for (uint32_t i = 0; i < 65536; i++) {
        uint16_t h = (uint16_t)i;
        uint16_t b = lm_f32_to_bf16(lm_bf16_to_f32(h));
        if (bf16_is_nan(h))
            bf_nan_ok &= bf16_is_nan(b) && (b & 0x8000u) == (h & 0x8000u) && isnan(lm_bf16_to_f32(h));
        else
            bf_ok &= b == h;

        float w = lm_f16_to_f32(h);
        uint16_t f = lm_f32_to_f16(w);
        if (f16_is_nan(h)) {
            /* Quiet bit set, payload and sign kept. */
            f16_nan_ok &= isnan(w) && f == (h | 0x0200u);
        } else {
            f16_ok &= f == h;
            /* The widened value is the IEEE value: sign * mant * 2^(exp-25). */
            int exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
            double v = exp == 0x1f ? INFINITY
                     : exp == 0 ? ldexp(mant, -24) : ldexp(mant + 1024, exp - 25);
            if (h & 0x8000u)
                v = -v;
            f16_value_ok &= (double)w == v && !signbit(w) == !signbit(v);
        }
    }
    TEST_COND("all 65536 BF16 patterns except NaN survive f32 and back", bf_ok);
    TEST_COND("BF16 NaNs widen to NaN and narrow to a NaN of the same sign", bf_nan_ok);
    TEST_COND("all 65536 F16 patterns except NaN survive f32 and back", f16_ok);
    TEST_COND("F16 widening gives the exact IEEE value (subnormals, zeros, inf)", f16_value_ok);
    TEST_COND("F16 NaNs come back as the same NaN with the quiet bit set", f16_nan_ok);
}

struct narrow_case {
    uint32_t in;
    uint16_t out;
    const char *what;
};

static void test_rounding(void)
{
    static const struct narrow_case bf[] = {
        { 0x3f808000u, 0x3f80u, "1 + 2^-8 (tie) -> 1.0 (even)" },
        { 0x3f818000u, 0x3f82u, "tie above an odd mantissa rounds up" },
        { 0x3f808001u, 0x3f81u, "just above the tie rounds up" },
        { 0x3f807fffu, 0x3f80u, "just below the tie rounds down" },
        { 0xbf818000u, 0xbf82u, "negative tie to even" },
        { 0x7f7fffffu, 0x7f80u, "FLT_MAX rounds to +inf" },
        { 0x7f7f7fffu, 0x7f7fu, "largest value below the overflow tie stays finite" },
        { 0xff800000u, 0xff80u, "-inf stays -inf" },
        { 0x00000001u, 0x0000u, "smallest f32 subnormal -> +0" },
        { 0x80000000u, 0x8000u, "-0 stays -0" },
        { 0x7f800001u, 0x7fc0u, "signalling NaN -> quiet NaN" },
        { 0xffc12345u, 0xffc0u, "negative NaN keeps its sign" },
    };
    int ok = 1;
    for (size_t i = 0; i < LM_ARRAY_SIZE(bf); i++) {
        uint16_t got = lm_f32_to_bf16(bits_f32(bf[i].in));
        if (got != bf[i].out) {
            printf("      bf16: %08x -> %04x, expected %04x (%s)\n", bf[i].in, got, bf[i].out, bf[i].what);
            ok = 0;
        }
    }
    char descr[128];
    snprintf(descr, sizeof descr, "F32 -> BF16 ties to even, overflow, zeros and NaNs (%zu hand cases)",
             LM_ARRAY_SIZE(bf));
    TEST_COND(descr, ok);

    static const struct narrow_case f16[] = {
        { 0x477ff000u, 0x7c00u, "65520 (tie above 65504) -> +inf" },
        { 0x477fefffu, 0x7bffu, "just below 65520 -> 65504" },
        { 0x477fef00u, 0x7bffu, "65519 -> 65504" },
        { 0x477fe000u, 0x7bffu, "65504 exact" },
        { 0xc77ff000u, 0xfc00u, "-65520 -> -inf" },
        { 0x33000000u, 0x0000u, "2^-25 (half the smallest subnormal, tie) -> 0" },
        { 0xb3000000u, 0x8000u, "-2^-25 -> -0" },
        { 0x33000001u, 0x0001u, "just above 2^-25 -> smallest subnormal" },
        { 0x33400000u, 0x0001u, "3 * 2^-26 (0.75 of 2^-24) -> smallest subnormal" },
        { 0x33c00000u, 0x0002u, "3 * 2^-25 (1.5 units of 2^-24, tie) -> 2 (even)" },
        { 0x34200000u, 0x0002u, "5 * 2^-25 (2.5 units, tie) -> 2 (even)" },
        { 0x34600000u, 0x0004u, "7 * 2^-25 (3.5 units, tie) -> 4 (even)" },
        { 0x33800000u, 0x0001u, "2^-24 exact -> smallest subnormal" },
        { 0x387fc000u, 0x03ffu, "largest subnormal (1023 units) exact" },
        { 0x387fe000u, 0x0400u, "1023.5 units (tie) -> 2^-14, the smallest normal (even)" },
        { 0x387fdfffu, 0x03ffu, "just below that tie -> largest subnormal" },
        { 0x38800000u, 0x0400u, "2^-14 smallest normal" },
        { 0x3f801000u, 0x3c00u, "1 + 2^-11 (tie) -> 1.0 (even)" },
        { 0x3f803000u, 0x3c02u, "1 + 3 * 2^-11 (tie) -> up to even" },
        { 0x3f800fffu, 0x3c00u, "just below a tie rounds down" },
        { 0x3f801001u, 0x3c01u, "just above a tie rounds up" },
        { 0x00000001u, 0x0000u, "f32 subnormal -> +0" },
        { 0x80000000u, 0x8000u, "-0 stays -0" },
        { 0x7f800000u, 0x7c00u, "+inf" },
        { 0x7f802000u, 0x7e01u, "signalling NaN: quieted, payload top bits kept" },
        { 0xffc00000u, 0xfe00u, "negative quiet NaN keeps its sign" },
    };
    ok = 1;
    for (size_t i = 0; i < LM_ARRAY_SIZE(f16); i++) {
        uint16_t got = lm_f32_to_f16(bits_f32(f16[i].in));
        if (got != f16[i].out) {
            printf("      f16: %08x -> %04x, expected %04x (%s)\n", f16[i].in, got, f16[i].out, f16[i].what);
            ok = 0;
        }
    }
    snprintf(descr, sizeof descr, "F32 -> F16 ties to even, overflow at 65520, subnormals, NaNs (%zu hand cases)",
             LM_ARRAY_SIZE(f16));
    TEST_COND(descr, ok);
}

/* Converts with the current path into fresh buffers at byte offset `skew`
 * (so that sources and destinations are also unaligned). */
static void convert_all(const float *src32, const uint16_t *src16, size_t n, size_t skew,
                        uint16_t *bf_out, uint16_t *h_out, float *bf_wide, float *h_wide)
{
    unsigned char *s16 = malloc(2 * n + 8), *d16 = malloc(2 * n + 8);
    unsigned char *s32 = malloc(4 * n + 8);
    memcpy(s16 + skew, src16, 2 * n);
    memcpy(s32 + 4 * (skew & 1), src32, 4 * n); /* floats stay 4-aligned */

    lm_convert_from_f32(d16 + skew, LM_DTYPE_BF16, (const float *)(void *)(s32 + 4 * (skew & 1)), n);
    memcpy(bf_out, d16 + skew, 2 * n);
    lm_convert_from_f32(d16 + skew, LM_DTYPE_F16, (const float *)(void *)(s32 + 4 * (skew & 1)), n);
    memcpy(h_out, d16 + skew, 2 * n);
    lm_convert_to_f32(bf_wide, s16 + skew, LM_DTYPE_BF16, n);
    lm_convert_to_f32(h_wide, s16 + skew, LM_DTYPE_F16, n);
    free(s16);
    free(d16);
    free(s32);
}

static int same_bits(const void *a, const void *b, size_t bytes)
{
    return memcmp(a, b, bytes) == 0;
}

static void test_vector_vs_scalar(void)
{
    const size_t n = 1000000;
    float *src32 = malloc(n * sizeof *src32);
    uint16_t *src16 = malloc(n * sizeof *src16);
    for (size_t i = 0; i < n; i++) {
        uint64_t r = rng_next();
        uint32_t u = (uint32_t)r;
        switch ((r >> 32) % 8) {
        case 0: u = (u & 0x807fffffu) | 0x7f800000u; break;  /* inf / NaN, both signs */
        case 1: u &= 0x807fffffu; break;                      /* f32 subnormal / zero */
        case 2: u = (u & 0x8001ffffu) | 0x33000000u; break;   /* near f16 subnormal ties */
        case 3: u = (u & 0x80000000u) | (0x477fe000u + (u & 0x3fffu)); break; /* near 65520 */
        case 4: u = (u & 0xffff8000u) | ((r >> 40) & 1u ? 0x8000u : 0x7fffu); break; /* bf16 ties */
        default: break;                                        /* anything */
        }
        src32[i] = bits_f32(u);
        src16[i] = (uint16_t)(r >> 48);
    }
    for (uint32_t i = 0; i < 65536 && i < n; i++)
        src16[i] = (uint16_t)i; /* every 16-bit pattern at least once */

    const char *impl = lm_convert_impl_name();
    uint16_t *bf_v = malloc(n * 2), *h_v = malloc(n * 2), *bf_s = malloc(n * 2), *h_s = malloc(n * 2);
    float *bw_v = malloc(n * 4), *hw_v = malloc(n * 4), *bw_s = malloc(n * 4), *hw_s = malloc(n * 4);

    convert_all(src32, src16, n, 0, bf_v, h_v, bw_v, hw_v);
    int prev = lm_convert_force_scalar(1);
    TEST_COND("lm_convert_force_scalar(1) selects the scalar path",
              strcmp(lm_convert_impl_name(), "scalar") == 0 && prev == 0);
    convert_all(src32, src16, n, 0, bf_s, h_s, bw_s, hw_s);
    lm_convert_force_scalar(0);

    /* The scalar bulk path equals the scalar functions element by element. */
    int scalar_ok = 1;
    for (size_t i = 0; i < n; i++) {
        scalar_ok &= bf_s[i] == lm_f32_to_bf16(src32[i]) && h_s[i] == lm_f32_to_f16(src32[i]);
        scalar_ok &= f32_bits(bw_s[i]) == f32_bits(lm_bf16_to_f32(src16[i])) &&
                     f32_bits(hw_s[i]) == f32_bits(lm_f16_to_f32(src16[i]));
    }
    TEST_COND("bulk scalar path equals the per-element functions on 1M patterns", scalar_ok);

    char descr[160];
    snprintf(descr, sizeof descr, "%s == scalar: F32 -> BF16 on 1M random patterns", impl);
    TEST_COND(descr, same_bits(bf_v, bf_s, n * 2));
    snprintf(descr, sizeof descr, "%s == scalar: F32 -> F16 on 1M random patterns", impl);
    TEST_COND(descr, same_bits(h_v, h_s, n * 2));
    snprintf(descr, sizeof descr, "%s == scalar: BF16 -> F32 on 1M patterns (all 65536 included)", impl);
    TEST_COND(descr, same_bits(bw_v, bw_s, n * 4));
    snprintf(descr, sizeof descr, "%s == scalar: F16 -> F32 on 1M patterns (all 65536 included)", impl);
    TEST_COND(descr, same_bits(hw_v, hw_s, n * 4));

    /* Odd lengths and unaligned buffers exercise the tails. */
    int tails_ok = 1;
    for (size_t len = 0; len <= 70; len++) {
        for (size_t skew = 0; skew < 2; skew++) {
            const float *s32 = src32 + 3 * len;
            const uint16_t *s16 = src16 + 70000 + 5 * len;
            convert_all(s32, s16, len, skew, bf_v, h_v, bw_v, hw_v);
            lm_convert_force_scalar(1);
            convert_all(s32, s16, len, skew, bf_s, h_s, bw_s, hw_s);
            lm_convert_force_scalar(0);
            tails_ok &= same_bits(bf_v, bf_s, 2 * len) && same_bits(h_v, h_s, 2 * len) &&
                        same_bits(bw_v, bw_s, 4 * len) && same_bits(hw_v, hw_s, 4 * len);
        }
    }
    snprintf(descr, sizeof descr, "%s == scalar for every length 0..70, aligned and unaligned", impl);
    TEST_COND(descr, tails_ok);

    /* F32 <-> F32 is a copy. */
    lm_convert_to_f32(bw_v, src32, LM_DTYPE_F32, 1000);
    lm_convert_from_f32(hw_v, LM_DTYPE_F32, src32, 1000);
    TEST_COND("F32 to F32 copies bits", same_bits(bw_v, src32, 4000) && same_bits(hw_v, src32, 4000));

    /* Narrowing in place (dst == src) gives the same bits. */
    memcpy(bw_v, src32, 4 * 1001);
    lm_convert_from_f32(bw_v, LM_DTYPE_BF16, bw_v, 1001);
    lm_convert_from_f32(bf_s, LM_DTYPE_BF16, src32, 1001);
    TEST_COND("narrowing to BF16 in place gives the same bits", same_bits(bw_v, bf_s, 2 * 1001));

    free(src32); free(src16);
    free(bf_v); free(h_v); free(bf_s); free(h_s);
    free(bw_v); free(hw_v); free(bw_s); free(hw_s);
}

static void report_throughput(void)
{
    const size_t bytes = (size_t)64 << 20, n = bytes / 2;
    uint16_t *src = malloc(bytes);
    float *dst = malloc(n * sizeof *dst);
    for (size_t i = 0; i < n; i++)
        src[i] = (uint16_t)(0x3c00u + (i & 0x3ffu));
    lm_convert_to_f32(dst, src, LM_DTYPE_BF16, n); /* fault the pages in */
    for (int scalar = 0; scalar < 2; scalar++) {
        lm_convert_force_scalar(scalar);
        double best = 1e9;
        for (int rep = 0; rep < 3; rep++) {
            double t0 = now_s();
            lm_convert_to_f32(dst, src, LM_DTYPE_BF16, n);
            double t = now_s() - t0;
            best = t < best ? t : best;
        }
        printf("      %s: BF16 -> F32 on 64 MB: %.2f GB/s of input (%.1f ms)\n",
               lm_convert_impl_name(), (double)bytes / best / 1e9, best * 1e3);
    }
    lm_convert_force_scalar(0);
    free(src);
    free(dst);
}

/* Q8_0 (dtype.h): a hand-computed group, then the rounding bound on
 * random data. */
static void test_q8(void)
{
    float x[64] = { 0 };
    x[0] = 1.984375f;        /* 127 / 64: the group's max, so d = 1/64 exactly */
    x[1] = -0.4921875f;      /* -31.5 / 64: a tie, rounded away from zero to -32 */
    x[2] = 0.0078125f;       /* 0.5 / 64: a tie, to 1 */
    x[3] = 0.0073242188f;    /* 0.46875 / 64: to 0 */
    x[4] = -1.984375f;       /* -127 */
    x[5] = NAN;              /* NaN becomes 0 */
    /* the second group is all zeros: d = 0, q = 0 */
    unsigned char q[2 * LM_Q8_GROUP_BYTES];
    lm_convert_from_f32(q, LM_DTYPE_Q8_0, x, 64);
    TEST_COND("Q8_0 takes 34 bytes per 32 values", lm_dtype_bytes(LM_DTYPE_Q8_0, 64) == 68);
    TEST_COND("Q8_0 scale 1/64 stored as F16 0x2400", q[0] == 0x00 && q[1] == 0x24);
    TEST_COND("Q8_0 values 127, -32, 1, 0, -127, 0 (ties away from zero, NaN to 0)",
              (int8_t)q[2] == 127 && (int8_t)q[3] == -32 && (int8_t)q[4] == 1 && (int8_t)q[5] == 0 &&
              (int8_t)q[6] == -127 && (int8_t)q[7] == 0);
    bool zero_group = true;
    for (int i = LM_Q8_GROUP_BYTES; i < 2 * LM_Q8_GROUP_BYTES; i++)
        zero_group = zero_group && q[i] == 0;
    TEST_COND("Q8_0 all-zero group: scale 0 and values 0", zero_group);
    float back[64];
    lm_convert_to_f32(back, q, LM_DTYPE_Q8_0, 64);
    TEST_COND("Q8_0 back to float32: 1.984375, -0.5, 0.015625, 0",
              back[0] == 1.984375f && back[1] == -0.5f && back[2] == 0.015625f && back[3] == 0.0f &&
              back[40] == 0.0f);
    TEST_COND("Q8_0 is not a safetensors dtype name", lm_dtype_from_name("Q8_0") < 0);

    enum { N = 32 * 1024 };
    float *r = malloc(N * sizeof(float)), *rb = malloc(N * sizeof(float));
    unsigned char *rq = malloc(N / LM_Q8_GROUP * LM_Q8_GROUP_BYTES);
    uint32_t s = 12345;
    for (int i = 0; i < N; i++) {
        s = s * 1664525u + 1013904223u;
        r[i] = ((float)(s >> 8) / 16777216.0f - 0.5f) * (float)(1 + i / 4096);
    }
    lm_convert_from_f32(rq, LM_DTYPE_Q8_0, r, N);
    lm_convert_to_f32(rb, rq, LM_DTYPE_Q8_0, N);
    /* |x - d16 q| <= d / 2 + 127 |d - d16| <= amax (1/254 + 2^-11) per group */
    double worst = 0;
    for (int g = 0; g < N; g += LM_Q8_GROUP) {
        float amax = 0;
        for (int i = 0; i < LM_Q8_GROUP; i++)
            amax = fmaxf(amax, fabsf(r[g + i]));
        for (int i = 0; i < LM_Q8_GROUP; i++)
            worst = fmax(worst, fabs((double)r[g + i] - (double)rb[g + i]) / (double)amax);
    }
    char descr[128];
    snprintf(descr, sizeof descr, "Q8_0 round trip of 32k values: worst error %.5f of the group's max "
             "(bound 1/254 + 2^-11 = 0.00443)", worst);
    TEST_COND(descr, worst <= 1.0 / 254 + 1.0 / 2048 && worst > 0.001);
    /* The vector path against the scalar one: random values of every
     * scale, NaN and infinities, exact ties (k + 0.5 times the scale). */
    for (int i = 0; i < N; i++) {
        s = s * 1664525u + 1013904223u;
        switch ((i / LM_Q8_GROUP) % 8) {
        case 0: /* scale exactly 1: every x.5 is a tie */
            r[i] = i % LM_Q8_GROUP ? (float)((int)(s >> 8 & 253) - 127) + 0.5f : 127.0f;
            break;
        case 1: r[i] = bits_f32(s | 0x7f800000u); break; /* inf or NaN */
        default: r[i] = bits_f32((s & 0x807fffffu) | ((s >> 3 & 63u) + 96u) << 23); break;
        }
    }
    unsigned char *rs = malloc(N / LM_Q8_GROUP * LM_Q8_GROUP_BYTES);
    float *fs = malloc(N * sizeof(float));
    lm_convert_from_f32(rq, LM_DTYPE_Q8_0, r, N);
    lm_convert_to_f32(rb, rq, LM_DTYPE_Q8_0, N);
    int prev = lm_convert_force_scalar(1);
    lm_convert_from_f32(rs, LM_DTYPE_Q8_0, r, N);
    lm_convert_to_f32(fs, rq, LM_DTYPE_Q8_0, N);
    lm_convert_force_scalar(prev);
    snprintf(descr, sizeof descr, "%s == scalar: F32 -> Q8_0 and back on 32k values (ties, NaN, inf)",
             lm_convert_impl_name());
    TEST_COND(descr, memcmp(rq, rs, N / LM_Q8_GROUP * LM_Q8_GROUP_BYTES) == 0 &&
                     same_bits(rb, fs, N * sizeof(float)));
    free(rs);
    free(fs);
    free(r);
    free(rb);
    free(rq);
}

int main(void)
{
    printf("      implementation: %s\n", lm_convert_impl_name());
    test_round_trips();
    test_rounding();
    test_vector_vs_scalar();
    test_q8();
    {
        static float v[1003];
        for (int i = 0; i < 1003; i++)
            v[i] = (float)i;
        v[0] = NAN;
        v[9] = INFINITY;
        v[500] = -INFINITY;
        v[1002] = -NAN; /* in the scalar tail */
        v[7] = 3.4e38f; /* finite, largest exponent below all-ones */
        uint64_t vec = lm_count_nonfinite(v, 1003);
        int prev = lm_convert_force_scalar(1);
        uint64_t sc = lm_count_nonfinite(v, 1003);
        lm_convert_force_scalar(prev);
        TEST_COND("lm_count_nonfinite: NaN, -NaN, +-inf counted (4 of 1003), both paths", vec == 4 && sc == 4);
    }
    report_throughput();
    return test_report();
}
