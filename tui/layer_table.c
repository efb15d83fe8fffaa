/* The Layers screen's view model. */
#include "layer_table.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lm_error.h"
#include "tune.h"
#include "workspace.h"
#include "ws_explain.h"

static void add_col(struct layer_table *t, enum lt_metric m, enum tn_group g, const char *title)
{
    if (t->n_cols >= LT_MAX_COLS)
        return;
    struct lt_column *c = &t->cols[t->n_cols++];
    c->metric = m;
    c->group = g;
    snprintf(c->title, sizeof(c->title), "%s", title);
}

void lt_free(struct layer_table *t)
{
    free(t->rows);
    free(t->order);
    memset(t, 0, sizeof(*t));
}

int lt_setup(struct layer_table *t, int n_models, const char *coef_title, int n_layers,
             const char *const *extra_labels, const enum tn_group *extra_groups, size_t n_extra)
{
    int sort_col = t->sort_col;
    bool desc = t->sort_desc;
    bool had = t->rows != NULL;
    lt_free(t);
    t->sort_col = had ? sort_col : -1;
    t->sort_desc = desc;
    static const enum tn_group groups[2] = { TN_GROUP_ATTN, TN_GROUP_MLP };
    for (int g = 0; g < 2; g++) {
        add_col(t, LT_NORM, groups[g], "norm");
        add_col(t, LT_REL, groups[g], "rel");
        if (n_models >= 2) {
            add_col(t, LT_COS, groups[g], "cos");
            add_col(t, LT_CONFLICT, groups[g], "conflict");
        } else {
            add_col(t, LT_TOPK, groups[g], "topk");
            add_col(t, LT_SIGN_FLIP, groups[g], "flips");
        }
    }
    if (coef_title)
        add_col(t, LT_COEF, TN_GROUP_COUNT, coef_title);
    if (t->sort_col >= t->n_cols)
        t->sort_col = -1;
    size_t n = (size_t)n_layers + n_extra;
    t->rows = lm_calloc(n ? n : 1, sizeof(*t->rows));
    t->order = lm_calloc(n ? n : 1, sizeof(*t->order));
    if (!t->rows || !t->order) {
        lt_free(t);
        return LM_ENOMEM;
    }
    /* Embeddings first, then the layers, then the rest (tensor_name order). */
    size_t r = 0;
    for (size_t e = 0; e < n_extra; e++)
        if (extra_groups[e] == TN_GROUP_EMBED) {
            snprintf(t->rows[r].label, sizeof(t->rows[r].label), "%s", extra_labels[e]);
            t->rows[r].layer = -1;
            t->rows[r++].group = extra_groups[e];
        }
    for (int l = 0; l < n_layers; l++) {
        snprintf(t->rows[r].label, sizeof(t->rows[r].label), "layer %d", l);
        t->rows[r].layer = l;
        t->rows[r++].group = TN_GROUP_COUNT;
    }
    for (size_t e = 0; e < n_extra; e++)
        if (extra_groups[e] != TN_GROUP_EMBED) {
            snprintf(t->rows[r].label, sizeof(t->rows[r].label), "%s", extra_labels[e]);
            t->rows[r].layer = -1;
            t->rows[r++].group = extra_groups[e];
        }
    t->n_rows = r;
    for (size_t i = 0; i < r; i++) {
        for (int c = 0; c < LT_MAX_COLS; c++)
            t->rows[i].value[c] = NAN;
        t->order[i] = i;
    }
    return 0;
}

double lt_heat(const struct layer_table *t, int col, double v)
{
    if (isnan(v) || col < 0 || col >= t->n_cols)
        return NAN;
    double h;
    switch (t->cols[col].metric) {
    case LT_NORM:
    case LT_REL:
    case LT_TOPK:
    case LT_COEF:
        h = t->col_max[col] > 0 ? fabs(v) / t->col_max[col] : 0;
        break;
    case LT_COS:
        h = (1.0 - v) / 2.0;
        break;
    default:
        h = 2.0 * v;
        break;
    }
    return h < 0 ? 0 : h > 1 ? 1 : h;
}

