/* lore and twin: merge methods built on singular value decompositions
 * (svd.h). Both wrap a task-vector method, chosen by `on` (default
 * task_arithmetic), whose parameters and defaults apply too.
 *
 * lore (LoRE-Merging, low-rank estimation). The base b and the models
 * x_1..x_n are all participants x_p (the base counts as one more fine-tuned
 * model: a shared part needs at least two of them, and the long-to-short use
 * case has one base and one model). For each matrix:
 *
 *   theta0  = mean_p x_p
 *   tau_p   = mu * sigma_max(x_p - theta0)          once, from that mean
 *   repeat up to `iterations` times (stopping early once theta0 moves by
 *   less than 1e-9 of its largest magnitude, far below float precision):
 *     delta_p = SVT(x_p - theta0, tau_p)            for every p
 *     theta0  = mean_p (x_p - delta_p)
 *   b' = theta0 + delta_b,  x_i' = theta0 + delta_i
 *   result = the wrapped method on base b' and models x_i', same parameters
 *
 * SVT(A, tau) keeps A's singular vectors and shrinks its singular values,
 * s -> max(s - tau, 0). Each round minimises, first over the deltas, then
 * over theta0, the objective
 *
 *   sum_p ( 1/2 ||theta0 + delta_p - x_p||_F^2 + tau_p ||delta_p||_* )
 *
 * (||.||_* is the nuclear norm, the sum of the singular values), so the
 * objective never grows from one round to the next. That is why tau_p is
 * set once: recomputed every round from the moving theta0, it changes the
 * objective itself, and the objective then often grows. mu = 0 keeps every
 * singular value: the deltas are exact, and the result is the wrapped
 * method's on the original tensors up to rounding (a few ulp). Larger mu
 * gives deltas of lower rank, and more of each model in the shared part.
 * With one model (two participants) the two residuals from the mean are
 * opposite, and so are their deltas: the first round is already the fixed
 * point, b' = m - S and x' = m + S with m = (b + x) / 2 and
 * S = SVT((x - b) / 2, mu sigma_max((x - b) / 2)), so the wrapped method
 * sees the task vector x' - b' = 2 S. Embeddings and lm_head are matrices
 * like the others.
 *
 * twin (Twin-Merging's merge step, without its router). For each matrix:
 *
 *   M      = the wrapped method on (b, x_i)
 *   D_i    = x_i - M
 *   r      = `rank` when > 0, else the smallest r whose largest squared
 *            singular values hold at least `energy` of D_i's total (chosen
 *            per model); capped at min(rows, cols)
 *   result = M + sum_i w_i * trunc_r(D_i)
 *
 * where trunc_r keeps the r largest singular values. The weights w_i are
 * the models' `weight`s; lambda and normalize apply to M only. A full rank
 * (or energy 1) with one model of weight 1 gives x_1 back; rank 0 by energy
 * 0 gives M. Models of weight 0 add nothing and are not decomposed.
 *
 * Both:
 * - Vectors have no low-rank structure: norms and biases (and any tensor
 *   with a single row or column) get the wrapped method on the original
 *   values (twin: M).
 * - Arithmetic is in double from the float32 inputs: means, differences,
 *   SVDs (LAPACK dgesdd) and reconstructions. lore rounds the denoised
 *   inputs to float once, for the wrapped method; twin rounds its sum once.
 *   A NaN in a result is written as 0x7fc00000 (merge_method.h).
 * - A NaN or an infinity in any input of a matrix (or in twin's M) leaves no
 *   SVD to take: that tensor gets the wrapped method on the original values
 *   (twin: M), so NaNs land where the wrapped method puts them.
 * - The same inputs give the same bits on every run whatever the thread
 *   counts (svd.h: OpenBLAS runs at one thread here); across CPUs the last
 *   bits may differ, as OpenBLAS picks its kernels per CPU.
 * - Errors name the tensor: LAPACK failures, and out of memory.
 *
 * Memory per matrix of n = rows x cols entries, k = min(rows, cols), on top
 * of the caller's inputs and output (all allocated for the tensor and freed
 * before returning; the SVD's work space is O(k^2)):
 *   lore with P = n_models + 1 participants: 8 n (P + 2) bytes, from theta0,
 *     the P deltas in double and the SVD's left or right factor (the
 *     denoised float inputs replace the deltas one by one);
 *   twin: 24 n bytes: the difference being factorised, its large factor and
 *     the double accumulator.
 * For a 151936 x 896 embedding (n = 136.1 M): lore with one model 4.4 GB,
 * twin 3.3 GB.
 *
 * Time: an SVD of a rows x cols matrix costs O(rows cols k). lore takes P x
 * iterations of them per matrix, twin one per model of nonzero weight. */
