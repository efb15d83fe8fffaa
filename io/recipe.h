/* Merge recipes: JSON files in the `mergescope-recipe/1` format, parsed into
 * plain structs that the CLI and the TUI share, saved back losslessly, and
 * exported to mergekit YAML.
 *
 *   {
 *     "format": "mergescope-recipe/1",
 *     "description": "optional free text",
 *     "base": "../demo/quick",
 *     "models": [ { "name": "long", "path": "../demo/long", "weight": 0.7 } ],
 *     "method": "ties",
 *     "params": { "lambda": 1.0, "density": 0.2, "normalize": true, "seed": 42 },
 *     "overrides": [
 *       { "layers": "0-5", "modules": "mlp", "params": { "weight": { "long": 0.5 } } },
 *       { "layers": [27], "modules": "self_attn", "params": { "density": 0.5 } }
 *     ],
 *     "output": { "dtype": "bf16", "config_from": "long", "tokenizer_from": "long",
 *                 "vocab": "error" },
 *     "calibration": { "file": "calib.jsonl", "samples": 64, "max_tokens": 1024,
 *                      "chat": "auto" },
 *     "slices": [ { "sources": [ { "model": "base", "layers": [0, 2] } ] },
 *                 { "sources": [ { "model": "long", "layers": [1, 3] } ] } ]
 *   }
 *
 * "slices" stacks layers (mergekit's layer stacking, method passthrough):
 * each slice's sources take layers [start, end) of a model ("base" or a
 * model name), and the output's layers are the slices' in order.
 *
 * "calibration" feeds the activation-based methods (aim, sens): a JSONL file
 * of {"prompt": ..., "response": ...} lines, how many of them to use (absent
 * or 0: all), the token limit per sample (prompt and response together;
 * absent or 0: 1024) and the chat format the prompts are wrapped in (a
 * chat_format name or "auto", the default: detected from the tokenizer
 * model's template).
 *
 * This layer checks structure and JSON types only (unknown top-level, model,
 * override and output keys, wrong types, duplicate model names, malformed
 * layer ranges, empty lists, non-finite numbers); whether a parameter name
 * belongs to the chosen method and whether its value is in range is checked
 * by core/ (merge_plan), which knows the methods. Messages name the file and
 * the key path, e.g. "r.json: overrides[1].layers: bad range \"5-\"".
 *
 * Paths are kept as written; recipe_resolve_path() makes them relative to the
 * recipe file's directory. */
#ifndef MS_IO_RECIPE_H
#define MS_IO_RECIPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define RECIPE_FORMAT "mergescope-recipe/1"

enum recipe_value_kind {
    RECIPE_VALUE_NUMBER,    /* one number */
    RECIPE_VALUE_LIST,      /* >= 2 numbers: a gradient interpolated over layers */
    RECIPE_VALUE_BOOL,
    RECIPE_VALUE_STRING,
    RECIPE_VALUE_PER_MODEL, /* {"model name": number or list, ...} (overrides only) */
};

struct recipe_model_value {
    char   *model;
    double *numbers;
    size_t  n_numbers; /* 1 = scalar, >= 2 = gradient */
};

struct recipe_value {
    enum recipe_value_kind kind;
    double *numbers;            /* NUMBER (1) and LIST (n >= 2) */
    size_t  n_numbers;
    bool    boolean;            /* BOOL */
    char   *string;             /* STRING */
    struct recipe_model_value *per_model; /* PER_MODEL */
    size_t  n_per_model;
};

/* A named parameter; lists of them keep the order they were read in. */
struct recipe_param {
    char *name;
    struct recipe_value value;
};

struct recipe_model {
    char *name;                  /* unique; "base" is reserved for the base model */
    char *path;                  /* as written */
    struct recipe_param *params; /* every key but name and path: weight, density, ... */
    size_t n_params;             /* values are NUMBER or LIST */
};

/* An inclusive layer range. */
struct recipe_layer_range {
    int first;
    int last;
};

struct recipe_override {
    bool   all_layers;                  /* "layers" absent: every tensor, layer or not */
    struct recipe_layer_range *layers;  /* "0-5", "0-5,9", [27], [0, 1, 2] */
    size_t n_layers;
    char **modules;                     /* "mlp" or ["mlp", "q_proj"]; none = every module */
    size_t n_modules;
    struct recipe_param *params;
    size_t n_params;
};

struct recipe_output {
    char *dtype;           /* "bf16", "f16", "f32"; NULL = the base model's dtype */
    char *config_from;     /* a model name or "base"; NULL = base */
    char *tokenizer_from;  /* a model name or "base"; NULL = config_from */
    char *vocab;           /* "error" (default, NULL), "truncate" or "pad" */
    char *shard_size;      /* e.g. "5GB"; NULL = default */
};

