/* The passes over tensors: merging one tensor, the parallel pass that
 * merges tensors block by block (or whole where the method needs it) into
 * statistics (ws_stats_compute), the merged cache (ws_merge_layer,
 * ws_merge_all), the safetensors writer (ws_write_weights) or the GGUF
 * writer (ws_write_gguf_weights), the memory
 * samples taken on the way, and the count of non-finite values. */
#include "workspace.h"

#include <limits.h>
#include <pthread.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "calib.h"
#include "convert.h"
#include "fsutil.h"
#include "gguf.h"
#include "gguf_llama.h"
#include "lm_error.h"
#include "merge_plan.h"
#include "merge_stream.h"
#include "pool.h"
#include "strbuf.h"
#include "sysmem.h"
#include "workspace_internal.h"

/* ===== Merging one tensor ===== */

/* Entries [e0, e0 + len) of source s of tensor t as float32: rows the
 * source lacks are the base's (zero past the base's own rows). Converted
 * from the mapping: where the page cache holds the file in large folios
 * (read from disk), mapping a page costs less than a read copying it, and
 * a cold file reads faster through the mapping's read-ahead. */
static void read_source(const struct ws_tensor *t, int s, uint64_t e0, size_t len, float *dst)
{
    const struct st_tensor *src = t->src[s];
    uint64_t rows = t->ndim > 0 ? (uint64_t)t->shape[0] : 1;
    uint64_t row_len = rows ? t->n_elements / rows : 0;
    uint64_t have = LM_MIN((uint64_t)t->src_rows[s], rows) * row_len;
    size_t n1 = e0 >= have ? 0 : (size_t)LM_MIN((uint64_t)len, have - e0);
    if (n1)
        lm_convert_to_f32(dst, (const char *)src->data + e0 * lm_dtype_size(src->dtype), src->dtype, n1);
    if (n1 < len) {
        if (s == 0)
            memset(dst + n1, 0, (len - n1) * sizeof(float));
        else
            read_source(t, 0, e0 + n1, len - n1, dst + n1);
    }
}

/* Loads base and models of tensor i as float32 into scratch slots. */
static int load_inputs(const struct workspace *ws, size_t i, struct ws_scratch *sc,
                       float **base, const float **models)
{
    const struct ws_tensor *t = &ws->tensors[i];
    size_t n = (size_t)t->n_elements;
    for (int s = 0; s < ws->n_sources; s++) {
        float *buf = merge_scratch_get(&sc->inputs, s, n);
        if (!buf)
            return lm_err_context(LM_ENOMEM, "tensor '%s'", t->name);
        st_tensor_populate(t->src[s], 0, t->src[s]->nbytes);
        read_source(t, s, 0, n, buf);
        if (s == 0)
            *base = buf;
        else
            models[s - 1] = buf;
    }
    return 0;
}

int ws_merge_tensor(struct workspace *ws, size_t i, float *out, struct ws_scratch *sc)
{
    const struct ws_tensor *t = &ws->tensors[i];
    float *base = NULL;
    const float *models[MERGE_MAX_MODELS];
    int rc = load_inputs(ws, i, sc, &base, models);
    if (rc)
        return rc;
    struct merge_tensor_params p;
    merge_plan_resolve(&ws->plan, t->name, &t->info, &p);
    struct merge_context ctx = { 0 };
    double scale[MERGE_MAX_MODELS];
    unsigned needs = ws->plan.method->needs;
    const struct calib_activations *act = ws_calib_activations(ws);
    const struct calib_sensitivity *sens = ws_calib_sensitivity(ws);
    if (((needs & MERGE_NEEDS_ACTIVATIONS) && !act) || ((needs & MERGE_NEEDS_SENSITIVITY) && !sens))
        return lm_err(LM_EINVAL, "tensor '%s': method '%s' needs calibration, which has not run",
                      t->name, ws->plan.method->name);
    struct merge_tensor_job job = {
        .name = t->name, .n = t->n_elements, .base = ws->has_base ? base : NULL, .models = models,
        .n_models = ws->n_sources - 1, .params = &p, .out = out, .scratch = &sc->method,
        .rows = t->ndim == 2 ? (uint64_t)t->shape[0] : 1,
        .cols = t->ndim == 2 ? (uint64_t)t->shape[1] : t->n_elements,
        .ctx = needs ? &ctx : NULL,
        .cut_memo = &ws->cut_memo[i],
    };
    if (needs & MERGE_NEEDS_ACTIVATIONS)
        ctx.channel_importance = calib_activations_for(act, t->name, &t->info, job.cols,
                                                       (enum calib_norm)p.importance);
    if (needs & MERGE_NEEDS_SENSITIVITY) {
        calib_sens_scale(sens, t->info.layer, p.alpha, p.temperature, scale);
        ctx.model_scale = scale;
    }
    rc = ws->plan.method->merge_tensor(&job);
    if (rc)
        return lm_err_context(rc, "merging '%s'", t->name);
    return 0;
}

/* ===== Parallel passes ===== */

struct pass {
    struct workspace *ws;
    const size_t *todo;      /* tensor indices */
    size_t n_todo;
    uint64_t total_elements;
    atomic_uint_fast64_t done_elements;
    atomic_int failed;       /* first error code, 0 if none */
    atomic_bool cancel;
    atomic_int_fast64_t started; /* the last todo index a worker has taken (-1: none) */
    lm_progress_fn progress;
    void *ud;
    const char *what;
    char error[1024];
    /* write pass */
    enum lm_dtype out_dtype;
    bool keep_merged;        /* merge-layer pass: cache float results */
    bool stats;              /* stats pass */
    struct st_writer *writer; /* write pass: tensor i is the writer's tensor i */
    bool fixed_dtype;        /* write pass: out_dtype for every tensor, else the base's */
    struct gguf_writer *gguf; /* GGUF write pass: tensor i goes where gguf_plan[i] says */
    const struct ws_gguf_tensor *gguf_plan;
};

