/* Generation from the workspace's models; see ws_generate.h. */
#include "ws_generate.h"

#include <stdlib.h>
#include <string.h>

#include "chat.h"
#include "clock.h"
#include "generate.h"
#include "lm_error.h"
#include "merged_source.h"
#include "model.h"
#include "tokenizer.h"

struct ws_gen {
    struct workspace *ws;
    struct tok *tok;          /* loaded on first use, kept */
    char *tok_dir;            /* the directory it came from */
    struct tok_ids ids;       /* the prompt set, chat-encoded */
    struct tok_ids stops;
    bool has_prompt;
};

struct ws_gen_params ws_gen_default_params(void)
{
    struct ws_gen_params p = { .max_new_tokens = 128, .n_threads = 0 };
    return p;
}

struct ws_gen *ws_gen_new(struct workspace *ws)
{
    struct ws_gen *g = lm_calloc(1, sizeof(*g));
    if (g)
        g->ws = ws;
    return g;
}

static void drop_prompt(struct ws_gen *g)
{
    tok_ids_free(&g->ids);
    tok_ids_free(&g->stops);
    g->has_prompt = false;
}

void ws_gen_free(struct ws_gen *g)
{
    if (!g)
        return;
    drop_prompt(g);
    tok_free(g->tok);
    free(g->tok_dir);
    free(g);
}

/* The model whose tokenizer the merge uses (ws_tokenizer_dir): its config
 * holds the eos ids. */
static const struct ws_model *tokenizer_model(const struct workspace *ws)
{
    const char *dir = ws_tokenizer_dir(ws);
    for (int i = -1; i < ws_n_models(ws); i++)
        if (strcmp(ws_model(ws, i)->dir, dir) == 0)
            return ws_model(ws, i);
    return ws_model(ws, -1);
}

static int load_tokenizer(struct ws_gen *g, const char *dir)
{
    if (g->tok && strcmp(g->tok_dir, dir) == 0)
        return 0;
    tok_free(g->tok);
    free(g->tok_dir);
    g->tok_dir = NULL;
    g->tok = tok_load(dir);
    if (!g->tok)
        return lm_err_context(LM_EFORMAT, "preview needs a tokenizer");
    if (!(g->tok_dir = lm_strdup(dir))) {
        tok_free(g->tok);
        g->tok = NULL;
        return LM_ENOMEM;
    }
    return 0;
}

int ws_gen_set_prompt(struct ws_gen *g, const char *prompt)
{
    drop_prompt(g);
    if (!prompt || !*prompt)
        return lm_err(LM_EINVAL, "empty prompt");
    const struct ws_model *tm = tokenizer_model(g->ws);
    int rc = load_tokenizer(g, tm->dir);
    if (rc)
        return rc;
    struct chat_detected det;
    memset(&det, 0, sizeof(det));
    if ((rc = chat_detect_dir(tm->dir, &det)) != 0)
        return rc;
    rc = chat_encode(g->tok, det.format, chat_default_system(det.format, &det), prompt, &g->ids);
    if (!rc)
        rc = chat_stop_ids(g->tok, det.format, &tm->config, &g->stops);
    chat_detected_deinit(&det);
    if (rc)
        drop_prompt(g);
    else
        g->has_prompt = true;
    return rc;
}

size_t ws_gen_prompt_tokens(const struct ws_gen *g)
{
    return g->has_prompt ? g->ids.n : 0;
}

/* ===== Running ===== */

struct run {
    ws_gen_fn cb;
    void *ud;
    double t_first;      /* when the first new token came */
    int64_t n_tokens;
    double tok_per_s;
    bool cancelled;      /* a progress event was answered false */
};

static bool emit(struct run *r, struct ws_gen_event *ev)
{
    return r->cb ? r->cb(ev, r->ud) : true;
}

