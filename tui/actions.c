/* What the keys do: one function per action, dispatched from the keymap,
 * plus the status-line inputs and the mouse. Every action returns reaction
 * flags; none draws. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "app.h"
#include "complete.h"
#include "draw.h"
#include "fsutil.h"
#include "lm_error.h"
#include "numfmt.h"
#include "prompt.h"
#include "tune.h"
#include "workspace.h"

/* ===== Selection helpers ===== */

static const struct lt_row *selected_row(const struct ui_app *a)
{
    if (a->sel >= a->table.n_rows)
        return NULL;
    return &a->table.rows[a->table.order[a->sel]];
}

/* The layer range the tuning keys act on: the marked range, or the
 * selected layer. false (with a message) when the selection is no layer. */
static bool selected_range(struct ui_app *a, int *first, int *last)
{
    const struct lt_row *row = selected_row(a);
    if (!row || row->layer < 0) {
        ui_status(a, true, "select a layer row to tune it (embeddings, norm and lm_head: Recipe screen, F2)");
        return false;
    }
    *first = *last = row->layer;
    if (a->mark_layer >= 0) {
        *first = a->mark_layer < row->layer ? a->mark_layer : row->layer;
        *last = a->mark_layer > row->layer ? a->mark_layer : row->layer;
    }
    return true;
}

static size_t list_len(const struct ui_app *a)
{
    switch (a->screen) {
    case UI_SCREEN_LAYERS: return a->table.n_rows;
    case UI_SCREEN_DETAIL: return screen_detail_tensors(a, NULL, 0);
    case UI_SCREEN_RECIPE: return screen_recipe_n_fields(a);
    default: return 1000000;
    }
}

static size_t *list_sel(struct ui_app *a)
{
    switch (a->screen) {
    case UI_SCREEN_LAYERS: return &a->sel;
    case UI_SCREEN_DETAIL: return &a->detail_sel;
    case UI_SCREEN_RECIPE: return &a->recipe_sel;
    default: return &a->text_top;
    }
}

static int move_sel(struct ui_app *a, long delta)
{
    size_t *s = list_sel(a);
    size_t n = list_len(a);
    long v = (long)*s + delta;
    if (v < 0)
        v = 0;
    if (n > 0 && v >= (long)n)
        v = (long)n - 1;
    *s = (size_t)v;
    if (a->screen == UI_SCREEN_DETAIL)
        a->hist_wanted = -1;
    return UI_REACT_REDRAW;
}

static void begin_input(struct ui_app *a, enum ui_input kind, const char *initial)
{
    a->input_kind = kind;
    a->completions[0] = '\0';
    lineedit_set(&a->input, initial);
}

/* Rows a page key moves: the window's height less 8, at least 1. */
static long page_rows(const struct ui_app *a)
{
    int h = getmaxy(a->win);
    return h > 8 ? h - 8 : 1;
}

/* ===== Screens ===== */

static int switch_to(struct ui_app *a, enum ui_screen s)
{
    if (s == UI_SCREEN_HELP || s == UI_SCREEN_LOG) {
        if (a->screen != UI_SCREEN_HELP && a->screen != UI_SCREEN_LOG)
            a->back_screen = a->screen;
        a->text_top = 0;
    }
    if (s == UI_SCREEN_DETAIL && a->screen != UI_SCREEN_DETAIL) {
        a->detail_sel = 0;
        a->detail_top = 0;
    }
    a->screen = s;
    a->prompt_focus = false;
    return UI_REACT_REDRAW;
}

/* Help and Log return to the screen they were opened from, the others to
 * Layers. */
static int go_back(struct ui_app *a)
{
    return switch_to(a, a->screen == UI_SCREEN_HELP || a->screen == UI_SCREEN_LOG ? a->back_screen
                                                                                  : UI_SCREEN_LAYERS);
}

static int next_screen(struct ui_app *a)
{
    static const enum ui_screen next[UI_SCREEN_COUNT] = {
        [UI_SCREEN_LAYERS] = UI_SCREEN_DETAIL, [UI_SCREEN_DETAIL] = UI_SCREEN_RECIPE,
        [UI_SCREEN_RECIPE] = UI_SCREEN_PREVIEW, [UI_SCREEN_PREVIEW] = UI_SCREEN_CHART,
        [UI_SCREEN_CHART] = UI_SCREEN_LAYERS, [UI_SCREEN_HELP] = UI_SCREEN_LAYERS,
        [UI_SCREEN_LOG] = UI_SCREEN_LAYERS,
    };
    return switch_to(a, next[a->screen]);
}