static void pass_fail(struct pass *p, int rc)
{
    int expected = 0;
    if (atomic_compare_exchange_strong(&p->failed, &expected, rc))
        snprintf(p->error, sizeof(p->error), "%s", lm_last_error());
    atomic_store(&p->cancel, true);
}

static void pass_report(struct pass *p, int worker, uint64_t n)
{
    uint64_t done = atomic_fetch_add(&p->done_elements, n) + n;
    if (worker != 0 || !p->progress)
        return;
    double frac = p->total_elements ? (double)done / (double)p->total_elements : 1.0;
    if (!p->progress(frac, p->what, p->ud) && !atomic_load(&p->cancel)) {
        lm_err(LM_ECANCELED, "cancelled");
        pass_fail(p, LM_ECANCELED);
    }
}

/* ===== Memory ===== */

static void sample_memory(struct workspace *ws)
{
    uint64_t anon = lm_proc_status_bytes("RssAnon");
    uint_fast64_t old = atomic_load(&ws->peak_anon);
    while (anon > old && !atomic_compare_exchange_weak(&ws->peak_anon, &old, anon))
        ;
}

void ws_memory_peak(struct workspace *ws, struct ws_memory *out)
{
    sample_memory(ws);
    out->peak_rss_anon = atomic_load(&ws->peak_anon);
    out->hwm = lm_proc_status_bytes("VmHWM");
}

/* ===== Non-finite values ===== */

/* Counts the non-finite entries of one block of inputs in[s] and of the
 * merged `out` into *nf; an output entry that is not finite while every
 * input entry at its place is finite was made by the merge itself. */
static void tally_nonfinite(struct ws_nonfinite *nf, int n_sources, float *const *in,
                            const float *out, uint64_t e0, size_t len)
{
    for (int s = 0; s < n_sources; s++)
        nf->inputs[s] += lm_count_nonfinite(in[s], len);
    if (!out || lm_count_nonfinite(out, len) == 0)
        return;
    for (size_t j = 0; j < len; j++) {
        if (isfinite(out[j]))
            continue;
        bool inputs_finite = true;
        for (int s = 0; s < n_sources && inputs_finite; s++)
            inputs_finite = isfinite(in[s][j]);
        if (inputs_finite && nf->created++ == 0)
            nf->first_created = e0 + j;
    }
}

/* The error for tensor i when the merge made non-finite values. */
static int refuse_created(const struct workspace *ws, size_t i)
{
    const struct ws_nonfinite *nf = &ws->nonfinite[i];
    return lm_err(LM_EFORMAT, "tensor '%s': the merge made %llu values that are not finite (NaN or "
                  "Inf) from finite inputs, the first at entry %llu; nothing is written (look at "
                  "this tensor's weights, lambda and normalisation in the recipe)",
                  ws->tensors[i].name, (unsigned long long)nf->created,
                  (unsigned long long)nf->first_created);
}

const struct ws_nonfinite *ws_tensor_nonfinite(const struct workspace *ws, size_t i)
{
    return &ws->nonfinite[i];
}

char *ws_nonfinite_report(const struct workspace *ws)
{
    struct lm_strbuf b = { 0 };
    size_t shown = 0, tensors = 0;
    for (size_t i = 0; i < ws->n_tensors; i++) {
        const struct ws_nonfinite *nf = &ws->nonfinite[i];
        bool any = nf->created > 0;
        for (int s = 0; s < ws->n_sources; s++)
            any = any || nf->inputs[s] > 0;
        if (!any)
            continue;
        tensors++;
        if (shown++ >= 8)
            continue;
        lm_strbuf_printf(&b, "%s  %s:", shown > 1 ? "\n" : "", ws->tensors[i].name);
        for (int s = 0; s < ws->n_sources; s++)
            if (nf->inputs[s])
                lm_strbuf_printf(&b, " %llu in %s", (unsigned long long)nf->inputs[s], ws->sources[s].name);
        if (nf->created)
            lm_strbuf_printf(&b, " %llu made by the merge", (unsigned long long)nf->created);
    }
    if (tensors == 0)
        return NULL;
    if (tensors > 8)
        lm_strbuf_printf(&b, "\n  ... and %zu more tensors", tensors - 8);
    char *list = lm_strbuf_finish(&b);
    char *text = list ? lm_asprintf("%zu tensor%s hold values that are not finite (NaN or Inf):\n%s",
                                    tensors, tensors == 1 ? "" : "s", list) : NULL;
    free(list);
    return text;
}

/* ===== Block by block ===== */

/* What the readers of one tensor's stream see: the tensor, and the pass
 * that may be asked to stop (every read checks, so that even the
 * whole-tensor passes a method makes first stop within a block). */
struct stream_ctx {
    const struct ws_tensor *t;
    struct pass *p;
    int worker;
    unsigned reads;
    uint64_t populated[WS_MAX_SOURCES]; /* entries mapped in so far (see read_ahead) */
};

/* Bytes populated at a time ahead of the reads (st_tensor_populate). */
#define WS_POPULATE_BYTES ((uint64_t)4 << 20)

