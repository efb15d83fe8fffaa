/* Forward-pass kernels against their reference loops: matmul rows for F32,
 * F16, BF16 and Q8_0 weights (odd sizes, unaligned rows, several tokens),
 * the batched products X W^T and X W on each path (AVX-512, AVX2,
 * portable) with their bit-for-bit promises, batched causal attention
 * (against its reference, and split between calls), dot,
 * axpy, RMSNorm, softmax, SiLU-gating and RoPE, on the vector path and on
 * the forced scalar path. Also the sampler's greedy / top-k / top-p rules
 * and its seeded reproducibility. */
#include "kernels.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "convert.h"
#include "lm_error.h"
#include "sampler.h"
#include "test.h"

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static double rnd(void) /* uniform in [-1, 1) */
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (double)((rng_state * 0x2545f4914f6cdd1dull) >> 11) / 4503599627370496.0 - 1.0;
}

static void fill(float *x, int64_t n, double scale)
{
    for (int64_t i = 0; i < n; i++)
        x[i] = (float)(rnd() * scale);
}

static double max_abs_diff(const float *a, const float *b, int64_t n)
{
    double m = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= m))
            m = d;
    }
    return m;
}

/* Weights of `rows x cols` in dtype t at byte offset `misalign` of a
 * buffer, so that unaligned views (as in a mmapped file) are exercised. */
static unsigned char *make_weights(enum lm_dtype t, int64_t rows, int64_t cols, size_t misalign,
                                   unsigned char **base)
{
    size_t n = (size_t)(rows * cols);
    float *f = malloc(n * sizeof(float) + 1);
    fill(f, (int64_t)n, 1.0);
    *base = malloc(n * 4 + 16);
    unsigned char *w = *base + misalign;
    lm_convert_from_f32(w, t, f, n);
    free(f);
    return w;
}

static void check_matmul(enum lm_dtype t, int64_t rows, int64_t cols, int64_t n_tok, size_t misalign)
{
    unsigned char *base;
    unsigned char *w = make_weights(t, rows, cols, misalign, &base);
    int64_t ldx = cols + 3, ldo = rows + 5;
    float *x = malloc((size_t)(n_tok * ldx) * sizeof(float));
    float *got = calloc((size_t)(n_tok * ldo), sizeof(float));
    float *want = calloc((size_t)(n_tok * ldo), sizeof(float));
    fill(x, n_tok * ldx, 1.0);
    /* rows [1, rows - 1) only: the untouched edges must stay zero */
    int64_t r0 = rows > 2 ? 1 : 0, r1 = rows > 2 ? rows - 1 : rows;
    kernel_matmul_rows(got, ldo, w, t, cols, x, ldx, n_tok, r0, r1);
    kernel_matmul_rows_ref(want, ldo, w, t, cols, x, ldx, n_tok, r0, r1);
    /* error bound: float32 accumulation of cols products of size <= 1 */
    double tol = 1e-6 * (double)cols + 1e-6;
    char descr[160];
    snprintf(descr, sizeof descr, "matmul %s %s %lldx%lld, %lld token(s), offset %zu: max diff %.2e",
             kernel_impl_name(), lm_dtype_name(t), (long long)rows, (long long)cols, (long long)n_tok,
             misalign, max_abs_diff(got, want, n_tok * ldo));
    TEST_COND(descr, max_abs_diff(got, want, n_tok * ldo) <= tol);
    free(x);
    free(got);
    free(want);
    free(base);
}

