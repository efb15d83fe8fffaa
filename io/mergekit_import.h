/* mergekit YAML in: a mergekit configuration read as a recipe, so that
 * `mergescope import` can write it out and every command that takes a
 * recipe (recipe_load in recipe.h) can open a .yml/.yaml file directly.
 *
 * What is understood (anything else is an error naming the key and line):
 * - merge_method: a method both tools have (the name table in
 *   mergekit_export.h);
 * - base_model, models (model, parameters): paths as written; a model is
 *   named after the last part of its path (made unique, never "base"); the
 *   base_model listed among the models of a task-vector or interpolation
 *   method is the base, not a model merged; without base_model (linear)
 *   the first model is the recipe's base, which mergescope's statistics
 *   need and whose config.json and tokenizer mergekit copies;
 * - parameters, global and per model: numbers, gradients (lists of
 *   numbers), booleans, and lists of {filter, value} entries (the first
 *   entry whose filter is part of the tensor name wins; no filter, or "*",
 *   matches every tensor), as mergekit's config.py evaluates them. They
 *   become the recipe's params, model parameters and overrides (filters are
 *   override modules, which match tensor-name substrings the same way),
 *   arranged so that the recipe's "later wins" gives mergekit's "model
 *   first, then global, first match wins". `rescale: true` is "l1"; the
 *   DARE and DELLA methods get "l1" when rescale is not given, as mergekit
 *   rescales by default. `int8_mask` only changes how mergekit stores its
 *   masks and is accepted without effect. A parameter every model sets to
 *   the same value, other than weight and density (the ones mergescope
 *   takes per model), is read as a global one;
 * - dtype and out_dtype: the output dtype (out_dtype, else dtype);
 *   mergescope computes in float32 whatever dtype says (a warning says so
 *   when it is not float32);
 * - tokenizer_source: "base" or one of the models (tokenizer_from); "union"
 *   is not supported;
 * - slices: one output slice whose sources all take every layer
 *   ([0, num_hidden_layers] as the first source's config.json says) is the
 *   same as `models`; layer stacking is not supported yet.
 *
 * Limitations: one YAML document per file (mergekit-mega's multi-document
 * files are refused); model references are paths (no LoRA "+" form, no
 * revisions); duplicate keys are errors (YAML readers disagree on them). */
#ifndef MS_IO_MERGEKIT_IMPORT_H
#define MS_IO_MERGEKIT_IMPORT_H

#include <stdbool.h>
#include <stddef.h>

struct recipe;

/* Parses mergekit YAML text into a recipe. `label` names the text in
 * messages ("config.yml:12: ..."); `dir` is where relative paths resolve
 * (NULL = "."). `*warnings` (may be NULL) receives a heap string with one
 * line per difference mergescope cannot avoid (NULL when none); caller
 * frees both. NULL with an error naming the key and line. */
struct recipe *recipe_from_mergekit_yaml(const char *text, size_t len, const char *label,
                                         const char *dir, char **warnings);

/* Whether `path` names a YAML file (.yml or .yaml, any case). */
bool recipe_path_is_yaml(const char *path);

#endif
