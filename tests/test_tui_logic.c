/* The TUI's logic without a terminal: key bindings, undo/redo, recipe
 * edits for per-layer tuning, theme files, the layer table's sort and
 * search, path completion, and the Recipe screen's model list and slice
 * editor driven on a real workspace of fixture models. */
#include <curses.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "app.h"
#include "complete.h"
#include "fixture.h"
#include "keymap.h"
#include "layer_table.h"
#include "lm_error.h"
#include "merge_plan.h"
#include "recipe.h"
#include "recipe_edit.h"
#include "test.h"
#include "theme_json.h"
#include "tune.h"
#include "undo.h"
#include "workspace.h"

static const char recipe_text[] =
    "{\"format\": \"mergescope-recipe/1\", \"base\": \"b\", \"models\": ["
    "{\"name\": \"quick\", \"path\": \"q\"}, {\"name\": \"long\", \"path\": \"l\", \"weight\": 0.7}],"
    "\"method\": \"ties\", \"params\": {\"lambda\": 1.0, \"density\": 0.2}}";

static struct recipe *load(void)
{
    return recipe_parse(recipe_text, strlen(recipe_text), "t.json", NULL);
}

static double resolve(const struct recipe *r, const char *name, int model, enum merge_param_id id)
{
    struct merge_plan plan;
    if (merge_plan_init(&plan, r) != 0)
        return NAN;
    plan.n_layers = 4;
    struct tn_info info;
    tn_classify(name, &info);
    struct merge_tensor_params p;
    merge_plan_resolve(&plan, name, &info, &p);
    return id == MERGE_PARAM_WEIGHT ? p.weight[model] : id == MERGE_PARAM_DENSITY ? p.density[model] : p.lambda;
}

static void test_keymap(void)
{
    TEST_COND("j moves down on the Layers screen", keymap_lookup(UI_SCREEN_LAYERS, 'j') == UI_ACTION_DOWN);
    TEST_COND("q quits from Layers", keymap_lookup(UI_SCREEN_LAYERS, 'q') == UI_ACTION_QUIT);
    TEST_COND("q goes back from Detail", keymap_lookup(UI_SCREEN_DETAIL, 'q') == UI_ACTION_BACK);
    TEST_COND("? and F1 open help everywhere", keymap_lookup(UI_SCREEN_PREVIEW, '?') == UI_ACTION_HELP &&
              keymap_lookup(UI_SCREEN_LOG, KEY_F(1)) == UI_ACTION_HELP);
    TEST_COND("u undoes and Ctrl-R redoes", keymap_lookup(UI_SCREEN_LAYERS, 'u') == UI_ACTION_UNDO &&
              keymap_lookup(UI_SCREEN_RECIPE, 18) == UI_ACTION_REDO);
    TEST_COND("/ searches, s saves, w writes", keymap_lookup(UI_SCREEN_LAYERS, '/') == UI_ACTION_SEARCH &&
              keymap_lookup(UI_SCREEN_LAYERS, 's') == UI_ACTION_SAVE &&
              keymap_lookup(UI_SCREEN_LAYERS, 'w') == UI_ACTION_WRITE);
    TEST_COND("Ctrl-C is an interrupt on every screen", keymap_lookup(UI_SCREEN_HELP, 3) == UI_ACTION_INTERRUPT);
    TEST_COND("an unbound key is no action", keymap_lookup(UI_SCREEN_LAYERS, 'Z') == UI_ACTION_NONE);
    const struct ui_binding *bar[16];
    size_t n = keymap_function_bar(UI_SCREEN_LAYERS, bar, 16);
    TEST_COND("the Layers function bar has 10 keys, F1 Help first and F10 Quit last",
              n == 10 && strcmp(bar[0]->label, "Help") == 0 && strcmp(bar[n - 1]->label, "Quit") == 0);
    n = keymap_function_bar(UI_SCREEN_PREVIEW, bar, 16);
    bool has_search = false;
    for (size_t i = 0; i < n; i++)
        has_search |= strcmp(bar[i]->label, "Search") == 0;
    TEST_COND("the Preview function bar has no Search", !has_search);
    char buf[32];
    TEST_COND("key names", strcmp(keymap_key_name(KEY_F(10), buf, sizeof(buf)), "F10") == 0 &&
              strcmp(keymap_key_name(18, buf, sizeof(buf)), "Ctrl-R") == 0);
    bool all_help = true;
    for (int a = 1; a < UI_ACTION_COUNT; a++)
        all_help &= ui_action_help((enum ui_action)a)[0] != '\0';
    TEST_COND("every action has a help line", all_help);
}

