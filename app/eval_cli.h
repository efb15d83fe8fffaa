/* What `mergescope eval` (cmd_eval.c) and `mergescope sweep` (cmd_sweep.c)
 * share: their common options, how prompts are built and answers stop for
 * a tokenizer, how problems are spread over jobs and threads, and running a
 * loaded model over the benchmark.
 *
 * Return values follow cli.h: functions that print their error return an
 * exit status; eval_with_jobs() returns an LM_E* code for its caller to
 * print. */
#ifndef MS_APP_EVAL_CLI_H
#define MS_APP_EVAL_CLI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "chat.h"
#include "cli.h"
#include "eval.h"
#include "hf_config.h"
#include "model.h"
#include "tokenizer.h"

/* ===== Options both commands take ===== */

struct eval_opts {
    const char *bench_path;
    long limit;                   /* 0: all */
    int64_t max_new;
    enum chat_format chat;        /* when !chat_auto */
    bool chat_auto;               /* detect from the tokenizer's template */
    const char *prompt_template;  /* NULL: the default for the chat format */
    const char *system;           /* NULL: the chat template's default */
    int threads;                  /* 0: one per CPU */
    int jobs;                     /* 0: as many as threads */
    enum cli_format format;       /* table or json */
    int preview;                  /* a recipe's in-memory form (enum ws_preview_dtype); default out */
    bool verbose;                 /* print the memory taken at the end */
};

void eval_opts_init(struct eval_opts *o);

/* Takes getopt_long's `c` (with `arg`) when it is one of the options below.
 * 0, or CLI_EXIT_USAGE after printing the error: a bad value, or an option
 * that is not one of them ("bad option"; each command handles its own
 * options before calling this). */
int eval_opts_parse(struct eval_opts *o, const char *cmd, int c, const char *arg);

#define EVAL_SHORT_OPTIONS "n:vh"

#define EVAL_LONG_OPTIONS \
    { "bench", required_argument, NULL, 'b' }, \
    { "limit", required_argument, NULL, 'l' }, \
    { "max-new", required_argument, NULL, 'n' }, \
    { "chat", required_argument, NULL, 'c' }, \
    { "prompt-template", required_argument, NULL, 'P' }, \
    { "system", required_argument, NULL, 's' }, \
    { "threads", required_argument, NULL, 't' }, \
    { "jobs", required_argument, NULL, 'j' }, \
    { "format", required_argument, NULL, 'f' }, \
    { "preview-dtype", required_argument, NULL, 'Q' }, \
    { "verbose", no_argument, NULL, 'v' }, \
    { "help", no_argument, NULL, 'h' }

#define EVAL_OPTIONS_HELP \
    "  --bench FILE.jsonl     problems, one {\"question\": ..., \"answer\": ...} per line\n" \
    "                         (required)\n" \
    "  --limit N              only the first N problems\n" \
    "  -n, --max-new N        generate at most N tokens per answer (default 512)\n" \
    "  --chat FORMAT          auto, none, chatml, deepseek-r1 or llama3 (default auto:\n" \
    "                         from tokenizer_config.json's chat template)\n" \
    "  --prompt-template T    the user message, with {question} where the question\n" \
    "                         goes (default for chat formats: the question, a new\n" \
    "                         line, then \"Please reason step by step, and put your\n" \
    "                         final answer within \\boxed{}.\"; for none: the question)\n" \
    "  --system TEXT          system prompt (default: the chat template's own, if any)\n" \
    "  --threads N            threads in all (default: one per CPU)\n" \
    "  --jobs J               problems decoded at once, each on its own copy of the\n" \
    "                         run state with N/J threads (default: N, or 1 for\n" \
    "                         models over 256 MB); the numbers do not depend on N or J\n" \
    "  --format table|json    output format (default table)\n" \
    "  --preview-dtype D      how a RECIPE's merged weights are held in memory: out\n" \
    "                         (default: exactly what `merge` writes), bf16, q8 (8-bit,\n" \
    "                         for models that do not fit otherwise) or auto\n" \
    "  -v, --verbose          print the memory taken at the end\n" \
    "  -h, --help             this help\n"

/* ===== Prompts ===== */

/* How prompts are built and when answers stop, for one tokenizer. */
struct prompt_setup {
    struct chat_detected det;
    bool have_det;
    enum chat_format chat;
    const char *system;
    const char *prompt_template;
    struct tok_ids stops;
};

/* Detects the chat format (unless given), picks the system prompt and
 * template, and collects the stop ids: the chat format's and the config's
 * EOS ids. Prints the detected format on stderr. 0, or an exit status after
 * printing the error; prompt_setup_deinit() either way. */
int prompt_setup_init(struct prompt_setup *ps, const struct eval_opts *o, const struct tok *t,
                      const char *tok_dir, const struct hf_config *cfg);
void prompt_setup_deinit(struct prompt_setup *ps);

/* ===== Running ===== */

/* Threads per model and number of models (jobs) for n_items problems. */
void eval_plan_jobs(const struct eval_opts *o, size_t n_items, int *n_jobs, int *threads_per_job);

/* Evaluates a loaded model *first (and *n_jobs - 1 more copies loaded from
 * cfg/src) on the first n_items problems; *seconds gets the time it took. A
 * large model is reloaded on all threads as one job (unless --jobs says
 * otherwise): *first, *n_jobs and *threads_per_job are updated then.
 * Returns 0, LM_ECANCELED (results hold what was done), or another LM_E*
 * code (not printed). */
int eval_with_jobs(struct model **first, const struct hf_config *cfg, const struct model_source *src,
                   int *n_jobs, int *threads_per_job, const struct tok *t, const struct prompt_setup *ps,
                   const struct eval_opts *o, const struct eval_bench *bench, size_t n_items,
                   lm_progress_fn progress, void *ud, struct eval_result *results, double *seconds);

/* The shortest decimal that reads back to v, as JSON wants it; returns buf. */
const char *eval_json_number(double v, char buf[static 40]);

#endif