static void check_small_kernels(void)
{
    char descr[160];
    static const int64_t sizes[] = { 1, 7, 8, 9, 31, 64, 100, 1023 };
    for (size_t s = 0; s < LM_ARRAY_SIZE(sizes); s++) {
        int64_t n = sizes[s];
        float *a = malloc((size_t)n * sizeof(float)), *b = malloc((size_t)n * sizeof(float));
        float *c = malloc((size_t)n * sizeof(float)), *d = malloc((size_t)n * sizeof(float));
        float *w = malloc((size_t)n * sizeof(float));
        fill(a, n, 1.0);
        fill(b, n, 1.0);
        fill(w, n, 1.0);

        float dv = kernel_dot(a, b, n), dr = kernel_dot_ref(a, b, n);
        snprintf(descr, sizeof descr, "dot %s n=%lld", kernel_impl_name(), (long long)n);
        TEST_NEAR(descr, dv, dr, 1e-6 * (double)n + 1e-6);

        memcpy(c, b, (size_t)n * sizeof(float));
        memcpy(d, b, (size_t)n * sizeof(float));
        kernel_axpy(c, 0.37f, a, n);
        kernel_axpy_ref(d, 0.37f, a, n);
        snprintf(descr, sizeof descr, "axpy %s n=%lld", kernel_impl_name(), (long long)n);
        TEST_COND(descr, max_abs_diff(c, d, n) <= 1e-6);

        kernel_rmsnorm(c, a, w, n, 1e-6f);
        kernel_rmsnorm_ref(d, a, w, n, 1e-6f);
        snprintf(descr, sizeof descr, "rmsnorm %s n=%lld", kernel_impl_name(), (long long)n);
        TEST_COND(descr, max_abs_diff(c, d, n) <= 1e-5);
        /* in place, as the Qwen3 head norm uses it */
        memcpy(c, a, (size_t)n * sizeof(float));
        kernel_rmsnorm(c, c, w, n, 1e-6f);
        snprintf(descr, sizeof descr, "rmsnorm in place %s n=%lld", kernel_impl_name(), (long long)n);
        TEST_COND(descr, max_abs_diff(c, d, n) <= 1e-5);

        /* softmax over a wide range, including very negative entries */
        for (int64_t i = 0; i < n; i++)
            c[i] = d[i] = a[i] * 40.0f - (i % 5 == 0 ? 100.0f : 0.0f);
        kernel_softmax(c, n);
        kernel_softmax_ref(d, n);
        double sum = 0.0;
        for (int64_t i = 0; i < n; i++)
            sum += c[i];
        snprintf(descr, sizeof descr, "softmax %s n=%lld (sum %.7f)", kernel_impl_name(), (long long)n, sum);
        TEST_COND(descr, max_abs_diff(c, d, n) <= 2e-6 && fabs(sum - 1.0) < 1e-5);

        for (int64_t i = 0; i < n; i++)
            c[i] = d[i] = a[i] * 30.0f;
        kernel_silu_mul(c, b, n);
        kernel_silu_mul_ref(d, b, n);
        double worst = 0.0;
        for (int64_t i = 0; i < n; i++) {
            double rel = fabs((double)c[i] - (double)d[i]) / (fabs((double)d[i]) + 1e-6);
            if (rel > worst)
                worst = rel;
        }
        snprintf(descr, sizeof descr, "silu*up %s n=%lld (max rel diff %.1e)", kernel_impl_name(),
                 (long long)n, worst);
        TEST_COND(descr, worst <= 1e-5);
        free(a);
        free(b);
        free(c);
        free(d);
        free(w);
    }

    static const int64_t dims[] = { 2, 14, 16, 32, 64, 128 };
    for (size_t s = 0; s < LM_ARRAY_SIZE(dims); s++) {
        int64_t hd = dims[s], heads = 3;
        float *x = malloc((size_t)(heads * hd) * sizeof(float)), *y = malloc((size_t)(heads * hd) * sizeof(float));
        float *cs = malloc((size_t)(hd / 2) * sizeof(float)), *sn = malloc((size_t)(hd / 2) * sizeof(float));
        fill(x, heads * hd, 2.0);
        memcpy(y, x, (size_t)(heads * hd) * sizeof(float));
        for (int64_t i = 0; i < hd / 2; i++) {
            double a = 17.0 * pow(10000.0, -2.0 * (double)i / (double)hd);
            cs[i] = (float)cos(a);
            sn[i] = (float)sin(a);
        }
        kernel_rope(x, heads, hd, cs, sn);
        kernel_rope_ref(y, heads, hd, cs, sn);
        snprintf(descr, sizeof descr, "rope %s head_dim=%lld", kernel_impl_name(), (long long)hd);
        TEST_COND(descr, max_abs_diff(x, y, heads * hd) <= 2e-6);
        free(x);
        free(y);
        free(cs);
        free(sn);
    }
}

