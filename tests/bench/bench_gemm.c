/* bench_gemm: the batched product of prefill (kernel_gemm_nt) on one
 * thread, on each code path the CPU has, against what it replaced:
 * converting the weights to float32 blocks and calling OpenBLAS sgemm.
 *
 *   bench_gemm [--reps N] [--tokens N] [--file F] [rows cols ...]
 *
 * Default shapes are the 0.5B model's q (896 x 896), gate (4864 x 896) and
 * down (896 x 4864) projections, 128 tokens, bf16 and Q8_0 weights. The
 * variants alternate within each repetition (the machine may be shared),
 * and the best of --reps (default 5) is printed as GFLOP/s of thread CPU
 * time (less sensitive to other processes than wall time) with its ratio
 * to the sgemm row. The load average is printed too. */
#include <cblas.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "convert.h"
#include "kernels.h"
#include "lm_error.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t rng = 0x853c49e6748fea9bull;
static float unit(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((int64_t)(rng >> 40) - (1 << 23)) / (float)(1 << 23);
}

/* The replaced path: 512 KiB float32 blocks of rows, one sgemm each. */
static void sgemm_blocks(float *out, const unsigned char *w, enum lm_dtype t, int64_t rows, int64_t cols,
                         const float *x, int64_t n_tok, float *blk)
{
    int64_t br = LM_MAX((int64_t)8, LM_MIN((int64_t)2048, (int64_t)(128 * 1024) / cols));
    size_t rb = lm_dtype_bytes(t, (size_t)cols);
    for (int64_t r0 = 0; r0 < rows; r0 += br) {
        int64_t r1 = LM_MIN(r0 + br, rows);
        lm_convert_to_f32(blk, w + (size_t)r0 * rb, t, (size_t)((r1 - r0) * cols));
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n_tok, (int)(r1 - r0), (int)cols, 1.0f, x,
                    (int)cols, blk, (int)cols, 0.0f, out + r0, (int)rows);
    }
}

/* --file: weights read from a file's page-cache mapping (4 KiB pages), as
 * a model's are, instead of the heap. */
static const unsigned char *file_map;
static size_t file_size;

static void bench_shape(enum lm_dtype t, int64_t rows, int64_t cols, int64_t n_tok, int reps)
{
    size_t n = (size_t)(rows * cols);
    float *f = malloc(n * sizeof(float));
    unsigned char *w_heap = malloc(lm_dtype_bytes(t, n)), *w = w_heap;
    float *x = malloc((size_t)(n_tok * cols) * sizeof(float));
    float *xp = malloc((size_t)kernel_gemm_xpack_size(n_tok, cols) * sizeof(float));
    float *out = malloc((size_t)(n_tok * rows) * sizeof(float));
    float *blk = malloc((size_t)LM_MAX(128 * 1024, 8 * cols) * sizeof(float));
    float *scratch = malloc(KERNEL_GEMM_SCRATCH * sizeof(float));
    for (size_t i = 0; i < n; i++)
        f[i] = unit();
    for (int64_t i = 0; i < n_tok * cols; i++)
        x[i] = unit();
    lm_convert_from_f32(w, t, f, n);
    if (file_map && lm_dtype_bytes(t, n) + 4096 <= file_size)
        w = (unsigned char *)file_map + 4096; /* whatever the file holds */

    enum kernel_path paths[] = { KERNEL_PATH_AVX512, KERNEL_PATH_AVX2, KERNEL_PATH_PORTABLE };
    enum kernel_path best = kernel_path_active();
    double best_s[4] = { 1e30, 1e30, 1e30, 1e30 };
    for (int r = 0; r < reps; r++) {
        double t0 = now();
        sgemm_blocks(out, w, t, rows, cols, x, n_tok, blk);
        best_s[3] = LM_MIN(best_s[3], now() - t0);
        for (int p = 0; p < 3; p++) {
            if (paths[p] > best || (paths[p] == KERNEL_PATH_PORTABLE && r > 0))
                continue;
            enum kernel_path prev = kernel_force_path(paths[p]);
            t0 = now();
            kernel_gemm_pack_x(xp, x, cols, n_tok, cols, 0, (n_tok + KERNEL_GEMM_MR - 1) / KERNEL_GEMM_MR);
            kernel_gemm_nt(out, rows, w, t, cols, xp, n_tok, 0, rows, scratch);
            best_s[p] = LM_MIN(best_s[p], now() - t0);
            kernel_force_path(prev);
        }
    }
    double flop = 2.0 * (double)rows * (double)cols * (double)n_tok;
    printf("%-5s %5lld x %-5lld %4lld tok  sgemm(f32 blocks) %6.1f GFLOP/s", lm_dtype_name(t), (long long)rows,
           (long long)cols, (long long)n_tok, flop / best_s[3] * 1e-9);
    for (int p = 0; p < 3; p++)
        if (best_s[p] < 1e29)
            printf("  %s %6.1f (%.2fx)", kernel_path_name(paths[p]), flop / best_s[p] * 1e-9,
                   best_s[3] / best_s[p]);
    printf("\n");
    fflush(stdout);
    free(f);
    free(w_heap);
    free(x);
    free(xp);
    free(out);
    free(blk);
    free(scratch);
}

int main(int argc, char **argv)
{
    int reps = 5;
    int64_t n_tok = 128;
    int64_t shapes[16][2] = { { 896, 896 }, { 4864, 896 }, { 896, 4864 } };
    int n_shapes = 3, given = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--reps") == 0 && i + 1 < argc)
            reps = atoi(argv[++i]);
        else if (strcmp(argv[i], "--file") == 0 && i + 1 < argc) {
            int fd = open(argv[++i], O_RDONLY);
            struct stat st;
            if (fd < 0 || fstat(fd, &st) < 0)
                return 1;
            file_size = (size_t)st.st_size;
            void *p = mmap(NULL, file_size, PROT_READ, MAP_SHARED, fd, 0);
            close(fd);
            if (p == MAP_FAILED)
                return 1;
            file_map = p;
        } else if (strcmp(argv[i], "--tokens") == 0 && i + 1 < argc)
            n_tok = atoll(argv[++i]);
        else if (i + 1 < argc && given < 16) {
            shapes[given][0] = atoll(argv[i]);
            shapes[given][1] = atoll(argv[++i]);
            n_shapes = ++given;
        } else {
            fprintf(stderr, "usage: bench_gemm [--reps N] [--tokens N] [--file F] [rows cols ...]\n");
            return 2;
        }
    }
    double load[3] = { 0 };
    FILE *fl = fopen("/proc/loadavg", "r");
    if (fl) {
        if (fscanf(fl, "%lf %lf %lf", &load[0], &load[1], &load[2]) != 3)
            load[0] = -1;
        fclose(fl);
    }
    openblas_set_num_threads(1);
    printf("# one thread; kernels: %s; OpenBLAS core: %s; load average %.2f\n", kernel_impl_name(),
           openblas_get_corename(), load[0]);
    enum lm_dtype types[] = { LM_DTYPE_BF16, LM_DTYPE_Q8_0 };
    for (size_t k = 0; k < LM_ARRAY_SIZE(types); k++)
        for (int s = 0; s < n_shapes; s++)
            bench_shape(types[k], shapes[s][0], shapes[s][1], n_tok, reps);
    return 0;
}
