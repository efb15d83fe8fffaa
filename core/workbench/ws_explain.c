/* Per-tensor explanations; see ws_explain.h. */
#include "ws_explain.h"

#include "calib.h"
#include "merge_plan.h"

bool ws_override_matches_tensor(const struct workspace *ws, size_t o, size_t i)
{
    const struct recipe *r = ws_recipe(ws);
    if (o >= r->n_overrides || i >= ws_n_tensors(ws))
        return false;
    const struct ws_tensor *t = ws_tensor(ws, i);
    return merge_plan_override_matches(&r->overrides[o], t->name, &t->info);
}

int ws_tensor_sens_scale(const struct workspace *ws, size_t i, double *scale)
{
    if (!(ws_method(ws)->needs & MERGE_NEEDS_SENSITIVITY) || i >= ws_n_tensors(ws))
        return 0;
    const struct calib_sensitivity *s = ws_calib_sensitivity(ws);
    if (!s)
        return 0;
    const struct ws_tensor *t = ws_tensor(ws, i);
    struct merge_tensor_params p;
    ws_tensor_params(ws, i, &p);
    calib_sens_scale(s, t->info.layer, p.alpha, p.temperature, scale);
    return s->n_models;
}
