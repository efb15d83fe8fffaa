/* The merged model held for a preview in its three forms (workspace.h,
 * ws_set_preview_dtype) on the demo's TIES recipe: the sizes each form
 * takes, which tensors become Q8_0, and the 8-bit model's logits against
 * the exact one's within the tolerance the README states. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backward.h"
#include "lm_error.h"
#include "merged_source.h"
#include "model.h"
#include "recipe.h"
#include "test.h"
#include "workspace.h"

enum { N_TOK = 24 };

/* Logits of every position of a fixed token sequence, from the merged
 * model held in form d. NULL on failure. */
static float *merged_logits(struct workspace *ws, enum ws_preview_dtype d, int64_t *n_vocab, bool *quantized)
{
    ws_set_preview_dtype(ws, d);
    struct model_params mp = model_default_params();
    mp.n_threads = 2;
    struct model *m = ws_load_merged_model(ws, mp, NULL, NULL);
    if (!m) {
        printf("      %s\n", lm_last_error());
        return NULL;
    }
    const struct model_info *in = model_get_info(m);
    *n_vocab = in->n_vocab;
    *quantized = in->quantized;
    int32_t ids[N_TOK];
    for (int i = 0; i < N_TOK; i++)
        ids[i] = (int32_t)((i * 37 + 11) % in->n_vocab);
    float *logits = malloc((size_t)(N_TOK * in->n_vocab) * sizeof(float));
    if (logits && model_forward(m, ids, N_TOK, logits, MODEL_LOGITS_ALL) != 0) {
        free(logits);
        logits = NULL;
    }
    if (d == WS_PREVIEW_Q8) {
        double loss;
        int rc = model_loss_grad(m, ids, N_TOK, 1, &loss, NULL, NULL);
        TEST_COND("gradients of an 8-bit model are refused as unsupported", rc == LM_EUNSUPPORTED);
    }
    model_free(m);
    return logits;
}

static void check_sizes(struct workspace *ws)
{
    uint64_t out = 0, q8 = 0;
    size_t n_q8 = 0, n_matrices = 0;
    ws_set_preview_dtype(ws, WS_PREVIEW_Q8);
    for (size_t i = 0; i < ws_n_tensors(ws); i++) {
        const struct ws_tensor *t = ws_tensor(ws, i);
        out += 2 * t->n_elements; /* the recipe writes bf16 */
        bool matrix = t->ndim == 2;
        n_matrices += matrix;
        n_q8 += ws_cache_dtype(ws, i) == LM_DTYPE_Q8_0;
        q8 += matrix ? (uint64_t)t->n_elements / 32 * 34 : 2 * (uint64_t)t->n_elements;
    }
    char descr[160];
    snprintf(descr, sizeof descr, "q8: every matrix (%zu, rows of 160 or 448 values) is Q8_0, the vectors bf16",
             n_matrices);
    TEST_COND(descr, n_q8 == n_matrices && n_matrices > 40);
    TEST_COND("q8 form takes 34 bytes per 32 matrix weights plus bf16 vectors", ws_preview_bytes(ws, WS_PREVIEW_Q8) == q8);
    TEST_COND("output form takes the bf16 bytes merge writes", ws_preview_bytes(ws, WS_PREVIEW_OUTPUT) == out);
    TEST_COND("bf16 form of a bf16 recipe is the output form, exact",
              ws_preview_bytes(ws, WS_PREVIEW_BF16) == out);
    TEST_COND("q8 is not exact", !ws_preview_exact(ws));
    ws_set_preview_dtype(ws, WS_PREVIEW_BF16);
    TEST_COND("bf16 of a bf16 recipe is exact", ws_preview_exact(ws));
    ws_set_preview_dtype(ws, WS_PREVIEW_AUTO);
    TEST_COND("auto picks the output form when it fits (a few MB)",
              ws_get_preview_dtype(ws) == WS_PREVIEW_OUTPUT);
    TEST_COND("names parse", ws_preview_dtype_parse("q8") == WS_PREVIEW_Q8 &&
              ws_preview_dtype_parse("out") == WS_PREVIEW_OUTPUT && ws_preview_dtype_parse("q4") < 0);
}

/* The demo's TIES recipe with `density` and long's `weight`. */
static struct recipe *ties_recipe(const char *demo, double density, double weight)
{
    char text[1024];
    snprintf(text, sizeof text,
             "{\"format\": \"mergescope-recipe/1\", \"base\": \"quick\","
             " \"models\": [{\"name\": \"long\", \"path\": \"long\", \"weight\": %g}],"
             " \"method\": \"ties\", \"params\": {\"density\": %g, \"normalize\": false},"
             " \"output\": {\"dtype\": \"f32\", \"config_from\": \"long\", \"tokenizer_from\": \"long\"}}",
             weight, density);
    return recipe_parse(text, strlen(text), "edited.json", demo);
}

