/* The Recipe screen's edits of the base, the models and the slices. */
#include "recipe_sources.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "app.h"
#include "lm_error.h"
#include "output_policy.h"
#include "recipe_edit.h"
#include "tune.h"
#include "workspace.h"

char *sources_recipe_path(const struct recipe *r, const char *typed)
{
    const char *home = getenv("HOME");
    char *expanded = typed[0] == '~' && (typed[1] == '/' || typed[1] == '\0') && home
                     ? lm_asprintf("%s%s", home, typed + 1) : lm_strdup(typed);
    if (!expanded)
        return NULL;
    size_t n = strlen(expanded);   /* "m/long/" as completion leaves it: "m/long" */
    while (n > 1 && expanded[n - 1] == '/')
        expanded[--n] = '\0';
    if (expanded[0] == '/' || !r->dir || strcmp(r->dir, ".") == 0)
        return expanded;
    char *abs = out_canonical_path(expanded);
    free(expanded);
    return abs;
}

/* `text` without the blanks around it, in `buf`. */
static const char *trimmed(const char *text, char *buf, size_t size)
{
    while (*text == ' ' || *text == '\t')
        text++;
    snprintf(buf, size, "%s", text);
    size_t n = strlen(buf);
    while (n && (buf[n - 1] == ' ' || buf[n - 1] == '\t'))
        buf[--n] = '\0';
    return buf;
}

/* Applies `r` (freed here) unless `rc` says the edit failed. The status
 * line then starts with `done` (success) or `failed` (either failure), so
 * that it says what was tried, and ends with what the workspace said. */
static int finish(struct ui_app *a, struct recipe *r, int rc, const char *done, const char *failed)
{
    bool logged = false;   /* ui_apply_recipe logs the workspace's errors itself */
    if (!rc && r) {
        rc = ui_apply_recipe(a, r, true);
        logged = rc != 0;
    } else if (!r) {
        rc = LM_ENOMEM;
    }
    recipe_free(r);
    if (rc) {
        char line[sizeof(a->status) + 512];
        snprintf(line, sizeof(line), "%s: %s", failed, lm_last_error());
        snprintf(a->status, sizeof(a->status), "%.*s", (int)sizeof(a->status) - 1, line);
        a->status_error = true;
        if (!logged)
            msglog_add(&a->log, MSGLOG_ERROR, a->status);
        return UI_REACT_REDRAW;
    }
    char tail[sizeof(a->status)];
    snprintf(tail, sizeof(tail), "%s", a->status);
    ui_status(a, false, "%s; %s (u undoes)", done, tail);
    return UI_REACT_REDRAW | UI_REACT_RECIPE;
}

/* After the models changed: the method the recipe now needs, said in
 * `note` ("" when it stays). */
static int fit_method(struct recipe *r, char *note, size_t size)
{
    char was[64];
    note[0] = '\0';
    int rc = tune_fit_method(r, was, sizeof(was));
    if (!rc && was[0])
        snprintf(note, size, "; %s does not take %zu model%s%s, so the method is now %s", was, r->n_models,
                 r->n_models == 1 ? "" : "s", r->base ? "" : " without a base", r->method);
    return rc;
}

int sources_add_model(struct ui_app *a, const char *typed)
{
    char path[LINEEDIT_MAX];
    if (!*trimmed(typed, path, sizeof(path))) {
        ui_status(a, true, "no path given: a adds a model by its directory");
        return UI_REACT_REDRAW;
    }
    struct recipe *r = recipe_clone(ws_recipe(a->ws));
    char *stored = r ? sources_recipe_path(r, path) : NULL;
    int rc = stored ? recipe_add_model(r, NULL, stored) : LM_ENOMEM;
    free(stored);
    char note[192] = "", done[LINEEDIT_MAX + 320], failed[LINEEDIT_MAX + 32];
    if (!rc)
        rc = fit_method(r, note, sizeof(note));
    snprintf(done, sizeof(done), "added model '%s' (%s)%s", rc ? "" : r->models[r->n_models - 1].name,
             path, note);
    snprintf(failed, sizeof(failed), "cannot add %s", path);
    return finish(a, r, rc, done, failed);
}

int sources_remove_model(struct ui_app *a, int model)
{
    const struct recipe *cur = ws_recipe(a->ws);
    if (model < 0 || (size_t)model >= cur->n_models)
        return UI_REACT_NONE;
    char name[256];
    snprintf(name, sizeof(name), "%s", cur->models[model].name);
    if (cur->n_models == 1) {
        ui_status(a, true, "'%s' is the only model to merge: add another (a) before removing it", name);
        return UI_REACT_REDRAW;
    }
    struct recipe *r = recipe_clone(cur);
    int rc = r ? recipe_remove_model(r, (size_t)model) : LM_ENOMEM;
    char note[192] = "", done[512], failed[300];
    if (!rc)
        rc = fit_method(r, note, sizeof(note));
    snprintf(done, sizeof(done), "removed model '%s'%s", name, note);
    snprintf(failed, sizeof(failed), "cannot remove '%s'", name);
    return finish(a, r, rc, done, failed);
}

int sources_remove_base(struct ui_app *a)
{
    const struct merge_method *m = ws_method(a->ws);
    if (!ws_has_base(a->ws)) {
        ui_status(a, false, "the recipe has no base; Enter types one");
        return UI_REACT_REDRAW;
    }
    if (!m->base_optional) {
        char names[128];
        merge_base_optional_names(names, sizeof(names));
        ui_status(a, true, "%s takes task vectors against the base; only %s merge without one "
                  "(choose one of them first)", m->name, names);
        return UI_REACT_REDRAW;
    }
    struct recipe *r = recipe_clone(ws_recipe(a->ws));
    int rc = r ? recipe_remove_base(r) : LM_ENOMEM;
    char done[256];
    snprintf(done, sizeof(done), "removed the base: %s merges the models themselves", m->name);
    return finish(a, r, rc, done, "cannot remove the base");
}

