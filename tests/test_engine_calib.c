/* Calibration: the JSONL reader, tokenization of prompt/response pairs, the
 * activation and sensitivity passes against PyTorch goldens
 * (tests/golden/make_calib_goldens.py), the sens coefficients, the aim and
 * sens merge methods on hand-computed tensors, and the workspace wiring
 * (missing calibration, plan, recipe round trip). */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "calib.h"
#include "fsutil.h"
#include "layer_table.h"
#include "lm_error.h"
#include "merge_method.h"
#include "merge_plan.h"
#include "recipe.h"
#include "test.h"
#include "workspace.h"

static char tmpdir[] = "/tmp/ms-calib-XXXXXX";
static const char *src_dir;

static char *tmp_file(const char *name, const char *text)
{
    char *p = lm_path_join(tmpdir, name);
    FILE *f = fopen(p, "w");
    fputs(text, f);
    fclose(f);
    return p;
}

static char *golden_path(const char *rel)
{
    char buf[4096];
    snprintf(buf, sizeof(buf), "%s/tests/golden/%s", src_dir, rel);
    return lm_strdup(buf);
}

static void test_file(void)
{
    struct calib_file f;
    char *p = tmp_file("ok.jsonl", "{\"prompt\": \"a\", \"response\": \"b\", \"extra\": 1}\n\n"
                                   "{\"prompt\": \"c\", \"response\": \"d\"}\n");
    int rc = calib_file_load(p, &f);
    TEST_COND("two samples read, blank line skipped", rc == 0 && f.n == 2 &&
              strcmp(f.samples[1].prompt, "c") == 0 && strcmp(f.samples[1].response, "d") == 0);
    uint64_t h1 = f.content_hash;
    calib_file_deinit(&f);
    free(p);
    p = tmp_file("ok.jsonl", "{\"prompt\": \"a\", \"response\": \"B\"}\n");
    calib_file_load(p, &f);
    TEST_COND("content hash changes with the content", f.content_hash != h1);
    calib_file_deinit(&f);
    free(p);

    static const struct { const char *text; const char *msg; } bad[] = {
        { "{\"prompt\": \"a\"}\n", "bad.jsonl:1: \"response\" is missing" },
        { "\n{\"prompt\": \"a\", \"response\": 3}\n", "bad.jsonl:2: \"response\" must be a string" },
        { "{\"prompt\": \"\", \"response\": \"x\"}\n", "bad.jsonl:1: \"prompt\" is empty" },
        { "{\"prompt\": \"a\", \"response\": \"x\"}\n{\"prompt\": \"a\",\n", "bad.jsonl:2: malformed JSON" },
        { "[1, 2]\n", "bad.jsonl:1: expected a JSON object {\"prompt\": ..., \"response\": ...}" },
        { "{\"prompt\": \"a\", \"response\": \"b\"} {\"prompt\": \"c\", \"response\": \"d\"}\n",
          "bad.jsonl:1: unexpected text after the JSON value, at column 34" },
        { "\n\n", "no calibration samples" },
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        p = tmp_file("bad.jsonl", bad[i].text);
        rc = calib_file_load(p, &f);
        char d[160];
        snprintf(d, sizeof(d), "malformed file %zu rejected with '%s'", i, bad[i].msg);
        TEST_COND(d, rc == LM_EFORMAT && strstr(lm_last_error(), bad[i].msg) != NULL);
        if (!(rc == LM_EFORMAT && strstr(lm_last_error(), bad[i].msg)))
            printf("      message: %s\n", lm_last_error());
        free(p);
    }
    rc = calib_file_load("/nonexistent/c.jsonl", &f);
    TEST_COND("missing file is an I/O error naming it",
              rc == LM_EIO && strstr(lm_last_error(), "/nonexistent/c.jsonl") != NULL);
}