static void check_all_kernels(void)
{
    static const enum lm_dtype types[] = { LM_DTYPE_F32, LM_DTYPE_F16, LM_DTYPE_BF16 };
    static const int64_t shapes[][2] = { { 1, 1 }, { 3, 7 }, { 5, 8 }, { 9, 33 }, { 17, 64 },
                                         { 33, 257 }, { 64, 1000 }, { 7, 4099 } };
    for (size_t t = 0; t < LM_ARRAY_SIZE(types); t++)
        for (size_t s = 0; s < LM_ARRAY_SIZE(shapes); s++)
            check_matmul(types[t], shapes[s][0], shapes[s][1], s % 3 == 0 ? 1 : (int64_t)(s % 4) + 1,
                         s % 2 ? 2 : 0);
    /* Q8_0: rows of whole 32-value groups only */
    static const int64_t q8_shapes[][2] = { { 1, 32 }, { 5, 64 }, { 17, 96 }, { 9, 3584 }, { 7, 4096 } };
    for (size_t s = 0; s < LM_ARRAY_SIZE(q8_shapes); s++)
        check_matmul(LM_DTYPE_Q8_0, q8_shapes[s][0], q8_shapes[s][1], (int64_t)(s % 3) + 1, s % 2 ? 3 : 0);
    TEST_COND("Q8_0 rows of 32k values can be multiplied, 33 cannot",
              kernel_weight_type_ok(LM_DTYPE_Q8_0, 64) && !kernel_weight_type_ok(LM_DTYPE_Q8_0, 33));
    check_small_kernels();
}

/* ===== Batched products ===== */

/* X W^T and X W on the active path against double-precision loops, over
 * odd shapes, unaligned weight views, several panel passes (cols > KC),
 * partial token groups and panels; then the promises of kernels.h: a
 * different split of the rows or of the batch changes no bits. */
/* A copy of w's `bytes` ending right at an inaccessible page, so that a
 * read past the matrix faults; unmap with guarded_free. */
static unsigned char *guarded_copy(const unsigned char *w, size_t bytes, size_t *map_len)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t body = (bytes + page - 1) / page * page;
    *map_len = body + page;
    unsigned char *map = mmap(NULL, *map_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (map == MAP_FAILED)
        return NULL;
    mprotect(map + body, page, PROT_NONE);
    unsigned char *p = map + body - bytes;
    memcpy(p, w, bytes);
    return p;
}