#include "merge_method.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "lm_error.h"
#include "lowrank.h"
#include "svd.h"

/* ===== Shared ===== */

/* The job as a matrix: sets *rows, *cols and returns 1 for a matrix with
 * two or more rows and columns, 0 for a vector-like tensor, or LM_EINVAL
 * when the shape does not match n. */
static int job_matrix(const struct merge_tensor_job *job, uint64_t *rows, uint64_t *cols)
{
    uint64_t r = job->rows, c = job->cols;
    if (r == 0 && c == 0) {
        r = 1;
        c = job->n;
    }
    if (c != 0 && r > UINT64_MAX / c)
        r = 0; /* cannot match n below */
    if (r * c != job->n)
        return lm_err(LM_EINVAL, "tensor '%s': shape %llu x %llu does not hold its %llu values",
                      job->name ? job->name : "?", (unsigned long long)job->rows,
                      (unsigned long long)job->cols, (unsigned long long)job->n);
    *rows = r;
    *cols = c;
    return r >= 2 && c >= 2;
}

static bool floats_finite(const float *x, uint64_t n)
{
    for (uint64_t e = 0; e < n; e++)
        if (!isfinite(x[e]))
            return false;
    return true;
}

/* Whether the base and every model are finite. */
static bool job_inputs_finite(const struct merge_tensor_job *job)
{
    if (!floats_finite(job->base, job->n))
        return false;
    for (int i = 0; i < job->n_models; i++)
        if (!floats_finite(job->models[i], job->n))
            return false;
    return true;
}

/* The wrapped method on `job` with the base and models replaced. */
static int inner_on(const struct merge_tensor_job *job, const float *base,
                    const float *const *models)
{
    struct merge_tensor_job in = *job;
    in.base = base;
    in.models = models;
    return merge_inner_tensor(&in);
}

/* ===== lore ===== */

void lore_parts_free(struct lore_parts *lp)
{
    free(lp->theta);
    lp->theta = NULL;
    for (int p = 0; p < LORE_MAX_PARTS; p++) {
        free(lp->delta[p]);
        lp->delta[p] = NULL;
    }
}

/* sum_p ( 1/2 ||theta0 + delta_p - x_p||^2 + tau_p nuc[p] ), nuc[p] the
 * nuclear norm of delta_p. */
static double lore_objective(const struct lore_parts *lp, const float *const *x, uint64_t n,
                             const double *nuc)
{
    double obj = 0.0;
    for (int p = 0; p < lp->n_parts; p++) {
        double sq = 0.0;
        for (uint64_t e = 0; e < n; e++) {
            const double r = lp->theta[e] + lp->delta[p][e] - (double)x[p][e];
            sq += r * r;
        }
        obj += 0.5 * sq + lp->tau[p] * nuc[p];
    }
    return obj;
}

