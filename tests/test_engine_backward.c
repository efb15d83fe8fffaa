/* The loss gradient and the forward probe against goldens made by
 * tests/golden/make_grad_goldens.py (torch autograd on the reference forward
 * of tests/golden/make_goldens.py):
 *   - for each golden model: the loss within 1e-5 relative, the logits
 *     within 1e-4 x max |logit|, every weight's gradient delivered once with
 *     the weight's view and count, and within 1e-4 x max |g| of the
 *     reference per tensor (a tied model: embed_tokens only, no lm_head);
 *   - a 150-token sequence (three attention blocks) on one model: the loss
 *     and layer 0's attention gradients;
 *   - the same bits with 1 and 2 threads, and loss-only calls;
 *   - the KV cache is neither used nor changed;
 *   - a sink returning non-zero stops the pass with that value;
 *   - argument errors: loss_from and n out of range, n past the context,
 *     token ids outside the vocabulary;
 *   - the probe: ATTN_IN of layer 0 equals input_layernorm(embed[ids])
 *     computed here, HEAD_IN times the tied embedding gives the logits, and
 *     every probe point's width, layer, order and row counts per batch. */
#include "backward.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "convert.h"
#include "fsutil.h"
#include "lm_error.h"
#include "model.h"
#include "test.h"

static const char *golden_names[] = { "qwen2-bf16-tied", "llama-f32-untied", "qwen3-f16-tied" };

