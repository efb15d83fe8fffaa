/* bench_lowrank: time and memory of the SVD-based merge methods on one
 * tensor of each Qwen2.5-0.5B matrix shape.
 *
 *   bench_lowrank [--models N] [--iterations N] [--method svd|lore|twin]...
 *                 [ROWSxCOLS ...]
 *
 * The default shapes are 896x896 (q/o projections), 4864x896 (gate/up) and
 * 151936x896 (the embedding). For each shape it times, in a child process
 * of its own so that the peak memory is that case's:
 *   svd    one svd_factor_f32 of a model's task vector
 *   lore   lore with `iterations` rounds (default 3) and mu 0.1 on task
 *          arithmetic, with the base and N models (default 1)
 *   twin   twin with energy 0.9 on task arithmetic, with N models
 * (all three unless --method picks some), every model at weight 0.5 (so
 * that twin's differences from M are not zero), and prints seconds and the
 * peak resident memory above the inputs (the inputs are N + 1 float32
 * tensors and the output, already in memory).
 * The data: a smooth random base, and models that differ from it by a
 * decaying spectrum of rank-one terms plus noise, like fine-tuned deltas.
 * The SVDs run with OpenBLAS at one thread, as in a merge. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "lm_error.h"
#include "merge_method.h"
#include "svd.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t rng = 88172645463325252ull;

/* Uniform in [-1, 1). */
static double uniform(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (double)(rng >> 11) * 0x1p-52 - 1.0;
}

/* A /proc/self/status field in kB ("VmRSS:", "VmHWM:"), or -1. */
static long status_kb(const char *field)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (!f)
        return -1;
    char line[256];
    long kb = -1;
    size_t len = strlen(field);
    while (fgets(line, sizeof line, f))
        if (strncmp(line, field, len) == 0) {
            kb = strtol(line + len, NULL, 10);
            break;
        }
    fclose(f);
    return kb;
}

/* base: a smooth pattern; model m: base + sum_l 0.02 / (l + 1) u_l v_l^T
 * over 16 rank-one terms + 0.002 noise. */
static void fill(float *base, float **models, int nm, uint64_t rows, uint64_t cols)
{
    for (uint64_t i = 0; i < rows; i++)
        for (uint64_t j = 0; j < cols; j++)
            base[i * cols + j] = (float)(0.02 * uniform());
    double *u = malloc(rows * sizeof(double)), *v = malloc(cols * sizeof(double));
    LM_ASSERT(u && v);
    for (int m = 0; m < nm; m++) {
        for (uint64_t e = 0; e < rows * cols; e++)
            models[m][e] = base[e] + (float)(0.002 * uniform());
        for (int l = 0; l < 16; l++) {
            for (uint64_t i = 0; i < rows; i++)
                u[i] = uniform();
            for (uint64_t j = 0; j < cols; j++)
                v[j] = uniform() * 0.02 / (l + 1);
            for (uint64_t i = 0; i < rows; i++)
                for (uint64_t j = 0; j < cols; j++)
                    models[m][i * cols + j] += (float)(u[i] * v[j]);
        }
    }
    free(u);
    free(v);
}

