/* bench_kernels: per-element cost of the merge, statistics and conversion
 * kernels on one thread, against copying the same bytes.
 *
 *   bench_kernels [--portable] [reps] [n ...]
 *
 * For each n (default: 13762560, one Qwen2.5-1.5B MLP matrix, and 46792704,
 * one layer's q/k/v/o/gate/up/down as a single array) it fills a bf16-valued
 * base and two models (base + small bf16 deltas, so that magnitudes tie as
 * they do in real checkpoints), then times each kernel `reps` times (default
 * 3) and prints the fastest run: wall milliseconds, nanoseconds per element,
 * and GB/s over the bytes the kernel must touch at least once (its float32
 * inputs and output; 2 + 4 bytes for bf16 -> f32; 4 + 4 for memcpy). The
 * last column is a hash of the result (output bits or raw sums), so that two
 * builds can be checked for identical results. --portable times the
 * portable kernels instead of the AVX2 ones. The machine may be shared:
 * the load average is printed, and min-of-reps is the figure to compare. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "convert.h"
#include "lm_error.h"
#include "merge_method.h"
#include "stats.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t rng = 0x853c49e6748fea9bull;
static uint64_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* Uniform in [-1, 1), roughly. */
static float unit(void)
{
    return (float)((int64_t)(next() >> 40) - (1 << 23)) / (float)(1 << 23);
}

