/* SVG line charts; see svg_plot.h. */
#include "svg_plot.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "lm_error.h"
#include "numfmt.h"
#include "strbuf.h"

/* Panel geometry in SVG user units. */
enum { PANEL_W = 540, PANEL_H = 300, LEFT = 64, RIGHT = 140, TOP = 34, BOTTOM = 46, TITLE_H = 40 };

/* Okabe-Ito colours: told apart with the common colour-vision deficiencies. */
static const char *const palette[] = { "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9",
                                       "#000000", "#999999" };

static void put_escaped(struct lm_strbuf *b, const char *s)
{
    for (; *s; s++) {
        switch (*s) {
        case '&': lm_strbuf_puts(b, "&amp;"); break;
        case '<': lm_strbuf_puts(b, "&lt;"); break;
        case '>': lm_strbuf_puts(b, "&gt;"); break;
        case '"': lm_strbuf_puts(b, "&quot;"); break;
        default: lm_strbuf_putn(b, s, 1); break;
        }
    }
}

/* A coordinate to 0.1 unit, in the one number format. */
static void put_coord(struct lm_strbuf *b, double v)
{
    char num[LM_NUMBER_MAX];
    lm_format_number(lm_round_decimals(v, 1), num, sizeof(num));
    lm_strbuf_puts(b, num);
}

/* A tick step of 1, 2 or 5 times a power of ten giving about 5 ticks. */
static double nice_step(double span)
{
    double raw = span / 5, p = pow(10, floor(log10(raw))), m = raw / p;
    return (m < 1.5 ? 1 : m < 3.5 ? 2 : m < 7.5 ? 5 : 10) * p;
}

/* The y range of a panel: its finite values, with 0 when all are of one
 * sign and close to it, widened to whole tick steps. */
static void y_range(const struct svg_panel *p, int n_x, double *lo, double *hi, double *step)
{
    double a = INFINITY, z = -INFINITY;
    for (int s = 0; s < p->n_series; s++)
        for (int i = 0; i < n_x; i++)
            if (isfinite(p->series[s].y[i])) {
                a = fmin(a, p->series[s].y[i]);
                z = fmax(z, p->series[s].y[i]);
            }
    if (!isfinite(a)) {
        a = 0;
        z = 1;
    }
    if (a > 0 && a < z / 2)
        a = 0;
    if (z - a < 1e-300)
        z = a + (a != 0 ? fabs(a) * 0.1 : 1);
    *step = nice_step(z - a);
    *lo = floor(a / *step) * *step;
    *hi = ceil(z / *step) * *step;
}

static void put_text(struct lm_strbuf *b, double x, double y, const char *anchor, const char *extra,
                     const char *text)
{
    lm_strbuf_puts(b, "<text x=\"");
    put_coord(b, x);
    lm_strbuf_puts(b, "\" y=\"");
    put_coord(b, y);
    lm_strbuf_printf(b, "\" text-anchor=\"%s\"%s>", anchor, extra);
    put_escaped(b, text);
    lm_strbuf_puts(b, "</text>\n");
}

static void put_line(struct lm_strbuf *b, double x1, double y1, double x2, double y2, const char *style)
{
    lm_strbuf_puts(b, "<line x1=\"");
    put_coord(b, x1);
    lm_strbuf_puts(b, "\" y1=\"");
    put_coord(b, y1);
    lm_strbuf_puts(b, "\" x2=\"");
    put_coord(b, x2);
    lm_strbuf_puts(b, "\" y2=\"");
    put_coord(b, y2);
    lm_strbuf_printf(b, "\" %s/>\n", style);
}

