#include "merge_plan.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "lm_error.h"

double merge_plan_interp(const double *v, size_t n, double t)
{
    /* mergekit's evaluate_setting (config.py), operation for operation so
     * that the value is the same double: scaled = t (n - 1), i0 =
     * int(scaled), i1 = min(n - 1, i0 + 1), frac = scaled - i0, then
     * (1 - frac) v[i0] + frac v[i1]. Python's int() truncates toward
     * zero; t is never negative here, but clamp for safety. */
    if (n == 1 || !(t > 0.0))
        return v[0];
    double scaled = t * (double)(n - 1);
    if (scaled >= (double)(n - 1))
        scaled = (double)(n - 1);
    size_t i0 = (size_t)scaled;
    size_t i1 = i0 + 1 < n ? i0 + 1 : n - 1;
    double frac = scaled - (double)i0;
    return (1.0 - frac) * v[i0] + frac * v[i1];
}

/* Lists the parameter names `m` takes, for error messages. */
static void list_params(const struct merge_method *m, char *buf, size_t size)
{
    size_t used = 0;
    buf[0] = '\0';
    for (const enum merge_param_id *id = m->params; *id != MERGE_PARAM_COUNT; id++) {
        int w = snprintf(buf + used, size - used, "%s%s", used ? ", " : "", merge_param_specs[*id].name);
        if (w < 0 || (size_t)w >= size - used)
            break;
        used += (size_t)w;
    }
    if (!used)
        snprintf(buf, size, "no parameters");
}

static int check_number(const char *path, const struct merge_param_spec *s, double v)
{
    if (!isfinite(v))
        return lm_err(LM_EFORMAT, "%s: must be a finite number", path);
    if (v < s->min || v > s->max)
        return lm_err(LM_EFORMAT, "%s: %g is outside [%g, %g]", path, v, s->min, s->max);
    if (s->kind == MERGE_PARAM_KIND_INT && v != floor(v))
        return lm_err(LM_EFORMAT, "%s: %g must be a whole number", path, v);
    return 0;
}

static int check_numbers(const char *path, const struct merge_param_spec *s,
                         const double *v, size_t n)
{
    if (n > 1 && s->kind != MERGE_PARAM_KIND_NUMBER)
        return lm_err(LM_EFORMAT, "%s: '%s' cannot be a gradient list", path, s->name);
    for (size_t i = 0; i < n; i++) {
        int rc = check_number(path, s, v[i]);
        if (rc)
            return rc;
    }
    return 0;
}

/* Validates one parameter at `path`; `in_model` = inside a model entry,
 * `per_model_ok` = PER_MODEL values allowed (overrides). */
