/* The loss gradient (see backward.h for what it computes and what it
 * holds in memory). Layout of this file: the state of one pass and its
 * buffers; products with the weights (x W^T, dy W, dy^T x); attention
 * forward and backward; RMSNorm backward; one layer forward and backward;
 * lm_head and the loss; model_loss_grad().
 *
 * Determinism: every parallel loop writes disjoint outputs, each computed
 * by one call whose blocking depends on the shapes only, and every sum over
 * tokens or heads runs in a fixed order on one thread. So the bits do not
 * depend on the number of workers. */
#include "backward.h"

#include <cblas.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "convert.h"
#include "kernels.h"
#include "lm_error.h"
#include "model_internal.h"
#include "pool.h"

/* Block sizes. They depend on nothing but these constants and the shapes,
 * never on the number of workers. Each can be set at compile time (small
 * values make the tiny test models cross every block boundary). */

/* Query rows per attention block: a worker holds the probabilities and
 * their gradient for one block (BWD_ATTN_BLOCK x n floats each). */
#ifndef BWD_ATTN_BLOCK
#define BWD_ATTN_BLOCK 64
#endif
/* Input columns per task of dx = dy W (the weight is read in column
 * strips, so that each task owns its output columns). */
#ifndef BWD_COL_BLOCK
#define BWD_COL_BLOCK 64
#endif
/* Weight rows per task of dW = dy^T x. */
#ifndef BWD_ROW_BLOCK
#define BWD_ROW_BLOCK 64
#endif
/* Floats of one chunk of logit rows (64 MiB): a 150k vocabulary takes
 * about a hundred tokens at a time. */
#ifndef BWD_LOGITS_ELEMS
#define BWD_LOGITS_ELEMS (16 * 1024 * 1024)
#endif

/* ===== State ===== */

struct lg {
    struct model *m;
    const struct model_grad_sink *sink;
    const int32_t *tokens;
    int64_t n;                     /* tokens in the sequence */
    int64_t dim, hd, half, n_head, n_kv, q_dim, kv_dim, ff, n_vocab, n_layer;
    char name[192];                /* the tensor name being delivered */

    /* kept for the whole pass */
    float *xs;                     /* (n_layer + 1, n, dim) residual stream entering
                                      each layer, then after the last one */
    float *rope_cos, *rope_sin, *rope_nsin; /* (n, half); nsin = -sin undoes the rotation */

    /* one layer's activations, from the forward pass or recomputed */
    float *h1;                     /* (n, dim) input_layernorm(x) */
    float *q_raw, *k_raw;          /* (n, q_dim), (n, kv_dim) q/k + bias before
                                      q_norm/k_norm; Qwen3 only, else NULL */
    float *q, *k, *v;              /* (n, q_dim), (n, kv_dim) x2: after norm and RoPE */
    float *att;                    /* (n, q_dim) attention output, o_proj's input */
    float *x1;                     /* (n, dim) residual after attention */
    float *h2;                     /* (n, dim) post_attention_layernorm(x1) */
    float *gate, *up, *act;        /* (n, ff) gate_proj, up_proj, silu(gate) * up */

    /* gradients (only with a sink) */
    float *dx;                     /* (n, dim) of the residual stream */
    float *dh;                     /* (n, dim) of a norm's output; norm(x_last) in the head pass */
    float *dq, *dk, *dv;           /* (n, q_dim), (n, kv_dim) x2 */
    float *datt;                   /* (n, q_dim) */
    float *dkh, *dvh;              /* (n_head, n, hd) dK and dV per query head */
    float *dgate, *dup;            /* (n, ff); dgate holds d(act) first */
    float *gmat;                   /* the largest layer matrix's gradient */
    double *gvec;                  /* a norm weight's or bias's gradient */
    float *gvec_f;                 /* the same rounded to float32 for the sink */
    float *gemb;                   /* (n_vocab, dim) embedding (and lm_head) gradient */

    /* lm_head */
    float *logit_rows;             /* (chunk_rows, n_vocab) logits, then their gradient */
    double *row_loss;              /* (chunk_rows) cross-entropy of each row */
    int64_t chunk_rows;

    float **w_prob, **w_dprob;     /* per worker: (BWD_ATTN_BLOCK, n) */
};

static void lg_free(struct lg *g)
{
    float **bufs[] = { &g->xs, &g->rope_cos, &g->rope_sin, &g->rope_nsin, &g->h1, &g->q_raw,
                       &g->k_raw, &g->q, &g->k, &g->v, &g->att, &g->x1, &g->h2, &g->gate, &g->up,
                       &g->act, &g->dx, &g->dh, &g->dq, &g->dk, &g->dv, &g->datt, &g->dkh, &g->dvh,
                       &g->dgate, &g->dup, &g->gmat, &g->gvec_f, &g->gemb, &g->logit_rows };
    for (size_t i = 0; i < LM_ARRAY_SIZE(bufs); i++) {
        free(*bufs[i]);
        *bufs[i] = NULL;
    }
    free(g->gvec);
    free(g->row_loss);
    for (int w = 0; w < g->m->n_workers; w++) {
        if (g->w_prob)
            free(g->w_prob[w]);
        if (g->w_dprob)
            free(g->w_dprob[w]);
    }
    free(g->w_prob);
    free(g->w_dprob);
}

