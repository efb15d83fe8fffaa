/* A recipe checked against the method registry, and the parameters it gives
 * each tensor.
 *
 * Resolution order for one tensor (later wins): merge_tensor_params_default,
 * the method's defaults, the recipe's global "params", each model's own
 * parameters, then every override whose layers and modules match, in order.
 * A list value is a gradient: with t = layer / (n_layers - 1) (t = 1 for
 * a model of one layer) it is interpolated linearly between its evenly
 * spaced points with mergekit's formula (config.py's evaluate_setting);
 * tensors outside the layer stack (embeddings, the final norm, lm_head) are
 * read at t = 0, the first value, as mergekit's planner does. */
#ifndef MS_CORE_MERGE_MERGE_PLAN_H
#define MS_CORE_MERGE_MERGE_PLAN_H

#include "merge_method.h"
#include "recipe.h"
#include "tensor_name.h"

struct merge_plan {
    const struct recipe *recipe;       /* borrowed */
    const struct merge_method *method;
    int n_models;
    int n_layers;                      /* set by the caller once models are open */
};

/* Checks method name, model count, a base model where the method needs one
 * (only base_optional methods merge without), every parameter name, kind and range,
 * with errors naming the key path ("overrides[1].params.density: 1.5 is
 * outside [0, 1]"). 0 or LM_EFORMAT. */
int merge_plan_init(struct merge_plan *plan, const struct recipe *r);

/* Checks the recipe against the model it is applied to (plan->n_layers set,
 * `names`/`infos` the n tensors): every override's layer ranges lie within
 * the model's layers, each of its module filters matches a tensor in those
 * layers, and it selects at least one tensor; no gradient has more points
 * than the model has layers. A recipe written for another model fails here
 * instead of merging as if the override were not there. 0 or LM_EFORMAT
 * naming the override by index and its key. */
int merge_plan_check_selection(const struct merge_plan *plan, const char *const *names,
                               const struct tn_info *infos, size_t n);

/* The parameters for one tensor. */
void merge_plan_resolve(const struct merge_plan *plan, const char *name,
                        const struct tn_info *info, struct merge_tensor_params *out);

/* Whether override `o` applies to this tensor. */
bool merge_plan_override_matches(const struct recipe_override *o, const char *name,
                                 const struct tn_info *info);

/* The value of a gradient of n evenly spaced points at t in [0, 1], as
 * mergekit computes it: (1 - f) v[i] + f v[i + 1] with i = int(t (n - 1)),
 * f = t (n - 1) - i. */
double merge_plan_interp(const double *v, size_t n, double t);

#endif
