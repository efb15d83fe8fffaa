/* bench_decode: engine speed on random-weight checkpoints with the shapes of
 * Qwen2.5-0.5B and Qwen2.5-1.5B, against the machine's memory bandwidth
 * measured in the same run.
 *
 *   bench_decode DIR [--shape 0.5b|1.5b|all] [--threads N] [--prompt N] [--gen N] [--batch N]
 *                [--no-f32]
 *
 * Writes (once; reused when present) DIR/qwen2.5-<shape>-shape-bf16, a bf16
 * model directory with random weights (tied embeddings, as the real ones),
 * then reports for each shape:
 *   bandwidth   a multi-threaded read of a 2 GiB buffer (best of 3)
 *   prefill     tokens/s for a prompt of --prompt tokens (default 256)
 *   decode      tokens/s for --gen greedy tokens after it (default 32),
 *               and the effective GB/s: weight bytes read per token (every
 *               projection and lm_head) x tokens/s, as a share of bandwidth
 * for the weights read in place from the bf16 files (mmap) and, unless
 * --no-f32, from float32 copies in memory (what a merge in memory serves;
 * twice the bytes). A "bf16 scalar" row runs decode with the vector kernels
 * switched off. Weights are warm (page cache) before anything is timed. */
#include <cblas.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "convert.h"
#include "fsutil.h"
#include "kernels.h"
#include "lm_error.h"
#include "model.h"
#include "pool.h"
#include "safetensors.h"
#include "sampler.h"

struct shape {
    const char *name;
    int hidden, inter, layers, heads, kv_heads, vocab;
};

static const struct shape shapes[] = {
    { "0.5b", 896, 4864, 24, 14, 2, 151936 },
    { "1.5b", 1536, 8960, 28, 12, 2, 151936 },
};

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t rng_state = 0x853c49e6748fea9bull;

static uint64_t rng_next(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dull;
}

/* ===== Writing a checkpoint ===== */

#define POOL_VALUES (1u << 22)

/* Values cycle through a pool of random bf16 numbers (uniform in
 * [-0.05, 0.05]) from a per-tensor offset: values do not matter for speed. */
static int write_tensor_data(struct st_writer *w, const uint16_t *pool, uint64_t n, uint64_t start)
{
    uint64_t pos = start % POOL_VALUES;
    while (n > 0) {
        uint64_t m = LM_MIN(n, (uint64_t)POOL_VALUES - pos);
        if (st_writer_write(w, pool + pos, (size_t)m * 2) < 0)
            return -1;
        n -= m;
        pos = 0;
    }
    return 0;
}

