/* Why a tensor is merged the way it is, for screens that show it beside
 * the statistics: which of the recipe's overrides apply to it, and what
 * calibration multiplies its task vectors by. Read-only queries on the
 * workspace's current recipe and calibration results; no errors. */
#ifndef MS_CORE_WORKBENCH_WS_EXPLAIN_H
#define MS_CORE_WORKBENCH_WS_EXPLAIN_H

#include <stdbool.h>
#include <stddef.h>

#include "workspace.h"

/* Whether override `o` of ws_recipe(ws) (an index into its overrides)
 * applies to tensor i. False for an index out of range. */
bool ws_override_matches_tensor(const struct workspace *ws, size_t o, size_t i);

/* What Sens-Merging multiplies each model's task vector of tensor i by,
 * with the tensor's own alpha and temperature: exactly the factors the
 * merge applies. Fills scale[0..n-1] (scale holds MERGE_MAX_MODELS) and
 * returns n, the number of models; 0 when the method takes no
 * sensitivities or calibration has not run yet. */
int ws_tensor_sens_scale(const struct workspace *ws, size_t i, double *scale);

/* ===== Statistics across the layer stack ===== */

/* The statistics a chart can draw across layers (stats.h defines them). */
enum ws_stat {
    WS_STAT_NORM,           /* ||d_a|| */
    WS_STAT_REL,            /* ||d_a|| / ||base|| */
    WS_STAT_TOPK,           /* energy share kept by trimming d_a to its density */
    WS_STAT_COS,            /* cos(d_a, d_b) */
    WS_STAT_CONFLICT,       /* sign conflict rate of d_a and d_b */
    WS_STAT_TIES_CONFLICT,  /* kept entries against the elected sign */
    WS_STAT_SIGN_FLIP,      /* signs that differ between base and merge */
    WS_STAT_MERGED_REL,     /* ||merged - base|| / ||base|| */
    WS_STAT_COUNT
};

/* "norm", "rel", "topk", "cos", "conflict", "ties_conflict", "sign_flip",
 * "merged_rel". */
const char *ws_stat_name(enum ws_stat s);
/* Whether the statistic is about one model (norm, rel, topk) or a pair of
 * models (cos, conflict); the others are about the merge. */
bool ws_stat_per_model(enum ws_stat s);
bool ws_stat_per_pair(enum ws_stat s);

/* The statistics worth drawing for `n_models` task vectors, in display
 * order (one model: no pair statistics and no ties_conflict, which is 0).
 * Fills out[] (WS_STAT_COUNT entries suffice) and returns how many. */
int ws_stats_for(int n_models, enum ws_stat *out);

/* One statistic per layer for one module: y[l] for layers 0..n_layers-1,
 * aggregated exactly over the layer's tensors of that module (sums of
 * squares and counts added, then divided), NaN where a layer has no such
 * tensor or its statistics are not computed yet. */
#define WS_SERIES_MAX 12
struct ws_series {
    char name[24];     /* "attention", "mlp", or a projection: "q_proj" ... "down_proj" */
    double *y;         /* n_layers values; owned, freed by ws_series_free */
};

/* The series of statistic `stat` for model `a` (per-model statistics) or
 * the pair (a, b) (pair statistics): one per module group (attention,
 * MLP), or with `by_projection` one per projection present (q_proj, k_proj,
 * ..., down_proj, in the models' order). Fills out[0..*n_out-1] (at most
 * WS_SERIES_MAX). 0, or LM_ENOMEM (nothing to free then). */
int ws_layer_series(const struct workspace *ws, enum ws_stat stat, bool by_projection, int a, int b,
                    struct ws_series *out, int *n_out);
void ws_series_free(struct ws_series *s, int n);

#endif
