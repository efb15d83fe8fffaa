/* The Recipe screen: the method, its global parameters, each model's own
 * parameters and the override list, one field per line. Left/Right step a
 * value (or cycle the method / a choice), Enter or = types one, x deletes an
 * override. Every change goes through ui_apply_recipe (undoable). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "app.h"
#include "draw.h"
#include "lm_error.h"
#include "numfmt.h"
#include "tune.h"
#include "workspace.h"

enum field_kind { FIELD_METHOD, FIELD_GLOBAL, FIELD_MODEL, FIELD_OVERRIDE };

struct field {
    enum field_kind kind;
    const struct merge_param_spec *spec;
    int model;          /* FIELD_MODEL */
    size_t override;    /* FIELD_OVERRIDE */
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
    if (n < max) out[n] = (struct field){ FIELD_METHOD, NULL, -1, 0 };
    n++;
    for (int id = 0; id < MERGE_PARAM_COUNT; id++) {
        if (!merge_method_uses(m, gp.on, (enum merge_param_id)id))
            continue;
        if (n < max) out[n] = (struct field){ FIELD_GLOBAL, &merge_param_specs[id], -1, 0 };
        n++;
    }
    for (int k = 0; k < ws_n_models(a->ws); k++)
        for (int id = 0; id < MERGE_PARAM_COUNT; id++) {
            if (!merge_method_uses(m, gp.on, (enum merge_param_id)id) || !merge_param_specs[id].per_model)
                continue;
            if (n < max) out[n] = (struct field){ FIELD_MODEL, &merge_param_specs[id], k, 0 };
            n++;
        }
    for (size_t o = 0; o < r->n_overrides; o++) {
        if (n < max) out[n] = (struct field){ FIELD_OVERRIDE, NULL, -1, o };
        n++;
    }
    return n;
}

size_t screen_recipe_n_fields(const struct ui_app *a)
{
    return fields(a, NULL, 0);
}

