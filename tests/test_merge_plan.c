/* Recipe parameters resolved per tensor: defaults, globals, per-model
 * values, gradients over layers, ordered overrides; validation messages;
 * tensor-name classification. */
#include <string.h>

#include "lm_error.h"
#include "merge_plan.h"
#include "test.h"

static struct recipe *parse(const char *json)
{
    struct recipe *r = recipe_parse(json, strlen(json), "plan.json", ".");
    if (!r)
        printf("      parse error: %s\n", lm_last_error());
    return r;
}

static void resolve(const struct merge_plan *p, const char *name, struct merge_tensor_params *out)
{
    struct tn_info info;
    tn_classify(name, &info);
    merge_plan_resolve(p, name, &info, out);
}

/* Expects merge_plan_init to fail with a message containing `needle`. */
static void expect_invalid(const char *descr, const char *json, const char *needle)
{
    struct recipe *r = parse(json);
    struct merge_plan p;
    int rc = r ? merge_plan_init(&p, r) : 0;
    bool ok = r && rc == LM_EFORMAT && strstr(lm_last_error(), needle);
    TEST_COND(descr, ok);
    if (!ok)
        printf("      rc %d, message: %s\n", rc, lm_last_error());
    recipe_free(r);
}

int main(void)
{
    struct tn_info info;
    tn_classify("model.layers.12.self_attn.q_proj.weight", &info);
    TEST_COND("layer 12 q_proj is attention", info.layer == 12 && info.group == TN_GROUP_ATTN &&
              strcmp(info.proj, "q_proj") == 0);
    tn_classify("model.layers.3.mlp.down_proj.weight", &info);
    TEST_COND("down_proj is mlp", info.layer == 3 && info.group == TN_GROUP_MLP && strcmp(info.proj, "down_proj") == 0);
    tn_classify("model.layers.0.post_attention_layernorm.weight", &info);
    TEST_COND("layernorm is a norm", info.layer == 0 && info.group == TN_GROUP_NORM);
    tn_classify("model.layers.5.self_attn.q_norm.weight", &info);
    TEST_COND("Qwen3 q_norm is a norm matched by self_attn",
              info.group == TN_GROUP_NORM && tn_match_module("model.layers.5.self_attn.q_norm.weight", &info, "self_attn"));
    tn_classify("model.embed_tokens.weight", &info);
    TEST_COND("embeddings outside the layer stack", info.layer == -1 && info.group == TN_GROUP_EMBED);
    tn_classify("lm_head.weight", &info);
    TEST_COND("lm_head", info.layer == -1 && info.group == TN_GROUP_LM_HEAD);
    tn_classify("model.norm.weight", &info);
    TEST_COND("final norm", info.layer == -1 && info.group == TN_GROUP_NORM);
    TEST_COND("layers sort numerically (2 before 10)",
              tn_compare_names("model.layers.2.mlp.up_proj.weight", "model.layers.10.mlp.up_proj.weight") < 0);
    TEST_COND("embeddings sort first", tn_compare_names("model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight") < 0);
    TEST_COND("lm_head sorts after layers", tn_compare_names("lm_head.weight", "model.layers.27.mlp.up_proj.weight") > 0);

    double g[3] = { 0.0, 1.0, 0.5 };
    TEST_NEAR("interp at t=0", merge_plan_interp(g, 3, 0.0), 0.0, 0);
    TEST_NEAR("interp at t=0.25", merge_plan_interp(g, 3, 0.25), 0.5, 1e-15);
    TEST_NEAR("interp at t=0.5 hits the middle point", merge_plan_interp(g, 3, 0.5), 1.0, 0);
    TEST_NEAR("interp at t=0.75", merge_plan_interp(g, 3, 0.75), 0.75, 1e-15);
    TEST_NEAR("interp at t=1", merge_plan_interp(g, 3, 1.0), 0.5, 0);
    {
        /* mergekit's formula, not numpy.interp's: at t = 0.5 of [0.1, 0.7]
         * (1 - 0.5) 0.1 + 0.5 0.7 = 0.39999999999999997 while
         * 0.1 + (0.7 - 0.1) 0.5 = 0.4; as a density over 10 entries
         * int(density n) is 3 in mergekit, and would be 4. */
        double d2[2] = { 0.1, 0.7 };
        double got = merge_plan_interp(d2, 2, 0.5);
        volatile double f = 0.5;
        double mk = (1.0 - f) * 0.1 + f * 0.7;
        double np = 0.1 + (0.7 - 0.1) * f;
        TEST_COND("interp is bit for bit mergekit's (1 - f) v0 + f v1", memcmp(&got, &mk, sizeof got) == 0);
        TEST_COND("int(density n) of it is 3, as in mergekit", (int)(got * 10) == 3);
        TEST_COND("... which differs from numpy.interp's here", mk != np);
    }

    const char *json =
        "{\"format\": \"mergescope-recipe/1\", \"base\": \"b\","
        " \"models\": [{\"name\": \"a\", \"path\": \"a\", \"weight\": 0.7},"
        "              {\"name\": \"c\", \"path\": \"c\", \"weight\": [0.0, 1.0], \"density\": 0.9}],"
        " \"method\": \"ties\", \"params\": {\"density\": 0.2, \"lambda\": [1.0, 2.0, 0.0], \"normalize\": false},"
        " \"overrides\": ["
        "   {\"layers\": \"0-1\", \"modules\": \"mlp\", \"params\": {\"weight\": {\"a\": 0.5}}},"
        "   {\"layers\": [1], \"modules\": [\"mlp\", \"q_proj\"], \"params\": {\"density\": 0.4}},"
        "   {\"modules\": \"embed\", \"params\": {\"lambda\": 3.0}},"
        "   {\"layers\": \"1\", \"params\": {\"density\": 0.6}}"
        " ]}";
    struct recipe *r = parse(json);
    struct merge_plan p;
    TEST_COND("recipe with gradients and overrides validates", r && merge_plan_init(&p, r) == 0);
    if (r) {
        p.n_layers = 5; /* t = layer / 4 */
        struct merge_tensor_params prm;
        resolve(&p, "model.layers.0.self_attn.k_proj.weight", &prm);
        TEST_NEAR("layer 0: global density for a", prm.density[0], 0.2, 0);
        TEST_NEAR("layer 0: model density for c", prm.density[1], 0.9, 0);
        TEST_NEAR("layer 0: weight a", prm.weight[0], 0.7, 0);
        TEST_NEAR("layer 0: weight gradient for c starts at 0", prm.weight[1], 0.0, 0);
        TEST_NEAR("layer 0: lambda gradient starts at 1", prm.lambda, 1.0, 0);
        TEST_COND("normalize false from params (ties defaults to true)", !prm.normalize);
        resolve(&p, "model.layers.2.self_attn.k_proj.weight", &prm);
        TEST_NEAR("layer 2 (t=0.5): weight c = 0.5", prm.weight[1], 0.5, 1e-15);
        TEST_NEAR("layer 2 (t=0.5): lambda = 2", prm.lambda, 2.0, 1e-15);
        resolve(&p, "model.layers.3.self_attn.k_proj.weight", &prm);
        TEST_NEAR("layer 3 (t=0.75): lambda = 1", prm.lambda, 1.0, 1e-15);
        resolve(&p, "model.layers.0.mlp.up_proj.weight", &prm);
        TEST_NEAR("layer 0 mlp: per-model override sets a's weight", prm.weight[0], 0.5, 0);
        TEST_NEAR("layer 0 mlp: c's weight untouched", prm.weight[1], 0.0, 0);
        resolve(&p, "model.layers.1.mlp.up_proj.weight", &prm);
        TEST_NEAR("layer 1 mlp: the last matching override wins (0.6)", prm.density[0], 0.6, 0);
        TEST_NEAR("layer 1 mlp: scalar override applies to every model", prm.density[1], 0.6, 0);
        resolve(&p, "model.layers.1.self_attn.q_proj.weight", &prm);
        TEST_NEAR("layer 1 q_proj: later layer-only override wins", prm.density[0], 0.6, 0);
        resolve(&p, "model.layers.2.self_attn.q_proj.weight", &prm);
        TEST_NEAR("layer 2 q_proj: no override", prm.density[0], 0.2, 0);
        resolve(&p, "model.embed_tokens.weight", &prm);
        TEST_NEAR("embeddings: module override lambda 3", prm.lambda, 3.0, 0);
        TEST_NEAR("embeddings take the first gradient value for c's weight", prm.weight[1], 0.0, 0);
        resolve(&p, "lm_head.weight", &prm);
        TEST_NEAR("lm_head takes the first lambda value (mergekit's planner: t = 0)", prm.lambda, 1.0, 0);
        TEST_NEAR("lm_head takes the first weight value for c", prm.weight[1], 0.0, 0);
        resolve(&p, "model.norm.weight", &prm);
        TEST_NEAR("the final norm takes the first lambda value", prm.lambda, 1.0, 0);
        TEST_NEAR("the final norm takes the first weight value for c", prm.weight[1], 0.0, 0);
        p.n_layers = 1;
        resolve(&p, "model.layers.0.self_attn.k_proj.weight", &prm);
        TEST_NEAR("a one-layer model reads its layer at t = 1 (mergekit)", prm.lambda, 0.0, 0);
        TEST_NEAR("a one-layer model: c's weight gradient at its end", prm.weight[1], 1.0, 0);
    }
    recipe_free(r);

    const char *head = "{\"format\": \"mergescope-recipe/1\", \"base\": \"b\", \"models\": [{\"name\": \"a\", \"path\": \"a\"}], ";
    char buf[1024];
#define INVALID(descr, tail, needle) \
    snprintf(buf, sizeof(buf), "%s%s", head, tail); expect_invalid(descr, buf, needle)
    INVALID("unknown method is named", "\"method\": \"tiez\"}", "unknown method 'tiez'");
    INVALID("unknown parameter is named with its path", "\"method\": \"ties\", \"params\": {\"densty\": 0.2}}", "params.densty");
    INVALID("parameter the method does not take", "\"method\": \"task_arithmetic\", \"params\": {\"t\": 0.5}}", "does not take 't'");
    INVALID("density out of range", "\"method\": \"ties\", \"params\": {\"density\": 1.5}}", "outside [0, 1]");
    INVALID("gradient entry out of range", "\"method\": \"ties\", \"params\": {\"density\": [0.5, -0.1]}}", "params.density");
    INVALID("bool given a number", "\"method\": \"ties\", \"params\": {\"normalize\": 1}}", "true or false");
    INVALID("seed must be whole", "\"method\": \"dare_ties\", \"params\": {\"seed\": 1.5}}", "whole number");
    INVALID("rescale choice checked", "\"method\": \"dare_ties\", \"params\": {\"rescale\": \"l2\"}}", "rescale");
    INVALID("lambda cannot be per model", "\"method\": \"ties\", \"overrides\": [{\"params\": {\"lambda\": {\"a\": 1}}}]}",
            "overrides[0].params.lambda");
    expect_invalid("slerp needs exactly one model",
                   "{\"format\": \"mergescope-recipe/1\", \"base\": \"b\", \"method\": \"slerp\","
                   " \"models\": [{\"name\": \"a\", \"path\": \"a\"}, {\"name\": \"c\", \"path\": \"c\"}]}",
                   "exactly 1");
    {
        snprintf(buf, sizeof(buf), "%s%s", head, "\"method\": \"ties\", \"params\": {\"density\": 0.2, \"seed\": 42}}");
        struct recipe *rs = parse(buf);
        struct merge_plan ps;
        TEST_COND("a seed is accepted by a method without randomness (DESIGN's example recipe)",
                  rs && merge_plan_init(&ps, rs) == 0);
        recipe_free(rs);
    }
    INVALID("average takes no weights", "\"method\": \"average\", \"params\": {\"weight\": 1}}", "does not take 'weight'");
    /* The recipe against the model it is applied to: a 6-layer model with
     * every projection, norms, embeddings and lm_head. */
    {
        static const char *const projs[] = { "self_attn.q_proj.weight", "self_attn.k_proj.weight",
            "self_attn.v_proj.weight", "self_attn.o_proj.weight", "mlp.gate_proj.weight",
            "mlp.up_proj.weight", "mlp.down_proj.weight", "input_layernorm.weight",
            "post_attention_layernorm.weight" };
        static char name_buf[64][64];
        const char *names[64];
        struct tn_info infos[64];
        size_t nt = 0;
        snprintf(name_buf[nt], 64, "model.embed_tokens.weight"); nt++;
        for (int l = 0; l < 6; l++)
            for (size_t k = 0; k < LM_ARRAY_SIZE(projs); k++, nt++)
                snprintf(name_buf[nt], 64, "model.layers.%d.%s", l, projs[k]);
        snprintf(name_buf[nt], 64, "model.norm.weight"); nt++;
        snprintf(name_buf[nt], 64, "lm_head.weight"); nt++;
        for (size_t t = 0; t < nt; t++) {
            names[t] = name_buf[t];
            tn_classify(names[t], &infos[t]);
        }
        static const struct { const char *descr, *tail, *needle; } cases[] = {
            { "layers 0-99 on a 6-layer model name the override and its range",
              "\"overrides\": [{\"layers\": \"0-99\", \"params\": {\"weight\": 0.5}}]}",
              "overrides[0].layers: 0-99 reaches beyond the model's 6 layers (0-5)" },
            { "a single layer past the end",
              "\"overrides\": [{\"layers\": \"1\", \"params\": {\"weight\": 1}}, "
              "{\"layers\": [6], \"params\": {\"weight\": 0.5}}]}",
              "overrides[1].layers: 6 reaches beyond" },
            { "a misspelt module matches nothing",
              "\"overrides\": [{\"modules\": \"self_atn\", \"params\": {\"weight\": 0.5}}]}",
              "overrides[0].modules: \"self_atn\" matches no tensor" },
            { "one bad module among good ones is named",
              "\"overrides\": [{\"layers\": \"0-2\", \"modules\": [\"mlp\", \"q_prj\"], \"params\": {\"weight\": 0.5}}]}",
              "overrides[0].modules: \"q_prj\" matches no tensor in its layers" },
            { "embed within layers selects nothing",
              "\"overrides\": [{\"layers\": \"2-3\", \"modules\": \"embed\", \"params\": {\"weight\": 0.5}}]}",
              "overrides[0].modules: \"embed\" matches no tensor in its layers" },
            { "a global gradient longer than the layer count",
              "\"params\": {\"density\": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]}}",
              "params.density: a gradient of 7 points is longer than the model's 6 layers" },
            { "a per-model gradient in an override longer than the layer count",
              "\"overrides\": [{\"params\": {\"weight\": {\"a\": [1, 1, 1, 1, 1, 1, 1, 1]}}}]}",
              "overrides[0].params.weight: a gradient of 8 points" },
        };
        for (size_t c = 0; c < LM_ARRAY_SIZE(cases); c++) {
            snprintf(buf, sizeof(buf), "%s\"method\": \"ties\", %s", head, cases[c].tail);
            struct recipe *rc_r = parse(buf);
            struct merge_plan pc;
            int rc = rc_r ? merge_plan_init(&pc, rc_r) : -100;
            if (rc == 0) {
                pc.n_layers = 6;
                rc = merge_plan_check_selection(&pc, names, infos, nt);
            }
            bool ok = rc == LM_EFORMAT && strstr(lm_last_error(), cases[c].needle);
            TEST_COND(cases[c].descr, ok);
            if (!ok)
                printf("      rc %d, message: %s\n", rc, lm_last_error());
            recipe_free(rc_r);
        }
        static const char *const good[] = {
            "\"overrides\": [{\"layers\": \"0-5\", \"modules\": [\"mlp\", \"q_proj\"], \"params\": {\"weight\": 0.5}}, "
            "{\"modules\": \"embed\", \"params\": {\"weight\": 0.5}}, {\"modules\": \"layers.3.mlp\", \"params\": {\"weight\": 0.5}}], "
            "\"params\": {\"density\": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]}}",
        };
        snprintf(buf, sizeof(buf), "%s\"method\": \"ties\", %s", head, good[0]);
        struct recipe *rg = parse(buf);
        struct merge_plan pg;
        int rc = rg ? merge_plan_init(&pg, rg) : -100;
        if (rc == 0) {
            pg.n_layers = 6;
            rc = merge_plan_check_selection(&pg, names, infos, nt);
        }
        TEST_COND("ranges within the model, modules that match, a 6-point gradient and a name "
                  "substring are accepted", rc == 0);
        if (rc)
            printf("      %s\n", lm_last_error());
        recipe_free(rg);
    }
#undef INVALID
    /* A recipe without a base: only methods that merge without one. */
    expect_invalid("ties without a base: the base key named, and which methods can do without",
                   "{\"format\": \"mergescope-recipe/1\", \"models\": [{\"name\": \"a\", \"path\": \"a\"}],"
                   " \"method\": \"ties\"}",
                   "base: missing: method 'ties' takes task vectors against a base model (only "
                   "linear, average, karcher, nuslerp and multislerp merge without one)");
    struct recipe *nb = parse("{\"format\": \"mergescope-recipe/1\", \"models\": [{\"name\": \"a\", "
                              "\"path\": \"a\"}, {\"name\": \"b\", \"path\": \"b\", \"weight\": 3}], "
                              "\"method\": \"nuslerp\"}");
    struct merge_plan np;
    TEST_COND("nuslerp without a base is a valid plan", nb && merge_plan_init(&np, nb) == 0 && np.n_models == 2);
    recipe_free(nb);
    return test_report();
}
