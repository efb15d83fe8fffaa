/* The SVD wrapper (svd.h) and the SVD-based merge methods lore and twin
 * (lowrank.c): factorisations of matrices built from known orthogonal
 * factors, numpy references (tests/golden/lowrank/goldens.txt, written by
 * make_lowrank_goldens.py), the methods' defining properties, the LoRE
 * objective round by round, bit-for-bit repeatability at one and two
 * OpenBLAS threads, and parameter errors. lowrank.h gives it the LoRE
 * decomposition itself. */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fsutil.h"
#include "lm_error.h"
#include "lowrank.h"
#include "merge_method.h"
#include "mergekit_export.h"
#include "svd.h"
#include "test.h"

static struct merge_scratch scratch;

/* ===== Helpers ===== */

static uint64_t rng_state = 0x243f6a8885a308d3u;

/* Uniform in [-1, 1) (xorshift64*). */
static double rng_signed(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    uint64_t u = rng_state * 0x2545f4914f6cdd1du;
    return (double)(u >> 11) * 0x1p-52 - 1.0;
}

static uint32_t float_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* Distance in units in the last place between two finite floats. */
static uint64_t ulp_distance(float a, float b)
{
    int64_t ia = (int32_t)float_bits(a), ib = (int32_t)float_bits(b);
    if (ia < 0)
        ia = INT32_MIN - ia;
    if (ib < 0)
        ib = INT32_MIN - ib;
    return (uint64_t)(ia > ib ? ia - ib : ib - ia);
}

static uint64_t max_ulp(const float *a, const float *b, uint64_t n)
{
    uint64_t m = 0;
    for (uint64_t e = 0; e < n; e++) {
        uint64_t d = ulp_distance(a[e], b[e]);
        m = d > m ? d : m;
    }
    return m;
}

static float *floats_new(uint64_t n)
{
    float *p = calloc(n ? n : 1, sizeof(float));
    LM_ASSERT(p);
    return p;
}

static double *doubles_new(uint64_t n)
{
    double *p = calloc(n ? n : 1, sizeof(double));
    LM_ASSERT(p);
    return p;
}

/* A smooth base and n_models models that differ from it by two rank-one
 * terms and a little noise. models[i] must each hold rows x cols floats. */
static void make_trio(float *base, float **models, int n_models, uint64_t rows, uint64_t cols)
{
    for (uint64_t i = 0; i < rows; i++)
        for (uint64_t j = 0; j < cols; j++)
            base[i * cols + j] = (float)(0.25 * sin(0.7 * (double)i + 0.3 * (double)j) +
                                         0.05 * ((double)i - (double)j));
    double *u = doubles_new(2 * rows), *v = doubles_new(2 * cols);
    for (int m = 0; m < n_models; m++) {
        for (uint64_t i = 0; i < 2 * rows; i++)
            u[i] = rng_signed();
        for (uint64_t j = 0; j < 2 * cols; j++)
            v[j] = rng_signed();
        for (uint64_t i = 0; i < rows; i++)
            for (uint64_t j = 0; j < cols; j++)
                models[m][i * cols + j] = (float)(base[i * cols + j] +
                                                  0.6 * u[i] * v[j] + 0.25 * u[rows + i] * v[cols + j] +
                                                  0.02 * rng_signed());
    }
    free(u);
    free(v);
}

static struct merge_tensor_params params_for(const struct merge_method *m, int nm)
{
    struct merge_tensor_params p;
    merge_tensor_params_default(&p, nm);
    if (m->set_defaults)
        m->set_defaults(&p);
    return p;
}

static int run(const struct merge_method *m, const char *name, uint64_t rows, uint64_t cols,
               const float *base, const float *const *models, int nm,
               const struct merge_tensor_params *p, float *out)
{
    struct merge_tensor_job job = {
        .name = name, .n = rows * cols, .rows = rows, .cols = cols, .base = base,
        .models = models, .n_models = nm, .params = p, .out = out, .scratch = &scratch,
    };
    return m->merge_tensor(&job);
}

/* ===== Golden file ===== */

#define GOLDEN_MAX_ITEMS 32
#define GOLDEN_MAX_CASES 16

struct golden_item {
    char    key[24];
    double *v;
    size_t  n;
};

struct golden_case {
    char               name[48];
    struct golden_item item[GOLDEN_MAX_ITEMS];
    int                n_items;
};

static struct golden_case goldens[GOLDEN_MAX_CASES];
static int n_goldens;

/* Reads goldens.txt into goldens[]: 0 or -1 with a message. */
static int golden_load(void)
{
    const char *src = getenv("MS_SOURCE_DIR");
    char *path = lm_path_join(src ? src : ".", "tests/golden/lowrank/goldens.txt");
    size_t len = 0;
    char *text = path ? lm_read_file(path, 1u << 24, &len) : NULL;
    free(path);
    if (!text)
        return -1;
    struct golden_case *c = NULL;
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (line[0] == '#' || line[0] == '\0')
            continue;
        char key[24];
        int used = 0;
        if (sscanf(line, "%23s%n", key, &used) != 1)
            continue;
        const char *rest = line + used;
        if (strcmp(key, "case") == 0) {
            LM_ASSERT(n_goldens < GOLDEN_MAX_CASES);
            c = &goldens[n_goldens++];
            sscanf(rest, "%47s", c->name);
            continue;
        }
        if (strcmp(key, "end") == 0 || !c) {
            c = NULL;
            continue;
        }
        LM_ASSERT(c->n_items < GOLDEN_MAX_ITEMS);
        struct golden_item *it = &c->item[c->n_items++];
        snprintf(it->key, sizeof it->key, "%s", key);
        size_t cap = 16;
        it->v = malloc(cap * sizeof(double));
        LM_ASSERT(it->v);
        char *end = NULL;
        for (const char *p = rest;; p = end) {
            double v = strtod(p, &end);
            if (end == p)
                break;
            if (it->n == cap) {
                cap *= 2;
                it->v = realloc(it->v, cap * sizeof(double));
                LM_ASSERT(it->v);
            }
            it->v[it->n++] = v;
        }
    }
    free(text);
    return 0;
}

