/* Recipe edits the tuning screens make, as pure functions on a struct
 * recipe (no terminal, no workspace), so that they are tested on their own
 * and the saved recipe says exactly what the user set:
 *
 * - a global value goes into "params" (or a model's own entry for per-model
 *   parameters such as weight);
 * - a value for a range of layers becomes one override entry
 *   {"layers": "a-b", "modules": M, "params": {P: v}} (per-model:
 *   {P: {model: v}}), appended so that it wins over earlier entries;
 * - a linear gradient over a range becomes one entry per layer, or, across
 *   every layer with no module filter, a gradient list [v0, v1] on the
 *   global or model parameter (interpolated over layers by the plan).
 * Setting a value removes the same parameter (for the same model) from
 * earlier overrides that the new value fully covers, dropping overrides
 * left empty, so that repeated edits do not pile up. */
#ifndef MS_TUI_TUNE_H
#define MS_TUI_TUNE_H

#include <stdbool.h>

#include "recipe.h"
#include "workspace.h"   /* the merge parameter types (merge_method.h) */

struct tune_target {
    const char *param;   /* a merge_param_specs name: "weight", "density", "lambda", ... */
    const char *model;   /* model name for a per-model parameter; NULL = all models / global */
    const char *module;  /* override module selector ("self_attn", "mlp"); NULL = whole layer */
};

/* Switches the method, dropping every parameter the new method does not
 * take (globals, model entries, overrides). 0 or an error. */
int tune_set_method(struct recipe *r, const char *method);

/* Whether method `m` takes the models `r` names: their count, and no base
 * only when it merges without one. */
bool tune_method_fits(const struct merge_method *m, const struct recipe *r);

/* After a model or the base was added or removed: when r's method no
 * longer fits (tune_method_fits), switches (tune_set_method) to the first
 * method of the registry that does, and copies the replaced method's name
 * into `was` (else `was` gets ""). 0, or an error when no method fits. */
int tune_fit_method(struct recipe *r, char *was, size_t was_size);

/* Reads a slice typed as text: a model name ("base" or a model's), then
 * the layer range as two whole numbers START and END, [START, END) like
 * mergekit's layer_range, written "quick 0 4", "quick 0-4", "quick 0:4" or
 * "quick [0, 4)". 0, or LM_EINVAL with a message saying the form. */
int tune_parse_slice(const char *text, char *model, size_t model_size, int *start, int *end);

/* Sets a global number (model == NULL) or a model's own number. */
int tune_set_global(struct recipe *r, const char *param, const char *model, double v);
int tune_set_global_bool(struct recipe *r, const char *param, bool v);

/* Sets the target over layers first..last (inclusive, 0 <= first <= last <
 * n_layers) to v0 at `first` rising linearly to v1 at `last` (v0 == v1: a
 * constant). 0 or an error. */
int tune_set_layers(struct recipe *r, int first, int last, int n_layers,
                    const struct tune_target *t, double v0, double v1);

/* Removes the target's parameter from overrides that name only layers
 * within first..last (and the same module, or any when t->module is NULL),
 * dropping overrides left empty. */
void tune_clear_layers(struct recipe *r, int first, int last, const struct tune_target *t);

/* Removes override `index`. */
int tune_remove_override(struct recipe *r, size_t index);

/* Whether override `o` names layer `layer` explicitly (not "all layers"). */
bool tune_override_has_layer(const struct recipe_override *o, int layer);

/* The value of parameter `id` in resolved params (model index for
 * per-model ones; -1 = the first). */
double tune_param_value(const struct merge_tensor_params *p, enum merge_param_id id, int model);

/* `current` stepped by one arrow-key step in direction `dir` (+1/-1),
 * snapped to the step's decimal grid (0.4 + 0.05 is exactly 0.45) and
 * clamped to the spec's range. */
double tune_step_value(const struct merge_param_spec *s, double current, int dir);

/* A sensible arrow-key step for a parameter spec. */
double tune_param_step(const struct merge_param_spec *s);

#endif