/* *p = n floats, or leaves *p NULL when !want. */
static int lg_alloc(float **p, bool want, int64_t n)
{
    if (!want)
        return 0;
    *p = lm_malloc_array((size_t)n, sizeof(float));
    return *p ? 0 : LM_ENOMEM;
}

static int lg_init(struct lg *g, struct model *m, const int32_t *tokens, int64_t n,
                   const struct model_grad_sink *sink)
{
    const struct model_info *in = &m->info;
    memset(g, 0, sizeof(*g));
    g->m = m;
    g->sink = sink;
    g->tokens = tokens;
    g->n = n;
    g->dim = in->n_embd;
    g->hd = in->head_dim;
    g->half = in->head_dim / 2;
    g->n_head = in->n_head;
    g->n_kv = in->n_kv_head;
    g->q_dim = in->n_head * in->head_dim;
    g->kv_dim = in->n_kv_head * in->head_dim;
    g->ff = in->n_ff;
    g->n_vocab = in->n_vocab;
    g->n_layer = in->n_layer;
    g->chunk_rows = LM_MAX((int64_t)1, LM_MIN(n, (int64_t)BWD_LOGITS_ELEMS / g->n_vocab));

    bool grad = sink != NULL, qk_norm = m->layers[0].q_norm != NULL;
    int64_t nd = n * g->dim, nq = n * g->q_dim, nkv = n * g->kv_dim, nf = n * g->ff;
    int64_t gmat = LM_MAX(LM_MAX(g->q_dim, g->kv_dim), g->ff) * g->dim;
    int64_t gvec = LM_MAX(LM_MAX(g->dim, g->q_dim), g->hd);
    int rc;
    if ((rc = lg_alloc(&g->xs, true, (g->n_layer + 1) * nd)) ||
        (rc = lg_alloc(&g->rope_cos, true, n * g->half)) ||
        (rc = lg_alloc(&g->rope_sin, true, n * g->half)) ||
        (rc = lg_alloc(&g->rope_nsin, true, n * g->half)) ||
        (rc = lg_alloc(&g->h1, true, nd)) || (rc = lg_alloc(&g->q_raw, qk_norm, nq)) ||
        (rc = lg_alloc(&g->k_raw, qk_norm, nkv)) || (rc = lg_alloc(&g->q, true, nq)) ||
        (rc = lg_alloc(&g->k, true, nkv)) || (rc = lg_alloc(&g->v, true, nkv)) ||
        (rc = lg_alloc(&g->att, true, nq)) || (rc = lg_alloc(&g->x1, true, nd)) ||
        (rc = lg_alloc(&g->h2, true, nd)) || (rc = lg_alloc(&g->gate, true, nf)) ||
        (rc = lg_alloc(&g->up, true, nf)) || (rc = lg_alloc(&g->act, true, nf)) ||
        (rc = lg_alloc(&g->dh, true, nd)) || (rc = lg_alloc(&g->dx, grad, nd)) ||
        (rc = lg_alloc(&g->dq, grad, nq)) || (rc = lg_alloc(&g->dk, grad, nkv)) ||
        (rc = lg_alloc(&g->dv, grad, nkv)) || (rc = lg_alloc(&g->datt, grad, nq)) ||
        (rc = lg_alloc(&g->dkh, grad, nq)) || (rc = lg_alloc(&g->dvh, grad, nq)) ||
        (rc = lg_alloc(&g->dgate, grad, nf)) || (rc = lg_alloc(&g->dup, grad, nf)) ||
        (rc = lg_alloc(&g->gmat, grad, gmat)) || (rc = lg_alloc(&g->gvec_f, grad, gvec)) ||
        (rc = lg_alloc(&g->gemb, grad, g->n_vocab * g->dim)) ||
        (rc = lg_alloc(&g->logit_rows, true, g->chunk_rows * g->n_vocab)))
        return rc;
    if (!(g->row_loss = lm_malloc_array((size_t)g->chunk_rows, sizeof(double))) ||
        (grad && !(g->gvec = lm_malloc_array((size_t)gvec, sizeof(double)))) ||
        !(g->w_prob = lm_calloc((size_t)m->n_workers, sizeof(float *))) ||
        !(g->w_dprob = lm_calloc((size_t)m->n_workers, sizeof(float *))))
        return LM_ENOMEM;
    for (int w = 0; w < m->n_workers; w++)
        if ((rc = lg_alloc(&g->w_prob[w], true, BWD_ATTN_BLOCK * n)) ||
            (rc = lg_alloc(&g->w_dprob[w], grad, BWD_ATTN_BLOCK * n)))
            return rc;
    return 0;
}

/* The residual stream entering layer l (l = n_layer: after the last). */
static float *lg_x(const struct lg *g, int64_t l)
{
    return g->xs + l * g->n * g->dim;
}

/* ===== Products with the weights ===== */

/* out (n_tok, w->rows; stride ldo) = x (n_tok, w->cols; stride ldx) W^T,
 * through the batched product (kernel_gemm_nt) whatever n_tok, so that a
 * product's bits never depend on the batch path model_forward would pick. */
static void matmul(struct lg *g, const float *x, int64_t ldx, int64_t n_tok, const struct model_matrix *w,
                   float *out, int64_t ldo)
{
    struct model_mm_job job;
    model_mm_begin(&job, g->m, x, ldx, n_tok, true);
    model_mm_add(&job, w, out, ldo);
    model_mm_run(&job);
}