static void test_tokenize(void)
{
    char *tdir = golden_path("qwen2-bf16-tied");
    struct tok *t = tok_load(tdir);
    TEST_COND("golden tokenizer loads", t != NULL);
    if (!t) {
        free(tdir);
        return;
    }
    char *p = tmp_file("t.jsonl", "{\"prompt\": \"hi\", \"response\": \"ok!\"}\n"
                                  "{\"prompt\": \"abc\", \"response\": \"0123456789\"}\n"
                                  "{\"prompt\": \"x\", \"response\": \"y\"}\n");
    struct calib_file f;
    calib_file_load(p, &f);
    struct calib_tokens tk;
    int rc = calib_tokenize(&f, t, CHAT_FORMAT_CHATML, "S", 2, 0, &tk);
    /* The prompt as the chat template renders it, then the response and
     * <|im_end|>. */
    const char *prompt = "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
                         "<|im_start|>assistant\n";
    struct tok_ids want = { 0 };
    tok_encode(t, prompt, strlen(prompt), true, &want);
    size_t plen = want.n;
    tok_encode(t, "ok!", 3, true, &want);
    tok_ids_push(&want, tok_token_to_id(t, "<|im_end|>"));
    TEST_COND("two of three samples taken", rc == 0 && tk.n == 2);
    TEST_COND("sample 1: prompt, response, <|im_end|>",
              rc == 0 && tk.seqs[0].len == (int64_t)want.n && tk.seqs[0].resp_from == (int64_t)plen &&
              memcmp(tk.seqs[0].ids, want.data, want.n * sizeof(int32_t)) == 0);
    TEST_COND("response tokens counted", rc == 0 && tk.n_response_tokens ==
              (tk.seqs[0].len - tk.seqs[0].resp_from) + (tk.seqs[1].len - tk.seqs[1].resp_from));
    int64_t full = rc == 0 ? tk.seqs[1].len : 0;
    calib_tokens_deinit(&tk);

    rc = calib_tokenize(&f, t, CHAT_FORMAT_NONE, NULL, 1, 0, &tk);
    struct tok_ids plain = { 0 };
    tok_encode(t, "hi", 2, false, &plain);
    int32_t bos = tok_bos_id(t);
    size_t off = bos >= 0 ? 1 : 0;
    tok_encode(t, "ok!", 3, true, &plain);
    TEST_COND("plain format: the prompt text, then the response, and no end-of-turn token",
              rc == 0 && tk.n == 1 && tk.seqs[0].len == (int64_t)(plain.n + off) &&
              memcmp(tk.seqs[0].ids + off, plain.data, plain.n * sizeof(int32_t)) == 0);
    tok_ids_free(&plain);
    calib_tokens_deinit(&tk);

    rc = calib_tokenize(&f, t, CHAT_FORMAT_CHATML, "S", 0, full - 3, &tk);
    TEST_COND("max_tokens cuts a sample and counts it",
              rc == 0 && tk.n == 3 && tk.seqs[1].len == full - 3 && tk.n_truncated >= 1);
    calib_tokens_deinit(&tk);
    rc = calib_tokenize(&f, t, CHAT_FORMAT_CHATML, "S", 0, (int64_t)plen - 1, &tk);
    TEST_COND("a prompt longer than max_tokens is an error naming the sample",
              rc == LM_EINVAL && strstr(lm_last_error(), "sample 1") && strstr(lm_last_error(), "max_tokens"));
    tok_ids_free(&want);
    calib_file_deinit(&f);
    tok_free(t);
    free(p);
    free(tdir);
}

/* ----- golden passes ----- */

static cJSON *load_expected(void)
{
    char *p = golden_path("calib/expected.json");
    size_t len;
    char *text = lm_read_file(p, 1 << 24, &len);
    free(p);
    cJSON *j = text ? cJSON_ParseWithLength(text, len) : NULL;
    free(text);
    return j;
}

static struct model *open_golden(const char *rel, int n_threads, struct model_dir **d)
{
    char *p = golden_path(rel);
    *d = model_dir_open(p);
    free(p);
    if (!*d)
        return NULL;
    struct model_params mp = model_default_params();
    mp.n_threads = n_threads;
    struct model_source src = model_dir_source(*d);
    return model_load(model_dir_config(*d), &src, mp);
}

static void golden_tokens(const cJSON *exp, struct calib_tokens *tk)
{
    const cJSON *seqs = cJSON_GetObjectItem(exp, "sequences");
    memset(tk, 0, sizeof(*tk));
    tk->n = (size_t)cJSON_GetArraySize(seqs);
    tk->seqs = calloc(tk->n, sizeof(*tk->seqs));
    for (size_t i = 0; i < tk->n; i++) {
        const cJSON *s = cJSON_GetArrayItem(seqs, (int)i);
        const cJSON *ids = cJSON_GetObjectItem(s, "ids");
        struct calib_seq *q = &tk->seqs[i];
        q->len = cJSON_GetArraySize(ids);
        q->ids = malloc((size_t)q->len * sizeof(int32_t));
        for (int64_t k = 0; k < q->len; k++)
            q->ids[k] = (int32_t)cJSON_GetArrayItem(ids, (int)k)->valuedouble;
        q->resp_from = (int64_t)cJSON_GetObjectItem(s, "resp_from")->valuedouble;
        tk->n_tokens += q->len;
        tk->n_response_tokens += q->len - q->resp_from;
    }
}