/* Keys are commands until the user asks to type: e, Enter or > give the
 * prompt the keys (Enter runs the line and Esc leaves it, both handing the
 * keys back). */
static int focus_prompt(struct ui_app *a)
{
    switch_to(a, UI_SCREEN_PREVIEW);
    a->prompt_focus = true;
    prompt_begin(NULL);
    return UI_REACT_REDRAW;
}

/* ===== The layer table: search, sort, marks ===== */

static int begin_search(struct ui_app *a)
{
    if (a->screen != UI_SCREEN_LAYERS && a->screen != UI_SCREEN_DETAIL)
        switch_to(a, UI_SCREEN_LAYERS);
    begin_input(a, UI_INPUT_SEARCH, "");
    return UI_REACT_REDRAW;
}

/* Moves to the match at display position `p` and says so, replacing an
 * earlier "no row matches"; p < 0 says that nothing matches. */
static void show_match(struct ui_app *a, const char *needle, long p)
{
    if (p < 0) {
        ui_status(a, true, "no row matches \"%s\"", needle);
        return;
    }
    a->sel = (size_t)p;
    snprintf(a->status, sizeof(a->status), "\"%s\": %s (n finds the next)", needle,
             a->table.rows[a->table.order[p]].label);
    a->status_error = false;
}

static int search_next(struct ui_app *a)
{
    if (!a->search[0]) {
        ui_status(a, false, "nothing searched yet: / searches");
        return UI_REACT_REDRAW;
    }
    show_match(a, a->search, lt_search(&a->table, a->search, a->sel));
    return UI_REACT_REDRAW;
}

/* Sorts by the column after the current one (descending), and after the
 * last column goes back to layer order; the status line says which. */
static int sort_next_column(struct ui_app *a)
{
    lt_sort(&a->table, a->table.sort_col + 1 >= a->table.n_cols ? -1 : a->table.sort_col + 1,
            a->table.sort_col + 1 >= a->table.n_cols ? false : true);
    if (a->table.sort_col >= 0)
        ui_status(a, false, "sorted by %s %s", a->table.cols[a->table.sort_col].title,
                  a->table.cols[a->table.sort_col].group == TN_GROUP_ATTN ? "(attention)"
                  : a->table.cols[a->table.sort_col].group == TN_GROUP_MLP ? "(mlp)" : "");
    else
        ui_status(a, false, "layer order");
    return UI_REACT_REDRAW;
}

static int invert_sort(struct ui_app *a)
{
    lt_sort(&a->table, a->table.sort_col, !a->table.sort_desc);
    return UI_REACT_REDRAW;
}

/* Marks the selected layer as one end of a range, or clears the mark. */
static int toggle_mark(struct ui_app *a)
{
    const struct lt_row *row = selected_row(a);
    if (a->mark_layer >= 0 || !row || row->layer < 0)
        a->mark_layer = -1;
    else
        a->mark_layer = row->layer;
    return UI_REACT_REDRAW;
}

/* ===== Tuning ===== */