/* out[t] += bias for n_tok rows of `width`; nothing when bias is NULL. */
static void add_bias(float *out, int64_t ldo, const float *bias, int64_t width, int64_t n_tok)
{
    if (!bias)
        return;
    for (int64_t t = 0; t < n_tok; t++)
        kernel_add(out + t * ldo, bias, width);
}

/* dx (n_tok, w->cols) = dy (n_tok, w->rows) W, or += when accumulate,
 * through kernel_gemm_nn: dy is packed a chunk of tokens and a segment of
 * weight rows at a time (the model's packing buffer bounds both), and each
 * segment continues the previous one's sums, so the bits depend on neither. */
struct dx_job {
    struct model *m;
    const struct model_matrix *w;
    const float *dy;
    int64_t ldy;
    float *dx;
    int64_t ldx;
    bool accumulate;
    int64_t t0, nt;     /* the token chunk */
    int64_t k0, nk;     /* the segment of weight rows (dy columns) */
};

static void dx_pack(void *ud, int64_t index, int worker)
{
    (void)worker;
    const struct dx_job *j = ud;
    kernel_gemm_pack_x(j->m->xpack, j->dy + j->t0 * j->ldy + j->k0, j->ldy, j->nt, j->nk, index, index + 1);
}

/* One strip of BWD_COL_BLOCK input columns of the chunk. */
static void dx_run(void *ud, int64_t index, int worker)
{
    const struct dx_job *j = ud;
    const struct model_matrix *w = j->w;
    int64_t c0 = index * BWD_COL_BLOCK, c1 = LM_MIN(c0 + BWD_COL_BLOCK, w->cols);
    const unsigned char *rows = (const unsigned char *)w->data + (size_t)j->k0 * lm_dtype_bytes(w->dtype, (size_t)w->cols);
    kernel_gemm_nn(j->dx + j->t0 * j->ldx, j->ldx, rows, w->dtype, j->nk, w->cols, j->m->xpack, j->nt, c0, c1,
                   j->accumulate || j->k0 > 0, j->m->worker_panel[worker]);
}

static void back_x(struct lg *g, const float *dy, int64_t ldy, int64_t n_tok, const struct model_matrix *w,
                   float *dx, int64_t ldx, bool accumulate)
{
    struct model *m = g->m;
    struct dx_job j = { m, w, dy, ldy, dx, ldx, accumulate, 0, 0, 0, 0 };
    for (j.t0 = 0; j.t0 < n_tok; j.t0 += MODEL_GEMM_CHUNK) {
        j.nt = LM_MIN((int64_t)MODEL_GEMM_CHUNK, n_tok - j.t0);
        int64_t groups = (j.nt + KERNEL_GEMM_MR - 1) / KERNEL_GEMM_MR;
        /* rows per segment: what the buffer holds, in whole panel passes */
        int64_t seg = MODEL_GEMM_CHUNK * m->xpack_cols / (groups * KERNEL_GEMM_MR);
        seg = LM_MAX((int64_t)KERNEL_GEMM_KC, seg / KERNEL_GEMM_KC * KERNEL_GEMM_KC);
        for (j.k0 = 0; j.k0 < w->rows; j.k0 += seg) {
            j.nk = LM_MIN(seg, w->rows - j.k0);
            pool_for(m->pool, groups, dx_pack, &j);
            pool_for(m->pool, (w->cols + BWD_COL_BLOCK - 1) / BWD_COL_BLOCK, dx_run, &j);
        }
    }
}

/* dw (rows, cols) = dy^T (rows, n_tok) x (n_tok, cols), or += when accumulate. */
struct dw_job {
    const float *dy;
    int64_t ldy;
    const float *x;
    int64_t ldx;
    int64_t n_tok;
    float *dw;
    int64_t rows, cols;
    bool accumulate;
};

static void dw_run(void *ud, int64_t index, int worker)
{
    (void)worker;
    const struct dw_job *j = ud;
    int64_t r0 = index * BWD_ROW_BLOCK, r1 = LM_MIN(r0 + BWD_ROW_BLOCK, j->rows);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)(r1 - r0), (int)j->cols, (int)j->n_tok, 1.0f,
                j->dy + r0, (int)j->ldy, j->x, (int)j->ldx, j->accumulate ? 1.0f : 0.0f,
                j->dw + r0 * j->cols, (int)j->cols);
}

static void back_w(struct lg *g, const float *dy, int64_t ldy, const float *x, int64_t ldx, int64_t n_tok,
                   float *dw, int64_t rows, int64_t cols, bool accumulate)
{
    struct dw_job j = { dy, ldy, x, ldx, n_tok, dw, rows, cols, accumulate };
    pool_for(g->m->pool, (rows + BWD_ROW_BLOCK - 1) / BWD_ROW_BLOCK, dw_run, &j);
}

/* out[c] = sum over n_tok rows of y[t][c], in token order (a bias's gradient). */
static void column_sum(double *out, const float *y, int64_t ldy, int64_t n_tok, int64_t width)
{
    memset(out, 0, (size_t)width * sizeof(double));
    for (int64_t t = 0; t < n_tok; t++)
        for (int64_t c = 0; c < width; c++)
            out[c] += (double)y[t * ldy + c];
}

/* ===== Attention ===== */

/* Rows [t0, t1) of head h's attention probabilities, softmax(q k^T * scale)
 * over keys 0..t, into p (t1 - t0, t1) with zeros past the diagonal. The
 * forward pass and the backward pass both call this, so the backward sees
 * the very probabilities the loss was computed with. */