static void test_activations(const cJSON *exp, const struct calib_tokens *tk)
{
    static const char *const names[MODEL_PROBE_COUNT] = { "attn_in", "attn_out", "mlp_in", "mlp_act", "head_in" };
    struct calib_activations a[2];
    for (int th = 1; th <= 2; th++) {
        struct model_dir *d;
        struct model *m = open_golden("qwen2-bf16-tied", th, &d);
        int rc = m ? calib_activations_compute(m, tk, NULL, NULL, &a[th - 1]) : -1;
        TEST_COND(th == 1 ? "activation pass runs (1 thread)" : "activation pass runs (2 threads)", rc == 0);
        model_free(m);
        model_dir_close(d);
        if (rc)
            return;
    }
    static const char *const keys[3] = { "mean_abs", "importance", "importance_max" };
    for (int kind = 0; kind < 3; kind++) {
        const cJSON *imp = cJSON_GetObjectItem(exp, keys[kind]);
        double worst = 0;
        int compared = 0;
        bool same = true;
        for (int l = 0; l <= a[0].n_layer; l++)
            for (int w = 0; w < MODEL_PROBE_COUNT; w++) {
                if ((l == a[0].n_layer) != (w == MODEL_PROBE_HEAD_IN))
                    continue;
                char key[64];
                if (l == a[0].n_layer)
                    snprintf(key, sizeof(key), "head.%s", names[w]);
                else
                    snprintf(key, sizeof(key), "%d.%s", l, names[w]);
                const cJSON *v = cJSON_GetObjectItem(imp, key);
                int slot = l * MODEL_PROBE_COUNT + w;
                const float *got = kind == 0 ? a[0].mean_abs[slot] : a[0].importance[kind - 1][slot];
                const float *got2 = kind == 0 ? a[1].mean_abs[slot] : a[1].importance[kind - 1][slot];
                if (!v || cJSON_GetArraySize(v) != a[0].width[w])
                    continue;
                compared++;
                for (int64_t c = 0; c < a[0].width[w]; c++) {
                    double e = cJSON_GetArrayItem(v, (int)c)->valuedouble;
                    double d = fabs(got[c] - e) / (kind == 0 ? fmax(fabs(e), 1e-30) : 1.0);
                    worst = d > worst ? d : worst;
                }
                same = same && memcmp(got, got2, (size_t)a[0].width[w] * sizeof(float)) == 0;
            }
        char d[160];
        snprintf(d, sizeof(d), "%s: all 9 vectors compared (2 layers x 4 inputs + lm_head)", keys[kind]);
        TEST_COND(d, compared == 9);
        printf("      largest %s difference from PyTorch: %.3g%s\n", keys[kind], worst,
               kind == 0 ? " (relative)" : "");
        snprintf(d, sizeof(d), "%s matches PyTorch within 1e-5%s", keys[kind], kind == 0 ? " relative" : "");
        TEST_COND(d, worst <= 1e-5);
        snprintf(d, sizeof(d), "%s: same bits with 1 and 2 threads", keys[kind]);
        TEST_COND(d, same);
    }

    void *blob = NULL;
    size_t blen = 0;
    struct calib_activations back;
    int rc = calib_activations_pack(&a[0], &blob, &blen);
    rc = rc ? rc : calib_activations_unpack(blob, blen, &back);
    bool same = rc == 0;
    for (int slot = 0; same && slot < (a[0].n_layer + 1) * MODEL_PROBE_COUNT; slot++)
        for (int k = 0; k < CALIB_NORM_COUNT && a[0].mean_abs[slot]; k++)
            same = memcmp(back.importance[k][slot], a[0].importance[k][slot],
                          (size_t)a[0].width[slot % MODEL_PROBE_COUNT] * sizeof(float)) == 0;
    TEST_COND("activations pack and unpack to the same importance bits", same);
    if (rc == 0)
        calib_activations_deinit(&back);
    TEST_COND("a truncated image is refused",
              blen > 8 && calib_activations_unpack(blob, blen - 4, &back) == LM_EFORMAT);
    free(blob);

    struct tn_info info;
    tn_classify("model.layers.1.mlp.down_proj.weight", &info);
    TEST_COND("down_proj takes the MLP activation vector",
              calib_activations_for(&a[0], "model.layers.1.mlp.down_proj.weight", &info, 128, CALIB_NORM_MINMAX) ==
              a[0].importance[CALIB_NORM_MINMAX][1 * MODEL_PROBE_COUNT + MODEL_PROBE_MLP_ACT]);
    tn_classify("model.layers.0.self_attn.k_proj.weight", &info);
    TEST_COND("k_proj takes the attention input vector (max normalisation)",
              calib_activations_for(&a[0], "model.layers.0.self_attn.k_proj.weight", &info, 64, CALIB_NORM_MAX) ==
              a[0].importance[CALIB_NORM_MAX][MODEL_PROBE_ATTN_IN]);
    tn_classify("model.layers.0.self_attn.k_proj.bias", &info);
    TEST_COND("biases, norms and embeddings take none",
              calib_activations_for(&a[0], "model.layers.0.self_attn.k_proj.bias", &info, 32, CALIB_NORM_MINMAX) == NULL);
    tn_classify("model.layers.0.self_attn.k_proj.weight", &info);
    TEST_COND("a width mismatch takes none",
              calib_activations_for(&a[0], "model.layers.0.self_attn.k_proj.weight", &info, 65, CALIB_NORM_MINMAX) == NULL);
    calib_activations_deinit(&a[0]);
    calib_activations_deinit(&a[1]);
}

