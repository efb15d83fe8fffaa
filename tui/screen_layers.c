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

/* "1e-4", "3e+5": a number in 4 cells when nothing else fits. */
static void short_exponent(double v, char *buf, size_t size)
{
    int e = (int)floor(log10(fabs(v)));
    int m = (int)lround(fabs(v) / pow(10, e));
    if (m >= 10) {
        m = 1;
        e++;
    }
    snprintf(buf, size, "%s%de%d", v < 0 ? "-" : "", m, e);
}

void layers_format_fit(double v, int width, char *buf, size_t size)
{
    layers_format_number(v, buf, size);
    if (isnan(v) || draw_width(buf) <= width)
        return;
    if (v != 0 && fabs(v) < 1e-3) {
        short_exponent(v, buf, size);
        return;
    }
    for (int dec = 3; dec >= 0; dec--) {
        snprintf(buf, size, "%.*f", dec, v);
        if (dec > 0 && fabs(v) < 1) {   /* "0.253" -> ".253" */
            char *z = strstr(buf, "0.");
            if (z && (z == buf || (z == buf + 1 && buf[0] == '-')))
                memmove(z, z + 1, strlen(z));
        }
        if ((int)strlen(buf) <= width)
            return;
    }
    short_exponent(v, buf, size);
}

void layers_table_layout(const struct layer_table *t, int width, struct layers_layout *l)
{
    int n = t->n_cols;
    bool has_coef = n > 0 && t->cols[n - 1].metric == LT_COEF;
    int n_stat = has_coef ? n - 1 : n;
    l->label_w = width >= 100 ? 13 : 11;
    l->coef_w = has_coef ? LM_MAX_INT((int)strlen(t->cols[n - 1].title) + 1, 9) : 0;
    l->cw = n_stat ? (width - l->label_w - l->coef_w) / n_stat : 0;
    if (l->cw > 18)
        l->cw = 18;
    /* Wide: a 6-cell number, a blank, the bar, a blank. Narrow (80
     * columns): a 4-cell number with its 2-cell bar right after it, then
     * the blank that separates columns. */
    l->narrow = l->cw < 12;
    l->numw = l->narrow ? LM_MAX_INT(l->cw - 3, 3) : 6;
    l->barw = LM_MAX_INT(l->cw - l->numw - (l->narrow ? 1 : 2), 0);
    for (int c = 0; c < n; c++)
        l->col_x[c] = l->label_w + c * l->cw;
}

/* A column title that fits `room` cells: "conflict" becomes "confl". */
static void column_title(const struct lt_column *c, const char *mark, int room, char *buf, size_t size)
{
    snprintf(buf, size, "%s%s", mark, c->title);
    if (draw_width(buf) > room && c->metric == LT_CONFLICT)
        snprintf(buf, size, "%sconfl", mark);
}

