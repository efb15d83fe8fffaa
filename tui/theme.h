/* Semantic colour roles for the TUI. Drawing code asks theme_attr(role)
 * for the curses attribute of a role and never names a colour itself.
 *
 * UI_ROLES lists each role with its JSON name, the built-in dark theme
 * (fg, bg, attributes) and the attributes used on monochrome terminals.
 * themes/NAME.json override roles by name (io/theme_json.h). */
#ifndef MS_TUI_THEME_H
#define MS_TUI_THEME_H

#include <stdbool.h>

#include "theme_json.h"

/*        role            json name         fg          bg    attrs (dark)           mono attrs */
#define UI_ROLES \
    R(NORMAL,        "normal",        -1,  -1, 0,                          0)                   \
    R(HEADER,        "header",         0,   6, 0,                          THEME_ATTR_REVERSE)  \
    R(HEADER_VALUE,  "header_value",   0,   6, THEME_ATTR_BOLD,            THEME_ATTR_REVERSE | THEME_ATTR_BOLD) \
    R(TITLE,         "title",          6,  -1, THEME_ATTR_BOLD,            THEME_ATTR_BOLD)     \
    R(COLUMN,        "column",         0,   2, 0,                          THEME_ATTR_REVERSE)  \
    R(COLUMN_SORT,   "column_sort",    0,   3, THEME_ATTR_BOLD,            THEME_ATTR_REVERSE | THEME_ATTR_BOLD) \
    R(SELECTION,     "selection",      0,   6, 0,                          THEME_ATTR_REVERSE)  \
    R(MARKED,        "marked",         3,  -1, THEME_ATTR_BOLD,            THEME_ATTR_UNDERLINE) \
    R(OVERRIDE,      "override",       5,  -1, THEME_ATTR_BOLD,            THEME_ATTR_BOLD)     \
    R(DIM,           "dim",            8,  -1, 0,                          THEME_ATTR_DIM)      \
    R(HEAT_LOW,      "heat_low",       2,  -1, 0,                          0)                   \
    R(HEAT_MID,      "heat_mid",       3,  -1, 0,                          THEME_ATTR_BOLD)     \
    R(HEAT_HIGH,     "heat_high",      1,  -1, THEME_ATTR_BOLD,            THEME_ATTR_REVERSE)  \
    R(THRESHOLD,     "threshold",      5,  -1, THEME_ATTR_BOLD,            THEME_ATTR_BOLD)     \
    R(VALUE,         "value",          6,  -1, THEME_ATTR_BOLD,            THEME_ATTR_BOLD)     \
    R(FKEY,          "fkey",           7,  -1, 0,                          0)                   \
    R(FLABEL,        "flabel",         0,   6, 0,                          THEME_ATTR_REVERSE)  \
    R(STATUS,        "status",         7,  -1, 0,                          0)                   \
    R(STATUS_ERROR,  "status_error",   7,   1, THEME_ATTR_BOLD,            THEME_ATTR_REVERSE | THEME_ATTR_BOLD) \
    R(PROGRESS,      "progress",       0,   2, 0,                          THEME_ATTR_REVERSE)  \
    R(PROMPT,        "prompt",         3,  -1, THEME_ATTR_BOLD,            THEME_ATTR_BOLD)     \
    R(PREVIEW,       "preview",       -1,  -1, 0,                          0)                   \
    R(PREVIEW_INFO,  "preview_info",   2,  -1, 0,                          THEME_ATTR_DIM)      \
    R(LOG_WARN,      "log_warn",       3,  -1, 0,                          THEME_ATTR_BOLD)     \
    R(LOG_ERROR,     "log_error",      1,  -1, THEME_ATTR_BOLD,            THEME_ATTR_REVERSE)  \
    R(HELP_KEY,      "help_key",       3,  -1, THEME_ATTR_BOLD,            THEME_ATTR_BOLD)     \
    R(SERIES1,       "series1",        6,  -1, THEME_ATTR_BOLD,            THEME_ATTR_BOLD)     \
    R(SERIES2,       "series2",        3,  -1, THEME_ATTR_BOLD,            0)                   \
    R(SERIES3,       "series3",        2,  -1, 0,                          THEME_ATTR_UNDERLINE) \
    R(SERIES4,       "series4",        5,  -1, 0,                          THEME_ATTR_DIM)      \
    R(SERIES5,       "series5",        4,  -1, THEME_ATTR_BOLD,            THEME_ATTR_REVERSE)  \
    R(SERIES6,       "series6",        1,  -1, 0,                          THEME_ATTR_BOLD | THEME_ATTR_UNDERLINE) \
    R(SERIES7,       "series7",        7,  -1, 0,                          0)

enum ui_role {
#define R(name, json, fg, bg, attrs, mono) UI_ROLE_##name,
    UI_ROLES
#undef R
    UI_ROLE_COUNT
};

/* "normal", "header", ... */
const char *theme_role_name(enum ui_role role);

/* Sets up the built-in theme for the running terminal: colours when
 * has_colors() and `want_color`, mono attributes otherwise. Call after
 * initscr()/newterm(). Safe to call again (e.g. after a theme change). */
void theme_init(bool want_color);

/* Applies a parsed theme file over the built-in dark theme (roles not named
 * keep their built-in look). Unknown role names are an error naming them;
 * nothing is changed then. On a mono terminal only attributes apply. */
int theme_apply(const struct theme_file *t);

/* Whether colours are in use (false: mono). */
bool theme_has_color(void);

/* The curses attribute (colour pair and video attributes) of a role. */
int theme_attr(enum ui_role role);

/* Finds a theme file by name: NAME itself when it contains '/' or ends in
 * ".json", else NAME.json in $XDG_CONFIG_HOME/mergescope/themes (or
 * ~/.config/...), $MS_THEME_DIR, the themes/ folder the build was made
 * from, and themes/ beside or above the executable. Heap path, or NULL
 * with an error listing where it looked. */
char *theme_find(const char *name);

/* Everything at once: the built-in theme (mono when `color_ok` is false,
 * the terminal has no colours, or NAME is "mono"), then NAME's file over
 * it. NULL NAME: themes/default.json where it is found, else the built-in
 * dark theme. "dark"/"default" and "mono" work without their files. 0 or
 * an error (the built-in theme stays in place). */
int theme_setup(const char *name, bool color_ok);

/* The nearest of the 8 basic colours to a 256-palette colour. */
int theme_color_to_8(int c);

#endif
