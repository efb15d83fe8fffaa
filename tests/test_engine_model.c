/* The engine against goldens made by tests/golden/make_goldens.py (an
 * independent PyTorch implementation of the HF models):
 *   - prefill logits of each golden model within 1e-4 x max |logit| of the
 *     reference at every position (batched-product path), on each kernel
 *     path the CPU has (AVX-512, AVX2, portable);
 *   - decoding one token at a time through the KV cache gives the same
 *     logits (matvec path), and so do short batches (n_batch 3);
 *   - the thread count (both paths) and serving the weights as float32
 *     buffers in memory change no bits;
 *   - greedy generation matches the reference token for token, the chat
 *     prompt of the tokenizer-carrying model encodes to the reference ids
 *     and its streamed text is valid UTF-8;
 *   - cancellation, max-tokens and context-full stops;
 *   - bad input: missing tensors, wrong shapes, unsupported architecture,
 *     RoPE type and dtype, untied model without lm_head, token ids out of
 *     range, positions past max_position_embeddings, a directory without
 *     config.json — each an error naming the cause;
 *   - chat formats: exact prompt text of each format and detection from
 *     templates. */
#include "model.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat.h"
#include "convert.h"
#include "fsutil.h"
#include "generate.h"
#include "kernels.h"
#include "lm_error.h"
#include "test.h"
#include "tokenizer.h"

static const char *golden_names[] = { "qwen2-bf16-tied", "llama-f32-untied", "qwen3-f16-tied" };

struct golden {
    char *dir;
    cJSON *json;
    int32_t *prefill;
    int n_prefill;
    float *logits;      /* n_prefill x n_vocab */
    int64_t n_vocab;
};

static char *golden_dir(const char *name)
{
    const char *src = getenv("MS_SOURCE_DIR");
    char *tests = lm_asprintf("%s/tests/golden", src ? src : ".");
    char *dir = lm_path_join(tests, name);
    free(tests);
    return dir;
}

/* A JSON array of ints as a heap array. */
static int32_t *int_array(const cJSON *json, const char *key, int *n)
{
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(json, key);
    *n = cJSON_GetArraySize(a);
    int32_t *v = calloc((size_t)*n + 1, sizeof(int32_t));
    for (int i = 0; i < *n; i++)
        v[i] = (int32_t)cJSON_GetArrayItem(a, i)->valuedouble;
    return v;
}

static int golden_load(const char *name, struct golden *g)
{
    memset(g, 0, sizeof(*g));
    g->dir = golden_dir(name);
    char *jpath = lm_path_join(g->dir, "golden.json"), *lpath = lm_path_join(g->dir, "prefill_logits.f32");
    size_t len;
    char *text = lm_read_file(jpath, 1 << 20, &len);
    char *raw = lm_read_file(lpath, 64 << 20, &len);
    free(jpath);
    free(lpath);
    if (!text || !raw) {
        free(text);
        free(raw);
        return -1;
    }
    g->json = cJSON_Parse(text);
    free(text);
    g->prefill = int_array(g->json, "prefill_ids", &g->n_prefill);
    g->n_vocab = (int64_t)cJSON_GetObjectItemCaseSensitive(g->json, "n_vocab")->valuedouble;
    if (len != (size_t)g->n_prefill * (size_t)g->n_vocab * sizeof(float)) {
        free(raw);
        return -1;
    }
    g->logits = (float *)(void *)raw;   /* little-endian float32, as on this host */
    return 0;
}

static void golden_free(struct golden *g)
{
    free(g->dir);
    cJSON_Delete(g->json);
    free(g->prefill);
    free(g->logits);
}

/* The worst ratio over rows of max |got - want| / max |want| (per row). */
static double worst_rel(const float *got, const float *want, int n_rows, int64_t n_vocab, int *worst_row)
{
    double worst = 0.0;
    *worst_row = 0;
    for (int r = 0; r < n_rows; r++) {
        double d = 0.0, mx = 0.0;
        for (int64_t i = 0; i < n_vocab; i++) {
            double a = got[(int64_t)r * n_vocab + i], b = want[(int64_t)r * n_vocab + i];
            if (!(fabs(a - b) <= d))
                d = fabs(a - b);
            if (fabs(b) > mx)
                mx = fabs(b);
        }
        if (!(d / mx <= worst)) {
            worst = d / mx;
            *worst_row = r;
        }
    }
    return worst;
}