static void check_gemm(enum lm_dtype t, int64_t rows, int64_t cols, int64_t n_tok, size_t misalign)
{
    unsigned char *base;
    unsigned char *w0 = make_weights(t, rows, cols, misalign, &base);
    size_t wbytes = lm_dtype_bytes(t, (size_t)(rows * cols)), map_len = 0;
    /* a guarded copy when the matrix ends the page at an odd place, so that
     * both unaligned starts (misalign) and ends at a fault are covered */
    unsigned char *w = misalign ? w0 : guarded_copy(w0, wbytes, &map_len);
    if (!w) {
        TEST_COND("guarded weight copy", 0);
        free(base);
        return;
    }
    const char *path = kernel_impl_name();
    char descr[200];
    float *scratch = malloc(KERNEL_GEMM_SCRATCH * sizeof(float));

    /* out = X W^T over rows [r0, r1); the edges stay untouched */
    int64_t ldx = cols + 3, ldo = rows + 5;
    float *x = malloc((size_t)(n_tok * ldx) * sizeof(float));
    float *xp = malloc((size_t)kernel_gemm_xpack_size(n_tok, cols) * sizeof(float));
    float *got = calloc((size_t)(n_tok * ldo), sizeof(float));
    float *split = calloc((size_t)(n_tok * ldo), sizeof(float));
    float *want = calloc((size_t)(n_tok * ldo), sizeof(float));
    fill(x, n_tok * ldx, 1.0);
    int64_t groups = (n_tok + KERNEL_GEMM_MR - 1) / KERNEL_GEMM_MR;
    kernel_gemm_pack_x(xp, x, ldx, n_tok, cols, 0, groups);
    int64_t r0 = rows > 2 ? 1 : 0, r1 = rows > 2 ? rows - 1 : rows;
    kernel_gemm_nt(got, ldo, w, t, cols, xp, n_tok, r0, r1, scratch);
    kernel_matmul_rows_ref(want, ldo, w, t, cols, x, ldx, n_tok, r0, r1);
    double tol = 1e-6 * (double)cols + 1e-6;
    double d = max_abs_diff(got, want, n_tok * ldo);
    snprintf(descr, sizeof descr, "gemm X W^T %s %s %lldx%lld, %lld token(s), offset %zu: max diff %.2e",
             path, lm_dtype_name(t), (long long)rows, (long long)cols, (long long)n_tok, misalign, d);
    TEST_COND(descr, d <= tol);

    /* the same rows in two calls split at an odd row, and the batch packed
     * in two parts of different sizes: identical bits */
    int64_t mid = r0 + (r1 - r0) / 3;
    kernel_gemm_nt(split, ldo, w, t, cols, xp, n_tok, r0, mid, scratch);
    kernel_gemm_nt(split, ldo, w, t, cols, xp, n_tok, mid, r1, scratch);
    int64_t t1 = n_tok / 2 + 1 < n_tok ? n_tok / 2 + 1 : n_tok;
    float *part = calloc((size_t)(n_tok * ldo), sizeof(float));
    kernel_gemm_pack_x(xp, x, ldx, t1, cols, 0, (t1 + KERNEL_GEMM_MR - 1) / KERNEL_GEMM_MR);
    kernel_gemm_nt(part, ldo, w, t, cols, xp, t1, r0, r1, scratch);
    if (t1 < n_tok) {
        kernel_gemm_pack_x(xp, x + t1 * ldx, ldx, n_tok - t1, cols, 0,
                           (n_tok - t1 + KERNEL_GEMM_MR - 1) / KERNEL_GEMM_MR);
        kernel_gemm_nt(part + t1 * ldo, ldo, w, t, cols, xp, n_tok - t1, r0, r1, scratch);
    }
    snprintf(descr, sizeof descr, "gemm X W^T %s %s %lldx%lld: a split of the rows or the batch changes no bits",
             path, lm_dtype_name(t), (long long)rows, (long long)cols);
    TEST_COND(descr, memcmp(got, split, (size_t)(n_tok * ldo) * sizeof(float)) == 0 &&
              memcmp(got, part, (size_t)(n_tok * ldo) * sizeof(float)) == 0);

    /* out (+)= X W: x has `rows` values per token; columns [c0, cols) */
    int64_t ldy = rows + 2, ldd = cols + 1;
    float *y = malloc((size_t)(n_tok * ldy) * sizeof(float));
    float *yp = malloc((size_t)kernel_gemm_xpack_size(n_tok, rows) * sizeof(float));
    float *dx = malloc((size_t)(n_tok * ldd) * sizeof(float));
    float *init = malloc((size_t)(n_tok * ldd) * sizeof(float));
    double *ref = calloc((size_t)(n_tok * ldd), sizeof(double));
    fill(y, n_tok * ldy, 1.0);
    fill(init, n_tok * ldd, 1.0);
    kernel_gemm_pack_x(yp, y, ldy, n_tok, rows, 0, groups);
    int64_t c0 = t == LM_DTYPE_Q8_0 ? (cols > 32 ? 32 : 0) : cols > 1 ? 1 : 0;
    size_t rb = lm_dtype_bytes(t, (size_t)cols);
    float *wrow = malloc((size_t)cols * sizeof(float));
    for (int64_t r = 0; r < rows; r++) {
        lm_convert_to_f32(wrow, w + (size_t)r * rb, t, (size_t)cols);
        for (int64_t tk = 0; tk < n_tok; tk++)
            for (int64_t c = c0; c < cols; c++)
                ref[tk * ldd + c] += (double)y[tk * ldy + r] * (double)wrow[c];
    }
    for (int acc = 0; acc < 2; acc++) {
        memcpy(dx, init, (size_t)(n_tok * ldd) * sizeof(float));
        kernel_gemm_nn(dx, ldd, w, t, rows, cols, yp, n_tok, c0, cols, acc == 1, scratch);
        double worst = 0.0;
        for (int64_t tk = 0; tk < n_tok; tk++)
            for (int64_t c = 0; c < cols; c++) {
                double e = c < c0 ? (double)init[tk * ldd + c]
                                   : ref[tk * ldd + c] + (acc ? (double)init[tk * ldd + c] : 0.0);
                double diff = fabs((double)dx[tk * ldd + c] - e);
                if (!(diff <= worst))
                    worst = diff;
            }
        snprintf(descr, sizeof descr, "gemm X W%s %s %s %lldx%lld, %lld token(s): max diff %.2e",
                 acc ? " accumulated" : "", path, lm_dtype_name(t), (long long)rows, (long long)cols,
                 (long long)n_tok, worst);
        TEST_COND(descr, worst <= 1e-6 * (double)rows + 2e-6);
    }
    free(wrow);
    free(y);
    free(yp);
    free(dx);
    free(init);
    free(ref);
    free(x);
    free(xp);
    free(got);
    free(split);
    free(part);
    free(want);
    free(scratch);
    if (map_len)
        munmap(w + wbytes - map_len + (size_t)sysconf(_SC_PAGESIZE), map_len);
    free(base);
}

