/* The Recipe screen: the method, its global parameters, the base, each
 * model with its own parameters, the slices (layer stacking) and the
 * override list, one field per line. Left/Right step a value (or cycle the
 * method / a choice, or move a slice's end), Enter or = types one (a path
 * for the base and a model, "MODEL START END" for a slice), x deletes an
 * override, a model, the base or a slice, a adds a model, A a slice, K/J
 * move a slice. Every change goes through ui_apply_recipe (undoable); the
 * edits of the sources are in recipe_sources.c. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "app.h"
#include "draw.h"
#include "lm_error.h"
#include "numfmt.h"
#include "recipe_sources.h"
#include "tune.h"
#include "workspace.h"

/* A row of the screen: its kind is the public enum ui_recipe_row. */
struct field {
    enum ui_recipe_row kind;
    const struct merge_param_spec *spec;  /* UI_ROW_PARAM, UI_ROW_MODEL_PARAM */
    int model;          /* UI_ROW_MODEL, UI_ROW_MODEL_PARAM */
    size_t index;       /* UI_ROW_OVERRIDE, UI_ROW_SLICE */
};

static size_t fields(const struct ui_app *a, struct field *out, size_t max)
{
    size_t n = 0;
    const struct merge_method *m = ws_method(a->ws);
    const struct recipe *r = ws_recipe(a->ws);
    /* A wrapping method offers the parameters of the method its global
     * "on" selects. */
    struct merge_tensor_params gp;
    if (ws_n_tensors(a->ws) > 0)
        ws_tensor_params(a->ws, 0, &gp);
    else
        merge_tensor_params_default(&gp, ws_n_models(a->ws));
    if (n < max) out[n] = (struct field){ UI_ROW_METHOD, NULL, -1, 0 };
    n++;
    for (int id = 0; id < MERGE_PARAM_COUNT; id++) {
        if (!merge_method_uses(m, gp.on, (enum merge_param_id)id))
            continue;
        if (n < max) out[n] = (struct field){ UI_ROW_PARAM, &merge_param_specs[id], -1, 0 };
        n++;
    }
    if (n < max) out[n] = (struct field){ UI_ROW_BASE, NULL, -1, 0 };
    n++;
    for (int k = 0; k < ws_n_models(a->ws); k++) {
        if (n < max) out[n] = (struct field){ UI_ROW_MODEL, NULL, k, 0 };
        n++;
        for (int id = 0; id < MERGE_PARAM_COUNT; id++) {
            if (!merge_method_uses(m, gp.on, (enum merge_param_id)id) || !merge_param_specs[id].per_model)
                continue;
            if (n < max) out[n] = (struct field){ UI_ROW_MODEL_PARAM, &merge_param_specs[id], k, 0 };
            n++;
        }
    }
    for (size_t sl = 0; sl < r->n_slices; sl++) {
        if (n < max) out[n] = (struct field){ UI_ROW_SLICE, NULL, -1, sl };
        n++;
    }
    if (r->n_slices == 0 && m->stacks) {
        if (n < max) out[n] = (struct field){ UI_ROW_NO_SLICES, NULL, -1, 0 };
        n++;
    }
    for (size_t o = 0; o < r->n_overrides; o++) {
        if (n < max) out[n] = (struct field){ UI_ROW_OVERRIDE, NULL, -1, o };
        n++;
    }
    return n;
}

size_t screen_recipe_n_fields(const struct ui_app *a)
{
    return fields(a, NULL, 0);
}

#define MAX_FIELDS 512

long screen_recipe_row(const struct ui_app *a, enum ui_recipe_row kind, size_t i)
{
    struct field all[MAX_FIELDS];
    size_t n = fields(a, all, MAX_FIELDS), seen = 0;
    for (size_t k = 0; k < n && k < MAX_FIELDS; k++) {
        if (all[k].kind != kind)
            continue;
        bool match = kind == UI_ROW_MODEL ? (size_t)all[k].model == i
                   : kind == UI_ROW_SLICE || kind == UI_ROW_OVERRIDE ? all[k].index == i
                   : seen++ == i;
        if (match)
            return (long)k;
    }
    return -1;
}