static void golden_free(void)
{
    for (int c = 0; c < n_goldens; c++)
        for (int i = 0; i < goldens[c].n_items; i++)
            free(goldens[c].item[i].v);
    n_goldens = 0;
}

static const struct golden_case *golden_find(const char *name)
{
    for (int c = 0; c < n_goldens; c++)
        if (strcmp(goldens[c].name, name) == 0)
            return &goldens[c];
    return NULL;
}

/* The index-th item called `key` in case c (0 for the first), or NULL. */
static const struct golden_item *golden_item(const struct golden_case *c, const char *key,
                                             int index)
{
    for (int i = 0; i < c->n_items; i++)
        if (strcmp(c->item[i].key, key) == 0 && index-- == 0)
            return &c->item[i];
    return NULL;
}

static double golden_scalar(const struct golden_case *c, const char *key)
{
    const struct golden_item *it = golden_item(c, key, 0);
    LM_ASSERT(it && it->n >= 1);
    return it->v[0];
}

static float *golden_floats(const struct golden_case *c, const char *key, int index, uint64_t n)
{
    const struct golden_item *it = golden_item(c, key, index);
    LM_ASSERT(it && it->n == n);
    float *f = floats_new(n);
    for (uint64_t e = 0; e < n; e++)
        f[e] = (float)it->v[e];
    return f;
}

/* ===== SVD of matrices with known factors ===== */

/* Q (n x n, row-major) = H_1 H_2 H_3 applied to the identity, each H a
 * Householder reflection I - 2 v v^T / v^T v with a random v: orthogonal. */
static void random_orthogonal(double *q, uint64_t n)
{
    double *v = doubles_new(n);
    memset(q, 0, n * n * sizeof(double));
    for (uint64_t i = 0; i < n; i++)
        q[i * n + i] = 1.0;
    for (int h = 0; h < 3; h++) {
        double vv = 0.0;
        for (uint64_t i = 0; i < n; i++) {
            v[i] = rng_signed();
            vv += v[i] * v[i];
        }
        /* Q = H Q: each column c of Q loses 2 v (v . c) / vv. */
        for (uint64_t col = 0; col < n; col++) {
            double dot = 0.0;
            for (uint64_t i = 0; i < n; i++)
                dot += v[i] * q[i * n + col];
            for (uint64_t i = 0; i < n; i++)
                q[i * n + col] -= 2.0 * v[i] * dot / vv;
        }
    }
    free(v);
}

/* A = U diag(s) V^T from the first k columns of random orthogonal U (rows)
 * and V (cols); factorises it and compares. */
static void check_known_svd(uint64_t rows, uint64_t cols, const double *s_true, const char *what)
{
    const uint64_t k = rows < cols ? rows : cols;
    double *qu = doubles_new(rows * rows), *qv = doubles_new(cols * cols);
    random_orthogonal(qu, rows);
    random_orthogonal(qv, cols);
    double *a = doubles_new(rows * cols), *a_copy = doubles_new(rows * cols);
    for (uint64_t i = 0; i < rows; i++)
        for (uint64_t j = 0; j < cols; j++) {
            double sum = 0.0;
            for (uint64_t l = 0; l < k; l++)
                sum += qu[i * rows + l] * s_true[l] * qv[j * cols + l];
            a[i * cols + j] = sum;
        }
    memcpy(a_copy, a, rows * cols * sizeof(double));

    struct svd f;
    svd_init(&f);
    char d[160];
    int rc = svd_factor(&f, a, rows, cols, "known");
    snprintf(d, sizeof d, "%s: factorises (k = %llu)", what, (unsigned long long)k);
    TEST_COND(d, rc == 0 && f.k == k && f.rows == rows && f.cols == cols);
    if (rc) {
        printf("      %s\n", lm_last_error());
        goto out;
    }
    double err_s = 0.0, err_vec = 0.0, err_orth = 0.0, err_rec = 0.0;
    for (uint64_t l = 0; l < k; l++) {
        err_s = fmax(err_s, fabs(f.s[l] - s_true[l]));
        if (s_true[l] == 0.0)
            continue;
        /* singular vectors of distinct values: equal up to sign */
        double du = 0.0, dv = 0.0;
        for (uint64_t i = 0; i < rows; i++)
            du += f.u[i * k + l] * qu[i * rows + l];
        for (uint64_t j = 0; j < cols; j++)
            dv += f.vt[l * cols + j] * qv[j * cols + l];
        err_vec = fmax(err_vec, fmax(fabs(fabs(du) - 1.0), fabs(fabs(dv) - 1.0)));
        err_vec = fmax(err_vec, fabs(du * dv - 1.0)); /* the same sign on both sides */
    }
    for (uint64_t l = 0; l < k; l++)
        for (uint64_t m = 0; m < k; m++) {
            double uu = 0.0, vv = 0.0;
            for (uint64_t i = 0; i < rows; i++)
                uu += f.u[i * k + l] * f.u[i * k + m];
            for (uint64_t j = 0; j < cols; j++)
                vv += f.vt[l * cols + j] * f.vt[m * cols + j];
            double want = l == m ? 1.0 : 0.0;
            err_orth = fmax(err_orth, fmax(fabs(uu - want), fabs(vv - want)));
        }
    /* out = A + 2 (U S V^T) - 3 A, via two additions into out */
    double *out = doubles_new(rows * cols);
    memcpy(out, a_copy, rows * cols * sizeof(double));
    svd_add_truncated(&f, k, 2.0, out);
    for (uint64_t e = 0; e < rows * cols; e++)
        err_rec = fmax(err_rec, fabs(out[e] - 3.0 * a_copy[e]));
    free(out);

    snprintf(d, sizeof d, "%s: singular values exact to 1e-13 x s_max (err %.2g)", what, err_s);
    TEST_COND(d, err_s <= 1e-13 * s_true[0]);
    snprintf(d, sizeof d, "%s: singular vectors match up to a common sign (err %.2g)", what, err_vec);
    TEST_COND(d, err_vec <= 1e-12);
    snprintf(d, sizeof d, "%s: U^T U = V^T V = I (err %.2g)", what, err_orth);
    TEST_COND(d, err_orth <= 1e-13);
    snprintf(d, sizeof d, "%s: A + 2 U S V^T == 3 A (err %.2g)", what, err_rec);
    TEST_COND(d, err_rec <= 1e-13 * s_true[0]);
out:
    svd_deinit(&f);
    free(qu);
    free(qv);
    free(a);
    free(a_copy);
}