static int write_checkpoint(const char *dir, const struct shape *s)
{
    int hd = s->hidden / s->heads;
    uint16_t *pool = malloc((size_t)POOL_VALUES * 2), one = lm_f32_to_bf16(1.0f);
    float *f = malloc((size_t)POOL_VALUES * sizeof(float));
    if (!pool || !f)
        return -1;
    for (uint32_t i = 0; i < POOL_VALUES; i++)
        f[i] = (float)((double)(rng_next() >> 11) / 9007199254740992.0 * 0.1 - 0.05);
    lm_convert_from_f32(pool, LM_DTYPE_BF16, f, POOL_VALUES);
    free(f);
    if (lm_mkdir_p(dir) < 0)
        return -1;
    struct st_writer *w = st_writer_new(dir, st_writer_default_params());
    if (!w)
        return -1;
    /* name, rows, cols (0: a vector of ones) */
    struct { char name[96]; int64_t rows, cols; } *t = calloc(16 * (size_t)s->layers + 4, sizeof(*t));
    int n = 0;
#define T(r, c, ...) do { snprintf(t[n].name, sizeof t[n].name, __VA_ARGS__); t[n].rows = r; t[n].cols = c; n++; } while (0)
    T(s->vocab, s->hidden, "model.embed_tokens.weight");
    for (int l = 0; l < s->layers; l++) {
        T(s->hidden, 0, "model.layers.%d.input_layernorm.weight", l);
        T(s->heads * hd, s->hidden, "model.layers.%d.self_attn.q_proj.weight", l);
        T(s->heads * hd, -1, "model.layers.%d.self_attn.q_proj.bias", l);
        T(s->kv_heads * hd, s->hidden, "model.layers.%d.self_attn.k_proj.weight", l);
        T(s->kv_heads * hd, -1, "model.layers.%d.self_attn.k_proj.bias", l);
        T(s->kv_heads * hd, s->hidden, "model.layers.%d.self_attn.v_proj.weight", l);
        T(s->kv_heads * hd, -1, "model.layers.%d.self_attn.v_proj.bias", l);
        T(s->hidden, s->heads * hd, "model.layers.%d.self_attn.o_proj.weight", l);
        T(s->hidden, 0, "model.layers.%d.post_attention_layernorm.weight", l);
        T(s->inter, s->hidden, "model.layers.%d.mlp.gate_proj.weight", l);
        T(s->inter, s->hidden, "model.layers.%d.mlp.up_proj.weight", l);
        T(s->hidden, s->inter, "model.layers.%d.mlp.down_proj.weight", l);
    }
    T(s->hidden, 0, "model.norm.weight");
#undef T
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        int64_t shape[2] = { t[i].rows, t[i].cols };
        rc = st_writer_add(w, t[i].name, LM_DTYPE_BF16, t[i].cols > 0 ? 2 : 1, shape);
    }
    if (rc == 0)
        rc = st_writer_begin(w);
    for (int i = 0; i < n && rc == 0; i++) {
        if (t[i].cols == 0) {   /* norm weights: ones */
            for (int64_t j = 0; j < t[i].rows && rc == 0; j++)
                rc = st_writer_write(w, &one, 2);
        } else {
            uint64_t ne = (uint64_t)t[i].rows * (uint64_t)(t[i].cols > 0 ? t[i].cols : 1);
            rc = write_tensor_data(w, pool, ne, rng_next());
        }
    }
    free(t);
    free(pool);
    if (rc < 0) {
        st_writer_abort(w);
        return -1;
    }
    if (st_writer_commit(w) < 0)
        return -1;
    char cfg[1024], *path = lm_path_join(dir, "config.json");
    snprintf(cfg, sizeof cfg,
             "{\"architectures\": [\"Qwen2ForCausalLM\"], \"model_type\": \"qwen2\", \"hidden_size\": %d,"
             " \"intermediate_size\": %d, \"num_hidden_layers\": %d, \"num_attention_heads\": %d,"
             " \"num_key_value_heads\": %d, \"vocab_size\": %d, \"tie_word_embeddings\": true,"
             " \"max_position_embeddings\": 32768, \"rope_theta\": 1000000.0, \"rms_norm_eps\": 1e-06,"
             " \"torch_dtype\": \"bfloat16\"}\n",
             s->hidden, s->inter, s->layers, s->heads, s->kv_heads, s->vocab);
    rc = path ? lm_write_file_atomic(path, cfg, strlen(cfg)) : -1;
    free(path);
    return rc;
}

/* ===== Memory bandwidth ===== */

struct bw_job {
    const float *buf;
    int64_t n_chunks, chunk;
    float *sums;
};

static void bw_run(void *ud, int64_t i, int worker)
{
    struct bw_job *j = ud;
    const float *p = j->buf + i * j->chunk;
    j->sums[worker] += kernel_dot(p, p, j->chunk);
}

/* GB/s of a read of `bytes` by all workers, best of three. */
static double measure_bandwidth(struct pool *pool, size_t bytes)
{
    int64_t chunk = 1 << 18; /* 1 MiB of floats per index */
    int64_t n_chunks = (int64_t)(bytes / sizeof(float)) / chunk;
    float *buf = malloc((size_t)(n_chunks * chunk) * sizeof(float));
    float *sums = calloc((size_t)pool_n_workers(pool), sizeof(float));
    if (!buf || !sums) {
        free(buf);
        free(sums);
        return 0.0;
    }
    for (int64_t i = 0; i < n_chunks * chunk; i++)
        buf[i] = (float)(i & 7) * 0.125f;
    struct bw_job job = { buf, n_chunks, chunk, sums };
    double best = 0.0;
    for (int r = 0; r < 3; r++) {
        double t0 = now();
        pool_for(pool, n_chunks, bw_run, &job);
        double gbs = (double)(n_chunks * chunk) * sizeof(float) / (now() - t0) / 1e9;
        if (gbs > best)
            best = gbs;
    }
    free(buf);
    free(sums);
    return best;
}

