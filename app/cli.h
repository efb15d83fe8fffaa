/* What every subcommand shares: the exit status convention, error printing,
 * the options several commands take, the progress bar on stderr, Ctrl-C
 * handling, and turning arguments into a recipe.
 *
 * Exit status (enum cli_exit), the same for every command; main.c's
 * `mergescope --help` states it for users:
 *   0  ok
 *   1  runtime failure: I/O, memory, interrupted, an input changed meanwhile
 *   2  usage: a bad command line (unknown option, bad value, a missing
 *      argument, an option where a path or name belongs)
 *   3  bad input: a model directory or recipe that is missing, malformed or
 *      unsupported, models that do not fit together, or an output that
 *      would destroy an input
 * The library returns LM_E* codes (lm_error.h); cli_exit_status() is the one
 * place that turns them into an exit status, and cli_check_input() the one
 * place that says a missing input is 3.
 *
 * App functions return one of two things, and say which in their contract:
 * an exit status (0 = go on; printed already) or an LM_E* code (0 = ok; the
 * message in lm_last_error(), not printed yet). Never a negated exit status. */
#ifndef MS_APP_CLI_H
#define MS_APP_CLI_H

#include <stdbool.h>
#include <stdint.h>

#include "chat.h"
#include "recipe.h"

struct workspace;


enum cli_exit {
    CLI_EXIT_OK = 0,
    CLI_EXIT_FAILURE = 1,   /* runtime failure: I/O, memory, cancelled */
    CLI_EXIT_USAGE = 2,     /* bad command line */
    CLI_EXIT_BAD_INPUT = 3, /* missing or bad model, recipe or file format */
};

/* ===== Errors and exit status ===== */

/* The exit status for an LM_E* code: 0 for 0; 3 for LM_EFORMAT,
 * LM_EMISMATCH, LM_EUNSUPPORTED and LM_EREFUSED (an output that would
 * destroy an input or files mergescope did not make); 2 for LM_EINVAL (the
 * command line asked for something invalid); 1 for LM_EIO, LM_ENOMEM,
 * LM_ECANCELED, LM_ECHANGED and anything else. */
int cli_exit_status(int lm_code);

/* Prints lm_last_error() (or the code's name when there is no message) as
 * "mergescope: error: ..." and returns cli_exit_status(lm_code). */
int cli_fail(int lm_code);

/* Prints "mergescope: error: <fmt>" and a pointer to `cmd`'s help on
 * stderr, and returns CLI_EXIT_USAGE. `cmd` NULL points to the top-level
 * help (the workbench's options are there). */