static struct model *load(struct model_dir *d, int n_threads, int64_t n_batch)
{
    struct model_params p = model_default_params();
    p.n_threads = n_threads;
    p.n_batch = n_batch;
    struct model_source src = model_dir_source(d);
    return model_load(model_dir_config(d), &src, p);
}

/* ===== A source of float32 copies held in memory (like merged buffers) ===== */

struct mem_source {
    struct model_source inner;
    float *copies[256];
    int n;
};

static int mem_get(void *ud, const char *name, struct model_tensor_view *out)
{
    struct mem_source *ms = ud;
    int rc = ms->inner.get(ms->inner.ud, name, out);
    if (rc != 0 || ms->n == 256)
        return rc;
    size_t n = 1;
    for (int i = 0; i < out->ndim; i++)
        n *= (size_t)out->shape[i];
    float *f = malloc(n * sizeof(float) + 1);
    lm_convert_to_f32(f, out->data, out->dtype, n);
    ms->copies[ms->n++] = f;
    out->dtype = LM_DTYPE_F32;
    out->data = f;
    return 0;
}

/* ===== A source that hides, reshapes or retypes one tensor ===== */

struct bad_source {
    struct model_source inner;
    const char *hide, *reshape, *retype;
};

static int bad_get(void *ud, const char *name, struct model_tensor_view *out)
{
    struct bad_source *b = ud;
    if (b->hide && strcmp(name, b->hide) == 0)
        return MODEL_SOURCE_ABSENT;
    int rc = b->inner.get(b->inner.ud, name, out);
    if (rc == 0 && b->reshape && strcmp(name, b->reshape) == 0)
        out->shape[0] += 1;
    if (rc == 0 && b->retype && strcmp(name, b->retype) == 0)
        out->dtype = LM_DTYPE_I32;
    return rc;
}

static int bad_load(struct model_dir *d, const char *hide, const char *reshape, const char *retype)
{
    struct bad_source b = { model_dir_source(d), hide, reshape, retype };
    struct model_source src = { bad_get, &b, model_dir_path(d) };
    lm_clear_error();
    struct model *m = model_load(model_dir_config(d), &src, model_default_params());
    model_free(m);
    return m ? 0 : -1;
}

/* ===== Generation helpers ===== */

struct collect {
    int32_t ids[256];
    int n;
    int cancel_after;      /* > 0: return false once this many tokens came */
    char text[4096];
    size_t text_len;
    int prefill_events;
};

static bool collect_cb(const struct gen_event *ev, void *ud)
{
    struct collect *c = ud;
    if (ev->kind == GEN_EVENT_PREFILL) {
        c->prefill_events++;
        return true;
    }
    if (ev->len && c->text_len + ev->len < sizeof c->text) {
        memcpy(c->text + c->text_len, ev->text, ev->len);
        c->text_len += ev->len;
    }
    if (ev->kind == GEN_EVENT_TOKEN && c->n < 256)
        c->ids[c->n++] = ev->token;
    return !(c->cancel_after > 0 && c->n >= c->cancel_after);
}

static bool valid_utf8(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t k = c < 0x80 ? 0 : (c >> 5) == 6 ? 1 : (c >> 4) == 14 ? 2 : (c >> 3) == 30 ? 3 : 9;
        if (k == 9 || i + k >= n + (k ? 0 : 1))
            return false;
        for (size_t j = 1; j <= k; j++)
            if ((s[i + j] & 0xc0) != 0x80)
                return false;
        i += k + 1;
    }
    return true;
}

/* ===== Per-model checks ===== */