static bool stop_at_second(double frac, const char *what, void *ud)
{
    (void)frac;
    int *calls = ud;
    (*calls)++;
    return strstr(what, "2/") == NULL;
}

static void test_cancel(const struct calib_tokens *tk)
{
    struct model_dir *d;
    struct model *m = open_golden("qwen2-bf16-tied", 1, &d);
    struct calib_activations a;
    int calls = 0;
    int rc = m ? calib_activations_compute(m, tk, stop_at_second, &calls, &a) : -1;
    TEST_COND("activations: a progress callback returning false cancels before sample 2",
              rc == LM_ECANCELED && calls == 2 && a.mean_abs == NULL);
    struct calib_sensitivity s;
    calls = 0;
    rc = m ? calib_sensitivity_compute(NULL, &m, 1, tk, stop_at_second, &calls, &s) : -1;
    TEST_COND("sensitivity: the same", rc == LM_ECANCELED && calls == 2 && s.layer == NULL);
    model_free(m);
    model_dir_close(d);
}

static void test_sensitivity(const cJSON *exp, const struct calib_tokens *tk)
{
    static const char *const names[2] = { "model-b", "model-c" };
    struct calib_sensitivity s[2];
    for (int th = 1; th <= 2; th++) {
        struct model_dir *d[3];
        struct model *m[3];
        m[0] = open_golden("qwen2-bf16-tied", th, &d[0]);
        m[1] = open_golden("calib/model-b", th, &d[1]);
        m[2] = open_golden("calib/model-c", th, &d[2]);
        int rc = m[0] && m[1] && m[2] ? calib_sensitivity_compute(m[0], m + 1, 2, tk, NULL, NULL, &s[th - 1]) : -1;
        TEST_COND(th == 1 ? "sensitivity pass runs (1 thread)" : "sensitivity pass runs (2 threads)", rc == 0);
        if (rc)
            printf("      %s\n", lm_last_error());
        for (int i = 0; i < 3; i++) {
            model_free(m[i]);
            model_dir_close(d[i]);
        }
        if (rc)
            return;
    }
    double worst = 0, worst_loss = 0, worst_align = 0;
    for (int i = 0; i < 2; i++) {
        const cJSON *v = cJSON_GetObjectItem(cJSON_GetObjectItem(exp, "sensitivity"), names[i]);
        for (int l = 0; l < s[0].n_layer; l++) {
            double e = cJSON_GetArrayItem(v, l)->valuedouble;
            double r = fabs(s[0].layer[i * s[0].n_layer + l] - e) / e;
            worst = r > worst ? r : worst;
        }
        double el = cJSON_GetObjectItem(cJSON_GetObjectItem(exp, "loss"), names[i])->valuedouble;
        worst_loss = fmax(worst_loss, fabs(s[0].loss[i] - el) / el);
        double ea = cJSON_GetObjectItem(cJSON_GetObjectItem(exp, "alignment"), names[i])->valuedouble;
        worst_align = fmax(worst_align, fabs(s[0].alignment[i] - ea));
    }
    printf("      layer sensitivity rel. diff %.3g, loss rel. diff %.3g, alignment diff %.3g\n",
           worst, worst_loss, worst_align);
    TEST_COND("layer sensitivities match PyTorch autograd within 1e-4 relative", worst <= 1e-4);
    TEST_COND("response losses match within 1e-5 relative", worst_loss <= 1e-5);
    TEST_COND("alignment scores match within 1e-5", worst_align <= 1e-5);
    TEST_COND("sensitivity: same bits with 1 and 2 threads",
              memcmp(s[0].layer, s[1].layer, 4 * sizeof(double)) == 0 &&
              memcmp(s[0].alignment, s[1].alignment, 2 * sizeof(double)) == 0);
    calib_sensitivity_deinit(&s[0]);
    calib_sensitivity_deinit(&s[1]);
}