static bool current_field(const struct ui_app *a, struct field *f)
{
    struct field all[MAX_FIELDS];
    size_t n = fields(a, all, MAX_FIELDS);
    if (a->recipe_sel >= n || a->recipe_sel >= MAX_FIELDS)
        return false;
    *f = all[a->recipe_sel];
    return true;
}

static void value_text(const struct recipe_value *v, char *buf, size_t size)
{
    char num[32];
    size_t len = 0;
    buf[0] = '\0';
    switch (v->kind) {
    case RECIPE_VALUE_NUMBER:
        recipe_format_number(v->numbers[0], buf, size);
        break;
    case RECIPE_VALUE_LIST:
        len += (size_t)snprintf(buf, size, "[");
        for (size_t i = 0; i < v->n_numbers && len < size; i++) {
            recipe_format_number(v->numbers[i], num, sizeof(num));
            len += (size_t)snprintf(buf + len, size - len, "%s%s", i ? ", " : "", num);
        }
        if (len < size)
            snprintf(buf + len, size - len, "]");
        break;
    case RECIPE_VALUE_BOOL:
        snprintf(buf, size, "%s", v->boolean ? "true" : "false");
        break;
    case RECIPE_VALUE_STRING:
        snprintf(buf, size, "%s", v->string);
        break;
    case RECIPE_VALUE_PER_MODEL:
        len += (size_t)snprintf(buf, size, "{");
        for (size_t i = 0; i < v->n_per_model && len < size; i++) {
            recipe_format_number(v->per_model[i].numbers[0], num, sizeof(num));
            len += (size_t)snprintf(buf + len, size - len, "%s%s: %s%s", i ? ", " : "", v->per_model[i].model,
                                    num, v->per_model[i].n_numbers > 1 ? ".." : "");
        }
        if (len < size)
            snprintf(buf + len, size - len, "}");
        break;
    }
}

static const struct recipe_param *field_param(const struct ui_app *a, const struct field *f)
{
    const struct recipe *r = ws_recipe(a->ws);
    if (f->kind == UI_ROW_PARAM)
        return recipe_find_param(r->params, r->n_params, f->spec->name);
    if (f->kind == UI_ROW_MODEL_PARAM)
        return recipe_find_param(r->models[f->model].params, r->models[f->model].n_params, f->spec->name);
    return NULL;
}

/* The value in effect when the recipe does not set it. */
static double default_value(const struct ui_app *a, const struct merge_param_spec *s, int model)
{
    struct merge_tensor_params p;
    const struct merge_method *m = ws_method(a->ws);
    merge_tensor_params_default(&p, ws_n_models(a->ws));
    if (m->set_defaults)
        m->set_defaults(&p);
    /* A wrapping method takes the defaults of the method it wraps (as
     * merge_plan does): the "on" in effect decides which. */
    if (m->wraps && s->id != MERGE_PARAM_ON) {
        struct merge_tensor_params cur;
        if (ws_n_tensors(a->ws) > 0)
            ws_tensor_params(a->ws, 0, &cur);
        else
            cur = p;
        p.on = cur.on;
        const struct merge_method *inner = merge_inner_method(&p);
        if (inner->set_defaults)
            inner->set_defaults(&p);
    }
    return tune_param_value(&p, s->id, model);
}

/* Where a field's value comes from outside the overrides, and that value:
 * the model's own entry, the global parameter (a number, a gradient list,
 * or a per-model map), or the method's default. */
enum value_source { SOURCE_DEFAULT, SOURCE_RECIPE, SOURCE_MODEL, SOURCE_GRADIENT };

