/* The Layers table drawing, callable on its own (render tests). */
#ifndef MS_TUI_SCREEN_LAYERS_H
#define MS_TUI_SCREEN_LAYERS_H

#include <curses.h>
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

#endif
