/* Preview generation on the worker thread. */
#include "preview.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "chat.h"
#include "generate.h"
#include "job.h"
#include "clock.h"
#include "lm_error.h"
#include "merged_source.h"
#include "model.h"
#include "tokenizer.h"

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
    tok_free(p->tok);
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
    double t_first;
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

static bool on_event(const struct gen_event *ev, void *ud)
{
    struct pane_run *r = ud;
    struct preview *p = r->p;
    if (ev->kind == GEN_EVENT_PREFILL) {
        job_progress(r->job, ev->n_total ? (double)ev->n_done / (double)ev->n_total : 1.0, "prompt");
        return !job_should_stop(r->job);
    }
    double t = lm_now_seconds();
    pthread_mutex_lock(&p->lock);
    struct preview_pane *pn = &p->panes[r->pane];
    if (ev->len)
        pane_append(p, r->pane, ev->text, ev->len);
    if (ev->kind == GEN_EVENT_TOKEN) {
        if (ev->index == 0)
            r->t_first = t;
        pn->n_tokens = ev->index + 1;
        pn->tok_per_s = t > r->t_first ? (double)ev->index / (t - r->t_first) : 0;
    }
    pthread_mutex_unlock(&p->lock);
    job_progress(r->job, 1.0, "generating");
    return !job_should_stop(r->job);
}

static void pane_error(struct preview *p, int i, const char *msg)
{
    pthread_mutex_lock(&p->lock);
    snprintf(p->panes[i].error, sizeof(p->panes[i].error), "%s", msg);
    p->panes[i].done = true;
    pthread_mutex_unlock(&p->lock);
}

static int run_pane(struct preview *p, struct job *j, int i, struct model *m, const struct tok_ids *ids,
                    const struct tok_ids *stops)
{
    struct gen_params gp = gen_default_params();
    gp.max_new_tokens = p->max_new_tokens;
    gp.stop_ids = stops->data;
    gp.n_stop_ids = stops->n;
    struct pane_run r = { p, j, i, lm_now_seconds() };
    pthread_mutex_lock(&p->lock);
    p->panes[i].started = true;
    pthread_mutex_unlock(&p->lock);
    struct gen_result res;
    int rc = gen_run(m, p->tok, ids->data, ids->n, &gp, on_event, &r, &res);
    pthread_mutex_lock(&p->lock);
    struct preview_pane *pn = &p->panes[i];
    pn->done = true;
    if (rc == 0) {
        snprintf(pn->stop, sizeof(pn->stop), "%s", gen_stop_name(res.stop));
        if (res.decode_seconds > 0 && res.n_decoded > 0)
            pn->tok_per_s = (double)res.n_decoded / res.decode_seconds;
    } else {
        snprintf(pn->error, sizeof(pn->error), "%s", lm_last_error());
    }
    pthread_mutex_unlock(&p->lock);
    return rc;
}

/* The model whose tokenizer the merge uses: output.tokenizer_from, else
 * output.config_from, else the base. */
static const struct ws_model *tokenizer_model(const struct workspace *ws)
{
    const struct recipe *r = ws_recipe(ws);
    const char *name = r->output.tokenizer_from ? r->output.tokenizer_from : r->output.config_from;
    for (int i = 0; name && i < ws_n_models(ws); i++)
        if (strcmp(ws_model(ws, i)->name, name) == 0)
            return ws_model(ws, i);
    return ws_model(ws, -1);
}

static int prepare(struct preview *p, struct tok_ids *ids, struct tok_ids *stops)
{
    const struct ws_model *tm = tokenizer_model(p->ws);
    if (!p->tok || strcmp(p->tok_dir, tm->dir) != 0) {
        tok_free(p->tok);
        p->tok = tok_load(tm->dir);
        if (!p->tok)
            return lm_err_context(LM_EFORMAT, "preview needs a tokenizer");
        snprintf(p->tok_dir, sizeof(p->tok_dir), "%s", tm->dir);
    }
    struct chat_detected det;
    memset(&det, 0, sizeof(det));
    int rc = chat_detect_dir(tm->dir, &det);
    if (rc)
        return rc;
    rc = chat_encode(p->tok, det.format, chat_default_system(det.format, &det), p->prompt, ids);
    if (!rc)
        rc = chat_stop_ids(p->tok, det.format, stops);
    for (int k = 0; !rc && k < tm->config.n_eos_token_ids; k++)
        rc = tok_ids_push(stops, (int32_t)tm->config.eos_token_ids[k]);
    chat_detected_deinit(&det);
    return rc;
}

int preview_job(struct job *j, void *ud)
{
    struct preview *p = ud;
    if (!p->prompt || !*p->prompt)
        return lm_err(LM_EINVAL, "empty prompt");
    struct tok_ids ids = { 0 }, stops = { 0 };
    job_progress(j, 0, "tokenizer");
    int rc = prepare(p, &ids, &stops);
    struct model_params mp = model_default_params();
    mp.n_threads = p->n_threads;
    mp.n_ctx = (int64_t)ids.n + p->max_new_tokens + 8;
    if (!rc) {
        struct model *m = ws_load_merged_model(p->ws, mp, job_progress_cb, j);
        if (!m) {
            rc = lm_err_context(LM_EFORMAT, "merged model");
            pane_error(p, 0, lm_last_error());
        } else {
            rc = run_pane(p, j, 0, m, &ids, &stops);
            model_free(m);
        }
    }
    for (int i = 1; !rc && i < p->n_panes && !job_should_stop(j); i++) {
        const struct ws_model *wm = ws_model(p->ws, i - 2);
        job_progress(j, 0, "loading");
        struct model_dir *d = model_dir_open(wm->dir);
        struct model *m = NULL;
        if (d) {
            struct model_source src = model_dir_source(d);
            m = model_load(model_dir_config(d), &src, mp);
        }
        if (!m)
            pane_error(p, i, lm_last_error());
        else
            run_pane(p, j, i, m, &ids, &stops);
        model_free(m);
        model_dir_close(d);
    }
    tok_ids_free(&ids);
    tok_ids_free(&stops);
    return rc;
}