/* read_source for a pass that reads source s of its tensor in index order
 * (the cut's pass, then the merge's): before the reads reach what is not
 * mapped in yet, the next WS_POPULATE_BYTES are, in one call. Short reads
 * (the cut's sample, runs spread over the tensor) touch pages as they go;
 * a later pass over pages mapped in before needs nothing. */
static void read_ahead(struct stream_ctx *c, int s, uint64_t e0, size_t len, float *dst)
{
    const struct st_tensor *src = c->t->src[s];
    const uint64_t es = lm_dtype_size(src->dtype);
    if (len >= 4096 && e0 + len > c->populated[s]) {
        const uint64_t from = LM_MAX(e0, c->populated[s]);
        const uint64_t to = LM_MAX(e0 + len, from + WS_POPULATE_BYTES / es);
        st_tensor_populate(src, from * es, (to - from) * es);
        c->populated[s] = to;
    }
    read_source(c->t, s, e0, len, dst);
}

static int stream_read(void *ud, int source, uint64_t e0, size_t len, float *dst)
{
    struct stream_ctx *c = ud;
    /* Worker 0 asks the progress callback now and then even inside a
     * method's first pass, which reports no progress of its own: that is
     * where a request to stop arrives. */
    if (c->worker == 0 && ++c->reads % 32 == 0)
        pass_report(c->p, 0, 0);
    if (atomic_load_explicit(&c->p->cancel, memory_order_relaxed))
        return LM_ECANCELED;
    read_ahead(c, source, e0, len, dst);
    return 0;
}

/* Blocks between progress reports inside a tensor: 16 x 64 Ki entries,
 * a few milliseconds of merging. */
#define WS_TICK_BLOCKS 16

/* Where the merged blocks of one tensor go. */
struct sink {
    enum lm_dtype dtype;
    struct st_writer *writer;  /* pwrite as tensor `index` */
    struct gguf_writer *gguf;  /* or as the GGUF writer's tensor `index` */
    size_t index;
    enum lm_dtype round;       /* GGUF F32 tensors: rounded to this first */
    int perm_heads;            /* GGUF: rows reordered within heads (0: none) */
    uint64_t rows, cols;       /* GGUF: the tensor as a matrix */
    void *bytes;               /* or convert into this whole-tensor buffer */
    void *conv;                /* MERGE_STREAM_BLOCK float32s of room (writers) */
};

static bool sink_writes(const struct sink *k)
{
    return k->writer || k->gguf;
}

/* Entries [e0, e0 + len) of a GGUF tensor: rounded (F32 tensors of a
 * 16-bit file), converted, and stored row by row where rows move (Llama's
 * q/k). Blocks start at multiples of MERGE_STREAM_BLOCK, and Q8_0 rows are
 * multiples of 32 long, so every piece is whole Q8_0 groups. */
static int sink_put_gguf(struct sink *k, uint64_t e0, size_t len, const float *out)
{
    float *conv = k->conv;
    const float *src = out;
    if (k->dtype == LM_DTYPE_F32 && k->round != LM_DTYPE_F32) {
        uint16_t tmp[256];
        for (size_t o = 0; o < len; o += LM_ARRAY_SIZE(tmp)) {
            size_t m = LM_MIN(LM_ARRAY_SIZE(tmp), len - o);
            lm_convert_from_f32(tmp, k->round, out + o, m);
            lm_convert_to_f32(conv + o, tmp, k->round, m);
        }
        src = conv;
    }
    if (!k->perm_heads) {
        const void *data = src;
        if (k->dtype != LM_DTYPE_F32) {
            lm_convert_from_f32(conv, k->dtype, src, len);
            data = conv;
        }
        return gguf_writer_pwrite(k->gguf, k->index, lm_dtype_bytes(k->dtype, (size_t)e0), data,
                                  lm_dtype_bytes(k->dtype, len));
    }
    if (k->cols == 1 && e0 == 0 && len == k->rows && k->dtype == LM_DTYPE_F32) {
        /* a bias: reordered in memory, one write (src may be conv) */
        float *tmp = lm_malloc_array(len, sizeof(float));
        if (!tmp)
            return LM_ENOMEM;
        for (size_t r = 0; r < len; r++)
            tmp[gguf_llama_permuted_row(r, k->rows, k->perm_heads)] = src[r];
        int rc = gguf_writer_pwrite(k->gguf, k->index, 0, tmp, len * sizeof(float));
        free(tmp);
        return rc;
    }
    int rc = 0;
    for (uint64_t e = e0; !rc && e < e0 + len;) {
        uint64_t r = e / k->cols, c0 = e % k->cols;
        size_t m = (size_t)LM_MIN(k->cols - c0, e0 + len - e);
        uint64_t dst = gguf_llama_permuted_row(r, k->rows, k->perm_heads) * k->cols + c0;
        const void *data = src + (e - e0);
        if (k->dtype != LM_DTYPE_F32) {
            /* conv may hold src (rounded F32 only, never converted): safe */
            lm_convert_from_f32(conv, k->dtype, src + (e - e0), m);
            data = conv;
        }
        rc = gguf_writer_pwrite(k->gguf, k->index, lm_dtype_bytes(k->dtype, (size_t)dst), data,
                                lm_dtype_bytes(k->dtype, m));
        e += m;
    }
    return rc;
}

static int sink_put(struct sink *k, uint64_t e0, size_t len, const float *out)
{
    if (k->gguf)
        return sink_put_gguf(k, e0, len, out);
    if (k->bytes) {
        lm_convert_from_f32((char *)k->bytes + lm_dtype_bytes(k->dtype, e0), k->dtype, out, len);
        return 0;
    }
    size_t es = lm_dtype_size(k->dtype);
    if (!k->writer)
        return 0;
    lm_convert_from_f32(k->conv, k->dtype, out, len);
    return st_writer_pwrite(k->writer, k->index, e0 * es, k->conv, len * es);
}