static enum value_source base_value(const struct ui_app *a, const struct field *f, double *v)
{
    const struct recipe *r = ws_recipe(a->ws);
    const char *model = f->model >= 0 ? ws_model(a->ws, f->model)->name : NULL;
    const struct recipe_param *own = f->kind == UI_ROW_MODEL_PARAM ? field_param(a, f) : NULL;
    if (own && own->value.n_numbers) {
        *v = own->value.numbers[0];
        return own->value.kind == RECIPE_VALUE_LIST ? SOURCE_GRADIENT : SOURCE_MODEL;
    }
    const struct recipe_param *g = recipe_find_param(r->params, r->n_params, f->spec->name);
    if (g && g->value.kind == RECIPE_VALUE_NUMBER) {
        *v = g->value.numbers[0];
        return SOURCE_RECIPE;
    }
    if (g && g->value.kind == RECIPE_VALUE_LIST) {
        *v = g->value.numbers[0];
        return SOURCE_GRADIENT;
    }
    if (g && g->value.kind == RECIPE_VALUE_BOOL && f->spec->kind == MERGE_PARAM_KIND_BOOL) {
        *v = g->value.boolean;
        return SOURCE_RECIPE;
    }
    if (g && g->value.kind == RECIPE_VALUE_STRING && f->spec->choices) {
        *v = 0;
        for (int i = 0; f->spec->choices[i]; i++)
            if (strcmp(f->spec->choices[i], g->value.string) == 0)
                *v = i;
        return SOURCE_RECIPE;
    }
    if (g && g->value.kind == RECIPE_VALUE_PER_MODEL)
        for (size_t i = 0; model && i < g->value.n_per_model; i++)
            if (strcmp(g->value.per_model[i].model, model) == 0) {
                *v = g->value.per_model[i].numbers[0];
                return g->value.per_model[i].n_numbers > 1 ? SOURCE_GRADIENT : SOURCE_RECIPE;
            }
    *v = default_value(a, f->spec, f->model);
    return SOURCE_DEFAULT;
}

/* The range of values in effect over the layer tensors, and how many
 * layers differ from `base` (overrides or a gradient). */
static int layers_differing(const struct ui_app *a, const struct field *f, double base, double *lo, double *hi)
{
    int n_diff = 0, last = -1;
    bool layer_differs = false;
    *lo = INFINITY;
    *hi = -INFINITY;
    for (size_t i = 0; i < ws_n_tensors(a->ws); i++) {
        const struct ws_tensor *t = ws_tensor(a->ws, i);
        if (t->info.layer < 0 || (t->info.group != TN_GROUP_ATTN && t->info.group != TN_GROUP_MLP))
            continue;
        if (t->info.layer != last) {
            n_diff += layer_differs;
            layer_differs = false;
            last = t->info.layer;
        }
        struct merge_tensor_params p;
        ws_tensor_params(a->ws, i, &p);
        double v = tune_param_value(&p, f->spec->id, f->model);
        if (v == base)
            continue;
        *lo = v < *lo ? v : *lo;
        *hi = v > *hi ? v : *hi;
        layer_differs = true;
    }
    return n_diff + layer_differs;
}

/* "0.4" and "(recipe)", "1" and "(default)", "0.4" and "(recipe: density;
 * override: 0.4 .. 0.6 on 2 layers)": the value in effect and where it
 * comes from. */
static void field_value(const struct ui_app *a, const struct field *f, char *val, size_t vs, char *src,
                        size_t ss)
{
    double v;
    enum value_source from = base_value(a, f, &v);
    if (f->spec->kind == MERGE_PARAM_KIND_BOOL)
        snprintf(val, vs, "%s", v != 0 ? "true" : "false");
    else if (f->spec->kind == MERGE_PARAM_KIND_CHOICE)
        snprintf(val, vs, "%s", f->spec->choices[(int)v]);
    else
        lm_format_number(v, val, vs);
    static const char *const names[] = { "default", "recipe", "recipe: its own entry", "gradient" };
    const char *why = names[from];
    char global[64];
    if (f->kind == UI_ROW_MODEL_PARAM && from == SOURCE_RECIPE) {
        snprintf(global, sizeof(global), "recipe: the global %s", f->spec->name);
        why = global;
    }
    size_t n = (size_t)snprintf(src, ss, "(%s", why);
    bool per_layer = f->spec->kind == MERGE_PARAM_KIND_NUMBER || f->spec->kind == MERGE_PARAM_KIND_INT;
    if (per_layer && (f->kind == UI_ROW_MODEL_PARAM || !f->spec->per_model)) {
        double lo, hi;
        int k = layers_differing(a, f, v, &lo, &hi);
        if (k > 0 && n < ss) {
            char l[LM_NUMBER_MAX], h[LM_NUMBER_MAX];
            lm_format_number(lo, l, sizeof(l));
            lm_format_number(hi, h, sizeof(h));
            snprintf(src + n, ss - n, "; %s %s%s%s on %d layer%s", from == SOURCE_GRADIENT ? "gradient"
                     : "override", l, lo < hi ? " .. " : "", lo < hi ? h : "", k, k == 1 ? "" : "s");
            n = strlen(src);
        }
    }
    if (n < ss)
        snprintf(src + n, ss - n, ")");
}

