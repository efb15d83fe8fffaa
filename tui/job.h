/* One worker thread for long work (statistics, re-merges, previews,
 * writes), so that the UI thread never waits. The UI thread starts a job,
 * polls it once per loop iteration, may ask it to stop, and joins it when
 * it is done. Only one job runs at a time.
 *
 * The job function runs on the worker and must not call curses. It reports
 * progress with job_progress() and checks job_should_stop() (or passes
 * job_progress_cb as an lm_progress_fn, which does both). Its return code
 * and, on failure, lm_last_error() of the worker are kept for the UI. */
#ifndef MS_TUI_JOB_H
#define MS_TUI_JOB_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

struct job;
typedef int (*job_fn)(struct job *j, void *ud);

enum job_state { JOB_IDLE, JOB_RUNNING, JOB_DONE };

struct job {
    pthread_t thread;
    job_fn fn;
    void *ud;
    int kind;                /* caller's tag for what runs */
    atomic_int state;        /* enum job_state */
    atomic_bool stop;
    atomic_int progress_permille;
    atomic_int changed;      /* bumped on every report, for redraws */
    pthread_mutex_t lock;    /* guards `what` */
    char what[64];
    int rc;                  /* valid in JOB_DONE */
    char error[1024];
};

void job_init(struct job *j);
void job_deinit(struct job *j);   /* cancels and joins a running job */

/* Starts fn(j, ud) on the worker (signals blocked there). LM_EINVAL when a
 * job is running or not joined yet. */
int job_start(struct job *j, int kind, job_fn fn, void *ud);
enum job_state job_state(struct job *j);
bool job_busy(struct job *j);         /* running or done-but-not-joined */
void job_cancel(struct job *j);       /* asks it to stop; returns at once */
/* Waits for the job (if any) and makes it idle; its rc. */
int job_join(struct job *j);
/* job_cancel + job_join. */
void job_stop(struct job *j);

/* From the worker. */
void job_progress(struct job *j, double frac, const char *what);
bool job_should_stop(struct job *j);
/* lm_progress_fn with ud = the struct job. */
bool job_progress_cb(double frac, const char *what, void *ud);

/* For the UI: fraction in [0, 1] and the label of the last report. */
double job_fraction(struct job *j);
void job_label(struct job *j, char *buf, size_t size);

#endif