static void check_golden(const char *name)
{
    char descr[512];
    struct golden g;
    if (golden_load(name, &g) < 0) {
        snprintf(descr, sizeof descr, "%s: golden files are readable", name);
        TEST_COND(descr, 0);
        golden_free(&g);
        return;
    }
    struct model_dir *d = model_dir_open(g.dir);
    snprintf(descr, sizeof descr, "%s: model directory opens (%s)", name, d ? "ok" : lm_last_error());
    TEST_COND(descr, d != NULL);
    if (!d) {
        golden_free(&g);
        return;
    }
    struct model *m = load(d, 2, 0);
    snprintf(descr, sizeof descr, "%s: model loads (%s)", name, m ? "ok" : lm_last_error());
    TEST_COND(descr, m != NULL);
    if (!m) {
        model_dir_close(d);
        golden_free(&g);
        return;
    }
    const struct model_info *info = model_get_info(m);
    bool want_tied = strstr(name, "untied") == NULL;
    snprintf(descr, sizeof descr, "%s: vocab %lld, tied %d as the config says", name,
             (long long)info->n_vocab, (int)info->tied);
    TEST_COND(descr, info->n_vocab == g.n_vocab && info->tied == want_tied);

    size_t n_logits = (size_t)g.n_prefill * (size_t)g.n_vocab;
    float *logits = malloc(n_logits * sizeof(float));
    float *row = malloc((size_t)g.n_vocab * sizeof(float));
    int wr = 0;

    /* Prefill (one batch: batched-product path). */
    int rc = model_forward(m, g.prefill, g.n_prefill, logits, MODEL_LOGITS_ALL);
    double w = rc ? 1.0 : worst_rel(logits, g.logits, g.n_prefill, g.n_vocab, &wr);
    snprintf(descr, sizeof descr, "%s: prefill logits of %d positions within 1e-4 x max|logit| "
             "(worst %.2e at position %d)", name, g.n_prefill, w, wr);
    TEST_COND(descr, rc == 0 && w <= 1e-4);
    TEST_COND("the cache holds the prompt afterwards", model_n_past(m) == g.n_prefill);

    /* Decoding one token at a time through the KV cache. */
    model_reset(m);
    rc = 0;
    for (int t = 0; t < g.n_prefill && rc == 0; t++)
        rc = model_forward(m, g.prefill + t, 1, logits + (size_t)t * (size_t)g.n_vocab, MODEL_LOGITS_LAST);
    w = rc ? 1.0 : worst_rel(logits, g.logits, g.n_prefill, g.n_vocab, &wr);
    snprintf(descr, sizeof descr, "%s: token-by-token decode matches the prefill reference "
             "(worst %.2e at position %d)", name, w, wr);
    TEST_COND(descr, rc == 0 && w <= 1e-4);

    /* Truncating the cache and running the tail again gives the same last row. */
    rc = model_truncate(m, g.n_prefill - 4);
    if (rc == 0)
        rc = model_forward(m, g.prefill + g.n_prefill - 4, 4, row, MODEL_LOGITS_LAST);
    w = rc ? 1.0 : worst_rel(row, g.logits + (size_t)(g.n_prefill - 1) * (size_t)g.n_vocab, 1, g.n_vocab, &wr);
    snprintf(descr, sizeof descr, "%s: truncate + re-run of the last 4 tokens (%.2e)", name, w);
    TEST_COND(descr, rc == 0 && w <= 1e-4);

    /* Short batches (n_batch 3: the multi-token matvec path) and 1 thread
     * vs 3 threads (bitwise). */
    struct model *m3 = load(d, 3, 3), *m1 = load(d, 1, 3);
    float *l3 = malloc(n_logits * sizeof(float)), *l1 = malloc(n_logits * sizeof(float));
    rc = m3 && m1 ? model_forward(m3, g.prefill, g.n_prefill, l3, MODEL_LOGITS_ALL) : -1;
    if (rc == 0)
        rc = model_forward(m1, g.prefill, g.n_prefill, l1, MODEL_LOGITS_ALL);
    w = rc ? 1.0 : worst_rel(l3, g.logits, g.n_prefill, g.n_vocab, &wr);
    snprintf(descr, sizeof descr, "%s: batches of 3 tokens match the reference (worst %.2e)", name, w);
    TEST_COND(descr, rc == 0 && w <= 1e-4);
    snprintf(descr, sizeof descr, "%s: 1 and 3 threads give identical bits", name);
    TEST_COND(descr, rc == 0 && memcmp(l1, l3, n_logits * sizeof(float)) == 0);
    model_free(m3);
    model_free(m1);

    /* The batched-product path (one batch) with 1 and 3 threads: identical bits too. */
    m3 = load(d, 3, 0);
    m1 = load(d, 1, 0);
    rc = m3 && m1 ? model_forward(m3, g.prefill, g.n_prefill, l3, MODEL_LOGITS_ALL) : -1;
    if (rc == 0)
        rc = model_forward(m1, g.prefill, g.n_prefill, l1, MODEL_LOGITS_ALL);
    snprintf(descr, sizeof descr, "%s: batched prefill with 1 and 3 threads gives identical bits", name);
    TEST_COND(descr, rc == 0 && memcmp(l1, l3, n_logits * sizeof(float)) == 0);
    model_free(m3);
    model_free(m1);

    /* The weights as float32 buffers in memory (what a merge produces). */
    struct mem_source ms = { model_dir_source(d), { 0 }, 0 };
    struct model_source msrc = { mem_get, &ms, "memory" };
    struct model_params mp = model_default_params();
    mp.n_threads = 2;
    struct model *mm = model_load(model_dir_config(d), &msrc, mp);
    model_reset(m);
    rc = mm ? model_forward(mm, g.prefill, g.n_prefill, l3, MODEL_LOGITS_ALL) : -1;
    if (rc == 0)
        rc = model_forward(m, g.prefill, g.n_prefill, logits, MODEL_LOGITS_ALL);
    snprintf(descr, sizeof descr, "%s: float32 buffers in memory give the same bits as the files", name);
    TEST_COND(descr, rc == 0 && memcmp(l3, logits, n_logits * sizeof(float)) == 0);
    model_free(mm);
    for (int i = 0; i < ms.n; i++)
        free(ms.copies[i]);
    free(l3);
    free(l1);

    /* Greedy generation. */
    int n_prompt, n_cont;
    int32_t *prompt = int_array(g.json, "greedy_prompt", &n_prompt);
    int32_t *cont = int_array(g.json, "greedy_continuation", &n_cont);
    struct gen_params gp = gen_default_params();
    gp.max_new_tokens = n_cont;
    struct collect c = { .n = 0 };
    struct gen_result res;
    rc = gen_run(m, NULL, prompt, (size_t)n_prompt, &gp, collect_cb, &c, &res);
    snprintf(descr, sizeof descr, "%s: greedy decode of %d tokens matches the reference token for token",
             name, n_cont);
    TEST_COND(descr, rc == 0 && c.n == n_cont && memcmp(c.ids, cont, (size_t)n_cont * sizeof(int32_t)) == 0);
    snprintf(descr, sizeof descr, "%s: it stops at max tokens with %lld generated, %lld decoded", name,
             (long long)res.n_generated, (long long)res.n_decoded);
    TEST_COND(descr, res.stop == GEN_STOP_MAX_TOKENS && res.n_generated == n_cont &&
              res.n_decoded == n_cont - 1 && res.n_prompt == n_prompt && c.prefill_events >= 1);

    /* A stop id ends generation without streaming it. */
    int32_t stop = cont[5];
    int first = 0;
    while (cont[first] != stop)
        first++;
    gp.stop_ids = &stop;
    gp.n_stop_ids = 1;
    struct collect c2 = { .n = 0 };
    rc = gen_run(m, NULL, prompt, (size_t)n_prompt, &gp, collect_cb, &c2, &res);
    snprintf(descr, sizeof descr, "%s: stop id %d ends generation after %d tokens", name, (int)stop, first);
    TEST_COND(descr, rc == 0 && res.stop == GEN_STOP_EOS && res.stop_token == stop && c2.n == first &&
              res.n_generated == first + 1);
    gp.stop_ids = NULL;
    gp.n_stop_ids = 0;

    /* Cancellation from the callback. */
    struct collect c3 = { .n = 0, .cancel_after = 3 };
    rc = gen_run(m, NULL, prompt, (size_t)n_prompt, &gp, collect_cb, &c3, &res);
    snprintf(descr, sizeof descr, "%s: the callback cancels after 3 tokens", name);
    TEST_COND(descr, rc == 0 && res.stop == GEN_STOP_CANCELLED && c3.n == 3 && res.n_generated == 3);

    /* Bad token ids. */
    int32_t bad_ids[2] = { 0, (int32_t)g.n_vocab };
    model_reset(m);
    rc = model_forward(m, bad_ids, 2, row, MODEL_LOGITS_LAST);
    snprintf(descr, sizeof descr, "%s: token id %lld is rejected (%s)", name, (long long)g.n_vocab, lm_last_error());
    TEST_COND(descr, rc == LM_EINVAL && strstr(lm_last_error(), "outside the vocabulary") && model_n_past(m) == 0);

    free(prompt);
    free(cont);
    free(logits);
    free(row);
    model_free(m);
    model_dir_close(d);
    golden_free(&g);
}