static void attn_probs(const struct lg *g, int64_t h, int64_t t0, int64_t t1, float *p)
{
    int64_t hd = g->hd, kvh = h / (g->n_head / g->n_kv);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)(t1 - t0), (int)t1, (int)hd, g->m->attn_scale,
                g->q + t0 * g->q_dim + h * hd, (int)g->q_dim, g->k + kvh * hd, (int)g->kv_dim, 0.0f, p, (int)t1);
    for (int64_t i = 0; i < t1 - t0; i++) {
        float *row = p + i * t1;
        int64_t len = t0 + i + 1;
        kernel_softmax(row, len);
        memset(row + len, 0, (size_t)(t1 - len) * sizeof(float));
    }
}

/* Head h: att[:, h] = P v for all query rows, a block at a time. */
static void attn_fwd_run(void *ud, int64_t h, int worker)
{
    const struct lg *g = ud;
    int64_t hd = g->hd, kvh = h / (g->n_head / g->n_kv);
    float *p = g->w_prob[worker];
    for (int64_t t0 = 0; t0 < g->n; t0 += BWD_ATTN_BLOCK) {
        int64_t t1 = LM_MIN(t0 + BWD_ATTN_BLOCK, g->n);
        attn_probs(g, h, t0, t1, p);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)(t1 - t0), (int)hd, (int)t1, 1.0f, p, (int)t1,
                    g->v + kvh * hd, (int)g->kv_dim, 0.0f, g->att + t0 * g->q_dim + h * hd, (int)g->q_dim);
    }
}

/* Head h, given datt: with S = q k^T * scale and P = softmax(S),
 *   dP = dO v^T,  dS = P o (dP - rowsum(P o dP)),
 *   dq = scale dS k,  dK_h += scale dS^T q,  dV_h += P^T dO,
 * block by block in query order. dK_h and dV_h are this head's own
 * buffers; the heads sharing a key/value head are summed afterwards. */
static void attn_bwd_run(void *ud, int64_t h, int worker)
{
    const struct lg *g = ud;
    int64_t n = g->n, hd = g->hd, kvh = h / (g->n_head / g->n_kv);
    float scale = g->m->attn_scale;
    float *p = g->w_prob[worker], *dp = g->w_dprob[worker];
    float *dkh = g->dkh + h * n * hd, *dvh = g->dvh + h * n * hd;
    memset(dkh, 0, (size_t)(n * hd) * sizeof(float));
    memset(dvh, 0, (size_t)(n * hd) * sizeof(float));
    for (int64_t t0 = 0; t0 < n; t0 += BWD_ATTN_BLOCK) {
        int64_t t1 = LM_MIN(t0 + BWD_ATTN_BLOCK, n), nb = t1 - t0;
        const float *dout = g->datt + t0 * g->q_dim + h * hd;
        const float *qb = g->q + t0 * g->q_dim + h * hd;
        attn_probs(g, h, t0, t1, p);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nb, (int)t1, (int)hd, 1.0f, dout, (int)g->q_dim,
                    g->v + kvh * hd, (int)g->kv_dim, 0.0f, dp, (int)t1);
        for (int64_t i = 0; i < nb; i++) {
            const float *pr = p + i * t1;
            float *dr = dp + i * t1;
            int64_t len = t0 + i + 1;
            double s = 0.0;
            for (int64_t j = 0; j < len; j++)
                s += (double)pr[j] * (double)dr[j];
            for (int64_t j = 0; j < len; j++)
                dr[j] = pr[j] * (dr[j] - (float)s);
            memset(dr + len, 0, (size_t)(t1 - len) * sizeof(float));
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)nb, (int)hd, (int)t1, scale, dp, (int)t1,
                    g->k + kvh * hd, (int)g->kv_dim, 0.0f, g->dq + t0 * g->q_dim + h * hd, (int)g->q_dim);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)t1, (int)hd, (int)nb, scale, dp, (int)t1,
                    qb, (int)g->q_dim, 1.0f, dkh, (int)hd);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)t1, (int)hd, (int)nb, 1.0f, p, (int)t1,
                    dout, (int)g->q_dim, 1.0f, dvh, (int)hd);
    }
}

/* ===== RMSNorm backward ===== */

/* For one row o = x * r * w with r = 1 / sqrt(mean(x^2) + eps):
 *   dw[i] += dy[i] * x[i] * r
 *   dx[i]  = r * dy[i] * w[i] - x[i] * r^3 * sum_j(dy[j] * w[j] * x[j]) / n
 * (added to dx when accumulate). dx may be dy: every read of dy comes
 * before the write of the same entry. */
static void rmsnorm_bwd(float *dx, bool accumulate, const float *x, const float *w, const float *dy, int64_t n,
                        float eps, double *dw)
{
    double ss = 0.0, dot = 0.0;
    for (int64_t i = 0; i < n; i++) {
        ss += (double)x[i] * (double)x[i];
        dot += (double)dy[i] * (double)w[i] * (double)x[i];
    }
    double r = 1.0 / sqrt(ss / (double)n + (double)eps);
    double c = r * r * r * dot / (double)n;
    for (int64_t i = 0; i < n; i++) {
        dw[i] += (double)dy[i] * (double)x[i] * r;
        float d = (float)(r * (double)dy[i] * (double)w[i] - (double)x[i] * c);
        dx[i] = accumulate ? dx[i] + d : d;
    }
}