/* Axes, ticks and grid of one panel whose plot area is (x0, y0) w x h. */
static void put_axes(struct lm_strbuf *b, double x0, double y0, double w, double h, int n_x, double lo,
                     double hi, double step, const char *x_label)
{
    char num[LM_NUMBER_MAX];
    int dec = lm_decimals_of(step);
    for (double v = lo; v <= hi + step / 2; v += step) {
        double y = y0 + h - (v - lo) / (hi - lo) * h;
        put_line(b, x0, y, x0 + w, y, "stroke=\"#e0e0e0\"");
        lm_format_number(lm_round_decimals(v, dec), num, sizeof(num));
        put_text(b, x0 - 6, y + 4, "end", " class=\"tick\"", num);
    }
    int xstep = n_x <= 12 ? 1 : n_x <= 30 ? 2 : n_x <= 60 ? 5 : 10;
    for (int i = 0; i < n_x; i += xstep) {
        double x = x0 + (n_x > 1 ? (double)i / (n_x - 1) * w : w / 2);
        put_line(b, x, y0 + h, x, y0 + h + 4, "stroke=\"#000\"");
        lm_format_number(i, num, sizeof(num));
        put_text(b, x, y0 + h + 17, "middle", " class=\"tick\"", num);
    }
    put_line(b, x0, y0 + h, x0 + w, y0 + h, "stroke=\"#000\"");
    put_line(b, x0, y0, x0, y0 + h, "stroke=\"#000\"");
    put_text(b, x0 + w / 2, y0 + h + 36, "middle", "", x_label);
}

static void put_panel(struct lm_strbuf *b, const struct svg_panel *p, int n_x, double px, double py,
                      const char *x_label)
{
    double x0 = px + LEFT, y0 = py + TOP, w = PANEL_W - LEFT - RIGHT, h = PANEL_H - TOP - BOTTOM;
    double lo, hi, step;
    y_range(p, n_x, &lo, &hi, &step);
    lm_strbuf_puts(b, "<g class=\"panel\" data-stat=\"");
    put_escaped(b, p->stat ? p->stat : p->title);
    lm_strbuf_puts(b, "\">\n");
    put_text(b, x0 + w / 2, py + 20, "middle", " font-weight=\"bold\"", p->title);
    put_axes(b, x0, y0, w, h, n_x, lo, hi, step, x_label);
    for (int s = 0; s < p->n_series; s++) {
        const char *colour = palette[s % LM_ARRAY_SIZE(palette)];
        lm_strbuf_printf(b, "<polyline class=\"series\" fill=\"none\" stroke=\"%s\" stroke-width=\"2\" "
                         "data-series=\"", colour);
        put_escaped(b, p->series[s].name);
        lm_strbuf_puts(b, "\" points=\"");
        bool first = true;
        for (int i = 0; i < n_x; i++) {
            double v = p->series[s].y[i];
            if (!isfinite(v))
                continue;
            lm_strbuf_puts(b, first ? "" : " ");
            put_coord(b, x0 + (n_x > 1 ? (double)i / (n_x - 1) * w : w / 2));
            lm_strbuf_puts(b, ",");
            put_coord(b, y0 + h - (v - lo) / (hi - lo) * h);
            first = false;
        }
        lm_strbuf_puts(b, "\"/>\n");
        /* Legend entry: a swatch of the line, then the name. */
        double ly = y0 + 8 + s * 18;
        char style[96];
        snprintf(style, sizeof(style), "stroke=\"%s\" stroke-width=\"2\"", colour);
        put_line(b, x0 + w + 14, ly, x0 + w + 38, ly, style);
        put_text(b, x0 + w + 44, ly + 4, "start", " class=\"legend\"", p->series[s].name);
    }
    lm_strbuf_puts(b, "</g>\n");
}

char *svg_plot(const char *title, const char *x_label, int n_x, const struct svg_panel *panels, int n_panels)
{
    if (n_x < 1 || n_panels < 1) {
        lm_err(LM_EINVAL, "nothing to plot (%d points, %d panels)", n_x, n_panels);
        return NULL;
    }
    int cols = n_panels > 1 ? 2 : 1, rows = (n_panels + cols - 1) / cols;
    int width = cols * PANEL_W, height = TITLE_H + rows * PANEL_H;
    struct lm_strbuf b = { 0 };
    lm_strbuf_printf(&b, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
                     "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
                     "viewBox=\"0 0 %d %d\" font-family=\"sans-serif\" font-size=\"12\">\n",
                     width, height, width, height);
    lm_strbuf_printf(&b, "<rect width=\"%d\" height=\"%d\" fill=\"#ffffff\"/>\n", width, height);
    put_text(&b, width / 2.0, 26, "middle", " font-size=\"16\" font-weight=\"bold\"", title);
    for (int i = 0; i < n_panels; i++)
        put_panel(&b, &panels[i], n_x, (i % cols) * PANEL_W, TITLE_H + (i / cols) * PANEL_H, x_label);
    lm_strbuf_puts(&b, "</svg>\n");
    return lm_strbuf_finish(&b);
}