static void check_all_gemm(void)
{
    static const enum lm_dtype types[] = { LM_DTYPE_F32, LM_DTYPE_F16, LM_DTYPE_BF16 };
    /* rows x cols x tokens: single elements, partial panels and token
     * groups, cols past one panel pass (KERNEL_GEMM_KC) with a tail */
    static const int64_t shapes[][3] = { { 1, 1, 1 },    { 3, 7, 4 },     { 31, 9, 12 },  { 33, 8, 13 },
                                         { 64, 33, 25 }, { 70, 257, 11 }, { 5, 600, 40 }, { 300, 17, 7 } };
    for (size_t t = 0; t < LM_ARRAY_SIZE(types); t++)
        for (size_t s = 0; s < LM_ARRAY_SIZE(shapes); s++)
            check_gemm(types[t], shapes[s][0], shapes[s][1], shapes[s][2], s % 2 ? 2 : 0);
    static const int64_t q8_shapes[][3] = { { 1, 32, 1 }, { 33, 96, 13 }, { 40, 288, 24 }, { 270, 544, 5 } };
    for (size_t s = 0; s < LM_ARRAY_SIZE(q8_shapes); s++)
        check_gemm(LM_DTYPE_Q8_0, q8_shapes[s][0], q8_shapes[s][1], q8_shapes[s][2], s % 2 ? 3 : 0);
}

/* The AVX-512 and AVX2 paths both run one fused multiply-add chain per
 * output: where the CPU has both, their bits must agree. */
