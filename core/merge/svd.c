/* Thin SVDs through LAPACK's dgesdd, and the helpers built on them. See
 * svd.h for the contract.
 *
 * Row-major input: LAPACK reads matrices column by column, so a row-major
 * rows x cols matrix A is, to LAPACK, the cols x rows matrix B = A^T. From
 * B = U_B diag(s) V_B^T follows A = V_B diag(s) U_B^T: LAPACK's V_B^T
 * (k x rows, column-major, leading dimension k) is exactly A's U stored
 * row-major (rows x k), and LAPACK's U_B (cols x k, column-major) is A's V^T
 * stored row-major (k x cols). So the factors come out in row-major order
 * with no transposition at all.
 *
 * Buffers are 64-byte aligned, so that the kernels OpenBLAS picks see the
 * same alignment on every call. */
#include "svd.h"

#include <cblas.h>
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lm_error.h"

/* LAPACK's divide-and-conquer SVD, Fortran calling convention: every
 * argument by reference, and the length of the character argument after the
 * others. */
void dgesdd_(const char *jobz, const blasint *m, const blasint *n, double *a, const blasint *lda,
             double *s, double *u, const blasint *ldu, double *vt, const blasint *ldvt,
             double *work, const blasint *lwork, blasint *iwork, blasint *info,
             size_t jobz_len);

#define SVD_ALIGN 64

/* ===== One BLAS thread ===== */

static pthread_mutex_t blas_threads_lock = PTHREAD_MUTEX_INITIALIZER;

/* OpenBLAS blocks a product's inner dimension differently when it runs on
 * several threads, which changes the rounding, so the factors would depend
 * on its thread count. Before any BLAS or LAPACK call this module sets the
 * count to 1, as model_load does, and leaves it there: restoring a count
 * would race with other threads' calls here and with the engine, which wants
 * 1 too. The lock keeps the read and the write together. */
static void blas_use_one_thread(void)
{
    pthread_mutex_lock(&blas_threads_lock);
    if (openblas_get_num_threads() != 1)
        openblas_set_num_threads(1);
    pthread_mutex_unlock(&blas_threads_lock);
}

/* ===== Buffers ===== */

/* A 64-byte aligned block of n elements of `size` bytes (at least one), or
 * NULL with an LM_ENOMEM message naming the tensor and the buffer. */
static void *alloc_aligned(uint64_t n, size_t size, const char *name, const char *what)
{
    if (n == 0)
        n = 1;
    if (n > (SIZE_MAX - SVD_ALIGN) / size) {
        lm_err(LM_ENOMEM, "tensor '%s': SVD %s of %llu values overflows the address space",
               name, what, (unsigned long long)n);
        return NULL;
    }
    size_t bytes = ((size_t)n * size + SVD_ALIGN - 1) / SVD_ALIGN * SVD_ALIGN;
    void *p = aligned_alloc(SVD_ALIGN, bytes);
    if (!p)
        lm_err(LM_ENOMEM, "tensor '%s': out of memory for the SVD %s (%.2f GB)",
               name, what, (double)bytes / 1e9);
    return p;
}

double *svd_alloc_doubles(uint64_t n, const char *name, const char *what)
{
    return alloc_aligned(n, sizeof(double), name ? name : "?", what);
}

/* Makes *buf hold at least n doubles (contents not kept): 0 or LM_ENOMEM. */
static int reserve_doubles(double **buf, size_t *cap, uint64_t n, const char *name,
                           const char *what)
{
    if (*buf && *cap >= n)
        return 0;
    free(*buf);
    *cap = 0;
    if (!(*buf = alloc_aligned(n, sizeof(double), name, what)))
        return LM_ENOMEM;
    *cap = (size_t)n;
    return 0;
}

/* a * b, or UINT64_MAX when it does not fit. */
static uint64_t mul_sat(uint64_t a, uint64_t b)
{
    return (b != 0 && a > UINT64_MAX / b) ? UINT64_MAX : a * b;
}

void svd_init(struct svd *f)
{
    memset(f, 0, sizeof(*f));
}

