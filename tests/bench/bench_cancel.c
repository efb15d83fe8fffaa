/* How long a pass takes to stop once asked: the workbench's promise is
 * that quitting or editing cancels within 100 ms, even in the middle of a
 * 7B model's largest tensor.
 *
 *   bench_cancel RECIPE [SECONDS ...]
 *
 * For each delay (default 0.5 1 2 4 s), a worker thread runs the statistics
 * pass (then, a second time, the merge into the preview cache) with a
 * progress callback that returns false once the main thread has set a flag
 * after the delay; the time from the flag to the pass's return is the
 * latency. The page cache is as the previous run left it. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "clock.h"
#include "lm_error.h"
#include "recipe.h"
#include "workspace.h"

struct run {
    struct workspace *ws;
    bool merge;
    atomic_bool stop;
    double stopped_at, returned_at;
    int rc;
    double frac;
};

static bool on_progress(double frac, const char *what, void *ud)
{
    (void)what;
    struct run *r = ud;
    r->frac = frac;
    return !atomic_load(&r->stop);
}

static void *worker(void *ud)
{
    struct run *r = ud;
    r->rc = r->merge ? ws_merge_all(r->ws, on_progress, r) : ws_stats_compute(r->ws, on_progress, r);
    r->returned_at = lm_now_seconds();
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: bench_cancel RECIPE [SECONDS ...]\n");
        return 2;
    }
    static const double defaults[] = { 0.5, 1, 2, 4 };
    int n_delays = argc > 2 ? argc - 2 : 4;
    struct recipe *rec = recipe_load(argv[1]);
    if (!rec) {
        fprintf(stderr, "%s\n", lm_last_error());
        return 1;
    }
    for (int pass = 0; pass < 2; pass++) {
        for (int k = 0; k < n_delays; k++) {
            double delay = argc > 2 ? atof(argv[2 + k]) : defaults[k];
            struct workspace *ws = ws_open(rec, ws_default_params());
            if (!ws) {
                fprintf(stderr, "%s\n", lm_last_error());
                return 1;
            }
            ws_set_preview_dtype(ws, WS_PREVIEW_Q8);
            struct run r = { .ws = ws, .merge = pass == 1 };
            atomic_init(&r.stop, false);
            pthread_t th;
            pthread_create(&th, NULL, worker, &r);
            struct timespec ts = { (time_t)delay, (long)((delay - (double)(time_t)delay) * 1e9) };
            nanosleep(&ts, NULL);
            r.stopped_at = lm_now_seconds();
            atomic_store(&r.stop, true);
            pthread_join(th, NULL);
            printf("%-6s stopped after %.1f s at %5.1f%%: returned in %7.1f ms (%s)\n",
                   pass ? "merge" : "stats", delay, 100.0 * r.frac, (r.returned_at - r.stopped_at) * 1e3,
                   r.rc == LM_ECANCELED ? "cancelled" : r.rc ? lm_last_error() : "finished first");
            ws_free(ws);
        }
    }
    recipe_free(rec);
    return 0;
}
