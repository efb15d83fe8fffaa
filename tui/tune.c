/* Recipe edits for the tuning screens; see tune.h for the rules. */
#include "tune.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lm_error.h"
#include "numfmt.h"

/* ===== Parameter lists ===== */

static void param_deinit(struct recipe_param *p)
{
    free(p->name);
    recipe_value_deinit(&p->value);
}

static void param_remove_at(struct recipe_param *ps, size_t *n, size_t i)
{
    param_deinit(&ps[i]);
    memmove(&ps[i], &ps[i + 1], (*n - i - 1) * sizeof(*ps));
    (*n)--;
}

/* Removes `name` (for `model` only when it is a per-model value and model
 * is given; a value for all models is kept then). */
static void param_remove(struct recipe_param *ps, size_t *n, const char *name, const char *model)
{
    for (size_t i = 0; i < *n; i++) {
        if (strcmp(ps[i].name, name) != 0)
            continue;
        struct recipe_value *v = &ps[i].value;
        if (!model) {
            param_remove_at(ps, n, i);
            return;
        }
        if (v->kind != RECIPE_VALUE_PER_MODEL)
            return;
        for (size_t k = 0; k < v->n_per_model; k++) {
            if (strcmp(v->per_model[k].model, model) != 0)
                continue;
            free(v->per_model[k].model);
            free(v->per_model[k].numbers);
            memmove(&v->per_model[k], &v->per_model[k + 1],
                    (v->n_per_model - k - 1) * sizeof(*v->per_model));
            v->n_per_model--;
            break;
        }
        if (v->n_per_model == 0)
            param_remove_at(ps, n, i);
        return;
    }
}

static void override_deinit(struct recipe_override *o)
{
    free(o->layers);
    for (size_t i = 0; i < o->n_modules; i++)
        free(o->modules[i]);
    free(o->modules);
    for (size_t i = 0; i < o->n_params; i++)
        param_deinit(&o->params[i]);
    free(o->params);
    memset(o, 0, sizeof(*o));
}

int tune_remove_override(struct recipe *r, size_t index)
{
    if (index >= r->n_overrides)
        return lm_err(LM_EINVAL, "no override %zu (the recipe has %zu)", index, r->n_overrides);
    override_deinit(&r->overrides[index]);
    memmove(&r->overrides[index], &r->overrides[index + 1],
            (r->n_overrides - index - 1) * sizeof(*r->overrides));
    r->n_overrides--;
    return 0;
}

bool tune_override_has_layer(const struct recipe_override *o, int layer)
{
    if (o->all_layers)
        return false;
    for (size_t i = 0; i < o->n_layers; i++)
        if (layer >= o->layers[i].first && layer <= o->layers[i].last)
            return true;
    return false;
}

/* ===== Method and global values ===== */

static bool method_takes_name(const struct merge_method *m, const char *name)
{
    const struct merge_param_spec *s = merge_param_find(name);
    return s && merge_method_accepts(m, s->id);
}

int tune_set_method(struct recipe *r, const char *method)
{
    const struct merge_method *m = merge_method_find(method);
    if (!m)
        return lm_err(LM_EINVAL, "unknown method '%s'", method);
    char *name = lm_strdup(method);
    if (!name)
        return LM_ENOMEM;
    free(r->method);
    r->method = name;
    for (size_t i = r->n_params; i-- > 0;)
        if (!method_takes_name(m, r->params[i].name))
            param_remove_at(r->params, &r->n_params, i);
    for (size_t k = 0; k < r->n_models; k++) {
        struct recipe_model *md = &r->models[k];
        for (size_t i = md->n_params; i-- > 0;)
            if (!method_takes_name(m, md->params[i].name))
                param_remove_at(md->params, &md->n_params, i);
    }
    for (size_t o = r->n_overrides; o-- > 0;) {
        struct recipe_override *ov = &r->overrides[o];
        for (size_t i = ov->n_params; i-- > 0;)
            if (!method_takes_name(m, ov->params[i].name))
                param_remove_at(ov->params, &ov->n_params, i);
        if (ov->n_params == 0)
            tune_remove_override(r, o);
    }
    return 0;
}

bool tune_method_fits(const struct merge_method *m, const struct recipe *r)
{
    int n = (int)r->n_models;
    return n >= m->min_models && n <= m->max_models && (r->base || m->base_optional);
}

int tune_fit_method(struct recipe *r, char *was, size_t was_size)
{
    was[0] = '\0';
    const struct merge_method *cur = r->method ? merge_method_find(r->method) : NULL;
    if (cur && tune_method_fits(cur, r))
        return 0;
    for (const struct merge_method *const *m = merge_methods; *m; m++) {
        if (!tune_method_fits(*m, r) || (*m)->needs || (*m)->stacks)
            continue;
        snprintf(was, was_size, "%s", r->method ? r->method : "");
        return tune_set_method(r, (*m)->name);
    }
    return lm_err(LM_EINVAL, "no method takes %zu model%s%s", r->n_models, r->n_models == 1 ? "" : "s",
                  r->base ? "" : " without a base");
}