/* ===== A float32 copy of every tensor (what a merge in memory serves) ===== */

struct f32_source {
    struct model_source inner;
    float **copies;
    int n, cap;
};

static int f32_get(void *ud, const char *name, struct model_tensor_view *out)
{
    struct f32_source *fs = ud;
    int rc = fs->inner.get(fs->inner.ud, name, out);
    if (rc != 0)
        return rc;
    if (fs->n == fs->cap)
        return lm_err(LM_ENOMEM, "too many tensors");
    size_t n = 1;
    for (int i = 0; i < out->ndim; i++)
        n *= (size_t)out->shape[i];
    float *f = lm_malloc_array(n, sizeof(float));
    if (!f)
        return LM_ENOMEM;
    lm_convert_to_f32(f, out->data, out->dtype, n);
    fs->copies[fs->n++] = f;
    out->dtype = LM_DTYPE_F32;
    out->data = f;
    return 0;
}

/* ===== One measurement ===== */

struct result {
    double prefill_tps, decode_tps, weight_gb;
};

static int run(struct model *m, int n_prompt, int n_gen, struct result *r)
{
    const struct model_info *info = model_get_info(m);
    int32_t *ids = malloc((size_t)(n_prompt + 1) * sizeof(int32_t));
    float *logits = malloc((size_t)info->n_vocab * sizeof(float));
    if (!ids || !logits)
        return -1;
    for (int i = 0; i <= n_prompt; i++)
        ids[i] = (int32_t)(rng_next() % 150000);
    /* warm-up: touches every weight once (page cache, first-touch faults);
     * without a prompt it is the one token decoding starts from */
    model_reset(m);
    if (model_forward(m, ids, LM_MAX(1, LM_MIN(n_prompt, 8)), logits, MODEL_LOGITS_LAST) < 0)
        return -1;
    if (n_prompt > 0)
        model_reset(m);
    double t0 = now();
    if (n_prompt > 0 && model_forward(m, ids, n_prompt, logits, MODEL_LOGITS_LAST) < 0)
        return -1;
    double t1 = now();
    for (int i = 0; i < n_gen; i++) {
        int32_t id = sampler_argmax(logits, info->n_vocab);
        if (model_forward(m, &id, 1, logits, MODEL_LOGITS_LAST) < 0)
            return -1;
    }
    double t2 = now();
    r->prefill_tps = n_prompt > 0 ? n_prompt / (t1 - t0) : 0.0;
    r->decode_tps = n_gen / (t2 - t1);
    r->weight_gb = (double)info->weight_bytes / 1e9;
    free(ids);
    free(logits);
    return 0;
}

static void print_row(const char *shape, const char *what, const struct result *r, double bw)
{
    double gbs = r->weight_gb * r->decode_tps;
    char prefill[32];
    if (r->prefill_tps > 0)
        snprintf(prefill, sizeof prefill, "%.1f", r->prefill_tps);
    else
        snprintf(prefill, sizeof prefill, "-");
    printf("%-6s %-12s %9.2f %12s %11.2f %9.2f %7.0f%%\n", shape, what, r->weight_gb, prefill,
           r->decode_tps, gbs, 100.0 * gbs / bw);
    fflush(stdout);
}

static void usage(void)
{
    fprintf(stderr, "usage: bench_decode DIR [--shape 0.5b|1.5b|all] [--threads N] [--prompt N] "
            "[--gen N] [--batch N] [--no-f32]\n");
}