static void test_undo(void)
{
    struct recipe *r0 = load();
    struct undo_stack u = { 0 };
    TEST_COND("nothing to undo at first", !undo_can_undo(&u) && undo_undo(&u, r0) == NULL);
    struct recipe *r1 = recipe_clone(r0);
    undo_record(&u, r0);
    tune_set_global(r1, "lambda", NULL, 0.5);
    struct recipe *back = undo_undo(&u, r1);
    TEST_COND("undo gives the recipe before the edit", back && recipe_equal(back, r0));
    TEST_COND("redo becomes possible", undo_can_redo(&u));
    struct recipe *fwd = undo_redo(&u, back);
    TEST_COND("redo gives the edited recipe", fwd && recipe_equal(fwd, r1));
    undo_record(&u, fwd);
    TEST_COND("a new edit clears redo", !undo_can_redo(&u));
    for (int i = 0; i < UNDO_MAX_DEPTH + 10; i++)
        undo_record(&u, r0);
    TEST_COND("the stack is bounded", u.n_undo == UNDO_MAX_DEPTH);
    recipe_free(back);
    recipe_free(fwd);
    recipe_free(r1);
    recipe_free(r0);
    undo_deinit(&u);
}

static void test_tune(void)
{
    struct recipe *r = load();
    struct tune_target t = { "weight", "long", "mlp" };
    TEST_COND("a per-layer per-module weight becomes an override", tune_set_layers(r, 1, 1, 4, &t, 0.6, 0.6) == 0 &&
              r->n_overrides == 1 && r->overrides[0].n_layers == 1 && r->overrides[0].layers[0].first == 1 &&
              strcmp(r->overrides[0].modules[0], "mlp") == 0 &&
              r->overrides[0].params[0].value.kind == RECIPE_VALUE_PER_MODEL);
    TEST_NEAR("it applies to layer 1's MLP for that model", resolve(r, "model.layers.1.mlp.up_proj.weight", 1,
              MERGE_PARAM_WEIGHT), 0.6, 0);
    TEST_NEAR("not to its attention", resolve(r, "model.layers.1.self_attn.q_proj.weight", 1, MERGE_PARAM_WEIGHT), 0.7, 0);
    TEST_NEAR("nor to the other model", resolve(r, "model.layers.1.mlp.up_proj.weight", 0, MERGE_PARAM_WEIGHT), 1, 0);
    tune_set_layers(r, 1, 1, 4, &t, 0.4, 0.4);
    TEST_COND("setting the same layer again replaces the entry", r->n_overrides == 1);
    TEST_NEAR("with the new value", resolve(r, "model.layers.1.mlp.up_proj.weight", 1, MERGE_PARAM_WEIGHT), 0.4, 0);
    struct tune_target d = { "density", NULL, NULL };
    tune_set_layers(r, 0, 2, 4, &d, 0.1, 0.3);
    TEST_COND("a gradient over part of the stack is one entry per layer", r->n_overrides == 4);
    TEST_NEAR("gradient at the middle layer", resolve(r, "model.layers.1.mlp.up_proj.weight", 0, MERGE_PARAM_DENSITY), 0.2, 1e-12);
    TEST_NEAR("gradient outside the range keeps the global", resolve(r, "model.layers.3.mlp.up_proj.weight", 0, MERGE_PARAM_DENSITY), 0.2, 0);
    tune_set_layers(r, 0, 3, 4, &d, 0.1, 0.4);
    TEST_COND("a gradient over every layer is a global list and drops the covered entries",
              r->n_overrides == 1 && recipe_find_param(r->params, r->n_params, "density")->value.kind == RECIPE_VALUE_LIST);
    TEST_NEAR("global gradient at layer 2", resolve(r, "model.layers.2.mlp.up_proj.weight", 0, MERGE_PARAM_DENSITY), 0.3, 1e-12);
    char *json = recipe_to_json(r);
    struct recipe *back = json ? recipe_parse(json, strlen(json), "saved", NULL) : NULL;
    TEST_COND("the edited recipe saves and loads back equal", back && recipe_equal(back, r));
    recipe_free(back);
    free(json);
    tune_clear_layers(r, 0, 3, &t);
    TEST_COND("clearing the layers' weight drops the empty override", r->n_overrides == 0);
    TEST_COND("switching to a method without density drops it", tune_set_method(r, "task_arithmetic") == 0 &&
              !recipe_find_param(r->params, r->n_params, "density"));
    TEST_COND("an unknown method is refused", tune_set_method(r, "nope") != 0);
    TEST_COND("layers out of range are refused", tune_set_layers(r, 2, 7, 4, &t, 1, 1) != 0);
    recipe_free(r);
}

