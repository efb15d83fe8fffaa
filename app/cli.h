/* What every subcommand shares: exit codes, error printing, the progress
 * bar on stderr, Ctrl-C handling, and turning arguments into a recipe. */
#ifndef MS_APP_CLI_H
#define MS_APP_CLI_H

#include <stdbool.h>

#include "recipe.h"

enum cli_exit {
    CLI_EXIT_OK = 0,
    CLI_EXIT_FAILURE = 1,   /* runtime failure: I/O, memory, cancelled */
    CLI_EXIT_USAGE = 2,     /* bad command line */
    CLI_EXIT_BAD_INPUT = 3, /* bad model, recipe or file format */
};

/* Prints "mergescope: error: <fmt>" on stderr and returns CLI_EXIT_USAGE. */
int cli_usage_error(const char *cmd, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Prints lm_last_error() as "mergescope: error: ..." and maps an LM_E* code
 * to an exit code. */
int cli_fail(int lm_code);

/* Installs SIGINT/SIGTERM handlers that ask long work to stop. */
void cli_install_interrupt(void);
bool cli_interrupted(void);

/* lm_progress_fn for long work: draws a bar on stderr when it is a
 * terminal (nothing otherwise) and returns false after Ctrl-C. `ud` is
 * unused. cli_progress_done() clears the bar line. */
bool cli_progress(double frac, const char *what, void *ud);
void cli_progress_done(void);

/* Loads a recipe file, or NULL after printing the error. */
struct recipe *cli_load_recipe(const char *path);

/* Builds a recipe in memory from --base DIR --model DIR... for commands
 * that accept models without a recipe file. Model names are the
 * directories' base names (made unique). NULL after printing an error. */
struct recipe *cli_recipe_from_dirs(const char *base, char **models, int n_models,
                                    const char *method);

/* Prints each line of a workspace's notes as "mergescope: note: ...". */
void cli_print_notes(const char *notes);

struct workspace;
/* For methods that need calibration (aim, sens): prints what it will cost
 * (samples, tokens, passes, an estimate of the work and the extra memory)
 * on stderr, runs it with the progress bar, and prints the time it took.
 * 0 at once for other methods or when the results are held already; else
 * an LM_E* code (the error is not printed). `quiet` skips the lines. */
int cli_calibrate(struct workspace *ws, bool quiet);
/* Parses a positive integer option; -1 on error. */
long cli_parse_long(const char *text, long min, long max);

int cmd_stats(int argc, char **argv);
int cmd_merge(int argc, char **argv);
int cmd_export(int argc, char **argv);
int cmd_calibrate(int argc, char **argv);

#endif
