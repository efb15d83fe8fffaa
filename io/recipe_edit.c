/* Edits of a recipe's models, base and slices. */
#include "recipe_edit.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lm_error.h"

/* The last component of `path`, without trailing slashes: its start and
 * length. */
static const char *last_component(const char *path, size_t *len)
{
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/')
        n--;
    const char *p = path + n;
    while (p > path && p[-1] != '/')
        p--;
    *len = (size_t)(path + n - p);
    if (*len == 1 && *p == '/')
        *len = 0;
    return p;
}

static bool name_taken(const struct recipe *r, const char *name)
{
    if (name[0] == '\0' || strcmp(name, "base") == 0)
        return true;
    for (size_t j = 0; j < r->n_models; j++)
        if (strcmp(r->models[j].name, name) == 0)
            return true;
    return false;
}

char *recipe_model_name_for(const struct recipe *r, const char *path)
{
    size_t len;
    const char *b = last_component(path, &len);
    char *name = len ? lm_strndup(b, len) : lm_strdup("model");
    for (int suffix = 2; name && name_taken(r, name); suffix++) {
        char *next = lm_asprintf("%.*s-%d", len ? (int)len : 5, len ? b : "model", suffix);
        free(name);
        name = next;
    }
    return name;
}

int recipe_add_model(struct recipe *r, const char *name, const char *path)
{
    if (!path || !*path)
        return lm_err(LM_EINVAL, "models: a model needs a path");
    if (name && name_taken(r, name))
        return lm_err(LM_EINVAL, "models: the name '%s' is %s", name,
                      strcmp(name, "base") == 0 ? "reserved for the base model" : name[0] ? "taken" : "empty");
    struct recipe_model *grown = lm_realloc_array(r->models, r->n_models + 1, sizeof(*r->models));
    if (!grown)
        return LM_ENOMEM;
    r->models = grown;
    struct recipe_model *m = &r->models[r->n_models];
    memset(m, 0, sizeof(*m));
    m->name = name ? lm_strdup(name) : recipe_model_name_for(r, path);
    m->path = lm_strdup(path);
    if (!m->name || !m->path) {
        free(m->name);
        free(m->path);
        return LM_ENOMEM;
    }
    r->n_models++;
    return 0;
}

/* The first slice whose source is `model`, or -1. */
static long slice_naming(const struct recipe *r, const char *model)
{
    for (size_t i = 0; i < r->n_slices; i++)
        for (size_t k = 0; k < r->slices[i].n_sources; k++)
            if (strcmp(r->slices[i].sources[k].model, model) == 0)
                return (long)i;
    return -1;
}

static void drop_param(struct recipe_param *params, size_t *n, size_t i)
{
    free(params[i].name);
    recipe_value_deinit(&params[i].value);
    memmove(&params[i], &params[i + 1], (*n - i - 1) * sizeof(*params));
    (*n)--;
}

/* Drops `model`'s entries from the per-model values in `params`, and the
 * values left with none. */
static void drop_model_entries(struct recipe_param *params, size_t *n, const char *model)
{
    for (size_t i = 0; i < *n;) {
        struct recipe_value *v = &params[i].value;
        if (v->kind == RECIPE_VALUE_PER_MODEL) {
            for (size_t k = 0; k < v->n_per_model;) {
                struct recipe_model_value *e = &v->per_model[k];
                if (strcmp(e->model, model) != 0) {
                    k++;
                    continue;
                }
                free(e->model);
                free(e->numbers);
                memmove(e, e + 1, (v->n_per_model - k - 1) * sizeof(*e));
                v->n_per_model--;
            }
            if (v->n_per_model == 0) {
                drop_param(params, n, i);
                continue;
            }
        }
        i++;
    }
}

static void free_override(struct recipe_override *o)
{
    free(o->layers);
    for (size_t k = 0; k < o->n_modules; k++)
        free(o->modules[k]);
    free(o->modules);
    for (size_t k = 0; k < o->n_params; k++) {
        free(o->params[k].name);
        recipe_value_deinit(&o->params[k].value);
    }
    free(o->params);
}

/* Clears *ref when it names `name`: the output takes its default source. */
static void drop_ref(char **ref, const char *name)
{
    if (*ref && strcmp(*ref, name) == 0) {
        free(*ref);
        *ref = NULL;
    }
}

int recipe_remove_model(struct recipe *r, size_t index)
{
    if (index >= r->n_models)
        return lm_err(LM_EINVAL, "models: no model %zu (the recipe has %zu)", index + 1, r->n_models);
    const char *name = r->models[index].name;
    long s = slice_naming(r, name);
    if (s >= 0)
        return lm_err(LM_EINVAL, "model '%s': slice %ld takes its layers; remove or change that "
                      "slice first", name, s + 1);
    drop_model_entries(r->params, &r->n_params, name);
    for (size_t i = 0; i < r->n_overrides;) {
        struct recipe_override *o = &r->overrides[i];
        bool had = o->n_params > 0;
        drop_model_entries(o->params, &o->n_params, name);
        if (had && o->n_params == 0) {
            free_override(o);
            memmove(o, o + 1, (r->n_overrides - i - 1) * sizeof(*o));
            r->n_overrides--;
            continue;
        }
        i++;
    }
    drop_ref(&r->output.config_from, name);
    drop_ref(&r->output.tokenizer_from, name);
    struct recipe_model *m = &r->models[index];
    free(m->name);
    free(m->path);
    for (size_t k = 0; k < m->n_params; k++) {
        free(m->params[k].name);
        recipe_value_deinit(&m->params[k].value);
    }
    free(m->params);
    memmove(m, m + 1, (r->n_models - index - 1) * sizeof(*m));
    r->n_models--;
    return 0;
}

