/* Writes a base / quick / long trio of random bf16 checkpoints with real
 * shapes, for timing stats and merges on a model of the paper's size:
 *
 *   bench_mk7b DIR [7b|0.5b] [TOKENIZER_DIR]
 *
 * 7b: Qwen2.5-Math-7B / R1-Distill-Qwen-7B shapes (28 layers, hidden 3584,
 * intermediate 18944, 28/4 heads, vocabulary 152064, untied), about 15 GB
 * per model in 4 shards with model.safetensors.index.json. 0.5b:
 * Qwen2.5-0.5B shapes (24 layers, hidden 896, intermediate 4864, 14/2
 * heads, vocabulary 151936, tied), one model.safetensors of about 1 GB.
 * quick is the base plus small noise, long is quick plus smaller noise (so
 * that TIES has both agreement and conflict to resolve); values are rounded
 * to bf16. Each model gets a config.json, and the tokenizer.json and
 * tokenizer_config.json of TOKENIZER_DIR (default: the demo's long model,
 * whose ids all lie inside the vocabulary) so that `generate` can run it.
 * Memory: a few MB; the files are written tensor by tensor, a chunk at a
 * time. */
#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

struct shape {
    const char *name;
    int layers, hidden, inter, heads, kv_heads, vocab, shards;
    int tied;
};

static const struct shape shapes[] = {
    { "7b", 28, 3584, 18944, 28, 4, 152064, 4, 0 },
    { "0.5b", 24, 896, 4864, 14, 2, 151936, 1, 1 },
};

struct tensor {
    char name[96];
    int ndim;
    int64_t d0, d1;
    uint64_t n;
    int shard;
    uint64_t offset;
    float scale, center;
};

static struct tensor *tensors;
static size_t n_tensors;