static void test_theme_json(void)
{
    const char *good = "{\"name\": \"x\", \"roles\": {\"selection\": {\"fg\": \"black\", \"bg\": 214, "
                       "\"bg8\": \"yellow\", \"attrs\": [\"bold\", \"underline\"]}}}";
    struct theme_file *t = theme_file_parse(good, strlen(good), "x.json");
    TEST_COND("a theme file parses", t && t->n_entries == 1 && t->entries[0].fg == 0 && t->entries[0].bg == 214 &&
              t->entries[0].bg8 == 3 && t->entries[0].attrs == (THEME_ATTR_BOLD | THEME_ATTR_UNDERLINE));
    theme_file_free(t);
    const char *bad_color = "{\"roles\": {\"selection\": {\"fg\": \"purple\"}}}";
    t = theme_file_parse(bad_color, strlen(bad_color), "x.json");
    TEST_COND("an unknown colour is an error naming the key", !t && strstr(lm_last_error(), "roles.selection.fg"));
    const char *bad_num = "{\"roles\": {\"a\": {\"fg\": 300}}}";
    t = theme_file_parse(bad_num, strlen(bad_num), "x.json");
    TEST_COND("a colour number above 255 is an error", !t && strstr(lm_last_error(), "300"));
    const char *bad_key = "{\"roles\": {\"a\": {\"colour\": 1}}}";
    t = theme_file_parse(bad_key, strlen(bad_key), "x.json");
    TEST_COND("an unknown key is an error", !t && strstr(lm_last_error(), "colour"));
    t = theme_file_parse("{", 1, "x.json");
    TEST_COND("malformed JSON is an error", !t);
    static const char *const shipped[] = { "dark", "default", "light", "high-contrast", "mono" };
    const char *src = getenv("MS_SOURCE_DIR");
    for (size_t i = 0; src && i < sizeof(shipped) / sizeof(shipped[0]); i++) {
        char path[1024];
        snprintf(path, sizeof(path), "%s/themes/%s.json", src, shipped[i]);
        t = theme_file_load(path);
        char descr[128];
        snprintf(descr, sizeof(descr), "themes/%s.json parses", shipped[i]);
        TEST_COND(descr, t != NULL);
        theme_file_free(t);
    }
}

static void test_table(void)
{
    struct layer_table t = { 0 };
    const char *extra[] = { "embed", "lm_head" };
    enum tn_group groups[] = { TN_GROUP_EMBED, TN_GROUP_LM_HEAD };
    TEST_COND("a table for two task vectors", lt_setup(&t, 2, "weight", 12, extra, groups, 2) == 0 &&
              t.n_rows == 14 && t.n_cols == 9 && t.cols[3].metric == LT_CONFLICT && t.cols[8].metric == LT_COEF);
    TEST_COND("embeddings come first, lm_head last", strcmp(t.rows[0].label, "embed") == 0 &&
              strcmp(t.rows[13].label, "lm_head") == 0 && t.rows[1].layer == 0);
    for (size_t r = 0; r < t.n_rows; r++)
        t.rows[r].value[3] = r == 5 ? 0.9 : r == 13 ? NAN : 0.1 * (double)(r % 4);
    lt_sort(&t, 3, true);
    TEST_COND("sorting by conflict puts the worst layer first", t.order[0] == 5);
    TEST_COND("unknown values sort last", t.order[t.n_rows - 1] == 13);
    lt_sort(&t, -1, false);
    TEST_COND("natural order again", t.order[0] == 0 && t.order[5] == 5);
    TEST_COND("search by number finds the layer", lt_search(&t, "10", 0) == 11);
    TEST_COND("search by text is case-insensitive", lt_search(&t, "LM_", 0) == 13);
    TEST_COND("no match is -1", lt_search(&t, "zzz", 0) == -1);
    TEST_NEAR("conflict heat is twice the rate", lt_heat(&t, 3, 0.25), 0.5, 1e-12);
    TEST_COND("single task vector columns", lt_setup(&t, 1, NULL, 3, extra, groups, 2) == 0 && t.n_cols == 8 &&
              t.cols[2].metric == LT_TOPK && t.cols[3].metric == LT_SIGN_FLIP);
    lt_free(&t);
}

