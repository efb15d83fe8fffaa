/* The engine's subcommands, `generate` and `logits`, and what they share:
 * turning the MODEL argument into weights, a config and a tokenizer, and
 * loading the model. */
#ifndef MS_APP_CMD_ENGINE_H
#define MS_APP_CMD_ENGINE_H

#include <stdbool.h>

#include "hf_config.h"
#include "model.h"
#include "tokenizer.h"

int cmd_generate(int argc, char **argv);
int cmd_logits(int argc, char **argv);

/* A model opened from a command-line argument, ready to run. Filled in by
 * engine_open(); everything is released by engine_close(). */
struct engine {
    /* where the weights come from (see open_model_source in cmd_generate.c:
     * today a model directory) */
    struct model_dir *dir;
    const struct hf_config *config;   /* the config the model runs with */
    struct model_source source;
    const char *tokenizer_dir;        /* holds tokenizer.json / tokenizer_config.json */
    void *source_state;               /* for other kinds of sources */
    void (*source_free)(void *state);
    /* what runs */
    struct model *model;
    struct tok *tok;                  /* NULL unless a tokenizer was asked for */
};

/* Opens `arg`, loads the model with `params` and, when need_tokenizer, the
 * tokenizer. A recipe's merged model is held in the form `preview` (an
 * enum ws_preview_dtype, see cli_set_preview). `out_file`, when not NULL, is a file the command will write:
 * it is refused, before any work, when it is or lies inside an input (the
 * model directory; a recipe file, its models and calibration file). Returns
 * 0, or an exit status (enum cli_exit) after printing the error: 3 for a
 * missing path, a bad or unsupported model, recipe, config, weights or
 * tokenizer, or a refused out_file; 1 when reading failed, memory ran out
 * or merging a recipe was interrupted. On failure there is nothing to
 * close. */
int engine_open(struct engine *e, const char *arg, struct model_params params, bool need_tokenizer,
                const char *out_file, int preview);
void engine_close(struct engine *e);

#endif
