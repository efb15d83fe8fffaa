/* libFuzzer harness for a recipe's overrides and filters against a model:
 * arbitrary bytes go to recipe_parse; an accepted recipe whose plan checks
 * out is checked against a fixed 6-layer tensor list. The promises: the
 * selection check either passes or fails with LM_EFORMAT and a message
 * naming the key (overrides[i]... or a params path), and once it passes every tensor resolves to
 * parameters without crashing, with every override that the check accepted
 * matching at least one tensor. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lm_error.h"
#include "merge_plan.h"
#include "recipe.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int cond, const char *what)
{
    if (!cond) {
        fprintf(stderr, "fuzz_overrides: %s (%s)\n", what, lm_last_error());
        abort();
    }
}

#define N_LAYERS 6
static char names_buf[2 + N_LAYERS * 9 + 2][64];
static const char *names[2 + N_LAYERS * 9 + 2];
static struct tn_info infos[2 + N_LAYERS * 9 + 2];
static size_t n_names;

static void setup(void)
{
    static const char *const projs[] = { "self_attn.q_proj.weight", "self_attn.k_proj.weight",
        "self_attn.v_proj.weight", "self_attn.o_proj.weight", "mlp.gate_proj.weight",
        "mlp.up_proj.weight", "mlp.down_proj.weight", "input_layernorm.weight",
        "post_attention_layernorm.weight" };
    if (n_names)
        return;
    snprintf(names_buf[n_names++], 64, "model.embed_tokens.weight");
    for (int l = 0; l < N_LAYERS; l++)
        for (size_t k = 0; k < sizeof(projs) / sizeof(projs[0]); k++)
            snprintf(names_buf[n_names++], 64, "model.layers.%d.%s", l, projs[k]);
    snprintf(names_buf[n_names++], 64, "model.norm.weight");
    snprintf(names_buf[n_names++], 64, "lm_head.weight");
    for (size_t t = 0; t < n_names; t++) {
        names[t] = names_buf[t];
        tn_classify(names[t], &infos[t]);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    setup();
    struct recipe *r = recipe_parse((const char *)data, size, "fuzz.json", NULL);
    if (!r)
        return 0;
    struct merge_plan plan;
    if (merge_plan_init(&plan, r) != 0) {
        recipe_free(r);
        return 0;
    }
    plan.n_layers = N_LAYERS;
    int rc = merge_plan_check_selection(&plan, names, infos, n_names);
    check(rc == 0 || (rc == LM_EFORMAT && (strstr(lm_last_error(), "overrides[") ||
                                          strstr(lm_last_error(), "params."))),
          "selection check failed without naming the key");
    if (rc == 0) {
        for (size_t o = 0; o < r->n_overrides; o++) {
            size_t hits = 0;
            for (size_t t = 0; t < n_names; t++)
                hits += merge_plan_override_matches(&r->overrides[o], names[t], &infos[t]);
            check(hits > 0, "an accepted override matches no tensor");
        }
        for (size_t t = 0; t < n_names; t++) {
            struct merge_tensor_params p;
            merge_plan_resolve(&plan, names[t], &infos[t], &p);
        }
    }
    recipe_free(r);
    return 0;
}