int recipe_set_model_path(struct recipe *r, int index, const char *path)
{
    if (!path || !*path)
        return lm_err(LM_EINVAL, "%s: a model needs a path", index < 0 ? "base" : "models");
    if (index >= (int)r->n_models)
        return lm_err(LM_EINVAL, "models: no model %d (the recipe has %zu)", index + 1, r->n_models);
    char **slot = index < 0 ? &r->base : &r->models[index].path;
    char *copy = lm_strdup(path);
    if (!copy)
        return LM_ENOMEM;
    free(*slot);
    *slot = copy;
    return 0;
}

int recipe_remove_base(struct recipe *r)
{
    if (!r->base)
        return 0;
    long s = slice_naming(r, "base");
    if (s >= 0)
        return lm_err(LM_EINVAL, "base: slice %ld takes its layers; remove or change that slice first",
                      s + 1);
    drop_ref(&r->output.config_from, "base");
    drop_ref(&r->output.tokenizer_from, "base");
    free(r->base);
    r->base = NULL;
    return 0;
}

/* ===== Slices ===== */

/* Checks one slice source as recipe_parse would, naming it "slices[i]". */
static int check_source(const struct recipe *r, size_t i, const char *model, int start, int end)
{
    bool known = (strcmp(model, "base") == 0 && r->base) || recipe_find_model(r, model);
    if (!known) {
        char names[256] = "";
        size_t used = (size_t)snprintf(names, sizeof(names), "%s", r->base ? "base" : "");
        for (size_t k = 0; k < r->n_models && used < sizeof(names); k++)
            used += (size_t)snprintf(names + used, sizeof(names) - used, "%s%s", used ? ", " : "",
                                     r->models[k].name);
        return lm_err(LM_EINVAL, "slices[%zu].sources[0].model: unknown model '%s' (one of %s)", i,
                      model, names[0] ? names : "no model");
    }
    if (start < 0 || end > 1000000)
        return lm_err(LM_EINVAL, "slices[%zu].sources[0].layers: [%d, %d] is outside [0, 1000000]",
                      i, start, end);
    if (end <= start)
        return lm_err(LM_EINVAL, "slices[%zu].sources[0].layers: [%d, %d] is empty (the end is "
                      "excluded)", i, start, end);
    return 0;
}

static int fill_slice(struct recipe_slice *s, const char *model, int start, int end)
{
    s->sources = lm_calloc(1, sizeof(*s->sources));
    if (!s->sources || !(s->sources[0].model = lm_strdup(model))) {
        free(s->sources);
        s->sources = NULL;
        return LM_ENOMEM;
    }
    s->n_sources = 1;
    s->sources[0].start = start;
    s->sources[0].end = end;
    return 0;
}

static void free_slice(struct recipe_slice *s)
{
    for (size_t k = 0; k < s->n_sources; k++)
        free(s->sources[k].model);
    free(s->sources);
    s->sources = NULL;
    s->n_sources = 0;
}

int recipe_insert_slice(struct recipe *r, size_t at, const char *model, int start, int end)
{
    if (at > r->n_slices)
        return lm_err(LM_EINVAL, "slices: no place %zu (the recipe has %zu slices)", at + 1, r->n_slices);
    int rc = check_source(r, at, model, start, end);
    if (rc)
        return rc;
    struct recipe_slice fresh = { 0 };
    if ((rc = fill_slice(&fresh, model, start, end)))
        return rc;
    struct recipe_slice *grown = lm_realloc_array(r->slices, r->n_slices + 1, sizeof(*r->slices));
    if (!grown) {
        free_slice(&fresh);
        return LM_ENOMEM;
    }
    r->slices = grown;
    memmove(&r->slices[at + 1], &r->slices[at], (r->n_slices - at) * sizeof(*r->slices));
    r->slices[at] = fresh;
    r->n_slices++;
    return 0;
}

int recipe_set_slice(struct recipe *r, size_t i, const char *model, int start, int end)
{
    if (i >= r->n_slices)
        return lm_err(LM_EINVAL, "slices: no slice %zu (the recipe has %zu)", i + 1, r->n_slices);
    int rc = check_source(r, i, model, start, end);
    if (rc)
        return rc;
    struct recipe_slice fresh = { 0 };
    if ((rc = fill_slice(&fresh, model, start, end)))
        return rc;
    free_slice(&r->slices[i]);
    r->slices[i] = fresh;
    return 0;
}

int recipe_remove_slice(struct recipe *r, size_t i)
{
    if (i >= r->n_slices)
        return lm_err(LM_EINVAL, "slices: no slice %zu (the recipe has %zu)", i + 1, r->n_slices);
    free_slice(&r->slices[i]);
    memmove(&r->slices[i], &r->slices[i + 1], (r->n_slices - i - 1) * sizeof(*r->slices));
    if (--r->n_slices == 0) {
        free(r->slices);
        r->slices = NULL;
    }
    return 0;
}

int recipe_move_slice(struct recipe *r, size_t i, int dir)
{
    if (i >= r->n_slices)
        return lm_err(LM_EINVAL, "slices: no slice %zu (the recipe has %zu)", i + 1, r->n_slices);
    if ((dir < 0 && i == 0) || (dir > 0 && i + 1 >= r->n_slices) || dir == 0)
        return lm_err(LM_EINVAL, "slices: slice %zu is already the %s", i + 1, dir < 0 ? "first" : "last");
    size_t j = dir < 0 ? i - 1 : i + 1;
    struct recipe_slice t = r->slices[i];
    r->slices[i] = r->slices[j];
    r->slices[j] = t;
    return 0;
}
