/* Drawing helpers shared by the screens: clipped text in a role, bars with
 * eighth-cell resolution, sparklines, the function bar, the status line and
 * a progress bar. Everything takes a WINDOW and its data as arguments (no
 * globals but the glyph set), so that render tests can call it on an
 * off-screen terminal. */
#ifndef MS_TUI_DRAW_H
#define MS_TUI_DRAW_H

#include <curses.h>
#include <stdbool.h>
#include <stddef.h>

#include "keymap.h"
#include "theme.h"

#define LM_MIN_INT(a, b) ((a) < (b) ? (a) : (b))
#define LM_MAX_INT(a, b) ((a) > (b) ? (a) : (b))

/* UTF-8 block characters (true) or ASCII (false) for bars and marks. */
void draw_set_unicode(bool on);
bool draw_unicode(void);

/* Text at (y, x), at most `width` terminal cells (UTF-8 aware), in `role`.
 * Returns the cells written. */
int draw_text(WINDOW *w, int y, int x, int width, enum ui_role role, const char *s);
/* `n` blanks in `role`. */
void draw_fill(WINDOW *w, int y, int x, int n, enum ui_role role);
/* printf into draw_text. */
int draw_textf(WINDOW *w, int y, int x, int width, enum ui_role role, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

/* A bar of `width` cells filled to `frac` (0..1) in `role`, the rest blank. */
void draw_bar(WINDOW *w, int y, int x, int width, double frac, enum ui_role role);

/* The heat role for a heat in [0, 1]: low, mid, high; DIM for NaN. */
enum ui_role draw_heat_role(double heat);

/* One cell per value, heights in eighths of max (a sparkline); cell
 * `mark` (or -1) is drawn in THRESHOLD's role. */
void draw_sparkline(WINDOW *w, int y, int x, const double *v, int n, double max, int mark,
                    enum ui_role role);

/* A histogram `rows` lines high from (y, x), one cell per value, heights
 * in eighths of a cell relative to `max`; column `mark` (or -1) is drawn
 * in the THRESHOLD role as a vertical line through the empty cells, so the
 * threshold shows as a line across the whole height. */
void draw_histogram(WINDOW *w, int y, int x, int rows, const double *v, int n, double max, int mark,
                    enum ui_role role);

/* Where each function-bar key of `screen` goes in `width` cells: fills
 * items[0..n-1] and x[0..n] (x[i] is where key i starts, x[n] where the
 * last ends) and returns n (at most `max`). Drawing and mouse clicks both
 * use it. */
size_t draw_function_bar_layout(enum ui_screen screen, int width, const struct ui_binding **items,
                                int *x, size_t max);

/* The bottom function bar: "F1Help   F2Recipe ..." from the keymap, the
 * key and its label in their own roles, each label followed by a blank. */
void draw_function_bar(WINDOW *w, int y, int width, enum ui_screen screen);

/* The status line: a message (error role when `error`), or blank. */
void draw_status(WINDOW *w, int y, int width, const char *msg, bool error);

/* "label [=====     ] 42%" in `width` cells. */
void draw_progress(WINDOW *w, int y, int x, int width, const char *label, double frac);

/* Clears the window and says the terminal is too small (needs min_w x min_h). */
void draw_too_small(WINDOW *w, int min_w, int min_h);

/* Number of terminal cells a UTF-8 string takes. */
int draw_width(const char *s);

#endif