static char *golden_dir(const char *name)
{
    const char *src = getenv("MS_SOURCE_DIR");
    char *tests = lm_asprintf("%s/tests/golden", src ? src : ".");
    char *dir = lm_path_join(tests, name);
    free(tests);
    return dir;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static struct model *load(struct model_dir *d, int n_threads, int64_t n_batch)
{
    struct model_params p = model_default_params();
    p.n_threads = n_threads;
    p.n_batch = n_batch;
    struct model_source src = model_dir_source(d);
    return model_load(model_dir_config(d), &src, p);
}

/* A file of float32 values; NULL unless it holds exactly `count`. */
static float *read_f32(const char *dir, const char *file, int64_t count)
{
    char *path = lm_path_join(dir, file);
    size_t len = 0;
    char *raw = lm_read_file(path, 64u << 20, &len);
    free(path);
    if (raw && len != (size_t)count * sizeof(float)) {
        free(raw);
        raw = NULL;
    }
    return (float *)(void *)raw;  /* little-endian float32, as on this host */
}

/* ===== The reference: grads.json and its float files ===== */

struct ref_tensor {
    const char *name;
    int ndim;
    int64_t shape[2];
    int64_t offset, count;
};

struct ref_set {
    int32_t *ids;
    int64_t n, loss_from;
    double loss;
    struct ref_tensor t[64];
    int n_tensors;
    float *grads;
};

static int ref_parse(const cJSON *j, struct ref_set *r)
{
    const cJSON *ids = cJSON_GetObjectItemCaseSensitive(j, "ids");
    const cJSON *tensors = cJSON_GetObjectItemCaseSensitive(j, "tensors");
    if (!cJSON_IsArray(ids) || !cJSON_IsArray(tensors) || cJSON_GetArraySize(tensors) > 64)
        return -1;
    r->n = cJSON_GetArraySize(ids);
    r->ids = calloc((size_t)r->n, sizeof(int32_t));
    for (int64_t i = 0; i < r->n; i++)
        r->ids[i] = (int32_t)cJSON_GetArrayItem(ids, (int)i)->valuedouble;
    r->loss_from = (int64_t)cJSON_GetObjectItemCaseSensitive(j, "loss_from")->valuedouble;
    r->loss = cJSON_GetObjectItemCaseSensitive(j, "loss")->valuedouble;
    const cJSON *it;
    cJSON_ArrayForEach(it, tensors) {
        struct ref_tensor *t = &r->t[r->n_tensors++];
        const cJSON *shape = cJSON_GetObjectItemCaseSensitive(it, "shape");
        t->name = cJSON_GetObjectItemCaseSensitive(it, "name")->valuestring;
        t->ndim = cJSON_GetArraySize(shape);
        for (int d = 0; d < t->ndim && d < 2; d++)
            t->shape[d] = (int64_t)cJSON_GetArrayItem(shape, d)->valuedouble;
        t->offset = (int64_t)cJSON_GetObjectItemCaseSensitive(it, "offset")->valuedouble;
        t->count = (int64_t)cJSON_GetObjectItemCaseSensitive(it, "count")->valuedouble;
    }
    return 0;
}

static int64_t ref_total(const struct ref_set *r)
{
    int64_t total = 0;
    for (int i = 0; i < r->n_tensors; i++)
        total += r->t[i].count;
    return total;
}

struct golden {
    char *dir;
    cJSON *json;
    struct ref_set main, lng;   /* the 24-token sequence; the long one (one model) */
    bool has_long;
    float *logits;              /* main.n x n_vocab */
    int64_t n_vocab;
};

static int golden_load(const char *name, struct golden *g)
{
    memset(g, 0, sizeof(*g));
    g->dir = golden_dir(name);
    char *jpath = lm_path_join(g->dir, "grads.json");
    size_t len;
    char *text = lm_read_file(jpath, 1 << 20, &len);
    free(jpath);
    if (!text)
        return -1;
    g->json = cJSON_Parse(text);
    free(text);
    if (!g->json || ref_parse(g->json, &g->main) < 0)
        return -1;
    g->n_vocab = (int64_t)cJSON_GetObjectItemCaseSensitive(g->json, "n_vocab")->valuedouble;
    if (!(g->main.grads = read_f32(g->dir, "grads.f32", ref_total(&g->main))) ||
        !(g->logits = read_f32(g->dir, "grad_logits.f32", g->main.n * g->n_vocab)))
        return -1;
    const cJSON *lj = cJSON_GetObjectItemCaseSensitive(g->json, "long");
    if (lj) {
        g->has_long = true;
        if (ref_parse(lj, &g->lng) < 0 || !(g->lng.grads = read_f32(g->dir, "grads_long.f32", ref_total(&g->lng))))
            return -1;
    }
    return 0;
}

static void golden_free(struct golden *g)
{
    free(g->dir);
    cJSON_Delete(g->json);
    free(g->main.ids);
    free(g->main.grads);
    free(g->lng.ids);
    free(g->lng.grads);
    free(g->logits);
}

/* ===== A sink that keeps copies ===== */

struct got_tensor {
    char name[128];
    float *grad;
    int64_t n;
    struct model_tensor_view view;
};

struct collect {
    struct got_tensor t[64];
    int n;
    int calls;
    int stop_at;        /* > 0: return stop_rc on this call */
    int stop_rc;
    bool overflow;
};

static int collect_tensor(void *ud, const char *name, const float *grad, const struct model_tensor_view *w,
                          int64_t n)
{
    struct collect *c = ud;
    c->calls++;
    if (c->stop_at > 0 && c->calls == c->stop_at)
        return c->stop_rc;
    if (c->n == 64) {
        c->overflow = true;
        return 0;
    }
    struct got_tensor *t = &c->t[c->n++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->grad = malloc((size_t)n * sizeof(float));
    memcpy(t->grad, grad, (size_t)n * sizeof(float));
    t->n = n;
    t->view = *w;
    return 0;
}

static void collect_free(struct collect *c)
{
    for (int i = 0; i < c->n; i++)
        free(c->t[i].grad);
    memset(c, 0, sizeof(*c));
}

static const struct got_tensor *collect_find(const struct collect *c, const char *name, int *times)
{
    const struct got_tensor *found = NULL;
    *times = 0;
    for (int i = 0; i < c->n; i++)
        if (strcmp(c->t[i].name, name) == 0) {
            found = &c->t[i];
            (*times)++;
        }
    return found;
}

/* Every reference tensor present once with its shape, and the worst
 * max |got - want| / max |want| over tensors (a missing or misshapen
 * tensor counts as infinitely wrong). */
static double compare_grads(const struct collect *c, const struct ref_set *r, const char **worst_name,
                            int *n_bad_shape)
{
    double worst = 0.0;
    *worst_name = "";
    *n_bad_shape = 0;
    for (int i = 0; i < r->n_tensors; i++) {
        const struct ref_tensor *t = &r->t[i];
        int times;
        const struct got_tensor *g = collect_find(c, t->name, &times);
        bool shape_ok = g && times == 1 && g->n == t->count && g->view.ndim == t->ndim;
        for (int d = 0; shape_ok && d < t->ndim; d++)
            shape_ok = g->view.shape[d] == t->shape[d];
        if (!shape_ok) {
            (*n_bad_shape)++;
            printf("      %s: %s\n", t->name, !g ? "missing" : times != 1 ? "delivered twice" : "wrong shape");
            worst = INFINITY;
            *worst_name = t->name;
            continue;
        }
        const float *want = r->grads + t->offset;
        double d = 0.0, mx = 0.0;
        for (int64_t k = 0; k < t->count; k++) {
            double e = fabs((double)g->grad[k] - (double)want[k]);
            if (!(e <= d))
                d = e;
            if (fabs((double)want[k]) > mx)
                mx = fabs((double)want[k]);
        }
        if (!(d / mx <= worst)) {
            worst = d / mx;
            *worst_name = t->name;
        }
    }
    return worst;
}

static bool same_grads(const struct collect *a, const struct collect *b)
{
    if (a->n != b->n)
        return false;
    for (int i = 0; i < a->n; i++)
        if (strcmp(a->t[i].name, b->t[i].name) != 0 || a->t[i].n != b->t[i].n ||
            memcmp(a->t[i].grad, b->t[i].grad, (size_t)a->t[i].n * sizeof(float)) != 0)
            return false;
    return true;
}

/* The views handed to the sink: matrices in the model's dtype with their
 * data, norms and biases float32 vectors. */
static bool views_ok(const struct collect *c, enum lm_dtype dtype)
{
    for (int i = 0; i < c->n; i++) {
        const struct model_tensor_view *v = &c->t[i].view;
        if (!v->data)
            return false;
        if (v->ndim == 2 && (v->dtype != dtype || v->shape[0] * v->shape[1] != c->t[i].n))
            return false;
        if (v->ndim == 1 && (v->dtype != LM_DTYPE_F32 || v->shape[0] != c->t[i].n))
            return false;
        if (v->ndim != 1 && v->ndim != 2)
            return false;
    }
    return true;
}

static double max_rel_logits(const float *got, const float *want, int64_t count)
{
    double d = 0.0, mx = 0.0;
    for (int64_t i = 0; i < count; i++) {
        double e = fabs((double)got[i] - (double)want[i]);
        if (!(e <= d))
            d = e;
        if (fabs((double)want[i]) > mx)
            mx = fabs((double)want[i]);
    }
    return d / mx;
}

/* ===== Per golden model ===== */

static void test_golden(const char *name, enum lm_dtype dtype, double *worst_out)
{
    char what[256];
    struct golden g;
    int grc = golden_load(name, &g);
    snprintf(what, sizeof what, "%s: gradient goldens load", name);
    TEST_COND(what, grc == 0);
    struct model_dir *d = grc == 0 ? model_dir_open(g.dir) : NULL;
    struct model *m1 = d ? load(d, 1, 0) : NULL, *m2 = d ? load(d, 2, 0) : NULL;
    snprintf(what, sizeof what, "%s: model loads with 1 and 2 threads", name);
    TEST_COND(what, m1 && m2);
    if (!m1 || !m2) {
        printf("      %s\n", lm_last_error());
        model_free(m1);
        model_free(m2);
        model_dir_close(d);
        golden_free(&g);
        return;
    }
    const struct model_info *info = model_get_info(m1);
    int64_t n = g.main.n;

    /* One thread: loss, logits, every gradient. */
    struct collect c1 = { 0 }, c2 = { 0 };
    struct model_grad_sink s1 = { collect_tensor, &c1 }, s2 = { collect_tensor, &c2 };
    float *logits1 = malloc((size_t)(n * info->n_vocab) * sizeof(float));
    float *logits2 = malloc((size_t)(n * info->n_vocab) * sizeof(float));
    double loss1 = 0.0, loss2 = 0.0;
    double t0 = now_s();
    int rc1 = model_loss_grad(m1, g.main.ids, n, g.main.loss_from, &loss1, logits1, &s1);
    double t1 = now_s();
    int rc2 = model_loss_grad(m2, g.main.ids, n, g.main.loss_from, &loss2, logits2, &s2);
    double t2 = now_s();
    snprintf(what, sizeof what, "%s: model_loss_grad over %lld tokens (loss from %lld) returns 0", name,
             (long long)n, (long long)g.main.loss_from);
    TEST_COND(what, rc1 == 0 && rc2 == 0);
    if (rc1 || rc2)
        printf("      %s\n", lm_last_error());
    printf("      %s: %.2f ms per call with 1 thread, %.2f ms with 2\n", name, 1e3 * (t1 - t0), 1e3 * (t2 - t1));

    snprintf(what, sizeof what, "%s: loss %.6f within 1e-5 relative of the reference %.6f", name, loss1,
             g.main.loss);
    TEST_COND(what, fabs(loss1 - g.main.loss) <= 1e-5 * fabs(g.main.loss));
    double lrel = max_rel_logits(logits1, g.logits, n * info->n_vocab);
    snprintf(what, sizeof what, "%s: logits within 1e-4 x max |logit| of the reference (got %.2e)", name, lrel);
    TEST_COND(what, lrel <= 1e-4);

    const char *worst_name;
    int n_bad;
    double worst = compare_grads(&c1, &g.main, &worst_name, &n_bad);
    *worst_out = worst;
    snprintf(what, sizeof what, "%s: all %d reference gradients delivered once with their shapes", name,
             g.main.n_tensors);
    TEST_COND(what, n_bad == 0 && !c1.overflow);
    snprintf(what, sizeof what, "%s: no other tensor delivered (%d delivered)", name, c1.n);
    TEST_COND(what, c1.n == g.main.n_tensors);
    int times;
    snprintf(what, sizeof what, "%s: %s", name,
             info->tied ? "tied: no lm_head.weight, embed_tokens once" : "untied: lm_head.weight and embed_tokens");
    bool has_head = collect_find(&c1, "lm_head.weight", &times) != NULL;
    int emb_times;
    collect_find(&c1, "model.embed_tokens.weight", &emb_times);
    TEST_COND(what, has_head == !info->tied && emb_times == 1);
    snprintf(what, sizeof what, "%s: every gradient within 1e-4 x max |g| of torch (worst %.2e, %s)", name,
             worst, worst_name);
    TEST_COND(what, worst <= 1e-4);
    snprintf(what, sizeof what, "%s: sink views: matrices %s with data, norms and biases F32", name,
             lm_dtype_name(dtype));
    TEST_COND(what, views_ok(&c1, dtype));
    snprintf(what, sizeof what, "%s: 1 and 2 threads give the same loss, logits and gradient bits", name);
    TEST_COND(what, memcmp(&loss1, &loss2, sizeof loss1) == 0 &&
                    memcmp(logits1, logits2, (size_t)(n * info->n_vocab) * sizeof(float)) == 0 &&
                    same_grads(&c1, &c2));

    /* Loss only: same bits, no logits asked for. */
    double loss3 = 0.0;
    int rc3 = model_loss_grad(m2, g.main.ids, n, g.main.loss_from, &loss3, NULL, NULL);
    snprintf(what, sizeof what, "%s: loss-only call (no sink, no logits) gives the same loss bits", name);
    TEST_COND(what, rc3 == 0 && memcmp(&loss1, &loss3, sizeof loss1) == 0);

    /* The long sequence: several attention blocks. */
    if (g.has_long) {
        struct collect cl = { 0 };
        struct model_grad_sink sl = { collect_tensor, &cl };
        double lossl = 0.0;
        t0 = now_s();
        int rcl = model_loss_grad(m2, g.lng.ids, g.lng.n, g.lng.loss_from, &lossl, NULL, &sl);
        t1 = now_s();
        printf("      %s: %lld tokens, %.2f ms with 2 threads\n", name, (long long)g.lng.n, 1e3 * (t1 - t0));
        snprintf(what, sizeof what, "%s: %lld tokens: loss %.6f within 1e-5 relative of %.6f", name,
                 (long long)g.lng.n, lossl, g.lng.loss);
        TEST_COND(what, rcl == 0 && fabs(lossl - g.lng.loss) <= 1e-5 * fabs(g.lng.loss));
        double wl = compare_grads(&cl, &g.lng, &worst_name, &n_bad);
        snprintf(what, sizeof what, "%s: %lld tokens: layer 0 attention gradients within 1e-4 x max |g| "
                 "(worst %.2e, %s)", name, (long long)g.lng.n, wl, worst_name);
        TEST_COND(what, n_bad == 0 && wl <= 1e-4);
        collect_free(&cl);
    }

    free(logits1);
    free(logits2);
    collect_free(&c1);
    collect_free(&c2);
    model_free(m1);
    model_free(m2);
    model_dir_close(d);
    golden_free(&g);
}

/* ===== The KV cache, the sink's stop, argument errors ===== */

static void test_cache_stop_args(void)
{
    struct golden g;
    if (golden_load("qwen3-f16-tied", &g) < 0) {
        TEST_COND("qwen3 goldens load", false);
        return;
    }
    struct model_dir *d = model_dir_open(g.dir);
    struct model *a = d ? load(d, 2, 0) : NULL, *b = d ? load(d, 2, 0) : NULL;
    TEST_COND("qwen3: two models load", a && b);
    if (!a || !b)
        goto out;
    const struct model_info *info = model_get_info(a);
    int64_t V = info->n_vocab;
    float *la = malloc((size_t)V * sizeof(float)), *lb = malloc((size_t)V * sizeof(float));

    /* a: 5 tokens cached, a loss pass, then one more token; b: the same
     * without the loss pass. The next token's logits must match. */
    int rca = model_forward(a, g.main.ids, 5, NULL, MODEL_LOGITS_NONE);
    double loss;
    int rcl = model_loss_grad(a, g.main.ids + 3, 20, 4, &loss, NULL, NULL);
    int64_t past = model_n_past(a);
    rca |= model_forward(a, g.main.ids + 5, 1, la, MODEL_LOGITS_LAST);
    int rcb = model_forward(b, g.main.ids, 5, NULL, MODEL_LOGITS_NONE);
    rcb |= model_forward(b, g.main.ids + 5, 1, lb, MODEL_LOGITS_LAST);
    TEST_COND("KV cache: n_past stays 5 across model_loss_grad", rca == 0 && rcl == 0 && past == 5);
    TEST_COND("KV cache: the next token's logits are the bits of a model that never ran the loss",
              rcb == 0 && memcmp(la, lb, (size_t)V * sizeof(float)) == 0);

    /* A sink returning 7 on its third tensor stops the pass there. */
    struct collect c = { 0 };
    c.stop_at = 3;
    c.stop_rc = 7;
    struct model_grad_sink s = { collect_tensor, &c };
    loss = -1.0;
    int rc = model_loss_grad(a, g.main.ids, g.main.n, g.main.loss_from, &loss, NULL, &s);
    TEST_COND("sink returning 7 on the third tensor: model_loss_grad returns 7 after 3 calls",
              rc == 7 && c.calls == 3);
    TEST_COND("sink stop: the loss was written before the first tensor",
              fabs(loss - g.main.loss) <= 1e-5 * fabs(g.main.loss));
    collect_free(&c);
    c.stop_at = 1;
    c.stop_rc = -42;
    rc = model_loss_grad(a, g.main.ids, g.main.n, g.main.loss_from, &loss, NULL, &s);
    TEST_COND("sink returning -42 on the first tensor: returns -42 after 1 call", rc == -42 && c.calls == 1);
    collect_free(&c);

    /* Argument errors: LM_EINVAL, the sink never called, n_past unchanged. */
    int32_t ids[80];
    for (int i = 0; i < 80; i++)
        ids[i] = (int32_t)(i * 7 % V);
    struct { const char *what; const int32_t *ids; int64_t n, from; } bad[] = {
        { "loss_from 0", ids, 10, 0 },
        { "loss_from = n", ids, 10, 10 },
        { "loss_from > n", ids, 10, 11 },
        { "negative loss_from", ids, 10, -1 },
        { "n = 1", ids, 1, 1 },
        { "n = 0", ids, 0, 0 },
        { "n past n_ctx (65 > 64)", ids, 65, 1 },
        { "no tokens", NULL, 10, 1 },
    };
    c.stop_at = 0;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char what[160];
        lm_clear_error();
        rc = model_loss_grad(a, bad[i].ids, bad[i].n, bad[i].from, &loss, NULL, &s);
        snprintf(what, sizeof what, "argument error: %s -> LM_EINVAL with a message, no tensor delivered",
                 bad[i].what);
        TEST_COND(what, rc == LM_EINVAL && lm_last_error()[0] != '\0' && c.calls == 0);
    }
    ids[3] = (int32_t)V;
    rc = model_loss_grad(a, ids, 10, 2, &loss, NULL, &s);
    TEST_COND("argument error: token id = n_vocab -> LM_EINVAL naming the id",
              rc == LM_EINVAL && strstr(lm_last_error(), "256") != NULL && c.calls == 0);
    ids[3] = -1;
    rc = model_loss_grad(a, ids, 10, 2, &loss, NULL, &s);
    TEST_COND("argument error: token id -1 -> LM_EINVAL", rc == LM_EINVAL && c.calls == 0);
    ids[3] = 5;
    rc = model_loss_grad(a, ids, 64, 1, &loss, NULL, NULL);
    TEST_COND("n = n_ctx (64) is allowed", rc == 0 && isfinite(loss));
    TEST_COND("n_past unchanged after all of these", model_n_past(a) == 6);
    free(la);
    free(lb);
out:
    model_free(a);
    model_free(b);
    model_dir_close(d);
    golden_free(&g);
}

/* ===== The probe ===== */

struct probe_call {
    int layer;
    enum model_probe where;
    int64_t n_tok, dim;
};

struct probe_log {
    struct probe_call calls[256];
    int n;
    float *attn_in0;     /* layer 0 ATTN_IN rows, concatenated */
    float *head_in;      /* HEAD_IN rows, concatenated */
    int64_t attn_in0_rows, head_in_rows, cap_rows, dim;
};

static void probe_fn(void *ud, int layer, enum model_probe where, const float *x, int64_t n_tok, int64_t dim)
{
    struct probe_log *p = ud;
    if (p->n < 256)
        p->calls[p->n] = (struct probe_call){ layer, where, n_tok, dim };
    p->n++;
    if (dim != p->dim)
        return;
    if (layer == 0 && where == MODEL_PROBE_ATTN_IN && p->attn_in0_rows + n_tok <= p->cap_rows) {
        memcpy(p->attn_in0 + p->attn_in0_rows * dim, x, (size_t)(n_tok * dim) * sizeof(float));
        p->attn_in0_rows += n_tok;
    }
    if (layer == -1 && where == MODEL_PROBE_HEAD_IN && p->head_in_rows + n_tok <= p->cap_rows) {
        memcpy(p->head_in + p->head_in_rows * dim, x, (size_t)(n_tok * dim) * sizeof(float));
        p->head_in_rows += n_tok;
    }
}

/* A tensor of the directory as float32; caller frees. */
static float *tensor_f32(struct model_dir *d, const char *name, int64_t *count)
{
    struct model_source src = model_dir_source(d);
    struct model_tensor_view v;
    if (src.get(src.ud, name, &v) != 0)
        return NULL;
    int64_t c = 1;
    for (int i = 0; i < v.ndim; i++)
        c *= v.shape[i];
    float *f = malloc((size_t)c * sizeof(float));
    lm_convert_to_f32(f, v.data, v.dtype, (size_t)c);
    *count = c;
    return f;
}

static void test_probe(void)
{
    char *dir = golden_dir("qwen3-f16-tied");
    struct model_dir *d = model_dir_open(dir);
    struct model *m = d ? load(d, 2, 8) : NULL;
    TEST_COND("probe: qwen3 model loads with n_batch 8", m != NULL);
    if (!m) {
        model_dir_close(d);
        free(dir);
        return;
    }
    const struct model_info *in = model_get_info(m);
    int64_t dim = in->n_embd, V = in->n_vocab, n = 19;
    int32_t ids[19];
    for (int i = 0; i < n; i++)
        ids[i] = (int32_t)((i * 37 + 11) % V);
    struct probe_log p = { 0 };
    p.dim = dim;
    p.cap_rows = n;
    p.attn_in0 = malloc((size_t)(n * dim) * sizeof(float));
    p.head_in = malloc((size_t)(n * dim) * sizeof(float));
    float *logits = malloc((size_t)(n * V) * sizeof(float));

    model_set_probe(m, probe_fn, &p);
    int rc = model_forward(m, ids, n, logits, MODEL_LOGITS_ALL);
    TEST_COND("probe: model_forward of 19 tokens with a probe returns 0", rc == 0);

    /* 19 tokens in batches of 8, 8, 3; per batch 2 layers x 4 points + HEAD_IN. */
    int64_t width[MODEL_PROBE_COUNT] = { dim, in->n_head * in->head_dim, dim, in->n_ff, dim };
    int per_batch = (int)in->n_layer * 4 + 1;
    bool order_ok = p.n == 3 * per_batch, dims_ok = true;
    int64_t batch_rows[3] = { 8, 8, 3 };
    for (int i = 0; order_ok && i < p.n; i++) {
        const struct probe_call *c = &p.calls[i];
        int b = i / per_batch, k = i % per_batch;
        int want_layer = k == per_batch - 1 ? -1 : k / 4;
        enum model_probe want_where = k == per_batch - 1 ? MODEL_PROBE_HEAD_IN : (enum model_probe)(k % 4);
        order_ok = c->layer == want_layer && c->where == want_where;
        dims_ok = dims_ok && c->dim == width[c->where] && c->n_tok == batch_rows[b];
    }
    TEST_COND("probe: 27 calls, per batch layer 0 ATTN_IN, ATTN_OUT, MLP_IN, MLP_ACT, layer 1 ..., "
              "then HEAD_IN with layer -1", order_ok);
    printf("      widths: ATTN_IN %lld, ATTN_OUT %lld, MLP_IN %lld, MLP_ACT %lld, HEAD_IN %lld\n",
           (long long)width[0], (long long)width[1], (long long)width[2], (long long)width[3],
           (long long)width[4]);
    TEST_COND("probe: widths n_embd 64 / n_head*head_dim 128 / n_embd 64 / n_ff 96 / n_embd 64, and "
              "8, 8, 3 rows per batch", dims_ok && width[1] == 128 && width[3] == 96);

    /* ATTN_IN of layer 0 = input_layernorm(embed[ids]), computed here in double. */
    int64_t ec = 0, wc = 0;
    float *emb = tensor_f32(d, "model.embed_tokens.weight", &ec);
    float *w = tensor_f32(d, "model.layers.0.input_layernorm.weight", &wc);
    double eps = model_dir_config(d)->rms_norm_eps, worst = 0.0, mx = 0.0;
    for (int64_t t = 0; emb && w && t < n; t++) {
        const float *e = emb + (int64_t)ids[t] * dim;
        double ss = 0.0;
        for (int64_t c = 0; c < dim; c++)
            ss += (double)e[c] * (double)e[c];
        double r = 1.0 / sqrt(ss / (double)dim + eps);
        for (int64_t c = 0; c < dim; c++) {
            double want = (double)e[c] * r * (double)w[c];
            worst = fmax(worst, fabs(want - (double)p.attn_in0[t * dim + c]));
            mx = fmax(mx, fabs(want));
        }
    }
    TEST_COND("probe: layer 0 ATTN_IN rows = input_layernorm(embed[ids]) by hand (19 rows, within 1e-6 x max)",
              emb && w && p.attn_in0_rows == n && worst <= 1e-6 * mx);

    /* HEAD_IN times the tied embedding gives the logits. */
    double lw = 0.0, lmx = 0.0;
    for (int64_t t = 0; emb && t < n; t++)
        for (int64_t v = 0; v < V; v++) {
            double s = 0.0;
            for (int64_t c = 0; c < dim; c++)
                s += (double)p.head_in[t * dim + c] * (double)emb[v * dim + c];
            lw = fmax(lw, fabs(s - (double)logits[t * V + v]));
            lmx = fmax(lmx, fabs(s));
        }
    TEST_COND("probe: HEAD_IN (19 rows) x embed_tokens^T = the logits (within 1e-5 x max)",
              p.head_in_rows == n && lw <= 1e-5 * lmx);

    /* Only the rows whose logits are computed reach HEAD_IN. */
    model_reset(m);
    p.n = 0;
    rc = model_forward(m, ids, n, logits, MODEL_LOGITS_LAST);
    int head_calls = 0;
    int64_t head_rows = 0;
    for (int i = 0; i < p.n && i < 256; i++)
        if (p.calls[i].where == MODEL_PROBE_HEAD_IN) {
            head_calls++;
            head_rows += p.calls[i].n_tok;
        }
    TEST_COND("probe: MODEL_LOGITS_LAST -> one HEAD_IN call of 1 row", rc == 0 && head_calls == 1 && head_rows == 1);
    model_reset(m);
    p.n = 0;
    int64_t all_rows = n; /* the first n rows logged: those of the MODEL_LOGITS_ALL run */
    float *head_all = malloc((size_t)(all_rows * 64) * sizeof(float));
    memcpy(head_all, p.head_in, (size_t)(all_rows * 64) * sizeof(float));
    p.head_in_rows = 0;
    rc = model_forward(m, ids, n, NULL, MODEL_LOGITS_NONE);
    head_calls = 0;
    head_rows = 0;
    for (int i = 0; i < p.n && i < 256; i++)
        if (p.calls[i].where == MODEL_PROBE_HEAD_IN) {
            head_calls++;
            head_rows += p.calls[i].n_tok;
        }
    TEST_COND("probe: MODEL_LOGITS_NONE -> HEAD_IN for every row (3 calls, 19 rows) without logits",
              rc == 0 && head_calls == 3 && head_rows == n && p.n == 27);
    TEST_COND("probe: ... with the same values as under MODEL_LOGITS_ALL",
              p.head_in_rows == all_rows && memcmp(head_all, p.head_in, (size_t)(all_rows * 64) * sizeof(float)) == 0);
    free(head_all);

    /* Cleared: no calls. */
    model_set_probe(m, NULL, NULL);
    model_reset(m);
    p.n = 0;
    rc = model_forward(m, ids, n, logits, MODEL_LOGITS_ALL);
    TEST_COND("probe: cleared -> no calls", rc == 0 && p.n == 0);

    free(emb);
    free(w);
    free(p.attn_in0);
    free(p.head_in);
    free(logits);
    model_free(m);
    model_dir_close(d);
    free(dir);
}

int main(void)
{
    enum lm_dtype dtypes[] = { LM_DTYPE_BF16, LM_DTYPE_F32, LM_DTYPE_F16 };
    double worst[3] = { 0 };
    for (int i = 0; i < 3; i++)
        test_golden(golden_names[i], dtypes[i], &worst[i]);
    for (int i = 0; i < 3; i++)
        printf("      %-18s max gradient error %.2e of max |g|\n", golden_names[i], worst[i]);
    test_cache_stop_args();
    test_probe();
    return test_report();
}
