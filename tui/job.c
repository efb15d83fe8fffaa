/* The worker thread behind struct job. */
#include "job.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "lm_error.h"

void job_init(struct job *j)
{
    memset(j, 0, sizeof(*j));
    atomic_init(&j->state, JOB_IDLE);
    atomic_init(&j->stop, false);
    atomic_init(&j->progress_permille, 0);
    atomic_init(&j->changed, 0);
    pthread_mutex_init(&j->lock, NULL);
}

void job_deinit(struct job *j)
{
    job_stop(j);
    pthread_mutex_destroy(&j->lock);
}

static void *job_main(void *arg)
{
    struct job *j = arg;
    lm_clear_error();
    int rc = j->fn(j, j->ud);
    j->rc = rc;
    if (rc)
        snprintf(j->error, sizeof(j->error), "%s", lm_last_error());
    atomic_store(&j->state, JOB_DONE);
    atomic_fetch_add(&j->changed, 1);
    return NULL;
}

int job_start(struct job *j, int kind, job_fn fn, void *ud)
{
    if (atomic_load(&j->state) != JOB_IDLE)
        return lm_err(LM_EINVAL, "a job is already running");
    j->fn = fn;
    j->ud = ud;
    j->kind = kind;
    j->rc = 0;
    j->error[0] = '\0';
    atomic_store(&j->stop, false);
    atomic_store(&j->progress_permille, 0);
    pthread_mutex_lock(&j->lock);
    j->what[0] = '\0';
    pthread_mutex_unlock(&j->lock);
    atomic_store(&j->state, JOB_RUNNING);
    /* Signals go to the UI thread only. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int err = pthread_create(&j->thread, NULL, job_main, j);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (err) {
        atomic_store(&j->state, JOB_IDLE);
        return lm_err(LM_ENOMEM, "cannot start a worker thread (error %d)", err);
    }
    return 0;
}

enum job_state job_state(struct job *j)
{
    return (enum job_state)atomic_load(&j->state);
}

bool job_busy(struct job *j)
{
    return atomic_load(&j->state) != JOB_IDLE;
}

void job_cancel(struct job *j)
{
    atomic_store(&j->stop, true);
}

int job_join(struct job *j)
{
    if (atomic_load(&j->state) == JOB_IDLE)
        return 0;
    pthread_join(j->thread, NULL);
    atomic_store(&j->state, JOB_IDLE);
    return j->rc;
}

void job_stop(struct job *j)
{
    job_cancel(j);
    job_join(j);
}

void job_progress(struct job *j, double frac, const char *what)
{
    int pm = (int)(frac * 1000.0 + 0.5);
    pm = pm < 0 ? 0 : pm > 1000 ? 1000 : pm;
    atomic_store(&j->progress_permille, pm);
    if (what) {
        pthread_mutex_lock(&j->lock);
        if (strcmp(j->what, what) != 0)
            snprintf(j->what, sizeof(j->what), "%s", what);
        pthread_mutex_unlock(&j->lock);
    }
    atomic_fetch_add(&j->changed, 1);
}

bool job_should_stop(struct job *j)
{
    return atomic_load(&j->stop);
}

bool job_progress_cb(double frac, const char *what, void *ud)
{
    struct job *j = ud;
    job_progress(j, frac, what);
    return !job_should_stop(j);
}

double job_fraction(struct job *j)
{
    return atomic_load(&j->progress_permille) / 1000.0;
}

void job_label(struct job *j, char *buf, size_t size)
{
    pthread_mutex_lock(&j->lock);
    snprintf(buf, size, "%s", j->what);
    pthread_mutex_unlock(&j->lock);
}