/* Layer 2 of `ws` and of a fresh workspace on `r` hold the same bytes;
 * counts the tensors compared. */
static bool same_layer2(struct workspace *ws, const struct recipe *r, size_t *compared)
{
    struct workspace *fresh = ws_open(r, ws_default_params());
    bool ok = fresh && ws_merge_layer(fresh, 2, NULL, NULL) == 0;
    for (size_t i = 0; ok && i < ws_n_tensors(ws); i++) {
        const struct ws_tensor *t = ws_tensor(ws, i);
        if (t->info.layer != 2)
            continue;
        ok = ws_merged(ws, i) && ws_merged(fresh, i) &&
             memcmp(ws_merged(ws, i), ws_merged(fresh, i), (size_t)t->n_elements * 4) == 0;
        (*compared)++;
    }
    ws_free(fresh);
    return ok;
}

/* Re-merges after edits reuse the cuts found before (merge_cut_memo): a
 * density stepped away and back, then a weight change at the same density,
 * each give exactly the bytes a fresh workspace merges. */
static void check_remerge_memo(const char *demo)
{
    struct recipe *r04 = ties_recipe(demo, 0.4, 1.0), *r06 = ties_recipe(demo, 0.6, 1.0);
    struct recipe *r04w = ties_recipe(demo, 0.4, 0.7);
    struct workspace *ws = r04 ? ws_open(r04, ws_default_params()) : NULL;
    size_t compared = 0;
    bool ok = ws && r06 && r04w && ws_merge_layer(ws, 2, NULL, NULL) == 0 &&
              ws_set_recipe(ws, r06, NULL) == 0 && ws_merge_layer(ws, 2, NULL, NULL) == 0 &&
              same_layer2(ws, r06, &compared) &&
              ws_set_recipe(ws, r04, NULL) == 0 && ws_merge_layer(ws, 2, NULL, NULL) == 0 &&
              same_layer2(ws, r04, &compared) &&
              ws_set_recipe(ws, r04w, NULL) == 0 && ws_merge_layer(ws, 2, NULL, NULL) == 0 &&
              same_layer2(ws, r04w, &compared);
    char descr[200];
    snprintf(descr, sizeof descr, "re-merges of layer 2 after density 0.4 -> 0.6 -> 0.4 and weight 1 -> 0.7 "
             "each equal a fresh merge, byte for byte (%zu tensors)", compared);
    TEST_COND(descr, ok && compared >= 21);
    if (!ok && lm_last_error()[0])
        printf("      %s\n", lm_last_error());
    ws_free(ws);
    recipe_free(r04);
    recipe_free(r06);
    recipe_free(r04w);
}

int main(void)
{
    const char *src = getenv("MS_SOURCE_DIR");
    char path[1024];
    snprintf(path, sizeof path, "%s/demo/l2s-ties.json", src ? src : ".");
    struct recipe *r = recipe_load(path);
    struct workspace *ws = r ? ws_open(r, ws_default_params()) : NULL;
    TEST_COND("the demo's TIES recipe opens", ws != NULL);
    if (!ws) {
        printf("      %s\n", lm_last_error());
        return test_report();
    }
    check_sizes(ws);
    char demo[1024];
    snprintf(demo, sizeof demo, "%s/demo", src ? src : ".");
    check_remerge_memo(demo);

    int64_t nv = 0, nv8 = 0;
    bool qa = true, qb = false;
    float *exact = merged_logits(ws, WS_PREVIEW_OUTPUT, &nv, &qa);
    float *q8 = merged_logits(ws, WS_PREVIEW_Q8, &nv8, &qb);
    TEST_COND("both forms run (the exact one unquantized, the q8 one quantized)",
              exact && q8 && nv == nv8 && !qa && qb);
    if (exact && q8) {
        double worst = 0, range = 0;
        int same_top = 0;
        for (int t = 0; t < N_TOK; t++) {
            const float *a = exact + t * nv, *b = q8 + t * nv;
            int64_t ta = 0, tb = 0;
            for (int64_t v = 0; v < nv; v++) {
                worst = fmax(worst, fabs((double)a[v] - (double)b[v]));
                range = fmax(range, fabs((double)a[v]));
                ta = a[v] > a[ta] ? v : ta;
                tb = b[v] > b[tb] ? v : tb;
            }
            same_top += ta == tb;
        }
        char descr[200];
        snprintf(descr, sizeof descr, "q8 logits within 2%% of the largest logit of the exact model "
                 "(worst %.4f of %.2f)", worst, range);
        TEST_COND(descr, worst <= 0.02 * range && worst > 0);
        snprintf(descr, sizeof descr, "q8 picks the same greedy token at %d of %d positions (at least %d)",
                 same_top, N_TOK, N_TOK - 2);
        TEST_COND(descr, same_top >= N_TOK - 2);
    }
    free(exact);
    free(q8);
    ws_free(ws);
    recipe_free(r);
    return test_report();
}