static void test_svd_known(void)
{
    static const double s5[] = { 10.0, 5.0, 2.5, 1.0, 0.5 };
    static const double s6[] = { 7.0, 3.0, 2.0, 1.5, 0.75, 0.125 };
    check_known_svd(9, 5, s5, "svd 9x5 (tall)");
    check_known_svd(5, 9, s5, "svd 5x9 (wide)");
    check_known_svd(6, 6, s6, "svd 6x6 (square)");

    /* Rank 2 of 6: four zero singular values come out at rounding level;
     * thresholding at 1e-12 leaves rank 2. */
    static const double s_low[] = { 4.0, 2.0, 0.0, 0.0, 0.0, 0.0 };
    check_known_svd(8, 6, s_low, "svd 8x6 of rank 2");
    double *qu = doubles_new(64), *qv = doubles_new(36), *a = doubles_new(48);
    random_orthogonal(qu, 8);
    random_orthogonal(qv, 6);
    for (uint64_t i = 0; i < 8; i++)
        for (uint64_t j = 0; j < 6; j++)
            a[i * 6 + j] = 4.0 * qu[i * 8] * qv[j * 6] + 2.0 * qu[i * 8 + 1] * qv[j * 6 + 1];
    struct svd f;
    svd_init(&f);
    int rc = svd_factor(&f, a, 8, 6, "rank2");
    uint64_t r = rc == 0 ? svd_shrink(&f, 1e-12) : 99;
    TEST_COND("svd rank 2: thresholding at 1e-12 leaves rank 2", r == 2);

    /* Thresholding and energy on known values. */
    double s_vals[] = { 10.0, 5.0, 2.5, 1.0, 0.5 };
    struct svd g = { .k = 5, .s = s_vals };
    uint64_t kept = svd_shrink(&g, 2.0);
    TEST_COND("svd_shrink by 2: {10,5,2.5,1,0.5} -> {8,3,0.5,0,0}, rank 3",
              kept == 3 && s_vals[0] == 8.0 && s_vals[1] == 3.0 && s_vals[2] == 0.5 &&
              s_vals[3] == 0.0 && s_vals[4] == 0.0);
    TEST_NEAR("svd_nuclear_norm after it: 11.5", svd_nuclear_norm(&g), 11.5, 0.0);
    /* squares 9, 4, 1 of 14: shares 0.643, 0.929, 1 */
    double e_vals[] = { 3.0, 2.0, 1.0 };
    struct svd h = { .k = 3, .s = e_vals };
    TEST_COND("svd_rank_for_energy {3,2,1}: 0 -> 0, 0.5 -> 1, 0.643 -> 2, 0.7 -> 2, 0.95 -> 3, 1 -> 3",
              svd_rank_for_energy(&h, 0.0) == 0 && svd_rank_for_energy(&h, 0.5) == 1 &&
              svd_rank_for_energy(&h, 0.643) == 2 && svd_rank_for_energy(&h, 0.7) == 2 &&
              svd_rank_for_energy(&h, 0.95) == 3 && svd_rank_for_energy(&h, 1.0) == 3);
    double z_vals[] = { 0.0, 0.0 };
    struct svd z = { .k = 2, .s = z_vals };
    TEST_COND("svd_rank_for_energy of a zero matrix: 0", svd_rank_for_energy(&z, 1.0) == 0);

    /* Errors name the tensor. */
    a[7] = NAN;
    rc = svd_factor(&f, a, 8, 6, "blk.3.w");
    TEST_COND("svd of a matrix holding a NaN: LM_EINVAL naming the tensor",
              rc == LM_EINVAL && strstr(lm_last_error(), "blk.3.w"));
    rc = svd_factor(&f, a, (uint64_t)1 << 31, 2, "huge.w");
    TEST_COND("svd beyond LAPACK's 32-bit sizes: LM_EUNSUPPORTED naming the tensor",
              rc == LM_EUNSUPPORTED && strstr(lm_last_error(), "huge.w"));
    rc = svd_factor(&f, a, 0, 6, "empty");
    TEST_COND("svd of a 0 x 6 matrix: k = 0, no error", rc == 0 && f.k == 0);
    svd_deinit(&f);
    svd_deinit(&f); /* twice is harmless */
    free(qu);
    free(qv);
    free(a);
}