int tune_parse_slice(const char *text, char *model, size_t model_size, int *start, int *end)
{
    static const char form[] = "expected MODEL START END (layers START to END - 1), e.g. \"base 0 4\"";
    while (*text == ' ')
        text++;
    size_t len = strcspn(text, " \t");
    if (len == 0 || len >= model_size)
        return lm_err(LM_EINVAL, "%s", form);
    memcpy(model, text, len);
    model[len] = '\0';
    /* Two runs of digits, separated by anything of " ,:-[]()". */
    long v[2];
    int n = 0;
    for (const char *p = text + len; *p;) {
        if (*p >= '0' && *p <= '9') {
            if (n == 2)
                return lm_err(LM_EINVAL, "%s", form);
            char *e;
            v[n++] = strtol(p, &e, 10);
            if (v[n - 1] > 1000000)
                return lm_err(LM_EINVAL, "layer %ld: at most 1000000", v[n - 1]);
            p = e;
        } else if (*p == '-' && p[1] >= '0' && p[1] <= '9' && !(p[-1] >= '0' && p[-1] <= '9')) {
            return lm_err(LM_EINVAL, "layers are counted from 0: no negative layer (%s)", form);
        } else if (strchr(" \t,:-[]()", *p)) {
            p++;
        } else {
            return lm_err(LM_EINVAL, "%s", form);
        }
    }
    if (n != 2)
        return lm_err(LM_EINVAL, "%s", form);
    *start = (int)v[0];
    *end = (int)v[1];
    return 0;
}

static struct recipe_model *find_model(struct recipe *r, const char *name)
{
    for (size_t i = 0; i < r->n_models; i++)
        if (strcmp(r->models[i].name, name) == 0)
            return &r->models[i];
    return NULL;
}

int tune_set_global(struct recipe *r, const char *param, const char *model, double v)
{
    if (!model)
        return recipe_set_number(&r->params, &r->n_params, param, v);
    struct recipe_model *m = find_model(r, model);
    if (!m)
        return lm_err(LM_EINVAL, "no model named '%s'", model);
    return recipe_set_number(&m->params, &m->n_params, param, v);
}

int tune_set_global_bool(struct recipe *r, const char *param, bool v)
{
    return recipe_set_bool(&r->params, &r->n_params, param, v);
}

/* ===== Per-layer values ===== */

static int set_numbers(struct recipe_value *v, const char *model, const double *nums, size_t n)
{
    memset(v, 0, sizeof(*v));
    double *copy = lm_malloc_array(n, sizeof(double));
    if (!copy)
        return LM_ENOMEM;
    memcpy(copy, nums, n * sizeof(double));
    if (!model) {
        v->kind = n == 1 ? RECIPE_VALUE_NUMBER : RECIPE_VALUE_LIST;
        v->numbers = copy;
        v->n_numbers = n;
        return 0;
    }
    v->kind = RECIPE_VALUE_PER_MODEL;
    v->per_model = lm_calloc(1, sizeof(*v->per_model));
    char *name = lm_strdup(model);
    if (!v->per_model || !name) {
        free(copy);
        free(name);
        free(v->per_model);
        v->per_model = NULL;
        return LM_ENOMEM;
    }
    v->per_model[0] = (struct recipe_model_value){ name, copy, n };
    v->n_per_model = 1;
    return 0;
}

/* Sets param `name` in a parameter list to a value (replacing it). */
static int list_set(struct recipe_param **ps, size_t *n, const char *name, const char *model,
                    const double *nums, size_t n_nums)
{
    param_remove(*ps, n, name, NULL);
    struct recipe_param *grown = lm_realloc_array(*ps, *n + 1, sizeof(**ps));
    if (!grown)
        return LM_ENOMEM;
    *ps = grown;
    struct recipe_param *p = &grown[*n];
    if (!(p->name = lm_strdup(name)))
        return LM_ENOMEM;
    int rc = set_numbers(&p->value, model, nums, n_nums);
    if (rc) {
        free(p->name);
        return rc;
    }
    (*n)++;
    return 0;
}

static bool modules_equal(const struct recipe_override *o, const char *module)
{
    if (!module)
        return o->n_modules == 0;
    return o->n_modules == 1 && strcmp(o->modules[0], module) == 0;
}

/* True when every layer `o` names lies in first..last. */
static bool layers_within(const struct recipe_override *o, int first, int last)
{
    if (o->all_layers || o->n_layers == 0)
        return false;
    for (size_t i = 0; i < o->n_layers; i++)
        if (o->layers[i].first < first || o->layers[i].last > last)
            return false;
    return true;
}

/* Drops the target's parameter from earlier overrides the new value covers. */
static void remove_covered(struct recipe *r, int first, int last, const struct tune_target *t)
{
    for (size_t o = r->n_overrides; o-- > 0;) {
        struct recipe_override *ov = &r->overrides[o];
        if (!layers_within(ov, first, last) || !(t->module == NULL || modules_equal(ov, t->module)))
            continue;
        param_remove(ov->params, &ov->n_params, t->param, t->model);
        if (ov->n_params == 0)
            tune_remove_override(r, o);
    }
}

