/* The key binding table. */
#include "keymap.h"

#include <curses.h>
#include <stdio.h>

#define CTRL(c) ((c) & 0x1f)
#define L UI_ON(UI_SCREEN_LAYERS)
#define D UI_ON(UI_SCREEN_DETAIL)
#define RC UI_ON(UI_SCREEN_RECIPE)
#define P UI_ON(UI_SCREEN_PREVIEW)
#define H UI_ON(UI_SCREEN_HELP)
#define G UI_ON(UI_SCREEN_LOG)
#define CH UI_ON(UI_SCREEN_CHART)
#define LISTS (L | D | RC | H | G | P)
#define MAIN (L | D | RC | P | CH)

/* Order matters twice: the first match wins, and function bars list
 * bindings with an fkey in this order. */
const struct ui_binding ui_bindings[] = {
    { KEY_F(1),      UI_ON_ALL, UI_ACTION_HELP,        "F1",  "Help" },
    { KEY_F(2),      UI_ON_ALL, UI_ACTION_RECIPE,      "F2",  "Recipe" },
    { KEY_F(3),      L | D | H | G, UI_ACTION_SEARCH,  "F3",  "Search" },
    { KEY_F(4),      UI_ON_ALL, UI_ACTION_PREVIEW,     "F4",  "Preview" },
    { KEY_F(5),      L,         UI_ACTION_DETAIL,      "F5",  "Detail" },
    { KEY_F(5),      D | RC | P | H | G | CH, UI_ACTION_LAYERS, "F5", "Layers" },
    { KEY_F(6),      L | D,     UI_ACTION_SORT,        "F6",  "SortBy" },
    { KEY_F(6),      CH,        UI_ACTION_STAT_NEXT,   "F6",  "Stat" },
    { KEY_F(7),      L | D | RC | CH, UI_ACTION_DEC,   "F7",  "Dec" },
    { KEY_F(8),      L | D | RC | CH, UI_ACTION_INC,   "F8",  "Inc" },
    { KEY_F(9),      UI_ON_ALL, UI_ACTION_LOG,         "F9",  "Log" },
    { KEY_F(10),     UI_ON_ALL, UI_ACTION_QUIT,        "F10", "Quit" },
    { KEY_UP,        LISTS,     UI_ACTION_UP,          NULL, NULL },
    { 'k',           L | D | RC | H | G, UI_ACTION_UP, NULL, NULL },
    { KEY_DOWN,      LISTS,     UI_ACTION_DOWN,        NULL, NULL },
    { 'j',           L | D | RC | H | G, UI_ACTION_DOWN, NULL, NULL },
    { KEY_PPAGE,     LISTS,     UI_ACTION_PAGE_UP,     NULL, NULL },
    { KEY_NPAGE,     LISTS,     UI_ACTION_PAGE_DOWN,   NULL, NULL },
    { KEY_HOME,      LISTS,     UI_ACTION_HOME,        NULL, NULL },
    { 'g',           D | H | G, UI_ACTION_HOME,        NULL, NULL },
    { KEY_END,       LISTS,     UI_ACTION_END,         NULL, NULL },
    { 'G',           D | H | G, UI_ACTION_END,         NULL, NULL },
    { KEY_LEFT,      CH,        UI_ACTION_LAYER_PREV,  NULL, NULL },
    { 'h',           CH,        UI_ACTION_LAYER_PREV,  NULL, NULL },
    { KEY_RIGHT,     CH,        UI_ACTION_LAYER_NEXT,  NULL, NULL },
    { 'l',           CH,        UI_ACTION_LAYER_NEXT,  NULL, NULL },
    { ']',           CH,        UI_ACTION_STAT_NEXT,   NULL, NULL },
    { '[',           CH,        UI_ACTION_STAT_PREV,   NULL, NULL },
    { 'P',           CH,        UI_ACTION_PROJECTIONS, NULL, NULL },
    { 'C',           L | D | RC | P, UI_ACTION_CHART,  NULL, NULL },
    { KEY_LEFT,      L | D | RC, UI_ACTION_DEC,        NULL, NULL },
    { 'h',           L | D | RC, UI_ACTION_DEC,        NULL, NULL },
    { '-',           L | D | RC | CH, UI_ACTION_DEC,   NULL, NULL },
    { KEY_RIGHT,     L | D | RC, UI_ACTION_INC,        NULL, NULL },
    { 'l',           L | D | RC, UI_ACTION_INC,        NULL, NULL },
    { '+',           L | D | RC | CH, UI_ACTION_INC,   NULL, NULL },
    { '\n',          L | RC | P, UI_ACTION_ENTER,      NULL, NULL },
    { '\r',          L | RC | P, UI_ACTION_ENTER,      NULL, NULL },
    { KEY_ENTER,     L | RC | P, UI_ACTION_ENTER,      NULL, NULL },
    { 27,            UI_ON_ALL, UI_ACTION_CANCEL,      NULL, NULL },
    { '\t',          UI_ON_ALL, UI_ACTION_NEXT_SCREEN, NULL, NULL },
    { '?',           UI_ON_ALL, UI_ACTION_HELP,        NULL, NULL },
    { '/',           L | D | H | G, UI_ACTION_SEARCH,  NULL, NULL },
    { 'n',           L | D | H | G, UI_ACTION_SEARCH_NEXT, NULL, NULL },
    { 'o',           L | D,     UI_ACTION_SORT,        NULL, NULL },
    { 'O',           L | D,     UI_ACTION_SORT_INVERT, NULL, NULL },
    { ' ',           L,         UI_ACTION_MARK,        NULL, NULL },
    { 'v',           L,         UI_ACTION_MARK,        NULL, NULL },
    { '=',           L | D | RC | CH, UI_ACTION_SET_VALUE, NULL, NULL },
    { 'i',           L | D | RC, UI_ACTION_SET_VALUE,  NULL, NULL },
    { 'r',           L,         UI_ACTION_GRADIENT,    NULL, NULL },
    { 'p',           L | D | CH, UI_ACTION_PARAM,      NULL, NULL },
    { 'm',           L | D | RC | CH, UI_ACTION_MODEL, NULL, NULL },
    { 'M',           L | D | CH, UI_ACTION_MODULE,     NULL, NULL },
    { 'x',           L | RC,    UI_ACTION_CLEAR,       NULL, NULL },
    { KEY_DC,        L | RC,    UI_ACTION_CLEAR,       NULL, NULL },
    { 'a',           RC,        UI_ACTION_ADD_MODEL,   NULL, NULL },
    { 'A',           RC,        UI_ACTION_ADD_SLICE,   NULL, NULL },
    { 'K',           RC,        UI_ACTION_MOVE_UP,     NULL, NULL },
    { KEY_SR,        RC,        UI_ACTION_MOVE_UP,     NULL, NULL },
    { 'J',           RC,        UI_ACTION_MOVE_DOWN,   NULL, NULL },
    { KEY_SF,        RC,        UI_ACTION_MOVE_DOWN,   NULL, NULL },
    { 'u',           MAIN,      UI_ACTION_UNDO,        NULL, NULL },
    { CTRL('r'),     MAIN,      UI_ACTION_REDO,        NULL, NULL },
    { 's',           MAIN,      UI_ACTION_SAVE,        NULL, NULL },
    { 'S',           MAIN,      UI_ACTION_SAVE_YAML,   NULL, NULL },
    { 'w',           MAIN,      UI_ACTION_WRITE,       NULL, NULL },
    { 'e',           P,         UI_ACTION_PROMPT,      NULL, NULL },
    { '>',           UI_ON_ALL, UI_ACTION_PROMPT,      NULL, NULL },
    { 'c',           P,         UI_ACTION_COMPARE,     NULL, NULL },
    { 'd',           L,         UI_ACTION_DETAIL,      NULL, NULL },
    { 'R',           L | D | P, UI_ACTION_RECIPE,      NULL, NULL },
    { 'L',           UI_ON_ALL, UI_ACTION_LOG,         NULL, NULL },
    { CTRL('l'),     UI_ON_ALL, UI_ACTION_REDRAW,      NULL, NULL },
    { 'q',           L,         UI_ACTION_QUIT,        NULL, NULL },
    { 'q',           D | RC | P | H | G | CH, UI_ACTION_BACK, NULL, NULL },
    { KEY_BACKSPACE, D | H | G, UI_ACTION_BACK,        NULL, NULL },
    { CTRL('c'),     UI_ON_ALL, UI_ACTION_INTERRUPT,   NULL, NULL },
};
const size_t ui_n_bindings = sizeof(ui_bindings) / sizeof(ui_bindings[0]);