static bool emit_progress(struct run *r, double frac, const char *what)
{
    struct ws_gen_event ev = { .kind = WS_GEN_EVENT_PROGRESS, .frac = frac, .what = what };
    bool go_on = emit(r, &ev);
    r->cancelled = r->cancelled || !go_on;
    return go_on;
}

static bool on_merge_progress(double frac, const char *what, void *ud)
{
    return emit_progress(ud, frac, what);
}

static bool on_gen_event(const struct gen_event *ev, void *ud)
{
    struct run *r = ud;
    if (ev->kind == GEN_EVENT_PREFILL)
        return emit_progress(r, ev->n_total ? (double)ev->n_done / (double)ev->n_total : 1.0, "prompt");
    if (ev->kind == GEN_EVENT_TOKEN) {
        double t = lm_now_seconds();
        if (ev->index == 0)
            r->t_first = t;
        r->n_tokens = ev->index + 1;
        r->tok_per_s = t > r->t_first ? (double)ev->index / (t - r->t_first) : 0;
    }
    struct ws_gen_event out = {
        .kind = WS_GEN_EVENT_TEXT, .text = ev->text, .len = ev->len,
        .n_tokens = r->n_tokens, .tok_per_s = r->tok_per_s,
    };
    return emit(r, &out);
}

static int generate(struct ws_gen *g, struct model *m, const struct ws_gen_params *p, struct run *r,
                    struct ws_gen_result *res)
{
    struct ws_gen_event started = { .kind = WS_GEN_EVENT_STARTED };
    emit(r, &started);
    struct gen_params gp = gen_default_params();
    gp.max_new_tokens = p->max_new_tokens;
    gp.stop_ids = g->stops.data;
    gp.n_stop_ids = g->stops.n;
    struct gen_result gr;
    int rc = gen_run(m, g->tok, g->ids.data, g->ids.n, &gp, on_gen_event, r, &gr);
    if (rc)
        return rc;
    res->n_prompt = gr.n_prompt;
    res->n_tokens = gr.n_generated;
    res->stop = gen_stop_name(gr.stop);
    res->tok_per_s = gr.decode_seconds > 0 && gr.n_decoded > 0
                         ? (double)gr.n_decoded / gr.decode_seconds : r->tok_per_s;
    return 0;
}

int ws_gen_run(struct ws_gen *g, int which, const struct ws_gen_params *p, ws_gen_fn cb, void *ud,
               struct ws_gen_result *res)
{
    memset(res, 0, sizeof(*res));
    res->stop = "";
    if (!g->has_prompt)
        return lm_err(LM_EINVAL, "no prompt to generate from");
    if (which < WS_GEN_MERGED || which >= ws_n_models(g->ws))
        return lm_err(LM_EINVAL, "no model %d to generate with (the workspace has %d)", which,
                      ws_n_models(g->ws));
    struct run r = { .cb = cb, .ud = ud };
    struct model_params mp = model_default_params();
    mp.n_threads = p->n_threads;
    mp.n_ctx = p->max_new_tokens > 0 ? (int64_t)g->ids.n + p->max_new_tokens + 8 : 0;
    if (which == WS_GEN_MERGED) {
        struct model *m = ws_load_merged_model(g->ws, mp, on_merge_progress, &r);
        if (!m)
            return lm_err_context(r.cancelled ? LM_ECANCELED : LM_EFORMAT, "merged model");
        int rc = generate(g, m, p, &r, res);
        model_free(m);
        return rc;
    }
    if (!emit_progress(&r, 0, "loading"))
        return lm_err(LM_ECANCELED, "cancelled");
    const struct ws_model *wm = ws_model(g->ws, which);
    struct model_dir *d = model_dir_open(wm->dir);
    if (!d)
        return LM_EFORMAT;
    struct model_source src = model_dir_source(d);
    struct model *m = model_load(model_dir_config(d), &src, mp);
    int rc = m ? generate(g, m, p, &r, res) : LM_EFORMAT;
    model_free(m);
    model_dir_close(d);
    return rc;
}