/* svd_factor_f32 on numpy's random 37x23 and 23x37 matrices: singular
 * values and the rank-5 truncation. */
static void test_svd_golden(void)
{
    static const char *const names[] = { "svd_37x23", "svd_23x37" };
    for (int t = 0; t < 2; t++) {
        const struct golden_case *c = golden_find(names[t]);
        TEST_COND(names[t], c != NULL);
        if (!c)
            continue;
        const uint64_t rows = (uint64_t)golden_scalar(c, "rows");
        const uint64_t cols = (uint64_t)golden_scalar(c, "cols");
        const uint64_t r = (uint64_t)golden_scalar(c, "rank");
        const uint64_t n = rows * cols;
        float *a = golden_floats(c, "a", 0, n);
        float *a_copy = floats_new(n);
        memcpy(a_copy, a, n * sizeof(float));
        const struct golden_item *s = golden_item(c, "s", 0);
        const struct golden_item *rec = golden_item(c, "recon", 0);
        struct svd f;
        svd_init(&f);
        int rc = svd_factor_f32(&f, a, rows, cols, names[t]);
        char d[160];
        snprintf(d, sizeof d, "%s: factorises, input untouched", names[t]);
        TEST_COND(d, rc == 0 && memcmp(a, a_copy, n * sizeof(float)) == 0);
        if (rc == 0 && s && rec && s->n == f.k && rec->n == n) {
            double es = 0.0, er = 0.0;
            for (uint64_t l = 0; l < f.k; l++)
                es = fmax(es, fabs(f.s[l] - s->v[l]));
            double *out = doubles_new(n);
            svd_add_truncated(&f, r, 1.0, out);
            for (uint64_t e = 0; e < n; e++)
                er = fmax(er, fabs(out[e] - rec->v[e]));
            free(out);
            snprintf(d, sizeof d, "%s: singular values match numpy to 1e-12 x s_max (err %.2g)",
                     names[t], es);
            TEST_COND(d, es <= 1e-12 * s->v[0]);
            snprintf(d, sizeof d, "%s: rank-%llu truncation matches numpy to 1e-12 x s_max (err %.2g)",
                     names[t], (unsigned long long)r, er);
            TEST_COND(d, er <= 1e-12 * s->v[0]);
        }
        svd_deinit(&f);
        free(a);
        free(a_copy);
    }
}

/* ===== lore and twin against numpy ===== */

static void test_goldens_merge(void)
{
    static const char *const names[] = {
        "lore_one_model", "lore_three_models", "twin_rank2", "twin_energy",
    };
    for (int t = 0; t < 4; t++) {
        const struct golden_case *c = golden_find(names[t]);
        TEST_COND(names[t], c != NULL);
        if (!c)
            continue;
        const bool is_lore = names[t][0] == 'l';
        const uint64_t rows = (uint64_t)golden_scalar(c, "rows");
        const uint64_t cols = (uint64_t)golden_scalar(c, "cols");
        const int nm = (int)golden_scalar(c, "models");
        const uint64_t n = rows * cols;
        const struct merge_method *m = is_lore ? &merge_method_lore : &merge_method_twin;
        struct merge_tensor_params p = params_for(m, nm);
        const struct golden_item *w = golden_item(c, "weights", 0);
        LM_ASSERT(w && (int)w->n == nm);
        for (int i = 0; i < nm; i++)
            p.weight[i] = w->v[i];
        p.lambda = golden_scalar(c, "lambda");
        p.normalize = golden_scalar(c, "normalize") != 0.0;
        if (is_lore) {
            p.mu = golden_scalar(c, "mu");
            p.iterations = (int)golden_scalar(c, "iterations");
        } else {
            p.rank = (int)golden_scalar(c, "rank");
            p.energy = golden_scalar(c, "energy");
        }
        float *base = golden_floats(c, "base", 0, n);
        float *models[MERGE_MAX_MODELS];
        for (int i = 0; i < nm; i++)
            models[i] = golden_floats(c, "model", i, n);
        float *want = golden_floats(c, "out", 0, n);
        float *out = floats_new(n);
        int rc = run(m, names[t], rows, cols, base, (const float *const *)models, nm, &p, out);
        double worst = 0.0;
        for (uint64_t e = 0; e < n; e++)
            worst = fmax(worst, fabs((double)out[e] - (double)want[e]) /
                                    fmax(1.0, fabs((double)want[e])));
        char d[160];
        snprintf(d, sizeof d, "%s: %llux%llu, %d model(s): within 1e-5 relative of numpy (worst %.2g)",
                 names[t], (unsigned long long)rows, (unsigned long long)cols, nm, worst);
        TEST_COND(d, rc == 0 && worst <= 1e-5);

        if (is_lore) {
            /* The objective round by round, from the decomposition itself. */
            const struct golden_item *obj = golden_item(c, "objective", 0);
            const float *x[LORE_MAX_PARTS] = { base };
            for (int i = 0; i < nm; i++)
                x[i + 1] = models[i];
            double got[16] = { 0 };
            struct lore_parts lp;
            rc = lore_decompose(&lp, x, nm + 1, rows, cols, p.mu, p.iterations, names[t], got);
            lore_parts_free(&lp);
            double eo = 0.0;
            for (int it = 0; obj && it < p.iterations; it++)
                eo = fmax(eo, fabs(got[it] - obj->v[it]) / obj->v[it]);
            snprintf(d, sizeof d, "%s: objective after each of %d rounds matches numpy to 1e-9 (err %.2g)",
                     names[t], p.iterations, eo);
            TEST_COND(d, rc == 0 && obj && (int)obj->n == p.iterations && eo <= 1e-9);
        }
        free(base);
        for (int i = 0; i < nm; i++)
            free(models[i]);
        free(want);
        free(out);
    }
}

