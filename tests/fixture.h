/* Test fixtures: tiny Qwen2-shaped model directories written by an
 * independent, deliberately simple safetensors writer (not io/'s), so that
 * the reader and the merge are checked against bytes mergescope did not
 * produce itself.
 *
 * fx_make_trio() builds a base, a "quick" model fine-tuned from it (tied
 * embeddings, like Qwen2.5-Math) and a "long" model fine-tuned from quick
 * (untied, like R1-Distill), all with values exactly representable in bf16. */
#ifndef MS_TESTS_FIXTURE_H
#define MS_TESTS_FIXTURE_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define FX_HIDDEN 8
#define FX_INTER 16
#define FX_LAYERS 3
#define FX_HEADS 2
#define FX_KV_HEADS 1
#define FX_HEAD_DIM (FX_HIDDEN / FX_HEADS)
#define FX_VOCAB 32
#define FX_MAX_TENSORS 64

struct fx_tensor {
    char name[96];
    int ndim;
    int64_t shape[2];
    size_t n;
    float *data;
};

struct fx_model {
    struct fx_tensor t[FX_MAX_TENSORS];
    int n;
    bool tied;
    int vocab;
};

static uint64_t fx_rng_state;

static uint64_t fx_next(void)
{
    /* xorshift64* */
    fx_rng_state ^= fx_rng_state >> 12;
    fx_rng_state ^= fx_rng_state << 25;
    fx_rng_state ^= fx_rng_state >> 27;
    return fx_rng_state * 0x2545F4914F6CDD1Dull;
}

static float fx_uniform(void)
{
    return (float)((double)(fx_next() >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

/* Round-to-nearest-even to bf16 and back, written independently of core/. */
static float fx_bf16_round(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fff + ((u >> 16) & 1);
    u &= 0xffff0000u;
    memcpy(&f, &u, 4);
    return f;
}

static uint16_t fx_bf16_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)(u >> 16);
}

static struct fx_tensor *fx_add(struct fx_model *m, const char *name, int ndim, int64_t d0, int64_t d1)
{
    struct fx_tensor *t = &m->t[m->n++];
    snprintf(t->name, sizeof(t->name), "%s", name);
    t->ndim = ndim;
    t->shape[0] = d0;
    t->shape[1] = d1;
    t->n = (size_t)(ndim == 1 ? d0 : d0 * d1);
    t->data = calloc(t->n, sizeof(float));
    return t;
}

static void fx_fill(struct fx_tensor *t, float center, float scale)
{
    for (size_t i = 0; i < t->n; i++)
        t->data[i] = fx_bf16_round(center + scale * fx_uniform());
}

/* The base: every tensor of a Qwen2 decoder, random. */
static void fx_make_base(struct fx_model *m, int vocab)
{
    memset(m, 0, sizeof(*m));
    m->tied = true;
    m->vocab = vocab;
    char name[96];
    fx_fill(fx_add(m, "model.embed_tokens.weight", 2, vocab, FX_HIDDEN), 0, 0.1f);
    for (int l = 0; l < FX_LAYERS; l++) {
#define FX_T(suffix, nd, a, b, c, s) \
        snprintf(name, sizeof(name), "model.layers.%d.%s", l, suffix); fx_fill(fx_add(m, name, nd, a, b), c, s)
        FX_T("input_layernorm.weight", 1, FX_HIDDEN, 0, 1.0f, 0.05f);
        FX_T("self_attn.q_proj.weight", 2, FX_HEADS * FX_HEAD_DIM, FX_HIDDEN, 0, 0.1f);
        FX_T("self_attn.q_proj.bias", 1, FX_HEADS * FX_HEAD_DIM, 0, 0, 0.1f);
        FX_T("self_attn.k_proj.weight", 2, FX_KV_HEADS * FX_HEAD_DIM, FX_HIDDEN, 0, 0.1f);
        FX_T("self_attn.k_proj.bias", 1, FX_KV_HEADS * FX_HEAD_DIM, 0, 0, 0.1f);
        FX_T("self_attn.v_proj.weight", 2, FX_KV_HEADS * FX_HEAD_DIM, FX_HIDDEN, 0, 0.1f);
        FX_T("self_attn.v_proj.bias", 1, FX_KV_HEADS * FX_HEAD_DIM, 0, 0, 0.1f);
        FX_T("self_attn.o_proj.weight", 2, FX_HIDDEN, FX_HEADS * FX_HEAD_DIM, 0, 0.1f);
        FX_T("post_attention_layernorm.weight", 1, FX_HIDDEN, 0, 1.0f, 0.05f);
        FX_T("mlp.gate_proj.weight", 2, FX_INTER, FX_HIDDEN, 0, 0.1f);
        FX_T("mlp.up_proj.weight", 2, FX_INTER, FX_HIDDEN, 0, 0.1f);
        FX_T("mlp.down_proj.weight", 2, FX_HIDDEN, FX_INTER, 0, 0.1f);
#undef FX_T
    }
    fx_fill(fx_add(m, "model.norm.weight", 1, FX_HIDDEN, 0), 1.0f, 0.05f);
}

/* `out` = `from` + scale * noise (a fine-tune), same tensors. */
static void fx_make_finetune(struct fx_model *out, const struct fx_model *from, float scale, bool tied)
{
    memset(out, 0, sizeof(*out));
    out->tied = tied;
    out->vocab = from->vocab;
    for (int i = 0; i < from->n; i++) {
        const struct fx_tensor *s = &from->t[i];
        struct fx_tensor *t = fx_add(out, s->name, s->ndim, s->shape[0], s->shape[1]);
        for (size_t e = 0; e < t->n; e++)
            t->data[e] = fx_bf16_round(s->data[e] + scale * fx_uniform());
    }
    if (!tied && from->tied) {
        /* Untying: lm_head starts as the embeddings, then moves. */
        const struct fx_tensor *emb = &from->t[0];
        struct fx_tensor *h = fx_add(out, "lm_head.weight", 2, emb->shape[0], emb->shape[1]);
        for (size_t e = 0; e < h->n; e++)
            h->data[e] = fx_bf16_round(emb->data[e] + scale * fx_uniform());
    }
}

static void fx_free(struct fx_model *m)
{
    for (int i = 0; i < m->n; i++)
        free(m->t[i].data);
    m->n = 0;
}

static const struct fx_tensor *fx_find(const struct fx_model *m, const char *name)
{
    for (int i = 0; i < m->n; i++)
        if (strcmp(m->t[i].name, name) == 0)
            return &m->t[i];
    return NULL;
}

/* Writes m's tensors (in reverse order, to exercise offset handling) as
 * BF16 or F32 safetensors. 0 on success. */
static int fx_write_safetensors(const char *path, const struct fx_model *m, bool f32)
{
    size_t esz = f32 ? 4 : 2;
    char *header = malloc(65536);
    size_t len = (size_t)sprintf(header, "{\"__metadata__\":{\"format\":\"pt\"}");
    uint64_t off = 0;
    for (int i = m->n - 1; i >= 0; i--) {
        const struct fx_tensor *t = &m->t[i];
        uint64_t bytes = t->n * esz;
        if (t->ndim == 1)
            len += (size_t)sprintf(header + len, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[%lld],\"data_offsets\":[%llu,%llu]}",
                                   t->name, f32 ? "F32" : "BF16", (long long)t->shape[0],
                                   (unsigned long long)off, (unsigned long long)(off + bytes));
        else
            len += (size_t)sprintf(header + len, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[%lld,%lld],\"data_offsets\":[%llu,%llu]}",
                                   t->name, f32 ? "F32" : "BF16", (long long)t->shape[0], (long long)t->shape[1],
                                   (unsigned long long)off, (unsigned long long)(off + bytes));
        off += bytes;
    }
    header[len++] = '}';
    while ((8 + len) % 8)
        header[len++] = ' ';
    FILE *f = fopen(path, "wb");
    if (!f) {
        free(header);
        return -1;
    }
    uint64_t n = len;
    unsigned char le[8];
    for (int i = 0; i < 8; i++)
        le[i] = (unsigned char)(n >> (8 * i));
    fwrite(le, 1, 8, f);
    fwrite(header, 1, len, f);
    for (int i = m->n - 1; i >= 0; i--) {
        const struct fx_tensor *t = &m->t[i];
        for (size_t e = 0; e < t->n; e++) {
            if (f32) {
                fwrite(&t->data[e], 4, 1, f);
            } else {
                uint16_t b = fx_bf16_bits(t->data[e]);
                fwrite(&b, 2, 1, f);
            }
        }
    }
    free(header);
    return fclose(f);
}

static int fx_write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fputs(text, f);
    return fclose(f);
}

