/* The TUI's logic without a terminal: key bindings, undo/redo, recipe
 * edits for per-layer tuning, theme files, and the layer table's sort and
 * search. */
#include <curses.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "keymap.h"
#include "layer_table.h"
#include "lm_error.h"
#include "merge_plan.h"
#include "recipe.h"
#include "test.h"
#include "theme_json.h"
#include "tune.h"
#include "undo.h"

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

int main(void)
{
    test_keymap();
    test_undo();
    test_tune();
    test_theme_json();
    test_table();
    return test_report();
}
