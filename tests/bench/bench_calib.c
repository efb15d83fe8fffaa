/* Calibration cost: time and peak memory of the aim and sens passes on a
 * model directory, against one plain forward pass over the same tokens in
 * the same run (the engine's prefill), which is the unit the passes are
 * made of.
 *
 *   bench_calib MODEL_DIR CALIB.jsonl aim|sens|sens2 [samples] [threads] [chat]
 *
 * MODEL_DIR serves as the base and as the model(s) (sens2: two models, so
 * that the alignment pass runs too); it needs a tokenizer.json (copy one in,
 * e.g. Qwen's). Run one method per process: the peak RSS reported is the
 * process's. The on-disk cache is turned off. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "calib.h"
#include "lm_error.h"
#include "model.h"
#include "recipe.h"
#include "workspace.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double peak_rss_gb(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss / 1e6;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: bench_calib MODEL_DIR CALIB.jsonl aim|sens|sens2 [samples] [threads] [chat]\n");
        return 2;
    }
    const char *dir = argv[1], *calib = argv[2], *which = argv[3];
    long samples = argc > 4 ? atol(argv[4]) : 16;
    int threads = argc > 5 ? atoi(argv[5]) : 0;
    const char *chat = argc > 6 ? argv[6] : "auto";
    bool two = strcmp(which, "sens2") == 0;
    const char *method = strcmp(which, "aim") == 0 ? "aim" : "sens";
    setenv("MERGESCOPE_CACHE_DIR", "off", 1);

    char json[8192];
    snprintf(json, sizeof(json),
             "{\"format\": \"mergescope-recipe/1\", \"base\": \"%s\", \"models\": ["
             "{\"name\": \"a\", \"path\": \"%s\"}%s%s%s], \"method\": \"%s\", "
             "\"calibration\": {\"file\": \"%s\", \"samples\": %ld, \"chat\": \"%s\"}}",
             dir, dir, two ? ", {\"name\": \"b\", \"path\": \"" : "", two ? dir : "", two ? "\"}" : "",
             method, calib, samples, chat);
    struct recipe *r = recipe_parse(json, strlen(json), "bench", ".");
    struct ws_params wp = ws_default_params();
    wp.n_threads = threads;
    struct workspace *ws = r ? ws_open(r, wp) : NULL;
    recipe_free(r);
    if (!ws) {
        fprintf(stderr, "bench_calib: %s\n", lm_last_error());
        return 1;
    }
    struct ws_calib_cost plan;
    if (ws_calib_plan(ws, &plan) != 0) {
        fprintf(stderr, "bench_calib: %s\n", lm_last_error());
        return 1;
    }
    printf("%s on %s: %zu samples, %lld tokens (longest %lld), estimate %.3g GFLOP, %.0f MB extra\n",
           which, dir, plan.samples, (long long)plan.tokens, (long long)plan.longest, plan.flops / 1e9,
           (double)plan.memory_bytes / 1e6);

    /* Baseline: the same sequences through one plain forward pass (prefill,
     * no logits beyond the last), on the same thread count. */
    struct model_dir *d = model_dir_open(dir);
    struct model_params mp = model_default_params();
    mp.n_threads = threads;
    mp.n_ctx = plan.longest;
    struct model_source src = model_dir_source(d);
    struct model *m = d ? model_load(model_dir_config(d), &src, mp) : NULL;
    if (!m) {
        fprintf(stderr, "bench_calib: %s\n", lm_last_error());
        return 1;
    }
    /* A forward pass costs the same whatever the ids: run fixed ids in
     * sequences as long as the longest sample until as many tokens as the
     * calibration set holds have gone through. */
    int32_t *ids = calloc((size_t)plan.longest, sizeof(int32_t));
    for (int64_t i = 0; i < plan.longest; i++)
        ids[i] = (int32_t)(i * 7919 % model_get_info(m)->n_vocab);
    float *logits = malloc((size_t)model_get_info(m)->n_vocab * sizeof(float));
    double t0 = now();
    int64_t left = plan.tokens;
    while (left > 0) {
        int64_t k = left < plan.longest ? left : plan.longest;
        model_reset(m);
        if (model_forward(m, ids, k, logits, MODEL_LOGITS_LAST) != 0) {
            fprintf(stderr, "bench_calib: %s\n", lm_last_error());
            return 1;
        }
        left -= k;
    }
    double t_fwd = now() - t0;
    model_free(m);
    model_dir_close(d);
    free(ids);
    free(logits);
    double rss_before = peak_rss_gb();

    t0 = now();
    if (ws_calibrate(ws, NULL, NULL) != 0) {
        fprintf(stderr, "bench_calib: %s\n", lm_last_error());
        return 1;
    }
    double t_cal = now() - t0;
    printf("baseline: one forward pass over %lld tokens in %.2f s (%.0f tok/s); peak RSS %.2f GB\n",
           (long long)plan.tokens, t_fwd, (double)plan.tokens / t_fwd, rss_before);
    printf("%s calibration: %.2f s = %.2fx the forward pass; peak RSS %.2f GB\n", which, t_cal,
           t_cal / t_fwd, peak_rss_gb());
    ws_free(ws);
    return 0;
}
