/* Tensor detail: every tensor of the selected layer row with its numbers,
 * and for the selected tensor a histogram of |delta| per model (log scale)
 * with the trim threshold the current density gives.
 *
 * The histogram comes from the workspace (ws_delta_histogram), sampled
 * over at most HIST_SAMPLE evenly strided entries for large tensors. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "app.h"
#include "draw.h"
#include "lm_error.h"
#include "numfmt.h"
#include "screen_layers.h"
#include "workspace.h"

#define HIST_SAMPLE (1u << 22)

size_t screen_detail_tensors(const struct ui_app *a, size_t *idx, size_t max)
{
    if (a->sel >= a->table.n_rows)
        return 0;
    const struct lt_row *row = &a->table.rows[a->table.order[a->sel]];
    size_t n = 0;
    for (size_t i = 0; i < ws_n_tensors(a->ws); i++) {
        const struct tn_info *info = &ws_tensor(a->ws, i)->info;
        bool in = row->layer >= 0 ? info->layer == row->layer : (info->layer < 0 && info->group == row->group);
        if (!in)
            continue;
        if (idx && n < max)
            idx[n] = i;
        n++;
    }
    return n;
}

/* ===== Histogram job ===== */

int ui_hist_job(struct job *j, void *ud)
{
    struct ui_app *a = ud;
    struct ui_hist *h = &a->hist;
    struct ws_histogram *wh = lm_malloc(sizeof(*wh));
    if (!wh)
        return LM_ENOMEM;
    job_progress(j, 0.0, "histogram");
    int rc = ws_delta_histogram(a->ws, (size_t)h->tensor, UI_HIST_BINS, HIST_SAMPLE, wh);
    if (!rc) {
        memset(h->counts, 0, sizeof(h->counts));
        h->n_models = wh->n_models;
        h->lo = wh->lo;
        h->hi = wh->hi;
        for (int m = 0; m < wh->n_models; m++) {
            memcpy(h->counts[m], wh->counts[m], sizeof(h->counts[m]));
            h->threshold_bin[m] = wh->threshold_bin[m];
        }
    }
    free(wh);
    return rc;
}

/* ===== Drawing ===== */

/* The line under a histogram: a marker under the threshold column and its
 * value ("^ trim at |d| = 1e-2.31 (density 0.4): left of the line is
 * dropped"), placed so that the text fits beside the marker. */
static void draw_threshold_note(struct ui_app *a, int y, int nb, int mark, int bin, double density, int w)
{
    char note[160], dens[LM_NUMBER_MAX];
    lm_format_number(density, dens, sizeof(dens));
    if (mark < 0) {
        snprintf(note, sizeof(note), "no trimming (density %s)", dens);
        draw_text(a->win, y, 18, w - 18, UI_ROLE_DIM, note);
        return;
    }
    double at = a->hist.lo + (a->hist.hi - a->hist.lo) * (bin + 0.5) / UI_HIST_BINS;
    snprintf(note, sizeof(note), "trim at |d| = 1e%.2f (density %s): left of the line is dropped", at, dens);
    const char *arrow = draw_unicode() ? "\u25b2" : "^";
    int x = 18 + mark, len = draw_width(note);
    draw_text(a->win, y, x, 1, UI_ROLE_THRESHOLD, arrow);
    if (x + 2 + len <= w || x - 1 - len < 0)
        draw_text(a->win, y, x + 2, w - x - 2, UI_ROLE_THRESHOLD, note);
    else
        draw_text(a->win, y, x - 1 - len, len, UI_ROLE_THRESHOLD, note);
    (void)nb;
}