int layers_draw_table(WINDOW *w, int y0, int h, int width, const struct layer_table *t,
                      size_t sel, size_t *top, int mark_first, int mark_last, int *col_x)
{
    struct layers_layout l;
    layers_table_layout(t, width, &l);
    const int label_w = l.label_w, cw = l.cw, numw = l.numw, barw = l.barw;
    int n = t->n_cols;
    /* Group titles over their columns. */
    draw_fill(w, y0, 0, width, UI_ROLE_NORMAL);
    for (int c = 0; c < n; c++) {
        if (c > 0 && t->cols[c].group == t->cols[c - 1].group)
            continue;
        const char *g = t->cols[c].group == TN_GROUP_ATTN ? "attention" : t->cols[c].group == TN_GROUP_MLP
                        ? "mlp" : "tuning";
        int span = 0;
        for (int k = c; k < n && t->cols[k].group == t->cols[c].group; k++)
            span += t->cols[k].metric == LT_COEF ? l.coef_w : cw;
        char title[64];
        snprintf(title, sizeof(title), "%s %s ", draw_unicode() ? "\u2500" : "-", g);
        draw_text(w, y0, l.col_x[c], span - 1, UI_ROLE_TITLE, title);
    }
    /* Column titles. */
    int y = y0 + 1;
    draw_fill(w, y, 0, width, UI_ROLE_COLUMN);
    draw_text(w, y, 1, label_w - 1, t->sort_col < 0 ? UI_ROLE_COLUMN_SORT : UI_ROLE_COLUMN, "layer");
    for (int c = 0; c < n; c++) {
        const char *mark = c != t->sort_col ? "" : t->sort_desc ? (draw_unicode() ? "\u25bc" : "v")
                                                                : (draw_unicode() ? "\u25b2" : "^");
        int room = (t->cols[c].metric == LT_COEF ? width - l.col_x[c] : cw) - 1;
        char title[32];
        column_title(&t->cols[c], mark, room, title, sizeof(title));
        if (col_x)
            col_x[c] = l.col_x[c];
        draw_text(w, y, l.col_x[c], room, c == t->sort_col ? UI_ROLE_COLUMN_SORT : UI_ROLE_COLUMN, title);
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
            int x = l.col_x[c];
            double v = row->value[c];
            char num[32];
            if (t->cols[c].metric == LT_COEF) {
                draw_textf(w, ry, x, width - x, is_sel ? base : UI_ROLE_VALUE, "%6s", row->coef_text);
                continue;
            }
            bool pending = isnan(v) && row->n_done < row->n_tensors &&
                           (row->layer >= 0 || t->cols[c].group == TN_GROUP_ATTN);
            if (pending)
                snprintf(num, sizeof(num), "%s", draw_unicode() ? "\u2026" : "..");
            else if (isnan(v))
                num[0] = '\0';
            else
                layers_format_fit(v, numw, num, sizeof(num));
            double heat = lt_heat(t, c, v);
            enum ui_role hr = draw_heat_role(heat);
            int nw = draw_width(num);
            draw_text(w, ry, x + (numw > nw ? numw - nw : 0), numw, is_sel ? base : isnan(v) ? UI_ROLE_DIM : hr, num);
            if (barw > 0 && !isnan(heat))
                draw_bar(w, ry, x + numw + (l.narrow ? 0 : 1), barw, heat, is_sel ? base : hr);
        }
    }
    return y + 1;
}

/* The line above the table: statistics progress, the pair or model the
 * columns are about, what the tuning keys change, the marked range. */
static void draw_info(struct ui_app *a, int y, int w, int first, int last)
{
    const struct layer_table *t = &a->table;
    char info[512];
    const struct merge_param_spec *s = ui_tuned_param(a);
    const char *model = ui_tuned_model(a), *mod = ui_tuned_module(a);
    int nm = ws_n_models(a->ws);
    int n = 0;
    info[0] = '\0';
    if (s)
        n += snprintf(info + n, sizeof(info) - (size_t)n, " tuning %s%s%s, %s", s->name, model ? " of " : "",
                      model ? model : "", !mod ? "whole layers" : strcmp(mod, "mlp") == 0 ? "MLP only"
                      : "attention only");
    if (first >= 0)
        n += snprintf(info + n, sizeof(info) - (size_t)n, " | marked %d-%d", first, last);
    if (s)
        n += snprintf(info + n, sizeof(info) - (size_t)n, " | p m M choose, +/- step, = types");
    if (nm >= 2)
        n += snprintf(info + n, sizeof(info) - (size_t)n, " | pair %s x %s", ws_model(a->ws, a->pair_a % nm)->name,
                      ws_model(a->ws, a->pair_b % nm)->name);
    snprintf(info + n, sizeof(info) - (size_t)n, " | stats %zu/%zu", t->n_tensors_done, t->n_tensors_total);
    draw_text(a->win, y, 0, w, UI_ROLE_NORMAL, info);
}

void screen_layers_draw(struct ui_app *a, int y0, int h, int w)
{
    const struct layer_table *t = &a->table;
    int first = -1, last = -2;
    const struct lt_row *row = a->sel < t->n_rows ? &t->rows[t->order[a->sel]] : NULL;
    if (a->mark_layer >= 0 && row && row->layer >= 0) {
        first = a->mark_layer < row->layer ? a->mark_layer : row->layer;
        last = a->mark_layer > row->layer ? a->mark_layer : row->layer;
    }
    draw_info(a, y0, w, first, last);
    a->col_title_y = y0 + 2;
    a->list_y0 = layers_draw_table(a->win, y0 + 1, h - 2, w, t, a->sel, &a->top, first, last, a->col_x);
    a->n_col_x = t->n_cols;
    /* The legend: the sorted column's meaning, else all columns in short. */
    const char *legend = t->sort_col >= 0 ? lt_metric_help(t->cols[t->sort_col].metric)
                                          : lt_legend(ws_n_models(a->ws), w - 1);
    draw_text(a->win, y0 + h - 1, 1, w - 1, UI_ROLE_DIM, legend);
}