static int tune_layers(struct ui_app *a, int first, int last, double v0, double v1)
{
    const struct merge_param_spec *spec = ui_tuned_param(a);
    if (!spec) {
        ui_status(a, true, "method %s takes no numeric parameter to tune", ws_method(a->ws)->name);
        return UI_REACT_REDRAW;
    }
    if (v0 < spec->min || v0 > spec->max || v1 < spec->min || v1 > spec->max) {
        ui_status(a, true, "%s must be within [%g, %g]", spec->name, spec->min, spec->max);
        return UI_REACT_REDRAW;
    }
    struct tune_target t = { spec->name, ui_tuned_model(a), ui_tuned_module(a) };
    struct recipe *r = recipe_clone(ws_recipe(a->ws));
    int rc = r ? tune_set_layers(r, first, last, ws_n_layers(a->ws), &t, v0, v1) : LM_ENOMEM;
    if (!rc)
        rc = ui_apply_recipe(a, r, true);
    else
        ui_status(a, true, "%s", lm_last_error());
    recipe_free(r);
    if (!rc) {
        char where[64];
        snprintf(where, sizeof(where), first == last ? "layer %d" : "layers %d-%d", first, last);
        char tail[sizeof(a->status)];
        snprintf(tail, sizeof(tail), "%s", a->status);
        char x0[LM_NUMBER_MAX], x1[LM_NUMBER_MAX];
        lm_format_number(v0, x0, sizeof(x0));
        lm_format_number(v1, x1, sizeof(x1));
        if (spec->id == MERGE_PARAM_WEIGHT && ui_weight_note(a)) {
            ui_status(a, false, "weight %s %s", x0, ui_weight_note(a));
            msglog_add(&a->log, MSGLOG_INFO, "with one model and normalize: true, TIES and linear divide the "
                       "weighted task vector by the weight (w*d / w = d): the merge and its statistics stay "
                       "the same whatever the weight; lambda scales the result, density trims it, or set "
                       "normalize to false on the Recipe screen (F2)");
        }
        else if (v0 == v1)
            ui_status(a, false, "%s %s%s%s = %s on %s%s%s: %s", spec->name, t.model ? "(" : "",
                      t.model ? t.model : "", t.model ? ")" : "", x0, where, t.module ? " " : "",
                      t.module ? t.module : "", tail);
        else
            ui_status(a, false, "%s gradient %s -> %s on %s: %s", spec->name, x0, x1, where, tail);
    }
    return UI_REACT_REDRAW | UI_REACT_RECIPE;
}

/* The tuned value at layer `layer` (in the tuned module group). */
static double current_value(struct ui_app *a, int layer)
{
    const struct merge_param_spec *spec = ui_tuned_param(a);
    const char *mod = ui_tuned_module(a);
    int n = ws_n_models(a->ws);
    for (size_t i = 0; i < ws_n_tensors(a->ws); i++) {
        const struct ws_tensor *t = ws_tensor(a->ws, i);
        if (t->info.layer != layer)
            continue;
        if (mod && (t->info.group != (strcmp(mod, "mlp") == 0 ? TN_GROUP_MLP : TN_GROUP_ATTN)))
            continue;
        if (!mod && t->info.group != TN_GROUP_ATTN && t->info.group != TN_GROUP_MLP)
            continue;
        struct merge_tensor_params p;
        ws_tensor_params(a->ws, i, &p);
        return tune_param_value(&p, spec->id, spec->per_model && n ? a->model_idx % n : -1);
    }
    return 0;
}

static int step_value(struct ui_app *a, int dir)
{
    if (a->screen == UI_SCREEN_RECIPE)
        return screen_recipe_adjust(a, dir) | UI_REACT_REDRAW;
    int first, last;
    const struct merge_param_spec *spec = ui_tuned_param(a);
    if (!spec) {
        ui_status(a, true, "method %s takes no numeric parameter to tune", ws_method(a->ws)->name);
        return UI_REACT_REDRAW;
    }
    if (!selected_range(a, &first, &last))
        return UI_REACT_REDRAW;
    double v = tune_step_value(spec, current_value(a, first), dir);
    return tune_layers(a, first, last, v, v);
}

/* Opens the value input: with the field's text on the Recipe screen, else
 * with the tuned value of the first selected layer. */
static int edit_value(struct ui_app *a)
{
    char buf[LINEEDIT_MAX];
    int first, last;
    if (a->screen == UI_SCREEN_RECIPE) {
        long none = screen_recipe_row(a, UI_ROW_NO_SLICES, 0);   /* "slices: none": Enter adds one */
        if (none >= 0 && (size_t)none == a->recipe_sel)
            return screen_recipe_add_slice(a);
        if (!screen_recipe_typable(a)) {
            ui_status(a, false, "overrides are edited from the Layers screen; x deletes this one");
            return UI_REACT_REDRAW;
        }
        screen_recipe_value_text(a, buf, sizeof(buf));
        begin_input(a, UI_INPUT_VALUE, buf);
    } else if (ui_tuned_param(a) && selected_range(a, &first, &last)) {
        lm_format_number(current_value(a, first), buf, sizeof(buf));
        begin_input(a, UI_INPUT_VALUE, buf);
    }
    return UI_REACT_REDRAW;
}

