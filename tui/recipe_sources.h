/* The Recipe screen's sources: the base, the models and the slices (layer
 * stacking). Each edit takes a copy of the recipe, changes it with
 * recipe_edit.h, and applies it through ui_apply_recipe: undoable, and the
 * workspace opens the new set of models (ws_reopen), or stays as it was and
 * the status line says why (naming the path and tensor). When a model
 * added or removed leaves the method unable to take the models, the method
 * becomes the registry's first that can (tune_fit_method), and the status
 * line says so. Every function returns reaction flags. UI thread. */
#ifndef MS_TUI_RECIPE_SOURCES_H
#define MS_TUI_RECIPE_SOURCES_H

#include <stddef.h>

#include "recipe.h"

struct ui_app;

/* The path a recipe stores for `typed`, a path as the user types it
 * (relative to the current directory; "~/" is $HOME): as typed where the
 * recipe's paths resolve from the current directory, else made absolute.
 * Caller frees; NULL when out of memory. */
char *sources_recipe_path(const struct recipe *r, const char *typed);

/* Adds the model at `typed`, named after its folder. */
int sources_add_model(struct ui_app *a, const char *typed);
/* Points model `model` (-1: the base) at `typed`; an empty path for the
 * base removes it (sources_remove_base). */
int sources_set_path(struct ui_app *a, int model, const char *typed);
/* Removes model `model` and the values naming it (recipe_remove_model). */
int sources_remove_model(struct ui_app *a, int model);
/* Removes the base, for a method that merges without one. */
int sources_remove_base(struct ui_app *a);

/* Adds a slice after slice `after` (a copy of it), or, with `after` < 0
 * and no slices yet, one taking every layer of the base (else of the
 * first model); the method becomes the stacking one (passthrough) when it
 * is not. */
int sources_add_slice(struct ui_app *a, long after);
/* Replaces slice i by one typed as "MODEL START END" (tune_parse_slice). */
int sources_set_slice(struct ui_app *a, size_t i, const char *text);
/* Moves the end of slice i's range by one layer (dir +1 or -1). */
int sources_step_slice_end(struct ui_app *a, size_t i, int dir);
int sources_remove_slice(struct ui_app *a, size_t i);
/* Swaps slice i with its neighbour above (dir < 0) or below. */
int sources_move_slice(struct ui_app *a, size_t i, int dir);

#endif