struct recipe_calibration {
    char   *file;          /* as written; NULL = no calibration section */
    int64_t samples;       /* 0 = all */
    int64_t max_tokens;    /* 0 = default */
    char   *chat;          /* NULL = "auto" */
};
/* One source of an output slice: layers [start, end) of a model ("base"
 * or a model name). */
struct recipe_slice_source {
    char *model;
    int start, end;
};

/* An output slice: its sources give the same number of layers, stacked in
 * the output after the previous slices' (mergekit's `slices`). */
struct recipe_slice {
    struct recipe_slice_source *sources;
    size_t n_sources;
};

struct recipe {
    char *source_path;     /* file it was loaded from, or NULL */
    char *load_notes;      /* what reading it noted (mergekit YAML's warnings), one per line, or
                              NULL; not part of what the recipe means (not compared, not saved) */
    char *dir;             /* directory relative paths are resolved against ("." default) */
    char *description;     /* optional */
    char *base;            /* base model path, as written; may be NULL */
    struct recipe_model *models;
    size_t n_models;
    char *method;
    struct recipe_param *params;       /* global params */
    size_t n_params;
    struct recipe_override *overrides;
    size_t n_overrides;
    struct recipe_output output;
    struct recipe_calibration calibration;
    /* Layer stacking: none = every model's layers line up with the base's. */
    struct recipe_slice *slices;
    size_t n_slices;
};

/* Reads and parses a recipe file: JSON, or mergekit YAML for a .yml/.yaml
 * path (read as the recipe it means, see mergekit_import.h). NULL with an
 * error naming the file and key. */
struct recipe *recipe_load(const char *path);
/* Parses recipe text; `label` names it in messages; `dir` is where relative
 * paths resolve (NULL = "."). */
struct recipe *recipe_parse(const char *text, size_t len, const char *label, const char *dir);
/* An empty recipe with format set, for building one in code or in the TUI. */
struct recipe *recipe_new(void);
struct recipe *recipe_clone(const struct recipe *r);
void recipe_free(struct recipe *r);

/* Canonical pretty-printed JSON (keys in the order of the example above,
 * parameters in their stored order, numbers printed so that they read back
 * to the same double). recipe_parse(recipe_to_json(r)) == r. Caller frees. */
char *recipe_to_json(const struct recipe *r);
/* Writes recipe_to_json() to `path` through a temporary name and rename. */
int recipe_save(const struct recipe *r, const char *path);

/* Writes `r` to `path` as recipe_save does, with every path it names (base,
 * models, calibration file) rewritten to be relative to the folder of
 * `path` when the two share more than the root, absolute otherwise; so a
 * saved recipe reruns from where it was saved, wherever it came from. */
int recipe_save_as(const struct recipe *r, const char *path);

/* A copy of `r` whose paths are rewritten for a recipe file in `dir`, as
 * recipe_save_as does (dir set to `dir`). NULL with an error. */
struct recipe *recipe_rebased(const struct recipe *r, const char *dir);

/* `path` resolved against r->dir (absolute paths unchanged). Caller frees. */
char *recipe_resolve_path(const struct recipe *r, const char *path);

/* Lookup helpers; NULL when absent. */
const struct recipe_param *recipe_find_param(const struct recipe_param *params, size_t n, const char *name);
const struct recipe_model *recipe_find_model(const struct recipe *r, const char *name);

/* Editing helpers for the TUI and tests: set (replace or append) a global
 * parameter or a model's parameter to a scalar. 0 or an error. */
int recipe_set_number(struct recipe_param **params, size_t *n, const char *name, double v);
int recipe_set_bool(struct recipe_param **params, size_t *n, const char *name, bool v);
void recipe_value_deinit(struct recipe_value *v);

/* True when two recipes say the same thing: every field but source_path and
 * dir, numbers compared exactly (so 0 and -0 differ), order significant. */
bool recipe_equal(const struct recipe *a, const struct recipe *b);

/* Numbers as recipes, YAML and screens write them: lm_format_number
 * (common/numfmt.h), the shortest text that reads back to exactly `v`:
 * 0.1 -> "0.1", 42.0 -> "42", 1e-9 -> "1e-09". `size` >= 32 suffices. */
void recipe_format_number(double v, char *buf, size_t size);

/* mergekit YAML with the same meaning, where mergekit can express it.
 * `*warnings` receives a heap string with one line per part mergekit cannot
 * express (or NULL when everything maps exactly); caller frees both. NULL on
 * error. */
char *recipe_to_mergekit_yaml(const struct recipe *r, char **warnings);

#endif