/* Opens the FROM,TO input for the marked range, with its current ends. */
static int edit_gradient(struct ui_app *a)
{
    char buf[LINEEDIT_MAX];
    int first, last;
    if (a->mark_layer < 0) {
        ui_status(a, true, "mark a range first: Space on the first layer, then move to the last");
        return UI_REACT_REDRAW;
    }
    if (selected_range(a, &first, &last)) {
        char x0[LM_NUMBER_MAX], x1[LM_NUMBER_MAX];
        lm_format_number(current_value(a, first), x0, sizeof(x0));
        lm_format_number(current_value(a, last), x1, sizeof(x1));
        snprintf(buf, sizeof(buf), "%s,%s", x0, x1);
        begin_input(a, UI_INPUT_GRADIENT, buf);
    }
    return UI_REACT_REDRAW;
}

/* Removes the selected layers' overrides of the tuned parameter, or on the
 * Recipe screen the selected override. */
static int clear_overrides(struct ui_app *a)
{
    int first, last;
    if (a->screen == UI_SCREEN_RECIPE)
        return screen_recipe_clear(a) | UI_REACT_REDRAW;
    if (ui_tuned_param(a) && selected_range(a, &first, &last)) {
        const struct merge_param_spec *spec = ui_tuned_param(a);
        struct tune_target t = { spec->name, ui_tuned_model(a), ui_tuned_module(a) };
        struct recipe *r = recipe_clone(ws_recipe(a->ws));
        if (r) {
            tune_clear_layers(r, first, last, &t);
            ui_apply_recipe(a, r, true);
            recipe_free(r);
        }
    }
    return UI_REACT_REDRAW | UI_REACT_RECIPE;
}

static int next_param(struct ui_app *a)
{
    a->param_idx++;
    a->table_dirty = true;
    return UI_REACT_REDRAW;
}

/* The next model, which is also the first of the pair compared. */
static int next_model(struct ui_app *a)
{
    int n = ws_n_models(a->ws);
    a->model_idx = n ? (a->model_idx + 1) % n : 0;
    a->pair_a = a->model_idx;
    a->pair_b = n > 1 ? (a->model_idx + 1) % n : 0;
    a->table_dirty = true;
    return UI_REACT_REDRAW;
}

/* All modules, attention, MLP. */
static int next_module(struct ui_app *a)
{
    a->module_idx = (a->module_idx + 1) % 3;
    a->table_dirty = true;
    return UI_REACT_REDRAW;
}

static int parse_number(const char *s, double *v)
{
    char *end;
    errno = 0;
    *v = strtod(s, &end);
    while (*end == ' ')
        end++;
    return end == s || *end || errno || !isfinite(*v) ? -1 : 0;
}

/* ===== Saving ===== */

/* The recipe's paths are rewritten relative to the folder it is saved in
 * (absolute where nothing but the root is shared), so that it opens and
 * merges from wherever it is saved. */
static int save_recipe(struct ui_app *a, const char *path)
{
    int rc = recipe_save_as(ws_recipe(a->ws), path);
    if (rc)
        return rc;
    recipe_free(a->saved);
    a->saved = recipe_clone(ws_recipe(a->ws));
    free(a->save_path);
    a->save_path = lm_strdup(path);
    return 0;
}

static int save_yaml(struct ui_app *a, const char *path)
{
    char *warnings = NULL;
    char *yaml = recipe_to_mergekit_yaml(ws_recipe(a->ws), &warnings);
    if (!yaml)
        return LM_EFORMAT;
    int rc = lm_write_file_atomic(path, yaml, strlen(yaml));
    free(yaml);
    if (warnings) {
        msglog_add(&a->log, MSGLOG_WARN, warnings);
        free(warnings);
    }
    return rc;
}

static void default_path(struct ui_app *a, char *buf, size_t size, const char *ext)
{
    if (a->save_path) {
        snprintf(buf, size, "%s", a->save_path);
        if (ext) {
            char *dot = strrchr(buf, '.');
            if (dot && !strchr(dot, '/'))
                *dot = '\0';
            strncat(buf, ext, size - strlen(buf) - 1);
        }
    } else {
        snprintf(buf, size, "recipe%s", ext ? ext : ".json");
    }
}

