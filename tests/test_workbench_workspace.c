/* End to end below the CLI: a tiny trio written by an independent writer
 * (tests/fixture.h), opened by the workspace, merged to disk, read back and
 * compared with expectations computed here in double precision. */
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fixture.h"
#include "fsutil.h"
#include "lm_error.h"
#include "recipe_edit.h"
#include "safetensors.h"
#include "test.h"
#include "tune.h"
#include "workspace.h"

static char root[256];

static struct recipe *parse(const char *json)
{
    struct recipe *r = recipe_parse(json, strlen(json), "test-recipe.json", root);
    if (!r)
        printf("      recipe error: %s\n", lm_last_error());
    return r;
}

/* Parses `json` into a recipe kept until the next call (tests that only
 * hand it to ws_set_recipe, which copies it). */
static struct recipe *parse_keep(const char *json)
{
    static struct recipe *kept;
    recipe_free(kept);
    kept = json ? parse(json) : NULL;
    return kept;
}

static struct workspace *open_json(const char *json, int threads)
{
    struct recipe *r = parse(json);
    if (!r)
        return NULL;
    struct ws_params p = ws_default_params();
    p.n_threads = threads;
    struct workspace *ws = ws_open(r, p);
    if (!ws)
        printf("      open error: %s\n", lm_last_error());
    recipe_free(r);
    return ws;
}

/* The tensor as the model serves it: lm_head of a tied model = embeddings. */
static const struct fx_tensor *served(const struct fx_model *m, const char *name)
{
    const struct fx_tensor *t = fx_find(m, name);
    if (!t && strcmp(name, "lm_head.weight") == 0 && m->tied)
        t = fx_find(m, "model.embed_tokens.weight");
    return t;
}

static float *read_tensor_f32(const struct st_set *s, const char *name, size_t *n)
{
    const struct st_tensor *t = st_set_find(s, name);
    if (!t || t->dtype != LM_DTYPE_F32)
        return NULL;
    *n = (size_t)t->n_elements;
    float *out = malloc(t->nbytes ? t->nbytes : 1);
    memcpy(out, t->data, t->nbytes);
    return out;
}

static unsigned char *slurp(const char *path, size_t *len)
{
    return (unsigned char *)lm_read_file(path, (size_t)1 << 30, len);
}

static bool files_equal(const char *a, const char *b)
{
    size_t la, lb;
    unsigned char *x = slurp(a, &la), *y = slurp(b, &lb);
    bool eq = x && y && la == lb && memcmp(x, y, la) == 0;
    free(x);
    free(y);
    return eq;
}

static bool no_partial_dirs(void)
{
    DIR *d = opendir(root);
    struct dirent *e;
    bool clean = true;
    while (d && (e = readdir(d)) != NULL)
        if (strstr(e->d_name, ".partial-"))
            clean = false;
    if (d)
        closedir(d);
    return clean;
}

static bool cancel_at_half(double frac, const char *what, void *ud)
{
    (void)what;
    (void)ud;
    return frac < 0.5;
}

/* Naive TIES for one tensor: sort-based top-k with ties by lower index. */
static double *naive_ties(const float *b, const float *const *x, int m, size_t n, double density,
                          const double *w, double lambda)
{
    double *out = calloc(n, sizeof(double));
    double *trim = calloc(n * (size_t)m, sizeof(double));
    size_t k = (size_t)(density * (double)n);
    for (int i = 0; i < m; i++) {
        /* selection by repeated max: fine for tiny tensors */
        char *kept = calloc(n, 1);
        for (size_t c = 0; c < k; c++) {
            size_t best = n;
            for (size_t e = 0; e < n; e++) {
                if (kept[e])
                    continue;
                double a = fabs((double)x[i][e] - (double)b[e]);
                if (best == n || a > fabs((double)x[i][best] - (double)b[best]))
                    best = e;
            }
            kept[best] = 1;
        }
        for (size_t e = 0; e < n; e++)
            trim[(size_t)i * n + e] = kept[e] ? ((double)x[i][e] - (double)b[e]) * w[i] : 0.0;
        free(kept);
    }
    for (size_t e = 0; e < n; e++) {
        double sum = 0, num = 0, den = 0;
        for (int i = 0; i < m; i++)
            sum += trim[(size_t)i * n + e];
        double sign = sum >= 0 ? 1 : -1;
        for (int i = 0; i < m; i++) {
            double v = trim[(size_t)i * n + e];
            if (v != 0 && (v > 0 ? 1 : -1) == sign) {
                num += v;
                den += w[i];
            }
        }
        if (den == 0)
            den = 1;
        out[e] = (double)b[e] + lambda * num / den;
    }
    free(trim);
    return out;
}

/* Every tensor of `ws` merged, in output order, float32 one after the
 * other; *n receives the count. NULL when a merge fails. */
static float *merge_everything(struct workspace *ws, size_t *n)
{
    size_t total = 0;
    for (size_t i = 0; i < ws_n_tensors(ws); i++)
        total += (size_t)ws_tensor(ws, i)->n_elements;
    float *all = malloc((total ? total : 1) * sizeof(float));
    struct ws_scratch sc;
    memset(&sc, 0, sizeof(sc));
    size_t at = 0;
    for (size_t i = 0; all && i < ws_n_tensors(ws); i++) {
        if (ws_merge_tensor(ws, i, all + at, &sc) != 0) {
            printf("      merge of %s: %s\n", ws_tensor(ws, i)->name, lm_last_error());
            free(all);
            all = NULL;
            break;
        }
        at += (size_t)ws_tensor(ws, i)->n_elements;
    }
    ws_scratch_deinit(&sc);
    *n = total;
    return all;
}

/* Whether two workspaces hold the same tensors (names, in order) and merge
 * them to the same bits. */
