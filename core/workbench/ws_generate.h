/* Generation from one of the workspace's models: the merged model, the base
 * or source model i, prompted with the tokenizer and chat format the merge
 * uses (ws_tokenizer_dir: output.tokenizer_from's files, which `merge`
 * copies), streaming text to a callback that can cancel it.
 *
 *   g = ws_gen_new(ws)
 *   ws_gen_set_prompt(g, "...")        tokenizer (kept across prompts), chat
 *                                      format, prompt ids, stop ids
 *   ws_gen_run(g, WS_GEN_MERGED, ...)  load (merging what is not cached),
 *   ws_gen_run(g, WS_GEN_BASE, ...)    run the prompt, generate; the model
 *   ws_gen_run(g, 0, ...)              is freed before the call returns
 *   ws_gen_free(g)
 *
 * The merged model is built over the workspace's merged cache
 * (merged_source.h), so it runs exactly the weights `merge` writes. Stop
 * ids: the chat format's end-of-turn tokens plus the eos_token_id list of
 * the tokenizer model's config.json. Decoding is greedy; special tokens are
 * left out of the text.
 *
 * A session is used by one thread at a time; the workspace must not be
 * changed (ws_set_recipe) while a run is in progress. Errors are LM_E*
 * codes with the message in lm_last_error(). */
#ifndef MS_CORE_WORKBENCH_WS_GENERATE_H
#define MS_CORE_WORKBENCH_WS_GENERATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "workspace.h"

/* Which model ws_gen_run runs: WS_GEN_MERGED, WS_GEN_BASE, or a source
 * model's index 0..ws_n_models()-1 (as for ws_model). */
#define WS_GEN_MERGED (-2)
#define WS_GEN_BASE   (-1)

struct ws_gen_params {
    int64_t max_new_tokens;   /* <= 0: until a stop id or the context is full */
    int n_threads;            /* <= 0: one per CPU */
};
/* 128 new tokens, one thread per CPU. */
struct ws_gen_params ws_gen_default_params(void);

enum ws_gen_event_kind {
    WS_GEN_EVENT_PROGRESS,   /* loading or merging the model, running the prompt */
    WS_GEN_EVENT_STARTED,    /* the model is loaded; the prompt runs next */
    WS_GEN_EVENT_TEXT,       /* a new token and the text it completed, or at
                                the end the text held back (see below) */
};

struct ws_gen_event {
    enum ws_gen_event_kind kind;
    double frac;             /* PROGRESS: in [0, 1] */
    const char *what;        /* PROGRESS: "loading", the merge's labels, "prompt" */
    const char *text;        /* TEXT: valid UTF-8, not NUL-terminated, may be empty */
    size_t len;
    int64_t n_tokens;        /* TEXT: new tokens so far */
    double tok_per_s;        /* TEXT: decode speed so far (0 until the second token) */
};

/* Returns false to cancel: while loading or running the prompt the run
 * then fails with LM_ECANCELED; while generating it ends with stop
 * "cancelled". */
typedef bool (*ws_gen_fn)(const struct ws_gen_event *ev, void *ud);

struct ws_gen_result {
    int64_t n_prompt;        /* prompt tokens */
    int64_t n_tokens;        /* new tokens generated, a final stop id included */
    double tok_per_s;        /* decode speed over the whole run */
    const char *stop;        /* why it ended (static): "eos", "max-tokens", "context-full",
                                "cancelled" */
};

struct ws_gen;

/* A session over `ws` (borrowed; it must outlive the session). Loads
 * nothing yet. NULL with LM_ENOMEM. */
struct ws_gen *ws_gen_new(struct workspace *ws);
void ws_gen_free(struct ws_gen *g);

/* Encodes `prompt` as one user turn in the chat format detected from the
 * tokenizer model's directory, with the format's default system prompt, and
 * gathers the stop ids. The tokenizer is loaded on first use and again only
 * when the tokenizer directory changes. 0 or an error (no tokenizer, an
 * unreadable template); the previous prompt is dropped either way. */
int ws_gen_set_prompt(struct ws_gen *g, const char *prompt);

/* Tokens of the prompt set, 0 when none is. */
size_t ws_gen_prompt_tokens(const struct ws_gen *g);

/* Loads model `which` (WS_GEN_MERGED merges every tensor not cached yet,
 * reporting progress) with a context for the prompt and max_new_tokens,
 * runs the prompt and generates, streaming events to `cb` (may be NULL).
 * 0 with *res filled in (cancellation after the prompt included), or an
 * error: LM_EINVAL without a prompt or for a bad `which`, LM_ECANCELED,
 * or the load's, merge's or model's error naming the model. */
int ws_gen_run(struct ws_gen *g, int which, const struct ws_gen_params *p, ws_gen_fn cb, void *ud,
               struct ws_gen_result *res);

#endif