int cli_usage_error(const char *cmd, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* An input path named on the command line (a model directory, a recipe, a
 * tokenizer file): 0 when something is there; else prints
 * "mergescope: error: PATH: no such file or directory" and returns
 * CLI_EXIT_BAD_INPUT. Commands call it before opening, so that a missing
 * input is 3 whatever the library would report for it (LM_EIO from open). */
int cli_check_input(const char *path);

/* The directories a recipe names (base and models), checked as ws_open()
 * checks them, for a caller that must know before it starts (the workbench
 * takes the terminal first). 0, or CLI_EXIT_BAD_INPUT after printing
 * "model 'NAME': PATH is not a directory". */
int cli_check_recipe_models(const struct recipe *r);

/* ===== Options several commands take =====
 * The parsers below return 0 after storing the value, or CLI_EXIT_USAGE
 * after printing an error that names the option (cli_usage_error). */

struct option;
/* When --help or -h is among argv's options (not the value of another
 * option, as in `-o --help`), prints `usage` on stdout and returns true:
 * the command then returns CLI_EXIT_OK, having run and created nothing, so
 * help wins over everything else on the line. Scans quietly with the
 * command's own getopt tables (help must be 'h'), and leaves getopt_long
 * ready to start again at argv[1]. */
bool cli_help_asked(int argc, char **argv, const char *shortopts, const struct option *longopts,
                    const char *usage);

/* An integer option in [min, max]. */
int cli_parse_long_option(const char *cmd, const char *opt, const char *arg, long min, long max, long *out);

/* A number option in [lo, hi] ("--density must be a number in [0, 1]"). */
int cli_parse_double_option(const char *cmd, const char *opt, const char *arg, double lo, double hi,
                            double *out);

/* --threads N: 1 to 1024. */
int cli_parse_threads(const char *cmd, const char *arg, int *out);

/* -n, --max-new N: tokens to generate, 1 to 100000000. */
int cli_parse_max_new(const char *cmd, const char *arg, int64_t *out);

/* --preview-dtype auto|out|bf16|q8 (enum ws_preview_dtype). */
int cli_parse_preview_dtype(const char *cmd, const char *arg, int *out);

/* Sets the form `ws` holds its merged model in for running it (asked:
 * an enum ws_preview_dtype) and says on standard error what it is when it
 * is not the output's exact bytes, and when it will not fit in the memory
 * available, with the size each form takes. */
void cli_set_preview(struct workspace *ws, int asked);

/* Peak memory of a command that ran a model: RssAnon now (its cache and
 * run state are still held) and VmHWM, on standard error. */
void cli_print_memory_now(void);

/* --chat FORMAT: a chat_format name or "auto" (*is_auto set, *fmt NONE). */
int cli_parse_chat(const char *cmd, const char *arg, enum chat_format *fmt, bool *is_auto);

enum cli_format { CLI_FORMAT_TABLE, CLI_FORMAT_CSV, CLI_FORMAT_JSON };
/* --format: table or json, and csv where `csv_ok`. */
int cli_parse_format(const char *cmd, const char *arg, bool csv_ok, enum cli_format *out);

/* One of `names` (NULL-terminated); *out gets its index. */
int cli_parse_choice(const char *cmd, const char *opt, const char *arg, const char *const *names, int *out);

/* The value of an option that takes a path (-o, --bench, --base, ...) or a
 * name (--method, --theme): stored in *out unless it is empty or starts
 * with '-', which is an option the user left the value out before (`-o
 * --help` must not create a directory named --help). A file whose name
 * starts with '-' is reached as ./-name. */
int cli_path_option(const char *cmd, const char *opt, const char *arg, const char **out);
int cli_name_option(const char *cmd, const char *opt, const char *arg, const char **out);

/* ===== Progress and interruption ===== */

/* Installs SIGINT/SIGTERM handlers that ask long work to stop. */
void cli_install_interrupt(void);
bool cli_interrupted(void);

/* lm_progress_fn for long work: draws a bar on stderr when it is a
 * terminal (nothing otherwise) and returns false after Ctrl-C. `ud` is
 * unused. cli_progress_done() clears the bar line. */
bool cli_progress(double frac, const char *what, void *ud);
void cli_progress_done(void);

/* ===== Recipes and workspaces ===== */

/* Loads a recipe file, or NULL after printing the error; the caller exits
 * with CLI_EXIT_BAD_INPUT then (a missing file included). */
struct recipe *cli_load_recipe(const char *path);

/* Builds a recipe in memory from --base DIR --model DIR... for commands
 * that accept models without a recipe file. Model names are the
 * directories' base names (made unique). NULL only when memory ran out,
 * after printing the error (exit CLI_EXIT_FAILURE). */
struct recipe *cli_recipe_from_dirs(const char *base, const char *const *models, int n_models,
                                    const char *method);

/* Prints each line of a workspace's notes as "mergescope: note: ...". */
void cli_print_notes(const char *notes);

/* --verbose: prints the workspace's peak memory (ws_memory_peak) on stderr
 * as "mergescope: peak memory ...". */
void cli_print_peak_memory(struct workspace *ws);

/* After a pass: one warning on stderr naming the tensors that held NaN or
 * Inf (ws_nonfinite_report), nothing when none did. */
void cli_print_nonfinite(const struct workspace *ws);

/* For methods that need calibration (aim, sens): prints what it will cost
 * (samples, tokens, passes, an estimate of the work and the extra memory)
 * on stderr, runs it with the progress bar, and prints the time it took.
 * 0 at once for other methods or when the results are held already; else
 * an LM_E* code (the error is not printed). `quiet` skips the lines. */
int cli_calibrate(struct workspace *ws, bool quiet);

/* ===== Commands: argv[0] is the command name; each returns its exit
 * status. ===== */

int cmd_stats(int argc, char **argv);
int cmd_merge(int argc, char **argv);
int cmd_export(int argc, char **argv);
int cmd_import(int argc, char **argv);
int cmd_calibrate(int argc, char **argv);

#endif
