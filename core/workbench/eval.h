/* Evaluation the way the long-to-short paper measures it: greedy answers to
 * a benchmark of questions with known answers, scored by
 *   n            problems evaluated
 *   accuracy     fraction whose extracted answer matches the reference
 *   mean_tokens  mean response length in generated tokens (a final stop
 *                token not counted)
 *   reflective   fraction of responses with at least one reflective phrase
 *
 * Answer extraction (eval_extract_answer) looks first at the text after the
 * last "</think>" (the final answer of a reasoning model), then at the whole
 * response; in each it takes the content of the last well-formed
 * \boxed{...} (braces nested to any depth), else what follows the last
 * "The answer is" / "the answer is" up to the end of the line, with a
 * leading ':' and '$' and a trailing sentence period or '$' removed.
 *
 * Answers compare as numbers when both read as one (eval_parse_number):
 * integers exactly, anything else within a relative tolerance of 1e-6;
 * otherwise as text with spaces and '$' removed.
 *
 * Reflective phrases (eval_count_reflective), case-insensitive, each
 * starting at a word boundary: "wait" and "recap" as whole words (not
 * "awaited", "waiting", "recapture"), and "re-examine", "double-check",
 * "let me check", "let me just verify", "let me just check" (which may run
 * on: "double-checking"). */
#ifndef MS_CORE_WORKBENCH_EVAL_H
#define MS_CORE_WORKBENCH_EVAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bench.h"
#include "chat.h"
#include "model.h"
#include "tokenizer.h"
#include "workspace.h"

/* ===== Scoring ===== */

/* The answer in `len` bytes of `text` (see above), as a heap string the
 * caller frees, or NULL when there is none (or on allocation failure, with
 * *oom set when `oom` is non-NULL). */
char *eval_extract_answer(const char *text, size_t len, bool *oom);

/* Reads `s` as one number: optional sign; digits with optional thousands
 * separators (commas between groups of exactly three digits); an optional
 * decimal part; or a fraction a/b or \frac{a}{b} (\dfrac, \tfrac) of such
 * numbers; surrounding spaces and '$' and a trailing '%' or '.' are
 * ignored. *is_integer is set for a whole number written without a decimal
 * point or fraction. False when `s` is not one number. */
bool eval_parse_number(const char *s, double *out, bool *is_integer);

/* True when the extracted answer matches the reference (see above).
 * `extracted` may be NULL (no answer: false). */
bool eval_answer_matches(const char *extracted, const char *reference);

/* How many reflective phrases `text` contains (see above). */
size_t eval_count_reflective(const char *text, size_t len);

/* ===== Running ===== */

/* The instruction the paper appends to every question for chat models. */
#define EVAL_PAPER_INSTRUCTION "Please reason step by step, and put your final answer within \\boxed{}."
/* The default template for chat models: the question, a new line, the
 * instruction. Models without a chat format get the question alone. */
#define EVAL_DEFAULT_TEMPLATE "{question}\n" EVAL_PAPER_INSTRUCTION

/* Replaces every "{question}" in `tmpl` with `question`. Heap string, caller
 * frees; NULL on allocation failure. */
char *eval_apply_template(const char *tmpl, const char *question);

struct eval_params {
    const char *prompt_template;   /* with {question}; NULL: question alone */
    enum chat_format chat;
    const char *system;            /* NULL: none */
    int64_t max_new_tokens;        /* > 0 */
    const int32_t *stop_ids;       /* borrowed */
    size_t n_stop_ids;
};

/* What one problem gave. */
struct eval_result {
    bool done;          /* evaluated (false for problems an interruption skipped) */
    char *response;     /* generated text, special tokens left out */
    char *extracted;    /* NULL: no answer found */
    bool correct;
    int64_t tokens;     /* generated tokens, a final stop token not counted */
    size_t n_reflective;/* reflective phrases in the response */
    int stop;           /* an enum gen_stop */
};

/* Frees the strings of results[0..n) and zeroes them. */
void eval_results_deinit(struct eval_result *results, size_t n);

/* Evaluates the first n_items problems of `b` with greedy decoding,
 * problem i going to whichever of models[0..n_models) is free, one
 * thread per model (each problem's result depends only on the problem, not
 * on which model or thread ran it, since the models hold the same weights).
 * `results` holds n_items entries, zeroed by the caller. `progress` is
 * called (serialised, from the worker threads) after each problem and every
 * 64 tokens of an answer with the fraction of problems done; returning
 * false stops the run soon after: problems not finished stay with
 * done = false and the call returns LM_ECANCELED. Other errors stop
 * the run the same way and return the first error. */
int eval_run(struct model *const *models, int n_models, const struct tok *t,
             const struct eval_bench *b, size_t n_items, const struct eval_params *p,
             lm_progress_fn progress, void *ud, struct eval_result *results);

/* The aggregate over the results with done set. */
struct eval_summary {
    size_t n;
    size_t n_correct;
    size_t n_reflective;      /* responses with at least one reflective phrase */
    int64_t total_tokens;
    double accuracy;          /* n_correct / n (0 when n = 0) */
    double mean_tokens;       /* total_tokens / n */
    double reflective;        /* n_reflective / n */
};
void eval_summarize(const struct eval_result *results, size_t n, struct eval_summary *out);

#endif