/* ----- coefficients and methods ----- */

static void test_scale(void)
{
    double layer1[2] = { 3, 1 }, align1[1] = { 0 }, loss1[1] = { 0 };
    struct calib_sensitivity s = { .n_layer = 2, .n_models = 1, .layer = layer1,
                                   .alignment = align1, .loss = loss1 };
    double sc[2];
    calib_sens_scale(&s, 0, 0.4, 3.0, sc);
    TEST_NEAR("one model, layer 0: 2 softmax(0.4 u / 3), u = (1, 1/3)", sc[0], 1.0444152037162795, 1e-12);
    calib_sens_scale(&s, 1, 0.4, 3.0, sc);
    TEST_NEAR("one model, layer 1", sc[0], 0.9555847962837206, 1e-12);
    calib_sens_scale(&s, -1, 0.4, 3.0, sc);
    TEST_NEAR("outside the layers: 1", sc[0], 1.0, 0);
    calib_sens_scale(&s, 0, 0.0, 3.0, sc);
    TEST_NEAR("alpha 0: uniform", sc[0], 1.0, 1e-15);

    double layer2[4] = { 3, 1, 2, 2 }, align2[2] = { 0.9, 0.7 }, loss2[2] = { 0, 0 };
    struct calib_sensitivity s2 = { .n_layer = 2, .n_models = 2, .layer = layer2,
                                    .alignment = align2, .loss = loss2 };
    calib_sens_scale(&s2, 0, 0.4, 3.0, sc);
    TEST_NEAR("two models, layer 0, model 0: layer part x alignment part", sc[0], 1.079216155553392, 1e-12);
    TEST_NEAR("two models, layer 0, model 1: equal sensitivities, alignment part only", sc[1], 0.966679006861177, 1e-12);
    calib_sens_scale(&s2, 1, 0.4, 3.0, sc);
    TEST_NEAR("two models, layer 1, model 0", sc[0], 0.9874258307242538, 1e-12);
}

static void test_methods(void)
{
    /* 2 x 3 tensor, one model. */
    const float base[6] = { 1, 2, 3, 4, 5, 6 };
    const float model[6] = { 2, 4, 6, 0, 0, 0 };
    const float *models[1] = { model };
    const float imp[3] = { 1.0f, 0.5f, 0.0f };
    float out[6];
    struct merge_scratch sc = { 0 };
    struct merge_tensor_params p;
    merge_tensor_params_default(&p, 1);
    p.on = 0; /* task_arithmetic */
    p.omega = 0.4;
    struct merge_context ctx = { .channel_importance = imp };
    struct merge_tensor_job job = { .name = "t", .n = 6, .rows = 2, .cols = 3, .base = base,
                                    .models = models, .n_models = 1, .params = &p, .out = out,
                                    .scratch = &sc, .ctx = &ctx };
    int rc = merge_method_aim.merge_tensor(&job);
    /* keep = 1 - I (1 - omega) = 0.4, 0.7, 1 per column. */
    const float want[6] = { 1 + 0.4f * 1, 2 + 0.7f * 2, 3 + 3, 4 - 0.4f * 4, 5 - 0.7f * 5, 0 };
    bool ok = rc == 0;
    for (int i = 0; i < 6; i++)
        ok = ok && fabsf(out[i] - want[i]) <= 1e-6f;
    TEST_COND("aim: columns keep 1 - I (1 - omega) of the delta", ok);
    job.ctx = NULL;
    rc = merge_method_aim.merge_tensor(&job);
    TEST_COND("aim without importance (not a linear weight): the wrapped result",
              rc == 0 && out[0] == 2 && out[3] == 0 && out[5] == 0);
    p.omega = 1.0;
    job.ctx = &ctx;
    rc = merge_method_aim.merge_tensor(&job);
    TEST_COND("aim with omega 1: the wrapped result", rc == 0 && out[0] == 2 && out[4] == 0);

    /* sens: model_scale multiplies the task vector; with TIES normalize the
     * division by the weight must not undo it. */
    merge_tensor_params_default(&p, 1);
    p.on = 1; /* ties */
    p.normalize = true;
    p.weight[0] = 2.0;
    double scale[1] = { 0.5 };
    struct merge_context sctx = { .model_scale = scale };
    job.ctx = &sctx;
    rc = merge_method_sens.merge_tensor(&job);
    ok = rc == 0;
    for (int i = 0; i < 6; i++)
        ok = ok && fabsf(out[i] - (base[i] + 0.5f * (model[i] - base[i]))) <= 1e-6f;
    TEST_COND("sens on ties (normalize): b + 0.5 (x - b)", ok);
    job.ctx = NULL;
    rc = merge_method_sens.merge_tensor(&job);
    TEST_COND("sens without coefficients: the wrapped result (x)", rc == 0 && out[0] == 2 && out[5] == 0);
    merge_scratch_deinit(&sc);

    TEST_COND("aim and sens are registered, need calibration, wrap",
              merge_method_find("aim") == &merge_method_aim && merge_method_find("sens") == &merge_method_sens &&
              merge_method_aim.needs == MERGE_NEEDS_ACTIVATIONS &&
              merge_method_sens.needs == MERGE_NEEDS_SENSITIVITY && merge_method_aim.wraps);
    TEST_COND("aim accepts the wrapped method's density, not slerp's t",
              merge_method_accepts(&merge_method_aim, MERGE_PARAM_DENSITY) &&
              !merge_method_accepts(&merge_method_aim, MERGE_PARAM_T));
}

