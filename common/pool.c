#include "pool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <unistd.h>

#include "lm_error.h"

struct pool {
    int n_workers;
    pthread_t *threads;
    pthread_mutex_t lock;
    pthread_cond_t work_ready;
    pthread_cond_t work_done;
    /* the current loop */
    pool_fn fn;
    void *ud;
    int64_t n;
    atomic_int_fast64_t next;
    uint64_t generation;   /* bumped for each loop */
    int active;            /* helper threads still inside the loop */
    bool quit;
};

struct pool_thread_arg {
    struct pool *pool;
    int worker;
};

int pool_default_workers(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)LM_MIN(n, 256) : 1;
}

static void run_indices(struct pool *p, int worker)
{
    for (;;) {
        int64_t i = atomic_fetch_add(&p->next, 1);
        if (i >= p->n)
            break;
        p->fn(p->ud, i, worker);
    }
}

static void *pool_thread(void *arg_)
{
    struct pool_thread_arg *arg = arg_;
    struct pool *p = arg->pool;
    int worker = arg->worker;
    free(arg);
    uint64_t seen = 0;
    pthread_mutex_lock(&p->lock);
    for (;;) {
        while (!p->quit && p->generation == seen)
            pthread_cond_wait(&p->work_ready, &p->lock);
        if (p->quit)
            break;
        seen = p->generation;
        pthread_mutex_unlock(&p->lock);
        run_indices(p, worker);
        pthread_mutex_lock(&p->lock);
        if (--p->active == 0)
            pthread_cond_signal(&p->work_done);
    }
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

struct pool *pool_new(int n_workers)
{
    if (n_workers <= 0)
        n_workers = pool_default_workers();
    struct pool *p = lm_calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->n_workers = n_workers;
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->work_ready, NULL);
    pthread_cond_init(&p->work_done, NULL);
    p->threads = lm_calloc((size_t)n_workers, sizeof(pthread_t));
    if (!p->threads) {
        pool_free(p);
        return NULL;
    }
    for (int w = 1; w < n_workers; w++) {
        struct pool_thread_arg *arg = lm_malloc(sizeof(*arg));
        if (!arg) {
            p->n_workers = w;
            pool_free(p);
            return NULL;
        }
        arg->pool = p;
        arg->worker = w;
        if (pthread_create(&p->threads[w], NULL, pool_thread, arg) != 0) {
            free(arg);
            p->n_workers = w;
            pool_free(p);
            lm_err(LM_ENOMEM, "cannot start worker thread %d", w);
            return NULL;
        }
    }
    return p;
}

void pool_free(struct pool *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->lock);
    p->quit = true;
    pthread_cond_broadcast(&p->work_ready);
    pthread_mutex_unlock(&p->lock);
    for (int w = 1; w < p->n_workers && p->threads; w++)
        pthread_join(p->threads[w], NULL);
    pthread_mutex_destroy(&p->lock);
    pthread_cond_destroy(&p->work_ready);
    pthread_cond_destroy(&p->work_done);
    free(p->threads);
    free(p);
}

int pool_n_workers(const struct pool *p)
{
    return p->n_workers;
}

void pool_for(struct pool *p, int64_t n, pool_fn fn, void *ud)
{
    if (n <= 0)
        return;
    if (p->n_workers == 1 || n == 1) {
        for (int64_t i = 0; i < n; i++)
            fn(ud, i, 0);
        return;
    }
    pthread_mutex_lock(&p->lock);
    p->fn = fn;
    p->ud = ud;
    p->n = n;
    atomic_store(&p->next, 0);
    p->active = p->n_workers - 1;
    p->generation++;
    pthread_cond_broadcast(&p->work_ready);
    pthread_mutex_unlock(&p->lock);

    run_indices(p, 0);

    pthread_mutex_lock(&p->lock);
    while (p->active > 0)
        pthread_cond_wait(&p->work_done, &p->lock);
    pthread_mutex_unlock(&p->lock);
}