static const char *const action_help[UI_ACTION_COUNT] = {
#define A(name, help) help,
    UI_ACTIONS
#undef A
};

const char *ui_action_help(enum ui_action a)
{
    return a < UI_ACTION_COUNT ? action_help[a] : "";
}

const char *ui_screen_name(enum ui_screen s)
{
    static const char *const names[UI_SCREEN_COUNT] = {
        "Layers", "Detail", "Recipe", "Preview", "Help", "Log", "Chart",
    };
    return s < UI_SCREEN_COUNT ? names[s] : "?";
}

enum ui_action keymap_lookup(enum ui_screen screen, int key)
{
    for (size_t i = 0; i < ui_n_bindings; i++)
        if (ui_bindings[i].key == key && (ui_bindings[i].screens & UI_ON(screen)))
            return ui_bindings[i].action;
    return UI_ACTION_NONE;
}

size_t keymap_function_bar(enum ui_screen screen, const struct ui_binding **out, size_t max)
{
    size_t n = 0;
    for (size_t i = 0; i < ui_n_bindings && n < max; i++)
        if (ui_bindings[i].fkey && (ui_bindings[i].screens & UI_ON(screen)))
            out[n++] = &ui_bindings[i];
    return n;
}

const char *keymap_key_name(int key, char *buf, size_t size)
{
    static const struct { int key; const char *name; } named[] = {
        { KEY_UP, "Up" }, { KEY_DOWN, "Down" }, { KEY_LEFT, "Left" }, { KEY_RIGHT, "Right" },
        { KEY_PPAGE, "PgUp" }, { KEY_NPAGE, "PgDn" }, { KEY_HOME, "Home" }, { KEY_END, "End" },
        { '\n', "Enter" }, { '\r', "Enter" }, { KEY_ENTER, "Enter" }, { 27, "Esc" }, { '\t', "Tab" },
        { ' ', "Space" }, { KEY_DC, "Del" }, { KEY_BACKSPACE, "Backspace" },
        { KEY_SR, "Shift-Up" }, { KEY_SF, "Shift-Down" },
    };
    for (size_t i = 0; i < sizeof(named) / sizeof(named[0]); i++)
        if (named[i].key == key) {
            snprintf(buf, size, "%s", named[i].name);
            return buf;
        }
    if (key >= KEY_F(1) && key <= KEY_F(12))
        snprintf(buf, size, "F%d", key - KEY_F(0));
    else if (key > 0 && key < 32)
        snprintf(buf, size, "Ctrl-%c", key + 'A' - 1);
    else if (key >= 32 && key < 127)
        snprintf(buf, size, "%c", key);
    else
        snprintf(buf, size, "key %d", key);
    return buf;
}