int main(int argc, char **argv)
{
    const char *dir = NULL, *which = "all";
    int threads = 0, n_prompt = 256, n_gen = 32, n_batch = 0;
    bool f32 = true;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--shape") == 0 && i + 1 < argc)
            which = argv[++i];
        else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (strcmp(argv[i], "--prompt") == 0 && i + 1 < argc)
            n_prompt = atoi(argv[++i]);
        else if (strcmp(argv[i], "--gen") == 0 && i + 1 < argc)
            n_gen = atoi(argv[++i]);
        else if (strcmp(argv[i], "--batch") == 0 && i + 1 < argc)
            n_batch = atoi(argv[++i]);
        else if (strcmp(argv[i], "--no-f32") == 0)
            f32 = false;
        else if (argv[i][0] != '-' && !dir)
            dir = argv[i];
        else {
            usage();
            return 2;
        }
    }
    if (!dir || n_prompt < 0 || n_gen < 1) {
        usage();
        return 2;
    }
    struct pool *pool = pool_new(threads);
    if (!pool) {
        fprintf(stderr, "bench_decode: %s\n", lm_last_error());
        return 1;
    }
    printf("# kernels: %s, OpenBLAS core: %s, threads: %d, prompt %d tokens, %d decoded tokens\n",
           kernel_impl_name(), openblas_get_corename(), pool_n_workers(pool), n_prompt, n_gen);
    double bw = measure_bandwidth(pool, (size_t)2 << 30);
    printf("# memory bandwidth (multi-threaded read of 2 GiB, best of 3): %.2f GB/s\n", bw);
    printf("%-6s %-12s %9s %12s %11s %9s %8s\n", "shape", "weights", "GB/token", "prefill t/s",
           "decode t/s", "GB/s", "of bw");

    int status = 0;
    for (size_t k = 0; k < LM_ARRAY_SIZE(shapes); k++) {
        const struct shape *s = &shapes[k];
        if (strcmp(which, "all") != 0 && strcmp(which, s->name) != 0)
            continue;
        char sub[64];
        snprintf(sub, sizeof sub, "qwen2.5-%s-shape-bf16", s->name);
        char *mdir = lm_path_join(dir, sub), *cfg = mdir ? lm_path_join(mdir, "config.json") : NULL;
        if (!cfg)
            return 1;
        if (!lm_is_file(cfg)) {
            fprintf(stderr, "bench_decode: writing %s ...\n", mdir);
            double t0 = now();
            if (write_checkpoint(mdir, s) < 0) {
                fprintf(stderr, "bench_decode: %s\n", lm_last_error());
                return 1;
            }
            fprintf(stderr, "bench_decode: written in %.1f s\n", now() - t0);
        }
        struct model_dir *d = model_dir_open(mdir);
        struct model_params p = model_default_params();
        p.pool = pool;
        p.n_batch = n_batch;
        struct model_source src = d ? model_dir_source(d) : (struct model_source){ 0 };
        struct model *m = d ? model_load(model_dir_config(d), &src, p) : NULL;
        struct result r;
        if (!m || run(m, n_prompt, n_gen, &r) < 0) {
            fprintf(stderr, "bench_decode: %s: %s\n", mdir, lm_last_error());
            status = 1;
        } else {
            print_row(s->name, "bf16 mmap", &r, bw);
            int prev = kernel_force_scalar(1);
            struct result rs;
            if (run(m, 0, LM_MAX(4, n_gen / 4), &rs) == 0) {
                rs.prefill_tps = 0;
                print_row(s->name, "bf16 scalar", &rs, bw);
            }
            kernel_force_scalar(prev);
        }
        model_free(m);
        if (d && f32) {
            struct f32_source fs = { model_dir_source(d), calloc(4096, sizeof(float *)), 0, 4096 };
            struct model_source fsrc = { f32_get, &fs, "f32 copies" };
            m = fs.copies ? model_load(model_dir_config(d), &fsrc, p) : NULL;
            if (!m || run(m, n_prompt, n_gen, &r) < 0) {
                fprintf(stderr, "bench_decode: f32 copies of %s: %s\n", mdir, lm_last_error());
                status = 1;
            } else {
                print_row(s->name, "f32 memory", &r, bw);
            }
            model_free(m);
            for (int i = 0; i < fs.n; i++)
                free(fs.copies[i]);
            free(fs.copies);
        }
        model_dir_close(d);
        free(mdir);
        free(cfg);
    }
    pool_free(pool);
    return status;
}