/* ===== lore properties ===== */

static void test_lore_properties(void)
{
    const uint64_t rows = 12, cols = 9, n = rows * cols;
    float *base = floats_new(n), *mods[MERGE_MAX_MODELS];
    for (int i = 0; i < MERGE_MAX_MODELS; i++)
        mods[i] = floats_new(n);
    make_trio(base, mods, MERGE_MAX_MODELS, rows, cols);
    const float *const *models = (const float *const *)mods;
    float *out = floats_new(n), *ref = floats_new(n);
    char d[200];

    /* mu = 0 keeps every singular value: the wrapped method's result, to a
     * few ulp, for any number of rounds and for every wrapped method. */
    static const struct { int on; const struct merge_method *inner; } wrapped[] = {
        { 0, &merge_method_task_arithmetic }, { 2, &merge_method_dare_linear },
    };
    for (int w = 0; w < 2; w++) {
        for (int iters = 1; iters <= 4; iters += 3) {
            struct merge_tensor_params p = params_for(&merge_method_lore, 2);
            p.on = wrapped[w].on;
            if (wrapped[w].inner->set_defaults)
                wrapped[w].inner->set_defaults(&p);
            p.mu = 0.0;
            p.iterations = iters;
            p.weight[0] = 0.7;
            p.weight[1] = 0.4;
            p.density[0] = p.density[1] = 0.6;
            p.seed = 11;
            int rc = run(&merge_method_lore, "blk.0.attn_q.weight", rows, cols, base, models, 2,
                         &p, out);
            int rc2 = run(wrapped[w].inner, "blk.0.attn_q.weight", rows, cols, base, models, 2,
                          &p, ref);
            uint64_t u = max_ulp(out, ref, n);
            snprintf(d, sizeof d, "lore mu 0, %d round(s), on %s: the wrapped result within 4 ulp "
                     "(max %llu)", iters, wrapped[w].inner->name, (unsigned long long)u);
            TEST_COND(d, rc == 0 && rc2 == 0 && u <= 4);
        }
    }

    /* All sixteen models (17 participants), mu 0. */
    {
        struct merge_tensor_params p = params_for(&merge_method_lore, MERGE_MAX_MODELS);
        p.mu = 0.0;
        int rc = run(&merge_method_lore, "all", rows, cols, base, models, MERGE_MAX_MODELS, &p, out);
        int rc2 = run(&merge_method_task_arithmetic, "all", rows, cols, base, models,
                      MERGE_MAX_MODELS, &p, ref);
        uint64_t u = max_ulp(out, ref, n);
        snprintf(d, sizeof d, "lore with %d models, mu 0: task arithmetic within 8 ulp (max %llu)",
                 MERGE_MAX_MODELS, (unsigned long long)u);
        TEST_COND(d, rc == 0 && rc2 == 0 && u <= 8);
    }

    /* mu > 0 changes the result (the test above can tell). */
    {
        struct merge_tensor_params p = params_for(&merge_method_lore, 2);
        p.mu = 0.3;
        int rc = run(&merge_method_lore, "x", rows, cols, base, models, 2, &p, out);
        run(&merge_method_task_arithmetic, "x", rows, cols, base, models, 2, &p, ref);
        TEST_COND("lore mu 0.3 differs from plain task arithmetic by over 1000 ulp",
                  rc == 0 && max_ulp(out, ref, n) > 1000);
    }

    /* Vectors: the wrapped method on the original values, bit for bit; a
     * shape of 0 x 0 reads as one row. */
    {
        struct merge_tensor_params p = params_for(&merge_method_lore, 2);
        p.mu = 0.5;
        int rc = run(&merge_method_lore, "norm", 1, n, base, models, 2, &p, out);
        run(&merge_method_task_arithmetic, "norm", 1, n, base, models, 2, &p, ref);
        bool same = memcmp(out, ref, n * sizeof(float)) == 0;
        rc |= run(&merge_method_lore, "norm", 0, 0, base, models, 2, &p, out);
        same = same && memcmp(out, ref, n * sizeof(float)) == 0;
        rc |= run(&merge_method_lore, "col", n, 1, base, models, 2, &p, out);
        same = same && memcmp(out, ref, n * sizeof(float)) == 0;
        TEST_COND("lore on 1 x n, 0 x 0 and n x 1 tensors: task arithmetic's bits", rc == 0 && same);
    }

    /* Larger mu, lower ranks; mu 1 leaves nothing, mu 0 everything. */
    {
        const float *x[3] = { base, mods[0], mods[1] };
        static const double mus[] = { 0.0, 0.05, 0.2, 0.5, 1.0 };
        uint64_t rank_sum[5] = { 0 };
        bool ok = true;
        for (int t = 0; t < 5; t++) {
            struct lore_parts lp;
            ok = ok && lore_decompose(&lp, x, 3, rows, cols, mus[t], 3, "ranks", NULL) == 0;
            for (int q = 0; q < 3; q++)
                rank_sum[t] += lp.rank[q];
            lore_parts_free(&lp);
        }
        snprintf(d, sizeof d, "lore delta ranks (3 parts, 12x9) for mu 0, 0.05, 0.2, 0.5, 1: "
                 "%llu %llu %llu %llu %llu, decreasing from 27 to 0",
                 (unsigned long long)rank_sum[0], (unsigned long long)rank_sum[1],
                 (unsigned long long)rank_sum[2], (unsigned long long)rank_sum[3],
                 (unsigned long long)rank_sum[4]);
        TEST_COND(d, ok && rank_sum[0] == 27 && rank_sum[0] > rank_sum[1] &&
                  rank_sum[1] > rank_sum[2] && rank_sum[2] > rank_sum[3] &&
                  rank_sum[3] > rank_sum[4] && rank_sum[4] == 0);
    }

    /* The objective never grows, round by round (four parts, 20 x 15). */
    {
        const uint64_t r2 = 20, c2 = 15, n2 = r2 * c2;
        float *b2 = floats_new(n2), *m2[3];
        for (int i = 0; i < 3; i++)
            m2[i] = floats_new(n2);
        make_trio(b2, m2, 3, r2, c2);
        const float *x[4] = { b2, m2[0], m2[1], m2[2] };
        static const double mus[] = { 0.1, 0.3, 0.6 };
        for (int t = 0; t < 3; t++) {
            double obj[10];
            struct lore_parts lp;
            int rc = lore_decompose(&lp, x, 4, r2, c2, mus[t], 10, "objective", obj);
            lore_parts_free(&lp);
            bool mono = true;
            for (int it = 1; it < 10; it++)
                mono = mono && obj[it] <= obj[it - 1] * (1.0 + 1e-12);
            snprintf(d, sizeof d, "lore objective, mu %.1f, 10 rounds: %.6g -> %.6g, never grows",
                     mus[t], obj[0], obj[9]);
            TEST_COND(d, rc == 0 && mono && obj[9] < obj[0]);
        }
        free(b2);
        for (int i = 0; i < 3; i++)
            free(m2[i]);
    }

    /* With one model (two parts), the mean is already the fixed point: the
     * two residuals are opposite, and so are their deltas. */
    {
        const float *x[2] = { base, mods[0] };
        double obj[3];
        struct lore_parts lp;
        int rc = lore_decompose(&lp, x, 2, rows, cols, 0.2, 3, "two", obj);
        double asym = 0.0;
        for (uint64_t e = 0; rc == 0 && e < n; e++)
            asym = fmax(asym, fabs(lp.delta[0][e] + lp.delta[1][e]));
        lore_parts_free(&lp);
        TEST_COND("lore with one model: delta_base = -delta_model, objective flat over rounds",
                  rc == 0 && asym <= 1e-12 && fabs(obj[2] - obj[0]) <= 1e-12 * obj[0]);
    }

    free(base);
    for (int i = 0; i < MERGE_MAX_MODELS; i++)
        free(mods[i]);
    free(out);
    free(ref);
}