static void field_text(const struct ui_app *a, const struct field *f, char *name, size_t ns, char *val, size_t vs)
{
    const struct recipe *r = ws_recipe(a->ws);
    switch (f->kind) {
    case UI_ROW_METHOD:
        snprintf(name, ns, "method");
        snprintf(val, vs, "%s", r->method);
        return;
    case UI_ROW_PARAM:
    case UI_ROW_MODEL_PARAM: {
        if (f->kind == UI_ROW_PARAM)
            snprintf(name, ns, "%s", f->spec->name);
        else
            snprintf(name, ns, "%s.%s", ws_model(a->ws, f->model)->name, f->spec->name);
        char v[64], src[192];
        field_value(a, f, v, sizeof(v), src, sizeof(src));
        snprintf(val, vs, "%-8s %s", v, src);
        return;
    }
    case UI_ROW_BASE: {
        snprintf(name, ns, "base");
        char dir[512];
        if (ws_has_base(a->ws)) {
            ui_display_dir(ws_model(a->ws, -1)->dir, dir, sizeof(dir));
            snprintf(val, vs, "%s", dir);
        } else {
            snprintf(val, vs, "(none: %s merges the models themselves)", r->method);
        }
        return;
    }
    case UI_ROW_MODEL: {
        char dir[512];
        snprintf(name, ns, "model %s", ws_model(a->ws, f->model)->name);
        ui_display_dir(ws_model(a->ws, f->model)->dir, dir, sizeof(dir));
        snprintf(val, vs, "%s", dir);
        return;
    }
    case UI_ROW_SLICE: {
        /* Its place in the output: after the layers of the slices before. */
        int first = 0;
        for (size_t i = 0; i < f->index; i++)
            first += r->slices[i].sources[0].end - r->slices[i].sources[0].start;
        const struct recipe_slice_source *src = &r->slices[f->index].sources[0];
        int count = src->end - src->start;
        snprintf(name, ns, "slice %zu", f->index + 1);
        if (count == 1)
            snprintf(val, vs, "%-10s layers [%d, %d)  -> output layer %d", src->model, src->start,
                     src->end, first);
        else
            snprintf(val, vs, "%-10s layers [%d, %d)  -> output layers %d-%d", src->model, src->start,
                     src->end, first, first + count - 1);
        return;
    }
    case UI_ROW_NO_SLICES:
        snprintf(name, ns, "slices");
        snprintf(val, vs, "none: a copy of model %s (A adds a slice: layers to stack)",
                 r->n_models ? r->models[0].name : "?");
        return;
    case UI_ROW_OVERRIDE: {
        const struct recipe_override *o = &r->overrides[f->index];
        size_t len = (size_t)snprintf(name, ns, "override %zu", f->index + 1);
        (void)len;
        size_t vl = 0;
        if (o->all_layers)
            vl += (size_t)snprintf(val + vl, vs - vl, "all layers");
        else {
            vl += (size_t)snprintf(val + vl, vs - vl, "layers ");
            for (size_t i = 0; i < o->n_layers && vl < vs; i++)
                vl += (size_t)(o->layers[i].first == o->layers[i].last
                               ? snprintf(val + vl, vs - vl, "%s%d", i ? "," : "", o->layers[i].first)
                               : snprintf(val + vl, vs - vl, "%s%d-%d", i ? "," : "", o->layers[i].first,
                                          o->layers[i].last));
        }
        for (size_t i = 0; i < o->n_modules && vl < vs; i++)
            vl += (size_t)snprintf(val + vl, vs - vl, "%s%s", i ? "," : " ", o->modules[i]);
        for (size_t i = 0; i < o->n_params && vl < vs; i++) {
            char v[256];
            value_text(&o->params[i].value, v, sizeof(v));
            vl += (size_t)snprintf(val + vl, vs - vl, "  %s: %s", o->params[i].name, v);
        }
        return;
    }
    }
}

