/* Previews: one prompt run through the merged model (from the workspace's
 * in-memory merge) and, in compare mode, through the base and each source
 * model, streaming into one pane each. The generation (ws_generate.h) runs
 * as a job on the worker thread; the UI reads the panes under the lock. */
#ifndef MS_TUI_PREVIEW_H
#define MS_TUI_PREVIEW_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "workspace.h"

struct job;
struct ws_gen;

#define PREVIEW_MAX_PANES WS_MAX_SOURCES

struct preview_pane {
    char title[64];
    char *text;            /* generated text (valid UTF-8), NUL-terminated */
    size_t len, cap;
    int64_t n_tokens;
    double tok_per_s;      /* decode speed so far */
    bool started, done;
    char stop[32];         /* why it ended: "eos", "max tokens", "cancelled" */
    char error[256];
};

struct preview {
    pthread_mutex_t lock;
    struct preview_pane panes[PREVIEW_MAX_PANES];
    int n_panes;
    /* Settings read by the job (set by the UI thread while no job runs). */
    char *prompt;
    bool compare;
    int64_t max_new_tokens;
    int n_threads;
    struct workspace *ws;
    struct ws_gen *gen;          /* made on first use, kept (it keeps the tokenizer) */
    int generation;              /* bumped on each start */
};

void preview_init(struct preview *p, struct workspace *ws, int n_threads);
void preview_deinit(struct preview *p);

/* Sets the prompt (copied) and clears the panes. UI thread, no job running. */
int preview_set_prompt(struct preview *p, const char *prompt);
/* Resets the panes for a new run (titles from the workspace). UI thread. */
void preview_reset(struct preview *p);

/* The job function: ud = struct preview. */
int preview_job(struct job *j, void *ud);

/* Copies pane i's state for drawing (text truncated to `size`). */
void preview_snapshot(struct preview *p, int i, struct preview_pane *out, char *text, size_t size);

#endif
