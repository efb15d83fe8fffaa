#include "merged_source.h"

#include <string.h>

#include "lm_error.h"

static int merged_get(void *ud, const char *name, struct model_tensor_view *out)
{
    struct workspace *ws = ud;
    long i = ws_find_tensor(ws, name);
    if (i < 0)
        return MODEL_SOURCE_ABSENT;
    const struct ws_tensor *t = ws_tensor(ws, (size_t)i);
    const void *data = ws_merged(ws, (size_t)i);
    if (!data)
        return lm_err(LM_EINVAL, "merged tensor '%s' is not in memory yet", name);
    memset(out, 0, sizeof(*out));
    out->dtype = ws_cache_dtype(ws, (size_t)i);
    out->ndim = t->ndim;
    for (int d = 0; d < t->ndim && d < MODEL_MAX_DIMS; d++)
        out->shape[d] = t->shape[d];
    out->data = data;
    return 0;
}

struct model_source ws_model_source(struct workspace *ws)
{
    struct model_source s = { .get = merged_get, .ud = ws, .label = "merged model" };
    const struct recipe *r = ws_recipe(ws);
    if (r->source_path)
        s.label = r->source_path;
    return s;
}

struct model *ws_load_merged_model(struct workspace *ws, struct model_params params,
                                   lm_progress_fn progress, void *ud)
{
    int rc = ws_merge_all(ws, progress, ud);
    if (rc)
        return NULL;
    struct hf_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    rc = ws_output_config(ws, &cfg);
    if (rc) {
        hf_config_deinit(&cfg);
        return NULL;
    }
    struct model_source src = ws_model_source(ws);
    struct model *m = model_load(&cfg, &src, params);
    hf_config_deinit(&cfg);
    return m;
}