void screen_recipe_value_text(const struct ui_app *a, char *buf, size_t size)
{
    struct field f;
    char src[192];
    buf[0] = '\0';
    if (!current_field(a, &f) || f.kind == UI_ROW_OVERRIDE || f.kind == UI_ROW_NO_SLICES)
        return;
    const struct recipe *r = ws_recipe(a->ws);
    if (f.kind == UI_ROW_METHOD) {
        snprintf(buf, size, "%s", r->method);
    } else if (f.kind == UI_ROW_BASE || f.kind == UI_ROW_MODEL) {
        /* as the user types paths: from the current directory */
        if (f.kind == UI_ROW_MODEL || ws_has_base(a->ws))
            ui_display_dir(ws_model(a->ws, f.kind == UI_ROW_BASE ? -1 : f.model)->dir, buf, size);
    } else if (f.kind == UI_ROW_SLICE) {
        const struct recipe_slice_source *sl = &r->slices[f.index].sources[0];
        snprintf(buf, size, "%s %d %d", sl->model, sl->start, sl->end);
    } else {
        field_value(a, &f, buf, size, src, sizeof(src));
    }
}

bool screen_recipe_edits_path(const struct ui_app *a)
{
    struct field f;
    return current_field(a, &f) && (f.kind == UI_ROW_BASE || f.kind == UI_ROW_MODEL);
}

const char *screen_recipe_input_label(const struct ui_app *a)
{
    struct field f;
    if (!current_field(a, &f))
        return "value: ";
    if (f.kind == UI_ROW_BASE || f.kind == UI_ROW_MODEL)
        return f.kind == UI_ROW_BASE ? "base model directory (Tab completes; empty: no base): "
                                     : "model directory (Tab completes): ";
    if (f.kind == UI_ROW_SLICE)
        return "slice MODEL START END (layers START to END - 1): ";
    return f.kind == UI_ROW_METHOD ? "method: " : "value: ";
}

bool screen_recipe_typable(const struct ui_app *a)
{
    struct field f;
    return current_field(a, &f) && f.kind != UI_ROW_OVERRIDE && f.kind != UI_ROW_NO_SLICES;
}

static int apply_edit(struct ui_app *a, struct recipe *r, int rc)
{
    if (rc)
        ui_status(a, true, "%s", lm_last_error());
    else
        rc = ui_apply_recipe(a, r, true);
    recipe_free(r);
    return rc ? UI_REACT_REDRAW : UI_REACT_REDRAW | UI_REACT_RECIPE;
}

static int set_field_number(struct ui_app *a, const struct field *f, double v)
{
    bool weight = f->spec->id == MERGE_PARAM_WEIGHT;
    struct recipe *r = recipe_clone(ws_recipe(a->ws));
    if (!r)
        return UI_REACT_NONE;
    int rc;
    if (f->spec->kind == MERGE_PARAM_KIND_BOOL)
        rc = tune_set_global_bool(r, f->spec->name, v != 0);
    else if (f->spec->kind == MERGE_PARAM_KIND_CHOICE) {
        struct recipe_param *p = NULL;
        rc = recipe_set_number(&r->params, &r->n_params, f->spec->name, 0);
        for (size_t i = 0; i < r->n_params; i++)
            if (strcmp(r->params[i].name, f->spec->name) == 0)
                p = &r->params[i];
        if (!rc && p) {
            recipe_value_deinit(&p->value);
            memset(&p->value, 0, sizeof(p->value));
            p->value.kind = RECIPE_VALUE_STRING;
            p->value.string = lm_strdup(f->spec->choices[(int)v]);
            if (!p->value.string)
                rc = LM_ENOMEM;
        }
    } else
        rc = tune_set_global(r, f->spec->name, f->kind == UI_ROW_MODEL_PARAM ? ws_model(a->ws, f->model)->name : NULL, v);
    int react = apply_edit(a, r, rc);
    if (weight && ui_weight_note(a))
        ui_status(a, false, "weight %s", ui_weight_note(a));
    return react;
}

/* Why method `m` cannot take the recipe as it is, for the method stepper,
 * which passes over such methods and says why (and which key helps). */
enum skip { SKIP_NONE, SKIP_FEW, SKIP_MANY, SKIP_BASE, SKIP_SLICES, SKIP_STACKED, SKIP_KINDS };