/* ===== The tokenizer-carrying model: chat prompt and streamed text ===== */

static void check_chat_golden(void)
{
    char descr[512];
    struct golden g;
    if (golden_load("qwen2-bf16-tied", &g) < 0) {
        TEST_COND("qwen2 golden is readable", 0);
        golden_free(&g);
        return;
    }
    struct chat_detected det;
    int rc = chat_detect_dir(g.dir, &det);
    snprintf(descr, sizeof descr, "auto-detects chatml from tokenizer_config.json (%s)", det.reason);
    TEST_COND(descr, rc == 0 && det.format == CHAT_FORMAT_CHATML && det.default_system &&
              strcmp(det.default_system, "You are a tiny test model.") == 0);

    struct tok *t = tok_load(g.dir);
    snprintf(descr, sizeof descr, "the golden tokenizer loads (%s)", t ? "ok" : lm_last_error());
    TEST_COND(descr, t != NULL);
    struct model_dir *d = model_dir_open(g.dir);
    struct model *m = d ? load(d, 2, 0) : NULL;
    if (!t || !m) {
        tok_free(t);
        model_free(m);
        model_dir_close(d);
        chat_detected_deinit(&det);
        golden_free(&g);
        return;
    }
    const char *user = cJSON_GetObjectItemCaseSensitive(g.json, "chat_user")->valuestring;
    int n_want, n_cont;
    int32_t *want = int_array(g.json, "chat_prompt_ids", &n_want);
    int32_t *cont = int_array(g.json, "chat_continuation", &n_cont);
    struct tok_ids ids = { 0 };
    rc = chat_encode(t, CHAT_FORMAT_CHATML, chat_default_system(CHAT_FORMAT_CHATML, &det), user, &ids);
    TEST_COND("chat_encode (chatml, the template's default system) gives the reference ids",
              rc == 0 && ids.n == (size_t)n_want && memcmp(ids.data, want, ids.n * sizeof(int32_t)) == 0);

    struct tok_ids stops = { 0 };
    chat_stop_ids(t, CHAT_FORMAT_CHATML, model_dir_config(d), &stops);
    TEST_COND("stop ids include <|im_end|> and <|endoftext|>", stops.n >= 2 &&
              (stops.data[0] == 258 || stops.data[1] == 258));
    struct gen_params gp = gen_default_params();
    gp.max_new_tokens = 12;
    gp.stop_ids = stops.data;
    gp.n_stop_ids = stops.n;
    struct collect c = { .n = 0 };
    struct gen_result res;
    rc = gen_run(m, t, ids.data, ids.n, &gp, collect_cb, &c, &res);
    bool stopped_early = n_cont < 12;
    int n_streamed = stopped_early ? n_cont - 1 : n_cont;
    snprintf(descr, sizeof descr, "chat greedy continuation matches the reference (%d tokens)", n_cont);
    TEST_COND(descr, rc == 0 && c.n == n_streamed && memcmp(c.ids, cont, (size_t)n_streamed * sizeof(int32_t)) == 0);

    /* The streamed text: valid UTF-8, and its ASCII characters are those of
     * the tokens' bytes (the others are whole characters or U+FFFD). */
    char *raw = NULL;
    size_t raw_len = 0;
    int32_t known[256];
    int n_known = 0;
    for (int i = 0; i < c.n; i++)
        if (tok_id_to_token(t, c.ids[i]))
            known[n_known++] = c.ids[i];
    rc = tok_decode(t, known, (size_t)n_known, true, &raw, &raw_len);
    char a1[4096], a2[4096];
    size_t n1 = 0, n2 = 0;
    for (size_t i = 0; i < c.text_len; i++)
        if ((unsigned char)c.text[i] < 0x80)
            a1[n1++] = c.text[i];
    for (size_t i = 0; rc == 0 && i < raw_len; i++)
        if ((unsigned char)raw[i] < 0x80)
            a2[n2++] = raw[i];
    snprintf(descr, sizeof descr, "streamed text (%zu bytes) is valid UTF-8 with the tokens' ASCII", c.text_len);
    TEST_COND(descr, rc == 0 && valid_utf8((const unsigned char *)c.text, c.text_len) && n1 == n2 &&
              memcmp(a1, a2, n1) == 0);
    free(raw);

    /* The none format: plain text, no BOS for this tokenizer. */
    struct tok_ids plain = { 0 };
    rc = chat_encode(t, CHAT_FORMAT_NONE, "ignored", "<|im_end|>Hi", &plain);
    TEST_COND("chat format none encodes special-token text as plain bytes",
              rc == 0 && plain.n == 12 && plain.data[0] == '<' && plain.data[11] == 'i');
    tok_ids_free(&plain);

    tok_ids_free(&stops);
    tok_ids_free(&ids);
    free(want);
    free(cont);
    model_free(m);
    model_dir_close(d);
    tok_free(t);
    chat_detected_deinit(&det);
    golden_free(&g);
}