static void add(const char *name, int ndim, int64_t d0, int64_t d1, float center, float scale)
{
    struct tensor *t = &tensors[n_tensors++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->ndim = ndim;
    t->d0 = d0;
    t->d1 = d1;
    t->n = (uint64_t)d0 * (uint64_t)(ndim == 2 ? d1 : 1);
    t->center = center;
    t->scale = scale;
}

static uint64_t rng_state[3];
static inline uint64_t next(int m)
{
    uint64_t x = rng_state[m];
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return rng_state[m] = x;
}

static inline uint16_t bf16_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

static inline float bf16_float(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* uniform in [-1, 1) from 24 bits */
static inline float unif(uint64_t r)
{
    return (float)(int32_t)((r >> 40) & 0xffffff) / 8388608.0f - 1.0f;
}

static int write_config(const char *dir, const struct shape *s)
{
    char path[4200];
    snprintf(path, sizeof path, "%.4000s/config.json", dir);
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fprintf(f,
            "{\n  \"architectures\": [\"Qwen2ForCausalLM\"],\n  \"model_type\": \"qwen2\",\n"
            "  \"hidden_size\": %d,\n  \"intermediate_size\": %d,\n  \"num_hidden_layers\": %d,\n"
            "  \"num_attention_heads\": %d,\n  \"num_key_value_heads\": %d,\n  \"vocab_size\": %d,\n"
            "  \"max_position_embeddings\": 4096,\n  \"rms_norm_eps\": 1e-06,\n  \"rope_theta\": 10000.0,\n"
            "  \"hidden_act\": \"silu\",\n  \"tie_word_embeddings\": %s,\n  \"torch_dtype\": \"bfloat16\"\n}\n",
            s->hidden, s->inter, s->layers, s->heads, s->kv_heads, s->vocab, s->tied ? "true" : "false");
    return fclose(f);
}

/* Copies `name` from `from` into `dir`; a missing source is only a warning
 * (the trio still serves stats and merge). */
static int copy_file(const char *from, const char *dir, const char *name)
{
    char src[4200], dst[4200];
    snprintf(src, sizeof src, "%.4000s/%s", from, name);
    snprintf(dst, sizeof dst, "%.4000s/%s", dir, name);
    FILE *in = fopen(src, "rb");
    if (!in) {
        fprintf(stderr, "bench_mk7b: warning: no %s to copy (generate will not run)\n", src);
        return 0;
    }
    FILE *out = fopen(dst, "wb");
    char buf[65536];
    size_t n;
    int rc = out ? 0 : -1;
    while (out && (n = fread(buf, 1, sizeof buf, in)) > 0)
        if (fwrite(buf, 1, n, out) != n)
            rc = -1;
    fclose(in);
    if (out && fclose(out) != 0)
        rc = -1;
    return rc;
}

static char *shard_name(const struct shape *s, int k)
{
    static char buf[64];
    if (s->shards == 1)
        snprintf(buf, sizeof buf, "model.safetensors");
    else
        snprintf(buf, sizeof buf, "model-%05d-of-%05d.safetensors", k + 1, s->shards);
    return buf;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: bench_mk7b DIR [7b|0.5b] [TOKENIZER_DIR]\n");
        return 2;
    }
    const char *root = argv[1];
    const char *tok_dir = argc > 3 ? argv[3] : MS_SOURCE_DIR "/demo/long";
    const struct shape *s = &shapes[0];
    if (argc > 2) {
        s = NULL;
        for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
            if (strcmp(argv[2], shapes[i].name) == 0)
                s = &shapes[i];
        if (!s) {
            fprintf(stderr, "bench_mk7b: unknown shape %s\n", argv[2]);
            return 2;
        }
    }
    const int h = s->hidden, kv = s->kv_heads * (s->hidden / s->heads);
    tensors = calloc((size_t)s->layers * 12 + 3, sizeof *tensors);
    if (!tensors)
        return 1;
    add("model.embed_tokens.weight", 2, s->vocab, h, 0, 0.02f);
    for (int l = 0; l < s->layers; l++) {
        char n[96];
#define L(suffix, nd, a, b, c, sc) snprintf(n, sizeof n, "model.layers.%d.%s", l, suffix); add(n, nd, a, b, c, sc)
        L("input_layernorm.weight", 1, h, 0, 1.0f, 0.05f);
        L("self_attn.q_proj.weight", 2, h, h, 0, 0.02f);
        L("self_attn.q_proj.bias", 1, h, 0, 0, 0.02f);
        L("self_attn.k_proj.weight", 2, kv, h, 0, 0.02f);
        L("self_attn.k_proj.bias", 1, kv, 0, 0, 0.02f);
        L("self_attn.v_proj.weight", 2, kv, h, 0, 0.02f);
        L("self_attn.v_proj.bias", 1, kv, 0, 0, 0.02f);
        L("self_attn.o_proj.weight", 2, h, h, 0, 0.02f);
        L("post_attention_layernorm.weight", 1, h, 0, 1.0f, 0.05f);
        L("mlp.gate_proj.weight", 2, s->inter, h, 0, 0.02f);
        L("mlp.up_proj.weight", 2, s->inter, h, 0, 0.02f);
        L("mlp.down_proj.weight", 2, h, s->inter, 0, 0.02f);
#undef L
    }
    add("model.norm.weight", 1, h, 0, 1.0f, 0.05f);
    if (!s->tied)
        add("lm_head.weight", 2, s->vocab, h, 0, 0.02f);

    /* shards: greedy by size */
    uint64_t total = 0;
    for (size_t i = 0; i < n_tensors; i++)
        total += tensors[i].n * 2;
    uint64_t per = total / (uint64_t)s->shards + 1, used = 0;
    int shard = 0;
    for (size_t i = 0; i < n_tensors; i++) {
        struct tensor *t = &tensors[i];
        if (used > 0 && used + t->n * 2 > per && shard + 1 < s->shards) {
            shard++;
            used = 0;
        }
        t->shard = shard;
        t->offset = used;
        used += t->n * 2;
    }

    static const char *const model_names[3] = { "base", "quick", "long" };
    char path[4096];
    if (strlen(root) > 3000) {
        fprintf(stderr, "bench_mk7b: directory name too long\n");
        return 2;
    }
    mkdir(root, 0755);
    for (int m = 0; m < 3; m++) {
        snprintf(path, sizeof path, "%s/%s", root, model_names[m]);
        if (mkdir(path, 0755) != 0 && errno != EEXIST) {
            perror(path);
            return 1;
        }
        if (write_config(path, s) != 0) {
            perror("config.json");
            return 1;
        }
        if (copy_file(tok_dir, path, "tokenizer.json") != 0 ||
            copy_file(tok_dir, path, "tokenizer_config.json") != 0) {
            perror("tokenizer");
            return 1;
        }
        if (s->shards > 1) {
            char ip[4200];
            snprintf(ip, sizeof ip, "%s/model.safetensors.index.json", path);
            FILE *f = fopen(ip, "w");
            if (!f)
                return 1;
            fprintf(f, "{\n  \"metadata\": {\"total_size\": %" PRIu64 "},\n  \"weight_map\": {\n", total);
            for (size_t i = 0; i < n_tensors; i++)
                fprintf(f, "    \"%s\": \"%s\"%s\n", tensors[i].name, shard_name(s, tensors[i].shard),
                        i + 1 < n_tensors ? "," : "");
            fprintf(f, "  }\n}\n");
            fclose(f);
        }
    }

    rng_state[0] = 0x9e3779b97f4a7c15ull;
    rng_state[1] = 0xbf58476d1ce4e5b9ull;
    rng_state[2] = 0x94d049bb133111ebull;
    const size_t chunk = (size_t)1 << 20;
    uint16_t *buf[3];
    for (int m = 0; m < 3; m++)
        if (!(buf[m] = malloc(chunk * sizeof(uint16_t))))
            return 1;
    for (int k = 0; k < s->shards; k++) {
        FILE *f[3];
        /* header */
        size_t cap = 1 << 20, len = 0;
        char *hdr = malloc(cap);
        if (!hdr)
            return 1;
        len += (size_t)snprintf(hdr + len, cap - len, "{\"__metadata__\":{\"format\":\"pt\"}");
        for (size_t i = 0; i < n_tensors; i++) {
            const struct tensor *t = &tensors[i];
            if (t->shard != k)
                continue;
            char sh[64];
            if (t->ndim == 2)
                snprintf(sh, sizeof sh, "[%" PRId64 ",%" PRId64 "]", t->d0, t->d1);
            else
                snprintf(sh, sizeof sh, "[%" PRId64 "]", t->d0);
            len += (size_t)snprintf(hdr + len, cap - len,
                                    ",\"%s\":{\"dtype\":\"BF16\",\"shape\":%s,\"data_offsets\":[%" PRIu64
                                    ",%" PRIu64 "]}", t->name, sh, t->offset, t->offset + t->n * 2);
        }
        hdr[len++] = '}';
        while ((len + 8) % 8)
            hdr[len++] = ' ';
        uint64_t hl = len;
        unsigned char l8[8];
        for (int b = 0; b < 8; b++)
            l8[b] = (unsigned char)(hl >> (8 * b));
        for (int m = 0; m < 3; m++) {
            snprintf(path, sizeof path, "%s/%s/%s", root, model_names[m], shard_name(s, k));
            f[m] = fopen(path, "wb");
            if (!f[m] || fwrite(l8, 1, 8, f[m]) != 8 || fwrite(hdr, 1, len, f[m]) != len) {
                perror(path);
                return 1;
            }
        }
        free(hdr);
        for (size_t i = 0; i < n_tensors; i++) {
            const struct tensor *t = &tensors[i];
            if (t->shard != k)
                continue;
            for (uint64_t e0 = 0; e0 < t->n; e0 += chunk) {
                size_t c = (size_t)(t->n - e0 < chunk ? t->n - e0 : chunk);
                for (size_t j = 0; j < c; j++) {
                    float bv = bf16_float(bf16_bits(t->center + t->scale * unif(next(0))));
                    float qv = bf16_float(bf16_bits(bv + 0.001f * unif(next(1))));
                    float lv = bf16_float(bf16_bits(qv + 0.0005f * unif(next(2))));
                    buf[0][j] = bf16_bits(bv);
                    buf[1][j] = bf16_bits(qv);
                    buf[2][j] = bf16_bits(lv);
                }
                for (int m = 0; m < 3; m++)
                    if (fwrite(buf[m], sizeof(uint16_t), c, f[m]) != c) {
                        perror("write");
                        return 1;
                    }
            }
        }
        for (int m = 0; m < 3; m++)
            if (fclose(f[m]) != 0) {
                perror("close");
                return 1;
            }
        fprintf(stderr, "shard %d of %d written\n", k + 1, s->shards);
    }
    printf("%s: %zu tensors, %.2f GB per model (%s shapes)\n", root, n_tensors, (double)total / 1e9, s->name);
    return 0;
}