static bool same_merge(struct workspace *a, struct workspace *b)
{
    if (!a || !b || ws_n_tensors(a) != ws_n_tensors(b))
        return false;
    for (size_t i = 0; i < ws_n_tensors(a); i++)
        if (strcmp(ws_tensor(a, i)->name, ws_tensor(b, i)->name) != 0)
            return false;
    size_t na, nb;
    float *x = merge_everything(a, &na), *y = merge_everything(b, &nb);
    bool same = x && y && na == nb && memcmp(x, y, na * sizeof(float)) == 0;
    free(x);
    free(y);
    return same;
}

static struct workspace *open_recipe(const struct recipe *r)
{
    struct ws_params p = ws_default_params();
    p.n_threads = 2;
    struct workspace *ws = ws_open(r, p);
    if (!ws)
        printf("      open error: %s\n", lm_last_error());
    return ws;
}

/* A failed ws_reopen leaves the workspace as it was: the same recipe and
 * models, the merged cache it held, the same merge. */
static void expect_failed_reopen(struct workspace *ws, const struct recipe *r, const char *descr,
                                 const char *const *needles, const float *before, size_t n_before,
                                 long cached, const void *cached_ptr)
{
    const struct recipe *was = ws_recipe(ws);
    struct recipe *keep = recipe_clone(was);
    int n_models = ws_n_models(ws);
    int rc = ws_reopen(ws, r);
    bool named = rc != 0;
    for (const char *const *k = needles; named && *k; k++)
        named = strstr(lm_last_error(), *k) != NULL;
    TEST_COND(descr, named);
    if (!named)
        printf("      rc %d: %s\n", rc, lm_last_error());
    size_t n;
    float *after = merge_everything(ws, &n);
    char d2[300];
    snprintf(d2, sizeof(d2), "... the workspace is as it was: recipe, models, cached merge, merged values");
    TEST_COND(d2, recipe_equal(ws_recipe(ws), keep) && ws_n_models(ws) == n_models &&
              ws_merged(ws, (size_t)cached) == cached_ptr && cached_ptr != NULL &&
              after && n == n_before && memcmp(after, before, n * sizeof(float)) == 0);
    free(after);
    recipe_free(keep);
}

/* Adding, removing and repointing models and slices in an open workspace
 * (ws_reopen), against workspaces opened fresh with the same recipe. */