static enum skip skip_reason(const struct merge_method *m, const struct recipe *r)
{
    int nm = (int)r->n_models;
    if (nm < m->min_models)
        return SKIP_FEW;
    if (nm > m->max_models)
        return SKIP_MANY;
    if (!r->base && !m->base_optional)
        return SKIP_BASE;
    if (m->stacks && r->n_slices == 0 && nm != 1)
        return SKIP_SLICES;
    if (!m->stacks && r->n_slices > 0)
        return SKIP_STACKED;
    return SKIP_NONE;
}

/* Steps the method to the next (dir > 0) or previous one the recipe fits,
 * appending to the status line the methods passed over and why. */
static int step_method(struct ui_app *a, int dir)
{
    size_t n = 0, cur = 0;
    while (merge_methods[n]) {
        if (merge_methods[n] == ws_method(a->ws))
            cur = n;
        n++;
    }
    const struct recipe *now = ws_recipe(a->ws);
    char skipped[SKIP_KINDS][384];
    for (int k = 0; k < SKIP_KINDS; k++)
        skipped[k][0] = '\0';
    for (size_t k = 1; k < n; k++) {
        size_t i = (cur + (dir > 0 ? k : n - k)) % n;
        const struct merge_method *m = merge_methods[i];
        enum skip why = skip_reason(m, now);
        if (why != SKIP_NONE) {
            size_t l = strlen(skipped[why]);
            snprintf(skipped[why] + l, sizeof(skipped[why]) - l, "%s%s", l ? ", " : "", m->name);
            continue;
        }
        struct recipe *r = recipe_clone(now);
        if (!r)
            return UI_REACT_NONE;
        int nm = (int)now->n_models;
        int react = apply_edit(a, r, tune_set_method(r, m->name));
        char line[1600];
        size_t l = (size_t)snprintf(line, sizeof(line), "%s", a->status);
        if (skipped[SKIP_FEW][0])
            l += (size_t)snprintf(line + l, sizeof(line) - l, " | passed over %s: not for %d model%s (a adds "
                                  "a model)", skipped[SKIP_FEW], nm, nm == 1 ? "" : "s");
        if (skipped[SKIP_MANY][0] && l < sizeof(line))
            l += (size_t)snprintf(line + l, sizeof(line) - l, " | passed over %s: not for %d models (x on a "
                                  "model removes it)", skipped[SKIP_MANY], nm);
        if (skipped[SKIP_BASE][0] && l < sizeof(line))
            l += (size_t)snprintf(line + l, sizeof(line) - l, " | passed over %s: need a base (Enter on the "
                                  "base row types one)", skipped[SKIP_BASE]);
        if (skipped[SKIP_SLICES][0] && l < sizeof(line))
            l += (size_t)snprintf(line + l, sizeof(line) - l, " | passed over %s: without slices it copies "
                                  "one model (A adds a slice)", skipped[SKIP_SLICES]);
        if (skipped[SKIP_STACKED][0] && l < sizeof(line))
            snprintf(line + l, sizeof(line) - l, " | passed over %s: do not stack layers (x removes "
                     "the slices)", skipped[SKIP_STACKED]);
        if (strcmp(line, a->status) != 0)
            ui_status(a, a->status_error, "%s", line);
        return react;
    }
    ui_status(a, false, "no other method takes these models");
    return UI_REACT_REDRAW;
}

int screen_recipe_adjust(struct ui_app *a, int dir)
{
    struct field f;
    if (!current_field(a, &f))
        return UI_REACT_NONE;
    switch (f.kind) {
    case UI_ROW_OVERRIDE:
        ui_status(a, false, "overrides are edited from the Layers screen; x deletes this one");
        return UI_REACT_NONE;
    case UI_ROW_BASE:
    case UI_ROW_MODEL:
        ui_status(a, false, "Enter types another path, x removes %s, a adds a model",
                  f.kind == UI_ROW_BASE ? "the base" : "this model");
        return UI_REACT_NONE;
    case UI_ROW_NO_SLICES:
        ui_status(a, false, "A adds a slice: layers [start, end) of a model, stacked in order");
        return UI_REACT_NONE;
    case UI_ROW_SLICE:
        return sources_step_slice_end(a, f.index, dir);
    case UI_ROW_METHOD:
        return step_method(a, dir);
    case UI_ROW_PARAM:
    case UI_ROW_MODEL_PARAM:
        break;
    }
    double v;   /* steps start from the value in effect, wherever it comes from */
    base_value(a, &f, &v);
    if (f.spec->kind == MERGE_PARAM_KIND_BOOL)
        v = v != 0 ? 0 : 1;
    else if (f.spec->kind == MERGE_PARAM_KIND_CHOICE) {
        int nc = 0;
        while (f.spec->choices[nc])
            nc++;
        v = (double)(((int)v + (dir > 0 ? 1 : nc - 1)) % nc);
    } else {
        v = tune_step_value(f.spec, v, dir);
    }
    return set_field_number(a, &f, v);
}

