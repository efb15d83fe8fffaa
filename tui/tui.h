/* The TUI's entry point: mergescope's workbench on a recipe. */
#ifndef MS_TUI_TUI_H
#define MS_TUI_TUI_H

#include <stdbool.h>

#include "recipe.h"

struct tui_options {
    const char *theme;        /* NULL: config file, else the built-in dark theme */
    int n_threads;            /* <= 0: one per CPU */
    long max_frames;          /* > 0: exit after this many frames (scripted runs) */
    const char *recipe_path;  /* where the recipe came from (default save path), or NULL */
    bool ascii;               /* ASCII bars and marks even on UTF-8 terminals */
    int preview_dtype;        /* enum ws_preview_dtype for the merged model previews run;
                                 0 (auto): the output's bytes when they fit in memory */
};

/* Opens the models `r` names and runs the workbench until the user quits.
 * The terminal is restored on every exit path. Returns a process exit code
 * (0 ok, 1 runtime failure, 3 bad model or recipe) after printing errors on
 * stderr. */
int tui_run(const struct recipe *r, const struct tui_options *opt);

#endif