/* Opens the path input of a save, filled with the last saved path (its
 * extension replaced by `ext`) or recipe.json. */
static int ask_save_path(struct ui_app *a, enum ui_input kind, const char *ext)
{
    char buf[LINEEDIT_MAX];
    default_path(a, buf, sizeof(buf), ext);
    begin_input(a, kind, buf);
    return UI_REACT_REDRAW;
}

static int ask_write_dir(struct ui_app *a)
{
    begin_input(a, UI_INPUT_WRITE, "merged");
    return UI_REACT_REDRAW;
}

/* ===== Status-line input ===== */

static int finish_input(struct ui_app *a, enum ui_input kind, const char *text)
{
    double v;
    int first, last;
    switch (kind) {
    case UI_INPUT_SEARCH: {
        snprintf(a->search, sizeof(a->search), "%s", text);
        if (*text)
            show_match(a, text, lt_search(&a->table, a->search, a->sel ? a->sel - 1 : a->table.n_rows - 1));
        return UI_REACT_REDRAW;
    }
    case UI_INPUT_VALUE:
        if (parse_number(text, &v) != 0 && a->screen != UI_SCREEN_RECIPE) {
            ui_status(a, true, "\"%s\" is not a number", text);
            return UI_REACT_REDRAW;
        }
        if (a->screen == UI_SCREEN_RECIPE)
            return screen_recipe_set(a, text) | UI_REACT_REDRAW;
        if (!selected_range(a, &first, &last))
            return UI_REACT_REDRAW;
        return tune_layers(a, first, last, v, v);
    case UI_INPUT_GRADIENT: {
        char *comma = strchr(text, ',');
        double v1;
        char left[LINEEDIT_MAX];
        snprintf(left, sizeof(left), "%.*s", comma ? (int)(comma - text) : 0, text);
        if (!comma || parse_number(left, &v) != 0 || parse_number(comma + 1, &v1) != 0) {
            ui_status(a, true, "expected FROM,TO, e.g. 0.2,0.8");
            return UI_REACT_REDRAW;
        }
        if (!selected_range(a, &first, &last))
            return UI_REACT_REDRAW;
        a->mark_layer = -1;
        return tune_layers(a, first, last, v, v1);
    }
    case UI_INPUT_SAVE:
        if (save_recipe(a, text) != 0)
            ui_status(a, true, "cannot save: %s", lm_last_error());
        else
            ui_status(a, false, "saved the recipe to %s", text);
        return UI_REACT_REDRAW;
    case UI_INPUT_SAVE_YAML:
        if (save_yaml(a, text) != 0)
            ui_status(a, true, "cannot save: %s", lm_last_error());
        else
            ui_status(a, false, "saved mergekit YAML to %s (see the log for what it cannot express)", text);
        return UI_REACT_REDRAW;
    case UI_INPUT_WRITE:
        if (!*text) {
            ui_status(a, true, "no directory given");
            return UI_REACT_REDRAW;
        }
        ui_start_write(a, text, false);
        return UI_REACT_REDRAW;
    case UI_INPUT_WRITE_FORCE:
        if (text[0] == 'y' || text[0] == 'Y')
            ui_start_write(a, a->pending_write, true);
        else
            ui_status(a, false, "nothing written; %s is unchanged", a->pending_write);
        return UI_REACT_REDRAW;
    case UI_INPUT_QUIT:
        return text[0] == 'y' || text[0] == 'Y' ? UI_REACT_QUIT : UI_REACT_REDRAW;
    case UI_INPUT_ADD_MODEL:
        return screen_recipe_add_model(a, text) | UI_REACT_REDRAW;
    default:
        return UI_REACT_REDRAW;
    }
}

/* Whether input `kind` takes a path (Tab completes it). */
static bool input_takes_path(const struct ui_app *a, enum ui_input kind)
{
    return kind == UI_INPUT_ADD_MODEL || kind == UI_INPUT_SAVE || kind == UI_INPUT_SAVE_YAML ||
           kind == UI_INPUT_WRITE ||
           (kind == UI_INPUT_VALUE && a->screen == UI_SCREEN_RECIPE && screen_recipe_edits_path(a));
}