/* ----- plans: wrapping methods ----- */

static int plan_for(const char *method_and_params, struct merge_tensor_params *out)
{
    char text[1024];
    snprintf(text, sizeof(text),
             "{\"format\": \"mergescope-recipe/1\", \"base\": \"b\", "
             "\"models\": [{\"name\": \"m\", \"path\": \"m\"}], %s}", method_and_params);
    struct recipe *r = recipe_parse(text, strlen(text), "p.json", NULL);
    if (!r)
        return -1;
    struct merge_plan plan;
    int rc = merge_plan_init(&plan, r);
    if (rc == 0) {
        plan.n_layers = 4;
        struct tn_info info;
        tn_classify("model.layers.1.mlp.up_proj.weight", &info);
        merge_plan_resolve(&plan, "model.layers.1.mlp.up_proj.weight", &info, out);
    }
    recipe_free(r);
    return rc;
}

static void test_plans(void)
{
    struct merge_tensor_params p;
    int rc = plan_for("\"method\": \"aim\"", &p);
    TEST_COND("aim: on defaults to ties, with TIES's normalize and omega 0.4",
              rc == 0 && p.on == 1 && p.normalize && p.omega == 0.4 && p.importance == 0);
    rc = plan_for("\"method\": \"aim\", \"params\": {\"on\": \"task_arithmetic\", \"importance\": \"max\"}", &p);
    TEST_COND("aim on task_arithmetic: no normalize; importance max", rc == 0 && p.on == 0 && !p.normalize && p.importance == 1);
    rc = plan_for("\"method\": \"sens\", \"params\": {\"on\": \"ties\", \"density\": [0.2, 0.8]}", &p);
    TEST_COND("sens on ties: TIES's normalize, a density gradient at layer 1 of 4",
              rc == 0 && p.on == 1 && p.normalize && fabs(p.density[0] - 0.4) < 1e-12 &&
              p.alpha == 0.4 && p.temperature == 3.0);
    rc = plan_for("\"method\": \"lore\", \"params\": {\"mu\": 0.3, \"iterations\": 5}", &p);
    TEST_COND("lore: mu and iterations resolve", rc == 0 && p.mu == 0.3 && p.iterations == 5 && p.on == 0);
    rc = plan_for("\"method\": \"aim\", \"params\": {\"t\": 0.3}", &p);
    TEST_COND("aim refuses slerp's t, naming it", rc == LM_EFORMAT && strstr(lm_last_error(), "'t'"));
    rc = plan_for("\"method\": \"sens\", \"params\": {\"on\": \"slerp\"}", &p);
    TEST_COND("on must name a task-vector method", rc == LM_EFORMAT && strstr(lm_last_error(), "\"slerp\" is not a valid value for 'on'"));
    rc = plan_for("\"method\": \"twin\", \"params\": {\"energy\": 1.5}", &p);
    TEST_COND("energy above 1 is refused", rc == LM_EFORMAT && strstr(lm_last_error(), "energy"));
    TEST_COND("an editor offers density for aim on ties, not for aim on task_arithmetic",
              merge_method_uses(&merge_method_aim, 1, MERGE_PARAM_DENSITY) &&
              !merge_method_uses(&merge_method_aim, 0, MERGE_PARAM_DENSITY) &&
              merge_method_uses(&merge_method_aim, 0, MERGE_PARAM_OMEGA));
}

/* ----- workspace ----- */