const char *lt_metric_help(enum lt_metric m)
{
    switch (m) {
    case LT_NORM: return "norm: ||d||, the size of the task vector d = model - base";
    case LT_REL: return "rel: ||d|| / ||base||, how far fine-tuning moved the weights";
    case LT_COS: return "cos: cosine between the two task vectors (1 alike, 0 unrelated, -1 opposed)";
    case LT_CONFLICT: return "conflict: where both task vectors change an entry, the share with opposite signs "
                             "(0.5 is random)";
    case LT_TIES_CONFLICT: return "ties_conflict: after trimming to density, the share of kept entries against "
                                  "the elected sign";
    case LT_TOPK: return "topk: share of ||d||^2 the top density fraction holds, i.e. what TIES trimming keeps";
    case LT_SIGN_FLIP: return "flips: share of entries whose sign differs between the base and the merge";
    case LT_COEF: return "the tuned parameter's value in effect on the layer (p, m, M choose it)";
    default: return "";
    }
}

const char *lt_legend(int n_models, int width)
{
    static const char *const two[] = {
        "norm ||d||  rel ||d||/||base||  cos: cosine of the pair  conflict: opposite signs (0.5 random)"
        "  o sorts, F1 explains",
        "norm ||d||  rel ||d||/||base||  cos: cosine of the pair  conflict: opposite signs (0.5 random)",
        "norm ||d||  rel ||d||/||b||  cos cosine  confl opposite signs",
    };
    static const char *const one[] = {
        "norm ||d||  rel ||d||/||base||  topk: energy trimming keeps  flips: signs the merge flips"
        "  o sorts, F1 explains",
        "norm ||d||  rel ||d||/||base||  topk: energy trimming keeps  flips: signs the merge flips",
        "norm ||d||  rel ||d||/||b||  topk energy kept  flips sign flips",
    };
    const char *const *set = n_models >= 2 ? two : one;
    for (int i = 0; i < 3; i++)
        if ((int)strlen(set[i]) + 1 <= width)
            return set[i];
    return set[2];
}

/* ===== Filling from the workspace ===== */

static long row_of(const struct layer_table *t, const struct tn_info *info)
{
    for (size_t r = 0; r < t->n_rows; r++) {
        const struct lt_row *row = &t->rows[r];
        if (info->layer >= 0 ? row->layer == info->layer
                             : (row->layer < 0 && row->group == info->group))
            return (long)r;
    }
    return -1;
}

static double metric(const struct stats_raw *s, enum lt_metric m, int a, int b)
{
    switch (m) {
    case LT_NORM: return stats_norm(s, a);
    case LT_REL: return stats_rel(s, a);
    case LT_COS: return stats_cos(s, a, b);
    case LT_CONFLICT: return stats_conflict(s, a, b);
    case LT_TIES_CONFLICT: return stats_ties_conflict(s);
    case LT_TOPK: return stats_topk_energy(s, a);
    case LT_SIGN_FLIP: return stats_sign_flip(s);
    default: return NAN;
    }
}

static int setup_from_ws(struct layer_table *t, const struct workspace *ws, const char *coef_title)
{
    const char *labels[TN_GROUP_COUNT];
    enum tn_group groups[TN_GROUP_COUNT];
    size_t n_extra = 0;
    bool seen[TN_GROUP_COUNT] = { false };
    for (size_t i = 0; i < ws_n_tensors(ws); i++) {
        const struct tn_info *info = &ws_tensor(ws, i)->info;
        if (info->layer >= 0 || seen[info->group])
            continue;
        seen[info->group] = true;
        labels[n_extra] = tn_group_name(info->group);
        groups[n_extra++] = info->group;
    }
    return lt_setup(t, ws_n_models(ws), coef_title, ws_n_layers(ws), labels, groups, n_extra);
}