/* Tab: completes the path typed so far, listing the matches above the
 * input when there are several. */
static void complete_input(struct ui_app *a)
{
    char out[LINEEDIT_MAX], list[sizeof(a->completions) - 32];
    int n = complete_path(a->input.text, out, sizeof(out), list, sizeof(list));
    if (n < 0)
        snprintf(a->completions, sizeof(a->completions), "no folder to complete in");
    else if (n == 0)
        snprintf(a->completions, sizeof(a->completions), "nothing matches");
    else if (n == 1)
        a->completions[0] = '\0';
    else
        snprintf(a->completions, sizeof(a->completions), "%d matches: %s", n, list);
    lineedit_set(&a->input, out);
}

int ui_input_key(struct ui_app *a, int key)
{
    enum ui_input kind = a->input_kind;
    if (key == 27 || key == 7) {
        a->input_kind = UI_INPUT_NONE;
        return UI_REACT_REDRAW;
    }
    if (key == '\t' && input_takes_path(a, kind)) {
        complete_input(a);
        return UI_REACT_REDRAW;
    }
    a->completions[0] = '\0';
    if (kind == UI_INPUT_QUIT || kind == UI_INPUT_WRITE_FORCE) {
        a->input_kind = UI_INPUT_NONE;
        char t[2] = { (char)key, 0 };
        if (key == 3)   /* Ctrl-C: quit means yes, a forced write means no */
            t[0] = kind == UI_INPUT_QUIT ? 'y' : 'n';
        return finish_input(a, kind, t);
    }
    if (key == '\n' || key == '\r' || key == KEY_ENTER) {
        a->input_kind = UI_INPUT_NONE;
        char text[LINEEDIT_MAX];
        snprintf(text, sizeof(text), "%s", a->input.text);
        return finish_input(a, kind, text);
    }
    lineedit_key(&a->input, key);
    if (kind == UI_INPUT_SEARCH && a->input.len) {
        long p = lt_search(&a->table, a->input.text, a->sel ? a->sel - 1 : a->table.n_rows - 1);
        if (p >= 0)
            a->sel = (size_t)p;
    }
    return UI_REACT_REDRAW;
}

/* ===== Undo ===== */

static int undo_step(struct ui_app *a, bool undo)
{
    struct recipe *r = undo ? undo_undo(&a->undo, ws_recipe(a->ws)) : undo_redo(&a->undo, ws_recipe(a->ws));
    if (!r) {
        ui_status(a, false, undo ? "nothing to undo" : "nothing to redo");
        return UI_REACT_REDRAW;
    }
    if (ui_apply_recipe(a, r, false) != 0) {
        undo_unwind(&a->undo, r, undo);
        return UI_REACT_REDRAW;
    }
    recipe_free(r);
    char tail[sizeof(a->status)];
    snprintf(tail, sizeof(tail), "%s", a->status);
    ui_status(a, false, "%s: %s", undo ? "undone" : "redone", tail);
    return UI_REACT_REDRAW | UI_REACT_RECIPE;
}

/* ===== Jobs and the preview ===== */

static int toggle_compare(struct ui_app *a)
{
    job_stop(&a->job);
    a->preview.compare = !a->preview.compare;
    ui_status(a, false, "compare mode %s", a->preview.compare ? "on: base and each model beside the merge"
                                                             : "off");
    if (a->preview.prompt && *a->preview.prompt)
        ui_start_preview(a);
    return UI_REACT_REDRAW;
}

/* Cancels the running job; with none, clears the mark; with no mark, goes
 * back (from any screen but Layers). */
static int cancel_or_back(struct ui_app *a)
{
    if (job_state(&a->job) == JOB_RUNNING) {
        job_cancel(&a->job);
        ui_status(a, false, "cancelled");
        if (a->job.kind == UI_JOB_STATS)
            a->stats_wanted = false;
    } else if (a->mark_layer >= 0) {
        a->mark_layer = -1;
    } else if (a->screen != UI_SCREEN_LAYERS) {
        return go_back(a);
    }
    return UI_REACT_REDRAW;
}

/* ===== The chart ===== */