static void test_workspace(void)
{
    char *a = golden_path("qwen2-bf16-tied"), *b = golden_path("calib/model-b");
    char *cal = tmp_file("w.jsonl", "{\"prompt\": \"hi\", \"response\": \"ok\"}\n"
                                    "{\"prompt\": \"abc\", \"response\": \"def ghi\"}\n");
    char text[8192];
    snprintf(text, sizeof(text),
             "{\"format\": \"mergescope-recipe/1\", \"base\": \"%s\", "
             "\"models\": [{\"name\": \"b\", \"path\": \"%s\", \"weight\": 1}], \"method\": \"aim\", "
             "\"params\": {\"density\": 0.5, \"omega\": 0.3}%s}", a, b,
             "");
    struct recipe *r = recipe_parse(text, strlen(text), "r.json", tmpdir);
    struct workspace *ws = r ? ws_open(r, ws_default_params()) : NULL;
    TEST_COND("aim recipe without calibration opens", ws != NULL);
    struct ws_params one = ws_default_params();
    int rc = ws ? ws_merge_all(ws, NULL, NULL) : 0;
    TEST_COND("merging it fails, saying how to add calibration",
              rc == LM_EFORMAT && strstr(lm_last_error(), "needs calibration data") &&
              strstr(lm_last_error(), "\"calibration\""));
    ws_free(ws);
    recipe_free(r);

    snprintf(text, sizeof(text),
             "{\"format\": \"mergescope-recipe/1\", \"base\": \"%s\", "
             "\"models\": [{\"name\": \"b\", \"path\": \"%s\", \"weight\": 1}], \"method\": \"aim\", "
             "\"params\": {\"density\": 0.5, \"omega\": 0.3}, "
             "\"calibration\": {\"file\": \"w.jsonl\", \"samples\": 2, \"max_tokens\": 256, \"chat\": \"chatml\"}}",
             a, b);
    r = recipe_parse(text, strlen(text), "r.json", tmpdir);
    TEST_COND("recipe with a calibration section parses", r && r->calibration.samples == 2 &&
              r->calibration.max_tokens == 256 && strcmp(r->calibration.chat, "chatml") == 0);
    char *json = r ? recipe_to_json(r) : NULL;
    struct recipe *r2 = json ? recipe_parse(json, strlen(json), "again", tmpdir) : NULL;
    TEST_COND("calibration survives a save and reload", r2 && recipe_equal(r, r2));
    recipe_free(r2);
    r2 = r ? recipe_clone(r) : NULL;
    TEST_COND("a clone keeps the sample and token limits", r2 && recipe_equal(r, r2) &&
              r2->calibration.samples == 2 && r2->calibration.max_tokens == 256);
    if (r2)
        r2->calibration.samples = 3;
    TEST_COND("recipes differing in calibration.samples are not equal", r2 && !recipe_equal(r, r2));
    recipe_free(r2);
    free(json);
    one.n_threads = 1;
    ws = r ? ws_open(r, one) : NULL;
    struct ws_calib_cost plan;
    rc = ws ? ws_calib_plan(ws, &plan) : -1;
    TEST_COND("plan: 2 samples, 1 base forward per sample, not cached",
              rc == 0 && plan.needed && plan.samples == 2 && plan.forward_passes == 1 &&
              plan.backward_passes == 0 && !plan.cached && plan.tokens > 0 && plan.flops > 0);
    rc = ws ? ws_merge_all(ws, NULL, NULL) : -1;
    TEST_COND("merge runs calibration first", rc == 0 && ws_calib_activations(ws) != NULL);
    rc = ws ? ws_calib_plan(ws, &plan) : -1;
    TEST_COND("plan afterwards: cached", rc == 0 && plan.cached);
    /* q_proj of layer 0 against TIES alone (same parameters) and the base
     * (task arithmetic with lambda 0): the aim delta is the TIES delta times
     * 1 - I (1 - 0.3), column by column. */
    long qi = ws ? ws_find_tensor(ws, "model.layers.0.self_attn.q_proj.weight") : -1;
    if (ws && qi >= 0) {
        const struct ws_tensor *t = ws_tensor(ws, (size_t)qi);
        size_t n = (size_t)t->n_elements;
        int64_t cols = t->shape[1];
        float *aim = malloc(n * sizeof(float)), *ties = malloc(n * sizeof(float)), *base = malloc(n * sizeof(float));
        struct ws_scratch s = { 0 };
        rc = ws_merge_tensor(ws, (size_t)qi, aim, &s);
        const float *I = calib_activations_for(ws_calib_activations(ws), t->name, &t->info, (uint64_t)cols,
                                               CALIB_NORM_MINMAX);
        struct merge_tensor_params p;
        ws_tensor_params(ws, (size_t)qi, &p);
        TEST_COND("aim resolves on = ties with TIES's normalize default", p.on == 1 && p.normalize);
        const char *alt[2] = { "\"method\": \"ties\", \"params\": {\"density\": 0.5}",
                               "\"method\": \"task_arithmetic\", \"params\": {\"lambda\": 0}" };
        float *dst[2] = { ties, base };
        for (int k = 0; k < 2; k++) {
            char t2[8192];
            snprintf(t2, sizeof(t2),
                     "{\"format\": \"mergescope-recipe/1\", \"base\": \"%s\", "
                     "\"models\": [{\"name\": \"b\", \"path\": \"%s\", \"weight\": 1}], %s}", a, b, alt[k]);
            struct recipe *ra = recipe_parse(t2, strlen(t2), "alt.json", tmpdir);
            struct workspace *wa = ra ? ws_open(ra, one) : NULL;
            if (!wa || ws_merge_tensor(wa, (size_t)qi, dst[k], &s) != 0)
                rc = -1;
            ws_free(wa);
            recipe_free(ra);
        }
        double worst = 0;
        int64_t n_full = 0, n_none = 0;
        for (size_t e = 0; rc == 0 && I && e < n; e++) {
            double keep = 1.0 - (double)I[e % (size_t)cols] * 0.7;
            double want = (double)base[e] + ((double)ties[e] - (double)base[e]) * keep;
            worst = fmax(worst, fabs((double)aim[e] - want));
        }
        for (int64_t c = 0; I && c < cols; c++) {
            n_full += I[c] == 1.0f;
            n_none += I[c] == 0.0f;
        }
        TEST_COND("q_proj: importance has a 1 and a 0 (min-max)", I && n_full >= 1 && n_none >= 1);
        printf("      largest difference from base + (ties - base)(1 - 0.7 I): %.3g\n", worst);
        TEST_COND("q_proj: aim = base + (ties - base)(1 - I (1 - omega)), column-wise", rc == 0 && I && worst <= 1e-6);
        ws_scratch_deinit(&s);
        free(aim);
        free(ties);
        free(base);
    }
    ws_free(ws);
    recipe_free(r);

    /* sens: the Layers screen shows each layer's factor beside the weight. */
    snprintf(text, sizeof(text),
             "{\"format\": \"mergescope-recipe/1\", \"base\": \"%s\", "
             "\"models\": [{\"name\": \"b\", \"path\": \"%s\", \"weight\": 0.5}], \"method\": \"sens\", "
             "\"params\": {\"alpha\": 2}, "
             "\"calibration\": {\"file\": \"w.jsonl\", \"max_tokens\": 256, \"chat\": \"chatml\"}}", a, b);
    r = recipe_parse(text, strlen(text), "s.json", tmpdir);
    ws = r ? ws_open(r, one) : NULL;
    rc = ws ? ws_calibrate(ws, NULL, NULL) : -1;
    const struct calib_sensitivity *sd = rc == 0 ? ws_calib_sensitivity(ws) : NULL;
    TEST_COND("sens workspace calibrates (one model, no alignment pass)", sd && sd->n_models == 1 && sd->n_layer == 2);
    struct layer_table lt = { 0 };
    if (sd && lt_fill(&lt, ws, 0, 0, "weight(b)", "weight", 0, TN_GROUP_COUNT) == 0) {
        double sc[1];
        calib_sens_scale(sd, 1, 2.0, 3.0, sc);
        char want[32];
        snprintf(want, sizeof(want), "0.5 x%.3g", sc[0]);
        const char *got = NULL;
        for (size_t k = 0; k < lt.n_rows; k++)
            if (lt.rows[k].layer == 1)
                got = lt.rows[k].coef_text;
        TEST_COND("Layers screen: layer 1 reads \"weight x factor\"", got && strcmp(got, want) == 0);
        if (got && strcmp(got, want) != 0)
            printf("      got '%s', expected '%s'\n", got, want);
    } else {
        TEST_COND("Layers screen: layer 1 reads \"weight x factor\"", false);
    }
    lt_free(&lt);
    ws_free(ws);
    recipe_free(r);
    free(a);
    free(b);
    free(cal);
}

int main(void)
{
    setenv("MERGESCOPE_CACHE_DIR", "off", 1); /* measure, never read stored results */
    src_dir = getenv("MS_SOURCE_DIR");
    if (!src_dir)
        src_dir = ".";
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    test_file();
    test_tokenize();
    cJSON *exp = load_expected();
    TEST_COND("calibration goldens load", exp != NULL);
    if (exp) {
        struct calib_tokens tk;
        golden_tokens(exp, &tk);
        test_activations(exp, &tk);
        test_sensitivity(exp, &tk);
        test_cancel(&tk);
        calib_tokens_deinit(&tk);
        cJSON_Delete(exp);
    }
    test_scale();
    test_methods();
    test_plans();
    test_workspace();
    char cmd[64];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
    if (system(cmd) != 0)
        printf("note: could not remove %s\n", tmpdir);
    return test_report();
}