static void check_gemm_paths_agree(void)
{
    enum kernel_path prev = kernel_force_path(KERNEL_PATH_AVX512);
    bool both = kernel_path_active() == KERNEL_PATH_AVX512;
    kernel_force_path(prev);
    if (!both) {
        printf("# no AVX-512 here: the AVX-512 / AVX2 comparison is skipped\n");
        return;
    }
    int64_t rows = 70, cols = 600, n_tok = 29;
    unsigned char *base;
    unsigned char *w = make_weights(LM_DTYPE_BF16, rows, cols, 1, &base);
    float *x = malloc((size_t)(n_tok * cols) * sizeof(float));
    float *xp = malloc((size_t)kernel_gemm_xpack_size(n_tok, cols) * sizeof(float));
    float *a = calloc((size_t)(n_tok * rows), sizeof(float)), *b = calloc((size_t)(n_tok * rows), sizeof(float));
    float *scratch = malloc(KERNEL_GEMM_SCRATCH * sizeof(float));
    fill(x, n_tok * cols, 1.0);
    kernel_gemm_pack_x(xp, x, cols, n_tok, cols, 0, (n_tok + KERNEL_GEMM_MR - 1) / KERNEL_GEMM_MR);
    prev = kernel_force_path(KERNEL_PATH_AVX512);
    kernel_gemm_nt(a, rows, w, LM_DTYPE_BF16, cols, xp, n_tok, 0, rows, scratch);
    kernel_force_path(KERNEL_PATH_AVX2);
    kernel_gemm_nt(b, rows, w, LM_DTYPE_BF16, cols, xp, n_tok, 0, rows, scratch);
    kernel_force_path(prev);
    TEST_COND("gemm: the AVX-512 and AVX2 paths give identical bits",
              memcmp(a, b, (size_t)(n_tok * rows) * sizeof(float)) == 0);
    free(x);
    free(xp);
    free(a);
    free(b);
    free(scratch);
    free(base);
}

/* ===== Batched attention ===== */

/* One head of kernel_attention (keys and values strided as in a cache of
 * two heads, this one second) against kernel_attention_ref; then the same
 * queries in two calls split at `cut` must give the same bits. Returns the
 * output through `keep` (n_q * hd floats) when it is not NULL. */
static void check_attention(int64_t hd, int64_t pos0, int64_t n_q, int64_t cut, float *keep)
{
    int64_t ldkv = 2 * hd + 3, ldq = 3 * hd, ldo = hd + 5, n_keys = pos0 + n_q;
    float *q = malloc((size_t)(n_q * ldq) * sizeof(float));
    float *kv = malloc((size_t)(2 * n_keys * ldkv) * sizeof(float));
    float *got = calloc((size_t)(n_q * ldo), sizeof(float)), *want = calloc((size_t)(n_q * ldo), sizeof(float));
    float *split = calloc((size_t)(n_q * ldo), sizeof(float));
    float *scratch = malloc((size_t)kernel_attention_scratch_size(n_q, n_keys, hd) * sizeof(float));
    float *panel = malloc(KERNEL_GEMM_SCRATCH * sizeof(float)), *scores = malloc((size_t)n_keys * sizeof(float));
    fill(q, n_q * ldq, 2.0);
    fill(kv, 2 * n_keys * ldkv, 2.0);
    const float *k = kv + hd + 1, *v = kv + n_keys * ldkv + hd + 2, *qh = q + hd;
    float scale = 1.0f / sqrtf((float)hd);
    kernel_attention(got, ldo, qh, ldq, n_q, k, v, ldkv, pos0, hd, scale, scratch, panel);
    kernel_attention_ref(want, ldo, qh, ldq, n_q, k, v, ldkv, pos0, hd, scale, scores);
    double d = 0.0;
    for (int64_t i = 0; i < n_q; i++)
        d = fmax(d, max_abs_diff(got + i * ldo, want + i * ldo, hd));
    char descr[200];
    snprintf(descr, sizeof descr, "attention %s hd %lld, %lld queries after %lld keys: max diff %.2e",
             kernel_impl_name(), (long long)hd, (long long)n_q, (long long)pos0, d);
    TEST_COND(descr, d < 2e-5);
    kernel_attention(split, ldo, qh, ldq, cut, k, v, ldkv, pos0, hd, scale, scratch, panel);
    kernel_attention(split + cut * ldo, ldo, qh + cut * ldq, ldq, n_q - cut, k, v, ldkv, pos0 + cut, hd,
                     scale, scratch, panel);
    bool same = true;
    for (int64_t i = 0; i < n_q; i++)
        same &= memcmp(got + i * ldo, split + i * ldo, (size_t)hd * sizeof(float)) == 0;
    snprintf(descr, sizeof descr, "attention %s hd %lld: queries split at %lld give the same bits",
             kernel_impl_name(), (long long)hd, (long long)cut);
    TEST_COND(descr, same);
    if (keep)
        for (int64_t i = 0; i < n_q; i++)
            memcpy(keep + i * hd, got + i * ldo, (size_t)hd * sizeof(float));
    free(q);
    free(kv);
    free(got);
    free(want);
    free(split);
    free(scratch);
    free(panel);
    free(scores);
}