static int chart_stat_step(struct ui_app *a, int dir)
{
    a->chart_stat += dir;
    return UI_REACT_REDRAW;
}

static int chart_toggle_projections(struct ui_app *a)
{
    a->chart_projections = !a->chart_projections;
    return UI_REACT_REDRAW;
}

/* Selects the layer next to the selected one (in layer order, whatever
 * the table's sort), staying on the first or last. */
static int step_layer(struct ui_app *a, int dir)
{
    const struct lt_row *row = selected_row(a);
    int layer = row && row->layer >= 0 ? row->layer + dir : 0;
    if (layer < 0)
        layer = 0;
    if (layer >= ws_n_layers(a->ws))
        layer = ws_n_layers(a->ws) - 1;
    long p = lt_find_layer(&a->table, layer);
    if (p >= 0)
        a->sel = (size_t)p;
    return UI_REACT_REDRAW;
}

/* ===== Dispatch ===== */

/* Enter: the layer's tensor detail, the field's value, or the prompt. */
static int open_selected(struct ui_app *a)
{
    if (a->screen == UI_SCREEN_LAYERS)
        return switch_to(a, UI_SCREEN_DETAIL);
    if (a->screen == UI_SCREEN_RECIPE)
        return edit_value(a);
    if (a->screen == UI_SCREEN_PREVIEW)
        return focus_prompt(a);
    return UI_REACT_NONE;
}

static int force_redraw(void)
{
    clearok(curscr, TRUE);
    return UI_REACT_REDRAW;
}

static int ask_quit(struct ui_app *a)
{
    if (!ui_unsaved(a))
        return UI_REACT_QUIT;
    begin_input(a, UI_INPUT_QUIT, "");
    return UI_REACT_REDRAW;
}

int ui_run_action(struct ui_app *a, enum ui_action action)
{
    switch (action) {
    case UI_ACTION_NONE:        return UI_REACT_NONE;
    case UI_ACTION_UP:          return move_sel(a, -1);
    case UI_ACTION_DOWN:        return move_sel(a, 1);
    case UI_ACTION_PAGE_UP:     return move_sel(a, -page_rows(a));
    case UI_ACTION_PAGE_DOWN:   return move_sel(a, page_rows(a));
    case UI_ACTION_HOME:        return move_sel(a, -1000000);
    case UI_ACTION_END:         return move_sel(a, 1000000);
    case UI_ACTION_DEC:         return step_value(a, -1);
    case UI_ACTION_INC:         return step_value(a, 1);
    case UI_ACTION_ENTER:       return open_selected(a);
    case UI_ACTION_BACK:        return go_back(a);
    case UI_ACTION_NEXT_SCREEN: return next_screen(a);
    case UI_ACTION_HELP:        return switch_to(a, UI_SCREEN_HELP);
    case UI_ACTION_LAYERS:      return switch_to(a, UI_SCREEN_LAYERS);
    case UI_ACTION_DETAIL:      return switch_to(a, UI_SCREEN_DETAIL);
    case UI_ACTION_RECIPE:      return switch_to(a, UI_SCREEN_RECIPE);
    case UI_ACTION_PREVIEW:     return switch_to(a, UI_SCREEN_PREVIEW);
    case UI_ACTION_LOG:         return switch_to(a, UI_SCREEN_LOG);
    case UI_ACTION_SEARCH:      return begin_search(a);
    case UI_ACTION_SEARCH_NEXT: return search_next(a);
    case UI_ACTION_SORT:        return sort_next_column(a);
    case UI_ACTION_SORT_INVERT: return invert_sort(a);
    case UI_ACTION_MARK:        return toggle_mark(a);
    case UI_ACTION_SET_VALUE:   return edit_value(a);
    case UI_ACTION_GRADIENT:    return edit_gradient(a);
    case UI_ACTION_PARAM:       return next_param(a);
    case UI_ACTION_MODEL:       return next_model(a);
    case UI_ACTION_MODULE:      return next_module(a);
    case UI_ACTION_CLEAR:       return clear_overrides(a);
    case UI_ACTION_ADD_MODEL:   begin_input(a, UI_INPUT_ADD_MODEL, ""); return UI_REACT_REDRAW;
    case UI_ACTION_ADD_SLICE:   return screen_recipe_add_slice(a) | UI_REACT_REDRAW;
    case UI_ACTION_MOVE_UP:     return screen_recipe_move(a, -1) | UI_REACT_REDRAW;
    case UI_ACTION_MOVE_DOWN:   return screen_recipe_move(a, 1) | UI_REACT_REDRAW;
    case UI_ACTION_UNDO:        return undo_step(a, true);
    case UI_ACTION_REDO:        return undo_step(a, false);
    case UI_ACTION_SAVE:        return ask_save_path(a, UI_INPUT_SAVE, NULL);
    case UI_ACTION_SAVE_YAML:   return ask_save_path(a, UI_INPUT_SAVE_YAML, ".yaml");
    case UI_ACTION_WRITE:       return ask_write_dir(a);
    case UI_ACTION_PROMPT:      return focus_prompt(a);
    case UI_ACTION_COMPARE:     return toggle_compare(a);
    case UI_ACTION_CHART:       return switch_to(a, UI_SCREEN_CHART);
    case UI_ACTION_STAT_NEXT:   return chart_stat_step(a, 1);
    case UI_ACTION_STAT_PREV:   return chart_stat_step(a, -1);
    case UI_ACTION_PROJECTIONS: return chart_toggle_projections(a);
    case UI_ACTION_LAYER_PREV:  return step_layer(a, -1);
    case UI_ACTION_LAYER_NEXT:  return step_layer(a, 1);
    case UI_ACTION_CANCEL:      return cancel_or_back(a);
    case UI_ACTION_REDRAW:      return force_redraw();
    case UI_ACTION_QUIT:        return ask_quit(a);
    case UI_ACTION_INTERRUPT:   return ask_quit(a);
    default:                    return UI_REACT_NONE;
    }
}

