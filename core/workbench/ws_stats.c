/* What the statistics screens show: histograms of a tensor's task-vector
 * magnitudes (ws_delta_histogram) and the per-tensor statistics gathered
 * into rows by tensor, layer or module (ws_stats_rows). The statistics
 * themselves are computed by the passes (ws_passes.c). */
#include "workspace.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "convert.h"
#include "lm_error.h"
#include "merge_plan.h"
#include "select.h"
#include "workspace_internal.h"

/* ===== Histograms ===== */

/* Every `stride`-th entry of source s of tensor t as float32 (0 past the
 * rows the source has). */
static float *load_sampled(const struct ws_tensor *t, int s, uint64_t stride, uint64_t n_s)
{
    const struct st_tensor *src = t->src[s];
    float *out = lm_malloc_array(n_s ? n_s : 1, sizeof(float));
    if (!out)
        return NULL;
    size_t es = lm_dtype_size(src->dtype);
    for (uint64_t k = 0; k < n_s; k++) {
        uint64_t e = k * stride;
        if (e < src->n_elements)
            lm_convert_to_f32(&out[k], (const char *)src->data + e * es, src->dtype, 1);
        else
            out[k] = 0;
    }
    return out;
}

static int hist_bin(double log_v, const struct ws_histogram *h)
{
    int b = (int)((log_v - h->lo) / (h->hi - h->lo) * h->n_bins);
    return b < 0 ? 0 : b >= h->n_bins ? h->n_bins - 1 : b;
}

int ws_delta_histogram(const struct workspace *ws, size_t i, int n_bins, uint64_t max_samples,
                       struct ws_histogram *h)
{
    const struct ws_tensor *t = &ws->tensors[i];
    memset(h, 0, sizeof(*h));
    int rc = ws_check_inputs(ws);
    if (rc)
        return rc;
    h->n_models = ws->n_sources - 1;
    h->n_bins = LM_MAX(1, LM_MIN(n_bins, WS_HIST_MAX_BINS));
    uint64_t n = t->n_elements;
    uint64_t stride = max_samples && n > max_samples ? (n + max_samples - 1) / max_samples : 1;
    uint64_t n_s = (n + stride - 1) / stride;
    h->n_sampled = n_s;
    struct merge_tensor_params p;
    merge_plan_resolve(&ws->plan, t->name, &t->info, &p);
    float *base = load_sampled(t, 0, stride, n_s);
    float *d[MERGE_MAX_MODELS] = { NULL };
    rc = base ? 0 : LM_ENOMEM;
    double maxabs = 0;
    for (int m = 0; m < h->n_models && !rc; m++) {
        if (!(d[m] = load_sampled(t, 1 + m, stride, n_s))) {
            rc = LM_ENOMEM;
            break;
        }
        for (uint64_t k = 0; k < n_s; k++) {
            d[m][k] -= base[k];
            maxabs = fmax(maxabs, fabs((double)d[m][k]));
        }
    }
    if (!rc) {
        h->hi = maxabs > 0 ? log10(maxabs) : 0;
        h->lo = h->hi - 6;
        for (int m = 0; m < h->n_models; m++) {
            for (uint64_t k = 0; k < n_s; k++) {
                double v = fabs((double)d[m][k]);
                if (v > 0)
                    h->counts[m][hist_bin(log10(v), h)] += 1;
            }
            h->threshold_bin[m] = -1;
            if (p.density[m] < 1.0) {
                struct topk_cut cut = topk_find(d[m], n_s, topk_count(p.density[m], n_s));
                if (isfinite(cut.threshold) && cut.threshold > 0)
                    h->threshold_bin[m] = hist_bin(log10(cut.threshold), h);
            }
        }
    }
    for (int m = 0; m < h->n_models; m++)
        free(d[m]);
    free(base);
    return rc;
}

/* ===== Statistics rows ===== */

static int row_index_for(enum ws_stats_by by, const struct ws_tensor *t, struct ws_stats_row *rows,
                         size_t n_rows, struct ws_stats_row *proto)
{
    memset(proto, 0, sizeof(*proto));
    proto->layer = t->info.layer;
    switch (by) {
    case WS_STATS_BY_TENSOR:
        snprintf(proto->label, sizeof(proto->label), "%s", t->name);
        proto->group = t->info.group;
        return -1;
    case WS_STATS_BY_LAYER:
        if (t->info.layer >= 0) {
            snprintf(proto->label, sizeof(proto->label), "layer %d", t->info.layer);
            proto->group = TN_GROUP_COUNT;
        } else {
            snprintf(proto->label, sizeof(proto->label), "%s", tn_group_name(t->info.group));
            proto->group = t->info.group;
        }
        break;
    case WS_STATS_BY_MODULE:
        if (t->info.layer >= 0)
            snprintf(proto->label, sizeof(proto->label), "layer %d %s", t->info.layer,
                     tn_group_name(t->info.group));
        else
            snprintf(proto->label, sizeof(proto->label), "%s", tn_group_name(t->info.group));
        proto->group = t->info.group;
        break;
    }
    for (size_t r = 0; r < n_rows; r++)
        if (strcmp(rows[r].label, proto->label) == 0)
            return (int)r;
    return -1;
}

int ws_stats_rows(const struct workspace *ws, enum ws_stats_by by, struct ws_stats_row **rows_out,
                  size_t *n_out)
{
    struct ws_stats_row *rows = lm_calloc(ws->n_tensors ? ws->n_tensors : 1, sizeof(*rows));
    if (!rows)
        return LM_ENOMEM;
    size_t n = 0;
    for (size_t i = 0; i < ws->n_tensors; i++) {
        if (!ws_tensor_stats(ws, i))
            continue;
        struct ws_stats_row proto;
        int r = row_index_for(by, &ws->tensors[i], rows, n, &proto);
        if (r < 0) {
            rows[n] = proto;
            stats_raw_init(&rows[n].raw, ws->n_sources - 1);
            r = (int)n++;
        }
        stats_raw_add(&rows[r].raw, &ws->stats[i]);
    }
    *rows_out = rows;
    *n_out = n;
    return 0;
}