/* Merges tensor i block by block into `sink` (NULL: nowhere), with its
 * statistics into `raw` when non-NULL, reporting progress to `p` as it
 * goes (*reported: the entries reported) and stopping within a block when
 * `p` is cancelled (LM_ECANCELED). 1 when the method cannot merge it that
 * way (nothing done), else 0 or an error. */
static int stream_tensor(struct workspace *ws, size_t i, struct ws_scratch *sc, struct sink *sink,
                         struct stats_raw *raw, struct pass *pass, int worker, uint64_t *reported)
{
    const struct ws_tensor *t = &ws->tensors[i];
    /* Streams read the base as source 0; a base-less merge goes whole
     * (ws_merge_tensor hands the method no base). */
    if (ws->plan.method->needs || !ws->has_base)
        return 1;
    struct stream_ctx ctx = { .t = t, .p = pass, .worker = worker };
    struct merge_tensor_params p;
    merge_plan_resolve(&ws->plan, t->name, &t->info, &p);
    const int nm = ws->n_sources - 1;
    struct merge_stream_job sj = {
        .name = t->name, .n = t->n_elements,
        .rows = t->ndim == 2 ? (uint64_t)t->shape[0] : 1,
        .cols = t->ndim == 2 ? (uint64_t)t->shape[1] : t->n_elements,
        .n_models = nm, .params = &p, .read = stream_read, .ud = &ctx, .scratch = &sc->method,
        .cut_memo = &ws->cut_memo[i],
    };
    struct merge_stream *st = NULL;
    int rc = merge_stream_begin(ws->plan.method, &sj, &st);
    if (rc)
        return lm_err_context(rc, "merging '%s'", t->name);
    if (!st)
        return 1;
    struct stats_stream *ss = NULL;
    if (raw)
        rc = stats_stream_begin(&ss, nm, t->n_elements, p.density, p.weight, st->has_cut, st->cut,
                                stream_read, &ctx, &sc->method);
    const size_t B = MERGE_STREAM_BLOCK;
    float *in[WS_MAX_SOURCES];
    for (int s = 0; s < ws->n_sources && !rc; s++)
        if (!(in[s] = merge_scratch_get(&sc->inputs, s, B)))
            rc = LM_ENOMEM;
    float *out = rc ? NULL : merge_scratch_get(&sc->inputs, WS_MAX_SOURCES, B);
    if (!rc && !out)
        rc = LM_ENOMEM;
    if (!rc && sink && sink_writes(sink) && !(sink->conv = merge_scratch_get(&sc->inputs, WS_MAX_SOURCES + 1, B)))
        rc = LM_ENOMEM;
    const uint64_t n = t->n_elements;
    struct ws_nonfinite *nf = &ws->nonfinite[i];
    memset(nf, 0, sizeof(*nf));
    bool refused = false;
    *reported = 0;
    for (uint64_t e0 = 0, k = 1; !rc && e0 < n; e0 += B, k++) {
        const size_t len = (size_t)LM_MIN((uint64_t)B, n - e0);
        if (k % WS_TICK_BLOCKS == 0) {
            pass_report(pass, worker, e0 - *reported);
            *reported = e0;
            if (atomic_load(&pass->cancel)) {
                rc = LM_ECANCELED;
                break;
            }
        }
        for (int s = 0; s < ws->n_sources; s++)
            read_ahead(&ctx, s, e0, len, in[s]);
        rc = merge_stream_block(st, e0, len, in[0], (const float *const *)(in + 1), out);
        if (!rc)
            tally_nonfinite(nf, ws->n_sources, in, out, e0, len);
        if (!rc && nf->created && sink && sink_writes(sink)) {
            rc = refuse_created(ws, i);
            refused = true;
        }
        if (!rc && ss)
            rc = stats_stream_block(ss, in[0], (const float *const *)(in + 1), out, len);
        if (!rc && sink)
            rc = sink_put(sink, e0, len, out);
    }
    merge_stream_free(st);
    if (ss) {
        if (!rc) {
            stats_raw_init(raw, nm);
            rc = stats_stream_end(ss, raw);
        } else {
            struct stats_raw dummy;
            stats_raw_init(&dummy, nm);
            stats_stream_end(ss, &dummy);
        }
    }
    if (refused)
        return rc;   /* refuse_created named the tensor */
    if (rc)
        return lm_err_context(rc, "merging '%s'", t->name);
    return 0;
}

/* Sends a whole merged float32 tensor (n entries) to the sink a block at
 * a time. */
static int sink_whole(struct sink *k, struct ws_scratch *sc, const float *out, uint64_t n)
{
    if (!k->bytes && !sink_writes(k))
        return 0;
    if (sink_writes(k) && !(k->conv = merge_scratch_get(&sc->inputs, WS_MAX_SOURCES + 1, MERGE_STREAM_BLOCK)))
        return LM_ENOMEM;
    int rc = 0;
    for (uint64_t e0 = 0; !rc && e0 < n; e0 += MERGE_STREAM_BLOCK)
        rc = sink_put(k, e0, (size_t)LM_MIN((uint64_t)MERGE_STREAM_BLOCK, n - e0), out + e0);
    return rc;
}

/* Statistics of tensor i from its whole inputs, still in the scratch slots
 * ws_merge_tensor filled, and its merged float32 copy. */