static void test_sources(const struct fx_model *quick)
{
    const char *one =
        "{\"format\": \"mergescope-recipe/1\", \"base\": \"base\","
        " \"models\": [{\"name\": \"quick\", \"path\": \"quick\", \"weight\": 0.6}],"
        " \"method\": \"ties\", \"params\": {\"density\": 0.5, \"lambda\": 0.8},"
        " \"overrides\": [{\"layers\": \"1\", \"modules\": \"mlp\", \"params\": {\"weight\": {\"quick\": 0.4}}},"
        "                 {\"layers\": \"2\", \"params\": {\"density\": 0.7}}]}";
    struct workspace *ws = open_json(one, 2);
    TEST_COND("sources: base + quick opens (38 tensors, tied)", ws && ws_n_tensors(ws) == 38 && ws_output_tied(ws));
    if (!ws)
        return;
    ws_set_preview_dtype(ws, WS_PREVIEW_BF16);
    TEST_COND("a merged layer is cached before the change", ws_merge_layer(ws, 0, NULL, NULL) == 0 &&
              ws_merged(ws, (size_t)ws_find_tensor(ws, "model.layers.0.mlp.up_proj.weight")) != NULL);

    /* ---- add long: the recipe's weights, overrides and method stay ---- */
    struct recipe *r2 = recipe_clone(ws_recipe(ws));
    TEST_COND("the recipe takes the new model, named after its folder",
              r2 && recipe_add_model(r2, NULL, "long") == 0 && strcmp(r2->models[1].name, "long") == 0);
    TEST_COND("a recipe naming other models is not the same sources", !ws_same_sources(ws, r2));
    int rc = ws_reopen(ws, r2);
    TEST_COND("ws_reopen adds the model", rc == 0 && ws_n_models(ws) == 2 &&
              strcmp(ws_model(ws, 1)->name, "long") == 0);
    if (rc)
        printf("      %s\n", lm_last_error());
    TEST_COND("... the recipe is the one asked for: quick's weight 0.6 and both overrides kept",
              recipe_equal(ws_recipe(ws), r2) && ws_recipe(ws)->n_overrides == 2 &&
              ws_recipe(ws)->models[0].params[0].value.numbers[0] == 0.6 && strcmp(ws_method(ws)->name, "ties") == 0);
    TEST_COND("... the tensors follow: long is untied, so lm_head is materialised (39)",
              ws_n_tensors(ws) == 39 && !ws_output_tied(ws) && ws_find_tensor(ws, "lm_head.weight") >= 0);
    TEST_COND("... the merged cache is dropped, its form kept",
              ws_merged(ws, (size_t)ws_find_tensor(ws, "model.layers.0.mlp.up_proj.weight")) == NULL &&
              ws_get_preview_dtype(ws) == WS_PREVIEW_BF16);
    struct workspace *fresh = open_recipe(r2);
    TEST_COND("... and every merged value equals a fresh workspace opened with the same models", same_merge(ws, fresh));
    long qi = ws_find_tensor(ws, "model.layers.1.mlp.down_proj.weight");
    TEST_COND("statistics follow the new set: two task vectors per tensor",
              ws_stats_compute(ws, NULL, NULL) == 0 && ws_tensor_stats(ws, (size_t)qi) &&
              ws_tensor_stats(ws, (size_t)qi)->n_models == 2 && ws_tensor_stats(fresh, (size_t)qi) == NULL);
    ws_stats_compute(fresh, NULL, NULL);
    TEST_COND("... the same as the fresh workspace's",
              ws_tensor_stats(fresh, (size_t)qi) &&
              memcmp(ws_tensor_stats(ws, (size_t)qi), ws_tensor_stats(fresh, (size_t)qi), sizeof(struct stats_raw)) == 0);
    ws_free(fresh);

    /* ---- adds that fail leave everything as it was ---- */
    size_t n_before;
    float *before = merge_everything(ws, &n_before);
    long cached = ws_find_tensor(ws, "model.layers.1.self_attn.q_proj.weight");
    ws_merge_layer(ws, 1, NULL, NULL);
    const void *cached_ptr = ws_merged(ws, (size_t)cached);

    struct fx_model narrow;
    fx_make_finetune(&narrow, quick, 0.01f, true);
    for (int k = 0; k < narrow.n; k++)
        if (strcmp(narrow.t[k].name, "model.layers.1.mlp.up_proj.weight") == 0) {
            narrow.t[k].shape[0] = FX_INTER / 2;
            narrow.t[k].n = (size_t)(FX_INTER / 2 * FX_HIDDEN);
        }
    char dir[700], path[800];
    snprintf(dir, sizeof(dir), "%s/narrow", root);
    fx_write_model_dir(dir, &narrow, 4096);
    fx_free(&narrow);
    struct fx_model other;
    fx_make_finetune(&other, quick, 0.01f, true);
    snprintf(dir, sizeof(dir), "%s/llama", root);
    fx_write_model_dir(dir, &other, 4096);
    fx_free(&other);
    snprintf(path, sizeof(path), "%s/llama/config.json", root);
    size_t len;
    char *cfg = (char *)slurp(path, &len);
    char *arch = cfg ? strstr(cfg, "Qwen2ForCausalLM") : NULL;
    if (arch) {
        char fixed[4096];
        snprintf(fixed, sizeof(fixed), "%.*sLlamaForCausalLM%s", (int)(arch - cfg), cfg, arch + strlen("Qwen2ForCausalLM"));
        fx_write_text(path, fixed);
    }
    free(cfg);
    snprintf(dir, sizeof(dir), "%s/empty", root);
    mkdir(dir, 0755);

    struct { const char *path; const char *descr; const char *needles[4]; } bad[] = {
        { "nowhere", "adding a path that does not exist fails, naming it",
          { "model 'nowhere'", "/nowhere is not a directory", NULL } },
        { "empty", "adding a directory without weights fails, naming it",
          { "model 'empty'", "/empty", "no .safetensors files", NULL } },
        { "narrow", "adding a model whose shapes differ from the base fails, naming the tensor, path and shapes",
          { "tensor 'model.layers.1.mlp.up_proj.weight'", "model 'narrow' (", "/narrow) has shape [8, 8] but the "
            "base has [16, 8]", NULL } },
        { "llama", "adding a model of another architecture fails, naming the path and both architectures",
          { "model 'llama' (", "/llama): architecture LlamaForCausalLM, but the base (", "is Qwen2ForCausalLM", NULL } },
    };
    for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
        struct recipe *rb = recipe_clone(ws_recipe(ws));
        recipe_add_model(rb, NULL, bad[k].path);
        expect_failed_reopen(ws, rb, bad[k].descr, bad[k].needles, before, n_before, cached, cached_ptr);
        recipe_free(rb);
    }
    free(before);

    /* ---- remove quick: the override naming only quick goes with it ---- */
    struct recipe *r3 = recipe_clone(ws_recipe(ws));
    TEST_COND("removing quick from the recipe drops the override that named only it",
              r3 && recipe_remove_model(r3, 0) == 0 && r3->n_overrides == 1 && r3->n_models == 1);
    rc = ws_reopen(ws, r3);
    TEST_COND("ws_reopen removes the model", rc == 0 && ws_n_models(ws) == 1 &&
              strcmp(ws_model(ws, 0)->name, "long") == 0 && ws_n_tensors(ws) == 39);
    struct workspace *hand = open_json(
        "{\"format\": \"mergescope-recipe/1\", \"base\": \"base\","
        " \"models\": [{\"name\": \"long\", \"path\": \"long\"}],"
        " \"method\": \"ties\", \"params\": {\"density\": 0.5, \"lambda\": 0.8},"
        " \"overrides\": [{\"layers\": \"2\", \"params\": {\"density\": 0.7}}]}", 2);
    TEST_COND("... and merges as the hand-written recipe of base and long", same_merge(ws, hand));
    ws_free(hand);
    recipe_free(r3);

    /* ---- same sources or not ---- */
    struct recipe *rp = recipe_clone(ws_recipe(ws));
    recipe_set_number(&rp->params, &rp->n_params, "lambda", 0.5);
    TEST_COND("a parameter change keeps the sources (ws_set_recipe takes it)",
              ws_same_sources(ws, rp) && ws_set_recipe(ws, rp, NULL) == 0);
    free(rp->output.vocab);
    rp->output.vocab = strdup("pad");
    TEST_COND("output.vocab changes how tensors line up: not the same sources", !ws_same_sources(ws, rp));
    recipe_free(rp);

    /* ---- slices: the layer count follows ---- */
    struct recipe *rs = recipe_clone(ws_recipe(ws));
    /* passthrough takes no parameter: the switch drops them (and the
     * override left empty) as the workbench does */
    int src = recipe_insert_slice(rs, 0, "base", 0, 3) || recipe_insert_slice(rs, 1, "long", 1, 3) ||
              tune_set_method(rs, "passthrough") || rs->n_params != 0 || rs->n_overrides != 0;
    rc = src ? src : ws_reopen(ws, rs);
    TEST_COND("slices base [0, 3) + long [1, 3): 5 output layers from 3, 63 tensors",
              rc == 0 && ws_n_layers(ws) == 5 && ws_n_input_layers(ws) == 3 && ws_n_tensors(ws) == 63);
    if (rc)
        printf("      %s\n", lm_last_error());
    struct workspace *fs = open_recipe(rs);
    TEST_COND("... merged as a fresh workspace with those slices", same_merge(ws, fs));
    ws_free(fs);
    recipe_set_slice(rs, 1, "long", 1, 4);
    rc = ws_reopen(ws, rs);
    TEST_COND("a slice beyond the models' layers is refused, naming it; the 5 layers stay",
              rc != 0 && strstr(lm_last_error(), "slices[1].sources[0].layers: [1, 4] reaches beyond model 'long''s 3 layers") &&
              ws_n_layers(ws) == 5);
    recipe_free(rs);
    recipe_free(r2);
    ws_free(ws);
}