int sources_set_path(struct ui_app *a, int model, const char *typed)
{
    char path[LINEEDIT_MAX];
    if (model >= ws_n_models(a->ws))
        return UI_REACT_NONE;
    if (!*trimmed(typed, path, sizeof(path))) {
        if (model < 0)
            return sources_remove_base(a);
        ui_status(a, true, "no path given (x removes the model)");
        return UI_REACT_REDRAW;
    }
    struct recipe *r = recipe_clone(ws_recipe(a->ws));
    char *stored = r ? sources_recipe_path(r, path) : NULL;
    int rc = stored ? recipe_set_model_path(r, model, stored) : LM_ENOMEM;
    free(stored);
    char note[192] = "", done[LINEEDIT_MAX + 320], failed[LINEEDIT_MAX + 300];
    if (!rc && model < 0)
        rc = fit_method(r, note, sizeof(note));
    const char *who = model < 0 ? "the base" : ws_model(a->ws, model)->name;
    snprintf(done, sizeof(done), "%s%s is now %s%s", model < 0 ? "" : "model ", who, path, note);
    snprintf(failed, sizeof(failed), "cannot open %s for %s", path, who);
    return finish(a, r, rc, done, failed);
}

/* ===== Slices ===== */

/* The registry's layer stacking method. */
static const struct merge_method *stacking_method(void)
{
    for (const struct merge_method *const *m = merge_methods; *m; m++)
        if ((*m)->stacks)
            return *m;
    return NULL;
}

int sources_add_slice(struct ui_app *a, long after)
{
    struct recipe *r = recipe_clone(ws_recipe(a->ws));
    if (!r)
        return UI_REACT_NONE;
    int rc;
    size_t at;
    char note[128] = "";
    if (r->n_slices > 0) {
        size_t from = after >= 0 && (size_t)after < r->n_slices ? (size_t)after : r->n_slices - 1;
        const struct recipe_slice_source *s = &r->slices[from].sources[0];
        char model[256];
        snprintf(model, sizeof(model), "%s", s->model);
        at = from + 1;
        rc = recipe_insert_slice(r, at, model, s->start, s->end);
    } else {
        at = 0;
        rc = recipe_insert_slice(r, 0, r->base ? "base" : r->models[0].name, 0, ws_n_input_layers(a->ws));
    }
    const struct merge_method *stack = stacking_method();
    if (!rc && stack && !merge_method_find(r->method)->stacks) {
        snprintf(note, sizeof(note), "; the method is now %s (slices stack layers)", stack->name);
        rc = tune_set_method(r, stack->name);
    }
    char done[512];
    if (!rc) {
        const struct recipe_slice_source *s = &r->slices[at].sources[0];
        snprintf(done, sizeof(done), "added slice %zu: %s layers [%d, %d)%s; Enter edits it", at + 1,
                 s->model, s->start, s->end, note);
    }
    return finish(a, r, rc, done, "cannot add a slice");
}

/* Replaces slice i by (model, start, end), saying so. */
static int set_slice(struct ui_app *a, size_t i, const char *model, int start, int end)
{
    struct recipe *r = recipe_clone(ws_recipe(a->ws));
    int rc = r ? recipe_set_slice(r, i, model, start, end) : LM_ENOMEM;
    char done[384], failed[64];
    snprintf(done, sizeof(done), "slice %zu: %s layers [%d, %d)", i + 1, model, start, end);
    snprintf(failed, sizeof(failed), "slice %zu unchanged", i + 1);
    return finish(a, r, rc, done, failed);
}

int sources_set_slice(struct ui_app *a, size_t i, const char *text)
{
    char model[256];
    int start, end;
    if (tune_parse_slice(text, model, sizeof(model), &start, &end) != 0) {
        ui_status(a, true, "%s", lm_last_error());
        return UI_REACT_REDRAW;
    }
    return set_slice(a, i, model, start, end);
}

int sources_step_slice_end(struct ui_app *a, size_t i, int dir)
{
    const struct recipe *cur = ws_recipe(a->ws);
    if (i >= cur->n_slices)
        return UI_REACT_NONE;
    const struct recipe_slice_source *s = &cur->slices[i].sources[0];
    char model[256];
    snprintf(model, sizeof(model), "%s", s->model);
    return set_slice(a, i, model, s->start, s->end + (dir > 0 ? 1 : -1));
}

int sources_remove_slice(struct ui_app *a, size_t i)
{
    struct recipe *r = recipe_clone(ws_recipe(a->ws));
    int rc = r ? recipe_remove_slice(r, i) : LM_ENOMEM;
    char done[64], failed[64];
    snprintf(done, sizeof(done), "removed slice %zu", i + 1);
    snprintf(failed, sizeof(failed), "slice %zu kept", i + 1);
    return finish(a, r, rc, done, failed);
}

int sources_move_slice(struct ui_app *a, size_t i, int dir)
{
    struct recipe *r = recipe_clone(ws_recipe(a->ws));
    int rc = r ? recipe_move_slice(r, i, dir) : LM_ENOMEM;
    char done[96];
    snprintf(done, sizeof(done), "slice %zu moved %s", i + 1, dir < 0 ? "up" : "down");
    return finish(a, r, rc, done, "cannot move the slice");
}