int screen_recipe_set(struct ui_app *a, const char *text)
{
    struct field f;
    if (!current_field(a, &f))
        return UI_REACT_NONE;
    switch (f.kind) {
    case UI_ROW_OVERRIDE:
    case UI_ROW_NO_SLICES:
        return UI_REACT_NONE;
    case UI_ROW_BASE:
        return sources_set_path(a, -1, text);
    case UI_ROW_MODEL:
        return sources_set_path(a, f.model, text);
    case UI_ROW_SLICE:
        return sources_set_slice(a, f.index, text);
    case UI_ROW_METHOD: {
        struct recipe *r = recipe_clone(ws_recipe(a->ws));
        if (!r)
            return UI_REACT_NONE;
        return apply_edit(a, r, tune_set_method(r, text));
    }
    case UI_ROW_PARAM:
    case UI_ROW_MODEL_PARAM:
        break;
    }
    if (f.spec->kind == MERGE_PARAM_KIND_BOOL)
        return set_field_number(a, &f, strcmp(text, "true") == 0 || strcmp(text, "1") == 0);
    if (f.spec->kind == MERGE_PARAM_KIND_CHOICE) {
        for (int i = 0; f.spec->choices[i]; i++)
            if (strcmp(f.spec->choices[i], text) == 0)
                return set_field_number(a, &f, i);
        ui_status(a, true, "\"%s\" is not a choice for %s", text, f.spec->name);
        return UI_REACT_REDRAW;
    }
    char *end;
    double v = strtod(text, &end);
    if (end == text || *end || !isfinite(v)) {
        ui_status(a, true, "\"%s\" is not a number", text);
        return UI_REACT_REDRAW;
    }
    return set_field_number(a, &f, v);
}

int screen_recipe_clear(struct ui_app *a)
{
    struct field f;
    if (!current_field(a, &f))
        return UI_REACT_NONE;
    switch (f.kind) {
    case UI_ROW_OVERRIDE: {
        struct recipe *r = recipe_clone(ws_recipe(a->ws));
        if (!r)
            return UI_REACT_NONE;
        return apply_edit(a, r, tune_remove_override(r, f.index));
    }
    case UI_ROW_MODEL:
        return sources_remove_model(a, f.model);
    case UI_ROW_BASE:
        return sources_remove_base(a);
    case UI_ROW_SLICE:
        return sources_remove_slice(a, f.index);
    default:
        ui_status(a, false, "x deletes the selected override, model, base or slice");
        return UI_REACT_NONE;
    }
}

/* Selects row `row` when there is one. */
static void select_row(struct ui_app *a, long row)
{
    if (row >= 0)
        a->recipe_sel = (size_t)row;
}

int screen_recipe_add_model(struct ui_app *a, const char *path)
{
    int before = ws_n_models(a->ws);
    int react = sources_add_model(a, path);
    if (ws_n_models(a->ws) > before)
        select_row(a, screen_recipe_row(a, UI_ROW_MODEL, (size_t)ws_n_models(a->ws) - 1));
    return react;
}

int screen_recipe_add_slice(struct ui_app *a)
{
    struct field f;
    long after = current_field(a, &f) && f.kind == UI_ROW_SLICE ? (long)f.index : -1;
    size_t before = ws_recipe(a->ws)->n_slices;
    int react = sources_add_slice(a, after);
    if (ws_recipe(a->ws)->n_slices > before)
        select_row(a, screen_recipe_row(a, UI_ROW_SLICE, after >= 0 ? (size_t)after + 1 : before));
    return react;
}

