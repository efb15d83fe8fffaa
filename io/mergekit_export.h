/* mergekit's names for mergescope's merge methods: the one table of them,
 * kept in io/ because which merge_method a mergekit YAML file names is a
 * fact of that format (the YAML export itself is recipe_to_mergekit_yaml()
 * in recipe.h). The method registry (core/merge/merge_method.h) does not
 * repeat these names; its tests check that every method that does not wrap
 * another has one here and the wrapping ones none. */
#ifndef MS_IO_MERGEKIT_EXPORT_H
#define MS_IO_MERGEKIT_EXPORT_H

#include <stdbool.h>

/* The merge_method mergekit uses for mergescope's method `method` ("ties"
 * -> "ties", "average" -> "linear"), or NULL when mergekit has no
 * equivalent (lore, twin, aim, sens) or `method` is unknown or NULL. */
const char *mergekit_method_name(const char *method);

/* The other way, for YAML import: mergescope's method for mergekit's
 * merge_method `mergekit` (the first in the table: "linear" -> "linear",
 * not "average"), or NULL when mergescope has none. `*uses_base` (may be
 * NULL) says whether mergekit's method takes the base model's tensors as
 * the base of its task vectors or interpolation (so a base_model listed
 * among the models is not one of the models merged); `*rescales` whether
 * mergekit rescales kept entries by default (rescale: true). */
const char *mergekit_method_ours(const char *mergekit, bool *uses_base, bool *rescales);

/* Whether mergekit's merge_method `mergekit` also runs without base_model
 * (nuslerp, multislerp: the models themselves are then merged), which
 * mergescope's recipe says by having no "base". */
bool mergekit_method_base_optional(const char *mergekit);

struct recipe;

/* What the caller read from the models' config.json files, for the
 * warnings that depend on them: tie_word_embeddings as 1 (true), 0
 * (false) or -1 (unknown, or no such model). */
struct mergekit_export_models {
    int        base_tied;
    const int *model_tied; /* one per recipe model, or NULL */
};

/* recipe_to_mergekit_yaml (recipe.h) with those facts (NULL: none known),
 * adding the warnings they allow (a tied config that mergekit copies while
 * writing an lm_head). */
char *recipe_to_mergekit_yaml_models(const struct recipe *r, const struct mergekit_export_models *facts,
                                     char **warnings);

#endif