static void check_all_attention(void)
{
    check_attention(64, 0, 89, 48, NULL);    /* a prompt: the 0.5B head size */
    check_attention(128, 37, 50, 13, NULL);  /* a batch after a cached prefix */
    check_attention(40, 300, 13, 12, NULL);  /* head not a multiple of 32, keys past KC */
    check_attention(64, 5, 1, 0, NULL);      /* one query */
    check_attention(16, 0, 4, 1, NULL);
}

/* AVX-512 and AVX2 run the same chains: the same bits. */
static void check_attention_paths_agree(void)
{
    enum kernel_path prev = kernel_force_path(KERNEL_PATH_AVX512);
    bool both = kernel_path_active() == KERNEL_PATH_AVX512;
    if (!both) {
        kernel_force_path(prev);
        printf("# no AVX-512 here: the attention path comparison is skipped\n");
        return;
    }
    int64_t hd = 64, n_q = 29;
    float *a = malloc((size_t)(n_q * hd) * sizeof(float)), *b = malloc((size_t)(n_q * hd) * sizeof(float));
    uint64_t seed = rng_state;
    check_attention(hd, 20, n_q, 7, a);
    kernel_force_path(KERNEL_PATH_AVX2);
    rng_state = seed;
    check_attention(hd, 20, n_q, 7, b);
    kernel_force_path(prev);
    TEST_COND("attention: the AVX-512 and AVX2 paths give identical bits",
              memcmp(a, b, (size_t)(n_q * hd) * sizeof(float)) == 0);
    free(a);
    free(b);
}

/* ===== Sampler ===== */

