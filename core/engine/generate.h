/* Generation: prompt ids -> prefill -> sample/decode loop, streaming the
 * text of each new token to a callback that can stop it. The CLI's
 * `generate`, the TUI's preview and `eval` all run through gen_run().
 *
 *   model_reset; forward(prompt) in batches      (GEN_EVENT_PREFILL after each)
 *   loop: id = sample(logits)
 *         id is a stop id        -> stop (GEN_STOP_EOS; its text is not streamed)
 *         GEN_EVENT_TOKEN(id, the text it completed)   callback false -> GEN_STOP_CANCELLED
 *         max_new_tokens reached -> GEN_STOP_MAX_TOKENS
 *         context full           -> GEN_STOP_CONTEXT
 *         logits = forward(id)
 *   GEN_EVENT_FLUSH with text still held back (an unfinished UTF-8 character)
 *
 * The streamed text is valid UTF-8: bytes of a character split across
 * tokens are held back until it is whole (tok_stream). */
#ifndef MS_CORE_ENGINE_GENERATE_H
#define MS_CORE_ENGINE_GENERATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "model.h"
#include "sampler.h"
#include "tokenizer.h"

enum gen_stop {
    GEN_STOP_EOS,          /* a stop id was sampled */
    GEN_STOP_MAX_TOKENS,   /* max_new_tokens were generated */
    GEN_STOP_CONTEXT,      /* the KV cache is full (n_ctx) */
    GEN_STOP_CANCELLED,    /* the callback returned false */
};
const char *gen_stop_name(enum gen_stop s);

struct gen_params {
    int64_t max_new_tokens;          /* <= 0: until a stop id or the context is full */
    struct sampler_params sampling;
    uint64_t seed;                   /* for sampling (greedy ignores it) */
    const int32_t *stop_ids;         /* borrowed; tokens that end generation */
    size_t n_stop_ids;
    bool skip_special;               /* leave special tokens out of the text */
};
/* 256 new tokens, greedy, seed 0, no stop ids, special tokens skipped. */
struct gen_params gen_default_params(void);

enum gen_event_kind {
    GEN_EVENT_PREFILL,   /* n_done of n_total prompt tokens processed */
    GEN_EVENT_TOKEN,     /* a new token and the text it completed */
    GEN_EVENT_FLUSH,     /* the end: text held back, as U+FFFD (only when non-empty) */
};

struct gen_event {
    enum gen_event_kind kind;
    int64_t n_done, n_total;   /* PREFILL */
    int32_t token;             /* TOKEN: its id; -1 otherwise */
    int64_t index;             /* TOKEN: 0 for the first new token */
    const char *text;          /* TOKEN, FLUSH: not NUL-terminated; "" without a tokenizer */
    size_t len;
};

/* Returns false to stop: during prefill the call then fails with
 * LM_ECANCELED; after it, generation ends with GEN_STOP_CANCELLED. */
typedef bool (*gen_callback)(const struct gen_event *ev, void *ud);

struct gen_result {
    int64_t n_prompt;
    int64_t n_generated;       /* tokens sampled, a final stop id included */
    enum gen_stop stop;
    int32_t stop_token;        /* the stop id sampled, or -1 */
    double prefill_seconds;    /* the prompt's forward passes */
    double decode_seconds;     /* the forward passes of generated tokens */
    int64_t n_decoded;         /* forward passes timed in decode_seconds */
    double sample_seconds;     /* time spent choosing tokens */
};

/* Runs the prompt (the model's cache is reset first) and generates. `t`
 * may be NULL (no text in the events). `cb` may be NULL. Returns 0 with
 * *res filled in (cancellation after the prompt included), or a negative
 * LM_E* code: LM_EINVAL for an empty prompt or one longer than the
 * context (n_prompt > n_ctx), LM_ECANCELED when stopped during the
 * prompt, or a model, sampler or tokenizer error. */
int gen_run(struct model *m, const struct tok *t, const int32_t *prompt, size_t n_prompt,
            const struct gen_params *p, gen_callback cb, void *ud, struct gen_result *res);

#endif