/* ===== Delivery ===== */

static const char *layer_name(struct lg *g, int64_t l, const char *suffix)
{
    snprintf(g->name, sizeof g->name, "model.layers.%lld.%s", (long long)l, suffix);
    return g->name;
}

static int deliver_matrix(struct lg *g, const char *name, const float *grad, const struct model_matrix *w)
{
    struct model_tensor_view v;
    memset(&v, 0, sizeof(v));
    v.dtype = w->dtype;
    v.ndim = 2;
    v.shape[0] = w->rows;
    v.shape[1] = w->cols;
    v.data = w->data;
    return g->sink->tensor(g->sink->ud, name, grad, &v, w->rows * w->cols);
}

/* g->gvec (n doubles) rounded to float32, for the norm or bias `w`. */
static int deliver_vector(struct lg *g, const char *name, const float *w, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        g->gvec_f[i] = (float)g->gvec[i];
    struct model_tensor_view v;
    memset(&v, 0, sizeof(v));
    v.dtype = LM_DTYPE_F32;
    v.ndim = 1;
    v.shape[0] = n;
    v.data = w;
    return g->sink->tensor(g->sink->ud, name, g->gvec_f, &v, n);
}

/* ===== One layer ===== */

/* Layer l on the residual stream x (n, dim), leaving its activations in
 * the layer buffers, and x_out = the stream after it unless NULL (the
 * backward pass recomputes everything but the last product). The same
 * operations as model.c's forward_batch, on the whole sequence at once. */
static void layer_forward(struct lg *g, int64_t l, const float *x, float *x_out)
{
    struct model *m = g->m;
    const struct model_layer *L = &m->layers[l];
    int64_t n = g->n, dim = g->dim, hd = g->hd, half = g->half, ff = g->ff;
    int64_t q_dim = g->q_dim, kv_dim = g->kv_dim;
    struct model_mm_job job;

    /* hidden_states = self.input_layernorm(hidden_states) */
    for (int64_t t = 0; t < n; t++)
        kernel_rmsnorm(g->h1 + t * dim, x + t * dim, L->attn_norm, dim, m->eps);

    /* q/k/v projections (Qwen3 keeps them before q_norm/k_norm too) */
    float *qd = L->q_norm ? g->q_raw : g->q, *kd = L->q_norm ? g->k_raw : g->k;
    model_mm_begin(&job, m, g->h1, dim, n, true);
    model_mm_add(&job, &L->wq, qd, q_dim);
    model_mm_add(&job, &L->wk, kd, kv_dim);
    model_mm_add(&job, &L->wv, g->v, kv_dim);
    model_mm_run(&job);
    add_bias(qd, q_dim, L->bq, q_dim, n);
    add_bias(kd, kv_dim, L->bk, kv_dim, n);
    add_bias(g->v, kv_dim, L->bv, kv_dim, n);

    /* Qwen3: q_norm / k_norm per head */
    if (L->q_norm) {
        for (int64_t t = 0; t < n; t++) {
            for (int64_t h = 0; h < g->n_head; h++)
                kernel_rmsnorm(g->q + t * q_dim + h * hd, g->q_raw + t * q_dim + h * hd, L->q_norm, hd, m->eps);
            for (int64_t h = 0; h < g->n_kv; h++)
                kernel_rmsnorm(g->k + t * kv_dim + h * hd, g->k_raw + t * kv_dim + h * hd, L->k_norm, hd, m->eps);
        }
    }

    /* apply_rotary_pos_emb(q, k, cos, sin) */
    for (int64_t t = 0; t < n; t++) {
        kernel_rope(g->q + t * q_dim, g->n_head, hd, g->rope_cos + t * half, g->rope_sin + t * half);
        kernel_rope(g->k + t * kv_dim, g->n_kv, hd, g->rope_cos + t * half, g->rope_sin + t * half);
    }

    /* attn_output = softmax(q k^T * scaling + causal_mask) v */
    pool_for(m->pool, g->n_head, attn_fwd_run, g);

    /* hidden_states = residual + self.o_proj(attn_output) */
    matmul(g, g->att, q_dim, n, &L->wo, g->x1, dim);
    add_bias(g->x1, dim, L->bo, dim, n);
    for (int64_t t = 0; t < n; t++)
        kernel_add(g->x1 + t * dim, x + t * dim, dim);

    /* mlp: down_proj(act_fn(gate_proj(h2)) * up_proj(h2)) */
    for (int64_t t = 0; t < n; t++)
        kernel_rmsnorm(g->h2 + t * dim, g->x1 + t * dim, L->ffn_norm, dim, m->eps);
    model_mm_begin(&job, m, g->h2, dim, n, true);
    model_mm_add(&job, &L->w_gate, g->gate, ff);
    model_mm_add(&job, &L->w_up, g->up, ff);
    model_mm_run(&job);
    memcpy(g->act, g->gate, (size_t)(n * ff) * sizeof(float));
    kernel_silu_mul(g->act, g->up, n * ff);
    if (x_out) {
        matmul(g, g->act, ff, n, &L->w_down, x_out, dim);
        for (int64_t t = 0; t < n; t++)
            kernel_add(x_out + t * dim, g->x1 + t * dim, dim);
    }
}