static void check_sampler(void)
{
    enum { N = 1000 };
    float logits[N], work[N];
    for (int i = 0; i < N; i++)
        logits[i] = (float)(rnd() * 3.0);
    logits[417] = 9.0f;
    logits[418] = 9.0f; /* tie: the lower id wins */

    TEST_COND("argmax takes the lowest index of a tie", sampler_argmax(logits, N) == 417);
    float nan_first[3] = { NAN, 1.0f, 2.0f };
    TEST_COND("argmax skips NaN", sampler_argmax(nan_first, 3) == 2);

    struct sampler *greedy = sampler_new(N, sampler_default_params());
    struct sampler_rng rng;
    sampler_rng_seed(&rng, 1);
    memcpy(work, logits, sizeof work);
    TEST_COND("greedy sampler picks the argmax", sampler_sample(greedy, work, &rng) == 417);
    sampler_free(greedy);

    struct sampler_params p = { 1.0f, 1, 1.0f };
    struct sampler *k1 = sampler_new(N, p);
    int ok = 1;
    for (int i = 0; i < 50; i++) {
        memcpy(work, logits, sizeof work);
        ok &= sampler_sample(k1, work, &rng) == 417;
    }
    TEST_COND("top-k 1 always gives the (first) best token", ok);
    sampler_free(k1);

    /* top-k 3: only the three best ids ever come out, and all of them */
    for (int i = 0; i < N; i++)
        logits[i] = (float)i * 0.001f;
    p.top_k = 3;
    struct sampler *k3 = sampler_new(N, p);
    int seen[N] = { 0 };
    ok = 1;
    for (int i = 0; i < 300; i++) {
        memcpy(work, logits, sizeof work);
        int32_t id = sampler_sample(k3, work, &rng);
        ok &= id >= N - 3;
        seen[id]++;
    }
    TEST_COND("top-k 3 stays within the three best ids and uses all three",
              ok && seen[N - 1] && seen[N - 2] && seen[N - 3]);
    sampler_free(k3);

    /* top-p: probabilities 0.5, 0.3, 0.2 (and ~0 elsewhere); top_p 0.75
     * keeps the first two only. */
    for (int i = 0; i < N; i++)
        logits[i] = -100.0f;
    logits[10] = logf(0.5f);
    logits[20] = logf(0.3f);
    logits[30] = logf(0.2f);
    struct sampler_params pp = { 1.0f, 0, 0.75f };
    struct sampler *tp = sampler_new(N, pp);
    int c10 = 0, c20 = 0, other = 0;
    for (int i = 0; i < 2000; i++) {
        memcpy(work, logits, sizeof work);
        int32_t id = sampler_sample(tp, work, &rng);
        c10 += id == 10;
        c20 += id == 20;
        other += id != 10 && id != 20;
    }
    char descr[160];
    snprintf(descr, sizeof descr, "top-p 0.75 keeps {0.5, 0.3}: %d / %d / %d other, ratio near 5:3",
             c10, c20, other);
    TEST_COND(descr, other == 0 && c10 > 1100 && c10 < 1400);
    sampler_free(tp);

    /* temperature sampling follows the distribution and a seed repeats it */
    struct sampler_params pt = { 0.5f, 0, 1.0f };
    struct sampler *ts = sampler_new(N, pt);
    int32_t run1[64], run2[64];
    for (int r = 0; r < 2; r++) {
        struct sampler_rng g;
        sampler_rng_seed(&g, 1234);
        for (int i = 0; i < 64; i++) {
            for (int j = 0; j < N; j++)
                work[j] = (float)(j % 7);
            (r ? run2 : run1)[i] = sampler_sample(ts, work, &g);
        }
    }
    TEST_COND("the same seed gives the same samples", memcmp(run1, run2, sizeof run1) == 0);
    int high = 0;
    for (int i = 0; i < 64; i++)
        high += run1[i] % 7 >= 4; /* at T = 0.5 the top three classes hold 99.7% */
    TEST_COND("temperature 0.5 samples the high-logit classes", high >= 60);
    sampler_free(ts);

    struct sampler_params bad = { 1.0f, 0, 0.0f };
    TEST_COND("top_p 0 is rejected", sampler_new(N, bad) == NULL);
}

int main(void)
{
    printf("# vector path: %s\n", kernel_impl_name());
    check_all_kernels();
    int prev = kernel_force_scalar(1);
    TEST_COND("forcing the scalar path is reported", strcmp(kernel_impl_name(), "scalar") == 0);
    check_all_kernels();
    kernel_force_scalar(prev);

    /* the batched products on every path this CPU has, portable included */
    static const enum kernel_path paths[] = { KERNEL_PATH_AVX512, KERNEL_PATH_AVX2, KERNEL_PATH_PORTABLE };
    for (size_t i = 0; i < LM_ARRAY_SIZE(paths); i++) {
        enum kernel_path was = kernel_force_path(paths[i]);
        if (kernel_path_active() == paths[i]) {
            check_all_gemm();
            check_all_attention();
        } else
            printf("# path %s: not on this CPU\n", kernel_path_name(paths[i]));
        kernel_force_path(was);
    }
    check_gemm_paths_agree();
    check_attention_paths_agree();
    check_sampler();
    return test_report();
}
