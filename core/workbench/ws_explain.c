/* Per-tensor explanations; see ws_explain.h. */
#include "ws_explain.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "calib.h"
#include "lm_error.h"
#include "merge_plan.h"

bool ws_override_matches_tensor(const struct workspace *ws, size_t o, size_t i)
{
    const struct recipe *r = ws_recipe(ws);
    if (o >= r->n_overrides || i >= ws_n_tensors(ws))
        return false;
    const struct ws_tensor *t = ws_tensor(ws, i);
    return merge_plan_override_matches(&r->overrides[o], t->name, &t->info);
}

int ws_tensor_sens_scale(const struct workspace *ws, size_t i, double *scale)
{
    if (!(ws_method(ws)->needs & MERGE_NEEDS_SENSITIVITY) || i >= ws_n_tensors(ws))
        return 0;
    const struct calib_sensitivity *s = ws_calib_sensitivity(ws);
    if (!s)
        return 0;
    const struct ws_tensor *t = ws_tensor(ws, i);
    struct merge_tensor_params p;
    ws_tensor_params(ws, i, &p);
    calib_sens_scale(s, t->info.layer, p.alpha, p.temperature, scale);
    return s->n_models;
}

/* ===== Statistics across the layer stack ===== */

const char *ws_stat_name(enum ws_stat s)
{
    static const char *const names[WS_STAT_COUNT] = {
        "norm", "rel", "topk", "cos", "conflict", "ties_conflict", "sign_flip", "merged_rel",
    };
    return s < WS_STAT_COUNT ? names[s] : "?";
}

bool ws_stat_per_model(enum ws_stat s)
{
    return s == WS_STAT_NORM || s == WS_STAT_REL || s == WS_STAT_TOPK;
}

bool ws_stat_per_pair(enum ws_stat s)
{
    return s == WS_STAT_COS || s == WS_STAT_CONFLICT;
}

int ws_stats_for(int n_models, enum ws_stat *out)
{
    int n = 0;
    for (int s = 0; s < WS_STAT_COUNT; s++) {
        if (n_models < 2 && (ws_stat_per_pair((enum ws_stat)s) || s == WS_STAT_TIES_CONFLICT))
            continue;
        out[n++] = (enum ws_stat)s;
    }
    return n;
}

static double stat_value(const struct stats_raw *s, enum ws_stat stat, int a, int b)
{
    if (s->n_elements == 0)
        return NAN;
    switch (stat) {
    case WS_STAT_NORM: return stats_norm(s, a);
    case WS_STAT_REL: return stats_rel(s, a);
    case WS_STAT_TOPK: return stats_topk_energy(s, a);
    case WS_STAT_COS: return stats_cos(s, a, b);
    case WS_STAT_CONFLICT: return stats_conflict(s, a, b);
    case WS_STAT_TIES_CONFLICT: return stats_ties_conflict(s);
    case WS_STAT_SIGN_FLIP: return stats_sign_flip(s);
    case WS_STAT_MERGED_REL: return stats_merged_rel(s);
    default: return NAN;
    }
}

/* The series a layer tensor belongs to: its module group, or its
 * projection (adding it to names[] when new); -1 for none. Attention comes
 * before the MLP whatever order the tensors are stored in. */
static int series_of(const struct tn_info *info, bool by_projection, char (*names)[24], int *n)
{
    if (info->layer < 0 || (info->group != TN_GROUP_ATTN && info->group != TN_GROUP_MLP))
        return -1;
    if (!by_projection) {
        if (*n == 0) {
            snprintf(names[0], sizeof(names[0]), "attention");
            snprintf(names[1], sizeof(names[1]), "mlp");
            *n = 2;
        }
        return info->group == TN_GROUP_ATTN ? 0 : 1;
    }
    const char *key = info->proj;
    size_t len = strlen(key);
    if (len < 5 || strcmp(key + len - 5, "_proj") != 0)
        return -1;
    for (int k = 0; k < *n; k++)
        if (strcmp(names[k], key) == 0)
            return k;
    if (*n >= WS_SERIES_MAX)
        return -1;
    snprintf(names[*n], sizeof(names[0]), "%s", key);
    return (*n)++;
}

void ws_series_free(struct ws_series *s, int n)
{
    for (int i = 0; s && i < n; i++) {
        free(s[i].y);
        s[i].y = NULL;
    }
}

int ws_layer_series(const struct workspace *ws, enum ws_stat stat, bool by_projection, int a, int b,
                    struct ws_series *out, int *n_out)
{
    int n_layers = ws_n_layers(ws), n = 0, nm = ws_n_models(ws);
    char names[WS_SERIES_MAX][24];
    size_t cells = (size_t)WS_SERIES_MAX * (size_t)(n_layers > 0 ? n_layers : 1);
    struct stats_raw *acc = lm_malloc_array(cells, sizeof(*acc));
    bool *done = lm_calloc(cells, sizeof(bool));   /* every tensor of the cell has statistics */
    bool *seen = lm_calloc(cells, sizeof(bool));
    *n_out = 0;
    if (!acc || !done || !seen) {
        free(acc);
        free(done);
        free(seen);
        return LM_ENOMEM;
    }
    for (size_t c = 0; c < cells; c++) {
        stats_raw_init(&acc[c], nm);
        done[c] = true;
    }
    for (size_t i = 0; i < ws_n_tensors(ws); i++) {
        const struct ws_tensor *t = ws_tensor(ws, i);
        int k = series_of(&t->info, by_projection, names, &n);
        if (k < 0 || t->info.layer >= n_layers)
            continue;
        size_t c = (size_t)k * (size_t)n_layers + (size_t)t->info.layer;
        const struct stats_raw *s = ws_tensor_stats(ws, i);
        seen[c] = true;
        if (s)
            stats_raw_add(&acc[c], s);
        else
            done[c] = false;
    }
    /* Projections in the order the forward pass meets them. */
    static const char *const order[] = { "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                         "down_proj" };
    int rank[WS_SERIES_MAX], perm[WS_SERIES_MAX];
    for (int k = 0; k < n; k++) {
        rank[k] = (int)LM_ARRAY_SIZE(order) + k;
        for (size_t r = 0; by_projection && r < LM_ARRAY_SIZE(order); r++)
            if (strcmp(names[k], order[r]) == 0)
                rank[k] = (int)r;
        perm[k] = k;
    }
    for (int i = 1; i < n; i++)   /* insertion sort of a handful */
        for (int j = i; j > 0 && rank[perm[j]] < rank[perm[j - 1]]; j--) {
            int t = perm[j];
            perm[j] = perm[j - 1];
            perm[j - 1] = t;
        }
    int rc = 0;
    for (int o = 0; o < n && !rc; o++) {
        int k = perm[o];
        struct ws_series *dst = &out[o];
        memcpy(dst->name, names[k], sizeof(dst->name));
        dst->y = lm_malloc_array((size_t)(n_layers > 0 ? n_layers : 1), sizeof(double));
        if (!dst->y) {
            ws_series_free(out, o);
            rc = LM_ENOMEM;
            break;
        }
        for (int l = 0; l < n_layers; l++) {
            size_t c = (size_t)k * (size_t)n_layers + (size_t)l;
            dst->y[l] = seen[c] && done[c] ? stat_value(&acc[c], stat, a, b) : NAN;
        }
    }
    if (!rc)
        *n_out = n;
    free(acc);
    free(done);
    free(seen);
    return rc;
}
