/* The Layers screen's view model: one row per layer plus rows for the
 * tensors outside the layer stack (embeddings, final norm, lm_head), with
 * per-module (attention, MLP) statistics as plain numbers, a sort order and
 * search. Built from the workspace on the UI thread (reading statistics that
 * a worker may still be publishing), drawn by screen_layers.c; tests fill it
 * by hand. NaN means "not computed yet". */
#ifndef MS_TUI_LAYER_TABLE_H
#define MS_TUI_LAYER_TABLE_H

#include <stdbool.h>
#include <stddef.h>

#include "tensor_name.h"

struct workspace;
struct recipe;

#define LT_MAX_COLS 10

enum lt_metric {
    LT_NORM,          /* ||d_a|| */
    LT_REL,           /* ||d_a|| / ||b|| */
    LT_COS,           /* cos(d_a, d_b) */
    LT_CONFLICT,      /* sign conflict rate between d_a and d_b */
    LT_TIES_CONFLICT, /* kept entries disagreeing with the elected sign */
    LT_TOPK,          /* energy share kept by trimming d_a to its density */
    LT_SIGN_FLIP,     /* sign flips between base and merged */
    LT_COEF,          /* the coefficient being tuned (not a statistic) */
};

struct lt_column {
    enum lt_metric metric;
    enum tn_group group;   /* TN_GROUP_ATTN, TN_GROUP_MLP, or TN_GROUP_COUNT: whole row */
    char title[16];
};

struct lt_row {
    char label[24];        /* "layer 3", "embed", "norm", "lm_head" */
    int layer;             /* -1 outside the layer stack */
    enum tn_group group;   /* for rows outside the stack; TN_GROUP_COUNT for layers */
    bool has_override;     /* a recipe override applies to one of its tensors */
    int n_tensors, n_done; /* tensors in the row / with statistics */
    double value[LT_MAX_COLS];
    char coef_text[24];    /* LT_COEF cell; for sens, followed by " x<factor>": what
                              calibration multiplies the layer's task vector by */
};

struct layer_table {
    struct lt_column cols[LT_MAX_COLS];
    int n_cols;
    struct lt_row *rows;
    size_t n_rows;
    size_t *order;         /* display position -> row index */
    int sort_col;          /* -1: natural (layer) order */
    bool sort_desc;
    double col_max[LT_MAX_COLS];   /* finite maximum of |value| per column, for heat */
    size_t n_tensors_total, n_tensors_done;
};

/* Heat of a cell in [0, 1] (NaN when unknown): how alarming the value is
 * relative to its column (norms, rel: share of the column maximum;
 * conflicts, flips: the rate itself doubled, 0.5 being random signs; cos:
 * (1 - cos) / 2). */
double lt_heat(const struct layer_table *t, int col, double v);

/* Sets up columns for `n_models` task vectors: with two or more, per module
 * norm, rel, cos and conflict of pair (a, b); with one, norm, rel, top-k
 * energy and sign flips. `coef_title` names the tuned coefficient column
 * (NULL: none). Rows are made for `n_layers` layers plus the extra rows
 * given (labels and groups). Replaces previous contents. 0 or LM_ENOMEM. */
int lt_setup(struct layer_table *t, int n_models, const char *coef_title, int n_layers,
             const char *const *extra_labels, const enum tn_group *extra_groups, size_t n_extra);
void lt_free(struct layer_table *t);

/* Fills rows from the workspace: statistics of pair (a, b), override marks
 * from the workspace's recipe, coefficient cells for `coef_param`
 * (+ `coef_model` index, -1 for none) in module group `coef_group`
 * (TN_GROUP_COUNT: attention, or "a|m" when attention and MLP differ).
 * Builds the table (lt_setup) on first use. */
int lt_fill(struct layer_table *t, const struct workspace *ws, int a, int b,
            const char *coef_title, const char *coef_param, int coef_model, enum tn_group coef_group);

/* What a column's statistic means, in one line ("conflict: among entries
 * both task vectors change, the share with opposite signs; 0.5 is
 * random"). */
const char *lt_metric_help(enum lt_metric m);

/* The one-line legend of the columns a table of `n_models` task vectors
 * shows, shortest first: the first that fits `width` cells. */
const char *lt_legend(int n_models, int width);

/* Sorts by column `col` (-1: natural order); NaN sorts last. */
void lt_sort(struct layer_table *t, int col, bool desc);

/* The display position of the first row after `from` (wrapping) whose
 * label contains `needle` (case-insensitive; a bare number matches the
 * layer with that index first), or -1. */
long lt_search(const struct layer_table *t, const char *needle, size_t from);

/* Display position of the row for `layer` (or -1). */
long lt_find_layer(const struct layer_table *t, int layer);

#endif