static void test_source_keys(void)
{
    TEST_COND("a adds a model and A a slice on the Recipe screen",
              keymap_lookup(UI_SCREEN_RECIPE, 'a') == UI_ACTION_ADD_MODEL &&
              keymap_lookup(UI_SCREEN_RECIPE, 'A') == UI_ACTION_ADD_SLICE);
    TEST_COND("K and J (Shift-Up, Shift-Down) move a slice",
              keymap_lookup(UI_SCREEN_RECIPE, 'K') == UI_ACTION_MOVE_UP &&
              keymap_lookup(UI_SCREEN_RECIPE, 'J') == UI_ACTION_MOVE_DOWN &&
              keymap_lookup(UI_SCREEN_RECIPE, KEY_SR) == UI_ACTION_MOVE_UP);
    TEST_COND("... nowhere else", keymap_lookup(UI_SCREEN_LAYERS, 'a') == UI_ACTION_NONE &&
              keymap_lookup(UI_SCREEN_LAYERS, 'K') == UI_ACTION_NONE);
    char buf[32];
    TEST_COND("Shift-Up has a name for the help screen", strcmp(keymap_key_name(KEY_SR, buf, sizeof(buf)), "Shift-Up") == 0);
}

static void test_parse_slice(void)
{
    char model[32];
    int a = -1, b = -1;
    TEST_COND("a slice typed \"quick 0 4\"", tune_parse_slice("quick 0 4", model, sizeof(model), &a, &b) == 0 &&
              strcmp(model, "quick") == 0 && a == 0 && b == 4);
    TEST_COND("... \"long-2 1-3\" (a name with a dash, a range with one)",
              tune_parse_slice("long-2 1-3", model, sizeof(model), &a, &b) == 0 && strcmp(model, "long-2") == 0 &&
              a == 1 && b == 3);
    TEST_COND("... \" base [2, 5)\" and \"base 2:5\"",
              tune_parse_slice(" base [2, 5)", model, sizeof(model), &a, &b) == 0 && a == 2 && b == 5 &&
              tune_parse_slice("base 2:5", model, sizeof(model), &a, &b) == 0 && strcmp(model, "base") == 0);
    TEST_COND("one number is not a slice, and the message shows the form",
              tune_parse_slice("quick 4", model, sizeof(model), &a, &b) == LM_EINVAL &&
              strstr(lm_last_error(), "MODEL START END"));
    TEST_COND("three numbers are not either", tune_parse_slice("quick 1 2 3", model, sizeof(model), &a, &b) != 0);
    TEST_COND("a negative layer is refused", tune_parse_slice("quick -1 2", model, sizeof(model), &a, &b) != 0 &&
              strstr(lm_last_error(), "no negative layer"));
    TEST_COND("letters after the model are refused", tune_parse_slice("quick x 2", model, sizeof(model), &a, &b) != 0);
}

static void test_fit_method(void)
{
    struct recipe *r = load();   /* ties over quick and long */
    char was[32];
    TEST_COND("a method that takes the models stays", r && tune_fit_method(r, was, sizeof(was)) == 0 &&
              was[0] == '\0' && strcmp(r->method, "ties") == 0);
    tune_set_method(r, "model_stock");
    recipe_remove_model(r, 1);
    TEST_COND("model_stock with one model: the first method that takes one (linear), and what it was",
              tune_fit_method(r, was, sizeof(was)) == 0 && strcmp(was, "model_stock") == 0 &&
              strcmp(r->method, "linear") == 0);
    tune_set_method(r, "ties");
    free(r->base);
    r->base = NULL;
    TEST_COND("ties without a base: the first method that merges without one",
              tune_fit_method(r, was, sizeof(was)) == 0 && strcmp(was, "ties") == 0 && strcmp(r->method, "linear") == 0);
    recipe_free(r);
}

