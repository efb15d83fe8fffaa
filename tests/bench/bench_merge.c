/* bench_merge: stats and merge speed on synthetic checkpoints with real
 * Qwen2.5 shapes, against reading and writing the same bytes in the same run.
 *
 *   bench_merge DIR [0.5b|1.5b] [threads]
 *
 * Writes a base, a quick and a long model (bf16, random weights, small
 * deltas) under DIR (kept for reruns), then measures:
 *   read      reading the three files to nowhere (like `cat > /dev/null`)
 *   stats     `stats` on the trio (base + quick + long)
 *   rw        reading two inputs and writing + fsyncing one output of the size
 *   merge     a TIES merge of long onto quick (density 0.2), written as bf16
 *   layer     re-merging one layer in memory after an edit of its
 *             coefficients (the workbench's incremental step)
 * and peak RSS. Files are read warm (page cache) in every measurement. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "convert.h"
#include "fsutil.h"
#include "lm_error.h"
#include "safetensors.h"
#include "pool.h"
#include "workspace.h"

struct shape {
    const char *name;
    int hidden, inter, layers, heads, kv_heads, vocab;
    bool tied;
};

static const struct shape shapes[] = {
    { "0.5b", 896, 4864, 24, 14, 2, 151936, true },
    { "1.5b", 1536, 8960, 28, 12, 2, 151936, true },
};

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t rng = 88172645463325252ull;
static inline uint64_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

struct tdesc {
    char name[128];
    int ndim;
    int64_t shape[2];
};

static int describe(const struct shape *s, bool with_head, struct tdesc *t)
{
    int n = 0;
    int hd = s->hidden / s->heads;
#define ADD(nm, nd, a, b) do { snprintf(t[n].name, sizeof(t[n].name), "%s", nm); t[n].ndim = nd; \
        t[n].shape[0] = a; t[n].shape[1] = b; n++; } while (0)
    char name[128];
    ADD("model.embed_tokens.weight", 2, s->vocab, s->hidden);
    for (int l = 0; l < s->layers; l++) {
#define L(suffix, nd, a, b) snprintf(name, sizeof(name), "model.layers.%d.%s", l, suffix); ADD(name, nd, a, b)
        L("input_layernorm.weight", 1, s->hidden, 0);
        L("self_attn.q_proj.weight", 2, s->heads * hd, s->hidden);
        L("self_attn.q_proj.bias", 1, s->heads * hd, 0);
        L("self_attn.k_proj.weight", 2, s->kv_heads * hd, s->hidden);
        L("self_attn.k_proj.bias", 1, s->kv_heads * hd, 0);
        L("self_attn.v_proj.weight", 2, s->kv_heads * hd, s->hidden);
        L("self_attn.v_proj.bias", 1, s->kv_heads * hd, 0);
        L("self_attn.o_proj.weight", 2, s->hidden, s->heads * hd);
        L("post_attention_layernorm.weight", 1, s->hidden, 0);
        L("mlp.gate_proj.weight", 2, s->inter, s->hidden);
        L("mlp.up_proj.weight", 2, s->inter, s->hidden);
        L("mlp.down_proj.weight", 2, s->hidden, s->inter);
#undef L
    }
    ADD("model.norm.weight", 1, s->hidden, 0);
    if (with_head)
        ADD("lm_head.weight", 2, s->vocab, s->hidden);
#undef ADD
    return n;
}

/* Writes one model: bf16 values base_seed noise + delta_scale * own noise. */
static int write_model(const char *dir, const struct shape *s, bool tied, uint64_t seed, float delta)
{
    struct tdesc *t = calloc(2048, sizeof(*t));
    int n = describe(s, !tied, t);
    lm_mkdir_p(dir);
    struct st_writer *w = st_writer_new(dir, st_writer_default_params());
    if (!w)
        return -1;
    for (int i = 0; i < n; i++)
        st_writer_add(w, t[i].name, LM_DTYPE_BF16, t[i].ndim, t[i].shape);
    if (st_writer_begin(w))
        return -1;
    size_t chunk = 1 << 20;
    float *f = malloc(chunk * sizeof(float));
    uint16_t *h = malloc(chunk * sizeof(uint16_t));
    for (int i = 0; i < n; i++) {
        uint64_t ne = (uint64_t)t[i].shape[0] * (uint64_t)(t[i].ndim == 2 ? t[i].shape[1] : 1);
        uint64_t base_state = 0x9E3779B97F4A7C15ull * (uint64_t)(i + 1);
        uint64_t own_state = seed * 0xD1B54A32D192ED03ull + (uint64_t)i;
        for (uint64_t off = 0; off < ne; off += chunk) {
            size_t m = (size_t)(ne - off < chunk ? ne - off : chunk);
            for (size_t e = 0; e < m; e++) {
                rng = base_state;
                uint64_t a = next();
                base_state = rng;
                rng = own_state;
                uint64_t b = next();
                own_state = rng;
                float x = (float)((int64_t)(a >> 40) - (1 << 23)) / (float)(1 << 23) * 0.05f;
                float d = (float)((int64_t)(b >> 40) - (1 << 23)) / (float)(1 << 23) * delta;
                f[e] = x + d;
            }
            lm_convert_from_f32(h, LM_DTYPE_BF16, f, m);
            if (st_writer_write(w, h, m * 2))
                return -1;
        }
    }
    free(f);
    free(h);
    free(t);
    if (st_writer_commit(w))
        return -1;
    char cfg[1024], *path = lm_path_join(dir, "config.json");
    snprintf(cfg, sizeof(cfg),
             "{\"architectures\": [\"Qwen2ForCausalLM\"], \"model_type\": \"qwen2\", \"hidden_size\": %d,"
             " \"intermediate_size\": %d, \"num_hidden_layers\": %d, \"num_attention_heads\": %d,"
             " \"num_key_value_heads\": %d, \"vocab_size\": %d, \"tie_word_embeddings\": %s,"
             " \"torch_dtype\": \"bfloat16\"}\n",
             s->hidden, s->inter, s->layers, s->heads, s->kv_heads, s->vocab, tied ? "true" : "false");
    int rc = lm_write_file_atomic(path, cfg, strlen(cfg));
    free(path);
    return rc;
}