int lore_decompose(struct lore_parts *lp, const float *const *x, int n_parts,
                   uint64_t rows, uint64_t cols, double mu, int iterations,
                   const char *name, double *objective)
{
    LM_ASSERT(n_parts >= 1 && n_parts <= LORE_MAX_PARTS);
    const uint64_t n = rows * cols;
    memset(lp, 0, sizeof(*lp));
    lp->n_parts = n_parts;
    if (!(lp->theta = svd_alloc_doubles(n, name, "shared part")))
        return LM_ENOMEM;
    for (int p = 0; p < n_parts; p++)
        if (!(lp->delta[p] = svd_alloc_doubles(n, name, "low-rank part")))
            return LM_ENOMEM;

    /* theta0 = the mean of the participants. */
    for (uint64_t e = 0; e < n; e++) {
        double sum = 0.0;
        for (int p = 0; p < n_parts; p++)
            sum += (double)x[p][e];
        lp->theta[e] = sum / n_parts;
    }

    struct svd f;
    svd_init(&f);
    double nuc[LORE_MAX_PARTS] = { 0 };
    int rc = 0;
    for (int it = 0; it < iterations && !rc; it++) {
        /* delta_p = SVT(x_p - theta0, tau_p); the SVD works in place on
         * delta_p's buffer, which then receives the reconstruction. */
        for (int p = 0; p < n_parts && !rc; p++) {
            double *d = lp->delta[p];
            for (uint64_t e = 0; e < n; e++)
                d[e] = (double)x[p][e] - lp->theta[e];
            if ((rc = svd_factor(&f, d, rows, cols, name)))
                break;
            if (it == 0)
                lp->tau[p] = mu * f.s[0];
            lp->rank[p] = svd_shrink(&f, lp->tau[p]);
            nuc[p] = svd_nuclear_norm(&f);
            memset(d, 0, n * sizeof(double));
            svd_add_truncated(&f, lp->rank[p], 1.0, d);
        }
        if (rc)
            break;
        /* theta0 = mean_p (x_p - delta_p) */
        double step = 0.0, size = 0.0;
        for (uint64_t e = 0; e < n; e++) {
            double sum = 0.0;
            for (int p = 0; p < n_parts; p++)
                sum += (double)x[p][e] - lp->delta[p][e];
            double t = sum / n_parts;
            step = fmax(step, fabs(t - lp->theta[e]));
            size = fmax(size, fabs(t));
            lp->theta[e] = t;
        }
        if (objective)
            objective[it] = lore_objective(lp, x, n, nuc);
        /* Converged: theta0 moved by less than 1e-9 of its size, far below
         * float precision, so further rounds cannot change the float
         * result. With one model the first round is already the fixed point
         * (up to rounding in the SVD), which makes lore on a base and one
         * model cost one SVD per participant instead of `iterations`. */
        if (step <= 1e-9 * size) {
            for (int k = it + 1; objective && k < iterations; k++)
                objective[k] = objective[it];
            break;
        }
    }
    svd_deinit(&f);
    return rc;
}

static const enum merge_param_id lore_params[] = {
    MERGE_PARAM_ON, MERGE_PARAM_MU, MERGE_PARAM_ITERATIONS, MERGE_PARAM_COUNT,
};

static int lore_merge(const struct merge_tensor_job *job)
{
    int rc = merge_job_check(&merge_method_lore, job);
    if (rc)
        return rc;
    uint64_t rows, cols;
    int is_matrix = job_matrix(job, &rows, &cols);
    if (is_matrix < 0)
        return is_matrix;
    if (!is_matrix || !job_inputs_finite(job))
        return merge_inner_tensor(job);

    const char *name = job->name ? job->name : "?";
    const uint64_t n = job->n;
    const int n_parts = job->n_models + 1;
    const float *x[LORE_MAX_PARTS];
    x[0] = job->base;
    for (int i = 0; i < job->n_models; i++)
        x[i + 1] = job->models[i];

    struct lore_parts lp;
    float *prepared[LORE_MAX_PARTS] = { 0 };
    rc = lore_decompose(&lp, x, n_parts, rows, cols, job->params->mu, job->params->iterations,
                        name, NULL);
    /* The denoised inputs theta0 + delta_p, rounded once; each delta is
     * released as soon as its float copy exists. */
    for (int p = 0; p < n_parts && !rc; p++) {
        if (!(prepared[p] = lm_malloc_array((size_t)n, sizeof(float)))) {
            rc = lm_err(LM_ENOMEM, "tensor '%s': out of memory for lore's denoised input %d",
                        name, p);
            break;
        }
        for (uint64_t e = 0; e < n; e++)
            prepared[p][e] = (float)(lp.theta[e] + lp.delta[p][e]);
        free(lp.delta[p]);
        lp.delta[p] = NULL;
    }
    lore_parts_free(&lp);
    if (!rc)
        rc = inner_on(job, prepared[0], (const float *const *)&prepared[1]);
    for (int p = 0; p < n_parts; p++)
        free(prepared[p]);
    return rc;
}