static int check_param(const struct merge_plan *plan, const char *path,
                       const struct recipe_param *p, bool in_model, bool per_model_ok)
{
    const struct merge_param_spec *s = merge_param_find(p->name);
    char names[256];
    list_params(plan->method, names, sizeof(names));
    if (!s)
        return lm_err(LM_EFORMAT, "%s: unknown parameter '%s' (method '%s' takes %s)",
                      path, p->name, plan->method->name, names);
    /* A seed is harmless where nothing is random, and keeping it lets one
     * recipe switch between ties and dare_ties without editing. */
    if (!merge_method_accepts(plan->method, s->id) && s->id != MERGE_PARAM_SEED)
        return lm_err(LM_EFORMAT, "%s: method '%s' does not take '%s' (it takes %s)",
                      path, plan->method->name, p->name, names);
    if (in_model && !s->per_model)
        return lm_err(LM_EFORMAT, "%s: '%s' cannot be set per model", path, p->name);

    const struct recipe_value *v = &p->value;
    switch (v->kind) {
    case RECIPE_VALUE_NUMBER:
    case RECIPE_VALUE_LIST:
        if (s->kind == MERGE_PARAM_KIND_BOOL || s->kind == MERGE_PARAM_KIND_CHOICE)
            break;
        return check_numbers(path, s, v->numbers, v->n_numbers);
    case RECIPE_VALUE_BOOL:
        if (s->kind == MERGE_PARAM_KIND_BOOL)
            return 0;
        break;
    case RECIPE_VALUE_STRING:
        if (s->kind == MERGE_PARAM_KIND_CHOICE) {
            for (const char *const *c = s->choices; c && *c; c++)
                if (strcmp(*c, v->string) == 0)
                    return 0;
            return lm_err(LM_EFORMAT, "%s: \"%s\" is not a valid value for '%s'",
                          path, v->string, p->name);
        }
        break;
    case RECIPE_VALUE_PER_MODEL:
        if (!per_model_ok || !s->per_model)
            return lm_err(LM_EFORMAT, "%s: '%s' cannot be given per model here", path, p->name);
        for (size_t i = 0; i < v->n_per_model; i++) {
            char sub[512];
            snprintf(sub, sizeof(sub), "%s.%s", path, v->per_model[i].model);
            if (!recipe_find_model(plan->recipe, v->per_model[i].model))
                return lm_err(LM_EFORMAT, "%s: no model named '%s'", sub, v->per_model[i].model);
            int rc = check_numbers(sub, s, v->per_model[i].numbers, v->per_model[i].n_numbers);
            if (rc)
                return rc;
        }
        return 0;
    }
    static const char *const kind_words[] = {
        [MERGE_PARAM_KIND_NUMBER] = "a number or a list of numbers",
        [MERGE_PARAM_KIND_BOOL] = "true or false",
        [MERGE_PARAM_KIND_INT] = "a whole number",
        [MERGE_PARAM_KIND_CHOICE] = "a string",
    };
    return lm_err(LM_EFORMAT, "%s: '%s' must be %s", path, p->name, kind_words[s->kind]);
}

int merge_plan_init(struct merge_plan *plan, const struct recipe *r)
{
    memset(plan, 0, sizeof(*plan));
    plan->recipe = r;
    plan->n_models = (int)r->n_models;
    const char *label = r->source_path ? r->source_path : "recipe";
    if (!r->method)
        return lm_err(LM_EFORMAT, "%s: method: missing", label);
    plan->method = merge_method_find(r->method);
    if (!plan->method) {
        char names[256] = "";
        size_t used = 0;
        for (const struct merge_method *const *m = merge_methods; *m; m++) {
            int w = snprintf(names + used, sizeof(names) - used, "%s%s", used ? ", " : "", (*m)->name);
            if (w > 0 && (size_t)w < sizeof(names) - used)
                used += (size_t)w;
        }
        return lm_err(LM_EFORMAT, "%s: method: unknown method '%s' (known: %s)", label, r->method, names);
    }
    const struct merge_method *m = plan->method;
    if (!r->base && !m->base_optional) {
        char names[128];
        merge_base_optional_names(names, sizeof(names));
        return lm_err(LM_EFORMAT, "%s: base: missing: method '%s' takes task vectors against a base "
                      "model (only %s merge without one)", label, m->name, names);
    }
    if (!r->base && r->n_models == 0)
        return lm_err(LM_EFORMAT, "%s: models: no base and no model to merge", label);
    if (r->n_models > MERGE_MAX_MODELS)
        return lm_err(LM_EFORMAT, "%s: models: %zu models, at most %d supported",
                      label, r->n_models, MERGE_MAX_MODELS);
    if ((int)r->n_models < m->min_models || (int)r->n_models > m->max_models) {
        if (m->min_models == m->max_models)
            return lm_err(LM_EFORMAT, "%s: models: method '%s' needs exactly %d model(s) besides the base, got %zu",
                          label, m->name, m->min_models, r->n_models);
        return lm_err(LM_EFORMAT, "%s: models: method '%s' needs at least %d model(s), got %zu",
                      label, m->name, m->min_models, r->n_models);
    }

    if (r->n_slices > 0 && !m->stacks)
        return lm_err(LM_EFORMAT, "%s: slices: method '%s' does not stack layers; slices take the "
                      "method passthrough (merging several sources per slice is not supported)",
                      label, m->name);
    if (m->stacks && r->n_slices == 0 && r->n_models != 1)
        return lm_err(LM_EFORMAT, "%s: method '%s' without slices copies one model: needs exactly 1 "
                      "model besides the base, got %zu", label, m->name, r->n_models);
    for (size_t i = 0; m->stacks && i < r->n_slices; i++)
        if (r->slices[i].n_sources != 1)
            return lm_err(LM_EFORMAT, "%s: slices[%zu].sources: method '%s' takes exactly one source "
                          "per slice, got %zu", label, i, m->name, r->slices[i].n_sources);
    char path[512];
    for (size_t i = 0; i < r->n_params; i++) {
        snprintf(path, sizeof(path), "%s: params.%s", label, r->params[i].name);
        int rc = check_param(plan, path, &r->params[i], false, false);
        if (rc)
            return rc;
    }
    for (size_t mi = 0; mi < r->n_models; mi++) {
        const struct recipe_model *model = &r->models[mi];
        for (size_t i = 0; i < model->n_params; i++) {
            snprintf(path, sizeof(path), "%s: models[%zu].%s", label, mi, model->params[i].name);
            int rc = check_param(plan, path, &model->params[i], true, false);
            if (rc)
                return rc;
        }
    }
    for (size_t oi = 0; oi < r->n_overrides; oi++) {
        const struct recipe_override *o = &r->overrides[oi];
        for (size_t i = 0; i < o->n_params; i++) {
            snprintf(path, sizeof(path), "%s: overrides[%zu].params.%s", label, oi, o->params[i].name);
            int rc = check_param(plan, path, &o->params[i], false, true);
            if (rc)
                return rc;
        }
    }
    return 0;
}

