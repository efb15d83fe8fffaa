/* The Layers screen: one row per layer (and embeddings, final norm,
 * lm_head), statistics per module as numbers and heat bars, the tuned
 * coefficient, override marks, and the marked range. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "app.h"
#include "draw.h"
#include "screen_layers.h"

void layers_format_number(double v, char *buf, size_t size)
{
    if (isnan(v))
        snprintf(buf, size, "%s", draw_unicode() ? "\u00b7" : ".");
    else if (v != 0 && fabs(v) < 1e-3)
        snprintf(buf, size, "%s", v < 0 ? "-0.000" : "<.001"); /* fits the 5-6 cell column */
    else if (fabs(v) >= 1e5)
        snprintf(buf, size, "%.0e", v);
    else if (fabs(v) >= 100)
        snprintf(buf, size, "%.1f", v);
    else
        snprintf(buf, size, "%.3f", v);
}

int layers_draw_table(WINDOW *w, int y0, int h, int width, const struct layer_table *t,
                      size_t sel, size_t *top, int mark_first, int mark_last, int *col_x)
{
    const int label_w = 13;
    int n = t->n_cols;
    int cw = n ? (width - label_w) / n : 0;
    if (cw > 18)
        cw = 18;
    int numw = 6;
    int barw = cw - numw - 1;
    if (barw < 0)
        barw = 0;
    /* Group titles over their columns. */
    draw_fill(w, y0, 0, width, UI_ROLE_NORMAL);
    for (int c = 0; c < n; c++) {
        if (c > 0 && t->cols[c].group == t->cols[c - 1].group)
            continue;
        const char *g = t->cols[c].group == TN_GROUP_ATTN ? "attention" : t->cols[c].group == TN_GROUP_MLP
                        ? "mlp" : "tuning";
        int span = 0;
        for (int k = c; k < n && t->cols[k].group == t->cols[c].group; k++)
            span += cw;
        char title[64];
        snprintf(title, sizeof(title), "\u2500 %s ", g);
        if (!draw_unicode())
            snprintf(title, sizeof(title), "- %s ", g);
        draw_text(w, y0, label_w + c * cw, span - 1, UI_ROLE_TITLE, title);
    }
    /* Column titles. */
    int y = y0 + 1;
    draw_fill(w, y, 0, width, UI_ROLE_COLUMN);
    draw_text(w, y, 1, label_w - 1, t->sort_col < 0 ? UI_ROLE_COLUMN_SORT : UI_ROLE_COLUMN, "layer");
    for (int c = 0; c < n; c++) {
        char title[32];
        snprintf(title, sizeof(title), "%s%s",
                 c == t->sort_col ? (t->sort_desc ? (draw_unicode() ? "\u25bc" : "v") : (draw_unicode() ? "\u25b2" : "^")) : "",
                 t->cols[c].title);
        int x = label_w + c * cw;
        if (col_x)
            col_x[c] = x;
        draw_text(w, y, x, cw - 1, c == t->sort_col ? UI_ROLE_COLUMN_SORT : UI_ROLE_COLUMN, title);
    }
    /* Rows. */
    int rows_h = h - 2;
    if (rows_h < 1)
        return y + 1;
    if (sel < *top)
        *top = sel;
    if (sel >= *top + (size_t)rows_h)
        *top = sel - (size_t)rows_h + 1;
    for (int i = 0; i < rows_h; i++) {
        size_t p = *top + (size_t)i;
        int ry = y + 1 + i;
        if (p >= t->n_rows)
            break;
        const struct lt_row *row = &t->rows[t->order[p]];
        bool marked = row->layer >= 0 && row->layer >= mark_first && row->layer <= mark_last;
        bool is_sel = p == sel;
        enum ui_role base = is_sel ? UI_ROLE_SELECTION : UI_ROLE_NORMAL;
        draw_fill(w, ry, 0, width, base);
        draw_text(w, ry, 0, 1, is_sel ? base : UI_ROLE_OVERRIDE, row->has_override ? "*" : " ");
        char label[32];
        snprintf(label, sizeof(label), "%s%s", marked ? (draw_unicode() ? "\u258c" : "|") : " ", row->label);
        draw_text(w, ry, 1, label_w - 1, is_sel ? base : marked ? UI_ROLE_MARKED : UI_ROLE_NORMAL, label);
        for (int c = 0; c < n; c++) {
            int x = label_w + c * cw;
            double v = row->value[c];
            char num[32];
            if (t->cols[c].metric == LT_COEF) {
                snprintf(num, sizeof(num), "%s", row->coef_text);
                draw_textf(w, ry, x, cw - 1, is_sel ? base : UI_ROLE_VALUE, "%*s", numw, num);
                continue;
            }
            bool pending = isnan(v) && row->n_done < row->n_tensors &&
                           (row->layer >= 0 || t->cols[c].group == TN_GROUP_ATTN);
            if (pending)
                snprintf(num, sizeof(num), "%s", draw_unicode() ? "\u2026" : "..");
            else if (isnan(v))
                num[0] = '\0';
            else
                layers_format_number(v, num, sizeof(num));
            double heat = lt_heat(t, c, v);
            enum ui_role hr = draw_heat_role(heat);
            int nw = draw_width(num);
            draw_text(w, ry, x + (numw > nw ? numw - nw : 0), numw, is_sel ? base : isnan(v) ? UI_ROLE_DIM : hr, num);
            if (barw > 0 && !isnan(heat))
                draw_bar(w, ry, x + numw + 1, barw, heat, is_sel ? base : hr);
        }
    }
    return y + 1;
}

void screen_layers_draw(struct ui_app *a, int y0, int h, int w)
{
    const struct layer_table *t = &a->table;
    /* Info line: statistics progress, tuning target, marked range. */
    char info[512];
    const struct merge_param_spec *s = ui_tuned_param(a);
    const char *model = ui_tuned_model(a), *mod = ui_tuned_module(a);
    int n = snprintf(info, sizeof(info), " stats %zu/%zu", t->n_tensors_done, t->n_tensors_total);
    if (ws_n_models(a->ws) >= 2)
        n += snprintf(info + n, sizeof(info) - (size_t)n, "  pair %s x %s",
                      ws_model(a->ws, a->pair_a % ws_n_models(a->ws))->name,
                      ws_model(a->ws, a->pair_b % ws_n_models(a->ws))->name);
    else if (ws_n_models(a->ws) == 1)
        n += snprintf(info + n, sizeof(info) - (size_t)n, "  model %s", ws_model(a->ws, 0)->name);
    if (s)
        n += snprintf(info + n, sizeof(info) - (size_t)n, "  tune: %s%s%s%s in %s (p m M, +/- = r)",
                      s->name, model ? "(" : "", model ? model : "", model ? ")" : "",
                      mod ? mod : "whole layer");
    int first = -1, last = -2;
    const struct lt_row *row = a->sel < t->n_rows ? &t->rows[t->order[a->sel]] : NULL;
    if (a->mark_layer >= 0 && row && row->layer >= 0) {
        first = a->mark_layer < row->layer ? a->mark_layer : row->layer;
        last = a->mark_layer > row->layer ? a->mark_layer : row->layer;
        snprintf(info + n, sizeof(info) - (size_t)n, "  marked %d-%d", first, last);
    }
    draw_text(a->win, y0, 0, w, UI_ROLE_NORMAL, info);
    a->col_title_y = y0 + 2;
    a->list_y0 = layers_draw_table(a->win, y0 + 1, h - 1, w, t, a->sel, &a->top, first, last, a->col_x);
    a->n_col_x = t->n_cols;
}