const struct merge_method merge_method_lore = {
    .name = "lore",
    .summary = "LoRE: base and models = shared part + low-rank deltas (SVD, threshold mu); "
               "merges the denoised tensors with `on`",
    .min_models = 1,
    .max_models = MERGE_MAX_MODELS,
    .params = lore_params,
    .set_defaults = NULL,
    .merge_tensor = lore_merge,
    .needs = 0,
    .wraps = true,
};

/* ===== twin ===== */

static const enum merge_param_id twin_params[] = {
    MERGE_PARAM_ON, MERGE_PARAM_WEIGHT, MERGE_PARAM_RANK, MERGE_PARAM_ENERGY, MERGE_PARAM_COUNT,
};

static int twin_merge(const struct merge_tensor_job *job)
{
    int rc = merge_job_check(&merge_method_twin, job);
    if (rc)
        return rc;
    uint64_t rows, cols;
    int is_matrix = job_matrix(job, &rows, &cols);
    if (is_matrix < 0)
        return is_matrix;
    /* M, in the output. */
    if ((rc = merge_inner_tensor(job)))
        return rc;
    if (!is_matrix || !job_inputs_finite(job) || !floats_finite(job->out, job->n))
        return 0;

    const char *name = job->name ? job->name : "?";
    const struct merge_tensor_params *p = job->params;
    const uint64_t n = job->n;
    double *acc = svd_alloc_doubles(n, name, "twin's sum");
    double *d = svd_alloc_doubles(n, name, "model difference");
    if (!acc || !d) {
        free(acc);
        free(d);
        return LM_ENOMEM;
    }
    memset(acc, 0, n * sizeof(double));

    struct svd f;
    svd_init(&f);
    for (int i = 0; i < job->n_models && !rc; i++) {
        if (p->weight[i] == 0.0)
            continue;
        /* D_i = x_i - M, truncated, weighted, added up. */
        const float *xi = job->models[i];
        for (uint64_t e = 0; e < n; e++)
            d[e] = (double)xi[e] - (double)job->out[e];
        if ((rc = svd_factor(&f, d, rows, cols, name)))
            break;
        uint64_t r = p->rank > 0 ? (uint64_t)p->rank : svd_rank_for_energy(&f, p->energy);
        if (r > f.k)
            r = f.k;
        svd_add_truncated(&f, r, p->weight[i], acc);
    }
    svd_deinit(&f);
    if (!rc)
        for (uint64_t e = 0; e < n; e++)
            job->out[e] = merge_nan_canonical((float)((double)job->out[e] + acc[e]));
    free(acc);
    free(d);
    return rc;
}

const struct merge_method merge_method_twin = {
    .name = "twin",
    .summary = "Twin: merges with `on`, then adds back each model's difference from it, "
               "truncated to low rank (SVD: rank, or energy)",
    .min_models = 1,
    .max_models = MERGE_MAX_MODELS,
    .params = twin_params,
    .set_defaults = NULL,
    .merge_tensor = twin_merge,
    .needs = 0,
    .wraps = true,
};
