/* A small persistent thread pool for data-parallel loops.
 *
 * pool_for() runs fn(ud, i, worker) for every i in [0, n), handing out
 * indices dynamically, and returns when all are done. `worker` is in
 * [0, pool_n_workers()) and identifies per-thread scratch. The calling
 * thread takes part as worker 0. Results must not depend on which worker
 * ran an index: callers keep per-index outputs and combine them in order. */
#ifndef MS_COMMON_POOL_H
#define MS_COMMON_POOL_H

#include <stdint.h>

struct pool;

typedef void (*pool_fn)(void *ud, int64_t index, int worker);

/* n_workers <= 0 picks the number of online CPUs. NULL with an error. */
struct pool *pool_new(int n_workers);
void pool_free(struct pool *p);
int pool_n_workers(const struct pool *p);
void pool_for(struct pool *p, int64_t n, pool_fn fn, void *ud);

/* Number of online CPUs (at least 1). */
int pool_default_workers(void);

#endif