static uint64_t read_file(const char *path)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return 0;
    static char buf[1 << 20];
    uint64_t total = 0;
    ssize_t r;
    while ((r = read(fd, buf, sizeof(buf))) > 0)
        total += (uint64_t)r;
    close(fd);
    return total;
}

static void write_bytes(const char *path, uint64_t n)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    static char buf[1 << 20];
    memset(buf, 1, sizeof(buf));
    while (n > 0) {
        size_t m = n < sizeof(buf) ? (size_t)n : sizeof(buf);
        if (write(fd, buf, m) < 0)
            break;
        n -= m;
    }
    fsync(fd);
    close(fd);
    unlink(path);
}

static struct workspace *open_recipe(const char *dir, const char *json, int threads)
{
    struct recipe *r = recipe_parse(json, strlen(json), "bench", dir);
    if (!r) {
        fprintf(stderr, "recipe: %s\n", lm_last_error());
        exit(1);
    }
    struct ws_params p = ws_default_params();
    p.n_threads = threads;
    struct workspace *ws = ws_open(r, p);
    recipe_free(r);
    if (!ws) {
        fprintf(stderr, "open: %s\n", lm_last_error());
        exit(1);
    }
    return ws;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: bench_merge DIR [0.5b|1.5b] [threads]\n");
        return 2;
    }
    const char *root = argv[1];
    const struct shape *s = &shapes[0];
    if (argc > 2 && strcmp(argv[2], "1.5b") == 0)
        s = &shapes[1];
    int threads = argc > 3 ? atoi(argv[3]) : 0;
    char base[1024], quick[1024], lng[1024], out[1024], probe[1100];
    snprintf(base, sizeof(base), "%s/%s-base", root, s->name);
    snprintf(quick, sizeof(quick), "%s/%s-quick", root, s->name);
    snprintf(lng, sizeof(lng), "%s/%s-long", root, s->name);
    snprintf(out, sizeof(out), "%s/%s-merged", root, s->name);
    lm_mkdir_p(root);
    snprintf(probe, sizeof(probe), "%s/model.safetensors", lng);
    if (!lm_is_file(probe)) {
        double t0 = now();
        if (write_model(base, s, true, 1, 0.0f) || write_model(quick, s, true, 2, 0.002f) ||
            write_model(lng, s, false, 3, 0.004f)) {
            fprintf(stderr, "cannot write models: %s\n", lm_last_error());
            return 1;
        }
        printf("generated %s trio in %.1f s\n", s->name, now() - t0);
    }
    char files[3][1100];
    snprintf(files[0], sizeof(files[0]), "%s/model.safetensors", base);
    snprintf(files[1], sizeof(files[1]), "%s/model.safetensors", quick);
    snprintf(files[2], sizeof(files[2]), "%s/model.safetensors", lng);

    /* warm the page cache, then time plain reads of the same bytes */
    for (int i = 0; i < 3; i++)
        read_file(files[i]);
    double t0 = now();
    uint64_t bytes3 = 0;
    for (int i = 0; i < 3; i++)
        bytes3 += read_file(files[i]);
    double t_read3 = now() - t0;

    char json[4096];
    snprintf(json, sizeof(json),
             "{\"format\": \"mergescope-recipe/1\", \"base\": \"%s\", \"models\": [{\"name\": \"quick\", \"path\": \"%s\"},"
             " {\"name\": \"long\", \"path\": \"%s\"}], \"method\": \"ties\", \"params\": {\"density\": 0.2}}",
             base, quick, lng);
    t0 = now();
    struct workspace *ws = open_recipe(root, json, threads);
    double t_open = now() - t0;
    t0 = now();
    if (ws_stats_compute(ws, NULL, NULL)) {
        fprintf(stderr, "stats: %s\n", lm_last_error());
        return 1;
    }
    double t_stats = now() - t0;
    ws_free(ws);

    /* merge: TIES of long onto quick vs reading two inputs + writing one */
    snprintf(json, sizeof(json),
             "{\"format\": \"mergescope-recipe/1\", \"base\": \"%s\", \"models\": [{\"name\": \"long\", \"path\": \"%s\"}],"
             " \"method\": \"ties\", \"params\": {\"density\": 0.2}, \"output\": {\"dtype\": \"bf16\", \"config_from\": \"long\"}}",
             quick, lng);
    t0 = now();
    uint64_t in2 = read_file(files[1]) + read_file(files[2]);
    char tmpfile[1100];
    snprintf(tmpfile, sizeof(tmpfile), "%s/rw-baseline.bin", root);
    struct stat st;
    stat(files[2], &st);
    write_bytes(tmpfile, (uint64_t)st.st_size);
    double t_rw = now() - t0;
    (void)in2;

    ws = open_recipe(root, json, threads);
    t0 = now();
    if (ws_write(ws, out, ws_default_write_params(), NULL, NULL)) {
        fprintf(stderr, "merge: %s\n", lm_last_error());
        return 1;
    }
    double t_merge = now() - t0;

    /* incremental, as the workbench does it: a coefficient of one middle
     * layer changes (an override), ws_set_recipe invalidates that layer,
     * and only its tensors are merged again */
    int layer = s->layers / 2;
    ws_merge_all(ws, NULL, NULL);
    double best = 1e9;
    for (int rep = 0; rep < 4; rep++) {
        char edited[4096];
        snprintf(edited, sizeof(edited),
                 "{\"format\": \"mergescope-recipe/1\", \"base\": \"%s\", \"models\": [{\"name\": \"long\", \"path\": \"%s\"}],"
                 " \"method\": \"ties\", \"params\": {\"density\": 0.2}, \"output\": {\"dtype\": \"bf16\", \"config_from\": \"long\"},"
                 " \"overrides\": [{\"layers\": \"%d\", \"params\": {\"density\": %.2f}}]}",
                 quick, lng, layer, rep % 2 ? 0.25 : 0.3);
        struct recipe *r = recipe_parse(edited, strlen(edited), "bench", root);
        if (!r || ws_set_recipe(ws, r, NULL)) {
            fprintf(stderr, "edit: %s\n", lm_last_error());
            return 1;
        }
        recipe_free(r);
        t0 = now();
        ws_merge_layer(ws, layer, NULL, NULL);
        double t = now() - t0;
        if (t < best)
            best = t;
    }
    ws_free(ws);

    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("shape %s, %d threads, trio %.2f GB (bf16)\n", s->name, threads > 0 ? threads : pool_default_workers(),
           (double)bytes3 / 1e9);
    printf("  open workspace          %8.3f s\n", t_open);
    printf("  read 3 files (cat)      %8.3f s  %6.2f GB/s\n", t_read3, (double)bytes3 / t_read3 / 1e9);
    printf("  stats on the trio       %8.3f s  %6.2fx read\n", t_stats, t_stats / t_read3);
    printf("  read 2 + write 1        %8.3f s\n", t_rw);
    printf("  ties merge + write      %8.3f s  %6.2fx read+write\n", t_merge, t_merge / t_rw);
    printf("  re-merge layer %2d       %8.1f ms (best of 4 edits)\n", layer, best * 1e3);
    printf("  peak RSS                %8.2f GB (includes mapped file pages)\n", (double)ru.ru_maxrss / 1e6);
    return 0;
}