static int append_override(struct recipe *r, int first, int last, const struct tune_target *t, double v)
{
    struct recipe_override *grown = lm_realloc_array(r->overrides, r->n_overrides + 1, sizeof(*grown));
    if (!grown)
        return LM_ENOMEM;
    r->overrides = grown;
    struct recipe_override *o = &grown[r->n_overrides];
    memset(o, 0, sizeof(*o));
    int rc = 0;
    o->layers = lm_calloc(1, sizeof(*o->layers));
    if (!o->layers)
        rc = LM_ENOMEM;
    else {
        o->layers[0] = (struct recipe_layer_range){ first, last };
        o->n_layers = 1;
    }
    if (!rc && t->module) {
        o->modules = lm_calloc(1, sizeof(char *));
        if (!o->modules || !(o->modules[0] = lm_strdup(t->module)))
            rc = LM_ENOMEM;
        else
            o->n_modules = 1;
    }
    if (!rc)
        rc = list_set(&o->params, &o->n_params, t->param, t->model, &v, 1);
    if (rc) {
        override_deinit(o);
        return rc;
    }
    r->n_overrides++;
    return 0;
}

int tune_set_layers(struct recipe *r, int first, int last, int n_layers,
                    const struct tune_target *t, double v0, double v1)
{
    if (first < 0 || last < first || last >= n_layers)
        return lm_err(LM_EINVAL, "layers %d-%d outside 0-%d", first, last, n_layers - 1);
    if (t->model && !find_model(r, t->model))
        return lm_err(LM_EINVAL, "no model named '%s'", t->model);
    remove_covered(r, first, last, t);
    if (v0 == v1)
        return append_override(r, first, last, t, v0);
    if (first == 0 && last == n_layers - 1 && !t->module && n_layers > 1) {
        double nums[2] = { v0, v1 };
        if (!t->model)
            return list_set(&r->params, &r->n_params, t->param, NULL, nums, 2);
        struct recipe_model *m = find_model(r, t->model);
        return list_set(&m->params, &m->n_params, t->param, NULL, nums, 2);
    }
    for (int l = first; l <= last; l++) {
        double v = last == first ? v0 : v0 + (v1 - v0) * (double)(l - first) / (double)(last - first);
        v = lm_round_decimals(v, 12);   /* 0.2 .. 0.8 gives 0.6, not 0.6000000000000001 */
        int rc = append_override(r, l, l, t, v);
        if (rc)
            return rc;
    }
    return 0;
}

double tune_param_value(const struct merge_tensor_params *p, enum merge_param_id id, int model)
{
    int m = model < 0 ? 0 : model;
    switch (id) {
    case MERGE_PARAM_WEIGHT: return p->weight[m];
    case MERGE_PARAM_DENSITY: return p->density[m];
    case MERGE_PARAM_LAMBDA: return p->lambda;
    case MERGE_PARAM_NORMALIZE: return p->normalize ? 1 : 0;
    case MERGE_PARAM_T: return p->t;
    case MERGE_PARAM_GAMMA: return p->gamma;
    case MERGE_PARAM_EPSILON: return p->epsilon;
    case MERGE_PARAM_SEED: return (double)p->seed;
    case MERGE_PARAM_RESCALE: return p->rescale;
    case MERGE_PARAM_ON: return p->on;
    case MERGE_PARAM_MU: return p->mu;
    case MERGE_PARAM_ITERATIONS: return p->iterations;
    case MERGE_PARAM_RANK: return p->rank;
    case MERGE_PARAM_ENERGY: return p->energy;
    case MERGE_PARAM_OMEGA: return p->omega;
    case MERGE_PARAM_ALPHA: return p->alpha;
    case MERGE_PARAM_TEMPERATURE: return p->temperature;
    case MERGE_PARAM_IMPORTANCE: return p->importance;
    case MERGE_PARAM_SELECT_TOPK: return p->select_topk;
    case MERGE_PARAM_MAX_ITER: return p->max_iter;
    case MERGE_PARAM_TOL: return p->tol;
    case MERGE_PARAM_ROW_WISE: return p->row_wise ? 1 : 0;
    case MERGE_PARAM_FLATTEN: return p->flatten ? 1 : 0;
    case MERGE_PARAM_NORMALIZE_WEIGHTS: return p->normalize_weights ? 1 : 0;
    case MERGE_PARAM_EPS: return p->eps;
    case MERGE_PARAM_R: return p->r;
    case MERGE_PARAM_COUNT: break;
    }
    return 0;
}

double tune_step_value(const struct merge_param_spec *s, double current, int dir)
{
    double step = tune_param_step(s);
    double v = lm_round_decimals(current + dir * step, lm_decimals_of(step));
    return v < s->min ? s->min : v > s->max ? s->max : v;
}

double tune_param_step(const struct merge_param_spec *s)
{
    if (s->kind == MERGE_PARAM_KIND_INT)
        return 1;
    if (s->max - s->min <= 1.0)
        return 0.05;
    return 0.1;
}

void tune_clear_layers(struct recipe *r, int first, int last, const struct tune_target *t)
{
    remove_covered(r, first, last, t);
}
