/* Task-vector statistics (DESIGN.md section 5), kept as raw sums so that
 * per-tensor numbers aggregate exactly into per-layer and per-module ones by
 * adding. Derived ratios come from the stats_* accessors.
 *
 * With base b, models x_i, task vectors d_i = x_i - b and a merged tensor m:
 *   norm_i        = ||d_i||_2
 *   rel_i         = ||d_i|| / ||b||
 *   cos_ij        = <d_i, d_j> / (||d_i|| ||d_j||)           (0 if either is 0)
 *   conflict_ij   = #{e: d_i[e] != 0, d_j[e] != 0, sign differs} / #{both non-zero}
 *   ties_conflict = after trimming each d_i to its top density_i fraction and
 *                   weighting by w_i, electing sign(sum) (0 counts as +): the
 *                   fraction of kept (i, e) entries whose sign disagrees
 *   topk_energy_i = share of ||d_i||^2 held by the top density_i fraction
 *   sign_flip     = fraction of entries with sign(b[e]) != sign(m[e])
 *                   (sign -1, 0, +1 compared as such)
 *   merged_rel    = ||m - b|| / ||b||
 * All sums in double. Computing one tensor's stats is single-threaded and
 * deterministic; the workspace runs tensors in parallel. */
#ifndef MS_CORE_MERGE_STATS_H
#define MS_CORE_MERGE_STATS_H

#include <stdbool.h>
#include <stdint.h>

#include "merge_method.h"
#include "merge_stream.h"

struct stats_raw {
    int      n_models;
    uint64_t n_elements;
    double   base_sq;                                     /* sum b^2 */
    double   delta_sq[MERGE_MAX_MODELS];                  /* sum d_i^2 */
    double   dot[MERGE_MAX_MODELS][MERGE_MAX_MODELS];     /* sum d_i d_j (i < j used) */
    uint64_t both_nonzero[MERGE_MAX_MODELS][MERGE_MAX_MODELS];
    uint64_t opposite[MERGE_MAX_MODELS][MERGE_MAX_MODELS];
    uint64_t ties_kept;                                   /* kept (i, e) pairs */
    uint64_t ties_disagree;
    double   topk_sq[MERGE_MAX_MODELS];                   /* sum of kept d_i^2 */
    uint64_t sign_flips;                                  /* needs merged */
    double   merged_delta_sq;                             /* sum (m - b)^2 */
    int      has_merged;
};

void stats_raw_init(struct stats_raw *s, int n_models);
/* s += t (same n_models). */
void stats_raw_add(struct stats_raw *s, const struct stats_raw *t);

/* Accumulates one tensor into `s` (which stats_raw_init prepared).
 * `merged` may be NULL (then sign flips and merged_rel stay unknown).
 * `density` and `weight` hold n_models values each: the TIES trim and sign
 * election use them. `scratch` supplies buffers. 0 or an error. */
int stats_accumulate(struct stats_raw *s, const float *base, const float *const *models,
                     int n_models, const float *merged, uint64_t n,
                     const double *density, const double *weight,
                     struct merge_scratch *scratch);

/* The same accumulation for a tensor given block by block (float32 blocks
 * of a tensor read from bf16 files, say): stats_stream_begin prepares the
 * trims, taking model i's top-k cut from cuts[i] where has_cut[i] (a
 * merge's cut at the same density: merge_stream.h), else finding it by
 * reading the inputs through `read`; stats_stream_block takes consecutive
 * blocks from entry 0, every one but the last a multiple of 8 entries
 * long; stats_stream_end adds the tensor to `s` (which stats_raw_init
 * prepared) and frees the stream. The sums are those stats_accumulate
 * gives on the whole tensor, bit for bit. `merged` may be NULL for every
 * block (sign flips and merged_rel stay unknown). */
struct stats_stream;
int stats_stream_begin(struct stats_stream **out, int n_models, uint64_t n, const double *density,
                       const double *weight, const bool *has_cut, const struct topk_cut *cuts,
                       merge_read_fn read, void *ud, struct merge_scratch *scratch);
int stats_stream_block(struct stats_stream *st, const float *base, const float *const *models,
                       const float *merged, size_t len);
/* 0 or an error (entries missing); frees the stream (NULL accepted). */
int stats_stream_end(struct stats_stream *st, struct stats_raw *s);

double stats_norm(const struct stats_raw *s, int i);
double stats_rel(const struct stats_raw *s, int i);
double stats_cos(const struct stats_raw *s, int i, int j);
double stats_conflict(const struct stats_raw *s, int i, int j);
double stats_ties_conflict(const struct stats_raw *s);
double stats_topk_energy(const struct stats_raw *s, int i);
double stats_sign_flip(const struct stats_raw *s);     /* NaN when unknown */
double stats_merged_rel(const struct stats_raw *s);    /* NaN when unknown */

#endif