/* ===== Errors ===== */

static void check_errors(void)
{
    char descr[320];
    char *qdir = golden_dir("qwen3-f16-tied"), *ldir = golden_dir("llama-f32-untied");
    struct model_dir *q = model_dir_open(qdir), *l = model_dir_open(ldir);
    free(qdir);
    free(ldir);
    if (!q || !l) {
        TEST_COND("golden models open for the error checks", 0);
        model_dir_close(q);
        model_dir_close(l);
        return;
    }

    int rc = bad_load(q, "model.layers.1.mlp.up_proj.weight", NULL, NULL);
    snprintf(descr, sizeof descr, "a missing tensor is named: %s", lm_last_error());
    TEST_COND(descr, rc < 0 && strstr(lm_last_error(), "'model.layers.1.mlp.up_proj.weight' is missing"));

    rc = bad_load(q, NULL, "model.layers.0.self_attn.k_proj.weight", NULL);
    snprintf(descr, sizeof descr, "a wrong shape names tensor and shapes: %s", lm_last_error());
    TEST_COND(descr, rc < 0 && strstr(lm_last_error(), "k_proj.weight") &&
              strstr(lm_last_error(), "[65, 64], expected [64, 64]"));

    rc = bad_load(q, "model.layers.0.self_attn.q_norm.weight", NULL, NULL);
    snprintf(descr, sizeof descr, "qwen3 needs q_norm: %s", lm_last_error());
    TEST_COND(descr, rc < 0 && strstr(lm_last_error(), "q_norm"));

    rc = bad_load(q, "model.layers.1.self_attn.o_proj.bias", NULL, NULL);
    snprintf(descr, sizeof descr, "attention_bias true needs o_proj.bias: %s", lm_last_error());
    TEST_COND(descr, rc < 0 && strstr(lm_last_error(), "o_proj.bias"));

    rc = bad_load(q, NULL, NULL, "model.norm.weight");
    snprintf(descr, sizeof descr, "an integer dtype is unsupported: %s", lm_last_error());
    TEST_COND(descr, rc < 0 && strstr(lm_last_error(), "I32"));

    rc = bad_load(l, "lm_head.weight", NULL, NULL);
    snprintf(descr, sizeof descr, "untied without lm_head: %s", lm_last_error());
    TEST_COND(descr, rc < 0 && strstr(lm_last_error(), "lm_head.weight") &&
              strstr(lm_last_error(), "tie_word_embeddings"));

    /* Config problems, on a copy of the config (strings borrowed). */
    struct model_source src = model_dir_source(q);
    struct hf_config c = *model_dir_config(q);
    c.arch = HF_ARCH_UNKNOWN;
    c.model_type = "mistral";
    lm_clear_error();
    struct model *m = model_load(&c, &src, model_default_params());
    snprintf(descr, sizeof descr, "an unknown architecture is unsupported: %s", lm_last_error());
    TEST_COND(descr, !m && strstr(lm_last_error(), "'mistral'"));
    model_free(m);

    c = *model_dir_config(q);
    c.rope_scaling_type = "yarn";
    m = model_load(&c, &src, model_default_params());
    snprintf(descr, sizeof descr, "an unsupported rope_scaling type: %s", lm_last_error());
    TEST_COND(descr, !m && strstr(lm_last_error(), "'yarn'"));
    model_free(m);

    c = *model_dir_config(q);
    c.num_key_value_heads = 3;
    m = model_load(&c, &src, model_default_params());
    snprintf(descr, sizeof descr, "inconsistent head counts: %s", lm_last_error());
    TEST_COND(descr, !m && strstr(lm_last_error(), "num_key_value_heads 3"));
    model_free(m);

    c = *model_dir_config(q);
    c.hidden_size = 0;
    m = model_load(&c, &src, model_default_params());
    snprintf(descr, sizeof descr, "a missing size: %s", lm_last_error());
    TEST_COND(descr, !m && strstr(lm_last_error(), "hidden_size"));
    model_free(m);

    /* Context: qwen3's max_position_embeddings is 64. */
    m = model_load(model_dir_config(q), &src, model_default_params());
    int32_t ids[70];
    for (int i = 0; i < 70; i++)
        ids[i] = (i * 37) % 256;
    float *logits = malloc(256 * sizeof(float));
    rc = m ? model_forward(m, ids, 65, logits, MODEL_LOGITS_LAST) : -1;
    snprintf(descr, sizeof descr, "65 positions pass max_position_embeddings 64: %s", lm_last_error());
    TEST_COND(descr, rc == LM_EINVAL && strstr(lm_last_error(), "context of 64") && model_n_past(m) == 0);
    rc = m ? model_forward(m, ids, 64, logits, MODEL_LOGITS_LAST) : -1;
    TEST_COND("64 positions fit", rc == 0 && model_n_past(m) == 64);
    rc = m ? model_forward(m, ids, 1, logits, MODEL_LOGITS_LAST) : -1;
    TEST_COND("one more does not", rc == LM_EINVAL);

    struct gen_params gp = gen_default_params();
    gp.max_new_tokens = 0;
    struct gen_result res;
    rc = m ? gen_run(m, NULL, ids, 65, &gp, NULL, NULL, &res) : -1;
    snprintf(descr, sizeof descr, "a 65-token prompt is refused by gen_run: %s", lm_last_error());
    TEST_COND(descr, rc == LM_EINVAL && strstr(lm_last_error(), "65 tokens"));
    rc = m ? gen_run(m, NULL, ids, 60, &gp, NULL, NULL, &res) : -1;
    snprintf(descr, sizeof descr, "generation stops when the context is full (%lld generated, %s)",
             (long long)res.n_generated, gen_stop_name(res.stop));
    TEST_COND(descr, rc == 0 && res.stop == GEN_STOP_CONTEXT && res.n_generated == 5 && model_n_past(m) == 64);
    rc = m ? gen_run(m, NULL, ids, 0, &gp, NULL, NULL, &res) : -1;
    TEST_COND("an empty prompt is refused", rc == LM_EINVAL);
    free(logits);
    model_free(m);

    /* A directory without config.json. */
    char *gdir = golden_dir("");
    struct model_dir *none = model_dir_open(gdir);
    snprintf(descr, sizeof descr, "a directory without config.json: %s", lm_last_error());
    TEST_COND(descr, !none && strstr(lm_last_error(), "no config.json"));
    free(gdir);
    model_dir_close(q);
    model_dir_close(l);
}