int lt_fill(struct layer_table *t, const struct workspace *ws, int a, int b,
            const char *coef_title, const char *coef_param, int coef_model, enum tn_group coef_group)
{
    bool want_coef = coef_title != NULL;
    bool has_coef = t->n_cols > 0 && t->cols[t->n_cols - 1].metric == LT_COEF;
    if (!t->rows || want_coef != has_coef) {
        int rc = setup_from_ws(t, ws, coef_title);
        if (rc)
            return rc;
    }
    if (want_coef)
        snprintf(t->cols[t->n_cols - 1].title, sizeof(t->cols[0].title), "%s", coef_title);
    int n_models = ws_n_models(ws);
    struct stats_raw *acc = lm_calloc(t->n_rows * 3, sizeof(*acc));  /* attn, mlp, all */
    double *coef = lm_malloc_array(t->n_rows * 2, sizeof(double));
    double *sens = lm_malloc_array(t->n_rows, sizeof(double)); /* sens: the layer's factor */
    if (!acc || !coef || !sens) {
        free(acc);
        free(coef);
        free(sens);
        return LM_ENOMEM;
    }
    for (size_t k = 0; k < t->n_rows; k++)
        sens[k] = NAN;
    for (size_t k = 0; k < t->n_rows * 3; k++)
        stats_raw_init(&acc[k], n_models);
    for (size_t k = 0; k < t->n_rows * 2; k++)
        coef[k] = NAN;
    const struct merge_param_spec *spec = coef_param ? merge_param_find(coef_param) : NULL;
    size_t n_overrides = ws_recipe(ws)->n_overrides;
    t->n_tensors_total = ws_n_tensors(ws);
    t->n_tensors_done = 0;
    for (size_t r2 = 0; r2 < t->n_rows; r2++) {
        t->rows[r2].n_tensors = t->rows[r2].n_done = 0;
        t->rows[r2].has_override = false;
    }
    for (size_t i = 0; i < ws_n_tensors(ws); i++) {
        const struct ws_tensor *wt = ws_tensor(ws, i);
        long row = row_of(t, &wt->info);
        if (row < 0)
            continue;
        struct lt_row *rw = &t->rows[row];
        rw->n_tensors++;
        for (size_t o = 0; o < n_overrides && !rw->has_override; o++)
            rw->has_override = ws_override_matches_tensor(ws, o, i);
        int slot = wt->info.group == TN_GROUP_ATTN ? 0 : wt->info.group == TN_GROUP_MLP ? 1 : -1;
        if (spec) {
            int cs = slot < 0 ? 0 : slot;
            if (isnan(coef[row * 2 + cs]) && (slot >= 0 || rw->layer < 0)) {
                struct merge_tensor_params p;
                ws_tensor_params(ws, i, &p);
                coef[row * 2 + cs] = tune_param_value(&p, spec->id, coef_model);
            }
        }
        if (rw->layer >= 0 && isnan(sens[row])) {
            /* What Sens-Merging multiplies this layer's task vector by,
             * with the layer's own alpha and temperature (nothing when the
             * method takes no sensitivities or calibration has not run). */
            double scale[MERGE_MAX_MODELS];
            int n_scaled = ws_tensor_sens_scale(ws, i, scale);
            if (n_scaled > 0)
                sens[row] = scale[coef_model >= 0 && coef_model < n_scaled ? coef_model : 0];
        }
        const struct stats_raw *s = ws_tensor_stats(ws, i);
        if (!s)
            continue;
        rw->n_done++;
        t->n_tensors_done++;
        if (slot >= 0)
            stats_raw_add(&acc[row * 3 + slot], s);
        stats_raw_add(&acc[row * 3 + 2], s);
    }
    for (int c = 0; c < t->n_cols; c++)
        t->col_max[c] = 0;
    for (size_t row = 0; row < t->n_rows; row++) {
        struct lt_row *rw = &t->rows[row];
        bool complete = rw->n_tensors > 0 && rw->n_done == rw->n_tensors;
        for (int c = 0; c < t->n_cols; c++) {
            const struct lt_column *col = &t->cols[c];
            double v = NAN;
            if (col->metric == LT_COEF) {
                double x = coef[row * 2], y = coef[row * 2 + 1];
                v = isnan(y) || x == y ? x : NAN;
                if (!isnan(v))
                    snprintf(rw->coef_text, sizeof(rw->coef_text), "%.4g", v);
                else if (!isnan(x) && !isnan(y))
                    snprintf(rw->coef_text, sizeof(rw->coef_text), "%.3g|%.3g", x, y);
                else
                    snprintf(rw->coef_text, sizeof(rw->coef_text), "-");
                if (coef_group == TN_GROUP_MLP && !isnan(y)) {
                    v = y;
                    snprintf(rw->coef_text, sizeof(rw->coef_text), "%.4g", v);
                } else if (coef_group == TN_GROUP_ATTN && !isnan(x)) {
                    v = x;
                    snprintf(rw->coef_text, sizeof(rw->coef_text), "%.4g", v);
                }
                if (!isnan(sens[row])) {
                    size_t used = strlen(rw->coef_text);
                    snprintf(rw->coef_text + used, sizeof(rw->coef_text) - used, " x%.3g", sens[row]);
                }
            } else if (complete) {
                int slot = rw->layer < 0 ? 2 : col->group == TN_GROUP_ATTN ? 0 : 1;
                /* Rows outside the layer stack show their numbers once, in
                 * the attention columns. */
                if (rw->layer >= 0 || col->group == TN_GROUP_ATTN)
                    v = acc[row * 3 + slot].n_elements ? metric(&acc[row * 3 + slot], col->metric, a, b) : NAN;
            }
            rw->value[c] = v;
            if (isfinite(v) && fabs(v) > t->col_max[c])
                t->col_max[c] = fabs(v);
        }
    }
    free(acc);
    free(coef);
    free(sens);
    lt_sort(t, t->sort_col, t->sort_desc);
    return 0;
}