/* Whether `layer` lies in one of o's layer ranges (any, for all_layers). */
static bool in_layers(const struct recipe_override *o, int layer)
{
    if (o->all_layers)
        return true;
    for (size_t i = 0; i < o->n_layers; i++)
        if (layer >= o->layers[i].first && layer <= o->layers[i].last)
            return true;
    return false;
}

bool merge_plan_override_matches(const struct recipe_override *o, const char *name,
                                 const struct tn_info *info)
{
    if (!in_layers(o, info->layer))
        return false;
    if (o->n_modules == 0)
        return true;
    for (size_t i = 0; i < o->n_modules; i++)
        if (tn_match_module(name, info, o->modules[i]))
            return true;
    return false;
}

/* A gradient of more points than layers, in the value at `path`. */
static int check_gradient(const struct merge_plan *plan, const char *path, const struct recipe_value *v)
{
    size_t worst = v->kind == RECIPE_VALUE_LIST ? v->n_numbers : 0;
    for (size_t i = 0; v->kind == RECIPE_VALUE_PER_MODEL && i < v->n_per_model; i++)
        if (v->per_model[i].n_numbers > worst)
            worst = v->per_model[i].n_numbers;
    if (worst >= 2 && plan->n_layers > 0 && worst > (size_t)plan->n_layers)
        return lm_err(LM_EFORMAT, "%s: a gradient of %zu points is longer than the model's %d layers",
                      path, worst, plan->n_layers);
    return 0;
}

static int check_gradients(const struct merge_plan *plan, const char *label, const char *prefix,
                           const struct recipe_param *params, size_t n)
{
    char path[512];
    for (size_t i = 0; i < n; i++) {
        snprintf(path, sizeof(path), "%s: %s%s", label, prefix, params[i].name);
        int rc = check_gradient(plan, path, &params[i].value);
        if (rc)
            return rc;
    }
    return 0;
}