/* A model directory: config.json, model.safetensors, tokenizer_config.json. */
static int fx_write_model_dir(const char *dir, const struct fx_model *m, int max_pos)
{
    char path[1024], cfg[2048];
    mkdir(dir, 0755);
    snprintf(path, sizeof(path), "%s/model.safetensors", dir);
    if (fx_write_safetensors(path, m, false))
        return -1;
    snprintf(cfg, sizeof(cfg),
             "{\n  \"architectures\": [\"Qwen2ForCausalLM\"],\n  \"model_type\": \"qwen2\",\n"
             "  \"hidden_size\": %d,\n  \"intermediate_size\": %d,\n  \"num_hidden_layers\": %d,\n"
             "  \"num_attention_heads\": %d,\n  \"num_key_value_heads\": %d,\n  \"vocab_size\": %d,\n"
             "  \"max_position_embeddings\": %d,\n  \"rope_theta\": 10000.0,\n  \"rms_norm_eps\": 1e-06,\n"
             "  \"tie_word_embeddings\": %s,\n  \"torch_dtype\": \"bfloat16\",\n  \"eos_token_id\": 2\n}\n",
             FX_HIDDEN, FX_INTER, FX_LAYERS, FX_HEADS, FX_KV_HEADS, m->vocab, max_pos,
             m->tied ? "true" : "false");
    snprintf(path, sizeof(path), "%s/config.json", dir);
    if (fx_write_text(path, cfg))
        return -1;
    snprintf(path, sizeof(path), "%s/tokenizer_config.json", dir);
    return fx_write_text(path, "{\"model_max_length\": 4096}\n");
}

/* Writes base/, quick/ and long/ under `root`; fills the three models. */
static int fx_make_trio(const char *root, uint64_t seed, struct fx_model *base, struct fx_model *quick,
                        struct fx_model *lng)
{
    char dir[1024];
    fx_rng_state = seed ? seed : 1;
    fx_make_base(base, FX_VOCAB);
    fx_make_finetune(quick, base, 0.02f, true);
    fx_make_finetune(lng, quick, 0.03f, false);
    mkdir(root, 0755);
    snprintf(dir, sizeof(dir), "%s/base", root);
    if (fx_write_model_dir(dir, base, 4096))
        return -1;
    snprintf(dir, sizeof(dir), "%s/quick", root);
    if (fx_write_model_dir(dir, quick, 4096))
        return -1;
    snprintf(dir, sizeof(dir), "%s/long", root);
    return fx_write_model_dir(dir, lng, 131072);
}

#endif