/* ===== twin properties ===== */

static void test_twin_properties(void)
{
    const uint64_t rows = 10, cols = 7, n = rows * cols;
    float *base = floats_new(n), *mods[3];
    for (int i = 0; i < 3; i++)
        mods[i] = floats_new(n);
    make_trio(base, mods, 3, rows, cols);
    const float *const *models = (const float *const *)mods;
    float *out = floats_new(n), *ref = floats_new(n);
    char d[200];

    /* Full rank (7, or more: capped) or energy 1, one model of weight 1:
     * x_1 back, whatever M was (ties at density 0.5 makes M far from x_1). */
    static const struct { int rank; double energy; } full[] = { { 7, 0.9 }, { 1000, 0.9 }, { 0, 1.0 } };
    for (int t = 0; t < 3; t++) {
        struct merge_tensor_params p = params_for(&merge_method_twin, 1);
        p.on = 1; /* ties */
        if (merge_method_ties.set_defaults)
            merge_method_ties.set_defaults(&p);
        p.density[0] = 0.5;
        p.rank = full[t].rank;
        p.energy = full[t].energy;
        int rc = run(&merge_method_twin, "w", rows, cols, base, models, 1, &p, out);
        uint64_t u = max_ulp(out, mods[0], n);
        snprintf(d, sizeof d, "twin on ties, rank %d, energy %.1f, one model of weight 1: x_1 "
                 "within 64 ulp (max %llu)", full[t].rank, full[t].energy, (unsigned long long)u);
        TEST_COND(d, rc == 0 && u <= 64);
    }

    /* Rank 1 on an exactly rank-1 difference: b + 0.75 u v^T.
     * b, u, v in quarters and small powers of two, so x = b + u v^T,
     * M = b + 0.5 (x - b) and D = x - M = 0.5 u v^T are exact in float. */
    {
        float *x1 = floats_new(n);
        double *want = doubles_new(n);
        for (uint64_t i = 0; i < rows; i++)
            for (uint64_t j = 0; j < cols; j++) {
                double u = (double)((int)i - 4) * 0.5, v = (double)((int)(j % 3) + 1) * 0.25;
                double b = (double)((int)((i * 7 + j * 3) % 11) - 5) * 0.25;
                base[i * cols + j] = (float)b;
                x1[i * cols + j] = (float)(b + u * v);
                want[i * cols + j] = b + 0.75 * u * v;
            }
        struct merge_tensor_params p = params_for(&merge_method_twin, 1);
        p.weight[0] = 0.5;
        p.rank = 1;
        const float *one[1] = { x1 };
        int rc = run(&merge_method_twin, "r1", rows, cols, base, one, 1, &p, out);
        double err = 0.0;
        for (uint64_t e = 0; e < n; e++)
            err = fmax(err, fabs((double)out[e] - want[e]));
        snprintf(d, sizeof d, "twin rank 1 on a rank-1 difference: b + 0.75 u v^T to 1e-6 (err %.2g)",
                 err);
        TEST_COND(d, rc == 0 && err <= 1e-6);
        free(x1);
        free(want);
        make_trio(base, mods, 3, rows, cols);
    }

    /* Energy 0 keeps rank 0: M's bits; and so does a vector. */
    {
        struct merge_tensor_params p = params_for(&merge_method_twin, 3);
        p.weight[0] = 0.3;
        p.weight[1] = 0.5;
        p.weight[2] = 0.2;
        p.energy = 0.0;
        int rc = run(&merge_method_twin, "e0", rows, cols, base, models, 3, &p, out);
        run(&merge_method_task_arithmetic, "e0", rows, cols, base, models, 3, &p, ref);
        TEST_COND("twin energy 0: task arithmetic's bits",
                  rc == 0 && memcmp(out, ref, n * sizeof(float)) == 0);
        p.energy = 0.9;
        rc = run(&merge_method_twin, "bias", 1, n, base, models, 3, &p, out);
        run(&merge_method_task_arithmetic, "bias", 1, n, base, models, 3, &p, ref);
        TEST_COND("twin on a 1 x n tensor: task arithmetic's bits",
                  rc == 0 && memcmp(out, ref, n * sizeof(float)) == 0);
        /* rank 2 differs from M (the checks above can tell) */
        p.rank = 2;
        rc = run(&merge_method_twin, "r2", rows, cols, base, models, 3, &p, out);
        run(&merge_method_task_arithmetic, "r2", rows, cols, base, models, 3, &p, ref);
        TEST_COND("twin rank 2 differs from M by over 1000 ulp", rc == 0 && max_ulp(out, ref, n) > 1000);
    }

    free(base);
    for (int i = 0; i < 3; i++)
        free(mods[i]);
    free(out);
    free(ref);
}

