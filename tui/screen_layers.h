/* The Layers table drawing, callable on its own (render tests). */
#ifndef MS_TUI_SCREEN_LAYERS_H
#define MS_TUI_SCREEN_LAYERS_H

#include <curses.h>
#include <stdbool.h>
#include <stddef.h>

#include "layer_table.h"

/* Draws group titles (row y0), column titles (y0 + 1) and rows below, in
 * `h` lines and `width` cells. `sel` is the selected display position;
 * *top scrolls to keep it visible. Layers mark_first..mark_last are drawn
 * as marked. col_x (may be NULL) receives each column's x. Returns the y
 * of the first row. */
int layers_draw_table(WINDOW *w, int y0, int h, int width, const struct layer_table *t,
                      size_t sel, size_t *top, int mark_first, int mark_last, int *col_x);

/* "0.123", "1.2e-05", "·" for NaN. */
void layers_format_number(double v, char *buf, size_t size);

/* The same number in at most `width` cells: fewer decimals, no leading
 * zero (".253"), or "1e-4" when nothing else fits. */
void layers_format_fit(double v, int width, char *buf, size_t size);

/* Where the table's parts go in `width` cells: the label column, each
 * statistic column (number, then heat bar) and the tuned value's column. */
struct layers_layout {
    int label_w, cw, coef_w, numw, barw;
    bool narrow;     /* no blank between a number and its bar */
    int col_x[LT_MAX_COLS];
};
void layers_table_layout(const struct layer_table *t, int width, struct layers_layout *l);

#endif