static uint64_t hash_bytes(const void *p, size_t len)
{
    const unsigned char *c = p;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < len; i++) {
        h ^= c[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

/* Hash of a float array: every 8th value for speed, plus the last ones. */
static uint64_t hash_floats(const float *x, uint64_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (uint64_t e = 0; e < n; e += (e + 64 < n ? 7 : 1)) {
        uint32_t u;
        memcpy(&u, &x[e], sizeof u);
        h = (h ^ u) * 0x100000001b3ull;
    }
    return h;
}

static uint64_t hash_stats(const struct stats_raw *s)
{
    uint64_t h = hash_bytes(&s->base_sq, sizeof s->base_sq);
    h ^= hash_bytes(s->delta_sq, sizeof s->delta_sq) * 3;
    h ^= hash_bytes(s->dot, sizeof s->dot) * 5;
    h ^= hash_bytes(s->both_nonzero, sizeof s->both_nonzero) * 7;
    h ^= hash_bytes(s->opposite, sizeof s->opposite) * 11;
    h ^= (s->ties_kept * 13) ^ (s->ties_disagree * 17) ^ (s->sign_flips * 19);
    h ^= hash_bytes(s->topk_sq, sizeof s->topk_sq) * 23;
    h ^= hash_bytes(&s->merged_delta_sq, sizeof s->merged_delta_sq) * 29;
    return h;
}

struct data {
    uint64_t n;
    float *base, *x[2], *out, *copy;
    uint16_t *bf;
    struct merge_scratch scratch;
};

enum kernel {
    K_MEMCPY, K_BF16, K_LINEAR, K_TASK, K_TIES1, K_TIES2, K_DARE_TIES, K_DARE_LINEAR,
    K_BREADCRUMBS, K_SLERP, K_STATS1, K_STATS2, K_COUNT
};

static const char *const kernel_names[K_COUNT] = {
    "memcpy (f32 bytes)", "bf16 -> f32", "linear, 2 models", "task_arithmetic, 2 models",
    "ties d0.2, 1 model", "ties d0.2, 2 models", "dare_ties d0.2, 2 models",
    "dare_linear d0.2, 2 models", "breadcrumbs d0.2, 2 models", "slerp",
    "stats d0.2, 1 model + merged", "stats d0.2, 2 models + merged",
};

/* Bytes a kernel must move at least once per element. */
static double kernel_bytes(enum kernel k)
{
    switch (k) {
    case K_MEMCPY:      return 8;
    case K_BF16:        return 6;
    case K_LINEAR:      return 12;
    case K_TIES1:       return 12;
    case K_SLERP:       return 12;
    case K_STATS1:      return 12;
    case K_STATS2:      return 16;
    default:            return 16;
    }
}

static int run_merge(struct data *d, const struct merge_method *m, int nm, double density)
{
    struct merge_tensor_params p;
    merge_tensor_params_default(&p, nm);
    if (m->set_defaults)
        m->set_defaults(&p);
    for (int i = 0; i < nm; i++) {
        p.weight[i] = i ? 0.7 : 1.0;
        p.density[i] = density;
    }
    p.seed = 7;
    p.t = 0.3;
    struct merge_tensor_job job = {
        .name = "model.layers.14.mlp.up_proj.weight", .n = d->n, .base = d->base,
        .models = (const float *const *)d->x, .n_models = nm, .params = &p, .out = d->out,
        .scratch = &d->scratch,
    };
    return m->merge_tensor(&job);
}

/* Runs kernel k once; returns a hash of its result, 0 on error. */
static uint64_t run_kernel(struct data *d, enum kernel k)
{
    int rc = 0;
    switch (k) {
    case K_MEMCPY:
        memcpy(d->copy, d->base, d->n * sizeof(float));
        return hash_floats(d->copy, d->n);
    case K_BF16:
        lm_convert_to_f32(d->copy, d->bf, LM_DTYPE_BF16, d->n);
        return hash_floats(d->copy, d->n);
    case K_LINEAR:        rc = run_merge(d, &merge_method_linear, 2, 1.0); break;
    case K_TASK:          rc = run_merge(d, &merge_method_task_arithmetic, 2, 1.0); break;
    case K_TIES1:         rc = run_merge(d, &merge_method_ties, 1, 0.2); break;
    case K_TIES2:         rc = run_merge(d, &merge_method_ties, 2, 0.2); break;
    case K_DARE_TIES:     rc = run_merge(d, &merge_method_dare_ties, 2, 0.2); break;
    case K_DARE_LINEAR:   rc = run_merge(d, &merge_method_dare_linear, 2, 0.2); break;
    case K_BREADCRUMBS:   rc = run_merge(d, &merge_method_breadcrumbs, 2, 0.2); break;
    case K_SLERP:         rc = run_merge(d, &merge_method_slerp, 1, 1.0); break;
    case K_STATS1:
    case K_STATS2: {
        const int nm = k == K_STATS1 ? 1 : 2;
        const double dens[2] = { 0.2, 0.2 }, w[2] = { 1.0, 0.7 };
        struct stats_raw s;
        stats_raw_init(&s, nm);
        /* d->copy holds a merged tensor (set up in main) */
        rc = stats_accumulate(&s, d->base, (const float *const *)d->x, nm, d->copy, d->n, dens, w,
                              &d->scratch);
        if (rc)
            break;
        return hash_stats(&s) | 1;
    }
    case K_COUNT:
        break;
    }
    if (rc) {
        fprintf(stderr, "%s: %s\n", kernel_names[k], lm_last_error());
        return 0;
    }
    return hash_floats(d->out, d->n);
}

static void fill(struct data *d)
{
    const uint64_t n = d->n;
    for (uint64_t e = 0; e < n; e++) {
        float b = lm_bf16_to_f32(lm_f32_to_bf16(0.05f * unit()));
        d->base[e] = b;
        d->bf[e] = lm_f32_to_bf16(b);
        d->x[0][e] = lm_bf16_to_f32(lm_f32_to_bf16(b + 0.002f * unit()));
        d->x[1][e] = lm_bf16_to_f32(lm_f32_to_bf16(b + 0.004f * unit()));
    }
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--portable") == 0) {
        merge_simd_force_portable(1);
        lm_convert_force_scalar(1);
        argv++;
        argc--;
    }
    int reps = argc > 1 ? atoi(argv[1]) : 3;
    if (reps < 1)
        reps = 1;
    uint64_t sizes[8] = { 13762560u, 46792704u };
    int n_sizes = 2;
    if (argc > 2) {
        n_sizes = 0;
        for (int a = 2; a < argc && n_sizes < 8; a++)
            sizes[n_sizes++] = strtoull(argv[a], NULL, 10);
    }
    double load[3] = { 0, 0, 0 };
    FILE *f = fopen("/proc/loadavg", "r");
    if (f) {
        if (fscanf(f, "%lf %lf %lf", &load[0], &load[1], &load[2]) != 3)
            load[0] = load[1] = load[2] = -1;
        fclose(f);
    }
    printf("bench_kernels: %d reps (min shown), kernels %s, convert %s, load average %.2f %.2f %.2f\n",
           reps, merge_simd_name(), lm_convert_impl_name(), load[0], load[1], load[2]);

    for (int si = 0; si < n_sizes; si++) {
        struct data d;
        memset(&d, 0, sizeof d);
        d.n = sizes[si];
        d.base = lm_malloc_array(d.n, sizeof(float));
        d.x[0] = lm_malloc_array(d.n, sizeof(float));
        d.x[1] = lm_malloc_array(d.n, sizeof(float));
        d.out = lm_malloc_array(d.n, sizeof(float));
        d.copy = lm_malloc_array(d.n, sizeof(float));
        d.bf = lm_malloc_array(d.n, sizeof(uint16_t));
        if (!d.base || !d.x[0] || !d.x[1] || !d.out || !d.copy || !d.bf) {
            fprintf(stderr, "out of memory for n = %" PRIu64 "\n", d.n);
            return 1;
        }
        fill(&d);
        /* Touch every output page once before timing. */
        memset(d.out, 0, d.n * sizeof(float));
        memset(d.copy, 0, d.n * sizeof(float));

        printf("\nn = %" PRIu64 " elements (%.1f MB per float32 array)\n", d.n, (double)d.n * 4 / 1e6);
        printf("  %-32s %9s %9s %8s %8s  %s\n", "kernel", "wall ms", "cpu ms", "ns/elem", "GB/s", "result hash");
        const enum kernel order[] = {
            K_MEMCPY, K_BF16, K_LINEAR, K_TASK, K_TIES1, K_TIES2, K_DARE_TIES, K_DARE_LINEAR,
            K_BREADCRUMBS, K_SLERP, K_STATS1, K_STATS2,
        };
        for (size_t oi = 0; oi < LM_ARRAY_SIZE(order); oi++) {
            enum kernel k = order[oi];
            double best = 1e30, best_cpu = 1e30;
            uint64_t h = 0;
            for (int r = 0; r < reps; r++) {
                if ((k == K_STATS1 || k == K_STATS2) && r == 0) {
                    /* stats reads a merged tensor from d.copy, which the
                     * memcpy and bf16 runs overwrote: make it again */
                    run_merge(&d, &merge_method_ties, 2, 0.2);
                    memcpy(d.copy, d.out, d.n * sizeof(float));
                }
                double t0 = now(), c0 = cpu_now();
                h = run_kernel(&d, k);
                double t = now() - t0, c = cpu_now() - c0;
                if (t < best)
                    best = t;
                if (c < best_cpu)
                    best_cpu = c;
            }
            printf("  %-32s %9.1f %9.1f %8.3f %8.2f  %016" PRIx64 "\n", kernel_names[k], best * 1e3,
                   best_cpu * 1e3, best * 1e9 / (double)d.n,
                   kernel_bytes(k) * (double)d.n / best / 1e9, h);
            fflush(stdout);
        }
        merge_scratch_deinit(&d.scratch);
        free(d.base);
        free(d.x[0]);
        free(d.x[1]);
        free(d.out);
        free(d.copy);
        free(d.bf);
    }
    return 0;
}