static int whole_stats(struct workspace *ws, size_t i, struct ws_scratch *sc, const float *out,
                       struct stats_raw *raw)
{
    const struct ws_tensor *t = &ws->tensors[i];
    const float *models[MERGE_MAX_MODELS];
    for (int m = 0; m + 1 < ws->n_sources; m++)
        models[m] = sc->inputs.buf[m + 1];
    struct merge_tensor_params prm;
    merge_plan_resolve(&ws->plan, t->name, &t->info, &prm);
    stats_raw_init(raw, ws->n_sources - 1);
    return stats_accumulate(raw, sc->inputs.buf[0], models, ws->n_sources - 1, out, t->n_elements,
                            prm.density, prm.weight, &sc->method);
}

static void pass_tensor(void *ud, int64_t k, int worker)
{
    struct pass *p = ud;
    struct workspace *ws = p->ws;
    if (atomic_load(&p->cancel))
        return;
    int_fast64_t seen = atomic_load(&p->started);
    while (k > seen && !atomic_compare_exchange_weak(&p->started, &seen, k))
        ;
    size_t i = p->todo[k];
    const struct ws_tensor *t = &ws->tensors[i];
    struct ws_scratch *sc = &ws->scratch[worker];
    size_t n = (size_t)t->n_elements;
    /* Where the merged tensor goes: the writer's tensor i, the cache (in
     * the output dtype), or nowhere (statistics). */
    struct sink sk = { .dtype = p->fixed_dtype ? p->out_dtype : t->base_dtype,
                       .writer = p->writer, .index = i };
    if (p->gguf) {
        const struct ws_gguf_tensor *g = &p->gguf_plan[i];
        sk.gguf = p->gguf;
        sk.index = (size_t)g->index;
        sk.dtype = g->dtype;
        sk.round = g->round;
        sk.perm_heads = g->perm_heads;
        sk.rows = t->ndim > 0 ? (uint64_t)t->shape[0] : 1;
        sk.cols = sk.rows ? t->n_elements / sk.rows : 1;
    }
    if (p->keep_merged) {
        sk.dtype = ws_cache_dtype(ws, i);
        sk.bytes = ws->spare[i] ? ws->spare[i] : lm_malloc(n ? lm_dtype_bytes(sk.dtype, n) : 1);
        ws->spare[i] = NULL;
        if (!sk.bytes) {
            pass_fail(p, LM_ENOMEM);
            return;
        }
    }
    struct stats_raw raw;
    /* Block by block where the method can: no whole-tensor copies, and
     * blocks that stay in the cache, which also makes the workbench's
     * re-merges faster than converting whole tensors (1.6-2x at 0.5B).
     * Same bits either way. */
    uint64_t reported = 0;
    int rc = stream_tensor(ws, i, sc, &sk, p->stats ? &raw : NULL, p, worker, &reported);
    const bool whole = rc == 1;
    if (whole) {
        float *out = merge_scratch_get(&sc->inputs, WS_MAX_SOURCES, n);
        rc = out ? ws_merge_tensor(ws, i, out, sc) : LM_ENOMEM;
        if (!rc && atomic_load(&p->cancel)) {
            ws->spare[i] = sk.bytes;
            return; /* someone failed or asked to stop: skip the statistics */
        }
        if (!rc) {
            memset(&ws->nonfinite[i], 0, sizeof(ws->nonfinite[i]));
            tally_nonfinite(&ws->nonfinite[i], ws->n_sources, (float *const *)sc->inputs.buf, out, 0, n);
            if (ws->nonfinite[i].created && (p->writer || p->gguf))
                rc = refuse_created(ws, i);
        }
        if (!rc && p->stats)
            rc = whole_stats(ws, i, sc, out, &raw);
        if (!rc)
            rc = sink_whole(&sk, sc, out, t->n_elements);
    }
    if (sk.bytes) {
        if (rc)
            ws->spare[i] = sk.bytes;
        else
            ws->merged[i] = sk.bytes;
    }
    if (rc) {
        pass_fail(p, rc);
        return;
    }
    if (p->stats) {
        ws->stats[i] = raw;
        atomic_store_explicit(&ws->stats_done[i], true, memory_order_release);
    }
    if (whole || worker == 0 || t->n_elements >= ((uint64_t)1 << 24))
        sample_memory(ws);
    pass_report(p, worker, t->n_elements - reported);
}

/* ===== Reading ahead =====
 * While the workers merge, one more thread maps in the inputs of the
 * tensors they take next (st_tensor_populate, WS_POPULATE_BYTES at a
 * time), at most one tensor per worker ahead of the last one taken: the
 * disk reads while the CPUs compute, and on a model larger than the page
 * cache the pass takes about the longer of the two instead of their sum.
 * It only maps pages in; nothing depends on it but the time. */
struct feeder {
    struct pass *p;
    pthread_t thread;
    bool running;
    atomic_bool stop;
};

static bool feeder_stopped(struct feeder *f)
{
    return atomic_load(&f->stop) || atomic_load(&f->p->cancel);
}

static void *feeder_main(void *ud)
{
    struct feeder *f = ud;
    const struct pass *p = f->p;
    const struct workspace *ws = p->ws;
    const int64_t ahead = pool_n_workers(ws->pool);
    for (size_t k = 0; k < p->n_todo; k++) {
        while ((int64_t)k > atomic_load(&f->p->started) + ahead) {
            if (feeder_stopped(f))
                return NULL;
            struct timespec ms = { 0, 1000000 };
            nanosleep(&ms, NULL);
        }
        const struct ws_tensor *t = &ws->tensors[p->todo[k]];
        for (int s = 0; s < ws->n_sources; s++) {
            if (s > 0 && t->src[s] == t->src[0])
                continue;
            for (uint64_t off = 0; off < t->src[s]->nbytes; off += WS_POPULATE_BYTES) {
                if (feeder_stopped(f))
                    return NULL;
                st_tensor_populate(t->src[s], off, WS_POPULATE_BYTES);
            }
        }
    }
    return NULL;
}

