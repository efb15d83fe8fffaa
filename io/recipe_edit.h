/* Edits of a recipe's sources: its models and base, and its slices (layer
 * stacking), as pure functions on a struct recipe, for the workbench's
 * Recipe screen, the command line's --base/--model and tests. Each keeps
 * the recipe consistent with itself: a model removed takes every value
 * that names it along (per-model entries, output.config_from and
 * tokenizer_from), and a name or reference that would dangle is refused
 * with an error naming it. Whether the models exist, line up, or have the
 * layers a slice takes is for the workspace to check (ws_reopen). Every
 * function returns 0 or an LM_E* code with a message, leaving the recipe
 * unchanged on error. */
#ifndef MS_IO_RECIPE_EDIT_H
#define MS_IO_RECIPE_EDIT_H

#include <stddef.h>

#include "recipe.h"

/* A name for a model at `path` that no model of `r` has: the path's last
 * component ("runs/long/" -> "long"), with "-2", "-3", ... appended while
 * it is taken; "base" (reserved) and an empty name are never given. NULL
 * only when out of memory. Caller frees. */
char *recipe_model_name_for(const struct recipe *r, const char *path);

/* Appends a model with no parameters of its own. `name` NULL: from the
 * path (recipe_model_name_for). Refused: a name taken or "base", an empty
 * path. */
int recipe_add_model(struct recipe *r, const char *name, const char *path);

/* Removes model `index` and what names it: its entries in per-model values
 * of the global parameters and the overrides (a value left with no entry
 * goes, and an override left with no parameter), and output.config_from /
 * tokenizer_from when they name it (back to their defaults). Refused while
 * a slice takes layers from it (naming the slice). */
int recipe_remove_model(struct recipe *r, size_t index);

/* Points model `index` (-1: the base) at another directory; its name and
 * parameters stay. Refused: an empty path. */
int recipe_set_model_path(struct recipe *r, int index, const char *path);

/* Removes the base, for the methods that merge without one; "base" in
 * output.config_from / tokenizer_from goes back to the default. Refused
 * while a slice takes the base's layers. */
int recipe_remove_base(struct recipe *r);

/* Slices. `model` is "base" (when the recipe has one) or a model name;
 * [start, end) a non-empty range of layers, 0 <= start < end <= 1000000,
 * as recipe_parse reads them. */
/* Inserts a slice of one source at position `at` (<= n_slices). */
int recipe_insert_slice(struct recipe *r, size_t at, const char *model, int start, int end);
/* Replaces slice i by one source. */
int recipe_set_slice(struct recipe *r, size_t i, const char *model, int start, int end);
/* Removes slice i (removing the last leaves no "slices" at all). */
int recipe_remove_slice(struct recipe *r, size_t i);
/* Swaps slice i with slice i - 1 (dir < 0) or i + 1 (dir > 0). Refused
 * past either end. */
int recipe_move_slice(struct recipe *r, size_t i, int dir);

#endif
