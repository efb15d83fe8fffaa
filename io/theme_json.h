/* Colour themes: themes/NAME.json files parsed into plain structs. The TUI
 * maps role names onto its own roles (tui/theme.c); this layer checks the
 * JSON structure, colour names and attribute names only.
 *
 *   {
 *     "name": "dark",
 *     "roles": {
 *       "selection": { "fg": "black", "bg": "cyan", "attrs": ["bold"] },
 *       "heat_high": { "fg": 196, "fg8": "red" }
 *     }
 *   }
 *
 * Colours are "default", one of the eight ANSI names ("black", "red",
 * "green", "yellow", "blue", "magenta", "cyan", "white"), their "bright_"
 * forms (8-15), or a number 0-255 of the xterm 256-colour palette. "fg8" and
 * "bg8" name what an 8-colour terminal uses instead (else the TUI picks the
 * nearest). Attributes: "bold", "dim", "reverse", "underline", "standout",
 * "italic". Every key is optional except "roles"; unknown keys are errors. */
#ifndef MS_IO_THEME_JSON_H
#define MS_IO_THEME_JSON_H

#include <stdbool.h>
#include <stddef.h>

#define THEME_COLOR_DEFAULT (-1)
#define THEME_COLOR_UNSET   (-2)

enum theme_attr_bits {
    THEME_ATTR_BOLD      = 1 << 0,
    THEME_ATTR_DIM       = 1 << 1,
    THEME_ATTR_REVERSE   = 1 << 2,
    THEME_ATTR_UNDERLINE = 1 << 3,
    THEME_ATTR_STANDOUT  = 1 << 4,
    THEME_ATTR_ITALIC    = 1 << 5,
};

struct theme_entry {
    char *role;         /* as written: "selection" */
    int fg, bg;         /* THEME_COLOR_UNSET, THEME_COLOR_DEFAULT or 0..255 */
    int fg8, bg8;       /* 8-colour alternatives, THEME_COLOR_UNSET when absent */
    unsigned attrs;     /* enum theme_attr_bits */
    bool has_attrs;
};

struct theme_file {
    char *name;         /* "name", or NULL */
    struct theme_entry *entries;
    size_t n_entries;
};

/* Parses theme text; `label` names it in messages. NULL with an error
 * naming the label and the key path ("dark.json: roles.selection.fg: ..."). */
struct theme_file *theme_file_parse(const char *text, size_t len, const char *label);
/* Reads and parses a theme file. */
struct theme_file *theme_file_load(const char *path);
void theme_file_free(struct theme_file *t);

#endif