void screen_detail_draw(struct ui_app *a, int y0, int h, int w)
{
    size_t idx[512];
    size_t n = screen_detail_tensors(a, idx, 512);
    if (n > 512)
        n = 512;
    const struct lt_row *row = a->sel < a->table.n_rows ? &a->table.rows[a->table.order[a->sel]] : NULL;
    draw_textf(a->win, y0, 0, w, UI_ROLE_TITLE, " %s: %zu tensors  (Up/Down: tensor, F5: back to layers)",
               row ? row->label : "?", n);
    int nm = ws_n_models(a->ws);
    int pa = nm ? a->pair_a % nm : 0, pb = nm > 1 ? a->pair_b % nm : 0;
    draw_fill(a->win, y0 + 1, 0, w, UI_ROLE_COLUMN);
    char head[256];
    if (nm >= 2)
        snprintf(head, sizeof(head), " %-26s %-10s %8s %8s %8s %8s %8s %8s", "tensor", "shape", "norm", "rel",
                 "cos", "conflict", "ties_cf", "merged");
    else
        snprintf(head, sizeof(head), " %-26s %-10s %8s %8s %8s %8s %8s %8s", "tensor", "shape", "norm", "rel",
                 "topk", "flips", "ties_cf", "merged");
    draw_text(a->win, y0 + 1, 0, w, UI_ROLE_COLUMN, head);
    /* Histogram rows per model: 3 lines of bars and a line naming the
     * threshold, fewer when the terminal is short. */
    int bar_rows = h - 2 - (nm * 2 + 2) >= 3 + nm * 2 ? 3 : 1;
    int hist_h = nm * (bar_rows + 1) + 1;
    int list_h = h - 2 - hist_h;
    if (list_h < 3)
        list_h = 3;
    if (a->detail_sel >= n)
        a->detail_sel = n ? n - 1 : 0;
    if (a->detail_sel < a->detail_top)
        a->detail_top = a->detail_sel;
    if (a->detail_sel >= a->detail_top + (size_t)list_h)
        a->detail_top = a->detail_sel - (size_t)list_h + 1;
    for (int i = 0; i < list_h && a->detail_top + (size_t)i < n; i++) {
        size_t k = a->detail_top + (size_t)i;
        const struct ws_tensor *t = ws_tensor(a->ws, idx[k]);
        const struct stats_raw *s = ws_tensor_stats(a->ws, idx[k]);
        char shape[32];
        if (t->ndim >= 2)
            snprintf(shape, sizeof(shape), "%lldx%lld", (long long)t->shape[0], (long long)t->shape[1]);
        else
            snprintf(shape, sizeof(shape), "%lld", (long long)t->shape[0]);
        /* The name without "model.layers.N." */
        const char *name = t->name;
        const char *lp = strstr(name, "layers.");
        if (lp && t->info.layer >= 0) {
            const char *dot = strchr(lp + 7, '.');
            if (dot)
                name = dot + 1;
        }
        char line[512];
        int len = snprintf(line, sizeof(line), " %-26.26s %-10s", name, shape);
        double vals[6] = { NAN, NAN, NAN, NAN, NAN, NAN };
        if (s) {
            vals[0] = stats_norm(s, pa);
            vals[1] = stats_rel(s, pa);
            vals[2] = nm >= 2 ? stats_cos(s, pa, pb) : stats_topk_energy(s, pa);
            vals[3] = nm >= 2 ? stats_conflict(s, pa, pb) : stats_sign_flip(s);
            vals[4] = stats_ties_conflict(s);
            vals[5] = stats_merged_rel(s);
        }
        for (int c = 0; c < 6; c++) {
            char num[32];
            layers_format_number(vals[c], num, sizeof(num));
            len += snprintf(line + len, sizeof(line) - (size_t)len, " %8s", num);
        }
        bool sel = k == a->detail_sel;
        draw_fill(a->win, y0 + 2 + i, 0, w, sel ? UI_ROLE_SELECTION : UI_ROLE_NORMAL);
        draw_text(a->win, y0 + 2 + i, 0, w, sel ? UI_ROLE_SELECTION : s ? UI_ROLE_NORMAL : UI_ROLE_DIM, line);
    }
    /* Histogram of the selected tensor. */
    if (n == 0)
        return;
    long ti = (long)idx[a->detail_sel];
    int y = y0 + 2 + list_h;
    if (a->hist.tensor != ti && a->hist_wanted != ti)
        a->hist_wanted = ti;
    draw_textf(a->win, y, 0, w, UI_ROLE_TITLE, " |delta| of %s, log10 scale%s", ws_tensor(a->ws, (size_t)ti)->name,
               a->hist.tensor == ti && a->hist.ready ? "" : " (computing)");
    if (a->hist.tensor != ti || !a->hist.ready)
        return;
    struct merge_tensor_params p;
    ws_tensor_params(a->ws, (size_t)ti, &p);
    int bins = w - 20 < UI_HIST_BINS ? w - 20 : UI_HIST_BINS;
    for (int m = 0; m < nm && m < a->hist.n_models; m++) {
        double v[UI_HIST_BINS], mx = 0;
        int group = bins > 0 ? (UI_HIST_BINS + bins - 1) / bins : UI_HIST_BINS;   /* fits w */
        int nb = UI_HIST_BINS / (group ? group : 1);
        for (int b = 0; b < nb; b++) {
            v[b] = 0;
            for (int g = 0; g < group; g++)
                v[b] += a->hist.counts[m][b * group + g];
            if (v[b] > mx)
                mx = v[b];
        }
        int mark = a->hist.threshold_bin[m] >= 0 ? a->hist.threshold_bin[m] / (group ? group : 1) : -1;
        int yy = y + 1 + m * (bar_rows + 1);
        draw_textf(a->win, yy, 0, 18, UI_ROLE_NORMAL, " %-16.16s", ws_model(a->ws, m)->name);
        draw_textf(a->win, yy + 1, 0, 18, UI_ROLE_DIM, " 1e%.1f .. 1e%.1f", a->hist.lo, a->hist.hi);
        draw_histogram(a->win, yy, 18, bar_rows, v, nb, mx, mark, UI_ROLE_HEAT_LOW);
        draw_threshold_note(a, yy + bar_rows, nb, mark, a->hist.threshold_bin[m], p.density[m], w);
    }
}
