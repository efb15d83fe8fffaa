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

#endif
