/* The Chart screen: one statistic across the layers, one line per module
 * (attention, MLP) or per projection, drawn with braille dots (2 x 4 per
 * cell; ASCII '*' and '.' without UTF-8), the selected layer marked by a
 * vertical line and read out in the legend. It reads the workspace's
 * statistics on every frame, so it follows tuning and the statistics pass
 * as they happen. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "app.h"
#include "draw.h"
#include "lm_error.h"
#include "screen_layers.h"
#include "ws_explain.h"

#define CHART_MAX_W 400
#define CHART_MAX_H 120

static const enum ui_role series_roles[] = { UI_ROLE_SERIES1, UI_ROLE_SERIES2, UI_ROLE_SERIES3, UI_ROLE_SERIES4,
                                             UI_ROLE_SERIES5, UI_ROLE_SERIES6, UI_ROLE_SERIES7 };

/* A dot canvas: cw x ch cells of 2 x 4 dots, each cell remembering the
 * series that last set one of its dots. */
struct canvas {
    int cw, ch;
    unsigned char dots[CHART_MAX_H][CHART_MAX_W];
    signed char owner[CHART_MAX_H][CHART_MAX_W];
};

static void canvas_dot(struct canvas *c, int px, int py, int series)
{
    static const unsigned char bit[4][2] = { { 0x01, 0x08 }, { 0x02, 0x10 }, { 0x04, 0x20 }, { 0x40, 0x80 } };
    if (px < 0 || py < 0 || px >= c->cw * 2 || py >= c->ch * 4)
        return;
    c->dots[py / 4][px / 2] |= bit[py % 4][px % 2];
    c->owner[py / 4][px / 2] = (signed char)series;
}

/* A straight line of dots from (x0, y0) to (x1, y1) (Bresenham). */
static void canvas_line(struct canvas *c, int x0, int y0, int x1, int y1, int series)
{
    int dx = abs(x1 - x0), dy = -abs(y1 - y0), sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1, err = dx + dy;
    for (;;) {
        canvas_dot(c, x0, y0, series);
        if (x0 == x1 && y0 == y1)
            break;
        int e2 = 2 * err;
        if (e2 >= dy) {
            err += dy;
            x0 += sx;
        }
        if (e2 <= dx) {
            err += dx;
            y0 += sy;
        }
    }
}