/* Runs pass p over its n_todo tensors on the pool, with a feeder. */
static void run_pass(struct pass *p)
{
    struct feeder f = { .p = p };
    atomic_init(&f.stop, false);
    f.running = pthread_create(&f.thread, NULL, feeder_main, &f) == 0; /* none: slower, not wrong */
    pool_for(p->ws->pool, (int64_t)p->n_todo, pass_tensor, p);
    atomic_store(&f.stop, true);
    if (f.running)
        pthread_join(f.thread, NULL);
}

static int pass_finish(struct pass *p)
{
    int rc = atomic_load(&p->failed);
    if (rc)
        lm_err(rc, "%s", p->error);
    return rc;
}

/* Largest tensors first, so that the last ones to finish are small. */
static int by_size_desc(const void *a, const void *b, void *ctx)
{
    const struct workspace *ws = ctx;
    uint64_t x = ws->tensors[*(const size_t *)a].n_elements;
    uint64_t y = ws->tensors[*(const size_t *)b].n_elements;
    if (x != y)
        return x > y ? -1 : 1;
    return *(const size_t *)a < *(const size_t *)b ? -1 : 1;
}

/* Layer by layer from the first, the tensors outside the stack (embeddings,
 * final norm, lm_head: the largest) last: statistics rows complete in the
 * order a person reads them, the first within seconds even at 7B, instead
 * of after the embedding. Largest first within a layer. */
static int by_layer_then_size(const void *a, const void *b, void *ctx)
{
    const struct workspace *ws = ctx;
    int la = ws->tensors[*(const size_t *)a].info.layer;
    int lb = ws->tensors[*(const size_t *)b].info.layer;
    unsigned ka = la < 0 ? UINT_MAX : (unsigned)la, kb = lb < 0 ? UINT_MAX : (unsigned)lb;
    if (ka != kb)
        return ka < kb ? -1 : 1;
    return by_size_desc(a, b, ctx);
}

/* Layer order leaves the tensors outside the stack for last. When fewer
 * large ones than there are workers end the pass, each is merged by one
 * worker while the others have nothing left (at 0.5B the tied embedding
 * is a quarter of the work). Such a tensor (a quarter of a worker's share
 * or more) moves back to where the work after it keeps the other workers
 * busy as long as it takes: its size times (workers - 1) in other tensors,
 * sizes counted in entries. The first rows still come first. */
static void balance_tail(const struct workspace *ws, size_t *todo, size_t n, int workers)
{
    if (workers < 2 || n < 2)
        return;
    uint64_t total = 0;
    for (size_t k = 0; k < n; k++)
        total += ws->tensors[todo[k]].n_elements;
    size_t first_tail = n;
    while (first_tail > 0 && ws->tensors[todo[first_tail - 1]].info.layer < 0)
        first_tail--;
    size_t big[8], n_big = 0;
    for (size_t k = first_tail; k < n && n_big < LM_ARRAY_SIZE(big); k++)
        if (ws->tensors[todo[k]].n_elements * 4 * (uint64_t)workers >= total)
            big[n_big++] = todo[k];
    if (n_big == 0 || n_big >= (size_t)workers)
        return;
    for (size_t j = 0; j < n_big; j++) {
        size_t at = 0;
        while (todo[at] != big[j])
            at++;
        memmove(todo + at, todo + at + 1, (n - at - 1) * sizeof(*todo));
        const uint64_t need = ws->tensors[big[j]].n_elements * (uint64_t)(workers - 1);
        uint64_t after = 0;
        size_t pos = n - 1;
        while (pos > 0 && after < need)
            after += ws->tensors[todo[--pos]].n_elements;
        memmove(todo + pos + 1, todo + pos, (n - 1 - pos) * sizeof(*todo));
        todo[pos] = big[j];
    }
}

/* Sets up a pass over the tensors todo[0 .. n_todo), which it sorts with
 * `order`. */
static void pass_init(struct pass *p, struct workspace *ws, size_t *todo, size_t n_todo,
                      int (*order)(const void *, const void *, void *),
                      lm_progress_fn progress, void *ud, const char *what)
{
    qsort_r(todo, n_todo, sizeof(*todo), order, ws);
    memset(p, 0, sizeof(*p));
    p->ws = ws;
    p->todo = todo;
    p->n_todo = n_todo;
    p->progress = progress;
    p->ud = ud;
    p->what = what;
    for (size_t k = 0; k < n_todo; k++)
        p->total_elements += ws->tensors[todo[k]].n_elements;
    atomic_init(&p->done_elements, 0);
    atomic_init(&p->failed, 0);
    atomic_init(&p->cancel, false);
    atomic_init(&p->started, -1);
}

static void release_scratch(struct workspace *ws)
{
    for (int w = 0; w < pool_n_workers(ws->pool); w++)
        ws_scratch_deinit(&ws->scratch[w]);
    memset(ws->scratch, 0, sizeof(*ws->scratch) * (size_t)pool_n_workers(ws->pool));
}

