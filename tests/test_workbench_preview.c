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