/* ===== Chat formats ===== */

static void check_chat_formats(void)
{
    char *s = chat_format_prompt(CHAT_FORMAT_CHATML, CHAT_QWEN25_DEFAULT_SYSTEM, "What is 2+2?", NULL);
    TEST_COND("chatml prompt text", s && strcmp(s,
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n") == 0);
    free(s);
    s = chat_format_prompt(CHAT_FORMAT_CHATML, NULL, "Hi", NULL);
    TEST_COND("chatml without a system prompt", s && strcmp(s,
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n") == 0);
    free(s);
    s = chat_format_prompt(CHAT_FORMAT_DEEPSEEK_R1, NULL, "What is 2+2?", NULL);
    TEST_COND("deepseek-r1 prompt text", s && strcmp(s,
        "<｜begin▁of▁sentence｜><｜User｜>What is 2+2?<｜Assistant｜><think>\n") == 0);
    free(s);
    s = chat_format_prompt(CHAT_FORMAT_DEEPSEEK_R1, "Be brief.", "Q", "<s>");
    TEST_COND("deepseek-r1 with a system prompt and a given BOS", s && strcmp(s,
        "<s>Be brief.<｜User｜>Q<｜Assistant｜><think>\n") == 0);
    free(s);
    s = chat_format_prompt(CHAT_FORMAT_LLAMA3, NULL, "  What is 2+2?\n", NULL);
    TEST_COND("llama3 prompt text (user message trimmed)", s && strcmp(s,
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n") == 0);
    free(s);
    s = chat_format_prompt(CHAT_FORMAT_LLAMA3, "Sys", "U", NULL);
    TEST_COND("llama3 with a system prompt", s && strcmp(s,
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nSys<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nU<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n") == 0);
    free(s);
    s = chat_format_prompt(CHAT_FORMAT_NONE, "Sys", "plain", NULL);
    TEST_COND("none is the text itself", s && strcmp(s, "plain") == 0);
    free(s);

    enum chat_format f;
    bool is_auto;
    TEST_COND("'deepseek-r1' parses", chat_format_parse("deepseek-r1", &f, &is_auto) == 0 &&
              f == CHAT_FORMAT_DEEPSEEK_R1 && !is_auto);
    TEST_COND("'auto' parses as auto", chat_format_parse("auto", &f, &is_auto) == 0 && is_auto);
    TEST_COND("'vicuna' is rejected", chat_format_parse("vicuna", &f, &is_auto) == LM_EINVAL);

    /* Templates as found in the models' tokenizer_config.json (excerpts). */
    static const char qwen25[] =
        "{%- else %}\n    {%- if messages[0]['role'] == 'system' %}\n"
        "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
        "    {%- else %}\n        {{- '<|im_start|>system\\nPlease reason step by step, and put your "
        "final answer within \\\\boxed{}.<|im_end|>\\n' }}\n    {%- endif %}\n";
    static const char qwen3[] =
        "{%- if messages[0].role == 'system' %}{{- '<|im_start|>system\\n' + messages[0].content + "
        "'<|im_end|>\\n' }}{%- endif %}{{- '<|im_start|>assistant\\n' }}";
    static const char r1[] =
        "{{bos_token}}{{ns.system_prompt}}{%- for message in messages %}{%- if message['role'] == 'user' %}"
        "{{'<｜User｜>' + message['content']}}{%- endif %}{%- endfor -%}"
        "{% if add_generation_prompt and not ns.is_tool %}{{'<｜Assistant｜><think>\\n'}}{% endif %}";
    static const char llama3[] =
        "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
        "+ message['content'] | trim + '<|eot_id|>' %}";
    struct chat_detected det;
    chat_detect_template(qwen25, "t", &det);
    TEST_COND("Qwen2.5-Math template: chatml with its \\boxed{} default system prompt",
              det.format == CHAT_FORMAT_CHATML && det.default_system && strcmp(det.default_system,
              "Please reason step by step, and put your final answer within \\boxed{}.") == 0);
    chat_detected_deinit(&det);
    chat_detect_template(qwen3, "t", &det);
    TEST_COND("Qwen3 template: chatml without a default system prompt",
              det.format == CHAT_FORMAT_CHATML && !det.default_system &&
              chat_default_system(CHAT_FORMAT_CHATML, &det) == NULL);
    chat_detected_deinit(&det);
    chat_detect_template(r1, "t", &det);
    TEST_COND("R1-Distill template: deepseek-r1", det.format == CHAT_FORMAT_DEEPSEEK_R1);
    chat_detected_deinit(&det);
    chat_detect_template(llama3, "t", &det);
    TEST_COND("Llama-3 template: llama3", det.format == CHAT_FORMAT_LLAMA3);
    chat_detected_deinit(&det);
    chat_detect_template("{{ messages }}", "t", &det);
    TEST_COND("unknown template: none", det.format == CHAT_FORMAT_NONE);
    chat_detected_deinit(&det);
    TEST_COND("explicit chatml without a template uses Qwen2.5's default system prompt",
              strcmp(chat_default_system(CHAT_FORMAT_CHATML, NULL), CHAT_QWEN25_DEFAULT_SYSTEM) == 0);

    char *ldir = golden_dir("llama-f32-untied");
    int rc = chat_detect_dir(ldir, &det);
    TEST_COND("a directory without a template detects none", rc == 0 && det.format == CHAT_FORMAT_NONE &&
              !det.has_template && strstr(det.reason, "no chat template"));
    chat_detected_deinit(&det);
    free(ldir);
}

int main(void)
{
    /* every golden check on each kernel path this CPU has (the batched
     * products differ by path; the portable path is what other CPUs run) */
    static const enum kernel_path paths[] = { KERNEL_PATH_AVX512, KERNEL_PATH_AVX2, KERNEL_PATH_PORTABLE };
    for (size_t p = 0; p < LM_ARRAY_SIZE(paths); p++) {
        enum kernel_path was = kernel_force_path(paths[p]);
        if (kernel_path_active() == paths[p]) {
            printf("# kernel path %s\n", kernel_impl_name());
            for (size_t i = 0; i < LM_ARRAY_SIZE(golden_names); i++)
                check_golden(golden_names[i]);
        }
        kernel_force_path(was);
    }
    check_chat_golden();
    check_errors();
    check_chat_formats();
    return test_report();
}