/* Layer l's backward: g->dx holds the gradient of the stream after the
 * layer and is turned into the gradient of the stream before it (x, the
 * layer's input). The layer's activations must be in the buffers. Each
 * weight's gradient goes to the sink once complete; a non-zero return
 * from the sink is returned. */
static int layer_backward(struct lg *g, int64_t l, const float *x)
{
    struct model *m = g->m;
    const struct model_layer *L = &m->layers[l];
    int64_t n = g->n, dim = g->dim, hd = g->hd, half = g->half, ff = g->ff;
    int64_t q_dim = g->q_dim, kv_dim = g->kv_dim;
    int rc;

    /* MLP: x2 = x1 + down(act), act = silu(gate) * up */
    back_x(g, g->dx, dim, n, &L->w_down, g->dgate, ff, false);          /* d act */
    back_w(g, g->dx, dim, g->act, ff, n, g->gmat, dim, ff, false);
    if ((rc = deliver_matrix(g, layer_name(g, l, "mlp.down_proj.weight"), g->gmat, &L->w_down)))
        return rc;
    for (int64_t i = 0; i < n * ff; i++) {
        float gt = g->gate[i], s = 1.0f / (1.0f + expf(-gt)), da = g->dgate[i];
        g->dup[i] = da * gt * s;
        g->dgate[i] = da * g->up[i] * s * (1.0f + gt * (1.0f - s));
    }
    back_x(g, g->dgate, ff, n, &L->w_gate, g->dh, dim, false);
    back_x(g, g->dup, ff, n, &L->w_up, g->dh, dim, true);
    back_w(g, g->dgate, ff, g->h2, dim, n, g->gmat, ff, dim, false);
    if ((rc = deliver_matrix(g, layer_name(g, l, "mlp.gate_proj.weight"), g->gmat, &L->w_gate)))
        return rc;
    back_w(g, g->dup, ff, g->h2, dim, n, g->gmat, ff, dim, false);
    if ((rc = deliver_matrix(g, layer_name(g, l, "mlp.up_proj.weight"), g->gmat, &L->w_up)))
        return rc;

    /* h2 = post_attention_layernorm(x1); the residual passes dx through */
    memset(g->gvec, 0, (size_t)dim * sizeof(double));
    for (int64_t t = 0; t < n; t++)
        rmsnorm_bwd(g->dx + t * dim, true, g->x1 + t * dim, L->ffn_norm, g->dh + t * dim, dim, m->eps, g->gvec);
    if ((rc = deliver_vector(g, layer_name(g, l, "post_attention_layernorm.weight"), L->ffn_norm, dim)))
        return rc;

    /* x1 = x + o_proj(att) */
    back_x(g, g->dx, dim, n, &L->wo, g->datt, q_dim, false);
    back_w(g, g->dx, dim, g->att, q_dim, n, g->gmat, dim, q_dim, false);
    if ((rc = deliver_matrix(g, layer_name(g, l, "self_attn.o_proj.weight"), g->gmat, &L->wo)))
        return rc;
    if (L->bo) {
        column_sum(g->gvec, g->dx, dim, n, dim);
        if ((rc = deliver_vector(g, layer_name(g, l, "self_attn.o_proj.bias"), L->bo, dim)))
            return rc;
    }

    /* attention: dq, and dk/dv summed over the query heads sharing them */
    pool_for(m->pool, g->n_head, attn_bwd_run, g);
    int64_t group = g->n_head / g->n_kv;
    for (int64_t t = 0; t < n; t++)
        for (int64_t kh = 0; kh < g->n_kv; kh++) {
            float *dk = g->dk + t * kv_dim + kh * hd, *dv = g->dv + t * kv_dim + kh * hd;
            memset(dk, 0, (size_t)hd * sizeof(float));
            memset(dv, 0, (size_t)hd * sizeof(float));
            for (int64_t h = kh * group; h < (kh + 1) * group; h++) {
                kernel_add(dk, g->dkh + (h * n + t) * hd, hd);
                kernel_add(dv, g->dvh + (h * n + t) * hd, hd);
            }
        }

    /* RoPE is a rotation: its backward rotates back (sin -> -sin) */
    for (int64_t t = 0; t < n; t++) {
        kernel_rope(g->dq + t * q_dim, g->n_head, hd, g->rope_cos + t * half, g->rope_nsin + t * half);
        kernel_rope(g->dk + t * kv_dim, g->n_kv, hd, g->rope_cos + t * half, g->rope_nsin + t * half);
    }

    /* Qwen3: q_norm / k_norm per head, in place on dq / dk */
    if (L->q_norm) {
        memset(g->gvec, 0, (size_t)hd * sizeof(double));
        for (int64_t t = 0; t < n; t++)
            for (int64_t h = 0; h < g->n_head; h++) {
                float *d = g->dq + t * q_dim + h * hd;
                rmsnorm_bwd(d, false, g->q_raw + t * q_dim + h * hd, L->q_norm, d, hd, m->eps, g->gvec);
            }
        if ((rc = deliver_vector(g, layer_name(g, l, "self_attn.q_norm.weight"), L->q_norm, hd)))
            return rc;
        memset(g->gvec, 0, (size_t)hd * sizeof(double));
        for (int64_t t = 0; t < n; t++)
            for (int64_t h = 0; h < g->n_kv; h++) {
                float *d = g->dk + t * kv_dim + h * hd;
                rmsnorm_bwd(d, false, g->k_raw + t * kv_dim + h * hd, L->k_norm, d, hd, m->eps, g->gvec);
            }
        if ((rc = deliver_vector(g, layer_name(g, l, "self_attn.k_norm.weight"), L->k_norm, hd)))
            return rc;
    }

    /* q/k/v = h1 W^T + b */
    back_x(g, g->dq, q_dim, n, &L->wq, g->dh, dim, false);
    back_x(g, g->dk, kv_dim, n, &L->wk, g->dh, dim, true);
    back_x(g, g->dv, kv_dim, n, &L->wv, g->dh, dim, true);
    back_w(g, g->dq, q_dim, g->h1, dim, n, g->gmat, q_dim, dim, false);
    if ((rc = deliver_matrix(g, layer_name(g, l, "self_attn.q_proj.weight"), g->gmat, &L->wq)))
        return rc;
    back_w(g, g->dk, kv_dim, g->h1, dim, n, g->gmat, kv_dim, dim, false);
    if ((rc = deliver_matrix(g, layer_name(g, l, "self_attn.k_proj.weight"), g->gmat, &L->wk)))
        return rc;
    back_w(g, g->dv, kv_dim, g->h1, dim, n, g->gmat, kv_dim, dim, false);
    if ((rc = deliver_matrix(g, layer_name(g, l, "self_attn.v_proj.weight"), g->gmat, &L->wv)))
        return rc;
    if (L->bq) {
        column_sum(g->gvec, g->dq, q_dim, n, q_dim);
        if ((rc = deliver_vector(g, layer_name(g, l, "self_attn.q_proj.bias"), L->bq, q_dim)))
            return rc;
        column_sum(g->gvec, g->dk, kv_dim, n, kv_dim);
        if ((rc = deliver_vector(g, layer_name(g, l, "self_attn.k_proj.bias"), L->bk, kv_dim)))
            return rc;
        column_sum(g->gvec, g->dv, kv_dim, n, kv_dim);
        if ((rc = deliver_vector(g, layer_name(g, l, "self_attn.v_proj.bias"), L->bv, kv_dim)))
            return rc;
    }

    /* h1 = input_layernorm(x); the residual passes dx through */
    memset(g->gvec, 0, (size_t)dim * sizeof(double));
    for (int64_t t = 0; t < n; t++)
        rmsnorm_bwd(g->dx + t * dim, true, x + t * dim, L->attn_norm, g->dh + t * dim, dim, m->eps, g->gvec);
    return deliver_vector(g, layer_name(g, l, "input_layernorm.weight"), L->attn_norm, dim);
}