/* ===== NaN, errors ===== */

static void test_nan_and_errors(void)
{
    const uint64_t rows = 6, cols = 5, n = rows * cols;
    float *base = floats_new(n), *mods[2] = { floats_new(n), floats_new(n) };
    make_trio(base, mods, 2, rows, cols);
    mods[1][7] = NAN;
    mods[0][9] = INFINITY;
    const float *const *models = (const float *const *)mods;
    float *out = floats_new(n), *ref = floats_new(n);

    struct merge_tensor_params p = params_for(&merge_method_lore, 2);
    int rc = run(&merge_method_lore, "nan", rows, cols, base, models, 2, &p, out);
    run(&merge_method_task_arithmetic, "nan", rows, cols, base, models, 2, &p, ref);
    TEST_COND("lore with a NaN and an infinity in the models: task arithmetic's bits, "
              "NaN written as 0x7fc00000",
              rc == 0 && memcmp(out, ref, n * sizeof(float)) == 0 &&
              float_bits(out[7]) == MERGE_NAN_BITS);
    p = params_for(&merge_method_twin, 2);
    p.rank = 2;
    rc = run(&merge_method_twin, "nan", rows, cols, base, models, 2, &p, out);
    TEST_COND("twin with a NaN in the models: M's bits, NaN written as 0x7fc00000",
              rc == 0 && memcmp(out, ref, n * sizeof(float)) == 0 &&
              float_bits(out[7]) == MERGE_NAN_BITS);
    make_trio(base, mods, 2, rows, cols);

    struct { const struct merge_method *m; const char *what; } cases[] = {
        { &merge_method_lore, "lore mu 1.5" }, { &merge_method_lore, "lore iterations 0" },
        { &merge_method_lore, "lore on 9" }, { &merge_method_twin, "twin energy -0.1" },
        { &merge_method_twin, "twin rank -1" }, { &merge_method_twin, "twin weight NaN" },
        { &merge_method_lore, "lore 4 x 5 shape for 30 values" },
    };
    for (int t = 0; t < (int)LM_ARRAY_SIZE(cases); t++) {
        p = params_for(cases[t].m, 2);
        uint64_t r = rows;
        switch (t) {
        case 0: p.mu = 1.5; break;
        case 1: p.iterations = 0; break;
        case 2: p.on = 9; break;
        case 3: p.energy = -0.1; break;
        case 4: p.rank = -1; break;
        case 5: p.weight[1] = NAN; break;
        case 6: r = 4; break;
        }
        struct merge_tensor_job job = {
            .name = "blk.2.ffn_up.weight", .n = n, .rows = r, .cols = cols, .base = base,
            .models = models, .n_models = 2, .params = &p, .out = out, .scratch = &scratch,
        };
        rc = cases[t].m->merge_tensor(&job);
        char d[160];
        snprintf(d, sizeof d, "%s: LM_EINVAL naming the tensor", cases[t].what);
        TEST_COND(d, rc == LM_EINVAL && strstr(lm_last_error(), "blk.2.ffn_up.weight"));
    }

    /* Registry entries. */
    TEST_COND("lore and twin: registered, wrap a method, no mergekit name, no calibration",
              merge_method_find("lore") == &merge_method_lore &&
              merge_method_find("twin") == &merge_method_twin &&
              merge_method_lore.wraps && merge_method_twin.wraps &&
              !mergekit_method_name(merge_method_lore.name) &&
              !mergekit_method_name(merge_method_twin.name) &&
              merge_method_lore.needs == 0 && merge_method_twin.needs == 0);
    TEST_COND("lore takes on, mu, iterations (and density through ties); twin takes rank, energy",
              merge_method_takes(&merge_method_lore, MERGE_PARAM_MU) &&
              merge_method_takes(&merge_method_lore, MERGE_PARAM_ITERATIONS) &&
              merge_method_accepts(&merge_method_lore, MERGE_PARAM_DENSITY) &&
              !merge_method_accepts(&merge_method_lore, MERGE_PARAM_RANK) &&
              merge_method_takes(&merge_method_twin, MERGE_PARAM_RANK) &&
              merge_method_takes(&merge_method_twin, MERGE_PARAM_ENERGY) &&
              !merge_method_accepts(&merge_method_twin, MERGE_PARAM_MU));

    free(base);
    free(mods[0]);
    free(mods[1]);
    free(out);
    free(ref);
}