static bool current_field(const struct ui_app *a, struct field *f)
{
    struct field all[256];
    size_t n = fields(a, all, 256);
    if (a->recipe_sel >= n || a->recipe_sel >= 256)
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
    if (f->kind == FIELD_GLOBAL)
        return recipe_find_param(r->params, r->n_params, f->spec->name);
    if (f->kind == FIELD_MODEL)
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
    const struct recipe_param *own = f->kind == FIELD_MODEL ? field_param(a, f) : NULL;
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
    if (f->kind == FIELD_MODEL && from == SOURCE_RECIPE) {
        snprintf(global, sizeof(global), "recipe: the global %s", f->spec->name);
        why = global;
    }
    size_t n = (size_t)snprintf(src, ss, "(%s", why);
    bool per_layer = f->spec->kind == MERGE_PARAM_KIND_NUMBER || f->spec->kind == MERGE_PARAM_KIND_INT;
    if (per_layer && (f->kind == FIELD_MODEL || !f->spec->per_model)) {
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
    case FIELD_METHOD:
        snprintf(name, ns, "method");
        snprintf(val, vs, "%s", r->method);
        return;
    case FIELD_GLOBAL:
    case FIELD_MODEL: {
        if (f->kind == FIELD_GLOBAL)
            snprintf(name, ns, "%s", f->spec->name);
        else
            snprintf(name, ns, "%s.%s", ws_model(a->ws, f->model)->name, f->spec->name);
        char v[64], src[192];
        field_value(a, f, v, sizeof(v), src, sizeof(src));
        snprintf(val, vs, "%-8s %s", v, src);
        return;
    }
    case FIELD_OVERRIDE: {
        const struct recipe_override *o = &r->overrides[f->override];
        size_t len = (size_t)snprintf(name, ns, "override %zu", f->override + 1);
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
    if (!current_field(a, &f) || f.kind == FIELD_OVERRIDE)
        return;
    if (f.kind == FIELD_METHOD)
        snprintf(buf, size, "%s", ws_recipe(a->ws)->method);
    else
        field_value(a, &f, buf, size, src, sizeof(src));
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
        rc = tune_set_global(r, f->spec->name, f->kind == FIELD_MODEL ? ws_model(a->ws, f->model)->name : NULL, v);
    int react = apply_edit(a, r, rc);
    if (weight && ui_weight_note(a))
        ui_status(a, false, "weight %s", ui_weight_note(a));
    return react;
}

int screen_recipe_adjust(struct ui_app *a, int dir)
{
    struct field f;
    if (!current_field(a, &f))
        return UI_REACT_NONE;
    if (f.kind == FIELD_OVERRIDE) {
        ui_status(a, false, "overrides are edited from the Layers screen; x deletes this one");
        return UI_REACT_NONE;
    }
    if (f.kind == FIELD_METHOD) {
        size_t n = 0, cur = 0;
        while (merge_methods[n]) {
            if (merge_methods[n] == ws_method(a->ws))
                cur = n;
            n++;
        }
        /* Skip methods that cannot take this many models, and say which. */
        char skipped[256] = "";
        int nm = ws_n_models(a->ws);
        for (size_t k = 1; k < n; k++) {
            size_t i = (cur + (dir > 0 ? k : n - k)) % n;
            const struct merge_method *m = merge_methods[i];
            if (nm < m->min_models || nm > m->max_models) {
                size_t l = strlen(skipped);
                snprintf(skipped + l, sizeof(skipped) - l, "%s%s", l ? ", " : "", m->name);
                continue;
            }
            struct recipe *r = recipe_clone(ws_recipe(a->ws));
            if (!r)
                return UI_REACT_NONE;
            int react = apply_edit(a, r, tune_set_method(r, m->name));
            if (skipped[0]) {
                char done[512];
                snprintf(done, sizeof(done), "%s", a->status);
                ui_status(a, false, "%s | passed over %s: not for %d model%s (open more with --model)", done,
                          skipped, nm, nm == 1 ? "" : "s");
            }
            return react;
        }
        return UI_REACT_NONE;
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
    if (!current_field(a, &f) || f.kind == FIELD_OVERRIDE)
        return UI_REACT_NONE;
    if (f.kind == FIELD_METHOD) {
        struct recipe *r = recipe_clone(ws_recipe(a->ws));
        if (!r)
            return UI_REACT_NONE;
        return apply_edit(a, r, tune_set_method(r, text));
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
    if (!current_field(a, &f) || f.kind != FIELD_OVERRIDE) {
        ui_status(a, false, "x deletes an override; select one below the parameters");
        return UI_REACT_NONE;
    }
    struct recipe *r = recipe_clone(ws_recipe(a->ws));
    if (!r)
        return UI_REACT_NONE;
    return apply_edit(a, r, tune_remove_override(r, f.override));
}

void screen_recipe_draw(struct ui_app *a, int y0, int h, int w)
{
    struct field all[256];
    size_t n = fields(a, all, 256);
    if (n > 256)
        n = 256;
    draw_text(a->win, y0, 0, w, UI_ROLE_TITLE,
              " Recipe: Left/Right change, Enter types a value, x deletes an override, u undoes");
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
        draw_fill(a->win, y, 0, w, sel ? UI_ROLE_SELECTION : UI_ROLE_NORMAL);
        draw_textf(a->win, y, 0, 26, sel ? UI_ROLE_SELECTION : all[k].kind == FIELD_OVERRIDE ? UI_ROLE_OVERRIDE
                   : UI_ROLE_NORMAL, " %-24s", name);
        draw_text(a->win, y, 26, w - 26, sel ? UI_ROLE_SELECTION : UI_ROLE_VALUE, val);
    }
    /* Help for the selected field. */
    struct field f;
    if (current_field(a, &f)) {
        const char *help = f.kind == FIELD_METHOD ? ws_method(a->ws)->summary
                         : f.kind == FIELD_OVERRIDE ? "a per-layer / per-module setting; later overrides win"
                         : f.spec->help;
        draw_text(a->win, y0 + h - 1, 1, w - 1, UI_ROLE_DIM, help ? help : "");
    }
}
