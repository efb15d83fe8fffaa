/* Block by block merging (merge_stream.h): the generic entry points, the
 * job check, and linear's stream (linear and average are per entry). */
#include "merge_stream.h"

#include <stdlib.h>
#include <string.h>

#include "lm_error.h"

int merge_stream_check(const struct merge_method *m, const struct merge_stream_job *job)
{
    /* merge_job_check wants arrays; any non-NULL pointers do for the check. */
    static const float dummy_in[1];
    float dummy_out[1];
    const float *models[MERGE_MAX_MODELS];
    for (int i = 0; i < MERGE_MAX_MODELS; i++)
        models[i] = dummy_in;
    struct merge_tensor_job j = {
        .name = job->name, .n = job->n, .rows = job->rows, .cols = job->cols,
        .base = dummy_in, .models = models, .n_models = job->n_models, .params = job->params,
        .out = dummy_out, .scratch = job->scratch,
    };
    return merge_job_check(m, &j);
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
