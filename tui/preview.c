/* Preview generation on the worker thread. */
#include "preview.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "job.h"
#include "lm_error.h"
#include "ws_generate.h"

void preview_init(struct preview *p, struct workspace *ws, int n_threads)
{
    memset(p, 0, sizeof(*p));
    pthread_mutex_init(&p->lock, NULL);
    p->ws = ws;
    p->n_threads = n_threads;
    p->max_new_tokens = 128;
}

void preview_deinit(struct preview *p)
{
    for (int i = 0; i < PREVIEW_MAX_PANES; i++)
        free(p->panes[i].text);
    free(p->prompt);
    ws_gen_free(p->gen);
    pthread_mutex_destroy(&p->lock);
}

int preview_set_prompt(struct preview *p, const char *prompt)
{
    char *c = lm_strdup(prompt);
    if (!c)
        return LM_ENOMEM;
    free(p->prompt);
    p->prompt = c;
    return 0;
}

void preview_reset(struct preview *p)
{
    pthread_mutex_lock(&p->lock);
    int n = p->compare ? 2 + ws_n_models(p->ws) : 1;
    if (n > PREVIEW_MAX_PANES)
        n = PREVIEW_MAX_PANES;
    for (int i = 0; i < PREVIEW_MAX_PANES; i++) {
        struct preview_pane *pn = &p->panes[i];
        char *text = pn->text;
        size_t cap = pn->cap;
        memset(pn, 0, sizeof(*pn));
        pn->text = text;
        pn->cap = cap;
        if (text)
            text[0] = '\0';
        if (i == 0)
            snprintf(pn->title, sizeof(pn->title), "merged (%s)", ws_method(p->ws)->name);
        else if (i == 1 && !ws_has_base(p->ws))
            snprintf(pn->title, sizeof(pn->title), "base (none)");
        else if (i < n)
            snprintf(pn->title, sizeof(pn->title), "%s", ws_model(p->ws, i - 2)->name);
    }
    p->n_panes = n;
    p->generation++;
    pthread_mutex_unlock(&p->lock);
}

void preview_snapshot(struct preview *p, int i, struct preview_pane *out, char *text, size_t size)
{
    pthread_mutex_lock(&p->lock);
    *out = p->panes[i];
    out->text = NULL;
    snprintf(text, size, "%s", p->panes[i].text ? p->panes[i].text : "");
    pthread_mutex_unlock(&p->lock);
}

/* ===== The job ===== */

struct pane_run {
    struct preview *p;
    struct job *job;
    int pane;
};

static void pane_append(struct preview *p, int i, const char *s, size_t n)
{
    struct preview_pane *pn = &p->panes[i];
    if (pn->len + n + 1 > pn->cap) {
        size_t cap = (pn->len + n + 1) * 2;
        char *t = realloc(pn->text, cap);
        if (!t)
            return;
        pn->text = t;
        pn->cap = cap;
    }
    memcpy(pn->text + pn->len, s, n);
    pn->len += n;
    pn->text[pn->len] = '\0';
}

static bool on_event(const struct ws_gen_event *ev, void *ud)
{
    struct pane_run *r = ud;
    struct preview *p = r->p;
    if (ev->kind == WS_GEN_EVENT_PROGRESS) {
        job_progress(r->job, ev->frac, ev->what);
        return !job_should_stop(r->job);
    }
    pthread_mutex_lock(&p->lock);
    struct preview_pane *pn = &p->panes[r->pane];
    if (ev->kind == WS_GEN_EVENT_STARTED) {
        pn->started = true;
        pthread_mutex_unlock(&p->lock);
        return !job_should_stop(r->job);
    }
    if (ev->len)
        pane_append(p, r->pane, ev->text, ev->len);
    pn->n_tokens = ev->n_tokens;
    pn->tok_per_s = ev->tok_per_s;
    pthread_mutex_unlock(&p->lock);
    job_progress(r->job, 1.0, "generating");
    return !job_should_stop(r->job);
}

/* Runs pane i: 0 the merged model, 1 the base, 2.. the source models. */
static int run_pane(struct preview *p, struct job *j, int i)
{
    struct ws_gen_params gp = ws_gen_default_params();
    gp.max_new_tokens = p->max_new_tokens;
    gp.n_threads = p->n_threads;
    struct pane_run r = { p, j, i };
    struct ws_gen_result res;
    int rc = ws_gen_run(p->gen, i == 0 ? WS_GEN_MERGED : i - 2, &gp, on_event, &r, &res);
    pthread_mutex_lock(&p->lock);
    struct preview_pane *pn = &p->panes[i];
    pn->done = true;
    if (rc == 0) {
        snprintf(pn->stop, sizeof(pn->stop), "%s", res.stop);
        pn->tok_per_s = res.tok_per_s;
    } else {
        snprintf(pn->error, sizeof(pn->error), "%s", lm_last_error());
    }
    pthread_mutex_unlock(&p->lock);
    return rc;
}

int preview_job(struct job *j, void *ud)
{
    struct preview *p = ud;
    if (!p->prompt || !*p->prompt)
        return lm_err(LM_EINVAL, "empty prompt");
    if (!p->gen && !(p->gen = ws_gen_new(p->ws)))
        return LM_ENOMEM;
    job_progress(j, 0, "tokenizer");
    int rc = ws_gen_set_prompt(p->gen, p->prompt);
    if (!rc)
        rc = run_pane(p, j, 0);
    for (int i = 1; !rc && i < p->n_panes && !job_should_stop(j); i++) {
        if (i == 1 && !ws_has_base(p->ws)) {
            /* a base-less merge: nothing to run in the base's pane */
            pthread_mutex_lock(&p->lock);
            p->panes[1].done = true;
            snprintf(p->panes[1].error, sizeof(p->panes[1].error), "the recipe has no base model");
            pthread_mutex_unlock(&p->lock);
            continue;
        }
        run_pane(p, j, i);
    }
    return rc;
}