/* ===== Sorting and search ===== */

static const struct layer_table *sort_table;
static int sort_column;
static bool sort_descending;

static int compare_rows(const void *pa, const void *pb)
{
    size_t ia = *(const size_t *)pa, ib = *(const size_t *)pb;
    double x = sort_table->rows[ia].value[sort_column], y = sort_table->rows[ib].value[sort_column];
    if (isnan(x) != isnan(y))
        return isnan(x) ? 1 : -1;
    if (!isnan(x) && x != y) {
        int c = x < y ? -1 : 1;
        return sort_descending ? -c : c;
    }
    return ia < ib ? -1 : ia > ib;
}

void lt_sort(struct layer_table *t, int col, bool desc)
{
    t->sort_col = col >= 0 && col < t->n_cols ? col : -1;
    t->sort_desc = desc;
    for (size_t i = 0; i < t->n_rows; i++)
        t->order[i] = i;
    if (t->sort_col < 0)
        return;
    sort_table = t;
    sort_column = t->sort_col;
    sort_descending = desc;
    qsort(t->order, t->n_rows, sizeof(*t->order), compare_rows);
}

static bool contains_ci(const char *hay, const char *needle)
{
    size_t n = strlen(needle);
    for (; *hay; hay++) {
        size_t k = 0;
        while (k < n && hay[k] && tolower((unsigned char)hay[k]) == tolower((unsigned char)needle[k]))
            k++;
        if (k == n)
            return true;
    }
    return n == 0;
}

long lt_find_layer(const struct layer_table *t, int layer)
{
    for (size_t p = 0; p < t->n_rows; p++)
        if (t->rows[t->order[p]].layer == layer)
            return (long)p;
    return -1;
}

long lt_search(const struct layer_table *t, const char *needle, size_t from)
{
    if (t->n_rows == 0 || !needle || !*needle)
        return -1;
    char *end;
    long num = strtol(needle, &end, 10);
    if (*end == '\0' && end != needle) {
        long p = lt_find_layer(t, (int)num);
        if (p >= 0)
            return p;
    }
    for (size_t k = 1; k <= t->n_rows; k++) {
        size_t p = (from + k) % t->n_rows;
        if (contains_ci(t->rows[t->order[p]].label, needle))
            return (long)p;
    }
    return -1;
}