/* ===== lm_head and the loss ===== */

struct ce_job {
    struct lg *g;
    float *rows;        /* (n_rows, n_vocab): logits in, their gradient out */
    int64_t t0;         /* position of the first row */
    double inv_count;   /* 1 / number of loss positions */
    bool grad;
};

/* Row i predicts tokens[t0 + i + 1]: its cross-entropy log(sum e^l) -
 * l[target], with the sum in double, and (with grad) the row replaced by
 * (softmax - onehot) / count. */
static void ce_run(void *ud, int64_t i, int worker)
{
    (void)worker;
    const struct ce_job *j = ud;
    int64_t V = j->g->n_vocab;
    float *row = j->rows + i * V;
    int32_t target = j->g->tokens[j->t0 + i + 1];
    float mx = row[0];
    for (int64_t c = 1; c < V; c++)
        mx = row[c] > mx ? row[c] : mx;
    double se = 0.0;
    for (int64_t c = 0; c < V; c++)
        se += (double)expf(row[c] - mx);
    double lse = (double)mx + log(se);
    j->g->row_loss[i] = lse - (double)row[target];
    if (!j->grad)
        return;
    for (int64_t c = 0; c < V; c++)
        row[c] = (float)((double)expf((float)((double)row[c] - lse)) * j->inv_count);
    row[target] = (float)((double)row[target] - j->inv_count);
}

/* logits = lm_head(norm(x_last)) for rows [r0, r1), a chunk at a time,
 * copied to `logits` (n x n_vocab, may be NULL). With `loss_rows`, the rows
 * are [loss_from - 1, n - 1) (row t predicts token t + 1): their
 * cross-entropy is added to *sum and, with a sink, dx gets the gradient of
 * norm(x_last) and gemb lm_head's gradient. The loss rows always go through
 * the same chunks, whether or not the other rows' logits are wanted, so the
 * loss has the same bits either way. */
static void head_rows(struct lg *g, int64_t r0, int64_t r1, bool loss_rows, int64_t count, float *logits,
                      double *sum)
{
    struct model *m = g->m;
    int64_t dim = g->dim, V = g->n_vocab;
    const float *xl = lg_x(g, g->n_layer);
    float *xn = g->dh;
    for (int64_t t = r0; t < r1; t++)
        kernel_rmsnorm(xn + t * dim, xl + t * dim, m->final_norm, dim, m->eps);
    for (int64_t c0 = r0; c0 < r1; c0 += g->chunk_rows) {
        int64_t nr = LM_MIN(c0 + g->chunk_rows, r1) - c0;
        float *rows = g->logit_rows;
        matmul(g, xn + c0 * dim, dim, nr, &m->lm_head, rows, V);
        if (logits)
            memcpy(logits + c0 * V, rows, (size_t)(nr * V) * sizeof(float));
        if (!loss_rows)
            continue;
        struct ce_job cj = { g, rows, c0, 1.0 / (double)count, g->sink != NULL };
        pool_for(m->pool, nr, ce_run, &cj);
        for (int64_t i = 0; i < nr; i++)
            *sum += g->row_loss[i];
        if (g->sink) {
            back_x(g, rows, V, nr, &m->lm_head, g->dx + c0 * dim, dim, false);
            back_w(g, rows, V, xn + c0 * dim, dim, nr, g->gemb, V, dim, c0 != r0);
        }
    }
}

