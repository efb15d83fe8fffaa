/* Thin singular value decompositions of row-major matrices, in double
 * precision through LAPACK's dgesdd (exported by OpenBLAS), and the helpers
 * the SVD-based merge methods (lowrank.c) build on: singular value
 * thresholding, the rank that holds a share of the energy, and truncated
 * reconstructions added into an output.
 *
 * Reproducibility: the same input gives the same bits on every call, from any
 * thread, whatever OpenBLAS's thread count. OpenBLAS splits a matrix product
 * differently when it runs on several threads (its blocking of the inner
 * dimension changes), which changes the rounding; so every BLAS and LAPACK
 * call made here runs with OpenBLAS at one thread, the count the engine uses
 * too (the program's own pool provides the parallelism): this module sets
 * OpenBLAS's thread count to 1 when it is not, as model_load does, and
 * leaves it there. Across machines the bits can differ in the last places:
 * OpenBLAS picks its kernels for the CPU it runs on. */
#ifndef MS_CORE_MERGE_SVD_H
#define MS_CORE_MERGE_SVD_H

#include <stddef.h>
#include <stdint.h>

/* A factorisation A = U diag(s) V^T of a rows x cols matrix, k = min(rows,
 * cols), and the buffers it reuses from one call to the next. Initialise
 * with svd_init (or zero it), release with svd_deinit. */
struct svd {
    uint64_t rows, cols, k;
    double  *u;    /* (rows, k) row-major: column l is the l-th left singular vector */
    double  *s;    /* (k): singular values, descending, >= 0 */
    double  *vt;   /* (k, cols) row-major: row l is the l-th right singular vector */

    /* Work space (private). */
    double  *a;       /* (rows, cols): the double copy svd_factor_f32 makes */
    double  *small;   /* (k, k): the scaled factor of a reconstruction */
    double  *work;    /* dgesdd's work array */
    void    *iwork;   /* (8 k) LAPACK integers: dgesdd's integer work array */
    size_t   cap_u, cap_s, cap_vt, cap_a, cap_small, cap_work, cap_iwork;
};

void svd_init(struct svd *f);
/* Frees every buffer; accepts a zeroed or already released struct. */
void svd_deinit(struct svd *f);

/* Factorises the rows x cols row-major matrix `a`, which it overwrites
 * (LAPACK works in place). `name` names the tensor in error messages.
 * 0, or:
 *   LM_EINVAL        a NaN or an infinity in `a` (it has no SVD);
 *   LM_EUNSUPPORTED  a dimension beyond LAPACK's 32-bit integers;
 *   LM_ENOMEM        a buffer could not be allocated;
 *   LM_EFORMAT       dgesdd failed (it did not converge).
 * A matrix with no entries (rows or cols 0) gives k = 0. */
int svd_factor(struct svd *f, double *a, uint64_t rows, uint64_t cols, const char *name);
/* The same for a float matrix, left untouched: factorised from a double
 * copy (rows x cols doubles more memory). */
int svd_factor_f32(struct svd *f, const float *a, uint64_t rows, uint64_t cols,
                   const char *name);

/* n doubles, 64-byte aligned, for matrices handed to svd_factor (so that
 * OpenBLAS's kernels see the same alignment on every call); caller frees
 * with free(). NULL with an LM_ENOMEM message naming the tensor and `what`. */
double *svd_alloc_doubles(uint64_t n, const char *name, const char *what);

/* Singular value thresholding: s_l = max(s_l - tau, 0) for every l (tau >=
 * 0). Returns how many values stay above 0, which, since they are sorted, is
 * the rank of the thresholded matrix U diag(s) V^T. */
uint64_t svd_shrink(struct svd *f, double tau);

/* The sum of the singular values (the nuclear norm). */
double svd_nuclear_norm(const struct svd *f);

/* The smallest r whose r largest squared singular values sum to at least
 * `energy` (in [0, 1]) times the sum of all of them, the sums running from
 * the largest value down. 0 for energy 0 and for a zero matrix; at most k
 * (energy 1 can stop earlier when the last values add nothing to the sum). */
uint64_t svd_rank_for_energy(const struct svd *f, double energy);

/* out += alpha * sum_{l < r} s_l u_l v_l^T: the rank-r truncation, scaled,
 * added into the rows x cols row-major doubles `out` (r is capped at k). The
 * smaller factor (k x k at most) is scaled in private work space, and the
 * product is one dgemm. */
void svd_add_truncated(struct svd *f, uint64_t r, double alpha, double *out);

#endif