static void test_complete(const char *dir)
{
    char d[600], out[LINEEDIT_MAX], list[256], text[700];
    snprintf(d, sizeof(d), "%s/c", dir);
    mkdir(d, 0755);
    snprintf(text, sizeof(text), "%s/alpha", d);
    mkdir(text, 0755);
    snprintf(text, sizeof(text), "%s/alpine.txt", d);
    fx_write_text(text, "x");
    snprintf(text, sizeof(text), "%s/beta", d);
    mkdir(text, 0755);
    snprintf(text, sizeof(text), "%s/.hidden", d);
    mkdir(text, 0755);
    snprintf(text, sizeof(text), "%s/al", d);
    int n = complete_path(text, out, sizeof(out), list, sizeof(list));
    char want[700];
    snprintf(want, sizeof(want), "%s/alp", d);
    TEST_COND("Tab on \"c/al\": two matches, completed to their common prefix \"c/alp\", both listed",
              n == 2 && strcmp(out, want) == 0 && strcmp(list, "alpha  alpine.txt") == 0);
    snprintf(text, sizeof(text), "%s/b", d);
    n = complete_path(text, out, sizeof(out), list, sizeof(list));
    snprintf(want, sizeof(want), "%s/beta/", d);
    TEST_COND("one match that is a directory gets its '/'", n == 1 && strcmp(out, want) == 0);
    snprintf(text, sizeof(text), "%s/", d);
    n = complete_path(text, out, sizeof(out), list, sizeof(list));
    TEST_COND("names starting with '.' only when typed", n == 3 && !strstr(list, "hidden"));
    snprintf(text, sizeof(text), "%s/z", d);
    n = complete_path(text, out, sizeof(out), list, sizeof(list));
    TEST_COND("no match leaves the text as it was", n == 0 && strcmp(out, text) == 0);
    snprintf(text, sizeof(text), "%s/nope/x", d);
    TEST_COND("a folder that cannot be read is -1", complete_path(text, out, sizeof(out), list, sizeof(list)) == -1);
}

/* The Recipe screen's model list and slice editor, through the functions
 * its keys call, on a workspace of the fixture trio (in `dir`). */