/* One case in this process: prints a line, returns 0 or 1. */
static int run_case(const char *what, uint64_t rows, uint64_t cols, int nm, int iterations)
{
    const uint64_t n = rows * cols;
    float *base = malloc(n * sizeof(float)), *out = malloc(n * sizeof(float));
    float *models[MERGE_MAX_MODELS];
    LM_ASSERT(base && out);
    for (int m = 0; m < nm; m++) {
        models[m] = malloc(n * sizeof(float));
        LM_ASSERT(models[m]);
    }
    fill(base, models, nm, rows, cols);
    memset(out, 0, n * sizeof(float));
    float *d = NULL;
    if (strcmp(what, "svd") == 0) {
        /* the task vector, an input like the others */
        d = malloc(n * sizeof(float));
        LM_ASSERT(d);
        for (uint64_t e = 0; e < n; e++)
            d[e] = models[0][e] - base[e];
    }
    const long rss0 = status_kb("VmRSS:");

    struct merge_scratch scratch = { 0 };
    int rc = 0;
    const double t0 = now();
    if (d) {
        struct svd f;
        svd_init(&f);
        rc = svd_factor_f32(&f, d, rows, cols, "bench");
        svd_deinit(&f);
        free(d);
    } else {
        const struct merge_method *m = strcmp(what, "lore") == 0 ? &merge_method_lore
                                                                  : &merge_method_twin;
        struct merge_tensor_params p;
        merge_tensor_params_default(&p, nm);
        p.iterations = iterations;
        for (int i = 0; i < nm; i++)
            p.weight[i] = 0.5;
        struct merge_tensor_job job = {
            .name = "bench", .n = n, .rows = rows, .cols = cols, .base = base,
            .models = (const float *const *)models, .n_models = nm, .params = &p, .out = out,
            .scratch = &scratch,
        };
        rc = m->merge_tensor(&job);
    }
    const double secs = now() - t0;
    const long hwm = status_kb("VmHWM:");
    if (rc)
        fprintf(stderr, "%s %llux%llu: %s\n", what, (unsigned long long)rows,
                (unsigned long long)cols, lm_last_error());
    else
        printf("| %llu x %llu | %s | %d | %.2f s | %.2f GB |\n", (unsigned long long)rows,
               (unsigned long long)cols, what, nm, secs, (double)(hwm - rss0) * 1024.0 / 1e9);
    fflush(stdout);
    merge_scratch_deinit(&scratch);
    free(base);
    free(out);
    for (int m = 0; m < nm; m++)
        free(models[m]);
    return rc ? 1 : 0;
}

int main(int argc, char **argv)
{
    int nm = 1, iterations = 3;
    static const char *const whats[] = { "svd", "lore", "twin" };
    bool pick[3] = { false, false, false }, picked = false;
    uint64_t shapes[16][2];
    int n_shapes = 0;
    for (int a = 1; a < argc; a++) {
        unsigned long long r, c;
        if (strcmp(argv[a], "--models") == 0 && a + 1 < argc) {
            nm = atoi(argv[++a]);
        } else if (strcmp(argv[a], "--iterations") == 0 && a + 1 < argc) {
            iterations = atoi(argv[++a]);
        } else if (strcmp(argv[a], "--method") == 0 && a + 1 < argc) {
            const char *m = argv[++a];
            int w = 0;
            while (w < 3 && strcmp(whats[w], m) != 0)
                w++;
            if (w == 3) {
                fprintf(stderr, "unknown method '%s' (svd, lore, twin)\n", m);
                return 2;
            }
            pick[w] = picked = true;
        } else if (sscanf(argv[a], "%llux%llu", &r, &c) == 2 && n_shapes < 16) {
            shapes[n_shapes][0] = r;
            shapes[n_shapes][1] = c;
            n_shapes++;
        } else {
            fprintf(stderr, "usage: %s [--models N] [--iterations N] [--method svd|lore|twin]... "
                    "[ROWSxCOLS ...]\n", argv[0]);
            return 2;
        }
    }
    if (nm < 1 || nm > MERGE_MAX_MODELS || iterations < 1) {
        fprintf(stderr, "models must be 1..%d, iterations >= 1\n", MERGE_MAX_MODELS);
        return 2;
    }
    if (n_shapes == 0) {
        static const uint64_t def[3][2] = { { 896, 896 }, { 4864, 896 }, { 151936, 896 } };
        memcpy(shapes, def, sizeof def);
        n_shapes = 3;
    }
    printf("lore: mu 0.1, %d rounds; twin: energy 0.9; both on task_arithmetic, weights 0.5\n",
           iterations);
    printf("| shape | method | models | time | peak memory above inputs |\n|---|---|---|---|---|\n");
    fflush(stdout);
    int fails = 0;
    for (int s = 0; s < n_shapes; s++)
        for (int w = 0; w < 3; w++) {
            if (picked && !pick[w])
                continue;
            pid_t pid = fork();
            if (pid == 0)
                _exit(run_case(whats[w], shapes[s][0], shapes[s][1], nm, iterations));
            int status = 0;
            if (pid < 0 || waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) ||
                WEXITSTATUS(status) != 0)
                fails++;
        }
    return fails ? 1 : 0;
}