int ws_stats_compute(struct workspace *ws, lm_progress_fn progress, void *ud)
{
    int rc = ws_calibrate(ws, progress, ud); /* checks the inputs first */
    if (rc)
        return rc;
    size_t *todo = lm_malloc_array(ws->n_tensors ? ws->n_tensors : 1, sizeof(size_t));
    if (!todo)
        return LM_ENOMEM;
    size_t n = 0;
    for (size_t i = 0; i < ws->n_tensors; i++)
        if (!atomic_load(&ws->stats_done[i]))
            todo[n++] = i;
    struct pass p;
    pass_init(&p, ws, todo, n, by_layer_then_size, progress, ud, "statistics");
    balance_tail(ws, todo, n, pool_n_workers(ws->pool));
    p.stats = true;
    run_pass(&p);
    release_scratch(ws);
    free(todo);
    if (progress && !atomic_load(&p.failed))
        progress(1.0, "statistics", ud);
    return pass_finish(&p);
}

const struct stats_raw *ws_tensor_stats(const struct workspace *ws, size_t i)
{
    return atomic_load_explicit(&ws->stats_done[i], memory_order_acquire) ? &ws->stats[i] : NULL;
}

/* Merges the listed tensors that are not cached yet into the cache. */
static int merge_into_cache(struct workspace *ws, bool (*want)(const struct ws_tensor *, int), int arg,
                            lm_progress_fn progress, void *ud)
{
    int rc = ws_calibrate(ws, progress, ud); /* checks the inputs first */
    if (rc)
        return rc;
    size_t *todo = lm_malloc_array(ws->n_tensors ? ws->n_tensors : 1, sizeof(size_t));
    if (!todo)
        return LM_ENOMEM;
    size_t n = 0;
    for (size_t i = 0; i < ws->n_tensors; i++)
        if (want(&ws->tensors[i], arg) && !ws->merged[i])
            todo[n++] = i;
    struct pass p;
    pass_init(&p, ws, todo, n, by_size_desc, progress, ud, "merging");
    p.keep_merged = true;
    run_pass(&p);
    free(todo);
    return pass_finish(&p);
}

static bool in_layer(const struct ws_tensor *t, int layer)
{
    return t->info.layer == layer;
}

static bool any_tensor(const struct ws_tensor *t, int unused)
{
    (void)t;
    (void)unused;
    return true;
}

int ws_merge_layer(struct workspace *ws, int layer, lm_progress_fn progress, void *ud)
{
    return merge_into_cache(ws, in_layer, layer, progress, ud);
}

int ws_merge_all(struct workspace *ws, lm_progress_fn progress, void *ud)
{
    int rc = merge_into_cache(ws, any_tensor, 0, progress, ud);
    release_scratch(ws);
    return rc;
}

const void *ws_merged(const struct workspace *ws, size_t i)
{
    return ws->merged[i];
}

enum lm_dtype ws_output_dtype(const struct workspace *ws, size_t i, int override)
{
    if (override >= 0)
        return (enum lm_dtype)override;
    int d = ws->recipe->output.dtype ? lm_dtype_from_user_name(ws->recipe->output.dtype) : -1;
    return d >= 0 ? (enum lm_dtype)d : ws->tensors[i].base_dtype;
}

/* ===== The cache's form ===== */

int ws_preview_dtype_parse(const char *s)
{
    static const struct { const char *name; enum ws_preview_dtype d; } names[] = {
        { "auto", WS_PREVIEW_AUTO }, { "out", WS_PREVIEW_OUTPUT }, { "output", WS_PREVIEW_OUTPUT },
        { "bf16", WS_PREVIEW_BF16 }, { "q8", WS_PREVIEW_Q8 },
    };
    for (size_t k = 0; k < LM_ARRAY_SIZE(names); k++)
        if (strcmp(s, names[k].name) == 0)
            return (int)names[k].d;
    return -1;
}

const char *ws_preview_dtype_name(enum ws_preview_dtype d)
{
    switch (d) {
    case WS_PREVIEW_OUTPUT: return "output";
    case WS_PREVIEW_BF16:   return "bf16";
    case WS_PREVIEW_Q8:     return "q8";
    default:                return "auto";
    }
}

static enum lm_dtype cache_dtype_in(const struct workspace *ws, enum ws_preview_dtype d, size_t i)
{
    enum lm_dtype out = ws_output_dtype(ws, i, -1);
    if (d == WS_PREVIEW_OUTPUT)
        return out;
    const struct ws_tensor *t = &ws->tensors[i];
    if (d == WS_PREVIEW_Q8 && t->ndim == 2 && t->shape[1] % LM_Q8_GROUP == 0)
        return LM_DTYPE_Q8_0;
    return out == LM_DTYPE_F32 ? LM_DTYPE_BF16 : out;
}

enum lm_dtype ws_cache_dtype(const struct workspace *ws, size_t i)
{
    return cache_dtype_in(ws, ws->preview, i);
}

bool ws_preview_exact(const struct workspace *ws)
{
    for (size_t i = 0; i < ws->n_tensors; i++)
        if (ws_cache_dtype(ws, i) != ws_output_dtype(ws, i, -1))
            return false;
    return true;
}

uint64_t ws_preview_bytes(const struct workspace *ws, enum ws_preview_dtype d)
{
    uint64_t b = 0;
    for (size_t i = 0; i < ws->n_tensors; i++)
        b += lm_dtype_bytes(cache_dtype_in(ws, d, i), (size_t)ws->tensors[i].n_elements);
    return b;
}

/* Room kept for the model's run state (KV cache, batch scratch), the
 * merge's scratch and everything else the process holds. */
