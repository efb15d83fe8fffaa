/* Merging one tensor block by block, for inputs that are not float32
 * arrays in memory (bf16 or f16 weights in mapped files) and outputs that
 * go straight to a file: memory follows the block size, not the tensor.
 *
 * A method that can (merge_method.stream_begin set) looks at the whole
 * tensor once in merge_stream_begin for what its rule needs from all of it
 * (TIES' and breadcrumbs' top-k cuts, read through job->read a chunk at a
 * time), and then merges consecutive blocks of entries in index order with
 * merge_stream_block, each given as float32. The result is the same, bit
 * for bit, as the method's merge_tensor on the whole tensor: the same
 * cuts, the same operations per entry, DARE's mask indexed by the entry's
 * place in the tensor. Methods whose rule needs more than that (della's
 * ranks, slerp's norms, the SVD and calibration methods, DARE with the L1
 * rescale) decline: begin gives no stream and the caller merges the tensor
 * whole. */
#ifndef MS_CORE_MERGE_MERGE_STREAM_H
#define MS_CORE_MERGE_MERGE_STREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "merge_method.h"
#include "select.h"

/* Entries per block a caller should use: blocks of any length work, but
 * every block but the last must be a multiple of 8 entries. */
#define MERGE_STREAM_BLOCK ((size_t)1 << 16)

/* Reads entries [e0, e0 + len) of source `source` (0 = base, 1 + i =
 * model i) as float32 into dst[0..len). 0, or an LM_E* code that stops the
 * pass reading (LM_ECANCELED: the caller was asked to stop). */
typedef int (*merge_read_fn)(void *ud, int source, uint64_t e0, size_t len, float *dst);

struct merge_stream_job {
    const char  *name;       /* full tensor name: part of the DARE mask seed */
    uint64_t     n;
    uint64_t     rows, cols; /* as in merge_tensor_job */
    int          n_models;
    const struct merge_tensor_params *params;
    merge_read_fn read;      /* for the whole-tensor pass of begin */
    void        *ud;
    struct merge_scratch *scratch; /* top-k work space (slot 0) */
    struct merge_cut_memo *cut_memo; /* as in merge_tensor_job, or NULL */
};

struct merge_stream {
    int (*block)(struct merge_stream *st, uint64_t e0, size_t len, const float *base,
                 const float *const *models, float *out);
    /* The top-k cut of each model's task vector at its density, where
     * begin found it (TIES): 0 < k < n entries, as select.h's
     * topk_find_diff gives it. Statistics trim with the same cut. */
    bool            has_cut[MERGE_MAX_MODELS];
    struct topk_cut cut[MERGE_MAX_MODELS];
};

/* Starts a block by block merge of job's tensor with method `m`: *out is
 * the stream, or NULL when the method cannot merge these parameters that
 * way (merge the whole tensor then). 0 or an error (bad parameters, as
 * merge_tensor reports them; out of memory). */
int merge_stream_begin(const struct merge_method *m, const struct merge_stream_job *job,
                       struct merge_stream **out);
/* Merges entries [e0, e0 + len): blocks come in order without gaps from 0,
 * every one but the last a multiple of 8 entries long. */
int merge_stream_block(struct merge_stream *st, uint64_t e0, size_t len, const float *base,
                       const float *const *models, float *out);
/* Accepts NULL. */
void merge_stream_free(struct merge_stream *st);

/* For the implementations: a stream over merge_gta_tensor's rule (ties.c);
 * *out stays NULL for the sparsifications it cannot stream. */
int merge_gta_stream_begin(const struct merge_method *m, const struct merge_stream_job *job,
                           enum merge_sparsify sparsify, bool sign_consensus,
                           struct merge_stream **out);
/* Checks a stream job as merge_job_check checks a whole-tensor one. */
int merge_stream_check(const struct merge_method *m, const struct merge_stream_job *job);
/* Model `model`'s top-k cut by |x - b| (k of n entries), as
 * topk_find_diff_read finds it, the sources read through `read`. */
int merge_read_cut(merge_read_fn read, void *ud, int model, uint64_t n, uint64_t k,
                   uint32_t *work, size_t work_len, struct topk_cut *cut);
/* How many entries of model `model`'s x - b have |x - b|'s bits equal to
 * `key` (topk_count_equal_diff through `read`). 0 or LM_ENOMEM. */
int merge_read_count_equal(merge_read_fn read, void *ud, int model, uint64_t n, uint32_t key,
                           uint64_t *count);
/* The whole-tensor job of sj's tensor with placeholder arrays (`models`
 * holds MERGE_MAX_MODELS pointers), for checks and set-ups that read none. */
void merge_stream_whole_job(const struct merge_stream_job *sj, const float **models,
                            struct merge_tensor_job *job);

#endif