/* NuSLERP without a base, over quick (weight 1) and long (weight 3): the
 * two models interpolated whole, checked against the formula in double. */
static void test_baseless(const struct fx_model *quick, const struct fx_model *lng)
{
    const char *nb =
        "{\"format\": \"mergescope-recipe/1\","
        " \"models\": [{\"name\": \"quick\", \"path\": \"quick\"}, {\"name\": \"long\", \"path\": \"long\", \"weight\": 3}],"
        " \"method\": \"nuslerp\", \"output\": {\"dtype\": \"f32\"}}";
    struct workspace *ws = open_json(nb, 2);
    TEST_COND("a base-less nuslerp recipe opens", ws != NULL);
    if (!ws)
        return;
    TEST_COND("... without a base: the first model is the reference", !ws_has_base(ws) &&
              strcmp(ws_model(ws, -1)->name, "quick") == 0 && ws_n_models(ws) == 2);
    TEST_COND("... and a note says so", strstr(ws_notes(ws), "no base model: nuslerp merges the models themselves"));
    const char *name = "model.layers.2.mlp.down_proj.weight";
    const struct fx_tensor *a = fx_find(quick, name), *b = fx_find(lng, name);
    long ti = ws_find_tensor(ws, name);
    float *out = malloc(a->n * sizeof(float));
    struct ws_scratch sc;
    memset(&sc, 0, sizeof(sc));
    int rc = ti >= 0 ? ws_merge_tensor(ws, (size_t)ti, out, &sc) : -1;
    /* t = 3 / 4; theta from the unit vectors; slerp of the raw weights. */
    double na = 0, nbb = 0, dot = 0;
    for (size_t e = 0; e < a->n; e++) {
        na += (double)a->data[e] * a->data[e];
        nbb += (double)b->data[e] * b->data[e];
        dot += (double)a->data[e] * b->data[e];
    }
    double th = acos(dot / sqrt(na * nbb)), t = 0.75, err = 0;
    for (size_t e = 0; e < a->n; e++) {
        double want = (sin((1 - t) * th) * a->data[e] + sin(t * th) * b->data[e]) / sin(th);
        err = fmax(err, fabs(want - (double)out[e]));
    }
    TEST_COND("the merged tensor is slerp(quick, long, 3/4) of the weights themselves (within 1e-5)",
              rc == 0 && err < 1e-5);
    if (err >= 1e-5)
        printf("      max error %g\n", err);
    free(out);
    ws_scratch_deinit(&sc);

    struct recipe *ties = recipe_clone(ws_recipe(ws));
    free(ties->method);
    ties->method = strdup("ties");
    TEST_COND("ties is refused without a base, naming the key", ws_set_recipe(ws, ties, NULL) != 0 &&
              strstr(lm_last_error(), "base: missing: method 'ties'") && strcmp(ws_method(ws)->name, "nuslerp") == 0);
    recipe_free(ties);
    struct recipe *withb = recipe_clone(ws_recipe(ws));
    recipe_set_model_path(withb, -1, "base");
    rc = ws_reopen(ws, withb);
    struct workspace *fresh = open_recipe(withb);
    TEST_COND("a base set through ws_reopen: nuslerp of the task vectors, as a fresh workspace",
              rc == 0 && ws_has_base(ws) && same_merge(ws, fresh));
    ws_free(fresh);
    recipe_free(withb);
    ws_free(ws);
}