int merge_plan_check_selection(const struct merge_plan *plan, const char *const *names,
                               const struct tn_info *infos, size_t n)
{
    const struct recipe *r = plan->recipe;
    const char *label = r->source_path ? r->source_path : "recipe";
    const int nl = plan->n_layers;
    char prefix[64];
    int rc = check_gradients(plan, label, "params.", r->params, r->n_params);
    for (size_t mi = 0; !rc && mi < r->n_models; mi++) {
        snprintf(prefix, sizeof(prefix), "models[%zu].", mi);
        rc = check_gradients(plan, label, prefix, r->models[mi].params, r->models[mi].n_params);
    }
    for (size_t oi = 0; !rc && oi < r->n_overrides; oi++) {
        const struct recipe_override *o = &r->overrides[oi];
        snprintf(prefix, sizeof(prefix), "overrides[%zu].params.", oi);
        if ((rc = check_gradients(plan, label, prefix, o->params, o->n_params)))
            break;
        for (size_t li = 0; !o->all_layers && li < o->n_layers; li++) {
            const struct recipe_layer_range *lr = &o->layers[li];
            if (lr->first < 0 || lr->last >= nl) {
                char range[48];
                if (lr->first == lr->last)
                    snprintf(range, sizeof(range), "%d", lr->first);
                else
                    snprintf(range, sizeof(range), "%d-%d", lr->first, lr->last);
                if (nl > 0)
                    return lm_err(LM_EFORMAT, "%s: overrides[%zu].layers: %s reaches beyond the model's "
                                  "%d layers (0-%d)", label, oi, range, nl, nl - 1);
                return lm_err(LM_EFORMAT, "%s: overrides[%zu].layers: %s, but the model has no "
                              "numbered layers", label, oi, range);
            }
        }
        size_t selected = 0;
        for (size_t t = 0; t < n; t++)
            selected += merge_plan_override_matches(o, names[t], &infos[t]);
        for (size_t mi = 0; mi < o->n_modules; mi++) {
            bool any = false;
            for (size_t t = 0; t < n && !any; t++)
                any = in_layers(o, infos[t].layer) && tn_match_module(names[t], &infos[t], o->modules[mi]);
            if (!any)
                return lm_err(LM_EFORMAT, "%s: overrides[%zu].modules: \"%s\" matches no tensor%s "
                              "(modules are self_attn, mlp, a projection such as q_proj or down_proj, "
                              "norm, embed, lm_head, or part of a tensor name)",
                              label, oi, o->modules[mi], o->all_layers ? "" : " in its layers");
        }
        if (selected == 0)
            return lm_err(LM_EFORMAT, "%s: overrides[%zu] selects no tensor: its layers and modules "
                          "have nothing in common", label, oi);
    }
    return rc;
}

static double value_number(const double *v, size_t n, double t)
{
    return merge_plan_interp(v, n, t);
}

/* Writes one parameter value into `out` for model `model` (-1 = all). */
static void apply_number(struct merge_tensor_params *out, enum merge_param_id id, int model, double x)
{
    switch (id) {
    case MERGE_PARAM_WEIGHT:
    case MERGE_PARAM_DENSITY:
        for (int i = 0; i < out->n_models; i++) {
            if (model >= 0 && i != model)
                continue;
            if (id == MERGE_PARAM_WEIGHT)
                out->weight[i] = x;
            else
                out->density[i] = x;
        }
        break;
    case MERGE_PARAM_LAMBDA:    out->lambda = x; break;
    case MERGE_PARAM_NORMALIZE: out->normalize = x != 0; break;
    case MERGE_PARAM_T:         out->t = x; break;
    case MERGE_PARAM_GAMMA:     out->gamma = x; break;
    case MERGE_PARAM_EPSILON:   out->epsilon = x; break;
    case MERGE_PARAM_SEED:      out->seed = (uint64_t)x; break;
    case MERGE_PARAM_RESCALE:   out->rescale = (int)x; break;
    case MERGE_PARAM_ON:          out->on = (int)x; break;
    case MERGE_PARAM_MU:          out->mu = x; break;
    case MERGE_PARAM_ITERATIONS:  out->iterations = (int)x; break;
    case MERGE_PARAM_RANK:        out->rank = (int)x; break;
    case MERGE_PARAM_ENERGY:      out->energy = x; break;
    case MERGE_PARAM_OMEGA:       out->omega = x; break;
    case MERGE_PARAM_ALPHA:       out->alpha = x; break;
    case MERGE_PARAM_TEMPERATURE: out->temperature = x; break;
    case MERGE_PARAM_IMPORTANCE:  out->importance = (int)x; break;
    case MERGE_PARAM_SELECT_TOPK: out->select_topk = x; break;
    case MERGE_PARAM_MAX_ITER:    out->max_iter = (int)x; break;
    case MERGE_PARAM_TOL:         out->tol = x; break;
    case MERGE_PARAM_ROW_WISE:    out->row_wise = x != 0; break;
    case MERGE_PARAM_FLATTEN:     out->flatten = x != 0; break;
    case MERGE_PARAM_NORMALIZE_WEIGHTS: out->normalize_weights = x != 0; break;
    case MERGE_PARAM_EPS:         out->eps = x; break;
    case MERGE_PARAM_R:           out->r = x; break;
    case MERGE_PARAM_COUNT:     break;
    }
}