int screen_recipe_move(struct ui_app *a, int dir)
{
    struct field f;
    if (!current_field(a, &f) || f.kind != UI_ROW_SLICE) {
        ui_status(a, false, "K and J move the selected slice up and down; select one");
        return UI_REACT_NONE;
    }
    bool moved = (dir < 0 && f.index > 0) || (dir > 0 && f.index + 1 < ws_recipe(a->ws)->n_slices);
    int react = sources_move_slice(a, f.index, dir);
    if (moved && !a->status_error)
        select_row(a, screen_recipe_row(a, UI_ROW_SLICE, dir < 0 ? f.index - 1 : f.index + 1));
    return react;
}

/* One line of help for the selected row (in `buf` where it is made). */
static const char *field_help(const struct ui_app *a, const struct field *f, char *buf, size_t size)
{
    char names[128];
    switch (f->kind) {
    case UI_ROW_METHOD:
        return ws_method(a->ws)->summary;
    case UI_ROW_OVERRIDE:
        return "a per-layer / per-module setting; later overrides win";
    case UI_ROW_BASE:
        merge_base_optional_names(names, sizeof(names));
        if (ws_has_base(a->ws))
            snprintf(buf, size, "the model task vectors are taken against: Enter types another path (Tab "
                     "completes), x removes it (%s merge without one)", names);
        else
            snprintf(buf, size, "no base: Enter types a path to one (methods other than %s need it)", names);
        return buf;
    case UI_ROW_MODEL:
        return "a fine-tuned model: Enter types another path (Tab completes), x removes it, a adds one";
    case UI_ROW_SLICE:
        return "layers [start, end) of a model, stacked in order: Enter types MODEL START END, "
               "Left/Right move the end, K/J reorder, A adds one after it, x removes it";
    case UI_ROW_NO_SLICES:
        return "passthrough without slices copies one model; A adds a slice (layers of a model to stack)";
    case UI_ROW_PARAM:
    case UI_ROW_MODEL_PARAM:
        return f->spec->help;
    }
    return NULL;
}

void screen_recipe_draw(struct ui_app *a, int y0, int h, int w)
{
    struct field all[MAX_FIELDS];
    size_t n = fields(a, all, MAX_FIELDS);
    if (n > MAX_FIELDS)
        n = MAX_FIELDS;
    draw_text(a->win, y0, 0, w, UI_ROLE_TITLE,
              " Recipe: Left/Right change, Enter types, a adds a model, A a slice, x deletes, u undoes");
    draw_fill(a->win, y0 + 1, 0, w, UI_ROLE_COLUMN);
    draw_textf(a->win, y0 + 1, 0, w, UI_ROLE_COLUMN, " %-24s %s", "field", "value");
    int list_h = h - 4;
    if (a->recipe_sel >= n)
        a->recipe_sel = n ? n - 1 : 0;
    if (a->recipe_sel < a->recipe_top)
        a->recipe_top = a->recipe_sel;
    if (list_h > 0 && a->recipe_sel >= a->recipe_top + (size_t)list_h)
        a->recipe_top = a->recipe_sel - (size_t)list_h + 1;
    for (int i = 0; i < list_h && a->recipe_top + (size_t)i < n; i++) {
        size_t k = a->recipe_top + (size_t)i;
        char name[64], val[512];
        field_text(a, &all[k], name, sizeof(name), val, sizeof(val));
        bool sel = k == a->recipe_sel;
        int y = y0 + 2 + i;
        bool heading = all[k].kind == UI_ROW_BASE || all[k].kind == UI_ROW_MODEL;
        draw_fill(a->win, y, 0, w, sel ? UI_ROLE_SELECTION : UI_ROLE_NORMAL);
        draw_textf(a->win, y, 0, 26, sel ? UI_ROLE_SELECTION : all[k].kind == UI_ROW_OVERRIDE ? UI_ROLE_OVERRIDE
                   : heading ? UI_ROLE_TITLE : UI_ROLE_NORMAL, " %-24s", name);
        draw_text(a->win, y, 26, w - 26, sel ? UI_ROLE_SELECTION : UI_ROLE_VALUE, val);
    }
    /* Help for the selected field. */
    struct field f;
    if (current_field(a, &f)) {
        char buf[256];
        const char *help = field_help(a, &f, buf, sizeof(buf));
        draw_text(a->win, y0 + h - 1, 1, w - 1, UI_ROLE_DIM, help ? help : "");
    }
}