/* Braille U+2800 + dots as UTF-8, or an ASCII stand-in. */
static void cell_text(unsigned char dots, char *buf)
{
    if (!draw_unicode()) {
        int n = __builtin_popcount(dots);
        snprintf(buf, 4, "%c", n >= 3 ? '*' : n ? '.' : ' ');
        return;
    }
    unsigned cp = 0x2800u + dots;
    buf[0] = (char)(0xE0 | (cp >> 12));
    buf[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
    buf[2] = (char)(0x80 | (cp & 0x3F));
    buf[3] = '\0';
}

/* The selected layer, or -1 when the selection is no layer. */
static int selected_layer(const struct ui_app *a)
{
    if (a->sel >= a->table.n_rows)
        return -1;
    return a->table.rows[a->table.order[a->sel]].layer;
}

/* The y range of the series: their finite values, from 0 when all are
 * positive and near it; false when there is nothing to draw yet. */
static bool value_range(const struct ws_series *s, int n, int n_layers, double *lo, double *hi)
{
    *lo = INFINITY;
    *hi = -INFINITY;
    for (int k = 0; k < n; k++)
        for (int l = 0; l < n_layers; l++)
            if (isfinite(s[k].y[l])) {
                *lo = fmin(*lo, s[k].y[l]);
                *hi = fmax(*hi, s[k].y[l]);
            }
    if (!isfinite(*lo))
        return false;
    if (*lo > 0 && *lo < *hi / 2)
        *lo = 0;
    if (*hi - *lo < 1e-12)
        *hi = *lo + (*lo != 0 ? fabs(*lo) * 0.1 : 1);
    return true;
}

/* Title and legend: the statistic, the keys, and each line's value at
 * the selected layer in its colour. */
static void draw_legend(struct ui_app *a, int y, int w, const struct ws_series *s, int n, int layer)
{
    int x = layer >= 0 ? draw_textf(a->win, y, 0, w, UI_ROLE_NORMAL, " layer %d:", layer)
                       : draw_text(a->win, y, 0, w, UI_ROLE_NORMAL, " (Left/Right select a layer)");
    for (int k = 0; k < n && x < w; k++) {
        char num[32] = "-";
        if (layer >= 0 && isfinite(s[k].y[layer]))
            layers_format_number(s[k].y[layer], num, sizeof(num));
        x += draw_text(a->win, y, x, w - x, series_roles[k % LM_ARRAY_SIZE(series_roles)],
                       draw_unicode() ? "  \u2501\u2501 " : "  -- ");
        x += draw_textf(a->win, y, x, w - x, UI_ROLE_NORMAL, "%s %s", s[k].name, num);
    }
}

/* The x axis: a rule, then layer numbers where they fit, the selected one
 * highlighted. */
static void draw_x_axis(struct ui_app *a, int y, int x0, int cw, int n_layers, int layer)
{
    for (int i = 0; i < cw; i++)
        draw_text(a->win, y, x0 + i, 1, UI_ROLE_DIM, draw_unicode() ? "\u2500" : "-");
    int next_free = 0;
    for (int l = 0; l < n_layers; l++) {
        int cx = n_layers > 1 ? (int)lround((double)l / (n_layers - 1) * (cw * 2 - 1)) / 2 : cw / 2;
        char num[16];
        int len = snprintf(num, sizeof(num), "%d", l);
        int at = x0 + cx - len / 2;
        if (at < next_free && l != layer)
            continue;
        draw_text(a->win, y + 1, at, len, l == layer ? UI_ROLE_SELECTION : UI_ROLE_DIM, num);
        next_free = at + len + 1;
    }
}

static void draw_plot(struct ui_app *a, int y0, int h, int w, const struct ws_series *s, int n, int n_layers,
                      int layer)
{
    static struct canvas c;
    const int axis_w = 8;
    double lo, hi;
    if (!value_range(s, n, n_layers, &lo, &hi)) {
        draw_text(a->win, y0 + 1, 1, w - 1, UI_ROLE_DIM, "no statistics yet: they fill in as the pass runs");
        return;
    }
    c.cw = LM_MIN_INT(w - axis_w - 1, CHART_MAX_W);
    c.ch = LM_MIN_INT(h - 2, CHART_MAX_H);
    if (c.cw < 4 || c.ch < 2)
        return;
    memset(c.dots, 0, sizeof(c.dots));
    memset(c.owner, -1, sizeof(c.owner));
    int pw = c.cw * 2 - 1, ph = c.ch * 4 - 1;
    for (int k = 0; k < n; k++) {
        int px = -1, py = -1;
        for (int l = 0; l < n_layers; l++) {
            if (!isfinite(s[k].y[l])) {
                px = -1;
                continue;
            }
            int x = n_layers > 1 ? (int)lround((double)l / (n_layers - 1) * pw) : pw / 2;
            int y = (int)lround((1 - (s[k].y[l] - lo) / (hi - lo)) * ph);
            if (px >= 0)
                canvas_line(&c, px, py, x, y, k);
            else
                canvas_dot(&c, x, y, k);
            px = x;
            py = y;
        }
    }
    int sel_cx = layer < 0 ? -1 : n_layers > 1 ? (int)lround((double)layer / (n_layers - 1) * pw) / 2 : c.cw / 2;
    char num[32];
    for (int r = 0; r < c.ch; r++) {
        if (r == 0 || r == c.ch - 1 || r == c.ch / 2) {
            double v = r == 0 ? hi : r == c.ch - 1 ? lo : (hi + lo) / 2;
            layers_format_fit(v, axis_w - 2, num, sizeof(num));
            draw_textf(a->win, y0 + r, 0, axis_w - 1, UI_ROLE_DIM, "%*s", axis_w - 2, num);
        }
        draw_text(a->win, y0 + r, axis_w - 1, 1, UI_ROLE_DIM, draw_unicode() ? "\u2502" : "|");
        for (int x = 0; x < c.cw; x++) {
            char cell[4];
            if (!c.dots[r][x] && x == sel_cx) {
                draw_text(a->win, y0 + r, axis_w + x, 1, UI_ROLE_MARKED, draw_unicode() ? "\u2502" : "|");
                continue;
            }
            if (!c.dots[r][x])
                continue;
            cell_text(c.dots[r][x], cell);
            enum ui_role role = series_roles[c.owner[r][x] % (int)LM_ARRAY_SIZE(series_roles)];
            draw_text(a->win, y0 + r, axis_w + x, 1, role, cell);
        }
    }
    draw_x_axis(a, y0 + c.ch, axis_w, c.cw, n_layers, layer);
}

void screen_chart_draw(struct ui_app *a, int y0, int h, int w)
{
    enum ws_stat stats[WS_STAT_COUNT];
    int nm = ws_n_models(a->ws), n_stats = ws_stats_for(nm, stats);
    int k = ((a->chart_stat % n_stats) + n_stats) % n_stats;
    enum ws_stat stat = stats[k];
    int pa = nm ? a->pair_a % nm : 0, pb = nm > 1 ? a->pair_b % nm : 0;
    char who[160] = "";
    if (ws_stat_per_model(stat))
        snprintf(who, sizeof(who), " of %s", ws_model(a->ws, pa)->name);
    else if (ws_stat_per_pair(stat))
        snprintf(who, sizeof(who), " of %s x %s", ws_model(a->ws, pa)->name, ws_model(a->ws, pb)->name);
    draw_textf(a->win, y0, 0, w, UI_ROLE_TITLE, " Chart: %s%s per %s | [ ] F6 statistic, P %s, Left/Right "
               "layer, +/- tune", ws_stat_name(stat), who, a->chart_projections ? "projection" : "module",
               a->chart_projections ? "modules" : "projections");
    struct ws_series s[WS_SERIES_MAX];
    int n = 0;
    if (ws_layer_series(a->ws, stat, a->chart_projections, pa, pb, s, &n) != 0) {
        draw_text(a->win, y0 + 1, 1, w - 1, UI_ROLE_STATUS_ERROR, lm_last_error());
        return;
    }
    int layer = selected_layer(a);
    draw_legend(a, y0 + 1, w, s, n, layer);
    draw_plot(a, y0 + 2, h - 3, w, s, n, ws_n_layers(a->ws), layer);
    enum lt_metric m = stat == WS_STAT_NORM ? LT_NORM : stat == WS_STAT_REL ? LT_REL : stat == WS_STAT_TOPK
                     ? LT_TOPK : stat == WS_STAT_COS ? LT_COS : stat == WS_STAT_CONFLICT ? LT_CONFLICT
                     : stat == WS_STAT_TIES_CONFLICT ? LT_TIES_CONFLICT : LT_SIGN_FLIP;
    draw_text(a->win, y0 + h - 1, 1, w - 1, UI_ROLE_DIM, stat == WS_STAT_MERGED_REL
              ? "merged_rel: ||merged - base|| / ||base||, how far the merge moved the weights" : lt_metric_help(m));
    ws_series_free(s, n);
}
