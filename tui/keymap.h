/* Key bindings as a table: (key, screens) -> action. The event loop looks
 * the key up for the current screen and runs the action, which returns
 * reaction flags; only the loop redraws. The function bar and the help
 * screen are generated from the same table, so they cannot drift apart. */
#ifndef MS_TUI_KEYMAP_H
#define MS_TUI_KEYMAP_H

#include <stddef.h>

enum ui_screen {
    UI_SCREEN_LAYERS,
    UI_SCREEN_DETAIL,
    UI_SCREEN_RECIPE,
    UI_SCREEN_PREVIEW,
    UI_SCREEN_HELP,
    UI_SCREEN_LOG,
    UI_SCREEN_CHART,
    UI_SCREEN_COUNT
};
const char *ui_screen_name(enum ui_screen s);

/*        action          help line */
#define UI_ACTIONS \
    A(NONE,          "") \
    A(UP,            "move up") \
    A(DOWN,          "move down") \
    A(PAGE_UP,       "page up") \
    A(PAGE_DOWN,     "page down") \
    A(HOME,          "first row") \
    A(END,           "last row") \
    A(DEC,           "decrease the value (selected layers, or the field)") \
    A(INC,           "increase the value (selected layers, or the field)") \
    A(ENTER,         "open: tensor detail of the layer / edit the field, a path or a slice / type the prompt") \
    A(BACK,          "back to the Layers screen") \
    A(NEXT_SCREEN,   "next screen") \
    A(HELP,          "help") \
    A(LAYERS,        "Layers screen") \
    A(DETAIL,        "tensor detail of the selected layer") \
    A(RECIPE,        "Recipe screen: method, parameters, the base and models, slices, overrides") \
    A(PREVIEW,       "Preview screen: prompt and streamed generation (e types a prompt)") \
    A(LOG,           "log of warnings and errors") \
    A(SEARCH,        "search rows") \
    A(SEARCH_NEXT,   "next search match") \
    A(SORT,          "sort by the next column") \
    A(SORT_INVERT,   "invert the sort order") \
    A(MARK,          "mark a range of layers (press again to clear)") \
    A(SET_VALUE,     "type a value for the selected layers or field") \
    A(GRADIENT,      "linear gradient FROM,TO across the marked layers") \
    A(PARAM,         "next tuned parameter (weight, density, lambda, ...)") \
    A(MODEL,         "next model (for per-model parameters and statistics)") \
    A(MODULE,        "next module group for tuning (all, attention, MLP)") \
    A(CLEAR,         "remove the selected layers' overrides of the tuned parameter / delete the override, model, base or slice") \
    A(ADD_MODEL,     "add a fine-tuned model by path (Tab completes the path)") \
    A(ADD_SLICE,     "add a slice (layers of a model, stacked by passthrough) after the selected one") \
    A(MOVE_UP,       "move the selected slice up (earlier in the output)") \
    A(MOVE_DOWN,     "move the selected slice down (later in the output)") \
    A(UNDO,          "undo the last change") \
    A(REDO,          "redo") \
    A(SAVE,          "save the recipe (JSON)") \
    A(SAVE_YAML,     "save the recipe as mergekit YAML too") \
    A(WRITE,         "write the merged model to a directory") \
    A(PROMPT,        "type the preview prompt (Enter runs it, Esc leaves it)") \
    A(COMPARE,       "toggle compare mode (base and each model beside the merge)") \
    A(CHART,         "Chart screen: one statistic across the layers, per module") \
    A(STAT_NEXT,     "chart the next statistic") \
    A(STAT_PREV,     "chart the previous statistic") \
    A(PROJECTIONS,   "chart per projection (q_proj ... down_proj) or per module") \
    A(LAYER_PREV,    "select the previous layer") \
    A(LAYER_NEXT,    "select the next layer") \
    A(CANCEL,        "cancel the running preview or job") \
    A(REDRAW,        "redraw the screen") \
    A(QUIT,          "quit") \
    A(INTERRUPT,     "quit (asks when there are unsaved changes)")

enum ui_action {
#define A(name, help) UI_ACTION_##name,
    UI_ACTIONS
#undef A
    UI_ACTION_COUNT
};
const char *ui_action_help(enum ui_action a);

/* What an action asks the event loop to do. */
enum ui_reaction {
    UI_REACT_NONE   = 0,
    UI_REACT_REDRAW = 1 << 0,   /* draw the frame again */
    UI_REACT_QUIT   = 1 << 1,   /* leave the loop */
    UI_REACT_RECIPE = 1 << 2,   /* the recipe changed: restart statistics and previews */
};

#define UI_ON(s) (1u << (s))
#define UI_ON_ALL ((1u << UI_SCREEN_COUNT) - 1)

struct ui_binding {
    int key;                /* a byte or a curses KEY_* code */
    unsigned screens;       /* UI_ON(...) mask */
    enum ui_action action;
    const char *fkey;       /* shown in the function bar ("F1"), or NULL */
    const char *label;      /* function bar label ("Help") */
};

extern const struct ui_binding ui_bindings[];
extern const size_t ui_n_bindings;

/* The action bound to `key` on `screen`, or UI_ACTION_NONE. */
enum ui_action keymap_lookup(enum ui_screen screen, int key);

/* The function bar of `screen`: up to `max` bindings with an fkey, in table
 * order. Returns how many. */
size_t keymap_function_bar(enum ui_screen screen, const struct ui_binding **out, size_t max);

/* "F1", "Up", "Ctrl-R", "q", ... */
const char *keymap_key_name(int key, char *buf, size_t size);

#endif