int main(void)
{
    snprintf(root, sizeof(root), "/tmp/ms-test-ws-XXXXXX");
    if (!mkdtemp(root)) {
        perror("mkdtemp");
        return 1;
    }
    struct fx_model base, quick, lng;
    TEST_COND("fixture trio written", fx_make_trio(root, 7, &base, &quick, &lng) == 0);

    /* ---- task arithmetic over base + quick (tied) + long (untied) ---- */
    const char *ta =
        "{\"format\": \"mergescope-recipe/1\", \"base\": \"base\","
        " \"models\": [{\"name\": \"quick\", \"path\": \"quick\", \"weight\": 0.3},"
        "              {\"name\": \"long\", \"path\": \"long\", \"weight\": 0.7}],"
        " \"method\": \"task_arithmetic\", \"params\": {\"lambda\": 0.9},"
        " \"output\": {\"dtype\": \"f32\", \"config_from\": \"long\", \"tokenizer_from\": \"quick\"}}";
    struct workspace *ws = open_json(ta, 2);
    TEST_COND("workspace opens the trio", ws != NULL);
    if (!ws)
        return test_report();
    TEST_COND("39 output tensors (embed, 3 x 12 layer tensors, norm, lm_head)", ws_n_tensors(ws) == 39);
    TEST_COND("3 layers found from tensor names", ws_n_layers(ws) == 3);
    TEST_COND("mixed tying gives an untied output", !ws_output_tied(ws));
    TEST_COND("a note says lm_head was materialised", strstr(ws_notes(ws), "tied") != NULL);
    TEST_COND("a note reports max_position_embeddings differing",
              strstr(ws_notes(ws), "max_position_embeddings") != NULL);
    TEST_COND("output order starts with the embeddings",
              strcmp(ws_tensor(ws, 0)->name, "model.embed_tokens.weight") == 0);
    TEST_COND("output order ends with lm_head and the final norm after the layers",
              strstr(ws_tensor(ws, 37)->name, "lm_head") || strstr(ws_tensor(ws, 38)->name, "lm_head"));

    char out1[512], out2[512], path1[600], path2[600];
    snprintf(out1, sizeof(out1), "%s/out-ta", root);
    int rc = ws_write(ws, out1, ws_default_write_params(), NULL, NULL);
    TEST_COND("task_arithmetic merge written", rc == 0);
    if (rc)
        printf("      %s\n", lm_last_error());
    struct st_set *got = st_set_open_dir(out1);
    TEST_COND("merged weights read back", got != NULL);
    double max_err = 0;
    size_t checked = 0;
    for (int i = 0; got && i < lng.n; i++) {
        const char *name = lng.t[i].name;
        const struct fx_tensor *b = served(&base, name), *q = served(&quick, name), *l = served(&lng, name);
        size_t n = 0;
        float *m = read_tensor_f32(got, name, &n);
        if (!m || !b || n != b->n) {
            max_err = INFINITY;
            free(m);
            continue;
        }
        for (size_t e = 0; e < n; e++) {
            double expect = (double)b->data[e] + 0.9 * (0.3 * ((double)q->data[e] - b->data[e]) +
                                                        0.7 * ((double)l->data[e] - b->data[e]));
            max_err = fmax(max_err, fabs(expect - (double)m[e]));
        }
        checked++;
        free(m);
    }
    TEST_COND("every tensor (38 + lm_head) checked", checked == 39);
    TEST_NEAR("TA result equals b + 0.9*(0.3 dq + 0.7 dl) within float rounding", max_err, 0, 2e-6);
    st_set_close(got);

    snprintf(path1, sizeof(path1), "%s/config.json", out1);
    struct hf_config cfg;
    TEST_COND("output config.json parses", hf_config_load(path1, &cfg) == 0);
    TEST_COND("config is untied and float32", cfg.has_tie_word_embeddings && !cfg.tie_word_embeddings &&
              cfg.torch_dtype && strcmp(cfg.torch_dtype, "float32") == 0);
    TEST_COND("config comes from config_from (long: 131072 positions)", cfg.max_position_embeddings == 131072);
    hf_config_deinit(&cfg);
    snprintf(path1, sizeof(path1), "%s/tokenizer_config.json", out1);
    TEST_COND("tokenizer files copied", lm_is_file(path1));
    snprintf(path1, sizeof(path1), "%s/README.md", out1);
    TEST_COND("model card written", lm_is_file(path1));
    snprintf(path1, sizeof(path1), "%s/mergescope-recipe.json", out1);
    TEST_COND("recipe written next to the model", lm_is_file(path1));
    TEST_COND("no staging directory left behind", no_partial_dirs());

    /* The saved recipe reruns to the same bytes, on one thread. */
    struct recipe *saved = recipe_load(path1);
    TEST_COND("saved recipe loads", saved != NULL);
    if (saved) {
        struct ws_params p = ws_default_params();
        p.n_threads = 1;
        struct workspace *again = ws_open(saved, p);
        snprintf(out2, sizeof(out2), "%s/out-ta-again", root);
        TEST_COND("saved recipe reruns", again && ws_write(again, out2, ws_default_write_params(), NULL, NULL) == 0);
        snprintf(path1, sizeof(path1), "%s/model.safetensors", out1);
        snprintf(path2, sizeof(path2), "%s/model.safetensors", out2);
        TEST_COND("rerun on 1 thread gives identical bytes", files_equal(path1, path2));
        ws_free(again);
        recipe_free(saved);
    }

    /* Cancelling a write into an existing model leaves it untouched. */
    snprintf(path1, sizeof(path1), "%s/model.safetensors", out1);
    size_t before_len;
    unsigned char *before = slurp(path1, &before_len);
    struct ws_write_params wp = ws_default_write_params();
    wp.out_dtype = LM_DTYPE_BF16;
    rc = ws_write(ws, out1, wp, cancel_at_half, NULL);
    TEST_COND("cancelled write reports LM_ECANCELED", rc == LM_ECANCELED);
    size_t after_len;
    unsigned char *after = slurp(path1, &after_len);
    TEST_COND("existing model untouched after cancel", before && after && before_len == after_len &&
              memcmp(before, after, before_len) == 0);
    TEST_COND("no staging directory left after cancel", no_partial_dirs());
    free(before);
    free(after);

    /* GGUF: one file; Q8_0 asked for, but rows of 8 and 16 values do not
     * split into groups of 32, so the matrices are F16 (as llama.cpp's
     * converter does); a cancelled rewrite leaves the file as it was. */
    static const char tok[] =
        "{\"added_tokens\": [{\"id\": 27, \"content\": \"<|endoftext|>\", \"special\": true}],"
        " \"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Split\", \"pattern\":"
        " {\"Regex\": \"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\\\r\\\\n\\\\p{L}\\\\p{N}]?\\\\p{L}+|\\\\p{N}|"
        " ?[^\\\\s\\\\p{L}\\\\p{N}]+[\\\\r\\\\n]*|\\\\s*[\\\\r\\\\n]+|\\\\s+(?!\\\\S)|\\\\s+\"},"
        " \"behavior\": \"Isolated\", \"invert\": false}, {\"type\": \"ByteLevel\", \"use_regex\": false}]},"
        " \"decoder\": {\"type\": \"ByteLevel\"},"
        " \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, \"merges\": [\"a b\"]}}";
    snprintf(path2, sizeof(path2), "%s/quick/tokenizer.json", root);
    TEST_COND("tokenizer.json for the GGUF output", lm_write_file_atomic(path2, tok, sizeof(tok) - 1) == 0);
    snprintf(path1, sizeof(path1), "%s/m.gguf", root);
    wp = ws_default_write_params();
    wp.out_dtype = LM_DTYPE_Q8_0;
    TEST_COND("Q8_0 into safetensors is refused", ws_write(ws, out1, wp, NULL, NULL) == LM_EINVAL);
    wp.format = WS_FORMAT_GGUF;
    rc = ws_write(ws, path1, wp, NULL, NULL);
    TEST_COND("GGUF written", rc == 0);
    if (rc)
        printf("      %s\n", lm_last_error());
    size_t glen = 0;
    unsigned char *g = slurp(path1, &glen);
    TEST_COND("it starts with GGUF, version 3", g && glen > 8 && memcmp(g, "GGUF\3\0\0\0", 8) == 0);
    /* the tensor info after the name: n_dims 2, ne [8, 8], type */
    static const char qname[] = "\x13\0\0\0\0\0\0\0" "blk.0.attn_q.weight";
    unsigned char *at = g ? memmem(g, glen, qname, sizeof(qname) - 1) : NULL;
    at = at ? at + sizeof(qname) - 1 : NULL;
    TEST_COND("blk.0.attn_q.weight: 2 dims of 8, F16 (type 1)",
              at && at[0] == 2 && at[4] == 8 && at[12] == 8 && at[20] == 1 && at[21] == 0);
    rc = ws_write(ws, path1, wp, cancel_at_half, NULL);
    size_t glen2 = 0;
    unsigned char *g2 = slurp(path1, &glen2);
    TEST_COND("a cancelled GGUF rewrite reports LM_ECANCELED", rc == LM_ECANCELED);
    TEST_COND("  and leaves the file as it was", g && g2 && glen == glen2 && memcmp(g, g2, glen) == 0);
    TEST_COND("  and no staging directory", no_partial_dirs());
    free(g);
    free(g2);

    /* Sharded output holds the same tensors as the single file. */
    snprintf(out2, sizeof(out2), "%s/out-sharded", root);
    wp = ws_default_write_params();
    wp.shard_size = 2000;
    TEST_COND("sharded write", ws_write(ws, out2, wp, NULL, NULL) == 0);
    snprintf(path2, sizeof(path2), "%s/model.safetensors.index.json", out2);
    TEST_COND("sharded write has an index", lm_is_file(path2));
    struct st_set *one = st_set_open_dir(out1), *many = st_set_open_dir(out2);
    bool same = one && many && st_set_n_tensors(one) == st_set_n_tensors(many) && st_set_n_files(many) > 2;
    for (size_t i = 0; same && i < st_set_n_tensors(one); i++) {
        const struct st_tensor *a = st_set_tensor(one, i), *b = st_set_find(many, a->name);
        same = b && a->nbytes == b->nbytes && memcmp(a->data, b->data, a->nbytes) == 0;
    }
    TEST_COND("sharded and single-file outputs hold identical tensors", same);
    st_set_close(one);
    st_set_close(many);

    /* Statistics of layer 1 against a direct computation. */
    TEST_COND("statistics computed", ws_stats_compute(ws, NULL, NULL) == 0);
    struct ws_stats_row *rows = NULL;
    size_t n_rows = 0;
    TEST_COND("rows by layer", ws_stats_rows(ws, WS_STATS_BY_LAYER, &rows, &n_rows) == 0);
    const struct ws_stats_row *row1 = NULL;
    for (size_t r = 0; r < n_rows; r++)
        if (strcmp(rows[r].label, "layer 1") == 0)
            row1 = &rows[r];
    TEST_COND("a 'layer 1' row exists", row1 != NULL);
    TEST_COND("3 layer rows + embed, norm, lm_head rows", n_rows == 6);
    double bb = 0, qq = 0, ll = 0, ql = 0;
    uint64_t both = 0, opp = 0;
    for (int i = 0; i < base.n; i++) {
        if (!strstr(base.t[i].name, "layers.1."))
            continue;
        const struct fx_tensor *b = &base.t[i], *q = fx_find(&quick, b->name), *l = fx_find(&lng, b->name);
        for (size_t e = 0; e < b->n; e++) {
            double dq = (double)q->data[e] - b->data[e], dl = (double)l->data[e] - b->data[e];
            bb += (double)b->data[e] * b->data[e];
            qq += dq * dq;
            ll += dl * dl;
            ql += dq * dl;
            if (dq != 0 && dl != 0) {
                both++;
                opp += (dq > 0) != (dl > 0);
            }
        }
    }
    if (row1) {
        TEST_NEAR("layer 1 norm(quick)", stats_norm(&row1->raw, 0), sqrt(qq), 1e-9 * sqrt(qq) + 1e-12);
        TEST_NEAR("layer 1 rel(long)", stats_rel(&row1->raw, 1), sqrt(ll / bb), 1e-9);
        TEST_NEAR("layer 1 cos(quick,long)", stats_cos(&row1->raw, 0, 1), ql / sqrt(qq * ll), 1e-9);
        TEST_NEAR("layer 1 conflict(quick,long)", stats_conflict(&row1->raw, 0, 1), (double)opp / (double)both, 1e-12);
    }
    free(rows);
    ws_free(ws);

    /* ---- TIES, against a naive implementation, and thread independence ---- */
    const char *ties =
        "{\"format\": \"mergescope-recipe/1\", \"base\": \"base\","
        " \"models\": [{\"name\": \"quick\", \"path\": \"quick\", \"weight\": 0.6},"
        "              {\"name\": \"long\", \"path\": \"long\", \"weight\": 0.4}],"
        " \"method\": \"ties\", \"params\": {\"density\": 0.3, \"lambda\": 1.2},"
        " \"overrides\": [{\"layers\": \"2\", \"modules\": \"mlp\", \"params\": {\"density\": 0.7}}]}";
    struct workspace *w1 = open_json(ties, 1), *w2 = open_json(ties, 2);
    TEST_COND("ties recipe opens", w1 && w2);
    if (w1 && w2) {
        const char *name = "model.layers.2.mlp.up_proj.weight";
        long ti = ws_find_tensor(w1, name);
        const struct fx_tensor *b = fx_find(&base, name), *q = fx_find(&quick, name), *l = fx_find(&lng, name);
        float *out = malloc(b->n * sizeof(float));
        struct ws_scratch sc;
        memset(&sc, 0, sizeof(sc));
        TEST_COND("merge one tensor in memory", ti >= 0 && ws_merge_tensor(w1, (size_t)ti, out, &sc) == 0);
        const float *xs[2] = { q->data, l->data };
        double w[2] = { 0.6, 0.4 };
        double *expect = naive_ties(b->data, xs, 2, b->n, 0.7, w, 1.2);
        double err = 0;
        for (size_t e = 0; e < b->n; e++)
            err = fmax(err, fabs(expect[e] - out[e]));
        TEST_NEAR("TIES (override density 0.7 on layer 2 mlp) matches a naive implementation", err, 0, 1e-6);
        free(expect);
        ws_scratch_deinit(&sc);
        free(out);

        struct merge_tensor_params prm;
        ws_tensor_params(w1, (size_t)ws_find_tensor(w1, "model.layers.1.mlp.up_proj.weight"), &prm);
        TEST_NEAR("override does not reach layer 1", prm.density[0], 0.3, 0);

        /* An edit re-merges only its layer, reusing the old buffers, and
         * gives what a fresh workspace on the edited recipe gives. */
        TEST_COND("layer 2 merged into the cache", ws_merge_layer(w2, 2, NULL, NULL) == 0);
        const char *edited =
            "{\"format\": \"mergescope-recipe/1\", \"base\": \"base\","
            " \"models\": [{\"name\": \"quick\", \"path\": \"quick\", \"weight\": 0.6},"
            "              {\"name\": \"long\", \"path\": \"long\", \"weight\": 0.4}],"
            " \"method\": \"ties\", \"params\": {\"density\": 0.3, \"lambda\": 1.2},"
            " \"overrides\": [{\"layers\": \"2\", \"modules\": \"mlp\", \"params\": {\"density\": 0.5}}]}";
        struct recipe *er = parse(edited);
        bool changed[64] = { false };
        TEST_COND("edited recipe accepted", er && ws_set_recipe(w2, er, changed) == 0);
        size_t n_changed = 0;
        for (size_t i = 0; i < ws_n_tensors(w2); i++)
            n_changed += changed[i];
        TEST_COND("the edit touches exactly layer 2's three MLP tensors", n_changed == 3);
        TEST_COND("... whose cached merges were dropped", !ws_merged(w2, (size_t)ws_find_tensor(w2, name)));
        TEST_COND("... and the rest of layer 2 stays cached",
                  ws_merged(w2, (size_t)ws_find_tensor(w2, "model.layers.2.self_attn.q_proj.weight")) != NULL);
        TEST_COND("layer 2 merged again", ws_merge_layer(w2, 2, NULL, NULL) == 0);
        struct workspace *fresh = open_json(edited, 1);
        TEST_COND("fresh workspace on the edited recipe", fresh && ws_merge_layer(fresh, 2, NULL, NULL) == 0);
        bool same_bytes = fresh != NULL;
        for (size_t i = 0; fresh && i < ws_n_tensors(w2); i++) {
            if (ws_tensor(w2, i)->info.layer != 2)
                continue;
            size_t bytes = (size_t)ws_tensor(w2, i)->n_elements * lm_dtype_size(ws_output_dtype(w2, i, -1));
            same_bytes = same_bytes && ws_merged(w2, i) && ws_merged(fresh, i) &&
                         memcmp(ws_merged(w2, i), ws_merged(fresh, i), bytes) == 0;
        }
        TEST_COND("the re-merged layer equals a fresh merge of the edited recipe", same_bytes);
        ws_free(fresh);
        recipe_free(er);
        TEST_COND("back to the original recipe", ws_set_recipe(w2, parse_keep(ties), NULL) == 0);

        snprintf(out1, sizeof(out1), "%s/out-ties-1", root);
        snprintf(out2, sizeof(out2), "%s/out-ties-2", root);
        TEST_COND("ties written with 1 and 2 threads",
                  ws_write(w1, out1, ws_default_write_params(), NULL, NULL) == 0 &&
                  ws_write(w2, out2, ws_default_write_params(), NULL, NULL) == 0);
        snprintf(path1, sizeof(path1), "%s/model.safetensors", out1);
        snprintf(path2, sizeof(path2), "%s/model.safetensors", out2);
        TEST_COND("ties output identical for 1 and 2 threads", files_equal(path1, path2));
    }
    ws_free(w1);
    ws_free(w2);

    const char *dare =
        "{\"format\": \"mergescope-recipe/1\", \"base\": \"base\","
        " \"models\": [{\"name\": \"quick\", \"path\": \"quick\"}, {\"name\": \"long\", \"path\": \"long\"}],"
        " \"method\": \"dare_ties\", \"params\": {\"density\": 0.5, \"seed\": 42}}";
    w1 = open_json(dare, 1);
    w2 = open_json(dare, 2);
    if (w1 && w2) {
        snprintf(out1, sizeof(out1), "%s/out-dare-1", root);
        snprintf(out2, sizeof(out2), "%s/out-dare-2", root);
        TEST_COND("dare_ties written with 1 and 2 threads",
                  ws_write(w1, out1, ws_default_write_params(), NULL, NULL) == 0 &&
                  ws_write(w2, out2, ws_default_write_params(), NULL, NULL) == 0);
        snprintf(path1, sizeof(path1), "%s/model.safetensors", out1);
        snprintf(path2, sizeof(path2), "%s/model.safetensors", out2);
        TEST_COND("dare_ties output identical for 1 and 2 threads", files_equal(path1, path2));
    } else {
        TEST_COND("dare_ties recipe opens", false);
    }
    ws_free(w1);
    ws_free(w2);

    /* ---- models that cannot be combined ---- */
    struct fx_model odd;
    char dir[512];
    fx_make_finetune(&odd, &quick, 0.01f, true);
    free(odd.t[5].data);
    memmove(&odd.t[5], &odd.t[6], sizeof(odd.t[0]) * (size_t)(odd.n - 6));
    odd.n--;
    snprintf(dir, sizeof(dir), "%s/missing", root);
    fx_write_model_dir(dir, &odd, 4096);
    const char *miss = "{\"format\": \"mergescope-recipe/1\", \"base\": \"base\","
                       " \"models\": [{\"name\": \"m\", \"path\": \"missing\"}], \"method\": \"task_arithmetic\"}";
    ws = open_json(miss, 1);
    TEST_COND("a model missing a tensor is refused", ws == NULL);
    TEST_COND("... naming the tensor", strstr(lm_last_error(), "model.layers.0.self_attn.") != NULL);
    ws_free(ws);
    fx_free(&odd);

    struct fx_model big;
    fx_rng_state = 99;
    fx_make_base(&big, 40);
    snprintf(dir, sizeof(dir), "%s/bigvocab", root);
    fx_write_model_dir(dir, &big, 4096);
    const char *vocab_err = "{\"format\": \"mergescope-recipe/1\", \"base\": \"base\","
                            " \"models\": [{\"name\": \"big\", \"path\": \"bigvocab\"}], \"method\": \"task_arithmetic\"}";
    ws = open_json(vocab_err, 1);
    TEST_COND("different vocab sizes are refused by default", ws == NULL);
    TEST_COND("... saying which sizes and how to proceed",
              strstr(lm_last_error(), "32") && strstr(lm_last_error(), "40") && strstr(lm_last_error(), "output.vocab"));
    ws_free(ws);
    const char *vocab_pad = "{\"format\": \"mergescope-recipe/1\", \"base\": \"base\","
                            " \"models\": [{\"name\": \"big\", \"path\": \"bigvocab\"}], \"method\": \"task_arithmetic\","
                            " \"output\": {\"vocab\": \"pad\"}}";
    ws = open_json(vocab_pad, 1);
    TEST_COND("output.vocab pad opens", ws != NULL);
    if (ws) {
        TEST_COND("pad gives 40 rows", ws_output_vocab(ws) == 40);
        long ei = ws_find_tensor(ws, "model.embed_tokens.weight");
        float *out = malloc(40 * FX_HIDDEN * sizeof(float));
        struct ws_scratch sc;
        memset(&sc, 0, sizeof(sc));
        TEST_COND("padded embeddings merge", ws_merge_tensor(ws, (size_t)ei, out, &sc) == 0);
        /* rows 32..39 exist only in `big`: base rows are zero there, so
         * TA with weight 1 gives big's rows exactly. */
        const struct fx_tensor *be = fx_find(&big, "model.embed_tokens.weight");
        TEST_COND("rows past the base's vocab come from the model",
                  out[35 * FX_HIDDEN + 3] == be->data[35 * FX_HIDDEN + 3]);
        ws_scratch_deinit(&sc);
        free(out);
    }
    ws_free(ws);
    fx_free(&big);

    /* ---- non-finite values: counted per tensor and source; a merge that
     * makes NaN/Inf from finite inputs is refused before anything is
     * written (streamed methods and whole-tensor ones alike) ---- */
    {
        struct fx_model bad;
        fx_make_finetune(&bad, &lng, 0.0f, false);
        const char *bad_name = "model.layers.1.mlp.up_proj.weight";
        struct fx_tensor *bt = NULL;
        for (int k = 0; k < bad.n; k++)
            if (strcmp(bad.t[k].name, bad_name) == 0)
                bt = &bad.t[k];
        if (bt) {
            bt->data[3] = NAN;
            bt->data[5] = INFINITY;
        }
        char bad_dir[600];
        snprintf(bad_dir, sizeof(bad_dir), "%s/bad", root);
        TEST_COND("a model holding a NaN and an Inf written", bt && fx_write_model_dir(bad_dir, &bad, 131072) == 0);
        struct workspace *wn = open_json(
            "{\"format\": \"mergescope-recipe/1\", \"base\": \"base\","
            " \"models\": [{\"name\": \"bad\", \"path\": \"bad\"}], \"method\": \"ties\","
            " \"params\": {\"density\": 0.5}}", 2);
        int nrc = wn ? ws_stats_compute(wn, NULL, NULL) : -100;
        long ti = wn ? ws_find_tensor(wn, bad_name) : -1;
        const struct ws_nonfinite *nf = ti >= 0 ? ws_tensor_nonfinite(wn, (size_t)ti) : NULL;
        TEST_COND("statistics count the NaN and the Inf in the model, none in the base, none made",
                  nrc == 0 && nf && nf->inputs[1] == 2 && nf->inputs[0] == 0 && nf->created == 0);
        char *report = wn ? ws_nonfinite_report(wn) : NULL;
        TEST_COND("the report names the tensor, the model and the count once",
                  report && strstr(report, "1 tensor hold") && strstr(report, bad_name) &&
                  strstr(report, "2 in bad"));
        if (report && !strstr(report, "2 in bad"))
            printf("      %s\n", report);
        free(report);
        ws_free(wn);

        static const char *const methods[] = { "task_arithmetic", "della" };
        for (int mi = 0; mi < 2; mi++) {
            char json[700], out[600];
            snprintf(json, sizeof(json),
                     "{\"format\": \"mergescope-recipe/1\", \"base\": \"base\","
                     " \"models\": [{\"name\": \"long\", \"path\": \"long\"}], \"method\": \"%s\","
                     " \"params\": {\"lambda\": 1e300%s}}", methods[mi],
                     mi ? ", \"density\": 0.9, \"epsilon\": 0.05" : "");
            snprintf(out, sizeof(out), "%s/out-overflow-%d", root, mi);
            struct workspace *wo = open_json(json, 2);
            int orc = wo ? ws_write(wo, out, ws_default_write_params(), NULL, NULL) : -100;
            char descr[160];
            snprintf(descr, sizeof(descr), "%s with lambda 1e300 overflows: refused, naming a tensor, "
                     "nothing written", methods[mi]);
            TEST_COND(descr, orc == LM_EFORMAT && strstr(lm_last_error(), "made") &&
                             strstr(lm_last_error(), "not finite") && strstr(lm_last_error(), "tensor '") &&
                             access(out, F_OK) != 0 && no_partial_dirs());
            if (orc != LM_EFORMAT)
                printf("      rc %d: %s\n", orc, lm_last_error());
            ws_free(wo);
        }
        fx_free(&bad);
    }

    test_sources(&quick);
    test_baseless(&quick, &lng);

    parse_keep(NULL);
    fx_free(&base);
    fx_free(&quick);
    fx_free(&lng);
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
    if (system(cmd) != 0)
        printf("      could not remove %s\n", root);
    return test_report();
}