/* ===== Mouse ===== */

int ui_mouse(struct ui_app *a)
{
    MEVENT ev;
    if (getmouse(&ev) != OK)
        return UI_REACT_NONE;
    if (ev.bstate & BUTTON4_PRESSED)
        return move_sel(a, -3);
#ifdef BUTTON5_PRESSED
    if (ev.bstate & BUTTON5_PRESSED)
        return move_sel(a, 3);
#endif
    if (!(ev.bstate & (BUTTON1_CLICKED | BUTTON1_PRESSED | BUTTON1_DOUBLE_CLICKED)))
        return UI_REACT_NONE;
    int h = getmaxy(a->win);
    if (ev.y == h - 1) {
        const struct ui_binding *items[16];
        int xs[17];
        size_t n = draw_function_bar_layout(a->screen, getmaxx(a->win), items, xs, 16);
        for (size_t i = 0; i < n; i++)
            if (ev.x >= xs[i] && ev.x < xs[i + 1])
                return ui_run_action(a, items[i]->action);
        return UI_REACT_NONE;
    }
    if (a->screen == UI_SCREEN_LAYERS) {
        if (ev.y == a->col_title_y) {
            for (int c = a->n_col_x - 1; c >= 0; c--)
                if (ev.x >= a->col_x[c]) {
                    bool same = a->table.sort_col == c;
                    lt_sort(&a->table, c, same ? !a->table.sort_desc : true);
                    return UI_REACT_REDRAW;
                }
            lt_sort(&a->table, -1, false);
            return UI_REACT_REDRAW;
        }
        if (ev.y >= a->list_y0) {
            size_t p = a->top + (size_t)(ev.y - a->list_y0);
            if (p < a->table.n_rows) {
                a->sel = p;
                if (ev.bstate & BUTTON1_DOUBLE_CLICKED)
                    return switch_to(a, UI_SCREEN_DETAIL);
            }
        }
        return UI_REACT_REDRAW;
    }
    if ((a->screen == UI_SCREEN_DETAIL || a->screen == UI_SCREEN_RECIPE) && ev.y >= 3) {
        size_t *s = list_sel(a);
        size_t top = a->screen == UI_SCREEN_DETAIL ? a->detail_top : a->recipe_top;
        size_t p = top + (size_t)(ev.y - 3);
        if (p < list_len(a))
            *s = p;
        return UI_REACT_REDRAW;
    }
    return UI_REACT_NONE;
}
