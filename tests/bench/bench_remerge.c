/* The workbench's step after an edit, on any recipe (a 7B trio included):
 * one layer's coefficients change, and only that layer is merged again
 * into the preview cache. Compared, in the same run, with reading that
 * layer's bytes of every input from the page cache.
 *
 *   bench_remerge RECIPE [LAYER] [out|bf16|q8]
 *
 * LAYER defaults to the middle one, the form to the recipe's output. The
 * layer is merged once first (which also brings its inputs into the page
 * cache); then four edits alternate the layer's density override (0.3,
 * 0.25) and each re-merge is timed; the best is reported, as is the best
 * of four reads. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "lm_error.h"
#include "safetensors.h"
#include "recipe.h"
#include "workspace.h"

/* Reads every byte of layer `layer`'s inputs (each source's tensors) and
 * returns a checksum, so the reads cannot be optimised away. */
static uint64_t read_layer(const struct workspace *ws, int layer, uint64_t *bytes)
{
    uint64_t sum = 0;
    *bytes = 0;
    for (size_t i = 0; i < ws_n_tensors(ws); i++) {
        const struct ws_tensor *t = ws_tensor(ws, i);
        if (t->info.layer != layer)
            continue;
        for (int s = 0; s <= ws_n_models(ws); s++) {
            const struct st_tensor *src = t->src[s];
            const uint64_t *p = src->data;
            size_t n = (size_t)(src->nbytes / 8);
            for (size_t k = 0; k < n; k++)
                sum += p[k];
            *bytes += src->nbytes;
        }
    }
    return sum;
}

/* The recipe with one override on `layer`: its JSON with an "overrides"
 * list put before the closing brace (the bench's recipes have none). */
static struct recipe *edited(const struct recipe *r, const char *dir, int layer, const char *density)
{
    char *json = recipe_to_json(r);
    if (!json)
        return NULL;
    char *end = strrchr(json, '}');
    size_t cap = strlen(json) + 200;
    char *text = malloc(cap);
    if (!end || !text) {
        free(json);
        free(text);
        return NULL;
    }
    *end = '\0';
    snprintf(text, cap, "%s, \"overrides\": [{\"layers\": \"%d\", \"params\": {\"density\": %s}}]}", json,
             layer, density);
    struct recipe *e = recipe_parse(text, strlen(text), "edited recipe", dir);
    free(json);
    free(text);
    return e;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: bench_remerge RECIPE [LAYER] [out|bf16|q8]\n");
        return 2;
    }
    struct recipe *r = recipe_load(argv[1]);
    struct workspace *ws = r ? ws_open(r, ws_default_params()) : NULL;
    if (!ws) {
        fprintf(stderr, "%s\n", lm_last_error());
        return 1;
    }
    int layer = argc > 2 ? atoi(argv[2]) : ws_n_layers(ws) / 2;
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", argv[1]);
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = '\0';
    else
        snprintf(dir, sizeof dir, ".");
    int form = argc > 3 ? ws_preview_dtype_parse(argv[3]) : WS_PREVIEW_OUTPUT;
    ws_set_preview_dtype(ws, form < 0 ? WS_PREVIEW_OUTPUT : (enum ws_preview_dtype)form);
    if (ws_merge_layer(ws, layer, NULL, NULL)) {
        fprintf(stderr, "%s\n", lm_last_error());
        return 1;
    }
    double best_read = 1e9, best_merge = 1e9;
    uint64_t bytes = 0, sum = 0;
    for (int rep = 0; rep < 4; rep++) {
        double t0 = lm_now_seconds();
        sum += read_layer(ws, layer, &bytes);
        double t = lm_now_seconds() - t0;
        best_read = t < best_read ? t : best_read;

        struct recipe *e = edited(r, dir, layer, rep % 2 ? "0.25" : "0.3");
        if (!e || ws_set_recipe(ws, e, NULL)) {
            fprintf(stderr, "edit: %s\n", lm_last_error());
            return 1;
        }
        recipe_free(e);
        t0 = lm_now_seconds();
        if (ws_merge_layer(ws, layer, NULL, NULL)) {
            fprintf(stderr, "%s\n", lm_last_error());
            return 1;
        }
        t = lm_now_seconds() - t0;
        best_merge = t < best_merge ? t : best_merge;
    }
    printf("layer %d of %s, form %s: inputs %.2f GB (checksum %llx)\n", layer, argv[1],
           ws_preview_dtype_name(ws_get_preview_dtype(ws)), (double)bytes / 1e9, (unsigned long long)sum);
    printf("  read the layer's inputs  %8.1f ms  %6.2f GB/s (best of 4)\n", best_read * 1e3,
           (double)bytes / best_read / 1e9);
    printf("  re-merge after an edit   %8.1f ms  %6.2fx the read (best of 4)\n", best_merge * 1e3,
           best_merge / best_read);
    ws_free(ws);
    recipe_free(r);
    return 0;
}
