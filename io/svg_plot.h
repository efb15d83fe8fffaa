/* Line charts as SVG: statistics across the layers of a model, one panel
 * per statistic, one polyline per series (module), with axes, ticks and a
 * legend; viewable in a browser and fit for a paper. Plain data in, text
 * out; writing the file is the caller's (through the atomic writer).
 *
 * Each panel is a <g class="panel" data-stat="TITLE"> holding one
 * <polyline class="series" data-series="NAME"> per series (the points of
 * its finite values, in layer order). */
#ifndef MS_IO_SVG_PLOT_H
#define MS_IO_SVG_PLOT_H

#include <stddef.h>

struct svg_series {
    const char *name;     /* legend text: "attention", "mlp", "q_proj", ... */
    const double *y;      /* n_x values; NaN and infinities are left out */
};

struct svg_panel {
    const char *title;    /* "conflict (long x quick)" */
    const char *stat;     /* data-stat attribute: "conflict" */
    const struct svg_series *series;
    int n_series;
};

/* The whole SVG document: `title` above a grid of panels (two per row)
 * over x = 0 .. n_x-1 labelled `x_label`. Heap text, caller frees; NULL
 * with LM_ENOMEM, or LM_EINVAL when there is nothing to draw. */
char *svg_plot(const char *title, const char *x_label, int n_x, const struct svg_panel *panels, int n_panels);

#endif