#define WS_PREVIEW_HEADROOM ((uint64_t)1 << 30)

bool ws_preview_fits(const struct workspace *ws, enum ws_preview_dtype d, uint64_t *available)
{
    uint64_t avail = lm_mem_available();
    if (available)
        *available = avail;
    return avail == 0 || ws_preview_bytes(ws, d) + WS_PREVIEW_HEADROOM <= avail;
}

void ws_set_preview_dtype(struct workspace *ws, enum ws_preview_dtype d)
{
    if (d == WS_PREVIEW_AUTO)
        d = ws_preview_fits(ws, WS_PREVIEW_OUTPUT, NULL) ? WS_PREVIEW_OUTPUT
          : ws_preview_fits(ws, WS_PREVIEW_BF16, NULL)   ? WS_PREVIEW_BF16 : WS_PREVIEW_Q8;
    bool changes = false;
    for (size_t i = 0; i < ws->n_tensors && !changes; i++)
        changes = cache_dtype_in(ws, d, i) != ws_cache_dtype(ws, i);
    ws->preview = d;
    if (changes)
        ws_drop_merged(ws);
}

enum ws_preview_dtype ws_get_preview_dtype(const struct workspace *ws)
{
    return ws->preview;
}

int ws_output_config(const struct workspace *ws, struct hf_config *out)
{
    const struct ws_model *m = &ws->sources[ws->config_from];
    if (!m->has_config)
        return lm_err(LM_EFORMAT, "model '%s' (%s) has no config.json to run the merged model with",
                      m->name, m->dir);
    int rc = hf_config_load(m->config.path, out);
    if (rc)
        return rc;
    char *gen = lm_path_join(m->dir, "generation_config.json");
    if (!gen)
        return LM_ENOMEM;
    rc = hf_generation_config_load(gen, out);
    free(gen);
    if (rc)
        return rc;
    out->tie_word_embeddings = ws->output_tied;
    out->has_tie_word_embeddings = true;
    if (ws->out_vocab > 0)
        out->vocab_size = ws->out_vocab;
    if (ws->recipe->n_slices > 0)
        out->num_hidden_layers = ws->n_layers;
    return 0;
}

void ws_drop_merged(struct workspace *ws)
{
    if (!ws->merged)
        return;
    for (size_t i = 0; i < ws->n_tensors; i++) {
        free(ws->merged[i]);
        ws->merged[i] = NULL;
        if (ws->spare) {
            free(ws->spare[i]);
            ws->spare[i] = NULL;
        }
    }
}

/* ===== Writing the weights ===== */

int ws_write_weights(struct workspace *ws, const char *staging, enum lm_dtype dtype_all,
                     bool fixed_dtype, uint64_t shard_size, lm_progress_fn progress, void *ud)
{
    static const char *const meta_keys[] = { "format" };
    static const char *const meta_values[] = { "pt" };
    struct st_writer_params wp = st_writer_default_params();
    wp.shard_size = shard_size;
    wp.metadata_keys = meta_keys;
    wp.metadata_values = meta_values;
    wp.n_metadata = 1;
    struct st_writer *w = st_writer_new(staging, wp);
    if (!w)
        return LM_EIO;
    int rc = 0;
    for (size_t i = 0; i < ws->n_tensors && !rc; i++) {
        const struct ws_tensor *t = &ws->tensors[i];
        rc = st_writer_add(w, t->name, fixed_dtype ? dtype_all : t->base_dtype, t->ndim, t->shape);
    }
    if (!rc)
        rc = st_writer_begin_positional(w);

    /* Every tensor goes to its place in its shard as it is merged, block by
     * block where the method allows: nothing holds the merged model, and
     * the workers take tensors largest first. */
    size_t *todo = rc ? NULL : lm_malloc_array(ws->n_tensors ? ws->n_tensors : 1, sizeof(size_t));
    if (!rc && !todo)
        rc = LM_ENOMEM;
    if (!rc) {
        for (size_t i = 0; i < ws->n_tensors; i++)
            todo[i] = i;
        struct pass p;
        pass_init(&p, ws, todo, ws->n_tensors, by_size_desc, progress, ud, "writing");
        p.writer = w;
        p.out_dtype = dtype_all;
        p.fixed_dtype = fixed_dtype;
        run_pass(&p);
        rc = pass_finish(&p);
        /* the last word before the files go into place: may still cancel */
        if (!rc && progress && !progress(1.0, "writing", ud))
            rc = lm_err(LM_ECANCELED, "cancelled");
    }
    free(todo);
    release_scratch(ws);
    if (rc) {
        st_writer_abort(w);
        return rc;
    }
    return st_writer_commit(w);
}

int ws_write_gguf_weights(struct workspace *ws, struct gguf_writer *w,
                          const struct ws_gguf_tensor *plan, lm_progress_fn progress, void *ud)
{
    size_t *todo = lm_malloc_array(ws->n_tensors ? ws->n_tensors : 1, sizeof(size_t));
    if (!todo)
        return LM_ENOMEM;
    size_t n = 0;
    for (size_t i = 0; i < ws->n_tensors; i++)
        if (plan[i].index >= 0)
            todo[n++] = i;
    struct pass p;
    pass_init(&p, ws, todo, n, by_size_desc, progress, ud, "writing");
    p.gguf = w;
    p.gguf_plan = plan;
    run_pass(&p);
    int rc = pass_finish(&p);
    if (!rc && progress && !progress(1.0, "writing", ud))
        rc = lm_err(LM_ECANCELED, "cancelled");
    free(todo);
    release_scratch(ws);
    return rc;
}