/* The logits asked for, the loss into *loss, and with a sink dx (zero
 * outside the loss rows) and lm_head's gradient in gemb. */
static void head_pass(struct lg *g, int64_t loss_from, double *loss, float *logits)
{
    int64_t n = g->n, count = n - loss_from;
    double sum = 0.0;
    if (g->sink)
        memset(g->dx, 0, (size_t)(n * g->dim) * sizeof(float));
    head_rows(g, loss_from - 1, n - 1, true, count, logits, &sum);
    if (logits) {
        head_rows(g, 0, loss_from - 1, false, count, logits, &sum);
        head_rows(g, n - 1, n, false, count, logits, &sum);
    }
    if (loss)
        *loss = sum / (double)count;
}

/* ===== The pass ===== */

static int check_args(const struct model *m, const int32_t *tokens, int64_t n, int64_t loss_from)
{
    const struct model_info *in = &m->info;
    if (!tokens)
        return lm_err(LM_EINVAL, "model_loss_grad: no tokens");
    if (n < 2 || loss_from < 1 || loss_from >= n)
        return lm_err(LM_EINVAL, "model_loss_grad: the loss needs 1 <= loss_from < n (got loss_from %lld, "
                      "n %lld)", (long long)loss_from, (long long)n);
    if (n > in->n_ctx)
        return lm_err(LM_EINVAL, "model_loss_grad: %lld tokens pass the context of %lld positions", (long long)n,
                      (long long)in->n_ctx);
    for (int64_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= in->n_vocab)
            return lm_err(LM_EINVAL, "token id %d (at %lld) is outside the vocabulary [0, %lld)", (int)tokens[i],
                          (long long)i, (long long)in->n_vocab);
    return 0;
}

static int run(struct lg *g, int64_t loss_from, double *loss, float *logits)
{
    struct model *m = g->m;
    int64_t n = g->n, dim = g->dim, half = g->half, nl = g->n_layer;
    int rc;

    /* x = embed_tokens(input_ids); rotary tables as model.c builds them */
    size_t esz = lm_dtype_size(m->embed.dtype);
    for (int64_t t = 0; t < n; t++)
        lm_convert_to_f32(g->xs + t * dim,
                          (const unsigned char *)m->embed.data + (size_t)g->tokens[t] * (size_t)dim * esz,
                          m->embed.dtype, (size_t)dim);
    for (int64_t t = 0; t < n; t++)
        for (int64_t i = 0; i < half; i++) {
            float a = m->inv_freq[i] * (float)t;
            g->rope_cos[t * half + i] = cosf(a);
            g->rope_sin[t * half + i] = sinf(a);
            g->rope_nsin[t * half + i] = -g->rope_sin[t * half + i];
        }

    for (int64_t l = 0; l < nl; l++)
        layer_forward(g, l, lg_x(g, l), lg_x(g, l + 1));
    head_pass(g, loss_from, loss, logits);
    if (!g->sink)
        return 0;

    if (!m->info.tied) {
        if ((rc = deliver_matrix(g, "lm_head.weight", g->gemb, &m->lm_head)))
            return rc;
        memset(g->gemb, 0, (size_t)(g->n_vocab * dim) * sizeof(float));
    }

    /* x_last -> norm: only the loss rows carry a gradient */
    const float *xl = lg_x(g, nl);
    memset(g->gvec, 0, (size_t)dim * sizeof(double));
    for (int64_t t = loss_from - 1; t < n - 1; t++)
        rmsnorm_bwd(g->dx + t * dim, false, xl + t * dim, m->final_norm, g->dx + t * dim, dim, m->eps, g->gvec);
    if ((rc = deliver_vector(g, "model.norm.weight", m->final_norm, dim)))
        return rc;

    /* the layers in reverse; the last one's activations are still there */
    for (int64_t l = nl - 1; l >= 0; l--) {
        if (l != nl - 1)
            layer_forward(g, l, lg_x(g, l), NULL);
        if ((rc = layer_backward(g, l, lg_x(g, l))))
            return rc;
    }

    /* x = embed_tokens[ids]: each position adds its row, in order */
    for (int64_t t = 0; t < n; t++)
        kernel_add(g->gemb + (int64_t)g->tokens[t] * dim, g->dx + t * dim, dim);
    return deliver_matrix(g, "model.embed_tokens.weight", g->gemb, &m->embed);
}

int model_loss_grad(struct model *m, const int32_t *tokens, int64_t n, int64_t loss_from,
                    double *loss, float *logits, const struct model_grad_sink *sink)
{
    if (m->info.quantized)
        return lm_err(LM_EUNSUPPORTED, "gradients need F32, F16 or BF16 weights; this model holds 8-bit ones");
    int rc = check_args(m, tokens, n, loss_from);
    if (rc < 0)
        return rc;
    struct lg g;
    rc = lg_init(&g, m, tokens, n, sink);
    if (rc == 0)
        rc = run(&g, loss_from, loss, logits);
    lg_free(&g);
    return rc;
}