/* ===== Repeatability ===== */

/* lore and twin on 300 x 280 matrices (large enough for OpenBLAS to
 * thread its products, with an inner dimension it would then block
 * differently): the same bits on a second run, and with OpenBLAS set to
 * two threads before the call. */
static void test_repeatable(void)
{
    const uint64_t rows = 300, cols = 280, n = rows * cols;
    float *base = floats_new(n), *mods[2] = { floats_new(n), floats_new(n) };
    /* noise: a flat spectrum, so that the kept ranks stay near 280 */
    for (uint64_t e = 0; e < n; e++) {
        base[e] = (float)rng_signed();
        mods[0][e] = base[e] + (float)(0.1 * rng_signed());
        mods[1][e] = base[e] + (float)(0.1 * rng_signed());
    }
    const float *const *models = (const float *const *)mods;
    float *out[2][3];
    for (int m = 0; m < 2; m++)
        for (int t = 0; t < 3; t++)
            out[m][t] = floats_new(n);
    const struct merge_method *meth[2] = { &merge_method_lore, &merge_method_twin };
    int rc = 0;
    for (int t = 0; t < 3; t++) {
        openblas_set_num_threads(t == 2 ? 2 : 1);
        for (int m = 0; m < 2; m++) {
            struct merge_tensor_params p = params_for(meth[m], 2);
            /* ranks near 280, so that the reconstructions' products have
             * an inner dimension OpenBLAS blocks differently on threads */
            p.mu = 0.01;
            p.iterations = 2;
            p.rank = 280;
            rc |= run(meth[m], "big", rows, cols, base, models, 2, &p, out[m][t]);
        }
    }
    const int threads_after = openblas_get_num_threads();
    for (int m = 0; m < 2; m++) {
        char d[160];
        snprintf(d, sizeof d, "%s 300x280: same bits on a second run", meth[m]->name);
        TEST_COND(d, rc == 0 && memcmp(out[m][0], out[m][1], n * sizeof(float)) == 0);
        snprintf(d, sizeof d, "%s 300x280: same bits with OpenBLAS set to 2 threads", meth[m]->name);
        TEST_COND(d, rc == 0 && memcmp(out[m][0], out[m][2], n * sizeof(float)) == 0);
    }
    TEST_COND("the SVD calls leave OpenBLAS at one thread", threads_after == 1);

    /* Why: OpenBLAS's own dgemm at 1 and 2 threads, inner dimension 300
     * (information only; it depends on the OpenBLAS build and CPU). */
    {
        const int dm = 300, dn = 280, dk = 300;
        double *a = doubles_new((uint64_t)dm * dk), *b = doubles_new((uint64_t)dk * dn);
        double *c1 = doubles_new((uint64_t)dm * dn), *c2 = doubles_new((uint64_t)dm * dn);
        for (int e = 0; e < dm * dk; e++)
            a[e] = rng_signed();
        for (int e = 0; e < dk * dn; e++)
            b[e] = rng_signed();
        openblas_set_num_threads(1);
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, dm, dn, dk, 1.0, a, dk, b, dn, 0.0,
                    c1, dn);
        openblas_set_num_threads(2);
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, dm, dn, dk, 1.0, a, dk, b, dn, 0.0,
                    c2, dn);
        openblas_set_num_threads(1);
        int differ = 0;
        for (int e = 0; e < dm * dn; e++)
            differ += c1[e] != c2[e];
        printf("      (info: plain dgemm 300x280x300 at 1 vs 2 threads: %d of %d entries differ)\n",
               differ, dm * dn);
        free(a);
        free(b);
        free(c1);
        free(c2);
    }

    free(base);
    free(mods[0]);
    free(mods[1]);
    for (int m = 0; m < 2; m++)
        for (int t = 0; t < 3; t++)
            free(out[m][t]);
}

int main(void)
{
    int grc = golden_load();
    TEST_COND("golden file tests/golden/lowrank/goldens.txt loads", grc == 0 && n_goldens == 6);
    if (grc)
        printf("      %s\n", lm_last_error());
    test_svd_known();
    test_svd_golden();
    test_goldens_merge();
    test_lore_properties();
    test_twin_properties();
    test_nan_and_errors();
    test_repeatable();
    golden_free();
    merge_scratch_deinit(&scratch);
    return test_report();
}