static int model_index(const struct recipe *r, const char *name)
{
    for (size_t i = 0; i < r->n_models; i++)
        if (strcmp(r->models[i].name, name) == 0)
            return (int)i;
    return -1;
}

static void apply_param(const struct recipe *r, struct merge_tensor_params *out,
                        const struct recipe_param *p, int model, double t)
{
    const struct merge_param_spec *s = merge_param_find(p->name);
    if (!s)
        return; /* merge_plan_init rejected it already */
    const struct recipe_value *v = &p->value;
    switch (v->kind) {
    case RECIPE_VALUE_NUMBER:
    case RECIPE_VALUE_LIST:
        apply_number(out, s->id, model, value_number(v->numbers, v->n_numbers, t));
        break;
    case RECIPE_VALUE_BOOL:
        apply_number(out, s->id, model, v->boolean ? 1.0 : 0.0);
        break;
    case RECIPE_VALUE_STRING:
        for (int c = 0; s->choices && s->choices[c]; c++)
            if (strcmp(s->choices[c], v->string) == 0)
                apply_number(out, s->id, model, (double)c);
        break;
    case RECIPE_VALUE_PER_MODEL:
        for (size_t i = 0; i < v->n_per_model; i++) {
            int mi = model_index(r, v->per_model[i].model);
            if (mi >= 0)
                apply_number(out, s->id, mi,
                             value_number(v->per_model[i].numbers, v->per_model[i].n_numbers, t));
        }
        break;
    }
}

/* One resolution pass; `inner` (may be NULL) is a wrapped method whose
 * defaults apply after the method's own. */
static void resolve_with(const struct merge_plan *plan, const struct merge_method *inner,
                         const char *name, const struct tn_info *info,
                         struct merge_tensor_params *out)
{
    const struct recipe *r = plan->recipe;
    merge_tensor_params_default(out, plan->n_models);
    if (plan->method->set_defaults)
        plan->method->set_defaults(out);
    if (inner && inner->set_defaults)
        inner->set_defaults(out);

    /* As mergekit's planner (plan.py, plan_module) does it: layer l of L
     * sits at t = l / (L - 1), and at t = 1 when the model has one layer;
     * every tensor outside the layer stack (embeddings before it, the
     * final norm and lm_head after it) is read at t = 0. */
    double t = 0.0;
    if (info->layer >= 0)
        t = plan->n_layers > 1 ? (double)info->layer / (double)(plan->n_layers - 1) : 1.0;

    for (size_t i = 0; i < r->n_params; i++)
        apply_param(r, out, &r->params[i], -1, t);
    for (size_t mi = 0; mi < r->n_models; mi++)
        for (size_t i = 0; i < r->models[mi].n_params; i++)
            apply_param(r, out, &r->models[mi].params[i], (int)mi, t);
    for (size_t oi = 0; oi < r->n_overrides; oi++) {
        const struct recipe_override *o = &r->overrides[oi];
        if (!merge_plan_override_matches(o, name, info))
            continue;
        for (size_t i = 0; i < o->n_params; i++)
            apply_param(r, out, &o->params[i], -1, t);
    }
}

void merge_plan_resolve(const struct merge_plan *plan, const char *name,
                        const struct tn_info *info, struct merge_tensor_params *out)
{
    resolve_with(plan, NULL, name, info, out);
    /* A wrapping method takes the defaults of the method it builds on (TIES
     * normalizes by default, task arithmetic does not), which is known only
     * once `on` is resolved. */
    if (plan->method->wraps) {
        const struct merge_method *inner = merge_inner_method(out);
        if (inner->set_defaults)
            resolve_with(plan, inner, name, info, out);
    }
}
