/* Block by block merging (merge_stream.h): the generic entry points and
 * the job check. The methods' streams live with the methods (linear.c,
 * ties.c). */
#include "merge_stream.h"

#include <stdlib.h>

#include "lm_error.h"

void merge_stream_whole_job(const struct merge_stream_job *sj, const float **models,
                            struct merge_tensor_job *job)
{
    static const float placeholder_in[1];
    static float placeholder_out[1]; /* never written */
    for (int i = 0; i < MERGE_MAX_MODELS; i++)
        models[i] = placeholder_in;
    *job = (struct merge_tensor_job){
        .name = sj->name, .n = sj->n, .rows = sj->rows, .cols = sj->cols,
        .base = placeholder_in, .models = models, .n_models = sj->n_models, .params = sj->params,
        .out = placeholder_out, .scratch = sj->scratch, .cut_memo = sj->cut_memo,
    };
}

int merge_stream_check(const struct merge_method *m, const struct merge_stream_job *job)
{
    const float *models[MERGE_MAX_MODELS];
    struct merge_tensor_job j;
    merge_stream_whole_job(job, models, &j);
    return merge_job_check(m, &j);
}

int merge_read_cut(merge_read_fn read, void *ud, int model, uint64_t n, uint64_t k,
                   uint32_t *work, size_t work_len, struct topk_cut *cut)
{
    const int src = 1 + model;
    return topk_find_diffs_read(read, ud, n, 1, &src, &k, &work, work_len, cut);
}

int merge_stream_begin(const struct merge_method *m, const struct merge_stream_job *job,
                       struct merge_stream **out)
{
    *out = NULL;
    if (!m->stream_begin)
        return 0;
    return m->stream_begin(job, out);
}

int merge_stream_block(struct merge_stream *st, uint64_t e0, size_t len, const float *base,
                       const float *const *models, float *out)
{
    return st->block(st, e0, len, base, models, out);
}

void merge_stream_free(struct merge_stream *st)
{
    free(st);
}

int merge_read_count_equal(merge_read_fn read, void *ud, int model, uint64_t n, uint32_t key,
                           uint64_t *count)
{
    enum { CHUNK = 8192 };
    float *x = lm_malloc_array(2 * CHUNK, sizeof(float));
    if (!x)
        return LM_ENOMEM;
    float *b = x + CHUNK;
    uint64_t c = 0;
    int rc = 0;
    for (uint64_t e0 = 0; e0 < n && !rc; e0 += CHUNK) {
        const size_t len = (size_t)(n - e0 < CHUNK ? n - e0 : CHUNK);
        if (!(rc = read(ud, 1 + model, e0, len, x)) && !(rc = read(ud, 0, e0, len, b)))
            c += topk_count_equal_diff(x, b, len, key);
    }
    free(x);
    *count = c;
    return rc;
}