void svd_deinit(struct svd *f)
{
    if (!f)
        return;
    free(f->u);
    free(f->s);
    free(f->vt);
    free(f->a);
    free(f->small);
    free(f->work);
    free(f->iwork);
    svd_init(f);
}

/* ===== Factorisation ===== */

/* Whether every entry is a finite number. */
static bool all_finite(const double *a, uint64_t n)
{
    for (uint64_t e = 0; e < n; e++)
        if (!isfinite(a[e]))
            return false;
    return true;
}

/* dgesdd on the row-major rows x cols doubles `a` (see the file comment);
 * dimensions already checked, buffers for u, s, vt, small reserved. */
static int run_dgesdd(struct svd *f, double *a, blasint rows, blasint cols, const char *name)
{
    const char jobz = 'S';
    const blasint m = cols, n = rows;  /* LAPACK's view: B = A^T is cols x rows */
    const blasint k = m < n ? m : n;
    const blasint lda = m, ldu = m, ldvt = k;
    blasint info = 0, lwork = -1;
    double query = 0.0;

    if (!f->iwork || f->cap_iwork < 8 * (size_t)k) {
        free(f->iwork);
        f->cap_iwork = 0;
        if (!(f->iwork = alloc_aligned(8 * (uint64_t)k, sizeof(blasint), name,
                                       "integer work space")))
            return LM_ENOMEM;
        f->cap_iwork = 8 * (size_t)k;
    }
    /* LAPACK's U_B is A's V^T, LAPACK's V_B^T is A's U. */
    dgesdd_(&jobz, &m, &n, a, &lda, f->s, f->vt, &ldu, f->u, &ldvt, &query, &lwork,
            (blasint *)f->iwork, &info, 1);
    if (info != 0)
        return lm_err(LM_EFORMAT, "tensor '%s': LAPACK dgesdd work-space query failed (info %d)",
                      name, (int)info);
    /* The query answers in a double; round up and leave a little slack. */
    double want = ceil(query) + 1.0;
    if (!(want <= (double)INT32_MAX))
        return lm_err(LM_EUNSUPPORTED, "tensor '%s': LAPACK dgesdd wants %.0f doubles of work "
                      "space, beyond its 32-bit sizes", name, want);
    lwork = (blasint)want;
    int rc = reserve_doubles(&f->work, &f->cap_work, (uint64_t)lwork, name, "work space");
    if (rc)
        return rc;
    dgesdd_(&jobz, &m, &n, a, &lda, f->s, f->vt, &ldu, f->u, &ldvt, f->work, &lwork,
            (blasint *)f->iwork, &info, 1);
    if (info < 0)
        return lm_err(LM_EFORMAT, "tensor '%s': LAPACK dgesdd rejected argument %d", name,
                      (int)-info);
    if (info > 0)
        return lm_err(LM_EFORMAT, "tensor '%s': LAPACK dgesdd did not converge (%d superdiagonals "
                      "left)", name, (int)info);
    return 0;
}

/* Checks the shape and reserves the factors: 0 or an error. */
static int prepare(struct svd *f, uint64_t rows, uint64_t cols, const char *name)
{
    f->rows = rows;
    f->cols = cols;
    f->k = rows < cols ? rows : cols;
    /* LAPACK's integers are 32 bits wide, and so is the index arithmetic
     * inside it: the whole matrix must stay within their range. */
    if (rows > (uint64_t)INT32_MAX || cols > (uint64_t)INT32_MAX ||
        mul_sat(rows, cols) > (uint64_t)INT32_MAX)
        return lm_err(LM_EUNSUPPORTED, "tensor '%s': %llu x %llu is beyond LAPACK's 32-bit sizes",
                      name, (unsigned long long)rows, (unsigned long long)cols);
    const uint64_t k = f->k;
    int rc;
    if ((rc = reserve_doubles(&f->u, &f->cap_u, mul_sat(rows, k), name, "left factor")) ||
        (rc = reserve_doubles(&f->vt, &f->cap_vt, mul_sat(k, cols), name, "right factor")) ||
        (rc = reserve_doubles(&f->s, &f->cap_s, k, name, "singular values")) ||
        (rc = reserve_doubles(&f->small, &f->cap_small, mul_sat(k, k), name, "scaled factor")))
        return rc;
    return 0;
}