static void test_recipe_sources(const char *dir)
{
    struct fx_model b, q, l;
    if (fx_make_trio(dir, 11, &b, &q, &l) != 0 || chdir(dir) != 0) {
        TEST_COND("fixture trio for the Recipe screen", false);
        return;
    }
    TEST_COND("fixture trio for the Recipe screen", fx_find(&l, "lm_head.weight") != NULL);
    fx_free(&b);
    fx_free(&q);
    fx_free(&l);
    const char *json = "{\"format\": \"mergescope-recipe/1\", \"base\": \"base\","
                       " \"models\": [{\"name\": \"quick\", \"path\": \"quick\", \"weight\": 0.5}],"
                       " \"method\": \"task_arithmetic\"}";
    struct recipe *r = recipe_parse(json, strlen(json), "r.json", ".");
    struct ws_params wp = ws_default_params();
    wp.n_threads = 1;
    static struct ui_app app;
    struct ui_app *a = &app;
    memset(a, 0, sizeof(*a));
    a->ws = r ? ws_open(r, wp) : NULL;
    recipe_free(r);
    if (!a->ws) {
        TEST_COND("a workspace for the Recipe screen", false);
        return;
    }
    a->mark_layer = -1;
    a->hist.tensor = a->hist_wanted = -1;
    a->screen = UI_SCREEN_RECIPE;
    a->saved = recipe_clone(ws_recipe(a->ws));
    job_init(&a->job);
    preview_init(&a->preview, a->ws, 1);

    /* task_arithmetic: weight, lambda, normalize */
    TEST_COND("rows: method, its parameters, the base, then each model with its own parameters",
              screen_recipe_row(a, UI_ROW_METHOD, 0) == 0 && screen_recipe_row(a, UI_ROW_PARAM, 2) == 3 &&
              screen_recipe_row(a, UI_ROW_BASE, 0) == 4 && screen_recipe_row(a, UI_ROW_MODEL, 0) == 5 &&
              screen_recipe_row(a, UI_ROW_MODEL_PARAM, 0) == 6 && screen_recipe_row(a, UI_ROW_SLICE, 0) == -1 &&
              screen_recipe_n_fields(a) == 7);
    a->recipe_sel = 0;
    int steps = 0;
    while (steps++ < 30 && !strstr(a->status, "passed over"))
        screen_recipe_adjust(a, 1);
    TEST_COND("stepping the method passes over those that need more models and says which key adds one",
              strstr(a->status, "passed over model_stock: not for 1 model (a adds a model)") &&
              strcmp(ws_method(a->ws)->name, "sce") == 0);
    if (!strstr(a->status, "model_stock: not for 1 model"))
        printf("      status: %s\n", a->status);
    char text[LINEEDIT_MAX];
    while (steps-- > 1)
        ui_run_action(a, UI_ACTION_UNDO);
    TEST_COND("... and undo steps back to task_arithmetic", strcmp(ws_method(a->ws)->name, "task_arithmetic") == 0);

    /* Add long by the path typed after a. */
    int react = screen_recipe_add_model(a, "long/");
    TEST_COND("a + a path adds the model, named after its folder, stored without the trailing '/'",
              (react & UI_REACT_RECIPE) && ws_n_models(a->ws) == 2 &&
              strcmp(ws_recipe(a->ws)->models[1].name, "long") == 0 &&
              strcmp(ws_recipe(a->ws)->models[1].path, "long") == 0);
    TEST_COND("... the status line says so", strstr(a->status, "added model 'long' (long/)") != NULL);
    TEST_COND("... and the new model's row is selected", (long)a->recipe_sel == screen_recipe_row(a, UI_ROW_MODEL, 1));
    screen_recipe_value_text(a, text, sizeof(text));
    TEST_COND("Enter on it offers its path to edit", strcmp(text, "long") == 0 && screen_recipe_edits_path(a));
    ui_refresh_table(a);
    TEST_COND("the layer table follows: a pair of task vectors (cos, conflict columns)",
              a->table.n_cols == 9 && a->table.cols[2].metric == LT_COS);
    a->recipe_sel = 0;
    for (int k = 0; k < 20 && strcmp(ws_method(a->ws)->name, "model_stock") != 0; k++)
        screen_recipe_adjust(a, 1);
    TEST_COND("model_stock (two models and the base) is reachable now", strcmp(ws_method(a->ws)->name, "model_stock") == 0);

    /* A failed add: nothing changes, the status names the path. */
    react = screen_recipe_add_model(a, "nowhere");
    TEST_COND("adding a path that is no model changes nothing and says why, naming it",
              ws_n_models(a->ws) == 2 && a->status_error && strstr(a->status, "cannot add nowhere") &&
              strstr(a->status, "nowhere is not a directory") && !(react & UI_REACT_RECIPE));

    /* Remove quick: model_stock cannot take one model, linear can. */
    a->recipe_sel = (size_t)screen_recipe_row(a, UI_ROW_MODEL, 0);
    screen_recipe_clear(a);
    TEST_COND("x on a model removes it; the method moves to one that takes a single model, and says so",
              ws_n_models(a->ws) == 1 && strcmp(ws_model(a->ws, 0)->name, "long") == 0 &&
              strcmp(ws_method(a->ws)->name, "linear") == 0 &&
              strstr(a->status, "removed model 'quick'; model_stock does not take 1 model, so the method is now linear"));
    a->recipe_sel = (size_t)screen_recipe_row(a, UI_ROW_MODEL, 0);
    screen_recipe_clear(a);
    TEST_COND("the only model is not removed", ws_n_models(a->ws) == 1 && a->status_error &&
              strstr(a->status, "'long' is the only model"));
    ui_run_action(a, UI_ACTION_UNDO);
    TEST_COND("undo brings quick back, with its weight and model_stock",
              ws_n_models(a->ws) == 2 && strcmp(ws_model(a->ws, 0)->name, "quick") == 0 &&
              strcmp(ws_method(a->ws)->name, "model_stock") == 0 && strstr(a->status, "undone"));

    /* Slices: A adds one over the base's layers, the method becomes passthrough. */
    react = screen_recipe_add_slice(a);
    const struct recipe *cur = ws_recipe(a->ws);
    TEST_COND("A adds a slice of every base layer and switches to passthrough",
              (react & UI_REACT_RECIPE) && cur->n_slices == 1 && strcmp(cur->slices[0].sources[0].model, "base") == 0 &&
              cur->slices[0].sources[0].start == 0 && cur->slices[0].sources[0].end == 3 &&
              strcmp(ws_method(a->ws)->name, "passthrough") == 0);
    TEST_COND("... and selects it", (long)a->recipe_sel == screen_recipe_row(a, UI_ROW_SLICE, 0));
    screen_recipe_value_text(a, text, sizeof(text));
    TEST_COND("Enter on a slice offers \"MODEL START END\"", strcmp(text, "base 0 3") == 0);
    screen_recipe_set(a, "long 1 3");
    cur = ws_recipe(a->ws);
    TEST_COND("typing \"long 1 3\" sets it", cur->n_slices == 1 && strcmp(cur->slices[0].sources[0].model, "long") == 0 &&
              cur->slices[0].sources[0].start == 1 && ws_n_layers(a->ws) == 2);
    screen_recipe_add_slice(a);
    screen_recipe_set(a, "quick 0 3");
    cur = ws_recipe(a->ws);
    TEST_COND("a second slice after it: 2 + 3 output layers", cur->n_slices == 2 &&
              strcmp(cur->slices[1].sources[0].model, "quick") == 0 && ws_n_layers(a->ws) == 5 &&
              ws_n_input_layers(a->ws) == 3);
    ui_refresh_table(a);
    TEST_COND("the layer table follows the output's 5 layers (plus embed, norm, lm_head)", a->table.n_rows == 8);
    screen_recipe_move(a, -1);
    cur = ws_recipe(a->ws);
    TEST_COND("K moves the selected slice up, and the selection goes with it",
              strcmp(cur->slices[0].sources[0].model, "quick") == 0 && strcmp(cur->slices[1].sources[0].model, "long") == 0 &&
              (long)a->recipe_sel == screen_recipe_row(a, UI_ROW_SLICE, 0));
    screen_recipe_move(a, -1);
    TEST_COND("... not past the first", a->status_error && strstr(a->status, "already the first"));
    screen_recipe_adjust(a, -1);
    cur = ws_recipe(a->ws);
    TEST_COND("Left moves its end down by one: quick [0, 2)", cur->slices[0].sources[0].end == 2 && ws_n_layers(a->ws) == 4);
    screen_recipe_set(a, "quick 0 9");
    cur = ws_recipe(a->ws);
    TEST_COND("a range past the models' layers is refused, naming the slice, and nothing changes",
              a->status_error && strstr(a->status, "slice 1 unchanged") && strstr(a->status, "reaches beyond model 'quick'") &&
              cur->slices[0].sources[0].end == 2 && ws_n_layers(a->ws) == 4);
    screen_recipe_set(a, "lng 0 2");
    TEST_COND("an unknown model is refused, naming the models there are",
              a->status_error && strstr(a->status, "unknown model 'lng' (one of base, quick, long)"));
    a->recipe_sel = (size_t)screen_recipe_row(a, UI_ROW_MODEL, 1);
    screen_recipe_clear(a);
    TEST_COND("a model a slice takes layers from is not removed", ws_n_models(a->ws) == 2 &&
              strstr(a->status, "slice 2 takes its layers"));
    a->recipe_sel = (size_t)screen_recipe_row(a, UI_ROW_SLICE, 1);
    screen_recipe_clear(a);
    TEST_COND("x on a slice removes it", ws_recipe(a->ws)->n_slices == 1 && ws_n_layers(a->ws) == 2);
    for (int k = 0; k < 20 && ws_recipe(a->ws)->n_slices > 0; k++)
        ui_run_action(a, UI_ACTION_UNDO);
    TEST_COND("undo goes back through every slice edit to none", ws_recipe(a->ws)->n_slices == 0 &&
              ws_n_layers(a->ws) == 3 && strcmp(ws_method(a->ws)->name, "model_stock") == 0);

    job_deinit(&a->job);
    preview_deinit(&a->preview);
    undo_deinit(&a->undo);
    lt_free(&a->table);
    msglog_free(&a->log);
    recipe_free(a->saved);
    ws_free(a->ws);
}

int main(void)
{
    char dir[] = "/tmp/ms-test-tui-logic-XXXXXX";
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_source_keys();
    test_parse_slice();
    test_fit_method();
    test_complete(dir);
    test_recipe_sources(dir);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        printf("      could not remove %s\n", dir);
    test_keymap();
    test_undo();
    test_tune();
    test_theme_json();
    test_table();
    return test_report();
}