int svd_factor(struct svd *f, double *a, uint64_t rows, uint64_t cols, const char *name)
{
    name = name ? name : "?";
    int rc = prepare(f, rows, cols, name);
    if (rc)
        return rc;
    if (f->k == 0)
        return 0;
    if (!all_finite(a, rows * cols))
        return lm_err(LM_EINVAL, "tensor '%s': a NaN or an infinity in the %llu x %llu matrix; "
                      "it has no SVD", name, (unsigned long long)rows, (unsigned long long)cols);
    blas_use_one_thread();
    return run_dgesdd(f, a, (blasint)rows, (blasint)cols, name);
}

int svd_factor_f32(struct svd *f, const float *a, uint64_t rows, uint64_t cols,
                   const char *name)
{
    name = name ? name : "?";
    int rc = prepare(f, rows, cols, name);
    if (rc)
        return rc;
    if (f->k == 0)
        return 0;
    const uint64_t n = rows * cols;
    if ((rc = reserve_doubles(&f->a, &f->cap_a, n, name, "input copy")))
        return rc;
    for (uint64_t e = 0; e < n; e++)
        f->a[e] = (double)a[e];
    return svd_factor(f, f->a, rows, cols, name);
}

/* ===== Helpers ===== */

uint64_t svd_shrink(struct svd *f, double tau)
{
    uint64_t r = 0;
    for (uint64_t l = 0; l < f->k; l++) {
        double v = f->s[l] - tau;
        f->s[l] = v > 0.0 ? v : 0.0;
        if (f->s[l] > 0.0)
            r++;
    }
    return r;
}

double svd_nuclear_norm(const struct svd *f)
{
    double sum = 0.0;
    for (uint64_t l = 0; l < f->k; l++)
        sum += f->s[l];
    return sum;
}

uint64_t svd_rank_for_energy(const struct svd *f, double energy)
{
    double total = 0.0;
    for (uint64_t l = 0; l < f->k; l++)
        total += f->s[l] * f->s[l];
    const double target = energy * total;
    double sum = 0.0;
    uint64_t r = 0;
    /* The same sums in the same order as `total`, so energy 1 stops at k
     * at the latest. */
    while (r < f->k && sum < target) {
        sum += f->s[r] * f->s[r];
        r++;
    }
    return r;
}

void svd_add_truncated(struct svd *f, uint64_t r, double alpha, double *out)
{
    if (r > f->k)
        r = f->k;
    if (r == 0)
        return;
    const uint64_t rows = f->rows, cols = f->cols, k = f->k;
    blas_use_one_thread();
    if (rows >= cols) {
        /* V^T is the small factor (k = cols): scale its first r rows. */
        for (uint64_t l = 0; l < r; l++) {
            const double g = alpha * f->s[l];
            for (uint64_t j = 0; j < cols; j++)
                f->small[l * cols + j] = g * f->vt[l * cols + j];
        }
        /* out (rows x cols) += U[:, :r] (leading dimension k) * small (r x cols). */
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (blasint)rows, (blasint)cols,
                    (blasint)r, 1.0, f->u, (blasint)k, f->small, (blasint)cols, 1.0, out,
                    (blasint)cols);
    } else {
        /* U is the small factor (k = rows): scale its first r columns. */
        for (uint64_t i = 0; i < rows; i++)
            for (uint64_t l = 0; l < r; l++)
                f->small[i * r + l] = (alpha * f->s[l]) * f->u[i * k + l];
        /* out (rows x cols) += small (rows x r) * V^T[:r, :]. */
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (blasint)rows, (blasint)cols,
                    (blasint)r, 1.0, f->small, (blasint)r, f->vt, (blasint)cols, 1.0, out,
                    (blasint)cols);
    }
}
